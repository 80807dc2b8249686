//! The file sink through a real PostgreSQL and the real binary: changes appended as JSON
//! Lines in stream order, a clean restart that appends without repeating anything, JSON
//! Lines on standard output with the logs kept apart, and a refused `fsync` on stdout.

mod common;
use sluice_testkit as harness;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use common::{position, wait_streaming};
use harness::{eventually, scratch_dir, Postgres, Sluice};

fn file_pipeline(name: &str, pg: &Postgres, sink: &str) -> String {
    format!(
        "pipeline: {name}\n\
         source:\n  type: postgres\n  url: {}\n  tables: [public.orders]\n\
         sinks:\n  out:\n    type: file\n{sink}\
         state: state.db\n",
        pg.url()
    )
}

/// The lines of `path` once there are at least `n` (only whole lines: a partial last line
/// would fail to parse).
async fn wait_lines(path: &Path, n: usize, sluice: &Sluice) -> Vec<Value> {
    let what = format!("{n} lines in {}\nlog:\n{}", path.display(), sluice.log());
    let text = eventually(Duration::from_secs(60), &what, async || {
        let text = std::fs::read_to_string(path).ok()?;
        (text.lines().count() >= n).then_some(text)
    })
    .await;
    assert!(text.ends_with('\n'), "every line is whole");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn create_orders(pg: &Postgres) -> tokio_postgres::Client {
    let db = pg.client().await;
    db.batch_execute(
        "create table orders (id int primary key, status text not null, total numeric(10,2))",
    )
    .await
    .unwrap();
    db
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_are_appended_in_stream_order_and_a_restart_repeats_nothing() {
    let pg = Postgres::start("filesink");
    let db = create_orders(&pg).await;
    let dir = scratch_dir("filesink");
    // A relative path with missing parents: created under sluice's working directory.
    let yaml = file_pipeline("files", &pg, "    path: out/nested/orders.jsonl\n");
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_files").await;

    for tx in 0..10 {
        db.batch_execute(&format!(
            "insert into orders select g, 'new', g / 100.0 from generate_series({}, {}) g",
            tx * 100 + 1,
            tx * 100 + 100
        ))
        .await
        .unwrap();
    }
    db.batch_execute(
        "update orders set status = 'paid' where id = 7; delete from orders where id = 8;",
    )
    .await
    .unwrap();

    let path = dir.join("out/nested/orders.jsonl");
    let lines = wait_lines(&path, 1002, &sluice).await;
    assert_eq!(lines.len(), 1002, "nothing more than the changes");
    for pair in lines.windows(2) {
        assert!(
            position(&pair[0]) < position(&pair[1]),
            "the file is in stream order: {} then {}",
            pair[0]["id"],
            pair[1]["id"]
        );
    }
    assert!(lines[..1000].iter().all(|e| e["op"] == "insert"));
    assert_eq!(lines[0]["key"], json!({"id": 1}));
    assert_eq!(
        lines[0]["after"],
        json!({"id": 1, "status": "new", "total": "0.01"})
    );
    assert_eq!(lines[0]["source"]["table"], "orders");
    assert_eq!(lines[1000]["op"], "update");
    assert_eq!(lines[1000]["after"]["status"], "paid");
    assert_eq!(lines[1001]["op"], "delete");
    assert_eq!(lines[1001]["key"], json!({"id": 8}));

    // A clean stop commits everything written; changes made while sluice is down are
    // appended after a restart, and nothing is written twice.
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );
    db.batch_execute("insert into orders select g, 'late', 1 from generate_series(2001, 2010) g")
        .await
        .unwrap();
    sluice.restart();
    let lines = wait_lines(&path, 1012, &sluice).await;
    assert_eq!(lines.len(), 1012, "no line repeated after the restart");
    for pair in lines.windows(2) {
        assert!(position(&pair[0]) < position(&pair[1]));
    }
    assert!(lines[1002..].iter().all(|e| e["after"]["status"] == "late"));
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn path_dash_writes_json_lines_to_stdout_and_logs_to_stderr() {
    let pg = Postgres::start("filestdout");
    let db = create_orders(&pg).await;
    let dir = scratch_dir("filestdout");
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(&pipeline, file_pipeline("stdout", &pg, "    path: \"-\"\n")).unwrap();
    let mut child = Command::new(harness::sluice::bin())
        .arg("run")
        .arg(&pipeline)
        .current_dir(&dir)
        .env("SLUICE_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .take(3)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    wait_streaming(&pg, "sluice_stdout").await;
    db.batch_execute("insert into orders values (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)")
        .await
        .unwrap();
    let lines = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let ids: Vec<Value> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("only envelopes on stdout")["key"]["id"].clone()
        })
        .collect();
    assert_eq!(ids, [json!(1), json!(2), json!(3)]);
}

#[test]
fn fsync_on_stdout_is_refused_before_anything_connects() {
    let dir = scratch_dir("filefsync");
    let yaml = "pipeline: fsync\n\
                source:\n  type: postgres\n  url: postgres://u@127.0.0.1:1/db\n  tables: [public.orders]\n\
                sinks:\n  out:\n    type: file\n    path: \"-\"\n    fsync: true\n";
    std::fs::write(dir.join("pipeline.yaml"), yaml).unwrap();
    let out = harness::sluice::command(&dir, &["validate", "pipeline.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pipeline.yaml:10:5: sinks.out.fsync: "),
        "the error points at the key: {stderr}"
    );
    assert!(stderr.contains("standard output"), "{stderr}");
}
