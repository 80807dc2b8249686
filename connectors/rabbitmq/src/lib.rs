//! The RabbitMQ sink (`type: rabbitmq`): every event published to an exchange over AMQP
//! 0-9-1 ([`lapin`]), as a persistent message, with publisher confirms.
//!
//! A batch is published on one channel in stream order, every message at once (confirms
//! are pipelined), and answered once the broker confirmed each: an ack is delivered, a
//! nack is retried, a message the broker returns as unroutable (published `mandatory`) is
//! rejected with the exchange, routing key and the broker's reason. A lost connection is
//! opened again on the next batch (or once within the batch, when it died before anything
//! was confirmed); what was not confirmed is retried. sluice never declares topology: the
//! exchange, the queues and their bindings are the user's.
//!
//! - [`config`]: the sink's keys in a pipeline file, and the `exchange` and `routing_key`
//!   templates (the engine's [`sluice_runtime::template`], `{key}` joined by `.`);
//! - [`encode`]: bodies, properties and headers;
//! - `client`: the connection, the confirm-mode channel, exchange checks, timeouts;
//! - `classify`: what the broker's answers and lapin's errors mean for delivery;
//! - [`sink`]: [`RabbitMqSink`]: segments at truncates, publish, await confirms, answer.
//!
//! The sink's user documentation is `connectors/rabbitmq/README.md`.

mod classify;
mod client;
pub mod config;
pub mod encode;
pub mod sink;

pub use config::{Body, RabbitMqConfig};
pub use sink::RabbitMqSink;

use sluice_runtime::template::TemplateError;

/// A RabbitMQ sink configuration that cannot work. Raised by [`RabbitMqSink::new`], before
/// anything connects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RabbitMqConfigError {
    /// `url` does not parse, is not amqp(s), or names no host or the empty vhost.
    #[error(
        "rabbitmq `url` is unusable: {reason}; write it like \
         amqp://user:password@127.0.0.1:5672/%2f (amqps:// for TLS)"
    )]
    Url {
        /// What is wrong with it. Never contains the password.
        reason: String,
    },

    /// The `exchange` or `routing_key` template does not parse.
    #[error("rabbitmq `{field}` is not a valid template: {source}")]
    Template {
        /// `exchange` or `routing_key`.
        field: &'static str,
        /// Where and what.
        source: TemplateError,
    },

    /// A name without placeholders that is longer than AMQP allows.
    #[error("rabbitmq `{field}` is {len} bytes long; AMQP allows at most 255")]
    TooLong {
        /// `exchange` or `routing_key`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },

    /// `timeout` is zero.
    #[error("rabbitmq `timeout` must be more than zero; write it like 500ms or 10s")]
    ZeroTimeout,
}

impl RabbitMqConfigError {
    /// The configuration key at fault, as a path under the sink, so the error can point at
    /// its line in the pipeline file.
    pub fn field(&self) -> &'static str {
        match self {
            RabbitMqConfigError::Url { .. } => "url",
            RabbitMqConfigError::Template { field, .. } => field,
            RabbitMqConfigError::TooLong { field, .. } => field,
            RabbitMqConfigError::ZeroTimeout => "timeout",
        }
    }
}
