//! The `postgres` source's keys, read from whole pipeline files as a user writes them.

use std::path::Path;

use sluice_runtime::config::{load_str, ConfigError, Pipeline, SinkSection, TableName};
use sluice_runtime::registry::{Registry, SinkType};

use sluice_runtime::testing::{rejected_at, with_lines, yaml, PIPELINE as BASE};

use super::*;

fn unbuilt_sink(_: &SinkSection) -> Result<Box<dyn sluice_runtime::Sink>, ConfigError> {
    unreachable!("the loader builds no sink")
}

const REGISTRY: Registry = Registry {
    sources: &[crate::SOURCE],
    sinks: &[SinkType {
        name: "webhook",
        build: unbuilt_sink,
    }],
};

fn env(name: &str) -> Option<String> {
    match name {
        "DATABASE_URL" => Some("postgres://sluice:hunter2@db:5432/app".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn load(lines: &[&str]) -> Result<(Pipeline, PostgresConfig), ConfigError> {
    let p = load_str(&yaml(lines), Path::new("pipelines/x.yaml"), &REGISTRY, &env)?;
    let config = PostgresConfig::from_section(&p.source)?;
    Ok((p, config))
}

fn source(lines: &[&str]) -> PostgresConfig {
    load(lines).unwrap().1
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
fn the_base_file_gets_the_defaults() {
    let s = source(BASE);
    assert_eq!(s.url.expose(), "postgres://sluice:hunter2@db:5432/app");
    assert_eq!(s.slot, "sluice_orders");
    assert_eq!(s.publication, "sluice_orders");
    assert_eq!(s.tables, [TableName::new("public", "orders")]);
    assert_eq!(s.snapshot, Snapshot::Never);
    assert!(s.outbox.is_none() && s.messages.is_empty());
}

#[test]
fn names_with_dashes_give_underscored_slots() {
    let s = source(&with(&[(1, "pipeline: orders-eu_2")]));
    assert_eq!(s.slot, "sluice_orders_eu_2");
    assert_eq!(s.publication, "sluice_orders_eu_2");
}

#[test]
fn unknown_key_in_source() {
    let e = fails(
        &with(&[(5, "  tabels: [public.orders]")]),
        5,
        3,
        "source.tabels",
    );
    assert!(e.message.contains("unknown key `tabels`"), "{e}");
    assert!(e.message.contains("`tables`"), "{e}");
}

#[test]
fn missing_url() {
    let mut lines = BASE.to_vec();
    lines.remove(3);
    let e = fails(&lines, 2, 1, "source.url");
    assert_eq!(e.message, "this key is required");
}

#[test]
fn wrong_type() {
    let e = fails(
        &with(&[(5, "  tables: public.orders")]),
        5,
        3,
        "source.tables",
    );
    assert!(e.message.contains("expected a sequence"), "{e}");
    let e = fails(
        &with(&[(5, "  tables: [public.orders, 'a.b.c']")]),
        5,
        27,
        "source.tables[1]",
    );
    assert!(e.message.contains("schema.table"), "{e}");
}

#[test]
fn defaults_from_the_environment() {
    let s = source(&with(&[(4, "  url: ${NOT_SET:-postgres://localhost/app}")]));
    assert_eq!(s.url.expose(), "postgres://localhost/app");
}

#[test]
fn interpolated_values_stay_out_of_error_messages() {
    let e = fails(
        &with(&[(5, "  slot: ${DATABASE_URL}")]),
        5,
        3,
        "source.slot",
    );
    assert!(e.message.contains("${DATABASE_URL}"), "{e}");
}

#[test]
fn source_rules() {
    let e = fails(&with(&[(5, "  tables: []")]), 5, 3, "source.tables");
    assert!(e.message.contains("nothing to capture"), "{e}");
    let s = source(&with(&[(5, "  messages: [orders]")]));
    assert_eq!(s.messages, ["orders"]);
    let s = source(&with(&[(5, "  outbox: { table: public.outbox }")]));
    let outbox = s.outbox.unwrap();
    assert_eq!(outbox.table.to_string(), "public.outbox");
    assert!(!outbox.delete_after_capture);
    assert_eq!(outbox.columns, OutboxColumns::default());
    fails(
        &with(&[(5, "  tables: [orders, public.orders]")]),
        5,
        20,
        "source.tables[1]",
    );
    fails(&with(&[(5, "  slot: Bad-Slot")]), 5, 3, "source.slot");
    let long = format!("pipeline: {}", "a".repeat(60));
    let long: &'static str = Box::leak(long.into_boxed_str());
    fails(&with(&[(1, long)]), 2, 1, "source.slot");
    let s = source(&with(&[
        (2, "source: { type: postgres, url: u, snapshot: initial, tables: [o, 'Sales.\"Big Orders\"'] }"),
        (3, ""),
        (4, ""),
        (5, ""),
    ]));
    assert_eq!(s.tables[1], TableName::new("sales", "Big Orders"));
    assert_eq!(s.snapshot, Snapshot::Initial);
    fails(
        &with(&[(5, "  snapshot: sometimes")]),
        5,
        3,
        "source.snapshot",
    );
    fails(&with(&[(4, "  url: ${EMPTY}")]), 4, 3, "source.url");
}

#[test]
fn schema_change_and_streaming_keys() {
    let s = source(BASE);
    assert_eq!(s.on_rename, OnRename::Follow, "follow by default");
    assert!(!s.ddl_events, "no DDL events by default");
    assert!(s.streaming, "streaming by default");
    let o = s.options("orders");
    assert_eq!(
        (o.on_rename, o.ddl_events, o.streaming),
        (OnRename::Follow, false, true)
    );

    let mut lines = BASE.to_vec();
    lines.splice(
        5..5,
        [
            "  on_rename: stop",
            "  ddl_events: true",
            "  streaming: false",
        ],
    );
    let s = source(&lines);
    assert_eq!(s.on_rename, OnRename::Stop);
    assert!(s.ddl_events && !s.streaming);
    let o = s.options("orders");
    assert_eq!(
        (o.on_rename, o.ddl_events, o.streaming),
        (OnRename::Stop, true, false)
    );

    let mut lines = BASE.to_vec();
    lines.insert(5, "  on_rename: skip");
    let e = fails(&lines, 6, 3, "source.on_rename");
    assert!(
        e.message.contains("follow") && e.message.contains("stop"),
        "{e}"
    );
    let mut lines = BASE.to_vec();
    lines.insert(5, "  streaming: sometimes");
    fails(&lines, 6, 3, "source.streaming");
}

#[test]
fn sluice_message_prefixes_are_reserved() {
    for prefix in ["sluice.ddl", "sluice.other", "sluice"] {
        let line = format!("  messages: [orders, {prefix}]");
        let line: &'static str = Box::leak(line.into_boxed_str());
        let e = fails(&with(&[(5, line)]), 5, 22, "source.messages[1]");
        assert!(e.message.contains("reserved"), "{e}");
    }
    let s = source(&with(&[(5, "  messages: [sluice_orders, sluicer]")]));
    assert_eq!(s.messages, ["sluice_orders", "sluicer"]);
}

#[test]
fn snapshot_initial_with_per_table_overrides_and_conditions() {
    let mut lines = with(&[(5, "  tables: [orders, customers, audit]")]);
    lines.insert(5, "  snapshot: initial");
    lines.insert(6, "  backfill:");
    lines.insert(7, "    chunk_rows: 500");
    lines.insert(8, "    tables:");
    lines.insert(9, "      audit: { snapshot: never }");
    lines.insert(10, "      public.customers: { where: \"region = 'eu'\" }");
    let s = source(&lines);
    let o = s.options("orders");
    assert_eq!(o.backfill_chunk_rows, 500);
    let names: Vec<String> = o.snapshot.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["public.orders", "public.customers"]);
    assert_eq!(
        o.filter_of(&TableRef::new("public", "customers")),
        Some("region = 'eu'")
    );
    assert_eq!(o.filter_of(&TableRef::new("public", "orders")), None);

    // `never` with one table opted in.
    let mut lines = with(&[(5, "  tables: [orders, customers]")]);
    lines.insert(
        5,
        "  backfill: { tables: { customers: { snapshot: initial } } }",
    );
    let o = source(&lines).options("orders");
    assert_eq!(o.snapshot, [TableRef::new("public", "customers")]);
    assert!(source(BASE).options("orders").snapshot.is_empty());
}

#[test]
fn backfill_settings_name_what_is_wrong() {
    let mut lines = BASE.to_vec();
    lines.insert(5, "  backfill: { tables: { other: { where: x } } }");
    let e = fails(&lines, 6, 15, "source.backfill.tables.public.other");
    assert!(e.message.contains("not one of source.tables"), "{e}");
    let mut lines = BASE.to_vec();
    lines.insert(5, "  backfill: { chunk_rows: 0 }");
    fails(&lines, 6, 15, "source.backfill.chunk_rows");
    let mut lines = BASE.to_vec();
    lines.insert(5, "  backfill: { tables: { orders: { wher: x } } }");
    fails(&lines, 6, 35, "source.backfill.tables.orders.wher");
}

#[test]
fn outbox_columns_are_renamed_one_by_one() {
    let s = source(&with(&[(
        5,
        "  outbox: { table: app.events, columns: { id: event_id, type: event_type } }",
    )]));
    let columns = &s.outbox.as_ref().unwrap().columns;
    assert_eq!(columns.id, "event_id");
    assert_eq!(columns.kind, "event_type");
    assert_eq!(
        columns.aggregate_id, "aggregate_id",
        "the others keep their defaults"
    );
    assert_eq!(s.options("orders").outbox_columns, *columns);
    let e = fails(
        &with(&[(5, "  outbox: { table: app.events, columns: { kind: t } }")]),
        5,
        43,
        "source.outbox.columns.kind",
    );
    assert!(e.message.contains("unknown key `kind`"), "{e}");
}

#[test]
fn the_spec_source_parses() {
    let s = source(&[
        "pipeline: orders",
        "source:",
        "  type: postgres",
        "  url: ${DATABASE_URL}",
        "  slot: sluice_orders",
        "  publication: sluice_orders",
        "  tables: [public.orders, public.customers]",
        "  outbox:",
        "    table: public.outbox",
        "    delete_after_capture: false",
        "  messages: [orders]",
        "  snapshot: never",
        "sinks: { notify: { type: webhook, url: http://h } }",
    ]);
    assert_eq!(s.tables.len(), 2);
    assert_eq!(s.tables[1].to_string(), "public.customers");
    assert_eq!(s.outbox.as_ref().unwrap().table.name, "outbox");
}

#[test]
fn the_example_webhook_pipeline_has_two_tables() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/orders-webhook.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let p = load_str(&text, &file, &REGISTRY, &|name| {
        (name == "DATABASE_URL").then(|| "postgres://localhost/app".to_string())
    })
    .unwrap();
    assert_eq!(
        PostgresConfig::from_section(&p.source)
            .unwrap()
            .tables
            .len(),
        2
    );
}
