//! Metrics: counters and gauges (atomics), per-stage latency histograms, and their
//! Prometheus text exposition.
//!
//! Guarantees: recording never takes a contended lock and never allocates: counters
//! and gauges are atomics; each thread records latencies into its own
//! `StageRecorder` (an hdrhistogram per stage behind a mutex only the scrape also
//! takes), and a scrape merges the recorders. Histograms are exposed as Prometheus
//! summaries (quantiles 0.5/0.9/0.99/0.999 plus `_count` and `_sum`, in seconds).
//! Names and labels are fixed at registration, so the exposition is bounded.

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Publishes a count kept elsewhere (another thread's atomics, the engine's
    /// totals since genesis). Such a count never decreases while the process runs;
    /// a smaller value is a bug (debug builds assert it) and is not published, so
    /// the counter never goes down.
    pub fn publish(&self, value: u64) {
        let previous = self.0.fetch_max(value, Ordering::Relaxed);
        debug_assert!(
            value >= previous,
            "a published count went down: {previous} -> {value}"
        );
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The pipeline stages timed by the router (`yellowstone_stage_latency_seconds`,
/// label `stage`). Every stage here is recorded somewhere: a stage that is never
/// timed would export NaN for ever and read as a broken router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A gateway thread decoding one frame into a message.
    Decode,
    /// A gateway thread checking one signature (digest, recovery, address).
    Verify,
    /// The engine thread applying one command (one in 16 is timed).
    Apply,
    /// A command's promises held for the disk: from its journal append to the
    /// delivery of its answers, after its record is durable (`durability always`:
    /// the group commit and its fsync; one in 16 is timed).
    DurableWait,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Decode,
        Stage::Verify,
        Stage::Apply,
        Stage::DurableWait,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Verify => "verify",
            Stage::Apply => "apply",
            Stage::DurableWait => "durable_wait",
        }
    }
}

/// Latencies up to an hour, 3 significant digits, in nanoseconds.
const LATENCY_NS_MAX: u64 = 3_600_000_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("static histogram bounds are valid")
}

type StageHistograms = [Histogram<u64>; Stage::ALL.len()];

/// One thread's latency recorder (register one per thread with
/// `Registry::stage_recorder`).
#[derive(Clone)]
pub struct StageRecorder {
    histograms: Arc<Mutex<StageHistograms>>,
}

impl StageRecorder {
    /// Runs `work`, recording how long it took under `stage` (the clock is read
    /// here, so that the code it times decides without one).
    pub fn time<T>(&self, stage: Stage, work: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let result = work();
        self.record_ns(stage, started.elapsed().as_nanos() as u64);
        result
    }

    /// Records one latency in nanoseconds (clamped into the histogram's range).
    pub fn record_ns(&self, stage: Stage, latency_ns: u64) {
        let value = latency_ns.clamp(1, LATENCY_NS_MAX);
        // Only a scrape contends; a poisoned lock only means a panicked recorder.
        let mut histograms = match self.histograms.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let index = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0);
        let _ = histograms[index].record(value);
    }
}

struct Family<T> {
    name: String,
    help: String,
    series: Vec<(String, Arc<T>)>,
}

/// Writes whole families (HELP, TYPE, series) at scrape time, for figures kept
/// elsewhere (the market's, `router::market`).
pub type Exposition = Arc<dyn Fn(&mut String) + Send + Sync>;

#[derive(Default)]
struct Inner {
    counters: Vec<Family<Counter>>,
    gauges: Vec<Family<Gauge>>,
    recorders: Vec<Arc<Mutex<StageHistograms>>>,
    expositions: Vec<Exposition>,
}

/// All metrics of the process. Cloning shares it.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

fn label_text(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn series<T: Default>(
    families: &mut Vec<Family<T>>,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
) -> Arc<T> {
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "metric name {name:?}"
    );
    let labels = label_text(labels);
    let family = match families.iter().position(|f| f.name == name) {
        Some(index) => &mut families[index],
        None => {
            families.push(Family {
                name: name.to_string(),
                help: help.to_string(),
                series: Vec::new(),
            });
            families.last_mut().expect("just pushed")
        }
    };
    if let Some((_, existing)) = family.series.iter().find(|(l, _)| *l == labels) {
        return existing.clone();
    }
    let value = Arc::new(T::default());
    family.series.push((labels, value.clone()));
    value
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The counter `name{labels}` (created on first use; the same one afterwards).
    /// E.g. `counter("yellowstone_rejections_total", "...", &[("code", "quota_exceeded")])`.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Arc<Counter> {
        series(&mut self.lock().counters, name, help, labels)
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Arc<Gauge> {
        series(&mut self.lock().gauges, name, help, labels)
    }

    /// Adds families rendered by `source` at every scrape, after the gauges. Their
    /// names must not collide with the registry's own.
    pub fn add_exposition(&self, source: Exposition) {
        self.lock().expositions.push(source);
    }

    /// A latency recorder for one thread.
    pub fn stage_recorder(&self) -> StageRecorder {
        let histograms = Arc::new(Mutex::new(std::array::from_fn(|_| new_histogram())));
        self.lock().recorders.push(histograms.clone());
        StageRecorder { histograms }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::with_capacity(4096);
        for family in &inner.counters {
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} counter", family.name);
            for (labels, counter) in &family.series {
                let _ = writeln!(out, "{}{} {}", family.name, labels, counter.get());
            }
        }
        for family in &inner.gauges {
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} gauge", family.name);
            for (labels, gauge) in &family.series {
                let _ = writeln!(out, "{}{} {}", family.name, labels, gauge.get());
            }
        }
        let mut merged: StageHistograms = std::array::from_fn(|_| new_histogram());
        for recorder in &inner.recorders {
            let histograms = match recorder.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (total, part) in merged.iter_mut().zip(histograms.iter()) {
                let _ = total.add(part);
            }
        }
        let expositions = inner.expositions.clone();
        drop(inner);
        for source in &expositions {
            source(&mut out);
        }
        let name = "yellowstone_stage_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of each pipeline stage: decode and verify (a gateway \
             thread, per frame), apply (the engine thread, per command) and durable_wait (a \
             command's journal append to its answers' release); the engine's two time one \
             command in 16."
        );
        let _ = writeln!(out, "# TYPE {name} summary");
        for (stage, histogram) in Stage::ALL.iter().zip(merged.iter()) {
            let stage = stage.name();
            for quantile in [0.5, 0.9, 0.99, 0.999] {
                // No sample: the quantile is unknown, NaN as Prometheus writes it
                // (a 0 would read as "zero latency").
                let seconds = if histogram.is_empty() {
                    "NaN".to_string()
                } else {
                    (histogram.value_at_quantile(quantile) as f64 / 1e9).to_string()
                };
                let _ = writeln!(
                    out,
                    "{name}{{stage=\"{stage}\",quantile=\"{quantile}\"}} {seconds}"
                );
            }
            let sum_seconds = histogram.mean() * histogram.len() as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{stage=\"{stage}\"}} {sum_seconds}");
            let _ = writeln!(out, "{name}_count{{stage=\"{stage}\"}} {}", histogram.len());
        }
        out
    }
}

/// The network layer's own metrics, registered once per process.
pub struct NetMetrics {
    pub connections_accepted: Arc<Counter>,
    pub connections_refused: Arc<Counter>,
    /// §9: connections admitted at `connections_max` by evicting an idle unproven one.
    pub connections_admitted_by_eviction: Arc<Counter>,
    pub connections_open: Arc<Gauge>,
    pub frames_received: Arc<Counter>,
    pub bytes_received: Arc<Counter>,
    pub bytes_sent: Arc<Counter>,
    pub outbox_stale: Arc<Counter>,
    /// §9: accepts that failed (EMFILE, ENFILE, ENOMEM, …), each followed by a pause.
    pub accept_errors: Arc<Counter>,
    closed_by_reason: Vec<(&'static str, Arc<Counter>)>,
}

/// Every `CloseReason::label`, registered up front so counting a close takes no lock.
const CLOSE_REASON_LABELS: [&str; 10] = [
    "peer_closed",
    "bad_frame",
    "send_buffer_full",
    "idle_timeout",
    "login_timeout",
    "evicted",
    "by_handler",
    "by_outbox",
    "io_error",
    "shutdown",
];

impl NetMetrics {
    pub fn new(registry: &Registry) -> NetMetrics {
        NetMetrics {
            connections_accepted: registry.counter(
                "yellowstone_connections_accepted_total",
                "Connections accepted.",
                &[],
            ),
            connections_refused: registry.counter(
                "yellowstone_connections_refused_total",
                "Connections refused at connections_max.",
                &[],
            ),
            connections_admitted_by_eviction: registry.counter(
                "yellowstone_connections_admitted_by_eviction_total",
                "Connections admitted at connections_max by closing an idle connection that never logged in.",
                &[],
            ),
            connections_open: registry.gauge(
                "yellowstone_connections_open",
                "Connections open now.",
                &[],
            ),
            frames_received: registry.counter(
                "yellowstone_frames_received_total",
                "Frames handed to the handler.",
                &[],
            ),
            bytes_received: registry.counter(
                "yellowstone_bytes_received_total",
                "Bytes received.",
                &[],
            ),
            bytes_sent: registry.counter("yellowstone_bytes_sent_total", "Bytes sent.", &[]),
            outbox_stale: registry.counter(
                "yellowstone_outbox_stale_total",
                "Outbox messages for connections already closed.",
                &[],
            ),
            accept_errors: registry.counter(
                "yellowstone_accept_errors_total",
                "Accepts that failed (descriptors or memory exhausted); accepting pauses \
                 network.accept_backoff_ms after each.",
                &[],
            ),
            closed_by_reason: CLOSE_REASON_LABELS
                .iter()
                .map(|label| {
                    let counter = registry.counter(
                        "yellowstone_connections_closed_total",
                        "Connections closed, by reason.",
                        &[("reason", label)],
                    );
                    (*label, counter)
                })
                .collect(),
        }
    }

    /// Counts a close by its reason label.
    pub fn closed(&self, reason_label: &str) {
        let found = self
            .closed_by_reason
            .iter()
            .find(|(l, _)| *l == reason_label);
        debug_assert!(found.is_some(), "unregistered close reason {reason_label}");
        if let Some((_, counter)) = found {
            counter.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_gauges_and_merged_summaries() {
        let registry = Registry::new();
        registry
            .counter(
                "yellowstone_rejections_total",
                "Rejections.",
                &[("code", "quota")],
            )
            .add(3);
        registry.gauge("yellowstone_depth", "Depth.", &[]).set(-2);
        let a = registry.stage_recorder();
        let b = registry.stage_recorder();
        a.record_ns(Stage::Decode, 1_000);
        b.record_ns(Stage::Decode, 3_000);
        let text = registry.render();
        assert!(
            text.contains("yellowstone_rejections_total{code=\"quota\"} 3"),
            "{text}"
        );
        assert!(text.contains("# TYPE yellowstone_depth gauge\nyellowstone_depth -2"));
        assert!(text.contains("yellowstone_stage_latency_seconds_count{stage=\"decode\"} 2"));
        // An empty summary's quantiles are unknown, not zero.
        assert!(
            text.contains("stage=\"verify\",quantile=\"0.999\"} NaN\n"),
            "{text}"
        );
        assert!(text.contains("yellowstone_stage_latency_seconds_count{stage=\"verify\"} 0"));
    }
}
