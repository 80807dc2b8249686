//! Snapshots and online per-sink backfills, end to end, through a real PostgreSQL, real
//! receivers and the real binary: a backfill to one sink under concurrent inserts, updates
//! and deletes ends equal to the table while the other sink sees no `read` event and keeps
//! its lag under a second; kill -9 mid-backfill resumes from the last finished chunk;
//! `snapshot: initial` copies a populated table while writes go on; `where:` limits the
//! rows; bad requests are refused with exit 2 and nothing recorded; `--cancel` stops a
//! running backfill.
//!
//! `SLUICE_BACKFILL_ROWS` sets the table size of the concurrent-writes scenario (default
//! 200000) for quicker local runs.

mod common;
use sluice_testkit as harness;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{assert_per_key_order, try_get, wait_streaming};
use harness::{eventually, free_port, scratch_dir, Postgres, Receiver, Sluice};

// Helpers ─────────────────────────────────────────────────────────────────────────────────

/// A pipeline on `tables` with extra `source:` keys (indented by two), the given `sinks:`
/// body, an admin server on `admin` and extra top-level text.
fn pipeline(
    name: &str,
    pg: &Postgres,
    tables: &[&str],
    source_extra: &str,
    sinks: &str,
    admin: u16,
    extra: &str,
) -> String {
    format!(
        "pipeline: {name}\n\
         source:\n  type: postgres\n  url: {}\n  tables: [{}]\n{source_extra}\
         sinks:\n{sinks}\
         delivery:\n  retry: {{ initial: 50ms, max: 500ms }}\n\
         state: state.db\n\
         admin: 127.0.0.1:{admin}\n{extra}",
        pg.url(),
        tables.join(", ")
    )
}

/// A file sink named `name` writing `out/<name>.jsonl`.
fn file_sink(name: &str) -> String {
    format!("  {name}:\n    type: file\n    path: out/{name}.jsonl\n")
}

/// A webhook sink named `name` POSTing batches to `rx`.
fn webhook_sink(name: &str, rx: &Receiver) -> String {
    format!(
        "  {name}:\n    type: webhook\n    url: {}\n    batch: true\n",
        rx.url()
    )
}

/// `items(id bigint primary key, v text, n int)` with `rows` rows (`v = 'r<id>'`,
/// `n = id % 10`).
async fn create_items(pg: &Postgres, rows: i64) -> tokio_postgres::Client {
    let db = pg.client().await;
    db.batch_execute(&format!(
        "create table items (id bigint primary key, v text, n int);
         insert into items select g, 'r' || g, g % 10 from generate_series(1, {rows}) g;
         analyze items"
    ))
    .await
    .unwrap();
    db
}

/// Run a `sluice` subcommand from `dir` (blocking; wrap in `spawn_blocking` when it waits).
fn sluice_cmd(dir: &Path, args: &[&str]) -> Output {
    harness::sluice::command(dir, args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a command printed, on either stream (sluice prints its messages to stderr).
fn printed(out: &Output) -> String {
    text(&out.stdout) + &text(&out.stderr)
}

/// `sluice backfill pipeline.yaml ARGS...`.
fn backfill(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["backfill", "pipeline.yaml"];
    all.extend_from_slice(args);
    sluice_cmd(dir, &all)
}

/// `sluice backfill ...` that must succeed: what it printed.
fn backfill_ok(dir: &Path, args: &[&str], sluice: &Sluice) -> String {
    let out = backfill(dir, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "sluice backfill {args:?}\nstdout:\n{}\nstderr:\n{}\nsluice log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        sluice.log()
    );
    printed(&out)
}

/// `sluice status pipeline.yaml --json`.
fn status(dir: &Path) -> Value {
    let out = sluice_cmd(dir, &["status", "pipeline.yaml", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`sluice status --json` printed no JSON ({e}), exit {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// The `backfills` of `sluice status --json`.
fn backfills(dir: &Path) -> Vec<Value> {
    let status = status(dir);
    status["backfills"]
        .as_array()
        .unwrap_or_else(|| panic!("`sluice status --json` has no `backfills` array: {status:#}"))
        .clone()
}

/// `GET /status` of the running pipeline.
async fn admin_status(port: u16) -> Option<Value> {
    let (code, body) = try_get(port, "/status").await.ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

const FINAL: [&str; 3] = ["done", "cancelled", "failed"];

/// Poll `sluice status --json` until there is at least one backfill and every one has
/// finished (done, cancelled or failed); returns them.
async fn wait_finished(dir: &Path, timeout: Duration, sluice: &Sluice) -> Vec<Value> {
    let started = Instant::now();
    loop {
        // Before the first start there may be no state to report yet.
        let all = status(dir)["backfills"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !all.is_empty()
            && all
                .iter()
                .all(|b| FINAL.contains(&b["state"].as_str().unwrap_or("")))
        {
            return all;
        }
        if started.elapsed() > timeout {
            panic!(
                "backfills not finished after {timeout:?}: {all:#?}\nlog:\n{}",
                sluice.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The insert position after everything committed so far (see read_your_writes.rs: with
/// `synchronous_commit = off` the written position may still be before the commit).
async fn token(db: &tokio_postgres::Client) -> String {
    db.query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// `sluice wait` until `sinks` applied every change committed so far.
async fn drain(dir: &Path, db: &tokio_postgres::Client, sinks: &[&str], sluice: &Sluice) {
    let lsn = token(db).await;
    let mut args = vec!["wait", "pipeline.yaml", "--lsn", &lsn, "--timeout", "60s"];
    for s in sinks {
        args.extend(["--sink", s]);
    }
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let dir = dir.to_path_buf();
    // Twice 60 s at most (the command's own limit).
    for attempt in 0..2 {
        let (dir, args) = (dir.clone(), args.clone());
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sluice_cmd(&dir, &args)
        })
        .await
        .unwrap();
        if out.status.success() {
            return;
        }
        if attempt == 1 {
            panic!(
                "sinks {sinks:?} did not apply {lsn}: exit {:?}\n{}{}\nlog:\n{}",
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr),
                sluice.log()
            );
        }
    }
}

/// Every envelope in a JSON Lines file (every line must be whole).
fn read_lines(path: &Path) -> Vec<Value> {
    let body = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        body.is_empty() || body.ends_with('\n'),
        "{}: the last line is cut",
        path.display()
    );
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The events of `table` (unqualified name) among `events`.
fn of_table<'a>(events: &'a [Value], table: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["source"]["table"] == table)
        .collect()
}

/// The `read` events among `events`.
fn reads<'a>(events: impl IntoIterator<Item = &'a Value>) -> Vec<&'a Value> {
    events.into_iter().filter(|e| e["op"] == "read").collect()
}

/// The key ids of `events`.
fn key_ids<'a>(events: impl IntoIterator<Item = &'a Value>) -> BTreeSet<i64> {
    events
        .into_iter()
        .filter_map(|e| e["key"]["id"].as_i64())
        .collect()
}

/// A `read` envelope has the row in `after`, its key in `key` and no `before`.
fn assert_read_shape(e: &Value) {
    assert!(e["before"].is_null(), "a read has no before: {e}");
    assert!(e["after"].is_object(), "a read carries the row: {e}");
    assert_eq!(e["key"], json!({"id": e["after"]["id"]}), "key of {e}");
    assert!(e["id"].as_str().is_some_and(|id| id.contains(':')), "{e}");
}

/// What a sink that applies `events` in order holds for `items`: insert, update and read
/// write the row, delete removes it, truncate empties the table.
fn apply<'a>(events: impl IntoIterator<Item = &'a Value>) -> BTreeMap<i64, Value> {
    let mut rows = BTreeMap::new();
    for e in events {
        if e["source"]["table"] != "items" {
            continue;
        }
        match e["op"].as_str().unwrap_or("") {
            "insert" | "update" | "read" => {
                let id = e["key"]["id"].as_i64().expect("key id");
                assert!(
                    e["unchanged"].as_array().is_none_or(|u| u.is_empty()),
                    "no TOASTed column here: {e}"
                );
                rows.insert(id, e["after"].clone());
            }
            "delete" => {
                rows.remove(&e["key"]["id"].as_i64().expect("key id"));
            }
            "truncate" => rows.clear(),
            other => panic!("unexpected op {other}: {e}"),
        }
    }
    rows
}

/// `SELECT * FROM items` as envelope `after` objects by id.
async fn table(db: &tokio_postgres::Client) -> BTreeMap<i64, Value> {
    db.query("select id, v, n from items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let v: Option<String> = r.get(1);
            let n: Option<i32> = r.get(2);
            (id, json!({"id": id, "v": v, "n": n}))
        })
        .collect()
}

/// Panic with the first differences when `sink` differs from `expected`, showing each
/// differing key's events at the sink.
fn assert_same(
    name: &str,
    sink: &BTreeMap<i64, Value>,
    expected: &BTreeMap<i64, Value>,
    events: &[Value],
) {
    let diffs: Vec<i64> = expected
        .keys()
        .chain(sink.keys())
        .filter(|id| sink.get(id) != expected.get(id))
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if diffs.is_empty() {
        return;
    }
    let shown: Vec<String> = diffs
        .iter()
        .take(8)
        .map(|id| {
            let history: Vec<String> = events
                .iter()
                .filter(|e| e["source"]["table"] == "items" && e["key"]["id"] == *id)
                .map(|e| format!("{} {} {}", e["id"], e["op"], e["after"]))
                .collect();
            format!(
                "id {id}: table {:?}, sink {:?}; events at the sink: {history:?}",
                expected.get(id),
                sink.get(id)
            )
        })
        .collect();
    panic!(
        "{name}: {} of {} keys differ from the table ({} rows at the sink):\n{}",
        diffs.len(),
        expected.len(),
        sink.len(),
        shown.join("\n")
    );
}

/// A small xorshift generator: enough to pick keys.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        eprintln!("random seed {nanos}");
        Rng(nanos | 1)
    }

    /// A number in `1..=max`.
    fn upto(&mut self, max: i64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        1 + (self.0 % max as u64) as i64
    }
}

/// What the writer did.
#[derive(Default)]
struct Written {
    /// Keys deleted (inserts always use new keys, so they stay deleted).
    deleted: BTreeSet<i64>,
    /// The commit time of each row version, by its `v`.
    committed_at: HashMap<String, Instant>,
    transactions: usize,
}

/// Concurrent writes until `stop`: every `tick`, one transaction inserts a new key, updates
/// a random key and deletes a random key (the keys of `1..=rows` are the backfill's range).
/// Every version written gets a unique `v` (`w<seq>`).
fn writer(
    pg: &Postgres,
    rows: i64,
    tick: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Written> {
    let url = pg.url();
    tokio::spawn(async move {
        let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut rng = Rng::seeded();
        let mut written = Written::default();
        let mut next = rows + 1;
        let mut seq = 0u64;
        let mut at = tokio::time::interval(tick);
        while !stop.load(Ordering::Relaxed) {
            at.tick().await;
            let (ins, upd) = (format!("w{seq}"), format!("w{}", seq + 1));
            seq += 2;
            let updated = rng.upto(next - 1);
            let deleted = rng.upto(next - 1);
            db.batch_execute(&format!(
                "begin;
                 insert into items values ({next}, '{ins}', {});
                 update items set v = '{upd}', n = coalesce(n, 0) + 1 where id = {updated};
                 delete from items where id = {deleted};
                 commit",
                seq % 7
            ))
            .await
            .unwrap();
            let now = Instant::now();
            written.committed_at.insert(ins, now);
            written.committed_at.insert(upd, now);
            written.deleted.insert(deleted);
            written.transactions += 1;
            next += 1;
        }
        written
    })
}

// 1 ───────────────────────────────────────────────────────────────────────────────────────

/// The main scenario: a backfill of a populated table to sink a only, while a
/// writer inserts, updates and deletes random keys throughout. Sink a ends equal to the
/// table (deleted keys deleted); sink b gets no `read` event, every change, and its lag
/// stays under a second while the backfill runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_to_one_sink_under_concurrent_writes_ends_equal_to_the_table() {
    let rows: i64 = std::env::var("SLUICE_BACKFILL_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let pg = Postgres::start("bfmain");
    let db = create_items(&pg, rows).await;
    let b = Receiver::start().await;
    let dir = scratch_dir("bfmain");
    let port = free_port();
    let sinks = file_sink("a") + &webhook_sink("b", &b);
    let yaml = pipeline("bfmain", &pg, &["public.items"], "", &sinks, port, "");
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_bfmain").await;

    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(&pg, rows, Duration::from_millis(10), stop.clone());
    // b's lag and the backfills' states as the running pipeline reports them.
    let sampling = Arc::new(AtomicBool::new(true));
    let samples: Arc<Mutex<Vec<(f64, Value)>>> = Default::default();
    let sampler = {
        let (sampling, samples) = (sampling.clone(), samples.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(s) = admin_status(port).await {
                    let lag = s["sinks"]
                        .as_array()
                        .and_then(|all| all.iter().find(|x| x["name"] == "b"))
                        .and_then(|b| b["lag_seconds"].as_f64());
                    if let Some(lag) = lag {
                        samples.lock().unwrap().push((lag, s["backfills"].clone()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let out = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || backfill(&dir, &["--sink", "a", "--wait"]))
            .await
            .unwrap()
    };
    let took = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let written = writes.await.unwrap();
    let stdout = printed(&out);
    eprintln!(
        "backfill of {rows} rows to a under {} concurrent transactions: {took:?}\n{stdout}",
        written.transactions
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "backfill --wait\n{stdout}\nlog:\n{}",
        sluice.log()
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("backfill ") && l.contains("public.items → a")),
        "one line per table requested: {stdout}"
    );
    assert!(
        written.transactions > 50,
        "the writer ran: {}",
        written.transactions
    );

    drain(&dir, &db, &["a", "b"], &sluice).await;
    let done = backfills(&dir);
    assert_eq!(done.len(), 1, "{done:#?}");
    assert_eq!(done[0]["state"], "done", "{done:#?}");
    assert_eq!(done[0]["table"], "public.items", "{done:#?}");
    assert_eq!(done[0]["sinks"], json!(["a"]), "{done:#?}");
    assert!(done[0]["rows"].as_i64().is_some_and(|r| r > 0), "{done:#?}");
    assert!(
        done[0]["estimate"].as_i64().is_some_and(|e| e >= rows / 2),
        "the planner's estimate: {done:#?}"
    );
    assert!(
        done[0]["rate"].as_f64().is_some_and(|r| r > 0.0),
        "{done:#?}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("public.items") && l.contains("done")),
        "--wait ends with the outcome: {stdout}"
    );
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );

    // Sink a: the last event per key is the table, exactly.
    let a = read_lines(&dir.join("out/a.jsonl"));
    let a_reads = reads(&a);
    a_reads.iter().for_each(|e| assert_read_shape(e));
    eprintln!(
        "sink a: {} events, {} reads of {} distinct keys",
        a.len(),
        a_reads.len(),
        key_ids(a_reads.iter().copied()).len()
    );
    assert_per_key_order(&a);
    let expected = table(&db).await;
    let at_a = apply(&a);
    assert_same("sink a", &at_a, &expected, &a);
    let resurrected: Vec<&i64> = written
        .deleted
        .iter()
        .filter(|id| at_a.contains_key(id))
        .collect();
    assert!(
        resurrected.is_empty(),
        "deleted keys present at a: {resurrected:?}"
    );

    // Sink b: no read, every change, never behind.
    let at_b = b.delivered();
    let b_reads = reads(&at_b);
    assert!(
        b_reads.is_empty(),
        "b received {} read events, first {}",
        b_reads.len(),
        b_reads[0]
    );
    // b streamed every change: it holds exactly the rows the writer inserted.
    let at_b_rows: BTreeMap<i64, Value> = apply(&at_b).split_off(&(rows + 1));
    let inserted: BTreeMap<i64, Value> = expected
        .range(rows + 1..)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert_same("sink b (the writer's rows)", &at_b_rows, &inserted, &at_b);
    let samples = samples.lock().unwrap();
    assert!(
        samples.len() >= 3,
        "too few /status samples: {}",
        samples.len()
    );
    let worst = samples.iter().map(|(lag, _)| *lag).fold(0.0, f64::max);
    let running = samples
        .iter()
        .filter(|(_, bf)| bf.to_string().contains("\"running\""))
        .count();
    eprintln!(
        "b's lag during the backfill: worst {worst:.3} s over {} samples ({running} while running)",
        samples.len()
    );
    assert!(
        running > 0,
        "no /status sample saw the backfill running: {:?}",
        samples.last()
    );
    // While it runs, /status shows its progress: rows so far, estimate, rate and ETA.
    let progress = samples
        .iter()
        .flat_map(|(_, bf)| bf.as_array().cloned().unwrap_or_default())
        .find(|b| b["state"] == "running" && b["eta_secs"].is_number());
    let progress = progress.unwrap_or_else(|| panic!("no running sample with an ETA: {samples:?}"));
    for field in ["rows", "estimate", "rate"] {
        assert!(progress[field].is_number(), "{field}: {progress:#}");
    }
    assert!(worst < 1.0, "b's lag reached {worst} s during the backfill");
    // b's lag from its receiver: each version's commit to its delivery, for the changes
    // committed before the request (a baseline) and after it.
    let (mut before, mut during): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for r in b.requests().iter().filter(|r| r.status == 200) {
        for e in r.body.as_array().into_iter().flatten() {
            let Some(c) = e["after"]["v"]
                .as_str()
                .and_then(|v| written.committed_at.get(v))
            else {
                continue;
            };
            let lag = r.at.saturating_duration_since(*c);
            match *c < started {
                true => before.push(lag),
                false => during.push(lag),
            }
        }
    }
    for (what, lags) in [
        ("before the request", &mut before),
        ("during the backfill", &mut during),
    ] {
        lags.sort();
        assert!(!lags.is_empty(), "b received no change committed {what}");
        eprintln!(
            "b's commit-to-delivery {what}: p50 {:?}, p99 {:?}, worst {:?} ({} changes)",
            lags[lags.len() / 2],
            lags[lags.len() * 99 / 100],
            lags[lags.len() - 1],
            lags.len()
        );
    }
    let worst = during[during.len() - 1];
    assert!(
        worst < Duration::from_secs(1),
        "b waited {worst:?} for a change during the backfill"
    );
}

// 2 ───────────────────────────────────────────────────────────────────────────────────────

/// kill -9 once more than 60% of a 100k-row backfill (chunks of 2000) is confirmed, then
/// restart: it resumes from the last finished chunk, so every row arrives and there are
/// fewer than 1.5 reads per row in total (starting over would make it at least 1.6).
/// `journal` is the pipeline's journal key; `jitter` slows the receiver.
async fn kill_9_mid_backfill(name: &str, journal: &str, jitter: Option<Duration>) {
    let rows = 100_000;
    let pg = Postgres::start(name);
    let _db = create_items(&pg, rows).await;
    let a = Receiver::start().await;
    a.jitter(jitter);
    let dir = scratch_dir(name);
    let port = free_port();
    let yaml = pipeline(
        name,
        &pg,
        &["public.items"],
        "  backfill:\n    chunk_rows: 2000\n",
        &webhook_sink("a", &a),
        port,
        journal,
    );
    let yaml = yaml.replace(
        "delivery:\n",
        "delivery:\n  batch: { max_events: 200, max_wait: 10ms }\n",
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, &format!("sluice_{name}")).await;

    let stdout = backfill_ok(&dir, &[], &sluice);
    assert!(stdout.contains("public.items → every sink"), "{stdout}");
    let at_kill = eventually(
        Duration::from_secs(120),
        "60% of the rows confirmed",
        async || {
            let status = admin_status(port).await?;
            let b = &status["backfills"][0];
            (b["rows"].as_i64()? >= rows * 6 / 10).then(|| b.clone())
        },
    )
    .await;
    sluice.kill9();
    let before = reads(&a.delivered()).len();
    eprintln!("{name}: killed with {before} reads delivered at {at_kill}");
    assert_eq!(
        at_kill["state"], "running",
        "the kill must land mid-backfill: {at_kill:#}"
    );

    sluice.restart();
    let all = wait_finished(&dir, Duration::from_secs(120), &sluice).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["state"], "done", "{all:#?}\nlog:\n{}", sluice.log());
    // The rows of the last chunks may still be on their way.
    let what = format!("every row at a; log:\n{}", sluice.log());
    eventually(Duration::from_secs(60), &what, async || {
        (key_ids(reads(&a.delivered())).len() as i64 >= rows).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = a.delivered();
    let all_reads = reads(&got);
    all_reads.iter().for_each(|e| assert_read_shape(e));
    assert_eq!(
        key_ids(all_reads.iter().copied()),
        (1..=rows).collect::<BTreeSet<_>>()
    );
    eprintln!(
        "{name}: {} reads in total for {rows} rows ({before} before the kill)",
        all_reads.len()
    );
    assert!(
        (all_reads.len() as i64) < rows * 3 / 2,
        "{} reads for {rows} rows: the backfill started over; log:\n{}",
        all_reads.len(),
        sluice.log()
    );
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );
}

/// With the durable journal (the default): the slot confirms what is journaled, so the
/// backfill runs ahead of the sink and resumes where the journal left it.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_backfill_resumes_from_the_last_finished_chunk() {
    kill_9_mid_backfill("bfkill", "", None).await;
}

/// With a memory journal and a slow sink: the backfill goes at the sink's pace, and after
/// the kill the stream passes the old run's watermarks again.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_backfill_with_a_memory_journal_resumes_from_the_last_finished_chunk() {
    kill_9_mid_backfill(
        "bfkillmem",
        "journal: { type: memory }\n",
        Some(Duration::from_millis(40)),
    )
    .await;
}

/// With a slow sink and a small journal that the backfill keeps full.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_backfill_with_a_full_journal_resumes_from_the_last_finished_chunk() {
    kill_9_mid_backfill(
        "bfkillfull",
        "journal: { segment_bytes: 64KiB, max_bytes: 1MiB, retention: 0s }\n",
        Some(Duration::from_millis(40)),
    )
    .await;
}

// 3 ───────────────────────────────────────────────────────────────────────────────────────

/// `snapshot: initial` on a fresh pipeline over a populated table, with writes going on
/// from before the start to after the snapshot: streaming begins at once (changes arrive
/// between the snapshot's rows) and the sink ends equal to the table.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_initial_copies_a_populated_table_while_writes_continue() {
    let rows = 100_000;
    let pg = Postgres::start("bfinit");
    let db = create_items(&pg, rows).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(&pg, rows, Duration::from_millis(5), stop.clone());
    let dir = scratch_dir("bfinit");
    let port = free_port();
    let yaml = pipeline(
        "bfinit",
        &pg,
        &["public.items"],
        "  snapshot: initial\n  backfill:\n    chunk_rows: 1000\n",
        &file_sink("a"),
        port,
        "",
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    let all = wait_finished(&dir, Duration::from_secs(180), &sluice).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writes.await.unwrap();
    assert_eq!(all.len(), 1, "one backfill per table: {all:#?}");
    assert_eq!(all[0]["table"], "public.items", "{all:#?}");
    assert_eq!(all[0]["state"], "done", "{all:#?}\nlog:\n{}", sluice.log());
    assert_eq!(all[0]["sinks"], json!([]), "every sink: {all:#?}");
    drain(&dir, &db, &["a"], &sluice).await;
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );

    let a = read_lines(&dir.join("out/a.jsonl"));
    let a_reads = reads(&a);
    a_reads.iter().for_each(|e| assert_read_shape(e));
    assert!(!a_reads.is_empty(), "no read events at all");
    assert_per_key_order(&a);
    let last_read = a.iter().rposition(|e| e["op"] == "read").unwrap();
    let streamed_meanwhile = a[..last_read].iter().filter(|e| e["op"] != "read").count();
    eprintln!(
        "{} events, {} reads; {streamed_meanwhile} changes streamed before the last read; {} transactions",
        a.len(),
        a_reads.len(),
        written.transactions
    );
    assert!(
        streamed_meanwhile > 0,
        "no change arrived before the snapshot's last row: streaming waited for the snapshot"
    );
    assert_same("sink a", &apply(&a), &table(&db).await, &a);
}

// 4 ───────────────────────────────────────────────────────────────────────────────────────

/// `where:` in the file limits what the initial snapshot copies; `snapshot: never` keeps a
/// table out of it; `--where` limits what a command-line backfill copies, to the named sink.
#[tokio::test(flavor = "multi_thread")]
async fn where_limits_the_rows_copied() {
    let pg = Postgres::start("bfwhere");
    let db = create_items(&pg, 10_000).await;
    db.batch_execute(
        "create table other (id bigint primary key, v text);
         insert into other select g, 'o' || g from generate_series(1, 1000) g",
    )
    .await
    .unwrap();
    let dir = scratch_dir("bfwhere");
    let port = free_port();
    let yaml = pipeline(
        "bfwhere",
        &pg,
        &["public.items", "public.other"],
        "  snapshot: initial\n  backfill:\n    chunk_rows: 1000\n    tables:\n      \
         public.items: { where: \"n < 3\" }\n      public.other: { snapshot: never }\n",
        &(file_sink("a") + &file_sink("b")),
        port,
        "",
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    let initial = wait_finished(&dir, Duration::from_secs(120), &sluice).await;
    assert_eq!(initial.len(), 1, "only items is snapshotted: {initial:#?}");
    assert_eq!(initial[0]["table"], "public.items");
    assert_eq!(initial[0]["state"], "done", "{initial:#?}");
    assert_eq!(initial[0]["where"], "n < 3", "{initial:#?}");
    drain(&dir, &db, &["a", "b"], &sluice).await;
    let wanted: BTreeSet<i64> = (1..=10_000).filter(|id| id % 10 < 3).collect();
    for sink in ["a", "b"] {
        let events = read_lines(&dir.join(format!("out/{sink}.jsonl")));
        let items = reads(of_table(&events, "items"));
        items.iter().for_each(|e| assert_read_shape(e));
        assert_eq!(
            key_ids(items.iter().copied()),
            wanted,
            "sink {sink}: rows with n < 3"
        );
        assert!(
            items
                .iter()
                .all(|e| e["after"]["n"].as_i64().is_some_and(|n| n < 3)),
            "sink {sink}"
        );
        assert!(
            reads(of_table(&events, "other")).is_empty(),
            "sink {sink}: other has snapshot: never"
        );
    }

    let out = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            backfill(
                &dir,
                &[
                    "--sink",
                    "b",
                    "--table",
                    "public.other",
                    "--where",
                    "id <= 100",
                    "--wait",
                ],
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}\nlog:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        sluice.log()
    );
    assert!(
        printed(&out).lines().any(|l| l.starts_with("backfill ")
            && l.contains("public.other")
            && l.ends_with("→ b")),
        "one line for the request: {}",
        printed(&out)
    );
    drain(&dir, &db, &["a", "b"], &sluice).await;
    let all = backfills(&dir);
    let other = all
        .iter()
        .find(|b| b["table"] == "public.other")
        .unwrap_or_else(|| panic!("{all:#?}"));
    assert_eq!(other["where"], "id <= 100", "{other:#}");
    assert_eq!(other["sinks"], json!(["b"]), "{other:#}");
    assert_eq!(other["state"], "done", "{other:#}");
    assert_eq!(other["rows"], 100, "{other:#}");
    let b = read_lines(&dir.join("out/b.jsonl"));
    let b_other = reads(of_table(&b, "other"));
    assert_eq!(
        key_ids(b_other.iter().copied()),
        (1..=100).collect::<BTreeSet<_>>()
    );
    assert_eq!(b_other.len(), 100, "each row once");
    assert_eq!(b_other[0]["after"], json!({"id": 1, "v": "o1"}));
    let a = read_lines(&dir.join("out/a.jsonl"));
    assert!(reads(of_table(&a, "other")).is_empty(), "a was not asked");
    assert_eq!(reads(&a).len(), wanted.len(), "a got nothing more");
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );
}

// 5 ───────────────────────────────────────────────────────────────────────────────────────

/// Requests that cannot be served are refused with exit 2, naming what is wrong, and
/// nothing is recorded: a keyless table, a table the pipeline does not capture, an unknown
/// sink. A valid request made while the pipeline is stopped runs at its next start.
#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_and_a_stopped_pipeline_backfills_at_its_next_start() {
    let pg = Postgres::start("bfrefuse");
    let db = create_items(&pg, 1000).await;
    db.batch_execute(
        "create table nokey (x int, y text);
         alter table nokey replica identity full;
         insert into nokey select g, 'y' from generate_series(1, 10) g;
         create table elsewhere (id bigint primary key)",
    )
    .await
    .unwrap();
    let dir = scratch_dir("bfrefuse");
    let port = free_port();
    let yaml = pipeline(
        "bfrefuse",
        &pg,
        &["public.items", "public.nokey"],
        "",
        &(file_sink("a") + &file_sink("b")),
        port,
        "",
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_bfrefuse").await;

    for (args, named) in [
        (vec!["--table", "public.nokey"], "public.nokey"),
        (vec!["--table", "public.elsewhere"], "public.elsewhere"),
        (vec!["--sink", "nope"], "nope"),
        (vec!["--table", "public.items", "--sink", "nope"], "nope"),
    ] {
        let out = backfill(&dir, &args);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {stderr}{}",
            text(&out.stdout)
        );
        assert!(
            stderr.contains(named),
            "{args:?}: the error names {named}: {stderr}"
        );
    }
    assert_eq!(backfills(&dir), Vec::<Value>::new(), "nothing recorded");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for sink in ["a", "b"] {
        let events = read_lines(&dir.join(format!("out/{sink}.jsonl")));
        assert!(reads(&events).is_empty(), "sink {sink} got reads");
    }

    // Stopped: recorded now, done at the next start.
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );
    let stdout = backfill_ok(&dir, &["--table", "public.items", "--sink", "a"], &sluice);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("backfill "))
            .count(),
        1,
        "{stdout}"
    );
    assert!(stdout.contains("public.items → a"), "{stdout}");
    let pending = backfills(&dir);
    assert_eq!(pending.len(), 1, "{pending:#?}");
    assert_eq!(pending[0]["state"], "pending", "{pending:#?}");
    sluice.restart();
    let all = wait_finished(&dir, Duration::from_secs(60), &sluice).await;
    assert_eq!(all[0]["state"], "done", "{all:#?}");
    drain(&dir, &db, &["a", "b"], &sluice).await;
    let a = read_lines(&dir.join("out/a.jsonl"));
    assert_eq!(key_ids(reads(&a)), (1..=1000).collect::<BTreeSet<_>>());
    assert!(reads(&read_lines(&dir.join("out/b.jsonl"))).is_empty());
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );
}

// 6 ───────────────────────────────────────────────────────────────────────────────────────

/// `--cancel` stops a running backfill after its current chunk: its state is cancelled,
/// the sink got fewer rows than the table, and a `--wait` on it exits 1.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_backfill() {
    let rows = 100_000;
    let pg = Postgres::start("bfcancel");
    let db = create_items(&pg, rows).await;
    let a = Receiver::start().await;
    a.jitter(Some(Duration::from_millis(40)));
    let dir = scratch_dir("bfcancel");
    let port = free_port();
    let yaml = pipeline(
        "bfcancel",
        &pg,
        &["public.items"],
        "  backfill:\n    chunk_rows: 1000\n",
        &webhook_sink("a", &a),
        port,
        "journal: { segment_bytes: 64KiB, max_bytes: 1MiB, retention: 0s }\n",
    );
    let yaml = yaml.replace(
        "delivery:\n",
        "delivery:\n  batch: { max_events: 200, max_wait: 10ms }\n",
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_bfcancel").await;

    let waiting = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || backfill(&dir, &["--sink", "a", "--wait"]))
    };
    eventually(
        Duration::from_secs(60),
        "the first reads at a",
        async || (reads(&a.delivered()).len() >= 5_000).then_some(()),
    )
    .await;
    let out = backfill(&dir, &["--cancel"]);
    let stdout = printed(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("cancelled 1"),
        "says how many were cancelled: {stdout}"
    );
    let out = waiting.await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "--wait on a cancelled backfill\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let all = wait_finished(&dir, Duration::from_secs(30), &sluice).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["state"], "cancelled", "{all:#?}");
    // What was already on its way arrives; nothing more comes after it.
    drain(&dir, &db, &["a"], &sluice).await;
    let settled = reads(&a.delivered()).len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = a.delivered();
    let copied = key_ids(reads(&got)).len();
    eprintln!("cancelled after {copied} of {rows} rows");
    assert_eq!(
        reads(&got).len(),
        settled,
        "reads still arriving after the cancel"
    );
    assert!(
        (copied as i64) < rows,
        "the whole table arrived: nothing was cancelled"
    );
    assert!(
        all[0]["rows"].as_i64().is_some_and(|r| r < rows),
        "{all:#?}"
    );
    assert_eq!(
        sluice.terminate(Duration::from_secs(30)),
        0,
        "{}",
        sluice.log()
    );
}
