//! What a librdkafka error means for the message that got it.
//!
//! A short, closed list of errors is permanent for one message: it is too large, its topic
//! name is illegal, the producer may not write to the topic, or the broker refuses the
//! record itself. Those are [`Delivery::Rejected`] with the broker's reason. Everything
//! else (brokers down or unreachable, a timeout, a leader election, a topic that does not
//! exist yet, an unusable producer that is being replaced) is [`Delivery::Retry`]: an
//! error nobody has classified must never send an event to the DLQ.

use rdkafka::types::RDKafkaErrorCode as Code;
use sluice_runtime::Delivery;

/// Where a failed message was going, for the reason.
pub(crate) struct Failed<'a> {
    pub topic: &'a str,
    /// Bytes of key and value.
    pub size: usize,
    /// `host:port,…`.
    pub brokers: &'a str,
    /// The sink's `timeout`, as written for people.
    pub timeout: &'a str,
}

/// The answer for a message that got `code`, enqueuing it or in its delivery report.
pub(crate) fn classify(code: Code, failed: &Failed) -> Delivery {
    let Failed {
        topic,
        size,
        brokers,
        timeout,
    } = failed;
    match code {
        Code::MessageSizeTooLarge | Code::InvalidMessageSize | Code::MessageBatchTooLarge => {
            Delivery::rejected(format!(
                "the message for topic `{topic}` ({size} bytes of key and value) is larger \
                 than the producer's `message.max.bytes` or the topic's `max.message.bytes` \
                 allow: {code}"
            ))
        }
        Code::InvalidTopic => Delivery::rejected(format!(
            "the brokers refuse the topic name `{topic}`: {code}"
        )),
        Code::TopicAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::TransactionalIdAuthorizationFailed => Delivery::rejected(format!(
            "not authorized to write to topic `{topic}` (check the user's ACLs): {code}"
        )),
        Code::InvalidRecord
        | Code::PolicyViolation
        | Code::InvalidTimestamp
        | Code::UnsupportedForMessageFormat
        | Code::InvalidArgument => Delivery::rejected(format!(
            "the message for topic `{topic}` is refused: {code}"
        )),
        Code::MessageTimedOut | Code::TimedOutQueue | Code::RequestTimedOut => {
            Delivery::retry(format!(
                "no acknowledgement for topic `{topic}` from the brokers at {brokers} within \
                 the timeout ({timeout}): {code}"
            ))
        }
        Code::UnknownTopic | Code::UnknownTopicOrPartition => Delivery::retry(format!(
            "topic `{topic}` does not exist on the brokers at {brokers}: create it, or let \
             the brokers create topics on first use ({code})"
        )),
        Code::PurgeQueue => Delivery::retry(format!(
            "the message for topic `{topic}` was withdrawn before it was sent: no broker at \
             {brokers} answered, or the producer was replaced ({code})"
        )),
        Code::PurgeInflight => Delivery::retry(format!(
            "the message for topic `{topic}` was withdrawn while the brokers at {brokers} had \
             not acknowledged it: the producer was replaced or closed ({code})"
        )),
        Code::QueueFull => Delivery::retry(format!(
            "the producer's queue stayed full for the timeout ({timeout}) ({code})"
        )),
        code if needs_new_producer(code) => Delivery::retry(format!(
            "the producer lost its idempotence state with the brokers at {brokers} and is \
             replaced by a new one: {code}"
        )),
        code => Delivery::retry(format!(
            "kafka could not deliver the message for topic `{topic}` to the brokers at \
             {brokers}: {code}"
        )),
    }
}

/// Whether `code` means the producer can no longer keep its guarantees and must be
/// replaced by a new one (with a new producer id): a fatal error, or the brokers lost the
/// producer's sequence state (a broker that restarted without its data).
pub(crate) fn needs_new_producer(code: Code) -> bool {
    matches!(
        code,
        Code::Fatal
            | Code::UnknownProducerId
            | Code::OutOfOrderSequenceNumber
            | Code::InvalidProducerEpoch
            | Code::ProducerFenced
            | Code::InvalidProducerIdMapping
            | Code::GaplessGuarantee
    )
}

/// Whether the producer that got `code` is replaced by a new one once it holds nothing:
/// the brokers went away under it (a timeout, a purge while no broker answered), and
/// brokers that come back without their data do not know its producer id; or a topic was
/// missing, which librdkafka remembers until its next full metadata refresh (minutes
/// later), while a new producer asks again.
pub(crate) fn suspect_producer(code: Code) -> bool {
    matches!(
        code,
        Code::UnknownTopic
            | Code::UnknownTopicOrPartition
            | Code::MessageTimedOut
            | Code::TimedOutQueue
            | Code::RequestTimedOut
            | Code::PurgeQueue
            | Code::PurgeInflight
            | Code::BrokerTransportFailure
            | Code::AllBrokersDown
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: Code) -> Delivery {
        classify(
            code,
            &Failed {
                topic: "public.orders",
                size: 2_000_000,
                brokers: "k1:9092",
                timeout: "30s",
            },
        )
    }

    fn is_retry(d: &Delivery) -> bool {
        matches!(d, Delivery::Retry { after: None, .. })
    }

    #[test]
    fn per_message_refusals_are_permanent_with_the_reason() {
        let Delivery::Rejected { reason } = answer(Code::MessageSizeTooLarge) else {
            panic!("too large is permanent")
        };
        assert!(reason.contains("2000000 bytes"), "{reason}");
        assert!(reason.contains("Message size too large"), "{reason}");
        for code in [
            Code::InvalidTopic,
            Code::TopicAuthorizationFailed,
            Code::ClusterAuthorizationFailed,
            Code::InvalidRecord,
            Code::PolicyViolation,
        ] {
            let Delivery::Rejected { reason } = answer(code) else {
                panic!("{code:?} is permanent")
            };
            assert!(reason.contains("public.orders"), "{reason}");
        }
    }

    #[test]
    fn everything_else_is_transient() {
        for code in [
            Code::MessageTimedOut,
            Code::AllBrokersDown,
            Code::BrokerTransportFailure,
            Code::NotLeaderForPartition,
            Code::LeaderNotAvailable,
            Code::NotEnoughReplicas,
            Code::UnknownTopicOrPartition,
            Code::UnknownTopic,
            Code::PurgeQueue,
            Code::PurgeInflight,
            Code::Fatal,
            Code::UnknownProducerId,
            Code::QueueFull,
            Code::KafkaStorageError,
            Code::ThrottlingQuotaExceeded,
        ] {
            assert!(is_retry(&answer(code)), "{code:?}");
        }
        let Delivery::Retry { reason, .. } = answer(Code::MessageTimedOut) else {
            unreachable!()
        };
        assert!(
            reason.contains("k1:9092") && reason.contains("(30s)"),
            "{reason}"
        );
        let Delivery::Retry { reason, .. } = answer(Code::UnknownTopicOrPartition) else {
            unreachable!()
        };
        assert!(reason.contains("create it"), "{reason}");
    }

    #[test]
    fn lost_idempotence_state_replaces_the_producer() {
        assert!(needs_new_producer(Code::Fatal));
        assert!(needs_new_producer(Code::UnknownProducerId));
        assert!(needs_new_producer(Code::OutOfOrderSequenceNumber));
        assert!(!needs_new_producer(Code::MessageTimedOut));
        assert!(!needs_new_producer(Code::MessageSizeTooLarge));
        assert!(suspect_producer(Code::MessageTimedOut) && suspect_producer(Code::PurgeQueue));
        assert!(!suspect_producer(Code::MessageSizeTooLarge));
        assert!(suspect_producer(Code::UnknownTopicOrPartition));
    }
}
