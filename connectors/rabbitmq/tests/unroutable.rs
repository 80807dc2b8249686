//! Topology sluice does not own: a message no queue is bound to receive, an exchange that
//! does not exist, and what `check` (`sluice validate --connect`) says about them.

mod common;

use common::{answers, change, declare, drain, name, sink, write};
use lapin::ExchangeKind;
use serde_json::json;
use sluice_runtime::{Delivery, Op, Sink};
use sluice_testkit::rabbitmq::RabbitMq;

#[tokio::test]
async fn unroutable_messages_are_rejected_with_the_reason_and_the_rest_delivered() {
    let rabbit = RabbitMq::start();
    declare(
        &rabbit,
        "events",
        ExchangeKind::Direct,
        &[("orders", "public.orders")],
    )
    .await;
    let mut sink = sink(&rabbit, json!({ "exchange": "events" }));
    let batch = vec![
        change("orders", Op::Insert, 0x100, 0, 1, 0),
        // Nothing is bound for public.customers.
        change("customers", Op::Insert, 0x100, 1, 1, 0),
        change("orders", Op::Insert, 0x100, 2, 2, 0),
        // The same row as the rejected one: it waits behind it.
        change("customers", Op::Update, 0x100, 3, 1, 1),
        change("orders", Op::Update, 0x100, 4, 1, 1),
    ];
    let got = answers(&mut sink, &batch).await;
    let names: Vec<_> = got.iter().map(name).collect();
    assert_eq!(
        names,
        [
            "delivered",
            "rejected",
            "delivered",
            "deferred",
            "delivered"
        ]
    );
    let Delivery::Rejected { reason } = &got[1] else {
        unreachable!()
    };
    for part in [
        "NO_ROUTE",
        "exchange `events`",
        "`public.customers`",
        "mandatory: false",
    ] {
        assert!(reason.contains(part), "{part} in: {reason}");
    }
    let orders: Vec<String> = drain(&rabbit, "orders")
        .await
        .iter()
        .map(|m| m.id())
        .collect();
    assert_eq!(orders, [batch[0].id(), batch[2].id(), batch[4].id()]);
}

#[tokio::test]
async fn without_mandatory_the_broker_drops_what_nothing_receives() {
    let rabbit = RabbitMq::start();
    declare(
        &rabbit,
        "events",
        ExchangeKind::Direct,
        &[("orders", "public.orders")],
    )
    .await;
    let mut sink = sink(&rabbit, json!({ "exchange": "events", "mandatory": false }));
    let batch = vec![
        change("orders", Op::Insert, 0x100, 0, 1, 0),
        change("customers", Op::Insert, 0x100, 1, 1, 0),
    ];
    assert_eq!(write(&mut sink, &batch).await, ["delivered"; 2]);
    assert_eq!(drain(&rabbit, "orders").await.len(), 1);
}

#[tokio::test]
async fn a_missing_exchange_is_rejected_and_other_exchanges_go_on() {
    let rabbit = RabbitMq::start();
    declare(&rabbit, "orders", ExchangeKind::Fanout, &[("orders", "")]).await;
    let mut sink = sink(&rabbit, json!({ "exchange": "{table}" }));
    let batch = vec![
        change("customers", Op::Insert, 0x100, 0, 1, 0),
        change("orders", Op::Insert, 0x100, 1, 1, 0),
        change("customers", Op::Update, 0x100, 2, 1, 1),
        change("orders", Op::Update, 0x100, 3, 1, 1),
    ];
    let got = answers(&mut sink, &batch).await;
    let names: Vec<_> = got.iter().map(name).collect();
    assert_eq!(names, ["rejected", "delivered", "deferred", "delivered"]);
    let Delivery::Rejected { reason } = &got[0] else {
        unreachable!()
    };
    assert!(
        reason.contains("exchange `customers` does not exist")
            && reason.contains("does not declare"),
        "{reason}"
    );
    assert_eq!(drain(&rabbit, "orders").await.len(), 2);

    // Once it is declared (and bound), the same sink finds it: missing is not remembered.
    declare(
        &rabbit,
        "customers",
        ExchangeKind::Fanout,
        &[("customers", "")],
    )
    .await;
    assert_eq!(write(&mut sink, &batch[..1]).await, ["delivered"]);
    assert_eq!(drain(&rabbit, "customers").await.len(), 1);
}

#[tokio::test]
async fn check_connects_and_finds_the_exchange_or_says_what_failed() {
    let rabbit = RabbitMq::start();
    declare(&rabbit, "events", ExchangeKind::Topic, &[]).await;
    let mut good = sink(&rabbit, json!({ "exchange": "events" }));
    good.check().await.expect("the exchange exists");
    good.close().await;
    // A template cannot be checked without events: connecting is all.
    sink(&rabbit, json!({ "exchange": "{table}" }))
        .check()
        .await
        .expect("connects");

    let e = sink(&rabbit, json!({ "exchange": "evnets" }))
        .check()
        .await
        .unwrap_err();
    assert!(e.contains("exchange `evnets` does not exist"), "{e}");

    // The default exchange always exists; a queue of the routing key's name may not.
    let mut default = sink(&rabbit, json!({ "exchange": "" }));
    default.check().await.expect("the default exchange exists");
    let got = answers(
        &mut default,
        &[change("orders", Op::Insert, 0x100, 0, 1, 0)],
    )
    .await;
    let Delivery::Rejected { reason } = &got[0] else {
        panic!("{got:?}")
    };
    assert!(
        reason
            .contains("no queue is bound to the default exchange for routing key `public.orders`"),
        "{reason}"
    );

    let mut config = json!({ "exchange": "events", "timeout": "3s" });
    config["url"] = format!("amqp://guest:hunter2@127.0.0.1:{}/%2f", rabbit.port).into();
    let wrong_password =
        sluice_rabbitmq::RabbitMqSink::new(serde_json::from_value(config).unwrap())
            .unwrap()
            .check()
            .await
            .unwrap_err();
    assert!(
        wrong_password.contains(&format!("127.0.0.1:{}", rabbit.port)),
        "{wrong_password}"
    );
    assert!(
        wrong_password.contains("ACCESS_REFUSED"),
        "{wrong_password}"
    );
    assert!(!wrong_password.contains("hunter2"), "{wrong_password}");

    let mut config = json!({ "exchange": "events", "timeout": "3s" });
    config["url"] = format!("amqp://guest:guest@127.0.0.1:{}/nope", rabbit.port).into();
    let no_vhost = sluice_rabbitmq::RabbitMqSink::new(serde_json::from_value(config).unwrap())
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert!(no_vhost.contains("vhost nope"), "{no_vhost}");
    assert!(no_vhost.contains("NOT_ALLOWED"), "{no_vhost}");
}
