//! `sluice status`: every sink's committed position and lag, and the slot's state, from
//! the state store, PostgreSQL and (when the pipeline runs) its admin server.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sluice_postgres::setup::{self, SlotStatus};
use sluice_runtime::state::StateStore;
use sluice_runtime::Lsn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Failure;

pub async fn run(path: &Path, as_json: bool) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let failed = |e: &dyn std::fmt::Display| Failure::Runtime(e.to_string());
    let (records, depths) =
        match StateStore::open_existing(&pipeline.state).map_err(|e| failed(&e))? {
            Some(store) => (
                store.sinks().map_err(|e| failed(&e))?,
                store.dlq_depths().map_err(|e| failed(&e))?,
            ),
            None => Default::default(),
        };
    let (slot, slot_error) = match setup::connect(pipeline.source.url.expose()).await {
        Ok(client) => match setup::slot_status(&client, &pipeline.source.slot).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        },
        Err(e) => (None, Some(e.to_string())),
    };
    let live = match pipeline.admin {
        Some(addr) => admin_status(addr).await,
        None => None,
    };
    let current = slot
        .as_ref()
        .and_then(|s| s.current_wal_lsn.parse::<Lsn>().ok());
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
    // Without an admin server, an active slot is the sign of a running pipeline.
    let running = live.is_some() || slot.as_ref().is_some_and(|s| s.active);
    let report = json!({
        "pipeline": pipeline.name,
        "running": running,
        "slot": slot.as_ref().map(|s| serde_json::to_value(s).unwrap_or_default()),
        "slot_error": slot_error,
        "sinks": sinks,
    });
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_human(
            &pipeline.name,
            slot.as_ref(),
            report["slot_error"].as_str(),
            &sinks,
            running,
        );
    }
    Ok(())
}

fn print_human(
    name: &str,
    slot: Option<&SlotStatus>,
    slot_error: Option<&str>,
    sinks: &[Value],
    running: bool,
) {
    println!(
        "pipeline {name} ({})",
        if running { "running" } else { "not running" }
    );
    match (slot, slot_error) {
        (Some(s), _) if s.exists => println!(
            "slot {}: {}, restart_lsn {}, confirmed_flush_lsn {}, wal_status {}, WAL retained {} (server at {})",
            s.slot,
            if s.active { "active" } else { "inactive" },
            s.restart_lsn.as_deref().unwrap_or("-"),
            s.confirmed_flush_lsn.as_deref().unwrap_or("-"),
            s.wal_status.as_deref().unwrap_or("-"),
            s.retained_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
            s.current_wal_lsn,
        ),
        (Some(s), _) => println!("slot {}: does not exist (created by `sluice run`)", s.slot),
        (None, Some(e)) => println!("slot: unknown ({e})"),
        (None, None) => {}
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

fn human_bytes(b: i64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
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
