//! A source kind the engine has never heard of, written here in the test: the engine drives
//! it (open, read, reconnect, de-duplicate, acknowledge, drain) with no change of its own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::engine::{self, EngineOptions, SinkSpec};
use crate::event::{Event, Op};
use crate::journal::Entry;
use crate::lsn::{Lsn, Position};
use crate::shutdown::Shutdown;
use crate::sink::{Delivery, Sink};
use crate::source::{Ack, Acknowledger, Batch, Checkpoint, Source, SourceError, SourceStatus};
use crate::state::{SqliteStore, Store};
use crate::testing;

/// What a session of the scripted source does on each `read`.
enum Step {
    Batch(Batch),
    Fail,
}

fn event(lsn: u64, index: u32) -> Entry {
    Entry::event(testing::event("t", Op::Insert, lsn, index))
}

fn commit(lsn: u64) -> Entry {
    Entry::Commit {
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(lsn + 8),
    }
}

fn batch(entries: Vec<Entry>) -> Step {
    Step::Batch(Batch {
        entries,
        idle: None,
    })
}

#[derive(Default)]
struct Seen {
    checkpoints: Vec<Checkpoint>,
    acks: Vec<Ack>,
    finished: Option<Ack>,
    closes: usize,
}

/// Plays one script per session, then waits forever.
struct Scripted {
    sessions: VecDeque<Vec<Step>>,
    current: VecDeque<Step>,
    seen: Arc<Mutex<Seen>>,
    status: Arc<SourceStatus>,
}

struct Acks(Arc<Mutex<Seen>>);

#[async_trait]
impl Acknowledger for Acks {
    async fn ack(&mut self, ack: Ack) -> Result<(), SourceError> {
        self.0.lock().unwrap().acks.push(ack);
        Ok(())
    }

    async fn finish(self: Box<Self>, ack: Ack) -> Result<(), SourceError> {
        self.0.lock().unwrap().finished = Some(ack);
        Ok(())
    }
}

#[async_trait]
impl Source for Scripted {
    async fn open(&mut self, checkpoint: Checkpoint) -> Result<Box<dyn Acknowledger>, SourceError> {
        self.seen.lock().unwrap().checkpoints.push(checkpoint);
        self.current = self.sessions.pop_front().unwrap_or_default().into();
        Ok(Box::new(Acks(self.seen.clone())))
    }

    async fn read(&mut self) -> Result<Batch, SourceError> {
        match self.current.pop_front() {
            Some(Step::Batch(b)) => Ok(b),
            Some(Step::Fail) => Err(SourceError::transient("connection reset")),
            None => std::future::pending().await,
        }
    }

    async fn close(&mut self) {
        self.seen.lock().unwrap().closes += 1;
    }

    fn status(&self) -> Arc<SourceStatus> {
        self.status.clone()
    }
}

struct Recording(Arc<Mutex<Vec<Position>>>);

#[async_trait]
impl Sink for Recording {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        self.0
            .lock()
            .unwrap()
            .extend(batch.iter().map(|e| e.position));
        vec![Delivery::Delivered; batch.len()]
    }
}

fn options() -> EngineOptions {
    EngineOptions {
        pipeline: "p".into(),
        admin: None,
        journal: crate::engine::JournalOptions::Memory { capacity: 100 },
        drain_timeout: Duration::from_secs(5),
        commit_interval: Duration::from_millis(10),
        ack_interval: Duration::from_millis(50),
        transforms: Vec::new(),
    }
}

#[tokio::test]
async fn the_engine_drives_any_source_reconnects_drops_resent_events_and_drains() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let status = Arc::new(SourceStatus::default());
    let source = Scripted {
        sessions: VecDeque::from([
            // Session 1: a whole transaction, half of the next one, then the connection drops.
            vec![
                batch(vec![event(0x10, 0), event(0x10, 1), commit(0x10)]),
                batch(vec![event(0x20, 0)]),
                Step::Fail,
            ],
            // Session 2: the upstream resends from the checkpoint, then goes idle.
            vec![
                batch(vec![event(0x10, 0), event(0x10, 1), commit(0x10)]),
                batch(vec![event(0x20, 0), event(0x20, 1), commit(0x20)]),
                Step::Batch(Batch {
                    entries: vec![],
                    idle: Some(Lsn(0x500)),
                }),
            ],
        ]),
        current: VecDeque::new(),
        seen: seen.clone(),
        status: status.clone(),
    };
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let sinks = vec![SinkSpec {
        name: "s".into(),
        sink: Box::new(Recording(delivered.clone())),
        delivery: Default::default(),
        config_hash: "h".into(),
        transforms: Vec::new(),
        tables: Vec::new(),
    }];
    let store = Store::new(SqliteStore::in_memory());
    let shutdown = Shutdown::new();
    let run = tokio::spawn(engine::run(
        options(),
        store.clone(),
        sinks,
        Box::new(source),
        shutdown.clone(),
    ));

    // The idle mark lets the acknowledged position pass everything the sink finished.
    tokio::time::timeout(Duration::from_secs(10), async {
        while status.acknowledged() < Lsn(0x500) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the engine acknowledges through the idle mark");
    shutdown.drain();
    run.await.unwrap().expect("a clean drain");

    let p = |lsn, i| Position::new(Lsn(lsn), i);
    assert_eq!(
        *delivered.lock().unwrap(),
        [p(0x10, 0), p(0x10, 1), p(0x20, 0), p(0x20, 1)],
        "every event once, in order, though the upstream sent some twice"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.checkpoints.len(), 2, "opened again after the failure");
    assert_eq!(
        status.reconnects.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(
        seen.acks.windows(2).all(|w| w[0].through <= w[1].through),
        "acknowledgements never go back: {:?}",
        seen.acks
    );
    assert!(
        seen.acks.iter().all(|a| a.through <= Lsn(0x500)),
        "never more than was made durable"
    );
    assert_eq!(seen.finished.map(|a| a.through), Some(Lsn(0x500)));
    assert_eq!(seen.closes, 2, "each session is closed");
    let offsets = store.lock().offsets().unwrap();
    assert_eq!(offsets["s"].position, p(0x20, 1));
    assert_eq!(offsets["s"].flush_lsn, Lsn(0x28));
}

#[tokio::test]
async fn a_fatal_source_error_ends_the_run_and_the_sinks_drain() {
    struct Broken(Arc<SourceStatus>);
    #[async_trait]
    impl Source for Broken {
        async fn open(&mut self, _: Checkpoint) -> Result<Box<dyn Acknowledger>, SourceError> {
            Err(SourceError::fatal("the slot was lost"))
        }
        async fn read(&mut self) -> Result<Batch, SourceError> {
            unreachable!("never opened")
        }
        fn status(&self) -> Arc<SourceStatus> {
            self.0.clone()
        }
    }
    let sinks = vec![SinkSpec {
        name: "s".into(),
        sink: Box::new(Recording(Default::default())),
        delivery: Default::default(),
        config_hash: "h".into(),
        transforms: Vec::new(),
        tables: Vec::new(),
    }];
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        engine::run(
            options(),
            Store::new(SqliteStore::in_memory()),
            sinks,
            Box::new(Broken(Default::default())),
            Shutdown::new(),
        ),
    )
    .await
    .expect("a fatal error does not hang");
    let e = result.unwrap_err();
    assert!(e.to_string().contains("the slot was lost"), "{e}");
}
