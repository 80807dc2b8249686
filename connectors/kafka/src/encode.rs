//! An event as a Kafka message: its topic, key, value and headers.
//!
//! - **Topic**: the `topic` template, or by default `{event.aggregate_type}` for outbox rows
//!   and logical messages and `{schema}.{table}` for row changes. A topic that is not a
//!   legal Kafka name (`[a-zA-Z0-9._-]`, at most 249 characters) rejects the event.
//! - **Key**: an event's aggregate id; a row's key columns' values in key order, joined
//!   by `:` (a `:` or `\` inside a value is escaped with `\`, so two keys never give one
//!   text). With the producer's partitioner, one key always lands on one partition.
//!   Without a key (a keyless table, a message without aggregate id, a truncate) the
//!   message has a null key and goes to partition 0, so such messages keep their order.
//! - **Value**: the envelope (`value: envelope`), or (`value: payload`) an event's
//!   payload, an insert's or update's `after` as a JSON object, a delete as a null value
//!   (a tombstone, which compacted topics use to forget the key); a truncate is not sent.
//! - **Headers**: `id` (the event id), `op`, `table` (`schema.table`, row changes and
//!   outbox rows), `type` (events), then every string value of an event's own `headers`
//!   object whose name is not one of those four.

use std::borrow::Cow;

use rdkafka::message::{Header, OwnedHeaders};
use sluice_runtime::template::{value_text, Template};
use sluice_runtime::{Event, Op, Row, Value};

use crate::config::ValueMode;

/// The default topic of outbox rows and logical messages.
pub const DEFAULT_EVENT_TOPIC: &str = "{event.aggregate_type}";

/// The default topic of row changes.
pub const DEFAULT_CHANGE_TOPIC: &str = "{schema}.{table}";

/// The headers every message may carry, before the event's own.
const OWN_HEADERS: [&str; 4] = ["id", "op", "table", "type"];

/// One message, borrowing what it can from its event.
pub struct Message<'e> {
    /// The rendered topic.
    pub topic: String,
    /// `None`: a null key (the message goes to partition 0).
    pub key: Option<String>,
    /// `None`: a null value (a tombstone).
    pub value: Option<Cow<'e, [u8]>>,
    pub headers: OwnedHeaders,
}

impl Message<'_> {
    /// The explicit partition: 0 for a null key (librdkafka's partitioners would scatter
    /// keyless messages), otherwise the partitioner's choice.
    pub fn partition(&self) -> Option<i32> {
        match self.key {
            None => Some(0),
            Some(_) => None,
        }
    }

    /// Bytes of key and value, as the broker's size limit counts them (roughly).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, String::len) + self.value.as_ref().map_or(0, |v| v.len())
    }
}

/// Turns events into messages.
#[derive(Clone, Debug)]
pub struct Encoder {
    /// The one template of every event, when `topic` is set.
    topic: Option<Template>,
    event_topic: Template,
    change_topic: Template,
    value: ValueMode,
}

impl Encoder {
    /// An encoder with `topic` for every event (`None`: the defaults) and `value`.
    pub fn new(topic: Option<Template>, value: ValueMode) -> Self {
        Encoder {
            topic,
            event_topic: Template::parse(DEFAULT_EVENT_TOPIC).expect("a valid template"),
            change_topic: Template::parse(DEFAULT_CHANGE_TOPIC).expect("a valid template"),
            value,
        }
    }

    /// The topic template `event` uses.
    pub fn template(&self, event: &Event) -> &Template {
        match (&self.topic, event.op) {
            (Some(topic), _) => topic,
            (None, Op::Event) => &self.event_topic,
            (None, _) => &self.change_topic,
        }
    }

    /// The message for `event`; `Ok(None)` when nothing is sent for it (a truncate in
    /// payload mode). An error is why the event can never be sent as it is.
    pub fn encode<'e>(&self, event: &'e Event) -> Result<Option<Message<'e>>, String> {
        let value = match self.value(event)? {
            Body::Skip => return Ok(None),
            Body::Tombstone => None,
            Body::Bytes(bytes) => Some(bytes),
        };
        let template = self.template(event);
        let topic = template
            .render(event)
            .map_err(|e| format!("cannot render the topic `{template}`: {e}"))?;
        check_topic(&topic)
            .map_err(|why| format!("topic `{topic}` (from `{template}`) is not valid: {why}"))?;
        Ok(Some(Message {
            topic,
            key: key(event),
            value,
            headers: headers(event),
        }))
    }

    fn value<'e>(&self, event: &'e Event) -> Result<Body<'e>, String> {
        if self.value == ValueMode::Envelope {
            return Ok(Body::Bytes(Cow::Borrowed(&event.json()[..])));
        }
        match event.op {
            Op::Insert | Op::Update | Op::Read => match &event.after {
                Some(after) => json(&complete(after, event.before.as_ref(), &event.unchanged)),
                None => Err(format!(
                    "this {} carries no row (`after`)",
                    event.op.as_str()
                )),
            },
            Op::Delete => Ok(Body::Tombstone),
            Op::Event => match &event.message {
                Some(message) => json(&message.payload),
                None => Err("this event carries no message".into()),
            },
            Op::Truncate => Ok(Body::Skip),
        }
    }
}

/// What a message's value is.
enum Body<'e> {
    /// No message at all.
    Skip,
    /// A null value.
    Tombstone,
    Bytes(Cow<'e, [u8]>),
}

fn json<'e>(value: &impl serde::Serialize) -> Result<Body<'e>, String> {
    serde_json::to_vec(value)
        .map(|bytes| Body::Bytes(Cow::Owned(bytes)))
        .map_err(|e| format!("cannot encode the value as JSON: {e}"))
}

/// `after`, with each unchanged TOAST column taken from `before` when the table's replica
/// identity sent it; otherwise such a column stays absent.
fn complete<'r>(
    after: &'r Row,
    before: Option<&'r Row>,
    unchanged: &[std::sync::Arc<str>],
) -> Cow<'r, Row> {
    let Some(before) = before.filter(|_| !unchanged.is_empty()) else {
        return Cow::Borrowed(after);
    };
    let mut row = after.clone();
    for name in unchanged {
        if let Some(value) = before.get(name) {
            row.push(name.clone(), value.clone());
        }
    }
    Cow::Owned(row)
}

/// The message key: an event's aggregate id, a row's key columns joined by `:`.
pub fn key(event: &Event) -> Option<String> {
    if event.op == Op::Event {
        if let Some(message) = &event.message {
            return value_text(&message.aggregate_id).map(Cow::into_owned);
        }
    }
    if event.op == Op::Truncate {
        return None;
    }
    let key = event.key.as_ref()?;
    let mut out = String::new();
    for (i, column) in key.0.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let text = value_text(&column.value).unwrap_or_default();
        if key.0.len() > 1 && text.contains([':', '\\']) {
            for c in text.chars() {
                if c == ':' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
        } else {
            out.push_str(&text);
        }
    }
    Some(out)
}

/// `id`, `op`, `table`, `type`, then the event's own string headers.
pub fn headers(event: &Event) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(4);
    let id = event.id();
    headers = headers.insert(Header {
        key: "id",
        value: Some(id.as_str()),
    });
    headers = headers.insert(Header {
        key: "op",
        value: Some(event.op.as_str()),
    });
    if let (Some(schema), Some(table)) = (&event.source.schema, &event.source.table) {
        let name = format!("{schema}.{table}");
        headers = headers.insert(Header {
            key: "table",
            value: Some(name.as_str()),
        });
    }
    let Some(message) = &event.message else {
        return headers;
    };
    if let Some(kind) = value_text(&message.kind) {
        headers = headers.insert(Header {
            key: "type",
            value: Some(kind.as_ref()),
        });
    }
    if let Value::Json(raw) = &message.headers {
        if let Ok(own) =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get())
        {
            for (name, value) in &own {
                if let (Some(text), false) = (value.as_str(), OWN_HEADERS.contains(&name.as_str()))
                {
                    headers = headers.insert(Header {
                        key: name,
                        value: Some(text),
                    });
                }
            }
        }
    }
    headers
}

/// Why `topic` is not a legal Kafka topic name.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("it is empty".into());
    }
    if topic == "." || topic == ".." {
        return Err("`.` and `..` are reserved".into());
    }
    if topic.len() > 249 {
        return Err(format!("it is {} characters long, over 249", topic.len()));
    }
    match topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "{c:?} is not allowed (only ASCII letters, digits, `.`, `_` and `-` are)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rdkafka::message::Headers;
    use sluice_runtime::{testing, Message as Body};

    use super::*;

    fn row(pairs: &[(&str, Value)]) -> Row {
        let mut row = Row::default();
        for (name, value) in pairs {
            row.push((*name).into(), value.clone());
        }
        row
    }

    fn change(op: Op, key: Option<Row>) -> Event {
        let mut e = testing::event("orders", op, 0x20, 1);
        e.key = key.clone();
        match op {
            Op::Delete => e.before = key,
            Op::Truncate => {}
            _ => {
                let mut after = key.unwrap_or_default();
                after.push("status".into(), Value::Text("paid".into()));
                e.after = Some(after);
            }
        }
        e
    }

    fn outbox(headers: &str) -> Event {
        let mut e = testing::event("outbox", Op::Event, 0x30, 0);
        e.key = Some(row(&[("aggregate_id", Value::Text("o-7".into()))]));
        e.message = Some(Body {
            id: Value::Int(9),
            kind: Value::Text("OrderPaid".into()),
            aggregate_type: Value::Text("order".into()),
            aggregate_id: Value::Text("o-7".into()),
            payload: Value::json(r#"{"total": "19.90"}"#).unwrap(),
            headers: Value::json(headers).unwrap(),
        });
        e
    }

    fn header_map(message: &Message) -> Vec<(String, String)> {
        message
            .headers
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn envelope() -> Encoder {
        Encoder::new(None, ValueMode::Envelope)
    }

    fn payload() -> Encoder {
        Encoder::new(None, ValueMode::Payload)
    }

    #[test]
    fn changes_go_to_their_table_keyed_by_row() {
        let e = change(Op::Insert, Some(testing::id_row(42)));
        let m = envelope().encode(&e).unwrap().unwrap();
        assert_eq!(m.topic, "public.orders");
        assert_eq!(m.key.as_deref(), Some("42"));
        assert_eq!(m.partition(), None);
        assert_eq!(m.value.as_deref(), Some(&e.json()[..]));
        assert_eq!(
            header_map(&m),
            [
                ("id".into(), "0/20:1".into()),
                ("op".into(), "insert".into()),
                ("table".into(), "public.orders".into()),
            ]
        );
    }

    #[test]
    fn composite_keys_join_unambiguously() {
        let k = |a: &str, b: &str| {
            let e = change(
                Op::Update,
                Some(row(&[
                    ("tenant", Value::Text(a.into())),
                    ("sku", Value::Text(b.into())),
                ])),
            );
            key(&e).unwrap()
        };
        assert_eq!(k("acme", "7"), "acme:7");
        assert_ne!(k("a:b", "c"), k("a", "b:c"));
        assert_eq!(k("a:b", "c"), r"a\:b:c");
        assert_eq!(k(r"a\", "b"), r"a\\:b");
        // A single column is never escaped: its text is the key.
        let one = change(Op::Update, Some(row(&[("id", Value::Text("a:b".into()))])));
        assert_eq!(key(&one).as_deref(), Some("a:b"));
    }

    #[test]
    fn keyless_rows_and_truncates_go_to_partition_zero() {
        let e = change(Op::Insert, None);
        let m = envelope().encode(&e).unwrap().unwrap();
        assert_eq!((m.key.as_deref(), m.partition()), (None, Some(0)));
        let t = change(Op::Truncate, None);
        let m = envelope().encode(&t).unwrap().unwrap();
        assert_eq!((m.key.as_deref(), m.partition()), (None, Some(0)));
        assert_eq!(m.value.as_deref(), Some(&t.json()[..]));
    }

    #[test]
    fn events_go_to_their_aggregate_type_keyed_by_aggregate() {
        let e = outbox(r#"{"trace": "abc", "id": "spoofed", "n": 1, "tenant": "acme"}"#);
        let m = envelope().encode(&e).unwrap().unwrap();
        assert_eq!(m.topic, "order");
        assert_eq!(m.key.as_deref(), Some("o-7"));
        assert_eq!(
            header_map(&m),
            [
                ("id".into(), "0/30:0".into()),
                ("op".into(), "event".into()),
                ("table".into(), "public.outbox".into()),
                ("type".into(), "OrderPaid".into()),
                ("tenant".into(), "acme".into()),
                ("trace".into(), "abc".into()),
            ]
        );
        let m = payload().encode(&e).unwrap().unwrap();
        assert_eq!(m.value.as_deref(), Some(&br#"{"total": "19.90"}"#[..]));
    }

    #[test]
    fn payload_mode_sends_rows_tombstones_and_skips_truncates() {
        let e = change(Op::Update, Some(testing::id_row(1)));
        let m = payload().encode(&e).unwrap().unwrap();
        assert_eq!(
            m.value.as_deref(),
            Some(&br#"{"id":1,"status":"paid"}"#[..])
        );
        let d = change(Op::Delete, Some(testing::id_row(1)));
        let m = payload().encode(&d).unwrap().unwrap();
        assert_eq!((m.key.as_deref(), m.value), (Some("1"), None));
        assert!(payload()
            .encode(&change(Op::Truncate, None))
            .unwrap()
            .is_none());
    }

    #[test]
    fn payload_mode_fills_unchanged_columns_from_before() {
        let mut e = change(Op::Update, Some(testing::id_row(1)));
        e.unchanged = vec![Arc::from("doc")];
        let m = payload().encode(&e).unwrap().unwrap();
        assert_eq!(
            m.value.as_deref(),
            Some(&br#"{"id":1,"status":"paid"}"#[..])
        );
        let mut before = testing::id_row(1);
        before.push("doc".into(), Value::Text("big".into()));
        e.before = Some(before);
        let m = payload().encode(&e).unwrap().unwrap();
        assert_eq!(
            m.value.as_deref(),
            Some(&br#"{"id":1,"status":"paid","doc":"big"}"#[..])
        );
    }

    #[test]
    fn topics_render_from_the_template_and_must_be_legal() {
        let encoder = Encoder::new(
            Some(Template::parse("cdc.{table}.{op}").unwrap()),
            ValueMode::Envelope,
        );
        let e = change(Op::Delete, Some(testing::id_row(1)));
        assert_eq!(
            encoder.encode(&e).unwrap().unwrap().topic,
            "cdc.orders.delete"
        );

        let mut bad = outbox("{}");
        bad.message.as_mut().unwrap().aggregate_type = Value::Text("orders/eu".into());
        let reason = envelope().encode(&bad).err().unwrap();
        assert!(reason.contains("topic `orders/eu`"), "{reason}");
        assert!(reason.contains("'/' is not allowed"), "{reason}");

        let mut missing = outbox("{}");
        missing.message.as_mut().unwrap().aggregate_type = Value::Null;
        let reason = envelope().encode(&missing).err().unwrap();
        assert!(
            reason.contains("`{event.aggregate_type}` is null"),
            "{reason}"
        );

        assert!(check_topic(&"x".repeat(250)).unwrap_err().contains("249"));
        assert!(check_topic("..").is_err() && check_topic("").is_err());
        assert!(check_topic("Orders_2024.v1-eu").is_ok());
    }
}
