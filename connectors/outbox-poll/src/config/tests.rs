//! The `postgres_outbox_poll` source's keys, read from whole pipeline files.

use std::path::Path;

use sluice_runtime::config::{load_str, ConfigError, Pipeline, SinkSection};
use sluice_runtime::registry::{Registry, SinkType};
use sluice_runtime::testing::rejected_at;

use super::*;

fn unbuilt_sink(_: &SinkSection) -> Result<Box<dyn sluice_runtime::Sink>, ConfigError> {
    unreachable!("the loader builds no sink")
}

const REGISTRY: Registry = Registry {
    sources: &[crate::SOURCE],
    sinks: &[SinkType {
        name: "webhook",
        build: unbuilt_sink,
    }],
};

fn load(source: &[&str]) -> Result<(Pipeline, PollConfig), ConfigError> {
    let mut lines = vec![
        "pipeline: relay",
        "source:",
        "  type: postgres_outbox_poll",
        "  url: ${DATABASE_URL}",
    ];
    lines.extend_from_slice(source);
    lines.push("sinks: { notify: { type: webhook, url: http://h } }");
    let text = lines.join("\n") + "\n";
    let p = load_str(&text, Path::new("pipelines/x.yaml"), &REGISTRY, &|name| {
        (name == "DATABASE_URL").then(|| "postgres://relay:hunter2@db/app".to_string())
    })?;
    let config = PollConfig::from_section(&p.source)?;
    Ok((p, config))
}

#[track_caller]
fn fails(source: &[&str], line: usize, column: usize, key: &str) -> ConfigError {
    let e = rejected_at(load(source), line, column, key);
    assert!(!e.to_string().contains("hunter2"), "{e}");
    e
}

#[test]
fn defaults() {
    let (_, c) = load(&[]).unwrap();
    assert_eq!(c.table, TableName::new("public", "outbox"));
    assert_eq!(c.columns, OutboxColumns::default());
    assert_eq!(c.poll_interval, Duration::from_millis(500));
    assert_eq!(c.batch_size, 500);
    assert_eq!(c.after_publish, AfterPublish::Delete);
}

#[test]
fn every_key() {
    let (_, c) = load(&[
        "  table: app.events",
        "  columns: { id: seq, aggregate_id: order_id }",
        "  poll_interval: 2s",
        "  batch_size: 50",
        "  after_publish: mark",
        "  published_at: sent_at",
    ])
    .unwrap();
    assert_eq!(c.table_ref().to_string(), "app.events");
    assert_eq!(
        (c.columns.id.as_str(), c.columns.aggregate_id.as_str()),
        ("seq", "order_id")
    );
    assert_eq!(c.columns.kind, "type");
    assert_eq!(c.poll_interval, Duration::from_secs(2));
    assert_eq!(c.batch_size, 50);
    assert_eq!(
        c.after_publish,
        AfterPublish::Mark {
            column: "sent_at".into()
        }
    );
    let (_, c) = load(&["  after_publish: mark"]).unwrap();
    assert_eq!(
        c.after_publish,
        AfterPublish::Mark {
            column: "published_at".into()
        }
    );
}

#[test]
fn rules() {
    let e = fails(&["  batch_size: 0"], 5, 3, "source.batch_size");
    assert!(e.message.contains("1 to 10000"), "{e}");
    let e = fails(&["  poll_interval: 0s"], 5, 3, "source.poll_interval");
    assert!(e.message.contains("longer than 0"), "{e}");
    let e = fails(&["  poll_interval: 500"], 5, 3, "source.poll_interval");
    assert!(e.message.contains("no unit"), "{e}");
    let e = fails(&["  published_at: sent_at"], 5, 3, "source.published_at");
    assert!(e.message.contains("after_publish: mark"), "{e}");
    let e = fails(&["  after_publish: archive"], 5, 3, "source.after_publish");
    assert!(e.message.contains("delete"), "{e}");
    let e = fails(&["  columns: { id: '' }"], 5, 14, "source.columns.id");
    assert!(e.message.contains("cannot be empty"), "{e}");
    let e = fails(&["  slot: s"], 5, 3, "source.slot");
    assert!(e.message.contains("unknown key `slot`"), "{e}");
}
