//! The official `elasticsearch` client (its transport built by `connection`) and the four
//! requests the sink makes: `_bulk`, `_mget`, `_delete_by_query` (after `_refresh`) and the
//! info request of `check`.
//!
//! Each call sends one request and says what came back; nothing here retries or sleeps
//! (the engine does). A request that got no answer (refused, reset, timed out) or a non-2xx
//! answer is a [`Failed`], classified with the rules every HTTP sink shares
//! (`sluice-http`).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use elasticsearch::http::headers::{HeaderName, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::response::Response;
use elasticsearch::http::StatusCode;
use elasticsearch::indices::IndicesRefreshParts;
use elasticsearch::params::Conflicts;
use elasticsearch::{BulkParts, DeleteByQueryParts, Elasticsearch, MgetParts};
use serde::Deserialize;
use serde_json::json;
use sluice_http::Transport;
use sluice_runtime::Delivery;

use crate::classify::{BulkResponse, ErrorCause};
use crate::config::ElasticsearchConfig;
use crate::encode::DocRef;
use crate::{connection, ElasticsearchError};

/// `X-Opaque-Id`: Elasticsearch shows it with the task in `GET _tasks` and in slow logs.
const OPAQUE_ID: HeaderName = HeaderName::from_static("x-opaque-id");

/// Elasticsearch answers every request with this header (its clients check it).
const ELASTIC_PRODUCT: &str = "x-elastic-product";

/// A request that got no usable answer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Failed {
    /// What happened, on one line.
    pub reason: String,
    /// The answer's status, when there was one.
    pub status: Option<StatusCode>,
    /// The server's `Retry-After`.
    pub after: Option<Duration>,
}

impl Failed {
    /// The delivery this failure means for an event it concerns: transient statuses and
    /// transport failures retry, other statuses reject.
    pub fn delivery(&self) -> Delivery {
        match self.status {
            Some(status) if !sluice_http::is_transient(status) => Delivery::Rejected {
                reason: self.reason.clone(),
            },
            _ => self.retry(),
        }
    }

    /// A retry, whatever the status.
    pub fn retry(&self) -> Delivery {
        Delivery::Retry {
            reason: self.reason.clone(),
            after: self.after,
        }
    }
}

/// One stored document as `_mget` returns it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Stored {
    Found {
        version: i64,
        source: serde_json::Map<String, serde_json::Value>,
    },
    Missing,
    Error(String),
}

/// The client, bound to one cluster.
pub(crate) struct Client {
    es: Elasticsearch,
    /// The URL without credentials, for messages.
    shown: String,
    timeout: Duration,
}

impl Client {
    /// Validate the connection keys and build the client. Reads `tls.ca_file`; no
    /// network I/O.
    pub(crate) fn new(config: &ElasticsearchConfig) -> Result<Self, ElasticsearchError> {
        let (transport, url) = connection::transport(config)?;
        Ok(Client {
            es: Elasticsearch::new(transport),
            shown: url.to_string(),
            timeout: config.timeout,
        })
    }

    /// POST `body` (NDJSON actions) to `_bulk` and read the per-item answers.
    pub(crate) async fn bulk(
        &self,
        body: Bytes,
    ) -> Result<(BulkResponse, Option<Duration>), Failed> {
        let sent = self
            .es
            .bulk(BulkParts::None)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            )
            .body(vec![body])
            .send()
            .await;
        let response = self.answered(sent, "bulk").await?;
        let after = sluice_http::retry_after(response.headers(), SystemTime::now());
        let bytes = read(response, "bulk").await?;
        let parsed: BulkResponse = serde_json::from_slice(&bytes).map_err(|e| Failed {
            reason: format!(
                "the bulk response does not read as Elasticsearch's ({e}): {}",
                sluice_http::snippet(&bytes)
            ),
            status: None,
            after: None,
        })?;
        Ok((parsed, after))
    }

    /// The stored documents `docs`, each with only `columns` of its source, in order.
    pub(crate) async fn mget(&self, docs: &[(DocRef, Vec<String>)]) -> Result<Vec<Stored>, Failed> {
        let body = json!({
            "docs": docs.iter().map(|(doc, columns)| json!({
                "_index": doc.index, "_id": doc.id, "_source": columns,
            })).collect::<Vec<_>>()
        });
        let sent = self.es.mget(MgetParts::None).body(body).send().await;
        let response = self.answered(sent, "mget").await?;
        let bytes = read(response, "mget").await?;
        let parsed: MgetResponse = serde_json::from_slice(&bytes).map_err(|e| Failed {
            reason: format!(
                "the mget response does not read as Elasticsearch's ({e}): {}",
                sluice_http::snippet(&bytes)
            ),
            status: None,
            after: None,
        })?;
        if parsed.docs.len() != docs.len() {
            return Err(Failed {
                reason: format!(
                    "the mget response has {} documents for {} asked",
                    parsed.docs.len(),
                    docs.len()
                ),
                status: None,
                after: None,
            });
        }
        Ok(parsed.docs.into_iter().map(MgetDoc::stored).collect())
    }

    /// Delete every document of `index`: refresh it (a delete-by-query only sees what a
    /// refresh made searchable), then `_delete_by_query` with `match_all`. A missing index
    /// has nothing to delete. `opaque` names the request in the cluster's task list.
    pub(crate) async fn delete_all(&self, index: &str, opaque: &str) -> Result<u64, Failed> {
        let opaque = HeaderValue::from_str(opaque).unwrap_or(HeaderValue::from_static("sluice"));
        let indices = [index];
        let sent = self
            .es
            .indices()
            .refresh(IndicesRefreshParts::Index(&indices))
            .header(OPAQUE_ID, opaque.clone())
            .send()
            .await;
        match self.answered(sent, "refresh").await {
            Ok(_) => {}
            Err(f) if f.status == Some(StatusCode::NOT_FOUND) => return Ok(0),
            Err(f) => return Err(f),
        }
        let sent = self
            .es
            .delete_by_query(DeleteByQueryParts::Index(&indices))
            .header(OPAQUE_ID, opaque)
            .conflicts(Conflicts::Proceed)
            .body(json!({"query": {"match_all": {}}}))
            .send()
            .await;
        let response = match self.answered(sent, "delete_by_query").await {
            Ok(response) => response,
            Err(f) if f.status == Some(StatusCode::NOT_FOUND) => return Ok(0),
            Err(f) => return Err(f),
        };
        let bytes = read(response, "delete_by_query").await?;
        let parsed: DeleteByQueryResponse = serde_json::from_slice(&bytes).unwrap_or_default();
        if let Some(failure) = parsed.failures.first() {
            return Err(Failed {
                reason: format!(
                    "delete_by_query on `{index}` deleted {} documents, then failed: {}",
                    parsed.deleted,
                    sluice_http::snippet(failure.to_string().as_bytes())
                ),
                status: None,
                after: None,
            });
        }
        Ok(parsed.deleted)
    }

    /// `GET /`: the cluster answers, accepts the credentials, and is Elasticsearch or
    /// OpenSearch.
    pub(crate) async fn info(&self) -> Result<(), String> {
        let sent = self.es.info().send().await;
        let response = self
            .answered(sent, "info")
            .await
            .map_err(|f| format!("Elasticsearch at {}: {}", self.shown, f.reason))?;
        let elastic = response
            .headers()
            .get(ELASTIC_PRODUCT)
            .is_some_and(|v| v.as_bytes() == b"Elasticsearch");
        let bytes = read(response, "info")
            .await
            .map_err(|f| format!("Elasticsearch at {}: {}", self.shown, f.reason))?;
        let info: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let opensearch = info["version"]["distribution"] == "opensearch";
        if elastic || opensearch {
            return Ok(());
        }
        Err(format!(
            "the server at {} answered `GET /` but is neither Elasticsearch (no \
             `X-Elastic-Product: Elasticsearch` header) nor OpenSearch (no \
             `version.distribution: opensearch`): {}",
            self.shown,
            sluice_http::snippet(&bytes)
        ))
    }

    /// A 2xx response, or what went wrong.
    async fn answered(
        &self,
        sent: Result<Response, elasticsearch::Error>,
        what: &str,
    ) -> Result<Response, Failed> {
        let response = sent.map_err(|e| Failed {
            reason: format!("{what}: {}", transport_reason(&e, self.timeout)),
            status: None,
            after: None,
        })?;
        let status = response.status_code();
        if status.is_success() {
            return Ok(response);
        }
        let after = sluice_http::retry_after(response.headers(), SystemTime::now());
        let body = response.bytes().await.unwrap_or_default();
        let mut reason = format!("{what}: HTTP {status}");
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error: Some(error) }) => {
                reason.push_str(": ");
                reason.push_str(&sluice_http::snippet(error.describe().as_bytes()));
            }
            _ => {
                let snippet = sluice_http::snippet(&body);
                if !snippet.is_empty() {
                    reason.push_str(": ");
                    reason.push_str(&snippet);
                }
            }
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            reason
                .push_str(" (lower `bulk.max_bytes` below the cluster's http.max_content_length)");
        }
        Err(Failed {
            reason,
            status: Some(status),
            after,
        })
    }
}

/// The response body, or a transient failure if it broke off.
async fn read(response: Response, what: &str) -> Result<Bytes, Failed> {
    response.bytes().await.map_err(|e| Failed {
        reason: format!(
            "{what}: reading the response: {}",
            transport_reason(&e, None)
        ),
        status: None,
        after: None,
    })
}

/// A failure before any answer, as one line. The URL it may print carries no
/// credentials: they were moved out of it when the client was built.
fn transport_reason(e: &elasticsearch::Error, timeout: impl Into<Option<Duration>>) -> String {
    let source = std::error::Error::source(e).and_then(|s| s.downcast_ref::<reqwest::Error>());
    let kind = match (source, timeout.into()) {
        (Some(r), Some(timeout)) if r.is_timeout() => Transport::Timeout(timeout),
        (Some(r), _) if r.is_connect() => Transport::Connect,
        _ => Transport::Other,
    };
    sluice_http::transport_reason(kind, e)
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<ErrorCause>,
}

#[derive(Deserialize)]
struct MgetResponse {
    docs: Vec<MgetDoc>,
}

#[derive(Deserialize)]
struct MgetDoc {
    #[serde(default)]
    found: bool,
    #[serde(default, rename = "_version")]
    version: Option<i64>,
    #[serde(default, rename = "_source")]
    source: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    error: Option<ErrorCause>,
}

impl MgetDoc {
    fn stored(self) -> Stored {
        match self {
            MgetDoc {
                error: Some(error), ..
            } if error.kind == "index_not_found_exception" => Stored::Missing,
            MgetDoc {
                error: Some(error), ..
            } => Stored::Error(error.describe()),
            MgetDoc {
                found: true,
                version: Some(version),
                source,
                ..
            } => Stored::Found {
                version,
                source: source.unwrap_or_default(),
            },
            _ => Stored::Missing,
        }
    }
}

#[derive(Default, Deserialize)]
struct DeleteByQueryResponse {
    #[serde(default)]
    deleted: u64,
    #[serde(default)]
    failures: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mget_documents_read_as_found_missing_or_failed() {
        let docs: MgetResponse = serde_json::from_value(json!({"docs": [
            {"_index": "o", "_id": "1", "_version": 9, "_seq_no": 1, "_primary_term": 1,
             "found": true, "_source": {"body": "x"}},
            {"_index": "o", "_id": "2", "found": false},
            {"_index": "x", "_id": "3", "error": {"type": "index_not_found_exception",
                                                 "reason": "no such index [x]"}},
            {"_index": "o", "_id": "4", "error": {"type": "shard_not_available", "reason": "r"}}
        ]}))
        .unwrap();
        let stored: Vec<Stored> = docs.docs.into_iter().map(MgetDoc::stored).collect();
        assert!(
            matches!(&stored[0], Stored::Found { version: 9, source } if source["body"] == "x")
        );
        assert_eq!(stored[1], Stored::Missing);
        assert_eq!(stored[2], Stored::Missing);
        assert_eq!(stored[3], Stored::Error("shard_not_available: r".into()));
    }
}
