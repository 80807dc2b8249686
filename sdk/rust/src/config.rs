//! The transform's `config:` map from the pipeline file, as [`Transform::init`] receives it.
//!
//! [`Transform::init`]: crate::Transform::init

use std::str::FromStr;

/// The `config:` map of a transform: string keys to string values, in file order.
///
/// Values are strings whatever YAML type they had; parse them with [`Config::parse`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// A config from key/value pairs (what the host passes; also handy in unit tests).
    pub fn new(entries: Vec<(String, String)>) -> Config {
        Config { entries }
    }

    /// The value of `key`; the last one wins if the key is repeated.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or `default` when it is absent.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// The value of `key`, or an error message saying it is required (for `init`'s `Err`).
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("config key `{key}` is required"))
    }

    /// The value of `key` as a comma-separated list, items trimmed, empty items skipped.
    /// Absent key: an empty list.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The value of `key` parsed as `T`: `Ok(None)` when absent, an error message naming the
    /// key and the value when it does not parse.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        self.get(key)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| format!("config key `{key}`: cannot parse {v:?}: {e}"))
            })
            .transpose()
    }

    /// The value of `key` as a flag: `1`, `true`, `yes`, `on` (any case) are true.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
    }

    /// All entries, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether the config is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Config {
        Config::new(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let c: Config = [
            ("fields", " email, ,phone "),
            ("n", "3"),
            ("n", "4"),
            ("on", "TRUE"),
        ]
        .into_iter()
        .collect();
        assert_eq!(c.list("fields"), ["email", "phone"]);
        assert_eq!(c.list("absent"), Vec::<String>::new());
        assert_eq!(c.get("n"), Some("4"));
        assert_eq!(c.parse::<u32>("n"), Ok(Some(4)));
        assert!(c.parse::<u32>("fields").unwrap_err().contains("`fields`"));
        assert_eq!(c.parse::<u32>("absent"), Ok(None));
        assert!(c.flag("on") && !c.flag("absent"));
        assert_eq!(c.require("x").unwrap_err(), "config key `x` is required");
        assert_eq!(c.get_or("x", "d"), "d");
    }
}
