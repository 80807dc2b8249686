//! What to load: a transform's file, its config and its limits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sluice_runtime::config::TransformConfig;

/// The time budget of one batch when the pipeline file sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The memory cap of one instance when the pipeline file sets none: 64 MiB.
pub const DEFAULT_MEMORY: u64 = 64 << 20;

/// One transform to load.
#[derive(Clone, Debug, PartialEq)]
pub struct TransformSpec {
    /// Used in logs, errors and DLQ entries.
    pub name: String,
    /// The component file (world `sluice:transform/transformer@0.1.0`).
    pub wasm: PathBuf,
    /// Handed to the guest's `init`, in key order.
    pub config: BTreeMap<String, String>,
    /// How long one call may run: a whole batch, or one event when a batch is re-run event by
    /// event after a trap.
    pub timeout: Duration,
    /// The most linear memory (bytes) one instance may use.
    pub memory: u64,
}

impl TransformSpec {
    /// A transform with no config and the default limits.
    pub fn new(name: impl Into<String>, wasm: impl Into<PathBuf>) -> Self {
        TransformSpec {
            name: name.into(),
            wasm: wasm.into(),
            config: BTreeMap::new(),
            timeout: DEFAULT_TIMEOUT,
            memory: DEFAULT_MEMORY,
        }
    }

    /// From a pipeline file's `transforms:` entry. The error names the key at fault.
    pub fn from_config(c: &TransformConfig) -> Result<Self, String> {
        let timeout = match c.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) if t.is_zero() => return Err("timeout: must be more than 0".into()),
            Some(t) => t,
        };
        let memory = match &c.memory {
            None => DEFAULT_MEMORY,
            Some(text) => parse_size(text).map_err(|e| format!("memory: {e}"))?,
        };
        Ok(TransformSpec {
            name: c.name.clone(),
            wasm: c.wasm.clone(),
            config: c.config.clone(),
            timeout,
            memory,
        })
    }
}

/// A size such as `64MiB`, `128MB`, `1GiB`, `512KiB` or `1048576` (bytes). Binary units
/// (KiB, MiB, GiB) are powers of 1024, decimal ones (KB, MB, GB) powers of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a size: use e.g. 64MiB, 128MB or 1GiB");
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(multiplier).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(format!("`{text}`: must be more than 0"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("128MB"), Ok(128_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2gib"), Ok(2 << 30));
        for bad in [
            "",
            "MiB",
            "64 MiBs",
            "-1MiB",
            "1.5GiB",
            "0MiB",
            "99999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_config_applies_defaults_and_names_bad_keys() {
        let mut c = TransformConfig::new("redact", "redact.wasm");
        c.config.insert("fields".into(), "email".into());
        let spec = TransformSpec::from_config(&c).unwrap();
        assert_eq!(spec.timeout, DEFAULT_TIMEOUT);
        assert_eq!(spec.memory, DEFAULT_MEMORY);
        assert_eq!(spec.config["fields"], "email");

        c.memory = Some("128MB".into());
        c.timeout = Some(Duration::from_millis(5));
        let spec = TransformSpec::from_config(&c).unwrap();
        assert_eq!(
            (spec.memory, spec.timeout),
            (128_000_000, Duration::from_millis(5))
        );

        c.memory = Some("lots".into());
        let err = TransformSpec::from_config(&c).unwrap_err();
        assert!(err.starts_with("memory: `lots` is not a size"), "{err}");
    }
}
