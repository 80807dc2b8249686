//! The blackhole sink: every event is counted and thrown away.
//!
//! It measures everything before the sink (the source, decoding, the journal, the driver)
//! and is handy to dry-run a pipeline. It never encodes an event, never does I/O and never
//! fails, so it costs as close to nothing as a sink can.
//!
//! - [`config`]: the sink's keys in a pipeline file (none);
//! - [`sink`]: [`BlackholeSink`], the sink itself.

pub mod config;
pub mod sink;

pub use config::BlackholeConfig;
pub use sink::BlackholeSink;
