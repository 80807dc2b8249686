//! The engine: wires one source, the journal, one driver per sink, the offset committer
//! and the admin server, and runs them until shutdown.

use std::collections::{HashMap, HashSet};
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
use crate::journal::{DiskConfig, DiskError, Journal, ReaderId};
use crate::lsn::{Lsn, Position};
use crate::progress::{Offset, Progress};
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
    /// The journal between the source and the sinks.
    pub journal: JournalOptions,
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

/// Which journal to run with.
#[derive(Clone, Debug)]
pub enum JournalOptions {
    /// In memory: `capacity` entries behind the slowest sink at most; the slot confirms what
    /// every sink made durable.
    Memory { capacity: usize },
    /// On disk: the slot confirms what is journaled. The newest `capacity` entries are
    /// also kept in memory. `accept_gap`: start even when the journal was lost and the slot
    /// already confirmed changes some sinks never received (they are lost to them).
    Disk {
        config: DiskConfig,
        capacity: usize,
        accept_gap: bool,
    },
}

/// The journal folder was lost (or replaced) after the slot had confirmed changes only it
/// held: some sinks can never receive them.
#[derive(Debug, thiserror::Error)]
#[error(
    "the journal at {dir} does not hold changes the replication slot already confirmed: {gaps}. \
     The journal must live on durable storage that survives restarts. Choices: start with \
     `sluice run --accept-journal-gap` (those changes are lost to these sinks) and then \
     `sluice backfill` their tables, or restore the journal folder"
)]
pub struct JournalGap {
    pub dir: String,
    /// `sink needs changes after X; the slot confirmed through Y`, one per sink.
    pub gaps: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] DiskError),
    #[error(transparent)]
    JournalGap(#[from] JournalGap),
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
    // Rewinds asked for while no pipeline ran (`sluice rewind`) take effect now.
    for spec in &sinks {
        if let Some(offset) = store.lock().apply_rewind(&spec.name)? {
            tracing::warn!(sink = %spec.name, after = %offset.position, "sink rewound by an operator: delivering again from the journal");
        }
    }
    let offsets = store.lock().offsets()?;
    // Sinks that ran before (a status or an offset): anything else is added now.
    let known: HashSet<String> = store.lock().sinks()?.into_keys().collect();
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
    let opened = open_journal(&options.journal, &store, &progress, &known).await?;
    let journal = opened.journal.clone();
    let mut readers = Vec::with_capacity(sinks.len());
    let names: Vec<String> = sinks.iter().map(|s| s.name.clone()).collect();
    for name in names {
        let reader = match offsets.get(&name) {
            Some(offset) if journal.is_durable() => {
                let seq = journal.seek(offset.position, offset.flush_lsn).await?;
                journal.register_at(seq)
            }
            // A sink that ran before but never committed has delivered nothing the journal
            // still keeps: it reads from the oldest entry.
            None if journal.is_durable() && known.contains(&name) => {
                let seq = journal.seek(Position::default(), Lsn::ZERO).await?;
                journal.register_at(seq)
            }
            // A sink added to the pipeline starts from now: what is journaled already counts
            // as passed (`sluice rewind --to oldest` reads it all).
            None if journal.is_durable() && opened.last != Position::default() => {
                let flush_lsn = journal
                    .synced()
                    .map_or(opened.last.commit_lsn, |s| s.borrow().end_lsn);
                let now = Offset {
                    position: opened.last,
                    flush_lsn,
                    commit_ts_micros: 0,
                };
                store.lock().save_offsets(&[(name.clone(), now)])?;
                if let Some(sink) = progress.sink(&name) {
                    sink.rewind_to(journal.head(), now);
                }
                journal.register()
            }
            _ => journal.register(),
        };
        if let Some(sink) = progress.sink(&name) {
            sink.start_at(seq_of(&journal, reader));
        }
        readers.push(reader);
    }

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
        waits: Default::default(),
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
        journal.clone(),
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
        last: opened.last,
        store: journal.is_durable().then(|| store.clone()),
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
    if let Some(synced) = journal.shutdown().await {
        tracing::debug!(seq = synced.seq, end = %synced.end_lsn, "journal closed");
    }
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
/// durable so the source may confirm them to Postgres (memory journal) and the journal may
/// trim what every sink finished (disk journal).
async fn commit_offsets(
    progress: Arc<Progress>,
    store: Store,
    journal: Arc<Journal>,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        flush_offsets(&progress, &store).await;
        journal.release(progress.min_durable_seq());
    }
}

/// The journal, and where the source resumes from it.
struct OpenedJournal {
    journal: Arc<Journal>,
    /// The last event already journaled: the source's resent events up to it are dropped.
    last: Position,
}

/// The sequence number a reader will read next.
fn seq_of(journal: &Journal, reader: ReaderId) -> u64 {
    journal.cursor(reader).unwrap_or_else(|| journal.head())
}

/// Open the journal the options name. A disk journal is checked against what the state
/// store knows of it: the same journal as last time, or a new one where the slot never
/// confirmed anything only a lost journal held.
async fn open_journal(
    options: &JournalOptions,
    store: &Store,
    progress: &Progress,
    known_sinks: &HashSet<String>,
) -> Result<OpenedJournal, EngineError> {
    let (config, capacity, accept_gap) = match options {
        JournalOptions::Memory { capacity } => {
            return Ok(OpenedJournal {
                journal: Journal::memory(*capacity),
                last: Position::ZERO,
            })
        }
        JournalOptions::Disk {
            config,
            capacity,
            accept_gap,
        } => (config.clone(), *capacity, *accept_gap),
    };
    let dir = config.dir.display().to_string();
    let folder = config.dir.clone();
    let (journal, opened) = Journal::open_disk(config, capacity, progress.resume_lsn())?;
    let (known, acked) = {
        let state = store.lock();
        (state.meta(JOURNAL_ID)?, state.meta(JOURNAL_ACKED)?)
    };
    let acked: Lsn = acked.and_then(|a| a.parse().ok()).unwrap_or(Lsn::ZERO);
    let same = known.as_deref() == Some(opened.id.as_str());
    if known.is_some() && !same && !opened.created {
        return Err(DiskError {
            dir,
            what: format!(
                "this journal (id {}) is not the one this pipeline's state store wrote to (id {}); \
                 point `journal.path` at the pipeline's own journal",
                opened.id,
                known.unwrap_or_default()
            ),
        }
        .into());
    }
    // The known journal holds everything after its start. A lost one held what the slot was
    // confirmed for (`acked`): a sink whose offset is before that can never get it.
    let needed_after = if same { opened.start_lsn } else { acked };
    let gaps: Vec<String> = progress
        .sinks()
        .iter()
        .map(|s| (s.name.clone(), s.durable().1))
        // A sink added now needs nothing from before; one that ran but never committed
        // needs everything.
        .filter(|(name, offset)| known_sinks.contains(name) && offset.flush_lsn < needed_after)
        .map(|(name, offset)| {
            let needs = if offset.flush_lsn == Lsn::ZERO {
                "every change (it committed none yet)".to_string()
            } else {
                format!("the changes after {}", offset.flush_lsn)
            };
            format!("sink {name} needs {needs}, but they are kept only from {needed_after} on")
        })
        .collect();
    if !gaps.is_empty() {
        let gap = JournalGap {
            dir,
            gaps: gaps.join("; "),
        };
        if !accept_gap {
            // A journal created just now holds nothing: leave the folder as it was found, so
            // that the next start finds the same gap (not a journal it does not know).
            if opened.created {
                journal.shutdown().await;
                if let Err(e) = std::fs::remove_dir_all(&folder) {
                    tracing::warn!(dir = %folder.display(), "journal: cannot remove the folder created for this start: {e}");
                }
            }
            return Err(gap.into());
        }
        tracing::error!("{gap}; going on because of --accept-journal-gap: those changes are lost to these sinks");
    }
    if !same {
        let id = opened.id.clone();
        store.run(move |s| s.set_meta(JOURNAL_ID, &id)).await?;
        if !opened.created {
            tracing::warn!("journal: the state store did not know this journal; adopting it");
        }
    }
    tracing::info!(
        created = opened.created,
        start = %opened.start_lsn,
        durable_end = %opened.synced.end_lsn,
        "journal open"
    );
    Ok(OpenedJournal {
        last: opened.last.unwrap_or(Position::ZERO),
        journal,
    })
}

/// State store facts about the disk journal: its identity, and how far the slot was
/// confirmed on the strength of what it held.
pub const JOURNAL_ID: &str = "journal_id";
pub const JOURNAL_ACKED: &str = "journal_acked";

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
