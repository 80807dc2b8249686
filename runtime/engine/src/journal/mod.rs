//! The journal: the ordered log between the source and the sinks.
//!
//! The source appends decoded events and transaction ends; every sink reads the journal
//! at its own cursor, in its own task. Entries are numbered (sequence numbers) in append
//! order, and their positions increase along them.
//!
//! Two kinds (`journal.type`):
//!
//! - **disk** ([`Journal::open_disk`], the default): every entry is also written to segment
//!   files ([`disk`]) by a writer thread with group commit, and the slot may confirm what
//!   is durable there, whatever the sinks have done. The newest `capacity` entries stay in
//!   memory as well; a sink that falls behind them reads from the files, at its own pace,
//!   and holds back no one. The source pauses only when the files reach `max_bytes`.
//!   Finished segments are kept for `retention` (for `sluice rewind`).
//! - **memory** ([`Journal::memory`]): bounded by `capacity` entries behind the slowest
//!   attached reader; when it is full `append` waits (the source pauses, and Postgres keeps
//!   the WAL). The slot confirms only what every sink made durable.
//!
//! A reader that stops for good (a stopped sink) detaches, so it no longer holds the memory
//! back; it resumes from its committed offset later ([`Journal::reattach`]).

mod disk;
#[cfg(test)]
mod tests_disk;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

pub use disk::{first_at_or_after, inspect, DiskConfig, DiskError, Inspection, Synced};
use disk::{DiskCursor, DiskLog};

use crate::lsn::Position;

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
    /// The newest entries (memory: every entry a reader still needs).
    entries: VecDeque<Entry>,
    /// Next sequence number each reader will read; `None` once detached.
    cursors: Vec<Option<u64>>,
    closed: bool,
}

impl Inner {
    fn head(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// Memory: drop what every attached reader has read. Disk: also drop the oldest
    /// entries past `capacity`, once they are written (readers behind read the files).
    fn trim(&mut self, capacity: usize, written: Option<u64>) -> bool {
        let min = self
            .cursors
            .iter()
            .flatten()
            .min()
            .copied()
            .unwrap_or(self.head());
        let mut n = min.saturating_sub(self.base) as usize;
        if let Some(written) = written {
            let over = self.entries.len().saturating_sub(capacity);
            n = n.max(over);
            n = n.min(written.saturating_sub(self.base) as usize);
        }
        let n = n.min(self.entries.len());
        self.entries.drain(..n);
        self.base += n as u64;
        n > 0
    }
}

/// The disk half of a disk journal.
struct Disk {
    log: Arc<DiskLog>,
    /// To the writer thread; `None` once closed.
    writer: Mutex<Option<std::sync::mpsc::Sender<disk::Batch>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Each reader's place in the files.
    cursors: Mutex<Vec<Arc<tokio::sync::Mutex<DiskCursor>>>>,
    /// Every sink has durably finished the entries before this.
    finished: AtomicU64,
    /// The files reached `max_bytes` and the source waits.
    full: AtomicBool,
}

pub struct Journal {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Woken when entries are appended or the journal closes.
    data: Notify,
    /// Woken when readers (memory) or trims (disk) free space.
    space: Notify,
    disk: Option<Disk>,
}

/// What [`Journal::open_disk`] found in the folder.
#[derive(Debug)]
pub struct DiskOpened {
    /// This journal's identity (kept in its folder).
    pub id: String,
    /// Whether the folder held no journal: it was created now.
    pub created: bool,
    /// Everything the journal ever held is after this LSN.
    pub start_lsn: crate::lsn::Lsn,
    /// What is durable: the source resumes after `end_lsn`.
    pub synced: Synced,
    /// The last event journaled: the source's resent events at or before it are dropped.
    pub last: Option<Position>,
}

impl Journal {
    /// A journal in memory holding at most `capacity` entries behind the slowest reader.
    pub fn memory(capacity: usize) -> Arc<Self> {
        Arc::new(Self::with(capacity, 0, None))
    }

    /// The journal in `config.dir` (created when missing, a torn tail cut), keeping the
    /// newest `capacity` entries in memory as well. `start_lsn`: for a new journal, the LSN
    /// after which it holds everything (where the source will resume).
    pub fn open_disk(
        config: DiskConfig,
        capacity: usize,
        start_lsn: crate::lsn::Lsn,
    ) -> Result<(Arc<Self>, DiskOpened), DiskError> {
        let opened = DiskLog::open(config, start_lsn)?;
        let log = opened.log.clone();
        let first = log.first_seq();
        let writer = disk::Writer::new(log.clone())?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sluice-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| DiskError {
                dir: log.config.dir.display().to_string(),
                what: format!("cannot start the writer thread: {e}"),
            })?;
        let report = DiskOpened {
            id: log.id(),
            created: opened.created,
            start_lsn: log.start_lsn(),
            synced: *log.synced.borrow(),
            last: opened.last,
        };
        let journal = Self::with(
            capacity,
            opened.head,
            Some(Disk {
                log,
                writer: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                cursors: Mutex::new(Vec::new()),
                // Nothing is finished until the sinks say so: a restarted sink may need
                // anything still kept (trimming at the head would drop what it has not
                // delivered yet when the journal is over budget).
                finished: AtomicU64::new(first),
                full: AtomicBool::new(false),
            }),
        );
        Ok((Arc::new(journal), report))
    }

    fn with(capacity: usize, base: u64, disk: Option<Disk>) -> Self {
        Journal {
            inner: Mutex::new(Inner {
                base,
                entries: VecDeque::new(),
                cursors: Vec::new(),
                closed: false,
            }),
            capacity: capacity.max(1),
            data: Notify::new(),
            space: Notify::new(),
            disk,
        }
    }

    /// Whether entries are kept on disk (the slot may confirm what is durable here).
    pub fn is_durable(&self) -> bool {
        self.disk.is_some()
    }

    /// Add a reader that starts at the current head.
    pub fn register(&self) -> ReaderId {
        let head = self.head();
        self.register_at(head)
    }

    /// Add a reader that starts at `seq` (disk: any sequence number still kept).
    pub fn register_at(&self, seq: u64) -> ReaderId {
        let mut inner = self.inner.lock().unwrap();
        inner.cursors.push(Some(seq));
        if let Some(disk) = &self.disk {
            disk.cursors.lock().unwrap().push(Default::default());
        }
        ReaderId(inner.cursors.len() - 1)
    }

    /// Attach a detached reader again, at `seq` (memory: at most the head; what it needs
    /// before that comes from the source again).
    pub fn reattach(&self, reader: ReaderId, seq: u64) {
        let mut inner = self.inner.lock().unwrap();
        let seq = match self.disk {
            Some(_) => seq,
            None => seq.max(inner.base),
        };
        inner.cursors[reader.0] = Some(seq);
        drop(inner);
        self.data.notify_waiters();
    }

    /// The sequence number `reader` reads next; `None` while it is detached.
    pub fn cursor(&self, reader: ReaderId) -> Option<u64> {
        self.inner.lock().unwrap().cursors[reader.0]
    }

    /// Wait until everything appended before `seq` is durable (disk; at once for memory).
    pub async fn wait_synced(&self, seq: u64) {
        let Some(mut synced) = self.synced() else {
            return;
        };
        while synced.borrow_and_update().seq < seq {
            if synced.changed().await.is_err() {
                return;
            }
        }
    }

    /// The sequence number the next appended entry will get.
    pub fn head(&self) -> u64 {
        self.inner.lock().unwrap().head()
    }

    /// Entries held in memory.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries a reader has not read yet.
    pub fn backlog(&self, reader: ReaderId) -> u64 {
        let inner = self.inner.lock().unwrap();
        inner.cursors[reader.0].map_or(0, |c| inner.head().saturating_sub(c))
    }

    /// Commit time (µs since the epoch) of the first event this reader has not read yet
    /// (for a reader behind the memory, of the first event of the segment it reads).
    pub fn oldest_unread_ts(&self, reader: ReaderId) -> Option<i64> {
        let inner = self.inner.lock().unwrap();
        let cursor = inner.cursors[reader.0]?;
        if cursor < inner.base {
            let disk = self.disk.as_ref()?;
            let segments = disk.log.segments.lock().unwrap();
            return segments
                .iter()
                .find(|s| s.base_seq <= cursor && cursor < s.end_seq())
                .map(|s| s.first_ts);
        }
        let start = (cursor - inner.base) as usize;
        inner.entries.range(start..).find_map(|e| match e {
            Entry::Event(r) => Some(r.event.source.ts_micros),
            Entry::Commit { .. } => None,
        })
    }

    /// Append entries in order. Memory: waits while the slowest reader is `capacity`
    /// behind. Disk: waits while the writer is `capacity` entries behind, or the files are
    /// at `max_bytes` with nothing finished to trim. Returns the new head.
    pub async fn append(&self, entries: Vec<Entry>) -> u64 {
        let mut warned: Option<Instant> = None;
        // Disk: how many are appended so far (a batch larger than the room goes in parts).
        let mut done = 0;
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            let written_changed = self.disk.as_ref().map(|d| d.log.written_changed.notified());
            tokio::pin!(written_changed);
            if let Some(w) = written_changed.as_mut().as_pin_mut() {
                w.enable();
            }
            let wait = match &self.disk {
                None => {
                    let mut inner = self.inner.lock().unwrap();
                    let detached = inner.cursors.iter().all(Option::is_none);
                    if inner.entries.len() < self.capacity || detached {
                        inner.entries.extend(entries);
                        if detached {
                            inner.trim(self.capacity, None);
                        }
                        let head = inner.head();
                        drop(inner);
                        self.data.notify_waiters();
                        return head;
                    }
                    tracing::debug!(
                        capacity = self.capacity,
                        "journal full: the source waits for the slowest sink"
                    );
                    Wait::Space
                }
                Some(disk) => match self.append_disk(disk, &entries[done..]) {
                    Ok((taken, head)) => {
                        if disk.full.swap(false, Relaxed) {
                            tracing::warn!("journal: space again; the source goes on");
                        }
                        self.data.notify_waiters();
                        done += taken;
                        if done == entries.len() {
                            return head;
                        }
                        continue;
                    }
                    Err(wait) => wait,
                },
            };
            match wait {
                Wait::Space => {
                    if let Some(disk) = &self.disk {
                        disk.full.store(true, Relaxed);
                        if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            warned = Some(Instant::now());
                            tracing::error!(
                                max_bytes = disk.log.config.max_bytes,
                                bytes = disk.log.bytes(),
                                "journal full (journal.max_bytes): the source pauses until the slowest sink \
                                 finishes more; meanwhile the replication slot holds WAL on the server"
                            );
                        }
                    }
                    // Room comes from trims, or turns out to be there once the queued
                    // entries are written.
                    match written_changed.as_pin_mut() {
                        Some(w) => {
                            tokio::select! {
                                _ = space => {}
                                _ = w => {}
                            }
                        }
                        None => space.await,
                    }
                }
                Wait::Writer => match written_changed.as_pin_mut() {
                    Some(w) => w.await,
                    None => space.await,
                },
            }
        }
    }

    /// How many more entries fit in `max_bytes`, and how many bytes are free, counting what
    /// is queued for the writer at the average size of what is written (so the files stay
    /// within the budget, give or take how far entries differ from the average). When
    /// every sink has finished everything, at least one entry fits whatever its size:
    /// waiting would free nothing.
    fn room(&self, disk: &Disk) -> (u64, u64) {
        let head = self.head();
        let (bytes, first) = (disk.log.bytes(), disk.log.first_seq());
        let written = disk.log.written.load(Relaxed);
        // Before anything is written, assume large entries: the estimate settles with the
        // writer's first batch.
        let average = match written.saturating_sub(first) {
            0 => 1024,
            n => bytes.div_ceil(n),
        };
        let used = bytes + head.saturating_sub(written) * average;
        let free = disk.log.config.max_bytes.saturating_sub(used);
        let room = free / average;
        if room == 0 && disk.finished.load(Relaxed) >= head {
            return (1, free);
        }
        (room, free)
    }

    /// One attempt to append to a disk journal: the first entries that fit. Returns how
    /// many were taken and the new head.
    fn append_disk(&self, disk: &Disk, entries: &[Entry]) -> Result<(usize, u64), Wait> {
        let (mut room, mut free) = self.room(disk);
        if room < entries.len() as u64 {
            let finished = disk.finished.load(Relaxed);
            if let Err(e) = disk.log.trim(finished, true) {
                tracing::error!("journal: {e}");
            }
            (room, free) = self.room(disk);
            if room == 0 {
                return Err(Wait::Space);
            }
        }
        // Once full, the source goes on only when a good part is free again (a trimmed
        // segment, or a quarter of the budget), not for every entry that fits: no flapping.
        let config = &disk.log.config;
        if disk.full.load(Relaxed)
            && free < config.segment_bytes.min(config.max_bytes / 4)
            && disk.finished.load(Relaxed) < self.head()
        {
            return Err(Wait::Space);
        }
        let written = disk.log.written.load(Relaxed);
        let mut inner = self.inner.lock().unwrap();
        let in_queue = inner.head().saturating_sub(written);
        if in_queue >= self.capacity as u64 {
            return Err(Wait::Writer);
        }
        let take = entries.len().min(room as usize);
        let entries = &entries[..take];
        let seq = inner.head();
        let sender = disk.writer.lock().unwrap();
        match sender.as_ref() {
            Some(tx) if tx.send((seq, entries.to_vec())).is_ok() => {}
            _ => {
                tracing::error!("journal: the writer is gone; entries are not made durable");
            }
        }
        drop(sender);
        inner.entries.extend(entries.iter().cloned());
        inner.trim(self.capacity, Some(written));
        Ok((take, inner.head()))
    }

    /// Read up to `max` entries at the reader's cursor. Waits for the first entry; once one
    /// is there, waits at most `max_wait` for the batch to fill (a reader catching up from
    /// the files does not wait). Returns the sequence number of the first entry and the
    /// entries; `None` when the journal is closed and this reader has read everything.
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
            let behind = {
                let inner = self.inner.lock().unwrap();
                let cursor = inner.cursors[reader.0].expect("a detached reader does not read");
                (cursor < inner.base).then_some((cursor, inner.base))
            };
            if let Some((cursor, until)) = behind {
                return Some(self.read_disk(reader, cursor, max, until).await);
            }
            {
                let mut inner = self.inner.lock().unwrap();
                let cursor = inner.cursors[reader.0].expect("a detached reader does not read");
                if cursor < inner.base {
                    // Trimmed meanwhile: read the files on the next turn.
                    continue;
                }
                let available = (inner.head() - cursor) as usize;
                let full = available >= max;
                let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
                if available > 0 && (full || timed_out || inner.closed || max_wait.is_zero()) {
                    let n = available.min(max);
                    let start = (cursor - inner.base) as usize;
                    let batch: Vec<Entry> =
                        inner.entries.range(start..start + n).cloned().collect();
                    inner.cursors[reader.0] = Some(cursor + n as u64);
                    let freed = self.disk.is_none() && inner.trim(self.capacity, None);
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

    /// Entries from the files, for a reader behind the memory. A failing read is retried
    /// every second (logged): the sink waits, nothing is skipped.
    async fn read_disk(
        &self,
        reader: ReaderId,
        seq: u64,
        max: usize,
        until: u64,
    ) -> (u64, Vec<Entry>) {
        let disk = self
            .disk
            .as_ref()
            .expect("only a disk journal has a base past its readers");
        let cursor = disk.cursors.lock().unwrap()[reader.0].clone();
        let log = disk.log.clone();
        loop {
            let (log, cursor) = (log.clone(), cursor.clone());
            let read = tokio::task::spawn_blocking(move || {
                let mut cursor = cursor.blocking_lock();
                log.read(&mut cursor, seq, max, until)
            })
            .await
            .unwrap_or_else(|e| {
                Err(DiskError {
                    dir: String::new(),
                    what: format!("a read panicked: {e}"),
                })
            });
            match read {
                Ok(entries) if !entries.is_empty() => {
                    let mut inner = self.inner.lock().unwrap();
                    if inner.cursors[reader.0] == Some(seq) {
                        inner.cursors[reader.0] = Some(seq + entries.len() as u64);
                    }
                    return (seq, entries);
                }
                Ok(_) => {
                    tracing::error!(seq, "journal: an entry that should be on disk is not there")
                }
                Err(e) => tracing::error!("journal: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The first sequence number a sink at `position` / `flush` still needs: an event after
    /// `position` or a transaction end past `flush` (the head when it needs nothing kept).
    /// Disk journals search their files, from the oldest entry kept.
    pub async fn seek(&self, position: Position, flush: crate::lsn::Lsn) -> Result<u64, DiskError> {
        if let Some(disk) = &self.disk {
            let log = disk.log.clone();
            let from = log.first_seq();
            let found = tokio::task::spawn_blocking(move || log.seek(from, position, flush))
                .await
                .unwrap_or(Ok(None))?;
            if let Some(seq) = found {
                return Ok(seq);
            }
        }
        let inner = self.inner.lock().unwrap();
        let offset = inner
            .entries
            .iter()
            .position(|e| disk::needed(e, position, flush));
        Ok(offset.map_or(inner.head(), |i| inner.base + i as u64))
    }

    /// Every sink has durably finished the entries before `seq`: a disk journal may trim
    /// what is past its retention.
    pub fn release(&self, seq: u64) {
        let Some(disk) = &self.disk else { return };
        if disk.finished.fetch_max(seq, Relaxed) >= seq {
            return;
        }
        match disk.log.trim(seq, false) {
            Ok(0) => {}
            Ok(_) => self.space.notify_waiters(),
            Err(e) => tracing::error!("journal: {e}"),
        }
    }

    /// What is durable in a disk journal, and its changes; `None` for a memory journal.
    pub fn synced(&self) -> Option<watch::Receiver<Synced>> {
        self.disk.as_ref().map(|d| d.log.synced.subscribe())
    }

    /// Figures about a disk journal, for status and metrics.
    pub fn disk_status(&self) -> Option<DiskStatus> {
        let disk = self.disk.as_ref()?;
        let segments = disk.log.segments.lock().unwrap();
        Some(DiskStatus {
            bytes: segments.iter().map(|s| s.bytes).sum(),
            max_bytes: disk.log.config.max_bytes,
            segments: segments.len(),
            first_seq: segments.first().map_or(0, |s| s.base_seq),
            oldest_ts: segments
                .iter()
                .find(|s| s.first.is_some())
                .map(|s| s.first_ts),
            full: disk.full.load(Relaxed),
            synced: *disk.log.synced.borrow(),
            failure: disk.log.failure.lock().unwrap().clone(),
        })
    }

    /// Stop holding entries for this reader (its sink stopped). A disk journal still keeps
    /// its files for it: it needs them when it comes back.
    pub fn detach(&self, reader: ReaderId) {
        tracing::debug!(reader = reader.0, "journal reader detached");
        let mut inner = self.inner.lock().unwrap();
        inner.cursors[reader.0] = None;
        if self.disk.is_none() {
            inner.trim(self.capacity, None);
        }
        drop(inner);
        self.space.notify_waiters();
    }

    /// No more entries will come: readers drain what is there, then `read` returns `None`.
    pub fn close(&self) {
        self.inner.lock().unwrap().closed = true;
        self.data.notify_waiters();
    }

    /// Make everything appended durable and stop the writer (disk); returns what is synced.
    pub async fn shutdown(&self) -> Option<Synced> {
        let disk = self.disk.as_ref()?;
        disk.writer.lock().unwrap().take();
        let thread = disk.thread.lock().unwrap().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        Some(*disk.log.synced.borrow())
    }
}

/// Why an append waits.
enum Wait {
    /// Memory: for the slowest reader. Disk: for trims.
    Space,
    /// Disk: for the writer to catch up.
    Writer,
}

/// A disk journal's figures.
#[derive(Clone, Debug)]
pub struct DiskStatus {
    pub bytes: u64,
    pub max_bytes: u64,
    pub segments: usize,
    pub first_seq: u64,
    /// Commit time (µs) of the oldest event kept.
    pub oldest_ts: Option<i64>,
    /// The source waits for space.
    pub full: bool,
    pub synced: Synced,
    /// The writer cannot write (it retries).
    pub failure: Option<String>,
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
        let j = Journal::memory(100);
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
        let j = Journal::memory(4);
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
        let j = Journal::memory(2);
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
        let j = Journal::memory(100);
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
