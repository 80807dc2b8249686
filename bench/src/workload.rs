//! The tables, the publications and the changes every consumer reads.
//!
//! Each workload ends with a *marker*: the WAL insert position taken inside its last
//! transaction, after its last change and before its commit. Every change of the workload
//! is before the marker, and the last commit is after it, so a consumer has read the
//! whole workload exactly when it has seen a commit past the marker: `pg_recvlogical`
//! stops there (`--endpos`), and a sluice sink is done when its durable `flush_lsn` (the
//! end of the last transaction it delivered whole) is past it. Background WAL written
//! after the commit cannot move the marker.
//!
//! Besides the orders table, the outbox workload writes a transactional outbox (read
//! from the WAL with `source.outbox`, and from a copy of it by the polling source), and
//! the backfill workload fills a table before any slot exists, for `snapshot: initial`.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_testkit::Postgres;
use tokio_postgres::Client;

/// The table the workloads write: six columns, like an orders table.
pub const TABLE: &str = "public.bench";
/// The publication every consumer of the table workloads reads.
pub const PUBLICATION: &str = "bench";

/// The outbox the outbox workload writes: the WAL outbox's default columns.
pub const OUTBOX_TABLE: &str = "public.bench_outbox";
/// The publication of the outbox table alone (sluice adds a missing table to the
/// publication it is given, so the outbox never joins [`PUBLICATION`]).
pub const OUTBOX_PUBLICATION: &str = "bench_outbox";
/// A copy of the outbox table in no publication, filled with the outbox workload's rows
/// before each polling run: the polling source deletes what it publishes, and its
/// deletes must not reach the WAL consumers of later rounds.
pub const POLL_TABLE: &str = "public.bench_outbox_poll";

/// The table the backfill workload fills before the pipeline's slot exists.
pub const BACKFILL_TABLE: &str = "public.bench_backfill";
/// The publication of the backfill table alone.
pub const BACKFILL_PUBLICATION: &str = "bench_backfill";

/// A WAL position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `X/Y`, as PostgreSQL prints it.
    pub fn parse(text: &str) -> Result<Lsn> {
        let (hi, lo) = text
            .split_once('/')
            .with_context(|| format!("`{text}` is not an LSN"))?;
        Ok(Lsn(
            (u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?
        ))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// What a workload writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `rows` inserts in transactions of `tx_rows`.
    Inserts,
    /// An update of each of those rows, in transactions of `tx_rows`.
    Updates,
    /// `rows` inserts in one transaction.
    OneTx,
    /// `rows` outbox rows (an `order_created` event each, 1000 aggregates) in transactions
    /// of `tx_rows`, outbox rows alone.
    Outbox,
    /// `rows` existing rows of the backfill table, copied by `snapshot: initial`.
    Backfill,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Inserts,
        Workload::Updates,
        Workload::OneTx,
        Workload::Outbox,
        Workload::Backfill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Inserts => "inserts",
            Workload::Updates => "updates",
            Workload::OneTx => "one-tx",
            Workload::Outbox => "outbox",
            Workload::Backfill => "backfill",
        }
    }

    /// The publication `pg_recvlogical` reads for this workload.
    pub fn publication(self) -> &'static str {
        match self {
            Workload::Inserts | Workload::Updates | Workload::OneTx => PUBLICATION,
            Workload::Outbox => OUTBOX_PUBLICATION,
            Workload::Backfill => BACKFILL_PUBLICATION,
        }
    }

    /// How the table row describes it.
    pub fn label(self, rows: u64, tx_rows: u64) -> String {
        match self {
            Workload::Inserts => format!("{} inserts, {tx_rows}/tx", count(rows)),
            Workload::Updates => format!("{} updates, {tx_rows}/tx", count(rows)),
            Workload::OneTx => format!("{}-row transaction", count(rows)),
            Workload::Outbox => format!("{} outbox events, {tx_rows}/tx", count(rows)),
            Workload::Backfill => format!("backfill of {} rows", count(rows)),
        }
    }
}

/// `1000000` as `1M`, `200000` as `200k`.
pub fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// A workload, written.
pub struct Generated {
    /// Changes written (each one event for every consumer).
    pub events: u64,
    /// Inside the last transaction, after its last change: see the module doc.
    pub marker: Lsn,
    /// How long writing it took.
    pub took: Duration,
}

/// Server settings for a quiet, fast cluster on top of the testkit's (fsync off,
/// synchronous_commit off): no autovacuum or checkpoints competing with a timed run, and
/// room for a slot per consumer and repeat. Restarts the server; returns a new client
/// after creating the tables and their publications.
pub async fn prepare(pg: &Postgres) -> Result<Client> {
    let client = pg.client().await;
    for setting in [
        "alter system set autovacuum = off",
        "alter system set max_wal_size = '16GB'",
        "alter system set checkpoint_timeout = '1h'",
        "alter system set wal_sender_timeout = '5min'",
        "alter system set max_replication_slots = 100",
    ] {
        client.batch_execute(setting).await.context(setting)?;
    }
    drop(client);
    pg.restart();
    let client = pg.client().await;
    client
        .batch_execute(&format!(
            "create table {TABLE} (
                 id bigint primary key,
                 account int not null,
                 status text not null,
                 amount numeric(12,2) not null,
                 note text,
                 updated_at timestamptz not null
             );
             create publication {PUBLICATION} for table {TABLE};
             create table {OUTBOX_TABLE} (
                 id bigserial primary key,
                 aggregate_type text not null,
                 aggregate_id text not null,
                 type text not null,
                 payload jsonb not null,
                 headers jsonb
             );
             create publication {OUTBOX_PUBLICATION} for table {OUTBOX_TABLE};
             create table {POLL_TABLE} (like {OUTBOX_TABLE} including all);
             create table {BACKFILL_TABLE} (like {TABLE} including all);
             create publication {BACKFILL_PUBLICATION} for table {BACKFILL_TABLE};"
        ))
        .await
        .context("creating the bench tables and publications")?;
    Ok(client)
}

fn insert_sql(first: u64, last: u64) -> String {
    rows_sql(TABLE, first, last)
}

/// Rows shaped like orders into `table` (the bench table or the backfill table).
fn rows_sql(table: &str, first: u64, last: u64) -> String {
    format!(
        "insert into {table} (id, account, status, amount, note, updated_at)
         select g, g % 1000, 'new', (g % 100000) / 100.0, 'order ' || g, now()
         from generate_series({first}, {last}) g"
    )
}

/// Outbox rows with ids `first..=last`: one `order_created` event per order, keyed by
/// one of 1000 accounts, about 150 bytes of payload and headers each. The ids are given
/// (not drawn from the sequence) so that the polling copy holds the very same rows.
fn outbox_sql(first: u64, last: u64) -> String {
    format!(
        "insert into {OUTBOX_TABLE} (id, aggregate_type, aggregate_id, type, payload, headers)
         select g, 'account', (g % 1000)::text, 'order_created',
                jsonb_build_object('order', g, 'account', g % 1000, 'status', 'new',
                                   'amount', (g % 100000) / 100.0, 'note', 'order ' || g),
                jsonb_build_object('source', 'sluice-bench', 'trace', md5(g::text))
         from generate_series({first}, {last}) g"
    )
}

fn update_sql(first: u64, last: u64) -> String {
    format!(
        "update {TABLE} set status = 'paid', amount = amount + 1, updated_at = now()
         where id between {first} and {last}"
    )
}

/// Write `workload`: ids `1..=rows` for inserts and updates, `rows+1..=2*rows` for the
/// one big transaction, `1..=rows` in the outbox and backfill tables. The backfill table
/// is vacuumed, so that every reader finds its hint bits set (the first reader of fresh
/// rows would pay for setting them, whoever it is).
pub async fn generate(
    client: &Client,
    workload: Workload,
    rows: u64,
    tx_rows: u64,
) -> Result<Generated> {
    let started = Instant::now();
    let marker = match workload {
        Workload::Inserts => in_transactions(client, 1, rows, tx_rows, insert_sql).await?,
        Workload::Updates => in_transactions(client, 1, rows, tx_rows, update_sql).await?,
        Workload::OneTx => in_transactions(client, rows + 1, rows, rows, insert_sql).await?,
        Workload::Outbox => in_transactions(client, 1, rows, tx_rows, outbox_sql).await?,
        Workload::Backfill => {
            let sql = |first, last| rows_sql(BACKFILL_TABLE, first, last);
            let marker = in_transactions(client, 1, rows, tx_rows, sql).await?;
            client
                .batch_execute(&format!("vacuum analyze {BACKFILL_TABLE}"))
                .await?;
            marker
        }
    };
    let took = started.elapsed();
    // Write out dirty buffers now rather than during a timed run.
    client.batch_execute("checkpoint").await?;
    Ok(Generated {
        events: rows,
        marker,
        took,
    })
}

/// Run `sql(first_id, last_id)` over `rows` ids from `first`, `per_tx` at a time, each
/// chunk its own transaction; returns the marker taken inside the last one.
async fn in_transactions(
    client: &Client,
    first: u64,
    rows: u64,
    per_tx: u64,
    sql: impl Fn(u64, u64) -> String,
) -> Result<Lsn> {
    if rows == 0 || per_tx == 0 {
        bail!("--rows and --tx-rows must be at least 1");
    }
    let end = first + rows - 1;
    let mut from = first;
    loop {
        let to = (from + per_tx - 1).min(end);
        if to < end {
            client.batch_execute(&sql(from, to)).await?;
            from = to + 1;
            continue;
        }
        client
            .batch_execute(&format!("begin; {}", sql(from, to)))
            .await?;
        let lsn: String = client
            .query_one("select pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
        client.batch_execute("commit").await?;
        return Lsn::parse(&lsn);
    }
}

/// Insert `rate` rows per second for `secs`, in 100 transactions a second (one every
/// 10 ms, `rate / 100` rows each), with ids from `first_id`. Returns the rows written.
///
/// These commits are synchronous, as in production: with `synchronous_commit = off` (the
/// test cluster's default) a commit's WAL waits for the WAL writer (`wal_writer_delay`,
/// 200 ms) before any walsender may send it, which would be measured as sluice's latency.
pub async fn steady(client: &Client, first_id: u64, rate: u64, secs: u64) -> Result<u64> {
    steady_of(client, insert_sql, first_id, rate, secs).await
}

/// As [`steady`], with outbox rows (ids from `first_id`) instead of orders.
pub async fn steady_outbox(client: &Client, first_id: u64, rate: u64, secs: u64) -> Result<u64> {
    steady_of(client, outbox_sql, first_id, rate, secs).await
}

async fn steady_of(
    client: &Client,
    sql: fn(u64, u64) -> String,
    first_id: u64,
    rate: u64,
    secs: u64,
) -> Result<u64> {
    client.batch_execute("set synchronous_commit = on").await?;
    let written = steady_inserts(client, sql, first_id, rate, secs).await;
    client.batch_execute("reset synchronous_commit").await?;
    written
}

async fn steady_inserts(
    client: &Client,
    sql: fn(u64, u64) -> String,
    first_id: u64,
    rate: u64,
    secs: u64,
) -> Result<u64> {
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut id = first_id;
    for _ in 0..secs * 100 {
        tick.tick().await;
        client.batch_execute(&sql(id, id + per_tick - 1)).await?;
        id += per_tick;
    }
    Ok(id - first_id)
}

/// Fill the polling copy with the outbox workload's `rows` rows, as they are in the
/// outbox (ids `1..=rows`), on a fresh relation: the deletes of an earlier polling run
/// leave nothing behind. Analyzed, so the planner reads it by its primary key as it
/// would a live outbox, and checkpointed before the timed run, as [`generate`] does.
pub async fn refill_poll_table(client: &Client, rows: u64) -> Result<()> {
    client
        .batch_execute(&format!(
            "truncate {POLL_TABLE};
             insert into {POLL_TABLE} select * from {OUTBOX_TABLE} where id between 1 and {rows};
             analyze {POLL_TABLE};
             checkpoint;"
        ))
        .await
        .context("filling the polling copy of the outbox")
}

/// Rows of the polling copy not deleted yet: after a polling run, the ones it did not
/// settle.
pub async fn poll_table_left(client: &Client) -> Result<i64> {
    Ok(client
        .query_one(&format!("select count(*) from {POLL_TABLE}"), &[])
        .await?
        .get(0))
}

/// Set the server's `synchronous_commit` for new sessions (`on`, as PostgreSQL ships, or
/// back to the bench cluster's `off`) and reload.
pub async fn server_synchronous_commit(client: &Client, on: bool) -> Result<()> {
    let setting = if on {
        "alter system set synchronous_commit = on"
    } else {
        "alter system reset synchronous_commit"
    };
    client.batch_execute(setting).await.context(setting)?;
    client
        .batch_execute("select pg_reload_conf()")
        .await
        .context("reloading the server's settings")
}

/// Create a logical slot for pgoutput.
pub async fn create_slot(client: &Client, name: &str) -> Result<()> {
    client
        .query_one(
            "select pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await
        .with_context(|| format!("creating slot {name}"))?;
    Ok(())
}

/// Drop a slot, waiting up to 30 s for its last consumer to let go; a missing slot is
/// fine.
pub async fn drop_slot(client: &Client, name: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let active: Option<bool> = client
            .query_opt(
                "select active from pg_replication_slots where slot_name = $1",
                &[&name],
            )
            .await?
            .map(|r| r.get(0));
        let late = started.elapsed() > Duration::from_secs(30);
        match active {
            None => return Ok(()),
            Some(false) => {
                let dropped = client
                    .execute("select pg_drop_replication_slot($1)", &[&name])
                    .await;
                match dropped {
                    Ok(_) => return Ok(()),
                    Err(e) if late => return Err(e).context(format!("dropping slot {name}")),
                    Err(_) => {}
                }
            }
            Some(true) if late => bail!("slot {name} is still in use after 30 s"),
            Some(true) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip() {
        let l = Lsn::parse("1/2A0").unwrap();
        assert_eq!(l, Lsn((1 << 32) | 0x2A0));
        assert_eq!(l.to_string(), "1/2A0");
        assert!(Lsn::parse("12").is_err());
    }

    #[test]
    fn counts_are_short() {
        assert_eq!(count(1_000_000), "1M");
        assert_eq!(count(200_000), "200k");
        assert_eq!(count(1234), "1234");
    }
}
