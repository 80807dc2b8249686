//! From pgoutput messages to envelopes: the relation cache, key extraction, TOAST
//! handling, the outbox, logical messages, and the source's own DDL messages (renames
//! followed, drops dated, `schema_change` events).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use sluice_runtime::journal::{Entry, Record};
use sluice_runtime::source::SourceStatus;
use sluice_runtime::{Event, Lsn, Message, Op, Position, Row, Source, Value};
use tokio_postgres::Client;

use crate::backfill::{AtMark, Due, Outcome, Tap, BACKFILL_PREFIX};
use crate::config::{OnRename, OutboxColumns};
use crate::ddl::{DdlCommand, DDL_PREFIX, RESERVED_PREFIX};
use crate::options::{PostgresOptions, TableRef};
use crate::pgoutput::{LogicalMessage, OldTuple, TupleValue};
use crate::publication::Watch;
use crate::tables::{CapturedTables, Identity, Rename, Role};
use crate::types::{Kind, TypeRegistry};
use crate::values::convert_tuple_value;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error("{table}.{column}: {message}")]
    Value {
        table: String,
        column: String,
        message: String,
    },
    #[error("row of {table} has {got} columns, its Relation message says {expected}")]
    Arity {
        table: String,
        expected: usize,
        got: usize,
    },
    #[error("{0} outside a transaction")]
    NoTransaction(&'static str),
    #[error("{0} reached the event builder; the source handles streamed transactions itself")]
    Streaming(&'static str),
    #[error(
        "captured table {} was renamed to {} (the new name appears in the transaction committed at {}), \
         and source.on_rename is `stop`: the pipeline stops before any change made under the new name \
         is delivered, and nothing after the rename is confirmed to the slot. To go on, set \
         `on_rename: follow` (events then carry the new name, and templates using {{schema}} or \
         {{table}} render it), or list {} in source.tables instead of {}",
        .0.from, .0.to, .0.at, .0.to, .0.configured
    )]
    Renamed(Box<Rename>),
    #[error("catalog lookup: {}", crate::setup::describe(.0))]
    Catalog(#[from] tokio_postgres::Error),
}

struct Column {
    name: Arc<str>,
    kind: Kind,
}

struct Relation {
    schema: Arc<str>,
    table: Arc<str>,
    columns: Vec<Column>,
    /// Indices of the key columns: the primary key, else the replica identity.
    key: Vec<usize>,
    role: Role,
}

struct Transaction {
    xid: u32,
    commit_lsn: Lsn,
    ts: i64,
    /// Index of the next change in this transaction (counting every change message,
    /// captured or not, so indices are the same each time the transaction is resent).
    next_index: u32,
}

/// Turns pgoutput messages into journal entries.
pub struct EventBuilder {
    pipeline: Arc<str>,
    /// The captured tables (and the outbox), followed by OID through renames.
    tables: CapturedTables,
    messages: HashSet<String>,
    /// The outbox's column names.
    outbox_columns: OutboxColumns,
    on_rename: OnRename,
    ddl_events: bool,
    relations: HashMap<u32, Relation>,
    types: TypeRegistry,
    tx: Option<Transaction>,
    /// Where notices go (a rename followed).
    status: Arc<SourceStatus>,
    /// Told about drops and creations the DDL trigger reports.
    watch: Option<Arc<Watch>>,
    /// Backfills' watermarks and windows.
    tap: Option<Tap>,
    /// A chunk's rows due in the current transaction, for the source to hand out in
    /// batches before the transaction's next message.
    reads: VecDeque<Entry>,
}

impl EventBuilder {
    /// A builder for the tables of `o`, with the OIDs [`crate::tables::resolve`] found.
    pub fn new(o: &PostgresOptions, identities: &[Identity], status: Arc<SourceStatus>) -> Self {
        EventBuilder {
            pipeline: o.pipeline.as_str().into(),
            tables: CapturedTables::new(o, identities),
            messages: o.messages.iter().cloned().collect(),
            outbox_columns: o.outbox_columns.clone(),
            on_rename: o.on_rename,
            ddl_events: o.ddl_events,
            relations: HashMap::new(),
            types: TypeRegistry::builtin(),
            tx: None,
            status,
            watch: None,
            tap: None,
            reads: VecDeque::new(),
        }
    }

    /// Emit backfill chunks at their watermarks ([`crate::backfill`]).
    pub fn tap(&mut self, tap: Tap) {
        self.tap = Some(tap);
    }

    /// A backfill chunk's rows, due before anything else of the current transaction.
    pub fn reads(&mut self) -> &mut VecDeque<Entry> {
        &mut self.reads
    }

    /// Tell `watch` about drops and creations of captured tables the DDL trigger reports.
    pub fn watch(&mut self, watch: Arc<Watch>) {
        self.watch = Some(watch);
    }

    /// A new replication session resends Relation messages; forget the old ones and any
    /// transaction cut off by the disconnect.
    pub fn reset_session(&mut self) {
        self.relations.clear();
        self.tx = None;
        self.reads.clear();
    }

    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Handle one message; changes and commits are pushed to `out`. `lsn` is the WAL
    /// position of the message (the XLogData start).
    pub async fn handle(
        &mut self,
        msg: LogicalMessage,
        lsn: Lsn,
        client: &Client,
        out: &mut Vec<Entry>,
    ) -> Result<(), BuildError> {
        match msg {
            LogicalMessage::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                self.tx = Some(Transaction {
                    xid,
                    commit_lsn: final_lsn,
                    ts: commit_ts,
                    next_index: 0,
                });
            }
            LogicalMessage::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                let tx = self.tx.take().ok_or(BuildError::NoTransaction("Commit"))?;
                tracing::trace!(xid = tx.xid, %commit_lsn, changes = tx.next_index, "transaction decoded");
                if let Some(tap) = &mut self.tap {
                    tap.committed(tx.xid, commit_lsn);
                }
                out.push(Entry::Commit {
                    commit_lsn,
                    end_lsn,
                });
            }
            LogicalMessage::Relation {
                rel_id,
                namespace,
                name,
                replica_identity,
                columns,
                ..
            } => {
                let table = TableRef::new(namespace, name);
                let commit_lsn = self.tx.as_ref().map_or(lsn, |t| t.commit_lsn);
                let described = self.tables.describe(rel_id, &table, commit_lsn);
                if let Some(rename) = described.renamed {
                    self.renamed(rename)?;
                }
                let role = described.role;
                let mut cols = Vec::with_capacity(columns.len());
                for c in &columns {
                    let kind = match self.types.kind(c.type_oid) {
                        Some(k) => k.clone(),
                        None => self.types.resolve(client, c.type_oid).await?,
                    };
                    cols.push(Column {
                        name: c.name.as_str().into(),
                        kind,
                    });
                }
                let mut key: Vec<usize> = columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.is_key)
                    .map(|(i, _)| i)
                    .collect();
                if replica_identity == b'f' || key.is_empty() {
                    let pk = primary_key(client, rel_id).await?;
                    key = cols
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| pk.iter().any(|k| **k == *c.name))
                        .map(|(i, _)| i)
                        .collect();
                }
                tracing::debug!(
                    rel_id,
                    table = %table,
                    columns = cols.len(),
                    key = ?key.iter().map(|&i| &*cols[i].name).collect::<Vec<_>>(),
                    role = ?role,
                    "relation described by the server"
                );
                self.relations.insert(
                    rel_id,
                    Relation {
                        schema: table.schema.into(),
                        table: table.name.into(),
                        columns: cols,
                        key,
                        role,
                    },
                );
            }
            LogicalMessage::Insert { rel_id, new, .. } => {
                let Some((rel, source, position)) = self.change(rel_id, lsn)? else {
                    return Ok(());
                };
                let after = row(rel, &new, &mut Vec::new())?;
                let event = match rel.role {
                    Role::Outbox => outbox_event(position, source, &after, &self.outbox_columns),
                    _ => {
                        let mut e = Event::new(position, Op::Insert, source);
                        e.key = key_of(rel, &after);
                        e.after = Some(after);
                        e
                    }
                };
                self.touched(rel_id, &event);
                push(out, event);
            }
            LogicalMessage::Update {
                rel_id, old, new, ..
            } => {
                let Some((rel, source, position)) = self.change(rel_id, lsn)? else {
                    return Ok(());
                };
                if rel.role == Role::Outbox {
                    return Ok(());
                }
                let mut e = Event::new(position, Op::Update, source);
                let mut unchanged = Vec::new();
                let after = row(rel, &new, &mut unchanged)?;
                e.before = old.as_ref().map(|o| old_row(rel, o)).transpose()?;
                e.key = key_of(rel, &after);
                e.after = Some(after);
                e.unchanged = unchanged;
                self.touched(rel_id, &e);
                push(out, e);
            }
            LogicalMessage::Delete { rel_id, old, .. } => {
                let Some((rel, source, position)) = self.change(rel_id, lsn)? else {
                    return Ok(());
                };
                if rel.role == Role::Outbox {
                    return Ok(());
                }
                let mut e = Event::new(position, Op::Delete, source);
                let before = old_row(rel, &old)?;
                e.key = key_of(rel, &before);
                e.before = Some(before);
                self.touched(rel_id, &e);
                push(out, e);
            }
            LogicalMessage::Truncate { rel_ids, .. } => {
                for rel_id in rel_ids {
                    let Some((rel, source, position)) = self.change(rel_id, lsn)? else {
                        continue;
                    };
                    if rel.role == Role::Table {
                        push(out, Event::new(position, Op::Truncate, source));
                        if let Some(tap) = &mut self.tap {
                            tap.truncated(rel_id);
                        }
                    }
                }
            }
            LogicalMessage::Message {
                transactional,
                lsn: msg_lsn,
                prefix,
                content,
                ..
            } => {
                if !transactional {
                    // Written even when its transaction rolls back: never delivered.
                    if self.messages.contains(&prefix) {
                        self.status.notice(
                            "non_transactional_message",
                            format!(
                                "a non-transactional logical message with prefix `{prefix}` at LSN {msg_lsn} \
                                 was not delivered: pg_logical_emit_message(false, ...) is written to the WAL \
                                 at once, even when its transaction rolls back, so it may describe something \
                                 that never happened. Emit events with pg_logical_emit_message(true, ...)"
                            ),
                        );
                    }
                    return Ok(());
                }
                let tx = self
                    .tx
                    .as_mut()
                    .ok_or(BuildError::NoTransaction("transactional Message"))?;
                let position = Position::new(tx.commit_lsn, tx.next_index);
                tx.next_index += 1;
                let (xid, commit_lsn, ts) = (tx.xid, tx.commit_lsn, tx.ts);
                if prefix.starts_with(RESERVED_PREFIX) {
                    // sluice's own: never a user message.
                    if prefix == DDL_PREFIX {
                        self.ddl(&content, position, msg_lsn, out)?;
                    } else if prefix == BACKFILL_PREFIX {
                        self.watermark(&content, msg_lsn);
                    }
                    return Ok(());
                }
                if !self.messages.contains(&prefix) {
                    return Ok(());
                }
                let source = Source {
                    pipeline: self.pipeline.clone(),
                    schema: None,
                    table: None,
                    lsn: msg_lsn,
                    commit_lsn,
                    xid: Some(xid),
                    ts_micros: ts,
                };
                push(out, message_event(position, source, &prefix, &content));
            }
            LogicalMessage::Type { .. } | LogicalMessage::Origin { .. } => {}
            LogicalMessage::StreamStart { .. } => {
                return Err(BuildError::Streaming("Stream Start"))
            }
            LogicalMessage::StreamStop => return Err(BuildError::Streaming("Stream Stop")),
            LogicalMessage::StreamCommit { .. } => {
                return Err(BuildError::Streaming("Stream Commit"))
            }
            LogicalMessage::StreamAbort { .. } => {
                return Err(BuildError::Streaming("Stream Abort"))
            }
        }
        Ok(())
    }

    /// A change of `rel_id` in the stream: a backfill window of its table notes the key.
    fn touched(&mut self, rel_id: u32, event: &Event) {
        if let Some(tap) = &mut self.tap {
            tap.changed(rel_id, event);
        }
    }

    /// A backfill watermark at `lsn`: at a high one whose chunk is due, the chunk's rows
    /// that still stand become `op: read` events at the next positions of this
    /// transaction, queued in [`EventBuilder::reads`].
    fn watermark(&mut self, content: &[u8], lsn: Lsn) {
        let (Some(tap), Some(tx)) = (&mut self.tap, &mut self.tx) else {
            return;
        };
        let (due, reply, id) = match tap.mark(content, tx.commit_lsn) {
            None => return,
            Some(AtMark::Again(events)) => {
                // The same events at the same positions: what was journaled before the
                // session ended is dropped by the engine, the rest goes on.
                tx.next_index += events.len() as u32;
                self.reads.extend(
                    events
                        .iter()
                        .map(|e| Entry::Event(Arc::new(Record::new(e.clone())))),
                );
                return;
            }
            Some(AtMark::Fresh { due, reply, id }) => (due, reply, id),
        };
        let Due {
            table,
            rows,
            sinks,
            schema,
            name,
            verdict,
        } = due;
        let total = rows.len();
        // The table under the name the stream knows it by now (a rename followed).
        let (schema, name) = self
            .relations
            .get(&table)
            .map_or((schema, name), |r| (r.schema.clone(), r.table.clone()));
        let source = Source {
            pipeline: self.pipeline.clone(),
            schema: Some(schema),
            table: Some(name),
            lsn,
            commit_lsn: tx.commit_lsn,
            xid: Some(tx.xid),
            ts_micros: tx.ts,
        };
        let mut events = Vec::with_capacity(total);
        for (key, after) in rows {
            let mut e = Event::new(
                Position::new(tx.commit_lsn, tx.next_index),
                Op::Read,
                source.clone(),
            );
            e.key = Some(key);
            e.after = Some(after);
            e.sinks = sinks.clone();
            if !verdict.stands(&e) {
                continue;
            }
            tx.next_index += 1;
            let e = Arc::new(e);
            self.reads
                .push_back(Entry::Event(Arc::new(Record::new(e.clone()))));
            events.push(e);
        }
        let emitted = events.len();
        tracing::debug!(rows = emitted, dropped = total - emitted, commit = %tx.commit_lsn, "backfill chunk emitted");
        tap.emitted(id, tx.commit_lsn, events.into());
        let _ = reply.send(Outcome::Emitted {
            commit_lsn: tx.commit_lsn,
            rows: emitted,
        });
    }

    /// A captured table has a new name: follow it (with a notice) or stop, as configured.
    fn renamed(&self, r: Rename) -> Result<(), BuildError> {
        if self.on_rename == OnRename::Stop {
            return Err(BuildError::Renamed(Box::new(r)));
        }
        let was = if r.from == r.configured {
            String::new()
        } else {
            format!(" (listed in source.tables as {})", r.configured)
        };
        self.status.notice(
            "table_renamed",
            format!(
                "captured table {}{was} was renamed to {} (from the transaction committed at {} on): \
                 it is still captured, and its events now carry source.schema `{}` and source.table \
                 `{}`, so templates using {{schema}} or {{table}} (an index, a topic, a key) render \
                 the new name. List {} in source.tables to make the new name the configured one",
                r.from, r.to, r.at, r.to.schema, r.to.name, r.to
            ),
        );
        Ok(())
    }

    /// A `sluice.ddl` message (the DDL trigger's) at `position`: follow a rename, tell the
    /// watch of a drop or a creation, and deliver a `schema_change` event when asked.
    fn ddl(
        &mut self,
        content: &[u8],
        position: Position,
        lsn: Lsn,
        out: &mut Vec<Entry>,
    ) -> Result<(), BuildError> {
        let Some(cmd) = DdlCommand::parse(content) else {
            tracing::debug!(%position, "a sluice.ddl message this build does not read; ignored");
            return Ok(());
        };
        let Some(tx) = self.tx.as_ref() else {
            return Err(BuildError::NoTransaction("DDL message"));
        };
        let (commit_lsn, xid, ts) = (tx.commit_lsn, tx.xid, tx.ts);
        let role = if cmd.is_drop() {
            // A dropped table is known by its OID only (its name is free again).
            let Some((configured, role)) = self.tables.configured_of(cmd.objid) else {
                return Ok(());
            };
            if let Some(watch) = &self.watch {
                watch.dropped(configured, commit_lsn);
            }
            role
        } else {
            let name = TableRef::new(cmd.schema.clone(), cmd.table.clone());
            let described = self.tables.describe(cmd.objid, &name, commit_lsn);
            if let Some(rename) = described.renamed {
                self.renamed(rename)?;
            }
            if cmd.is_create() && described.role != Role::Ignored {
                if let Some(watch) = &self.watch {
                    watch.created();
                }
            }
            described.role
        };
        tracing::debug!(
            tag = %cmd.command_tag,
            table = %cmd.object_identity,
            role = ?role,
            "schema change in the stream"
        );
        if self.ddl_events && role == Role::Table {
            let source = Source {
                pipeline: self.pipeline.clone(),
                schema: Some(cmd.schema.as_str().into()),
                table: Some(cmd.table.as_str().into()),
                lsn,
                commit_lsn,
                xid: Some(xid),
                ts_micros: ts,
            };
            push(out, cmd.event(position, source));
        }
        Ok(())
    }

    /// Claim the next index in the transaction for a change of `rel_id`; `None` when the
    /// relation is not captured by this pipeline.
    fn change(
        &mut self,
        rel_id: u32,
        lsn: Lsn,
    ) -> Result<Option<(&Relation, Source, Position)>, BuildError> {
        let tx = self
            .tx
            .as_mut()
            .ok_or(BuildError::NoTransaction("change"))?;
        let position = Position::new(tx.commit_lsn, tx.next_index);
        tx.next_index += 1;
        let rel = self
            .relations
            .get(&rel_id)
            .ok_or(BuildError::UnknownRelation(rel_id))?;
        if rel.role == Role::Ignored {
            return Ok(None);
        }
        let source = Source {
            pipeline: self.pipeline.clone(),
            schema: Some(rel.schema.clone()),
            table: Some(rel.table.clone()),
            lsn,
            commit_lsn: tx.commit_lsn,
            xid: Some(tx.xid),
            ts_micros: tx.ts,
        };
        Ok(Some((rel, source, position)))
    }
}

fn push(out: &mut Vec<Entry>, event: Event) {
    out.push(Entry::event(event));
}

async fn primary_key(client: &Client, rel_id: u32) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select a.attname::text from pg_index i
               join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
              where i.indrelid = $1::oid and i.indisprimary",
            &[&rel_id],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A row from a tuple; unchanged TOAST values are left out and named in `unchanged`.
fn row(
    rel: &Relation,
    values: &[TupleValue],
    unchanged: &mut Vec<Arc<str>>,
) -> Result<Row, BuildError> {
    if values.len() != rel.columns.len() {
        return Err(BuildError::Arity {
            table: format!("{}.{}", rel.schema, rel.table),
            expected: rel.columns.len(),
            got: values.len(),
        });
    }
    let mut row = Row(Vec::with_capacity(values.len()));
    for (col, value) in rel.columns.iter().zip(values) {
        match convert_tuple_value(&col.kind, value) {
            Ok(Some(v)) => row.push(col.name.clone(), v),
            Ok(None) => unchanged.push(col.name.clone()),
            Err(e) => {
                return Err(BuildError::Value {
                    table: format!("{}.{}", rel.schema, rel.table),
                    column: col.name.to_string(),
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(row)
}

/// `before` from an old tuple: the whole row for REPLICA IDENTITY FULL, else the key.
fn old_row(rel: &Relation, old: &OldTuple) -> Result<Row, BuildError> {
    let full = row(rel, old.values(), &mut Vec::new())?;
    Ok(match old {
        OldTuple::Full(_) => full,
        OldTuple::Key(_) => Row(full
            .0
            .into_iter()
            .filter(|c| !matches!(c.value, Value::Null))
            .collect()),
    })
}

fn key_of(rel: &Relation, row: &Row) -> Option<Row> {
    if rel.key.is_empty() {
        return None;
    }
    let mut key = Row(Vec::with_capacity(rel.key.len()));
    for &i in &rel.key {
        let name = &rel.columns[i].name;
        key.push(name.clone(), row.get(name)?.clone());
    }
    Some(key)
}

/// An outbox row as an `op: event` envelope: `message` from the row's columns (named by
/// `columns`; a column the row lacks is `null`), the key `aggregate_id`. The polling
/// source builds its events here too, so both read an outbox the same way.
pub fn outbox_event(
    position: Position,
    source: Source,
    row: &Row,
    columns: &OutboxColumns,
) -> Event {
    let field = |name: &str| row.get(name).cloned().unwrap_or(Value::Null);
    let mut e = Event::new(position, Op::Event, source);
    let aggregate_id = field(&columns.aggregate_id);
    let mut key = Row::default();
    key.push("aggregate_id".into(), aggregate_id.clone());
    e.key = Some(key);
    e.message = Some(Message {
        id: field(&columns.id),
        kind: field(&columns.kind),
        aggregate_type: field(&columns.aggregate_type),
        aggregate_id,
        payload: field(&columns.payload),
        headers: field(&columns.headers),
    });
    e
}

/// A logical message as an `op: event` envelope. A JSON object content may give `id`,
/// `type`, `aggregate_type`, `aggregate_id`, `payload` and `headers`; otherwise the whole
/// content is the payload (JSON when it parses, else text) and the prefix is the type.
fn message_event(position: Position, source: Source, prefix: &str, content: &[u8]) -> Event {
    let text = String::from_utf8_lossy(content);
    let parsed: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(&text)
        .ok()
        .filter(|m: &serde_json::Map<_, _>| m.contains_key("payload"));
    let message = match parsed {
        Some(map) => {
            let get = |k: &str| {
                map.get(k)
                    .map(|v| Value::json(&v.to_string()).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null)
            };
            let kind = match get("type") {
                Value::Null => Value::Text(prefix.into()),
                v => v,
            };
            Message {
                id: match get("id") {
                    Value::Null => Value::Text(position.to_string()),
                    v => v,
                },
                kind,
                aggregate_type: match get("aggregate_type") {
                    Value::Null => Value::Text(prefix.into()),
                    v => v,
                },
                aggregate_id: get("aggregate_id"),
                payload: get("payload"),
                headers: get("headers"),
            }
        }
        None => Message {
            id: Value::Text(position.to_string()),
            kind: Value::Text(prefix.into()),
            aggregate_type: Value::Text(prefix.into()),
            aggregate_id: Value::Null,
            payload: Value::json(&text).unwrap_or_else(|| Value::Text(text.into_owned())),
            headers: Value::Null,
        },
    };
    let mut e = Event::new(position, Op::Event, source);
    if !matches!(message.aggregate_id, Value::Null) {
        let mut key = Row::default();
        key.push("aggregate_id".into(), message.aggregate_id.clone());
        e.key = Some(key);
    }
    e.message = Some(message);
    e
}
