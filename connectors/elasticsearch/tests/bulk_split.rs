//! Batches larger than `bulk.max_events` or `bulk.max_bytes` go out as several bulk
//! requests, in order; a request the cluster refuses whole stops the rest of its segment.

mod common;

use std::sync::Arc;

use common::*;
use sluice_elasticsearch::config::ByteSize;
use sluice_elasticsearch::ElasticsearchSink;
use sluice_runtime::{Delivery, Event, Op};
use sluice_testkit::elasticsearch::{Elasticsearch, Settings};

/// `n` inserts of distinct rows, each with a 1 KB note, then updates of the first rows.
fn events(n: i64) -> Vec<Arc<Event>> {
    let note = "n".repeat(1000);
    let mut out: Vec<Arc<Event>> = (0..n)
        .map(|i| {
            change(
                Op::Insert,
                0x1000 + i as u64 * 0x10,
                i,
                &[("note", text(&note))],
            )
        })
        .collect();
    for i in 0..3 {
        out.push(status(Op::Update, 0x9000 + i as u64 * 0x10, i, "updated"));
    }
    out
}

/// The ids of every bulk request's actions, request by request.
fn requests(es: &Elasticsearch) -> Vec<Vec<String>> {
    es.bulks()
        .iter()
        .map(|b| b.iter().map(|a| a.id.clone()).collect())
        .collect()
}

#[tokio::test]
async fn max_events_cuts_requests_in_batch_order() {
    let es = Elasticsearch::start().await;
    let mut config = config(&es);
    config.bulk.max_events = 4;
    let mut sink = ElasticsearchSink::new(config).unwrap();
    let batch = events(7);
    assert!(write(&mut sink, &batch)
        .await
        .iter()
        .all(Delivery::is_delivered));
    let sent = requests(&es);
    assert_eq!(sent.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
    let flat: Vec<String> = sent.concat();
    assert_eq!(flat, ["0", "1", "2", "3", "4", "5", "6", "0", "1", "2"]);
    for i in 0..3 {
        assert_eq!(
            source(&es, i).unwrap()["status"],
            "updated",
            "updates applied after inserts"
        );
    }
}

#[tokio::test]
async fn max_bytes_cuts_requests_in_batch_order() {
    let es = Elasticsearch::start().await;
    let mut config = config(&es);
    // Each insert is about 1.1 KB on the wire: three fit, a fourth does not.
    config.bulk.max_bytes = ByteSize(3500);
    let mut sink = ElasticsearchSink::new(config).unwrap();
    let batch = events(7);
    assert!(write(&mut sink, &batch)
        .await
        .iter()
        .all(Delivery::is_delivered));
    let sent = requests(&es);
    assert_eq!(sent.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 4]);
    assert_eq!(
        sent.concat(),
        ["0", "1", "2", "3", "4", "5", "6", "0", "1", "2"]
    );
    assert_eq!(es.docs("orders").len(), 7);
}

#[tokio::test]
async fn a_request_refused_whole_stops_the_rest_of_its_segment() {
    let es = Elasticsearch::start().await;
    let mut config = config(&es);
    config.bulk.max_events = 4;
    let mut sink = ElasticsearchSink::new(config).unwrap();
    let batch = events(7);
    es.fail_requests(503, None, Some(1));
    let answers = write(&mut sink, &batch).await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Delivery::Retry { .. } | Delivery::Deferred)),
        "{answers:?}"
    );
    assert_eq!(es.requests("bulk"), 1, "the later requests were not sent");
    assert!(write(&mut sink, &batch)
        .await
        .iter()
        .all(Delivery::is_delivered));
    assert_eq!(es.docs("orders").len(), 7);
}

#[tokio::test]
async fn an_event_larger_than_the_cluster_accepts_is_rejected_alone() {
    let es = Elasticsearch::start_with(Settings {
        max_content_length: 4000,
        ..Settings::default()
    })
    .await;
    let mut config = config(&es);
    config.bulk.max_bytes = ByteSize(3500);
    let mut sink = ElasticsearchSink::new(config).unwrap();
    let huge = change(Op::Insert, 0x100, 1, &[("note", text(&"h".repeat(5000)))]);
    let batch = [
        status(Op::Insert, 0x90, 0, "before"),
        huge,
        status(Op::Insert, 0x110, 2, "after"),
    ];
    let answers = write(&mut sink, &batch).await;
    assert_eq!(names(&answers), ["delivered", "rejected", "delivered"]);
    let Delivery::Rejected { reason } = &answers[1] else {
        unreachable!()
    };
    assert!(
        reason.contains("413") && reason.contains("bulk.max_bytes"),
        "{reason}"
    );
    assert_eq!(es.docs("orders").len(), 2);
}
