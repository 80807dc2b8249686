//! The driver against scripted sinks, on an in-memory state store.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::*;
use crate::config::DlqConfig;
use crate::event::Op;
use crate::lsn::{Lsn, Position};
use crate::progress::{Offset, Progress};
use crate::sink::Delivery;
use crate::state::{DlqFilter, DlqState, SqliteStore};
use crate::testing;

/// A sink that answers from a script, then delivers everything; records what it got.
struct Scripted {
    script: VecDeque<Vec<Delivery>>,
    seen: Arc<Mutex<Vec<Vec<Position>>>>,
    /// Events with these indices are always rejected (after the script runs out).
    reject: HashSet<u32>,
}

#[async_trait]
impl Sink for Scripted {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        self.seen
            .lock()
            .unwrap()
            .push(batch.iter().map(|e| e.position).collect());
        if let Some(answer) = self.script.pop_front() {
            return answer;
        }
        let mut failed_keys = HashSet::new();
        batch
            .iter()
            .map(|e| {
                let key = e.ordering_key();
                if failed_keys.contains(&key) {
                    Delivery::Deferred
                } else if self.reject.contains(&e.position.index) {
                    failed_keys.insert(key);
                    Delivery::rejected("422 no")
                } else {
                    Delivery::Delivered
                }
            })
            .collect()
    }
}

fn keyed(commit: u64, index: u32, key: i64) -> Entry {
    let mut e = testing::event("t", Op::Insert, commit, index);
    e.key = Some(testing::id_row(key));
    Entry::event(e)
}

fn event(commit: u64, index: u32) -> Entry {
    keyed(commit, index, index as i64)
}

fn settings() -> DeliveryConfig {
    let mut d = DeliveryConfig::default();
    d.batch.max_events = 10;
    d.batch.max_wait = Duration::ZERO;
    d.retry.initial = Duration::from_millis(1);
    d.retry.max = Duration::from_millis(5);
    d.retry.max_elapsed = Duration::from_secs(5);
    d.dlq = DlqConfig {
        max_ratio: 0.5,
        window: 100,
        on_key: OnKey::Continue,
    };
    d
}

struct Run {
    result: Result<(), SinkStop>,
    seen: Vec<Vec<Position>>,
    progress: Arc<Progress>,
    store: Store,
}

async fn drive(
    entries: Vec<Entry>,
    committed: Offset,
    script: Vec<Vec<Delivery>>,
    reject: &[u32],
    settings: DeliveryConfig,
) -> Run {
    drive_with(
        entries,
        committed,
        script,
        reject,
        settings,
        Chain::default(),
        Chain::default(),
    )
    .await
}

async fn drive_with(
    entries: Vec<Entry>,
    committed: Offset,
    script: Vec<Vec<Delivery>>,
    reject: &[u32],
    settings: DeliveryConfig,
    pipeline_chain: Chain,
    chain: Chain,
) -> Run {
    let store = Store::new(SqliteStore::in_memory());
    let journal = Journal::memory(100);
    let progress = Progress::new(vec![("s".into(), committed)]);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut driver = SinkDriver {
        sink: Box::new(Scripted {
            script: script.into(),
            seen: seen.clone(),
            reject: reject.iter().copied().collect(),
        }),
        reader: journal.register(),
        journal: journal.clone(),
        delivery: settings,
        progress: progress.sinks()[0].clone(),
        shutdown: Shutdown::new(),
        store: store.clone(),
        config_hash: "h".into(),
        pipeline_chain: Arc::new(Mutex::new(pipeline_chain)),
        chain,
        tables: Default::default(),
    };
    journal.append(entries).await;
    journal.close();
    let result = driver.run().await;
    let seen = seen.lock().unwrap().clone();
    Run {
        result,
        seen,
        progress,
        store,
    }
}

fn dlq(run: &Run) -> Vec<(String, DlqState)> {
    let store = run.store.lock();
    store
        .dlq_list(&DlqFilter::default())
        .unwrap()
        .into_iter()
        .map(|e| (e.event_id, e.state))
        .collect()
}

#[tokio::test]
async fn retries_failed_and_deferred_events_in_order_then_commits() {
    let entries = vec![
        event(100, 0),
        event(100, 1),
        event(100, 2),
        Entry::Commit {
            commit_lsn: Lsn(100),
            end_lsn: Lsn(120),
        },
    ];
    let script = vec![vec![
        Delivery::Delivered,
        Delivery::retry("503"),
        Delivery::Deferred,
    ]];
    let run = drive(entries, Offset::default(), script, &[], settings()).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    let p = |i| Position::new(Lsn(100), i);
    assert_eq!(run.seen, vec![vec![p(0), p(1), p(2)], vec![p(1), p(2)]]);
    let committed = run.progress.sinks()[0].take_dirty().unwrap().1;
    assert_eq!((committed.position, committed.flush_lsn), (p(2), Lsn(120)));
    assert_eq!(
        run.progress.sinks()[0].counters.delivered.load(relaxed()),
        3
    );
}

#[tokio::test]
async fn events_at_or_before_the_committed_offset_are_skipped() {
    let committed = Offset {
        position: Position::new(Lsn(100), 1),
        ..Default::default()
    };
    let entries = vec![event(100, 0), event(100, 1), event(100, 2), event(200, 0)];
    let run = drive(entries, committed, vec![], &[], settings()).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    assert_eq!(
        run.seen,
        vec![vec![Position::new(Lsn(100), 2), Position::new(Lsn(200), 0)]]
    );
}

#[tokio::test]
async fn a_rejected_event_is_parked_and_the_rest_of_its_key_goes_on() {
    let entries = vec![keyed(1, 0, 7), keyed(1, 1, 7), keyed(1, 2, 8)];
    let run = drive(entries, Offset::default(), vec![], &[0], settings()).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    assert_eq!(dlq(&run), vec![("0/1:0".to_string(), DlqState::Parked)]);
    // The deferred event of key 7 was sent again right away, after the parking.
    assert_eq!(run.seen.len(), 2);
    assert_eq!(run.seen[1], vec![Position::new(Lsn(1), 1)]);
    let committed = run.progress.sinks()[0].take_dirty().unwrap().1;
    assert_eq!(
        committed.position,
        Position::new(Lsn(1), 2),
        "the offset moves past the parked event"
    );
}

#[tokio::test]
async fn on_key_hold_parks_later_events_of_the_key_behind_the_failed_one() {
    let mut s = settings();
    s.dlq.on_key = OnKey::Hold;
    s.batch.max_events = 2;
    let entries = vec![
        keyed(1, 0, 7),
        keyed(1, 1, 7),
        keyed(1, 2, 8),
        keyed(1, 3, 7),
    ];
    let run = drive(entries, Offset::default(), vec![], &[0], s).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    assert_eq!(
        dlq(&run),
        vec![
            ("0/1:0".to_string(), DlqState::Parked),
            ("0/1:1".to_string(), DlqState::Held),
            ("0/1:3".to_string(), DlqState::Held),
        ]
    );
    let sent: Vec<Position> = run.seen.concat();
    assert!(
        !sent.contains(&Position::new(Lsn(1), 3)),
        "a held event is never sent"
    );
}

#[tokio::test]
async fn the_breaker_stops_a_sink_that_rejects_too_much() {
    let mut s = settings();
    s.dlq = DlqConfig {
        max_ratio: 0.5,
        window: 4,
        on_key: OnKey::Continue,
    };
    s.batch.max_events = 4;
    let entries = (0..8).map(|i| event(1, i)).collect();
    let run = drive(
        entries,
        Offset::default(),
        vec![],
        &[0, 1, 2, 3, 4, 5, 6, 7],
        s,
    )
    .await;
    assert!(
        matches!(run.result, Err(SinkStop::Breaker(_))),
        "{:?}",
        run.result.err()
    );
    assert_eq!(
        run.seen.len(),
        1,
        "a stop, not a skip: nothing after the tripping batch is sent"
    );
    let parked: Vec<String> = dlq(&run).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        parked,
        ["0/1:0", "0/1:1", "0/1:2", "0/1:3"],
        "parked durably"
    );
    let committed = run.progress.sinks()[0].take_dirty().unwrap().1;
    assert_eq!(
        committed.position,
        Position::new(Lsn(1), 3),
        "the offset passes what is parked (a purge is final), and no further"
    );
}

#[tokio::test]
async fn retrying_stops_after_max_elapsed_and_never_drops() {
    let mut s = settings();
    s.retry.max_elapsed = Duration::from_millis(30);
    let script = (0..1000).map(|_| vec![Delivery::retry("down")]).collect();
    let run = drive(vec![event(1, 0)], Offset::default(), script, &[], s).await;
    assert!(matches!(run.result, Err(SinkStop::RetriesExhausted { .. })));
    assert!(run.seen.len() > 2, "it retried before giving up");
    assert!(run.progress.sinks()[0].take_dirty().is_none());
}

#[tokio::test]
async fn transforms_fan_out_and_park_what_they_fail_with_their_stage() {
    use crate::chain::tests::{event as n_event, ByN};
    let record = |e: Arc<Event>| Arc::new(Record::new(e));
    let entries = vec![
        Entry::Event(record(n_event(0, 1))),
        Entry::Event(record(n_event(1, 2))),
        Entry::Event(record(n_event(2, -1))),
        Entry::Event(record(n_event(3, 0))),
    ];
    let run = drive_with(
        entries,
        Offset::default(),
        vec![],
        &[],
        settings(),
        Chain::new(vec![Box::new(ByN("redact"))]),
        Chain::new(vec![Box::new(ByN("doc"))]),
    )
    .await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    let sent: Vec<String> = run.seen.concat().iter().map(|p| p.to_string()).collect();
    // 0 maps, 1 fans out to 2 then 4 events (both chains), 2 fails, 3 is dropped.
    assert_eq!(sent, ["0/1:0", "0/1:1", "0/1:1", "0/1:1", "0/1:1"]);
    let store = run.store.lock();
    let parked = store.dlq_list(&DlqFilter::default()).unwrap();
    assert_eq!(parked.len(), 1);
    let e = &parked[0];
    assert_eq!(
        (e.event_id.as_str(), e.stage.as_str(), e.error.as_str()),
        ("0/1:2", "redact", "n is -1")
    );
    assert_eq!(e.config_hash, "f", "the failing transform's fingerprint");
    let original: serde_json::Value = serde_json::from_slice(&e.original).unwrap();
    assert!(
        original["after"].get("redact").is_none(),
        "original: as the source produced it"
    );
    let committed = run.progress.sinks()[0].take_dirty().unwrap().1;
    assert_eq!(
        committed.position,
        Position::new(Lsn(1), 3),
        "offsets count source events"
    );
}

#[test]
fn backoff_grows_to_the_cap_with_jitter() {
    let mut s = settings().retry;
    s.initial = Duration::from_millis(100);
    s.max = Duration::from_secs(1);
    for attempt in 0..12 {
        let d = retry::backoff(&s, attempt);
        let full = Duration::from_millis(100 * (1 << attempt.min(10))).min(Duration::from_secs(1));
        assert!(
            d >= full / 2 && d <= full,
            "attempt {attempt}: {d:?} outside [{:?}, {full:?}]",
            full / 2
        );
    }
}

/// A sink with up to `depth` batches in flight whose answers the test releases, in any
/// order, through `gates`.
struct Gated {
    depth: usize,
    gates: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>>,
    sent: Arc<Mutex<Vec<Vec<Position>>>>,
}

#[async_trait]
impl Sink for Gated {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        self.send(batch).await.await
    }

    fn max_in_flight(&self) -> usize {
        self.depth
    }

    async fn send(&mut self, batch: &[Arc<Event>]) -> crate::sink::Pending {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.gates.lock().unwrap().push(tx);
        self.sent
            .lock()
            .unwrap()
            .push(batch.iter().map(|e| e.position).collect());
        let n = batch.len();
        Box::pin(async move {
            let _ = rx.await;
            vec![Delivery::Delivered; n]
        })
    }
}

#[tokio::test]
async fn pipelined_batches_are_acknowledged_out_of_order_but_offsets_advance_in_order() {
    let gates = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut delivery = settings();
    // A batch per transaction: two events and the commit.
    delivery.batch.max_events = 3;
    let sink = Box::new(Gated {
        depth: 3,
        gates: gates.clone(),
        sent: sent.clone(),
    });
    let (driver, journal, progress) =
        testing::driver(sink, delivery, &Store::new(SqliteStore::in_memory()));
    // Three transactions of two events.
    let mut entries = Vec::new();
    for lsn in [10, 20, 30] {
        entries.extend([event(lsn, 0), event(lsn, 1)]);
        entries.push(Entry::Commit {
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 5),
        });
    }
    journal.append(entries).await;
    journal.close();
    let task = tokio::spawn(async move {
        let mut driver = driver;
        driver.run().await
    });
    let sink = progress.sinks()[0].clone();
    let until = |n: usize| {
        let gates = gates.clone();
        async move {
            while gates.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), until(3))
        .await
        .expect("three batches are handed over before any is answered");
    let offset = || sink.take_dirty().map(|(_, o)| o);
    let release = |i: usize| {
        let gate = std::mem::replace(
            &mut gates.lock().unwrap()[i],
            tokio::sync::oneshot::channel().0,
        );
        gate.send(()).unwrap();
    };
    // The last batch is acknowledged first: the offset must not move past the first.
    release(2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        offset(),
        None,
        "nothing before the first batch was acknowledged"
    );
    release(0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after_first = offset().expect("the first batch completes the offset");
    assert_eq!(after_first.position, Position::new(Lsn(10), 1));
    release(1);
    task.await.unwrap().unwrap();
    let last = offset().expect("then the rest, in order");
    assert_eq!(
        (last.position, last.flush_lsn),
        (Position::new(Lsn(30), 1), Lsn(35))
    );
    assert_eq!(sent.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn hold_keys_keeps_one_batch_in_flight() {
    let gates = Arc::new(Mutex::new(Vec::new()));
    let mut delivery = settings();
    delivery.batch.max_events = 1;
    delivery.dlq.on_key = OnKey::Hold;
    let sink = Box::new(Gated {
        depth: 4,
        gates: gates.clone(),
        sent: Arc::new(Mutex::new(Vec::new())),
    });
    let (driver, journal, _) =
        testing::driver(sink, delivery, &Store::new(SqliteStore::in_memory()));
    journal.append(vec![event(1, 0), event(1, 1)]).await;
    journal.close();
    let task = tokio::spawn(async move {
        let mut driver = driver;
        driver.run().await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        gates.lock().unwrap().len(),
        1,
        "on_key: hold decides from each answer"
    );
    for i in 0..2 {
        while gates.lock().unwrap().len() <= i {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let gate = std::mem::replace(
            &mut gates.lock().unwrap()[i],
            tokio::sync::oneshot::channel().0,
        );
        gate.send(()).unwrap();
    }
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_running_driver_replays_what_an_operator_asks_for_without_rereading_the_queue() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = Store::new(SqliteStore::in_memory());
    let sink = Box::new(Scripted {
        script: VecDeque::from([vec![Delivery::rejected("422 no")]]),
        seen: seen.clone(),
        reject: HashSet::new(),
    });
    let (driver, journal, progress) = testing::driver(sink, settings(), &store);
    let task = tokio::spawn(async move {
        let mut driver = driver;
        driver.run().await
    });
    journal.append(vec![event(1, 0)]).await;
    let parked = || store.lock().dlq_list(&DlqFilter::default()).unwrap();
    while parked().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let version = store.lock().dlq_version().unwrap();
    store
        .lock()
        .dlq_request_replay(&DlqFilter::default())
        .unwrap();
    assert!(store.lock().dlq_version().unwrap() > version);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !parked().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the replay is picked up within a poll");
    journal.close();
    task.await.unwrap().unwrap();
    let sent: Vec<Position> = seen.lock().unwrap().concat();
    assert_eq!(sent, [Position::new(Lsn(1), 0); 2], "sent, then replayed");
    assert_eq!(progress.sinks()[0].counters.replayed.load(relaxed()), 1);
}

#[tokio::test]
async fn a_sink_gets_only_its_tables_and_every_event() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Box::new(Scripted {
        script: VecDeque::new(),
        seen: seen.clone(),
        reject: HashSet::new(),
    });
    let store = Store::new(SqliteStore::in_memory());
    let (mut driver, journal, progress) = testing::driver(sink, settings(), &store);
    driver.tables = TableFilter::new(&[crate::config::TableName::new("public", "orders")]);
    let mut message = testing::event("outbox", Op::Event, 1, 2);
    message.source.table = None;
    journal
        .append(vec![
            Entry::event(testing::event("orders", Op::Insert, 1, 0)),
            Entry::event(testing::event("customers", Op::Insert, 1, 1)),
            Entry::event(message),
            Entry::Commit {
                commit_lsn: Lsn(1),
                end_lsn: Lsn(9),
            },
        ])
        .await;
    journal.close();
    driver.run().await.unwrap();
    let sent: Vec<u32> = seen
        .lock()
        .unwrap()
        .concat()
        .iter()
        .map(|p| p.index)
        .collect();
    assert_eq!(sent, [0, 2], "orders and the event; customers left out");
    let sink = &progress.sinks()[0];
    assert_eq!(sink.counters.filtered.load(relaxed()), 1);
    let (_, offset) = sink.take_dirty().unwrap();
    assert_eq!(
        offset.flush_lsn,
        Lsn(9),
        "a filtered event is finished, not pending"
    );
}
