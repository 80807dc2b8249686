//! `sluice-bench`: sluice against the physical limit, on the same WAL, in one run.
//!
//! For each workload it creates one logical slot per consumer *before* writing the
//! changes, so every consumer reads the same WAL; then it runs each consumer alone, from
//! its start until it has consumed past the workload's marker (see [`workload`]), and
//! drops its slot (see [`throughput`]). `pg_recvlogical` with pgoutput to /dev/null is the ceiling; every
//! sluice row is divided by it. A latency run sends a steady load through sluice to the
//! bench's own webhook receiver, which times each envelope from its commit; a
//! read-your-writes run (row `ryw`) times an application's write→token→`/wait` on a Redis
//! cache, idle and under the same steady load. The outbox workload writes a transactional
//! outbox: sluice relays it from the WAL (`source.outbox`) and, on a copy of the same
//! rows, as the polling source (`postgres_outbox_poll`); the brokers' rows also run a
//! steady outbox load, timed by sluice's own commit→ack histogram (see [`outbox`]). The
//! backfill workload copies a table that existed before the slot (`snapshot: initial`)
//! beside `psql`'s `COPY … TO STDOUT`, its ceiling (see [`backfill`]). Everything ends in
//! one table (Markdown) on stdout, and in `--out` if given.
//!
//! Run it with `bash scripts/bench.sh` (release builds of sluice and this binary).

mod backfill;
mod consumers;
mod cpu;
mod metrics;
mod outage;
mod outbox;
mod receiver;
mod report;
mod services;
mod throughput;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use sluice_testkit::Postgres;
use tokio_postgres::Client;

use consumers::{Feed, Latency, SinkRow, SluiceProcess, SINKS};
use receiver::Receiver;
use report::{percentile, secs, Row};
use services::Services;
use workload::{count, Workload};

/// Benchmarks sluice against pg_recvlogical on the same WAL: throughput, commit→sink
/// latency, peak memory.
#[derive(Parser, Debug)]
#[command(name = "sluice-bench")]
struct Args {
    /// Changes per workload.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,

    /// How many times each consumer reads each workload (each time from its own slot, on
    /// the same WAL, in rounds); the table shows the median and the spread.
    #[arg(long, default_value_t = 3)]
    repeat: usize,

    /// Rows per transaction in the inserts and updates workloads.
    #[arg(long, default_value_t = 1000)]
    tx_rows: u64,

    /// Only these workloads (comma-separated): inserts, updates, one-tx, outbox, backfill.
    /// Updates change the rows the inserts wrote, so they need inserts. `outbox` also
    /// selects the outbox latency runs (`--outbox-rate`).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,

    /// Only these sinks (comma-separated names from the table in consumers.rs).
    /// pg_recvlogical always runs: it is the reference.
    #[arg(long, value_delimiter = ',')]
    sinks: Vec<String>,

    /// The steady rate of the latency runs, in changes per second; 0 skips them.
    #[arg(long, default_value_t = 10_000)]
    latency_rate: u64,

    /// How long each latency run sends its load, in seconds.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,

    /// The steady rate of the outbox latency runs (the broker rows, with the outbox
    /// workload), in outbox events per second; 0 skips them.
    #[arg(long, default_value_t = 2_000)]
    outbox_rate: u64,

    /// How long each outbox latency run sends its load, in seconds.
    #[arg(long, default_value_t = 20)]
    outbox_secs: u64,

    /// Rows per poll of the polling outbox source in the outbox workload (its
    /// `batch_size`, 1 to 10000; the source's default is 500).
    #[arg(long, default_value_t = 500)]
    poll_batch: u32,

    /// The backfill workload's largest chunk (`source.backfill.chunk_rows`); unset:
    /// sluice's default.
    #[arg(long)]
    backfill_chunk_rows: Option<usize>,

    /// Before each timed run, wait up to this many seconds for other work on the machine
    /// to drop below 20% of a core (0: do not wait).
    #[arg(long, default_value_t = 120)]
    quiet_wait: u64,

    /// Also write the table (with the machine and the command) to this file.
    #[arg(long)]
    out: Option<PathBuf>,

    /// The journal's outage scenario: two webhook sinks under a steady `--outage-rate`, one
    /// of them down for this many seconds (0 skips it). Reports the healthy sink's latency,
    /// the most WAL the slot kept on the server, and the returning sink's catch-up rate.
    #[arg(long, default_value_t = 0)]
    outage_secs: u64,

    /// The outage scenario's webhooks send a batch per request (`batch: true`).
    #[arg(long)]
    outage_batch: bool,

    /// The steady rate of the outage scenario, in changes per second.
    #[arg(long, default_value_t = 2_000)]
    outage_rate: u64,

    /// Another sluice binary (an earlier build, say) to run beside this one on every sluice
    /// row, in the same rounds on the same WAL: its rows are labelled `baseline → …`.
    #[arg(long, value_name = "SLUICE_BINARY")]
    baseline: Option<PathBuf>,
}

/// What every run needs.
struct Bench {
    args: Args,
    pg: Postgres,
    client: Client,
    pg_bin: PathBuf,
    /// The binaries under test: this build's, then the baseline's if any, with the label
    /// of their rows.
    binaries: Vec<(&'static str, PathBuf)>,
    receiver: Receiver,
    /// Servers started for the sink rows that need them.
    services: Services,
    sinks: Vec<&'static SinkRow>,
    /// This process and the postmaster: see [`cpu`] (and [`Bench::ours`]).
    ours: Vec<u32>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut binaries = vec![("sluice", sluice_testkit::sluice::bin())];
    if let Some(baseline) = &args.baseline {
        anyhow::ensure!(
            baseline.is_file(),
            "--baseline {}: no such file",
            baseline.display()
        );
        binaries.push(("baseline", baseline.clone()));
    }
    let pg_bin = consumers::pg_bin_dir()?;

    let selected: Vec<&SinkRow> = SINKS
        .iter()
        .filter(|row| args.sinks.is_empty() || args.sinks.iter().any(|s| s == row.name))
        .collect();
    let services = Services::start(&selected).await?;
    let mut sinks = Vec::new();
    let mut skipped = Vec::new();
    for row in selected {
        match row.missing_env(|var| services.provides(var)) {
            Some(var) => skipped.push(format!("{} (set {var} to run it)", row.name)),
            None => sinks.push(row),
        }
    }
    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| args.workloads.is_empty() || args.workloads.iter().any(|n| n == w.name()))
        .collect();

    eprintln!("bench: starting PostgreSQL");
    let pg = Postgres::start("bench");
    let client = workload::prepare(&pg).await?;
    let machine = machine(&client).await;
    let load_start = load_average();
    let mut ours = vec![std::process::id()];
    ours.extend(cpu::postmaster(&pg.dir.join("data")));
    let bench = Bench {
        ours,
        receiver: Receiver::start().await?,
        services,
        args,
        pg,
        client,
        pg_bin,
        binaries,
        sinks,
    };
    eprintln!("bench: {machine}");

    let mut rows = Vec::new();
    let outbox_selected = workloads.contains(&Workload::Outbox);
    for w in workloads {
        rows.extend(match w {
            Workload::Backfill => bench.backfill().await?,
            w => bench.workload(w).await?,
        });
    }
    let args = &bench.args;
    let steady = args.latency_rate > 0 && args.latency_secs > 0;
    let outbox_steady = outbox_selected && args.outbox_rate > 0 && args.outbox_secs > 0;
    // Ids above every workload's, each run's own (a steady load writes at least 100 rows
    // a second).
    let mut next_id = 10 * args.rows + 1;
    for sink in &bench.sinks {
        for (label, bin) in &bench.binaries {
            let (measured, written) = match sink.latency {
                Latency::Receiver if steady => (
                    vec![bench.latency(label, bin, sink, next_id).await],
                    args.latency_rate.max(100) * args.latency_secs,
                ),
                Latency::Wait if steady => (
                    bench.read_your_writes(label, bin, sink, next_id).await,
                    args.latency_rate.max(100) * args.latency_secs,
                ),
                Latency::Histogram if outbox_steady => (
                    vec![bench.outbox_latency(label, bin, sink, next_id).await],
                    bench.outbox_ids(),
                ),
                _ => continue,
            };
            rows.extend(measured);
            next_id += written;
        }
    }

    let mut text = format!(
        "{machine}\ncommand: {command}\nload average (1 min) at the start {load_start}, at the end {}\n\n{}",
        load_average(),
        report::table(&rows)
    );
    if bench.args.outage_secs > 0 {
        text.push_str(&bench.outage().await);
    }
    if !skipped.is_empty() {
        text.push_str(&format!("\nskipped: {}\n", skipped.join(", ")));
    }
    println!("{text}");
    if let Some(out) = &bench.args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

impl Bench {
    /// The outage scenario ([`outage`]) with this build, as a paragraph for the report.
    async fn outage(&self) -> String {
        let (rate, down) = (self.args.outage_rate, self.args.outage_secs);
        let first_id = 100 * self.args.rows + 1;
        self.quiet().await;
        let (_, bin) = &self.binaries[0];
        eprintln!("bench: outage: {rate}/s, one sink down for {down} s");
        match outage::run(
            bin,
            &self.pg.url(),
            &self.client,
            &self.receiver,
            outage::Scenario {
                rate,
                down_secs: down,
                first_id,
                batched: self.args.outage_batch,
            },
        ).await {
            Ok(o) => format!(
                "\noutage: {rate} changes/s for {} s{}, sink `down` down for {down} s from t = 10 s: \
                 sink `healthy` commit→delivery p50 {:.1} ms, p99 {:.1} ms; the slot kept at most \
                 {:.1} MB of WAL; `down` caught up on {} events at {:.0} events/s ({} events in all)\n",
                down + 20,
                if self.args.outage_batch { " (webhooks with batch: true)" } else { "" },
                o.healthy_p50_ms,
                o.healthy_p99_ms,
                o.max_retained_mb,
                o.backlog,
                o.catch_up_per_sec,
                o.events
            ),
            Err(e) => format!("\noutage: failed: {e:#}\n"),
        }
    }

    /// The processes whose CPU is the benchmark's own: this one, the postmaster and the
    /// servers started for the sinks (asked each time: a server restarted to empty it has
    /// a new pid).
    fn ours(&self) -> Vec<u32> {
        let mut ours = self.ours.clone();
        ours.extend(self.services.pids());
        ours
    }

    /// Wait (up to `--quiet-wait`) until other work leaves the machine alone.
    async fn quiet(&self) {
        if self.args.quiet_wait == 0 {
            return;
        }
        let patience = Duration::from_secs(self.args.quiet_wait);
        let (waited, quiet) = cpu::wait_quiet(&self.ours(), 20.0, patience).await;
        if !quiet {
            eprintln!("bench: other work keeps the machine busy; going on after {waited:?}");
        } else if waited > Duration::from_secs(2) {
            eprintln!("bench: waited {waited:?} for other work to finish");
        }
    }

    /// A steady load through the sluice binary `bin` with `sink` (a webhook to the bench
    /// receiver), timing every envelope from its commit to its arrival.
    async fn latency(&self, bin_label: &str, bin: &Path, sink: &SinkRow, first_id: u64) -> Row {
        let (rate, duration) = (self.args.latency_rate, self.args.latency_secs);
        let mut row = Row {
            workload: format!("steady {}/s, {duration} s", count(rate)),
            consumer: format!("{bin_label} → {}", sink.name),
            ..Row::default()
        };
        let slot = format!("bench_latency_{bin_label}_{}", sink.name).replace('-', "_");
        let result = async {
            let feed = Feed::Table { slot: &slot };
            let mut process =
                SluiceProcess::start(bin, &self.pg.url(), sink, feed, &self.receiver.url, &[])?;
            let startup = process.wait_streaming(Duration::from_secs(60)).await;
            self.quiet().await;
            let before = cpu::sample(&self.ours());
            let measured = async {
                row.startup = Some(secs(startup?));
                let before = self.receiver.events();
                self.receiver.record();
                let started = Instant::now();
                let events = workload::steady(&self.client, first_id, rate, duration).await?;
                row.seconds = Some(secs(started.elapsed()));
                row.events = events;
                let deadline = Instant::now() + Duration::from_secs(60);
                while self.receiver.events() - before < events && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    process.status().await?;
                }
                anyhow::Ok(())
            }
            .await;
            let latencies = self.receiver.take_latencies();
            row.rss_mb = process.peak_rss_mb();
            let stopped = process.stop().await;
            row.other_cpu = Some(cpu::other_percent(&before, &cpu::sample(&self.ours())));
            measured?;
            stopped?;
            let ms = |p| percentile(&latencies, p).map(|us| us as f64 / 1000.0);
            row.p50_ms = ms(50.0);
            row.p99_ms = ms(99.0);
            if (latencies.len() as u64) < row.events {
                row.note = format!(
                    "{} of {} events arrived within 60 s of the load's end",
                    latencies.len(),
                    row.events
                );
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            row.note = format!("{e:#}");
        }
        if let Err(e) = workload::drop_slot(&self.client, &slot).await {
            row.note = format!("{} {e:#}", row.note);
        }
        eprintln!(
            "bench: {}: {} {}",
            row.workload,
            row.consumer,
            summary(&row)
        );
        row
    }

    /// Read-your-writes through the sluice binary `bin` with `sink` (the `ryw` row): for
    /// `--latency-secs`, a probe commits one row every [`PROBE_EVERY`], takes
    /// `pg_current_wal_insert_lsn()` and waits on the sink with `GET /wait`, timed from the
    /// commit's return to the 200; first with nothing else running (idle), then beside the
    /// steady load of the latency runs (`--latency-rate`). Two rows, idle and loaded, whose
    /// `events` are the waits answered 200.
    async fn read_your_writes(
        &self,
        bin_label: &str,
        bin: &Path,
        sink: &SinkRow,
        first_id: u64,
    ) -> Vec<Row> {
        let (rate, duration) = (self.args.latency_rate, self.args.latency_secs);
        let consumer = format!("{bin_label} → {} (write→token→/wait)", sink.name);
        let mut idle = Row {
            workload: format!("read-your-writes, idle, {duration} s"),
            consumer: consumer.clone(),
            ..Row::default()
        };
        let mut loaded = Row {
            workload: format!("read-your-writes, steady {}/s, {duration} s", count(rate)),
            consumer,
            ..Row::default()
        };
        let slot = format!("bench_ryw_{bin_label}_{}", sink.name).replace('-', "_");
        let result = async {
            self.services.reset()?;
            // Synchronous commits, as in production (and as the steady load's): the
            // walsender sends only flushed WAL, so an asynchronous commit would wait for
            // the WAL writer (wal_writer_delay, 200 ms) before any sink could see it.
            let probe = self.pg.client().await;
            probe.batch_execute("set synchronous_commit = on").await?;
            let mut process = SluiceProcess::start(
                bin,
                &self.pg.url(),
                sink,
                Feed::Table { slot: &slot },
                &self.receiver.url,
                self.services.env(),
            )?;
            let measured = async {
                let startup = secs(process.wait_streaming(Duration::from_secs(60)).await?);
                let duration = Duration::from_secs(duration);
                // Probe rows have negative ids: never one of the load's.
                let mut next_probe = -1;

                self.quiet().await;
                let before = cpu::sample(&self.ours());
                let waits = probe_waits(&probe, &process, sink.name, duration, next_probe).await?;
                idle.other_cpu = Some(cpu::other_percent(&before, &cpu::sample(&self.ours())));
                next_probe -= waits.count;
                waits.into_row(&mut idle, startup, RYW_TARGET_IDLE_MS);

                self.quiet().await;
                let before = cpu::sample(&self.ours());
                let (written, waits) = tokio::join!(
                    workload::steady(&self.client, first_id, rate, duration.as_secs()),
                    probe_waits(&probe, &process, sink.name, duration, next_probe),
                );
                loaded.other_cpu = Some(cpu::other_percent(&before, &cpu::sample(&self.ours())));
                written?;
                waits?.into_row(&mut loaded, startup, RYW_TARGET_LOADED_MS);
                anyhow::Ok(())
            }
            .await;
            loaded.rss_mb = process.peak_rss_mb();
            let stopped = process.stop().await;
            measured?;
            stopped
        }
        .await;
        if let Err(e) = result {
            for row in [&mut idle, &mut loaded] {
                if row.p99_ms.is_none() {
                    row.note = format!("{e:#}");
                }
            }
        }
        if let Err(e) = workload::drop_slot(&self.client, &slot).await {
            loaded.note = format!("{} {e:#}", loaded.note);
        }
        for row in [&idle, &loaded] {
            eprintln!("bench: {}: {} {}", row.workload, row.consumer, summary(row));
        }
        vec![idle, loaded]
    }
}

/// Read-your-writes targets from the issue: p99 of the wait, idle and under 10k changes/s.
const RYW_TARGET_IDLE_MS: f64 = 20.0;
const RYW_TARGET_LOADED_MS: f64 = 50.0;

/// How often a read-your-writes probe writes and waits (100 per second): an application's
/// requests, not a load of their own.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// What a run of read-your-writes probes saw.
struct Waits {
    /// Probes run (rows written).
    count: i64,
    /// Commit→200 of each probe answered 200, µs, sorted.
    took_us: Vec<u64>,
    /// The other answers: (status, how many).
    other: Vec<(u16, u64)>,
}

impl Waits {
    /// The percentiles into `row`, with a note when answers were not 200 or the p99
    /// missed `target_ms`.
    fn into_row(self, row: &mut Row, startup: f64, target_ms: f64) {
        let ms = |p| percentile(&self.took_us, p).map(|us| us as f64 / 1000.0);
        row.startup = Some(startup);
        row.events = self.took_us.len() as u64;
        row.p50_ms = ms(50.0);
        row.p99_ms = ms(99.0);
        let mut notes: Vec<String> = self
            .other
            .iter()
            .map(|(status, n)| format!("{n} of {} waits answered {status}", self.count))
            .collect();
        if let Some(p99) = row.p99_ms.filter(|p99| *p99 > target_ms) {
            notes.push(format!(
                "p99 {p99:.1} ms is above the {target_ms} ms target"
            ));
        }
        row.note = notes.join("; ");
    }
}

/// For `duration`, every [`PROBE_EVERY`]: commit one row (id `first_id`, then downwards;
/// an update when an earlier run wrote it),
/// take the token `pg_current_wal_insert_lsn()` after the COMMIT, and `GET /wait` on `sink`
/// until it answers, timing the commit's return to the answer.
async fn probe_waits(
    client: &Client,
    process: &SluiceProcess,
    sink: &str,
    duration: Duration,
    first_id: i64,
) -> Result<Waits> {
    let mut waits = Waits {
        count: 0,
        took_us: Vec::new(),
        other: Vec::new(),
    };
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    while started.elapsed() < duration {
        tick.tick().await;
        let id = first_id - waits.count;
        client
            .execute(
                &format!(
                    "insert into {} (id, account, status, amount, note, updated_at)
                     values ({id}, 0, 'probe', 0, 'read-your-writes', now())
                     on conflict (id) do update set updated_at = now()",
                    workload::TABLE
                ),
                &[],
            )
            .await
            .context("writing a read-your-writes probe")?;
        let committed = Instant::now();
        let token: String = client
            .query_one("select pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
        let status = process.wait(sink, &token, "10s").await?;
        let took = committed.elapsed();
        waits.count += 1;
        if status == 200 {
            waits.took_us.push(took.as_micros() as u64);
        } else {
            match waits.other.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => waits.other.push((status, 1)),
            }
        }
    }
    waits.took_us.sort_unstable();
    Ok(waits)
}

/// A progress line for stderr.
fn summary(row: &Row) -> String {
    match (row.rate(), row.p99_ms) {
        _ if !row.note.is_empty() => format!("({})", row.note),
        (_, Some(p99)) => format!("p50 {:.1} ms, p99 {p99:.1} ms", row.p50_ms.unwrap_or(0.0)),
        (Some(rate), None) => format!("{rate:.0} events/s"),
        (None, None) => String::new(),
    }
}

/// The 1-minute load average: other work on the machine skews every figure.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The machine and server, for the table's header.
async fn machine(client: &Client) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    let model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let version: String = match client.query_one("show server_version", &[]).await {
        Ok(row) => row.get(0),
        Err(_) => "?".into(),
    };
    format!("machine: {cpus} CPUs ({model}), {mem_gib:.1} GiB RAM; PostgreSQL {version}")
}
