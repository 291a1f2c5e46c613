//! The journal as the engine thread sees it (`Durability`), and the two threads
//! behind it: the writer, which group-commits whatever the engine appended since its
//! last write (one write and one fdatasync per group, through io_uring when it is
//! available), and the snapshot thread, which writes engine snapshots off the
//! engine thread and then prunes what they cover.

use super::error::{ChoiceError, JournalError};
use super::files;
use super::pacer::GroupPacer;
use super::record;
use super::storage::{FileStorage, Storage};
use super::uring_file::JournalIo;
use super::Durability;
use crossbeam_channel::{Receiver, Sender};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When a command counts as durable (Redis' appendfsync).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurabilityMode {
    /// Replies leave only after the command's record is fsynced (default).
    Always,
    /// Replies leave at once; the writer fsyncs every `fsync_interval_ms`.
    Interval,
    /// Replies leave at once; the kernel writes back when it likes.
    None,
}

impl std::str::FromStr for DurabilityMode {
    type Err = ChoiceError;
    fn from_str(text: &str) -> Result<Self, ChoiceError> {
        match text {
            "always" => Ok(DurabilityMode::Always),
            "interval" => Ok(DurabilityMode::Interval),
            "none" => Ok(DurabilityMode::None),
            other => Err(ChoiceError {
                key: "durability",
                allowed: "always, interval or none",
                value: other.to_string(),
            }),
        }
    }
}

#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub dir: PathBuf,
    pub mode: DurabilityMode,
    pub fsync_interval_ms: u64,
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes_max: u64,
    /// Appended bytes not yet written; the engine waits when the writer is this far
    /// behind (backpressure instead of unbounded memory).
    pub buffer_bytes_max: usize,
    /// How writes are made durable (`journal.io`; default io_uring, write and
    /// fdatasync linked in one submission).
    pub io: JournalIo,
    /// Zero-filled room kept ahead of the write offset in the open segment, bytes
    /// (0: none; the file then grows with every write and each fdatasync also
    /// commits the new size).
    pub preallocate_bytes: u64,
    /// Snapshots kept; segments are removed once the oldest kept one covers them.
    pub snapshots_kept: usize,
    /// Core for the journal and snapshot threads (None: unpinned).
    pub core: Option<usize>,
    /// Group commit window: a group is written no sooner than this after the
    /// previous group started (0: as soon as the previous one is done). Under steady
    /// load this trades up to this much latency per durable step for far fewer
    /// writes and fsyncs (each costs CPU and a device flush); after a quiet spell
    /// the first record goes at once. Waits for a flush, a snapshot or a sealed
    /// block never sit out the window.
    pub group_commit_us: u64,
    /// A group this large is written without waiting for the window to end.
    pub group_bytes_max: usize,
    /// Adaptive group commit (used when `group_commit_us` is 0, in `always`): the
    /// longest a group is held once fsyncs run back to back (`pacer`); zero: pure
    /// natural group commit.
    pub group_commit_adaptive_max_us: u64,
    /// A snapshot is written back this many bytes at a time (0: at once, one fsync
    /// at the end), so journal fsyncs never queue behind a whole snapshot.
    pub snapshot_write_chunk_bytes: usize,
}

impl JournalConfig {
    /// Zero-filled room ahead: never more than a segment holds.
    fn preallocate(&self) -> u64 {
        self.preallocate_bytes.min(self.segment_bytes_max)
    }

    pub fn new(dir: PathBuf, mode: DurabilityMode) -> JournalConfig {
        JournalConfig {
            dir,
            mode,
            fsync_interval_ms: 10,
            segment_bytes_max: 256 * 1024 * 1024,
            buffer_bytes_max: 64 * 1024 * 1024,
            io: JournalIo::Uring,
            preallocate_bytes: 4 * 1024 * 1024,
            snapshots_kept: 2,
            core: None,
            group_commit_us: 0,
            group_bytes_max: 1024 * 1024,
            group_commit_adaptive_max_us: 500,
            snapshot_write_chunk_bytes: 1024 * 1024,
        }
    }
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    first_seq: u64,
    last_seq: u64,
    /// Someone (flush, a snapshot) needs everything up to here fsynced.
    sync_to: u64,
    closing: bool,
    writer_waiting: bool,
    /// The writer sits out the group commit window; wake it only for a full group.
    writer_in_window: bool,
    /// The first failure; every later caller gets it (fail-stop).
    failure: Option<Arc<JournalError>>,
}

/// Counters an operator can watch.
#[derive(Default, Debug)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub writes: AtomicU64,
    pub fsyncs: AtomicU64,
    /// Groups the adaptive pacer held back to gather more records.
    pub held_groups: AtomicU64,
    pub snapshots: AtomicU64,
    pub segments_removed: AtomicU64,
}

struct Shared {
    pending: Mutex<Pending>,
    stats: Arc<JournalStats>,
    /// The writer waits here for records.
    work: Condvar,
    /// The engine waits here when the buffer is full.
    room: Condvar,
    /// Flushes and snapshots wait here for fsyncs.
    synced: Condvar,
    written_seq: AtomicU64,
    synced_seq: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panicking writer leaves the data consistent enough to report its failure.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, error: JournalError) {
        tracing::error!(%error, "journal failed: no further command can become durable");
        self.lock().failure.get_or_insert(Arc::new(error));
        self.work.notify_all();
        self.room.notify_all();
        self.synced.notify_all();
    }

    /// Asks the writer to fsync every record up to `seq`, without waiting; the
    /// writer announces it on the updates channel.
    fn ask_sync(&self, seq: u64) -> Result<(), JournalError> {
        let mut pending = self.lock();
        if let Some(failure) = &pending.failure {
            return Err(JournalError::Stopped(failure.clone()));
        }
        if self.synced_seq.load(Ordering::Acquire) >= seq || pending.sync_to >= seq {
            return Ok(());
        }
        pending.sync_to = seq;
        drop(pending);
        self.work.notify_one();
        Ok(())
    }

    /// Blocks until every record up to `seq` is fsynced.
    fn sync_up_to(&self, seq: u64) -> Result<(), JournalError> {
        let mut pending = self.lock();
        if self.synced_seq.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        pending.sync_to = pending.sync_to.max(seq);
        self.work.notify_one();
        while self.synced_seq.load(Ordering::Acquire) < seq {
            if let Some(failure) = &pending.failure {
                return Err(JournalError::Stopped(failure.clone()));
            }
            pending = self.synced.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        Ok(())
    }
}

pub struct Journal {
    shared: Arc<Shared>,
    mode: DurabilityMode,
    next_seq: u64,
    buffer_bytes_max: usize,
    group_bytes_max: usize,
    updates: Receiver<u64>,
    writer: Option<JoinHandle<()>>,
    snapshot_jobs: Option<Sender<(u64, Vec<u8>)>>,
    snapshotter: Option<JoinHandle<()>>,
}

impl Journal {
    /// Opens the journal for appending from `next_seq` (1 on a fresh directory, the
    /// recovered last seq + 1 otherwise), in a new segment in `config.dir`.
    pub fn open(config: JournalConfig, next_seq: u64) -> Result<Journal, JournalError> {
        let storage = FileStorage::new(config.dir.clone(), config.io, config.preallocate())
            .with_replace_chunk_bytes(config.snapshot_write_chunk_bytes);
        Journal::open_on(storage, config, next_seq)
    }

    /// [`Journal::open`] with the segments and snapshots on `storage` (a test's
    /// `faulty::FaultyStorage`); `config.dir` is then unused.
    pub fn open_on<S: Storage + 'static>(
        mut storage: S,
        config: JournalConfig,
        next_seq: u64,
    ) -> Result<Journal, JournalError> {
        assert!(next_seq >= 1, "sequence numbers start at 1");
        let segment = files::segment_name(next_seq);
        storage.create(&segment, &files::segment_header(next_seq))?;
        let mut snapshot_storage = storage.handle();
        let last = next_seq - 1;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            work: Condvar::new(),
            room: Condvar::new(),
            synced: Condvar::new(),
            written_seq: AtomicU64::new(last),
            synced_seq: AtomicU64::new(last),
            stats: Arc::new(JournalStats::default()),
        });
        let (updates_tx, updates) = crossbeam_channel::bounded(1);
        let writer = {
            let (shared, config) = (shared.clone(), config.clone());
            std::thread::Builder::new()
                .name("ys-journal".into())
                .spawn(move || {
                    crate::net::pin_current_thread(config.core);
                    let max_hold = Duration::from_micros(config.group_commit_adaptive_max_us);
                    let mut writer = Writer {
                        shared: shared.clone(),
                        config,
                        storage,
                        segment,
                        segment_len: files::SEGMENT_HEADER_BYTES as u64,
                        updates: updates_tx,
                        spare: Vec::new(),
                        last_sync: Instant::now(),
                        last_group: None,
                        pacer: GroupPacer::new(max_hold),
                    };
                    if let Err(error) = writer.run() {
                        shared.fail(error);
                    }
                })
                .map_err(|source| JournalError::Thread {
                    thread: "journal",
                    source,
                })?
        };
        let (jobs_tx, jobs) = crossbeam_channel::bounded::<(u64, Vec<u8>)>(1);
        let snapshotter = {
            let (shared, config) = (shared.clone(), config.clone());
            std::thread::Builder::new()
                .name("ys-snapshot".into())
                .spawn(move || {
                    crate::net::pin_current_thread(config.core);
                    for (seq, state) in jobs {
                        let written =
                            write_snapshot(&shared, &config, &mut snapshot_storage, seq, &state);
                        if let Err(error) = written {
                            // A missed snapshot costs replay time, not data.
                            tracing::error!(%error, seq, "snapshot not written");
                        }
                    }
                })
                .map_err(|source| JournalError::Thread {
                    thread: "snapshot",
                    source,
                })?
        };
        Ok(Journal {
            shared,
            mode: config.mode,
            next_seq,
            buffer_bytes_max: config.buffer_bytes_max.max(1),
            group_bytes_max: config.group_bytes_max.max(1),
            updates,
            writer: Some(writer),
            snapshot_jobs: Some(jobs_tx),
            snapshotter: Some(snapshotter),
        })
    }

    pub fn stats(&self) -> &JournalStats {
        &self.shared.stats
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn mode(&self) -> DurabilityMode {
        self.mode
    }

    /// Where another thread (the snapshot replica) hands finished snapshots to the
    /// snapshot thread; holds one job, so a busy writer means a skipped snapshot.
    /// Every clone must be dropped before the journal closes (its drop waits).
    pub fn snapshot_sender(&self) -> Option<Sender<(u64, Vec<u8>)>> {
        self.snapshot_jobs.clone()
    }

    fn close(&mut self) {
        self.snapshot_jobs = None;
        if let Some(snapshotter) = self.snapshotter.take() {
            let _ = snapshotter.join();
        }
        self.shared.lock().closing = true;
        self.shared.work.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Durability for Journal {
    fn append(&mut self, payload: &[u8]) -> Result<u64, JournalError> {
        let seq = self.next_seq;
        let mut pending = self.shared.lock();
        while pending.bytes.len() >= self.buffer_bytes_max && pending.failure.is_none() {
            pending = self
                .shared
                .room
                .wait(pending)
                .unwrap_or_else(|e| e.into_inner());
        }
        if let Some(failure) = &pending.failure {
            return Err(JournalError::Stopped(failure.clone()));
        }
        if pending.bytes.is_empty() {
            pending.first_seq = seq;
        }
        // Sequence numbers are handed out in order, one per record, no gaps.
        debug_assert!(pending.bytes.is_empty() || pending.last_seq + 1 == seq);
        debug_assert!(seq > self.shared.written_seq.load(Ordering::Acquire));
        record::encode_into(&mut pending.bytes, seq, payload)?;
        pending.last_seq = seq;
        let wake = pending.writer_waiting
            || (pending.writer_in_window && pending.bytes.len() >= self.group_bytes_max);
        drop(pending);
        if wake {
            self.shared.work.notify_one();
        }
        self.next_seq += 1;
        Ok(seq)
    }

    fn durable_updates(&self) -> Receiver<u64> {
        self.updates.clone()
    }

    fn durable_seq(&self) -> u64 {
        match self.mode {
            DurabilityMode::Always => self.shared.synced_seq.load(Ordering::Acquire),
            DurabilityMode::Interval | DurabilityMode::None => self.next_seq - 1,
        }
    }

    fn snapshot(&mut self, seq: u64, state: Vec<u8>) -> Result<(), JournalError> {
        let Some(jobs) = &self.snapshot_jobs else {
            return Ok(());
        };
        if jobs.try_send((seq, state)).is_err() {
            tracing::warn!(
                seq,
                "snapshot skipped: the previous one is still being written"
            );
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), JournalError> {
        self.shared.sync_up_to(self.next_seq - 1)
    }

    fn stats(&self) -> Option<Arc<JournalStats>> {
        Some(self.shared.stats.clone())
    }

    fn synced_seq(&self) -> u64 {
        self.shared.synced_seq.load(Ordering::Acquire)
    }

    fn request_sync(&mut self, seq: u64) -> Result<(), JournalError> {
        match self.mode {
            // Every record is fsynced as it is written; asking still lets a group
            // that holds a sealed block go without sitting out a hold or window.
            DurabilityMode::Always | DurabilityMode::Interval | DurabilityMode::None => {
                self.shared.ask_sync(seq)
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer<S: Storage> {
    shared: Arc<Shared>,
    config: JournalConfig,
    storage: S,
    /// The open segment's file name.
    segment: String,
    /// The open segment's data length, header included, bytes.
    segment_len: u64,
    updates: Sender<u64>,
    spare: Vec<u8>,
    last_sync: Instant,
    /// When the last group's write started (the group commit window counts from it).
    last_group: Option<Instant>,
    /// Adaptive group commit (when the fixed window is 0).
    pacer: GroupPacer,
}

impl<S: Storage> Writer<S> {
    fn run(&mut self) -> Result<(), JournalError> {
        let interval = Duration::from_millis(self.config.fsync_interval_ms.max(1));
        loop {
            let (first_seq, last_seq, sync_to, closing) = {
                let mut pending = self.shared.lock();
                let mut was_idle = false;
                loop {
                    let synced = self.shared.synced_seq.load(Ordering::Acquire);
                    if !pending.bytes.is_empty() || pending.closing || pending.sync_to > synced {
                        break;
                    }
                    pending.writer_waiting = true;
                    was_idle = true;
                    let unsynced = self.shared.written_seq.load(Ordering::Acquire) > synced;
                    if self.config.mode == DurabilityMode::Interval && unsynced {
                        let left = interval.saturating_sub(self.last_sync.elapsed());
                        let (guard, timeout) = self
                            .shared
                            .work
                            .wait_timeout(pending, left)
                            .unwrap_or_else(|e| e.into_inner());
                        pending = guard;
                        if timeout.timed_out() {
                            pending.writer_waiting = false;
                            break;
                        }
                    } else {
                        pending = self
                            .shared
                            .work
                            .wait(pending)
                            .unwrap_or_else(|e| e.into_inner());
                    }
                    pending.writer_waiting = false;
                }
                pending = self.sit_out_window(pending, was_idle);
                std::mem::swap(&mut pending.bytes, &mut self.spare);
                (
                    pending.first_seq,
                    pending.last_seq,
                    pending.sync_to,
                    pending.closing,
                )
            };
            self.shared.room.notify_all();
            let group_written = !self.spare.is_empty();
            if group_written {
                self.write_group(first_seq, last_seq)?;
            }
            let written = self.shared.written_seq.load(Ordering::Acquire);
            let synced = self.shared.synced_seq.load(Ordering::Acquire);
            let interval_due = self.config.mode == DurabilityMode::Interval
                && self.last_sync.elapsed() >= interval;
            if written > synced && (sync_to > synced || interval_due || closing) {
                self.sync()?;
            }
            if closing && !group_written && self.shared.lock().bytes.is_empty() {
                // Everything is written (and synced above if asked): cut the zero tail.
                return Ok(self.storage.close(&self.segment)?);
            }
        }
    }

    /// Waits until the group commit window since the last group has passed (or, with
    /// no fixed window, until the adaptive pacer's hold ends), unless someone needs a
    /// sync now, the journal closes, or the group is already full. Appends during the
    /// wait join this group without waking the writer.
    fn sit_out_window<'a>(
        &self,
        mut pending: MutexGuard<'a, Pending>,
        was_idle: bool,
    ) -> MutexGuard<'a, Pending> {
        let window = Duration::from_micros(self.config.group_commit_us);
        let Some(last_group) = self.last_group else {
            return pending;
        };
        let due = if !window.is_zero() {
            last_group + window
        } else if self.config.mode == DurabilityMode::Always {
            match self.pacer.hold_until(was_idle) {
                Some(due) => due,
                None => return pending,
            }
        } else {
            return pending;
        };
        let mut counted = false;
        loop {
            let synced = self.shared.synced_seq.load(Ordering::Acquire);
            let now = Instant::now();
            if now >= due
                || pending.closing
                || pending.sync_to > synced
                || pending.failure.is_some()
                || pending.bytes.len() >= self.config.group_bytes_max
            {
                return pending;
            }
            if !counted {
                counted = true;
                self.shared
                    .stats
                    .held_groups
                    .fetch_add(1, Ordering::Relaxed);
            }
            pending.writer_in_window = true;
            let (guard, _) = self
                .shared
                .work
                .wait_timeout(pending, due - now)
                .unwrap_or_else(|e| e.into_inner());
            pending = guard;
            pending.writer_in_window = false;
        }
    }

    fn write_group(&mut self, first_seq: u64, last_seq: u64) -> Result<(), JournalError> {
        let started = Instant::now();
        self.last_group = Some(started);
        // The group continues the sequence on disk, and lands past the header.
        debug_assert_eq!(
            first_seq,
            self.shared.written_seq.load(Ordering::Acquire) + 1,
            "groups follow each other"
        );
        debug_assert!(first_seq <= last_seq);
        debug_assert!(self.segment_len >= files::SEGMENT_HEADER_BYTES as u64);
        if self.segment_len >= self.config.segment_bytes_max {
            self.roll(first_seq)?;
        }
        let always = self.config.mode == DurabilityMode::Always;
        self.storage.append(&self.segment, &self.spare, always)?;
        self.segment_len += self.spare.len() as u64;
        let stats = &self.shared.stats;
        stats
            .records
            .fetch_add(last_seq.saturating_sub(first_seq) + 1, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(self.spare.len() as u64, Ordering::Relaxed);
        stats.writes.fetch_add(1, Ordering::Relaxed);
        self.spare.clear();
        self.shared.written_seq.store(last_seq, Ordering::Release);
        if always {
            stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.mark_synced(last_seq);
            let records = last_seq.saturating_sub(first_seq) + 1;
            self.pacer.observe(started, Instant::now(), records);
        }
        // After the group is announced, so its waiters do not pay for it.
        self.storage.idle(&self.segment)?;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), JournalError> {
        let written = self.shared.written_seq.load(Ordering::Acquire);
        self.storage.sync(&self.segment)?;
        self.shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.mark_synced(written);
        Ok(())
    }

    fn mark_synced(&mut self, seq: u64) {
        debug_assert!(
            seq >= self.shared.synced_seq.load(Ordering::Acquire),
            "synced only grows"
        );
        debug_assert!(
            seq <= self.shared.written_seq.load(Ordering::Acquire),
            "synced <= written"
        );
        self.last_sync = Instant::now();
        // Publish under the lock so a waiter cannot miss the notification.
        let guard = self.shared.lock();
        self.shared.synced_seq.store(seq, Ordering::Release);
        drop(guard);
        self.shared.synced.notify_all();
        let _ = self.updates.try_send(seq);
    }

    /// Closes the full segment (zero tail cut, fsynced whatever the mode: a closed
    /// segment is never written again) and starts the next at `first_seq`.
    fn roll(&mut self, first_seq: u64) -> Result<(), JournalError> {
        self.storage.close(&self.segment)?;
        let written = self.shared.written_seq.load(Ordering::Acquire);
        self.mark_synced(written);
        let segment = files::segment_name(first_seq);
        self.storage
            .create(&segment, &files::segment_header(first_seq))?;
        self.segment = segment;
        self.segment_len = files::SEGMENT_HEADER_BYTES as u64;
        Ok(())
    }
}

/// Writes one snapshot once the records it covers are on disk, then removes old
/// snapshots and the segments the oldest kept snapshot covers.
fn write_snapshot<S: Storage>(
    shared: &Shared,
    config: &JournalConfig,
    storage: &mut S,
    seq: u64,
    state: &[u8],
) -> Result<(), JournalError> {
    // A snapshot must never be ahead of the journal: after a crash, the next record
    // would otherwise reuse a sequence number the snapshot already contains.
    shared.sync_up_to(seq)?;
    debug_assert!(shared.synced_seq.load(Ordering::Acquire) >= seq);
    let started = Instant::now();
    let header = files::snapshot_header(seq, state);
    storage.replace(&files::snapshot_name(seq), &[&header, state])?;
    shared.stats.snapshots.fetch_add(1, Ordering::Relaxed);
    let removed = prune(storage, config.snapshots_kept, seq)?;
    shared
        .stats
        .segments_removed
        .fetch_add(removed, Ordering::Relaxed);
    tracing::info!(
        seq,
        bytes = state.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        segments_removed = removed,
        "snapshot written"
    );
    Ok(())
}

/// Removes snapshots beyond the newest `snapshots_kept` (up to `newest`), and the
/// segments the oldest kept snapshot covers. Returns the segments removed.
pub(crate) fn prune<S: Storage>(
    storage: &mut S,
    snapshots_kept: usize,
    newest: u64,
) -> Result<u64, JournalError> {
    let listing = files::Names::sort(storage.list()?);
    let kept = snapshots_kept.max(1);
    let snapshots: Vec<_> = listing
        .snapshots
        .iter()
        .filter(|(seq, _)| *seq <= newest)
        .collect();
    let mut doomed: Vec<&str> = Vec::new();
    let mut covered = 0;
    if snapshots.len() > kept {
        for (_, name) in &snapshots[..snapshots.len() - kept] {
            doomed.push(name);
        }
    }
    if let Some((oldest_kept, _)) = snapshots
        .len()
        .checked_sub(kept.min(snapshots.len()))
        .and_then(|first_kept| snapshots.get(first_kept))
    {
        covered = *oldest_kept;
    }
    // A segment is covered when the next one starts at or before covered + 1; the
    // last segment is the one being written and is never removed.
    let mut removed = 0;
    for pair in listing.segments.windows(2) {
        let ((_, name), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first <= covered + 1 {
            doomed.push(name);
            removed += 1;
        }
    }
    debug_assert!(
        listing
            .segments
            .last()
            .is_none_or(|(_, open)| !doomed.contains(&open.as_str())),
        "the segment being written is never removed"
    );
    storage.delete_all(&doomed)?;
    Ok(removed)
}
