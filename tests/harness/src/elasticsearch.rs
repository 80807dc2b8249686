//! An in-process stand-in for Elasticsearch's document APIs, on a free loopback port, for
//! the Elasticsearch sink's tests and the demo (no Elasticsearch can be installed here).
//!
//! It follows the documented semantics of what the sink uses, one shard per index:
//!
//! - `GET /`: cluster info; every response carries `X-Elastic-Product: Elasticsearch`.
//! - `POST /_bulk`, `/{index}/_bulk`: NDJSON `index`/`create`/`delete` actions, applied in
//!   order, answered per item exactly in Elasticsearch's shape (`took`, `errors`,
//!   `items[i].index|create|delete` with `_index`, `_id`, `_version`, `result`, `status`,
//!   `error{type, reason}`). A request that fails validation (no index, an id over 512
//!   bytes, an external version type without a version) fails whole with 400.
//! - Versioning: `version_type=external` refuses a version at or below the current one
//!   with 409 `version_conflict_engine_exception`; `external_gte` refuses one below it;
//!   without a version, writes increment it. A delete leaves a tombstone with its version
//!   that keeps refusing older writes for `gc_deletes` (60 s, as `index.gc_deletes`);
//!   after that an older write is accepted again.
//! - Dynamic mapping ([`mapping`]): the first value of a field fixes its type; a later
//!   value of another type fails that item with 400 `document_parsing_exception`.
//! - `POST /_mget`, `/{index}/_mget` (realtime, with `_source` filtering),
//!   `GET /{index}/_doc/{id}`, `POST /{index}/_delete_by_query` (`match_all` only; it sees
//!   only documents a refresh made searchable, as in Elasticsearch), `/_refresh`,
//!   `/{index}/_refresh`. Documents also become searchable `refresh_interval` (1 s) after
//!   their write.
//!
//! Tests control faults (whole requests answered 503 or 429 with `Retry-After`, chosen
//! bulk items answered 429 `es_rejected_execution_exception`, required credentials), move
//! the stand-in's clock ([`Elasticsearch::advance`]) instead of sleeping, and read the
//! documents, the writes that took effect in order, and request counts.

mod bulk;
pub mod mapping;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};
use axum::Router;
use serde_json::{json, Map, Value};

use mapping::{FieldType, Mapping};

/// Elasticsearch's limit on `_id`, in bytes.
const MAX_ID_BYTES: usize = 512;

/// How the stand-in behaves where Elasticsearch has settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long a delete's tombstone refuses older versions (`index.gc_deletes`).
    pub gc_deletes: Duration,
    /// How long after a write a document becomes searchable without a refresh
    /// (`index.refresh_interval`).
    pub refresh_interval: Duration,
    /// The largest request body accepted (`http.max_content_length`); a larger one is
    /// answered 413.
    pub max_content_length: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            gc_deletes: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(1),
            max_content_length: 100 << 20,
        }
    }
}

/// A stored document, as a test sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    /// Its `_version`.
    pub version: i64,
    /// Its `_source`.
    pub source: Value,
}

/// One write that took effect, in the order they did.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// `index`, `create`, `delete` or `delete_by_query`.
    pub action: String,
    /// The index written.
    pub index: String,
    /// The document (`None` for `delete_by_query`).
    pub id: Option<String>,
    /// The version written (`None` for `delete_by_query`).
    pub version: Option<i64>,
    /// The request's `X-Opaque-Id` header.
    pub opaque_id: Option<String>,
}

/// One action of a bulk request, as received.
#[derive(Clone, Debug, PartialEq)]
pub struct BulkAction {
    /// `index`, `create`, `delete` (or `update`).
    pub op: String,
    /// `_index` (or the path's index).
    pub index: String,
    /// `_id` (empty when absent).
    pub id: String,
    /// `version`.
    pub version: Option<i64>,
    /// `version_type`.
    pub version_type: Option<String>,
    /// The document line of an `index`/`create`.
    pub source: Option<Value>,
}

/// Which bulk items a fault hits.
pub type ItemMatch = Arc<dyn Fn(&BulkAction) -> bool + Send + Sync>;

struct ItemFault {
    matches: ItemMatch,
    remaining: Option<usize>,
}

struct RequestFault {
    status: u16,
    retry_after: Option<u64>,
    remaining: Option<usize>,
}

struct Stored {
    version: i64,
    seq_no: i64,
    source: Map<String, Value>,
    written: Instant,
}

struct Tombstone {
    version: i64,
    at: Instant,
}

struct Index {
    docs: BTreeMap<String, Stored>,
    tombstones: BTreeMap<String, Tombstone>,
    mapping: Mapping,
    /// The last sequence number a refresh made searchable.
    refreshed: i64,
}

struct State {
    settings: Settings,
    /// Added to the real clock: tests move time forward without sleeping.
    skew: Duration,
    indices: BTreeMap<String, Index>,
    seq_no: i64,
    applied: Vec<Applied>,
    bulks: Vec<Vec<BulkAction>>,
    requests: BTreeMap<&'static str, usize>,
    request_fault: Option<RequestFault>,
    item_faults: Vec<ItemFault>,
    authorization: Option<String>,
}

impl State {
    fn now(&self) -> Instant {
        Instant::now() + self.skew
    }
}

type Shared = Arc<Mutex<State>>;

/// The running stand-in. Stops when dropped.
pub struct Elasticsearch {
    /// The loopback port it listens on.
    pub port: u16,
    shared: Shared,
    task: Option<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Elasticsearch {
    /// Start on a free loopback port with default settings.
    pub async fn start() -> Elasticsearch {
        Self::start_with(Settings::default()).await
    }

    /// Start on a free loopback port with these settings.
    pub async fn start_with(settings: Settings) -> Elasticsearch {
        let shared = Arc::new(Mutex::new(State {
            settings,
            skew: Duration::ZERO,
            indices: BTreeMap::new(),
            seq_no: 0,
            applied: Vec::new(),
            bulks: Vec::new(),
            requests: BTreeMap::new(),
            request_fault: None,
            item_faults: Vec::new(),
            authorization: None,
        }));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Elasticsearch {
            port,
            shared,
            task: Some(task),
            stop: Some(stop),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answer whole requests with `status` (and `Retry-After: retry_after` seconds), the
    /// next `times` requests or (`None`) until [`Elasticsearch::heal`].
    pub fn fail_requests(&self, status: u16, retry_after: Option<u64>, times: Option<usize>) {
        self.state().request_fault = (times != Some(0)).then_some(RequestFault {
            status,
            retry_after,
            remaining: times,
        });
    }

    /// Answer bulk items on document `id` (any index) with 429
    /// `es_rejected_execution_exception`, `times` times or (`None`) until healed.
    pub fn fail_doc(&self, id: &str, times: Option<usize>) {
        let id = id.to_string();
        self.fail_items(Arc::new(move |a: &BulkAction| a.id == id), times);
    }

    /// Answer bulk items that `matches` with 429 `es_rejected_execution_exception`,
    /// `times` times or (`None`) until healed.
    pub fn fail_items(&self, matches: ItemMatch, times: Option<usize>) {
        self.state().item_faults.push(ItemFault {
            matches,
            remaining: times,
        });
    }

    /// Remove every fault.
    pub fn heal(&self) {
        let mut s = self.state();
        s.request_fault = None;
        s.item_faults.clear();
    }

    /// Answer 401 to requests whose `Authorization` header is not exactly `value`
    /// (`None`: no check).
    pub fn require_authorization(&self, value: Option<&str>) {
        self.state().authorization = value.map(str::to_string);
    }

    /// Move the stand-in's clock forward (tombstone expiry, searchability).
    pub fn advance(&self, by: Duration) {
        self.state().skew += by;
    }

    /// Forget every index, write, request count and fault.
    pub fn reset(&self) {
        let mut s = self.state();
        s.indices.clear();
        s.applied.clear();
        s.bulks.clear();
        s.requests.clear();
        s.request_fault = None;
        s.item_faults.clear();
        s.authorization = None;
    }

    /// The live document `index/id`.
    pub fn doc(&self, index: &str, id: &str) -> Option<Doc> {
        let s = self.state();
        let stored = s.indices.get(index)?.docs.get(id)?;
        Some(Doc {
            version: stored.version,
            source: Value::Object(stored.source.clone()),
        })
    }

    /// Every live document of `index`, by id.
    pub fn docs(&self, index: &str) -> BTreeMap<String, Doc> {
        let s = self.state();
        s.indices
            .get(index)
            .map(|i| {
                i.docs
                    .iter()
                    .map(|(id, d)| {
                        let doc = Doc {
                            version: d.version,
                            source: Value::Object(d.source.clone()),
                        };
                        (id.clone(), doc)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The names of the indices that exist.
    pub fn indices(&self) -> Vec<String> {
        self.state().indices.keys().cloned().collect()
    }

    /// The type a field of `index` is mapped to (`a.b` for an object's field).
    pub fn field_type(&self, index: &str, path: &str) -> Option<&'static str> {
        let s = self.state();
        let mut fields = &s.indices.get(index)?.mapping;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let mapped = fields.get(part)?;
            if parts.peek().is_none() {
                return Some(mapped.name());
            }
            let FieldType::Object(inner) = mapped else {
                return None;
            };
            fields = inner;
        }
        None
    }

    /// The writes that took effect, in order.
    pub fn applied(&self) -> Vec<Applied> {
        self.state().applied.clone()
    }

    /// The actions of every bulk request that was processed (not failed whole), in order.
    pub fn bulks(&self) -> Vec<Vec<BulkAction>> {
        self.state().bulks.clone()
    }

    /// How many requests reached an endpoint: `info`, `bulk`, `mget`, `get`,
    /// `delete_by_query`, `refresh`, `unknown`. Failed ones count too.
    pub fn requests(&self, endpoint: &str) -> usize {
        self.state().requests.get(endpoint).copied().unwrap_or(0)
    }

    /// Stop listening; open connections end.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Elasticsearch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// ─── Requests ───────────────────────────────────────────────────────────────────────────

/// What the router saw.
struct Request {
    method: Method,
    segments: Vec<String>,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Request {
    fn opaque_id(&self) -> Option<String> {
        self.headers
            .get("x-opaque-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let request = Request {
        method,
        segments: uri
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        query: uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        headers,
        body,
    };
    let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
    let (status, body, retry_after) = route(&mut state, &request);
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-elastic-product", "Elasticsearch");
    if let Some(seconds) = retry_after {
        response = response.header("retry-after", seconds.to_string());
    }
    response
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn route(s: &mut State, r: &Request) -> (StatusCode, Value, Option<u64>) {
    let segments: Vec<&str> = r.segments.iter().map(String::as_str).collect();
    let endpoint = match (&r.method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, []) => "info",
        (&Method::POST | &Method::PUT, ["_bulk"] | [_, "_bulk"]) => "bulk",
        (&Method::POST | &Method::GET, ["_mget"] | [_, "_mget"]) => "mget",
        (&Method::GET, [_, "_doc", _]) => "get",
        (&Method::POST, [_, "_delete_by_query"]) => "delete_by_query",
        (&Method::POST | &Method::GET, ["_refresh"] | [_, "_refresh"]) => "refresh",
        _ => "unknown",
    };
    *s.requests.entry(endpoint).or_default() += 1;
    if let Some(expected) = &s.authorization {
        let given = r.headers.get("authorization").and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                error(
                    "security_exception",
                    "missing authentication credentials for REST request",
                    StatusCode::UNAUTHORIZED,
                ),
                None,
            );
        }
    }
    if r.body.len() > s.settings.max_content_length {
        let reason = format!(
            "request body of {} bytes exceeds http.max_content_length [{}]",
            r.body.len(),
            s.settings.max_content_length
        );
        let status = StatusCode::PAYLOAD_TOO_LARGE;
        return (
            status,
            error("content_too_long_exception", &reason, status),
            None,
        );
    }
    if let Some(fault) = &mut s.request_fault {
        let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let retry_after = fault.retry_after;
        if let Some(n) = &mut fault.remaining {
            *n -= 1;
            if *n == 0 {
                s.request_fault = None;
            }
        }
        let kind = if status == StatusCode::TOO_MANY_REQUESTS {
            "es_rejected_execution_exception"
        } else {
            "unavailable_shards_exception"
        };
        let body = error(kind, "the stand-in was told to fail this request", status);
        return (status, body, retry_after);
    }
    let index = |i: usize| segments.get(i).map(|s| s.to_string());
    let (status, body) = match endpoint {
        "info" => (StatusCode::OK, info()),
        "bulk" => bulk::bulk(s, r, if segments.len() == 2 { index(0) } else { None }),
        "mget" => mget(s, r, if segments.len() == 2 { index(0) } else { None }),
        "get" => get(s, segments[0], segments[2]),
        "delete_by_query" => delete_by_query(s, r, segments[0]),
        "refresh" => refresh(s, if segments.len() == 2 { index(0) } else { None }),
        _ => (
            StatusCode::BAD_REQUEST,
            error(
                "illegal_argument_exception",
                &format!(
                    "no handler found for uri [/{}] and method [{}]",
                    segments.join("/"),
                    r.method
                ),
                StatusCode::BAD_REQUEST,
            ),
        ),
    };
    (status, body, None)
}

fn error(kind: &str, reason: &str, status: StatusCode) -> Value {
    json!({
        "error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason},
        "status": status.as_u16(),
    })
}

fn info() -> Value {
    json!({
        "name": "sluice-standin",
        "cluster_name": "sluice-standin",
        "cluster_uuid": "c2x1aWNlLXN0YW5kaW4",
        "version": {
            "number": "9.1.0",
            "build_flavor": "default",
            "lucene_version": "10.2.2",
            "minimum_wire_compatibility_version": "8.19.0",
            "minimum_index_compatibility_version": "8.0.0"
        },
        "tagline": "You Know, for Search"
    })
}

// ─── Reads, deletes by query, refresh ───────────────────────────────────────────────────

fn index_not_found(index: &str) -> Value {
    let reason = format!("no such index [{index}]");
    json!({"root_cause": [{"type": "index_not_found_exception", "reason": reason, "index": index}],
           "type": "index_not_found_exception", "reason": reason, "index": index})
}

/// `_source` as a request filters it: `true`/absent all, `false` none, a list or a string
/// of fields.
fn filtered(source: &Map<String, Value>, filter: &Value) -> Option<Value> {
    let keep: Vec<&str> = match filter {
        Value::Bool(false) => return None,
        Value::Array(fields) => fields.iter().filter_map(Value::as_str).collect(),
        Value::String(fields) => fields.split(',').collect(),
        _ => return Some(Value::Object(source.clone())),
    };
    Some(Value::Object(
        source
            .iter()
            .filter(|(k, _)| keep.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    ))
}

fn found(index: &str, id: &str, stored: &Stored, filter: &Value) -> Value {
    let mut doc = json!({"_index": index, "_id": id, "_version": stored.version,
                         "_seq_no": stored.seq_no, "_primary_term": 1, "found": true});
    if let Some(source) = filtered(&stored.source, filter) {
        doc["_source"] = source;
    }
    doc
}

fn mget(s: &mut State, r: &Request, default_index: Option<String>) -> (StatusCode, Value) {
    let Ok(body) = serde_json::from_slice::<Value>(&r.body) else {
        let e = error(
            "parse_exception",
            "request body is required",
            StatusCode::BAD_REQUEST,
        );
        return (StatusCode::BAD_REQUEST, e);
    };
    let mut wanted: Vec<(Option<String>, String, Value)> = Vec::new();
    if let Some(docs) = body["docs"].as_array() {
        for d in docs {
            let index = d["_index"]
                .as_str()
                .map(str::to_string)
                .or_else(|| default_index.clone());
            let id = d["_id"].as_str().unwrap_or_default().to_string();
            wanted.push((
                index,
                id,
                d.get("_source").cloned().unwrap_or(Value::Bool(true)),
            ));
        }
    } else if let Some(ids) = body["ids"].as_array() {
        for id in ids.iter().filter_map(Value::as_str) {
            wanted.push((default_index.clone(), id.to_string(), Value::Bool(true)));
        }
    } else {
        let e = error(
            "action_request_validation_exception",
            "Validation Failed: 1: no documents to get;",
            StatusCode::BAD_REQUEST,
        );
        return (StatusCode::BAD_REQUEST, e);
    }
    let docs: Vec<Value> = wanted
        .iter()
        .map(|(index, id, filter)| {
            let Some(index) = index else {
                return json!({"_id": id, "error": {"type": "action_request_validation_exception", "reason": "index is missing"}});
            };
            match s.indices.get(index) {
                None => json!({"_index": index, "_id": id, "error": index_not_found(index)}),
                Some(i) => match i.docs.get(id) {
                    Some(stored) => found(index, id, stored, filter),
                    None => json!({"_index": index, "_id": id, "found": false}),
                },
            }
        })
        .collect();
    (StatusCode::OK, json!({ "docs": docs }))
}

fn get(s: &mut State, index: &str, id: &str) -> (StatusCode, Value) {
    match s.indices.get(index) {
        None => (
            StatusCode::NOT_FOUND,
            json!({"error": index_not_found(index), "status": 404}),
        ),
        Some(i) => match i.docs.get(id) {
            Some(stored) => (StatusCode::OK, found(index, id, stored, &Value::Bool(true))),
            None => (
                StatusCode::NOT_FOUND,
                json!({"_index": index, "_id": id, "found": false}),
            ),
        },
    }
}

fn delete_by_query(s: &mut State, r: &Request, index_name: &str) -> (StatusCode, Value) {
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if body["query"].get("match_all").is_none() {
        let e = error(
            "illegal_argument_exception",
            "the stand-in supports only a match_all query",
            StatusCode::BAD_REQUEST,
        );
        return (StatusCode::BAD_REQUEST, e);
    }
    let now = s.now();
    let settings = s.settings;
    let Some(index) = s.indices.get_mut(index_name) else {
        return (
            StatusCode::NOT_FOUND,
            json!({"error": index_not_found(index_name), "status": 404}),
        );
    };
    // Only what a refresh (or the refresh interval) made searchable is seen.
    let searchable: Vec<String> = index
        .docs
        .iter()
        .filter(|(_, d)| {
            d.seq_no <= index.refreshed
                || now.duration_since(d.written) >= settings.refresh_interval
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in &searchable {
        if let Some(doc) = index.docs.remove(id) {
            // Internal versioning: the delete increments the version.
            index.tombstones.insert(
                id.clone(),
                Tombstone {
                    version: doc.version + 1,
                    at: now,
                },
            );
        }
    }
    let deleted = searchable.len();
    s.seq_no += deleted as i64;
    s.applied.push(Applied {
        action: "delete_by_query".into(),
        index: index_name.to_string(),
        id: None,
        version: None,
        opaque_id: r.opaque_id(),
    });
    if matches!(
        r.query.get("refresh").map(String::as_str),
        Some("" | "true")
    ) {
        if let Some(index) = s.indices.get_mut(index_name) {
            index.refreshed = s.seq_no;
        }
    }
    (
        StatusCode::OK,
        json!({
            "took": 1, "timed_out": false, "total": deleted, "deleted": deleted, "batches": 1,
            "version_conflicts": 0, "noops": 0, "retries": {"bulk": 0, "search": 0},
            "throttled_millis": 0, "requests_per_second": -1.0, "throttled_until_millis": 0,
            "failures": []
        }),
    )
}

fn refresh(s: &mut State, index: Option<String>) -> (StatusCode, Value) {
    let seq_no = s.seq_no;
    match index {
        None => s.indices.values_mut().for_each(|i| i.refreshed = seq_no),
        Some(name) => match s.indices.get_mut(&name) {
            Some(i) => i.refreshed = seq_no,
            None => {
                let body = json!({"error": index_not_found(&name), "status": 404});
                return (StatusCode::NOT_FOUND, body);
            }
        },
    }
    (
        StatusCode::OK,
        json!({"_shards": {"total": 1, "successful": 1, "failed": 0}}),
    )
}
