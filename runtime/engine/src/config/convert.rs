//! The located tree → a `serde_json::Value`, an index of where every key was written, and
//! `${VAR}` interpolation of string values.

use serde_json::{Map, Number, Value};

use super::error::{ConfigError, Interpolated, Loc, Locator};
use super::tree::{child, Kind, Node, Pos, Scalar};

/// Looks up an environment variable.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Converts `root`, recording every path's place in `locator`.
pub(crate) fn to_json(root: &Node, locator: &mut Locator, env: Env) -> Result<Value, ConfigError> {
    walk(root, "", None, locator, env)
}

fn walk(
    node: &Node,
    path: &str,
    key: Option<Pos>,
    locator: &mut Locator,
    env: Env,
) -> Result<Value, ConfigError> {
    if !path.is_empty() {
        locator.index.insert(
            path.to_string(),
            Loc {
                key,
                value: node.pos,
            },
        );
    }
    Ok(match &node.kind {
        Kind::Scalar(Scalar::Null) => Value::Null,
        Kind::Scalar(Scalar::Bool(b)) => Value::Bool(*b),
        Kind::Scalar(Scalar::Int(i)) => Value::Number((*i).into()),
        Kind::Scalar(Scalar::Float(text)) => {
            match text.parse::<f64>().ok().and_then(Number::from_f64) {
                Some(n) => Value::Number(n),
                None => {
                    return Err(locator.error(
                        path,
                        format!("`{text}` is not a finite number; quote it if it is meant as text"),
                    ))
                }
            }
        }
        Kind::Scalar(Scalar::Str(text)) => match interpolate(text, env) {
            Ok(Expanded {
                text: value,
                from_env: true,
            }) => {
                locator.interpolated.push(Interpolated {
                    path: path.to_string(),
                    value: value.clone(),
                    raw: text.clone(),
                });
                Value::String(value)
            }
            Ok(Expanded { text, .. }) => Value::String(text),
            Err(message) => return Err(locator.error(path, message)),
        },
        Kind::Seq(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| walk(item, &format!("{path}[{i}]"), None, locator, env))
                .collect::<Result<_, _>>()?,
        ),
        Kind::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let value = walk(v, &child(path, &k.text), Some(k.pos), locator, env)?;
                map.insert(k.text.clone(), value);
            }
            Value::Object(map)
        }
    })
}

/// The result of [`interpolate`].
#[derive(Debug, PartialEq)]
pub(crate) struct Expanded {
    pub text: String,
    /// Whether any part came from `${…}` (and so may be a secret).
    pub from_env: bool,
}

const FORMS: &str = "write ${NAME} or ${NAME:-default}, and $$ for a literal $";

/// Expands `${NAME}`, `${NAME:-default}` (the default also when NAME is set but empty) and
/// `$$`. Errors never contain a variable's value.
pub(crate) fn interpolate(text: &str, env: Env) -> Result<Expanded, String> {
    if !text.contains('$') {
        return Ok(Expanded {
            text: text.to_string(),
            from_env: false,
        });
    }
    let mut out = String::with_capacity(text.len());
    let mut from_env = false;
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!("`${{` is not closed; {FORMS}"));
            };
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if !is_var_name(name) {
                return Err(format!(
                    "`${{{inner}}}` is not a variable reference; {FORMS} \
                     (names are letters, digits and _)"
                ));
            }
            let value = match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_string(),
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set \
                         (write ${{{name}:-default}} for a default)"
                    ))
                }
            };
            out.push_str(&value);
            from_env = true;
            rest = &body[end + 1..];
        } else {
            // A lone `$` (`$5`, `$HOME`) is just a dollar sign.
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(Expanded {
        text: out,
        from_env,
    })
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_defaults_and_dollars() {
        let i = |t: &str| {
            let e = interpolate(t, &env).unwrap();
            (e.text, e.from_env)
        };
        assert_eq!(i("plain"), ("plain".into(), false));
        assert_eq!(i("h=${HOST}:5432"), ("h=db.internal:5432".into(), true));
        assert_eq!(i("${MISSING:-x:y}"), ("x:y".into(), true));
        assert_eq!(i("${EMPTY:-fallback}"), ("fallback".into(), true));
        assert_eq!(i("${EMPTY}"), ("".into(), true));
        assert_eq!(i("${MISSING:-}"), ("".into(), true));
        assert_eq!(i("cost $$5 and $6"), ("cost $5 and $6".into(), false));
        assert_eq!(i("$${HOST}"), ("${HOST}".into(), false));
    }

    #[test]
    fn reports_missing_and_malformed_references() {
        let i = |t: &str| interpolate(t, &env).unwrap_err();
        assert!(i("${MISSING}").contains("MISSING is not set"));
        assert!(i("${HOST").contains("not closed"));
        assert!(i("${1X}").contains("not a variable reference"));
        assert!(i("${HOST-x}").contains("not a variable reference"));
        assert!(!i("${HOST:?x}").contains("db.internal"));
    }
}
