//! The DLQ breaker: a sink that sends too many events to its dead-letter queue is broken,
//! not unlucky, so it stops (loudly) instead of parking everything.

use std::collections::VecDeque;

use crate::config::DlqConfig;

/// Counts permanent failures over the last `window` events of a sink.
pub struct Breaker {
    policy: DlqConfig,
    recent: VecDeque<bool>,
    failed: usize,
}

impl Breaker {
    pub fn new(policy: DlqConfig) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_when_more_than_the_ratio_of_the_window_fails() {
        let mut b = Breaker::new(DlqConfig {
            max_ratio: 0.5,
            window: 10,
            ..DlqConfig::default()
        });
        for i in 0..100 {
            b.record(i % 2 == 0);
            assert!(!b.tripped(), "exactly half never trips");
        }
        b.record(true);
        b.record(true);
        assert!(b.tripped());
        let mut b = Breaker::new(DlqConfig {
            max_ratio: 0.5,
            window: 10,
            ..DlqConfig::default()
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
