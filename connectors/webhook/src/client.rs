//! One HTTP request and what its outcome means.
//!
//! The client sends a signed POST and classifies the answer into a [`Delivery`] with the
//! rules every HTTP sink shares (`sluice-http`); it never retries or sleeps (the engine
//! does). 2xx is delivered; connection errors, timeouts, 408, 429 and 5xx are transient
//! (with the receiver's `Retry-After`); every other status is permanent. Redirects are not followed: a webhook that moved is a configuration
//! problem, and following it would re-send the body to an address nobody configured.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{redirect, Response, Url};
use sluice_http::{Transport, SNIPPET_BYTES};
use sluice_runtime::sink::SinkTelemetry;
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

/// A response body is read up to this size so its connection can be reused; a larger
/// one is dropped with its connection.
const DRAIN_BYTES: usize = 64 * 1024;

/// A pooled HTTP client bound to one receiver.
pub(crate) struct Client {
    /// Where HTTP statuses are counted (set by the engine).
    pub(crate) telemetry: Option<SinkTelemetry>,
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
            telemetry: None,
            http,
            url,
            signer,
            timeout: config.timeout,
        })
    }

    /// POST `body` as `webhook-id: id` and classify the answer.
    pub(crate) async fn post(&self, id: String, body: Bytes) -> Delivery {
        let id = id.as_str();
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
            Ok(response) => {
                if let Some(t) = &self.telemetry {
                    t.http_status(response.status().as_u16());
                }
                classify_response(response).await
            }
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
    sluice_http::classify(status, response.headers(), &snippet, SystemTime::now())
}

/// A transport failure as one line, without the URL (it may carry credentials).
fn transport_reason(e: reqwest::Error, timeout: Duration) -> String {
    let e = e.without_url();
    let kind = if e.is_timeout() {
        Transport::Timeout(timeout)
    } else if e.is_connect() {
        Transport::Connect
    } else {
        Transport::Other
    };
    sluice_http::transport_reason(kind, &e)
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

fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
