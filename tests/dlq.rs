//! Dead-letter queues end to end: poison events are parked with context while the sink
//! moves on, the breaker stops a sink that rejects everything, `on_key: hold` keeps a key's
//! order, and replay/purge close the loop.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_testkit::sluice::command;
use sluice_testkit::{eventually, scratch_dir, Postgres, Receiver, Respond, Sluice};

use common::{assert_per_key_order, wait_streaming};

/// A pipeline with two webhook sinks, `a` and `b`, over `items`.
fn two_sinks(name: &str, pg: &Postgres, a: &Receiver, b: &Receiver, dlq: &str) -> String {
    format!(
        "pipeline: {name}\n\
         source:\n  type: postgres\n  url: {}\n  tables: [items]\n\
         sinks:\n  a:\n    type: webhook\n    url: {}\n  b:\n    type: webhook\n    url: {}\n\
         delivery:\n  retry: {{ initial: 50ms, max: 1s }}\n  dlq: {dlq}\n\
         state: state.db\n",
        pg.url(),
        a.url(),
        b.url()
    )
}

/// Answer 422 to inserts whose id is a multiple of `every`.
fn reject_every(every: i64) -> Respond {
    Respond::With(Arc::new(move |e: &Value| {
        let id = e["after"]["id"]
            .as_i64()
            .or_else(|| e["key"]["id"].as_i64())
            .unwrap_or(1);
        if e["op"] == "insert" && id % every == 0 {
            422
        } else {
            200
        }
    }))
}

fn dlq_json(dir: &std::path::Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["dlq", "list", "pipeline.yaml", "--json"];
    all.extend_from_slice(args);
    let out = command(dir, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ids(events: &[Value]) -> HashSet<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

async fn load(pg: &Postgres, rows: i64) {
    let db = pg.client().await;
    for b in 0..rows / 1000 {
        db.batch_execute(&format!(
            "insert into items select g, 0 from generate_series({}, {}) g",
            b * 1000 + 1,
            b * 1000 + 1000
        ))
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_events_are_parked_with_context_then_replayed_and_purged() {
    let pg = Postgres::start("dlq");
    pg.client()
        .await
        .batch_execute("create table items (id int primary key, v int)")
        .await
        .unwrap();
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    a.respond(reject_every(100));
    let dir = scratch_dir("dlq");
    let mut sluice = Sluice::start(
        &dir,
        &two_sinks("dlq", &pg, &a, &b, "{ max_ratio: 0.5, window: 100 }"),
    );
    wait_streaming(&pg, "sluice_dlq").await;
    load(&pg, 100_000).await;

    eventually(
        Duration::from_secs(240),
        "100k events at b and 99k at a",
        async || (b.delivered_count() >= 100_000 && a.delivered_count() >= 99_000).then_some(()),
    )
    .await;
    let delivered_a = a.delivered();
    assert_eq!(
        delivered_a.len(),
        99_000,
        "nothing rejected is counted delivered, nothing twice"
    );
    assert_eq!(ids(&b.delivered()).len(), 100_000);
    assert!(delivered_a
        .iter()
        .all(|e| e["after"]["id"].as_i64().unwrap() % 100 != 0));
    // The sink moved on at once after each rejection: no gap over a second.
    let ok: Vec<_> = a
        .requests()
        .into_iter()
        .filter(|r| r.status == 200)
        .map(|r| r.at)
        .collect();
    let worst = ok.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(worst < Duration::from_secs(1), "a stalled for {worst:?}");

    let parked = eventually(Duration::from_secs(10), "1000 parked events", async || {
        let parked = dlq_json(&dir, &["--sink", "a"]);
        (parked.len() == 1000).then_some(parked)
    })
    .await;
    for entry in &parked {
        let original: &Value = &entry["original"];
        assert_eq!(original["after"]["id"].as_i64().unwrap() % 100, 0);
        assert_eq!(entry["event_id"], original["id"]);
        assert_eq!(entry["sink"], "a");
        assert_eq!(entry["stage"], "sink");
        assert_eq!(entry["state"], "parked");
        assert_eq!(entry["error_kind"], "rejected");
        assert!(
            entry["error"].as_str().unwrap().contains("422"),
            "{}",
            entry["error"]
        );
        assert_eq!(entry["attempts"], 1);
        // RFC 3339, and recent.
        let first = sluice_runtime::event::parse_timestamp_micros(
            entry["first_failed_at"].as_str().expect("an RFC 3339 time"),
        )
        .expect("an RFC 3339 time");
        assert!(first > 1_700_000_000_000_000, "{first}");
        assert_eq!(entry["failed"], entry["original"]);
        assert_eq!(entry["config_hash"].as_str().unwrap().len(), 16);
    }
    assert!(dlq_json(&dir, &["--sink", "b"]).is_empty());
    let show = command(
        &dir,
        &[
            "dlq",
            "show",
            "pipeline.yaml",
            parked[0]["id"].to_string().as_str(),
        ],
    );
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success() && text.contains("422") && text.contains("\"op\": \"insert\""),
        "{text}"
    );

    // Metrics and status say so.
    let status = command(&dir, &["status", "pipeline.yaml", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["sinks"][0]["dlq"], 1000);
    assert_eq!(status["sinks"][1]["dlq"], 0);

    // Fix the receiver, replay while running: all 1000 arrive, the DLQ empties.
    a.respond(Respond::Ok);
    let out = command(&dir, &["dlq", "replay", "pipeline.yaml", "--sink", "a"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1000 event(s) queued"));
    eventually(Duration::from_secs(30), "the replay", async || {
        (a.delivered_count() >= 100_000).then_some(())
    })
    .await;
    assert_eq!(ids(&a.delivered()).len(), 100_000);
    eventually(Duration::from_secs(10), "an empty DLQ", async || {
        dlq_json(&dir, &[]).is_empty().then_some(())
    })
    .await;

    // Park a few again, then purge one by entry id and the rest by sink.
    a.respond(reject_every(1));
    pg.client()
        .await
        .batch_execute("insert into items values (200001, 0), (200002, 0)")
        .await
        .unwrap();
    let parked = eventually(Duration::from_secs(20), "two parked", async || {
        let p = dlq_json(&dir, &[]);
        (p.len() == 2).then_some(p)
    })
    .await;
    let first = parked[0]["id"].to_string();
    let out = command(&dir, &["dlq", "purge", "pipeline.yaml", "--id", &first]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("purged 1"));
    assert_eq!(dlq_json(&dir, &[]).len(), 1);
    let refused = command(&dir, &["dlq", "purge", "pipeline.yaml"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "purging everything needs --all"
    );
    let out = command(&dir, &["dlq", "purge", "pipeline.yaml", "--sink", "a"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("purged 1"));
    assert!(dlq_json(&dir, &[]).is_empty());
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "log:\n{}",
        sluice.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_parking_loses_no_parked_event_and_parks_none_twice() {
    let pg = Postgres::start("dlqkill");
    pg.client()
        .await
        .batch_execute("create table items (id int primary key, v int)")
        .await
        .unwrap();
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    a.respond(reject_every(10));
    let dir = scratch_dir("dlqkill");
    let mut sluice = Sluice::start(
        &dir,
        &two_sinks("dlqkill", &pg, &a, &b, "{ max_ratio: 0.5, window: 100 }"),
    );
    wait_streaming(&pg, "sluice_dlqkill").await;
    let loader = {
        let url = pg.url();
        tokio::spawn(async move {
            let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for b in 0..30 {
                db.batch_execute(&format!(
                    "insert into items select g, 0 from generate_series({}, {}) g",
                    b * 1000 + 1,
                    b * 1000 + 1000
                ))
                .await
                .unwrap();
            }
        })
    };
    eventually(Duration::from_secs(60), "parking under way", async || {
        (a.delivered_count() >= 5_000).then_some(())
    })
    .await;
    sluice.kill9();
    sluice.restart();
    loader.await.unwrap();
    eventually(Duration::from_secs(120), "everything through", async || {
        (ids(&a.delivered()).len() >= 27_000 && ids(&b.delivered()).len() >= 30_000).then_some(())
    })
    .await;
    let parked = eventually(Duration::from_secs(10), "3000 parked", async || {
        let p = dlq_json(&dir, &["--sink", "a"]);
        (p.len() >= 3000).then_some(p)
    })
    .await;
    let parked_ids: HashSet<i64> = parked
        .iter()
        .map(|e| e["original"]["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(parked.len(), 3000, "no event parked twice");
    assert_eq!(
        parked_ids,
        (1..=30_000).filter(|i| i % 10 == 0).collect::<HashSet<_>>(),
        "no parked event lost"
    );
    assert_eq!(ids(&a.delivered()).len(), 27_000);
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_stops_a_sink_that_rejects_everything_and_the_other_goes_on() {
    let pg = Postgres::start("breaker");
    pg.client()
        .await
        .batch_execute("create table items (id int primary key, v int)")
        .await
        .unwrap();
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    a.respond(Respond::Status(400));
    let dir = scratch_dir("breaker");
    let mut sluice = Sluice::start(
        &dir,
        &two_sinks("breaker", &pg, &a, &b, "{ max_ratio: 0.5, window: 20 }"),
    );
    wait_streaming(&pg, "sluice_breaker").await;
    load(&pg, 5_000).await;
    eventually(Duration::from_secs(60), "b to get everything", async || {
        (b.delivered_count() >= 5_000).then_some(())
    })
    .await;
    let status = eventually(Duration::from_secs(20), "a to be stopped", async || {
        let out = command(&dir, &["status", "pipeline.yaml", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["sinks"][0]["state"] == "stopped").then_some(v)
    })
    .await;
    let reason = status["sinks"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("breaker"), "{reason}");
    let parked = dlq_json(&dir, &["--sink", "a"]);
    assert!(
        parked.len() > 10 && parked.len() <= 500,
        "it tripped within a batch of the window: {}",
        parked.len()
    );
    assert_eq!(status["sinks"][1]["state"], "running");
    assert!(
        sluice.is_running(),
        "the other sink keeps the pipeline running"
    );
    assert!(sluice.log().contains("breaker"));
    // The stop is not a skip: the journal on disk keeps a's events, so the slot may go on
    // (the stopped sink costs local disk, not the primary's WAL).
    let db = pg.client().await;
    let current: String = db
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    eventually(Duration::from_secs(20), "the slot to pass the load", async || {
        let row = db
            .query_one(
                "select confirmed_flush_lsn >= $1::text::pg_lsn from pg_replication_slots where slot_name = 'sluice_breaker'",
                &[&current],
            )
            .await
            .ok()?;
        row.get::<_, bool>(0).then_some(())
    })
    .await;
    let status: Value =
        serde_json::from_slice(&command(&dir, &["status", "pipeline.yaml", "--json"]).stdout)
            .unwrap();
    let position = |v: &Value| -> (u64, u64) {
        let s = v.as_str().unwrap_or_else(|| panic!("a position: {v}"));
        let (lsn, index) = s.rsplit_once(':').unwrap();
        let (hi, lo) = lsn.split_once('/').unwrap();
        let lsn =
            (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
        (lsn, index.parse().unwrap())
    };
    let first_kept = position(&status["journal"]["first"]);
    assert!(
        status["sinks"][0]["committed"].is_null()
            || first_kept <= position(&status["sinks"][0]["committed"]),
        "the journal keeps what the stopped sink has not delivered: {status}"
    );
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        1,
        "a stopped sink makes the run a failure"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_key_hold_keeps_a_keys_order_and_replay_releases_it() {
    let pg = Postgres::start("hold");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int)")
        .await
        .unwrap();
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    // Reject the insert of row 1 only.
    a.respond(Respond::With(Arc::new(|e: &Value| {
        if e["op"] == "insert" && e["after"]["id"] == 1 {
            422
        } else {
            200
        }
    })));
    let dir = scratch_dir("hold");
    let mut sluice = Sluice::start(&dir, &two_sinks("hold", &pg, &a, &b, "{ on_key: hold }"));
    wait_streaming(&pg, "sluice_hold").await;
    db.batch_execute("insert into items values (1, 0), (2, 0)")
        .await
        .unwrap();
    db.batch_execute("update items set v = 1").await.unwrap();
    db.batch_execute("update items set v = 2").await.unwrap();
    eventually(Duration::from_secs(30), "key 2 to flow", async || {
        (a.delivered().iter().filter(|e| e["key"]["id"] == 2).count() == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        a.delivered().iter().all(|e| e["key"]["id"] != 1),
        "later events of a held key wait"
    );
    let entries = dlq_json(&dir, &["--sink", "a"]);
    let states: Vec<&str> = entries
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["parked", "held", "held"]);

    a.respond(Respond::Ok);
    let head = entries[0]["event_id"].as_str().unwrap().to_string();
    let out = command(
        &dir,
        &[
            "dlq",
            "replay",
            "pipeline.yaml",
            "--sink",
            "a",
            "--id",
            &head,
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 event(s) queued"),
        "held events come along"
    );
    eventually(Duration::from_secs(20), "key 1 released", async || {
        (a.delivered().iter().filter(|e| e["key"]["id"] == 1).count() == 3).then_some(())
    })
    .await;
    let key1: Vec<i64> = a
        .delivered()
        .iter()
        .filter(|e| e["key"]["id"] == 1)
        .map(|e| e["after"]["v"].as_i64().unwrap())
        .collect();
    assert_eq!(key1, [0, 1, 2], "released in order");
    assert_per_key_order(&a.delivered());
    db.batch_execute("update items set v = 3 where id = 1")
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "key 1 flows again", async || {
        (a.delivered().iter().filter(|e| e["key"]["id"] == 1).count() == 4).then_some(())
    })
    .await;
    assert!(dlq_json(&dir, &[]).is_empty());
    assert_eq!(b.delivered_count(), 7);
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}
