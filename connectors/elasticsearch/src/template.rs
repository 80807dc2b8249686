//! Name templates: `"{table}"`, `"{schema}-{table}"`, `"{key}"`, `"{key.tenant}-{key.id}"`.
//!
//! A template is literal text with placeholders in braces, parsed once when the sink is
//! built (a bad template is a config error) and rendered per event:
//!
//! | placeholder | renders |
//! |---|---|
//! | `{pipeline}` | the pipeline's name |
//! | `{schema}`, `{table}` | where the change happened (empty for a logical message) |
//! | `{op}` | `insert`, `update`, `delete`, `truncate`, `event` |
//! | `{key}` | the key column values, in key order, joined by `_` |
//! | `{key.<col>}` | one key column's value |
//! | `{event.type}`, `{event.aggregate_type}` | of an outbox row or message (empty otherwise) |
//!
//! `{{` and `}}` stand for literal braces. Values render as text: numbers in decimal,
//! text as it is, booleans as `true`/`false`, json as its JSON text, bytea as base64.
//!
//! Self-contained on purpose: only the event model is used, so the parser can move to
//! the engine when other sinks want it.

use std::fmt::{self, Write as _};

use base64::Engine as _;
use sluice_runtime::{Event, Row, Value};

/// Every placeholder a template may use, for error messages.
pub const PLACEHOLDERS: &str = "{pipeline} {schema} {table} {op} {key} {key.<column>} \
                                {event.type} {event.aggregate_type}";

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

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
    EventAggregateType,
}

/// Why a template does not parse; says where and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

/// Why a template cannot be rendered for one event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// `{key}` for an event without a key.
    #[error("the table has no key, so `{{key}}` has nothing to render; give the table a primary key or use a template without {{key}}")]
    NoKey,
    /// `{key.<col>}` for a column the key does not have.
    #[error("the key has no column `{0}` (used as `{{key.{0}}}`)")]
    NoKeyColumn(String),
}

impl Template {
    /// Parse `text`. Errors name the character where the problem starts (from 1).
    pub fn parse(text: &str) -> Result<Template, ParseError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(ParseError(format!(
                        "`}}` at character {} closes nothing; write `}}}}` for a literal brace",
                        position(text, at)
                    )))
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let Some(len) = rest.find('}') else {
                        return Err(ParseError(format!(
                            "the `{{` at character {} is never closed; placeholders are {PLACEHOLDERS}",
                            position(text, at)
                        )));
                    };
                    let name = &rest[..len];
                    let part = placeholder(name).ok_or_else(|| {
                        ParseError(format!(
                            "`{{{name}}}` at character {} is not a placeholder; use one of {PLACEHOLDERS}",
                            position(text, at)
                        ))
                    })?;
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    // Skip the name and the closing brace.
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if parts.is_empty() {
            return Err(ParseError(format!(
                "it is empty; use text and placeholders such as {PLACEHOLDERS}"
            )));
        }
        Ok(Template { parts })
    }

    /// Whether the rendering can differ between two events of one table: it uses `{op}`,
    /// the key or the event fields.
    pub fn depends_on_row(&self) -> bool {
        self.parts.iter().any(|p| {
            !matches!(
                p,
                Part::Literal(_) | Part::Pipeline | Part::Schema | Part::Table
            )
        })
    }

    /// Render for `event`, with its key columns from `key` (the event's own key, or the
    /// old key of an update that changed it). Appends to `out`.
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
                Part::Schema => out.push_str(event.source.schema.as_deref().unwrap_or("")),
                Part::Table => out.push_str(event.source.table.as_deref().unwrap_or("")),
                Part::Op => out.push_str(event.op.as_str()),
                Part::Key => {
                    let key = key.filter(|k| !k.0.is_empty()).ok_or(RenderError::NoKey)?;
                    for (i, column) in key.0.iter().enumerate() {
                        if i > 0 {
                            out.push('_');
                        }
                        push_value(&column.value, out);
                    }
                }
                Part::KeyColumn(name) => {
                    let value = key
                        .and_then(|k| k.get(name))
                        .ok_or_else(|| RenderError::NoKeyColumn(name.clone()))?;
                    push_value(value, out);
                }
                Part::EventType => {
                    if let Some(m) = &event.message {
                        push_value(&m.kind, out);
                    }
                }
                Part::EventAggregateType => {
                    if let Some(m) = &event.message {
                        push_value(&m.aggregate_type, out);
                    }
                }
            }
        }
        Ok(())
    }

    /// Render for `event` with its own key.
    pub fn render(&self, event: &Event) -> Result<String, RenderError> {
        let mut out = String::new();
        self.render_into(event, event.key.as_ref(), &mut out)?;
        Ok(out)
    }
}

/// Templates print as they parse.
impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}"))?,
                Part::Pipeline => f.write_str("{pipeline}")?,
                Part::Schema => f.write_str("{schema}")?,
                Part::Table => f.write_str("{table}")?,
                Part::Op => f.write_str("{op}")?,
                Part::Key => f.write_str("{key}")?,
                Part::KeyColumn(name) => write!(f, "{{key.{name}}}")?,
                Part::EventType => f.write_str("{event.type}")?,
                Part::EventAggregateType => f.write_str("{event.aggregate_type}")?,
            }
        }
        Ok(())
    }
}

fn placeholder(name: &str) -> Option<Part> {
    Some(match name.trim() {
        "pipeline" => Part::Pipeline,
        "schema" => Part::Schema,
        "table" => Part::Table,
        "op" => Part::Op,
        "key" => Part::Key,
        "event.type" => Part::EventType,
        "event.aggregate_type" => Part::EventAggregateType,
        other => match other.strip_prefix("key.") {
            Some(column) if !column.is_empty() => Part::KeyColumn(column.to_string()),
            _ => return None,
        },
    })
}

/// 1-based character position of byte offset `at`.
fn position(text: &str, at: usize) -> usize {
    text[..at].chars().count() + 1
}

/// A value as template text.
fn push_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => {
            let _ = write!(out, "{f}");
        }
        Value::Text(t) => out.push_str(t),
        Value::Json(raw) => out.push_str(raw.get()),
        Value::Bytes(b) => base64::engine::general_purpose::STANDARD.encode_string(b, out),
        Value::Array(_) => {
            out.push_str(&serde_json::to_string(value).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_runtime::{testing, Message, Op};

    use super::*;

    fn order(key: &[(&str, Value)]) -> Event {
        let mut e = testing::event("orders", Op::Update, 0x10, 0);
        let mut row = Row::default();
        for (name, value) in key {
            row.push(Arc::from(*name), value.clone());
        }
        e.key = Some(row.clone());
        e.after = Some(row);
        e
    }

    fn render(template: &str, event: &Event) -> Result<String, RenderError> {
        Template::parse(template).unwrap().render(event)
    }

    #[test]
    fn placeholders_render_from_the_event() {
        let e = order(&[("id", Value::Int(42))]);
        assert_eq!(render("{table}", &e).unwrap(), "orders");
        assert_eq!(
            render("{pipeline}.{schema}.{table}-{op}", &e).unwrap(),
            "p.public.orders-update"
        );
        assert_eq!(render("{key}", &e).unwrap(), "42");
        assert_eq!(render("doc-{key.id}", &e).unwrap(), "doc-42");
        assert_eq!(render("{ key }", &e).unwrap(), "42", "spaces are trimmed");
    }

    #[test]
    fn composite_keys_join_with_underscores_in_key_order() {
        let e = order(&[
            ("tenant", Value::Text("acme".into())),
            ("id", Value::Int(7)),
            ("flag", Value::Bool(true)),
            ("blob", Value::Bytes(vec![0, 1, 2])),
            ("doc", Value::json(r#"{"a":1}"#).unwrap()),
            ("ratio", Value::Float(1.5)),
        ]);
        assert_eq!(
            render("{key}", &e).unwrap(),
            r#"acme_7_true_AAEC_{"a":1}_1.5"#
        );
        assert_eq!(render("{key.id}/{key.tenant}", &e).unwrap(), "7/acme");
    }

    #[test]
    fn a_key_from_elsewhere_replaces_the_events_own() {
        let e = order(&[("id", Value::Int(42))]);
        let old = testing::id_row(41);
        let t = Template::parse("{table}/{key}").unwrap();
        let mut out = String::new();
        t.render_into(&e, Some(&old), &mut out).unwrap();
        assert_eq!(out, "orders/41");
    }

    #[test]
    fn message_fields_render_for_events_and_are_empty_for_rows() {
        let mut e = testing::event("outbox", Op::Event, 0x10, 0);
        e.message = Some(Message {
            id: Value::Text("m1".into()),
            kind: Value::Text("OrderPaid".into()),
            aggregate_type: Value::Text("order".into()),
            aggregate_id: Value::Text("42".into()),
            payload: Value::Null,
            headers: Value::Null,
        });
        assert_eq!(
            render("{event.aggregate_type}-{event.type}", &e).unwrap(),
            "order-OrderPaid"
        );
        let row = order(&[("id", Value::Int(1))]);
        assert_eq!(render("x{event.type}", &row).unwrap(), "x");
    }

    #[test]
    fn missing_keys_are_render_errors() {
        let mut e = testing::event("logs", Op::Insert, 0x10, 0);
        assert_eq!(render("{key}", &e), Err(RenderError::NoKey));
        e.key = Some(testing::id_row(1));
        assert_eq!(
            render("{key.tenant}", &e),
            Err(RenderError::NoKeyColumn("tenant".into()))
        );
        assert!(render("{key.tenant}", &e)
            .unwrap_err()
            .to_string()
            .contains("`tenant`"));
    }

    #[test]
    fn doubled_braces_are_literal() {
        let e = order(&[("id", Value::Int(1))]);
        assert_eq!(render("{{{table}}}", &e).unwrap(), "{orders}");
        let t = Template::parse("a{{b}}{key}").unwrap();
        assert_eq!(t.to_string(), "a{{b}}{key}");
        assert_eq!(Template::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn bad_templates_say_where_and_what_is_allowed() {
        let e = |t: &str| Template::parse(t).unwrap_err().to_string();
        let unknown = e("ix-{tabel}");
        assert!(
            unknown.contains("`{tabel}` at character 4") && unknown.contains("{table}"),
            "{unknown}"
        );
        assert!(e("{table").contains("never closed"), "{}", e("{table"));
        assert!(e("a}b").contains("character 2"), "{}", e("a}b"));
        assert!(e("").contains("empty"));
        assert!(e("{key.}").contains("not a placeholder"));
        assert!(e("é{x}").contains("character 2"), "{}", e("é{x}"));
    }

    #[test]
    fn row_dependence_is_known_before_rendering() {
        let depends = |t: &str| Template::parse(t).unwrap().depends_on_row();
        assert!(!depends("{pipeline}-{schema}-{table}"));
        assert!(!depends("fixed"));
        for t in [
            "{key}",
            "{key.id}",
            "{op}",
            "{event.type}",
            "x{event.aggregate_type}",
        ] {
            assert!(depends(t), "{t}");
        }
    }
}
