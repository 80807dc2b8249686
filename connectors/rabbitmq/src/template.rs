//! Templates for the names a message is published under: the `exchange` and the
//! `routing_key`.
//!
//! A template is text with placeholders in braces, parsed once when the sink is built (an
//! unknown placeholder or an unbalanced brace is a configuration error) and rendered per
//! event:
//!
//! | placeholder | renders |
//! |---|---|
//! | `{pipeline}` | the pipeline's name |
//! | `{schema}`, `{table}` | where the change happened |
//! | `{op}` | `insert`, `update`, `delete`, `truncate` or `event` |
//! | `{key}` | the key columns' values in key order, joined by `.` |
//! | `{key.<col>}` | one key column's value |
//! | `{event.type}`, `{event.aggregate_type}` | of an outbox row or logical message |
//!
//! `{{` and `}}` stand for literal braces. Values render as text: text as it is, integers
//! and floats in decimal (floats as in the JSON envelope), booleans as `true`/`false`,
//! bytea as base64, json and arrays as their JSON text, except that a JSON string renders
//! as its text and a JSON null counts as NULL (a logical message's `type` arrives as
//! JSON). A composite `{key}` is joined by
//! `.` because a topic exchange matches routing keys word by word, `.` between words, so
//! a binding such as `orders.acme.*` can select a tenant's rows.
//!
//! Rendering fails, rather than produce a name the user did not mean, when the event lacks
//! what a placeholder asks for: a row without a key, a NULL key column, `{event.type}` on
//! a row change, `{table}` on a logical message (which has no table). The empty template
//! is valid and renders as the empty string (the default exchange; a routing key a fanout
//! exchange ignores).
//!
//! This module uses nothing else of this crate, so it can move into the engine as it is.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use sluice_runtime::{Event, Value};

/// Every placeholder a template may use, for error messages.
pub const PLACEHOLDERS: &str = "{pipeline} {schema} {table} {op} {key} {key.<column>} \
                                {event.type} {event.aggregate_type}";

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
    /// Text copied as it is (`{{` and `}}` already turned into single braces).
    Literal(String),
    /// `{pipeline}`.
    Pipeline,
    /// `{schema}`.
    Schema,
    /// `{table}`.
    Table,
    /// `{op}`.
    Op,
    /// `{key}`: every key column's value, joined by `.`.
    Key,
    /// `{key.<col>}`: one key column's value.
    KeyColumn(String),
    /// `{event.type}`.
    EventType,
    /// `{event.aggregate_type}`.
    AggregateType,
}

/// A template that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A name in braces that is not a placeholder.
    #[error("`{{{name}}}` is not a placeholder; use {PLACEHOLDERS}, or {{{{ and }}}} for literal braces")]
    Unknown {
        /// What was between the braces.
        name: String,
    },

    /// A `{` without its `}`.
    #[error("the `{{` at character {at} is never closed; write {{{{ for a literal brace")]
    Unclosed {
        /// 1-based character number.
        at: usize,
    },

    /// A `}` that closes nothing.
    #[error("the `}}` at character {at} closes nothing; write }}}} for a literal brace")]
    Unopened {
        /// 1-based character number.
        at: usize,
    },
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
        /// `schema.table`.
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

    /// The value a placeholder stands for is NULL.
    #[error("`{{{placeholder}}}` is null in this event")]
    Null {
        /// The placeholder, without braces.
        placeholder: String,
    },
}

impl Template {
    /// Parse `text`. Unknown placeholders and unbalanced braces are errors.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
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
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(placeholder(name)?);
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

    /// What every event renders to, when the template has no placeholder.
    pub fn constant(&self) -> Option<String> {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The template filled in from `event`.
    pub fn render(&self, event: &Event) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.text.len() + 16);
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
                    let key = event.key.as_ref().ok_or_else(|| RenderError::NoKey {
                        placeholder: "key".into(),
                        table: table_name(event),
                    })?;
                    for (i, column) in key.0.iter().enumerate() {
                        if i > 0 {
                            out.push('.');
                        }
                        out.push_str(&required(&column.value, || format!("key.{}", column.name))?);
                    }
                }
                Part::KeyColumn(name) => {
                    let key = event.key.as_ref().ok_or_else(|| RenderError::NoKey {
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
                    out.push_str(&required(value, || format!("key.{name}"))?);
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
                    out.push_str(&required(value, || placeholder.to_string())?);
                }
            }
        }
        Ok(out)
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

/// `schema.table`, or `a logical message`.
pub fn table_name(event: &Event) -> String {
    match (&event.source.schema, &event.source.table) {
        (Some(schema), Some(table)) => format!("{schema}.{table}"),
        (None, Some(table)) => table.to_string(),
        _ => "a logical message".into(),
    }
}

/// A placeholder's value, which may not be NULL.
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
    use sluice_runtime::{testing, Message, Op, Row};

    fn order(id: i64) -> Event {
        let mut e = testing::event("orders", Op::Update, 0x10, 3);
        let mut key = Row::default();
        key.push("tenant".into(), Value::Text("acme".into()));
        key.push("id".into(), Value::Int(id));
        e.key = Some(key);
        e
    }

    fn outbox(kind: Value) -> Event {
        let mut e = testing::event("outbox", Op::Event, 0x10, 0);
        e.message = Some(Message {
            id: Value::Int(1),
            kind,
            aggregate_type: Value::Text("order".into()),
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
        assert_eq!(
            render("{pipeline}/{table}/{op}", &e).unwrap(),
            "p/orders/update"
        );
        assert_eq!(render("{table}.{key}", &e).unwrap(), "orders.acme.42");
        assert_eq!(render("o:{key.id}@{key.tenant}", &e).unwrap(), "o:42@acme");
        let m = outbox(Value::Text("OrderPaid".into()));
        assert_eq!(
            render("{event.aggregate_type}.{event.type}", &m).unwrap(),
            "order.OrderPaid"
        );
    }

    #[test]
    fn double_braces_are_literal_braces() {
        let e = order(1);
        assert_eq!(render("{{{table}}}", &e).unwrap(), "{orders}");
        assert_eq!(render("a}}b{{c", &e).unwrap(), "a}b{c");
        assert_eq!(
            Template::parse("x{{y}}").unwrap().constant().as_deref(),
            Some("x{y}")
        );
    }

    #[test]
    fn the_empty_template_renders_empty() {
        let t = Template::parse("").unwrap();
        assert_eq!(t.render(&order(1)).unwrap(), "");
        assert_eq!(t.constant().as_deref(), Some(""));
        assert!(t.parts().is_empty());
    }

    #[test]
    fn only_templates_without_placeholders_are_constant() {
        assert_eq!(
            Template::parse("events").unwrap().constant().as_deref(),
            Some("events")
        );
        assert_eq!(Template::parse("events.{table}").unwrap().constant(), None);
    }

    #[test]
    fn values_render_as_text_numbers_in_decimal() {
        let cases = [
            (Value::Text("a b:c".into()), Some("a b:c")),
            (Value::Int(-7), Some("-7")),
            (Value::Float(1.5), Some("1.5")),
            (Value::Float(1e-7), Some("1e-7")),
            (Value::Float(f64::NEG_INFINITY), Some("-Infinity")),
            (Value::Bool(false), Some("false")),
            (Value::Bytes(vec![0, 1, 2]), Some("AAEC")),
            (Value::json(r#"{"a": [1]}"#).unwrap(), Some(r#"{"a": [1]}"#)),
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
    }

    #[test]
    fn unknown_placeholders_and_bad_braces_do_not_parse() {
        let e = Template::parse("{table}.{id}").unwrap_err();
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
    }

    #[test]
    fn parts_are_exposed_in_order() {
        let t = Template::parse("c.{table}.{key.id}").unwrap();
        assert_eq!(
            t.parts(),
            [
                Part::Literal("c.".into()),
                Part::Table,
                Part::Literal(".".into()),
                Part::KeyColumn("id".into()),
            ]
        );
        assert_eq!(t.to_string(), "c.{table}.{key.id}");
        assert_eq!(t.as_str(), "c.{table}.{key.id}");
    }

    #[test]
    fn events_without_what_a_placeholder_needs_do_not_render() {
        let mut keyless = order(1);
        keyless.key = None;
        let e = render("{table}.{key}", &keyless).unwrap_err();
        assert!(e.to_string().contains("public.orders has none"), "{e}");

        let e = render("{key.sku}", &order(1)).unwrap_err();
        assert!(e.to_string().contains("tenant, id"), "{e}");

        let e = render("{event.type}", &order(1)).unwrap_err();
        assert!(
            e.to_string().contains("not on updates of public.orders"),
            "{e}"
        );

        let mut message = outbox(Value::Text("Ping".into()));
        message.source.schema = None;
        message.source.table = None;
        let e = render("{schema}.{table}", &message).unwrap_err();
        assert!(e.to_string().contains("logical message"), "{e}");
        assert_eq!(render("{event.type}", &message).unwrap(), "Ping");

        let e = render("{event.type}", &outbox(Value::Null)).unwrap_err();
        assert_eq!(e.to_string(), "`{event.type}` is null in this event");

        let mut null_key = order(1);
        null_key.key.as_mut().unwrap().0[1].value = Value::Null;
        let e = render("{key}", &null_key).unwrap_err();
        assert_eq!(e.to_string(), "`{key.id}` is null in this event");
    }
}
