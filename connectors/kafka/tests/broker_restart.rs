//! The broker is killed mid-stream and started again, under the engine's real driver.
//! While it is down the sink answers retries and its offset stays where it was; once it
//! is back (empty: tansu keeps everything in memory, so the test creates the topic again
//! and reads what arrived after the restart), everything after the offset is delivered,
//! and each key's changes stand in stream order.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use sluice_runtime::config::DeliveryConfig;
use sluice_runtime::journal::Entry;
use sluice_runtime::state::{SqliteStore, Store};
use sluice_runtime::{testing, Event, Lsn, Op, Position};
use sluice_testkit::kafka::Tansu;

const KEYS: i64 = 10;

/// Changes `rounds` of every key in one transaction at `lsn`, and its commit.
fn transaction(lsn: u64, rounds: std::ops::Range<i64>) -> (Vec<Event>, Vec<Entry>) {
    let mut events = Vec::new();
    for (i, (round, key)) in rounds
        .flat_map(|round| (0..KEYS).map(move |key| (round, key)))
        .enumerate()
    {
        let op = if round == 0 { Op::Insert } else { Op::Update };
        events.push((*common::change("items", op, lsn, i as u32, key, round)).clone());
    }
    let mut entries: Vec<Entry> = events.iter().cloned().map(Entry::event).collect();
    entries.push(Entry::Commit {
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(lsn + 0x10),
    });
    (events, entries)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_is_retried_and_everything_after_the_offset_arrives_in_order() {
    let mut tansu = Tansu::start();
    let topic = common::topic("restart");
    common::create_topic(&tansu, &topic, 3).await;
    let sink = common::sink(&tansu, json!({"topic": topic, "timeout": "2s"}));
    let mut delivery = DeliveryConfig::default();
    delivery.batch.max_events = 20;
    delivery.batch.max_wait = Duration::ZERO;
    delivery.retry.initial = Duration::from_millis(50);
    delivery.retry.max = Duration::from_millis(500);
    delivery.retry.max_elapsed = Duration::from_secs(120);
    let store = Store::new(SqliteStore::in_memory());
    let (driver, journal, progress) = testing::driver(Box::new(sink), delivery, &store);
    let sink = progress.sinks()[0].clone();
    let task = tokio::spawn(async move {
        let mut driver = driver;
        let stopped = driver.run().await;
        driver.close().await;
        stopped
    });

    // Before: delivered and committed.
    let (before, entries) = transaction(0x1000, 0..10);
    journal.append(entries).await;
    let end_before = before.last().unwrap().position;
    sluice_testkit::eventually(
        Duration::from_secs(30),
        "the first transaction",
        async || (sink.committed().position == end_before).then_some(()),
    )
    .await;

    // During: the broker is gone.
    tansu.stop();
    let (after, entries) = transaction(0x2000, 10..30);
    journal.append(entries).await;
    journal.close();
    sluice_testkit::eventually(Duration::from_secs(30), "retries", async || {
        (sink.counters.retries.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sink.committed().position,
        end_before,
        "no offset moves while the broker acknowledges nothing"
    );

    // After: back, empty.
    tansu.start_again();
    common::create_topic(&tansu, &topic, 3).await;
    tokio::time::timeout(Duration::from_secs(90), task)
        .await
        .expect("the driver finishes once the broker is back")
        .unwrap()
        .expect("no stop");
    let end_after = after.last().unwrap().position;
    assert_eq!(sink.committed().position, end_after);

    let records = common::read(&tansu, &topic).await;
    let position_of: BTreeMap<String, Position> =
        after.iter().map(|e| (e.id(), e.position)).collect();
    for e in &after {
        assert!(
            records.iter().any(|r| r.id() == e.id()),
            "{} arrived after the restart",
            e.id()
        );
    }
    // Per key (one partition each, read in offset order): counting each event at its last
    // copy, the changes are in stream order, and the key ends at its last change.
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &records {
        by_key
            .entry(r.key.clone().unwrap())
            .or_default()
            .push(r.id());
    }
    for (key, ids) in &by_key {
        let mut last_copies: Vec<Position> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if !ids[i + 1..].contains(id) {
                last_copies.push(position_of[id]);
            }
        }
        assert!(
            last_copies.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {ids:?}"
        );
        let last_of_key = after
            .iter()
            .rev()
            .find(|e| common::key_text(e) == *key)
            .unwrap();
        assert_eq!(
            ids.last(),
            Some(&last_of_key.id()),
            "key {key} ends at its last change"
        );
    }
}
