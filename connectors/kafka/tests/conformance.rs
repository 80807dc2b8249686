//! The Kafka sink passes the shared sink conformance suite against a real broker (tansu),
//! with the envelope as value and with the payload as value.
//!
//! Each `reset` moves to a fresh topic of 3 partitions, so keys spread over partitions.
//! What took effect is read back with a consumer from the start of the topic:
//! - `state`: each message by its `id` header (the envelope, or key, value and headers in
//!   payload mode; a repeated id keeps its last copy);
//! - `applied`: the ids in the order the producer enqueued them (message timestamps;
//!   partition and offset break ties), which is each partition's order. A truncate is
//!   only enqueued after everything before it was acknowledged, and nothing after it
//!   before it was, so its place in that order is meaningful across partitions.
//!
//! The broker is taken down by killing it and brought back on the same port. Its storage
//! is in memory, so it comes back empty: the target creates the topic again and, while
//! the broker is down, shows what it held when it was killed.

mod common;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_conformance::{suite, Target, Traits};
use sluice_runtime::Sink;
use sluice_testkit::kafka::Tansu;

/// Partitions of each topic.
const PARTITIONS: u32 = 3;

struct KafkaTarget {
    tansu: Tansu,
    /// `envelope` or `payload`.
    value: &'static str,
    /// The topic of the current reset.
    topic: String,
    /// `state()` and `applied()` as they were when the broker was killed.
    while_down: Option<(BTreeMap<String, Value>, Vec<String>)>,
}

impl KafkaTarget {
    async fn start(value: &'static str) -> Self {
        KafkaTarget {
            tansu: Tansu::start(),
            value,
            topic: String::new(),
            while_down: None,
        }
    }

    async fn records(&self) -> Vec<common::Record> {
        common::read_in_time_order(&self.tansu, &self.topic).await
    }
}

#[async_trait]
impl Target for KafkaTarget {
    fn traits(&self) -> Traits {
        Traits {
            can_fail: true,
            fails_one_event: false,
            observes_order: true,
            // A batch is enqueued whole: after a message that failed, later ones may have
            // been written though they are answered deferred.
            bulk: true,
        }
    }

    async fn sink(&mut self) -> Box<dyn Sink> {
        common::boxed(common::sink(
            &self.tansu,
            json!({"topic": self.topic, "value": self.value, "timeout": "2s"}),
        ))
    }

    async fn reset(&mut self) {
        self.topic = common::topic("items");
        self.tansu.create_topic(&self.topic, PARTITIONS);
    }

    async fn state(&mut self) -> BTreeMap<String, Value> {
        if let Some((state, _)) = &self.while_down {
            return state.clone();
        }
        self.records()
            .await
            .into_iter()
            .map(|r| {
                let shown = match self.value {
                    "envelope" => r.json(),
                    _ => json!({"key": r.key, "value": r.json(), "headers": r.headers}),
                };
                (r.id(), shown)
            })
            .collect()
    }

    async fn applied(&mut self) -> Vec<String> {
        if let Some((_, applied)) = &self.while_down {
            return applied.clone();
        }
        self.records()
            .await
            .iter()
            .map(common::Record::id)
            .collect()
    }

    async fn set_down(&mut self, down: bool) {
        if down {
            self.while_down = Some((self.state().await, self.applied().await));
            self.tansu.stop();
        } else {
            self.tansu.start_again();
            self.tansu.create_topic(&self.topic, PARTITIONS);
            self.while_down = None;
        }
    }
}

mod envelope {
    use super::*;
    suite!(KafkaTarget::start("envelope"));
}

mod payload {
    use super::*;
    suite!(KafkaTarget::start("payload"));
}
