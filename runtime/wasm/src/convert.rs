//! Events to and from the WIT types of `sluice:transform/types@0.1.0`: borrowed views on
//! the way in (`*Param`), owned values on the way back (`*Result`).
//!
//! A batch names each table and each list of column names once ([`Names`]); rows cross as
//! values only. Names usually come back unchanged: output rows that point at the input's
//! lists share the input's `Arc<str>` names, so a map costs no allocation per name.
//!
//! WIT types cannot recurse, so json/jsonb values and arrays cross as JSON text
//! (`value::json`); what comes back as JSON text stays a [`Value::Json`]. An output event
//! takes its input's position whatever index the guest wrote (offsets count input events),
//! and starts with no cached JSON: its envelope is encoded from what the guest returned.

use std::sync::Arc;

use serde_json::value::RawValue;
use sluice_runtime::{Column, Event, Lsn, Message, Op, Row, Source, Value};

use crate::bindings::sluice::transform::types as wit;

/// The tables and column lists of a batch, by index, as the guest sees them: the input's
/// first, then those an output declares.
#[derive(Default)]
pub(crate) struct Names {
    tables: Vec<(Arc<str>, Arc<str>)>,
    columns: Vec<Vec<Arc<str>>>,
}

impl Names {
    /// The index of `schema.table`, added if new.
    fn table(&mut self, schema: &Arc<str>, table: &Arc<str>) -> u32 {
        let same = |(s, t): &(Arc<str>, Arc<str>)| {
            (Arc::ptr_eq(s, schema) || s == schema) && (Arc::ptr_eq(t, table) || t == table)
        };
        // Most batches name one or two tables, and runs of events share one.
        match self.tables.iter().rposition(same) {
            Some(i) => i as u32,
            None => {
                self.tables.push((schema.clone(), table.clone()));
                (self.tables.len() - 1) as u32
            }
        }
    }

    /// The index of the column list `names`, added if new.
    fn columns<'a>(&mut self, names: impl ExactSizeIterator<Item = &'a Arc<str>> + Clone) -> u32 {
        let same = |list: &Vec<Arc<str>>| {
            list.len() == names.len()
                && list
                    .iter()
                    .zip(names.clone())
                    .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
        };
        match self.columns.iter().rposition(same) {
            Some(i) => i as u32,
            None => {
                self.columns.push(names.cloned().collect());
                (self.columns.len() - 1) as u32
            }
        }
    }

    /// Add what an output declares after the input's. Names equal to an input name share
    /// its `Arc`.
    pub(crate) fn extend(&mut self, tables: Vec<wit::TableResult>, columns: Vec<Vec<String>>) {
        let known = |s: String, names: &Names| -> Arc<str> {
            names
                .columns
                .iter()
                .flatten()
                .chain(names.tables.iter().flat_map(|(s, t)| [s, t]))
                .find(|n| ***n == *s)
                .cloned()
                .unwrap_or_else(|| s.into())
        };
        for t in tables {
            let table = (known(t.schema, self), known(t.name, self));
            self.tables.push(table);
        }
        for list in columns {
            let list = list.into_iter().map(|n| known(n, self)).collect();
            self.columns.push(list);
        }
    }

    fn table_at(&self, index: u32, field: &str) -> Result<&(Arc<str>, Arc<str>), String> {
        self.tables.get(index as usize).ok_or_else(|| {
            format!(
                "{field}: table {index}, but the batch and the output name {} tables",
                self.tables.len()
            )
        })
    }

    fn columns_at(&self, index: u32, field: &str) -> Result<&[Arc<str>], String> {
        match self.columns.get(index as usize) {
            Some(list) => Ok(list),
            None => Err(format!(
                "{field}: column list {index}, but the batch and the output have {}",
                self.columns.len()
            )),
        }
    }
}

/// The two big buffers of a batch's views, kept between batches. (Freeing buffers of this
/// size makes glibc's allocator consolidate its free lists, which cost a tenth of a batch.)
#[derive(Default)]
pub(crate) struct Scratch {
    values: Vec<wit::ValueParam<'static>>,
    events: Vec<wit::EventParam<'static>>,
}

/// An empty vector of another lifetime, with `v`'s allocation. (Collecting an iterator over
/// a `Vec` into a `Vec` of a type with the same layout reuses the allocation.)
fn recycle<'a, 'b, T: Relifetime<'a, 'b>>(mut v: Vec<T>) -> Vec<T::As> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

/// `Self` with its lifetime `'a` swapped for `'b`.
trait Relifetime<'a, 'b> {
    type As;
}

impl<'a, 'b> Relifetime<'a, 'b> for wit::ValueParam<'a> {
    type As = wit::ValueParam<'b>;
}

impl<'a, 'b> Relifetime<'a, 'b> for wit::EventParam<'a> {
    type As = wit::EventParam<'b>;
}

/// Call `f` with `events` as the guest's batch: views that borrow our events, plus one
/// buffer for the texts we must format (arrays as JSON), so lowering into the guest's
/// memory is the only copy. `f` also gets the batch's [`Names`], which
/// [`outcome_events`] needs to read the answer.
pub(crate) fn with_batch<R>(
    events: &[Arc<Event>],
    scratch: &mut Scratch,
    f: impl FnOnce(wit::Batch<'_>, &mut Names) -> R,
) -> R {
    // Pass 1: names and the indexes of every event's table and rows; arrays as JSON text.
    let mut names = Names::default();
    let mut texts = Texts::default();
    let mut refs = Vec::with_capacity(events.len());
    for e in events {
        let table = match (&e.source.schema, &e.source.table) {
            (Some(schema), Some(table)) => Some(names.table(schema, table)),
            (None, Some(table)) => Some(names.table(&Arc::from(""), table)),
            _ => None,
        };
        let mut row = |r: &Option<Row>| {
            r.as_ref().map(|r| {
                for c in &r.0 {
                    texts.push_array(&c.value);
                }
                names.columns(r.0.iter().map(|c| &c.name))
            })
        };
        let rows = [row(&e.key), row(&e.before), row(&e.after)];
        let unchanged = (!e.unchanged.is_empty()).then(|| names.columns(e.unchanged.iter()));
        if let Some(m) = &e.message {
            for v in m.values() {
                texts.push_array(v);
            }
        }
        refs.push((table, rows, unchanged));
    }

    // Pass 2: every row's values in one list; arrays take their texts in order.
    let text = texts.buf.as_str();
    let mut arrays = texts.arrays.iter();
    let mut values: Vec<wit::ValueParam<'_>> = recycle(std::mem::take(&mut scratch.values));
    let mut spans = Vec::with_capacity(events.len());
    let mut messages = Vec::with_capacity(events.len());
    for e in events {
        let mut span = [None, None, None];
        for (slot, row) in span.iter_mut().zip([&e.key, &e.before, &e.after]) {
            if let Some(r) = row {
                let start = values.len();
                values.extend(r.0.iter().map(|c| value_param(&c.value, text, &mut arrays)));
                *slot = Some(start..values.len());
            }
        }
        spans.push(span);
        messages.push(e.message.as_ref().map(|m| {
            let [id, kind, aggregate_type, aggregate_id, payload, headers] =
                m.values().map(|v| value_param(v, text, &mut arrays));
            wit::MessageParam {
                id,
                kind,
                aggregate_type,
                aggregate_id,
                payload,
                headers,
            }
        }));
    }

    // Pass 3: the batch. (The views borrow a copy of the names, so that `f` may add the
    // output's to `names`.)
    let input = (names.tables.clone(), names.columns.clone());
    let tables: Vec<wit::TableParam<'_>> = input
        .0
        .iter()
        .map(|(schema, name)| wit::TableParam { schema, name })
        .collect();
    let lists: Vec<Vec<&str>> = input
        .1
        .iter()
        .map(|l| l.iter().map(|n| &**n).collect())
        .collect();
    let lists: Vec<&[&str]> = lists.iter().map(Vec::as_slice).collect();
    let mut params: Vec<wit::EventParam<'_>> = recycle(std::mem::take(&mut scratch.events));
    params.extend(events.iter().zip(refs).zip(spans).zip(messages).map(
        |(((e, (table, rows, unchanged)), spans), message)| {
            let row = |i: usize| {
                rows[i].map(|columns| wit::RowParam {
                    columns,
                    values: &values[spans[i].clone().expect("a span per row")],
                })
            };
            wit::EventParam {
                index: e.position.index,
                op: op_to_wit(e.op),
                source: wit::Source {
                    table,
                    lsn: e.source.lsn.0,
                    commit_lsn: e.source.commit_lsn.0,
                    xid: e.source.xid,
                    ts: e.source.ts_micros,
                },
                key: row(0),
                before: row(1),
                after: row(2),
                unchanged,
                message,
            }
        },
    ));
    let pipeline = events.first().map_or("", |e| &*e.source.pipeline);
    let batch = wit::Batch {
        pipeline,
        tables: &tables,
        columns: &lists,
        events: &params,
    };
    let result = f(batch, &mut names);
    scratch.events = recycle(params);
    scratch.values = recycle(values);
    result
}

fn op_to_wit(op: Op) -> wit::Op {
    match op {
        Op::Insert => wit::Op::Insert,
        Op::Update => wit::Op::Update,
        Op::Delete => wit::Op::Delete,
        Op::Truncate => wit::Op::Truncate,
        Op::Event => wit::Op::Event,
        Op::Read => wit::Op::Read,
    }
}

/// A range of [`Texts::buf`].
type Span = (usize, usize);

#[derive(Default)]
struct Texts {
    buf: String,
    /// The JSON text of each array value, in the order the values are visited.
    arrays: Vec<Span>,
}

impl Texts {
    #[inline]
    fn push_array(&mut self, v: &Value) {
        if let Value::Array(_) = v {
            let start = self.buf.len();
            let json = serde_json::to_string(v).expect("an array value always encodes as JSON");
            self.buf.push_str(&json);
            self.arrays.push((start, self.buf.len()));
        }
    }
}

fn value_param<'a>(
    v: &'a Value,
    texts: &'a str,
    arrays: &mut std::slice::Iter<'_, Span>,
) -> wit::ValueParam<'a> {
    match v {
        Value::Null => wit::ValueParam::Null,
        Value::Bool(b) => wit::ValueParam::Boolean(*b),
        Value::Int(i) => wit::ValueParam::Int(*i),
        Value::Float(f) if f.is_finite() => wit::ValueParam::Float(*f),
        // As the envelope writes them.
        Value::Float(f) if f.is_nan() => wit::ValueParam::Text("NaN"),
        Value::Float(f) => wit::ValueParam::Text(if *f > 0.0 { "Infinity" } else { "-Infinity" }),
        Value::Text(t) => wit::ValueParam::Text(t),
        Value::Json(raw) => wit::ValueParam::Json(raw.get()),
        Value::Bytes(b) => wit::ValueParam::Bytes(b),
        Value::Array(_) => {
            let (start, end) = *arrays.next().expect("one text per array, in order");
            wit::ValueParam::Json(&texts[start..end])
        }
    }
}

/// The events the guest returned for `input` (an `events` outcome), read against the
/// batch's `names` (extended with the output's). The error says what is wrong.
pub(crate) fn outcome_events(
    events: Vec<wit::EventResult>,
    input: &Event,
    names: &Names,
) -> Result<Vec<Arc<Event>>, String> {
    events
        .into_iter()
        .map(|w| from_wit(w, input, names).map(Arc::new))
        .collect()
}

fn from_wit(w: wit::EventResult, input: &Event, names: &Names) -> Result<Event, String> {
    let op = match w.op {
        wit::Op::Insert => Op::Insert,
        wit::Op::Update => Op::Update,
        wit::Op::Delete => Op::Delete,
        wit::Op::Truncate => Op::Truncate,
        wit::Op::Event => Op::Event,
        wit::Op::Read => Op::Read,
    };
    let s = w.source;
    let (schema, table) = match s.table {
        Some(i) => {
            let (schema, table) = names.table_at(i, "source.table")?;
            (Some(schema.clone()), Some(table.clone()))
        }
        None => (None, None),
    };
    let source = Source {
        pipeline: input.source.pipeline.clone(),
        schema,
        table,
        lsn: Lsn(s.lsn),
        commit_lsn: Lsn(s.commit_lsn),
        xid: s.xid,
        ts_micros: s.ts,
    };
    let mut event = Event::new(input.position, op, source);
    event.key = w.key.map(|r| row_from_wit(r, names, "key")).transpose()?;
    event.before = w
        .before
        .map(|r| row_from_wit(r, names, "before"))
        .transpose()?;
    event.after = w
        .after
        .map(|r| row_from_wit(r, names, "after"))
        .transpose()?;
    if let Some(i) = w.unchanged {
        event.unchanged = names.columns_at(i, "unchanged")?.to_vec();
    }
    event.message = match w.message {
        Some(m) => Some(Message {
            id: value_from_wit(m.id, "message.id")?,
            kind: value_from_wit(m.kind, "message.kind")?,
            aggregate_type: value_from_wit(m.aggregate_type, "message.aggregate-type")?,
            aggregate_id: value_from_wit(m.aggregate_id, "message.aggregate-id")?,
            payload: value_from_wit(m.payload, "message.payload")?,
            headers: value_from_wit(m.headers, "message.headers")?,
        }),
        None => None,
    };
    match (op, event.message.is_some()) {
        (Op::Event, false) => return Err("op is `event` but `message` is none".into()),
        (op, true) if op != Op::Event => {
            return Err(format!("op is `{}` but `message` is set", op.as_str()))
        }
        _ => {}
    }
    Ok(event)
}

fn row_from_wit(w: wit::RowResult, names: &Names, row: &str) -> Result<Row, String> {
    let list = names.columns_at(w.columns, row)?;
    if list.len() != w.values.len() {
        return Err(format!(
            "{row}: {} values for the {} names of column list {}",
            w.values.len(),
            list.len(),
            w.columns
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (name, value) in list.iter().zip(w.values) {
        let value = match value {
            wit::ValueResult::Json(text) => json(text).map_err(|e| format!("{row}.{name}: {e}"))?,
            other => value_from_wit(other, "")?,
        };
        out.push(Column {
            name: name.clone(),
            value,
        });
    }
    Ok(Row(out))
}

fn value_from_wit(v: wit::ValueResult, field: &str) -> Result<Value, String> {
    Ok(match v {
        wit::ValueResult::Null => Value::Null,
        wit::ValueResult::Boolean(b) => Value::Bool(b),
        wit::ValueResult::Int(i) => Value::Int(i),
        wit::ValueResult::Float(f) => Value::Float(f),
        wit::ValueResult::Text(t) => Value::Text(t),
        wit::ValueResult::Json(text) => json(text).map_err(|e| format!("{field}: {e}"))?,
        wit::ValueResult::Bytes(b) => Value::Bytes(b),
    })
}

fn json(text: String) -> Result<Value, String> {
    RawValue::from_string(text)
        .map(Value::Json)
        .map_err(|e| format!("a `json` value that is not JSON ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::Position;

    fn sample() -> Event {
        let source = Source {
            pipeline: "orders".into(),
            schema: Some("public".into()),
            table: Some("orders".into()),
            lsn: Lsn(0x1A2B3A0),
            commit_lsn: Lsn(0x1A2B3C4),
            xid: Some(1234),
            ts_micros: 1_795_327_200_123_456,
        };
        let mut e = Event::new(Position::new(Lsn(0x1A2B3C4), 7), Op::Update, source);
        let mut key = Row::default();
        key.push("id".into(), Value::Int(42));
        let mut after = key.clone();
        after.push("status".into(), Value::Text("paid".into()));
        after.push(
            "tags".into(),
            Value::Array(vec![Value::Text("a".into()), Value::Int(1)]),
        );
        after.push("meta".into(), Value::json(r#"{"k": [1, 2]}"#).unwrap());
        after.push("blob".into(), Value::Bytes(vec![0, 1, 2]));
        after.push("ratio".into(), Value::Float(0.5));
        after.push("nan".into(), Value::Float(f64::NAN));
        after.push("none".into(), Value::Null);
        after.push("ok".into(), Value::Bool(true));
        e.key = Some(key);
        e.before = Some(Row(vec![Column {
            name: "grid".into(),
            value: Value::Array(vec![Value::Array(vec![])]),
        }]));
        e.after = Some(after);
        e.unchanged = vec!["big".into()];
        e
    }

    fn message(i: u32) -> Arc<Event> {
        let mut e = sample();
        e.position = Position::new(Lsn(0x1A2B3C4), i);
        e.op = Op::Event;
        e.source.schema = None;
        e.source.table = None;
        e.source.ts_micros += i64::from(i);
        e.key = None;
        e.before = None;
        e.after = None;
        e.unchanged = vec![];
        e.message = Some(Message {
            id: Value::Text(format!("m{i}")),
            kind: Value::Text("OrderPaid".into()),
            aggregate_type: Value::Text("order".into()),
            aggregate_id: Value::Int(42),
            payload: Value::Array(vec![Value::Int(i64::from(i))]),
            headers: Value::Null,
        });
        Arc::new(e)
    }

    /// What a guest would give back unchanged for `p`.
    fn echo(p: &wit::EventParam<'_>) -> wit::EventResult {
        let value = |v: &wit::ValueParam<'_>| match *v {
            wit::ValueParam::Null => wit::ValueResult::Null,
            wit::ValueParam::Boolean(b) => wit::ValueResult::Boolean(b),
            wit::ValueParam::Int(i) => wit::ValueResult::Int(i),
            wit::ValueParam::Float(f) => wit::ValueResult::Float(f),
            wit::ValueParam::Text(t) => wit::ValueResult::Text(t.into()),
            wit::ValueParam::Json(t) => wit::ValueResult::Json(t.into()),
            wit::ValueParam::Bytes(b) => wit::ValueResult::Bytes(b.into()),
        };
        let row = |r: &Option<wit::RowParam<'_>>| {
            r.as_ref().map(|r| wit::RowResult {
                columns: r.columns,
                values: r.values.iter().map(value).collect(),
            })
        };
        wit::EventResult {
            index: p.index,
            op: p.op,
            source: p.source,
            key: row(&p.key),
            before: row(&p.before),
            after: row(&p.after),
            unchanged: p.unchanged,
            message: p.message.as_ref().map(|m| wit::MessageResult {
                id: value(&m.id),
                kind: value(&m.kind),
                aggregate_type: value(&m.aggregate_type),
                aggregate_id: value(&m.aggregate_id),
                payload: value(&m.payload),
                headers: value(&m.headers),
            }),
        }
    }

    /// Run `edit` on what an echoing guest returns for `events`, then read it back.
    fn round_trip(
        events: &[Arc<Event>],
        edit: impl FnOnce(&mut Vec<wit::EventResult>) -> (Vec<wit::TableResult>, Vec<Vec<String>>),
    ) -> Vec<Result<Event, String>> {
        with_batch(events, &mut Scratch::default(), |batch, names| {
            let mut out: Vec<_> = batch.events.iter().map(echo).collect();
            let (tables, columns) = edit(&mut out);
            names.extend(tables, columns);
            out.into_iter()
                .zip(events)
                .map(|(w, input)| from_wit(w, input, names))
                .collect()
        })
    }

    #[test]
    fn recycled_buffers_keep_their_allocation() {
        let values: Vec<wit::ValueParam<'static>> = Vec::with_capacity(4000);
        let again: Vec<wit::ValueParam<'_>> = recycle(values);
        assert!(again.capacity() >= 4000);
    }

    #[test]
    fn a_batch_names_each_table_and_column_list_once() {
        let mut other = sample();
        other.source.table = Some("customers".into());
        let events = [
            Arc::new(sample()),
            Arc::new(sample()),
            Arc::new(other),
            message(8),
        ];
        with_batch(&events, &mut Scratch::default(), |batch, _| {
            assert_eq!(batch.pipeline, "orders");
            let tables: Vec<_> = batch.tables.iter().map(|t| (t.schema, t.name)).collect();
            assert_eq!(tables, [("public", "orders"), ("public", "customers")]);
            // key, before, after and unchanged: the same four lists for all three rows.
            assert_eq!(batch.columns.len(), 4);
            assert_eq!(batch.columns[0], ["id"]);
            assert_eq!(batch.columns[3], ["big"]);
            let e = &batch.events[2];
            assert_eq!(e.source.table, Some(1));
            assert_eq!(e.after.as_ref().map(|r| r.columns), Some(2));
            assert_eq!(e.after.as_ref().map(|r| r.values.len()), Some(9));
            assert_eq!(e.unchanged, Some(3));
            assert_eq!(
                (e.index, e.source.lsn, e.source.xid),
                (7, 0x1A2B3A0, Some(1234))
            );
            assert_eq!(batch.events[3].source.table, None);
        });
    }

    #[test]
    fn a_round_trip_keeps_the_envelope_and_shares_names() {
        let inputs = [Arc::new(sample()), message(8), message(9)];
        let back = round_trip(&inputs, |_| (vec![], vec![]));
        for (back, e) in back.into_iter().zip(&inputs) {
            let back = back.unwrap();
            let a: serde_json::Value = serde_json::from_slice(e.json()).unwrap();
            let b: serde_json::Value = serde_json::from_slice(back.json()).unwrap();
            assert_eq!(a, b);
            assert!(Arc::ptr_eq(&back.source.pipeline, &e.source.pipeline));
        }
        let back = round_trip(&inputs[..1], |_| (vec![], vec![]))
            .remove(0)
            .unwrap();
        let after = back.after.as_ref().unwrap();
        let was = inputs[0].after.as_ref().unwrap();
        assert!(Arc::ptr_eq(&after.0[1].name, &was.0[1].name));
        // Arrays come back as JSON text, the rest as it was.
        assert!(matches!(after.get("tags"), Some(Value::Json(j)) if j.get() == r#"["a",1]"#));
        assert_eq!(after.get("status"), was.get("status"));
        assert_eq!(after.get("nan"), Some(&Value::Text("NaN".into())));
        assert_eq!(back.unchanged, inputs[0].unchanged);
    }

    #[test]
    fn outputs_keep_the_input_position_and_may_declare_names() {
        let e = Arc::new(sample());
        let out = round_trip(std::slice::from_ref(&e), |out| {
            let w = &mut out[0];
            w.index = 99;
            // The batch has one table and four column lists: these become 1 and 4.
            w.source.table = Some(1);
            w.after = Some(wit::RowResult {
                columns: 4,
                values: vec![
                    wit::ValueResult::Int(42),
                    wit::ValueResult::Text("x".into()),
                ],
            });
            let archive = wit::TableResult {
                schema: "public".into(),
                name: "orders_archive".into(),
            };
            (vec![archive], vec![vec!["id".into(), "note".into()]])
        })
        .remove(0)
        .unwrap();
        assert_eq!(out.position, e.position);
        assert_eq!(out.id(), e.id());
        assert_eq!(out.source.table.as_deref(), Some("orders_archive"));
        assert!(Arc::ptr_eq(
            out.source.schema.as_ref().unwrap(),
            e.source.schema.as_ref().unwrap()
        ));
        let after = out.after.unwrap();
        assert_eq!(after.get("note"), Some(&Value::Text("x".into())));
        // A declared name equal to an input name shares its `Arc`.
        assert!(Arc::ptr_eq(
            &after.0[0].name,
            &e.key.as_ref().unwrap().0[0].name
        ));
    }

    #[test]
    fn invalid_outputs_say_what_is_wrong() {
        let e = Arc::new(sample());
        let fail = |edit: fn(&mut wit::EventResult)| {
            round_trip(std::slice::from_ref(&e), |out| {
                edit(&mut out[0]);
                (vec![], vec![])
            })
            .remove(0)
            .unwrap_err()
        };
        let err =
            fail(|w| w.after.as_mut().unwrap().values[1] = wit::ValueResult::Json("{nope".into()));
        assert!(
            err.starts_with("after.status: a `json` value that is not JSON"),
            "{err}"
        );
        let err = fail(|w| w.after.as_mut().unwrap().columns = 9);
        assert_eq!(
            err,
            "after: column list 9, but the batch and the output have 4"
        );
        let err = fail(|w| {
            w.after.as_mut().unwrap().values.pop();
        });
        assert_eq!(err, "after: 8 values for the 9 names of column list 2");
        let err = fail(|w| w.source.table = Some(3));
        assert_eq!(
            err,
            "source.table: table 3, but the batch and the output name 1 tables"
        );
        let err = fail(|w| w.op = wit::Op::Event);
        assert_eq!(err, "op is `event` but `message` is none");
    }
}
