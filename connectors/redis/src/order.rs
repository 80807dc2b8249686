//! Several batches in flight, in order.
//!
//! [`Chain`]: each batch handed over runs on a task of its own that first waits for the
//! task of the batch handed over before it (a chain of oneshots), so batches run in the
//! order they were handed over whatever the scheduler does, while the engine encodes the
//! next batch.
//!
//! [`Gate`]: the poison rule. Once a batch was not wholly delivered (a failed round trip,
//! a transient error reply, an event deferred behind one), the engine sends its
//! unfinished events again, after a backoff, through the same chain. Batches handed over
//! before that resend must not run ahead of it: a TOAST merge in them would find its row
//! missing because the insert before it was not applied yet, and a stream entry appended
//! after the failed one would make the failed one impossible to append (`XADD` refuses ids
//! at or below the stream's top). So the gate remembers the lowest position not delivered
//! (nor rejected: a rejected event is parked and skipped), and a batch that starts above
//! it is answered [`Delivery::Retry`] without being sent; the engine's resend starts at or
//! below it and runs.
//!
//! The gate holds back only batches handed over before the engine had the failed batch's
//! answers. A batch handed over after that is what the engine chose to send next, knowing
//! of the failure: its resend, or, when it keeps the failed events back itself
//! (`dlq.on_key: hold` parks the events deferred behind a rejected one), the next batch,
//! which must not wait for a resend that never comes.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_runtime::sink::Pending;
use sluice_runtime::{Delivery, Event, Position};
use tokio::sync::oneshot;

/// Why a batch was not sent: an earlier one is being retried.
pub(crate) const BEHIND_A_RETRY: &str =
    "an earlier batch of this redis sink is being retried; this one is sent again after it, in order";

/// Where an event stands, fan-out included: events a transform made of one change share
/// its position and follow each other by fan-out number.
pub(crate) type Place = (Position, u32);

/// The place of `event`.
pub(crate) fn place(event: &Event) -> Place {
    (event.position, event.fanout)
}

/// Runs batches one after the other, in the order they were handed over.
#[derive(Default)]
pub(crate) struct Chain {
    /// Resolves when the last batch handed over has finished (or its task ended).
    tail: Option<oneshot::Receiver<()>>,
    /// How many batches were handed over.
    handed: u64,
    /// The number of the last batch whose answers the engine took.
    taken: Arc<AtomicU64>,
}

/// A batch's place in the chain: its number (from 1, in hand-over order) and the number
/// of the last batch whose answers the engine had taken when it handed this one over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub number: u64,
    pub knows: u64,
}

impl Chain {
    /// Run `work(ticket)` (which answers `events` events) once every batch handed over
    /// before has finished, on a task of its own; the answers come through the returned
    /// future. If the task fails, every event is answered [`Delivery::Retry`].
    pub(crate) fn hand_over<W, F>(&mut self, events: usize, work: W) -> Pending
    where
        W: FnOnce(Ticket) -> F,
        F: Future<Output = Vec<Delivery>> + Send + 'static,
    {
        self.handed += 1;
        let ticket = Ticket {
            number: self.handed,
            knows: self.taken.load(Ordering::Relaxed),
        };
        let work = work(ticket);
        let (done, next) = oneshot::channel::<()>();
        let previous = self.tail.replace(next);
        let task = tokio::spawn(async move {
            if let Some(previous) = previous {
                // An error means the task before ended without saying so (it panicked):
                // its batch is answered Retry, and the gate was closed before it ran.
                let _ = previous.await;
            }
            let answers = work.await;
            let _ = done.send(());
            answers
        });
        let taken = self.taken.clone();
        Box::pin(async move {
            let answers = task.await.unwrap_or_else(|e| {
                vec![Delivery::retry(format!("the redis sink's task failed: {e}")); events]
            });
            taken.fetch_max(ticket.number, Ordering::Relaxed);
            answers
        })
    }
}

/// The poison rule: which batches may run while an earlier one waits for its resend.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// The lowest place that may not have been applied yet, and the number of the batch
    /// whose answers said so.
    mark: Option<(Place, u64)>,
}

impl Gate {
    /// Whether a batch whose lowest place is `first` may run: nothing waits for a resend,
    /// or this is that resend, or the engine had the answers that call for the resend when
    /// it handed this batch over (it decided what comes next).
    pub(crate) fn admits(&self, first: Place, ticket: Ticket) -> bool {
        self.mark
            .is_none_or(|(mark, by)| first <= mark || ticket.knows >= by)
    }

    /// A batch starting at `first` runs: until its answers are in, it holds back later
    /// batches (so a batch that never answers, a panic, cannot let them overtake it).
    pub(crate) fn begin(&mut self, first: Place, ticket: Ticket) {
        self.mark = Some((first, ticket.number));
    }

    /// The batch `events` that ran was answered `answers`: later batches may run again
    /// unless an event of it waits for a resend (a retry, or an event deferred behind a
    /// failed one).
    pub(crate) fn finish<'a>(
        &mut self,
        ticket: Ticket,
        events: impl IntoIterator<Item = &'a Event>,
        answers: &[Delivery],
    ) {
        self.mark = events
            .into_iter()
            .zip(answers)
            .filter(|(_, answer)| matches!(answer, Delivery::Retry { .. } | Delivery::Deferred))
            .map(|(event, _)| place(event))
            .min()
            .map(|mark| (mark, ticket.number));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use sluice_runtime::{testing, Op};

    fn at(index: u32) -> Event {
        testing::event("t", Op::Insert, 1, index)
    }

    /// Batch `number`, handed over when the engine had the answers up to batch `knows`.
    fn ticket(number: u64, knows: u64) -> Ticket {
        Ticket { number, knows }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_run_in_the_order_they_were_handed_over() {
        let mut chain = Chain::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut pending = Vec::new();
        // The first batch takes longest: a chain that did not wait would finish it last.
        for (n, delay) in [(0, 30), (1, 20), (2, 10), (3, 0)] {
            let log = log.clone();
            pending.push(chain.hand_over(1, move |_| async move {
                log.lock().unwrap().push(format!("start {n}"));
                tokio::time::sleep(Duration::from_millis(delay)).await;
                log.lock().unwrap().push(format!("end {n}"));
                vec![Delivery::Delivered]
            }));
        }
        for answers in pending {
            assert_eq!(answers.await, [Delivery::Delivered]);
        }
        let expected: Vec<String> = (0..4)
            .flat_map(|n| [format!("start {n}"), format!("end {n}")])
            .collect();
        assert_eq!(*log.lock().unwrap(), expected);
    }

    #[tokio::test]
    async fn tickets_say_which_answers_the_engine_had() {
        let mut chain = Chain::default();
        let tickets = Arc::new(Mutex::new(Vec::new()));
        let hand_over = |chain: &mut Chain| {
            let tickets = tickets.clone();
            chain.hand_over(1, move |ticket| {
                tickets.lock().unwrap().push(ticket);
                async { vec![Delivery::Delivered] }
            })
        };
        let first = hand_over(&mut chain);
        let second = hand_over(&mut chain);
        first.await;
        let third = hand_over(&mut chain);
        second.await;
        third.await;
        let fourth = hand_over(&mut chain);
        fourth.await;
        assert_eq!(
            *tickets.lock().unwrap(),
            [ticket(1, 0), ticket(2, 0), ticket(3, 1), ticket(4, 3)]
        );
    }

    #[tokio::test]
    async fn a_task_that_fails_answers_retry_and_the_chain_goes_on() {
        let mut chain = Chain::default();
        let failed = chain.hand_over(2, |_| async { panic!("a bug") });
        let next = chain.hand_over(1, |_| async { vec![Delivery::Delivered] });
        let answers = failed.await;
        assert_eq!(answers.len(), 2);
        assert!(answers.iter().all(
            |a| matches!(a, Delivery::Retry { reason, .. } if reason.contains("task failed"))
        ));
        assert_eq!(next.await, [Delivery::Delivered]);
    }

    #[test]
    fn after_a_retry_only_the_resend_runs() {
        let mut gate = Gate::default();
        let first: Vec<Event> = (0..4).map(at).collect();
        assert!(gate.admits(place(&first[0]), ticket(1, 0)));
        gate.begin(place(&first[0]), ticket(1, 0));
        // Event 1 failed for a while, event 2 (same key) waits behind it.
        let answers = [
            Delivery::Delivered,
            Delivery::retry("OOM"),
            Delivery::Deferred,
            Delivery::rejected("WRONGTYPE"),
        ];
        gate.finish(ticket(1, 0), &first, &answers);
        let later = at(10);
        assert!(
            !gate.admits(place(&later), ticket(2, 0)),
            "a later batch waits"
        );
        assert!(
            gate.admits(place(&first[1]), ticket(3, 1)),
            "the resend runs"
        );
        gate.begin(place(&first[1]), ticket(3, 1));
        gate.finish(
            ticket(3, 1),
            &first[1..3],
            &[Delivery::Delivered, Delivery::Delivered],
        );
        assert!(
            gate.admits(place(&later), ticket(2, 0)),
            "once it went through"
        );
    }

    #[test]
    fn a_batch_handed_over_knowing_of_the_failure_runs() {
        let mut gate = Gate::default();
        let first: Vec<Event> = (0..2).map(at).collect();
        gate.begin(place(&first[0]), ticket(1, 0));
        // The engine keeps event 1 back itself (`dlq.on_key: hold`) and sends batch 2.
        gate.finish(
            ticket(1, 0),
            &first,
            &[Delivery::rejected("x"), Delivery::Deferred],
        );
        assert!(!gate.admits(place(&at(5)), ticket(2, 0)));
        assert!(gate.admits(place(&at(5)), ticket(2, 1)));
        gate.begin(place(&at(5)), ticket(2, 1));
        gate.finish(ticket(2, 1), &[at(5)], &[Delivery::Delivered]);
        assert!(gate.admits(place(&at(6)), ticket(3, 1)));
    }

    #[test]
    fn rejections_do_not_hold_later_batches() {
        let mut gate = Gate::default();
        let batch: Vec<Event> = (0..2).map(at).collect();
        gate.begin(place(&batch[0]), ticket(1, 0));
        gate.finish(
            ticket(1, 0),
            &batch,
            &[Delivery::rejected("x"), Delivery::Delivered],
        );
        assert!(gate.admits(place(&at(5)), ticket(2, 0)));
    }

    #[test]
    fn a_batch_that_never_answered_holds_later_ones() {
        let mut gate = Gate::default();
        gate.begin(place(&at(3)), ticket(1, 0));
        assert!(!gate.admits(place(&at(4)), ticket(2, 0)));
        assert!(gate.admits(place(&at(3)), ticket(2, 0)));
        // Fan-out events share a position and follow it.
        let mut fanned = at(3);
        fanned.fanout = 1;
        assert!(!gate.admits(place(&fanned), ticket(2, 0)));
        // Its task failed: the engine took its Retry answers and sends what it chooses.
        assert!(gate.admits(place(&at(4)), ticket(2, 1)));
    }
}
