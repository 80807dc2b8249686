//! Scenarios that break something mid-stream: kill -9 of sluice, a PostgreSQL restart, a
//! receiver that answers 503, a receiver that goes away. Nothing committed may be lost,
//! per-key order must hold, and nothing at or before a committed offset comes again.

mod common;
use sluice_testkit as harness;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use common::{assert_per_key_order, position, wait_streaming, webhook_pipeline};
use harness::{eventually, scratch_dir, Postgres, Receiver, Respond, Sluice};

const BATCHED: &str =
    "    batch: true\n    delivery:\n      batch: { max_events: 500, max_wait: 20ms }\n";

/// Wait until `n` distinct events were acknowledged; returns every acknowledged envelope.
async fn wait_distinct(rx: &Receiver, n: usize, timeout: Duration, sluice: &Sluice) -> Vec<Value> {
    let started = std::time::Instant::now();
    loop {
        let got = rx.delivered();
        let distinct: HashSet<&str> = got.iter().filter_map(|e| e["id"].as_str()).collect();
        if distinct.len() >= n {
            assert_eq!(
                distinct.len(),
                n,
                "more distinct events than committed changes"
            );
            return got;
        }
        if started.elapsed() > timeout {
            panic!(
                "only {} of {n} distinct events after {timeout:?}; log:\n{}",
                distinct.len(),
                sluice.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every (id, v) the load produced must have arrived: `rows` inserted with v = 0, then
/// every tenth row updated to v = 1..=updates.
fn assert_all_rows(events: &[Value], rows: i64, updates: i64) {
    let seen: HashSet<(i64, i64)> = events
        .iter()
        .map(|e| {
            (
                e["after"]["id"].as_i64().unwrap(),
                e["after"]["v"].as_i64().unwrap(),
            )
        })
        .collect();
    for id in 1..=rows {
        assert!(seen.contains(&(id, 0)), "insert of row {id} is missing");
        if id % 10 == 0 {
            for v in 1..=updates {
                assert!(seen.contains(&(id, v)), "update {v} of row {id} is missing");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_a_100k_row_load_loses_nothing_and_repeats_nothing_committed() {
    let pg = Postgres::start("kill9");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int not null)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("kill9");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("kill9", &pg, &["items"], &rx.url(), BATCHED, ""),
    );
    wait_streaming(&pg, "sluice_kill9").await;

    let load = {
        let db = pg.client().await;
        tokio::spawn(async move {
            for b in 0..100 {
                let sql = format!(
                    "insert into items select g, 0 from generate_series({}, {}) g",
                    b * 1000 + 1,
                    b * 1000 + 1000
                );
                db.batch_execute(&sql).await.unwrap();
            }
            for _ in 0..3 {
                db.batch_execute("update items set v = v + 1 where id % 10 = 0")
                    .await
                    .unwrap();
            }
        })
    };
    eventually(
        Duration::from_secs(120),
        "20k deliveries before the kill",
        async || (rx.delivered_count() >= 20_000).then_some(()),
    )
    .await;
    sluice.kill9();
    // A batch the killed process had already written to its socket still reaches the
    // receiver; let it land so it counts as the first run's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first_run = rx.delivered().len();
    let committed = sluice
        .committed("state.db", "hook")
        .expect("offsets were committed before the kill");
    assert!(
        !load.is_finished() || first_run < 130_000,
        "the kill must land mid-load"
    );

    sluice.restart();
    load.await.unwrap();
    let all = wait_distinct(&rx, 130_000, Duration::from_secs(300), &sluice).await;
    assert_all_rows(&all, 100_000, 3);
    let (run1, run2) = all.split_at(first_run);
    assert_per_key_order(run1);
    assert_per_key_order(run2);
    for e in run2 {
        assert!(
            position(e) > committed,
            "event {} is at or before the committed offset {committed:?}",
            e["id"]
        );
    }
    assert_eq!(
        sluice.terminate(Duration::from_secs(60)),
        0,
        "log:\n{}",
        sluice.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_mid_stream_resumes_without_loss_or_duplicates() {
    let pg = Postgres::start("pgrestart");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int not null)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("pgrestart");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("pgrestart", &pg, &["items"], &rx.url(), BATCHED, ""),
    );
    wait_streaming(&pg, "sluice_pgrestart").await;
    for b in 0..30 {
        let sql = format!(
            "insert into items select g, 0 from generate_series({}, {}) g",
            b * 1000 + 1,
            b * 1000 + 1000
        );
        db.batch_execute(&sql).await.unwrap();
    }
    eventually(
        Duration::from_secs(60),
        "5k deliveries before the restart",
        async || (rx.delivered_count() >= 5_000).then_some(()),
    )
    .await;
    pg.restart();
    let db = pg.client().await;
    for b in 30..60 {
        let sql = format!(
            "insert into items select g, 0 from generate_series({}, {}) g",
            b * 1000 + 1,
            b * 1000 + 1000
        );
        db.batch_execute(&sql).await.unwrap();
    }
    let all = wait_distinct(&rx, 60_000, Duration::from_secs(180), &sluice).await;
    assert_all_rows(&all, 60_000, 0);
    assert_eq!(
        all.len(),
        60_000,
        "a reconnect re-reads the WAL but must not deliver anything twice"
    );
    assert_per_key_order(&all);
    assert!(
        sluice.log().contains("reconnecting"),
        "the source noticed the restart"
    );
    assert!(sluice.is_running());
    assert_eq!(
        sluice.terminate(Duration::from_secs(60)),
        0,
        "log:\n{}",
        sluice.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_answering_503_for_10s_is_retried_and_nothing_is_skipped() {
    let pg = Postgres::start("unavailable");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int not null)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    rx.respond(Respond::Status(503));
    let dir = scratch_dir("unavailable");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("unavail", &pg, &["items"], &rx.url(), "", ""),
    );
    wait_streaming(&pg, "sluice_unavail").await;
    for b in 0..10 {
        let sql = format!(
            "insert into items select g, 0 from generate_series({}, {}) g",
            b * 100 + 1,
            b * 100 + 100
        );
        db.batch_execute(&sql).await.unwrap();
    }
    db.batch_execute("update items set v = 1 where id % 10 = 0")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(rx.delivered_count(), 0);
    assert!(
        rx.requests().len() > 10,
        "deliveries were attempted and retried"
    );
    assert!(
        sluice.is_running(),
        "a transient error never stops the sink; log:\n{}",
        sluice.log()
    );
    rx.respond(Respond::Ok);
    let all = wait_distinct(&rx, 1_100, Duration::from_secs(60), &sluice).await;
    assert_all_rows(&all, 1_000, 1);
    assert_per_key_order(&all);
    assert_eq!(all.len(), 1_100, "nothing delivered twice");
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_taken_down_and_brought_back_gets_everything_in_order() {
    let pg = Postgres::start("sinkdown");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int not null)")
        .await
        .unwrap();
    let mut rx = Receiver::start().await;
    let dir = scratch_dir("sinkdown");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("sinkdown", &pg, &["items"], &rx.url(), "", ""),
    );
    wait_streaming(&pg, "sluice_sinkdown").await;
    db.batch_execute("insert into items select g, 0 from generate_series(1, 100) g")
        .await
        .unwrap();
    wait_distinct(&rx, 100, Duration::from_secs(30), &sluice).await;
    rx.stop().await;
    db.batch_execute("update items set v = 1; update items set v = 2;")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    rx.start_again().await;
    let all = wait_distinct(&rx, 300, Duration::from_secs(60), &sluice).await;
    assert_all_rows(&all, 100, 0);
    let last_v: HashMap<i64, i64> = all
        .iter()
        .map(|e| {
            (
                e["after"]["id"].as_i64().unwrap(),
                e["after"]["v"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        last_v.values().all(|v| *v == 2),
        "per key, the last delivery is the last update"
    );
    assert_per_key_order(&all);
    assert!(sluice.log().contains("retrying"));
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}
