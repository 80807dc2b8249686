//! Cache mode: each row's latest state under its own key, written by one script call per
//! event so that the fence check and the write are one atomic step on the server.
//!
//! - insert / update: the whole row replaces what is stored (`set`), unless some TOAST
//!   columns came unchanged (absent from `after`): those are taken from `before` when the
//!   table has `REPLICA IDENTITY FULL`, else the script keeps the stored values (`merge`);
//!   nothing stored to keep them from is a rejection that says what to do;
//! - an update whose key changed writes the new key and deletes (tombstones) the old one
//!   in the same script call;
//! - delete: the key is removed and its fence stays as a tombstone for `tombstone_ttl`;
//! - `op: event` (outbox rows, logical messages) has no row to cache: delivered without a
//!   write (logged once);
//! - truncate: ignored (logged once per table), or with `on_truncate: delete` every key of
//!   the table is found with SCAN and deleted through the same fenced script.
//!
//! The scripts live in `lua/`; each returns `applied`, `stale` (a newer change is stored:
//! nothing to do, delivered) or `missing` (a merge without a stored row).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};

use redis::{Cmd, Pipeline, Value};
use sluice_runtime::{Delivery, Event, Op, Row};

use crate::client::{Client, Lua};
use crate::config::{CacheSettings, Format, OnTruncate};
use crate::encode::{self, FENCE_FIELD, FENCE_SUFFIX};
use crate::retry::reply_error;
use crate::template::{table_name, Part};

/// The JSON-format script: the fence functions, then the JSON part.
const JSON_SCRIPT: &str = concat!(include_str!("lua/fence.lua"), include_str!("lua/json.lua"));

/// The hash-format script: the fence functions, then the hash part.
const HASH_SCRIPT: &str = concat!(include_str!("lua/fence.lua"), include_str!("lua/hash.lua"));

/// How many keys a truncate deletes per round trip.
const TRUNCATE_CHUNK: usize = 1000;

/// Cache mode's state: the settings, the format's script, what was logged already.
pub(crate) struct Cache {
    settings: CacheSettings,
    script: Lua,
    /// Tables whose ignored truncate was logged.
    truncates_logged: HashSet<String>,
    /// Whether skipping `op: event` was logged.
    events_logged: bool,
}

/// What the reply to one event's script call is about.
pub(crate) struct Pending {
    key: String,
    /// Where the stored row is when the key changed: its previous key.
    previous: Option<String>,
    /// The unchanged columns a merge needs from the stored row.
    unchanged: Vec<String>,
}

/// What the script does with the row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Set,
    Merge,
    Delete,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Set => "set",
            Action::Merge => "merge",
            Action::Delete => "del",
        }
    }
}

/// One row write, ready to become a script call.
struct RowWrite<'a> {
    key: String,
    /// The row's previous key, when an update changed it.
    previous: Option<String>,
    action: Action,
    row: Option<Cow<'a, Row>>,
    unchanged: Vec<&'a str>,
}

impl Cache {
    pub(crate) fn new(settings: CacheSettings) -> Self {
        let script = Lua::new(match settings.format {
            Format::Json => JSON_SCRIPT,
            Format::Hash => HASH_SCRIPT,
        });
        Cache {
            settings,
            script,
            truncates_logged: HashSet::new(),
            events_logged: false,
        }
    }

    /// The script this cache calls, for loading.
    pub(crate) fn script(&self) -> &Lua {
        &self.script
    }

    /// Add the command that applies `event` to `pipe`. `Ok(None)`: nothing to write, the
    /// event is delivered as it is. `Err`: the event cannot be written (the reason).
    pub(crate) fn prepare(
        &mut self,
        event: &Event,
        pipe: &mut Pipeline,
    ) -> Result<Option<Pending>, String> {
        let write = match event.op {
            Op::Insert | Op::Update => self.upsert(event)?,
            Op::Delete => RowWrite {
                key: self.settings.key.render(event).map_err(|e| e.to_string())?,
                previous: None,
                action: Action::Delete,
                row: None,
                unchanged: Vec::new(),
            },
            Op::Event => {
                if !std::mem::replace(&mut self.events_logged, true) {
                    tracing::info!(
                        "redis cache: outbox rows and logical messages (op: event) have no row \
                         to cache and are skipped; send them to a redis sink with mode: stream"
                    );
                }
                return Ok(None);
            }
            Op::Truncate => {
                return Err("a truncate cannot share a pipeline; it is a barrier".into())
            }
        };
        let fence = encode::fence(event);
        pipe.add_command(self.command(&write, &fence)?);
        Ok(Some(Pending {
            key: write.key,
            previous: write.previous,
            unchanged: write.unchanged.iter().map(|c| c.to_string()).collect(),
        }))
    }

    /// What the script's reply for `pending` means.
    pub(crate) fn answer(&self, pending: &Pending, reply: &Value) -> Delivery {
        let status = match reply {
            Value::BulkString(bytes) => bytes.as_slice(),
            Value::SimpleString(text) => text.as_bytes(),
            Value::ServerError(e) => {
                return reply_error(e, &format!("the write of `{}`", pending.key))
            }
            other => {
                return Delivery::rejected(format!(
                    "redis answered the write of `{}` with {other:?}, not a status",
                    pending.key
                ))
            }
        };
        match status {
            b"applied" => Delivery::Delivered,
            b"stale" => {
                tracing::trace!(key = %pending.key, "redis cache: a newer change is stored; skipped");
                Delivery::Delivered
            }
            b"missing" => Delivery::rejected(format!(
                "the stored row of `{}` is unknown, and this update does not carry its unchanged \
                 TOAST column(s) {} (Postgres sends large values only when they change): backfill \
                 the table into this sink (`sluice backfill`), or give it REPLICA IDENTITY FULL \
                 so that updates carry them",
                pending.previous.as_ref().unwrap_or(&pending.key),
                pending.unchanged.join(", ")
            )),
            other => Delivery::rejected(format!(
                "redis answered the write of `{}` with `{}`, not a status",
                pending.key,
                String::from_utf8_lossy(other)
            )),
        }
    }

    /// An insert or update: the row to write, whether its key changed, which columns the
    /// stored row must supply.
    fn upsert<'a>(&self, event: &'a Event) -> Result<RowWrite<'a>, String> {
        let key = self.settings.key.render(event).map_err(|e| e.to_string())?;
        let after = event.after.as_ref().ok_or_else(|| {
            format!(
                "an {} of {} without its new row",
                event.op.as_str(),
                table_name(event)
            )
        })?;
        let (row, unchanged) = complete(after, event.before.as_ref(), &event.unchanged);
        let previous = self.previous_key(event, &key)?;
        Ok(RowWrite {
            key,
            previous,
            action: if unchanged.is_empty() {
                Action::Set
            } else {
                Action::Merge
            },
            row: Some(row),
            unchanged,
        })
    }

    /// The key the row had before this update, when the update changed it: `before` holds
    /// the old key columns (Postgres sends them when the key changes) and they render to
    /// another key.
    fn previous_key(&self, event: &Event, key: &str) -> Result<Option<String>, String> {
        let (Some(before), Some(new_key)) = (&event.before, &event.key) else {
            return Ok(None);
        };
        let mut old_key = Row::default();
        for column in &new_key.0 {
            match before.get(&column.name) {
                Some(value) => old_key.push(column.name.clone(), value.clone()),
                None => return Ok(None),
            }
        }
        if &old_key == new_key {
            return Ok(None);
        }
        let previous = self
            .settings
            .key
            .render_with_key(event, Some(&old_key))
            .map_err(|e| e.to_string())?;
        Ok((previous != key).then_some(previous))
    }

    /// The EVALSHA call for one row write at `fence` (see `lua/json.lua` and `lua/hash.lua`
    /// for the keys and arguments).
    fn command(&self, write: &RowWrite<'_>, fence: &str) -> Result<Cmd, String> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.script.sha);
        match self.settings.format {
            Format::Json => {
                match &write.previous {
                    Some(previous) => cmd
                        .arg(4)
                        .arg(&write.key)
                        .arg(format!("{}{FENCE_SUFFIX}", write.key))
                        .arg(previous)
                        .arg(format!("{previous}{FENCE_SUFFIX}")),
                    None => cmd
                        .arg(2)
                        .arg(&write.key)
                        .arg(format!("{}{FENCE_SUFFIX}", write.key)),
                };
                self.common_args(&mut cmd, write, fence);
                let document = write.row.as_deref().map(encode::document);
                cmd.arg(document.as_deref().unwrap_or(""));
                for column in &write.unchanged {
                    cmd.arg(encode::json_name(column));
                }
            }
            Format::Hash => {
                match &write.previous {
                    Some(previous) => cmd.arg(2).arg(&write.key).arg(previous),
                    None => cmd.arg(1).arg(&write.key),
                };
                self.common_args(&mut cmd, write, fence);
                let row = write.row.as_deref();
                if row.is_some_and(|r| r.get(FENCE_FIELD).is_some()) {
                    return Err(format!(
                        "the column `{FENCE_FIELD}` collides with the hash field that holds \
                         the row's fence; rename it with a transform or use format: json"
                    ));
                }
                let fields = row.map(encode::hash_fields).unwrap_or_default();
                cmd.arg(fields.len());
                for (name, value) in &fields {
                    cmd.arg(*name).arg(value.as_ref());
                }
                for column in &write.unchanged {
                    cmd.arg(*column);
                }
            }
        }
        Ok(cmd)
    }

    /// ARGV[1..4], the same in both formats: fence, action, TTL, tombstone TTL.
    fn common_args(&self, cmd: &mut Cmd, write: &RowWrite<'_>, fence: &str) {
        cmd.arg(fence)
            .arg(write.action.as_str())
            .arg(self.settings.ttl_ms)
            .arg(self.settings.tombstone_ms);
    }

    /// A truncate: ignored, or every key of the table deleted at the truncate's position.
    pub(crate) async fn truncate(&mut self, client: &mut Client, event: &Event) -> Delivery {
        let table = table_name(event);
        match self.settings.on_truncate {
            OnTruncate::Ignore => {
                if self.truncates_logged.insert(table.clone()) {
                    tracing::info!(
                        %table,
                        "redis cache: truncate ignored, the table's keys stay \
                         (on_truncate: delete removes them)"
                    );
                }
                Delivery::Delivered
            }
            OnTruncate::Delete => match self.delete_table(client, event).await {
                Ok(keys) => {
                    tracing::info!(%table, keys, "redis cache: truncate deleted the table's keys");
                    Delivery::Delivered
                }
                Err(failure) => failure,
            },
        }
    }

    /// SCAN the table's keys (the `key` template with its key placeholders as `*`) and
    /// delete each through the script, at the truncate's position: a key changed after
    /// the truncate (a replayed truncate) is newer and stays.
    async fn delete_table(&self, client: &mut Client, event: &Event) -> Result<usize, Delivery> {
        let pattern = self.pattern(event).map_err(Delivery::rejected)?;
        let kind = match self.settings.format {
            Format::Json => "string",
            Format::Hash => "hash",
        };
        let mut keys = BTreeSet::new();
        let mut cursor = String::from("0");
        loop {
            let mut scan = redis::pipe();
            scan.cmd("SCAN")
                .arg(&cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(TRUNCATE_CHUNK)
                .arg("TYPE")
                .arg(kind);
            let replies = client.run(&scan, &[]).await.map_err(Delivery::retry)?;
            let (next, found) = scan_reply(replies, &pattern)?;
            for key in found {
                let row_key = match self.settings.format {
                    Format::Json => key.strip_suffix(FENCE_SUFFIX).unwrap_or(&key).to_string(),
                    Format::Hash => key,
                };
                keys.insert(row_key);
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        let fence = encode::fence(event);
        let keys: Vec<String> = keys.into_iter().collect();
        for chunk in keys.chunks(TRUNCATE_CHUNK) {
            let mut pipe = redis::pipe();
            for key in chunk {
                let write = RowWrite {
                    key: key.clone(),
                    previous: None,
                    action: Action::Delete,
                    row: None,
                    unchanged: Vec::new(),
                };
                pipe.add_command(self.command(&write, &fence).map_err(Delivery::rejected)?);
            }
            let replies = client
                .run(&pipe, &[&self.script])
                .await
                .map_err(Delivery::retry)?;
            for (key, reply) in chunk.iter().zip(&replies) {
                if let Value::ServerError(e) = reply {
                    return Err(reply_error(e, &format!("the truncate's delete of `{key}`")));
                }
            }
        }
        Ok(keys.len())
    }

    /// The SCAN pattern of the table's keys: literal text and `{pipeline}`, `{schema}`,
    /// `{table}` escaped, key placeholders as `*`.
    fn pattern(&self, event: &Event) -> Result<String, String> {
        let mut pattern = String::new();
        for part in self.settings.key.parts() {
            match part {
                Part::Literal(text) => glob_escape(text, &mut pattern),
                Part::Pipeline => glob_escape(&event.source.pipeline, &mut pattern),
                Part::Schema | Part::Table => {
                    let name = if *part == Part::Schema {
                        &event.source.schema
                    } else {
                        &event.source.table
                    };
                    let name = name
                        .as_deref()
                        .ok_or_else(|| "a truncate without its table".to_string())?;
                    glob_escape(name, &mut pattern);
                }
                Part::Key
                | Part::KeyColumn(_)
                | Part::Op
                | Part::EventType
                | Part::AggregateType => {
                    if !pattern.ends_with('*') {
                        pattern.push('*');
                    }
                }
            }
        }
        Ok(pattern)
    }
}

/// `after` completed with the unchanged columns `before` holds (a table with REPLICA
/// IDENTITY FULL sends the old row whole), and the unchanged columns still unknown.
fn complete<'a>(
    after: &'a Row,
    before: Option<&'a Row>,
    unchanged: &'a [std::sync::Arc<str>],
) -> (Cow<'a, Row>, Vec<&'a str>) {
    let unchanged = unchanged
        .iter()
        .map(|c| &**c)
        .filter(|c| after.get(c).is_none());
    let mut row = Cow::Borrowed(after);
    let mut unknown = Vec::new();
    for column in unchanged {
        match before.and_then(|b| b.0.iter().find(|c| &*c.name == column)) {
            Some(old) => row.to_mut().push(old.name.clone(), old.value.clone()),
            None => unknown.push(column),
        }
    }
    (row, unknown)
}

/// The cursor and keys of a SCAN reply.
fn scan_reply(replies: Vec<Value>, pattern: &str) -> Result<(String, Vec<String>), Delivery> {
    let reply = replies.into_iter().next();
    let unexpected =
        |what: &str| Delivery::rejected(format!("redis answered SCAN MATCH {pattern} with {what}"));
    let items = match reply {
        Some(Value::Array(items)) if items.len() == 2 => items,
        Some(Value::ServerError(e)) => {
            return Err(reply_error(&e, &format!("SCAN MATCH {pattern}")))
        }
        other => return Err(unexpected(&format!("{other:?}"))),
    };
    let mut items = items.into_iter();
    let cursor = match items.next() {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        other => return Err(unexpected(&format!("the cursor {other:?}"))),
    };
    let keys = match items.next() {
        Some(Value::Array(keys)) => keys
            .into_iter()
            .filter_map(|k| match k {
                Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
                _ => None,
            })
            .collect(),
        other => return Err(unexpected(&format!("the keys {other:?}"))),
    };
    Ok((cursor, keys))
}

/// Append `text` to a glob pattern so that it only matches itself.
fn glob_escape(text: &str, pattern: &mut String) {
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::template::Template;
    use sluice_runtime::{testing, Value as V};

    fn cache(key: &str) -> Cache {
        Cache::new(CacheSettings {
            key: Template::parse(key).unwrap(),
            format: Format::Json,
            ttl_ms: 0,
            tombstone_ms: 1000,
            on_truncate: OnTruncate::Delete,
        })
    }

    fn row(pairs: &[(&str, V)]) -> Row {
        let mut row = Row::default();
        for (name, value) in pairs {
            row.push((*name).into(), value.clone());
        }
        row
    }

    #[test]
    fn truncate_patterns_keep_the_table_and_glob_the_key() {
        let mut e = testing::event("it*ms", Op::Truncate, 1, 0);
        e.source.schema = Some("s[1]".into());
        assert_eq!(cache("{table}:{key}").pattern(&e).unwrap(), r"it\*ms:*");
        assert_eq!(
            cache("{pipeline}/{schema}.{table}/{key.a}-{key.b}")
                .pattern(&e)
                .unwrap(),
            r"p/s\[1\].it\*ms/*-*"
        );
        assert_eq!(
            cache("{table}{key}{key.a}").pattern(&e).unwrap(),
            r"it\*ms*"
        );
    }

    #[test]
    fn unchanged_columns_come_from_a_full_before_when_it_has_them() {
        let after = row(&[("id", V::Int(1)), ("title", V::Text("new".into()))]);
        let unchanged: Vec<Arc<str>> = vec!["body".into(), "blob".into()];
        let (full, unknown) = complete(&after, None, &unchanged);
        assert_eq!(*full, after);
        assert_eq!(unknown, ["body", "blob"]);

        let before = row(&[("id", V::Int(1)), ("body", V::Text("long".into()))]);
        let (full, unknown) = complete(&after, Some(&before), &unchanged);
        assert_eq!(full.get("body"), Some(&V::Text("long".into())));
        assert_eq!(unknown, ["blob"]);

        // A column a transform put back into `after` is not unchanged any more.
        let (_, unknown) = complete(&before, None, &unchanged[..1]);
        assert!(unknown.is_empty());
    }

    #[test]
    fn a_key_change_is_seen_from_the_old_key_columns_in_before() {
        let c = cache("{table}:{key}");
        let mut e = testing::event("items", Op::Update, 1, 0);
        e.key = Some(row(&[("id", V::Int(2))]));
        e.after = Some(row(&[("id", V::Int(2)), ("n", V::Int(5))]));
        assert_eq!(c.previous_key(&e, "items:2").unwrap(), None);
        e.before = Some(row(&[("id", V::Int(2)), ("n", V::Int(4))]));
        assert_eq!(c.previous_key(&e, "items:2").unwrap(), None);
        e.before = Some(row(&[("id", V::Int(1))]));
        assert_eq!(
            c.previous_key(&e, "items:2").unwrap().as_deref(),
            Some("items:1")
        );
        // The key template does not use the changed column: the same key.
        let by_table = cache("{table}");
        assert_eq!(by_table.previous_key(&e, "items").unwrap(), None);
    }

    #[test]
    fn events_and_truncates_are_not_row_writes() {
        let mut c = cache("{table}:{key}");
        let mut pipe = redis::pipe();
        let event = testing::event("outbox", Op::Event, 1, 0);
        assert!(c.prepare(&event, &mut pipe).unwrap().is_none());
        let truncate = testing::event("items", Op::Truncate, 1, 0);
        assert!(c.prepare(&truncate, &mut pipe).is_err());
        assert!(pipe.is_empty());
        let keyless = testing::event("items", Op::Insert, 1, 0);
        let e = c.prepare(&keyless, &mut pipe).err().unwrap();
        assert!(e.contains("has none"), "{e}");
    }

    #[test]
    fn script_statuses_become_deliveries() {
        let c = cache("{table}:{key}");
        let pending = Pending {
            key: "items:1".into(),
            previous: None,
            unchanged: vec!["body".into()],
        };
        let status = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(c.answer(&pending, &status("applied")), Delivery::Delivered);
        assert_eq!(c.answer(&pending, &status("stale")), Delivery::Delivered);
        match c.answer(&pending, &status("missing")) {
            Delivery::Rejected { reason } => {
                assert!(
                    reason.contains("`items:1`") && reason.contains("body"),
                    "{reason}"
                );
                assert!(reason.contains("REPLICA IDENTITY FULL"), "{reason}");
                assert!(reason.contains("backfill"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.answer(&pending, &Value::Int(1)),
            Delivery::Rejected { .. }
        ));
    }
}
