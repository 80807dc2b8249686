//! `sluice transform test` through the real binary and the example components built by
//! `scripts/build-transforms.sh`: results as JSON Lines, per-event errors with their input
//! line numbers, and exit 2 for a malformed line, a bad flag or a failing `init`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use sluice_testkit::scratch_dir;
use sluice_testkit::sluice::{bin, command_env};

fn artifact(name: &str) -> String {
    sluice_testkit::transform_artifact(name)
        .display()
        .to_string()
}

/// One cache for these runs: each component compiles once (the cache is keyed by content,
/// so runs can share it).
fn cache() -> String {
    let dir = std::env::temp_dir().join("sluice-transform-cli-cache");
    dir.display().to_string()
}

fn sluice(dir: &Path, args: &[&str]) -> Output {
    command_env(dir, args, &[("SLUICE_CACHE_DIR", &cache())])
}

/// An insert into public.orders at index `i`, as its envelope line.
fn line(i: u32, status: &str, email: &str, mode: &str) -> String {
    json!({
        "id": format!("0/16B3748:{i}"), "op": "insert",
        "source": {"pipeline": "shop", "schema": "public", "table": "orders",
                   "lsn": "0/16B0000", "commit_lsn": "0/16B3748", "xid": 7,
                   "ts": "2026-11-22T06:00:00.123456Z"},
        "key": {"id": i}, "before": null,
        "after": {"id": i, "status": status, "email": email, "mode": mode},
        "unchanged": []
    })
    .to_string()
}

fn stdout_lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn results_print_as_json_lines_in_input_order() {
    let dir = scratch_dir("transform-ok");
    let input = [
        line(0, "paid", "alice@example.com", ""),
        String::new(),
        line(1, "new", "bob@example.com", ""),
    ]
    .join("\n");
    std::fs::write(dir.join("events.jsonl"), input + "\n").unwrap();
    let redact = artifact("redact_pii");
    let out = sluice(
        &dir,
        &[
            "transform",
            "test",
            &redact,
            "--config",
            "fields=email",
            "--input",
            "events.jsonl",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "0/16B3748:0");
    assert_eq!(lines[0]["after"]["email"], "a***");
    assert_eq!(lines[0]["after"]["status"], "paid");
    assert_eq!(lines[1]["id"], "0/16B3748:1");
    assert_eq!(lines[1]["after"]["email"], "b***");
    assert_eq!(lines[1]["source"]["ts"], "2026-11-22T06:00:00.123456Z");
}

#[test]
fn failed_events_are_reported_by_line_and_the_others_flow() {
    let dir = scratch_dir("transform-errors");
    let input = [
        line(0, "new", "a@x", "none"),
        line(1, "new", "b@x", "panic"),
        String::new(),
        line(2, "new", "c@x", "error"),
        line(3, "new", "d@x", "dup"),
        line(4, "new", "e@x", "loop"),
        line(5, "new", "f@x", "drop"),
        line(6, "new", "g@x", "none"),
    ]
    .join("\n");
    std::fs::write(dir.join("events.jsonl"), input).unwrap();
    let hostile = artifact("hostile");
    let out = sluice(
        &dir,
        &[
            "transform",
            "test",
            &hostile,
            "--input",
            "events.jsonl",
            "--timeout",
            "200ms",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let ids: Vec<String> = stdout_lines(&out)
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    // The fan-out's second event is numbered, as a sink would see it.
    assert_eq!(
        ids,
        ["0/16B3748:0", "0/16B3748:3", "0/16B3748:3#1", "0/16B3748:6"]
    );
    assert!(err.contains("line 2: trap: panicked at"), "{err}");
    assert!(err.contains("hostile: panic requested"), "{err}");
    assert!(
        err.contains("line 4: error: hostile: error requested"),
        "{err}"
    );
    assert!(
        err.contains("line 6: timeout: the transform did not return within 200ms"),
        "{err}"
    );
    assert!(err.contains("3 of 7 events failed"), "{err}");
}

#[test]
fn a_malformed_line_stops_everything_before_it_runs() {
    let dir = scratch_dir("transform-malformed");
    let input = [
        line(0, "new", "a@x", "none"),
        "{\"id\": 12}".into(),
        "not json".into(),
    ]
    .join("\n");
    std::fs::write(dir.join("events.jsonl"), input).unwrap();
    // An init that would fail: the malformed line is reported first, so nothing ran.
    let hostile = artifact("hostile");
    let out = sluice(
        &dir,
        &[
            "transform",
            "test",
            &hostile,
            "--config",
            "fail_init=1",
            "--input",
            "events.jsonl",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty());
    assert!(err.contains("line 2: not an envelope: `id`"), "{err}");
    assert!(!err.contains("fail_init"), "{err}");
}

#[test]
fn bad_flags_a_failing_init_and_a_bad_file_exit_2() {
    let dir = scratch_dir("transform-input");
    std::fs::write(dir.join("events.jsonl"), line(0, "new", "a@x", "none")).unwrap();
    let hostile = artifact("hostile");
    let run = |extra: &[&str]| {
        let mut args = vec!["transform", "test", "--input", "events.jsonl"];
        args.extend_from_slice(extra);
        sluice(&dir, &args)
    };

    let out = run(&[&hostile, "--config", "fail_init"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--config `fail_init`: expected KEY=VALUE"),
        "{}",
        stderr(&out)
    );

    let out = run(&[&hostile, "--config", "fail_init=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("transform `hostile`: init failed: hostile: fail_init requested"),
        "{}",
        stderr(&out)
    );

    let out = run(&[&hostile, "--memory", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--memory: `lots` is not a size"),
        "{}",
        stderr(&out)
    );

    std::fs::write(dir.join("notes.wasm"), "not wasm").unwrap();
    let out = run(&["notes.wasm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a WebAssembly file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn envelopes_come_from_stdin_by_default() {
    let dir = scratch_dir("transform-stdin");
    let route = artifact("route_by_status");
    let mut child = Command::new(bin())
        .args(["transform", "test", &route, "--config", "drop=draft"])
        .current_dir(&dir)
        .env("SLUICE_CACHE_DIR", cache())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = [line(0, "draft", "a@x", ""), line(1, "paid", "b@x", "")].join("\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1, "the draft is dropped");
    assert_eq!(lines[0]["after"]["status"], "paid");
}

/// A guest that panics in `init` (its panic handler writes to stderr through WASI) is a
/// clear error at start, exit 2, in `transform test`, `validate` and `run`: never a crash.
#[test]
fn a_transform_whose_init_panics_is_a_clear_error_everywhere() {
    let dir = scratch_dir("transform-init-panic");
    std::fs::write(dir.join("events.jsonl"), line(0, "new", "a@x", "none")).unwrap();
    let hostile = artifact("hostile");
    let out = sluice(
        &dir,
        &[
            "transform",
            "test",
            &hostile,
            "--config",
            "init_mode=panic",
            "--input",
            "events.jsonl",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("init") && stderr(&out).contains("hostile"),
        "{}",
        stderr(&out)
    );
    let pipeline = format!(
        "pipeline: initpanic\n\
         source: {{ type: postgres, url: postgres://u@127.0.0.1:1/db, tables: [t] }}\n\
         transforms:\n  - name: hostile\n    wasm: {hostile}\n    config: {{ init_mode: panic }}\n\
         sinks: {{ hook: {{ type: webhook, url: http://127.0.0.1:1/x }} }}\n"
    );
    std::fs::write(dir.join("pipeline.yaml"), pipeline).unwrap();
    for command in ["validate", "run"] {
        let out = sluice(&dir, &[command, "pipeline.yaml"]);
        assert_eq!(out.status.code(), Some(2), "{command}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("transforms[0].wasm") && stderr(&out).contains("panic"),
            "{command}: {}",
            stderr(&out)
        );
    }
}
