//! Read-your-writes: how far a sink has applied the stream, and waiters on it.
//!
//! Each sink has an [`Applied`]: the LSN through which every committed change has been
//! applied by the sink's destination (its acknowledgement came back, or the event was
//! filtered out). It moves when the sink finishes a transaction, and when the source saw
//! the server idle at a WAL end the sink has finished everything before, so a token of a
//! transaction that touched no captured table does not wait for the next captured one.
//!
//! A waiter is an entry in an ordered map, woken once by the move that passes its token:
//! thousands of waiters cost one map entry each and no polling.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::lsn::Lsn;
use crate::telemetry::{Histogram, HistogramSource, LATENCY_BUCKETS};

/// The applied-through LSN of one sink, with the waiters on it.
#[derive(Default)]
pub struct Applied {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    through: Lsn,
    /// Waiters by (token, number).
    waiters: BTreeMap<(Lsn, u64), oneshot::Sender<Lsn>>,
    next: u64,
}

impl Applied {
    pub fn new(through: Lsn) -> Self {
        Applied {
            state: Mutex::new(State {
                through,
                ..Default::default()
            }),
        }
    }

    /// Everything committed at or before this has been applied.
    pub fn through(&self) -> Lsn {
        self.state.lock().unwrap().through
    }

    /// Waiters not yet answered.
    pub fn waiting(&self) -> usize {
        self.state.lock().unwrap().waiters.len()
    }

    /// The sink has applied everything committed at or before `lsn`: wake the waiters whose
    /// token it passes. Never moves back.
    pub fn advance(&self, lsn: Lsn) {
        let mut s = self.state.lock().unwrap();
        if lsn <= s.through {
            return;
        }
        s.through = lsn;
        // Tokens above `lsn` stay; the others are answered.
        let later = s.waiters.split_off(&(Lsn(lsn.0.saturating_add(1)), 0));
        let passed = std::mem::replace(&mut s.waiters, later);
        drop(s);
        for (_, tx) in passed {
            let _ = tx.send(lsn);
        }
    }

    /// Wait until everything committed at or before `token` is applied, at most `timeout`.
    /// `Ok` with the applied-through LSN, or `Err` with it when the time ran out.
    pub async fn wait(&self, token: Lsn, timeout: Duration) -> Result<Lsn, Lsn> {
        let (key, rx) = {
            let mut s = self.state.lock().unwrap();
            if s.through >= token {
                return Ok(s.through);
            }
            let (tx, rx) = oneshot::channel();
            s.next += 1;
            let key = (token, s.next);
            s.waiters.insert(key, tx);
            (key, rx)
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(through)) => Ok(through),
            _ => {
                let mut s = self.state.lock().unwrap();
                s.waiters.remove(&key);
                // It may have passed between the timeout and the lock.
                if s.through >= token {
                    Ok(s.through)
                } else {
                    Err(s.through)
                }
            }
        }
    }
}

/// What `/wait` answered, for the metrics.
#[derive(Debug)]
pub struct WaitStats {
    /// Every sink applied the token.
    pub applied: AtomicU64,
    /// The time ran out.
    pub timeouts: AtomicU64,
    /// Applied, but a change committed before the token is in a sink's DLQ.
    pub parked: AtomicU64,
    /// How long answered waits took, in seconds.
    pub seconds: Histogram,
}

impl Default for WaitStats {
    fn default() -> Self {
        WaitStats {
            applied: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            seconds: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl HistogramSource for WaitStats {
    fn histogram(&self) -> &Histogram {
        &self.seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn waiters_are_woken_by_the_move_that_passes_their_token_and_no_other() {
        let applied = Arc::new(Applied::new(Lsn(100)));
        assert_eq!(applied.wait(Lsn(50), Duration::ZERO).await, Ok(Lsn(100)));
        let spawn = |token: u64| {
            let a = applied.clone();
            tokio::spawn(async move { a.wait(Lsn(token), Duration::from_secs(10)).await })
        };
        let (w200, w300, w301) = (spawn(200), spawn(300), spawn(301));
        tokio::task::yield_now().await;
        assert_eq!(applied.waiting(), 3);
        applied.advance(Lsn(300));
        assert_eq!(w200.await.unwrap(), Ok(Lsn(300)));
        assert_eq!(w300.await.unwrap(), Ok(Lsn(300)));
        assert_eq!(applied.waiting(), 1, "301 still waits");
        applied.advance(Lsn(250));
        assert_eq!(applied.through(), Lsn(300), "never moves back");
        assert_eq!(w301.await.unwrap(), Err(Lsn(300)), "timed out");
        assert_eq!(applied.waiting(), 0, "a timed-out waiter leaves");
    }

    #[tokio::test]
    async fn thousands_of_waiters_cost_an_entry_each() {
        let applied = Arc::new(Applied::new(Lsn(0)));
        let waiters: Vec<_> = (1..=5000u64)
            .map(|i| {
                let a = applied.clone();
                tokio::spawn(async move { a.wait(Lsn(i), Duration::from_secs(30)).await })
            })
            .collect();
        while applied.waiting() < 5000 {
            tokio::task::yield_now().await;
        }
        applied.advance(Lsn(2500));
        assert_eq!(applied.waiting(), 2500);
        applied.advance(Lsn(5000));
        for w in waiters {
            assert!(w.await.unwrap().is_ok());
        }
    }
}
