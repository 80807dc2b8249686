//! Permanent and transient failures of single messages: a message over the size limit, a
//! topic that cannot be rendered or is not a legal name are rejected with the reason while
//! the rest of the batch goes on; a topic that does not exist is a retry that says so.

mod common;

use serde_json::json;
use sluice_runtime::Sink as _;
use sluice_runtime::{Delivery, Op, Value};
use sluice_testkit::kafka::Tansu;

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_size_limit_is_rejected_and_the_rest_delivered() {
    let tansu = Tansu::start();
    let topic = common::topic("sizes");
    common::create_topic(&tansu, &topic, 2).await;
    let mut sink = common::sink(
        &tansu,
        json!({"topic": topic, "value": "payload", "properties": {"message.max.bytes": 2000}}),
    );
    let mut big = (*common::change("items", Op::Insert, 0x100, 1, 2, 0)).clone();
    big.after
        .as_mut()
        .unwrap()
        .push("doc".into(), Value::Text("x".repeat(3000)));
    let batch = vec![
        common::change("items", Op::Insert, 0x100, 0, 1, 0),
        std::sync::Arc::new(big),
        common::change("items", Op::Update, 0x100, 2, 2, 1),
        common::change("items", Op::Insert, 0x100, 3, 3, 0),
    ];
    let answers = common::write(&mut sink, &batch).await;
    assert_eq!(
        common::names(&answers),
        ["delivered", "rejected", "deferred", "delivered"],
        "the key of the rejected event waits behind it; other keys go on"
    );
    let Delivery::Rejected { reason } = &answers[1] else {
        unreachable!()
    };
    assert!(reason.contains(&format!("topic `{topic}`")), "{reason}");
    assert!(reason.contains("larger than"), "{reason}");
    assert!(reason.contains("message.max.bytes"), "{reason}");

    let ids: Vec<String> = common::read(&tansu, &topic)
        .await
        .iter()
        .map(common::Record::id)
        .collect();
    let mut ids = ids;
    ids.sort();
    assert_eq!(ids, ["0/100:0", "0/100:3"], "deferred events are not sent");
    sink.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_whose_topic_cannot_be_a_topic_are_rejected_before_sending() {
    let tansu = Tansu::start();
    common::create_topic(&tansu, "order", 1).await;
    let mut sink = common::sink(&tansu, json!({}));
    let ok = common::outbox(0x100, 0, "order", "o-1", "{}", "null");
    let illegal = common::outbox(0x100, 1, "orders/eu", "o-2", "{}", "null");
    let mut nameless = (*common::outbox(0x100, 2, "x", "o-3", "{}", "null")).clone();
    nameless.message.as_mut().unwrap().aggregate_type = Value::Null;
    let batch = vec![ok, illegal, std::sync::Arc::new(nameless)];
    let answers = common::write(&mut sink, &batch).await;
    assert_eq!(
        common::names(&answers),
        ["delivered", "rejected", "rejected"]
    );
    let reasons: Vec<&str> = answers[1..]
        .iter()
        .map(|a| match a {
            Delivery::Rejected { reason } => reason.as_str(),
            _ => unreachable!(),
        })
        .collect();
    assert!(reasons[0].contains("topic `orders/eu`"), "{}", reasons[0]);
    assert!(
        reasons[1].contains("`{event.aggregate_type}` is null"),
        "{}",
        reasons[1]
    );
    assert_eq!(common::read(&tansu, "order").await.len(), 1);
    sink.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_that_does_not_exist_is_a_retry_that_says_so() {
    let tansu = Tansu::start();
    let mut sink = common::sink(&tansu, json!({"topic": "missing", "timeout": "4s"}));
    let batch = vec![
        common::change("items", Op::Insert, 0x100, 0, 1, 0),
        common::change("items", Op::Insert, 0x100, 1, 2, 0),
    ];
    let started = std::time::Instant::now();
    let answers = common::write(&mut sink, &batch).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(common::names(&answers), ["retry", "retry"]);
    let Delivery::Retry { reason, .. } = &answers[0] else {
        unreachable!()
    };
    assert!(
        reason.contains("topic `missing` does not exist"),
        "{reason}"
    );
    // Once the topic is there, the same events go through.
    common::create_topic(&tansu, "missing", 1).await;
    let answers = common::write(&mut sink, &batch).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");
    sink.close().await;
}
