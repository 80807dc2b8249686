//! The admin HTTP server: `/healthz`, `/readyz`, `/metrics` (Prometheus text), `/status` (JSON).
//!
//! Metric names follow `sluice_<noun>_<unit>` with a `sink` label; this is the one place
//! that renders them.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::journal::{Journal, ReaderId};
use crate::progress::{Progress, SinkProgress};
use crate::source::SourceStatus;
use crate::state::{DlqFilter, Store};

#[derive(Clone)]
pub struct AdminState {
    pub pipeline: String,
    pub source: Arc<SourceStatus>,
    pub progress: Arc<Progress>,
    pub journal: Arc<Journal>,
    pub readers: Vec<ReaderId>,
    pub store: Store,
}

impl AdminState {
    /// DLQ depth per sink, from the state store.
    async fn dlq_depths(&self) -> Vec<(String, i64)> {
        self.store.run(|s| s.dlq_depths()).await.unwrap_or_default()
    }
}

pub async fn serve(listener: tokio::net::TcpListener, state: AdminState) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/dlq", get(dlq))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let mut problems = Vec::new();
    if !s.source.is_streaming() {
        problems.push("source: the replication slot is not streaming".to_string());
    }
    for sink in s.progress.sinks() {
        if let Some(reason) = sink.stopped() {
            problems.push(format!("sink {}: stopped: {reason}", sink.name));
        }
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n").into_response()
    }
}

/// Bytes of WAL between what the source has seen and what this sink has committed;
/// zero when the sink has finished everything the source appended.
fn lag_bytes(s: &AdminState, sink: &SinkProgress, reader: ReaderId) -> u64 {
    let (durable_seq, offset) = sink.durable();
    if durable_seq >= s.journal.head() && s.journal.backlog(reader) == 0 {
        return 0;
    }
    s.source
        .received()
        .0
        .saturating_sub(offset.position.commit_lsn.0)
}

/// Seconds between now and the commit of the oldest event this sink has not finished: 0
/// when it has caught up, however long the database has been idle.
fn lag_seconds(s: &AdminState, sink: &SinkProgress, reader: ReaderId) -> f64 {
    if lag_bytes(s, sink, reader) == 0 {
        return 0.0;
    }
    let in_flight = sink.oldest_in_flight_ts.load(Relaxed);
    let oldest = match in_flight {
        0 => s.journal.oldest_unread_ts(reader),
        ts => Some(ts),
    };
    match oldest {
        Some(ts) if ts > 0 => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            ((now - ts) as f64 / 1e6).max(0.0)
        }
        _ => 0.0,
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let p = &s.progress;
    let mut text = String::new();
    let gauge = |text: &mut String, name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    gauge(
        &mut text,
        "sluice_source_events_total",
        "counter",
        "Events decoded from the replication stream.",
        p.events_read.load(Relaxed),
    );
    gauge(
        &mut text,
        "sluice_source_transactions_total",
        "counter",
        "Transactions decoded.",
        p.transactions_read.load(Relaxed),
    );
    gauge(
        &mut text,
        "sluice_source_reconnects_total",
        "counter",
        "Replication reconnects.",
        s.source.reconnects.load(Relaxed),
    );
    gauge(
        &mut text,
        "sluice_source_streaming",
        "gauge",
        "1 while the slot streams.",
        s.source.is_streaming() as u64,
    );
    gauge(
        &mut text,
        "sluice_source_received_lsn",
        "gauge",
        "Last WAL position received.",
        s.source.received().0,
    );
    gauge(
        &mut text,
        "sluice_slot_confirmed_lsn",
        "gauge",
        "Last WAL position confirmed to Postgres.",
        s.source.acknowledged().0,
    );
    gauge(
        &mut text,
        "sluice_journal_events",
        "gauge",
        "Entries held in the journal.",
        s.journal.len() as u64,
    );
    type Metric = fn(&AdminState, &SinkProgress, ReaderId) -> u64;
    let per_sink: [(&str, &str, &str, Metric); 8] = [
        (
            "sluice_sink_delivered_events_total",
            "counter",
            "Events delivered.",
            |_, k, _| k.counters.delivered.load(Relaxed),
        ),
        (
            "sluice_sink_retries_total",
            "counter",
            "Event deliveries retried after a transient error.",
            |_, k, _| k.counters.retries.load(Relaxed),
        ),
        (
            "sluice_sink_rejected_events_total",
            "counter",
            "Events rejected permanently.",
            |_, k, _| k.counters.rejected.load(Relaxed),
        ),
        (
            "sluice_sink_skipped_events_total",
            "counter",
            "Events skipped because the sink had committed them before.",
            |_, k, _| k.counters.skipped.load(Relaxed),
        ),
        (
            "sluice_sink_batches_total",
            "counter",
            "Batches written.",
            |_, k, _| k.counters.batches.load(Relaxed),
        ),
        (
            "sluice_sink_queue_events",
            "gauge",
            "Journal entries this sink has not read yet.",
            |s, _, r| s.journal.backlog(r),
        ),
        (
            "sluice_sink_lag_bytes",
            "gauge",
            "WAL bytes between the source and this sink's committed position.",
            lag_bytes,
        ),
        (
            "sluice_sink_stopped",
            "gauge",
            "1 when the sink stopped on an error.",
            |_, k, _| k.stopped().is_some() as u64,
        ),
    ];
    for (name, kind, help, value) in per_sink {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (sink, reader) in p.sinks().iter().zip(&s.readers) {
            let _ = writeln!(
                text,
                "{name}{{sink=\"{}\"}} {}",
                sink.name,
                value(&s, sink, *reader)
            );
        }
    }
    let name = "sluice_dlq_events_total";
    let _ = writeln!(
        text,
        "# HELP {name} Events sent to the DLQ in this run.\n# TYPE {name} counter"
    );
    for sink in p.sinks() {
        let parked = sink.counters.parked.load(Relaxed);
        let _ = writeln!(
            text,
            "{name}{{sink=\"{}\",stage=\"sink\"}} {parked}",
            sink.name
        );
    }
    let name = "sluice_dlq_depth";
    let _ = writeln!(text, "# HELP {name} Events in the DLQ (parked, held or waiting for replay).\n# TYPE {name} gauge");
    let depths = s.dlq_depths().await;
    for sink in p.sinks() {
        let depth = depths
            .iter()
            .find(|(n, _)| *n == sink.name)
            .map_or(0, |(_, d)| *d);
        let _ = writeln!(text, "{name}{{sink=\"{}\"}} {depth}", sink.name);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /dlq`: every parked event, as `sluice dlq list --json` prints them.
async fn dlq(State(s): State<AdminState>) -> Response {
    match s.store.run(|s| s.dlq_list(&DlqFilter::default())).await {
        Ok(entries) => Json(entries).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn status(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let depths = s.dlq_depths().await;
    let p = &s.progress;
    let sinks: Vec<_> = p
        .sinks()
        .iter()
        .zip(&s.readers)
        .map(|(sink, reader)| {
            let (_, offset) = sink.durable();
            json!({
                "name": sink.name,
                "state": if sink.stopped().is_some() { "stopped" } else { "running" },
                "reason": sink.stopped(),
                "committed": offset.position.to_string(),
                "flush_lsn": offset.flush_lsn.to_string(),
                "lag_bytes": lag_bytes(&s, sink, *reader),
                "lag_seconds": lag_seconds(&s, sink, *reader),
                "queue": s.journal.backlog(*reader),
                "delivered": sink.counters.delivered.load(Relaxed),
                "retries": sink.counters.retries.load(Relaxed),
                "dlq": depths.iter().find(|(n, _)| *n == sink.name).map_or(0, |(_, d)| *d),
            })
        })
        .collect();
    Json(json!({
        "pipeline": s.pipeline,
        "source": {
            "streaming": s.source.is_streaming(),
            "received_lsn": s.source.received().to_string(),
            "confirmed_lsn": s.source.acknowledged().to_string(),
            "events": p.events_read.load(Relaxed),
        },
        "sinks": sinks,
    }))
}
