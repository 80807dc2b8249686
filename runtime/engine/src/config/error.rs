//! Errors that name the file, the line, the column and the key.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::tree::{child, Pos};

/// A problem with a pipeline file. Printed as
/// `pipelines/x.yaml:12:5: sinks.notify.url: environment variable WEBHOOK_URL is not set (…)`,
/// or `pipelines/x.yaml: cannot read: …` when there is no place in the file to point at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The pipeline file, as it was given.
    pub file: PathBuf,
    /// 1-based line of the offending key or value; 0 when the error is about no one place.
    pub line: usize,
    /// 1-based column; 0 when `line` is 0.
    pub column: usize,
    /// Dotted path of the key, e.g. `sinks.notify.url` or `source.tables[1]`; `""` for the
    /// file as a whole.
    pub key: String,
    /// What is wrong, in words meant for the person editing the file. Never contains a value
    /// that came from the environment.
    pub message: String,
}

impl ConfigError {
    /// An error about the file as a whole, with no place to point at.
    pub fn unlocated(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Where a key and its value were written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loc {
    /// The key, for map entries; `None` for list items.
    pub key: Option<Pos>,
    pub value: Pos,
}

/// A string value that `${…}` interpolation changed.
#[derive(Clone)]
pub(crate) struct Interpolated {
    pub path: String,
    /// The value after interpolation: may hold a secret.
    pub value: String,
    /// The scalar as written in the file.
    pub raw: String,
}

/// Never the value: it may be a secret.
impl fmt::Debug for Interpolated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interpolated")
            .field("path", &self.path)
            .field("value", &"***")
            .field("raw", &self.raw)
            .finish()
    }
}

/// Turns dotted paths into places in the file, and keeps secrets out of messages.
#[derive(Debug, Default)]
pub(crate) struct Locator {
    pub file: PathBuf,
    pub index: HashMap<String, Loc>,
    pub interpolated: Vec<Interpolated>,
}

impl Locator {
    pub fn new(file: &Path) -> Self {
        Locator {
            file: file.to_path_buf(),
            ..Locator::default()
        }
    }

    /// Where `path` (or, failing that, its nearest written ancestor) is in the file.
    pub fn locate(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(loc) = self.index.get(p) {
                return Some(loc.key.unwrap_or(loc.value));
            }
            if p.is_empty() {
                return None;
            }
            p = parent(p);
        }
    }

    /// Whether the value at `path` came out of `${…}`.
    pub fn is_interpolated(&self, path: &str) -> bool {
        self.interpolated.iter().any(|i| i.path == path)
    }

    /// A located error at `path`.
    pub fn error(&self, path: &str, message: impl fmt::Display) -> ConfigError {
        let (line, column) = match self.locate(path) {
            Some(pos) => (pos.line, pos.column),
            None => (0, 0),
        };
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: path.to_string(),
            message: self.sanitize(path, message.to_string()),
        }
    }

    /// A located error from deserializing the value at `prefix`.
    pub fn serde_error(
        &self,
        prefix: &str,
        err: serde_path_to_error::Error<serde_json::Error>,
    ) -> ConfigError {
        let rel = err.path().to_string();
        let path = join(prefix, if rel == "." { "" } else { &rel });
        let message = err.into_inner().to_string();
        // The path of an unknown key ends with the key; that of a missing key does not.
        let under = |name: &str| {
            if path == name || path.ends_with(&format!(".{name}")) {
                path.clone()
            } else {
                child(&path, name)
            }
        };
        if let Some(name) = quoted_after(&message, "unknown field `") {
            let rest = &message["unknown field `".len() + name.len() + 1..];
            let rest = rest.trim_start_matches(',').trim();
            return self.error(&under(name), format!("unknown key `{name}`; {rest}"));
        }
        if let Some(name) = quoted_after(&message, "missing field `") {
            return self.error(&under(name), "this key is required");
        }
        self.error(&path, message)
    }

    /// Replaces any interpolated value under `path` with the text written in the file, so that
    /// a message quoting a value never shows what came from the environment.
    fn sanitize(&self, path: &str, mut message: String) -> String {
        let mut found: Vec<&Interpolated> = self
            .interpolated
            .iter()
            .filter(|i| !i.value.is_empty() && is_within(&i.path, path))
            .collect();
        // Longest first, so that a value containing another is replaced whole.
        found.sort_by_key(|i| std::cmp::Reverse(i.value.len()));
        for i in found {
            message = message
                .replace(&format!("{:?}", i.value), &format!("{:?}", i.raw))
                .replace(&format!("`{}`", i.value), &format!("`{}`", i.raw));
            // Very short values cannot give much away and would match all over the message.
            if i.value.len() >= 3 && message.contains(&i.value) {
                message = message.replace(&i.value, &i.raw);
            }
        }
        message
    }
}

/// `prefix` + a path relative to it, as `serde_path_to_error` prints paths (`a.b[1].c`).
pub(crate) fn join(prefix: &str, rel: &str) -> String {
    if rel.is_empty() {
        prefix.to_string()
    } else if prefix.is_empty() {
        rel.to_string()
    } else if rel.starts_with('[') {
        format!("{prefix}{rel}")
    } else {
        format!("{prefix}.{rel}")
    }
}

/// `a.b[1]` → `a.b` → `a` → ``.
fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// Whether `path` is `ancestor` or lies under it.
fn is_within(path: &str, ancestor: &str) -> bool {
    ancestor.is_empty()
        || path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// The text between `start` (which ends in a backtick) and the next backtick.
fn quoted_after<'a>(message: &'a str, start: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(start)?;
    rest.find('`').map(|end| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_place_key_and_message() {
        let e = ConfigError {
            file: "pipelines/x.yaml".into(),
            line: 12,
            column: 5,
            key: "sinks.notify.url".into(),
            message: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "pipelines/x.yaml:12:5: sinks.notify.url: bad"
        );
        let e = ConfigError::unlocated(Path::new("p.yaml"), "", "cannot read: gone");
        assert_eq!(e.to_string(), "p.yaml: cannot read: gone");
    }

    #[test]
    fn paths() {
        assert_eq!(parent("a.b[1]"), "a.b");
        assert_eq!(parent("a.b"), "a");
        assert_eq!(parent("a"), "");
        assert_eq!(join("sinks.x", "[0].wasm"), "sinks.x[0].wasm");
        assert_eq!(join("sinks.x", "url"), "sinks.x.url");
        assert_eq!(join("", "url"), "url");
        assert!(is_within("a.b[0]", "a.b"));
        assert!(!is_within("a.bc", "a.b"));
    }
}
