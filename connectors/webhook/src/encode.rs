//! What goes on the wire: request bodies, `webhook-id`s and Standard Webhooks signatures.
//!
//! A single event is sent as its cached envelope bytes ([`Event::json`]), so encoding
//! costs nothing per sink. A batch is those same bytes joined into a JSON array.
//! Signatures follow <https://www.standardwebhooks.com/>: HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, sent as `v1,<base64>`.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_runtime::config::Secret;
use sluice_runtime::Event;

use crate::WebhookError;

/// The prefix of a Standard Webhooks secret whose rest is the base64 of the key.
const WHSEC_PREFIX: &str = "whsec_";

/// The body of a batch request: `[` + envelopes joined by `,` + `]`.
pub(crate) fn batch_body(events: &[Arc<Event>]) -> Bytes {
    let len = events.iter().map(|e| e.json().len() + 1).sum::<usize>() + 2;
    let mut body = BytesMut::with_capacity(len);
    body.put_u8(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(event.json());
    }
    body.put_u8(b']');
    body.freeze()
}

/// The `webhook-id` of a batch request: `<first id>..<last id>`. Stable for the same
/// events, so a receiver can deduplicate a batch that is sent again.
pub(crate) fn batch_id(events: &[Arc<Event>]) -> String {
    match (events.first(), events.last()) {
        (Some(first), Some(last)) => format!("{}..{}", first.id(), last.id()),
        _ => String::new(),
    }
}

/// Computes `webhook-signature` values with one key.
#[derive(Clone)]
pub(crate) struct Signer {
    /// Keyed once; cloned per request, which skips re-hashing the key.
    mac: Hmac<Sha256>,
}

impl Signer {
    pub(crate) fn new(secret: &Secret) -> Result<Self, WebhookError> {
        let value = secret.expose();
        let key = match value.strip_prefix(WHSEC_PREFIX) {
            Some(encoded) => BASE64.decode(encoded).map_err(|e| WebhookError::Secret {
                reason: format!(
                    "it starts with `{WHSEC_PREFIX}` but the rest is not base64 ({e}); \
                     copy the secret exactly as the receiver shows it"
                ),
            })?,
            None => value.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(WebhookError::Secret {
                reason: "it is empty; set it, or remove `secret` to send unsigned requests".into(),
            });
        }
        let mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts keys of any length");
        Ok(Signer { mac })
    }

    /// `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`.
    pub(crate) fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let mut out = String::with_capacity(3 + 44);
        out.push_str("v1,");
        BASE64.encode_string(mac.finalize().into_bytes(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(index: u32) -> Arc<Event> {
        sluice_runtime::testing::insert("t", 0x10, index)
    }

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        // From the Standard Webhooks reference libraries.
        let signer = Signer::new(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        assert_eq!(
            signer.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_secret_without_the_prefix_is_the_key_itself() {
        let raw = Signer::new(&Secret::new("hunter2")).unwrap();
        let encoded = Signer::new(&Secret::new(format!("whsec_{}", BASE64.encode("hunter2"))));
        assert_eq!(
            raw.sign("a", 1, b"{}"),
            encoded.unwrap().sign("a", 1, b"{}")
        );
        assert_ne!(raw.sign("a", 1, b"{}"), raw.sign("a", 2, b"{}"));
    }

    #[test]
    fn unusable_secrets_are_config_errors() {
        let e = Signer::new(&Secret::new("whsec_not base64!"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("not base64"), "{e}");
        assert!(Signer::new(&Secret::new("")).is_err());
        assert!(Signer::new(&Secret::new("whsec_")).is_err());
    }

    #[test]
    fn a_batch_is_a_json_array_of_envelopes() {
        let events = [event(0), event(1), event(2)];
        let body: serde_json::Value = serde_json::from_slice(&batch_body(&events)).unwrap();
        let ids: Vec<_> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].clone())
            .collect();
        assert_eq!(ids, ["0/10:0", "0/10:1", "0/10:2"]);
        assert_eq!(batch_id(&events), "0/10:0..0/10:2");
        assert_eq!(
            &batch_body(&events[..1])[..],
            &[b"[", &events[0].json()[..], b"]"].concat()[..]
        );
    }
}
