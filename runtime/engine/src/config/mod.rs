//! Pipeline files.
//!
//! [`load`] reads a pipeline file (YAML, one document) into a checked [`Pipeline`]:
//! `${VAR}` / `${VAR:-default}` in string values are read from the environment (`$$` is a
//! literal `$`), defaults are applied, each sink's `delivery:` is laid over the pipeline's,
//! and every problem — a YAML syntax error, an unknown key, a missing variable, an unknown
//! source or sink type, a missing wasm file — is a [`ConfigError`] that names the file, the
//! line, the column and the key. The source and each sink read their own keys with
//! [`SourceSection::parse`] and [`SinkSection::parse`], whose errors are located the same
//! way; [`Pipeline::error`], [`SourceSection::error`] and [`SinkSection::error`] locate the
//! errors of checks made after loading (e.g. a feature this build refuses).

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
    BatchConfig, DeliveryConfig, DlqConfig, JournalConfig, JournalKind, OnKey, Pipeline,
    RetryConfig, SinkSection, SourceSection, TableName, TransformConfig,
};
pub use secret::Secret;

use crate::registry::Registry;

use error::{join, Locator};
use tree::{child, Kind, Node, Scalar};

/// Reads and checks the pipeline file at `path`. `${VAR}` is read from this process's
/// environment. `registry` holds the source and sink `type`s this build knows.
pub fn load(path: &Path, registry: &Registry) -> Result<Pipeline, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::unlocated(path, "", format!("cannot read: {e}")))?;
    let text = utf8(&bytes, path)?;
    load_str(text, path, registry, &|name| std::env::var(name).ok())
}

/// The file as text, or an error at the line and column of its first byte that is not
/// UTF-8.
fn utf8<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str, ConfigError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line = good.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let column = std::str::from_utf8(&good[line_start..]).map_or(1, |t| t.chars().count() + 1);
        ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            key: String::new(),
            message: format!(
                "the file is not UTF-8 text (byte 0x{:02x}); save it as UTF-8",
                bytes[e.valid_up_to()]
            ),
        }
    })
}

/// Checks a pipeline file's text. `file` is only used in errors (and kept in
/// [`Pipeline::file`]); `env` looks up `${VAR}`s.
pub fn load_str(
    text: &str,
    file: &Path,
    registry: &Registry,
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

    let source = source(value.get("source"), &name, registry, &locator)?;
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
        &registry.sink_names(),
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
    // Relative to the pipeline file, not to wherever `sluice` is started: the same file
    // always finds the same offsets and dead letters.
    let state = match file.parent() {
        Some(dir) if state.is_relative() => dir.join(state),
        _ => state,
    };
    let journal = raw
        .journal
        .unwrap_or_default()
        .resolve(file.parent(), &state)
        .map_err(|(key, message)| at(&join("journal", key), message))?;
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
        shutdown_timeout: raw.shutdown_timeout,
        journal,
        locator,
    })
}

const TOP_KEYS: &str =
    "pipeline, source, transforms, sinks, delivery, journal, state, admin, shutdown_timeout";

/// The file's top level, before the checks that `serde` cannot do.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map of pipeline, source, transforms, sinks, delivery, journal, state, admin, shutdown_timeout"
)]
struct RawPipeline {
    /// The pipeline's name.
    pipeline: String,
    /// Where events come from: read by [`source`], then by the source's connector.
    #[allow(dead_code)]
    source: IgnoredAny,
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
    /// The journal.
    #[serde(default)]
    journal: Option<model::RawJournal>,
    /// The state database.
    #[serde(default)]
    state: Option<PathBuf>,
    /// The admin server's address.
    #[serde(default)]
    admin: Option<String>,
    /// How long a shutdown may take.
    #[serde(default = "model::default_shutdown_timeout", with = "duration")]
    shutdown_timeout: std::time::Duration,
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

/// Reads `source:`: its `type`, one this build knows; its other keys are the connector's.
fn source(
    value: Option<&Value>,
    pipeline: &str,
    registry: &Registry,
    locator: &Arc<Locator>,
) -> Result<SourceSection, ConfigError> {
    let known = registry
        .source_names()
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let Some(Value::Object(map)) = value.cloned() else {
        return Err(locator.error(
            "source",
            format!("expected a map with the source's `type` ({known}) and its keys"),
        ));
    };
    let mut map = map;
    let kind = match map.remove("type") {
        None => {
            return Err(missing_type(
                &map,
                "source",
                "the source's",
                &known,
                locator,
            ))
        }
        Some(Value::String(kind)) if registry.source(&kind).is_some() => kind,
        Some(other) => {
            let shown = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_string);
            return Err(locator.error(
                "source.type",
                format!("unknown source type `{shown}` (known: {known})"),
            ));
        }
    };
    Ok(SourceSection::from_file(
        kind,
        pipeline.to_string(),
        Value::Object(map),
        Arc::clone(locator),
    ))
}

/// A section without `type`: point at a key that looks like a misspelt `type`, if any, or
/// at the section.
fn missing_type(
    map: &serde_json::Map<String, Value>,
    path: &str,
    whose: &str,
    known: &str,
    locator: &Locator,
) -> ConfigError {
    let misspelt = map.keys().find(|k| {
        let k = k.to_ascii_lowercase();
        k != "type" && (k.starts_with("typ") || k == "kind" || edit_distance(&k, "type") <= 1)
    });
    match misspelt {
        Some(k) => locator.error(
            &child(path, k),
            format!("unknown key `{k}`; {whose} type is set with `type` ({known})"),
        ),
        None => locator.error(
            &child(path, "type"),
            format!("this key is required: {whose} type ({known})"),
        ),
    }
}

/// Levenshtein distance of two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
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
            None => return Err(missing_type(&map, &path, "the sink's", &known, locator)),
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
        let tables: Vec<TableName> = match map.remove("tables") {
            None => Vec::new(),
            Some(list) => {
                let tables_path = child(&path, "tables");
                let tables: Vec<TableName> = de(locator, &tables_path, &list)?;
                for (i, t) in tables.iter().enumerate() {
                    if tables[..i].contains(t) {
                        return Err(locator.error(
                            &format!("{tables_path}[{i}]"),
                            format!("`{t}` is listed twice"),
                        ));
                    }
                }
                if tables.is_empty() {
                    return Err(locator.error(
                        &tables_path,
                        "an empty list would send this sink no change; remove `tables` to send \
                         it every table",
                    ));
                }
                tables
            }
        };
        let mut section = SinkSection::from_file(
            name,
            kind,
            delivery,
            transforms,
            Value::Object(map),
            Arc::clone(locator),
        );
        section.tables = tables;
        out.push(section);
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
