//! The captured tables by identity, not by name.
//!
//! PostgreSQL describes a table in the stream with a Relation message: its OID and its
//! name *at that point of the WAL*. Matching relations by name loses a table the moment it
//! is renamed (PostgreSQL goes on publishing it under the new name). So each table of
//! `tables:` (and the outbox) is followed by its OID: [`resolve`] finds the OIDs before
//! streaming (by name, or by the OID remembered in the state store when the name is gone),
//! and [`CapturedTables::describe`] tells, for each Relation message, whether the relation
//! is captured and whether that describes a rename.
//!
//! A relation with an OID not seen before but with a captured table's name is that table
//! created again (after a `DROP TABLE`): it is captured from then on.

use std::collections::HashMap;

use sluice_runtime::state::Store;
use sluice_runtime::Lsn;
use tokio_postgres::Client;

use crate::options::{PostgresOptions, TableRef};
use crate::setup::SetupError;

/// What a relation is to this pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A captured table: its changes become events.
    Table,
    /// The outbox: inserts become `op: event`, the rest is ignored.
    Outbox,
    /// Published but not captured by this pipeline.
    Ignored,
}

/// A table of `tables:` (or the outbox) as found in the catalog before streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The name in the pipeline file.
    pub configured: TableRef,
    /// Its OID, when the table exists.
    pub oid: Option<u32>,
    /// Its name in the catalog now: the configured one, or the one the remembered OID
    /// carries after a rename while sluice was stopped.
    pub current: TableRef,
    /// The OID the state store remembers for it from an earlier run (none on the first
    /// run, or for a table newly listed).
    pub remembered: Option<u32>,
}

impl Identity {
    /// Found under its configured name.
    pub fn by_name(&self) -> bool {
        self.current == self.configured
    }
}

/// The state store key remembering a table's OID.
fn oid_key(t: &TableRef) -> String {
    format!("postgres.oid:{}", t.quoted())
}

/// Find every captured table (and the outbox): by its configured name, else by the OID
/// the state store remembers for it (the table was renamed while sluice was stopped).
/// A table found neither way keeps its configured name and no OID; the checks before
/// streaming then say it does not exist.
pub async fn resolve(
    client: &Client,
    store: &Store,
    o: &PostgresOptions,
) -> Result<Vec<Identity>, SetupError> {
    let mut found = Vec::new();
    for t in o.captured_tables() {
        let by_name = client
            .query_opt(
                "select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
                  where n.nspname = $1 and c.relname = $2",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(crate::setup::query_err(format!("looking up table {t}")))?;
        let key = oid_key(t);
        let remembered = store
            .run(move |s| s.meta(&key))
            .await
            .map_err(|e| SetupError::Check(format!("reading the state store: {e}")))?
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(row) = by_name {
            found.push(Identity {
                configured: t.clone(),
                oid: Some(row.get(0)),
                current: t.clone(),
                remembered,
            });
            continue;
        }
        let renamed = match remembered {
            Some(oid) => name_of(client, oid, t).await?.map(|now| (oid, now)),
            None => None,
        };
        match renamed {
            Some((oid, current)) => {
                tracing::warn!(
                    table = %t,
                    now = %current,
                    "table {t} of source.tables no longer exists under that name; the same table is \
                     now {current}: it is captured under its new name (list {current} in source.tables)"
                );
                found.push(Identity {
                    configured: t.clone(),
                    oid: Some(oid),
                    current,
                    remembered,
                });
            }
            None => found.push(Identity {
                configured: t.clone(),
                oid: None,
                current: t.clone(),
                remembered,
            }),
        }
    }
    Ok(found)
}

/// The name `table` (as configured) has now, found by the OID the state store remembers
/// for it: `None` when none is remembered or no table has it any more.
pub async fn renamed_to(
    client: &Client,
    store: &Store,
    table: &TableRef,
) -> Result<Option<TableRef>, SetupError> {
    let key = oid_key(table);
    let Some(oid) = store
        .run(move |s| s.meta(&key))
        .await
        .map_err(|e| SetupError::Check(format!("reading the state store: {e}")))?
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return Ok(None);
    };
    name_of(client, oid, table).await
}

/// The current name of the table with `oid` (`configured`, for messages), if one has it.
async fn name_of(
    client: &Client,
    oid: u32,
    configured: &TableRef,
) -> Result<Option<TableRef>, SetupError> {
    let row = client
        .query_opt(
            "select n.nspname::text, c.relname::text from pg_class c
               join pg_namespace n on n.oid = c.relnamespace
              where c.oid = $1 and c.relkind in ('r', 'p')",
            &[&oid],
        )
        .await
        .map_err(crate::setup::query_err(format!(
            "looking up table {configured} by its OID"
        )))?;
    Ok(row.map(|r| TableRef::new(r.get::<_, String>(0), r.get::<_, String>(1))))
}

/// Remember the OIDs of `identities` in the state store, so a rename while sluice is
/// stopped does not lose the table.
pub async fn remember(store: &Store, identities: &[Identity]) -> Result<(), SetupError> {
    let pairs: Vec<(String, String)> = identities
        .iter()
        .filter_map(|i| Some((oid_key(&i.configured), i.oid?.to_string())))
        .collect();
    store
        .run(move |s| {
            for (k, v) in &pairs {
                s.set_meta(k, v)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| SetupError::Check(format!("cannot remember the captured tables: {e}")))
}

/// Remember one table's OID (after it was created again and added back).
pub async fn remember_one(store: &Store, configured: &TableRef, oid: u32) {
    let key = oid_key(configured);
    if let Err(e) = store.run(move |s| s.set_meta(&key, &oid.to_string())).await {
        tracing::warn!(table = %configured, error = %e, "cannot remember the table's new identity");
    }
}

/// A captured table changed its name in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rename {
    /// The name in `tables:`.
    pub configured: TableRef,
    pub from: TableRef,
    pub to: TableRef,
    /// Commit LSN of the transaction in which the new name first appears.
    pub at: Lsn,
}

/// One captured table as the stream describes it.
struct Captured {
    configured: TableRef,
    role: Role,
    /// Its name as the stream last described it (the configured one until then).
    name: TableRef,
    /// Commit LSN of the transaction in which `name` first appeared.
    since: Lsn,
    /// The stream described it at least once in this process.
    seen: bool,
    /// The configured name is its name in the catalog now: an older name the stream
    /// shows first is history being resent, not a rename.
    current_by_name: bool,
}

/// The captured tables, matched to relations by OID.
pub struct CapturedTables {
    tables: Vec<Captured>,
    by_oid: HashMap<u32, usize>,
}

/// What a Relation message (or a DDL message) describes.
#[derive(Debug, PartialEq, Eq)]
pub struct Described {
    pub role: Role,
    /// The table of `tables:` (or the outbox) it is, when captured.
    pub configured: Option<TableRef>,
    /// It carries a new name.
    pub renamed: Option<Rename>,
}

impl CapturedTables {
    /// The tables of `o`, with what [`resolve`] found (tables it did not look up are
    /// matched by name until the stream gives their OID).
    pub fn new(o: &PostgresOptions, identities: &[Identity]) -> Self {
        let mut tables = Vec::new();
        let mut by_oid = HashMap::new();
        let roles = o
            .tables
            .iter()
            .map(|t| (t, Role::Table))
            .chain(o.outbox.iter().map(|t| (t, Role::Outbox)));
        for (t, role) in roles {
            let identity = identities.iter().find(|i| &i.configured == t);
            if let Some(oid) = identity.and_then(|i| i.oid) {
                by_oid.insert(oid, tables.len());
            }
            tables.push(Captured {
                configured: t.clone(),
                role,
                name: t.clone(),
                since: Lsn::ZERO,
                seen: false,
                current_by_name: identity.is_none_or(Identity::by_name),
            });
        }
        CapturedTables { tables, by_oid }
    }

    /// Relation `oid` is called `name` in a transaction committed at `commit_lsn`: is it
    /// captured, and is that a new name for it?
    pub fn describe(&mut self, oid: u32, name: &TableRef, commit_lsn: Lsn) -> Described {
        let index = match self.by_oid.get(&oid) {
            Some(&i) => i,
            None => match self.tables.iter().position(|t| &t.name == name) {
                // A captured table's name on a relation not seen before: the table was
                // created again (or its OID was not known yet).
                Some(i) => {
                    self.by_oid.insert(oid, i);
                    i
                }
                None => {
                    return Described {
                        role: Role::Ignored,
                        configured: None,
                        renamed: None,
                    }
                }
            },
        };
        let t = &mut self.tables[index];
        let mut renamed = None;
        if &t.name != name {
            let from = t.name.clone();
            let change = if !t.seen {
                // The first description in this process: a rename unless the configured
                // name is the current one (then the stream is resending older history).
                !t.current_by_name
            } else {
                // A name older than the one known is history resent after a reconnect.
                commit_lsn > t.since
            };
            if change || !t.seen {
                t.name = name.clone();
                t.since = commit_lsn;
            }
            if change {
                renamed = Some(Rename {
                    configured: t.configured.clone(),
                    from,
                    to: name.clone(),
                    at: commit_lsn,
                });
            }
        } else if !t.seen {
            t.since = commit_lsn;
        }
        t.seen = true;
        Described {
            role: t.role,
            configured: Some(t.configured.clone()),
            renamed,
        }
    }

    /// The captured table relation `oid` is, if any.
    pub fn configured_of(&self, oid: u32) -> Option<(&TableRef, Role)> {
        self.by_oid.get(&oid).map(|&i| {
            let t = &self.tables[i];
            (&t.configured, t.role)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TableRef {
        TableRef::new("public", name)
    }

    fn options(tables: &[&str]) -> PostgresOptions {
        PostgresOptions {
            pipeline: "p".into(),
            url: String::new(),
            slot: "s".into(),
            publication: "p".into(),
            tables: tables.iter().map(|n| t(n)).collect(),
            outbox: Some(t("outbox")),
            outbox_columns: Default::default(),
            messages: Vec::new(),
            on_rename: crate::config::OnRename::Follow,
            ddl_events: false,
            streaming: true,
            backfill_chunk_rows: 20_000,
            snapshot: Vec::new(),
            filters: Vec::new(),
        }
    }

    fn identity(configured: &str, oid: u32, current: &str) -> Identity {
        Identity {
            configured: t(configured),
            oid: Some(oid),
            current: t(current),
            remembered: Some(oid),
        }
    }

    #[test]
    fn a_rename_is_followed_by_oid_and_reported_once() {
        let mut c = CapturedTables::new(&options(&["a"]), &[identity("a", 10, "a")]);
        let d = c.describe(10, &t("a"), Lsn(100));
        assert_eq!((d.role, d.renamed), (Role::Table, None));
        let d = c.describe(10, &t("b"), Lsn(200));
        assert_eq!(d.role, Role::Table);
        assert_eq!(
            d.renamed,
            Some(Rename {
                configured: t("a"),
                from: t("a"),
                to: t("b"),
                at: Lsn(200)
            })
        );
        assert_eq!(c.describe(10, &t("b"), Lsn(300)).renamed, None);
        // A reconnect resends history from before the rename: no rename back and forth.
        assert_eq!(c.describe(10, &t("a"), Lsn(150)).renamed, None);
        assert_eq!(c.describe(10, &t("b"), Lsn(200)).renamed, None);
        // Another table with the old name is not the captured one.
        assert_eq!(c.describe(11, &t("a"), Lsn(400)).role, Role::Ignored);
        assert_eq!(c.describe(12, &t("other"), Lsn(400)).role, Role::Ignored);
        assert_eq!(c.describe(13, &t("outbox"), Lsn(400)).role, Role::Outbox);
    }

    #[test]
    fn a_table_created_again_under_its_name_is_captured() {
        let mut c = CapturedTables::new(&options(&["a"]), &[identity("a", 10, "a")]);
        c.describe(10, &t("a"), Lsn(100));
        let d = c.describe(20, &t("a"), Lsn(300));
        assert_eq!(
            (d.role, d.renamed, d.configured),
            (Role::Table, None, Some(t("a")))
        );
        assert_eq!(c.configured_of(20), Some((&t("a"), Role::Table)));
    }

    #[test]
    fn a_rename_while_stopped_is_reported_at_the_first_description() {
        // `a` was renamed to `b` before this start: found by its remembered OID.
        let mut c = CapturedTables::new(&options(&["a"]), &[identity("a", 10, "b")]);
        let d = c.describe(10, &t("b"), Lsn(100));
        assert_eq!(d.renamed.map(|r| (r.from, r.to)), Some((t("a"), t("b"))));
    }

    #[test]
    fn an_older_name_resent_after_the_file_was_updated_is_history() {
        // `tables: [b]` after the rename; the slot still holds changes from before it.
        let mut c = CapturedTables::new(&options(&["b"]), &[identity("b", 10, "b")]);
        assert_eq!(c.describe(10, &t("a"), Lsn(100)).renamed, None);
        let d = c.describe(10, &t("b"), Lsn(200));
        assert_eq!(
            d.renamed.map(|r| (r.from, r.to)),
            Some((t("a"), t("b"))),
            "the stream reaching the rename says so"
        );
    }
}
