//! The outbox table as the catalog describes it, checked before polling starts (the
//! columns exist, the id is an integer, the role may lock and settle rows), and the
//! statements that read and settle it.

use sluice_postgres::config::OutboxColumns;
use sluice_postgres::setup::{describe, ident};
use sluice_postgres::types::{Kind, TypeRegistry};
use sluice_postgres::TableRef;
use tokio_postgres::Client;

use crate::config::AfterPublish;

/// The outbox cannot be polled as configured.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("outbox table {0} does not exist (source.table); create it, or name the right one")]
    Missing(TableRef),
    #[error(
        "outbox table {table} has no column `{column}` (source.{field}); \
         rename the column or set source.{field} to the column's name"
    )]
    NoColumn {
        table: TableRef,
        column: String,
        field: String,
    },
    #[error(
        "outbox column {table}.{column} is of type {found}, but the id must be an increasing \
         integer (bigint, integer or smallint: bigserial, serial or an identity column): events \
         are read in id order and their positions derive from it (source.{field})"
    )]
    IdType {
        table: TableRef,
        column: String,
        found: String,
        field: String,
    },
    #[error(
        "column {table}.{column} is of type {found}; `after_publish: mark` sets it to now(), so it \
         must be a nullable timestamp or timestamptz (source.published_at)"
    )]
    MarkType {
        table: TableRef,
        column: String,
        found: String,
    },
    #[error("the role may not {right} rows of {table}: GRANT {right} ON {table} TO <the role of source.url> ({why})")]
    Right {
        table: TableRef,
        right: &'static str,
        why: &'static str,
    },
    #[error("{what}: {}", describe(.source))]
    Query {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl TableError {
    /// The configuration key at fault, when one is.
    pub fn field(&self) -> Option<String> {
        match self {
            TableError::Missing(_) => Some("source.table".into()),
            TableError::NoColumn { field, .. } | TableError::IdType { field, .. } => {
                Some(format!("source.{field}"))
            }
            TableError::MarkType { .. } => Some("source.published_at".into()),
            TableError::Right { .. } => Some("source.url".into()),
            TableError::Query { .. } => None,
        }
    }

    /// The database went away or refused us for now: worth trying again.
    pub fn is_transient(&self) -> bool {
        match self {
            TableError::Query { source, .. } => is_transient(source),
            _ => false,
        }
    }
}

/// Whether a database error is worth a reconnect (the connection was lost, the server is
/// shutting down or starting, too many connections).
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_none_or(|c| {
            let c = c.code();
            c.starts_with("57P") || c.starts_with("08") || c == "53300"
        })
}

pub(crate) fn query_err(what: &str) -> impl FnOnce(tokio_postgres::Error) -> TableError + '_ {
    move |source| TableError::Query {
        what: what.to_string(),
        source,
    }
}

/// One column read from each row: its name, the event field it fills and how its text
/// form converts.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
}

/// The outbox as found: what to read from it and how to settle published rows.
#[derive(Clone, Debug)]
pub struct Outbox {
    pub table: TableRef,
    /// The table's OID (the relay lock is taken on it).
    pub oid: u32,
    /// The columns read, each as text, the id first.
    pub columns: Vec<Column>,
    pub after_publish: AfterPublish,
}

/// Integer types an id may have: int2, int4, int8.
const INTEGER_OIDS: [u32; 3] = [21, 23, 20];
/// timestamp, timestamptz.
const TIMESTAMP_OIDS: [u32; 2] = [1114, 1184];

impl Outbox {
    /// Look the table up and check it can be polled and settled as configured. The
    /// `headers` column may be missing (events then have none); the others must exist.
    pub async fn inspect(
        client: &Client,
        table: &TableRef,
        columns: &OutboxColumns,
        after_publish: &AfterPublish,
    ) -> Result<Outbox, TableError> {
        let oid: Option<u32> = client
            .query_one("select to_regclass($1)::oid", &[&table.quoted()])
            .await
            .map_err(query_err("cannot look the outbox table up"))?
            .get(0);
        let oid = oid.ok_or_else(|| TableError::Missing(table.clone()))?;
        let found = client
            .query(
                "select attname::text, atttypid, format_type(atttypid, atttypmod), attnotnull \
                   from pg_attribute where attrelid = $1 and attnum > 0 and not attisdropped",
                &[&oid],
            )
            .await
            .map_err(query_err("cannot read the outbox table's columns"))?;
        let lookup = |name: &str| {
            found
                .iter()
                .find(|r| r.get::<_, String>(0) == name)
                .map(|r| {
                    (
                        r.get::<_, u32>(1),
                        r.get::<_, String>(2),
                        r.get::<_, bool>(3),
                    )
                })
        };
        let mut types = TypeRegistry::builtin();
        let mut read = Vec::new();
        for (key, name) in columns.named() {
            let field = format!("columns.{key}");
            let Some((type_oid, type_name, _)) = lookup(name) else {
                if key == "headers" {
                    continue;
                }
                return Err(TableError::NoColumn {
                    table: table.clone(),
                    column: name.to_string(),
                    field,
                });
            };
            if key == "id" && !INTEGER_OIDS.contains(&type_oid) {
                return Err(TableError::IdType {
                    table: table.clone(),
                    column: name.to_string(),
                    found: type_name,
                    field,
                });
            }
            let kind = match types.kind(type_oid) {
                Some(kind) => kind.clone(),
                None => types
                    .resolve(client, type_oid)
                    .await
                    .map_err(query_err("cannot look a column's type up"))?,
            };
            read.push(Column {
                name: name.to_string(),
                kind,
            });
        }
        if let AfterPublish::Mark { column } = after_publish {
            match lookup(column) {
                None => {
                    return Err(TableError::NoColumn {
                        table: table.clone(),
                        column: column.clone(),
                        field: "published_at".into(),
                    })
                }
                Some((type_oid, found, not_null))
                    if !TIMESTAMP_OIDS.contains(&type_oid) || not_null =>
                {
                    return Err(TableError::MarkType {
                        table: table.clone(),
                        column: column.clone(),
                        found: if not_null {
                            format!("{found} not null")
                        } else {
                            found
                        },
                    })
                }
                Some(_) => {}
            }
        }
        let outbox = Outbox {
            table: table.clone(),
            oid,
            columns: read,
            after_publish: after_publish.clone(),
        };
        outbox.check_rights(client).await?;
        Ok(outbox)
    }

    /// The role may read, lock (`FOR UPDATE` takes UPDATE) and settle rows.
    async fn check_rights(&self, client: &Client) -> Result<(), TableError> {
        let mut rights = vec![
            ("SELECT", "polls read the outbox"),
            ("UPDATE", "polls lock rows with FOR UPDATE SKIP LOCKED"),
        ];
        if self.after_publish == AfterPublish::Delete {
            rights.push(("DELETE", "after_publish: delete removes published rows"));
        }
        for (right, why) in rights {
            let allowed: bool = client
                .query_one(
                    "select has_table_privilege($1::oid, $2)",
                    &[&self.oid, &right],
                )
                .await
                .map_err(query_err("cannot check the role's rights on the outbox"))?
                .get(0);
            if !allowed {
                return Err(TableError::Right {
                    table: self.table.clone(),
                    right,
                    why,
                });
            }
        }
        Ok(())
    }

    /// The id column's name, quoted.
    fn id(&self) -> String {
        ident(&self.columns[0].name)
    }

    /// Rows not published yet and not among `$1` (the ids read but not yet settled), in
    /// id order, at most `$2`, locked (`SKIP LOCKED`: rows another session holds are left
    /// for the next poll). Every column as text; the id also as bigint, last.
    pub fn claim_sql(&self) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}::text as c{i}", ident(&c.name)))
            .collect();
        format!(
            "select {columns}, {id}::bigint as row_id from {table} \
              where {unpublished}not ({id} = any($1::bigint[])) \
              order by {id} limit $2 for update skip locked",
            columns = columns.join(", "),
            id = self.id(),
            table = self.table.quoted(),
            unpublished = self.unpublished(" and "),
        )
    }

    /// The rows among `$1` that are still there and unpublished, the same columns as
    /// [`Outbox::claim_sql`].
    pub fn resend_sql(&self) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}::text as c{i}", ident(&c.name)))
            .collect();
        format!(
            "select {columns}, {id}::bigint as row_id from {table} \
              where {unpublished}{id} = any($1::bigint[]) order by {id}",
            columns = columns.join(", "),
            id = self.id(),
            table = self.table.quoted(),
            unpublished = self.unpublished(" and "),
        )
    }

    /// Settle the published rows `$1`: delete them, or mark them.
    pub fn settle_sql(&self) -> String {
        match &self.after_publish {
            AfterPublish::Delete => format!(
                "delete from {} where {} = any($1::bigint[])",
                self.table.quoted(),
                self.id()
            ),
            AfterPublish::Mark { column } => format!(
                "update {} set {} = now() where {} = any($1::bigint[])",
                self.table.quoted(),
                ident(column),
                self.id()
            ),
        }
    }

    /// How many rows wait to be published.
    pub fn backlog_sql(&self) -> String {
        format!(
            "select count(*) from {}{}",
            self.table.quoted(),
            match self.unpublished("") {
                u if u.is_empty() => String::new(),
                u => format!(" where {u}"),
            }
        )
    }

    /// `published_at is null` and `suffix` with `mark`; nothing with `delete`.
    fn unpublished(&self, suffix: &str) -> String {
        match &self.after_publish {
            AfterPublish::Delete => String::new(),
            AfterPublish::Mark { column } => format!("{} is null{suffix}", ident(column)),
        }
    }
}

/// The advisory lock key of the relays of one outbox table: one relay polls it at a time.
pub const LOCK_KEY_SQL: &str = "hashtextextended('sluice_outbox_poll:' || $1::oid::text, 0)";
