//! The Elasticsearch (and OpenSearch) sink: every row change becomes a document written
//! through `_bulk` with the official `elasticsearch` client, versioned by the change's WAL
//! position so that a replayed or late event can never overwrite a newer document.
//!
//! - [`config`]: the sink's keys in a pipeline file;
//! - [`sink`]'s `index` and `id` are the engine's templates ([`sluice_runtime::template`]:
//!   `{table}`, `{key}` joined by `_`, `{key.<col>}`, …), the same for every change of a row;
//! - [`version`]: the external version of a change, and why it only grows per document;
//! - [`encode`]: events as bulk actions (`index` / `delete`) and NDJSON bodies;
//! - `connection`: the client's transport from `url`, `auth`, `tls`, `timeout`;
//! - `client`: the official client; one request per call;
//! - `classify`: what a bulk item's status means for its event;
//! - `toast`: updates whose unchanged TOAST columns are filled from the stored document;
//! - [`sink`]: [`ElasticsearchSink`]: segments, bulk requests, per-item answers.
//!
//! The sink's user documentation is `connectors/elasticsearch/README.md`.

mod classify;
mod client;
pub mod config;
mod connection;
pub mod encode;
pub mod sink;
mod toast;
pub mod version;

pub use config::{ElasticsearchConfig, OnTruncate};
pub use sink::ElasticsearchSink;

/// An Elasticsearch sink configuration that cannot work. Raised by
/// [`ElasticsearchSink::new`], before anything connects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ElasticsearchError {
    /// `url` does not parse, is not http(s), has no host, or carries a user without a
    /// password.
    #[error("elasticsearch `url` is unusable: {reason}; write it like https://127.0.0.1:9200")]
    Url {
        /// What is wrong with it.
        reason: String,
    },

    /// The `index` or `id` template does not parse.
    #[error("elasticsearch `{field}` template is unusable: {reason}")]
    Template {
        /// `index` or `id`.
        field: &'static str,
        /// Where and what, with the placeholders allowed.
        reason: String,
    },

    /// `auth` is incomplete or contradictory.
    #[error("elasticsearch `{field}` is unusable: {reason}")]
    Auth {
        /// `auth`, `auth.username`, `auth.password` or `auth.api_key`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// `tls` is contradictory, set for an `http://` url, or its CA file is unusable.
    #[error("elasticsearch `{field}` is unusable: {reason}")]
    Tls {
        /// `tls.ca_file` or `tls.insecure_skip_verify`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// `timeout` is zero.
    #[error("elasticsearch `timeout` must be more than zero; write it like 500ms or 30s")]
    ZeroTimeout,

    /// A `bulk` limit is below its minimum.
    #[error("elasticsearch `{field}` must be at least {min} (it bounds one bulk request)")]
    BulkLimit {
        /// `bulk.max_events` or `bulk.max_bytes`.
        field: &'static str,
        /// The smallest value accepted.
        min: u64,
    },

    /// `on_truncate: delete_all` with an index template that depends on the row.
    #[error(
        "elasticsearch `on_truncate: delete_all` needs an `index` template that names the \
         table only ({{pipeline}}, {{schema}}, {{table}}): `{index}` depends on the row, and \
         a truncate has none"
    )]
    TruncateIndex {
        /// The `index` template.
        index: String,
    },

    /// The HTTP client could not be built (its TLS backend refused the settings).
    #[error("cannot build the Elasticsearch client: {0}")]
    Client(String),
}

impl ElasticsearchError {
    /// The configuration key at fault, as a path under the sink (`url`, `index`, `id`,
    /// `auth.password`, `tls.ca_file`, `bulk.max_bytes`, `on_truncate`; `""` for the sink
    /// as a whole), so the error can point at its line in the pipeline file.
    pub fn field(&self) -> String {
        match self {
            ElasticsearchError::Url { .. } => "url".into(),
            ElasticsearchError::Template { field, .. }
            | ElasticsearchError::Auth { field, .. }
            | ElasticsearchError::Tls { field, .. }
            | ElasticsearchError::BulkLimit { field, .. } => (*field).into(),
            ElasticsearchError::ZeroTimeout => "timeout".into(),
            ElasticsearchError::TruncateIndex { .. } => "on_truncate".into(),
            ElasticsearchError::Client(_) => String::new(),
        }
    }
}
