//! The backfill runner: a task beside the stream that takes the state store's pending and
//! running backfills one at a time, oldest first, and copies each table chunk by chunk
//! between watermarks ([`super`]). A chunk's progress (its cursor, its rows) is recorded
//! once the slot has been told it may forget the chunk's high watermark, i.e. once every
//! row of it is durable in the journal or at every sink: a kill -9 resumes at the last chunk
//! so recorded, never skipping one. Chunks grow from [`FIRST_CHUNK`] rows up to
//! `chunk_rows` while a chunk takes less than [`FAST_CHUNK`], and shrink when one takes
//! longer than [`SLOW_CHUNK`]. The next chunk is read while the stream emits the last
//! ([`AHEAD`] handed over at most), and no more than [`UNCONFIRMED`] emitted chunks wait
//! for the slot, so a backfill goes at the pace of the journal (or the slowest sink).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_runtime::config::TableName;
use sluice_runtime::state::{Backfill, BackfillProgress, BackfillState, Store};
use sluice_runtime::Lsn;
use tokio::sync::{oneshot, Notify};
use tokio_postgres::Client;

use super::copy::{read_chunk, PlanError, TablePlan};
use super::{Chunk, Handoff, Mark, Outcome, BACKFILL_PREFIX};
use crate::options::TableRef;
use crate::types::TypeRegistry;

/// The first chunk's size.
pub const FIRST_CHUNK: usize = 1000;
/// A chunk read faster than this doubles the next one (up to `chunk_rows`).
pub const FAST_CHUNK: Duration = Duration::from_millis(250);
/// A chunk read slower than this halves the next one.
pub const SLOW_CHUNK: Duration = Duration::from_secs(2);
/// Chunks emitted and not yet confirmed, at most: the backfill goes at the sinks' pace.
const UNCONFIRMED: usize = 4;
/// Chunks handed over to the stream and not yet emitted by it, at most: the next chunk is
/// read while the stream emits the last.
const AHEAD: usize = 2;
/// How often the store is read for new backfills while none runs.
const POLL: Duration = Duration::from_secs(1);
/// The first wait before an interrupted backfill goes on; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Session settings of the runner's connection: the value texts the stream's decoder
/// expects ([`crate::replication::SESSION_OPTIONS`]) and literals as written. Watermark
/// commits are synchronous whatever the server's default: the walsender decodes only WAL
/// that is flushed, and with `synchronous_commit = off` a watermark would wait for the WAL
/// writer (`wal_writer_delay`, 200 ms by default) each time.
const SESSION: &str = "set DateStyle = 'ISO, YMD'; set TimeZone = 'UTC'; \
     set extra_float_digits = 3; set bytea_output = 'hex'; set IntervalStyle = 'iso_8601'; \
     set standard_conforming_strings = on; set application_name = 'sluice_backfill'; \
     set synchronous_commit = on";

/// Why a backfill stopped short.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Other(String),
    #[error("{0}")]
    Fatal(String),
    #[error("cancelled")]
    Cancelled,
}

impl RunError {
    fn is_transient(&self) -> bool {
        match self {
            RunError::Plan(e) => e.is_transient(),
            RunError::Other(_) => true,
            RunError::Fatal(_) | RunError::Cancelled => false,
        }
    }
}

/// The runner's settings.
pub struct Runner {
    pub url: String,
    pub store: Store,
    pub handoff: Arc<Handoff>,
    /// The largest chunk.
    pub chunk_rows: usize,
}

impl Runner {
    /// Run backfills as the store lists them, until the task is aborted.
    pub async fn run(self) {
        let mut chunk_seq = 0u64;
        // The wait before trying an interrupted backfill again, growing while it fails.
        let mut retry = RETRY_FIRST;
        loop {
            let next = self
                .store
                .run(|s| s.backfills())
                .await
                .map(|all| all.into_iter().find(|b| b.state.is_active()));
            let backfill = match next {
                Ok(Some(b)) => b,
                Ok(None) => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "backfills: cannot read the state store");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            let id = backfill.id;
            // Each attempt starts from the store's record: the cursor of the last
            // chunk confirmed.
            match self.backfill(&backfill, &mut chunk_seq).await {
                Ok(()) => retry = RETRY_FIRST,
                Err(RunError::Cancelled) => {
                    tracing::info!(backfill = id, table = %backfill.table, "backfill cancelled");
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(backfill = id, table = %backfill.table, error = %e, "backfill interrupted; going on from its last confirmed chunk in {retry:?}");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
                Err(e) => {
                    tracing::error!(backfill = id, table = %backfill.table, error = %e, "backfill failed");
                    let failed = BackfillProgress {
                        state: Some(BackfillState::Failed),
                        error: Some(e.to_string()),
                        ..Default::default()
                    };
                    self.record(id, failed).await;
                    retry = RETRY_FIRST;
                }
            }
        }
    }

    async fn record(&self, id: i64, progress: BackfillProgress) {
        if let Err(e) = self
            .store
            .run(move |s| s.backfill_progress(id, &progress))
            .await
        {
            tracing::warn!(backfill = id, error = %e, "backfills: cannot record progress");
        }
    }

    /// Copy one backfill's table from its cursor to its end.
    async fn backfill(&self, b: &Backfill, chunk_seq: &mut u64) -> Result<(), RunError> {
        let name = TableName::parse(&b.table).map_err(RunError::Fatal)?;
        let table = TableRef::new(name.schema, name.name);
        let mut client = crate::setup::connect(&self.url)
            .await
            .map_err(|e| RunError::Other(e.to_string()))?;
        client
            .batch_execute(SESSION)
            .await
            .map_err(|e| RunError::Other(crate::setup::describe(&e)))?;
        let version = crate::setup::server_version(&client)
            .await
            .map_err(|e| RunError::Other(e.to_string()))?;
        if version < crate::setup::STREAMING_VERSION {
            return Err(RunError::Fatal(format!(
                "backfills need PostgreSQL 14 or later (pgoutput sends the watermarks a backfill writes \
                 into the WAL from 14 on); this server is version {version}"
            )));
        }
        let mut types = TypeRegistry::builtin();
        let plan = match TablePlan::of(&client, &mut types, &table).await {
            // Renamed since the request: the same table under its new name.
            Err(PlanError::Missing(_)) => {
                match crate::tables::renamed_to(&client, &self.store, &table)
                    .await
                    .map_err(|e| RunError::Other(e.to_string()))?
                {
                    Some(now) => TablePlan::of(&client, &mut types, &now).await?,
                    None => return Err(PlanError::Missing(table).into()),
                }
            }
            planned => planned?,
        };
        let started = BackfillProgress {
            estimate: plan.estimate,
            state: Some(BackfillState::Running),
            ..Default::default()
        };
        self.record(b.id, started).await;
        tracing::info!(
            backfill = b.id,
            table = %plan.table,
            sinks = %b.sinks_text(),
            estimate = ?plan.estimate,
            "backfill running"
        );
        let sinks: Option<Arc<[Arc<str>]>> =
            (!b.sinks.is_empty()).then(|| b.sinks.iter().map(|s| Arc::from(s.as_str())).collect());
        let mut cursor: Option<Vec<String>> = match &b.cursor {
            Some(text) => Some(
                serde_json::from_str(text)
                    .map_err(|e| RunError::Other(format!("the stored cursor `{text}`: {e}")))?,
            ),
            None => None,
        };
        let mut size = FIRST_CHUNK.min(self.chunk_rows);
        let ledger = Arc::new(Ledger::default());
        let settler = Settler(tokio::spawn(settle(
            ledger.clone(),
            self.store.clone(),
            self.handoff.clone(),
            b.id,
        )));
        // Chunks handed over whose outcome the stream has not sent yet: the next is read
        // while the stream emits the last.
        let mut ahead: VecDeque<Ahead> = VecDeque::new();
        let mut exhausted = false;
        loop {
            while !exhausted && ahead.len() < AHEAD {
                if self.cancelled(b.id).await {
                    return Err(RunError::Cancelled);
                }
                ledger.wait_below(UNCONFIRMED).await;
                *chunk_seq += 1;
                let seq = *chunk_seq;
                let chunk = self
                    .chunk(
                        &mut client,
                        &plan,
                        b,
                        seq,
                        cursor.clone(),
                        size,
                        sinks.clone(),
                    )
                    .await?;
                let Some(chunk) = chunk else {
                    // Nothing after the cursor: the table is done.
                    exhausted = true;
                    break;
                };
                if chunk.took < FAST_CHUNK {
                    size = (size * 2).min(self.chunk_rows);
                } else if chunk.took > SLOW_CHUNK {
                    size = (size / 2).max(FIRST_CHUNK.min(self.chunk_rows));
                }
                exhausted = !chunk.full;
                cursor = chunk.end.clone();
                ahead.push_back(chunk);
            }
            let Some(front) = ahead.pop_front() else {
                break;
            };
            let outcome = front
                .outcome
                .await
                .map_err(|_| RunError::Other("the stream dropped a chunk".into()))?;
            match outcome {
                Outcome::Again => {
                    // Read it again, and what followed it (those rows may come twice:
                    // reads are upserts).
                    cursor = front.start;
                    ahead.clear();
                    exhausted = false;
                }
                Outcome::Emitted { commit_lsn, rows } => ledger.push(Pending {
                    commit_lsn,
                    cursor: front.end,
                    rows,
                }),
            }
        }
        ledger.wait_below(1).await;
        drop(settler);
        let done = BackfillProgress {
            state: Some(BackfillState::Done),
            ..Default::default()
        };
        self.record(b.id, done).await;
        tracing::info!(backfill = b.id, table = %plan.table, "backfill done");
        Ok(())
    }

    async fn cancelled(&self, id: i64) -> bool {
        matches!(
            self.store.run(move |s| s.backfill(id)).await,
            Ok(Some(b)) if b.state == BackfillState::Cancelled
        )
    }

    /// One chunk: low watermark, rows, hand-over, high watermark. `None` when there are
    /// no rows after the cursor.
    #[allow(clippy::too_many_arguments)]
    async fn chunk(
        &self,
        client: &mut Client,
        plan: &TablePlan,
        b: &Backfill,
        seq: u64,
        start: Option<Vec<String>>,
        size: usize,
        sinks: Option<Arc<[Arc<str>]>>,
    ) -> Result<Option<Ahead>, RunError> {
        let began = Instant::now();
        let mark = |high| Mark {
            run: self.handoff.run,
            backfill: b.id,
            chunk: seq,
            high,
            table: plan.oid,
        };
        emit(client, &mark(false)).await?;
        let rows = read_chunk(client, plan, start.as_deref(), b.filter.as_deref(), size).await?;
        if rows.rows.is_empty() {
            // Close the window the low watermark opened.
            emit(client, &mark(true)).await?;
            return Ok(None);
        }
        let full = rows.rows.len() == size;
        let end = rows.cursor.or_else(|| start.clone());
        let (reply, outcome) = oneshot::channel();
        self.handoff.offer(
            b.id,
            seq,
            Chunk {
                rows: rows.rows,
                in_progress: rows.in_progress,
                sinks,
                schema: plan.table.schema.as_str().into(),
                name: plan.table.name.as_str().into(),
                reply,
            },
        );
        if let Err(e) = emit(client, &mark(true)).await {
            self.handoff.withdraw(b.id, seq);
            return Err(e);
        }
        Ok(Some(Ahead {
            start,
            end,
            full,
            took: began.elapsed(),
            outcome,
        }))
    }
}

/// A chunk handed over to the stream, waiting for what the stream did with it.
struct Ahead {
    /// Its first row comes after this key (`None`: the table's start).
    start: Option<Vec<String>>,
    /// Its last row's key.
    end: Option<Vec<String>>,
    /// It held as many rows as asked: there may be more.
    full: bool,
    /// From its low watermark to its high one.
    took: Duration,
    outcome: oneshot::Receiver<Outcome>,
}

/// A chunk emitted and not yet confirmed.
struct Pending {
    /// Its high watermark's commit.
    commit_lsn: Lsn,
    /// Where the next chunk starts.
    cursor: Option<Vec<String>>,
    rows: usize,
}

/// The chunks emitted and not yet recorded, oldest first, shared by the runner (which
/// adds them) and its [`settle`] task (which records them once confirmed).
#[derive(Default)]
struct Ledger {
    pending: Mutex<VecDeque<Pending>>,
    /// Woken whenever chunks were recorded.
    settled: Notify,
    /// Woken when a chunk is added (the slot may have confirmed it already).
    pushed: Notify,
}

impl Ledger {
    fn push(&self, p: Pending) {
        self.pending.lock().unwrap().push_back(p);
        self.pushed.notify_one();
    }

    fn len(&self) -> usize {
        self.pending.lock().unwrap().len()
    }

    /// Until fewer than `n` chunks wait to be recorded.
    async fn wait_below(&self, n: usize) {
        loop {
            let settled = self.settled.notified();
            if self.len() < n {
                return;
            }
            settled.await;
        }
    }
}

/// Record chunks as soon as the slot is told it may forget them, in order, so a crash
/// repeats as little as possible. Runs until aborted ([`Settler`]).
async fn settle(ledger: Arc<Ledger>, store: Store, handoff: Arc<Handoff>, id: i64) {
    let mut confirmed = handoff.confirmed.subscribe();
    loop {
        let through = *confirmed.borrow_and_update();
        loop {
            let next = {
                let mut pending = ledger.pending.lock().unwrap();
                match pending.front() {
                    Some(p) if p.commit_lsn < through => pending.pop_front(),
                    _ => None,
                }
            };
            let Some(p) = next else { break };
            let progress = BackfillProgress {
                cursor: p
                    .cursor
                    .map(|c| serde_json::to_string(&c).expect("text encodes as JSON")),
                rows: p.rows as i64,
                ..Default::default()
            };
            if let Err(e) = store.run(move |s| s.backfill_progress(id, &progress)).await {
                tracing::warn!(backfill = id, error = %e, "backfills: cannot record progress");
            }
            ledger.settled.notify_waiters();
        }
        tokio::select! {
            changed = confirmed.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = ledger.pushed.notified() => {}
        }
    }
}

/// The [`settle`] task of one backfill run, ended with it.
struct Settler(tokio::task::JoinHandle<()>);

impl Drop for Settler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Write a watermark into the WAL, in a transaction of its own.
async fn emit(client: &Client, mark: &Mark) -> Result<(), RunError> {
    let sql = format!(
        "select pg_logical_emit_message(true, '{BACKFILL_PREFIX}', '{}')",
        mark.to_json().replace('\'', "''")
    );
    client.batch_execute(&sql).await.map_err(|e| {
        RunError::Other(format!(
            "writing a watermark: {}",
            crate::setup::describe(&e)
        ))
    })
}
