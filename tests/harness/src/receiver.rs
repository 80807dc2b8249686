//! An HTTP receiver for webhook deliveries that records what it acknowledged and answers
//! as the test tells it to.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

/// How the receiver answers.
#[derive(Clone)]
pub enum Respond {
    /// 200 to everything.
    Ok,
    /// This status to everything.
    Status(u16),
    /// Decide per request from the body.
    With(Arc<dyn Fn(&Value) -> u16 + Send + Sync>),
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub headers: HeaderMap,
    pub raw: Bytes,
    pub body: Value,
    pub status: u16,
    /// When it arrived.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct Log {
    requests: Vec<Request>,
}

#[derive(Clone)]
struct Shared {
    log: Arc<Mutex<Log>>,
    respond: Arc<Mutex<Respond>>,
    /// Each request waits a random time up to this before it is answered (and recorded).
    jitter: Arc<Mutex<Option<std::time::Duration>>>,
}

pub struct Receiver {
    pub port: u16,
    shared: Shared,
    task: Option<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on(0).await
    }

    /// Listen on a given port (0: any), e.g. to come back on the same port after `stop`.
    pub async fn start_on(port: u16) -> Receiver {
        let shared = Shared {
            log: Default::default(),
            respond: Arc::new(Mutex::new(Respond::Ok)),
            jitter: Default::default(),
        };
        Self::serve(port, shared).await
    }

    async fn serve(port: u16, shared: Shared) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/events", post(handle))
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Receiver {
            port,
            shared,
            task: Some(task),
            stop: Some(stop),
        }
    }

    /// Take the receiver down: the port is closed and open connections end.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    }

    /// Bring it back on the same port, keeping what it recorded.
    pub async fn start_again(&mut self) {
        self.stop().await;
        let mut again = Self::serve(self.port, self.shared.clone()).await;
        self.task = again.task.take();
        self.stop = again.stop.take();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.port)
    }

    pub fn respond(&self, r: Respond) {
        *self.shared.respond.lock().unwrap() = r;
    }

    /// Answer each request after a random wait of up to `max` (`None`: at once). Requests
    /// are recorded when answered, so a sender that overlaps two requests of one key shows
    /// them out of order.
    pub fn jitter(&self, max: Option<std::time::Duration>) {
        *self.shared.jitter.lock().unwrap() = max;
    }

    /// Forget every request recorded so far.
    pub fn clear(&self) {
        self.shared.log.lock().unwrap().requests.clear();
    }

    /// Every request, acknowledged or not.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.log.lock().unwrap().requests.clone()
    }

    /// Envelopes of the requests answered 2xx, in arrival order (batches flattened).
    pub fn delivered(&self) -> Vec<Value> {
        let log = self.shared.log.lock().unwrap();
        let mut out = Vec::new();
        for r in log
            .requests
            .iter()
            .filter(|r| (200..300).contains(&r.status))
        {
            match &r.body {
                Value::Array(items) => out.extend(items.iter().cloned()),
                one => out.push(one.clone()),
            }
        }
        out
    }

    pub fn delivered_count(&self) -> usize {
        self.delivered().len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn handle(State(s): State<Shared>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    let jitter = *s.jitter.lock().unwrap();
    if let Some(max) = jitter {
        tokio::time::sleep(max.mul_f64(random_fraction())).await;
    }
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let respond = s.respond.lock().unwrap().clone();
    let status = match &respond {
        Respond::Ok => 200,
        Respond::Status(code) => *code,
        Respond::With(f) => f(&body),
    };
    let at = std::time::Instant::now();
    s.log.lock().unwrap().requests.push(Request {
        headers,
        raw,
        body,
        status,
        at,
    });
    StatusCode::from_u16(status).unwrap()
}

/// A number in [0, 1) that differs from call to call (xorshift over a shared counter
/// seeded by the clock); enough to spread answer times.
fn random_fraction() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64
}
