//! The sink conformance suite: what every sink must do, checked the same way for all.
//!
//! A sink crate implements [`Target`] over a real destination (an HTTP receiver, a file, a
//! Redis server, a stand-in for a search cluster) in its `tests/conformance.rs` and calls
//! [`suite!`], which turns every check below into a test of that crate:
//!
//! - [`one_answer_per_event`]: one result per event, in order; a healthy destination takes
//!   every event;
//! - [`same_key_order_under_concurrency`]: events of one key take effect in stream order
//!   even when the sink sends keys concurrently;
//! - [`truncate_is_a_barrier`]: what comes before a truncate takes effect before it, what
//!   comes after, after it;
//! - [`deferral_after_a_failure`]: after a failed event, the rest of its key and everything
//!   past the next barrier is answered deferred, and sending those again converges;
//! - [`transient_errors_are_retries`]: a destination that is down is answered retry (never
//!   rejected, never delivered), and takes everything once it is back;
//! - [`replay_is_idempotent`]: the same events written twice leave what a deduplicating
//!   reader sees unchanged;
//! - [`offsets_advance_only_after_acknowledgement`]: under the real engine driver, a sink's
//!   offset does not move while the destination is down, and reaches the end once it is
//!   back.
//!
//! Checks a destination cannot support (a blackhole cannot fail and shows nothing) say so
//! through [`Traits`]; what remains of such a check still runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sluice_runtime::config::DeliveryConfig;
use sluice_runtime::journal::Entry;
use sluice_runtime::state::{SqliteStore, Store};
use sluice_runtime::testing;
use sluice_runtime::{Delivery, Event, Lsn, Op, Position, Row, Sink, Value as V};

/// What a destination under test can show and do.
#[derive(Clone, Copy, Debug, Default)]
pub struct Traits {
    /// It can be taken down (transient failures) and brought back.
    pub can_fail: bool,
    /// It can fail one chosen event transiently while taking the others.
    pub fails_one_event: bool,
    /// It reports which events took effect and in which order.
    pub observes_order: bool,
    /// The sink attempts a whole batch at once (a bulk API): events after a failure may
    /// have taken effect though they are answered deferred.
    pub bulk: bool,
}

/// A destination the suite drives through a sink.
#[async_trait]
pub trait Target: Send {
    fn traits(&self) -> Traits;

    /// A new sink writing to this destination.
    async fn sink(&mut self) -> Box<dyn Sink>;

    /// Empty the destination.
    async fn reset(&mut self);

    /// What a reader that deduplicates (by event id, document id, key) sees: one value per
    /// identity. Empty when the destination shows nothing.
    async fn state(&mut self) -> BTreeMap<String, Value>;

    /// Ids of the events that took effect, in the order they did (repeats included).
    /// Empty unless [`Traits::observes_order`].
    async fn applied(&mut self) -> Vec<String>;

    /// Take the destination down (`true`) or bring it back (`false`). Only called with
    /// [`Traits::can_fail`].
    async fn set_down(&mut self, down: bool);

    /// Fail the event with this id transiently, every time, until [`Target::heal_event`].
    /// Only called with [`Traits::fails_one_event`].
    async fn fail_event(&mut self, _id: &str) {
        unreachable!("fails_one_event is not declared")
    }

    async fn heal_event(&mut self) {}

    /// For a destination that keeps one value per row (a cache, an index): row id → the
    /// `n` column it holds (`None`: the row is deleted). `None` for a log of events.
    async fn rows(&mut self) -> Option<BTreeMap<i64, Option<i64>>> {
        None
    }
}

/// Turn every check into a `#[tokio::test]` of the calling crate. `$make` is an
/// expression giving a future of a fresh [`Target`].
#[macro_export]
macro_rules! suite {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn conformance_one_answer_per_event() {
            $crate::one_answer_per_event(&mut $make.await).await;
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn conformance_same_key_order_under_concurrency() {
            $crate::same_key_order_under_concurrency(&mut $make.await).await;
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn conformance_truncate_is_a_barrier() {
            $crate::truncate_is_a_barrier(&mut $make.await).await;
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn conformance_deferral_after_a_failure() {
            $crate::deferral_after_a_failure(&mut $make.await).await;
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn conformance_transient_errors_are_retries() {
            $crate::transient_errors_are_retries(&mut $make.await).await;
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn conformance_replay_is_idempotent() {
            $crate::replay_is_idempotent(&mut $make.await).await;
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn conformance_reads_are_upserts_that_never_regress() {
            $crate::reads_are_upserts_that_never_regress(&mut $make.await).await;
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn conformance_offsets_advance_only_after_acknowledgement() {
            $crate::offsets_advance_only_after_acknowledgement(&mut $make.await).await;
        }
    };
}

// ─── The events ─────────────────────────────────────────────────────────────────────────

/// Transactions are numbered from here, 0x100 apart.
const FIRST_LSN: u64 = 0x1000;

/// A change of `public.items` row `key` at `index` of transaction `tx`: the row carries
/// `n`, so each change of a key is a different value.
pub fn change(op: Op, tx: u64, index: u32, key: i64, n: i64) -> Arc<Event> {
    let lsn = FIRST_LSN + tx * 0x100;
    let mut e = testing::event("items", op, lsn, index);
    // Each change has its own WAL record, before its transaction's commit, in order.
    e.source.lsn = Lsn(lsn - 0x100 + 1 + u64::from(index));
    let key_row = testing::id_row(key);
    let mut row = key_row.clone();
    row.push("n".into(), V::Int(n));
    row.push("note".into(), V::Text(format!("key {key} change {n}")));
    e.key = Some(key_row.clone());
    match op {
        Op::Delete => e.before = Some(key_row),
        _ => e.after = Some(row),
    }
    Arc::new(e)
}

/// A truncate of `public.items` at `index` of transaction `tx`.
pub fn truncate(tx: u64, index: u32) -> Arc<Event> {
    Arc::new(testing::event(
        "items",
        Op::Truncate,
        FIRST_LSN + tx * 0x100,
        index,
    ))
}

/// `keys` keys with `per_key` changes each, interleaved (k0 k1 … k0 k1 …), the first change
/// of a key an insert and the rest updates, all in transaction `tx`.
pub fn interleaved(tx: u64, keys: i64, per_key: i64) -> Vec<Arc<Event>> {
    let mut out = Vec::new();
    for round in 0..per_key {
        for key in 0..keys {
            let op = if round == 0 { Op::Insert } else { Op::Update };
            out.push(change(op, tx, out.len() as u32, key, round));
        }
    }
    out
}

fn ids(events: &[Arc<Event>]) -> Vec<String> {
    events.iter().map(|e| e.id()).collect()
}

fn key_of(e: &Event) -> Option<String> {
    e.key
        .as_ref()
        .map(|k| format!("{}", Value::from(json_row(k))))
}

fn json_row(row: &Row) -> serde_json::Map<String, Value> {
    serde_json::to_value(row)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

fn name(d: &Delivery) -> &'static str {
    match d {
        Delivery::Delivered => "delivered",
        Delivery::Retry { .. } => "retry",
        Delivery::Deferred => "deferred",
        Delivery::Rejected { .. } => "rejected",
        _ => "other",
    }
}

fn names(ds: &[Delivery]) -> Vec<&'static str> {
    ds.iter().map(name).collect()
}

async fn write(sink: &mut Box<dyn Sink>, batch: &[Arc<Event>]) -> Vec<Delivery> {
    let answers = sink.send(batch).await.await;
    assert_eq!(
        answers.len(),
        batch.len(),
        "one answer per event: {} events, {} answers",
        batch.len(),
        answers.len()
    );
    answers
}

// ─── The checks ─────────────────────────────────────────────────────────────────────────

/// One answer per event, in order; a healthy destination takes every event of a batch
/// that mixes inserts, updates and deletes of several keys.
pub async fn one_answer_per_event(target: &mut dyn Target) {
    target.reset().await;
    let mut batch = interleaved(0, 5, 3);
    let at = batch.len() as u32;
    batch.push(change(Op::Delete, 0, at, 1, 9));
    let mut sink = target.sink().await;
    let answers = write(&mut sink, &batch).await;
    assert!(
        answers.iter().all(Delivery::is_delivered),
        "a healthy destination takes everything: {:?}",
        answers
    );
    if target.traits().observes_order {
        let mut applied = target.applied().await;
        applied.sort();
        let mut expected = ids(&batch);
        expected.sort();
        assert_eq!(applied, expected, "every event took effect, once");
    }
    sink.close().await;
}

/// Events of one key take effect in stream order, however the sink spreads keys.
pub async fn same_key_order_under_concurrency(target: &mut dyn Target) {
    target.reset().await;
    // Changes of a key close together (4 apart): a sink that overlapped them would show.
    let batch = interleaved(0, 4, 12);
    let mut sink = target.sink().await;
    let answers = write(&mut sink, &batch).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");
    if target.traits().observes_order {
        assert_key_order(&batch, &target.applied().await);
    }
    if let Some(rows) = target.rows().await {
        // A store that keeps one value per row ends at each key's last change.
        let expected: BTreeMap<i64, Option<i64>> = (0..4).map(|k| (k, Some(11))).collect();
        assert_eq!(rows, expected, "each key holds its last change");
    }
    sink.close().await;
}

/// Per key, the applied order is the stream order.
fn assert_key_order(batch: &[Arc<Event>], applied: &[String]) {
    let by_id: BTreeMap<String, &Arc<Event>> = batch.iter().map(|e| (e.id(), e)).collect();
    let mut last: BTreeMap<String, Position> = BTreeMap::new();
    for id in applied {
        let Some(e) = by_id.get(id) else { continue };
        let Some(key) = key_of(e) else { continue };
        if let Some(prev) = last.insert(key.clone(), e.position) {
            assert!(
                prev < e.position,
                "key {key}: {id} took effect after {prev}, which comes later in the stream; applied: {applied:?}"
            );
        }
    }
}

/// Everything before a truncate takes effect before it, everything after it after it.
pub async fn truncate_is_a_barrier(target: &mut dyn Target) {
    target.reset().await;
    let batch = vec![
        change(Op::Insert, 0, 0, 1, 0),
        change(Op::Insert, 0, 1, 2, 0),
        change(Op::Update, 0, 2, 1, 1),
        truncate(0, 3),
        change(Op::Insert, 0, 4, 1, 2),
        change(Op::Insert, 0, 5, 3, 0),
    ];
    let mut sink = target.sink().await;
    let answers = write(&mut sink, &batch).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");
    if target.traits().observes_order {
        let applied = target.applied().await;
        let at = |id: &str| applied.iter().position(|a| a == id);
        let barrier = batch[3].id();
        if let Some(b) = at(&barrier) {
            for e in &batch[..3] {
                assert!(
                    at(&e.id()).is_some_and(|i| i < b),
                    "{} before the truncate: {applied:?}",
                    e.id()
                );
            }
            for e in &batch[4..] {
                assert!(
                    at(&e.id()).is_some_and(|i| i > b),
                    "{} after the truncate: {applied:?}",
                    e.id()
                );
            }
        }
    }
    sink.close().await;
}

/// After a failed event, the rest of its key and everything past the next barrier are
/// answered deferred (and, unless the sink is a bulk one, not attempted); sending the
/// failed and deferred events again converges to what a faultless write gives.
pub async fn deferral_after_a_failure(target: &mut dyn Target) {
    let traits = target.traits();
    let batch = vec![
        change(Op::Insert, 0, 0, 1, 0),
        change(Op::Update, 0, 1, 1, 1),
        change(Op::Update, 0, 2, 1, 2),
        change(Op::Insert, 0, 3, 2, 0),
        truncate(0, 4),
        change(Op::Insert, 0, 5, 3, 0),
    ];
    // What a faultless write leaves.
    target.reset().await;
    let mut sink = target.sink().await;
    assert!(write(&mut sink, &batch)
        .await
        .iter()
        .all(Delivery::is_delivered));
    let expected = target.state().await;
    sink.close().await;

    target.reset().await;
    let mut sink = target.sink().await;
    let failing = batch[0].id();
    let answers = if traits.fails_one_event {
        target.fail_event(&failing).await;
        write(&mut sink, &batch).await
    } else if traits.can_fail {
        target.set_down(true).await;
        write(&mut sink, &batch).await
    } else {
        sink.close().await;
        return;
    };
    let got = names(&answers);
    assert!(matches!(got[0], "retry"), "the failed event: {got:?}");
    assert!(
        got[1..3]
            .iter()
            .all(|d| *d == "deferred" || (!traits.fails_one_event && *d == "retry")),
        "later events of its key are deferred: {got:?}"
    );
    assert!(
        got[4..]
            .iter()
            .all(|d| *d == "deferred" || (!traits.fails_one_event && *d == "retry")),
        "everything from the next barrier on is deferred: {got:?}"
    );
    if traits.fails_one_event {
        assert_eq!(got[3], "delivered", "another key goes on: {got:?}");
    }
    if traits.observes_order {
        let applied = target.applied().await;
        for e in &batch[4..] {
            assert!(
                !applied.contains(&e.id()),
                "{} is past the barrier: {applied:?}",
                e.id()
            );
        }
        if !traits.bulk {
            for e in &batch[1..3] {
                assert!(
                    !applied.contains(&e.id()),
                    "{} waits for its key: {applied:?}",
                    e.id()
                );
            }
        }
    }
    // The engine sends the failed and the deferred events again once it can.
    if traits.fails_one_event {
        target.heal_event().await;
    } else {
        target.set_down(false).await;
    }
    let again: Vec<Arc<Event>> = batch
        .iter()
        .zip(&answers)
        .filter(|(_, d)| !d.is_delivered())
        .map(|(e, _)| e.clone())
        .collect();
    let answers = write(&mut sink, &again).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");
    assert_eq!(target.state().await, expected, "it converges");
    sink.close().await;
}

/// A destination that is down gets retries, never a rejection nor a delivery; once back
/// it takes everything.
pub async fn transient_errors_are_retries(target: &mut dyn Target) {
    if !target.traits().can_fail {
        return;
    }
    target.reset().await;
    let batch = interleaved(0, 4, 2);
    let mut sink = target.sink().await;
    target.set_down(true).await;
    let answers = write(&mut sink, &batch).await;
    let got = names(&answers);
    assert!(
        got.iter().all(|d| *d == "retry" || *d == "deferred") && got.contains(&"retry"),
        "a destination that is down is retried, nothing rejected or delivered: {got:?}"
    );
    for a in &answers {
        if let Delivery::Retry { reason, .. } = a {
            assert!(!reason.is_empty(), "a retry says why");
        }
    }
    target.set_down(false).await;
    let answers = write(&mut sink, &batch).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");
    sink.close().await;
}

/// The same events written twice leave what a deduplicating reader sees unchanged.
pub async fn replay_is_idempotent(target: &mut dyn Target) {
    target.reset().await;
    let mut batch = interleaved(0, 6, 3);
    let at = batch.len() as u32;
    batch.push(change(Op::Delete, 0, at, 2, 9));
    let mut sink = target.sink().await;
    assert!(write(&mut sink, &batch)
        .await
        .iter()
        .all(Delivery::is_delivered));
    let once = target.state().await;
    assert!(write(&mut sink, &batch)
        .await
        .iter()
        .all(Delivery::is_delivered));
    assert_eq!(target.state().await, once, "a replay changes nothing");
    // Late: an older part of the stream arrives again after a newer one.
    assert!(write(&mut sink, &batch[..6])
        .await
        .iter()
        .all(Delivery::is_delivered));
    // Stores that keep state must not regress; logs show each id's one envelope.
    assert_eq!(target.state().await, once, "a late replay changes nothing");
    sink.close().await;
}

/// A backfill's rows (`op: read`) are upserts: a row only a read carries is created, a read
/// after changes of its row sets the row, and a late copy of an older change arriving after
/// the read (a replay) does not take the row back.
pub async fn reads_are_upserts_that_never_regress(target: &mut dyn Target) {
    target.reset().await;
    let changes = [
        change(Op::Insert, 0, 0, 1, 1),
        change(Op::Update, 0, 1, 1, 2),
        change(Op::Insert, 0, 2, 3, 1),
        change(Op::Delete, 0, 3, 3, 0),
    ];
    // The backfill's chunk, placed after the changes it saw: row 1 as it stands, row 2
    // which no change touched since the pipeline began.
    let reads = [change(Op::Read, 1, 1, 1, 2), change(Op::Read, 1, 2, 2, 7)];
    let mut sink = target.sink().await;
    let all: Vec<Arc<Event>> = changes.iter().chain(&reads).cloned().collect();
    let answers = write(&mut sink, &all).await;
    assert_eq!(
        names(&answers),
        vec!["delivered"; all.len()],
        "every read is delivered"
    );
    if let Some(rows) = target.rows().await {
        let expected: BTreeMap<i64, Option<i64>> = [(1, Some(2)), (2, Some(7)), (3, None)]
            .into_iter()
            .collect();
        // A deleted row may be absent or kept as a tombstone: both read as `None`.
        let got: BTreeMap<i64, Option<i64>> = expected
            .keys()
            .map(|k| (*k, rows.get(k).copied().flatten()))
            .collect();
        assert_eq!(got, expected, "reads upsert their rows");
        // An older change of row 1 delivered again after the read.
        assert!(write(&mut sink, &changes[..1])
            .await
            .iter()
            .all(Delivery::is_delivered));
        let rows = target.rows().await.unwrap_or_default();
        assert_eq!(
            rows.get(&1),
            Some(&Some(2)),
            "a late older change does not regress a read"
        );
    } else {
        let state = target.state().await;
        // A destination that shows nothing (a blackhole) has nothing to check.
        for read in reads.iter().filter(|_| !state.is_empty()) {
            assert!(
                state
                    .values()
                    .any(|v| v.to_string().contains("\"op\":\"read\""))
                    || state.contains_key(&read.id()),
                "the destination shows the read {}: {state:?}",
                read.id()
            );
        }
    }
    sink.close().await;
}

/// Under the engine's driver: while the destination is down the sink's offset does not
/// move; once it is back the offset reaches the last event and the destination has all.
pub async fn offsets_advance_only_after_acknowledgement(target: &mut dyn Target) {
    target.reset().await;
    let traits = target.traits();
    let batch = interleaved(0, 5, 4);
    let sink = target.sink().await;
    let mut delivery = DeliveryConfig::default();
    delivery.batch.max_events = 7;
    delivery.batch.max_wait = Duration::ZERO;
    delivery.retry.initial = Duration::from_millis(10);
    delivery.retry.max = Duration::from_millis(50);
    delivery.retry.max_elapsed = Duration::from_secs(120);
    let store = Store::new(SqliteStore::in_memory());
    let (driver, journal, progress) = testing::driver(sink, delivery, &store);
    if traits.can_fail {
        target.set_down(true).await;
    }
    let mut entries: Vec<Entry> = batch.iter().map(|e| Entry::event((**e).clone())).collect();
    let end = Lsn(FIRST_LSN + 0x80);
    entries.push(Entry::Commit {
        commit_lsn: batch[0].position.commit_lsn,
        end_lsn: end,
    });
    journal.append(entries).await;
    journal.close();
    let task = tokio::spawn(async move {
        let mut driver = driver;
        driver.run().await
    });
    let sink = progress.sinks()[0].clone();
    if traits.can_fail {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            sink.take_dirty().is_none(),
            "no offset while the destination acknowledges nothing"
        );
        assert!(
            sink.counters
                .retries
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0,
            "it was retrying"
        );
        target.set_down(false).await;
    }
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the driver finishes once the destination is back")
        .unwrap()
        .expect("no stop");
    let (_, offset) = sink.take_dirty().expect("an offset once acknowledged");
    assert_eq!(offset.position, batch.last().unwrap().position);
    assert_eq!(offset.flush_lsn, end, "the transaction's end, once whole");
    if traits.observes_order {
        let applied = target.applied().await;
        for id in ids(&batch) {
            assert!(applied.contains(&id), "{id} took effect: {applied:?}");
        }
    }
}

/// For targets: the envelope of an event as JSON.
pub fn envelope(e: &Event) -> Value {
    serde_json::from_slice(e.json()).expect("an envelope is JSON")
}

/// For targets: the event id in an envelope.
pub fn envelope_id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}
