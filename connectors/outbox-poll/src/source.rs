//! The polling session: the relay lock, the polls, positions from ids, and the rows
//! settled (deleted or marked) once the engine acknowledges them.
//!
//! **One relay at a time.** Each relay takes a session-level advisory lock keyed on the
//! outbox table's OID before it polls, on the connection it polls with; a relay that
//! cannot take it stands by and tries again every poll interval. When the polling relay
//! stops or its connection drops, Postgres releases the lock and a standby takes over
//! from the rows still in the table. Why a lock and not claims (SKIP LOCKED alone, or a
//! lease column): see the crate README.
//!
//! **Positions.** An event's position is its row's id (`Lsn = id`, index 0), each row a
//! transaction of its own, as long as ids arrive in increasing order, which is the common
//! case. Positions must strictly increase, so a row that becomes visible after a higher id
//! was read (its transaction committed later: a gap filled late) gets the next free
//! position instead, after the ones read before it, and its event arrives after theirs.
//! A new run numbers after the highest position any sink committed
//! ([`Checkpoint::last`]).
//!
//! **Settling.** The rows read and not yet settled are remembered with their positions.
//! [`Acknowledger::ack`] settles exactly the remembered rows below `delivered` (every sink
//! committed them, whatever the journal; by id, never
//! an id range: a row that committed late inside a range was not published). A session
//! opened again (after a lost connection, or for a sink that needs the stream again)
//! first sends the remembered rows still in the table at their old positions; the engine
//! drops what its journal holds and each sink skips what it committed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sluice_postgres::config::OutboxColumns;
use sluice_postgres::events::outbox_event;
use sluice_postgres::values::convert;
use sluice_runtime::journal::Entry;
use sluice_runtime::source::{Ack, Acknowledger, Batch, Checkpoint, Source, SourceStatus};
use sluice_runtime::{Lsn, Position, Row, SourceError, Value};
use tokio_postgres::{Client, Row as PgRow};

use crate::table::{is_transient, Outbox, LOCK_KEY_SQL};

/// What the source needs at run time.
#[derive(Clone, Debug)]
pub struct PollOptions {
    pub pipeline: String,
    /// libpq-style URL; contains secrets, never logged.
    pub url: String,
    pub outbox: Outbox,
    pub columns: OutboxColumns,
    pub poll_interval: Duration,
    pub batch_size: u32,
}

/// Rows read and not yet settled: position → id, shared with the session's acknowledger.
type Unsettled = Arc<Mutex<BTreeMap<u64, i64>>>;

/// The `postgres_outbox_poll` source.
pub struct PollSource {
    options: PollOptions,
    status: Arc<SourceStatus>,
    unsettled: Unsettled,
    /// The lowest position the next new row may take.
    next: u64,
    session: Option<Session>,
}

/// One open session.
struct Session {
    /// The polling connection; holds the relay lock once `locked`.
    client: Client,
    locked: bool,
    /// Said once per session that another relay polls.
    said_standby: bool,
    /// The remembered rows are still to be sent again (the first read of a session).
    resend: bool,
    /// The acknowledger's connection failed: end the session so it is opened again.
    ack_failed: Arc<AtomicBool>,
}

fn transient(what: &str) -> impl FnOnce(tokio_postgres::Error) -> SourceError + '_ {
    move |e| {
        let message = format!("{what}: {}", sluice_postgres::setup::describe(&e));
        match is_transient(&e) {
            true => SourceError::transient(message),
            false => SourceError::fatal(message),
        }
    }
}

async fn connect(url: &str, role: &'static str) -> Result<Client, SourceError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| {
            SourceError::transient(format!(
                "cannot connect to {}: {}",
                sluice_postgres::setup::target(url),
                sluice_postgres::setup::describe(&e)
            ))
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, role, "outbox connection ended");
        }
    });
    Ok(client)
}

impl PollSource {
    pub fn new(options: PollOptions) -> Self {
        PollSource {
            options,
            status: Arc::new(SourceStatus::default()),
            unsettled: Arc::default(),
            next: 1,
            session: None,
        }
    }

    /// Rows (as read by [`Outbox::claim_sql`]) as (id, event row).
    fn rows(&self, rows: &[PgRow]) -> Result<Vec<(i64, Row)>, SourceError> {
        let columns = &self.options.outbox.columns;
        rows.iter()
            .map(|r| {
                let id: i64 = r.get(columns.len());
                let mut row = Row::default();
                for (i, column) in columns.iter().enumerate() {
                    let value = match r.get::<_, Option<&str>>(i) {
                        None => Value::Null,
                        Some(text) => convert(&column.kind, text.as_bytes()).map_err(|e| {
                            SourceError::fatal(format!(
                                "outbox row {id}, column {}: {e}",
                                column.name
                            ))
                        })?,
                    };
                    row.push(column.name.as_str().into(), value);
                }
                Ok((id, row))
            })
            .collect()
    }

    /// The event of row `id` at `position`, followed by its commit.
    fn entries(&self, position: u64, row: &Row, entries: &mut Vec<Entry>) {
        let table = &self.options.outbox.table;
        let source = sluice_runtime::Source {
            pipeline: self.options.pipeline.as_str().into(),
            schema: Some(table.schema.as_str().into()),
            table: Some(table.name.as_str().into()),
            lsn: Lsn(position),
            commit_lsn: Lsn(position),
            xid: None,
            ts_micros: now_micros(),
        };
        let event = outbox_event(
            Position::new(Lsn(position), 0),
            source,
            row,
            &self.options.columns,
        );
        entries.push(Entry::event(event));
        entries.push(Entry::Commit {
            commit_lsn: Lsn(position),
            end_lsn: Lsn(position + 1),
        });
    }

    /// Take the relay lock if no other relay holds it.
    async fn lock(&self, session: &mut Session) -> Result<bool, SourceError> {
        if session.locked {
            return Ok(true);
        }
        let locked: bool = session
            .client
            .query_one(
                &format!("select pg_try_advisory_lock({LOCK_KEY_SQL})"),
                &[&self.options.outbox.oid],
            )
            .await
            .map_err(transient("cannot take the outbox relay lock"))?
            .get(0);
        if locked {
            tracing::info!(table = %self.options.outbox.table, "this relay polls the outbox");
        } else if !session.said_standby {
            session.said_standby = true;
            tracing::info!(
                table = %self.options.outbox.table,
                "another relay polls this outbox; standing by until it stops"
            );
        }
        session.locked = locked;
        Ok(locked)
    }

    /// One step of [`Source::read`]: the entries of a resend or a poll (maybe none).
    async fn step(&mut self, session: &mut Session) -> Result<Vec<Entry>, SourceError> {
        if session.ack_failed.load(Relaxed) {
            return Err(SourceError::transient(
                "the connection that settles published outbox rows failed",
            ));
        }
        if !self.lock(session).await? {
            return Ok(Vec::new());
        }
        if std::mem::take(&mut session.resend) {
            let entries = self.resend(&session.client).await?;
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
        self.poll(&mut session.client).await
    }

    /// The remembered rows still in the table, at their positions.
    async fn resend(&mut self, session_client: &Client) -> Result<Vec<Entry>, SourceError> {
        let remembered: BTreeMap<u64, i64> = self.unsettled.lock().unwrap().clone();
        if remembered.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = remembered.values().copied().collect();
        let found = session_client
            .query(&self.options.outbox.resend_sql(), &[&ids])
            .await
            .map_err(transient("cannot read the outbox"))?;
        let rows: std::collections::HashMap<i64, Row> = self.rows(&found)?.into_iter().collect();
        let mut entries = Vec::new();
        for (position, id) in &remembered {
            if let Some(row) = rows.get(id) {
                self.entries(*position, row, &mut entries);
            }
        }
        Ok(entries)
    }

    /// One poll: lock the next unpublished rows in id order in a short transaction, and
    /// number them.
    async fn poll(&mut self, client: &mut Client) -> Result<Vec<Entry>, SourceError> {
        let pending: Vec<i64> = self.unsettled.lock().unwrap().values().copied().collect();
        let tx = client
            .transaction()
            .await
            .map_err(transient("cannot begin a poll"))?;
        let found = tx
            .query(
                &self.options.outbox.claim_sql(),
                &[&pending, &i64::from(self.options.batch_size)],
            )
            .await
            .map_err(transient("cannot read the outbox"))?;
        tx.commit().await.map_err(transient("cannot end a poll"))?;
        let rows = self.rows(&found)?;
        let mut entries = Vec::with_capacity(rows.len() * 2);
        let mut unsettled = Vec::with_capacity(rows.len());
        for (id, row) in &rows {
            let Ok(from_id) = u64::try_from(*id) else {
                return Err(SourceError::fatal(format!(
                    "outbox row with id {id} in {}: ids must be positive (they number the events)",
                    self.options.outbox.table
                )));
            };
            let position = from_id.max(self.next);
            if position != from_id {
                tracing::debug!(
                    id,
                    position,
                    "an outbox row committed after higher ids were read"
                );
            }
            self.next = position + 1;
            unsettled.push((position, *id));
            self.entries(position, row, &mut entries);
        }
        self.unsettled.lock().unwrap().extend(unsettled);
        Ok(entries)
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl Source for PollSource {
    async fn open(&mut self, checkpoint: Checkpoint) -> Result<Box<dyn Acknowledger>, SourceError> {
        self.session = None;
        self.next = self.next.max(checkpoint.last.commit_lsn.0 + 1);
        let client = connect(&self.options.url, "poll").await?;
        let acks = connect(&self.options.url, "settle").await?;
        let ack_failed = Arc::new(AtomicBool::new(false));
        self.session = Some(Session {
            client,
            locked: false,
            said_standby: false,
            resend: true,
            ack_failed: ack_failed.clone(),
        });
        Ok(Box::new(Settler {
            client: acks,
            sql: self.options.outbox.settle_sql(),
            unsettled: self.unsettled.clone(),
            failed: ack_failed,
        }))
    }

    async fn read(&mut self) -> Result<Batch, SourceError> {
        loop {
            // Out of `self` while it is used; a read cancelled meanwhile leaves no session,
            // and the next read asks for a new one.
            let Some(mut session) = self.session.take() else {
                return Err(SourceError::transient("the outbox source is not open"));
            };
            let result = self.step(&mut session).await;
            self.session = Some(session);
            let entries = result?;
            if let Some(Entry::Commit { commit_lsn, .. }) = entries.last() {
                self.status.received.fetch_max(commit_lsn.0, Relaxed);
                return Ok(Batch {
                    entries,
                    idle: None,
                });
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }

    async fn close(&mut self) {
        // Dropping the connection releases the relay lock.
        self.session = None;
    }

    fn status(&self) -> Arc<SourceStatus> {
        self.status.clone()
    }
}

/// Settles (deletes or marks) the rows every sink has committed.
struct Settler {
    client: Client,
    sql: String,
    unsettled: Unsettled,
    failed: Arc<AtomicBool>,
}

impl Settler {
    async fn settle(&mut self, through: Lsn) -> Result<(), SourceError> {
        let (positions, ids): (Vec<u64>, Vec<i64>) = self
            .unsettled
            .lock()
            .unwrap()
            .range(..through.0)
            .map(|(p, id)| (*p, *id))
            .unzip();
        if ids.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.client.execute(&self.sql, &[&ids]).await {
            self.failed.store(true, Relaxed);
            return Err(transient("cannot settle published outbox rows")(e));
        }
        tracing::trace!(rows = ids.len(), %through, "published outbox rows settled");
        let mut unsettled = self.unsettled.lock().unwrap();
        for p in positions {
            unsettled.remove(&p);
        }
        Ok(())
    }
}

#[async_trait]
impl Acknowledger for Settler {
    async fn ack(&mut self, ack: Ack) -> Result<(), SourceError> {
        self.settle(ack.delivered).await
    }

    async fn finish(mut self: Box<Self>, ack: Ack) -> Result<(), SourceError> {
        self.settle(ack.delivered).await
    }
}
