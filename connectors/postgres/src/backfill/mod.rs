//! Backfills: a table's current rows copied into the stream, chunk by chunk, while the
//! stream keeps flowing (the watermark technique of Netflix's DBLog).
//!
//! For each chunk the [`runner`] writes a low watermark into the WAL (a transactional
//! logical message with the prefix [`BACKFILL_PREFIX`]), reads the chunk's rows in key
//! order in a repeatable-read transaction, hands them over here, and writes a high
//! watermark. The stream side ([`Tap`], inside the event builder) opens a window at the low
//! watermark and notes the key of every change of the table until the high one; at the high
//! watermark it emits the chunk's rows as `op: read` events, except those whose keys
//! changed inside the window (the stream carries their newer state itself), at the high
//! watermark's position. A row copied is therefore never older than a change placed before
//! it, and every change after it is newer.
//!
//! One more case: a transaction whose commit record precedes the low watermark may still be
//! finishing when the chunk's snapshot is taken, so the rows do not show it although the
//! stream placed it before the window. The snapshot names the transactions it saw in
//! progress; when one of them committed before the window (the tap remembers recent
//! commits), the chunk is read again.
//!
//! A watermark carries this process's run id: a restarted process ignores the watermarks of
//! the last one that the slot sends again (their rows were journaled or are read again from
//! the cursor the state store kept).

pub mod copy;
pub mod runner;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_runtime::{Event, Lsn, Row};
use tokio::sync::{oneshot, watch};

/// The logical message prefix of backfill watermarks (reserved: never a user message).
pub const BACKFILL_PREFIX: &str = "sluice.backfill";

/// How many recent commits the tap remembers for the snapshot check.
const RECENT_COMMITS: usize = 8192;

/// Windows kept at most (a runner that failed between its watermarks leaves one open).
const OPEN_WINDOWS: usize = 16;

/// A window open longer than this is one whose runner gave up: it is closed.
const WINDOW_LIFE: Duration = Duration::from_secs(600);

/// A watermark's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The process that wrote it ([`Handoff::run`]).
    pub run: u64,
    pub backfill: i64,
    pub chunk: u64,
    pub high: bool,
    /// The table's OID.
    pub table: u32,
}

impl Mark {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a mark encodes as JSON")
    }
}

/// A chunk read and waiting for its high watermark in the stream.
pub struct Chunk {
    /// (key, row) in key order.
    pub rows: Vec<(Row, Row)>,
    /// Transactions the chunk's snapshot saw in progress.
    pub in_progress: Vec<u32>,
    /// The sinks its rows are for; `None`: every sink.
    pub sinks: Option<Arc<[Arc<str>]>>,
    /// The table's schema and name, for the events' `source`.
    pub schema: Arc<str>,
    pub name: Arc<str>,
    /// Told what became of the chunk.
    pub reply: oneshot::Sender<Outcome>,
}

/// A chunk's rows as the stream is to emit them at its high watermark.
pub struct Due {
    /// The table's OID.
    pub table: u32,
    pub rows: Vec<(Row, Row)>,
    pub sinks: Option<Arc<[Arc<str>]>>,
    pub schema: Arc<str>,
    pub name: Arc<str>,
    /// Which rows stand.
    pub verdict: Verdict,
}

/// What a chunk's window saw: which of its rows still stand.
pub struct Verdict {
    changed: HashSet<u64>,
    truncated: bool,
}

/// A chunk's events, shared.
pub type Events = Arc<[Arc<Event>]>;

/// What a high watermark asks of the stream.
pub enum AtMark {
    /// The chunk's rows, to emit (those that stand) and then report with [`Tap::emitted`]
    /// and the reply.
    Fresh {
        due: Due,
        reply: oneshot::Sender<Outcome>,
        id: (i64, u64),
    },
    /// A high watermark met again (a new session): the events emitted the first time.
    Again(Events),
}

/// What the stream did with a chunk at its high watermark.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its rows (but those changed in the window) are in the transaction committed at
    /// `commit_lsn`.
    Emitted { commit_lsn: Lsn, rows: usize },
    /// The snapshot missed a transaction the stream placed before the window: read the
    /// chunk again.
    Again,
}

/// What the runner and the stream share.
pub struct Handoff {
    /// This process's id in watermarks.
    pub run: u64,
    chunks: Mutex<HashMap<(i64, u64), Chunk>>,
    /// What the slot was last told it may forget (every sink durably has it, or the
    /// journal does): a chunk's progress is recorded once this passes its high watermark.
    pub confirmed: watch::Sender<Lsn>,
}

impl Handoff {
    pub fn new() -> Arc<Handoff> {
        Arc::new(Handoff {
            run: rand::random::<u64>() >> 1,
            chunks: Mutex::new(HashMap::new()),
            confirmed: watch::Sender::new(Lsn(0)),
        })
    }

    /// Leave a chunk for the stream to pick up at its high watermark.
    pub fn offer(&self, backfill: i64, chunk: u64, rows: Chunk) {
        self.chunks.lock().unwrap().insert((backfill, chunk), rows);
    }

    /// Take back a chunk whose high watermark could not be written.
    pub fn withdraw(&self, backfill: i64, chunk: u64) {
        self.chunks.lock().unwrap().remove(&(backfill, chunk));
    }

    fn take(&self, backfill: i64, chunk: u64) -> Option<Chunk> {
        self.chunks.lock().unwrap().remove(&(backfill, chunk))
    }
}

/// A chunk's window: from its low watermark to its high one.
#[derive(Debug)]
struct Window {
    table: u32,
    /// The low watermark's commit.
    low: Lsn,
    /// Ordering keys of the table's rows changed inside the window.
    changed: HashSet<u64>,
    /// The table was truncated inside the window: none of the chunk's rows stand.
    truncated: bool,
    opened: Instant,
}

impl Verdict {
    /// Whether a read of the chunk made into `event` still stands (its key did not change
    /// in the window).
    pub fn stands(&self, event: &Event) -> bool {
        if self.truncated {
            return false;
        }
        self.changed.is_empty()
            || event
                .ordering_key()
                .is_none_or(|k| !self.changed.contains(&k))
    }
}

/// The stream side of backfills, kept by the event builder across sessions.
pub struct Tap {
    handoff: Arc<Handoff>,
    windows: HashMap<(i64, u64), Window>,
    /// The tables with an open window (most often none: one look per change).
    watched: HashSet<u32>,
    /// Recent commits (xid, commit LSN), oldest first.
    recent: VecDeque<(u32, Lsn)>,
    /// Chunks emitted and not confirmed yet, by their high watermark's commit: a session
    /// that ends before their rows are journaled gets the watermark again and emits them
    /// again, the same.
    emitted: HashMap<(i64, u64), (Lsn, Events)>,
}

impl Tap {
    pub fn new(handoff: Arc<Handoff>) -> Tap {
        Tap {
            handoff,
            windows: HashMap::new(),
            watched: HashSet::new(),
            recent: VecDeque::with_capacity(RECENT_COMMITS),
            emitted: HashMap::new(),
        }
    }

    /// A change of table `rel_id` in the stream.
    pub fn changed(&mut self, rel_id: u32, event: &Event) {
        if !self.watched.contains(&rel_id) {
            return;
        }
        let Some(key) = event.ordering_key() else {
            return;
        };
        for w in self.windows.values_mut().filter(|w| w.table == rel_id) {
            w.changed.insert(key);
        }
    }

    /// Table `rel_id` was truncated.
    pub fn truncated(&mut self, rel_id: u32) {
        if !self.watched.contains(&rel_id) {
            return;
        }
        for w in self.windows.values_mut().filter(|w| w.table == rel_id) {
            w.truncated = true;
        }
    }

    /// A transaction committed.
    pub fn committed(&mut self, xid: u32, commit_lsn: Lsn) {
        if self.recent.len() == RECENT_COMMITS {
            self.recent.pop_front();
        }
        self.recent.push_back((xid, commit_lsn));
    }

    /// A watermark in the transaction committing at `commit_lsn`. A high one whose chunk
    /// is waiting gives its rows back, with what its window saw; a chunk its snapshot got
    /// wrong is sent back to be read again, and `None` returned. A high watermark met
    /// again (a new session) gives back the events emitted the first time.
    pub fn mark(&mut self, content: &[u8], commit_lsn: Lsn) -> Option<AtMark> {
        let mark: Mark = match serde_json::from_slice(content) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "a backfill watermark this build does not read; ignored");
                return None;
            }
        };
        if mark.run != self.handoff.run {
            // Another process's (an earlier run, or another pipeline on this database).
            return None;
        }
        let id = (mark.backfill, mark.chunk);
        if !mark.high {
            // A runner that failed between its watermarks tries the chunk again under a
            // new number: its old window is of no use.
            self.windows.retain(|(b, c), w| {
                !(*b == mark.backfill && *c < mark.chunk) && w.opened.elapsed() < WINDOW_LIFE
            });
            if self.windows.len() >= OPEN_WINDOWS {
                if let Some(oldest) = self.windows.keys().min().copied() {
                    self.windows.remove(&oldest);
                }
            }
            self.windows.entry(id).or_insert(Window {
                table: mark.table,
                low: commit_lsn,
                changed: HashSet::new(),
                truncated: false,
                opened: Instant::now(),
            });
            self.rewatch();
            return None;
        }
        let confirmed = *self.handoff.confirmed.borrow();
        self.emitted.retain(|_, (commit, _)| *commit >= confirmed);
        if let Some((_, events)) = self.emitted.get(&id) {
            return Some(AtMark::Again(events.clone()));
        }
        let window = self.windows.remove(&id);
        self.rewatch();
        let chunk = self.handoff.take(mark.backfill, mark.chunk)?;
        let Some(window) = window else {
            // Its low watermark was never seen in this process: nothing says what changed.
            let _ = chunk.reply.send(Outcome::Again);
            return None;
        };
        let missed = chunk.in_progress.iter().any(|x| {
            self.recent
                .iter()
                .any(|(xid, lsn)| xid == x && *lsn < window.low)
        });
        if missed {
            tracing::debug!(
                backfill = mark.backfill,
                chunk = mark.chunk,
                "a transaction finishing at the snapshot: reading the chunk again"
            );
            let _ = chunk.reply.send(Outcome::Again);
            return None;
        }
        let due = Due {
            table: window.table,
            rows: chunk.rows,
            sinks: chunk.sinks,
            schema: chunk.schema,
            name: chunk.name,
            verdict: Verdict {
                changed: window.changed,
                truncated: window.truncated,
            },
        };
        Some(AtMark::Fresh {
            due,
            reply: chunk.reply,
            id,
        })
    }

    /// The events a fresh chunk became, kept until the slot confirms them: a session that
    /// ends before they are journaled meets the high watermark again and emits them again.
    pub fn emitted(&mut self, id: (i64, u64), commit_lsn: Lsn, events: Events) {
        self.emitted.insert(id, (commit_lsn, events));
    }

    fn rewatch(&mut self) {
        self.watched = self.windows.values().map(|w| w.table).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::testing;
    use sluice_runtime::{Op, Value};

    fn mark(tap: &Tap, chunk: u64, high: bool) -> Vec<u8> {
        Mark {
            run: tap.handoff.run,
            backfill: 1,
            chunk,
            high,
            table: 42,
        }
        .to_json()
        .into_bytes()
    }

    fn row(id: i64) -> Row {
        let mut r = Row::default();
        r.push("id".into(), Value::Int(id));
        r
    }

    fn offer(
        handoff: &Handoff,
        chunk: u64,
        ids: &[i64],
        in_progress: Vec<u32>,
    ) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        handoff.offer(
            1,
            chunk,
            Chunk {
                rows: ids.iter().map(|&i| (row(i), row(i))).collect(),
                in_progress,
                sinks: None,
                schema: "public".into(),
                name: "t".into(),
                reply: tx,
            },
        );
        rx
    }

    fn fresh(at: Option<AtMark>) -> Due {
        match at {
            Some(AtMark::Fresh { due, .. }) => due,
            _ => panic!("a fresh chunk is due"),
        }
    }

    fn change(id: i64) -> Event {
        let mut e = testing::event("t", Op::Update, 0x50, 0);
        e.key = Some(row(id));
        e
    }

    fn read(id: i64) -> Event {
        let mut e = testing::event("t", Op::Read, 0x90, 1);
        e.key = Some(row(id));
        e
    }

    #[test]
    fn rows_changed_inside_the_window_do_not_stand() {
        let handoff = Handoff::new();
        let mut tap = Tap::new(handoff.clone());
        tap.changed(42, &change(1)); // before the window: irrelevant
        assert!(tap.mark(&mark(&tap, 1, false), Lsn(0x40)).is_none());
        tap.changed(42, &change(2));
        tap.changed(7, &change(3)); // another table
        let _rx = offer(&handoff, 1, &[1, 2, 3], vec![]);
        let due = fresh(tap.mark(&mark(&tap, 1, true), Lsn(0x90)));
        assert!(due.verdict.stands(&read(1)));
        assert!(!due.verdict.stands(&read(2)), "changed in the window");
        assert!(due.verdict.stands(&read(3)));
        assert!(tap.watched.is_empty(), "the window is closed");
    }

    #[test]
    fn a_truncate_in_the_window_drops_the_chunk() {
        let handoff = Handoff::new();
        let mut tap = Tap::new(handoff.clone());
        tap.mark(&mark(&tap, 1, false), Lsn(0x40));
        tap.truncated(42);
        let _rx = offer(&handoff, 1, &[1], vec![]);
        let due = fresh(tap.mark(&mark(&tap, 1, true), Lsn(0x90)));
        assert!(!due.verdict.stands(&read(1)));
    }

    #[test]
    fn a_snapshot_that_missed_a_commit_before_the_window_is_read_again() {
        let handoff = Handoff::new();
        let mut tap = Tap::new(handoff.clone());
        tap.committed(700, Lsn(0x30));
        tap.mark(&mark(&tap, 1, false), Lsn(0x40));
        tap.committed(701, Lsn(0x50)); // inside the window: its keys are tracked
        let mut rx = offer(&handoff, 1, &[1], vec![701]);
        fresh(tap.mark(&mark(&tap, 1, true), Lsn(0x90)));
        assert!(rx.try_recv().is_err(), "nothing said: the caller emits");

        tap.mark(&mark(&tap, 2, false), Lsn(0xa0));
        let mut rx = offer(&handoff, 2, &[1], vec![700, 999]);
        assert!(tap.mark(&mark(&tap, 2, true), Lsn(0xb0)).is_none());
        assert_eq!(rx.try_recv().unwrap(), Outcome::Again);
    }

    #[test]
    fn a_high_watermark_met_again_gives_the_same_events_until_confirmed() {
        let handoff = Handoff::new();
        let mut tap = Tap::new(handoff.clone());
        tap.mark(&mark(&tap, 1, false), Lsn(0x40));
        let _rx = offer(&handoff, 1, &[1, 2], vec![]);
        let Some(AtMark::Fresh { id, .. }) = tap.mark(&mark(&tap, 1, true), Lsn(0x90)) else {
            panic!("a fresh chunk is due");
        };
        let events: Arc<[Arc<Event>]> = vec![Arc::new(read(1))].into();
        tap.emitted(id, Lsn(0x90), events.clone());
        let Some(AtMark::Again(again)) = tap.mark(&mark(&tap, 1, true), Lsn(0x90)) else {
            panic!("met again");
        };
        assert!(Arc::ptr_eq(&events, &again));
        handoff.confirmed.send_replace(Lsn(0x91));
        assert!(
            tap.mark(&mark(&tap, 1, true), Lsn(0x90)).is_none(),
            "confirmed: forgotten"
        );
    }

    #[test]
    fn watermarks_of_another_run_are_ignored() {
        let handoff = Handoff::new();
        let mut tap = Tap::new(handoff.clone());
        let foreign = Mark {
            run: handoff.run + 1,
            backfill: 1,
            chunk: 1,
            high: false,
            table: 42,
        };
        tap.mark(foreign.to_json().as_bytes(), Lsn(0x40));
        assert!(tap.windows.is_empty());
        assert!(tap.mark(b"not json", Lsn(0x41)).is_none());
    }

    #[test]
    fn a_retried_chunk_closes_the_window_of_its_failed_attempt() {
        let handoff = Handoff::new();
        let mut tap = Tap::new(handoff.clone());
        tap.mark(&mark(&tap, 1, false), Lsn(0x40));
        tap.mark(&mark(&tap, 2, false), Lsn(0x50));
        assert_eq!(tap.windows.len(), 1);
        assert!(tap.windows.contains_key(&(1, 2)));
    }
}
