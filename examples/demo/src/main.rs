//! The sluice demo, on throwaway local services:
//!
//! 1. starts a PostgreSQL cluster (wal_level=logical), a Redis server, the Elasticsearch
//!    stand-in and a webhook receiver on free ports;
//! 2. runs `sluice run pipelines/shop.yaml` against them (orders and customers to a search
//!    index and a cache, orders to a webhook);
//! 3. plays a small shop app that only ever writes to PostgreSQL;
//! 4. prints what each store holds and every signed webhook, then `sluice status`;
//! 5. stops sluice with SIGTERM (it drains and commits), tears the slot down, cleans up.
//!
//! Run it with `bash scripts/demo.sh` (which builds both binaries first).

use std::path::PathBuf;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;
use sluice_testkit::elasticsearch::Elasticsearch;
use sluice_testkit::redis::Redis;
use sluice_testkit::{eventually, scratch_dir, sluice, Postgres, Receiver, Sluice};

const APP: &[&str] = &[
    "insert into customers (id, email) values (1, 'ada@example.com'), (2, 'alan@example.com')",
    "begin; insert into orders (id, customer_id, status, total) values (100, 1, 'new', 19.90); \
     insert into orders (id, customer_id, status, total) values (101, 2, 'new', 5.00); commit",
    "update orders set status = 'paid' where id = 100",
    "update customers set email = 'ada@lovelace.dev' where id = 1",
    "delete from orders where id = 101",
];

#[tokio::main]
async fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pipeline = repo
        .join("pipelines/shop.yaml")
        .canonicalize()
        .expect("pipelines/shop.yaml");

    println!(
        "== starting a throwaway PostgreSQL (wal_level=logical), Redis, the Elasticsearch \
         stand-in and a webhook receiver"
    );
    let pg = Postgres::start("demo");
    let db = pg.client().await;
    db.batch_execute(
        "create table customers (id int primary key, email text not null);
         create table orders (id int primary key, customer_id int references customers, status text, total numeric(10,2));",
    )
    .await
    .expect("create the demo tables");
    let rx = Receiver::start().await;
    let redis = Redis::start();
    let es = Elasticsearch::start().await;
    let dir = scratch_dir("demo");
    let admin = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let env = [
        ("DATABASE_URL", pg.url()),
        ("WEBHOOK_URL", rx.url()),
        ("REDIS_URL", redis.url()),
        ("ELASTICSEARCH_URL", es.url()),
        ("SLUICE_ADMIN", admin.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    println!("== sluice run {}", pipeline.display());
    let mut sluice = Sluice::start_file(&dir, &pipeline, &env);
    let slot_client = pg.client().await;
    eventually(
        Duration::from_secs(60),
        "the replication slot to stream",
        async || {
            let row = slot_client
                .query_opt(
                    "select active from pg_replication_slots where slot_name = 'sluice_shop'",
                    &[],
                )
                .await
                .ok()??;
            row.get::<_, bool>(0).then_some(())
        },
    )
    .await;

    println!("== the app writes to PostgreSQL only");
    for sql in APP {
        println!("   app> {sql}");
        db.batch_execute(sql).await.expect("demo write");
    }

    // Orders only reach the webhook (`tables: [public.orders]`): 2 inserts, 1 update, 1 delete.
    eventually(Duration::from_secs(30), "the webhooks", async || {
        (rx.delivered_count() >= 4).then_some(())
    })
    .await;
    let mut cache = redis::Client::open(redis.url())
        .expect("a redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    eventually(Duration::from_secs(30), "the stores", async || {
        let gone: Option<String> = cache.get("orders:101").await.ok()?;
        let paid = es.doc("orders", "100")?.source["status"] == "paid";
        (gone.is_none() && paid && es.doc("orders", "101").is_none()).then_some(())
    })
    .await;
    println!(
        "== the search index (Elasticsearch stand-in): documents and their versions (WAL LSNs)"
    );
    for table in ["customers", "orders"] {
        for (id, doc) in es.docs(table) {
            println!(
                "   {table}/{id:<4} version {:<12} {}",
                doc.version,
                compact(&doc.source)
            );
        }
    }
    println!("== the cache (Redis): one JSON value per row; deleted rows are gone");
    let mut keys: Vec<String> = cache.keys("*:*").await.unwrap_or_default();
    keys.retain(|k| !k.ends_with(":sluice"));
    keys.sort();
    for key in keys {
        let value: Option<String> = cache.get(&key).await.unwrap_or_default();
        println!("   {key:<13} {}", value.unwrap_or_default());
    }
    println!(
        "== the webhook receiver got (signed: webhook-id / webhook-timestamp / webhook-signature)"
    );
    let mut requests = rx.requests();
    requests.sort_by(|a, b| a.body["id"].as_str().cmp(&b.body["id"].as_str()));
    for r in &requests {
        let e = &r.body;
        let row = if e["after"].is_null() {
            &e["before"]
        } else {
            &e["after"]
        };
        println!(
            "   {:<14} {:<7} {:<9} key={:<10} {}",
            e["id"].as_str().unwrap_or("?"),
            e["op"].as_str().unwrap_or("?"),
            e["source"]["table"].as_str().unwrap_or("?"),
            e["key"].to_string(),
            compact(row)
        );
    }
    if let Some(r) = requests.first() {
        let h = |name: &str| {
            r.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        println!(
            "   first request: webhook-id={} webhook-signature={}",
            h("webhook-id"),
            h("webhook-signature")
        );
        println!(
            "   envelope: {}",
            serde_json::to_string_pretty(&r.body).unwrap_or_default()
        );
    }

    let pipeline_arg = pipeline.to_str().unwrap();
    println!("== sluice status");
    print_output(&sluice::command_env(&dir, &["status", pipeline_arg], &env));

    println!("== SIGTERM: sluice drains, commits its offset and exits");
    let code = sluice.terminate(Duration::from_secs(30));
    println!("   exit status {code}");
    println!("== sluice teardown (drops the slot and the publication)");
    print_output(&sluice::command_env(
        &dir,
        &["teardown", pipeline_arg],
        &env,
    ));
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    if code != 0 || rx.delivered_count() != 4 {
        eprintln!(
            "demo failed: exit {code}, {} deliveries; sluice log:\n{}",
            rx.delivered_count(),
            sluice.log()
        );
        std::process::exit(1);
    }
    println!(
        "== done: 5 app writes, 7 changes; the index and the cache equal the tables, the \
         webhook got the 4 order changes; the app wrote to PostgreSQL only"
    );
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn print_output(out: &std::process::Output) {
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
}
