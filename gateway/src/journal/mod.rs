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
//! - `storage`: the file operations the journal needs (`Storage`), and the real
//!   files behind them; `faulty`: an in-memory storage that tears writes, loses the
//!   unsynced suffix at a crash and fails reads, seeded, for tests.
//! - `classify`: recovery's decision without IO (scan facts in, verdict out; the
//!   decision table is its doc comment).
//! - `recovery`: snapshot + replay at start, zero tail as the end, torn-tail cut,
//!   corruption refusal; reads, decides (`classify`), then cuts.
//! - `error`: the typed errors of all of the above.
//! - `tools`: what the operator subcommands print (records, verification, ledger).

pub mod classify;
pub mod durability;
pub mod error;
pub mod faulty;
pub mod files;
pub mod pacer;
pub mod record;
pub mod recovery;
pub mod replica;
pub mod storage;
pub mod tools;
pub mod uring_file;
pub mod writer;

pub use durability::Durability;
pub use error::{JournalError, StorageError};
pub use record::JournalRecord;
pub use recovery::{recover, RecoverOptions, Recovered};
pub use replica::{ReplicaConfig, ReplicaStats, Replicated};
pub use storage::{FileStorage, Storage};
pub use uring_file::JournalIo;
pub use writer::{DurabilityMode, Journal, JournalConfig, JournalStats};
