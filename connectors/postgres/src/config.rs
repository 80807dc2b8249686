//! The `postgres` source's keys in a pipeline file, and the rules serde cannot check.
//!
//! ```yaml
//! source:
//!   type: postgres
//!   url: ${DATABASE_URL}
//!   slot: sluice_orders            # default sluice_<pipeline>
//!   publication: sluice_orders     # default sluice_<pipeline>
//!   tables: [public.orders, customers]
//!   outbox: { table: public.outbox, columns: { type: event_type } }
//!   messages: [orders]
//!   snapshot: never               # initial: the first start backfills every table
//!   backfill: { chunk_rows: 10000, tables: { customers: { where: "region = 'eu'" } } }
//!   on_rename: follow              # follow | stop
//!   ddl_events: false              # schema changes of captured tables as events
//!   streaming: true                # stream large transactions before their commit
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_runtime::config::{ConfigError, Secret, SourceSection, TableName};

use crate::options::{PostgresOptions, TableRef};

/// `source:` with `type: postgres`: a PostgreSQL database read through logical
/// replication.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// Connection URL, e.g. `postgres://sluice:${PGPASSWORD}@db:5432/app`. The user needs the
    /// REPLICATION attribute. Never printed.
    pub url: Secret,
    /// Replication slot; created if missing. Default `sluice_<pipeline>` (`-` becomes `_`);
    /// `a-z`, `0-9` and `_`, at most 63 characters.
    pub slot: String,
    /// Publication; created for `tables` if missing. Default and rules as for `slot`.
    pub publication: String,
    /// Tables whose row changes become events, as `schema.table` or `table` (schema
    /// `public`). Unquoted names are folded to lower case as Postgres does; quote a name that
    /// is not, e.g. `'public."Order Lines"'`. At least one unless `outbox` or `messages` is set.
    pub tables: Vec<TableName>,
    /// An outbox table whose inserted rows become events of their own type.
    pub outbox: Option<OutboxConfig>,
    /// `pg_logical_emit_message` prefixes captured as events.
    pub messages: Vec<String>,
    /// `initial`: the first start backfills every table in `tables` to every sink while
    /// streaming begins at once; `never` (default): stream changes from the slot's creation
    /// on. `backfill.tables` overrides it per table.
    pub snapshot: Snapshot,
    /// How backfills (`snapshot: initial`, `sluice backfill`) read the tables.
    pub backfill: BackfillConfig,
    /// What to do when a captured table is renamed or moved to another schema: `follow`
    /// (default) goes on capturing it under its new name, `stop` ends the pipeline there.
    pub on_rename: OnRename,
    /// `true`: schema changes of captured tables (`ALTER TABLE`, `CREATE TABLE` of a
    /// dropped one, `DROP TABLE`) become `op: event` envelopes of type `schema_change`,
    /// placed in the stream before the first row of the new shape. Needs the DDL event
    /// trigger sluice installs when the role may (a superuser). Default `false`.
    pub ddl_events: bool,
    /// `true` (default): on PostgreSQL 14 and later, large transactions are streamed while
    /// they run, staged on disk beside the state store, and delivered at their commit, so
    /// neither sluice's memory nor the server's disk grows with a transaction's size.
    /// Ignored (with one log line) on an older server.
    pub streaming: bool,
}

/// `source.on_rename:` what a rename (or a move to another schema) of a captured table does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRename {
    /// Go on capturing the table under its new name: `source.schema` and `source.table`
    /// (and so `{schema}` and `{table}` in templates) carry the new name from the rename
    /// on, and a `table_renamed` notice says so (the default).
    #[default]
    Follow,
    /// End the pipeline with an error naming the old and the new name, before any change
    /// made under the new name is delivered; nothing after the rename is confirmed to the
    /// slot, so the next start (with `follow`, or the new name in `tables`) loses nothing.
    Stop,
}

/// `source.outbox:`: rows inserted into an outbox table are captured from the WAL (never
/// polled) and become events of their own `type`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with `table`, `columns` and `delete_after_capture`"
)]
pub struct OutboxConfig {
    /// The outbox table. Its columns (names as in `columns`): `id`, `aggregate_type`,
    /// `aggregate_id`, `type`, `payload` (jsonb) and optionally `headers` (jsonb).
    pub table: TableName,
    /// The outbox's column names, when they differ from the defaults.
    #[serde(default)]
    pub columns: OutboxColumns,
    /// Set to `true` when the application deletes each outbox row in the same transaction
    /// that inserts it (the recipe in the README: the insert is still in the WAL, so the
    /// event is delivered, and the table never grows). Deletes of outbox rows are never
    /// delivered either way; the setting says the table is meant to stay empty. Default
    /// `false`.
    #[serde(default)]
    pub delete_after_capture: bool,
}

/// `source.outbox.columns:` (and the polling source's `columns:`): which column of the
/// outbox table holds each part of the event. Every key is optional.
///
/// ```yaml
/// columns: { id: event_id, type: event_type, headers: metadata }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a map of `id`, `aggregate_type`, `aggregate_id`, `type`, `payload` and `headers` to column names"
)]
#[non_exhaustive]
pub struct OutboxColumns {
    /// The event's id (the envelope's `message.id`). Default `id`.
    pub id: String,
    /// What kind of thing the event is about, e.g. `order` (`message.aggregate_type`; the
    /// Kafka sink's default topic). Default `aggregate_type`.
    pub aggregate_type: String,
    /// Which one, e.g. the order's id (`message.aggregate_id`, and the event's key: events
    /// of one aggregate stay in order). Default `aggregate_id`.
    pub aggregate_id: String,
    /// The event's type, e.g. `order_created` (`message.type`). Default `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's body, jsonb (`message.payload`). Default `payload`.
    pub payload: String,
    /// Optional jsonb of headers (`message.headers`); a table without this column gives
    /// events without headers. Default `headers`.
    pub headers: String,
}

impl Default for OutboxColumns {
    fn default() -> Self {
        OutboxColumns {
            id: "id".into(),
            aggregate_type: "aggregate_type".into(),
            aggregate_id: "aggregate_id".into(),
            kind: "type".into(),
            payload: "payload".into(),
            headers: "headers".into(),
        }
    }
}

impl OutboxColumns {
    /// Each column with its key, in the envelope's order: `[("id", "id"), ...]`.
    pub fn named(&self) -> [(&'static str, &str); 6] {
        [
            ("id", &self.id),
            ("aggregate_type", &self.aggregate_type),
            ("aggregate_id", &self.aggregate_id),
            ("type", &self.kind),
            ("payload", &self.payload),
            ("headers", &self.headers),
        ]
    }
}

/// `source.backfill:`: how tables are copied into the stream.
///
/// ```yaml
/// backfill:
///   chunk_rows: 10000
///   tables:
///     public.audit_log: { snapshot: never }
///     public.orders: { where: "created_at > now() - interval '90 days'" }
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a map with `chunk_rows` and `tables`"
)]
pub struct BackfillConfig {
    /// The largest chunk, in rows: chunks start at 1000 rows and double while one takes
    /// less than 250 ms. Each chunk is one `COPY (SELECT …)` in key order. Default 10000.
    pub chunk_rows: usize,
    /// Settings of single tables of `tables`, by name.
    pub tables: BTreeMap<TableName, TableBackfill>,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            chunk_rows: 10_000,
            tables: BTreeMap::new(),
        }
    }
}

/// `source.backfill.tables.<table>:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with `snapshot` and `where`")]
pub struct TableBackfill {
    /// Whether the initial snapshot copies this table; default: `source.snapshot`.
    #[serde(default)]
    pub snapshot: Option<Snapshot>,
    /// A SQL condition on the table's columns: only rows that meet it are copied (by the
    /// initial snapshot and by `sluice backfill` when it is given no `--where`).
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
}

/// `source.snapshot:`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Snapshot {
    /// The first start backfills the tables while streaming.
    Initial,
    /// Only stream changes from the slot's position on (the default).
    #[default]
    Never,
}

/// `source:` as written; see [`PostgresConfig`] for what each key means.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with `type: postgres`, `url`, `tables` and the other source keys"
)]
struct Raw {
    url: Secret,
    #[serde(default)]
    slot: Option<String>,
    #[serde(default)]
    publication: Option<String>,
    #[serde(default)]
    tables: Vec<TableName>,
    #[serde(default)]
    outbox: Option<OutboxConfig>,
    #[serde(default)]
    messages: Vec<String>,
    #[serde(default)]
    snapshot: Snapshot,
    #[serde(default)]
    backfill: BackfillConfig,
    #[serde(default)]
    on_rename: OnRename,
    #[serde(default)]
    ddl_events: bool,
    #[serde(default = "streaming_default")]
    streaming: bool,
}

fn streaming_default() -> bool {
    true
}

impl PostgresConfig {
    /// Read and check the `source:` section. Errors name the key and its line.
    pub fn from_section(section: &SourceSection) -> Result<Self, ConfigError> {
        let raw: Raw = section.parse()?;
        if raw.url.expose().trim().is_empty() {
            return Err(section.error("url", "the connection URL is empty"));
        }
        let default = format!("sluice_{}", section.pipeline.replace('-', "_"));
        let slot = pg_name(raw.slot, "slot", &default, section)?;
        let publication = pg_name(raw.publication, "publication", &default, section)?;
        if raw.tables.is_empty() && raw.outbox.is_none() && raw.messages.is_empty() {
            return Err(section.error(
                "tables",
                "there is nothing to capture: list at least one table (or set `outbox` or `messages`)",
            ));
        }
        for (i, t) in raw.tables.iter().enumerate() {
            if raw.tables[..i].contains(t) {
                return Err(
                    section.error(&format!("tables[{i}]"), format!("`{t}` is listed twice"))
                );
            }
        }
        for (i, m) in raw.messages.iter().enumerate() {
            if m.is_empty() {
                return Err(section.error(
                    &format!("messages[{i}]"),
                    "a message prefix cannot be empty",
                ));
            }
            if m == "sluice" || m.starts_with(crate::ddl::RESERVED_PREFIX) {
                return Err(section.error(
                    &format!("messages[{i}]"),
                    format!(
                        "`{m}` is reserved: prefixes starting with `{}` carry sluice's own \
                         messages (schema changes) and are never delivered as user messages",
                        crate::ddl::RESERVED_PREFIX
                    ),
                ));
            }
        }
        if raw.backfill.chunk_rows == 0 || raw.backfill.chunk_rows > 1_000_000 {
            return Err(section.error(
                "backfill.chunk_rows",
                format!(
                    "{} rows: a chunk holds from 1 to 1000000 rows",
                    raw.backfill.chunk_rows
                ),
            ));
        }
        for (t, setting) in &raw.backfill.tables {
            if !raw.tables.contains(t) {
                return Err(section.error(
                    &format!("backfill.tables.{t}"),
                    format!(
                        "`{t}` is not one of source.tables: only captured tables are backfilled"
                    ),
                ));
            }
            if setting
                .filter
                .as_deref()
                .is_some_and(|f| f.trim().is_empty())
            {
                return Err(section.error(
                    &format!("backfill.tables.{t}.where"),
                    "the condition is empty; leave `where` out to copy every row",
                ));
            }
        }
        Ok(PostgresConfig {
            url: raw.url,
            slot,
            publication,
            tables: raw.tables,
            outbox: raw.outbox,
            messages: raw.messages,
            snapshot: raw.snapshot,
            backfill: raw.backfill,
            on_rename: raw.on_rename,
            ddl_events: raw.ddl_events,
            streaming: raw.streaming,
        })
    }

    /// What the source needs at run time.
    pub fn options(&self, pipeline: &str) -> PostgresOptions {
        let table = |t: &TableName| TableRef::new(t.schema.clone(), t.name.clone());
        PostgresOptions {
            pipeline: pipeline.to_string(),
            url: self.url.expose().to_string(),
            slot: self.slot.clone(),
            publication: self.publication.clone(),
            tables: self.tables.iter().map(table).collect(),
            outbox: self.outbox.as_ref().map(|o| table(&o.table)),
            outbox_columns: self
                .outbox
                .as_ref()
                .map(|o| o.columns.clone())
                .unwrap_or_default(),
            messages: self.messages.clone(),
            on_rename: self.on_rename,
            ddl_events: self.ddl_events,
            streaming: self.streaming,
            backfill_chunk_rows: self.backfill.chunk_rows,
            snapshot: self
                .tables
                .iter()
                .filter(|t| {
                    let setting = self.backfill.tables.get(t).and_then(|s| s.snapshot);
                    setting.unwrap_or(self.snapshot) == Snapshot::Initial
                })
                .map(table)
                .collect(),
            filters: self
                .backfill
                .tables
                .iter()
                .filter_map(|(t, s)| Some((table(t), s.filter.clone()?)))
                .collect(),
        }
    }
}

/// A slot or publication name: as given, or the default; `[a-z0-9_]{1,63}` either way.
fn pg_name(
    given: Option<String>,
    what: &str,
    default: &str,
    section: &SourceSection,
) -> Result<String, ConfigError> {
    let valid = |s: &str| {
        (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    match given {
        Some(name) if valid(&name) => Ok(name),
        Some(name) => Err(section.error(
            what,
            format!(
                "`{name}` is not a valid {what} name: 1 to 63 lower-case letters, digits and _"
            ),
        )),
        None if valid(default) => Ok(default.to_string()),
        None => Err(section.error(
            what,
            format!(
                "the default {what} name `{default}` is longer than 63 characters; \
                 set `{what}` or shorten the pipeline's name"
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
