//! Slot and publication management, and the checks run before streaming.
//!
//! Everything here uses an ordinary (non-replication) connection. When the role may not
//! create the publication, the error carries the exact SQL an administrator must run.

use std::collections::BTreeSet;

use sluice_runtime::source::Teardown;
use sluice_runtime::Lsn;
use tokio_postgres::{Client, NoTls};

use crate::options::{PostgresOptions, TableRef};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot connect to PostgreSQL at {target}: {}", describe(.source))]
    Connect {
        /// `host:port` (never the URL: it may hold a password).
        target: String,
        source: tokio_postgres::Error,
    },
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
            SetupError::Connect { source: e, .. } | SetupError::Query { source: e, .. } => {
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

pub(crate) fn query_err(
    what: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Query { what, source }
}

/// Open an ordinary connection (its driver task runs in the background).
pub async fn connect(url: &str) -> Result<Client, SetupError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|source| SetupError::Connect {
            target: target(url),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "catalog connection ended");
        }
    });
    Ok(client)
}

/// `host:port` of a connection URL, for messages.
pub fn target(url: &str) -> String {
    use tokio_postgres::config::Host;
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return "the server in source.url".into();
    };
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
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
    // A publication that publishes updates or deletes makes PostgreSQL refuse them on a
    // table without a replica identity: the application's writes would fail.
    let publishes_changes: bool = client
        .query_opt(
            "select pubupdate or pubdelete from pg_publication where pubname = $1",
            &[&o.publication],
        )
        .await
        .map_err(query_err("looking up the publication"))?
        .is_none_or(|r| r.get(0));
    for t in o.captured_tables() {
        let row = client
            .query_opt(
                "select c.relkind::text, c.relreplident::text,
                        exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary),
                        c.oid
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
        if publishes_changes {
            refuse_without_identity(client, o, t, row.get(3)).await?;
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

/// Refuse a table (or a partition of it) whose updates and deletes PostgreSQL would reject
/// once published: REPLICA IDENTITY NOTHING, or DEFAULT without a primary key.
async fn refuse_without_identity(
    client: &Client,
    o: &PostgresOptions,
    t: &TableRef,
    oid: tokio_postgres::types::Oid,
) -> Result<(), SetupError> {
    let rows = client
        .query(
            "select n.nspname::text || '.' || c.relname::text, c.relreplident::text,
                    exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary)
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.oid = $1 and c.relkind = 'r'
                 or c.oid in (select relid from pg_partition_tree(($1::oid)::regclass) where isleaf)",
            &[&oid],
        )
        .await
        .map_err(query_err(format!("looking up the partitions of {t}")))?;
    for row in rows {
        let (name, identity, has_pk): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
        let usable = match identity.as_str() {
            "f" | "i" => true,
            "d" => has_pk,
            _ => false,
        };
        if usable {
            continue;
        }
        let what = match identity.as_str() {
            "n" => "has REPLICA IDENTITY NOTHING".to_string(),
            _ => "has no primary key (REPLICA IDENTITY DEFAULT)".to_string(),
        };
        let of = if name == t.to_string() {
            String::new()
        } else {
            format!(" (a partition of {t})")
        };
        return Err(SetupError::Check(format!(
            "table {name}{of} {what}: in a publication that publishes updates and deletes,              PostgreSQL would refuse the application's UPDATE and DELETE on it (\"cannot update \
             table because it does not have a replica identity\"), and sluice never makes the \
             application's writes fail. Choose one:\n\
             - add a primary key: ALTER TABLE {name} ADD PRIMARY KEY (...);\n\
             - or send whole rows as the identity: ALTER TABLE {name} REPLICA IDENTITY FULL;\n\
             - or capture its inserts only: an administrator runs CREATE PUBLICATION {pub_} FOR \
             TABLE {list} WITH (publish = 'insert', publish_via_partition_root = true); (the \
             publication named in source.publication; every table in it then sends inserts only)",
            pub_ = ident(&o.publication),
            list = o
                .captured_tables()
                .map(|t| t.quoted())
                .collect::<Vec<_>>()
                .join(", "),
        )));
    }
    Ok(())
}

/// Read-only: what `run` will have to create (the publication, its missing tables, the
/// slot), whether this role may, and the SQL for an administrator when it may not. Used by
/// `validate --connect`, so that it says OK only when `run` would get past its start.
pub async fn check_rights(client: &Client, o: &PostgresOptions) -> Result<String, SetupError> {
    let superuser: bool = client
        .query_one(
            "select rolsuper from pg_roles where rolname = current_user",
            &[],
        )
        .await
        .map_err(query_err("reading the role"))?
        .get(0);
    let tables: Vec<&TableRef> = o.captured_tables().collect();
    let list = tables
        .iter()
        .map(|t| t.quoted())
        .collect::<Vec<_>>()
        .join(", ");
    let publication = client
        .query_opt(
            "select puballtables, pg_has_role(pubowner, 'USAGE') from pg_publication where pubname = $1",
            &[&o.publication],
        )
        .await
        .map_err(query_err("looking up the publication"))?;
    let mut said = Vec::new();
    match publication {
        None => {
            let may_create: bool = client
                .query_one(
                    "select has_database_privilege(current_user, current_database(), 'CREATE')",
                    &[],
                )
                .await
                .map_err(query_err("reading the database's privileges"))?
                .get(0);
            let mut owns_all = true;
            for t in &tables {
                owns_all &= owns(client, t).await?;
            }
            if !(superuser || may_create && owns_all) {
                let tables = if list.is_empty() {
                    String::new()
                } else {
                    format!("FOR TABLE {list} ")
                };
                return Err(SetupError::Check(format!(
                    "publication {} does not exist and this role may not create it (it needs \
                     CREATE on the database and to own the tables); ask an administrator to run:\n    \
                     CREATE PUBLICATION {} {tables}WITH (publish_via_partition_root = true);",
                    o.publication,
                    ident(&o.publication)
                )));
            }
            said.push(format!("publication {} will be created", o.publication));
        }
        Some(row) if row.get::<_, bool>(0) => {
            said.push(format!("publication {} covers all tables", o.publication))
        }
        Some(row) => {
            let owns_publication: bool = row.get(1);
            let rows = client
                .query(
                    "select schemaname::text, tablename::text from pg_publication_tables where pubname = $1",
                    &[&o.publication],
                )
                .await
                .map_err(query_err("listing the publication's tables"))?;
            let published: BTreeSet<(String, String)> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let missing: Vec<&&TableRef> = tables
                .iter()
                .filter(|t| !published.contains(&(t.schema.clone(), t.name.clone())))
                .collect();
            if missing.is_empty() {
                said.push(format!("publication {} has every table", o.publication));
            } else {
                let mut may = superuser || owns_publication;
                for t in &missing {
                    may &= superuser || owns(client, t).await?;
                }
                let names = missing
                    .iter()
                    .map(|t| t.quoted())
                    .collect::<Vec<_>>()
                    .join(", ");
                if !may {
                    return Err(SetupError::Check(format!(
                        "publication {} lacks {names} and this role may not add them (it needs \
                         to own the publication and the tables); ask an administrator to run:\n    \
                         ALTER PUBLICATION {} ADD TABLE {names};",
                        o.publication,
                        ident(&o.publication)
                    )));
                }
                said.push(format!(
                    "publication {}: {names} will be added",
                    o.publication
                ));
            }
        }
    }
    let slot = client
        .query_opt(
            "select 1 from pg_replication_slots where slot_name = $1",
            &[&o.slot],
        )
        .await
        .map_err(query_err("looking up the replication slot"))?;
    if slot.is_none() {
        let free: i64 = client
            .query_one(
                "select current_setting('max_replication_slots')::bigint - count(*) from pg_replication_slots",
                &[],
            )
            .await
            .map_err(query_err("counting replication slots"))?
            .get(0);
        if free < 1 {
            return Err(SetupError::Check(format!(
                "replication slot {} does not exist and every replication slot is taken \
                 (max_replication_slots); raise it or drop an unused slot",
                o.slot
            )));
        }
        said.push(format!("replication slot {} will be created", o.slot));
    } else {
        said.push(format!("replication slot {} exists", o.slot));
    }
    Ok(said.join("; "))
}

/// Whether the current role owns (or is a member of the owner of) table `t`.
async fn owns(client: &Client, t: &TableRef) -> Result<bool, SetupError> {
    client
        .query_one(
            "select pg_has_role(c.relowner, 'USAGE')
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = $1 and c.relname = $2",
            &[&t.schema, &t.name],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .map_err(query_err(format!("reading the owner of {t}")))
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

/// The server's version as a number (`server_version_num`: 150004 for 15.4).
pub async fn server_version(client: &Client) -> Result<u32, SetupError> {
    let text: String = client
        .query_one("show server_version_num", &[])
        .await
        .map_err(query_err("reading the server's version"))?
        .get(0);
    text.parse()
        .map_err(|_| SetupError::Check(format!("server_version_num is not a number: {text}")))
}

/// The first version whose pgoutput streams transactions in progress (protocol 2) and
/// sends logical messages on request.
pub const STREAMING_VERSION: u32 = 140000;

/// The current WAL position of the server.
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, SetupError> {
    let text: String = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .map_err(query_err("reading the current WAL position"))?
        .get(0);
    text.parse().map_err(|e| SetupError::Check(format!("{e}")))
}

/// Drop the slot and the publication, as far as the role may. Refuses, having done
/// nothing, while the slot is in use. A publication the role may not drop (an administrator
/// created it, or owns it) is left with the statement an administrator must run.
pub async fn teardown(
    client: &Client,
    slot: &str,
    publication: &str,
) -> Result<Teardown, SetupError> {
    let mut report = Teardown::default();
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
            report.done.push(format!(
                "dropped replication slot {slot} (PostgreSQL no longer keeps WAL for it)"
            ));
        }
        None => report
            .done
            .push(format!("replication slot {slot} did not exist")),
    }
    let exists = client
        .query_opt(
            "select 1 from pg_publication where pubname = $1",
            &[&publication],
        )
        .await
        .map_err(query_err("looking up the publication"))?
        .is_some();
    let drop = format!("DROP PUBLICATION {};", ident(publication));
    if !exists {
        report
            .done
            .push(format!("publication {publication} did not exist"));
    } else {
        match client.batch_execute(&drop).await {
            Ok(()) => report
                .done
                .push(format!("dropped publication {publication}")),
            // 42501: insufficient privilege (not the owner).
            Err(e) if e.code().is_some_and(|c| c.code() == "42501") => {
                report.for_admin.push(drop);
            }
            Err(e) => return Err(query_err("dropping the publication")(e)),
        }
    }
    Ok(report)
}
