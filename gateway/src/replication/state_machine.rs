//! The replicated state machine (REPL_DESIGN.md "State machine", R-HA-1, R-HA-4): an
//! `Engine` applying committed [`GroupEntry`] records in sequence order, exactly as
//! `journal::replica` does, plus the snapshot and state-hash bookkeeping a group
//! needs.
//!
//! - Records apply in sequence order: an entry's `first_seq` must be the next
//!   sequence number. An entry that is not (only a deposed leader's late proposal can
//!   be) is skipped on every member alike ([`GroupApplied::Stale`], logged loudly and
//!   counted), so members stay identical; a record that does not decode is a typed
//!   storage error that stops the member (it cannot apply what its leader applied).
//! - At every block boundary (the engine's block changes while applying a record)
//!   the state hash is computed, kept in a bounded ring (`cluster.state_hashes_kept`)
//!   and handed to [`ApplyObserver::state_hash_at_block`]; every applied command and
//!   its effects go to [`ApplyObserver::applied`] (follow-c's reply cache).
//! - Snapshots are the state machine's business: at the first entry that crosses a
//!   block boundary after `cluster.snapshot_every_entries` entries, the engine is
//!   serialised (state after that entry), and openraft is asked to take it as its
//!   snapshot (then it purges the log behind it). Snapshots are stored whole in
//!   `raft-snapshot` (atomic replace) and sent whole.

use super::types::{
    encode, Entry, GroupApplied, GroupEntry, LogId, MarketSnapshot, Raft, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig,
};
use crate::journal::record::{encode_into, parse};
use crate::journal::{JournalRecord, Storage};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use yellowstone_engine::{Command, Effect, Engine};

/// The stored snapshot's file name in `<data_dir>/raft/`.
pub const SNAPSHOT_FILE: &str = "raft-snapshot";

/// Sees every applied command, on every member, in sequence order (REPL_DESIGN.md).
/// Called on the member's thread with the state machine locked: keep it short, never
/// block on the member. Commands covered by an installed snapshot are not seen: what
/// the observer built from them travels in the snapshot (`snapshot_replies`,
/// `snapshot_loaded`).
pub trait ApplyObserver: Send + Sync {
    /// `command` was applied at `now_ms` (Unix ms) and produced `effects`.
    fn applied(&self, now_ms: u64, command: &Command, effects: &[Effect]);
    /// The engine entered `block` (a block boundary); `hash` is its state hash then.
    fn state_hash_at_block(&self, block: u64, hash: [u8; 32]) {
        let _ = (block, hash);
    }
    /// What the observer built from the applied commands, carried in a snapshot
    /// taken now (`MarketSnapshot::replies`: the reply cache, R-HA-3).
    fn snapshot_replies(&self) -> Vec<u8> {
        Vec::new()
    }
    /// A snapshot was installed or opened: the commands it covers are not applied
    /// again here, so take what it carries instead.
    /// Errors: `replies` does not load (the member refuses the snapshot).
    fn snapshot_loaded(
        &self,
        replies: &[u8],
    ) -> Result<(), yellowstone_router_core::ReplyCacheImportError> {
        let _ = replies;
        Ok(())
    }
}

/// An observer that ignores everything.
pub struct NoObserver;

impl ApplyObserver for NoObserver {
    fn applied(&self, _now_ms: u64, _command: &Command, _effects: &[Effect]) {}
}

/// Counters of the state machine (metrics).
#[derive(Default, Debug)]
pub struct MachineStats {
    /// Records applied.
    pub records_applied: AtomicU64,
    /// Entries skipped as stale (a deposed leader's proposal).
    pub stale_entries: AtomicU64,
    /// Snapshots built (serialisations at block boundaries).
    pub snapshots_built: AtomicU64,
    /// Snapshots installed from the leader.
    pub snapshots_installed: AtomicU64,
    /// The last applied log index + 1 (0: nothing applied).
    pub applied_index_plus_one: AtomicU64,
}

/// The state machine's state, shared between openraft's state machine task, the
/// snapshot builder and the member (promotion, status).
pub struct Machine {
    state: Mutex<State>,
    /// Set once the Raft handle exists: snapshots are triggered through it.
    raft: OnceLock<Raft>,
    observer: Arc<dyn ApplyObserver>,
    /// Counters.
    pub stats: MachineStats,
}

struct State {
    engine: Engine,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The sequence number the next record must have.
    next_seq: u64,
    hashes: VecDeque<(u64, [u8; 32])>,
    hashes_kept: usize,
    entries_since_snapshot: u64,
    snapshot_every_entries: u64,
    /// Built at a block boundary, not yet taken by openraft's builder.
    boundary: Option<(SnapshotMeta, MarketSnapshot)>,
    /// The last snapshot stored.
    current: Option<(SnapshotMeta, MarketSnapshot)>,
    storage: Box<dyn Storage>,
    effects: Vec<Effect>,
    snapshot_counter: u64,
}

/// What [`Machine::open`] needs.
pub struct MachineConfig {
    /// `cluster.snapshot_every_entries`.
    pub snapshot_every_entries: u64,
    /// `cluster.state_hashes_kept`.
    pub state_hashes_kept: usize,
}

/// The state of the market a promoted leader starts from.
pub struct EngineCopy {
    /// A copy of the state machine's engine.
    pub engine: Engine,
    /// The next journal sequence number.
    pub next_seq: u64,
    /// The last applied log id.
    pub applied: Option<LogId>,
}

fn io_error(what: String) -> AnyError {
    AnyError::error(what)
}

fn sm_error(what: String) -> StorageError {
    StorageIOError::write_state_machine(io_error(what)).into()
}

impl Machine {
    /// Opens the state machine: the snapshot in `storage` (`raft-snapshot`) if there
    /// is one, else `genesis`.
    /// Errors: the snapshot does not read, decode, restore or hash as recorded.
    pub fn open(
        mut storage: Box<dyn Storage>,
        genesis: Engine,
        config: MachineConfig,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<Arc<Machine>, super::ReplicationError> {
        let stored = read_snapshot(storage.as_mut())?;
        let (engine, last_applied, membership, next_seq, current) = match stored {
            Some((meta, data, engine)) => (
                engine,
                meta.last_log_id,
                meta.last_membership.clone(),
                data.next_seq,
                Some((meta, data)),
            ),
            None => (genesis, None, StoredMembership::default(), 1, None),
        };
        if let Some((_, data)) = &current {
            observer.snapshot_loaded(&data.replies).map_err(|e| {
                super::ReplicationError::BadFile {
                    file: SNAPSHOT_FILE.to_string(),
                    what: e.to_string(),
                }
            })?;
        }
        let machine = Machine {
            state: Mutex::new(State {
                engine,
                last_applied,
                membership,
                next_seq,
                hashes: VecDeque::new(),
                hashes_kept: config.state_hashes_kept.max(1),
                entries_since_snapshot: 0,
                snapshot_every_entries: config.snapshot_every_entries.max(1),
                boundary: None,
                current,
                storage,
                effects: Vec::new(),
                snapshot_counter: 0,
            }),
            raft: OnceLock::new(),
            observer,
            stats: MachineStats::default(),
        };
        machine
            .stats
            .applied_index_plus_one
            .store(last_applied.map_or(0, |l| l.index + 1), Ordering::Relaxed);
        Ok(Arc::new(machine))
    }

    /// Gives the machine the Raft handle it triggers snapshots through.
    pub fn set_raft(&self, raft: Raft) {
        let _ = self.raft.set(raft);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while applying leaves a state nobody should use; the member stops.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the engine (serialise + restore: the same state hash), the next
    /// sequence number and the last applied log id, taken at one instant.
    /// Errors: the copy does not restore (a bug; typed so the caller can refuse).
    pub fn copy_engine(&self) -> Result<EngineCopy, super::ReplicationError> {
        let state = self.lock();
        let engine = Engine::restore(&state.engine.snapshot()).map_err(|e| {
            super::ReplicationError::BadFile {
                file: "engine copy".to_string(),
                what: e.to_string(),
            }
        })?;
        debug_assert_eq!(engine.state_hash(), state.engine.state_hash());
        Ok(EngineCopy {
            engine,
            next_seq: state.next_seq,
            applied: state.last_applied,
        })
    }

    /// The last applied log id.
    pub fn applied(&self) -> Option<LogId> {
        self.lock().last_applied
    }

    /// The next journal sequence number.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// The state hash recorded when the engine entered `block`, if still kept.
    pub fn state_hash_at(&self, block: u64) -> Option<[u8; 32]> {
        self.lock()
            .hashes
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, h)| *h)
    }

    /// Every (block, state hash) kept, oldest first.
    pub fn state_hashes(&self) -> Vec<(u64, [u8; 32])> {
        self.lock().hashes.iter().copied().collect()
    }

    /// The engine's current state hash (a full serialisation: tests and checks).
    pub fn state_hash(&self) -> [u8; 32] {
        self.lock().engine.state_hash()
    }

    /// The engine's current block.
    pub fn block(&self) -> u64 {
        self.lock().engine.block()
    }

    fn apply_group(
        &self,
        state: &mut State,
        log_id: LogId,
        group: &GroupEntry,
    ) -> Result<GroupApplied, StorageError> {
        let State {
            engine,
            next_seq,
            effects,
            hashes,
            hashes_kept,
            ..
        } = state;
        let mut crossed = false;
        let applied = apply_group_records(
            engine,
            next_seq,
            log_id,
            group,
            effects,
            |_seq, record, effects, engine, entered| {
                self.observer
                    .applied(record.now_ms, &record.command, effects);
                if let Some(block) = entered {
                    crossed = true;
                    let hash = engine.state_hash();
                    if hashes.len() == *hashes_kept {
                        hashes.pop_front();
                    }
                    hashes.push_back((block, hash));
                    self.observer.state_hash_at_block(block, hash);
                }
            },
        )
        .map_err(|e| -> StorageError {
            tracing::error!(%log_id, seq = e.seq, error = %e.reason, "replicated record does not decode");
            StorageIOError::apply(log_id, io_error(e.to_string())).into()
        })?;
        match applied {
            GroupApplied::Stale { .. } => {
                self.stats.stale_entries.fetch_add(1, Ordering::Relaxed);
                return Ok(applied);
            }
            GroupApplied::Applied { .. } => {
                self.stats
                    .records_applied
                    .fetch_add(group.records.len() as u64, Ordering::Relaxed);
            }
            GroupApplied::NoRecords => {}
        }
        state.entries_since_snapshot += 1;
        if crossed && state.entries_since_snapshot >= state.snapshot_every_entries {
            self.snapshot_at_boundary(state, log_id);
        }
        Ok(applied)
    }

    /// The snapshot data of `state` now: the engine, its hash, and the observer's
    /// reply cache (R-HA-3).
    fn snapshot_data(&self, state: &State) -> MarketSnapshot {
        let engine = state.engine.snapshot();
        MarketSnapshot {
            state_hash: *blake3::hash(&engine).as_bytes(),
            engine,
            next_seq: state.next_seq,
            block: state.engine.block(),
            replies: self.observer.snapshot_replies(),
        }
    }

    /// Serialises the engine after `log_id` (an entry that crossed a block boundary)
    /// and asks openraft to take it as its next snapshot.
    fn snapshot_at_boundary(&self, state: &mut State, log_id: LogId) {
        state.entries_since_snapshot = 0;
        state.snapshot_counter += 1;
        let data = self.snapshot_data(state);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: state.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                log_id.leader_id.term, log_id.index, state.snapshot_counter
            ),
        };
        state.boundary = Some((meta, data));
        self.stats.snapshots_built.fetch_add(1, Ordering::Relaxed);
        if let Some(raft) = self.raft.get() {
            let raft = raft.clone();
            // Not awaited here: the state machine task must not wait for the core.
            tokio::spawn(async move {
                if let Err(e) = raft.trigger().snapshot().await {
                    tracing::warn!(error = %e, "snapshot trigger refused (shutting down)");
                }
            });
        }
    }
}

/// A replicated record that does not decode: the member cannot apply what its
/// leader applied (a storage error that stops it; an error of the read-only tools).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("record {seq}: {reason}")]
pub struct UndecodableRecord {
    /// The record's journal sequence number.
    pub seq: u64,
    /// Why it does not decode.
    pub reason: String,
}

/// Applies one entry's records to `engine`, the rule every member's state machine
/// and the read-only operator tools (`journal::tools` on a member's data directory)
/// share, so a replay off the disk reaches the state the member reached (R-HA-1):
///
/// - an entry whose `first_seq` is not `*next_seq`, or that holds no records, is
///   skipped ([`GroupApplied::Stale`]: only a deposed leader's late proposal does
///   that, and every member sees the same log), logged loudly;
/// - otherwise each record is decoded and applied in sequence order at its own
///   `now_ms`, `*next_seq` advances past it, and `each(seq, record, effects, engine,
///   entered)` sees it with the engine just after it (`entered`: the block the
///   engine entered with this record, if it crossed a boundary).
///
/// `effects` is scratch space (cleared before each record). Errors:
/// [`UndecodableRecord`] (the records before it are applied; `*next_seq` names it).
pub fn apply_group_records(
    engine: &mut Engine,
    next_seq: &mut u64,
    log_id: LogId,
    group: &GroupEntry,
    effects: &mut Vec<Effect>,
    mut each: impl FnMut(u64, &JournalRecord, &[Effect], &Engine, Option<u64>),
) -> Result<GroupApplied, UndecodableRecord> {
    if group.first_seq != *next_seq || group.records.is_empty() {
        tracing::error!(
            %log_id,
            expected = *next_seq,
            got = group.first_seq,
            records = group.records.len(),
            "replicated entry skipped: its first sequence number is not the next one \
             (a deposed leader's late proposal); every member skips it alike"
        );
        return Ok(GroupApplied::Stale {
            expected: *next_seq,
            got: group.first_seq,
        });
    }
    for (i, bytes) in group.records.iter().enumerate() {
        let seq = group.first_seq + i as u64;
        let record = JournalRecord::decode(bytes).map_err(|e| UndecodableRecord {
            seq,
            reason: e.to_string(),
        })?;
        let block_before = engine.block();
        effects.clear();
        engine.apply(&record.command, record.now_ms, effects);
        *next_seq = seq + 1;
        let entered = (engine.block() != block_before).then(|| engine.block());
        each(seq, &record, effects, engine, entered);
    }
    debug_assert_eq!(*next_seq, group.last_seq() + 1);
    Ok(GroupApplied::Applied {
        last_seq: group.last_seq(),
    })
}

/// Reads the stored snapshot (`raft-snapshot`) of `storage`, if there is one, and
/// restores its engine (checked against its recorded hash), without writing.
/// Errors: [`super::ReplicationError::File`] (unreadable),
/// [`super::ReplicationError::BadFile`] (does not parse, decode, hash or restore).
pub fn read_snapshot(
    storage: &mut dyn Storage,
) -> Result<Option<(SnapshotMeta, MarketSnapshot, Engine)>, super::ReplicationError> {
    let bad = |what: String| super::ReplicationError::BadFile {
        file: SNAPSHOT_FILE.to_string(),
        what,
    };
    if !storage.list()?.iter().any(|n| n == SNAPSHOT_FILE) {
        return Ok(None);
    }
    let bytes = storage.read(SNAPSHOT_FILE)?;
    let payload = parse_snapshot_frame(&bytes).map_err(bad)?;
    let (meta, data): (SnapshotMeta, MarketSnapshot) =
        super::types::decode(payload).map_err(|e| bad(e.to_string()))?;
    let engine = restore_checked(&data).map_err(bad)?;
    Ok(Some((meta, data, engine)))
}

/// Restores an engine from a snapshot and checks its recorded hash.
fn restore_checked(data: &MarketSnapshot) -> Result<Engine, String> {
    if *blake3::hash(&data.engine).as_bytes() != data.state_hash {
        return Err("the engine state does not hash as recorded".to_string());
    }
    let engine = Engine::restore(&data.engine).map_err(|e| e.to_string())?;
    if data.next_seq == 0 {
        return Err("next sequence number 0".to_string());
    }
    Ok(engine)
}

fn store_snapshot(
    state: &mut State,
    meta: &SnapshotMeta,
    data: &MarketSnapshot,
) -> Result<(), StorageError> {
    let payload = encode(&(meta, data)).map_err(|e| sm_error(format!("snapshot encode: {e}")))?;
    let mut framed = Vec::with_capacity(payload.len() + 64);
    let seq = meta.last_log_id.map_or(1, |l| l.index + 1);
    encode_snapshot_frame(&mut framed, seq, &payload);
    state
        .storage
        .replace(SNAPSHOT_FILE, &[&framed])
        .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)).into())
}

/// Frames a snapshot like a journal record when it fits the record limit; larger
/// snapshots are framed by [`encode_big`] (same layout, no limit).
pub(crate) fn encode_snapshot_frame(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    if encode_into(out, seq, payload).is_err() {
        encode_big(out, seq, payload);
    }
}

fn encode_big(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    // Layout of `journal::record` with a u64 length: magic u32::MAX, length u64,
    // seq u64, BLAKE3 of (length, seq, payload), payload.
    out.extend_from_slice(&u32::MAX.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(payload.len() as u64).to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    out.extend_from_slice(hasher.finalize().as_bytes());
    out.extend_from_slice(payload);
}

/// Reads what [`encode_snapshot_frame`] wrote: the payload.
pub fn parse_snapshot_frame(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() >= 4 && bytes[..4] == u32::MAX.to_le_bytes() {
        let header = 4 + 8 + 8 + 32;
        if bytes.len() < header {
            return Err(format!("truncated snapshot header ({} bytes)", bytes.len()));
        }
        let len = u64::from_le_bytes(bytes[4..12].try_into().map_err(|_| "length")?);
        let seq = u64::from_le_bytes(bytes[12..20].try_into().map_err(|_| "seq")?);
        if bytes.len() as u64 != header as u64 + len {
            return Err(format!(
                "snapshot of {} bytes announces {len}",
                bytes.len() - header
            ));
        }
        let payload = &bytes[header..];
        let mut hasher = blake3::Hasher::new();
        hasher.update(&len.to_le_bytes());
        hasher.update(&seq.to_le_bytes());
        hasher.update(payload);
        if hasher.finalize().as_bytes()[..] != bytes[20..52] {
            return Err("snapshot checksum mismatch".to_string());
        }
        return Ok(payload);
    }
    parse(bytes).map(|r| r.payload).map_err(|e| e.to_string())
}

/// Openraft's view of the state machine (`RaftStateMachine`).
#[derive(Clone)]
pub struct MachineStore(pub Arc<Machine>);

/// Openraft's snapshot builder: takes the block-boundary snapshot, or serialises
/// the engine now if none is waiting (a member that needs one before the first).
pub struct MachineSnapshotBuilder(Arc<Machine>);

impl RaftSnapshotBuilder<TypeConfig> for MachineSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let machine = &self.0;
        let mut state = machine.lock();
        let (meta, data) = match state.boundary.take() {
            Some(built) => built,
            None => {
                state.snapshot_counter += 1;
                let data = machine.snapshot_data(&state);
                let meta = SnapshotMeta {
                    last_log_id: state.last_applied,
                    last_membership: state.membership.clone(),
                    snapshot_id: format!(
                        "{}-{}-{}",
                        state.last_applied.map_or(0, |l| l.leader_id.term),
                        state.last_applied.map_or(0, |l| l.index),
                        state.snapshot_counter
                    ),
                };
                (meta, data)
            }
        };
        store_snapshot(&mut state, &meta, &data)?;
        state.current = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MachineStore {
    type SnapshotBuilder = MachineSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.0.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<GroupApplied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let machine = &self.0;
        let mut state = machine.lock();
        let mut out = Vec::new();
        for entry in entries {
            debug_assert!(
                state
                    .last_applied
                    .is_none_or(|l| l.index < entry.log_id.index),
                "entries apply in log order"
            );
            let applied = match &entry.payload {
                EntryPayload::Blank => GroupApplied::NoRecords,
                EntryPayload::Normal(group) => {
                    machine.apply_group(&mut state, entry.log_id, group)?
                }
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    GroupApplied::NoRecords
                }
            };
            state.last_applied = Some(entry.log_id);
            machine
                .stats
                .applied_index_plus_one
                .store(entry.log_id.index + 1, Ordering::Relaxed);
            out.push(applied);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> MachineSnapshotBuilder {
        MachineSnapshotBuilder(self.0.clone())
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<MarketSnapshot>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<MarketSnapshot>,
    ) -> Result<(), StorageError> {
        let engine = restore_checked(&snapshot).map_err(|e| -> StorageError {
            tracing::error!(error = %e, snapshot = %meta.snapshot_id, "received snapshot refused");
            StorageIOError::read_snapshot(Some(meta.signature()), io_error(e)).into()
        })?;
        let machine = &self.0;
        let mut state = machine.lock();
        machine
            .observer
            .snapshot_loaded(&snapshot.replies)
            .map_err(|e| -> StorageError {
                tracing::error!(error = %e, snapshot = %meta.snapshot_id, "received snapshot refused");
                StorageIOError::read_snapshot(Some(meta.signature()), io_error(e.to_string())).into()
            })?;
        store_snapshot(&mut state, meta, &snapshot)?;
        state.engine = engine;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.next_seq = snapshot.next_seq;
        state.entries_since_snapshot = 0;
        state.boundary = None;
        state.current = Some((meta.clone(), *snapshot));
        machine
            .stats
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        machine.stats.applied_index_plus_one.store(
            meta.last_log_id.map_or(0, |l| l.index + 1),
            Ordering::Relaxed,
        );
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let state = self.0.lock();
        Ok(state.current.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(data.clone()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::faulty::{Faults, FaultyStorage};
    use openraft::{CommittedLeaderId, Membership};
    use yellowstone_engine::MarketConfig;

    fn machine(storage: &FaultyStorage) -> MachineStore {
        MachineStore(
            Machine::open(
                Box::new(storage.clone()),
                Engine::new(MarketConfig::default()),
                MachineConfig {
                    snapshot_every_entries: 1,
                    state_hashes_kept: 4,
                },
                Arc::new(NoObserver),
            )
            .unwrap(),
        )
    }

    fn entry(index: u64, group: GroupEntry) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(group),
        }
    }

    fn tick(now_ms: u64) -> Vec<u8> {
        JournalRecord {
            now_ms,
            command: Command::Tick,
        }
        .encode()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_stale_entry_is_skipped_alike_and_a_bad_record_stops_the_machine() {
        let rt = runtime();
        let mut store = machine(&FaultyStorage::new(Faults::default()));
        let genesis = MarketConfig::default().genesis_ms;
        let applied = rt
            .block_on(store.apply([
                entry(
                    1,
                    GroupEntry {
                        first_seq: 1,
                        records: vec![tick(genesis + 1), tick(genesis + 2)],
                    },
                ),
                entry(
                    2,
                    GroupEntry {
                        first_seq: 7,
                        records: vec![tick(genesis + 3)],
                    },
                ),
                entry(
                    3,
                    GroupEntry {
                        first_seq: 3,
                        records: vec![tick(genesis + 4)],
                    },
                ),
            ]))
            .unwrap();
        assert_eq!(
            applied,
            vec![
                GroupApplied::Applied { last_seq: 2 },
                GroupApplied::Stale {
                    expected: 3,
                    got: 7
                },
                GroupApplied::Applied { last_seq: 3 },
            ]
        );
        assert_eq!(store.0.next_seq(), 4);
        assert_eq!(store.0.stats.stale_entries.load(Ordering::Relaxed), 1);
        let bad = entry(
            4,
            GroupEntry {
                first_seq: 4,
                records: vec![b"not a record".to_vec()],
            },
        );
        assert!(rt.block_on(store.apply([bad])).is_err());
    }

    #[test]
    fn block_boundaries_record_hashes_and_snapshots_install_only_when_whole() {
        let rt = runtime();
        let storage = FaultyStorage::new(Faults::default());
        let mut store = machine(&storage);
        let genesis = MarketConfig::default().genesis_ms;
        let membership = Membership::new(vec![std::collections::BTreeSet::from([1u64])], None);
        rt.block_on(store.apply([Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 0),
            payload: EntryPayload::Membership(membership),
        }]))
        .unwrap();
        for (i, block) in (1..=6u64).enumerate() {
            let now = genesis + block * 12_000;
            rt.block_on(store.apply([entry(
                i as u64 + 1,
                GroupEntry {
                    first_seq: i as u64 + 1,
                    records: vec![tick(now)],
                },
            )]))
            .unwrap();
        }
        let hashes = store.0.state_hashes();
        assert_eq!(hashes.len(), 4, "bounded by state_hashes_kept");
        assert_eq!(hashes.last().unwrap().1, store.0.state_hash());
        // A boundary snapshot is waiting; the builder takes and stores it.
        let snapshot = rt.block_on(async {
            let mut builder = store.get_snapshot_builder().await;
            builder.build_snapshot().await.unwrap()
        });
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(6));
        assert_eq!(snapshot.snapshot.next_seq, 7);
        // A restart finds it.
        let reopened = machine(&storage);
        assert_eq!(reopened.0.state_hash(), store.0.state_hash());
        assert_eq!(reopened.0.applied(), snapshot.meta.last_log_id);
        // Another member installs it; a tampered copy is refused.
        let mut other = machine(&FaultyStorage::new(Faults::default()));
        let mut tampered = (*snapshot.snapshot).clone();
        tampered.engine[10] ^= 1;
        assert!(rt
            .block_on(other.install_snapshot(&snapshot.meta, Box::new(tampered)))
            .is_err());
        rt.block_on(other.install_snapshot(&snapshot.meta, snapshot.snapshot.clone()))
            .unwrap();
        assert_eq!(other.0.state_hash(), store.0.state_hash());
        assert_eq!(other.0.next_seq(), 7);
    }
}
