//! Shared helpers for the scenario files: pipeline text, waiting for the slot, ids.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;

use sluice_testkit::{eventually, Postgres, Receiver, Sluice};

/// A webhook pipeline over `tables` delivering to `url`, with extra webhook keys and
/// extra top-level text.
pub fn webhook_pipeline(
    name: &str,
    pg: &Postgres,
    tables: &[&str],
    url: &str,
    webhook_extra: &str,
    extra: &str,
) -> String {
    format!(
        "pipeline: {name}\n\
         source:\n  type: postgres\n  url: {}\n  tables: [{}]\n\
         sinks:\n  hook:\n    type: webhook\n    url: {url}\n{webhook_extra}\
         delivery:\n  retry: {{ initial: 50ms, max: 1s }}\n\
         state: state.db\n{extra}",
        pg.url(),
        tables.join(", ")
    )
}

/// Wait until a walsender streams the pipeline's slot to sluice. (`active` alone is not
/// enough: creating the slot marks it active for a moment too.)
pub async fn wait_streaming(pg: &Postgres, slot: &str) {
    let client = pg.client().await;
    eventually(Duration::from_secs(60), "a walsender to stream from the slot", async || {
        client
            .query_opt(
                "select 1 from pg_replication_slots s join pg_stat_replication r on r.pid = s.active_pid
                  where s.slot_name = $1",
                &[&slot],
            )
            .await
            .ok()?
            .map(drop)
    })
    .await;
}

/// An event id `X/Y:i` as a comparable (lsn, index).
pub fn position(event: &Value) -> (u64, u32) {
    let id = event["id"].as_str().expect("event id");
    let (lsn, index) = id.rsplit_once(':').unwrap();
    let (hi, lo) = lsn.split_once('/').unwrap();
    let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    (lsn, index.parse().unwrap())
}

/// Check that, per key, events arrive in stream order within one run.
pub fn assert_per_key_order(events: &[Value]) {
    let mut last: std::collections::HashMap<String, (u64, u32)> = Default::default();
    for e in events {
        let key = format!("{}:{}", e["source"]["table"], e["key"]);
        let p = position(e);
        if let Some(prev) = last.insert(key.clone(), p) {
            assert!(
                prev < p,
                "key {key}: event {} arrived after {prev:?}",
                e["id"]
            );
        }
    }
}

/// Wait until exactly `n` events were acknowledged (panics on more).
pub async fn wait_delivered(rx: &Receiver, n: usize, sluice: &Sluice) -> Vec<Value> {
    let what = format!("{n} deliveries");
    eventually(Duration::from_secs(60), &what, async || {
        let got = rx.delivered();
        (got.len() >= n).then_some(())
    })
    .await;
    let got = rx.delivered();
    assert_eq!(
        got.len(),
        n,
        "more deliveries than expected: {got:#?}\nlog:\n{}",
        sluice.log()
    );
    got
}
