//! The `kafka` sink's keys in a pipeline file, and the librdkafka properties they become.
//!
//! ```yaml
//! sinks:
//!   bus:
//!     type: kafka
//!     brokers: 127.0.0.1:9092           # or a list: [kafka-1:9092, kafka-2:9092]
//!     topic: "{event.aggregate_type}"   # default: {event.aggregate_type} for events, {schema}.{table} for changes
//!     value: envelope                   # envelope (default) | payload
//!     timeout: 30s                      # message.timeout.ms: a message not acknowledged by then is retried
//!     in_flight_batches: 8
//!     compression: lz4                  # none (default) | gzip | snappy | lz4 | zstd
//!     linger: 5ms
//!     batch_messages: 10000
//!     batch_bytes: 1000000
//!     properties:                       # any librdkafka property
//!       security.protocol: SASL_SSL
//!       sasl.mechanisms: SCRAM-SHA-512
//!       sasl.username: sluice
//!       sasl.password: ${KAFKA_PASSWORD}
//! ```
//!
//! The producer is always idempotent with `acks=all`: properties that would turn either
//! off are refused, and so are properties another key sets. Values of properties whose
//! name contains `password`, `secret`, `key` or `token` are secrets: they print as `***`
//! in `Debug` and are masked in every message of this crate.

use std::fmt;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use sluice_runtime::config::duration;
use sluice_runtime::registry::{FieldError, SinkConfig};
use sluice_runtime::template::Template;
use sluice_runtime::Sink;

use crate::properties::{self, Masker, Properties};
use crate::{KafkaConfigError, KafkaSink};

/// Configuration of a Kafka sink.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// The bootstrap brokers, `host:port`: one (`127.0.0.1:9092`), a comma-separated
    /// string (`kafka-1:9092,kafka-2:9092`) or a list. The producer discovers the rest of
    /// the cluster from them. Required.
    pub brokers: Brokers,

    /// The topic of each message, a template (see the README): e.g. `"{schema}.{table}"`,
    /// `"cdc.{table}"`, `"{event.aggregate_type}"`. Unset (default): outbox rows and
    /// logical messages go to `{event.aggregate_type}`, row changes to `{schema}.{table}`.
    /// Topics must exist unless the brokers create them on first use.
    #[serde(default)]
    pub topic: Option<String>,

    /// What a message's value holds. `envelope` (default): the event's JSON envelope.
    /// `payload`: an outbox row's or logical message's `payload`, a row change's `after`;
    /// a delete is a tombstone (a null value) and a truncate is not sent.
    #[serde(default)]
    pub value: ValueMode,

    /// How long a message may take to be acknowledged by the brokers, retries included
    /// (librdkafka's `message.timeout.ms`), e.g. `10s`. A message that is not acknowledged
    /// by then is answered as a transient failure and sent again by the engine, so a
    /// broker that is down costs at most this long per attempt. Also bounds `check` and
    /// the flush on close. Default `30s`.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,

    /// How many batches may wait for their delivery reports at once. More keeps the
    /// producer's pipeline full on slow links; offsets still advance in order. Default 8.
    #[serde(default = "default_in_flight_batches")]
    pub in_flight_batches: usize,

    /// Compression of message batches: `none` (default), `gzip`, `snappy`, `lz4` or
    /// `zstd` (librdkafka's `compression.type`).
    #[serde(default)]
    pub compression: Compression,

    /// How long the producer waits for more messages before it sends a batch to a
    /// partition's leader (librdkafka's `linger.ms`), e.g. `20ms`. Longer gives bigger,
    /// better compressed batches for some latency. Default `5ms`.
    #[serde(default = "default_linger", with = "duration")]
    pub linger: Duration,

    /// At most this many messages in one batch to a partition (librdkafka's
    /// `batch.num.messages`, 1 to 1000000). Default 10000.
    #[serde(default = "default_batch_messages")]
    pub batch_messages: u64,

    /// At most this many bytes in one batch to a partition (librdkafka's `batch.size`).
    /// A single larger message still goes, alone. Default 1000000.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: u64,

    /// Any other librdkafka producer property, passed through as it is: security
    /// (`security.protocol`, `sasl.*`, `ssl.*`), `client.id`, `partitioner`,
    /// `message.max.bytes`, … Values may be strings, numbers or booleans. Defaults set
    /// by the sink and overridable here: `client.id: sluice`, `partitioner:
    /// murmur2_random` (the Java producer's), `topic.metadata.propagation.max.ms`: half the
    /// `timeout`, at most 30000 (a missing topic is reported as such before messages time
    /// out). Refused: `enable.idempotence: false`, `acks` other than `all`/`-1`,
    /// `transactional.id`, `retries: 0`, more than 5 requests in flight per connection,
    /// and the properties the keys above set.
    #[serde(default)]
    pub properties: Properties,
}

/// What a message's value holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ValueMode {
    /// The event's JSON envelope.
    #[default]
    Envelope,
    /// The event's payload (events) or row (`after`, changes); deletes are tombstones.
    Payload,
}

/// Compression of message batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Compression {
    /// Uncompressed.
    #[default]
    None,
    /// gzip (zlib).
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// The bootstrap brokers, `host:port` each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Brokers(pub Vec<String>);

impl<'de> Deserialize<'de> for Brokers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BrokersVisitor;
        impl<'de> Visitor<'de> for BrokersVisitor {
            type Value = Brokers;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("host:port, a comma-separated string of them, or a list of them")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Brokers, E> {
                Ok(Brokers(
                    v.split(',')
                        .map(|b| b.trim().to_string())
                        .filter(|b| !b.is_empty())
                        .collect(),
                ))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Brokers, A::Error> {
                let mut out = Vec::new();
                while let Some(broker) = seq.next_element::<String>()? {
                    out.push(broker.trim().to_string());
                }
                Ok(Brokers(out))
            }
        }
        d.deserialize_any(BrokersVisitor)
    }
}

/// 30 seconds.
pub fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// 8 batches.
pub fn default_in_flight_batches() -> usize {
    8
}

/// 5 milliseconds (librdkafka's own default).
pub fn default_linger() -> Duration {
    Duration::from_millis(5)
}

/// 10000 messages (librdkafka's own default).
pub fn default_batch_messages() -> u64 {
    10_000
}

/// 1000000 bytes (librdkafka's own default).
pub fn default_batch_bytes() -> u64 {
    1_000_000
}

/// A checked configuration: what the sink needs.
#[derive(Clone)]
pub(crate) struct Settings {
    /// `None`: the default topic of each kind of event.
    pub topic: Option<Template>,
    pub value: ValueMode,
    pub timeout: Duration,
    pub in_flight_batches: usize,
    /// `host:port,host:port`, for messages.
    pub brokers: String,
    /// Every librdkafka property, secrets included: never printed.
    pub client: ClientConfig,
    pub masker: Masker,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("topic", &self.topic)
            .field("value", &self.value)
            .field("timeout", &self.timeout)
            .field("in_flight_batches", &self.in_flight_batches)
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

/// librdkafka's largest `message.timeout.ms`.
const MAX_TIMEOUT_MS: u128 = i32::MAX as u128;

impl KafkaConfig {
    /// A configuration for `brokers` (`host:port`, comma-separated) with every other key
    /// at its default.
    pub fn new(brokers: impl AsRef<str>) -> Self {
        KafkaConfig {
            brokers: Brokers(
                brokers
                    .as_ref()
                    .split(',')
                    .map(|b| b.trim().to_string())
                    .filter(|b| !b.is_empty())
                    .collect(),
            ),
            topic: None,
            value: ValueMode::Envelope,
            timeout: default_timeout(),
            in_flight_batches: default_in_flight_batches(),
            compression: Compression::None,
            linger: default_linger(),
            batch_messages: default_batch_messages(),
            batch_bytes: default_batch_bytes(),
            properties: Properties::default(),
        }
    }

    /// Check what serde cannot and assemble the producer's properties. No I/O.
    pub(crate) fn settings(&self) -> Result<Settings, KafkaConfigError> {
        let brokers = self.brokers()?;
        let topic = match &self.topic {
            Some(text) => Some(Template::parse(text).map_err(KafkaConfigError::Topic)?),
            None => None,
        };
        let timeout_ms = self.timeout.as_millis();
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            return Err(KafkaConfigError::Timeout);
        }
        if self.linger >= self.timeout || self.linger > Duration::from_secs(900) {
            return Err(KafkaConfigError::Linger);
        }
        range("in_flight_batches", self.in_flight_batches as u64, 1, 1024)?;
        range("batch_messages", self.batch_messages, 1, 1_000_000)?;
        range("batch_bytes", self.batch_bytes, 1, i32::MAX as u64)?;
        properties::refuse(&self.properties)?;

        let masker = Masker::new(&self.properties);
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("compression.type", self.compression.as_str())
            .set(
                "linger.ms",
                (self.linger.as_secs_f64() * 1000.0).to_string(),
            )
            .set("batch.num.messages", self.batch_messages.to_string())
            .set("batch.size", self.batch_bytes.to_string())
            .set("client.id", "sluice")
            .set("partitioner", "murmur2_random")
            // A topic missing from the metadata fails its messages as "unknown topic"
            // (a clearer retry reason) before they time out.
            .set(
                "topic.metadata.propagation.max.ms",
                (timeout_ms / 2).min(30_000).to_string(),
            );
        for (name, value) in &self.properties.0 {
            client.set(name, value);
        }
        // librdkafka checks every name and value it is given, without connecting.
        if let Err(e) = client.create_native_config() {
            return Err(properties::refused_by_librdkafka(e, &masker));
        }
        Ok(Settings {
            topic,
            value: self.value,
            timeout: self.timeout,
            in_flight_batches: self.in_flight_batches,
            brokers,
            client,
            masker,
        })
    }

    /// `host:port,host:port`.
    fn brokers(&self) -> Result<String, KafkaConfigError> {
        if self.brokers.0.is_empty() {
            return Err(KafkaConfigError::Brokers {
                reason: "it lists no broker".into(),
            });
        }
        for broker in &self.brokers.0 {
            let port = broker
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            match port {
                Some((host, Ok(_))) if !host.is_empty() && !broker.contains("://") => {}
                _ => {
                    return Err(KafkaConfigError::Brokers {
                        reason: format!("`{broker}` is not host:port"),
                    })
                }
            }
        }
        Ok(self.brokers.0.join(","))
    }
}

impl SinkConfig for KafkaConfig {
    fn build(self) -> Result<Box<dyn Sink>, FieldError> {
        KafkaSink::new(self)
            .map(|s| Box::new(s) as Box<dyn Sink>)
            .map_err(|e| FieldError::new(e.field(), &e))
    }
}

fn range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), KafkaConfigError> {
    match (min..=max).contains(&value) {
        true => Ok(()),
        false => Err(KafkaConfigError::Range { field, min, max }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> KafkaConfig {
        serde_json::from_value(value).unwrap()
    }

    /// The key at fault and the message of a configuration that does not build.
    fn refused(value: serde_json::Value) -> (String, String) {
        let e = parse(value).settings().expect_err("should be refused");
        (e.field(), e.to_string())
    }

    fn property(settings: &Settings, name: &str) -> Option<String> {
        settings.client.get(name).map(str::to_string)
    }

    #[test]
    fn only_brokers_are_required() {
        let c = parse(json!({"brokers": "127.0.0.1:9092"}));
        assert_eq!(c, KafkaConfig::new("127.0.0.1:9092"));
        let s = c.settings().unwrap();
        assert_eq!(s.topic, None);
        assert_eq!(s.value, ValueMode::Envelope);
        assert_eq!(
            (s.timeout, s.in_flight_batches),
            (Duration::from_secs(30), 8)
        );
        for (name, value) in [
            ("bootstrap.servers", "127.0.0.1:9092"),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.timeout.ms", "30000"),
            ("compression.type", "none"),
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            ("batch.size", "1000000"),
            ("client.id", "sluice"),
            ("partitioner", "murmur2_random"),
            ("topic.metadata.propagation.max.ms", "15000"),
        ] {
            assert_eq!(property(&s, name).as_deref(), Some(value), "{name}");
        }
    }

    #[test]
    fn every_key_parses() {
        let c = parse(json!({
            "brokers": ["k1:9092", " k2:9093 "], "topic": "cdc.{table}", "value": "payload",
            "timeout": "2s", "in_flight_batches": 3, "compression": "zstd", "linger": "20ms",
            "batch_messages": 500, "batch_bytes": 65536,
            "properties": {"client.id": "orders", "message.max.bytes": 2000000,
                           "socket.keepalive.enable": true}
        }));
        let s = c.settings().unwrap();
        assert_eq!(s.brokers, "k1:9092,k2:9093");
        assert_eq!(s.topic.as_ref().map(Template::as_str), Some("cdc.{table}"));
        assert_eq!((s.value, s.in_flight_batches), (ValueMode::Payload, 3));
        for (name, value) in [
            ("message.timeout.ms", "2000"),
            ("compression.type", "zstd"),
            ("linger.ms", "20"),
            ("batch.num.messages", "500"),
            ("batch.size", "65536"),
            ("client.id", "orders"),
            ("message.max.bytes", "2000000"),
            ("socket.keepalive.enable", "true"),
        ] {
            assert_eq!(property(&s, name).as_deref(), Some(value), "{name}");
        }
        let c = parse(json!({"brokers": "a:1, b:2,", "compression": "gzip"}));
        assert_eq!(c.settings().unwrap().brokers, "a:1,b:2");
        for codec in ["snappy", "lz4"] {
            let c = parse(json!({"brokers": "a:1", "compression": codec}));
            assert!(c.settings().is_ok(), "{codec}");
        }
    }

    #[test]
    fn unknown_keys_and_values_are_serde_errors() {
        for (bad, word) in [
            (json!({"brokers": "a:1", "acks": "all"}), "acks"),
            (json!({"brokers": "a:1", "value": "row"}), "row"),
            (json!({"brokers": "a:1", "compression": "brotli"}), "brotli"),
            (json!({"brokers": "a:1", "timeout": 30}), "30s"),
            (
                json!({"brokers": "a:1", "properties": {"x": [1]}}),
                "string",
            ),
            (json!({"brokers": 9092}), "host:port"),
            (json!({}), "brokers"),
        ] {
            let e = serde_json::from_value::<KafkaConfig>(bad).unwrap_err();
            assert!(e.to_string().contains(word), "{e}");
        }
    }

    #[test]
    fn brokers_templates_and_numbers_are_checked() {
        for brokers in [json!(""), json!([]), json!("kafka"), json!("kafka:x")] {
            let (field, _) = refused(json!({ "brokers": brokers }));
            assert_eq!(field, "brokers");
        }
        let (field, message) = refused(json!({"brokers": "tcp://kafka:9092"}));
        assert_eq!(field, "brokers");
        assert!(message.contains("127.0.0.1:9092"), "{message}");
        let (field, message) = refused(json!({"brokers": "a:1", "topic": "{tabel}"}));
        assert_eq!(field, "topic");
        assert!(
            message.contains("`{tabel}` is not a placeholder"),
            "{message}"
        );
        let (field, _) = refused(json!({"brokers": "a:1", "timeout": "0s"}));
        assert_eq!(field, "timeout");
        let (field, _) = refused(json!({"brokers": "a:1", "timeout": "1s", "linger": "1s"}));
        assert_eq!(field, "linger");
        for (key, value) in [
            ("in_flight_batches", 0),
            ("batch_messages", 0),
            ("batch_messages", 1_000_001),
            ("batch_bytes", 0),
        ] {
            let mut config = json!({"brokers": "a:1"});
            config[key] = value.into();
            let (field, message) = refused(config);
            assert_eq!(field, key);
            assert!(message.contains("must be between"), "{message}");
        }
    }

    #[test]
    fn librdkafka_checks_names_and_values() {
        let (field, message) =
            refused(json!({"brokers": "a:1", "properties": {"no.such.property": "x"}}));
        assert_eq!(field, "properties.no.such.property");
        assert!(
            message.contains("No such configuration property"),
            "{message}"
        );
        let (field, _) =
            refused(json!({"brokers": "a:1", "properties": {"socket.timeout.ms": "soon"}}));
        assert_eq!(field, "properties.socket.timeout.ms");
    }

    #[test]
    fn security_properties_pass_through() {
        let c = parse(json!({"brokers": "a:1", "properties": {
            "security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": "sluice", "sasl.password": "hunter2-secret",
            "ssl.ca.location": "/etc/ssl/certs/ca-certificates.crt"
        }}));
        let s = c.settings().unwrap();
        assert_eq!(
            property(&s, "sasl.password").as_deref(),
            Some("hunter2-secret")
        );
    }

    #[test]
    fn secrets_never_print() {
        let c = parse(json!({"brokers": "a:1", "properties": {
            "sasl.password": "hunter2-secret", "sasl.username": "sluice"
        }}));
        assert!(!format!("{c:?}").contains("hunter2"));
        let s = c.settings().unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        // A value librdkafka refuses is quoted back in its message: masked.
        let (field, message) = refused(json!({"brokers": "a:1", "properties": {
            "ssl.key.password": "pem-pass", "security.protocol": "pem-pass"
        }}));
        assert_eq!(field, "properties.security.protocol");
        assert!(message.contains("Invalid value \"***\""), "{message}");
    }

    #[test]
    fn guarantee_breaking_properties_name_their_key() {
        let (field, message) = refused(json!({"brokers": "a:1", "properties": {"acks": 1}}));
        assert_eq!(field, "properties.acks");
        assert!(message.contains("acks=all"), "{message}");
    }
}
