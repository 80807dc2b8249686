//! The RabbitMQ sink passes the shared sink conformance suite against a real node: a
//! durable topic exchange with one durable queue bound to every routing key. What the
//! destination holds is what a consumer of that queue took from it, in queue order; state
//! is the last envelope per message id. The node is taken down by a clean shutdown and
//! brought back on the same ports with the same data: the durable exchange, the queue and
//! the persistent messages in it come back.

mod common;

use std::collections::BTreeMap;

use async_trait::async_trait;
use lapin::ExchangeKind;
use serde_json::{json, Value};
use sluice_conformance::{suite, Target, Traits};
use sluice_runtime::Sink;
use sluice_testkit::rabbitmq::RabbitMq;

const EXCHANGE: &str = "sluice.conformance";
const QUEUE: &str = "items";

struct RabbitTarget {
    rabbit: RabbitMq,
    /// Every message taken from the queue so far, in queue order: `(id, envelope)`.
    taken: Vec<(String, Value)>,
}

impl RabbitTarget {
    async fn start() -> Self {
        let rabbit = RabbitMq::start();
        common::declare(&rabbit, EXCHANGE, ExchangeKind::Topic, &[(QUEUE, "#")]).await;
        RabbitTarget {
            rabbit,
            taken: Vec::new(),
        }
    }

    /// Take what reached the queue since the last look (nothing can while it is down).
    async fn take(&mut self) {
        if !self.rabbit.is_up() {
            return;
        }
        for message in common::drain(&self.rabbit, QUEUE).await {
            self.taken.push((message.id(), message.json()));
        }
    }
}

#[async_trait]
impl Target for RabbitTarget {
    fn traits(&self) -> Traits {
        Traits {
            can_fail: true,
            fails_one_event: false,
            observes_order: true,
            // A segment's messages are all published before the first confirm is read.
            bulk: true,
        }
    }

    async fn sink(&mut self) -> Box<dyn Sink> {
        common::boxed(common::sink(
            &self.rabbit,
            json!({ "exchange": EXCHANGE, "timeout": "5s" }),
        ))
    }

    async fn reset(&mut self) {
        common::purge(&self.rabbit, QUEUE).await;
        self.taken.clear();
    }

    async fn state(&mut self) -> BTreeMap<String, Value> {
        self.take().await;
        self.taken.iter().cloned().collect()
    }

    async fn applied(&mut self) -> Vec<String> {
        self.take().await;
        self.taken.iter().map(|(id, _)| id.clone()).collect()
    }

    async fn set_down(&mut self, down: bool) {
        if down {
            self.take().await;
            self.rabbit.stop();
        } else {
            self.rabbit.start_again();
        }
    }
}

suite!(RabbitTarget::start());
