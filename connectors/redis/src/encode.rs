//! What an event becomes on the wire: its fence (the position as fixed-width hex), its
//! stream entry id, and its row as a JSON document or as hash fields. Everything here
//! writes straight into a command's argument buffer ([`Args`]), so encoding a row
//! allocates nothing of its own.

use std::fmt;
use std::io::Write as _;

use redis::{Cmd, RedisWrite};
use sluice_runtime::{Event, Row, Value};

/// The hash field that holds a row's fence in `format: hash`.
pub const FENCE_FIELD: &str = "_sluice_pos";

/// Appended to a document's key to name its fence in `format: json`.
pub const FENCE_SUFFIX: &str = ":sluice";

/// How many events a transform may make of one change in stream mode: the fan-out number
/// takes the low 16 bits of the entry id's sequence part.
pub const MAX_STREAM_FANOUT: u32 = 1 << 16;

/// The fence of an event: its commit LSN (16 hex digits), its index in the transaction (8)
/// and its fan-out number (8), lowercase. Fixed width, so the scripts compare fences digit
/// group by digit group and a later change always compares greater. The fan-out number
/// orders the events a transform made of one change, which share its position.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fence([u8; 32]);

impl Fence {
    pub fn of(event: &Event) -> Fence {
        let mut out = [0u8; 32];
        hex(event.position.commit_lsn.0, &mut out[..16]);
        hex(u64::from(event.position.index), &mut out[16..24]);
        hex(u64::from(event.fanout), &mut out[24..]);
        Fence(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `value`'s low `out.len()` hex digits, lowercase, most significant first.
fn hex(mut value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The stream entry id of an event: `<commit_lsn>-<index * 65536 + fanout>`, both in
/// decimal. Ids increase along the stream, so Redis refuses an event that is already there
/// (or older than the stream's last entry) instead of appending it twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamId {
    pub lsn: u64,
    pub sequence: u64,
}

impl StreamId {
    pub fn of(event: &Event) -> Result<StreamId, String> {
        if event.fanout >= MAX_STREAM_FANOUT {
            return Err(format!(
                "a transform made more than {MAX_STREAM_FANOUT} events of one change; \
                 stream entry ids have room for {MAX_STREAM_FANOUT}"
            ));
        }
        Ok(StreamId {
            lsn: event.position.commit_lsn.0,
            sequence: (u64::from(event.position.index) << 16) | u64::from(event.fanout),
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lsn, self.sequence)
    }
}

/// Arguments written into a command's own buffer: no intermediate strings.
pub trait Args {
    /// One argument made of `parts` one after the other (a key and its fence suffix).
    fn arg_concat(&mut self, parts: &[&[u8]]) -> &mut Self;
    /// One argument in decimal.
    fn arg_int(&mut self, value: u64) -> &mut Self;
    /// A row as one JSON object, columns in table order; NULL stays `null`.
    fn arg_document(&mut self, row: &Row) -> &mut Self;
    /// A column name as a JSON string, quotes included: how it appears in a stored
    /// document.
    fn arg_json_name(&mut self, name: &str) -> &mut Self;
    /// A value as text, as in templates (see [`write_value_text`]).
    fn arg_value_text(&mut self, value: &Value) -> &mut Self;
    /// An argument written with `Display`.
    fn arg_display(&mut self, value: impl fmt::Display) -> &mut Self;
}

impl Args for Cmd {
    fn arg_concat(&mut self, parts: &[&[u8]]) -> &mut Self {
        {
            let mut w = self.writer_for_next_arg();
            for part in parts {
                w.write_all(part).expect("a command buffer takes any bytes");
            }
        }
        self
    }

    fn arg_int(&mut self, value: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        self.write_arg(format_u64(value, &mut digits));
        self
    }

    fn arg_document(&mut self, row: &Row) -> &mut Self {
        serde_json::to_writer(self.writer_for_next_arg(), row)
            .expect("a row always encodes as JSON");
        self
    }

    fn arg_json_name(&mut self, name: &str) -> &mut Self {
        serde_json::to_writer(self.writer_for_next_arg(), name)
            .expect("a string always encodes as JSON");
        self
    }

    fn arg_value_text(&mut self, value: &Value) -> &mut Self {
        write_value_text(value, &mut self.writer_for_next_arg());
        self
    }

    fn arg_display(&mut self, value: impl fmt::Display) -> &mut Self {
        write!(self.writer_for_next_arg(), "{value}").expect("a command buffer takes any bytes");
        self
    }
}

/// `value` in decimal, in `buffer`.
fn format_u64(mut value: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buffer[at..];
        }
    }
}

/// Whether a hash field can hold `value`: SQL NULL has no field.
pub fn has_text(value: &Value) -> bool {
    !matches!(value, Value::Null)
}

/// `value` as text, as templates write it: text as it is, integers and floats in decimal
/// (floats as in the JSON envelope), booleans as `true`/`false`, bytea as base64, json and
/// arrays as their JSON text. Unlike a template, a json value that is a JSON string keeps
/// its quotes, so a hash field holds the column's JSON as it is. NULL writes nothing
/// (callers skip it, see [`has_text`]).
pub fn write_value_text(value: &Value, out: &mut impl std::io::Write) {
    let written = match value {
        Value::Null => Ok(()),
        Value::Bool(b) => out.write_all(if *b { b"true" } else { b"false" }),
        Value::Int(i) => write!(out, "{i}"),
        Value::Float(f) if f.is_nan() => out.write_all(b"NaN"),
        Value::Float(f) if f.is_infinite() => out.write_all(if *f > 0.0 {
            b"Infinity".as_slice()
        } else {
            b"-Infinity".as_slice()
        }),
        // serde_json writes floats the shortest way that reads back the same, as the
        // envelope does.
        Value::Float(f) => serde_json::to_writer(&mut *out, f).map_err(std::io::Error::other),
        Value::Text(t) => out.write_all(t.as_bytes()),
        Value::Json(raw) => out.write_all(raw.get().as_bytes()),
        Value::Bytes(b) => {
            let mut encoder = base64::write::EncoderWriter::new(
                &mut *out,
                &base64::engine::general_purpose::STANDARD,
            );
            encoder
                .write_all(b)
                .and_then(|_| encoder.finish().map(|_| ()))
        }
        Value::Array(_) => serde_json::to_writer(&mut *out, value).map_err(std::io::Error::other),
    };
    written.expect("a command buffer takes any bytes");
}

/// The arguments of `cmd`, as text (for tests).
#[cfg(test)]
pub(crate) fn args(cmd: &Cmd) -> Vec<String> {
    cmd.args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => "<not a plain argument>".into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::{testing, Op};

    fn at(lsn: u64, index: u32, fanout: u32) -> Event {
        let mut e = testing::event("t", Op::Insert, lsn, index);
        e.fanout = fanout;
        e
    }

    #[test]
    fn fences_are_fixed_width_and_order_like_positions() {
        assert_eq!(
            Fence::of(&at(0x1A2B3C4, 7, 0)).as_str(),
            "0000000001a2b3c40000000700000000"
        );
        assert_eq!(
            Fence::of(&at(u64::MAX, u32::MAX, 1)).as_str(),
            "ffffffffffffffffffffffff00000001"
        );
        let ordered = [
            at(1, 0, 0),
            at(1, 0, 1),
            at(1, 1, 0),
            at(1, 0xffff_ffff, 0),
            at(2, 0, 0),
            at(0x1_0000_0000, 0, 0),
            at(u64::MAX, 0, 0),
        ];
        for pair in ordered.windows(2) {
            assert!(pair[0].position <= pair[1].position);
            assert!(
                Fence::of(&pair[0]).as_str() < Fence::of(&pair[1]).as_str(),
                "{pair:?}"
            );
        }
    }

    #[test]
    fn stream_ids_carry_lsn_index_and_fanout() {
        let id = |e: &Event| StreamId::of(e).unwrap().to_string();
        assert_eq!(id(&at(4096, 0, 0)), "4096-0");
        assert_eq!(id(&at(4096, 3, 2)), "4096-196610");
        assert_eq!(
            id(&at(u64::MAX, u32::MAX, 0xffff)),
            format!("{}-{}", u64::MAX, (u64::from(u32::MAX) << 16) | 0xffff)
        );
        let e = StreamId::of(&at(1, 0, MAX_STREAM_FANOUT)).unwrap_err();
        assert!(e.contains("65536"), "{e}");
    }

    #[test]
    fn arguments_are_written_into_the_command() {
        let mut row = Row::default();
        row.push("id".into(), Value::Int(9_007_199_254_740_993));
        row.push("note".into(), Value::Null);
        row.push(
            "meta".into(),
            Value::json(r#"{"big": 12345678901234567890}"#).unwrap(),
        );
        let mut cmd = redis::cmd("X");
        cmd.arg_document(&row);
        cmd.arg_json_name("a\"b");
        cmd.arg_concat(&[b"items:1", FENCE_SUFFIX.as_bytes()]);
        cmd.arg_int(0);
        cmd.arg_int(u64::MAX);
        cmd.arg_display(StreamId {
            lsn: 7,
            sequence: 3,
        });
        assert_eq!(
            args(&cmd),
            [
                "X",
                r#"{"id":9007199254740993,"note":null,"meta":{"big": 12345678901234567890}}"#,
                r#""a\"b""#,
                "items:1:sluice",
                "0",
                "18446744073709551615",
                "7-3",
            ]
        );
    }

    #[test]
    fn values_are_written_as_template_text() {
        let cases = [
            (Value::Text("a b:c".into()), "a b:c"),
            (Value::Int(-7), "-7"),
            (Value::Float(1.5), "1.5"),
            (Value::Float(1e-7), "1e-7"),
            (Value::Float(f64::NAN), "NaN"),
            (Value::Float(f64::NEG_INFINITY), "-Infinity"),
            (Value::Bool(false), "false"),
            (Value::Bytes(vec![0, 1, 2]), "AAEC"),
            (Value::json(r#"{"a": [1]}"#).unwrap(), r#"{"a": [1]}"#),
            (
                Value::Array(vec![Value::Int(1), Value::Text("x".into())]),
                r#"[1,"x"]"#,
            ),
        ];
        for (value, text) in cases {
            let mut out = Vec::new();
            write_value_text(&value, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), text, "{value:?}");
            assert_eq!(
                sluice_runtime::template::value_text(&value).as_deref(),
                Some(text),
                "templates and hash fields agree on {value:?}"
            );
        }
        assert!(!has_text(&Value::Null));
    }
}
