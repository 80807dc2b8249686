//! The search index and the cache converge to the source of truth, through the real binary,
//! a real PostgreSQL, a real Redis and the Elasticsearch stand-in: after a mixed load the
//! stores equal the tables row for row; replaying the same events changes nothing; a store
//! that is down (Redis killed, Elasticsearch answering 503) loses nothing and stops no other
//! sink; a mapping error parks only its event; a 429 on one item retries only that item;
//! an update that leaves a TOASTed column unchanged keeps its stored value.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{json, Value};
use sluice_testkit as harness;

use common::{wait_delivered, wait_streaming};
use harness::elasticsearch::Elasticsearch;
use harness::redis::Redis;
use harness::{eventually, scratch_dir, Postgres, Receiver, Sluice};

/// Tables `orders` and `customers` (both in the search index and the cache).
const SCHEMA: &str = "
    create table orders (id int primary key, status text not null, total numeric(12,2) not null, note text);
    create table customers (id int primary key, email text not null);";

/// A pipeline from `orders` and `customers` to a search index and a cache (and more sinks).
fn pipeline(
    name: &str,
    slot: &str,
    pg: &Postgres,
    es: &Elasticsearch,
    redis: &Redis,
    extra: &str,
) -> String {
    format!(
        "pipeline: {name}\n\
         source:\n  type: postgres\n  url: {}\n  slot: {slot}\n  publication: sluice_shop\n  \
           tables: [orders, customers]\n\
         sinks:\n  \
           search:\n    type: elasticsearch\n    url: {}\n    index: \"{{table}}\"\n  \
           cache:\n    type: redis\n    url: {}\n    key: \"{{table}}:{{key}}\"\n\
         {extra}\
         delivery:\n  retry: {{ initial: 50ms, max: 1s }}\n\
         state: {slot}.db\n",
        pg.url(),
        es.url(),
        redis.url()
    )
}

/// Each row of `table` as the envelope carries it (numeric as text), by id.
async fn rows(db: &tokio_postgres::Client, table: &str) -> BTreeMap<String, Value> {
    let sql = match table {
        "orders" => "select id::text, json_build_object('id', id, 'status', status, 'total', total::text, 'note', note)::text from orders",
        _ => "select id::text, json_build_object('id', id, 'email', email)::text from customers",
    };
    db.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), serde_json::from_str(r.get::<_, &str>(1)).unwrap()))
        .collect()
}

async fn cache_rows(
    cache: &mut redis::aio::MultiplexedConnection,
    table: &str,
) -> BTreeMap<String, Value> {
    let keys: Vec<String> = cache.keys(format!("{table}:*")).await.unwrap();
    let mut out = BTreeMap::new();
    for key in keys.into_iter().filter(|k| !k.ends_with(":sluice")) {
        let text: Option<String> = cache.get(&key).await.unwrap();
        if let Some(text) = text {
            out.insert(
                key[table.len() + 1..].to_string(),
                serde_json::from_str(&text).unwrap(),
            );
        }
    }
    out
}

fn index_rows(es: &Elasticsearch, table: &str) -> BTreeMap<String, Value> {
    es.docs(table)
        .into_iter()
        .map(|(id, d)| (id, d.source))
        .collect()
}

/// Wait until both stores hold exactly the rows of both tables.
async fn converged(
    db: &tokio_postgres::Client,
    es: &Elasticsearch,
    cache: &mut redis::aio::MultiplexedConnection,
    sluice: &Sluice,
) {
    let started = std::time::Instant::now();
    loop {
        let mut equal = true;
        let mut diff = String::new();
        for table in ["orders", "customers"] {
            let want = rows(db, table).await;
            let in_cache = cache_rows(cache, table).await;
            let in_index = index_rows(es, table);
            if in_cache != want {
                equal = false;
                diff = format!(
                    "cache {table}: {} rows, want {}",
                    in_cache.len(),
                    want.len()
                );
            }
            if in_index != want {
                equal = false;
                diff = format!(
                    "{diff}; index {table}: {} docs, want {}",
                    in_index.len(),
                    want.len()
                );
            }
        }
        if equal {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the stores did not converge: {diff}\nlog:\n{}",
            sluice.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// About 50,000 changes: inserts, updates (some rows several times, some columns to NULL)
/// and deletes, over both tables, in transactions of different sizes.
async fn mixed_load(db: &tokio_postgres::Client) {
    db.batch_execute(
        "insert into customers select i, 'c' || i || '@example.com' from generate_series(1, 5000) i;
         insert into orders select i, 'new', i * 1.5, 'n' || i from generate_series(1, 10000) i;
         insert into orders select i, 'new', i, null from generate_series(10001, 20000) i;",
    )
    .await
    .unwrap();
    for round in 0..5 {
        db.batch_execute(&format!(
            "update orders set status = 'paid-{round}', total = total + 1 where id % 5 = {round};
             update orders set note = null where id % 97 = {round};"
        ))
        .await
        .unwrap();
    }
    db.batch_execute(
        "delete from orders where id % 7 = 0;
         update customers set email = 'changed' || id || '@example.com' where id % 2 = 0;
         delete from customers where id % 11 = 0;",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_load_converges_in_both_stores_and_a_replay_changes_nothing() {
    let pg = Postgres::start("shop");
    let db = pg.client().await;
    db.batch_execute(SCHEMA).await.unwrap();
    let es = Elasticsearch::start().await;
    let redis = Redis::start();
    let mut cache = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let dir = scratch_dir("shop");
    let mut first = Sluice::start(&dir, &pipeline("shop", "sluice_shop", &pg, &es, &redis, ""));
    wait_streaming(&pg, "sluice_shop").await;
    // A second slot on the same WAL: a second run will replay every event of the load.
    db.execute(
        "select pg_create_logical_replication_slot('sluice_again', 'pgoutput')",
        &[],
    )
    .await
    .unwrap();
    mixed_load(&db).await;
    converged(&db, &es, &mut cache, &first).await;
    assert_eq!(
        first.terminate(Duration::from_secs(30)),
        0,
        "{}",
        first.log()
    );

    let before_cache = (
        cache_rows(&mut cache, "orders").await,
        cache_rows(&mut cache, "customers").await,
    );
    let versions = |es: &Elasticsearch| {
        let mut v: BTreeMap<String, i64> = BTreeMap::new();
        for t in ["orders", "customers"] {
            v.extend(
                es.docs(t)
                    .into_iter()
                    .map(|(id, d)| (format!("{t}/{id}"), d.version)),
            );
        }
        v
    };
    let before_versions = versions(&es);
    let applied_before = es.applied().len();

    // The same events again, from the start, through the second slot.
    std::fs::write(
        dir.join("again.yaml"),
        pipeline("again", "sluice_again", &pg, &es, &redis, ""),
    )
    .unwrap();
    let mut again = Sluice::start_file(&dir, std::path::Path::new("again.yaml"), &[]);
    eventually(
        Duration::from_secs(180),
        "the replay to finish",
        async || {
            let search = again.committed("sluice_again.db", "search")?;
            let cache = again.committed("sluice_again.db", "cache")?;
            let last = first.committed("sluice_shop.db", "search")?;
            (search >= last && cache >= last).then_some(())
        },
    )
    .await;
    assert_eq!(
        again.terminate(Duration::from_secs(30)),
        0,
        "{}",
        again.log()
    );
    let after_cache = (
        cache_rows(&mut cache, "orders").await,
        cache_rows(&mut cache, "customers").await,
    );
    assert!(before_cache == after_cache, "the replay changed the cache");
    assert_eq!(
        versions(&es),
        before_versions,
        "the replay changed the index"
    );
    assert_eq!(
        es.applied().len(),
        applied_before,
        "every replayed write was refused as not newer (409), none applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stores_that_go_down_lose_nothing_and_stop_no_other_sink() {
    let pg = Postgres::start("outage");
    let db = pg.client().await;
    db.batch_execute(SCHEMA).await.unwrap();
    let es = Elasticsearch::start().await;
    let mut redis = Redis::start_persistent();
    let rx = Receiver::start().await;
    let dir = scratch_dir("outage");
    let yaml = pipeline(
        "outage",
        "sluice_outage",
        &pg,
        &es,
        &redis,
        &format!("  hook:\n    type: webhook\n    url: {}\n", rx.url()),
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_outage").await;
    // Redis killed and Elasticsearch answering 503, for 10 s, while rows keep coming.
    let down_at = std::time::Instant::now();
    redis.stop();
    es.fail_requests(503, None, None);
    let writer = {
        let url = pg.url();
        tokio::spawn(async move {
            let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for i in 1..=100 {
                db.execute(
                    "insert into orders values ($1, 'new', $1::int, null)",
                    &[&i],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // The webhook keeps receiving while both stores are down.
    let during = eventually(
        Duration::from_secs(20),
        "the webhook to go on",
        async || {
            let n = rx.delivered_count();
            (n >= 40).then_some(n)
        },
    )
    .await;
    assert!(during >= 40);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down_at.elapsed())).await;
    redis.start_again();
    es.heal();
    writer.await.unwrap();
    wait_delivered(&rx, 100, &sluice).await;
    let mut cache = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    converged(&db, &es, &mut cache, &sluice).await;
    let log = sluice.log();
    assert!(!log.contains("sink stopped"), "no sink stopped:\n{log}");
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mapping_error_parks_its_event_and_a_429_retries_its_item_alone() {
    let pg = Postgres::start("items");
    let db = pg.client().await;
    db.batch_execute("create table docs (id int primary key, meta jsonb)")
        .await
        .unwrap();
    let es = Elasticsearch::start().await;
    let dir = scratch_dir("items");
    let yaml = format!(
        "pipeline: items\n\
         source:\n  type: postgres\n  url: {}\n  tables: [docs]\n\
         sinks:\n  search:\n    type: elasticsearch\n    url: {}\n\
         delivery:\n  retry: {{ initial: 50ms, max: 1s }}\n\
         state: state.db\n",
        pg.url(),
        es.url()
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_items").await;
    // `meta.size` is mapped as a number by the first document; a text size cannot be indexed.
    db.batch_execute(r#"insert into docs values (1, '{"size": 1}')"#)
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the first document", async || {
        es.doc("docs", "1").map(drop)
    })
    .await;
    es.fail_doc("4", Some(2));
    let bulks_before = es.bulks().len();
    db.batch_execute(
        r#"insert into docs values (2, '{"size": 2}'), (3, '{"size": "large"}'),
                                   (4, '{"size": 4}'), (5, '{"size": 5}')"#,
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "documents 2, 4 and 5",
        async || {
            ["2", "4", "5"]
                .iter()
                .all(|id| es.doc("docs", id).is_some())
                .then_some(())
        },
    )
    .await;
    assert!(
        es.doc("docs", "3").is_none(),
        "the badly typed document is not indexed"
    );
    let parked = eventually(Duration::from_secs(30), "the DLQ entry", async || {
        let out = harness::sluice::command(&dir, &["dlq", "list", "pipeline.yaml", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        (list.as_array()?.len() == 1).then_some(list)
    })
    .await;
    let entry = &parked[0];
    assert_eq!(entry["original"]["key"], json!({"id": 3}));
    let error = entry["error"].as_str().unwrap();
    assert!(
        error.contains("mapper_parsing_exception") || error.contains("document_parsing_exception"),
        "{error}"
    );
    // The 429 on document 4 was retried alone: later bulks carried only it.
    let bulks = es.bulks();
    let retries: Vec<&Vec<_>> = bulks[bulks_before..]
        .iter()
        .filter(|b| b.iter().any(|a| a.id == "4"))
        .collect();
    assert!(retries.len() >= 3, "sent, then retried twice: {retries:?}");
    for retry in &retries[1..] {
        assert!(
            retry.iter().all(|a| a.id == "4"),
            "a retry carries only the refused item: {retry:?}"
        );
    }
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_toasted_column_keeps_its_stored_value_in_both_stores() {
    let pg = Postgres::start("toast");
    let db = pg.client().await;
    db.batch_execute(
        "create table articles (id int primary key, title text, body text);
         alter table articles alter column body set storage external;",
    )
    .await
    .unwrap();
    let es = Elasticsearch::start().await;
    let redis = Redis::start();
    let dir = scratch_dir("toast");
    let yaml = format!(
        "pipeline: toast\n\
         source:\n  type: postgres\n  url: {}\n  tables: [articles]\n\
         sinks:\n  \
           search:\n    type: elasticsearch\n    url: {}\n  \
           cache:\n    type: redis\n    url: {}\n  \
           hashes:\n    type: redis\n    url: {}\n    format: hash\n    key: \"h:{{key}}\"\n\
         state: state.db\n",
        pg.url(),
        es.url(),
        redis.url(),
        redis.url()
    );
    let mut sluice = Sluice::start(&dir, &yaml);
    wait_streaming(&pg, "sluice_toast").await;
    let body = "x".repeat(20_000);
    db.execute("insert into articles values (1, 'first', $1)", &[&body])
        .await
        .unwrap();
    db.batch_execute("update articles set title = 'second' where id = 1")
        .await
        .unwrap();
    let mut cache = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the update in both stores",
        async || {
            let doc = es.doc("articles", "1")?;
            let cached: Option<String> = cache.get("articles:1").await.ok()?;
            let cached: Value = serde_json::from_str(&cached?).ok()?;
            let title: Option<String> = cache.hget("h:1", "title").await.ok()?;
            (doc.source["title"] == "second"
                && cached["title"] == "second"
                && title.as_deref() == Some("second"))
            .then_some(())
        },
    )
    .await;
    let doc = es.doc("articles", "1").unwrap();
    assert_eq!(
        doc.source["body"].as_str().map(str::len),
        Some(20_000),
        "index keeps the body"
    );
    let cached: String = cache.get("articles:1").await.unwrap();
    let cached: Value = serde_json::from_str(&cached).unwrap();
    assert_eq!(
        cached["body"].as_str().map(str::len),
        Some(20_000),
        "json cache keeps the body"
    );
    let hashed: String = cache.hget("h:1", "body").await.unwrap();
    assert_eq!(hashed.len(), 20_000, "hash cache keeps the body");
    // The update really left the column out: the stream said so.
    assert!(
        sluice
            .log()
            .lines()
            .all(|l| !l.contains("stored row is unknown")),
        "{}",
        sluice.log()
    );
    assert_eq!(sluice.terminate(Duration::from_secs(30)), 0);
}
