//! `sluice rewind`: deliver a sink's events again from an earlier point of the journal.
//!
//! Works whether or not the pipeline runs: the request is written to the state store; a
//! running pipeline moves the sink within a second, otherwise the next `sluice run` does as
//! it starts. Only the named sink receives the events again; the others, and the slot, are
//! not touched. Events in the sink's DLQ are not sent again by a rewind (replay them).

use std::path::Path;

use sluice_runtime::config::JournalKind;
use sluice_runtime::event::format_timestamp_micros;
use sluice_runtime::journal::{self, Inspection};
use sluice_runtime::lsn::{Lsn, Position};
use sluice_runtime::progress::Offset;
use sluice_runtime::state::{Offsets, SqliteStore};

use crate::Failure;

/// Where to rewind to, as written after `--to`.
enum Target {
    Oldest,
    Lsn(Lsn),
    /// Microseconds since the epoch.
    Time(i64),
}

fn parse_target(text: &str) -> Result<Target, String> {
    if text == "oldest" {
        return Ok(Target::Oldest);
    }
    if let Ok(lsn) = text.parse::<Lsn>() {
        return Ok(Target::Lsn(lsn));
    }
    match humantime::parse_rfc3339_weak(text) {
        Ok(time) => Ok(Target::Time(
            time.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64),
        )),
        Err(_) => Err(format!(
            "--to `{text}`: write an LSN (0/16B3748), a time (2026-12-02T10:00:00Z) or `oldest`"
        )),
    }
}

pub fn run(path: &Path, sink: &str, to: &str) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let input = |m: String| Failure::Input(format!("{}: {m}", pipeline.file.display()));
    if pipeline.sink(sink).is_none() {
        let known: Vec<&str> = pipeline.sinks.iter().map(|s| s.name.as_str()).collect();
        return Err(input(format!(
            "there is no sink `{sink}` (sinks: {})",
            known.join(", ")
        )));
    }
    if pipeline.journal.kind != JournalKind::Disk {
        return Err(input(
            "rewind re-reads the journal, and `journal.type: memory` keeps nothing to re-read; \
             use `journal.type: disk`"
                .into(),
        ));
    }
    let target = parse_target(to).map_err(input)?;
    let runtime = |e: String| Failure::Runtime(e);
    let dir = &pipeline.journal.path;
    let journal = journal::inspect(dir)
        .map_err(|e| runtime(e.to_string()))?
        .ok_or_else(|| {
            runtime(format!(
                "there is no journal at {}: the pipeline never ran",
                dir.display()
            ))
        })?;
    let store = SqliteStore::open_existing(&pipeline.state)
        .map_err(|e| runtime(e.to_string()))?
        .ok_or_else(|| {
            runtime(format!(
                "there is no state at {}: the pipeline never ran",
                pipeline.state.display()
            ))
        })?;
    let current = store
        .offsets()
        .map_err(|e| runtime(e.to_string()))?
        .get(sink)
        .copied()
        .unwrap_or_default();

    let kept = kept(&journal, &pipeline.journal.retention);
    // Redeliver every event committed at or after `from`.
    let from = match target {
        Target::Oldest => Lsn(journal.start_lsn.0 + 1),
        Target::Lsn(lsn) => lsn,
        Target::Time(ts) => {
            match journal::first_at_or_after(dir, ts).map_err(|e| runtime(e.to_string()))? {
                Some(p) => p.commit_lsn,
                None => {
                    return Err(input(format!(
                        "--to {to}: the journal holds nothing committed at or after it ({kept})"
                    )))
                }
            }
        }
    };
    if from.0 <= journal.start_lsn.0 {
        return Err(input(format!(
            "--to {to}: the journal no longer holds it ({kept})"
        )));
    }
    let before = Lsn(from.0 - 1);
    let offset = Offset {
        position: Position::new(before, u32::MAX),
        flush_lsn: before,
        commit_ts_micros: 0,
    };
    if current != Offset::default() && offset.position >= current.position {
        return Err(input(format!(
            "--to {to}: sink {sink} has delivered only up to {} so far; a rewind moves back",
            current.position
        )));
    }
    store
        .request_rewind(sink, offset)
        .map_err(|e| runtime(e.to_string()))?;
    println!(
        "sink {sink} will receive again every event committed at or after {from} \
         (a running pipeline moves it within a second; otherwise the next `sluice run` does)"
    );
    Ok(())
}

/// What the journal holds, for messages: `it keeps changes after 0/1A2B, from 2026-… on;
/// retention 24h`.
fn kept(journal: &Inspection, retention: &std::time::Duration) -> String {
    let since = journal
        .first
        .map(|(_, ts)| format!(", events from {} on", format_timestamp_micros(ts)))
        .unwrap_or_default();
    format!(
        "it keeps the changes after {}{since}; journal.retention is {}; `--to oldest` goes back as far as it can",
        journal.start_lsn,
        humantime::format_duration(*retention)
    )
}
