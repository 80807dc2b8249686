//! Where every sink stands, and what the slot may therefore confirm.
//!
//! Each sink driver records what it has delivered ([`SinkProgress::advance`]); the offset
//! committer makes that durable in the state store and marks it
//! ([`SinkProgress::mark_durable`]); the engine's acknowledgement task asks
//! [`Progress::confirmable_lsn`] what the source may acknowledge upstream, and wakes on
//! [`Progress::durable_changes`]. Only durable positions count, so the slot never forgets
//! WAL that a crash would need.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::lsn::{Lsn, Position};
use crate::wait::Applied;

/// A sink's committed position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offset {
    /// The last event delivered; nothing at or before it is delivered again.
    pub position: Position,
    /// The end LSN of the last transaction delivered whole: the slot may confirm this.
    pub flush_lsn: Lsn,
    /// Commit time of the last delivered event (microseconds since the Unix epoch).
    pub commit_ts_micros: i64,
}

#[derive(Default)]
struct SinkState {
    /// Journal sequence number after the last entry this sink has finished.
    done_seq: u64,
    offset: Offset,
    durable_seq: u64,
    durable: Offset,
    dirty: bool,
    stopped: Option<String>,
}

/// Counters of one sink, exported as Prometheus metrics with a `sink` label
/// ([`crate::telemetry`]).
pub struct SinkCounters {
    pub delivered: AtomicU64,
    pub retries: AtomicU64,
    pub rejected: AtomicU64,
    pub skipped: AtomicU64,
    /// Events of tables the sink's `tables:` leaves out.
    pub filtered: AtomicU64,
    pub batches: AtomicU64,
    /// Events sent to the DLQ (failed permanently).
    pub parked: AtomicU64,
    /// Events held in the DLQ behind a parked event of their key.
    pub held: AtomicU64,
    /// Parked events delivered by a replay.
    pub replayed: AtomicU64,
    /// Delivered events per op ([`crate::telemetry::op_index`]).
    pub delivered_by_op: [AtomicU64; crate::telemetry::OPS.len()],
    /// Events parked per stage (`sink` or the failing transform's name).
    pub parked_by_stage: crate::telemetry::Tally<String>,
    /// Answers of the destination by HTTP status, for sinks that speak HTTP.
    pub http_statuses: crate::telemetry::Tally<u16>,
    /// Seconds from an event's commit to its delivery.
    pub latency: crate::telemetry::Histogram,
}

impl Default for SinkCounters {
    fn default() -> Self {
        SinkCounters {
            delivered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            held: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            delivered_by_op: Default::default(),
            parked_by_stage: Default::default(),
            http_statuses: Default::default(),
            latency: crate::telemetry::Histogram::new(crate::telemetry::LATENCY_BUCKETS),
        }
    }
}

/// The progress of one sink.
pub struct SinkProgress {
    pub name: String,
    pub counters: SinkCounters,
    /// Commit time (µs since the epoch) of the oldest event handed to the sink and not yet
    /// answered; 0 when nothing is in flight. With the journal's oldest unread event, what
    /// lag in seconds is measured from.
    pub oldest_in_flight_ts: AtomicI64,
    state: Mutex<SinkState>,
    /// Bumped whenever a sink's durable position moves or it stops.
    changed: Arc<watch::Sender<u64>>,
    /// Through which LSN the destination has applied every change (read-your-writes).
    pub applied: Applied,
    /// The pipeline's idle mark, shared with [`Progress`].
    idle: Arc<Mutex<Option<IdleMark>>>,
}

impl SinkProgress {
    /// The last position this sink finished (delivered or parked): before this run, what
    /// the state store held; since, what the driver recorded. Nothing at or before it is
    /// sent again.
    pub fn committed(&self) -> Offset {
        self.state.lock().unwrap().offset
    }

    /// The sink starts reading the journal at `seq`: what is before it counts as finished.
    pub fn start_at(&self, seq: u64) {
        let mut s = self.state.lock().unwrap();
        s.done_seq = seq;
        s.durable_seq = seq;
    }

    /// An operator moved the sink back to `offset` (already committed to the state store),
    /// to read the journal again from `seq`.
    pub fn rewind_to(&self, seq: u64, offset: Offset) {
        let mut s = self.state.lock().unwrap();
        s.offset = offset;
        s.durable = offset;
        s.done_seq = seq;
        s.durable_seq = seq;
        s.dirty = false;
        drop(s);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Record that every journal entry before `done_seq` is finished, up to `offset`.
    pub fn advance(&self, done_seq: u64, offset: Offset) {
        let mut s = self.state.lock().unwrap();
        s.done_seq = done_seq;
        if offset != s.offset {
            s.offset = offset;
            s.dirty = true;
        }
        drop(s);
        let idle = *self.idle.lock().unwrap();
        let through = match idle {
            Some(mark) if done_seq >= mark.seq => offset.flush_lsn.max(mark.wal_end),
            _ => offset.flush_lsn,
        };
        tracing::trace!(sink = %self.name, done_seq, flush = %offset.flush_lsn, idle = ?idle, %through, "applied");
        self.applied.advance(through);
    }

    /// The journal sequence number after the last entry this sink finished.
    pub fn done_seq(&self) -> u64 {
        self.state.lock().unwrap().done_seq
    }

    /// The offset committer wrote this offset durably.
    pub fn mark_durable(&self, done_seq: u64, offset: Offset) {
        let mut s = self.state.lock().unwrap();
        s.durable_seq = s.durable_seq.max(done_seq);
        s.durable = offset;
        drop(s);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Take what is not yet written to the state store.
    pub fn take_dirty(&self) -> Option<(u64, Offset)> {
        let mut s = self.state.lock().unwrap();
        if !s.dirty {
            // Nothing new to write, but entries without events (commits) may have finished.
            if s.done_seq > s.durable_seq && s.offset == s.durable {
                s.durable_seq = s.done_seq;
                drop(s);
                self.changed.send_modify(|n| *n += 1);
            }
            return None;
        }
        s.dirty = false;
        Some((s.done_seq, s.offset))
    }

    /// Writing the offset taken by [`Self::take_dirty`] failed: write it next time.
    pub fn redirty(&self) {
        self.state.lock().unwrap().dirty = true;
    }

    pub fn durable(&self) -> (u64, Offset) {
        let s = self.state.lock().unwrap();
        (s.durable_seq, s.durable)
    }

    /// Stop this sink for good in this run, with the reason shown in `status`.
    pub fn stop(&self, reason: String) {
        self.state.lock().unwrap().stopped = Some(reason);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The sink goes on after a stop (an operator dealt with its dead letters).
    pub fn resume(&self) {
        self.state.lock().unwrap().stopped = None;
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn stopped(&self) -> Option<String> {
        self.state.lock().unwrap().stopped.clone()
    }
}

/// What the source knew when it last saw the server idle.
#[derive(Clone, Copy, Debug)]
struct IdleMark {
    /// The journal head when the keepalive arrived outside any transaction.
    seq: u64,
    /// The server's WAL end in that keepalive.
    wal_end: Lsn,
}

/// Progress of the whole pipeline: what the engine appended, and every sink's position.
/// (What the source knows of its upstream is in [`crate::source::SourceStatus`].)
pub struct Progress {
    sinks: Vec<Arc<SinkProgress>>,
    idle: Arc<Mutex<Option<IdleMark>>>,
    changed: Arc<watch::Sender<u64>>,
    /// Events appended to the journal.
    pub events_read: AtomicU64,
    /// Transactions appended to the journal.
    pub transactions_read: AtomicU64,
}

impl Progress {
    /// `sinks`: each sink's name and its committed offset from the state store.
    pub fn new(sinks: Vec<(String, Offset)>) -> Arc<Self> {
        let changed = Arc::new(watch::channel(0).0);
        let idle = Arc::new(Mutex::new(None));
        let sinks = sinks
            .into_iter()
            .map(|(name, offset)| {
                Arc::new(SinkProgress {
                    name,
                    counters: SinkCounters::default(),
                    state: Mutex::new(SinkState {
                        offset,
                        durable: offset,
                        ..Default::default()
                    }),
                    changed: changed.clone(),
                    oldest_in_flight_ts: AtomicI64::new(0),
                    applied: Applied::new(offset.flush_lsn),
                    idle: idle.clone(),
                })
            })
            .collect();
        Arc::new(Progress {
            sinks,
            idle,
            changed,
            events_read: AtomicU64::new(0),
            transactions_read: AtomicU64::new(0),
        })
    }

    /// Changes whenever a sink's durable position moves or a sink stops.
    pub fn durable_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolves once every sink has durably finished the journal up to `head`, or stopped.
    pub async fn settled(&self, head: u64) {
        let mut changes = self.durable_changes();
        loop {
            let settled = self
                .sinks
                .iter()
                .all(|s| s.stopped().is_some() || s.durable().0 >= head);
            if settled || changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// The highest position any sink committed before this run or since.
    pub fn last_committed(&self) -> Position {
        self.sinks
            .iter()
            .map(|s| s.durable().1.position)
            .max()
            .unwrap_or(Position::ZERO)
    }

    pub fn sinks(&self) -> &[Arc<SinkProgress>] {
        &self.sinks
    }

    pub fn sink(&self, name: &str) -> Option<&Arc<SinkProgress>> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// The lowest position any sink has committed: where streaming must resume.
    pub fn resume_lsn(&self) -> Lsn {
        self.sinks
            .iter()
            .map(|s| s.durable().1.flush_lsn)
            .min()
            .unwrap_or(Lsn::ZERO)
    }

    /// The source saw a keepalive with `wal_end` while outside any transaction, with the
    /// journal's head at `seq`: once every sink has durably finished `seq`, nothing before
    /// `wal_end` is still needed.
    pub fn record_idle(&self, seq: u64, wal_end: Lsn) {
        *self.idle.lock().unwrap() = Some(IdleMark { seq, wal_end });
        tracing::trace!(seq, %wal_end, "idle mark");
        // Sinks that finished everything before it have applied everything up to it.
        for sink in &self.sinks {
            if sink.done_seq() >= seq {
                sink.applied.advance(wal_end);
            }
        }
    }

    /// The source entered a transaction: the idle mark no longer describes the present.
    pub fn clear_idle(&self) {
        *self.idle.lock().unwrap() = None;
    }

    /// Every sink (stopped ones included) has durably finished the journal before this.
    pub fn min_durable_seq(&self) -> u64 {
        self.sinks.iter().map(|s| s.durable().0).min().unwrap_or(0)
    }

    /// The last idle mark: the journal head when the source saw the server idle, and the
    /// server's WAL end then.
    pub fn idle_mark(&self) -> Option<(u64, Lsn)> {
        self.idle.lock().unwrap().map(|m| (m.seq, m.wal_end))
    }

    /// Whether every sink has durably finished everything in the journal up to `head`.
    pub fn all_durable(&self, head: u64) -> bool {
        self.sinks.iter().all(|s| s.durable().0 >= head)
    }

    /// What the slot may confirm as flushed: the lowest durable transaction end of all
    /// sinks (stopped ones included, so their WAL is kept), or the server's WAL end when
    /// every sink has durably finished everything the source saw before it was idle.
    pub fn confirmable_lsn(&self) -> Lsn {
        let min_flush = self.resume_lsn();
        let idle = *self.idle.lock().unwrap();
        match idle {
            Some(mark) if self.all_durable(mark.seq) => min_flush.max(mark.wal_end),
            _ => min_flush,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(commit: u64, index: u32, flush: u64) -> Offset {
        Offset {
            position: Position::new(Lsn(commit), index),
            flush_lsn: Lsn(flush),
            commit_ts_micros: 0,
        }
    }

    #[test]
    fn the_slot_confirms_only_what_every_sink_has_made_durable() {
        let p = Progress::new(vec![
            ("a".into(), Offset::default()),
            ("b".into(), Offset::default()),
        ]);
        let (a, b) = (&p.sinks()[0], &p.sinks()[1]);
        a.advance(10, offset(100, 3, 108));
        b.advance(10, offset(100, 3, 108));
        assert_eq!(p.confirmable_lsn(), Lsn(0), "delivered is not yet durable");
        let (seq, off) = a.take_dirty().unwrap();
        a.mark_durable(seq, off);
        assert_eq!(p.confirmable_lsn(), Lsn(0), "b is not durable yet");
        let (seq, off) = b.take_dirty().unwrap();
        b.mark_durable(seq, off);
        assert_eq!(p.confirmable_lsn(), Lsn(108));
    }

    #[test]
    fn an_idle_server_lets_the_slot_advance_once_everything_is_durable() {
        let p = Progress::new(vec![("a".into(), offset(100, 0, 108))]);
        let a = &p.sinks()[0];
        p.record_idle(5, Lsn(5000));
        assert_eq!(p.confirmable_lsn(), Lsn(108), "sink has not finished seq 5");
        a.advance(5, offset(100, 0, 108));
        assert!(
            a.take_dirty().is_none(),
            "no new offset, only commits finished"
        );
        assert_eq!(p.confirmable_lsn(), Lsn(5000));
        p.clear_idle();
        assert_eq!(p.confirmable_lsn(), Lsn(108));
    }
}
