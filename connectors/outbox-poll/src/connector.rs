//! The `postgres_outbox_poll` source type as the command line sees it: built from the
//! `source:` section, checked by `validate --connect`, prepared by `run`, described by
//! `status`. It creates nothing upstream, so `teardown` has nothing to drop.

use std::path::Path;

use async_trait::async_trait;
use serde_json::json;
use sluice_postgres::setup::{describe, target};
use sluice_runtime::config::{ConfigError, SourceSection};
use sluice_runtime::source::{Source, SourceConnector, Teardown, UpstreamReport};
use sluice_runtime::state::Store;
use sluice_runtime::SourceError;
use tokio_postgres::Client;

use crate::config::{AfterPublish, PollConfig};
use crate::source::{PollOptions, PollSource};
use crate::table::{Outbox, TableError, LOCK_KEY_SQL};

/// The registry's builder for `type: postgres_outbox_poll`.
pub fn build(section: &SourceSection) -> Result<Box<dyn SourceConnector>, ConfigError> {
    Ok(Box::new(PollConnector {
        config: PollConfig::from_section(section)?,
        pipeline: section.pipeline.clone(),
    }))
}

/// `type: postgres_outbox_poll` for the command line.
pub struct PollConnector {
    config: PollConfig,
    pipeline: String,
}

impl PollConnector {
    pub fn config(&self) -> &PollConfig {
        &self.config
    }

    async fn connect(&self) -> Result<Client, SourceError> {
        let url = self.config.url.expose();
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                SourceError::transient(format!(
                    "cannot connect to {}: {}",
                    target(url),
                    describe(&e)
                ))
            })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "catalog connection ended");
            }
        });
        Ok(client)
    }

    async fn inspect(&self, client: &Client) -> Result<Outbox, SourceError> {
        Outbox::inspect(
            client,
            &self.config.table_ref(),
            &self.config.columns,
            &self.config.after_publish,
        )
        .await
        .map_err(|e| match e.is_transient() {
            true => SourceError::transient(e),
            false => SourceError::fatal(e),
        })
    }

    /// Whether a relay holds the outbox's lock (is polling it now).
    async fn relay_active(client: &Client, outbox: &Outbox) -> Result<bool, TableError> {
        // A bigint advisory key shows in pg_locks as classid (high half), objid (low half).
        client
            .query_one(
                &format!(
                    "select exists(select 1 from pg_locks where locktype = 'advisory' and objsubid = 1 \
                       and granted and ((classid::bigint << 32) | objid::bigint) = {LOCK_KEY_SQL})"
                ),
                &[&outbox.oid],
            )
            .await
            .map(|r| r.get(0))
            .map_err(crate::table::query_err("cannot look for a polling relay"))
    }
}

#[async_trait]
impl SourceConnector for PollConnector {
    fn summary(&self) -> String {
        format!("outbox {} polled", self.config.table)
    }

    async fn check(&self) -> Result<Vec<String>, SourceError> {
        let client = self.connect().await?;
        let outbox = self.inspect(&client).await?;
        let settle = match &outbox.after_publish {
            AfterPublish::Delete => "deletes published rows".to_string(),
            AfterPublish::Mark { column } => format!("sets {column} on published rows"),
        };
        Ok(vec![
            format!(
                "postgres_outbox_poll: outbox {} has the configured columns, an integer id, and the role \
                 may read, lock and settle its rows ({settle})",
                outbox.table
            ),
            format!(
                "postgres_outbox_poll: polls every {} for up to {} rows; one relay polls at a time \
                 (an advisory lock on the table)",
                humantime(self.config.poll_interval),
                self.config.batch_size
            ),
        ])
    }

    async fn prepare(
        &self,
        _store: &Store,
        _work_dir: &Path,
    ) -> Result<Box<dyn Source>, SourceError> {
        let client = self.connect().await?;
        let outbox = self.inspect(&client).await?;
        Ok(Box::new(PollSource::new(PollOptions {
            pipeline: self.pipeline.clone(),
            url: self.config.url.expose().to_string(),
            outbox,
            columns: self.config.columns.clone(),
            poll_interval: self.config.poll_interval,
            batch_size: self.config.batch_size,
        })))
    }

    async fn describe(&self) -> UpstreamReport {
        let mut report = UpstreamReport::default();
        let looked = async {
            let client = self.connect().await.map_err(|e| e.to_string())?;
            let outbox = self.inspect(&client).await.map_err(|e| e.to_string())?;
            let backlog: i64 = client
                .query_one(&outbox.backlog_sql(), &[])
                .await
                .map_err(|e| describe(&e))?
                .get(0);
            let active = Self::relay_active(&client, &outbox)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((outbox, backlog, active))
        };
        match looked.await {
            Ok((outbox, backlog, active)) => {
                report.active = active;
                report.lines.push(format!(
                    "outbox {}: {backlog} row(s) to publish, {}",
                    outbox.table,
                    if active {
                        "a relay is polling it"
                    } else {
                        "no relay is polling it"
                    }
                ));
                report.json.insert(
                    "outbox".into(),
                    json!({"table": outbox.table.to_string(), "backlog": backlog, "relay_active": active}),
                );
            }
            Err(e) => {
                report.lines.push(format!("outbox: unknown ({e})"));
                report.json.insert("outbox".into(), serde_json::Value::Null);
                report.error = Some(e);
            }
        }
        report
    }

    async fn teardown(&self) -> Result<Teardown, SourceError> {
        let client = self.connect().await?;
        let outbox = self.inspect(&client).await?;
        if Self::relay_active(&client, &outbox)
            .await
            .map_err(SourceError::fatal)?
        {
            return Err(SourceError::fatal(format!(
                "a relay is still polling outbox {}: stop it first",
                outbox.table
            )));
        }
        Ok(Teardown {
            done: vec![format!(
                "outbox {}: nothing to drop (the polling source creates nothing upstream; \
                 rows not yet published stay in the table)",
                outbox.table
            )],
            for_admin: Vec::new(),
        })
    }
}

/// `500ms`, `2s`.
fn humantime(d: std::time::Duration) -> String {
    match d.subsec_millis() {
        0 => format!("{}s", d.as_secs()),
        _ => format!("{}ms", d.as_millis()),
    }
}
