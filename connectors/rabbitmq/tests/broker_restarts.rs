//! The broker stopped, killed or blocking publishers: every event is answered `Retry`
//! (never rejected, never delivered) while it cannot take messages; once it can, the sink
//! reconnects and everything is delivered. Under the engine's driver with a `kill -9` in
//! the middle of the stream, nothing is lost and each key's messages end in stream order.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{answers, change, declare, drain, sink, write, Received};
use lapin::ExchangeKind;
use serde_json::json;
use sluice_runtime::config::DeliveryConfig;
use sluice_runtime::journal::Entry;
use sluice_runtime::state::{SqliteStore, Store};
use sluice_runtime::{testing, Delivery, Event, Lsn, Op};
use sluice_testkit::rabbitmq::RabbitMq;

/// Every answer is a retry whose reason names the broker.
fn all_retries(got: &[Delivery], port: u16) {
    for answer in got {
        match answer {
            Delivery::Retry { reason, .. } => {
                assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}")
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_while_down_then_delivers_on_a_new_connection() {
    let mut rabbit = RabbitMq::start();
    declare(&rabbit, "events", ExchangeKind::Topic, &[("all", "#")]).await;
    let mut sink = sink(&rabbit, json!({ "exchange": "events", "timeout": "3s" }));
    let first: Vec<_> = (0..3)
        .map(|i| change("items", Op::Insert, 0x100, i, i.into(), 1))
        .collect();
    assert_eq!(write(&mut sink, &first).await, ["delivered"; 3]);

    rabbit.stop();
    let second: Vec<_> = (0..3)
        .map(|i| change("items", Op::Update, 0x200, i, i.into(), 2))
        .collect();
    for _ in 0..2 {
        all_retries(&answers(&mut sink, &second).await, rabbit.port);
    }

    rabbit.start_again();
    // The first batch after the restart goes through on a new connection.
    assert_eq!(write(&mut sink, &second).await, ["delivered"; 3]);
    // Persistent messages in a durable queue outlived the restart.
    let ids: Vec<String> = drain(&rabbit, "all")
        .await
        .iter()
        .map(Received::id)
        .collect();
    let expected: Vec<String> = first.iter().chain(&second).map(|e| e.id()).collect();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_in_the_middle_of_a_stream_loses_nothing_and_keeps_each_keys_order() {
    let mut rabbit = RabbitMq::start();
    declare(&rabbit, "events", ExchangeKind::Topic, &[("all", "#")]).await;
    let sink = common::boxed(sink(
        &rabbit,
        json!({ "exchange": "events", "timeout": "2s" }),
    ));

    // 40 keys, 50 changes each, interleaved, in transactions of 100 changes.
    let mut events: Vec<Arc<Event>> = Vec::new();
    for round in 0..50i64 {
        for key in 0..40i64 {
            let n = events.len() as u64;
            let op = if round == 0 { Op::Insert } else { Op::Update };
            events.push(change(
                "items",
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
    // Ten transactions now, ten more once the broker is down.
    let later = entries.split_off(entries.len() / 2);

    let mut delivery = DeliveryConfig::default();
    delivery.batch.max_events = 25;
    delivery.batch.max_wait = Duration::ZERO;
    delivery.retry.initial = Duration::from_millis(10);
    delivery.retry.max = Duration::from_millis(50);
    delivery.retry.max_elapsed = Duration::from_secs(120);
    let store = Store::new(SqliteStore::in_memory());
    let (driver, journal, progress) = testing::driver(sink, delivery, &store);
    journal.append(entries).await;
    let task = tokio::spawn(async move {
        let mut driver = driver;
        driver.run().await
    });

    // Kill it once some messages are there, feed the rest while it is down, bring it back.
    let mut got: Vec<Received> = Vec::new();
    sluice_testkit::eventually(Duration::from_secs(30), "the first messages", async || {
        got.extend(drain(&rabbit, "all").await);
        (!got.is_empty()).then_some(())
    })
    .await;
    rabbit.kill();
    let feeder = tokio::spawn(async move {
        journal.append(later).await;
        journal.close();
    });
    let counters = progress.sinks()[0].clone();
    sluice_testkit::eventually(Duration::from_secs(30), "retries while down", async || {
        (counters.counters.retries.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await;
    assert!(!task.is_finished(), "the driver waits for the broker");
    rabbit.start_again();

    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the driver finishes once the broker is back")
        .unwrap()
        .expect("no stop");
    feeder.await.unwrap();
    let (_, offset) = counters.take_dirty().expect("an offset");
    assert_eq!(offset.position, events.last().unwrap().position);
    got.extend(drain(&rabbit, "all").await);

    // Nothing lost: every event reached the queue, at least once.
    let ids: HashSet<String> = got.iter().map(Received::id).collect();
    for event in &events {
        assert!(ids.contains(&event.id()), "{} is missing", event.id());
    }
    // In order per key: a message sent again comes after the ones it was sent before
    // (at-least-once), so a consumer that applies each message in queue order, or keeps
    // the highest id per key, ends at each key's last change. Keeping the last copy of
    // each id, every key's changes are in stream order.
    let mut last_copy: BTreeMap<String, usize> = BTreeMap::new();
    for (at, message) in got.iter().enumerate() {
        last_copy.insert(message.id(), at);
    }
    let mut per_key: BTreeMap<i64, Vec<(usize, i64)>> = BTreeMap::new();
    for (at, message) in got.iter().enumerate() {
        if last_copy[&message.id()] == at {
            let after = &message.json()["after"];
            let (key, n) = (after["id"].as_i64().unwrap(), after["n"].as_i64().unwrap());
            per_key.entry(key).or_default().push((at, n));
        }
    }
    assert_eq!(per_key.len(), 40);
    for (key, changes) in &per_key {
        let ns: Vec<i64> = changes.iter().map(|(_, n)| *n).collect();
        assert_eq!(ns, (0..50).collect::<Vec<_>>(), "key {key} in stream order");
    }
    let duplicates = got.len() - ids.len();
    assert!(duplicates < events.len(), "{duplicates} duplicates");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_blocks_publishers_is_retried_until_it_unblocks() {
    let rabbit = RabbitMq::start();
    declare(&rabbit, "events", ExchangeKind::Topic, &[("all", "#")]).await;
    let mut sink = sink(&rabbit, json!({ "exchange": "events", "timeout": "2s" }));
    let first = vec![change("items", Op::Insert, 0x100, 0, 1, 1)];
    assert_eq!(write(&mut sink, &first).await, ["delivered"]);

    // A disk alarm: the broker stops reading from publishing connections.
    rabbit.ctl(&["set_disk_free_limit", "1000000GB"]);
    let second = vec![change("items", Op::Update, 0x200, 0, 1, 2)];
    let got = answers(&mut sink, &second).await;
    all_retries(&got, rabbit.port);
    let Delivery::Retry { reason, .. } = &got[0] else {
        unreachable!()
    };
    assert!(reason.contains("blocks publishers"), "{reason}");
    // Known blocked: answered at once, nothing more piled up on the broker.
    let started = std::time::Instant::now();
    all_retries(&answers(&mut sink, &second).await, rabbit.port);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    rabbit.ctl(&["set_disk_free_limit", "1MB"]);
    sluice_testkit::eventually(Duration::from_secs(30), "the alarm to clear", async || {
        let got = answers(&mut sink, &second).await;
        got[0].is_delivered().then_some(())
    })
    .await;
    // The message published while blocked was taken when the alarm cleared: a copy.
    let ids: Vec<String> = drain(&rabbit, "all")
        .await
        .iter()
        .map(Received::id)
        .collect();
    assert_eq!(ids[0], first[0].id());
    assert!(ids[1..].iter().all(|id| *id == second[0].id()), "{ids:?}");
}
