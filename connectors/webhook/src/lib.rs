//! The webhook sink: every event POSTed to an HTTP receiver as its JSON envelope,
//! signed the Standard Webhooks way (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`).
//!
//! - [`config`]: the sink's keys in a pipeline file;
//! - [`sink`]: [`WebhookSink`], per-key ordering and concurrency;
//! - `client`: one request and the classification of its outcome;
//! - `encode`: bodies, batch ids and signatures.

mod client;
pub mod config;
mod encode;
pub mod sink;

pub use config::WebhookConfig;
pub use sink::WebhookSink;

/// A webhook sink configuration that cannot work. Raised by [`WebhookSink::new`],
/// before anything connects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    #[error("webhook `url` is unusable: {reason}; write it like https://example.com/hooks")]
    Url { reason: String },

    #[error("webhook `concurrency` must be at least 1 (it is the number of requests in flight)")]
    ZeroConcurrency,

    #[error("webhook `timeout` must be more than zero; write it like 500ms or 10s")]
    ZeroTimeout,

    #[error("webhook `secret` is unusable: {reason}")]
    Secret { reason: String },

    #[error("webhook header `{name}` is unusable: {reason}")]
    Header { name: String, reason: String },

    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl WebhookError {
    /// The configuration key at fault, as a path under the sink (`url`, `concurrency`,
    /// `timeout`, `secret`, `headers.<name>`; `""` for the sink as a whole), so the
    /// error can point at its line in the pipeline file.
    pub fn field(&self) -> String {
        match self {
            WebhookError::Url { .. } => "url".into(),
            WebhookError::ZeroConcurrency => "concurrency".into(),
            WebhookError::ZeroTimeout => "timeout".into(),
            WebhookError::Secret { .. } => "secret".into(),
            WebhookError::Header { name, .. } => format!("headers.{name}"),
            WebhookError::Client(_) => String::new(),
        }
    }
}
