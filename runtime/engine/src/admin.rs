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
use crate::lsn::Lsn;
use crate::progress::{Progress, SinkProgress};
use crate::source::SourceStatus;
use crate::state::{DlqFilter, Store};
use crate::telemetry::{self, Family, HistogramSource, Kind, Labels, StageStats};
use crate::wait::WaitStats;

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
    pub waits: Arc<WaitStats>,
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
        .route("/wait", get(wait))
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
    let backfills = s.store.run(|s| s.backfills()).await.unwrap_or_default();
    let mut families = families(&s, &depths);
    families.extend(backfill_families(&backfills));
    let text = telemetry::render(families);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The backfills: how many are in each state, and the rows of each active one by table.
fn backfill_families(backfills: &[crate::state::Backfill]) -> Vec<Family> {
    use crate::state::BackfillState as S;
    let states = [S::Pending, S::Running, S::Done, S::Cancelled, S::Failed];
    let active = || backfills.iter().filter(|b| b.state.is_active());
    let table =
        |b: &crate::state::Backfill| telemetry::with_label(&Labels::new(), "table", &b.table);
    vec![
        Family {
            name: "backfills",
            help: "Backfills recorded in the state store, by state.",
            kind: Kind::Gauge(
                states
                    .iter()
                    .map(|st| {
                        let n = backfills.iter().filter(|b| b.state == *st).count();
                        (
                            telemetry::with_label(&Labels::new(), "state", st.as_str()),
                            n as f64,
                        )
                    })
                    .collect(),
            ),
        },
        Family {
            name: "backfill_rows",
            help: "Rows a pending or running backfill has copied (confirmed), by table.",
            kind: Kind::Gauge(active().map(|b| (table(b), b.rows as f64)).collect()),
        },
        Family {
            name: "backfill_estimated_rows",
            help: "Rows a pending or running backfill's table is estimated to hold, by table.",
            kind: Kind::Gauge(
                active()
                    .filter_map(|b| Some((table(b), b.estimate? as f64)))
                    .collect(),
            ),
        },
    ]
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
        name: "wait_requests",
        help: "Read-your-writes waits (`/wait`) answered, by outcome: applied, parked (applied but a change before the token is in the DLQ) or timeout.",
        kind: Kind::Counter(
            [
                ("applied", &s.waits.applied),
                ("parked", &s.waits.parked),
                ("timeout", &s.waits.timeouts),
            ]
            .into_iter()
            .map(|(outcome, n)| (vec![("outcome".to_string(), outcome.to_string())], n.load(Relaxed)))
            .collect(),
        ),
    });
    out.push(Family {
        name: "wait_seconds",
        help: "How long answered read-your-writes waits took (timeouts excluded).",
        kind: Kind::Histogram(vec![(
            Labels::new(),
            s.waits.clone() as Arc<dyn HistogramSource>,
        )]),
    });
    out.push(Family {
        name: "wait_waiting",
        help: "Read-your-writes waits in progress, per sink.",
        kind: Kind::Gauge(
            sinks
                .iter()
                .map(|(k, _, l)| (l.clone(), k.applied.waiting() as f64))
                .collect(),
        ),
    });
    out.push(Family {
        name: "sink_applied_lsn",
        help: "Every change committed at or before this LSN is applied by the sink (read-your-writes), as a number.",
        kind: Kind::Gauge(
            sinks
                .iter()
                .map(|(k, _, l)| (l.clone(), k.applied.through().0 as f64))
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

/// The longest `/wait` may take.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `GET /wait?sink=S[&sink=T]&lsn=X[&timeout=2s]`: answer once every named sink has applied
/// every change committed at or before LSN `X` (read-your-writes: `X` is
/// `pg_current_wal_insert_lsn()` after the application's COMMIT; `pg_current_wal_lsn()` is
/// the same with `synchronous_commit = on`). 200 with each sink's applied
/// position; 409 when it is applied but a change committed before `X` waits in a sink's DLQ
/// (the read may miss it); 408 when `timeout` (default 5s, at most 60s) ran out; 404 for an
/// unknown sink; 400 naming a malformed or missing parameter.
async fn wait(
    State(s): State<AdminState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let bad = |status: StatusCode, message: String| {
        (status, Json(json!({ "error": message }))).into_response()
    };
    let params = query_pairs(query.as_deref().unwrap_or(""));
    let one = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let names: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "sink")
        .map(|(_, v)| v.as_str())
        .collect();
    if names.is_empty() {
        return bad(
            StatusCode::BAD_REQUEST,
            "`sink`: name the sink to wait for (sink=NAME, repeat it for several)".into(),
        );
    }
    let token: Lsn = match one("lsn").map(str::parse) {
        Some(Ok(lsn)) => lsn,
        Some(Err(_)) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!(
                    "`lsn`: `{}` is not an LSN like 0/16B3748 (the application's \
                     `SELECT pg_current_wal_insert_lsn()` after its COMMIT)",
                    one("lsn").unwrap_or_default()
                ),
            )
        }
        None => {
            return bad(
                StatusCode::BAD_REQUEST,
                "`lsn`: give the token, e.g. lsn=0/16B3748 (`SELECT pg_current_wal_insert_lsn()` after COMMIT)"
                    .into(),
            )
        }
    };
    let timeout = match one("timeout").map(crate::config::duration::parse) {
        None => std::time::Duration::from_secs(5),
        Some(Ok(t)) if t <= MAX_WAIT => t,
        Some(Ok(_)) => return bad(StatusCode::BAD_REQUEST, "`timeout`: at most 60s".into()),
        Some(Err(e)) => return bad(StatusCode::BAD_REQUEST, format!("`timeout`: {e}")),
    };
    let token = past_headers(token);
    let mut sinks = Vec::with_capacity(names.len());
    for name in &names {
        match s.progress.sink(name) {
            Some(sink) => sinks.push(sink.clone()),
            None => {
                let known: Vec<&str> = s.progress.sinks().iter().map(|k| k.name.as_str()).collect();
                return bad(
                    StatusCode::NOT_FOUND,
                    format!("no sink `{name}` (sinks: {})", known.join(", ")),
                );
            }
        }
    }

    let started = std::time::Instant::now();
    let deadline = started + timeout;
    let mut timed_out = false;
    for sink in &sinks {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if sink.applied.wait(token, left).await.is_err() {
            timed_out = true;
            break;
        }
    }
    let waited = started.elapsed();
    let mut report = Vec::with_capacity(sinks.len());
    let mut parked_total = 0;
    for sink in &sinks {
        let mut entry = json!({
            "sink": sink.name,
            "applied_through": sink.applied.through().to_string(),
        });
        if let Some(reason) = sink.stopped() {
            entry["stopped"] = json!(reason);
        }
        if !timed_out {
            let name = sink.name.clone();
            let (parked, first) = s
                .store
                .run(move |st| st.dlq_before(&name, token))
                .await
                .unwrap_or((0, None));
            if parked > 0 {
                parked_total += parked;
                entry["parked"] = json!(parked);
                entry["first_parked"] = json!(first);
            }
        }
        report.push(entry);
    }
    let body = |error: Option<String>| {
        let mut v = json!({
            "lsn": token.to_string(),
            "sinks": report,
            "waited_ms": waited.as_secs_f64() * 1e3,
        });
        if let Some(e) = error {
            v["error"] = json!(e);
        }
        Json(v)
    };
    if timed_out {
        s.waits.timeouts.fetch_add(1, Relaxed);
        let error = format!(
            "not applied within {}: the sink is behind, or stopped (see `stopped`)",
            humantime::format_duration(timeout)
        );
        return (StatusCode::REQUEST_TIMEOUT, body(Some(error))).into_response();
    }
    s.waits.seconds.observe(waited.as_secs_f64());
    if parked_total > 0 {
        s.waits.parked.fetch_add(1, Relaxed);
        let error = format!(
            "{parked_total} change(s) committed before {token} are in the DLQ, not applied: a read may \
             not see them until they are replayed (`sluice dlq list --sink ...`)"
        );
        return (StatusCode::CONFLICT, body(Some(error))).into_response();
    }
    s.waits.applied.fetch_add(1, Relaxed);
    (StatusCode::OK, body(None)).into_response()
}

/// A token that points just past a WAL page header (`pg_current_wal_insert_lsn()` on a
/// fresh page) means the page's start: no record ends inside a header, and the stream
/// reaches only the page's start until more WAL is written. Pages are 8 KiB with a 24-byte
/// header, 40 bytes at a segment's start (16 MiB segments and multiples of them).
fn past_headers(token: Lsn) -> Lsn {
    const PAGE: u64 = 8192;
    const SEGMENT: u64 = 16 << 20;
    match (token.0 % PAGE, token.0 % SEGMENT) {
        (24, _) => Lsn(token.0 - 24),
        (_, 40) => Lsn(token.0 - 40),
        _ => token,
    }
}

/// `a=1&b=x%2Fy` as pairs, percent-decoded (`+` is a space).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    fn decode(text: &str) -> String {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match (
                bytes[i],
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                (b'+', _, _) => {
                    out.push(b' ');
                    i += 1;
                }
                (b, _, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
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
    let backfills: Vec<_> = s
        .store
        .run(|s| s.backfills())
        .await
        .unwrap_or_default()
        .iter()
        .map(|b| b.json())
        .collect();
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
        "backfills": backfills,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backfills_are_counted_by_state_and_active_ones_show_their_rows() {
        use crate::state::{Backfill, BackfillState};
        let backfill = |id, table: &str, state, rows| Backfill {
            id,
            table: table.into(),
            sinks: vec![],
            filter: None,
            state,
            cursor: None,
            rows,
            estimate: Some(1000),
            chunks: 1,
            error: None,
            created_at: 0,
            started_at: Some(0),
            updated_at: 0,
            finished_at: None,
        };
        let text = telemetry::render(backfill_families(&[
            backfill(1, "public.orders", BackfillState::Done, 1000),
            backfill(2, "public.items", BackfillState::Running, 250),
        ]));
        for line in [
            "sluice_backfills{state=\"done\"} 1",
            "sluice_backfills{state=\"running\"} 1",
            "sluice_backfills{state=\"failed\"} 0",
            "sluice_backfill_rows{table=\"public.items\"} 250",
            "sluice_backfill_estimated_rows{table=\"public.items\"} 1000",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("public.orders"),
            "a finished backfill has no rows series"
        );
    }

    #[test]
    fn a_token_past_a_page_header_means_the_page_start() {
        assert_eq!(past_headers(Lsn(0x1516018)), Lsn(0x1516000));
        assert_eq!(
            past_headers(Lsn(0x2000028)),
            Lsn(0x2000000),
            "a segment's long header"
        );
        assert_eq!(past_headers(Lsn(0x1516019)), Lsn(0x1516019));
        assert_eq!(
            past_headers(Lsn(0x1516028)),
            Lsn(0x1516028),
            "inside a page"
        );
    }

    #[test]
    fn query_strings_are_decoded() {
        assert_eq!(
            query_pairs("sink=a&sink=b%20c&lsn=0%2F16B3748&x=%zz+y&flag"),
            [
                ("sink".to_string(), "a".to_string()),
                ("sink".into(), "b c".into()),
                ("lsn".into(), "0/16B3748".into()),
                ("x".into(), "%zz y".into()),
                ("flag".into(), "".into()),
            ]
        );
    }
}
