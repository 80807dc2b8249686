//! A batch until every event is delivered, rejected, or (`on_key: hold`) held: transient
//! failures are sent again after exponential backoff with jitter (the destination's
//! Retry-After honoured as a minimum), events deferred behind a permanent failure at once.
//! Past `retry.max_elapsed` the sink stops; an event is never dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::{relaxed, Outcome, SinkDriver, SinkStop};
use crate::config::RetryConfig;
use crate::driver::hold_key;
use crate::event::Event;
use crate::sink::Delivery;

impl SinkDriver {
    /// Turn the sink's first answers to `batch` into a final outcome per event, sending
    /// again what needs it.
    pub(super) async fn settle(
        &mut self,
        batch: &[Arc<Event>],
        first: Vec<Delivery>,
    ) -> Result<Vec<Outcome>, SinkStop> {
        let progress = self.progress.clone();
        let counters = &progress.counters;
        let started = Instant::now();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut rejected_keys: HashMap<String, String> = HashMap::new();
        let mut attempt: u32 = 0;
        let mut results = first;
        loop {
            if results.len() != pending.len() {
                return Err(SinkStop::Contract {
                    expected: pending.len(),
                    got: results.len(),
                });
            }
            let mut retry = Vec::new();
            let mut reason = String::new();
            let mut wish: Option<Duration> = None;
            let mut progressed = false;
            let mut delivered = 0u64;
            for (&i, result) in pending.iter().zip(results) {
                match result {
                    Delivery::Delivered => {
                        delivered += 1;
                        progressed = true;
                        outcomes[i] = Some(Outcome::Delivered);
                    }
                    Delivery::Rejected { reason } => {
                        progressed = true;
                        counters.rejected.fetch_add(1, relaxed());
                        if let Some(key) = hold_key(&batch[i]) {
                            rejected_keys.entry(key).or_insert_with(|| batch[i].id());
                        }
                        outcomes[i] = Some(Outcome::Rejected(reason));
                    }
                    Delivery::Deferred => retry.push(i),
                    Delivery::Retry { reason: r, after } => {
                        retry.push(i);
                        if reason.is_empty() {
                            reason = r;
                        }
                        wish = wish.max(after);
                    }
                }
            }
            counters.delivered.fetch_add(delivered, relaxed());
            if self.holds_keys() {
                retry.retain(
                    |&i| match hold_key(&batch[i]).and_then(|k| rejected_keys.get(&k)) {
                        Some(head) => {
                            outcomes[i] = Some(Outcome::Held {
                                behind: head.clone(),
                            });
                            false
                        }
                        None => true,
                    },
                );
            }
            if retry.is_empty() {
                return Ok(outcomes
                    .into_iter()
                    .map(|o| o.expect("every event has an outcome"))
                    .collect());
            }
            pending = retry;
            // Only events deferred behind a permanent failure: send them again at once.
            if !(reason.is_empty() && progressed) {
                let elapsed = started.elapsed();
                if elapsed >= self.delivery.retry.max_elapsed {
                    return Err(SinkStop::RetriesExhausted { elapsed, reason });
                }
                counters.retries.fetch_add(pending.len() as u64, relaxed());
                let delay = backoff(&self.delivery.retry, attempt).max(wish.unwrap_or_default());
                attempt = attempt.saturating_add(1);
                tracing::warn!(
                    sink = %self.name(),
                    events = pending.len(),
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    %reason,
                    "delivery failed, retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.shutdown.aborting() => return Err(SinkStop::Interrupted),
                }
            }
            let events: Vec<Arc<Event>> = pending.iter().map(|&i| batch[i].clone()).collect();
            let shutdown = self.shutdown.clone();
            results = tokio::select! {
                answers = async { self.sink.send(&events).await.await } => answers,
                _ = shutdown.aborting() => return Err(SinkStop::Interrupted),
            };
        }
    }
}

/// Exponential backoff with jitter: a random wait in [d/2, d], d = initial × 2^attempt,
/// capped at `retry.max`.
pub(super) fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let d = retry
        .initial
        .saturating_mul(1u32 << attempt.min(20))
        .min(retry.max);
    let half = d / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}
