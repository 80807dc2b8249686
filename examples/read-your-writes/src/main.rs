//! Read-your-writes with sluice, in one web handler.
//!
//! `POST /orders` with `{"customer": "ada", "total": 12.5}`:
//!
//! 1. inserts the order into PostgreSQL in a transaction and commits it;
//! 2. takes the token, `SELECT pg_current_wal_insert_lsn()`, on the same connection after
//!    the COMMIT (every change the transaction made is at or before it);
//! 3. asks sluice `GET /wait?sink=cache&lsn=TOKEN&timeout=2s`, which answers once the
//!    `cache` sink has applied everything committed up to the token;
//! 4. reads `orders:<id>` from Redis, the cache sluice keeps, and returns it: the read
//!    always sees the write it follows.
//!
//! The application writes to PostgreSQL only; the cache is sluice's. Configuration comes
//! from the environment: `DATABASE_URL`, `REDIS_URL`, `SLUICE_ADMIN` (sluice's admin
//! address, `host:port` or an `http://` URL) and `LISTEN` (this server's address, default
//! `127.0.0.1:3000`). See README.md and run.sh beside this file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// How long a request waits for the cache before it gives up (at most 60s for sluice).
const WAIT_TIMEOUT: &str = "2s";

/// The body of `POST /orders`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    /// Who ordered.
    customer: String,
    /// The order's total, stored as `numeric(12,2)`.
    total: f64,
}

/// What every request shares.
struct App {
    /// One connection, one transaction at a time: a real application would use a pool
    /// (deadpool-postgres, bb8); the recipe is the same on each pooled connection.
    db: Mutex<tokio_postgres::Client>,
    /// The cache sluice writes (a multiplexed connection: cheap to clone per request).
    cache: redis::aio::MultiplexedConnection,
    http: reqwest::Client,
    /// sluice's `/wait` endpoint.
    wait_url: String,
}

/// An error answer: a status and a JSON body saying what went wrong.
type Failure = (StatusCode, Json<Value>);

fn failure(status: StatusCode, error: impl std::fmt::Display, detail: Value) -> Failure {
    (
        status,
        Json(json!({ "error": error.to_string(), "detail": detail })),
    )
}

fn internal(error: impl std::fmt::Display) -> Failure {
    failure(StatusCode::INTERNAL_SERVER_ERROR, error, Value::Null)
}

#[tokio::main]
async fn main() -> Result<()> {
    let env = |name: &str| std::env::var(name).with_context(|| format!("set {name}"));
    let database_url = env("DATABASE_URL")?;
    let redis_url = env("REDIS_URL")?;
    let admin = env("SLUICE_ADMIN")?;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());

    let (db, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .context("connecting to DATABASE_URL")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("read-your-writes: the database connection ended: {e}");
        }
    });
    db.batch_execute(include_str!("../schema.sql"))
        .await
        .context("creating the orders table")?;
    let cache = redis::Client::open(redis_url.as_str())
        .context("REDIS_URL")?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to REDIS_URL")?;
    let base = if admin.contains("://") {
        admin
    } else {
        format!("http://{admin}")
    };
    let app = Arc::new(App {
        db: Mutex::new(db),
        cache,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        wait_url: format!("{}/wait", base.trim_end_matches('/')),
    });

    let router = Router::new()
        .route("/orders", post(create_order))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    eprintln!("read-your-writes: listening on http://{listen}");
    axum::serve(listener, router).await?;
    Ok(())
}

/// `POST /orders`: write, take the token, wait on the cache sink, read the cache.
///
/// 201 with `{id, token, waited_ms, order}` where `order` is the cached document; 504 when
/// the cache did not apply the write within [`WAIT_TIMEOUT`]; 409 when it applied it but
/// an earlier change is in the sink's dead-letter queue; 502 for any other answer of
/// sluice's, with its body as `detail`.
async fn create_order(
    State(app): State<Arc<App>>,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<Value>), Failure> {
    let (id, token) = {
        let mut db = app.db.lock().await;
        let tx = db.transaction().await.map_err(internal)?;
        let row = tx
            .query_one(
                "insert into orders (customer, total) values ($1, $2::float8::numeric(12,2))
                 returning id",
                &[&order.customer, &order.total],
            )
            .await
            .map_err(internal)?;
        let id: i64 = row.get(0);
        tx.commit().await.map_err(internal)?;
        // After COMMIT: the insert position is past the commit record whatever
        // synchronous_commit says (`pg_current_wal_lsn()`, the WAL written, is too with
        // synchronous_commit = on).
        let token: String = db
            .query_one("select pg_current_wal_insert_lsn()::text", &[])
            .await
            .map_err(internal)?
            .get(0);
        (id, token)
    };

    let asked = Instant::now();
    let answer = app
        .http
        .get(&app.wait_url)
        .query(&[
            ("sink", "cache"),
            ("lsn", &token),
            ("timeout", WAIT_TIMEOUT),
        ])
        .send()
        .await
        .map_err(|e| failure(StatusCode::BAD_GATEWAY, format!("sluice: {e}"), Value::Null))?;
    let status = answer.status();
    let body = answer
        .bytes()
        .await
        .map_err(|e| failure(StatusCode::BAD_GATEWAY, format!("sluice: {e}"), Value::Null))?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let waited_ms = asked.elapsed().as_secs_f64() * 1e3;
    match status.as_u16() {
        200 => {}
        408 => {
            return Err(failure(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the cache did not apply order {id} within {WAIT_TIMEOUT}"),
                body,
            ))
        }
        409 => {
            return Err(failure(
                StatusCode::CONFLICT,
                "an earlier change is in the cache sink's DLQ: the cache may miss it",
                body,
            ))
        }
        _ => {
            return Err(failure(
                StatusCode::BAD_GATEWAY,
                format!("sluice answered {status}"),
                body,
            ))
        }
    }

    let mut cache = app.cache.clone();
    let cached: Option<String> = cache.get(format!("orders:{id}")).await.map_err(internal)?;
    let cached: Value = match cached.as_deref().map(serde_json::from_str) {
        Some(Ok(doc)) => doc,
        Some(Err(e)) => return Err(internal(format!("orders:{id} is not JSON: {e}"))),
        None => {
            return Err(internal(format!(
                "orders:{id} is not in the cache after the wait (a bug: please report it)"
            )))
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "token": token,
            "waited_ms": waited_ms,
            "order": cached,
        })),
    ))
}
