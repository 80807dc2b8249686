//! `sluice status`: every sink's committed position and lag, and the source's side (for
//! Postgres: the slot), from the state store, the source and (when the pipeline runs) its
//! admin server.
//!
//! Lag is honest: while the pipeline runs (and has an admin server) it is the engine's own
//! figure, 0 when a sink has caught up however long the database has been idle; when it does
//! not run, the bytes of WAL past a sink's committed position are shown and no time is
//! guessed; a sink that never committed has no lag to show. A stored `running` state of a
//! pipeline that is not running is shown as `not running`. An unreachable source is an
//! error (exit 1) after everything known was printed.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_runtime::config::{JournalKind, Pipeline};
use sluice_runtime::event::format_timestamp_micros;
use sluice_runtime::journal;
use sluice_runtime::state::{Backfills, DeadLetters, Offsets, SinkRecord, SqliteStore};
use sluice_runtime::units::human_bytes;
use sluice_runtime::Lsn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::runtime;
use crate::Failure;

pub async fn run(path: &Path, as_json: bool) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let connector = super::source(&pipeline)?;
    let (records, depths, backfills) =
        match SqliteStore::open_existing(&pipeline.state).map_err(runtime)? {
            Some(store) => (
                store.sinks().map_err(runtime)?,
                store.dlq_depths().map_err(runtime)?,
                store.backfills().map_err(runtime)?,
            ),
            None => Default::default(),
        };
    let upstream = connector.describe().await;
    let live = match pipeline.admin {
        Some(addr) => admin_status(addr).await,
        None => None,
    };
    // Without an admin server, an active reader upstream is the sign of a running pipeline.
    let running = live.is_some() || upstream.active;
    let sinks: Vec<Value> = pipeline
        .sinks
        .iter()
        .map(|s| {
            let rec = records.get(&s.name).cloned().unwrap_or_default();
            let live_sink = live.as_ref().and_then(|l| {
                l["sinks"]
                    .as_array()?
                    .iter()
                    .find(|x| x["name"] == s.name.as_str())
                    .cloned()
            });
            let committed = (rec.offset.position.commit_lsn != Lsn::ZERO).then_some(rec.offset);
            let (lag_bytes, lag_seconds) = match &live_sink {
                Some(l) => (l["lag_bytes"].clone(), l["lag_seconds"].clone()),
                None => (
                    match (upstream.position, committed) {
                        (Some(at), Some(o)) => json!(at.0.saturating_sub(o.flush_lsn.0)),
                        _ => Value::Null,
                    },
                    Value::Null,
                ),
            };
            json!({
                "name": s.name,
                "type": s.kind,
                "state": state(&rec, live_sink.as_ref(), running),
                "reason": rec.reason,
                "committed": committed.map(|o| o.position.to_string()),
                "flush_lsn": committed.map(|o| o.flush_lsn.to_string()),
                "lag_bytes": lag_bytes,
                "lag_seconds": lag_seconds,
                "queue": live_sink.as_ref().map(|l| l["queue"].clone()),
                "dlq": depths.iter().find(|(n, _)| *n == s.name).map_or(0, |(_, d)| *d),
            })
        })
        .collect();
    let journal = journal_report(&pipeline, live.as_ref());
    let mut lines = upstream.lines.clone();
    lines.extend(journal.1);
    // The active backfills and the last few that ended (`--json` has them all).
    let shown = backfills.len().saturating_sub(10);
    lines.extend(backfills[shown..].iter().map(super::backfill::line));
    let mut report = serde_json::Map::new();
    report.insert("pipeline".into(), json!(pipeline.name));
    report.insert("running".into(), json!(running));
    report.insert("journal".into(), journal.0);
    report.extend(upstream.json);
    report.insert("sinks".into(), json!(sinks));
    report.insert(
        "backfills".into(),
        Value::Array(backfills.iter().map(|b| b.json()).collect()),
    );
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(report)).unwrap_or_default()
        );
    } else {
        print_human(&pipeline.name, &lines, &sinks, running);
    }
    match upstream.error {
        Some(e) => Err(Failure::Runtime(format!(
            "the source could not be asked: {e}"
        ))),
        None => Ok(()),
    }
}

/// The journal as JSON, and its line for a terminal: the running engine's figures when it
/// answers, else what the folder holds.
fn journal_report(pipeline: &Pipeline, live: Option<&Value>) -> (Value, Vec<String>) {
    let config = &pipeline.journal;
    if config.kind == JournalKind::Memory {
        return (json!({"type": "memory"}), vec!["journal: in memory".into()]);
    }
    let dir = config.path.display();
    let budget = human_bytes(config.max_bytes as i64);
    match journal::inspect(&config.path) {
        Ok(Some(j)) => {
            let full = live
                .and_then(|l| l["journal"]["full"].as_bool())
                .unwrap_or(false);
            let oldest = j.first.map(|(_, ts)| format_timestamp_micros(ts));
            let mut line = format!(
                "journal {dir}: {} of {budget} in {} segment(s), changes after {}{}",
                human_bytes(j.bytes as i64),
                j.segments,
                j.start_lsn,
                oldest
                    .as_ref()
                    .map(|t| format!(", oldest event {t}"))
                    .unwrap_or_default()
            );
            if full {
                line.push_str(" — FULL: the source waits, the slot holds WAL");
            }
            (
                json!({
                    "type": "disk", "path": dir.to_string(), "bytes": j.bytes,
                    "max_bytes": config.max_bytes, "segments": j.segments,
                    "start_lsn": j.start_lsn.to_string(), "oldest": oldest, "full": full,
                    "first": j.first.map(|(p, _)| p.to_string()),
                    "last": j.last.map(|(p, _)| p.to_string()),
                }),
                vec![line],
            )
        }
        Ok(None) => (
            json!({"type": "disk", "path": dir.to_string(), "bytes": 0}),
            vec![format!("journal {dir}: not created yet")],
        ),
        Err(e) => (
            json!({"type": "disk", "path": dir.to_string(), "error": e.to_string()}),
            vec![format!("journal: {e}")],
        ),
    }
}

/// A sink's state as it is now: the running engine's word, else what was stored, where a
/// `running` left by a process that is gone reads `not running`.
fn state(rec: &SinkRecord, live: Option<&Value>, running: bool) -> String {
    if let Some(state) = live.and_then(|l| l["state"].as_str()) {
        return state.to_string();
    }
    match rec.state.as_str() {
        "" => "never run".into(),
        sluice_runtime::state::TRIPPED => "stopped".into(),
        "running" if !running => "not running".into(),
        "idle" => "not running".into(),
        other => other.to_string(),
    }
}

fn print_human(name: &str, upstream: &[String], sinks: &[Value], running: bool) {
    println!(
        "pipeline {name} ({})",
        if running { "running" } else { "not running" }
    );
    for line in upstream {
        println!("{line}");
    }
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut table = crate::table::new(
        &[
            "SINK",
            "TYPE",
            "STATE",
            "COMMITTED",
            "LAG",
            "LAG(s)",
            "QUEUE",
            "DLQ",
        ],
        &[4, 5, 6, 7],
    );
    let mut stopped = Vec::new();
    for s in sinks {
        table.add_row(vec![
            text(&s["name"]),
            text(&s["type"]),
            text(&s["state"]),
            text(&s["committed"]),
            s["lag_bytes"]
                .as_u64()
                .map(|b| human_bytes(b as i64))
                .unwrap_or_else(|| "-".into()),
            s["lag_seconds"]
                .as_f64()
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "-".into()),
            text(&s["queue"]),
            text(&s["dlq"]),
        ]);
        if let Some(reason) = s["reason"].as_str() {
            stopped.push(format!("{} stopped: {reason}", text(&s["name"])));
        }
    }
    println!("{}", crate::table::render(&table));
    for line in stopped {
        println!("  {line}");
    }
}

/// GET /status from a running pipeline's admin server; `None` when it does not answer.
async fn admin_status(addr: std::net::SocketAddr) -> Option<Value> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /status HTTP/1.0\r\nHost: sluice\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}
