//! What a `_bulk` answer means for each event.
//!
//! A 2xx item is delivered. A 409 `version_conflict_engine_exception` is delivered too: the
//! document already holds this change or a newer one (a replay, a late event). A delete of
//! a document that is not there (404) is delivered: it is gone either way. 429 and 5xx
//! items (a full write queue, a shard that is not ready) are retried, that item only.
//! Every other item status (400 mapping and parse errors, 404 for a missing index when
//! indices are not created on demand) rejects that event only, with the item's error type
//! and reason.

use std::time::Duration;

use elasticsearch::http::StatusCode;
use serde::Deserialize;
use sluice_runtime::Delivery;

/// The body of a `_bulk` response: `errors` and one item per action, in action order.
#[derive(Debug, Deserialize)]
pub(crate) struct BulkResponse {
    /// Whether any item failed (a 409 counts): `false` means every item is a success.
    #[serde(default = "yes")]
    pub errors: bool,
    pub items: Vec<Item>,
}

fn yes() -> bool {
    true
}

/// `{"index": {...}}`, `{"delete": {...}}` (or `create`, `update`).
#[derive(Debug, Deserialize)]
pub(crate) struct Item {
    #[serde(alias = "delete", alias = "create", alias = "update")]
    index: ItemResult,
}

#[derive(Debug, Deserialize)]
struct ItemResult {
    #[serde(default)]
    _index: String,
    #[serde(default)]
    _id: String,
    status: u16,
    #[serde(default)]
    error: Option<ErrorCause>,
}

/// Elasticsearch's error object: `type`, `reason`, maybe `caused_by`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorCause {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub caused_by: Option<Box<ErrorCause>>,
}

impl ErrorCause {
    /// `type: reason (caused by type: reason)`, on one line.
    pub fn describe(&self) -> String {
        let mut text = self.kind.clone();
        if let Some(reason) = &self.reason {
            text.push_str(": ");
            text.push_str(reason);
        }
        if let Some(cause) = &self.caused_by {
            text.push_str(" (caused by ");
            text.push_str(&cause.describe());
            text.push(')');
        }
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// The kind of action an item answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActionKind {
    Index,
    Delete,
}

impl Item {
    /// What this item's answer means for its event. `after` is the response's own
    /// `Retry-After`, if it had one.
    pub fn delivery(&self, action: ActionKind, after: Option<Duration>) -> Delivery {
        let item = &self.index;
        let status = StatusCode::from_u16(item.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let conflict = item
            .error
            .as_ref()
            .is_none_or(|e| e.kind == "version_conflict_engine_exception");
        if status.is_success()
            || (status == StatusCode::CONFLICT && conflict)
            || (status == StatusCode::NOT_FOUND && action == ActionKind::Delete)
        {
            return Delivery::Delivered;
        }
        let mut reason = format!(
            "document `{}/{}`: HTTP {}",
            item._index,
            item._id,
            status.as_u16()
        );
        if let Some(error) = &item.error {
            reason.push(' ');
            reason.push_str(&error.describe());
        }
        if sluice_http::is_transient(status) {
            Delivery::Retry { reason, after }
        } else {
            Delivery::Rejected { reason }
        }
    }
}

/// The answer of an event whose actions got `answers` (a key change has two): the first
/// that is not a delivery, else delivered.
pub(crate) fn combine(answers: impl IntoIterator<Item = Delivery>) -> Delivery {
    answers
        .into_iter()
        .find(|d| !d.is_delivered())
        .unwrap_or(Delivery::Delivered)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn item(v: serde_json::Value) -> Item {
        serde_json::from_value(v).unwrap()
    }

    fn failed(op: &str, status: u16, kind: &str, reason: &str) -> Item {
        item(
            json!({op: {"_index": "orders", "_id": "1", "status": status,
                         "error": {"type": kind, "reason": reason}}}),
        )
    }

    #[test]
    fn successes_conflicts_and_missing_deletes_are_delivered() {
        let ok = item(json!({"index": {"_index": "o", "_id": "1", "_version": 5,
                                       "result": "created", "status": 201}}));
        assert!(ok.delivery(ActionKind::Index, None).is_delivered());
        let conflict = failed(
            "index",
            409,
            "version_conflict_engine_exception",
            "[1]: version conflict, current version [9] is higher or equal to the one provided [5]",
        );
        assert!(conflict.delivery(ActionKind::Index, None).is_delivered());
        let gone = item(
            json!({"delete": {"_index": "o", "_id": "1", "result": "not_found",
                                          "status": 404}}),
        );
        assert!(gone.delivery(ActionKind::Delete, None).is_delivered());
    }

    #[test]
    fn overload_and_server_errors_are_retried_with_the_error() {
        let busy = failed(
            "index",
            429,
            "es_rejected_execution_exception",
            "queue full",
        );
        let Delivery::Retry { reason, after } =
            busy.delivery(ActionKind::Index, Some(Duration::from_secs(2)))
        else {
            panic!()
        };
        assert_eq!(
            reason,
            "document `orders/1`: HTTP 429 es_rejected_execution_exception: queue full"
        );
        assert_eq!(after, Some(Duration::from_secs(2)));
        let unavailable = failed("delete", 503, "unavailable_shards_exception", "primary");
        assert!(matches!(
            unavailable.delivery(ActionKind::Delete, None),
            Delivery::Retry { .. }
        ));
    }

    #[test]
    fn mapping_errors_and_other_client_errors_reject_the_event() {
        let mut bad = failed(
            "index",
            400,
            "document_parsing_exception",
            "[1:7] failed to parse field [n] of type [long]",
        );
        bad.index.error.as_mut().unwrap().caused_by = Some(Box::new(ErrorCause {
            kind: "illegal_argument_exception".into(),
            reason: Some("For input string: \"x\"".into()),
            caused_by: None,
        }));
        let Delivery::Rejected { reason } = bad.delivery(ActionKind::Index, None) else {
            panic!()
        };
        assert_eq!(
            reason,
            "document `orders/1`: HTTP 400 document_parsing_exception: [1:7] failed to parse \
             field [n] of type [long] (caused by illegal_argument_exception: For input string: \"x\")"
        );
        let no_index = failed("index", 404, "index_not_found_exception", "no such index");
        assert!(matches!(
            no_index.delivery(ActionKind::Index, None),
            Delivery::Rejected { .. }
        ));
        let other_conflict = failed("index", 409, "resource_already_exists_exception", "x");
        assert!(!other_conflict
            .delivery(ActionKind::Index, None)
            .is_delivered());
    }

    #[test]
    fn a_key_change_answers_with_its_first_failure() {
        assert!(combine([Delivery::Delivered, Delivery::Delivered]).is_delivered());
        assert_eq!(
            combine([Delivery::Delivered, Delivery::rejected("mapping")]),
            Delivery::rejected("mapping")
        );
        assert_eq!(
            combine([Delivery::retry("429"), Delivery::rejected("mapping")]),
            Delivery::retry("429")
        );
    }

    #[test]
    fn responses_parse_as_elasticsearch_writes_them() {
        let r: BulkResponse = serde_json::from_value(json!({
            "took": 3, "errors": true,
            "items": [
                {"index": {"_index": "o", "_id": "1", "_version": 7, "result": "updated",
                           "_shards": {"total": 2, "successful": 1, "failed": 0},
                           "_seq_no": 3, "_primary_term": 1, "status": 200}},
                {"delete": {"_index": "o", "_id": "2", "status": 409,
                            "error": {"type": "version_conflict_engine_exception",
                                      "reason": "r", "index_uuid": "u", "shard": "0",
                                      "index": "o"}}}
            ]
        }))
        .unwrap();
        assert!(r.errors);
        assert_eq!(r.items.len(), 2);
        assert!(r.items[1].delivery(ActionKind::Delete, None).is_delivered());
    }
}
