//! Name templates: the names sinks derive from events, such as a Redis key
//! (`"{table}:{key}"`), a Kafka topic (`"{event.aggregate_type}"`), a RabbitMQ routing key
//! (`"{schema}.{table}"`) or an Elasticsearch document id (`"{key.tenant}-{key.id}"`).
//!
//! A template is text with placeholders in braces. It is parsed once, when the sink is
//! built, so an unknown placeholder or an unbalanced brace is a configuration error; it is
//! rendered per event, and fails only when the event lacks what a placeholder asks for
//! (the sink then rejects that one event, with the reason).
//!
//! | placeholder | renders |
//! |---|---|
//! | `{pipeline}` | the pipeline's name |
//! | `{schema}`, `{table}` | the changed table (a logical message has none) |
//! | `{op}` | `insert`, `update`, `delete`, `truncate` or `event` |
//! | `{key}` | the key columns' values in key order, joined by the sink's separator |
//! | `{key.<col>}` | one key column's value |
//! | `{event.type}`, `{event.aggregate_type}` | of an outbox row or logical message |
//!
//! `{{` and `}}` stand for literal braces; spaces inside a placeholder's braces are
//! ignored (`{ table }` is `{table}`). Values render as [`value_text`] writes them.
//!
//! What differs between sinks on purpose is a [`Rules`] given to [`Template::parse_with`]:
//! the separator of a composite `{key}` (`:` by default, `.` for RabbitMQ routing keys,
//! `_` for Elasticsearch ids), whether the empty template is allowed (RabbitMQ's default
//! exchange is `""`), and the [`Scope`] of the placeholders allowed (a Redis key or an
//! Elasticsearch document must be the same for every change of a row, so `{op}` and
//! `{event.*}` are refused there when the configuration is read).

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use base64::Engine as _;

use crate::event::{Event, Row, Value};

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
    separator: &'static str,
}

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
    /// Text copied as it is (`{{` and `}}` already turned into single braces).
    Literal(String),
    /// `{pipeline}`: the pipeline's name.
    Pipeline,
    /// `{schema}`: the table's schema.
    Schema,
    /// `{table}`: the table's name.
    Table,
    /// `{op}`: `insert`, `update`, `delete`, `truncate` or `event`.
    Op,
    /// `{key}`: every key column's value, joined by the template's separator.
    Key,
    /// `{key.<col>}`: one key column's value.
    KeyColumn(String),
    /// `{event.type}`: the type of an outbox row or logical message.
    EventType,
    /// `{event.aggregate_type}`: the aggregate type of an outbox row or logical message.
    AggregateType,
}

impl Part {
    /// What this part's rendering may vary with: [`Scope::Table`] for literals and
    /// `{pipeline}`, `{schema}`, `{table}`; [`Scope::Row`] for `{key}` and `{key.<col>}`;
    /// [`Scope::Event`] for `{op}` and `{event.*}`.
    pub fn scope(&self) -> Scope {
        match self {
            Part::Literal(_) | Part::Pipeline | Part::Schema | Part::Table => Scope::Table,
            Part::Key | Part::KeyColumn(_) => Scope::Row,
            Part::Op | Part::EventType | Part::AggregateType => Scope::Event,
        }
    }

    /// Whether this part depends on the row's key (`{key}`, `{key.<col>}`).
    pub fn is_key(&self) -> bool {
        matches!(self, Part::Key | Part::KeyColumn(_))
    }
}

/// How widely a template's rendering may vary, from narrowest to widest. Ordered, so that
/// `template.scope() <= Scope::Row` reads "the same for every change of a row".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The same for every event of a table: `{pipeline}`, `{schema}`, `{table}`.
    Table,
    /// The same for every change of one row: adds `{key}` and `{key.<col>}`.
    Row,
    /// May differ between any two events: adds `{op}`, `{event.type}` and
    /// `{event.aggregate_type}`.
    Event,
}

impl Scope {
    /// The placeholders this scope allows, as an error message lists them.
    pub fn placeholders(self) -> &'static str {
        match self {
            Scope::Table => "{pipeline} {schema} or {table}",
            Scope::Row => "{pipeline} {schema} {table} {key} or {key.<column>}",
            Scope::Event => {
                "{pipeline} {schema} {table} {op} {key} {key.<column>} {event.type} or \
                 {event.aggregate_type}"
            }
        }
    }

    /// What must not vary within this scope, for error messages.
    fn what(self) -> &'static str {
        match self {
            Scope::Table => "every event of a table",
            Scope::Row => "every change of a row",
            Scope::Event => "every event",
        }
    }
}

/// What a sink allows in one of its templates, given to [`Template::parse_with`].
///
/// [`Rules::new`] is `:` between key columns, no empty template, every placeholder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    separator: &'static str,
    scope: Scope,
    allow_empty: bool,
}

impl Rules {
    /// `:` between key columns, the empty template refused, every placeholder allowed.
    pub const fn new() -> Rules {
        Rules {
            separator: ":",
            scope: Scope::Event,
            allow_empty: false,
        }
    }

    /// Join a composite `{key}`'s values with `separator`.
    pub const fn key_separator(mut self, separator: &'static str) -> Rules {
        self.separator = separator;
        self
    }

    /// Allow only the placeholders of `scope`: a template with another one does not
    /// parse ([`TemplateError::OutOfScope`]).
    pub const fn scope(mut self, scope: Scope) -> Rules {
        self.scope = scope;
        self
    }

    /// Accept the empty template, which renders as the empty string.
    pub const fn allow_empty(mut self) -> Rules {
        self.allow_empty = true;
        self
    }
}

impl Default for Rules {
    fn default() -> Rules {
        Rules::new()
    }
}

/// A template that does not parse. Positions are character numbers, from 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A name in braces that is not a placeholder.
    #[error(
        "`{{{name}}}` is not a placeholder (at character {at}); use {}, and write {{{{ and }}}} \
         for literal braces",
        allowed.placeholders()
    )]
    Unknown {
        /// What was written between the braces.
        name: String,
        /// Where its `{` is.
        at: usize,
        /// The placeholders allowed.
        allowed: Scope,
    },

    /// A placeholder that can vary more widely than this template may.
    #[error(
        "`{{{name}}}` (at character {at}) cannot be used here: this name must be the same \
         for {}; use {}",
        allowed.what(),
        allowed.placeholders()
    )]
    OutOfScope {
        /// The placeholder, without braces.
        name: String,
        /// Where its `{` is.
        at: usize,
        /// The scope the template must keep to.
        allowed: Scope,
    },

    /// A `{` without its `}`.
    #[error("the `{{` at character {at} is never closed; write {{{{ for a literal brace")]
    Unclosed {
        /// Where it is.
        at: usize,
    },

    /// A `}` that closes nothing.
    #[error("the `}}` at character {at} closes nothing; write }}}} for a literal brace")]
    Unopened {
        /// Where it is.
        at: usize,
    },

    /// Nothing at all, where a name is needed.
    #[error("the template is empty; use text and placeholders such as {{table}}")]
    Empty,
}

/// An event that lacks what a placeholder asks for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// `{key}` or `{key.<col>}` for a row without a key.
    #[error(
        "`{{{placeholder}}}` needs the row's key, and {table} has none \
         (give it a primary key or a replica identity)"
    )]
    NoKey {
        /// The placeholder, without braces.
        placeholder: String,
        /// `schema.table`, or `a logical message`.
        table: String,
    },

    /// `{key.<col>}` names a column that is not part of the key.
    #[error("`{{key.{column}}}` names no key column of {table} (its key columns: {columns})")]
    NoKeyColumn {
        /// The column asked for.
        column: String,
        /// `schema.table`.
        table: String,
        /// The key's columns, comma-separated.
        columns: String,
    },

    /// `{schema}` or `{table}` for a logical message.
    #[error("`{{{placeholder}}}` has no value for a logical message, which has no table")]
    NoTable {
        /// `schema` or `table`.
        placeholder: &'static str,
    },

    /// `{event.type}` or `{event.aggregate_type}` for a row change.
    #[error(
        "`{{{placeholder}}}` is only set on outbox rows and logical messages (op: event), \
         not on {op}s of {table}"
    )]
    NotAnEvent {
        /// `event.type` or `event.aggregate_type`.
        placeholder: &'static str,
        /// The event's op.
        op: &'static str,
        /// `schema.table`.
        table: String,
    },

    /// The value a placeholder stands for is SQL NULL (or JSON null).
    #[error("`{{{placeholder}}}` is null in this event")]
    Null {
        /// The placeholder, without braces.
        placeholder: String,
    },
}

impl Template {
    /// Parse `text` with [`Rules::new`]: `:` between key columns, every placeholder, the
    /// empty template refused.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        Template::parse_with(text, Rules::new())
    }

    /// Parse `text` with a sink's `rules`. Unknown placeholders, placeholders outside the
    /// rules' scope and unbalanced braces are errors that say where.
    pub fn parse_with(text: &str, rules: Rules) -> Result<Template, TemplateError> {
        if text.is_empty() && !rules.allow_empty {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.next_if(|&(_, next)| next == '{').is_some() => literal.push('{'),
                '}' if chars.next_if(|&(_, next)| next == '}').is_some() => literal.push('}'),
                '{' => {
                    let rest = &text[at + 1..];
                    let name = match rest.find(['{', '}']) {
                        Some(end) if rest[end..].starts_with('}') => &rest[..end],
                        _ => {
                            return Err(TemplateError::Unclosed {
                                at: char_number(text, at),
                            })
                        }
                    };
                    let part = placeholder(name.trim()).ok_or_else(|| TemplateError::Unknown {
                        name: name.to_string(),
                        at: char_number(text, at),
                        allowed: rules.scope,
                    })?;
                    if part.scope() > rules.scope {
                        return Err(TemplateError::OutOfScope {
                            name: name.trim().to_string(),
                            at: char_number(text, at),
                            allowed: rules.scope,
                        });
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    // Skip the name and its closing brace.
                    for _ in 0..=name.chars().count() {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(TemplateError::Unopened {
                        at: char_number(text, at),
                    })
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            text: text.to_string(),
            parts,
            separator: rules.separator,
        })
    }

    /// The text the template was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The template's pieces, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The widest [`Scope`] of its placeholders: [`Scope::Table`] when every event of a
    /// table renders the same.
    pub fn scope(&self) -> Scope {
        self.parts
            .iter()
            .map(Part::scope)
            .max()
            .unwrap_or(Scope::Table)
    }

    /// What every event renders to, when the template has no placeholder.
    pub fn constant(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// The template filled in from `event`, with the event's own key.
    pub fn render(&self, event: &Event) -> Result<String, RenderError> {
        self.render_with_key(event, event.key.as_ref())
    }

    /// The template filled in from `event`, with `key` standing for the row's key (the
    /// previous key of a row whose key changed; `None` for no key).
    pub fn render_with_key(&self, event: &Event, key: Option<&Row>) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.text.len() + 16);
        self.render_into(event, key, &mut out)?;
        Ok(out)
    }

    /// [`Template::render_with_key`], appended to `out` (which keeps what it held): a
    /// caller that renders many events reuses one buffer. On an error, `out` may hold
    /// part of the rendering.
    pub fn render_into(
        &self,
        event: &Event,
        key: Option<&Row>,
        out: &mut String,
    ) -> Result<(), RenderError> {
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Pipeline => out.push_str(&event.source.pipeline),
                Part::Schema => {
                    out.push_str(event.source.schema.as_deref().ok_or(RenderError::NoTable {
                        placeholder: "schema",
                    })?)
                }
                Part::Table => {
                    out.push_str(event.source.table.as_deref().ok_or(RenderError::NoTable {
                        placeholder: "table",
                    })?)
                }
                Part::Op => out.push_str(event.op.as_str()),
                Part::Key => {
                    let key = row_key(event, key, || "key".into())?;
                    for (i, column) in key.0.iter().enumerate() {
                        if i > 0 {
                            out.push_str(self.separator);
                        }
                        push_required(&column.value, out, || format!("key.{}", column.name))?;
                    }
                }
                Part::KeyColumn(name) => {
                    let key = row_key(event, key, || format!("key.{name}"))?;
                    let value = key.get(name).ok_or_else(|| RenderError::NoKeyColumn {
                        column: name.clone(),
                        table: table_name(event),
                        columns: key
                            .0
                            .iter()
                            .map(|c| &*c.name)
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                    push_required(value, out, || format!("key.{name}"))?;
                }
                Part::EventType | Part::AggregateType => {
                    let placeholder = match part {
                        Part::EventType => "event.type",
                        _ => "event.aggregate_type",
                    };
                    let message =
                        event
                            .message
                            .as_ref()
                            .ok_or_else(|| RenderError::NotAnEvent {
                                placeholder,
                                op: event.op.as_str(),
                                table: table_name(event),
                            })?;
                    let value = match part {
                        Part::EventType => &message.kind,
                        _ => &message.aggregate_type,
                    };
                    push_required(value, out, || placeholder.to_string())?;
                }
            }
        }
        Ok(())
    }
}

/// Templates print as they were written.
impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A value as template text; `None` for SQL NULL and JSON null.
///
/// Text as it is; integers and floats in decimal (floats as in the JSON envelope: the
/// shortest form that reads back the same, `NaN`, `Infinity`, `-Infinity`); booleans as
/// `true`/`false`; bytea as base64; arrays as their JSON text. A json value that is a
/// JSON string renders as that string (a logical message's `"order"` is `order`), any
/// other json as its JSON text.
pub fn value_text(value: &Value) -> Option<Cow<'_, str>> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Int(i) => Cow::Owned(i.to_string()),
        Value::Float(f) if f.is_nan() => Cow::Borrowed("NaN"),
        Value::Float(f) if f.is_infinite() => {
            Cow::Borrowed(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Float(f) => Cow::Owned(
            serde_json::Number::from_f64(*f).map_or_else(|| f.to_string(), |n| n.to_string()),
        ),
        Value::Text(t) => Cow::Borrowed(t.as_str()),
        // A logical message's fields arrive as JSON: a JSON string stands for its text, a
        // JSON null for NULL.
        Value::Json(raw) => match raw.get().trim() {
            "null" => return None,
            text if text.starts_with('"') => {
                serde_json::from_str::<String>(text).map_or(Cow::Borrowed(raw.get()), Cow::Owned)
            }
            _ => Cow::Borrowed(raw.get()),
        },
        Value::Bytes(b) => Cow::Owned(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Array(_) => Cow::Owned(
            serde_json::to_string(value).expect("an array of values always encodes as JSON"),
        ),
    })
}

/// The event's table as messages name it: `schema.table`, or `a logical message`.
pub fn table_name(event: &Event) -> String {
    match (&event.source.schema, &event.source.table) {
        (Some(schema), Some(table)) => format!("{schema}.{table}"),
        (None, Some(table)) => table.to_string(),
        _ => "a logical message".into(),
    }
}

/// The key a key placeholder renders from; a row without key columns has none.
fn row_key<'k>(
    event: &Event,
    key: Option<&'k Row>,
    placeholder: impl FnOnce() -> String,
) -> Result<&'k Row, RenderError> {
    key.filter(|key| !key.0.is_empty())
        .ok_or_else(|| RenderError::NoKey {
            placeholder: placeholder(),
            table: table_name(event),
        })
}

/// Append a placeholder's value, which may not be null, to `out`.
fn push_required(
    value: &Value,
    out: &mut String,
    placeholder: impl FnOnce() -> String,
) -> Result<(), RenderError> {
    match value {
        // The common key types, written without an intermediate string.
        Value::Text(text) => out.push_str(text),
        Value::Int(i) => write!(out, "{i}").expect("a String takes any text"),
        other => match value_text(other) {
            Some(text) => out.push_str(&text),
            None => {
                return Err(RenderError::Null {
                    placeholder: placeholder(),
                })
            }
        },
    }
    Ok(())
}

/// The part a (trimmed) placeholder name stands for.
fn placeholder(name: &str) -> Option<Part> {
    Some(match name {
        "pipeline" => Part::Pipeline,
        "schema" => Part::Schema,
        "table" => Part::Table,
        "op" => Part::Op,
        "key" => Part::Key,
        "event.type" => Part::EventType,
        "event.aggregate_type" => Part::AggregateType,
        _ => match name.strip_prefix("key.") {
            Some(column) if !column.trim().is_empty() => Part::KeyColumn(column.to_string()),
            _ => return None,
        },
    })
}

/// 1-based character number of byte offset `at`.
fn char_number(text: &str, at: usize) -> usize {
    text[..at].chars().count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Message, Op};
    use crate::testing;

    fn order(id: i64) -> Event {
        let mut e = testing::event("orders", Op::Update, 0x10, 3);
        let mut key = Row::default();
        key.push("tenant".into(), Value::Text("acme".into()));
        key.push("id".into(), Value::Int(id));
        e.key = Some(key);
        e
    }

    fn outbox(kind: Value, aggregate_type: Value) -> Event {
        let mut e = testing::event("outbox", Op::Event, 0x10, 0);
        e.message = Some(Message {
            id: Value::Int(1),
            kind,
            aggregate_type,
            aggregate_id: Value::Text("42".into()),
            payload: Value::Null,
            headers: Value::Null,
        });
        e
    }

    fn render(template: &str, event: &Event) -> Result<String, RenderError> {
        Template::parse(template).unwrap().render(event)
    }

    #[test]
    fn every_placeholder_renders() {
        let e = order(42);
        assert_eq!(render("{table}:{key}", &e).unwrap(), "orders:acme:42");
        assert_eq!(
            render("{pipeline}/{schema}.{table}/{op}", &e).unwrap(),
            "p/public.orders/update"
        );
        assert_eq!(render("o:{key.id}@{key.tenant}", &e).unwrap(), "o:42@acme");
        assert_eq!(render("{ key.id }-{ table }", &e).unwrap(), "42-orders");
        let m = outbox(Value::Text("OrderPaid".into()), Value::Text("order".into()));
        assert_eq!(
            render("{event.aggregate_type}.{event.type}", &m).unwrap(),
            "order.OrderPaid"
        );
    }

    #[test]
    fn the_key_separator_is_the_sinks() {
        let e = order(7);
        for (separator, rendered) in [(":", "acme:7"), (".", "acme.7"), ("_", "acme_7")] {
            let rules = Rules::new().key_separator(separator);
            let t = Template::parse_with("{key}", rules).unwrap();
            assert_eq!(t.render(&e).unwrap(), rendered);
        }
    }

    #[test]
    fn another_key_can_stand_in_for_the_events_own() {
        let e = order(2);
        let old = order(1).key;
        let t = Template::parse("{table}:{key}").unwrap();
        assert_eq!(
            t.render_with_key(&e, old.as_ref()).unwrap(),
            "orders:acme:1"
        );
        let mut out = String::from("x/");
        t.render_into(&e, e.key.as_ref(), &mut out).unwrap();
        assert_eq!(out, "x/orders:acme:2", "appended to what `out` held");
    }

    #[test]
    fn double_braces_are_literal_braces() {
        let e = order(1);
        assert_eq!(render("{{{table}}}:{key}", &e).unwrap(), "{orders}:acme:1");
        assert_eq!(render("a}}b{{c", &e).unwrap(), "a}b{c");
        let t = Template::parse("a{{b}}{key}").unwrap();
        assert_eq!(t.to_string(), "a{{b}}{key}");
        assert_eq!(t.as_str(), "a{{b}}{key}");
    }

    #[test]
    fn only_templates_without_placeholders_are_constant() {
        assert_eq!(
            Template::parse("events").unwrap().constant(),
            Some("events")
        );
        assert_eq!(Template::parse("x{{y}}").unwrap().constant(), Some("x{y}"));
        assert_eq!(Template::parse("events.{table}").unwrap().constant(), None);
    }

    #[test]
    fn the_empty_template_is_refused_unless_allowed() {
        assert_eq!(Template::parse("").unwrap_err(), TemplateError::Empty);
        let t = Template::parse_with("", Rules::new().allow_empty()).unwrap();
        assert_eq!(t.render(&order(1)).unwrap(), "");
        assert_eq!(t.constant(), Some(""));
        assert!(t.parts().is_empty());
    }

    #[test]
    fn parts_are_exposed_in_order_with_their_scope() {
        let t = Template::parse("c:{table}:{key.id}").unwrap();
        assert_eq!(
            t.parts(),
            [
                Part::Literal("c:".into()),
                Part::Table,
                Part::Literal(":".into()),
                Part::KeyColumn("id".into()),
            ]
        );
        assert!(t.parts()[3].is_key() && !t.parts()[1].is_key());
        assert_eq!(t.scope(), Scope::Row);
        let scope = |text: &str| Template::parse(text).unwrap().scope();
        assert_eq!(scope("fixed"), Scope::Table);
        assert_eq!(scope("{pipeline}-{schema}-{table}"), Scope::Table);
        assert_eq!(scope("{key}"), Scope::Row);
        for text in ["{op}", "{key}.{event.type}", "x{event.aggregate_type}"] {
            assert_eq!(scope(text), Scope::Event, "{text}");
        }
    }

    #[test]
    fn placeholders_outside_the_scope_do_not_parse() {
        let row = Rules::new().scope(Scope::Row);
        assert!(Template::parse_with("{schema}.{table}:{key.id}", row).is_ok());
        let e = Template::parse_with("{table}:{op}:{key}", row).unwrap_err();
        assert!(
            matches!(&e, TemplateError::OutOfScope { name, at: 9, allowed: Scope::Row } if name == "op"),
            "{e:?}"
        );
        let message = e.to_string();
        assert!(
            message.contains("same for every change of a row")
                && message.contains("{key.<column>}"),
            "{message}"
        );
        assert!(!message.contains("{event.type}"), "{message}");
        assert!(matches!(
            Template::parse_with("{event.aggregate_type}", row),
            Err(TemplateError::OutOfScope { .. })
        ));
        let table = Rules::new().scope(Scope::Table);
        assert!(matches!(
            Template::parse_with("{table}-{key}", table),
            Err(TemplateError::OutOfScope { .. })
        ));
    }

    #[test]
    fn unknown_placeholders_and_bad_braces_do_not_parse_and_say_where() {
        let e = Template::parse("ix-{tabel}").unwrap_err();
        assert_eq!(
            e,
            TemplateError::Unknown {
                name: "tabel".into(),
                at: 4,
                allowed: Scope::Event
            }
        );
        let message = e.to_string();
        assert!(
            message.contains("`{tabel}` is not a placeholder (at character 4)")
                && message.contains("{event.aggregate_type}"),
            "{message}"
        );
        let e = Template::parse_with("{id}", Rules::new().scope(Scope::Row)).unwrap_err();
        assert!(!e.to_string().contains("{op}"), "{e}");
        assert!(matches!(
            Template::parse("{key.}"),
            Err(TemplateError::Unknown { .. })
        ));
        assert!(matches!(
            Template::parse("{ }"),
            Err(TemplateError::Unknown { .. })
        ));
        assert_eq!(
            Template::parse("ab{table").unwrap_err(),
            TemplateError::Unclosed { at: 3 }
        );
        assert_eq!(
            Template::parse("{ta{ble}").unwrap_err(),
            TemplateError::Unclosed { at: 1 }
        );
        assert_eq!(
            Template::parse("é}").unwrap_err(),
            TemplateError::Unopened { at: 2 }
        );
        assert!(matches!(
            Template::parse("é{x}"),
            Err(TemplateError::Unknown { at: 2, .. })
        ));
    }

    #[test]
    fn values_render_as_text_numbers_in_decimal_json_strings_unquoted() {
        let cases = [
            (Value::Text("a b:c".into()), Some("a b:c")),
            (Value::Int(-7), Some("-7")),
            (Value::Int(i64::MAX), Some("9223372036854775807")),
            (Value::Float(1.5), Some("1.5")),
            (Value::Float(1e-7), Some("1e-7")),
            (Value::Float(f64::NAN), Some("NaN")),
            (Value::Float(f64::INFINITY), Some("Infinity")),
            (Value::Float(f64::NEG_INFINITY), Some("-Infinity")),
            (Value::Bool(true), Some("true")),
            (Value::Bool(false), Some("false")),
            (Value::Bytes(vec![0, 1, 2]), Some("AAEC")),
            (Value::json(r#"{"a": [1]}"#).unwrap(), Some(r#"{"a": [1]}"#)),
            (Value::json("17").unwrap(), Some("17")),
            (
                Value::json(r#""Order\"Paid""#).unwrap(),
                Some(r#"Order"Paid"#),
            ),
            (Value::json("null").unwrap(), None),
            (
                Value::Array(vec![Value::Int(1), Value::Text("x".into())]),
                Some(r#"[1,"x"]"#),
            ),
            (Value::Null, None),
        ];
        for (value, text) in cases {
            assert_eq!(value_text(&value).as_deref(), text, "{value:?}");
        }
        // A logical message's fields arrive as json values.
        let m = outbox(
            Value::json(r#""OrderPaid""#).unwrap(),
            Value::json(r#""order""#).unwrap(),
        );
        assert_eq!(
            render("{event.aggregate_type}.{event.type}", &m).unwrap(),
            "order.OrderPaid"
        );
        let mut e = order(1);
        e.key.as_mut().unwrap().0[0].value = Value::Bool(true);
        assert_eq!(render("{key}", &e).unwrap(), "true:1");
    }

    #[test]
    fn events_without_what_a_placeholder_needs_do_not_render() {
        let mut keyless = order(1);
        keyless.key = None;
        let e = render("{table}:{key}", &keyless).unwrap_err();
        assert!(e.to_string().contains("public.orders has none"), "{e}");
        keyless.key = Some(Row::default());
        let e = render("{key.id}", &keyless).unwrap_err();
        assert!(
            matches!(&e, RenderError::NoKey { placeholder, .. } if placeholder == "key.id"),
            "an empty key is no key: {e}"
        );

        let e = render("{key.sku}", &order(1)).unwrap_err();
        assert!(e.to_string().contains("tenant, id"), "{e}");

        let e = render("{event.type}", &order(1)).unwrap_err();
        assert!(
            e.to_string().contains("not on updates of public.orders"),
            "{e}"
        );

        let mut message = outbox(Value::Text("Ping".into()), Value::Null);
        message.source.schema = None;
        message.source.table = None;
        let e = render("{schema}.{table}", &message).unwrap_err();
        assert!(e.to_string().contains("logical message"), "{e}");
        assert_eq!(render("{event.type}", &message).unwrap(), "Ping");
        let e = render("{event.aggregate_type}", &message).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`{event.aggregate_type}` is null in this event"
        );
        let json_null = outbox(Value::json("null").unwrap(), Value::Null);
        assert!(matches!(
            render("{event.type}", &json_null),
            Err(RenderError::Null { .. })
        ));

        let mut null_key = order(1);
        null_key.key.as_mut().unwrap().0[1].value = Value::Null;
        let e = render("{key}", &null_key).unwrap_err();
        assert_eq!(e.to_string(), "`{key.id}` is null in this event");
    }

    #[test]
    fn table_names_name_messages_too() {
        assert_eq!(table_name(&order(1)), "public.orders");
        let mut message = order(1);
        message.source.schema = None;
        assert_eq!(table_name(&message), "orders");
        message.source.table = None;
        assert_eq!(table_name(&message), "a logical message");
    }
}
