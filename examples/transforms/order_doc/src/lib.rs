//! `order_doc`: reshapes an `orders` row into a search document.
//!
//! For inserts and updates of the orders table, `after` becomes the document:
//!
//! ```json
//! { "id": 42, "status": "paid", "total": "19.90",
//!   "customer": { "id": 7, "email": "a@example.com" },
//!   "...": "every other column, unchanged" }
//! ```
//!
//! - `total` (numeric) stays the envelope's decimal string: no precision is lost to floats.
//! - `customer` is a JSON object (a `json` value) gathered from `customer_id` (as `id`) and
//!   every `customer_<name>` column (as `<name>`); those columns leave the top level. With
//!   none of them, or only a NULL `customer_id`, `customer` is `null`.
//! - `before` is dropped from every event of the table: a search index needs the key and
//!   the new document only. Deletes therefore carry just their `key` (and no `after`,
//!   as before), which is all a sink needs to delete the document.
//! - A row without an `id` column is an error: the event goes to the DLQ.
//!
//! Other tables, truncates and messages pass through unchanged.
//!
//! Config: `table` (optional): the table to reshape, default `orders` (any schema).

use serde_json::{Map, Value as Json};
use sluice_transform::{Column, Config, Event, Op, Outcome, Row, Transform, Value};

struct OrderDoc {
    table: String,
}

impl Transform for OrderDoc {
    fn init(config: Config) -> Result<Self, String> {
        Ok(OrderDoc {
            table: config.get_or("table", "orders").to_string(),
        })
    }

    fn transform(&mut self, mut event: Event) -> Outcome {
        if event.table() != Some(self.table.as_str()) {
            return Outcome::keep();
        }
        match event.op() {
            Op::Insert | Op::Update | Op::Read => {}
            Op::Delete => {
                event.before = None;
                return Outcome::one(event);
            }
            Op::Truncate | Op::Event => return Outcome::keep(),
        }
        event.before = None;
        let Some(row) = event.after.take() else {
            return Outcome::error("order_doc: insert or update without `after`");
        };
        match document(row) {
            Ok(doc) => {
                event.after = Some(doc);
                Outcome::one(event)
            }
            Err(e) => Outcome::error(e),
        }
    }
}

/// The document for one orders row: `id`, `status`, `total`, `customer`, then the rest.
fn document(row: Vec<Column>) -> Result<Vec<Column>, String> {
    let mut doc = Vec::with_capacity(row.len());
    let mut customer = Map::new();
    let mut rest = Vec::new();
    for column in row {
        if column.name == "customer_id" {
            if !column.value.is_null() {
                customer.insert("id".to_string(), to_json(&column.value)?);
            }
        } else if let Some(field) = column.name.strip_prefix("customer_") {
            customer.insert(field.to_string(), to_json(&column.value)?);
        } else {
            rest.push(column);
        }
    }
    for name in ["id", "status", "total"] {
        if let Some(i) = rest.iter().position(|c| c.name == name) {
            doc.push(rest.remove(i));
        } else if name == "id" {
            return Err("order_doc: the row has no `id` column".to_string());
        }
    }
    let customer = if customer.is_empty() {
        Value::Null
    } else {
        Value::json(Json::Object(customer).to_string())
    };
    doc.set("customer", customer);
    doc.extend(rest);
    Ok(doc)
}

fn to_json(value: &Value) -> Result<Json, String> {
    serde_json::from_str(&value.to_json())
        .map_err(|e| format!("order_doc: a json column is not valid JSON: {e}"))
}

sluice_transform::export!(OrderDoc);

#[cfg(test)]
mod tests {
    use super::*;

    fn order_doc() -> OrderDoc {
        OrderDoc::init(Config::default()).unwrap()
    }

    #[test]
    fn reshapes_an_order() {
        let event = Event::new(Op::Update, "public", "orders")
            .with_before([("id", Value::Int(42))])
            .with_after([
                ("customer_id", Value::Int(7)),
                ("total", Value::text("19.90")),
                ("customer_email", Value::text("a@example.com")),
                ("tags", Value::json(r#"["a"]"#)),
                ("status", Value::text("paid")),
                ("id", Value::Int(42)),
            ]);
        let Outcome::Events(out) = order_doc().transform(event) else {
            panic!("error")
        };
        let after = out[0].after().unwrap();
        let names: Vec<_> = after.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "status", "total", "customer", "tags"]);
        assert_eq!(after.get("total"), Some(&Value::text("19.90")));
        assert_eq!(
            after.get("customer"),
            Some(&Value::json(r#"{"email":"a@example.com","id":7}"#))
        );
        assert!(out[0].before().is_none());
    }

    #[test]
    fn deletes_keep_only_the_key_and_other_tables_pass() {
        let delete = Event::new(Op::Delete, "public", "orders")
            .with_key([("id", 1)])
            .with_before([("id", 1)]);
        let Outcome::Events(out) = order_doc().transform(delete) else {
            panic!("error")
        };
        assert!(out[0].before().is_none() && out[0].after().is_none() && out[0].key().is_some());
        let other = Event::new(Op::Insert, "public", "customers").with_after([("id", 1)]);
        assert_eq!(order_doc().transform(other), Outcome::keep());
        let no_id = Event::new(Op::Insert, "public", "orders").with_after([("status", "x")]);
        assert!(order_doc().transform(no_id).is_error());
    }
}
