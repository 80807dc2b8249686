//! Bad pipeline files, through the real binary: `sluice validate` and `sluice run` both exit
//! with status 2 before anything connects, and the error names the file, the line, the
//! column and the key. Values that come from the environment never reach stderr. And every
//! example in `pipelines/` validates.

// This file uses only the harness's scratch directories and its `sluice` commands.
use sluice_testkit as harness;

use std::path::{Path, PathBuf};
use std::process::Output;

use harness::scratch_dir;
use harness::sluice::{command, command_env};

/// A valid pipeline whose source and sink are closed ports: `run` would fail to connect
/// (exit 1), so an exit 2 means the file was refused before any connection.
const BASE: &str = "\
pipeline: files
source:
  type: postgres
  url: postgres://u@127.0.0.1:1/db
  tables: [public.orders]
sinks:
  notify:
    type: webhook
    url: http://127.0.0.1:1/events
";

const SINK_TYPE: &str = "    type: webhook";
const SINK_URL: &str = "    url: http://127.0.0.1:1/events";
const TABLES: &str = "  tables: [public.orders]";

/// `BASE` with whole lines replaced (`""` removes the line); each must be there once.
fn edit(changes: &[(&str, &str)]) -> String {
    let mut lines: Vec<String> = BASE.lines().map(str::to_string).collect();
    for (old, new) in changes {
        let at: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == *old).collect();
        assert_eq!(at.len(), 1, "`{old}` should be in BASE once");
        if new.is_empty() {
            lines.remove(at[0]);
        } else {
            lines[at[0]] = new.to_string();
        }
    }
    lines.join("\n") + "\n"
}

/// `BASE` with `lines` appended.
fn append(lines: &str) -> String {
    format!("{BASE}{lines}\n")
}

/// The 1-based line of the one line of `text` that is exactly `line`, and the 1-based column
/// of `token` in it.
#[track_caller]
fn place(text: &str, line: &str, token: &str) -> (usize, usize) {
    let found: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == line)
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "`{line}` should be in the file once:\n{text}"
    );
    let column = line
        .find(token)
        .unwrap_or_else(|| panic!("`{token}` is not in `{line}`"));
    (found[0], line[..column].chars().count() + 1)
}

/// Where an error should point: `(0, 0)` for the file as a whole; `key` `""` for no key.
struct Expect<'a> {
    at: (usize, usize),
    key: &'a str,
    says: &'a str,
}

fn expect<'a>(at: (usize, usize), key: &'a str, says: &'a str) -> Expect<'a> {
    Expect { at, key, says }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `error: …` line of `out`, checked to be an input error (status 2) in the shape
/// `file:line:column: key: message`.
#[track_caller]
fn check(out: &Output, file: &str, e: &Expect, what: &str) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit status\nstdout:\n{}\nstderr:\n{stderr}",
        text(&out.stdout)
    );
    let mut prefix = format!("error: {file}");
    if e.at.0 > 0 {
        prefix.push_str(&format!(":{}:{}", e.at.0, e.at.1));
    }
    if !e.key.is_empty() {
        prefix.push_str(&format!(": {}", e.key));
    }
    prefix.push_str(": ");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{what}: one error expected:\n{stderr}");
    let error = errors[0];
    assert!(
        error.starts_with(&prefix),
        "{what}: expected `{prefix}…`, got:\n{stderr}"
    );
    assert!(
        error[prefix.len()..].contains(e.says),
        "{what}: expected the message to say `{}`:\n{stderr}",
        e.says
    );
    for connecting in ["replication connection", "Connection refused", "connect to"] {
        assert!(
            !stderr.contains(connecting),
            "{what}: tried to connect:\n{stderr}"
        );
    }
    error.to_string()
}

/// Writes `yaml` as `<name>.yaml` in a scratch dir (with `extra` files beside it), runs
/// `sluice validate` and `sluice run` on it with `env`, and checks both refuse it the same
/// way, without opening the state store or connecting anywhere. Returns the stderr of both.
#[track_caller]
fn rejects_with(
    name: &str,
    yaml: &str,
    extra: &[(&str, &[u8])],
    env: &[(&str, &str)],
    e: Expect,
) -> String {
    let dir = scratch_dir(&format!("files-{name}"));
    let file = format!("{name}.yaml");
    std::fs::write(dir.join(&file), yaml).unwrap();
    for (path, bytes) in extra {
        std::fs::write(dir.join(path), bytes).unwrap();
    }
    let validate = command_env(&dir, &["validate", &file], env);
    let v = check(&validate, &file, &e, &format!("{name}: validate"));
    assert!(
        validate.stdout.is_empty(),
        "{name}: validate printed {}",
        text(&validate.stdout)
    );
    let run = command_env(&dir, &["run", &file], env);
    let r = check(&run, &file, &e, &format!("{name}: run"));
    assert_eq!(v, r, "{name}: validate and run disagree");
    assert!(
        !dir.join(".sluice").exists(),
        "{name}: run opened the state store before refusing the file"
    );
    let all = format!("{}{}", text(&validate.stderr), text(&run.stderr));
    std::fs::remove_dir_all(&dir).ok();
    all
}

#[track_caller]
fn rejects(name: &str, yaml: &str, e: Expect) -> String {
    rejects_with(name, yaml, &[], &[], e)
}

#[test]
fn the_base_file_is_valid_and_run_fails_only_at_connecting() {
    let dir = scratch_dir("files-base");
    std::fs::write(dir.join("base.yaml"), BASE).unwrap();
    let out = command(&dir, &["validate", "base.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("pipeline files is valid"));
    // The closed port: a runtime failure, status 1. Every status 2 below came earlier.
    let out = command(&dir, &["run", "base.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot open a replication connection"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn yaml_syntax_error() {
    let bad = "    url: a: b";
    let yaml = edit(&[(SINK_URL, bad)]);
    let at = place(&yaml, bad, ": b");
    rejects(
        "syntax",
        &yaml,
        expect(at, "", "YAML syntax error: mapping values are not allowed"),
    );

    let bad = "    headers: { a: ${X:-1} }";
    let yaml = append(bad);
    let at = place(&yaml, bad, "{X");
    rejects(
        "syntax-flow",
        &yaml,
        expect(at, "", "quote values that use ${…}"),
    );
}

#[test]
fn unknown_top_level_key() {
    let bad = "retention: 7d";
    let yaml = append(bad);
    rejects(
        "top-key",
        &yaml,
        expect(
            place(&yaml, bad, "retention"),
            "retention",
            "unknown key `retention`",
        ),
    );
}

#[test]
fn unknown_key_under_source() {
    let bad = "  slot_name: custom";
    let yaml = edit(&[(TABLES, &format!("{TABLES}\n{bad}"))]);
    rejects(
        "source-key",
        &yaml,
        expect(
            place(&yaml, bad, "slot_name"),
            "source.slot_name",
            "unknown key `slot_name`",
        ),
    );
}

#[test]
fn unknown_key_in_a_webhook_sink() {
    let bad = "    retries: 3";
    let yaml = append(bad);
    rejects(
        "sink-key",
        &yaml,
        expect(
            place(&yaml, bad, "retries"),
            "sinks.notify.retries",
            "unknown key `retries`",
        ),
    );
}

#[test]
fn unknown_key_in_delivery_retry() {
    let bad = "  retry: { initial: 1s, maximum: 30s }";
    let yaml = append(&format!("delivery:\n{bad}"));
    rejects(
        "retry-key",
        &yaml,
        expect(
            place(&yaml, bad, "maximum"),
            "delivery.retry.maximum",
            "unknown key `maximum`",
        ),
    );

    // The same under a sink's own `delivery:`.
    let bad = "      retry: { initial: 1s, maximum: 30s }";
    let yaml = append(&format!("    delivery:\n{bad}"));
    rejects(
        "sink-retry-key",
        &yaml,
        expect(
            place(&yaml, bad, "maximum"),
            "sinks.notify.delivery.retry.maximum",
            "unknown key `maximum`",
        ),
    );
}

#[test]
fn missing_environment_variable() {
    let var = format!("SLUICE_E2E_NEVER_SET_{}", std::process::id());
    assert!(std::env::var_os(&var).is_none(), "{var} is set");
    let bad = format!("  url: ${{{var}}}");
    let yaml = edit(&[("  url: postgres://u@127.0.0.1:1/db", &bad)]);
    let says = format!("environment variable {var} is not set");
    rejects(
        "missing-var",
        &yaml,
        expect(place(&yaml, &bad, "url"), "source.url", &says),
    );
}

#[test]
fn bad_interpolation_syntax() {
    let bad = "    url: \"http://127.0.0.1:1/${oops\"";
    let yaml = edit(&[(SINK_URL, bad)]);
    rejects(
        "unclosed-var",
        &yaml,
        expect(
            place(&yaml, bad, "url"),
            "sinks.notify.url",
            "`${` is not closed",
        ),
    );
    let bad = "  url: ${1DATABASE}";
    let yaml = edit(&[("  url: postgres://u@127.0.0.1:1/db", bad)]);
    rejects(
        "bad-var-name",
        &yaml,
        expect(
            place(&yaml, bad, "url"),
            "source.url",
            "`${1DATABASE}` is not a variable reference",
        ),
    );
}

#[test]
fn bad_duration() {
    let bad = "    timeout: soon";
    let yaml = append(bad);
    rejects(
        "sink-duration",
        &yaml,
        expect(
            place(&yaml, bad, "timeout"),
            "sinks.notify.timeout",
            "`soon` is not a duration",
        ),
    );
    let bad = "  batch: { max_events: 10, max_wait: 50 }";
    let yaml = append(&format!("delivery:\n{bad}"));
    rejects(
        "delivery-duration",
        &yaml,
        expect(
            place(&yaml, bad, "max_wait"),
            "delivery.batch.max_wait",
            "write it like 50ms or 50s",
        ),
    );
}

#[test]
fn unknown_sink_type() {
    let bad = "    type: kinesis";
    let yaml = edit(&[(SINK_TYPE, bad)]);
    rejects(
        "sink-type",
        &yaml,
        expect(
            place(&yaml, bad, "type"),
            "sinks.notify.type",
            "unknown sink type `kinesis` (known: ",
        ),
    );
}

#[test]
fn missing_sink_type() {
    let yaml = edit(&[(SINK_TYPE, "")]);
    rejects(
        "no-sink-type",
        &yaml,
        expect(
            place(&yaml, "  notify:", "notify"),
            "sinks.notify.type",
            "this key is required",
        ),
    );
}

#[test]
fn no_sinks() {
    let yaml = edit(&[
        ("sinks:", "sinks: {}"),
        ("  notify:", ""),
        (SINK_TYPE, ""),
        (SINK_URL, ""),
    ]);
    rejects(
        "empty-sinks",
        &yaml,
        expect(
            place(&yaml, "sinks: {}", "sinks"),
            "sinks",
            "at least one sink is required",
        ),
    );
    // No `sinks:` at all: there is no line to point at, only the key.
    let yaml = edit(&[
        ("sinks:", ""),
        ("  notify:", ""),
        (SINK_TYPE, ""),
        (SINK_URL, ""),
    ]);
    rejects(
        "no-sinks",
        &yaml,
        expect((0, 0), "sinks", "at least one sink is required"),
    );
}

#[test]
fn missing_wasm_file() {
    let bad = "    wasm: transforms/missing.wasm";
    let yaml = append(&format!("transforms:\n  - name: redact\n{bad}"));
    rejects(
        "missing-wasm",
        &yaml,
        expect(
            place(&yaml, bad, "wasm"),
            "transforms[0].wasm",
            "`transforms/missing.wasm` does not exist",
        ),
    );
    // No `wasm:` at all: the list item it belongs in, at its first key.
    let bad = "  - name: redact";
    let yaml = append(&format!("transforms:\n{bad}\n    timeout: 5ms"));
    rejects(
        "no-wasm-key",
        &yaml,
        expect(
            place(&yaml, bad, "name"),
            "transforms[0].wasm",
            "this key is required",
        ),
    );
    let bad = "    transforms: [ { name: doc, wasm: missing.wasm } ]";
    let yaml = append(bad);
    rejects(
        "missing-sink-wasm",
        &yaml,
        expect(
            place(&yaml, bad, "wasm"),
            "sinks.notify.transforms[0].wasm",
            "`missing.wasm` does not exist",
        ),
    );
}

#[test]
fn a_transform_that_is_not_a_component_is_refused_where_it_is_written() {
    // A core module, not a component of the sluice:transform world.
    let wasm: &[(&str, &[u8])] = &[("redact.wasm", b"\0asm\x01\0\0\0")];
    let line = "    wasm: redact.wasm";
    let yaml = append(&format!("transforms:\n  - name: redact\n{line}"));
    rejects_with(
        "transforms",
        &yaml,
        wasm,
        &[],
        expect(
            place(&yaml, line, "wasm"),
            "transforms[0].wasm",
            "is a core WebAssembly module, not a component",
        ),
    );
    let bad = "    transforms: [ { name: doc, wasm: redact.wasm } ]";
    let yaml = append(bad);
    rejects_with(
        "sink-transforms",
        &yaml,
        wasm,
        &[],
        expect(
            place(&yaml, bad, "wasm"),
            "sinks.notify.transforms[0].wasm",
            "is a core WebAssembly module, not a component",
        ),
    );
}

#[test]
fn a_backfill_setting_for_a_table_not_captured_is_refused_where_it_is_written() {
    let bad = "  backfill: { tables: { public.other: { where: \"id > 0\" } } }";
    let yaml = edit(&[(TABLES, &format!("{TABLES}\n  snapshot: initial\n{bad}"))]);
    rejects(
        "backfill-table",
        &yaml,
        expect(
            place(&yaml, bad, "public.other"),
            "source.backfill.tables.public.other",
            "is not one of source.tables",
        ),
    );
}

#[test]
fn bad_pipeline_name() {
    let bad = "pipeline: Orders!";
    let yaml = edit(&[("pipeline: files", bad)]);
    rejects(
        "name",
        &yaml,
        expect(
            place(&yaml, bad, "pipeline"),
            "pipeline",
            "`Orders!` is not a pipeline name",
        ),
    );
}

#[test]
fn bad_admin_address() {
    let bad = "admin: localhost:9187";
    let yaml = append(bad);
    rejects(
        "admin",
        &yaml,
        expect(
            place(&yaml, bad, "admin"),
            "admin",
            "`localhost:9187` is not an address",
        ),
    );
}

#[test]
fn webhook_url_that_is_not_http() {
    let bad = "    url: ftp://127.0.0.1/events";
    let yaml = edit(&[(SINK_URL, bad)]);
    rejects(
        "ftp",
        &yaml,
        expect(
            place(&yaml, bad, "url"),
            "sinks.notify.url",
            "its scheme is `ftp`, not http or https",
        ),
    );
}

#[test]
fn duplicate_key() {
    let bad = "    url: http://127.0.0.1:2/other";
    let yaml = append(bad);
    let (first, _) = place(&yaml, SINK_URL, "url");
    let says = format!("duplicate key `url` (first written at line {first}, column 5)");
    rejects(
        "duplicate",
        &yaml,
        expect(place(&yaml, bad, "url"), "sinks.notify.url", &says),
    );
}

#[test]
fn a_list_where_a_string_is_expected() {
    let bad = "    url: [http://127.0.0.1:1/a, http://127.0.0.1:1/b]";
    let yaml = edit(&[(SINK_URL, bad)]);
    rejects(
        "list-url",
        &yaml,
        expect(
            place(&yaml, bad, "url"),
            "sinks.notify.url",
            "invalid type: sequence, expected a string",
        ),
    );
    let bad = "pipeline: [a, b]";
    let yaml = edit(&[("pipeline: files", bad)]);
    rejects(
        "list-name",
        &yaml,
        expect(
            place(&yaml, bad, "pipeline"),
            "pipeline",
            "invalid type: sequence, expected a string",
        ),
    );
}

#[test]
fn empty_file() {
    for (name, yaml) in [("empty", ""), ("comments", "# nothing here yet\n\n")] {
        rejects(
            name,
            yaml,
            expect((0, 0), "", "the file is empty; a pipeline file starts with"),
        );
    }
}

/// Every secret below contains this; the files themselves never do.
const MARK: &str = "topsecret";

#[test]
fn values_from_the_environment_never_reach_stderr_even_when_they_are_at_fault() {
    let pid = std::process::id();
    let cases: Vec<(&str, &str, &str, &str, String)> = vec![
        // (name, key in error, line to change or "" to append, its new text, value)
        (
            "admin",
            "admin",
            "",
            "admin: ${VAR}",
            format!("{MARK}-admin:0xC0FFEE"),
        ),
        (
            "name",
            "pipeline",
            "pipeline: files",
            "pipeline: ${VAR}",
            format!("Not A Name {MARK}"),
        ),
        (
            "slot",
            "source.slot",
            TABLES,
            "  slot: ${VAR}",
            format!("Bad-Slot-{MARK}"),
        ),
        (
            "snapshot",
            "source.snapshot",
            TABLES,
            "  snapshot: ${VAR}",
            format!("{MARK}-mode"),
        ),
        (
            "hook-url",
            "sinks.notify.url",
            SINK_URL,
            "    url: ${VAR}",
            format!("ftp://user:pa55-{MARK}@hooks.internal/x"),
        ),
        (
            "hook-url-parse",
            "sinks.notify.url",
            SINK_URL,
            "    url: ${VAR}",
            format!("http://user:{MARK}@[::1/x"),
        ),
        (
            "hook-secret",
            "sinks.notify.secret",
            "",
            "    secret: ${VAR}",
            format!("whsec_!!{MARK}!!"),
        ),
        (
            "hook-timeout",
            "sinks.notify.timeout",
            "",
            "    timeout: ${VAR}",
            format!("5{MARK}"),
        ),
        (
            "hook-concurrency",
            "sinks.notify.concurrency",
            "",
            "    concurrency: ${VAR}",
            format!("{MARK}-many"),
        ),
        (
            "hook-header",
            "sinks.notify.headers.authorization",
            "",
            "    headers: { authorization: \"Bearer ${VAR}\" }",
            format!("{MARK}\nx"),
        ),
    ];
    for (name, key, old, new, value) in cases {
        let var = format!(
            "SLUICE_E2E_SECRET_{}_{pid}",
            name.replace('-', "_").to_uppercase()
        );
        let line = new.replace("VAR", &var);
        let yaml = if old.is_empty() {
            append(&line)
        } else if old == TABLES {
            edit(&[(TABLES, &format!("{TABLES}\n{line}"))])
        } else {
            edit(&[(old, &line)])
        };
        assert!(!yaml.contains(MARK));
        let token = key.rsplit('.').next().unwrap();
        let at = place(&yaml, &line, token);
        let stderr = rejects_with(
            &format!("secret-{name}"),
            &yaml,
            &[],
            &[(&var, &value)],
            expect(at, key, ""),
        );
        assert!(
            !stderr.contains(MARK) && !stderr.contains(&value),
            "{name}: the value of {var} is in stderr:\n{stderr}"
        );
    }
}

#[test]
fn a_valid_file_with_secrets_validates_without_printing_them() {
    let dir = scratch_dir("files-secret-ok");
    let pid = std::process::id();
    let (pg, hook) = (
        format!("SLUICE_E2E_PG_{pid}"),
        format!("SLUICE_E2E_HOOK_{pid}"),
    );
    let yaml = edit(&[
        (
            "  url: postgres://u@127.0.0.1:1/db",
            &format!("  url: ${{{pg}}}"),
        ),
        (SINK_URL, &format!("{SINK_URL}\n    secret: ${{{hook}}}")),
    ]);
    std::fs::write(dir.join("ok.yaml"), &yaml).unwrap();
    let pg_url = format!("postgres://u:{MARK}-pg@127.0.0.1:1/db");
    let out = command_env(
        &dir,
        &["validate", "ok.yaml"],
        &[(&pg, &pg_url), (&hook, &format!("{MARK}-hook"))],
    );
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(MARK), "{all}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `pipelines/*.yaml`, from the repository's root as a user would run them.
fn example_pipelines() -> (PathBuf, Vec<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    (root, files)
}

/// The `${NAME}`s of `text` that have no default.
fn required_vars(text: &str) -> Vec<String> {
    let mut vars = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let end = rest.find('}').unwrap_or(rest.len());
        let inner = &rest[..end];
        if !inner.contains(":-") && !vars.iter().any(|v| v == inner) {
            vars.push(inner.to_string());
        }
    }
    vars
}

#[test]
fn every_example_pipeline_validates() {
    let (root, files) = example_pipelines();
    assert!(!files.is_empty(), "no pipelines/*.yaml");
    for file in files {
        let yaml = std::fs::read_to_string(&file).unwrap();
        let values: Vec<(String, String)> = required_vars(&yaml)
            .into_iter()
            .map(|name| {
                let value = match name.as_str() {
                    "DATABASE_URL" => "postgres://sluice:secret@127.0.0.1:5432/app",
                    n if n.ends_with("_URL") => "http://127.0.0.1:8080/events",
                    _ => "example-value",
                };
                (name, value.to_string())
            })
            .collect();
        let env: Vec<(&str, &str)> = values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let relative = file.strip_prefix(&root).unwrap().to_str().unwrap();
        let out = command_env(&root, &["validate", relative], &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{relative} does not validate:\n{}",
            text_of(&out)
        );
        assert!(
            text(&out.stdout).contains(&format!("{relative}: pipeline ")),
            "{relative}: {}",
            text_of(&out)
        );
    }
}

fn text_of(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}
