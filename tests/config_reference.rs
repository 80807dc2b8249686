//! `docs/configuration.md` against the code it documents, through the real binary.
//!
//! - Every ```yaml example in it that is a whole pipeline file (its first key is
//!   `pipeline:`) passes `sluice validate` (without `--connect`): every key it shows exists,
//!   every value is accepted, every sink builds.
//! - Every key the code reads is documented: the names in the `expecting = "..."` strings
//!   and the fields of the `#[serde(deny_unknown_fields)]` config structs of the engine,
//!   the source and each sink, and the keys every sink section has, each have a row in one
//!   of the document's key tables. A key added without documentation fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sluice_testkit::sluice::command_env;
use sluice_testkit::{scratch_dir, transform_artifact};

/// The environment the examples read with `${VAR}` (without a default). An example that
/// uses another variable fails the test until it is added here.
const ENV: &[(&str, &str)] = &[
    (
        "DATABASE_URL",
        "postgres://sluice:secret@127.0.0.1:5432/app",
    ),
    ("WEBHOOK_SECRET", "whsec_c2x1aWNlLWRvY3MtZXhhbXBsZQ=="),
    ("WEBHOOK_TOKEN", "token-from-the-environment"),
    ("ES_PASSWORD", "es-password"),
    (
        "ES_API_KEY",
        "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==",
    ),
    ("REDIS_URL", "redis://:secret@127.0.0.1:6379/0"),
    ("KAFKA_PASSWORD", "kafka-password"),
    ("RABBITMQ_PASSWORD", "rabbit-password"),
];

/// The example transforms the document's examples load, from `transforms/<name>.wasm`.
const TRANSFORMS: &[&str] = &["redact_pii", "order_doc"];

/// A CA certificate for `tls.ca_file` examples (`certs/http_ca.crt`): the Elasticsearch
/// sink reads it when it is built. Self-signed, no private key kept; only parsed.
const CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBmTCCAT+gAwIBAgIUCDkMT1Marz7bO74H14toaTXcfRwwCgYIKoZIzj0EAwIw
ITEfMB0GA1UEAwwWc2x1aWNlIGRvY3MgZXhhbXBsZSBDQTAgFw0yNjEyMDIwNDIz
MTlaGA8yMTI2MTEwODA0MjMxOVowITEfMB0GA1UEAwwWc2x1aWNlIGRvY3MgZXhh
bXBsZSBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABH1M8rQSTS8lpopPqGB8
spIuA1XT/JNN8wWJ/pGbSdSPoPzmnLMT1rI1qfL/TxaMnPVJWhCe2dxNs8RIbLbj
rHOjUzBRMB0GA1UdDgQWBBQstu0llGTB+DVj+FaNczTSOySfSjAfBgNVHSMEGDAW
gBQstu0llGTB+DVj+FaNczTSOySfSjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49
BAMCA0gAMEUCIQCUUk1vfyxmUpjYPjfcic620uTNkHGHKBBiOLkk+p+AugIgY8P3
EhFVo04CBPzB6K8eI5YgeTzfkSnOfT1+81RkkDI=
-----END CERTIFICATE-----
";

/// The files whose keys the document must cover, relative to the repository.
const SOURCES: &[&str] = &[
    "runtime/engine/src/config/mod.rs",
    "runtime/engine/src/config/model.rs",
    "connectors/postgres/src/config.rs",
    "connectors/outbox-poll/src/config.rs",
    "connectors/webhook/src/config.rs",
    "connectors/file/src/config.rs",
    "connectors/blackhole/src/config.rs",
    "connectors/elasticsearch/src/config.rs",
    "connectors/redis/src/config.rs",
    "connectors/kafka/src/config.rs",
    "connectors/rabbitmq/src/config.rs",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository holds cli/")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn document() -> String {
    read("docs/configuration.md")
}

/// The ```yaml blocks of `markdown` whose first key is `pipeline:`, with the line each
/// starts at (1-based, for messages).
fn pipeline_examples(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        match block.as_mut() {
            None if line.trim_start().starts_with("```yaml") => {
                block = Some((i + 2, String::new()))
            }
            None => {}
            Some(_) if line.trim_start().starts_with("```") => {
                let (at, text) = block.take().unwrap_or_default();
                let first_key = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'));
                if first_key.is_some_and(|l| l.starts_with("pipeline:")) {
                    out.push((at, text));
                }
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(block.is_none(), "a ```yaml block is not closed");
    out
}

/// The names of the `${NAME}` references (those without a `:-default`) in `text`.
fn required_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let body = &rest[start + 2..];
        let end = body.find('}').unwrap_or(body.len());
        let inner = &body[..end];
        if !inner.contains(":-") && !rest[..start].ends_with('$') {
            names.insert(inner.to_string());
        }
        rest = &body[end..];
    }
    names
}

#[test]
fn every_pipeline_example_validates() {
    let doc = document();
    let examples = pipeline_examples(&doc);
    assert!(
        examples.len() >= 8,
        "docs/configuration.md should have a whole-pipeline example per section, found {}",
        examples.len()
    );

    let dir = scratch_dir("config-reference");
    std::fs::create_dir_all(dir.join("transforms")).unwrap();
    for name in TRANSFORMS {
        std::fs::copy(
            transform_artifact(name),
            dir.join("transforms").join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    std::fs::write(dir.join("certs/http_ca.crt"), CA_PEM).unwrap();

    let known: BTreeSet<&str> = ENV.iter().map(|(name, _)| *name).collect();
    let mut failures = Vec::new();
    for (n, (line, yaml)) in examples.iter().enumerate() {
        for name in required_variables(yaml) {
            assert!(
                known.contains(name.as_str()),
                "the example at docs/configuration.md:{line} reads ${{{name}}}: add it to ENV"
            );
        }
        let file = format!("example-{n}.yaml");
        std::fs::write(dir.join(&file), yaml).unwrap();
        let out = command_env(&dir, &["validate", &file], ENV);
        if !out.status.success() {
            failures.push(format!(
                "docs/configuration.md:{line} (exit {:?}):\n{}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "examples that do not validate:\n\n{}",
        failures.join("\n")
    );
}

/// Backtick-quoted names in `text`, each cut at `:` (`type: postgres` → `type`).
fn quoted_names(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|name| name.split(':').next().unwrap_or(name).trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

/// The keys named by the `expecting = "..."` attributes of `source`: backtick-quoted
/// names, or the list after "a map of" when nothing is quoted.
fn expecting_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("expecting = \"") {
        let after = &rest[at + "expecting = \"".len()..];
        let end = after.find('"').expect("an expecting string is closed");
        let text = &after[..end];
        let quoted = quoted_names(text);
        if quoted.is_empty() {
            let list = text
                .strip_prefix("a map of ")
                .unwrap_or_else(|| panic!("cannot read the keys of `expecting = \"{text}\"`"));
            names.extend(list.split(',').map(|k| k.trim().to_string()));
        } else {
            names.extend(quoted);
        }
        rest = &after[end..];
    }
    names
}

/// The keys of every `#[serde(... deny_unknown_fields ...)]` struct in `source`: its field
/// names, or their `rename`, without `skip`ped fields.
fn strict_struct_keys(source: &str) -> Vec<String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut keys = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let code = !lines[i].trim_start().starts_with("//");
        if !(code && lines[i].contains("deny_unknown_fields")) {
            i += 1;
            continue;
        }
        let is_struct = |line: &str| {
            let line = line.trim_start();
            ["struct ", "pub struct ", "pub(crate) struct "]
                .iter()
                .any(|p| line.starts_with(p))
        };
        while !is_struct(lines[i]) {
            i += 1;
        }
        if lines[i].trim_end().ends_with("{}") {
            i += 1;
            continue;
        }
        let mut attributes = String::new();
        i += 1;
        while lines[i].trim() != "}" {
            let line = lines[i].trim();
            i += 1;
            if line.starts_with("#[") {
                attributes.push_str(line);
                // An attribute written over several lines ends with `)]`.
                while !attributes.ends_with(']') {
                    attributes.push_str(lines[i].trim());
                    i += 1;
                }
                continue;
            }
            if line.is_empty() || line.starts_with("//") {
                continue;
            }
            let field = line
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ")
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            let attrs = std::mem::take(&mut attributes);
            if attrs.contains("skip)") || attrs.contains("skip,") || attrs.contains("flatten") {
                continue;
            }
            let name = match attrs.find("rename = \"") {
                Some(at) => {
                    let after = &attrs[at + "rename = \"".len()..];
                    after[..after.find('"').unwrap_or(after.len())].to_string()
                }
                None => field,
            };
            keys.push(name);
        }
    }
    keys
}

/// The keys the loader takes off every sink section before the sink reads its own:
/// `map.remove("...")` in the config module.
fn sink_section_keys(source: &str) -> Vec<String> {
    source
        .match_indices("map.remove(\"")
        .map(|(at, m)| {
            let after = &source[at + m.len()..];
            after[..after.find('"').unwrap_or(after.len())].to_string()
        })
        .collect()
}

/// The keys documented in `markdown`: the first cell of each table row, when it is a
/// backtick-quoted name; `a.b.c` documents `c` (and `a.b.c`).
fn documented_keys(markdown: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for line in markdown.lines() {
        let Some(cell) = line
            .trim()
            .strip_prefix('|')
            .and_then(|r| r.split('|').next())
        else {
            continue;
        };
        let cell = cell.trim();
        let Some(name) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        keys.insert(name.to_string());
        if let Some((_, last)) = name.rsplit_once('.') {
            keys.insert(last.to_string());
        }
    }
    keys
}

#[test]
fn every_key_the_code_reads_is_documented() {
    let documented = documented_keys(&document());
    let mut missing = Vec::new();
    let mut seen = 0;
    for file in SOURCES {
        let source = read(file);
        let mut keys = expecting_names(&source);
        keys.extend(strict_struct_keys(&source));
        if file.ends_with("config/mod.rs") {
            let section = sink_section_keys(&source);
            assert!(
                section.len() >= 4,
                "{file}: the sink section keys (`type`, `delivery`, `transforms`, `tables`) \
                 were not found; update this test"
            );
            keys.extend(section);
        }
        seen += keys.len();
        for key in keys {
            if !documented.contains(&key) {
                missing.push(format!("{file}: `{key}`"));
            }
        }
    }
    assert!(
        seen > 60,
        "only {seen} keys were found: is the parsing broken?"
    );
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "keys without a row in a table of docs/configuration.md:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_parsers_find_what_they_should() {
    let source = r#"
#[serde(deny_unknown_fields, expecting = "a map with `a`, `b: x` and `c`")]
pub struct S {
    /// Doc.
    #[serde(default)]
    pub a: u32,
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip)]
    hidden: bool,
}
#[serde(deny_unknown_fields)]
pub struct Empty {}
#[serde(expecting = "a map of x, y")]
struct T { z: u8 }
"#;
    assert_eq!(strict_struct_keys(source), ["a", "type"]);
    assert_eq!(expecting_names(source), ["a", "b", "c", "x", "y"]);
    assert_eq!(
        required_variables("a: ${A}\nb: ${B:-x}\nc: $${C}\nd: \"${D}\""),
        ["A", "D"].iter().map(|s| s.to_string()).collect()
    );
    let doc = "| key | t |\n|---|---|\n| `auth.username` | x |\n| not | y |\n";
    let keys = documented_keys(doc);
    assert!(keys.contains("username") && keys.contains("auth.username"));
    assert!(!keys.contains("not"));
    let md = "```yaml\n# c\npipeline: a\n```\n```yaml\nsinks: {}\n```\n";
    assert_eq!(
        pipeline_examples(md),
        [(2, "# c\npipeline: a\n".to_string())]
    );
}
