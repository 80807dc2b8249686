//! A webhook receiver light enough not to be what is measured: it counts envelopes
//! without parsing them, answers 200 with no body, and only while a latency run asks for
//! it reads each envelope's `source.ts` to record commit→receipt latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;

#[derive(Default)]
struct Shared {
    events: AtomicU64,
    recording: AtomicBool,
    /// Commit→receipt latencies in microseconds, while recording.
    latencies: Mutex<Vec<u64>>,
}

pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Listen on a free loopback port, serving `POST /events`.
    pub async fn start() -> Result<Receiver> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}/events", listener.local_addr()?);
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/events", post(handle))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { url, shared })
    }

    /// Envelopes received since the start.
    pub fn events(&self) -> u64 {
        self.shared.events.load(Relaxed)
    }

    /// Start recording latencies (forgetting earlier ones).
    pub fn record(&self) {
        self.shared.latencies.lock().unwrap().clear();
        self.shared.recording.store(true, Relaxed);
    }

    /// Stop recording; the latencies recorded, in microseconds, sorted.
    pub fn take_latencies(&self) -> Vec<u64> {
        self.shared.recording.store(false, Relaxed);
        let mut all = std::mem::take(&mut *self.shared.latencies.lock().unwrap());
        all.sort_unstable();
        all
    }
}

/// The start of every envelope (`id` is its first key, and a string); row values never
/// contain it in this benchmark's data.
const ENVELOPE_START: &[u8] = b"{\"id\":\"";

async fn handle(State(s): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let n = memchr::memmem::find_iter(&body, ENVELOPE_START).count() as u64;
    if s.recording.load(Relaxed) {
        let now = now_micros();
        let mut got = latencies(&body, now);
        s.latencies.lock().unwrap().append(&mut got);
    }
    s.events.fetch_add(n, Relaxed);
    StatusCode::OK
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    source: Src<'a>,
}

#[derive(Deserialize)]
struct Src<'a> {
    ts: &'a str,
}

/// `now - source.ts` of each envelope of a body (one envelope, or an array of them).
fn latencies(body: &[u8], now: i64) -> Vec<u64> {
    let envelopes: Vec<Envelope> = if body.first() == Some(&b'[') {
        serde_json::from_slice(body).unwrap_or_default()
    } else {
        serde_json::from_slice(body)
            .map(|e| vec![e])
            .unwrap_or_default()
    };
    envelopes
        .iter()
        .filter_map(|e| parse_ts_micros(e.source.ts))
        .map(|ts| (now - ts).max(0) as u64)
        .collect()
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_micros() as i64
}

/// `2026-11-22T06:00:00.123456Z` (the envelope's `source.ts`) as microseconds since the
/// Unix epoch.
fn parse_ts_micros(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || !ts.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = ts.get(19..ts.len() - 1)?;
    let micros = match frac.strip_prefix('.') {
        Some(digits) if !digits.is_empty() && digits.len() <= 6 => {
            digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32)
        }
        None if frac.is_empty() => 0,
        _ => return None,
    };
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(secs * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_epoch_micros() {
        assert_eq!(parse_ts_micros("1970-01-01T00:00:00.000000Z"), Some(0));
        assert_eq!(
            parse_ts_micros("1970-01-02T00:00:01.5Z"),
            Some(86_401_500_000)
        );
        // date -d 2026-11-22T06:00:00Z +%s = 1795327200
        assert_eq!(
            parse_ts_micros("2026-11-22T06:00:00.123456Z"),
            Some(1_795_327_200_123_456)
        );
        assert_eq!(
            parse_ts_micros("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000_000)
        );
        assert_eq!(parse_ts_micros("yesterday"), None);
    }

    #[test]
    fn bodies_count_and_time_their_envelopes() {
        let one =
            br#"{"id":"0/1:0","source":{"ts":"1970-01-01T00:00:01.000000Z"},"after":{"id":1}}"#;
        let many = format!(
            "[{},{}]",
            std::str::from_utf8(one).unwrap(),
            std::str::from_utf8(one).unwrap()
        );
        assert_eq!(memchr::memmem::find_iter(one, ENVELOPE_START).count(), 1);
        assert_eq!(
            memchr::memmem::find_iter(many.as_bytes(), ENVELOPE_START).count(),
            2
        );
        assert_eq!(latencies(one, 3_000_000), vec![2_000_000]);
        assert_eq!(latencies(many.as_bytes(), 1_000_010), vec![10, 10]);
    }
}
