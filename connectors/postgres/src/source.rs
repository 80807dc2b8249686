//! The PostgreSQL source: streams the slot into the journal, reconnects with backoff, and
//! keeps the slot's confirmed position moving from a task the sinks cannot block.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_runtime::journal::{Entry, Journal};
use sluice_runtime::progress::Progress;
use sluice_runtime::source::{Source, SourceContext, SourceError};
use sluice_runtime::{Lsn, Position};
use tokio::sync::Notify;

use crate::events::{BuildError, EventBuilder};
use crate::options::PostgresOptions;
use crate::pgoutput;
use crate::replication::{
    ReplicationConnection, ReplicationError, ReplicationMessage, StatusWriter,
};
use crate::setup::{self, SetupError};

/// Append to the journal once this many entries are pending, even mid-transaction.
const APPEND_CHUNK: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SourceFailure {
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("decoding the change stream: {0}")]
    Decode(#[from] pgoutput::DecodeError),
    #[error("building events: {0}")]
    Build(#[from] BuildError),
}

impl SourceFailure {
    fn is_transient(&self) -> bool {
        match self {
            SourceFailure::Replication(e) => e.is_transient(),
            SourceFailure::Setup(e) => e.is_transient(),
            SourceFailure::Build(BuildError::Catalog(e)) => e.is_closed(),
            _ => false,
        }
    }
}

pub struct PostgresSource {
    options: PostgresOptions,
    builder: EventBuilder,
    /// The last position appended to the journal: after a reconnect, the server resends
    /// from the confirmed position and everything up to here is skipped.
    last_appended: Position,
}

impl PostgresSource {
    pub fn new(options: PostgresOptions) -> Self {
        let builder = EventBuilder::new(&options);
        PostgresSource {
            options,
            builder,
            last_appended: Position::ZERO,
        }
    }
}

/// How a streaming session ended.
enum SessionEnd {
    /// Shutdown was requested and the final status was sent.
    Drained,
}

#[async_trait]
impl Source for PostgresSource {
    async fn run(mut self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let mut delay = Duration::from_millis(200);
        loop {
            if ctx.shutdown.is_draining() {
                break;
            }
            match self.session(&ctx).await {
                Ok(SessionEnd::Drained) => return Ok(()),
                Err(e) if e.is_transient() => {
                    ctx.progress.streaming.store(false, Relaxed);
                    ctx.progress.reconnects.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "replication interrupted; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = ctx.shutdown.draining() => break,
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    ctx.progress.streaming.store(false, Relaxed);
                    return Err(Box::new(e));
                }
            }
        }
        // Shut down while disconnected: nothing more to confirm; let sinks drain.
        ctx.journal.close();
        Ok(())
    }
}

impl PostgresSource {
    async fn session(&mut self, ctx: &SourceContext) -> Result<SessionEnd, SourceFailure> {
        let client = setup::connect(&self.options.url).await?;
        let mut conn = ReplicationConnection::connect(
            &self.options.url,
            &format!("sluice_{}", self.options.pipeline),
        )
        .await?;
        conn.identify_system().await?;
        let mut plugin_options = vec![
            ("proto_version", "1".to_string()),
            (
                "publication_names",
                format!("\"{}\"", self.options.publication.replace('"', "\"\"")),
            ),
        ];
        if !self.options.messages.is_empty() {
            plugin_options.push(("messages", "true".to_string()));
        }
        let start = ctx.progress.resume_lsn();
        let (mut stream, writer) = conn
            .start_logical(&self.options.slot, start, &plugin_options)
            .await?;
        self.builder.reset_session();
        ctx.progress.streaming.store(true, Relaxed);
        tracing::info!(slot = %self.options.slot, %start, "streaming");

        let status = StatusTask::spawn(
            writer,
            ctx.progress.clone(),
            ctx.journal.clone(),
            self.options.status_interval,
        );
        let mut pending: Vec<Entry> = Vec::with_capacity(APPEND_CHUNK);
        // One shutdown future for the session, not one per message (this is the hot loop).
        let draining = ctx.shutdown.draining();
        tokio::pin!(draining);
        let result: Result<(), SourceFailure> = async {
            loop {
                let message = tokio::select! {
                    m = stream.next() => m?,
                    _ = &mut draining => return Ok(()),
                };
                let Some(message) = message else {
                    return Err(
                        ReplicationError::Io(std::io::ErrorKind::UnexpectedEof.into()).into(),
                    );
                };
                match message {
                    ReplicationMessage::XLogData { start, data, .. } => {
                        ctx.progress.received_lsn.fetch_max(start.0, Relaxed);
                        let msg = pgoutput::decode(data, false)?;
                        let is_commit = matches!(msg, pgoutput::LogicalMessage::Commit { .. });
                        if matches!(msg, pgoutput::LogicalMessage::Begin { .. }) {
                            status.in_transaction.store(true, Relaxed);
                            ctx.progress.clear_idle();
                        }
                        self.builder
                            .handle(msg, start, &client, &mut pending)
                            .await?;
                        if is_commit {
                            status.in_transaction.store(false, Relaxed);
                            ctx.progress.transactions_read.fetch_add(1, Relaxed);
                        }
                        if pending.len() >= APPEND_CHUNK
                            || (is_commit && !stream.has_buffered_message())
                        {
                            self.append(&ctx.journal, &ctx.progress, &mut pending).await;
                        }
                    }
                    ReplicationMessage::Keepalive {
                        wal_end,
                        reply_requested,
                    } => {
                        ctx.progress.server_wal_end.fetch_max(wal_end.0, Relaxed);
                        self.append(&ctx.journal, &ctx.progress, &mut pending).await;
                        if !self.builder.in_transaction() {
                            ctx.progress.record_idle(ctx.journal.head(), wal_end);
                        }
                        if reply_requested {
                            status.wake.notify_one();
                        }
                    }
                }
            }
        }
        .await;
        // Whatever was decoded is real: keep it, whatever happens next.
        self.append(&ctx.journal, &ctx.progress, &mut pending).await;
        match result {
            Ok(()) => {
                // Draining: no more input; wait until every sink has made everything durable,
                // then confirm it to the server.
                ctx.journal.close();
                tokio::select! {
                    _ = settled(&ctx.progress, &ctx.journal) => {}
                    _ = ctx.shutdown.aborting() => {}
                }
                status.finish(&ctx.progress).await;
                ctx.progress.streaming.store(false, Relaxed);
                Ok(SessionEnd::Drained)
            }
            Err(e) => {
                status.stop();
                Err(e)
            }
        }
    }

    /// Move pending entries into the journal, dropping events already appended before a
    /// reconnect. Waits while the journal is full.
    async fn append(&mut self, journal: &Journal, progress: &Progress, pending: &mut Vec<Entry>) {
        if pending.is_empty() {
            return;
        }
        let last = self.last_appended;
        let mut events = 0u64;
        let entries: Vec<Entry> = pending
            .drain(..)
            .filter(|e| match e {
                Entry::Event(ev) => ev.position > last,
                Entry::Commit { commit_lsn, .. } => *commit_lsn >= last.commit_lsn,
            })
            .inspect(|e| {
                if let Entry::Event(ev) = e {
                    self.last_appended = ev.position;
                    events += 1;
                }
            })
            .collect();
        progress.events_read.fetch_add(events, Relaxed);
        if !entries.is_empty() {
            journal.append(entries).await;
        }
    }
}

/// Resolves when every sink has durably finished the whole journal or has stopped.
async fn settled(progress: &Progress, journal: &Journal) {
    loop {
        let head = journal.head();
        if progress
            .sinks()
            .iter()
            .all(|s| s.stopped().is_some() || s.durable().0 >= head)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The standby status task: reports the confirmable position every `interval`, at once
/// when the server asks, and asks the server for its WAL end when everything is
/// delivered (so writes to unpublished tables never make the slot hold WAL). It owns the
/// socket's writing half, so a full journal or a slow sink never delays it.
struct StatusTask {
    wake: Arc<Notify>,
    in_transaction: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Option<StatusWriter>>,
    stop: Arc<Notify>,
}

impl StatusTask {
    fn spawn(
        mut writer: StatusWriter,
        progress: Arc<Progress>,
        journal: Arc<Journal>,
        interval: Duration,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(Notify::new());
        let in_transaction = Arc::new(AtomicBool::new(false));
        let task = {
            let (wake, stop, in_tx) = (wake.clone(), stop.clone(), in_transaction.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = wake.notified() => {}
                        _ = stop.notified() => return Some(writer),
                    }
                    let flush = progress.confirmable_lsn();
                    let write = Lsn(progress.received_lsn.load(Relaxed)).max(flush);
                    let idle = !in_tx.load(Relaxed) && progress.all_durable(journal.head());
                    if let Err(e) = writer.send_status(write, flush, idle).await {
                        tracing::debug!(error = %e, "status update failed; the reader will reconnect");
                        return None;
                    }
                    progress.confirmed_lsn.fetch_max(flush.0, Relaxed);
                }
            })
        };
        StatusTask {
            wake,
            in_transaction,
            task,
            stop,
        }
    }

    fn stop(self) {
        self.stop.notify_one();
    }

    /// Send the final position and end the stream.
    async fn finish(self, progress: &Progress) {
        self.stop.notify_one();
        if let Ok(Some(mut writer)) = self.task.await {
            let flush = progress.confirmable_lsn();
            let write = Lsn(progress.received_lsn.load(Relaxed)).max(flush);
            match writer.send_status(write, flush, false).await {
                Ok(()) => {
                    progress.confirmed_lsn.fetch_max(flush.0, Relaxed);
                    tracing::info!(%flush, "confirmed final position");
                }
                Err(e) => tracing::warn!(error = %e, "cannot send the final status"),
            }
            let _ = writer.finish().await;
        }
    }
}

/// Run the checks and create what is missing. Used by `run` and `validate --connect`.
pub async fn prepare(options: &PostgresOptions, state_has_offsets: bool) -> Result<(), SetupError> {
    let client = setup::connect(&options.url).await?;
    setup::prepare(&client, options, state_has_offsets).await
}
