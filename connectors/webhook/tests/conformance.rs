//! The webhook sink passes the shared sink conformance suite against a real HTTP receiver
//! that answers each request after a random wait, so lanes really overlap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sluice_conformance::{envelope_id, suite, Target, Traits};
use sluice_runtime::Sink;
use sluice_testkit::{Receiver, Respond};
use sluice_webhook::{WebhookConfig, WebhookSink};

struct Webhook {
    rx: Receiver,
    batch: bool,
}

#[async_trait]
impl Target for Webhook {
    fn traits(&self) -> Traits {
        Traits {
            can_fail: true,
            // A batch request is all or nothing.
            fails_one_event: !self.batch,
            observes_order: true,
            bulk: false,
        }
    }

    async fn sink(&mut self) -> Box<dyn Sink> {
        let mut config = WebhookConfig::new(self.rx.url());
        config.concurrency = 8;
        config.timeout = Duration::from_secs(5);
        config.batch = self.batch;
        Box::new(WebhookSink::new(config).unwrap())
    }

    async fn reset(&mut self) {
        self.rx.respond(Respond::Ok);
        self.rx.clear();
    }

    /// A receiver that deduplicates by `webhook-id` sees one envelope per event id.
    async fn state(&mut self) -> BTreeMap<String, Value> {
        self.rx
            .delivered()
            .into_iter()
            .map(|e| (envelope_id(&e), e))
            .collect()
    }

    async fn applied(&mut self) -> Vec<String> {
        self.rx.delivered().iter().map(envelope_id).collect()
    }

    async fn set_down(&mut self, down: bool) {
        self.rx.respond(if down {
            Respond::Status(503)
        } else {
            Respond::Ok
        });
    }

    async fn fail_event(&mut self, id: &str) {
        let id = id.to_string();
        self.rx.respond(Respond::With(Arc::new(move |body: &Value| {
            if body["id"] == id.as_str() {
                503
            } else {
                200
            }
        })));
    }

    async fn heal_event(&mut self) {
        self.rx.respond(Respond::Ok);
    }
}

async fn webhook(batch: bool) -> Webhook {
    let rx = Receiver::start().await;
    rx.jitter(Some(Duration::from_millis(4)));
    Webhook { rx, batch }
}

suite!(webhook(false));

/// `batch: true`: one request per batch, every event sharing its answer.
mod batch_mode {
    use super::*;

    suite!(webhook(true));
}
