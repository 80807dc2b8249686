//! Backfills in the state store: what `sluice backfill` asked for, and how far each got.
//!
//! A request is one table for some sinks (or every sink). The command line records it; the
//! running source reads the store every second, starts what is pending, records its
//! progress after each chunk the slot may forget (the chunk cursor, rows copied), and ends
//! it `done`, `failed` (with why) or `cancelled` (`sluice backfill --cancel`, seen at the
//! next chunk). A stopped pipeline finds its pending and running backfills at its next start
//! and resumes each at its cursor.

use std::fmt;

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::sqlite::SqliteStore;
use super::StateError;

/// Where a backfill stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackfillState {
    /// Recorded, not started yet.
    Pending,
    /// Copying chunks.
    Running,
    /// Every row was copied.
    Done,
    /// `sluice backfill --cancel` stopped it.
    Cancelled,
    /// It cannot go on (see its error); nothing more is copied.
    Failed,
}

impl BackfillState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillState::Pending => "pending",
            BackfillState::Running => "running",
            BackfillState::Done => "done",
            BackfillState::Cancelled => "cancelled",
            BackfillState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> BackfillState {
        match text {
            "pending" => BackfillState::Pending,
            "running" => BackfillState::Running,
            "done" => BackfillState::Done,
            "cancelled" => BackfillState::Cancelled,
            _ => BackfillState::Failed,
        }
    }

    /// Pending or running: the source still has work for it.
    pub fn is_active(self) -> bool {
        matches!(self, BackfillState::Pending | BackfillState::Running)
    }
}

impl fmt::Display for BackfillState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backfill to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBackfill {
    /// The captured table, `schema.table` as the pipeline names it.
    pub table: String,
    /// The sinks that receive its rows; empty: every sink.
    pub sinks: Vec<String>,
    /// A SQL condition the copied rows meet (`--where`, or the table's `where:`).
    pub filter: Option<String>,
}

/// A recorded backfill.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Backfill {
    pub id: i64,
    pub table: String,
    /// Empty: every sink.
    pub sinks: Vec<String>,
    #[serde(rename = "where")]
    pub filter: Option<String>,
    pub state: BackfillState,
    /// The source's chunk cursor (opaque here): where the next chunk starts.
    #[serde(skip)]
    pub cursor: Option<String>,
    /// Rows copied into the stream and confirmed (the slot may forget them).
    pub rows: i64,
    /// Rows the table is expected to hold (the planner's estimate), when known.
    pub estimate: Option<i64>,
    /// Chunks confirmed.
    pub chunks: i64,
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl Backfill {
    /// Rows per second since it started, once it has copied something.
    pub fn rate(&self) -> Option<f64> {
        let end = self.finished_at.unwrap_or(self.updated_at);
        let secs = (end - self.started_at?) as f64 / 1000.0;
        (self.rows > 0 && secs > 0.0).then(|| self.rows as f64 / secs)
    }

    /// Seconds left at the rate so far, while running with an estimate.
    pub fn eta_secs(&self) -> Option<f64> {
        if self.state != BackfillState::Running {
            return None;
        }
        let left = (self.estimate? - self.rows).max(0) as f64;
        Some(left / self.rate()?)
    }

    /// `every sink` or the sinks' names.
    pub fn sinks_text(&self) -> String {
        match self.sinks.is_empty() {
            true => "every sink".to_string(),
            false => self.sinks.join(", "),
        }
    }

    /// The record as `/status` and `status --json` show it.
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a backfill encodes as JSON");
        v["rate"] = self
            .rate()
            .map_or(serde_json::Value::Null, |r| (r.round() as i64).into());
        v["eta_secs"] = self
            .eta_secs()
            .map_or(serde_json::Value::Null, |s| (s.ceil() as i64).into());
        v
    }
}

/// What a source records after a chunk (or at the end).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackfillProgress {
    pub cursor: Option<String>,
    /// Rows added by this chunk.
    pub rows: i64,
    pub estimate: Option<i64>,
    /// A new state, when it changes.
    pub state: Option<BackfillState>,
    pub error: Option<String>,
}

/// Backfill requests and their progress.
///
/// Contract: a method that returns `Ok` has made its change durable. Requests and
/// cancellations come from another process (`sluice backfill`).
pub trait Backfills {
    /// Record backfills, all or none; returns their ids in order.
    fn backfill_request(&mut self, requests: &[NewBackfill]) -> Result<Vec<i64>, StateError>;
    /// Every backfill recorded, oldest first.
    fn backfills(&self) -> Result<Vec<Backfill>, StateError>;
    /// One backfill.
    fn backfill(&self, id: i64) -> Result<Option<Backfill>, StateError>;
    /// Cancel the pending and running backfills (those of `ids` only, when given).
    /// Returns how many were cancelled.
    fn backfill_cancel(&self, ids: Option<&[i64]>) -> Result<usize, StateError>;
    /// Record a chunk's progress or a change of state. A cancelled backfill stays
    /// cancelled: progress recorded after the cancellation does not revive it.
    fn backfill_progress(&self, id: i64, progress: &BackfillProgress) -> Result<(), StateError>;
}

pub(super) const SCHEMA: &str = "
create table if not exists backfills (
    id integer primary key autoincrement,
    table_name text not null,
    sinks text not null,
    filter text,
    state text not null,
    cursor text,
    rows integer not null default 0,
    estimate integer,
    chunks integer not null default 0,
    error text,
    created_at integer not null,
    started_at integer,
    updated_at integer not null,
    finished_at integer
);
";

fn millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const COLUMNS: &str = "id, table_name, sinks, filter, state, cursor, rows, estimate, chunks, \
                       error, created_at, started_at, updated_at, finished_at";

fn read(r: &Row) -> rusqlite::Result<Backfill> {
    let sinks: String = r.get(2)?;
    let state: String = r.get(4)?;
    Ok(Backfill {
        id: r.get(0)?,
        table: r.get(1)?,
        sinks: serde_json::from_str(&sinks).unwrap_or_default(),
        filter: r.get(3)?,
        state: BackfillState::parse(&state),
        cursor: r.get(5)?,
        rows: r.get(6)?,
        estimate: r.get(7)?,
        chunks: r.get(8)?,
        error: r.get(9)?,
        created_at: r.get(10)?,
        started_at: r.get(11)?,
        updated_at: r.get(12)?,
        finished_at: r.get(13)?,
    })
}

impl Backfills for SqliteStore {
    fn backfill_request(&mut self, requests: &[NewBackfill]) -> Result<Vec<i64>, StateError> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| super::sqlite::error_at(&self.path)(e))?;
        let mut ids = Vec::with_capacity(requests.len());
        let now = millis();
        for r in requests {
            let sinks = serde_json::to_string(&r.sinks).expect("names encode as JSON");
            tx.execute(
                "insert into backfills (table_name, sinks, filter, state, created_at, updated_at)
                 values (?1, ?2, ?3, 'pending', ?4, ?4)",
                params![r.table, sinks, r.filter, now],
            )
            .map_err(|e| super::sqlite::error_at(&self.path)(e))?;
            ids.push(tx.last_insert_rowid());
        }
        tx.commit()
            .map_err(|e| super::sqlite::error_at(&self.path)(e))?;
        Ok(ids)
    }

    fn backfills(&self) -> Result<Vec<Backfill>, StateError> {
        let mut stmt = self
            .conn
            .prepare(&format!("select {COLUMNS} from backfills order by id"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], read)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    fn backfill(&self, id: i64) -> Result<Option<Backfill>, StateError> {
        self.conn
            .query_row(
                &format!("select {COLUMNS} from backfills where id = ?1"),
                [id],
                read,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn backfill_cancel(&self, ids: Option<&[i64]>) -> Result<usize, StateError> {
        let now = millis();
        let active = "state in ('pending', 'running')";
        match ids {
            None => self
                .conn
                .execute(
                    &format!(
                        "update backfills set state = 'cancelled', updated_at = ?1, finished_at = ?1
                         where {active}"
                    ),
                    [now],
                )
                .map_err(|e| self.err(e)),
            Some(ids) => {
                let mut n = 0;
                for id in ids {
                    n += self
                        .conn
                        .execute(
                            &format!(
                                "update backfills set state = 'cancelled', updated_at = ?1,
                                 finished_at = ?1 where id = ?2 and {active}"
                            ),
                            [now, *id],
                        )
                        .map_err(|e| self.err(e))?;
                }
                Ok(n)
            }
        }
    }

    fn backfill_progress(&self, id: i64, p: &BackfillProgress) -> Result<(), StateError> {
        let now = millis();
        let state = p.state.map(BackfillState::as_str);
        let finished = p.state.filter(|s| !s.is_active()).map(|_| now);
        self.conn
            .execute(
                "update backfills set
                    cursor = coalesce(?2, cursor),
                    rows = rows + ?3,
                    chunks = chunks + (?3 > 0 or ?2 is not null),
                    estimate = coalesce(?4, estimate),
                    state = coalesce(?5, state),
                    error = coalesce(?6, error),
                    started_at = coalesce(started_at, ?7),
                    updated_at = ?7,
                    finished_at = coalesce(?8, finished_at)
                 where id = ?1 and state != 'cancelled'",
                params![id, p.cursor, p.rows, p.estimate, state, p.error, now, finished],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(table: &str, sinks: &[&str]) -> NewBackfill {
        NewBackfill {
            table: table.into(),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
            filter: None,
        }
    }

    #[test]
    fn requests_progress_and_end() {
        let mut store = SqliteStore::in_memory();
        let ids = store
            .backfill_request(&[request("public.a", &["search"]), request("public.b", &[])])
            .unwrap();
        assert_eq!(ids.len(), 2);
        let all = store.backfills().unwrap();
        assert_eq!(all[0].state, BackfillState::Pending);
        assert_eq!(all[0].sinks, ["search"]);
        assert_eq!(all[1].sinks_text(), "every sink");

        let chunk = BackfillProgress {
            cursor: Some("[\"10\"]".into()),
            rows: 10,
            estimate: Some(40),
            state: Some(BackfillState::Running),
            error: None,
        };
        store.backfill_progress(ids[0], &chunk).unwrap();
        let second = BackfillProgress {
            cursor: Some("[\"20\"]".into()),
            rows: 10,
            ..Default::default()
        };
        store.backfill_progress(ids[0], &second).unwrap();
        let b = store.backfill(ids[0]).unwrap().unwrap();
        assert_eq!((b.rows, b.chunks, b.estimate), (20, 2, Some(40)));
        assert_eq!(b.cursor.as_deref(), Some("[\"20\"]"));
        assert_eq!(b.state, BackfillState::Running);
        assert!(b.started_at.is_some() && b.finished_at.is_none());

        let done = BackfillProgress {
            state: Some(BackfillState::Done),
            ..Default::default()
        };
        store.backfill_progress(ids[0], &done).unwrap();
        let b = store.backfill(ids[0]).unwrap().unwrap();
        assert_eq!((b.state, b.chunks), (BackfillState::Done, 2));
        assert!(b.finished_at.is_some());
        assert!(b.json()["eta_secs"].is_null());
    }

    #[test]
    fn a_cancelled_backfill_stays_cancelled() {
        let mut store = SqliteStore::in_memory();
        let ids = store
            .backfill_request(&[request("public.a", &[]), request("public.b", &[])])
            .unwrap();
        store
            .backfill_progress(
                ids[1],
                &BackfillProgress {
                    state: Some(BackfillState::Done),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            store.backfill_cancel(None).unwrap(),
            1,
            "done ones stay done"
        );
        let late = BackfillProgress {
            rows: 5,
            state: Some(BackfillState::Running),
            ..Default::default()
        };
        store.backfill_progress(ids[0], &late).unwrap();
        let a = store.backfill(ids[0]).unwrap().unwrap();
        assert_eq!((a.state, a.rows), (BackfillState::Cancelled, 0));
        assert_eq!(store.backfill_cancel(Some(&ids)).unwrap(), 0);
    }

    #[test]
    fn rate_and_eta_follow_the_rows() {
        let b = Backfill {
            id: 1,
            table: "public.a".into(),
            sinks: vec![],
            filter: None,
            state: BackfillState::Running,
            cursor: None,
            rows: 500,
            estimate: Some(1500),
            chunks: 5,
            error: None,
            created_at: 0,
            started_at: Some(1_000),
            updated_at: 6_000,
            finished_at: None,
        };
        assert_eq!(b.rate(), Some(100.0));
        assert_eq!(b.eta_secs(), Some(10.0));
        assert_eq!(b.json()["rate"], 100);
    }
}
