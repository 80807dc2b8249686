//! `redact_pii`: masks the columns named in config `fields` wherever a row image carries them.
//!
//! Config:
//! - `fields` (required): comma-separated column names, e.g. `"email,phone"`.
//! - `mask` (optional): `partial` (default) keeps the first character of a text value and
//!   replaces the rest with `***` (`"alice@example.com"` → `"a***"`, `""` stays `""`);
//!   `full` replaces the whole value with `"***"`.
//!
//! Masked columns in `before` and `after` become text whatever their type was (a non-text
//! value becomes `"***"` in both modes, since its first character would say too much about
//! a number). `NULL` stays `NULL`: there is nothing to hide. `key` is left alone: sinks
//! address documents by it, so keep PII out of primary keys.

use sluice_transform::{Column, Config, Event, Outcome, Transform, Value};

struct RedactPii {
    fields: Vec<String>,
    partial: bool,
}

impl Transform for RedactPii {
    fn init(config: Config) -> Result<Self, String> {
        let fields = config.list("fields");
        if fields.is_empty() {
            return Err(
                "redact_pii: config key `fields` is required, e.g. fields: \"email,phone\"".into(),
            );
        }
        let partial = match config.get_or("mask", "partial") {
            "partial" => true,
            "full" => false,
            other => {
                return Err(format!(
                    "redact_pii: config key `mask` is {other:?}; use `partial` or `full`"
                ))
            }
        };
        Ok(RedactPii { fields, partial })
    }

    fn transform(&mut self, mut event: Event) -> Outcome {
        let mut masked = false;
        for row in [event.before.as_mut(), event.after.as_mut()]
            .into_iter()
            .flatten()
        {
            masked |= self.mask_row(row);
        }
        if masked {
            Outcome::one(event)
        } else {
            // Nothing to hide (no such column, or only NULLs): pass the event on as it came.
            Outcome::keep()
        }
    }
}

impl RedactPii {
    /// Mask the configured columns of `row`; whether any value changed.
    fn mask_row(&self, row: &mut [Column]) -> bool {
        let mut masked = false;
        for column in row
            .iter_mut()
            .filter(|c| self.fields.iter().any(|f| c.name == *f))
        {
            let value = self.mask(&column.value);
            masked |= value != column.value;
            column.value = value;
        }
        masked
    }

    fn mask(&self, value: &Value) -> Value {
        match value {
            Value::Null => Value::Null,
            Value::Text(s) if self.partial => match s.chars().next() {
                Some(first) => Value::Text(format!("{first}***")),
                None => Value::Text(String::new()),
            },
            _ => Value::text("***"),
        }
    }
}

sluice_transform::export!(RedactPii);

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(mask: &str) -> RedactPii {
        RedactPii::init(
            [("fields", "email, phone"), ("mask", mask)]
                .into_iter()
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn masks_configured_fields_only() {
        let r = redact("partial");
        assert_eq!(
            r.mask(&Value::text("alice@example.com")),
            Value::text("a***")
        );
        assert_eq!(r.mask(&Value::text("")), Value::text(""));
        assert_eq!(r.mask(&Value::Int(5551234)), Value::text("***"));
        assert_eq!(r.mask(&Value::Null), Value::Null);
        assert_eq!(
            redact("full").mask(&Value::text("alice")),
            Value::text("***")
        );
        let mut row = vec![
            Column {
                name: "id".into(),
                value: Value::Int(1),
            },
            Column {
                name: "email".into(),
                value: Value::text("bob@x"),
            },
        ];
        assert!(r.mask_row(&mut row));
        assert!(!r.mask_row(&mut row[..1]));
        assert_eq!(row[0].value, Value::Int(1));
        assert_eq!(row[1].value, Value::text("b***"));
    }

    #[test]
    fn config_errors_name_the_key() {
        assert!(RedactPii::init(Config::default())
            .err()
            .unwrap()
            .contains("`fields`"));
        assert!(
            RedactPii::init([("fields", "a"), ("mask", "x")].into_iter().collect())
                .err()
                .unwrap()
                .contains("`mask`")
        );
    }
}
