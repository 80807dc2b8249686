//! Updates with unchanged TOAST columns: never a document with the column missing.
//!
//! PostgreSQL does not send a large (TOASTed) value that an update left unchanged; the
//! envelope names it in `unchanged` and leaves it out of `after`. Indexing `after` as it
//! is would drop the column from the document, and the `update` action that would merge
//! it does not accept external versions. So the sink completes the row itself:
//!
//! 1. from `before`, when it has the column (REPLICA IDENTITY FULL): done while planning;
//! 2. else from an earlier event of the same batch that wrote the document;
//! 3. else from the stored document, read with one `_mget` per batch segment. If the stored
//!    version is already at or past the event's, the event is stale (a replay): delivered
//!    without a write. No stored document: the value is unknown, and the event is rejected
//!    with a reason that says how to get it (a backfill, or REPLICA IDENTITY FULL).
//!
//! The completed row is indexed with the event's external version like any other, so a
//! write still never regresses a newer one. Per-key order makes the read safe: only sluice
//! writes the document, and events of one key are written one batch after the other.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value as Json};
use sluice_runtime::{Delivery, Event, Row};

use crate::client::{Client, Stored};
use crate::encode::{DocRef, Filled, Kind, Planned};

/// One event of a segment on its way to a bulk request.
pub(crate) struct Entry<'a> {
    pub event: &'a Event,
    /// What it writes; `None` once it is answered without a write.
    pub planned: Option<Planned>,
    /// Its answer, once known.
    pub answer: Option<Delivery>,
}

impl<'a> Entry<'a> {
    /// An entry answered without a write.
    pub fn answered(event: &'a Event, answer: Delivery) -> Self {
        Entry {
            event,
            planned: None,
            answer: Some(answer),
        }
    }

    fn settle(&mut self, answer: Delivery) {
        self.planned = None;
        self.answer = Some(answer);
    }
}

/// What the batch knows of a document it reads.
enum Doc {
    Present {
        version: i64,
        source: Map<String, Json>,
    },
    Absent,
    Unreadable(String),
}

/// Fill every entry's missing columns, or answer it (stale: delivered; unknown: rejected;
/// the read failed: retry).
pub(crate) async fn fill(client: &Client, entries: &mut [Entry<'_>]) {
    let needs = |e: &Entry| e.planned.as_ref().is_some_and(|p| !p.missing().is_empty());
    if !entries.iter().any(needs) {
        return;
    }
    // Each document some entry needs, once, with every column any of them needs.
    let mut wanted: Vec<(DocRef, Vec<String>)> = Vec::new();
    let mut at: HashMap<DocRef, usize> = HashMap::new();
    for planned in entries
        .iter()
        .filter(|e| needs(e))
        .filter_map(|e| e.planned.as_ref())
    {
        let i = *at.entry(planned.doc.clone()).or_insert_with(|| {
            wanted.push((planned.doc.clone(), Vec::new()));
            wanted.len() - 1
        });
        for column in planned.missing() {
            if !wanted[i].1.iter().any(|c| **c == **column) {
                wanted[i].1.push(column.to_string());
            }
        }
    }
    let stored = match client.mget(&wanted).await {
        Ok(stored) => stored,
        Err(failed) => {
            for entry in entries.iter_mut().filter(|e| needs(e)) {
                entry.settle(failed.retry());
            }
            return;
        }
    };
    let mut docs: HashMap<DocRef, Doc> = wanted
        .into_iter()
        .zip(stored)
        .map(|((doc, _), stored)| {
            let state = match stored {
                Stored::Found { version, source } => Doc::Present { version, source },
                Stored::Missing => Doc::Absent,
                Stored::Error(reason) => Doc::Unreadable(reason),
            };
            (doc, state)
        })
        .collect();
    complete(entries, &mut docs);
}

/// Walk the segment in order: writes update what later events of the same document see.
fn complete(entries: &mut [Entry<'_>], docs: &mut HashMap<DocRef, Doc>) {
    for entry in entries.iter_mut() {
        let Some(planned) = entry.planned.as_mut() else {
            continue;
        };
        if planned.missing().is_empty() {
            follow(entry.event, planned, docs);
            continue;
        }
        match resolve(entry.event, planned, docs.get(&planned.doc)) {
            Ok(filled) => {
                if let Kind::Index { fill, missing } = &mut planned.kind {
                    fill.extend(filled);
                    missing.clear();
                }
                follow(entry.event, planned, docs);
            }
            Err(answer) => entry.settle(answer),
        }
    }
}

/// The values of the columns `planned` misses, or the event's answer without a write.
fn resolve(
    event: &Event,
    planned: &Planned,
    doc: Option<&Doc>,
) -> Result<Vec<(Arc<str>, Filled)>, Delivery> {
    let columns = planned
        .missing()
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let source = match doc {
        Some(Doc::Present { version, .. }) if *version >= planned.version => {
            // A replay: the document already holds this change or a newer one.
            return Err(Delivery::Delivered);
        }
        Some(Doc::Present { source, .. }) => source,
        Some(Doc::Unreadable(reason)) => {
            return Err(Delivery::retry(format!(
                "reading document `{}` to keep its unchanged columns {columns}: {reason}",
                planned.doc
            )))
        }
        Some(Doc::Absent) | None => {
            return Err(Delivery::rejected(format!(
                "the {} of `{}` left {columns} unchanged (TOAST), and document `{}` is not \
                 stored, so their values are unknown; backfill the table to this sink, or set \
                 REPLICA IDENTITY FULL on it so updates carry them",
                event.op.as_str(),
                table(event),
                planned.doc
            )))
        }
    };
    planned
        .missing()
        .iter()
        .map(|column| match source.get(&**column) {
            Some(value) => Ok((column.clone(), Filled::Stored(value.clone()))),
            None => Err(Delivery::rejected(format!(
                "the {} of `{}` left `{column}` unchanged (TOAST), and stored document `{}` \
                 has no `{column}` to keep; backfill the table to this sink, or set REPLICA \
                 IDENTITY FULL on it so updates carry it",
                event.op.as_str(),
                table(event),
                planned.doc
            ))),
        })
        .collect()
}

/// Record what `planned` leaves in the documents later events read.
fn follow(event: &Event, planned: &Planned, docs: &mut HashMap<DocRef, Doc>) {
    if let Some(old) = &planned.delete_old {
        if let Some(doc) = docs.get_mut(old) {
            *doc = Doc::Absent;
        }
    }
    let Some(doc) = docs.get_mut(&planned.doc) else {
        return;
    };
    *doc = match &planned.kind {
        Kind::Delete => Doc::Absent,
        Kind::Index { fill, .. } => Doc::Present {
            version: planned.version,
            source: source(event.after.as_ref(), fill),
        },
    };
}

/// The document an index action writes, as JSON.
fn source(row: Option<&Row>, fill: &[(Arc<str>, Filled)]) -> Map<String, Json> {
    let mut map = match row.map(serde_json::to_value) {
        Some(Ok(Json::Object(map))) => map,
        _ => Map::new(),
    };
    for (name, value) in fill {
        let value = match value {
            Filled::Row(v) => serde_json::to_value(v).unwrap_or(Json::Null),
            Filled::Stored(v) => v.clone(),
        };
        map.insert(name.to_string(), value);
    }
    map
}

fn table(event: &Event) -> String {
    format!(
        "{}.{}",
        event.source.schema.as_deref().unwrap_or(""),
        event.source.table.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_runtime::{testing, Lsn, Op, Value};

    use sluice_runtime::template::Template;

    use super::*;
    use crate::encode::{Encoder, TEMPLATE_RULES};

    /// An update of `orders` row `id` at `lsn` setting `status`, with `body` unchanged.
    fn toasted(id: i64, lsn: u64, status: &str) -> Event {
        let mut e = testing::event("orders", Op::Update, lsn, 0);
        e.source.lsn = Lsn(lsn);
        e.key = Some(testing::id_row(id));
        let mut row = testing::id_row(id);
        row.push("status".into(), Value::Text(status.into()));
        e.after = Some(row);
        e.unchanged = vec!["body".into()];
        e
    }

    fn full(id: i64, lsn: u64, body: &str) -> Event {
        let mut e = toasted(id, lsn, "new");
        e.unchanged.clear();
        e.after
            .as_mut()
            .unwrap()
            .push("body".into(), Value::Text(body.into()));
        e
    }

    fn plan_all(events: &[Event]) -> Vec<Entry<'_>> {
        let encoder = Encoder::new(
            Template::parse_with("{table}", TEMPLATE_RULES).unwrap(),
            Template::parse_with("{key}", TEMPLATE_RULES).unwrap(),
        );
        events
            .iter()
            .map(|event| Entry {
                event,
                planned: encoder.plan(event).unwrap(),
                answer: None,
            })
            .collect()
    }

    fn doc(id: &str) -> DocRef {
        DocRef {
            index: "orders".into(),
            id: id.into(),
        }
    }

    fn stored(version: i64, body: &str) -> Doc {
        let Json::Object(source) = json!({"body": body}) else {
            unreachable!()
        };
        Doc::Present { version, source }
    }

    fn filled(entry: &Entry) -> Vec<(Arc<str>, Filled)> {
        match &entry.planned.as_ref().unwrap().kind {
            Kind::Index { fill, missing } if missing.is_empty() => fill.clone(),
            other => panic!("not filled: {other:?}"),
        }
    }

    #[test]
    fn the_stored_value_fills_the_column() {
        let events = [toasted(1, 0x200, "paid")];
        let mut entries = plan_all(&events);
        let mut docs = HashMap::from([(doc("1"), stored(0x100, "kept"))]);
        complete(&mut entries, &mut docs);
        assert_eq!(
            filled(&entries[0]),
            [("body".into(), Filled::Stored(json!("kept")))]
        );
    }

    #[test]
    fn a_stored_version_at_or_past_the_events_makes_it_stale() {
        for version in [0x200, 0x300] {
            let events = [toasted(1, 0x200, "paid")];
            let mut entries = plan_all(&events);
            let mut docs = HashMap::from([(doc("1"), stored(version, "newer"))]);
            complete(&mut entries, &mut docs);
            assert!(entries[0].planned.is_none(), "nothing is written");
            assert_eq!(entries[0].answer, Some(Delivery::Delivered));
        }
    }

    #[test]
    fn no_stored_document_rejects_with_what_to_do() {
        let events = [toasted(1, 0x200, "paid")];
        let mut entries = plan_all(&events);
        let mut docs = HashMap::from([(doc("1"), Doc::Absent)]);
        complete(&mut entries, &mut docs);
        let Some(Delivery::Rejected { reason }) = &entries[0].answer else {
            panic!("{:?}", entries[0].answer)
        };
        assert!(
            reason.contains("`body` unchanged")
                && reason.contains("not stored")
                && reason.contains("REPLICA IDENTITY FULL")
                && reason.contains("backfill"),
            "{reason}"
        );
    }

    #[test]
    fn a_stored_document_without_the_column_rejects() {
        let events = [toasted(1, 0x200, "paid")];
        let mut entries = plan_all(&events);
        let Json::Object(source) = json!({"status": "x"}) else {
            unreachable!()
        };
        let mut docs = HashMap::from([(doc("1"), Doc::Present { version: 1, source })]);
        complete(&mut entries, &mut docs);
        assert!(
            matches!(&entries[0].answer, Some(Delivery::Rejected { reason }) if reason.contains("has no `body`"))
        );
    }

    #[test]
    fn an_earlier_write_in_the_batch_is_what_a_later_update_keeps() {
        // The stored body is "old"; the batch sets it to "fresh", then leaves it unchanged
        // twice, then deletes the row.
        let events = [
            full(1, 0x200, "fresh"),
            toasted(1, 0x300, "a"),
            toasted(1, 0x400, "b"),
        ];
        let mut entries = plan_all(&events);
        let mut docs = HashMap::from([(doc("1"), stored(0x100, "old"))]);
        complete(&mut entries, &mut docs);
        for entry in &entries[1..] {
            assert_eq!(
                filled(entry),
                [("body".into(), Filled::Stored(json!("fresh")))]
            );
        }
        let mut delete = testing::event("orders", Op::Delete, 0x500, 0);
        delete.source.lsn = Lsn(0x500);
        delete.key = Some(testing::id_row(1));
        let later = [delete, toasted(1, 0x600, "c")];
        let mut later_entries = plan_all(&later);
        complete(&mut later_entries, &mut docs);
        assert!(matches!(
            &later_entries[1].answer,
            Some(Delivery::Rejected { .. })
        ));
    }

    #[test]
    fn an_unreadable_document_is_retried() {
        let events = [toasted(1, 0x200, "paid")];
        let mut entries = plan_all(&events);
        let mut docs = HashMap::from([(doc("1"), Doc::Unreadable("shard down".into()))]);
        complete(&mut entries, &mut docs);
        assert!(
            matches!(&entries[0].answer, Some(Delivery::Retry { reason, .. }) if reason.contains("shard down"))
        );
    }
}
