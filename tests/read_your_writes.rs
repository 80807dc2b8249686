//! Read-your-writes through a real PostgreSQL, Redis, a webhook receiver and the real
//! binary: write, take `pg_current_wal_lsn()` after COMMIT, `GET /wait`, read the cache and
//! see the write, a thousand times; a token of a transaction that touched no captured
//! table; a sink that is down (408, then 200 once it is back); a parked event (409);
//! thousands of concurrent waiters; `sluice wait`.

mod common;
use sluice_testkit as harness;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::Value;

use common::{try_get, wait_streaming};
use harness::redis::Redis;
use harness::{eventually, free_port, scratch_dir, Postgres, Receiver, Respond, Sluice};

/// A cache sink and a webhook sink on `public.items`, with an admin server on `port`.
fn pipeline(pg: &Postgres, redis: &Redis, hook: &Receiver, port: u16) -> String {
    format!(
        "pipeline: ryw\n\
         source:\n  type: postgres\n  url: {}\n  tables: [public.items]\n\
         sinks:\n  \
           cache:\n    type: redis\n    url: {}\n    key: \"item:{{key}}\"\n  \
           hook:\n    type: webhook\n    url: {}\n\
         delivery:\n  retry: {{ initial: 50ms, max: 500ms }}\n\
         state: state.db\n\
         admin: 127.0.0.1:{port}\n",
        pg.url(),
        redis.url(),
        hook.url()
    )
}

/// The token after a COMMIT. The test clusters run with `synchronous_commit = off`, where
/// `pg_current_wal_lsn()` (the WAL written) may still be before the commit: the insert
/// position is after it in every setting.
async fn token(db: &tokio_postgres::Client) -> String {
    db.query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// `GET /wait?...`: status and JSON body (a wait may take up to a minute).
async fn wait(port: u16, query: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET /wait?{query} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(90), fetch)
        .await
        .unwrap_or_else(|_| panic!("GET /wait?{query}: no answer in 90 s"))
        .unwrap_or_else(|e| panic!("GET /wait?{query}: {e}"));
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, body)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_read_after_a_wait_sees_its_own_write() {
    let pg = Postgres::start("ryw");
    let db = pg.client().await;
    db.batch_execute(
        "create table items (id int primary key, v int not null);
         create table unpublished (id int primary key)",
    )
    .await
    .unwrap();
    let redis = Redis::start();
    let hook = Receiver::start().await;
    let port = free_port();
    let dir = scratch_dir("ryw");
    let mut sluice = Sluice::start(&dir, &pipeline(&pg, &redis, &hook, port));
    wait_streaming(&pg, "sluice_ryw").await;
    let mut cache = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // 1000 cycles of write, token, wait, read: every read sees its own write.
    let mut waits = Vec::with_capacity(1000);
    for i in 1..=1000 {
        let id = i % 50;
        db.execute(
            "insert into items values ($1, $2) on conflict (id) do update set v = $2",
            &[&id, &i],
        )
        .await
        .unwrap();
        let lsn = token(&db).await;
        let asked = Instant::now();
        let (status, body) = wait(port, &format!("sink=cache&lsn={lsn}&timeout=10s")).await;
        waits.push(asked.elapsed());
        assert_eq!(status, 200, "cycle {i}: {body}");
        let doc: Option<String> = cache.get(format!("item:{id}")).await.unwrap();
        let Some(doc) = doc else {
            let keys: Vec<String> = cache.keys("*").await.unwrap();
            panic!(
                "cycle {i}: item:{id} missing after {body}; keys {keys:?}; log:\n{}",
                sluice.log()
            );
        };
        let doc: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(doc["v"], i, "cycle {i}: the read sees its own write: {doc}");
    }
    waits.sort();
    eprintln!(
        "1000 write-wait-read cycles: wait p50 {:?}, p99 {:?}, max {:?}",
        percentile(&waits, 50),
        percentile(&waits, 99),
        waits[999]
    );

    // A token of a transaction that touched no captured table returns promptly.
    db.execute("insert into unpublished values (1)", &[])
        .await
        .unwrap();
    let lsn = token(&db).await;
    let asked = Instant::now();
    let (status, body) = wait(port, &format!("sink=cache&sink=hook&lsn={lsn}&timeout=10s")).await;
    assert_eq!(status, 200, "{body}");
    eprintln!("a token past every captured change: {:?}", asked.elapsed());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "no captured change to wait for: {:?}",
        asked.elapsed()
    );

    // Bad requests name what is wrong.
    let (status, body) = wait(port, "sink=nope&lsn=0/1").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cache, hook"),
        "{body}"
    );
    let (status, body) = wait(port, "sink=cache&lsn=yesterday").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("`lsn`"),
        "{body}"
    );
    let (status, body) = wait(port, "lsn=0/1").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("`sink`"),
        "{body}"
    );
    let (status, body) = wait(port, "sink=cache&lsn=0/1&timeout=2h").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("`timeout`"),
        "{body}"
    );

    // The same from a script.
    let lsn = token(&db).await;
    let out = harness::sluice::command(
        &dir,
        &["wait", "pipeline.yaml", "--sink", "cache", "--lsn", &lsn],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sink cache: applied through"));

    let (_, metrics) = common::http_get(&sluice, port, "/metrics").await;
    assert!(
        common::sample(&metrics, "sluice_wait_requests_total{outcome=\"applied\"}").unwrap()
            >= 1001.0,
        "{metrics}"
    );
    assert!(metrics.contains("sluice_wait_seconds_bucket"));
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_that_is_down_times_out_then_answers_once_back_and_parked_events_are_said() {
    let pg = Postgres::start("rywdown");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int not null)")
        .await
        .unwrap();
    let redis = Redis::start();
    let hook = Receiver::start().await;
    let port = free_port();
    let dir = scratch_dir("rywdown");
    let mut sluice = Sluice::start(&dir, &pipeline(&pg, &redis, &hook, port));
    wait_streaming(&pg, "sluice_ryw").await;

    // The webhook receiver answers 503: its sink cannot apply the write.
    hook.respond(Respond::Status(503));
    db.execute("insert into items values (1, 1)", &[])
        .await
        .unwrap();
    let lsn = token(&db).await;
    let (status, body) = wait(port, &format!("sink=cache&sink=hook&lsn={lsn}&timeout=1s")).await;
    assert_eq!(status, 408, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not applied within 1s"),
        "{body}"
    );
    let out = harness::sluice::command(
        &dir,
        &[
            "wait",
            "pipeline.yaml",
            "--sink",
            "hook",
            "--lsn",
            &lsn,
            "--timeout",
            "1s",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    // A wait in progress returns as soon as the receiver is back.
    let pending = tokio::spawn(async move {
        let asked = Instant::now();
        let answer = wait(port, &format!("sink=hook&lsn={lsn}&timeout=30s")).await;
        (answer, asked.elapsed())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!pending.is_finished());
    hook.respond(Respond::Ok);
    let ((status, body), took) = pending.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // A change the webhook rejects for good is parked: applied, but not seen.
    hook.respond(Respond::Status(422));
    db.execute("insert into items values (2, 2)", &[])
        .await
        .unwrap();
    let lsn = token(&db).await;
    let (status, body) = wait(port, &format!("sink=hook&lsn={lsn}&timeout=10s")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["sinks"][0]["parked"], 1, "{body}");
    assert!(body["error"].as_str().unwrap().contains("DLQ"), "{body}");
    // The cache applied it.
    let (status, _) = wait(port, &format!("sink=cache&lsn={lsn}&timeout=10s")).await;
    assert_eq!(status, 200);
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

/// 5000 waiters at once on one sink: each costs an entry, none polls, and all answer once
/// the sink passes their token.
#[tokio::test(flavor = "multi_thread")]
async fn five_thousand_concurrent_waiters() {
    let pg = Postgres::start("rywmany");
    let db = pg.client().await;
    db.batch_execute("create table items (id int primary key, v int not null)")
        .await
        .unwrap();
    let redis = Redis::start();
    let hook = Receiver::start().await;
    hook.respond(Respond::Status(503));
    let port = free_port();
    let dir = scratch_dir("rywmany");
    let mut sluice = Sluice::start(&dir, &pipeline(&pg, &redis, &hook, port));
    wait_streaming(&pg, "sluice_ryw").await;
    db.execute("insert into items values (1, 1)", &[])
        .await
        .unwrap();
    let lsn = token(&db).await;
    let (_, before) = try_get(port, "/metrics").await.unwrap();
    let rss_before = common::sample(&before, "sluice_process_resident_memory_bytes").unwrap();
    let waiters: Vec<_> = (0..5000)
        .map(|_| {
            let lsn = lsn.clone();
            tokio::spawn(
                async move { wait(port, &format!("sink=hook&lsn={lsn}&timeout=60s")).await },
            )
        })
        .collect();
    let metrics = eventually(Duration::from_secs(30), "5000 waiters", async || {
        let (_, text) = try_get(port, "/metrics").await.ok()?;
        (common::sample(&text, "sluice_wait_waiting{sink=\"hook\"}") == Some(5000.0))
            .then_some(text)
    })
    .await;
    let rss = common::sample(&metrics, "sluice_process_resident_memory_bytes").unwrap();
    let per_waiter = (rss - rss_before) / 5000.0;
    eprintln!(
        "RSS {:.1} MB before, {:.1} MB with 5000 waiters: {:.1} KB each (their HTTP connections included)",
        rss_before / 1e6,
        rss / 1e6,
        per_waiter / 1e3
    );
    assert!(per_waiter < 48e3, "{per_waiter} bytes per waiter");
    // Nothing polls: while they wait, sluice is idle.
    let cpu = |text: &str| common::sample(text, "sluice_process_cpu_seconds").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, later) = try_get(port, "/metrics").await.unwrap();
    assert!(
        cpu(&later) - cpu(&metrics) < 0.5,
        "5000 waiters cost CPU while nothing moves: {} s in 2 s",
        cpu(&later) - cpu(&metrics)
    );
    hook.respond(Respond::Ok);
    for w in waiters {
        let (status, body) = w.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}
