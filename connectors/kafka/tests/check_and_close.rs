//! `check` (what `sluice validate --connect` runs) and `close`: metadata within the
//! timeout and a reason when it fails, secrets kept out of it; a close that waits for
//! what is still queued.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_runtime::{Delivery, Op, Sink};
use sluice_testkit::kafka::Tansu;

#[tokio::test(flavor = "multi_thread")]
async fn check_fetches_metadata_and_says_what_failed() {
    let tansu = Tansu::start();
    common::create_topic(&tansu, "present", 1).await;
    let mut sink = common::sink(&tansu, json!({}));
    sink.check().await.expect("the cluster answers");
    let mut sink = common::sink(&tansu, json!({"topic": "present"}));
    sink.check().await.expect("a fixed topic that exists");

    let mut sink = common::sink(&tansu, json!({"topic": "absent"}));
    let e = sink.check().await.unwrap_err();
    assert!(e.contains("topic `absent`"), "{e}");

    let port = sluice_testkit::free_port();
    let mut config: sluice_kafka::KafkaConfig = serde_json::from_value(json!({
        "brokers": format!("127.0.0.1:{port}"), "timeout": "1s",
        "properties": {"sasl.username": "sluice", "sasl.password": "hunter2-secret"}
    }))
    .unwrap();
    config.topic = None;
    let mut sink = sluice_kafka::KafkaSink::new(config).unwrap();
    let started = Instant::now();
    let e = sink.check().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeout"
    );
    assert!(
        e.contains(&format!(
            "cannot fetch metadata from the brokers at 127.0.0.1:{port} within 1s"
        )),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    sink.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn close_waits_for_what_is_still_queued() {
    let tansu = Tansu::start();
    let topic = common::topic("closing");
    common::create_topic(&tansu, &topic, 2).await;
    // A long linger keeps the messages in the producer's queue for a while.
    let mut sink = common::sink(&tansu, json!({"topic": topic, "linger": "2s"}));
    let batch: Vec<_> = (0..20)
        .map(|i| common::change("items", Op::Insert, 0x100, i, i64::from(i), 0))
        .collect();
    let answers = sink.send(&batch).await;
    sink.close().await;
    let answers = tokio::time::timeout(Duration::from_secs(5), answers)
        .await
        .expect("answered by the time close returns");
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");
    assert_eq!(common::read(&tansu, &topic).await.len(), 20);
}
