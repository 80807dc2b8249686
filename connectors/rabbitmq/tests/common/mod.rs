//! Helpers shared by the RabbitMQ sink's integration tests: a real node with the topology a
//! test needs (sluice declares none), a sink on it, a reader of what reached a queue, and
//! events to write.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value as Json;
use sluice_rabbitmq::{RabbitMqConfig, RabbitMqSink};
use sluice_runtime::{testing, Delivery, Event, Op, Row, Sink, Value};
use sluice_testkit::rabbitmq::RabbitMq;

/// A connection for setting up topology and looking at queues.
pub async fn connect(rabbit: &RabbitMq) -> Connection {
    Connection::connect(&rabbit.url(), ConnectionProperties::default())
        .await
        .expect("connect to the test rabbitmq")
}

/// Declare a durable exchange of `kind` and durable queues bound to it, each with its
/// binding key: `(queue, binding key)`.
pub async fn declare(
    rabbit: &RabbitMq,
    exchange: &str,
    kind: ExchangeKind,
    queues: &[(&str, &str)],
) {
    let connection = connect(rabbit).await;
    let channel = connection.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(exchange.into(), kind, durable, FieldTable::default())
        .await
        .unwrap();
    for (queue, binding) in queues {
        declare_queue(&channel, queue).await;
        channel
            .queue_bind(
                (*queue).into(),
                exchange.into(),
                (*binding).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    connection.close(200, "done".into()).await.unwrap();
}

/// Declare a durable queue, bound to nothing but the default exchange.
pub async fn declare_queues(rabbit: &RabbitMq, queues: &[&str]) {
    let connection = connect(rabbit).await;
    let channel = connection.create_channel().await.unwrap();
    for queue in queues {
        declare_queue(&channel, queue).await;
    }
    connection.close(200, "done".into()).await.unwrap();
}

async fn declare_queue(channel: &lapin::Channel, queue: &str) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .unwrap();
}

/// A message as a consumer of the queue got it.
#[derive(Clone, Debug)]
pub struct Received {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).expect("a body is JSON")
    }

    /// A header's text value.
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            AMQPValue::LongString(text) => Some(text.to_string()),
            AMQPValue::ShortString(text) => Some(text.to_string()),
            other => panic!("header {name} is not text: {other:?}"),
        }
    }

    /// The event id the message carries.
    pub fn id(&self) -> String {
        self.message_id
            .clone()
            .expect("every message has a message id")
    }
}

/// Take every message that is in `queue` now, oldest first (acknowledged: they are gone
/// from the queue afterwards).
pub async fn drain(rabbit: &RabbitMq, queue: &str) -> Vec<Received> {
    let connection = connect(rabbit).await;
    let channel = connection.create_channel().await.unwrap();
    let mut out = Vec::new();
    let options = BasicGetOptions { no_ack: true };
    while let Some(got) = channel.basic_get(queue.into(), options).await.unwrap() {
        let d = got.delivery;
        out.push(Received {
            exchange: d.exchange.to_string(),
            routing_key: d.routing_key.to_string(),
            message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
            properties: d.properties.clone(),
            body: d.data,
        });
    }
    connection.close(200, "done".into()).await.unwrap();
    out
}

/// Empty `queue`.
pub async fn purge(rabbit: &RabbitMq, queue: &str) {
    let connection = connect(rabbit).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
}

/// A sink for `config` (whose url is replaced by the node's).
pub fn sink(rabbit: &RabbitMq, mut config: Json) -> RabbitMqSink {
    config["url"] = rabbit.url().into();
    let config: RabbitMqConfig = serde_json::from_value(config).unwrap();
    RabbitMqSink::new(config).unwrap()
}

/// Sinks are used through the trait in tests, as the engine does.
pub fn boxed(sink: RabbitMqSink) -> Box<dyn Sink> {
    Box::new(sink)
}

/// Write `batch` and return the answers.
pub async fn answers(sink: &mut RabbitMqSink, batch: &[Arc<Event>]) -> Vec<Delivery> {
    let answers = sink.write(batch).await;
    assert_eq!(answers.len(), batch.len(), "one answer per event");
    answers
}

/// Write `batch` and return the answers' names.
pub async fn write(sink: &mut RabbitMqSink, batch: &[Arc<Event>]) -> Vec<&'static str> {
    answers(sink, batch).await.iter().map(name).collect()
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

/// A row from `(column, value)` pairs.
pub fn row(pairs: &[(&str, Value)]) -> Row {
    let mut row = Row::default();
    for (name, value) in pairs {
        row.push((*name).into(), value.clone());
    }
    row
}

/// A change of `public.<table>` row `id` holding `n`, at `index` of the transaction
/// committed at `lsn`; the key as `before` for deletes.
pub fn change(table: &str, op: Op, lsn: u64, index: u32, id: i64, n: i64) -> Arc<Event> {
    let mut e = testing::event(table, op, lsn, index);
    let key = row(&[("id", Value::Int(id))]);
    e.key = Some(key.clone());
    match op {
        Op::Delete => e.before = Some(key),
        _ => e.after = Some(row(&[("id", Value::Int(id)), ("n", Value::Int(n))])),
    }
    Arc::new(e)
}

/// An outbox row of `type` with `headers` (JSON text) and payload `{"n": n}`.
pub fn outbox(lsn: u64, index: u32, kind: &str, headers: &str, n: i64) -> Arc<Event> {
    let mut e = testing::event("outbox", Op::Event, lsn, index);
    e.key = Some(row(&[("aggregate_id", Value::Text(format!("o{n}")))]));
    e.message = Some(sluice_runtime::Message {
        id: Value::Int(n),
        kind: Value::Text(kind.into()),
        aggregate_type: Value::Text("order".into()),
        aggregate_id: Value::Text(format!("o{n}")),
        payload: Value::json(&format!(r#"{{"n": {n}}}"#)).unwrap(),
        headers: Value::json(headers).unwrap(),
    });
    Arc::new(e)
}

/// Messages by event id, for comparing what two runs left.
pub fn by_id(messages: &[Received]) -> BTreeMap<String, Json> {
    messages.iter().map(|m| (m.id(), m.json())).collect()
}
