//! The sink driver: one task per sink that reads the journal at the sink's own cursor,
//! batches, delivers with retries, and records the sink's offset.
//!
//! Everything a connector must not decide lives here: batch size and wait, exponential
//! backoff with jitter (Retry-After honoured as a minimum), giving up after
//! `retry.max_elapsed` (the sink stops; nothing is dropped), skipping what the sink had
//! already committed before a restart, and keeping per-key order across retries.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::event::Event;
use crate::journal::{Entry, Journal, ReaderId};
use crate::progress::SinkProgress;
use crate::shutdown::Shutdown;
use crate::sink::{Delivery, Sink};

/// How a sink is fed and retried (from `delivery:` in the pipeline file).
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    pub max_events: usize,
    pub max_wait: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub retry_max_elapsed: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            max_events: 500,
            max_wait: Duration::from_millis(50),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            retry_max_elapsed: Duration::from_secs(15 * 60),
        }
    }
}

/// Why a sink stopped before the journal ended.
#[derive(Debug, thiserror::Error)]
pub enum SinkStop {
    /// The sink rejected an event permanently and there is no DLQ to park it in.
    #[error("event {id} was rejected: {reason}")]
    Rejected { id: String, reason: String },
    /// Transient errors went on for longer than `retry.max_elapsed`.
    #[error("gave up after retrying for {elapsed:?} (retry.max_elapsed): {reason}")]
    RetriesExhausted { elapsed: Duration, reason: String },
    /// The sink broke its contract (wrong number of results).
    #[error("sink returned {got} results for {expected} events")]
    Contract { expected: usize, got: usize },
    /// Shutdown was forced while the sink was still retrying; its offset stays where it was.
    #[error("interrupted by shutdown while retrying")]
    Interrupted,
}

pub struct SinkDriver {
    pub sink: Box<dyn Sink>,
    pub journal: Arc<Journal>,
    pub reader: ReaderId,
    pub settings: DeliverySettings,
    pub progress: Arc<SinkProgress>,
    /// Retries are abandoned once it aborts.
    pub shutdown: Shutdown,
}

impl SinkDriver {
    /// Run until the journal is closed and drained, or the sink stops.
    pub async fn run(mut self) -> Result<(), SinkStop> {
        let result = self.run_inner().await;
        self.sink.close().await;
        result
    }

    async fn run_inner(&mut self) -> Result<(), SinkStop> {
        let committed = self.progress.committed();
        let mut offset = committed;
        let max = self.settings.max_events.max(1);
        let mut batch: Vec<Arc<Event>> = Vec::with_capacity(max);
        while let Some((seq, entries)) = self
            .journal
            .read(self.reader, max, self.settings.max_wait)
            .await
        {
            batch.clear();
            let mut next = offset;
            for entry in &entries {
                match entry {
                    Entry::Event(event) if event.position <= committed.position => {
                        self.progress.counters.skipped.fetch_add(1, relaxed());
                    }
                    Entry::Event(event) => {
                        next.position = event.position;
                        next.commit_ts_micros = event.source.ts_micros;
                        batch.push(event.clone());
                    }
                    Entry::Commit { end_lsn, .. } => next.flush_lsn = next.flush_lsn.max(*end_lsn),
                }
            }
            if !batch.is_empty() {
                self.deliver(&batch).await?;
            }
            offset = next;
            self.progress.advance(seq + entries.len() as u64, offset);
        }
        Ok(())
    }

    /// Deliver one batch completely, retrying what failed transiently, in order.
    async fn deliver(&mut self, batch: &[Arc<Event>]) -> Result<(), SinkStop> {
        let counters = &self.progress.counters;
        counters.batches.fetch_add(1, relaxed());
        let started = Instant::now();
        let mut pending: Vec<Arc<Event>> = batch.to_vec();
        let mut attempt: u32 = 0;
        loop {
            let results = self.sink.write(&pending).await;
            if results.len() != pending.len() {
                return Err(SinkStop::Contract {
                    expected: pending.len(),
                    got: results.len(),
                });
            }
            let mut retry: Vec<Arc<Event>> = Vec::new();
            let mut reason = String::new();
            let mut wish: Option<Duration> = None;
            let mut delivered = 0u64;
            for (event, result) in pending.iter().zip(results) {
                match result {
                    Delivery::Delivered => delivered += 1,
                    Delivery::Deferred => retry.push(event.clone()),
                    Delivery::Retry { reason: r, after } => {
                        retry.push(event.clone());
                        if reason.is_empty() {
                            reason = r;
                        }
                        wish = wish.max(after);
                    }
                    Delivery::Rejected { reason } => {
                        counters.rejected.fetch_add(1, relaxed());
                        return Err(SinkStop::Rejected {
                            id: event.id(),
                            reason,
                        });
                    }
                }
            }
            counters.delivered.fetch_add(delivered, relaxed());
            if retry.is_empty() {
                return Ok(());
            }
            let elapsed = started.elapsed();
            if elapsed >= self.settings.retry_max_elapsed {
                return Err(SinkStop::RetriesExhausted { elapsed, reason });
            }
            counters.retries.fetch_add(retry.len() as u64, relaxed());
            let delay = backoff(&self.settings, attempt).max(wish.unwrap_or_default());
            attempt = attempt.saturating_add(1);
            tracing::warn!(
                sink = %self.progress.name,
                events = retry.len(),
                attempt,
                delay_ms = delay.as_millis() as u64,
                %reason,
                "delivery failed, retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.aborting() => return Err(SinkStop::Interrupted),
            }
            pending = retry;
        }
    }
}

/// Exponential backoff with jitter: a random wait in [d/2, d], d = initial × 2^attempt,
/// capped at `retry.max`.
fn backoff(s: &DeliverySettings, attempt: u32) -> Duration {
    let d = s
        .retry_initial
        .saturating_mul(1u32 << attempt.min(20))
        .min(s.retry_max);
    let half = d / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

fn relaxed() -> std::sync::atomic::Ordering {
    std::sync::atomic::Ordering::Relaxed
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use async_trait::async_trait;

    use super::*;
    use crate::event::{Op, Source};
    use crate::lsn::{Lsn, Position};
    use crate::progress::{Offset, Progress};

    /// A sink that answers from a script, then delivers everything; records what it got.
    struct Scripted {
        script: VecDeque<Vec<Delivery>>,
        seen: Arc<std::sync::Mutex<Vec<Vec<Position>>>>,
    }

    #[async_trait]
    impl Sink for Scripted {
        async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
            self.seen
                .lock()
                .unwrap()
                .push(batch.iter().map(|e| e.position).collect());
            self.script
                .pop_front()
                .unwrap_or_else(|| vec![Delivery::Delivered; batch.len()])
        }
    }

    fn event(commit: u64, index: u32) -> Entry {
        let source = Source {
            pipeline: "p".into(),
            schema: None,
            table: None,
            lsn: Lsn(commit),
            commit_lsn: Lsn(commit),
            xid: None,
            ts_micros: 0,
        };
        Entry::Event(Arc::new(Event::new(
            Position::new(Lsn(commit), index),
            Op::Insert,
            source,
        )))
    }

    fn settings() -> DeliverySettings {
        DeliverySettings {
            max_events: 10,
            max_wait: Duration::ZERO,
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
            retry_max_elapsed: Duration::from_secs(5),
        }
    }

    async fn drive(
        entries: Vec<Entry>,
        committed: Offset,
        script: Vec<Vec<Delivery>>,
        settings: DeliverySettings,
    ) -> (Result<(), SinkStop>, Vec<Vec<Position>>, Arc<Progress>) {
        let journal = Journal::new(100);
        let progress = Progress::new(vec![("s".into(), committed)]);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let driver = SinkDriver {
            sink: Box::new(Scripted {
                script: script.into(),
                seen: seen.clone(),
            }),
            reader: journal.register(),
            journal: journal.clone(),
            settings,
            progress: progress.sinks()[0].clone(),
            shutdown: Shutdown::new(),
        };
        journal.append(entries).await;
        journal.close();
        let result = driver.run().await;
        let seen = seen.lock().unwrap().clone();
        (result, seen, progress)
    }

    #[tokio::test]
    async fn retries_failed_and_deferred_events_in_order_then_commits() {
        let entries = vec![
            event(100, 0),
            event(100, 1),
            event(100, 2),
            Entry::Commit {
                commit_lsn: Lsn(100),
                end_lsn: Lsn(120),
            },
        ];
        let script = vec![vec![
            Delivery::Delivered,
            Delivery::retry("503"),
            Delivery::Deferred,
        ]];
        let (result, seen, progress) = drive(entries, Offset::default(), script, settings()).await;
        result.unwrap();
        let p = |i| Position::new(Lsn(100), i);
        assert_eq!(seen, vec![vec![p(0), p(1), p(2)], vec![p(1), p(2)]]);
        let committed = progress.sinks()[0].take_dirty().unwrap().1;
        assert_eq!((committed.position, committed.flush_lsn), (p(2), Lsn(120)));
        assert_eq!(progress.sinks()[0].counters.delivered.load(relaxed()), 3);
    }

    #[tokio::test]
    async fn events_at_or_before_the_committed_offset_are_skipped() {
        let committed = Offset {
            position: Position::new(Lsn(100), 1),
            ..Default::default()
        };
        let entries = vec![event(100, 0), event(100, 1), event(100, 2), event(200, 0)];
        let (result, seen, _) = drive(entries, committed, vec![], settings()).await;
        result.unwrap();
        assert_eq!(
            seen,
            vec![vec![Position::new(Lsn(100), 2), Position::new(Lsn(200), 0)]]
        );
    }

    #[tokio::test]
    async fn a_rejected_event_stops_the_sink_without_advancing() {
        let script = vec![vec![Delivery::Delivered, Delivery::rejected("422 bad")]];
        let (result, _, progress) = drive(
            vec![event(1, 0), event(1, 1)],
            Offset::default(),
            script,
            settings(),
        )
        .await;
        assert!(
            matches!(result, Err(SinkStop::Rejected { ref reason, .. }) if reason == "422 bad")
        );
        assert!(
            progress.sinks()[0].take_dirty().is_none(),
            "offset must not pass a rejected event"
        );
    }

    #[tokio::test]
    async fn retrying_stops_after_max_elapsed_and_never_drops() {
        let mut s = settings();
        s.retry_max_elapsed = Duration::from_millis(30);
        let script = (0..1000).map(|_| vec![Delivery::retry("down")]).collect();
        let (result, seen, progress) = drive(vec![event(1, 0)], Offset::default(), script, s).await;
        assert!(matches!(result, Err(SinkStop::RetriesExhausted { .. })));
        assert!(seen.len() > 2, "it retried before giving up");
        assert!(progress.sinks()[0].take_dirty().is_none());
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let s = DeliverySettings {
            retry_initial: Duration::from_millis(100),
            ..settings()
        };
        let s = DeliverySettings {
            retry_max: Duration::from_secs(1),
            ..s
        };
        for attempt in 0..12 {
            let d = backoff(&s, attempt);
            let full =
                Duration::from_millis(100 * (1 << attempt.min(10))).min(Duration::from_secs(1));
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} outside [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
