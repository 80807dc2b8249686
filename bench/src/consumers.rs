//! The consumers under test: `pg_recvlogical` (the ceiling) and sluice with each sink of
//! [`SINKS`], each run alone on its own slot until it has read past a workload's marker;
//! sluice also as the polling outbox relay, and copying a table (`snapshot: initial`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::workload::{
    Lsn, BACKFILL_PUBLICATION, BACKFILL_TABLE, OUTBOX_PUBLICATION, OUTBOX_TABLE, POLL_TABLE,
    PUBLICATION, TABLE,
};

/// One sluice configuration under test.
pub struct SinkRow {
    /// The row's name in the table, also the sink's name in the pipeline.
    pub name: &'static str,
    /// The sink's section, as a YAML flow mapping. `$DIR` is replaced by the run's scratch
    /// directory and `$WEBHOOK` by the bench receiver's URL; `${VAR}` is left for sluice
    /// to read from the environment.
    pub sink: &'static str,
    /// Top-level pipeline keys the row adds (YAML lines), e.g. a journal type.
    pub extra: &'static str,
    /// Environment variables the row needs (a server's address, say); when one is unset,
    /// the row is skipped.
    pub needs: &'static [&'static str],
    /// Run the table workloads (inserts, updates, one-tx) through it.
    pub throughput: bool,
    /// Run the outbox workload through it, captured from the WAL (`source.outbox`).
    pub outbox: bool,
    /// Run the outbox workload through it with the polling source as well.
    pub poll: bool,
    /// Run the backfill workload (`snapshot: initial`) through it.
    pub backfill: bool,
    /// Which latency test runs through it, if any.
    pub latency: Latency,
}

/// How a row's latency is measured (under `--latency-rate` for `--latency-secs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// No latency test.
    No,
    /// Commit→sink: every envelope timed by the bench's webhook receiver (webhook rows).
    Receiver,
    /// Read-your-writes: a probe commits a row, takes `pg_current_wal_insert_lsn()` and
    /// `GET /wait`s on the sink, timed from the commit to the answer; once idle, once under
    /// the steady load.
    Wait,
    /// Commit→acknowledged by the sink (a broker's ack) of outbox events under a steady
    /// outbox load (`--outbox-rate` for `--outbox-secs`, with the outbox workload), from
    /// sluice's own `sluice_sink_latency_seconds` histogram, scraped once every event is
    /// delivered.
    Histogram,
}

/// Every sink the benchmark runs. Adding a sink is one line here.
#[rustfmt::skip]
pub const SINKS: &[SinkRow] = &[
    SinkRow { name: "blackhole",       sink: "{ type: blackhole }",                               extra: "", needs: &[], throughput: true,  outbox: true,  poll: true,  backfill: true,  latency: Latency::No },
    // The same with the journal in memory: what the durable journal costs.
    SinkRow { name: "blackhole-memory", sink: "{ type: blackhole }", extra: "journal: { type: memory }\n", needs: &[], throughput: true, outbox: true, poll: true, backfill: true, latency: Latency::No },
    SinkRow { name: "file",            sink: "{ type: file, path: \"$DIR/events.jsonl\" }",       extra: "", needs: &[], throughput: true,  outbox: false, poll: false, backfill: false, latency: Latency::No },
    SinkRow { name: "webhook",         sink: "{ type: webhook, url: \"$WEBHOOK\" }",              extra: "", needs: &[], throughput: true,  outbox: false, poll: false, backfill: false, latency: Latency::Receiver },
    SinkRow { name: "webhook-batch",   sink: "{ type: webhook, url: \"$WEBHOOK\", batch: true }", extra: "", needs: &[], throughput: true,  outbox: false, poll: false, backfill: false, latency: Latency::Receiver },
    // The cost of the WebAssembly host: blackhole behind a trivial transform, one that maps
    // each event to itself (identity: every event crosses back) and one that keeps it.
    SinkRow { name: "blackhole-wasm",  sink: "{ type: blackhole, transforms: [ { name: identity, wasm: \"${SLUICE_BENCH_IDENTITY_WASM}\" } ] }", extra: "", needs: &["SLUICE_BENCH_IDENTITY_WASM"], throughput: true, outbox: false, poll: false, backfill: false, latency: Latency::No },
    SinkRow { name: "blackhole-keep",  sink: "{ type: blackhole, transforms: [ { name: passthrough, wasm: \"${SLUICE_BENCH_PASSTHROUGH_WASM}\" } ] }", extra: "", needs: &["SLUICE_BENCH_PASSTHROUGH_WASM"], throughput: true, outbox: false, poll: false, backfill: false, latency: Latency::No },
    // Servers the bench starts itself when the variable is unset (see services.rs). The
    // stream row keeps each stream to about 100k entries, as a deployment would.
    SinkRow { name: "redis",           sink: "{ type: redis, url: \"${REDIS_URL}\" }",           extra: "", needs: &["REDIS_URL"], throughput: true, outbox: false, poll: false, backfill: false, latency: Latency::No },
    SinkRow { name: "redis-hash",      sink: "{ type: redis, url: \"${REDIS_URL}\", format: hash }", extra: "", needs: &["REDIS_URL"], throughput: true, outbox: false, poll: false, backfill: false, latency: Latency::No },
    SinkRow { name: "redis-stream",    sink: "{ type: redis, url: \"${REDIS_URL}\", mode: stream, maxlen: 100000 }", extra: "", needs: &["REDIS_URL"], throughput: true, outbox: false, poll: false, backfill: false, latency: Latency::No },
    // The outbox relay's brokers: outbox events keyed by aggregate id, acks from the broker
    // (Kafka: the idempotent producer, acks=all; RabbitMQ: persistent messages with
    // publisher confirms).
    SinkRow { name: "kafka",           sink: "{ type: kafka, brokers: \"${KAFKA_BROKERS}\", topic: sluice-bench }", extra: "", needs: &["KAFKA_BROKERS"], throughput: true, outbox: true, poll: true, backfill: false, latency: Latency::Histogram },
    SinkRow { name: "rabbitmq",        sink: "{ type: rabbitmq, url: \"${RABBITMQ_URL}\", exchange: bench }", extra: "", needs: &["RABBITMQ_URL"], throughput: true, outbox: true, poll: false, backfill: false, latency: Latency::Histogram },
    SinkRow { name: "elasticsearch",   sink: "{ type: elasticsearch, url: \"${ELASTICSEARCH_URL}\" }", extra: "", needs: &["ELASTICSEARCH_URL"], throughput: true, outbox: false, poll: false, backfill: false, latency: Latency::No },
    // Read-your-writes: the wait of an application that writes, takes the token and waits
    // for its Redis cache (targets: p99 ≤ 20 ms idle, ≤ 50 ms under 10k changes/s).
    SinkRow { name: "ryw",             sink: "{ type: redis, url: \"${REDIS_URL}\" }",           extra: "", needs: &["REDIS_URL"], throughput: false, outbox: false, poll: false, backfill: false, latency: Latency::Wait },
    // The same with batches that linger 1 ms instead of 10 ms: a lone change goes out sooner.
    SinkRow { name: "ryw-1ms",         sink: "{ type: redis, url: \"${REDIS_URL}\", delivery: { batch: { max_wait: 1ms } } }", extra: "", needs: &["REDIS_URL"], throughput: false, outbox: false, poll: false, backfill: false, latency: Latency::Wait },
];

impl SinkRow {
    /// The first environment variable this row needs that `provided` says is unset.
    pub fn missing_env(&self, provided: impl Fn(&str) -> bool) -> Option<&'static str> {
        self.needs.iter().copied().find(|v| !provided(v))
    }
}

/// The PostgreSQL server binaries the testkit uses: `$PG_BIN`, else the newest version
/// under /usr/lib/postgresql.
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(dir.into());
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries under /usr/lib/postgresql")?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("pg_recvlogical").exists())
        .collect();
    dirs.sort();
    Ok(dirs
        .pop()
        .context("no pg_recvlogical under /usr/lib/postgresql")?
        .1)
}

/// `pg_recvlogical` with pgoutput (protocol 1) from `slot` of `publication` to /dev/null
/// until it reads past `marker`; returns the wall time from spawn to exit.
pub async fn recvlogical(
    bin_dir: &Path,
    port: u16,
    slot: &str,
    publication: &str,
    marker: Lsn,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let child = Command::new(bin_dir.join("pg_recvlogical"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "--slot", slot, "--start", "--no-loop"])
        .args(["-P", "pgoutput", "-o", "proto_version=1"])
        .arg("-o")
        .arg(format!("publication_names={publication}"))
        .args(["-f", "/dev/null", "-E", &marker.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting pg_recvlogical")?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("pg_recvlogical did not reach {marker} within {timeout:?}"))??;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "pg_recvlogical failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// `psql -c "COPY (SELECT * FROM table) TO STDOUT" > /dev/null`: the ceiling of reading
/// `table` whole. Returns the wall time from spawn to exit.
pub async fn psql_copy(bin_dir: &Path, port: u16, table: &str) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new(bin_dir.join("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("COPY (SELECT * FROM {table}) TO STDOUT"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .context("starting psql")?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "psql failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// What a sluice under test reads: its pipeline's `source:` section.
#[derive(Clone, Copy, Debug)]
pub enum Feed<'a> {
    /// The bench table's changes, through logical replication from `slot`.
    Table { slot: &'a str },
    /// The outbox table's inserts, captured from the WAL (`source.outbox`) from `slot`.
    Outbox { slot: &'a str },
    /// The polling copy of the outbox, read by `postgres_outbox_poll` `batch_size` rows a
    /// poll; published rows are deleted (`after_publish: delete`, the default).
    Poll { batch_size: u32 },
    /// The backfill table, copied whole on the first start (`snapshot: initial`) while
    /// streaming from `slot`, in chunks of at most `chunk_rows` (unset: sluice's default).
    Backfill {
        slot: &'a str,
        chunk_rows: Option<usize>,
    },
}

impl Feed<'_> {
    /// The `source:` section, indented as a top-level key's value.
    fn source(&self, pg_url: &str) -> String {
        match self {
            Feed::Table { slot } => format!(
                "  type: postgres\n  url: {pg_url}\n  slot: {slot}\n  publication: {PUBLICATION}\n  tables: [{TABLE}]\n"
            ),
            Feed::Outbox { slot } => format!(
                "  type: postgres\n  url: {pg_url}\n  slot: {slot}\n  publication: {OUTBOX_PUBLICATION}\n  outbox: {{ table: {OUTBOX_TABLE} }}\n"
            ),
            Feed::Poll { batch_size } => format!(
                "  type: postgres_outbox_poll\n  url: {pg_url}\n  table: {POLL_TABLE}\n  batch_size: {batch_size}\n"
            ),
            Feed::Backfill { slot, chunk_rows } => {
                let chunks = chunk_rows
                    .map(|rows| format!("  backfill: {{ chunk_rows: {rows} }}\n"))
                    .unwrap_or_default();
                format!(
                    "  type: postgres\n  url: {pg_url}\n  slot: {slot}\n  publication: {BACKFILL_PUBLICATION}\n  tables: [{BACKFILL_TABLE}]\n  snapshot: initial\n{chunks}"
                )
            }
        }
    }
}

/// When a throughput run has consumed the whole workload.
#[derive(Clone, Copy, Debug)]
pub enum Done {
    /// The sink's durable `flush_lsn` is past the workload's marker (the WAL sources).
    Past(Lsn),
    /// The sink delivered this many events (the polling source, which has no LSNs).
    Delivered(u64),
}

/// What `/status` says about the pipeline's one sink.
#[derive(Debug)]
pub struct SinkStatus {
    pub streaming: bool,
    pub flush_lsn: Lsn,
    pub delivered: u64,
    /// Why it stopped, when it did.
    pub stopped: Option<String>,
}

/// What `/status` says about a backfill (`"backfills"`).
#[derive(Debug)]
pub struct BackfillStatus {
    pub table: String,
    /// `pending`, `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    /// Rows copied so far.
    pub rows: u64,
    /// The whole entry, for error messages.
    pub raw: Value,
}

/// A finished backfill run ([`SluiceProcess::wait_backfilled`]).
#[derive(Debug)]
pub struct Backfilled {
    pub backfills: Vec<BackfillStatus>,
    /// The sink's status at the end.
    pub sink: SinkStatus,
    /// From spawn until the source streamed (`None` if no poll saw it streaming).
    pub startup: Option<Duration>,
    /// From spawn until the end.
    pub took: Duration,
}

/// A `sluice run` child process with one sink and an admin port.
pub struct SluiceProcess {
    child: Child,
    pub dir: PathBuf,
    admin: u16,
    started: Instant,
}

impl SluiceProcess {
    /// Write the pipeline for `row` reading `feed` and start `sluice run` on it, from a
    /// fresh scratch directory (so a fresh state store).
    pub fn start(
        bin: &Path,
        pg_url: &str,
        row: &SinkRow,
        feed: Feed,
        webhook: &str,
        env: &[(&'static str, String)],
    ) -> Result<Self> {
        let dir = sluice_testkit::scratch_dir(&format!("bench-{}", row.name));
        let admin = sluice_testkit::free_port();
        let sink = row
            .sink
            .replace("$DIR", &dir.display().to_string())
            .replace("$WEBHOOK", webhook);
        let yaml = format!(
            "pipeline: bench-{name}\n\
             source:\n{source}\
             sinks:\n  {name}: {sink}\n\
             state: state.db\n\
             admin: 127.0.0.1:{admin}\n{extra}",
            name = row.name,
            source = feed.source(pg_url),
            extra = row.extra,
        );
        let pipeline = dir.join("pipeline.yaml");
        std::fs::write(&pipeline, yaml)?;
        let log = std::fs::File::create(dir.join("sluice.log"))?;
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("run")
            .arg(&pipeline)
            .current_dir(&dir)
            .env("SLUICE_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting sluice")?;
        Ok(SluiceProcess {
            child,
            dir,
            admin,
            started,
        })
    }

    /// The end of sluice's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("sluice.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `/status` as JSON, or `None` while the admin server is not up yet.
    async fn status_json(&mut self) -> Result<Option<Value>> {
        if let Some(exit) = self.child.try_wait()? {
            bail!("sluice exited ({exit}):\n{}", self.log_tail());
        }
        let Some(body) = http_get(self.admin, "/status").await else {
            return Ok(None);
        };
        serde_json::from_str(&body)
            .context("parsing /status")
            .map(Some)
    }

    /// `/status` of the one sink, or `None` while the admin server is not up yet.
    pub async fn status(&mut self) -> Result<Option<SinkStatus>> {
        let Some(v) = self.status_json().await? else {
            return Ok(None);
        };
        Ok(Some(sink_status(&v)?))
    }

    /// `/metrics`, the Prometheus text.
    pub async fn metrics(&self) -> Result<String> {
        http_get(self.admin, "/metrics")
            .await
            .context("GET /metrics: no answer")
    }

    /// Poll until the source streams; returns the time since spawn.
    pub async fn wait_streaming(&mut self, timeout: Duration) -> Result<Duration> {
        loop {
            if let Some(s) = self.status().await? {
                if s.streaming {
                    return Ok(self.started.elapsed());
                }
            }
            if self.started.elapsed() > timeout {
                bail!(
                    "sluice did not start streaming within {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Poll until the run is `done`. Fails when the sink stops, or when nothing is
    /// delivered for `stall`. Returns the last status and the time since spawn.
    pub async fn wait_done(
        &mut self,
        done: Done,
        stall: Duration,
    ) -> Result<(SinkStatus, Duration)> {
        let mut progress = (0u64, Instant::now());
        loop {
            if let Some(s) = self.status().await? {
                let finished = match done {
                    Done::Past(marker) => s.flush_lsn > marker,
                    Done::Delivered(events) => s.delivered >= events,
                };
                if finished {
                    return Ok((s, self.started.elapsed()));
                }
                if let Some(reason) = &s.stopped {
                    bail!("the sink stopped: {reason}\n{}", self.log_tail());
                }
                if s.delivered != progress.0 {
                    progress = (s.delivered, Instant::now());
                }
            }
            if progress.1.elapsed() > stall {
                bail!(
                    "no progress for {stall:?} ({} delivered):\n{}",
                    progress.0,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Poll until at least one backfill is listed and every one is `done`, and the sink
    /// delivered `rows` events. Fails when a backfill fails or is cancelled, when the sink
    /// stops, or when neither the backfills' rows nor the deliveries move for `stall`.
    pub async fn wait_backfilled(&mut self, rows: u64, stall: Duration) -> Result<Backfilled> {
        let mut progress = (0u64, Instant::now());
        let mut startup = None;
        loop {
            if let Some(v) = self.status_json().await? {
                let sink = sink_status(&v)?;
                if sink.streaming && startup.is_none() {
                    startup = Some(self.started.elapsed());
                }
                let backfills = backfills(&v);
                if let Some(b) = backfills
                    .iter()
                    .find(|b| b.state == "failed" || b.state == "cancelled")
                {
                    bail!("the backfill of {} ended {}: {}", b.table, b.state, b.raw);
                }
                if let Some(reason) = &sink.stopped {
                    bail!("the sink stopped: {reason}\n{}", self.log_tail());
                }
                if !backfills.is_empty()
                    && backfills.iter().all(|b| b.state == "done")
                    && sink.delivered >= rows
                {
                    return Ok(Backfilled {
                        backfills,
                        sink,
                        startup,
                        took: self.started.elapsed(),
                    });
                }
                let moved = sink.delivered + backfills.iter().map(|b| b.rows).sum::<u64>();
                if moved != progress.0 {
                    progress = (moved, Instant::now());
                }
            }
            if progress.1.elapsed() > stall {
                bail!(
                    "no backfill progress for {stall:?} ({} rows and deliveries):\n{}",
                    progress.0,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /wait?sink=SINK&lsn=TOKEN&timeout=TIMEOUT` (read-your-writes): the answer's
    /// status, 200 once the sink applied every change committed up to `token`.
    pub async fn wait(&self, sink: &str, token: &str, timeout: &str) -> Result<u16> {
        let path = format!("/wait?sink={sink}&lsn={token}&timeout={timeout}");
        let (status, _) = http_request(self.admin, &path, Duration::from_secs(90))
            .await
            .with_context(|| format!("GET {path}: no answer"))?;
        Ok(status)
    }

    /// CPU time sluice has used so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::cpu::process_seconds(self.child.id()?)
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// SIGTERM (sluice drains and commits), then wait for it to exit; kill after 60 s.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("sluice exited with {status}:\n{}", self.log_tail());
                }
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("sluice did not stop within 60 s of SIGTERM");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// The one sink of a `/status` answer.
fn sink_status(v: &Value) -> Result<SinkStatus> {
    let sink = &v["sinks"][0];
    Ok(SinkStatus {
        streaming: v["source"]["streaming"].as_bool().unwrap_or(false),
        flush_lsn: Lsn::parse(sink["flush_lsn"].as_str().unwrap_or("0/0"))?,
        delivered: sink["delivered"].as_u64().unwrap_or(0),
        stopped: (sink["state"] == "stopped").then(|| sink["reason"].to_string()),
    })
}

/// The backfills of a `/status` answer (none when it has no `"backfills"`).
fn backfills(v: &Value) -> Vec<BackfillStatus> {
    v["backfills"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|b| BackfillStatus {
                    table: b["table"].as_str().unwrap_or("?").to_string(),
                    state: b["state"].as_str().unwrap_or("?").to_string(),
                    rows: b["rows"].as_u64().unwrap_or(0),
                    raw: b.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A plain HTTP/1.0 GET of `path` on 127.0.0.1:`port`: the body of a 200 answer, `None`
/// when nothing answers (yet) or the answer is not a 200.
async fn http_get(port: u16, path: &str) -> Option<String> {
    match http_request(port, path, Duration::from_secs(5)).await? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// A plain HTTP/1.0 GET of `path` on 127.0.0.1:`port`: the status and body, `None` when
/// nothing answers within `timeout`.
async fn http_request(port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8(response).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(timeout, fetch).await.ok().flatten()
}
