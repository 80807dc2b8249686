//! What the source captures and how the process reports on it, through a real PostgreSQL,
//! real receivers and the real binary: the outbox, logical messages, partitioned tables,
//! the admin endpoints, a receiver that rejects everything (the DLQ breaker), two sinks at
//! different speeds, a role without the right to create the publication, and `sluice
//! status`. The tests at the end guard bugs found and fixed.

mod common;
use sluice_testkit as harness;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{
    assert_per_key_order, http_get, position, sample, try_get, wait_delivered, wait_streaming,
    webhook_pipeline,
};
use harness::{eventually, free_port, scratch_dir, Postgres, Receiver, Respond, Sluice};

/// Wait until `sink`'s committed offset in `state.db` is at least `at`; returns it.
async fn wait_committed(sluice: &Sluice, sink: &str, at: (u64, u32)) -> (u64, u32) {
    let what = format!("sink {sink} to commit {at:?}");
    eventually(Duration::from_secs(30), &what, async || {
        sluice.committed("state.db", sink).filter(|c| *c >= at)
    })
    .await
}

/// Add keys under `source:` of a pipeline written by `webhook_pipeline` (after `tables`).
fn with_source_keys(yaml: &str, keys: &str) -> String {
    let at = yaml.find("  tables: [").expect("a tables line");
    let end = at + yaml[at..].find('\n').unwrap() + 1;
    format!("{}{keys}{}", &yaml[..end], &yaml[end..])
}

/// The envelope sorted by stream position.
fn sorted(mut events: Vec<Value>) -> Vec<Value> {
    events.sort_by_key(position);
    events
}

/// `X/Y` as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN X/Y");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// `sluice status PIPELINE --json`, parsed.
fn status_json(dir: &std::path::Path) -> Value {
    let out = harness::sluice::command(dir, &["status", "pipeline.yaml", "--json"]);
    assert!(
        out.status.success(),
        "status --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `sluice status PIPELINE` (human form).
fn status_text(dir: &std::path::Path) -> String {
    let out = harness::sluice::command(dir, &["status", "pipeline.yaml"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

// 1 ───────────────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread")]
async fn outbox_rows_become_events_and_their_deletes_are_ignored() {
    let pg = Postgres::start("outbox");
    let db = pg.client().await;
    db.batch_execute(
        "create table orders (id int primary key, status text not null);
         create table outbox (
           id uuid primary key default gen_random_uuid(),
           aggregate_type text not null, aggregate_id text not null, type text not null,
           payload jsonb not null, headers jsonb);",
    )
    .await
    .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("outbox");
    let yaml = with_source_keys(
        &webhook_pipeline("outbox", &pg, &["public.orders"], &rx.url(), "", ""),
        "  outbox: { table: public.outbox }\n",
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_outbox").await;

    // The order and its event in one transaction; the row is cleaned up in another
    // (updated first, to show that no other change of the outbox is captured either).
    db.batch_execute(
        r#"begin;
           insert into orders values (1, 'new');
           insert into outbox (id, aggregate_type, aggregate_id, type, payload, headers)
             values ('0b6f2a6e-5a7c-4f0e-9a51-3f4b7d1c2e01', 'order', '1', 'OrderCreated',
                     '{"id": 1, "total": "19.90", "lines": [{"sku": "a", "qty": 2}]}',
                     '{"trace_id": "t-1"}');
           commit;
           begin;
           update outbox set headers = '{"trace_id": "t-2"}';
           delete from outbox where id = '0b6f2a6e-5a7c-4f0e-9a51-3f4b7d1c2e01';
           commit;"#,
    )
    .await
    .unwrap();
    // The `delete_after_capture` recipe proper: insert and delete in the same transaction.
    db.batch_execute(
        r#"begin;
           insert into orders values (2, 'new');
           insert into outbox (aggregate_type, aggregate_id, type, payload)
             values ('order', '2', 'OrderCreated', '{"id": 2}');
           delete from outbox where aggregate_id = '2';
           commit;"#,
    )
    .await
    .unwrap();
    // A sentinel after everything: once it is committed, everything before it was seen.
    db.batch_execute("insert into orders values (3, 'new')")
        .await
        .unwrap();

    let sentinel = eventually(Duration::from_secs(60), "the sentinel order", async || {
        rx.delivered().into_iter().find(|e| e["after"]["id"] == 3)
    })
    .await;
    wait_committed(&sluice, "hook", position(&sentinel)).await;
    let got = sorted(rx.delivered());
    let summary: Vec<(String, Value)> = got
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["source"]["table"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("insert".into(), json!("orders")),
            ("event".into(), json!("outbox")),
            ("insert".into(), json!("orders")),
            ("event".into(), json!("outbox")),
            ("insert".into(), json!("orders")),
        ],
        "exactly the two inserts of outbox rows become events; their updates and deletes \
         produce nothing: {got:#?}"
    );

    let (order, event) = (&got[0], &got[1]);
    let obj = event.as_object().unwrap();
    for absent in ["before", "after", "unchanged"] {
        assert!(
            !obj.contains_key(absent),
            "an event has no `{absent}`: {event}"
        );
    }
    assert_eq!(
        event["event"],
        json!({
            "id": "0b6f2a6e-5a7c-4f0e-9a51-3f4b7d1c2e01",
            "type": "OrderCreated",
            "aggregate_type": "order",
            "aggregate_id": "1",
            "payload": {"id": 1, "total": "19.90", "lines": [{"sku": "a", "qty": 2}]},
            "headers": {"trace_id": "t-1"},
        })
    );
    assert!(event["event"]["payload"].is_object(), "jsonb stays JSON");
    assert_eq!(event["key"], json!({"aggregate_id": "1"}));
    assert_eq!(event["source"]["schema"], "public");
    assert_eq!(event["source"]["pipeline"], "outbox");
    // Same transaction as the order: same commit, xid and timestamp; next index.
    let commit = order["source"]["commit_lsn"].as_str().unwrap();
    assert_eq!(order["id"], format!("{commit}:0"));
    assert_eq!(event["id"], format!("{commit}:1"));
    for field in ["commit_lsn", "xid", "ts"] {
        assert_eq!(event["source"][field], order["source"][field], "{field}");
    }
    assert_eq!(order["after"], json!({"id": 1, "status": "new"}));

    // Same-transaction delete: the event is there, headers null when the column is.
    let second = &got[3];
    assert_eq!(second["event"]["type"], "OrderCreated");
    assert_eq!(second["event"]["aggregate_id"], "2");
    assert_eq!(second["event"]["payload"], json!({"id": 2}));
    assert_eq!(second["event"]["headers"], Value::Null);
    assert!(
        second["event"]["id"].as_str().unwrap().len() == 36,
        "a uuid"
    );
    assert_eq!(
        got[2]["source"]["commit_lsn"],
        second["source"]["commit_lsn"]
    );

    assert_eq!(
        rx.delivered().len(),
        5,
        "nothing else: {:#?}",
        rx.delivered()
    );
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

// 2 ───────────────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread")]
async fn logical_messages_with_a_listed_prefix_become_events() {
    let pg = Postgres::start("messages");
    let db = pg.client().await;
    db.batch_execute("create table orders (id int primary key, status text)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("messages");
    let yaml = with_source_keys(
        &webhook_pipeline("msgs", &pg, &["public.orders"], &rx.url(), "", ""),
        "  messages: [orders]\n",
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_msgs").await;

    db.batch_execute(
        r#"begin;
           insert into orders values (42, 'paid');
           select pg_logical_emit_message(true, 'orders',
             '{"type":"OrderPaid","aggregate_id":"42","payload":{"total":"9.90"}}');
           select pg_logical_emit_message(true, 'orders', 'plain text, not JSON');
           select pg_logical_emit_message(false, 'orders',
             '{"type":"CacheFlush","payload":{"scope":"all"},"headers":{"by":"ops"}}');
           select pg_logical_emit_message(true, 'billing', '{"payload":{"ignored":true}}');
           select pg_logical_emit_message(false, 'billing', 'ignored too');
           commit;"#,
    )
    .await
    .unwrap();
    db.batch_execute("insert into orders values (43, 'new')")
        .await
        .unwrap();

    let got = sorted(wait_delivered(&rx, 4, &sluice).await);
    let (insert, paid, text, sentinel) = (&got[0], &got[1], &got[2], &got[3]);
    // The non-transactional message (written even if its transaction rolled back) is
    // refused with a notice, never delivered.
    assert!(
        !got.iter().any(|e| e.to_string().contains("CacheFlush")),
        "{got:#?}"
    );
    assert!(sluice.log().contains("non_transactional_message"));

    assert_eq!(insert["op"], "insert");
    assert_eq!(insert["key"], json!({"id": 42}));
    let commit = insert["source"]["commit_lsn"].as_str().unwrap();

    assert_eq!(paid["op"], "event");
    assert_eq!(
        paid["event"],
        json!({
            "id": format!("{commit}:1"), "type": "OrderPaid", "aggregate_type": "orders",
            "aggregate_id": "42", "payload": {"total": "9.90"}, "headers": null,
        })
    );
    assert_eq!(paid["key"], json!({"aggregate_id": "42"}));
    assert_eq!(text["op"], "event");
    assert_eq!(
        text["event"],
        json!({
            "id": format!("{commit}:2"), "type": "orders", "aggregate_type": "orders",
            "aggregate_id": null, "payload": "plain text, not JSON", "headers": null,
        })
    );
    // Ids in commit order; the messages share the transaction's commit, xid and time.
    let ids: Vec<&str> = got[0..3]
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            format!("{commit}:0"),
            format!("{commit}:1"),
            format!("{commit}:2")
        ]
    );
    for m in [paid, text] {
        assert_eq!(m["source"]["schema"], Value::Null, "{m}");
        assert_eq!(m["source"]["table"], Value::Null, "{m}");
        assert_eq!(m["source"]["pipeline"], "msgs");
        let obj = m.as_object().unwrap();
        assert!(!obj.contains_key("before") && !obj.contains_key("after"));
    }
    for m in [paid, text] {
        assert_eq!(m["source"]["commit_lsn"], commit);
        assert_eq!(m["source"]["xid"], insert["source"]["xid"]);
        assert_eq!(m["source"]["ts"], insert["source"]["ts"]);
        assert!(lsn(m["source"]["lsn"].as_str().unwrap()) <= lsn(commit));
    }
    assert_eq!(sentinel["key"], json!({"id": 43}));
    assert!(
        got.iter()
            .all(|e| !e.to_string().contains("ignored") && !e.to_string().contains("billing")),
        "other prefixes are not captured"
    );
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

// 3 ───────────────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread")]
async fn partitioned_table_changes_arrive_as_the_root_table() {
    let pg = Postgres::start("partitions");
    let db = pg.client().await;
    db.batch_execute(
        "create table m (id int, at date, v text, primary key (id, at)) partition by range (at);
         create table m_2026_01 partition of m for values from ('2026-01-01') to ('2026-02-01');
         create table m_2026_02 partition of m for values from ('2026-02-01') to ('2026-03-01');",
    )
    .await
    .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("partitions");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("parts", &pg, &["public.m"], &rx.url(), "", ""),
    );
    wait_streaming(&pg, "sluice_parts").await;
    let via_root: bool = db
        .query_one(
            "select pubviaroot from pg_publication where pubname = 'sluice_parts'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(via_root, "the publication publishes via the partition root");

    db.batch_execute(
        "insert into m values (1, '2026-01-15', 'a'), (2, '2026-02-15', 'b');
         update m set v = 'a2' where id = 1;
         update m set at = '2026-01-20' where id = 2;",
    )
    .await
    .unwrap();
    let got = sorted(wait_delivered(&rx, 5, &sluice).await);
    let tables: BTreeSet<(&str, &str)> = got
        .iter()
        .map(|e| {
            (
                e["source"]["schema"].as_str().unwrap(),
                e["source"]["table"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tables,
        BTreeSet::from([("public", "m")]),
        "every change carries the root table, never a partition: {got:#?}"
    );
    let ops: Vec<&str> = got.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        ["insert", "insert", "update", "delete", "insert"],
        "a row moving to another partition is a delete and an insert: {got:#?}"
    );
    assert_eq!(got[0]["key"], json!({"id": 1, "at": "2026-01-15"}));
    assert_eq!(
        got[0]["after"],
        json!({"id": 1, "at": "2026-01-15", "v": "a"})
    );
    assert_eq!(got[1]["key"], json!({"id": 2, "at": "2026-02-15"}));
    assert_eq!(got[2]["after"]["v"], "a2");
    assert_eq!(got[3]["before"], json!({"id": 2, "at": "2026-02-15"}));
    assert_eq!(
        got[4]["after"],
        json!({"id": 2, "at": "2026-01-20", "v": "b"})
    );
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

// 4 ───────────────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_report_health_readiness_metrics_and_status() {
    let pg = Postgres::start("admin");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("admin");
    let port = free_port();
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline(
            "admin",
            &pg,
            &["items"],
            &rx.url(),
            "",
            &format!("admin: 127.0.0.1:{port}\n"),
        ),
    );
    wait_streaming(&pg, "sluice_admin").await;
    eventually(
        Duration::from_secs(30),
        "/readyz to answer 200",
        async || matches!(try_get(port, "/readyz").await, Ok((200, _))).then_some(()),
    )
    .await;

    db.batch_execute(
        "insert into items select g, 0 from generate_series(1, 25) g;
         update items set v = 1 where id <= 5;",
    )
    .await
    .unwrap();
    let n = 30;
    let got = wait_delivered(&rx, n, &sluice).await;
    let last = got.iter().max_by_key(|e| position(e)).unwrap().clone();
    wait_committed(&sluice, "hook", position(&last)).await;

    let (code, body) = http_get(&sluice, port, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(&sluice, port, "/readyz").await;
    assert_eq!(code, 200, "{body}");

    let metrics = eventually(
        Duration::from_secs(30),
        "the lag gauge to reach 0",
        async || {
            let (code, body) = http_get(&sluice, port, "/metrics").await;
            assert_eq!(code, 200);
            (sample(&body, "sluice_sink_lag_bytes{sink=\"hook\"}") == Some(0.0)).then_some(body)
        },
    )
    .await;
    assert!(
        metrics.contains("# TYPE sluice_sink_delivered_events_total counter"),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "sluice_sink_delivered_events_total{sink=\"hook\"}"
        ),
        Some(n as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "sluice_source_events_total"),
        Some(n as f64),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "sluice_source_streaming"), Some(1.0));
    assert_eq!(
        sample(&metrics, "sluice_sink_stopped{sink=\"hook\"}"),
        Some(0.0)
    );
    // Every sample line is `name[{labels}] number`.
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
    }

    let (code, body) = http_get(&sluice, port, "/status").await;
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).expect("/status is JSON");
    assert_eq!(status["pipeline"], "admin");
    assert_eq!(status["source"]["streaming"], true);
    let sinks = status["sinks"].as_array().unwrap();
    assert_eq!(sinks.len(), 1);
    assert_eq!(sinks[0]["name"], "hook");
    assert_eq!(sinks[0]["state"], "running");
    assert_eq!(sinks[0]["committed"], last["id"]);
    assert_eq!(sinks[0]["delivered"], n);

    let (code, _) = http_get(&sluice, port, "/nope").await;
    assert_eq!(code, 404);
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

// 5 ───────────────────────────────────────────────────────────────────────────────────────

/// `sluice dlq list PIPELINE --json`, parsed.
fn dlq_json(dir: &std::path::Path) -> Vec<Value> {
    let out = harness::sluice::command(dir, &["dlq", "list", "pipeline.yaml", "--json"]);
    assert!(
        out.status.success(),
        "dlq list --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("dlq list --json is not JSON ({e})"))
        .as_array()
        .expect("an array")
        .clone()
}

/// A receiver that starts answering 422: each rejected event goes to the DLQ until the DLQ
/// breaker trips. A breaker trip is a stop, not a skip: the tripping batch is parked and
/// passed, nothing after it is sent, and the sink stays stopped (the process stays up, not
/// ready; a restart keeps it stopped) until an operator replays or purges its dead letters,
/// which resumes it in place.
#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_rejecting_everything_trips_the_breaker_and_nothing_is_lost() {
    let pg = Postgres::start("rejected");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    rx.respond(Respond::With(Arc::new(|body: &Value| {
        if body["after"]["id"].as_i64().unwrap_or(0) >= 3 {
            422
        } else {
            200
        }
    })));
    let dir = scratch_dir("rejected");
    // Trips when more than 2 of the last 4 events went to the DLQ: the third rejection.
    let breaker = "    delivery:\n      dlq: { max_ratio: 0.5, window: 4 }\n";
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("rejected", &pg, &["items"], &rx.url(), breaker, ""),
    );
    wait_streaming(&pg, "sluice_rejected").await;
    db.batch_execute("insert into items values (1, 0); insert into items values (2, 0);")
        .await
        .unwrap();
    let before = wait_delivered(&rx, 2, &sluice).await;
    let second = before.iter().max_by_key(|e| position(e)).unwrap().clone();
    let committed = wait_committed(&sluice, "hook", position(&second)).await;
    assert_eq!(committed, position(&second));

    db.batch_execute(
        "insert into items values (3, 0); insert into items values (4, 0);
         insert into items values (5, 0);",
    )
    .await
    .unwrap();
    let report = eventually(Duration::from_secs(60), "the breaker to trip", async || {
        let report = status_json(&dir);
        (report["sinks"][0]["state"] == "stopped").then_some(report)
    })
    .await;
    let sink = &report["sinks"][0];
    let reason = sink["reason"].as_str().expect("a reason");
    assert!(reason.contains("breaker"), "{reason}");
    assert!(
        sluice.is_running(),
        "the process waits for an operator; log:\n{}",
        sluice.log()
    );
    let log = sluice.log();
    assert!(
        log.contains("sink stopped by the DLQ breaker") && log.contains("hook"),
        "the log names the sink and the breaker:\n{log}"
    );
    let rejected: Vec<Value> = rx
        .requests()
        .into_iter()
        .filter(|r| r.status == 422)
        .map(|r| r.body)
        .collect();
    assert_eq!(
        rejected.len(),
        3,
        "each rejected event was tried once (a 422 is not retried)"
    );
    let last_rejected = rejected.iter().max_by_key(|e| position(e)).unwrap();
    let committed = wait_committed(&sluice, "hook", position(last_rejected)).await;
    assert_eq!(
        committed,
        position(last_rejected),
        "the tripping batch is parked and passed (a purge is final), nothing further"
    );

    // Every rejected event is in the DLQ with the receiver's answer.
    let parked = dlq_json(&dir);
    let mut parked_ids: Vec<&str> = parked
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    parked_ids.sort();
    let mut rejected_ids: Vec<&str> = rejected.iter().map(|e| e["id"].as_str().unwrap()).collect();
    rejected_ids.sort();
    assert_eq!(parked_ids, rejected_ids, "{parked:#?}");
    for e in &parked {
        assert_eq!(e["sink"], "hook");
        assert!(e["error"].as_str().unwrap().contains("422"), "{e:#}");
        assert!(e["original"]["after"]["id"].as_i64().unwrap() >= 3);
    }
    assert_eq!(status_json(&dir)["sinks"][0]["dlq"], 3);
    let text = status_text(&dir);
    assert!(
        text.contains("stopped") && text.contains("breaker"),
        "{text}"
    );

    // A restart keeps the sink stopped: row 6 is not sent.
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        1,
        "a stopped sink at exit"
    );
    rx.respond(Respond::Ok);
    let first_run = rx.delivered().len();
    sluice.restart();
    wait_streaming(&pg, "sluice_rejected").await;
    db.batch_execute("insert into items values (6, 0)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rx.delivered().len(),
        first_run,
        "still stopped after a restart"
    );
    assert_eq!(status_json(&dir)["sinks"][0]["state"], "stopped");

    // The receiver is fixed: replaying resumes the sink in place, and everything arrives.
    let out = harness::sluice::command(&dir, &["dlq", "replay", "pipeline.yaml", "--sink", "hook"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("breaker") && said.contains("resume"),
        "replay says what happens: {said}"
    );
    let again = eventually(
        Duration::from_secs(60),
        "rows 3 to 6 after the fix",
        async || {
            let run2 = rx.delivered().split_off(first_run);
            let ids: HashSet<i64> = run2
                .iter()
                .filter_map(|e| e["after"]["id"].as_i64())
                .collect();
            (ids == HashSet::from([3, 4, 5, 6])).then_some(run2)
        },
    )
    .await;
    for e in &again {
        assert!(
            position(e) > position(&second),
            "{} was delivered and committed before the stop",
            e["id"]
        );
    }
    let all: HashSet<i64> = rx
        .delivered()
        .iter()
        .filter_map(|e| e["after"]["id"].as_i64())
        .collect();
    assert_eq!(all, HashSet::from([1, 2, 3, 4, 5, 6]), "nothing lost");
    eventually(Duration::from_secs(30), "the DLQ to empty", async || {
        dlq_json(&dir).is_empty().then_some(())
    })
    .await;
    assert_eq!(status_json(&dir)["sinks"][0]["state"], "running");
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

// 6 ───────────────────────────────────────────────────────────────────────────────────────

/// With the disk journal (the default), the slot confirms what is journaled while b is
/// down; with a memory journal it keeps what b still needs. Either way a never waits for b
/// and b catches up with everything.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_sink_neither_stalls_nor_corrupts_the_other() {
    two_sinks_one_failing("disk").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_sink_with_a_memory_journal_holds_the_slot_not_the_other_sink() {
    two_sinks_one_failing("memory").await;
}

async fn two_sinks_one_failing(journal: &str) {
    let pg = Postgres::start(&format!("twosinks-{journal}"));
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int not null)")
        .await
        .unwrap();
    let a = Receiver::start().await;
    let b = Receiver::start().await;
    b.respond(Respond::Status(503));
    let dir = scratch_dir("twosinks");
    let yaml = format!(
        "pipeline: pair\n\
         source:\n  type: postgres\n  url: {}\n  tables: [public.items]\n\
         sinks:\n  \
           a:\n    type: webhook\n    url: {}\n  \
           b:\n    type: webhook\n    url: {}\n\
         delivery:\n  retry: {{ initial: 50ms, max: 1s }}\n\
         journal: {{ type: {journal} }}\n\
         state: state.db\n",
        pg.url(),
        a.url(),
        b.url()
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_pair").await;

    let started = Instant::now();
    for i in 0..10 {
        db.batch_execute(&format!(
            "insert into items select g, 0 from generate_series({}, {}) g",
            i * 20 + 1,
            i * 20 + 20
        ))
        .await
        .unwrap();
    }
    db.batch_execute("update items set v = 1 where id % 10 = 0")
        .await
        .unwrap();
    let total = 220;
    // b keeps failing until a has everything (so a cannot have waited for b) and for at
    // least 5 s.
    let a_events = eventually(
        Duration::from_secs(30),
        "sink a to get everything while b fails",
        async || {
            let got = a.delivered();
            (got.len() >= total).then_some(got)
        },
    )
    .await;
    let a_took = started.elapsed();
    assert_eq!(b.delivered_count(), 0, "b still answers 503");
    assert!(b.requests().len() > 1, "b is being retried");
    let last = a_events.iter().max_by_key(|e| position(e)).unwrap().clone();
    let first = a_events.iter().min_by_key(|e| position(e)).unwrap().clone();
    wait_committed(&sluice, "a", position(&last)).await;
    let b_committed = sluice.committed("state.db", "b");
    assert!(
        b_committed.is_none_or(|c| c < position(&first)),
        "b committed nothing it did not deliver: {b_committed:?}"
    );
    let confirmed = async || -> u64 {
        let row = db
            .query_one(
                "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'sluice_pair'",
                &[],
            )
            .await
            .unwrap();
        lsn(&row.get::<_, String>(0))
    };
    if journal == "memory" {
        // The slot keeps what b still needs.
        let confirmed = confirmed().await;
        assert!(
            confirmed <= position(&first).0,
            "the slot confirmed {confirmed:X} past b's position (first event {})",
            first["id"]
        );
    } else {
        // The journal keeps it: the server may forget it while b is down.
        eventually(
            Duration::from_secs(10),
            "the slot to confirm what the journal holds while b is down",
            async || (confirmed().await > position(&last).0).then_some(()),
        )
        .await;
        assert_eq!(b.delivered_count(), 0, "b still answers 503");
    }

    // b comes back after ~5 s and catches up.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
    assert_eq!(b.delivered_count(), 0);
    b.respond(Respond::Ok);
    let b_events = eventually(Duration::from_secs(60), "sink b to catch up", async || {
        let got = b.delivered();
        (got.len() >= total).then_some(got)
    })
    .await;
    let b_took = started.elapsed();
    wait_committed(&sluice, "b", position(&last)).await;
    for (name, events) in [("a", &a_events), ("b", &b_events)] {
        assert_per_key_order(events);
        let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), total, "sink {name}: every event once");
    }
    assert_eq!(a.delivered_count(), total, "a got nothing twice");
    assert_eq!(b.delivered_count(), total, "b got nothing twice");
    assert_eq!(
        sluice.committed("state.db", "a"),
        sluice.committed("state.db", "b")
    );
    eventually(
        Duration::from_secs(30),
        "the slot to confirm past the last event",
        async || {
            let row = db
                .query_one(
                    "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'sluice_pair'",
                    &[],
                )
                .await
                .ok()?;
            (lsn(&row.get::<_, String>(0)) > position(&last).0).then_some(())
        },
    )
    .await;
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
    eprintln!("a had everything after {a_took:?}, b after {b_took:?}");
}

// 7 ───────────────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread")]
async fn a_role_without_create_gets_the_publication_sql_and_runs_once_it_exists() {
    let pg = Postgres::start("unprivileged");
    let db = pg.client().await;
    db.batch_execute(
        "create table orders (id int primary key, status text);
         create table customers (id int primary key, email text);
         create role app login replication;",
    )
    .await
    .unwrap();
    let may_create: bool = db
        .query_one(
            "select has_database_privilege('app', current_database(), 'CREATE')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!may_create, "the role must not have CREATE on the database");
    let rx = Receiver::start().await;
    let dir = scratch_dir("unprivileged");
    let yaml = webhook_pipeline(
        "priv",
        &pg,
        &["public.orders", "public.customers"],
        &rx.url(),
        "",
        "",
    )
    .replace("postgres://postgres@", "postgres://app@");
    assert!(yaml.contains("postgres://app@"));
    let mut sluice = Sluice::start(&dir, &yaml);
    let code = sluice.wait(Duration::from_secs(60));
    let log = sluice.log();
    assert_eq!(code, 1, "log:\n{log}");
    let sql = log
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with("CREATE PUBLICATION"))
        .unwrap_or_else(|| panic!("the SQL an administrator must run; log:\n{log}"))
        .trim_end_matches(';')
        .to_string();
    assert!(
        sql.starts_with("CREATE PUBLICATION \"sluice_priv\" FOR TABLE")
            && sql.contains("orders")
            && sql.contains("customers"),
        "{sql}"
    );
    assert!(log.contains("administrator"), "log:\n{log}");
    let slots: i64 = db
        .query_one("select count(*) from pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "nothing half-created");

    // The administrator runs it; the role needs nothing more (no SELECT, no ownership).
    db.batch_execute(&sql).await.unwrap();
    sluice.restart();
    wait_streaming(&pg, "sluice_priv").await;
    db.batch_execute(
        "insert into orders values (1, 'new'); insert into customers values (7, 'a@example.com');
         update orders set status = 'paid' where id = 1;",
    )
    .await
    .unwrap();
    let got = sorted(wait_delivered(&rx, 3, &sluice).await);
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
            ("insert", "customers"),
            ("update", "orders")
        ]
    );
    let owner: String = db
        .query_one(
            "select r.rolname::text from pg_stat_replication s join pg_roles r on r.oid = s.usesysid
              where s.application_name like 'sluice%' limit 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "app", "it streams as the unprivileged role");
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

// 8 ───────────────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread")]
async fn status_while_stopped_and_while_running() {
    let pg = Postgres::start("status");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("status");
    let port = free_port();
    let yaml = webhook_pipeline(
        "st",
        &pg,
        &["items"],
        &rx.url(),
        "",
        &format!("admin: 127.0.0.1:{port}\n"),
    );
    std::fs::write(dir.join("pipeline.yaml"), &yaml).unwrap();

    // Never run: no slot yet, no state store.
    let text = status_text(&dir);
    assert!(text.contains("pipeline st (not running)"), "{text}");
    assert!(text.contains("slot sluice_st: does not exist"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("hook ")), "{text}");
    let report = status_json(&dir);
    assert_eq!(report["running"], false);
    assert_eq!(report["slot"]["exists"], false);
    assert_eq!(report["sinks"][0]["name"], "hook");
    assert_eq!(report["sinks"][0]["committed"], Value::Null);

    // Running, with something delivered.
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_st").await;
    db.batch_execute("insert into items select generate_series(1, 10)")
        .await
        .unwrap();
    let got = wait_delivered(&rx, 10, &sluice).await;
    let last = got.iter().max_by_key(|e| position(e)).unwrap().clone();
    wait_committed(&sluice, "hook", position(&last)).await;
    let text = status_text(&dir);
    assert!(text.contains("pipeline st (running)"), "{text}");
    assert!(text.contains("slot sluice_st: active"), "{text}");
    let hook = text
        .lines()
        .find(|l| l.starts_with("hook "))
        .unwrap_or_else(|| panic!("a line for the sink: {text}"));
    assert!(
        hook.contains("running") && hook.contains(last["id"].as_str().unwrap()),
        "{hook}"
    );
    let report = status_json(&dir);
    assert_eq!(report["running"], true);
    assert_eq!(report["slot"]["exists"], true);
    assert_eq!(report["slot"]["active"], true);
    let sink = &report["sinks"][0];
    assert_eq!(sink["name"], "hook");
    assert_eq!(sink["type"], "webhook");
    assert_eq!(sink["state"], "running");
    assert_eq!(sink["committed"], last["id"]);
    assert_eq!(sink["queue"], 0, "{report:#}");
    assert!(sink["lag_bytes"].is_u64(), "{report:#}");
    assert!(sink["lag_seconds"].as_f64().is_some(), "{report:#}");

    // Stopped after a run: the slot stays (inactive), the offset is remembered.
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
    eventually(
        Duration::from_secs(10),
        "the slot to go inactive",
        async || {
            let text = status_text(&dir);
            text.contains("slot sluice_st: inactive").then_some(())
        },
    )
    .await;
    let text = status_text(&dir);
    assert!(text.contains("pipeline st (not running)"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("hook ")), "{text}");
    let report = status_json(&dir);
    assert_eq!(report["running"], false);
    assert_eq!(report["slot"]["active"], false);
    assert_eq!(report["sinks"][0]["committed"], last["id"]);
    assert_eq!(report["sinks"][0]["queue"], Value::Null);
}

// 9 ───────────────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread")]
async fn a_messages_only_pipeline_needs_no_tables() {
    let pg = Postgres::start("msgonly");
    let db = pg.client().await;
    let rx = Receiver::start().await;
    let dir = scratch_dir("msgonly");
    let yaml = format!(
        "pipeline: msgonly\n\
         source:\n  type: postgres\n  url: {}\n  messages: [audit]\n\
         sinks:\n  hook:\n    type: webhook\n    url: {}\n\
         state: state.db\n",
        pg.url(),
        rx.url()
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    eventually(
        Duration::from_secs(60),
        "the slot to stream (or sluice to fail)",
        async || {
            if !sluice.is_running() {
                panic!("sluice exited; log:\n{}", sluice.log());
            }
            let row = db
                .query_opt(
                    "select active from pg_replication_slots where slot_name = 'sluice_msgonly'",
                    &[],
                )
                .await
                .ok()??;
            row.get::<_, bool>(0).then_some(())
        },
    )
    .await;
    db.batch_execute(
        "select pg_logical_emit_message(true, 'audit', '{\"payload\": {\"who\": \"ops\"}}')",
    )
    .await
    .unwrap();
    let got = wait_delivered(&rx, 1, &sluice).await;
    assert_eq!(got[0]["event"]["payload"], json!({"who": "ops"}));
    assert_eq!(got[0]["event"]["type"], "audit");
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

// Known bugs, each asserted the way it should behave ─────────────────────────────────────

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_publication_says_why() {
    let pg = Postgres::start("why");
    let db = pg.client().await;
    db.batch_execute(
        "create table orders (id int primary key); create role app login replication;",
    )
    .await
    .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("why");
    let yaml = webhook_pipeline("why", &pg, &["orders"], &rx.url(), "", "")
        .replace("postgres://postgres@", "postgres://app@");
    let mut sluice = Sluice::start(&dir, &yaml);
    assert_eq!(sluice.wait(Duration::from_secs(60)), 1);
    let log = sluice.log();
    let error = log
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("an error line; log:\n{log}"));
    assert!(
        error.contains("permission denied for database"),
        "the error carries PostgreSQL's reason, not just `db error`: {error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_tells_running_from_stopped_without_an_admin_server() {
    let pg = Postgres::start("status-noadmin");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key)")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("status-noadmin");
    let yaml = webhook_pipeline("stn", &pg, &["items"], &rx.url(), "", "");
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_stn").await;
    db.batch_execute("insert into items values (1)")
        .await
        .unwrap();
    wait_delivered(&rx, 1, &sluice).await;
    let report = status_json(&dir);
    assert_eq!(report["slot"]["active"], true);
    assert_eq!(
        report["running"], true,
        "the slot is active: the pipeline runs: {report:#}"
    );
    assert!(status_text(&dir).contains("pipeline stn (running)"));

    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
    let report = status_json(&dir);
    assert_eq!(report["running"], false);
    assert_ne!(
        report["sinks"][0]["state"], "running",
        "nothing runs after a clean stop: {report:#}"
    );
}
