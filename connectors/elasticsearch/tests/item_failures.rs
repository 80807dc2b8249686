//! Bulk items that fail while the rest of their request succeeds: a mapping error parks
//! only its event; a 429 on one item retries only that item; later events of a failed key
//! are deferred.

mod common;

use common::*;
use serde_json::json;
use sluice_runtime::{Delivery, Op, Value};
use sluice_testkit::elasticsearch::Elasticsearch;

#[tokio::test]
async fn a_mapping_error_parks_only_its_event_with_the_items_error() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    // The first value of `n` maps it as a long.
    let first = change(Op::Insert, 0x100, 1, &[("n", Value::Int(1))]);
    assert_eq!(names(&write(&mut sink, &[first]).await), ["delivered"]);
    assert_eq!(es.field_type("orders", "n"), Some("long"));

    let batch = [
        change(Op::Insert, 0x200, 2, &[("n", text("not a number"))]),
        change(Op::Insert, 0x210, 3, &[("n", Value::Int(3))]),
        change(Op::Update, 0x220, 1, &[("n", Value::Int(4))]),
    ];
    let answers = write(&mut sink, &batch).await;
    assert_eq!(names(&answers), ["rejected", "delivered", "delivered"]);
    let Delivery::Rejected { reason } = &answers[0] else {
        unreachable!()
    };
    assert!(
        reason.starts_with("document `orders/2`: HTTP 400 document_parsing_exception:")
            && reason.contains("failed to parse field [n] of type [long]")
            && reason.contains("For input string"),
        "{reason}"
    );
    assert_eq!(source(&es, 2), None);
    assert_eq!(source(&es, 3), Some(json!({"id": 3, "n": 3})));
    assert_eq!(source(&es, 1), Some(json!({"id": 1, "n": 4})));
    assert_eq!(es.requests("bulk"), 2, "one request for the whole batch");
}

#[tokio::test]
async fn a_429_on_one_item_retries_only_that_item() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    es.fail_doc("2", Some(1));
    let batch = [
        status(Op::Insert, 0x100, 1, "a"),
        status(Op::Insert, 0x110, 2, "b"),
        status(Op::Insert, 0x120, 3, "c"),
    ];
    let answers = write(&mut sink, &batch).await;
    assert_eq!(names(&answers), ["delivered", "retry", "delivered"]);
    let Delivery::Retry { reason, .. } = &answers[1] else {
        unreachable!()
    };
    assert!(
        reason.contains("HTTP 429 es_rejected_execution_exception"),
        "{reason}"
    );
    assert_eq!(source(&es, 2), None);

    // The engine resends what was not delivered: only that event.
    let again = write(&mut sink, &batch[1..2]).await;
    assert_eq!(names(&again), ["delivered"]);
    let bulks = es.bulks();
    assert_eq!(bulks.len(), 2);
    assert_eq!(bulks[1].len(), 1, "the second request carries the one item");
    assert_eq!(bulks[1][0].id, "2");
    assert_eq!(es.docs("orders").len(), 3);
}

#[tokio::test]
async fn later_events_of_a_failed_key_are_deferred_and_converge_when_resent() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    es.fail_items(
        std::sync::Arc::new(|a: &sluice_testkit::elasticsearch::BulkAction| {
            a.version == Some(0x100)
        }),
        Some(1),
    );
    let batch = [
        status(Op::Insert, 0x100, 1, "new"),
        status(Op::Update, 0x110, 1, "paid"),
        status(Op::Insert, 0x120, 2, "new"),
    ];
    let answers = write(&mut sink, &batch).await;
    // Elasticsearch applied 0x110 already, but the engine must resend it after 0x100.
    assert_eq!(names(&answers), ["retry", "deferred", "delivered"]);
    let again = write(&mut sink, &batch[..2]).await;
    assert_eq!(names(&again), ["delivered", "delivered"]);
    assert_eq!(version(&es, 1), Some(0x110), "the older write did not win");
    assert_eq!(source(&es, 1).unwrap()["status"], "paid");
}

#[tokio::test]
async fn an_event_elasticsearch_would_refuse_whole_fails_alone() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    let long_id = change(Op::Insert, 0x100, 1, &[]);
    let mut long_id = (*long_id).clone();
    let mut key = sluice_runtime::Row::default();
    key.push("id".into(), text(&"x".repeat(600)));
    long_id.key = Some(key);
    let batch = [
        std::sync::Arc::new(long_id),
        status(Op::Insert, 0x110, 2, "ok"),
    ];
    let answers = write(&mut sink, &batch).await;
    assert_eq!(names(&answers), ["rejected", "delivered"]);
    assert_eq!(source(&es, 2).unwrap()["status"], "ok");
}
