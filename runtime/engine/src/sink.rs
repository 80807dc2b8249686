//! The sink contract: what a connector implements, and what it may assume.
//!
//! A sink only delivers and classifies. Batching, retries with backoff, offsets, ordering
//! across retries, dead-lettering and shutdown live once, in the engine
//! ([`crate::driver`]). A connector never sleeps to retry and never drops an event.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::event::Event;

/// What happened to one event of a batch.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Delivery {
    /// The sink has it durably (for an HTTP receiver: it answered 2xx).
    Delivered,
    /// A transient failure (connection refused, timeout, 408, 429, 5xx, broker
    /// unavailable). The engine retries it with backoff; it never goes to a DLQ.
    /// `after` is the receiver's own wish (Retry-After), honoured as a minimum wait.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The event was not attempted because an earlier event with the same ordering key
    /// in this batch did not get through. The engine retries it after that one.
    Deferred,
    /// A permanent failure: this event as it is can never succeed (4xx other than
    /// 408/429, a document the sink rejects, an event it cannot encode).
    Rejected { reason: String },
}

impl Delivery {
    pub fn retry(reason: impl Into<String>) -> Self {
        Delivery::Retry {
            reason: reason.into(),
            after: None,
        }
    }

    pub fn rejected(reason: impl Into<String>) -> Self {
        Delivery::Rejected {
            reason: reason.into(),
        }
    }

    pub fn is_delivered(&self) -> bool {
        matches!(self, Delivery::Delivered)
    }
}

/// A sink's handle to its metrics (see [`Sink::attach`]). Cheap to clone.
#[derive(Clone)]
pub struct SinkTelemetry(Arc<crate::progress::SinkProgress>);

impl SinkTelemetry {
    pub fn new(progress: Arc<crate::progress::SinkProgress>) -> Self {
        SinkTelemetry(progress)
    }

    /// The destination answered with this HTTP status.
    pub fn http_status(&self, code: u16) {
        self.0.counters.http_statuses.add(code, 1);
    }
}

/// The answers to a batch handed to [`Sink::send`], once the destination gave them.
pub type Pending = Pin<Box<dyn Future<Output = Vec<Delivery>> + Send + 'static>>;

/// A destination of events.
///
/// Contract for implementors:
/// - **Ordering**: `write` receives events in stream order. Events with the same
///   [`Event::ordering_key`] must take effect in that order; events with different keys
///   may be written concurrently. A truncate (`ordering_key()` is `None`) is a barrier.
///   When an event fails, every later event of its key, and every event after the next
///   barrier, must be answered [`Delivery::Deferred`] without being attempted.
///   [`crate::lanes::plan`] does this bookkeeping.
/// - **Concurrency**: the engine calls `write` (or `send`) on one sink from one task, one
///   call at a time; a sink may parallelise inside a batch. With [`Sink::max_in_flight`]
///   above 1, the futures `send` returns for several batches are pending at once.
/// - **Idempotence**: delivery is at-least-once. After a crash or a retry the same event
///   (same id, same position) may be written again; a sink makes that harmless where the
///   destination allows (external versions, fences, stable ids).
/// - **Result**: exactly one [`Delivery`] per input event, in input order.
#[async_trait]
pub trait Sink: Send {
    /// Write a batch and say, per event, what happened.
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery>;

    /// How many batches may be handed over before the first one is answered. Default 1:
    /// each batch is answered before the next is sent. A sink whose destination
    /// acknowledges asynchronously (Kafka's delivery reports) raises it and implements
    /// [`Sink::send`]; the engine still takes the answers in order, so offsets advance in
    /// order. It must then keep per-key order across batches itself (a later send of a
    /// key must not take effect before an earlier one that is retried), as an idempotent
    /// Kafka producer does per partition. `dlq.on_key: hold` forces 1.
    fn max_in_flight(&self) -> usize {
        1
    }

    /// Hand a batch over, in order after the batches handed over before, and return the
    /// future of its answers (same contract as [`Sink::write`]). The default writes the
    /// batch now and returns answers that are ready.
    async fn send(&mut self, batch: &[Arc<Event>]) -> Pending {
        let answers = self.write(batch).await;
        Box::pin(std::future::ready(answers))
    }

    /// Take the handle through which the sink reports what only it sees (HTTP statuses)
    /// to the metrics. Called once, before the first write. Default: ignored.
    fn attach(&mut self, _telemetry: SinkTelemetry) {}

    /// Check that the destination is reachable and accepts us; used by
    /// `sluice validate --connect`. Defaults to no check.
    async fn check(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Release connections. Called once, after the last `write`.
    async fn close(&mut self) {}
}
