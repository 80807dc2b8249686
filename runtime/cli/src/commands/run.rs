//! `sluice run`: check, prepare the slot and publication, stream until a signal.

use std::path::Path;
use std::time::Duration;

use sluice_postgres::replication::ReplicationConnection;
use sluice_postgres::{PostgresOptions, PostgresSource};
use sluice_runtime::engine::{self, EngineOptions};
use sluice_runtime::state::StateStore;
use sluice_runtime::Shutdown;
use tokio::signal::unix::{signal, SignalKind};

use crate::registry::build_sinks;
use crate::Failure;

pub async fn run(path: &Path) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    // The host must outlive the run: it drives the transforms' time budgets.
    let host = crate::stages::host_for(&pipeline).map_err(Failure::Runtime)?;
    let sinks = build_sinks(&pipeline, host.as_ref())?;
    let transforms = match &host {
        Some(host) => {
            crate::stages::load_chain(host, &pipeline, "transforms", &pipeline.transforms)?
        }
        None => Vec::new(),
    };
    let options = super::postgres_options(&pipeline);
    let store = StateStore::open(&pipeline.state).map_err(|e| Failure::Runtime(e.to_string()))?;
    let has_offsets = !store
        .offsets()
        .map_err(|e| Failure::Runtime(e.to_string()))?
        .is_empty();
    check_cluster(&options, &store, has_offsets).await?;
    sluice_postgres::source::prepare(&options, has_offsets)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;

    let shutdown = Shutdown::new();
    tokio::spawn(handle_signals(shutdown.clone()));
    tracing::info!(pipeline = %pipeline.name, sinks = pipeline.sinks.len(), state = %pipeline.state.display(), "running");
    let engine_options = EngineOptions {
        pipeline: pipeline.name.clone(),
        admin: pipeline.admin,
        journal_capacity: 16 * 1024,
        drain_timeout: Duration::from_secs(30),
        commit_interval: Duration::from_millis(100),
        transforms,
    };
    let source = Box::new(PostgresSource::new(options));
    engine::run(engine_options, store, sinks, source, shutdown)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    drop(host);
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The state store belongs to one PostgreSQL cluster: offsets from another cluster's WAL
/// would skip changes silently, so refuse them.
async fn check_cluster(
    options: &PostgresOptions,
    store: &StateStore,
    has_offsets: bool,
) -> Result<(), Failure> {
    let mut conn = ReplicationConnection::connect(&options.url, "sluice_check")
        .await
        .map_err(|e| Failure::Runtime(format!("cannot open a replication connection: {e}")))?;
    let system = conn
        .identify_system()
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    let runtime = |e: sluice_runtime::state::StateError| Failure::Runtime(e.to_string());
    match store.meta("system_id").map_err(runtime)? {
        Some(known) if known != system.system_id && has_offsets => Err(Failure::Runtime(format!(
            "the state store belongs to PostgreSQL cluster {known}, but source.url reaches cluster {}; \
             its offsets mean nothing here. Point `state:` elsewhere or run `sluice teardown` to reset",
            system.system_id
        ))),
        _ => store.set_meta("system_id", &system.system_id).map_err(runtime),
    }
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
