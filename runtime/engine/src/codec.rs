//! The lossless event codec: journal entries as bytes and back, with nothing lost.
//!
//! The JSON envelope is the contract with the outside world, but it loses type detail (a
//! numeric and a text column are both strings, bytea is base64, json is re-parsed). A
//! journal that lives on disk must give back exactly the event the source produced, so it
//! stores entries in this binary form instead: every [`Value`] keeps its variant, floats
//! keep their bits (NaN included), json keeps its text, positions, fan-out numbers and
//! `unchanged` columns survive. `decode(encode(e)) == e`, and `encode(decode(b)) == b`
//! for every `b` that `encode` wrote.
//!
//! Layout (all integers little-endian; `varint` is LEB128, signed ones zig-zagged):
//!
//! ```text
//! entry   = version:u8 (1) kind:u8 (0 event, 1 commit) body
//! commit  = commit_lsn:u64 end_lsn:u64
//! event   = commit_lsn:u64 index:varint fanout:varint op:u8 source row? row? row?
//!           unchanged:[str] message? sinks:[str]?   (sinks: op read only)
//! source  = pipeline:str schema:str? table:str? lsn:u64 commit_lsn:u64 xid:u32? ts:svarint
//! row     = count:varint (name:str value)*
//! value   = tag:u8 then: null | false | true | int:svarint | float:u64 bits | text:str
//!           | json:str | bytes:len+raw | array:count value*
//! str     = len:varint utf8;   x? = 0 | 1 x;   [x] = count:varint x*
//! ```
//!
//! A new layout gets a new version byte; decoding refuses versions it does not know.

use std::collections::HashSet;
use std::sync::Arc;

use crate::event::{Column, Event, Message, Op, Row, Source, Value};
use crate::journal::Entry;
use crate::lsn::{Lsn, Position};

const VERSION: u8 = 1;
const KIND_EVENT: u8 = 0;
const KIND_COMMIT: u8 = 1;

/// Bytes that are not an entry this codec wrote.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot decode a journal entry at byte {at}: {what}")]
pub struct CodecError {
    pub at: usize,
    pub what: String,
}

/// Append the encoding of `entry` to `out`.
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    out.push(VERSION);
    match entry {
        Entry::Event(record) => {
            out.push(KIND_EVENT);
            encode_event(&record.event, out);
        }
        Entry::Commit {
            commit_lsn,
            end_lsn,
        } => {
            out.push(KIND_COMMIT);
            out.extend_from_slice(&commit_lsn.0.to_le_bytes());
            out.extend_from_slice(&end_lsn.0.to_le_bytes());
        }
    }
}

/// Decode one entry that fills `bytes` exactly. Column and table names are shared through
/// `names` across the entries one decoder reads, as the source shares them.
pub fn decode_entry(bytes: &[u8], names: &mut Names) -> Result<Entry, CodecError> {
    let mut r = Reader {
        bytes,
        at: 0,
        names,
    };
    let version = r.u8()?;
    if version != VERSION {
        return Err(r.fail(format!(
            "layout version {version}, this build reads version {VERSION}"
        )));
    }
    let entry = match r.u8()? {
        KIND_EVENT => Entry::event(r.event()?),
        KIND_COMMIT => Entry::Commit {
            commit_lsn: Lsn(r.u64()?),
            end_lsn: Lsn(r.u64()?),
        },
        other => return Err(r.fail(format!("unknown entry kind {other}"))),
    };
    if r.at != bytes.len() {
        return Err(r.fail(format!("{} bytes after the entry", bytes.len() - r.at)));
    }
    Ok(entry)
}

/// Append the encoding of one event (without the entry header) to `out`.
pub fn encode_event(e: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(&e.position.commit_lsn.0.to_le_bytes());
    varint(out, e.position.index.into());
    varint(out, e.fanout.into());
    out.push(op_tag(e.op));
    let s = &e.source;
    text(out, &s.pipeline);
    optional(out, s.schema.as_deref(), text);
    optional(out, s.table.as_deref(), text);
    out.extend_from_slice(&s.lsn.0.to_le_bytes());
    out.extend_from_slice(&s.commit_lsn.0.to_le_bytes());
    optional(out, s.xid, |out, x| out.extend_from_slice(&x.to_le_bytes()));
    svarint(out, s.ts_micros);
    for row in [&e.key, &e.before, &e.after] {
        optional(out, row.as_ref(), encode_row);
    }
    varint(out, e.unchanged.len() as u64);
    for c in &e.unchanged {
        text(out, c);
    }
    optional(out, e.message.as_ref(), |out, m| {
        for v in m.values() {
            encode_value(out, v);
        }
    });
    // Only a backfill's rows are addressed to some sinks: what version 1 wrote for the
    // other ops stays byte for byte the same.
    if e.op == Op::Read {
        optional(out, e.sinks.as_deref(), |out, sinks| {
            varint(out, sinks.len() as u64);
            for s in sinks {
                text(out, s);
            }
        });
    }
}

fn encode_row(out: &mut Vec<u8>, row: &Row) {
    varint(out, row.0.len() as u64);
    for c in &row.0 {
        text(out, &c.name);
        encode_value(out, &c.value);
    }
}

fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0),
        Value::Bool(false) => out.push(1),
        Value::Bool(true) => out.push(2),
        Value::Int(i) => {
            out.push(3);
            svarint(out, *i);
        }
        Value::Float(f) => {
            out.push(4);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Text(t) => {
            out.push(5);
            text(out, t);
        }
        Value::Json(raw) => {
            out.push(6);
            text(out, raw.get());
        }
        Value::Bytes(b) => {
            out.push(7);
            varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            out.push(8);
            varint(out, items.len() as u64);
            for item in items {
                encode_value(out, item);
            }
        }
    }
}

fn op_tag(op: Op) -> u8 {
    match op {
        Op::Insert => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Truncate => 3,
        Op::Event => 4,
        Op::Read => 5,
    }
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn svarint(out: &mut Vec<u8>, n: i64) {
    varint(out, ((n << 1) ^ (n >> 63)) as u64);
}

fn text(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn optional<T>(out: &mut Vec<u8>, v: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            write(out, v);
        }
    }
}

/// Names (columns, tables, schemas) already decoded, shared by later entries so a
/// journal read back allocates each name once.
#[derive(Default)]
pub struct Names(HashSet<Arc<str>>);

impl Names {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(name) = self.0.get(s) {
            return name.clone();
        }
        let name: Arc<str> = s.into();
        // Bounded: a journal's names are its tables' columns, but a hostile file is not.
        if self.0.len() < 65_536 {
            self.0.insert(name.clone());
        }
        name
    }
}

struct Reader<'a, 'n> {
    bytes: &'a [u8],
    at: usize,
    names: &'n mut Names,
}

/// Arrays nest at most this deep (Postgres allows 6 dimensions).
const MAX_DEPTH: usize = 16;

impl Reader<'_, '_> {
    fn fail(&self, what: impl Into<String>) -> CodecError {
        CodecError {
            at: self.at,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.fail(format!("truncated: {n} more bytes expected")))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.fail("a varint longer than 64 bits"))
    }

    fn u32_varint(&mut self) -> Result<u32, CodecError> {
        let n = self.varint()?;
        u32::try_from(n).map_err(|_| self.fail(format!("{n} does not fit 32 bits")))
    }

    fn svarint(&mut self) -> Result<i64, CodecError> {
        let n = self.varint()?;
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    fn len(&mut self) -> Result<usize, CodecError> {
        let n = self.varint()?;
        // A length can never exceed what is left: refuse before allocating for it.
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(self.fail(format!("a length of {n} past the end")));
        }
        Ok(n as usize)
    }

    fn str(&mut self) -> Result<&str, CodecError> {
        let n = self.len()?;
        let at = self.at;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes).map_err(|e| CodecError {
            at: at + e.valid_up_to(),
            what: "text that is not UTF-8".into(),
        })
    }

    fn name(&mut self) -> Result<Arc<str>, CodecError> {
        let n = self.len()?;
        let at = self.at;
        let bytes = &self.bytes[at..at + n];
        let s = std::str::from_utf8(bytes).map_err(|e| CodecError {
            at: at + e.valid_up_to(),
            what: "a name that is not UTF-8".into(),
        })?;
        self.at += n;
        Ok(self.names.get(s))
    }

    fn flag(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.fail(format!("presence flag {other}, expected 0 or 1"))),
        }
    }

    fn event(&mut self) -> Result<Event, CodecError> {
        let commit = Lsn(self.u64()?);
        let index = self.u32_varint()?;
        let fanout = self.u32_varint()?;
        let op = match self.u8()? {
            0 => Op::Insert,
            1 => Op::Update,
            2 => Op::Delete,
            3 => Op::Truncate,
            4 => Op::Event,
            5 => Op::Read,
            other => return Err(self.fail(format!("unknown op {other}"))),
        };
        let pipeline = self.name()?;
        let schema = self.flag()?.then(|| self.name()).transpose()?;
        let table = self.flag()?.then(|| self.name()).transpose()?;
        let source = Source {
            pipeline,
            schema,
            table,
            lsn: Lsn(self.u64()?),
            commit_lsn: Lsn(self.u64()?),
            xid: self.flag()?.then(|| self.u32()).transpose()?,
            ts_micros: self.svarint()?,
        };
        let mut e = Event::new(Position::new(commit, index), op, source);
        e.fanout = fanout;
        e.key = self.row()?;
        e.before = self.row()?;
        e.after = self.row()?;
        let n = self.len()?;
        e.unchanged = (0..n).map(|_| self.name()).collect::<Result<_, _>>()?;
        if self.flag()? {
            e.message = Some(Message {
                id: self.value(0)?,
                kind: self.value(0)?,
                aggregate_type: self.value(0)?,
                aggregate_id: self.value(0)?,
                payload: self.value(0)?,
                headers: self.value(0)?,
            });
        }
        if op == Op::Read && self.flag()? {
            let n = self.len()?;
            let sinks = (0..n).map(|_| self.name()).collect::<Result<Vec<_>, _>>()?;
            e.sinks = Some(sinks.into());
        }
        Ok(e)
    }

    fn row(&mut self) -> Result<Option<Row>, CodecError> {
        if !self.flag()? {
            return Ok(None);
        }
        let n = self.len()?;
        let mut row = Row(Vec::with_capacity(n));
        for _ in 0..n {
            let name = self.name()?;
            let value = self.value(0)?;
            row.0.push(Column { name, value });
        }
        Ok(Some(row))
    }

    fn value(&mut self, depth: usize) -> Result<Value, CodecError> {
        Ok(match self.u8()? {
            0 => Value::Null,
            1 => Value::Bool(false),
            2 => Value::Bool(true),
            3 => Value::Int(self.svarint()?),
            4 => Value::Float(f64::from_bits(self.u64()?)),
            5 => Value::Text(self.str()?.to_owned()),
            6 => {
                let at = self.at;
                let text = self.str()?.to_owned();
                serde_json::value::RawValue::from_string(text)
                    .map(Value::Json)
                    .map_err(|e| CodecError {
                        at,
                        what: format!("a json value that does not parse: {e}"),
                    })?
            }
            7 => {
                let n = self.len()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            8 if depth >= MAX_DEPTH => {
                return Err(self.fail(format!("arrays nested deeper than {MAX_DEPTH}")))
            }
            8 => {
                let n = self.len()?;
                let items = (0..n)
                    .map(|_| self.value(depth + 1))
                    .collect::<Result<_, _>>()?;
                Value::Array(items)
            }
            other => return Err(self.fail(format!("unknown value tag {other}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn round_trip(entry: &Entry) -> (Vec<u8>, Entry) {
        let mut bytes = Vec::new();
        encode_entry(entry, &mut bytes);
        let back = decode_entry(&bytes, &mut Names::default()).unwrap();
        (bytes, back)
    }

    fn event_of(entry: &Entry) -> &Event {
        match entry {
            Entry::Event(r) => &r.event,
            Entry::Commit { .. } => panic!("not an event"),
        }
    }

    fn random_value(rng: &mut StdRng, depth: usize) -> Value {
        match rng.random_range(0..if depth > 2 { 8 } else { 9 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => Value::Int(rng.random()),
            3 => Value::Float(f64::from_bits(rng.random())),
            4 => Value::Text(
                (0..rng.random_range(0..12))
                    .map(|_| rng.random::<char>())
                    .collect(),
            ),
            5 => Value::json(&format!(r#"{{"k": [{}, "é"]}}"#, rng.random::<i32>())).unwrap(),
            6 => Value::Bytes((0..rng.random_range(0..20)).map(|_| rng.random()).collect()),
            _ => Value::Array(
                (0..rng.random_range(0..4))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
        }
    }

    fn random_row(rng: &mut StdRng) -> Option<Row> {
        rng.random_bool(0.7).then(|| {
            Row((0..rng.random_range(0..6))
                .map(|i| Column {
                    name: format!("c{i}").into(),
                    value: random_value(rng, 0),
                })
                .collect())
        })
    }

    fn random_event(rng: &mut StdRng) -> Event {
        let ops = crate::telemetry::OPS;
        let source = Source {
            pipeline: "p".into(),
            schema: rng.random_bool(0.9).then(|| "public".into()),
            table: rng.random_bool(0.9).then(|| "t".into()),
            lsn: Lsn(rng.random()),
            commit_lsn: Lsn(rng.random()),
            xid: rng.random_bool(0.9).then(|| rng.random()),
            ts_micros: rng.random(),
        };
        let mut e = Event::new(
            Position::new(Lsn(rng.random()), rng.random()),
            ops[rng.random_range(0..ops.len())],
            source,
        );
        e.fanout = rng.random_range(0..3);
        e.key = random_row(rng);
        e.before = random_row(rng);
        e.after = random_row(rng);
        e.unchanged = (0..rng.random_range(0..3))
            .map(|i| format!("big{i}").into())
            .collect();
        if e.op == Op::Event {
            e.message = Some(Message {
                id: random_value(rng, 0),
                kind: Value::Text("OrderPaid".into()),
                aggregate_type: random_value(rng, 0),
                aggregate_id: random_value(rng, 0),
                payload: Value::json(r#"{"total": "19.90"}"#).unwrap(),
                headers: Value::Null,
            });
        }
        if e.op == Op::Read && rng.random_bool(0.5) {
            e.sinks = Some(vec!["search".into(), "cache".into()].into());
        }
        e
    }

    #[test]
    fn random_events_round_trip_exactly_and_re_encode_to_the_same_bytes() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let entry = Entry::event(random_event(&mut rng));
            let (bytes, back) = round_trip(&entry);
            let (a, b) = (event_of(&entry), event_of(&back));
            assert_eq!(a, b);
            // Equality treats NaN as NaN; the bits must survive too.
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            let mut again = Vec::new();
            encode_entry(&back, &mut again);
            assert_eq!(again, bytes, "re-encoding gives the same bytes");
        }
    }

    #[test]
    fn types_that_json_loses_survive() {
        let mut e = crate::testing::event("t", Op::Update, 0x10, 3);
        let mut after = Row::default();
        after.push("numeric".into(), Value::Text("19.90".into()));
        after.push("nan".into(), Value::Float(f64::NAN));
        after.push("json".into(), Value::json(r#"{"b":1,  "a":2}"#).unwrap());
        after.push("bytea".into(), Value::Bytes(vec![0, 255]));
        after.push("big".into(), Value::Int(i64::MIN));
        e.after = Some(after);
        e.unchanged = vec!["body".into()];
        let (_, back) = round_trip(&Entry::event(e));
        let back = event_of(&back);
        let after = back.after.as_ref().unwrap();
        assert!(matches!(after.get("numeric"), Some(Value::Text(t)) if t == "19.90"));
        assert!(matches!(after.get("nan"), Some(Value::Float(f)) if f.is_nan()));
        assert!(
            matches!(after.get("json"), Some(Value::Json(j)) if j.get() == r#"{"b":1,  "a":2}"#)
        );
        assert!(matches!(after.get("bytea"), Some(Value::Bytes(b)) if b == &[0, 255]));
        assert!(matches!(after.get("big"), Some(Value::Int(i64::MIN))));
        assert_eq!(back.unchanged, [Arc::<str>::from("body")]);
        assert_eq!(back.position, Position::new(Lsn(0x10), 3));
    }

    #[test]
    fn commits_round_trip() {
        let commit = Entry::Commit {
            commit_lsn: Lsn(u64::MAX - 1),
            end_lsn: Lsn(u64::MAX),
        };
        let (_, back) = round_trip(&commit);
        assert!(matches!(
            back,
            Entry::Commit { commit_lsn: Lsn(a), end_lsn: Lsn(b) } if a == u64::MAX - 1 && b == u64::MAX
        ));
    }

    #[test]
    fn names_are_shared_across_entries_of_one_decoder() {
        let mut names = Names::default();
        let mut decoded = Vec::new();
        for i in 0..2 {
            let mut bytes = Vec::new();
            encode_entry(
                &Entry::event((*crate::testing::insert("t", 1, i)).clone()),
                &mut bytes,
            );
            decoded.push(decode_entry(&bytes, &mut names).unwrap());
        }
        let column = |e: &Entry| event_of(e).after.as_ref().unwrap().0[0].name.clone();
        assert!(Arc::ptr_eq(&column(&decoded[0]), &column(&decoded[1])));
    }

    #[test]
    fn damaged_bytes_are_refused_with_where_and_why() {
        let mut bytes = Vec::new();
        encode_entry(
            &Entry::event(random_event(&mut StdRng::seed_from_u64(1))),
            &mut bytes,
        );
        let decode = |b: &[u8]| decode_entry(b, &mut Names::default());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "a prefix of {cut} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer)
            .unwrap_err()
            .what
            .contains("after the entry"));
        let mut version = bytes.clone();
        version[0] = 9;
        let e = decode(&version).unwrap_err();
        assert_eq!(e.at, 1);
        assert!(e.what.contains("version 9"), "{e}");
        // A huge length must be refused, not allocated.
        let e = decode(&[
            VERSION, KIND_EVENT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f,
        ])
        .unwrap_err();
        assert!(e.what.contains("past the end"), "{e}");
        // Random garbage never panics.
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..2000 {
            let mut junk = bytes.clone();
            for _ in 0..3 {
                let i = rng.random_range(0..junk.len());
                junk[i] = rng.random();
            }
            let _ = decode(&junk);
        }
    }
}
