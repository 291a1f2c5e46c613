//! What the operator subcommands print: journal records, a verification of a data
//! directory, and the Compute Contract ledger. All read-only: they never cut a tail
//! or remove a file, so they are safe on a directory a stopped router will reuse.

use super::files;
use super::record;
use super::record::JournalRecord;
use super::recovery::{recover, RecoverOptions, Recovered};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;

fn market_of(dir: &Path) -> Result<yellowstone_engine::MarketConfig, String> {
    files::read_market(dir)?.ok_or_else(|| {
        format!(
            "{}: no {} here: not a router data directory",
            dir.display(),
            files::MARKET_FILE
        )
    })
}

/// Checks that `dir` is a router data directory (it holds the market file), with an
/// error naming the directory otherwise.
pub fn check_data_dir(dir: &Path) -> Result<(), String> {
    market_of(dir).map(|_| ())
}

/// Recovers the engine from `dir` without changing anything on disk.
pub fn recover_read_only(dir: &Path) -> Result<Recovered, String> {
    let market = market_of(dir)?;
    let options = RecoverOptions {
        allow_corrupt_truncate: false,
        read_only: true,
    };
    recover(dir, &market, options, |_, _, _| {})
}

/// Recovers the engine from `dir` without changing anything on disk; `visit` sees
/// each replayed record, its effects and the engine just after it.
pub fn recover_read_only_visiting(
    dir: &Path,
    visit: impl FnMut(u64, &JournalRecord, &[yellowstone_engine::Effect], &yellowstone_engine::Engine),
) -> Result<Recovered, String> {
    let market = market_of(dir)?;
    let options = RecoverOptions {
        allow_corrupt_truncate: false,
        read_only: true,
    };
    super::recovery::recover_observing(dir, &market, options, visit)
}

/// Prints records with seq >= `from`, at most `limit`, as text or JSON lines.
/// Returns how many were printed. A torn tail is reported in a line and is not an
/// error (a crash leaves one; the router cuts it); damage before the tail is: the
/// records up to it are printed, then Err naming file and offset (exit 1).
pub fn dump(
    dir: &Path,
    from: u64,
    limit: u64,
    json_lines: bool,
    out: &mut dyn Write,
) -> Result<u64, String> {
    let io = |e: std::io::Error| e.to_string();
    let mut printed = 0;
    let segments = files::list(dir)?.segments;
    let last = segments.len().saturating_sub(1);
    let mut previous_seq: Option<u64> = None;
    for (index, (name_seq, path)) in segments.into_iter().enumerate() {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        files::check_segment_header(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut offset = files::SEGMENT_HEADER_BYTES;
        while offset < bytes.len() && printed < limit {
            let rec = match record::parse(&bytes[offset..]) {
                Ok(rec) => rec,
                // The preallocated room of a running or crashed router: the end.
                Err(_) if super::recovery::is_zero_tail(&bytes[offset..]) => break,
                Err(fault) => {
                    let line = format!(
                        "damage: {} at offset {offset}: {fault} ({} bytes after it)",
                        path.display(),
                        bytes.len() - offset
                    );
                    writeln!(out, "{line}").map_err(io)?;
                    // A torn tail (the end of the last segment, no whole record after
                    // it) is what a crash leaves and the router cuts at start; damage
                    // anywhere else is corruption the router refuses to start on.
                    let expected = previous_seq.map_or(name_seq, |seq| seq + 1);
                    if index != last
                        || super::recovery::valid_record_after(&bytes, offset, expected)
                    {
                        out.flush().map_err(io)?;
                        return Err(format!(
                            "journal corrupt before its tail: {line}; the router refuses to \
                             start on it (see `verify`)"
                        ));
                    }
                    writeln!(out, "torn tail: the router cuts it at its next start").map_err(io)?;
                    break;
                }
            };
            previous_seq = Some(rec.seq);
            if rec.seq >= from {
                let decoded = JournalRecord::decode(rec.payload)
                    .map_err(|e| format!("{} at offset {offset}: {e}", path.display()))?;
                if json_lines {
                    let line = json!({
                        "seq": rec.seq,
                        "now_ms": decoded.now_ms,
                        "command": format!("{:?}", decoded.command),
                    });
                    writeln!(out, "{line}").map_err(io)?;
                } else {
                    writeln!(
                        out,
                        "{:>10}  {}  {:?}",
                        rec.seq, decoded.now_ms, decoded.command
                    )
                    .map_err(io)?;
                }
                printed += 1;
            }
            offset += rec.framed_len;
        }
    }
    Ok(printed)
}

/// Recovers read-only and checks the engine's invariants (solvency, capacity,
/// quota, book). Err if the directory would not start or an invariant fails.
pub fn verify(dir: &Path) -> Result<Value, String> {
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
        Err(error) => Err(format!(
            "invariant broken after recovery: {error}\n{report:#}"
        )),
    }
}

/// The Compute Contract ledger as the recovered engine holds it.
pub fn ledger(dir: &Path) -> Result<Value, String> {
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
