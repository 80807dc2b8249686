//! Events for the unit tests of sinks and stages, so each crate does not grow its own
//! builder. Not for production code: the source builds real events.

use std::sync::Arc;

use crate::event::{Event, Op, Row, Source, Value};
use crate::lsn::{Lsn, Position};

/// An event of `op` on `public.<table>` at `index` of the transaction committed at
/// `commit_lsn`, with no rows.
pub fn event(table: &str, op: Op, commit_lsn: u64, index: u32) -> Event {
    let source = Source {
        pipeline: "p".into(),
        schema: Some("public".into()),
        table: Some(table.into()),
        lsn: Lsn(commit_lsn),
        commit_lsn: Lsn(commit_lsn),
        xid: Some(7),
        ts_micros: 0,
    };
    Event::new(Position::new(Lsn(commit_lsn), index), op, source)
}

/// A row with the one column `id`.
pub fn id_row(id: i64) -> Row {
    let mut row = Row::default();
    row.push("id".into(), Value::Int(id));
    row
}

/// An insert into `public.<table>` at `index` of the transaction committed at
/// `commit_lsn`, with `key` and `after` = `{"id": index}`.
pub fn insert(table: &str, commit_lsn: u64, index: u32) -> Arc<Event> {
    let mut e = event(table, Op::Insert, commit_lsn, index);
    e.after = Some(id_row(index.into()));
    e.key = Some(id_row(index.into()));
    Arc::new(e)
}
