//! A member's data directory read without a member (issue 25; R-HA-1, R-CHAIN-1):
//! what the operator tools (`yellowstone-router ledger|verify|settlement|proof`) and
//! the relayer and reconciler (`chain/`) recover from, since a member keeps no
//! journal: its state is `<data_dir>/raft/` (docs/replication.md "A member's data
//! directory").
//!
//! The state is the stored snapshot's engine (else the market's genesis engine),
//! then every log entry after the snapshot up to the **committed** index the log
//! records, applied by [`apply_group_records`] (the state machine's own rule, stale
//! entries skipped alike). Entries past the committed index are never applied: a
//! deposed leader's log may hold a suffix no majority stored, which the group
//! replaced. A commit mark is written after its entries (and is not synced by
//! itself), so the state read is the group's as of some committed index at most the
//! group's: never ahead of it, never other than it.
//!
//! Read-only: nothing is written, cut or locked, so it runs beside a running member
//! (like the journal tools beside a running router). A running member may purge its
//! log behind a new snapshot between our reading of the snapshot and of the log:
//! the gap that leaves is detected and the read retried.

use super::log_store::{read_log, LogScan, TornTail};
use super::state_machine::{apply_group_records, read_snapshot, UndecodableRecord};
use super::types::{GroupApplied, LogId};
use super::ReplicationError;
use crate::journal::{FileStorage, JournalRecord};
use openraft::EntryPayload;
use std::path::{Path, PathBuf};
use yellowstone_engine::{Effect, Engine};

/// The directory of a member's Raft state inside its data directory.
pub const RAFT_DIR: &str = "raft";

/// How often a read racing a running member's log purge is retried.
const READ_ATTEMPTS: usize = 5;

/// Why a member's data directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MemberReadError {
    /// A file of `raft/` is unreadable, or damaged before its tail (the segment and
    /// offset are named), or the snapshot does not check out.
    #[error("{}: {source}", dir.display())]
    Log {
        /// `<data_dir>/raft`.
        dir: PathBuf,
        /// What the log or snapshot reading found.
        source: ReplicationError,
    },
    /// Committed entries after the snapshot are not in the log (purged without a
    /// snapshot covering them), even after retrying.
    #[error(
        "{}: committed entries {from}..={committed} are needed after the snapshot \
         (covering up to {snapshot:?}) and entry {missing} is not in the log \
         (purged up to {purged:?}): the log and snapshot do not fit together",
        dir.display()
    )]
    Gap {
        /// `<data_dir>/raft`.
        dir: PathBuf,
        /// The first entry the snapshot does not cover.
        from: u64,
        /// The committed index.
        committed: u64,
        /// The first missing entry.
        missing: u64,
        /// The snapshot's last log index.
        snapshot: Option<u64>,
        /// The log's last purged index.
        purged: Option<u64>,
    },
    /// A committed record does not decode: the member could not apply it either.
    #[error("{}: log entry {index}: {source}", dir.display())]
    Record {
        /// `<data_dir>/raft`.
        dir: PathBuf,
        /// The entry's log index.
        index: u64,
        /// The record and why.
        source: UndecodableRecord,
    },
}

/// What [`replay_member`] read and applied.
pub struct MemberReplay {
    /// The engine after the snapshot and every committed entry.
    pub engine: Engine,
    /// The journal sequence number the next record would get (1: none yet).
    pub next_seq: u64,
    /// The snapshot started from: its last log id and the next sequence number then.
    pub snapshot: Option<(Option<LogId>, u64)>,
    /// The committed log id the log records (None: none recorded).
    pub committed: Option<LogId>,
    /// Entries applied after the snapshot (blank and membership entries included).
    pub entries_applied: u64,
    /// Records applied after the snapshot.
    pub records_applied: u64,
    /// Entries skipped as stale (a deposed leader's late proposal, skipped by every
    /// member alike).
    pub stale_entries: u64,
    /// Entries in the log past the committed index, not applied.
    pub uncommitted_entries: u64,
    /// The last segment's torn tail (a starting member cuts it), if any.
    pub torn: Option<TornTail>,
}

/// Whether `dir` is a member's data directory (it holds `raft/`).
pub fn is_member_dir(dir: &Path) -> bool {
    dir.join(RAFT_DIR).is_dir()
}

/// Replays a member's data directory `dir` from `genesis` (the market's genesis
/// engine, `Engine::new` of its `market.bin`) without writing: the snapshot, then the
/// log's entries after it up to the committed index (see the module comment).
/// `visit(seq, record, effects, engine)` sees each applied record with the engine
/// just after it (not those the snapshot covers).
/// Errors: [`MemberReadError`] (unreadable or damaged files naming segment and
/// offset, committed entries missing, an undecodable committed record).
pub fn replay_member(
    dir: &Path,
    genesis: Engine,
    mut visit: impl FnMut(u64, &JournalRecord, &[Effect], &Engine),
) -> Result<MemberReplay, MemberReadError> {
    let raft_dir = dir.join(RAFT_DIR);
    let log_error = |source: ReplicationError| MemberReadError::Log {
        dir: raft_dir.clone(),
        source,
    };
    let mut attempt = 0;
    // The snapshot first, then the log: a purge only ever follows a newer snapshot,
    // so a gap between the two is a purge we raced; the next attempt reads both anew.
    let (snapshot, scan) = loop {
        attempt += 1;
        let mut storage = FileStorage::reader(&raft_dir);
        let read = read_snapshot(&mut storage)
            .and_then(|snapshot| Ok((snapshot, read_log(&mut storage)?)));
        let (snapshot, scan) = match read {
            Ok(read) => read,
            // A segment listed, then removed by a running member's purge before we
            // read it: read both anew.
            Err(ReplicationError::File(_)) if attempt < READ_ATTEMPTS => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            Err(error) => return Err(log_error(error)),
        };
        let covered = snapshot.as_ref().and_then(|(meta, _, _)| meta.last_log_id);
        match first_missing(&scan, covered) {
            None => break (snapshot, scan),
            Some(missing) if attempt >= READ_ATTEMPTS => {
                let committed = scan.recovered.committed.map_or(0, |c| c.index);
                return Err(MemberReadError::Gap {
                    dir: raft_dir,
                    from: covered.map_or(0, |c| c.index + 1),
                    committed,
                    missing,
                    snapshot: covered.map(|c| c.index),
                    purged: scan.recovered.purged.map(|p| p.index),
                });
            }
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    let (mut engine, mut next_seq, covered, snapshot_info) = match snapshot {
        Some((meta, data, engine)) => (
            engine,
            data.next_seq,
            meta.last_log_id,
            Some((meta.last_log_id, data.next_seq)),
        ),
        None => (genesis, 1, None, None),
    };
    let committed = scan.recovered.committed;
    let mut replay_stats = (0u64, 0u64, 0u64);
    let mut effects = Vec::new();
    for (&index, entry) in &scan.recovered.entries {
        if covered.is_some_and(|c| index <= c.index) {
            continue;
        }
        if committed.is_none_or(|c| index > c.index) {
            break;
        }
        replay_stats.0 += 1;
        let EntryPayload::Normal(group) = &entry.payload else {
            continue;
        };
        let applied = apply_group_records(
            &mut engine,
            &mut next_seq,
            entry.log_id,
            group,
            &mut effects,
            |seq, record, effects, engine, _| visit(seq, record, effects, engine),
        )
        .map_err(|source| MemberReadError::Record {
            dir: raft_dir.clone(),
            index,
            source,
        })?;
        match applied {
            GroupApplied::Applied { .. } => replay_stats.1 += group.records.len() as u64,
            GroupApplied::Stale { .. } => replay_stats.2 += 1,
            GroupApplied::NoRecords => {}
        }
    }
    let uncommitted_entries = scan
        .recovered
        .entries
        .keys()
        .filter(|&&index| committed.is_none_or(|c| index > c.index))
        .count() as u64;
    Ok(MemberReplay {
        engine,
        next_seq,
        snapshot: snapshot_info,
        committed,
        entries_applied: replay_stats.0,
        records_applied: replay_stats.1,
        stale_entries: replay_stats.2,
        uncommitted_entries,
        torn: scan.torn,
    })
}

/// The first committed entry after `covered` that the log does not hold, if any.
fn first_missing(scan: &LogScan, covered: Option<LogId>) -> Option<u64> {
    let committed = scan.recovered.committed?;
    let from = covered.map_or(0, |c| c.index + 1);
    (from..=committed.index).find(|index| !scan.recovered.entries.contains_key(index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::encode_into;
    use crate::replication::log_store::{LogRecord, PURGED_FILE, SEGMENT_PREFIX};
    use crate::replication::state_machine::{encode_snapshot_frame, SNAPSHOT_FILE};
    use crate::replication::types::{encode, Entry, GroupEntry, MarketSnapshot, SnapshotMeta};
    use openraft::CommittedLeaderId;
    use yellowstone_engine::{Command, MarketConfig};

    const BLOCK_MS: u64 = 12_000;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// A tick `blocks` blocks after genesis (each crosses a block boundary).
    fn tick(blocks: u64) -> Vec<u8> {
        JournalRecord {
            now_ms: MarketConfig::default().genesis_ms + blocks * BLOCK_MS + 1,
            command: Command::Tick,
        }
        .encode()
    }

    fn group(index: u64, first_seq: u64, records: Vec<Vec<u8>>) -> LogRecord {
        LogRecord::Entry(Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(GroupEntry { first_seq, records }),
        })
    }

    fn frame(out: &mut Vec<u8>, seq: u64, record: &LogRecord) {
        encode_into(out, seq, &encode(record).unwrap()).unwrap();
    }

    /// The engine after records 1..=`records` of [`ticks`], applied directly.
    fn expected(records: u64) -> Engine {
        let mut engine = Engine::new(MarketConfig::default());
        let mut effects = Vec::new();
        for seq in 1..=records {
            let record = JournalRecord::decode(&tick(seq)).unwrap();
            engine.apply(&record.command, record.now_ms, &mut effects);
        }
        engine
    }

    /// A member's data directory by hand: market.bin; a snapshot after log index 2
    /// (records 1..=2); a log holding entries 0..=7: blank, the two the snapshot
    /// covers, record 3, a stale entry, record 4, a commit mark at 5, then two
    /// uncommitted entries (a deposed leader's suffix, records 5..=6) and a torn tail.
    /// Returns the log segment's path and where entry 3 starts and ends.
    fn member_dir(dir: &Path) -> (PathBuf, usize, usize) {
        crate::journal::files::write_market(dir, &MarketConfig::default()).unwrap();
        let raft = dir.join(RAFT_DIR);
        std::fs::create_dir_all(&raft).unwrap();
        let snapshot_engine = expected(2);
        let engine_bytes = snapshot_engine.snapshot();
        let data = MarketSnapshot {
            state_hash: *blake3::hash(&engine_bytes).as_bytes(),
            engine: engine_bytes,
            next_seq: 3,
            block: snapshot_engine.block(),
            replies: Vec::new(),
        };
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2)),
            last_membership: Default::default(),
            snapshot_id: "1-2-1".into(),
        };
        let mut framed = Vec::new();
        encode_snapshot_frame(&mut framed, 3, &encode(&(&meta, &data)).unwrap());
        std::fs::write(raft.join(SNAPSHOT_FILE), framed).unwrap();

        let mut log = Vec::new();
        let blank = LogRecord::Entry(Entry {
            log_id: log_id(0),
            payload: EntryPayload::Blank,
        });
        frame(&mut log, 1, &blank);
        frame(&mut log, 2, &group(1, 1, vec![tick(1)]));
        frame(&mut log, 3, &group(2, 2, vec![tick(2)]));
        let entry3 = log.len();
        frame(&mut log, 4, &group(3, 3, vec![tick(3)]));
        let entry3_end = log.len();
        // Stale: a deposed leader's late proposal every member skipped.
        frame(&mut log, 5, &group(4, 9, vec![tick(9)]));
        frame(&mut log, 6, &group(5, 4, vec![tick(4)]));
        frame(&mut log, 6, &LogRecord::Committed(Some(log_id(5))));
        frame(&mut log, 7, &group(6, 5, vec![tick(5)]));
        frame(&mut log, 8, &group(7, 6, vec![tick(6)]));
        log.extend_from_slice(&[0xA5; 7]);
        let segment = raft.join(format!("{SEGMENT_PREFIX}{:020}", 0));
        std::fs::write(&segment, log).unwrap();
        (segment, entry3, entry3_end)
    }

    fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = walk(dir);
        files.sort();
        files
    }

    fn walk(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
        out
    }

    #[test]
    fn a_member_dir_replays_up_to_the_committed_index_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        member_dir(dir.path());
        let before = contents(dir.path());
        let mut seen = Vec::new();
        let replay = replay_member(
            dir.path(),
            Engine::new(MarketConfig::default()),
            |seq, _, _, engine| seen.push((seq, engine.block())),
        )
        .unwrap();
        // Records 3 and 4 after the snapshot; the stale entry skipped; entries 6 and 7
        // (records 5, 6) past the committed index never applied.
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(replay.next_seq, 5);
        assert_eq!(replay.records_applied, 2);
        assert_eq!(replay.stale_entries, 1);
        assert_eq!(replay.uncommitted_entries, 2);
        assert_eq!(replay.committed, Some(log_id(5)));
        assert_eq!(replay.snapshot, Some((Some(log_id(2)), 3)));
        let torn = replay.torn.as_ref().unwrap();
        assert_eq!((torn.bytes, torn.zeros), (7, false));
        let want = expected(4);
        assert_eq!(replay.engine.state_hash(), want.state_hash());
        assert_eq!(replay.engine.block(), want.block());
        assert_ne!(expected(6).block(), want.block(), "the suffix would show");

        // The tools' entry point takes the same path (a data directory without a
        // journal, with raft/).
        let recovered = crate::journal::tools::recover_read_only(dir.path()).unwrap();
        assert_eq!(recovered.engine.state_hash(), want.state_hash());
        assert_eq!((recovered.last_seq, recovered.snapshot_seq), (4, Some(2)));
        assert_eq!(recovered.bytes_cut, 7);
        // `journal` (dump): the committed records after the snapshot, then a word on
        // the snapshot and the torn tail.
        let mut out = Vec::new();
        let printed = crate::journal::tools::dump(dir.path(), 0, 100, true, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(printed, 2, "{text}");
        assert!(
            lines[0].starts_with("{\"command\":\"Tick\"") && lines[0].contains("\"seq\":3"),
            "{text}"
        );
        assert!(lines[1].contains("\"seq\":4"), "{text}");
        assert!(
            lines[2].starts_with("records 1..=2 are in the member's snapshot"),
            "{text}"
        );
        assert!(lines[3].starts_with("torn tail: raft/raft-log-"), "{text}");
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(
            contents(dir.path()),
            before,
            "read-only: nothing written or cut"
        );
    }

    #[test]
    fn damage_within_the_log_names_the_segment_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (segment, entry3, entry3_end) = member_dir(dir.path());
        let mut bytes = std::fs::read(&segment).unwrap();
        // Inside entry 3's payload: valid entries follow, so not a torn tail.
        bytes[entry3_end - 1] ^= 0xFF;
        std::fs::write(&segment, bytes).unwrap();
        let error = crate::journal::tools::recover_read_only(dir.path())
            .err()
            .expect("damage before the tail is refused");
        let text = error.to_string();
        assert!(
            text.contains(&format!("{SEGMENT_PREFIX}{:020}", 0))
                && text.contains(&format!("offset {entry3}")),
            "{text}"
        );
    }

    #[test]
    fn committed_entries_missing_after_the_snapshot_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        member_dir(dir.path());
        // The log purged up to index 3 while the snapshot covers only up to 2: the
        // committed entry 3 is nowhere.
        let mut framed = Vec::new();
        encode_into(&mut framed, 1, &encode(&log_id(3)).unwrap()).unwrap();
        std::fs::write(dir.path().join(RAFT_DIR).join(PURGED_FILE), framed).unwrap();
        match replay_member(
            dir.path(),
            Engine::new(MarketConfig::default()),
            |_, _, _, _| {},
        ) {
            Err(MemberReadError::Gap { missing, .. }) => assert_eq!(missing, 3),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a gap replayed"),
        }
    }
}
