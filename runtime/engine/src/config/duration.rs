//! Durations in pipeline files: human strings such as `50ms`, `30s`, `15m`, `1h 30m`.
//!
//! Use as `#[serde(with = "sluice_runtime::config::duration")]` on a `Duration` field.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*value).to_string())
}

/// Parse a duration, with an error that says what a duration looks like.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write it like 50ms, 30s, 15m or 1h")
    })
}

/// For `Option<Duration>` fields.
pub mod option {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => super::serialize(v, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_human_durations() {
        assert_eq!(super::parse("50ms").unwrap().as_millis(), 50);
        assert_eq!(super::parse("15m").unwrap().as_secs(), 900);
        assert!(super::parse("fast").unwrap_err().contains("50ms"));
    }
}
