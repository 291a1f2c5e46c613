//! The Raft log on disk (REPL_DESIGN.md "Log storage"; openraft's `RaftLogStorage`,
//! storage-v2): the journal's record framing (length, seq, BLAKE3 checksum) over the
//! journal's [`Storage`] trait, in `<data_dir>/raft/`, so that `FaultyStorage` can
//! tear it in tests.
//!
//! Files:
//! - `raft-log-<first index, 20 digits>`: segments of framed records, each a
//!   bincode [`LogRecord`]: an entry (frame seq = log index + 1) or a commit mark
//!   (`save_committed`). The last segment is the open one; a segment is closed and a
//!   new one started past `cluster.log_segment_bytes`, after a truncation and at every
//!   start.
//! - `raft-vote`, `raft-purged`: one framed record each, replaced atomically and
//!   durably (`Storage::replace`).
//!
//! IO ordering (openraft "IO ordering" / `LogFlushed`): every operation goes, in
//! call order, to one writer (a thread owning the storage; in the simulation, the
//! caller's task). Appends are written without a sync; when the writer runs out of
//! queued work it syncs once and only then fires the `LogFlushed` callbacks of every
//! append the sync covers (group commit). A vote is replaced durably before any later
//! log write (of its term) is even started; a truncation or purge first syncs and
//! reports what is pending, then cuts, durably, before returning.
//!
//! Recovery: segments are read in order; the first record that does not check out in
//! the last segment, with no valid entry after it (`classify::valid_record_after`), is
//! a torn tail (what a crash leaves of an unsynced suffix) and the segment is cut
//! there; one in an earlier segment, one followed by a valid entry, or an entry out
//! of order, is corruption and refuses the start ([`ReplicationError::CorruptLog`]).

use super::types::{decode, encode, Entry, LogId, StorageError, TypeConfig, Vote};
use super::ReplicationError;
use crate::journal::record::{encode_into, parse};
use crate::journal::{Storage, StorageError as FileError};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// The vote's file.
pub const VOTE_FILE: &str = "raft-vote";
/// The last purged log id's file.
pub const PURGED_FILE: &str = "raft-purged";
/// Segment names start with this, then the first log index in 20 digits.
pub const SEGMENT_PREFIX: &str = "raft-log-";

/// One record of a segment.
#[derive(Debug, Serialize, Deserialize)]
pub enum LogRecord {
    /// A Raft log entry.
    Entry(Entry),
    /// The committed log id as of this point (`save_committed`; not synced by itself).
    Committed(Option<LogId>),
}

/// Counters of the log (metrics, tests).
#[derive(Default, Debug)]
pub struct LogStats {
    /// fsyncs of log segments.
    pub syncs: AtomicU64,
    /// Entries written.
    pub entries_written: AtomicU64,
    /// `LogFlushed` callbacks fired.
    pub flushes_reported: AtomicU64,
    /// The committed index + 1 last saved (0: none).
    pub committed_plus_one: AtomicU64,
    /// Torn tails cut at recovery.
    pub torn_tails_cut: AtomicU64,
}

fn segment_name(first_index: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_index:020}")
}

fn file_io(e: FileError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

struct Segment {
    name: String,
    len: u64,
    /// (log index, byte offset) of every entry in the segment, in order.
    offsets: Vec<(u64, u64)>,
}

/// The writer's state: the storage and where every entry sits in it.
pub struct Disk {
    storage: Box<dyn Storage>,
    /// By first index; the last one is open.
    segments: BTreeMap<u64, Segment>,
    open: Option<u64>,
    segment_bytes: u64,
    unsynced: bool,
    waiting: Vec<LogFlushed<TypeConfig>>,
    broken: Option<String>,
    buf: Vec<u8>,
    stats: Arc<LogStats>,
}

/// What recovery found.
pub struct Recovered {
    /// The stored vote.
    pub vote: Option<Vote>,
    /// The last commit mark at or below the last entry.
    pub committed: Option<LogId>,
    /// The last purged log id.
    pub purged: Option<LogId>,
    /// Every entry after `purged`, by index.
    pub entries: BTreeMap<u64, Entry>,
}

fn read_single<T: for<'de> Deserialize<'de>>(
    storage: &mut dyn Storage,
    names: &[String],
    name: &str,
) -> Result<Option<T>, ReplicationError> {
    if !names.iter().any(|n| n == name) {
        return Ok(None);
    }
    let bytes = storage.read(name)?;
    let bad = |what: String| ReplicationError::BadFile {
        file: name.to_string(),
        what,
    };
    let record = parse(&bytes).map_err(|e| bad(e.to_string()))?;
    if record.framed_len != bytes.len() {
        return Err(bad(format!(
            "{} bytes after the record",
            bytes.len() - record.framed_len
        )));
    }
    decode(record.payload)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

impl Disk {
    /// Reads `<data_dir>/raft/` (see the module comment), cuts a torn tail, and
    /// opens a new segment for appends.
    /// Errors: unreadable files, corruption before the tail, a bad vote or purge file.
    pub fn recover(
        mut storage: Box<dyn Storage>,
        segment_bytes: u64,
        stats: Arc<LogStats>,
    ) -> Result<(Disk, Recovered), ReplicationError> {
        let names = storage.list()?;
        let vote: Option<Vote> = read_single(storage.as_mut(), &names, VOTE_FILE)?;
        let purged: Option<LogId> = read_single(storage.as_mut(), &names, PURGED_FILE)?;
        let mut firsts: Vec<u64> = names
            .iter()
            .filter_map(|n| n.strip_prefix(SEGMENT_PREFIX)?.parse().ok())
            .collect();
        firsts.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut entries = BTreeMap::new();
        let mut committed = None;
        let mut last_index: Option<u64> = purged.map(|p| p.index);
        for (i, &first) in firsts.iter().enumerate() {
            let name = segment_name(first);
            let is_last = i + 1 == firsts.len();
            let bytes = storage.read(&name)?;
            let corrupt = |what: String| ReplicationError::CorruptLog {
                file: name.clone(),
                what,
            };
            let mut pos = 0usize;
            let mut offsets = Vec::new();
            while pos < bytes.len() {
                let record = match parse(&bytes[pos..]) {
                    Ok(record) => record,
                    Err(fault)
                        if is_last
                            && !crate::journal::classify::valid_record_after(
                                &bytes,
                                pos,
                                last_index.map_or(1, |l| l + 2),
                            ) =>
                    {
                        // Nothing valid follows: what a crash leaves of an unsynced
                        // suffix. (A valid entry after the damage would mean synced
                        // data was hit: refused below, like the journal's recovery.)
                        tracing::warn!(
                            segment = %name,
                            offset = pos,
                            %fault,
                            "raft log: torn tail cut (an unsynced suffix a crash left)"
                        );
                        stats.torn_tails_cut.fetch_add(1, Ordering::Relaxed);
                        storage.truncate(&name, pos as u64)?;
                        break;
                    }
                    Err(fault) => return Err(corrupt(format!("offset {pos}: {fault}"))),
                };
                let decoded: LogRecord =
                    decode(record.payload).map_err(|e| corrupt(format!("offset {pos}: {e}")))?;
                match decoded {
                    LogRecord::Entry(entry) => {
                        let index = entry.log_id.index;
                        if record.seq != index + 1 {
                            return Err(corrupt(format!(
                                "offset {pos}: entry {index} framed as seq {}",
                                record.seq
                            )));
                        }
                        offsets.push((index, pos as u64));
                        if purged.is_some_and(|p| index <= p.index) {
                            // Purged, the segment not yet removed.
                        } else {
                            if let Some(last) = last_index {
                                if index != last + 1 {
                                    return Err(corrupt(format!(
                                        "offset {pos}: entry {index} follows entry {last}"
                                    )));
                                }
                            }
                            last_index = Some(index);
                            entries.insert(index, entry);
                        }
                    }
                    LogRecord::Committed(c) => committed = c,
                }
                pos += record.framed_len;
            }
            segments.insert(
                first,
                Segment {
                    name,
                    len: pos as u64,
                    offsets,
                },
            );
        }
        // A commit mark never runs ahead of the entries before it; clamp anyway.
        let last_log = entries
            .values()
            .next_back()
            .map(|e: &Entry| e.log_id)
            .or(purged);
        if committed.is_some_and(|c: LogId| last_log.is_none_or(|l| c.index > l.index)) {
            committed = last_log;
        }
        let next = last_log.map_or(0, |l| l.index + 1);
        let mut disk = Disk {
            storage,
            segments,
            open: None,
            segment_bytes,
            unsynced: false,
            waiting: Vec::new(),
            broken: None,
            buf: Vec::new(),
            stats,
        };
        disk.open_segment(next)?;
        Ok((
            disk,
            Recovered {
                vote,
                committed,
                purged,
                entries,
            },
        ))
    }

    /// Starts a new open segment whose first entry will be `first_index` (replacing
    /// an empty segment of that name).
    fn open_segment(&mut self, first_index: u64) -> Result<(), FileError> {
        if let Some(open) = self.open.take() {
            let name = self.segments[&open].name.clone();
            self.storage.close(&name)?;
        }
        let name = segment_name(first_index);
        self.storage.create(&name, &[])?;
        self.segments.insert(
            first_index,
            Segment {
                name,
                len: 0,
                offsets: Vec::new(),
            },
        );
        self.open = Some(first_index);
        Ok(())
    }

    fn check(&self) -> Result<(), std::io::Error> {
        match &self.broken {
            Some(what) => Err(std::io::Error::other(format!(
                "raft log failed earlier: {what}"
            ))),
            None => Ok(()),
        }
    }

    fn fail(&mut self, what: String) -> std::io::Error {
        tracing::error!(what, "raft log write failed: the member stops (fail-stop)");
        self.broken = Some(what.clone());
        std::io::Error::other(what)
    }

    fn append_record(
        &mut self,
        seq: u64,
        record: &LogRecord,
        index: Option<u64>,
    ) -> Result<(), std::io::Error> {
        self.check()?;
        let payload = encode(record).map_err(|e| self.fail(format!("encode: {e}")))?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let framed = encode_into(&mut buf, seq, &payload);
        let result = framed.map_err(|e| self.fail(e.to_string())).and_then(|()| {
            let open = self
                .open
                .ok_or_else(|| self.fail("no open segment".into()))?;
            if index.is_some() && self.segments[&open].len >= self.segment_bytes {
                // Roll before an entry (never between a commit mark and its entries:
                // marks go where they fall).
                self.open_segment(index.unwrap_or(open))
                    .map_err(|e| self.fail(e.to_string()))?;
            }
            let open = self
                .open
                .ok_or_else(|| self.fail("no open segment".into()))?;
            let segment = self
                .segments
                .get_mut(&open)
                .ok_or_else(|| std::io::Error::other("open segment missing"))?;
            let offset = segment.len;
            let name = segment.name.clone();
            self.storage
                .append(&name, &buf, false)
                .map_err(|e| self.fail(e.to_string()))?;
            let segment = self
                .segments
                .get_mut(&open)
                .ok_or_else(|| std::io::Error::other("open segment missing"))?;
            segment.len += buf.len() as u64;
            if let Some(index) = index {
                segment.offsets.push((index, offset));
            }
            self.unsynced = true;
            Ok(())
        });
        self.buf = buf;
        result
    }

    /// Writes `entries` (no sync); `callback` fires after the sync covering them.
    pub fn write_entries(&mut self, entries: &[Entry], callback: LogFlushed<TypeConfig>) {
        for entry in entries {
            let record = LogRecord::Entry(entry.clone());
            if let Err(e) =
                self.append_record(entry.log_id.index + 1, &record, Some(entry.log_id.index))
            {
                callback.log_io_completed(Err(e));
                return;
            }
            self.stats.entries_written.fetch_add(1, Ordering::Relaxed);
        }
        self.waiting.push(callback);
    }

    /// Writes a commit mark (no sync of its own).
    pub fn write_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        let seq = committed.map_or(1, |c| c.index + 1);
        self.append_record(seq, &LogRecord::Committed(committed), None)
    }

    /// Syncs the open segment if anything was written since the last sync, then fires
    /// every waiting callback (with the sync's result).
    pub fn sync_and_report(&mut self) {
        if self.unsynced {
            let result = self.check().and_then(|()| {
                let open = self
                    .open
                    .ok_or_else(|| std::io::Error::other("no open segment"))?;
                let name = self.segments[&open].name.clone();
                self.storage.sync(&name).map_err(file_io)
            });
            let result = result.map_err(|e| self.fail(e.to_string()));
            self.unsynced = false;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            let synced = result.is_ok();
            for callback in self.waiting.drain(..) {
                let result = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                };
                callback.log_io_completed(result);
                self.stats.flushes_reported.fetch_add(1, Ordering::Relaxed);
            }
            // Off the durable path: top up the zero-filled room ahead of the data, so
            // the next fdatasync has no file size to write.
            if let (true, Some(open)) = (synced, self.open) {
                let name = self.segments[&open].name.clone();
                if let Err(e) = self.storage.idle(&name) {
                    tracing::warn!(error = %e, "raft log: keeping the segment's room failed");
                }
            }
        } else {
            let failed = self.check().err().map(|e| e.to_string());
            for callback in self.waiting.drain(..) {
                callback.log_io_completed(match &failed {
                    None => Ok(()),
                    Some(e) => Err(std::io::Error::other(e.clone())),
                });
                self.stats.flushes_reported.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Replaces the vote, durably.
    pub fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.sync_and_report();
        let payload =
            encode(vote).map_err(|e| StorageIOError::write_vote(AnyError::error(e.to_string())))?;
        let mut framed = Vec::new();
        encode_into(&mut framed, 1, &payload)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.storage
            .replace(VOTE_FILE, &[&framed])
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    /// Removes every entry from `index` on, durably; appends continue in a new segment.
    pub fn truncate(&mut self, index: u64) -> Result<(), StorageError> {
        self.sync_and_report();
        self.check().map_err(write_err)?;
        if let Some(open) = self.open.take() {
            let name = self.segments[&open].name.clone();
            self.storage.close(&name).map_err(write_err)?;
        }
        let doomed: Vec<u64> = self.segments.range(index..).map(|(k, _)| *k).collect();
        let names: Vec<String> = doomed
            .iter()
            .map(|k| self.segments[k].name.clone())
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.storage.delete_all(&refs).map_err(write_err)?;
        for k in doomed {
            self.segments.remove(&k);
        }
        if let Some((_, segment)) = self.segments.range_mut(..index).next_back() {
            if let Some(at) = segment.offsets.iter().position(|(i, _)| *i >= index) {
                let cut = segment.offsets[at].1;
                segment.offsets.truncate(at);
                segment.len = cut;
                let name = segment.name.clone();
                self.storage.truncate(&name, cut).map_err(write_err)?;
            }
        }
        self.open_segment(index).map_err(write_err)
    }

    /// Records `log_id` as purged (durably), then removes every closed segment whose
    /// entries are all at or below it.
    pub fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.sync_and_report();
        self.check().map_err(write_err)?;
        let payload = encode(&log_id).map_err(write_err)?;
        let mut framed = Vec::new();
        encode_into(&mut framed, 1, &payload).map_err(write_err)?;
        self.storage
            .replace(PURGED_FILE, &[&framed])
            .map_err(write_err)?;
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut doomed = Vec::new();
        for pair in firsts.windows(2) {
            // Segment pair[0] holds indexes below pair[1].
            if pair[1] <= log_id.index + 1 && Some(pair[0]) != self.open {
                doomed.push(pair[0]);
            }
        }
        let names: Vec<String> = doomed
            .iter()
            .map(|k| self.segments[k].name.clone())
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.storage.delete_all(&refs).map_err(write_err)?;
        for k in doomed {
            self.segments.remove(&k);
        }
        Ok(())
    }

    /// Closes the open segment (durable, nothing after its data).
    pub fn close(&mut self) {
        self.sync_and_report();
        if let Some(open) = self.open.take() {
            let name = self.segments[&open].name.clone();
            if let Err(e) = self.storage.close(&name) {
                tracing::warn!(error = %e, "raft log: closing the open segment failed");
            }
        }
    }

    /// Segment names present (tests).
    pub fn segment_names(&self) -> Vec<String> {
        self.segments.values().map(|s| s.name.clone()).collect()
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<(), StorageError>>;

enum Op {
    Append(Vec<Entry>, LogFlushed<TypeConfig>),
    Committed(Option<LogId>),
    Vote(Vote, Reply),
    Truncate(u64, Reply),
    Purge(LogId, Reply),
}

/// Who does the IO: a writer thread (the real member), or the calling task with the
/// sync deferred to a spawned task (the simulation: no thread, so paused time does
/// not jump while IO runs; a crash before the deferred sync loses the unsynced
/// suffix, as a real crash would).
enum Writer {
    Thread {
        ops: std::sync::mpsc::Sender<Op>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Inline {
        disk: Arc<Mutex<Disk>>,
        sync_scheduled: Arc<AtomicBool>,
    },
}

fn lock_disk(disk: &Mutex<Disk>) -> MutexGuard<'_, Disk> {
    disk.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_writer(mut disk: Disk, ops: std::sync::mpsc::Receiver<Op>) {
    let mut next = ops.recv().ok();
    while let Some(op) = next {
        match op {
            Op::Append(entries, callback) => disk.write_entries(&entries, callback),
            Op::Committed(c) => {
                if let Err(e) = disk.write_committed(c) {
                    tracing::error!(error = %e, "raft log: commit mark not written");
                }
            }
            Op::Vote(vote, reply) => {
                let _ = reply.send(disk.save_vote(&vote));
            }
            Op::Truncate(index, reply) => {
                let _ = reply.send(disk.truncate(index));
            }
            Op::Purge(log_id, reply) => {
                let _ = reply.send(disk.purge(log_id));
            }
        }
        next = match ops.try_recv() {
            Ok(op) => Some(op),
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                // Out of queued work: one sync covers every append so far.
                disk.sync_and_report();
                ops.recv().ok()
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
        };
    }
    disk.close();
}

#[derive(Default)]
struct Cache {
    entries: BTreeMap<u64, Entry>,
}

/// The openraft log storage; see the module comment.
pub struct LogStore {
    cache: Arc<RwLock<Cache>>,
    writer: Writer,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    /// Counters.
    pub stats: Arc<LogStats>,
}

/// Reads entries while the log store appends (openraft's replication tasks).
#[derive(Clone)]
pub struct LogReader {
    cache: Arc<RwLock<Cache>>,
}

fn range_of<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl LogReader {
    fn read(&self, range: (Bound<u64>, Bound<u64>)) -> Vec<Entry> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.entries.range(range).map(|(_, e)| e.clone()).collect()
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.read(range_of(&range)))
    }
}

impl LogStore {
    /// Recovers the log from `storage` and starts its writer: a thread, or with
    /// `inline` the calling task (simulation).
    /// Errors: see [`Disk::recover`]; the writer thread could not start.
    pub fn open(
        storage: Box<dyn Storage>,
        segment_bytes: u64,
        inline: bool,
    ) -> Result<LogStore, ReplicationError> {
        let stats = Arc::new(LogStats::default());
        let (disk, recovered) = Disk::recover(storage, segment_bytes, stats.clone())?;
        stats.committed_plus_one.store(
            recovered.committed.map_or(0, |c| c.index + 1),
            Ordering::Relaxed,
        );
        let writer = if inline {
            Writer::Inline {
                disk: Arc::new(Mutex::new(disk)),
                sync_scheduled: Arc::new(AtomicBool::new(false)),
            }
        } else {
            let (ops, receiver) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("ys-raft-log".into())
                .spawn(move || run_writer(disk, receiver))
                .map_err(|source| ReplicationError::Io {
                    what: "starting the raft log writer thread".into(),
                    source,
                })?;
            Writer::Thread {
                ops,
                thread: Some(thread),
            }
        };
        Ok(LogStore {
            cache: Arc::new(RwLock::new(Cache {
                entries: recovered.entries,
            })),
            writer,
            vote: recovered.vote,
            committed: recovered.committed,
            purged: recovered.purged,
            stats,
        })
    }

    fn cache(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `op` on the writer in order and waits for its reply.
    async fn call(
        &self,
        op: impl FnOnce(Reply) -> Op,
        inline: impl FnOnce(&mut Disk) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        match &self.writer {
            Writer::Thread { ops, .. } => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                ops.send(op(reply))
                    .map_err(|_| write_err("the raft log writer thread stopped"))?;
                answer
                    .await
                    .map_err(|_| write_err("the raft log writer thread stopped"))?
            }
            Writer::Inline { disk, .. } => inline(&mut lock_disk(disk)),
        }
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        match &mut self.writer {
            Writer::Thread { ops, thread } => {
                // Closing the channel ends the thread after the queued work.
                let (dead, _) = std::sync::mpsc::channel();
                *ops = dead;
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
            Writer::Inline { .. } => {
                // The simulation drops a member to crash it: nothing more is synced.
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(LogReader {
            cache: self.cache.clone(),
        }
        .read(range_of(&range)))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: self.purged,
            last_log_id: last.or(self.purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            cache: self.cache.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let v = *vote;
        self.call(|reply| Op::Vote(v, reply), |disk| disk.save_vote(&v))
            .await?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.committed = committed;
        self.stats
            .committed_plus_one
            .store(committed.map_or(0, |c| c.index + 1), Ordering::Relaxed);
        match &self.writer {
            Writer::Thread { ops, .. } => ops
                .send(Op::Committed(committed))
                .map_err(|_| write_err("the raft log writer thread stopped")),
            Writer::Inline { disk, .. } => lock_disk(disk)
                .write_committed(committed)
                .map_err(write_err),
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            let mut cache = self.cache();
            for entry in &entries {
                debug_assert!(
                    cache
                        .entries
                        .keys()
                        .next_back()
                        .is_none_or(|last| *last + 1 == entry.log_id.index),
                    "entries append contiguously"
                );
                cache.entries.insert(entry.log_id.index, entry.clone());
            }
        }
        match &self.writer {
            Writer::Thread { ops, .. } => ops
                .send(Op::Append(entries, callback))
                .map_err(|_| write_err("the raft log writer thread stopped")),
            Writer::Inline {
                disk,
                sync_scheduled,
            } => {
                lock_disk(disk).write_entries(&entries, callback);
                if !sync_scheduled.swap(true, Ordering::AcqRel) {
                    let disk = disk.clone();
                    let scheduled = sync_scheduled.clone();
                    tokio::spawn(async move {
                        // Later appends of this turn join the same sync.
                        tokio::task::yield_now().await;
                        scheduled.store(false, Ordering::Release);
                        lock_disk(&disk).sync_and_report();
                    });
                }
                Ok(())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let index = log_id.index;
        self.cache().entries.split_off(&index);
        self.call(
            |reply| Op::Truncate(index, reply),
            |disk| disk.truncate(index),
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut cache = self.cache();
            let kept = cache.entries.split_off(&(log_id.index + 1));
            cache.entries = kept;
        }
        self.purged = Some(log_id);
        self.call(|reply| Op::Purge(log_id, reply), |disk| disk.purge(log_id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::faulty::{Faults, FaultyStorage};
    use crate::replication::state_machine::{Machine, MachineConfig, MachineStore, NoObserver};
    use crate::replication::types::GroupEntry;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};
    use yellowstone_engine::{Engine, MarketConfig};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(GroupEntry {
                first_seq: index + 1,
                records: vec![vec![index as u8; 1 + (index as usize * 37) % 300]],
            }),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn open(storage: &FaultyStorage, segment_bytes: u64) -> LogStore {
        LogStore::open(Box::new(storage.clone()), segment_bytes, false).unwrap()
    }

    async fn indexes(store: &mut LogStore) -> Vec<(u64, u64)> {
        store
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    struct Builder;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, MachineStore, ()> for Builder {
        async fn build(&self) -> Result<((), LogStore, MachineStore), StorageError> {
            let storage = FaultyStorage::new(Faults::default());
            let log =
                LogStore::open(Box::new(storage.clone()), 1 << 16, false).map_err(write_err)?;
            let machine = Machine::open(
                Box::new(storage),
                Engine::new(MarketConfig::default()),
                MachineConfig {
                    snapshot_every_entries: 1 << 20,
                    state_hashes_kept: 16,
                },
                Arc::new(NoObserver),
            )
            .map_err(write_err)?;
            Ok(((), log, MachineStore(machine)))
        }
    }

    /// Openraft's own storage test suite (0.9: `openraft::testing::Suite`).
    #[test]
    fn openraft_storage_suite_passes() {
        openraft::testing::Suite::test_all(Builder).unwrap();
    }

    /// The `LogFlushed` rule: whatever was reported flushed survives a crash that
    /// keeps only synced bytes (and a random prefix of the rest), at every point.
    #[test]
    fn entries_reported_flushed_survive_every_crash() {
        let rt = runtime();
        for seed in 0..20u64 {
            let storage = FaultyStorage::new(Faults {
                seed,
                crash_zero_tail_bytes_max: 64,
                ..Faults::default()
            });
            let mut store = open(&storage, 2048);
            let crash_after = 1 + seed * 3;
            let mut acknowledged = 0;
            rt.block_on(async {
                for index in 0..crash_after {
                    store.blocking_append([entry(1, index)]).await.unwrap();
                    acknowledged = index + 1;
                    // An unsynced commit mark follows: the crash may tear it.
                    store
                        .save_committed(Some(entry(1, index).log_id))
                        .await
                        .unwrap();
                }
            });
            let crashed = storage.crash();
            drop(store);
            let mut store = open(&crashed, 2048);
            let got = rt.block_on(indexes(&mut store));
            assert_eq!(
                got,
                (0..acknowledged).map(|i| (1, i)).collect::<Vec<_>>(),
                "seed {seed}"
            );
            let committed = rt.block_on(store.read_committed()).unwrap();
            assert!(
                committed.is_none_or(|c| c.index < acknowledged),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_corruption_before_it_refused() {
        let rt = runtime();
        let storage = FaultyStorage::new(Faults::default());
        let mut store = open(&storage, 1 << 20);
        rt.block_on(store.blocking_append((0..5).map(|i| entry(1, i))))
            .unwrap();
        drop(store);
        let segment = segment_name(0);
        let whole = storage.contents(&segment).unwrap();
        // A torn write: half of a sixth entry's frame.
        let mut torn = whole.clone();
        let mut frame = Vec::new();
        encode_into(
            &mut frame,
            6,
            &encode(&LogRecord::Entry(entry(1, 5))).unwrap(),
        )
        .unwrap();
        torn.extend_from_slice(&frame[..frame.len() / 2]);
        storage.put(&segment, torn);
        let mut store = open(&storage, 1 << 20);
        assert_eq!(rt.block_on(indexes(&mut store)).len(), 5);
        assert_eq!(store.stats.torn_tails_cut.load(Ordering::Relaxed), 1);
        assert_eq!(
            storage.contents(&segment).unwrap(),
            whole,
            "cut back to the last whole record"
        );
        rt.block_on(store.blocking_append([entry(1, 5)])).unwrap();
        drop(store);
        // A flipped byte in the last segment with whole entries after it is not a
        // torn tail: refused, nothing cut.
        let mut store = open(&storage, 1 << 20);
        rt.block_on(store.blocking_append([entry(1, 6), entry(1, 7)]))
            .unwrap();
        drop(store);
        let newest = storage_segments(&storage).pop().unwrap();
        let intact = storage.contents(&newest).unwrap();
        let mut hit = intact.clone();
        hit[30] ^= 1;
        storage.put(&newest, hit.clone());
        match LogStore::open(Box::new(storage.clone()), 1 << 20, false) {
            Err(ReplicationError::CorruptLog { file, .. }) => assert_eq!(file, newest),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("damage before valid entries taken as a torn tail"),
        }
        assert_eq!(storage.contents(&newest).unwrap(), hit, "nothing cut");
        storage.put(&newest, intact);
        // A flipped byte in a closed segment (not the last) is corruption.
        let mut bad = storage.contents(&segment).unwrap();
        bad[40] ^= 1;
        storage.put(&segment, bad);
        match LogStore::open(Box::new(storage.clone()), 1 << 20, false) {
            Err(ReplicationError::CorruptLog { file, .. }) => assert_eq!(file, segment),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("corruption before the tail accepted"),
        }
    }

    #[test]
    fn votes_truncations_and_purges_are_durable() {
        let rt = runtime();
        let storage = FaultyStorage::new(Faults {
            seed: 9,
            ..Faults::default()
        });
        let mut store = open(&storage, 1024);
        let vote = Vote::new(3, 2);
        rt.block_on(async {
            store.save_vote(&vote).await.unwrap();
            store
                .blocking_append((0..40).map(|i| entry(1, i)))
                .await
                .unwrap();
            // An uncommitted suffix replaced by another term's entries.
            store.truncate(entry(1, 30).log_id).await.unwrap();
            store
                .blocking_append((30..35).map(|i| entry(2, i)))
                .await
                .unwrap();
            store.purge(entry(1, 19).log_id).await.unwrap();
        });
        let segments_before = storage_segments(&storage);
        assert!(segments_before.len() >= 2, "{segments_before:?}");
        assert!(
            !segments_before.contains(&segment_name(0)),
            "covered segments removed"
        );
        let crashed = storage.crash();
        drop(store);
        let mut store = open(&crashed, 1024);
        let got = rt.block_on(indexes(&mut store));
        let expected: Vec<(u64, u64)> = (20..30)
            .map(|i| (1, i))
            .chain((30..35).map(|i| (2, i)))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(rt.block_on(store.read_vote()).unwrap(), Some(vote));
        let state = rt.block_on(store.get_log_state()).unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(1, 19).log_id));
        assert_eq!(state.last_log_id, Some(entry(2, 34).log_id));
    }

    fn storage_segments(storage: &FaultyStorage) -> Vec<String> {
        let mut names: Vec<String> = storage
            .list()
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(SEGMENT_PREFIX))
            .collect();
        names.sort();
        names
    }
}
