//! [`BlackholeSink`]: the engine's [`Sink`] that delivers into nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sluice_runtime::{Delivery, Event, Sink};

use crate::config::BlackholeConfig;

/// How often a summary is logged (at debug level) while events flow.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// Counts events and discards them.
///
/// - **Ordering**, **concurrency**: nothing is written, so there is nothing to order.
/// - **Idempotence**: trivially; a replayed event is discarded again (and counted again).
/// - **Result**: every event is [`Delivery::Delivered`], at once.
///
/// Per batch it does one allocation (the result vector the trait asks for) and reads the
/// clock once; it never looks inside an event, so the envelope is never encoded.
pub struct BlackholeSink {
    /// Events discarded since the sink was built.
    events: u64,
    /// When the sink was built, for the final rate.
    started: Instant,
    /// The last summary: when, and the count then.
    last: (Instant, u64),
}

impl BlackholeSink {
    pub fn new(_config: BlackholeConfig) -> Self {
        let now = Instant::now();
        BlackholeSink {
            events: 0,
            started: now,
            last: (now, 0),
        }
    }

    /// Events discarded so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    fn summary(&mut self, now: Instant) {
        let (at, count) = self.last;
        let secs = now.duration_since(at).as_secs_f64();
        let recent = self.events - count;
        tracing::debug!(
            events = self.events,
            events_per_sec = (recent as f64 / secs.max(1e-9)) as u64,
            "blackhole discarded events"
        );
        self.last = (now, self.events);
    }
}

#[async_trait]
impl Sink for BlackholeSink {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        self.events += batch.len() as u64;
        let now = Instant::now();
        if now.duration_since(self.last.0) >= SUMMARY_EVERY {
            self.summary(now);
        }
        vec![Delivery::Delivered; batch.len()]
    }

    async fn close(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        tracing::debug!(
            events = self.events,
            events_per_sec = (self.events as f64 / secs.max(1e-9)) as u64,
            "blackhole closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(index: u32) -> Arc<Event> {
        sluice_runtime::testing::insert("t", 32, index)
    }

    #[tokio::test]
    async fn every_event_is_delivered_and_counted() {
        let mut sink = BlackholeSink::new(BlackholeConfig::new());
        let batch: Vec<_> = (0..3).map(event).collect();
        assert_eq!(sink.write(&batch).await, vec![Delivery::Delivered; 3]);
        assert!(sink.write(&[]).await.is_empty());
        assert_eq!(sink.events(), 3);
    }
}
