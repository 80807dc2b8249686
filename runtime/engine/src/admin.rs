//! The admin HTTP server: `/healthz`, `/readyz`, `/metrics` (Prometheus text), `/status` (JSON).
//!
//! Metric names follow `sluice_<noun>_<unit>` with a `sink` label; `families` lists them
//! all, [`crate::telemetry`] renders them.

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
use crate::telemetry::{self, Family, HistogramSource, Kind, Labels, StageStats};

#[derive(Clone)]
pub struct AdminState {
    pub pipeline: String,
    pub source: Arc<SourceStatus>,
    /// Every transform stage with the chain it runs in (`pipeline` or a sink's name).
    pub transforms: Vec<(String, Arc<StageStats>)>,
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
    if let Some(j) = s.journal.disk_status() {
        if j.full {
            problems.push(
                "journal: full (journal.max_bytes); the source waits for the slowest sink".into(),
            );
        }
        if let Some(failure) = j.failure {
            problems.push(format!("journal: {failure}"));
        }
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
    let depths = s.dlq_depths().await;
    let text = telemetry::render(families(&s, &depths));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Every family of `/metrics` but the process's own.
fn families(s: &AdminState, depths: &[(String, i64)]) -> Vec<Family> {
    let p = &s.progress;
    let src = &s.source;
    let one = |v: f64| vec![(Labels::new(), v)];
    let count = |v: u64| vec![(Labels::new(), v)];
    let mut out = vec![
        Family {
            name: "source_events",
            help: "Events the source appended to the journal.",
            kind: Kind::Counter(count(p.events_read.load(Relaxed))),
        },
        Family {
            name: "source_transactions",
            help: "Transactions the source appended to the journal.",
            kind: Kind::Counter(count(p.transactions_read.load(Relaxed))),
        },
        Family {
            name: "source_reconnects",
            help: "Source sessions that failed and were opened again.",
            kind: Kind::Counter(count(src.reconnects.load(Relaxed))),
        },
        Family {
            name: "source_streaming",
            help: "1 while the source streams (Postgres: the slot).",
            kind: Kind::Gauge(one(src.is_streaming() as u8 as f64)),
        },
        Family {
            name: "source_received_lsn",
            help: "Last upstream position received (Postgres: WAL LSN).",
            kind: Kind::Gauge(one(src.received().0 as f64)),
        },
        Family {
            name: "source_upstream_end_lsn",
            help: "The upstream's own end as last reported (Postgres: the server's WAL end).",
            kind: Kind::Gauge(one(src.upstream_end().0 as f64)),
        },
        Family {
            name: "slot_confirmed_lsn",
            help: "Last position acknowledged to the source (Postgres: confirmed to the slot).",
            kind: Kind::Gauge(one(src.acknowledged().0 as f64)),
        },
        Family {
            name: "source_notices",
            help:
                "Notices the source raised (a captured table renamed, a gap in capture), by kind.",
            kind: Kind::Counter(
                src.notice_counts
                    .snapshot()
                    .into_iter()
                    .map(|(kind, n)| (telemetry::with_label(&Labels::new(), "kind", kind), n))
                    .collect(),
            ),
        },
        Family {
            name: "journal_events",
            help: "Entries held in the journal's memory.",
            kind: Kind::Gauge(one(s.journal.len() as f64)),
        },
    ];
    if let Some(j) = s.journal.disk_status() {
        out.extend([
            Family {
                name: "journal_bytes",
                help: "Bytes of journal segments on disk.",
                kind: Kind::Gauge(one(j.bytes as f64)),
            },
            Family {
                name: "journal_max_bytes",
                help: "The journal's budget (journal.max_bytes); at it the source pauses.",
                kind: Kind::Gauge(one(j.max_bytes as f64)),
            },
            Family {
                name: "journal_segments",
                help: "Journal segment files on disk.",
                kind: Kind::Gauge(one(j.segments as f64)),
            },
            Family {
                name: "journal_full",
                help: "1 while the journal is at journal.max_bytes and the source waits (the slot then holds WAL).",
                kind: Kind::Gauge(one(j.full as u8 as f64)),
            },
            Family {
                name: "journal_durable_lsn",
                help: "The end LSN of the last transaction the journal made durable (what the slot may confirm).",
                kind: Kind::Gauge(one(j.synced.end_lsn.0 as f64)),
            },
        ]);
    }
    let sinks: Vec<(&Arc<SinkProgress>, ReaderId, Labels)> = p
        .sinks()
        .iter()
        .zip(&s.readers)
        .map(|(k, r)| (k, *r, telemetry::sink_label(&k.name)))
        .collect();
    type Counted = fn(&SinkProgress) -> &std::sync::atomic::AtomicU64;
    let counters: [(&'static str, &'static str, Counted); 7] = [
        ("sink_delivered_events", "Events delivered.", |k| {
            &k.counters.delivered
        }),
        (
            "sink_retries",
            "Event deliveries retried after a transient error.",
            |k| &k.counters.retries,
        ),
        (
            "sink_rejected_events",
            "Events rejected permanently.",
            |k| &k.counters.rejected,
        ),
        (
            "sink_skipped_events",
            "Events skipped because the sink had committed (or parked) them before.",
            |k| &k.counters.skipped,
        ),
        ("sink_batches", "Batches written.", |k| &k.counters.batches),
        (
            "sink_filtered_events",
            "Events of tables the sink's `tables:` leaves out.",
            |k| &k.counters.filtered,
        ),
        (
            "dlq_replayed_events",
            "Parked events delivered by a replay.",
            |k| &k.counters.replayed,
        ),
    ];
    for (name, help, value) in counters {
        out.push(Family {
            name,
            help,
            kind: Kind::Counter(
                sinks
                    .iter()
                    .map(|(k, _, l)| (l.clone(), value(k).load(Relaxed)))
                    .collect(),
            ),
        });
    }
    out.push(Family {
        name: "sink_events",
        help: "Events delivered, by op.",
        kind: Kind::Counter(
            sinks
                .iter()
                .flat_map(|(k, _, l)| {
                    telemetry::OPS.iter().map(move |op| {
                        (
                            telemetry::with_label(l, "op", op.as_str()),
                            k.counters.delivered_by_op[telemetry::op_index(*op)].load(Relaxed),
                        )
                    })
                })
                .collect(),
        ),
    });
    out.push(Family {
        name: "sink_http_responses",
        help: "Answers of the destination, by HTTP status (sinks that speak HTTP).",
        kind: Kind::Counter(
            sinks
                .iter()
                .flat_map(|(k, _, l)| {
                    k.counters
                        .http_statuses
                        .snapshot()
                        .into_iter()
                        .map(move |(code, n)| (telemetry::with_label(l, "code", code), n))
                })
                .collect(),
        ),
    });
    out.push(Family {
        name: "dlq_events",
        help: "Events sent to the DLQ in this run, by the stage that failed them (`sink` or a transform).",
        kind: Kind::Counter(
            sinks
                .iter()
                .flat_map(|(k, _, l)| {
                    k.counters
                        .parked_by_stage
                        .snapshot()
                        .into_iter()
                        .map(move |(stage, n)| (telemetry::with_label(l, "stage", stage), n))
                })
                .collect(),
        ),
    });
    out.push(Family {
        name: "dlq_held_events",
        help: "Events held in the DLQ behind a parked event of their key in this run.",
        kind: Kind::Counter(
            sinks
                .iter()
                .map(|(k, _, l)| (l.clone(), k.counters.held.load(Relaxed)))
                .collect(),
        ),
    });
    type Gauged = fn(&AdminState, &SinkProgress, ReaderId) -> f64;
    let gauges: [(&'static str, &'static str, Gauged); 4] = [
        (
            "sink_queue_events",
            "Journal entries this sink has not read yet.",
            |s, _, r| s.journal.backlog(r) as f64,
        ),
        (
            "sink_lag_bytes",
            "WAL bytes between the source and this sink's committed position; 0 when caught up.",
            |s, k, r| lag_bytes(s, k, r) as f64,
        ),
        (
            "sink_lag_seconds",
            "Age of the oldest event this sink has not finished; 0 when caught up.",
            lag_seconds,
        ),
        (
            "sink_stopped",
            "1 when the sink stopped on an error.",
            |_, k, _| k.stopped().is_some() as u8 as f64,
        ),
    ];
    for (name, help, value) in gauges {
        out.push(Family {
            name,
            help,
            kind: Kind::Gauge(
                sinks
                    .iter()
                    .map(|(k, r, l)| (l.clone(), value(s, k, *r)))
                    .collect(),
            ),
        });
    }
    out.push(Family {
        name: "dlq_depth",
        help: "Events in the DLQ (parked, held or waiting for replay).",
        kind: Kind::Gauge(
            sinks
                .iter()
                .map(|(k, _, l)| {
                    let depth = depths
                        .iter()
                        .find(|(n, _)| *n == k.name)
                        .map_or(0, |(_, d)| *d);
                    (l.clone(), depth as f64)
                })
                .collect(),
        ),
    });
    out.push(Family {
        name: "sink_latency_seconds",
        help: "Seconds from an event's commit to its delivery.",
        kind: Kind::Histogram(
            sinks
                .iter()
                .map(|(k, _, l)| {
                    (
                        l.clone(),
                        Arc::new(LatencyOf((*k).clone())) as Arc<dyn HistogramSource>,
                    )
                })
                .collect(),
        ),
    });
    out.push(Family {
        name: "transform_batch_seconds",
        help: "Time a transform took per batch, by transform and chain (`pipeline` or a sink).",
        kind: Kind::Histogram(
            s.transforms
                .iter()
                .map(|(chain, stats)| {
                    let labels = vec![
                        ("transform".to_string(), stats.name.clone()),
                        ("chain".to_string(), chain.clone()),
                    ];
                    (labels, stats.clone() as Arc<dyn HistogramSource>)
                })
                .collect(),
        ),
    });
    out.push(Family {
        name: "transform_events",
        help: "Events given to a transform, by transform and chain.",
        kind: Kind::Counter(
            s.transforms
                .iter()
                .map(|(chain, stats)| {
                    let labels = vec![
                        ("transform".to_string(), stats.name.clone()),
                        ("chain".to_string(), chain.clone()),
                    ];
                    (labels, stats.events.load(Relaxed))
                })
                .collect(),
        ),
    });
    out
}

/// A sink's latency histogram, for the encoder.
struct LatencyOf(Arc<SinkProgress>);

impl std::fmt::Debug for LatencyOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "latency of {}", self.0.name)
    }
}

impl HistogramSource for LatencyOf {
    fn histogram(&self) -> &telemetry::Histogram {
        &self.0.counters.latency
    }
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
    let journal = match s.journal.disk_status() {
        Some(j) => json!({
            "type": "disk",
            "bytes": j.bytes,
            "max_bytes": j.max_bytes,
            "segments": j.segments,
            "full": j.full,
            "durable_lsn": j.synced.end_lsn.to_string(),
            "oldest": j.oldest_ts.map(crate::event::format_timestamp_micros),
            "failure": j.failure,
        }),
        None => json!({ "type": "memory", "entries": s.journal.len() }),
    };
    Json(json!({
        "pipeline": s.pipeline,
        "journal": journal,
        "source": {
            "streaming": s.source.is_streaming(),
            "received_lsn": s.source.received().to_string(),
            "confirmed_lsn": s.source.acknowledged().to_string(),
            "events": p.events_read.load(Relaxed),
            "notices": s.source.notices().iter().map(|n| json!({
                "kind": n.kind,
                "message": n.message,
                "at": humantime::format_rfc3339_micros(n.at).to_string(),
            })).collect::<Vec<_>>(),
        },
        "sinks": sinks,
    }))
}
