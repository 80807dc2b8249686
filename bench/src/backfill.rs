//! The backfill workload: a table filled with `--rows` rows before any pipeline's slot
//! exists (so no stream carries them), copied to a sink by a fresh pipeline with
//! `snapshot: initial`, timed from spawn until every backfill in `/status` is `done` and
//! the sink delivered every row. The server runs with `synchronous_commit = on` meanwhile,
//! its shipped default (the bench cluster's is `off`, see [`Bench::backfill`]). Its ceiling, in each round beside it:
//! `psql -c "COPY (SELECT * FROM t) TO STDOUT" > /dev/null`. The targets (issue 12): at
//! least 0.7× the ceiling's rows/s to the blackhole sink, peak RSS at most 100 MB; a row
//! that misses one says so.

use std::time::Duration;

use anyhow::Result;

use crate::consumers::{self, Feed, SluiceProcess};
use crate::report::{self, secs, Row};
use crate::throughput::Variant;
use crate::workload::{self, Workload, BACKFILL_TABLE};
use crate::{cpu, summary, Bench};

/// The least share of the `psql COPY` ceiling a backfill should reach.
const TARGET_RATIO: f64 = 0.7;
/// The most memory sluice should hold while backfilling, MiB.
const TARGET_RSS_MB: f64 = 100.0;

impl Bench {
    /// The backfill workload: the table, then `psql COPY` and each sink, round after
    /// round.
    pub(crate) async fn backfill(&self) -> Result<Vec<Row>> {
        let args = &self.args;
        let w = Workload::Backfill;
        let label = w.label(args.rows, args.tx_rows);
        let generated = workload::generate(&self.client, w, args.rows, args.tx_rows).await?;
        eprintln!(
            "bench: {label}: table written in {:.1} s",
            secs(generated.took)
        );
        let rows = generated.events;
        let variants = self.variants(w);
        // As PostgreSQL ships: the bench cluster's `synchronous_commit = off` would leave
        // each chunk's watermark unsent until the WAL writer flushes it (up to
        // `wal_writer_delay`, 200 ms), unless sluice's own session asks for synchronous
        // commits.
        workload::server_synchronous_commit(&self.client, true).await?;
        // runs[0] is psql's, then one per variant.
        let mut runs: Vec<Vec<Row>> = (0..=variants.len()).map(|_| Vec::new()).collect();
        for round in 0..args.repeat.max(1) {
            let mut reference = Row {
                workload: label.clone(),
                consumer: "psql COPY → /dev/null".into(),
                events: rows,
                ..Row::default()
            };
            self.quiet().await;
            let before = cpu::sample(&self.ours());
            match consumers::psql_copy(&self.pg_bin, self.pg.port, BACKFILL_TABLE).await {
                Ok(took) => reference.seconds = Some(secs(took)),
                Err(e) => reference.note = format!("{e:#}"),
            }
            reference.other_cpu = Some(cpu::other_percent(&before, &cpu::sample(&self.ours())));
            eprintln!("bench: {label}: psql COPY {}", summary(&reference));
            runs[0].push(reference);

            for (i, v) in variants.iter().enumerate() {
                let slot = format!("bench_backfill_{}_{round}", v.name()).replace('-', "_");
                workload::drop_slot(&self.client, &slot).await?;
                let mut row = self.backfill_run(v, &slot, rows).await;
                row.workload = label.clone();
                workload::drop_slot(&self.client, &slot).await?;
                eprintln!("bench: {label}: {} {}", row.consumer, summary(&row));
                runs[i + 1].push(row);
            }
        }
        workload::server_synchronous_commit(&self.client, false).await?;
        let mut combined: Vec<Row> = runs.into_iter().map(report::combine).collect();
        let reference = combined[0].rate();
        for row in &mut combined {
            row.reference = reference;
        }
        for row in combined.iter_mut().skip(1) {
            let mut missed = Vec::new();
            if let (Some(rate), Some(reference)) = (row.rate(), reference) {
                if rate < TARGET_RATIO * reference {
                    missed.push(format!(
                        "{:.2}× the COPY ceiling is below the {TARGET_RATIO}× target",
                        rate / reference
                    ));
                }
            }
            if let Some(rss) = row.rss_mb.filter(|rss| *rss > TARGET_RSS_MB) {
                missed.push(format!(
                    "peak RSS {rss:.0} MB is above the {TARGET_RSS_MB} MB target"
                ));
            }
            if !missed.is_empty() {
                let sep = if row.note.is_empty() { "" } else { "; " };
                row.note = format!("{}{sep}{}", row.note, missed.join("; "));
            }
        }
        Ok(combined)
    }

    /// One backfill of the table's `rows` rows through `v` on a fresh pipeline reading
    /// `slot` (created by sluice after the rows were written).
    async fn backfill_run(&self, v: &Variant<'_>, slot: &str, rows: u64) -> Row {
        let mut row = Row {
            consumer: format!("{} (snapshot: initial)", v.consumer()),
            events: rows,
            ..Row::default()
        };
        let stall = Duration::from_secs(60 + rows / 10_000);
        let feed = Feed::Backfill {
            slot,
            chunk_rows: self.args.backfill_chunk_rows,
        };
        let Some((measured, stopped)) = self
            .measure(v, feed, &mut row, async |process: &mut SluiceProcess| {
                process.wait_backfilled(rows, stall).await
            })
            .await
        else {
            return row;
        };
        match measured {
            Ok(done) => {
                row.startup = done.startup.map(secs);
                row.seconds = Some(secs(done.took));
                let copied: u64 = done.backfills.iter().map(|b| b.rows).sum();
                let mut notes = Vec::new();
                if copied != rows {
                    notes.push(format!(
                        "/status counts {copied} rows backfilled, the table has {rows}"
                    ));
                }
                if done.sink.delivered != rows {
                    notes.push(format!(
                        "the sink delivered {} events, expected {rows}",
                        done.sink.delivered
                    ));
                }
                row.note = notes.join("; ");
            }
            Err(e) => row.note = format!("{e:#}"),
        }
        if let Err(e) = stopped {
            row.note = format!("{} {e:#}", row.note);
        }
        row
    }
}
