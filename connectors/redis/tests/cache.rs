//! Cache mode against a real redis-server: the position fence (replays, late events,
//! tombstones), TOAST columns, key changes, TTLs, truncates, events, and what Redis
//! refuses.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{change, delete, doc, dump, hash, item, pttl, row, text, write};
use serde_json::json;
use sluice_runtime::{testing, Delivery, Event, Message, Op, Sink, Value};
use sluice_testkit::redis::Redis;

const FORMATS: [&str; 2] = ["json", "hash"];

/// `n` of row `id` as stored in `format`, `None` when the row is not there.
async fn n_of(conn: &mut redis::aio::MultiplexedConnection, format: &str, id: i64) -> Option<i64> {
    let key = format!("items:{id}");
    match format {
        "json" => doc(conn, &key).await.and_then(|d| d["n"].as_i64()),
        _ => hash(conn, &key).await.get("n").map(|n| n.parse().unwrap()),
    }
}

#[tokio::test]
async fn replaying_the_same_events_changes_nothing() {
    for format in FORMATS {
        let redis = Redis::start();
        let mut conn = common::connect(&redis).await;
        let mut sink = common::sink(&redis, json!({ "format": format }));
        let batch = vec![
            item(Op::Insert, 0x100, 0, 1, 10),
            item(Op::Insert, 0x100, 1, 2, 20),
            item(Op::Update, 0x200, 0, 1, 11),
            delete(0x200, 1, 2),
        ];
        assert_eq!(write(&mut sink, &batch).await, ["delivered"; 4]);
        let once = dump(&mut conn).await;
        assert_eq!(n_of(&mut conn, format, 1).await, Some(11), "{format}");
        assert_eq!(n_of(&mut conn, format, 2).await, None, "{format}");
        assert_eq!(write(&mut sink, &batch).await, ["delivered"; 4]);
        assert_eq!(
            dump(&mut conn).await,
            once,
            "{format}: a replay changes nothing"
        );
    }
}

#[tokio::test]
async fn an_older_event_after_a_newer_one_is_stale_and_changes_nothing() {
    for format in FORMATS {
        let redis = Redis::start();
        let mut conn = common::connect(&redis).await;
        let mut sink = common::sink(&redis, json!({ "format": format }));
        let newer = item(Op::Update, 0x200, 0, 1, 2);
        let older = item(Op::Insert, 0x100, 5, 1, 1);
        assert_eq!(write(&mut sink, &[newer]).await, ["delivered"]);
        let before = dump(&mut conn).await;
        // Stale: counted delivered, and the key does not regress.
        assert_eq!(write(&mut sink, &[older]).await, ["delivered"]);
        assert_eq!(dump(&mut conn).await, before, "{format}");
        assert_eq!(n_of(&mut conn, format, 1).await, Some(2));
        // The same transaction, an earlier index: older too.
        let same_tx = item(Op::Update, 0x200, 0, 1, 3);
        assert_eq!(write(&mut sink, &[same_tx]).await, ["delivered"]);
        assert_eq!(
            n_of(&mut conn, format, 1).await,
            Some(2),
            "{format}: equal is stale"
        );
        // Fan-out events of one change share its position and are ordered by fan-out.
        let mut fanned = change("items", Op::Update, 0x200, 0, 1, &[("n", Value::Int(4))]);
        fanned.fanout = 1;
        assert_eq!(write(&mut sink, &[Arc::new(fanned)]).await, ["delivered"]);
        assert_eq!(n_of(&mut conn, format, 1).await, Some(4), "{format}");
    }
}

#[tokio::test]
async fn a_deleted_row_stays_deleted_while_its_tombstone_lives() {
    for format in FORMATS {
        let redis = Redis::start();
        let mut conn = common::connect(&redis).await;
        let mut sink = common::sink(&redis, json!({ "format": format, "tombstone_ttl": "1h" }));
        let insert = item(Op::Insert, 0x100, 0, 1, 1);
        assert_eq!(
            write(&mut sink, &[insert.clone(), delete(0x200, 0, 1)]).await,
            ["delivered"; 2]
        );
        assert_eq!(write(&mut sink, &[insert]).await, ["delivered"]);
        assert_eq!(
            n_of(&mut conn, format, 1).await,
            None,
            "{format}: not resurrected"
        );
        // The tombstone expires with tombstone_ttl.
        let (tombstone, left) = match format {
            "json" => {
                assert_eq!(text(&mut conn, "items:1").await, None);
                ("items:1:sluice", text(&mut conn, "items:1:sluice").await)
            }
            _ => {
                let fields = hash(&mut conn, "items:1").await;
                assert_eq!(
                    fields.keys().collect::<Vec<_>>(),
                    ["_sluice_pos"],
                    "{format}"
                );
                ("items:1", fields.get("_sluice_pos").cloned())
            }
        };
        assert_eq!(left.as_deref(), Some("00000000000002000000000000000000"));
        let ttl = pttl(&mut conn, tombstone).await;
        assert!(ttl > 3_590_000 && ttl <= 3_600_000, "{format}: {ttl}");
        // A later insert brings the row back.
        assert_eq!(
            write(&mut sink, &[item(Op::Insert, 0x300, 0, 1, 3)]).await,
            ["delivered"]
        );
        assert_eq!(n_of(&mut conn, format, 1).await, Some(3), "{format}");
        assert_eq!(
            pttl(&mut conn, "items:1").await,
            -1,
            "{format}: rows do not expire"
        );
    }
}

#[tokio::test]
async fn without_tombstones_a_delete_removes_everything() {
    for format in FORMATS {
        let redis = Redis::start();
        let mut conn = common::connect(&redis).await;
        let mut sink = common::sink(&redis, json!({ "format": format, "tombstone_ttl": "0s" }));
        let batch = [item(Op::Insert, 0x100, 0, 1, 1), delete(0x200, 0, 1)];
        assert_eq!(write(&mut sink, &batch).await, ["delivered"; 2]);
        assert!(dump(&mut conn).await.is_empty(), "{format}");
    }
}

#[tokio::test]
async fn ttl_applies_to_rows_and_fences_and_never_to_tombstones() {
    for format in FORMATS {
        let redis = Redis::start();
        let mut conn = common::connect(&redis).await;
        let mut sink = common::sink(
            &redis,
            json!({ "format": format, "ttl": "10m", "tombstone_ttl": "1h" }),
        );
        assert_eq!(
            write(&mut sink, &[item(Op::Insert, 0x100, 0, 1, 1)]).await,
            ["delivered"]
        );
        let ttl = pttl(&mut conn, "items:1").await;
        assert!(ttl > 590_000 && ttl <= 600_000, "{format}: {ttl}");
        if format == "json" {
            let ttl = pttl(&mut conn, "items:1:sluice").await;
            assert!(ttl > 590_000 && ttl <= 600_000, "{format}: fence {ttl}");
        }
        // An update pushes the expiry forward again (here: back to the full 10 minutes).
        let _: () = redis::cmd("PEXPIRE")
            .arg("items:1")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            write(&mut sink, &[item(Op::Update, 0x200, 0, 1, 2)]).await,
            ["delivered"]
        );
        assert!(pttl(&mut conn, "items:1").await > 590_000, "{format}");
        assert_eq!(
            write(&mut sink, &[delete(0x300, 0, 1)]).await,
            ["delivered"]
        );
        let tombstone = if format == "json" {
            "items:1:sluice"
        } else {
            "items:1"
        };
        assert!(pttl(&mut conn, tombstone).await > 3_590_000, "{format}");
    }
}

/// An update of `items` row 1 at `lsn` with `title` changed and `body` unchanged (TOASTed,
/// not sent).
fn toast_update(lsn: u64) -> Arc<Event> {
    let mut e = change(
        "items",
        Op::Update,
        lsn,
        0,
        1,
        &[("title", Value::Text("new".into())), ("n", Value::Null)],
    );
    e.unchanged = vec!["body".into()];
    Arc::new(e)
}

#[tokio::test]
async fn unchanged_toast_columns_keep_their_stored_values() {
    // Stored values JSON must keep as they are: a big integer (cjson would make it a
    // float), nested objects and strings with quotes, braces and escapes.
    let body = Value::json(r#"{"words": "a \"quoted\" {brace} [x] \\ end", "big": 12345678901234567890, "list": [1, {"k": [2]}]}"#)
        .unwrap();
    for format in FORMATS {
        let redis = Redis::start();
        let mut conn = common::connect(&redis).await;
        let mut sink = common::sink(&redis, json!({ "format": format }));
        let insert = Arc::new(change(
            "items",
            Op::Insert,
            0x100,
            0,
            1,
            &[
                ("title", Value::Text("old".into())),
                ("n", Value::Int(7)),
                ("body", body.clone()),
                ("huge", Value::Int(i64::MAX)),
            ],
        ));
        assert_eq!(write(&mut sink, &[insert]).await, ["delivered"]);
        assert_eq!(
            write(&mut sink, &[toast_update(0x200)]).await,
            ["delivered"]
        );
        match format {
            "json" => {
                let stored = text(&mut conn, "items:1").await.unwrap();
                assert!(
                    stored.contains(r#""body":{"words": "a \"quoted\" {brace} [x] \\ end", "big": 12345678901234567890, "list": [1, {"k": [2]}]}"#),
                    "the body's raw text is kept: {stored}"
                );
                let d: serde_json::Value = serde_json::from_str(&stored).unwrap();
                assert_eq!(d["title"], "new");
                assert_eq!(d["n"], serde_json::Value::Null, "NULL stays null");
                assert_eq!(
                    d["huge"],
                    serde_json::Value::Null,
                    "huge was not unchanged: dropped"
                );
                assert_eq!(d["id"], 1);
            }
            _ => {
                let fields = hash(&mut conn, "items:1").await;
                assert_eq!(fields["title"], "new");
                assert!(
                    fields["body"].contains("12345678901234567890"),
                    "{fields:?}"
                );
                assert!(
                    !fields.contains_key("n"),
                    "a NULL column has no field: {fields:?}"
                );
                assert!(
                    !fields.contains_key("huge"),
                    "huge was not unchanged: dropped"
                );
            }
        }
        // The merge is fenced like any write: replaying it changes nothing.
        let merged = dump(&mut conn).await;
        assert_eq!(
            write(&mut sink, &[toast_update(0x200)]).await,
            ["delivered"]
        );
        assert_eq!(dump(&mut conn).await, merged, "{format}");
    }
}

#[tokio::test]
async fn unchanged_toast_columns_without_a_stored_row_are_rejected() {
    for format in FORMATS {
        let redis = Redis::start();
        let mut conn = common::connect(&redis).await;
        let mut sink = common::sink(&redis, json!({ "format": format }));
        let answers = common::answers(&mut sink, &[toast_update(0x200)]).await;
        match &answers[0] {
            Delivery::Rejected { reason } => {
                assert!(reason.contains("`items:1` is unknown"), "{reason}");
                assert!(reason.contains("body"), "{reason}");
                assert!(reason.contains("REPLICA IDENTITY FULL"), "{reason}");
            }
            other => panic!("{format}: expected a rejection, got {other:?}"),
        }
        assert!(
            dump(&mut conn).await.is_empty(),
            "{format}: nothing written"
        );
        // A deleted row (a tombstone) is no stored row either.
        assert_eq!(
            write(
                &mut sink,
                &[item(Op::Insert, 0x100, 0, 1, 1), delete(0x150, 0, 1)]
            )
            .await,
            ["delivered"; 2]
        );
        assert_eq!(
            write(&mut sink, &[toast_update(0x200)]).await,
            ["rejected"],
            "{format}"
        );
    }
}

#[tokio::test]
async fn unchanged_columns_come_from_a_full_before_image() {
    for format in FORMATS {
        let redis = Redis::start();
        let mut conn = common::connect(&redis).await;
        let mut sink = common::sink(&redis, json!({ "format": format }));
        let mut update = (*toast_update(0x200)).clone();
        update.before = Some(row(&[
            ("id", Value::Int(1)),
            ("title", Value::Text("old".into())),
            ("body", Value::Text("from before".into())),
        ]));
        // Nothing stored, yet nothing is missing: REPLICA IDENTITY FULL sent the body.
        assert_eq!(write(&mut sink, &[Arc::new(update)]).await, ["delivered"]);
        let body = match format {
            "json" => doc(&mut conn, "items:1").await.unwrap()["body"]
                .as_str()
                .map(str::to_string),
            _ => hash(&mut conn, "items:1").await.get("body").cloned(),
        };
        assert_eq!(body.as_deref(), Some("from before"), "{format}");
    }
}

/// An update of `items` moving row `from` to `to` at `lsn`.
fn key_change(lsn: u64, from: i64, to: i64, unchanged: bool) -> Arc<Event> {
    let mut e = change(
        "items",
        Op::Update,
        lsn,
        0,
        to,
        &[("n", Value::Int(to * 10))],
    );
    e.before = Some(row(&[("id", Value::Int(from))]));
    if unchanged {
        e.unchanged = vec!["body".into()];
    }
    Arc::new(e)
}

#[tokio::test]
async fn a_key_change_deletes_the_old_key_and_writes_the_new_one() {
    for format in FORMATS {
        let redis = Redis::start();
        let mut conn = common::connect(&redis).await;
        let mut sink = common::sink(&redis, json!({ "format": format }));
        let insert = Arc::new(change(
            "items",
            Op::Insert,
            0x100,
            0,
            1,
            &[("n", Value::Int(10)), ("body", Value::Text("kept".into()))],
        ));
        assert_eq!(
            write(&mut sink, &[insert.clone(), key_change(0x200, 1, 2, false)]).await,
            ["delivered"; 2]
        );
        assert_eq!(
            n_of(&mut conn, format, 1).await,
            None,
            "{format}: old key gone"
        );
        assert_eq!(n_of(&mut conn, format, 2).await, Some(20), "{format}");
        // The old key is tombstoned: replaying its insert does not bring it back.
        assert_eq!(
            write(&mut sink, std::slice::from_ref(&insert)).await,
            ["delivered"]
        );
        assert_eq!(n_of(&mut conn, format, 1).await, None, "{format}");

        // A move with an unchanged TOAST column takes it from the old key, which must hold
        // the row.
        match &common::answers(&mut sink, &[key_change(0x300, 8, 9, true)]).await[0] {
            Delivery::Rejected { reason } => {
                assert!(
                    reason.contains("`items:8` is unknown"),
                    "{format}: {reason}"
                )
            }
            other => panic!("{format}: nothing stored under row 8, yet {other:?}"),
        }
        assert_eq!(
            n_of(&mut conn, format, 9).await,
            None,
            "{format}: nothing written"
        );
        let insert4 = Arc::new(change(
            "items",
            Op::Insert,
            0x400,
            0,
            4,
            &[("n", Value::Int(40)), ("body", Value::Text("kept".into()))],
        ));
        assert_eq!(
            write(&mut sink, &[insert4, key_change(0x500, 4, 5, true)]).await,
            ["delivered"; 2]
        );
        let body = match format {
            "json" => doc(&mut conn, "items:5").await.unwrap()["body"]
                .as_str()
                .map(str::to_string),
            _ => hash(&mut conn, "items:5").await.get("body").cloned(),
        };
        assert_eq!(body.as_deref(), Some("kept"), "{format}");
        assert_eq!(n_of(&mut conn, format, 4).await, None, "{format}");
    }
}

#[tokio::test]
async fn truncates_are_ignored_by_default() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let mut sink = common::sink(&redis, json!({}));
    let truncate = Arc::new(testing::event("items", Op::Truncate, 0x200, 0));
    let batch = [item(Op::Insert, 0x100, 0, 1, 1), truncate.clone(), truncate];
    assert_eq!(write(&mut sink, &batch).await, ["delivered"; 3]);
    assert_eq!(n_of(&mut conn, "json", 1).await, Some(1));
}

#[tokio::test]
async fn a_truncate_can_delete_the_tables_keys_and_only_those() {
    for format in FORMATS {
        let redis = Redis::start();
        let mut conn = common::connect(&redis).await;
        let mut sink = common::sink(&redis, json!({ "format": format, "on_truncate": "delete" }));
        let mut batch: Vec<Arc<Event>> = (0..2500)
            .map(|i| item(Op::Insert, 0x100, i as u32, i, i))
            .collect();
        batch.push(Arc::new(change(
            "other",
            Op::Insert,
            0x100,
            9999,
            1,
            &[("n", Value::Int(1))],
        )));
        assert!(write(&mut sink, &batch)
            .await
            .iter()
            .all(|a| *a == "delivered"));
        let _: () = redis::cmd("SET")
            .arg("items-unrelated")
            .arg("x")
            .query_async(&mut conn)
            .await
            .unwrap();

        let truncate = Arc::new(testing::event("items", Op::Truncate, 0x200, 0));
        let after = item(Op::Insert, 0x200, 1, 7, 77);
        assert_eq!(
            write(&mut sink, &[truncate.clone(), after]).await,
            ["delivered"; 2]
        );
        let left: BTreeMap<i64, Option<i64>> = {
            let mut left = BTreeMap::new();
            for id in [0, 1, 2499, 7] {
                left.insert(id, n_of(&mut conn, format, id).await);
            }
            left
        };
        assert_eq!(
            left,
            BTreeMap::from([(0, None), (1, None), (2499, None), (7, Some(77))]),
            "{format}"
        );
        let other = match format {
            "json" => doc(&mut conn, "other:1").await.is_some(),
            _ => !hash(&mut conn, "other:1").await.is_empty(),
        };
        assert!(other, "{format}: another table's keys stay");
        assert_eq!(
            text(&mut conn, "items-unrelated").await.as_deref(),
            Some("x")
        );
        // Replaying the inserts before the truncate does not bring rows back (tombstones),
        // and replaying the truncate does not delete the row written after it.
        assert!(write(&mut sink, &batch[..10])
            .await
            .iter()
            .all(|a| *a == "delivered"));
        assert_eq!(n_of(&mut conn, format, 3).await, None, "{format}");
        assert_eq!(write(&mut sink, &[truncate]).await, ["delivered"]);
        assert_eq!(n_of(&mut conn, format, 7).await, Some(77), "{format}");
    }
}

#[tokio::test]
async fn outbox_events_are_delivered_without_a_write() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let mut sink = common::sink(&redis, json!({}));
    let mut e = testing::event("outbox", Op::Event, 0x100, 0);
    e.key = Some(row(&[("aggregate_id", Value::Text("42".into()))]));
    e.message = Some(Message {
        id: Value::Int(1),
        kind: Value::Text("OrderPaid".into()),
        aggregate_type: Value::Text("order".into()),
        aggregate_id: Value::Text("42".into()),
        payload: Value::Null,
        headers: Value::Null,
    });
    assert_eq!(write(&mut sink, &[Arc::new(e)]).await, ["delivered"]);
    assert!(dump(&mut conn).await.is_empty());
}

#[tokio::test]
async fn a_command_redis_refuses_rejects_that_event_only() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    // Somebody else's list stands where row 1 would go.
    let _: () = redis::cmd("RPUSH")
        .arg("items:1")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut sink = common::sink(&redis, json!({ "format": "hash" }));
    let batch = [
        item(Op::Insert, 0x100, 0, 1, 1),
        item(Op::Insert, 0x100, 1, 2, 2),
        item(Op::Update, 0x100, 2, 1, 3),
    ];
    let answers = common::answers(&mut sink, &batch).await;
    match &answers[0] {
        Delivery::Rejected { reason } => {
            assert!(
                reason.contains("`items:1`") && reason.contains("WRONGTYPE"),
                "{reason}"
            )
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(answers[1], Delivery::Delivered, "another key goes on");
    assert_eq!(answers[2], Delivery::Deferred, "the rest of the key waits");
    assert_eq!(n_of(&mut conn, "hash", 2).await, Some(2));

    // A document that is not JSON cannot be merged into: rejected with the script's word.
    let mut sink = common::sink(&redis, json!({ "format": "json" }));
    let _: () = redis::cmd("SET")
        .arg("items:3")
        .arg("not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut update = (*toast_update(0x200)).clone();
    update.key = Some(row(&[("id", Value::Int(3))]));
    update.after.as_mut().unwrap().0[0].value = Value::Int(3);
    match &common::answers(&mut sink, &[Arc::new(update)]).await[0] {
        Delivery::Rejected { reason } => assert!(reason.contains("not a JSON object"), "{reason}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn keyless_rows_and_bad_keys_are_rejected_before_sending() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let mut sink = common::sink(&redis, json!({ "key": "{table}:{key.sku}" }));
    let mut keyless = testing::event("log", Op::Insert, 0x100, 0);
    keyless.after = Some(row(&[("line", Value::Text("x".into()))]));
    let answers = common::answers(
        &mut sink,
        &[Arc::new(keyless), item(Op::Insert, 0x100, 1, 1, 1)],
    )
    .await;
    for answer in &answers {
        assert!(matches!(answer, Delivery::Rejected { .. }), "{answer:?}");
    }
    assert!(dump(&mut conn).await.is_empty());
}

#[tokio::test]
async fn scripts_are_loaded_again_after_a_script_flush() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let mut sink = common::sink(&redis, json!({ "format": "hash" }));
    assert_eq!(
        write(&mut sink, &[item(Op::Insert, 0x100, 0, 1, 1)]).await,
        ["delivered"]
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        write(&mut sink, &[item(Op::Update, 0x200, 0, 1, 2)]).await,
        ["delivered"]
    );
    assert_eq!(n_of(&mut conn, "hash", 1).await, Some(2));
}

#[tokio::test]
async fn check_connects_and_loads_the_script() {
    let redis = Redis::start();
    let mut sink = common::sink(&redis, json!({}));
    sink.check()
        .await
        .expect("a running server passes the check");

    let port = sluice_testkit::free_port();
    let config: sluice_redis::RedisConfig =
        serde_json::from_value(json!({ "url": format!("redis://:hunter2@127.0.0.1:{port}") }))
            .unwrap();
    let mut nobody = sluice_redis::RedisSink::new(config).unwrap();
    let e = nobody.check().await.unwrap_err();
    assert!(
        e.contains(&format!("cannot connect to redis at 127.0.0.1:{port}")),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
}

#[tokio::test]
async fn a_fence_that_is_not_a_position_rejects_that_row_only() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let _: () = redis::cmd("SET")
        .arg("items:1:sluice")
        .arg("not a position")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut sink = common::sink(&redis, json!({}));
    // One script call: the row's error is its own.
    let batch = [
        item(Op::Insert, 0x100, 0, 1, 1),
        item(Op::Insert, 0x100, 1, 2, 2),
        item(Op::Update, 0x100, 2, 1, 3),
    ];
    let answers = common::answers(&mut sink, &batch).await;
    match &answers[0] {
        Delivery::Rejected { reason } => {
            assert!(reason.contains("`items:1`"), "{reason}");
            assert!(reason.contains("is not a sluice position"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(answers[1], Delivery::Delivered, "another key goes on");
    assert_eq!(answers[2], Delivery::Deferred, "the rest of the key waits");
    assert_eq!(n_of(&mut conn, "json", 2).await, Some(2));
    assert_eq!(n_of(&mut conn, "json", 1).await, None, "not attempted");
}

#[tokio::test]
async fn events_deferred_behind_a_rejection_hold_back_only_batches_already_handed_over() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let _: () = redis::cmd("SET")
        .arg("items:1:sluice")
        .arg("not a position")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut sink = common::sink(&redis, json!({}));
    let first = [
        item(Op::Insert, 0x100, 0, 1, 1),
        item(Op::Update, 0x100, 1, 1, 2),
    ];
    let second = [item(Op::Insert, 0x200, 0, 2, 1)];
    // Handed over before the first batch's answers are in: the second waits for the
    // engine's resend of the deferred update.
    let first_answers = sink.send(&first).await;
    let second_answers = sink.send(&second).await;
    let first_answers = first_answers.await;
    assert!(
        matches!(first_answers[0], Delivery::Rejected { .. }),
        "{first_answers:?}"
    );
    assert_eq!(first_answers[1], Delivery::Deferred);
    let second_answers = second_answers.await;
    assert!(
        matches!(&second_answers[0], Delivery::Retry { reason, .. } if reason.contains("earlier batch")),
        "{second_answers:?}"
    );
    assert_eq!(n_of(&mut conn, "json", 2).await, None);

    // Handed over once the engine has the answers: it chose what to send next. With
    // `dlq.on_key: hold` it parks the deferred update behind the rejected insert and never
    // sends it again, so the sink must not wait for it.
    assert_eq!(write(&mut sink, &second).await, ["delivered"]);
    assert_eq!(n_of(&mut conn, "json", 2).await, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_driver_a_held_key_does_not_hold_the_sink() {
    use sluice_runtime::config::{DeliveryConfig, OnKey};
    use sluice_runtime::journal::Entry;
    use sluice_runtime::state::{SqliteStore, Store};
    use sluice_runtime::Lsn;
    use std::time::Duration;

    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let _: () = redis::cmd("SET")
        .arg("items:1:sluice")
        .arg("not a position")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Row 1 is rejected and its update deferred, then held by the engine (never sent
    // again); rows 2 to 11 come in later batches.
    let mut events = vec![
        item(Op::Insert, 0x100, 0, 1, 1),
        item(Op::Update, 0x100, 1, 1, 2),
    ];
    events.extend((0..10).map(|i| item(Op::Insert, 0x200, i, i64::from(i) + 2, 7)));
    let mut entries = Vec::new();
    for lsn in [0x100, 0x200] {
        let tx = events.iter().filter(|e| e.position.commit_lsn.0 == lsn);
        entries.extend(tx.map(|e| Entry::event((**e).clone())));
        entries.push(Entry::Commit {
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 0x80),
        });
    }
    let mut delivery = DeliveryConfig::default();
    delivery.batch.max_events = 2;
    delivery.batch.max_wait = Duration::ZERO;
    delivery.retry.initial = Duration::from_millis(10);
    delivery.retry.max = Duration::from_millis(50);
    delivery.retry.max_elapsed = Duration::from_secs(3);
    delivery.dlq.on_key = OnKey::Hold;
    delivery.dlq.max_ratio = 1.0;
    let store = Store::new(SqliteStore::in_memory());
    let sink = common::sink(&redis, json!({}));
    let (mut driver, journal, progress) = testing::driver(common::boxed(sink), delivery, &store);
    journal.append(entries).await;
    journal.close();
    tokio::time::timeout(Duration::from_secs(30), driver.run())
        .await
        .expect("the driver finishes")
        .expect("the sink does not stop");
    let (_, offset) = progress.sinks()[0].take_dirty().expect("an offset");
    assert_eq!(offset.position, events.last().unwrap().position);
    for id in 2..12 {
        assert_eq!(n_of(&mut conn, "json", id).await, Some(7), "row {id}");
    }
    assert_eq!(n_of(&mut conn, "json", 1).await, None);
}

#[tokio::test]
async fn a_batch_larger_than_one_call_keeps_each_keys_order() {
    for format in FORMATS {
        let redis = Redis::start();
        let mut conn = common::connect(&redis).await;
        let mut sink = common::sink(&redis, json!({ "format": format }));
        // 400 keys, each written three times far apart: more rows than one call takes.
        let mut batch = Vec::new();
        for round in 0..3i64 {
            for id in 0..400i64 {
                let index = (round * 400 + id) as u32;
                let op = if round == 0 { Op::Insert } else { Op::Update };
                batch.push(item(op, 0x100, index, id, round));
            }
        }
        let answers = write(&mut sink, &batch).await;
        assert!(answers.iter().all(|a| *a == "delivered"), "{format}");
        for id in [0, 1, 255, 256, 399] {
            assert_eq!(
                n_of(&mut conn, format, id).await,
                Some(2),
                "{format}: row {id}"
            );
        }
        // A key change ties its old and new keys, written in different calls before.
        let mut batch: Vec<Arc<Event>> = (0..300)
            .map(|id| item(Op::Update, 0x200, id as u32 + 1, id + 4, 5))
            .collect();
        let mut moved = change(
            "items",
            Op::Update,
            0x200,
            301,
            300,
            &[("n", Value::Int(7))],
        );
        moved.before = Some(row(&[("id", Value::Int(4))]));
        batch.push(Arc::new(moved));
        batch.push(item(Op::Update, 0x200, 302, 4, 9));
        let answers = write(&mut sink, &batch).await;
        assert!(answers.iter().all(|a| *a == "delivered"), "{format}");
        assert_eq!(n_of(&mut conn, format, 300).await, Some(7), "{format}");
        assert_eq!(
            n_of(&mut conn, format, 4).await,
            Some(9),
            "{format}: written again after the move"
        );
    }
}

#[tokio::test]
async fn a_call_refused_whole_answers_every_row_it_carried() {
    let redis = Redis::start();
    let mut conn = common::connect(&redis).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("noscripts")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("+@all")
        .arg("-evalsha")
        .query_async(&mut conn)
        .await
        .unwrap();
    let config = json!({ "url": format!("redis://noscripts:pw@127.0.0.1:{}", redis.port) });
    let mut sink = sluice_redis::RedisSink::new(serde_json::from_value(config).unwrap()).unwrap();
    let batch = [
        item(Op::Insert, 0x100, 0, 1, 1),
        item(Op::Insert, 0x100, 1, 2, 2),
    ];
    for answer in common::answers(&mut sink, &batch).await {
        match answer {
            Delivery::Retry { reason, .. } => {
                assert!(reason.contains("NOPERM"), "{reason}");
                assert!(!reason.contains("pw@"), "{reason}");
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }
    assert!(dump(&mut conn).await.is_empty());
}
