//! What a consumer receives: one persistent JSON message per event, with the event id as
//! `message_id`, sluice's headers and the event's own, routed by the templates.

mod common;

use common::{change, declare, declare_queues, drain, outbox, sink, write};
use lapin::ExchangeKind;
use serde_json::json;
use sluice_runtime::{testing, Op, Value};
use sluice_testkit::rabbitmq::RabbitMq;
use std::sync::Arc;

#[tokio::test]
async fn every_event_is_a_persistent_message_with_its_id_and_headers() {
    let rabbit = RabbitMq::start();
    declare(&rabbit, "events", ExchangeKind::Topic, &[("all", "#")]).await;
    let mut sink = sink(&rabbit, json!({ "exchange": "events" }));
    let mut insert = testing::event("orders", Op::Insert, 0x100, 0);
    insert.source.ts_micros = 1_700_000_000_500_000;
    insert.key = Some(common::row(&[("id", Value::Int(1))]));
    insert.after = Some(common::row(&[
        ("id", Value::Int(1)),
        ("status", Value::Text("new".into())),
    ]));
    let batch = vec![
        Arc::new(insert),
        change("orders", Op::Update, 0x100, 1, 1, 2),
        outbox(
            0x100,
            2,
            "OrderPaid",
            r#"{"trace": "t-1", "id": "forged", "attempt": 3}"#,
            7,
        ),
        change("orders", Op::Delete, 0x100, 3, 1, 0),
        Arc::new(testing::event("orders", Op::Truncate, 0x200, 0)),
    ];
    assert_eq!(write(&mut sink, &batch).await, ["delivered"; 5]);

    let got = drain(&rabbit, "all").await;
    assert_eq!(got.len(), 5, "{got:?}");
    for (message, event) in got.iter().zip(&batch) {
        assert_eq!(message.id(), event.id(), "message_id is the event id");
        assert_eq!(message.header("id"), Some(event.id()));
        assert_eq!(message.header("op").as_deref(), Some(event.op.as_str()));
        assert_eq!(
            message.header("table").as_deref(),
            Some(match event.op {
                Op::Event => "public.outbox",
                _ => "public.orders",
            })
        );
        assert_eq!(*message.properties.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            message
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(message.exchange, "events");
        assert_eq!(
            message.json(),
            serde_json::from_slice::<serde_json::Value>(event.json()).unwrap(),
            "the body is the envelope"
        );
    }
    assert_eq!(*got[0].properties.timestamp(), Some(1_700_000_000));
    let routing: Vec<&str> = got.iter().map(|m| m.routing_key.as_str()).collect();
    assert_eq!(
        routing,
        [
            "public.orders",
            "public.orders",
            "OrderPaid",
            "public.orders",
            "public.orders"
        ],
        "changes by table, events by type"
    );
    let event = &got[2];
    assert_eq!(event.header("type").as_deref(), Some("OrderPaid"));
    assert_eq!(
        event.properties.kind().as_ref().map(|k| k.as_str()),
        Some("OrderPaid")
    );
    assert_eq!(
        event.header("trace").as_deref(),
        Some("t-1"),
        "the event's own header"
    );
    assert_eq!(event.header("id"), Some(batch[2].id()), "not forged");
    assert_eq!(event.header("attempt"), None, "only string values");
    assert_eq!(got[0].header("type"), None, "row changes have no type");
}

/// A row of `orders` keyed by (tenant, id).
fn tenant_order(op: Op, index: u32, tenant: &str, id: i64) -> Arc<sluice_runtime::Event> {
    let mut e = testing::event("orders", op, 0x300, index);
    let key = common::row(&[
        ("tenant", Value::Text(tenant.into())),
        ("id", Value::Int(id)),
    ]);
    e.key = Some(key.clone());
    match op {
        Op::Delete => e.before = Some(key),
        _ => e.after = Some(key),
    }
    Arc::new(e)
}

#[tokio::test]
async fn routing_keys_and_exchanges_come_from_the_templates() {
    let rabbit = RabbitMq::start();
    // A topic exchange matches `.`-separated words: one tenant's rows, every delete.
    // (Declared through rabbitmqctl: the harness's way for callers without an AMQP client.)
    let queue = |name: &str| {
        json!({"name": name, "vhost": "/", "durable": true, "auto_delete": false,
               "arguments": {}})
    };
    let binding = |queue: &str, key: &str| {
        json!({"source": "orders.rows", "vhost": "/", "destination": queue,
               "destination_type": "queue", "routing_key": key, "arguments": {}})
    };
    rabbit.import_definitions(&json!({
        "exchanges": [{"name": "orders.rows", "vhost": "/", "type": "topic", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}],
        "queues": [queue("acme"), queue("deletes"), queue("all")],
        "bindings": [binding("acme", "orders.*.acme.*"), binding("deletes", "*.delete.#"),
                     binding("all", "#")],
    }));
    let mut sink = sink(
        &rabbit,
        json!({ "exchange": "{table}.rows", "routing_key": "{table}.{op}.{key}" }),
    );
    let batch = vec![
        tenant_order(Op::Insert, 0, "acme", 1),
        tenant_order(Op::Insert, 1, "globex", 2),
        tenant_order(Op::Delete, 2, "acme", 1),
        tenant_order(Op::Update, 3, "globex", 2),
    ];
    assert_eq!(write(&mut sink, &batch).await, ["delivered"; 4]);

    let keys = |messages: Vec<common::Received>| -> Vec<String> {
        messages.into_iter().map(|m| m.routing_key).collect()
    };
    assert_eq!(
        keys(drain(&rabbit, "acme").await),
        ["orders.insert.acme.1", "orders.delete.acme.1"]
    );
    assert_eq!(
        keys(drain(&rabbit, "deletes").await),
        ["orders.delete.acme.1"]
    );
    assert_eq!(drain(&rabbit, "all").await.len(), 4);
}

#[tokio::test]
async fn the_default_exchange_routes_by_queue_name_and_payload_bodies_are_bare() {
    let rabbit = RabbitMq::start();
    declare_queues(&rabbit, &["public.orders", "OrderPaid"]).await;
    let mut sink = sink(&rabbit, json!({ "exchange": "", "value": "payload" }));
    let mut delete = testing::event("orders", Op::Delete, 0x400, 2);
    delete.key = Some(testing::id_row(5));
    let batch = vec![
        change("orders", Op::Insert, 0x400, 0, 5, 1),
        outbox(0x400, 1, "OrderPaid", "null", 9),
        Arc::new(delete),
    ];
    assert_eq!(write(&mut sink, &batch).await, ["delivered"; 3]);

    let orders = drain(&rabbit, "public.orders").await;
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[0].json(), json!({"id": 5, "n": 1}), "the row");
    assert_eq!(orders[0].header("op").as_deref(), Some("insert"));
    assert_eq!(orders[1].json(), json!({"id": 5}), "a delete's key");
    assert_eq!(orders[1].header("op").as_deref(), Some("delete"));
    let events = drain(&rabbit, "OrderPaid").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].json(), json!({"n": 9}), "the event's payload");
    assert_eq!(events[0].exchange, "");
    assert_eq!(events[0].id(), batch[1].id());
}
