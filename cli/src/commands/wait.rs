//! `sluice wait`: read-your-writes for scripts. Waits, through the running pipeline's admin
//! server (`GET /wait`), until the named sinks have applied every change committed at or
//! before an LSN (the application's `SELECT pg_current_wal_insert_lsn()` after its COMMIT).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Failure;

pub async fn run(
    path: &Path,
    sinks: &[String],
    lsn: &str,
    timeout: &str,
    as_json: bool,
) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let input = |m: String| Failure::Input(format!("{}: {m}", pipeline.file.display()));
    let Some(addr) = pipeline.admin else {
        return Err(input(
            "`sluice wait` asks the running pipeline's admin server: set `admin:` (e.g. \
             admin: 127.0.0.1:9187)"
                .into(),
        ));
    };
    let limit = sluice_runtime::config::duration::parse(timeout)
        .map_err(|e| Failure::Input(format!("--timeout {timeout}: {e}")))?;
    let mut query = format!("lsn={}&timeout={}", encode(lsn), encode(timeout));
    for sink in sinks {
        query.push_str(&format!("&sink={}", encode(sink)));
    }
    let (status, body) = get(
        addr,
        &format!("/wait?{query}"),
        limit + Duration::from_secs(5),
    )
    .await
    .map_err(|e| {
        Failure::Runtime(format!(
            "the pipeline's admin server at {addr} does not answer ({e}): is `sluice run` running?"
        ))
    })?;
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
    if as_json {
        println!("{answer}");
    }
    let error = answer["error"].as_str().unwrap_or(&body).to_string();
    match status {
        200 => {
            if !as_json {
                for s in answer["sinks"].as_array().into_iter().flatten() {
                    println!(
                        "sink {}: applied through {} (waited {:.1} ms)",
                        s["sink"].as_str().unwrap_or("?"),
                        s["applied_through"].as_str().unwrap_or("?"),
                        answer["waited_ms"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            Ok(())
        }
        400 | 404 => Err(Failure::Input(error)),
        _ => Err(Failure::Runtime(error)),
    }
}

/// Percent-encode a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET: the status and the body.
async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<(u16, String), String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: sluice\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("not an HTTP answer")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(limit, fetch)
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
}
