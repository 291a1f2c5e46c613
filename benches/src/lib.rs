//! Shared helpers for the criterion benches and the whole-system benchmark script
//! (`src/bin/whole_system.rs`, see BENCHMARKS.md).
//!
//! - `signature_cost`: the router's signature operations per session, timed here.
//! - `process`: child processes (router, loadgen) started, stopped by pid, reaped
//!   with their resource usage.
//! - `redis`: redis-server and redis-benchmark as the network-path reference.

pub mod process;
pub mod redis;
pub mod signature_cost;
