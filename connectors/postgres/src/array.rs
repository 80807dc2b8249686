//! Postgres array literals (`array_out` text form) → nested [`Value::Array`]s.
//!
//! Handles `{}`, nested braces (one level per dimension), quoted elements with backslash
//! escapes, unquoted `NULL` (any case; a quoted `"NULL"` is the string), whitespace around
//! elements, a leading dimension decoration such as `[0:2]=` and the element type's
//! delimiter (`,` for everything but `box`, which uses `;`). Elements are converted by
//! their type's rules, see [`crate::values::convert`].

use sluice_runtime::Value;

use crate::types::Kind;
use crate::values::{convert, ValueError};

/// Postgres' limit on array dimensions (`MAXDIM`).
pub const MAX_DIMENSIONS: usize = 6;

/// Parse the text form of an array of `element`s separated by `delimiter`.
pub fn parse(element: &Kind, delimiter: u8, text: &[u8]) -> Result<Value, ValueError> {
    let mut parser = Parser {
        s: text,
        pos: 0,
        delimiter,
        element,
        scratch: Vec::new(),
    };
    parser.run().map(Value::Array).map_err(|e| match e {
        Error::Syntax(reason) => {
            let kind = Kind::Array {
                element: Box::new(element.clone()),
                delimiter,
            };
            ValueError::invalid(&kind, text, reason)
        }
        Error::Element(e) => e,
    })
}

enum Error {
    Syntax(&'static str),
    Element(ValueError),
}

impl From<ValueError> for Error {
    fn from(e: ValueError) -> Self {
        Error::Element(e)
    }
}

/// Whitespace as `array_in` sees it.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    delimiter: u8,
    element: &'a Kind,
    /// Reused buffer for elements that contain escapes.
    scratch: Vec<u8>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    fn run(&mut self) -> Result<Vec<Value>, Error> {
        self.skip_space();
        if self.peek() == Some(b'[') {
            self.dimensions()?;
            self.skip_space();
        }
        if self.peek() != Some(b'{') {
            return Err(Error::Syntax("expected '{'"));
        }
        let items = self.array(1)?;
        self.skip_space();
        if self.pos != self.s.len() {
            return Err(Error::Syntax("unexpected text after the array"));
        }
        Ok(items)
    }

    /// `[lo:hi]` or `[hi]`, once per dimension, then `=`. The bounds are not needed:
    /// the braces carry the shape.
    fn dimensions(&mut self) -> Result<(), Error> {
        const ERR: Error = Error::Syntax("invalid array dimensions");
        while self.peek() == Some(b'[') {
            self.pos += 1;
            let rest = &self.s[self.pos..];
            let close = rest.iter().position(|&c| c == b']').ok_or(ERR)?;
            let inner = &rest[..close];
            let bound = |b: &[u8]| {
                let b = b.trim_ascii();
                let digits = b.strip_prefix(b"-").or(b.strip_prefix(b"+")).unwrap_or(b);
                !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
            };
            let ok = match inner.iter().position(|&c| c == b':') {
                Some(colon) => bound(&inner[..colon]) && bound(&inner[colon + 1..]),
                None => bound(inner),
            };
            if !ok {
                return Err(ERR);
            }
            self.pos += close + 1;
            self.skip_space();
        }
        if self.peek() != Some(b'=') {
            return Err(Error::Syntax("expected '=' after the array dimensions"));
        }
        self.pos += 1;
        Ok(())
    }

    /// One brace-delimited level, starting at its `{`.
    fn array(&mut self, depth: usize) -> Result<Vec<Value>, Error> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(items);
        }
        let mut nested = None;
        loop {
            self.skip_space();
            let c = self.peek().ok_or(Error::Syntax("unterminated array"))?;
            let sub = c == b'{';
            if *nested.get_or_insert(sub) != sub {
                return Err(Error::Syntax("sub-arrays mixed with elements"));
            }
            let item = if sub {
                if depth >= MAX_DIMENSIONS {
                    return Err(Error::Syntax("more than 6 dimensions"));
                }
                Value::Array(self.array(depth + 1)?)
            } else if c == b'"' {
                self.quoted()?
            } else if c == self.delimiter || c == b'}' {
                return Err(Error::Syntax("empty element"));
            } else {
                self.unquoted()?
            };
            items.push(item);
            self.skip_space();
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(items);
                }
                Some(c) if c == self.delimiter => self.pos += 1,
                Some(_) => return Err(Error::Syntax("expected a delimiter or '}'")),
                None => return Err(Error::Syntax("unterminated array")),
            }
        }
    }

    fn element(&self, text: &[u8]) -> Result<Value, Error> {
        Ok(convert(self.element, text)?)
    }

    /// A `"…"` element, starting at its opening quote. `\x` stands for `x`.
    fn quoted(&mut self) -> Result<Value, Error> {
        const UNTERMINATED: Error = Error::Syntax("unterminated quoted element");
        let s = self.s;
        let start = self.pos + 1;
        let mut i = start;
        // Fast path: no escapes, convert the slice in place.
        loop {
            match s.get(i) {
                None => return Err(UNTERMINATED),
                Some(b'"') => {
                    self.pos = i + 1;
                    return self.element(&s[start..i]);
                }
                Some(b'\\') => break,
                Some(_) => i += 1,
            }
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.extend_from_slice(&s[start..i]);
        let result = loop {
            match s.get(i) {
                None => break Err(UNTERMINATED),
                Some(b'\\') => match s.get(i + 1) {
                    Some(&c) => {
                        buf.push(c);
                        i += 2;
                    }
                    None => break Err(UNTERMINATED),
                },
                Some(b'"') => {
                    self.pos = i + 1;
                    break self.element(&buf);
                }
                Some(&c) => {
                    buf.push(c);
                    i += 1;
                }
            }
        };
        self.scratch = buf;
        result
    }

    /// An unquoted element: up to the delimiter or `}`, trailing whitespace trimmed,
    /// `\x` stands for `x`; `NULL` in any case (without escapes) is a null.
    fn unquoted(&mut self) -> Result<Value, Error> {
        let s = self.s;
        let start = self.pos;
        let mut i = start;
        // End of the significant text: after the last non-space or escaped character.
        let mut end = start;
        let mut escaped = false;
        while let Some(&c) = s.get(i) {
            if c == self.delimiter || c == b'}' {
                break;
            }
            match c {
                b'\\' => {
                    if i + 1 >= s.len() {
                        return Err(Error::Syntax("unterminated array"));
                    }
                    escaped = true;
                    i += 2;
                    end = i;
                }
                b'"' | b'{' => {
                    return Err(Error::Syntax("unexpected character in an unquoted element"))
                }
                c if is_space(c) => i += 1,
                _ => {
                    i += 1;
                    end = i;
                }
            }
        }
        self.pos = i;
        let raw = &s[start..end];
        if !escaped {
            if raw.eq_ignore_ascii_case(b"NULL") {
                return Ok(Value::Null);
            }
            return self.element(raw);
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let mut bytes = raw.iter();
        while let Some(&c) = bytes.next() {
            if c == b'\\' {
                // `end` never splits an escape: the escaped byte is always there.
                if let Some(&e) = bytes.next() {
                    buf.push(e);
                }
            } else {
                buf.push(c);
            }
        }
        let result = self.element(&buf);
        self.scratch = buf;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    fn arr(items: Vec<Value>) -> Value {
        Value::Array(items)
    }

    fn parse_ok(element: Kind, text: &str) -> Value {
        parse(&element, b',', text.as_bytes())
            .unwrap_or_else(|e| panic!("{text:?} failed to parse: {e}"))
    }

    fn parse_err(element: Kind, text: &str) -> ValueError {
        match parse(&element, b',', text.as_bytes()) {
            Ok(v) => panic!("{text:?} parsed to {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn flat_and_empty_arrays() {
        assert_eq!(parse_ok(Kind::Int, "{}"), arr(vec![]));
        assert_eq!(parse_ok(Kind::Int, " { } "), arr(vec![]));
        assert_eq!(
            parse_ok(Kind::Int, "{1,2,-3}"),
            arr(vec![Value::Int(1), Value::Int(2), Value::Int(-3)])
        );
        assert_eq!(
            parse_ok(Kind::Bool, "{t,f,NULL}"),
            arr(vec![Value::Bool(true), Value::Bool(false), Value::Null])
        );
        assert_eq!(
            parse_ok(Kind::Float, "{1.5,NaN,-Infinity}"),
            arr(vec![Value::Float(1.5), t("NaN"), t("-Infinity")])
        );
        assert_eq!(
            parse_ok(Kind::Numeric, "{1.10,NaN}"),
            arr(vec![t("1.10"), t("NaN")])
        );
    }

    #[test]
    fn quoting_escapes_and_nulls() {
        assert_eq!(
            parse_ok(
                Kind::Text,
                r#"{plain,"with space","a,b","q\"uote","back\\slash","{braces}",NULL,"NULL",null,"",NuLl}"#
            ),
            arr(vec![
                t("plain"),
                t("with space"),
                t("a,b"),
                t("q\"uote"),
                t("back\\slash"),
                t("{braces}"),
                Value::Null,
                t("NULL"),
                Value::Null,
                t(""),
                Value::Null,
            ])
        );
        // Escapes in unquoted elements, as array_in accepts them.
        assert_eq!(
            parse_ok(Kind::Text, r"{a\,b,\NULL,c\ }"),
            arr(vec![t("a,b"), t("NULL"), t("c ")])
        );
        // Unicode passes through.
        assert_eq!(
            parse_ok(Kind::Text, r#"{"héllo wörld",日本}"#),
            arr(vec![t("héllo wörld"), t("日本")])
        );
    }

    #[test]
    fn whitespace_around_elements() {
        assert_eq!(
            parse_ok(Kind::Text, "{ a , b c ,\t\"d\" ,\n NULL }"),
            arr(vec![t("a"), t("b c"), t("d"), Value::Null])
        );
        assert_eq!(
            parse_ok(Kind::Int, " { { 1 , 2 } , { 3 , 4 } } "),
            arr(vec![
                arr(vec![Value::Int(1), Value::Int(2)]),
                arr(vec![Value::Int(3), Value::Int(4)])
            ])
        );
    }

    #[test]
    fn multidimensional_arrays_nest() {
        assert_eq!(
            parse_ok(Kind::Int, "{{1,2,3},{4,NULL,6}}"),
            arr(vec![
                arr(vec![Value::Int(1), Value::Int(2), Value::Int(3)]),
                arr(vec![Value::Int(4), Value::Null, Value::Int(6)]),
            ])
        );
        assert_eq!(
            parse_ok(
                Kind::Text,
                r#"{{{"a b",NULL},{"\"",c}},{{d,"e\\f"},{"",g}}}"#
            ),
            arr(vec![
                arr(vec![
                    arr(vec![t("a b"), Value::Null]),
                    arr(vec![t("\""), t("c")])
                ]),
                arr(vec![arr(vec![t("d"), t("e\\f")]), arr(vec![t(""), t("g")])]),
            ])
        );
        let six = "{{{{{{1}}}}}}";
        let mut expect = Value::Int(1);
        for _ in 0..6 {
            expect = arr(vec![expect]);
        }
        assert_eq!(parse_ok(Kind::Int, six), expect);
        let err = parse_err(Kind::Int, "{{{{{{{1}}}}}}}");
        assert!(err.to_string().contains("more than 6 dimensions"), "{err}");
    }

    #[test]
    fn dimension_decoration_is_skipped() {
        assert_eq!(
            parse_ok(Kind::Int, "[0:2]={1,2,3}"),
            arr(vec![Value::Int(1), Value::Int(2), Value::Int(3)])
        );
        assert_eq!(
            parse_ok(Kind::Int, "[-1:0][1:2]={{1,2},{3,4}}"),
            arr(vec![
                arr(vec![Value::Int(1), Value::Int(2)]),
                arr(vec![Value::Int(3), Value::Int(4)])
            ])
        );
        assert_eq!(
            parse_ok(Kind::Int, "[3] = {1,2,3}"),
            parse_ok(Kind::Int, "{1,2,3}")
        );
        for bad in ["[0:2]{1}", "[a:2]={1}", "[0:2={1}", "[]={1}", "[1:]={1}"] {
            parse_err(Kind::Int, bad);
        }
    }

    #[test]
    fn box_arrays_use_semicolons() {
        let kind = Kind::Array {
            element: Box::new(Kind::Other),
            delimiter: b';',
        };
        assert_eq!(
            convert(&kind, b"{(1,1),(0,0);(3,4),(1,2);NULL}").unwrap(),
            arr(vec![t("(1,1),(0,0)"), t("(3,4),(1,2)"), Value::Null])
        );
    }

    #[test]
    fn elements_convert_by_their_type() {
        assert_eq!(
            parse_ok(Kind::Bytea, r#"{"\\x0a0b","\\x",NULL}"#),
            arr(vec![
                Value::Bytes(vec![0x0a, 0x0b]),
                Value::Bytes(vec![]),
                Value::Null
            ])
        );
        assert_eq!(
            parse_ok(
                Kind::TimestampTz,
                r#"{"2026-11-22 06:00:00.123456+00","0044-03-15 10:00:00+05:30 BC",infinity}"#
            ),
            arr(vec![
                t("2026-11-22T06:00:00.123456Z"),
                t("-0043-03-15T10:00:00+05:30"),
                t("infinity")
            ])
        );
        assert_eq!(
            parse_ok(Kind::Date, r#"{2026-11-22,"0044-03-15 BC"}"#),
            arr(vec![t("2026-11-22"), t("-0043-03-15")])
        );
        assert_eq!(
            parse_ok(Kind::TimeTz, "{06:00:00+00}"),
            arr(vec![t("06:00:00+00:00")])
        );
        let json = parse_ok(
            Kind::Json,
            r#"{"{\"a\": [1, \"x\"]}",42,"\"s\"",NULL,null}"#,
        );
        assert_eq!(
            json,
            arr(vec![
                Value::json(r#"{"a": [1, "x"]}"#).unwrap(),
                Value::json("42").unwrap(),
                Value::json("\"s\"").unwrap(),
                Value::Null,
                Value::Null,
            ])
        );
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"[{"a": [1, "x"]},42,"s",null,null]"#
        );
    }

    #[test]
    fn arrays_of_domains_over_arrays_nest_through_quoted_elements() {
        // A `d[]` where `create domain d as int[]`: elements are quoted array literals.
        let element = Kind::array_of(Kind::Int);
        assert_eq!(
            parse_ok(element, r#"{"{1,2}","{}",NULL}"#),
            arr(vec![
                arr(vec![Value::Int(1), Value::Int(2)]),
                arr(vec![]),
                Value::Null
            ])
        );
    }

    #[test]
    fn element_errors_name_the_element() {
        let err = parse_err(Kind::Int, "{1,x2}");
        assert_eq!(
            err.to_string(),
            "invalid integer value \"x2\": not a 64-bit integer"
        );
        // A quoted "NULL" is the string, which is no integer.
        parse_err(Kind::Int, r#"{"NULL"}"#);
    }

    #[test]
    fn malformed_arrays_are_errors() {
        for bad in [
            "", "1,2", "{", "{1", "{1,", "{1,}", "{,1}", "{1 2 3", "{\"a}", "{\"a\\", "{a\\",
            "{1}}", "{1}x", "{{1},2}", "{1,{2}}", "{a\"b\"}", "{\"a\"b}", "{a{b}", "}",
        ] {
            let err = parse_err(Kind::Text, bad);
            assert!(
                err.to_string().starts_with("invalid text[] value"),
                "{bad:?}: {err}"
            );
        }
    }
}
