//! The state the engine keeps: every sink's offset and status, its dead-letter queue, and
//! the backfills asked for.
//!
//! The engine reaches it through the [`StateStore`] trait ([`Offsets`] + [`DeadLetters`] +
//! [`Backfills`]), so a driver's unit test runs on [`SqliteStore::in_memory`] with no file
//! on disk, and a later store kept elsewhere (a Postgres table, say) is one more
//! implementation. The one there is today, [`SqliteStore`], keeps one SQLite file per pipeline (`state:`) in WAL
//! mode with `synchronous=FULL`: what was committed there survives kill -9 and power loss,
//! which matters because the slot is allowed to forget WAL up to it.
//!
//! The engine's tasks share one store through [`Store`], which runs each call on a
//! blocking thread so a slow disk never stalls the async runtime.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::lsn::{Lsn, Position};
use crate::progress::Offset;

mod backfill;
mod dlq;
mod sqlite;

pub use backfill::{Backfill, BackfillProgress, BackfillState, Backfills, NewBackfill};
pub use dlq::{DlqEntry, DlqFilter, DlqState, NewDlqEntry};
pub use sqlite::SqliteStore;

/// A state store operation failed.
#[derive(Debug, thiserror::Error)]
#[error("state store {store}: {source}")]
pub struct StateError {
    /// Which store (its file, for SQLite).
    pub store: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The state of a sink the DLQ breaker stopped: it stays stopped, across restarts, until
/// an operator replays or purges its dead letters.
pub const TRIPPED: &str = "tripped";

/// A sink's recorded state, for `sluice status`.
#[derive(Clone, Debug, Default)]
pub struct SinkRecord {
    pub offset: Offset,
    /// `running`, `idle`, `stopped` (gave up retrying; a restart tries again) or
    /// [`TRIPPED`] (the DLQ breaker: waits for an operator).
    pub state: String,
    pub reason: Option<String>,
    pub updated_at: i64,
}

/// Offsets, sink status and the store's own facts.
///
/// Contract: a method that returns `Ok` has made its change durable (an offset written
/// here may be confirmed to the source at once). Calls come from one thread at a time.
pub trait Offsets {
    /// Every sink's committed offset.
    fn offsets(&self) -> Result<HashMap<String, Offset>, StateError>;
    /// Write several sinks' offsets at once: all or none.
    fn save_offsets(&mut self, offsets: &[(String, Offset)]) -> Result<(), StateError>;
    /// Record a sink's state (`running`, `idle`, `stopped`) and why.
    fn set_sink_status(
        &self,
        sink: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StateError>;
    /// Every sink the store knows, with its offset and status.
    fn sinks(&self) -> Result<HashMap<String, SinkRecord>, StateError>;
    /// An operator dealt with `sink`'s dead letters: if the DLQ breaker had stopped it
    /// ([`TRIPPED`]), it may go on. Returns whether it was stopped.
    fn clear_trip(&self, sink: &str) -> Result<bool, StateError>;
    /// Ask for `sink` to be delivered again from after `to` (`sluice rewind`): a running
    /// pipeline applies it within a second, otherwise the next run as it starts. Moves
    /// [`DeadLetters::dlq_version`] so the running driver looks.
    fn request_rewind(&self, sink: &str, to: Offset) -> Result<(), StateError>;
    /// The rewind waiting for `sink`, if any.
    fn rewind_request(&self, sink: &str) -> Result<Option<Offset>, StateError>;
    /// Make `sink`'s waiting rewind its committed offset and forget the request, at once.
    /// Returns the new offset.
    fn apply_rewind(&mut self, sink: &str) -> Result<Option<Offset>, StateError>;
    /// A fact about the pipeline (e.g. the source's cluster identity).
    fn meta(&self, key: &str) -> Result<Option<String>, StateError>;
    fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError>;
    /// Forget the offsets, the statuses and the facts (`sluice teardown`). Dead letters
    /// stay: dropping them is a decision of its own ([`DeadLetters::dlq_purge`]).
    fn clear(&self) -> Result<(), StateError>;
}

/// Dead-letter queues, one per sink.
///
/// Contract: `park` is durable when it returns (a sink's offset may then pass the parked
/// events); `(sink, event id)` is unique, so parking an event again counts an attempt
/// instead of adding a row. Operators change entries from another process (`sluice dlq
/// replay|purge`): every such change moves [`DeadLetters::dlq_version`], which a running
/// pipeline polls cheaply instead of re-reading the queue.
pub trait DeadLetters {
    /// Park events, all or none.
    fn park(&mut self, entries: &[NewDlqEntry]) -> Result<(), StateError>;
    /// Entries matching `filter`, by sink, in stream order.
    fn dlq_list(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, StateError>;
    /// Entries of `sink` in `state`, in stream order.
    fn dlq_in_state(&self, sink: &str, state: DlqState) -> Result<Vec<DlqEntry>, StateError>;
    /// Ids of `sink`'s entries after `after`: events a restarted driver must not send
    /// again nor park twice.
    fn dlq_ids_after(&self, sink: &str, after: Position) -> Result<HashSet<String>, StateError>;
    /// `on_key: hold`: each held ordering key of `sink` and the id of the entry its later
    /// events wait behind.
    fn dlq_hold_heads(&self, sink: &str) -> Result<HashMap<String, String>, StateError>;
    /// A number that changes whenever an operator requests a replay or purges.
    fn dlq_version(&self) -> Result<u64, StateError>;
    /// Ask for entries to be sent again; events held behind them come along. Returns how
    /// many entries will be replayed.
    fn dlq_request_replay(&self, filter: &DlqFilter) -> Result<usize, StateError>;
    /// Delete entries; events held behind them are released for replay. Returns how many
    /// entries were deleted.
    fn dlq_purge(&self, filter: &DlqFilter) -> Result<usize, StateError>;
    /// A replayed event got through: forget it.
    fn dlq_resolve(&self, id: i64) -> Result<(), StateError>;
    /// Put an entry in a state (a replay that cannot be read back stays parked).
    fn dlq_set_state(&self, id: i64, state: DlqState) -> Result<(), StateError>;
    /// How many entries each sink has (parked, held and waiting for replay).
    fn dlq_depths(&self) -> Result<Vec<(String, i64)>, StateError>;
    /// Whether replays are waiting for `sink`.
    fn dlq_has_replay(&self, sink: &str) -> Result<bool, StateError>;
    /// How many of `sink`'s entries were committed before `lsn`, and the first one's event
    /// id (read-your-writes: those changes are not applied).
    fn dlq_before(&self, sink: &str, lsn: Lsn) -> Result<(i64, Option<String>), StateError>;
}

/// Everything the engine keeps.
pub trait StateStore: Offsets + DeadLetters + Backfills + Send {}

impl<T: Offsets + DeadLetters + Backfills + Send> StateStore for T {}

/// One store shared by the engine's tasks.
#[derive(Clone)]
pub struct Store(Arc<Mutex<Box<dyn StateStore>>>);

impl Store {
    pub fn new(store: impl StateStore + 'static) -> Self {
        Store(Arc::new(Mutex::new(Box::new(store))))
    }

    /// Run `f` on a blocking thread: a store call may wait for the disk.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StateStore) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(&mut **store.lock().unwrap()))
            .await
            .expect("a state store call panicked")
    }

    /// The store itself, for a caller that may block (start-up, commands, tests).
    pub fn lock(&self) -> MutexGuard<'_, Box<dyn StateStore>> {
        self.0.lock().unwrap()
    }
}
