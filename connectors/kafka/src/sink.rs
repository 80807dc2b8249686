//! [`KafkaSink`]: the engine's [`Sink`] over one idempotent producer.
//!
//! [`Sink::send`] enqueues every message of a batch into the producer in batch order and
//! returns at once (it only waits for queue space, and at a truncate); the future it
//! returns resolves when the batch's last delivery report arrived. Up to
//! `in_flight_batches` batches are in flight; the engine takes their answers in order.
//!
//! Per-key order: the producer's partitioner sends one key to one partition, and the
//! idempotent producer writes a partition's messages in the order they were enqueued,
//! retrying internally without reordering or duplicating. What it cannot hide is a message
//! that fails for good (its `timeout` passed) while a later one of its partition got
//! through; the answers then follow the bulk rule ([`sluice_runtime::lanes::settle_bulk`]) inside a batch
//! and the ledger's across batches, so the later message is sent again after the failed
//! one and the last copy of each key in the topic is in stream order.
//!
//! A truncate is a barrier: before it is enqueued, every message enqueued earlier (this
//! batch's and earlier batches') must be acknowledged; after it, nothing is enqueued until
//! it is. If anything before it failed, it and the rest of the batch are not sent
//! (answered deferred).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use rdkafka::types::RDKafkaErrorCode as Code;
use sluice_runtime::sink::Pending;
use sluice_runtime::{Delivery, Event, Position, Sink};
use tokio::time::Instant;

use crate::client::{humantime, Client};
use crate::config::{KafkaConfig, Settings};
use crate::encode::Encoder;
use crate::ledger::{Ledger, Ticket};
use crate::producer::Refused;
use crate::reports::Reports;
use crate::retry::{classify, Failed};
use crate::KafkaConfigError;

/// Writes events to Kafka topics through an idempotent producer (`acks=all`).
///
/// - **Ordering**: messages are enqueued in stream order; one key (a row's key columns, an
///   event's aggregate id) always goes to one partition, which keeps that order; keyless
///   messages go to partition 0. A truncate waits for everything before it and holds back
///   everything after it.
/// - **Concurrency**: up to `in_flight_batches` batches wait for their delivery reports at
///   once; the engine takes their answers in order, so offsets only advance over
///   acknowledged messages, in order.
/// - **Idempotence**: the idempotent producer never duplicates a message it retries
///   internally. A message the engine sends again (after a timeout, a crash, a restart) is
///   a new copy with the same `id` header and envelope: consumers deduplicate by `id`.
/// - **Failures**: see the crate's `retry` module: brokers down, timeouts and missing
///   topics are [`Delivery::Retry`]; a message too large, an illegal topic or a denied
///   write are [`Delivery::Rejected`] with the broker's reason; events the templates
///   cannot render are rejected before anything is sent.
pub struct KafkaSink {
    writer: Arc<Writer>,
    client: Client,
    ledger: Arc<Ledger>,
    /// The reports of batches handed over whose answers may not be taken yet, oldest
    /// first, for truncates to see what failed before them.
    in_flight: VecDeque<Weak<Reports>>,
}

/// How events become messages, and failures answers; shared with pending answers.
struct Writer {
    settings: Arc<Settings>,
    encoder: Encoder,
    /// `timeout` as written for people, for reasons.
    timeout_text: String,
}

/// What the enqueuing decided for one event.
enum Planned {
    /// Answered without a delivery report (skipped, refused, deferred).
    Now(Delivery),
    /// Enqueued: its delivery report answers it. `size` is its key and value in bytes.
    Sent { size: usize },
}

impl KafkaSink {
    /// Validate `config`. Does no I/O: the first batch (or `check`) creates the producer,
    /// which connects in the background.
    pub fn new(config: KafkaConfig) -> Result<Self, KafkaConfigError> {
        let settings = Arc::new(config.settings()?);
        Ok(KafkaSink {
            writer: Arc::new(Writer {
                encoder: Encoder::new(settings.topic.clone(), settings.value),
                timeout_text: humantime(settings.timeout),
                settings: settings.clone(),
            }),
            client: Client::new(settings),
            ledger: Arc::default(),
            in_flight: VecDeque::new(),
        })
    }

    /// Enqueue `batch` in order, deciding what can be answered at once.
    async fn enqueue(&mut self, batch: &[Arc<Event>], reports: &Arc<Reports>) -> Vec<Planned> {
        let producer = match self.client.producer() {
            Ok(producer) => producer,
            Err(reason) => {
                return batch
                    .iter()
                    .map(|_| Planned::Now(Delivery::retry(reason.clone())))
                    .collect()
            }
        };
        // Queue space is waited for at most `timeout` per batch, like a delivery.
        let deadline = Instant::now() + self.writer.settings.timeout;
        let mut planned = Vec::with_capacity(batch.len());
        // Keys with an event that was not sent: the rest of the key waits for it.
        let mut failed: HashSet<u64> = HashSet::new();
        let mut blocked = false;
        for (index, event) in batch.iter().enumerate() {
            let key = event.ordering_key();
            if blocked || key.is_some_and(|k| failed.contains(&k)) {
                planned.push(Planned::Now(Delivery::Deferred));
                continue;
            }
            if key.is_none() {
                // A barrier: everything enqueued before it is acknowledged first.
                self.client.drained().await;
                if !failed.is_empty() || reports.any_failed() || self.failed_before(event.position)
                {
                    blocked = true;
                    planned.push(Planned::Now(Delivery::Deferred));
                    continue;
                }
            }
            let plan = match self.writer.encoder.encode(event) {
                Err(reason) => Planned::Now(Delivery::rejected(reason)),
                Ok(None) => Planned::Now(Delivery::Delivered),
                Ok(Some(message)) => {
                    let size = message.size();
                    match producer.enqueue(message, reports, index, deadline).await {
                        Ok(()) => Planned::Sent { size },
                        Err(refused) => {
                            let code = match refused {
                                Refused::Code(code) => code,
                                Refused::Full => Code::QueueFull,
                            };
                            Planned::Now(self.writer.classify(event, code, size))
                        }
                    }
                }
            };
            let sent = match &plan {
                Planned::Sent { .. } => true,
                Planned::Now(answer) => answer.is_delivered(),
            };
            match key {
                Some(k) if !sent => {
                    failed.insert(k);
                }
                None if !sent => blocked = true,
                None => {
                    // ...and nothing after it is enqueued before it is acknowledged.
                    if matches!(plan, Planned::Sent { .. }) {
                        self.client.drained().await;
                        blocked = reports.result(index) != Some(Ok(()));
                    }
                }
                Some(_) => {}
            }
            planned.push(plan);
        }
        planned
    }

    /// Whether a message of a batch still in flight, from before `position` in the
    /// stream, failed. (A resend of failed events comes after later batches were handed
    /// over: those do not stand before its truncates.)
    fn failed_before(&self, position: Position) -> bool {
        self.in_flight
            .iter()
            .filter_map(Weak::upgrade)
            .any(|r| r.first() < Some(position) && r.any_failed())
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        self.send(batch).await.await
    }

    fn max_in_flight(&self) -> usize {
        self.writer.settings.in_flight_batches
    }

    /// Enqueue every message of `batch`, in order, waiting only for queue space (and for
    /// acknowledgements around a truncate); the returned future resolves once every
    /// delivery report of the batch arrived.
    async fn send(&mut self, batch: &[Arc<Event>]) -> Pending {
        let ticket: Ticket = self.ledger.begin();
        let first = batch.first().map(|e| e.position);
        let reports = Reports::new(batch.len(), first);
        self.in_flight.retain(|r| r.strong_count() > 0);
        self.in_flight.push_back(Arc::downgrade(&reports));
        let planned = self.enqueue(batch, &reports).await;
        reports.seal();
        let batch: Vec<Arc<Event>> = batch.to_vec();
        let ledger = self.ledger.clone();
        let writer = self.writer.clone();
        Box::pin(async move {
            reports.wait().await;
            let raw = planned
                .into_iter()
                .enumerate()
                .map(|(index, plan)| match plan {
                    Planned::Now(answer) => answer,
                    Planned::Sent { size } => writer.answer(&batch[index], &reports, index, size),
                })
                .collect();
            ledger.complete(ticket, &batch, raw)
        })
    }

    /// Fetches the cluster's metadata within `timeout` (and, when `topic` names one fixed
    /// topic, that topic's); says what failed.
    async fn check(&mut self) -> Result<(), String> {
        let topic = self
            .writer
            .settings
            .topic
            .as_ref()
            .and_then(|t| t.constant())
            .map(str::to_string);
        self.client.check(topic).await
    }

    /// Waits up to `timeout` for every enqueued message to be acknowledged, then closes the
    /// producer.
    async fn close(&mut self) {
        self.client.close().await;
    }
}

impl Writer {
    /// The answer for `event`, enqueued as message `index` of the batch `reports` holds.
    fn answer(&self, event: &Event, reports: &Reports, index: usize, size: usize) -> Delivery {
        match reports.result(index) {
            Some(Ok(())) => Delivery::Delivered,
            Some(Err(code)) => match self.classify(event, code, size) {
                Delivery::Retry { reason, after } => Delivery::Retry {
                    reason: match reports.client_error() {
                        Some(e) => format!("{reason} (last client error: {e})"),
                        None => reason,
                    },
                    after,
                },
                answer => answer,
            },
            None => Delivery::retry(format!(
                "the producer for the brokers at {} dropped the message without a delivery \
                 report",
                self.settings.brokers
            )),
        }
    }

    /// The answer for `event`, whose message got `code`.
    fn classify(&self, event: &Event, code: Code, size: usize) -> Delivery {
        let template = self.encoder.template(event);
        let topic = template
            .render(event)
            .unwrap_or_else(|_| template.to_string());
        classify(
            code,
            &Failed {
                topic: &topic,
                size,
                brokers: &self.settings.brokers,
                timeout: &self.timeout_text,
            },
        )
    }
}
