//! Latency recording: one HdrHistogram per measured path, in microseconds, with the
//! percentile spectrum the report prints and the `.hgrm` files it writes.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded, in microseconds (60 s); larger values are clamped so
/// a pathological outlier still counts instead of being dropped.
pub const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(Clone, Debug)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder::new()
    }
}

/// The figures the report and the JSON summary show for one path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
}

impl LatencyRecorder {
    pub fn new() -> LatencyRecorder {
        let histogram = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
            .expect("static histogram bounds are valid");
        LatencyRecorder { histogram }
    }

    pub fn record_us(&mut self, latency_us: u64) {
        let clamped = latency_us.clamp(1, LATENCY_US_MAX);
        // Cannot fail: the value is clamped into the histogram's range.
        let _ = self.histogram.record(clamped);
    }

    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: h.mean(),
        }
    }

    /// (percentile, value_us) points of the spectrum, for plots.
    pub fn spectrum(&self) -> Vec<(f64, u64)> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        self.histogram
            .iter_quantiles(2)
            .map(|v| (v.quantile_iterated_to() * 100.0, v.value_iterated_to()))
            .collect()
    }

    /// The classic HdrHistogram percentile distribution text (`.hgrm`), values in
    /// milliseconds as HdrHistogram's plotter expects.
    pub fn hgrm_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:>12} {:>14} {:>10} {:>14}\n\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        ));
        if self.histogram.is_empty() {
            return out;
        }
        for v in self.histogram.iter_quantiles(5) {
            let quantile = v.quantile_iterated_to();
            let inverse = if quantile < 1.0 {
                format!("{:>14.2}", 1.0 / (1.0 - quantile))
            } else {
                format!("{:>14}", "")
            };
            out.push_str(&format!(
                "{:>12.3} {:>14.12} {:>10} {}\n",
                v.value_iterated_to() as f64 / 1000.0,
                quantile,
                v.count_since_last_iteration(),
                inverse
            ));
        }
        let summary = self.summary();
        out.push_str(&format!(
            "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]\n#[Max     = {:>12.3}, Total count    = {:>12}]\n",
            summary.mean / 1000.0,
            self.histogram.stdev() / 1000.0,
            summary.max as f64 / 1000.0,
            summary.count
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut recorder = LatencyRecorder::new();
        for value in 1..=10_000u64 {
            recorder.record_us(value);
        }
        let summary = recorder.summary();
        assert_eq!(summary.count, 10_000);
        assert!((4_990..=5_010).contains(&summary.p50), "{summary:?}");
        assert!((9_890..=9_910).contains(&summary.p99), "{summary:?}");
        assert!(summary.max >= 10_000 && summary.max <= 10_010);
    }

    #[test]
    fn merge_adds_counts_and_out_of_range_values_are_clamped() {
        let mut a = LatencyRecorder::new();
        let mut b = LatencyRecorder::new();
        a.record_us(0);
        b.record_us(LATENCY_US_MAX * 10);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert!(a.summary().max >= LATENCY_US_MAX);
        assert!(a.hgrm_text().contains("Total count"));
    }
}
