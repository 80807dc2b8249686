//! The `properties:` of a Kafka sink: librdkafka properties passed through, which of them
//! are refused, and which are secrets.
//!
//! A property whose name contains `password`, `secret`, `key` or `token` is a secret: its
//! value prints as `***` in `Debug`, and a `Masker` replaces it in any text (librdkafka's
//! errors and logs quote values back). Properties that another key of the sink sets are
//! refused, naming that key, and so are values that would turn off the idempotent
//! producer or `acks=all`.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::error::KafkaError;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::KafkaConfigError;

/// librdkafka properties by name. `Debug` masks secret values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(pub BTreeMap<String, String>);

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| match is_secret(k) {
                true => (k, "***"),
                false => (k, v.as_str()),
            }))
            .finish()
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PropertiesVisitor;
        impl<'de> Visitor<'de> for PropertiesVisitor {
            type Value = Properties;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of librdkafka property names to values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Properties, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((name, value)) = map.next_entry::<String, PropertyValue>()? {
                    out.insert(name, value.0);
                }
                Ok(Properties(out))
            }
        }
        d.deserialize_map(PropertiesVisitor)
    }
}

/// A property's value: a string, number or boolean, as librdkafka's text.
struct PropertyValue(String);

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = PropertyValue;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
        }
        d.deserialize_any(ValueVisitor)
    }
}

/// Whether a property's value is a secret: its name contains `password`, `secret`, `key`
/// or `token` (`sasl.password`, `ssl.key.password`, `sasl.oauthbearer.client.secret`).
pub fn is_secret(property: &str) -> bool {
    let name = property.to_ascii_lowercase();
    ["password", "secret", "key", "token"]
        .iter()
        .any(|word| name.contains(word))
}

/// Replaces the values of secret properties in any text with `***`.
#[derive(Clone, Default)]
pub(crate) struct Masker {
    /// Longest first, so that a secret containing another is masked whole.
    secrets: Vec<String>,
}

impl Masker {
    pub(crate) fn new(properties: &Properties) -> Self {
        let mut secrets: Vec<String> = properties
            .0
            .iter()
            .filter(|(name, value)| is_secret(name) && !value.is_empty())
            .map(|(_, value)| value.clone())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Masker { secrets }
    }

    /// `text` with every secret value replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Masker({} secrets)", self.secrets.len())
    }
}

/// Properties another key sets, and that key.
pub(crate) const MANAGED_BY_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "brokers"),
    ("metadata.broker.list", "brokers"),
    ("message.timeout.ms", "timeout"),
    ("delivery.timeout.ms", "timeout"),
    ("compression.type", "compression"),
    ("compression.codec", "compression"),
    ("linger.ms", "linger"),
    ("queue.buffering.max.ms", "linger"),
    ("batch.num.messages", "batch_messages"),
    ("batch.size", "batch_bytes"),
];

/// Refuse properties that another key sets, or that would break the guarantees.
pub(crate) fn refuse(properties: &Properties) -> Result<(), KafkaConfigError> {
    for (name, value) in &properties.0 {
        if let Some((_, key)) = MANAGED_BY_KEYS.iter().find(|(p, _)| p == name) {
            return Err(KafkaConfigError::Managed {
                property: name.clone(),
                key,
            });
        }
        let refuse = |why| KafkaConfigError::Guarantee {
            property: name.clone(),
            value: format!("`{value}`"),
            why,
        };
        let value = value.trim().to_ascii_lowercase();
        match name.as_str() {
            "enable.idempotence" if value != "true" => {
                return Err(refuse(
                    "the idempotent producer is what keeps each partition in order, \
                     without duplicates, across retries",
                ))
            }
            "acks" | "request.required.acks" if value != "all" && value != "-1" => {
                return Err(refuse(
                    "only acks=all (-1) makes a delivery report mean the message is \
                     on every in-sync replica",
                ))
            }
            "transactional.id" => {
                return Err(refuse(
                    "the sink does not run transactions; the idempotent producer and \
                     the engine's offsets give at-least-once delivery in order",
                ))
            }
            "retries" | "message.send.max.retries" if value == "0" => {
                return Err(refuse(
                    "the idempotent producer needs retries; the message's `timeout` \
                     bounds them",
                ))
            }
            "max.in.flight.requests.per.connection" | "max.in.flight"
                if value.parse::<u32>().is_ok_and(|n| n > 5) =>
            {
                return Err(refuse(
                    "the idempotent producer keeps order with at most 5 requests in \
                     flight per connection",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// librdkafka's refusal of a property, its value masked if secret.
pub(crate) fn refused_by_librdkafka(e: KafkaError, masker: &Masker) -> KafkaConfigError {
    match e {
        KafkaError::ClientConfig(_, reason, property, _) => KafkaConfigError::Property {
            reason: masker.mask(&reason),
            property,
        },
        other => KafkaConfigError::Property {
            property: String::new(),
            reason: masker.mask(&other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn properties(value: serde_json::Value) -> Properties {
        serde_json::from_value(value).unwrap()
    }

    /// The key at fault and the message of properties that are refused.
    fn refused(value: serde_json::Value) -> (String, String) {
        let e = refuse(&properties(value)).expect_err("should be refused");
        (e.field(), e.to_string())
    }

    #[test]
    fn properties_that_break_the_guarantees_are_refused_by_name() {
        for (name, value, why) in [
            ("enable.idempotence", json!(false), "idempotent"),
            ("acks", json!(1), "acks=all"),
            ("request.required.acks", json!("0"), "acks=all"),
            ("transactional.id", json!("t1"), "transactions"),
            ("retries", json!(0), "retries"),
            (
                "max.in.flight.requests.per.connection",
                json!(10),
                "at most 5",
            ),
        ] {
            let (field, message) = refused(json!({ name: value }));
            assert_eq!(field, format!("properties.{name}"));
            assert!(message.contains(why), "{message}");
        }
        for (name, key) in [
            ("bootstrap.servers", "brokers"),
            ("linger.ms", "linger"),
            ("message.timeout.ms", "timeout"),
            ("compression.type", "compression"),
            ("batch.size", "batch_bytes"),
        ] {
            let (field, message) = refused(json!({ name: "1" }));
            assert_eq!(field, format!("properties.{name}"));
            assert!(message.contains(&format!("`{key}`")), "{message}");
        }
        for ok in [
            json!({"enable.idempotence": true}),
            json!({"acks": "all"}),
            json!({"acks": -1}),
            json!({"max.in.flight": 5}),
            json!({"client.id": "orders", "message.max.bytes": 2000000, "socket.keepalive.enable": true}),
        ] {
            assert!(refuse(&properties(ok.clone())).is_ok(), "{ok}");
        }
    }

    #[test]
    fn values_may_be_strings_numbers_or_booleans() {
        let p = properties(json!({"a": "x", "b": 2, "c": -1, "d": 1.5, "e": true}));
        let values: Vec<&str> = p.0.values().map(String::as_str).collect();
        assert_eq!(values, ["x", "2", "-1", "1.5", "true"]);
        let e = serde_json::from_value::<Properties>(json!({"x": [1]})).unwrap_err();
        assert!(e.to_string().contains("a string, number or boolean"), "{e}");
    }

    #[test]
    fn secrets_are_masked_in_debug_and_in_any_text() {
        let p = properties(json!({
            "sasl.password": "hunter2-secret", "sasl.username": "sluice",
            "sasl.oauthbearer.client.secret": "s3cr3t-value", "ssl.key.password": "pem-pass"
        }));
        let shown = format!("{p:?}");
        for secret in ["hunter2-secret", "s3cr3t-value", "pem-pass"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("sluice"), "{shown}");
        let masker = Masker::new(&p);
        assert_eq!(
            masker.mask("auth failed for sluice with hunter2-secret (pem-pass)"),
            "auth failed for sluice with *** (***)"
        );
        assert!(!format!("{masker:?}").contains("pem-pass"));
        assert!(is_secret("SASL.PASSWORD") && is_secret("sasl.oauthbearer.token.endpoint.url"));
        assert!(!is_secret("sasl.username"));
    }
}
