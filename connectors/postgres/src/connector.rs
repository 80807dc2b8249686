//! The `postgres` source type as the command line sees it: built from the `source:`
//! section, checked by `validate --connect`, prepared by `run` (slot, publication, the
//! cluster the state store belongs to, the captured tables' identities, the DDL event
//! trigger), described by `status`, torn down by `teardown`.

use std::path::Path;

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_runtime::config::TableName;
use sluice_runtime::config::{ConfigError, SourceSection};
use sluice_runtime::source::{BackfillTarget, Source, SourceConnector, Teardown, UpstreamReport};
use sluice_runtime::state::{NewBackfill, Store};
use sluice_runtime::units::human_bytes;
use sluice_runtime::{Lsn, SourceError};

use crate::backfill::copy::{PlanError, TablePlan};
use crate::config::PostgresConfig;
use crate::ddl::{self, Trigger};
use crate::options::PostgresOptions;
use crate::publication::{self, Missing};
use crate::replication::ReplicationConnection;
use crate::setup::{self, SetupError, STREAMING_VERSION};
use crate::source::{PostgresSource, Prepared};
use crate::tables::{self, Identity};
use crate::types::TypeRegistry;

/// The state store's fact that the initial snapshot was requested (once per pipeline).
const SNAPSHOT_REQUESTED: &str = "snapshot_requested";

/// The registry's builder for `type: postgres`.
pub fn build(section: &SourceSection) -> Result<Box<dyn SourceConnector>, ConfigError> {
    let config = PostgresConfig::from_section(section)?;
    Ok(Box::new(PostgresConnector {
        options: config.options(&section.pipeline),
    }))
}

/// `type: postgres` for the command line.
pub struct PostgresConnector {
    options: PostgresOptions,
}

impl PostgresConnector {
    pub fn new(options: PostgresOptions) -> Self {
        PostgresConnector { options }
    }

    pub fn options(&self) -> &PostgresOptions {
        &self.options
    }

    /// The options with each captured table under its name in the catalog now (a table
    /// renamed while sluice was stopped is found by its remembered OID).
    fn current(&self, identities: &[Identity]) -> PostgresOptions {
        let now = |t: &crate::TableRef| {
            identities
                .iter()
                .find(|i| &i.configured == t)
                .map_or_else(|| t.clone(), |i| i.current.clone())
        };
        let mut o = self.options.clone();
        o.tables = self.options.tables.iter().map(now).collect();
        o.outbox = self.options.outbox.as_ref().map(now);
        o
    }

    /// The state store belongs to one PostgreSQL cluster: offsets from another cluster's
    /// WAL would skip changes silently, so refuse them.
    async fn check_cluster(&self, store: &Store, has_offsets: bool) -> Result<(), SourceError> {
        let mut conn = ReplicationConnection::connect(&self.options.url, "sluice_check")
            .await
            .map_err(|e| {
                SourceError::fatal(format!("cannot open a replication connection: {e}"))
            })?;
        let system = conn.identify_system().await.map_err(SourceError::fatal)?;
        let known = store
            .run(|s| s.meta("system_id"))
            .await
            .map_err(SourceError::fatal)?;
        match known {
            Some(known) if known != system.system_id && has_offsets => {
                Err(SourceError::fatal(format!(
                    "the state store belongs to PostgreSQL cluster {known}, but source.url reaches cluster {}; \
                     its offsets mean nothing here. Point `state:` elsewhere or run `sluice teardown` to reset",
                    system.system_id
                )))
            }
            _ => store
                .run(move |s| s.set_meta("system_id", &system.system_id))
                .await
                .map_err(SourceError::fatal),
        }
    }
}

fn failed(e: SetupError) -> SourceError {
    SourceError::fatal(e)
}

/// `snapshot: initial` on the first start: every table it names, to every sink, recorded
/// once (a restart resumes these; it does not ask again).
async fn request_snapshot(
    store: &Store,
    options: &PostgresOptions,
    has_offsets: bool,
) -> Result<(), SourceError> {
    if options.snapshot.is_empty() {
        return Ok(());
    }
    let requested = store
        .run(|s| s.meta(SNAPSHOT_REQUESTED))
        .await
        .map_err(SourceError::fatal)?;
    if requested.is_some() {
        return Ok(());
    }
    if has_offsets {
        tracing::info!(
            "snapshot: initial copies the tables on a pipeline's first start only, and this one \
             ran before; copy them now with `sluice backfill`"
        );
        return Ok(());
    }
    let requests: Vec<NewBackfill> = options
        .snapshot
        .iter()
        .map(|t| NewBackfill {
            table: TableName::new(t.schema.clone(), t.name.clone()).to_string(),
            sinks: Vec::new(),
            filter: options.filter_of(t).map(str::to_string),
        })
        .collect();
    let n = requests.len();
    store
        .run(move |s| {
            s.backfill_request(&requests)?;
            s.set_meta(SNAPSHOT_REQUESTED, "1")
        })
        .await
        .map_err(SourceError::fatal)?;
    tracing::info!(
        tables = n,
        "initial snapshot requested: the tables are copied while the stream flows"
    );
    Ok(())
}

/// One line naming the captured tables a publication lacks.
fn missing_line(publication: &str, missing: &[Missing]) -> String {
    format!(
        "postgres: publication {publication} lacks captured table(s) {}; `sluice run` adds them back \
         when the role may, and changes made while a table is missing are not captured",
        missing
            .iter()
            .map(Missing::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[async_trait]
impl SourceConnector for PostgresConnector {
    fn summary(&self) -> String {
        format!("{} table(s)", self.options.tables.len())
    }

    async fn held_log_limit(&self) -> Result<Option<(String, Option<u64>)>, SourceError> {
        let client = setup::connect(&self.options.url).await.map_err(failed)?;
        let row = client
            .query_one(
                "select setting::bigint, coalesce(unit, '') from pg_settings \
                  where name = 'max_slot_wal_keep_size'",
                &[],
            )
            .await
            .map_err(|e| SourceError::fatal(format!("cannot read max_slot_wal_keep_size: {e}")))?;
        let (setting, unit): (i64, String) = (row.get(0), row.get(1));
        let scale: u64 = match unit.as_str() {
            "kB" => 1 << 10,
            "8kB" => 8 << 10,
            "MB" => 1 << 20,
            "GB" => 1 << 30,
            _ => 1,
        };
        let limit = (setting >= 0).then(|| setting as u64 * scale);
        Ok(Some(("max_slot_wal_keep_size".into(), limit)))
    }

    async fn check(&self) -> Result<Vec<String>, SourceError> {
        let client = setup::connect(&self.options.url).await.map_err(failed)?;
        setup::check_server(&client, &self.options)
            .await
            .map_err(failed)?;
        let mut conn = ReplicationConnection::connect(&self.options.url, "sluice_validate")
            .await
            .map_err(|e| {
                SourceError::fatal(format!(
                    "cannot open a replication connection (does the role have REPLICATION?): {e}"
                ))
            })?;
        let system = conn.identify_system().await.map_err(SourceError::fatal)?;
        let rights = setup::check_rights(&client, &self.options)
            .await
            .map_err(failed)?;
        let mut lines = vec![
            format!(
                "postgres: wal_level=logical, tables present, replication allowed (cluster {})",
                system.system_id
            ),
            format!("postgres: {rights}"),
        ];
        let missing = publication::missing(&client, &self.options)
            .await
            .map_err(failed)?;
        if !missing.is_empty() {
            lines.push(missing_line(&self.options.publication, &missing));
        }
        lines.push(match ddl::trigger(&client).await.map_err(failed)? {
            Trigger::Installed => "postgres: the DDL event trigger is installed (renames and drops are \
                                   noticed in the DDL's own transaction)"
                .to_string(),
            Trigger::Missing { .. } => format!(
                "postgres: the DDL event trigger is not installed; `run` installs it when the role is a \
                 superuser, else prints the SQL for an administrator (without it renames are noticed at \
                 the next change and drops by a periodic check{})",
                if self.options.ddl_events {
                    ", and ddl_events: true delivers nothing"
                } else {
                    ""
                }
            ),
        });
        let version = setup::server_version(&client).await.map_err(failed)?;
        if !self.options.snapshot.is_empty() {
            if version < STREAMING_VERSION {
                return Err(SourceError::fatal(format!(
                    "snapshot: initial needs PostgreSQL 14 or later (the watermarks of a backfill are \
                     logical messages); this server is version {version}"
                )));
            }
            let mut types = TypeRegistry::builtin();
            for table in &self.options.snapshot {
                TablePlan::of(&client, &mut types, table)
                    .await
                    .map_err(SourceError::fatal)?;
            }
            lines.push(format!(
                "postgres: snapshot: initial can read {} table(s) in key order",
                self.options.snapshot.len()
            ));
        }
        if self.options.streaming {
            lines.push(match version >= STREAMING_VERSION {
                true => "postgres: large transactions are streamed before their commit (protocol 2)".into(),
                false => format!(
                    "postgres: server version {version} cannot stream transactions in progress (14 or \
                     later can): large transactions are decoded at their commit"
                ),
            });
        }
        Ok(lines)
    }

    async fn prepare(
        &self,
        store: &Store,
        work_dir: &Path,
    ) -> Result<Box<dyn Source>, SourceError> {
        let has_offsets = !store
            .run(|s| s.offsets())
            .await
            .map_err(SourceError::fatal)?
            .is_empty();
        self.check_cluster(store, has_offsets).await?;
        let client = setup::connect(&self.options.url).await.map_err(failed)?;
        let identities = tables::resolve(&client, store, &self.options)
            .await
            .map_err(failed)?;
        let current = self.current(&identities);
        // What the publication lacks before it is completed: a table captured by an
        // earlier run that left it (dropped and created again while sluice was stopped).
        let left = match has_offsets {
            true => publication::missing(&client, &current)
                .await
                .map_err(failed)?,
            false => Vec::new(),
        };
        setup::prepare(&client, &current, has_offsets)
            .await
            .map_err(failed)?;
        if let Trigger::Missing { sql } = ddl::ensure_trigger(&client).await.map_err(failed)? {
            tracing::warn!(
                "the DDL event trigger is not installed and this role may not create it (it takes a \
                 superuser): a rename of a captured table is noticed at its next change, a table dropped \
                 and created again by a check every few seconds{}. An administrator can install it with:\n{sql}",
                if self.options.ddl_events {
                    ", and ddl_events: true delivers no schema change until it is installed"
                } else {
                    ""
                }
            );
        }
        tables::remember(store, &identities).await.map_err(failed)?;
        request_snapshot(store, &self.options, has_offsets).await?;
        let source = PostgresSource::new(
            self.options.clone(),
            Prepared {
                identities: identities.clone(),
                work_dir: work_dir.to_path_buf(),
                store: store.clone(),
            },
        );
        let left: Vec<&Missing> = left
            .iter()
            .filter(|m| {
                m.exists
                    && identities
                        .iter()
                        .any(|i| i.current == m.table && i.remembered.is_some())
            })
            .collect();
        if !left.is_empty() {
            let at = setup::current_wal_lsn(&client).await.map_err(failed)?;
            let status = source.status();
            for m in left {
                status.notice(
                    "publication_gap",
                    format!(
                        "captured table {} was not in publication {} when sluice started (dropped and \
                         created again, or taken out of it, while sluice was stopped); sluice added it back \
                         at LSN {at}. Its changes from a moment before this run to LSN {at} may not have \
                         been captured: copy them with `sluice backfill <the file of pipeline {}> --table {}`",
                        m.table, self.options.publication, self.options.pipeline, m.table
                    ),
                );
            }
        }
        Ok(Box::new(source))
    }

    async fn describe(&self) -> UpstreamReport {
        let client = setup::connect(&self.options.url).await;
        let slot = match &client {
            Ok(client) => setup::slot_status(client, &self.options.slot).await,
            Err(e) => Err(SetupError::Check(e.to_string())),
        };
        let mut report = UpstreamReport::default();
        if let Ok(client) = &client {
            match publication::missing(client, &self.options).await {
                Ok(missing) => {
                    if !missing.is_empty() {
                        report
                            .lines
                            .push(missing_line(&self.options.publication, &missing));
                    }
                    report.json.insert(
                        "publication_missing".into(),
                        json!(missing
                            .iter()
                            .map(|m| m.table.to_string())
                            .collect::<Vec<_>>()),
                    );
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot compare the publication with source.tables")
                }
            }
        }
        match slot {
            Ok(s) => {
                report.position = s.current_wal_lsn.parse::<Lsn>().ok();
                report.active = s.active;
                report.lines.push(match s.exists {
                    true => format!(
                        "slot {}: {}, restart_lsn {}, confirmed_flush_lsn {}, wal_status {}, WAL retained {} (server at {})",
                        s.slot,
                        if s.active { "active" } else { "inactive" },
                        s.restart_lsn.as_deref().unwrap_or("-"),
                        s.confirmed_flush_lsn.as_deref().unwrap_or("-"),
                        s.wal_status.as_deref().unwrap_or("-"),
                        s.retained_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
                        s.current_wal_lsn,
                    ),
                    false => format!("slot {}: does not exist (created by `sluice run`)", s.slot),
                });
                report
                    .json
                    .insert("slot".into(), serde_json::to_value(&s).unwrap_or_default());
                report.json.insert("slot_error".into(), Value::Null);
            }
            Err(e) => {
                report.error = Some(e.to_string());
                report.lines.push(format!("slot: unknown ({e})"));
                report.json.insert("slot".into(), Value::Null);
                report
                    .json
                    .insert("slot_error".into(), json!(e.to_string()));
            }
        }
        report
    }

    async fn backfill_targets(
        &self,
        tables: &[String],
        store: &Store,
    ) -> Result<Vec<BackfillTarget>, SourceError> {
        let captured = &self.options.tables;
        let mut chosen = Vec::new();
        for given in tables {
            let name = TableName::parse(given).map_err(SourceError::fatal)?;
            let table = crate::TableRef::new(name.schema, name.name);
            if !captured.contains(&table) {
                return Err(SourceError::fatal(format!(
                    "table {table} is not captured by this pipeline (source.tables: {}); a backfill \
                     copies a captured table",
                    captured
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if !chosen.contains(&table) {
                chosen.push(table);
            }
        }
        if tables.is_empty() {
            chosen = captured.clone();
        }
        if chosen.is_empty() {
            return Err(SourceError::fatal(
                "this pipeline captures no table (only outbox rows or messages): nothing to backfill",
            ));
        }
        let client = setup::connect(&self.options.url)
            .await
            .map_err(|e| SourceError::transient(e.to_string()))?;
        let version = setup::server_version(&client)
            .await
            .map_err(|e| SourceError::transient(e.to_string()))?;
        if version < STREAMING_VERSION {
            return Err(SourceError::fatal(format!(
                "backfills need PostgreSQL 14 or later (pgoutput sends the watermarks a backfill \
                 writes into the WAL from 14 on); this server is version {version}"
            )));
        }
        let mut types = TypeRegistry::builtin();
        let mut targets = Vec::with_capacity(chosen.len());
        for table in chosen {
            let mut planned = TablePlan::of(&client, &mut types, &table).await;
            if matches!(planned, Err(PlanError::Missing(_))) {
                // Renamed since sluice last ran: the same table under its new name.
                if let Some(now) = tables::renamed_to(&client, store, &table)
                    .await
                    .map_err(|e| SourceError::transient(e.to_string()))?
                {
                    planned = TablePlan::of(&client, &mut types, &now).await;
                }
            }
            if let Err(e) = planned {
                return Err(match e.is_transient() {
                    true => SourceError::transient(e),
                    false => SourceError::fatal(e),
                });
            }
            targets.push(BackfillTarget {
                filter: self.options.filter_of(&table).map(str::to_string),
                table: TableName::new(table.schema, table.name).to_string(),
            });
        }
        Ok(targets)
    }

    async fn teardown(&self) -> Result<Teardown, SourceError> {
        let client = setup::connect(&self.options.url).await.map_err(failed)?;
        let mut report = setup::teardown(&client, &self.options.slot, &self.options.publication)
            .await
            .map_err(failed)?;
        if ddl::trigger(&client).await.map_err(failed)?.is_installed() {
            report.done.push(format!(
                "left the DDL event trigger in place: it serves every sluice pipeline of this database \
                 (once none is left, a superuser can remove it with: {})",
                ddl::UNINSTALL
            ));
        }
        Ok(report)
    }
}
