//! `sluice teardown`: drop what `run` created upstream (slot, publication) and forget the
//! offsets, finishing what the role may do and printing what an administrator must.
//!
//! Parked events are not deleted by accident: a non-empty DLQ stops the teardown before
//! anything is dropped, unless `--drop-dlq` says so.

use std::path::Path;

use sluice_runtime::config::JournalKind;
use sluice_runtime::state::{DeadLetters, DlqFilter, Offsets, SqliteStore};

use super::runtime;
use crate::Failure;

pub async fn run(path: &Path, drop_dlq: bool) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let connector = super::source(&pipeline)?;
    let store = SqliteStore::open_existing(&pipeline.state).map_err(runtime)?;
    let depths = match &store {
        Some(store) => store.dlq_depths().map_err(runtime)?,
        None => Vec::new(),
    };
    let parked: i64 = depths.iter().map(|(_, n)| n).sum();
    if parked > 0 && !drop_dlq {
        let per_sink: Vec<String> = depths.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        return Err(Failure::Input(format!(
            "{}: the dead-letter queues hold {parked} event(s) ({}); a teardown would lose \
             them. Look at them (`sluice dlq list`), replay or purge them, or pass --drop-dlq \
             to delete them with the rest. Nothing was dropped.",
            pipeline.file.display(),
            per_sink.join(", ")
        )));
    }
    let upstream = connector.teardown().await.map_err(runtime)?;
    for line in &upstream.done {
        println!("{line}");
    }
    if let Some(store) = store {
        let sinks = store.offsets().map_err(runtime)?.len();
        store.clear().map_err(runtime)?;
        println!(
            "forgot the offsets of {sinks} sink(s) and the source's identity in {}",
            pipeline.state.display()
        );
        if parked > 0 {
            let deleted = store.dlq_purge(&DlqFilter::default()).map_err(runtime)?;
            println!("deleted {deleted} parked event(s) (--drop-dlq)");
        }
    }
    // The journal holds changes of a slot that is gone: nothing can resume from it.
    let journal = &pipeline.journal.path;
    if pipeline.journal.kind == JournalKind::Disk && journal.exists() {
        std::fs::remove_dir_all(journal).map_err(|e| {
            runtime(format!(
                "cannot delete the journal {}: {e}",
                journal.display()
            ))
        })?;
        println!("deleted the journal {}", journal.display());
    }
    if !upstream.for_admin.is_empty() {
        println!(
            "left for an administrator (this role may not do it; `sluice run` works without it):"
        );
        for sql in &upstream.for_admin {
            println!("  {sql}");
        }
    }
    Ok(())
}
