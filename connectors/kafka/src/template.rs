//! The `topic` template: `"{schema}.{table}"`, `"{event.aggregate_type}"`,
//! `"cdc.{pipeline}.{table}"`.
//!
//! A template is text with placeholders in braces, parsed once when the sink is built (a
//! bad template is a configuration error) and rendered per event:
//!
//! | placeholder | renders |
//! |---|---|
//! | `{pipeline}` | the pipeline's name |
//! | `{schema}`, `{table}` | the changed table (a logical message has none) |
//! | `{op}` | `insert`, `update`, `delete`, `truncate`, `event` |
//! | `{key}` | the key columns' values, in key order, joined by `:` |
//! | `{key.<col>}` | one key column's value |
//! | `{event.type}`, `{event.aggregate_type}` | of an outbox row or logical message |
//!
//! `{{` and `}}` stand for literal braces. Values render as text (see [`value_text`]).
//! Rendering fails only when the event lacks what a placeholder asks for; the sink then
//! rejects that event with the reason.
//!
//! Self-contained on purpose: only the event model is used, so it can move into the
//! engine beside the other sinks' copies.

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
enum Part {
    Literal(String),
    Pipeline,
    Schema,
    Table,
    Op,
    Key,
    KeyColumn(String),
    EventType,
    AggregateType,
}

/// A template that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A placeholder that does not exist.
    #[error(
        "`{{{name}}}` is not a placeholder; use {{pipeline}} {{schema}} {{table}} {{op}} {{key}} \
         {{key.<column>}} {{event.type}} or {{event.aggregate_type}} (write {{{{ and }}}} for literal braces)"
    )]
    Unknown {
        /// What was written between the braces.
        name: String,
    },

    /// A `{` without its `}`.
    #[error("a `{{` at character {at} is never closed; write {{{{ for a literal brace")]
    Unclosed {
        /// The character's number, from 1.
        at: usize,
    },

    /// A `}` without its `{`.
    #[error("a `}}` at character {at} closes nothing; write }}}} for a literal brace")]
    Unopened {
        /// The character's number, from 1.
        at: usize,
    },

    /// Nothing at all.
    #[error("the template is empty")]
    Empty,
}

/// An event that lacks what a placeholder asks for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// `{key}` or `{key.<col>}` for a row without a key.
    #[error(
        "`{{{placeholder}}}` needs the row's key, and {table} has none (give it a primary key or a replica identity)"
    )]
    NoKey {
        /// The placeholder, without braces.
        placeholder: String,
        /// The table.
        table: String,
    },

    /// `{key.<col>}` for a column the key does not have.
    #[error("`{{key.{column}}}` names no key column of {table} (its key columns: {columns})")]
    NoKeyColumn {
        /// The column asked for.
        column: String,
        /// The table.
        table: String,
        /// The key's columns, comma separated.
        columns: String,
    },

    /// `{schema}` or `{table}` for a logical message.
    #[error("`{{{placeholder}}}` is empty for a logical message, which has no table")]
    NoTable {
        /// `schema` or `table`.
        placeholder: &'static str,
    },

    /// `{event.*}` for a row change.
    #[error(
        "`{{{placeholder}}}` is only set on outbox rows and logical messages (op: event), not on {op}s of {table}"
    )]
    NotAnEvent {
        /// `event.type` or `event.aggregate_type`.
        placeholder: &'static str,
        /// The event's op.
        op: &'static str,
        /// The table.
        table: String,
    },

    /// A placeholder whose value is SQL NULL (or JSON null).
    #[error("`{{{placeholder}}}` is null in this event")]
    Null {
        /// The placeholder, without braces.
        placeholder: String,
    },
}

impl Template {
    /// Parse `text`. Unknown placeholders and unbalanced braces are errors that say where.
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
                    let unclosed = TemplateError::Unclosed {
                        at: char_number(text, at),
                    };
                    let rest = &text[at + 1..];
                    let end = rest.find('}').ok_or(unclosed.clone())?;
                    let name = &rest[..end];
                    if name.contains('{') {
                        return Err(unclosed);
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

    /// What every event renders to, when the template has no placeholder.
    pub fn constant(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// The template filled in from `event`, written into `out` (cleared first).
    pub fn render_into(&self, event: &Event, out: &mut String) -> Result<(), RenderError> {
        out.clear();
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
                    let key = row_key(event, "key")?;
                    for (i, column) in key.0.iter().enumerate() {
                        if i > 0 {
                            out.push(':');
                        }
                        out.push_str(&required(&column.value, || format!("key.{}", column.name))?);
                    }
                }
                Part::KeyColumn(name) => {
                    let key = row_key(event, &format!("key.{name}"))?;
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
                    out.push_str(&required(value, || format!("key.{name}"))?);
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
                    out.push_str(&required(value, || placeholder.to_string())?);
                }
            }
        }
        Ok(())
    }

    /// The template filled in from `event`.
    pub fn render(&self, event: &Event) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.text.len() + 16);
        self.render_into(event, &mut out)?;
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A value as text; `None` for SQL NULL and JSON null. Text as it is, integers and floats
/// in decimal (floats as in the envelope), booleans as `true`/`false`, bytea as base64,
/// arrays as JSON. A json value that is a JSON string renders as that string (a logical
/// message's `"order"` is `order`); any other json as its JSON text.
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
        Value::Json(raw) => {
            let text = raw.get().trim();
            if text == "null" {
                return None;
            }
            match text.starts_with('"') {
                true => match serde_json::from_str::<String>(text) {
                    Ok(s) => Cow::Owned(s),
                    Err(_) => Cow::Borrowed(text),
                },
                false => Cow::Borrowed(text),
            }
        }
        Value::Bytes(b) => Cow::Owned(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Array(_) => Cow::Owned(
            serde_json::to_string(value).expect("an array of values always encodes as JSON"),
        ),
    })
}

/// `schema.table`, or `a logical message`.
pub fn table_name(event: &Event) -> String {
    match (&event.source.schema, &event.source.table) {
        (Some(schema), Some(table)) => format!("{schema}.{table}"),
        (None, Some(table)) => table.to_string(),
        _ => "a logical message".into(),
    }
}

fn row_key<'e>(event: &'e Event, placeholder: &str) -> Result<&'e Row, RenderError> {
    event.key.as_ref().ok_or_else(|| RenderError::NoKey {
        placeholder: placeholder.to_string(),
        table: table_name(event),
    })
}

/// A placeholder's value, which may not be null.
fn required(
    value: &Value,
    placeholder: impl FnOnce() -> String,
) -> Result<Cow<'_, str>, RenderError> {
    value_text(value).ok_or_else(|| RenderError::Null {
        placeholder: placeholder(),
    })
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

    fn outbox(aggregate_type: Value) -> Event {
        let mut e = testing::event("outbox", Op::Event, 0x10, 0);
        e.message = Some(Message {
            id: Value::Int(1),
            kind: Value::Text("OrderPaid".into()),
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
        assert_eq!(render("{schema}.{table}", &e).unwrap(), "public.orders");
        assert_eq!(render("{pipeline}-{op}", &e).unwrap(), "p-update");
        assert_eq!(render("k.{key}", &e).unwrap(), "k.acme:42");
        assert_eq!(render("{key.id}_{key.tenant}", &e).unwrap(), "42_acme");
        let m = outbox(Value::Text("order".into()));
        assert_eq!(
            render("{event.aggregate_type}.{event.type}", &m).unwrap(),
            "order.OrderPaid"
        );
    }

    #[test]
    fn json_strings_render_without_quotes() {
        // A logical message's fields arrive as json values.
        let m = outbox(Value::json(r#""order""#).unwrap());
        assert_eq!(render("{event.aggregate_type}", &m).unwrap(), "order");
        let cases = [
            (Value::json(r#""a\"b""#).unwrap(), Some(r#"a"b"#)),
            (Value::json("17").unwrap(), Some("17")),
            (Value::json(r#"{"a": 1}"#).unwrap(), Some(r#"{"a": 1}"#)),
            (Value::json("null").unwrap(), None),
            (Value::Int(-7), Some("-7")),
            (Value::Float(1.5), Some("1.5")),
            (Value::Float(f64::INFINITY), Some("Infinity")),
            (Value::Bool(false), Some("false")),
            (Value::Bytes(vec![0, 1, 2]), Some("AAEC")),
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
    fn braces_and_constants() {
        let e = order(1);
        assert_eq!(render("{{{table}}}", &e).unwrap(), "{orders}");
        let t = Template::parse("a}}b{{c").unwrap();
        assert_eq!(t.constant(), Some("a}b{c"));
        assert_eq!(Template::parse("{table}").unwrap().constant(), None);
        assert_eq!(t.to_string(), "a}}b{{c");
    }

    #[test]
    fn bad_templates_say_where() {
        let e = Template::parse("{schema}.{tabel}").unwrap_err();
        assert_eq!(
            e,
            TemplateError::Unknown {
                name: "tabel".into()
            }
        );
        assert!(e.to_string().contains("{event.aggregate_type}"), "{e}");
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
            Template::parse("{key.}"),
            Err(TemplateError::Unknown { .. })
        ));
        assert_eq!(Template::parse("").unwrap_err(), TemplateError::Empty);
    }

    #[test]
    fn events_without_what_a_placeholder_needs_do_not_render() {
        let e = render("{event.aggregate_type}", &order(1)).unwrap_err();
        assert!(
            e.to_string().contains("not on updates of public.orders"),
            "{e}"
        );
        let mut keyless = order(1);
        keyless.key = None;
        let e = render("{key}", &keyless).unwrap_err();
        assert!(e.to_string().contains("public.orders has none"), "{e}");
        let e = render("{key.sku}", &order(1)).unwrap_err();
        assert!(e.to_string().contains("tenant, id"), "{e}");
        let mut message = outbox(Value::Null);
        message.source.schema = None;
        message.source.table = None;
        let e = render("{table}", &message).unwrap_err();
        assert!(e.to_string().contains("logical message"), "{e}");
        let e = render("{event.aggregate_type}", &message).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`{event.aggregate_type}` is null in this event"
        );
    }
}
