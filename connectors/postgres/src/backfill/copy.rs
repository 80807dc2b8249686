//! Reading a table in key order, one chunk at a time: what the table looks like (its
//! columns, the key the stream uses), the chunk's `COPY (SELECT …) TO STDOUT` in a
//! repeatable-read transaction beside the snapshot it saw, and the text format parsed into
//! typed rows with the same conversions the stream uses.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use sluice_runtime::Row;
use tokio_postgres::Client;

use crate::options::TableRef;
use crate::types::{Kind, TypeRegistry};
use crate::values::convert;

/// Why a table cannot be read in chunks.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("table {0} does not exist")]
    Missing(TableRef),
    #[error(
        "table {0} has no primary key (nor a replica identity index): a backfill reads a table in \
         key order, chunk by chunk, and tells a row it copied from a later change of it by its key. \
         Add a primary key (or `ALTER TABLE … REPLICA IDENTITY USING INDEX` a unique index), or \
         leave the table out of the backfill"
    )]
    NoKey(TableRef),
    #[error("reading table {table}: {}", crate::setup::describe(.source))]
    Sql {
        table: TableRef,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("table {table}, column {column}: {message}")]
    Value {
        table: TableRef,
        column: String,
        message: String,
    },
    #[error("table {table}: COPY sent a row of {got} columns, the table has {expected}")]
    Arity {
        table: TableRef,
        expected: usize,
        got: usize,
    },
}

impl PlanError {
    /// Worth trying again later (the server went away), rather than failing the backfill.
    pub fn is_transient(&self) -> bool {
        match self {
            PlanError::Sql { source, .. } => {
                source.is_closed() || source.code().is_none_or(|c| c.code().starts_with("08"))
            }
            _ => false,
        }
    }
}

/// A column the stream publishes: not dropped, not generated.
#[derive(Clone, Debug)]
pub struct PlanColumn {
    pub name: Arc<str>,
    pub kind: Kind,
    /// `format_type(…)`: how a cursor literal is cast.
    pub sql_type: String,
}

/// How to read one table in chunks.
#[derive(Clone, Debug)]
pub struct TablePlan {
    /// The table as the catalog names it now.
    pub table: TableRef,
    pub oid: u32,
    pub columns: Vec<PlanColumn>,
    /// The key's columns in table order, as the stream's events carry them.
    pub key: Vec<usize>,
    /// The key's columns in its index's order: the chunks' order and the cursor.
    pub order: Vec<usize>,
    /// The planner's row estimate (`pg_class.reltuples`), when the table was analyzed.
    pub estimate: Option<i64>,
}

impl TablePlan {
    /// Look `table` up: its columns, its key (the replica identity index when the table
    /// has one, else the primary key, as the stream's events use), its size estimate.
    pub async fn of(
        client: &Client,
        types: &mut TypeRegistry,
        table: &TableRef,
    ) -> Result<TablePlan, PlanError> {
        let sql = |source| PlanError::Sql {
            table: table.clone(),
            source,
        };
        let Some(rel) = client
            .query_opt(
                "select c.oid, c.relreplident::text, c.reltuples::float8
                   from pg_class c join pg_namespace n on n.oid = c.relnamespace
                  where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(sql)?
        else {
            return Err(PlanError::Missing(table.clone()));
        };
        let oid: u32 = rel.get(0);
        let identity: String = rel.get(1);
        let reltuples: f64 = rel.get(2);
        let rows = client
            .query(
                "select a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), a.attnum
                   from pg_attribute a
                  where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
                    and a.attgenerated = ''
                  order by a.attnum",
                &[&oid],
            )
            .await
            .map_err(sql)?;
        let mut columns = Vec::with_capacity(rows.len());
        let mut attnums = Vec::with_capacity(rows.len());
        for r in &rows {
            let type_oid: u32 = r.get(1);
            let kind = match types.kind(type_oid) {
                Some(k) => k.clone(),
                None => types.resolve(client, type_oid).await.map_err(sql)?,
            };
            columns.push(PlanColumn {
                name: r.get::<_, String>(0).into(),
                kind,
                sql_type: r.get(2),
            });
            attnums.push(r.get::<_, i16>(3));
        }
        // The stream's key: the replica identity index (`REPLICA IDENTITY USING INDEX`),
        // else the primary key.
        let index = client
            .query_opt(
                "select i.indkey::int2[] from pg_index i
                  where i.indrelid = $1
                    and case when $2 = 'i' then i.indisreplident else i.indisprimary end",
                &[&oid, &identity],
            )
            .await
            .map_err(sql)?;
        let Some(index) = index else {
            return Err(PlanError::NoKey(table.clone()));
        };
        let indkey: Vec<i16> = index.get(0);
        let order: Vec<usize> = indkey
            .iter()
            .filter_map(|n| attnums.iter().position(|a| a == n))
            .collect();
        if order.is_empty() || order.len() != indkey.len() {
            // An expression index, or a key over a generated column: no cursor to use.
            return Err(PlanError::NoKey(table.clone()));
        }
        let mut key = order.clone();
        key.sort_unstable();
        Ok(TablePlan {
            table: table.clone(),
            oid,
            columns,
            key,
            order,
            estimate: (reltuples >= 0.0).then_some(reltuples as i64),
        })
    }

    /// The chunk's query: the rows after `cursor` (the last key read, in index order) that
    /// meet `filter`, in key order, at most `limit`.
    pub fn chunk_sql(
        &self,
        cursor: Option<&[String]>,
        filter: Option<&str>,
        limit: usize,
    ) -> String {
        let ident = crate::setup::ident;
        let columns: Vec<String> = self.columns.iter().map(|c| ident(&c.name)).collect();
        let order: Vec<String> = self
            .order
            .iter()
            .map(|&i| ident(&self.columns[i].name))
            .collect();
        let mut conditions = Vec::new();
        if let Some(cursor) = cursor {
            let values: Vec<String> = self
                .order
                .iter()
                .zip(cursor)
                .map(|(&i, v)| format!("{}::{}", literal(v), self.columns[i].sql_type))
                .collect();
            conditions.push(format!("({}) > ({})", order.join(", "), values.join(", ")));
        }
        if let Some(filter) = filter {
            conditions.push(format!("({filter})"));
        }
        let mut sql = format!("select {} from {}", columns.join(", "), self.table.quoted());
        if !conditions.is_empty() {
            sql.push_str(" where ");
            sql.push_str(&conditions.join(" and "));
        }
        sql.push_str(&format!(" order by {} limit {limit}", order.join(", ")));
        sql
    }
}

/// A SQL string literal (the session has `standard_conforming_strings` on).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A chunk as read: typed rows (key, row), the next cursor, and the snapshot it saw.
#[derive(Debug, Default)]
pub struct ChunkRows {
    pub rows: Vec<(Row, Row)>,
    /// The last row's key in index order, as text: where the next chunk starts.
    pub cursor: Option<Vec<String>>,
    /// Transactions in progress when the snapshot was taken (their 32-bit ids): their
    /// changes are not in the rows.
    pub in_progress: Vec<u32>,
}

/// Read one chunk in a repeatable-read transaction: the snapshot's in-progress
/// transactions, then the rows through `COPY (SELECT …) TO STDOUT`.
pub async fn read_chunk(
    client: &mut Client,
    plan: &TablePlan,
    cursor: Option<&[String]>,
    filter: Option<&str>,
    limit: usize,
) -> Result<ChunkRows, PlanError> {
    let sql = |source| PlanError::Sql {
        table: plan.table.clone(),
        source,
    };
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(sql)?;
    let snapshot: String = tx
        .query_one("select txid_current_snapshot()::text", &[])
        .await
        .map_err(sql)?
        .get(0);
    let copy = format!("copy ({}) to stdout", plan.chunk_sql(cursor, filter, limit));
    let mut stream = Box::pin(tx.copy_out(copy.as_str()).await.map_err(sql)?);
    let mut parser = CopyText::default();
    let mut out = ChunkRows {
        rows: Vec::with_capacity(limit.min(65_536)),
        in_progress: in_progress(&snapshot),
        cursor: None,
    };
    // The last row's text, for the cursor.
    let mut last = Vec::new();
    while let Some(data) = stream.next().await {
        let data: Bytes = data.map_err(sql)?;
        parser.feed(&data, |line, scratch| {
            out.rows.push(typed(plan, line, scratch)?);
            last.clear();
            last.extend_from_slice(line);
            Ok(())
        })?;
    }
    drop(stream);
    tx.commit().await.map_err(sql)?;
    if !out.rows.is_empty() {
        let fields: Vec<&[u8]> = last.split(|&b| b == b'\t').collect();
        let mut scratch = Vec::new();
        out.cursor = Some(
            plan.order
                .iter()
                .map(|&i| {
                    let text = field(fields[i], &mut scratch).unwrap_or_default();
                    String::from_utf8_lossy(text).into_owned()
                })
                .collect(),
        );
    }
    Ok(out)
}

/// The in-progress transaction ids of a `txid_current_snapshot()` text (`xmin:xmax:xip,…`),
/// as the 32-bit ids the stream's Begin messages carry.
fn in_progress(snapshot: &str) -> Vec<u32> {
    snapshot
        .splitn(3, ':')
        .nth(2)
        .unwrap_or("")
        .split(',')
        .filter_map(|x| x.trim().parse::<u64>().ok())
        .map(|x| x as u32)
        .collect()
}

/// One COPY row (a line without its newline) as (key, row) with the stream's
/// conversions. `scratch` holds an unescaped field.
fn typed(plan: &TablePlan, line: &[u8], scratch: &mut Vec<u8>) -> Result<(Row, Row), PlanError> {
    let mut row = Row(Vec::with_capacity(plan.columns.len()));
    let mut fields = line.split(|&b| b == b'\t');
    for col in &plan.columns {
        let Some(raw) = fields.next() else {
            return Err(arity(plan, row.0.len()));
        };
        let value = match field(raw, scratch) {
            None => sluice_runtime::Value::Null,
            Some(text) => convert(&col.kind, text).map_err(|e| PlanError::Value {
                table: plan.table.clone(),
                column: col.name.to_string(),
                message: e.to_string(),
            })?,
        };
        row.push(col.name.clone(), value);
    }
    if fields.next().is_some() {
        return Err(arity(plan, plan.columns.len() + 1 + fields.count()));
    }
    let key = Row(plan.key.iter().map(|&i| row.0[i].clone()).collect());
    Ok((key, row))
}

fn arity(plan: &TablePlan, got: usize) -> PlanError {
    PlanError::Arity {
        table: plan.table.clone(),
        expected: plan.columns.len(),
        got,
    }
}

/// COPY's text format, fed in the chunks the server sends: rows end with `\n`, fields are
/// separated by tabs, `\N` is NULL, and backslash escapes stand for the bytes they name.
#[derive(Default)]
struct CopyText {
    /// The start of a row whose end has not arrived.
    partial: Vec<u8>,
    /// An unescaped field.
    scratch: Vec<u8>,
}

impl CopyText {
    /// Hand each row completed by `data` to `row` (the line, and a buffer for
    /// [`field`]).
    fn feed<E>(
        &mut self,
        data: &[u8],
        mut row: impl FnMut(&[u8], &mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                row(&rest[..end], &mut self.scratch)?;
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.partial);
                row(&line, &mut self.scratch)?;
                self.partial = line;
                self.partial.clear();
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }
}

/// One field of COPY's text format: `None` for NULL, else its bytes (unescaped into
/// `scratch` when it has escapes).
fn field<'a>(raw: &'a [u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    if raw == b"\\N" {
        return None;
    }
    if !raw.contains(&b'\\') {
        return Some(raw);
    }
    scratch.clear();
    let out = scratch;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 == raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = raw[i + 1];
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut n = u32::from(next - b'0');
                let mut digits = 1;
                while digits < 3 && i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                    n = n * 8 + u32::from(raw[i] - b'0');
                    i += 1;
                    digits += 1;
                }
                out.push(n as u8);
            }
            b'x' if i < raw.len() && raw[i].is_ascii_hexdigit() => {
                let mut n = 0u32;
                let mut digits = 0;
                while digits < 2 && i < raw.len() && raw[i].is_ascii_hexdigit() {
                    n = n * 16 + (raw[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    digits += 1;
                }
                out.push(n as u8);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row `feed` completes, as fields (`None`: NULL).
    fn rows(p: &mut CopyText, data: &[u8]) -> Vec<Vec<Option<String>>> {
        let mut out = Vec::new();
        p.feed::<()>(data, |line, scratch| {
            out.push(
                line.split(|&b| b == b'\t')
                    .map(|raw| field(raw, scratch).map(|f| String::from_utf8(f.to_vec()).unwrap()))
                    .collect(),
            );
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn rows_split_across_chunks_and_escapes_decode() {
        let mut p = CopyText::default();
        assert_eq!(rows(&mut p, b"1\ta\\tb\t\\N\n2\tx").len(), 1);
        let second = rows(&mut p, b"y\\\\z\t\\n\n");
        assert_eq!(
            second,
            [vec![
                Some("2".into()),
                Some("xy\\z".into()),
                Some("\n".into())
            ]]
        );
    }

    #[test]
    fn the_first_row_of_a_feed_keeps_its_fields() {
        let mut p = CopyText::default();
        let first = rows(&mut p, b"1\ta\\tb\t\\N\n");
        assert_eq!(first, [vec![Some("1".into()), Some("a\tb".into()), None]]);
    }

    #[test]
    fn octal_and_hex_escapes() {
        let mut scratch = Vec::new();
        assert_eq!(field(b"\\101\\x42\\\\", &mut scratch), Some(&b"AB\\"[..]));
        assert_eq!(field(b"\\N", &mut scratch), None);
        assert_eq!(field(b"plain", &mut scratch), Some(&b"plain"[..]));
    }

    #[test]
    fn in_progress_transactions_of_a_snapshot() {
        assert_eq!(in_progress("100:105:"), Vec::<u32>::new());
        assert_eq!(in_progress("100:105:101,103"), vec![101, 103]);
        // A 64-bit txid with an epoch: the stream's 32-bit xid.
        assert_eq!(in_progress("4294967396:4294967400:4294967398"), vec![102]);
    }

    #[test]
    fn chunk_sql_continues_after_the_cursor_in_key_order() {
        let col = |name: &str, sql_type: &str| PlanColumn {
            name: name.into(),
            kind: Kind::Text,
            sql_type: sql_type.into(),
        };
        let plan = TablePlan {
            table: TableRef::new("public", "Order Lines"),
            oid: 1,
            columns: vec![col("id", "bigint"), col("v", "text"), col("region", "text")],
            key: vec![0, 2],
            order: vec![2, 0],
            estimate: None,
        };
        assert_eq!(
            plan.chunk_sql(None, None, 10),
            r#"select "id", "v", "region" from "public"."Order Lines" order by "region", "id" limit 10"#
        );
        let cursor = ["o'hare".to_string(), "7".to_string()];
        assert_eq!(
            plan.chunk_sql(Some(&cursor), Some("v <> 'x'"), 5),
            r#"select "id", "v", "region" from "public"."Order Lines" where ("region", "id") > ('o''hare'::text, '7'::bigint) and (v <> 'x') order by "region", "id" limit 5"#
        );
    }
}
