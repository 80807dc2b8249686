//! What a message carries: its body, its properties and its headers.
//!
//! - **Body**: the event's JSON envelope ([`Event::json`], encoded once and shared by every
//!   sink), or with `value: payload` only what the event carries: an outbox row's or
//!   logical message's `payload`, the row after an insert or update, the row before a
//!   delete (its key when the table's replica identity gives no more), `null` for a
//!   truncate.
//! - **Properties**: `message_id` = the event id (stable across retries and replays, so a
//!   consumer can deduplicate), `delivery_mode` 2 (persistent: a durable queue keeps it
//!   across a broker restart), `content_type` `application/json`, `timestamp` = the commit
//!   time in seconds, and for outbox rows and logical messages `type` = the event's type.
//! - **Headers**: `id` (the event id), `op`, `table` (`schema.table`; absent for a logical
//!   message), `type` (outbox rows and logical messages), then every string value of the
//!   event's own `headers` object. sluice's headers win over an event header of the same
//!   name, so an event cannot pass itself off as another; event headers whose value is not
//!   a string, or whose name is longer than AMQP allows (255 bytes), are left out.

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use sluice_runtime::template::value_text;
use sluice_runtime::{Event, Op, Row, Value};

use crate::config::Body;

/// `application/json`: both bodies are JSON.
pub const CONTENT_TYPE: &str = "application/json";

/// AMQP's persistent delivery mode.
pub const PERSISTENT: u8 = 2;

/// The headers sluice sets itself; an event header cannot replace them.
pub const OWN_HEADERS: [&str; 4] = ["id", "op", "table", "type"];

/// The message body of `event`.
pub fn body(event: &Event, body: Body) -> Bytes {
    match body {
        Body::Envelope => event.json().clone(),
        Body::Payload => payload(event),
    }
}

/// What the event carries, without the envelope around it.
fn payload(event: &Event) -> Bytes {
    let row = |row: Option<&Row>| {
        Bytes::from(serde_json::to_vec(&row).expect("a row always encodes as JSON"))
    };
    match event.op {
        Op::Insert | Op::Update | Op::Read => row(event.after.as_ref()),
        Op::Delete => row(event.before.as_ref().or(event.key.as_ref())),
        Op::Truncate => Bytes::from_static(b"null"),
        Op::Event => {
            let payload = event.message.as_ref().map(|m| &m.payload);
            Bytes::from(serde_json::to_vec(&payload).expect("a value always encodes as JSON"))
        }
    }
}

/// The properties and headers of `event`'s message.
pub fn properties(event: &Event) -> BasicProperties {
    let id = event.id();
    let kind = event_type(event);
    let mut headers = FieldTable::default();
    let mut text = |name: &str, value: String| {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    };
    text("id", id.clone());
    text("op", event.op.as_str().to_string());
    if event.source.table.is_some() {
        text("table", sluice_runtime::template::table_name(event));
    }
    if let Some(kind) = &kind {
        text("type", kind.clone());
    }
    for (name, value) in event_headers(event) {
        if let Ok(name) = ShortString::try_new(name) {
            if !headers.contains_key(name.as_str()) {
                headers.insert(name, AMQPValue::LongString(LongString::from(value)));
            }
        }
    }
    let mut properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(event.source.ts_micros.max(0) as u64 / 1_000_000)
        .with_headers(headers);
    // Event ids are short (`X/Y:n#k`); the guard only keeps a wrong one from panicking.
    if let Ok(id) = ShortString::try_new(id) {
        properties = properties.with_message_id(id);
    }
    if let Some(kind) = kind.and_then(|k| ShortString::try_new(k).ok()) {
        properties = properties.with_type(kind);
    }
    properties
}

/// The `type` of an outbox row or logical message, as text.
fn event_type(event: &Event) -> Option<String> {
    let message = event.message.as_ref()?;
    value_text(&message.kind).map(|t| t.into_owned())
}

/// The string values of the event's own `headers` object, in the object's order.
fn event_headers(event: &Event) -> Vec<(String, String)> {
    let Some(Value::Json(raw)) = event.message.as_ref().map(|m| &m.headers) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(raw.get()) else {
        return Vec::new();
    };
    map.into_iter()
        .filter_map(|(name, value)| match value {
            serde_json::Value::String(text) => Some((name, text)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_runtime::{testing, Message};

    fn header(p: &BasicProperties, name: &str) -> Option<String> {
        p.headers()
            .as_ref()
            .and_then(|h| h.inner().get(name))
            .map(|v| match v {
                AMQPValue::LongString(s) => s.to_string(),
                other => panic!("{name} is not a long string: {other:?}"),
            })
    }

    fn outbox(headers: &str) -> Event {
        let mut e = testing::event("outbox", Op::Event, 0x10, 2);
        e.source.ts_micros = 1_700_000_000_123_456;
        e.message = Some(Message {
            id: Value::Int(7),
            kind: Value::Text("OrderPaid".into()),
            aggregate_type: Value::Text("order".into()),
            aggregate_id: Value::Text("42".into()),
            payload: Value::json(r#"{"total": "19.90"}"#).unwrap(),
            headers: Value::json(headers).unwrap(),
        });
        e
    }

    fn json_of(bytes: &Bytes) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn properties_carry_the_id_persistence_and_type() {
        let e = outbox("null");
        let p = properties(&e);
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "0/10:2");
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*p.timestamp(), Some(1_700_000_000));
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "OrderPaid");
        assert_eq!(header(&p, "id").as_deref(), Some("0/10:2"));
        assert_eq!(header(&p, "op").as_deref(), Some("event"));
        assert_eq!(header(&p, "table").as_deref(), Some("public.outbox"));
        assert_eq!(header(&p, "type").as_deref(), Some("OrderPaid"));
    }

    #[test]
    fn event_headers_add_their_string_values_and_never_replace_sluices() {
        let e = outbox(r#"{"trace": "abc", "id": "forged", "n": 1, "tenant": "acme"}"#);
        let p = properties(&e);
        assert_eq!(header(&p, "trace").as_deref(), Some("abc"));
        assert_eq!(header(&p, "tenant").as_deref(), Some("acme"));
        assert_eq!(header(&p, "id").as_deref(), Some("0/10:2"), "not forged");
        assert_eq!(header(&p, "n"), None, "not a string");
        let long = format!(r#"{{"{}": "x"}}"#, "h".repeat(300));
        assert_eq!(
            properties(&outbox(&long))
                .headers()
                .as_ref()
                .unwrap()
                .inner()
                .len(),
            4
        );
    }

    #[test]
    fn row_changes_have_no_type_and_logical_messages_no_table() {
        let p = properties(&testing::insert("orders", 0x20, 1));
        assert_eq!(header(&p, "op").as_deref(), Some("insert"));
        assert_eq!(header(&p, "table").as_deref(), Some("public.orders"));
        assert_eq!(header(&p, "type"), None);
        assert!(p.kind().is_none());

        let mut message = outbox("null");
        message.source.schema = None;
        message.source.table = None;
        message.message.as_mut().unwrap().kind = Value::json(r#""Ping""#).unwrap();
        let p = properties(&message);
        assert_eq!(header(&p, "table"), None);
        assert_eq!(header(&p, "type").as_deref(), Some("Ping"), "unquoted");
    }

    #[test]
    fn the_envelope_is_the_default_body() {
        let e = testing::insert("orders", 0x20, 1);
        let b = body(&e, Body::Envelope);
        assert_eq!(&b, e.json());
        assert_eq!(json_of(&b)["op"], "insert");
    }

    #[test]
    fn payload_bodies_are_what_the_event_carries() {
        assert_eq!(
            json_of(&body(&outbox("null"), Body::Payload)),
            json!({"total": "19.90"})
        );
        let insert = testing::insert("orders", 0x20, 5);
        assert_eq!(json_of(&body(&insert, Body::Payload)), json!({"id": 5}));

        let mut delete = testing::event("orders", Op::Delete, 0x20, 6);
        delete.key = Some(testing::id_row(6));
        assert_eq!(json_of(&body(&delete, Body::Payload)), json!({"id": 6}));
        let mut before = testing::id_row(6);
        before.push("status".into(), Value::Text("gone".into()));
        delete.before = Some(before);
        assert_eq!(
            json_of(&body(&delete, Body::Payload)),
            json!({"id": 6, "status": "gone"})
        );

        let truncate = testing::event("orders", Op::Truncate, 0x20, 7);
        assert_eq!(json_of(&body(&truncate, Body::Payload)), json!(null));
    }
}
