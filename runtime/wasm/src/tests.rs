//! The host against the example components built by `scripts/build-transforms.sh`:
//! config, drop/map/fan-out, hostile guests, determinism, load errors, the disk cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sluice_runtime::{Event, Lsn, Op, Position, Row, Source, Value};

use crate::cache::Origin;
use crate::{LoadError, Transform, TransformErrorKind, TransformHost, TransformSpec};

pub(crate) use sluice_testkit::transform_artifact as artifact;

fn scratch(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-wasm-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One host for the tests: components compile once (the cache is keyed by content, so
/// runs can share it).
fn host() -> &'static TransformHost {
    static HOST: OnceLock<TransformHost> = OnceLock::new();
    HOST.get_or_init(|| {
        TransformHost::new(&std::env::temp_dir().join("sluice-wasm-test-cache")).unwrap()
    })
}

fn load(name: &str, config: &[(&str, &str)]) -> Transform {
    host()
        .load(&spec(name, config))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn spec(name: &str, config: &[(&str, &str)]) -> TransformSpec {
    let mut spec = TransformSpec::new(name, artifact(name));
    spec.config = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spec
}

/// An insert into public.orders at index `i` of one transaction.
fn order(i: u32, status: &str, email: &str) -> Arc<Event> {
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
    after.push("status".into(), Value::Text(status.into()));
    after.push("email".into(), Value::Text(email.into()));
    after.push("total".into(), Value::Text("19.90".into()));
    after.push("tags".into(), Value::Array(vec![Value::Text("a".into())]));
    e.key = Some(key);
    e.after = Some(after);
    Arc::new(e)
}

/// An event for `hostile` with `after.mode = mode`.
fn mode(i: u32, mode: &str) -> Arc<Event> {
    let mut e = order(i, "new", "x@example.com").as_ref().clone();
    e.after
        .as_mut()
        .unwrap()
        .push("mode".into(), Value::Text(mode.into()));
    Arc::new(e)
}

fn text<'a>(e: &'a Event, column: &str) -> Option<&'a str> {
    match e.after.as_ref()?.get(column)? {
        Value::Text(t) => Some(t),
        _ => None,
    }
}

fn json(e: &Event) -> serde_json::Value {
    serde_json::from_slice(e.json()).unwrap()
}

#[test]
fn config_reaches_init() {
    let mut t = load("redact_pii", &[("fields", "email")]);
    let out = t.apply(&[order(0, "paid", "alice@example.com")]);
    let events = out[0].as_ref().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(text(&events[0], "email"), Some("a***"));
    assert_eq!(text(&events[0], "status"), Some("paid"));

    // A config the guest refuses stops the load with the guest's message.
    let err = host().load(&spec("redact_pii", &[])).err().unwrap();
    assert!(matches!(err, LoadError::Init { .. }), "{err:?}");
    assert!(err.to_string().contains("`fields` is required"), "{err}");
}

#[test]
fn drop_map_and_fan_out_keep_positions() {
    let mut t = load("route_by_status", &[("drop", "draft"), ("split", "paid")]);
    let inputs = [
        order(0, "new", "a@x"),
        order(1, "draft", "b@x"),
        order(2, "paid", "c@x"),
    ];
    let out = t.apply(&inputs);
    assert_eq!(out.len(), 3);
    let mapped = out[0].as_ref().unwrap();
    assert_eq!(mapped.len(), 1);
    assert!(
        Arc::ptr_eq(&mapped[0], &inputs[0]),
        "a status it does not route is kept: the same event, not a copy"
    );
    assert!(out[1].as_ref().unwrap().is_empty(), "draft is dropped");
    let split = out[2].as_ref().unwrap();
    assert_eq!(split.len(), 2);
    assert_eq!(text(&split[1], "route"), Some("audit"));
    for e in split {
        assert_eq!(e.position, inputs[2].position);
    }
    assert_eq!(mapped[0].position, inputs[0].position);
}

#[test]
fn an_identity_round_trip_keeps_the_envelope() {
    let mut t = load("identity", &[]);
    let mut e = order(3, "paid", "a@x").as_ref().clone();
    let after = e.after.as_mut().unwrap();
    after.push(
        "meta".into(),
        Value::json(r#"{"k":[1,{"x":null}]}"#).unwrap(),
    );
    after.push("blob".into(), Value::Bytes(vec![0, 159, 255]));
    after.push("ratio".into(), Value::Float(0.25));
    after.push("flag".into(), Value::Bool(false));
    after.push("gone".into(), Value::Null);
    e.before = Some(Row::default());
    e.unchanged = vec!["notes".into()];
    let e = Arc::new(e);
    let out = t.apply(std::slice::from_ref(&e));
    assert_eq!(json(&out[0].as_ref().unwrap()[0]), json(&e));
}

#[test]
fn an_infinite_loop_is_stopped_within_its_deadline_and_fails_only_its_event() {
    let timeout = Duration::from_millis(200);
    let mut s = spec("hostile", &[]);
    s.timeout = timeout;
    let mut t = host().load(&s).unwrap();
    let started = Instant::now();
    let out = t.apply(&[mode(0, "none"), mode(1, "loop"), mode(2, "none")]);
    let elapsed = started.elapsed();
    // The batch call times out, then the loop times out again on its own.
    assert!(elapsed < 3 * timeout, "took {elapsed:?}");
    assert!(out[0].is_ok() && out[2].is_ok(), "{out:?}");
    let err = out[1].as_ref().unwrap_err();
    assert_eq!(err.kind, TransformErrorKind::Timeout, "{err}");
    assert!(err.message.contains("200ms"), "{err}");

    let started = Instant::now();
    let out = t.apply(&[mode(3, "loop")]);
    assert!(started.elapsed() < 3 * timeout);
    assert_eq!(
        out[0].as_ref().unwrap_err().kind,
        TransformErrorKind::Timeout
    );
    // The instance that looped was replaced: the next batch flows.
    assert_eq!(t.apply(&[mode(4, "none")])[0].as_ref().unwrap().len(), 1);
}

#[test]
fn a_1_gib_allocation_is_refused_under_a_64_mib_cap() {
    let mut t = load("hostile", &[]);
    let out = t.apply(&[
        mode(0, "none"),
        mode(1, "alloc"),
        mode(2, "alloc_try"),
        mode(3, "none"),
    ]);
    assert!(out[0].is_ok() && out[3].is_ok(), "{out:?}");
    let err = out[1].as_ref().unwrap_err();
    assert_eq!(err.kind, TransformErrorKind::OutOfMemory, "{err}");
    assert!(err.message.contains("64MiB"), "{err}");
    // A refused growth traps even when the guest could have handled it (`try_reserve`):
    // guests that ignore a failed allocation must not go on with a null pointer.
    let err = out[2].as_ref().unwrap_err();
    assert_eq!(err.kind, TransformErrorKind::OutOfMemory, "{err}");
}

#[test]
fn a_panic_traps_only_its_event_and_the_instance_is_replaced() {
    let mut t = load("hostile", &[]);
    let out = t.apply(&[
        mode(0, "none"),
        mode(1, "panic"),
        mode(2, "dup"),
        mode(3, "error"),
    ]);
    assert_eq!(out[0].as_ref().unwrap().len(), 1);
    let err = out[1].as_ref().unwrap_err();
    assert_eq!(err.kind, TransformErrorKind::Trap, "{err}");
    assert!(err.message.contains("hostile: panic requested"), "{err}");
    assert_eq!(
        out[2].as_ref().unwrap().len(),
        2,
        "the next events get their real outcomes"
    );
    let err = out[3].as_ref().unwrap_err();
    assert_eq!(
        (err.kind, err.message.as_str()),
        (TransformErrorKind::Error, "hostile: error requested")
    );
    // Next batches go on.
    let out = t.apply(&[mode(4, "drop"), mode(5, "none")]);
    assert!(out[0].as_ref().unwrap().is_empty());
    assert_eq!(out[1].as_ref().unwrap().len(), 1);
}

#[test]
fn files_environment_and_sockets_are_not_reachable() {
    // Something listens, so a refused connection is the sandbox's doing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok();
    let _ = listener;
    let mut t = load("hostile", &[]);
    let out = t.apply(&[mode(0, "fs"), mode(1, "env"), mode(2, "socket")]);
    let fs = out[0].as_ref().unwrap_err();
    assert_eq!(fs.kind, TransformErrorKind::Error);
    assert!(fs.message.starts_with("hostile: fs:"), "{fs}");
    let env = &out[1].as_ref().unwrap()[0];
    let seen = text(env, "seen").unwrap();
    assert!(
        seen.starts_with("HOME=<") && seen.ends_with("; vars="),
        "{seen}"
    );
    let socket = &out[2].as_ref().unwrap()[0];
    let seen = text(socket, "seen").unwrap();
    assert_ne!(seen, "connected");
    assert!(!seen.is_empty());
}

#[test]
fn clocks_and_randomness_replay_byte_for_byte() {
    let inputs = [
        mode(0, "clock"),
        mode(1, "random"),
        mode(2, "random"),
        mode(3, "clock"),
    ];
    let run = || -> Vec<u8> {
        let mut t = load("hostile", &[]);
        let mut bytes = Vec::new();
        for result in t.apply(&inputs) {
            for e in result.unwrap() {
                bytes.extend_from_slice(e.json());
                bytes.push(b'\n');
            }
        }
        bytes
    };
    let first = run();
    assert_eq!(first, run());
    let text = String::from_utf8(first).unwrap();
    assert!(
        text.contains(r#""seen":"0.000000000""#),
        "the wall clock reads the epoch: {text}"
    );
}

#[test]
fn init_failures_stop_the_load() {
    let err = host()
        .load(&spec("hostile", &[("fail_init", "1")]))
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::Init { .. }));
    assert_eq!(
        err.to_string(),
        "transform `hostile`: init failed: hostile: fail_init requested"
    );

    let err = host()
        .load(&spec("hostile", &[("init_mode", "panic")]))
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(text.contains("init failed: trap: panicked at"), "{text}");
    assert!(text.contains("hostile: init panic requested"), "{text}");

    let mut s = spec("hostile", &[("init_mode", "loop")]);
    s.timeout = Duration::from_millis(50);
    let err = host().load(&s).err().unwrap();
    assert!(
        err.to_string()
            .contains("timeout: the transform did not return within 50ms"),
        "{err}"
    );
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load_err(path: PathBuf) -> LoadError {
    host().load(&TransformSpec::new("bad", path)).err().unwrap()
}

#[test]
fn files_that_are_not_transformers_get_clear_errors() {
    let dir = scratch("bad");
    let err = load_err(dir.join("missing.wasm"));
    assert!(matches!(err, LoadError::Read { .. }), "{err}");

    let err = load_err(write(&dir, "text.wasm", b"hello, world"));
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");

    let core = wat::parse_str("(module (func (export \"transform\")))").unwrap();
    let err = load_err(write(&dir, "core.wasm", &core));
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");

    // Another world: exports `run` only.
    let other = wat::parse_str(
        r#"(component
             (core module $m (func (export "run")))
             (core instance $i (instantiate $m))
             (func (export "run") (canon lift (core func $i "run"))))"#,
    )
    .unwrap();
    let err = load_err(write(&dir, "other.wasm", &other));
    let text = err.to_string();
    assert!(matches!(err, LoadError::World { .. }), "{text}");
    assert!(text.contains("exports func `run`"), "{text}");
    assert!(text.contains("`init"), "{text}");

    // The right names with other types (another version of the world).
    let mistyped = wat::parse_str(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func (export "init") (canon lift (core func $i "f")))
             (func (export "transform") (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let err = load_err(write(&dir, "mistyped.wasm", &mistyped));
    let text = err.to_string();
    assert!(matches!(err, LoadError::World { .. }), "{text}");
    assert!(
        text.contains("exports func `init`, func `transform`"),
        "{text}"
    );

    // An import the host does not provide (a newer log interface).
    let newer = wat::parse_str(
        r#"(component
             (import "sluice:transform/log@0.2.0"
               (instance (export "log" (func (param "message" string))))))"#,
    )
    .unwrap();
    let err = load_err(write(&dir, "newer.wasm", &newer));
    let text = err.to_string();
    assert!(text.contains("sluice:transform/log@0.2.0"), "{text}");
    assert!(
        text.contains("imports instance `sluice:transform/log@0.2.0`"),
        "{text}"
    );
}

#[test]
fn the_disk_cache_spares_a_restart_the_compilation() {
    let dir = scratch("restart");
    let spec = spec("identity", &[]);
    let started = Instant::now();
    let first = TransformHost::new(&dir).unwrap().load(&spec).unwrap();
    let cold = started.elapsed();
    assert_eq!(first.origin, Origin::Compiled);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].extension().unwrap() == "cwasm");

    // A new host (a restart) reads the compiled code back.
    let started = Instant::now();
    let mut second = TransformHost::new(&dir).unwrap().load(&spec).unwrap();
    let warm = started.elapsed();
    assert_eq!(second.origin, Origin::Cached);
    assert!(warm < cold, "cached load {warm:?} vs compile {cold:?}");
    assert_eq!(second.fingerprint(), first.fingerprint());
    assert_eq!(
        second.apply(&[order(0, "new", "a@x")])[0]
            .as_ref()
            .unwrap()
            .len(),
        1
    );

    // A damaged file is compiled again, not trusted. (Replaced, not rewritten in place: live
    // transforms map the file, as the cache's own writes by rename allow.)
    let damaged = dir.join("damaged");
    std::fs::write(&damaged, b"garbage").unwrap();
    std::fs::rename(&damaged, &files[0]).unwrap();
    let third = TransformHost::new(&dir).unwrap().load(&spec).unwrap();
    assert_eq!(third.origin, Origin::Compiled);
    assert!(std::fs::read(&files[0]).unwrap().len() > 1000);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fingerprints_follow_code_and_config() {
    let a = load("redact_pii", &[("fields", "email")]);
    let b = load("redact_pii", &[("fields", "email")]);
    let c = load("redact_pii", &[("fields", "phone")]);
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint());
    assert_eq!(a.fingerprint().len(), 64);
    assert_eq!(a.name(), "redact_pii");
}

/// Log lines emitted on this thread while `f` runs.
fn logs(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn guest_logs_and_stderr_reach_our_logs_with_the_transform_name() {
    let mut t = load("hostile", &[]);
    let text = logs(|| {
        let out = t.apply(&[mode(0, "log"), mode(1, "stderr")]);
        assert!(out.iter().all(Result::is_ok));
    });
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{text}"))
            .to_string()
    };
    let log = line("hostile: log requested");
    assert!(
        log.contains("INFO transform:") && log.contains("transform=\"hostile\""),
        "{log}"
    );
    let stderr = line("hostile: stderr requested");
    assert!(
        stderr.contains("WARN transform:") && stderr.contains("stream=\"stderr\""),
        "{stderr}"
    );
    assert!(stderr.contains("transform=\"hostile\""), "{stderr}");
}

#[test]
fn inside_a_tokio_runtime_apply_still_works() {
    let mut t = load("hostile", &[]);
    let rt = tokio::runtime::Builder::new_multi_thread().build().unwrap();
    let out = rt.block_on(async { t.apply(&[mode(0, "stderr"), mode(1, "panic")]) });
    assert!(out[0].is_ok());
    assert_eq!(out[1].as_ref().unwrap_err().kind, TransformErrorKind::Trap);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let out = rt.block_on(async { t.apply(&[mode(2, "stderr"), mode(3, "panic")]) });
    assert!(out[0].is_ok());
    assert_eq!(out[1].as_ref().unwrap_err().kind, TransformErrorKind::Trap);
}

#[test]
fn a_python_guest_tags_rows_and_keeps_what_it_does_not_change() {
    let mut t = load("python_tag", &[("value", "py")]);
    let mut delete = order(1, "paid", "b@x").as_ref().clone();
    delete.op = Op::Delete;
    delete.before = delete.after.take();
    let inputs = [
        order(0, "new", "a@x"),
        Arc::new(delete),
        order(2, "paid", "c@x"),
    ];
    let out = t.apply(&inputs);
    for i in [0, 2] {
        let tagged = &out[i].as_ref().unwrap()[0];
        assert_eq!(text(tagged, "tagged_by"), Some("py"));
        assert_eq!(text(tagged, "email"), text(&inputs[i], "email"));
        assert_eq!(tagged.position, inputs[i].position);
    }
    let names: Vec<&str> = out[2].as_ref().unwrap()[0]
        .after
        .as_ref()
        .unwrap()
        .0
        .iter()
        .map(|c| &*c.name)
        .collect();
    assert_eq!(
        names,
        ["id", "status", "email", "total", "tags", "tagged_by"]
    );
    assert!(
        Arc::ptr_eq(&out[1].as_ref().unwrap()[0], &inputs[1]),
        "no after: kept"
    );

    let err = host()
        .load(&spec("python_tag", &[("value", "")]))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("`value` must not be empty"),
        "{err}"
    );
}
