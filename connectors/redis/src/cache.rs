//! Cache mode: each row's latest state under its own key. A script applies many rows per
//! call, each only if it is newer than the position stored beside the row (its fence), so
//! the check and the write are one atomic step on the server.
//!
//! - insert / update: the whole row replaces what is stored (`s`), unless some TOAST
//!   columns came unchanged (absent from `after`): those are taken from `before` when the
//!   table has `REPLICA IDENTITY FULL`, else the script keeps the stored values (`m`,
//!   merge); nothing stored to keep them from is a rejection that says what to do;
//! - an update whose key changed writes the new key and deletes (tombstones) the old one
//!   in the same step;
//! - delete (`d`): the key is removed and its fence stays as a tombstone for
//!   `tombstone_ttl`;
//! - `op: event` (outbox rows, logical messages) has no row to cache: delivered without a
//!   write (logged once);
//! - truncate: a barrier, handled by [`crate::truncate`].
//!
//! A segment's rows are grouped into calls of at most [`MAX_ROWS_PER_CALL`] rows such that
//! every key's rows are in one call, in stream order: calls share no key, so they can all
//! go in one pipeline, and the script keeps a key's later rows from overtaking a failed
//! one. The scripts live in `lua/`; each row's reply is `a` (applied), `s` (stale: a newer
//! change is stored, delivered), `m` (missing: a merge without a stored row), `d` (not
//! attempted: its key failed earlier in the call) or `e` (an error, whose text follows).

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use redis::{Cmd, Value};
use sluice_runtime::template::table_name;
use sluice_runtime::{Delivery, Event, Op, Row};

use crate::batch::{group_by_keys, Call, Replies};
use crate::client::Lua;
use crate::config::{CacheSettings, Format};
use crate::encode::{Args, Fence, FENCE_FIELD, FENCE_SUFFIX};
use crate::retry::script_error;

/// The JSON-format script.
const JSON_SCRIPT: &str = concat!(
    include_str!("lua/reply.lua"),
    include_str!("lua/fence.lua"),
    include_str!("lua/json.lua")
);

/// The hash-format script.
const HASH_SCRIPT: &str = concat!(
    include_str!("lua/reply.lua"),
    include_str!("lua/fence.lua"),
    include_str!("lua/hash.lua")
);

/// The most rows one script call applies (more when one key has more changes in a
/// segment: a key's rows stay in one call), so that a call holds the server for about a
/// millisecond at most.
pub(crate) const MAX_ROWS_PER_CALL: usize = 256;

/// Cache mode's settings and script. Shared by the encoding (on the engine's task) and
/// the calls in flight.
pub(crate) struct Cache {
    pub(crate) settings: CacheSettings,
    pub(crate) script: Lua,
}

/// What cache mode logged once already; kept where the encoding runs.
#[derive(Default)]
pub(crate) struct Notes {
    /// Tables whose ignored truncate was logged.
    pub(crate) truncates: HashSet<String>,
    /// Whether skipping `op: event` was logged.
    pub(crate) events: bool,
}

/// What the script does with a row.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Set,
    Merge,
    Delete,
}

/// One row of a segment, ready to become part of a call.
struct Planned {
    /// Its index in the batch.
    index: usize,
    /// Its key, and its previous key when an update changed it, in the segment's arena.
    key: Range<usize>,
    previous: Option<Range<usize>>,
    action: Action,
}

impl Cache {
    pub(crate) fn new(settings: CacheSettings) -> Self {
        let script = Lua::new(match settings.format {
            Format::Json => JSON_SCRIPT,
            Format::Hash => HASH_SCRIPT,
        });
        Cache { settings, script }
    }

    /// The script calls that apply `batch[range]`, a segment without barriers. Events
    /// that need no write (`op: event`) or cannot be written (a key template that does not
    /// render, ...) are answered in `answers` at once; later events of such a key are
    /// answered deferred and not sent.
    pub(crate) fn encode(
        &self,
        batch: &[Arc<Event>],
        range: Range<usize>,
        answers: &mut [Option<Delivery>],
        notes: &mut Notes,
    ) -> Vec<Call> {
        let mut arena = String::new();
        let mut rows = Vec::with_capacity(range.len());
        // Ordering keys with an event that cannot be written: the rest of the key waits.
        let mut failed: HashSet<u64> = HashSet::new();
        for index in range {
            let event = &batch[index];
            if !failed.is_empty() && event.ordering_key().is_some_and(|k| failed.contains(&k)) {
                answers[index] = Some(Delivery::Deferred);
                continue;
            }
            match self.plan(event, index, &mut arena, notes) {
                Ok(Some(row)) => rows.push(row),
                Ok(None) => answers[index] = Some(Delivery::Delivered),
                Err(reason) => {
                    failed.extend(event.ordering_key());
                    answers[index] = Some(Delivery::rejected(reason));
                }
            }
        }
        let keys = |row: &Planned| {
            let key = &arena[row.key.clone()];
            let previous = row.previous.clone().map(|r| &arena[r]);
            (key, previous)
        };
        group_by_keys(&rows, MAX_ROWS_PER_CALL, keys)
            .into_iter()
            .enumerate()
            .map(|(group, chunk)| {
                let chunk: Vec<&Planned> = chunk.into_iter().map(|r| &rows[r]).collect();
                Call {
                    cmd: self.command(batch, &chunk, &arena),
                    rows: chunk.iter().map(|row| row.index).collect(),
                    group,
                }
            })
            .collect()
    }

    /// How `event` is written. `Ok(None)`: nothing to write, the event is delivered as it
    /// is. `Err`: the event cannot be written (the reason).
    fn plan(
        &self,
        event: &Event,
        index: usize,
        arena: &mut String,
        notes: &mut Notes,
    ) -> Result<Option<Planned>, String> {
        let action = match event.op {
            Op::Insert | Op::Update | Op::Read => {
                let after = event.after.as_ref().ok_or_else(|| {
                    format!(
                        "an {} of {} without its new row",
                        event.op.as_str(),
                        table_name(event)
                    )
                })?;
                if self.settings.format == Format::Hash
                    && (after.get(FENCE_FIELD).is_some()
                        || event.unchanged.iter().any(|c| &**c == FENCE_FIELD))
                {
                    return Err(format!(
                        "the column `{FENCE_FIELD}` collides with the hash field that holds \
                         the row's fence; rename it with a transform or use format: json"
                    ));
                }
                match unknown_columns(event).next() {
                    Some(_) => Action::Merge,
                    None => Action::Set,
                }
            }
            Op::Delete => Action::Delete,
            Op::Event => {
                if !std::mem::replace(&mut notes.events, true) {
                    tracing::info!(
                        "redis cache: outbox rows and logical messages (op: event) have no row \
                         to cache and are skipped; send them to a redis sink with mode: stream"
                    );
                }
                return Ok(None);
            }
            Op::Truncate => {
                return Err("a truncate cannot share a script call; it is a barrier".into())
            }
        };
        let start = arena.len();
        if let Err(e) = self
            .settings
            .key
            .render_into(event, event.key.as_ref(), arena)
        {
            arena.truncate(start);
            return Err(e.to_string());
        }
        let key = start..arena.len();
        let previous = match action {
            Action::Delete => None,
            Action::Set | Action::Merge => match self.previous_key(event, &arena[key.clone()]) {
                Ok(Some(previous)) => {
                    let start = arena.len();
                    arena.push_str(&previous);
                    Some(start..arena.len())
                }
                Ok(None) => None,
                Err(e) => {
                    arena.truncate(key.start);
                    return Err(e);
                }
            },
        };
        Ok(Some(Planned {
            index,
            key,
            previous,
            action,
        }))
    }

    /// The key the row had before this update, when the update changed it: `before` holds
    /// the old key columns (Postgres sends them when the key changes) and they render to
    /// another key.
    pub(crate) fn previous_key(&self, event: &Event, key: &str) -> Result<Option<String>, String> {
        let (Some(before), Some(new_key)) = (&event.before, &event.key) else {
            return Ok(None);
        };
        let same = new_key
            .0
            .iter()
            .all(|column| before.get(&column.name) == Some(&column.value));
        if same {
            return Ok(None);
        }
        let mut old_key = Row::default();
        for column in &new_key.0 {
            match before.get(&column.name) {
                Some(value) => old_key.push(column.name.clone(), value.clone()),
                None => return Ok(None),
            }
        }
        let previous = self
            .settings
            .key
            .render_with_key(event, Some(&old_key))
            .map_err(|e| e.to_string())?;
        Ok((previous != key).then_some(previous))
    }

    /// The EVALSHA call applying `rows` (see `lua/json.lua` and `lua/hash.lua` for the
    /// keys and arguments).
    fn command(&self, batch: &[Arc<Event>], rows: &[&Planned], arena: &str) -> Cmd {
        let json = self.settings.format == Format::Json;
        let keys_per_row = if json { 2 } else { 1 };
        let keys: usize = rows
            .iter()
            .map(|row| keys_per_row * (1 + usize::from(row.previous.is_some())))
            .sum();
        let mut cmd = Cmd::with_capacity(4 + keys + rows.len() * 4, rows.len() * 256);
        cmd.arg("EVALSHA")
            .arg(&self.script.sha)
            .arg_int(keys as u64);
        for row in rows {
            for key in std::iter::once(&row.key).chain(&row.previous) {
                let key = arena[key.clone()].as_bytes();
                cmd.arg_concat(&[key]);
                if json {
                    cmd.arg_concat(&[key, FENCE_SUFFIX.as_bytes()]);
                }
            }
        }
        cmd.arg_int(self.settings.ttl_ms)
            .arg_int(self.settings.tombstone_ms);
        for row in rows {
            let event = &batch[row.index];
            cmd.arg_concat(&[Fence::of(event).as_bytes()]);
            let action = match (row.action, row.previous.is_some()) {
                (Action::Delete, _) => "d",
                (Action::Set, false) => "s",
                (Action::Set, true) => "S",
                (Action::Merge, false) => "m",
                (Action::Merge, true) => "M",
            };
            cmd.arg_concat(&[action.as_bytes()]);
            if row.action == Action::Delete {
                continue;
            }
            let full = completed(event);
            if json {
                cmd.arg_document(&full);
            } else {
                let fields = full.0.iter().filter(|c| crate::encode::has_text(&c.value));
                cmd.arg_int(fields.clone().count() as u64);
                for column in fields {
                    cmd.arg_concat(&[column.name.as_bytes()]);
                    cmd.arg_value_text(&column.value);
                }
            }
            if row.action == Action::Merge {
                cmd.arg_int(unknown_columns(event).count() as u64);
                for column in unknown_columns(event) {
                    if json {
                        cmd.arg_json_name(column);
                    } else {
                        cmd.arg_concat(&[column.as_bytes()]);
                    }
                }
            }
        }
        cmd
    }

    /// Answer the rows of `call` from the script's reply.
    pub(crate) fn answer(
        &self,
        batch: &[Arc<Event>],
        call: &Call,
        reply: &Value,
        answers: &mut [Option<Delivery>],
    ) {
        let what = |index: usize| self.what(&batch[index]);
        let replies = match Replies::parse(reply, call.rows.len()..=call.rows.len()) {
            Ok(replies) => replies,
            Err(failure) => {
                for &index in &call.rows {
                    answers[index] = Some(failure.delivery(&what(index)));
                }
                return;
            }
        };
        for (&index, (status, error)) in call.rows.iter().zip(replies.rows()) {
            answers[index] = Some(match status {
                b'a' => Delivery::Delivered,
                b's' => {
                    tracing::trace!(event = %batch[index].id(), "redis cache: a newer change is stored; skipped");
                    Delivery::Delivered
                }
                b'm' => Delivery::rejected(self.missing(&batch[index])),
                b'd' => Delivery::Deferred,
                b'e' => script_error(error, &what(index)),
                other => Delivery::retry(format!(
                    "redis answered {} with the status `{}`, which sluice does not know",
                    what(index),
                    char::from(other).escape_default()
                )),
            });
        }
    }

    /// What a message calls the write of `event`: "the write of `items:1`".
    fn what(&self, event: &Event) -> String {
        match self.settings.key.render(event) {
            Ok(key) => format!("the write of `{key}`"),
            Err(_) => format!("the write of {}", event.id()),
        }
    }

    /// Why a merge found nothing to keep the unchanged columns from.
    fn missing(&self, event: &Event) -> String {
        let key = self.settings.key.render(event).unwrap_or_default();
        let stored = self.previous_key(event, &key).ok().flatten().unwrap_or(key);
        let columns: Vec<&str> = unknown_columns(event).collect();
        format!(
            "the stored row of `{stored}` is unknown, and this update does not carry its \
             unchanged TOAST column(s) {} (Postgres sends large values only when they change): \
             backfill the table into this sink (`sluice backfill`), or give it REPLICA IDENTITY \
             FULL so that updates carry them",
            columns.join(", ")
        )
    }

    /// The call that deletes (and tombstones) `keys` at `fence`, for a truncate.
    pub(crate) fn delete_command(&self, keys: &[String], fence: Fence) -> Cmd {
        let json = self.settings.format == Format::Json;
        let per_key = if json { 2 } else { 1 };
        let mut cmd = Cmd::with_capacity(4 + keys.len() * (per_key + 2), keys.len() * 96);
        cmd.arg("EVALSHA")
            .arg(&self.script.sha)
            .arg_int((keys.len() * per_key) as u64);
        for key in keys {
            cmd.arg_concat(&[key.as_bytes()]);
            if json {
                cmd.arg_concat(&[key.as_bytes(), FENCE_SUFFIX.as_bytes()]);
            }
        }
        cmd.arg_int(self.settings.ttl_ms)
            .arg_int(self.settings.tombstone_ms);
        for _ in keys {
            cmd.arg_concat(&[fence.as_bytes()]).arg("d");
        }
        cmd
    }

    /// Whether a truncate's delete call went through: `Err` for the first key that failed.
    pub(crate) fn deleted(&self, keys: &[String], reply: &Value) -> Result<(), Delivery> {
        let what = |key: &str| format!("the truncate's delete of `{key}`");
        let replies = match Replies::parse(reply, keys.len()..=keys.len()) {
            Ok(replies) => replies,
            Err(failure) => return Err(failure.delivery(&what(&keys[0]))),
        };
        for (key, (status, error)) in keys.iter().zip(replies.rows()) {
            match status {
                b'a' | b's' => {}
                b'e' => return Err(script_error(error, &what(key))),
                _ => return Err(Delivery::retry(format!("{} was not applied", what(key)))),
            }
        }
        Ok(())
    }
}

/// The unchanged columns of an update that neither `after` nor a full `before` carries:
/// the script keeps their stored values.
fn unknown_columns(event: &Event) -> impl Iterator<Item = &str> + Clone {
    let after = event.after.as_ref();
    let before = event.before.as_ref();
    event.unchanged.iter().map(|c| &**c).filter(move |c| {
        after.is_some_and(|a| a.get(c).is_none()) && before.is_none_or(|b| b.get(c).is_none())
    })
}

/// `after` completed with the unchanged columns `before` holds (a table with REPLICA
/// IDENTITY FULL sends the old row whole).
fn completed(event: &Event) -> Cow<'_, Row> {
    let Some(after) = event.after.as_ref() else {
        return Cow::Owned(Row::default());
    };
    let mut row = Cow::Borrowed(after);
    let Some(before) = event.before.as_ref() else {
        return row;
    };
    for column in event.unchanged.iter() {
        if after.get(column).is_none() {
            if let Some(old) = before.0.iter().find(|c| c.name == *column) {
                row.to_mut().push(old.name.clone(), old.value.clone());
            }
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnTruncate;
    use crate::encode::args;
    use sluice_runtime::template::Template;
    use sluice_runtime::{testing, Value as V};

    fn cache(key: &str, format: Format) -> Cache {
        Cache::new(CacheSettings {
            key: Template::parse(key).unwrap(),
            format,
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

    fn update(id: i64, lsn: u64, index: u32) -> Event {
        let mut e = testing::event("items", Op::Update, lsn, index);
        e.key = Some(row(&[("id", V::Int(id))]));
        e.after = Some(row(&[("id", V::Int(id)), ("n", V::Int(5))]));
        e
    }

    #[test]
    fn unchanged_columns_come_from_a_full_before_when_it_has_them() {
        let mut e = update(1, 1, 0);
        e.after = Some(row(&[("id", V::Int(1)), ("title", V::Text("new".into()))]));
        e.unchanged = vec!["body".into(), "blob".into()];
        assert_eq!(*completed(&e), *e.after.as_ref().unwrap());
        assert_eq!(unknown_columns(&e).collect::<Vec<_>>(), ["body", "blob"]);

        e.before = Some(row(&[("id", V::Int(1)), ("body", V::Text("long".into()))]));
        assert_eq!(completed(&e).get("body"), Some(&V::Text("long".into())));
        assert_eq!(unknown_columns(&e).collect::<Vec<_>>(), ["blob"]);

        // A column a transform put back into `after` is not unchanged any more.
        e.after
            .as_mut()
            .unwrap()
            .push("blob".into(), V::Text("b".into()));
        assert_eq!(unknown_columns(&e).count(), 0);
    }

    #[test]
    fn a_key_change_is_seen_from_the_old_key_columns_in_before() {
        let c = cache("{table}:{key}", Format::Json);
        let mut e = update(2, 1, 0);
        assert_eq!(c.previous_key(&e, "items:2").unwrap(), None);
        e.before = Some(row(&[("id", V::Int(2)), ("n", V::Int(4))]));
        assert_eq!(c.previous_key(&e, "items:2").unwrap(), None);
        e.before = Some(row(&[("id", V::Int(1))]));
        assert_eq!(
            c.previous_key(&e, "items:2").unwrap().as_deref(),
            Some("items:1")
        );
        // The key template does not use the changed column: the same key.
        let by_table = cache("{table}", Format::Json);
        assert_eq!(by_table.previous_key(&e, "items").unwrap(), None);
    }

    #[test]
    fn events_need_no_write_and_bad_rows_are_rejected_before_sending() {
        let c = cache("{table}:{key}", Format::Json);
        let mut keyless = testing::event("items", Op::Insert, 1, 1);
        keyless.after = Some(row(&[("n", V::Int(1))]));
        let mut no_row = update(2, 1, 2);
        no_row.after = None;
        let batch = vec![
            Arc::new(testing::event("outbox", Op::Event, 1, 0)),
            Arc::new(keyless),
            Arc::new(no_row),
            Arc::new(update(2, 1, 3)),
            Arc::new(update(3, 1, 4)),
        ];
        let mut answers = vec![None; batch.len()];
        let mut notes = Notes::default();
        let calls = c.encode(&batch, 0..batch.len(), &mut answers, &mut notes);
        assert!(notes.events, "skipping op: event is logged once");
        assert_eq!(answers[0], Some(Delivery::Delivered));
        match &answers[1] {
            Some(Delivery::Rejected { reason }) => assert!(reason.contains("has none"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match &answers[2] {
            Some(Delivery::Rejected { reason }) => {
                assert!(reason.contains("without its new row"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(answers[3], Some(Delivery::Deferred), "its key waits");
        assert_eq!(answers[4], None, "sent");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].rows, [4]);
    }

    #[test]
    fn rows_become_one_call_with_keys_then_arguments() {
        let c = cache("{table}:{key}", Format::Json);
        let mut merge = update(1, 2, 1);
        merge.unchanged = vec!["body".into()];
        let mut moved = update(3, 2, 2);
        moved.before = Some(row(&[("id", V::Int(2))]));
        let mut delete = testing::event("items", Op::Delete, 2, 3);
        delete.key = Some(row(&[("id", V::Int(4))]));
        let batch: Vec<_> = [update(1, 2, 0), merge, moved, delete]
            .into_iter()
            .map(Arc::new)
            .collect();
        let mut answers = vec![None; batch.len()];
        let calls = c.encode(&batch, 0..4, &mut answers, &mut Notes::default());
        assert!(answers.iter().all(Option::is_none));
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].rows, [0, 1, 2, 3]);
        let fence = |i: u32| format!("0000000000000002{i:08x}00000000");
        let doc = |id: i64| format!(r#"{{"id":{id},"n":5}}"#);
        assert_eq!(
            args(&calls[0].cmd)[1..],
            [
                c.script.sha.clone(),
                "10".into(),
                "items:1".into(),
                "items:1:sluice".into(),
                "items:1".into(),
                "items:1:sluice".into(),
                "items:3".into(),
                "items:3:sluice".into(),
                "items:2".into(),
                "items:2:sluice".into(),
                "items:4".into(),
                "items:4:sluice".into(),
                "0".into(),
                "1000".into(),
                fence(0),
                "s".into(),
                doc(1),
                fence(1),
                "m".into(),
                doc(1),
                "1".into(),
                r#""body""#.into(),
                fence(2),
                "S".into(),
                doc(3),
                fence(3),
                "d".into(),
            ]
        );

        let h = cache("{table}:{key}", Format::Hash);
        let calls = h.encode(&batch, 1..3, &mut answers, &mut Notes::default());
        assert_eq!(
            args(&calls[0].cmd)[2..],
            [
                "3",
                "items:1",
                "items:3",
                "items:2",
                "0",
                "1000",
                &fence(1),
                "m",
                "2",
                "id",
                "1",
                "n",
                "5",
                "1",
                "body",
                &fence(2),
                "S",
                "2",
                "id",
                "3",
                "n",
                "5",
            ]
        );
    }

    #[test]
    fn a_hash_column_named_like_the_fence_is_rejected() {
        let h = cache("{table}:{key}", Format::Hash);
        let mut e = update(1, 1, 0);
        e.after
            .as_mut()
            .unwrap()
            .push(FENCE_FIELD.into(), V::Int(1));
        let mut answers = vec![None];
        let calls = h.encode(&[Arc::new(e)], 0..1, &mut answers, &mut Notes::default());
        assert!(calls.is_empty());
        assert!(
            matches!(&answers[0], Some(Delivery::Rejected { reason }) if reason.contains(FENCE_FIELD))
        );
    }

    #[test]
    fn statuses_become_deliveries() {
        let c = cache("{table}:{key}", Format::Json);
        let mut merge = update(1, 1, 4);
        merge.unchanged = vec!["body".into()];
        let batch: Vec<_> = [
            update(1, 1, 0),
            update(2, 1, 1),
            update(3, 1, 2),
            update(4, 1, 3),
            merge,
            update(5, 1, 5),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        let call = Call {
            cmd: Cmd::new(),
            rows: (0..6).collect(),
            group: 0,
        };
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            text("asedmx"),
            text("OOM command not allowed when used memory > 'maxmemory'."),
        ]);
        let mut answers = vec![None; 6];
        c.answer(&batch, &call, &reply, &mut answers);
        let answers: Vec<Delivery> = answers.into_iter().map(Option::unwrap).collect();
        assert_eq!(answers[..2], [Delivery::Delivered, Delivery::Delivered]);
        match &answers[2] {
            Delivery::Retry { reason, .. } => {
                assert!(
                    reason.contains("`items:3`") && reason.contains("OOM"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(answers[3], Delivery::Deferred);
        match &answers[4] {
            Delivery::Rejected { reason } => {
                assert!(reason.contains("`items:1` is unknown"), "{reason}");
                assert!(
                    reason.contains("body") && reason.contains("REPLICA IDENTITY FULL"),
                    "{reason}"
                );
                assert!(reason.contains("backfill"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(answers[5], Delivery::Retry { .. }),
            "an unknown status"
        );

        // A reply of the wrong shape answers every row of the call.
        let mut answers = vec![None; 6];
        c.answer(&batch, &call, &Value::Int(1), &mut answers);
        assert!(answers
            .iter()
            .all(|a| matches!(a, Some(Delivery::Retry { .. }))));
    }
}
