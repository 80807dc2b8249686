//! The traps an operator falls into on a first real deployment (issue 14), each set up as
//! a new user would meet it, through the real binary.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_runtime::lsn::{Lsn, Position};
use sluice_runtime::state::{DeadLetters, DlqState, NewDlqEntry, SqliteStore};
use sluice_testkit as harness;

use common::{wait_delivered, wait_streaming, webhook_pipeline};
use harness::sluice::command;
use harness::{scratch_dir, Postgres, Receiver, Respond, Sluice};

/// A pipeline whose source and sink are closed ports, for commands that do not connect.
const OFFLINE: &str = "\
pipeline: ops
source:
  type: postgres
  url: postgres://u@127.0.0.1:1/db
  tables: [public.orders]
sinks:
  hook:
    type: webhook
    url: http://127.0.0.1:1/events
";

fn parked(event: u32) -> NewDlqEntry {
    let position = Position::new(Lsn(0x100), event);
    NewDlqEntry {
        sink: "hook".into(),
        event_id: position.to_string(),
        position,
        ordering_key: Some("k".into()),
        original: br#"{"id":"x"}"#.to_vec(),
        failed: br#"{"id":"x"}"#.to_vec(),
        stage: "sink".into(),
        error_kind: "rejected".into(),
        error: "HTTP 422".into(),
        config_hash: "abc".into(),
        state: DlqState::Parked,
        held_behind: None,
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A relative `state:` is found beside the pipeline file, from whatever folder `sluice`
/// starts in: the dead letters do not vanish from view when run from elsewhere.
#[test]
fn the_state_file_is_found_beside_the_pipeline_file() {
    let dir = scratch_dir("state-beside");
    let conf = dir.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("pipeline.yaml"), OFFLINE).unwrap();
    let mut store = SqliteStore::open(&conf.join(".sluice/ops.db")).unwrap();
    store.park(&[parked(1)]).unwrap();
    drop(store);
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    for (cwd, file) in [
        (&dir, Path::new("conf/pipeline.yaml")),
        (&elsewhere, Path::new("../conf/pipeline.yaml")),
        (&conf, Path::new("pipeline.yaml")),
    ] {
        let out = command(cwd, &["dlq", "list", file.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{out:?}");
        let listed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(
            listed.as_array().map(Vec::len),
            Some(1),
            "from {}: {listed}",
            cwd.display()
        );
    }
    assert!(
        !elsewhere.join(".sluice").exists(),
        "nothing is created where sluice was started"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn slot_exists(db: &tokio_postgres::Client, slot: &str) -> bool {
    db.query_opt(
        "select 1 from pg_replication_slots where slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .is_some()
}

/// An administrator owns the publication: teardown drops the slot, prints the SQL it may
/// not run, forgets the offsets, and `run` starts again without asking for a teardown.
/// Parked events are never deleted without `--drop-dlq`.
#[tokio::test(flavor = "multi_thread")]
async fn teardown_finishes_what_it_can_and_keeps_dead_letters_unless_told() {
    let pg = Postgres::start("teardown");
    let db = pg.client().await;
    db.batch_execute(
        "create table orders (id int primary key, status text);
         create role app login replication;
         create publication sluice_td for table orders;",
    )
    .await
    .unwrap();
    let rx = Receiver::start().await;
    rx.respond(Respond::With(Arc::new(|e: &Value| {
        if e["after"]["status"] == "bad" {
            422
        } else {
            200
        }
    })));
    let dir = scratch_dir("teardown");
    let yaml = webhook_pipeline("td", &pg, &["orders"], &rx.url(), "", "")
        .replace("postgres://postgres@", "postgres://app@");
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_td").await;
    db.batch_execute("insert into orders values (1, 'ok'), (2, 'bad'), (3, 'ok')")
        .await
        .unwrap();
    wait_delivered(&rx, 2, &sluice).await;
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );

    let out = command(&dir, &["teardown", "pipeline.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--drop-dlq") && text(&out).contains("hook: 1"),
        "{}",
        text(&out)
    );
    assert!(slot_exists(&db, "sluice_td").await, "nothing dropped");

    let out = command(&dir, &["teardown", "pipeline.yaml", "--drop-dlq"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("dropped replication slot sluice_td"),
        "{said}"
    );
    assert!(said.contains("DROP PUBLICATION \"sluice_td\";"), "{said}");
    assert!(said.contains("administrator"), "{said}");
    assert!(said.contains("deleted 1 parked event(s)"), "{said}");
    assert!(said.contains("forgot the offsets of 1 sink(s)"), "{said}");
    assert!(!slot_exists(&db, "sluice_td").await);

    // Running again needs no teardown: a new slot, the administrator's publication.
    sluice.restart();
    wait_streaming(&pg, "sluice_td").await;
    db.batch_execute("insert into orders values (4, 'ok')")
        .await
        .unwrap();
    wait_delivered(&rx, 3, &sluice).await;
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );
}

/// A table without a primary key is refused before it is published: published with
/// updates and deletes, PostgreSQL would refuse the application's UPDATE on it. An
/// inserts-only publication an administrator made is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_keyless_table_is_refused_before_it_can_break_the_application() {
    let pg = Postgres::start("keyless");
    let db = pg.client().await;
    db.batch_execute("create table logs (msg text); insert into logs values ('a');")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("keyless");
    let yaml = webhook_pipeline("kl", &pg, &["logs"], &rx.url(), "", "");
    std::fs::write(dir.join("pipeline.yaml"), &yaml).unwrap();

    let out = command(&dir, &["validate", "pipeline.yaml", "--connect"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    for choice in [
        "ADD PRIMARY KEY",
        "REPLICA IDENTITY FULL",
        "publish = 'insert'",
    ] {
        assert!(said.contains(choice), "{choice} in: {said}");
    }
    assert!(said.contains("public.logs"), "{said}");

    let mut sluice = Sluice::start(&dir, &yaml);
    assert_eq!(sluice.wait(Duration::from_secs(60)), 1, "{}", sluice.log());
    assert!(
        sluice.log().contains("REPLICA IDENTITY FULL"),
        "{}",
        sluice.log()
    );
    let publications: i64 = db
        .query_one("select count(*) from pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(publications, 0, "nothing was published");
    db.batch_execute("update logs set msg = 'b'")
        .await
        .expect("the application's writes still work");

    // Inserts only, as an administrator decided: accepted, and updates still work.
    db.batch_execute("create publication sluice_kl for table logs with (publish = 'insert')")
        .await
        .unwrap();
    let out = command(&dir, &["validate", "pipeline.yaml", "--connect"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    sluice.restart();
    wait_streaming(&pg, "sluice_kl").await;
    db.batch_execute("insert into logs values ('c'); update logs set msg = 'd'")
        .await
        .unwrap();
    let got = wait_delivered(&rx, 1, &sluice).await;
    assert_eq!(got[0]["after"]["msg"], "c");
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

/// `validate --connect` says OK only when `run` would start: a role that may not create
/// the publication, a state folder that cannot be written, a busy admin port are each
/// named; a refused connection names the host and port.
#[tokio::test(flavor = "multi_thread")]
async fn validate_connect_catches_what_run_would_fail_on() {
    let pg = Postgres::start("preflight");
    let db = pg.client().await;
    db.batch_execute(
        "create table orders (id int primary key); create role app login replication;",
    )
    .await
    .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("preflight");
    let base = webhook_pipeline("pf", &pg, &["orders"], &rx.url(), "", "");
    let validate = |yaml: &str| {
        std::fs::write(dir.join("pipeline.yaml"), yaml).unwrap();
        let out = command(&dir, &["validate", "pipeline.yaml", "--connect"]);
        (out.status.code(), text(&out))
    };

    let (code, said) = validate(&base);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("state:") && said.contains("sink hook: ok"),
        "{said}"
    );

    let (code, said) = validate(&base.replace("postgres://postgres@", "postgres://app@"));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("CREATE PUBLICATION"), "{said}");

    let blocker = dir.join("blocked");
    std::fs::write(&blocker, b"a file, not a folder").unwrap();
    let (code, said) = validate(&base.replace("state: state.db", "state: blocked/state.db"));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("state:") && said.contains("cannot be written"),
        "{said}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let (code, said) = validate(&format!("{base}admin: 127.0.0.1:{port}\n"));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&format!("127.0.0.1:{port}")), "{said}");

    let closed = harness::free_port();
    let (code, said) = validate(&base.replace(
        &format!("127.0.0.1:{}", pg.port),
        &format!("127.0.0.1:{closed}"),
    ));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!("127.0.0.1:{closed}")),
        "names host and port: {said}"
    );
}

/// `sluice status --json`, parsed, with its exit code.
fn status(dir: &Path) -> (Option<i32>, Value) {
    let out = command(dir, &["status", "pipeline.yaml", "--json"]);
    let report = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", text(&out)));
    (out.status.code(), report)
}

/// Status tells the truth: no lag from LSN 0 for a sink that never committed, lag 0 for a
/// caught-up sink however long the database is idle, `not running` once the process is
/// gone, and exit 1 when PostgreSQL cannot be asked.
#[tokio::test(flavor = "multi_thread")]
async fn status_is_honest_when_idle_stopped_or_unreachable() {
    let pg = Postgres::start("honest");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("honest");
    let port = harness::free_port();
    let yaml = webhook_pipeline(
        "hs",
        &pg,
        &["items"],
        &rx.url(),
        "",
        &format!("admin: 127.0.0.1:{port}\n"),
    );
    std::fs::write(dir.join("pipeline.yaml"), &yaml).unwrap();
    let (code, report) = status(&dir);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        report["sinks"][0]["lag_bytes"],
        Value::Null,
        "never committed"
    );
    assert_eq!(report["sinks"][0]["lag_seconds"], Value::Null);

    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_hs").await;
    db.batch_execute("insert into items select generate_series(1, 5)")
        .await
        .unwrap();
    wait_delivered(&rx, 5, &sluice).await;
    // Idle: a few seconds pass with nothing to deliver.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = harness::eventually(Duration::from_secs(20), "lag 0", async || {
        let (_, report) = status(&dir);
        (report["sinks"][0]["lag_seconds"] == 0.0 && report["sinks"][0]["lag_bytes"] == 0)
            .then_some(report)
    })
    .await;
    assert_eq!(report["sinks"][0]["state"], "running", "{report}");

    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
    let (code, report) = status(&dir);
    assert_eq!(code, Some(0));
    assert_eq!(report["running"], false, "{report}");
    assert_ne!(report["sinks"][0]["state"], "running", "{report}");
    assert_eq!(
        report["sinks"][0]["lag_seconds"],
        Value::Null,
        "no guess when stopped"
    );

    // Killed: the stored state says running, but nothing runs.
    sluice.restart();
    wait_streaming(&pg, "sluice_hs").await;
    sluice.kill9();
    let report = harness::eventually(
        Duration::from_secs(20),
        "the slot to go inactive",
        async || {
            let (_, report) = status(&dir);
            (report["running"] == false).then_some(report)
        },
    )
    .await;
    assert_eq!(report["sinks"][0]["state"], "not running", "{report}");

    drop(pg);
    let (code, report) = status(&dir);
    assert_eq!(code, Some(1), "an unreachable source is an error: {report}");
    assert!(report["slot_error"].as_str().is_some(), "{report}");
}

/// `/metrics` carries what operators of Debezium and Vector expect, counted where it
/// happens: dead letters by the stage that failed them (a transform or the sink), events by
/// op, HTTP statuses, latency and transform time histograms, lag, the build and the
/// process. Every metric the shipped Grafana dashboard uses exists.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_by_stage_op_and_status_and_feed_the_dashboard() {
    let pg = Postgres::start("metrics");
    let db = pg.client().await;
    db.batch_execute("create table orders (id int primary key, mode text)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    rx.respond(Respond::With(Arc::new(|e: &Value| {
        if e["key"]["id"] == 3 {
            422
        } else {
            200
        }
    })));
    let dir = scratch_dir("metrics");
    let port = harness::free_port();
    let hostile = harness::transform_artifact("hostile");
    let yaml = webhook_pipeline(
        "mx",
        &pg,
        &["orders"],
        &rx.url(),
        "",
        &format!(
            "admin: 127.0.0.1:{port}\n\
             transforms: [ {{ name: guard, wasm: {} }} ]\n",
            hostile.display()
        ),
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_mx").await;
    db.batch_execute(
        "insert into orders values (1, 'none'), (2, 'error'), (3, 'none'), (4, 'none');
         update orders set mode = 'none' where id = 1;",
    )
    .await
    .unwrap();
    wait_delivered(&rx, 3, &sluice).await;
    let metrics = harness::eventually(Duration::from_secs(20), "the counts", async || {
        let (_, text) = common::http_get(&sluice, port, "/metrics").await;
        (common::sample(&text, "sluice_dlq_depth{sink=\"hook\"}") == Some(2.0)).then_some(text)
    })
    .await;
    let at = |series: &str| common::sample(&metrics, series);
    assert_eq!(
        at(r#"sluice_dlq_events_total{sink="hook",stage="guard"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        at(r#"sluice_dlq_events_total{sink="hook",stage="sink"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        at(r#"sluice_sink_events_total{sink="hook",op="insert"}"#),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        at(r#"sluice_sink_events_total{sink="hook",op="update"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        at(r#"sluice_sink_http_responses_total{sink="hook",code="200"}"#),
        Some(3.0)
    );
    assert_eq!(
        at(r#"sluice_sink_http_responses_total{sink="hook",code="422"}"#),
        Some(1.0)
    );
    assert_eq!(
        at(r#"sluice_sink_latency_seconds_count{sink="hook"}"#),
        Some(3.0)
    );
    assert!(
        at(r#"sluice_transform_batch_seconds_count{transform="guard",chain="pipeline"}"#)
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        at(r#"sluice_sink_lag_seconds{sink="hook"}"#),
        Some(0.0),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_build_info{version="), "{metrics}");
    assert!(at("sluice_process_resident_memory_bytes").is_some_and(|b| b > 1e6));

    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/sluice-dashboard.json"),
    )
    .unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("sluice_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                used.insert(name);
            }
        }
    }
    assert!(used.len() > 10, "{used:?}");
    for name in used {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard uses {name}, which /metrics does not have:\n{metrics}"
        );
    }
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

/// SIGTERM with a backlog to a slow (but healthy) receiver: the process exits 0 within
/// `shutdown_timeout`, leaving what it had not delivered uncommitted; the next run delivers
/// the rest, nothing lost.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_is_bounded_by_its_timeout_and_loses_nothing() {
    let pg = Postgres::start("shutdown");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    rx.jitter(Some(Duration::from_millis(400)));
    let dir = scratch_dir("shutdown");
    let yaml = webhook_pipeline(
        "sd",
        &pg,
        &["items"],
        &rx.url(),
        "    concurrency: 4\n",
        "shutdown_timeout: 2s\n",
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_sd").await;
    db.batch_execute("insert into items select generate_series(1, 2000)")
        .await
        .unwrap();
    harness::eventually(Duration::from_secs(30), "deliveries to start", async || {
        (rx.delivered_count() > 10).then_some(())
    })
    .await;
    let asked = std::time::Instant::now();
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} with a 2 s timeout; log:\n{}",
        sluice.log()
    );
    assert!(
        rx.delivered_count() < 2000,
        "the backlog was not finished (the test needs a slow receiver)"
    );
    assert!(
        sluice.log().contains("shutdown timeout reached"),
        "{}",
        sluice.log()
    );

    rx.jitter(None);
    sluice.restart();
    harness::eventually(Duration::from_secs(60), "every row", async || {
        let ids: std::collections::BTreeSet<i64> = rx
            .delivered()
            .iter()
            .filter_map(|e| e["key"]["id"].as_i64())
            .collect();
        (ids.len() == 2000).then_some(())
    })
    .await;
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

/// The trap from the field: 15 rejected rows in one transaction trip the breaker
/// (`window: 10`); `dlq purge --all` lets the sink go on at once, without a restart, and the
/// purged events never come back, not even after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn purged_events_stay_purged_and_purge_releases_a_tripped_sink() {
    let pg = Postgres::start("purge");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    rx.respond(Respond::With(Arc::new(|e: &Value| {
        if e["after"]["v"] == 1 {
            422
        } else {
            200
        }
    })));
    let dir = scratch_dir("purge");
    let yaml = webhook_pipeline(
        "pg",
        &pg,
        &["items"],
        &rx.url(),
        "    delivery:\n      dlq: { max_ratio: 0.5, window: 10 }\n",
        "",
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_pg").await;
    db.batch_execute("insert into items select i, 1 from generate_series(1, 15) i")
        .await
        .unwrap();
    harness::eventually(Duration::from_secs(60), "the breaker to trip", async || {
        let (_, report) = status(&dir);
        (report["sinks"][0]["state"] == "stopped").then_some(())
    })
    .await;
    let rejected = rx.requests().iter().filter(|r| r.status == 422).count();
    assert!(
        rejected >= 6,
        "the breaker tripped after {rejected} rejections"
    );

    let out = command(&dir, &["dlq", "purge", "pipeline.yaml", "--all"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("resumes"), "{said}");
    db.batch_execute("insert into items values (100, 0)")
        .await
        .unwrap();
    harness::eventually(
        Duration::from_secs(30),
        "the sink to go on in place",
        async || {
            rx.delivered()
                .iter()
                .any(|e| e["after"]["id"] == 100)
                .then_some(())
        },
    )
    .await;
    assert!(sluice.is_running());
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );

    let before = rx.requests().len();
    sluice.restart();
    wait_streaming(&pg, "sluice_pg").await;
    db.batch_execute("insert into items values (101, 0)")
        .await
        .unwrap();
    harness::eventually(Duration::from_secs(30), "the next row", async || {
        rx.delivered()
            .iter()
            .any(|e| e["after"]["id"] == 101)
            .then_some(())
    })
    .await;
    let again: Vec<Value> = rx.requests()[before..]
        .iter()
        .map(|r| r.body.clone())
        .filter(|b| b["after"]["v"] == 1)
        .collect();
    assert!(again.is_empty(), "purged events came back: {again:?}");
    let (_, report) = status(&dir);
    assert_eq!(report["sinks"][0]["dlq"], 0, "{report}");
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

/// `dlq purge` of an id that is not there is bad input, as for `dlq show`.
#[test]
fn purging_an_unknown_id_is_bad_input() {
    let dir = scratch_dir("purge-unknown");
    std::fs::write(dir.join("pipeline.yaml"), OFFLINE).unwrap();
    let mut store = SqliteStore::open(&dir.join(".sluice/ops.db")).unwrap();
    store.park(&[parked(1)]).unwrap();
    drop(store);
    for args in [
        ["dlq", "purge", "pipeline.yaml", "--id", "0/9:9"],
        ["dlq", "show", "pipeline.yaml", "0/9:9", "--json"],
    ] {
        let out = command(&dir, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("0/9:9"), "{}", text(&out));
    }
    let out = command(&dir, &["dlq", "purge", "pipeline.yaml", "--id", "0/100:1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    std::fs::remove_dir_all(&dir).ok();
}
