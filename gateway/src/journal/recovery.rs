//! Recovery at start: the newest valid snapshot, then every journal record after it,
//! in order. A torn or corrupt tail (the end of the last segment, with no valid
//! record after the damage) is cut off and logged; damage anywhere else stops the
//! start with the file and offset, unless the operator explicitly allows cutting the
//! journal there.
//!
//! The open segment is zero-filled ahead of its data (preallocation,
//! `journal.preallocate_bytes`): an all-zero rest of a segment is its clean end,
//! not damage (no record has a zero header: its checksum covers the header). It is
//! truncated quietly. A torn record before zeros is damage like any other.
//!
//! Three steps, kept apart (issue 26 item 2): read and scan each segment while
//! replaying its whole records (`classify::scan`); decide what the segment's end
//! means (`classify::classify`, whose doc comment holds the decision table); and
//! only once every segment is decided and nothing refused, change the disk
//! ([`apply_cuts`]): truncate, remove. A refusal changes nothing.

use super::classify::{self, Cursor, SegmentFacts, Verdict};
use super::error::JournalError;
use super::files;
use super::record::{JournalRecord, RecordRef};
use super::storage::{FileStorage, Storage};
use std::path::Path;
use std::time::{Duration, Instant};
use yellowstone_engine::{Effect, Engine, MarketConfig};

/// How recovery treats damage and the disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecoverOptions {
    /// Cut the journal at a corruption found before its tail (losing every record
    /// after it) instead of refusing to start.
    pub allow_corrupt_truncate: bool,
    /// Change nothing on disk (tools): report what would be cut.
    pub read_only: bool,
}

/// The engine recovered, and what it took.
pub struct Recovered {
    /// The engine state after the snapshot and every replayed record.
    pub engine: Engine,
    /// The last sequence number the engine state includes (0: none).
    pub last_seq: u64,
    /// The snapshot recovery started from, if any.
    pub snapshot_seq: Option<u64>,
    /// Records applied after the snapshot.
    pub records_replayed: u64,
    /// Records still on disk that the snapshot already covers.
    pub records_covered: u64,
    /// Bytes of damaged tail cut (a zero tail is not counted: it is no damage).
    pub bytes_cut: u64,
    /// Things an operator must hear about (cuts, skipped snapshots), in order.
    pub notes: Vec<String>,
    /// Wall time recovery took.
    pub elapsed: Duration,
}

/// What reading the journal's segments found and decided (no engine involved).
#[derive(Debug, Default)]
pub struct JournalScan {
    /// The last record handed to `replay` (the snapshot's seq, or 0, if none).
    pub last_seq: u64,
    /// Whether any whole record was read at all (covered or replayed).
    pub any_record: bool,
    /// Records handed to `replay`.
    pub records_replayed: u64,
    /// Records the snapshot covers (read, not handed out).
    pub records_covered: u64,
    /// Bytes of damaged tail the cuts remove.
    pub bytes_cut: u64,
    /// What an operator must hear about, in order.
    pub notes: Vec<String>,
    /// The decisions, segment by segment, in order: what [`apply_cuts`] carries out.
    pub plan: Vec<SegmentPlan>,
    /// Segments after a `CutCorrupt`, removed with it.
    pub removed_after: Vec<String>,
}

/// One segment's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentPlan {
    /// The segment's file name.
    pub name: String,
    /// Its length when read, bytes.
    pub len: usize,
    /// What recovery does with it.
    pub verdict: Verdict,
}

/// Recovers the engine from `dir`. `visit` sees every replayed record with the
/// effects it had (tools use it; the router passes a no-op).
/// Errors: [`JournalError::CorruptBeforeTail`] (damage before the tail, not
/// allowed to cut), [`JournalError::Undecodable`], [`JournalError::NoStart`], or a
/// storage error naming the file.
pub fn recover(
    dir: &Path,
    market: &MarketConfig,
    options: RecoverOptions,
    mut visit: impl FnMut(u64, &JournalRecord, &[Effect]),
) -> Result<Recovered, JournalError> {
    recover_observing(dir, market, options, |seq, record, effects, _| {
        visit(seq, record, effects)
    })
}

/// [`recover`], with `visit` also seeing the engine just after each replayed
/// record (e.g. a claim proof as of an older epoch, issue 24 case 3).
pub fn recover_observing(
    dir: &Path,
    market: &MarketConfig,
    options: RecoverOptions,
    visit: impl FnMut(u64, &JournalRecord, &[Effect], &Engine),
) -> Result<Recovered, JournalError> {
    recover_from(&mut FileStorage::reader(dir), market, options, visit)
}

/// [`recover_observing`] over any [`Storage`] (snapshots read from it too).
pub fn recover_from<S: Storage>(
    storage: &mut S,
    market: &MarketConfig,
    options: RecoverOptions,
    mut visit: impl FnMut(u64, &JournalRecord, &[Effect], &Engine),
) -> Result<Recovered, JournalError> {
    let started = Instant::now();
    let names = files::Names::sort(storage.list()?);
    if !options.read_only {
        for tmp in &names.temporaries {
            // A leftover of an interrupted snapshot or market write: never read.
            let _ = storage.delete(tmp);
        }
    }
    let mut notes = Vec::new();
    let (mut engine, snapshot_seq) = newest_valid_snapshot(storage, &names.snapshots, &mut notes)
        .map(|(seq, engine)| (engine, Some(seq)))
        .unwrap_or_else(|| (Engine::new(market.clone()), None));
    let mut effects = Vec::new();
    let scan = scan_journal(storage, snapshot_seq, options, |path, offset, rec| {
        let record = JournalRecord::decode(rec.payload).map_err(|e| JournalError::Undecodable {
            path: path.to_path_buf(),
            offset,
            seq: rec.seq,
            reason: e.to_string(),
        })?;
        effects.clear();
        engine.apply(&record.command, record.now_ms, &mut effects);
        visit(rec.seq, &record, &effects, &engine);
        Ok(())
    })?;
    if !options.read_only {
        apply_cuts(storage, &scan)?;
    }
    notes.extend(scan.notes);
    Ok(Recovered {
        engine,
        last_seq: scan.last_seq,
        snapshot_seq,
        records_replayed: scan.records_replayed,
        records_covered: scan.records_covered,
        bytes_cut: scan.bytes_cut,
        notes,
        elapsed: started.elapsed(),
    })
}

/// Reads every segment in order, hands each whole record after `snapshot_seq` to
/// `replay` (with its segment's path and offset), and decides each segment's end
/// (`classify`). Changes nothing on disk: the decisions are in the returned plan.
/// Errors: a refusal (before any change), a storage error, or `replay`'s error.
pub fn scan_journal<S: Storage>(
    storage: &mut S,
    snapshot_seq: Option<u64>,
    options: RecoverOptions,
    mut replay: impl FnMut(&Path, usize, &RecordRef<'_>) -> Result<(), JournalError>,
) -> Result<JournalScan, JournalError> {
    let covered = snapshot_seq.unwrap_or(0);
    let segments = files::Names::sort(storage.list()?).segments;
    let mut scan = JournalScan {
        last_seq: covered,
        ..JournalScan::default()
    };
    let mut cursor = Cursor {
        previous_seq: None,
        covered,
    };
    for (index, (name_seq, name)) in segments.iter().enumerate() {
        let bytes = storage.read(name)?;
        let path = storage.path_of(name);
        let end = classify::scan(&bytes, *name_seq, &mut cursor, |offset, rec| {
            scan.any_record = true;
            if rec.seq <= covered {
                scan.records_covered += 1;
                return Ok(());
            }
            debug_assert!(
                rec.seq == scan.last_seq + 1,
                "replay is gapless: {} after {}",
                rec.seq,
                scan.last_seq
            );
            replay(&path, offset, rec)?;
            scan.records_replayed += 1;
            scan.last_seq = rec.seq;
            Ok::<(), JournalError>(())
        })?;
        let facts = SegmentFacts {
            is_last: index + 1 == segments.len(),
            end,
        };
        let verdict = classify::classify(&facts, options.allow_corrupt_truncate);
        let later = &segments[index + 1..];
        match &verdict {
            Verdict::Replay | Verdict::CutZeroTail { .. } => {}
            Verdict::Refuse { offset, damage } => {
                return Err(JournalError::CorruptBeforeTail {
                    path,
                    offset: *offset,
                    damage: damage.clone(),
                })
            }
            Verdict::CutTail { offset, damage } => {
                let cut = bytes.len() - offset;
                scan.bytes_cut += cut as u64;
                scan.notes.push(format!(
                    "journal tail cut: {} at offset {offset}: {damage}; {cut} bytes removed",
                    path.display()
                ));
            }
            Verdict::CutCorrupt { offset, damage } => {
                let cut = bytes.len() - offset;
                scan.bytes_cut += cut as u64;
                scan.notes.push(format!(
                    "journal CORRUPT before its tail, cut as allowed: {} at offset {offset}: \
                     {damage}; {cut} bytes and {} later segment(s) removed",
                    path.display(),
                    later.len()
                ));
                scan.removed_after = later.iter().map(|(_, name)| name.clone()).collect();
            }
        }
        let ends = verdict.ends_journal();
        scan.plan.push(SegmentPlan {
            name: name.clone(),
            len: bytes.len(),
            verdict,
        });
        if ends {
            break;
        }
    }
    let starts_late = segments.iter().any(|(seq, _)| *seq > 1);
    if snapshot_seq.is_none() && !scan.any_record && starts_late {
        return Err(JournalError::NoStart {
            dir: storage.path_of(""),
        });
    }
    debug_assert!(scan.last_seq >= covered);
    debug_assert_eq!(
        scan.records_replayed,
        scan.last_seq - covered,
        "every record after the snapshot replayed once"
    );
    Ok(scan)
}

/// Carries out a scan's decisions on disk: zero tails and torn tails truncated (a
/// segment cut inside its header removed), the segments after an allowed
/// corruption removed. Idempotent: a second recovery finds nothing to cut.
pub fn apply_cuts<S: Storage>(storage: &mut S, scan: &JournalScan) -> Result<(), JournalError> {
    for plan in &scan.plan {
        let offset = match &plan.verdict {
            Verdict::Replay => continue,
            Verdict::CutZeroTail { offset }
            | Verdict::CutTail { offset, .. }
            | Verdict::CutCorrupt { offset, .. } => *offset,
            Verdict::Refuse { .. } => unreachable!("a refusal ends recovery before any cut"),
        };
        assert!(offset <= plan.len, "a cut lies inside the segment");
        if offset < files::SEGMENT_HEADER_BYTES {
            // Not even a header: the segment never held a record.
            storage.delete(&plan.name)?;
        } else {
            storage.truncate(&plan.name, offset as u64)?;
        }
    }
    for name in &scan.removed_after {
        storage.delete(name)?;
    }
    Ok(())
}

fn newest_valid_snapshot<S: Storage>(
    storage: &mut S,
    snapshots: &[(u64, String)],
    notes: &mut Vec<String>,
) -> Option<(u64, Engine)> {
    for (name_seq, name) in snapshots.iter().rev() {
        let path = storage.path_of(name);
        let loaded = storage
            .read(name)
            .map_err(JournalError::from)
            .and_then(|bytes| {
                let (seq, state) = files::parse_snapshot(&path, &bytes)?;
                if seq != *name_seq {
                    return Err(JournalError::BadFile {
                        path: path.clone(),
                        what: format!("snapshot header says seq {seq}"),
                    });
                }
                Engine::restore(state)
                    .map(|engine| (seq, engine))
                    .map_err(|e| JournalError::BadFile {
                        path: path.clone(),
                        what: format!("snapshot: {e:?}"),
                    })
            });
        match loaded {
            Ok(found) => return Some(found),
            Err(error) => notes.push(format!("{error}; trying an older snapshot")),
        }
    }
    None
}
