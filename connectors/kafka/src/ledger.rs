//! Per-key order across batches in flight, when a message fails.
//!
//! With several batches in flight, a later batch's message of a key can be acknowledged
//! while an earlier batch's message of that key failed (it timed out while a broker was
//! down, and the next one went through once it was back). The engine sends the failed
//! message again, after: the later one would then be older in the topic than a change it
//! follows in the stream. The ledger prevents that outcome from standing: when a send's
//! answers are taken, every failure (a retry, or a deferral) is recorded with the range
//! of sends that were handed over before the failure was known; a message of the same
//! key delivered by one of those sends is answered [`Delivery::Deferred`] instead, so the
//! engine sends it again after the failed one. A failed barrier (truncate) defers every
//! key. The topic then shows such a message twice, and its last copy in stream order:
//! consumers that keep the last value per key (compaction) or skip changes older than the
//! one they hold end in the right state.
//!
//! Rejected messages record nothing: they are parked, and a later change of their key
//! may go on.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use sluice_runtime::{lanes, Delivery, Event};

/// Failures of taken answers that may invalidate later sends' deliveries.
#[derive(Default)]
pub(crate) struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The number of the next send.
    next: u64,
    /// Sends whose answers were not taken yet.
    pending: BTreeSet<u64>,
    records: Vec<Record>,
}

/// A failure of `key` (`None`: a barrier, every key) in send `from`, known once sends up
/// to `until` were handed over: a delivery of that key by a send in `from + 1 ..= until`
/// happened before the failed message was sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    key: Option<u64>,
    from: u64,
    until: u64,
}

impl Record {
    fn covers(&self, send: u64) -> bool {
        self.from < send && send <= self.until
    }
}

/// One send, from its hand-over until its answers are taken.
pub(crate) struct Ticket {
    ledger: Arc<Ledger>,
    send: u64,
}

impl Drop for Ticket {
    /// A send whose answers are never taken (the engine stopped) invalidates nothing.
    fn drop(&mut self) {
        if let Ok(mut inner) = self.ledger.inner.lock() {
            inner.pending.remove(&self.send);
            inner.prune();
        }
    }
}

impl Ledger {
    /// A new send, handed over after every earlier one.
    pub fn begin(self: &Arc<Self>) -> Ticket {
        let mut inner = self
            .inner
            .lock()
            .expect("the ledger's lock is never poisoned");
        let send = inner.next;
        inner.next += 1;
        inner.pending.insert(send);
        Ticket {
            ledger: self.clone(),
            send,
        }
    }

    /// The final answers of `ticket`'s send of `batch`, from what the producer said of each
    /// message (`raw`): deliveries that an earlier failure overtook are deferred, then the
    /// ordering rule of bulk answers applies ([`lanes::settle_bulk`]), then this send's own
    /// failures are recorded for the sends handed over after it.
    pub fn complete(
        &self,
        ticket: Ticket,
        batch: &[Arc<Event>],
        mut raw: Vec<Delivery>,
    ) -> Vec<Delivery> {
        let mut inner = self
            .inner
            .lock()
            .expect("the ledger's lock is never poisoned");
        let send = ticket.send;
        let covering: Vec<Record> = inner
            .records
            .iter()
            .filter(|r| r.covers(send))
            .copied()
            .collect();
        if !covering.is_empty() {
            for (event, answer) in batch.iter().zip(raw.iter_mut()) {
                if !answer.is_delivered() {
                    continue;
                }
                let key = event.ordering_key();
                let overtaken = covering
                    .iter()
                    .any(|r| r.key.is_none() || key.is_none() || r.key == key);
                if overtaken {
                    *answer = Delivery::Deferred;
                }
            }
        }
        let answers = lanes::settle_bulk(batch, raw);
        let last = inner.next - 1;
        if last > send {
            let mut failed: HashSet<Option<u64>> = HashSet::new();
            for (event, answer) in batch.iter().zip(&answers) {
                if matches!(answer, Delivery::Retry { .. } | Delivery::Deferred) {
                    failed.insert(event.ordering_key());
                }
            }
            inner.records.extend(failed.into_iter().map(|key| Record {
                key,
                from: send,
                until: last,
            }));
        }
        inner.pending.remove(&send);
        inner.prune();
        drop(inner);
        // The ticket's own drop finds it removed already.
        drop(ticket);
        answers
    }
}

impl Inner {
    /// Forget records that no pending send falls under.
    fn prune(&mut self) {
        let pending = &self.pending;
        self.records
            .retain(|r| pending.range(r.from + 1..=r.until).next().is_some());
    }
}

#[cfg(test)]
mod tests {
    use sluice_runtime::{testing, Op};

    use super::*;

    fn change(index: u32, key: i64) -> Arc<Event> {
        let mut e = testing::event("t", Op::Update, 0x10, index);
        e.key = Some(testing::id_row(key));
        Arc::new(e)
    }

    fn truncate(index: u32) -> Arc<Event> {
        Arc::new(testing::event("t", Op::Truncate, 0x10, index))
    }

    fn names(answers: &[Delivery]) -> Vec<&'static str> {
        answers
            .iter()
            .map(|d| match d {
                Delivery::Delivered => "ok",
                Delivery::Retry { .. } => "retry",
                Delivery::Deferred => "deferred",
                Delivery::Rejected { .. } => "rejected",
                _ => "other",
            })
            .collect()
    }

    #[test]
    fn one_send_at_a_time_records_nothing() {
        let ledger = Arc::new(Ledger::default());
        let first = vec![change(0, 1)];
        let t = ledger.begin();
        let a = ledger.complete(t, &first, vec![Delivery::retry("down")]);
        assert_eq!(names(&a), ["retry"]);
        let t = ledger.begin();
        let a = ledger.complete(t, &[change(1, 1)], vec![Delivery::Delivered]);
        assert_eq!(names(&a), ["ok"]);
        assert!(ledger.inner.lock().unwrap().records.is_empty());
    }

    #[test]
    fn a_failure_defers_its_keys_deliveries_in_later_sends_in_flight() {
        let ledger = Arc::new(Ledger::default());
        let (t1, t2, t3) = (ledger.begin(), ledger.begin(), ledger.begin());
        // Send 1: key 1 failed, key 2 went through.
        let a = ledger.complete(
            t1,
            &[change(0, 1), change(1, 2)],
            vec![Delivery::retry("timed out"), Delivery::Delivered],
        );
        assert_eq!(names(&a), ["retry", "ok"]);
        // The engine sends key 1's change again: a send after the failure was known.
        let retry = ledger.begin();
        let a = ledger.complete(retry, &[change(0, 1)], vec![Delivery::Delivered]);
        assert_eq!(
            names(&a),
            ["ok"],
            "a resend is not overtaken by its own failure"
        );
        // Send 2 was in flight: its key 1 change went through before the resend, so it
        // is deferred (and what follows of key 1 with it); key 2 stands.
        let a = ledger.complete(
            t2,
            &[change(2, 1), change(3, 2), change(4, 1)],
            vec![Delivery::Delivered; 3],
        );
        assert_eq!(names(&a), ["deferred", "ok", "deferred"]);
        // Its deferrals overtake send 3 in turn.
        let resend = ledger.begin();
        let a = ledger.complete(
            resend,
            &[change(2, 1), change(4, 1)],
            vec![Delivery::Delivered; 2],
        );
        assert_eq!(names(&a), ["ok", "ok"]);
        let a = ledger.complete(
            t3,
            &[change(5, 1), change(6, 3)],
            vec![Delivery::Delivered; 2],
        );
        assert_eq!(names(&a), ["deferred", "ok"]);
        // Sends after all of that are free.
        let t = ledger.begin();
        let a = ledger.complete(t, &[change(5, 1)], vec![Delivery::Delivered]);
        assert_eq!(names(&a), ["ok"]);
        assert!(ledger.inner.lock().unwrap().records.is_empty(), "pruned");
    }

    #[test]
    fn a_failed_barrier_defers_every_key_and_a_failure_defers_later_barriers() {
        let ledger = Arc::new(Ledger::default());
        let (t1, t2) = (ledger.begin(), ledger.begin());
        let a = ledger.complete(t1, &[truncate(0)], vec![Delivery::retry("down")]);
        assert_eq!(names(&a), ["retry"]);
        let a = ledger.complete(
            t2,
            &[change(1, 7), change(2, 8)],
            vec![Delivery::Delivered; 2],
        );
        assert_eq!(names(&a), ["deferred", "deferred"]);

        let ledger = Arc::new(Ledger::default());
        let (t1, t2) = (ledger.begin(), ledger.begin());
        ledger.complete(t1, &[change(0, 1)], vec![Delivery::retry("down")]);
        let a = ledger.complete(
            t2,
            &[change(1, 2), truncate(2), change(3, 2)],
            vec![Delivery::Delivered; 3],
        );
        assert_eq!(names(&a), ["ok", "deferred", "deferred"]);
    }

    #[test]
    fn rejections_record_nothing_and_abandoned_sends_are_forgotten() {
        let ledger = Arc::new(Ledger::default());
        let (t1, t2) = (ledger.begin(), ledger.begin());
        let a = ledger.complete(t1, &[change(0, 1)], vec![Delivery::rejected("too large")]);
        assert_eq!(names(&a), ["rejected"]);
        let a = ledger.complete(t2, &[change(1, 1)], vec![Delivery::Delivered]);
        assert_eq!(names(&a), ["ok"]);

        let (t1, t2) = (ledger.begin(), ledger.begin());
        ledger.complete(t1, &[change(2, 1)], vec![Delivery::retry("down")]);
        assert_eq!(ledger.inner.lock().unwrap().records.len(), 1);
        drop(t2);
        let inner = ledger.inner.lock().unwrap();
        assert!(inner.records.is_empty() && inner.pending.is_empty());
    }
}
