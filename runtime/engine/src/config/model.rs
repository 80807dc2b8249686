//! What a pipeline file holds, once read and checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::duration;
use super::error::{ConfigError, Locator};

/// One pipeline: a source, transforms, and the sinks its events fan out to.
#[derive(Clone)]
#[non_exhaustive]
pub struct Pipeline {
    /// The pipeline's name (`pipeline:`), made of `a-z`, `0-9`, `_` and `-`. The default slot,
    /// publication and state file names derive from it.
    pub name: String,
    /// The file this pipeline was read from.
    pub file: PathBuf,
    /// Where events come from: the source's section, for its connector to read.
    pub source: SourceSection,
    /// The pipeline-level transform chain, applied to every event before fan-out.
    pub transforms: Vec<TransformConfig>,
    /// The sinks, in the order the file lists them. There is at least one.
    pub sinks: Vec<SinkSection>,
    /// The pipeline-level delivery settings (each sink's own are in [`SinkSection::delivery`]).
    pub delivery: DeliveryConfig,
    /// The state database (offsets and DLQ). Default `.sluice/<pipeline>.db`; a relative path
    /// is relative to the pipeline file's folder (whatever the current directory).
    pub state: PathBuf,
    /// Where to serve `/metrics`, `/healthz`, `/readyz` and `/status`; `None`: not served.
    pub admin: Option<SocketAddr>,
    /// How long a shutdown (SIGTERM, SIGINT) may take: the sinks drain what they can
    /// within it, then what is still undelivered stays uncommitted (it is delivered again
    /// after a restart) and the process exits 0. Default `10s`: under the 30 s grace period
    /// orchestrators give.
    pub shutdown_timeout: Duration,
    /// What lies between the source and the sinks (`journal:`).
    pub journal: JournalConfig,
    /// Where every key was written, for [`Pipeline::error`]. Holds the values that came from
    /// the environment (to keep them out of messages), so it is never printed.
    pub(crate) locator: Arc<Locator>,
}

impl Pipeline {
    /// The sink called `name`.
    pub fn sink(&self, name: &str) -> Option<&SinkSection> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// An error about the key at the dotted path `key` (e.g. `transforms`, `transforms[0]`,
    /// `sinks.notify.transforms`, `source.snapshot`; `""` for the file as a whole), pointing
    /// at where it was written, or at its nearest written ancestor when the key itself is
    /// not in the file (a default). Values that came from the environment are kept out of
    /// the message, as in every error of the loader.
    pub fn error(&self, key: &str, message: impl fmt::Display) -> ConfigError {
        self.locator.error(key, message)
    }
}

/// Every field but the locator, whose index of interpolated values may hold secrets.
impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("source", &self.source)
            .field("transforms", &self.transforms)
            .field("sinks", &self.sinks)
            .field("delivery", &self.delivery)
            .field("state", &self.state)
            .field("admin", &self.admin)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

/// A table: `schema.name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// The schema, e.g. `public`.
    pub schema: String,
    /// The table's name within the schema.
    pub name: String,
}

impl TableName {
    /// A table name from its two parts, taken as they are (no case folding).
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `schema.table` or `table` (schema `public`). Unquoted identifiers are folded
    /// to lower case; `"Quoted"` ones are kept as they are, with `""` for a `"`.
    pub fn parse(text: &str) -> Result<TableName, String> {
        let mut parts = Vec::new();
        let mut rest = text.trim();
        let hint = || format!("`{text}` is not a table; write it as `schema.table` or `table`");
        loop {
            let (ident, after) = if let Some(quoted) = rest.strip_prefix('"') {
                let mut ident = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next() {
                        None => return Err(format!("{}: a quote is not closed", hint())),
                        Some((i, '"')) => {
                            if quoted[i + 1..].starts_with('"') {
                                ident.push('"');
                                chars.next();
                            } else {
                                break i + 1;
                            }
                        }
                        Some((_, c)) => ident.push(c),
                    }
                };
                if ident.is_empty() {
                    return Err(format!("{}: a quoted name is empty", hint()));
                }
                (ident, &quoted[end..])
            } else {
                let end = rest.find('.').unwrap_or(rest.len());
                let ident = &rest[..end];
                let plain = ident
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && ident
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '$');
                if !plain {
                    return Err(format!(
                        "{} (a name with other characters than letters, digits and _ \
                         must be double-quoted)",
                        hint()
                    ));
                }
                (ident.to_lowercase(), &rest[end..])
            };
            parts.push(ident);
            if after.is_empty() {
                break;
            }
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None => return Err(hint()),
            }
        }
        match <[String; 2]>::try_from(parts) {
            Ok([schema, name]) => Ok(TableName { schema, name }),
            Err(parts) if parts.len() == 1 => Ok(TableName {
                schema: "public".into(),
                name: parts.into_iter().next().unwrap_or_default(),
            }),
            Err(_) => Err(hint()),
        }
    }
}

/// `schema.name`, each part double-quoted only when it has to be.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn ident(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
            let plain = s
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
            if plain {
                f.write_str(s)
            } else {
                write!(f, "\"{}\"", s.replace('"', "\"\""))
            }
        }
        ident(f, &self.schema)?;
        f.write_str(".")?;
        ident(f, &self.name)
    }
}

impl std::str::FromStr for TableName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TableName::parse(s)
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TableName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table name such as public.orders")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TableName, E> {
                TableName::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A WebAssembly transform in a chain.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with `name`, `wasm` and optionally `config`, `timeout`, `memory`"
)]
pub struct TransformConfig {
    /// The transform's name, used in logs and metrics.
    pub name: String,
    /// The WebAssembly component (world in `wit/`). A relative path is read from the current
    /// directory; the file must exist.
    pub wasm: PathBuf,
    /// Settings handed to the transform, e.g. `{ fields: "email,phone" }`. Values may be
    /// strings, numbers or booleans; the transform receives them as strings.
    #[serde(default, deserialize_with = "scalar_map")]
    pub config: BTreeMap<String, String>,
    /// How long the transform may take per event, e.g. `5ms`. Unset: the engine's default.
    #[serde(default, deserialize_with = "duration::option::deserialize")]
    pub timeout: Option<Duration>,
    /// The most memory the transform may use, e.g. `64MiB`. Unset: the engine's default.
    #[serde(default)]
    pub memory: Option<String>,
    /// `config` keys whose values are not printed by `Debug`.
    #[serde(skip)]
    hidden: BTreeSet<String>,
}

impl TransformConfig {
    /// A transform with no config and default limits.
    pub fn new(name: impl Into<String>, wasm: impl Into<PathBuf>) -> Self {
        TransformConfig {
            name: name.into(),
            wasm: wasm.into(),
            config: BTreeMap::new(),
            timeout: None,
            memory: None,
            hidden: BTreeSet::new(),
        }
    }
}

impl fmt::Debug for TransformConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config: BTreeMap<&str, &str> = self
            .config
            .iter()
            .map(|(k, v)| {
                let shown = if self.hidden.contains(k) || is_secret_key(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("TransformConfig")
            .field("name", &self.name)
            .field("wasm", &self.wasm)
            .field("config", &config)
            .field("timeout", &self.timeout)
            .field("memory", &self.memory)
            .finish()
    }
}

fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Text(String);
    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Text;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a string, number or boolean")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }
    let map = BTreeMap::<String, Text>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// `delivery:`: how events reach a sink. Set at the top level for every sink; a sink's own
/// `delivery:` overrides it key by key.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a map with `batch`, `retry` and `dlq`"
)]
pub struct DeliveryConfig {
    /// How events are grouped into writes.
    pub batch: BatchConfig,
    /// How transient errors are retried.
    pub retry: RetryConfig,
    /// When events rejected for good (dead letters) stop the sink.
    pub dlq: DlqConfig,
}

impl DeliveryConfig {
    /// A rule that spans keys: the dotted key (relative to `delivery`) and what is wrong.
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        (self.retry.initial > self.retry.max).then(|| {
            (
                "retry.initial",
                format!(
                    "the first retry delay ({}) is longer than the longest (`max`: {})",
                    humantime::format_duration(self.retry.initial),
                    humantime::format_duration(self.retry.max)
                ),
            )
        })
    }
}

/// `delivery.batch:`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a map with `max_events` and `max_wait`"
)]
pub struct BatchConfig {
    /// The most events in one write. At least 1; default 500.
    #[serde(deserialize_with = "at_least_one")]
    pub max_events: usize,
    /// How long a partial batch may wait for more events before it is written; default
    /// `10ms`. It bounds the latency batching adds at low rates (under load batches fill at
    /// once); raise it for fewer, larger writes. `0s`: never wait.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 500,
            max_wait: Duration::from_millis(10),
        }
    }
}

/// `delivery.retry:`: transient errors are retried with exponential backoff and jitter.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a map with `initial`, `max` and `max_elapsed`"
)]
pub struct RetryConfig {
    /// The first delay. Default `100ms`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub initial: Duration,
    /// The longest delay between two attempts. Default `30s`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max: Duration,
    /// How long one write may keep failing; past it the sink stops with an error (it never
    /// drops events). Default `15m`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(15 * 60),
        }
    }
}

/// `delivery.dlq:`: events a sink rejects for good go to its dead-letter queue, until too
/// many do and the sink stops, loudly.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a map with `max_ratio`, `window` and `on_key`"
)]
pub struct DlqConfig {
    /// The largest share of the last `window` events that may go to the DLQ; above it the
    /// sink stops. More than 0, at most 1; default 0.5.
    #[serde(deserialize_with = "ratio")]
    pub max_ratio: f64,
    /// How many of the most recent events `max_ratio` looks at. At least 1; default 100.
    #[serde(deserialize_with = "at_least_one")]
    pub window: usize,
    /// What happens to later events with the same key as one sent to the DLQ.
    pub on_key: OnKey,
}

impl Default for DlqConfig {
    fn default() -> Self {
        DlqConfig {
            max_ratio: 0.5,
            window: 100,
            on_key: OnKey::Continue,
        }
    }
}

/// `delivery.dlq.on_key:`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnKey {
    /// Deliver them as usual (the default).
    #[default]
    Continue,
    /// Hold them back until the dead letter is dealt with, so no later change to that key
    /// overtakes it.
    Hold,
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(de::Error::custom("must be at least 1"));
    }
    Ok(n)
}

fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let r = f64::deserialize(d)?;
    if !(r > 0.0 && r <= 1.0) {
        return Err(de::Error::custom(format!(
            "{r} is not a ratio; write a number more than 0 and at most 1 (0.5: half)"
        )));
    }
    Ok(r)
}

/// One entry of `sinks:`. The keys every sink has (`type`, `delivery`, `transforms`) are read
/// here; the sink's own keys are in [`SinkSection::config`], for the sink to read with
/// [`SinkSection::parse`].
#[derive(Clone)]
pub struct SinkSection {
    /// The sink's name: its key under `sinks:`, made of `a-z`, `0-9`, `_` and `-`.
    pub name: String,
    /// The sink's `type`, e.g. `webhook`.
    pub kind: String,
    /// The pipeline's `delivery:` with the sink's own `delivery:` laid over it, key by key.
    pub delivery: DeliveryConfig,
    /// The sink's own transform chain, run after the pipeline's.
    pub transforms: Vec<TransformConfig>,
    /// `tables:`: only changes of these tables reach the sink (`op: event` envelopes,
    /// outbox rows and messages, always do). Empty: every table's.
    pub tables: Vec<TableName>,
    /// The sink's remaining keys, as a JSON object.
    pub config: Value,
    /// `config` with secrets masked, for `Debug`.
    shown: Value,
    locator: Arc<Locator>,
}

impl SinkSection {
    pub(crate) fn from_file(
        name: String,
        kind: String,
        delivery: DeliveryConfig,
        transforms: Vec<TransformConfig>,
        config: Value,
        locator: Arc<Locator>,
    ) -> Self {
        let shown = masked(&config, &format!("sinks.{name}"), &locator);
        SinkSection {
            name,
            kind,
            delivery,
            transforms,
            tables: Vec::new(),
            config,
            shown,
            locator,
        }
    }

    /// A section that was not read from a file (tests, pipelines built in code). Its errors
    /// point at no line.
    pub fn new(name: impl Into<String>, kind: impl Into<String>, config: Value) -> Self {
        let name = name.into();
        let locator = Arc::new(Locator::new(Path::new("<no file>")));
        SinkSection::from_file(
            name,
            kind.into(),
            DeliveryConfig::default(),
            Vec::new(),
            config,
            locator,
        )
    }

    /// Reads the sink's own keys into `T` (which should be `#[serde(deny_unknown_fields)]`).
    /// Errors name the key as `sinks.<name>.<key>` and point at it in the file.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        parse_keys(&self.locator, &format!("sinks.{}", self.name), &self.config)
    }

    /// An error about the sink's key `field` (e.g. `url`, `headers.x-tenant`; `""` for the
    /// sink as a whole), pointing at it in the file. Values that came from the environment
    /// are kept out of the message.
    pub fn error(&self, field: &str, message: impl fmt::Display) -> ConfigError {
        self.locator.error(
            &super::error::join(&format!("sinks.{}", self.name), field),
            message,
        )
    }
}

/// 10 seconds.
pub(crate) fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `journal:`: the log between the source and the sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalConfig {
    /// `type:` `disk` (default) or `memory`.
    pub kind: JournalKind,
    /// Disk: the folder of segment files. Default: beside the state file, named after it
    /// (`.sluice/<pipeline>.journal`); relative paths resolve against the pipeline file's
    /// folder.
    pub path: PathBuf,
    /// Disk: the most bytes of segments kept. When the sinks' unfinished entries fill it the
    /// source pauses (the slot then holds WAL on the server); nothing is dropped. Default
    /// `10GiB`.
    pub max_bytes: u64,
    /// Disk: how long entries every sink has finished are kept, for `sluice rewind`. Default
    /// `24h`; `0s` trims them at once.
    pub retention: Duration,
    /// Disk: the size of one segment file (the unit of trimming). Default `64MiB`.
    pub segment_bytes: u64,
}

/// Where the journal keeps entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalKind {
    /// Segment files on local disk: the slot confirms what is journaled, so no sink holds
    /// WAL on the server.
    Disk,
    /// In memory, bounded: the slot confirms only what every sink made durable.
    Memory,
}

/// `journal:` as written, before defaults and checks.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with `type`, `path`, `max_bytes`, `retention` and `segment_bytes`"
)]
pub(crate) struct RawJournal {
    #[serde(rename = "type")]
    pub kind: Option<JournalKind>,
    pub path: Option<PathBuf>,
    pub max_bytes: Option<crate::units::ByteSize>,
    #[serde(default, deserialize_with = "duration::option::deserialize")]
    pub retention: Option<Duration>,
    pub segment_bytes: Option<crate::units::ByteSize>,
}

impl RawJournal {
    /// Defaults and checks: the key at fault (relative to `journal`) and why.
    /// `dir`: the pipeline file's folder; `state`: the state file (resolved).
    pub(crate) fn resolve(
        self,
        dir: Option<&Path>,
        state: &Path,
    ) -> Result<JournalConfig, (&'static str, String)> {
        let kind = self.kind.unwrap_or(JournalKind::Disk);
        if kind == JournalKind::Memory {
            let disk_only = [
                ("path", self.path.is_some()),
                ("max_bytes", self.max_bytes.is_some()),
                ("retention", self.retention.is_some()),
                ("segment_bytes", self.segment_bytes.is_some()),
            ];
            if let Some((key, _)) = disk_only.iter().find(|(_, set)| *set) {
                return Err((
                    key,
                    format!("`{key}` is for `type: disk`; a memory journal keeps no files"),
                ));
            }
        }
        let path = match self.path {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(("path", "the journal's path is empty".into()))
            }
            Some(p) => match dir {
                Some(dir) if p.is_relative() => dir.join(p),
                _ => p,
            },
            None => state.with_extension("journal"),
        };
        let segment_bytes = self.segment_bytes.map_or(64 << 20, |b| b.0);
        if segment_bytes < 64 << 10 {
            return Err(("segment_bytes", "a segment must hold at least 64KiB".into()));
        }
        let max_bytes = self.max_bytes.map_or(10 << 30, |b| b.0);
        if max_bytes < 2 * segment_bytes {
            return Err((
                "max_bytes",
                format!(
                    "the journal must hold two segments at least ({} with segment_bytes {})",
                    crate::units::human_bytes(2 * segment_bytes as i64),
                    crate::units::human_bytes(segment_bytes as i64)
                ),
            ));
        }
        Ok(JournalConfig {
            kind,
            path,
            max_bytes,
            retention: self.retention.unwrap_or(Duration::from_secs(24 * 3600)),
            segment_bytes,
        })
    }
}

/// `source:`. The key every source has (`type`) is read here; the source's own keys are in
/// [`SourceSection::config`], for its connector to read with [`SourceSection::parse`].
#[derive(Clone)]
pub struct SourceSection {
    /// The source's `type`, e.g. `postgres`.
    pub kind: String,
    /// The pipeline's name (source defaults such as slot names derive from it).
    pub pipeline: String,
    /// The source's remaining keys, as a JSON object.
    pub config: Value,
    /// `config` with secrets masked, for `Debug`.
    shown: Value,
    locator: Arc<Locator>,
}

impl SourceSection {
    pub(crate) fn from_file(
        kind: String,
        pipeline: String,
        config: Value,
        locator: Arc<Locator>,
    ) -> Self {
        let shown = masked(&config, "source", &locator);
        SourceSection {
            kind,
            pipeline,
            config,
            shown,
            locator,
        }
    }

    /// A section that was not read from a file (tests, pipelines built in code). Its errors
    /// point at no line.
    pub fn new(kind: impl Into<String>, pipeline: impl Into<String>, config: Value) -> Self {
        let locator = Arc::new(Locator::new(Path::new("<no file>")));
        SourceSection::from_file(kind.into(), pipeline.into(), config, locator)
    }

    /// Reads the source's own keys into `T` (which should be `#[serde(deny_unknown_fields)]`).
    /// Errors name the key as `source.<key>` and point at it in the file.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        parse_keys(&self.locator, "source", &self.config)
    }

    /// An error about the source's key `field` (e.g. `url`, `tables[1]`; `""` for the
    /// source as a whole), pointing at it in the file, or at its nearest written ancestor
    /// when it is not written (a default). Values from the environment stay out of it.
    pub fn error(&self, field: &str, message: impl fmt::Display) -> ConfigError {
        self.locator
            .error(&super::error::join("source", field), message)
    }

    /// Whether the value at `field` came from the environment (`${VAR}`).
    pub fn is_interpolated(&self, field: &str) -> bool {
        self.locator
            .is_interpolated(&super::error::join("source", field))
    }
}

impl fmt::Debug for SourceSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSection")
            .field("kind", &self.kind)
            .field("pipeline", &self.pipeline)
            .field("config", &self.shown)
            .finish()
    }
}

/// A section's own keys read into `T`, errors located under `prefix`.
fn parse_keys<T: DeserializeOwned>(
    locator: &Locator,
    prefix: &str,
    config: &Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(config).map_err(|e| locator.serde_error(prefix, e))
}

impl fmt::Debug for SinkSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkSection")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("delivery", &self.delivery)
            .field("transforms", &self.transforms)
            .field("tables", &self.tables)
            .field("config", &self.shown)
            .finish()
    }
}

/// Whether a key's value should never be printed.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "password",
        "passwd",
        "token",
        "api_key",
        "apikey",
        "credential",
        "private",
    ]
    .iter()
    .any(|s| key.contains(s))
        || key == "authorization"
}

/// `value` with secret-looking keys, values from the environment and URL passwords masked.
fn masked(value: &Value, path: &str, locator: &Locator) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let p = super::tree::child(path, k);
                    let v = if is_secret_key(k) && !v.is_object() && !v.is_array() {
                        Value::String("***".into())
                    } else {
                        masked(v, &p, locator)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| masked(v, &format!("{path}[{i}]"), locator))
                .collect(),
        ),
        Value::String(_) if locator.is_interpolated(path) => Value::String("***".into()),
        Value::String(s) => Value::String(mask_url_password(s)),
        other => other.clone(),
    }
}

/// `scheme://user:password@host` → `scheme://user:***@host`.
fn mask_url_password(s: &str) -> String {
    let Some(start) = s.find("://").map(|i| i + 3) else {
        return s.to_string();
    };
    let authority_end = s[start..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| start + i);
    let Some(at) = s[start..authority_end].rfind('@').map(|i| start + i) else {
        return s.to_string();
    };
    match s[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &s[..start + colon], &s[at..]),
        None => s.to_string(),
    }
}

/// Marks the `config` values of `transforms` (at `prefix`) that came from the environment.
pub(crate) fn hide_interpolated(
    transforms: &mut [TransformConfig],
    prefix: &str,
    locator: &Locator,
) {
    for (i, t) in transforms.iter_mut().enumerate() {
        t.hidden = t
            .config
            .keys()
            .filter(|k| locator.is_interpolated(&format!("{prefix}[{i}].config.{k}")))
            .cloned()
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let t = |s: &str| {
            TableName::parse(s).map(|t| (t.schema.clone(), t.name.clone(), t.to_string()))
        };
        assert_eq!(
            t("orders").unwrap(),
            ("public".into(), "orders".into(), "public.orders".into())
        );
        assert_eq!(
            t("Sales.Orders").unwrap(),
            ("sales".into(), "orders".into(), "sales.orders".into())
        );
        assert_eq!(
            t(r#"public."My ""Big"" Table""#).unwrap(),
            (
                "public".into(),
                r#"My "Big" Table"#.into(),
                r#"public."My ""Big"" Table""#.into()
            )
        );
        assert_eq!(t(r#""a.b".c"#).unwrap().0, "a.b");
        for bad in [
            "", "a.b.c", "a..b", "my table", r#""open"#, r#""""#, "a.", "1abc",
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            mask_url_password("redis://:pw@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(
            mask_url_password("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(mask_url_password("http://h/a@b"), "http://h/a@b");
        assert_eq!(mask_url_password("http://u@h"), "http://u@h");
    }

    #[test]
    fn delivery_defaults() {
        let d = DeliveryConfig::default();
        assert_eq!(d.batch.max_events, 500);
        assert_eq!(d.batch.max_wait, Duration::from_millis(10));
        assert_eq!(d.retry.initial, Duration::from_millis(100));
        assert_eq!(d.retry.max, Duration::from_secs(30));
        assert_eq!(d.retry.max_elapsed, Duration::from_secs(900));
        assert_eq!(d.dlq.max_ratio, 0.5);
        assert_eq!(d.dlq.window, 100);
        assert_eq!(d.dlq.on_key, OnKey::Continue);
    }
}
