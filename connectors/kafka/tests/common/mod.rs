//! Helpers shared by the Kafka sink's tests: topics on a real broker (tansu), a consumer
//! that reads a topic from the start, sinks, and events.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value as Json;
use sluice_kafka::{KafkaConfig, KafkaSink};
use sluice_runtime::{testing, Delivery, Event, Message as Body, Op, Row, Sink, Value};
use sluice_testkit::kafka::Tansu;

/// Create `topic` with `partitions` partitions (it may exist already).
pub async fn create_topic(tansu: &Tansu, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .create()
        .expect("an admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .expect("create topics");
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => panic!("cannot create topic {name}: {code}"),
        }
    }
}

/// One message read back.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, set by the producer when the message was enqueued.
    pub timestamp: i64,
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    /// The `id` header.
    pub fn id(&self) -> String {
        self.header("id").unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// The value as JSON (`null` for a tombstone).
    pub fn json(&self) -> Json {
        match &self.value {
            Some(bytes) => serde_json::from_slice(bytes).expect("a JSON value"),
            None => Json::Null,
        }
    }
}

/// Every message of `topic`, partition by partition, each in offset order. Empty when the
/// topic does not exist.
pub async fn read(tansu: &Tansu, topic: &str) -> Vec<Record> {
    let brokers = tansu.brokers();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || read_blocking(&brokers, &topic))
        .await
        .unwrap()
}

/// Every message of `topic`, in the order they were enqueued by the producer (by
/// timestamp; partition and offset for equal ones).
pub async fn read_in_time_order(tansu: &Tansu, topic: &str) -> Vec<Record> {
    let mut records = read(tansu, topic).await;
    records.sort_by_key(|r| (r.timestamp, r.partition, r.offset));
    records
}

/// How long a read waits for another message before it takes the topic as read whole.
/// (tansu's high watermarks are not reliable enough to read up to them.)
const IDLE: Duration = Duration::from_millis(1000);

fn read_blocking(brokers: &str, topic: &str) -> Vec<Record> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-kafka-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("a consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let Some(partitions) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
    else {
        return Vec::new();
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(0))
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let mut records: Vec<Record> = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < IDLE {
        let Some(message) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let message = message.expect("a message");
        last = Instant::now();
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis().unwrap_or_default(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// A sink for `config` (brokers set to the broker's).
pub fn sink(tansu: &Tansu, mut config: Json) -> KafkaSink {
    config["brokers"] = tansu.brokers().into();
    let config: KafkaConfig = serde_json::from_value(config).unwrap();
    KafkaSink::new(config).unwrap()
}

/// Sinks are used through the trait in tests, as the engine does.
pub fn boxed(sink: KafkaSink) -> Box<dyn Sink> {
    Box::new(sink)
}

/// Send `batch` and wait for its answers.
pub async fn write(sink: &mut KafkaSink, batch: &[Arc<Event>]) -> Vec<Delivery> {
    let answers = sink.send(batch).await.await;
    assert_eq!(answers.len(), batch.len(), "one answer per event");
    answers
}

pub fn name(d: &Delivery) -> &'static str {
    match d {
        Delivery::Delivered => "delivered",
        Delivery::Retry { .. } => "retry",
        Delivery::Deferred => "deferred",
        Delivery::Rejected { .. } => "rejected",
        _ => "other",
    }
}

pub fn names(answers: &[Delivery]) -> Vec<&'static str> {
    answers.iter().map(name).collect()
}

/// A row from `(column, value)` pairs.
pub fn row(pairs: &[(&str, Value)]) -> Row {
    let mut row = Row::default();
    for (name, value) in pairs {
        row.push((*name).into(), value.clone());
    }
    row
}

/// A change of `public.<table>` row `id` holding `n`, at `index` of the transaction
/// committed at `lsn` (the key as `before` for deletes).
pub fn change(table: &str, op: Op, lsn: u64, index: u32, id: i64, n: i64) -> Arc<Event> {
    let mut e = testing::event(table, op, lsn, index);
    let key = testing::id_row(id);
    e.key = Some(key.clone());
    match op {
        Op::Delete => e.before = Some(key),
        _ => {
            let mut after = key;
            after.push("n".into(), Value::Int(n));
            e.after = Some(after);
        }
    }
    Arc::new(e)
}

/// A truncate of `public.<table>`.
pub fn truncate(table: &str, lsn: u64, index: u32) -> Arc<Event> {
    Arc::new(testing::event(table, Op::Truncate, lsn, index))
}

/// An outbox row of `aggregate_type`/`aggregate_id` with `payload` and `headers` (JSON).
pub fn outbox(
    lsn: u64,
    index: u32,
    aggregate_type: &str,
    aggregate_id: &str,
    payload: &str,
    headers: &str,
) -> Arc<Event> {
    let mut e = testing::event("outbox", Op::Event, lsn, index);
    e.key = Some(row(&[("aggregate_id", Value::Text(aggregate_id.into()))]));
    e.message = Some(Body {
        id: Value::Int(i64::from(index)),
        kind: Value::Text("OrderPaid".into()),
        aggregate_type: Value::Text(aggregate_type.into()),
        aggregate_id: Value::Text(aggregate_id.into()),
        payload: Value::json(payload).expect("JSON payload"),
        headers: Value::json(headers).expect("JSON headers"),
    });
    Arc::new(e)
}

/// A topic name no other test uses.
pub fn topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The message key the sink gives `event`.
pub fn key_text(event: &Event) -> String {
    sluice_kafka::encode::key(event).expect("a keyed event")
}
