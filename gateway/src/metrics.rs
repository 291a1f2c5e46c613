//! Prometheus text metrics and per-stage latency histograms.
