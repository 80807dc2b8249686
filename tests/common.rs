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

/// A plain HTTP/1.0 GET to 127.0.0.1:`port`: (status, body), or why it failed.
pub async fn try_get(port: u16, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| format!("GET {path} took longer than 10 s"))??;
    let text = String::from_utf8(response).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers: {text}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head}"))?;
    Ok((status, body.to_string()))
}

/// GET from `sluice`'s admin server; panics with the log when it does not answer.
pub async fn http_get(sluice: &Sluice, port: u16, path: &str) -> (u16, String) {
    try_get(port, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", sluice.log()))
}

/// The value of one sample line (`name{labels} value`) in Prometheus text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}
