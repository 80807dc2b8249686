//! The Redis sink (`type: redis`): a cache that converges, or a stream.
//!
//! In **cache** mode every row is kept under its own key (`key: "{table}:{key}"`), as a
//! JSON document or a hash. Every write carries the event's position and a server-side
//! script applies it only if it is newer than the position stored for that key (the
//! *fence*), so replays, retries and late duplicates never regress a key; a delete leaves
//! its fence behind for `tombstone_ttl`. Unchanged TOAST columns keep their stored values.
//! In **stream** mode every event's envelope is appended to a stream with an entry id
//! derived from its position, so Redis itself refuses a replayed event.
//!
//! - [`config`]: the sink's keys in a pipeline file;
//! - [`sink`]: [`RedisSink`], batches encoded on the engine's task, run in order, answers
//!   per event;
//! - `order`: the chain that runs batches in flight in order, and the gate that keeps
//!   later batches behind a failed one;
//! - `batch`: a batch as steps (segments of script calls, truncates) and how they run;
//! - `cache`: cache mode, many rows per script call;
//! - `truncate`: cache mode's `on_truncate: delete`;
//! - `stream`: stream mode, a stream's entries per script call, stopping at a failure;
//! - `client`: the managed connection, timeouts, script loading;
//! - `retry`: what a Redis error means for delivery;
//! - `encode`: fences, stream ids, and arguments written straight into commands.
//!
//! The `key` and `stream` templates are the engine's ([`sluice_runtime::template`]).

mod batch;
mod cache;
mod client;
pub mod config;
mod encode;
mod order;
mod retry;
pub mod sink;
mod stream;
mod truncate;

pub use config::RedisConfig;
pub use sink::RedisSink;

use config::Mode;
use sluice_runtime::template::TemplateError;

/// A Redis sink configuration that cannot work. Raised by [`RedisSink::new`], before
/// anything connects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    #[error("redis `url` is unusable: {reason}; write it like redis://127.0.0.1:6379/0 (rediss:// for TLS)")]
    Url { reason: String },

    #[error("redis `{field}` is not a valid template: {source}")]
    Template {
        field: &'static str,
        source: TemplateError,
    },

    #[error(
        "redis `on_truncate: delete` finds a table's keys through the `key` template, \
         so `key` must contain {{table}}"
    )]
    TruncateNeedsTable,

    #[error(
        "redis `{field}` only applies to mode: {}; remove it (this sink has mode: {})",
        other_mode(*mode),
        mode_name(*mode)
    )]
    OtherMode { field: &'static str, mode: Mode },

    #[error("redis `{field}` must be at least 1ms; write it like 30s or 1h")]
    ShortTtl { field: &'static str },

    #[error("redis `maxlen` must be at least 1 (it is the number of entries a stream keeps)")]
    ZeroMaxlen,

    #[error("redis `timeout` must be more than zero; write it like 500ms or 5s")]
    ZeroTimeout,
}

impl RedisConfigError {
    /// The configuration key at fault, as a path under the sink, so the error can point at
    /// its line in the pipeline file.
    pub fn field(&self) -> &'static str {
        match self {
            RedisConfigError::Url { .. } => "url",
            RedisConfigError::Template { field, .. } => field,
            RedisConfigError::TruncateNeedsTable => "on_truncate",
            RedisConfigError::OtherMode { field, .. } => field,
            RedisConfigError::ShortTtl { field } => field,
            RedisConfigError::ZeroMaxlen => "maxlen",
            RedisConfigError::ZeroTimeout => "timeout",
        }
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Cache => "cache",
        Mode::Stream => "stream",
    }
}

fn other_mode(mode: Mode) -> &'static str {
    match mode {
        Mode::Cache => "stream",
        Mode::Stream => "cache",
    }
}
