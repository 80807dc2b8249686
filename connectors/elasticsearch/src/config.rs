//! The `elasticsearch` sink's keys in a pipeline file.
//!
//! ```yaml
//! sinks:
//!   search:
//!     type: elasticsearch
//!     url: https://127.0.0.1:9200
//!     index: "{schema}-{table}"
//!     id: "{key}"
//!     auth: { username: elastic, password: "${ES_PASSWORD}" }
//!     tls: { ca_file: certs/http_ca.crt }
//!     timeout: 30s
//!     bulk: { max_events: 1000, max_bytes: 5MiB }
//!     on_truncate: delete_all
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sluice_runtime::config::{duration, Secret};
use sluice_runtime::registry::{FieldError, SinkConfig};
pub use sluice_runtime::units::ByteSize;
use sluice_runtime::Sink;

use crate::ElasticsearchSink;

/// Configuration of an Elasticsearch (or OpenSearch) sink.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ElasticsearchConfig {
    /// The cluster's address, `http://` or `https://`, e.g. `https://127.0.0.1:9200`.
    /// A `user:password@` in it is used as basic authentication (prefer `auth`).
    pub url: String,

    /// The index each document goes to, as a template (see the README): e.g.
    /// `"{table}"`, `"{schema}-{table}"`, `"sluice-{pipeline}-{table}"`. Index names must
    /// be lowercase; an event whose index renders invalid is rejected. Default `"{table}"`.
    #[serde(default = "default_index")]
    pub index: String,

    /// The document id, as a template: default `"{key}"`, the key column values joined by
    /// `_`. Must identify the row: two rows with one id would overwrite each other.
    #[serde(default = "default_id")]
    pub id: String,

    /// Credentials: `{ username, password }` (basic) or `{ api_key }` (an API key, as the
    /// base64 `encoded` value Elasticsearch returns, or `id:api_key`). Unset: none.
    #[serde(default)]
    pub auth: Option<AuthConfig>,

    /// TLS for `https://` URLs: `{ ca_file: path/to/ca.pem }` to trust a private CA,
    /// or `{ insecure_skip_verify: true }` to accept any certificate (tests only).
    #[serde(default)]
    pub tls: TlsConfig,

    /// How long one request may take, from connecting to the end of the response
    /// (e.g. `10s`, `1m`). A request that takes longer is retried. Default `30s`.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,

    /// Limits of one `_bulk` request; a batch past either is sent as several requests,
    /// in order.
    #[serde(default)]
    pub bulk: BulkConfig,

    /// What a `TRUNCATE` of a table does to its index: `ignore` (default; logged once per
    /// table) or `delete_all` (delete every document of the table's index with
    /// `_delete_by_query`).
    #[serde(default)]
    pub on_truncate: OnTruncate,
}

/// `auth:`: basic credentials or an API key.
#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// Basic authentication user, e.g. `elastic`; needs `password`.
    #[serde(default)]
    pub username: Option<String>,

    /// Basic authentication password, e.g. `${ES_PASSWORD}`; needs `username`.
    #[serde(default)]
    pub password: Option<Secret>,

    /// An API key: the base64 `encoded` value from `POST /_security/api_key`, or
    /// `id:api_key`. Sent as `Authorization: ApiKey …`. Not with `username`.
    #[serde(default)]
    pub api_key: Option<Secret>,
}

/// `tls:`: how the server's certificate is checked on `https://` URLs.
#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// A PEM file of CA certificates to trust besides the public roots (e.g. the
    /// `http_ca.crt` Elasticsearch generates). Relative to the current directory.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,

    /// `true`: accept any certificate, unchecked. Only for tests: anyone on the path can
    /// read and change the traffic. Default `false`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `bulk:`: the size of one `_bulk` request.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BulkConfig {
    /// At most this many events per request. Default 1000.
    #[serde(default = "default_max_events")]
    pub max_events: usize,

    /// At most this many bytes of body per request (`5MiB`, `512KiB`, or a number of
    /// bytes); an event larger than this alone goes in a request of its own. Elasticsearch
    /// refuses bodies past `http.max_content_length` (100MB by default). Default `5MiB`.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
}

impl Default for BulkConfig {
    fn default() -> Self {
        BulkConfig {
            max_events: default_max_events(),
            max_bytes: default_max_bytes(),
        }
    }
}

/// `on_truncate:`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnTruncate {
    /// Keep the documents; the truncate is answered delivered and logged once per table.
    #[default]
    Ignore,
    /// Delete every document of the table's index (`_delete_by_query` with `match_all`),
    /// after everything before the truncate and before anything after it.
    DeleteAll,
}

/// `"{table}"`.
pub fn default_index() -> String {
    "{table}".into()
}

/// `"{key}"`.
pub fn default_id() -> String {
    "{key}".into()
}

/// 30 seconds: a large bulk request on a busy cluster takes seconds.
pub fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// 1000 events.
pub fn default_max_events() -> usize {
    1000
}

/// 5 MiB, the size Elasticsearch's bulk guidance starts from.
pub fn default_max_bytes() -> ByteSize {
    ByteSize(5 << 20)
}

impl SinkConfig for ElasticsearchConfig {
    fn build(self) -> Result<Box<dyn Sink>, FieldError> {
        ElasticsearchSink::new(self)
            .map(|s| Box::new(s) as Box<dyn Sink>)
            .map_err(|e| FieldError::new(e.field(), &e))
    }
}

impl ElasticsearchConfig {
    /// A configuration for `url` with every other key at its default.
    pub fn new(url: impl Into<String>) -> Self {
        ElasticsearchConfig {
            url: url.into(),
            index: default_index(),
            id: default_id(),
            auth: None,
            tls: TlsConfig::default(),
            timeout: default_timeout(),
            bulk: BulkConfig::default(),
            on_truncate: OnTruncate::default(),
        }
    }
}

impl AuthConfig {
    /// Basic authentication.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        AuthConfig {
            username: Some(username.into()),
            password: Some(Secret::new(password)),
            api_key: None,
        }
    }

    /// An API key (`encoded` base64, or `id:api_key`).
    pub fn api_key(key: impl Into<String>) -> Self {
        AuthConfig {
            username: None,
            password: None,
            api_key: Some(Secret::new(key)),
        }
    }
}

impl TlsConfig {
    /// Trust the CA certificates in this PEM file.
    pub fn ca_file(path: impl Into<PathBuf>) -> Self {
        TlsConfig {
            ca_file: Some(path.into()),
            insecure_skip_verify: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_url_is_required() {
        let c: ElasticsearchConfig =
            serde_json::from_value(json!({"url": "http://127.0.0.1:9200"})).unwrap();
        assert_eq!(c, ElasticsearchConfig::new("http://127.0.0.1:9200"));
        assert_eq!(c.index, "{table}");
        assert_eq!(c.id, "{key}");
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.bulk.max_events, 1000);
        assert_eq!(c.bulk.max_bytes, ByteSize(5 << 20));
        assert_eq!(c.on_truncate, OnTruncate::Ignore);
        assert!(c.auth.is_none() && c.tls == TlsConfig::default());
    }

    #[test]
    fn every_key_parses() {
        let c: ElasticsearchConfig = serde_json::from_value(json!({
            "url": "https://es:9200", "index": "{schema}-{table}", "id": "{key.id}",
            "auth": {"username": "elastic", "password": "hunter2"},
            "tls": {"ca_file": "ca.pem", "insecure_skip_verify": false},
            "timeout": "5s", "bulk": {"max_events": 10, "max_bytes": "64KiB"},
            "on_truncate": "delete_all"
        }))
        .unwrap();
        assert_eq!(c.index, "{schema}-{table}");
        assert_eq!(c.auth, Some(AuthConfig::basic("elastic", "hunter2")));
        assert_eq!(c.tls, TlsConfig::ca_file("ca.pem"));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.bulk.max_events, 10);
        assert_eq!(c.bulk.max_bytes, ByteSize(64 << 10));
        assert_eq!(c.on_truncate, OnTruncate::DeleteAll);
        assert!(!format!("{c:?}").contains("hunter2"), "secrets never print");
    }

    #[test]
    fn unknown_keys_are_errors_at_every_level() {
        for bad in [
            json!({"url": "http://h", "indexes": "x"}),
            json!({"url": "http://h", "auth": {"user": "x"}}),
            json!({"url": "http://h", "tls": {"verify": false}}),
            json!({"url": "http://h", "bulk": {"max_docs": 1}}),
        ] {
            let e = serde_json::from_value::<ElasticsearchConfig>(bad.clone()).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{bad}: {e}");
        }
        let e = serde_json::from_value::<ElasticsearchConfig>(
            json!({"url": "http://h", "on_truncate": "drop"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("delete_all"), "{e}");
    }

    #[test]
    fn sizes_take_units_and_plain_numbers() {
        assert_eq!(ByteSize::parse("512"), Ok(ByteSize(512)));
        assert_eq!(ByteSize::parse("5MiB"), Ok(ByteSize(5 << 20)));
        assert_eq!(ByteSize::parse(" 2 KiB "), Ok(ByteSize(2048)));
        assert_eq!(ByteSize::parse("1GB"), Ok(ByteSize(1_000_000_000)));
        for bad in ["", "MiB", "5 parsecs", "-1", "99999999999999999999GiB"] {
            assert!(ByteSize::parse(bad).unwrap_err().contains("5MiB"), "{bad}");
        }
        let size = |v| serde_json::from_value::<ByteSize>(v);
        assert_eq!(size(json!(100)).unwrap(), ByteSize(100));
        assert!(size(json!(-1)).is_err());
        assert_eq!(ByteSize(5 << 20).to_string(), "5.0 MiB");
    }
}
