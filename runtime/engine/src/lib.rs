//! The sluice engine.
//!
//! - [`event`]: the envelope every stage sees;
//! - [`lsn`]: WAL locations and stream positions;
//! - [`sink`]: the contract sink connectors implement;
//! - [`lanes`]: the lane executor: per-key order under concurrency, for every sink;
//! - [`config`]: pipeline files (YAML, `${VAR}` interpolation, located errors);
//! - [`chain`]: transform chains (pipeline-level, per sink);
//! - [`source`]: the source contract (open, read, acknowledge) the engine drives;
//! - [`journal`]: the bounded log between the source and the sinks;
//! - [`codec`]: journal entries as bytes and back, losslessly;
//! - [`driver`]: one task per sink: batching, retries, offsets;
//! - [`progress`]: every sink's position and what the slot may confirm;
//! - [`state`]: offsets and sink status in SQLite;
//! - [`engine`]: wires it all and runs until shutdown;
//! - [`registry`]: which source and sink types a build knows, as tables;
//! - [`admin`]: health, readiness, metrics and status over HTTP;
//! - [`telemetry`]: metrics, counted on the hot path with atomics, rendered per scrape;
//! - [`template`]: names sinks derive from events (`{table}:{key}`, `{schema}.{table}`);
//! - [`testing`]: events for unit tests of sinks and stages.

pub mod admin;
pub mod chain;
pub mod codec;
pub mod config;
pub mod driver;
pub mod engine;
pub mod envelope;
pub mod event;
mod feed;
pub mod journal;
pub mod lanes;
pub mod lsn;
pub mod progress;
pub mod registry;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod state;
mod supervisor;
pub mod telemetry;
pub mod template;
pub mod testing;
pub mod units;
pub mod wait;

pub use event::{Column, Event, Message, Op, Row, Source, Value};
pub use lsn::{Lsn, Position};
pub use shutdown::Shutdown;
pub use sink::{Delivery, Sink};
pub use source::SourceError;
