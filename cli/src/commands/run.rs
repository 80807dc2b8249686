//! `sluice run`: check, prepare the source (slot, publication), stream until a signal.

use std::path::Path;
use std::time::Duration;

use sluice_runtime::config::JournalKind;
use sluice_runtime::engine::{self, EngineOptions, JournalOptions};
use sluice_runtime::journal::DiskConfig;
use sluice_runtime::source::DEFAULT_ACK_INTERVAL;
use sluice_runtime::state::{SqliteStore, Store};
use sluice_runtime::Shutdown;
use tokio::signal::unix::{signal, SignalKind};

use super::runtime;
use crate::registry::build_sinks;
use crate::Failure;

pub async fn run(path: &Path, accept_journal_gap: bool) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let connector = super::source(&pipeline)?;
    // The host must outlive the run: it drives the transforms' time budgets.
    let host = crate::stages::host_for(&pipeline).map_err(Failure::Runtime)?;
    let sinks = build_sinks(&pipeline, host.as_ref())?;
    let transforms = match &host {
        Some(host) => {
            crate::stages::load_chain(host, &pipeline, "transforms", &pipeline.transforms)?
        }
        None => Vec::new(),
    };
    let store = Store::new(SqliteStore::open(&pipeline.state).map_err(runtime)?);
    // Files the source stages while it runs (transactions streamed before their commit).
    let work_dir = pipeline.state.with_extension("work");
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| Failure::Runtime(format!("cannot create {}: {e}", work_dir.display())))?;
    let source = connector
        .prepare(&store, &work_dir)
        .await
        .map_err(runtime)?;

    let shutdown = Shutdown::new();
    tokio::spawn(handle_signals(shutdown.clone()));
    tracing::info!(pipeline = %pipeline.name, sinks = pipeline.sinks.len(), state = %pipeline.state.display(), "running");
    let journal = match pipeline.journal.kind {
        JournalKind::Memory => JournalOptions::Memory {
            capacity: JOURNAL_MEMORY,
        },
        JournalKind::Disk => JournalOptions::Disk {
            config: DiskConfig {
                dir: pipeline.journal.path.clone(),
                max_bytes: pipeline.journal.max_bytes,
                retention: pipeline.journal.retention,
                segment_bytes: pipeline.journal.segment_bytes,
            },
            capacity: JOURNAL_DISK_MEMORY,
            accept_gap: accept_journal_gap,
        },
    };
    let engine_options = EngineOptions {
        pipeline: pipeline.name.clone(),
        admin: pipeline.admin,
        journal,
        drain_timeout: pipeline.shutdown_timeout,
        commit_interval: Duration::from_millis(100),
        ack_interval: DEFAULT_ACK_INTERVAL,
        transforms,
    };
    engine::run(engine_options, store, sinks, source, shutdown)
        .await
        .map_err(runtime)?;
    drop(host);
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Journal entries kept in memory by a memory journal: the slowest sink's reach.
const JOURNAL_MEMORY: usize = 16 * 1024;

/// The newest journal entries a disk journal also keeps in memory: a sink within them reads
/// no file. Large enough that a sink a little behind a burst (a big transaction arriving at
/// its commit) stays in memory: reading back from the files costs a decode per entry.
const JOURNAL_DISK_MEMORY: usize = 32 * 1024;

/// First SIGINT/SIGTERM: drain. Second: abort retries and leave.
async fn handle_signals(shutdown: Shutdown) {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        if shutdown.drain() {
            tracing::info!(
                "shutting down: draining sinks and committing offsets (signal again to abort)"
            );
        } else {
            tracing::warn!("second signal: abandoning retries");
            shutdown.abort();
        }
    }
}
