//! Round trips through a real PostgreSQL and a real HTTP receiver: every operation, every
//! common column type, TOAST, idle slots, signatures and a clean shutdown.

mod common;
use sluice_testkit as harness;

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use common::{assert_per_key_order, wait_delivered, wait_streaming, webhook_pipeline};
use harness::{eventually, scratch_dir, Postgres, Receiver, Sluice};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread")]
async fn insert_update_delete_truncate_round_trip_signed() {
    let pg = Postgres::start("roundtrip");
    let db = pg.client().await;
    db.batch_execute(
        "create table orders (id int primary key, status text not null, total numeric(10,2));
         create table customers (id int primary key, email text);",
    )
    .await
    .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("roundtrip");
    let yaml = webhook_pipeline(
        "rt",
        &pg,
        &["public.orders", "customers"],
        &rx.url(),
        &format!("    secret: {SECRET}\n"),
        "",
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_rt").await;

    db.batch_execute(
        "begin;
         insert into orders values (1, 'new', 19.90), (2, 'new', 5);
         insert into customers values (7, 'a@example.com');
         commit;
         update orders set status = 'paid' where id = 1;
         update orders set id = 3 where id = 2;
         delete from orders where id = 3;
         truncate orders, customers;",
    )
    .await
    .unwrap();

    let arrived = wait_delivered(&rx, 8, &sluice).await;
    // Different keys are delivered concurrently; per key (and around a truncate) the
    // stream order holds.
    assert_per_key_order(&arrived);
    let truncate_at = arrived.iter().position(|e| e["op"] == "truncate").unwrap();
    assert_eq!(
        truncate_at, 6,
        "a truncate waits for every earlier event: {arrived:?}"
    );
    let mut got = arrived.clone();
    got.sort_by_key(common::position);
    let ops: Vec<(&str, &str)> = got
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap(),
                e["source"]["table"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("insert", "orders"),
            ("insert", "orders"),
            ("insert", "customers"),
            ("update", "orders"),
            ("update", "orders"),
            ("delete", "orders"),
            ("truncate", "orders"),
            ("truncate", "customers"),
        ]
    );
    assert_eq!(got[0]["key"], json!({"id": 1}));
    assert_eq!(
        got[0]["after"],
        json!({"id": 1, "status": "new", "total": "19.90"})
    );
    assert_eq!(got[0]["before"], Value::Null);
    assert_eq!(got[0]["source"]["pipeline"], "rt");
    assert_eq!(got[0]["source"]["schema"], "public");
    // The three inserts share a transaction: same commit LSN, indices 0, 1, 2.
    let ids: Vec<&str> = got[..3].iter().map(|e| e["id"].as_str().unwrap()).collect();
    let commit = got[0]["source"]["commit_lsn"].as_str().unwrap();
    assert_eq!(
        ids,
        [
            format!("{commit}:0"),
            format!("{commit}:1"),
            format!("{commit}:2")
        ]
    );
    assert!(got[0]["source"]["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(got[3]["after"]["status"], "paid");
    assert_eq!(
        got[3]["before"],
        Value::Null,
        "default identity: no before on a non-key update"
    );
    assert_eq!(
        got[4]["key"],
        json!({"id": 3}),
        "key change: the event is keyed by the new key"
    );
    assert_eq!(
        got[4]["before"],
        json!({"id": 2}),
        "key change: before carries the old key"
    );
    assert_eq!(got[5]["before"], json!({"id": 3}));
    assert_eq!(got[5]["after"], Value::Null);
    assert_eq!(got[6]["key"], Value::Null);

    // Standard Webhooks: webhook-id is the event id; the signature verifies.
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    for r in rx.requests() {
        let id = r.headers["webhook-id"].to_str().unwrap();
        let ts = r.headers["webhook-timestamp"].to_str().unwrap();
        assert_eq!(id, r.body["id"].as_str().unwrap());
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(&r.raw);
        let expected = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(r.headers["webhook-signature"].to_str().unwrap(), expected);
    }
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "log:\n{}",
        sluice.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_common_column_type_has_the_spec_value() {
    let pg = Postgres::start("types");
    let db = pg.client().await;
    db.batch_execute(
        "create type mood as enum ('sad', 'happy');
         create domain posint as int check (value > 0);
         create table t (
           id int primary key, i2 smallint, i8 bigint, num numeric(12,4), num_nan numeric,
           r real, d double precision, d_inf double precision, b boolean,
           txt text, vc varchar(10), ch char(3), j json, jb jsonb, by bytea, u uuid,
           dt date, tm time, ttz timetz, ts timestamp, tstz timestamptz, tstz_inf timestamptz,
           ia int[], ta text[], m2 int[][], mood mood, moods mood[], dom posint,
           iv interval, ip inet, nul text);",
    )
    .await
    .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("types");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("types", &pg, &["t"], &rx.url(), "", ""),
    );
    wait_streaming(&pg, "sluice_types").await;
    db.batch_execute(
        r#"insert into t values (
           1, -32768, 9007199254740993, 12345678.1234, 'NaN',
           1.5, 0.1, '-Infinity', true,
           'héllo "q"', 'abc', 'ab', '{"a": [1, 2]}', '{"b": {"c": null}}', '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
           '2026-11-22', '06:00:00.5', '06:00:00+05:30', '2026-11-22 06:00:00.123456', '2026-11-22 06:00:00.123456+00', 'infinity',
           '{1,2,NULL}', '{"a b","NULL",NULL,"q\"x"}', '{{1,2},{3,4}}', 'happy', '{sad,happy}', 5,
           '1 day 2 hours', '10.0.0.1/8', NULL)"#,
    )
    .await
    .unwrap();
    let got = wait_delivered(&rx, 1, &sluice).await;
    let after = &got[0]["after"];
    let expected = json!({
        "id": 1, "i2": -32768, "i8": 9007199254740993i64, "num": "12345678.1234", "num_nan": "NaN",
        "r": 1.5, "d": 0.1, "d_inf": "-Infinity", "b": true,
        "txt": "héllo \"q\"", "vc": "abc", "ch": "ab ", "j": {"a": [1, 2]}, "jb": {"b": {"c": null}},
        "by": "AP8Q", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "dt": "2026-11-22", "tm": "06:00:00.5", "ttz": "06:00:00+05:30",
        "ts": "2026-11-22T06:00:00.123456", "tstz": "2026-11-22T06:00:00.123456Z", "tstz_inf": "infinity",
        "ia": [1, 2, null], "ta": ["a b", "NULL", null, "q\"x"], "m2": [[1, 2], [3, 4]],
        "mood": "happy", "moods": ["sad", "happy"], "dom": 5,
        "iv": "P1DT2H", "ip": "10.0.0.1/8", "nul": null
    });
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&after[k], v, "column {k}");
    }
    assert_eq!(
        after.as_object().unwrap().len(),
        expected.as_object().unwrap().len()
    );
    sluice.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_toast_columns_are_listed_never_sent_as_placeholders() {
    let pg = Postgres::start("toast");
    let db = pg.client().await;
    db.batch_execute(
        "create table docs (id int primary key, body text, n int);
         alter table docs alter column body set storage external;
         insert into docs values (1, repeat('x', 10000), 1);",
    )
    .await
    .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("toast");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("toast", &pg, &["docs"], &rx.url(), "", ""),
    );
    wait_streaming(&pg, "sluice_toast").await;
    db.batch_execute(
        "update docs set n = 2 where id = 1; update docs set body = 'short', n = 3 where id = 1;",
    )
    .await
    .unwrap();
    let got = wait_delivered(&rx, 2, &sluice).await;
    assert_eq!(got[0]["unchanged"], json!(["body"]));
    assert_eq!(
        got[0]["after"],
        json!({"id": 1, "n": 2}),
        "no placeholder for the TOASTed column"
    );
    assert_eq!(got[1]["unchanged"], json!([]));
    assert_eq!(got[1]["after"]["body"], "short");
    sluice.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_to_unpublished_tables_do_not_hold_wal() {
    let pg = Postgres::start("idle");
    let db = pg.client().await;
    db.batch_execute(
        "create table watched (id int primary key); create table busy (id int, pad text);",
    )
    .await
    .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("idle");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("idle", &pg, &["watched"], &rx.url(), "", ""),
    );
    wait_streaming(&pg, "sluice_idle").await;
    db.batch_execute(
        "insert into busy select g, repeat('p', 200) from generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    let target: String = db
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    eventually(Duration::from_secs(30), "confirmed_flush_lsn to pass the unpublished writes", async || {
        let row = db
            .query_one(
                "select confirmed_flush_lsn >= $1::text::pg_lsn from pg_replication_slots where slot_name = 'sluice_idle'",
                &[&target],
            )
            .await
            .ok()?;
        row.get::<_, bool>(0).then_some(())
    })
    .await;
    assert_eq!(rx.delivered_count(), 0);
    sluice.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_commits_and_a_restart_delivers_nothing_twice() {
    let pg = Postgres::start("drain");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("drain");
    let yaml = webhook_pipeline("drain", &pg, &["items"], &rx.url(), "", "");
    std::fs::write(dir.join("pipeline.yaml"), &yaml).unwrap();
    let out = harness::sluice::command(&dir, &["validate", "pipeline.yaml", "--connect"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("wal_level=logical") && stdout.contains("sink hook: ok"),
        "{stdout}"
    );
    // The journal's folder, its budget and what the server keeps once it is full.
    assert!(
        stdout.contains("journal: state.journal can be created")
            && stdout.contains("10.0 GiB behind (journal.max_bytes)")
            && stdout.contains("without limit (max_slot_wal_keep_size = -1)"),
        "{stdout}"
    );
    let slots: i64 = db
        .query_one("select count(*) from pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "validate creates nothing");
    let bad = yaml.replace("tables: [items]", "tables: [items, nope]");
    std::fs::write(dir.join("bad.yaml"), bad).unwrap();
    let out = harness::sluice::command(&dir, &["validate", "bad.yaml", "--connect"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("public.nope"),
        "the missing table is named"
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_drain").await;
    db.batch_execute("insert into items select g, 0 from generate_series(1, 2000) g")
        .await
        .unwrap();
    let _ = wait_delivered(&rx, 2000, &sluice).await;
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "log:\n{}",
        sluice.log()
    );
    let committed = sluice
        .committed("state.db", "hook")
        .expect("an offset was committed");
    let last = rx.delivered().iter().map(common::position).max().unwrap();
    assert_eq!(
        committed, last,
        "the drained offset is the last delivered event"
    );

    sluice.restart();
    wait_streaming(&pg, "sluice_drain").await;
    db.batch_execute("insert into items values (5000, 1)")
        .await
        .unwrap();
    let got = wait_delivered(&rx, 2001, &sluice).await;
    assert_eq!(got[2000]["key"], json!({"id": 5000}));
    let status = harness::sluice::command(&dir, &["status", "pipeline.yaml", "--json"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["slot"]["exists"], true);
    assert_eq!(report["sinks"][0]["name"], "hook");
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);

    let out = harness::sluice::command(&dir, &["teardown", "pipeline.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slots: i64 = db
        .query_one("select count(*) from pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    let pubs: i64 = db
        .query_one("select count(*) from pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((slots, pubs), (0, 0), "teardown drops slot and publication");
}
