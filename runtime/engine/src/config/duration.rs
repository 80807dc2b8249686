//! Durations in pipeline files: human strings such as `50ms`, `30s`, `15m`, `1h 30m`.
//!
//! Use as `#[serde(with = "sluice_runtime::config::duration")]` on a `Duration` field.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// Accepts a string; a bare number gets an error that asks for a unit.
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a duration such as 50ms, 30s, 15m or 1h")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "`{v}` has no unit; write it like {v}ms or {v}s"
        )))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "`{v}` is not a duration; write it like 50ms, 30s, 15m or 1h"
        )))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "`{v}` is not a duration; write it like 1500ms or 1m 30s"
        )))
    }
}

pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*value).to_string())
}

/// Parse a duration, with an error that says what a duration looks like.
///
/// The error quotes `text` whole and never a part of it: a value that came from `${VAR}`
/// is replaced whole by what the file says, and a part of it would escape that.
pub fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    humantime::parse_duration(trimmed).map_err(|e| {
        let at = |offset: usize| trimmed.get(..offset).map_or(offset, |s| s.chars().count()) + 1;
        let why = match e {
            humantime::DurationError::InvalidCharacter(i) => {
                format!("character {} is not a letter, digit or space", at(i))
            }
            humantime::DurationError::NumberExpected(i) => {
                format!("a number is expected at character {}", at(i))
            }
            humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
                "a number needs a unit".to_string()
            }
            humantime::DurationError::UnknownUnit { start, .. } => format!(
                "the unit at character {} is not one of ns, us, ms, s, m, h, d, w \
                 (or sec, min, hours, days, weeks)",
                at(start)
            ),
            humantime::DurationError::NumberOverflow => "it is too long or too precise".into(),
            humantime::DurationError::Empty => "it is empty".into(),
        };
        format!("`{text}` is not a duration ({why}); write it like 50ms, 30s, 15m or 1h")
    })
}

/// For `Option<Duration>` fields.
pub mod option {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct Inner(Duration);
        impl<'de> Deserialize<'de> for Inner {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                super::deserialize(d).map(Inner)
            }
        }
        Ok(Option::<Inner>::deserialize(d)?.map(|s| s.0))
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

    #[test]
    fn errors_quote_the_text_whole_and_never_a_part() {
        let e = |t: &str| {
            super::parse(t)
                .unwrap_err()
                .replace(&format!("`{t}`"), "<text>")
        };
        for (text, part) in [
            ("5hunter2", "hunter"),
            ("12345678", "12345678"),
            ("5s hunter", "hunter"),
            ("5s-hunter", "hunter"),
        ] {
            let message = e(text);
            assert!(!message.contains(part), "{message}");
            assert!(
                message.starts_with("<text> is not a duration ("),
                "{message}"
            );
        }
        assert!(
            e("5 parsecs").contains("unit at character 3"),
            "{}",
            e("5 parsecs")
        );
        assert!(e("5").contains("needs a unit"), "{}", e("5"));
        assert!(e("").contains("empty"), "{}", e(""));
        assert!(
            e("ms").contains("number is expected at character 1"),
            "{}",
            e("ms")
        );
    }

    #[test]
    fn bare_numbers_ask_for_a_unit() {
        #[derive(Debug, serde::Deserialize)]
        struct T {
            #[serde(with = "super")]
            #[allow(dead_code)]
            d: std::time::Duration,
            #[serde(default, with = "super::option")]
            o: Option<std::time::Duration>,
        }
        let e = serde_json::from_str::<T>(r#"{"d": 50}"#).unwrap_err();
        assert!(e.to_string().contains("50ms"), "{e}");
        let t: T = serde_json::from_str(r#"{"d": "1s", "o": "2s"}"#).unwrap();
        assert_eq!(t.o.unwrap().as_secs(), 2);
        let t: T = serde_json::from_str(r#"{"d": "1s", "o": null}"#).unwrap();
        assert!(t.o.is_none());
    }
}
