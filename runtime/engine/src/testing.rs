//! Events for the unit tests of sinks and stages, so each crate does not grow its own
//! builder. Not for production code: the source builds real events.

use std::sync::Arc;

use std::sync::Mutex;

use crate::chain::Chain;
use crate::config::DeliveryConfig;
use crate::driver::SinkDriver;
use crate::event::{Event, Op, Row, Source, Value};
use crate::journal::Journal;
use crate::lsn::{Lsn, Position};
use crate::progress::{Offset, Progress};
use crate::shutdown::Shutdown;
use crate::sink::Sink;
use crate::state::Store;

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

/// A driver of `sink` (named `s`, nothing committed yet) reading a fresh journal, with no
/// transforms; its progress is `progress.sinks()[0]`.
pub fn driver(
    sink: Box<dyn Sink>,
    delivery: DeliveryConfig,
    store: &Store,
) -> (SinkDriver, Arc<Journal>, Arc<Progress>) {
    let journal = Journal::memory(1024);
    let progress = Progress::new(vec![("s".into(), Offset::default())]);
    let driver = SinkDriver {
        sink,
        reader: journal.register(),
        journal: journal.clone(),
        delivery,
        progress: progress.sinks()[0].clone(),
        shutdown: Shutdown::new(),
        store: store.clone(),
        config_hash: "h".into(),
        pipeline_chain: Arc::new(Mutex::new(Chain::default())),
        chain: Chain::default(),
        tables: Default::default(),
    };
    (driver, journal, progress)
}

/// Pipeline-file tests: a small valid pipeline (Postgres to a webhook), whose lines tests
/// change with [`with_lines`]. `${DATABASE_URL}` must be set.
pub const PIPELINE: &[&str] = &[
    "pipeline: orders",               // 1
    "source:",                        // 2
    "  type: postgres",               // 3
    "  url: ${DATABASE_URL}",         // 4
    "  tables: [public.orders]",      // 5
    "sinks:",                         // 6
    "  notify:",                      // 7
    "    type: webhook",              // 8
    "    url: http://127.0.0.1:8080", // 9
];

/// Pipeline-file tests: the file whose line `n` is `lines[n - 1]`.
pub fn yaml(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// Pipeline-file tests: `base` with line `n` replaced by `text` for each `(n, text)`; a
/// line past the end is appended.
pub fn with_lines(base: &[&'static str], changes: &[(usize, &'static str)]) -> Vec<&'static str> {
    let mut lines = base.to_vec();
    for &(line, text) in changes {
        if line > lines.len() {
            lines.push(text);
        } else {
            lines[line - 1] = text;
        }
    }
    lines
}

/// Pipeline-file tests: the error of a rejected file, after checking that it points at
/// `line`, `column` and `key`.
#[track_caller]
pub fn rejected_at<T>(
    result: Result<T, crate::config::ConfigError>,
    line: usize,
    column: usize,
    key: &str,
) -> crate::config::ConfigError {
    let Err(e) = result else {
        panic!("the file should be rejected (at {line}:{column} {key})")
    };
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (line, column, key),
        "wrong place for: {e}"
    );
    e
}
