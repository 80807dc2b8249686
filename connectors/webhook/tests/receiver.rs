//! The webhook sink against a real HTTP receiver (axum on 127.0.0.1:0) that records
//! every request and answers as each test tells it to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_runtime::config::Secret;
use sluice_runtime::{Delivery, Event, Lsn, Op, Position, Row, Sink, Source, Value};
use sluice_webhook::{WebhookConfig, WebhookSink};

// ---------------------------------------------------------------------------------------
// The receiver

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Recorded {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Recorded {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` header"))
            .to_str()
            .unwrap()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The `key.id` of a single-event body.
    fn key(&self) -> String {
        self.json()["key"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

type Respond = dyn Fn(&Recorded) -> Response + Send + Sync;

struct Inner {
    delay: Duration,
    respond: Box<Respond>,
    requests: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    key_in_flight: Mutex<HashMap<String, usize>>,
    max_key_in_flight: AtomicUsize,
}

struct Receiver {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Receiver {
    /// A receiver that waits `delay` before answering each request with `respond`.
    async fn start(
        delay: Duration,
        respond: impl Fn(&Recorded) -> Response + Send + Sync + 'static,
    ) -> Receiver {
        let inner = Arc::new(Inner {
            delay,
            respond: Box::new(respond),
            requests: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            key_in_flight: Mutex::new(HashMap::new()),
            max_key_in_flight: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, inner }
    }

    /// A receiver that answers 200 at once.
    async fn ok() -> Receiver {
        Receiver::start(Duration::ZERO, |_| StatusCode::OK.into_response()).await
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    fn config(&self) -> WebhookConfig {
        WebhookConfig::new(self.url())
    }

    fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    fn max_in_flight_per_key(&self) -> usize {
        self.inner.max_key_in_flight.load(Ordering::SeqCst)
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = Recorded {
        path: uri.path().to_owned(),
        headers,
        body,
    };
    let key = serde_json::from_slice::<serde_json::Value>(&request.body)
        .ok()
        .and_then(|v| v["key"]["id"].as_str().map(str::to_owned));
    inner.requests.lock().unwrap().push(request.clone());

    let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
    if let Some(key) = &key {
        let mut keys = inner.key_in_flight.lock().unwrap();
        let n = keys.entry(key.clone()).or_default();
        *n += 1;
        inner.max_key_in_flight.fetch_max(*n, Ordering::SeqCst);
    }

    tokio::time::sleep(inner.delay).await;
    let response = (inner.respond)(&request);

    if let Some(key) = &key {
        *inner.key_in_flight.lock().unwrap().get_mut(key).unwrap() -= 1;
    }
    inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

// ---------------------------------------------------------------------------------------
// Events

/// An insert into public.orders with primary key `id = key`, at position `0/100:index`.
fn event(index: u32, key: &str) -> Arc<Event> {
    let source = Source {
        pipeline: "orders".into(),
        schema: Some("public".into()),
        table: Some("orders".into()),
        lsn: Lsn(0x100),
        commit_lsn: Lsn(0x100),
        xid: Some(7),
        ts_micros: 1_795_327_200_000_000,
    };
    let mut e = Event::new(Position::new(Lsn(0x100), index), Op::Insert, source);
    let mut row = Row::default();
    row.push("id".into(), Value::Text(key.into()));
    e.after = Some(row.clone());
    e.key = Some(row);
    Arc::new(e)
}

/// A truncate of public.orders at position `0/100:index`: a barrier.
fn truncate(index: u32) -> Arc<Event> {
    let mut e = (*event(index, "")).clone();
    e.op = Op::Truncate;
    e.key = None;
    e.after = None;
    Arc::new(e)
}

/// Events at consecutive positions with these keys.
fn events(keys: &[&str]) -> Vec<Arc<Event>> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| event(i as u32, k))
        .collect()
}

async fn write_one(config: WebhookConfig, event: Arc<Event>) -> Delivery {
    let mut sink = WebhookSink::new(config).unwrap();
    let mut out = sink.write(&[event]).await;
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------
// Delivery and headers

#[tokio::test]
async fn a_2xx_is_delivered_with_the_envelope_and_standard_headers() {
    let receiver = Receiver::ok().await;
    let mut config = receiver.config();
    config.headers.insert("x-tenant".into(), "acme".into());
    let e = event(3, "42");

    assert_eq!(write_one(config, e.clone()).await, Delivery::Delivered);

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.path, "/hooks");
    assert_eq!(r.body, e.json());
    assert_eq!(r.header("webhook-id"), e.id());
    assert_eq!(r.header("webhook-id"), "0/100:3");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(
        r.header("user-agent"),
        concat!("sluice/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(r.header("x-tenant"), "acme");
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    assert!((ts - unix_now()).abs() <= 5, "timestamp {ts}");
    assert!(r.headers.get("webhook-signature").is_none());
}

/// Recompute the Standard Webhooks signature the way a receiver does.
fn verify(r: &Recorded, key: &[u8]) {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(r.header("webhook-id").as_bytes());
    mac.update(b".");
    mac.update(r.header("webhook-timestamp").as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    assert_eq!(r.header("webhook-signature"), expected);
}

#[tokio::test]
async fn a_whsec_secret_signs_with_its_decoded_key() {
    let key = b"an 24-byte signing key!!";
    let receiver = Receiver::ok().await;
    let mut config = receiver.config();
    config.secret = Some(Secret::new(format!("whsec_{}", BASE64.encode(key))));

    assert_eq!(write_one(config, event(0, "1")).await, Delivery::Delivered);
    verify(&receiver.requests()[0], key);
}

#[tokio::test]
async fn a_raw_secret_signs_with_its_bytes() {
    let receiver = Receiver::ok().await;
    let mut config = receiver.config();
    config.secret = Some(Secret::new("hunter2"));

    assert_eq!(write_one(config, event(0, "1")).await, Delivery::Delivered);
    verify(&receiver.requests()[0], b"hunter2");
}

// ---------------------------------------------------------------------------------------
// Classification

#[tokio::test]
async fn a_503_is_retried() {
    let receiver = Receiver::start(Duration::ZERO, |_| {
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response()
    })
    .await;
    match write_one(receiver.config(), event(0, "1")).await {
        Delivery::Retry { reason, after } => {
            assert!(
                reason.contains("503") && reason.contains("overloaded"),
                "{reason}"
            );
            assert_eq!(after, None);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let receiver = Receiver::start(Duration::ZERO, |_| {
        (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "3")]).into_response()
    })
    .await;
    match write_one(receiver.config(), event(0, "1")).await {
        Delivery::Retry { reason, after } => {
            assert!(reason.contains("429"), "{reason}");
            assert_eq!(after, Some(Duration::from_secs(3)));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_408_is_retried() {
    let receiver = Receiver::start(Duration::ZERO, |_| {
        StatusCode::REQUEST_TIMEOUT.into_response()
    })
    .await;
    let delivery = write_one(receiver.config(), event(0, "1")).await;
    assert!(matches!(delivery, Delivery::Retry { .. }), "{delivery:?}");
}

#[tokio::test]
async fn a_422_is_rejected_with_the_receivers_words() {
    let receiver = Receiver::start(Duration::ZERO, |_| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("field `total` must be a number{}", " ".repeat(1000)),
        )
            .into_response()
    })
    .await;
    match write_one(receiver.config(), event(0, "1")).await {
        Delivery::Rejected { reason } => {
            assert!(reason.contains("422"), "{reason}");
            assert!(
                reason.contains("field `total` must be a number"),
                "{reason}"
            );
            assert!(reason.len() < 300, "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_redirect_is_rejected_and_not_followed() {
    let receiver = Receiver::start(Duration::ZERO, |r| {
        if r.path == "/hooks" {
            (StatusCode::MOVED_PERMANENTLY, [("location", "/moved")]).into_response()
        } else {
            StatusCode::OK.into_response()
        }
    })
    .await;
    match write_one(receiver.config(), event(0, "1")).await {
        Delivery::Rejected { reason } => {
            assert!(
                reason.contains("301") && reason.contains("/moved"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    let paths: Vec<_> = receiver.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/hooks"]);
}

#[tokio::test]
async fn a_refused_connection_is_retried() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = WebhookConfig::new(format!("http://127.0.0.1:{port}/hooks"));
    match write_one(config, event(0, "1")).await {
        Delivery::Retry { reason, after } => {
            assert!(reason.contains("connect"), "{reason}");
            assert!(!reason.contains("127.0.0.1"), "the URL stays out: {reason}");
            assert_eq!(after, None);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_retried() {
    let receiver =
        Receiver::start(Duration::from_secs(3), |_| StatusCode::OK.into_response()).await;
    let mut config = receiver.config();
    config.timeout = Duration::from_millis(200);
    let started = Instant::now();
    match write_one(config, event(0, "1")).await {
        Delivery::Retry { reason, .. } => assert!(reason.contains("timeout"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// Ordering and concurrency

#[tokio::test]
async fn a_failed_key_defers_its_later_events_and_other_keys_go_on() {
    let failed_once = Arc::new(AtomicBool::new(false));
    let receiver = Receiver::start(Duration::from_millis(20), move |r| {
        if r.key() == "A" && !failed_once.swap(true, Ordering::SeqCst) {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        } else {
            StatusCode::OK.into_response()
        }
    })
    .await;
    let batch = events(&["A", "B", "A", "B", "A"]);
    let mut sink = WebhookSink::new(receiver.config()).unwrap();

    let out = sink.write(&batch).await;

    assert!(matches!(out[0], Delivery::Retry { .. }), "{out:?}");
    assert_eq!(
        out[1..],
        [
            Delivery::Delivered,
            Delivery::Deferred,
            Delivery::Delivered,
            Delivery::Deferred
        ]
    );
    let seen: Vec<_> = receiver
        .requests()
        .iter()
        .map(|r| (r.key(), r.header("webhook-id").to_owned()))
        .collect();
    let of = |key: &str| -> Vec<String> {
        seen.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, id)| id.clone())
            .collect()
    };
    assert_eq!(of("A"), [batch[0].id()], "deferred events must not be sent");
    assert_eq!(of("B"), [batch[1].id(), batch[3].id()]);
}

#[tokio::test]
async fn a_rejected_event_also_defers_the_rest_of_its_key() {
    let receiver = Receiver::start(Duration::ZERO, |r| {
        if r.header("webhook-id") == "0/100:0" {
            StatusCode::BAD_REQUEST.into_response()
        } else {
            StatusCode::OK.into_response()
        }
    })
    .await;
    let mut sink = WebhookSink::new(receiver.config()).unwrap();
    let out = sink.write(&events(&["A", "A", "B"])).await;
    assert!(matches!(out[0], Delivery::Rejected { .. }), "{out:?}");
    assert_eq!(out[1..], [Delivery::Deferred, Delivery::Delivered]);
    assert_eq!(receiver.requests().len(), 2);
}

#[tokio::test]
async fn events_of_one_key_go_one_at_a_time_in_order() {
    let receiver = Receiver::start(Duration::from_millis(20), |_| {
        StatusCode::OK.into_response()
    })
    .await;
    let keys = ["A", "B", "C", "A", "B", "C", "A", "B", "C", "A", "B", "C"];
    let batch = events(&keys);
    let mut sink = WebhookSink::new(receiver.config()).unwrap();

    let out = sink.write(&batch).await;

    assert!(out.iter().all(Delivery::is_delivered), "{out:?}");
    assert_eq!(receiver.max_in_flight_per_key(), 1);
    assert_eq!(
        receiver.max_in_flight(),
        3,
        "different keys run in parallel"
    );
    let requests = receiver.requests();
    for key in ["A", "B", "C"] {
        let sent: Vec<_> = requests
            .iter()
            .filter(|r| r.key() == key)
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        let expected: Vec<_> = batch
            .iter()
            .zip(keys)
            .filter(|(_, k)| *k == key)
            .map(|(e, _)| e.id())
            .collect();
        assert_eq!(sent, expected, "key {key}");
    }
}

#[tokio::test]
async fn a_truncate_waits_for_what_came_before_and_holds_back_what_follows() {
    let receiver = Receiver::start(Duration::from_millis(30), |_| {
        StatusCode::OK.into_response()
    })
    .await;
    let mut batch = events(&["A", "B"]);
    batch.push(truncate(2));
    batch.extend([event(3, "C"), event(4, "D")]);
    let mut sink = WebhookSink::new(receiver.config()).unwrap();

    let out = sink.write(&batch).await;

    assert!(out.iter().all(Delivery::is_delivered), "{out:?}");
    let ops: Vec<_> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["op"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ops.len(), 5);
    assert_eq!(ops[2], "truncate", "{ops:?}");
    assert_eq!(
        receiver.max_in_flight(),
        2,
        "A and B, then C and D, in parallel"
    );
}

#[tokio::test]
async fn a_failure_before_a_truncate_defers_everything_after_it() {
    let receiver = Receiver::start(Duration::ZERO, |r| {
        if r.key() == "A" {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        } else {
            StatusCode::OK.into_response()
        }
    })
    .await;
    let mut batch = events(&["A", "B"]);
    batch.push(truncate(2));
    batch.push(event(3, "C"));
    let mut sink = WebhookSink::new(receiver.config()).unwrap();

    let out = sink.write(&batch).await;

    assert!(matches!(out[0], Delivery::Retry { .. }), "{out:?}");
    assert_eq!(
        out[1..],
        [Delivery::Delivered, Delivery::Deferred, Delivery::Deferred]
    );
    let mut keys: Vec<_> = receiver.requests().iter().map(Recorded::key).collect();
    keys.sort();
    assert_eq!(keys, ["A", "B"]);
}

#[tokio::test]
async fn different_keys_are_sent_concurrently() {
    let receiver = Receiver::start(Duration::from_millis(200), |_| {
        StatusCode::OK.into_response()
    })
    .await;
    let keys: Vec<String> = (0..16).map(|i| format!("k{i}")).collect();
    let batch = events(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    let mut sink = WebhookSink::new(receiver.config()).unwrap();

    let started = Instant::now();
    let out = sink.write(&batch).await;
    let elapsed = started.elapsed();

    assert!(out.iter().all(Delivery::is_delivered), "{out:?}");
    assert_eq!(receiver.max_in_flight(), 16);
    assert!(
        elapsed < Duration::from_millis(16 * 200 / 4),
        "16 × 200ms took {elapsed:?}"
    );
}

#[tokio::test]
async fn no_more_than_concurrency_requests_are_in_flight() {
    let receiver = Receiver::start(Duration::from_millis(10), |_| {
        StatusCode::OK.into_response()
    })
    .await;
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let batch = events(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    let mut config = receiver.config();
    config.concurrency = 4;
    let mut sink = WebhookSink::new(config).unwrap();

    let out = sink.write(&batch).await;

    assert!(out.iter().all(Delivery::is_delivered), "{out:?}");
    assert_eq!(receiver.requests().len(), 40);
    assert_eq!(receiver.max_in_flight(), 4);
}

// ---------------------------------------------------------------------------------------
// Batch mode

#[tokio::test]
async fn batch_mode_sends_one_json_array() {
    let receiver = Receiver::ok().await;
    let mut config = receiver.config();
    config.batch = true;
    config.secret = Some(Secret::new("hunter2"));
    let batch = events(&["A", "B", "A"]);
    let mut sink = WebhookSink::new(config).unwrap();

    assert_eq!(sink.write(&batch).await, vec![Delivery::Delivered; 3]);

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    let ids: Vec<_> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, batch.iter().map(|e| e.id()).collect::<Vec<_>>());
    assert_eq!(r.header("webhook-id"), "0/100:0..0/100:2");
    assert_eq!(r.header("content-type"), "application/json");
    verify(r, b"hunter2");
}

#[tokio::test]
async fn batch_mode_gives_every_event_the_same_outcome() {
    let receiver = Receiver::start(Duration::ZERO, |_| {
        (StatusCode::BAD_GATEWAY, [("retry-after", "7")]).into_response()
    })
    .await;
    let mut config = receiver.config();
    config.batch = true;
    let mut sink = WebhookSink::new(config).unwrap();

    let out = sink.write(&events(&["A", "B"])).await;

    let retry = Delivery::Retry {
        reason: "HTTP 502 Bad Gateway".into(),
        after: Some(Duration::from_secs(7)),
    };
    assert_eq!(out, vec![retry.clone(), retry]);
    assert_eq!(receiver.requests().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Configuration and check

#[test]
fn unusable_urls_are_refused_before_anything_connects() {
    for url in ["ftp://example.com/x", "example.com/hooks", "http://"] {
        let e = WebhookSink::new(WebhookConfig::new(url)).err().unwrap();
        assert!(e.to_string().contains("url"), "{url}: {e}");
    }
}

#[tokio::test]
async fn check_connects_without_sending_a_request() {
    let receiver = Receiver::ok().await;
    let mut sink = WebhookSink::new(receiver.config()).unwrap();
    sink.check().await.unwrap();
    assert!(receiver.requests().is_empty());

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut sink =
        WebhookSink::new(WebhookConfig::new(format!("http://127.0.0.1:{port}/"))).unwrap();
    let e = sink.check().await.unwrap_err();
    assert!(e.contains(&port.to_string()), "{e}");
}

/// Throughput on loopback; run with
/// `cargo test -p sluice-webhook --release --test receiver -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn throughput() {
    // A receiver that records nothing, so the sink is what is measured.
    let app = axum::Router::new().fallback(|| async { StatusCode::OK });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut config = WebhookConfig::new(url);
    config.secret = Some(Secret::new("hunter2"));
    config.concurrency = 64;
    let mut sink = WebhookSink::new(config).unwrap();
    let keys: Vec<String> = (0..500).map(|i| format!("k{}", i % 200)).collect();
    let batch = events(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    sink.write(&batch).await; // warm the pool

    let rounds = 100;
    let started = Instant::now();
    for _ in 0..rounds {
        let out = sink.write(&batch).await;
        assert!(out.iter().all(Delivery::is_delivered));
    }
    let rate = (rounds * batch.len()) as f64 / started.elapsed().as_secs_f64();
    println!("{rate:.0} requests/s");
}
