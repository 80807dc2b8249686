//! The sink driver: one task per sink that reads the journal at the sink's own cursor,
//! batches, delivers with retries, and records the sink's offset.
//!
//! Everything a connector must not decide lives here, one concept per file:
//! - this file: the read loop, batches in flight, and the offset, which advances only in
//!   journal order, once every event before it was delivered or parked;
//! - [`stage`]: the transform chains (the pipeline's, cached on the journal record for
//!   every sink, then the sink's own) and what each source event became;
//! - [`retry`]: a batch until each event is delivered or rejected: exponential backoff with
//!   jitter (Retry-After honoured as a minimum), deferred events resent at once, giving up
//!   after `retry.max_elapsed` (the sink stops; nothing is dropped);
//! - [`dlq`]: parking permanent failures before the offset passes them, `on_key: hold`,
//!   skipping what was parked before a restart, replays;
//! - [`breaker`]: stopping a sink that rejects too much.
//!
//! A sink whose destination acknowledges asynchronously ([`Sink::max_in_flight`] > 1, e.g.
//! Kafka's delivery reports) has several batches in flight; their answers are taken in
//! journal order, so offsets still advance only in order.

mod breaker;
mod dlq;
mod retry;
mod stage;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::chain::{Chain, ChainFailure, SharedChain};
use crate::config::{DeliveryConfig, OnKey};
use crate::event::Event;
use crate::journal::{Entry, Journal, ReaderId, Record};
use crate::progress::{Offset, SinkProgress};
use crate::shutdown::Shutdown;
use crate::sink::{Pending, Sink};
use crate::state::{NewDlqEntry, StateError, Store};

pub use breaker::Breaker;
pub use dlq::hold_key;

use dlq::Parked;
use stage::Staged;

/// How often a running driver looks for replay requests and purges.
const DLQ_POLL: Duration = Duration::from_secs(1);

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
    /// The shutdown timeout passed while the sink still had work; its offset stays where
    /// it was (the rest is delivered again after a restart).
    #[error("interrupted by the shutdown timeout; undelivered events stay uncommitted")]
    Interrupted,
    /// An operator asked for the sink to be delivered again from an earlier point
    /// (`sluice rewind`): the supervisor moves it there and runs it again.
    #[error("rewound by an operator")]
    Rewind,
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
    /// Batching, retries and the DLQ policy: the pipeline's `delivery:` with the sink's own
    /// laid over it.
    pub delivery: DeliveryConfig,
    pub progress: Arc<SinkProgress>,
    /// Retries are abandoned once it aborts.
    pub shutdown: Shutdown,
    /// Where parked events go.
    pub store: Store,
    /// Hash of the sink's configuration, recorded with each parked event.
    pub config_hash: String,
    /// The pipeline-level transforms, shared by every sink (run once per event).
    pub pipeline_chain: SharedChain,
    /// This sink's own transforms, run after the pipeline's.
    pub chain: Chain,
    /// The tables whose changes reach this sink (`tables:`).
    pub tables: TableFilter,
}

/// A sink's `tables:`: which tables' changes it is sent. Events (`op: event`) always pass.
#[derive(Clone, Debug, Default)]
pub struct TableFilter(Option<std::collections::HashSet<(String, String)>>);

impl TableFilter {
    /// Only these tables; an empty list lets every table through.
    pub fn new(tables: &[crate::config::TableName]) -> Self {
        TableFilter((!tables.is_empty()).then(|| {
            tables
                .iter()
                .map(|t| (t.schema.clone(), t.name.clone()))
                .collect()
        }))
    }

    /// Whether `event` is for this sink.
    pub fn passes(&self, event: &Event) -> bool {
        let Some(tables) = &self.0 else { return true };
        if event.op == crate::event::Op::Event {
            return true;
        }
        match (&event.source.schema, &event.source.table) {
            (Some(schema), Some(table)) => {
                tables.contains(&(schema.to_string(), table.to_string()))
            }
            _ => true,
        }
    }
}

/// What the sink is sent of some source events, and what is parked whatever it answers.
struct Outgoing {
    /// The source events, as the source produced them.
    originals: Vec<Arc<Event>>,
    /// The events sent, and for each the index of its source event in `originals`.
    batch: Vec<Arc<Event>>,
    origin: Vec<usize>,
    /// Transform failures and held events: parked without asking the sink.
    park: Vec<NewDlqEntry>,
}

/// A batch handed to the sink whose answers may not be in yet.
struct InFlight {
    /// The journal sequence number after the batch's last entry, and the offset that the
    /// batch completes.
    done_seq: u64,
    offset: Offset,
    outgoing: Outgoing,
    answers: Pending,
}

impl SinkDriver {
    /// Run until the journal is closed and drained, or the sink stops. A driver that
    /// stopped may run again (after its sink was resumed) with a new `reader`.
    pub async fn run(&mut self) -> Result<(), SinkStop> {
        self.run_inner().await
    }

    /// Release the sink's connections, after the last run.
    pub async fn close(&mut self) {
        self.sink.close().await;
    }

    fn name(&self) -> &str {
        &self.progress.name
    }

    fn holds_keys(&self) -> bool {
        self.delivery.dlq.on_key == OnKey::Hold
    }

    async fn run_inner(&mut self) -> Result<(), SinkStop> {
        let committed = self.progress.committed();
        let mut parked = self.load_parked(committed.position).await?;
        tracing::debug!(sink = %self.name(), committed = %committed.position, "sink driver started");
        let mut offset = committed;
        let max = self.delivery.batch.max_events.max(1);
        let max_wait = self.delivery.batch.max_wait;
        // `on_key: hold` decides what to hold from the answers of the batch before.
        let depth = match self.holds_keys() {
            true => 1,
            false => self.sink.max_in_flight().max(1),
        };
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut journal_open = true;
        let mut next_poll = Instant::now() + DLQ_POLL;
        let shutdown = self.shutdown.clone();
        loop {
            // Past the shutdown timeout nothing more is sent: what is undelivered stays
            // uncommitted and is delivered again after a restart.
            if shutdown.is_aborting() {
                return Err(SinkStop::Interrupted);
            }
            let poll_due = Instant::now() >= next_poll;
            if poll_due && in_flight.is_empty() {
                self.poll_dlq(&mut parked).await?;
                next_poll = Instant::now() + DLQ_POLL;
                continue;
            }
            if !journal_open && in_flight.is_empty() {
                return Ok(());
            }
            // Answers first, in order; then more input while there is room and no replay
            // is due (replays go out between batches).
            tokio::select! {
                biased;
                answers = async { (&mut in_flight.front_mut().expect("guarded").answers).await },
                    if !in_flight.is_empty() =>
                {
                    let done = in_flight.pop_front().expect("guarded");
                    self.complete(done, answers, &mut parked).await?;
                    let next = in_flight.front().map_or(0, |f| first_ts(&f.outgoing));
                    self.progress.oldest_in_flight_ts.store(next, relaxed());
                }
                _ = self.shutdown.aborting(), if !in_flight.is_empty() => {
                    return Err(SinkStop::Interrupted);
                }
                read = self.journal.read(self.reader, max, max_wait),
                    if journal_open && !poll_due && in_flight.len() < depth =>
                {
                    let Some((seq, entries)) = read else {
                        journal_open = false;
                        continue;
                    };
                    let inputs = self.select(&entries, &mut offset, &parked);
                    let outgoing = self.outgoing(&inputs, &mut parked);
                    let answers = tokio::select! {
                        answers = self.send(&outgoing.batch) => answers,
                        _ = shutdown.aborting() => return Err(SinkStop::Interrupted),
                    };
                    if in_flight.is_empty() {
                        self.progress.oldest_in_flight_ts.store(first_ts(&outgoing), relaxed());
                    }
                    in_flight.push_back(InFlight {
                        done_seq: seq + entries.len() as u64,
                        offset,
                        outgoing,
                        answers,
                    });
                }
                _ = tokio::time::sleep_until(next_poll), if !poll_due => {}
            }
        }
    }

    /// The journal entries this sink must deliver: events after the last one it read (so
    /// nothing committed before a restart, and nothing read before a source rewind, is sent
    /// again) that are not parked already. Moves `offset` past every entry read.
    fn select(&self, entries: &[Entry], offset: &mut Offset, parked: &Parked) -> Vec<Arc<Record>> {
        let counters = &self.progress.counters;
        let mut inputs = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry {
                Entry::Commit { end_lsn, .. } => offset.flush_lsn = offset.flush_lsn.max(*end_lsn),
                Entry::Event(record) if record.event.position <= offset.position => {
                    counters.skipped.fetch_add(1, relaxed());
                }
                Entry::Event(record) => {
                    let event = &record.event;
                    offset.position = event.position;
                    offset.commit_ts_micros = event.source.ts_micros;
                    if !self.tables.passes(event) || !event.is_for(&self.progress.name) {
                        counters.filtered.fetch_add(1, relaxed());
                    } else if parked.was_parked(event) {
                        counters.skipped.fetch_add(1, relaxed());
                    } else {
                        inputs.push(record.clone());
                    }
                }
            }
        }
        inputs
    }

    /// Stage source events and decide what the sink is sent (the rest is parked). Without
    /// transforms each source event goes as it is: nothing is allocated per event.
    fn outgoing(&mut self, inputs: &[Arc<Record>], parked: &mut Parked) -> Outgoing {
        if self.chain.is_empty() && self.pipeline_chain.lock().unwrap().is_empty() {
            return self.route_plain(inputs, parked);
        }
        let staged = match inputs.is_empty() {
            true => Vec::new(),
            false => self.stage(inputs),
        };
        self.route(staged, parked)
    }

    /// Hand a batch to the sink; its answers come through the returned future.
    async fn send(&mut self, batch: &[Arc<Event>]) -> Pending {
        if batch.is_empty() {
            return Box::pin(std::future::ready(Vec::new()));
        }
        self.progress.counters.batches.fetch_add(1, relaxed());
        self.sink.send(batch).await
    }

    /// The sink answered a batch: retry what needs it, park what failed for good, then
    /// move the offset past the batch.
    async fn complete(
        &mut self,
        done: InFlight,
        answers: Vec<crate::sink::Delivery>,
        parked: &mut Parked,
    ) -> Result<(), SinkStop> {
        let outcomes = match done.outgoing.batch.is_empty() {
            true => Vec::new(),
            false => self.settle(&done.outgoing.batch, answers).await?,
        };
        self.record_delivered(&done.outgoing.batch, &outcomes);
        let park = self.conclude(done.outgoing, outcomes, parked);
        if !park.is_empty() {
            self.park(park).await?;
        }
        if parked.breaker.tripped() {
            // Every event of the batch is delivered or durably parked: the offset passes
            // them (purged ones never come back); nothing after it is sent.
            self.progress.advance(done.done_seq, done.offset);
            return Err(SinkStop::Breaker(parked.breaker.describe()));
        }
        tracing::trace!(sink = %self.name(), offset = %done.offset.position, flush = %done.offset.flush_lsn, "batch finished");
        self.progress.advance(done.done_seq, done.offset);
        Ok(())
    }
}

impl SinkDriver {
    /// Telemetry of what got through: events per op, and commit → delivery latency.
    fn record_delivered(&self, batch: &[Arc<Event>], outcomes: &[Outcome]) {
        let counters = &self.progress.counters;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        for (event, outcome) in batch.iter().zip(outcomes) {
            if matches!(outcome, Outcome::Delivered) {
                counters.delivered_by_op[crate::telemetry::op_index(event.op)]
                    .fetch_add(1, relaxed());
                counters
                    .latency
                    .observe((now - event.source.ts_micros) as f64 / 1e6);
            }
        }
    }
}

/// Commit time of the first event of a batch (0 for a batch without events).
fn first_ts(outgoing: &Outgoing) -> i64 {
    outgoing.originals.first().map_or(0, |e| e.source.ts_micros)
}

fn relaxed() -> std::sync::atomic::Ordering {
    std::sync::atomic::Ordering::Relaxed
}
