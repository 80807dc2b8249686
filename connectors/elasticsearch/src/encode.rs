//! Events as `_bulk` actions and their NDJSON body.
//!
//! An insert or update is an `index` action whose document is the row (`after`) as a JSON
//! object, typed as in the envelope; a delete is a `delete` action. Both carry the
//! change's external version ([`crate::version`]). An update that changed the key first
//! deletes the document of the old key (same version), then indexes the new one.
//!
//! ```text
//! {"index":{"_index":"orders","_id":"42","version":23456,"version_type":"external"}}
//! {"id":42,"status":"paid","total":"19.90"}
//! {"delete":{"_index":"orders","_id":"41","version":23456,"version_type":"external"}}
//! ```
//!
//! [`Encoder::plan`] decides what an event writes (or why it cannot be written);
//! [`Planned::encode`] appends its lines to a body.

use std::io::Write as _;
use std::sync::Arc;

use sluice_runtime::template::{Rules, Scope, Template};
use sluice_runtime::{Event, Op, Row, Value};

use crate::version;

/// How the `index` and `id` templates read: a composite `{key}` is joined by `_`, and only
/// placeholders that are the same for every change of a row are allowed (`{op}` would
/// send a row's delete to another document than its insert; `{event.*}` has no value on
/// the row changes this sink writes).
pub const TEMPLATE_RULES: Rules = Rules::new().key_separator("_").scope(Scope::Row);

/// The longest document id Elasticsearch accepts, in bytes. A longer one fails the whole
/// bulk request, so it is refused here, for its event only.
pub const MAX_ID_BYTES: usize = 512;

/// The longest index name Elasticsearch accepts, in bytes.
pub const MAX_INDEX_BYTES: usize = 255;

/// Where a document lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DocRef {
    /// The index name.
    pub index: String,
    /// The document id.
    pub id: String,
}

impl std::fmt::Display for DocRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.id)
    }
}

/// A column value added to the row of an update: an unchanged TOAST column, filled from
/// the old row (`before`) or from the stored document.
#[derive(Clone, Debug, PartialEq)]
pub enum Filled {
    /// From the event's old row (`before`, with REPLICA IDENTITY FULL).
    Row(Value),
    /// From the stored document's `_source`.
    Stored(serde_json::Value),
}

/// What one event writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The external version of every action of the event.
    pub version: i64,
    /// The document of the old key of an update that changed the key: deleted first.
    pub delete_old: Option<DocRef>,
    /// The document written (`index`) or deleted.
    pub doc: DocRef,
    /// Index or delete.
    pub kind: Kind,
}

/// The action on [`Planned::doc`].
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// Index the row, with `fill` added. `missing` names unchanged columns that neither
    /// the row nor `before` has: they must be filled before the event is encoded.
    Index {
        /// Columns added to the row.
        fill: Vec<(Arc<str>, Filled)>,
        /// Columns still to fill.
        missing: Vec<Arc<str>>,
    },
    /// Delete the document.
    Delete,
}

impl Planned {
    /// How many bulk items the event takes (2 for a key change).
    pub fn items(&self) -> usize {
        1 + usize::from(self.delete_old.is_some())
    }

    /// Unchanged columns still to fill from the stored document.
    pub fn missing(&self) -> &[Arc<str>] {
        match &self.kind {
            Kind::Index { missing, .. } => missing,
            Kind::Delete => &[],
        }
    }

    /// Append this event's action lines (and document) to `body`. The event must be the
    /// one it was planned from, with nothing [`Planned::missing`].
    pub fn encode(&self, event: &Event, body: &mut Vec<u8>) {
        debug_assert!(self.missing().is_empty(), "fill unchanged columns first");
        if let Some(old) = &self.delete_old {
            action_line(body, "delete", old, self.version);
        }
        match &self.kind {
            Kind::Delete => action_line(body, "delete", &self.doc, self.version),
            Kind::Index { fill, .. } => {
                action_line(body, "index", &self.doc, self.version);
                document(body, event.after.as_ref(), fill);
                body.push(b'\n');
            }
        }
    }
}

/// Renders documents' indices and ids from the sink's templates.
#[derive(Clone, Debug)]
pub struct Encoder {
    index: Template,
    id: Template,
}

impl Encoder {
    /// An encoder rendering documents' index and id with these templates.
    pub fn new(index: Template, id: Template) -> Self {
        Encoder { index, id }
    }

    /// What `event` writes: `Ok(None)` for an event with nothing to write (an outbox row
    /// or logical message), `Err(reason)` when it cannot be written as it is (no key to
    /// render the id, an invalid index name, an LSN past the version range).
    pub fn plan(&self, event: &Event) -> Result<Option<Planned>, String> {
        let upsert = match event.op {
            // A backfill's row is placed after every change it saw: an upsert like the
            // others, and its version (its position) keeps any newer change.
            Op::Insert | Op::Update | Op::Read => true,
            Op::Delete => false,
            // Outbox rows and messages are not rows: nothing to index (a transform that
            // turns them into rows makes them inserts). Truncates are the sink's.
            Op::Event | Op::Truncate => return Ok(None),
        };
        let version = version::of(event).map_err(|e| e.to_string())?;
        let doc = self.doc(event, event.key.as_ref())?;
        if !upsert {
            return Ok(Some(Planned {
                version,
                delete_old: None,
                doc,
                kind: Kind::Delete,
            }));
        }
        let Some(after) = &event.after else {
            return Err(format!("an {} without a row (`after`)", event.op.as_str()));
        };
        let delete_old = match old_key(event) {
            Some(old) => Some(self.doc(event, Some(&old))?).filter(|old| *old != doc),
            None => None,
        };
        let mut fill = Vec::new();
        let mut missing = Vec::new();
        for column in &event.unchanged {
            if after.get(column).is_some() {
                continue;
            }
            match event.before.as_ref().and_then(|b| b.get(column)) {
                // REPLICA IDENTITY FULL: the old row has it, and it did not change.
                Some(value) => fill.push((column.clone(), Filled::Row(value.clone()))),
                None => missing.push(column.clone()),
            }
        }
        Ok(Some(Planned {
            version,
            delete_old,
            doc,
            kind: Kind::Index { fill, missing },
        }))
    }

    /// The document of `event` with key columns from `key`, checked the way Elasticsearch
    /// would check it.
    fn doc(&self, event: &Event, key: Option<&Row>) -> Result<DocRef, String> {
        let mut index = String::new();
        self.index
            .render_into(event, key, &mut index)
            .map_err(|e| format!("the `index` template `{}` cannot render: {e}", self.index))?;
        check_index(&index)?;
        let mut id = String::new();
        self.id
            .render_into(event, key, &mut id)
            .map_err(|e| format!("the `id` template `{}` cannot render: {e}", self.id))?;
        check_id(&id)?;
        Ok(DocRef { index, id })
    }

    /// The index a truncate of `event`'s table clears.
    pub fn truncate_index(&self, event: &Event) -> Result<String, String> {
        let mut index = String::new();
        self.index
            .render_into(event, None, &mut index)
            .map_err(|e| format!("the `index` template `{}` cannot render: {e}", self.index))?;
        check_index(&index)?;
        Ok(index)
    }
}

/// The old key of an update that changed its key: the key columns as `before` has them,
/// when they differ from the new key.
fn old_key(event: &Event) -> Option<Row> {
    if event.op != Op::Update {
        return None;
    }
    let (key, before) = (event.key.as_ref()?, event.before.as_ref()?);
    let mut old = Row(Vec::with_capacity(key.0.len()));
    for column in &key.0 {
        old.push(column.name.clone(), before.get(&column.name)?.clone());
    }
    (old != *key).then_some(old)
}

/// Elasticsearch's rules for index names, so a bad name fails its event here instead of
/// (for some names) the whole bulk request there.
fn check_index(index: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("index name `{index}` is invalid: {why}"));
    if index.is_empty() {
        return bad("it is empty");
    }
    if index == "." || index == ".." {
        return bad("it cannot be `.` or `..`");
    }
    if index.starts_with(['-', '_', '+']) {
        return bad("it cannot start with `-`, `_` or `+`");
    }
    if index.len() > MAX_INDEX_BYTES {
        return bad("it is longer than 255 bytes");
    }
    if let Some(c) = index.chars().find(|c| {
        matches!(
            c,
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':'
        )
    }) {
        return bad(&format!("it contains `{c}`"));
    }
    if index.chars().any(char::is_uppercase) {
        return bad("it must be lowercase");
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the document id renders empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!(
            "the document id is {} bytes, more than the {MAX_ID_BYTES} Elasticsearch accepts",
            id.len()
        ));
    }
    Ok(())
}

/// `{"<op>":{"_index":…,"_id":…,"version":…,"version_type":"external"}}\n`
fn action_line(body: &mut Vec<u8>, op: &str, doc: &DocRef, version: i64) {
    body.extend_from_slice(b"{\"");
    body.extend_from_slice(op.as_bytes());
    body.extend_from_slice(b"\":{\"_index\":");
    json_str(body, &doc.index);
    body.extend_from_slice(b",\"_id\":");
    json_str(body, &doc.id);
    let _ = write!(body, ",\"version\":{version}");
    body.extend_from_slice(b",\"version_type\":\"external\"}}\n");
}

/// The row as a JSON object, then the filled columns.
fn document(body: &mut Vec<u8>, row: Option<&Row>, fill: &[(Arc<str>, Filled)]) {
    match row {
        Some(row) => {
            serde_json::to_writer(&mut *body, row).expect("a row always encodes as JSON");
        }
        None => body.extend_from_slice(b"{}"),
    }
    if fill.is_empty() {
        return;
    }
    body.pop(); // the closing brace
    let mut first = body.last() == Some(&b'{');
    for (name, value) in fill {
        if !first {
            body.push(b',');
        }
        first = false;
        json_str(body, name);
        body.push(b':');
        let written = match value {
            Filled::Row(v) => serde_json::to_writer(&mut *body, v),
            Filled::Stored(v) => serde_json::to_writer(&mut *body, v),
        };
        written.expect("a value always encodes as JSON");
    }
    body.push(b'}');
}

fn json_str(body: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *body, text).expect("a string always encodes as JSON");
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value as Json};
    use sluice_runtime::{testing, Lsn};

    use super::*;

    fn encoder(index: &str, id: &str) -> Encoder {
        Encoder::new(
            Template::parse_with(index, TEMPLATE_RULES).unwrap(),
            Template::parse_with(id, TEMPLATE_RULES).unwrap(),
        )
    }

    fn change(op: Op, id: i64, lsn: u64) -> Event {
        let mut e = testing::event("orders", op, 0x9000, 0);
        e.source.lsn = Lsn(lsn);
        e.key = Some(testing::id_row(id));
        let mut row = testing::id_row(id);
        row.push("status".into(), Value::Text("paid \"now\"".into()));
        match op {
            Op::Delete => e.before = Some(testing::id_row(id)),
            _ => e.after = Some(row),
        }
        e
    }

    fn lines(body: &[u8]) -> Vec<Json> {
        std::str::from_utf8(body)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn encoded(encoder: &Encoder, event: &Event) -> Vec<Json> {
        let mut body = Vec::new();
        encoder
            .plan(event)
            .unwrap()
            .unwrap()
            .encode(event, &mut body);
        assert!(body.ends_with(b"\n"), "NDJSON ends every line");
        lines(&body)
    }

    #[test]
    fn an_upsert_is_an_index_action_with_the_row_and_an_external_version() {
        let e = change(Op::Insert, 42, 0x8F00);
        assert_eq!(
            encoded(&encoder("{table}", "{key}"), &e),
            [
                json!({"index": {"_index": "orders", "_id": "42", "version": 0x8F00,
                                 "version_type": "external"}}),
                json!({"id": 42, "status": "paid \"now\""}),
            ]
        );
    }

    #[test]
    fn a_delete_is_a_delete_action_by_key() {
        let e = change(Op::Delete, 42, 0x8F10);
        assert_eq!(
            encoded(&encoder("{schema}-{table}", "o{key}"), &e),
            [json!({"delete": {"_index": "public-orders", "_id": "o42",
                               "version": 0x8F10, "version_type": "external"}})]
        );
    }

    #[test]
    fn a_key_change_deletes_the_old_document_first() {
        let mut e = change(Op::Update, 2, 0x8F20);
        e.before = Some(testing::id_row(1));
        let planned = encoder("{table}", "{key}").plan(&e).unwrap().unwrap();
        assert_eq!(planned.items(), 2);
        let got = encoded(&encoder("{table}", "{key}"), &e);
        assert_eq!(got[0]["delete"]["_id"], "1");
        assert_eq!(got[0]["delete"]["version"], 0x8F20);
        assert_eq!(got[1]["index"]["_id"], "2");
        assert_eq!(got[2]["id"], 2);
        // The same key in `before` (REPLICA IDENTITY FULL) is no key change.
        e.before = e.after.clone();
        assert_eq!(encoded(&encoder("{table}", "{key}"), &e).len(), 2);
        // Neither is a new key that renders the same document.
        e.before = Some(testing::id_row(1));
        assert_eq!(encoded(&encoder("{table}", "fixed"), &e).len(), 2);
    }

    #[test]
    fn unchanged_columns_come_from_before_or_are_missing() {
        let mut e = change(Op::Update, 7, 0x8F30);
        e.unchanged = vec!["body".into(), "notes".into()];
        let mut before = testing::id_row(7);
        before.push("body".into(), Value::Text("long text".into()));
        e.before = Some(before);
        let mut planned = encoder("{table}", "{key}").plan(&e).unwrap().unwrap();
        assert_eq!(planned.missing(), [Arc::from("notes")]);
        let Kind::Index { fill, missing } = &mut planned.kind else {
            panic!()
        };
        missing.clear();
        fill.push(("notes".into(), Filled::Stored(json!({"k": [1]}))));
        let mut body = Vec::new();
        planned.encode(&e, &mut body);
        assert_eq!(
            lines(&body)[1],
            json!({"id": 7, "status": "paid \"now\"", "body": "long text", "notes": {"k": [1]}})
        );
    }

    #[test]
    fn events_that_cannot_be_written_say_why() {
        let enc = encoder("{table}", "{key}");
        let mut keyless = change(Op::Insert, 1, 0x10);
        keyless.key = None;
        let why = enc.plan(&keyless).unwrap_err();
        assert!(why.contains("needs the row's key"), "{why}");
        let mut far = change(Op::Insert, 1, 0x10);
        far.source.lsn = Lsn(u64::MAX);
        assert!(enc.plan(&far).unwrap_err().contains("does not fit"));
        let mut rowless = change(Op::Update, 1, 0x10);
        rowless.after = None;
        assert!(enc.plan(&rowless).unwrap_err().contains("without a row"));
        let upper = encoder("Orders", "{key}").plan(&change(Op::Insert, 1, 0x10));
        assert!(upper.unwrap_err().contains("lowercase"));
        let mut long = change(Op::Insert, 1, 0x10);
        long.key = Some({
            let mut k = Row::default();
            k.push("id".into(), Value::Text("x".repeat(600)));
            k
        });
        assert!(enc.plan(&long).unwrap_err().contains("512"));
        let message = testing::event("outbox", Op::Event, 0x10, 0);
        assert_eq!(enc.plan(&message), Ok(None), "messages are not indexed");
    }

    #[test]
    fn index_names_follow_elasticsearch_rules() {
        for ok in ["orders", "public-orders", "a.b_c+d", "ünicode"] {
            assert!(check_index(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "..", "_x", "-x", "+x", "a b", "a/b", "a:b", "a#b", "A", "a*",
        ] {
            assert!(check_index(bad).is_err(), "{bad}");
        }
        assert!(check_index(&"x".repeat(256)).is_err());
    }

    #[test]
    fn a_truncate_clears_the_tables_index() {
        let t = testing::event("orders", Op::Truncate, 0x10, 0);
        assert_eq!(
            encoder("{schema}-{table}", "{key}").truncate_index(&t),
            Ok("public-orders".into())
        );
    }
}
