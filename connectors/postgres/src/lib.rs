//! PostgreSQL source for sluice.
//!
//! - [`replication`]: the replication-mode connection (startup, auth, CopyBoth);
//! - [`pgoutput`]: the pgoutput message decoder (protocol 1 and 2);
//! - [`types`], [`values`], [`array`]: typed values from Postgres' text forms;
//! - [`backfill`]: tables copied into the stream in chunks between watermarks (`op: read`);
//! - [`events`]: pgoutput messages to envelopes (relations, keys, TOAST, outbox, messages);
//! - [`tables`]: the captured tables by identity (OID), through renames and re-creations;
//! - [`ddl`]: the DDL event trigger, its messages and `schema_change` events;
//! - [`publication`]: captured tables kept in the publication while running, gaps noticed;
//! - [`stream`]: transactions streamed before their commit, staged on disk;
//! - [`setup`]: checks, publication and slot management, status and teardown;
//! - [`source`]: a replication session per open, batches per read, standby status updates;
//! - [`config`]: the `source:` keys of a pipeline file;
//! - [`connector`]: the source type as the command line sees it (the registry's entry).

pub mod array;
pub mod backfill;
pub mod config;
pub mod connector;
pub mod ddl;
pub mod events;
pub mod options;
pub mod pgoutput;
pub mod publication;
pub mod replication;
pub mod setup;
pub mod source;
pub mod stream;
pub mod tables;
pub mod types;
pub mod values;

pub use config::PostgresConfig;
pub use connector::{build, PostgresConnector};
pub use options::{PostgresOptions, TableRef};
pub use source::PostgresSource;

/// The registry entry of `type: postgres`.
pub const SOURCE: sluice_runtime::registry::SourceType = sluice_runtime::registry::SourceType {
    name: "postgres",
    build,
};
