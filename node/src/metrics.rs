//! Prometheus metrics of both nodes (prometheus-client), served as text at
//! `GET /metrics` on each node's `metrics_listen` address.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

pub type Labels = Vec<(&'static str, String)>;

/// Latency buckets in seconds: 0.5 ms to about 65 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            registry: Arc::new(Mutex::new(Registry::with_prefix("yellowstone"))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn counter_family(&self, name: &str, help: &str) -> Family<Labels, Counter> {
        let family = Family::<Labels, Counter>::default();
        self.lock().register(name, help, family.clone());
        family
    }

    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let counter = Counter::default();
        self.lock().register(name, help, counter.clone());
        counter
    }

    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::default();
        self.lock().register(name, help, gauge.clone());
        gauge
    }

    /// A latency histogram in seconds.
    pub fn seconds(&self, name: &str, help: &str) -> Histogram {
        let histogram = latency_histogram();
        self.lock().register(name, help, histogram.clone());
        histogram
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.lock()).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
/// The `/metrics` endpoint as an axum router (served by `serve_bounded`).
pub fn router(metrics: Metrics) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_labels() {
        let metrics = Metrics::new();
        let requests = metrics.counter_family("consumer_requests", "Requests by outcome.");
        requests
            .get_or_create(&vec![("outcome", "ok".into())])
            .inc();
        metrics
            .seconds("consumer_ttft_seconds", "TTFT.")
            .observe(0.01);
        let text = metrics.render();
        assert!(
            text.contains("yellowstone_consumer_requests_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("yellowstone_consumer_ttft_seconds_count 1"),
            "{text}"
        );
    }
}
