//! The `rabbitmq` sink's keys in a pipeline file.
//!
//! ```yaml
//! sinks:
//!   rabbit:
//!     type: rabbitmq
//!     url: amqp://sluice:${RABBIT_PASSWORD}@127.0.0.1:5672/%2f   # amqps:// for TLS
//!     exchange: events                  # required; must exist (sluice declares nothing)
//!     routing_key: "{schema}.{table}"   # default: {schema}.{table}, {event.type} for events
//!     mandatory: true                   # unroutable messages are rejected (default)
//!     timeout: 10s                      # connecting, and one batch's confirms
//!     value: envelope                   # envelope (default) | payload
//! ```

use std::time::Duration;

use serde::Deserialize;
use sluice_runtime::config::{duration, Secret};
use sluice_runtime::registry::{FieldError, SinkConfig};
use sluice_runtime::template::{Rules, Template, TemplateError};
use sluice_runtime::{Event, Op, Sink};

use crate::{RabbitMqConfigError, RabbitMqSink};

/// Configuration of a RabbitMQ sink.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RabbitMqConfig {
    /// The broker: `amqp://user:password@host:port/vhost`, or `amqps://...` for TLS (the
    /// broker's certificate is checked against the system's trust store). The vhost is
    /// URL-encoded: `/%2f` is the default vhost `/`; without a path the default vhost is
    /// used too. Query parameters `heartbeat`, `frame_max`, `channel_max` and
    /// `auth_mechanism` are passed on. The password never appears in logs or errors.
    pub url: Secret,

    /// The exchange every message is published to, a template: a fixed name (`events`) or
    /// one built from each event (`{schema}.{table}`). The exchange must exist: sluice does
    /// not declare exchanges, queues or bindings (the topology is yours, with the type,
    /// durability and arguments you chose); publishing to a missing exchange is rejected.
    /// The empty string is the default exchange, which routes by queue name.
    pub exchange: String,

    /// The routing key of each message, a template. Default: `{schema}.{table}` for row
    /// changes and truncates, `{event.type}` for outbox rows and logical messages.
    /// Placeholders: `{pipeline}` `{schema}` `{table}` `{op}` `{key}` (the key columns'
    /// values joined by `.`) `{key.<column>}` `{event.type}` `{event.aggregate_type}`;
    /// `{{` and `}}` are literal braces. An event that lacks what a placeholder needs (a
    /// row change for `{event.type}`, a keyless table for `{key}`) is rejected.
    #[serde(default)]
    pub routing_key: Option<String>,

    /// Publish with the `mandatory` flag (default `true`): a message that no queue is bound
    /// to receive comes back from the broker, and the event is rejected (to the DLQ) with
    /// the exchange, routing key and the broker's reason, instead of vanishing. `false`
    /// lets the broker drop such messages silently and counts them as delivered: only for
    /// exchanges where nobody listening is fine.
    #[serde(default = "default_mandatory")]
    pub mandatory: bool,

    /// How long connecting may take (TCP, TLS, login, opening the channel), and how long
    /// the broker may take to confirm one batch once it is published, e.g. `5s` (default
    /// `10s`). Past it, what is not confirmed is retried on a new connection.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,

    /// What a message body holds: `envelope` (default), the event's whole JSON envelope;
    /// or `payload`, only what it carries: an outbox row's or logical message's payload,
    /// the row after an insert or update, the row before a delete (its key when that is
    /// all the table's replica identity gives), `null` for a truncate. The `op`, `table`,
    /// `id` and `type` headers say what the payload is.
    #[serde(default)]
    pub value: Body,
}

/// What a message body holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Body {
    /// The event's JSON envelope.
    #[default]
    Envelope,
    /// Only the event's payload (or row).
    Payload,
}

/// The routing key of row changes unless `routing_key` is set: `{schema}.{table}`.
pub const DEFAULT_ROUTING_KEY: &str = "{schema}.{table}";

/// The routing key of outbox rows and logical messages unless `routing_key` is set:
/// `{event.type}`.
pub const DEFAULT_EVENT_ROUTING_KEY: &str = "{event.type}";

/// `true`: unroutable messages are rejected.
pub fn default_mandatory() -> bool {
    true
}

/// 10 seconds.
pub fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The longest exchange name or routing key AMQP carries (a short string).
pub const MAX_NAME: usize = 255;

/// Where each event's message goes, checked.
#[derive(Clone, Debug)]
pub(crate) struct Routes {
    pub exchange: Template,
    /// For row changes and truncates.
    pub changes: Template,
    /// For outbox rows and logical messages.
    pub events: Template,
}

impl Routes {
    /// The routing key template for `event`.
    pub fn routing_key(&self, event: &Event) -> &Template {
        match event.op {
            Op::Insert | Op::Update | Op::Delete | Op::Truncate | Op::Read => &self.changes,
            Op::Event => &self.events,
        }
    }
}

impl RabbitMqConfig {
    /// A configuration for `url` and `exchange` with every other key at its default.
    pub fn new(url: impl Into<String>, exchange: impl Into<String>) -> Self {
        RabbitMqConfig {
            url: Secret::new(url),
            exchange: exchange.into(),
            routing_key: None,
            mandatory: default_mandatory(),
            timeout: default_timeout(),
            value: Body::Envelope,
        }
    }

    /// Check the templates and the timeout (the URL is checked by the client).
    pub(crate) fn routes(&self) -> Result<Routes, RabbitMqConfigError> {
        if self.timeout.is_zero() {
            return Err(RabbitMqConfigError::ZeroTimeout);
        }
        let exchange = template("exchange", &self.exchange)?;
        let (changes, events) = match &self.routing_key {
            Some(text) => {
                let key = template("routing_key", text)?;
                (key.clone(), key)
            }
            None => (
                template("routing_key", DEFAULT_ROUTING_KEY)?,
                template("routing_key", DEFAULT_EVENT_ROUTING_KEY)?,
            ),
        };
        Ok(Routes {
            exchange,
            changes,
            events,
        })
    }
}

/// How the `exchange` and `routing_key` templates read: a composite `{key}` is joined by
/// `.`, because a topic exchange matches routing keys word by word with `.` between words
/// (a binding `orders.acme.*` selects a tenant's rows); the empty template is the default
/// exchange, or a routing key a fanout exchange ignores.
const RULES: Rules = Rules::new().key_separator(".").allow_empty();

/// Parse a name template; a constant name must fit AMQP's short string.
fn template(field: &'static str, text: &str) -> Result<Template, RabbitMqConfigError> {
    let template = Template::parse_with(text, RULES)
        .map_err(|source: TemplateError| RabbitMqConfigError::Template { field, source })?;
    if let Some(name) = template.constant() {
        if name.len() > MAX_NAME {
            return Err(RabbitMqConfigError::TooLong {
                field,
                len: name.len(),
            });
        }
    }
    Ok(template)
}

impl SinkConfig for RabbitMqConfig {
    fn build(self) -> Result<Box<dyn Sink>, FieldError> {
        RabbitMqSink::new(self)
            .map(|s| Box::new(s) as Box<dyn Sink>)
            .map_err(|e| FieldError::new(e.field(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_runtime::testing;

    fn parse(value: serde_json::Value) -> RabbitMqConfig {
        serde_json::from_value(value).unwrap()
    }

    /// The field and message of a configuration that does not build.
    fn refused(value: serde_json::Value) -> (String, String) {
        match parse(value).build() {
            Ok(_) => panic!("the configuration should be refused"),
            Err(e) => (e.field, e.message),
        }
    }

    #[test]
    fn defaults_are_explicit() {
        let c = parse(json!({"url": "amqp://127.0.0.1", "exchange": "events"}));
        assert_eq!(c, RabbitMqConfig::new("amqp://127.0.0.1", "events"));
        assert!(c.mandatory);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.value, Body::Envelope);
        assert_eq!(c.routing_key, None);
        let c = parse(json!({
            "url": "amqp://h", "exchange": "x", "routing_key": "{table}",
            "mandatory": false, "timeout": "2s", "value": "payload"
        }));
        assert!(!c.mandatory);
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.value, Body::Payload);
    }

    #[test]
    fn exchange_is_required_and_unknown_keys_are_refused() {
        let e = serde_json::from_value::<RabbitMqConfig>(json!({"url": "amqp://h"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("exchange"), "{e}");
        let e = serde_json::from_value::<RabbitMqConfig>(
            json!({"url": "amqp://h", "exchange": "x", "routingkey": "a"}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("routingkey"), "{e}");
        let e = serde_json::from_value::<RabbitMqConfig>(
            json!({"url": "amqp://h", "exchange": "x", "value": "row"}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("envelope") && e.contains("payload"), "{e}");
    }

    #[test]
    fn default_routing_keys_differ_for_changes_and_events() {
        let routes = parse(json!({"url": "amqp://h", "exchange": "x"}))
            .routes()
            .unwrap();
        let change = testing::insert("orders", 1, 0);
        assert_eq!(
            routes.routing_key(&change).render(&change).unwrap(),
            "public.orders"
        );
        let mut event = testing::event("outbox", Op::Event, 1, 1);
        event.message = Some(sluice_runtime::Message {
            id: sluice_runtime::Value::Int(1),
            kind: sluice_runtime::Value::Text("OrderPaid".into()),
            aggregate_type: sluice_runtime::Value::Null,
            aggregate_id: sluice_runtime::Value::Null,
            payload: sluice_runtime::Value::Null,
            headers: sluice_runtime::Value::Null,
        });
        assert_eq!(
            routes.routing_key(&event).render(&event).unwrap(),
            "OrderPaid"
        );
        let routes = parse(json!({"url": "amqp://h", "exchange": "x", "routing_key": "all"}))
            .routes()
            .unwrap();
        assert_eq!(routes.routing_key(&event).as_str(), "all");
        assert_eq!(routes.routing_key(&change).as_str(), "all");
    }

    #[test]
    fn templates_and_limits_are_checked_with_their_field() {
        let (field, message) = refused(json!({"url": "amqp://h", "exchange": "{tabel}"}));
        assert_eq!(field, "exchange");
        assert!(
            message.contains("`{tabel}` is not a placeholder"),
            "{message}"
        );
        let (field, _) = refused(json!({"url": "amqp://h", "exchange": "x", "routing_key": "{"}));
        assert_eq!(field, "routing_key");
        let (field, message) = refused(json!({"url": "amqp://h", "exchange": "e".repeat(256)}));
        assert_eq!(field, "exchange");
        assert!(message.contains("256 bytes"), "{message}");
        let (field, _) = refused(json!({"url": "amqp://h", "exchange": "x", "timeout": "0s"}));
        assert_eq!(field, "timeout");
        // The default exchange and an empty routing key are names AMQP knows.
        assert!(
            parse(json!({"url": "amqp://h", "exchange": "", "routing_key": ""}))
                .build()
                .is_ok()
        );
    }

    #[test]
    fn urls_are_checked_and_never_printed() {
        for url in [
            "http://user:hunter2@h:5672",
            "amqp://user:hunter2@h:notaport",
            "amqp://user:hunter2@:5672",
            "amqp://user:hunter2@h:5672/",
            "amqp://user:hunter2@h/%2f?heartbeat=soon",
            "user:hunter2@h",
        ] {
            let (field, message) = refused(json!({"url": url, "exchange": "x"}));
            assert_eq!(field, "url", "{url}");
            assert!(!message.contains("hunter2"), "{url}: {message}");
        }
        let (_, message) = refused(json!({"url": "amqp://u:p@h:5672/", "exchange": "x"}));
        assert!(message.contains("%2f"), "{message}");
        let c = parse(json!({"url": "amqp://u:hunter2@h", "exchange": "x"}));
        assert!(!format!("{c:?}").contains("hunter2"));
        for url in [
            "amqp://127.0.0.1:5672/%2f",
            "amqps://u:p@broker.internal/orders",
            "amqp://[::1]:5672",
            "amqp://h?heartbeat=10",
        ] {
            assert!(
                parse(json!({"url": url, "exchange": "x"})).build().is_ok(),
                "{url}"
            );
        }
    }
}
