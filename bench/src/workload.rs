//! The table, the publication and the changes every consumer reads.
//!
//! Each workload ends with a *marker*: the WAL insert position taken inside its last
//! transaction, after its last change and before its commit. Every change of the workload
//! is before the marker, and the last commit is after it, so a consumer has read the
//! whole workload exactly when it has seen a commit past the marker: `pg_recvlogical`
//! stops there (`--endpos`), and a sluice sink is done when its durable `flush_lsn` (the
//! end of the last transaction it delivered whole) is past it. Background WAL written
//! after the commit cannot move the marker.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_testkit::Postgres;
use tokio_postgres::Client;

/// The table the workloads write: six columns, like an orders table.
pub const TABLE: &str = "public.bench";
/// The publication every consumer reads.
pub const PUBLICATION: &str = "bench";

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
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Inserts, Workload::Updates, Workload::OneTx];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Inserts => "inserts",
            Workload::Updates => "updates",
            Workload::OneTx => "one-tx",
        }
    }

    /// How the table row describes it.
    pub fn label(self, rows: u64, tx_rows: u64) -> String {
        match self {
            Workload::Inserts => format!("{} inserts, {tx_rows}/tx", count(rows)),
            Workload::Updates => format!("{} updates, {tx_rows}/tx", count(rows)),
            Workload::OneTx => format!("{}-row transaction", count(rows)),
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
/// after creating the table and the publication.
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
             create publication {PUBLICATION} for table {TABLE};"
        ))
        .await
        .context("creating the bench table and publication")?;
    Ok(client)
}

fn insert_sql(first: u64, last: u64) -> String {
    format!(
        "insert into {TABLE} (id, account, status, amount, note, updated_at)
         select g, g % 1000, 'new', (g % 100000) / 100.0, 'order ' || g, now()
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
/// one big transaction.
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
    sql: fn(u64, u64) -> String,
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
    client.batch_execute("set synchronous_commit = on").await?;
    let written = steady_inserts(client, first_id, rate, secs).await;
    client.batch_execute("reset synchronous_commit").await?;
    written
}

async fn steady_inserts(client: &Client, first_id: u64, rate: u64, secs: u64) -> Result<u64> {
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut id = first_id;
    for _ in 0..secs * 100 {
        tick.tick().await;
        client
            .batch_execute(&insert_sql(id, id + per_tick - 1))
            .await?;
        id += per_tick;
    }
    Ok(id - first_id)
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
