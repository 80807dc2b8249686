//! The `postgres` source type as the command line sees it: built from the `source:`
//! section, checked by `validate --connect`, prepared by `run` (slot, publication, the
//! cluster the state store belongs to), described by `status`, torn down by `teardown`.

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_runtime::config::{ConfigError, SourceSection};
use sluice_runtime::source::{Source, SourceConnector, Teardown, UpstreamReport};
use sluice_runtime::state::Store;
use sluice_runtime::units::human_bytes;
use sluice_runtime::{Lsn, SourceError};

use crate::config::{PostgresConfig, Snapshot};
use crate::options::PostgresOptions;
use crate::replication::ReplicationConnection;
use crate::setup::{self, SetupError};
use crate::source::PostgresSource;

/// The registry's builder for `type: postgres`.
pub fn build(section: &SourceSection) -> Result<Box<dyn SourceConnector>, ConfigError> {
    let config = PostgresConfig::from_section(section)?;
    if config.snapshot == Snapshot::Initial {
        return Err(section.error(
            "snapshot",
            "`snapshot: initial` is not available in this build yet; \
             use `never` (stream changes from now on)",
        ));
    }
    Ok(Box::new(PostgresConnector {
        options: config.options(&section.pipeline),
    }))
}

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

#[async_trait]
impl SourceConnector for PostgresConnector {
    fn summary(&self) -> String {
        format!("{} table(s)", self.options.tables.len())
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
        Ok(vec![
            format!(
                "postgres: wal_level=logical, tables present, replication allowed (cluster {})",
                system.system_id
            ),
            format!("postgres: {rights}"),
        ])
    }

    async fn prepare(&self, store: &Store) -> Result<Box<dyn Source>, SourceError> {
        let has_offsets = !store
            .run(|s| s.offsets())
            .await
            .map_err(SourceError::fatal)?
            .is_empty();
        self.check_cluster(store, has_offsets).await?;
        let client = setup::connect(&self.options.url).await.map_err(failed)?;
        setup::prepare(&client, &self.options, has_offsets)
            .await
            .map_err(failed)?;
        Ok(Box::new(PostgresSource::new(self.options.clone())))
    }

    async fn describe(&self) -> UpstreamReport {
        let slot = match setup::connect(&self.options.url).await {
            Ok(client) => setup::slot_status(&client, &self.options.slot).await,
            Err(e) => Err(e),
        };
        let mut report = UpstreamReport::default();
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

    async fn teardown(&self) -> Result<Teardown, SourceError> {
        let client = setup::connect(&self.options.url).await.map_err(failed)?;
        setup::teardown(&client, &self.options.slot, &self.options.publication)
            .await
            .map_err(failed)
    }
}
