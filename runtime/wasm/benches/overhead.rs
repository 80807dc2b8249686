//! What a transform costs per event: events/s through `identity.wasm` in batches of 500
//! against no transform (a clone of each event, what a map stage must produce anyway), in
//! the same run; plus compile, cached-load and restart times.
//!
//!     scripts/build-transforms.sh
//!     cargo bench -p sluice-wasm --bench overhead
//!
//! Environment: `SLUICE_TRANSFORMS_DIR` (default `target/transforms`), `EVENTS` (default
//! 200000), `BATCH` (default 500), `PYTHON=1` to also time loading `python_tag.wasm`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_runtime::{Event, Lsn, Op, Position, Row, Source, Value};
use sluice_wasm::{TransformHost, TransformSpec};

fn main() {
    let events: usize = env("EVENTS", 200_000);
    let batch: usize = env("BATCH", 500);
    let wasm = artifact("identity");
    let cache = std::env::temp_dir().join(format!("sluice-wasm-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let spec = TransformSpec::new("identity", &wasm);

    let started = Instant::now();
    let host = TransformHost::new(&cache).unwrap();
    let mut transform = host.load(&spec).unwrap();
    let cold = started.elapsed();
    let started = Instant::now();
    let restarted = TransformHost::new(&cache).unwrap().load(&spec).unwrap();
    let warm = started.elapsed();
    drop(restarted);

    let inputs: Vec<Arc<Event>> = (0..events as u32).map(order).collect();
    // Warm up: caches, the guest's allocator.
    for chunk in inputs.chunks(batch).take(20) {
        std::hint::black_box(transform.apply(chunk));
        std::hint::black_box(clone_all(chunk));
    }

    // Interleave the two so that both see the same machine conditions.
    let (mut through, mut baseline) = (Duration::ZERO, Duration::ZERO);
    let mut out_events = 0usize;
    for round in 0..3 {
        for chunk in inputs.chunks(batch) {
            let t = Instant::now();
            let out = transform.apply(chunk);
            through += t.elapsed();
            if round == 0 {
                out_events += out.iter().map(|r| r.as_ref().unwrap().len()).sum::<usize>();
            }
            std::hint::black_box(out);
            let t = Instant::now();
            std::hint::black_box(clone_all(chunk));
            baseline += t.elapsed();
        }
    }
    assert_eq!(out_events, events, "identity returns every event");
    let n = (events * 3) as f64;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n;
    let rate = |d: Duration| n / d.as_secs_f64();
    println!("transform overhead: {events} events × 3 rounds, batches of {batch}, 7-column rows");
    println!(
        "  no transform (clone):  {:>10.0} events/s  {:>7.3} µs/event",
        rate(baseline),
        per(baseline)
    );
    println!(
        "  identity.wasm:         {:>10.0} events/s  {:>7.3} µs/event",
        rate(through),
        per(through)
    );
    println!(
        "  overhead:                                 {:>7.3} µs/event",
        per(through) - per(baseline)
    );
    println!(
        "  load: compile + init {:.1} ms (cold cache), {:.1} ms from the disk cache",
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3
    );

    // The fixed cost of a call, and of a trap (the next call starts a fresh instance and
    // runs `init` again).
    let one = &inputs[..1];
    let rounds = 2000;
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(transform.apply(one));
    }
    let call = t.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    println!("  one-event batch: {call:.1} µs per call");
    let mut hostile = host
        .load(&TransformSpec::new("hostile", artifact("hostile")))
        .unwrap();
    let panic = {
        let mut e = (*inputs[0]).clone();
        e.after
            .as_mut()
            .unwrap()
            .push("mode".into(), Value::Text("panic".into()));
        Arc::new(e)
    };
    let rounds = 200;
    let t = Instant::now();
    for _ in 0..rounds {
        assert!(hostile.apply(std::slice::from_ref(&panic))[0].is_err());
        assert!(hostile.apply(one)[0].is_ok());
    }
    println!(
        "  a trapping event and the next call (fresh instance + init): {:.1} µs",
        t.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
    if std::env::var_os("PYTHON").is_some() {
        let spec = TransformSpec::new("python_tag", artifact("python_tag"));
        let t = Instant::now();
        let mut python = host.load(&spec).unwrap();
        let cold = t.elapsed();
        let t = Instant::now();
        drop(TransformHost::new(&cache).unwrap().load(&spec).unwrap());
        let warm = t.elapsed();
        println!(
            "  python_tag.wasm load: {:.0} ms compiling, {:.1} ms from the disk cache",
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3
        );
        let t = Instant::now();
        let n = 20_000;
        for chunk in inputs[..n].chunks(batch) {
            std::hint::black_box(python.apply(chunk));
        }
        println!(
            "  python_tag.wasm: {:.1} µs/event",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
    let _ = std::fs::remove_dir_all(&cache);
}

fn clone_all(events: &[Arc<Event>]) -> Vec<Result<Vec<Event>, ()>> {
    events.iter().map(|e| Ok(vec![(**e).clone()])).collect()
}

fn order(i: u32) -> Arc<Event> {
    let source = Source {
        pipeline: "shop".into(),
        schema: Some("public".into()),
        table: Some("orders".into()),
        lsn: Lsn(0x16B_0000 + u64::from(i)),
        commit_lsn: Lsn(0x16B_3748),
        xid: Some(7),
        ts_micros: 1_795_327_200_123_456,
    };
    let mut e = Event::new(Position::new(Lsn(0x16B_3748), i), Op::Insert, source);
    let mut key = Row::default();
    key.push("id".into(), Value::Int(i64::from(i)));
    let mut after = key.clone();
    after.push("customer_id".into(), Value::Int(1000 + i64::from(i % 97)));
    after.push("status".into(), Value::Text("paid".into()));
    after.push(
        "email".into(),
        Value::Text(format!("customer{i}@example.com")),
    );
    after.push("total".into(), Value::Text("19.90".into()));
    after.push(
        "created_at".into(),
        Value::Text("2026-11-22T06:00:00.123456Z".into()),
    );
    after.push("note".into(), Value::Null);
    e.key = Some(key);
    e.after = Some(after);
    Arc::new(e)
}

fn artifact(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SLUICE_TRANSFORMS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/transforms"),
    };
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the example transforms with `scripts/build-transforms.sh`",
        path.display()
    );
    path
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
