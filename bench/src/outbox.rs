//! The outbox relay's latency: outbox events committed at a steady rate
//! (`--outbox-rate` for `--outbox-secs`, each transaction one tick's rows) through a broker
//! sink, timed by sluice itself. `sluice_sink_latency_seconds` observes every event from
//! its commit (`source.ts`) to the sink's acknowledgement (Kafka's delivery report,
//! RabbitMQ's publisher confirm). Each of the `--repeat` runs starts a fresh pipeline
//! (and empties the broker); a warm-up of [`WARM_UP`] s at the same rate comes first
//! (the producer's first connection and metadata are not the steady state); the histogram
//! is scraped once the warm-up's events are acknowledged and again once the measured
//! phase's are; the row's percentiles are estimated inside the buckets of the measured
//! phases' histograms, summed over the runs (see [`metrics`]).
//!
//! The polling source has no row here: its events' `source.ts` is the moment a poll read
//! them, not their commit, so the histogram would leave out the wait for the poll.
//!
//! [`metrics`]: crate::metrics

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::consumers::{Feed, SinkRow, SluiceProcess};
use crate::metrics::Buckets;
use crate::report::{self, secs, Row};
use crate::workload::{self, count};
use crate::{cpu, summary, Bench};

/// sluice's commit→acknowledged histogram (runtime/engine/src/admin.rs).
const LATENCY_METRIC: &str = "sluice_sink_latency_seconds";

/// The load before the measured phase, in seconds.
const WARM_UP: u64 = 2;

/// How long after a load's end its events may take to be acknowledged.
const ACK_PATIENCE: Duration = Duration::from_secs(60);

impl Bench {
    /// Outbox ids one run of [`Bench::outbox_latency`] may write.
    fn outbox_ids_per_run(&self) -> u64 {
        self.args.outbox_rate.max(100) * (self.args.outbox_secs + WARM_UP)
    }

    /// Outbox ids [`Bench::outbox_latency`] may write, every round.
    pub(crate) fn outbox_ids(&self) -> u64 {
        self.outbox_ids_per_run() * self.args.repeat.max(1) as u64
    }

    /// A steady outbox load through the sluice binary `bin` with `sink`, `--repeat`
    /// times on a fresh pipeline each, outbox ids from `first_id`: p50 and p99 of
    /// commit→ack over the measured events of the runs kept (their histograms summed;
    /// the undisturbed runs when there is one, as for the rates), each run's p99 and the
    /// bucket bounds in the note.
    pub(crate) async fn outbox_latency(
        &self,
        bin_label: &str,
        bin: &Path,
        sink: &SinkRow,
        first_id: u64,
    ) -> Row {
        let (rate, duration) = (self.args.outbox_rate, self.args.outbox_secs);
        let workload = format!("steady outbox {}/s, {duration} s", count(rate));
        let consumer = format!("{bin_label} → {} (commit→ack)", sink.name);
        let mut runs = Vec::new();
        // Each run's measured phase, and whether other work disturbed it.
        let mut phases: Vec<(Buckets, bool)> = Vec::new();
        for round in 0..self.args.repeat.max(1) {
            let mut row = Row {
                workload: workload.clone(),
                consumer: consumer.clone(),
                // What the load writes (see workload::steady), until a run says.
                events: (rate / 100).max(1) * 100 * duration,
                ..Row::default()
            };
            let first = first_id + round as u64 * self.outbox_ids_per_run();
            match self
                .outbox_latency_run(bin_label, bin, sink, first, &mut row)
                .await
            {
                Ok(phase) => {
                    row.p50_ms = phase.percentile(50.0).map(|e| e.ms);
                    row.p99_ms = phase.percentile(99.0).map(|e| e.ms);
                    let disturbed = row.other_cpu.is_some_and(|c| c > report::DISTURBED);
                    phases.push((phase, disturbed));
                }
                Err(e) => row.note = format!("{e:#}"),
            }
            eprintln!("bench: {workload}: {consumer} {}", summary(&row));
            runs.push(row);
        }
        let p99s: Vec<String> = runs
            .iter()
            .map(|r| r.p99_ms.map_or("–".into(), |ms| format!("{ms:.1}")))
            .collect();
        let mut row = report::combine(runs);
        // As for the rates: the undisturbed runs, when there is one.
        let quiet = phases.iter().any(|(_, disturbed)| !disturbed);
        let mut kept = phases
            .iter()
            .filter(|(_, disturbed)| !(quiet && *disturbed))
            .map(|(phase, _)| phase);
        let Some(first) = kept.next() else {
            return row;
        };
        let buckets = match kept.try_fold(first.clone(), |sum, phase| sum.plus(phase)) {
            Ok(buckets) => buckets,
            Err(e) => {
                row.note = format!("{e:#}");
                return row;
            }
        };
        let (p50, p99) = (buckets.percentile(50.0), buckets.percentile(99.0));
        row.p50_ms = p50.as_ref().map(|e| e.ms);
        row.p99_ms = p99.as_ref().map(|e| e.ms);
        let bucket = |(lo, hi): (f64, f64)| format!("{lo}–{hi} ms");
        let mut notes = Vec::new();
        if let (Some(p50), Some(p99)) = (p50, p99) {
            notes.push(format!(
                "{LATENCY_METRIC} over the {} events of the runs kept, interpolated in its \
                 buckets: p50 in {}, p99 in {}; p99 per run {} ms",
                buckets.count(),
                bucket(p50.bucket_ms),
                bucket(p99.bucket_ms),
                p99s.join(", ")
            ));
        }
        if buckets.double_accumulated {
            notes.push(
                "sluice's /metrics accumulates this histogram's buckets twice (the +Inf \
                 bucket exceeds _count): read back from _count"
                    .into(),
            );
        }
        if !row.note.is_empty() {
            notes.push(row.note.clone());
        }
        row.note = notes.join("; ");
        eprintln!("bench: {workload}: {consumer} {}", summary(&row));
        row
    }

    /// One run of [`Bench::outbox_latency`]: the measured phase's histogram, the rest of
    /// the figures into `row`.
    async fn outbox_latency_run(
        &self,
        bin_label: &str,
        bin: &Path,
        sink: &SinkRow,
        first_id: u64,
        row: &mut Row,
    ) -> Result<Buckets> {
        let (rate, duration) = (self.args.outbox_rate, self.args.outbox_secs);
        let slot = format!("bench_outbox_latency_{bin_label}_{}", sink.name).replace('-', "_");
        let result = async {
            self.services.reset()?;
            let mut process = SluiceProcess::start(
                bin,
                &self.pg.url(),
                sink,
                Feed::Outbox { slot: &slot },
                &self.receiver.url,
                self.services.env(),
            )?;
            let startup = process.wait_streaming(Duration::from_secs(60)).await;
            self.quiet().await;
            let before = cpu::sample(&self.ours());
            let measured = async {
                row.startup = Some(secs(startup?));
                let warm = workload::steady_outbox(&self.client, first_id, rate, WARM_UP).await?;
                acknowledged(&mut process, warm).await?;
                let metrics = process.metrics().await?;
                let before = Buckets::parse(&metrics, LATENCY_METRIC, sink.name)?;
                let started = Instant::now();
                let events =
                    workload::steady_outbox(&self.client, first_id + warm, rate, duration).await?;
                row.seconds = Some(secs(started.elapsed()));
                row.events = events;
                acknowledged(&mut process, warm + events).await?;
                let metrics = process.metrics().await?;
                let phase = Buckets::parse(&metrics, LATENCY_METRIC, sink.name)?.since(&before)?;
                if phase.count() < events {
                    bail!(
                        "the histogram holds {} of the {events} events",
                        phase.count()
                    );
                }
                anyhow::Ok(phase)
            }
            .await;
            row.rss_mb = process.peak_rss_mb();
            let stopped = process.stop().await;
            row.other_cpu = Some(cpu::other_percent(&before, &cpu::sample(&self.ours())));
            let phase = measured?;
            stopped?;
            anyhow::Ok(phase)
        }
        .await;
        workload::drop_slot(&self.client, &slot).await?;
        result
    }
}

/// Wait until the sink has acknowledged `events` events in all, up to [`ACK_PATIENCE`].
async fn acknowledged(process: &mut SluiceProcess, events: u64) -> Result<()> {
    let deadline = Instant::now() + ACK_PATIENCE;
    loop {
        let delivered = process.status().await?.map_or(0, |s| s.delivered);
        if delivered >= events {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{delivered} of {events} events were acknowledged within {ACK_PATIENCE:?} of \
                 the load's end"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
