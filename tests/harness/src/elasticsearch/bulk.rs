//! `_bulk`: NDJSON actions applied in order, with Elasticsearch's validation, external
//! versioning, tombstones, dynamic mapping and per-item answers.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::mapping::{self, Mapping};
use super::{error, Applied, BulkAction, Index, Request, State, Stored, Tombstone, MAX_ID_BYTES};

pub(super) fn bulk(
    s: &mut State,
    r: &Request,
    default_index: Option<String>,
) -> (StatusCode, Value) {
    let actions = match parse_bulk(&r.body, default_index.as_deref()) {
        Ok(actions) => actions,
        Err((kind, reason)) => {
            return (
                StatusCode::BAD_REQUEST,
                error(kind, &reason, StatusCode::BAD_REQUEST),
            )
        }
    };
    let opaque = r.opaque_id();
    let mut items = Vec::with_capacity(actions.len());
    let mut errors = false;
    for action in &actions {
        let (status, mut result) = apply(s, action, opaque.as_deref());
        errors |= result.get("error").is_some();
        result["status"] = json!(status);
        items.push(json!({ action.op.clone(): result }));
    }
    s.bulks.push(actions);
    if matches!(
        r.query.get("refresh").map(String::as_str),
        Some("" | "true" | "wait_for")
    ) {
        let seq_no = s.seq_no;
        s.indices.values_mut().for_each(|i| i.refreshed = seq_no);
    }
    (
        StatusCode::OK,
        json!({"took": 1, "errors": errors, "items": items}),
    )
}

/// The actions of an NDJSON body; a request Elasticsearch would refuse whole is an error.
fn parse_bulk(
    body: &[u8],
    default_index: Option<&str>,
) -> Result<Vec<BulkAction>, (&'static str, String)> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ("parse_exception", "the body is not UTF-8".to_string()))?;
    let mut lines = text.split('\n').filter(|l| !l.trim().is_empty());
    let mut actions = Vec::new();
    let mut problems = Vec::new();
    while let Some(line) = lines.next() {
        let parsed: Value = serde_json::from_str(line).map_err(|e| {
            (
                "x_content_parse_exception",
                format!("malformed action line: {e}"),
            )
        })?;
        let Some((op, meta)) = parsed.as_object().and_then(|o| o.iter().next()) else {
            return Err((
                "illegal_argument_exception",
                "Malformed action/metadata line".into(),
            ));
        };
        let op = op.clone();
        if !matches!(op.as_str(), "index" | "create" | "delete" | "update") {
            return Err((
                "illegal_argument_exception",
                format!("Malformed action/metadata line [{}], expected one of [create, delete, index, update] but found [{op}]", actions.len() + 1),
            ));
        }
        let source = if op == "delete" {
            None
        } else {
            let line = lines.next().ok_or((
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]".to_string(),
            ))?;
            let value: Value = serde_json::from_str(line).map_err(|e| {
                (
                    "x_content_parse_exception",
                    format!("malformed document line: {e}"),
                )
            })?;
            Some(value)
        };
        let n = actions.len() + 1;
        let index = meta["_index"]
            .as_str()
            .map(str::to_string)
            .or_else(|| default_index.map(str::to_string));
        let id = meta["_id"].as_str().map(str::to_string);
        let version = meta["version"].as_i64();
        let version_type = meta["version_type"].as_str().map(str::to_string);
        if index.is_none() {
            problems.push(format!("{n}: index is missing;"));
        }
        match &id {
            None if op != "index" => problems.push(format!("{n}: id is missing;")),
            Some(id) if id.len() > MAX_ID_BYTES => problems.push(format!(
                "{n}: id [{id}] is too long, must be no longer than 512 bytes but was: {};",
                id.len()
            )),
            _ => {}
        }
        match (version_type.as_deref(), version) {
            (Some("external" | "external_gte"), None) => {
                problems.push(format!("{n}: an external version is required;"))
            }
            (Some("external" | "external_gte"), Some(_)) if op == "update" => {
                problems.push(format!(
                    "{n}: version type [{}] is not supported by the update API;",
                    version_type.as_deref().unwrap_or_default()
                ))
            }
            (Some(other), _) if !matches!(other, "internal" | "external" | "external_gte") => {
                problems.push(format!("{n}: version_type [{other}] is unknown;"))
            }
            _ => {}
        }
        actions.push(BulkAction {
            op,
            index: index.unwrap_or_default(),
            id: id.unwrap_or_default(),
            version,
            version_type,
            source,
        });
    }
    if !problems.is_empty() {
        return Err((
            "action_request_validation_exception",
            format!("Validation Failed: {}", problems.join(" ")),
        ));
    }
    Ok(actions)
}

/// Apply one action: its status and item body.
fn apply(s: &mut State, action: &BulkAction, opaque: Option<&str>) -> (u16, Value) {
    let item = |extra: Value| {
        let mut v = json!({"_index": action.index, "_id": action.id});
        if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
            v.extend(extra);
        }
        v
    };
    let failed = |kind: &str, reason: String| {
        item(json!({"error": {"type": kind, "reason": reason, "index": action.index}}))
    };
    for fault in &mut s.item_faults {
        if fault.remaining != Some(0) && (fault.matches)(action) {
            if let Some(n) = &mut fault.remaining {
                *n -= 1;
            }
            return (
                429,
                failed(
                    "es_rejected_execution_exception",
                    "rejected execution of coordinating operation (the stand-in was told to)"
                        .into(),
                ),
            );
        }
    }
    if action.op == "update" {
        return (
            400,
            failed(
                "illegal_argument_exception",
                "the stand-in does not implement update".into(),
            ),
        );
    }
    if let Some(reason) = invalid_index_name(&action.index) {
        return (400, failed("invalid_index_name_exception", reason));
    }
    let now = s.now();
    let settings = s.settings;
    let index = s
        .indices
        .entry(action.index.clone())
        .or_insert_with(|| Index {
            docs: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            mapping: Mapping::new(),
            refreshed: s.seq_no,
        });
    let live = index.docs.get(&action.id).map(|d| d.version);
    let tombstone = index
        .tombstones
        .get(&action.id)
        .filter(|t| now.duration_since(t.at) < settings.gc_deletes)
        .map(|t| t.version);
    let current = live.or(tombstone);
    let version = match (action.version_type.as_deref(), action.version, current) {
        (Some("external"), Some(v), Some(c)) if v <= c => {
            return (409, failed("version_conflict_engine_exception", format!(
                "[{}]: version conflict, current version [{c}] is higher or equal to the one provided [{v}]", action.id)));
        }
        (Some("external_gte"), Some(v), Some(c)) if v < c => {
            return (409, failed("version_conflict_engine_exception", format!(
                "[{}]: version conflict, current version [{c}] is higher than the one provided [{v}]", action.id)));
        }
        (Some("external" | "external_gte"), Some(v), _) => v,
        _ => current.unwrap_or(0) + 1,
    };
    if action.op == "create" && live.is_some() {
        return (
            409,
            failed(
                "version_conflict_engine_exception",
                format!(
                    "[{}]: version conflict, document already exists (current version [{}])",
                    action.id,
                    live.unwrap_or_default()
                ),
            ),
        );
    }
    let id = if action.id.is_empty() {
        format!("auto-{}", s.seq_no + 1)
    } else {
        action.id.clone()
    };
    s.seq_no += 1;
    let seq_no = s.seq_no;
    let index = s.indices.get_mut(&action.index).expect("created above");
    let shards = json!({"total": 1, "successful": 1, "failed": 0});
    if action.op == "delete" {
        index
            .tombstones
            .insert(id.clone(), Tombstone { version, at: now });
        let found = index.docs.remove(&id).is_some();
        if !found {
            return (
                404,
                item(
                    json!({"_version": version, "result": "not_found", "_shards": shards,
                                     "_seq_no": seq_no, "_primary_term": 1}),
                ),
            );
        }
        s.applied.push(Applied {
            action: "delete".into(),
            index: action.index.clone(),
            id: Some(id),
            version: Some(version),
            opaque_id: opaque.map(str::to_string),
        });
        return (
            200,
            item(
                json!({"_version": version, "result": "deleted", "_shards": shards,
                                 "_seq_no": seq_no, "_primary_term": 1}),
            ),
        );
    }
    let Some(Value::Object(source)) = &action.source else {
        return (
            400,
            failed(
                "document_parsing_exception",
                "[1:1] the document is not a JSON object".into(),
            ),
        );
    };
    if let Err(mapping::ParseFailure(error)) = mapping::apply(&mut index.mapping, source, &id) {
        return (400, item(json!({"error": error})));
    }
    index.tombstones.remove(&id);
    let created = index
        .docs
        .insert(
            id.clone(),
            Stored {
                version,
                seq_no,
                source: source.clone(),
                written: now,
            },
        )
        .is_none();
    s.applied.push(Applied {
        action: action.op.clone(),
        index: action.index.clone(),
        id: Some(id.clone()),
        version: Some(version),
        opaque_id: opaque.map(str::to_string),
    });
    let (status, result) = if created {
        (201, "created")
    } else {
        (200, "updated")
    };
    (
        status,
        item(
            json!({"_id": id, "_version": version, "result": result, "_shards": shards,
                         "_seq_no": seq_no, "_primary_term": 1}),
        ),
    )
}

/// Elasticsearch's index name rules.
fn invalid_index_name(name: &str) -> Option<String> {
    let why = if name != name.to_lowercase() {
        "must be lowercase"
    } else if name.starts_with(['_', '-', '+']) {
        "must not start with '_', '-', or '+'"
    } else if name.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':']) {
        "must not contain the following characters [ , \", *, \\, <, |, ,, >, /, ?, :, #]"
    } else if name == "." || name == ".." {
        "must not be '.' or '..'"
    } else if name.len() > 255 {
        "index name is too long"
    } else {
        return None;
    };
    Some(format!("Invalid index name [{name}], {why}"))
}
