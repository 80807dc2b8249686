//! The servers some sink rows write to. A row names the environment variables it needs
//! ([`SinkRow::needs`]); when one of these is unset and the bench can provide it, the bench
//! starts a throwaway server on a free loopback port for the whole run, passes its address
//! to each sluice it starts, and empties it before every run, so that each run writes into
//! an empty store, as the first run would (a store left with the newer versions of an
//! earlier run would make the next run's writes cheap no-ops). A server the caller gives
//! through the environment is used as it is and never emptied.

use std::sync::Mutex;

use anyhow::{bail, Result};
use serde_json::json;
use sluice_testkit::elasticsearch::Elasticsearch;
use sluice_testkit::kafka::Tansu;
use sluice_testkit::rabbitmq::RabbitMq;
use sluice_testkit::redis::Redis;

use crate::consumers::SinkRow;

/// The Kafka row's topic (`bench/src/consumers.rs`) and its partitions.
const KAFKA_TOPIC: &str = "sluice-bench";
const KAFKA_PARTITIONS: u32 = 4;

/// The servers the bench started, and the environment that points sluice at them.
#[derive(Default)]
pub struct Services {
    redis: Option<Redis>,
    elasticsearch: Option<Elasticsearch>,
    rabbitmq: Option<RabbitMq>,
    /// Emptied by a restart (its storage is in memory), hence the lock.
    kafka: Option<Mutex<Tansu>>,
    env: Vec<(&'static str, String)>,
}

impl Services {
    /// Start what `rows` need and the caller did not give.
    pub async fn start(rows: &[&SinkRow]) -> Result<Services> {
        let mut services = Services::default();
        let wanted = |var: &str| {
            rows.iter().any(|r| r.needs.contains(&var)) && std::env::var_os(var).is_none()
        };
        if wanted("REDIS_URL") {
            eprintln!("bench: starting redis-server");
            let redis = Redis::start();
            services.env.push(("REDIS_URL", redis.url()));
            services.redis = Some(redis);
        }
        if wanted("ELASTICSEARCH_URL") {
            eprintln!("bench: starting the Elasticsearch stand-in (tests/harness)");
            let es = Elasticsearch::start().await;
            services.env.push(("ELASTICSEARCH_URL", es.url()));
            services.elasticsearch = Some(es);
        }
        if wanted("RABBITMQ_URL") {
            eprintln!("bench: starting rabbitmq-server");
            let rabbit = RabbitMq::start();
            // The row publishes to a durable topic exchange `bench` bound to one durable
            // queue, as a deployment's persistent messages with publisher confirms would.
            rabbit.import_definitions(&json!({
                "exchanges": [{ "name": "bench", "vhost": "/", "type": "topic", "durable": true,
                                "auto_delete": false, "internal": false, "arguments": {} }],
                "queues": [{ "name": "bench", "vhost": "/", "durable": true,
                             "auto_delete": false, "arguments": {} }],
                "bindings": [{ "source": "bench", "vhost": "/", "destination": "bench",
                               "destination_type": "queue", "routing_key": "#", "arguments": {} }],
            }));
            services.env.push(("RABBITMQ_URL", rabbit.url()));
            services.rabbitmq = Some(rabbit);
        }
        if wanted("KAFKA_BROKERS") {
            eprintln!("bench: starting the tansu Kafka broker");
            let kafka = Tansu::start();
            kafka.create_topic(KAFKA_TOPIC, KAFKA_PARTITIONS);
            services.env.push(("KAFKA_BROKERS", kafka.brokers()));
            services.kafka = Some(Mutex::new(kafka));
        }
        Ok(services)
    }

    /// The variables to give every sluice the bench starts.
    pub fn env(&self) -> &[(&'static str, String)] {
        &self.env
    }

    /// Whether `var` is set, by the caller or by a server started here.
    pub fn provides(&self, var: &str) -> bool {
        std::env::var_os(var).is_some() || self.env.iter().any(|(v, _)| *v == var)
    }

    /// The processes of the servers started here (their CPU is the sinks' cost, not other
    /// work on the machine).
    pub fn pids(&self) -> Vec<u32> {
        let redis = self.redis.iter().filter_map(Redis::pid);
        let rabbit = self.rabbitmq.iter().filter_map(RabbitMq::pid);
        let kafka = self.kafka.iter().filter_map(|k| k.lock().unwrap().pid());
        redis.chain(rabbit).chain(kafka).collect()
    }

    /// Empty every server started here.
    pub fn reset(&self) -> Result<()> {
        if let Some(redis) = &self.redis {
            if !redis.flush_all() {
                bail!("redis-server did not empty itself:\n{}", redis.log());
            }
        }
        if let Some(es) = &self.elasticsearch {
            es.reset();
        }
        if let Some(rabbit) = &self.rabbitmq {
            rabbit.ctl(&["purge_queue", "bench"]);
        }
        if let Some(kafka) = &self.kafka {
            let mut kafka = kafka.lock().unwrap();
            kafka.stop();
            kafka.start_again();
            kafka.create_topic(KAFKA_TOPIC, KAFKA_PARTITIONS);
        }
        Ok(())
    }
}
