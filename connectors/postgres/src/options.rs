//! What the Postgres source needs to know, independent of how the pipeline file spells it.

use std::fmt;

use crate::config::{OnRename, OutboxColumns};

/// A schema-qualified table name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
}

impl TableRef {
    /// `schema.name`, as given (unquoted).
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableRef {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// `"schema"."name"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            crate::setup::ident(&self.schema),
            crate::setup::ident(&self.name)
        )
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// The source's settings, from [`crate::PostgresConfig::options`].
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    pub pipeline: String,
    /// libpq-style URL; contains secrets, never logged.
    pub url: String,
    pub slot: String,
    pub publication: String,
    pub tables: Vec<TableRef>,
    /// The outbox table: its inserts become `op: event` envelopes.
    pub outbox: Option<TableRef>,
    /// The outbox's column names.
    pub outbox_columns: OutboxColumns,
    /// `pg_logical_emit_message` prefixes captured as events.
    pub messages: Vec<String>,
    /// What a rename of a captured table does.
    pub on_rename: OnRename,
    /// Schema changes of captured tables become `schema_change` events.
    pub ddl_events: bool,
    /// Ask PostgreSQL 14+ to stream large transactions before their commit.
    pub streaming: bool,
    /// The largest backfill chunk, in rows.
    pub backfill_chunk_rows: usize,
    /// The tables the first start backfills (`snapshot: initial`), in `tables`' order.
    pub snapshot: Vec<TableRef>,
    /// Each table's backfill condition (`backfill.tables.<t>.where`).
    pub filters: Vec<(TableRef, String)>,
}

impl PostgresOptions {
    /// The condition a backfill of `table` applies when it is given none.
    pub fn filter_of(&self, table: &TableRef) -> Option<&str> {
        self.filters
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, f)| f.as_str())
    }
}

impl PostgresOptions {
    /// Every table the publication must contain: the captured tables and the outbox.
    pub fn captured_tables(&self) -> impl Iterator<Item = &TableRef> {
        self.tables.iter().chain(self.outbox.iter())
    }
}
