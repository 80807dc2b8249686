//! WebAssembly transforms in a running pipeline: a pipeline-level chain every sink sees,
//! a per-sink chain only its sink sees, and a transform that traps on one event, which
//! goes to that sink's DLQ with the transform's name as the stage while the rest flows.
//! Uses the components built by scripts/build-transforms.sh.

mod common;

use std::time::Duration;

use serde_json::Value;
use sluice_testkit::sluice::command;
use sluice_testkit::{eventually, scratch_dir, Postgres, Receiver, Sluice};

use common::wait_streaming;

use sluice_testkit::transform_artifact as artifact;

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_and_sink_transforms_shape_what_each_sink_receives() {
    let pg = Postgres::start("wasm");
    let db = pg.client().await;
    db.batch_execute(
        "create table orders (id int primary key, email text, status text, mode text)",
    )
    .await
    .unwrap();
    let (plain, routed) = (Receiver::start().await, Receiver::start().await);
    let dir = scratch_dir("wasm");
    let yaml = format!(
        "pipeline: wasm\n\
         source:\n  type: postgres\n  url: {url}\n  tables: [orders]\n\
         transforms:\n  - name: redact\n    wasm: {redact}\n    config: {{ fields: email }}\n\
         sinks:\n\
         \x20 plain:\n    type: webhook\n    url: {plain}\n\
         \x20 routed:\n    type: webhook\n    url: {routed}\n\
         \x20   transforms:\n\
         \x20     - name: route\n        wasm: {route}\n        config: {{ drop: draft, split: paid }}\n\
         \x20     - name: hostile\n        wasm: {hostile}\n        timeout: 500ms\n\
         delivery:\n  retry: {{ initial: 50ms, max: 1s }}\n\
         state: state.db\n",
        url = pg.url(),
        redact = artifact("redact_pii").display(),
        route = artifact("route_by_status").display(),
        hostile = artifact("hostile").display(),
        plain = plain.url(),
        routed = routed.url(),
    );
    std::fs::write(dir.join("pipeline.yaml"), &yaml).unwrap();
    let check = command(&dir, &["validate", "pipeline.yaml"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_wasm").await;
    db.batch_execute(
        "insert into orders values
           (1, 'alice@example.com', 'new', 'ok'),
           (2, 'bob@example.com', 'draft', 'ok'),
           (3, 'carol@example.com', 'paid', 'ok'),
           (4, 'dave@example.com', 'new', 'panic'),
           (5, 'erin@example.com', 'new', 'ok')",
    )
    .await
    .unwrap();

    // Every sink sees the pipeline-level chain: masked emails.
    let got = eventually(
        Duration::from_secs(30),
        "5 events at the plain sink",
        async || {
            let got = plain.delivered();
            (got.len() >= 5).then_some(got)
        },
    )
    .await;
    assert_eq!(got.len(), 5);
    for e in &got {
        let email = e["after"]["email"].as_str().unwrap();
        assert!(
            email.ends_with("***") && !email.contains('@'),
            "masked: {email}"
        );
    }
    assert!(
        got.iter().all(|e| e["after"].get("route").is_none()),
        "the per-sink chain changes only its sink"
    );

    // The routed sink: draft dropped, paid fanned out, the panicking event parked.
    let routed_got = eventually(
        Duration::from_secs(30),
        "4 events at the routed sink",
        async || {
            let got = routed.delivered();
            (got.len() >= 4).then_some(got)
        },
    )
    .await;
    let mut ids: Vec<(i64, String)> = routed_got
        .iter()
        .map(|e| {
            (
                e["after"]["id"].as_i64().unwrap(),
                e["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    ids.sort();
    let rows: Vec<i64> = ids.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        rows,
        [1, 3, 3, 5],
        "2 (draft) dropped, 3 (paid) fanned out, 4 (panic) parked"
    );
    assert_ne!(
        ids[1].1, ids[2].1,
        "fan-out events have distinct ids: {ids:?}"
    );
    assert!(routed_got.iter().any(|e| e["after"]["route"] == "audit"));
    assert!(routed_got
        .iter()
        .all(|e| e["after"]["email"].as_str().unwrap().ends_with("***")));

    let out = command(&dir, &["dlq", "list", "pipeline.yaml", "--json"]);
    let parked: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    let entry = &parked[0];
    assert_eq!(entry["sink"], "routed");
    assert_eq!(entry["stage"], "hostile");
    assert_eq!(entry["error_kind"], "trap");
    assert_eq!(
        entry["original"]["after"]["email"], "dave@example.com",
        "as the source produced it"
    );
    assert!(
        entry["failed"]["after"]["email"]
            .as_str()
            .unwrap()
            .ends_with("***"),
        "as it reached the stage"
    );
    assert!(sluice.is_running(), "a trap never crashes the runtime");
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "log:\n{}",
        sluice.log()
    );
}
