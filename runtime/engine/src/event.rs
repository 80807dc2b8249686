//! The event envelope: one shape for WAL changes, outbox rows and logical messages.
//!
//! Every sink, transform and DLQ entry sees this type. Its JSON form is the contract of
//! `SPEC.md` ("The event envelope"); [`Event::json`] encodes it once and caches the bytes,
//! so fanning one event out to many sinks costs one encoding.

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use bytes::Bytes;
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::lsn::{Lsn, Position};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// An outbox row or a logical message; the envelope carries [`Event::event`].
    Event,
    /// A row as it stood when a snapshot or backfill copied it: an upsert that never
    /// regresses a newer change (it is placed in the stream after every change it saw).
    Read,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Event => "event",
            Op::Read => "read",
        }
    }
}

/// A column value, already converted from Postgres' text form by the rules of the spec:
/// int2/4/8 as numbers, numeric as text, non-finite floats as text, json as JSON, bytea
/// as base64 (encoded when serialized), arrays as JSON arrays, the rest as text.
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// A finite float. Non-finite floats are carried as `Text("NaN" | "Infinity" | "-Infinity")`.
    Float(f64),
    Text(String),
    /// A json/jsonb value, kept as its (valid) JSON text.
    Json(Box<RawValue>),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => a == b || (a.is_nan() && b.is_nan()),
            (Text(a), Text(b)) => a == b,
            (Json(a), Json(b)) => a.get() == b.get(),
            (Bytes(a), Bytes(b)) => a == b,
            (Array(a), Array(b)) => a == b,
            _ => false,
        }
    }
}

impl Value {
    /// Parse JSON text into a [`Value::Json`]; `None` when the text is not valid JSON.
    pub fn json(text: &str) -> Option<Value> {
        RawValue::from_string(text.to_owned()).ok().map(Value::Json)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) if f.is_nan() => s.serialize_str("NaN"),
            Value::Float(f) if f.is_infinite() => {
                s.serialize_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
            }
            Value::Float(f) => s.serialize_f64(*f),
            Value::Text(t) => s.serialize_str(t),
            Value::Json(raw) => raw.serialize(s),
            Value::Bytes(b) => {
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
            }
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
        }
    }
}

/// One named value of a row.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: Arc<str>,
    pub value: Value,
}

/// Columns in table order. Serialized as a JSON object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row(pub Vec<Column>);

impl Row {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|c| &*c.name == name).map(|c| &c.value)
    }

    pub fn push(&mut self, name: Arc<str>, value: Value) {
        self.0.push(Column { name, value });
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for c in &self.0 {
            map.serialize_entry(&*c.name, &c.value)?;
        }
        map.end()
    }
}

/// Where an event came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub pipeline: Arc<str>,
    /// Schema and table of the change; `None` for a logical message.
    pub schema: Option<Arc<str>>,
    pub table: Option<Arc<str>>,
    /// The LSN of the change itself.
    pub lsn: Lsn,
    /// The LSN of its transaction's commit record.
    pub commit_lsn: Lsn,
    /// The transaction id; `None` for a non-transactional logical message.
    pub xid: Option<u32>,
    /// Commit time, microseconds since the Unix epoch.
    pub ts_micros: i64,
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Source", 7)?;
        st.serialize_field("pipeline", &*self.pipeline)?;
        st.serialize_field("schema", &self.schema.as_deref())?;
        st.serialize_field("table", &self.table.as_deref())?;
        st.serialize_field("lsn", &self.lsn.to_string())?;
        st.serialize_field("commit_lsn", &self.commit_lsn.to_string())?;
        st.serialize_field("xid", &self.xid)?;
        st.serialize_field("ts", &format_timestamp_micros(self.ts_micros))?;
        st.end()
    }
}

/// The body of an `op: event` envelope: an outbox row or a logical message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    pub id: Value,
    #[serde(rename = "type")]
    pub kind: Value,
    pub aggregate_type: Value,
    pub aggregate_id: Value,
    pub payload: Value,
    pub headers: Value,
}

impl Message {
    /// Every value of the message, in the envelope's order.
    pub fn values(&self) -> [&Value; 6] {
        [
            &self.id,
            &self.kind,
            &self.aggregate_type,
            &self.aggregate_id,
            &self.payload,
            &self.headers,
        ]
    }
}

/// One change, outbox row or logical message. See SPEC.md for the JSON form.
#[derive(Debug)]
pub struct Event {
    pub position: Position,
    pub op: Op,
    pub source: Source,
    /// The key columns (primary key, else replica identity); `None` when the table has none.
    pub key: Option<Row>,
    pub before: Option<Row>,
    pub after: Option<Row>,
    /// TOASTed columns Postgres did not send on this update; absent from `after`.
    pub unchanged: Vec<Arc<str>>,
    /// Present exactly when `op` is [`Op::Event`].
    pub message: Option<Message>,
    /// 0 for the event the source produced; k for the k-th extra event a transform fanned
    /// it out into. Fan-out events share their source event's position (offsets count source
    /// events) and get the id `<position>#k`.
    pub fanout: u32,
    /// The sinks this event is for; `None` (every event but a backfill's rows): every sink.
    /// A backfill requested for some sinks only reaches those; the others skip its rows
    /// like rows of a table they do not take.
    pub sinks: Option<Arc<[Arc<str>]>>,
    json: OnceLock<Bytes>,
}

impl Event {
    pub fn new(position: Position, op: Op, source: Source) -> Self {
        Event {
            position,
            op,
            source,
            key: None,
            before: None,
            after: None,
            unchanged: Vec::new(),
            message: None,
            fanout: 0,
            sinks: None,
            json: OnceLock::new(),
        }
    }

    /// Whether the sink named `sink` takes this event ([`Event::sinks`]).
    pub fn is_for(&self, sink: &str) -> bool {
        self.sinks
            .as_ref()
            .is_none_or(|sinks| sinks.iter().any(|s| &**s == sink))
    }

    /// The stable event id, `<commit_lsn>:<index>` (`#k` appended for the k-th extra
    /// event of a fan-out).
    pub fn id(&self) -> String {
        match self.fanout {
            0 => self.position.to_string(),
            k => format!("{}#{k}", self.position),
        }
    }

    /// The envelope as JSON, encoded on first use and shared afterwards.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            Bytes::from(serde_json::to_vec(self).expect("an event always encodes as JSON"))
        })
    }

    /// Use these bytes as the event's JSON (an envelope read back verbatim).
    pub fn set_json(&mut self, json: Bytes) {
        self.json = OnceLock::from(json);
    }

    /// A hash of what orders this event: table and key. Events with equal ordering keys
    /// must reach a sink in stream order; different keys may be delivered concurrently.
    /// Keyless rows share their table's ordering key, so they stay in order. `None` marks a
    /// barrier (a truncate, or a table's `schema_change` event): everything before it must
    /// take effect first, everything after it afterwards. See [`crate::lanes::plan`].
    pub fn ordering_key(&self) -> Option<u64> {
        if self.op == Op::Truncate || self.is_schema_change() {
            return None;
        }
        let mut h = Fnv1a::default();
        h.text(self.source.schema.as_deref().unwrap_or(""));
        h.text(self.source.table.as_deref().unwrap_or(""));
        match (&self.key, &self.message) {
            (Some(key), _) => {
                for c in &key.0 {
                    h.text(&c.name);
                    hash_value(&c.value, &mut h);
                }
            }
            (None, Some(m)) => hash_value(&m.aggregate_id, &mut h),
            (None, None) => {}
        }
        Some(h.finish())
    }
}

impl Event {
    /// A table's schema change made an event by the source (`event.type` `schema_change`,
    /// `aggregate_type` `table`): the rows after it have the new shape.
    pub fn is_schema_change(&self) -> bool {
        self.op == Op::Event
            && self.message.as_ref().is_some_and(|m| {
                m.kind == Value::Text("schema_change".into())
                    && m.aggregate_type == Value::Text("table".into())
            })
    }
}

impl Clone for Event {
    fn clone(&self) -> Self {
        Event {
            position: self.position,
            op: self.op,
            source: self.source.clone(),
            key: self.key.clone(),
            before: self.before.clone(),
            after: self.after.clone(),
            unchanged: self.unchanged.clone(),
            message: self.message.clone(),
            fanout: self.fanout,
            sinks: self.sinks.clone(),
            json: OnceLock::new(),
        }
    }
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.position == o.position
            && self.fanout == o.fanout
            && self.op == o.op
            && self.source == o.source
            && self.key == o.key
            && self.before == o.before
            && self.after == o.after
            && self.unchanged == o.unchanged
            && self.message == o.message
            && self.sinks == o.sinks
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Event", 8)?;
        st.serialize_field("id", &self.id())?;
        st.serialize_field("op", &self.op)?;
        st.serialize_field("source", &self.source)?;
        st.serialize_field("key", &self.key)?;
        if let Some(message) = &self.message {
            st.serialize_field("event", message)?;
        } else {
            st.serialize_field("before", &self.before)?;
            st.serialize_field("after", &self.after)?;
            let unchanged: Vec<&str> = self.unchanged.iter().map(|c| &**c).collect();
            st.serialize_field("unchanged", &unchanged)?;
        }
        st.end()
    }
}

/// FNV-1a over explicit bytes: ordering keys are stored in DLQ entries, so they must not
/// change with the Rust release or the platform.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    fn text(&mut self, text: &str) {
        self.bytes(&(text.len() as u64).to_le_bytes());
        self.bytes(text.as_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Hash a value by what it means, without encoding it.
fn hash_value(v: &Value, h: &mut Fnv1a) {
    match v {
        Value::Null => h.bytes(&[0]),
        Value::Bool(b) => h.bytes(&[1, *b as u8]),
        Value::Int(i) => {
            h.bytes(&[2]);
            h.bytes(&i.to_le_bytes());
        }
        Value::Float(f) => {
            h.bytes(&[3]);
            h.bytes(&f.to_bits().to_le_bytes());
        }
        Value::Text(t) => {
            h.bytes(&[4]);
            h.text(t);
        }
        Value::Json(raw) => {
            h.bytes(&[5]);
            h.text(raw.get());
        }
        Value::Bytes(b) => {
            h.bytes(&[6]);
            h.bytes(&(b.len() as u64).to_le_bytes());
            h.bytes(b);
        }
        Value::Array(items) => {
            h.bytes(&[7]);
            h.bytes(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| hash_value(i, h));
        }
    }
}

/// Format microseconds since the Unix epoch as ISO 8601 UTC with microseconds,
/// e.g. `2026-11-22T06:00:00.123456Z`.
pub fn format_timestamp_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// The inverse of [`format_timestamp_micros`]: `2026-11-22T06:00:00.123456Z` (fraction
/// optional, up to nine digits, truncated to microseconds) → microseconds since the epoch.
pub fn parse_timestamp_micros(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mm: i64 = t.next()?.parse().ok()?;
    let ss: i64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(6)
        .fold(0, |n, digit| n * 10 + i64::from(digit - b'0'));
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + micros)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
/// (Howard Hinnant's `civil_from_days`.)
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source() -> Source {
        Source {
            pipeline: "orders".into(),
            schema: Some("public".into()),
            table: Some("orders".into()),
            lsn: Lsn(0x1A2B3A0),
            commit_lsn: Lsn(0x1A2B3C4),
            xid: Some(1234),
            ts_micros: 1_795_327_200_123_456,
        }
    }

    #[test]
    fn insert_encodes_as_the_spec_envelope() {
        let mut e = Event::new(Position::new(Lsn(0x1A2B3C4), 7), Op::Insert, source());
        let mut key = Row::default();
        key.push("id".into(), Value::Int(42));
        let mut after = key.clone();
        after.push("status".into(), Value::Text("paid".into()));
        after.push("total".into(), Value::Text("19.90".into()));
        after.push("tags".into(), Value::Array(vec![Value::Text("a".into())]));
        after.push("meta".into(), Value::json(r#"{"k": 1}"#).unwrap());
        after.push("blob".into(), Value::Bytes(vec![0, 1, 2]));
        after.push("ratio".into(), Value::Float(f64::NAN));
        e.key = Some(key);
        e.after = Some(after);
        let v: serde_json::Value = serde_json::from_slice(e.json()).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "0/1A2B3C4:7", "op": "insert",
                "source": {"pipeline": "orders", "schema": "public", "table": "orders",
                           "lsn": "0/1A2B3A0", "commit_lsn": "0/1A2B3C4", "xid": 1234,
                           "ts": "2026-11-22T06:00:00.123456Z"},
                "key": {"id": 42}, "before": null,
                "after": {"id": 42, "status": "paid", "total": "19.90", "tags": ["a"],
                          "meta": {"k": 1}, "blob": "AAEC", "ratio": "NaN"},
                "unchanged": []
            })
        );
    }

    #[test]
    fn message_events_carry_event_and_no_before_after() {
        let mut e = Event::new(Position::new(Lsn(1), 0), Op::Event, source());
        e.message = Some(Message {
            id: Value::Text("m1".into()),
            kind: Value::Text("OrderPaid".into()),
            aggregate_type: Value::Text("order".into()),
            aggregate_id: Value::Text("42".into()),
            payload: Value::json("[1]").unwrap(),
            headers: Value::Null,
        });
        let v: serde_json::Value = serde_json::from_slice(e.json()).unwrap();
        assert_eq!(v["event"]["type"], "OrderPaid");
        assert!(v.get("before").is_none() && v.get("after").is_none());
    }

    #[test]
    fn ordering_keys_are_stable_and_separate_keys_and_tables() {
        let keyed = |table: &str, id: i64| {
            let mut s = source();
            s.table = Some(table.into());
            let mut e = Event::new(Position::new(Lsn(1), 0), Op::Update, s);
            let mut key = Row::default();
            key.push("id".into(), Value::Int(id));
            e.key = Some(key);
            e.ordering_key().unwrap()
        };
        assert_eq!(keyed("orders", 1), keyed("orders", 1));
        assert_ne!(keyed("orders", 1), keyed("orders", 2));
        assert_ne!(keyed("orders", 1), keyed("customers", 1));
        // Stored in DLQ entries: the value must never change between builds.
        assert_eq!(
            keyed("orders", 1),
            0x5b6c_01c1_af10_396d,
            "{:#x}",
            keyed("orders", 1)
        );
        let truncate = Event::new(Position::new(Lsn(1), 0), Op::Truncate, source());
        assert_eq!(truncate.ordering_key(), None);
        // A table's schema change is a barrier too; an application's event is keyed.
        let event = |kind: &str, aggregate_type: &str| {
            let mut e = Event::new(Position::new(Lsn(1), 0), Op::Event, source());
            e.message = Some(Message {
                id: Value::Null,
                kind: Value::Text(kind.into()),
                aggregate_type: Value::Text(aggregate_type.into()),
                aggregate_id: Value::Text("public.orders".into()),
                payload: Value::Null,
                headers: Value::Null,
            });
            e.ordering_key()
        };
        assert_eq!(event("schema_change", "table"), None);
        assert!(event("schema_change", "order").is_some());
        assert!(event("OrderPaid", "table").is_some());
    }

    #[test]
    fn timestamps_format_before_and_after_the_epoch() {
        assert_eq!(format_timestamp_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_timestamp_micros(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            format_timestamp_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
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
        let parse = parse_timestamp_micros;
        assert_eq!(parse("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse("1970-01-01T00:00:00.5Z"), Some(500_000));
        assert_eq!(parse("1970-01-01T00:00:00.123456789Z"), Some(123_456));
        assert_eq!(parse("1970-13-01T00:00:00Z"), None);
        assert_eq!(parse("1970-01-01T00:00:00.x1Z"), None);
        assert_eq!(parse("yesterday"), None);
    }
}
