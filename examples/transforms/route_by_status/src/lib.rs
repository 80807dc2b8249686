//! `route_by_status`: drops and fans out events by the value of a status column.
//!
//! Config (all optional; lists are comma-separated):
//! - `drop`: statuses whose events are dropped, e.g. `"draft"`.
//! - `split`: statuses whose events are fanned out into two: the original, then a copy with
//!   an added column `route` = `audit` (both at the input's position in the stream).
//! - `column`: the column to read, default `status`.
//! - `route`: the value of the copy's `route` column, default `audit`.
//!
//! Only `after` is read: deletes, truncates, messages and rows whose status is not text (or
//! is missing) pass through unchanged. A status in both lists is dropped.

use sluice_transform::{Config, Event, Outcome, Row, Transform, Value};

struct RouteByStatus {
    drop: Vec<String>,
    split: Vec<String>,
    column: String,
    route: String,
}

impl Transform for RouteByStatus {
    fn init(config: Config) -> Result<Self, String> {
        Ok(RouteByStatus {
            drop: config.list("drop"),
            split: config.list("split"),
            column: config.get_or("column", "status").to_string(),
            route: config.get_or("route", "audit").to_string(),
        })
    }

    fn transform(&mut self, event: Event) -> Outcome {
        let status = event
            .after()
            .and_then(|row| row.get(&self.column))
            .and_then(Value::as_str);
        match status {
            Some(s) if self.drop.iter().any(|d| d == s) => Outcome::drop(),
            Some(s) if self.split.iter().any(|d| d == s) => {
                let mut copy = event.clone();
                copy.set("route", Value::text(&self.route));
                Outcome::many(vec![event, copy])
            }
            _ => Outcome::keep(),
        }
    }
}

sluice_transform::export!(RouteByStatus);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_transform::Op;

    fn order(status: &str) -> Event {
        Event::new(Op::Insert, "public", "orders")
            .with_after([("id", Value::Int(1)), ("status", Value::text(status))])
    }

    #[test]
    fn drops_splits_and_passes() {
        let mut t = RouteByStatus::init(
            [("drop", "draft"), ("split", "paid,refunded")]
                .into_iter()
                .collect(),
        )
        .unwrap();
        assert_eq!(t.transform(order("draft")), Outcome::drop());
        assert_eq!(t.transform(order("new")), Outcome::keep());
        let Outcome::Events(out) = t.transform(order("paid")) else {
            panic!("error")
        };
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], order("paid"));
        assert_eq!(out[1].get_str("route"), Some("audit"));
        let delete = Event::new(Op::Delete, "public", "orders").with_before([("status", "draft")]);
        assert_eq!(t.transform(delete), Outcome::keep());
    }
}
