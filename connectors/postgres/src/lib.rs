//! PostgreSQL source for sluice.
//!
//! - [`replication`]: the replication-mode connection (startup, auth, CopyBoth);
//! - [`pgoutput`]: the pgoutput message decoder (protocol 1 and 2);
//! - [`types`], [`values`], [`array`]: typed values from Postgres' text forms;
//! - [`events`]: pgoutput messages to envelopes (relations, keys, TOAST, outbox, messages);
//! - [`setup`]: checks, publication and slot management, status and teardown;
//! - [`source`]: the streaming loop, reconnects and standby status updates.

pub mod array;
pub mod events;
pub mod options;
pub mod pgoutput;
pub mod replication;
pub mod setup;
pub mod source;
pub mod types;
pub mod values;

pub use options::{PostgresOptions, TableRef};
pub use source::PostgresSource;
