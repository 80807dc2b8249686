//! Templates for names built from events: Redis keys (`key: "{table}:{key}"`) and stream
//! names (`stream: "{schema}.{table}"`).
//!
//! A template is text with placeholders in braces: `{pipeline}`, `{schema}`, `{table}`,
//! `{op}`, `{key}` (the key columns' values joined by `:` in key order), `{key.<col>}` (one
//! key column), `{event.type}` and `{event.aggregate_type}` (outbox rows and logical
//! messages). `{{` and `}}` stand for literal braces. Templates are parsed once, when the
//! configuration is read, so an unknown placeholder is a configuration error; rendering an
//! event only fails when the event lacks what a placeholder asks for (a table without a
//! key, a logical message without a table).
//!
//! Values render as text: text as it is, integers and floats in decimal (floats as in the
//! JSON envelope), booleans as `true`/`false`, bytea as base64, json and arrays as their
//! JSON text. This module uses nothing else of this crate, so it can move into the
//! engine as it is.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use sluice_runtime::{Event, Row, Value};

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Text copied as it is.
    Literal(String),
    /// `{pipeline}`: the pipeline's name.
    Pipeline,
    /// `{schema}`: the table's schema.
    Schema,
    /// `{table}`: the table's name.
    Table,
    /// `{op}`: insert, update, delete, truncate or event.
    Op,
    /// `{key}`: every key column's value, joined by `:` in key order.
    Key,
    /// `{key.<col>}`: one key column's value.
    KeyColumn(String),
    /// `{event.type}`: the type of an outbox row or logical message.
    EventType,
    /// `{event.aggregate_type}`: the aggregate type of an outbox row or logical message.
    AggregateType,
}

impl Part {
    /// Whether this part depends on the row's key.
    pub fn is_key(&self) -> bool {
        matches!(self, Part::Key | Part::KeyColumn(_))
    }
}

/// A template that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    #[error(
        "`{{{name}}}` is not a placeholder; use {{pipeline}} {{schema}} {{table}} {{op}} {{key}} \
         {{key.<column>}} {{event.type}} or {{event.aggregate_type}} (write {{{{ and }}}} for literal braces)"
    )]
    Unknown { name: String },

    #[error("a `{{` at character {at} is never closed; write {{{{ for a literal brace")]
    Unclosed { at: usize },

    #[error("a `}}` at character {at} closes nothing; write }}}} for a literal brace")]
    Unopened { at: usize },

    #[error("the template is empty")]
    Empty,
}

/// An event that lacks what a placeholder asks for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    #[error(
        "`{{{placeholder}}}` needs the row's key, and {table} has none (give it a primary key or a replica identity)"
    )]
    NoKey { placeholder: String, table: String },

    #[error("`{{key.{column}}}` names no key column of {table} (its key columns: {columns})")]
    NoKeyColumn {
        column: String,
        table: String,
        columns: String,
    },

    #[error("`{{{placeholder}}}` is empty for a logical message, which has no table")]
    NoTable { placeholder: &'static str },

    #[error(
        "`{{{placeholder}}}` is only set on outbox rows and logical messages (op: event), not on {op}s of {table}"
    )]
    NotAnEvent {
        placeholder: &'static str,
        op: &'static str,
        table: String,
    },

    #[error("`{{{placeholder}}}` is null in this event")]
    Null { placeholder: String },
}

impl Template {
    /// Parse `text`. Unknown placeholders and unbalanced braces are errors.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|&(_, next)| next == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|&(_, next)| next == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let end = rest.find('}').ok_or(TemplateError::Unclosed {
                        at: char_number(text, at),
                    })?;
                    let name = &rest[..end];
                    if name.contains('{') {
                        return Err(TemplateError::Unclosed {
                            at: char_number(text, at),
                        });
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(placeholder(name)?);
                    // Skip the name and its closing brace.
                    for _ in 0..name.chars().count() + 1 {
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

    /// The template filled in from `event`, with the event's own key.
    pub fn render(&self, event: &Event) -> Result<String, RenderError> {
        self.render_with_key(event, event.key.as_ref())
    }

    /// The template filled in from `event`, with `key` standing for the row's key (the
    /// previous key of a row whose key changed).
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
                    let key = key.ok_or_else(|| RenderError::NoKey {
                        placeholder: "key".into(),
                        table: table_name(event),
                    })?;
                    for (i, column) in key.0.iter().enumerate() {
                        if i > 0 {
                            out.push(':');
                        }
                        push_required(&column.value, out, || format!("key.{}", column.name))?;
                    }
                }
                Part::KeyColumn(name) => {
                    let key = key.ok_or_else(|| RenderError::NoKey {
                        placeholder: format!("key.{name}"),
                        table: table_name(event),
                    })?;
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
                    let placeholder = if *part == Part::EventType {
                        "event.type"
                    } else {
                        "event.aggregate_type"
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
                    let value = if *part == Part::EventType {
                        &message.kind
                    } else {
                        &message.aggregate_type
                    };
                    push_required(value, out, || placeholder.to_string())?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A value as template text; `None` for SQL NULL.
pub fn value_text(value: &Value) -> Option<Cow<'_, str>> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Int(i) => Cow::Owned(i.to_string()),
        Value::Float(f) if f.is_nan() => Cow::Borrowed("NaN"),
        Value::Float(f) if f.is_infinite() => {
            Cow::Borrowed(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        // serde_json writes floats the shortest way that reads back the same, as the
        // envelope does.
        Value::Float(f) => Cow::Owned(
            serde_json::Number::from_f64(*f).map_or_else(|| f.to_string(), |n| n.to_string()),
        ),
        Value::Text(t) => Cow::Borrowed(t.as_str()),
        Value::Json(raw) => Cow::Borrowed(raw.get()),
        Value::Bytes(b) => Cow::Owned(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Array(_) => Cow::Owned(
            serde_json::to_string(value).expect("an array of values always encodes as JSON"),
        ),
    })
}

/// Append a placeholder's value, which may not be NULL, to `out`.
fn push_required(
    value: &Value,
    out: &mut String,
    placeholder: impl FnOnce() -> String,
) -> Result<(), RenderError> {
    match value {
        Value::Null => {
            return Err(RenderError::Null {
                placeholder: placeholder(),
            })
        }
        Value::Text(text) => out.push_str(text),
        Value::Int(i) => {
            use fmt::Write as _;
            write!(out, "{i}").expect("a String takes any text");
        }
        other => out.push_str(&value_text(other).expect("only NULL has no text")),
    }
    Ok(())
}

fn placeholder(name: &str) -> Result<Part, TemplateError> {
    Ok(match name {
        "pipeline" => Part::Pipeline,
        "schema" => Part::Schema,
        "table" => Part::Table,
        "op" => Part::Op,
        "key" => Part::Key,
        "event.type" => Part::EventType,
        "event.aggregate_type" => Part::AggregateType,
        _ => match name.strip_prefix("key.") {
            Some(column) if !column.is_empty() => Part::KeyColumn(column.to_string()),
            _ => {
                return Err(TemplateError::Unknown {
                    name: name.to_string(),
                })
            }
        },
    })
}

/// `schema.table` for messages, or `a logical message`.
pub fn table_name(event: &Event) -> String {
    match (&event.source.schema, &event.source.table) {
        (Some(schema), Some(table)) => format!("{schema}.{table}"),
        (None, Some(table)) => table.to_string(),
        _ => "a logical message".into(),
    }
}

/// 1-based character number of byte offset `at`.
fn char_number(text: &str, at: usize) -> usize {
    text[..at].chars().count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::{testing, Message, Op};

    fn order(id: i64) -> Event {
        let mut e = testing::event("orders", Op::Update, 0x10, 3);
        let mut key = Row::default();
        key.push("tenant".into(), Value::Text("acme".into()));
        key.push("id".into(), Value::Int(id));
        e.key = Some(key);
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

        let mut m = testing::event("outbox", Op::Event, 0x10, 0);
        m.message = Some(Message {
            id: Value::Int(1),
            kind: Value::Text("OrderPaid".into()),
            aggregate_type: Value::Text("order".into()),
            aggregate_id: Value::Text("42".into()),
            payload: Value::Null,
            headers: Value::Null,
        });
        assert_eq!(
            render("{event.aggregate_type}.{event.type}", &m).unwrap(),
            "order.OrderPaid"
        );
    }

    #[test]
    fn double_braces_are_literal_braces() {
        let e = order(1);
        assert_eq!(render("{{{table}}}:{key}", &e).unwrap(), "{orders}:acme:1");
        assert_eq!(render("a}}b{{c", &e).unwrap(), "a}b{c");
    }

    #[test]
    fn values_render_as_text_numbers_in_decimal() {
        let cases = [
            (Value::Text("a b:c".into()), Some("a b:c")),
            (Value::Int(-7), Some("-7")),
            (Value::Int(i64::MAX), Some("9223372036854775807")),
            (Value::Float(1.5), Some("1.5")),
            (Value::Float(1e-7), Some("1e-7")),
            (Value::Float(f64::NAN), Some("NaN")),
            (Value::Bool(true), Some("true")),
            (Value::Bytes(vec![0, 1, 2]), Some("AAEC")),
            (Value::json(r#"{"a": [1]}"#).unwrap(), Some(r#"{"a": [1]}"#)),
            (
                Value::Array(vec![Value::Int(1), Value::Text("x".into())]),
                Some(r#"[1,"x"]"#),
            ),
            (Value::Null, None),
        ];
        for (value, text) in cases {
            assert_eq!(value_text(&value).as_deref(), text, "{value:?}");
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
    }

    #[test]
    fn unknown_placeholders_and_bad_braces_do_not_parse() {
        let e = Template::parse("{table}:{id}").unwrap_err();
        assert_eq!(e, TemplateError::Unknown { name: "id".into() });
        assert!(e.to_string().contains("{key.<column>}"), "{e}");
        assert!(matches!(
            Template::parse("{key.}"),
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
        assert_eq!(Template::parse("").unwrap_err(), TemplateError::Empty);
    }

    #[test]
    fn parts_are_exposed_in_order() {
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
        assert_eq!(t.to_string(), "c:{table}:{key.id}");
    }

    #[test]
    fn events_without_what_a_placeholder_needs_do_not_render() {
        let mut keyless = order(1);
        keyless.key = None;
        let e = render("{table}:{key}", &keyless).unwrap_err();
        assert!(e.to_string().contains("public.orders has none"), "{e}");

        let e = render("{key.sku}", &order(1)).unwrap_err();
        assert!(e.to_string().contains("tenant, id"), "{e}");

        let e = render("{event.type}", &order(1)).unwrap_err();
        assert!(
            e.to_string().contains("not on updates of public.orders"),
            "{e}"
        );

        let mut message = testing::event("x", Op::Event, 1, 0);
        message.source.schema = None;
        message.source.table = None;
        let e = render("{schema}.{table}", &message).unwrap_err();
        assert!(e.to_string().contains("logical message"), "{e}");

        let mut null_key = order(1);
        null_key.key.as_mut().unwrap().0[1].value = Value::Null;
        let e = render("{key}", &null_key).unwrap_err();
        assert_eq!(e.to_string(), "`{key.id}` is null in this event");
    }
}
