//! Logs go to stderr through `tracing`: `SLUICE_LOG` sets the filter (default `info`),
//! `SLUICE_LOG_FORMAT=json` switches to one JSON object per line with the event's fields at
//! the top level.
//!
//! A bare level (`SLUICE_LOG=debug`) applies to sluice's own crates and leaves the libraries
//! at `info`, so it shows sluice's detail rather than every HTTP frame; `target=level`
//! directives are taken as written, with `info` for everything else unless a bare level is
//! given too. A filter that does not parse is an error at start: a typo must never silence
//! the logs.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

/// Levels `tracing` knows, as written in a filter.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Whether logs are JSON lines (so the fatal error is one too).
static JSON: AtomicBool = AtomicBool::new(false);

/// Install the subscriber. An unusable `SLUICE_LOG` or `SLUICE_LOG_FORMAT` is an error.
pub fn init() -> Result<(), String> {
    let given = std::env::var("SLUICE_LOG").unwrap_or_default();
    let filter = EnvFilter::builder()
        .parse(directives(&given)?)
        .map_err(|e| format!("SLUICE_LOG=`{given}` does not parse: {e}"))?;
    let json = match std::env::var("SLUICE_LOG_FORMAT").as_deref() {
        Err(_) | Ok("") | Ok("text") => false,
        Ok("json") => true,
        Ok(other) => {
            return Err(format!(
                "SLUICE_LOG_FORMAT=`{other}` is not a log format; use `text` or `json`"
            ))
        }
    };
    JSON.store(json, Ordering::Relaxed);
    // Colours only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    Ok(())
}

/// The filter to install for what the user wrote (see the module's documentation).
fn directives(given: &str) -> Result<String, String> {
    let given = given.trim();
    if given.is_empty() {
        return Ok("info".into());
    }
    let mut out = Vec::new();
    let mut default = None;
    for directive in given.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level_ok = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
        match directive.rsplit_once('=') {
            // Span and field filters (`target[span{f=v}]=level`) are passed through.
            _ if directive.contains('[') => out.push(directive.to_string()),
            Some((target, level)) if level_ok(level) && !target.is_empty() => {
                out.push(directive.to_string())
            }
            Some((_, level)) => {
                return Err(format!(
                    "SLUICE_LOG: `{directive}`: `{level}` is not a level ({})",
                    LEVELS.join(", ")
                ))
            }
            None if level_ok(directive) => default = Some(directive.to_string()),
            None => {
                return Err(format!(
                    "SLUICE_LOG: `{directive}` is neither a level ({}) nor `target=level` \
                     (e.g. sluice_postgres=debug)",
                    LEVELS.join(", ")
                ))
            }
        }
    }
    // A bare level means sluice's own detail; libraries stay at info (or quieter).
    let mut all = vec![match &default {
        Some(level) if matches!(level.as_str(), "trace" | "debug") => "info".to_string(),
        Some(level) => level.clone(),
        None => "info".to_string(),
    }];
    if let Some(level) = default.filter(|l| matches!(l.as_str(), "trace" | "debug")) {
        all.push(format!("sluice={level}"));
    }
    all.extend(out);
    Ok(all.join(","))
}

/// The error that ends the process: a JSON line in JSON mode, else `error: …` on stderr.
pub fn fatal(message: &str) {
    if JSON.load(Ordering::Relaxed) {
        tracing::error!(fatal = true, "{message}");
    } else {
        eprintln!("error: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_is_sluices_detail_and_libraries_stay_at_info() {
        assert_eq!(directives("").unwrap(), "info");
        assert_eq!(directives("debug").unwrap(), "info,sluice=debug");
        assert_eq!(directives("warn").unwrap(), "warn");
        assert_eq!(
            directives("sluice_postgres=debug").unwrap(),
            "info,sluice_postgres=debug"
        );
        assert_eq!(
            directives("trace, hyper=debug").unwrap(),
            "info,sluice=trace,hyper=debug"
        );
    }

    #[test]
    fn a_filter_with_a_typo_is_refused_with_what_is_wrong() {
        let e = directives("verbose").unwrap_err();
        assert!(e.contains("`verbose` is neither a level"), "{e}");
        let e = directives("sluice=loud").unwrap_err();
        assert!(e.contains("`loud` is not a level"), "{e}");
        for ok in ["info", "sluice_runtime=trace,warn", "off"] {
            let d = directives(ok).unwrap();
            assert!(EnvFilter::builder().parse(&d).is_ok(), "{ok} → {d}");
        }
    }
}
