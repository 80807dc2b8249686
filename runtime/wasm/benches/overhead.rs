//! What a transform costs per event, in batches of 500 and in the same run: `identity.wasm`
//! (a map that returns each event) against a copy of each event (what a map must produce
//! anyway), and `passthrough.wasm` (keeps each event) against nothing; plus compile,
//! cached-load and restart times.
//!
//!     scripts/build-transforms.sh
//!     cargo bench -p sluice-wasm --bench overhead
//!
//! Environment: `SLUICE_TRANSFORMS_DIR` (default `target/transforms`), `EVENTS` (default
//! 200000), `BATCH` (default 500), `PYTHON=1` to also time loading `python_tag.wasm`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_runtime::{Event, Lsn, Op, Position, Row, Source, Value};
use sluice_wasm::{TransformHost, TransformSpec};

fn main() {
    let events: usize = env("EVENTS", 200_000);
    let batch: usize = env("BATCH", 500);
    let cache = std::env::temp_dir().join(format!("sluice-wasm-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let spec = TransformSpec::new("identity", artifact("identity"));

    let started = Instant::now();
    let host = TransformHost::new(&cache).unwrap();
    let mut identity = host.load(&spec).unwrap();
    let cold = started.elapsed();
    let started = Instant::now();
    let restarted = TransformHost::new(&cache).unwrap().load(&spec).unwrap();
    let warm = started.elapsed();
    drop(restarted);
    let mut passthrough = host
        .load(&TransformSpec::new("passthrough", artifact("passthrough")))
        .unwrap();

    let names = Names::default();
    let inputs: Vec<Arc<Event>> = (0..events as u32).map(|i| order(i, &names)).collect();
    // Warm up: caches, the guest's allocator.
    for chunk in inputs.chunks(batch).take(20) {
        std::hint::black_box(identity.apply(chunk));
        std::hint::black_box(passthrough.apply(chunk));
        std::hint::black_box(clone_all(chunk));
    }

    // Interleave them so that all see the same machine conditions.
    let (mut mapped, mut kept, mut baseline) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for round in 0..3 {
        for chunk in inputs.chunks(batch) {
            let t = Instant::now();
            let out = identity.apply(chunk);
            mapped += t.elapsed();
            if round == 0 {
                check(&out, chunk, false);
            }
            drop(out);
            let t = Instant::now();
            let out = passthrough.apply(chunk);
            kept += t.elapsed();
            if round == 0 {
                check(&out, chunk, true);
            }
            drop(out);
            let t = Instant::now();
            std::hint::black_box(clone_all(chunk));
            baseline += t.elapsed();
        }
    }
    let n = (events * 3) as f64;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n;
    let rate = |d: Duration| n / d.as_secs_f64();
    println!("transform overhead: {events} events × 3 rounds, batches of {batch}, 7-column rows");
    println!(
        "  no transform, a copy of each event: {:>9.0} events/s  {:>7.3} µs/event",
        rate(baseline),
        per(baseline)
    );
    println!(
        "  identity.wasm (map, returns each):  {:>9.0} events/s  {:>7.3} µs/event  overhead {:.3} µs/event over the copy",
        rate(mapped),
        per(mapped),
        per(mapped) - per(baseline)
    );
    println!(
        "  passthrough.wasm (keep):            {:>9.0} events/s  {:>7.3} µs/event  overhead {:.3} µs/event (no transform: nothing)",
        rate(kept),
        per(kept),
        per(kept)
    );
    println!(
        "  load: compile + init {:.1} ms (cold cache), {:.1} ms from the disk cache",
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3
    );
    let mut transform = identity;

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

fn clone_all(events: &[Arc<Event>]) -> Vec<Result<Vec<Arc<Event>>, ()>> {
    events
        .iter()
        .map(|e| Ok(vec![Arc::new((**e).clone())]))
        .collect()
}

/// Column names, shared by every event as the decoder shares a relation's.
struct Names {
    schema: Arc<str>,
    table: Arc<str>,
    pipeline: Arc<str>,
    columns: Vec<Arc<str>>,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            schema: "public".into(),
            table: "orders".into(),
            pipeline: "shop".into(),
            columns: [
                "id",
                "customer_id",
                "status",
                "email",
                "total",
                "created_at",
                "note",
            ]
            .map(Arc::from)
            .to_vec(),
        }
    }
}

/// Each input exactly once: the same event (keep), or an equal copy (map).
fn check(
    out: &[Result<Vec<Arc<Event>>, sluice_wasm::TransformError>],
    inputs: &[Arc<Event>],
    kept: bool,
) {
    for (out, input) in out.iter().zip(inputs) {
        let out = out.as_ref().expect("a trivial transform does not fail");
        assert_eq!(out.len(), 1);
        assert_eq!(Arc::ptr_eq(&out[0], input), kept);
        assert_eq!(*out[0], **input);
    }
}

fn order(i: u32, names: &Names) -> Arc<Event> {
    let source = Source {
        pipeline: names.pipeline.clone(),
        schema: Some(names.schema.clone()),
        table: Some(names.table.clone()),
        lsn: Lsn(0x16B_0000 + u64::from(i)),
        commit_lsn: Lsn(0x16B_3748),
        xid: Some(7),
        ts_micros: 1_795_327_200_123_456,
    };
    let mut e = Event::new(Position::new(Lsn(0x16B_3748), i), Op::Insert, source);
    let c = &names.columns;
    let mut key = Row::default();
    key.push(c[0].clone(), Value::Int(i64::from(i)));
    let mut after = key.clone();
    after.push(c[1].clone(), Value::Int(1000 + i64::from(i % 97)));
    after.push(c[2].clone(), Value::Text("paid".into()));
    after.push(
        c[3].clone(),
        Value::Text(format!("customer{i}@example.com")),
    );
    after.push(c[4].clone(), Value::Text("19.90".into()));
    after.push(
        c[5].clone(),
        Value::Text("2026-11-22T06:00:00.123456Z".into()),
    );
    after.push(c[6].clone(), Value::Null);
    e.key = Some(key);
    e.after = Some(after);
    Arc::new(e)
}

use sluice_testkit::transform_artifact as artifact;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
