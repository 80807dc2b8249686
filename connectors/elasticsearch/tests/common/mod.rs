//! Events with realistic change LSNs, sinks over the stand-in, and answer names, for the
//! Elasticsearch sink's scenarios.

#![allow(dead_code)]

use std::sync::Arc;

use serde_json::Value as Json;
use sluice_elasticsearch::{ElasticsearchConfig, ElasticsearchSink};
use sluice_runtime::{Delivery, Event, Lsn, Op, Position, Row, Sink, Source, Value};
use sluice_testkit::elasticsearch::Elasticsearch;

/// A change of `public.<table>` row `id` whose own LSN is `lsn` (its transaction commits
/// just after), with `after` = `id` and `columns` (for inserts and updates) or `before` =
/// the key (for deletes).
pub fn change_of(table: &str, op: Op, lsn: u64, id: i64, columns: &[(&str, Value)]) -> Arc<Event> {
    let source = Source {
        pipeline: "shop".into(),
        schema: Some("public".into()),
        table: Some(table.into()),
        lsn: Lsn(lsn),
        commit_lsn: Lsn(lsn + 8),
        xid: Some(1),
        ts_micros: 0,
    };
    let mut e = Event::new(Position::new(Lsn(lsn + 8), 0), op, source);
    let key = id_row(id);
    match op {
        Op::Delete => e.before = Some(key.clone()),
        _ => {
            let mut after = key.clone();
            for (name, value) in columns {
                after.push(Arc::from(*name), value.clone());
            }
            e.after = Some(after);
        }
    }
    e.key = Some(key);
    Arc::new(e)
}

/// [`change_of`] on `orders`.
pub fn change(op: Op, lsn: u64, id: i64, columns: &[(&str, Value)]) -> Arc<Event> {
    change_of("orders", op, lsn, id, columns)
}

/// An insert or update of `orders` row `id` with `status`.
pub fn status(op: Op, lsn: u64, id: i64, status: &str) -> Arc<Event> {
    change(op, lsn, id, &[("status", text(status))])
}

/// A truncate of `public.<table>` at `lsn`.
pub fn truncate(table: &str, lsn: u64) -> Arc<Event> {
    let e = change_of(table, Op::Truncate, lsn, 0, &[]);
    let mut e = (*e).clone();
    e.key = None;
    e.after = None;
    Arc::new(e)
}

pub fn id_row(id: i64) -> Row {
    let mut row = Row::default();
    row.push("id".into(), Value::Int(id));
    row
}

pub fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// The stand-in's default config: defaults but the URL.
pub fn config(es: &Elasticsearch) -> ElasticsearchConfig {
    ElasticsearchConfig::new(es.url())
}

pub fn sink(es: &Elasticsearch) -> ElasticsearchSink {
    ElasticsearchSink::new(config(es)).unwrap()
}

pub fn names(answers: &[Delivery]) -> Vec<&'static str> {
    answers
        .iter()
        .map(|d| match d {
            Delivery::Delivered => "delivered",
            Delivery::Retry { .. } => "retry",
            Delivery::Deferred => "deferred",
            Delivery::Rejected { .. } => "rejected",
            _ => "other",
        })
        .collect()
}

/// Write `batch` and check there is one answer per event.
pub async fn write(sink: &mut ElasticsearchSink, batch: &[Arc<Event>]) -> Vec<Delivery> {
    let answers = sink.write(batch).await;
    assert_eq!(answers.len(), batch.len(), "one answer per event");
    answers
}

/// `orders/<id>`'s source, if stored.
pub fn source(es: &Elasticsearch, id: i64) -> Option<Json> {
    es.doc("orders", &id.to_string()).map(|d| d.source)
}

/// `orders/<id>`'s version, if stored.
pub fn version(es: &Elasticsearch, id: i64) -> Option<i64> {
    es.doc("orders", &id.to_string()).map(|d| d.version)
}
