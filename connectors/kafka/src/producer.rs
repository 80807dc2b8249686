//! [`Producer`]: one librdkafka producer, with a context that routes each delivery report
//! to the batch its message belongs to, and a thread of its own that serves librdkafka's
//! events.
//!
//! Every enqueued message carries a [`Slot`] (its batch and its index in the batch) as
//! librdkafka's opaque. The delivery report writes the result into the batch's
//! [`Reports`]; dropping the slot (after the report, or when librdkafka gives it back)
//! counts the message as answered, so a batch completes exactly when its last message was
//! answered, and the producer knows how many messages it still holds (for barriers and
//! for waiting on queue space).
//!
//! After a connection to a broker failed, the producer's thread asks the cluster for
//! metadata; while no broker answers, it purges queued messages (probing again every half
//! second), so a batch sent while the brokers are unreachable is answered with retries at
//! once instead of at its `timeout`.
//!
//! The producer also says when it should be replaced ([`Producer::broken`],
//! [`Producer::stale`]); the [`crate::client`] acts on it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode as Code;
use rdkafka::ClientContext;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Settings;
use crate::encode::Message;
use crate::properties::Masker;
use crate::reports::Reports;
use crate::retry::{needs_new_producer, suspect_producer};

/// How long a wait for queue space sleeps at most before it tries again.
const ROOM_POLL: Duration = Duration::from_millis(50);

/// How long the producer's thread waits for one librdkafka event.
const EVENT_POLL: Duration = Duration::from_millis(100);

/// After a connection failed: how long a metadata probe waits for any broker to answer
/// (a round trip on a working cluster takes milliseconds; a probe that takes longer only
/// costs one early retry of what was queued), and how long until the next probe while
/// none answers.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// What a producer and its context share.
#[derive(Default)]
struct Shared {
    /// Messages enqueued and not answered yet.
    outstanding: AtomicUsize,
    /// Pinged at every answer.
    answered: Notify,
    /// A delivery report said the producer cannot keep its guarantees any more.
    broken: AtomicBool,
    /// Messages failed because the brokers went away or their topic was missing: replace
    /// the producer once it holds nothing.
    suspect: AtomicBool,
    /// A connection to a broker failed: probe whether any broker answers.
    trouble: AtomicBool,
    /// librdkafka's last global error since the last delivery (masked), to explain
    /// failures; `has_error` says whether there is one without taking the lock.
    last_error: Mutex<Option<String>>,
    has_error: AtomicBool,
}

impl Shared {
    fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// One message's place: librdkafka's opaque for it.
pub(crate) struct Slot {
    reports: Arc<Reports>,
    index: usize,
    shared: Arc<Shared>,
}

impl Slot {
    fn report(&self, result: Result<(), Code>) {
        self.reports.set(self.index, result);
    }
}

impl Drop for Slot {
    /// Whatever became of the message, it is answered now: a message librdkafka drops
    /// without a report has no result, and is answered as a retry.
    fn drop(&mut self) {
        self.reports.answered_one();
        self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.shared.answered.notify_one();
    }
}

/// librdkafka's callbacks: delivery reports, global errors, logs.
struct Context {
    shared: Arc<Shared>,
    masker: Masker,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let message = self.masker.mask(message);
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            // librdkafka's errors are about connections (refused, reset, timed out): the
            // engine retries, so they are warnings here.
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let reason = self.masker.mask(reason);
        let code = error.rdkafka_error_code();
        if let Ok(mut last) = self.shared.last_error.lock() {
            *last = Some(reason.clone());
            self.shared.has_error.store(true, Ordering::Release);
        }
        match code {
            Some(Code::Fatal) => {
                self.shared.broken.store(true, Ordering::Release);
                tracing::error!(%reason, "the Kafka producer failed fatally; it is replaced at the next batch");
            }
            // Brokers going away and coming back: the delivery answers say it once per
            // batch, with the engine's retries.
            Some(
                Code::AllBrokersDown
                | Code::BrokerTransportFailure
                | Code::Resolve
                | Code::Authentication,
            ) => {
                self.shared.trouble.store(true, Ordering::Release);
                tracing::debug!(%reason, "kafka client error")
            }
            _ => tracing::warn!(%reason, "kafka client error"),
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Box<Slot>) {
        let shared = &self.shared;
        match result {
            Ok(_) => {
                if shared.has_error.swap(false, Ordering::AcqRel) {
                    if let Ok(mut last) = shared.last_error.lock() {
                        *last = None;
                    }
                }
                slot.report(Ok(()));
            }
            Err((error, _)) => {
                let code = error.rdkafka_error_code().unwrap_or(Code::Fail);
                if needs_new_producer(code) {
                    shared.broken.store(true, Ordering::Release);
                }
                if suspect_producer(code) {
                    shared.suspect.store(true, Ordering::Release);
                }
                if shared.has_error.load(Ordering::Acquire) {
                    slot.reports.note_client_error(shared.last_error());
                }
                slot.report(Err(code));
            }
        }
    }
}

/// One librdkafka producer, the thread that serves its events, and what it still holds.
pub(crate) struct Producer {
    inner: Arc<BaseProducer<Context>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    events: Option<JoinHandle<()>>,
}

impl Drop for Producer {
    /// Stops the event thread; librdkafka's own drop then purges what is left (answered as
    /// retries) and destroys the client. Blocks: drop producers off the async threads.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(events) = self.events.take() {
            let _ = events.join();
        }
    }
}

/// Why a message was not enqueued.
pub(crate) enum Refused {
    /// librdkafka refused it at once (too large, unknown topic, …).
    Code(Code),
    /// The queue stayed full until the deadline.
    Full,
}

impl Producer {
    /// A new producer for `settings`. Does not wait for the brokers: librdkafka connects
    /// in the background.
    pub fn create(settings: &Settings) -> Result<Producer, String> {
        let shared = Arc::new(Shared::default());
        let context = Context {
            shared: shared.clone(),
            masker: settings.masker.clone(),
        };
        let mut config = settings.client.clone();
        config.set_log_level(
            match tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
                true => RDKafkaLogLevel::Debug,
                false => RDKafkaLogLevel::Warning,
            },
        );
        let inner: Arc<BaseProducer<Context>> = Arc::new(
            config
                .create_with_context::<_, BaseProducer<Context>>(context)
                .map_err(|e| {
                    format!(
                        "cannot create the Kafka producer: {}",
                        settings.masker.mask(&e.to_string())
                    )
                })?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let events = {
            let (inner, shared, stop) = (inner.clone(), shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("sluice-kafka".into())
                .spawn(move || serve_events(&inner, &shared, &stop))
                .map_err(|e| format!("cannot start the Kafka producer's thread: {e}"))?
        };
        Ok(Producer {
            inner,
            shared,
            stop,
            events: Some(events),
        })
    }

    /// Enqueue `message` as message `index` of the batch `reports` belongs to, waiting for
    /// queue space until `deadline`. On success its answer comes through `reports`.
    pub async fn enqueue(
        &self,
        message: Message<'_>,
        reports: &Arc<Reports>,
        index: usize,
        deadline: Instant,
    ) -> Result<(), Refused> {
        // Counted before it is handed over, uncounted by the slot's drop whatever happens.
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        reports.expect_one();
        let slot = Box::new(Slot {
            reports: reports.clone(),
            index,
            shared: self.shared.clone(),
        });
        let partition = message.partition();
        let Message {
            topic,
            key,
            value,
            headers,
        } = message;
        let mut record = BaseRecord::with_opaque_to(&topic, slot).headers(headers);
        if let Some(key) = &key {
            record = record.key(key.as_str());
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some(value) = &value {
            record = record.payload(&value[..]);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(Code::QueueFull), back)) => {
                    record = back;
                    if Instant::now() >= deadline {
                        record.delivery_opaque.report(Err(Code::QueueFull));
                        return Err(Refused::Full);
                    }
                    self.room(deadline).await;
                }
                Err((error, back)) => {
                    let code = error.rdkafka_error_code().unwrap_or(Code::InvalidArgument);
                    back.delivery_opaque.report(Err(code));
                    return Err(Refused::Code(code));
                }
            }
        }
    }

    /// Wait until a message was answered (or a short while, or the deadline).
    async fn room(&self, deadline: Instant) {
        let wake = (Instant::now() + ROOM_POLL).min(deadline);
        let _ = tokio::time::timeout_at(wake, self.shared.answered.notified()).await;
    }

    /// Wait until every message this producer holds was answered.
    pub async fn drained(&self) {
        while self.shared.outstanding.load(Ordering::Acquire) > 0 {
            // The timeout covers a ping consumed by an earlier, unrelated wait.
            let _ = tokio::time::timeout(ROOM_POLL, self.shared.answered.notified()).await;
        }
    }

    /// Whether every message it was given was answered.
    pub fn holds_nothing(&self) -> bool {
        self.shared.outstanding.load(Ordering::Acquire) == 0
    }

    /// Why this producer must be replaced now, if it must.
    pub fn broken(&self) -> Option<String> {
        if let Some((code, reason)) = self.inner.client().fatal_error() {
            return Some(format!("fatal error {code}: {reason}"));
        }
        self.shared.broken.load(Ordering::Acquire).then(|| {
            "the brokers refused its idempotence state (producer id, epoch or sequence)".into()
        })
    }

    /// Whether the brokers went away (or a topic was missing) under this producer, and it
    /// holds nothing now.
    pub fn stale(&self) -> bool {
        self.shared.suspect.load(Ordering::Acquire) && self.holds_nothing()
    }
}

impl Producer {
    /// Withdraw what it holds (queued and in flight): answered as retries now.
    pub fn purge(&self) {
        self.inner.purge(PurgeConfig::default().queue().inflight());
    }

    /// The cluster's metadata (and `topic`'s, if given), waiting up to `timeout`. Blocks.
    pub fn metadata(&self, topic: Option<&str>, timeout: Duration) -> Result<Metadata, KafkaError> {
        self.inner.client().fetch_metadata(topic, timeout)
    }

    /// librdkafka's last complaint since the last delivery (masked).
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error()
    }

    /// Wait up to `timeout` for everything it holds to be acknowledged. Blocks.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }
}

/// The producer's thread: serve delivery reports and errors until stopped. After a
/// connection failure, probe whether any broker answers a metadata request; while none
/// does, purge the queued messages (they are answered as retries).
fn serve_events(producer: &BaseProducer<Context>, shared: &Shared, stop: &AtomicBool) {
    let mut down = false;
    let mut probe = false;
    let mut next_probe = std::time::Instant::now();
    while !stop.load(Ordering::Acquire) {
        producer.poll(EVENT_POLL);
        probe |= shared.trouble.swap(false, Ordering::AcqRel);
        if (probe || down) && std::time::Instant::now() >= next_probe {
            let answered = producer
                .client()
                .fetch_metadata(None, PROBE_TIMEOUT)
                .is_ok_and(|metadata| !metadata.brokers().is_empty());
            match (down, answered) {
                (false, false) => tracing::debug!(
                    "no Kafka broker answers; queued messages are answered as retries"
                ),
                (true, true) => tracing::debug!("a Kafka broker answers again"),
                _ => {}
            }
            down = !answered;
            probe = false;
            next_probe = std::time::Instant::now() + PROBE_EVERY;
        }
        if down {
            producer.purge(PurgeConfig::default().queue());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_answers_its_message_when_dropped() {
        let shared = Arc::new(Shared::default());
        let reports = Reports::new(2, None);
        let slot = |index| {
            shared.outstanding.fetch_add(1, Ordering::AcqRel);
            reports.expect_one();
            Slot {
                reports: reports.clone(),
                index,
                shared: shared.clone(),
            }
        };
        let (a, b) = (slot(0), slot(1));
        reports.seal();
        a.report(Ok(()));
        drop(a);
        assert_eq!(shared.outstanding.load(Ordering::Acquire), 1);
        // Dropped without a report: answered all the same, without a result.
        drop(b);
        assert_eq!(shared.outstanding.load(Ordering::Acquire), 0);
        assert_eq!(reports.result(0), Some(Ok(())));
        assert_eq!(reports.result(1), None);
    }
}
