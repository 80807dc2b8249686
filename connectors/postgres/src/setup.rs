//! Slot and publication management, and the checks run before streaming.
//!
//! Everything here uses an ordinary (non-replication) connection. When the role may not
//! create the publication, the error carries the exact SQL an administrator must run.

use std::collections::BTreeSet;

use sluice_runtime::Lsn;
use tokio_postgres::{Client, NoTls};

use crate::options::{PostgresOptions, TableRef};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot connect to PostgreSQL: {}", describe(.0))]
    Connect(#[source] tokio_postgres::Error),
    #[error("{0}")]
    Check(String),
    #[error("{what}: {}", describe(.source))]
    Query {
        what: String,
        source: tokio_postgres::Error,
    },
}

/// A tokio-postgres error in words: the server's message, detail and hint when it sent
/// them (its own Display says only "db error"), else the underlying cause.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl SetupError {
    /// The database went away or refused us for now: worth trying again.
    pub fn is_transient(&self) -> bool {
        match self {
            SetupError::Connect(e) | SetupError::Query { source: e, .. } => {
                e.is_closed()
                    || e.code().is_none_or(|c| {
                        let c = c.code();
                        c.starts_with("57P") || c.starts_with("08") || c == "53300"
                    })
            }
            SetupError::Check(_) => false,
        }
    }
}

fn query_err(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Query { what, source }
}

/// Open an ordinary connection (its driver task runs in the background).
pub async fn connect(url: &str) -> Result<Client, SetupError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(SetupError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "catalog connection ended");
        }
    });
    Ok(client)
}

/// Quote an identifier for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What a table's REPLICA IDENTITY gives `before`, in words for the log.
fn describe_identity(identity: u8, has_pk: bool) -> &'static str {
    match (identity, has_pk) {
        (b'f', _) => "FULL: `before` carries every column on update and delete",
        (b'd', true) => "DEFAULT: `before` carries the primary key on delete (and on update when the key changes)",
        (b'i', _) => "USING INDEX: `before` carries the index columns on delete (and on update when they change)",
        _ => "NOTHING (or no primary key): updates and deletes have no `before` and Postgres rejects them while the table is published; add a primary key or ALTER TABLE … REPLICA IDENTITY FULL",
    }
}

/// The checks and set-up done before streaming: wal_level, tables, publication, slot.
/// `state_has_offsets`: the state store remembers positions, so a missing slot means the
/// slot was lost (changes may be missing), not that this is a first run.
pub async fn prepare(
    client: &Client,
    o: &PostgresOptions,
    state_has_offsets: bool,
) -> Result<(), SetupError> {
    check_server(client, o).await?;
    ensure_publication(client, o).await?;
    ensure_slot(client, o, state_has_offsets).await
}

/// Read-only checks: wal_level is logical and every captured table exists.
pub async fn check_server(client: &Client, o: &PostgresOptions) -> Result<(), SetupError> {
    let wal_level: String = client
        .query_one("show wal_level", &[])
        .await
        .map_err(query_err("reading wal_level"))?
        .get(0);
    if wal_level != "logical" {
        return Err(SetupError::Check(format!(
            "PostgreSQL runs with wal_level={wal_level}; logical replication needs wal_level=logical \
             (set it in postgresql.conf or with ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
        )));
    }
    check_tables(client, o).await
}

async fn check_tables(client: &Client, o: &PostgresOptions) -> Result<(), SetupError> {
    for t in o.captured_tables() {
        let row = client
            .query_opt(
                "select c.relkind::text, c.relreplident::text,
                        exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary)
                   from pg_class c join pg_namespace n on n.oid = c.relnamespace
                  where n.nspname = $1 and c.relname = $2",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(query_err(format!("looking up table {t}")))?;
        let Some(row) = row else {
            return Err(SetupError::Check(format!(
                "table {t} (source.tables) does not exist in this database"
            )));
        };
        let kind: String = row.get(0);
        let identity: String = row.get(1);
        let has_pk: bool = row.get(2);
        if !matches!(kind.as_str(), "r" | "p") {
            return Err(SetupError::Check(format!(
                "{t} is not a table (relkind {kind}); only tables can be captured"
            )));
        }
        tracing::info!(
            table = %t,
            partitioned = kind == "p",
            "replica identity {}",
            describe_identity(identity.as_bytes()[0], has_pk)
        );
    }
    Ok(())
}

async fn ensure_publication(client: &Client, o: &PostgresOptions) -> Result<(), SetupError> {
    let tables: Vec<&TableRef> = o.captured_tables().collect();
    let list = tables
        .iter()
        .map(|t| t.quoted())
        .collect::<Vec<_>>()
        .join(", ");
    let existing = client
        .query_opt(
            "select puballtables from pg_publication where pubname = $1",
            &[&o.publication],
        )
        .await
        .map_err(query_err("looking up the publication"))?;
    match existing {
        None => {
            // A pipeline of logical messages only still needs a publication to stream.
            let tables = if list.is_empty() {
                String::new()
            } else {
                format!("FOR TABLE {list} ")
            };
            let sql = format!(
                "CREATE PUBLICATION {} {tables}WITH (publish_via_partition_root = true)",
                ident(&o.publication)
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| admin_needed(e, &sql))?;
            tracing::info!(publication = %o.publication, tables = %list, "created publication");
        }
        Some(row) if row.get::<_, bool>(0) => {
            tracing::info!(publication = %o.publication, "publication covers all tables");
        }
        Some(_) => {
            let rows = client
                .query(
                    "select schemaname::text, tablename::text from pg_publication_tables where pubname = $1",
                    &[&o.publication],
                )
                .await
                .map_err(query_err("listing the publication's tables"))?;
            let published: BTreeSet<(String, String)> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let missing: Vec<String> = tables
                .iter()
                .filter(|t| !published.contains(&(t.schema.clone(), t.name.clone())))
                .map(|t| t.quoted())
                .collect();
            if !missing.is_empty() {
                let sql = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    ident(&o.publication),
                    missing.join(", ")
                );
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| admin_needed(e, &sql))?;
                tracing::info!(publication = %o.publication, added = %missing.join(", "), "added tables to publication");
            }
        }
    }
    Ok(())
}

fn admin_needed(e: tokio_postgres::Error, sql: &str) -> SetupError {
    if e.code().is_some_and(|c| c.code() == "42501") {
        SetupError::Check(format!(
            "this role may not manage the publication ({}); ask an administrator to run:\n    {sql};",
            describe(&e)
        ))
    } else {
        SetupError::Query {
            what: format!("running `{sql}`"),
            source: e,
        }
    }
}

async fn ensure_slot(
    client: &Client,
    o: &PostgresOptions,
    state_has_offsets: bool,
) -> Result<(), SetupError> {
    let slot = client
        .query_opt(
            "select plugin::text, slot_type, database::text = current_database(), coalesce(wal_status, '')
               from pg_replication_slots where slot_name = $1",
            &[&o.slot],
        )
        .await
        .map_err(query_err("looking up the replication slot"))?;
    match slot {
        Some(row) => {
            let (plugin, kind, same_db, wal_status): (Option<String>, String, Option<bool>, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if kind != "logical" || plugin.as_deref() != Some("pgoutput") {
                return Err(SetupError::Check(format!(
                    "replication slot {} exists but is a {kind} slot with plugin {}; sluice needs a logical pgoutput slot \
                     (choose another source.slot, or drop it)",
                    o.slot,
                    plugin.unwrap_or_default()
                )));
            }
            if same_db != Some(true) {
                return Err(SetupError::Check(format!(
                    "replication slot {} belongs to another database; choose another source.slot",
                    o.slot
                )));
            }
            if wal_status == "lost" {
                return Err(SetupError::Check(format!(
                    "replication slot {} has lost WAL it needed (wal_status = lost, max_slot_wal_keep_size?): \
                     changes are missing. Run `sluice teardown` and start over with a fresh copy",
                    o.slot
                )));
            }
            Ok(())
        }
        None if state_has_offsets => Err(SetupError::Check(format!(
            "replication slot {} is missing, but the state store has offsets for this pipeline: the slot was \
             dropped or lost, and changes made since may be missing. Run `sluice teardown` to reset, then start over",
            o.slot
        ))),
        None => {
            let lsn: String = client
                .query_one(
                    "select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&o.slot],
                )
                .await
                .map_err(|e| {
                    if e.code().is_some_and(|c| c.code() == "42501") {
                        SetupError::Check(format!(
                            "this role may not create replication slots ({}); grant it REPLICATION, or ask an \
                             administrator to run:\n    SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
                            describe(&e),
                            o.slot
                        ))
                    } else {
                        SetupError::Query { what: "creating the replication slot".into(), source: e }
                    }
                })?
                .get(0);
            tracing::info!(slot = %o.slot, %lsn, "created replication slot");
            Ok(())
        }
    }
}

/// The slot as Postgres reports it, for `sluice status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SlotStatus {
    pub slot: String,
    pub exists: bool,
    pub active: bool,
    pub restart_lsn: Option<String>,
    pub confirmed_flush_lsn: Option<String>,
    pub wal_status: Option<String>,
    /// Bytes of WAL the slot holds back (current WAL position − restart_lsn).
    pub retained_bytes: Option<i64>,
    pub current_wal_lsn: String,
}

pub async fn slot_status(client: &Client, slot: &str) -> Result<SlotStatus, SetupError> {
    let current: String = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .map_err(query_err("reading the current WAL position"))?
        .get(0);
    let row = client
        .query_opt(
            "select active, restart_lsn::text, confirmed_flush_lsn::text, wal_status,
                    (pg_current_wal_lsn() - restart_lsn)::bigint
               from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query_err("reading the replication slot"))?;
    Ok(match row {
        Some(r) => SlotStatus {
            slot: slot.into(),
            exists: true,
            active: r.get(0),
            restart_lsn: r.get(1),
            confirmed_flush_lsn: r.get(2),
            wal_status: r.get(3),
            retained_bytes: r.get(4),
            current_wal_lsn: current,
        },
        None => SlotStatus {
            slot: slot.into(),
            exists: false,
            active: false,
            restart_lsn: None,
            confirmed_flush_lsn: None,
            wal_status: None,
            retained_bytes: None,
            current_wal_lsn: current,
        },
    })
}

/// The current WAL position of the server.
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, SetupError> {
    let text: String = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .map_err(query_err("reading the current WAL position"))?
        .get(0);
    text.parse().map_err(|e| SetupError::Check(format!("{e}")))
}

/// Drop the slot and the publication. Refuses while the slot is in use.
pub async fn teardown(
    client: &Client,
    slot: &str,
    publication: &str,
) -> Result<Vec<String>, SetupError> {
    let mut done = Vec::new();
    let active = client
        .query_opt(
            "select active from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query_err("reading the replication slot"))?;
    match active {
        Some(r) if r.get::<_, bool>(0) => {
            return Err(SetupError::Check(format!(
                "replication slot {slot} is in use; stop the running `sluice run` first"
            )))
        }
        Some(_) => {
            client
                .execute("select pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(query_err("dropping the replication slot"))?;
            done.push(format!("dropped replication slot {slot}"));
        }
        None => done.push(format!("replication slot {slot} did not exist")),
    }
    let exists = client
        .query_opt(
            "select 1 from pg_publication where pubname = $1",
            &[&publication],
        )
        .await
        .map_err(query_err("looking up the publication"))?
        .is_some();
    if exists {
        client
            .batch_execute(&format!("DROP PUBLICATION {}", ident(publication)))
            .await
            .map_err(query_err("dropping the publication"))?;
        done.push(format!("dropped publication {publication}"));
    } else {
        done.push(format!("publication {publication} did not exist"));
    }
    Ok(done)
}
