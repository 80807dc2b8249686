//! What a Redis error means for delivery.
//!
//! Two kinds of failure reach the sink. A **round trip** that fails (refused, reset, timed
//! out, authentication failed) is transient: every event it carried is answered
//! [`Delivery::Retry`] and the engine retries with backoff. A **reply** that is an error
//! concerns one command, hence one event: codes that say the server cannot take writes at
//! the moment (loading, busy script, out of memory, read-only replica, failing persistence,
//! missing permission, cluster redirections) are retried too; anything else (`WRONGTYPE`,
//! a script error about the stored value) is about this event and is answered
//! [`Delivery::Rejected`] with Redis' message, so the event goes to the DLQ and the sink
//! moves on. Nothing here sleeps or retries.

use std::time::Duration;

use redis::{ServerError, Value};
use sluice_runtime::Delivery;

/// Reply codes that describe the server's state rather than the command.
const TRANSIENT_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "OOM",
    "MISCONF",
    "NOREPLICAS",
    "NOAUTH",
    "NOPERM",
    "NOSCRIPT",
    "MOVED",
    "ASK",
    "CROSSSLOT",
];

/// Reply codes that mean the server is part of a Redis Cluster.
const CLUSTER_CODES: &[&str] = &["MOVED", "ASK", "CROSSSLOT", "CLUSTERDOWN"];

/// The delivery an error reply to the command writing `what` means.
pub(crate) fn reply_error(error: &ServerError, what: &str) -> Delivery {
    classify(error.code(), &reply_text(error), what)
}

/// The delivery an error that a script caught for one row or entry means. `text` is the
/// error as the script saw it: `OOM command not allowed ...`, `WRONGTYPE Operation ...`,
/// or a message of the script's own (without a code: a permanent error).
pub(crate) fn script_error(text: &str, what: &str) -> Delivery {
    classify(error_code(text).unwrap_or("ERR"), text, what)
}

/// The code an error text starts with: its first word, when it is in capitals.
fn error_code(text: &str) -> Option<&str> {
    let word = text.split(' ').next()?;
    (!word.is_empty() && word.bytes().all(|b| b.is_ascii_uppercase())).then_some(word)
}

fn classify(code: &str, text: &str, what: &str) -> Delivery {
    let mut reason = format!("redis refused {what}: {text}");
    if CLUSTER_CODES.contains(&code) {
        reason.push_str(
            " (Redis Cluster is not supported: point `url` at a standalone server or a primary)",
        );
    }
    if TRANSIENT_CODES.contains(&code) {
        Delivery::retry(reason)
    } else {
        Delivery::rejected(reason)
    }
}

/// An error reply as Redis wrote it: `WRONGTYPE Operation against a key holding ...`.
pub(crate) fn reply_text(error: &ServerError) -> String {
    match error.details() {
        Some(details) => format!("{} {details}", error.code()),
        None => error.code().to_string(),
    }
}

/// Whether a reply says the script it called is not loaded.
pub(crate) fn is_noscript(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// Why a round trip to `endpoint` failed, on one line. The URL is never part of it (it
/// may carry a password).
pub(crate) fn transport_reason(error: &redis::RedisError, endpoint: &str) -> String {
    let what = if error.is_connection_refusal() {
        "cannot connect to"
    } else if error.is_io_error() {
        "lost the connection to"
    } else {
        "failed talking to"
    };
    let text = error.to_string().replace('\n', " ");
    format!("{what} redis at {endpoint}: {text}")
}

/// Why a round trip that took too long failed.
pub(crate) fn timeout_reason(endpoint: &str, timeout: Duration) -> String {
    format!("redis at {endpoint} did not answer within {timeout:?} (the sink's `timeout`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(text: &str) -> ServerError {
        let reply = format!("-{text}\r\n");
        match redis::parse_redis_value(reply.as_bytes()).unwrap() {
            Value::ServerError(e) => e,
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn errors_about_the_command_are_rejections() {
        let wrongtype =
            server_error("WRONGTYPE Operation against a key holding the wrong kind of value");
        match reply_error(&wrongtype, "`items:1`") {
            Delivery::Rejected { reason } => assert_eq!(
                reason,
                "redis refused `items:1`: WRONGTYPE Operation against a key holding the wrong kind of value"
            ),
            other => panic!("{other:?}"),
        }
        let script = server_error("ERR user_script:12: the stored value is not a JSON object");
        assert!(matches!(
            reply_error(&script, "x"),
            Delivery::Rejected { .. }
        ));
    }

    #[test]
    fn errors_about_the_servers_state_are_retries() {
        for text in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "READONLY You can't write against a read only replica.",
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk",
            "NOPERM this user has no permissions to run the 'evalsha' command",
        ] {
            assert!(
                matches!(reply_error(&server_error(text), "x"), Delivery::Retry { .. }),
                "{text}"
            );
        }
        match reply_error(&server_error("MOVED 3999 127.0.0.1:6381"), "x") {
            Delivery::Retry { reason, .. } => assert!(reason.contains("Cluster is not supported")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_caught_by_a_script_are_classified_by_their_code() {
        let oom = script_error(
            "OOM command not allowed when used memory > 'maxmemory'.",
            "x",
        );
        assert!(matches!(oom, Delivery::Retry { .. }), "{oom:?}");
        match script_error("WRONGTYPE Operation against a key", "`items:1`") {
            Delivery::Rejected { reason } => assert_eq!(
                reason,
                "redis refused `items:1`: WRONGTYPE Operation against a key"
            ),
            other => panic!("{other:?}"),
        }
        for text in ["the stored value is not a JSON object", "Oops", ""] {
            assert!(
                matches!(script_error(text, "x"), Delivery::Rejected { .. }),
                "{text}"
            );
        }
    }

    #[test]
    fn noscript_replies_are_recognised() {
        let noscript = Value::ServerError(server_error("NOSCRIPT No matching script."));
        assert!(is_noscript(&noscript));
        assert!(!is_noscript(&Value::Okay));
        assert!(!is_noscript(&Value::ServerError(server_error("ERR x"))));
    }
}
