//! The Kafka sink (`type: kafka`): every event becomes a Kafka message, written by an
//! idempotent librdkafka producer (`enable.idempotence=true`, `acks=all`), keyed so that
//! one row (or one aggregate) always lands on one partition, in stream order.
//!
//! Many batches are in flight at once: [`KafkaSink`] enqueues every message of a batch
//! into the producer in batch order, waiting only for queue space, and hands the engine a
//! future that resolves when the batch's last delivery report arrived. The engine takes
//! those answers in order, so offsets advance only from delivery reports, in order.
//!
//! - [`config`]: the sink's keys in a pipeline file, and the librdkafka properties they
//!   become;
//! - [`properties`]: `properties:` passed through to librdkafka, secrets masked,
//!   guarantee-breaking properties refused;
//! - [`encode`]: an event as a message: topic, key, value, headers (the `topic` template
//!   is the engine's [`sluice_runtime::template`]);
//! - `producer`: one librdkafka producer: delivery reports routed to their batch, queue
//!   space, purging while no broker answers;
//! - `reports`: the delivery reports of one batch;
//! - `client`: the producer over the sink's life: created, replaced when unusable,
//!   checked, flushed on close;
//! - `retry`: what a librdkafka error means for delivery;
//! - `ledger`: per-key order across batches in flight when a message fails;
//! - [`sink`]: [`KafkaSink`], the engine's `Sink`.
//!
//! The sink's user documentation is `connectors/kafka/README.md`.

mod client;
pub mod config;
pub mod encode;
mod ledger;
mod producer;
pub mod properties;
mod reports;
mod retry;
pub mod sink;

pub use config::{Compression, KafkaConfig, ValueMode};
pub use sink::KafkaSink;

/// A Kafka sink configuration that cannot work. Raised by [`KafkaSink::new`], before
/// anything connects. Messages never quote the value of a secret property.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaConfigError {
    /// `brokers` lists no broker, or a broker without a port.
    #[error("kafka `brokers` is unusable: {reason}; write it like 127.0.0.1:9092 or [kafka-1:9092, kafka-2:9092]")]
    Brokers {
        /// What is wrong with it.
        reason: String,
    },

    /// The `topic` template does not parse.
    #[error("kafka `topic` is not a valid template: {0}")]
    Topic(#[source] sluice_runtime::template::TemplateError),

    /// `timeout` is below a millisecond or above librdkafka's limit.
    #[error("kafka `timeout` must be between 1ms and 24 days; write it like 10s or 1m")]
    Timeout,

    /// `linger` is above librdkafka's limit or not below `timeout`.
    #[error("kafka `linger` must be less than `timeout` and at most 15m; write it like 5ms")]
    Linger,

    /// A number is out of its range.
    #[error("kafka `{field}` must be between {min} and {max}")]
    Range {
        /// `in_flight_batches`, `batch_messages` or `batch_bytes`.
        field: &'static str,
        /// The smallest value accepted.
        min: u64,
        /// The largest value accepted.
        max: u64,
    },

    /// A property that another key of the sink sets.
    #[error("kafka property `{property}` is set by the sink's `{key}` key; set `{key}` instead")]
    Managed {
        /// The property, e.g. `linger.ms`.
        property: String,
        /// The sink's key that sets it, e.g. `linger`.
        key: &'static str,
    },

    /// A property whose value would break ordering or delivery guarantees.
    #[error("kafka property `{property}` cannot be {value}: {why}")]
    Guarantee {
        /// The property, e.g. `acks`.
        property: String,
        /// The refused value (secrets never reach here: these properties are not secret).
        value: String,
        /// What it would break.
        why: &'static str,
    },

    /// librdkafka refused a property (unknown name, invalid value).
    #[error("kafka property `{property}` is refused by librdkafka: {reason}")]
    Property {
        /// The property.
        property: String,
        /// librdkafka's reason, with secret values masked.
        reason: String,
    },
}

impl KafkaConfigError {
    /// The configuration key at fault, as a path under the sink (`brokers`, `topic`,
    /// `properties.acks`, …), so the error can point at its line in the pipeline file.
    pub fn field(&self) -> String {
        match self {
            KafkaConfigError::Brokers { .. } => "brokers".into(),
            KafkaConfigError::Topic(_) => "topic".into(),
            KafkaConfigError::Timeout => "timeout".into(),
            KafkaConfigError::Linger => "linger".into(),
            KafkaConfigError::Range { field, .. } => (*field).into(),
            KafkaConfigError::Managed { property, .. }
            | KafkaConfigError::Guarantee { property, .. }
            | KafkaConfigError::Property { property, .. } => match property.as_str() {
                "" => "properties".into(),
                property => format!("properties.{property}"),
            },
        }
    }
}
