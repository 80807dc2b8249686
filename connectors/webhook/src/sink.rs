//! [`WebhookSink`]: the engine's [`Sink`] over HTTP POSTs.
//!
//! One request per event, or one per batch with `batch: true`. Single requests go through
//! the engine's lane executor ([`lanes::run_lanes`]): one lane per
//! [`Event::ordering_key`], lanes of a segment concurrently (at most `concurrency`
//! requests in flight, all polled from the engine's task), each lane one event after the
//! other, truncates as barriers; an event that is not delivered defers the rest of its
//! lane and every later segment unsent.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_runtime::sink::SinkTelemetry;
use sluice_runtime::{lanes, Delivery, Event, Sink};

use crate::client::Client;
use crate::config::WebhookConfig;
use crate::encode::{batch_body, batch_id};
use crate::WebhookError;

/// Delivers events to an HTTP receiver with Standard Webhooks headers.
///
/// - **Ordering**: events with the same ordering key are sent strictly one after the
///   other, in batch order; a truncate waits for everything before it and holds back
///   everything after it. After a failure the rest of its key, and everything past the
///   next truncate, is deferred.
/// - **Concurrency**: different keys are sent in parallel, up to `concurrency` requests.
/// - **Idempotence**: `webhook-id` is the event id (`<commit_lsn>:<index>`), the same on
///   every resend, so a receiver deduplicates by it. In batch mode it is
///   `<first id>..<last id>`.
pub struct WebhookSink {
    client: Client,
    concurrency: usize,
    batch: bool,
}

impl WebhookSink {
    /// Validate `config` and build the HTTP client. Does no I/O.
    pub fn new(config: WebhookConfig) -> Result<Self, WebhookError> {
        if config.concurrency == 0 {
            return Err(WebhookError::ZeroConcurrency);
        }
        Ok(WebhookSink {
            client: Client::new(&config)?,
            concurrency: config.concurrency,
            batch: config.batch,
        })
    }

    /// The whole batch as one JSON array; every event shares its outcome.
    async fn write_as_one(&self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        if batch.is_empty() {
            return Vec::new();
        }
        let delivery = self.client.post(batch_id(batch), batch_body(batch)).await;
        vec![delivery; batch.len()]
    }

    /// One request per event, lanes of a segment concurrently ([`lanes::run_lanes`]).
    async fn write_each(&self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        lanes::run_lanes(batch, self.concurrency, |_, event| {
            self.client.post(event.id(), event.json().clone())
        })
        .await
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        if self.batch {
            self.write_as_one(batch).await
        } else {
            self.write_each(batch).await
        }
    }

    fn attach(&mut self, telemetry: SinkTelemetry) {
        self.client.telemetry = Some(telemetry);
    }

    /// Resolves the host and opens a TCP connection; sends no request.
    async fn check(&mut self) -> Result<(), String> {
        self.client.check().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_concurrency_is_a_config_error() {
        let mut config = WebhookConfig::new("http://127.0.0.1:9/");
        config.concurrency = 0;
        let e = WebhookSink::new(config).err().unwrap();
        assert!(e.to_string().contains("at least 1"), "{e}");
        assert_eq!(e.field(), "concurrency");
    }

    #[tokio::test]
    async fn an_empty_batch_sends_nothing() {
        // Nothing listens on port 9 (discard); a request would come back as Retry.
        for batch in [false, true] {
            let mut config = WebhookConfig::new("http://127.0.0.1:9/");
            config.batch = batch;
            let mut sink = WebhookSink::new(config).unwrap();
            assert!(sink.write(&[]).await.is_empty());
        }
    }
}
