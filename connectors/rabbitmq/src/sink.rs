//! [`RabbitMqSink`]: the engine's [`Sink`] over one AMQP connection.
//!
//! A batch is cut at its barriers (truncates) into segments. The messages of a segment are
//! published one after the other on one confirm-mode channel, without waiting in between
//! (confirms are pipelined), and then every confirm is awaited: a channel delivers to each
//! queue in publish order, so per-key order holds without lanes, and a segment costs one
//! round trip to the disk of the broker. A truncate is published alone, after everything
//! before it was confirmed, and before anything after it. After a segment that was not
//! wholly delivered, everything later is deferred. The answers finally pass through
//! [`lanes::settle_bulk`], which defers the events of a key that follow its failed event:
//! they may have reached the queue already, and the engine sends them again after the
//! failed one, so a consumer that applies messages in queue order, or keeps the highest
//! event id per key, ends at each key's last change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use sluice_runtime::{lanes, Delivery, Event, Sink};
use tokio::time::Instant;

use crate::classify::{self, describe};
use crate::client::{Client, Endpoint, Exchange};
use crate::config::{Body, RabbitMqConfig, Routes, MAX_NAME};
use crate::{encode, RabbitMqConfigError};

/// Publishes every event to a RabbitMQ exchange as a persistent message, with publisher
/// confirms.
///
/// - **Ordering**: one channel, messages published in batch order, so every queue gets each
///   key's messages in stream order; a truncate waits for everything before it to be
///   confirmed and holds back everything after it.
/// - **Concurrency**: one batch at a time (`max_in_flight` 1), its messages pipelined.
/// - **Idempotence**: at-least-once. Every message carries the event id as `message_id`
///   (and header `id`), the same on every retry and replay, for consumers to deduplicate;
///   RabbitMQ itself does not.
/// - **Failures**: an ack is [`Delivery::Delivered`]; a nack, a lost connection, a timeout
///   or a broker that blocks publishers is [`Delivery::Retry`] for what was not confirmed;
///   a message returned as unroutable (with `mandatory`), an exchange that does not exist,
///   or an event whose exchange or routing key cannot be formed is [`Delivery::Rejected`].
pub struct RabbitMqSink {
    client: Client,
    routes: Routes,
    mandatory: bool,
    body: Body,
    timeout: Duration,
}

/// An event made ready to publish. Cheap to clone: the body is shared.
#[derive(Clone)]
struct Message {
    id: String,
    exchange: ShortString,
    routing_key: ShortString,
    body: Bytes,
    properties: BasicProperties,
}

/// One event of a segment: its message (none when it was answered without publishing)
/// and its answer so far.
struct Slot {
    message: Option<Message>,
    answer: Delivery,
}

impl RabbitMqSink {
    /// Validate `config`. Does no I/O: the first batch (or `check`) connects.
    pub fn new(config: RabbitMqConfig) -> Result<Self, RabbitMqConfigError> {
        let routes = config.routes()?;
        let endpoint = Endpoint::parse(&config.url)?;
        Ok(RabbitMqSink {
            client: Client::new(endpoint, config.timeout),
            routes,
            mandatory: config.mandatory,
            body: config.value,
            timeout: config.timeout,
        })
    }

    /// The message for `event`, or why it cannot have one.
    fn message(&self, event: &Event) -> Result<Message, String> {
        let exchange = self.routes.exchange.render(event).map_err(|e| {
            format!(
                "cannot name the exchange from `{}`: {e}",
                self.routes.exchange
            )
        })?;
        let exchange = short(exchange, "the exchange name")?;
        let template = self.routes.routing_key(event);
        let routing_key = template
            .render(event)
            .map_err(|e| format!("cannot form the routing key from `{template}`: {e}"))?;
        let routing_key = short(routing_key, "the routing key")?;
        Ok(Message {
            id: event.id(),
            exchange,
            routing_key,
            body: encode::body(event, self.body),
            properties: encode::properties(event),
        })
    }

    /// The segment's messages; an event without one is rejected, and the later events of
    /// its key are deferred unsent.
    fn slots(&self, events: &[Arc<Event>]) -> Vec<Slot> {
        let mut failed: HashSet<u64> = HashSet::new();
        events
            .iter()
            .map(|event| {
                let key = event.ordering_key();
                if key.is_some_and(|k| failed.contains(&k)) {
                    return Slot {
                        message: None,
                        answer: Delivery::Deferred,
                    };
                }
                match self.message(event) {
                    Ok(message) => Slot {
                        message: Some(message),
                        answer: Delivery::retry("not published yet"),
                    },
                    Err(reason) => {
                        failed.extend(key);
                        Slot {
                            message: None,
                            answer: Delivery::rejected(reason),
                        }
                    }
                }
            })
            .collect()
    }

    /// One segment without barriers (or one barrier alone).
    async fn write_segment(&mut self, events: &[Arc<Event>]) -> Vec<Delivery> {
        let mut slots = self.slots(events);
        if self.publish(events, &mut slots).await {
            // The connection had served earlier batches and died before confirming
            // anything of this one (a broker restart we had not noticed yet): once more,
            // on a new connection.
            tracing::debug!(
                endpoint = self.client.endpoint(),
                "rabbitmq connection found dead; publishing the segment again"
            );
            self.publish(events, &mut slots).await;
        }
        slots.into_iter().map(|slot| slot.answer).collect()
    }

    /// Publish every slot's message and answer each from its confirm. Returns whether the
    /// attempt is worth making again at once: a connection that served earlier batches was
    /// lost before anything of this one was confirmed.
    async fn publish(&mut self, events: &[Arc<Event>], slots: &mut [Slot]) -> bool {
        let endpoint = self.client.endpoint().to_string();
        let fresh = match self.client.session().await {
            // A blocked connection reads nothing: publishing would only pile up messages
            // the broker takes once the alarm clears, and answer nothing before.
            Ok((session, _)) if session.is_blocked() => {
                retry_unsent(slots, &classify::blocked(&endpoint));
                return false;
            }
            Ok((_, fresh)) => fresh,
            Err(reason) => {
                retry_unsent(slots, &reason);
                return false;
            }
        };
        if let Err(reason) = self.check_exchanges(events, slots).await {
            retry_unsent(slots, &reason);
            return false;
        }
        let channel = match self.client.session().await {
            Ok((session, _)) => session.channel.clone(),
            Err(reason) => {
                retry_unsent(slots, &reason);
                return false;
            }
        };

        let deadline = Instant::now() + self.timeout;
        let (pending, mut lost) = self
            .publish_each(&channel, slots, deadline, &endpoint)
            .await;
        let (returned, confirmed) = self
            .await_confirms(pending, slots, deadline, &endpoint, &mut lost)
            .await;
        answer_returns(slots, &returned, &endpoint);

        match lost {
            // Kept: it tells when the alarm clears, and the next batch waits for that
            // instead of publishing more.
            Some(_) if self.client.is_blocked() => false,
            Some(reason) => {
                tracing::debug!(%reason, "rabbitmq connection dropped");
                self.client.reset();
                !fresh && !confirmed
            }
            None => false,
        }
    }

    /// Publish the slots' messages in order, without waiting for confirms. Returns each
    /// published slot with its confirm, and why publishing stopped early (every slot from
    /// there on is answered retry).
    ///
    /// A publish is handed to lapin's I/O thread when its future is first polled, so every
    /// future is polled once, in order, before any is awaited: the messages go out in
    /// stream order, and the thread writes them in large chunks instead of one by one.
    async fn publish_each(
        &self,
        channel: &Channel,
        slots: &mut [Slot],
        deadline: Instant,
        endpoint: &str,
    ) -> (Vec<(usize, PublisherConfirm)>, Option<String>) {
        let options = BasicPublishOptions {
            mandatory: self.mandatory,
            immediate: false,
        };
        let failed = |e: lapin::Error| {
            format!(
                "could not publish to rabbitmq at {endpoint}: {}",
                describe(&e)
            )
        };
        let mut lost: Option<String> = None;
        let mut pending = Vec::with_capacity(slots.len());
        let mut writing = Vec::with_capacity(slots.len());
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(message) = slot.message.clone() else {
                continue;
            };
            if let Some(reason) = &lost {
                slot.answer = Delivery::retry(reason.clone());
                continue;
            }
            let channel = channel.clone();
            let mut publishing = Box::pin(async move {
                channel
                    .basic_publish(
                        message.exchange,
                        message.routing_key,
                        options,
                        &message.body,
                        message.properties,
                    )
                    .await
            });
            match futures::poll!(publishing.as_mut()) {
                Poll::Pending => writing.push((i, publishing)),
                Poll::Ready(Ok(confirm)) => pending.push((i, confirm)),
                Poll::Ready(Err(e)) => {
                    let reason = failed(e);
                    slot.answer = Delivery::retry(reason.clone());
                    lost = Some(reason);
                }
            }
        }
        for (i, publishing) in writing {
            match tokio::time::timeout_at(deadline, publishing).await {
                Ok(Ok(confirm)) => pending.push((i, confirm)),
                Ok(Err(e)) => {
                    let reason = failed(e);
                    slots[i].answer = Delivery::retry(reason.clone());
                    lost.get_or_insert(reason);
                }
                Err(_) => {
                    let reason = self.stalled("take the messages", endpoint);
                    slots[i].answer = Delivery::retry(reason.clone());
                    lost.get_or_insert(reason);
                }
            }
        }
        pending.sort_by_key(|(i, _)| *i);
        (pending, lost)
    }

    /// Await the confirms of the published slots, by `deadline`, and answer each. Returns
    /// the messages the broker returned and whether anything was confirmed; a failure that
    /// leaves the connection unusable is recorded in `lost`.
    async fn await_confirms(
        &self,
        pending: Vec<(usize, PublisherConfirm)>,
        slots: &mut [Slot],
        deadline: Instant,
        endpoint: &str,
        lost: &mut Option<String>,
    ) -> (Vec<BasicReturnMessage>, bool) {
        let mut returned = Vec::new();
        let mut confirmed = false;
        for (i, confirm) in pending {
            slots[i].answer = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(back))) => {
                    returned.extend(back);
                    confirmed = true;
                    Delivery::Delivered
                }
                Ok(Ok(Confirmation::Nack(back))) => {
                    returned.extend(back);
                    classify::nacked(endpoint)
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    let reason =
                        format!("rabbitmq at {endpoint} did not put the channel in confirm mode");
                    lost.get_or_insert(reason.clone());
                    Delivery::retry(reason)
                }
                Ok(Err(e)) => {
                    let reason = format!(
                        "rabbitmq at {endpoint} did not confirm the message: {}",
                        describe(&e)
                    );
                    lost.get_or_insert(reason.clone());
                    Delivery::retry(reason)
                }
                Err(_) => {
                    let reason = self.stalled("confirm the messages", endpoint);
                    lost.get_or_insert(reason.clone());
                    Delivery::retry(reason)
                }
            };
        }
        (returned, confirmed)
    }

    /// Why the broker did not `do_what` in time: it blocks publishers, or it is just slow
    /// (or gone without a word).
    fn stalled(&self, do_what: &str, endpoint: &str) -> String {
        if self.client.is_blocked() {
            classify::blocked(endpoint)
        } else {
            classify::timed_out(do_what, endpoint, self.timeout)
        }
    }

    /// Check that every exchange the slots publish to exists. The slots of a missing
    /// exchange are rejected, and the later events of their keys deferred unsent. `Err` is
    /// why the check itself failed.
    async fn check_exchanges(
        &mut self,
        events: &[Arc<Event>],
        slots: &mut [Slot],
    ) -> Result<(), String> {
        let mut missing: HashSet<String> = HashSet::new();
        let mut checked: HashSet<String> = HashSet::new();
        for slot in slots.iter() {
            let Some(message) = &slot.message else {
                continue;
            };
            let exchange = message.exchange.as_str();
            if checked.insert(exchange.to_string()) {
                if let Exchange::Missing = self.client.exchange(exchange).await? {
                    missing.insert(exchange.to_string());
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut failed: HashSet<u64> = HashSet::new();
        for (event, slot) in events.iter().zip(slots.iter_mut()) {
            let key = event.ordering_key();
            let Some(message) = &slot.message else {
                if matches!(slot.answer, Delivery::Rejected { .. }) {
                    failed.extend(key);
                }
                continue;
            };
            if key.is_some_and(|k| failed.contains(&k)) {
                slot.message = None;
                slot.answer = Delivery::Deferred;
            } else if missing.contains(message.exchange.as_str()) {
                slot.answer =
                    classify::no_exchange(message.exchange.as_str(), self.client.endpoint());
                slot.message = None;
                failed.extend(key);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for RabbitMqSink {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        let mut answers = Vec::with_capacity(batch.len());
        let mut blocked = false;
        for range in lanes::barrier_ranges(batch) {
            let events = &batch[range];
            let got = if blocked {
                vec![Delivery::Deferred; events.len()]
            } else {
                self.write_segment(events).await
            };
            blocked = got.iter().any(|d| !d.is_delivered());
            answers.extend(got);
        }
        lanes::settle_bulk(batch, answers)
    }

    /// Connects, opens a channel in confirm mode and, when `exchange` has no placeholders,
    /// checks that the exchange exists (a passive declare), all within `timeout`.
    async fn check(&mut self) -> Result<(), String> {
        let exchange = self.routes.exchange.constant();
        self.client.check(exchange).await
    }

    async fn close(&mut self) {
        self.client.close().await;
    }
}

/// Answer the events of the messages the broker returned as unroutable. A returned message
/// comes before its confirm, but lapin may hand it to another confirm of the same
/// acknowledgement: it is matched to its event by message id.
fn answer_returns(slots: &mut [Slot], returned: &[BasicReturnMessage], endpoint: &str) {
    if returned.is_empty() {
        return;
    }
    let by_id: HashMap<String, usize> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.message.as_ref().map(|m| (m.id.clone(), i)))
        .collect();
    for back in returned {
        let id = back.delivery.properties.message_id().as_ref();
        match id.and_then(|id| by_id.get(id.as_str())) {
            Some(&i) => slots[i].answer = classify::unroutable(back),
            None => tracing::warn!(
                endpoint,
                message_id = ?id,
                "rabbitmq returned a message this batch did not publish"
            ),
        }
    }
}

/// `name` as an AMQP short string, or why it is too long to be one.
fn short(name: String, what: &str) -> Result<ShortString, String> {
    let len = name.len();
    ShortString::try_new(name)
        .map_err(|_| format!("{what} is {len} bytes long; AMQP allows at most {MAX_NAME}"))
}

/// Every slot with a message answered retry with `reason`.
fn retry_unsent(slots: &mut [Slot], reason: &str) {
    for slot in slots.iter_mut().filter(|s| s.message.is_some()) {
        slot.answer = Delivery::retry(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::{testing, Op};

    fn sink(url: &str, config: serde_json::Value) -> RabbitMqSink {
        let mut config = config;
        config["url"] = url.into();
        RabbitMqSink::new(serde_json::from_value(config).unwrap()).unwrap()
    }

    #[test]
    fn events_without_a_routing_key_are_rejected_and_their_key_deferred() {
        let sink = sink(
            "amqp://127.0.0.1:9",
            serde_json::json!({"exchange": "x", "routing_key": "{key}"}),
        );
        let mut keyless = testing::event("t", Op::Insert, 1, 0);
        keyless.after = Some(testing::id_row(1));
        let keyless = Arc::new(keyless);
        let mut later = testing::event("t", Op::Update, 1, 1);
        later.after = Some(testing::id_row(1));
        let other = testing::insert("u", 1, 2);
        let slots = sink.slots(&[keyless, Arc::new(later), other]);
        match &slots[0].answer {
            Delivery::Rejected { reason } => assert!(
                reason.contains("cannot form the routing key from `{key}`"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(slots[0].message.is_none());
        assert_eq!(slots[1].answer, Delivery::Deferred, "same table: same key");
        assert!(slots[1].message.is_none());
        let message = slots[2].message.as_ref().expect("another key goes on");
        assert_eq!(message.routing_key.as_str(), "2");
        assert_eq!(message.exchange.as_str(), "x");
    }

    #[test]
    fn names_longer_than_amqp_allows_are_rejected() {
        let sink = sink(
            "amqp://127.0.0.1:9",
            serde_json::json!({"exchange": "x", "routing_key": format!("{}{{table}}", "k".repeat(250))}),
        );
        let slots = sink.slots(&[testing::insert("orders", 1, 0)]);
        match &slots[0].answer {
            Delivery::Rejected { reason } => {
                assert_eq!(
                    reason,
                    "the routing key is 256 bytes long; AMQP allows at most 255"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_broker_that_is_not_there_is_a_retry_for_every_event() {
        let mut sink = sink(
            "amqp://127.0.0.1:9",
            serde_json::json!({"exchange": "x", "timeout": "2s"}),
        );
        let batch = vec![
            testing::insert("t", 1, 0),
            testing::insert("t", 1, 1),
            Arc::new(testing::event("t", Op::Truncate, 1, 2)),
            testing::insert("t", 1, 3),
        ];
        let answers = sink.write(&batch).await;
        assert_eq!(answers.len(), 4);
        for answer in &answers[..2] {
            match answer {
                Delivery::Retry { reason, .. } => {
                    assert!(reason.contains("127.0.0.1:9"), "{reason}")
                }
                other => panic!("expected a retry, got {other:?}"),
            }
        }
        assert_eq!(answers[2..], [Delivery::Deferred, Delivery::Deferred]);
        let e = sink.check().await.unwrap_err();
        assert!(
            e.contains("cannot connect to rabbitmq at 127.0.0.1:9"),
            "{e}"
        );
        assert!(sink.write(&[]).await.is_empty());
    }
}
