//! What a message holds: default topics, keys, headers, and the value in envelope and in
//! payload mode (rows, tombstones for deletes, no message for truncates).

mod common;

use serde_json::json;
use sluice_runtime::Sink as _;
use sluice_runtime::{Delivery, Op};
use sluice_testkit::kafka::Tansu;

fn header_names(r: &common::Record) -> Vec<&str> {
    r.headers.iter().map(|(k, _)| k.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn envelopes_go_to_default_topics_with_headers() {
    let tansu = Tansu::start();
    common::create_topic(&tansu, "order", 2).await;
    common::create_topic(&tansu, "public.items", 2).await;
    let mut sink = common::sink(&tansu, json!({}));
    let event = common::outbox(
        0x100,
        0,
        "order",
        "o-42",
        r#"{"total": "19.90"}"#,
        r#"{"traceparent": "00-abc-01", "tenant": "acme", "retries": 3, "op": "spoofed"}"#,
    );
    let change = common::change("items", Op::Update, 0x100, 1, 7, 3);
    let answers = common::write(&mut sink, &[event.clone(), change.clone()]).await;
    assert_eq!(common::names(&answers), ["delivered", "delivered"]);

    let events = common::read(&tansu, "order").await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.key.as_deref(), Some("o-42"));
    assert_eq!(
        e.value.as_deref(),
        Some(&event.json()[..]),
        "the envelope, as is"
    );
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        e.headers[..4],
        pairs(&[
            ("id", "0/100:0"),
            ("op", "event"),
            ("table", "public.outbox"),
            ("type", "OrderPaid"),
        ])
    );
    let mut own = e.headers[4..].to_vec();
    own.sort();
    assert_eq!(
        own,
        pairs(&[("tenant", "acme"), ("traceparent", "00-abc-01")]),
        "the event's own string headers follow ours; numbers and our names are left out"
    );

    let changes = common::read(&tansu, "public.items").await;
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert_eq!(c.key.as_deref(), Some("7"));
    assert_eq!(
        c.json(),
        serde_json::from_slice::<serde_json::Value>(change.json()).unwrap()
    );
    assert_eq!(header_names(c), ["id", "op", "table"]);
    assert_eq!(c.header("op").as_deref(), Some("update"));
    sink.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn payload_mode_sends_rows_payloads_and_tombstones() {
    let tansu = Tansu::start();
    let topic = common::topic("payloads");
    common::create_topic(&tansu, &topic, 1).await;
    let mut sink = common::sink(&tansu, json!({"topic": topic, "value": "payload"}));
    let batch = vec![
        common::change("items", Op::Insert, 0x100, 0, 1, 10),
        common::change("items", Op::Update, 0x100, 1, 1, 11),
        common::truncate("items", 0x100, 2),
        common::change("items", Op::Delete, 0x100, 3, 1, 0),
        common::outbox(0x100, 4, "order", "o-1", r#"{"total": "5.00"}"#, "null"),
    ];
    let answers = common::write(&mut sink, &batch).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");

    let records = common::read(&tansu, &topic).await;
    let ids: Vec<String> = records.iter().map(common::Record::id).collect();
    assert_eq!(
        ids,
        ["0/100:0", "0/100:1", "0/100:3", "0/100:4"],
        "the truncate is not sent"
    );
    assert_eq!(records[0].json(), json!({"id": 1, "n": 10}));
    assert_eq!(records[1].json(), json!({"id": 1, "n": 11}));
    assert_eq!(
        (records[2].key.as_deref(), &records[2].value),
        (Some("1"), &None),
        "a delete is a tombstone under the row's key"
    );
    assert_eq!(records[2].header("op").as_deref(), Some("delete"));
    assert_eq!(records[3].json(), json!({"total": "5.00"}));
    assert_eq!(records[3].key.as_deref(), Some("o-1"));
    sink.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncates_are_sent_as_envelopes_after_everything_before_them() {
    let tansu = Tansu::start();
    let topic = common::topic("truncates");
    common::create_topic(&tansu, &topic, 3).await;
    let mut sink = common::sink(&tansu, json!({"topic": topic}));
    let mut batch: Vec<_> = (0..6)
        .map(|i| common::change("items", Op::Insert, 0x100, i, i64::from(i), 0))
        .collect();
    batch.push(common::truncate("items", 0x100, 6));
    batch.extend((7..12).map(|i| common::change("items", Op::Insert, 0x100, i, i64::from(i), 1)));
    let answers = common::write(&mut sink, &batch).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");

    let records = common::read_in_time_order(&tansu, &topic).await;
    let at = |id: &str| records.iter().position(|r| r.id() == id).unwrap();
    let truncate = &records[at("0/100:6")];
    assert_eq!((truncate.partition, truncate.key.as_deref()), (0, None));
    assert_eq!(truncate.json()["op"], "truncate");
    for e in &batch[..6] {
        assert!(
            at(&e.id()) < at("0/100:6"),
            "{} before the truncate",
            e.id()
        );
    }
    for e in &batch[7..] {
        assert!(at(&e.id()) > at("0/100:6"), "{} after the truncate", e.id());
    }
    sink.close().await;
}
