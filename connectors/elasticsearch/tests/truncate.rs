//! TRUNCATE: `on_truncate: delete_all` deletes every document of the table's index,
//! after what came before it and before what comes after; `ignore` keeps them.

mod common;

use common::*;
use sluice_elasticsearch::{ElasticsearchSink, OnTruncate};
use sluice_runtime::{Delivery, Op};
use sluice_testkit::elasticsearch::Elasticsearch;

fn delete_all(es: &Elasticsearch) -> ElasticsearchSink {
    let mut config = config(es);
    config.on_truncate = OnTruncate::DeleteAll;
    ElasticsearchSink::new(config).unwrap()
}

#[tokio::test]
async fn delete_all_empties_the_tables_index_between_its_neighbours() {
    let es = Elasticsearch::start().await;
    let mut sink = delete_all(&es);
    // Written and truncated in one batch: not yet searchable, so the sink must refresh.
    let batch = [
        status(Op::Insert, 0x100, 1, "a"),
        status(Op::Insert, 0x110, 2, "b"),
        change_of("customers", Op::Insert, 0x120, 7, &[("name", text("ann"))]),
        truncate("orders", 0x130),
        status(Op::Insert, 0x140, 3, "c"),
        status(Op::Insert, 0x150, 1, "again"),
    ];
    let answers = write(&mut sink, &batch).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");
    let ids: Vec<String> = es.docs("orders").into_keys().collect();
    assert_eq!(ids, ["1", "3"], "only what came after the truncate");
    assert_eq!(source(&es, 1).unwrap()["status"], "again");
    assert_eq!(es.docs("customers").len(), 1, "other tables keep theirs");
    let truncates: Vec<_> = es
        .applied()
        .into_iter()
        .filter(|a| a.action == "delete_by_query")
        .collect();
    assert_eq!(truncates.len(), 1);
    assert_eq!(truncates[0].index, "orders");
    assert_eq!(
        truncates[0].opaque_id.as_deref(),
        Some(format!("sluice truncate {}", batch[3].id()).as_str()),
        "the cluster's task list names the event"
    );
}

#[tokio::test]
async fn ignore_keeps_the_documents() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    let batch = [status(Op::Insert, 0x100, 1, "a"), truncate("orders", 0x110)];
    let answers = write(&mut sink, &batch).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");
    assert_eq!(es.docs("orders").len(), 1);
    assert_eq!(es.requests("delete_by_query"), 0);
}

#[tokio::test]
async fn a_truncate_of_a_table_never_indexed_has_nothing_to_delete() {
    let es = Elasticsearch::start().await;
    let mut sink = delete_all(&es);
    let answers = write(&mut sink, &[truncate("orders", 0x100)]).await;
    assert_eq!(names(&answers), ["delivered"]);
}

#[tokio::test]
async fn a_failed_truncate_holds_back_what_follows() {
    let es = Elasticsearch::start().await;
    let mut sink = delete_all(&es);
    write(&mut sink, &[status(Op::Insert, 0x100, 1, "a")]).await;
    let batch = [
        status(Op::Insert, 0x110, 2, "b"),
        truncate("orders", 0x120),
        status(Op::Insert, 0x130, 3, "c"),
    ];
    es.fail_requests(503, None, Some(1));
    // The bulk of the first segment takes the one failure: nothing after it is sent.
    let answers = write(&mut sink, &batch).await;
    assert_eq!(names(&answers), ["retry", "deferred", "deferred"]);
    assert_eq!(es.requests("delete_by_query"), 0);

    // Now the truncate itself fails.
    let answers = write(&mut sink, &batch[..1]).await;
    assert_eq!(names(&answers), ["delivered"]);
    es.fail_requests(503, None, Some(1));
    let answers = write(&mut sink, &batch[1..]).await;
    assert_eq!(names(&answers), ["retry", "deferred"]);
    assert_eq!(source(&es, 3), None, "nothing past the barrier");

    let answers = write(&mut sink, &batch[1..]).await;
    assert_eq!(names(&answers), ["delivered", "delivered"]);
    let ids: Vec<String> = es.docs("orders").into_keys().collect();
    assert_eq!(ids, ["3"]);
}
