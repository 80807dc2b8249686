//! Metrics, in one place: what the engine counts, and how `/metrics` renders it.
//!
//! The hot path only touches atomics (counters, lock-free [`Histogram`]s) that live beside
//! what they describe (a sink's [`crate::progress::SinkCounters`], a transform's
//! [`StageStats`]). A scrape reads them all through one [`Collector`] and renders the
//! Prometheus text format with `prometheus-client`. Names follow `sluice_<noun>_<unit>`,
//! with a `sink` label on everything per sink; counters end in `_total`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::event::Op;

/// Commit → delivery, in seconds: from a millisecond to five minutes.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A transform's time per batch, in seconds: from 10 µs to a second.
pub const DURATION_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];

/// A histogram with fixed bounds that observes without a lock.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound (`le`), then one for +Inf; not cumulative.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Record one value, in seconds (negative values count as 0).
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        let i = self.bounds.partition_point(|b| *b < seconds);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add((seconds * 1e9) as u64, Relaxed);
    }

    /// (sum in seconds, count, each bucket's own count) for the encoder, which makes
    /// them cumulative itself (prometheus-client's `encode_histogram`).
    fn snapshot(&self) -> Snapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Relaxed);
            total += n;
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        (self.sum_nanos.load(Relaxed) as f64 / 1e9, total, buckets)
    }
}

/// The ops an event can have, in the order of [`op_index`].
pub const OPS: [Op; 6] = [
    Op::Insert,
    Op::Update,
    Op::Delete,
    Op::Truncate,
    Op::Event,
    Op::Read,
];

/// Where an op is counted in a per-op array.
pub fn op_index(op: Op) -> usize {
    OPS.iter()
        .position(|o| *o == op)
        .expect("every op is listed")
}

/// What a transform stage did: its time per batch and the events it was given.
#[derive(Debug)]
pub struct StageStats {
    pub name: String,
    pub batch_seconds: Histogram,
    pub events: AtomicU64,
}

impl StageStats {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(StageStats {
            name: name.to_string(),
            batch_seconds: Histogram::new(DURATION_BUCKETS),
            events: AtomicU64::new(0),
        })
    }
}

/// One metric family as it is encoded: a name, help, type and its series.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

/// The values of a family's series, each with its labels.
pub enum Kind {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, f64)>),
    Histogram(Vec<(Labels, Arc<dyn HistogramSource>)>),
    Info(Labels),
}

/// Label pairs of one series.
pub type Labels = Vec<(String, String)>;

/// Anything that holds a [`Histogram`].
pub trait HistogramSource: Send + Sync + std::fmt::Debug {
    fn histogram(&self) -> &Histogram;
}

impl HistogramSource for StageStats {
    fn histogram(&self) -> &Histogram {
        &self.batch_seconds
    }
}

/// `[("sink", name)]`.
pub fn sink_label(name: &str) -> Labels {
    vec![("sink".into(), name.to_string())]
}

/// The families of one scrape, encoded by `prometheus-client`.
#[derive(Debug)]
struct Scrape(Vec<FamilyData>);

#[derive(Debug)]
struct FamilyData {
    name: &'static str,
    help: &'static str,
    kind: KindData,
}

#[derive(Debug)]
enum KindData {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, f64)>),
    Histogram(Vec<(Labels, Snapshot)>),
    Info(Labels),
}

/// A histogram as read at a scrape: sum, count, cumulative buckets.
type Snapshot = (f64, u64, Vec<(f64, u64)>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let kind = match &f.kind {
                KindData::Counter(_) => MetricType::Counter,
                KindData::Gauge(_) => MetricType::Gauge,
                KindData::Histogram(_) => MetricType::Histogram,
                KindData::Info(_) => MetricType::Info,
            };
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            match &f.kind {
                KindData::Counter(series) => {
                    for (labels, v) in series {
                        metric
                            .encode_family(labels)?
                            .encode_counter::<Labels, u64, f64>(v, None)?;
                    }
                }
                KindData::Gauge(series) => {
                    for (labels, v) in series {
                        metric.encode_family(labels)?.encode_gauge(v)?;
                    }
                }
                KindData::Histogram(series) => {
                    for (labels, (sum, count, buckets)) in series {
                        metric
                            .encode_family(labels)?
                            .encode_histogram::<Labels>(*sum, *count, buckets, None)?;
                    }
                }
                KindData::Info(labels) => metric.encode_info(labels)?,
            }
        }
        Ok(())
    }
}

/// Render families (plus this process's own metrics and the build's) in the Prometheus
/// text format, every name prefixed with `sluice_`.
pub fn render(families: Vec<Family>) -> String {
    let mut data: Vec<FamilyData> = families
        .into_iter()
        .map(|f| FamilyData {
            name: f.name,
            help: f.help,
            kind: match f.kind {
                Kind::Counter(s) => KindData::Counter(s),
                Kind::Gauge(s) => KindData::Gauge(s),
                Kind::Info(l) => KindData::Info(l),
                Kind::Histogram(s) => KindData::Histogram(
                    s.into_iter()
                        .map(|(labels, h)| (labels, h.histogram().snapshot()))
                        .collect(),
                ),
            },
        })
        .collect();
    data.push(FamilyData {
        name: "build",
        help: "The sluice build: its version.",
        kind: KindData::Info(vec![("version".into(), env!("CARGO_PKG_VERSION").into())]),
    });
    data.extend(process());
    let mut registry = Registry::with_prefix("sluice");
    registry.register_collector(Box::new(Scrape(data)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// This process, read from `/proc/self` (Linux): CPU time, memory, threads, open files,
/// start time. Missing files (another OS) leave the families out.
fn process() -> Vec<FamilyData> {
    let mut out = Vec::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    let gauge = |name, help, v: f64| FamilyData {
        name,
        help,
        kind: KindData::Gauge(vec![(Vec::new(), v)]),
    };
    if let Some(kb) = field("VmRSS:") {
        out.push(gauge(
            "process_resident_memory_bytes",
            "Resident memory of the process.",
            kb * 1024.0,
        ));
    }
    if let Some(kb) = field("VmSize:") {
        out.push(gauge(
            "process_virtual_memory_bytes",
            "Virtual memory of the process.",
            kb * 1024.0,
        ));
    }
    if let Some(n) = field("Threads:") {
        out.push(gauge("process_threads", "Threads of the process.", n));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push(gauge(
            "process_open_fds",
            "Open file descriptors.",
            fds.count() as f64,
        ));
    }
    // Fields after the command name (which may hold spaces) of /proc/self/stat.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // USER_HZ is 100 on Linux's mainstream architectures.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|t| t / 100.0)
    };
    if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
        out.push(FamilyData {
            name: "process_cpu_seconds",
            help: "CPU time of the process (user and system).",
            kind: KindData::Gauge(vec![(Vec::new(), user + system)]),
        });
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot, ticks(19)) {
        out.push(gauge(
            "process_start_time_seconds",
            "When the process started, in seconds since the Unix epoch.",
            boot + start,
        ));
    }
    out
}

/// Counts per key behind a lock, for labels seen on the way (HTTP statuses, DLQ stages).
#[derive(Debug, Default)]
pub struct Tally<K: Ord>(std::sync::Mutex<BTreeMap<K, u64>>);

impl<K: Ord + Clone> Tally<K> {
    pub fn add(&self, key: K, n: u64) {
        *self.0.lock().unwrap().entry(key).or_default() += n;
    }

    pub fn snapshot(&self) -> Vec<(K, u64)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// Labels for a series: `base` plus one more pair.
pub fn with_label(base: &Labels, key: &str, value: impl ToString) -> Labels {
    let mut labels = base.clone();
    labels.push((key.to_string(), value.to_string()));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_each_bucket_with_an_infinite_one() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 2.0, -1.0] {
            h.observe(v);
        }
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 5);
        assert!((sum - 2.65).abs() < 1e-6, "{sum}");
        assert_eq!(buckets, vec![(0.1, 3), (1.0, 1), (f64::INFINITY, 1)]);
    }

    #[test]
    fn rendered_buckets_are_cumulative_once() {
        #[derive(Debug)]
        struct H(Histogram);
        impl HistogramSource for H {
            fn histogram(&self) -> &Histogram {
                &self.0
            }
        }
        let h = H(Histogram::new(&[0.1, 1.0]));
        for v in [0.05, 0.5, 0.5, 2.0] {
            h.0.observe(v);
        }
        let text = render(vec![Family {
            name: "sink_latency_seconds",
            help: "Latency.",
            kind: Kind::Histogram(vec![(sink_label("hook"), Arc::new(h))]),
        }]);
        for line in [
            "sluice_sink_latency_seconds_bucket{sink=\"hook\",le=\"0.1\"} 1",
            "sluice_sink_latency_seconds_bucket{sink=\"hook\",le=\"1\"} 3",
            "sluice_sink_latency_seconds_bucket{sink=\"hook\",le=\"+Inf\"} 4",
            "sluice_sink_latency_seconds_count{sink=\"hook\"} 4",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn families_render_as_prometheus_text() {
        let h = Arc::new(Histogram::new(LATENCY_BUCKETS));
        #[derive(Debug)]
        struct H(Arc<Histogram>);
        impl HistogramSource for H {
            fn histogram(&self) -> &Histogram {
                &self.0
            }
        }
        h.observe(0.003);
        let text = render(vec![
            Family {
                name: "sink_delivered_events",
                help: "Events delivered.",
                kind: Kind::Counter(vec![(sink_label("hook"), 7)]),
            },
            Family {
                name: "sink_lag_seconds",
                help: "Lag.",
                kind: Kind::Gauge(vec![(sink_label("hook"), 0.5)]),
            },
            Family {
                name: "sink_latency_seconds",
                help: "Latency.",
                kind: Kind::Histogram(vec![(sink_label("hook"), Arc::new(H(h)))]),
            },
        ]);
        for line in [
            "# TYPE sluice_sink_delivered_events_total counter",
            "sluice_sink_delivered_events_total{sink=\"hook\"} 7",
            "sluice_sink_lag_seconds{sink=\"hook\"} 0.5",
            "sluice_sink_latency_seconds_bucket{sink=\"hook\",le=\"0.005\"} 1",
            "sluice_sink_latency_seconds_count{sink=\"hook\"} 1",
            "sluice_build_info{version=",
            "sluice_process_resident_memory_bytes ",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
