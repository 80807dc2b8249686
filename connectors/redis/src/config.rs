//! The `redis` sink's keys in a pipeline file.
//!
//! ```yaml
//! sinks:
//!   cache:
//!     type: redis
//!     url: redis://127.0.0.1:6379/0   # rediss:// for TLS
//!     mode: cache                     # cache (default) | stream
//!     key: "{table}:{key}"            # cache: the key of each row
//!     format: json                    # cache: json (default) | hash
//!     ttl: 1h                         # cache: optional expiry of every written row
//!     tombstone_ttl: 24h              # cache: how long a delete's fence outlives the row
//!     on_truncate: ignore             # cache: ignore (default) | delete
//!     timeout: 5s
//!   log:
//!     type: redis
//!     url: redis://127.0.0.1:6379
//!     mode: stream
//!     stream: "{schema}.{table}"      # stream: the stream each event is appended to
//!     maxlen: 100000                  # stream: optional approximate cap per stream
//! ```
//!
//! Keys of the other mode are refused, so a `format` under `mode: stream` is an error
//! rather than a setting that silently does nothing.

use std::time::Duration;

use serde::Deserialize;
use sluice_runtime::config::{duration, Secret};
use sluice_runtime::registry::{FieldError, SinkConfig};
use sluice_runtime::template::{Part, Rules, Scope, Template};
use sluice_runtime::Sink;

use crate::{RedisConfigError, RedisSink};

/// Configuration of a Redis sink.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server: `redis://[user:password@]host[:port][/db]`, or `rediss://...` for TLS
    /// (the server's certificate is checked against the system's trust store). A password
    /// in the URL never appears in logs or errors. Redis Cluster is not supported: point
    /// it at a standalone server or a primary.
    pub url: Secret,

    /// `cache` (default): keep each row's latest state under its own key, fenced by
    /// position so replays never regress it. `stream`: append every event's JSON envelope
    /// to a stream (XADD), for consumers that want a log.
    #[serde(default)]
    pub mode: Mode,

    /// Cache mode: the key a row is stored under, a template (default `{table}:{key}`).
    /// Placeholders: `{pipeline}` `{schema}` `{table}` `{key}` (the key columns' values
    /// joined by `:`) `{key.<column>}`; `{{` and `}}` are literal braces. `{op}` and
    /// `{event.*}` are refused: every change of a row must land on the same key.
    #[serde(default)]
    pub key: Option<String>,

    /// Cache mode: `json` (default) stores the row as one JSON document (SET; NULL stays
    /// `null`); `hash` stores one hash field per column (HSET; NULL columns have no field;
    /// values as text, numbers in decimal, json as JSON text, bytea as base64).
    #[serde(default)]
    pub format: Option<Format>,

    /// Cache mode: every written row expires this long after its last change (e.g. `1h`).
    /// Unset (default): rows never expire.
    #[serde(default, with = "duration::option")]
    pub ttl: Option<Duration>,

    /// Cache mode: how long a deleted row's fence (its tombstone) is kept, so that an older
    /// change replayed within that time cannot bring the row back (default `24h`). `0s`
    /// keeps no tombstone: a delete removes everything, at the price of that protection.
    #[serde(default, with = "duration::option")]
    pub tombstone_ttl: Option<Duration>,

    /// Cache mode: what a TRUNCATE of a table does. `ignore` (default): nothing, logged
    /// once per table. `delete`: every key of the table (found with SCAN over the `key`
    /// template, which must then contain `{table}`) is deleted and tombstoned.
    #[serde(default)]
    pub on_truncate: Option<OnTruncate>,

    /// Stream mode: the stream each event is appended to, a template (default
    /// `{schema}.{table}`). Every placeholder may be used, `{event.type}` and
    /// `{event.aggregate_type}` for outbox rows and logical messages.
    #[serde(default)]
    pub stream: Option<String>,

    /// Stream mode: keep each stream to about this many entries (`XADD MAXLEN ~`; Redis
    /// trims whole internal nodes, so a stream may hold somewhat more). Unset (default):
    /// streams are never trimmed.
    #[serde(default)]
    pub maxlen: Option<u64>,

    /// How long one round trip may take (connecting included), e.g. `500ms` (default
    /// `5s`). A round trip that takes longer is retried.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
}

/// What the sink keeps in Redis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Mode {
    /// Each row's latest state under its key.
    #[default]
    Cache,
    /// Every event appended to a stream.
    Stream,
}

/// How a cached row is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Format {
    /// One JSON document per row (a string key), its fence beside it at `<key>:sluice`.
    #[default]
    Json,
    /// One hash per row, a field per column, its fence in the field `_sluice_pos`.
    Hash,
}

/// What a TRUNCATE does to a cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OnTruncate {
    /// Nothing (logged once per table).
    #[default]
    Ignore,
    /// Delete (and tombstone) every key of the table.
    Delete,
}

/// `{table}:{key}`.
pub const DEFAULT_KEY: &str = "{table}:{key}";

/// `{schema}.{table}`.
pub const DEFAULT_STREAM: &str = "{schema}.{table}";

/// 24 hours.
pub fn default_tombstone_ttl() -> Duration {
    Duration::from_secs(24 * 60 * 60)
}

/// 5 seconds.
pub fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A checked cache-mode configuration.
#[derive(Clone, Debug)]
pub(crate) struct CacheSettings {
    pub key: Template,
    pub format: Format,
    /// Milliseconds; 0 for none.
    pub ttl_ms: u64,
    /// Milliseconds; 0 for no tombstone.
    pub tombstone_ms: u64,
    pub on_truncate: OnTruncate,
}

/// A checked stream-mode configuration.
#[derive(Clone, Debug)]
pub(crate) struct StreamSettings {
    pub stream: Template,
    pub maxlen: Option<u64>,
}

/// A checked mode.
#[derive(Clone, Debug)]
pub(crate) enum Settings {
    Cache(CacheSettings),
    Stream(StreamSettings),
}

impl RedisConfig {
    /// A configuration for `url` with every other key at its default.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: Secret::new(url),
            mode: Mode::Cache,
            key: None,
            format: None,
            ttl: None,
            tombstone_ttl: None,
            on_truncate: None,
            stream: None,
            maxlen: None,
            timeout: default_timeout(),
        }
    }

    /// Check the keys serde cannot (templates, durations, keys of the other mode).
    pub(crate) fn settings(&self) -> Result<Settings, RedisConfigError> {
        if self.timeout.is_zero() {
            return Err(RedisConfigError::ZeroTimeout);
        }
        match self.mode {
            Mode::Cache => {
                self.refuse_other_mode(&[
                    ("stream", self.stream.is_some()),
                    ("maxlen", self.maxlen.is_some()),
                ])?;
                // Every change of a row must land on the same key: no `{op}`, no `{event.*}`.
                let key = Template::parse_with(
                    self.key.as_deref().unwrap_or(DEFAULT_KEY),
                    Rules::new().scope(Scope::Row),
                )
                .map_err(|source| RedisConfigError::Template {
                    field: "key",
                    source,
                })?;
                let on_truncate = self.on_truncate.unwrap_or_default();
                if on_truncate == OnTruncate::Delete && !key.parts().contains(&Part::Table) {
                    return Err(RedisConfigError::TruncateNeedsTable);
                }
                let ttl_ms = match self.ttl {
                    None => 0,
                    Some(ttl) => millis(ttl).ok_or(RedisConfigError::ShortTtl { field: "ttl" })?,
                };
                let tombstone = self.tombstone_ttl.unwrap_or_else(default_tombstone_ttl);
                let tombstone_ms = if tombstone.is_zero() {
                    0
                } else {
                    millis(tombstone).ok_or(RedisConfigError::ShortTtl {
                        field: "tombstone_ttl",
                    })?
                };
                Ok(Settings::Cache(CacheSettings {
                    key,
                    format: self.format.unwrap_or_default(),
                    ttl_ms,
                    tombstone_ms,
                    on_truncate,
                }))
            }
            Mode::Stream => {
                self.refuse_other_mode(&[
                    ("key", self.key.is_some()),
                    ("format", self.format.is_some()),
                    ("ttl", self.ttl.is_some()),
                    ("tombstone_ttl", self.tombstone_ttl.is_some()),
                    ("on_truncate", self.on_truncate.is_some()),
                ])?;
                let stream = Template::parse(self.stream.as_deref().unwrap_or(DEFAULT_STREAM))
                    .map_err(|source| RedisConfigError::Template {
                        field: "stream",
                        source,
                    })?;
                if self.maxlen == Some(0) {
                    return Err(RedisConfigError::ZeroMaxlen);
                }
                Ok(Settings::Stream(StreamSettings {
                    stream,
                    maxlen: self.maxlen,
                }))
            }
        }
    }

    fn refuse_other_mode(&self, keys: &[(&'static str, bool)]) -> Result<(), RedisConfigError> {
        match keys.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(RedisConfigError::OtherMode {
                field,
                mode: self.mode,
            }),
            None => Ok(()),
        }
    }
}

impl SinkConfig for RedisConfig {
    fn build(self) -> Result<Box<dyn Sink>, FieldError> {
        RedisSink::new(self)
            .map(|s| Box::new(s) as Box<dyn Sink>)
            .map_err(|e| FieldError::new(e.field(), &e))
    }
}

/// Whole milliseconds, at least one.
fn millis(d: Duration) -> Option<u64> {
    u64::try_from(d.as_millis()).ok().filter(|ms| *ms > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> RedisConfig {
        serde_json::from_value(value).unwrap()
    }

    /// The key at fault and the message of a configuration that does not build.
    fn refused(value: serde_json::Value) -> (String, String) {
        let e = RedisSink::new(parse(value))
            .err()
            .expect("should be refused");
        (e.field().to_string(), e.to_string())
    }

    #[test]
    fn only_the_url_is_required() {
        let c = parse(json!({"url": "redis://127.0.0.1:6379"}));
        assert_eq!(c, RedisConfig::new("redis://127.0.0.1:6379"));
        let Settings::Cache(cache) = c.settings().unwrap() else {
            panic!("cache is the default mode")
        };
        assert_eq!(cache.key.as_str(), "{table}:{key}");
        assert_eq!(cache.format, Format::Json);
        assert_eq!((cache.ttl_ms, cache.tombstone_ms), (0, 86_400_000));
        assert_eq!(cache.on_truncate, OnTruncate::Ignore);
        assert_eq!(c.timeout, Duration::from_secs(5));

        let c = parse(json!({"url": "redis://h", "mode": "stream"}));
        let Settings::Stream(stream) = c.settings().unwrap() else {
            panic!("stream mode")
        };
        assert_eq!(stream.stream.as_str(), "{schema}.{table}");
        assert_eq!(stream.maxlen, None);
    }

    #[test]
    fn every_key_parses() {
        let c = parse(json!({
            "url": "rediss://:pw@cache.internal:6380/2", "mode": "cache",
            "key": "c:{key.id}:{table}", "format": "hash", "ttl": "1h",
            "tombstone_ttl": "10m", "on_truncate": "delete", "timeout": "750ms"
        }));
        let Settings::Cache(cache) = c.settings().unwrap() else {
            panic!("cache mode")
        };
        assert_eq!(cache.format, Format::Hash);
        assert_eq!((cache.ttl_ms, cache.tombstone_ms), (3_600_000, 600_000));
        assert_eq!(cache.on_truncate, OnTruncate::Delete);
        assert_eq!(c.timeout, Duration::from_millis(750));

        let c = parse(json!({
            "url": "redis://h", "mode": "stream", "stream": "{event.aggregate_type}", "maxlen": 1000
        }));
        let Settings::Stream(stream) = c.settings().unwrap() else {
            panic!("stream mode")
        };
        assert_eq!(stream.maxlen, Some(1000));
        assert!(RedisSink::new(c).is_ok());
    }

    #[test]
    fn unknown_keys_and_values_are_serde_errors() {
        for (bad, word) in [
            (json!({"url": "redis://h", "database": 2}), "database"),
            (json!({"url": "redis://h", "format": "msgpack"}), "msgpack"),
            (json!({"url": "redis://h", "mode": "pubsub"}), "pubsub"),
            (json!({"url": "redis://h", "on_truncate": "flush"}), "flush"),
            (json!({"url": "redis://h", "ttl": 60}), "60s"),
        ] {
            let e = serde_json::from_value::<RedisConfig>(bad).unwrap_err();
            assert!(e.to_string().contains(word), "{e}");
        }
    }

    #[test]
    fn bad_templates_name_their_key() {
        let (field, message) = refused(json!({"url": "redis://h", "key": "{table}:{id}"}));
        assert_eq!(field, "key");
        assert!(message.contains("`{id}` is not a placeholder"), "{message}");
        let (field, _) =
            refused(json!({"url": "redis://h", "mode": "stream", "stream": "{tabel}"}));
        assert_eq!(field, "stream");
        let (field, message) = refused(json!({"url": "redis://h", "key": "{table}:{op}:{key}"}));
        assert_eq!(field, "key");
        assert!(
            message.contains("same for every change of a row"),
            "{message}"
        );
    }

    #[test]
    fn keys_of_the_other_mode_are_refused() {
        let (field, message) = refused(json!({"url": "redis://h", "maxlen": 10}));
        assert_eq!(field, "maxlen");
        assert!(message.contains("mode: stream"), "{message}");
        for key in ["key", "format", "ttl", "tombstone_ttl", "on_truncate"] {
            let mut value = json!({"url": "redis://h", "mode": "stream"});
            value[key] = match key {
                "format" => json!("hash"),
                "on_truncate" => json!("delete"),
                "ttl" | "tombstone_ttl" => json!("1h"),
                _ => json!("{table}"),
            };
            let (field, message) = refused(value);
            assert_eq!(field, key);
            assert!(message.contains("mode: cache"), "{message}");
        }
    }

    #[test]
    fn durations_and_limits_are_checked() {
        let (field, _) = refused(json!({"url": "redis://h", "ttl": "0s"}));
        assert_eq!(field, "ttl");
        let (field, _) = refused(json!({"url": "redis://h", "ttl": "500us"}));
        assert_eq!(field, "ttl");
        let (field, _) = refused(json!({"url": "redis://h", "tombstone_ttl": "10us"}));
        assert_eq!(field, "tombstone_ttl");
        let no_tombstones = parse(json!({"url": "redis://h", "tombstone_ttl": "0s"}));
        let Ok(Settings::Cache(cache)) = no_tombstones.settings() else {
            panic!("0s turns tombstones off")
        };
        assert_eq!(cache.tombstone_ms, 0);
        let (field, _) = refused(json!({"url": "redis://h", "timeout": "0s"}));
        assert_eq!(field, "timeout");
        let (field, _) = refused(json!({"url": "redis://h", "mode": "stream", "maxlen": 0}));
        assert_eq!(field, "maxlen");
    }

    #[test]
    fn truncate_delete_needs_the_table_in_the_key() {
        let (field, message) =
            refused(json!({"url": "redis://h", "key": "row:{key}", "on_truncate": "delete"}));
        assert_eq!(field, "on_truncate");
        assert!(message.contains("{table}"), "{message}");
    }

    #[test]
    fn urls_are_checked_and_never_printed() {
        let (field, message) = refused(json!({"url": "http://user:hunter2@h:6379"}));
        assert_eq!(field, "url");
        assert!(message.contains("redis://"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let (field, message) = refused(json!({"url": "redis://:hunter2@h:notaport"}));
        assert_eq!(field, "url");
        assert!(!message.contains("hunter2"), "{message}");
        let c = parse(json!({"url": "redis://:hunter2@h"}));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(RedisSink::new(RedisConfig::new("redis://127.0.0.1:6379/3")).is_ok());
        assert!(RedisSink::new(RedisConfig::new("rediss://:pw@cache.internal")).is_ok());
    }
}
