//! `sluice transform test`: run envelopes through a transform offline, the way a pipeline
//! would, and print what comes out.
//!
//! Input: one envelope per line (JSON Lines; blank lines are skipped), from `--input` or
//! stdin. Every line is parsed before anything runs, so a malformed line stops the command
//! (exit 2) naming its line number. Events go through the transform in batches, in line
//! order; each output event is printed on stdout as one envelope line, and each failed
//! event as `line N: <kind>: <message>` on stderr (kind: error, trap, timeout,
//! out_of_memory). Exit status: 0 when every event succeeded, 1 when any failed, 2 for
//! bad input (a malformed line, a bad flag, a file that is not a transformer, an `init`
//! that fails).

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_runtime::config::duration;
use sluice_runtime::{envelope, Event};
use sluice_wasm::{parse_size, TransformHost, TransformSpec};

use crate::Failure;

pub struct TestArgs {
    pub wasm: PathBuf,
    /// `key=value` pairs, in the order given (a repeated key: the last one wins).
    pub config: Vec<String>,
    /// `None` or `-`: stdin.
    pub input: Option<PathBuf>,
    pub timeout: String,
    pub memory: String,
    pub batch: usize,
}

pub fn test(args: TestArgs) -> Result<(), Failure> {
    let spec = spec(&args)?;
    let lines = read_input(args.input.as_deref())?;
    let events = parse(&lines)?;

    let cache = sluice_wasm::default_cache_dir();
    let host = TransformHost::new(&cache).map_err(|e| Failure::Runtime(e.to_string()))?;
    let mut transform = host
        .load(&spec)
        .map_err(|e| Failure::Input(e.to_string()))?;

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let write_failed = |e: std::io::Error| Failure::Runtime(format!("cannot write to stdout: {e}"));
    let mut failed = 0usize;
    for batch in events.chunks(args.batch.max(1)) {
        let inputs: Vec<Arc<Event>> = batch.iter().map(|(_, e)| e.clone()).collect();
        let results = transform.apply(&inputs);
        for ((line, _), result) in batch.iter().zip(results) {
            match result {
                Ok(mut outputs) => {
                    // The extra events of a fan-out are numbered, as sinks see them.
                    sluice_runtime::chain::number(&mut outputs);
                    for event in outputs {
                        out.write_all(event.json()).map_err(write_failed)?;
                        out.write_all(b"\n").map_err(write_failed)?;
                    }
                }
                Err(e) => {
                    failed += 1;
                    // Keep stdout and stderr in step for a reader watching both.
                    out.flush().map_err(write_failed)?;
                    eprintln!("line {line}: {e}");
                }
            }
        }
    }
    out.flush().map_err(write_failed)?;
    if failed > 0 {
        return Err(Failure::Runtime(format!(
            "{failed} of {} events failed in transform `{}`",
            events.len(),
            spec.name
        )));
    }
    Ok(())
}

fn spec(args: &TestArgs) -> Result<TransformSpec, Failure> {
    let mut config = BTreeMap::new();
    for pair in &args.config {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                config.insert(k.trim().to_string(), v.to_string());
            }
            _ => {
                return Err(Failure::Input(format!(
                    "--config `{pair}`: expected KEY=VALUE, e.g. --config fields=email,phone"
                )))
            }
        }
    }
    let timeout: Duration =
        duration::parse(&args.timeout).map_err(|e| Failure::Input(format!("--timeout: {e}")))?;
    if timeout.is_zero() {
        return Err(Failure::Input("--timeout: must be more than 0".into()));
    }
    let memory = parse_size(&args.memory).map_err(|e| Failure::Input(format!("--memory: {e}")))?;
    let name = args
        .wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "transform".into());
    Ok(TransformSpec {
        name,
        wasm: args.wasm.clone(),
        config,
        timeout,
        memory,
    })
}

fn read_input(input: Option<&Path>) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    match input {
        None => std::io::stdin().read_to_end(&mut bytes).map(drop),
        Some(p) if p == Path::new("-") => std::io::stdin().read_to_end(&mut bytes).map(drop),
        Some(p) => std::fs::read(p).map(|b| bytes = b),
    }
    .map_err(|e| {
        let what = match input {
            Some(p) if p != Path::new("-") => format!("`{}`", p.display()),
            _ => "stdin".into(),
        };
        Failure::Input(format!("cannot read {what}: {e}"))
    })?;
    Ok(bytes)
}

/// Every non-blank line as an event, with its line number (from 1).
fn parse(input: &[u8]) -> Result<Vec<(usize, Arc<Event>)>, Failure> {
    let mut events = Vec::new();
    for (i, line) in input.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let event = envelope::parse(line)
            .map_err(|e| Failure::Input(format!("line {}: not an envelope: {e}", i + 1)))?;
        events.push((i + 1, Arc::new(event)));
    }
    Ok(events)
}
