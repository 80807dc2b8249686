use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::*;
use crate::registry::{SinkType, SourceType};
use crate::testing::{rejected_at, with_lines, yaml, PIPELINE as BASE};

/// The loader only reads names from the registry; it builds nothing.
fn unbuilt_sink(_: &SinkSection) -> Result<Box<dyn crate::sink::Sink>, ConfigError> {
    unreachable!("the loader builds no sink")
}

fn unbuilt_source(
    _: &SourceSection,
) -> Result<Box<dyn crate::source::SourceConnector>, ConfigError> {
    unreachable!("the loader builds no source")
}

const fn sink_type(name: &'static str) -> SinkType {
    SinkType {
        name,
        build: unbuilt_sink,
    }
}

const REGISTRY: Registry = Registry {
    sources: &[SourceType {
        name: "postgres",
        build: unbuilt_source,
    }],
    sinks: &[
        sink_type("webhook"),
        sink_type("elasticsearch"),
        sink_type("redis"),
        sink_type("kafka"),
    ],
};

fn env(name: &str) -> Option<String> {
    match name {
        "DATABASE_URL" => Some("postgres://sluice:hunter2@db:5432/app".into()),
        "WEBHOOK_SECRET" => Some("whsec_topsecretvalue".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn load(lines: &[&str]) -> Result<Pipeline, ConfigError> {
    load_str(&yaml(lines), Path::new("pipelines/x.yaml"), &REGISTRY, &env)
}

/// The error, with its place and key checked.
#[track_caller]
fn fails(lines: &[&str], line: usize, column: usize, key: &str) -> ConfigError {
    let e = rejected_at(load(lines), line, column, key);
    assert!(!e.to_string().contains("hunter2"), "{e}");
    e
}

fn with(changes: &[(usize, &'static str)]) -> Vec<&'static str> {
    with_lines(BASE, changes)
}

#[test]
fn the_base_file_is_valid_and_gets_defaults() {
    let p = load(BASE).unwrap();
    assert_eq!(p.name, "orders");
    assert_eq!(p.file, Path::new("pipelines/x.yaml"));
    assert_eq!(p.source.kind, "postgres");
    assert_eq!(p.source.pipeline, "orders");
    assert!(p.transforms.is_empty());
    assert_eq!(p.delivery, DeliveryConfig::default());
    assert_eq!(
        p.state,
        Path::new("pipelines/.sluice/orders.db"),
        "beside the file"
    );
    assert_eq!(p.admin, None);
    assert_eq!(p.sinks.len(), 1);
    let s = &p.sinks[0];
    assert_eq!((s.name.as_str(), s.kind.as_str()), ("notify", "webhook"));
    assert_eq!(
        s.config,
        serde_json::json!({"url": "http://127.0.0.1:8080"})
    );
    assert_eq!(s.delivery, DeliveryConfig::default());
}

#[test]
fn names_with_dashes_name_the_state_file() {
    let p = load(&with(&[(1, "pipeline: orders-eu_2")])).unwrap();
    assert_eq!(p.source.pipeline, "orders-eu_2");
    assert_eq!(p.state, Path::new("pipelines/.sluice/orders-eu_2.db"));
}

#[test]
fn yaml_syntax_error() {
    let e = fails(&with(&[(5, "  tables: [public.orders")]), 6, 6, "");
    assert!(e.message.contains("YAML syntax error"), "{e}");
    let e = fails(&with(&[(9, "    url: a: b")]), 9, 11, "");
    assert!(e.message.contains("mapping values"), "{e}");
    let e = fails(&with(&[(10, "    headers: { a: ${X:-1} }")]), 10, 20, "");
    assert!(e.message.contains("quote"), "{e}");
}

#[test]
fn unknown_top_level_key() {
    let e = fails(&with(&[(10, "sink: {}")]), 10, 1, "sink");
    assert!(e.message.contains("unknown key `sink`"), "{e}");
    assert!(
        e.message.contains("`sinks`") && e.message.contains("`admin`"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!("pipelines/x.yaml:10:1: sink: {}", e.message)
    );
}

#[test]
fn unknown_key_in_a_sinks_delivery() {
    let e = fails(
        &with(&[
            (10, "    delivery:"),
            (11, "      batch: { max_events: 5, max_wiat: 1s }"),
        ]),
        11,
        31,
        "sinks.notify.delivery.batch.max_wiat",
    );
    assert!(e.message.contains("`max_wait`"), "{e}");
}

#[test]
fn unknown_key_in_pipeline_delivery() {
    fails(
        &with(&[(10, "delivery:"), (11, "  retries: {}")]),
        11,
        3,
        "delivery.retries",
    );
}

#[test]
fn missing_required_key() {
    let e = fails(&with(&[(3, "  types: postgres")]), 3, 3, "source.types");
    assert!(e.message.contains("`type`"), "{e}");
    let mut lines = BASE.to_vec();
    lines.remove(2);
    fails(&lines, 2, 1, "source.type");
    let e = fails(&BASE[1..], 0, 0, "pipeline");
    assert_eq!(
        e.to_string(),
        "pipelines/x.yaml: pipeline: this key is required"
    );
}

#[test]
fn bad_pipeline_name() {
    let e = fails(&with(&[(1, "pipeline: Orders!")]), 1, 1, "pipeline");
    assert!(e.message.contains("`Orders!`"), "{e}");
}

#[test]
fn bad_duration() {
    let e = fails(
        &with(&[(10, "delivery:"), (11, "  retry: { initial: fast }")]),
        11,
        12,
        "delivery.retry.initial",
    );
    assert!(e.message.contains("`fast` is not a duration"), "{e}");
    let e = fails(
        &with(&[
            (10, "delivery:"),
            (11, "  batch:"),
            (12, "    max_wait: 50"),
        ]),
        12,
        5,
        "delivery.batch.max_wait",
    );
    assert!(e.message.contains("50ms"), "{e}");
}

#[test]
fn bad_numbers() {
    let e = fails(
        &with(&[(10, "delivery: { dlq: { max_ratio: 1.5 } }")]),
        10,
        20,
        "delivery.dlq.max_ratio",
    );
    assert!(e.message.contains("at most 1"), "{e}");
    fails(
        &with(&[(10, "delivery: { batch: { max_events: 0 } }")]),
        10,
        22,
        "delivery.batch.max_events",
    );
    fails(
        &with(&[(10, "delivery: { retry: { initial: 1m, max: 10s } }")]),
        10,
        22,
        "delivery.retry.initial",
    );
}

#[test]
fn missing_environment_variable() {
    let e = fails(
        &with(&[(10, "    secret: ${WEBHOOK_SECRET2}")]),
        10,
        5,
        "sinks.notify.secret",
    );
    assert_eq!(
        e.to_string(),
        "pipelines/x.yaml:10:5: sinks.notify.secret: environment variable WEBHOOK_SECRET2 is not \
         set (write ${WEBHOOK_SECRET2:-default} for a default)"
    );
}

#[test]
fn bad_interpolation_syntax() {
    let e = fails(&with(&[(4, "  url: ${DATABASE_URL")]), 4, 3, "source.url");
    assert!(e.message.contains("not closed"), "{e}");
    let e = fails(&with(&[(4, "  url: ${DATABASE-URL}")]), 4, 3, "source.url");
    assert!(e.message.contains("not a variable reference"), "{e}");
}

#[test]
fn unknown_sink_type() {
    let e = fails(
        &with(&[(8, "    type: webhooks")]),
        8,
        5,
        "sinks.notify.type",
    );
    assert_eq!(
        e.message,
        "unknown sink type `webhooks` (known: webhook, elasticsearch, redis, kafka)"
    );
}

#[test]
fn missing_sink_type() {
    let e = fails(&with(&[(8, "    uri: x")]), 7, 3, "sinks.notify.type");
    assert!(e.message.contains("required"), "{e}");
}

#[test]
fn no_sinks() {
    let e = fails(&BASE[..5], 0, 0, "sinks");
    assert!(e.message.contains("at least one sink"), "{e}");
    fails(&with(&[(6, "sinks: {}")])[..6], 6, 1, "sinks");
    fails(&with(&[(6, "sinks:")])[..6], 6, 1, "sinks");
    let e = fails(&with(&[(6, "sinks: [notify]")])[..6], 6, 1, "sinks");
    assert!(e.message.contains("map of sinks"), "{e}");
}

#[test]
fn missing_wasm_file() {
    let e = fails(
        &with(&[
            (10, "transforms:"),
            (11, "  - name: redact"),
            (12, "    wasm: transforms/does_not_exist.wasm"),
        ]),
        12,
        5,
        "transforms[0].wasm",
    );
    assert!(e.message.contains("does not exist"), "{e}");
    fails(
        &with(&[(10, "    transforms: [ { name: doc, wasm: nope.wasm } ]")]),
        10,
        32,
        "sinks.notify.transforms[0].wasm",
    );
}

#[test]
fn bad_admin_address() {
    let e = fails(&with(&[(10, "admin: localhost:9187")]), 10, 1, "admin");
    assert!(e.message.contains("127.0.0.1:9187"), "{e}");
    let p = load(&with(&[(10, "admin: 127.0.0.1:9187")])).unwrap();
    assert_eq!(p.admin, Some("127.0.0.1:9187".parse().unwrap()));
    let p = load(&with(&[(10, "admin: '[::1]:9187'")])).unwrap();
    assert_eq!(p.admin.unwrap().port(), 9187);
}

#[test]
fn duplicate_key() {
    let e = fails(
        &with(&[(10, "    url: http://other")]),
        10,
        5,
        "sinks.notify.url",
    );
    assert!(e.message.contains("duplicate key `url`"), "{e}");
    assert!(e.message.contains("line 9"), "{e}");
    fails(&with(&[(10, "pipeline: again")]), 10, 1, "pipeline");
}

#[test]
fn wrong_type() {
    let e = fails(&with(&[(1, "pipeline: [a, b]")]), 1, 1, "pipeline");
    assert!(
        e.message
            .contains("invalid type: sequence, expected a string"),
        "{e}"
    );
    let e = fails(&with(&[(3, "  type: mysql")]), 3, 3, "source.type");
    assert!(e.message.contains("`postgres`"), "{e}");
}

#[test]
fn other_file_level_problems() {
    let e = load_str("", Path::new("p.yaml"), &REGISTRY, &env).unwrap_err();
    assert!(
        e.to_string().starts_with("p.yaml: the file is empty"),
        "{e}"
    );
    let e = load_str("- a\n", Path::new("p.yaml"), &REGISTRY, &env).unwrap_err();
    assert_eq!((e.line, e.column), (1, 1), "{e}");
    let mut lines = BASE.to_vec();
    lines.extend(["---", "pipeline: other"]);
    let e = fails(&lines, 10, 1, "");
    assert!(e.message.contains("one YAML document"), "{e}");
    let e = fails(
        &with(&[(10, "    headers: { 1: x }")]),
        10,
        16,
        "sinks.notify.headers",
    );
    assert!(e.message.contains("quote"), "{e}");
    fails(
        &with(&[(10, "    ? [a]"), (11, "    : b")]),
        10,
        7,
        "sinks.notify",
    );
    let e = load(&with(&[(10, "    tag: !custom x")])).unwrap_err();
    assert!(e.message.contains("unsupported YAML tag"), "{e}");
}

#[test]
fn unreadable_files_are_unlocated() {
    let e = super::load(Path::new("pipelines/no-such-file.yaml"), &REGISTRY).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (0, ""));
    assert!(
        e.to_string()
            .starts_with("pipelines/no-such-file.yaml: cannot read: "),
        "{e}"
    );
}

#[test]
fn defaults_and_dollars() {
    let p = load(&with(&[
        (4, "  url: ${NOT_SET:-postgres://localhost/app}"),
        (
            9,
            "    url: \"${NOT_SET:-http://h}/cost/$$5/${EMPTY:-e}/${EMPTY}\"",
        ),
        (10, "    note: 'pay $$5, keep $HOME'"),
        (11, "    n: 5"),
    ]))
    .unwrap();
    assert_eq!(p.source.config["url"], "postgres://localhost/app");
    let c = &p.sinks[0].config;
    assert_eq!(c["url"], "http://h/cost/$5/e/");
    assert_eq!(c["note"], "pay $5, keep $HOME");
    assert_eq!(c["n"], 5);
}

#[test]
fn secrets_never_print() {
    let p = load(&with(&[
        (10, "    secret: ${WEBHOOK_SECRET}"),
        (11, "    other: ${WEBHOOK_SECRET}x"),
        (12, "    dsn: redis://:literalpw@h:6379"),
        (13, "transforms:"),
        (14, "  - name: t"),
        (15, "    wasm: Cargo.toml"),
        (
            16,
            "    config: { key: \"${WEBHOOK_SECRET}\", plain: 3, password: lit }",
        ),
    ]))
    .unwrap();
    assert_eq!(p.sinks[0].config["secret"], "whsec_topsecretvalue");
    assert_eq!(p.transforms[0].config["key"], "whsec_topsecretvalue");
    assert_eq!(p.transforms[0].config["plain"], "3");
    let debug = format!("{p:?}");
    for secret in ["hunter2", "topsecret", "literalpw", "lit\""] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert!(debug.contains("plain"), "{debug}");
}

#[test]
fn interpolated_values_stay_out_of_error_messages() {
    let e = fails(
        &with(&[(
            10,
            "delivery: { batch: { max_events: \"${WEBHOOK_SECRET}\" } }",
        )]),
        10,
        22,
        "delivery.batch.max_events",
    );
    assert!(!e.to_string().contains("topsecret"), "{e}");
    assert!(e.message.contains("${WEBHOOK_SECRET}"), "{e}");
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Hook {
    url: String,
    #[serde(default)]
    secret: Option<Secret>,
    #[serde(default, with = "duration::option")]
    timeout: Option<Duration>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

#[test]
fn sinks_parse_their_own_keys_with_located_errors() {
    let p = load(&with(&[(10, "    timeout: 10s")])).unwrap();
    let hook: Hook = p.sinks[0].parse().unwrap();
    assert_eq!(hook.timeout, Some(Duration::from_secs(10)));

    let p = load(&with(&[(10, "    retries: 3")])).unwrap();
    let e = p.sinks[0].parse::<Hook>().unwrap_err();
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (10, 5, "sinks.notify.retries")
    );
    assert!(e.message.contains("unknown key `retries`"), "{e}");

    let p = load(&with(&[(10, "    headers:"), (11, "      x-a: [1]")])).unwrap();
    let e = p.sinks[0].parse::<Hook>().unwrap_err();
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (11, 7, "sinks.notify.headers.x-a")
    );

    let p = load(&with(&[(9, "    secret: ${WEBHOOK_SECRET}")])).unwrap();
    let e = p.sinks[0].parse::<Hook>().unwrap_err();
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (7, 3, "sinks.notify.url")
    );

    let p = load(&with(&[(10, "    secret: ${WEBHOOK_SECRET}")])).unwrap();
    let e = p.sinks[0].error("secret", "bad key whsec_topsecretvalue");
    assert_eq!((e.line, e.column), (10, 5));
    assert_eq!(e.message, "bad key ${WEBHOOK_SECRET}");
    let e = p.sinks[0].error("url", "scheme must be https");
    assert_eq!(
        e.to_string(),
        "pipelines/x.yaml:9:5: sinks.notify.url: scheme must be https"
    );
    let e = p.sinks[0].error("", "whole sink");
    assert_eq!((e.line, e.column, e.key.as_str()), (7, 3, "sinks.notify"));
}

#[test]
fn sections_built_in_code() {
    let s = SinkSection::new("n", "webhook", serde_json::json!({"url": "http://h"}));
    let h: Hook = s.parse().unwrap();
    assert_eq!(h.url, "http://h");
    assert_eq!(s.error("url", "x").line, 0);
}

#[test]
fn sink_delivery_is_merged_key_by_key() {
    let p = load(&with(&[
        (10, "  other:"),
        (11, "    type: redis"),
        (
            12,
            "    delivery: { batch: { max_events: 10 }, dlq: { on_key: hold } }",
        ),
        (13, "delivery:"),
        (14, "  batch: { max_events: 200, max_wait: 20ms }"),
        (15, "  retry: { max: 1m }"),
    ]))
    .unwrap();
    assert_eq!(p.delivery.batch.max_events, 200);
    assert_eq!(p.delivery.batch.max_wait, Duration::from_millis(20));
    assert_eq!(p.delivery.retry.max, Duration::from_secs(60));
    assert_eq!(p.sinks[0].delivery, p.delivery);
    let d = &p.sinks[1].delivery;
    assert_eq!(d.batch.max_events, 10);
    assert_eq!(d.batch.max_wait, Duration::from_millis(20));
    assert_eq!(d.retry.max, Duration::from_secs(60));
    assert_eq!(d.retry.initial, Duration::from_millis(100));
    assert_eq!(d.dlq.on_key, OnKey::Hold);
    assert_eq!(d.dlq.window, 100);
    assert_eq!(p.sinks[1].config, serde_json::json!({}));
}

#[test]
fn anchors_and_aliases() {
    let p = load(&with(&[
        (10, "    delivery: *fast"),
        (11, "delivery: &fast { batch: { max_events: 7 } }"),
    ]));
    // An alias must follow its anchor.
    assert!(p.is_err());
    let p = load(&with(&[
        (6, "delivery: &fast { batch: { max_events: 7 } }"),
        (7, "sinks:"),
        (8, "  notify:"),
        (9, "    type: webhook"),
        (10, "    delivery: *fast"),
    ]))
    .unwrap();
    assert_eq!(p.sinks[0].delivery.batch.max_events, 7);
}

#[test]
fn sinks_keep_file_order() {
    let p = load(&with(&[
        (7, "  zeta: { type: webhook, url: http://z }"),
        (8, "  alpha: { type: webhook, url: http://a }"),
        (9, "  mid-1: { type: kafka }"),
    ]))
    .unwrap();
    let names: Vec<&str> = p.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha", "mid-1"]);
    assert_eq!(p.sink("alpha").unwrap().config["url"], "http://a");
    fails(&with(&[(7, "  Notify:")]), 7, 3, "sinks.Notify");
}

/// SPEC's example, with its transforms pointing at files that exist.
#[test]
fn the_spec_example_parses() {
    let dir = std::env::temp_dir().join(format!("sluice-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let redact = dir.join("redact_pii.wasm");
    let doc = dir.join("order_doc.wasm");
    std::fs::write(&redact, b"\0asm").unwrap();
    std::fs::write(&doc, b"\0asm").unwrap();
    let text = format!(
        r#"pipeline: orders                      # name

source:
  type: postgres
  url: ${{DATABASE_URL}}
  slot: sluice_orders
  publication: sluice_orders
  tables: [public.orders, public.customers]
  outbox:
    table: public.outbox
    delete_after_capture: false
  messages: [orders]
  snapshot: never

transforms:
  - name: redact
    wasm: {redact}
    config: {{ fields: "email,phone" }}

sinks:
  search:
    type: elasticsearch
    url: http://127.0.0.1:9200
    index: "{{table}}"
    transforms: [ {{ name: doc, wasm: {doc} }} ]
  cache:
    type: redis
    url: redis://127.0.0.1:6379
    key: "{{table}}:{{key}}"
  notify:
    type: webhook
    url: http://127.0.0.1:8080/events
    secret: ${{WEBHOOK_SECRET}}
    delivery: {{ retry: {{ max_elapsed: 1h }} }}
  bus:
    type: kafka
    brokers: 127.0.0.1:9092
    topic: "{{event.aggregate_type}}"

delivery:
  batch: {{ max_events: 500, max_wait: 50ms }}
  retry: {{ initial: 100ms, max: 30s, max_elapsed: 15m }}
  dlq: {{ max_ratio: 0.5, window: 100 }}

state: .sluice/orders.db
admin: 127.0.0.1:9187
"#,
        redact = redact.display(),
        doc = doc.display()
    );
    let p = load_str(&text, Path::new("pipelines/orders.yaml"), &REGISTRY, &env);
    std::fs::remove_dir_all(&dir).ok();
    let p = p.unwrap();
    assert_eq!(p.source.kind, "postgres");
    assert_eq!(p.transforms.len(), 1);
    assert_eq!(p.transforms[0].config["fields"], "email,phone");
    let names: Vec<&str> = p.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["search", "cache", "notify", "bus"]);
    let search = p.sink("search").unwrap();
    assert_eq!(search.transforms[0].name, "doc");
    assert_eq!(
        search.config,
        serde_json::json!({"url": "http://127.0.0.1:9200", "index": "{table}"})
    );
    assert_eq!(p.sink("bus").unwrap().config["brokers"], "127.0.0.1:9092");
    let notify = p.sink("notify").unwrap();
    assert_eq!(notify.delivery.retry.max_elapsed, Duration::from_secs(3600));
    assert_eq!(notify.delivery.retry.max, Duration::from_secs(30));
    assert_eq!(
        p.sink("cache").unwrap().delivery.retry.max_elapsed,
        Duration::from_secs(900)
    );
    assert_eq!(p.admin.unwrap().to_string(), "127.0.0.1:9187");
    let debug = format!("{p:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("topsecret"),
        "{debug}"
    );
}

#[test]
fn the_example_webhook_pipeline_loads() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/orders-webhook.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let p = load_str(&text, &file, &REGISTRY, &|name| {
        (name == "DATABASE_URL").then(|| "postgres://localhost/app".to_string())
    })
    .unwrap();
    assert_eq!(p.name, "orders-webhook");
    assert_eq!(p.source.kind, "postgres");
    assert_eq!(p.sinks.len(), 1);
    let notify = &p.sinks[0];
    assert_eq!(notify.kind, "webhook");
    assert_eq!(notify.config["url"], "http://127.0.0.1:8080/events");
    assert_eq!(notify.config["timeout"], "10s");
    assert!(notify.config["secret"]
        .as_str()
        .unwrap()
        .starts_with("whsec_"));
    assert_eq!(p.admin.unwrap().port(), 9187);
    let hook: Hook = notify.parse().unwrap();
    assert_eq!(hook.timeout, Some(Duration::from_secs(10)));
}

#[test]
fn pipeline_errors_point_at_keys() {
    let p = load(&with(&[
        (10, "    transforms: [ { name: doc, wasm: Cargo.toml } ]"),
        (11, "    secret: ${WEBHOOK_SECRET}"),
        (12, "transforms:"),
        (13, "  - name: redact"),
        (14, "    wasm: Cargo.toml"),
        (15, "  - { name: again, wasm: Cargo.toml }"),
    ]))
    .unwrap();
    let at = |key: &str| {
        let e = p.error(key, "refused");
        assert_eq!(e.key, key);
        assert_eq!(e.file, Path::new("pipelines/x.yaml"));
        assert_eq!(e.message, "refused");
        (e.line, e.column)
    };
    assert_eq!(at("transforms"), (12, 1));
    assert_eq!(at("transforms[0]"), (13, 5));
    assert_eq!(at("transforms[0].wasm"), (14, 5));
    assert_eq!(at("transforms[1]"), (15, 5));
    assert_eq!(at("transforms[1].name"), (15, 7));
    assert_eq!(at("sinks.notify.transforms"), (10, 5));
    assert_eq!(at("sinks.notify.transforms[0].wasm"), (10, 32));
    assert_eq!(at("source.url"), (4, 3));
    assert_eq!(at("pipeline"), (1, 1));
    // A key left to its default points at the nearest key that is written.
    assert_eq!(at("source.snapshot"), (2, 1));
    assert_eq!(at("sinks.notify.delivery.retry.max"), (7, 3));
    // Nothing at all to point at: the file as a whole.
    assert_eq!(at("state"), (0, 0));
    assert_eq!(at(""), (0, 0));
    let e = p.error("", "whole file");
    assert_eq!(e.to_string(), "pipelines/x.yaml: whole file");

    let e = p.error("sinks.notify.secret", "bad: whsec_topsecretvalue");
    assert_eq!((e.line, e.column), (11, 5));
    assert_eq!(e.message, "bad: ${WEBHOOK_SECRET}");
    let e = p.error(
        "source.url",
        "cannot use postgres://sluice:hunter2@db:5432/app",
    );
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert_eq!(
        e.to_string(),
        "pipelines/x.yaml:4:3: source.url: cannot use ${DATABASE_URL}"
    );

    let p = load(&with(&[
        (5, "  snapshot: initial"),
        (6, "  tables: [orders]"),
        (7, "sinks:"),
        (8, "  notify:"),
        (9, "    type: webhook"),
        (10, "    url: http://h"),
    ]))
    .unwrap();
    assert_eq!(p.source.config["snapshot"], "initial");
    let e = p.error("source.snapshot", "not yet");
    assert_eq!(
        e.to_string(),
        "pipelines/x.yaml:5:3: source.snapshot: not yet"
    );
    // Clones point at the same places; Debug shows no secret and no index.
    let debug = format!("{:?}", p.clone());
    assert!(
        !debug.contains("hunter2") && !debug.contains("locator"),
        "{debug}"
    );
}

#[test]
fn a_file_that_is_not_utf8_is_refused_at_its_line() {
    let e = utf8(
        b"pipeline: a\nsource:\n  url: caf\xe9\n",
        Path::new("p.yaml"),
    )
    .unwrap_err();
    assert_eq!((e.line, e.column), (3, 11), "{e}");
    assert!(e.to_string().starts_with("p.yaml:3:11: "), "{e}");
    assert!(
        e.message.contains("not UTF-8") && e.message.contains("0xe9"),
        "{e}"
    );
}

#[test]
fn a_sink_may_take_only_some_tables() {
    let p = load(&with(&[(10, "    tables: [orders, 'Sales.\"Big\"']")])).unwrap();
    assert_eq!(
        p.sinks[0].tables,
        [
            TableName::new("public", "orders"),
            TableName::new("sales", "Big")
        ]
    );
    assert!(
        p.sinks[0].config.get("tables").is_none(),
        "not the sink's own key"
    );
    fails(
        &with(&[(10, "    tables: [orders, public.orders]")]),
        10,
        22,
        "sinks.notify.tables[1]",
    );
    let e = fails(
        &with(&[(10, "    tables: []")]),
        10,
        5,
        "sinks.notify.tables",
    );
    assert!(e.message.contains("remove `tables`"), "{e}");
}

#[test]
fn the_journal_is_on_disk_beside_the_state_by_default() {
    let p = load(BASE).unwrap();
    assert_eq!(
        p.journal,
        JournalConfig {
            kind: JournalKind::Disk,
            path: "pipelines/.sluice/orders.journal".into(),
            max_bytes: 10 << 30,
            retention: Duration::from_secs(24 * 3600),
            segment_bytes: 64 << 20,
        }
    );
    let p = load(&with(&[(
        10,
        "journal: { path: /var/lib/sluice/j, max_bytes: 1GiB, retention: 2h, segment_bytes: 8MiB }",
    )]))
    .unwrap();
    assert_eq!(p.journal.path, Path::new("/var/lib/sluice/j"));
    assert_eq!(p.journal.max_bytes, 1 << 30);
    assert_eq!(p.journal.retention, Duration::from_secs(7200));
    assert_eq!(p.journal.segment_bytes, 8 << 20);
    let p = load(&with(&[(10, "journal: { path: j }")])).unwrap();
    assert_eq!(p.journal.path, Path::new("pipelines/j"), "beside the file");
    let p = load(&with(&[(10, "journal: { type: memory }")])).unwrap();
    assert_eq!(p.journal.kind, JournalKind::Memory);
}

#[test]
fn journal_mistakes_name_their_key() {
    let e = fails(
        &with(&[(10, "journal: { type: memory, max_bytes: 1GiB }")]),
        10,
        26,
        "journal.max_bytes",
    );
    assert!(e.message.contains("memory journal keeps no files"), "{e}");
    let e = fails(
        &with(&[(10, "journal: { max_bytes: 100MiB, segment_bytes: 64MiB }")]),
        10,
        12,
        "journal.max_bytes",
    );
    assert!(e.message.contains("two segments"), "{e}");
    let e = fails(
        &with(&[(10, "journal: { segment_bytes: 1KiB }")]),
        10,
        12,
        "journal.segment_bytes",
    );
    assert!(e.message.contains("64KiB"), "{e}");
    let e = fails(
        &with(&[(10, "journal: { type: tape }")]),
        10,
        12,
        "journal.type",
    );
    assert!(
        e.message.contains("disk") && e.message.contains("memory"),
        "{e}"
    );
    let e = fails(
        &with(&[(10, "journal: { size: 1GiB }")]),
        10,
        12,
        "journal.size",
    );
    assert!(e.message.contains("`max_bytes`"), "{e}");
}
