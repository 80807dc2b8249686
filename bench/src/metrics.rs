//! Percentiles from a histogram in sluice's `/metrics` (Prometheus text format).
//!
//! sluice's `sluice_sink_latency_seconds` times each event from its commit to the sink's
//! acknowledgement (for the brokers: the delivery report or the publisher confirm), in
//! fixed buckets. Two scrapes, before and after a measured phase, give that phase's
//! histogram ([`Buckets::since`]). A percentile is estimated as Prometheus'
//! `histogram_quantile` does: linearly inside the bucket that holds it, so it is only as
//! fine as the bucket bounds, which the estimate carries along.
//!
//! Buckets must be cumulative with the `+Inf` bucket equal to `_count`. A histogram whose
//! buckets were accumulated twice (each one the sum of the cumulative counts below it, as
//! an encoder that accumulates is handed counts that already are) is recognised by
//! `_count`, read as what it means, and flagged ([`Buckets::double_accumulated`]), so the
//! report can say so.

use anyhow::{bail, Context, Result};

/// The cumulative buckets of one series: (upper bound in seconds, events at or below it),
/// ascending, ending with +Inf.
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets {
    cumulative: Vec<(f64, u64)>,
    /// The exposition's buckets were accumulated twice, and are read back here.
    pub double_accumulated: bool,
}

/// A percentile estimated from [`Buckets`], in milliseconds, with the bounds of the bucket
/// it fell in.
#[derive(Debug, PartialEq)]
pub struct Estimate {
    pub ms: f64,
    pub bucket_ms: (f64, f64),
}

impl Buckets {
    /// The buckets of `metric` (e.g. `sluice_sink_latency_seconds`) for the series labelled
    /// `sink="<sink>"` in the exposition `text`, checked against its `_count`.
    pub fn parse(text: &str, metric: &str, sink: &str) -> Result<Buckets> {
        let label = format!("sink=\"{sink}\"");
        let mut buckets = Vec::new();
        let mut count = None;
        for line in text.lines() {
            let Some((name, rest)) = line.split_once('{') else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            if !labels.split(',').any(|l| l == label) {
                continue;
            }
            let number = |v: &str| -> Result<u64> {
                let v: f64 = v
                    .trim()
                    .parse()
                    .with_context(|| format!("a count in `{line}`"))?;
                Ok(v as u64)
            };
            if name == format!("{metric}_count") {
                count = Some(number(value)?);
            } else if name == format!("{metric}_bucket") {
                let le = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("le=\""))
                    .and_then(|l| l.strip_suffix('"'))
                    .with_context(|| format!("a bucket without `le`: {line}"))?;
                let bound = match le {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().with_context(|| format!("bucket bound `{le}`"))?,
                };
                buckets.push((bound, number(value)?));
            }
        }
        if buckets.is_empty() {
            bail!("/metrics has no {metric} for sink {sink}");
        }
        let count = count.with_context(|| format!("/metrics has no {metric}_count for {sink}"))?;
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets::checked(buckets, count)
    }

    /// `buckets` as exposed, against `count`: cumulative, or accumulated twice.
    fn checked(buckets: Vec<(f64, u64)>, count: u64) -> Result<Buckets> {
        let ascending = |b: &[(f64, u64)]| b.windows(2).all(|w| w[0].1 <= w[1].1);
        let last = buckets.last().map_or(0, |(_, n)| *n);
        if last == count && ascending(&buckets) {
            return Ok(Buckets {
                cumulative: buckets,
                double_accumulated: false,
            });
        }
        let mut below = 0;
        let once: Vec<(f64, u64)> = buckets
            .iter()
            .map(|&(bound, n)| {
                let c = n.saturating_sub(below);
                below = n;
                (bound, c)
            })
            .collect();
        if once.last().map(|(_, n)| *n) == Some(count) && ascending(&once) {
            return Ok(Buckets {
                cumulative: once,
                double_accumulated: true,
            });
        }
        bail!("the histogram's buckets {buckets:?} do not add up to its count {count}")
    }

    /// What was observed after `earlier` (a scrape of the same series before this one).
    pub fn since(&self, earlier: &Buckets) -> Result<Buckets> {
        let bounds = |b: &Buckets| {
            b.cumulative
                .iter()
                .map(|(bound, _)| *bound)
                .collect::<Vec<_>>()
        };
        if bounds(self) != bounds(earlier) {
            bail!("the two scrapes have different buckets");
        }
        let cumulative = self
            .cumulative
            .iter()
            .zip(&earlier.cumulative)
            .map(|(&(bound, n), &(_, before))| (bound, n.saturating_sub(before)))
            .collect();
        Ok(Buckets {
            cumulative,
            double_accumulated: self.double_accumulated || earlier.double_accumulated,
        })
    }

    /// Both histograms' events together (another run's scrape of the same buckets).
    pub fn plus(&self, other: &Buckets) -> Result<Buckets> {
        let bounds = |b: &Buckets| {
            b.cumulative
                .iter()
                .map(|(bound, _)| *bound)
                .collect::<Vec<_>>()
        };
        if bounds(self) != bounds(other) {
            bail!("the two histograms have different buckets");
        }
        let cumulative = self
            .cumulative
            .iter()
            .zip(&other.cumulative)
            .map(|(&(bound, a), &(_, b))| (bound, a + b))
            .collect();
        Ok(Buckets {
            cumulative,
            double_accumulated: self.double_accumulated || other.double_accumulated,
        })
    }

    /// Events counted.
    pub fn count(&self) -> u64 {
        self.cumulative.last().map_or(0, |(_, n)| *n)
    }

    /// Percentile `p` (0–100): linear inside its bucket (the first bucket starts at 0); in
    /// the +Inf bucket, the highest finite bound. `None` without events.
    pub fn percentile(&self, p: f64) -> Option<Estimate> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = p / 100.0 * total as f64;
        let mut below = (0.0, 0u64);
        for &(bound, count) in &self.cumulative {
            if count as f64 >= rank && count > below.1 {
                if bound.is_infinite() {
                    return Some(Estimate {
                        ms: below.0 * 1000.0,
                        bucket_ms: (below.0 * 1000.0, f64::INFINITY),
                    });
                }
                let inside = (rank - below.1 as f64) / (count - below.1) as f64;
                return Some(Estimate {
                    ms: (below.0 + (bound - below.0) * inside) * 1000.0,
                    bucket_ms: (below.0 * 1000.0, bound * 1000.0),
                });
            }
            below = (bound, count);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRIC: &str = "sluice_sink_latency_seconds";

    const TEXT: &str = "\
# HELP sluice_sink_latency_seconds Seconds from an event's commit to its delivery.
# TYPE sluice_sink_latency_seconds histogram
sluice_sink_latency_seconds_sum{sink=\"other\"} 1.0
sluice_sink_latency_seconds_count{sink=\"other\"} 10
sluice_sink_latency_seconds_bucket{sink=\"other\",le=\"0.01\"} 10
sluice_sink_latency_seconds_bucket{sink=\"other\",le=\"+Inf\"} 10
sluice_sink_latency_seconds_sum{sink=\"kafka\"} 1.5
sluice_sink_latency_seconds_count{sink=\"kafka\"} 100
sluice_sink_latency_seconds_bucket{sink=\"kafka\",le=\"0.005\"} 0
sluice_sink_latency_seconds_bucket{sink=\"kafka\",le=\"0.01\"} 50
sluice_sink_latency_seconds_bucket{sink=\"kafka\",le=\"0.025\"} 90
sluice_sink_latency_seconds_bucket{sink=\"kafka\",le=\"0.05\"} 100
sluice_sink_latency_seconds_bucket{sink=\"kafka\",le=\"+Inf\"} 100
";

    #[test]
    fn percentiles_are_interpolated_inside_their_bucket() {
        let b = Buckets::parse(TEXT, METRIC, "kafka").unwrap();
        assert!(!b.double_accumulated);
        assert_eq!(b.count(), 100);
        let p50 = b.percentile(50.0).unwrap();
        assert!((p50.ms - 10.0).abs() < 1e-9, "{p50:?}");
        assert_eq!(p50.bucket_ms, (5.0, 10.0));
        let p99 = b.percentile(99.0).unwrap();
        // 9 of the bucket's 10 events: 25 + 0.9 × 25 ms
        assert!((p99.ms - 47.5).abs() < 1e-9, "{p99:?}");
        assert_eq!(p99.bucket_ms, (25.0, 50.0));
        let p25 = b.percentile(25.0).unwrap();
        assert!((p25.ms - 7.5).abs() < 1e-9, "{p25:?}");
    }

    #[test]
    fn the_open_bucket_gives_its_lower_bound() {
        let text = "m_count{sink=\"s\"} 4\nm_bucket{sink=\"s\",le=\"0.1\"} 1\nm_bucket{sink=\"s\",le=\"+Inf\"} 4\n";
        let b = Buckets::parse(text, "m", "s").unwrap();
        let p99 = b.percentile(99.0).unwrap();
        assert_eq!(p99.ms, 100.0);
        assert_eq!(p99.bucket_ms, (100.0, f64::INFINITY));
    }

    #[test]
    fn buckets_accumulated_twice_are_read_back_and_flagged() {
        // Cumulative 0, 50, 90, 100, 100 exposed accumulated once more.
        let text = "\
sluice_sink_latency_seconds_count{sink=\"kafka\"} 100
sluice_sink_latency_seconds_bucket{sink=\"kafka\",le=\"0.005\"} 0
sluice_sink_latency_seconds_bucket{sink=\"kafka\",le=\"0.01\"} 50
sluice_sink_latency_seconds_bucket{sink=\"kafka\",le=\"0.025\"} 140
sluice_sink_latency_seconds_bucket{sink=\"kafka\",le=\"0.05\"} 240
sluice_sink_latency_seconds_bucket{sink=\"kafka\",le=\"+Inf\"} 340
";
        let twice = Buckets::parse(text, METRIC, "kafka").unwrap();
        assert!(twice.double_accumulated, "{twice:?}");
        let once = Buckets::parse(TEXT, METRIC, "kafka").unwrap();
        assert_eq!(twice.cumulative, once.cumulative);
    }

    #[test]
    fn buckets_that_do_not_add_up_are_an_error() {
        let text = "m_count{sink=\"s\"} 9\nm_bucket{sink=\"s\",le=\"0.1\"} 1\nm_bucket{sink=\"s\",le=\"+Inf\"} 4\n";
        assert!(Buckets::parse(text, "m", "s").is_err());
    }

    #[test]
    fn a_phase_is_the_difference_of_two_scrapes() {
        let scrape = |a, b, inf| {
            format!("m_count{{sink=\"s\"}} {inf}\nm_bucket{{sink=\"s\",le=\"0.01\"}} {a}\nm_bucket{{sink=\"s\",le=\"0.1\"}} {b}\nm_bucket{{sink=\"s\",le=\"+Inf\"}} {inf}\n")
        };
        let before = Buckets::parse(&scrape(5, 10, 10), "m", "s").unwrap();
        let after = Buckets::parse(&scrape(105, 200, 210), "m", "s").unwrap();
        let phase = after.since(&before).unwrap();
        assert_eq!(phase.count(), 200);
        assert_eq!(
            phase.cumulative,
            vec![(0.01, 100), (0.1, 190), (f64::INFINITY, 200)]
        );
    }

    #[test]
    fn a_missing_series_is_an_error_and_an_empty_one_has_no_percentile() {
        assert!(Buckets::parse(TEXT, METRIC, "rabbitmq").is_err());
        let text = "m_count{sink=\"s\"} 0\nm_bucket{sink=\"s\",le=\"0.1\"} 0\nm_bucket{sink=\"s\",le=\"+Inf\"} 0\n";
        let b = Buckets::parse(text, "m", "s").unwrap();
        assert_eq!(b.percentile(99.0), None);
    }
}
