//! The PostgreSQL source: a replication session per [`Source::open`], pgoutput decoded
//! into journal entries by [`Source::read`], and standby status updates sent by the
//! [`Standby`] acknowledger, which owns the socket's writing half and runs in the engine's
//! acknowledgement task, so a full journal or a slow sink never delays it.
//!
//! The engine owns the loop around it: appends, reconnects with backoff, de-duplication
//! after a reconnect, the drain and the cadence of status updates.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_runtime::journal::Entry;
use sluice_runtime::source::{Ack, Acknowledger, Batch, Checkpoint, Source, SourceStatus};
use sluice_runtime::SourceError;
use tokio::sync::Notify;

use crate::events::{BuildError, EventBuilder};
use crate::options::PostgresOptions;
use crate::pgoutput;
use crate::replication::{
    ReplicationConnection, ReplicationError, ReplicationMessage, ReplicationStream, StatusWriter,
};
use crate::setup::{self, SetupError};

/// Return a batch once this many entries are pending, even mid-transaction.
const BATCH_ENTRIES: usize = 1024;

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
    #[error("read before open")]
    NotOpen,
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

impl From<SourceFailure> for SourceError {
    fn from(e: SourceFailure) -> Self {
        match e.is_transient() {
            true => SourceError::transient(e),
            false => SourceError::fatal(e),
        }
    }
}

pub struct PostgresSource {
    options: PostgresOptions,
    builder: EventBuilder,
    status: Arc<SourceStatus>,
    session: Option<Session>,
}

/// One replication connection and what decoding needs beside it.
struct Session {
    /// An ordinary connection for catalog lookups (unknown type OIDs).
    client: tokio_postgres::Client,
    stream: ReplicationStream,
    /// Decoded entries not yet returned.
    pending: Vec<Entry>,
    /// Tells the acknowledger the server asked for a status update now.
    reply: Arc<Notify>,
}

impl Session {
    /// The pending entries, leaving room for as many (no regrowth per batch).
    fn take_pending(&mut self) -> Vec<Entry> {
        std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH_ENTRIES))
    }
}

impl PostgresSource {
    pub fn new(options: PostgresOptions) -> Self {
        let builder = EventBuilder::new(&options);
        PostgresSource {
            options,
            builder,
            status: Arc::new(SourceStatus::default()),
            session: None,
        }
    }

    async fn connect(&mut self, checkpoint: Checkpoint) -> Result<Standby, SourceFailure> {
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
        let (stream, writer) = conn
            .start_logical(&self.options.slot, checkpoint.resume, &plugin_options)
            .await?;
        self.builder.reset_session();
        tracing::info!(slot = %self.options.slot, start = %checkpoint.resume, "streaming");
        let reply = Arc::new(Notify::new());
        self.session = Some(Session {
            client,
            stream,
            pending: Vec::with_capacity(BATCH_ENTRIES),
            reply: reply.clone(),
        });
        Ok(Standby {
            writer,
            reply,
            status: self.status.clone(),
        })
    }

    async fn next_batch(&mut self) -> Result<Batch, SourceFailure> {
        let session = self.session.as_mut().ok_or(SourceFailure::NotOpen)?;
        loop {
            let Some(message) = session.stream.next().await? else {
                return Err(ReplicationError::Io(std::io::ErrorKind::UnexpectedEof.into()).into());
            };
            match message {
                ReplicationMessage::XLogData { start, data, .. } => {
                    self.status.received.fetch_max(start.0, Relaxed);
                    let msg = pgoutput::decode(data, false)?;
                    let is_commit = matches!(msg, pgoutput::LogicalMessage::Commit { .. });
                    self.builder
                        .handle(msg, start, &session.client, &mut session.pending)
                        .await?;
                    if session.pending.len() >= BATCH_ENTRIES
                        || (is_commit && !session.stream.has_buffered_message())
                    {
                        return Ok(Batch {
                            entries: session.take_pending(),
                            idle: None,
                        });
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
                    let idle = (!self.builder.in_transaction()).then_some(wal_end);
                    if idle.is_some() || !session.pending.is_empty() {
                        return Ok(Batch {
                            entries: session.take_pending(),
                            idle,
                        });
                    }
                }
            }
        }
    }
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
}

impl Standby {
    async fn send(&mut self, ack: Ack) -> Result<(), SourceError> {
        let write = self.status.received().max(ack.through);
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
