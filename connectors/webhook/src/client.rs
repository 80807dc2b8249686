//! One HTTP request and what its outcome means.
//!
//! The client sends a signed POST and classifies the answer into a [`Delivery`]; it never
//! retries or sleeps (the engine does). 2xx is delivered; connection errors, timeouts,
//! 408, 429 and 5xx are transient (with the receiver's `Retry-After`); every other status
//! is permanent. Redirects are not followed: a webhook that moved is a configuration
//! problem, and following it would re-send the body to an address nobody configured.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{redirect, Response, StatusCode, Url};
use sluice_runtime::Delivery;

use crate::config::WebhookConfig;
use crate::encode::Signer;
use crate::WebhookError;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Headers sluice sets itself; `headers:` in the config may not replace them.
const RESERVED: [&str; 6] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
];

/// How much of an error response's body goes into the reason.
const SNIPPET_BYTES: usize = 200;

/// A response body is read up to this size so its connection can be reused; a larger
/// one is dropped with its connection.
const DRAIN_BYTES: usize = 64 * 1024;

/// A pooled HTTP client bound to one receiver.
pub(crate) struct Client {
    http: reqwest::Client,
    url: Url,
    signer: Option<Signer>,
    timeout: Duration,
}

impl Client {
    /// Validate the configuration and build the client. No I/O.
    pub(crate) fn new(config: &WebhookConfig) -> Result<Self, WebhookError> {
        let url = parse_url(&config.url)?;
        if config.timeout.is_zero() {
            return Err(WebhookError::ZeroTimeout);
        }
        let signer = config.secret.as_ref().map(Signer::new).transpose()?;

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &config.headers {
            let invalid = |reason: String| WebhookError::Header {
                name: name.clone(),
                reason,
            };
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid("it is not a valid header name".into()))?;
            if RESERVED.contains(&header.as_str()) {
                return Err(invalid("sluice sets it on every request; remove it".into()));
            }
            let value = HeaderValue::from_str(value).map_err(|_| {
                invalid("its value has characters a header cannot carry (e.g. a newline)".into())
            })?;
            headers.insert(header, value);
        }

        let http = reqwest::Client::builder()
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .redirect(redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(WebhookError::Client)?;
        Ok(Client {
            http,
            url,
            signer,
            timeout: config.timeout,
        })
    }

    /// POST `body` as `webhook-id: id` and classify the answer.
    pub(crate) async fn post(&self, id: &str, body: Bytes) -> Delivery {
        let mut request = self.http.post(self.url.clone());
        match HeaderValue::from_str(id) {
            Ok(value) => request = request.header(WEBHOOK_ID, value),
            Err(_) => return Delivery::rejected(format!("`{id}` cannot be a webhook-id header")),
        }
        let timestamp = unix_seconds(SystemTime::now());
        request = request.header(WEBHOOK_TIMESTAMP, timestamp);
        if let Some(signer) = &self.signer {
            request = request.header(WEBHOOK_SIGNATURE, signer.sign(id, timestamp, &body));
        }
        match request.body(body).send().await {
            Ok(response) => classify_response(response).await,
            Err(e) => Delivery::retry(transport_reason(e, self.timeout)),
        }
    }

    /// Resolve the receiver's host and open (then close) a TCP connection to it, within
    /// the request timeout. Sends nothing: a probe request could be taken for an event.
    pub(crate) async fn check(&self) -> Result<(), String> {
        let host = self.url.host_str().unwrap_or_default();
        let port = self.url.port_or_known_default().unwrap_or(80);
        let probe = async {
            let addrs: Vec<_> = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("cannot resolve webhook host `{host}`: {e}"))?
                .collect();
            let mut last = format!("`{host}` resolves to no address");
            for addr in addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = format!("cannot connect to webhook `{host}:{port}`: {e}"),
                }
            }
            Err(last)
        };
        tokio::time::timeout(self.timeout, probe)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "webhook `{host}:{port}` did not accept a connection within {:?}",
                    self.timeout
                ))
            })
    }
}

/// An absolute http(s) URL with a host.
fn parse_url(text: &str) -> Result<Url, WebhookError> {
    let url = Url::parse(text.trim()).map_err(|e| WebhookError::Url {
        reason: format!("it does not parse ({e})"),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(WebhookError::Url {
            reason: format!("its scheme is `{}`, not http or https", url.scheme()),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(WebhookError::Url {
            reason: "it has no host".into(),
        });
    }
    Ok(url)
}

async fn classify_response(mut response: Response) -> Delivery {
    let status = response.status();
    let snippet = read_body(&mut response).await;
    classify(status, response.headers(), &snippet, SystemTime::now())
}

/// The delivery a status means; `body` is the start of the response body.
fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Delivery {
    if status.is_success() {
        return Delivery::Delivered;
    }
    let mut reason = format!("HTTP {status}");
    let body = snippet(body);
    if !body.is_empty() {
        reason.push_str(": ");
        reason.push_str(&body);
    }
    let transient = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    if transient {
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

/// Read the body (so the connection goes back to the pool), keeping its first bytes.
/// A failure while reading does not change what the status said.
async fn read_body(response: &mut Response) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = SNIPPET_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
        read += chunk.len();
        if read > DRAIN_BYTES {
            break;
        }
    }
    kept
}

/// Response text for a one-line reason: UTF-8 (a character cut at the end is dropped),
/// whitespace collapsed.
fn snippet(bytes: &[u8]) -> String {
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
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A transport failure as one line, without the URL (it may carry credentials).
fn transport_reason(e: reqwest::Error, timeout: Duration) -> String {
    let e = e.without_url();
    if e.is_timeout() {
        return format!("no response within {timeout:?} (timeout)");
    }
    let mut reason = String::from(if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    });
    let mut cause: Option<&dyn std::error::Error> = Some(&e);
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

fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
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
            &long.as_bytes()[..SNIPPET_BYTES],
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
    fn a_cut_character_is_dropped_from_the_snippet() {
        let text = "prix: 12€".as_bytes();
        assert_eq!(snippet(&text[..text.len() - 1]), "prix: 12");
        assert_eq!(snippet(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn only_absolute_http_urls_with_a_host_are_accepted() {
        assert!(parse_url("https://example.com/hooks").is_ok());
        assert!(parse_url(" http://127.0.0.1:8080 ").is_ok());
        for bad in [
            "example.com/hooks",
            "ftp://example.com",
            "http://",
            "file:///x",
            "",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(e.to_string().contains("https://"), "{bad}: {e}");
        }
    }

    #[test]
    fn reserved_and_malformed_headers_are_config_errors() {
        let with = |name: &str, value: &str| {
            let mut c = WebhookConfig::new("http://h");
            c.headers.insert(name.into(), value.into());
            Client::new(&c).err().map(|e| format!("{}: {e}", e.field()))
        };
        assert!(with("x-tenant", "acme").is_none());
        let e = with("Webhook-Signature", "v1,x").unwrap();
        assert!(
            e.starts_with("headers.Webhook-Signature: ") && e.contains("remove"),
            "{e}"
        );
        assert!(with("bad header", "x").is_some());
        assert!(with("x-ok", "line\nbreak").is_some());
    }
}
