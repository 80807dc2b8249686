//! Many batches in flight under the engine's real driver: the sink holds several batches
//! at once, and the sink's offset only ever moves forward, over events whose delivery
//! reports said delivered.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use sluice_kafka::KafkaSink;
use sluice_runtime::config::DeliveryConfig;
use sluice_runtime::journal::Entry;
use sluice_runtime::sink::Pending;
use sluice_runtime::state::{SqliteStore, Store};
use sluice_runtime::{testing, Delivery, Event, Lsn, Op, Position, Sink};
use sluice_testkit::kafka::Tansu;

/// What the watching sink saw.
#[derive(Default)]
struct Seen {
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Positions answered delivered.
    delivered: Mutex<BTreeSet<Position>>,
}

/// The Kafka sink, watched: how many sends are unanswered, and what was delivered.
struct Watching {
    inner: KafkaSink,
    seen: Arc<Seen>,
}

#[async_trait]
impl Sink for Watching {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        self.send(batch).await.await
    }

    fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight()
    }

    async fn send(&mut self, batch: &[Arc<Event>]) -> Pending {
        let now = self.seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let answers = self.inner.send(batch).await;
        let seen = self.seen.clone();
        let positions: Vec<Position> = batch.iter().map(|e| e.position).collect();
        Box::pin(async move {
            let answers = answers.await;
            let mut delivered = seen.delivered.lock().unwrap();
            for (position, answer) in positions.iter().zip(&answers) {
                if answer.is_delivered() {
                    delivered.insert(*position);
                }
            }
            seen.in_flight.fetch_sub(1, Ordering::SeqCst);
            answers
        })
    }

    async fn close(&mut self) {
        self.inner.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_advance_in_order_over_delivered_events_with_many_batches_in_flight() {
    let tansu = Tansu::start();
    let topic = common::topic("pipelined");
    common::create_topic(&tansu, &topic, 4).await;
    let seen = Arc::new(Seen::default());
    let sink = Watching {
        inner: common::sink(&tansu, json!({"topic": topic, "linger": "20ms"})),
        seen: seen.clone(),
    };
    assert_eq!(sink.max_in_flight(), 8, "the default in_flight_batches");

    let mut delivery = DeliveryConfig::default();
    delivery.batch.max_events = 50;
    delivery.batch.max_wait = Duration::ZERO;
    let store = Store::new(SqliteStore::in_memory());
    let (driver, journal, progress) = testing::driver(Box::new(sink), delivery, &store);

    // 30 transactions of 100 changes over 40 keys.
    let mut events = Vec::new();
    let mut entries = Vec::new();
    for tx in 0..30u64 {
        let lsn = 0x1000 * (tx + 1);
        for i in 0..100u32 {
            let key = i64::from(i) % 40 + (tx as i64 % 3) * 7;
            let op = if tx == 0 { Op::Insert } else { Op::Update };
            let e = common::change("items", op, lsn, i, key, tx as i64 * 1000 + i64::from(i));
            entries.push(Entry::event((*e).clone()));
            events.push(e);
        }
        entries.push(Entry::Commit {
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 0x10),
        });
    }
    let last = events.last().unwrap().position;

    let sink_progress = progress.sinks()[0].clone();
    let watcher = {
        let (seen, sink_progress) = (seen.clone(), sink_progress.clone());
        tokio::spawn(async move {
            let mut previous = Position::default();
            let mut samples = 0usize;
            loop {
                let offset = sink_progress.committed();
                assert!(offset.position >= previous, "the offset went back");
                previous = offset.position;
                let delivered = seen.delivered.lock().unwrap().clone();
                // Every event up to the offset was answered delivered before it moved.
                let behind = delivered.range(..=offset.position).count();
                let expected = events_up_to(offset.position);
                assert_eq!(
                    behind, expected,
                    "the offset {} passed events not acknowledged",
                    offset.position
                );
                samples += 1;
                if offset.position == last {
                    return samples;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    journal.append(entries).await;
    journal.close();
    let mut driver = driver;
    tokio::time::timeout(Duration::from_secs(60), driver.run())
        .await
        .expect("the driver finishes")
        .expect("no stop");
    driver.close().await;
    let samples = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the watcher saw the last offset")
        .unwrap();
    assert!(samples > 3, "the offset was watched while it moved");
    assert_eq!(sink_progress.committed().position, last);
    let most = seen.most_in_flight.load(Ordering::SeqCst);
    assert!(
        most > 1,
        "several batches were in flight at once (at most {most})"
    );

    // Everything is in the topic once, each key in stream order.
    let records = common::read(&tansu, &topic).await;
    assert_eq!(records.len(), events.len());
    let mut last_n: std::collections::HashMap<String, i64> = Default::default();
    for r in &records {
        let n = r.json()["after"]["n"].as_i64().unwrap();
        let key = r.key.clone().unwrap();
        if let Some(previous) = last_n.insert(key.clone(), n) {
            assert!(previous < n, "key {key}: {n} after {previous}");
        }
    }
}

/// How many of the test's events are at or before `position` (transactions of 100 at
/// 0x1000 apart).
fn events_up_to(position: Position) -> usize {
    let tx = position.commit_lsn.0 / 0x1000;
    if tx == 0 {
        return 0;
    }
    ((tx - 1) * 100 + u64::from(position.index) + 1) as usize
}
