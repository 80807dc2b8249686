//! The connection to the broker: one AMQP connection, one channel in confirm mode that
//! publishes everything in stream order, and a second channel for checking that exchanges
//! exist (a passive declare of a missing exchange closes its channel, and must not take the
//! publishing channel with it).
//!
//! The connection is opened by the first batch (building the sink does no I/O), within the
//! sink's `timeout`, with no automatic recovery and no retries of its own: retrying is the
//! engine's job. A connection that failed, timed out or was closed by the broker is dropped
//! whole; the next batch opens a new one. Exchanges found to exist are remembered for the
//! life of a connection.

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use sluice_runtime::config::Secret;

use crate::classify::{self, describe};
use crate::RabbitMqConfigError;

/// The broker's address, checked: what lapin connects to, and how messages name it.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub uri: AMQPUri,
    /// `host:port (vhost v)`, for messages; never the URL, which may carry a password.
    pub name: String,
}

impl Endpoint {
    /// Check `url`. No I/O. Errors never contain the password.
    pub(crate) fn parse(url: &Secret) -> Result<Self, RabbitMqConfigError> {
        let text = url.expose().trim();
        let bad = |reason: String| RabbitMqConfigError::Url { reason };
        let parsed = url::Url::parse(text).map_err(|e| bad(format!("it does not parse ({e})")))?;
        let scheme = parsed.scheme();
        if scheme != "amqp" && scheme != "amqps" {
            return Err(bad(format!("its scheme is `{scheme}`, not amqp or amqps")));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(bad("it names no host".into())),
        };
        let password = parsed.password().unwrap_or_default().to_string();
        let mut uri: AMQPUri = text.parse().map_err(|e: String| {
            let e = if password.is_empty() {
                e
            } else {
                e.replace(&password, "***")
            };
            bad(format!("it does not parse as an AMQP URI ({e})"))
        })?;
        // amq-protocol-uri reads an IPv6 literal as `localhost`.
        uri.authority.host = host;
        if uri.vhost.is_empty() {
            return Err(bad(
                "its path `/` names the empty vhost; write /%2f for the default vhost `/`, \
                 or leave the path out"
                    .into(),
            ));
        }
        let name = format!(
            "{}:{} (vhost {})",
            match uri.authority.host.contains(':') {
                true => format!("[{}]", uri.authority.host),
                false => uri.authority.host.clone(),
            },
            uri.authority.port,
            uri.vhost
        );
        Ok(Endpoint { uri, name })
    }
}

/// An open connection and its channels.
pub(crate) struct Session {
    connection: Connection,
    /// Confirm mode; every message is published here, in order.
    pub channel: Channel,
    /// For passive declares; opened on demand, dropped when the broker closes it.
    probe: Option<Channel>,
    /// Exchanges known to exist on this connection.
    exchanges: HashSet<String>,
}

impl Session {
    /// Whether the connection and the publishing channel are still open.
    fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Whether the broker told us it blocks publishers (a resource alarm).
    pub(crate) fn is_blocked(&self) -> bool {
        self.connection.status().blocked()
    }
}

/// A lazily connected client.
pub(crate) struct Client {
    endpoint: Endpoint,
    timeout: Duration,
    session: Option<Session>,
}

/// What a check of an exchange found.
pub(crate) enum Exchange {
    Exists,
    Missing,
}

impl Client {
    /// Prepare the client. No I/O.
    ///
    /// For `amqps://`, lapin's TLS connector uses the process's rustls crypto provider, and
    /// installs ring (the only one this build links) when none is installed yet.
    pub(crate) fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        Client {
            endpoint,
            timeout,
            session: None,
        }
    }

    /// `host:port (vhost v)` of the broker.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint.name
    }

    /// The open session, opened now if there is none or it died, and whether it was just
    /// opened. `Err` is why connecting failed, for a retry.
    pub(crate) async fn session(&mut self) -> Result<(&mut Session, bool), String> {
        let reuse = self.session.as_ref().is_some_and(Session::is_open);
        if !reuse {
            self.session = None;
            let session = self.connect().await?;
            self.session = Some(session);
        }
        let session = self.session.as_mut().expect("a session was just set");
        Ok((session, !reuse))
    }

    /// Connect, open the publishing channel and turn publisher confirms on, within the
    /// timeout.
    async fn connect(&self) -> Result<Session, String> {
        let endpoint = &self.endpoint.name;
        let connecting = async {
            let properties = ConnectionProperties::default().with_connection_name("sluice".into());
            let connection = Connection::connect_uri(self.endpoint.uri.clone(), properties)
                .await
                .map_err(|e| {
                    format!("cannot connect to rabbitmq at {endpoint}: {}", describe(&e))
                })?;
            let channel = connection.create_channel().await.map_err(|e| {
                format!(
                    "rabbitmq at {endpoint} did not open a channel: {}",
                    describe(&e)
                )
            })?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| {
                    format!(
                        "rabbitmq at {endpoint} did not turn publisher confirms on: {}",
                        describe(&e)
                    )
                })?;
            Ok(Session {
                connection,
                channel,
                probe: None,
                exchanges: HashSet::new(),
            })
        };
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(classify::timed_out(
                "accept a connection",
                endpoint,
                self.timeout,
            )),
        }
    }

    /// Whether `exchange` exists, by a passive declare (remembered for this connection).
    /// `Err` is why the check itself failed, for a retry.
    pub(crate) async fn exchange(&mut self, exchange: &str) -> Result<Exchange, String> {
        let timeout = self.timeout;
        let endpoint = self.endpoint.name.clone();
        let (session, _) = self.session().await?;
        // The default exchange always exists and cannot be declared.
        if exchange.is_empty() || session.exchanges.contains(exchange) {
            return Ok(Exchange::Exists);
        }
        let checking = async {
            let probe = match session.probe.take().filter(|c| c.status().connected()) {
                Some(probe) => probe,
                None => session.connection.create_channel().await.map_err(|e| {
                    format!(
                        "rabbitmq at {endpoint} did not open a channel: {}",
                        describe(&e)
                    )
                })?,
            };
            let options = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            let declared = probe
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Direct,
                    options,
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(()) => {
                    session.probe = Some(probe);
                    session.exchanges.insert(exchange.to_string());
                    Ok(Exchange::Exists)
                }
                // The broker closed the probe channel; the next check opens another.
                Err(e) if classify::is_not_found(&e) => Ok(Exchange::Missing),
                Err(e) => Err(format!(
                    "rabbitmq at {endpoint} could not check {}: {}",
                    classify::exchange_name(exchange),
                    describe(&e)
                )),
            }
        };
        let checked = match tokio::time::timeout(timeout, checking).await {
            Ok(result) => result,
            Err(_) => Err(classify::timed_out("answer", &endpoint, timeout)),
        };
        if checked.is_err() {
            self.reset();
        }
        checked
    }

    /// Whether the open connection (if any) is blocked by the broker.
    pub(crate) fn is_blocked(&self) -> bool {
        self.session.as_ref().is_some_and(Session::is_blocked)
    }

    /// Drop the connection: the next call opens a new one.
    pub(crate) fn reset(&mut self) {
        self.session = None;
    }

    /// Connect within the timeout and, when `exchange` is known, check that it exists. Says
    /// what failed.
    pub(crate) async fn check(&mut self, exchange: Option<&str>) -> Result<(), String> {
        self.session().await?;
        let Some(exchange) = exchange else {
            return Ok(());
        };
        match self.exchange(exchange).await? {
            Exchange::Exists => Ok(()),
            Exchange::Missing => Err(classify::missing_exchange(exchange, self.endpoint())),
        }
    }

    /// Close the connection politely, within the timeout.
    pub(crate) async fn close(&mut self) {
        if let Some(session) = self.session.take() {
            let closing = session
                .connection
                .close(200, "sluice is closing the sink".into());
            let _ = tokio::time::timeout(self.timeout, closing).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::uri::AMQPScheme;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint::parse(&Secret::new(url)).unwrap()
    }

    #[test]
    fn endpoints_name_host_port_and_vhost_without_credentials() {
        let e = endpoint("amqp://sluice:hunter2@broker.internal:5673/orders");
        assert_eq!(e.name, "broker.internal:5673 (vhost orders)");
        assert_eq!(e.uri.authority.userinfo.password, "hunter2");
        assert_eq!(e.uri.scheme, AMQPScheme::AMQP);
        assert_eq!(
            endpoint("amqp://127.0.0.1/%2f").name,
            "127.0.0.1:5672 (vhost /)"
        );
        assert_eq!(endpoint("amqp://127.0.0.1").uri.vhost, "/");
        let tls = endpoint("amqps://h");
        assert_eq!(tls.uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(tls.uri.authority.port, 5671);
    }

    #[test]
    fn ipv6_hosts_are_kept() {
        let e = endpoint("amqp://[::1]:5673/%2f");
        assert_eq!(e.uri.authority.host, "::1");
        assert_eq!(e.name, "[::1]:5673 (vhost /)");
    }

    #[test]
    fn query_parameters_reach_lapin() {
        let e = endpoint("amqp://h/%2f?heartbeat=5&frame_max=8192");
        assert_eq!(e.uri.query.heartbeat, Some(5));
        assert_eq!(e.uri.query.frame_max, Some(8192));
    }

    #[tokio::test]
    async fn a_broker_that_is_not_there_is_a_reason_to_retry() {
        // Nothing listens on port 9 (discard).
        let mut client = Client::new(endpoint("amqp://127.0.0.1:9"), Duration::from_secs(2));
        let e = client.check(Some("events")).await.unwrap_err();
        assert!(
            e.starts_with("cannot connect to rabbitmq at 127.0.0.1:9 (vhost /):"),
            "{e}"
        );
        assert!(client.session.is_none());
    }
}
