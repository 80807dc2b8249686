//! The consumers under test: `pg_recvlogical` (the ceiling) and sluice with each sink of
//! [`SINKS`], each run alone on its own slot until it has read past a workload's marker.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::workload::{Lsn, PUBLICATION, TABLE};

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
    /// Run the throughput workloads through it.
    pub throughput: bool,
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
}

/// Every sink the benchmark runs. Adding a sink is one line here.
#[rustfmt::skip]
pub const SINKS: &[SinkRow] = &[
    SinkRow { name: "blackhole",       sink: "{ type: blackhole }",                               extra: "", needs: &[], throughput: true,  latency: Latency::No },
    // The same with the journal in memory: what the durable journal costs.
    SinkRow { name: "blackhole-memory", sink: "{ type: blackhole }", extra: "journal: { type: memory }\n", needs: &[], throughput: true, latency: Latency::No },
    SinkRow { name: "file",            sink: "{ type: file, path: \"$DIR/events.jsonl\" }",       extra: "", needs: &[], throughput: true,  latency: Latency::No },
    SinkRow { name: "webhook",         sink: "{ type: webhook, url: \"$WEBHOOK\" }",              extra: "", needs: &[], throughput: true,  latency: Latency::Receiver },
    SinkRow { name: "webhook-batch",   sink: "{ type: webhook, url: \"$WEBHOOK\", batch: true }", extra: "", needs: &[], throughput: true,  latency: Latency::Receiver },
    // The cost of the WebAssembly host: blackhole behind a trivial transform, one that maps
    // each event to itself (identity: every event crosses back) and one that keeps it.
    SinkRow { name: "blackhole-wasm",  sink: "{ type: blackhole, transforms: [ { name: identity, wasm: \"${SLUICE_BENCH_IDENTITY_WASM}\" } ] }", extra: "", needs: &["SLUICE_BENCH_IDENTITY_WASM"], throughput: true, latency: Latency::No },
    SinkRow { name: "blackhole-keep",  sink: "{ type: blackhole, transforms: [ { name: passthrough, wasm: \"${SLUICE_BENCH_PASSTHROUGH_WASM}\" } ] }", extra: "", needs: &["SLUICE_BENCH_PASSTHROUGH_WASM"], throughput: true, latency: Latency::No },
    // Servers the bench starts itself when the variable is unset (see services.rs). The
    // stream row keeps each stream to about 100k entries, as a deployment would.
    SinkRow { name: "redis",           sink: "{ type: redis, url: \"${REDIS_URL}\" }",           extra: "", needs: &["REDIS_URL"], throughput: true, latency: Latency::No },
    SinkRow { name: "redis-hash",      sink: "{ type: redis, url: \"${REDIS_URL}\", format: hash }", extra: "", needs: &["REDIS_URL"], throughput: true, latency: Latency::No },
    SinkRow { name: "redis-stream",    sink: "{ type: redis, url: \"${REDIS_URL}\", mode: stream, maxlen: 100000 }", extra: "", needs: &["REDIS_URL"], throughput: true, latency: Latency::No },
    SinkRow { name: "kafka",           sink: "{ type: kafka, brokers: \"${KAFKA_BROKERS}\", topic: sluice-bench }", extra: "", needs: &["KAFKA_BROKERS"], throughput: true, latency: Latency::No },
    SinkRow { name: "rabbitmq",        sink: "{ type: rabbitmq, url: \"${RABBITMQ_URL}\", exchange: bench }", extra: "", needs: &["RABBITMQ_URL"], throughput: true, latency: Latency::No },
    SinkRow { name: "elasticsearch",   sink: "{ type: elasticsearch, url: \"${ELASTICSEARCH_URL}\" }", extra: "", needs: &["ELASTICSEARCH_URL"], throughput: true, latency: Latency::No },
    // Read-your-writes: the wait of an application that writes, takes the token and waits
    // for its Redis cache (targets: p99 ≤ 20 ms idle, ≤ 50 ms under 10k changes/s).
    SinkRow { name: "ryw",             sink: "{ type: redis, url: \"${REDIS_URL}\" }",           extra: "", needs: &["REDIS_URL"], throughput: false, latency: Latency::Wait },
    // The same with batches that linger 1 ms instead of 10 ms: a lone change goes out sooner.
    SinkRow { name: "ryw-1ms",         sink: "{ type: redis, url: \"${REDIS_URL}\", delivery: { batch: { max_wait: 1ms } } }", extra: "", needs: &["REDIS_URL"], throughput: false, latency: Latency::Wait },
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

/// `pg_recvlogical` with pgoutput (protocol 1) from `slot` to /dev/null until it reads
/// past `marker`; returns the wall time from spawn to exit.
pub async fn recvlogical(
    bin_dir: &Path,
    port: u16,
    slot: &str,
    marker: Lsn,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let child = Command::new(bin_dir.join("pg_recvlogical"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "--slot", slot, "--start", "--no-loop"])
        .args(["-P", "pgoutput", "-o", "proto_version=1"])
        .arg("-o")
        .arg(format!("publication_names={PUBLICATION}"))
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

/// What `/status` says about the pipeline's one sink.
#[derive(Debug)]
pub struct SinkStatus {
    pub streaming: bool,
    pub flush_lsn: Lsn,
    pub delivered: u64,
    /// Why it stopped, when it did.
    pub stopped: Option<String>,
}

/// A `sluice run` child process with one sink and an admin port.
pub struct SluiceProcess {
    child: Child,
    pub dir: PathBuf,
    admin: u16,
    started: Instant,
}

impl SluiceProcess {
    /// Write the pipeline for `row` reading `slot` and start `sluice run` on it, from a
    /// fresh scratch directory (so a fresh state store).
    pub fn start(
        bin: &Path,
        pg_url: &str,
        row: &SinkRow,
        slot: &str,
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
             source:\n  type: postgres\n  url: {pg_url}\n  slot: {slot}\n  publication: {PUBLICATION}\n  tables: [{TABLE}]\n\
             sinks:\n  {name}: {sink}\n\
             state: state.db\n\
             admin: 127.0.0.1:{admin}\n{extra}",
            name = row.name,
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

    /// `/status`, or `None` while the admin server is not up yet.
    pub async fn status(&mut self) -> Result<Option<SinkStatus>> {
        if let Some(exit) = self.child.try_wait()? {
            bail!("sluice exited ({exit}):\n{}", self.log_tail());
        }
        let Some(body) = http_get(self.admin, "/status").await else {
            return Ok(None);
        };
        let v: Value = serde_json::from_str(&body).context("parsing /status")?;
        let sink = &v["sinks"][0];
        Ok(Some(SinkStatus {
            streaming: v["source"]["streaming"].as_bool().unwrap_or(false),
            flush_lsn: Lsn::parse(sink["flush_lsn"].as_str().unwrap_or("0/0"))?,
            delivered: sink["delivered"].as_u64().unwrap_or(0),
            stopped: (sink["state"] == "stopped").then(|| sink["reason"].to_string()),
        }))
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

    /// Poll until the sink's durable `flush_lsn` is past `marker`. Fails when the sink
    /// stops, or when nothing is delivered for `stall`. Returns the last status and the
    /// time since spawn.
    pub async fn wait_flushed(
        &mut self,
        marker: Lsn,
        stall: Duration,
    ) -> Result<(SinkStatus, Duration)> {
        let mut progress = (0u64, Instant::now());
        loop {
            if let Some(s) = self.status().await? {
                if s.flush_lsn > marker {
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
