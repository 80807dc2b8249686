//! What the broker's answers, and lapin's errors, mean for delivery.
//!
//! - A publisher confirm **ack** means the broker has the message (for a persistent message
//!   routed to durable queues: written to disk): [`Delivery::Delivered`].
//! - A **nack** means the broker could not take it (a queue process failed, a full queue
//!   set to `reject-publish`): nothing says it cannot succeed later, so it is
//!   [`Delivery::Retry`].
//! - A message **returned** as unroutable (published `mandatory`) means no queue is bound
//!   to receive it under this exchange and routing key. Sending it again will not change
//!   that until someone changes the topology, and retrying would hold back every later
//!   event for as long as the engine retries; so it is [`Delivery::Rejected`] with the
//!   exchange, the routing key and the broker's reason, parked in the DLQ, and replayed
//!   from there once a queue is bound. (`mandatory: false` turns this off: the broker then
//!   drops such messages and acks them.)
//! - A **missing exchange** is the same kind of fault and is rejected the same way.
//! - A failed connection, a closed channel, a timeout, a broker that blocks publishers
//!   (memory or disk alarm): transient, [`Delivery::Retry`] for what was not confirmed.
//!
//! Nothing here sleeps or retries: the engine does.

use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::ErrorKind;
use sluice_runtime::Delivery;

/// AMQP's reply code for "not found" (a passive declare of a missing exchange).
const NOT_FOUND: u16 = 404;

/// Why an operation failed, on one line: the broker's own code and text for an AMQP error
/// (`404 NOT_FOUND - no exchange 'x' in vhost '/'`), the system's for an I/O error.
pub(crate) fn describe(error: &lapin::Error) -> String {
    match error.kind() {
        ErrorKind::ProtocolError(e) => format!("{} {}", e.get_id(), e.get_message()),
        ErrorKind::IOError(e) => e.to_string(),
        ErrorKind::InvalidConnectionState(state) => {
            format!("the connection is {}", format!("{state:?}").to_lowercase())
        }
        ErrorKind::InvalidChannelState(state, _) => {
            format!("the channel is {}", format!("{state:?}").to_lowercase())
        }
        ErrorKind::MissingHeartbeatError => "the broker missed its heartbeats".into(),
        _ => error.to_string(),
    }
    .replace('\n', " ")
}

/// Whether the broker answered "not found".
pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e) if e.get_id() == NOT_FOUND)
}

/// The answer for a message the broker returned as unroutable.
pub(crate) fn unroutable(returned: &BasicReturnMessage) -> Delivery {
    let delivery = &returned.delivery;
    Delivery::rejected(format!(
        "rabbitmq returned the message as unroutable ({} {}): no queue is bound to {} for \
         routing key `{}`; bind a queue that receives it (then replay it from the \
         DLQ), or set `mandatory: false` to let the broker drop such messages",
        returned.reply_code,
        returned.reply_text,
        exchange_name(delivery.exchange.as_str()),
        delivery.routing_key,
    ))
}

/// The answer for a message the broker nacked.
pub(crate) fn nacked(endpoint: &str) -> Delivery {
    Delivery::retry(format!(
        "rabbitmq at {endpoint} could not take the message (nack: a queue it routes to \
         failed or refuses publishes)"
    ))
}

/// What is wrong when an exchange does not exist.
pub(crate) fn missing_exchange(exchange: &str, endpoint: &str) -> String {
    format!(
        "{} does not exist at rabbitmq {endpoint}; sluice does not declare exchanges: \
         declare it, or fix `exchange`",
        exchange_name(exchange)
    )
}

/// The answer for an event whose exchange does not exist.
pub(crate) fn no_exchange(exchange: &str, endpoint: &str) -> Delivery {
    Delivery::rejected(format!(
        "{} (then replay the event from the DLQ)",
        missing_exchange(exchange, endpoint)
    ))
}

/// Why waiting for the broker failed: it took longer than `timeout`.
pub(crate) fn timed_out(what: &str, endpoint: &str, timeout: Duration) -> String {
    format!("rabbitmq at {endpoint} did not {what} within {timeout:?} (the sink's `timeout`)")
}

/// The reason of a retry while the broker blocks publishers.
pub(crate) fn blocked(endpoint: &str) -> String {
    format!(
        "rabbitmq at {endpoint} blocks publishers (a memory or disk alarm); waiting for it \
         to unblock"
    )
}

/// ``exchange `name` ``, or `the default exchange` for the empty name.
pub(crate) fn exchange_name(name: &str) -> String {
    if name.is_empty() {
        "the default exchange".into()
    } else {
        format!("exchange `{name}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPSoftError};

    fn amqp(code: AMQPSoftError, text: &str) -> lapin::Error {
        lapin::Error::from(ErrorKind::ProtocolError(AMQPError::new(
            AMQPErrorKind::Soft(code),
            text.into(),
        )))
    }

    #[test]
    fn broker_errors_read_as_the_broker_wrote_them() {
        let e = amqp(
            AMQPSoftError::NOTFOUND,
            "NOT_FOUND - no exchange 'x' in vhost '/'",
        );
        assert_eq!(describe(&e), "404 NOT_FOUND - no exchange 'x' in vhost '/'");
        assert!(is_not_found(&e));
        let e = amqp(AMQPSoftError::ACCESSREFUSED, "ACCESS_REFUSED - no");
        assert!(!is_not_found(&e));
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(describe(&io), "connection refused");
        assert!(!is_not_found(&io));
    }

    #[test]
    fn reasons_name_the_exchange_and_what_to_do() {
        let reason = missing_exchange("events", "127.0.0.1:5672 (vhost /)");
        assert!(
            reason.contains("exchange `events` does not exist"),
            "{reason}"
        );
        assert!(reason.contains("declare it"), "{reason}");
        assert!(missing_exchange("", "h").contains("the default exchange"));
        match no_exchange("events", "h") {
            Delivery::Rejected { reason } => assert!(reason.ends_with("from the DLQ)"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match nacked("h:1") {
            Delivery::Retry { reason, .. } => assert!(reason.contains("nack"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let reason = timed_out("confirm", "h:1", Duration::from_secs(10));
        assert_eq!(
            reason,
            "rabbitmq at h:1 did not confirm within 10s (the sink's `timeout`)"
        );
    }
}
