//! Redis refuses a write for lack of memory (`OOM`) while the writes after it fit: nothing
//! may overtake the refused write, or it is lost (a stream entry) or wrong (a TOAST merge).
//!
//! How the fault is made: Redis counts a client's query buffer as used memory. A command
//! with a 4 MiB argument is read whole before it runs, and Redis then allocates a fresh
//! 4 MiB buffer for the client (it expects another large argument): while that command
//! runs, the server holds about 8 MiB more than before; afterwards about 4 MiB more. With
//! `maxmemory` 6 MiB above what the server held, the large write is refused and small
//! writes after it are accepted, as with a large row or envelope near `maxmemory`.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{change, connect, entries, item, set_maxmemory, used_memory, write};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use sluice_runtime::config::DeliveryConfig;
use sluice_runtime::journal::Entry;
use sluice_runtime::state::{SqliteStore, Store};
use sluice_runtime::{testing, Delivery, Event, Lsn, Op, Sink, Value};
use sluice_testkit::redis::Redis;

const MIB: usize = 1024 * 1024;

/// Leave the server 6 MiB above what it holds now: a 4 MiB write is refused, small ones
/// are not.
async fn squeeze(conn: &mut MultiplexedConnection) {
    let used = used_memory(conn).await;
    set_maxmemory(conn, used + 6 * MIB as u64).await;
}

/// An insert of `items` row `id` whose `body` is 4 MiB.
fn big(lsn: u64, index: u32, id: i64) -> Arc<Event> {
    let body = Value::Text("x".repeat(4 * MIB));
    Arc::new(change(
        "items",
        Op::Insert,
        lsn,
        index,
        id,
        &[("body", body)],
    ))
}

fn is_oom(answer: &Delivery) -> bool {
    matches!(answer, Delivery::Retry { reason, .. } if reason.contains("OOM"))
}

fn is_behind_a_retry(answer: &Delivery) -> bool {
    matches!(answer, Delivery::Retry { reason, .. } if reason.contains("earlier batch"))
}

async fn ids(conn: &mut MultiplexedConnection) -> Vec<String> {
    entries(conn, "public.items")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[tokio::test]
async fn entries_after_a_refused_one_are_not_appended_before_it() {
    let redis = Redis::start();
    let mut conn = connect(&redis).await;
    let mut sink = common::sink(&redis, json!({ "mode": "stream" }));
    // Connects and loads the script.
    let warm_up = item(Op::Insert, 0x100, 0, 1, 0);
    assert_eq!(write(&mut sink, &[warm_up]).await, ["delivered"]);
    squeeze(&mut conn).await;

    let batch = [big(0x200, 0, 2), item(Op::Insert, 0x200, 1, 3, 0)];
    let answers = common::answers(&mut sink, &batch).await;
    assert!(is_oom(&answers[0]), "{answers:?}");
    assert_eq!(answers[1], Delivery::Deferred, "not attempted: {answers:?}");
    assert_eq!(
        ids(&mut conn).await,
        ["256-0"],
        "nothing past the refused entry"
    );

    set_maxmemory(&mut conn, 0).await;
    assert_eq!(write(&mut sink, &batch).await, ["delivered"; 2]);
    assert_eq!(ids(&mut conn).await, ["256-0", "512-0", "512-65536"]);
}

#[tokio::test]
async fn a_streams_next_call_waits_for_a_refused_one() {
    let redis = Redis::start();
    let mut conn = connect(&redis).await;
    let mut sink = common::sink(&redis, json!({ "mode": "stream" }));
    assert_eq!(
        write(&mut sink, &[item(Op::Insert, 0x100, 0, 1, 0)]).await,
        ["delivered"]
    );
    squeeze(&mut conn).await;

    // 513 entries of one stream: a script call appends 512 of them (the refused 4 MiB
    // entry among them), the 513th is a second call. Sent in the same round trip, the
    // second call would fit and put the stream's top past the refused entry.
    let mut batch = vec![big(0x200, 0, 2)];
    batch.extend((1..=512u32).map(|i| item(Op::Insert, 0x200, i, i64::from(i) + 2, 0)));
    let answers = common::answers(&mut sink, &batch).await;
    assert!(is_oom(&answers[0]), "{:?}", answers[0]);
    assert_eq!(
        answers[512],
        Delivery::Deferred,
        "the second call is not sent"
    );
    assert_eq!(
        ids(&mut conn).await,
        ["256-0"],
        "nothing past the refused entry"
    );

    set_maxmemory(&mut conn, 0).await;
    let answers = common::answers(&mut sink, &batch).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");
    let ids = ids(&mut conn).await;
    assert_eq!(ids.len(), 514);
    assert_eq!(ids[1..3], ["512-0", "512-65536"]);
    assert_eq!(ids[513], format!("512-{}", 512 << 16));
}

#[tokio::test]
async fn a_batch_handed_over_behind_a_refused_one_waits_for_its_resend() {
    let redis = Redis::start();
    let mut conn = connect(&redis).await;
    let mut sink = common::sink(&redis, json!({ "mode": "stream" }));
    assert_eq!(
        write(&mut sink, &[item(Op::Insert, 0x100, 0, 1, 0)]).await,
        ["delivered"]
    );
    squeeze(&mut conn).await;

    // Both handed over before either is answered, as the engine does.
    let first = [big(0x200, 0, 2)];
    let second = [item(Op::Insert, 0x300, 0, 3, 0)];
    let first_answers = sink.send(&first).await;
    let second_answers = sink.send(&second).await;
    let (first_answers, second_answers) = (first_answers.await, second_answers.await);
    assert!(is_oom(&first_answers[0]), "{first_answers:?}");
    // Appended, it would put the stream's top past the refused entry for good.
    assert!(is_behind_a_retry(&second_answers[0]), "{second_answers:?}");
    assert_eq!(ids(&mut conn).await, ["256-0"]);

    // The engine sends the refused batch again, then the one behind it.
    set_maxmemory(&mut conn, 0).await;
    assert_eq!(write(&mut sink, &first).await, ["delivered"]);
    assert_eq!(write(&mut sink, &second).await, ["delivered"]);
    assert_eq!(ids(&mut conn).await, ["256-0", "512-0", "768-0"]);
}

#[tokio::test]
async fn a_toast_merge_behind_a_refused_insert_waits_for_it() {
    for format in ["json", "hash"] {
        let redis = Redis::start();
        let mut conn = connect(&redis).await;
        let mut sink = common::sink(&redis, json!({ "format": format }));
        assert_eq!(
            write(&mut sink, &[item(Op::Insert, 0x100, 0, 9, 0)]).await,
            ["delivered"]
        );
        squeeze(&mut conn).await;

        let insert = [big(0x200, 0, 1)];
        let mut update = change(
            "items",
            Op::Update,
            0x300,
            0,
            1,
            &[("title", Value::Text("new".into()))],
        );
        update.unchanged = vec!["body".into()];
        let update = [Arc::new(update)];
        let insert_answers = sink.send(&insert).await;
        let update_answers = sink.send(&update).await;
        let (insert_answers, update_answers) = (insert_answers.await, update_answers.await);
        assert!(is_oom(&insert_answers[0]), "{format}: {insert_answers:?}");
        // Run now, the merge would find no stored row and be rejected for good.
        assert!(
            is_behind_a_retry(&update_answers[0]),
            "{format}: {update_answers:?}"
        );

        set_maxmemory(&mut conn, 0).await;
        assert_eq!(write(&mut sink, &insert).await, ["delivered"], "{format}");
        assert_eq!(write(&mut sink, &update).await, ["delivered"], "{format}");
        let (title, body) = match format {
            "json" => {
                let doc = common::doc(&mut conn, "items:1").await.unwrap();
                (doc["title"].clone(), doc["body"].as_str().map(str::len))
            }
            _ => {
                let fields = common::hash(&mut conn, "items:1").await;
                (json!(fields["title"]), fields.get("body").map(String::len))
            }
        };
        assert_eq!(title, "new", "{format}");
        assert_eq!(body, Some(4 * MIB), "{format}: the body is kept");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_driver_no_entry_is_lost() {
    let redis = Redis::start();
    let mut conn = connect(&redis).await;
    let mut sink = common::sink(&redis, json!({ "mode": "stream" }));
    assert_eq!(
        write(&mut sink, &[item(Op::Insert, 0x100, 0, 0, 0)]).await,
        ["delivered"]
    );

    // Three transactions of 20 changes; the second starts with a 4 MiB row.
    let mut events: Vec<Arc<Event>> = Vec::new();
    for tx in 0..3u64 {
        let lsn = 0x1000 + tx * 0x100;
        for i in 0..20u32 {
            let id = (tx * 20) as i64 + i64::from(i) + 1;
            events.push(match (tx, i) {
                (1, 0) => big(lsn, i, id),
                _ => item(Op::Insert, lsn, i, id, 0),
            });
        }
    }
    let mut entries_in = Vec::new();
    for chunk in events.chunks(20) {
        entries_in.extend(chunk.iter().map(|e| Entry::event((**e).clone())));
        entries_in.push(Entry::Commit {
            commit_lsn: chunk[0].position.commit_lsn,
            end_lsn: Lsn(chunk[0].position.commit_lsn.0 + 0x80),
        });
    }
    let mut delivery = DeliveryConfig::default();
    delivery.batch.max_events = 10;
    delivery.batch.max_wait = Duration::ZERO;
    delivery.retry.initial = Duration::from_millis(10);
    delivery.retry.max = Duration::from_millis(50);
    delivery.retry.max_elapsed = Duration::from_secs(120);
    let store = Store::new(SqliteStore::in_memory());
    let (driver, journal, progress) = testing::driver(common::boxed(sink), delivery, &store);
    squeeze(&mut conn).await;
    journal.append(entries_in).await;
    journal.close();
    let task = tokio::spawn(async move {
        let mut driver = driver;
        driver.run().await
    });

    // Let it be refused a few times, with the batches behind it in flight, then make room.
    let counters = progress.sinks()[0].clone();
    sluice_testkit::eventually(Duration::from_secs(30), "retries", async || {
        (counters.counters.retries.load(Ordering::Relaxed) >= 6).then_some(())
    })
    .await;
    set_maxmemory(&mut conn, 0).await;
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the driver finishes once there is room")
        .unwrap()
        .expect("no stop");
    let (_, offset) = counters.take_dirty().expect("an offset");
    assert_eq!(offset.position, events.last().unwrap().position);

    let mut expected = vec!["256-0".to_string()];
    for e in &events {
        expected.push(format!(
            "{}-{}",
            e.position.commit_lsn.0,
            e.position.index << 16
        ));
    }
    assert_eq!(
        ids(&mut conn).await,
        expected,
        "every entry, once, in order"
    );
}
