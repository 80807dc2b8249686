//! Events for the unit tests of sinks and stages, so each crate does not grow its own
//! builder. Not for production code: the source builds real events.

use std::sync::Arc;

use crate::event::{Event, Op, Row, Source, Value};
use crate::lsn::{Lsn, Position};

/// An insert into `public.<table>` at `index` of the transaction committed at
/// `commit_lsn`, with `key` and `after` = `{"id": index}`.
pub fn insert(table: &str, commit_lsn: u64, index: u32) -> Arc<Event> {
    let source = Source {
        pipeline: "p".into(),
        schema: Some("public".into()),
        table: Some(table.into()),
        lsn: Lsn(commit_lsn.saturating_sub(16)),
        commit_lsn: Lsn(commit_lsn),
        xid: Some(7),
        ts_micros: 0,
    };
    let mut e = Event::new(Position::new(Lsn(commit_lsn), index), Op::Insert, source);
    let mut key = Row::default();
    key.push("id".into(), Value::Int(index.into()));
    e.after = Some(key.clone());
    e.key = Some(key);
    Arc::new(e)
}
