//! Dead-letter queues: one per sink, rows in the `dlq` table.
//!
//! A row is written (and fsynced) before the sink's offset may pass its event, so kill -9
//! never loses a parked event; `(sink, event_id)` is unique, so an event is never parked
//! twice. `state` is `parked` (failed permanently), `held` (waiting behind a parked event of
//! the same key, `dlq.on_key: hold`) or `replay` (an operator asked to send it again; the
//! running pipeline picks it up within a second, or the next run does).

use std::collections::{HashMap, HashSet};

use rusqlite::{params, params_from_iter, OptionalExtension, Row};
use serde::Serialize;

use super::sqlite::{error_at, now};
use super::{DeadLetters, SqliteStore, StateError};
use crate::lsn::{Lsn, Position};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DlqState {
    Parked,
    Held,
    Replay,
}

impl DlqState {
    fn as_str(self) -> &'static str {
        match self {
            DlqState::Parked => "parked",
            DlqState::Held => "held",
            DlqState::Replay => "replay",
        }
    }

    fn parse(s: &str) -> DlqState {
        match s {
            "held" => DlqState::Held,
            "replay" => DlqState::Replay,
            _ => DlqState::Parked,
        }
    }
}

/// What a sink driver parks.
#[derive(Clone, Debug)]
pub struct NewDlqEntry {
    pub sink: String,
    /// The event's id (`<position>` or `<position>#k` for a fan-out event).
    pub event_id: String,
    pub position: Position,
    /// The event's ordering key (hex), for `on_key: hold`; `None` for a barrier.
    pub ordering_key: Option<String>,
    /// The envelope as the source produced it.
    pub original: Vec<u8>,
    /// The envelope as it reached the failing stage.
    pub failed: Vec<u8>,
    /// `sink`, or the name of the transform that failed.
    pub stage: String,
    /// `rejected` (the destination refused it), `held` (waiting behind another event).
    pub error_kind: String,
    pub error: String,
    /// Hash of the failing stage's configuration, to tell "failed before the fix" apart.
    pub config_hash: String,
    pub state: DlqState,
    /// For a held event: the id of the parked event it waits behind.
    pub held_behind: Option<String>,
}

/// A row of the DLQ.
#[derive(Clone, Debug, Serialize)]
pub struct DlqEntry {
    pub id: i64,
    pub sink: String,
    pub event_id: String,
    #[serde(skip)]
    pub position: Position,
    pub ordering_key: Option<String>,
    #[serde(serialize_with = "as_json")]
    pub original: Vec<u8>,
    #[serde(serialize_with = "as_json")]
    pub failed: Vec<u8>,
    pub stage: String,
    pub error_kind: String,
    pub error: String,
    pub attempts: i64,
    /// Microseconds since the Unix epoch; RFC 3339 in JSON.
    #[serde(serialize_with = "rfc3339")]
    pub first_failed_at: i64,
    #[serde(serialize_with = "rfc3339")]
    pub last_failed_at: i64,
    pub config_hash: String,
    pub state: DlqState,
    pub held_behind: Option<String>,
}

fn rfc3339<S: serde::Serializer>(micros: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::event::format_timestamp_micros(*micros))
}

fn as_json<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_slice::<&serde_json::value::RawValue>(bytes) {
        Ok(raw) => raw.serialize(s),
        Err(_) => s.serialize_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Which entries a command means: all of a sink's, or the given ids (row ids or event ids).
#[derive(Clone, Debug, Default)]
pub struct DlqFilter {
    pub sink: Option<String>,
    pub ids: Vec<String>,
}

impl DlqFilter {
    fn sql(&self) -> (String, Vec<String>) {
        let mut clauses = Vec::new();
        let mut args = Vec::new();
        if let Some(sink) = &self.sink {
            args.push(sink.clone());
            clauses.push(format!("sink = ?{}", args.len()));
        }
        if !self.ids.is_empty() {
            let mut any = Vec::new();
            for id in &self.ids {
                args.push(id.clone());
                let n = args.len();
                any.push(format!("(cast(id as text) = ?{n} or event_id = ?{n})"));
            }
            clauses.push(format!("({})", any.join(" or ")));
        }
        let sql = if clauses.is_empty() {
            String::new()
        } else {
            format!(" where {}", clauses.join(" and "))
        };
        (sql, args)
    }
}

const COLUMNS: &str = "id, sink, event_id, commit_lsn, idx, ordering_key, original, failed, stage, error_kind, \
                       error, attempts, first_failed_at, last_failed_at, config_hash, state, held_behind";

fn entry(r: &Row) -> rusqlite::Result<DlqEntry> {
    Ok(DlqEntry {
        id: r.get(0)?,
        sink: r.get(1)?,
        event_id: r.get(2)?,
        position: Position::new(Lsn(r.get::<_, i64>(3)? as u64), r.get::<_, i64>(4)? as u32),
        ordering_key: r.get(5)?,
        original: r.get(6)?,
        failed: r.get(7)?,
        stage: r.get(8)?,
        error_kind: r.get(9)?,
        error: r.get(10)?,
        attempts: r.get(11)?,
        first_failed_at: r.get(12)?,
        last_failed_at: r.get(13)?,
        config_hash: r.get(14)?,
        state: DlqState::parse(&r.get::<_, String>(15)?),
        held_behind: r.get(16)?,
    })
}

impl SqliteStore {
    /// Move [`DeadLetters::dlq_version`]: an operator changed the queue.
    pub(super) fn bump_version(&self) -> Result<(), StateError> {
        self.conn
            .execute(
                "insert into meta (key, value) values ('dlq_version', '1')
                 on conflict (key) do update set value = cast(cast(value as integer) + 1 as text)",
                [],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

impl DeadLetters for SqliteStore {
    /// An event parked before keeps its row: its attempts grow and its error and last
    /// failure time are updated.
    fn park(&mut self, entries: &[NewDlqEntry]) -> Result<(), StateError> {
        let err = error_at(&self.path);
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "insert into dlq (sink, event_id, commit_lsn, idx, ordering_key, original, failed, stage,
                                      error_kind, error, attempts, first_failed_at, last_failed_at, config_hash,
                                      state, held_behind)
                     values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 1, ?11, ?11, ?12, ?13, ?14)
                     on conflict (sink, event_id) do update set
                        failed = ?7, stage = ?8, error_kind = ?9, error = ?10, attempts = attempts + 1,
                        last_failed_at = ?11, config_hash = ?12, state = ?13, held_behind = ?14",
                )
                .map_err(err)?;
            let at = now_micros();
            for e in entries {
                stmt.execute(params![
                    e.sink,
                    e.event_id,
                    e.position.commit_lsn.0 as i64,
                    e.position.index as i64,
                    e.ordering_key,
                    e.original,
                    e.failed,
                    e.stage,
                    e.error_kind,
                    e.error,
                    at,
                    e.config_hash,
                    e.state.as_str(),
                    e.held_behind,
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn dlq_list(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, StateError> {
        let (clause, args) = filter.sql();
        let sql = format!("select {COLUMNS} from dlq{clause} order by sink, commit_lsn, idx");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params_from_iter(args.iter()), entry)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn dlq_in_state(&self, sink: &str, state: DlqState) -> Result<Vec<DlqEntry>, StateError> {
        let sql = format!(
            "select {COLUMNS} from dlq where sink = ?1 and state = ?2 order by commit_lsn, idx"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![sink, state.as_str()], entry)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn dlq_ids_after(&self, sink: &str, after: Position) -> Result<HashSet<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "select event_id from dlq where sink = ?1
                  and (commit_lsn > ?2 or (commit_lsn = ?2 and idx > ?3))",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![sink, after.commit_lsn.0 as i64, i64::from(after.index)],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn dlq_hold_heads(&self, sink: &str) -> Result<HashMap<String, String>, StateError> {
        // The first entry per key in stream order holds the key.
        let mut stmt = self
            .conn
            .prepare_cached(
                "select ordering_key, event_id from dlq
                  where sink = ?1 and held_behind is null and state != 'held' and ordering_key is not null
                  order by commit_lsn desc, idx desc",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([sink], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn dlq_version(&self) -> Result<u64, StateError> {
        let v: Option<String> = self
            .conn
            .query_row(
                "select value from meta where key = 'dlq_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    fn dlq_request_replay(&self, filter: &DlqFilter) -> Result<usize, StateError> {
        let (clause, args) = filter.sql();
        let ids: Vec<(i64, String, String)> = {
            let sql = format!("select id, sink, event_id from dlq{clause}");
            let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params_from_iter(args.iter()), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        let mut n = 0;
        for (id, sink, event_id) in ids {
            n += self
                .conn
                .execute("update dlq set state = 'replay' where id = ?1", [id])
                .map_err(|e| self.err(e))?;
            n += self
                .conn
                .execute(
                    "update dlq set state = 'replay' where sink = ?1 and held_behind = ?2 and state = 'held'",
                    params![sink, event_id],
                )
                .map_err(|e| self.err(e))?;
        }
        self.bump_version()?;
        Ok(n)
    }

    fn dlq_purge(&self, filter: &DlqFilter) -> Result<usize, StateError> {
        let doomed = self.dlq_list(filter)?;
        for e in &doomed {
            self.conn
                .execute("delete from dlq where id = ?1", [e.id])
                .map_err(|e| self.err(e))?;
            self.conn
                .execute(
                    "update dlq set state = 'replay', held_behind = null
                      where sink = ?1 and held_behind = ?2 and state = 'held'",
                    params![e.sink, e.event_id],
                )
                .map_err(|e| self.err(e))?;
        }
        self.bump_version()?;
        Ok(doomed.len())
    }

    fn dlq_resolve(&self, id: i64) -> Result<(), StateError> {
        self.conn
            .execute("delete from dlq where id = ?1", [id])
            .map(drop)
            .map_err(|e| self.err(e))
    }

    fn dlq_set_state(&self, id: i64, state: DlqState) -> Result<(), StateError> {
        self.conn
            .execute(
                "update dlq set state = ?2 where id = ?1",
                params![id, state.as_str()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    fn dlq_depths(&self) -> Result<Vec<(String, i64)>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("select sink, count(*) from dlq group by sink")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn dlq_before(&self, sink: &str, lsn: Lsn) -> Result<(i64, Option<String>), StateError> {
        self.conn
            .query_row(
                "select count(*), (select event_id from dlq where sink = ?1 and commit_lsn < ?2
                                    order by commit_lsn, idx limit 1)
                   from dlq where sink = ?1 and commit_lsn < ?2",
                params![sink, lsn.0 as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))
    }

    fn dlq_has_replay(&self, sink: &str) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "select exists (select 1 from dlq where sink = ?1 and state = 'replay')",
                [sink],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }
}

fn now_micros() -> i64 {
    now() * 1_000_000
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_micros() as i64)
            .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(sink: &str, index: u32, state: DlqState, held_behind: Option<&str>) -> NewDlqEntry {
        NewDlqEntry {
            sink: sink.into(),
            event_id: Position::new(Lsn(0x100), index).to_string(),
            position: Position::new(Lsn(0x100), index),
            ordering_key: Some("k".into()),
            original: br#"{"id":"x"}"#.to_vec(),
            failed: br#"{"id":"x"}"#.to_vec(),
            stage: "sink".into(),
            error_kind: "rejected".into(),
            error: "HTTP 422".into(),
            config_hash: "abc".into(),
            state,
            held_behind: held_behind.map(str::to_string),
        }
    }

    fn store() -> SqliteStore {
        SqliteStore::in_memory()
    }

    #[test]
    fn parking_twice_counts_attempts_instead_of_duplicating() {
        let mut s = store();
        s.park(&[new("a", 1, DlqState::Parked, None)]).unwrap();
        s.park(&[new("a", 1, DlqState::Parked, None)]).unwrap();
        let all = s.dlq_list(&DlqFilter::default()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].attempts, 2);
        assert_eq!(all[0].event_id, "0/100:1");
    }

    #[test]
    fn replay_brings_held_events_along_and_purge_releases_them() {
        let mut s = store();
        s.park(&[
            new("a", 1, DlqState::Parked, None),
            new("a", 2, DlqState::Held, Some("0/100:1")),
            new("b", 1, DlqState::Parked, None),
        ])
        .unwrap();
        let n = s
            .dlq_request_replay(&DlqFilter {
                sink: Some("a".into()),
                ids: vec!["0/100:1".into()],
            })
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(s.dlq_in_state("a", DlqState::Replay).unwrap().len(), 2);
        assert!(s.dlq_has_replay("a").unwrap() && !s.dlq_has_replay("b").unwrap());

        s.park(&[
            new("c", 1, DlqState::Parked, None),
            new("c", 2, DlqState::Held, Some("0/100:1")),
        ])
        .unwrap();
        let gone = s
            .dlq_purge(&DlqFilter {
                sink: Some("c".into()),
                ids: vec!["0/100:1".into()],
            })
            .unwrap();
        assert_eq!(gone, 1);
        let c = s
            .dlq_list(&DlqFilter {
                sink: Some("c".into()),
                ids: vec![],
            })
            .unwrap();
        assert_eq!(
            (c.len(), c[0].state),
            (1, DlqState::Replay),
            "the held event is released"
        );
        let depths = s.dlq_depths().unwrap();
        assert!(depths.contains(&("b".to_string(), 1)));
    }

    #[test]
    fn operators_move_the_version_and_the_driver_reads_only_what_it_needs() {
        let mut s = store();
        assert_eq!(s.dlq_version().unwrap(), 0);
        s.park(&[
            new("a", 1, DlqState::Parked, None),
            new("a", 2, DlqState::Held, Some("0/100:1")),
            new("a", 3, DlqState::Parked, None),
        ])
        .unwrap();
        assert_eq!(
            s.dlq_version().unwrap(),
            0,
            "parking is the driver's own doing"
        );
        let ids = s.dlq_ids_after("a", Position::new(Lsn(0x100), 1)).unwrap();
        assert_eq!(
            ids,
            HashSet::from(["0/100:2".to_string(), "0/100:3".to_string()])
        );
        let heads = s.dlq_hold_heads("a").unwrap();
        assert_eq!(
            heads,
            HashMap::from([("k".to_string(), "0/100:1".to_string())])
        );
        let one = DlqFilter {
            sink: None,
            ids: vec!["0/100:3".into()],
        };
        s.dlq_request_replay(&one).unwrap();
        assert_eq!(s.dlq_version().unwrap(), 1);
        s.dlq_purge(&one).unwrap();
        assert_eq!(s.dlq_version().unwrap(), 2);
    }
}
