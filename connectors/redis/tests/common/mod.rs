//! Helpers shared by the Redis sink's integration tests: a real server, a sink on it, a
//! client to look at what the sink wrote, and events to write.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use serde_json::Value as Json;
use sluice_redis::{RedisConfig, RedisSink};
use sluice_runtime::{testing, Delivery, Event, Op, Row, Sink, Value};
use sluice_testkit::redis::Redis;

/// A connection for looking at the server.
pub async fn connect(redis: &Redis) -> MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test redis")
}

/// A sink for `config` (whose url is replaced by the server's).
pub fn sink(redis: &Redis, mut config: serde_json::Value) -> RedisSink {
    config["url"] = redis.url().into();
    let config: RedisConfig = serde_json::from_value(config).unwrap();
    RedisSink::new(config).unwrap()
}

/// Write `batch` and return the answers' names.
pub async fn write(sink: &mut RedisSink, batch: &[Arc<Event>]) -> Vec<&'static str> {
    let answers = sink.write(batch).await;
    assert_eq!(answers.len(), batch.len(), "one answer per event");
    answers.iter().map(name).collect()
}

/// Write `batch` and return the answers.
pub async fn answers(sink: &mut RedisSink, batch: &[Arc<Event>]) -> Vec<Delivery> {
    let answers = sink.write(batch).await;
    assert_eq!(answers.len(), batch.len(), "one answer per event");
    answers
}

pub fn name(d: &Delivery) -> &'static str {
    match d {
        Delivery::Delivered => "delivered",
        Delivery::Retry { .. } => "retry",
        Delivery::Deferred => "deferred",
        Delivery::Rejected { .. } => "rejected",
        _ => "other",
    }
}

/// A row from `(column, value)` pairs.
pub fn row(pairs: &[(&str, Value)]) -> Row {
    let mut row = Row::default();
    for (name, value) in pairs {
        row.push((*name).into(), value.clone());
    }
    row
}

/// A change of `public.<table>` row `id` at `index` of the transaction committed at
/// `lsn`; `after` for inserts and updates, the key as `before` for deletes.
pub fn change(
    table: &str,
    op: Op,
    lsn: u64,
    index: u32,
    id: i64,
    after: &[(&str, Value)],
) -> Event {
    let mut e = testing::event(table, op, lsn, index);
    let key = row(&[("id", Value::Int(id))]);
    e.key = Some(key.clone());
    match op {
        Op::Delete => e.before = Some(key),
        _ => {
            let mut full = key;
            for (name, value) in after {
                full.push((*name).into(), value.clone());
            }
            e.after = Some(full);
        }
    }
    e
}

/// An upsert of `items` row `id` holding `n`.
pub fn item(op: Op, lsn: u64, index: u32, id: i64, n: i64) -> Arc<Event> {
    Arc::new(change("items", op, lsn, index, id, &[("n", Value::Int(n))]))
}

/// A delete of `items` row `id`.
pub fn delete(lsn: u64, index: u32, id: i64) -> Arc<Event> {
    Arc::new(change("items", Op::Delete, lsn, index, id, &[]))
}

/// The JSON document at `key`, if any.
pub async fn doc(conn: &mut MultiplexedConnection, key: &str) -> Option<Json> {
    let text: Option<String> = conn.get(key).await.unwrap();
    text.map(|t| serde_json::from_str(&t).expect("a stored document is JSON"))
}

/// The raw text at `key`, if any.
pub async fn text(conn: &mut MultiplexedConnection, key: &str) -> Option<String> {
    conn.get(key).await.unwrap()
}

/// The fields of the hash at `key`.
pub async fn hash(conn: &mut MultiplexedConnection, key: &str) -> BTreeMap<String, String> {
    conn.hgetall(key).await.unwrap()
}

/// Everything the server holds, key by key: strings (parsed when JSON), hashes as objects,
/// streams as arrays of `[id, {field: value}]`.
pub async fn dump(conn: &mut MultiplexedConnection) -> BTreeMap<String, Json> {
    let keys: Vec<String> = conn.keys("*").await.unwrap();
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(conn)
            .await
            .unwrap();
        let value = match kind.as_str() {
            "string" => {
                let text: String = conn.get(&key).await.unwrap();
                serde_json::from_str(&text).unwrap_or(Json::String(text))
            }
            "hash" => serde_json::to_value(hash(conn, &key).await).unwrap(),
            "stream" => serde_json::to_value(entries(conn, &key).await).unwrap(),
            other => panic!("unexpected {other} at {key}"),
        };
        out.insert(key, value);
    }
    out
}

/// The entries of a stream: `(id, {field: value})`, oldest first.
pub async fn entries(
    conn: &mut MultiplexedConnection,
    stream: &str,
) -> Vec<(String, BTreeMap<String, String>)> {
    redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap()
}

/// Milliseconds to live of `key` (-1: no expiry, -2: no key).
pub async fn pttl(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    conn.pttl(key).await.unwrap()
}

/// Sinks are used through the trait in tests, as the engine does.
pub fn boxed(sink: RedisSink) -> Box<dyn Sink> {
    Box::new(sink)
}

/// How many bytes the server holds (`used_memory` in `INFO memory`).
pub async fn used_memory(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

/// Set `maxmemory` (0: no limit).
pub async fn set_maxmemory(conn: &mut MultiplexedConnection, bytes: u64) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(bytes)
        .query_async(conn)
        .await
        .unwrap();
}
