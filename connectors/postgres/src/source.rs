//! The PostgreSQL source: a replication session per [`Source::open`], pgoutput decoded
//! into journal entries by [`Source::read`], and standby status updates sent by the
//! [`Standby`] acknowledger, which owns the socket's writing half and runs in the engine's
//! acknowledgement task, so a full journal or a slow sink never delays it.
//!
//! On PostgreSQL 14 and later (and `streaming: true`) the session asks for protocol 2 with
//! `streaming 'on'`: a transaction larger than the server's `logical_decoding_work_mem`
//! arrives in chunks while it runs. Chunks are staged on disk ([`crate::stream`]); at its
//! Stream Commit the transaction is read back through the same decoder as any other, in
//! batches of at most [`BATCH_ENTRIES`] entries, and its events get the commit's position.
//! A Stream Abort drops what was staged (only the subtransaction's changes for a
//! subtransaction). A new session starts with nothing staged: the server streams every
//! unfinished transaction again from its start.
//!
//! Beside the stream, a task of the session keeps the captured tables in the publication
//! ([`crate::publication::Watch`]).
//!
//! The engine owns the loop around it: appends, reconnects with backoff, de-duplication
//! after a reconnect, the drain and the cadence of status updates.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_runtime::journal::Entry;
use sluice_runtime::source::{Ack, Acknowledger, Batch, Checkpoint, Source, SourceStatus};
use sluice_runtime::state::Store;
use sluice_runtime::{Lsn, SourceError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backfill::runner::Runner;
use crate::backfill::{Handoff, Tap};
use crate::events::{BuildError, EventBuilder};
use crate::options::PostgresOptions;
use crate::pgoutput::{self, LogicalMessage};
use crate::publication::{Watch, WatchContext};
use crate::replication::{
    ReplicationConnection, ReplicationError, ReplicationMessage, ReplicationStream, StatusWriter,
};
use crate::setup::{self, SetupError, STREAMING_VERSION};
use crate::stream::{StageError, Staged, Staging};
use crate::tables::Identity;

/// Return a batch once this many entries are pending, even mid-transaction.
pub const BATCH_ENTRIES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SourceFailure {
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("decoding the change stream: {0}")]
    Decode(#[from] pgoutput::DecodeError),
    #[error("{0}")]
    Build(#[from] BuildError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("read before open")]
    NotOpen,
}

impl SourceFailure {
    fn is_transient(&self) -> bool {
        match self {
            SourceFailure::Replication(e) => e.is_transient(),
            SourceFailure::Setup(e) => e.is_transient(),
            SourceFailure::Build(BuildError::Catalog(e)) => e.is_closed(),
            // A full disk may have room again after a reconnect (which starts over).
            SourceFailure::Stage(e) => e.source.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

impl From<SourceFailure> for SourceError {
    fn from(e: SourceFailure) -> Self {
        match e.is_transient() {
            true => SourceError::transient(e),
            false => SourceError::fatal(e),
        }
    }
}

/// What [`crate::PostgresConnector`]'s preparation found and the source keeps.
pub struct Prepared {
    /// The captured tables' OIDs ([`crate::tables::resolve`]).
    pub identities: Vec<Identity>,
    /// The pipeline's own directory, where streamed transactions are staged.
    pub work_dir: PathBuf,
    /// The state store: a table created again is remembered by its new OID.
    pub store: Store,
}

pub struct PostgresSource {
    options: PostgresOptions,
    builder: EventBuilder,
    status: Arc<SourceStatus>,
    session: Option<Session>,
    work_dir: PathBuf,
    store: Store,
    watch: Arc<Watch>,
    /// The server cannot stream transactions in progress, and the log said so.
    told_no_streaming: bool,
    /// Shared with the backfill runner.
    handoff: Arc<Handoff>,
    /// The backfill runner, started with the first session; it outlives reconnects.
    runner: Option<JoinHandle<()>>,
}

impl Drop for PostgresSource {
    fn drop(&mut self) {
        if let Some(runner) = &self.runner {
            runner.abort();
        }
    }
}

/// One replication connection and what decoding needs beside it.
struct Session {
    /// An ordinary connection for catalog lookups (unknown type OIDs, keys).
    client: tokio_postgres::Client,
    stream: ReplicationStream,
    /// Decoded entries not yet returned.
    pending: Vec<Entry>,
    /// Tells the acknowledger the server asked for a status update now.
    reply: Arc<Notify>,
    /// Streamed transactions not finished yet.
    staging: Staging,
    /// A committed streamed transaction being read back.
    replay: Option<Replay>,
    /// The publication check of this session.
    watcher: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// A committed streamed transaction and its commit.
struct Replay {
    staged: Option<Staged>,
    commit: LogicalMessage,
    commit_lsn: Lsn,
}

impl Session {
    /// The pending entries, leaving room for as many (no regrowth per batch).
    fn take_pending(&mut self) -> Vec<Entry> {
        std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH_ENTRIES))
    }

    fn batch(&mut self, idle: Option<Lsn>) -> Batch {
        Batch {
            entries: self.take_pending(),
            idle,
        }
    }
}

impl PostgresSource {
    pub fn new(options: PostgresOptions, prepared: Prepared) -> Self {
        let status = Arc::new(SourceStatus::default());
        let watch = Watch::new(&prepared.identities);
        let mut builder = EventBuilder::new(&options, &prepared.identities, status.clone());
        builder.watch(watch.clone());
        let handoff = Handoff::new();
        builder.tap(Tap::new(handoff.clone()));
        PostgresSource {
            options,
            builder,
            status,
            session: None,
            work_dir: prepared.work_dir,
            store: prepared.store,
            watch,
            told_no_streaming: false,
            handoff,
            runner: None,
        }
    }

    /// Whether to ask this server for streamed transactions; says once when it cannot.
    fn streaming(&mut self, version: u32) -> bool {
        if !self.options.streaming {
            return false;
        }
        if version < STREAMING_VERSION {
            if !self.told_no_streaming {
                tracing::info!(
                    server_version = version,
                    "this PostgreSQL cannot stream transactions in progress (it needs 14 or later): \
                     a large transaction is decoded when it commits, and the server may spill it to its disk"
                );
                self.told_no_streaming = true;
            }
            return false;
        }
        true
    }

    async fn connect(&mut self, checkpoint: Checkpoint) -> Result<Standby, SourceFailure> {
        // Drop the last session (its staged files, its watcher) before the next one.
        self.session = None;
        let client = setup::connect(&self.options.url).await?;
        let version = setup::server_version(&client).await?;
        let streaming = self.streaming(version);
        let mut conn = ReplicationConnection::connect(
            &self.options.url,
            &format!("sluice_{}", self.options.pipeline),
        )
        .await?;
        conn.identify_system().await?;
        let mut plugin_options = vec![
            (
                "proto_version",
                if streaming { "2" } else { "1" }.to_string(),
            ),
            (
                "publication_names",
                format!("\"{}\"", self.options.publication.replace('"', "\"\"")),
            ),
        ];
        if streaming {
            plugin_options.push(("streaming", "on".to_string()));
        }
        // The DDL trigger's messages need them; servers before 14 know no such option.
        if version >= STREAMING_VERSION || !self.options.messages.is_empty() {
            plugin_options.push(("messages", "true".to_string()));
        }
        let staging = Staging::new(&self.work_dir)?;
        let (stream, writer) = conn
            .start_logical(&self.options.slot, checkpoint.resume, &plugin_options)
            .await?;
        self.builder.reset_session();
        tracing::info!(slot = %self.options.slot, start = %checkpoint.resume, streaming, "streaming");
        let watcher = tokio::spawn(self.watch.clone().run(WatchContext {
            url: self.options.url.clone(),
            publication: self.options.publication.clone(),
            pipeline: self.options.pipeline.clone(),
            status: self.status.clone(),
            store: self.store.clone(),
        }));
        if self.runner.is_none() {
            let runner = Runner {
                url: self.options.url.clone(),
                store: self.store.clone(),
                handoff: self.handoff.clone(),
                chunk_rows: self.options.backfill_chunk_rows,
            };
            self.runner = Some(tokio::spawn(runner.run()));
        }
        let reply = Arc::new(Notify::new());
        self.session = Some(Session {
            client,
            stream,
            pending: Vec::with_capacity(BATCH_ENTRIES),
            reply: reply.clone(),
            staging,
            replay: None,
            watcher,
        });
        Ok(Standby {
            writer,
            reply,
            status: self.status.clone(),
            handoff: self.handoff.clone(),
        })
    }

    async fn next_batch(&mut self) -> Result<Batch, SourceFailure> {
        let session = self.session.as_mut().ok_or(SourceFailure::NotOpen)?;
        loop {
            // A backfill chunk's rows go before the rest of their transaction.
            let reads = self.builder.reads();
            if !reads.is_empty() {
                let room = BATCH_ENTRIES.saturating_sub(session.pending.len()).max(1);
                let n = room.min(reads.len());
                session.pending.extend(reads.drain(..n));
                if session.pending.len() >= BATCH_ENTRIES {
                    return Ok(session.batch(None));
                }
                continue;
            }
            if let Some(replay) = &mut session.replay {
                let done = replay_some(
                    &mut self.builder,
                    replay,
                    &session.client,
                    &mut session.pending,
                )
                .await?;
                if done {
                    session.replay = None;
                }
                if session.pending.len() >= BATCH_ENTRIES
                    || (done && !session.stream.has_buffered_message())
                {
                    return Ok(session.batch(None));
                }
                continue;
            }
            let Some(message) = session.stream.next().await? else {
                return Err(ReplicationError::Io(std::io::ErrorKind::UnexpectedEof.into()).into());
            };
            match message {
                ReplicationMessage::XLogData { start, data, .. } => {
                    self.status.received.fetch_max(start.0, Relaxed);
                    if session.staging.in_chunk() {
                        // Inside Stream Start … Stream Stop: stage as received.
                        if data.first() == Some(&b'E') {
                            pgoutput::decode(data, true)?;
                            session.staging.stop()?;
                        } else {
                            session.staging.append(start, &data)?;
                        }
                        continue;
                    }
                    match pgoutput::decode(data, false)? {
                        LogicalMessage::StreamStart { xid, first_segment } => {
                            session.staging.start(xid, first_segment)?;
                        }
                        LogicalMessage::StreamAbort { xid, subxid } => {
                            session.staging.abort(xid, subxid);
                        }
                        LogicalMessage::StreamCommit {
                            xid,
                            flags,
                            commit_lsn,
                            end_lsn,
                            commit_ts,
                        } => {
                            let staged = session.staging.commit(xid)?;
                            // The same Begin and Commit a transaction sent whole would have.
                            let begin = LogicalMessage::Begin {
                                final_lsn: commit_lsn,
                                commit_ts,
                                xid,
                            };
                            self.builder
                                .handle(begin, start, &session.client, &mut session.pending)
                                .await?;
                            session.replay = Some(Replay {
                                staged,
                                commit: LogicalMessage::Commit {
                                    flags,
                                    commit_lsn,
                                    end_lsn,
                                    commit_ts,
                                },
                                commit_lsn,
                            });
                        }
                        msg => {
                            let is_commit = matches!(msg, LogicalMessage::Commit { .. });
                            self.builder
                                .handle(msg, start, &session.client, &mut session.pending)
                                .await?;
                            if session.pending.len() >= BATCH_ENTRIES
                                || (is_commit && !session.stream.has_buffered_message())
                            {
                                return Ok(session.batch(None));
                            }
                        }
                    }
                }
                ReplicationMessage::Keepalive {
                    wal_end,
                    reply_requested,
                } => {
                    self.status.upstream_end.fetch_max(wal_end.0, Relaxed);
                    if reply_requested {
                        session.reply.notify_one();
                    }
                    // Streamed transactions still open do not prevent an idle mark: the
                    // server keeps their WAL until they end (the slot's restart point
                    // never passes a running transaction) and sends them again whole
                    // after a reconnect, since they commit after anything confirmed now.
                    let idle = (!self.builder.in_transaction() && !session.staging.in_chunk())
                        .then_some(wal_end);
                    if idle.is_some() || !session.pending.is_empty() {
                        return Ok(session.batch(idle));
                    }
                }
            }
        }
    }
}

/// Decode a committed streamed transaction's staged messages until [`BATCH_ENTRIES`] are
/// pending or it ends (with its commit); whether it ended. The file is read synchronously:
/// it was just written, so it is in the page cache.
async fn replay_some(
    builder: &mut EventBuilder,
    replay: &mut Replay,
    client: &tokio_postgres::Client,
    pending: &mut Vec<Entry>,
) -> Result<bool, SourceFailure> {
    while pending.len() < BATCH_ENTRIES {
        let next = match replay.staged.as_mut() {
            Some(staged) => staged.next_message()?,
            None => None,
        };
        let Some((lsn, data)) = next else {
            builder
                .handle(replay.commit.clone(), replay.commit_lsn, client, pending)
                .await?;
            // Deletes the file.
            replay.staged = None;
            return Ok(true);
        };
        let msg = pgoutput::decode(data, true)?;
        if replay.staged.as_ref().is_some_and(|s| s.skips(&msg)) {
            continue;
        }
        builder.handle(msg, lsn, client, pending).await?;
        if !builder.reads().is_empty() {
            // A chunk's rows come first: the caller hands them out.
            return Ok(false);
        }
    }
    Ok(false)
}

#[async_trait]
impl Source for PostgresSource {
    async fn open(&mut self, checkpoint: Checkpoint) -> Result<Box<dyn Acknowledger>, SourceError> {
        Ok(Box::new(self.connect(checkpoint).await?))
    }

    async fn read(&mut self) -> Result<Batch, SourceError> {
        Ok(self.next_batch().await?)
    }

    async fn close(&mut self) {
        self.session = None;
    }

    fn status(&self) -> Arc<SourceStatus> {
        self.status.clone()
    }
}

/// Standby status updates: `flush` is what every sink made durable, `write` what was
/// received; when every sink has caught up it asks the server to reply at once with its
/// WAL end, so writes to tables the pipeline does not capture never make the slot hold WAL.
struct Standby {
    writer: StatusWriter,
    reply: Arc<Notify>,
    status: Arc<SourceStatus>,
    /// Backfill chunks before `through` are durable: the runner records their progress.
    handoff: Arc<Handoff>,
}

impl Standby {
    async fn send(&mut self, ack: Ack) -> Result<(), SourceError> {
        let write = self.status.received().max(ack.through);
        self.handoff.confirmed.send_if_modified(|c| {
            let moved = ack.through > *c;
            *c = (*c).max(ack.through);
            moved
        });
        self.writer
            .send_status(write, ack.through, ack.caught_up)
            .await
            .map_err(|e| SourceError::transient(SourceFailure::from(e)))
    }
}

#[async_trait]
impl Acknowledger for Standby {
    async fn ack(&mut self, ack: Ack) -> Result<(), SourceError> {
        self.send(ack).await
    }

    async fn requested(&mut self) {
        self.reply.notified().await
    }

    async fn finish(mut self: Box<Self>, ack: Ack) -> Result<(), SourceError> {
        self.send(ack).await?;
        let _ = self.writer.finish().await;
        Ok(())
    }
}
