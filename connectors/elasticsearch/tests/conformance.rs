//! The Elasticsearch sink passes the shared sink conformance suite against the in-process
//! stand-in (`sluice_testkit::elasticsearch`), with `on_truncate: delete_all` so truncates
//! take effect and their place in the order shows. Document versions are the changes' own
//! LSNs; the target notes which event each LSN belongs to as the events pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_conformance::{suite, Target, Traits};
use sluice_elasticsearch::{ElasticsearchConfig, ElasticsearchSink, OnTruncate};
use sluice_runtime::{Delivery, Event, Sink};
use sluice_testkit::elasticsearch::{BulkAction, Elasticsearch};

const INDEX: &str = "items";

/// Event ids by change LSN (the document version), and back.
#[derive(Default)]
struct Ids {
    by_lsn: HashMap<i64, String>,
    by_id: HashMap<String, i64>,
}

/// The sink under test, noting each event's LSN as it passes.
struct Noting(ElasticsearchSink, Arc<Mutex<Ids>>);

#[async_trait]
impl Sink for Noting {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        {
            let mut ids = self.1.lock().unwrap();
            for e in batch {
                let lsn = e.source.lsn.0 as i64;
                ids.by_lsn.insert(lsn, e.id());
                ids.by_id.insert(e.id(), lsn);
            }
        }
        self.0.write(batch).await
    }

    async fn check(&mut self) -> Result<(), String> {
        self.0.check().await
    }
}

struct Search {
    es: Elasticsearch,
    ids: Arc<Mutex<Ids>>,
}

#[async_trait]
impl Target for Search {
    fn traits(&self) -> Traits {
        Traits {
            can_fail: true,
            fails_one_event: true,
            observes_order: true,
            bulk: true,
        }
    }

    async fn sink(&mut self) -> Box<dyn Sink> {
        let mut config = ElasticsearchConfig::new(self.es.url());
        config.on_truncate = OnTruncate::DeleteAll;
        Box::new(Noting(
            ElasticsearchSink::new(config).unwrap(),
            self.ids.clone(),
        ))
    }

    async fn reset(&mut self) {
        self.es.reset();
    }

    /// What a search shows: each live document with its version.
    async fn state(&mut self) -> BTreeMap<String, Value> {
        self.es
            .docs(INDEX)
            .into_iter()
            .map(|(id, doc)| (id, json!({"version": doc.version, "source": doc.source})))
            .collect()
    }

    /// Writes that took effect: documents by the event their version names, truncates by
    /// the event the sink names in `X-Opaque-Id`.
    async fn applied(&mut self) -> Vec<String> {
        self.es
            .applied()
            .into_iter()
            .filter_map(|a| match a.version {
                Some(version) => self.ids.lock().unwrap().by_lsn.get(&version).cloned(),
                None => a
                    .opaque_id
                    .and_then(|o| o.rsplit(' ').next().map(str::to_string)),
            })
            .collect()
    }

    async fn set_down(&mut self, down: bool) {
        if down {
            self.es.fail_requests(503, None, None);
        } else {
            self.es.heal();
        }
    }

    /// An item-level 429 for the writes of this one event.
    async fn fail_event(&mut self, id: &str) {
        let version = self.ids.lock().unwrap().by_id[id];
        self.es.fail_items(
            Arc::new(move |a: &BulkAction| a.version == Some(version)),
            None,
        );
    }

    async fn heal_event(&mut self) {
        self.es.heal();
    }

    async fn rows(&mut self) -> Option<BTreeMap<i64, Option<i64>>> {
        Some(
            self.es
                .docs(INDEX)
                .into_iter()
                .map(|(id, doc)| (id.parse().unwrap(), doc.source["n"].as_i64()))
                .collect(),
        )
    }
}

async fn search() -> Search {
    Search {
        es: Elasticsearch::start().await,
        ids: Default::default(),
    }
}

suite!(search());
