//! A broker that cannot take a message says so with a nack: a transient refusal, retried,
//! never parked. A queue that is full and set to refuse publishes (`x-overflow:
//! reject-publish`) nacks deterministically.

mod common;

use common::{answers, change, drain, name, sink, write};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use serde_json::json;
use sluice_runtime::{Delivery, Op};
use sluice_testkit::rabbitmq::RabbitMq;

#[tokio::test]
async fn a_nack_is_retried_and_the_rest_of_its_key_deferred() {
    let rabbit = RabbitMq::start();
    let connection = common::connect(&rabbit).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            "events".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut bounded = FieldTable::default();
    bounded.insert("x-max-length".into(), AMQPValue::LongLongInt(2));
    bounded.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(
            "bounded".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            bounded,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "bounded".into(),
            "events".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let mut sink = sink(&rabbit, json!({ "exchange": "events" }));
    let batch = vec![
        change("items", Op::Insert, 0x100, 0, 1, 0),
        change("items", Op::Insert, 0x100, 1, 2, 0),
        // The queue is full from here on.
        change("items", Op::Insert, 0x100, 2, 3, 0),
        change("items", Op::Update, 0x100, 3, 3, 1),
    ];
    let got = answers(&mut sink, &batch).await;
    let names: Vec<_> = got.iter().map(name).collect();
    assert_eq!(names, ["delivered", "delivered", "retry", "deferred"]);
    let Delivery::Retry { reason, .. } = &got[2] else {
        unreachable!()
    };
    assert!(reason.contains("nack"), "{reason}");

    // Once a consumer made room, the engine's resend goes through.
    assert_eq!(drain(&rabbit, "bounded").await.len(), 2);
    assert_eq!(write(&mut sink, &batch[2..]).await, ["delivered"; 2]);
    let ids: Vec<String> = drain(&rabbit, "bounded")
        .await
        .iter()
        .map(common::Received::id)
        .collect();
    assert_eq!(ids, [batch[2].id(), batch[3].id()]);
}
