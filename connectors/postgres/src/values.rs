//! Postgres text-format values → [`Value`], by the conversion rules of the spec.
//!
//! The replication session runs with `DateStyle=ISO, YMD`, `TimeZone=UTC`,
//! `extra_float_digits=3`, `bytea_output=hex` and `IntervalStyle=iso_8601`, so the text
//! forms parsed here are the ones those settings produce.
//!
//! | kind                  | becomes                                                       |
//! |-----------------------|---------------------------------------------------------------|
//! | int2/int4/int8        | `Int`                                                         |
//! | numeric               | `Text`, exactly as sent (also `NaN`, `Infinity`, `-Infinity`) |
//! | float4/float8         | `Float`; `NaN`, `Infinity`, `-Infinity` as `Text`              |
//! | bool                  | `Bool`                                                        |
//! | json/jsonb            | `Json` (validated)                                            |
//! | bytea                 | `Bytes` (decoded)                                             |
//! | date/time/timestamp…  | ISO 8601 `Text` (see [`convert`])                             |
//! | arrays                | `Array`, nested per dimension (see [`crate::array`])          |
//! | everything else       | `Text` of the text form                                       |

use std::fmt::Write as _;

use serde_json::value::RawValue;
use sluice_runtime::Value;

use crate::pgoutput::TupleValue;
use crate::types::Kind;

/// A value whose text form does not parse as its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("invalid {kind} value {text:?}: {reason}")]
    Invalid {
        /// The type, e.g. `timestamptz` or `integer[]`.
        kind: String,
        /// The offending text, cut to about 60 characters.
        text: String,
        reason: &'static str,
    },
    #[error("binary format not supported ({kind} column)")]
    BinaryNotSupported { kind: String },
}

impl ValueError {
    pub(crate) fn invalid(kind: &Kind, text: &[u8], reason: &'static str) -> Self {
        ValueError::Invalid {
            kind: kind.to_string(),
            text: snippet(text),
            reason,
        }
    }
}

const SNIPPET_CHARS: usize = 60;

fn snippet(text: &[u8]) -> String {
    // 60 characters fit in 240 bytes; never look at more of a huge value.
    let s = String::from_utf8_lossy(&text[..text.len().min(SNIPPET_CHARS * 4)]);
    match s.char_indices().nth(SNIPPET_CHARS) {
        None if text.len() <= SNIPPET_CHARS * 4 => s.into_owned(),
        None => format!("{s}…"),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

/// Convert one column value. `Ok(None)` is an unchanged TOASTed value, which Postgres
/// did not send; binary values are an error (the session never asks for them).
pub fn convert_tuple_value(kind: &Kind, value: &TupleValue) -> Result<Option<Value>, ValueError> {
    match value {
        TupleValue::Null => Ok(Some(Value::Null)),
        TupleValue::UnchangedToast => Ok(None),
        TupleValue::Text(text) => convert(kind, text).map(Some),
        TupleValue::Binary(_) => Err(ValueError::BinaryNotSupported {
            kind: kind.to_string(),
        }),
    }
}

/// Convert the text form of a value of `kind`.
///
/// Dates and times become ISO 8601 text: `2026-11-22 06:00:00.123456+00` →
/// `2026-11-22T06:00:00.123456Z`, other offsets as `+05:30`, timetz offsets always as
/// `±HH:MM`, BC years as signed astronomical years (`0044-03-15 BC` → `-0043-03-15`),
/// `infinity` and `-infinity` unchanged.
pub fn convert(kind: &Kind, text: &[u8]) -> Result<Value, ValueError> {
    let result = match kind {
        Kind::Array { element, delimiter } => {
            return crate::array::parse(element, *delimiter, text)
        }
        Kind::Bytea => bytea(text).map(Value::Bytes),
        _ => match std::str::from_utf8(text) {
            Ok(s) => convert_str(kind, s),
            Err(_) => Err("not valid UTF-8"),
        },
    };
    result.map_err(|reason| ValueError::invalid(kind, text, reason))
}

fn convert_str(kind: &Kind, s: &str) -> Result<Value, &'static str> {
    match kind {
        Kind::Bool => match s {
            "t" => Ok(Value::Bool(true)),
            "f" => Ok(Value::Bool(false)),
            _ => Err("expected 't' or 'f'"),
        },
        Kind::Int => s
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| "not a 64-bit integer"),
        Kind::Float => float(s),
        Kind::Numeric => numeric(s).map(|()| Value::Text(s.to_owned())),
        Kind::Text | Kind::Other => Ok(Value::Text(s.to_owned())),
        Kind::Json => RawValue::from_string(s.to_owned())
            .map(Value::Json)
            .map_err(|_| "not valid JSON"),
        Kind::Date => date(s).map(Value::Text),
        Kind::Time => {
            clock(s)?;
            Ok(Value::Text(s.to_owned()))
        }
        Kind::TimeTz => time_tz(s).map(Value::Text),
        Kind::Timestamp => timestamp(s, false).map(Value::Text),
        Kind::TimestampTz => timestamp(s, true).map(Value::Text),
        // Handled by `convert`; unreachable through it, but harmless.
        Kind::Bytea => bytea(s.as_bytes()).map(Value::Bytes),
        Kind::Array { .. } => Err("array given to a scalar conversion"),
    }
}

fn float(s: &str) -> Result<Value, &'static str> {
    match s {
        "NaN" | "Infinity" | "-Infinity" => Ok(Value::Text(s.to_owned())),
        _ => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => Err("not a floating-point number"),
        },
    }
}

/// `[+-]digits[.digits][e[+-]digits]`, `.digits`, or a special value.
fn numeric(s: &str) -> Result<(), &'static str> {
    const ERR: &str = "not a numeric value";
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return Ok(());
    }
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let int_digits = digits(&b[i..]);
    i += int_digits;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = digits(&b[i..]);
        i += frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return Err(ERR);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        i += usize::from(matches!(b.get(i), Some(b'+' | b'-')));
        let n = digits(&b[i..]);
        if n == 0 {
            return Err(ERR);
        }
        i += n;
    }
    if i == b.len() {
        Ok(())
    } else {
        Err(ERR)
    }
}

/// The number of leading ASCII digits.
fn digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `\x0a0b…` (hex format); the legacy escape format is accepted too.
fn bytea(text: &[u8]) -> Result<Vec<u8>, &'static str> {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err("odd number of hex digits");
        }
        return hex
            .chunks_exact(2)
            .map(|p| match (hex_digit(p[0]), hex_digit(p[1])) {
                (Some(h), Some(l)) => Ok(h << 4 | l),
                _ => Err("invalid hex digit"),
            })
            .collect();
    }
    // Escape format: `\\` is a backslash, `\ooo` an octal byte, anything else literal.
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\\' => match text.get(i + 1..i + 4) {
                _ if text.get(i + 1) == Some(&b'\\') => {
                    out.push(b'\\');
                    i += 2;
                }
                Some(&[a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7']) => {
                    out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                    i += 4;
                }
                _ => return Err("invalid escape"),
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn is_infinity(s: &str) -> bool {
    s == "infinity" || s == "-infinity"
}

/// Split off a trailing ` BC`.
fn strip_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (s, false),
    }
}

fn date(s: &str) -> Result<String, &'static str> {
    if is_infinity(s) {
        return Ok(s.to_owned());
    }
    let (body, bc) = strip_bc(s);
    let mut out = String::with_capacity(s.len() + 1);
    push_date(&mut out, body, bc)?;
    Ok(out)
}

/// `YYYY-MM-DD` (four or more year digits); a BC year `Y` is written as `1 - Y`, signed.
fn push_date(out: &mut String, d: &str, bc: bool) -> Result<(), &'static str> {
    const ERR: &str = "expected a YYYY-MM-DD date";
    let b = d.as_bytes();
    if b.len() < 10 {
        return Err(ERR);
    }
    let (year, md) = d.split_at(b.len() - 6);
    let m = md.as_bytes();
    let md_ok = m[0] == b'-' && m[3] == b'-' && [1, 2, 4, 5].iter().all(|&i| m[i].is_ascii_digit());
    if !md_ok || year.is_empty() || digits(year.as_bytes()) != year.len() {
        return Err(ERR);
    }
    if bc {
        if year.len() > 9 {
            return Err("BC year out of range");
        }
        // Nine digits at most: this parse cannot fail.
        let y: u32 = year.parse().map_err(|_| ERR)?;
        match y {
            0 => return Err("year 0 BC does not exist"),
            1 => out.push_str("0000"),
            _ => {
                let _ = write!(out, "-{:04}", y - 1);
            }
        }
    } else {
        out.push_str(year);
    }
    out.push_str(md);
    Ok(())
}

/// `HH:MM:SS[.ffffff]`.
fn clock(s: &str) -> Result<(), &'static str> {
    let b = s.as_bytes();
    let ok = b.len() >= 8
        && b[2] == b':'
        && b[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
        && (b.len() == 8 || (b[8] == b'.' && b.len() > 9 && digits(&b[9..]) == b.len() - 9));
    if ok {
        Ok(())
    } else {
        Err("expected an HH:MM:SS[.ffffff] time")
    }
}

/// Split `HH:MM:SS[.f]±HH[:MM[:SS]]` at the offset sign.
fn split_offset(s: &str) -> Result<(&str, &str), &'static str> {
    match s.find(['+', '-']) {
        Some(i) => Ok(s.split_at(i)),
        None => Err("missing UTC offset"),
    }
}

/// Append a UTC offset as ISO 8601: `+05` → `+05:00`, `+05:30` unchanged, and, when
/// `utc_as_z`, `+00` → `Z`. Offsets with seconds (historical zones) are kept as sent.
fn push_offset(out: &mut String, off: &str, utc_as_z: bool) -> Result<(), &'static str> {
    let b = off.as_bytes();
    // ±HH, ±HH:MM or ±HH:MM:SS
    let ok = matches!(b.len(), 3 | 6 | 9)
        && b.iter().enumerate().skip(1).all(|(i, c)| {
            if i % 3 == 0 {
                *c == b':'
            } else {
                c.is_ascii_digit()
            }
        });
    if !ok {
        return Err("invalid UTC offset");
    }
    if utc_as_z && matches!(off, "+00" | "+00:00" | "-00" | "-00:00") {
        out.push('Z');
    } else {
        out.push_str(off);
        if b.len() == 3 {
            out.push_str(":00");
        }
    }
    Ok(())
}

fn time_tz(s: &str) -> Result<String, &'static str> {
    let (time, off) = split_offset(s)?;
    clock(time)?;
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str(time);
    push_offset(&mut out, off, false)?;
    Ok(out)
}

/// `YYYY-MM-DD HH:MM:SS[.f][±HH[:MM]][ BC]` → `YYYY-MM-DDTHH:MM:SS[.f][Z|±HH:MM]`.
fn timestamp(s: &str, tz: bool) -> Result<String, &'static str> {
    if is_infinity(s) {
        return Ok(s.to_owned());
    }
    let (body, bc) = strip_bc(s);
    let (date, time) = body
        .split_once(' ')
        .ok_or("expected a date and a time separated by a space")?;
    let mut out = String::with_capacity(s.len() + 4);
    push_date(&mut out, date, bc)?;
    out.push('T');
    if tz {
        let (time, off) = split_offset(time)?;
        clock(time)?;
        out.push_str(time);
        push_offset(&mut out, off, true)?;
    } else {
        clock(time)?;
        out.push_str(time);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(kind: Kind, text: &str) -> Value {
        convert(&kind, text.as_bytes())
            .unwrap_or_else(|e| panic!("{kind} {text:?} failed to convert: {e}"))
    }

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    fn fails(kind: Kind, text: &[u8]) -> ValueError {
        match convert(&kind, text) {
            Ok(v) => panic!("{kind} {text:?} converted to {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn integers() {
        assert_eq!(conv(Kind::Int, "42"), Value::Int(42));
        assert_eq!(conv(Kind::Int, "-32768"), Value::Int(-32768));
        assert_eq!(conv(Kind::Int, "9223372036854775807"), Value::Int(i64::MAX));
        assert_eq!(
            conv(Kind::Int, "-9223372036854775808"),
            Value::Int(i64::MIN)
        );
        for bad in ["", "1.5", "9223372036854775808", "12a", " 1", "0x10"] {
            fails(Kind::Int, bad.as_bytes());
        }
    }

    #[test]
    fn numerics_are_kept_as_text() {
        for n in [
            "0",
            "19.90",
            "-0.000001",
            "123456789012345678901234567890.123456789",
            "NaN",
            "Infinity",
            "-Infinity",
            "1e10",
            ".5",
        ] {
            assert_eq!(conv(Kind::Numeric, n), text(n));
        }
        for bad in ["", "-", "1.2.3", "abc", "nan", "1e", "1 "] {
            fails(Kind::Numeric, bad.as_bytes());
        }
    }

    #[test]
    fn floats_and_their_special_values() {
        assert_eq!(conv(Kind::Float, "1.5"), Value::Float(1.5));
        assert_eq!(conv(Kind::Float, "-0"), Value::Float(-0.0));
        assert_eq!(conv(Kind::Float, "0.1"), Value::Float(0.1));
        assert_eq!(
            conv(Kind::Float, "1.1754944e-38"),
            Value::Float(1.1754944e-38)
        );
        assert_eq!(
            conv(Kind::Float, "1.7976931348623157e+308"),
            Value::Float(f64::MAX)
        );
        for special in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(conv(Kind::Float, special), text(special));
        }
        for bad in ["", "inf", "nan", "1e999", "one"] {
            fails(Kind::Float, bad.as_bytes());
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(conv(Kind::Bool, "t"), Value::Bool(true));
        assert_eq!(conv(Kind::Bool, "f"), Value::Bool(false));
        fails(Kind::Bool, b"true");
        fails(Kind::Bool, b"");
    }

    #[test]
    fn strings_uuids_and_other_types_are_text() {
        assert_eq!(conv(Kind::Text, "héllo wörld"), text("héllo wörld"));
        assert_eq!(conv(Kind::Text, ""), text(""));
        assert_eq!(conv(Kind::Text, "ab   "), text("ab   "));
        assert_eq!(
            conv(Kind::Text, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        for other in [
            "P1Y2M3DT4H5M6S",
            "$1,234.50",
            "192.168.0.1/24",
            "(1,2)",
            "16384",
            "<a>x</a>",
            "'a' 'b':2",
            "[1,10)",
        ] {
            assert_eq!(conv(Kind::Other, other), text(other));
        }
        let err = fails(Kind::Text, b"ab\xffcd");
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn json_is_validated_and_kept_verbatim() {
        let v = conv(Kind::Json, r#"{"a": [1, 2.5, null], "b": "x"}"#);
        let Value::Json(raw) = &v else {
            panic!("{v:?}")
        };
        assert_eq!(raw.get(), r#"{"a": [1, 2.5, null], "b": "x"}"#);
        assert_eq!(conv(Kind::Json, "42"), Value::json("42").unwrap());
        assert_eq!(conv(Kind::Json, "\"s\""), Value::json("\"s\"").unwrap());
        assert_eq!(conv(Kind::Json, "null"), Value::json("null").unwrap());
        let err = fails(Kind::Json, b"{\"a\":");
        assert!(err.to_string().starts_with("invalid json value"), "{err}");
        fails(Kind::Json, b"");
        fails(Kind::Json, b"1 2");
    }

    #[test]
    fn bytea_hex_is_decoded() {
        assert_eq!(
            conv(Kind::Bytea, "\\x0a0bFF00"),
            Value::Bytes(vec![0x0a, 0x0b, 0xff, 0x00])
        );
        assert_eq!(conv(Kind::Bytea, "\\x"), Value::Bytes(vec![]));
        assert_eq!(
            conv(Kind::Bytea, "abc\\\\\\001\\377"),
            Value::Bytes(b"abc\\\x01\xff".to_vec())
        );
        for bad in [&b"\\x0"[..], b"\\x0g", b"\\x\xff\xff", b"a\\9", b"a\\"] {
            fails(Kind::Bytea, bad);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(conv(Kind::Date, "2026-11-22"), text("2026-11-22"));
        assert_eq!(conv(Kind::Date, "infinity"), text("infinity"));
        assert_eq!(conv(Kind::Date, "-infinity"), text("-infinity"));
        assert_eq!(conv(Kind::Date, "0044-03-15 BC"), text("-0043-03-15"));
        assert_eq!(conv(Kind::Date, "0001-01-01 BC"), text("0000-01-01"));
        assert_eq!(conv(Kind::Date, "0002-01-01 BC"), text("-0001-01-01"));
        assert_eq!(conv(Kind::Date, "4714-11-24 BC"), text("-4713-11-24"));
        assert_eq!(conv(Kind::Date, "0001-01-01"), text("0001-01-01"));
        assert_eq!(conv(Kind::Date, "5874897-12-31"), text("5874897-12-31"));
        for bad in [
            "",
            "2026-11",
            "2026/11/22",
            "26-11-22x",
            "2026-1a-22",
            "0000-01-01 BC",
            "1234567890-01-01 BC",
            " BC",
            "Infinity",
        ] {
            fails(Kind::Date, bad.as_bytes());
        }
    }

    #[test]
    fn times() {
        assert_eq!(conv(Kind::Time, "06:00:00"), text("06:00:00"));
        assert_eq!(conv(Kind::Time, "23:59:59.999999"), text("23:59:59.999999"));
        assert_eq!(conv(Kind::Time, "24:00:00"), text("24:00:00"));
        for bad in ["6:00:00", "06:00", "06:00:00.", "06:00:00+00", "ab:cd:ef"] {
            fails(Kind::Time, bad.as_bytes());
        }
    }

    #[test]
    fn times_with_zone() {
        assert_eq!(conv(Kind::TimeTz, "06:00:00+00"), text("06:00:00+00:00"));
        assert_eq!(
            conv(Kind::TimeTz, "06:00:00.5-08"),
            text("06:00:00.5-08:00")
        );
        assert_eq!(conv(Kind::TimeTz, "06:00:00+05:30"), text("06:00:00+05:30"));
        assert_eq!(
            conv(Kind::TimeTz, "06:00:00+05:53:28"),
            text("06:00:00+05:53:28")
        );
        for bad in [
            "06:00:00",
            "06:00:00+5",
            "06:00:00+05:3",
            "06:00:00+0a",
            "+00",
        ] {
            fails(Kind::TimeTz, bad.as_bytes());
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            conv(Kind::Timestamp, "2026-11-22 06:00:00.123456"),
            text("2026-11-22T06:00:00.123456")
        );
        assert_eq!(
            conv(Kind::Timestamp, "2026-11-22 06:00:00"),
            text("2026-11-22T06:00:00")
        );
        assert_eq!(conv(Kind::Timestamp, "infinity"), text("infinity"));
        assert_eq!(conv(Kind::Timestamp, "-infinity"), text("-infinity"));
        assert_eq!(
            conv(Kind::Timestamp, "0044-03-15 10:00:00 BC"),
            text("-0043-03-15T10:00:00")
        );
        assert_eq!(
            conv(Kind::Timestamp, "0001-12-31 23:59:59.5 BC"),
            text("0000-12-31T23:59:59.5")
        );
        assert_eq!(
            conv(Kind::Timestamp, "10000-01-01 00:00:00"),
            text("10000-01-01T00:00:00")
        );
        for bad in [
            "2026-11-22",
            "2026-11-22T06:00:00",
            "2026-11-22 06:00:00+00",
            "2026-11-22  06:00:00",
            "2026-11-22 06:00:00 AD",
        ] {
            fails(Kind::Timestamp, bad.as_bytes());
        }
    }

    #[test]
    fn timestamps_with_zone() {
        assert_eq!(
            conv(Kind::TimestampTz, "2026-11-22 06:00:00.123456+00"),
            text("2026-11-22T06:00:00.123456Z")
        );
        assert_eq!(
            conv(Kind::TimestampTz, "2026-11-22 06:00:00+00"),
            text("2026-11-22T06:00:00Z")
        );
        assert_eq!(
            conv(Kind::TimestampTz, "2026-11-22 06:00:00+05:30"),
            text("2026-11-22T06:00:00+05:30")
        );
        assert_eq!(
            conv(Kind::TimestampTz, "2026-11-22 06:00:00+05"),
            text("2026-11-22T06:00:00+05:00")
        );
        assert_eq!(
            conv(Kind::TimestampTz, "2026-11-22 06:00:00.1-03"),
            text("2026-11-22T06:00:00.1-03:00")
        );
        assert_eq!(conv(Kind::TimestampTz, "infinity"), text("infinity"));
        assert_eq!(conv(Kind::TimestampTz, "-infinity"), text("-infinity"));
        assert_eq!(
            conv(Kind::TimestampTz, "0044-03-15 10:00:00+00 BC"),
            text("-0043-03-15T10:00:00Z")
        );
        for bad in [
            "2026-11-22 06:00:00",
            "2026-11-22 06:00:00+",
            "2026-11-22 06:00:00+0530",
            "2026-11-22 06:00:00 UTC",
            "2026-11-22",
            "",
        ] {
            fails(Kind::TimestampTz, bad.as_bytes());
        }
    }

    #[test]
    fn errors_name_the_kind_and_cut_long_text() {
        let err = fails(Kind::Int, b"abc");
        assert_eq!(
            err.to_string(),
            "invalid integer value \"abc\": not a 64-bit integer"
        );
        let long = "x".repeat(10_000);
        let ValueError::Invalid { kind, text, .. } = fails(Kind::Timestamp, long.as_bytes()) else {
            panic!()
        };
        assert_eq!(kind, "timestamp");
        assert_eq!(text, format!("{}…", "x".repeat(60)));
        let wide = "é".repeat(61);
        let ValueError::Invalid { text, .. } = fails(Kind::Int, wide.as_bytes()) else {
            panic!()
        };
        assert_eq!(text, format!("{}…", "é".repeat(60)));
        let ValueError::Invalid { text, .. } = fails(Kind::Int, "é".repeat(60).as_bytes()) else {
            panic!()
        };
        assert_eq!(text, "é".repeat(60));
    }

    #[test]
    fn tuple_values() {
        let k = Kind::Int;
        assert_eq!(
            convert_tuple_value(&k, &TupleValue::Null),
            Ok(Some(Value::Null))
        );
        assert_eq!(
            convert_tuple_value(&k, &TupleValue::UnchangedToast),
            Ok(None)
        );
        assert_eq!(
            convert_tuple_value(&k, &TupleValue::Text(bytes::Bytes::from_static(b"7"))),
            Ok(Some(Value::Int(7)))
        );
        let err = convert_tuple_value(&k, &TupleValue::Binary(bytes::Bytes::new())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "binary format not supported (integer column)"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let kinds = [
            Kind::Bool,
            Kind::Int,
            Kind::Float,
            Kind::Numeric,
            Kind::Text,
            Kind::Json,
            Kind::Bytea,
            Kind::Date,
            Kind::Time,
            Kind::TimeTz,
            Kind::Timestamp,
            Kind::TimestampTz,
            Kind::Other,
            Kind::array_of(Kind::Int),
            Kind::array_of(Kind::array_of(Kind::TimestampTz)),
        ];
        let alphabet = b"0123456789-+:. BCTZx\\\"{},;[]=NUL\xff\xc3";
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            for kind in &kinds {
                let _ = convert(kind, &buf);
            }
        }
    }
}
