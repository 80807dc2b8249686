//! The world's positional batch to the SDK's named events, and back.
//!
//! On the way in, every row of a batch gets the shared [`Name`]s of its column list. On the
//! way back, a row is matched to a column list by its names: first the list its input row
//! had (a pointer comparison per name when the row kept its names), then any list of the
//! batch or of this output, and only then declared as a new list.

use crate::bindings::sluice::transform::types as wit;
use crate::{Column, Event, Lsn, Name, Outcome, Source};

/// The batch's tables and column lists by index: the input's, then the output's new ones.
pub(crate) struct Names {
    tables: Vec<(Name, Name)>,
    columns: Vec<Vec<Name>>,
    input_tables: usize,
    input_columns: usize,
}

/// Where an input event's table and rows were, to try first for what it becomes.
#[derive(Clone, Copy)]
pub(crate) struct Hint {
    table: Option<u32>,
    rows: [Option<u32>; 3],
}

/// The events of `batch`, with one [`Hint`] each.
pub(crate) fn read(batch: wit::Batch) -> (Vec<Event>, Vec<Hint>, Names) {
    let pipeline = Name::from(batch.pipeline);
    let tables: Vec<(Name, Name)> = batch
        .tables
        .into_iter()
        .map(|t| (Name::from(t.schema), Name::from(t.name)))
        .collect();
    let columns: Vec<Vec<Name>> = batch
        .columns
        .into_iter()
        .map(|list| list.into_iter().map(Name::from).collect())
        .collect();
    let list = |i: u32| -> &[Name] {
        columns.get(i as usize).unwrap_or_else(|| {
            panic!(
                "sluice-transform: the host sent column list {i} of {}",
                columns.len()
            )
        })
    };
    let row = |r: wit::Row| -> Vec<Column> {
        let names = list(r.columns);
        assert_eq!(
            names.len(),
            r.values.len(),
            "sluice-transform: the host sent a row whose values do not match its names"
        );
        names
            .iter()
            .zip(r.values)
            .map(|(name, value)| Column {
                name: name.clone(),
                value,
            })
            .collect()
    };
    let mut events = Vec::with_capacity(batch.events.len());
    let mut hints = Vec::with_capacity(batch.events.len());
    for e in batch.events {
        let (schema, table) = match e.source.table {
            Some(i) => {
                let (s, t) = tables
                    .get(i as usize)
                    .unwrap_or_else(|| panic!("sluice-transform: the host sent table {i}"));
                (Some(s.clone()), Some(t.clone()))
            }
            None => (None, None),
        };
        hints.push(Hint {
            table: e.source.table,
            rows: [&e.key, &e.before, &e.after].map(|r| r.as_ref().map(|r| r.columns)),
        });
        events.push(Event {
            index: e.index,
            op: e.op,
            source: Source {
                pipeline: pipeline.clone(),
                schema,
                table,
                lsn: Lsn(e.source.lsn),
                commit_lsn: Lsn(e.source.commit_lsn),
                xid: e.source.xid,
                ts_micros: e.source.ts,
            },
            key: e.key.map(row),
            before: e.before.map(row),
            after: e.after.map(row),
            unchanged: e.unchanged.map(|i| list(i).to_vec()).unwrap_or_default(),
            message: e.message,
        });
    }
    let names = Names {
        input_tables: tables.len(),
        input_columns: columns.len(),
        tables,
        columns,
    };
    (events, hints, names)
}

/// The world's answer for `outcomes`, one per input event (whose hints these are).
pub(crate) fn write(outcomes: Vec<Outcome>, hints: &[Hint], mut names: Names) -> wit::Output {
    let outcomes = outcomes
        .into_iter()
        .zip(hints)
        .map(|(outcome, hint)| match outcome {
            Outcome::Events(events) => {
                wit::Outcome::Events(events.into_iter().map(|e| names.event(e, hint)).collect())
            }
            Outcome::Keep => wit::Outcome::Keep,
            Outcome::Error(message) => wit::Outcome::Error(message),
        })
        .collect();
    wit::Output {
        tables: names.tables[names.input_tables..]
            .iter()
            .map(|(schema, name)| wit::Table {
                schema: schema.to_string(),
                name: name.to_string(),
            })
            .collect(),
        columns: names.columns[names.input_columns..]
            .iter()
            .map(|list| list.iter().map(Name::to_string).collect())
            .collect(),
        outcomes,
    }
}

impl Names {
    fn event(&mut self, e: Event, hint: &Hint) -> wit::Event {
        let table = match (e.source.schema, e.source.table) {
            (schema, Some(table)) => {
                Some(self.table(schema.unwrap_or_else(|| "".into()), table, hint.table))
            }
            (_, None) => None,
        };
        let [key, before, after] = [e.key, e.before, e.after];
        let mut row = |r: Option<Vec<Column>>, hint: Option<u32>| {
            r.map(|r| {
                let columns = self.columns(r.iter().map(|c| &c.name), hint);
                wit::Row {
                    columns,
                    values: r.into_iter().map(|c| c.value).collect(),
                }
            })
        };
        let key = row(key, hint.rows[0]);
        let before = row(before, hint.rows[1]);
        let after = row(after, hint.rows[2]);
        let unchanged = (!e.unchanged.is_empty()).then(|| self.columns(e.unchanged.iter(), None));
        wit::Event {
            index: e.index,
            op: e.op,
            source: wit::Source {
                table,
                lsn: e.source.lsn.0,
                commit_lsn: e.source.commit_lsn.0,
                xid: e.source.xid,
                ts: e.source.ts_micros,
            },
            key,
            before,
            after,
            unchanged,
            message: e.message,
        }
    }

    fn table(&mut self, schema: Name, table: Name, hint: Option<u32>) -> u32 {
        let same = |(s, t): &(Name, Name)| s.same(&schema) && t.same(&table);
        if let Some(i) = hint.filter(|&i| self.tables.get(i as usize).is_some_and(same)) {
            return i;
        }
        match self.tables.iter().position(same) {
            Some(i) => i as u32,
            None => {
                self.tables.push((schema, table));
                (self.tables.len() - 1) as u32
            }
        }
    }

    fn columns<'a>(
        &mut self,
        names: impl ExactSizeIterator<Item = &'a Name> + Clone,
        hint: Option<u32>,
    ) -> u32 {
        let same = |list: &Vec<Name>| {
            list.len() == names.len() && list.iter().zip(names.clone()).all(|(a, b)| a.same(b))
        };
        if let Some(i) = hint.filter(|&i| self.columns.get(i as usize).is_some_and(same)) {
            return i;
        }
        match self.columns.iter().position(same) {
            Some(i) => i as u32,
            None => {
                self.columns.push(names.cloned().collect());
                (self.columns.len() - 1) as u32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Op, Row, Value};

    fn batch() -> wit::Batch {
        let event = |index: u32, status: &str| wit::Event {
            index,
            op: Op::Insert,
            source: wit::Source {
                table: Some(0),
                lsn: 0x100 + u64::from(index),
                commit_lsn: 0x200,
                xid: Some(7),
                ts: 1,
            },
            key: Some(wit::Row {
                columns: 0,
                values: vec![Value::Int(index.into())],
            }),
            before: None,
            after: Some(wit::Row {
                columns: 1,
                values: vec![Value::Int(index.into()), Value::text(status)],
            }),
            unchanged: Some(2),
            message: None,
        };
        wit::Batch {
            pipeline: "shop".into(),
            tables: vec![wit::Table {
                schema: "public".into(),
                name: "orders".into(),
            }],
            columns: vec![
                vec!["id".into()],
                vec!["id".into(), "status".into()],
                vec!["notes".into()],
            ],
            events: vec![event(0, "paid"), event(1, "new")],
        }
    }

    #[test]
    fn rows_get_their_names_and_share_them() {
        let (events, _, _) = read(batch());
        let after = events[1].after().unwrap();
        assert_eq!(after.get("status"), Some(&Value::text("new")));
        assert_eq!(events[1].table(), Some("orders"));
        assert_eq!(events[1].id(), "0/200:1");
        assert_eq!(events[0].unchanged, ["notes"]);
        let other = events[0].after().unwrap();
        assert!(std::ptr::eq(other[1].name.as_str(), after[1].name.as_str()));
    }

    #[test]
    fn unchanged_names_cross_back_as_indexes_and_new_ones_are_declared_once() {
        let (mut events, hints, names) = read(batch());
        // The first event keeps its shape; the second gains a column and changes table.
        let mut second = events.pop().unwrap();
        second.set("route", "audit");
        second.source.table = Some("orders_audit".into());
        let copy = second.clone();
        let out = write(
            vec![
                Outcome::one(events.remove(0)),
                Outcome::many(vec![second, copy]),
            ],
            &hints,
            names,
        );
        assert_eq!(
            out.columns,
            [vec!["id".to_string(), "status".into(), "route".into()]]
        );
        assert_eq!(out.tables.len(), 1);
        assert_eq!(out.tables[0].name, "orders_audit");
        let wit::Outcome::Events(first) = &out.outcomes[0] else {
            panic!()
        };
        assert_eq!(first[0].after.as_ref().map(|r| r.columns), Some(1));
        assert_eq!(first[0].unchanged, Some(2));
        assert_eq!(first[0].source.table, Some(0));
        let wit::Outcome::Events(fanned) = &out.outcomes[1] else {
            panic!()
        };
        for e in fanned {
            assert_eq!(e.after.as_ref().map(|r| r.columns), Some(3));
            assert_eq!(e.after.as_ref().map(|r| r.values.len()), Some(3));
            assert_eq!(e.source.table, Some(1));
            assert_eq!(e.key.as_ref().map(|r| r.columns), Some(0));
        }
    }
}
