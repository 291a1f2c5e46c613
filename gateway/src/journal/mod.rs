//! Write-ahead journal of engine inputs, snapshots on disk, and recovery
//! (ARCHITECTURE.md, "Determinism and durability").
//!
//! - `record`: one checksummed, length-framed record, and its payload (`JournalRecord`).
//! - `durability`: the `Durability` trait the engine thread appends through.
//! - `files`: segment and snapshot files, atomic replacement, directory fsync.
//! - `writer`: the `Durability` the engine thread appends to; group commit on the
//!   journal thread, snapshots on their own thread.
//! - `pacer`: adaptive group commit (hold a group only while fsyncs run back to back).
//! - `uring_file`: the open segment, kept zero-filled ahead of its data, written and
//!   made durable through io_uring (default), `pwritev2(RWF_DSYNC)` or
//!   pwrite + fdatasync (`journal.io`).
//! - `replica`: a second engine fed the same records; snapshots are serialised
//!   from it so the engine thread does not stop for them.
//! - `recovery`: snapshot + replay at start, zero tail as the end, torn-tail cut,
//!   corruption refusal.
//! - `tools`: what the operator subcommands print (records, verification, ledger).

pub mod durability;
pub mod files;
pub mod pacer;
pub mod record;
pub mod recovery;
pub mod replica;
pub mod tools;
pub mod uring_file;
pub mod writer;

pub use durability::Durability;
pub use record::JournalRecord;
pub use recovery::{recover, RecoverOptions, Recovered};
pub use replica::{ReplicaConfig, ReplicaStats, Replicated};
pub use uring_file::JournalIo;
pub use writer::{DurabilityMode, Journal, JournalConfig, JournalStats};
