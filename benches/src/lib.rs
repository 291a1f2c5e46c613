//! Shared helpers for the criterion benches and the whole-system benchmark script.
