//! Stream mode: every event's JSON envelope appended to a stream, one XADD per event.
//!
//! The entry id is the event's position (`<commit_lsn>-<index * 65536 + fanout>`), not
//! the time of the write. Positions increase along the stream, so appends stay in stream
//! order, and Redis refuses an event that is already there (its id is equal to or smaller
//! than the stream's last one): a replay or a retry after a lost reply is counted delivered
//! without a second entry. Each entry has one field, `event`, holding the envelope.
//! `maxlen` trims approximately (`MAXLEN ~`), which Redis does cheaply, node by node.

use redis::{Pipeline, Value};
use sluice_runtime::{Delivery, Event};

use crate::config::StreamSettings;
use crate::encode;
use crate::retry::reply_error;

/// The field each entry holds the envelope in.
pub const ENVELOPE_FIELD: &str = "event";

/// What Redis says when an entry's id is not above the stream's last one.
const NOT_ABOVE_TOP: &str = "equal or smaller than the target stream top item";

/// Stream mode's settings.
pub(crate) struct Stream {
    settings: StreamSettings,
}

/// What the reply to one XADD is about.
pub(crate) struct Pending {
    stream: String,
    id: String,
}

impl Stream {
    pub(crate) fn new(settings: StreamSettings) -> Self {
        Stream { settings }
    }

    /// Add the XADD of `event` to `pipe`. `Err`: the event cannot be appended (the reason).
    pub(crate) fn prepare(&self, event: &Event, pipe: &mut Pipeline) -> Result<Pending, String> {
        let stream = self
            .settings
            .stream
            .render(event)
            .map_err(|e| e.to_string())?;
        let id = encode::stream_id(event)?;
        pipe.cmd("XADD").arg(&stream);
        if let Some(maxlen) = self.settings.maxlen {
            pipe.arg("MAXLEN").arg("~").arg(maxlen);
        }
        pipe.arg(&id).arg(ENVELOPE_FIELD).arg(event.json().as_ref());
        Ok(Pending { stream, id })
    }

    /// What the reply to `pending`'s XADD means.
    pub(crate) fn answer(&self, pending: &Pending, reply: &Value) -> Delivery {
        match reply {
            Value::BulkString(_) | Value::SimpleString(_) => Delivery::Delivered,
            Value::ServerError(e) if e.details().is_some_and(|d| d.contains(NOT_ABOVE_TOP)) => {
                tracing::trace!(
                    stream = %pending.stream,
                    id = %pending.id,
                    "redis stream: the entry is there already (or the stream is past it); skipped"
                );
                Delivery::Delivered
            }
            Value::ServerError(e) => reply_error(
                e,
                &format!("entry {} of stream `{}`", pending.id, pending.stream),
            ),
            other => Delivery::rejected(format!(
                "redis answered entry {} of stream `{}` with {other:?}, not an id",
                pending.id, pending.stream
            )),
        }
    }
}
