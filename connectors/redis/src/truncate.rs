//! A `TRUNCATE` in cache mode, with `on_truncate: delete`: every key of the table is
//! found with `SCAN MATCH` (the `key` template with its key placeholders as `*`) and
//! deleted through the cache script at the truncate's position, so a key changed after
//! the truncate (a replayed truncate) is newer and stays, and the deleted keys keep a
//! tombstone like any delete. With `on_truncate: ignore` the sink answers the truncate at
//! once (see [`crate::sink`]).
//!
//! A truncate is a barrier: it runs in the sink's chain after everything before it and
//! before everything after it.

use std::collections::BTreeSet;

use redis::Value;
use sluice_runtime::template::{table_name, Part};
use sluice_runtime::{Delivery, Event};

use crate::cache::{Cache, MAX_ROWS_PER_CALL};
use crate::client::Client;
use crate::config::Format;
use crate::encode::{Fence, FENCE_SUFFIX};
use crate::retry::reply_error;

/// How many keys a SCAN step asks for, and a delete round trip carries.
const KEYS_PER_ROUND_TRIP: usize = 1000;

/// Delete every key of the truncated table: `Delivered` with the number of keys logged,
/// or the failure's answer.
pub(crate) async fn delete_table(cache: &Cache, client: &mut Client, event: &Event) -> Delivery {
    match delete_keys(cache, client, event).await {
        Ok(keys) => {
            tracing::info!(table = %table_name(event), keys, "redis cache: truncate deleted the table's keys");
            Delivery::Delivered
        }
        Err(failure) => failure,
    }
}

async fn delete_keys(cache: &Cache, client: &mut Client, event: &Event) -> Result<usize, Delivery> {
    let pattern = pattern(cache, event).map_err(Delivery::rejected)?;
    let kind = match cache.settings.format {
        Format::Json => "string",
        Format::Hash => "hash",
    };
    let mut keys = BTreeSet::new();
    let mut cursor = String::from("0");
    loop {
        let mut scan = redis::pipe();
        scan.cmd("SCAN")
            .arg(&cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(KEYS_PER_ROUND_TRIP)
            .arg("TYPE")
            .arg(kind);
        let replies = client.run(&scan, &[]).await.map_err(Delivery::retry)?;
        let (next, found) = scan_reply(replies, &pattern)?;
        for key in found {
            let row_key = match cache.settings.format {
                Format::Json => key.strip_suffix(FENCE_SUFFIX).unwrap_or(&key).to_string(),
                Format::Hash => key,
            };
            keys.insert(row_key);
        }
        if next == "0" {
            break;
        }
        cursor = next;
    }
    let fence = Fence::of(event);
    let keys: Vec<String> = keys.into_iter().collect();
    for round in keys.chunks(KEYS_PER_ROUND_TRIP) {
        let mut pipe = redis::pipe();
        let calls: Vec<&[String]> = round.chunks(MAX_ROWS_PER_CALL).collect();
        for call in &calls {
            pipe.add_command(cache.delete_command(call, fence));
        }
        let replies = client
            .run(&pipe, &[&cache.script])
            .await
            .map_err(Delivery::retry)?;
        if replies.len() != calls.len() {
            return Err(Delivery::retry(format!(
                "redis at {} answered {} replies to {} calls",
                client.endpoint(),
                replies.len(),
                calls.len()
            )));
        }
        for (call, reply) in calls.iter().zip(&replies) {
            cache.deleted(call, reply)?;
        }
    }
    Ok(keys.len())
}

/// The SCAN pattern of the table's keys: literal text and `{pipeline}`, `{schema}`,
/// `{table}` escaped, key placeholders as `*`.
fn pattern(cache: &Cache, event: &Event) -> Result<String, String> {
    let mut pattern = String::new();
    for part in cache.settings.key.parts() {
        match part {
            Part::Literal(text) => glob_escape(text, &mut pattern),
            Part::Pipeline => glob_escape(&event.source.pipeline, &mut pattern),
            Part::Schema | Part::Table => {
                let name = if *part == Part::Schema {
                    &event.source.schema
                } else {
                    &event.source.table
                };
                let name = name
                    .as_deref()
                    .ok_or_else(|| "a truncate without its table".to_string())?;
                glob_escape(name, &mut pattern);
            }
            // Key placeholders (and any the configuration refuses in a key) match anything.
            _ => {
                if !pattern.ends_with('*') {
                    pattern.push('*');
                }
            }
        }
    }
    Ok(pattern)
}

/// The cursor and keys of a SCAN reply.
fn scan_reply(replies: Vec<Value>, pattern: &str) -> Result<(String, Vec<String>), Delivery> {
    let reply = replies.into_iter().next();
    let unexpected =
        |what: &str| Delivery::rejected(format!("redis answered SCAN MATCH {pattern} with {what}"));
    let items = match reply {
        Some(Value::Array(items)) if items.len() == 2 => items,
        Some(Value::ServerError(e)) => {
            return Err(reply_error(&e, &format!("SCAN MATCH {pattern}")))
        }
        other => return Err(unexpected(&format!("{other:?}"))),
    };
    let mut items = items.into_iter();
    let cursor = match items.next() {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        other => return Err(unexpected(&format!("the cursor {other:?}"))),
    };
    let keys = match items.next() {
        Some(Value::Array(keys)) => keys
            .into_iter()
            .filter_map(|k| match k {
                Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
                _ => None,
            })
            .collect(),
        other => return Err(unexpected(&format!("the keys {other:?}"))),
    };
    Ok((cursor, keys))
}

/// Append `text` to a glob pattern so that it only matches itself.
fn glob_escape(text: &str, pattern: &mut String) {
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CacheSettings, OnTruncate};
    use sluice_runtime::template::Template;
    use sluice_runtime::{testing, Op};

    fn cache(key: &str) -> Cache {
        Cache::new(CacheSettings {
            key: Template::parse(key).unwrap(),
            format: Format::Json,
            ttl_ms: 0,
            tombstone_ms: 1000,
            on_truncate: OnTruncate::Delete,
        })
    }

    #[test]
    fn truncate_patterns_keep_the_table_and_glob_the_key() {
        let mut e = testing::event("it*ms", Op::Truncate, 1, 0);
        e.source.schema = Some("s[1]".into());
        assert_eq!(pattern(&cache("{table}:{key}"), &e).unwrap(), r"it\*ms:*");
        assert_eq!(
            pattern(&cache("{pipeline}/{schema}.{table}/{key.a}-{key.b}"), &e).unwrap(),
            r"p/s\[1\].it\*ms/*-*"
        );
        assert_eq!(
            pattern(&cache("{table}{key}{key.a}"), &e).unwrap(),
            r"it\*ms*"
        );
    }

    #[test]
    fn scan_replies_give_the_cursor_and_the_keys() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            bulk("17"),
            Value::Array(vec![bulk("a:1"), bulk("a:2")]),
        ]);
        let (cursor, keys) = scan_reply(vec![reply], "a:*").ok().unwrap();
        assert_eq!(
            (cursor.as_str(), keys),
            ("17", vec!["a:1".to_string(), "a:2".into()])
        );
        assert!(matches!(
            scan_reply(vec![Value::Okay], "a:*"),
            Err(Delivery::Rejected { .. })
        ));
    }
}
