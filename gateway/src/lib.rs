//! yellowstone-gateway: the router process (ARCHITECTURE.md).
//!
//! - `net`: connections (sans-IO) and the io_uring / mio network loops.
//! - `pipeline`: the threads wired in one place, in numbered steps; the decisions
//!   between them are `yellowstone-router-core`'s and the engine's.
//! - `journal`: the write-ahead journal, snapshots on disk and recovery.
//! - `config`, `metrics`: operator surface shared by the threads.

pub mod config;
pub mod journal;
pub mod metrics;
pub mod metrics_http;
pub mod net;
pub mod pipeline;
pub mod replication;
pub mod router;
pub mod sequencer;
pub mod settlement;
