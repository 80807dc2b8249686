//! Updates that leave TOASTed columns unchanged (absent from `after`): the document keeps
//! the stored value, never loses the column, never regresses; with nothing stored the
//! event is rejected with what to do.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use sluice_runtime::{Delivery, Event, Op, Value};
use sluice_testkit::elasticsearch::Elasticsearch;

/// An update of `orders` row `id` setting `status` and leaving `body` unchanged.
fn toasted(lsn: u64, id: i64, status: &str) -> Arc<Event> {
    let mut e = (*common::status(Op::Update, lsn, id, status)).clone();
    e.unchanged = vec!["body".into()];
    Arc::new(e)
}

/// An insert or update of `orders` row `id` with `status` and `body`.
fn full(op: Op, lsn: u64, id: i64, status: &str, body: &str) -> Arc<Event> {
    change(
        op,
        lsn,
        id,
        &[("status", text(status)), ("body", text(body))],
    )
}

#[tokio::test]
async fn an_unchanged_column_keeps_its_stored_value() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    let long = "x".repeat(10_000);
    write(&mut sink, &[full(Op::Insert, 0x100, 1, "new", &long)]).await;
    let answers = write(&mut sink, &[toasted(0x200, 1, "paid")]).await;
    assert_eq!(names(&answers), ["delivered"]);
    assert_eq!(
        source(&es, 1),
        Some(json!({"id": 1, "status": "paid", "body": long}))
    );
    assert_eq!(version(&es, 1), Some(0x200));
    assert_eq!(es.requests("mget"), 1);
}

#[tokio::test]
async fn a_value_written_earlier_in_the_batch_is_the_one_kept() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    write(&mut sink, &[full(Op::Insert, 0x100, 1, "new", "old body")]).await;
    let batch = [
        full(Op::Update, 0x200, 1, "edited", "new body"),
        toasted(0x210, 1, "paid"),
        toasted(0x220, 1, "shipped"),
    ];
    assert!(write(&mut sink, &batch)
        .await
        .iter()
        .all(Delivery::is_delivered));
    assert_eq!(
        source(&es, 1),
        Some(json!({"id": 1, "status": "shipped", "body": "new body"}))
    );
    // The first write of the batch is not stored yet when the batch is read: the stored
    // "old body" must not come back.
    for action in es.bulks().last().unwrap().iter().skip(1) {
        assert_eq!(action.source.as_ref().unwrap()["body"], "new body");
    }
}

#[tokio::test]
async fn with_nothing_stored_the_update_is_rejected_with_what_to_do() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    let answers = write(
        &mut sink,
        &[
            toasted(0x200, 1, "paid"),
            full(Op::Insert, 0x210, 2, "new", "b"),
        ],
    )
    .await;
    assert_eq!(names(&answers), ["rejected", "delivered"]);
    let Delivery::Rejected { reason } = &answers[0] else {
        unreachable!()
    };
    assert!(
        reason.contains("left `body` unchanged")
            && reason.contains("`orders/1` is not stored")
            && reason.contains("backfill")
            && reason.contains("REPLICA IDENTITY FULL"),
        "{reason}"
    );
    assert_eq!(source(&es, 1), None, "no document without its column");
}

#[tokio::test]
async fn a_stale_update_is_delivered_without_a_write() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    write(&mut sink, &[full(Op::Insert, 0x300, 1, "newest", "b")]).await;
    let writes = es.applied().len();
    let answers = write(&mut sink, &[toasted(0x200, 1, "older")]).await;
    assert_eq!(names(&answers), ["delivered"]);
    assert_eq!(es.applied().len(), writes);
    assert_eq!(es.requests("bulk"), 1, "nothing to send");
    assert_eq!(source(&es, 1).unwrap()["status"], "newest");
}

#[tokio::test]
async fn replica_identity_full_fills_from_before_without_reading() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    let mut e = (*toasted(0x200, 1, "paid")).clone();
    let mut before = id_row(1);
    before.push("status".into(), text("new"));
    before.push("body".into(), text("from before"));
    e.before = Some(before);
    let answers = write(&mut sink, &[Arc::new(e)]).await;
    assert_eq!(names(&answers), ["delivered"]);
    assert_eq!(es.requests("mget"), 0);
    assert_eq!(
        source(&es, 1),
        Some(json!({"id": 1, "status": "paid", "body": "from before"}))
    );
}

/// A long history of one row, cut into batches in many ways and replayed out of order:
/// after every write the document is exactly the row as of its version, `body` is never
/// missing, and the version never goes down.
#[tokio::test]
async fn never_regress_never_drop_an_unchanged_column() {
    // The row's history: every third update sets `body`, the others leave it unchanged.
    let mut history: Vec<(Arc<Event>, serde_json::Value)> = Vec::new();
    let mut body = String::from("body 0");
    history.push((
        full(Op::Insert, 0x100, 1, "s0", &body),
        json!({"id": 1, "status": "s0", "body": body}),
    ));
    for n in 1..30u64 {
        let lsn = 0x100 + n * 0x10;
        let status = format!("s{n}");
        let event = if n % 3 == 0 {
            body = format!("body {n}");
            full(Op::Update, lsn, 1, &status, &body)
        } else {
            toasted(lsn, 1, &status)
        };
        history.push((event, json!({"id": 1, "status": status, "body": body})));
    }
    let truth = |version: i64| {
        history
            .iter()
            .find(|(e, _)| e.source.lsn.0 as i64 == version)
            .map(|(_, row)| row.clone())
            .expect("a version of the history")
    };

    for cut in [1, 2, 5, 7, 30] {
        let es = Elasticsearch::start().await;
        let mut sink = sink(&es);
        let mut highest = 0;
        let events: Vec<Arc<Event>> = history.iter().map(|(e, _)| e.clone()).collect();
        for (i, batch) in events.chunks(cut).enumerate() {
            let answers = write(&mut sink, batch).await;
            assert!(
                answers.iter().all(Delivery::is_delivered),
                "cut {cut}: {answers:?}"
            );
            // Replay something older after each batch (a restart, a late duplicate).
            let replay = &events[..(i * cut).min(events.len()).max(1)];
            let replay = &replay[replay.len().saturating_sub(4)..];
            let answers = write(&mut sink, replay).await;
            assert!(
                answers.iter().all(Delivery::is_delivered),
                "cut {cut}: {answers:?}"
            );
            let doc = es.doc("orders", "1").expect("the row is stored");
            assert!(doc.version >= highest, "cut {cut}: the version went down");
            highest = doc.version;
            assert_eq!(
                doc.source,
                truth(doc.version),
                "cut {cut}: the document is the row as of its version"
            );
        }
        assert_eq!(highest, 0x100 + 29 * 0x10);
    }
}

#[tokio::test]
async fn a_failed_read_retries_the_events_that_need_it() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    write(&mut sink, &[full(Op::Insert, 0x100, 1, "new", "b")]).await;
    es.fail_requests(503, None, Some(1));
    let answers = write(
        &mut sink,
        &[
            toasted(0x200, 1, "paid"),
            full(Op::Insert, 0x210, 2, "new", "c"),
        ],
    )
    .await;
    assert_eq!(names(&answers)[0], "retry");
    let Delivery::Retry { reason, .. } = &answers[0] else {
        unreachable!()
    };
    assert!(
        reason.contains("mget") && reason.contains("503"),
        "{reason}"
    );
    assert_eq!(names(&answers)[1], "delivered", "other rows go on");
    let _ = Value::Null;
}
