//! The official client's transport, from the connection keys: `url` (credentials in it
//! become basic authentication and leave the URL, which errors print), `auth` (basic or an
//! API key), `tls` (a CA file, or no checking) and `timeout`. Inconsistent keys are errors
//! that name the key. Reads `tls.ca_file`; no network I/O.

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{SingleNodeConnectionPool, Transport, TransportBuilder};
use elasticsearch::http::Url;

use crate::config::ElasticsearchConfig;
use crate::ElasticsearchError;

/// The transport to the cluster, and its URL without credentials.
pub(crate) fn transport(
    config: &ElasticsearchConfig,
) -> Result<(Transport, Url), ElasticsearchError> {
    let (url, url_credentials) = parse_url(&config.url)?;
    if config.timeout.is_zero() {
        return Err(ElasticsearchError::ZeroTimeout);
    }
    let mut builder =
        TransportBuilder::new(SingleNodeConnectionPool::new(url.clone())).timeout(config.timeout);
    if let Some(credentials) = credentials(config, url_credentials)? {
        builder = builder.auth(credentials);
    }
    if let Some(validation) = cert_validation(config, &url)? {
        builder = builder.cert_validation(validation);
    }
    let transport = builder
        .build()
        .map_err(|e| ElasticsearchError::Client(e.to_string()))?;
    Ok((transport, url))
}

/// An absolute http(s) URL with a host; a `user:password@` in it comes out as
/// credentials.
fn parse_url(text: &str) -> Result<(Url, Option<Credentials>), ElasticsearchError> {
    let bad = |reason: String| ElasticsearchError::Url { reason };
    let mut url = Url::parse(text.trim()).map_err(|e| bad(format!("it does not parse ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "its scheme is `{}`, not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "it has a query or fragment; give the cluster's address only".into(),
        ));
    }
    let credentials = match (url.username(), url.password()) {
        ("", None) => None,
        (user, Some(password)) => Some(Credentials::Basic(decode(user), decode(password))),
        (_, None) => {
            return Err(bad(
                "it has a user but no password; write user:password@ or use `auth`".into(),
            ))
        }
    };
    // Keep credentials out of the URL: errors print it.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok((url, credentials))
}

/// Percent-decoding of a URL's user or password.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The configured credentials (or those of the URL; not both).
fn credentials(
    config: &ElasticsearchConfig,
    from_url: Option<Credentials>,
) -> Result<Option<Credentials>, ElasticsearchError> {
    let Some(auth) = &config.auth else {
        return Ok(from_url);
    };
    let err = |field, reason: &str| ElasticsearchError::Auth {
        field,
        reason: reason.to_string(),
    };
    if from_url.is_some() {
        return Err(err(
            "auth",
            "the url carries user:password too; keep the credentials in one place",
        ));
    }
    match (&auth.username, &auth.password, &auth.api_key) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(err(
            "auth.api_key",
            "give either username and password, or api_key, not both",
        )),
        (Some(user), Some(password), None) => {
            if user.is_empty() {
                return Err(err("auth.username", "it is empty"));
            }
            Ok(Some(Credentials::Basic(
                user.clone(),
                password.expose().to_string(),
            )))
        }
        (Some(_), None, None) => Err(err("auth.password", "a username needs a password")),
        (None, Some(_), None) => Err(err("auth.username", "a password needs a username")),
        (None, None, Some(key)) => {
            let key = key.expose().trim();
            if key.is_empty() {
                return Err(err("auth.api_key", "it is empty"));
            }
            Ok(Some(match key.split_once(':') {
                Some((id, secret)) => Credentials::ApiKey(id.to_string(), secret.to_string()),
                None => Credentials::EncodedApiKey(key.to_string()),
            }))
        }
        (None, None, None) => Err(err(
            "auth",
            "it is empty; give username and password, or api_key (or remove `auth`)",
        )),
    }
}

/// How the server's certificate is checked.
fn cert_validation(
    config: &ElasticsearchConfig,
    url: &Url,
) -> Result<Option<CertificateValidation>, ElasticsearchError> {
    let tls = &config.tls;
    let err = |field, reason: String| ElasticsearchError::Tls { field, reason };
    if (tls.ca_file.is_some() || tls.insecure_skip_verify) && url.scheme() != "https" {
        let field = if tls.ca_file.is_some() {
            "tls.ca_file"
        } else {
            "tls.insecure_skip_verify"
        };
        return Err(err(
            field,
            "the url is http://, so there is no TLS to configure; use https:// or remove `tls`"
                .into(),
        ));
    }
    match (&tls.ca_file, tls.insecure_skip_verify) {
        (Some(_), true) => Err(err(
            "tls.insecure_skip_verify",
            "it turns off the check that `ca_file` is for; keep one of them".into(),
        )),
        (None, true) => Ok(Some(CertificateValidation::None)),
        (Some(path), false) => {
            let pem = std::fs::read(path).map_err(|e| {
                err(
                    "tls.ca_file",
                    format!("cannot read `{}`: {e}", path.display()),
                )
            })?;
            let certificate = Certificate::from_pem(&pem).map_err(|e| {
                err(
                    "tls.ca_file",
                    format!("`{}` holds no PEM certificate ({e})", path.display()),
                )
            })?;
            Ok(Some(CertificateValidation::Full(certificate)))
        }
        (None, false) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{AuthConfig, TlsConfig};

    fn config(url: &str) -> ElasticsearchConfig {
        ElasticsearchConfig::new(url)
    }

    fn error(c: &ElasticsearchConfig) -> (String, String) {
        let e = transport(c).expect_err("a config error");
        (e.field(), e.to_string())
    }

    #[test]
    fn urls_must_be_absolute_http_with_a_host() {
        assert!(transport(&config("http://127.0.0.1:9200")).is_ok());
        assert!(transport(&config(" https://es.example.com/prefix/ ")).is_ok());
        for bad in ["127.0.0.1:9200", "ftp://h", "http://", "", "http://h?x=1"] {
            let (field, message) = error(&config(bad));
            assert_eq!(field, "url", "{bad}");
            assert!(
                message.contains("https://127.0.0.1:9200"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn url_credentials_become_basic_auth_and_leave_the_url() {
        let (url, creds) = parse_url("http://elastic:p%40ss@h:9200").unwrap();
        assert_eq!(url.as_str(), "http://h:9200/");
        assert!(matches!(creds, Some(Credentials::Basic(u, p)) if u == "elastic" && p == "p@ss"));
        let (field, _) = error(&config("http://elastic@h"));
        assert_eq!(field, "url");
        let mut both = config("http://u:p@h");
        both.auth = Some(AuthConfig::api_key("k"));
        assert_eq!(error(&both).0, "auth");
    }

    #[test]
    fn auth_errors_name_the_key_at_fault() {
        let with = |auth: AuthConfig| {
            let mut c = config("http://h");
            c.auth = Some(auth);
            c
        };
        assert!(transport(&with(AuthConfig::basic("elastic", "pw"))).is_ok());
        assert!(transport(&with(AuthConfig::api_key("aWQ6a2V5"))).is_ok());
        assert!(transport(&with(AuthConfig::api_key("id:key"))).is_ok());
        let mut no_password = AuthConfig::basic("elastic", "x");
        no_password.password = None;
        assert_eq!(error(&with(no_password)).0, "auth.password");
        let mut no_user = AuthConfig::basic("x", "pw");
        no_user.username = None;
        assert_eq!(error(&with(no_user)).0, "auth.username");
        let mut both = AuthConfig::basic("elastic", "pw");
        both.api_key = AuthConfig::api_key("k").api_key;
        assert_eq!(error(&with(both)).0, "auth.api_key");
        assert_eq!(error(&with(AuthConfig::default())).0, "auth");
        assert_eq!(error(&with(AuthConfig::api_key(" "))).0, "auth.api_key");
    }

    #[test]
    fn tls_errors_name_the_key_at_fault() {
        let with = |url: &str, tls: TlsConfig| {
            let mut c = config(url);
            c.tls = tls;
            c
        };
        let insecure = TlsConfig {
            ca_file: None,
            insecure_skip_verify: true,
        };
        assert!(transport(&with("https://h", insecure.clone())).is_ok());
        assert_eq!(
            error(&with("http://h", insecure)).0,
            "tls.insecure_skip_verify"
        );
        let missing = with("https://h", TlsConfig::ca_file("/nonexistent/ca.pem"));
        let (field, message) = error(&missing);
        assert_eq!(field, "tls.ca_file");
        assert!(
            message.contains("cannot read `/nonexistent/ca.pem`"),
            "{message}"
        );
        let dir = std::env::temp_dir().join(format!("sluice-es-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let (field, message) = error(&with("https://h", TlsConfig::ca_file(&dir)));
        let _ = std::fs::remove_file(&dir);
        assert_eq!(field, "tls.ca_file");
        assert!(message.contains("no PEM certificate"), "{message}");
        let mut both = TlsConfig::ca_file("ca.pem");
        both.insecure_skip_verify = true;
        assert_eq!(
            error(&with("https://h", both)).0,
            "tls.insecure_skip_verify"
        );
    }

    #[test]
    fn a_zero_timeout_is_a_config_error() {
        let mut c = config("http://h");
        c.timeout = Duration::ZERO;
        assert_eq!(error(&c).0, "timeout");
    }
}
