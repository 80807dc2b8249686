//! Events to and from the WIT types of `sluice:transform/types@0.1.0`: borrowed views on
//! the way in (`*Param`), owned values on the way back (`*Result`).
//!
//! WIT types cannot recurse, so json/jsonb values and arrays cross as JSON text
//! (`value::json`); what comes back as JSON text stays a [`Value::Json`]. An output event
//! takes its input's position whatever `id` the guest wrote (offsets count input events),
//! and starts with no cached JSON: its envelope is encoded from what the guest returned.

use std::sync::Arc;

use serde_json::value::RawValue;
use sluice_runtime::event::{format_timestamp_micros, parse_timestamp_micros};
use sluice_runtime::{Column, Event, Lsn, Message, Op, Row, Source, Value};

use crate::bindings::sluice::transform::types as wit;

/// Call `f` with `events` as the guest sees them: views that borrow our events, plus one
/// buffer per batch for the texts we must format (ids, LSNs, times, arrays as JSON), so
/// lowering into the guest's memory is the only copy.
pub(crate) fn with_params<R>(
    events: &[Arc<Event>],
    f: impl FnOnce(&[wit::EventParam<'_>]) -> R,
) -> R {
    // Pass 1: every formatted text, in one buffer.
    let mut texts = Texts::default();
    let mut formatted = Vec::with_capacity(events.len());
    let mut last_commit: Option<(Lsn, Span)> = None;
    let mut last_ts: Option<(i64, Span)> = None;
    for e in events {
        let id = texts.push_display(&e.id());
        let lsn = texts.push_display(&e.source.lsn);
        let commit_lsn = match last_commit {
            Some((lsn, span)) if lsn == e.source.commit_lsn => span,
            _ => texts.push_display(&e.source.commit_lsn),
        };
        last_commit = Some((e.source.commit_lsn, commit_lsn));
        let ts = match last_ts {
            Some((micros, span)) if micros == e.source.ts_micros => span,
            _ => texts.push_display(&format_timestamp_micros(e.source.ts_micros)),
        };
        last_ts = Some((e.source.ts_micros, ts));
        formatted.push([id, lsn, commit_lsn, ts]);
        for row in [&e.key, &e.before, &e.after].into_iter().flatten() {
            for c in &row.0 {
                texts.push_array(&c.value);
            }
        }
        if let Some(m) = &e.message {
            for v in [
                &m.id,
                &m.kind,
                &m.aggregate_type,
                &m.aggregate_id,
                &m.payload,
                &m.headers,
            ] {
                texts.push_array(v);
            }
        }
    }

    // Pass 2: the columns of every row, in one list; arrays take their texts in order.
    let text = texts.buf.as_str();
    let mut arrays = texts.arrays.iter();
    let mut columns: Vec<wit::ColumnParam<'_>> = Vec::new();
    let mut unchanged: Vec<&str> = Vec::new();
    let mut rows = Vec::with_capacity(events.len());
    let mut messages = Vec::with_capacity(events.len());
    for e in events {
        let key = row_params(&e.key, text, &mut arrays, &mut columns);
        let before = row_params(&e.before, text, &mut arrays, &mut columns);
        let after = row_params(&e.after, text, &mut arrays, &mut columns);
        let start = unchanged.len();
        unchanged.extend(e.unchanged.iter().map(|c| &**c));
        rows.push([key, before, after, Some(start..unchanged.len())]);
        messages.push(e.message.as_ref().map(|m| wit::MessageParam {
            id: value_param(&m.id, text, &mut arrays),
            kind: value_param(&m.kind, text, &mut arrays),
            aggregate_type: value_param(&m.aggregate_type, text, &mut arrays),
            aggregate_id: value_param(&m.aggregate_id, text, &mut arrays),
            payload: value_param(&m.payload, text, &mut arrays),
            headers: value_param(&m.headers, text, &mut arrays),
        }));
    }

    // Pass 3: the events.
    let params: Vec<wit::EventParam<'_>> = events
        .iter()
        .zip(formatted)
        .zip(rows)
        .zip(messages)
        .map(
            |(((e, [id, lsn, commit_lsn, ts]), [key, before, after, unchanged_range]), message)| {
                let cols = |r: Option<std::ops::Range<usize>>| r.map(|r| &columns[r]);
                wit::EventParam {
                    id: &text[id.0..id.1],
                    op: match e.op {
                        Op::Insert => wit::Op::Insert,
                        Op::Update => wit::Op::Update,
                        Op::Delete => wit::Op::Delete,
                        Op::Truncate => wit::Op::Truncate,
                        Op::Event => wit::Op::Event,
                    },
                    source: wit::SourceParam {
                        pipeline: &e.source.pipeline,
                        schema: e.source.schema.as_deref(),
                        table: e.source.table.as_deref(),
                        lsn: &text[lsn.0..lsn.1],
                        commit_lsn: &text[commit_lsn.0..commit_lsn.1],
                        xid: e.source.xid,
                        ts: &text[ts.0..ts.1],
                    },
                    key: cols(key),
                    before: cols(before),
                    after: cols(after),
                    unchanged: &unchanged[unchanged_range.unwrap_or(0..0)],
                    message,
                }
            },
        )
        .collect();
    f(&params)
}

/// A range of [`Texts::buf`].
type Span = (usize, usize);

#[derive(Default)]
struct Texts {
    buf: String,
    /// The JSON text of each array value, in the order the values are visited.
    arrays: Vec<Span>,
}

impl Texts {
    fn push_display(&mut self, v: &dyn std::fmt::Display) -> Span {
        use std::fmt::Write;
        let start = self.buf.len();
        write!(self.buf, "{v}").expect("writing to a String");
        (start, self.buf.len())
    }

    #[inline]
    fn push_array(&mut self, v: &Value) {
        if let Value::Array(_) = v {
            self.push_json(v);
        }
    }

    fn push_json(&mut self, v: &Value) {
        let start = self.buf.len();
        let json = serde_json::to_string(v).expect("an array value always encodes as JSON");
        self.buf.push_str(&json);
        self.arrays.push((start, self.buf.len()));
    }
}

/// Append `row`'s columns to `columns`; their range there.
fn row_params<'a>(
    row: &'a Option<Row>,
    texts: &'a str,
    arrays: &mut std::slice::Iter<'_, Span>,
    columns: &mut Vec<wit::ColumnParam<'a>>,
) -> Option<std::ops::Range<usize>> {
    let row = row.as_ref()?;
    let start = columns.len();
    for c in &row.0 {
        columns.push(wit::ColumnParam {
            name: &c.name,
            value: value_param(&c.value, texts, arrays),
        });
    }
    Some(start..columns.len())
}

fn value_param<'a>(
    v: &'a Value,
    texts: &'a str,
    arrays: &mut std::slice::Iter<'_, Span>,
) -> wit::ValueParam<'a> {
    match v {
        Value::Null => wit::ValueParam::Null,
        Value::Bool(b) => wit::ValueParam::Boolean(*b),
        Value::Int(i) => wit::ValueParam::Int(*i),
        Value::Float(f) if f.is_finite() => wit::ValueParam::Float(*f),
        // As the envelope writes them.
        Value::Float(f) if f.is_nan() => wit::ValueParam::Text("NaN"),
        Value::Float(f) => wit::ValueParam::Text(if *f > 0.0 { "Infinity" } else { "-Infinity" }),
        Value::Text(t) => wit::ValueParam::Text(t),
        Value::Json(raw) => wit::ValueParam::Json(raw.get()),
        Value::Bytes(b) => wit::ValueParam::Bytes(b),
        Value::Array(_) => {
            let (start, end) = *arrays.next().expect("one text per array, in order");
            wit::ValueParam::Json(&texts[start..end])
        }
    }
}

/// An event the guest returned for `input`. The error says what is wrong with it.
pub(crate) fn from_wit(w: wit::EventResult, input: &Event) -> Result<Event, String> {
    let op = match w.op {
        wit::Op::Insert => Op::Insert,
        wit::Op::Update => Op::Update,
        wit::Op::Delete => Op::Delete,
        wit::Op::Truncate => Op::Truncate,
        wit::Op::Event => Op::Event,
    };
    let s = w.source;
    let was = &input.source;
    let source = Source {
        pipeline: reuse(&was.pipeline, s.pipeline),
        schema: s.schema.map(|t| reuse_opt(&was.schema, t)),
        table: s.table.map(|t| reuse_opt(&was.table, t)),
        lsn: lsn("source.lsn", &s.lsn)?,
        commit_lsn: lsn("source.commit_lsn", &s.commit_lsn)?,
        xid: s.xid,
        ts_micros: parse_timestamp_micros(&s.ts).ok_or_else(|| {
            format!(
                "source.ts: `{}` is not an ISO 8601 UTC time like 2026-11-22T06:00:00.123456Z",
                s.ts
            )
        })?,
    };
    let mut event = Event::new(input.position, op, source);
    event.key = w
        .key
        .map(|r| row_from_wit(r, input.key.as_ref(), "key"))
        .transpose()?;
    event.before = w
        .before
        .map(|r| row_from_wit(r, input.before.as_ref(), "before"))
        .transpose()?;
    event.after = w
        .after
        .map(|r| row_from_wit(r, input.after.as_ref(), "after"))
        .transpose()?;
    event.unchanged = w.unchanged.into_iter().map(Arc::from).collect();
    event.message = match w.message {
        Some(m) => Some(Message {
            id: value_from_wit(m.id, "message.id")?,
            kind: value_from_wit(m.kind, "message.kind")?,
            aggregate_type: value_from_wit(m.aggregate_type, "message.aggregate-type")?,
            aggregate_id: value_from_wit(m.aggregate_id, "message.aggregate-id")?,
            payload: value_from_wit(m.payload, "message.payload")?,
            headers: value_from_wit(m.headers, "message.headers")?,
        }),
        None => None,
    };
    match (op, event.message.is_some()) {
        (Op::Event, false) => return Err("op is `event` but `message` is none".into()),
        (op, true) if op != Op::Event => {
            return Err(format!("op is `{}` but `message` is set", op.as_str()))
        }
        _ => {}
    }
    Ok(event)
}

/// Column names and source texts usually come back unchanged: share the input's `Arc`.
fn reuse(was: &Arc<str>, now: String) -> Arc<str> {
    if **was == *now {
        was.clone()
    } else {
        now.into()
    }
}

fn reuse_opt(was: &Option<Arc<str>>, now: String) -> Arc<str> {
    match was {
        Some(was) => reuse(was, now),
        None => now.into(),
    }
}

fn lsn(field: &str, text: &str) -> Result<Lsn, String> {
    text.parse()
        .map_err(|_| format!("{field}: `{text}` is not an LSN like 0/1A2B3C4"))
}

fn row_from_wit(
    columns: Vec<wit::ColumnResult>,
    was: Option<&Row>,
    row: &str,
) -> Result<Row, String> {
    let was = was.map(|r| r.0.as_slice()).unwrap_or(&[]);
    let mut out = Vec::with_capacity(columns.len());
    for (i, c) in columns.into_iter().enumerate() {
        let name = match was.get(i) {
            Some(old) if *old.name == *c.name => old.name.clone(),
            _ => match was.iter().find(|old| *old.name == *c.name) {
                Some(old) => old.name.clone(),
                None => Arc::from(c.name.as_str()),
            },
        };
        let value = match c.value {
            wit::ValueResult::Json(text) => json(text).map_err(|e| format!("{row}.{name}: {e}"))?,
            other => value_from_wit(other, "")?,
        };
        out.push(Column { name, value });
    }
    Ok(Row(out))
}

fn value_from_wit(v: wit::ValueResult, field: &str) -> Result<Value, String> {
    Ok(match v {
        wit::ValueResult::Null => Value::Null,
        wit::ValueResult::Boolean(b) => Value::Bool(b),
        wit::ValueResult::Int(i) => Value::Int(i),
        wit::ValueResult::Float(f) => Value::Float(f),
        wit::ValueResult::Text(t) => Value::Text(t),
        wit::ValueResult::Json(text) => json(text).map_err(|e| format!("{field}: {e}"))?,
        wit::ValueResult::Bytes(b) => Value::Bytes(b),
    })
}

fn json(text: String) -> Result<Value, String> {
    RawValue::from_string(text)
        .map(Value::Json)
        .map_err(|e| format!("a `json` value that is not JSON ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::Position;

    fn sample() -> Event {
        let source = Source {
            pipeline: "orders".into(),
            schema: Some("public".into()),
            table: Some("orders".into()),
            lsn: Lsn(0x1A2B3A0),
            commit_lsn: Lsn(0x1A2B3C4),
            xid: Some(1234),
            ts_micros: 1_795_327_200_123_456,
        };
        let mut e = Event::new(Position::new(Lsn(0x1A2B3C4), 7), Op::Update, source);
        let mut key = Row::default();
        key.push("id".into(), Value::Int(42));
        let mut after = key.clone();
        after.push("status".into(), Value::Text("paid".into()));
        after.push(
            "tags".into(),
            Value::Array(vec![Value::Text("a".into()), Value::Int(1)]),
        );
        after.push("meta".into(), Value::json(r#"{"k": [1, 2]}"#).unwrap());
        after.push("blob".into(), Value::Bytes(vec![0, 1, 2]));
        after.push("ratio".into(), Value::Float(0.5));
        after.push("nan".into(), Value::Float(f64::NAN));
        after.push("none".into(), Value::Null);
        after.push("ok".into(), Value::Bool(true));
        e.key = Some(key);
        e.before = Some(Row(vec![Column {
            name: "grid".into(),
            value: Value::Array(vec![Value::Array(vec![])]),
        }]));
        e.after = Some(after);
        e.unchanged = vec!["big".into()];
        e
    }

    /// What the guest would get and give back unchanged.
    fn echo(events: &[Arc<Event>]) -> Vec<wit::EventResult> {
        let value = |v: &wit::ValueParam<'_>| match *v {
            wit::ValueParam::Null => wit::ValueResult::Null,
            wit::ValueParam::Boolean(b) => wit::ValueResult::Boolean(b),
            wit::ValueParam::Int(i) => wit::ValueResult::Int(i),
            wit::ValueParam::Float(f) => wit::ValueResult::Float(f),
            wit::ValueParam::Text(t) => wit::ValueResult::Text(t.into()),
            wit::ValueParam::Json(t) => wit::ValueResult::Json(t.into()),
            wit::ValueParam::Bytes(b) => wit::ValueResult::Bytes(b.into()),
        };
        let row = |r: Option<&[wit::ColumnParam<'_>]>| {
            r.map(|r| {
                r.iter()
                    .map(|c| wit::ColumnResult {
                        name: c.name.into(),
                        value: value(&c.value),
                    })
                    .collect()
            })
        };
        with_params(events, |params| {
            params
                .iter()
                .map(|p| wit::EventResult {
                    id: p.id.into(),
                    op: p.op,
                    source: wit::SourceResult {
                        pipeline: p.source.pipeline.into(),
                        schema: p.source.schema.map(Into::into),
                        table: p.source.table.map(Into::into),
                        lsn: p.source.lsn.into(),
                        commit_lsn: p.source.commit_lsn.into(),
                        xid: p.source.xid,
                        ts: p.source.ts.into(),
                    },
                    key: row(p.key),
                    before: row(p.before),
                    after: row(p.after),
                    unchanged: p.unchanged.iter().map(|c| c.to_string()).collect(),
                    message: p.message.as_ref().map(|m| wit::MessageResult {
                        id: value(&m.id),
                        kind: value(&m.kind),
                        aggregate_type: value(&m.aggregate_type),
                        aggregate_id: value(&m.aggregate_id),
                        payload: value(&m.payload),
                        headers: value(&m.headers),
                    }),
                })
                .collect()
        })
    }

    fn message(i: u32) -> Arc<Event> {
        let mut e = sample();
        e.position = Position::new(Lsn(0x1A2B3C4), i);
        e.op = Op::Event;
        e.source.ts_micros += i64::from(i);
        e.key = None;
        e.before = None;
        e.after = None;
        e.unchanged = vec![];
        e.message = Some(Message {
            id: Value::Text(format!("m{i}")),
            kind: Value::Text("OrderPaid".into()),
            aggregate_type: Value::Text("order".into()),
            aggregate_id: Value::Int(42),
            payload: Value::Array(vec![Value::Int(i64::from(i))]),
            headers: Value::Null,
        });
        Arc::new(e)
    }

    #[test]
    fn a_round_trip_keeps_the_envelope() {
        let inputs = [Arc::new(sample()), message(8), message(9)];
        for (back, e) in echo(&inputs).into_iter().zip(&inputs) {
            let back = from_wit(back, e).unwrap();
            let a: serde_json::Value = serde_json::from_slice(e.json()).unwrap();
            let b: serde_json::Value = serde_json::from_slice(back.json()).unwrap();
            assert_eq!(a, b);
            assert!(Arc::ptr_eq(&back.source.pipeline, &e.source.pipeline));
        }
        let back = from_wit(echo(&inputs[..1]).remove(0), &inputs[0]).unwrap();
        // Arrays come back as JSON text, the rest as it was.
        let after = back.after.as_ref().unwrap();
        assert!(matches!(after.get("tags"), Some(Value::Json(j)) if j.get() == r#"["a",1]"#));
        assert_eq!(
            after.get("status"),
            inputs[0].after.as_ref().unwrap().get("status")
        );
        assert_eq!(after.get("nan"), Some(&Value::Text("NaN".into())));
    }

    #[test]
    fn outputs_keep_the_input_position_whatever_their_id() {
        let e = Arc::new(sample());
        let mut w = echo(std::slice::from_ref(&e)).remove(0);
        w.id = "9/9:9".into();
        w.source.table = Some("orders_archive".into());
        let out = from_wit(w, &e).unwrap();
        assert_eq!(out.position, e.position);
        assert_eq!(out.id(), e.id());
        assert_eq!(out.source.table.as_deref(), Some("orders_archive"));
    }

    #[test]
    fn invalid_outputs_say_what_is_wrong() {
        let e = Arc::new(sample());
        let one = || echo(std::slice::from_ref(&e)).remove(0);
        let mut w = one();
        w.after.as_mut().unwrap()[1].value = wit::ValueResult::Json("{nope".into());
        let err = from_wit(w, &e).unwrap_err();
        assert!(
            err.starts_with("after.status: a `json` value that is not JSON"),
            "{err}"
        );

        let mut w = one();
        w.source.lsn = "12".into();
        assert!(from_wit(w, &e).unwrap_err().starts_with("source.lsn"));

        let mut w = one();
        w.op = wit::Op::Event;
        assert_eq!(
            from_wit(w, &e).unwrap_err(),
            "op is `event` but `message` is none"
        );
    }

    #[test]
    fn timestamps_parse_back_what_the_envelope_writes() {
        for micros in [0, -1, 1_795_327_200_123_456, 951_782_400_000_000] {
            assert_eq!(
                parse_timestamp_micros(&format_timestamp_micros(micros)),
                Some(micros)
            );
        }
        assert_eq!(
            parse_timestamp_micros("1970-01-01T00:00:01Z"),
            Some(1_000_000)
        );
        assert_eq!(
            parse_timestamp_micros("1970-01-01T00:00:00.5Z"),
            Some(500_000)
        );
        assert_eq!(
            parse_timestamp_micros("1970-01-01T00:00:00.123456789Z"),
            Some(123_456)
        );
        assert_eq!(parse_timestamp_micros("1970-13-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp_micros("1970-01-01T00:00:00.x1Z"), None);
        assert_eq!(parse_timestamp_micros("yesterday"), None);
    }
}
