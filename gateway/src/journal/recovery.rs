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

use super::files;
use super::record::JournalRecord;
use super::record::{self, RecordFault};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use yellowstone_engine::{Effect, Engine, MarketConfig};

#[derive(Clone, Copy, Debug, Default)]
pub struct RecoverOptions {
    /// Cut the journal at a corruption found before its tail (losing every record
    /// after it) instead of refusing to start.
    pub allow_corrupt_truncate: bool,
    /// Change nothing on disk (tools): report what would be cut.
    pub read_only: bool,
}

pub struct Recovered {
    pub engine: Engine,
    /// The last sequence number the engine state includes (0: none).
    pub last_seq: u64,
    pub snapshot_seq: Option<u64>,
    pub records_replayed: u64,
    /// Records still on disk that the snapshot already covers.
    pub records_covered: u64,
    pub bytes_cut: u64,
    /// Things an operator must hear about (cuts, skipped snapshots), in order.
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

/// Where a scan of one segment stopped early.
#[derive(Debug)]
struct Damage {
    offset: usize,
    what: String,
    /// A valid record follows the damage: it is not a torn tail.
    record_after: bool,
}

/// Recovers the engine from `dir`. `visit` sees every replayed record with the
/// effects it had (tools use it; the router passes a no-op).
pub fn recover(
    dir: &Path,
    market: &MarketConfig,
    options: RecoverOptions,
    mut visit: impl FnMut(u64, &JournalRecord, &[Effect]),
) -> Result<Recovered, String> {
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
    mut visit: impl FnMut(u64, &JournalRecord, &[Effect], &Engine),
) -> Result<Recovered, String> {
    let started = Instant::now();
    let listing = files::list(dir)?;
    let mut notes = Vec::new();
    if !options.read_only {
        for tmp in &listing.temporaries {
            let _ = std::fs::remove_file(tmp);
        }
    }
    let (mut engine, snapshot_seq) = newest_valid_snapshot(&listing.snapshots, &mut notes)
        .map(|(seq, engine)| (engine, Some(seq)))
        .unwrap_or_else(|| (Engine::new(market.clone()), None));
    let covered = snapshot_seq.unwrap_or(0);
    let mut recovered = Recovered {
        engine: Engine::new(MarketConfig::default()),
        last_seq: covered,
        snapshot_seq,
        records_replayed: 0,
        records_covered: 0,
        bytes_cut: 0,
        notes: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut previous_seq: Option<u64> = None;
    let mut effects = Vec::new();
    let mut zero_tails: Vec<(&PathBuf, usize)> = Vec::new();
    let segments = &listing.segments;
    for (index, (name_seq, path)) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let header = files::check_segment_header(&bytes).and_then(|first| {
            if first == *name_seq {
                Ok(())
            } else {
                Err(format!(
                    "header says first seq {first}, name says {name_seq}"
                ))
            }
        });
        let damage = match header {
            Err(what) => Some(Damage {
                offset: 0,
                what,
                record_after: false,
            }),
            Ok(()) => {
                let mut offset = files::SEGMENT_HEADER_BYTES;
                let mut damage = None;
                while offset < bytes.len() {
                    let parsed = record::parse(&bytes[offset..]);
                    if parsed.is_err() && is_zero_tail(&bytes[offset..]) {
                        zero_tails.push((path, offset));
                        break;
                    }
                    let fault = match &parsed {
                        // Records pass their checksums but do not follow: history is
                        // missing, which no torn write explains.
                        Ok(rec) => expected_next(previous_seq, covered, rec.seq)
                            .err()
                            .map(|what| (what, true)),
                        Err(fault) => {
                            let expected = previous_seq.map_or(*name_seq, |seq| seq + 1);
                            Some((
                                describe(fault),
                                valid_record_after(&bytes, offset, expected),
                            ))
                        }
                    };
                    if let Some((what, record_after)) = fault {
                        damage = Some(Damage {
                            offset,
                            what,
                            record_after,
                        });
                        break;
                    }
                    let rec = parsed.expect("checked above");
                    previous_seq = Some(rec.seq);
                    if rec.seq <= covered {
                        recovered.records_covered += 1;
                    } else {
                        let journal_record = JournalRecord::decode(rec.payload).map_err(|e| {
                            format!(
                                "journal {} at offset {offset}: record {} passes its checksum \
                                 but does not decode ({e}); refusing to start",
                                path.display(),
                                rec.seq
                            )
                        })?;
                        effects.clear();
                        engine.apply(&journal_record.command, journal_record.now_ms, &mut effects);
                        visit(rec.seq, &journal_record, &effects, &engine);
                        recovered.records_replayed += 1;
                        recovered.last_seq = rec.seq;
                    }
                    offset += rec.framed_len;
                }
                damage
            }
        };
        let Some(damage) = damage else { continue };
        let cut = bytes.len() - damage.offset;
        let later: Vec<&PathBuf> = segments[index + 1..].iter().map(|(_, p)| p).collect();
        if is_last && !damage.record_after {
            notes.push(format!(
                "journal tail cut: {} at offset {}: {}; {cut} bytes removed",
                path.display(),
                damage.offset,
                damage.what
            ));
        } else if options.allow_corrupt_truncate {
            notes.push(format!(
                "journal CORRUPT before its tail, cut as allowed: {} at offset {}: {}; \
                 {cut} bytes and {} later segment(s) removed",
                path.display(),
                damage.offset,
                damage.what,
                later.len()
            ));
        } else {
            return Err(format!(
                "journal corrupt before its tail: {} at offset {}: {}; refusing to start \
                 (journal.allow_corrupt_truncate, or --allow-corrupt-truncate, cuts the \
                 journal there and loses every record after it)",
                path.display(),
                damage.offset,
                damage.what
            ));
        }
        recovered.bytes_cut += cut as u64;
        if !options.read_only {
            cut_at(path, damage.offset)?;
            for path in &later {
                std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            files::sync_dir(dir)?;
        }
        break;
    }
    if !options.read_only && !zero_tails.is_empty() {
        for (path, offset) in &zero_tails {
            // Only segments still present (a cut removes the later ones).
            if path.exists() {
                cut_at(path, *offset)?;
            }
        }
    }
    if snapshot_seq.is_none() && previous_seq.is_none() && segments.iter().any(|(s, _)| *s > 1) {
        return Err(format!(
            "{}: the journal starts after seq 1 and no valid snapshot covers it",
            dir.display()
        ));
    }
    recovered.engine = engine;
    recovered.notes = notes;
    recovered.elapsed = started.elapsed();
    Ok(recovered)
}

fn describe(fault: &RecordFault) -> String {
    fault.to_string()
}

/// The first record seen must continue the snapshot (or start at 1); every later one
/// must follow its predecessor.
fn expected_next(previous: Option<u64>, covered: u64, seq: u64) -> Result<(), String> {
    match previous {
        Some(previous) if seq != previous + 1 => Err(format!(
            "sequence break: record {seq} follows record {previous}"
        )),
        None if seq > covered + 1 => Err(format!(
            "records {} to {} are missing (the journal resumes at {seq})",
            covered + 1,
            seq - 1
        )),
        _ => Ok(()),
    }
}

/// Is there a valid record of this journal anywhere after `offset`, where the record
/// numbered `expected_seq` should have been? Only then is the damage not a torn tail.
/// A zero tail holds none (a record's checksum is never all zeros), so the scan
/// stops at the last non-zero byte: a preallocated tail costs no hashing. A position
/// is hashed only if its header is plausible: a length that fits and a sequence
/// number in `expected_seq ..= expected_seq + (bytes skipped) / header size` (every
/// lost record took at least a header). Without that filter, garbage after the
/// damage cost one checksum of up to 8 MiB per position whose random length fitted:
/// quadratic, 2.8 s for a 6 MiB random tail, hours for a whole segment.
pub(crate) fn valid_record_after(bytes: &[u8], offset: usize, expected_seq: u64) -> bool {
    let end = bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |last| last + 1);
    // Positions stop at the last non-zero byte; a record read there keeps the zeros
    // after it (its payload may end in zeros).
    (offset + 1..end.saturating_sub(record::RECORD_HEADER_BYTES - 1)).any(|at| {
        let Some(seq) = record::peek_seq(&bytes[at..]) else {
            return false;
        };
        let lost_max = ((at - offset) / record::RECORD_HEADER_BYTES) as u64;
        (expected_seq..=expected_seq.saturating_add(lost_max)).contains(&seq)
            && record::parse(&bytes[at..]).is_ok()
    })
}

/// The preallocated, never-written rest of a segment: nothing but zeros.
pub(crate) fn is_zero_tail(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

fn cut_at(path: &Path, offset: usize) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if offset < files::SEGMENT_HEADER_BYTES {
        // Not even a header: the segment never held a record.
        drop(file);
        return std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()));
    }
    file.set_len(offset as u64)
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn newest_valid_snapshot(
    snapshots: &[(u64, PathBuf)],
    notes: &mut Vec<String>,
) -> Option<(u64, Engine)> {
    for (name_seq, path) in snapshots.iter().rev() {
        let loaded = files::read_snapshot(path).and_then(|(seq, state)| {
            if seq != *name_seq {
                return Err(format!(
                    "snapshot {}: header says seq {seq}",
                    path.display()
                ));
            }
            Engine::restore(&state)
                .map(|engine| (seq, engine))
                .map_err(|e| format!("snapshot {}: {e:?}", path.display()))
        });
        match loaded {
            Ok(found) => return Some(found),
            Err(error) => notes.push(format!("{error}; trying an older snapshot")),
        }
    }
    None
}
