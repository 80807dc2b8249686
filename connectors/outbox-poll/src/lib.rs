//! The polling outbox source (`source.type: postgres_outbox_poll`): for databases where
//! logical replication is not allowed, outbox rows are read in id order with
//! `SELECT … FOR UPDATE SKIP LOCKED`, published as the same `op: event` envelopes the WAL
//! outbox gives, and deleted (or marked) once every sink has committed them.
//!
//! - [`config`]: the `source:` keys of a pipeline file;
//! - [`table`]: the outbox table as found in the catalog (columns, types, rights) and the
//!   statements that read and settle it;
//! - [`source`]: the relay lock, the polls, positions from ids, deletion on acknowledgement;
//! - [`connector`]: the source type as the command line sees it (the registry's entry).

pub mod config;
pub mod connector;
pub mod source;
pub mod table;

pub use config::{AfterPublish, PollConfig};
pub use connector::{build, PollConnector};
pub use source::PollSource;

/// The registry entry of `type: postgres_outbox_poll`.
pub const SOURCE: sluice_runtime::registry::SourceType = sluice_runtime::registry::SourceType {
    name: "postgres_outbox_poll",
    build,
};
