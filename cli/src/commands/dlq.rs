//! `sluice dlq list | show | replay | purge`: the dead-letter queues as a workflow.
//!
//! Every command works on the state store, whether or not the pipeline runs. `replay`
//! marks entries; the running pipeline sends them within a second, or the next
//! `sluice run` does right after it starts. A replayed event that fails again goes back to
//! the DLQ with its attempts counted.

use std::path::Path;

use sluice_runtime::config::Pipeline;
use sluice_runtime::event::format_timestamp_micros;
use sluice_runtime::state::{DeadLetters, DlqEntry, DlqFilter, Offsets, SqliteStore};

use crate::Failure;

/// Which entries a command is about.
pub struct Selection {
    pub sink: Option<String>,
    pub ids: Vec<String>,
}

fn open(pipeline: &Pipeline) -> Result<Option<SqliteStore>, Failure> {
    SqliteStore::open_existing(&pipeline.state).map_err(|e| Failure::Runtime(e.to_string()))
}

fn filter(pipeline: &Pipeline, selection: Selection) -> Result<DlqFilter, Failure> {
    if let Some(sink) = &selection.sink {
        if pipeline.sink(sink).is_none() {
            let known: Vec<&str> = pipeline.sinks.iter().map(|s| s.name.as_str()).collect();
            return Err(Failure::Input(format!(
                "{}: there is no sink `{sink}` (sinks: {})",
                pipeline.file.display(),
                known.join(", ")
            )));
        }
    }
    Ok(DlqFilter {
        sink: selection.sink,
        ids: selection.ids,
    })
}

fn entries(pipeline: &Pipeline, filter: &DlqFilter) -> Result<Vec<DlqEntry>, Failure> {
    match open(pipeline)? {
        Some(store) => store
            .dlq_list(filter)
            .map_err(|e| Failure::Runtime(e.to_string())),
        None => Ok(Vec::new()),
    }
}

pub fn list(path: &Path, selection: Selection, json: bool) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let filter = filter(&pipeline, selection)?;
    let entries = entries(&pipeline, &filter)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).map_err(|e| Failure::Runtime(e.to_string()))?
        );
        return Ok(());
    }
    if entries.is_empty() {
        println!("the DLQ is empty");
        return Ok(());
    }
    println!(
        "{:>6}  {:<12} {:<20} {:<7} {:<10} {:>8}  {:<27}  ERROR",
        "ID", "SINK", "EVENT", "STATE", "STAGE", "ATTEMPTS", "LAST FAILURE"
    );
    for e in &entries {
        println!(
            "{:>6}  {:<12} {:<20} {:<7} {:<10} {:>8}  {:<27}  {}",
            e.id,
            e.sink,
            e.event_id,
            state(e),
            e.stage,
            e.attempts,
            format_timestamp_micros(e.last_failed_at),
            one_line(&e.error, 80)
        );
    }
    println!("{} event(s)", entries.len());
    Ok(())
}

pub fn show(path: &Path, id: String, json: bool) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let filter = DlqFilter {
        sink: None,
        ids: vec![id.clone()],
    };
    let entries = entries(&pipeline, &filter)?;
    if entries.is_empty() {
        return Err(Failure::Input(format!(
            "no DLQ entry `{id}` (an entry id or an event id; see `sluice dlq list`)"
        )));
    }
    if json {
        let out = if entries.len() == 1 {
            serde_json::to_string_pretty(&entries[0])
        } else {
            serde_json::to_string_pretty(&entries)
        };
        println!("{}", out.map_err(|e| Failure::Runtime(e.to_string()))?);
        return Ok(());
    }
    for e in &entries {
        println!("entry        {}", e.id);
        println!("sink         {}", e.sink);
        println!("event        {}", e.event_id);
        println!("state        {}", state(e));
        println!("stage        {}", e.stage);
        println!("error        {} — {}", e.error_kind, e.error);
        println!("attempts     {}", e.attempts);
        println!(
            "first failed {}",
            format_timestamp_micros(e.first_failed_at)
        );
        println!("last failed  {}", format_timestamp_micros(e.last_failed_at));
        println!("config hash  {}", e.config_hash);
        println!("event as the source produced it:\n{}", pretty(&e.original));
        if e.failed != e.original {
            println!("event as it reached {}:\n{}", e.stage, pretty(&e.failed));
        }
    }
    Ok(())
}

pub fn replay(path: &Path, selection: Selection) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let filter = filter(&pipeline, selection)?;
    let Some(store) = open(&pipeline)? else {
        println!("the DLQ is empty");
        return Ok(());
    };
    let sinks = touched(&store, &filter)?;
    let n = store
        .dlq_request_replay(&filter)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    println!(
        "{n} event(s) queued for replay: a running `sluice run` sends them within a second, \
         otherwise the next `sluice run` does as it starts"
    );
    resume(&store, &sinks, "sends these events, then goes on")
}

pub fn purge(path: &Path, selection: Selection, all: bool) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    if selection.sink.is_none() && selection.ids.is_empty() && !all {
        return Err(Failure::Input(
            "purge needs --sink, --id or --all: purged events are gone for good".into(),
        ));
    }
    let ids = selection.ids.clone();
    let filter = filter(&pipeline, selection)?;
    let Some(store) = open(&pipeline)? else {
        return match ids.is_empty() {
            true => {
                println!("the DLQ is empty");
                Ok(())
            }
            false => Err(unknown(&ids)),
        };
    };
    let sinks = touched(&store, &filter)?;
    let n = store
        .dlq_purge(&filter)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    if n == 0 && !ids.is_empty() {
        return Err(unknown(&ids));
    }
    println!("purged {n} event(s) for good; events held behind them will be replayed");
    resume(&store, &sinks, "goes on")
}

fn unknown(ids: &[String]) -> Failure {
    Failure::Input(format!(
        "no DLQ entry {} (entry ids or event ids; see `sluice dlq list`)",
        ids.iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The sinks whose entries `filter` selects.
fn touched(store: &SqliteStore, filter: &DlqFilter) -> Result<Vec<String>, Failure> {
    let mut sinks: Vec<String> = match &filter.sink {
        Some(sink) => vec![sink.clone()],
        None => store
            .dlq_list(filter)
            .map_err(|e| Failure::Runtime(e.to_string()))?
            .into_iter()
            .map(|e| e.sink)
            .collect(),
    };
    sinks.sort();
    sinks.dedup();
    Ok(sinks)
}

/// An operator acted on these sinks' dead letters: a sink the DLQ breaker stopped goes on;
/// say what happens to each stopped sink.
fn resume(store: &SqliteStore, sinks: &[String], what: &str) -> Result<(), Failure> {
    let records = store.sinks().map_err(|e| Failure::Runtime(e.to_string()))?;
    for sink in sinks {
        let was_tripped = store
            .clear_trip(sink)
            .map_err(|e| Failure::Runtime(e.to_string()))?;
        if was_tripped {
            println!(
                "sink {sink} was stopped by the DLQ breaker: it resumes from its offset and \
                 {what} (a running `sluice run` within a second, otherwise the next run)"
            );
        } else if let Some(r) = records.get(sink).filter(|r| r.state == "stopped") {
            println!(
                "sink {sink} is stopped ({}): a running pipeline sends it nothing until it is \
                 restarted; the next `sluice run` does this as it starts",
                r.reason.as_deref().unwrap_or("no reason recorded")
            );
        }
    }
    Ok(())
}

fn state(e: &DlqEntry) -> &'static str {
    match e.state {
        sluice_runtime::state::DlqState::Parked => "parked",
        sluice_runtime::state::DlqState::Held => "held",
        sluice_runtime::state::DlqState::Replay => "replay",
    }
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

fn pretty(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}
