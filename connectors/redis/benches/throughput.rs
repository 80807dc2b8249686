//! The Redis sink alone against a local redis-server, without PostgreSQL or the engine:
//! events per second, the sink's own CPU per event (this process) and the server's CPU
//! per event, for each shape of the sink and a few batches in flight.
//!
//! ```text
//! cargo bench -p sluice-redis --bench throughput            # 200000 events per row
//! cargo bench -p sluice-redis --bench throughput -- 50000
//! ```
//!
//! Rows are inserts of the bench table's shape (6 columns, a JSON document of about 150
//! bytes), in batches of 500, each key once, into an empty server started for each row.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use sluice_redis::{RedisConfig, RedisSink};
use sluice_runtime::sink::Pending;
use sluice_runtime::{testing, Delivery, Event, Op, Row, Sink, Value};
use sluice_testkit::redis::Redis;

const BATCH: usize = 500;

fn main() {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("| shape | in flight | events/s | sink µs/event | redis-server µs/event |");
    println!("|---|---|---|---|---|");
    for (shape, config) in [
        ("cache json", json!({})),
        ("cache hash", json!({ "format": "hash" })),
        ("stream", json!({ "mode": "stream", "maxlen": 100000 })),
    ] {
        for in_flight in [1, 2, 3, 4] {
            let row = runtime.block_on(run(config.clone(), events, in_flight));
            println!(
                "| {shape} | {in_flight} | {:.0} | {:.2} | {:.2} |",
                row.events_per_second, row.sink_us, row.server_us
            );
        }
    }
}

struct Measured {
    events_per_second: f64,
    sink_us: f64,
    server_us: f64,
}

async fn run(mut config: serde_json::Value, events: usize, in_flight: usize) -> Measured {
    let redis = Redis::start();
    config["url"] = redis.url().into();
    let config: RedisConfig = serde_json::from_value(config).expect("a valid config");
    let mut sink = RedisSink::new(config).expect("a valid sink");
    // Connect and load the script outside the timing.
    let warm_up = [Arc::new(order(u64::MAX >> 8, 0, 0))];
    assert!(sink
        .write(&warm_up)
        .await
        .iter()
        .all(Delivery::is_delivered));
    let batches: Vec<Vec<Arc<Event>>> = (0..events)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .enumerate()
        .map(|(b, ids)| {
            ids.iter()
                .enumerate()
                .map(|(i, &id)| Arc::new(order(0x1000 + b as u64, i as u32, id as i64)))
                .collect()
        })
        .collect();
    let server = redis.pid().expect("the server runs");
    let (sink_before, server_before) = (cpu_seconds(std::process::id()), cpu_seconds(server));
    let started = Instant::now();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    for batch in &batches {
        if pending.len() == in_flight {
            check(pending.pop_front().expect("in flight").await);
        }
        pending.push_back(sink.send(batch).await);
    }
    for answers in pending {
        check(answers.await);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (sink_after, server_after) = (cpu_seconds(std::process::id()), cpu_seconds(server));
    sink.close().await;
    let n = events as f64;
    Measured {
        events_per_second: n / elapsed,
        sink_us: (sink_after - sink_before) * 1e6 / n,
        server_us: (server_after - server_before) * 1e6 / n,
    }
}

fn check(answers: Vec<Delivery>) {
    if let Some(failed) = answers.iter().find(|a| !a.is_delivered()) {
        panic!("a healthy server takes everything, got {failed:?}");
    }
}

/// An insert into the bench's table, as the source decodes it.
fn order(lsn: u64, index: u32, id: i64) -> Event {
    let mut e = testing::event("orders", Op::Insert, lsn, index);
    let mut key = Row::default();
    key.push("id".into(), Value::Int(id));
    let mut after = key.clone();
    after.push("account".into(), Value::Int(id % 1000));
    after.push("status".into(), Value::Text("new".into()));
    after.push(
        "amount".into(),
        Value::Text(format!("{}.{:02}", id % 1000, id % 100)),
    );
    after.push("note".into(), Value::Text(format!("order {id}")));
    after.push(
        "updated_at".into(),
        Value::Text("2026-11-22T06:00:00.123456+00:00".into()),
    );
    e.key = Some(key);
    e.after = Some(after);
    e
}

/// CPU time (user + system) of process `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = text.rfind(')').map(|at| &text[at + 2..]) else {
        return 0.0;
    };
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // After the command: field 3 (state) is index 0; utime and stime are fields 14, 15.
    (fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)) as f64 / 100.0
}
