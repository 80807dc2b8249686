//! [`RedisSink`]: the engine's [`Sink`] over one Redis connection, with several batches in
//! flight.
//!
//! [`Sink::send`] encodes a batch on the engine's task (cut at its truncates into
//! segments, each segment into script calls, see [`crate::batch`]) and hands it to the
//! sink's chain ([`crate::order`]): a task per batch that runs after the batch before it
//! finished, so Redis applies batches in stream order on one connection while the engine
//! encodes the next ones. A segment's calls go in one pipeline, one round trip; a segment
//! is sent only after the one before it was wholly delivered, and after a failure
//! everything later is deferred. The answers finally pass through
//! [`lanes::settle_bulk`], which defers the events of a key that follow its failed event.

use std::sync::Arc;

use async_trait::async_trait;
use redis::Value;
use sluice_runtime::sink::Pending;
use sluice_runtime::template::table_name;
use sluice_runtime::{lanes, Delivery, Event, Sink};

use crate::batch::{run_rounds, Call, Step, Work};
use crate::cache::{Cache, Notes};
use crate::client::{Client, Lua};
use crate::config::{OnTruncate, RedisConfig, Settings};
use crate::order::{place, Chain, Gate, Ticket, BEHIND_A_RETRY};
use crate::stream::Stream;
use crate::{truncate, RedisConfigError};

/// How many batches the sink has in flight: one runs on the server while the engine
/// reads and encodes the next ones. Measured on a 2-core machine (README,
/// `benches/throughput.rs`): with the sink alone, 1 to 4 are within noise of each other,
/// since the server's script time is the limit there; in a pipeline the engine's own work
/// for the next batches overlaps the round trip, and 3 also covers a batch waiting on a
/// slow reply.
pub const MAX_IN_FLIGHT: usize = 3;

/// Writes events to Redis: each row's latest state (cache mode) or every event's envelope
/// appended to a stream (stream mode).
///
/// - **Ordering**: batches run in the order they are handed over, one at a time, on one
///   connection; within a batch, script calls apply each key's changes (each stream's
///   entries) in stream order. A truncate waits for everything before it and holds back
///   everything after it.
/// - **Concurrency**: up to [`MAX_IN_FLIGHT`] batches are handed over before the first is
///   answered; they are encoded at once and sent one after the other. After a batch that
///   was not wholly delivered, the batches handed over behind it before the engine had its
///   answers are answered [`Delivery::Retry`] without being sent, until the engine's
///   resend of the failed events went through: nothing overtakes a failed event.
/// - **Idempotence**: cache writes carry the event's position and a script applies them
///   only over an older one, so replays, retries and late duplicates change nothing and a
///   deleted row cannot come back while its tombstone lives. Stream entries have the
///   position as id, so Redis refuses a replayed event; it counts as delivered.
/// - **Failures**: a failed round trip (refused, reset, timed out) answers every event it
///   carried [`Delivery::Retry`]; an error about one row or entry ([`Delivery::Rejected`]
///   for `WRONGTYPE` or a script error, a retry for a server that is loading, out of memory
///   or read-only) answers that event only, and the events of its key (its stream) after
///   it are deferred, not attempted.
pub struct RedisSink {
    shared: Arc<Shared>,
    /// What was logged once already (encoding runs on the engine's task).
    notes: Notes,
    chain: Chain,
}

/// What the batches in flight share.
struct Shared {
    writer: Writer,
    conn: tokio::sync::Mutex<Conn>,
}

/// The connection, and the gate that keeps batches behind a failed one.
struct Conn {
    client: Client,
    gate: Gate,
}

/// The mode's half of the sink.
enum Writer {
    Cache(Arc<Cache>),
    Stream(Stream),
}

impl RedisSink {
    /// Validate `config`. Does no I/O: the first batch (or `check`) connects.
    pub fn new(config: RedisConfig) -> Result<Self, RedisConfigError> {
        let writer = match config.settings()? {
            Settings::Cache(settings) => Writer::Cache(Arc::new(Cache::new(settings))),
            Settings::Stream(settings) => Writer::Stream(Stream::new(settings)),
        };
        let conn = Conn {
            client: Client::new(&config.url, config.timeout)?,
            gate: Gate::default(),
        };
        Ok(RedisSink {
            shared: Arc::new(Shared {
                writer,
                conn: tokio::sync::Mutex::new(conn),
            }),
            notes: Notes::default(),
            chain: Chain::default(),
        })
    }

    /// `batch` as steps, with the answers known before anything is sent.
    fn encode(&mut self, batch: &[Arc<Event>]) -> Work {
        let mut answers = vec![None; batch.len()];
        let mut steps = Vec::new();
        for range in lanes::barrier_ranges(batch) {
            let barrier = range.len() == 1 && batch[range.start].ordering_key().is_none();
            match &self.shared.writer {
                Writer::Cache(cache) if barrier => {
                    let index = range.start;
                    match cache.settings.on_truncate {
                        OnTruncate::Ignore => {
                            let table = table_name(&batch[index]);
                            if !self.notes.truncates.contains(&table) {
                                tracing::info!(
                                    %table,
                                    "redis cache: truncate ignored, the table's keys stay \
                                     (on_truncate: delete removes them)"
                                );
                                self.notes.truncates.insert(table);
                            }
                            answers[index] = Some(Delivery::Delivered);
                        }
                        OnTruncate::Delete => steps.push(Step::DeleteTable {
                            index,
                            cache: cache.clone(),
                        }),
                    }
                }
                Writer::Cache(cache) => {
                    let calls = cache.encode(batch, range.clone(), &mut answers, &mut self.notes);
                    steps.push(Step::Calls {
                        range,
                        rounds: vec![calls],
                    });
                }
                // A stream is a log: a truncate is appended like any event.
                Writer::Stream(stream) => {
                    let rounds = stream.encode(batch, range.clone(), &mut answers);
                    steps.push(Step::Calls { range, rounds });
                }
            }
        }
        Work {
            events: batch.to_vec(),
            answers,
            steps,
        }
    }
}

impl Writer {
    /// The script the mode calls.
    fn script(&self) -> &Lua {
        match self {
            Writer::Cache(cache) => &cache.script,
            Writer::Stream(stream) => &stream.script,
        }
    }

    fn answer(
        &self,
        events: &[Arc<Event>],
        call: &Call,
        reply: &Value,
        answers: &mut [Option<Delivery>],
    ) {
        match self {
            Writer::Cache(cache) => cache.answer(events, call, reply, answers),
            Writer::Stream(stream) => stream.answer(events, call, reply, answers),
        }
    }
}

impl Shared {
    /// Run a batch's steps on the connection, unless the gate holds it behind a failed
    /// batch; one answer per event.
    async fn execute(&self, ticket: Ticket, work: Work) -> Vec<Delivery> {
        let Work {
            events,
            mut answers,
            steps,
        } = work;
        let Some(first) = events.iter().map(|e| place(e)).min() else {
            return Vec::new();
        };
        let mut conn = self.conn.lock().await;
        let Conn { client, gate } = &mut *conn;
        if !gate.admits(first, ticket) {
            return vec![Delivery::retry(BEHIND_A_RETRY); events.len()];
        }
        gate.begin(first, ticket);
        let script = self.writer.script();
        let mut blocked = false;
        for step in steps {
            let range = step.range();
            if blocked {
                answers[range].fill(Some(Delivery::Deferred));
                continue;
            }
            match step {
                Step::Calls { rounds, .. } => {
                    run_rounds(
                        client,
                        &[script],
                        rounds,
                        &mut answers,
                        |call, reply, answers| self.writer.answer(&events, call, reply, answers),
                    )
                    .await
                }
                Step::DeleteTable { index, cache } => {
                    answers[index] =
                        Some(truncate::delete_table(&cache, client, &events[index]).await)
                }
            }
            blocked = answers[range]
                .iter()
                .any(|a| !a.as_ref().is_some_and(Delivery::is_delivered));
        }
        let answers = answers
            .into_iter()
            .map(|a| a.unwrap_or(Delivery::Deferred))
            .collect();
        let answers = lanes::settle_bulk(&events, answers);
        gate.finish(ticket, events.iter().map(|e| &**e), &answers);
        answers
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        self.send(batch).await.await
    }

    fn max_in_flight(&self) -> usize {
        MAX_IN_FLIGHT
    }

    /// Encodes the batch now and runs it after the batches handed over before it.
    async fn send(&mut self, batch: &[Arc<Event>]) -> Pending {
        if batch.is_empty() {
            return Box::pin(std::future::ready(Vec::new()));
        }
        let work = self.encode(batch);
        let shared = self.shared.clone();
        self.chain.hand_over(batch.len(), move |ticket| async move {
            shared.execute(ticket, work).await
        })
    }

    /// Connects and sends PING within `timeout`, and loads the mode's script (which proves
    /// the server runs Lua scripts for this user).
    async fn check(&mut self) -> Result<(), String> {
        let mut conn = self.shared.conn.lock().await;
        conn.client.check(&[self.shared.writer.script()]).await
    }

    /// Drops the connection, once the batch running (if any) is done.
    async fn close(&mut self) {
        self.shared.conn.lock().await.client.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::testing;

    #[tokio::test]
    async fn a_server_that_is_not_there_is_a_retry_for_every_event() {
        // Nothing listens on port 9 (discard).
        let mut config = RedisConfig::new("redis://127.0.0.1:9");
        config.timeout = std::time::Duration::from_secs(2);
        let mut sink = RedisSink::new(config).unwrap();
        let batch = vec![testing::insert("t", 1, 0), testing::insert("t", 1, 1)];
        for answer in sink.write(&batch).await {
            match answer {
                Delivery::Retry { reason, .. } => {
                    assert!(reason.contains("127.0.0.1:9"), "{reason}")
                }
                other => panic!("expected a retry, got {other:?}"),
            }
        }
        let e = sink.check().await.unwrap_err();
        assert!(e.contains("cannot connect to redis at 127.0.0.1:9"), "{e}");
        assert!(sink.write(&[]).await.is_empty());
    }
}
