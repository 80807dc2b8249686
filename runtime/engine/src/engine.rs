//! The engine: wires one source, the journal, one driver per sink, the offset committer
//! and the admin server, and runs them until shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::admin::{self, AdminState};
use crate::chain::{Chain, SharedChain, Stage};
use crate::config::{DeliveryConfig, TableName};
use crate::driver::TableFilter;
use crate::driver::{SinkDriver, SinkStop};
use crate::feed::Feed;
use crate::journal::{Journal, ReaderId};
use crate::progress::Progress;
use crate::shutdown::Shutdown;
use crate::sink::{Sink, SinkTelemetry};
use crate::source::{Source, SourceError};
use crate::state::{StateError, Store, TRIPPED};
use crate::supervisor::Supervisor;
use crate::telemetry::StageStats;
use tokio::sync::Notify;

/// A sink ready to run.
pub struct SinkSpec {
    pub name: String,
    pub sink: Box<dyn Sink>,
    /// The pipeline's `delivery:` with the sink's own laid over it.
    pub delivery: DeliveryConfig,
    /// Hash of the sink's configuration, recorded with every event it parks.
    pub config_hash: String,
    /// The sink's own transforms, run after the pipeline's.
    pub transforms: Vec<Box<dyn Stage>>,
    /// Only changes of these tables reach the sink (events always do); empty: all.
    pub tables: Vec<TableName>,
}

pub struct EngineOptions {
    pub pipeline: String,
    pub admin: Option<SocketAddr>,
    /// Journal capacity in entries: how far the slowest sink may fall behind before the
    /// source pauses.
    pub journal_capacity: usize,
    /// How long a shutdown may take: past it, undelivered work stays uncommitted (it is
    /// delivered again after a restart) and the run ends.
    pub drain_timeout: Duration,
    /// How often offsets are written to the state store at most.
    pub commit_interval: Duration,
    /// How often the source acknowledges at least, when nothing advances
    /// ([`crate::source::DEFAULT_ACK_INTERVAL`]).
    pub ack_interval: Duration,
    /// The pipeline-level transforms, run once per event before fan-out to the sinks.
    pub transforms: Vec<Box<dyn Stage>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("admin server on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("source failed: {0}")]
    Source(SourceError),
    #[error("{} sink(s) stopped: {}", .0.len(), .0.join("; "))]
    SinksStopped(Vec<String>),
}

/// Run the pipeline until shutdown. Returns an error when the source failed for good or a
/// sink stopped (its offset is kept, so the next run resumes it).
pub async fn run(
    options: EngineOptions,
    store: Store,
    sinks: Vec<SinkSpec>,
    source: Box<dyn Source>,
    shutdown: Shutdown,
) -> Result<(), EngineError> {
    let offsets = store.lock().offsets()?;
    // Sinks the DLQ breaker stopped stay stopped until an operator acts on their DLQ.
    let tripped: HashMap<String, String> = store
        .lock()
        .sinks()?
        .into_iter()
        .filter(|(_, r)| r.state == TRIPPED)
        .map(|(name, r)| (name, r.reason.unwrap_or_default()))
        .collect();
    for spec in sinks.iter().filter(|s| !tripped.contains_key(&s.name)) {
        store.lock().set_sink_status(&spec.name, "running", None)?;
    }
    let progress = Progress::new(
        sinks
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    offsets.get(&s.name).copied().unwrap_or_default(),
                )
            })
            .collect(),
    );
    let journal = Journal::new(options.journal_capacity);
    let readers: Vec<ReaderId> = sinks.iter().map(|_| journal.register()).collect();

    let pipeline_chain = Chain::new(options.transforms);
    let mut transforms: Vec<(String, Arc<StageStats>)> = pipeline_chain
        .stats()
        .into_iter()
        .map(|s| ("pipeline".to_string(), s))
        .collect();
    let mut sinks: Vec<(SinkSpec, Chain)> = sinks
        .into_iter()
        .map(|mut spec| {
            let chain = Chain::new(std::mem::take(&mut spec.transforms));
            transforms.extend(chain.stats().into_iter().map(|s| (spec.name.clone(), s)));
            (spec, chain)
        })
        .collect();
    for (spec, _) in &mut sinks {
        let sink_progress = progress.sink(&spec.name).expect("registered above").clone();
        spec.sink.attach(SinkTelemetry::new(sink_progress));
    }

    let admin_state = AdminState {
        pipeline: options.pipeline.clone(),
        source: source.status(),
        transforms,
        progress: progress.clone(),
        journal: journal.clone(),
        readers: readers.clone(),
        store: store.clone(),
    };
    let admin_task = match options.admin {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| EngineError::Admin { addr, source })?;
            tracing::info!(%addr, "admin server listening");
            Some(tokio::spawn(admin::serve(listener, admin_state)))
        }
        None => None,
    };

    let committer = tokio::spawn(commit_offsets(
        progress.clone(),
        store.clone(),
        options.commit_interval,
    ));

    let pipeline_chain: SharedChain = Arc::new(Mutex::new(pipeline_chain));
    let rewind = Arc::new(Notify::new());
    let waiting = Arc::new(AtomicUsize::new(0));
    let mut drivers = Vec::new();
    for ((spec, chain), reader) in sinks.into_iter().zip(readers) {
        let sink_progress = progress.sink(&spec.name).expect("registered above").clone();
        let driver = SinkDriver {
            sink: spec.sink,
            journal: journal.clone(),
            reader,
            delivery: spec.delivery,
            progress: sink_progress.clone(),
            shutdown: shutdown.clone(),
            store: store.clone(),
            config_hash: spec.config_hash,
            pipeline_chain: pipeline_chain.clone(),
            chain,
            tables: TableFilter::new(&spec.tables),
        };
        let supervisor = Supervisor {
            journal: journal.clone(),
            store: store.clone(),
            progress: progress.clone(),
            shutdown: shutdown.clone(),
            rewind: rewind.clone(),
            waiting: waiting.clone(),
        };
        let tripped = tripped.get(&sink_progress.name).cloned();
        drivers.push(tokio::spawn(supervisor.run(driver, tripped)));
    }

    // Abort retries if draining takes too long.
    let drain_guard = {
        let (shutdown, timeout) = (shutdown.clone(), options.drain_timeout);
        tokio::spawn(async move {
            shutdown.draining().await;
            tokio::time::sleep(timeout).await;
            if !shutdown.is_aborting() {
                tracing::warn!(
                    timeout = ?timeout,
                    "shutdown timeout reached: what is undelivered stays uncommitted and is \
                     delivered again after a restart"
                );
                shutdown.abort();
            }
        })
    };

    let source_result = Feed {
        source,
        journal: journal.clone(),
        progress: progress.clone(),
        shutdown: shutdown.clone(),
        ack_interval: options.ack_interval,
        rewind,
    }
    .run()
    .await;
    if let Err(e) = &source_result {
        tracing::error!(error = %e, "source failed; draining sinks");
        shutdown.drain();
    }
    journal.close();
    let mut stopped = Vec::new();
    for (driver, sink) in drivers.into_iter().zip(progress.sinks()) {
        if let Ok(Err(stop)) = driver.await {
            if !matches!(stop, SinkStop::Interrupted) {
                stopped.push(format!("{}: {stop}", sink.name));
            }
        }
    }
    committer.abort();
    flush_offsets(&progress, &store).await;
    drain_guard.abort();
    if let Some(task) = admin_task {
        task.abort();
    }
    source_result.map_err(EngineError::Source)?;
    if stopped.is_empty() {
        Ok(())
    } else {
        Err(EngineError::SinksStopped(stopped))
    }
}

/// Write finished offsets to the state store, at most every `interval`, and mark them
/// durable so the source may confirm them to Postgres.
async fn commit_offsets(progress: Arc<Progress>, store: Store, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        flush_offsets(&progress, &store).await;
    }
}

pub(crate) async fn flush_offsets(progress: &Arc<Progress>, store: &Store) {
    let dirty: Vec<_> = progress
        .sinks()
        .iter()
        .filter_map(|s| s.take_dirty().map(|(seq, offset)| (s.clone(), seq, offset)))
        .collect();
    if dirty.is_empty() {
        return;
    }
    let rows: Vec<_> = dirty.iter().map(|(s, _, o)| (s.name.clone(), *o)).collect();
    let started = std::time::Instant::now();
    match store.run(move |s| s.save_offsets(&rows)).await {
        Ok(()) => {
            tracing::debug!(
                sinks = dirty.len(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "offsets committed"
            );
            for (sink, seq, offset) in dirty {
                sink.mark_durable(seq, offset);
            }
        }
        Err(error) => {
            tracing::error!(%error, "cannot commit offsets; will retry, and the slot does not advance meanwhile");
            for (sink, _, _) in dirty {
                sink.redirty();
            }
        }
    }
}
