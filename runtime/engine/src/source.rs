//! The source contract: what feeds the journal.
//!
//! A source opens at a checkpoint, reads batches, and acknowledges through a handle; the
//! engine owns the loop around it ([`crate::feed`]): the journal appends, de-duplication
//! after a reconnect, reconnecting with backoff, the drain at shutdown and the cadence of
//! acknowledgements. A source never looks at the sinks to decide when it may stop or what
//! it may acknowledge.
//!
//! Beside [`Source`] (streaming) a source type has a [`SourceConnector`]: what the command
//! line needs of it (`validate --connect`, `run`'s set-up, `status`, `teardown`), so the
//! command line names no source's own types.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::Value;

use crate::journal::Entry;
use crate::lsn::{Lsn, Position};
use crate::state::Store;

/// A source failed. Transient failures (the upstream went away, restarts, refuses
/// connections for now) make the engine reconnect with backoff; the others end the run.
#[derive(Debug)]
pub struct SourceError {
    transient: bool,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl SourceError {
    /// Worth reconnecting for.
    pub fn transient(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        SourceError {
            transient: true,
            error: error.into(),
        }
    }

    /// Not going to get better by trying again: configuration, permissions, a lost slot.
    pub fn fatal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        SourceError {
            transient: false,
            error: error.into(),
        }
    }

    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.error)
    }
}

/// Where a source resumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every sink has made everything up to here durable (the lowest transaction end any
    /// sink committed): the upstream must send again everything after it.
    pub resume: Lsn,
    /// The highest position any sink committed. A source that numbers its own positions
    /// (one that does not read a log) numbers new events after it.
    pub last: Position,
}

/// What one [`Source::read`] returned.
#[derive(Debug, Default)]
pub struct Batch {
    /// Entries in commit order: each transaction's events followed by its
    /// [`Entry::Commit`]. A batch may end inside a transaction (a large one arrives in
    /// several batches).
    pub entries: Vec<Entry>,
    /// The upstream said it was idle at this position, with nothing of a transaction
    /// pending: once every sink has finished what came before, nothing before it is needed
    /// (so writes the pipeline does not capture never hold the upstream back).
    pub idle: Option<Lsn>,
}

/// A stream of committed changes.
///
/// Contract for implementors:
/// - **Open**: [`Source::open`] connects and starts reading after `checkpoint.resume` (or
///   earlier: the engine drops what it appended before and each sink skips what it
///   committed). It returns this session's [`Acknowledger`]. After a transient failure
///   the engine calls `open` again, on the same value.
/// - **Order**: `read` returns entries in commit order, positions strictly increasing
///   within a session; each transaction's events end with its [`Entry::Commit`].
/// - **Cancellation**: the engine may drop a `read` future (at shutdown). What it had not
///   returned is not lost: it was never acknowledged, so the upstream sends it again.
/// - **Telemetry**: [`Source::status`] is shared with the admin server; keep it current.
#[async_trait]
pub trait Source: Send {
    /// Connect and start reading after `checkpoint`.
    async fn open(&mut self, checkpoint: Checkpoint) -> Result<Box<dyn Acknowledger>, SourceError>;

    /// The next batch; waits until there is something to say (entries or an idle mark).
    async fn read(&mut self) -> Result<Batch, SourceError>;

    /// End the session: called after the last acknowledgement, or after a failure.
    async fn close(&mut self) {}

    /// Live figures about the upstream.
    fn status(&self) -> Arc<SourceStatus>;
}

/// What the engine tells the upstream it may forget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// What the upstream may forget: every sink has durably finished (delivered or parked)
    /// everything up to here, or, with a disk journal, the journal holds it durably.
    pub through: Lsn,
    /// Every sink has durably finished everything up to here, whatever the journal (for a
    /// source that removes what it published, e.g. outbox rows).
    pub delivered: Lsn,
    /// Every sink has durably finished everything journaled so far: a good moment to ask
    /// the upstream where it stands (it may be idle, with more to confirm).
    pub caught_up: bool,
}

/// One session's acknowledgement channel, driven by the engine from a task of its own
/// (for Postgres: the task that owns the socket's writing half), so a full journal or a
/// slow sink never delays it.
///
/// Contract: `ack` is called with non-decreasing `through`, whenever what every sink has
/// made durable advances and at least every acknowledgement interval (a keepalive for
/// upstreams that time out idle readers). It must never acknowledge more than it is
/// told.
#[async_trait]
pub trait Acknowledger: Send {
    /// Tell the upstream it may forget everything up to `ack.through`.
    async fn ack(&mut self, ack: Ack) -> Result<(), SourceError>;

    /// Resolves when the upstream wants an acknowledgement now (Postgres: a keepalive that
    /// asks for a reply). Default: never.
    async fn requested(&mut self) {
        std::future::pending::<()>().await
    }

    /// The last acknowledgement of a session that drained; then end it cleanly.
    async fn finish(self: Box<Self>, ack: Ack) -> Result<(), SourceError>;
}

/// Live figures about a source, shared between the source and the admin server.
#[derive(Debug, Default)]
pub struct SourceStatus {
    /// Connected and reading.
    pub streaming: AtomicBool,
    /// The last upstream position received.
    pub received: AtomicU64,
    /// The upstream's own end (Postgres: the server's WAL end), as last reported.
    pub upstream_end: AtomicU64,
    /// Sessions that ended in a transient failure and were opened again.
    pub reconnects: AtomicU64,
    /// The last position acknowledged to the upstream.
    pub acknowledged: AtomicU64,
    /// What an operator should know, newest last ([`SourceStatus::notice`]).
    notices: Mutex<VecDeque<Notice>>,
    /// Notices raised in this run, by kind.
    pub notice_counts: crate::telemetry::Tally<&'static str>,
}

/// Something about the upstream an operator should know: a captured table renamed, a window
/// in which a table's changes could not be captured. Shown by `/status`, counted by kind in
/// `sluice_source_notices_total{kind}`, logged as a warning when raised.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// A short stable name (`table_renamed`, `publication_gap`): the metric's label.
    pub kind: &'static str,
    /// One line for a human, saying what happened and what to do.
    pub message: String,
    pub at: SystemTime,
}

/// How many notices `/status` keeps.
const NOTICES_KEPT: usize = 50;

impl SourceStatus {
    /// Raise a notice: log it as a warning, count it, keep it for `/status`.
    pub fn notice(&self, kind: &'static str, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(kind, "{message}");
        self.notice_counts.add(kind, 1);
        let mut notices = self.notices.lock().unwrap();
        if notices.len() == NOTICES_KEPT {
            notices.pop_front();
        }
        notices.push_back(Notice {
            kind,
            message,
            at: SystemTime::now(),
        });
    }

    /// The notices kept, oldest first.
    pub fn notices(&self) -> Vec<Notice> {
        self.notices.lock().unwrap().iter().cloned().collect()
    }

    pub fn received(&self) -> Lsn {
        Lsn(self.received.load(Relaxed))
    }

    pub fn upstream_end(&self) -> Lsn {
        Lsn(self.upstream_end.load(Relaxed))
    }

    pub fn acknowledged(&self) -> Lsn {
        Lsn(self.acknowledged.load(Relaxed))
    }

    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Relaxed)
    }
}

/// What the command line needs of a source type beyond streaming. Built from the
/// pipeline's `source:` section by the source's registry entry.
#[async_trait]
pub trait SourceConnector: Send + Sync {
    /// One line for `validate`, e.g. `2 table(s)`.
    fn summary(&self) -> String;

    /// `validate --connect`: check the upstream without creating anything. Returns what
    /// was checked, a line each.
    async fn check(&self) -> Result<Vec<String>, SourceError>;

    /// `validate --connect`: what the upstream keeps for sluice while the source pauses
    /// (a full disk journal), as the setting's name and its limit in bytes (`None`: no
    /// limit). `Ok(None)` when the upstream has no such setting. Postgres:
    /// `max_slot_wal_keep_size`.
    async fn held_log_limit(&self) -> Result<Option<(String, Option<u64>)>, SourceError> {
        Ok(None)
    }

    /// `run`: check, create what is missing (with the SQL an administrator must run when
    /// the role may not), make sure `store` belongs to this upstream, and return the
    /// source ready to open. `work_dir` is a directory of the pipeline's own (it exists)
    /// for files the source stages while it runs, e.g. transactions streamed before their
    /// commit; what is in it may be discarded between runs.
    async fn prepare(&self, store: &Store, work_dir: &Path)
        -> Result<Box<dyn Source>, SourceError>;

    /// `status`: the upstream's side as JSON (`slot` for Postgres), its lines for a
    /// terminal, and the upstream's current end (for each sink's lag in bytes).
    async fn describe(&self) -> UpstreamReport;

    /// `teardown`: drop what `prepare` created upstream, as far as the role may. Refuses
    /// (an error, nothing done) while a pipeline still reads.
    async fn teardown(&self) -> Result<Teardown, SourceError>;

    /// `sluice backfill`: check that each of `tables` (as the command line names them;
    /// empty: every table the source captures) can be copied into the stream, and return
    /// them as the source names them, with the condition their rows meet by default. A
    /// fatal error is a refusal naming the table and why (not captured, missing, no key);
    /// a transient one means the upstream could not be asked. `store` is the pipeline's
    /// (a table renamed since is found by what the source remembers there).
    async fn backfill_targets(
        &self,
        tables: &[String],
        store: &Store,
    ) -> Result<Vec<BackfillTarget>, SourceError> {
        let _ = (tables, store);
        Err(SourceError::fatal(
            "this source type cannot backfill: it reads no table".to_string(),
        ))
    }
}

/// A table `sluice backfill` may copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillTarget {
    /// As the source names it (`schema.table` for Postgres).
    pub table: String,
    /// The condition its rows meet when the command line gives none.
    pub filter: Option<String>,
}

/// What `teardown` did upstream, and what is left for someone with more rights.
#[derive(Clone, Debug, Default)]
pub struct Teardown {
    /// What was removed (or found absent), a line each.
    pub done: Vec<String>,
    /// Statements an administrator must run to finish (the role may not), each a line.
    pub for_admin: Vec<String>,
}

/// A source's answer to `sluice status`.
#[derive(Clone, Debug, Default)]
pub struct UpstreamReport {
    /// Merged into the status report's top level (e.g. `{"slot": {...}}`).
    pub json: serde_json::Map<String, Value>,
    /// Printed before the sinks' table.
    pub lines: Vec<String>,
    /// The upstream's current end, when known.
    pub position: Option<Lsn>,
    /// Whether a reader is attached upstream (a pipeline is running).
    pub active: bool,
    /// Why the upstream could not be asked (it is unreachable, say): `status` then fails.
    pub error: Option<String>,
}

/// How often the engine acknowledges at least, when nothing advances.
pub const DEFAULT_ACK_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_counted_by_kind_and_the_newest_are_kept() {
        let status = SourceStatus::default();
        for i in 0..NOTICES_KEPT + 5 {
            status.notice("table_renamed", format!("renamed {i}"));
        }
        status.notice("publication_gap", "a gap");
        let kept = status.notices();
        assert_eq!(kept.len(), NOTICES_KEPT);
        assert_eq!(kept.last().unwrap().message, "a gap");
        assert_eq!(kept[0].message, "renamed 6", "the oldest go first");
        assert_eq!(
            status.notice_counts.snapshot(),
            [
                ("publication_gap", 1),
                ("table_renamed", NOTICES_KEPT as u64 + 5)
            ]
        );
    }
}
