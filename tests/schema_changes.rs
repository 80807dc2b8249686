//! Schema changes while sluice streams, through a real PostgreSQL, the real binary and a
//! webhook receiver: a captured table renamed mid-load (followed, or a loud stop that a
//! restart with `follow` resumes without loss), moved to another schema, dropped and
//! created again (added back to the publication, the gap reported), with and without the
//! DDL event trigger (a superuser installs it; an ordinary role falls back on Relation
//! messages and a periodic check), DDL as events, and column changes under load arriving
//! with the shape of their commit.

mod common;
use sluice_testkit as harness;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_postgres::Client;

use common::{http_get, position, sample, try_get, wait_delivered, wait_streaming};
use harness::{eventually, free_port, scratch_dir, Postgres, Receiver, Sluice};

/// One POST per batch: the receiver sees events in journal order.
const BATCHED: &str =
    "    batch: true\n    delivery:\n      batch: { max_events: 1000, max_wait: 20ms }\n";

/// A pipeline over `tables` as `user` (URL of `pg` with that user), batched webhook to
/// `rx`, extra `source:` keys, and the admin server on `port`.
fn pipeline(
    name: &str,
    pg: &Postgres,
    user: &str,
    tables: &str,
    rx: &Receiver,
    source_keys: &str,
    port: u16,
) -> String {
    format!(
        "pipeline: {name}\n\
         source:\n  type: postgres\n  url: postgres://{user}@127.0.0.1:{}/postgres\n  tables: [{tables}]\n{source_keys}\
         sinks:\n  hook:\n    type: webhook\n    url: {}\n{BATCHED}\
         delivery:\n  retry: {{ initial: 50ms, max: 1s }}\n\
         state: state.db\n\
         admin: 127.0.0.1:{port}\n",
        pg.port,
        rx.url()
    )
}

/// Wait until `sink`'s committed offset in `state.db` is at least `at`.
async fn wait_committed(sluice: &Sluice, sink: &str, at: (u64, u32)) {
    let what = format!("sink {sink} to commit {at:?}");
    eventually(Duration::from_secs(60), &what, async || {
        sluice.committed("state.db", sink).filter(|c| *c >= at)
    })
    .await;
}

/// Wait until the admin server answers.
async fn wait_ready(port: u16) {
    eventually(
        Duration::from_secs(60),
        "/readyz to answer 200",
        async || matches!(try_get(port, "/readyz").await, Ok((200, _))).then_some(()),
    )
    .await;
}

/// The notices `/status` shows, as (kind, message).
async fn notices(sluice: &Sluice, port: u16) -> Vec<(String, String)> {
    let (code, body) = http_get(sluice, port, "/status").await;
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    status["source"]["notices"]
        .as_array()
        .expect("source.notices in /status")
        .iter()
        .map(|n| {
            (
                n["kind"].as_str().unwrap().to_string(),
                n["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Wait for a notice of `kind`; returns its message.
async fn wait_notice(sluice: &Sluice, port: u16, kind: &str) -> String {
    let what = format!("a {kind} notice");
    eventually(Duration::from_secs(60), &what, async || {
        notices(sluice, port)
            .await
            .into_iter()
            .find(|(k, _)| k == kind)
            .map(|(_, m)| m)
    })
    .await
}

/// `sluice_source_notices_total{kind}` from `/metrics`.
async fn notice_count(sluice: &Sluice, port: u16, kind: &str) -> Option<f64> {
    let (_, metrics) = http_get(sluice, port, "/metrics").await;
    sample(
        &metrics,
        &format!("sluice_source_notices_total{{kind=\"{kind}\"}}"),
    )
}

/// Insert `from..=to` into `table` (columns id, v) in transactions of 1000 rows.
async fn load(db: &Client, table: &str, from: i32, to: i32) {
    let mut start = from;
    while start <= to {
        let end = (start + 999).min(to);
        db.batch_execute(&format!(
            "insert into {table} select g, 0 from generate_series({start}, {end}) g"
        ))
        .await
        .unwrap();
        start = end + 1;
    }
}

fn table_of(e: &Value) -> (String, String) {
    (
        e["source"]["schema"].as_str().unwrap_or("").to_string(),
        e["source"]["table"].as_str().unwrap_or("").to_string(),
    )
}

fn ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e["op"] == "insert")
        .map(|e| e["after"]["id"].as_i64().unwrap())
        .collect()
}

/// A role that is not a superuser (so it may not install the DDL event trigger), owns
/// `tables` and may create the publication.
async fn ordinary_role(db: &Client, tables: &[&str]) {
    db.batch_execute(
        "create role app login replication; grant create on database postgres to app;
         grant create on schema public to app",
    )
    .await
    .unwrap();
    for t in tables {
        db.batch_execute(&format!("alter table {t} owner to app"))
            .await
            .unwrap();
    }
}

// ─── renames ─────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread")]
async fn a_table_renamed_mid_load_keeps_being_captured_under_its_new_name() {
    let pg = Postgres::start("rename");
    let db = pg.client().await;
    db.batch_execute("create table t (id int primary key, v int)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("rename");
    let port = free_port();
    let mut sluice = Sluice::start(
        &dir,
        &pipeline("rename", &pg, "postgres", "public.t", &rx, "", port),
    );
    wait_streaming(&pg, "sluice_rename").await;

    let loader = {
        let db = pg.client().await;
        tokio::spawn(async move {
            load(&db, "t", 1, 10_000).await;
            db.batch_execute("alter table t rename to t2")
                .await
                .unwrap();
            load(&db, "t2", 10_001, 20_000).await;
        })
    };
    loader.await.unwrap();
    let got = wait_delivered(&rx, 20_000, &sluice).await;
    assert_eq!(ids(&got), (1..=20_000).collect::<Vec<i64>>());
    for e in &got {
        let id = e["after"]["id"].as_i64().unwrap();
        let expected = if id <= 10_000 { "t" } else { "t2" };
        assert_eq!(table_of(e), ("public".into(), expected.into()), "row {id}");
    }
    let message = wait_notice(&sluice, port, "table_renamed").await;
    assert!(
        message.contains("public.t was renamed to public.t2"),
        "{message}"
    );
    assert!(
        message.contains("{table}"),
        "says templates change: {message}"
    );
    assert!(
        sluice.log().contains("was renamed to public.t2") && sluice.log().contains("WARN"),
        "the warning is logged:\n{}",
        sluice.log()
    );
    assert_eq!(
        notice_count(&sluice, port, "table_renamed").await,
        Some(1.0)
    );
    assert!(
        got.iter().all(|e| e["op"] == "insert"),
        "without ddl_events, no schema change is delivered"
    );
    assert_eq!(sluice.terminate(Duration::from_secs(60)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_rename_stop_stops_loudly_and_a_restart_with_follow_loses_nothing() {
    let pg = Postgres::start("rename_stop");
    let db = pg.client().await;
    db.batch_execute("create table t (id int primary key, v int)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("rename_stop");
    let port = free_port();
    let stop = pipeline(
        "rename_stop",
        &pg,
        "postgres",
        "public.t",
        &rx,
        "  on_rename: stop\n",
        port,
    );
    let mut sluice = Sluice::start(&dir, &stop);
    wait_streaming(&pg, "sluice_rename_stop").await;
    load(&db, "t", 1, 1000).await;
    let first = wait_delivered(&rx, 1000, &sluice).await;
    wait_committed(&sluice, "hook", position(&first[999])).await;

    db.batch_execute("alter table t rename to t2")
        .await
        .unwrap();
    load(&db, "t2", 1001, 2000).await;
    let code = sluice.wait(Duration::from_secs(60));
    let log = sluice.log();
    assert_eq!(code, 1, "a stop exits 1; log:\n{log}");
    assert!(
        log.contains("captured table public.t was renamed to public.t2")
            && log.contains("on_rename is `stop`"),
        "the message names both names:\n{log}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.delivered().len(), 1000, "nothing under the new name");

    // The same file with `follow`: everything after the rename arrives, nothing twice.
    std::fs::write(
        dir.join("pipeline.yaml"),
        stop.replace("  on_rename: stop\n", "  on_rename: follow\n"),
    )
    .unwrap();
    sluice.restart();
    let got = wait_delivered(&rx, 2000, &sluice).await;
    assert_eq!(ids(&got), (1..=2000).collect::<Vec<i64>>());
    assert!(got[1000..].iter().all(|e| table_of(e).1 == "t2"));
    let message = wait_notice(&sluice, port, "table_renamed").await;
    assert!(
        message.contains("public.t was renamed to public.t2"),
        "{message}"
    );
    assert_eq!(sluice.terminate(Duration::from_secs(60)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_moved_to_another_schema_is_followed_without_the_trigger() {
    let pg = Postgres::start("move");
    let db = pg.client().await;
    db.batch_execute("create table t (id int primary key, v int)")
        .await
        .unwrap();
    ordinary_role(&db, &["t"]).await;
    let rx = Receiver::start().await;
    let dir = scratch_dir("move");
    let port = free_port();
    let mut sluice = Sluice::start(
        &dir,
        &pipeline("move", &pg, "app", "public.t", &rx, "", port),
    );
    wait_streaming(&pg, "sluice_move").await;
    assert!(
        sluice
            .log()
            .contains("the DDL event trigger is not installed")
            && sluice.log().contains("CREATE EVENT TRIGGER"),
        "an ordinary role gets the SQL for an administrator:\n{}",
        sluice.log()
    );
    let app = tokio_postgres::connect(
        &format!("postgres://app@127.0.0.1:{}/postgres", pg.port),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(app.1);
    let app = app.0;
    load(&app, "t", 1, 500).await;
    app.batch_execute("create schema archive; alter table t set schema archive")
        .await
        .unwrap();
    load(&app, "archive.t", 501, 1000).await;
    let got = wait_delivered(&rx, 1000, &sluice).await;
    for e in &got {
        let id = e["after"]["id"].as_i64().unwrap();
        let schema = if id <= 500 { "public" } else { "archive" };
        assert_eq!(table_of(e), (schema.into(), "t".into()), "row {id}");
    }
    let message = wait_notice(&sluice, port, "table_renamed").await;
    assert!(
        message.contains("public.t was renamed to archive.t"),
        "{message}"
    );
    assert_eq!(sluice.terminate(Duration::from_secs(60)), 0);
}

// ─── drop and create again ───────────────────────────────────────────────────────────────

/// Drop `t`, create it again with a row inserted in the same transaction (before anyone
/// can add it to the publication: that row is in the gap), wait for the
/// `publication_gap` notice, then insert rows that must be captured.
async fn drop_and_create_again(app: &Client, rx: &Receiver, sluice: &Sluice, port: u16) -> String {
    load(app, "t", 1, 100).await;
    wait_delivered(rx, 100, sluice).await;
    app.batch_execute("drop table t").await.unwrap();
    app.batch_execute(
        "begin;
         create table t (id int primary key, v int);
         insert into t values (5000, 0);
         commit;",
    )
    .await
    .unwrap();
    let message = wait_notice(sluice, port, "publication_gap").await;
    load(app, "t", 6001, 6100).await;
    let got = wait_delivered(rx, 200, sluice).await;
    let expected: Vec<i64> = (1..=100).chain(6001..=6100).collect();
    assert_eq!(
        ids(&got),
        expected,
        "the rows after the re-add, not the gap's"
    );
    assert!(got
        .iter()
        .all(|e| table_of(e) == ("public".into(), "t".into())));
    message
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_dropped_and_created_again_is_added_back_and_the_gap_dated_by_the_trigger() {
    let pg = Postgres::start("recreate");
    let db = pg.client().await;
    db.batch_execute("create table t (id int primary key, v int)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("recreate");
    let port = free_port();
    let mut sluice = Sluice::start(
        &dir,
        &pipeline("recreate", &pg, "postgres", "public.t", &rx, "", port),
    );
    wait_streaming(&pg, "sluice_recreate").await;
    wait_ready(port).await;
    let message = drop_and_create_again(&db, &rx, &sluice, port).await;
    assert!(
        message.contains("captured table public.t was dropped and created again"),
        "{message}"
    );
    assert!(
        message.contains("from the DROP TABLE committed at LSN"),
        "the trigger dates the drop: {message}"
    );
    assert!(
        message.contains("sluice backfill") && message.contains("--table public.t"),
        "{message}"
    );
    assert_eq!(
        notice_count(&sluice, port, "publication_gap").await,
        Some(1.0)
    );
    let published: i64 = db
        .query_one(
            "select count(*) from pg_publication_tables where pubname = 'sluice_recreate' and tablename = 't'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 1, "back in the publication");
    assert_eq!(sluice.terminate(Duration::from_secs(60)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_trigger_a_periodic_check_adds_the_table_back() {
    let pg = Postgres::start("recreate_poll");
    let db = pg.client().await;
    db.batch_execute("create table t (id int primary key, v int)")
        .await
        .unwrap();
    ordinary_role(&db, &["t"]).await;
    let rx = Receiver::start().await;
    let dir = scratch_dir("recreate_poll");
    let port = free_port();
    let mut sluice = Sluice::start(
        &dir,
        &pipeline("recreate_poll", &pg, "app", "public.t", &rx, "", port),
    );
    wait_streaming(&pg, "sluice_recreate_poll").await;
    wait_ready(port).await;
    let (app, conn) = tokio_postgres::connect(
        &format!("postgres://app@127.0.0.1:{}/postgres", pg.port),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // Let a check see the table published, so the window has a start.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let message = drop_and_create_again(&app, &rx, &sluice, port).await;
    assert!(
        message.contains("captured table public.t was dropped and created again"),
        "{message}"
    );
    assert!(
        message.contains("(the last check that saw it published)"),
        "{message}"
    );
    assert_eq!(sluice.terminate(Duration::from_secs(60)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_validate_name_a_captured_table_missing_from_the_publication() {
    let pg = Postgres::start("missing");
    let db = pg.client().await;
    db.batch_execute(
        "create table t (id int primary key, v int); create table u (id int primary key)",
    )
    .await
    .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("missing");
    let port = free_port();
    let mut sluice = Sluice::start(
        &dir,
        &pipeline(
            "missing",
            &pg,
            "postgres",
            "public.t, public.u",
            &rx,
            "",
            port,
        ),
    );
    wait_streaming(&pg, "sluice_missing").await;
    load(&db, "t", 1, 10).await;
    let got = wait_delivered(&rx, 10, &sluice).await;
    wait_committed(&sluice, "hook", position(&got[9])).await;
    assert_eq!(sluice.terminate(Duration::from_secs(60)), 0);

    // Taken out of the publication while sluice is stopped.
    db.batch_execute("alter publication sluice_missing drop table t")
        .await
        .unwrap();
    let out = harness::sluice::command(&dir, &["status", "pipeline.yaml", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["publication_missing"],
        json!(["public.t"]),
        "{status:#}"
    );
    let out = harness::sluice::command(&dir, &["status", "pipeline.yaml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("publication sluice_missing lacks captured table(s) public.t"),
        "{text}"
    );
    let out = harness::sluice::command(&dir, &["validate", "pipeline.yaml", "--connect"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("lacks captured table(s) public.t (its changes are not captured"),
        "{text}"
    );
    assert!(text.contains("DDL event trigger is installed"), "{text}");

    // The next run adds it back and says changes may be missing.
    sluice.restart();
    wait_ready(port).await;
    let message = wait_notice(&sluice, port, "publication_gap").await;
    assert!(
        message.contains("public.t was not in publication sluice_missing when sluice started"),
        "{message}"
    );
    load(&db, "t", 11, 20).await;
    let got = wait_delivered(&rx, 20, &sluice).await;
    assert_eq!(ids(&got), (1..=20).collect::<Vec<i64>>());
    let out = harness::sluice::command(&dir, &["status", "pipeline.yaml", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["publication_missing"], json!([]), "{status:#}");
    assert_eq!(sluice.terminate(Duration::from_secs(60)), 0);
}

// ─── DDL as events, column changes ───────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread")]
async fn ddl_events_put_a_schema_change_before_the_first_row_of_the_new_shape() {
    let pg = Postgres::start("ddl_events");
    let db = pg.client().await;
    db.batch_execute("create table t (id int primary key, v int); create table other (id int)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("ddl_events");
    let port = free_port();
    let mut sluice = Sluice::start(
        &dir,
        &pipeline(
            "ddl_events",
            &pg,
            "postgres",
            "public.t",
            &rx,
            "  ddl_events: true\n  messages: [app]\n",
            port,
        ),
    );
    wait_streaming(&pg, "sluice_ddl_events").await;
    db.batch_execute("insert into t values (1, 0)")
        .await
        .unwrap();
    db.batch_execute("alter table t add column note text not null default 'x'")
        .await
        .unwrap();
    db.batch_execute("alter table other add column z int")
        .await
        .unwrap();
    db.batch_execute("insert into t values (2, 0, 'y')")
        .await
        .unwrap();
    db.batch_execute("select pg_logical_emit_message(true, 'app', '{\"payload\": 1}')")
        .await
        .unwrap();
    let got = wait_delivered(&rx, 4, &sluice).await;
    let kinds: Vec<String> = got
        .iter()
        .map(|e| match e["op"].as_str().unwrap() {
            "event" => e["event"]["type"].as_str().unwrap().to_string(),
            op => op.to_string(),
        })
        .collect();
    assert_eq!(
        kinds,
        ["insert", "schema_change", "insert", "app"],
        "one schema change (the captured table's), before the first row with the column; \
         the trigger's own messages never show as user messages: {got:#?}"
    );
    assert!(position(&got[1]) < position(&got[2]));
    let change = &got[1];
    assert_eq!(table_of(change), ("public".into(), "t".into()));
    assert_eq!(
        change["event"]["payload"],
        json!({
            "command_tag": "ALTER TABLE",
            "object_identity": "public.t",
            "columns": [
                {"name": "id", "type": "integer", "nullable": false, "key": true},
                {"name": "v", "type": "integer", "nullable": true, "key": false},
                {"name": "note", "type": "text", "nullable": false, "key": false},
            ],
        })
    );
    assert_eq!(change["event"]["aggregate_type"], "table");
    assert_eq!(change["event"]["aggregate_id"], "public.t");
    assert_eq!(got[0]["after"], json!({"id": 1, "v": 0}));
    assert_eq!(got[2]["after"], json!({"id": 2, "v": 0, "note": "y"}));
    assert_eq!(sluice.terminate(Duration::from_secs(60)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn column_changes_under_load_arrive_with_the_shape_of_their_commit() {
    let pg = Postgres::start("columns");
    let db = pg.client().await;
    db.batch_execute("create table t (id int primary key, n int, v text default 'v')")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("columns");
    let port = free_port();
    let mut sluice = Sluice::start(
        &dir,
        &pipeline(
            "columns",
            &pg,
            "postgres",
            "public.t",
            &rx,
            "  ddl_events: true\n",
            port,
        ),
    );
    wait_streaming(&pg, "sluice_columns").await;

    let next = Arc::new(AtomicI32::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let db = pg.client().await;
        let (next, stop) = (next.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(10, Ordering::Relaxed);
                db.batch_execute(&format!(
                    "insert into t (id, n) select g, g from generate_series({id}, {}) g",
                    id + 9
                ))
                .await
                .unwrap();
            }
        })
    };
    let ddl = [
        "alter table t add column a text default 'dflt'",
        "alter table t add column b int",
        "alter table t drop column v",
        "alter table t alter column n type text",
        "alter table t drop constraint t_pkey, add primary key (id, n)",
        "alter table t replica identity full",
    ];
    for sql in ddl {
        tokio::time::sleep(Duration::from_millis(300)).await;
        db.batch_execute(sql).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    db.batch_execute("update t set a = 'changed' where id = 1")
        .await
        .unwrap();
    let rows = next.load(Ordering::Relaxed) - 1;
    let total = rows as usize + ddl.len() + 1;
    let got = wait_delivered(&rx, total, &sluice).await;

    // Walk the stream: each row has exactly the columns of the last schema change before
    // it (the table's shape at its commit).
    let mut columns: Vec<String> = vec!["id".into(), "n".into(), "v".into()];
    let mut keys: Vec<String> = vec!["id".into()];
    let mut changes = 0;
    let mut rows_per_shape = vec![0usize; ddl.len() + 1];
    for e in &got {
        if e["op"] == "event" {
            assert_eq!(e["event"]["type"], "schema_change");
            let listed = e["event"]["payload"]["columns"].as_array().unwrap();
            columns = listed
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect();
            keys = listed
                .iter()
                .filter(|c| c["key"] == true)
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect();
            changes += 1;
            continue;
        }
        rows_per_shape[changes] += 1;
        let after = e["after"].as_object().unwrap();
        let mut names: Vec<String> = after.keys().cloned().collect();
        names.extend(
            e["unchanged"]
                .as_array()
                .map(|u| {
                    u.iter()
                        .map(|c| c.as_str().unwrap().to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
        let mut expected = columns.clone();
        expected.sort();
        names.sort();
        assert_eq!(names, expected, "row {} after {changes} change(s)", e["id"]);
        let key: Vec<String> = e["key"].as_object().unwrap().keys().cloned().collect();
        let mut want = keys.clone();
        want.sort();
        let mut key = key;
        key.sort();
        assert_eq!(key, want, "key of row {}", e["id"]);
        if changes >= 1 && e["op"] == "insert" {
            assert_eq!(after["a"], "dflt", "added with a default");
        }
        if changes >= 2 && e["op"] == "insert" {
            assert_eq!(after["b"], Value::Null, "added without a default");
        }
        match changes {
            0..=3 => assert!(after["n"].is_number(), "an int before the type change"),
            _ => assert!(after["n"].is_string(), "text after it: {e}"),
        }
    }
    assert_eq!(changes, ddl.len(), "one schema change per DDL");
    let update = got.last().unwrap();
    assert_eq!(update["op"], "update");
    assert_eq!(
        update["before"].as_object().unwrap().len(),
        4,
        "REPLICA IDENTITY FULL: the whole old row: {update}"
    );
    assert_eq!(update["after"]["a"], "changed");
    let ids: HashSet<i64> = got
        .iter()
        .filter(|e| e["op"] == "insert")
        .map(|e| e["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), rows as usize, "every row of the load, once");
    assert!(
        rows_per_shape[..ddl.len()].iter().all(|&n| n > 0),
        "the load ran through every shape: {rows_per_shape:?}"
    );
    assert_eq!(sluice.terminate(Duration::from_secs(60)), 0);
}
