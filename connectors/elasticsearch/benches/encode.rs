//! What encoding costs: a 500-event batch of 6-column rows as a `_bulk` body (plan: render
//! index and id, derive the version; encode: action line and document), against
//! `Event::json()` (the envelope every sink shares) in the same run as the baseline.
//!
//! `cargo bench -p sluice-elasticsearch --bench encode` (release). Prints µs per event;
//! the target is at most 3 µs of CPU per event.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_elasticsearch::encode::{Encoder, TEMPLATE_RULES};
use sluice_runtime::template::Template;
use sluice_runtime::{testing, Event, Lsn, Op, Row, Value};

const BATCH: usize = 500;
const ROUNDS: usize = 200;

/// An `orders` row like the benchmark table's: id, status, total, note, created, paid.
fn event(i: usize) -> Event {
    let mut e = testing::event("orders", Op::Insert, 0x1_0000 + i as u64 * 0x40, 0);
    e.source.lsn = Lsn(0x1_0000 + i as u64 * 0x40 - 0x20);
    let mut key = Row::default();
    key.push("id".into(), Value::Int(i as i64));
    let mut row = key.clone();
    row.push("status".into(), Value::Text("paid".into()));
    row.push("total".into(), Value::Text(format!("{}.90", i % 1000)));
    row.push(
        "note".into(),
        Value::Text(format!("order {i} for customer {}", i % 97)),
    );
    row.push(
        "created".into(),
        Value::Text("2026-11-22T06:00:00.123456Z".into()),
    );
    row.push("paid".into(), Value::Bool(i & 1 == 0));
    e.key = Some(key);
    e.after = Some(row);
    e
}

/// Fresh copies of the batch (an event caches its JSON; clones start without it).
fn batch(template: &[Arc<Event>]) -> Vec<Arc<Event>> {
    template.iter().map(|e| Arc::new((**e).clone())).collect()
}

fn per_event(total: Duration) -> f64 {
    total.as_secs_f64() * 1e6 / (BATCH * ROUNDS) as f64
}

fn main() {
    let template: Vec<Arc<Event>> = (0..BATCH).map(|i| Arc::new(event(i))).collect();
    let encoder = Encoder::new(
        Template::parse_with("{table}", TEMPLATE_RULES).expect("a template"),
        Template::parse_with("{key}", TEMPLATE_RULES).expect("a template"),
    );
    let mut body = Vec::with_capacity(BATCH * 256);

    // Warm up both paths.
    for e in batch(&template) {
        black_box(e.json());
        if let Ok(Some(planned)) = encoder.plan(&e) {
            planned.encode(&e, &mut body);
        }
    }

    let mut baseline = Duration::ZERO;
    let mut bulk = Duration::ZERO;
    let mut bytes = 0;
    for _ in 0..ROUNDS {
        let events = batch(&template);
        let started = Instant::now();
        for e in &events {
            black_box(e.json());
        }
        baseline += started.elapsed();

        let events = batch(&template);
        body.clear();
        let started = Instant::now();
        for e in &events {
            let planned = encoder.plan(e).expect("plannable").expect("a row to write");
            planned.encode(e, &mut body);
        }
        black_box(&body);
        bulk += started.elapsed();
        bytes = body.len();
    }
    println!(
        "Event::json() (baseline): {:.2} µs/event",
        per_event(baseline)
    );
    println!(
        "_bulk body (plan + encode): {:.2} µs/event ({} bytes per {BATCH}-event batch), \
         {:.2}x the baseline; target ≤ 3 µs",
        per_event(bulk),
        bytes,
        per_event(bulk) / per_event(baseline)
    );
}
