//! Redis killed and started again: while it is down every event is answered `Retry`
//! (never rejected, never delivered); once it is back everything is applied, under the
//! sink alone and under the engine's driver with a kill in the middle of the stream.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{doc, item, write};
use serde_json::json;
use sluice_runtime::config::DeliveryConfig;
use sluice_runtime::journal::Entry;
use sluice_runtime::state::{SqliteStore, Store};
use sluice_runtime::{testing, Delivery, Event, Lsn, Op};
use sluice_testkit::redis::Redis;

#[tokio::test]
async fn retries_while_down_then_catches_up() {
    let mut redis = Redis::start_persistent();
    let mut sink = common::sink(&redis, json!({ "timeout": "2s" }));
    let first: Vec<_> = (0..3)
        .map(|i| item(Op::Insert, 0x100, i, i.into(), 1))
        .collect();
    assert_eq!(write(&mut sink, &first).await, ["delivered"; 3]);

    redis.stop();
    let second: Vec<_> = (0..3)
        .map(|i| item(Op::Update, 0x200, i, i.into(), 2))
        .collect();
    for _ in 0..2 {
        for answer in common::answers(&mut sink, &second).await {
            match answer {
                Delivery::Retry { reason, .. } => {
                    assert!(
                        reason.contains(&format!("127.0.0.1:{}", redis.port)),
                        "{reason}"
                    )
                }
                other => panic!("expected a retry while redis is down, got {other:?}"),
            }
        }
    }

    redis.start_again();
    // The first batch after the restart goes through: the dead connection is replaced.
    assert_eq!(write(&mut sink, &second).await, ["delivered"; 3]);
    let mut conn = common::connect(&redis).await;
    for id in 0..3 {
        let d = doc(&mut conn, &format!("items:{id}")).await.unwrap();
        assert_eq!(d["n"], 2, "row {id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_in_the_middle_of_a_stream_loses_nothing() {
    let mut redis = Redis::start_persistent();
    let sink = common::boxed(common::sink(
        &redis,
        json!({ "format": "hash", "timeout": "1s" }),
    ));

    // 40 keys, 50 changes each, interleaved, in transactions of 100 changes.
    let mut events: Vec<Arc<Event>> = Vec::new();
    for round in 0..50i64 {
        for key in 0..40i64 {
            let n = events.len() as u64;
            let op = if round == 0 { Op::Insert } else { Op::Update };
            events.push(item(
                op,
                0x1000 + (n / 100) * 0x100,
                (n % 100) as u32,
                key,
                round,
            ));
        }
    }
    let mut entries = Vec::new();
    for chunk in events.chunks(100) {
        entries.extend(chunk.iter().map(|e| Entry::event((**e).clone())));
        entries.push(Entry::Commit {
            commit_lsn: chunk[0].position.commit_lsn,
            end_lsn: Lsn(chunk[0].position.commit_lsn.0 + 0x80),
        });
    }
    // Ten transactions now, ten more once redis is down.
    let later = entries.split_off(entries.len() / 2);

    let mut delivery = DeliveryConfig::default();
    delivery.batch.max_events = 25;
    delivery.batch.max_wait = Duration::ZERO;
    delivery.retry.initial = Duration::from_millis(10);
    delivery.retry.max = Duration::from_millis(50);
    delivery.retry.max_elapsed = Duration::from_secs(120);
    let store = Store::new(SqliteStore::in_memory());
    let (driver, journal, progress) = testing::driver(sink, delivery, &store);
    let mut conn = common::connect(&redis).await;
    journal.append(entries).await;
    let task = tokio::spawn(async move {
        let mut driver = driver;
        driver.run().await
    });

    // Kill it once some rows are there, feed the rest while it is down, bring it back.
    sluice_testkit::eventually(Duration::from_secs(30), "the first rows", async || {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("items:*")
            .query_async(&mut conn)
            .await
            .ok()?;
        (!keys.is_empty()).then_some(())
    })
    .await;
    redis.stop();
    let feeder = tokio::spawn(async move {
        journal.append(later).await;
        journal.close();
    });
    let counters = progress.sinks()[0].clone();
    sluice_testkit::eventually(Duration::from_secs(30), "retries while down", async || {
        (counters.counters.retries.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await;
    assert!(!task.is_finished(), "the driver waits for redis");
    redis.start_again();

    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the driver finishes once redis is back")
        .unwrap()
        .expect("no stop");
    feeder.await.unwrap();
    let (_, offset) = counters.take_dirty().expect("an offset");
    assert_eq!(offset.position, events.last().unwrap().position);

    let mut conn = common::connect(&redis).await;
    for key in 0..40 {
        let fields = common::hash(&mut conn, &format!("items:{key}")).await;
        assert_eq!(
            fields.get("n").map(String::as_str),
            Some("49"),
            "row {key}: {fields:?}"
        );
    }
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_retried_after_the_timeout() {
    let redis = Redis::start();
    let mut sink = common::sink(&redis, json!({ "timeout": "300ms" }));
    assert_eq!(
        write(&mut sink, &[item(Op::Insert, 0x100, 0, 1, 1)]).await,
        ["delivered"]
    );
    // Another client makes the server hold every write for a while (WRITE, not ALL, so
    // that it can lift the pause again).
    let mut admin = common::connect(&redis).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(5000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answers = common::answers(&mut sink, &[item(Op::Update, 0x200, 0, 1, 2)]).await;
    match &answers[0] {
        Delivery::Retry { reason, .. } => assert!(reason.contains("within 300ms"), "{reason}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut admin)
        .await
        .unwrap();
    // A new connection, and the held write (if it ran after all) is harmless: fenced.
    assert_eq!(
        write(&mut sink, &[item(Op::Update, 0x200, 0, 1, 2)]).await,
        ["delivered"]
    );
    assert_eq!(doc(&mut admin, "items:1").await.unwrap()["n"], 2);
}
