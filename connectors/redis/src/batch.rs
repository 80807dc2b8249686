//! A batch, encoded: the steps that write it, and how they run on the connection.
//!
//! A batch is cut at its barriers (truncates) into segments. A segment without barriers
//! becomes script calls ([`Call`]), grouped in *rounds*: one round is one pipeline, one
//! round trip; a call's *group* is what must stay in order (a stream, a set of keys), so a
//! group whose call did not get wholly through sends none of its later calls. A barrier
//! is a step of its own. Steps run one after the other, and after a step that did not get
//! wholly through the later ones are deferred.
//!
//! The encoding runs on the engine's task when the batch is handed over; the steps run
//! later, in the sink's chain of batches in flight (see [`crate::order`]).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::{Range, RangeInclusive};
use std::sync::Arc;

use redis::{Cmd, ServerError, Value};
use sluice_runtime::{Delivery, Event};

use crate::cache::Cache;
use crate::client::{Client, Lua};
use crate::retry::reply_error;

/// A batch ready to run: the events, the answers known before anything is sent, and the
/// steps that write the rest.
pub(crate) struct Work {
    pub events: Vec<Arc<Event>>,
    pub answers: Vec<Option<Delivery>>,
    pub steps: Vec<Step>,
}

/// One step of a batch.
pub(crate) enum Step {
    /// The calls of a segment without barriers (`range` of the batch), round by round.
    Calls {
        range: Range<usize>,
        rounds: Vec<Vec<Call>>,
    },
    /// A truncate that deletes its table's keys (cache mode, `on_truncate: delete`).
    DeleteTable { index: usize, cache: Arc<Cache> },
}

impl Step {
    /// The events of the batch this step answers.
    pub(crate) fn range(&self) -> Range<usize> {
        match self {
            Step::Calls { range, .. } => range.clone(),
            Step::DeleteTable { index, .. } => *index..*index + 1,
        }
    }
}

/// One script call and the events it carries.
pub(crate) struct Call {
    pub cmd: Cmd,
    /// Indices into the batch, in stream order.
    pub rows: Vec<usize>,
    /// Calls of one group run in stream order, one round each.
    pub group: usize,
}

/// Send `rounds` one after the other, each as one pipeline, and answer their rows with
/// `answer(call, reply, answers)`. A call whose group had a row that was not delivered in
/// an earlier round is not sent: its rows are deferred. A failed round trip answers every
/// row it carried [`Delivery::Retry`].
pub(crate) async fn run_rounds(
    client: &mut Client,
    scripts: &[&Lua],
    rounds: Vec<Vec<Call>>,
    answers: &mut [Option<Delivery>],
    answer: impl Fn(&Call, &Value, &mut [Option<Delivery>]),
) {
    let mut failed: HashSet<usize> = HashSet::new();
    for round in rounds {
        let (mut send, skip): (Vec<Call>, Vec<Call>) = round
            .into_iter()
            .partition(|call| !failed.contains(&call.group));
        for call in &skip {
            for &i in &call.rows {
                answers[i] = Some(Delivery::Deferred);
            }
        }
        if send.is_empty() {
            continue;
        }
        let mut pipe = redis::Pipeline::with_capacity(send.len());
        for call in &mut send {
            pipe.add_command(std::mem::take(&mut call.cmd));
        }
        match client.run(&pipe, scripts).await {
            Ok(replies) if replies.len() == send.len() => {
                for (call, reply) in send.iter().zip(&replies) {
                    answer(call, reply, answers);
                }
            }
            Ok(replies) => {
                let reason = format!(
                    "redis at {} answered {} replies to {} calls",
                    client.endpoint(),
                    replies.len(),
                    send.len()
                );
                retry_calls(&send, &reason, answers);
            }
            Err(reason) => {
                tracing::debug!(%reason, calls = send.len(), "redis round trip failed");
                retry_calls(&send, &reason, answers);
            }
        }
        for call in &send {
            let through = call
                .rows
                .iter()
                .all(|&i| answers[i].as_ref().is_some_and(Delivery::is_delivered));
            if !through {
                failed.insert(call.group);
            }
        }
    }
}

fn retry_calls(calls: &[Call], reason: &str, answers: &mut [Option<Delivery>]) {
    for call in calls {
        for &i in &call.rows {
            answers[i] = Some(Delivery::retry(reason));
        }
    }
}

/// A script's reply: one status letter per row it attempted, then the text of each failed
/// row (status `e`), in order.
pub(crate) struct Replies<'a> {
    statuses: &'a [u8],
    errors: &'a [Value],
}

/// A reply that answers no row: an error about the whole call, or a reply of another
/// shape.
pub(crate) enum CallFailure<'a> {
    Refused(&'a ServerError),
    Malformed(String),
}

impl<'a> Replies<'a> {
    /// Read `reply`, which must hold a number of statuses in `count`.
    pub(crate) fn parse(
        reply: &'a Value,
        count: RangeInclusive<usize>,
    ) -> Result<Replies<'a>, CallFailure<'a>> {
        let items = match reply {
            Value::Array(items) => items.as_slice(),
            Value::ServerError(e) => return Err(CallFailure::Refused(e)),
            other => return Err(CallFailure::malformed(other)),
        };
        let statuses = match items.first() {
            Some(Value::BulkString(bytes)) => bytes.as_slice(),
            Some(Value::SimpleString(text)) => text.as_bytes(),
            _ => return Err(CallFailure::malformed(reply)),
        };
        if !count.contains(&statuses.len()) {
            return Err(CallFailure::malformed(reply));
        }
        Ok(Replies {
            statuses,
            errors: &items[1..],
        })
    }

    /// Each attempted row's status, with the error text of a failed one.
    pub(crate) fn rows(&self) -> impl Iterator<Item = (u8, &'a str)> + '_ {
        let mut errors = self.errors.iter();
        self.statuses.iter().map(move |&status| {
            let text = match status {
                b'e' => match errors.next() {
                    Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).unwrap_or("ERR"),
                    Some(Value::SimpleString(text)) => text.as_str(),
                    _ => "ERR the script gave no reason",
                },
                _ => "",
            };
            (status, text)
        })
    }
}

impl CallFailure<'_> {
    fn malformed(reply: &Value) -> Self {
        let mut shown = format!("{reply:?}");
        if shown.len() > 200 {
            let mut end = 200;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push('…');
        }
        CallFailure::Malformed(shown)
    }

    /// The answer for a row of the call that writes `what`.
    pub(crate) fn delivery(&self, what: &str) -> Delivery {
        match self {
            CallFailure::Refused(e) => reply_error(e, what),
            // Not an answer sluice's scripts give: retried (a proxy in the way, say), and
            // the sink stops after `retry.max_elapsed` rather than park every event.
            CallFailure::Malformed(shown) => Delivery::retry(format!(
                "redis answered the script call for {what} with {shown}, which is not a \
                 sluice script's reply"
            )),
        }
    }
}

/// Indices into `rows` grouped into chunks such that every key is in one chunk only,
/// rows in their order within each chunk, and a chunk holds at most `max` rows unless one
/// key has more changes than that. `keys(row)` gives a row's key and, when an update
/// changed it, its previous key: both stay with the row.
pub(crate) fn group_by_keys<'a, T>(
    rows: &'a [T],
    max: usize,
    keys: impl Fn(&'a T) -> (&'a str, Option<&'a str>),
) -> Vec<Vec<usize>> {
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    // Key hash → its chunk. Two keys with the same hash merely share a chunk.
    let mut owner: HashMap<u64, usize, BuildHasherDefault<Prehashed>> = HashMap::default();
    let hashes: Vec<(u64, Option<u64>)> = rows
        .iter()
        .map(|row| {
            let (key, previous) = keys(row);
            (fnv1a(key), previous.map(fnv1a))
        })
        .collect();
    // The chunk that rows of keys not seen before go to.
    let mut open: Option<usize> = None;
    for (r, &(key, previous)) in hashes.iter().enumerate() {
        let mut target: Option<usize> = None;
        for hash in std::iter::once(key).chain(previous) {
            let Some(&chunk) = owner.get(&hash) else {
                continue;
            };
            target = Some(match target {
                Some(t) if t != chunk => merge(&mut chunks, &mut owner, &hashes, t, chunk),
                _ => chunk,
            });
        }
        let chunk = match (target, open) {
            (Some(chunk), _) => chunk,
            (None, Some(chunk)) if chunks[chunk].len() < max.max(1) => chunk,
            (None, _) => {
                chunks.push(Vec::new());
                open = Some(chunks.len() - 1);
                chunks.len() - 1
            }
        };
        chunks[chunk].push(r);
        for hash in std::iter::once(key).chain(previous) {
            owner.insert(hash, chunk);
        }
    }
    chunks.retain(|chunk| !chunk.is_empty());
    chunks
}

/// Move chunk `b`'s rows into chunk `a` (a row whose old and new keys sit in both ties
/// them), in row order; the chunk that remains.
fn merge(
    chunks: &mut [Vec<usize>],
    owner: &mut HashMap<u64, usize, BuildHasherDefault<Prehashed>>,
    hashes: &[(u64, Option<u64>)],
    a: usize,
    b: usize,
) -> usize {
    let (keep, gone) = (a.min(b), a.max(b));
    let moved = std::mem::take(&mut chunks[gone]);
    for &r in &moved {
        let (key, previous) = hashes[r];
        for hash in std::iter::once(key).chain(previous) {
            owner.insert(hash, keep);
        }
    }
    chunks[keep].extend(moved);
    chunks[keep].sort_unstable();
    keep
}

/// FNV-1a over `text`.
fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in text.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(rows: &[(&'static str, Option<&'static str>)], max: usize) -> Vec<Vec<usize>> {
        group_by_keys(rows, max, |&(key, previous)| (key, previous))
    }

    #[test]
    fn distinct_keys_fill_chunks_in_order() {
        let rows: Vec<_> = ["a", "b", "c", "d", "e"].map(|k| (k, None)).into();
        assert_eq!(group(&rows, 2), [vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(group(&rows, 10), [vec![0, 1, 2, 3, 4]]);
        assert!(group(&[], 2).is_empty());
    }

    #[test]
    fn a_keys_rows_stay_in_one_chunk_in_order() {
        let rows = [
            ("a", None),
            ("b", None),
            ("c", None),
            ("a", None),
            ("d", None),
            ("a", None),
        ];
        // `a` stays in the first chunk, past its size.
        assert_eq!(group(&rows, 2), [vec![0, 1, 3, 5], vec![2, 4]]);
    }

    #[test]
    fn a_key_change_ties_its_old_and_new_keys() {
        let rows = [
            ("a", None),
            ("b", None),
            ("c", None),
            ("d", None),
            // `b` moves to `c`: the chunks of both merge, in row order.
            ("c", Some("b")),
            ("e", None),
            ("b", None),
        ];
        assert_eq!(
            group(&rows, 1),
            [vec![0], vec![1, 2, 4, 6], vec![3], vec![5]]
        );
    }

    #[test]
    fn replies_pair_failed_rows_with_their_errors() {
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![text("aeae"), text("OOM one"), text("ERR two")]);
        let replies = Replies::parse(&reply, 4..=4).ok().unwrap();
        assert_eq!(
            replies.rows().collect::<Vec<_>>(),
            [(b'a', ""), (b'e', "OOM one"), (b'a', ""), (b'e', "ERR two")]
        );
        assert!(matches!(
            Replies::parse(&reply, 5..=5),
            Err(CallFailure::Malformed(_))
        ));
        assert!(Replies::parse(&reply, 1..=5).is_ok());
        assert!(matches!(
            Replies::parse(&Value::Okay, 1..=1),
            Err(CallFailure::Malformed(_))
        ));
        let refused =
            redis::parse_redis_value(b"-BUSY Redis is busy running a script\r\n").unwrap();
        let Err(failure) = Replies::parse(&refused, 1..=1) else {
            panic!("an error reply answers no row")
        };
        assert!(matches!(failure.delivery("x"), Delivery::Retry { .. }));
        let malformed = CallFailure::malformed(&text(&"x".repeat(1000)));
        match malformed.delivery("the write of `k`") {
            Delivery::Retry { reason, .. } => assert!(reason.len() < 400, "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
