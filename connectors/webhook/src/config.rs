//! The `webhook` sink's keys in a pipeline file.
//!
//! ```yaml
//! sinks:
//!   notify:
//!     type: webhook
//!     url: https://hooks.example.com/sluice
//!     secret: ${WEBHOOK_SECRET}
//!     timeout: 10s
//!     concurrency: 16
//!     batch: false
//!     headers: { x-tenant: acme }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use sluice_runtime::config::{duration, Secret};
use sluice_runtime::registry::{FieldError, SinkConfig};
use sluice_runtime::Sink;

use crate::WebhookSink;

/// Configuration of a webhook sink.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WebhookConfig {
    /// The receiver's address, `http://` or `https://`. Every event is POSTed here;
    /// redirects are not followed, so point it at the final address.
    pub url: String,

    /// Signs every request the Standard Webhooks way (`webhook-signature: v1,<base64>`).
    /// A `whsec_<base64>` secret is decoded to its key bytes; any other value is used as
    /// the key as it is. Unset: requests are not signed.
    #[serde(default)]
    pub secret: Option<Secret>,

    /// How long one request may take, from connecting to the end of the response
    /// (e.g. `500ms`, `10s`). A request that takes longer is retried. Default `10s`.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,

    /// How many requests may be in flight at once. Events with the same key are always
    /// sent one after the other, in order; different keys go out in parallel. Default 16.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,

    /// `true`: POST each batch the engine hands over as one JSON array of envelopes, with
    /// `webhook-id: <first id>..<last id>`. `false` (default): one request per event.
    #[serde(default)]
    pub batch: bool,

    /// Extra headers sent with every request, e.g. `{ authorization: "Bearer ..." }`.
    /// The `webhook-*` and `content-type` headers are set by sluice and cannot be changed.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// 10 seconds.
pub fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// 16 requests in flight.
pub fn default_concurrency() -> usize {
    16
}

impl SinkConfig for WebhookConfig {
    fn build(self) -> Result<Box<dyn Sink>, FieldError> {
        WebhookSink::new(self)
            .map(|s| Box::new(s) as Box<dyn Sink>)
            .map_err(|e| FieldError::new(e.field(), &e))
    }
}

impl WebhookConfig {
    /// A configuration for `url` with every other key at its default.
    pub fn new(url: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            secret: None,
            timeout: default_timeout(),
            concurrency: default_concurrency(),
            batch: false,
            headers: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_url_is_required() {
        let c: WebhookConfig = serde_json::from_value(json!({"url": "http://h/x"})).unwrap();
        assert_eq!(c, WebhookConfig::new("http://h/x"));
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.concurrency, 16);
        assert!(!c.batch && c.secret.is_none() && c.headers.is_empty());
    }

    #[test]
    fn every_key_parses() {
        let c: WebhookConfig = serde_json::from_value(json!({
            "url": "https://h/x", "secret": "whsec_abc", "timeout": "250ms",
            "concurrency": 4, "batch": true, "headers": {"x-tenant": "acme"}
        }))
        .unwrap();
        assert_eq!(c.secret.as_ref().unwrap().expose(), "whsec_abc");
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.concurrency, 4);
        assert!(c.batch);
        assert_eq!(c.headers["x-tenant"], "acme");
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors() {
        let e = serde_json::from_value::<WebhookConfig>(json!({"url": "http://h", "retries": 3}))
            .unwrap_err();
        assert!(e.to_string().contains("retries"), "{e}");
        let e =
            serde_json::from_value::<WebhookConfig>(json!({"url": "http://h", "timeout": "soon"}))
                .unwrap_err();
        assert!(e.to_string().contains("30s"), "{e}");
    }

    #[test]
    fn the_secret_never_prints() {
        let c: WebhookConfig =
            serde_json::from_value(json!({"url": "http://h", "secret": "hunter2"})).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
