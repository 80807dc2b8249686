//! The envelope as a transform sees it: [`Event`] with named rows ([`Column`]s), and helpers
//! for reading and changing rows and values.
//!
//! The world sends rows positionally, each batch naming its tables and column lists once
//! (see `wit/README.md`); the SDK puts the names back. A [`Name`] is shared, not copied: the
//! columns of every row in a batch point at the same names, and a row returned with the
//! names it came with crosses back without them.

use std::fmt;
use std::ops::Deref;
use std::rc::Rc;

pub use crate::bindings::sluice::transform::types::{Message, Op, Value};

/// A column, schema or table name: an immutable string that is cheap to clone. Compares
/// with `&str` and `String`, and dereferences to `str`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Rc<str>);

impl Name {
    /// The name as a `&str`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` and `other` are the same allocation (then they are equal, cheaply).
    pub(crate) fn same(&self, other: &Name) -> bool {
        Rc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name(s.into())
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name(s.into())
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Name {
        Name(s.as_str().into())
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

/// One named value of a row.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// The column's name.
    pub name: Name,
    /// Its value.
    pub value: Value,
}

impl Column {
    /// A column named `name` holding `value`.
    pub fn new(name: impl Into<Name>, value: impl Into<Value>) -> Column {
        Column {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A WAL position. Displays as PostgreSQL's `X/Y` (hex halves).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Where an event came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The pipeline's name.
    pub pipeline: Name,
    /// The schema of the change's table; `None` for a logical message.
    pub schema: Option<Name>,
    /// The change's table; `None` for a logical message.
    pub table: Option<Name>,
    /// The change's position in the WAL.
    pub lsn: Lsn,
    /// The position of its transaction's commit.
    pub commit_lsn: Lsn,
    /// `None` for a non-transactional logical message.
    pub xid: Option<u32>,
    /// Commit time: microseconds since 1970-01-01T00:00:00Z.
    pub ts_micros: i64,
}

/// One change event: the envelope of the spec ("The event envelope"), with named rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The event's index in its transaction; [`Event::id`] is `<commit LSN>:<index>`.
    /// Events you return keep their input's position in the stream whatever they carry.
    pub index: u32,
    /// What happened.
    pub op: Op,
    /// Where it came from.
    pub source: Source,
    /// The primary key (or replica identity) columns.
    pub key: Option<Vec<Column>>,
    /// The row before the change, as far as REPLICA IDENTITY gives it.
    pub before: Option<Vec<Column>>,
    /// The row after the change.
    pub after: Option<Vec<Column>>,
    /// TOASTed columns PostgreSQL did not resend: absent from `after`. Do not invent values.
    pub unchanged: Vec<Name>,
    /// The outbox row or logical message, exactly when `op` is [`Op::Event`].
    pub message: Option<Message>,
}

/// Column access on a row (`key`, `before` or `after`): a list of named values in table order.
///
/// Implemented for `Vec<Column>`, so `event.after_mut().map(|row| row.set("x", 1))` works.
/// Names are matched exactly (PostgreSQL folds unquoted names to lower case).
pub trait Row {
    /// The value of column `name`, if the row has it.
    fn get(&self, name: &str) -> Option<&Value>;
    /// A mutable reference to the value of column `name`, if the row has it.
    fn get_mut(&mut self, name: &str) -> Option<&mut Value>;
    /// Set column `name` to `value`, replacing it in place or appending it at the end.
    fn set(&mut self, name: &str, value: impl Into<Value>);
    /// Remove column `name`, returning its value if it was there. (Not `remove`: `Vec`'s own
    /// `remove(index)` would shadow it.)
    fn remove_column(&mut self, name: &str) -> Option<Value>;
}

impl Row for Vec<Column> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.iter().find(|c| c.name == name).map(|c| &c.value)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        self.iter_mut()
            .find(|c| c.name == name)
            .map(|c| &mut c.value)
    }

    fn set(&mut self, name: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.get_mut(name) {
            Some(slot) => *slot = value,
            None => self.push(Column::new(name, value)),
        }
    }

    fn remove_column(&mut self, name: &str) -> Option<Value> {
        let index = self.iter().position(|c| c.name == name)?;
        Some(self.remove(index).value)
    }
}

fn row<N: Into<Name>, V: Into<Value>>(columns: impl IntoIterator<Item = (N, V)>) -> Vec<Column> {
    columns
        .into_iter()
        .map(|(n, v)| Column::new(n, v))
        .collect()
}

impl Event {
    /// A minimal event of `op` on `schema.table`, with no rows: for unit tests of a transform
    /// (the host builds the real ones). Add rows with [`Event::with_after`] and friends.
    pub fn new(op: Op, schema: &str, table: &str) -> Event {
        Event {
            index: 0,
            op,
            source: Source {
                pipeline: "test".into(),
                schema: Some(schema.into()),
                table: Some(table.into()),
                lsn: Lsn(0),
                commit_lsn: Lsn(0),
                xid: None,
                ts_micros: 946_684_800_000_000,
            },
            key: None,
            before: None,
            after: None,
            unchanged: Vec::new(),
            message: None,
        }
    }

    /// This event with `after` set to these columns.
    pub fn with_after<N: Into<Name>, V: Into<Value>>(
        mut self,
        columns: impl IntoIterator<Item = (N, V)>,
    ) -> Event {
        self.after = Some(row(columns));
        self
    }

    /// This event with `before` set to these columns.
    pub fn with_before<N: Into<Name>, V: Into<Value>>(
        mut self,
        columns: impl IntoIterator<Item = (N, V)>,
    ) -> Event {
        self.before = Some(row(columns));
        self
    }

    /// This event with `key` set to these columns.
    pub fn with_key<N: Into<Name>, V: Into<Value>>(
        mut self,
        columns: impl IntoIterator<Item = (N, V)>,
    ) -> Event {
        self.key = Some(row(columns));
        self
    }
}

impl Event {
    /// The envelope's `id`: `<commit LSN>:<index>`, unique and ordered in the stream.
    pub fn id(&self) -> String {
        format!("{}:{}", self.source.commit_lsn, self.index)
    }

    /// What happened: insert, update, delete, truncate or event (outbox row / message).
    pub fn op(&self) -> Op {
        self.op
    }

    /// The table the change comes from; `None` for a logical message.
    pub fn table(&self) -> Option<&str> {
        self.source.table.as_deref()
    }

    /// The schema of the table the change comes from; `None` for a logical message.
    pub fn schema(&self) -> Option<&str> {
        self.source.schema.as_deref()
    }

    /// The row after the change (insert, update), if any.
    pub fn after(&self) -> Option<&Vec<Column>> {
        self.after.as_ref()
    }

    /// The row after the change, mutably.
    pub fn after_mut(&mut self) -> Option<&mut Vec<Column>> {
        self.after.as_mut()
    }

    /// The row before the change (update, delete, as far as REPLICA IDENTITY gives it).
    pub fn before(&self) -> Option<&Vec<Column>> {
        self.before.as_ref()
    }

    /// The row before the change, mutably.
    pub fn before_mut(&mut self) -> Option<&mut Vec<Column>> {
        self.before.as_mut()
    }

    /// The primary key (or replica identity) columns, if any.
    pub fn key(&self) -> Option<&Vec<Column>> {
        self.key.as_ref()
    }

    /// The current value of column `name`: from `after`, or from `before` when the event has
    /// no `after` (a delete). `None` when neither has it (for instance an unchanged TOASTed
    /// column, listed in `unchanged`).
    pub fn get(&self, name: &str) -> Option<&Value> {
        match &self.after {
            Some(after) => after.get(name),
            None => self.before.as_ref().and_then(|before| before.get(name)),
        }
    }

    /// The current value of column `name` as text, if it is a `text` value.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    /// Set column `name` of `after` to `value` (replace or append). Returns `false`, and
    /// changes nothing, when the event has no `after` (delete, truncate, message).
    pub fn set(&mut self, name: &str, value: impl Into<Value>) -> bool {
        match &mut self.after {
            Some(after) => {
                after.set(name, value);
                true
            }
            None => false,
        }
    }

    /// Remove column `name` from `key`, `before` and `after`; returns whether any had it.
    pub fn remove_column(&mut self, name: &str) -> bool {
        let mut found = false;
        for row in [&mut self.key, &mut self.before, &mut self.after]
            .into_iter()
            .flatten()
        {
            found |= row.remove_column(name).is_some();
        }
        found
    }

    /// Apply `f` to every row the event carries (`key`, `before`, `after`), for changes that
    /// must hold wherever a column appears, such as masking.
    pub fn for_each_row(&mut self, mut f: impl FnMut(&mut Vec<Column>)) {
        for row in [&mut self.key, &mut self.before, &mut self.after]
            .into_iter()
            .flatten()
        {
            f(row);
        }
    }
}

impl Value {
    /// A `text` value.
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }

    /// A `json` value from JSON text. The text is not checked: pass valid JSON.
    pub fn json(s: impl Into<String>) -> Value {
        Value::Json(s.into())
    }

    /// Whether the value is SQL `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The string of a `text` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The JSON text of a `json` value (json, jsonb or an array).
    pub fn as_json(&self) -> Option<&str> {
        match self {
            Value::Json(s) => Some(s),
            _ => None,
        }
    }

    /// The integer of an `int` value.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number of a `float` or `int` value.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The flag of a `boolean` value.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The bytes of a `bytes` value (bytea).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The value as JSON text, exactly as the envelope renders it: `null`, `true`, numbers,
    /// strings (quoted and escaped), json passed through, bytes as a base64 string. A
    /// non-finite float (which the host never sends) renders as `null`.
    pub fn to_json(&self) -> String {
        match self {
            Value::Null => "null".to_string(),
            Value::Boolean(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) if f.is_finite() => format!("{f:?}"),
            Value::Float(_) => "null".to_string(),
            Value::Text(s) => json_string(s),
            Value::Json(s) => s.clone(),
            Value::Bytes(b) => json_string(&base64(b)),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<i32> for Value {
    fn from(i: i32) -> Value {
        Value::Int(i.into())
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Boolean(b)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Value {
        Value::Bytes(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// `s` as a quoted JSON string.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Standard base64 with padding, as the envelope carries bytea.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Vec<Column> {
        vec![Column::new("id", 1), Column::new("email", "a@b.c")]
    }

    #[test]
    fn row_get_set_remove() {
        let mut r = row();
        assert_eq!(r.get("id"), Some(&Value::Int(1)));
        r.set("email", "x");
        r.set("route", "audit");
        assert_eq!(r.get("email").and_then(Value::as_str), Some("x"));
        assert_eq!(r.last().map(|c| c.name.as_str()), Some("route"));
        assert_eq!(r.remove_column("id"), Some(Value::Int(1)));
        assert_eq!(r.get("id"), None);
    }

    #[test]
    fn ids_and_lsns_read_as_postgres_writes_them() {
        let mut e = Event::new(Op::Insert, "public", "orders");
        e.source.commit_lsn = Lsn(0x1_6B37_48);
        e.index = 3;
        assert_eq!(e.id(), "0/16B3748:3");
        assert_eq!(Lsn(0x2_0000_00FF).to_string(), "2/FF");
        let name = Name::from("email");
        assert!(name == "email" && "email" == name && name == String::from("email"));
    }

    #[test]
    fn values_render_as_the_envelope_does() {
        assert_eq!(Value::Null.to_json(), "null");
        assert_eq!(Value::Float(19.5).to_json(), "19.5");
        assert_eq!(Value::Float(2.0).to_json(), "2.0");
        assert_eq!(Value::text("a\"b\n\u{1}").to_json(), r#""a\"b\n\u0001""#);
        assert_eq!(Value::json(r#"{"k":1}"#).to_json(), r#"{"k":1}"#);
        assert_eq!(Value::Bytes(b"hello".to_vec()).to_json(), r#""aGVsbG8=""#);
        assert_eq!(Value::Bytes(b"hi".to_vec()).to_json(), r#""aGk=""#);
        assert_eq!(Value::Bytes(vec![]).to_json(), r#""""#);
    }
}
