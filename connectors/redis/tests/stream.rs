//! Stream mode against a real redis-server: entry ids from positions, replays refused and
//! counted delivered, templated stream names, approximate MAXLEN trimming.

mod common;

use std::sync::Arc;

use common::{entries, item, row, write};
use serde_json::json;
use sluice_runtime::{testing, Delivery, Event, Message, Op, Value};
use sluice_testkit::redis::Redis;

fn outbox(lsn: u64, index: u32, kind: &str) -> Arc<Event> {
    let mut e = testing::event("outbox", Op::Event, lsn, index);
    e.key = Some(row(&[("aggregate_id", Value::Text("42".into()))]));
    e.message = Some(Message {
        id: Value::Int(index.into()),
        kind: Value::Text(kind.into()),
        aggregate_type: Value::Text("order".into()),
        aggregate_id: Value::Text("42".into()),
        payload: Value::json(r#"{"total": "19.90"}"#).unwrap(),
        headers: Value::Null,
    });
    Arc::new(e)
}

#[tokio::test]
async fn entries_carry_the_envelope_under_an_id_from_the_position() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let mut sink = common::sink(&redis, json!({ "mode": "stream" }));
    let mut fanned = (*item(Op::Update, 0x2000, 3, 1, 2)).clone();
    fanned.fanout = 2;
    let batch = vec![
        item(Op::Insert, 0x1000, 0, 1, 1),
        Arc::new(testing::event("items", Op::Truncate, 0x1000, 1)),
        item(Op::Update, 0x2000, 3, 1, 2),
        Arc::new(fanned),
    ];
    assert_eq!(write(&mut sink, &batch).await, ["delivered"; 4]);
    let got = entries(&mut conn, "public.items").await;
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["4096-0", "4096-65536", "8192-196608", "8192-196610"]);
    for ((_, fields), event) in got.iter().zip(&batch) {
        assert_eq!(fields.len(), 1, "{fields:?}");
        assert_eq!(
            fields["event"].as_bytes(),
            &event.json()[..],
            "the envelope, byte for byte"
        );
    }
}

#[tokio::test]
async fn a_replay_is_refused_by_redis_and_counted_delivered() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let mut sink = common::sink(&redis, json!({ "mode": "stream" }));
    let batch: Vec<_> = (0..5)
        .map(|i| item(Op::Insert, 0x1000, i, i.into(), 0))
        .collect();
    assert_eq!(write(&mut sink, &batch).await, ["delivered"; 5]);
    let once = entries(&mut conn, "public.items").await;
    // The whole batch again, then a late part of it after newer events.
    assert_eq!(write(&mut sink, &batch).await, ["delivered"; 5]);
    let newer = item(Op::Update, 0x3000, 0, 1, 1);
    assert_eq!(write(&mut sink, &[newer]).await, ["delivered"]);
    assert_eq!(write(&mut sink, &batch[1..3]).await, ["delivered"; 2]);
    let now = entries(&mut conn, "public.items").await;
    assert_eq!(now.len(), 6, "one entry per event");
    assert_eq!(now[..5], once[..]);
}

#[tokio::test]
async fn stream_names_are_templates() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let mut by_type = common::sink(
        &redis,
        json!({ "mode": "stream", "stream": "events.{event.type}" }),
    );
    let batch = [
        outbox(0x1000, 0, "OrderPaid"),
        outbox(0x1000, 1, "OrderShipped"),
        outbox(0x1000, 2, "OrderPaid"),
    ];
    assert_eq!(write(&mut by_type, &batch).await, ["delivered"; 3]);
    assert_eq!(entries(&mut conn, "events.OrderPaid").await.len(), 2);
    assert_eq!(entries(&mut conn, "events.OrderShipped").await.len(), 1);
    // A row change has no event type: that one event is rejected, with the reason.
    let answers = common::answers(&mut by_type, &[item(Op::Insert, 0x2000, 0, 1, 1)]).await;
    match &answers[0] {
        Delivery::Rejected { reason } => assert!(reason.contains("op: event"), "{reason}"),
        other => panic!("expected a rejection, got {other:?}"),
    }

    let mut by_table = common::sink(
        &redis,
        json!({ "mode": "stream", "stream": "{pipeline}:{table}" }),
    );
    let mut other = (*item(Op::Insert, 0x3000, 1, 1, 1)).clone();
    other.source.table = Some("other".into());
    assert_eq!(
        write(
            &mut by_table,
            &[item(Op::Insert, 0x3000, 0, 1, 1), Arc::new(other)]
        )
        .await,
        ["delivered"; 2]
    );
    assert_eq!(entries(&mut conn, "p:items").await.len(), 1);
    assert_eq!(entries(&mut conn, "p:other").await.len(), 1);
}

#[tokio::test]
async fn maxlen_trims_each_stream_approximately() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let mut sink = common::sink(&redis, json!({ "mode": "stream", "maxlen": 10 }));
    for tx in 0..10u64 {
        let batch: Vec<_> = (0..100)
            .map(|i| item(Op::Insert, 0x1000 + tx * 0x100, i, i.into(), 0))
            .collect();
        assert!(write(&mut sink, &batch)
            .await
            .iter()
            .all(|a| *a == "delivered"));
    }
    let got = entries(&mut conn, "public.items").await;
    // Redis trims whole nodes (100 entries by default): at least 10 stay, far fewer than 1000.
    assert!((10..=110).contains(&got.len()), "{} entries", got.len());
    assert_eq!(
        got.last().unwrap().0,
        format!("{}-{}", 0x1000 + 9 * 0x100, 99 << 16)
    );
}

#[tokio::test]
async fn a_stream_key_of_another_type_rejects_its_events() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let _: () = redis::cmd("SET")
        .arg("public.items")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut sink = common::sink(&redis, json!({ "mode": "stream" }));
    let answers = common::answers(
        &mut sink,
        &[item(Op::Insert, 0x1000, 0, 1, 1), outbox(0x1000, 1, "T")],
    )
    .await;
    match &answers[0] {
        Delivery::Rejected { reason } => {
            assert!(
                reason.contains("WRONGTYPE") && reason.contains("public.items"),
                "{reason}"
            )
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        answers[1],
        Delivery::Delivered,
        "the outbox stream is another stream"
    );
}
