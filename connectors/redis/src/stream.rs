//! Stream mode: every event's JSON envelope appended to a stream, by a script that appends
//! a segment's entries of one stream in order and stops at the first that fails.
//!
//! The entry id is the event's position (`<commit_lsn>-<index * 65536 + fanout>`), not
//! the time of the write. Positions increase along the stream, so appends stay in stream
//! order, and Redis refuses an event that is already there (its id is equal to or smaller
//! than the stream's last one): a replay or a retry after a lost reply is counted
//! delivered without a second entry. Each entry has one field, `event`, holding the
//! envelope. `maxlen` trims approximately (`MAXLEN ~`), which Redis does cheaply, node by
//! node.
//!
//! Why a script rather than a pipeline of `XADD`s: when one `XADD` fails for a moment (out
//! of memory, a read-only replica) and a later one to the same stream goes through, the
//! stream's top is past the failed entry, and its retry is refused as "not above the top",
//! which looks exactly like an entry that is there already: the event would be lost
//! silently. The script stops at the first failure, so the entries after it are answered
//! deferred, not attempted, and sent again after it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use redis::{Cmd, Value};
use sluice_runtime::{Delivery, Event};

use crate::batch::{Call, Replies};
use crate::client::Lua;
use crate::config::StreamSettings;
use crate::encode::{Args, StreamId};
use crate::retry::script_error;

/// The field each entry holds the envelope in.
pub const ENVELOPE_FIELD: &str = "event";

/// The stream script.
const STREAM_SCRIPT: &str = concat!(
    include_str!("lua/reply.lua"),
    include_str!("lua/stream.lua")
);

/// The most entries one script call appends. A stream with more entries in one segment
/// gets one call per round trip, each after the one before went through.
pub(crate) const MAX_ENTRIES_PER_CALL: usize = 512;

/// Stream mode's settings and script. Shared by the encoding (on the engine's task) and
/// the calls in flight.
pub(crate) struct Stream {
    settings: StreamSettings,
    pub(crate) script: Lua,
}

impl Stream {
    pub(crate) fn new(settings: StreamSettings) -> Self {
        Stream {
            settings,
            script: Lua::new(STREAM_SCRIPT),
        }
    }

    /// The script calls that append `batch[range]`, a segment (a truncate alone is one
    /// too: it is appended like any event), in rounds: round `r` holds the `r`-th call of
    /// each stream. Events that cannot be appended (a stream template that does not
    /// render) are answered in `answers` at once; later events of such a key are answered
    /// deferred and not sent.
    pub(crate) fn encode(
        &self,
        batch: &[Arc<Event>],
        range: Range<usize>,
        answers: &mut [Option<Delivery>],
    ) -> Vec<Vec<Call>> {
        // Each stream's entries, in order, by stream name.
        let mut streams: Vec<(String, Vec<usize>)> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut failed: Vec<u64> = Vec::new();
        let mut name = String::new();
        for index in range {
            let event = &batch[index];
            if !failed.is_empty() && event.ordering_key().is_some_and(|k| failed.contains(&k)) {
                answers[index] = Some(Delivery::Deferred);
                continue;
            }
            name.clear();
            let rendered = self
                .settings
                .stream
                .render_into(event, event.key.as_ref(), &mut name)
                .map_err(|e| e.to_string())
                .and_then(|()| StreamId::of(event).map(|_| ()));
            if let Err(reason) = rendered {
                failed.extend(event.ordering_key());
                answers[index] = Some(Delivery::rejected(reason));
                continue;
            }
            match by_name.get(name.as_str()) {
                Some(&s) => streams[s].1.push(index),
                None => {
                    by_name.insert(name.clone(), streams.len());
                    streams.push((name.clone(), vec![index]));
                }
            }
        }
        let mut rounds: Vec<Vec<Call>> = Vec::new();
        for (group, (stream, entries)) in streams.iter().enumerate() {
            for (round, chunk) in entries.chunks(MAX_ENTRIES_PER_CALL).enumerate() {
                if rounds.len() <= round {
                    rounds.push(Vec::new());
                }
                rounds[round].push(Call {
                    cmd: self.command(batch, stream, chunk),
                    rows: chunk.to_vec(),
                    group,
                });
            }
        }
        rounds
    }

    /// The EVALSHA call appending `entries` to `stream` (see `lua/stream.lua`).
    fn command(&self, batch: &[Arc<Event>], stream: &str, entries: &[usize]) -> Cmd {
        let size: usize = entries.iter().map(|&i| batch[i].json().len() + 32).sum();
        let mut cmd = Cmd::with_capacity(6 + 2 * entries.len(), size + stream.len() + 64);
        cmd.arg("EVALSHA").arg(&self.script.sha).arg(1).arg(stream);
        match self.settings.maxlen {
            Some(maxlen) => cmd.arg_int(maxlen),
            None => cmd.arg_concat(&[]),
        };
        cmd.arg(ENVELOPE_FIELD);
        for &i in entries {
            let event = &batch[i];
            let id = StreamId::of(event).expect("checked when the entry was planned");
            cmd.arg_display(id);
            cmd.arg_concat(&[event.json()]);
        }
        cmd
    }

    /// Answer the entries of `call` from the script's reply: appended or present already
    /// is delivered, the failed one gets its error's answer, the ones after it (not
    /// attempted) are deferred.
    pub(crate) fn answer(
        &self,
        batch: &[Arc<Event>],
        call: &Call,
        reply: &Value,
        answers: &mut [Option<Delivery>],
    ) {
        let what = |index: usize| self.what(&batch[index]);
        let replies = match Replies::parse(reply, 1..=call.rows.len()) {
            Ok(replies) => replies,
            Err(failure) => {
                for &index in &call.rows {
                    answers[index] = Some(failure.delivery(&what(index)));
                }
                return;
            }
        };
        let mut statuses = replies.rows();
        for &index in &call.rows {
            answers[index] = Some(match statuses.next() {
                Some((b'a', _)) => Delivery::Delivered,
                Some((b'p', _)) => {
                    tracing::trace!(
                        event = %batch[index].id(),
                        "redis stream: the entry is there already (or the stream is past it); skipped"
                    );
                    Delivery::Delivered
                }
                Some((b'e', text)) => script_error(text, &what(index)),
                Some((other, _)) => Delivery::retry(format!(
                    "redis answered {} with the status `{}`, which sluice does not know",
                    what(index),
                    char::from(other).escape_default()
                )),
                None => Delivery::Deferred,
            });
        }
    }

    /// What a message calls the append of `event`: "entry 4096-0 of stream `public.items`".
    fn what(&self, event: &Event) -> String {
        let stream = self.settings.stream.render(event).unwrap_or_default();
        match StreamId::of(event) {
            Ok(id) => format!("entry {id} of stream `{stream}`"),
            Err(_) => format!("the entry of {} in stream `{stream}`", event.id()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::args;
    use sluice_runtime::template::Template;
    use sluice_runtime::{testing, Op};

    fn stream(template: &str, maxlen: Option<u64>) -> Stream {
        Stream::new(StreamSettings {
            stream: Template::parse(template).unwrap(),
            maxlen,
        })
    }

    fn entry(table: &str, index: u32) -> Arc<Event> {
        Arc::new(testing::event(table, Op::Insert, 0x1000, index))
    }

    #[test]
    fn each_stream_gets_its_entries_in_order() {
        let s = stream("{table}", Some(100));
        let batch = vec![entry("a", 0), entry("b", 1), entry("a", 2)];
        let mut answers = vec![None; 3];
        let rounds = s.encode(&batch, 0..3, &mut answers);
        assert!(answers.iter().all(Option::is_none));
        assert_eq!(rounds.len(), 1);
        let calls = &rounds[0];
        assert_eq!((calls[0].rows.clone(), calls[0].group), (vec![0, 2], 0));
        assert_eq!((calls[1].rows.clone(), calls[1].group), (vec![1], 1));
        let got = args(&calls[0].cmd);
        assert_eq!(got[2..7], ["1", "a", "100", "event", "4096-0"]);
        assert_eq!(got[7].as_bytes(), &batch[0].json()[..]);
        assert_eq!(got[8], "4096-131072");
        assert_eq!(
            args(&stream("{table}", None).encode(&batch, 1..2, &mut answers)[0][0].cmd)[4],
            ""
        );
    }

    #[test]
    fn a_long_segment_of_one_stream_takes_several_rounds() {
        let s = stream("{table}", None);
        let batch: Vec<_> = (0..MAX_ENTRIES_PER_CALL as u32 + 1)
            .map(|i| entry("a", i))
            .collect();
        let mut answers = vec![None; batch.len()];
        let rounds = s.encode(&batch, 0..batch.len(), &mut answers);
        assert_eq!(rounds.len(), 2);
        assert_eq!(rounds[0][0].rows.len(), MAX_ENTRIES_PER_CALL);
        assert_eq!(rounds[1][0].rows, [MAX_ENTRIES_PER_CALL]);
        assert_eq!(rounds[0][0].group, rounds[1][0].group);
    }

    #[test]
    fn entries_after_the_failed_one_are_deferred() {
        let s = stream("{table}", None);
        let batch: Vec<_> = (0..4).map(|i| entry("a", i)).collect();
        let call = Call {
            cmd: Cmd::new(),
            rows: vec![0, 1, 2, 3],
            group: 0,
        };
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            text("ape"),
            text("OOM command not allowed when used memory > 'maxmemory'."),
        ]);
        let mut answers = vec![None; 4];
        s.answer(&batch, &call, &reply, &mut answers);
        let answers: Vec<Delivery> = answers.into_iter().map(Option::unwrap).collect();
        assert_eq!(answers[..2], [Delivery::Delivered, Delivery::Delivered]);
        match &answers[2] {
            Delivery::Retry { reason, .. } => {
                assert!(
                    reason.contains("entry 4096-131072 of stream `a`"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(answers[3], Delivery::Deferred);
    }

    #[test]
    fn events_whose_stream_does_not_render_are_rejected() {
        let s = stream("{event.type}", None);
        let batch = vec![entry("a", 0)];
        let mut answers = vec![None];
        assert!(s.encode(&batch, 0..1, &mut answers).is_empty());
        assert!(
            matches!(&answers[0], Some(Delivery::Rejected { reason }) if reason.contains("op: event"))
        );
    }
}
