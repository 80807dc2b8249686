//! The connection to Redis: one managed, reconnecting connection
//! ([`ConnectionManager`]), pipelines sent on it within the sink's `timeout`, and the
//! cache scripts loaded on demand.
//!
//! The connection is opened by the first round trip (building the sink does no I/O). The
//! manager itself makes one connection attempt and no retries: retrying with backoff is
//! the engine's job. What the client does is replace a connection found dead at once, once:
//! a pipeline that fails on a connection that worked before is sent again on a fresh one
//! (every write is idempotent: fenced or with an explicit stream id), so the first batch
//! after a server restart goes through instead of failing on the old socket. A connection
//! that timed out or failed to set up (authentication, TLS) is dropped whole and opened
//! afresh by the next round trip.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, Value};
use sluice_runtime::config::Secret;

use crate::retry::{is_noscript, timeout_reason, transport_reason};
use crate::RedisConfigError;

/// A Lua script the sink calls with EVALSHA: its source and its SHA1.
pub(crate) struct Lua {
    pub source: &'static str,
    pub sha: String,
}

impl Lua {
    pub(crate) fn new(source: &'static str) -> Self {
        Lua {
            source,
            sha: redis::Script::new(source).get_hash().to_string(),
        }
    }
}

/// Schemes the sink accepts in `url`.
const SCHEMES: [&str; 4] = ["redis", "rediss", "unix", "redis+unix"];

/// A lazily connected Redis client.
pub(crate) struct Client {
    client: redis::Client,
    manager: Option<ConnectionManager>,
    timeout: Duration,
    /// `host:port` (or the socket path), for messages; never the URL.
    endpoint: String,
}

impl Client {
    /// Check the URL and prepare the client. No I/O.
    pub(crate) fn new(url: &Secret, timeout: Duration) -> Result<Self, RedisConfigError> {
        let url = url.expose().trim();
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some(scheme) if SCHEMES.contains(&scheme) => {}
            Some(scheme) => {
                return Err(RedisConfigError::Url {
                    reason: format!("its scheme is `{scheme}`, not redis or rediss"),
                })
            }
            None => {
                return Err(RedisConfigError::Url {
                    reason: "it has no scheme".into(),
                })
            }
        }
        if scheme == Some("rediss") {
            // rustls needs one process-wide crypto provider; the build links ring only. An
            // error means another part of the process installed one already, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(url).map_err(|e| RedisConfigError::Url {
            reason: format!("it does not parse ({})", e.category()),
        })?;
        let endpoint = client.get_connection_info().addr().to_string();
        Ok(Client {
            client,
            manager: None,
            timeout,
            endpoint,
        })
    }

    /// `host:port` of the server.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Send `pipe` and return one reply per command, error replies included. When a reply
    /// says a script is not loaded (a new or restarted server, `SCRIPT FLUSH`), `scripts`
    /// are loaded and the pipeline is sent once more: the commands that did run before are
    /// fenced, so running them again changes nothing. `Err` is a failed round trip: the
    /// reason, for a retry.
    pub(crate) async fn run(
        &mut self,
        pipe: &Pipeline,
        scripts: &[&Lua],
    ) -> Result<Vec<Value>, String> {
        let replies = self.exchange(pipe).await?;
        if scripts.is_empty() || !replies.iter().any(is_noscript) {
            return Ok(replies);
        }
        let mut load = redis::pipe();
        for script in scripts {
            load.cmd("SCRIPT").arg("LOAD").arg(script.source);
        }
        for reply in self.exchange(&load).await? {
            if let Value::ServerError(e) = reply {
                return Err(format!(
                    "redis at {} cannot load sluice's scripts: {}",
                    self.endpoint,
                    crate::retry::reply_text(&e)
                ));
            }
        }
        self.exchange(pipe).await
    }

    /// One round trip, on a connection that is replaced once if it turns out dead.
    async fn exchange(&mut self, pipe: &Pipeline) -> Result<Vec<Value>, String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (mut connection, fresh) = self.connection().await?;
            let sent = tokio::time::timeout(
                self.timeout,
                connection.req_packed_commands(pipe, 0, pipe.len()),
            )
            .await;
            match sent {
                Ok(Ok(replies)) => return Ok(replies),
                Ok(Err(e)) => {
                    let reason = transport_reason(&e, &self.endpoint);
                    if fresh || attempt > 1 || e.is_timeout() {
                        self.manager = None;
                        return Err(reason);
                    }
                    // It worked before: the server restarted or a proxy cut it. The
                    // manager is reconnecting; go again on the new connection.
                    tracing::debug!(endpoint = %self.endpoint, %reason, "redis connection lost; sending again");
                }
                Err(_) => {
                    self.manager = None;
                    return Err(timeout_reason(&self.endpoint, self.timeout));
                }
            }
        }
    }

    /// The managed connection, opened if there is none, and whether it was just opened.
    async fn connection(&mut self) -> Result<(ConnectionManager, bool), String> {
        if let Some(manager) = &self.manager {
            return Ok((manager.clone(), false));
        }
        // Round trips are bounded here, around the whole pipeline; a connection that
        // timed out is dropped with its manager.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None)
            .set_number_of_retries(0);
        let connecting = ConnectionManager::new_with_config(self.client.clone(), config);
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(manager)) => {
                self.manager = Some(manager.clone());
                Ok((manager, true))
            }
            Ok(Err(e)) => Err(transport_reason(&e, &self.endpoint)),
            Err(_) => Err(timeout_reason(&self.endpoint, self.timeout)),
        }
    }

    /// Connect and PING within the timeout, then load `scripts` (which also proves the
    /// server runs Lua scripts for this user). Says what failed.
    pub(crate) async fn check(&mut self, scripts: &[&Lua]) -> Result<(), String> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        for script in scripts {
            pipe.cmd("SCRIPT").arg("LOAD").arg(script.source);
        }
        let replies = self.exchange(&pipe).await?;
        for (i, reply) in replies.iter().enumerate() {
            if let Value::ServerError(e) = reply {
                let what = if i == 0 {
                    "answered PING with"
                } else {
                    "refused to load sluice's script"
                };
                return Err(format!(
                    "redis at {} {what}: {}",
                    self.endpoint,
                    crate::retry::reply_text(e)
                ));
            }
        }
        Ok(())
    }

    /// Drop the connection.
    pub(crate) fn close(&mut self) {
        self.manager = None;
    }
}
