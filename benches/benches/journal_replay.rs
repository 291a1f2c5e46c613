//! Journal replay benchmark (durability issue): how fast recovery replays a journal
//! on one core, and how long a 10,000,000-record journal takes to recover.
//!
//! It journals a market workload (funding, registrations, then session lifecycles
//! with ticks; 100 models, 10,000 providers, 100,000 users) through the real
//! `Journal` (durability `none`: the write side is not what is measured), then
//! times `recover` on the directory: reading the segments, checking every record's
//! BLAKE3 checksum and sequence, decoding it and applying it to the engine. The
//! recovered state hash must equal the hash of the engine that produced the stream.
//!
//! Run: `cargo bench -p yellowstone-benches --bench journal_replay`
//! (`YS_REPLAY_RECORDS=1000000` for a shorter run).

use std::time::Instant;
use yellowstone_engine::workload::{Workload, WorkloadSizes};
use yellowstone_gateway::journal::{
    files, record, recover, DurabilityMode, Journal, JournalConfig, RecoverOptions,
};
use yellowstone_gateway::sequencer::{Durability, JournalRecord};

fn main() {
    let target: u64 = std::env::var("YS_REPLAY_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let sizes = WorkloadSizes {
        models: 100,
        providers: 10_000,
        users: 100_000,
        lifecycles_per_ms: 100,
    };
    let dir = tempfile::Builder::new()
        .prefix("ys-replay-bench-")
        .tempdir()
        .expect("temporary directory");
    let config = JournalConfig {
        segment_bytes_max: 256 * 1024 * 1024,
        ..JournalConfig::new(dir.path().to_path_buf(), DurabilityMode::None)
    };

    let write_started = Instant::now();
    let mut journal = Journal::open(config, 1).expect("journal opens");
    let mut commands = Vec::new();
    let mut workload = Workload::new(sizes, &mut commands);
    let mut written = 0u64;
    while written < target {
        for (now_ms, command) in commands.drain(..) {
            let bytes = JournalRecord { now_ms, command }.encode();
            written = journal.append(&bytes).expect("append");
        }
        if written < target {
            workload.lifecycle(&mut commands);
        }
    }
    journal.flush().expect("flush");
    drop(journal);
    let expected_hash = workload.shadow().state_hash();
    let bytes_on_disk: u64 = files::list(dir.path())
        .expect("list")
        .segments
        .iter()
        .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "journal: {written} records ({} lifecycles), {:.1} MiB in {} segment(s), {:.0} B/record, written in {:.2?}",
        workload.lifecycles(),
        bytes_on_disk as f64 / (1024.0 * 1024.0),
        files::list(dir.path()).expect("list").segments.len(),
        bytes_on_disk as f64 / written as f64,
        write_started.elapsed()
    );

    // The scan alone: read, checksum, sequence, decode (no engine).
    let scan_started = Instant::now();
    let mut scanned = 0u64;
    for (_, path) in files::list(dir.path()).expect("list").segments {
        let bytes = std::fs::read(&path).expect("read segment");
        let mut offset = files::SEGMENT_HEADER_BYTES;
        while offset < bytes.len() {
            let rec = record::parse(&bytes[offset..]).expect("clean journal");
            std::hint::black_box(JournalRecord::decode(rec.payload).expect("decodes"));
            offset += rec.framed_len;
            scanned += 1;
        }
    }
    let scan = scan_started.elapsed();
    println!(
        "scan (read + checksum + decode): {scanned} records in {scan:.2?} = {:.2} M records/s",
        scanned as f64 / scan.as_secs_f64() / 1e6
    );

    let market = Workload::market_config(&sizes);
    let recovered =
        recover(dir.path(), &market, RecoverOptions::default(), |_, _, _| {}).expect("recovery");
    assert_eq!(recovered.last_seq, written);
    assert_eq!(
        recovered.engine.state_hash(),
        expected_hash,
        "replay reaches the producer's state"
    );
    let seconds = recovered.elapsed.as_secs_f64();
    println!(
        "recovery (read + checksum + decode + apply): {} records in {:.2?} = {:.2} M records/s on one core; state hash equal",
        recovered.records_replayed,
        recovered.elapsed,
        recovered.records_replayed as f64 / seconds / 1e6
    );
}
