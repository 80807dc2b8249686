//! The outage scenario of the durable journal: two webhook sinks under a steady load, one
//! of them down for a while. What it measures: the healthy sink's commit→delivery latency
//! (it must not notice), the WAL the slot retains on the server meanwhile (the journal on
//! local disk holds the backlog, not the primary), and how fast the returning sink catches
//! up.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use tokio::process::Command;
use tokio_postgres::Client;

use crate::receiver::Receiver;
use crate::workload::{self, PUBLICATION, TABLE};

/// A receiver that answers 503 while it is "down" and counts envelopes while up.
struct Flaky {
    up: AtomicBool,
    events: AtomicU64,
}

async fn flaky(State(s): State<Arc<Flaky>>, body: axum::body::Bytes) -> StatusCode {
    if !s.up.load(Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    // One envelope per request, or a JSON array of them.
    let n = if body.first() == Some(&b'[') {
        serde_json::from_slice::<Vec<serde_json::Value>>(&body).map_or(1, |v| v.len())
    } else {
        1
    };
    s.events.fetch_add(n as u64, Relaxed);
    StatusCode::OK
}

/// What the scenario measured.
pub struct Outcome {
    pub events: u64,
    /// The healthy sink's commit→delivery latency while the other was down (ms).
    pub healthy_p50_ms: f64,
    pub healthy_p99_ms: f64,
    /// The most WAL the slot kept on the server (`pg_current_wal_lsn() - restart_lsn`).
    pub max_retained_mb: f64,
    /// Events the down sink had to catch up on when it came back, and its rate doing so.
    pub backlog: u64,
    pub catch_up_per_sec: f64,
}

/// The scenario: `rate` changes/s for `down_secs + 20` s, the second sink down from
/// t = 10 s for `down_secs`; row ids from `first_id`. `batched`: the webhooks send a batch
/// per request (`batch: true`) instead of one event.
pub struct Scenario {
    pub rate: u64,
    pub down_secs: u64,
    pub first_id: u64,
    pub batched: bool,
}

/// Run the scenario with the sluice binary `bin`; `healthy` receives the healthy sink's
/// deliveries.
pub async fn run(
    bin: &Path,
    pg_url: &str,
    client: &Client,
    healthy: &Receiver,
    scenario: Scenario,
) -> Result<Outcome> {
    let Scenario {
        rate,
        down_secs,
        first_id,
        batched,
    } = scenario;
    let flaky_state = Arc::new(Flaky {
        up: AtomicBool::new(true),
        events: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let flaky_url = format!("http://{}/events", listener.local_addr()?);
    let app = Router::new()
        .route("/events", post(flaky))
        .with_state(flaky_state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let slot = "bench_outage";
    workload::create_slot(client, slot).await?;
    let dir = sluice_testkit::scratch_dir("bench-outage");
    let yaml = format!(
        "pipeline: bench-outage\n\
         source:\n  type: postgres\n  url: {pg_url}\n  slot: {slot}\n  publication: {PUBLICATION}\n  tables: [{TABLE}]\n\
         sinks:\n  \
           healthy: {{ type: webhook, url: \"{}\"{batch} }}\n  \
           down: {{ type: webhook, url: \"{flaky_url}\"{batch} }}\n\
         delivery:\n  retry: {{ initial: 100ms, max: 1s, max_elapsed: 1h }}\n\
         state: state.db\n",
        healthy.url,
        batch = if batched { ", batch: true" } else { "" },
    );
    std::fs::write(dir.join("pipeline.yaml"), yaml)?;
    let log = std::fs::File::create(dir.join("sluice.log"))?;
    let mut child = Command::new(bin)
        .arg("run")
        .arg(dir.join("pipeline.yaml"))
        .current_dir(&dir)
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting sluice")?;
    // Streaming once the slot is active.
    let started = Instant::now();
    loop {
        let active: bool = client
            .query_one(
                "select coalesce(bool_or(active), false) from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await?
            .get(0);
        if active {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("sluice did not start streaming");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The slot's retained WAL, sampled every second.
    let sampling = Arc::new(AtomicBool::new(true));
    let max_retained = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, max_retained) = (sampling.clone(), max_retained.clone());
        let (client_url, slot) = (pg_url.to_string(), slot.to_string());
        tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&client_url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            while sampling.load(Relaxed) {
                let retained: i64 = c
                    .query_one(
                        "select coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint \
                           from pg_replication_slots where slot_name = $1",
                        &[&slot],
                    )
                    .await?
                    .get(0);
                max_retained.fetch_max(retained.max(0) as u64, Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            anyhow::Ok(())
        })
    };

    let total_secs = down_secs + 20;
    let healthy_before = healthy.events();
    healthy.record();
    // The down sink goes down at 10 s and comes back `down_secs` later; from then on, how
    // long it takes to get what the healthy one had at that moment.
    let outage = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        flaky_state.up.store(false, Relaxed);
        tokio::time::sleep(Duration::from_secs(down_secs)).await;
        let target = healthy.events() - healthy_before;
        let had = flaky_state.events.load(Relaxed);
        let up_at = Instant::now();
        flaky_state.up.store(true, Relaxed);
        while flaky_state.events.load(Relaxed) < target
            && up_at.elapsed() < Duration::from_secs(600)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (target.saturating_sub(had), up_at.elapsed())
    };
    let (events, (backlog, caught_up)) =
        tokio::join!(workload::steady(client, first_id, rate, total_secs), outage);
    let events = events?;
    // Wait for both sinks to have everything.
    let deadline = Instant::now() + Duration::from_secs(600);
    while (healthy.events() - healthy_before < events || flaky_state.events.load(Relaxed) < events)
        && Instant::now() < deadline
    {
        if let Some(exit) = child.try_wait()? {
            bail!("sluice exited ({exit})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latencies = healthy.take_latencies();
    sampling.store(false, Relaxed);
    let _ = sampler.await;
    let delivered_down = flaky_state.events.load(Relaxed);
    let _ = child.start_kill();
    let _ = child.wait().await;
    workload::drop_slot(client, slot).await?;
    if delivered_down < events {
        bail!("the returning sink got {delivered_down} of {events} events within 10 minutes");
    }
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    Ok(Outcome {
        events,
        healthy_p50_ms: pct(0.50),
        healthy_p99_ms: pct(0.99),
        max_retained_mb: max_retained.load(Relaxed) as f64 / (1 << 20) as f64,
        backlog,
        catch_up_per_sec: backlog as f64 / caught_up.as_secs_f64().max(1e-3),
    })
}
