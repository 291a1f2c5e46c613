//! The journal as the engine thread sees it: append a record, learn when it is
//! durable, ask for snapshots. Implemented by [`super::Journal`] (files),
//! [`super::Replicated`] (a journal plus a replica engine) and the sequencer's
//! `NoJournal`. It lives with the journal, not the sequencer, so that the journal
//! never imports the sequencer (issue 26: no `sequencer <-> journal` circle).

use super::error::JournalError;
use crossbeam_channel::Receiver;
use yellowstone_engine::Engine;

/// The journal as the sequencer sees it.
pub trait Durability: Send {
    /// Appends one record; returns its sequence number (strictly increasing).
    /// Errors: the record is over `record::RECORD_PAYLOAD_MAX`, or the journal
    /// has failed (every later call fails the same way).
    fn append(&mut self, record: &[u8]) -> Result<u64, JournalError>;
    /// Sequence numbers known durable, as they become so (highest first is fine).
    fn durable_updates(&self) -> Receiver<u64>;
    /// Everything appended so far is durable (`always`), or written (other modes).
    fn durable_seq(&self) -> u64;
    /// Writes a snapshot covering every record up to `seq`.
    fn snapshot(&mut self, seq: u64, state: Vec<u8>) -> Result<(), JournalError>;
    /// A snapshot point: `engine` has applied every record up to `seq` (a block
    /// boundary). By default the engine is serialised here, on the engine thread; a
    /// journal with a replica engine serialises that one instead
    /// (`journal::replica`, ARCHITECTURE.md "Latency: what waits for the disk").
    fn snapshot_point(&mut self, seq: u64, engine: &Engine) -> Result<(), JournalError> {
        self.snapshot(seq, engine.snapshot())
    }
    /// The snapshot replica's counters, if this journal keeps a replica.
    fn replica_stats(&self) -> Option<std::sync::Arc<crate::journal::ReplicaStats>> {
        None
    }
    /// Flushes and syncs everything appended; used at shutdown.
    fn flush(&mut self) -> Result<(), JournalError>;
    /// Records up to this sequence number are on stable storage whatever the
    /// durability mode (`durable_seq` in `always`; behind it in `interval`/`none`).
    /// A journal that keeps nothing on disk returns `durable_seq`. Required, not
    /// defaulted: a wrapper that forgot to forward it would publish batches before
    /// their seal is on disk.
    fn synced_seq(&self) -> u64;
    /// Asks for records up to `seq` to reach stable storage soon, without waiting
    /// (a sealed block's batch waits for it in the sequencer, R-BLOCK-*); progress is
    /// announced on `durable_updates` and read from `synced_seq`. Journals whose
    /// `synced_seq` already follows every append need do nothing.
    fn request_sync(&mut self, seq: u64) -> Result<(), JournalError>;
    /// Counters for the metrics endpoint, if this journal keeps any.
    fn stats(&self) -> Option<std::sync::Arc<crate::journal::JournalStats>> {
        None
    }
}
