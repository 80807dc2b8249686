//! Captured tables that left the publication, noticed while running.
//!
//! A table dropped and created again is a new relation: PostgreSQL removed the old one
//! from the publication with it, and does not publish the new one until it is added back,
//! so its changes are silently not captured. [`Watch`] keeps every captured table in the
//! publication: a task compares the publication with `tables:` every few seconds on an
//! ordinary SQL connection (and at once when the DDL trigger's message reports a table
//! created under a captured name), follows each table by OID through renames, adds a
//! table created again back (`ALTER PUBLICATION … ADD TABLE`, or a notice with the SQL
//! when the role may not), and raises a `publication_gap` notice naming the window whose
//! changes were not captured: from the drop (its commit LSN when the trigger reported it,
//! else the last check that saw the table published) to the re-add. Those rows can be
//! copied with `sluice backfill`.
//!
//! [`missing`] is the read-only form for `validate --connect` and `status`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_runtime::event::format_timestamp_micros;
use sluice_runtime::source::SourceStatus;
use sluice_runtime::state::Store;
use sluice_runtime::Lsn;
use tokio::sync::Notify;
use tokio_postgres::Client;

use crate::options::{PostgresOptions, TableRef};
use crate::setup::{self, ident, query_err, SetupError};
use crate::tables::{self, Identity};

/// How often the publication is compared with `tables:`.
pub const CHECK_EVERY: Duration = Duration::from_secs(3);

/// A moment, as the server's WAL position and the wall clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub lsn: Lsn,
    pub at: SystemTime,
}

impl std::fmt::Display for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self
            .at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        write!(f, "LSN {} ({})", self.lsn, format_timestamp_micros(micros))
    }
}

/// Where a window of uncaptured changes begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GapStart {
    /// The `DROP TABLE`, as the DDL trigger reported it.
    Dropped(Lsn),
    /// The last check that saw the table published.
    LastSeen(Mark),
    /// Before this run.
    Unknown,
}

impl std::fmt::Display for GapStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GapStart::Dropped(lsn) => write!(f, "the DROP TABLE committed at LSN {lsn}"),
            GapStart::LastSeen(mark) => {
                write!(f, "{mark} (the last check that saw it published)")
            }
            GapStart::Unknown => write!(f, "a moment before this run started"),
        }
    }
}

/// What one check found of a captured table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The table exists (OID, name now) and the publication has it.
    Published(u32, TableRef),
    /// The table exists but the publication does not have it.
    Unpublished(u32, TableRef),
    /// No table with its OID or its last known name.
    Gone,
}

/// What to do after a check.
#[derive(Debug, PartialEq, Eq)]
pub enum Todo {
    Nothing,
    /// Add the table back to the publication.
    Add(u32, TableRef),
    /// Tell the operator (a `publication_gap` notice).
    Notice(String),
    /// Log a warning.
    Warn(String),
}

/// One captured table as the checks see it.
#[derive(Clone, Debug)]
struct Watched {
    configured: TableRef,
    oid: Option<u32>,
    /// Its name in the catalog at the last check.
    name: TableRef,
    last_published: Option<Mark>,
    /// Commit LSN of its `DROP TABLE`, from the DDL trigger.
    dropped: Option<Lsn>,
    /// Not published since; `told`: the operator heard of it already.
    gap: Option<(GapStart, bool)>,
}

impl Watched {
    fn gap_start(&self) -> GapStart {
        match (self.dropped, self.last_published) {
            (Some(lsn), _) => GapStart::Dropped(lsn),
            (None, Some(mark)) => GapStart::LastSeen(mark),
            (None, None) => GapStart::Unknown,
        }
    }

    /// Take in what a check found at `now`.
    fn observe(&mut self, found: Found, now: Mark, publication: &str, pipeline: &str) -> Todo {
        match found {
            Found::Published(oid, name) => {
                let todo = match self.gap.take() {
                    // Someone else added it back (an administrator, or a publication of
                    // all tables): the window is closed now.
                    Some((start, _)) => {
                        Todo::Notice(closed_gap(&name, start, now, publication, pipeline))
                    }
                    None => Todo::Nothing,
                };
                self.oid = Some(oid);
                self.name = name;
                self.last_published = Some(now);
                self.dropped = None;
                todo
            }
            Found::Unpublished(oid, name) => {
                let start = self.gap_start();
                self.gap.get_or_insert((start, false));
                self.name = name.clone();
                Todo::Add(oid, name)
            }
            Found::Gone => {
                let start = self.gap_start();
                match &mut self.gap {
                    Some((_, true)) => Todo::Nothing,
                    Some(gap) => {
                        gap.1 = true;
                        Todo::Warn(gone(&self.name, gap.0))
                    }
                    None => {
                        self.gap = Some((start, true));
                        Todo::Warn(gone(&self.name, start))
                    }
                }
            }
        }
    }

    /// The table was added back at `now` as `oid`.
    fn added(&mut self, oid: u32, now: Mark, publication: &str, pipeline: &str) -> String {
        let start = self.gap.take().map_or(self.gap_start(), |g| g.0);
        let recreated = self.oid.is_some_and(|o| o != oid);
        self.oid = Some(oid);
        self.last_published = Some(now);
        self.dropped = None;
        let how = if recreated {
            "was dropped and created again, which took it out of"
        } else {
            "was taken out of"
        };
        format!(
            "captured table {} {how} publication {publication}; sluice added it back at {now}. \
             Its changes from {start} to {now} were not captured (from then on they are): copy \
             them with `sluice backfill <the file of pipeline {pipeline}> --table {}`",
            self.name, self.name
        )
    }

    /// The role may not add it back: the notice with the SQL, once.
    fn refused(&mut self, sql: &str, publication: &str, pipeline: &str) -> Option<String> {
        let start = self.gap_start();
        let gap = self.gap.get_or_insert((start, false));
        if gap.1 {
            return None;
        }
        gap.1 = true;
        Some(format!(
            "captured table {} is not in publication {publication} (dropped and created again?), \
             so its changes are not captured since {}; this role may not add it back. Ask an \
             administrator to run:\n    {sql};\nthen copy what was missed with `sluice backfill \
             <the file of pipeline {pipeline}> --table {}`",
            self.name, gap.0, self.name
        ))
    }
}

fn gone(name: &TableRef, start: GapStart) -> String {
    format!(
        "captured table {name} no longer exists (since {start}): nothing of it is captured until \
         a table of that name is created again, which sluice then adds back to the publication"
    )
}

fn closed_gap(
    name: &TableRef,
    start: GapStart,
    now: Mark,
    publication: &str,
    pipeline: &str,
) -> String {
    format!(
        "captured table {name} is in publication {publication} again (seen at {now}). Its \
         changes from {start} to {now} were not captured: copy them with `sluice backfill \
         <the file of pipeline {pipeline}> --table {name}`"
    )
}

/// The captured tables kept in the publication while the source runs.
pub struct Watch {
    tables: Mutex<Vec<Watched>>,
    wake: Notify,
}

/// What a [`Watch`] task needs beside the watch.
pub struct WatchContext {
    pub url: String,
    pub publication: String,
    pub pipeline: String,
    pub status: Arc<SourceStatus>,
    pub store: Store,
}

impl Watch {
    /// Watch the tables [`tables::resolve`] found.
    pub fn new(identities: &[Identity]) -> Arc<Self> {
        Arc::new(Watch {
            tables: Mutex::new(
                identities
                    .iter()
                    .map(|i| Watched {
                        configured: i.configured.clone(),
                        oid: i.oid,
                        name: i.current.clone(),
                        last_published: None,
                        dropped: None,
                        gap: None,
                    })
                    .collect(),
            ),
            wake: Notify::new(),
        })
    }

    /// The DDL trigger reported a `DROP TABLE` of captured table `configured`, committed
    /// at `at`: the window of uncaptured changes begins there.
    pub fn dropped(&self, configured: &TableRef, at: Lsn) {
        let mut tables = self.tables.lock().unwrap();
        if let Some(w) = tables.iter_mut().find(|w| &w.configured == configured) {
            w.dropped = Some(at);
            if let Some(gap) = &mut w.gap {
                if !gap.1 {
                    gap.0 = GapStart::Dropped(at);
                }
            }
        }
        self.wake.notify_one();
    }

    /// The DDL trigger reported a table created under a captured name: check at once.
    pub fn created(&self) {
        self.wake.notify_one();
    }

    /// Check every [`CHECK_EVERY`] (and when woken) until the task is aborted.
    pub async fn run(self: Arc<Self>, ctx: WatchContext) {
        let mut client: Option<Client> = None;
        loop {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = setup::connect(&ctx.url).await.ok();
            }
            if let Some(c) = &client {
                if let Err(e) = self.check(c, &ctx).await {
                    tracing::debug!(error = %e, "publication check failed; trying again later");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Compare the publication with the captured tables once, and act.
    pub async fn check(&self, client: &Client, ctx: &WatchContext) -> Result<(), SetupError> {
        let now = mark(client).await?;
        let published = published_oids(client, &ctx.publication).await?;
        let snapshot: Vec<Watched> = self.tables.lock().unwrap().clone();
        for (i, w) in snapshot.iter().enumerate() {
            let found = match find(client, w.oid, &w.name).await? {
                Some((oid, name)) if published.contains(&oid) => Found::Published(oid, name),
                Some((oid, name)) => Found::Unpublished(oid, name),
                None => Found::Gone,
            };
            let todo =
                self.tables.lock().unwrap()[i].observe(found, now, &ctx.publication, &ctx.pipeline);
            match todo {
                Todo::Nothing => {}
                Todo::Notice(text) => ctx.status.notice("publication_gap", text),
                Todo::Warn(text) => tracing::warn!("{text}"),
                Todo::Add(oid, name) => {
                    let sql = format!(
                        "ALTER PUBLICATION {} ADD TABLE {}",
                        ident(&ctx.publication),
                        name.quoted()
                    );
                    match client.batch_execute(&sql).await {
                        Ok(()) => {
                            let at = mark(client).await?;
                            let text = self.tables.lock().unwrap()[i].added(
                                oid,
                                at,
                                &ctx.publication,
                                &ctx.pipeline,
                            );
                            tables::remember_one(&ctx.store, &w.configured, oid).await;
                            ctx.status.notice("publication_gap", text);
                        }
                        Err(e) if e.code().is_some_and(|c| c.code() == "42501") => {
                            let refused = self.tables.lock().unwrap()[i].refused(
                                &sql,
                                &ctx.publication,
                                &ctx.pipeline,
                            );
                            if let Some(text) = refused {
                                ctx.status.notice("publication_gap", text);
                            }
                        }
                        Err(e) => return Err(query_err(format!("running `{sql}`"))(e)),
                    }
                }
            }
        }
        Ok(())
    }
}

/// The server's WAL position now, and the clock.
async fn mark(client: &Client) -> Result<Mark, SetupError> {
    Ok(Mark {
        lsn: setup::current_wal_lsn(client).await?,
        at: SystemTime::now(),
    })
}

/// The OIDs of the tables `publication` publishes.
async fn published_oids(client: &Client, publication: &str) -> Result<HashSet<u32>, SetupError> {
    let rows = client
        .query(
            "select c.oid from pg_publication_tables pt
               join pg_namespace n on n.nspname = pt.schemaname
               join pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename
              where pt.pubname = $1",
            &[&publication],
        )
        .await
        .map_err(query_err("listing the publication's tables"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The table with OID `oid` (whatever its name now), else the one called `name`.
async fn find(
    client: &Client,
    oid: Option<u32>,
    name: &TableRef,
) -> Result<Option<(u32, TableRef)>, SetupError> {
    let row = client
        .query_opt(
            "select c.oid, n.nspname::text, c.relname::text
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.relkind in ('r', 'p')
                and (c.oid = $1 or (n.nspname = $2 and c.relname = $3))
              order by c.oid = $1 desc limit 1",
            &[&oid.unwrap_or(0), &name.schema, &name.name],
        )
        .await
        .map_err(query_err(format!("looking up table {name}")))?;
    Ok(row.map(|r| {
        (
            r.get(0),
            TableRef::new(r.get::<_, String>(1), r.get::<_, String>(2)),
        )
    }))
}

/// A captured table the publication lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub table: TableRef,
    /// Whether a table of that name exists (else it was dropped, or renamed).
    pub exists: bool,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.exists {
            true => write!(
                f,
                "{} (its changes are not captured until it is added back)",
                self.table
            ),
            false => write!(f, "{} (no such table: dropped, or renamed?)", self.table),
        }
    }
}

/// The captured tables (by their names in `o`) that `o.publication` does not publish; empty
/// when the publication does not exist yet (`run` creates it with every table).
pub async fn missing(client: &Client, o: &PostgresOptions) -> Result<Vec<Missing>, SetupError> {
    let exists = client
        .query_opt(
            "select 1 from pg_publication where pubname = $1",
            &[&o.publication],
        )
        .await
        .map_err(query_err("looking up the publication"))?
        .is_some();
    if !exists {
        return Ok(Vec::new());
    }
    let published = published_oids(client, &o.publication).await?;
    let mut out = Vec::new();
    for t in o.captured_tables() {
        match find(client, None, t).await? {
            Some((oid, _)) if published.contains(&oid) => {}
            Some(_) => out.push(Missing {
                table: t.clone(),
                exists: true,
            }),
            None => out.push(Missing {
                table: t.clone(),
                exists: false,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TableRef {
        TableRef::new("public", name)
    }

    fn at(lsn: u64) -> Mark {
        Mark {
            lsn: Lsn(lsn),
            at: UNIX_EPOCH + Duration::from_secs(1_800_000_000 + lsn),
        }
    }

    fn watched() -> Watched {
        Watched {
            configured: t("orders"),
            oid: Some(10),
            name: t("orders"),
            last_published: None,
            dropped: None,
            gap: None,
        }
    }

    #[test]
    fn a_table_created_again_is_added_back_with_the_window_since_its_drop() {
        let mut w = watched();
        assert_eq!(
            w.observe(Found::Published(10, t("orders")), at(0x100), "pub", "p"),
            Todo::Nothing
        );
        // The trigger dated the drop; the next check finds a new table of that name.
        w.dropped = Some(Lsn(0x180));
        assert_eq!(
            w.observe(Found::Unpublished(20, t("orders")), at(0x200), "pub", "p"),
            Todo::Add(20, t("orders"))
        );
        let text = w.added(20, at(0x210), "pub", "p");
        assert!(text.contains("dropped and created again"), "{text}");
        assert!(
            text.contains("from the DROP TABLE committed at LSN 0/180 to LSN 0/210"),
            "{text}"
        );
        assert!(
            text.contains("sluice backfill <the file of pipeline p> --table public.orders"),
            "{text}"
        );
        assert_eq!(w.oid, Some(20));
        assert_eq!(
            w.observe(Found::Published(20, t("orders")), at(0x300), "pub", "p"),
            Todo::Nothing
        );
    }

    #[test]
    fn without_the_trigger_the_window_starts_at_the_last_check_that_saw_it() {
        let mut w = watched();
        w.observe(Found::Published(10, t("orders")), at(0x100), "pub", "p");
        let Todo::Warn(text) = w.observe(Found::Gone, at(0x150), "pub", "p") else {
            panic!("a table gone is logged")
        };
        assert!(text.contains("no longer exists"), "{text}");
        assert_eq!(
            w.observe(Found::Gone, at(0x160), "pub", "p"),
            Todo::Nothing,
            "once"
        );
        w.observe(Found::Unpublished(20, t("orders")), at(0x200), "pub", "p");
        let text = w.added(20, at(0x210), "pub", "p");
        assert!(
            text.contains("from LSN 0/100 (")
                && text.contains("(the last check that saw it published) to LSN 0/210"),
            "the last check that saw it: {text}"
        );
    }

    #[test]
    fn when_the_role_may_not_add_it_the_sql_is_told_once_and_the_window_closes_later() {
        let mut w = watched();
        w.observe(Found::Published(10, t("orders")), at(0x100), "pub", "p");
        w.observe(Found::Unpublished(20, t("orders")), at(0x200), "pub", "p");
        let text = w
            .refused(
                "ALTER PUBLICATION \"pub\" ADD TABLE \"public\".\"orders\"",
                "pub",
                "p",
            )
            .unwrap();
        assert!(text.contains("Ask an administrator"), "{text}");
        assert!(
            text.contains("ALTER PUBLICATION \"pub\" ADD TABLE"),
            "{text}"
        );
        w.observe(Found::Unpublished(20, t("orders")), at(0x300), "pub", "p");
        assert_eq!(w.refused("sql", "pub", "p"), None, "told once");
        let Todo::Notice(text) =
            w.observe(Found::Published(20, t("orders")), at(0x400), "pub", "p")
        else {
            panic!("the window closes with a notice")
        };
        assert!(text.contains("from LSN 0/100"), "{text}");
        assert!(text.contains("to LSN 0/400"), "{text}");
    }
}
