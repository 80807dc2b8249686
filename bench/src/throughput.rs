//! The throughput runs: each workload's changes (or outbox rows) read by `pg_recvlogical`
//! and by every sluice configuration that takes the workload, alone, round after round;
//! the polling outbox source on a fresh copy of the same rows.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::consumers::{self, Done, Feed, SinkRow, SluiceProcess};
use crate::report::{self, secs, Row};
use crate::workload::{self, Workload};
use crate::{cpu, summary, Bench};

impl Bench {
    /// The sluice configurations that run workload `w`: each sink that takes it once per
    /// binary under test (the baseline right after this build), WAL capture first, then
    /// the polling source (outbox workload).
    pub(crate) fn variants(&self, w: Workload) -> Vec<Variant<'_>> {
        let mut variants = Vec::new();
        for poll in [false, true] {
            for sink in &self.sinks {
                let runs = match w {
                    Workload::Outbox if poll => sink.poll,
                    Workload::Outbox => sink.outbox,
                    Workload::Backfill => !poll && sink.backfill,
                    _ => !poll && sink.throughput,
                };
                if !runs {
                    continue;
                }
                variants.extend(self.binaries.iter().map(|(label, bin)| Variant {
                    label,
                    bin,
                    sink,
                    poll,
                }));
            }
        }
        variants
    }

    /// One workload: slots for every consumer and round, the changes, then each
    /// consumer alone, round after round. A polling consumer needs no slot: before each
    /// of its runs the polling copy of the outbox is filled with the workload's rows.
    pub(crate) async fn workload(&self, w: Workload) -> Result<Vec<Row>> {
        let args = &self.args;
        let repeat = args.repeat.max(1);
        let label = w.label(args.rows, args.tx_rows);
        let variants = self.variants(w);
        let mut consumers = vec!["recvlogical".to_string()];
        consumers.extend(variants.iter().map(Variant::name));
        let slot = |consumer: &str, round: usize| {
            format!("bench_{}_{}_{round}", w.name(), consumer).replace('-', "_")
        };
        for round in 0..repeat {
            workload::create_slot(&self.client, &slot("recvlogical", round)).await?;
            for v in variants.iter().filter(|v| !v.poll) {
                workload::create_slot(&self.client, &slot(&v.name(), round)).await?;
            }
        }
        let generated = workload::generate(&self.client, w, args.rows, args.tx_rows).await?;
        eprintln!(
            "bench: {label}: written in {:.1} s; consumers read up to {}",
            secs(generated.took),
            generated.marker
        );
        // Generous: a stuck consumer is reported, not waited for forever.
        let timeout = Duration::from_secs(300 + args.rows / 1000);

        // runs[0] is pg_recvlogical's, then one per variant.
        let mut runs: Vec<Vec<Row>> = consumers.iter().map(|_| Vec::new()).collect();
        for round in 0..repeat {
            let mut reference = Row {
                workload: label.clone(),
                consumer: "pg_recvlogical".into(),
                events: generated.events,
                ..Row::default()
            };
            let slot_name = slot("recvlogical", round);
            self.quiet().await;
            let before = cpu::sample(&self.ours());
            match consumers::recvlogical(
                &self.pg_bin,
                self.pg.port,
                &slot_name,
                w.publication(),
                generated.marker,
                timeout,
            )
            .await
            {
                Ok(took) => reference.seconds = Some(secs(took)),
                Err(e) => reference.note = format!("{e:#}"),
            }
            reference.other_cpu = Some(cpu::other_percent(&before, &cpu::sample(&self.ours())));
            workload::drop_slot(&self.client, &slot_name).await?;
            eprintln!("bench: {label}: pg_recvlogical {}", summary(&reference));
            runs[0].push(reference);

            for (i, v) in variants.iter().enumerate() {
                let mut row = if v.poll {
                    self.poll_throughput(v, generated.events).await
                } else {
                    let slot_name = slot(&v.name(), round);
                    let feed = match w {
                        Workload::Outbox => Feed::Outbox { slot: &slot_name },
                        _ => Feed::Table { slot: &slot_name },
                    };
                    let done = Done::Past(generated.marker);
                    let row = self.throughput(v, feed, done, generated.events).await;
                    workload::drop_slot(&self.client, &slot_name).await?;
                    row
                };
                row.workload = label.clone();
                eprintln!("bench: {label}: {} {}", row.consumer, summary(&row));
                runs[i + 1].push(row);
            }
        }
        let mut rows: Vec<Row> = runs.into_iter().map(report::combine).collect();
        let reference = rows[0].rate();
        for row in &mut rows {
            row.reference = reference;
        }
        Ok(rows)
    }

    /// The polling source through `v` on a fresh copy of the outbox workload's `events`
    /// rows, until the sink delivered them all; then every row must have been deleted
    /// (settled) by the time sluice stopped.
    async fn poll_throughput(&self, v: &Variant<'_>, events: u64) -> Row {
        if let Err(e) = workload::refill_poll_table(&self.client, events).await {
            return Row {
                consumer: v.consumer(),
                events,
                note: format!("{e:#}"),
                ..Row::default()
            };
        }
        let feed = Feed::Poll {
            batch_size: self.args.poll_batch,
        };
        let mut row = self
            .throughput(v, feed, Done::Delivered(events), events)
            .await;
        let left = match workload::poll_table_left(&self.client).await {
            Ok(0) => return row,
            Ok(n) => format!("{n} outbox rows were not deleted after delivery"),
            Err(e) => format!("{e:#}"),
        };
        row.note = [row.note.as_str(), &left]
            .iter()
            .filter(|n| !n.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("; ");
        row
    }

    /// The sluice binary of `v` with its sink, reading `feed` until the run is `done`
    /// (`events` delivered).
    async fn throughput(&self, v: &Variant<'_>, feed: Feed<'_>, done: Done, events: u64) -> Row {
        let sink = v.sink;
        let mut row = Row {
            consumer: v.consumer(),
            events,
            ..Row::default()
        };
        let received = self.receiver.events();
        let stall = Duration::from_secs(60 + self.args.rows / 10_000);
        let Some((measured, stopped)) = self
            .measure(v, feed, &mut row, async |process: &mut SluiceProcess| {
                let startup = process.wait_streaming(Duration::from_secs(60)).await?;
                let (status, took) = process.wait_done(done, stall).await?;
                anyhow::Ok((startup, status, took))
            })
            .await
        else {
            return row;
        };
        match measured {
            Ok((startup, status, took)) => {
                row.startup = Some(secs(startup));
                row.seconds = Some(secs(took));
                if status.delivered != events {
                    row.note = format!(
                        "the sink delivered {} events, expected {events}",
                        status.delivered
                    );
                }
                let got = self.receiver.events() - received;
                if sink.sink.contains("$WEBHOOK") && got < events {
                    row.note = format!("the receiver got {got} of {events} events");
                }
            }
            Err(e) => row.note = format!("{e:#}"),
        }
        if let Err(e) = stopped {
            row.note = format!("{} {e:#}", row.note);
        }
        row
    }

    /// Start the sluice of `v` reading `feed` on reset, quiet services, let `wait` take
    /// its measurement, and stop it. `row` gets sluice's peak RSS, its CPU per event (of
    /// `row.events`) and the CPU other work used meanwhile; `None` (the reason in the
    /// row's note) when it could not start. Returns the measurement and how the stop went.
    pub(crate) async fn measure<T>(
        &self,
        v: &Variant<'_>,
        feed: Feed<'_>,
        row: &mut Row,
        wait: impl AsyncFnOnce(&mut SluiceProcess) -> Result<T>,
    ) -> Option<(Result<T>, Result<()>)> {
        if let Err(e) = self.services.reset() {
            row.note = format!("{e:#}");
            return None;
        }
        self.quiet().await;
        let before = cpu::sample(&self.ours());
        let started = SluiceProcess::start(
            v.bin,
            &self.pg.url(),
            v.sink,
            feed,
            &self.receiver.url,
            self.services.env(),
        );
        let mut process = match started {
            Ok(p) => p,
            Err(e) => {
                row.note = format!("{e:#}");
                return None;
            }
        };
        let measured = wait(&mut process).await;
        row.rss_mb = process.peak_rss_mb();
        let cpu_seconds = process.cpu_seconds();
        let stopped = process.stop().await;
        row.other_cpu = Some(cpu::other_percent(&before, &cpu::sample(&self.ours())));
        row.cpu_us = cpu_seconds.map(|s| s * 1e6 / row.events.max(1) as f64);
        Some((measured, stopped))
    }
}

/// One sluice configuration run on a workload: a binary under test, a sink, and whether
/// the outbox is polled (`postgres_outbox_poll`) instead of captured from the WAL.
pub(crate) struct Variant<'a> {
    /// `sluice` or `baseline`.
    pub label: &'a str,
    pub bin: &'a Path,
    pub sink: &'static SinkRow,
    pub poll: bool,
}

impl Variant<'_> {
    /// Its name in slot names.
    pub(crate) fn name(&self) -> String {
        let poll = if self.poll { "poll_" } else { "" };
        format!("{}_{poll}{}", self.label, self.sink.name)
    }

    /// Its row's label, e.g. `sluice → kafka` or `sluice poll → kafka`.
    pub(crate) fn consumer(&self) -> String {
        let poll = if self.poll { " poll" } else { "" };
        format!("{}{poll} → {}", self.label, self.sink.name)
    }
}
