//! What an HTTP answer means for delivery, in one place for every sink that speaks HTTP
//! (webhook, Elasticsearch): 2xx is delivered; 408, 429 and 5xx are transient, with the
//! server's `Retry-After` honoured as a minimum wait; every other status is permanent. A
//! transport failure (refused, reset, timed out) is transient. Reasons carry the status and
//! the start of the body, on one line, so a DLQ entry says what the server said.
//!
//! Sinks classify; the engine retries. Nothing here sleeps or retries.

use std::borrow::Cow;
use std::error::Error;
use std::time::{Duration, SystemTime};

use http::header::{LOCATION, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use sluice_runtime::Delivery;

/// How much of an error response's body goes into a reason.
pub const SNIPPET_BYTES: usize = 200;

/// Whether `status` is worth retrying: 408, 429 and 5xx.
pub fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// The delivery an HTTP answer means. `body` is the start of the response body (at least
/// [`SNIPPET_BYTES`] of it when there is that much); `now` dates `Retry-After`.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Delivery {
    if status.is_success() {
        return Delivery::Delivered;
    }
    let mut reason = status_reason(status, body);
    if is_transient(status) {
        return Delivery::Retry {
            reason,
            after: retry_after(headers, now),
        };
    }
    if status.is_redirection() {
        reason.push_str(" (redirects are not followed; set `url` to the final address");
        if let Some(to) = headers.get(LOCATION).and_then(|v| v.to_str().ok()) {
            reason.push_str(", `");
            reason.push_str(to);
            reason.push('`');
        }
        reason.push(')');
    }
    Delivery::Rejected { reason }
}

/// `HTTP 422 Unprocessable Entity: <start of the body>`.
pub fn status_reason(status: StatusCode, body: &[u8]) -> String {
    let mut reason = format!("HTTP {status}");
    let body = snippet(body);
    if !body.is_empty() {
        reason.push_str(": ");
        reason.push_str(&body);
    }
    reason
}

/// Response text for a one-line reason: at most [`SNIPPET_BYTES`], UTF-8 (a character cut
/// at the end is dropped), whitespace collapsed.
pub fn snippet(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(SNIPPET_BYTES)];
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(e) if e.error_len().is_none() => {
            Cow::Borrowed(std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default())
        }
        Err(_) => String::from_utf8_lossy(bytes),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `Retry-After` as delta-seconds or an HTTP-date; a date in the past means now.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How a request failed before any answer came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// No answer within the request timeout.
    Timeout(Duration),
    /// The connection could not be opened.
    Connect,
    /// Anything else (reset, closed, TLS).
    Other,
}

/// A transport failure as one line: what happened, then the chain of causes. The caller
/// passes an error that does not print the URL (it may carry credentials).
pub fn transport_reason(kind: Transport, error: &dyn Error) -> String {
    let mut reason = match kind {
        Transport::Timeout(after) => return format!("no response within {after:?} (timeout)"),
        Transport::Connect => String::from("cannot connect"),
        Transport::Other => String::from("request failed"),
    };
    let mut cause: Option<&dyn Error> = Some(error);
    while let Some(c) = cause {
        let text = c.to_string();
        if !reason.ends_with(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        cause = c.source();
    }
    reason
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(retry_after: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(retry_after).unwrap());
        h
    }

    #[test]
    fn statuses_classify_as_the_contract_says() {
        let none = HeaderMap::new();
        let now = SystemTime::now();
        let class = |code: u16| match classify(StatusCode::from_u16(code).unwrap(), &none, b"", now)
        {
            Delivery::Delivered => "delivered",
            Delivery::Retry { .. } => "retry",
            Delivery::Rejected { .. } => "rejected",
            other => panic!("{other:?}"),
        };
        for code in [200, 201, 202, 204] {
            assert_eq!(class(code), "delivered", "{code}");
        }
        for code in [408, 429, 500, 502, 503, 504] {
            assert_eq!(class(code), "retry", "{code}");
        }
        for code in [301, 302, 304, 400, 401, 403, 404, 409, 410, 413, 422] {
            assert_eq!(class(code), "rejected", "{code}");
        }
    }

    #[test]
    fn a_retry_carries_retry_after() {
        let Delivery::Retry { after, reason } = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers("7"),
            b"slow down",
            SystemTime::now(),
        ) else {
            panic!()
        };
        assert_eq!(after, Some(Duration::from_secs(7)));
        assert_eq!(reason, "HTTP 429 Too Many Requests: slow down");
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            retry_after(&headers("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:30:00 GMT"), now),
            Some(Duration::from_secs(1_445_412_600 - 1_445_412_480))
        );
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn rejections_carry_the_status_and_the_start_of_the_body() {
        let long = format!("bad field `total`\n{}", "x".repeat(500));
        let Delivery::Rejected { reason } = classify(
            StatusCode::UNPROCESSABLE_ENTITY,
            &HeaderMap::new(),
            long.as_bytes(),
            SystemTime::now(),
        ) else {
            panic!()
        };
        assert!(
            reason.starts_with("HTTP 422 Unprocessable Entity: bad field `total` xxx"),
            "{reason}"
        );
        assert!(reason.len() < 250);
    }

    #[test]
    fn a_redirect_names_where_it_points() {
        let mut h = HeaderMap::new();
        h.insert(LOCATION, HeaderValue::from_static("https://new/x"));
        let Delivery::Rejected { reason } =
            classify(StatusCode::MOVED_PERMANENTLY, &h, b"", SystemTime::now())
        else {
            panic!()
        };
        assert!(reason.contains("not followed") && reason.contains("`https://new/x`"));
    }

    #[test]
    fn a_cut_character_is_dropped_from_the_snippet() {
        let text = "prix: 12€".as_bytes();
        assert_eq!(snippet(&text[..text.len() - 1]), "prix: 12");
        assert_eq!(snippet(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn transport_reasons_chain_their_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            transport_reason(Transport::Connect, &io),
            "cannot connect: refused"
        );
        assert_eq!(
            transport_reason(Transport::Timeout(Duration::from_secs(2)), &io),
            "no response within 2s (timeout)"
        );
    }
}
