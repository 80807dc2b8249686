//! The driver's side of its dead-letter queue: what to park and when, `on_key: hold`,
//! what a restart must skip, and replays.
//!
//! A parked event's row is written (and fsynced) before the offset may pass it. After a
//! restart, events already in the DLQ past the committed offset are skipped (they wait
//! for a replay), so nothing is parked twice. Replays and purges are requests an operator
//! writes to the store from another process; the driver notices them through
//! [`crate::state::DeadLetters::dlq_version`] (one cheap read a second) and only then
//! reads what changed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{relaxed, Breaker, Outcome, Outgoing, SinkDriver, SinkStop};
use crate::envelope;
use crate::event::Event;
use crate::journal::Record;
use crate::lsn::Position;
use crate::state::{DlqState, NewDlqEntry, StateError};

/// The key under which `on_key: hold` holds events; `None` for a barrier (never held).
pub fn hold_key(event: &Event) -> Option<String> {
    event.ordering_key().map(|k| format!("{k:016x}"))
}

/// The driver's view of its DLQ.
pub(super) struct Parked {
    /// Ids of events already in the DLQ and after the committed offset: a restart must not
    /// send them again (they wait for a replay), nor park them twice.
    ids: HashSet<String>,
    /// `on_key: hold`: hold key → id of the parked event later events of the key wait behind.
    held: HashMap<String, String>,
    pub breaker: Breaker,
    /// The store's DLQ version last seen; `None` before the first look (replays requested
    /// while nothing ran are taken at start).
    version: Option<u64>,
}

impl Parked {
    pub fn was_parked(&self, event: &Event) -> bool {
        !self.ids.is_empty() && self.ids.contains(&event.id())
    }

    fn held_behind(&self, event: &Event) -> Option<String> {
        match self.held.is_empty() {
            true => None,
            false => hold_key(event).and_then(|k| self.held.get(&k)).cloned(),
        }
    }
}

impl SinkDriver {
    pub(super) async fn load_parked(&mut self, committed: Position) -> Result<Parked, StateError> {
        let sink = self.name().to_string();
        let ids = self
            .store
            .run(move |s| s.dlq_ids_after(&sink, committed))
            .await?;
        Ok(Parked {
            ids,
            held: self.hold_heads().await?,
            breaker: Breaker::new(self.delivery.dlq.clone()),
            version: None,
        })
    }

    /// Keys held behind a parked (or replay-pending) event, for `on_key: hold`.
    async fn hold_heads(&mut self) -> Result<HashMap<String, String>, StateError> {
        if !self.holds_keys() {
            return Ok(HashMap::new());
        }
        let sink = self.name().to_string();
        self.store.run(move |s| s.dlq_hold_heads(&sink)).await
    }

    /// Decide what of the staged events the sink is sent: transform failures are parked
    /// (and counted by the breaker), events of held keys are parked behind their head.
    pub(super) fn route(&self, staged: Vec<super::Staged>, parked: &mut Parked) -> Outgoing {
        let mut out = Outgoing {
            batch: Vec::with_capacity(staged.len()),
            origin: Vec::with_capacity(staged.len()),
            park: Vec::new(),
            originals: staged.iter().map(|s| s.input.clone()).collect(),
        };
        for (i, s) in staged.iter().enumerate() {
            match &*s.outputs {
                Err(failure) => {
                    parked.breaker.record(true);
                    self.hold(parked, &s.input);
                    out.park.push(self.dlq_entry(
                        &s.input,
                        &failure.failed.clone(),
                        Outcome::Transform(failure.clone()),
                    ));
                }
                Ok(outputs) => {
                    for event in outputs {
                        if parked.was_parked(event) {
                            continue;
                        }
                        self.route_one(&mut out, parked, &s.input, event, i);
                    }
                }
            }
        }
        out
    }

    /// [`SinkDriver::route`] for source events that no transform touches.
    pub(super) fn route_plain(&self, inputs: &[Arc<Record>], parked: &mut Parked) -> Outgoing {
        let mut out = Outgoing {
            batch: Vec::with_capacity(inputs.len()),
            origin: Vec::with_capacity(inputs.len()),
            park: Vec::new(),
            originals: inputs.iter().map(|r| r.event.clone()).collect(),
        };
        for (i, r) in inputs.iter().enumerate() {
            self.route_one(&mut out, parked, &r.event, &r.event, i);
        }
        out
    }

    /// Send `event` (one of what source event `origin` became), or park it behind the head
    /// of its held key.
    fn route_one(
        &self,
        out: &mut Outgoing,
        parked: &Parked,
        original: &Event,
        event: &Arc<Event>,
        origin: usize,
    ) {
        match parked.held_behind(event) {
            Some(head) => {
                out.park
                    .push(self.dlq_entry(original, event, Outcome::Held { behind: head }))
            }
            None => {
                out.batch.push(event.clone());
                out.origin.push(origin);
            }
        }
    }

    /// Record the sink's final outcomes: the breaker counts them, rejected events hold
    /// their key, and everything not delivered joins what is parked.
    pub(super) fn conclude(
        &self,
        outgoing: Outgoing,
        outcomes: Vec<Outcome>,
        parked: &mut Parked,
    ) -> Vec<NewDlqEntry> {
        let Outgoing {
            originals,
            batch,
            origin,
            mut park,
        } = outgoing;
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
                    park.push(self.dlq_entry(&originals[i], event, outcome));
                }
            }
        }
        park
    }

    /// `on_key: hold`: later events of this event's key wait behind it.
    fn hold(&self, parked: &mut Parked, event: &Event) {
        if let (true, Some(key)) = (self.holds_keys(), hold_key(event)) {
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
    pub(super) async fn park(&mut self, entries: Vec<NewDlqEntry>) -> Result<(), SinkStop> {
        let c = &self.progress.counters;
        for e in &entries {
            match e.state {
                DlqState::Held => c.held.fetch_add(1, relaxed()),
                _ => c.parked.fetch_add(1, relaxed()),
            };
            if e.state == DlqState::Parked {
                c.parked_by_stage.add(e.stage.clone(), 1);
                tracing::warn!(sink = %self.name(), event = %e.event_id, stage = %e.stage, error = %e.error, "event sent to the DLQ");
            }
        }
        self.store.run(move |s| s.park(&entries)).await?;
        Ok(())
    }

    /// Pick up what an operator changed since the last look: purges (released keys) and
    /// replay requests. A replayed event goes through the current transforms and the sink
    /// again; one that fails again is parked again with its attempts counted.
    pub(super) async fn poll_dlq(&mut self, parked: &mut Parked) -> Result<(), SinkStop> {
        let version = self.store.run(|s| s.dlq_version()).await?;
        if parked.version == Some(version) {
            return Ok(());
        }
        parked.version = Some(version);
        let sink = self.name().to_string();
        if self
            .store
            .run(move |s| s.rewind_request(&sink))
            .await?
            .is_some()
        {
            return Err(SinkStop::Rewind);
        }
        parked.held = self.hold_heads().await?;
        let sink = self.name().to_string();
        let replay = self
            .store
            .run(move |s| s.dlq_in_state(&sink, DlqState::Replay))
            .await?;
        if replay.is_empty() {
            return Ok(());
        }
        tracing::info!(sink = %self.name(), events = replay.len(), "replaying dead-lettered events");
        let mut inputs = Vec::with_capacity(replay.len());
        let mut replayed = Vec::with_capacity(replay.len());
        for entry in &replay {
            match envelope::parse(&entry.original) {
                Ok(e) => {
                    inputs.push(Arc::new(Record::new(Arc::new(e))));
                    replayed.push(entry);
                }
                Err(e) => {
                    tracing::error!(sink = %self.name(), event = %entry.event_id, error = %e, "a parked envelope cannot be read back; it stays parked");
                    let id = entry.id;
                    self.store
                        .run(move |s| s.dlq_set_state(id, DlqState::Parked))
                        .await?;
                }
            }
        }
        // Replays are not held behind themselves.
        let mut replay_parked = Parked {
            ids: HashSet::new(),
            held: HashMap::new(),
            breaker: Breaker::new(self.delivery.dlq.clone()),
            version: None,
        };
        let outgoing = self.outgoing(&inputs, &mut replay_parked);
        let answers = self.send(&outgoing.batch).await.await;
        let outcomes = match outgoing.batch.is_empty() {
            true => Vec::new(),
            false => self.settle(&outgoing.batch, answers).await?,
        };
        let again = self.conclude(outgoing, outcomes, &mut replay_parked);
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
        self.store
            .run(move |s| resolved.iter().try_for_each(|id| s.dlq_resolve(*id)))
            .await?;
        // Keys whose head got through are released; heads that failed again hold on.
        parked.held = self.hold_heads().await?;
        tracing::info!(sink = %self.name(), replayed = replay.len(), failed, "replay done");
        Ok(())
    }
}
