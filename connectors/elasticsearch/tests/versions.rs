//! Replays and late events against external versions: nothing they send can overwrite a
//! newer document; tombstones refuse older writes for `gc_deletes`; key changes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_runtime::{Delivery, Lsn, Op, Value};
use sluice_testkit::elasticsearch::Elasticsearch;

#[tokio::test]
async fn replaying_the_same_events_changes_nothing() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    let batch = vec![
        status(Op::Insert, 0x100, 1, "new"),
        status(Op::Insert, 0x110, 2, "new"),
        status(Op::Update, 0x120, 1, "paid"),
        change(Op::Delete, 0x130, 2, &[]),
    ];
    assert!(write(&mut sink, &batch)
        .await
        .iter()
        .all(Delivery::is_delivered));
    let docs = es.docs("orders");
    let writes = es.applied().len();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs["1"].version, 0x120);
    assert_eq!(docs["1"].source, json!({"id": 1, "status": "paid"}));

    let again = write(&mut sink, &batch).await;
    assert!(again.iter().all(Delivery::is_delivered), "{again:?}");
    assert_eq!(es.docs("orders"), docs, "a replay changes nothing");
    assert_eq!(es.applied().len(), writes, "and writes nothing");
}

#[tokio::test]
async fn an_older_event_after_a_newer_one_is_delivered_and_the_document_stays_newer() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    let newer = status(Op::Update, 0x300, 1, "shipped");
    let older = status(Op::Update, 0x200, 1, "paid");
    assert_eq!(names(&write(&mut sink, &[newer]).await), ["delivered"]);
    assert_eq!(
        names(&write(&mut sink, &[older]).await),
        ["delivered"],
        "a 409 version conflict is a delivery"
    );
    assert_eq!(version(&es, 1), Some(0x300));
    assert_eq!(source(&es, 1).unwrap()["status"], "shipped");
}

#[tokio::test]
async fn a_delete_tombstone_refuses_an_older_write_until_gc_deletes_expires() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    let insert = status(Op::Insert, 0x100, 1, "new");
    let delete = change(Op::Delete, 0x200, 1, &[]);
    assert!(write(&mut sink, &[insert.clone(), delete])
        .await
        .iter()
        .all(Delivery::is_delivered));
    assert_eq!(source(&es, 1), None);

    // A late replay of the insert: the tombstone (version 0x200) refuses it.
    assert_eq!(
        names(&write(&mut sink, std::slice::from_ref(&insert)).await),
        ["delivered"]
    );
    assert_eq!(source(&es, 1), None, "the deleted row stays deleted");

    // Elasticsearch forgets tombstones after index.gc_deletes (60 s): then the same late
    // replay brings the row back. The README states this limit.
    es.advance(Duration::from_secs(61));
    assert_eq!(names(&write(&mut sink, &[insert]).await), ["delivered"]);
    assert_eq!(version(&es, 1), Some(0x100));
}

#[tokio::test]
async fn a_key_change_deletes_the_old_document_then_indexes_the_new_one() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    let insert = status(Op::Insert, 0x100, 1, "new");
    // UPDATE orders SET id = 2 WHERE id = 1: `before` has the old key, `key` the new.
    let mut moved = (*status(Op::Update, 0x200, 2, "moved")).clone();
    moved.before = Some(id_row(1));
    let moved = std::sync::Arc::new(moved);
    let batch = [insert.clone(), moved];
    assert!(write(&mut sink, &batch)
        .await
        .iter()
        .all(Delivery::is_delivered));
    assert_eq!(source(&es, 1), None, "the old key's document is gone");
    assert_eq!(source(&es, 2).unwrap()["status"], "moved");
    let applied: Vec<_> = es
        .applied()
        .iter()
        .map(|a| (a.action.clone(), a.id.clone().unwrap(), a.version.unwrap()))
        .collect();
    assert_eq!(
        applied,
        [
            ("index".to_string(), "1".to_string(), 0x100),
            ("delete".to_string(), "1".to_string(), 0x200),
            ("index".to_string(), "2".to_string(), 0x200),
        ],
        "delete the old document first, at the change's version"
    );
    // Replaying the whole batch leaves it so: the old insert meets the tombstone.
    assert!(write(&mut sink, &batch)
        .await
        .iter()
        .all(Delivery::is_delivered));
    assert_eq!(source(&es, 1), None);
    assert_eq!(es.applied().len(), 3);
}

#[tokio::test]
async fn an_lsn_past_a_signed_64_bit_version_is_rejected_not_wrapped() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    let mut far = (*status(Op::Insert, 0x100, 1, "new")).clone();
    far.source.lsn = Lsn(1 << 63);
    let answers = write(&mut sink, &[std::sync::Arc::new(far)]).await;
    let Delivery::Rejected { reason } = &answers[0] else {
        panic!("{answers:?}")
    };
    assert!(reason.contains("does not fit"), "{reason}");
    assert_eq!(es.requests("bulk"), 0, "nothing was sent");
}

#[tokio::test]
async fn outbox_events_are_delivered_without_a_write() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    let mut message = (*change_of("outbox", Op::Event, 0x100, 1, &[])).clone();
    message.key = None;
    message.after = None;
    message.message = Some(sluice_runtime::Message {
        id: Value::Text("m1".into()),
        kind: Value::Text("OrderPaid".into()),
        aggregate_type: Value::Text("order".into()),
        aggregate_id: Value::Text("1".into()),
        payload: Value::json("{}").unwrap(),
        headers: Value::Null,
    });
    let batch = [
        std::sync::Arc::new(message),
        status(Op::Insert, 0x110, 1, "new"),
    ];
    assert_eq!(
        names(&write(&mut sink, &batch).await),
        ["delivered", "delivered"]
    );
    assert_eq!(es.indices(), ["orders"], "the message made no document");
}
