//! [`Client`]: the producer of a sink over its life: created on first use, replaced when
//! it can no longer keep its guarantees, checked for `validate --connect`, flushed and
//! dropped on close.
//!
//! A producer that failed fatally, or whose brokers refused its idempotence state, is
//! replaced at the next batch: the old one is purged, so its messages are answered as
//! retries at once, and dropped once it holds nothing. A producer whose messages failed
//! because the brokers went away (or their topic was missing) is replaced at the first
//! batch where it holds nothing: a broker that came back without its data does not know
//! its producer id, which librdkafka does not always recover from by itself, and
//! librdkafka remembers a missing topic for minutes; a new producer gets a new id and asks
//! for the topic again. Producers are dropped off the async threads: dropping one blocks
//! while librdkafka winds down.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::types::RDKafkaErrorCode as Code;

use crate::config::Settings;
use crate::producer::Producer;

/// The producer of a sink: created on first use, replaced when broken, flushed on close.
pub(crate) struct Client {
    settings: Arc<Settings>,
    current: Option<Arc<Producer>>,
    /// Replaced producers, purged, until they hold nothing.
    retired: Vec<Arc<Producer>>,
}

impl Client {
    pub fn new(settings: Arc<Settings>) -> Self {
        Client {
            settings,
            current: None,
            retired: Vec::new(),
        }
    }

    /// The producer to enqueue on. Creating one does not wait for the brokers: librdkafka
    /// connects in the background.
    pub fn producer(&mut self) -> Result<Arc<Producer>, String> {
        self.release_retired();
        if let Some(current) = &self.current {
            if let Some(why) = current.broken() {
                tracing::warn!(brokers = %self.settings.brokers, %why, "replacing the Kafka producer");
                // What it still holds is answered as retries now, not at its timeout.
                current.purge();
                self.retired.extend(self.current.take());
            } else if current.stale() {
                tracing::debug!(brokers = %self.settings.brokers, "replacing the Kafka producer after the brokers went away");
                self.retired.extend(self.current.take());
                self.release_retired();
            } else {
                return Ok(current.clone());
            }
        }
        let producer = Arc::new(Producer::create(&self.settings)?);
        self.current = Some(producer.clone());
        Ok(producer)
    }

    /// Wait until every message of every producer was answered.
    pub async fn drained(&self) {
        for producer in self.retired.iter().chain(&self.current) {
            producer.drained().await;
        }
    }

    /// Fetch the cluster's metadata within `timeout`, and that of `topic` if given; say
    /// what failed.
    pub async fn check(&mut self, topic: Option<String>) -> Result<(), String> {
        let producer = self.producer()?;
        let timeout = self.settings.timeout;
        let brokers = self.settings.brokers.clone();
        let asked = topic.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            let metadata = producer.metadata(asked.as_deref(), timeout);
            (metadata, producer)
        })
        .await
        .map_err(|e| format!("the metadata request did not finish: {e}"))?;
        let (metadata, producer) = fetched;
        let last = || {
            producer
                .last_error()
                .map_or_else(String::new, |e| format!(" (last client error: {e})"))
        };
        let metadata = metadata.map_err(|e| {
            format!(
                "cannot fetch metadata from the brokers at {brokers} within {}: {}{}",
                humantime(timeout),
                self.settings.masker.mask(&e.to_string()),
                last()
            )
        })?;
        if metadata.brokers().is_empty() {
            return Err(format!("the brokers at {brokers} list no broker{}", last()));
        }
        let Some(topic) = topic else { return Ok(()) };
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) => match t.error() {
                None => Ok(()),
                Some(code) => Err(format!(
                    "topic `{topic}` on the brokers at {brokers}: {}",
                    Code::from(code)
                )),
            },
            None => Err(format!(
                "topic `{topic}` does not exist on the brokers at {brokers}"
            )),
        }
    }

    /// Wait up to `timeout` for what the producers hold to be delivered, then drop them.
    /// What is still undelivered is answered as retries.
    pub async fn close(&mut self) {
        let producers: Vec<Arc<Producer>> =
            self.retired.drain(..).chain(self.current.take()).collect();
        if producers.is_empty() {
            return;
        }
        let timeout = self.settings.timeout;
        let brokers = self.settings.brokers.clone();
        let closing = tokio::task::spawn_blocking(move || {
            for producer in producers {
                if let Err(e) = producer.flush(timeout) {
                    tracing::warn!(%brokers, error = %e, "the Kafka producer closed with messages unacknowledged; they are sent again on the next run");
                }
                // Dropping joins librdkafka's threads: off the async threads.
                drop(producer);
            }
        });
        if let Err(e) = closing.await {
            tracing::warn!(error = %e, "closing the Kafka producer failed");
        }
    }

    /// Drop retired producers that hold nothing any more, off the async threads.
    fn release_retired(&mut self) {
        let (done, keep): (Vec<_>, Vec<_>) =
            self.retired.drain(..).partition(|p| p.holds_nothing());
        self.retired = keep;
        if !done.is_empty() {
            tokio::task::spawn_blocking(move || drop(done));
        }
    }
}

impl Drop for Client {
    /// A sink dropped without `close`: its producers are dropped on a thread of their own
    /// (dropping one blocks while librdkafka winds down).
    fn drop(&mut self) {
        let producers: Vec<Arc<Producer>> =
            self.retired.drain(..).chain(self.current.take()).collect();
        if !producers.is_empty() {
            let _ = std::thread::Builder::new()
                .name("sluice-kafka-drop".into())
                .spawn(move || drop(producers));
        }
    }
}

/// `30s`, `1m 30s`.
pub(crate) fn humantime(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        ms if ms % 1000 != 0 => format!("{ms}ms"),
        ms if ms % 60_000 != 0 || ms < 60_000 => format!("{}s", ms / 1000),
        ms => format!("{}m", ms / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(humantime(Duration::from_secs(30)), "30s");
        assert_eq!(humantime(Duration::from_millis(1500)), "1500ms");
        assert_eq!(humantime(Duration::from_secs(120)), "2m");
        assert_eq!(humantime(Duration::from_secs(90)), "90s");
    }
}
