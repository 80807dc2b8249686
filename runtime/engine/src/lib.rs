//! The sluice engine.
//!
//! - [`event`]: the envelope every stage sees;
//! - [`lsn`]: WAL locations and stream positions;
//! - [`sink`]: the contract sink connectors implement;
//! - [`config`]: pipeline files (YAML, `${VAR}` interpolation, located errors).

pub mod config;
pub mod event;
pub mod lsn;
pub mod sink;

pub use event::{Column, Event, Message, Op, Row, Source, Value};
pub use lsn::{Lsn, Position};
pub use sink::{Delivery, Sink};
