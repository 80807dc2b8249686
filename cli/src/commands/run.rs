//! `sluice run`: check, prepare the source (slot, publication), stream until a signal.

use std::path::Path;
use std::time::Duration;

use sluice_runtime::engine::{self, EngineOptions};
use sluice_runtime::source::DEFAULT_ACK_INTERVAL;
use sluice_runtime::state::{SqliteStore, Store};
use sluice_runtime::Shutdown;
use tokio::signal::unix::{signal, SignalKind};

use super::runtime;
use crate::registry::build_sinks;
use crate::Failure;

pub async fn run(path: &Path) -> Result<(), Failure> {
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
    let source = connector.prepare(&store).await.map_err(runtime)?;

    let shutdown = Shutdown::new();
    tokio::spawn(handle_signals(shutdown.clone()));
    tracing::info!(pipeline = %pipeline.name, sinks = pipeline.sinks.len(), state = %pipeline.state.display(), "running");
    let engine_options = EngineOptions {
        pipeline: pipeline.name.clone(),
        admin: pipeline.admin,
        journal_capacity: 16 * 1024,
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
