//! The snapshot replica (ARCHITECTURE.md, "Latency: what waits for the disk", last
//! paragraph): a second `Engine` on its own thread, fed the same journal records as
//! the engine thread, in sequence order, with their `now_ms`. At a snapshot point (a
//! block boundary, record N) the engine thread only sends "snapshot at N"; the
//! replica, having applied exactly records ..=N, serialises itself and hands the bytes
//! to the journal's snapshot thread (tmp, fsync, rename, prune as before). The engine
//! thread's pause at a snapshot point is a channel send instead of a serialisation
//! (120-140 ms at 1,000,000 accounts). Memory for market state doubles.
//!
//! Guarantees:
//! - The replica applies record k only right after record k-1 (sequence numbers are
//!   checked); a gap, an undecodable record or a state-hash mismatch make it drop its
//!   state ("out of sync") rather than write a wrong snapshot.
//! - With `verify_state_hash` (on in debug builds: the engine-side hash costs a full
//!   serialisation) the engine thread sends its own state hash with the request and the
//!   replica writes the snapshot only if its state hashes the same.
//! - The engine thread never waits for the replica. Records go over in batches through
//!   a queue bounded by `queue_bytes_max`; when the replica is that far behind, the
//!   batch is dropped and the replica is out of sync. While out of sync no snapshot is
//!   written by the replica; at the next snapshot point the engine thread reseeds it:
//!   it serialises itself once (the pause of old, logged and counted), that state is
//!   written as the snapshot and restored by the replica, which then follows again.
//!   If the replica thread is gone, every snapshot point falls back to that.

use super::error::JournalError;
use super::{Durability, JournalRecord};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use yellowstone_engine::{Effect, Engine};

/// Bytes before each record's payload in a batch: seq (u64 LE), length (u32 LE).
const FRAME_HEADER_BYTES: usize = 12;

/// Limits and checks of the replica.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// Record bytes handed to the replica and not yet applied; past it the replica
    /// is out of sync until the next snapshot point reseeds it
    /// (`journal.snapshot_replica_queue_bytes_max`).
    pub queue_bytes_max: u64,
    /// Records are handed over in batches of about this many bytes (and at every
    /// snapshot point), one channel send per batch.
    pub batch_bytes_max: usize,
    /// The engine thread sends its state hash with each snapshot request and the
    /// replica checks it (costs the engine thread one serialisation per snapshot:
    /// on by default only in debug builds).
    pub verify_state_hash: bool,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            queue_bytes_max: 64 * 1024 * 1024,
            batch_bytes_max: 64 * 1024,
            verify_state_hash: cfg!(debug_assertions),
        }
    }
}

/// Counters an operator can watch (published as `yellowstone_snapshot_*` metrics).
#[derive(Default, Debug)]
pub struct ReplicaStats {
    /// Record bytes queued for the replica, not yet applied.
    pub queue_bytes: AtomicU64,
    pub records_applied: AtomicU64,
    /// Snapshot points the engine thread reached.
    pub snapshot_points: AtomicU64,
    /// Snapshots the replica serialised and handed to the snapshot thread.
    pub snapshots_replica: AtomicU64,
    /// Snapshot points without a snapshot: the replica out of sync, or the snapshot
    /// thread still writing the previous one.
    pub snapshots_skipped: AtomicU64,
    /// Batches dropped because the replica's queue was full.
    pub overflows: AtomicU64,
    /// Times the replica lost its state (overflow, gap, bad record, hash mismatch).
    pub out_of_sync: AtomicU64,
    /// Snapshot points where the engine thread serialised itself (reseeds and the
    /// fallback without a replica).
    pub snapshots_engine_thread: AtomicU64,
    pub hash_checks: AtomicU64,
    pub hash_mismatches: AtomicU64,
    /// The engine thread's time at the last / the longest snapshot point, µs.
    pub engine_pause_us_last: AtomicU64,
    pub engine_pause_us_max: AtomicU64,
    /// The replica's serialisation time of its last snapshot, ms.
    pub replica_serialise_ms_last: AtomicU64,
}

enum Message {
    /// Framed records (`FRAME_HEADER_BYTES` + payload each), in sequence order.
    Records(Vec<u8>),
    /// The engine thread reached a snapshot point after record `seq`.
    SnapshotAt {
        seq: u64,
        state_hash: Option<[u8; 32]>,
    },
    /// The engine's state after record `seq`: restore from it, and write it as the
    /// snapshot at `seq` if `write` (not at start: a snapshot covers it already, or
    /// it is the genesis).
    Reseed {
        seq: u64,
        state: Vec<u8>,
        write: bool,
    },
    /// Tests: the replica waits until this channel gives or closes (a slow replica).
    Hold(Receiver<()>),
}

/// Where finished snapshots go: the journal's snapshot thread
/// (`Journal::snapshot_sender`), bounded, so a busy writer means a skipped snapshot.
pub type SnapshotSender = Sender<(u64, Vec<u8>)>;

/// A `Durability` that also feeds a replica engine and takes snapshots from it.
/// Everything else is the inner journal's.
pub struct Replicated<D: Durability> {
    inner: D,
    config: ReplicaConfig,
    /// Framed records not yet handed over.
    batch: Vec<u8>,
    /// The engine thread's view: records are being handed over.
    in_sync: bool,
    /// Set by the replica when it drops its state.
    replica_lost: Arc<AtomicBool>,
    stats: Arc<ReplicaStats>,
    messages: Option<Sender<Message>>,
    thread: Option<JoinHandle<()>>,
}

impl<D: Durability> Replicated<D> {
    /// Starts a replica from `engine`, the state after record `applied_seq` (the
    /// recovered engine, before the sequencer runs). Its copy is made here (one
    /// serialisation at start) and restored on the replica's thread.
    pub fn start(
        inner: D,
        engine: &Engine,
        applied_seq: u64,
        snapshots: SnapshotSender,
        config: ReplicaConfig,
    ) -> Result<Replicated<D>, JournalError> {
        assert!(config.batch_bytes_max > 0, "batches hold at least a record");
        assert!(config.queue_bytes_max >= config.batch_bytes_max as u64);
        let (messages, receiver) = crossbeam_channel::unbounded();
        let stats = Arc::new(ReplicaStats::default());
        let replica_lost = Arc::new(AtomicBool::new(false));
        let mut replica = Replica {
            engine: None,
            applied_seq: 0,
            stats: stats.clone(),
            lost: replica_lost.clone(),
            snapshots,
            effects: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("ys-replica".into())
            .spawn(move || replica.run(receiver))
            .map_err(|source| JournalError::Thread {
                thread: "replica",
                source,
            })?;
        messages
            .send(Message::Reseed {
                seq: applied_seq,
                state: engine.snapshot(),
                write: false,
            })
            .map_err(|_| JournalError::Replica {
                what: "the replica thread stopped at start".to_string(),
            })?;
        Ok(Replicated {
            inner,
            batch: Vec::with_capacity(config.batch_bytes_max + FRAME_HEADER_BYTES),
            config,
            in_sync: true,
            replica_lost,
            stats,
            messages: Some(messages),
            thread: Some(thread),
        })
    }

    /// No replica: every snapshot point serialises the engine on the engine thread
    /// (`journal.snapshot_replica = false`: half the memory, the pause of old).
    pub fn without_replica(inner: D) -> Replicated<D> {
        Replicated {
            inner,
            config: ReplicaConfig::default(),
            batch: Vec::new(),
            in_sync: false,
            replica_lost: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(ReplicaStats::default()),
            messages: None,
            thread: None,
        }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn replica_stats_ref(&self) -> &ReplicaStats {
        &self.stats
    }

    /// Tests: makes the replica stop at this point of its queue until the returned
    /// sender is dropped (to show what a replica that falls behind does).
    #[doc(hidden)]
    pub fn hold_replica(&self) -> Option<Sender<()>> {
        let (release, held) = crossbeam_channel::bounded(0);
        self.messages.as_ref()?.send(Message::Hold(held)).ok()?;
        Some(release)
    }

    /// Hands the batch over unless the queue is full; returns false if the replica
    /// is (now) out of sync.
    fn send_batch(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let Some(messages) = &self.messages else {
            return false;
        };
        let len = self.batch.len() as u64;
        let queued = self.stats.queue_bytes.load(Ordering::Acquire);
        if queued + len > self.config.queue_bytes_max {
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            self.stats.out_of_sync.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                queued_bytes = queued,
                queue_bytes_max = self.config.queue_bytes_max,
                "snapshot replica behind by its whole queue: out of sync until the next \
                 snapshot point reseeds it"
            );
            self.batch.clear();
            self.in_sync = false;
            return false;
        }
        self.stats.queue_bytes.fetch_add(len, Ordering::AcqRel);
        let batch = std::mem::replace(
            &mut self.batch,
            Vec::with_capacity(self.config.batch_bytes_max + FRAME_HEADER_BYTES),
        );
        if messages.send(Message::Records(batch)).is_err() {
            self.replica_gone();
            return false;
        }
        true
    }

    fn replica_gone(&mut self) {
        tracing::error!(
            "snapshot replica thread stopped: snapshots are now serialised on the engine thread"
        );
        self.messages = None;
        self.in_sync = false;
        self.batch = Vec::new();
    }

    /// The engine serialises itself: written as the snapshot at `seq`, and (with a
    /// replica) the replica's new state.
    fn snapshot_on_engine_thread(&mut self, seq: u64, engine: &Engine) -> Result<(), JournalError> {
        self.stats
            .snapshots_engine_thread
            .fetch_add(1, Ordering::Relaxed);
        let state = engine.snapshot();
        let Some(messages) = &self.messages else {
            return self.inner.snapshot(seq, state);
        };
        self.batch.clear();
        let reseed = Message::Reseed {
            seq,
            state,
            write: true,
        };
        if let Err(crossbeam_channel::SendError(message)) = messages.send(reseed) {
            self.replica_gone();
            let Message::Reseed { state, .. } = message else {
                unreachable!("the message sent comes back")
            };
            return self.inner.snapshot(seq, state);
        }
        self.in_sync = true;
        tracing::warn!(seq, "snapshot replica reseeded from the engine thread");
        Ok(())
    }

    fn record_pause(&self, seq: u64, started: Instant) {
        let pause_us = started.elapsed().as_micros() as u64;
        self.stats
            .engine_pause_us_last
            .store(pause_us, Ordering::Relaxed);
        self.stats
            .engine_pause_us_max
            .fetch_max(pause_us, Ordering::Relaxed);
        tracing::info!(
            seq,
            engine_pause_us = pause_us,
            replica = self.in_sync,
            "snapshot point"
        );
    }
}

impl<D: Durability> Durability for Replicated<D> {
    fn append(&mut self, record: &[u8]) -> Result<u64, JournalError> {
        let seq = self.inner.append(record)?;
        if self.in_sync {
            let length = u32::try_from(record.len()).map_err(|_| JournalError::RecordTooLarge {
                bytes: record.len(),
                max: u32::MAX as usize,
            })?;
            self.batch.extend_from_slice(&seq.to_le_bytes());
            self.batch.extend_from_slice(&length.to_le_bytes());
            self.batch.extend_from_slice(record);
            if self.batch.len() >= self.config.batch_bytes_max {
                self.send_batch();
            }
        }
        Ok(seq)
    }

    fn durable_updates(&self) -> Receiver<u64> {
        self.inner.durable_updates()
    }

    fn durable_seq(&self) -> u64 {
        self.inner.durable_seq()
    }

    fn snapshot(&mut self, seq: u64, state: Vec<u8>) -> Result<(), JournalError> {
        self.inner.snapshot(seq, state)
    }

    fn snapshot_point(&mut self, seq: u64, engine: &Engine) -> Result<(), JournalError> {
        let started = Instant::now();
        self.stats.snapshot_points.fetch_add(1, Ordering::Relaxed);
        if self.replica_lost.swap(false, Ordering::AcqRel) {
            // Whatever was sent since the replica dropped its state is discarded there.
            self.in_sync = false;
        }
        let result = if self.in_sync && self.send_batch() {
            let state_hash = self.config.verify_state_hash.then(|| engine.state_hash());
            let sent = self
                .messages
                .as_ref()
                .is_some_and(|m| m.send(Message::SnapshotAt { seq, state_hash }).is_ok());
            if sent {
                Ok(())
            } else {
                self.replica_gone();
                self.snapshot_on_engine_thread(seq, engine)
            }
        } else {
            self.snapshot_on_engine_thread(seq, engine)
        };
        self.record_pause(seq, started);
        result
    }

    fn flush(&mut self) -> Result<(), JournalError> {
        self.inner.flush()
    }

    fn synced_seq(&self) -> u64 {
        self.inner.synced_seq()
    }

    fn request_sync(&mut self, seq: u64) -> Result<(), JournalError> {
        self.inner.request_sync(seq)
    }

    fn stats(&self) -> Option<Arc<crate::journal::JournalStats>> {
        self.inner.stats()
    }

    fn replica_stats(&self) -> Option<Arc<ReplicaStats>> {
        Some(self.stats.clone())
    }
}

impl<D: Durability> Drop for Replicated<D> {
    /// Stops the replica (it finishes the requests already queued) before the inner
    /// journal closes, so the snapshot thread sees its last snapshot.
    fn drop(&mut self) {
        self.messages = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The replica thread's state.
struct Replica {
    /// None while out of sync.
    engine: Option<Engine>,
    applied_seq: u64,
    stats: Arc<ReplicaStats>,
    lost: Arc<AtomicBool>,
    snapshots: SnapshotSender,
    effects: Vec<Effect>,
}

impl Replica {
    fn run(&mut self, messages: Receiver<Message>) {
        for message in messages {
            match message {
                Message::Records(batch) => {
                    if let Err(error) = self.apply_batch(&batch) {
                        self.lose(&error.to_string());
                    }
                    self.stats
                        .queue_bytes
                        .fetch_sub(batch.len() as u64, Ordering::AcqRel);
                }
                Message::SnapshotAt { seq, state_hash } => self.snapshot_at(seq, state_hash),
                Message::Reseed { seq, state, write } => self.reseed(seq, state, write),
                Message::Hold(held) => {
                    let _ = held.recv();
                }
            }
        }
    }

    fn lose(&mut self, error: &str) {
        if self.engine.take().is_some() {
            tracing::error!(
                %error,
                applied_seq = self.applied_seq,
                "snapshot replica out of sync: the next snapshot point reseeds it"
            );
            self.stats.out_of_sync.fetch_add(1, Ordering::Relaxed);
            self.lost.store(true, Ordering::Release);
        }
    }

    /// Applies each framed record of `batch` in order; an error leaves the records
    /// before it applied.
    fn apply_batch(&mut self, mut batch: &[u8]) -> Result<(), BatchFault> {
        while !batch.is_empty() {
            let Some(engine) = self.engine.as_mut() else {
                return Ok(()); // out of sync: discarded until the reseed
            };
            if batch.len() < FRAME_HEADER_BYTES {
                return Err(BatchFault::HeaderTruncated { have: batch.len() });
            }
            let seq = u64::from_le_bytes(batch[..8].try_into().expect("8 bytes"));
            let length = u32::from_le_bytes(batch[8..12].try_into().expect("4 bytes")) as usize;
            let end = FRAME_HEADER_BYTES + length;
            if batch.len() < end {
                return Err(BatchFault::RecordTruncated {
                    seq,
                    announced: length,
                });
            }
            if seq != self.applied_seq + 1 {
                return Err(BatchFault::Gap {
                    seq,
                    applied: self.applied_seq,
                });
            }
            let record = JournalRecord::decode(&batch[FRAME_HEADER_BYTES..end])
                .map_err(|error| BatchFault::Decode { seq, error })?;
            self.effects.clear();
            engine.apply(&record.command, record.now_ms, &mut self.effects);
            self.applied_seq = seq;
            self.stats.records_applied.fetch_add(1, Ordering::Relaxed);
            batch = &batch[end..];
        }
        Ok(())
    }

    fn snapshot_at(&mut self, seq: u64, state_hash: Option<[u8; 32]>) {
        let Some(engine) = self.engine.as_ref() else {
            self.skip(seq, "the replica is out of sync");
            return;
        };
        if self.applied_seq != seq {
            let error = format!(
                "snapshot requested at record {seq}, replica at {}",
                self.applied_seq
            );
            self.lose(&error);
            self.skip(seq, "the replica is out of sync");
            return;
        }
        let started = Instant::now();
        let state = engine.snapshot();
        if let Some(expected) = state_hash {
            self.stats.hash_checks.fetch_add(1, Ordering::Relaxed);
            if *blake3::hash(&state).as_bytes() != expected {
                self.stats.hash_mismatches.fetch_add(1, Ordering::Relaxed);
                self.lose(&format!(
                    "state hash at record {seq} differs from the engine's"
                ));
                self.skip(seq, "the replica's state differs from the engine's");
                return;
            }
        }
        self.stats
            .replica_serialise_ms_last
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if self.hand_off(seq, state) {
            self.stats.snapshots_replica.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reseed(&mut self, seq: u64, state: Vec<u8>, write: bool) {
        match Engine::restore(&state) {
            Ok(engine) => {
                self.engine = Some(engine);
                self.applied_seq = seq;
            }
            Err(error) => self.lose(&format!("reseed at record {seq}: {error}")),
        }
        if write {
            self.hand_off(seq, state);
        }
    }

    /// Gives the snapshot to the snapshot thread; false (and counted skipped) if it
    /// is still writing the previous one or gone.
    fn hand_off(&mut self, seq: u64, state: Vec<u8>) -> bool {
        match self.snapshots.try_send((seq, state)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.skip(seq, "the previous snapshot is still being written");
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.skip(seq, "the snapshot thread stopped");
                false
            }
        }
    }

    fn skip(&self, seq: u64, why: &str) {
        self.stats.snapshots_skipped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(seq, reason = why, "snapshot skipped");
    }
}

/// Why the replica could not apply a batch (it then waits for a reseed).
#[derive(Debug, thiserror::Error)]
enum BatchFault {
    #[error("{have} bytes of a record header")]
    HeaderTruncated { have: usize },
    #[error("record {seq}: {announced} bytes announced")]
    RecordTruncated { seq: u64, announced: usize },
    #[error("record {seq} after record {applied}: a gap")]
    Gap { seq: u64, applied: u64 },
    #[error("record {seq}: {error}")]
    Decode { seq: u64, error: JournalError },
}
