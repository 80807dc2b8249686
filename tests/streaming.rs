//! Large transactions streamed before their commit (pgoutput protocol 2), through a real
//! PostgreSQL with `logical_decoding_work_mem = 64kB` (so a few hundred rows already
//! stream), the real binary and a webhook receiver: a rolled back transaction delivers
//! nothing, a committed one exactly its rows in order, interleaved ones keep commit order,
//! a rolled back subtransaction drops only its rows, a kill -9 mid-transaction loses
//! nothing, and sluice's memory stays bounded for a million-row transaction while the
//! server never spills it to disk.

mod common;
use sluice_testkit as harness;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Client;

use common::{position, wait_delivered, wait_streaming, webhook_pipeline};
use harness::{eventually, scratch_dir, Postgres, Receiver, Sluice};

/// One POST per batch: the receiver sees events in journal order.
const BATCHED: &str =
    "    batch: true\n    delivery:\n      batch: { max_events: 1000, max_wait: 20ms }\n";

/// A cluster whose walsenders stream any transaction past 64 kB of changes.
async fn streaming_cluster(name: &str) -> (Postgres, Client) {
    let pg = Postgres::start(name);
    let db = pg.client().await;
    // One statement per call: ALTER SYSTEM cannot run in a (multi-statement) transaction.
    for sql in [
        "alter system set logical_decoding_work_mem = '64kB'",
        "select pg_reload_conf()",
        "create table items (id int primary key, v text not null)",
    ] {
        db.batch_execute(sql).await.unwrap();
    }
    (pg, db)
}

/// `pg_stat_replication_slots` for `slot`: (stream_txns, stream_bytes, spill_txns, spill_bytes).
async fn slot_stats(db: &Client, slot: &str) -> (i64, i64, i64, i64) {
    let row = db
        .query_opt(
            "select stream_txns, stream_bytes, spill_txns, spill_bytes
               from pg_stat_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.map_or((0, 0, 0, 0), |r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// Wait until the server says it streamed at least `n` transactions of `slot`.
async fn wait_streamed(db: &Client, slot: &str, n: i64) {
    let what = format!("{n} streamed transaction(s) in pg_stat_replication_slots");
    eventually(Duration::from_secs(30), &what, async || {
        (slot_stats(db, slot).await.0 >= n).then_some(())
    })
    .await;
}

/// Staging files of the pipeline in `dir` (`state.work/stream-*.pgo`).
fn staged(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("state.work"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("stream-"))
                .count()
        })
        .unwrap_or(0)
}

/// Insert a sentinel row in a transaction of its own and wait for it: everything
/// committed before it was decoded by then.
async fn sentinel(db: &Client, rx: &Receiver, id: i32) -> Value {
    db.execute("insert into items values ($1, 'sentinel')", &[&id])
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "the sentinel row", async || {
        rx.delivered().into_iter().find(|e| e["after"]["id"] == id)
    })
    .await
}

/// Wait until `sink`'s committed offset in `state.db` is at least `at`.
async fn wait_committed(sluice: &Sluice, sink: &str, at: (u64, u32)) {
    let what = format!("sink {sink} to commit {at:?}");
    eventually(Duration::from_secs(60), &what, async || {
        sluice.committed("state.db", sink).filter(|c| *c >= at)
    })
    .await;
}

fn ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["after"]["id"].as_i64().expect("an insert's id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_streamed_transaction_delivers_nothing() {
    let (pg, db) = streaming_cluster("stream_abort").await;
    let rx = Receiver::start().await;
    let dir = scratch_dir("stream_abort");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("stream_abort", &pg, &["items"], &rx.url(), BATCHED, ""),
    );
    wait_streaming(&pg, "sluice_stream_abort").await;

    db.batch_execute(
        "begin;
         insert into items select g, 'doomed' from generate_series(1, 20000) g;
         rollback;",
    )
    .await
    .unwrap();
    wait_streamed(&db, "sluice_stream_abort", 1).await;
    let last = sentinel(&db, &rx, 1_000_000).await;
    let got = rx.delivered();
    assert_eq!(
        ids(&got),
        [1_000_000],
        "only the sentinel: nothing of the rolled back transaction"
    );
    assert_eq!(last["op"], "insert");
    assert_eq!(staged(&dir), 0, "the aborted transaction's file is gone");
    assert!(
        sluice.log().contains("streamed transaction rolled back"),
        "log:\n{}",
        sluice.log()
    );
    sluice.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_committed_streamed_transaction_delivers_exactly_its_rows_in_order() {
    let (pg, db) = streaming_cluster("stream_commit").await;
    db.batch_execute("insert into items select g, 'before' from generate_series(1, 100) g")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let dir = scratch_dir("stream_commit");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("stream_commit", &pg, &["items"], &rx.url(), BATCHED, ""),
    );
    wait_streaming(&pg, "sluice_stream_commit").await;

    // Inserts, an update and a delete of rows from before, all in one large transaction.
    db.batch_execute(
        "begin;
         insert into items select g, 'new' from generate_series(101, 30100) g;
         update items set v = 'changed' where id = 5;
         delete from items where id = 6;
         commit;",
    )
    .await
    .unwrap();
    let got = wait_delivered(&rx, 30_002, &sluice).await;
    let (stream_txns, stream_bytes, _, spill_bytes) = slot_stats(&db, "sluice_stream_commit").await;
    assert!(
        stream_txns >= 1 && stream_bytes > 0,
        "the transaction was streamed"
    );
    assert_eq!(spill_bytes, 0, "and never spilled to the server's disk");

    let commit = got[0]["source"]["commit_lsn"].as_str().unwrap().to_string();
    for (i, e) in got.iter().enumerate() {
        assert_eq!(
            e["id"],
            format!("{commit}:{i}"),
            "the commit's position, indices in order"
        );
        assert_eq!(e["source"]["commit_lsn"], commit.as_str());
        assert_eq!(e["source"]["xid"], got[0]["source"]["xid"]);
        assert_eq!(e["source"]["ts"], got[0]["source"]["ts"]);
    }
    let inserted = ids(&got[..30_000]);
    assert_eq!(inserted, (101..=30100).collect::<Vec<i64>>());
    assert_eq!(got[30_000]["op"], "update");
    assert_eq!(got[30_000]["after"]["v"], "changed");
    assert_eq!(got[30_001]["op"], "delete");
    assert_eq!(got[30_001]["key"]["id"], 6);
    assert_eq!(staged(&dir), 0, "the committed transaction's file is gone");
    assert_eq!(
        sluice.terminate(Duration::from_secs(60)),
        0,
        "log:\n{}",
        sluice.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_interleaved_streamed_transactions_keep_commit_order() {
    let (pg, db) = streaming_cluster("stream_interleaved").await;
    let rx = Receiver::start().await;
    let dir = scratch_dir("stream_interleaved");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline(
            "stream_interleaved",
            &pg,
            &["items"],
            &rx.url(),
            BATCHED,
            "",
        ),
    );
    wait_streaming(&pg, "sluice_stream_interleaved").await;

    // A starts first and commits last; B streams in between; a small C commits between
    // B and A.
    let a = pg.client().await;
    let b = pg.client().await;
    a.batch_execute("begin; insert into items select g, 'a' from generate_series(1, 10000) g")
        .await
        .unwrap();
    b.batch_execute("begin; insert into items select g, 'b' from generate_series(20001, 30000) g")
        .await
        .unwrap();
    a.batch_execute("insert into items select g, 'a' from generate_series(10001, 20000) g")
        .await
        .unwrap();
    b.batch_execute("insert into items select g, 'b' from generate_series(30001, 40000) g")
        .await
        .unwrap();
    wait_streamed(&db, "sluice_stream_interleaved", 2).await;
    assert!(
        staged(&dir) >= 1,
        "chunks of the open transactions are staged"
    );
    b.batch_execute("commit").await.unwrap();
    db.batch_execute("insert into items values (50000, 'c')")
        .await
        .unwrap();
    a.batch_execute("commit").await.unwrap();

    let got = wait_delivered(&rx, 40_001, &sluice).await;
    let order: Vec<i64> = ids(&got);
    let expected: Vec<i64> = (20001..=40000).chain([50000]).chain(1..=20000).collect();
    assert!(
        order == expected,
        "commit order B, C, A, each in its own order"
    );
    let positions: Vec<(u64, u32)> = got.iter().map(position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase along the stream"
    );
    assert_eq!(staged(&dir), 0);
    sluice.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subtransaction_rolled_back_inside_a_streamed_one_drops_only_its_rows() {
    let (pg, db) = streaming_cluster("stream_subxact").await;
    let rx = Receiver::start().await;
    let dir = scratch_dir("stream_subxact");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("stream_subxact", &pg, &["items"], &rx.url(), BATCHED, ""),
    );
    wait_streaming(&pg, "sluice_stream_subxact").await;

    db.batch_execute(
        "begin;
         insert into items select g, 'top' from generate_series(1, 10000) g;
         savepoint kept;
         insert into items select g, 'kept sub' from generate_series(10001, 15000) g;
         release savepoint kept;
         savepoint doomed;
         insert into items select g, 'doomed' from generate_series(15001, 25000) g;
         savepoint nested;
         insert into items select g, 'doomed too' from generate_series(25001, 26000) g;
         rollback to savepoint doomed;
         insert into items select g, 'after' from generate_series(30001, 40000) g;
         commit;",
    )
    .await
    .unwrap();
    let last = sentinel(&db, &rx, 1_000_000).await;
    let got = rx.delivered();
    let expected: Vec<i64> = (1..=15000)
        .chain(30001..=40000)
        .chain([1_000_000])
        .collect();
    assert!(
        ids(&got) == expected,
        "exactly the rows of the committed (sub)transactions"
    );
    assert!(
        got.iter()
            .all(|e| !e["after"]["v"].as_str().unwrap().starts_with("doomed")),
        "nothing of the rolled back subtransactions"
    );
    // Indices count what the transaction committed, as if it had come whole.
    let commit = got[0]["source"]["commit_lsn"].as_str().unwrap();
    assert_eq!(got[24_999]["id"], format!("{commit}:24999"));
    assert!(last["source"]["commit_lsn"] != got[0]["source"]["commit_lsn"]);
    let (stream_txns, ..) = slot_stats(&db, "sluice_stream_subxact").await;
    assert!(stream_txns >= 1, "the transaction was streamed");
    sluice.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_in_the_middle_of_a_streamed_transaction_loses_nothing() {
    let (pg, db) = streaming_cluster("stream_kill").await;
    let rx = Receiver::start().await;
    let dir = scratch_dir("stream_kill");
    let mut sluice = Sluice::start(
        &dir,
        &webhook_pipeline("stream_kill", &pg, &["items"], &rx.url(), BATCHED, ""),
    );
    wait_streaming(&pg, "sluice_stream_kill").await;
    db.batch_execute("insert into items select g, 'before' from generate_series(1, 1000) g")
        .await
        .unwrap();
    let before = wait_delivered(&rx, 1000, &sluice).await;
    wait_committed(&sluice, "hook", position(&before[999])).await;

    // A transaction that stays open while sluice is killed with part of it staged.
    let tx = pg.client().await;
    tx.batch_execute(
        "begin; insert into items select g, 'big' from generate_series(1001, 21000) g",
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "part of the open transaction staged",
        async || (staged(&dir) > 0).then_some(()),
    )
    .await;
    sluice.kill9();
    assert!(
        staged(&dir) > 0,
        "a killed process leaves its staging behind"
    );
    tx.batch_execute(
        "insert into items select g, 'big' from generate_series(21001, 41000) g; commit",
    )
    .await
    .unwrap();

    sluice.restart();
    let what = "every row after the restart";
    eventually(Duration::from_secs(120), what, async || {
        let got: HashSet<i64> = ids(&rx.delivered()).into_iter().collect();
        (got.len() >= 41_000).then_some(())
    })
    .await;
    let got = rx.delivered();
    let distinct: HashSet<i64> = ids(&got).into_iter().collect();
    assert_eq!(distinct.len(), 41_000, "every committed row, nothing else");
    assert!((1..=41_000).all(|id| distinct.contains(&id)));
    assert_eq!(
        got.len(),
        41_000,
        "nothing twice: the open transaction was never delivered before the kill"
    );
    assert_eq!(staged(&dir), 0, "the restart cleared the old staging");
    assert_eq!(
        sluice.terminate(Duration::from_secs(60)),
        0,
        "log:\n{}",
        sluice.log()
    );
}

/// The running `sluice` whose working directory is `dir`.
fn sluice_pid(dir: &Path) -> u32 {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            cwd.as_deref() == Some(dir.as_path())
                && exe.is_some_and(|e| e.file_name().is_some_and(|n| n == "sluice"))
        })
        .expect("a sluice process running in the test's directory")
}

/// A line of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`: the peak resident set).
fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_bounded_for_a_million_row_transaction() {
    let (pg, db) = streaming_cluster("stream_million").await;
    let dir = scratch_dir("stream_million");
    let yaml = format!(
        "pipeline: stream_million\n\
         source:\n  type: postgres\n  url: {}\n  tables: [items]\n\
         sinks:\n  void:\n    type: blackhole\n\
         state: state.db\n",
        pg.url()
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_stream_million").await;
    let pid = sluice_pid(&dir);
    let at_start = proc_kb(pid, "VmRSS");

    db.batch_execute("insert into items select g, 'row ' || g from generate_series(1, 1000000) g")
        .await
        .unwrap();
    let what = "the blackhole to commit the million rows";
    let done = eventually(Duration::from_secs(600), what, async || {
        sluice
            .committed("state.db", "void")
            .filter(|&(_, index)| index == 999_999)
    })
    .await;
    let peak = proc_kb(pid, "VmHWM");
    eprintln!("sluice RSS: {at_start} kB at start, {peak} kB at its peak");
    assert!(
        peak < 100 * 1024,
        "peak RSS {peak} kB (at start {at_start} kB) for a 1M-row transaction; log:\n{}",
        sluice.log()
    );
    let (stream_txns, stream_bytes, spill_txns, spill_bytes) =
        slot_stats(&db, "sluice_stream_million").await;
    eprintln!("server: {stream_txns} streamed transaction(s), {stream_bytes} bytes streamed, {spill_bytes} bytes spilled");
    assert!(
        stream_txns >= 1 && stream_bytes > 10_000_000,
        "streamed: {stream_txns} transactions, {stream_bytes} bytes"
    );
    assert_eq!(
        (spill_txns, spill_bytes),
        (0, 0),
        "the server never spilled it to its disk"
    );
    assert!(done.0 > 0);
    assert_eq!(staged(&dir), 0);
    assert_eq!(
        sluice.terminate(Duration::from_secs(60)),
        0,
        "log:\n{}",
        sluice.log()
    );
}
