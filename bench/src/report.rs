//! The one table the benchmark prints (Markdown, so it pastes into BENCHMARKS.md).

use std::fmt::Write as _;
use std::time::Duration;

/// One measured run.
#[derive(Default)]
pub struct Row {
    pub workload: String,
    pub consumer: String,
    pub events: u64,
    /// From spawn until everything was consumed, nothing subtracted (once runs are
    /// combined: their median).
    pub seconds: Option<f64>,
    /// Of which: from spawn until the replication stream was open (sluice only).
    pub startup: Option<f64>,
    /// events/s of the workload's reference (`pg_recvlogical`; `psql COPY` for the
    /// backfill) on the same workload.
    pub reference: Option<f64>,
    /// Commit→sink latency percentiles, milliseconds (latency runs only).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rss_mb: Option<f64>,
    /// sluice's own CPU time (user + system) per event, µs (once runs are combined: the
    /// median). Steadier than the rate when the walsender sets the pace.
    pub cpu_us: Option<f64>,
    /// CPU that other work on the machine used during the run, in % of one core (once
    /// runs are combined: the highest). A few % is background noise; more skews the row.
    pub other_cpu: Option<f64>,
    /// How many runs the row sums up, and how far apart their rates were:
    /// (max − min) / median, in percent.
    pub runs: usize,
    pub spread: Option<f64>,
    /// Why the row has no figures, or what else to know.
    pub note: String,
}

impl Row {
    pub fn rate(&self) -> Option<f64> {
        self.seconds
            .filter(|s| *s > 0.0)
            .map(|s| self.events as f64 / s)
    }
}

/// Other work above this (% of a core) during a run makes the run "disturbed".
pub const DISTURBED: f64 = 25.0;

/// Several runs of one consumer on one workload as one row: the median time (and
/// startup) of the undisturbed runs (of all when none was), the highest peak RSS, the
/// spread of the rates, every distinct note.
pub fn combine(runs: Vec<Row>) -> Row {
    let mut ok: Vec<&Row> = runs.iter().filter(|r| r.seconds.is_some()).collect();
    let quiet = |r: &&Row| r.other_cpu.is_none_or(|c| c <= DISTURBED);
    let disturbed = ok.iter().filter(|r| !quiet(r)).count();
    if disturbed < ok.len() {
        ok.retain(quiet);
    }
    ok.sort_by(|a, b| a.seconds.partial_cmp(&b.seconds).expect("no NaN seconds"));
    let median = |v: &[&Row], f: fn(&Row) -> Option<f64>| -> Option<f64> {
        let mut xs: Vec<f64> = v.iter().filter_map(|r| f(r)).collect();
        xs.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        match xs.len() {
            0 => None,
            n if n % 2 == 1 => Some(xs[n / 2]),
            n => Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0),
        }
    };
    let first = &runs[0];
    let mut row = Row {
        workload: first.workload.clone(),
        consumer: first.consumer.clone(),
        events: first.events,
        seconds: median(&ok, |r| r.seconds),
        startup: median(&ok, |r| r.startup),
        reference: first.reference,
        p50_ms: first.p50_ms,
        p99_ms: first.p99_ms,
        rss_mb: runs.iter().filter_map(|r| r.rss_mb).reduce(f64::max),
        cpu_us: median(&ok, |r| r.cpu_us),
        other_cpu: ok.iter().filter_map(|r| r.other_cpu).reduce(f64::max),
        runs: runs.len(),
        spread: None,
        note: String::new(),
    };
    let rates: Vec<f64> = ok.iter().filter_map(|r| r.rate()).collect();
    if let (Some(rate), true) = (row.rate(), rates.len() > 1) {
        let (lo, hi) = rates
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        row.spread = Some((hi - lo) / rate * 100.0);
    }
    let mut notes: Vec<&str> = Vec::new();
    for r in &runs {
        if !r.note.is_empty() && !notes.contains(&r.note.as_str()) {
            notes.push(&r.note);
        }
    }
    let failed = runs.iter().filter(|r| r.seconds.is_none()).count();
    if failed > 0 {
        row.note = format!("{failed} of {} runs failed: ", runs.len());
    }
    row.note.push_str(&notes.join("; "));
    if disturbed > 0 {
        let used = if ok.len() + failed < runs.len() {
            "left out"
        } else {
            "all kept: no quiet run"
        };
        let sep = if row.note.is_empty() { "" } else { "; " };
        row.note.push_str(&format!(
            "{sep}{disturbed} of {} runs disturbed by other work (> {DISTURBED}% of a core), {used}",
            runs.len()
        ));
    }
    row
}

/// The value at percentile `p` (0–100) of sorted `values`, nearest rank.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

const HEADERS: [&str; 14] = [
    "workload",
    "consumer",
    "runs",
    "events",
    "seconds",
    "startup s",
    "events/s",
    "spread %",
    "× reference",
    "p50 ms",
    "p99 ms",
    "peak RSS MB",
    "CPU µs/event",
    "other CPU %",
];

/// The table, columns aligned, with each row's note under the table.
pub fn table(rows: &[Row]) -> String {
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("–".to_string(), |v| format!("{v:.digits$}"));
    let cells: Vec<[String; 14]> = rows
        .iter()
        .map(|r| {
            let rate = r.rate();
            let ratio = match (rate, r.reference) {
                (Some(rate), Some(reference)) if reference > 0.0 => {
                    format!("{:.2}", rate / reference)
                }
                _ => "–".into(),
            };
            [
                r.workload.clone(),
                if r.note.is_empty() {
                    r.consumer.clone()
                } else {
                    format!("{} ¹", r.consumer)
                },
                r.runs.max(1).to_string(),
                r.events.to_string(),
                opt(r.seconds, 2),
                opt(r.startup, 2),
                rate.map_or("–".into(), |v| format!("{v:.0}")),
                opt(r.spread, 0),
                ratio,
                opt(r.p50_ms, 1),
                opt(r.p99_ms, 1),
                opt(r.rss_mb, 1),
                opt(r.cpu_us, 2),
                opt(r.other_cpu, 0),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut s = String::from("|");
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            let pad = w - c.chars().count();
            // Text left, numbers right.
            if i < 2 {
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            } else {
                let _ = write!(s, " {}{c} |", " ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&HEADERS.map(String::from));
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        let dashes = "-".repeat(*w);
        if i < 2 {
            let _ = write!(out, "-{dashes}-|");
        } else {
            let _ = write!(out, "-{dashes}:|");
        }
    }
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
    }
    let notes: Vec<String> = rows
        .iter()
        .filter(|r| !r.note.is_empty())
        .map(|r| format!("¹ {} / {}: {}", r.workload, r.consumer, r.note))
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn runs_combine_into_their_median() {
        let run = |seconds: f64, rss: f64| Row {
            workload: "w".into(),
            consumer: "c".into(),
            events: 100,
            seconds: Some(seconds),
            rss_mb: Some(rss),
            ..Row::default()
        };
        let failed = Row {
            note: "boom".into(),
            ..run(0.0, 5.0)
        };
        let failed = Row {
            seconds: None,
            ..failed
        };
        let row = combine(vec![run(2.0, 10.0), run(1.0, 12.0), run(4.0, 11.0), failed]);
        assert_eq!(row.seconds, Some(2.0));
        assert_eq!(row.rss_mb, Some(12.0));
        assert_eq!(row.runs, 4);
        // rates 100, 50, 25 around a median of 50
        assert_eq!(row.spread, Some(150.0));
        assert_eq!(row.note, "1 of 4 runs failed: boom");

        let busy = Row {
            other_cpu: Some(90.0),
            ..run(10.0, 1.0)
        };
        let row = combine(vec![busy, run(1.0, 1.0), run(3.0, 1.0)]);
        assert_eq!(row.seconds, Some(2.0), "the disturbed run is left out");
        assert!(row.note.contains("1 of 3 runs disturbed"), "{}", row.note);
    }

    #[test]
    fn the_table_has_a_ratio_and_notes() {
        let rows = [
            Row {
                workload: "w".into(),
                consumer: "pg_recvlogical".into(),
                events: 100,
                seconds: Some(1.0),
                reference: Some(100.0),
                ..Row::default()
            },
            Row {
                workload: "w".into(),
                consumer: "sluice → x".into(),
                events: 100,
                seconds: Some(2.0),
                reference: Some(100.0),
                note: "slow".into(),
                ..Row::default()
            },
        ];
        let t = table(&rows);
        assert!(t.contains(" 0.50 |"), "{t}");
        assert!(t.contains("|        50 |") || t.contains(" 50 |"), "{t}");
        assert!(t.contains("¹ w / sluice → x: slow"), "{t}");
    }
}
