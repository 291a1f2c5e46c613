//! `snapshot-pause`: the engine thread's pause at a snapshot point (issue 18 item 2),
//! with the snapshot replica (the engine thread sends "snapshot at seq N") against
//! without it (the engine thread serialises itself, as before), on one engine of
//! `--accounts` funded accounts, in interleaved rounds on the same thread, so the
//! ratio holds on a busy machine. Between rounds it waits for the replica's snapshot,
//! so the replica's serialisation does not overlap the next measurement. Prints JSON.
//!
//! Run: `cargo run --release -p yellowstone-benches --bin snapshot-pause -- --accounts 1000000`

use clap::Parser;
use serde_json::json;
use std::time::{Duration, Instant};
use yellowstone_engine::workload::address;
use yellowstone_engine::{Address, Command, Engine, MarketConfig};
use yellowstone_gateway::journal::{ReplicaConfig, Replicated};
use yellowstone_gateway::sequencer::{Durability, JournalRecord, NoJournal};

#[derive(Parser, Debug)]
#[command(name = "snapshot-pause")]
struct Args {
    /// Funded accounts in the engine.
    #[arg(long, default_value_t = 1_000_000)]
    accounts: u32,
    /// Interleaved rounds (each: one snapshot point with the replica, one without).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

const OPERATOR: Address = Address([0xEE; 20]);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args = Args::parse();
    let market = MarketConfig {
        genesis_ms: 1_700_000_000_000,
        operator: OPERATOR,
        ..MarketConfig::default()
    };
    let chunk = market.balance_entries_max.max(1) as usize;
    let mut engine = Engine::new(market.clone());
    let (snapshots, received) = crossbeam_channel::bounded(1);
    let config = ReplicaConfig {
        verify_state_hash: false,
        ..ReplicaConfig::default()
    };
    let mut with = Replicated::start(NoJournal::default(), &engine, 0, snapshots, config)
        .expect("replica starts");
    let mut without = Replicated::without_replica(NoJournal::default());
    let mut now_ms = market.genesis_ms;
    let mut effects = Vec::new();
    let mut seq = 0;
    let mut step = |engine: &mut Engine, with: &mut Replicated<NoJournal>, command: Command| {
        now_ms += 1;
        let record = JournalRecord { now_ms, command };
        seq = with.append(&record.encode()).expect("append");
        effects.clear();
        engine.apply(&record.command, now_ms, &mut effects);
        seq
    };
    let accounts: Vec<Address> = (0..args.accounts).map(|n| address(1, n)).collect();
    let started = Instant::now();
    for (index, entries) in accounts.chunks(chunk).enumerate() {
        let command = Command::SetBalances {
            operator: OPERATOR,
            nonce: index as u64 + 1,
            entries: entries
                .iter()
                .map(|a| (*a, 1_000_000_000_000_000_000))
                .collect(),
        };
        step(&mut engine, &mut with, command);
    }
    eprintln!(
        "snapshot-pause: {} accounts funded in {:.1} s",
        engine.accounts_len(),
        started.elapsed().as_secs_f64()
    );
    let (mut replica_us, mut engine_thread_us, mut bytes) = (Vec::new(), Vec::new(), 0);
    for round in 0..args.rounds {
        let seq = step(&mut engine, &mut with, Command::Tick);
        // Alternate which goes first.
        for first in [round % 2 == 0, round % 2 == 1] {
            if first {
                let t = Instant::now();
                with.snapshot_point(seq, &engine).expect("snapshot point");
                replica_us.push(t.elapsed().as_secs_f64() * 1e6);
                let (at, state) = received
                    .recv_timeout(Duration::from_secs(600))
                    .expect("the replica's snapshot");
                assert_eq!(at, seq);
                bytes = state.len();
            } else {
                let t = Instant::now();
                without
                    .snapshot_point(seq, &engine)
                    .expect("snapshot point");
                engine_thread_us.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let stats = with.replica_stats_ref();
    assert_eq!(
        stats
            .snapshots_engine_thread
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "every snapshot came from the replica"
    );
    replica_us.sort_by(f64::total_cmp);
    engine_thread_us.sort_by(f64::total_cmp);
    let median = |v: &[f64]| percentile(v, 0.5);
    let report = json!({
        "accounts": engine.accounts_len(),
        "rounds": args.rounds,
        "snapshot_bytes": bytes,
        "pause_us_replica": { "median": median(&replica_us), "max": replica_us.last() },
        "pause_us_engine_thread": { "median": median(&engine_thread_us), "max": engine_thread_us.last() },
        "replica_serialise_ms_last": stats.replica_serialise_ms_last.load(std::sync::atomic::Ordering::Relaxed),
        "ratio_median": median(&engine_thread_us) / median(&replica_us),
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
}
