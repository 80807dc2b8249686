//! The `postgres_outbox_poll` source's keys in a pipeline file, and the rules serde cannot
//! check.
//!
//! ```yaml
//! source:
//!   type: postgres_outbox_poll
//!   url: ${DATABASE_URL}
//!   table: public.outbox          # default public.outbox
//!   columns: { type: event_type } # default: id, aggregate_type, aggregate_id, type, payload, headers
//!   poll_interval: 500ms          # default 500ms
//!   batch_size: 500               # default 500
//!   after_publish: delete         # delete (default) | mark
//!   published_at: published_at    # with `mark`: the column set to now()
//! ```

use std::time::Duration;

use serde::Deserialize;
use sluice_postgres::config::OutboxColumns;
use sluice_postgres::TableRef;
use sluice_runtime::config::{duration, ConfigError, Secret, SourceSection, TableName};

/// The largest `batch_size`: one poll's rows are one statement's result and one journal
/// append.
pub const MAX_BATCH_SIZE: u32 = 10_000;

/// `source:` with `type: postgres_outbox_poll`: an outbox table read by polling, for a
/// database where logical replication is not allowed.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PollConfig {
    /// Connection URL, e.g. `postgres://relay:${PGPASSWORD}@db:5432/app`. An ordinary role
    /// (no REPLICATION) with SELECT and UPDATE on the outbox, and DELETE with
    /// `after_publish: delete`. Never printed.
    pub url: Secret,
    /// The outbox table, as `schema.table` or `table` (schema `public`). Default
    /// `public.outbox`.
    pub table: TableName,
    /// The outbox's column names, when they differ from the defaults (`id`,
    /// `aggregate_type`, `aggregate_id`, `type`, `payload`, `headers`: the WAL outbox's).
    /// The id column must be an increasing integer (`bigserial`, `serial`, an identity
    /// column).
    pub columns: OutboxColumns,
    /// How long to wait after a poll that found nothing. Events wait up to this long
    /// before they are read. Default `500ms`.
    pub poll_interval: Duration,
    /// The most rows read by one poll, 1 to 10000. Default `500`.
    pub batch_size: u32,
    /// What happens to a row once every sink has committed its event: `delete` (default)
    /// or `mark` (set `published_at`).
    pub after_publish: AfterPublish,
}

/// `source.after_publish:` what becomes of a published outbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterPublish {
    /// Delete it: the table holds only what is still to be published (the default).
    Delete,
    /// Set this column (a nullable `timestamp`/`timestamptz`, from the key `published_at`,
    /// default `published_at`) to `now()`; rows where it is set are never read again.
    /// Index the unpublished rows so polls stay fast while the table grows:
    /// `CREATE INDEX ON outbox (id) WHERE published_at IS NULL`.
    Mark { column: String },
}

/// `after_publish` as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Delete,
    Mark,
}

/// `source:` as written; see [`PollConfig`] for what each key means.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with `type: postgres_outbox_poll`, `url` and the other source keys"
)]
struct Raw {
    url: Secret,
    #[serde(default = "table_default")]
    table: TableName,
    #[serde(default)]
    columns: OutboxColumns,
    #[serde(default = "poll_interval_default", with = "duration")]
    poll_interval: Duration,
    #[serde(default = "batch_size_default")]
    batch_size: u32,
    #[serde(default)]
    after_publish: Mode,
    #[serde(default)]
    published_at: Option<String>,
}

fn table_default() -> TableName {
    TableName::new("public", "outbox")
}

fn poll_interval_default() -> Duration {
    Duration::from_millis(500)
}

fn batch_size_default() -> u32 {
    500
}

impl PollConfig {
    /// Read and check the `source:` section. Errors name the key and its line.
    pub fn from_section(section: &SourceSection) -> Result<Self, ConfigError> {
        let raw: Raw = section.parse()?;
        if raw.url.expose().trim().is_empty() {
            return Err(section.error("url", "the connection URL is empty"));
        }
        if raw.poll_interval.is_zero() {
            return Err(section.error(
                "poll_interval",
                "the poll interval must be longer than 0 (e.g. 500ms)",
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&raw.batch_size) {
            return Err(section.error(
                "batch_size",
                format!(
                    "`{}` is out of range: 1 to {MAX_BATCH_SIZE}",
                    raw.batch_size
                ),
            ));
        }
        for (key, column) in raw.columns.named() {
            if column.is_empty() {
                return Err(
                    section.error(&format!("columns.{key}"), "a column name cannot be empty")
                );
            }
        }
        let after_publish = match (raw.after_publish, raw.published_at) {
            (Mode::Delete, None) => AfterPublish::Delete,
            (Mode::Delete, Some(_)) => {
                return Err(section.error(
                    "published_at",
                    "`published_at` names the column `after_publish: mark` sets; \
                     with `after_publish: delete` rows are deleted instead",
                ))
            }
            (Mode::Mark, Some(column)) if column.is_empty() => {
                return Err(section.error("published_at", "a column name cannot be empty"))
            }
            (Mode::Mark, column) => AfterPublish::Mark {
                column: column.unwrap_or_else(|| "published_at".into()),
            },
        };
        Ok(PollConfig {
            url: raw.url,
            table: raw.table,
            columns: raw.columns,
            poll_interval: raw.poll_interval,
            batch_size: raw.batch_size,
            after_publish,
        })
    }

    /// The outbox table as the catalog queries name it.
    pub fn table_ref(&self) -> TableRef {
        TableRef::new(self.table.schema.clone(), self.table.name.clone())
    }
}

#[cfg(test)]
mod tests;
