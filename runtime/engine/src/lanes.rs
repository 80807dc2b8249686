//! The lane executor: how a sink parallelises a batch without breaking per-key order.
//!
//! [`plan`] cuts a batch into *segments* at barriers (events whose
//! [`Event::ordering_key`] is `None`, i.e. truncates) and each segment into *lanes*, one
//! per ordering key. [`run_lanes`] runs the lanes of a segment concurrently, each lane
//! sequentially, and a segment only after the previous one was wholly delivered; a
//! failure defers the rest of its lane and every later segment. Sinks that send one
//! request per event use [`run_lanes`]; sinks that send a whole batch in one request (a
//! bulk API) send it segment by segment and pass the per-item answers through
//! [`settle_bulk`], which applies the same rule after the fact. Either way the answers
//! keep the [`crate::sink::Sink`] contract.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::event::Event;
use crate::sink::Delivery;

/// Indices into the batch, in batch order.
pub type Lane = Vec<usize>;

/// Lanes that may run concurrently; lanes in order of their first event.
pub type Segment = Vec<Lane>;

/// The batch as segments of lanes: segments split at barriers (a barrier is a segment of
/// its own), lanes one per ordering key, both in batch order.
pub fn plan(batch: &[Arc<Event>]) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut current: Segment = Vec::new();
    let mut by_key: HashMap<u64, usize> = HashMap::new();
    for (i, event) in batch.iter().enumerate() {
        match event.ordering_key() {
            Some(key) => {
                let lane = *by_key.entry(key).or_insert_with(|| {
                    current.push(Vec::new());
                    current.len() - 1
                });
                current[lane].push(i);
            }
            None => {
                if !current.is_empty() {
                    segments.push(std::mem::take(&mut current));
                    by_key.clear();
                }
                segments.push(vec![vec![i]]);
            }
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

/// The batch cut at barriers as ranges: runs of keyed events, and each barrier alone. For
/// sinks that send a run in one request (a pipeline, a bulk call, a publish loop) and need
/// no lanes inside it.
pub fn barrier_ranges(batch: &[Arc<Event>]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, event) in batch.iter().enumerate() {
        if event.ordering_key().is_none() {
            if start < i {
                out.push(start..i);
            }
            out.push(i..i + 1);
            start = i + 1;
        }
    }
    if start < batch.len() {
        out.push(start..batch.len());
    }
    out
}

/// Deliver each event with `send` (`send(i, event)` for `batch[i]`), with per-key order
/// kept: the lanes of a segment run concurrently, at most `concurrency` at a time, each
/// lane one event after the other; a segment starts only once the one before was wholly
/// delivered. After an event that is not delivered, the rest of its lane and every later
/// segment are answered [`Delivery::Deferred`] without being sent. All futures are polled
/// from the caller's task (no spawning). One answer per event, in batch order.
pub async fn run_lanes<'a, F, Fut>(
    batch: &'a [Arc<Event>],
    concurrency: usize,
    send: F,
) -> Vec<Delivery>
where
    F: Fn(usize, &'a Arc<Event>) -> Fut,
    Fut: Future<Output = Delivery>,
{
    let mut out: Vec<Option<Delivery>> = vec![None; batch.len()];
    let mut blocked = false;
    let send = &send;
    for segment in plan(batch) {
        if blocked {
            // An earlier segment did not get through: a barrier stands in between.
            for i in segment.into_iter().flatten() {
                out[i] = Some(Delivery::Deferred);
            }
            continue;
        }
        let mut lanes = stream::iter(segment)
            .map(|lane| async move {
                let mut results = Vec::with_capacity(lane.len());
                let mut lane_blocked = false;
                for i in lane {
                    let delivery = if lane_blocked {
                        Delivery::Deferred
                    } else {
                        send(i, &batch[i]).await
                    };
                    lane_blocked |= !delivery.is_delivered();
                    results.push((i, delivery));
                }
                results
            })
            .buffer_unordered(concurrency.max(1));
        while let Some(results) = lanes.next().await {
            for (i, delivery) in results {
                blocked |= !delivery.is_delivered();
                out[i] = Some(delivery);
            }
        }
    }
    out.into_iter()
        .map(|d| d.expect("the plan places every event in exactly one lane"))
        .collect()
}

/// Per-item answers of a request that attempted every event of `batch` at once (a bulk
/// API), made to keep the ordering contract: every event after a failed event of its key
/// (retry or rejected), and every event from the first barrier that follows any failure
/// on, is answered [`Delivery::Deferred`], whatever the destination said of it. The
/// engine then sends those again after the failed one, so a destination that applied a
/// later change first ends in the right state. Answers of failed events are kept.
pub fn settle_bulk(batch: &[Arc<Event>], mut results: Vec<Delivery>) -> Vec<Delivery> {
    assert_eq!(batch.len(), results.len(), "one answer per event");
    let mut failed_keys: HashSet<u64> = HashSet::new();
    let mut any_failed = false;
    let mut blocked = false;
    for (event, result) in batch.iter().zip(results.iter_mut()) {
        if blocked {
            *result = Delivery::Deferred;
            continue;
        }
        match event.ordering_key() {
            None if any_failed => {
                blocked = true;
                *result = Delivery::Deferred;
            }
            None => {
                if !result.is_delivered() {
                    blocked = true;
                }
            }
            Some(key) if failed_keys.contains(&key) => *result = Delivery::Deferred,
            Some(key) => {
                if !result.is_delivered() {
                    failed_keys.insert(key);
                    any_failed = true;
                }
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::event::Op;
    use crate::testing;

    fn event(index: u32, op: Op, key: Option<i64>) -> Arc<Event> {
        let mut e = testing::event("t", op, 1, index);
        e.key = key.map(testing::id_row);
        Arc::new(e)
    }

    #[test]
    fn barrier_ranges_cut_the_batch_at_truncates() {
        let insert = |i| crate::testing::insert("t", 1, i);
        let truncate = |i| Arc::new(crate::testing::event("t", crate::event::Op::Truncate, 1, i));
        let batch = vec![insert(0), insert(1), truncate(2), truncate(3), insert(4)];
        assert_eq!(barrier_ranges(&batch), [0..2, 2..3, 3..4, 4..5]);
        assert_eq!(barrier_ranges(&batch[2..3]), vec![0..1]);
        let alone = barrier_ranges(&[truncate(0)]);
        assert_eq!((alone.len(), alone[0].clone()), (1, 0..1));
        assert!(barrier_ranges(&[]).is_empty());
    }

    #[test]
    fn lanes_group_by_key_and_truncates_split_segments() {
        let batch = vec![
            event(0, Op::Insert, Some(1)),
            event(1, Op::Insert, Some(2)),
            event(2, Op::Update, Some(1)),
            event(3, Op::Truncate, None),
            event(4, Op::Insert, Some(1)),
        ];
        assert_eq!(
            plan(&batch),
            vec![vec![vec![0, 2], vec![1]], vec![vec![3]], vec![vec![4]]]
        );
    }

    #[test]
    fn keyless_rows_of_a_table_share_one_lane() {
        let batch = vec![event(0, Op::Insert, None), event(1, Op::Insert, None)];
        assert_eq!(plan(&batch), vec![vec![vec![0, 1]]]);
    }

    /// Keys of events 0..6: 1, 2, 1, 3, truncate, 1.
    fn mixed() -> Vec<Arc<Event>> {
        vec![
            event(0, Op::Insert, Some(1)),
            event(1, Op::Insert, Some(2)),
            event(2, Op::Update, Some(1)),
            event(3, Op::Insert, Some(3)),
            event(4, Op::Truncate, None),
            event(5, Op::Insert, Some(1)),
        ]
    }

    fn names(results: &[Delivery]) -> Vec<&'static str> {
        results
            .iter()
            .map(|d| match d {
                Delivery::Delivered => "ok",
                Delivery::Retry { .. } => "retry",
                Delivery::Deferred => "deferred",
                Delivery::Rejected { .. } => "rejected",
            })
            .collect()
    }

    #[tokio::test]
    async fn a_failure_defers_its_lane_and_every_later_segment_unsent() {
        let batch = mixed();
        let sent = Mutex::new(Vec::new());
        let results = run_lanes(&batch, 4, |i, _| {
            sent.lock().unwrap().push(i);
            async move {
                match i {
                    0 => Delivery::retry("503"),
                    _ => Delivery::Delivered,
                }
            }
        })
        .await;
        assert_eq!(
            names(&results),
            ["retry", "ok", "deferred", "ok", "deferred", "deferred"]
        );
        let mut sent = sent.into_inner().unwrap();
        sent.sort();
        assert_eq!(sent, [0, 1, 3], "deferred events are never sent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_runs_in_order_while_lanes_run_concurrently() {
        let batch = mixed();
        let log = Mutex::new(Vec::new());
        let results = run_lanes(&batch, 8, |i, _| {
            let log = &log;
            async move {
                log.lock().unwrap().push(("start", i));
                // Key 1's first event is slow: key 2 and 3 finish before it.
                let ms = if i == 0 { 50 } else { 5 };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                log.lock().unwrap().push(("end", i));
                Delivery::Delivered
            }
        })
        .await;
        assert!(results.iter().all(Delivery::is_delivered));
        let log = log.into_inner().unwrap();
        let at = |what: (&str, usize)| log.iter().position(|e| *e == what).unwrap();
        assert!(
            at(("end", 1)) < at(("end", 0)),
            "keys run concurrently: {log:?}"
        );
        assert!(
            at(("end", 0)) < at(("start", 2)),
            "one key in order: {log:?}"
        );
        assert!(
            at(("end", 2)) < at(("start", 4)) && at(("end", 3)) < at(("start", 4)),
            "a truncate waits for everything before it: {log:?}"
        );
        assert!(
            at(("end", 4)) < at(("start", 5)),
            "and holds back what follows"
        );
    }

    #[tokio::test]
    async fn no_more_than_concurrency_lanes_at_once() {
        let batch: Vec<_> = (0..20)
            .map(|i| event(i, Op::Insert, Some(i.into())))
            .collect();
        let now = std::sync::atomic::AtomicUsize::new(0);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        run_lanes(&batch, 3, |_, _| {
            let (now, peak) = (&now, &peak);
            async move {
                let n = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
                now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                Delivery::Delivered
            }
        })
        .await;
        assert_eq!(peak.into_inner(), 3);
    }

    #[test]
    fn settle_bulk_defers_what_follows_a_failure_of_its_key_or_a_barrier() {
        let batch = mixed();
        let answered = vec![
            Delivery::rejected("mapping"),
            Delivery::Delivered,
            Delivery::Delivered,
            Delivery::retry("429"),
            Delivery::Delivered,
            Delivery::Delivered,
        ];
        assert_eq!(
            names(&settle_bulk(&batch, answered)),
            ["rejected", "ok", "deferred", "retry", "deferred", "deferred"]
        );
        let all_ok = vec![Delivery::Delivered; batch.len()];
        assert!(settle_bulk(&batch, all_ok)
            .iter()
            .all(Delivery::is_delivered));
        let mut failed_barrier = vec![Delivery::Delivered; batch.len()];
        failed_barrier[4] = Delivery::retry("timeout");
        assert_eq!(
            names(&settle_bulk(&batch, failed_barrier)),
            ["ok", "ok", "ok", "ok", "retry", "deferred"]
        );
    }
}
