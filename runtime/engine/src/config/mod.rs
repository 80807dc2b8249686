//! Pipeline files.
//!
//! [`load`] reads a pipeline file (YAML, one document) into a checked [`Pipeline`]:
//! `${VAR}` / `${VAR:-default}` in string values are read from the environment (`$$` is a
//! literal `$`), defaults are applied, each sink's `delivery:` is laid over the pipeline's,
//! and every problem — a YAML syntax error, an unknown key, a missing variable, an unknown sink
//! type, a missing wasm file — is a [`ConfigError`] that names the file, the line, the column
//! and the key. A sink reads its own keys with [`SinkSection::parse`], whose errors are
//! located the same way; [`Pipeline::error`] and [`SinkSection::error`] locate the errors of
//! checks made after loading (e.g. a feature this build refuses).

pub mod duration;
pub mod secret;

mod convert;
mod error;
mod model;
mod tree;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::Value;

pub use error::ConfigError;
pub use model::{
    BatchConfig, DeliveryConfig, DlqConfig, OnKey, OutboxConfig, Pipeline, RetryConfig,
    SinkSection, Snapshot, SourceConfig, TableName, TransformConfig,
};
pub use secret::Secret;

use error::{join, Locator};
use tree::{child, Kind, Node, Scalar};

/// Reads and checks the pipeline file at `path`. `${VAR}` is read from this process's
/// environment. `sink_types` are the sink `type`s this build knows.
pub fn load(path: &Path, sink_types: &[&str]) -> Result<Pipeline, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::unlocated(path, "", format!("cannot read: {e}")))?;
    load_str(&text, path, sink_types, &|name| std::env::var(name).ok())
}

/// Checks a pipeline file's text. `file` is only used in errors (and kept in
/// [`Pipeline::file`]); `env` looks up `${VAR}`s.
pub fn load_str(
    text: &str,
    file: &Path,
    sink_types: &[&str],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, ConfigError> {
    let root = match tree::parse(text) {
        Ok(Some(root)) => root,
        Ok(None) => {
            return Err(ConfigError::unlocated(
                file,
                "",
                "the file is empty; a pipeline file starts with `pipeline: <name>`",
            ))
        }
        Err(mut e) => {
            let line = text.lines().nth(e.pos.line.saturating_sub(1)).unwrap_or("");
            if e.message.contains("flow") && line.contains("${") {
                e.message
                    .push_str(" (inside `{ }` or `[ ]`, quote values that use ${…}: \"${X:-1}\")");
            }
            return Err(ConfigError {
                file: file.to_path_buf(),
                line: e.pos.line,
                column: e.pos.column,
                key: e.path,
                message: e.message,
            });
        }
    };
    let Kind::Map(entries) = &root.kind else {
        return Err(ConfigError {
            file: file.to_path_buf(),
            line: root.pos.line,
            column: root.pos.column,
            key: String::new(),
            message: format!("a pipeline file is a map of keys ({TOP_KEYS})"),
        });
    };
    let mut locator = Locator::new(file);
    let value = convert::to_json(&root, &mut locator, env)?;
    let locator = Arc::new(locator);
    let at = |key: &str, message: String| locator.error(key, message);

    let raw: RawPipeline = de(&locator, "", &value)?;

    let name = raw.pipeline;
    if !is_name(&name) {
        return Err(at(
            "pipeline",
            format!("`{name}` is not a pipeline name; use lower-case letters, digits, _ and -"),
        ));
    }

    let source = source(raw.source, &name, &locator)?;
    let transforms = transforms(raw.transforms, "transforms", &locator)?;

    let delivery = raw.delivery;
    if let Some((key, message)) = delivery.problem() {
        return Err(at(&join("delivery", key), message));
    }
    let delivery_json = value
        .get("delivery")
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));

    let sinks_node = entries
        .iter()
        .find(|(k, _)| k.text == "sinks")
        .map(|(_, v)| v);
    let sinks = sinks(
        sinks_node,
        value.get("sinks"),
        sink_types,
        &delivery,
        &delivery_json,
        &locator,
    )?;

    let state = raw
        .state
        .unwrap_or_else(|| PathBuf::from(format!(".sluice/{name}.db")));
    if state.as_os_str().is_empty() {
        return Err(at("state", "the state file's path is empty".into()));
    }
    let admin = match raw.admin {
        None => None,
        Some(text) => Some(text.trim().parse::<SocketAddr>().map_err(|_| {
            at(
                "admin",
                format!(
                    "`{text}` is not an address; write an IP address and a port, \
                     e.g. 127.0.0.1:9187"
                ),
            )
        })?),
    };

    Ok(Pipeline {
        name,
        file: file.to_path_buf(),
        source,
        transforms,
        sinks,
        delivery,
        state,
        admin,
        locator,
    })
}

const TOP_KEYS: &str = "pipeline, source, transforms, sinks, delivery, state, admin";

/// The file's top level, before the checks that `serde` cannot do.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map of pipeline, source, transforms, sinks, delivery, state, admin"
)]
struct RawPipeline {
    /// The pipeline's name.
    pipeline: String,
    /// Where events come from.
    source: RawSource,
    /// The pipeline-level transform chain.
    #[serde(default)]
    transforms: Vec<TransformConfig>,
    /// Read from the tree, in file order, by [`sinks`].
    #[serde(default)]
    #[allow(dead_code)]
    sinks: IgnoredAny,
    /// Delivery defaults for every sink.
    #[serde(default)]
    delivery: DeliveryConfig,
    /// The state database.
    #[serde(default)]
    state: Option<PathBuf>,
    /// The admin server's address.
    #[serde(default)]
    admin: Option<String>,
}

/// `source:` as written; see [`SourceConfig`] for what each key means.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with `type: postgres`, `url`, `tables` and the other source keys"
)]
struct RawSource {
    /// Always `postgres`.
    #[serde(rename = "type")]
    #[allow(dead_code)]
    kind: SourceType,
    /// Connection URL.
    url: Secret,
    /// Replication slot.
    #[serde(default)]
    slot: Option<String>,
    /// Publication.
    #[serde(default)]
    publication: Option<String>,
    /// Captured tables.
    #[serde(default)]
    tables: Vec<TableName>,
    /// Outbox table.
    #[serde(default)]
    outbox: Option<OutboxConfig>,
    /// Logical message prefixes.
    #[serde(default)]
    messages: Vec<String>,
    /// Initial snapshot or not.
    #[serde(default)]
    snapshot: Snapshot,
}

/// The source types there are.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum SourceType {
    Postgres,
}

fn de<T: DeserializeOwned>(
    locator: &Locator,
    prefix: &str,
    value: &Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| locator.serde_error(prefix, e))
}

/// `[a-z0-9_-]+`: pipeline and sink names.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn source(raw: RawSource, pipeline: &str, locator: &Locator) -> Result<SourceConfig, ConfigError> {
    if raw.url.expose().trim().is_empty() {
        return Err(locator.error("source.url", "the connection URL is empty"));
    }
    let default = format!("sluice_{}", pipeline.replace('-', "_"));
    let slot = pg_name(raw.slot, "slot", &default, locator)?;
    let publication = pg_name(raw.publication, "publication", &default, locator)?;

    if raw.tables.is_empty() && raw.outbox.is_none() && raw.messages.is_empty() {
        return Err(locator.error(
            "source.tables",
            "there is nothing to capture: list at least one table (or set `outbox` or `messages`)",
        ));
    }
    for (i, t) in raw.tables.iter().enumerate() {
        if raw.tables[..i].contains(t) {
            return Err(locator.error(
                &format!("source.tables[{i}]"),
                format!("`{t}` is listed twice"),
            ));
        }
    }
    for (i, m) in raw.messages.iter().enumerate() {
        if m.is_empty() {
            return Err(locator.error(
                &format!("source.messages[{i}]"),
                "a message prefix cannot be empty",
            ));
        }
    }
    Ok(SourceConfig {
        url: raw.url,
        slot,
        publication,
        tables: raw.tables,
        outbox: raw.outbox,
        messages: raw.messages,
        snapshot: raw.snapshot,
    })
}

/// A slot or publication name: as given, or the default; `[a-z0-9_]{1,63}` either way.
fn pg_name(
    given: Option<String>,
    what: &str,
    default: &str,
    locator: &Locator,
) -> Result<String, ConfigError> {
    let key = format!("source.{what}");
    let valid = |s: &str| {
        (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    match given {
        Some(name) if valid(&name) => Ok(name),
        Some(name) => Err(locator.error(
            &key,
            format!(
                "`{name}` is not a valid {what} name: 1 to 63 lower-case letters, digits and _"
            ),
        )),
        None if valid(default) => Ok(default.to_string()),
        None => Err(locator.error(
            &key,
            format!(
                "the default {what} name `{default}` is longer than 63 characters; \
                 set `{what}` or shorten the pipeline's name"
            ),
        )),
    }
}

/// Checks a transform chain at `prefix` (`transforms` or `sinks.<name>.transforms`).
fn transforms(
    mut chain: Vec<TransformConfig>,
    prefix: &str,
    locator: &Locator,
) -> Result<Vec<TransformConfig>, ConfigError> {
    for (i, t) in chain.iter().enumerate() {
        if t.name.trim().is_empty() {
            return Err(locator.error(&format!("{prefix}[{i}].name"), "a transform needs a name"));
        }
        if t.wasm.is_file() {
            continue;
        }
        let key = format!("{prefix}[{i}].wasm");
        let message = if t.wasm.exists() {
            format!("`{}` is not a file", t.wasm.display())
        } else {
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "?".into());
            format!(
                "`{}` does not exist (relative paths are read from the current directory, {cwd})",
                t.wasm.display()
            )
        };
        return Err(locator.error(&key, message));
    }
    model::hide_interpolated(&mut chain, prefix, locator);
    Ok(chain)
}

/// Reads `sinks:` in file order: `node` for the order and places, `value` for the content.
fn sinks(
    node: Option<&Node>,
    value: Option<&Value>,
    sink_types: &[&str],
    delivery: &DeliveryConfig,
    delivery_json: &Value,
    locator: &Arc<Locator>,
) -> Result<Vec<SinkSection>, ConfigError> {
    let none = || {
        locator.error(
            "sinks",
            "at least one sink is required, e.g. `sinks: { notify: { type: webhook, url: … } }`",
        )
    };
    let entries =
        match node.map(|n| &n.kind) {
            None | Some(Kind::Scalar(Scalar::Null)) => return Err(none()),
            Some(Kind::Map(entries)) if entries.is_empty() => return Err(none()),
            Some(Kind::Map(entries)) => entries,
            Some(_) => return Err(locator.error(
                "sinks",
                "expected a map of sinks by name, e.g. `sinks: { notify: { type: webhook, … } }`",
            )),
        };
    let known = if sink_types.is_empty() {
        "none".to_string()
    } else {
        sink_types.join(", ")
    };
    let mut out = Vec::with_capacity(entries.len());
    for (key, _) in entries {
        let name = key.text.clone();
        let path = child("sinks", &name);
        if !is_name(&name) {
            return Err(locator.error(
                &path,
                format!("`{name}` is not a sink name; use lower-case letters, digits, _ and -"),
            ));
        }
        let Some(Value::Object(mut map)) = value.and_then(|v| v.get(&name)).cloned() else {
            return Err(locator.error(
                &path,
                format!("expected a map with the sink's `type` ({known}) and its keys"),
            ));
        };
        let kind = match map.remove("type") {
            None => {
                return Err(locator.error(
                    &child(&path, "type"),
                    format!("this key is required: the sink's type ({known})"),
                ))
            }
            Some(Value::String(kind)) if sink_types.contains(&kind.as_str()) => kind,
            Some(Value::String(kind)) => {
                return Err(locator.error(
                    &child(&path, "type"),
                    format!("unknown sink type `{kind}` (known: {known})"),
                ))
            }
            Some(_) => {
                return Err(locator.error(
                    &child(&path, "type"),
                    format!("expected a sink type ({known})"),
                ))
            }
        };
        let delivery = match map.remove("delivery") {
            None => delivery.clone(),
            Some(own) => {
                let own_path = child(&path, "delivery");
                // Checked alone first, so that errors point at the sink's own keys.
                let _: DeliveryConfig = de(locator, &own_path, &own)?;
                let merged: DeliveryConfig =
                    de(locator, &own_path, &merge(delivery_json.clone(), own))?;
                if let Some((key, message)) = merged.problem() {
                    return Err(locator.error(&join(&own_path, key), message));
                }
                merged
            }
        };
        let transforms = match map.remove("transforms") {
            None => Vec::new(),
            Some(chain) => {
                let chain_path = child(&path, "transforms");
                transforms(de(locator, &chain_path, &chain)?, &chain_path, locator)?
            }
        };
        out.push(SinkSection::from_file(
            name,
            kind,
            delivery,
            transforms,
            Value::Object(map),
            Arc::clone(locator),
        ));
    }
    Ok(out)
}

/// `over` laid over `base`, map by map.
fn merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Object(mut base), Value::Object(over)) => {
            for (k, v) in over {
                let merged = match base.remove(&k) {
                    Some(b) => merge(b, v),
                    None => v,
                };
                base.insert(k, merged);
            }
            Value::Object(base)
        }
        (_, over) => over,
    }
}

#[cfg(test)]
mod tests;
