//! What an event becomes on the wire: its fence (the position as fixed-width hex), its
//! stream entry id, and its row as a JSON document or as hash fields.

use std::borrow::Cow;

use sluice_runtime::{Event, Row};

use crate::template::value_text;

/// The hash field that holds a row's fence in `format: hash`.
pub const FENCE_FIELD: &str = "_sluice_pos";

/// Appended to a document's key to name its fence in `format: json`.
pub const FENCE_SUFFIX: &str = ":sluice";

/// The fence of an event: its commit LSN (16 hex digits), its index in the transaction (8)
/// and its fan-out number (8), lowercase. Fixed width, so the scripts compare fences digit
/// group by digit group and a later change always compares greater. The fan-out number
/// orders the events a transform made of one change, which share its position.
pub fn fence(event: &Event) -> String {
    format!(
        "{:016x}{:08x}{:08x}",
        event.position.commit_lsn.0, event.position.index, event.fanout
    )
}

/// How many events a transform may make of one change in stream mode: the fan-out number
/// takes the low 16 bits of the entry id's sequence part.
pub const MAX_STREAM_FANOUT: u32 = 1 << 16;

/// The stream entry id of an event: `<commit_lsn>-<index * 65536 + fanout>`, both in
/// decimal. Ids increase along the stream, so Redis refuses an event that is already there
/// (or older than the stream's last entry) instead of appending it twice.
pub fn stream_id(event: &Event) -> Result<String, String> {
    if event.fanout >= MAX_STREAM_FANOUT {
        return Err(format!(
            "a transform made more than {MAX_STREAM_FANOUT} events of one change; \
             stream entry ids have room for {MAX_STREAM_FANOUT}"
        ));
    }
    let sequence = (u64::from(event.position.index) << 16) | u64::from(event.fanout);
    Ok(format!("{}-{sequence}", event.position.commit_lsn.0))
}

/// A row as one JSON object, columns in table order; NULL stays `null`.
pub fn document(row: &Row) -> String {
    serde_json::to_string(row).expect("a row always encodes as JSON")
}

/// A column name as a JSON string, quotes included: how it appears in a stored document.
pub fn json_name(name: &str) -> String {
    serde_json::to_string(name).expect("a string always encodes as JSON")
}

/// A row as hash fields: `(name, value)` for every non-NULL column (a hash has no NULL: the
/// field is absent). Values are text as in templates: text as it is, numbers in decimal,
/// json and arrays as JSON text, bytea as base64.
pub fn hash_fields(row: &Row) -> Vec<(&str, Cow<'_, str>)> {
    row.0
        .iter()
        .filter_map(|c| value_text(&c.value).map(|text| (&*c.name, text)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::{testing, Op, Value};

    fn at(lsn: u64, index: u32, fanout: u32) -> Event {
        let mut e = testing::event("t", Op::Insert, lsn, index);
        e.fanout = fanout;
        e
    }

    #[test]
    fn fences_are_fixed_width_and_order_like_positions() {
        assert_eq!(
            fence(&at(0x1A2B3C4, 7, 0)),
            "0000000001a2b3c40000000700000000"
        );
        assert_eq!(fence(&at(u64::MAX, u32::MAX, 1)).len(), 32);
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
            assert!(fence(&pair[0]) < fence(&pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn stream_ids_carry_lsn_index_and_fanout() {
        assert_eq!(stream_id(&at(4096, 0, 0)).unwrap(), "4096-0");
        assert_eq!(stream_id(&at(4096, 3, 2)).unwrap(), "4096-196610");
        assert_eq!(
            stream_id(&at(u64::MAX, u32::MAX, 0xffff)).unwrap(),
            format!("{}-{}", u64::MAX, (u64::from(u32::MAX) << 16) | 0xffff)
        );
        let e = stream_id(&at(1, 0, MAX_STREAM_FANOUT)).unwrap_err();
        assert!(e.contains("65536"), "{e}");
    }

    #[test]
    fn rows_become_documents_or_fields() {
        let mut row = Row::default();
        row.push("id".into(), Value::Int(9_007_199_254_740_993));
        row.push("note".into(), Value::Null);
        row.push(
            "meta".into(),
            Value::json(r#"{"big": 12345678901234567890}"#).unwrap(),
        );
        assert_eq!(
            document(&row),
            r#"{"id":9007199254740993,"note":null,"meta":{"big": 12345678901234567890}}"#
        );
        assert_eq!(
            hash_fields(&row),
            [
                ("id", Cow::Borrowed("9007199254740993")),
                ("meta", Cow::Borrowed(r#"{"big": 12345678901234567890}"#)),
            ]
        );
        assert_eq!(json_name("a\"b"), r#""a\"b""#);
    }
}
