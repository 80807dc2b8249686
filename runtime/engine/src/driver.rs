//! The sink driver: one task per sink that reads the journal at the sink's own cursor,
//! batches, delivers with retries, and records the sink's offset.
//!
//! Everything a connector must not decide lives here: batch size and wait, exponential
//! backoff with jitter (Retry-After honoured as a minimum), giving up after
//! `retry.max_elapsed` (the sink stops; nothing is dropped), skipping what the sink had
//! already committed before a restart, keeping per-key order across retries, parking
//! permanent failures in the sink's DLQ before the offset passes them (`on_key: hold`
//! holds later events of the key too), the DLQ breaker, and replays.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::chain::{pipeline_outputs, Chain, ChainFailure, SharedChain};
use crate::dlq::{hold_key, Breaker, DlqPolicy};
use crate::envelope;
use crate::event::Event;
use crate::journal::{Entry, Journal, ReaderId};
use crate::progress::SinkProgress;
use crate::shutdown::Shutdown;
use crate::sink::{Delivery, Sink};
use crate::state::{DlqFilter, DlqState, NewDlqEntry, StateError, StateStore};

/// How often a running driver looks for replay requests and purges.
const DLQ_POLL: Duration = Duration::from_secs(1);

/// How a sink is fed, retried and dead-lettered (from `delivery:` in the pipeline file).
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    pub max_events: usize,
    pub max_wait: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub retry_max_elapsed: Duration,
    pub dlq: DlqPolicy,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            max_events: 500,
            max_wait: Duration::from_millis(10),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            retry_max_elapsed: Duration::from_secs(15 * 60),
            dlq: DlqPolicy::default(),
        }
    }
}

/// Why a sink stopped before the journal ended.
#[derive(Debug, thiserror::Error)]
pub enum SinkStop {
    /// Too many recent events failed permanently: something is wrong with the sink, not
    /// with a few events.
    #[error("the DLQ breaker tripped: {0}")]
    Breaker(String),
    /// Transient errors went on for longer than `retry.max_elapsed`.
    #[error("gave up after retrying for {elapsed:?} (retry.max_elapsed): {reason}")]
    RetriesExhausted { elapsed: Duration, reason: String },
    /// The sink broke its contract (wrong number of results).
    #[error("sink returned {got} results for {expected} events")]
    Contract { expected: usize, got: usize },
    /// An event could not be parked durably, so the offset must not pass it.
    #[error("cannot write the dead-letter queue: {0}")]
    Dlq(#[from] StateError),
    /// Shutdown was forced while the sink was still retrying; its offset stays where it was.
    #[error("interrupted by shutdown while retrying")]
    Interrupted,
}

/// What finally happened to one event of a delivery.
#[derive(Clone, Debug)]
enum Outcome {
    Delivered,
    /// Failed permanently at the sink: it goes to the DLQ.
    Rejected(String),
    /// `on_key: hold`: waits in the DLQ behind the parked event with this id.
    Held {
        behind: String,
    },
    /// A transform failed the source event.
    Transform(ChainFailure),
}

pub struct SinkDriver {
    pub sink: Box<dyn Sink>,
    pub journal: Arc<Journal>,
    pub reader: ReaderId,
    pub settings: DeliverySettings,
    pub progress: Arc<SinkProgress>,
    /// Retries are abandoned once it aborts.
    pub shutdown: Shutdown,
    /// Where parked events go.
    pub store: Arc<Mutex<StateStore>>,
    /// Hash of the sink's configuration, recorded with each parked event.
    pub config_hash: String,
    /// The pipeline-level transforms, shared by every sink (run once per event).
    pub pipeline_chain: SharedChain,
    /// This sink's own transforms, run after the pipeline's.
    pub chain: Chain,
}

/// One source event on its way to the sink: what the chains made of it.
struct Staged {
    input: Arc<Event>,
    outputs: Result<Vec<Arc<Event>>, ChainFailure>,
}

/// The driver's view of its DLQ.
struct Parked {
    /// Ids of events already in the DLQ and after the committed offset: a restart must not
    /// send them again (they wait for a replay), nor park them twice.
    ids: HashSet<String>,
    /// `on_key: hold`: hold key → id of the parked event later events of the key wait behind.
    held: HashMap<String, String>,
    breaker: Breaker,
}

impl SinkDriver {
    /// Run until the journal is closed and drained, or the sink stops.
    pub async fn run(mut self) -> Result<(), SinkStop> {
        let result = self.run_inner().await;
        self.sink.close().await;
        result
    }

    fn name(&self) -> &str {
        &self.progress.name
    }

    async fn load_parked(&mut self) -> Result<Parked, StateError> {
        let committed = self.progress.committed().position;
        let sink = self.name().to_string();
        let entries = on_store(&self.store, move |s| {
            s.dlq_list(&DlqFilter {
                sink: Some(sink),
                ids: vec![],
            })
        })
        .await?;
        Ok(Parked {
            ids: entries
                .iter()
                .filter(|e| e.position > committed)
                .map(|e| e.event_id.clone())
                .collect(),
            held: self.held_heads(&entries),
            breaker: Breaker::new(self.settings.dlq.clone()),
        })
    }

    /// Keys held behind a parked (or replay-pending) event, for `on_key: hold`.
    fn held_heads(&self, entries: &[crate::state::DlqEntry]) -> HashMap<String, String> {
        if !self.settings.dlq.hold_keys {
            return HashMap::new();
        }
        entries
            .iter()
            .filter(|e| e.held_behind.is_none() && e.state != DlqState::Held)
            .filter_map(|e| Some((e.ordering_key.clone()?, e.event_id.clone())))
            .collect()
    }

    async fn run_inner(&mut self) -> Result<(), SinkStop> {
        let committed = self.progress.committed();
        let mut parked = self.load_parked().await?;
        let mut offset = committed;
        let max = self.settings.max_events.max(1);
        let mut next_poll = Instant::now() + DLQ_POLL;
        loop {
            let read = tokio::select! {
                read = self.journal.read(self.reader, max, self.settings.max_wait) => Some(read),
                _ = tokio::time::sleep_until(next_poll) => None,
            };
            if Instant::now() >= next_poll {
                self.poll_dlq(&mut parked).await?;
                next_poll = Instant::now() + DLQ_POLL;
            }
            let Some(read) = read else { continue };
            let Some((seq, entries)) = read else { break };
            let mut inputs: Vec<Arc<Event>> = Vec::with_capacity(entries.len());
            let mut next = offset;
            for entry in &entries {
                match entry {
                    Entry::Commit { end_lsn, .. } => next.flush_lsn = next.flush_lsn.max(*end_lsn),
                    Entry::Event(event) if event.position <= committed.position => {
                        self.progress.counters.skipped.fetch_add(1, relaxed());
                    }
                    Entry::Event(event) => {
                        next.position = event.position;
                        next.commit_ts_micros = event.source.ts_micros;
                        if !parked.ids.is_empty() && parked.ids.contains(&event.id()) {
                            self.progress.counters.skipped.fetch_add(1, relaxed());
                        } else {
                            inputs.push(event.clone());
                        }
                    }
                }
            }
            if !inputs.is_empty() {
                let staged = self.stage(&inputs, true);
                let park = self.deliver_staged(staged, &mut parked).await?;
                if !park.is_empty() {
                    self.park(park).await?;
                }
            }
            if parked.breaker.tripped() {
                return Err(SinkStop::Breaker(parked.breaker.describe()));
            }
            offset = next;
            self.progress.advance(seq + entries.len() as u64, offset);
        }
        Ok(())
    }

    /// Run source events through the pipeline's chain (cached across sinks when `cached`)
    /// and this sink's chain. Transforms are CPU work: they run on this thread, with the
    /// runtime told so.
    fn stage(&mut self, inputs: &[Arc<Event>], cached: bool) -> Vec<Staged> {
        let needs_work = !self.chain.is_empty() || !self.pipeline_chain.lock().unwrap().is_empty();
        let mut run = || {
            let first: Vec<Arc<crate::chain::ChainOutput>> = if cached {
                pipeline_outputs(&self.pipeline_chain, inputs)
            } else {
                let mut chain = self.pipeline_chain.lock().unwrap();
                if chain.is_empty() {
                    inputs
                        .iter()
                        .map(|e| Arc::new(Ok(vec![e.clone()])))
                        .collect()
                } else {
                    chain.run(inputs).into_iter().map(Arc::new).collect()
                }
            };
            let mut staged: Vec<Staged> = inputs
                .iter()
                .zip(first)
                .map(|(input, out)| Staged {
                    input: input.clone(),
                    outputs: (*out).clone(),
                })
                .collect();
            if !self.chain.is_empty() {
                let mid: Vec<(usize, Arc<Event>)> = staged
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.outputs.as_ref().ok().map(|o| (i, o)))
                    .flat_map(|(i, outs)| outs.iter().map(move |e| (i, e.clone())))
                    .collect();
                let events: Vec<Arc<Event>> = mid.iter().map(|(_, e)| e.clone()).collect();
                let results = self.chain.run(&events);
                let mut rebuilt: Vec<Option<Result<Vec<Arc<Event>>, ChainFailure>>> = staged
                    .iter()
                    .map(|s| s.outputs.as_ref().err().map(|f| Err(f.clone())))
                    .collect();
                for ((i, _), result) in mid.into_iter().zip(results) {
                    let slot = rebuilt[i].get_or_insert_with(|| Ok(Vec::new()));
                    match (slot.as_mut(), result) {
                        (Ok(all), Ok(outs)) => all.extend(outs),
                        (Ok(_), Err(f)) => *slot = Err(f),
                        (Err(_), _) => {}
                    }
                }
                for (s, r) in staged.iter_mut().zip(rebuilt) {
                    s.outputs = r.unwrap_or_else(|| Ok(Vec::new()));
                    if let Ok(outs) = &mut s.outputs {
                        crate::chain::number(outs);
                    }
                }
            }
            staged
        };
        if needs_work
            && tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            tokio::task::block_in_place(run)
        } else {
            run()
        }
    }

    /// Deliver what the chains made of a batch; return what must be parked. Updates the
    /// breaker and the held keys.
    async fn deliver_staged(
        &mut self,
        staged: Vec<Staged>,
        parked: &mut Parked,
    ) -> Result<Vec<NewDlqEntry>, SinkStop> {
        let mut park = Vec::new();
        let mut batch: Vec<Arc<Event>> = Vec::new();
        let mut origin: Vec<usize> = Vec::new();
        for (i, s) in staged.iter().enumerate() {
            match &s.outputs {
                Err(failure) => {
                    parked.breaker.record(true);
                    self.hold(parked, &s.input);
                    park.push(self.dlq_entry(
                        &s.input,
                        &failure.failed.clone(),
                        Outcome::Transform(failure.clone()),
                    ));
                }
                Ok(outputs) => {
                    for out in outputs {
                        if !parked.ids.is_empty() && parked.ids.contains(&out.id()) {
                            continue;
                        }
                        let held_behind = match parked.held.is_empty() {
                            true => None,
                            false => hold_key(out).and_then(|k| parked.held.get(&k)).cloned(),
                        };
                        match held_behind {
                            Some(head) => park.push(self.dlq_entry(
                                &s.input,
                                out,
                                Outcome::Held { behind: head },
                            )),
                            None => {
                                batch.push(out.clone());
                                origin.push(i);
                            }
                        }
                    }
                }
            }
        }
        if batch.is_empty() {
            return Ok(park);
        }
        let outcomes = self.deliver(&batch).await?;
        for ((event, i), outcome) in batch.iter().zip(origin).zip(outcomes) {
            parked
                .breaker
                .record(matches!(outcome, Outcome::Rejected(_)));
            match outcome {
                Outcome::Delivered => {}
                outcome => {
                    if matches!(outcome, Outcome::Rejected(_)) {
                        self.hold(parked, event);
                    }
                    park.push(self.dlq_entry(&staged[i].input, event, outcome));
                }
            }
        }
        Ok(park)
    }

    /// `on_key: hold`: later events of this event's key wait behind it.
    fn hold(&self, parked: &mut Parked, event: &Event) {
        if let (true, Some(key)) = (self.settings.dlq.hold_keys, hold_key(event)) {
            parked.held.entry(key).or_insert_with(|| event.id());
        }
    }

    /// A DLQ row: `original` as the source produced it, `failed` as it reached the stage
    /// that failed.
    fn dlq_entry(&self, original: &Event, failed: &Event, outcome: Outcome) -> NewDlqEntry {
        let (state, stage, kind, error, held_behind, hash) = match outcome {
            Outcome::Rejected(reason) => (
                DlqState::Parked,
                "sink".to_string(),
                "rejected".to_string(),
                reason,
                None,
                self.config_hash.clone(),
            ),
            Outcome::Held { behind } => (
                DlqState::Held,
                "sink".to_string(),
                "held".to_string(),
                format!("held behind {behind} (dlq.on_key: hold)"),
                Some(behind),
                self.config_hash.clone(),
            ),
            Outcome::Transform(f) => (
                DlqState::Parked,
                f.stage,
                f.error.kind,
                f.error.message,
                None,
                f.fingerprint,
            ),
            Outcome::Delivered => unreachable!("delivered events are not parked"),
        };
        NewDlqEntry {
            sink: self.name().to_string(),
            position: failed.position,
            event_id: failed.id(),
            ordering_key: hold_key(failed),
            original: original.json().to_vec(),
            failed: failed.json().to_vec(),
            stage,
            error_kind: kind,
            error,
            config_hash: hash,
            state,
            held_behind,
        }
    }

    /// Write entries to the DLQ durably (before the offset may pass them).
    async fn park(&mut self, entries: Vec<NewDlqEntry>) -> Result<(), SinkStop> {
        let c = &self.progress.counters;
        for e in &entries {
            match e.state {
                DlqState::Held => c.held.fetch_add(1, relaxed()),
                _ => c.parked.fetch_add(1, relaxed()),
            };
            if e.state == DlqState::Parked {
                tracing::warn!(sink = %self.name(), event = %e.event_id, stage = %e.stage, error = %e.error, "event sent to the DLQ");
            }
        }
        on_store(&self.store, move |s| s.park(&entries)).await?;
        Ok(())
    }

    /// Pick up purges (released keys) and replay requests. A replayed event goes through
    /// the current transforms and the sink again.
    async fn poll_dlq(&mut self, parked: &mut Parked) -> Result<(), SinkStop> {
        let sink = self.name().to_string();
        let (entries, replay) = on_store(&self.store, move |s| {
            let all = s.dlq_list(&DlqFilter {
                sink: Some(sink.clone()),
                ids: vec![],
            })?;
            let replay = s.dlq_in_state(&sink, DlqState::Replay)?;
            Ok((all, replay))
        })
        .await?;
        parked.held = self.held_heads(&entries);
        if replay.is_empty() {
            return Ok(());
        }
        tracing::info!(sink = %self.name(), events = replay.len(), "replaying dead-lettered events");
        let mut inputs = Vec::with_capacity(replay.len());
        let mut replayed = Vec::with_capacity(replay.len());
        for entry in &replay {
            match envelope::parse(&entry.original) {
                Ok(e) => {
                    inputs.push(Arc::new(e));
                    replayed.push(entry);
                }
                Err(e) => {
                    tracing::error!(sink = %self.name(), event = %entry.event_id, error = %e, "a parked envelope cannot be read back; it stays parked");
                    let id = entry.id;
                    on_store(&self.store, move |s| s.dlq_set_state(id, DlqState::Parked)).await?;
                }
            }
        }
        // Replays are not held behind themselves.
        let mut replay_parked = Parked {
            ids: HashSet::new(),
            held: HashMap::new(),
            breaker: Breaker::new(self.settings.dlq.clone()),
        };
        let staged = self.stage(&inputs, false);
        let again = self.deliver_staged(staged, &mut replay_parked).await?;
        let again_ids: HashSet<String> = again.iter().map(|e| e.event_id.clone()).collect();
        let resolved: Vec<i64> = replayed
            .iter()
            .filter(|e| !again_ids.contains(&e.event_id))
            .map(|e| e.id)
            .collect();
        self.progress
            .counters
            .replayed
            .fetch_add(resolved.len() as u64, relaxed());
        let failed = again.len();
        if !again.is_empty() {
            self.park(again).await?;
        }
        on_store(&self.store, move |s| {
            resolved.iter().try_for_each(|id| s.dlq_resolve(*id))
        })
        .await?;
        // Keys whose head got through are released; heads that failed again hold on.
        let sink = self.name().to_string();
        let entries = on_store(&self.store, move |s| {
            s.dlq_list(&DlqFilter {
                sink: Some(sink),
                ids: vec![],
            })
        })
        .await?;
        parked.held = self.held_heads(&entries);
        tracing::info!(sink = %self.name(), replayed = replay.len(), failed, "replay done");
        Ok(())
    }

    /// Deliver events, retrying transient failures with backoff and deferred events at once,
    /// until each event is delivered, rejected, or (on_key: hold) held behind a rejected one.
    async fn deliver(&mut self, batch: &[Arc<Event>]) -> Result<Vec<Outcome>, SinkStop> {
        let counters = &self.progress.counters;
        counters.batches.fetch_add(1, relaxed());
        let started = Instant::now();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut rejected_keys: HashMap<String, String> = HashMap::new();
        let mut attempt: u32 = 0;
        loop {
            let events: Vec<Arc<Event>> = pending.iter().map(|&i| batch[i].clone()).collect();
            let results = self.sink.write(&events).await;
            if results.len() != events.len() {
                return Err(SinkStop::Contract {
                    expected: events.len(),
                    got: results.len(),
                });
            }
            let mut retry = Vec::new();
            let mut reason = String::new();
            let mut wish: Option<Duration> = None;
            let mut progressed = false;
            let mut delivered = 0u64;
            for (&i, result) in pending.iter().zip(results) {
                match result {
                    Delivery::Delivered => {
                        delivered += 1;
                        progressed = true;
                        outcomes[i] = Some(Outcome::Delivered);
                    }
                    Delivery::Rejected { reason } => {
                        progressed = true;
                        counters.rejected.fetch_add(1, relaxed());
                        if let Some(key) = hold_key(&batch[i]) {
                            rejected_keys.entry(key).or_insert_with(|| batch[i].id());
                        }
                        outcomes[i] = Some(Outcome::Rejected(reason));
                    }
                    Delivery::Deferred => retry.push(i),
                    Delivery::Retry { reason: r, after } => {
                        retry.push(i);
                        if reason.is_empty() {
                            reason = r;
                        }
                        wish = wish.max(after);
                    }
                }
            }
            counters.delivered.fetch_add(delivered, relaxed());
            if self.settings.dlq.hold_keys {
                retry.retain(
                    |&i| match hold_key(&batch[i]).and_then(|k| rejected_keys.get(&k)) {
                        Some(head) => {
                            outcomes[i] = Some(Outcome::Held {
                                behind: head.clone(),
                            });
                            false
                        }
                        None => true,
                    },
                );
            }
            if retry.is_empty() {
                return Ok(outcomes
                    .into_iter()
                    .map(|o| o.expect("every event has an outcome"))
                    .collect());
            }
            pending = retry;
            // Only events deferred behind a permanent failure: send them again at once.
            if reason.is_empty() && progressed {
                continue;
            }
            let elapsed = started.elapsed();
            if elapsed >= self.settings.retry_max_elapsed {
                return Err(SinkStop::RetriesExhausted { elapsed, reason });
            }
            counters.retries.fetch_add(pending.len() as u64, relaxed());
            let delay = backoff(&self.settings, attempt).max(wish.unwrap_or_default());
            attempt = attempt.saturating_add(1);
            tracing::warn!(
                sink = %self.name(),
                events = pending.len(),
                attempt,
                delay_ms = delay.as_millis() as u64,
                %reason,
                "delivery failed, retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.aborting() => return Err(SinkStop::Interrupted),
            }
        }
    }
}

/// Run `f` on the state store without blocking the runtime.
async fn on_store<T: Send + 'static>(
    store: &Arc<Mutex<StateStore>>,
    f: impl FnOnce(&mut StateStore) -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&mut store.lock().unwrap()))
        .await
        .expect("state store task panicked")
}

/// Exponential backoff with jitter: a random wait in [d/2, d], d = initial × 2^attempt,
/// capped at `retry.max`.
fn backoff(s: &DeliverySettings, attempt: u32) -> Duration {
    let d = s
        .retry_initial
        .saturating_mul(1u32 << attempt.min(20))
        .min(s.retry_max);
    let half = d / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

fn relaxed() -> std::sync::atomic::Ordering {
    std::sync::atomic::Ordering::Relaxed
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use async_trait::async_trait;

    use super::*;
    use crate::event::Op;
    use crate::lsn::{Lsn, Position};
    use crate::progress::{Offset, Progress};
    use crate::testing;

    /// A sink that answers from a script, then delivers everything; records what it got.
    struct Scripted {
        script: VecDeque<Vec<Delivery>>,
        seen: Arc<Mutex<Vec<Vec<Position>>>>,
        /// Events with these indices are always rejected (after the script runs out).
        reject: HashSet<u32>,
    }

    #[async_trait]
    impl Sink for Scripted {
        async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
            self.seen
                .lock()
                .unwrap()
                .push(batch.iter().map(|e| e.position).collect());
            if let Some(answer) = self.script.pop_front() {
                return answer;
            }
            let mut failed_keys = HashSet::new();
            batch
                .iter()
                .map(|e| {
                    let key = e.ordering_key();
                    if failed_keys.contains(&key) {
                        Delivery::Deferred
                    } else if self.reject.contains(&e.position.index) {
                        failed_keys.insert(key);
                        Delivery::rejected("422 no")
                    } else {
                        Delivery::Delivered
                    }
                })
                .collect()
        }
    }

    fn keyed(commit: u64, index: u32, key: i64) -> Entry {
        let mut e = testing::event("t", Op::Insert, commit, index);
        e.key = Some(testing::id_row(key));
        Entry::Event(Arc::new(e))
    }

    fn event(commit: u64, index: u32) -> Entry {
        keyed(commit, index, index as i64)
    }

    fn settings() -> DeliverySettings {
        DeliverySettings {
            max_events: 10,
            max_wait: Duration::ZERO,
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
            retry_max_elapsed: Duration::from_secs(5),
            dlq: DlqPolicy {
                max_ratio: 0.5,
                window: 100,
                hold_keys: false,
            },
        }
    }

    struct Run {
        result: Result<(), SinkStop>,
        seen: Vec<Vec<Position>>,
        progress: Arc<Progress>,
        store: Arc<Mutex<StateStore>>,
        _dir: TempDir,
    }

    struct TempDir(std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn drive(
        entries: Vec<Entry>,
        committed: Offset,
        script: Vec<Vec<Delivery>>,
        reject: &[u32],
        settings: DeliverySettings,
    ) -> Run {
        drive_with(
            entries,
            committed,
            script,
            reject,
            settings,
            Chain::default(),
            Chain::default(),
        )
        .await
    }

    async fn drive_with(
        entries: Vec<Entry>,
        committed: Offset,
        script: Vec<Vec<Delivery>>,
        reject: &[u32],
        settings: DeliverySettings,
        pipeline_chain: Chain,
        chain: Chain,
    ) -> Run {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-driver-{}-{}",
            std::process::id(),
            N.fetch_add(1, relaxed())
        ));
        let store = Arc::new(Mutex::new(StateStore::open(&dir.join("s.db")).unwrap()));
        let journal = Journal::new(100);
        let progress = Progress::new(vec![("s".into(), committed)]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let driver = SinkDriver {
            sink: Box::new(Scripted {
                script: script.into(),
                seen: seen.clone(),
                reject: reject.iter().copied().collect(),
            }),
            reader: journal.register(),
            journal: journal.clone(),
            settings,
            progress: progress.sinks()[0].clone(),
            shutdown: Shutdown::new(),
            store: store.clone(),
            config_hash: "h".into(),
            pipeline_chain: Arc::new(Mutex::new(pipeline_chain)),
            chain,
        };
        journal.append(entries).await;
        journal.close();
        let result = driver.run().await;
        let seen = seen.lock().unwrap().clone();
        Run {
            result,
            seen,
            progress,
            store,
            _dir: TempDir(dir),
        }
    }

    fn dlq(run: &Run) -> Vec<(String, DlqState)> {
        let store = run.store.lock().unwrap();
        store
            .dlq_list(&DlqFilter::default())
            .unwrap()
            .into_iter()
            .map(|e| (e.event_id, e.state))
            .collect()
    }

    #[tokio::test]
    async fn retries_failed_and_deferred_events_in_order_then_commits() {
        let entries = vec![
            event(100, 0),
            event(100, 1),
            event(100, 2),
            Entry::Commit {
                commit_lsn: Lsn(100),
                end_lsn: Lsn(120),
            },
        ];
        let script = vec![vec![
            Delivery::Delivered,
            Delivery::retry("503"),
            Delivery::Deferred,
        ]];
        let run = drive(entries, Offset::default(), script, &[], settings()).await;
        assert!(run.result.is_ok(), "{:?}", run.result);
        let p = |i| Position::new(Lsn(100), i);
        assert_eq!(run.seen, vec![vec![p(0), p(1), p(2)], vec![p(1), p(2)]]);
        let committed = run.progress.sinks()[0].take_dirty().unwrap().1;
        assert_eq!((committed.position, committed.flush_lsn), (p(2), Lsn(120)));
        assert_eq!(
            run.progress.sinks()[0].counters.delivered.load(relaxed()),
            3
        );
    }

    #[tokio::test]
    async fn events_at_or_before_the_committed_offset_are_skipped() {
        let committed = Offset {
            position: Position::new(Lsn(100), 1),
            ..Default::default()
        };
        let entries = vec![event(100, 0), event(100, 1), event(100, 2), event(200, 0)];
        let run = drive(entries, committed, vec![], &[], settings()).await;
        assert!(run.result.is_ok(), "{:?}", run.result);
        assert_eq!(
            run.seen,
            vec![vec![Position::new(Lsn(100), 2), Position::new(Lsn(200), 0)]]
        );
    }

    #[tokio::test]
    async fn a_rejected_event_is_parked_and_the_rest_of_its_key_goes_on() {
        let entries = vec![keyed(1, 0, 7), keyed(1, 1, 7), keyed(1, 2, 8)];
        let run = drive(entries, Offset::default(), vec![], &[0], settings()).await;
        assert!(run.result.is_ok(), "{:?}", run.result);
        assert_eq!(dlq(&run), vec![("0/1:0".to_string(), DlqState::Parked)]);
        // The deferred event of key 7 was sent again right away, after the parking.
        assert_eq!(run.seen.len(), 2);
        assert_eq!(run.seen[1], vec![Position::new(Lsn(1), 1)]);
        let committed = run.progress.sinks()[0].take_dirty().unwrap().1;
        assert_eq!(
            committed.position,
            Position::new(Lsn(1), 2),
            "the offset moves past the parked event"
        );
    }

    #[tokio::test]
    async fn on_key_hold_parks_later_events_of_the_key_behind_the_failed_one() {
        let mut s = settings();
        s.dlq.hold_keys = true;
        s.max_events = 2;
        let entries = vec![
            keyed(1, 0, 7),
            keyed(1, 1, 7),
            keyed(1, 2, 8),
            keyed(1, 3, 7),
        ];
        let run = drive(entries, Offset::default(), vec![], &[0], s).await;
        assert!(run.result.is_ok(), "{:?}", run.result);
        assert_eq!(
            dlq(&run),
            vec![
                ("0/1:0".to_string(), DlqState::Parked),
                ("0/1:1".to_string(), DlqState::Held),
                ("0/1:3".to_string(), DlqState::Held),
            ]
        );
        let sent: Vec<Position> = run.seen.concat();
        assert!(
            !sent.contains(&Position::new(Lsn(1), 3)),
            "a held event is never sent"
        );
    }

    #[tokio::test]
    async fn the_breaker_stops_a_sink_that_rejects_too_much() {
        let mut s = settings();
        s.dlq = DlqPolicy {
            max_ratio: 0.5,
            window: 4,
            hold_keys: false,
        };
        let entries = (0..8).map(|i| event(1, i)).collect();
        let run = drive(
            entries,
            Offset::default(),
            vec![],
            &[0, 1, 2, 3, 4, 5, 6, 7],
            s,
        )
        .await;
        assert!(
            matches!(run.result, Err(SinkStop::Breaker(_))),
            "{:?}",
            run.result.err()
        );
        assert!(
            run.progress.sinks()[0].take_dirty().is_none(),
            "a tripped batch does not advance the offset"
        );
        assert!(
            !dlq(&run).is_empty(),
            "what was rejected is parked durably all the same"
        );
    }

    #[tokio::test]
    async fn retrying_stops_after_max_elapsed_and_never_drops() {
        let mut s = settings();
        s.retry_max_elapsed = Duration::from_millis(30);
        let script = (0..1000).map(|_| vec![Delivery::retry("down")]).collect();
        let run = drive(vec![event(1, 0)], Offset::default(), script, &[], s).await;
        assert!(matches!(run.result, Err(SinkStop::RetriesExhausted { .. })));
        assert!(run.seen.len() > 2, "it retried before giving up");
        assert!(run.progress.sinks()[0].take_dirty().is_none());
    }

    #[tokio::test]
    async fn transforms_fan_out_and_park_what_they_fail_with_their_stage() {
        use crate::chain::tests::{event as n_event, ByN};
        let entries = vec![
            Entry::Event(n_event(0, 1)),
            Entry::Event(n_event(1, 2)),
            Entry::Event(n_event(2, -1)),
            Entry::Event(n_event(3, 0)),
        ];
        let run = drive_with(
            entries,
            Offset::default(),
            vec![],
            &[],
            settings(),
            Chain::new(vec![Box::new(ByN("redact"))]),
            Chain::new(vec![Box::new(ByN("doc"))]),
        )
        .await;
        assert!(run.result.is_ok(), "{:?}", run.result);
        let sent: Vec<String> = run.seen.concat().iter().map(|p| p.to_string()).collect();
        // 0 maps, 1 fans out to 2 then 4 events (both chains), 2 fails, 3 is dropped.
        assert_eq!(sent, ["0/1:0", "0/1:1", "0/1:1", "0/1:1", "0/1:1"]);
        let store = run.store.lock().unwrap();
        let parked = store.dlq_list(&DlqFilter::default()).unwrap();
        assert_eq!(parked.len(), 1);
        let e = &parked[0];
        assert_eq!(
            (e.event_id.as_str(), e.stage.as_str(), e.error.as_str()),
            ("0/1:2", "redact", "n is -1")
        );
        assert_eq!(e.config_hash, "f", "the failing transform's fingerprint");
        let original: serde_json::Value = serde_json::from_slice(&e.original).unwrap();
        assert!(
            original["after"].get("redact").is_none(),
            "original: as the source produced it"
        );
        let committed = run.progress.sinks()[0].take_dirty().unwrap().1;
        assert_eq!(
            committed.position,
            Position::new(Lsn(1), 3),
            "offsets count source events"
        );
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let s = DeliverySettings {
            retry_initial: Duration::from_millis(100),
            ..settings()
        };
        let s = DeliverySettings {
            retry_max: Duration::from_secs(1),
            ..s
        };
        for attempt in 0..12 {
            let d = backoff(&s, attempt);
            let full =
                Duration::from_millis(100 * (1 << attempt.min(10))).min(Duration::from_secs(1));
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} outside [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
