//! The engine's loop around the source: open at the checkpoint, read batches, append them
//! to the journal (dropping what a reconnect sends again), reconnect with backoff after a
//! transient failure, and at shutdown drain: stop reading, close the journal, wait until
//! every sink has made everything durable, acknowledge once more.
//!
//! Acknowledgements come from a task of their own ([`AckTask`]), which the journal, the
//! sinks and the state store can never block: it acknowledges what may be forgotten
//! upstream as soon as that advances, at least every acknowledgement interval, and at once
//! when the upstream asks. With a memory journal that is what every sink has made durable
//! ([`Progress::confirmable_lsn`]); with a disk journal, what the journal made durable
//! (recorded in the state store first, so a lost journal is noticed at the next start).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::journal::{Entry, Journal};
use crate::lsn::{Lsn, Position};
use crate::progress::Progress;
use crate::shutdown::Shutdown;
use crate::source::{Ack, Acknowledger, Batch, Checkpoint, Source, SourceError, SourceStatus};
use crate::state::Store;

/// The first wait before reconnecting; it doubles up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

pub(crate) struct Feed {
    pub source: Box<dyn Source>,
    pub journal: Arc<Journal>,
    pub progress: Arc<Progress>,
    pub shutdown: Shutdown,
    /// How often to acknowledge at least, when nothing advances.
    pub ack_interval: Duration,
    /// A resumed sink needs what the journal no longer holds: end the session and open
    /// again at the checkpoint (the sinks skip what they already have).
    pub rewind: Arc<Notify>,
    /// The last event already in the journal: what the source sends again up to it is
    /// dropped.
    pub last: Position,
    /// Disk journal: where the acknowledged position is recorded before it is sent.
    pub store: Option<Store>,
}

/// How a session ended.
enum End {
    /// Shutdown: drained and acknowledged.
    Drained,
    /// A sink needs the stream again from the checkpoint.
    Rewind,
}

impl Feed {
    /// Run until drained (`Ok`) or a fatal source failure. The journal is closed either way.
    pub async fn run(mut self) -> Result<(), SourceError> {
        let result = self.sessions().await;
        self.journal.close();
        self.source.status().streaming.store(false, Relaxed);
        result
    }

    async fn sessions(&mut self) -> Result<(), SourceError> {
        let status = self.source.status();
        // After a reconnect the upstream resends from the checkpoint: drop what was
        // appended already.
        let mut last = self.last;
        let mut delay = RECONNECT_MIN;
        loop {
            if self.shutdown.is_draining() {
                // Shut down while disconnected: nothing more to acknowledge.
                return Ok(());
            }
            let checkpoint = self.checkpoint(last);
            let opened = tokio::select! {
                opened = self.source.open(checkpoint) => opened,
                _ = self.shutdown.draining() => return Ok(()),
            };
            let mut appended = false;
            let result = match opened {
                Ok(acker) => {
                    status.streaming.store(true, Relaxed);
                    tracing::info!(resume = %checkpoint.resume, "source open");
                    self.session(acker, &mut last, &mut appended).await
                }
                Err(e) => Err(e),
            };
            status.streaming.store(false, Relaxed);
            match result {
                Ok(End::Drained) => return Ok(()),
                Ok(End::Rewind) => {
                    self.source.close().await;
                    tracing::info!("reading the source again from the sinks' lowest offset");
                    last = Position::ZERO;
                    delay = RECONNECT_MIN;
                }
                Err(e) if e.is_transient() => {
                    self.source.close().await;
                    status.reconnects.fetch_add(1, Relaxed);
                    if appended {
                        delay = RECONNECT_MIN;
                    }
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "source interrupted; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.draining() => return Ok(()),
                    }
                    delay = (delay * 2).min(RECONNECT_MAX);
                }
                Err(e) => {
                    self.source.close().await;
                    return Err(e);
                }
            }
        }
    }

    /// Where the source resumes: after what the disk journal made durable, or after what
    /// every sink made durable.
    fn checkpoint(&self, last: Position) -> Checkpoint {
        let sinks = self.progress.resume_lsn();
        let resume = match self.journal.synced() {
            Some(synced) if synced.borrow().end_lsn > Lsn::ZERO => synced.borrow().end_lsn,
            _ => sinks,
        };
        Checkpoint {
            resume,
            last: self.progress.last_committed().max(last),
        }
    }

    /// One session: read and append until shutdown (then drain) or a failure.
    async fn session(
        &mut self,
        acker: Box<dyn Acknowledger>,
        last: &mut Position,
        appended: &mut bool,
    ) -> Result<End, SourceError> {
        let acks = AckTask::spawn(
            acker,
            self.progress.clone(),
            self.journal.clone(),
            self.source.status(),
            self.ack_interval,
            self.store.clone(),
        );
        // One shutdown future for the session, not one per batch (this is the hot loop).
        let draining = self.shutdown.draining();
        tokio::pin!(draining);
        let failure = loop {
            let batch = tokio::select! {
                batch = self.source.read() => batch,
                _ = &mut draining => break None,
                _ = self.rewind.notified() => {
                    acks.stop();
                    return Ok(End::Rewind);
                }
            };
            match batch {
                Ok(batch) => {
                    *appended |= append(&self.journal, &self.progress, batch, last).await;
                }
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = failure {
            acks.stop();
            return Err(e);
        }
        // Draining: no more input; wait until every sink has made everything durable (or
        // stopped), then acknowledge that.
        self.journal.close();
        let head = self.journal.head();
        tokio::select! {
            _ = async {
                self.journal.wait_synced(head).await;
                self.progress.settled(head).await;
            } => {}
            _ = self.shutdown.aborting() => {}
        }
        acks.finish().await;
        self.source.close().await;
        Ok(End::Drained)
    }
}

/// Append a batch, dropping events at or before `last`. Returns whether any event was
/// appended.
async fn append(journal: &Journal, progress: &Progress, batch: Batch, last: &mut Position) -> bool {
    let mut events = 0u64;
    let mut commits = 0u64;
    let before = *last;
    let entries: Vec<Entry> = batch
        .entries
        .into_iter()
        .filter(|e| match e {
            Entry::Event(r) => r.event.position > before,
            Entry::Commit { commit_lsn, .. } => *commit_lsn >= before.commit_lsn,
        })
        .inspect(|e| match e {
            Entry::Event(r) => {
                *last = r.event.position;
                events += 1;
            }
            Entry::Commit { .. } => commits += 1,
        })
        .collect();
    if events > 0 {
        // A transaction began after the last idle mark: it no longer describes now.
        progress.clear_idle();
    }
    progress.events_read.fetch_add(events, Relaxed);
    progress.transactions_read.fetch_add(commits, Relaxed);
    if !entries.is_empty() {
        journal.append(entries).await;
    }
    if let Some(end) = batch.idle {
        progress.record_idle(journal.head(), end);
    }
    events > 0
}

/// The task that acknowledges, with the session's [`Acknowledger`].
struct AckTask {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<Option<Box<dyn Acknowledger>>>,
    progress: Arc<Progress>,
    journal: Arc<Journal>,
    status: Arc<SourceStatus>,
    store: Option<Store>,
}

/// With a disk journal, acknowledgements follow the journal's fsyncs, at most this often.
const DURABLE_ACK_EVERY: Duration = Duration::from_millis(200);

impl AckTask {
    fn spawn(
        mut acker: Box<dyn Acknowledger>,
        progress: Arc<Progress>,
        journal: Arc<Journal>,
        status: Arc<SourceStatus>,
        interval: Duration,
        store: Option<Store>,
    ) -> Self {
        let stop = Arc::new(Notify::new());
        let task = {
            let (stop, progress, journal, status, store) = (
                stop.clone(),
                progress.clone(),
                journal.clone(),
                status.clone(),
                store.clone(),
            );
            tokio::spawn(async move {
                let mut durable = progress.durable_changes();
                let disk = journal.is_durable();
                let mut sent = Lsn::ZERO;
                let mut recorded = Lsn::ZERO;
                let mut next = tokio::time::Instant::now() + interval;
                loop {
                    let due = tokio::select! {
                        _ = tokio::time::sleep_until(next) => true,
                        _ = tokio::time::sleep(DURABLE_ACK_EVERY), if disk => false,
                        _ = acker.requested() => true,
                        changed = durable.changed() => {
                            if changed.is_err() {
                                return Some(acker);
                            }
                            false
                        }
                        _ = stop.notified() => return Some(acker),
                    };
                    let ack = current(&progress, &journal);
                    // A durable change that moves nothing waits for the interval.
                    if !due && ack.through <= sent {
                        continue;
                    }
                    if let Some(store) = &store {
                        if ack.through > recorded && !record_acked(store, ack.through).await {
                            continue;
                        }
                        recorded = recorded.max(ack.through);
                    }
                    if let Err(e) = acker.ack(ack).await {
                        tracing::debug!(error = %e, "acknowledgement failed; the reader will reconnect");
                        return None;
                    }
                    sent = sent.max(ack.through);
                    status.acknowledged.fetch_max(ack.through.0, Relaxed);
                    next = tokio::time::Instant::now() + interval;
                }
            })
        };
        AckTask {
            stop,
            task,
            progress,
            journal,
            status,
            store,
        }
    }

    /// The session failed: stop acknowledging.
    fn stop(self) {
        self.stop.notify_one();
    }

    /// The session drained: acknowledge what every sink made durable, and end it.
    async fn finish(self) {
        self.stop.notify_one();
        if let Ok(Some(acker)) = self.task.await {
            let ack = current(&self.progress, &self.journal);
            if let Some(store) = &self.store {
                if !record_acked(store, ack.through).await {
                    return;
                }
            }
            match acker
                .finish(Ack {
                    caught_up: false,
                    ..ack
                })
                .await
            {
                Ok(()) => {
                    self.status.acknowledged.fetch_max(ack.through.0, Relaxed);
                    tracing::info!(through = %ack.through, "acknowledged the final position");
                }
                Err(e) => tracing::warn!(error = %e, "cannot send the final acknowledgement"),
            }
        }
    }
}

/// What may be acknowledged now. Memory journal: what every sink made durable. Disk
/// journal: also what the journal made durable (and, once it is durable through the
/// source's last idle mark, the server's WAL end then).
fn current(progress: &Progress, journal: &Journal) -> Ack {
    let sinks = progress.confirmable_lsn();
    let Some(synced) = journal.synced() else {
        return Ack {
            through: sinks,
            delivered: sinks,
            caught_up: progress.all_durable(journal.head()),
        };
    };
    let synced = *synced.borrow();
    let mut through = sinks.max(synced.end_lsn);
    if let Some((seq, wal_end)) = progress.idle_mark() {
        if seq <= synced.seq {
            through = through.max(wal_end);
        }
    }
    Ack {
        through,
        delivered: sinks,
        caught_up: synced.seq >= journal.head(),
    }
}

/// Record in the state store that the slot is about to be confirmed through `through` on
/// the strength of the disk journal; `false` (logged) when it cannot be recorded, and then
/// nothing is confirmed.
async fn record_acked(store: &Store, through: Lsn) -> bool {
    let value = through.to_string();
    match store
        .run(move |s| s.set_meta(crate::engine::JOURNAL_ACKED, &value))
        .await
    {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot record the acknowledged position; the slot is not confirmed meanwhile");
            false
        }
    }
}

#[cfg(test)]
mod tests;
