//! `sluice backfill`: copy tables' current rows to sinks while the stream flows.
//!
//! Works whether or not the pipeline runs: the request is written to the state store; a
//! running pipeline starts it within a second, otherwise the next `sluice run` does. Only
//! the named sinks receive the rows (as `op: read` events); the others go on streaming.
//! `--wait` follows the progress until every requested backfill ends; `--cancel` stops the
//! pending and running ones (a running pipeline after its current chunk).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_runtime::state::{Backfill, BackfillState, Backfills, NewBackfill, SqliteStore, Store};

use super::runtime;
use crate::Failure;

/// What `sluice backfill` was asked.
pub struct Args {
    pub pipeline: PathBuf,
    pub sinks: Vec<String>,
    pub tables: Vec<String>,
    pub filter: Option<String>,
    pub wait: bool,
    pub cancel: bool,
    pub json: bool,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let pipeline = super::load(&args.pipeline)?;
    let input = |m: String| Failure::Input(format!("{}: {m}", pipeline.file.display()));
    for sink in &args.sinks {
        if pipeline.sink(sink).is_none() {
            let known: Vec<&str> = pipeline.sinks.iter().map(|s| s.name.as_str()).collect();
            return Err(input(format!(
                "there is no sink `{sink}` (sinks: {})",
                known.join(", ")
            )));
        }
    }
    if args.filter.as_deref().is_some_and(|f| f.trim().is_empty()) {
        return Err(input(
            "--where is empty; leave it out to copy every row".into(),
        ));
    }
    let mut store = SqliteStore::open(&pipeline.state).map_err(runtime)?;
    if args.cancel {
        if !args.sinks.is_empty() || args.filter.is_some() || args.wait {
            return Err(input(
                "--cancel stops backfills by table (--table) or all of them; it takes no --sink, --where or --wait"
                    .into(),
            ));
        }
        return cancel(&store, &args.tables, args.json);
    }
    let connector = super::source(&pipeline)?;
    let targets = connector
        .backfill_targets(
            &args.tables,
            &Store::new(SqliteStore::open(&pipeline.state).map_err(runtime)?),
        )
        .await
        .map_err(|e| match e.is_transient() {
            true => runtime(format!("cannot check the tables: {e}")),
            false => input(e.to_string()),
        })?;
    let requests: Vec<NewBackfill> = targets
        .into_iter()
        .map(|t| NewBackfill {
            table: t.table,
            sinks: args.sinks.clone(),
            filter: args.filter.clone().or(t.filter),
        })
        .collect();
    let active: Vec<Backfill> = store
        .backfills()
        .map_err(runtime)?
        .into_iter()
        .filter(|b| b.state.is_active())
        .collect();
    let already: Vec<&Backfill> = requests
        .iter()
        .filter_map(|r| active.iter().find(|b| same_request(b, r)))
        .collect();
    if args.wait && already.len() == requests.len() {
        // Everything asked for is under way: follow it.
        for b in &already {
            eprintln!(
                "backfill {} of {} to {} is already {}; waiting for it",
                b.id,
                b.table,
                b.sinks_text(),
                b.state
            );
        }
        let ids: Vec<i64> = already.iter().map(|b| b.id).collect();
        return wait(&store, &ids, args.json).await;
    }
    for r in &requests {
        if let Some(b) = active.iter().find(|b| same_request(b, r)) {
            return Err(input(format!(
                "backfill {} of {} to {} is already {}; follow it with `sluice status`, or cancel it \
                 with `sluice backfill --cancel --table {}`",
                b.id,
                b.table,
                b.sinks_text(),
                b.state,
                b.table
            )));
        }
    }
    let ids = store.backfill_request(&requests).map_err(runtime)?;
    let recorded = records(&store, &ids)?;
    if args.json && !args.wait {
        let all: Vec<_> = recorded.iter().map(Backfill::json).collect();
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        return Ok(());
    }
    for b in &recorded {
        let filter = b
            .filter
            .as_deref()
            .map(|f| format!(" where {f}"))
            .unwrap_or_default();
        eprintln!(
            "backfill {}: {}{filter} → {}",
            b.id,
            b.table,
            b.sinks_text()
        );
    }
    if !args.wait {
        eprintln!(
            "a running pipeline starts it within a second; a stopped one at its next `sluice run`. \
             Follow it with `sluice status` or `sluice backfill --wait`"
        );
        return Ok(());
    }
    wait(&store, &ids, args.json).await
}

fn records(store: &SqliteStore, ids: &[i64]) -> Result<Vec<Backfill>, Failure> {
    let mut all = Vec::with_capacity(ids.len());
    for &id in ids {
        if let Some(b) = store.backfill(id).map_err(runtime)? {
            all.push(b);
        }
    }
    Ok(all)
}

fn cancel(store: &SqliteStore, tables: &[String], json: bool) -> Result<(), Failure> {
    let active: Vec<i64> = store
        .backfills()
        .map_err(runtime)?
        .into_iter()
        .filter(|b| b.state.is_active())
        .filter(|b| tables.is_empty() || tables.iter().any(|t| same_table(t, &b.table)))
        .map(|b| b.id)
        .collect();
    let n = store.backfill_cancel(Some(&active)).map_err(runtime)?;
    if json {
        println!("{}", serde_json::json!({ "cancelled": n }));
    } else {
        eprintln!("cancelled {n} backfill(s)");
    }
    Ok(())
}

/// Whether a pending or running backfill already does what `r` asks.
fn same_request(b: &Backfill, r: &NewBackfill) -> bool {
    let sorted = |s: &[String]| {
        let mut s = s.to_vec();
        s.sort();
        s
    };
    b.table == r.table && b.filter == r.filter && sorted(&b.sinks) == sorted(&r.sinks)
}

/// Whether `given` (as typed) names the table recorded as `recorded`.
fn same_table(given: &str, recorded: &str) -> bool {
    use sluice_runtime::config::TableName;
    match (TableName::parse(given), TableName::parse(recorded)) {
        (Ok(a), Ok(b)) => a == b,
        _ => given == recorded,
    }
}

/// Follow `ids` until each ends: a progress line on a terminal (a line every 10 s
/// otherwise), then the outcome. Exit 1 when one failed or was cancelled.
async fn wait(store: &SqliteStore, ids: &[i64], json: bool) -> Result<(), Failure> {
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    loop {
        let all = records(store, ids)?;
        let active = all.iter().any(|b| b.state.is_active());
        if !json && (terminal || last_line.elapsed() >= Duration::from_secs(10) || !active) {
            let text: Vec<String> = all.iter().map(line).collect();
            let mut err = std::io::stderr().lock();
            if terminal {
                let _ = write!(err, "\r\x1b[K{}", text.join(" | "));
                if !active {
                    let _ = writeln!(err);
                }
            } else if active {
                let _ = writeln!(err, "{}", text.join(" | "));
            }
            let _ = err.flush();
            last_line = Instant::now();
        }
        if !active {
            if json {
                let all: Vec<_> = all.iter().map(Backfill::json).collect();
                println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
            } else if !terminal {
                for b in &all {
                    eprintln!("{}", line(b));
                }
            }
            let ended: Vec<String> = all
                .iter()
                .filter(|b| b.state != BackfillState::Done)
                .map(|b| {
                    format!(
                        "backfill {} of {} {}{}",
                        b.id,
                        b.table,
                        b.state,
                        b.error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            return match ended.is_empty() {
                true => Ok(()),
                false => Err(Failure::Runtime(ended.join("; "))),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One backfill as a line: `backfill 3 public.items → search: running, 120000 of ~200000
/// rows (60%), 45000 rows/s, ETA 2s`.
pub fn line(b: &Backfill) -> String {
    let mut text = format!(
        "backfill {} {} → {}: {}, {} rows",
        b.id,
        b.table,
        b.sinks_text(),
        b.state,
        b.rows
    );
    if let Some(estimate) = b.estimate.filter(|e| *e > 0 && b.state.is_active()) {
        let pct = (b.rows as f64 / estimate as f64 * 100.0).min(100.0);
        text.push_str(&format!(" of ~{estimate} ({pct:.0}%)"));
    }
    if let Some(rate) = b.rate() {
        text.push_str(&format!(", {rate:.0} rows/s"));
    }
    if let Some(eta) = b.eta_secs() {
        text.push_str(&format!(
            ", ETA {}",
            humantime::format_duration(Duration::from_secs(eta.ceil() as u64))
        ));
    }
    if let Some(error) = &b.error {
        text.push_str(&format!(" ({error})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_compare_as_parsed() {
        assert!(same_table("items", "public.items"));
        assert!(same_table("PUBLIC.Items", "public.items"));
        assert!(!same_table("public.other", "public.items"));
    }

    #[test]
    fn a_running_line_has_progress_rate_and_eta() {
        let b = Backfill {
            id: 3,
            table: "public.items".into(),
            sinks: vec!["search".into()],
            filter: None,
            state: BackfillState::Running,
            cursor: None,
            rows: 1000,
            estimate: Some(4000),
            chunks: 2,
            error: None,
            created_at: 0,
            started_at: Some(0),
            updated_at: 2000,
            finished_at: None,
        };
        assert_eq!(
            line(&b),
            "backfill 3 public.items → search: running, 1000 rows of ~4000 (25%), 500 rows/s, ETA 6s"
        );
    }
}
