//! [`ElasticsearchSink`]: the engine's [`Sink`] over `_bulk`.
//!
//! A batch is cut into segments at truncates (the barriers of [`lanes::plan`]). A segment
//! of row changes becomes bulk requests, sent one after the other in batch order, each at
//! most `bulk.max_events` events and `bulk.max_bytes` bytes; a truncate is its own
//! segment (`on_truncate`). After a segment that did not wholly get through, later
//! segments are not sent (deferred). The per-item answers go through
//! [`lanes::settle_bulk`], so later events of a failed key come back deferred and the
//! engine resends them after it; external versions make every resend harmless.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use elasticsearch::http::StatusCode;
use sluice_runtime::template::{Scope, Template};
use sluice_runtime::{lanes, Delivery, Event, Sink};

use crate::classify::{combine, ActionKind};
use crate::client::Client;
use crate::config::{ElasticsearchConfig, OnTruncate};
use crate::encode::{Encoder, Kind, TEMPLATE_RULES};
use crate::toast::{self, Entry};
use crate::ElasticsearchError;

/// Writes row changes as Elasticsearch documents.
///
/// - **Ordering**: bulk requests go out one at a time in batch order, and a truncate waits
///   for everything before it and holds back everything after it. Within a request,
///   Elasticsearch may apply items of different documents in any order; a document's own
///   writes are ordered by their external versions, whatever order they arrive in.
/// - **Concurrency**: one request at a time; one batch at a time (`max_in_flight` 1),
///   which the unchanged-column reads rely on.
/// - **Idempotence**: every write carries the change's LSN as an external version, so a
///   replayed or late write is refused (409) and answered delivered: at-least-once
///   delivery leaves each document as the newest change made it.
pub struct ElasticsearchSink {
    client: Client,
    encoder: Encoder,
    max_events: usize,
    max_bytes: usize,
    on_truncate: OnTruncate,
    /// Tables whose ignored truncate was logged.
    truncates_logged: HashSet<String>,
}

impl ElasticsearchSink {
    /// Validate `config` and build the client. Reads `tls.ca_file`; does no network I/O.
    pub fn new(config: ElasticsearchConfig) -> Result<Self, ElasticsearchError> {
        let template = |field: &'static str, text: &str| {
            Template::parse_with(text, TEMPLATE_RULES).map_err(|e| ElasticsearchError::Template {
                field,
                reason: e.to_string(),
            })
        };
        let index = template("index", &config.index)?;
        let id = template("id", &config.id)?;
        if config.on_truncate == OnTruncate::DeleteAll && index.scope() > Scope::Table {
            return Err(ElasticsearchError::TruncateIndex {
                index: config.index.clone(),
            });
        }
        if config.bulk.max_events == 0 {
            return Err(ElasticsearchError::BulkLimit {
                field: "bulk.max_events",
                min: 1,
            });
        }
        if config.bulk.max_bytes.0 == 0 {
            return Err(ElasticsearchError::BulkLimit {
                field: "bulk.max_bytes",
                min: 1,
            });
        }
        Ok(ElasticsearchSink {
            client: Client::new(&config)?,
            encoder: Encoder::new(index, id),
            max_events: config.bulk.max_events,
            max_bytes: usize::try_from(config.bulk.max_bytes.0).unwrap_or(usize::MAX),
            on_truncate: config.on_truncate,
            truncates_logged: HashSet::new(),
        })
    }

    /// A segment of row changes: plan, complete unchanged columns, send in bulk requests.
    async fn write_rows(&self, events: &[Arc<Event>]) -> Vec<Delivery> {
        let mut entries: Vec<Entry> = events
            .iter()
            .map(|event| match self.encoder.plan(event) {
                Ok(Some(planned)) => Entry {
                    event,
                    planned: Some(planned),
                    answer: None,
                },
                // Nothing to write: an outbox row or a message.
                Ok(None) => Entry::answered(event, Delivery::Delivered),
                Err(reason) => Entry::answered(event, Delivery::Rejected { reason }),
            })
            .collect();
        toast::fill(&self.client, &mut entries).await;
        let (body, chunks) = self.encode(&entries);
        let body = Bytes::from(body);
        let mut down: Option<Delivery> = None;
        for chunk in chunks {
            if let Some(answer) = &down {
                // The cluster refused a whole request just now: do not pile on.
                for &i in &chunk.entries {
                    entries[i].answer = Some(answer.clone());
                }
                continue;
            }
            down = self
                .send(&body.slice(chunk.bytes.clone()), &chunk, &mut entries)
                .await;
        }
        entries
            .into_iter()
            .map(|e| e.answer.unwrap_or(Delivery::Deferred))
            .collect()
    }

    /// Encode every planned entry into one body, cut into requests by the bulk limits.
    fn encode(&self, entries: &[Entry]) -> (Vec<u8>, Vec<Chunk>) {
        let mut body = Vec::with_capacity(entries.len() * 256);
        let mut chunks: Vec<Chunk> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let Some(planned) = &entry.planned else {
                continue;
            };
            let start = body.len();
            planned.encode(entry.event, &mut body);
            let full = chunks.last().is_none_or(|c| {
                c.entries.len() >= self.max_events || body.len() - c.bytes.start > self.max_bytes
            });
            if full {
                chunks.push(Chunk {
                    bytes: start..start,
                    entries: Vec::new(),
                    items: Vec::new(),
                });
            }
            let chunk = chunks.last_mut().expect("a chunk was just ensured");
            chunk.bytes.end = body.len();
            chunk.entries.push(i);
            if planned.delete_old.is_some() {
                chunk.items.push(ActionKind::Delete);
            }
            chunk.items.push(match planned.kind {
                Kind::Index { .. } => ActionKind::Index,
                Kind::Delete => ActionKind::Delete,
            });
        }
        (body, chunks)
    }

    /// Send one bulk request and answer its entries. Returns the answer for the rest of
    /// the segment when the request failed as a whole.
    async fn send(
        &self,
        body: &Bytes,
        chunk: &Chunk,
        entries: &mut [Entry<'_>],
    ) -> Option<Delivery> {
        tracing::debug!(
            events = chunk.entries.len(),
            bytes = body.len(),
            "sending a bulk request"
        );
        let (response, after) = match self.client.bulk(body.clone()).await {
            Ok(answer) => answer,
            Err(failed) => {
                if chunk.entries.len() == 1 && failed.status == Some(StatusCode::PAYLOAD_TOO_LARGE)
                {
                    // One event the cluster will never take; the others may go on.
                    let reason = failed.reason;
                    entries[chunk.entries[0]].answer = Some(Delivery::Rejected { reason });
                    return None;
                }
                // No single event is at fault: retried until the cluster is back, or until
                // `retry.max_elapsed` stops the sink (never parked).
                let answer = failed.retry();
                for &i in &chunk.entries {
                    entries[i].answer = Some(answer.clone());
                }
                return Some(answer);
            }
        };
        if response.items.len() != chunk.items.len() {
            let answer = Delivery::retry(format!(
                "the bulk response has {} items for {} actions",
                response.items.len(),
                chunk.items.len()
            ));
            for &i in &chunk.entries {
                entries[i].answer = Some(answer.clone());
            }
            return None;
        }
        if !response.errors {
            for &i in &chunk.entries {
                entries[i].answer = Some(Delivery::Delivered);
            }
            return None;
        }
        let mut items = response.items.iter().zip(&chunk.items);
        for &i in &chunk.entries {
            let count = entries[i].planned.as_ref().map_or(0, |p| p.items());
            let answers = items
                .by_ref()
                .take(count)
                .map(|(item, &kind)| item.delivery(kind, after));
            entries[i].answer = Some(combine(answers));
        }
        None
    }

    /// A truncate, by `on_truncate`.
    async fn truncate(&mut self, event: &Event) -> Delivery {
        match self.on_truncate {
            OnTruncate::Ignore => {
                let table = format!(
                    "{}.{}",
                    event.source.schema.as_deref().unwrap_or(""),
                    event.source.table.as_deref().unwrap_or("")
                );
                if !self.truncates_logged.contains(&table) {
                    tracing::info!(
                        %table,
                        "a TRUNCATE is not applied to Elasticsearch (on_truncate: ignore); \
                         its documents stay. Set on_truncate: delete_all to delete them"
                    );
                    self.truncates_logged.insert(table);
                }
                Delivery::Delivered
            }
            OnTruncate::DeleteAll => {
                let index = match self.encoder.truncate_index(event) {
                    Ok(index) => index,
                    Err(reason) => return Delivery::Rejected { reason },
                };
                let opaque = format!("sluice truncate {}", event.id());
                match self.client.delete_all(&index, &opaque).await {
                    Ok(deleted) => {
                        tracing::info!(%index, deleted, "a TRUNCATE deleted every document of its index");
                        Delivery::Delivered
                    }
                    Err(failed) => failed.delivery(),
                }
            }
        }
    }
}

/// One bulk request's share of a segment.
struct Chunk {
    /// Its bytes in the segment's body.
    bytes: Range<usize>,
    /// The entries it carries, in order.
    entries: Vec<usize>,
    /// The kind of each of its actions, in order (an entry has one or two).
    items: Vec<ActionKind>,
}

#[async_trait]
impl Sink for ElasticsearchSink {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        let mut answers: Vec<Delivery> = Vec::with_capacity(batch.len());
        let mut blocked = false;
        for segment in lanes::barrier_ranges(batch) {
            let events = &batch[segment];
            if blocked {
                // A segment before did not wholly get through: a barrier stands between.
                answers.extend(std::iter::repeat_n(Delivery::Deferred, events.len()));
                continue;
            }
            let done = answers.len();
            if events.len() == 1 && events[0].ordering_key().is_none() {
                let answer = self.truncate(&events[0]).await;
                answers.push(answer);
            } else {
                answers.extend(self.write_rows(events).await);
            }
            blocked = answers[done..].iter().any(|a| !a.is_delivered());
        }
        lanes::settle_bulk(batch, answers)
    }

    /// `GET /` through the client: reachable, credentials accepted, and Elasticsearch or
    /// OpenSearch.
    async fn check(&mut self) -> Result<(), String> {
        self.client.info().await
    }
}

#[cfg(test)]
mod tests {
    use sluice_runtime::testing;

    use super::*;
    use crate::config::ByteSize;

    fn sink(config: ElasticsearchConfig) -> Result<ElasticsearchSink, ElasticsearchError> {
        ElasticsearchSink::new(config)
    }

    #[test]
    fn config_errors_name_their_field() {
        let field = |c: ElasticsearchConfig| sink(c).err().expect("an error").field();
        let mut c = ElasticsearchConfig::new("http://h");
        c.index = "{tabel}".into();
        assert_eq!(field(c), "index");
        let mut c = ElasticsearchConfig::new("http://h");
        c.id = "{key".into();
        assert_eq!(field(c), "id");
        let mut c = ElasticsearchConfig::new("http://h");
        c.bulk.max_events = 0;
        assert_eq!(field(c), "bulk.max_events");
        let mut c = ElasticsearchConfig::new("http://h");
        c.bulk.max_bytes = ByteSize(0);
        assert_eq!(field(c), "bulk.max_bytes");
        let mut c = ElasticsearchConfig::new("http://h");
        c.on_truncate = OnTruncate::DeleteAll;
        c.index = "{table}-{key.tenant}".into();
        let e = sink(c).err().unwrap();
        assert_eq!(e.field(), "on_truncate");
        assert!(e.to_string().contains("{table}-{key.tenant}"), "{e}");
        assert_eq!(field(ElasticsearchConfig::new("nope")), "url");
    }

    #[test]
    fn bulk_limits_cut_requests_in_order() {
        let mut config = ElasticsearchConfig::new("http://h");
        config.bulk.max_events = 2;
        let s = sink(config).unwrap();
        let events: Vec<Arc<Event>> = (0..5).map(|i| testing::insert("t", 0x10, i)).collect();
        let entries: Vec<Entry> = events
            .iter()
            .map(|e| Entry {
                event: e,
                planned: s.encoder.plan(e).unwrap(),
                answer: None,
            })
            .collect();
        let (body, chunks) = s.encode(&entries);
        let cut: Vec<Vec<usize>> = chunks.iter().map(|c| c.entries.clone()).collect();
        assert_eq!(cut, [vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(chunks.last().unwrap().bytes.end, body.len());
        for pair in chunks.windows(2) {
            assert_eq!(
                pair[0].bytes.end, pair[1].bytes.start,
                "no byte lost or repeated"
            );
        }

        // By bytes: every event encodes to the same size here; room for two and a half.
        let one = chunks[2].bytes.len();
        let limit = 2 * one + one / 2;
        let mut config = ElasticsearchConfig::new("http://h");
        config.bulk.max_bytes = ByteSize(limit as u64);
        let s = sink(config).unwrap();
        let (_, chunks) = s.encode(&entries);
        let cut: Vec<Vec<usize>> = chunks.iter().map(|c| c.entries.clone()).collect();
        assert_eq!(cut, [vec![0, 1], vec![2, 3], vec![4]]);
        assert!(chunks.iter().all(|c| c.bytes.len() <= limit));

        // An event larger than the limit goes alone.
        let mut config = ElasticsearchConfig::new("http://h");
        config.bulk.max_bytes = ByteSize(10);
        let s = sink(config).unwrap();
        let (_, chunks) = s.encode(&entries);
        assert_eq!(chunks.len(), 5);
    }
}
