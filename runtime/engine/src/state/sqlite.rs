//! [`SqliteStore`]: offsets, sink status and dead-letter queues in an embedded SQLite file.
//!
//! One file per pipeline (`state:`), WAL journal mode, `synchronous=FULL`: an offset that
//! was committed here survives kill -9 and power loss, which matters because the slot is
//! allowed to forget WAL up to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::{Offsets, SinkRecord, StateError};
use crate::lsn::{Lsn, Position};
use crate::progress::Offset;

/// The state store in one SQLite file (or in memory, for tests).
pub struct SqliteStore {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
}

const SCHEMA: &str = "
create table if not exists meta (key text primary key, value text not null);
create table if not exists sink_offsets (
    sink text primary key,
    commit_lsn integer not null,
    idx integer not null,
    flush_lsn integer not null,
    commit_ts integer not null,
    updated_at integer not null
);
create table if not exists dlq (
    id integer primary key autoincrement,
    sink text not null,
    event_id text not null,
    commit_lsn integer not null,
    idx integer not null,
    ordering_key text,
    original blob not null,
    failed blob not null,
    stage text not null,
    error_kind text not null,
    error text not null,
    attempts integer not null,
    first_failed_at integer not null,
    last_failed_at integer not null,
    config_hash text not null,
    state text not null,
    held_behind text,
    unique (sink, event_id)
);
create index if not exists dlq_by_sink on dlq (sink, state, commit_lsn, idx);
create table if not exists sink_status (
    sink text primary key,
    state text not null,
    reason text,
    updated_at integer not null
);
";

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Turns errors of the store at `path` into [`StateError`]s that name it.
pub(super) fn error_at(path: &Path) -> impl Fn(rusqlite::Error) -> StateError + Copy + '_ {
    move |source| StateError {
        store: path.display().to_string(),
        source: source.into(),
    }
}

impl SqliteStore {
    /// Open (and create, with its folder) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let err = error_at(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StateError {
                store: path.display().to_string(),
                source: e.into(),
            })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.execute_batch(super::backfill::SCHEMA).map_err(err)?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// A store that lives in memory and ends with it: unit tests need no file.
    pub fn in_memory() -> Self {
        let conn = Connection::open_in_memory().expect("an in-memory SQLite database");
        conn.execute_batch(SCHEMA).expect("the schema applies");
        conn.execute_batch(super::backfill::SCHEMA)
            .expect("the schema applies");
        SqliteStore {
            conn,
            path: PathBuf::from(":memory:"),
        }
    }

    /// Open an existing store read-only-ish for inspection; `None` when there is none.
    pub fn open_existing(path: &Path) -> Result<Option<Self>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open(path).map(Some)
    }

    pub(super) fn err(&self, source: rusqlite::Error) -> StateError {
        error_at(&self.path)(source)
    }
}

/// The meta key of a sink's waiting rewind.
fn rewind_key(sink: &str) -> String {
    format!("rewind:{sink}")
}

/// `commit_lsn index flush_lsn commit_ts`, the way a rewind request is kept.
fn offset_text(o: &Offset) -> String {
    format!(
        "{} {} {} {}",
        o.position.commit_lsn.0, o.position.index, o.flush_lsn.0, o.commit_ts_micros
    )
}

fn parse_offset(text: &str) -> Option<Offset> {
    let mut parts = text.split(' ');
    let mut next = || parts.next()?.parse::<i64>().ok();
    Some(Offset {
        position: Position::new(Lsn(next()? as u64), next()? as u32),
        flush_lsn: Lsn(next()? as u64),
        commit_ts_micros: next()?,
    })
}

impl Offsets for SqliteStore {
    fn request_rewind(&self, sink: &str, to: Offset) -> Result<(), StateError> {
        self.set_meta(&rewind_key(sink), &offset_text(&to))?;
        self.bump_version()
    }

    fn rewind_request(&self, sink: &str) -> Result<Option<Offset>, StateError> {
        Ok(self
            .meta(&rewind_key(sink))?
            .as_deref()
            .and_then(parse_offset))
    }

    fn apply_rewind(&mut self, sink: &str) -> Result<Option<Offset>, StateError> {
        let err = error_at(&self.path);
        let key = rewind_key(sink);
        let tx = self.conn.transaction().map_err(err)?;
        let text: Option<String> = tx
            .query_row("select value from meta where key = ?1", [&key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        let Some(offset) = text.as_deref().and_then(parse_offset) else {
            return Ok(None);
        };
        tx.execute(
            "insert into sink_offsets (sink, commit_lsn, idx, flush_lsn, commit_ts, updated_at)
             values (?1, ?2, ?3, ?4, ?5, ?6)
             on conflict (sink) do update set commit_lsn = ?2, idx = ?3, flush_lsn = ?4,
                commit_ts = ?5, updated_at = ?6",
            params![
                sink,
                offset.position.commit_lsn.0 as i64,
                offset.position.index as i64,
                offset.flush_lsn.0 as i64,
                offset.commit_ts_micros,
                now()
            ],
        )
        .map_err(err)?;
        tx.execute("delete from meta where key = ?1", [&key])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Some(offset))
    }

    fn offsets(&self) -> Result<HashMap<String, Offset>, StateError> {
        let mut stmt = self
            .conn
            .prepare("select sink, commit_lsn, idx, flush_lsn, commit_ts from sink_offsets")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Offset {
                        position: Position::new(
                            Lsn(r.get::<_, i64>(1)? as u64),
                            r.get::<_, i64>(2)? as u32,
                        ),
                        flush_lsn: Lsn(r.get::<_, i64>(3)? as u64),
                        commit_ts_micros: r.get(4)?,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn save_offsets(&mut self, offsets: &[(String, Offset)]) -> Result<(), StateError> {
        let err = error_at(&self.path);
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "insert into sink_offsets (sink, commit_lsn, idx, flush_lsn, commit_ts, updated_at)
                     values (?1, ?2, ?3, ?4, ?5, ?6)
                     on conflict (sink) do update set commit_lsn = ?2, idx = ?3, flush_lsn = ?4,
                        commit_ts = ?5, updated_at = ?6",
                )
                .map_err(err)?;
            for (sink, o) in offsets {
                stmt.execute(params![
                    sink,
                    o.position.commit_lsn.0 as i64,
                    o.position.index as i64,
                    o.flush_lsn.0 as i64,
                    o.commit_ts_micros,
                    now()
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn set_sink_status(
        &self,
        sink: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "insert into sink_status (sink, state, reason, updated_at) values (?1, ?2, ?3, ?4)
                 on conflict (sink) do update set state = ?2, reason = ?3, updated_at = ?4",
                params![sink, state, reason, now()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    fn sinks(&self) -> Result<HashMap<String, SinkRecord>, StateError> {
        let mut out: HashMap<String, SinkRecord> = self
            .offsets()?
            .into_iter()
            .map(|(k, offset)| {
                (
                    k,
                    SinkRecord {
                        offset,
                        state: "running".into(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let mut stmt = self
            .conn
            .prepare("select sink, state, reason, updated_at from sink_status")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (sink, state, reason, updated_at): (String, String, Option<String>, i64) =
                row.map_err(|e| self.err(e))?;
            let rec = out.entry(sink).or_default();
            rec.state = state;
            rec.reason = reason;
            rec.updated_at = updated_at;
        }
        Ok(out)
    }

    fn clear_trip(&self, sink: &str) -> Result<bool, StateError> {
        self.conn
            .execute(
                "update sink_status set state = 'running', reason = null, updated_at = ?2
                  where sink = ?1 and state = ?3",
                params![sink, now(), super::TRIPPED],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        self.conn
            .query_row("select value from meta where key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "insert into meta (key, value) values (?1, ?2) on conflict (key) do update set value = ?2",
                [key, value],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    fn clear(&self) -> Result<(), StateError> {
        self.conn
            .execute_batch(
                "delete from sink_offsets; delete from sink_status; delete from backfills;
                 delete from meta where key != 'dlq_version';",
            )
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_status_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("sluice-state-{}", std::process::id()));
        let path = dir.join("nested/p.db");
        let off = Offset {
            position: Position::new(Lsn(0xFFFF_FFFF_0000_0001), 7),
            flush_lsn: Lsn(0xFFFF_FFFF_0000_0010),
            commit_ts_micros: 42,
        };
        {
            let mut s = SqliteStore::open(&path).unwrap();
            s.save_offsets(&[("hook".into(), off)]).unwrap();
            s.set_sink_status("hook", "stopped", Some("410 Gone"))
                .unwrap();
            s.set_meta("system_id", "123").unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.offsets().unwrap()["hook"], off);
        let rec = &s.sinks().unwrap()["hook"];
        assert_eq!(
            (rec.state.as_str(), rec.reason.as_deref()),
            ("stopped", Some("410 Gone"))
        );
        assert_eq!(s.meta("system_id").unwrap().as_deref(), Some("123"));
        s.clear().unwrap();
        assert!(s.offsets().unwrap().is_empty());
        assert!(s.sinks().unwrap().is_empty());
        assert_eq!(s.meta("system_id").unwrap(), None);
        std::fs::remove_dir_all(dir).ok();
    }
}
