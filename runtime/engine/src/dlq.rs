//! Dead-letter policy: the breaker and what `on_key` means.
//!
//! Storage lives in [`crate::state`]; the driver ([`crate::driver`]) parks, holds and
//! replays. This module holds the decisions that are pure.

use std::collections::VecDeque;

use crate::event::Event;

/// `dlq:` settings of one sink.
#[derive(Clone, Debug)]
pub struct DlqPolicy {
    /// Stop the sink when more than this share of the last `window` events was parked.
    pub max_ratio: f64,
    pub window: usize,
    /// `on_key: hold`: while an event is parked, later events of its key are held behind it.
    pub hold_keys: bool,
}

impl Default for DlqPolicy {
    fn default() -> Self {
        DlqPolicy {
            max_ratio: 0.5,
            window: 100,
            hold_keys: false,
        }
    }
}

/// Counts permanent failures over the last `window` events of a sink.
pub struct Breaker {
    policy: DlqPolicy,
    recent: VecDeque<bool>,
    failed: usize,
}

impl Breaker {
    pub fn new(policy: DlqPolicy) -> Self {
        Breaker {
            recent: VecDeque::with_capacity(policy.window),
            policy,
            failed: 0,
        }
    }

    /// Record one event's fate: `true` when it went to the DLQ.
    pub fn record(&mut self, parked: bool) {
        if self.recent.len() == self.policy.window.max(1) && self.recent.pop_front() == Some(true) {
            self.failed -= 1;
        }
        self.recent.push_back(parked);
        self.failed += parked as usize;
    }

    /// More than `max_ratio` of the last `window` events were parked.
    pub fn tripped(&self) -> bool {
        self.failed as f64 > self.policy.max_ratio * self.policy.window as f64
    }

    pub fn describe(&self) -> String {
        format!(
            "{} of the last {} events went to the DLQ (dlq.max_ratio {} over dlq.window {})",
            self.failed,
            self.recent.len(),
            self.policy.max_ratio,
            self.policy.window
        )
    }
}

/// The key under which `on_key: hold` holds events; `None` for a barrier (never held).
pub fn hold_key(event: &Event) -> Option<String> {
    event.ordering_key().map(|k| format!("{k:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_when_more_than_the_ratio_of_the_window_fails() {
        let mut b = Breaker::new(DlqPolicy {
            max_ratio: 0.5,
            window: 10,
            hold_keys: false,
        });
        for i in 0..100 {
            b.record(i % 2 == 0);
            assert!(!b.tripped(), "exactly half never trips");
        }
        b.record(true);
        b.record(true);
        assert!(b.tripped());
        let mut b = Breaker::new(DlqPolicy {
            max_ratio: 0.5,
            window: 10,
            hold_keys: false,
        });
        for _ in 0..5 {
            b.record(true);
        }
        assert!(!b.tripped());
        b.record(true);
        assert!(b.tripped(), "six of ten");
        for _ in 0..10 {
            b.record(false);
        }
        assert!(!b.tripped(), "old failures leave the window");
    }
}
