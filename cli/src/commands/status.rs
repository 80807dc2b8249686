//! `sluice status`: every sink's committed position and lag, and the source's side (for
//! Postgres: the slot), from the state store, the source and (when the pipeline runs) its
//! admin server.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sluice_runtime::state::{DeadLetters, Offsets, SqliteStore};
use sluice_runtime::units::human_bytes;
use sluice_runtime::Lsn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::runtime;
use crate::Failure;

pub async fn run(path: &Path, as_json: bool) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let connector = super::source(&pipeline)?;
    let (records, depths) = match SqliteStore::open_existing(&pipeline.state).map_err(runtime)? {
        Some(store) => (
            store.sinks().map_err(runtime)?,
            store.dlq_depths().map_err(runtime)?,
        ),
        None => Default::default(),
    };
    let upstream = connector.describe().await;
    let live = match pipeline.admin {
        Some(addr) => admin_status(addr).await,
        None => None,
    };
    let current = upstream.position;
    let now_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64;
    let sinks: Vec<Value> = pipeline
        .sinks
        .iter()
        .map(|s| {
            let rec = records.get(&s.name).cloned().unwrap_or_default();
            let live_sink = live
                .as_ref()
                .and_then(|l| l["sinks"].as_array()?.iter().find(|x| x["name"] == s.name.as_str()).cloned());
            let committed = rec.offset.position.commit_lsn;
            json!({
                "name": s.name,
                "type": s.kind,
                "state": if rec.state.is_empty() { "never run".to_string() } else { rec.state.clone() },
                "reason": rec.reason,
                "committed": (committed != Lsn::ZERO).then(|| rec.offset.position.to_string()),
                "flush_lsn": (rec.offset.flush_lsn != Lsn::ZERO).then(|| rec.offset.flush_lsn.to_string()),
                "lag_bytes": current.map(|c| c.0.saturating_sub(rec.offset.flush_lsn.0.max(committed.0))),
                "lag_seconds": (rec.offset.commit_ts_micros > 0)
                    .then(|| ((now_micros - rec.offset.commit_ts_micros) as f64 / 1e6).max(0.0)),
                "queue": live_sink.as_ref().map(|l| l["queue"].clone()),
                "dlq": depths.iter().find(|(n, _)| *n == s.name).map_or(0, |(_, d)| *d),
            })
        })
        .collect();
    // Without an admin server, an active reader upstream is the sign of a running pipeline.
    let running = live.is_some() || upstream.active;
    let mut report = serde_json::Map::new();
    report.insert("pipeline".into(), json!(pipeline.name));
    report.insert("running".into(), json!(running));
    report.extend(upstream.json);
    report.insert("sinks".into(), json!(sinks));
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(report)).unwrap_or_default()
        );
    } else {
        print_human(&pipeline.name, &upstream.lines, &sinks, running);
    }
    Ok(())
}

fn print_human(name: &str, upstream: &[String], sinks: &[Value], running: bool) {
    println!(
        "pipeline {name} ({})",
        if running { "running" } else { "not running" }
    );
    for line in upstream {
        println!("{line}");
    }
    println!(
        "{:<16} {:<10} {:<10} {:<22} {:>12} {:>10} {:>8} {:>8}",
        "SINK", "TYPE", "STATE", "COMMITTED", "LAG", "LAG(s)", "QUEUE", "DLQ"
    );
    for s in sinks {
        let text = |v: &Value| match v {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!(
            "{:<16} {:<10} {:<10} {:<22} {:>12} {:>10} {:>8} {:>8}",
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
        );
        if let Some(reason) = s["reason"].as_str() {
            println!("  stopped: {reason}");
        }
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
