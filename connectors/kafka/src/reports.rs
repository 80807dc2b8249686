//! [`Reports`]: the delivery reports of one batch, by index in the batch, and when the
//! batch is answered.
//!
//! The producer's delivery callback writes each message's result (`set`) and counts it
//! answered (`answered_one`, when the message's slot is dropped); the batch's future waits
//! for the last one ([`Reports::wait`]). Results are atomics: the callback never takes a
//! lock on the hot path.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::types::{RDKafkaErrorCode as Code, RDKafkaRespErr as RespErr};
use sluice_runtime::Position;
use tokio::sync::Notify;

/// A result slot that has no report yet.
const PENDING: i32 = i32::MIN;

/// The delivery reports of one batch, by index in the batch.
pub(crate) struct Reports {
    /// librdkafka's error code per message (0: delivered); [`PENDING`] until reported.
    codes: Box<[AtomicI32]>,
    /// Messages not answered yet, plus one while the batch is still being enqueued.
    remaining: AtomicUsize,
    /// Whether any message failed so far.
    failed: AtomicBool,
    done: Notify,
    /// The stream position of the batch's first event.
    first: Option<Position>,
    /// The client's last error when a message of the batch failed, to explain the failure.
    client_error: Mutex<Option<String>>,
}

impl Reports {
    /// Reports for a batch of `len` events whose first is at `first`, open for enqueuing.
    pub fn new(len: usize, first: Option<Position>) -> Arc<Reports> {
        Arc::new(Reports {
            codes: (0..len).map(|_| AtomicI32::new(PENDING)).collect(),
            remaining: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            done: Notify::new(),
            first,
            client_error: Mutex::new(None),
        })
    }

    /// What the client last complained about when a message of this batch failed (a
    /// refused connection, a failed authentication), if anything since the last delivery.
    pub fn client_error(&self) -> Option<String> {
        self.client_error.lock().ok().and_then(|e| e.clone())
    }

    /// Note what the client last complained about, when a message failed.
    pub(crate) fn note_client_error(&self, error: Option<String>) {
        if let Ok(mut noted) = self.client_error.lock() {
            *noted = error;
        }
    }

    /// The stream position of the batch's first event.
    pub fn first(&self) -> Option<Position> {
        self.first
    }

    /// The enqueuing is over: the batch completes once its messages are answered.
    pub fn seal(&self) {
        self.answered_one();
    }

    /// Wait until every enqueued message was answered (after [`Reports::seal`]).
    pub async fn wait(&self) {
        while self.remaining.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
    }

    /// The result of the message at `index`: `None` if it was never enqueued.
    pub fn result(&self, index: usize) -> Option<Result<(), Code>> {
        match self.codes[index].load(Ordering::Acquire) {
            PENDING => None,
            0 => Some(Ok(())),
            code => Some(Err(RespErr::try_from(code).map_or(Code::Fail, Code::from))),
        }
    }

    /// Whether a message of this batch failed so far.
    pub fn any_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Record the result of the message at `index`.
    pub(crate) fn set(&self, index: usize, result: Result<(), Code>) {
        let code = match result {
            Ok(()) => 0,
            Err(code) => {
                self.failed.store(true, Ordering::Release);
                code as i32
            }
        };
        self.codes[index].store(code, Ordering::Release);
    }

    /// One more message enqueued: the batch waits for its answer too.
    pub(crate) fn expect_one(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }

    /// One message (or the enqueuing itself) answered.
    pub(crate) fn answered_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // One waiter: a stored permit wakes it even if it is not waiting yet.
            self.done.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_batch_is_answered_when_its_last_message_is() {
        let reports = Reports::new(3, None);
        reports.expect_one();
        reports.expect_one();
        reports.seal();
        reports.set(0, Ok(()));
        reports.answered_one();
        assert!(!reports.any_failed());
        reports.set(2, Err(Code::MessageTimedOut));
        assert!(reports.any_failed());
        reports.answered_one();
        tokio::time::timeout(Duration::from_secs(1), reports.wait())
            .await
            .expect("answered");
        assert_eq!(reports.result(0), Some(Ok(())));
        assert_eq!(reports.result(1), None, "never enqueued");
        assert_eq!(reports.result(2), Some(Err(Code::MessageTimedOut)));
    }
}
