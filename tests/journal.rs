//! The durable journal, end to end, through a real PostgreSQL, real receivers and the real
//! binary: a sink down for a minute costs local disk, never the other sink or the
//! primary's WAL; kill -9 at random moments during appends loses nothing and delivers
//! nothing at or before a committed offset again; a full journal pauses the source and says
//! so; `sluice rewind` delivers again to one sink; a lost journal is refused, naming the gap.

mod common;
use sluice_testkit as harness;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{assert_per_key_order, http_get, position, sample, wait_streaming};
use harness::{eventually, free_port, scratch_dir, Postgres, Receiver, Respond, Sluice};

/// Two webhook sinks `a` and `b` on `public.items`, with `extra` top-level text.
fn two_sinks(name: &str, pg: &Postgres, a: &Receiver, b: &Receiver, extra: &str) -> String {
    format!(
        "pipeline: {name}\n\
         source:\n  type: postgres\n  url: {}\n  tables: [public.items]\n\
         sinks:\n  \
           a:\n    type: webhook\n    url: {}\n  \
           b:\n    type: webhook\n    url: {}\n\
         delivery:\n  retry: {{ initial: 50ms, max: 500ms }}\n\
         state: state.db\n{extra}",
        pg.url(),
        a.url(),
        b.url()
    )
}

async fn create_items(pg: &Postgres) -> tokio_postgres::Client {
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v text not null)")
        .await
        .unwrap();
    db
}

/// The slot's `confirmed_flush_lsn`.
async fn confirmed(db: &tokio_postgres::Client, slot: &str) -> u64 {
    let text: String = db
        .query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The row ids among `events`.
fn ids(events: &[Value]) -> BTreeSet<i64> {
    events
        .iter()
        .filter_map(|e| e["key"]["id"].as_i64())
        .collect()
}

/// Wait until `rx` has every id in `1..=n`; returns what it got.
async fn wait_all(rx: &Receiver, n: i64, what: &str, sluice: &Sluice) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let got = rx.delivered();
        if ids(&got).len() as i64 >= n {
            return got;
        }
        if started.elapsed() > Duration::from_secs(120) {
            panic!(
                "{what}: {} of {n} rows after 120s; log:\n{}",
                ids(&got).len(),
                sluice.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A steady load in the background: `per_tick` rows every `tick`, each row's commit time
/// recorded, until `stop` is set. Returns the number of rows written.
fn steady_load(
    pg: &Postgres,
    per_tick: i64,
    tick: Duration,
    stop: Arc<AtomicBool>,
    committed_at: Arc<Mutex<HashMap<i64, Instant>>>,
) -> tokio::task::JoinHandle<i64> {
    let url = pg.url();
    tokio::spawn(async move {
        let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut next = 1;
        let mut at = tokio::time::interval(tick);
        while !stop.load(Ordering::Relaxed) {
            at.tick().await;
            let last = next + per_tick - 1;
            db.batch_execute(&format!(
                "insert into items select g, 'x' from generate_series({next}, {last}) g"
            ))
            .await
            .unwrap();
            let now = Instant::now();
            committed_at
                .lock()
                .unwrap()
                .extend((next..=last).map(|id| (id, now)));
            next = last + 1;
        }
        next - 1
    })
}

// 1 ───────────────────────────────────────────────────────────────────────────────────────

/// The outage of the issue at test scale: b is down for 60 s under a steady load. a's lag
/// stays under a second, the slot keeps confirming (the journal holds b's backlog, not the
/// primary), and b then receives everything, in order, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_sink_down_for_a_minute_costs_local_disk_not_the_other_sink_nor_the_slot() {
    let pg = Postgres::start("outage");
    let db = create_items(&pg).await;
    let a = Receiver::start().await;
    let mut b = Receiver::start().await;
    let dir = scratch_dir("outage");
    let mut sluice = Sluice::start(&dir, &two_sinks("outage", &pg, &a, &b, ""));
    wait_streaming(&pg, "sluice_outage").await;

    let stop = Arc::new(AtomicBool::new(false));
    let committed_at = Arc::new(Mutex::new(HashMap::new()));
    let load = steady_load(
        &pg,
        20,
        Duration::from_millis(100),
        stop.clone(),
        committed_at.clone(),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    b.stop().await;
    let down = Instant::now();
    // While b is down, the slot keeps confirming: every 5 s it is further on.
    let mut last = confirmed(&db, "sluice_outage").await;
    let mut samples = Vec::new();
    while down.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = confirmed(&db, "sluice_outage").await;
        samples.push(now);
        assert!(
            now > last,
            "the slot stopped confirming while b was down ({last:X} then {now:X})"
        );
        last = now;
    }
    b.start_again().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let rows = load.await.unwrap();
    assert!(rows > 10_000, "the load ran: {rows} rows");

    let got_a = wait_all(&a, rows, "sink a", &sluice).await;
    let got_b = wait_all(&b, rows, "sink b", &sluice).await;
    for (name, got) in [("a", &got_a), ("b", &got_b)] {
        assert_per_key_order(got);
        assert_eq!(got.len() as i64, rows, "sink {name}: every row once");
    }
    // a never waited for b: the time from each row's commit to its delivery to a.
    let committed_at = committed_at.lock().unwrap();
    let mut lags: Vec<Duration> = a
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| {
            let events = r
                .body
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![r.body.clone()]);
            events
                .iter()
                .filter_map(|e| committed_at.get(&e["key"]["id"].as_i64()?))
                .map(|c| r.at.saturating_duration_since(*c))
                .collect::<Vec<_>>()
        })
        .collect();
    lags.sort();
    let worst = *lags.last().unwrap();
    let p99 = lags[lags.len() * 99 / 100];
    eprintln!("a's lag while b was down: p99 {p99:?}, worst {worst:?}");
    assert!(
        worst < Duration::from_secs(1),
        "a's lag reached {worst:?} (p99 {p99:?}) while b was down"
    );
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

// 2 ───────────────────────────────────────────────────────────────────────────────────────

/// kill -9 at random moments while the source appends: nothing is lost, and no event at or
/// before the committed offset is delivered again. Once, a partly written record is left
/// at the end of the newest segment (what a crash mid-write leaves): it is cut.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_appends_loses_nothing_and_repeats_nothing_committed() {
    let pg = Postgres::start("kill9j");
    create_items(&pg).await;
    let rx = Receiver::start().await;
    let dir = scratch_dir("kill9j");
    let yaml = common::webhook_pipeline("kj", &pg, &["public.items"], &rx.url(), "", "");
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_kj").await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(
        &pg,
        50,
        Duration::from_millis(20),
        stop.clone(),
        Default::default(),
    );
    let seed = AtomicI64::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as i64,
    );
    let random_ms = || {
        let next = seed
            .load(Ordering::Relaxed)
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed.store(next, Ordering::Relaxed);
        300 + (next >> 33).rem_euclid(1200) as u64
    };
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(random_ms())).await;
        sluice.kill9();
        let committed = sluice.committed("state.db", "hook");
        let seen = rx.delivered_count();
        if round == 2 {
            tear_the_tail(&dir.join("state.journal"));
        }
        sluice.restart();
        eventually(
            Duration::from_secs(60),
            "deliveries after the restart",
            async || (rx.delivered_count() > seen).then_some(()),
        )
        .await;
        if let Some(committed) = committed {
            let again: Vec<Value> = rx.delivered()[seen..]
                .iter()
                .filter(|e| position(e) <= committed)
                .cloned()
                .collect();
            assert!(
                again.is_empty(),
                "round {round}: {} event(s) at or before the committed {committed:?} came again, first {}",
                again.len(),
                again[0]
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rows = load.await.unwrap();
    let got = wait_all(&rx, rows, "every row after six kills", &sluice).await;
    assert_eq!(ids(&got), (1..=rows).collect::<BTreeSet<_>>());
    assert!(
        sluice.log().contains("cutting it there"),
        "the torn record was found and cut; log:\n{}",
        sluice.log()
    );
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

/// Append half a record to the newest segment, as a crash in the middle of a write does.
fn tear_the_tail(journal: &std::path::Path) {
    use std::io::Write;
    let newest = std::fs::read_dir(journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .expect("a segment");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    // A record header announcing 4096 bytes, then only a few of them.
    file.write_all(&4096u32.to_le_bytes()).unwrap();
    file.write_all(&[0xAB; 4 + 37]).unwrap();
}

// 3 ───────────────────────────────────────────────────────────────────────────────────────

/// A sink that stays down fills a small journal: the source pauses (the log, the status and
/// a metric say so), nothing is dropped, and everything flows again once the sink is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_journal_pauses_the_source_says_so_and_drops_nothing() {
    let pg = Postgres::start("jfull");
    let db = create_items(&pg).await;
    let a = Receiver::start().await;
    let b = Receiver::start().await;
    b.respond(Respond::Status(503));
    let dir = scratch_dir("jfull");
    let port = free_port();
    let yaml = two_sinks(
        "jfull",
        &pg,
        &a,
        &b,
        &format!(
            "journal: {{ segment_bytes: 64KiB, max_bytes: 256KiB, retention: 0s }}\n\
             admin: 127.0.0.1:{port}\n"
        ),
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_jfull").await;
    let rows = 5_000;
    for i in 0..50 {
        db.batch_execute(&format!(
            "insert into items select g, repeat('x', 200) from generate_series({}, {}) g",
            i * 100 + 1,
            i * 100 + 100
        ))
        .await
        .unwrap();
    }
    let metrics = eventually(
        Duration::from_secs(30),
        "the journal to be full",
        async || {
            let (_, text) = http_get(&sluice, port, "/metrics").await;
            (sample(&text, "sluice_journal_full") == Some(1.0)).then_some(text)
        },
    )
    .await;
    let bytes = sample(&metrics, "sluice_journal_bytes").unwrap();
    assert!(
        bytes <= 256.0 * 1024.0,
        "{bytes} bytes kept with max_bytes 256KiB"
    );
    // Not ready while the source waits (the budget is reached in steps: wait for it).
    let body = eventually(
        Duration::from_secs(30),
        "/readyz to say the journal is full",
        async || {
            let (ready, body) = http_get(&sluice, port, "/readyz").await;
            (ready == 503 && body.contains("journal.max_bytes")).then_some(body)
        },
    )
    .await;
    // It stays full while b is down: no flapping.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ready, again) = http_get(&sluice, port, "/readyz").await;
    assert_eq!(ready, 503, "{body} then {again}");
    let status =
        String::from_utf8(harness::sluice::command(&dir, &["status", "pipeline.yaml"]).stdout)
            .unwrap();
    assert!(status.contains("FULL"), "{status}");
    assert!(sluice.log().contains("journal full"), "{}", sluice.log());
    assert!(
        (a.delivered_count() as i64) < rows,
        "the source paused: a cannot have everything yet"
    );

    b.respond(Respond::Ok);
    let got_a = wait_all(&a, rows, "sink a", &sluice).await;
    let got_b = wait_all(&b, rows, "sink b", &sluice).await;
    for got in [&got_a, &got_b] {
        assert_per_key_order(got);
        assert_eq!(ids(got), (1..=rows).collect::<BTreeSet<_>>());
    }
    eventually(
        Duration::from_secs(10),
        "the journal to have room",
        async || {
            let (_, text) = http_get(&sluice, port, "/metrics").await;
            (sample(&text, "sluice_journal_full") == Some(0.0)).then_some(())
        },
    )
    .await;
    assert!(sluice.log().contains("space again"));
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

// 4 ───────────────────────────────────────────────────────────────────────────────────────

/// `sluice rewind` delivers again to the named sink only: on a running pipeline from an
/// LSN, and on a stopped one from the oldest entry kept.
#[tokio::test(flavor = "multi_thread")]
async fn rewind_delivers_again_to_one_sink_only() {
    let pg = Postgres::start("rewind");
    let db = create_items(&pg).await;
    let a = Receiver::start().await;
    let b = Receiver::start().await;
    let dir = scratch_dir("rewind");
    let mut sluice = Sluice::start(&dir, &two_sinks("rw", &pg, &a, &b, ""));
    wait_streaming(&pg, "sluice_rw").await;
    for i in 0..3 {
        db.batch_execute(&format!(
            "insert into items select g, 'x' from generate_series({}, {}) g",
            i * 100 + 1,
            i * 100 + 100
        ))
        .await
        .unwrap();
    }
    let first = wait_all(&a, 300, "sink a", &sluice).await;
    wait_all(&b, 300, "sink b", &sluice).await;
    let second_tx = first
        .iter()
        .filter(|e| e["key"]["id"] == 101)
        .map(|e| e["source"]["commit_lsn"].as_str().unwrap().to_string())
        .next()
        .unwrap();

    // Running: from the second transaction's commit on.
    let out = harness::sluice::command(
        &dir,
        &["rewind", "pipeline.yaml", "--sink", "a", "--to", &second_tx],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = eventually(
        Duration::from_secs(30),
        "a to receive 200 again",
        async || {
            let got = a.delivered();
            (got.len() >= 500).then_some(got)
        },
    )
    .await;
    assert_eq!(
        ids(&again[300..]),
        (101..=300).collect::<BTreeSet<_>>(),
        "from the second transaction on"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.delivered_count(), 500, "nothing more");
    assert_eq!(b.delivered_count(), 300, "b is not touched");

    // Stopped: from the oldest entry, at the next start.
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
    let out = harness::sluice::command(
        &dir,
        &["rewind", "pipeline.yaml", "--sink", "a", "--to", "oldest"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sluice.restart();
    let again = eventually(
        Duration::from_secs(30),
        "a to receive all again",
        async || {
            let got = a.delivered();
            (got.len() >= 800).then_some(got)
        },
    )
    .await;
    assert_eq!(ids(&again[500..]), (1..=300).collect::<BTreeSet<_>>());
    assert_per_key_order(&again[500..]);
    assert!(sluice.log().contains("sink rewound by an operator"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.delivered_count(), 300, "b is not touched");
    // Going forward is not a rewind.
    let out = harness::sluice::command(
        &dir,
        &["rewind", "pipeline.yaml", "--sink", "b", "--to", "FF/0"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("moves back"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

// 5 ───────────────────────────────────────────────────────────────────────────────────────

/// The journal folder lost while sluice was stopped, with a sink behind: the next start
/// refuses, naming the sink, the gap and the choices; `--accept-journal-gap` goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_journal_is_refused_naming_the_gap() {
    let pg = Postgres::start("jgap");
    let db = create_items(&pg).await;
    let a = Receiver::start().await;
    let b = Receiver::start().await;
    b.respond(Respond::Status(503));
    let dir = scratch_dir("jgap");
    let mut sluice = Sluice::start(&dir, &two_sinks("jgap", &pg, &a, &b, ""));
    wait_streaming(&pg, "sluice_jgap").await;
    db.batch_execute("insert into items select g, 'x' from generate_series(1, 100) g")
        .await
        .unwrap();
    wait_all(&a, 100, "sink a", &sluice).await;
    let end: String = db
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let (hi, lo) = end.split_once('/').unwrap();
    let end = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    eventually(
        Duration::from_secs(20),
        "the slot to confirm the rows",
        async || (confirmed(&db, "sluice_jgap").await >= end).then_some(()),
    )
    .await;
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
    assert_eq!(b.delivered_count(), 0);

    std::fs::remove_dir_all(dir.join("state.journal")).unwrap();
    sluice.restart();
    assert_eq!(sluice.wait(Duration::from_secs(30)), 1);
    let log = sluice.log();
    assert!(
        log.contains("does not hold changes the replication slot already confirmed")
            && log.contains("sink b needs every change")
            && log.contains("--accept-journal-gap")
            && log.contains("sluice backfill"),
        "{log}"
    );
    assert!(!log.contains("sink a needs"), "a lost nothing: {log}");

    b.respond(Respond::Ok);
    sluice.run_args = vec!["--accept-journal-gap".into()];
    sluice.restart();
    wait_streaming(&pg, "sluice_jgap").await;
    db.batch_execute("insert into items select g, 'x' from generate_series(101, 150) g")
        .await
        .unwrap();
    let got = eventually(
        Duration::from_secs(30),
        "b to get the new rows",
        async || {
            let got = b.delivered();
            (ids(&got).len() >= 50).then_some(got)
        },
    )
    .await;
    assert_eq!(
        ids(&got),
        (101..=150).collect::<BTreeSet<_>>(),
        "only what came after"
    );
    assert!(sluice
        .log()
        .contains("those changes are lost to these sinks"));
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}
