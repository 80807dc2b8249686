//! [`RedisSink`]: the engine's [`Sink`] over one Redis connection.
//!
//! A batch is cut at its barriers (truncates) into segments. Each segment becomes one
//! pipeline, its commands in batch order: Redis runs a connection's commands in the order
//! they arrive, so per-key order holds without lanes, and a batch costs one round trip
//! (plus one per truncate). A segment is sent only after the one before it was wholly
//! delivered; after a failure everything later is deferred. The answers finally pass
//! through [`lanes::settle_bulk`], which defers the events of a key that follow its failed
//! event (the fences make the engine's resend of those harmless).

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_runtime::{lanes, Delivery, Event, Sink};

use crate::cache::{self, Cache};
use crate::client::{Client, Lua};
use crate::config::{RedisConfig, Settings};
use crate::stream::{self, Stream};
use crate::RedisConfigError;

/// Writes events to Redis: each row's latest state (cache mode) or every event's envelope
/// appended to a stream (stream mode).
///
/// - **Ordering**: one pipeline per segment on one connection, commands in batch order, so
///   Redis applies each key's changes in stream order; a truncate waits for everything
///   before it and holds back everything after it.
/// - **Concurrency**: one batch at a time, one pipeline in flight.
/// - **Idempotence**: cache writes carry the event's position and a script applies them
///   only over an older one, so replays, retries and late duplicates change nothing and a
///   deleted row cannot come back while its tombstone lives. Stream entries have the
///   position as id, so Redis refuses a replayed event; it counts as delivered.
/// - **Failures**: a failed round trip (refused, reset, timed out) answers every event it
///   carried [`Delivery::Retry`]; an error reply about one command ([`Delivery::Rejected`]
///   for `WRONGTYPE` or a script error, a retry for a server that is loading, out of memory
///   or read-only) answers that event only.
pub struct RedisSink {
    client: Client,
    writer: Writer,
}

/// The mode's half of the sink.
enum Writer {
    Cache(Cache),
    Stream(Stream),
}

/// One event of a segment: answered already, or waiting for its reply.
enum Slot {
    Done(Delivery),
    Row(cache::Pending),
    Entry(stream::Pending),
}

impl RedisSink {
    /// Validate `config`. Does no I/O: the first batch (or `check`) connects.
    pub fn new(config: RedisConfig) -> Result<Self, RedisConfigError> {
        let writer = match config.settings()? {
            Settings::Cache(settings) => Writer::Cache(Cache::new(settings)),
            Settings::Stream(settings) => Writer::Stream(Stream::new(settings)),
        };
        Ok(RedisSink {
            client: Client::new(&config.url, config.timeout)?,
            writer,
        })
    }

    /// The scripts the mode calls.
    fn scripts(writer: &Writer) -> Vec<&Lua> {
        match writer {
            Writer::Cache(cache) => vec![cache.script()],
            Writer::Stream(_) => Vec::new(),
        }
    }

    /// One segment without barriers, as one pipeline.
    async fn write_segment(&mut self, events: &[Arc<Event>]) -> Vec<Delivery> {
        let mut pipe = redis::pipe();
        let mut slots = Vec::with_capacity(events.len());
        // Keys with an event that cannot be written: the rest of the key waits for it.
        let mut failed: HashSet<u64> = HashSet::new();
        for event in events {
            let key = event.ordering_key();
            if key.is_some_and(|k| failed.contains(&k)) {
                slots.push(Slot::Done(Delivery::Deferred));
                continue;
            }
            let slot = match &mut self.writer {
                Writer::Cache(cache) => cache
                    .prepare(event, &mut pipe)
                    .map(|p| p.map_or(Slot::Done(Delivery::Delivered), Slot::Row)),
                Writer::Stream(stream) => stream.prepare(event, &mut pipe).map(Slot::Entry),
            };
            slots.push(slot.unwrap_or_else(|reason| {
                failed.extend(key);
                Slot::Done(Delivery::rejected(reason))
            }));
        }
        if pipe.is_empty() {
            return slots.into_iter().map(done_or_deferred).collect();
        }
        let scripts = Self::scripts(&self.writer);
        let replies = self.client.run(&pipe, &scripts).await;
        let sent = slots.iter().filter(|s| !matches!(s, Slot::Done(_))).count();
        let replies = match replies {
            Ok(replies) if replies.len() == sent => replies,
            Ok(replies) => {
                let reason = format!(
                    "redis at {} answered {} replies to {sent} commands",
                    self.client.endpoint(),
                    replies.len()
                );
                return retry_sent(slots, &reason);
            }
            Err(reason) => {
                tracing::debug!(%reason, events = sent, "redis round trip failed");
                return retry_sent(slots, &reason);
            }
        };
        let mut replies = replies.iter();
        let mut answers = Vec::with_capacity(slots.len());
        for slot in slots {
            answers.push(match slot {
                Slot::Done(delivery) => delivery,
                Slot::Row(pending) => match (&self.writer, replies.next()) {
                    (Writer::Cache(cache), Some(reply)) => cache.answer(&pending, reply),
                    _ => Delivery::retry("a reply is missing"),
                },
                Slot::Entry(pending) => match (&self.writer, replies.next()) {
                    (Writer::Stream(stream), Some(reply)) => stream.answer(&pending, reply),
                    _ => Delivery::retry("a reply is missing"),
                },
            });
        }
        answers
    }

    /// A barrier segment: a truncate.
    async fn write_barrier(&mut self, event: &Arc<Event>) -> Vec<Delivery> {
        match &mut self.writer {
            Writer::Cache(cache) => vec![cache.truncate(&mut self.client, event).await],
            // A stream is a log: the truncate is appended like any event.
            Writer::Stream(_) => self.write_segment(std::slice::from_ref(event)).await,
        }
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        let mut answers = Vec::with_capacity(batch.len());
        let mut blocked = false;
        for range in segments(batch) {
            let events = &batch[range];
            let got = if blocked {
                vec![Delivery::Deferred; events.len()]
            } else if events.len() == 1 && events[0].ordering_key().is_none() {
                self.write_barrier(&events[0]).await
            } else {
                self.write_segment(events).await
            };
            blocked = got.iter().any(|d| !d.is_delivered());
            answers.extend(got);
        }
        lanes::settle_bulk(batch, answers)
    }

    /// Connects and sends PING within `timeout`; in cache mode also loads the script
    /// (which proves the server runs Lua scripts for this user).
    async fn check(&mut self) -> Result<(), String> {
        let scripts = Self::scripts(&self.writer);
        self.client.check(&scripts).await
    }

    async fn close(&mut self) {
        self.client.close();
    }
}

/// The batch cut at barriers: runs of keyed events, and each barrier alone.
fn segments(batch: &[Arc<Event>]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, event) in batch.iter().enumerate() {
        if event.ordering_key().is_none() {
            if start < i {
                out.push(start..i);
            }
            out.push(i..i + 1);
            start = i + 1;
        }
    }
    if start < batch.len() {
        out.push(start..batch.len());
    }
    out
}

/// Every sent event of a failed round trip retried with `reason`.
fn retry_sent(slots: Vec<Slot>, reason: &str) -> Vec<Delivery> {
    slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Done(delivery) => delivery,
            Slot::Row(_) | Slot::Entry(_) => Delivery::retry(reason),
        })
        .collect()
}

fn done_or_deferred(slot: Slot) -> Delivery {
    match slot {
        Slot::Done(delivery) => delivery,
        Slot::Row(_) | Slot::Entry(_) => Delivery::Deferred,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::{testing, Op};

    #[test]
    fn batches_are_cut_at_truncates() {
        let insert = |i| testing::insert("t", 1, i);
        let truncate = |i| Arc::new(testing::event("t", Op::Truncate, 1, i));
        let batch = vec![insert(0), insert(1), truncate(2), truncate(3), insert(4)];
        assert_eq!(segments(&batch), [0..2, 2..3, 3..4, 4..5]);
        let alone = segments(&[truncate(0)]);
        assert_eq!((alone.len(), alone[0].clone()), (1, 0..1));
        assert!(segments(&[]).is_empty());
    }

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
