//! Dynamic mapping as Elasticsearch does it by default: the first value of a field fixes
//! its type, and a later value the type cannot take fails that document (and only it).
//!
//! JSON integers map to `long`, other numbers to `float`, booleans to `boolean`, objects
//! to `object` (their fields mapped the same way), strings to `date` when they read as a
//! date (`date_detection` is on by default) and to `text` otherwise. Arrays map their
//! elements; `null` maps nothing. Values are coerced as Elasticsearch coerces them: a
//! number or numeric string into `long`/`float`, `"true"`/`"false"` into `boolean`, any
//! scalar into `text`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// The type a field was mapped to.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldType {
    /// Integers (JSON integers map here).
    Long,
    /// Floating point (other JSON numbers map here).
    Float,
    /// `true`/`false`.
    Boolean,
    /// Strings that are not dates.
    Text,
    /// Strings that read as `strict_date_optional_time`.
    Date,
    /// A JSON object, with its own fields.
    Object(Mapping),
}

/// Field name → type, for one object level.
pub type Mapping = BTreeMap<String, FieldType>;

impl FieldType {
    /// The type's name in a mapping.
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::Long => "long",
            FieldType::Float => "float",
            FieldType::Boolean => "boolean",
            FieldType::Text => "text",
            FieldType::Date => "date",
            FieldType::Object(_) => "object",
        }
    }
}

/// A document that does not fit the mapping: Elasticsearch's error object.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseFailure(pub Value);

/// Map `source` into `mapping`: new fields are added, existing ones checked. On failure
/// `mapping` is unchanged (the document is not indexed, so it maps nothing).
pub fn apply(
    mapping: &mut Mapping,
    source: &Map<String, Value>,
    id: &str,
) -> Result<(), ParseFailure> {
    let mut updated = mapping.clone();
    object(&mut updated, source, "", id)?;
    *mapping = updated;
    Ok(())
}

fn object(
    fields: &mut Mapping,
    source: &Map<String, Value>,
    prefix: &str,
    id: &str,
) -> Result<(), ParseFailure> {
    for (name, value) in source {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        field(fields, name, &path, value, id)?;
    }
    Ok(())
}

fn field(
    fields: &mut Mapping,
    name: &str,
    path: &str,
    value: &Value,
    id: &str,
) -> Result<(), ParseFailure> {
    match value {
        Value::Null => Ok(()),
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| field(fields, name, path, item, id)),
        _ => {
            if !fields.contains_key(name) {
                fields.insert(name.to_string(), infer(value));
            }
            let Some(mapped) = fields.get_mut(name) else {
                return Ok(());
            };
            accept(mapped, path, value, id)
        }
    }
}

/// The type dynamic mapping gives a first value.
fn infer(value: &Value) -> FieldType {
    match value {
        Value::Bool(_) => FieldType::Boolean,
        Value::Number(n) if n.is_i64() || n.is_u64() => FieldType::Long,
        Value::Number(_) => FieldType::Float,
        Value::String(s) if is_date(s) => FieldType::Date,
        Value::Object(_) => FieldType::Object(Mapping::new()),
        _ => FieldType::Text,
    }
}

fn accept(mapped: &mut FieldType, path: &str, value: &Value, id: &str) -> Result<(), ParseFailure> {
    let numeric = |v: &Value| match v {
        Value::Number(_) => true,
        Value::String(s) => s.trim().parse::<f64>().is_ok(),
        _ => false,
    };
    let fits = match (&mut *mapped, value) {
        (FieldType::Object(fields), Value::Object(inner)) => {
            return object(fields, inner, path, id)
        }
        (FieldType::Object(_), _) => {
            return Err(failure(
                "document_parsing_exception",
                format!(
                    "[1:2] object mapping for [{path}] tried to parse field [{path}] as object, \
                     but found a concrete value"
                ),
                None,
            ))
        }
        (_, Value::Object(_)) => false,
        (FieldType::Long | FieldType::Float, v) => numeric(v),
        (FieldType::Boolean, Value::Bool(_)) => true,
        (FieldType::Boolean, Value::String(s)) => matches!(s.as_str(), "true" | "false" | ""),
        (FieldType::Boolean, _) => false,
        (FieldType::Text, _) => true,
        (FieldType::Date, Value::String(s)) => is_date(s),
        (FieldType::Date, Value::Number(_)) => true,
        (FieldType::Date, _) => false,
    };
    if fits {
        return Ok(());
    }
    let preview = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let cause = match mapped {
        FieldType::Long | FieldType::Float => Some(json!({
            "type": "illegal_argument_exception",
            "reason": format!("For input string: \"{preview}\""),
        })),
        _ => None,
    };
    Err(failure(
        "document_parsing_exception",
        format!(
            "[1:2] failed to parse field [{path}] of type [{}] in document with id '{id}'. \
             Preview of field's value: '{preview}'",
            mapped.name()
        ),
        cause,
    ))
}

fn failure(kind: &str, reason: String, cause: Option<Value>) -> ParseFailure {
    let mut error = json!({
        "root_cause": [{"type": kind, "reason": reason}],
        "type": kind,
        "reason": reason,
    });
    if let Some(cause) = cause {
        error["caused_by"] = cause;
    }
    ParseFailure(error)
}

/// `strict_date_optional_time`, as date detection reads strings: `yyyy-MM-dd`, optionally
/// `THH:mm[:ss[.fraction]]` and `Z` or an offset.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if !(b.len() >= 10
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10))
    {
        return false;
    }
    let rest = &s[10..];
    if rest.is_empty() {
        return true;
    }
    let Some(time) = rest.strip_prefix('T') else {
        return false;
    };
    let time = time
        .strip_suffix('Z')
        .or_else(|| {
            let cut = time.rfind(['+', '-'])?;
            let offset = &time[cut + 1..];
            (offset.len() == 5 && offset.as_bytes()[2] == b':').then(|| &time[..cut])
        })
        .unwrap_or(time);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let parts: Vec<&str> = hms.split(':').collect();
    (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|d| d.is_ascii_digit()))
        && !fraction.is_empty()
        && fraction.bytes().all(|d| d.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn first_values_fix_types_and_later_ones_must_fit() {
        let mut m = Mapping::new();
        apply(
            &mut m,
            &map(
                json!({"n": 1, "x": 1.5, "ok": true, "s": "hi", "at": "2026-11-22T06:00:00.123456Z",
                        "meta": {"k": 1}, "tags": ["a"], "none": null}),
            ),
            "1",
        )
        .unwrap();
        assert_eq!(m["n"], FieldType::Long);
        assert_eq!(m["x"], FieldType::Float);
        assert_eq!(m["ok"], FieldType::Boolean);
        assert_eq!(m["s"], FieldType::Text);
        assert_eq!(m["at"], FieldType::Date);
        assert_eq!(m["tags"], FieldType::Text);
        assert!(!m.contains_key("none"));
        let FieldType::Object(meta) = &m["meta"] else {
            panic!()
        };
        assert_eq!(meta["k"], FieldType::Long);

        // Coercion: numeric strings into numbers, any scalar into text.
        apply(
            &mut m,
            &map(json!({"n": "42", "x": 2, "s": 5, "ok": "false"})),
            "2",
        )
        .unwrap();
        let before = m.clone();
        let e = apply(&mut m, &map(json!({"n": "abc", "new": 1})), "3").unwrap_err();
        assert_eq!(e.0["type"], "document_parsing_exception");
        assert!(e.0["reason"]
            .as_str()
            .unwrap()
            .contains("[n] of type [long]"));
        assert_eq!(m, before, "a failed document maps nothing");
        assert!(apply(&mut m, &map(json!({"meta": "flat"})), "4").is_err());
        assert!(apply(&mut m, &map(json!({"n": {"deep": 1}})), "5").is_err());
        assert!(apply(&mut m, &map(json!({"at": "yesterday"})), "6").is_err());
        assert!(apply(&mut m, &map(json!({"meta": {"k": "x"}})), "7").is_err());
    }

    #[test]
    fn dates_read_like_strict_date_optional_time() {
        for d in [
            "2026-11-22",
            "2026-11-22T06:00",
            "2026-11-22T06:00:00Z",
            "2026-11-22T06:00:00.5+01:00",
        ] {
            assert!(is_date(d), "{d}");
        }
        for s in [
            "19.90",
            "2026-11",
            "2026-11-22 06:00",
            "paid",
            "2026-11-22T6:00",
        ] {
            assert!(!is_date(s), "{s}");
        }
    }
}
