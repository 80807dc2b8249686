//! Reading envelopes back: a parked DLQ entry, a line of `sluice transform test` input.
//!
//! The JSON form loses some type detail (a numeric and a text column are both strings), so
//! the parsed [`Event`] keeps the exact input bytes as its cached JSON: what a sink sends
//! for a replayed event is byte-for-byte what it would have sent the first time.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value as Json;

use crate::event::{parse_timestamp_micros, Event, Message, Op, Row, Source, Value};
use crate::lsn::{Lsn, Position};

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`{field}`: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

fn field(field: &'static str, problem: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Field {
        field,
        problem: problem.into(),
    }
}

/// Parse one envelope (the shape of SPEC.md "The event envelope").
pub fn parse(bytes: &[u8]) -> Result<Event, EnvelopeError> {
    let v: Json = serde_json::from_slice(bytes)?;
    let obj = v
        .as_object()
        .ok_or_else(|| field("envelope", "must be a JSON object"))?;
    let id = obj
        .get("id")
        .and_then(Json::as_str)
        .ok_or_else(|| field("id", "missing or not a string"))?;
    let (base, fanout) = match id.split_once('#') {
        Some((base, k)) => (
            base,
            k.parse::<u32>()
                .map_err(|_| field("id", format!("`{id}`: bad fan-out suffix")))?,
        ),
        None => (id, 0),
    };
    let position: Position = base.parse().map_err(|e| field("id", format!("{e}")))?;
    let op = match obj.get("op").and_then(Json::as_str) {
        Some("insert") => Op::Insert,
        Some("update") => Op::Update,
        Some("delete") => Op::Delete,
        Some("truncate") => Op::Truncate,
        Some("event") => Op::Event,
        Some("read") => Op::Read,
        other => {
            return Err(field(
                "op",
                format!("{other:?} is not one of insert, update, delete, truncate, event, read"),
            ))
        }
    };
    let src = obj
        .get("source")
        .and_then(Json::as_object)
        .ok_or_else(|| field("source", "missing or not an object"))?;
    let text = |k: &str| src.get(k).and_then(Json::as_str).map(Arc::<str>::from);
    let lsn = |k: &'static str| -> Result<Lsn, EnvelopeError> {
        match src.get(k).and_then(Json::as_str) {
            Some(s) => s.parse().map_err(|e| field(k, format!("{e}"))),
            None => Ok(position.commit_lsn),
        }
    };
    let source = Source {
        pipeline: text("pipeline").unwrap_or_else(|| "".into()),
        schema: text("schema"),
        table: text("table"),
        lsn: lsn("lsn")?,
        commit_lsn: lsn("commit_lsn")?,
        xid: src.get("xid").and_then(Json::as_u64).map(|x| x as u32),
        ts_micros: src
            .get("ts")
            .and_then(Json::as_str)
            .and_then(parse_timestamp_micros)
            .unwrap_or(0),
    };
    let mut event = Event::new(position, op, source);
    event.fanout = fanout;
    event.key = row(obj.get("key"), "key")?;
    event.before = row(obj.get("before"), "before")?;
    event.after = row(obj.get("after"), "after")?;
    if let Some(u) = obj.get("unchanged").and_then(Json::as_array) {
        event.unchanged = u.iter().filter_map(Json::as_str).map(Arc::from).collect();
    }
    if op == Op::Event {
        let m = obj
            .get("event")
            .and_then(Json::as_object)
            .ok_or_else(|| field("event", "op is event but `event` is missing"))?;
        let get = |k: &str| m.get(k).map(value).unwrap_or(Value::Null);
        event.message = Some(Message {
            id: get("id"),
            kind: get("type"),
            aggregate_type: get("aggregate_type"),
            aggregate_id: get("aggregate_id"),
            payload: get("payload"),
            headers: get("headers"),
        });
    }
    event.set_json(Bytes::copy_from_slice(bytes));
    Ok(event)
}

fn row(v: Option<&Json>, name: &'static str) -> Result<Option<Row>, EnvelopeError> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(map)) => Ok(Some(Row(map
            .iter()
            .map(|(k, v)| crate::event::Column {
                name: k.as_str().into(),
                value: value(v),
            })
            .collect()))),
        Some(_) => Err(field(name, "must be an object or null")),
    }
}

fn value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Text(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(value).collect()),
        Json::Object(_) => Value::json(&v.to_string()).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::format_timestamp_micros;

    #[test]
    fn round_trips_an_encoded_event_byte_for_byte() {
        let source = Source {
            pipeline: "p".into(),
            schema: Some("public".into()),
            table: Some("t".into()),
            lsn: Lsn(0x10),
            commit_lsn: Lsn(0x20),
            xid: Some(7),
            ts_micros: 1_795_327_200_123_456,
        };
        let mut e = Event::new(Position::new(Lsn(0x20), 3), Op::Update, source);
        let mut key = Row::default();
        key.push("id".into(), Value::Int(1));
        e.key = Some(key.clone());
        e.after = Some(key);
        e.unchanged = vec!["body".into()];
        let bytes = e.json().clone();
        let back = parse(&bytes).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.json(), &bytes);
        assert_eq!(back.ordering_key(), e.ordering_key());
    }

    #[test]
    fn timestamps_parse_back() {
        for micros in [0, 1_795_327_200_123_456, 951_782_400_000_000] {
            assert_eq!(
                parse_timestamp_micros(&format_timestamp_micros(micros)),
                Some(micros)
            );
        }
    }

    #[test]
    fn malformed_envelopes_name_the_field() {
        let err = parse(br#"{"id":"0/1:0","op":"upsert","source":{}}"#).unwrap_err();
        assert!(err.to_string().starts_with("`op`"), "{err}");
        let err = parse(br#"{"id":"nope","op":"insert","source":{}}"#).unwrap_err();
        assert!(err.to_string().starts_with("`id`"), "{err}");
        assert!(parse(b"[1]").is_err());
        assert!(parse(b"{").is_err());
    }
}
