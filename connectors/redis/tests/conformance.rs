//! The Redis sink passes the shared sink conformance suite against a real redis-server, in
//! each of its three shapes: cache with JSON documents, cache with hashes, and stream.
//! The server is taken down by killing it (`kill -9`) and brought back on the same port; it
//! keeps an fsynced append-only file, so it comes back with everything it acknowledged.
//! While it is down, what it holds is what it held when it was killed.

mod common;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_conformance::{suite, Target, Traits};
use sluice_runtime::Sink;
use sluice_testkit::redis::Redis;

/// Which shape of the sink a target drives.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Json,
    Hash,
    Stream,
}

struct RedisTarget {
    redis: Redis,
    shape: Shape,
    /// `state()` and `applied()` as they were when the server was killed.
    while_down: Option<(BTreeMap<String, Value>, Vec<String>)>,
}

impl RedisTarget {
    async fn start(shape: Shape) -> Self {
        RedisTarget {
            redis: Redis::start_persistent(),
            shape,
            while_down: None,
        }
    }

    fn config(&self) -> Value {
        match self.shape {
            Shape::Json => json!({"format": "json"}),
            Shape::Hash => json!({"format": "hash"}),
            Shape::Stream => json!({"mode": "stream"}),
        }
    }

    /// The stream's envelopes, oldest first.
    async fn envelopes(&mut self) -> Vec<Value> {
        let mut conn = common::connect(&self.redis).await;
        common::entries(&mut conn, "public.items")
            .await
            .into_iter()
            .map(|(_, fields)| serde_json::from_str(&fields["event"]).unwrap())
            .collect()
    }
}

#[async_trait]
impl Target for RedisTarget {
    fn traits(&self) -> Traits {
        Traits {
            can_fail: true,
            fails_one_event: false,
            // A stream shows every append in order; a cache shows the last state only.
            observes_order: self.shape == Shape::Stream,
            bulk: true,
        }
    }

    async fn sink(&mut self) -> Box<dyn Sink> {
        common::boxed(common::sink(&self.redis, self.config()))
    }

    async fn reset(&mut self) {
        let mut conn = common::connect(&self.redis).await;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    }

    /// Cache: every key's value, fences and tombstones included. Stream: each entry's
    /// envelope by event id.
    async fn state(&mut self) -> BTreeMap<String, Value> {
        if let Some((state, _)) = &self.while_down {
            return state.clone();
        }
        if self.shape == Shape::Stream {
            return self
                .envelopes()
                .await
                .into_iter()
                .map(|e| (sluice_conformance::envelope_id(&e), e))
                .collect();
        }
        let mut conn = common::connect(&self.redis).await;
        common::dump(&mut conn).await
    }

    async fn applied(&mut self) -> Vec<String> {
        if let Some((_, applied)) = &self.while_down {
            return applied.clone();
        }
        if self.shape != Shape::Stream {
            return Vec::new();
        }
        self.envelopes()
            .await
            .iter()
            .map(sluice_conformance::envelope_id)
            .collect()
    }

    async fn set_down(&mut self, down: bool) {
        if down {
            self.while_down = Some((self.state().await, self.applied().await));
            self.redis.stop();
        } else {
            self.redis.start_again();
            self.while_down = None;
        }
    }

    /// Row id → its `n`; `None` for a deleted row whose tombstone is there.
    async fn rows(&mut self) -> Option<BTreeMap<i64, Option<i64>>> {
        if self.shape == Shape::Stream {
            return None;
        }
        let mut rows = BTreeMap::new();
        for (key, value) in self.state().await {
            let Some(id) = key.strip_prefix("items:") else {
                continue;
            };
            let n = match self.shape {
                Shape::Json => match id.strip_suffix(":sluice") {
                    // A fence: the row is deleted unless its document is there.
                    Some(id) => {
                        let id: i64 = id.parse().unwrap();
                        rows.entry(id).or_insert(None);
                        continue;
                    }
                    None => value["n"].as_i64(),
                },
                _ => value["n"].as_str().map(|n| n.parse().unwrap()),
            };
            rows.insert(id.parse().unwrap(), n);
        }
        Some(rows)
    }
}

mod json_cache {
    use super::*;
    suite!(RedisTarget::start(Shape::Json));
}

mod hash_cache {
    use super::*;
    suite!(RedisTarget::start(Shape::Hash));
}

mod stream {
    use super::*;
    suite!(RedisTarget::start(Shape::Stream));
}
