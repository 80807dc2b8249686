//! `sluice validate`: the file, and with `--connect` everything `run` will need: the source
//! (server settings, tables, rights to create what is missing), the state file's folder, the
//! admin port, and every sink. It says OK only when `run` would get past its start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::json;
use sluice_runtime::config::{ConfigError, JournalKind, Pipeline};
use sluice_runtime::units::human_bytes;

use crate::registry::build_sinks;
use crate::Failure;

/// What went wrong, with the file's place when it is a bad file.
struct Problem {
    failure: Failure,
    located: Option<ConfigError>,
}

impl From<ConfigError> for Problem {
    fn from(e: ConfigError) -> Self {
        Problem {
            failure: Failure::Input(e.to_string()),
            located: Some(e),
        }
    }
}

impl From<Failure> for Problem {
    fn from(failure: Failure) -> Self {
        Problem {
            failure,
            located: None,
        }
    }
}

pub async fn run(path: &Path, connect: bool, as_json: bool) -> Result<(), Failure> {
    let mut lines = Vec::new();
    let result = check(path, connect, &mut lines).await;
    if !as_json {
        for line in &lines {
            println!("{line}");
        }
        return result.map_err(|p| p.failure);
    }
    let report = match &result {
        Ok(()) => json!({ "file": path, "valid": true, "checked": lines }),
        Err(p) => {
            let (kind, message) = match &p.failure {
                Failure::Input(m) => ("input", m),
                Failure::Runtime(m) => ("runtime", m),
            };
            let mut error = json!({ "kind": kind, "message": message });
            if let Some(e) = &p.located {
                error["file"] = json!(e.file);
                error["line"] = json!(e.line);
                error["column"] = json!(e.column);
                error["key"] = json!(e.key);
                error["message"] = json!(e.message);
            }
            json!({ "file": path, "valid": false, "checked": lines, "error": error })
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    // The JSON said it all; the exit status still tells a script what happened.
    result.map_err(|p| match p.failure {
        Failure::Input(_) => Failure::Input(String::new()),
        Failure::Runtime(_) => Failure::Runtime(String::new()),
    })
}

async fn check(path: &Path, connect: bool, lines: &mut Vec<String>) -> Result<(), Problem> {
    let pipeline = sluice_runtime::config::load(path, &crate::registry::REGISTRY)?;
    let connector = crate::registry::REGISTRY.build_source(&pipeline.source)?;
    // Loading each transform checks its file, its world version and its init(config).
    let host = crate::stages::host_for(&pipeline).map_err(Failure::Runtime)?;
    let mut sinks = build_sinks(&pipeline, host.as_ref())?;
    if let Some(host) = &host {
        crate::stages::load_chain(host, &pipeline, "transforms", &pipeline.transforms)?;
    }
    lines.push(format!(
        "{}: pipeline {} is valid: {}, {} sink(s) ({})",
        path.display(),
        pipeline.name,
        connector.summary(),
        sinks.len(),
        pipeline
            .sinks
            .iter()
            .map(|s| format!("{}: {}", s.name, s.kind))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if !connect {
        return Ok(());
    }
    lines.extend(
        connector
            .check()
            .await
            .map_err(|e| Failure::Runtime(e.to_string()))?,
    );
    lines.push(check_state(&pipeline).map_err(Failure::Runtime)?);
    let held = connector
        .held_log_limit()
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    lines.push(check_journal(&pipeline, held).map_err(Failure::Runtime)?);
    if let Some(addr) = pipeline.admin {
        lines.push(check_admin(addr).await.map_err(Failure::Runtime)?);
    }
    for spec in &mut sinks {
        spec.sink
            .check()
            .await
            .map_err(|e| Failure::Runtime(format!("sink {}: {e}", spec.name)))?;
        lines.push(format!("sink {}: ok", spec.name));
    }
    Ok(())
}

/// The state file can be opened for writing, or created: its nearest existing folder is
/// writable. Creates nothing.
fn check_state(pipeline: &Pipeline) -> Result<String, String> {
    let state = &pipeline.state;
    let says = |e: std::io::Error, what: &Path| {
        format!(
            "state: {} cannot be written ({e}); `run` keeps offsets and dead letters there. \
             Set `state:` to a writable path",
            what.display()
        )
    };
    if state.exists() {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(state)
            .map_err(|e| says(e, state))?;
        return Ok(format!("state: {} is writable", state.display()));
    }
    let dir = writable_ancestor(state).map_err(|(e, dir)| says(e, &dir))?;
    Ok(format!(
        "state: {} can be created (in {})",
        state.display(),
        dir.display()
    ))
}

/// The nearest existing folder of `path` (itself included), after a probe file was
/// written there and removed.
fn writable_ancestor(path: &Path) -> Result<PathBuf, (std::io::Error, PathBuf)> {
    let mut dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    while !dir.as_os_str().is_empty() && !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("."));
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let probe = dir.join(format!(".sluice-validate-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| (e, dir.to_path_buf()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(dir.to_path_buf())
}

/// A disk journal's folder can be written, and what happens when it fills: the source
/// pauses and the upstream keeps its log for sluice, up to its limit (`held`).
fn check_journal(
    pipeline: &Pipeline,
    held: Option<(String, Option<u64>)>,
) -> Result<String, String> {
    let journal = &pipeline.journal;
    if journal.kind == JournalKind::Memory {
        return Ok(
            "journal: in memory; the source confirms upstream only what every sink has \
                   finished (with Postgres, a sink that is down holds WAL on the server)"
                .into(),
        );
    }
    let dir = writable_ancestor(&journal.path).map_err(|(e, dir)| {
        format!(
            "journal: {} cannot be written ({e}); the slot confirms what is journaled there. \
             Set `journal.path` to a writable folder on durable storage",
            dir.display()
        )
    })?;
    let budget = human_bytes(journal.max_bytes as i64);
    let place = if journal.path.is_dir() {
        "is writable".to_string()
    } else {
        format!("can be created (in {})", dir.display())
    };
    let mut line = format!(
        "journal: {} {place}; a sink may fall {budget} behind (journal.max_bytes) before the \
         source pauses",
        journal.path.display(),
    );
    match held {
        Some((setting, Some(limit))) => line.push_str(&format!(
            "; then the server keeps at most {} of WAL ({setting}) before it invalidates the \
             slot, and the pipeline must be rebuilt. Keep an eye on `sluice_journal_full`",
            human_bytes(limit as i64)
        )),
        Some((setting, None)) => line.push_str(&format!(
            "; then the server keeps WAL without limit ({setting} = -1): its disk fills while \
             the journal is full. Watch `sluice_journal_full`, or set {setting}"
        )),
        None => {}
    }
    Ok(line)
}

/// The admin address is free to listen on.
async fn check_admin(addr: SocketAddr) -> Result<String, String> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(_) => Ok(format!("admin: {addr} is free")),
        Err(e) => Err(format!(
            "admin: cannot listen on {addr} ({e}); is another pipeline (or another program) \
             using it? Change `admin:`"
        )),
    }
}
