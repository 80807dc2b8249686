//! The journal: the ordered log between the source and the sinks.
//!
//! The source appends decoded events and transaction ends; every sink reads the journal
//! at its own cursor, in its own task. The journal is bounded: when the slowest attached
//! reader is `capacity` entries behind, `append` waits (the source pauses, and Postgres
//! keeps the WAL). A reader that stops for good (a stopped sink) detaches, so it no longer
//! holds the others back; it resumes from its committed offset at the next start, because
//! the slot never confirms past it.
//!
//! This implementation lives in memory. The contract — append in order, read from a
//! sequence number, detach — is what a durable journal must keep; sinks only see
//! [`Journal::read`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::chain::ChainOutput;
use crate::event::Event;
use crate::lsn::Lsn;

/// One entry of the journal.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A change, outbox row or message.
    Event(Arc<Record>),
    /// The end of a transaction: everything of `commit_lsn` before it is in the journal.
    /// A sink that has delivered up to here may let Postgres forget WAL before `end_lsn`.
    Commit { commit_lsn: Lsn, end_lsn: Lsn },
}

impl Entry {
    /// An entry for a new event.
    pub fn event(event: Event) -> Entry {
        Entry::Event(Arc::new(Record::new(Arc::new(event))))
    }
}

/// A journaled event and what is derived from it once for every sink. The event stays
/// plain data; derived results live here, beside it.
#[derive(Debug)]
pub struct Record {
    pub event: Arc<Event>,
    /// The pipeline-level transform chain's result for this event, computed by the first
    /// sink driver that needs it and shared by the others ([`crate::chain::pipeline_outputs`]).
    /// `None`: the chain kept the event as it is (nothing to allocate for it).
    pub(crate) staged: OnceLock<Option<Arc<ChainOutput>>>,
}

impl Record {
    pub fn new(event: Arc<Event>) -> Self {
        Record {
            event,
            staged: OnceLock::new(),
        }
    }
}

/// Identifies one reader (one sink).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaderId(usize);

struct Inner {
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry>,
    /// Next sequence number each reader will read; `None` once detached.
    cursors: Vec<Option<u64>>,
    closed: bool,
}

impl Inner {
    fn head(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    fn trim(&mut self) -> bool {
        let Some(min) = self.cursors.iter().flatten().min().copied() else {
            let trimmed = !self.entries.is_empty();
            self.base = self.head();
            self.entries.clear();
            return trimmed;
        };
        let n = (min - self.base) as usize;
        self.entries.drain(..n);
        self.base = min;
        n > 0
    }
}

pub struct Journal {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Woken when entries are appended or the journal closes.
    data: Notify,
    /// Woken when readers free space.
    space: Notify,
}

impl Journal {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Journal {
            inner: Mutex::new(Inner {
                base: 0,
                entries: VecDeque::new(),
                cursors: Vec::new(),
                closed: false,
            }),
            capacity: capacity.max(1),
            data: Notify::new(),
            space: Notify::new(),
        })
    }

    /// Add a reader that starts at the current head.
    pub fn register(&self) -> ReaderId {
        let mut inner = self.inner.lock().unwrap();
        let head = inner.head();
        inner.cursors.push(Some(head));
        ReaderId(inner.cursors.len() - 1)
    }

    /// The sequence number the next appended entry will get.
    pub fn head(&self) -> u64 {
        self.inner.lock().unwrap().head()
    }

    /// Entries held in memory (the queue of the slowest reader).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries a reader has not read yet.
    pub fn backlog(&self, reader: ReaderId) -> u64 {
        let inner = self.inner.lock().unwrap();
        inner.cursors[reader.0].map_or(0, |c| inner.head() - c)
    }

    /// Commit time (µs since the epoch) of the first event this reader has not read yet.
    pub fn oldest_unread_ts(&self, reader: ReaderId) -> Option<i64> {
        let inner = self.inner.lock().unwrap();
        let cursor = inner.cursors[reader.0]?;
        let start = (cursor - inner.base) as usize;
        inner.entries.range(start..).find_map(|e| match e {
            Entry::Event(r) => Some(r.event.source.ts_micros),
            Entry::Commit { .. } => None,
        })
    }

    /// Append entries in order, waiting while the journal is full. Returns the sequence
    /// number after the last appended entry (the new head).
    pub async fn append(&self, entries: Vec<Entry>) -> u64 {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut inner = self.inner.lock().unwrap();
                if inner.entries.len() < self.capacity || inner.cursors.iter().all(Option::is_none)
                {
                    inner.entries.extend(entries);
                    if inner.cursors.iter().all(Option::is_none) {
                        inner.trim();
                    }
                    let head = inner.head();
                    drop(inner);
                    self.data.notify_waiters();
                    return head;
                }
            }
            tracing::debug!(
                capacity = self.capacity,
                "journal full: the source waits for the slowest sink"
            );
            space.await;
        }
    }

    /// Read up to `max` entries at the reader's cursor. Waits for the first entry; once one
    /// is there, waits at most `max_wait` for the batch to fill. Returns the sequence number
    /// of the first entry and the entries; `None` when the journal is closed and this reader
    /// has read everything.
    pub async fn read(
        &self,
        reader: ReaderId,
        max: usize,
        max_wait: Duration,
    ) -> Option<(u64, Vec<Entry>)> {
        let mut deadline: Option<Instant> = None;
        loop {
            let data = self.data.notified();
            tokio::pin!(data);
            data.as_mut().enable();
            {
                let mut inner = self.inner.lock().unwrap();
                let cursor = inner.cursors[reader.0].expect("a detached reader does not read");
                let available = (inner.head() - cursor) as usize;
                let full = available >= max;
                let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
                if available > 0 && (full || timed_out || inner.closed || max_wait.is_zero()) {
                    let n = available.min(max);
                    let start = (cursor - inner.base) as usize;
                    let batch: Vec<Entry> =
                        inner.entries.range(start..start + n).cloned().collect();
                    inner.cursors[reader.0] = Some(cursor + n as u64);
                    let freed = inner.trim();
                    drop(inner);
                    if freed {
                        self.space.notify_waiters();
                    }
                    return Some((cursor, batch));
                }
                if available == 0 && inner.closed {
                    return None;
                }
                if available > 0 && deadline.is_none() {
                    deadline = Some(Instant::now() + max_wait);
                }
            }
            match deadline {
                Some(d) => {
                    let _ = tokio::time::timeout_at(d, data).await;
                }
                None => data.await,
            }
        }
    }

    /// Stop holding entries for this reader (its sink stopped).
    pub fn detach(&self, reader: ReaderId) {
        tracing::debug!(reader = reader.0, "journal reader detached");
        let mut inner = self.inner.lock().unwrap();
        inner.cursors[reader.0] = None;
        inner.trim();
        drop(inner);
        self.space.notify_waiters();
    }

    /// No more entries will come: readers drain what is there, then `read` returns `None`.
    pub fn close(&self) {
        self.inner.lock().unwrap().closed = true;
        self.data.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(n: u64) -> Entry {
        Entry::Commit {
            commit_lsn: Lsn(n),
            end_lsn: Lsn(n + 1),
        }
    }

    fn lsn_of(e: &Entry) -> u64 {
        match e {
            Entry::Commit { commit_lsn, .. } => commit_lsn.0,
            Entry::Event(_) => unreachable!(),
        }
    }

    #[tokio::test]
    async fn each_reader_sees_every_entry_in_order() {
        let j = Journal::new(100);
        let (a, b) = (j.register(), j.register());
        j.append((0..10).map(commit).collect()).await;
        j.close();
        for r in [a, b] {
            let mut seen = Vec::new();
            while let Some((_, batch)) = j.read(r, 3, Duration::ZERO).await {
                seen.extend(batch.iter().map(lsn_of));
            }
            assert_eq!(seen, (0..10).collect::<Vec<_>>());
        }
        assert!(j.is_empty());
    }

    #[tokio::test]
    async fn a_full_journal_pauses_the_writer_until_the_slowest_reader_moves() {
        let j = Journal::new(4);
        let r = j.register();
        j.append((0..4).map(commit).collect()).await;
        let writer = {
            let j = j.clone();
            tokio::spawn(async move { j.append(vec![commit(4)]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !writer.is_finished(),
            "append must wait while the journal is full"
        );
        let (seq, batch) = j.read(r, 2, Duration::ZERO).await.unwrap();
        assert_eq!((seq, batch.len()), (0, 2));
        assert_eq!(writer.await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_detached_reader_no_longer_holds_space() {
        let j = Journal::new(2);
        let (slow, fast) = (j.register(), j.register());
        j.append((0..2).map(commit).collect()).await;
        j.read(fast, 10, Duration::ZERO).await.unwrap();
        j.detach(slow);
        tokio::time::timeout(Duration::from_secs(1), j.append(vec![commit(2)]))
            .await
            .expect("space is freed once the slow reader detaches");
    }

    #[tokio::test]
    async fn read_waits_up_to_max_wait_to_fill_a_batch() {
        let j = Journal::new(100);
        let r = j.register();
        j.append(vec![commit(0)]).await;
        let j2 = j.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            j2.append(vec![commit(1)]).await;
        });
        let (_, batch) = j.read(r, 10, Duration::from_millis(200)).await.unwrap();
        assert_eq!(batch.len(), 2, "the second entry arrived within max_wait");
        let started = Instant::now();
        j.append(vec![commit(2)]).await;
        let (_, batch) = j.read(r, 10, Duration::from_millis(30)).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
