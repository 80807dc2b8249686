//! How much CPU *other* work took while a run was timed. On a 2-core machine a compiler
//! or a test suite running beside the benchmark skews every figure; the table reports it
//! per row so a skewed row is visible rather than trusted.
//!
//! "Ours" is this process and the PostgreSQL postmaster, with their children: the live
//! ones from `/proc/<pid>/stat`, the exited ones through the parents' `cutime`/`cstime`
//! (sluice and `pg_recvlogical` are reaped by this process, walsenders by the
//! postmaster). Everything else the machine was busy with is "other".

use std::path::Path;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc` times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

pub struct Sample {
    at: Instant,
    busy: u64,
    ours: u64,
}

/// Busy ticks of the whole machine: every column of the `cpu` line of `/proc/stat` but
/// idle and iowait.
fn machine_busy() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user)
    Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
}

/// The CPU time (user + system) process `pid` has used so far.
pub fn process_seconds(pid: u32) -> Option<f64> {
    stat(pid).map(|(_, own, _)| own as f64 / TICKS)
}

/// (ppid, own ticks, reaped children's ticks) of a process.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
    // rest[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    Some((n(1)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// Ticks of `roots` and their live children, plus what their exited children used.
fn ours(roots: &[u32]) -> u64 {
    let mut total = 0;
    for root in roots {
        if let Some((_, own, reaped)) = stat(*root) {
            total += own + reaped;
        }
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, own, reaped)) = stat(pid) {
            if roots.contains(&ppid) {
                total += own + reaped;
            }
        }
    }
    total
}

/// The postmaster's pid, from the first line of `postmaster.pid` in the data directory.
pub fn postmaster(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

pub fn sample(roots: &[u32]) -> Sample {
    Sample {
        at: Instant::now(),
        busy: machine_busy().unwrap_or(0),
        ours: ours(roots),
    }
}

/// CPU used by other work between two samples, in percent of one core.
pub fn other_percent(start: &Sample, end: &Sample) -> f64 {
    let secs = end.at.duration_since(start.at).as_secs_f64().max(1e-3);
    let busy = end.busy.saturating_sub(start.busy) as f64;
    let ours = end.ours.saturating_sub(start.ours) as f64;
    ((busy - ours) / TICKS / secs * 100.0).max(0.0)
}

/// Wait until other work has used less than `max_percent` of a core over a whole second,
/// at most `patience`; returns how long it waited and whether the machine got quiet.
pub async fn wait_quiet(roots: &[u32], max_percent: f64, patience: Duration) -> (Duration, bool) {
    let started = Instant::now();
    loop {
        let a = sample(roots);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if other_percent(&a, &sample(roots)) < max_percent {
            return (started.elapsed(), true);
        }
        if started.elapsed() >= patience {
            return (started.elapsed(), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_its_own_stat() {
        let (ppid, _, _) = stat(std::process::id()).unwrap();
        assert!(ppid > 0);
        assert!(machine_busy().unwrap() > 0);
        let a = sample(&[std::process::id()]);
        // Burn a little CPU: it is ours, so "other" stays near zero on a quiet machine.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let b = sample(&[std::process::id()]);
        assert!(other_percent(&a, &b) >= 0.0);
    }
}
