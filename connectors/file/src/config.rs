//! The `file` sink's keys in a pipeline file.
//!
//! ```yaml
//! sinks:
//!   archive:
//!     type: file
//!     path: out/orders.jsonl     # `-` writes to standard output
//!     fsync: false
//! ```

use std::path::PathBuf;

use serde::Deserialize;
use sluice_runtime::registry::{FieldError, SinkConfig};
use sluice_runtime::Sink;

use crate::FileSink;

/// Configuration of a file sink.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FileConfig {
    /// The file every envelope is appended to, one JSON object per line (JSON Lines).
    /// A relative path is relative to the current directory; missing parent directories
    /// are created. The file is never truncated: a restart appends. `-` writes to
    /// standard output instead.
    pub path: PathBuf,

    /// `true`: after each batch is written, wait until it is on disk (fsync) before the
    /// batch counts as delivered, so a power loss cannot lose a committed offset's events.
    /// `false` (default): the batch is handed to the operating system, which survives a
    /// crash of sluice but not of the machine. Not allowed with `path: -`.
    #[serde(default)]
    pub fsync: bool,
}

impl SinkConfig for FileConfig {
    fn build(self) -> Result<Box<dyn Sink>, FieldError> {
        FileSink::new(self)
            .map(|s| Box::new(s) as Box<dyn Sink>)
            .map_err(|e| FieldError::new(e.field(), &e))
    }
}

impl FileConfig {
    /// A configuration for `path` with every other key at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileConfig {
            path: path.into(),
            fsync: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_path_is_required() {
        let c: FileConfig = serde_json::from_value(json!({"path": "out/x.jsonl"})).unwrap();
        assert_eq!(c, FileConfig::new("out/x.jsonl"));
        assert!(!c.fsync);
    }

    #[test]
    fn every_key_parses() {
        let c: FileConfig = serde_json::from_value(json!({"path": "-", "fsync": true})).unwrap();
        assert_eq!(c.path, PathBuf::from("-"));
        assert!(c.fsync);
    }

    #[test]
    fn unknown_and_missing_keys_are_errors() {
        let e =
            serde_json::from_value::<FileConfig>(json!({"path": "x", "append": true})).unwrap_err();
        assert!(e.to_string().contains("append"), "{e}");
        let e = serde_json::from_value::<FileConfig>(json!({})).unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
    }
}
