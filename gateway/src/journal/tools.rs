//! What the operator subcommands print: journal records, a verification of a data
//! directory, and the Compute Contract ledger. All read-only: they never cut a tail
//! or remove a file, so they are safe on a directory a stopped router will reuse.

use super::classify::{self, Cursor, ScanEnd, SegmentFacts, Verdict};
use super::error::{JournalError, StorageError};
use super::files;
use super::record::JournalRecord;
use super::recovery::{RecoverOptions, Recovered};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the operator tools fail with.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Reading or recovering the journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The directory holds no market file.
    #[error("{dir}: no {file} here: not a router data directory", dir = .dir.display(), file = files::MARKET_FILE)]
    NotDataDir {
        /// The directory given.
        dir: PathBuf,
    },
    /// A member's data directory (`raft/`, issue 25) could not be read.
    #[error(transparent)]
    Member(#[from] crate::replication::read_only::MemberReadError),
    /// Writing the output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
    /// `dump` met damage the router refuses to start on (`classify::Verdict::Refuse`).
    #[error(
        "journal corrupt before its tail: {line}; the router refuses to start on it (see `verify`)"
    )]
    CorruptBeforeTail {
        /// The damage line printed.
        line: String,
    },
    /// The recovered engine fails an invariant check.
    #[error("invariant broken after recovery: {error}\n{report:#}")]
    InvariantBroken {
        /// The failed check's message.
        error: String,
        /// The verification report.
        report: Value,
    },
}

impl From<ToolError> for String {
    fn from(error: ToolError) -> String {
        error.to_string()
    }
}

fn market_of(dir: &Path) -> Result<yellowstone_engine::MarketConfig, ToolError> {
    files::read_market(dir)?.ok_or_else(|| ToolError::NotDataDir {
        dir: dir.to_path_buf(),
    })
}

/// Checks that `dir` is a router data directory (it holds the market file), with an
/// error naming the directory otherwise.
pub fn check_data_dir(dir: &Path) -> Result<(), ToolError> {
    market_of(dir).map(|_| ())
}

/// Recovers the engine from `dir` without changing anything on disk: a router's
/// journal, or a replicated member's `raft/` ([`recover_member`]).
/// Errors: [`ToolError`] (not a data directory, damage before the tail naming file
/// and offset, a member's log that does not fit its snapshot).
pub fn recover_read_only(dir: &Path) -> Result<Recovered, ToolError> {
    recover_read_only_visiting(dir, |_, _, _, _| {})
}

/// Recovers the engine from `dir` without changing anything on disk; `visit` sees
/// each replayed record, its effects and the engine just after it.
pub fn recover_read_only_visiting(
    dir: &Path,
    visit: impl FnMut(u64, &JournalRecord, &[yellowstone_engine::Effect], &yellowstone_engine::Engine),
) -> Result<Recovered, ToolError> {
    let market = market_of(dir)?;
    if is_member_dir(dir)? {
        return recover_member(dir, &market, visit);
    }
    let options = RecoverOptions {
        allow_corrupt_truncate: false,
        read_only: true,
    };
    Ok(super::recovery::recover_observing(
        dir, &market, options, visit,
    )?)
}

/// A member's data directory (issue 25): `raft/` and no journal. A directory with a
/// journal is a router's (a member never writes one), whatever else it holds.
fn is_member_dir(dir: &Path) -> Result<bool, ToolError> {
    if !crate::replication::read_only::is_member_dir(dir) {
        return Ok(false);
    }
    let listing = files::list(dir)?;
    Ok(listing.segments.is_empty() && listing.snapshots.is_empty())
}

/// Recovers a member's state read-only (R-HA-1): its stored snapshot, then its log's
/// entries up to the committed index, applied as its state machine applies them
/// (`replication::read_only`). Never an uncommitted suffix (a deposed leader's log
/// may hold one); never written, cut or locked, so it runs beside a running member.
/// In the result, `last_seq` is the last applied record's journal sequence number,
/// `snapshot_seq` the snapshot's, `bytes_cut` the torn tail a starting member cuts.
fn recover_member(
    dir: &Path,
    market: &yellowstone_engine::MarketConfig,
    visit: impl FnMut(u64, &JournalRecord, &[yellowstone_engine::Effect], &yellowstone_engine::Engine),
) -> Result<Recovered, ToolError> {
    let started = std::time::Instant::now();
    let replay = crate::replication::read_only::replay_member(
        dir,
        yellowstone_engine::Engine::new(market.clone()),
        visit,
    )?;
    let mut notes = vec![format!(
        "replicated member: raft snapshot {}, committed index {}, {} entries ({} records) \
         applied after it",
        replay.snapshot.map_or("none".to_string(), |(log_id, _)| {
            log_id.map_or("genesis".to_string(), |l| {
                format!("at log index {}", l.index)
            })
        }),
        replay
            .committed
            .map_or("none".to_string(), |c| c.index.to_string()),
        replay.entries_applied,
        replay.records_applied,
    )];
    if replay.uncommitted_entries > 0 {
        notes.push(format!(
            "{} log entries past the committed index not applied (not known committed)",
            replay.uncommitted_entries
        ));
    }
    if replay.stale_entries > 0 {
        notes.push(format!(
            "{} stale entries skipped (a deposed leader's late proposals; every member skips them)",
            replay.stale_entries
        ));
    }
    let mut bytes_cut = 0;
    if let Some(torn) = replay.torn.as_ref().filter(|t| !t.zeros) {
        bytes_cut = torn.bytes;
        notes.push(format!(
            "torn tail in raft/{} at offset {} ({} bytes): past the committed index; \
             the member cuts it at its next start",
            torn.file, torn.offset, torn.bytes
        ));
    }
    Ok(Recovered {
        engine: replay.engine,
        last_seq: replay.next_seq - 1,
        snapshot_seq: replay.snapshot.map(|(_, next_seq)| next_seq - 1),
        records_replayed: replay.records_applied,
        records_covered: 0,
        bytes_cut,
        notes,
        elapsed: started.elapsed(),
    })
}

/// Why `dump`'s scan stopped early.
enum Stop {
    Limit,
    Failed(ToolError),
}

/// Prints records with seq >= `from`, at most `limit`, as text or JSON lines (a
/// member's data directory: its committed records, [`dump_member`]).
/// Returns how many were printed. A torn tail is reported in a line and is not an
/// error (a crash leaves one; the router cuts it); damage before the tail is: the
/// records up to it are printed, then Err naming file and offset (exit 1). Which is
/// which is recovery's own decision (`classify`), so the two never disagree.
pub fn dump(
    dir: &Path,
    from: u64,
    limit: u64,
    json_lines: bool,
    out: &mut dyn Write,
) -> Result<u64, ToolError> {
    if is_member_dir(dir)? {
        return dump_member(dir, from, limit, json_lines, out);
    }
    let mut printed = 0;
    let segments = files::list(dir)?.segments;
    // Segments a snapshot covers may be pruned: the journal starts where its first
    // segment does.
    let mut cursor = Cursor {
        previous_seq: None,
        covered: segments.first().map_or(0, |(seq, _)| seq.saturating_sub(1)),
    };
    for (index, (name_seq, path)) in segments.iter().enumerate() {
        let bytes = std::fs::read(path)
            .map_err(|e| JournalError::from(StorageError::new("read", path, e)))?;
        let scanned = classify::scan(&bytes, *name_seq, &mut cursor, |offset, rec| {
            if printed >= limit {
                return Err(Stop::Limit);
            }
            if rec.seq >= from {
                print_record(out, path, offset, rec, json_lines).map_err(Stop::Failed)?;
                printed += 1;
            }
            Ok(())
        });
        let end = match scanned {
            Ok(end) => end,
            Err(Stop::Limit) => return Ok(printed),
            Err(Stop::Failed(error)) => return Err(error),
        };
        let ScanEnd::Damaged { offset, damage, .. } = &end else {
            continue;
        };
        if printed >= limit {
            return Ok(printed);
        }
        let line = format!(
            "damage: {} at offset {offset}: {damage} ({} bytes after it)",
            path.display(),
            bytes.len() - offset
        );
        writeln!(out, "{line}")?;
        let facts = SegmentFacts {
            is_last: index + 1 == segments.len(),
            end: end.clone(),
        };
        match classify::classify(&facts, false) {
            Verdict::CutTail { .. } => {
                writeln!(out, "torn tail: the router cuts it at its next start")?;
                break;
            }
            verdict => {
                debug_assert!(matches!(verdict, Verdict::Refuse { .. }), "{verdict:?}");
                out.flush()?;
                return Err(ToolError::CorruptBeforeTail { line });
            }
        }
    }
    Ok(printed)
}

/// [`dump`] on a member's data directory (issue 25): the records of its committed
/// log entries after its snapshot, as its state machine applies them (the snapshot's
/// records are in no file: a member keeps no journal). A torn tail past the committed
/// index is reported in a line, as the journal's; damage within the log is an error
/// naming the segment and offset, before anything is printed.
fn dump_member(
    dir: &Path,
    from: u64,
    limit: u64,
    json_lines: bool,
    out: &mut dyn Write,
) -> Result<u64, ToolError> {
    let market = market_of(dir)?;
    let mut printed = 0;
    let mut failed = None;
    let replay = crate::replication::read_only::replay_member(
        dir,
        yellowstone_engine::Engine::new(market),
        |seq, record, _, _| {
            if seq < from || printed >= limit || failed.is_some() {
                return;
            }
            match write_record(out, seq, record, json_lines) {
                Ok(()) => printed += 1,
                Err(error) => failed = Some(error),
            }
        },
    )?;
    if let Some(error) = failed {
        return Err(error.into());
    }
    if let Some((log_id, next_seq)) = replay.snapshot {
        if from < next_seq && printed < limit {
            writeln!(
                out,
                "records 1..={} are in the member's snapshot (log index {}), not listed",
                next_seq - 1,
                log_id.map_or("genesis".to_string(), |l| l.index.to_string())
            )?;
        }
    }
    if let Some(torn) = replay.torn.as_ref().filter(|t| !t.zeros) {
        writeln!(
            out,
            "torn tail: raft/{} at offset {} ({} bytes), past the committed index: the \
             member cuts it at its next start",
            torn.file, torn.offset, torn.bytes
        )?;
    }
    Ok(printed)
}

fn write_record(
    out: &mut dyn Write,
    seq: u64,
    record: &JournalRecord,
    json_lines: bool,
) -> std::io::Result<()> {
    if json_lines {
        let line = json!({
            "seq": seq,
            "now_ms": record.now_ms,
            "command": format!("{:?}", record.command),
        });
        writeln!(out, "{line}")
    } else {
        writeln!(out, "{:>10}  {}  {:?}", seq, record.now_ms, record.command)
    }
}

fn print_record(
    out: &mut dyn Write,
    path: &Path,
    offset: usize,
    rec: &super::record::RecordRef<'_>,
    json_lines: bool,
) -> Result<(), ToolError> {
    let decoded = JournalRecord::decode(rec.payload).map_err(|e| JournalError::Undecodable {
        path: path.to_path_buf(),
        offset,
        seq: rec.seq,
        reason: e.to_string(),
    })?;
    Ok(write_record(out, rec.seq, &decoded, json_lines)?)
}

/// Recovers read-only and checks the engine's invariants (solvency, capacity,
/// quota, book). Err if the directory would not start or an invariant fails.
pub fn verify(dir: &Path) -> Result<Value, ToolError> {
    let recovered = recover_read_only(dir)?;
    let engine = &recovered.engine;
    let invariants =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.check_invariants()))
            .map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "invariant check failed".into())
            });
    let report = json!({
        "data_dir": dir.display().to_string(),
        "snapshot_seq": recovered.snapshot_seq,
        "records_replayed": recovered.records_replayed,
        "records_covered_by_snapshot": recovered.records_covered,
        "last_seq": recovered.last_seq,
        "tail_bytes_to_cut": recovered.bytes_cut,
        "notes": recovered.notes,
        "block": engine.block(),
        "state_hash": hex::encode(engine.state_hash()),
        "replay_ms": recovered.elapsed.as_millis() as u64,
        "invariants": match &invariants { Ok(()) => "ok".to_string(), Err(e) => e.clone() },
    });
    match invariants {
        Ok(()) => Ok(report),
        Err(error) => Err(ToolError::InvariantBroken { error, report }),
    }
}

/// The Compute Contract ledger as the recovered engine holds it.
pub fn ledger(dir: &Path) -> Result<Value, ToolError> {
    let recovered = recover_read_only(dir)?;
    let engine = &recovered.engine;
    let ledger = engine.ledger();
    // R-CONTRACT-2 with checked sums: a wrapped total cannot pass for solvency.
    let solvent = ledger.solvency().is_ok();
    let providers: Vec<Value> = ledger
        .owed_wei
        .iter()
        .map(|(address, owed)| {
            json!({
                "provider": yellowstone_wire::Address(address.0).to_string(),
                "owed_wei": owed.to_string(),
            })
        })
        .collect();
    let counters = engine.counters();
    // Wei amounts are strings: they exceed what JSON numbers carry exactly.
    Ok(json!({
        "block": engine.block(),
        "last_batch_block": ledger.last_block,
        "batches": counters.batches,
        "sessions_credited": counters.sessions_credited,
        "reports": counters.reports,
        "emitted_wei": ledger.emitted_wei.to_string(),
        "credited_wei": ledger.credited_total_wei.to_string(),
        "paid_wei": ledger.paid_wei.to_string(),
        "burned_wei": ledger.burned_wei.to_string(),
        "owed_wei": ledger.owed_total_wei.to_string(),
        "shortfall_wei": ledger.shortfall_total_wei.to_string(),
        "contract_balance_wei": ledger.contract_balance_wei().to_string(),
        "solvent": solvent,
        "providers": providers,
        "last_seq": recovered.last_seq,
    }))
}

/// The ledger as an operator reads it.
pub fn ledger_text(ledger: &Value) -> String {
    let field = |key: &str| match &ledger[key] {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    };
    let mut text = String::new();
    for (label, key) in [
        ("block (open)", "block"),
        ("last batch block", "last_batch_block"),
        ("batches", "batches"),
        ("sessions credited", "sessions_credited"),
        ("emitted (wei)", "emitted_wei"),
        ("credited (wei)", "credited_wei"),
        ("paid (wei)", "paid_wei"),
        ("burned (wei)", "burned_wei"),
        ("owed (wei)", "owed_wei"),
        ("shortfall (wei)", "shortfall_wei"),
        ("contract balance (wei)", "contract_balance_wei"),
        ("solvent", "solvent"),
    ] {
        text.push_str(&format!("{label:<24}{}\n", field(key)));
    }
    let providers = ledger["providers"].as_array().cloned().unwrap_or_default();
    text.push_str(&format!("owed per provider ({}):\n", providers.len()));
    for provider in providers {
        text.push_str(&format!(
            "  {}  {}\n",
            provider["provider"].as_str().unwrap_or("?"),
            provider["owed_wei"].as_str().unwrap_or("?")
        ));
    }
    text
}
