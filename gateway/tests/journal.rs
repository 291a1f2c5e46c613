//! The journal on disk: recovery reaches the state hash the engine had after every
//! durable record; torn tails are cut; corruption before the tail refuses to start
//! (naming file and offset) unless explicitly allowed; damaged snapshots fall back to
//! older ones; segments are pruned only once a snapshot covers them.

use std::path::{Path, PathBuf};
use yellowstone_engine::workload::{Workload, WorkloadSizes};
use yellowstone_engine::{Command, Engine, MarketConfig};
use yellowstone_gateway::journal::{
    files, recover, DurabilityMode, Journal, JournalConfig, RecoverOptions, Recovered,
};
use yellowstone_gateway::sequencer::{Durability, JournalRecord};

struct Written {
    market: MarketConfig,
    /// hashes[k]: state hash after records 1..=k (hashes[0]: genesis).
    hashes: Vec<[u8; 32]>,
}

fn sizes() -> WorkloadSizes {
    WorkloadSizes {
        models: 3,
        providers: 12,
        users: 200,
        // Slow time so that a few thousand lifecycles cross block boundaries.
        lifecycles_per_ms: 1,
    }
}

fn commands(lifecycles: usize) -> (MarketConfig, Vec<(u64, Command)>) {
    let mut out = Vec::new();
    let mut workload = Workload::new(sizes(), &mut out);
    for _ in 0..lifecycles {
        workload.lifecycle(&mut out);
    }
    (Workload::market_config(&sizes()), out)
}

fn config(dir: &Path, mode: DurabilityMode) -> JournalConfig {
    JournalConfig {
        segment_bytes_max: 16 * 1024,
        ..JournalConfig::new(dir.to_path_buf(), mode)
    }
}

/// Journals `lifecycles` lifecycles, snapshotting every `snapshot_every` records.
fn write(
    dir: &Path,
    mode: DurabilityMode,
    lifecycles: usize,
    snapshot_every: Option<u64>,
) -> Written {
    let (market, commands) = commands(lifecycles);
    let mut journal = Journal::open(config(dir, mode), 1).unwrap();
    let mut engine = Engine::new(market.clone());
    let mut hashes = vec![engine.state_hash()];
    let mut effects = Vec::new();
    for (now_ms, command) in commands {
        let record = JournalRecord { now_ms, command };
        let seq = journal.append(&record.encode()).unwrap();
        engine.apply(&record.command, now_ms, &mut effects);
        hashes.push(engine.state_hash());
        assert_eq!(seq as usize, hashes.len() - 1);
        if snapshot_every.is_some_and(|every| seq.is_multiple_of(every)) {
            journal.snapshot(seq, engine.snapshot()).unwrap();
            // Let the snapshot thread take it before the next one comes.
            journal.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    journal.flush().unwrap();
    drop(journal);
    Written { market, hashes }
}

fn recover_in(
    dir: &Path,
    market: &MarketConfig,
    options: RecoverOptions,
) -> Result<Recovered, String> {
    recover(dir, market, options, |_, _, _| {}).map_err(String::from)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    files::list(dir)
        .unwrap()
        .segments
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

/// Offsets of every record boundary in a segment.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = files::SEGMENT_HEADER_BYTES;
    // A segment still open (copied from under a running journal) ends in zeros.
    while at < bytes.len() && bytes[at..].iter().any(|b| *b != 0) {
        offsets.push(at);
        at += yellowstone_gateway::journal::record::parse(&bytes[at..])
            .unwrap()
            .framed_len;
    }
    offsets
}

#[test]
fn every_mode_recovers_the_exact_state_and_continues_the_sequence() {
    for mode in [
        DurabilityMode::Always,
        DurabilityMode::Interval,
        DurabilityMode::None,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path(), mode, 3_000, None);
        let total = written.hashes.len() as u64 - 1;
        assert!(segments(dir.path()).len() > 3, "small segments roll over");
        let recovered = recover_in(dir.path(), &written.market, RecoverOptions::default()).unwrap();
        assert_eq!(recovered.last_seq, total, "{mode:?}");
        assert_eq!(recovered.records_replayed, total);
        assert_eq!(
            recovered.engine.state_hash(),
            written.hashes[total as usize]
        );
        assert!(recovered.notes.is_empty(), "{:?}", recovered.notes);
        recovered.engine.check_invariants();

        // The restarted journal continues the sequence, and a second recovery
        // replays both runs.
        let mut journal = Journal::open(config(dir.path(), mode), total + 1).unwrap();
        let mut engine = recovered.engine;
        let mut effects = Vec::new();
        let tick = JournalRecord {
            now_ms: engine.now_ms() + 60_000,
            command: Command::Tick,
        };
        assert_eq!(journal.append(&tick.encode()).unwrap(), total + 1);
        engine.apply(&tick.command, tick.now_ms, &mut effects);
        journal.flush().unwrap();
        drop(journal);
        let again = recover_in(dir.path(), &written.market, RecoverOptions::default()).unwrap();
        assert_eq!(again.last_seq, total + 1);
        assert_eq!(again.engine.state_hash(), engine.state_hash());
    }
}

#[test]
fn a_torn_tail_at_any_byte_recovers_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let written = write(dir.path(), DurabilityMode::Always, 400, None);
    let last = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let offsets = record_offsets(&bytes);
    let total = written.hashes.len() - 1;
    let first_seq_in_last = total - offsets.len() + 1;
    let ends: Vec<usize> = offsets[1..].iter().copied().chain([bytes.len()]).collect();
    // Cut inside each of the last records, and just after the header.
    let mut cuts: Vec<usize> = offsets.iter().rev().take(25).map(|o| o + 3).collect();
    cuts.extend([bytes.len() - 1, files::SEGMENT_HEADER_BYTES + 1]);
    for cut in cuts {
        let copy = copy_dir(dir.path());
        let path = copy.path().join(last.file_name().unwrap());
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let recovered =
            recover_in(copy.path(), &written.market, RecoverOptions::default()).unwrap();
        // Records wholly before the cut survive; the one the cut is inside does not.
        let whole = ends.iter().filter(|end| **end <= cut).count();
        let kept_bytes = ends
            .iter()
            .copied()
            .filter(|end| *end <= cut)
            .max()
            .unwrap_or(files::SEGMENT_HEADER_BYTES);
        assert_eq!(
            recovered.last_seq as usize,
            first_seq_in_last - 1 + whole,
            "cut at {cut}"
        );
        assert_eq!(
            recovered.engine.state_hash(),
            written.hashes[recovered.last_seq as usize],
            "cut at {cut}"
        );
        assert_eq!(
            recovered.bytes_cut as usize,
            cut - kept_bytes,
            "cut at {cut}"
        );
        assert!(
            recovered.notes[0].contains("journal tail cut"),
            "{:?}",
            recovered.notes
        );
        assert!(recovered.notes[0].contains("bytes removed"));
        // The cut is made on disk: a second recovery is clean.
        let again = recover_in(copy.path(), &written.market, RecoverOptions::default()).unwrap();
        assert!(again.notes.is_empty());
        assert_eq!(again.last_seq, recovered.last_seq);
    }
}

#[test]
fn zeros_or_garbage_after_the_last_record_are_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let written = write(dir.path(), DurabilityMode::Always, 200, None);
    let total = written.hashes.len() as u64 - 1;
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    bytes.extend_from_slice(b"\xff\xff\x00\x00garbage");
    std::fs::write(&last, &bytes).unwrap();
    let recovered = recover_in(dir.path(), &written.market, RecoverOptions::default()).unwrap();
    assert_eq!(recovered.last_seq, total);
    assert_eq!(recovered.bytes_cut, 4096 + 11);
    assert_eq!(
        recovered.engine.state_hash(),
        written.hashes[total as usize]
    );
}

#[test]
fn corruption_before_the_tail_refuses_to_start_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let written = write(dir.path(), DurabilityMode::Always, 600, None);
    let all = segments(dir.path());
    assert!(all.len() >= 3);
    // A bit flip in the middle of the second segment, inside its fifth record.
    let pristine = copy_dir(dir.path());
    let victim = &all[1];
    let bytes = std::fs::read(victim).unwrap();
    let offsets = record_offsets(&bytes);
    let flip_at = offsets[4] + 30;
    let mut flipped = bytes.clone();
    flipped[flip_at] ^= 0x04;
    std::fs::write(victim, &flipped).unwrap();

    let copy = copy_dir(dir.path());
    let error = recover_in(dir.path(), &written.market, RecoverOptions::default())
        .err()
        .expect("refused");
    assert!(error.contains("corrupt before its tail"), "{error}");
    assert!(error.contains(&victim.display().to_string()), "{error}");
    assert!(error.contains(&format!("offset {}", offsets[4])), "{error}");
    assert_eq!(
        std::fs::read(victim).unwrap(),
        flipped,
        "a refusal changes nothing"
    );

    // The same damage in the last segment, with whole records after it, is not a
    // tail either. (Drop the newest segment so that a full one is last.)
    let other = pristine;
    std::fs::remove_file(other.path().join(all.last().unwrap().file_name().unwrap())).unwrap();
    let last = other.path().join(all[all.len() - 2].file_name().unwrap());
    let mut last_bytes = std::fs::read(&last).unwrap();
    let last_offsets = record_offsets(&last_bytes);
    assert!(last_offsets.len() > 10);
    last_bytes[last_offsets[2] + 2] ^= 0x01;
    std::fs::write(&last, &last_bytes).unwrap();
    let error = recover_in(other.path(), &written.market, RecoverOptions::default())
        .err()
        .expect("damage followed by whole records is refused");
    assert!(
        error.contains(&format!("offset {}", last_offsets[2])),
        "{error}"
    );

    // Allowed: cut there, keeping the exact prefix.
    let recovered = recover_in(
        copy.path(),
        &written.market,
        RecoverOptions {
            allow_corrupt_truncate: true,
            read_only: false,
        },
    )
    .unwrap();
    assert!(
        recovered.notes[0].contains("CORRUPT"),
        "{:?}",
        recovered.notes
    );
    assert_eq!(
        recovered.engine.state_hash(),
        written.hashes[recovered.last_seq as usize]
    );
    assert!(recovered.last_seq < written.hashes.len() as u64 - 1);
    assert_eq!(segments(copy.path()).len(), 2, "later segments removed");
}

#[test]
fn snapshots_prune_covered_segments_and_a_damaged_one_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let written = write(dir.path(), DurabilityMode::Always, 2_000, Some(1_500));
    let total = written.hashes.len() as u64 - 1;
    let listing = files::list(dir.path()).unwrap();
    assert_eq!(listing.snapshots.len(), 2, "two snapshots kept");
    let oldest_kept = listing.snapshots[0].0;
    assert!(
        listing.segments[0].0 <= oldest_kept + 1,
        "the oldest kept snapshot is still covered by the journal"
    );
    assert!(listing.segments[0].0 > 1, "segments before it were removed");

    let recovered = recover_in(dir.path(), &written.market, RecoverOptions::default()).unwrap();
    assert_eq!(recovered.snapshot_seq, Some(listing.snapshots[1].0));
    assert_eq!(recovered.last_seq, total);
    assert_eq!(
        recovered.engine.state_hash(),
        written.hashes[total as usize]
    );
    assert!(recovered.records_replayed < total);

    // Flip a byte of the newest snapshot: recovery uses the older one.
    let newest = &listing.snapshots[1].1;
    let mut bytes = std::fs::read(newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x80;
    std::fs::write(newest, &bytes).unwrap();
    let recovered = recover_in(dir.path(), &written.market, RecoverOptions::default()).unwrap();
    assert_eq!(recovered.snapshot_seq, Some(oldest_kept));
    assert!(recovered.notes[0].contains("trying an older snapshot"));
    assert_eq!(
        recovered.engine.state_hash(),
        written.hashes[total as usize]
    );

    // Both snapshots damaged and the journal's start pruned: refuse.
    let oldest = &listing.snapshots[0].1;
    std::fs::write(oldest, b"not a snapshot").unwrap();
    let error = recover_in(dir.path(), &written.market, RecoverOptions::default())
        .err()
        .expect("refused");
    assert!(
        error.contains("missing") || error.contains("no valid snapshot"),
        "{error}"
    );
}

#[test]
fn read_only_recovery_reports_the_cut_without_making_it() {
    let dir = tempfile::tempdir().unwrap();
    let written = write(dir.path(), DurabilityMode::Always, 100, None);
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&last, &bytes).unwrap();
    let options = RecoverOptions {
        read_only: true,
        ..RecoverOptions::default()
    };
    let recovered = recover_in(dir.path(), &written.market, options).unwrap();
    assert!(recovered.bytes_cut > 0);
    assert_eq!(std::fs::read(&last).unwrap(), bytes, "nothing written");
}

#[test]
fn without_fsync_per_record_a_batch_seal_still_reaches_disk_on_request() {
    use std::sync::atomic::Ordering;
    for mode in [DurabilityMode::None, DurabilityMode::Interval] {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(
            JournalConfig {
                fsync_interval_ms: 60_000,
                ..config(dir.path(), mode)
            },
            1,
        )
        .unwrap();
        let tick = JournalRecord {
            now_ms: 1,
            command: Command::Tick,
        };
        for _ in 0..10 {
            journal.append(&tick.encode()).unwrap();
        }
        assert_eq!(journal.durable_seq(), 10, "{mode:?}: released at once");
        let fsyncs = journal.stats().fsyncs.load(Ordering::Relaxed);
        assert!(journal.synced_seq() < 7, "{mode:?}: not synced yet");
        let updates = journal.durable_updates();
        // Asking does not wait (the engine thread goes on); the writer syncs and says so.
        journal.request_sync(7).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while journal.synced_seq() < 7 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "{mode:?}: the requested sync never came");
            let _ = updates.recv_timeout(left);
        }
        assert!(
            journal.stats().fsyncs.load(Ordering::Relaxed) > fsyncs,
            "{mode:?}: request_sync fsyncs"
        );
    }
}

#[test]
fn the_operator_tools_read_without_writing() {
    use yellowstone_gateway::journal::tools;
    let dir = tempfile::tempdir().unwrap();
    let written = write(dir.path(), DurabilityMode::Always, 300, None);
    let total = written.hashes.len() as u64 - 1;
    files::write_market(dir.path(), &written.market).unwrap();

    let mut out = Vec::new();
    let printed = tools::dump(dir.path(), 5, 3, true, &mut out).unwrap();
    assert_eq!(printed, 3);
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![5, 6, 7]
    );

    let report = tools::verify(dir.path()).unwrap();
    assert_eq!(report["last_seq"], total);
    assert_eq!(report["invariants"], "ok");
    assert_eq!(
        report["state_hash"],
        hex_of(&written.hashes[total as usize])
    );
    let ledger = tools::ledger(dir.path()).unwrap();
    assert_eq!(ledger["solvent"], true);
    assert!(tools::ledger_text(&ledger).contains("owed per provider"));

    // A torn tail: reported by the tools, left on disk for the router to cut.
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&last, &bytes).unwrap();
    let mut out = Vec::new();
    tools::dump(dir.path(), 1, u64::MAX, false, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("damage:") && text.contains("torn tail"),
        "{text}"
    );
    let report = tools::verify(dir.path()).unwrap();
    assert!(report["tail_bytes_to_cut"].as_u64().unwrap() > 0);
    assert_eq!(std::fs::read(&last).unwrap(), bytes);
    // Damage before the tail (a flipped byte in the first record of the first
    // segment, whole records after it): the dump prints up to it and fails.
    let first = segments(dir.path()).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[files::SEGMENT_HEADER_BYTES + 20] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();
    let mut out = Vec::new();
    let error = tools::dump(dir.path(), 1, u64::MAX, false, &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("corrupt before its tail") && error.contains(&first.display().to_string()),
        "{error}"
    );
    assert!(String::from_utf8(out).unwrap().contains("damage:"));
    assert!(tools::verify(tempfile::tempdir().unwrap().path())
        .unwrap_err()
        .to_string()
        .contains("not a router data directory"));
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Damage anywhere (a flipped bit, a cut, a zeroed run, in any segment or the
/// snapshot): recovery either refuses with an error naming a file, or returns a
/// state that is exactly the state after some prefix of the journal, never a
/// mixture and never a panic. With the damage in the tail, it keeps every whole
/// record before it.
/// Garbage after a torn record (random bytes, with a checksum-valid record whose
/// sequence number cannot be this journal's among them) is a torn tail: cut, every
/// whole record kept. Only a record that cutting would lose (its number between the
/// damaged one and what the skipped bytes could hold) makes the damage corruption;
/// the scan hashes nothing else, so a large random tail is not quadratic to classify.
#[test]
fn garbage_after_a_torn_record_is_a_tail_and_only_this_journals_records_count() {
    let dir = tempfile::tempdir().unwrap();
    let written = write(dir.path(), DurabilityMode::Always, 200, None);
    let total = written.hashes.len() as u64 - 1;
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let end = *record_offsets(&bytes).last().unwrap();
    let end = end
        + yellowstone_gateway::journal::record::parse(&bytes[end..])
            .unwrap()
            .framed_len;
    bytes.truncate(end);
    // A torn record: a header announcing more than follows.
    yellowstone_gateway::journal::record::encode_into(&mut bytes, total + 1, &[7u8; 200]).unwrap();
    bytes.truncate(bytes.len() - 100);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..(2 << 20) / 8 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    // Whole and checksum-valid, but numbered far beyond anything lost here.
    yellowstone_gateway::journal::record::encode_into(
        &mut bytes,
        total + 1_000_000_000,
        &[1u8; 64],
    )
    .unwrap();
    bytes.extend_from_slice(&[0xAB; 100]);
    std::fs::write(&last, &bytes).unwrap();
    let recovered = recover_in(dir.path(), &written.market, RecoverOptions::default())
        .expect("a torn tail, not corruption");
    assert_eq!(recovered.last_seq, total);
    assert_eq!(
        recovered.engine.state_hash(),
        written.hashes[total as usize]
    );
    assert!(
        recovered.notes[0].contains("tail cut"),
        "{:?}",
        recovered.notes
    );

    // The same, but the record after the garbage is the one the torn write lost:
    // cutting would lose it, so it is corruption.
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.truncate(end);
    yellowstone_gateway::journal::record::encode_into(&mut bytes, total + 1, &[7u8; 200]).unwrap();
    bytes.truncate(bytes.len() - 100);
    bytes.extend_from_slice(&[0xCD; 4096]);
    // Its payload ends in zeros, like the zero tail after it: still a whole record.
    let payload = [[1u8; 32], [0u8; 32]].concat();
    yellowstone_gateway::journal::record::encode_into(&mut bytes, total + 2, &payload).unwrap();
    std::fs::write(&last, &bytes).unwrap();
    let error = recover_in(dir.path(), &written.market, RecoverOptions::default())
        .err()
        .expect("a record of this journal after the damage");
    assert!(error.contains("corrupt before its tail"), "{error}");
}

#[test]
fn random_damage_never_yields_a_wrong_state() {
    let dir = tempfile::tempdir().unwrap();
    let written = write(dir.path(), DurabilityMode::Always, 700, Some(1_000));
    let listing = files::list(dir.path()).unwrap();
    let mut victims: Vec<PathBuf> = listing.segments.iter().map(|(_, p)| p.clone()).collect();
    victims.extend(listing.snapshots.iter().map(|(_, p)| p.clone()));
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut refused, mut recovered_count) = (0, 0);
    for case in 0..150 {
        let copy = copy_dir(dir.path());
        let victim = &victims[next() as usize % victims.len()];
        let path = copy.path().join(victim.file_name().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        let at = next() as usize % bytes.len();
        match next() % 3 {
            0 => bytes[at] ^= 1 << (next() % 8),
            1 => bytes.truncate(at),
            _ => {
                let end = (at + 1 + next() as usize % 64).min(bytes.len());
                bytes[at..end].fill(0);
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        match recover_in(copy.path(), &written.market, RecoverOptions::default()) {
            Ok(recovered) => {
                recovered_count += 1;
                assert_eq!(
                    recovered.engine.state_hash(),
                    written.hashes[recovered.last_seq as usize],
                    "case {case}: {} at {at}",
                    path.display()
                );
            }
            Err(error) => {
                refused += 1;
                assert!(
                    error.contains("journal-")
                        || error.contains("snapshot")
                        || error.contains("missing"),
                    "case {case}: the error names what is damaged: {error}"
                );
            }
        }
    }
    assert!(
        refused > 0 && recovered_count > 0,
        "both outcomes seen ({refused} refused)"
    );
}

#[test]
fn a_journal_that_cannot_write_fails_stop_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::create_dir(&path).unwrap();
    let mut journal = Journal::open(
        JournalConfig {
            segment_bytes_max: 4096,
            ..JournalConfig::new(path.clone(), DurabilityMode::Always)
        },
        1,
    )
    .unwrap();
    // The directory disappears: the next segment cannot be created.
    std::fs::remove_dir_all(&path).unwrap();
    let record = JournalRecord {
        now_ms: 1,
        command: Command::Tick,
    }
    .encode();
    let mut error = None;
    for _ in 0..10_000 {
        if let Err(e) = journal.append(&record).and_then(|_| journal.flush()) {
            error = Some(e);
            break;
        }
    }
    let error = error
        .expect("the failure surfaces to the engine thread")
        .to_string();
    assert!(error.contains("data"), "names the path: {error}");
    assert!(journal.append(&record).is_err(), "and stays failed");
    assert!(
        journal.durable_seq() < journal.last_seq(),
        "nothing more is durable"
    );
}

/// Polls `journal.durable_seq()` until it reaches `seq`; false after `limit`.
fn durable_within(journal: &Journal, seq: u64, limit: std::time::Duration) -> bool {
    let started = std::time::Instant::now();
    while journal.durable_seq() < seq {
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    true
}

#[test]
fn the_group_commit_window_holds_records_but_never_a_flush_or_a_full_group() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::open(
        JournalConfig {
            // Far longer than the test: anything written early was not held by it.
            group_commit_us: 60_000_000,
            group_bytes_max: 4096,
            ..config(dir.path(), DurabilityMode::Always)
        },
        1,
    )
    .unwrap();
    let tick = JournalRecord {
        now_ms: 1,
        command: Command::Tick,
    }
    .encode();
    // After a quiet spell the first record goes at once.
    journal.append(&tick).unwrap();
    assert!(durable_within(&journal, 1, Duration::from_secs(20)));
    // The next ones wait for the window (or a reason to go earlier).
    for _ in 0..10 {
        journal.append(&tick).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(journal.durable_seq(), 1, "held by the window");
    assert_eq!(journal.stats().writes.load(Ordering::Relaxed), 1);
    // A flush (shutdown, snapshot, sealed block) does not sit out the window.
    let started = Instant::now();
    journal.flush().unwrap();
    assert_eq!(journal.durable_seq(), 11);
    assert!(started.elapsed() < Duration::from_secs(20));
    // Nor does a group that reached group_bytes_max.
    let mut last = 11;
    let mut bytes = 0;
    while bytes < 4096 {
        last = journal.append(&tick).unwrap();
        bytes += tick.len() + 28;
    }
    assert!(
        durable_within(&journal, last, Duration::from_secs(20)),
        "a full group is written at once"
    );
    assert!(journal.stats().writes.load(Ordering::Relaxed) >= 3);
}

/// Appends Tick records far faster than the disk fsyncs until the writer has written
/// `groups` groups, flushes, and returns the journal's (records, writes, held groups).
fn burst(adaptive_max_us: u64, groups: u64) -> (u64, u64, u64) {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::open(
        JournalConfig {
            segment_bytes_max: 64 * 1024 * 1024,
            group_commit_adaptive_max_us: adaptive_max_us,
            ..JournalConfig::new(dir.path().to_path_buf(), DurabilityMode::Always)
        },
        1,
    )
    .unwrap();
    let tick = JournalRecord {
        now_ms: 1,
        command: Command::Tick,
    }
    .encode();
    // Ten records every ~50 us, far more than one per fsync, until the writer has
    // written `groups` groups (or a generous deadline passes on a stalled machine).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut appended = 0;
    while journal.stats().writes.load(Ordering::Relaxed) < groups
        && std::time::Instant::now() < deadline
    {
        for _ in 0..10 {
            journal.append(&tick).unwrap();
        }
        appended += 10;
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
    journal.flush().unwrap();
    assert_eq!(journal.durable_seq(), appended);
    let stats = journal.stats();
    (
        stats.records.load(Ordering::Relaxed),
        stats.writes.load(Ordering::Relaxed),
        stats.held_groups.load(Ordering::Relaxed),
    )
}

#[test]
fn adaptive_group_commit_holds_groups_only_when_fsyncs_run_back_to_back() {
    // Records arrive far faster than one per fsync: λ·D ≫ 1, so groups are held.
    let (records, writes, held) = burst(100_000, 40);
    assert!(
        held >= 1,
        "a saturated journal holds groups ({writes} writes of {records} records)"
    );
    assert!(writes < records);
    // Off: the same load is never held.
    let (_, _, held) = burst(0, 40);
    assert_eq!(held, 0);
}

/// Appends `lifecycles` lifecycles to an open journal in `always` mode and returns
/// it still open (its segment carries the preallocated zero tail) with the hashes.
fn write_and_keep_open(dir: &Path, lifecycles: usize, config: JournalConfig) -> (Journal, Written) {
    let (market, commands) = commands(lifecycles);
    let mut journal = Journal::open(config, 1).unwrap();
    let mut engine = Engine::new(market.clone());
    let mut hashes = vec![engine.state_hash()];
    let mut effects = Vec::new();
    for (now_ms, command) in commands {
        let record = JournalRecord { now_ms, command };
        journal.append(&record.encode()).unwrap();
        engine.apply(&record.command, now_ms, &mut effects);
        hashes.push(engine.state_hash());
    }
    journal.flush().unwrap();
    let _ = dir;
    (journal, Written { market, hashes })
}

#[test]
fn a_crash_leaves_a_zero_tail_that_recovery_takes_as_the_end() {
    use yellowstone_gateway::journal::JournalIo;
    for io in [JournalIo::Dsync, JournalIo::Sync, JournalIo::Uring] {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig {
            segment_bytes_max: 1024 * 1024,
            preallocate_bytes: 256 * 1024,
            io,
            ..JournalConfig::new(dir.path().to_path_buf(), DurabilityMode::Always)
        };
        let (journal, written) = write_and_keep_open(dir.path(), 300, config);
        let total = written.hashes.len() as u64 - 1;
        // "Crash": copy the directory from under the running journal.
        let crashed = copy_dir(dir.path());
        drop(journal);
        let segment = segments(crashed.path()).pop().unwrap();
        let bytes = std::fs::read(&segment).unwrap();
        let offsets = record_offsets(&bytes);
        let data_end = *offsets.last().unwrap()
            + yellowstone_gateway::journal::record::parse(&bytes[*offsets.last().unwrap()..])
                .unwrap()
                .framed_len;
        assert!(bytes.len() >= data_end + 128 * 1024, "{io:?}: room ahead");
        assert!(bytes[data_end..].iter().all(|b| *b == 0));

        // The operator's dump reads it to the end and sees no damage.
        let mut out = Vec::new();
        let printed =
            yellowstone_gateway::journal::tools::dump(crashed.path(), 1, u64::MAX, false, &mut out)
                .unwrap();
        assert_eq!(printed, total, "{io:?}");
        assert!(!String::from_utf8(out).unwrap().contains("damage"));
        // Read-only recovery (the tools' verify) neither cuts nor changes anything.
        let read_only = RecoverOptions {
            read_only: true,
            ..RecoverOptions::default()
        };
        let looked = recover_in(crashed.path(), &written.market, read_only).unwrap();
        assert_eq!((looked.last_seq, looked.bytes_cut), (total, 0));
        assert_eq!(std::fs::read(&segment).unwrap(), bytes);

        let recovered =
            recover_in(crashed.path(), &written.market, RecoverOptions::default()).unwrap();
        assert_eq!(recovered.last_seq, total, "{io:?}");
        assert_eq!(
            recovered.engine.state_hash(),
            written.hashes[total as usize]
        );
        assert_eq!(recovered.bytes_cut, 0, "zeros are no damage");
        assert!(recovered.notes.is_empty(), "{:?}", recovered.notes);
        // The zero tail is gone from disk afterwards, quietly.
        assert_eq!(std::fs::read(&segment).unwrap().len(), data_end);

        // A clean close cuts the zero tail itself.
        let closed = segments(dir.path()).pop().unwrap();
        assert_eq!(std::fs::read(&closed).unwrap(), bytes[..data_end]);
    }
}

#[test]
fn a_torn_record_before_the_zero_tail_is_cut_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_bytes_max: 1024 * 1024,
        preallocate_bytes: 64 * 1024,
        ..JournalConfig::new(dir.path().to_path_buf(), DurabilityMode::Always)
    };
    let (journal, written) = write_and_keep_open(dir.path(), 200, config);
    let total = written.hashes.len() as u64 - 1;
    let crashed = copy_dir(dir.path());
    drop(journal);
    let segment = segments(crashed.path()).pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let last = *record_offsets(&bytes).last().unwrap();
    // Tear each part of the last record: keep `keep` of its bytes, zeros after
    // (as a crash inside a write into preallocated blocks leaves it), and also a
    // record whose start was lost but whose end reached the disk.
    let end = last
        + yellowstone_gateway::journal::record::parse(&bytes[last..])
            .unwrap()
            .framed_len;
    for keep in [1usize, 4, 12, 27, 28, end - last - 1] {
        let copy = copy_dir(crashed.path());
        let path = copy.path().join(segment.file_name().unwrap());
        let mut torn = bytes.clone();
        torn[last + keep..end].fill(0);
        if torn == bytes || torn[last..last + keep].iter().all(|b| *b == 0) {
            // Zeroed bytes that were zeros (no tear), or nothing of the record
            // left (a clean end).
            continue;
        }
        std::fs::write(&path, &torn).unwrap();
        let recovered =
            recover_in(copy.path(), &written.market, RecoverOptions::default()).unwrap();
        assert_eq!(recovered.last_seq, total - 1, "keep {keep}");
        assert_eq!(
            recovered.engine.state_hash(),
            written.hashes[total as usize - 1]
        );
        assert_eq!(
            recovered.bytes_cut as usize,
            bytes.len() - last,
            "keep {keep}"
        );
        assert!(
            recovered.notes[0].contains("journal tail cut"),
            "{:?}",
            recovered.notes
        );
        assert_eq!(std::fs::read(&path).unwrap().len(), last);
    }
    let copy = copy_dir(crashed.path());
    let path = copy.path().join(segment.file_name().unwrap());
    let mut torn = bytes.clone();
    torn[last..last + 28].fill(0);
    std::fs::write(&path, &torn).unwrap();
    let recovered = recover_in(copy.path(), &written.market, RecoverOptions::default()).unwrap();
    assert_eq!(recovered.last_seq, total - 1);
    assert!(recovered.notes[0].contains("journal tail cut"));
}
