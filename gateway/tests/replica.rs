//! The snapshot replica (issue 18 item 2, ARCHITECTURE.md "Latency: what waits for
//! the disk"): a replica engine fed the journal records serialises the snapshots, so
//! the engine thread does not. Its snapshot at a point hashes exactly like the
//! engine there; a replica that differs writes nothing and is reseeded; a replica
//! that falls behind its bounded queue never blocks the engine and is reseeded; a
//! restart from a replica's snapshot + the journal reaches the state of a run
//! without restart.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use yellowstone_engine::workload::{Workload, WorkloadSizes};
use yellowstone_engine::{Command, Engine, MarketConfig};
use yellowstone_gateway::journal::{
    recover, DurabilityMode, Journal, JournalConfig, RecoverOptions, ReplicaConfig, ReplicaStats,
    Replicated,
};
use yellowstone_gateway::sequencer::{Durability, JournalRecord, NoJournal};

type Snapshots = crossbeam_channel::Receiver<(u64, Vec<u8>)>;

fn commands(lifecycles: usize) -> (MarketConfig, Vec<(u64, Command)>) {
    let sizes = WorkloadSizes {
        models: 3,
        providers: 12,
        users: 200,
        lifecycles_per_ms: 1,
    };
    let mut out = Vec::new();
    let mut workload = Workload::new(sizes, &mut out);
    for _ in 0..lifecycles {
        workload.lifecycle(&mut out);
    }
    (Workload::market_config(&sizes), out)
}

fn verifying() -> ReplicaConfig {
    ReplicaConfig {
        verify_state_hash: true,
        ..ReplicaConfig::default()
    }
}

/// A replica over a journal that keeps nothing; its snapshots arrive on the receiver.
fn replicated(engine: &Engine, config: ReplicaConfig) -> (Replicated<NoJournal>, Snapshots) {
    let (snapshots, received) = crossbeam_channel::bounded(1);
    let replicated = Replicated::start(NoJournal::default(), engine, 0, snapshots, config).unwrap();
    (replicated, received)
}

/// Journals and applies one command, as the sequencer does.
fn step<D: Durability>(journal: &mut D, engine: &mut Engine, now_ms: u64, command: Command) -> u64 {
    let record = JournalRecord { now_ms, command };
    let seq = journal.append(&record.encode()).unwrap();
    let mut effects = Vec::new();
    engine.apply(&record.command, now_ms, &mut effects);
    seq
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Acquire)
}

/// Receives the snapshot of `seq` and checks it is the engine's state.
fn expect_snapshot(received: &Snapshots, seq: u64, engine: &Engine) {
    let (at, state) = received
        .recv_timeout(Duration::from_secs(30))
        .expect("a snapshot for the point");
    assert_eq!(at, seq);
    assert_eq!(*blake3::hash(&state).as_bytes(), engine.state_hash());
    let restored = Engine::restore(&state).unwrap();
    assert_eq!(restored.state_hash(), engine.state_hash());
}

#[test]
fn replica_snapshot_at_each_point_hashes_like_the_engine() {
    let (market, commands) = commands(800);
    let mut engine = Engine::new(market);
    let (mut journal, received) = replicated(&engine, verifying());
    let mut points = 0;
    for (now_ms, command) in commands {
        let seq = step(&mut journal, &mut engine, now_ms, command);
        if seq % 500 == 0 {
            journal.snapshot_point(seq, &engine).unwrap();
            points += 1;
            expect_snapshot(&received, seq, &engine);
        }
    }
    assert!(points >= 4, "{points} points");
    let stats: &ReplicaStats = journal.replica_stats_ref();
    assert_eq!(get(&stats.snapshot_points), points);
    // Counted once handed over, just after the test received it.
    wait_until("the count", || get(&stats.snapshots_replica) == points);
    assert_eq!(get(&stats.hash_checks), points);
    assert_eq!(get(&stats.hash_mismatches), 0);
    assert_eq!(
        get(&stats.snapshots_engine_thread),
        0,
        "no pause for a snapshot"
    );
    assert_eq!(get(&stats.snapshots_skipped), 0);
    engine.check_invariants();
}

#[test]
fn a_replica_that_differs_writes_nothing_and_is_reseeded_from_the_engine() {
    let (market, commands) = commands(400);
    let mut engine = Engine::new(market);
    let (mut journal, received) = replicated(&engine, verifying());
    let mut effects = Vec::new();
    let mut phase = 0;
    for (index, (now_ms, command)) in commands.into_iter().enumerate() {
        let seq = if index == 250 {
            // The replica is handed another record than the engine applies.
            let wrong = JournalRecord {
                now_ms,
                command: Command::Tick,
            };
            let seq = journal.append(&wrong.encode()).unwrap();
            engine.apply(&command, now_ms, &mut effects);
            seq
        } else {
            step(&mut journal, &mut engine, now_ms, command)
        };
        if seq % 300 != 0 {
            continue;
        }
        let stats = journal.replica_stats().expect("a replica");
        journal.snapshot_point(seq, &engine).unwrap();
        match phase {
            0 => {
                wait_until("the hash check", || get(&stats.hash_checks) == 1);
                assert_eq!(get(&stats.hash_mismatches), 1);
                assert_eq!(get(&stats.snapshots_skipped), 1);
                assert!(received.try_recv().is_err(), "a wrong state is not written");
            }
            1 => {
                // Reseeded from the engine thread: its state is the snapshot.
                assert_eq!(get(&stats.snapshots_engine_thread), 1);
                expect_snapshot(&received, seq, &engine);
            }
            _ => {
                // Following again: the replica's own snapshots are right.
                expect_snapshot(&received, seq, &engine);
                assert_eq!(get(&stats.snapshots_engine_thread), 1);
            }
        }
        phase += 1;
    }
    assert!(phase >= 3, "{phase} points");
    let stats = journal.replica_stats_ref();
    assert_eq!(get(&stats.hash_mismatches), 1);
    wait_until("the count", || get(&stats.snapshots_replica) == phase - 2);
}

#[test]
fn a_replica_behind_its_whole_queue_never_blocks_the_engine_and_is_reseeded() {
    let (market, commands) = commands(600);
    let mut engine = Engine::new(market);
    let config = ReplicaConfig {
        queue_bytes_max: 16 * 1024,
        batch_bytes_max: 4 * 1024,
        verify_state_hash: true,
    };
    let (mut journal, received) = replicated(&engine, config);
    let release = journal.hold_replica().expect("a replica runs");
    let mut commands = commands.into_iter();
    // Appends go on while the replica stands still: the queue fills, then overflows.
    while get(&journal.replica_stats_ref().overflows) == 0 {
        let (now_ms, command) = commands.next().expect("enough commands to overflow");
        step(&mut journal, &mut engine, now_ms, command);
    }
    let stats = journal.replica_stats_ref();
    assert!(
        get(&stats.queue_bytes) <= 16 * 1024,
        "the queue stays bounded"
    );
    assert_eq!(get(&stats.out_of_sync), 1);
    for (now_ms, command) in commands.by_ref().take(100) {
        step(&mut journal, &mut engine, now_ms, command);
    }
    assert_eq!(
        get(&journal.replica_stats_ref().overflows),
        1,
        "nothing more is queued"
    );
    // The snapshot point reseeds the replica from the engine thread.
    let now_ms = engine.now_ms();
    let seq = step(&mut journal, &mut engine, now_ms, Command::Tick);
    journal.snapshot_point(seq, &engine).unwrap();
    assert_eq!(get(&journal.replica_stats_ref().snapshots_engine_thread), 1);
    drop(release);
    expect_snapshot(&received, seq, &engine);
    // And it follows again (paced: the test's queue holds only four batches).
    let mut last = seq;
    for (index, (now_ms, command)) in commands.enumerate() {
        last = step(&mut journal, &mut engine, now_ms, command);
        if index % 10 == 0 {
            let stats = journal.replica_stats().expect("a replica");
            wait_until("the replica to catch up", || get(&stats.queue_bytes) == 0);
        }
    }
    journal.snapshot_point(last, &engine).unwrap();
    expect_snapshot(&received, last, &engine);
    let stats = journal.replica_stats_ref();
    wait_until("the count", || get(&stats.snapshots_replica) == 1);
    assert_eq!(get(&stats.overflows), 1);
    assert_eq!(get(&stats.snapshots_engine_thread), 1);
    assert_eq!(get(&stats.hash_mismatches), 0);
    assert_eq!(get(&stats.queue_bytes), 0);
}

fn journal_config(dir: &Path) -> JournalConfig {
    JournalConfig {
        segment_bytes_max: 64 * 1024,
        ..JournalConfig::new(dir.to_path_buf(), DurabilityMode::Always)
    }
}

fn snapshots_written<D: Durability>(journal: &D) -> u64 {
    get(&journal.stats().expect("a journal on disk").snapshots)
}

/// Journals `commands` through `journal`, a snapshot point every `every` records,
/// each waited for on disk; returns the last point.
fn run_on_disk<D: Durability>(
    journal: &mut D,
    engine: &mut Engine,
    commands: Vec<(u64, Command)>,
    every: u64,
) -> u64 {
    let mut last_point = 0;
    for (now_ms, command) in commands {
        let seq = step(journal, engine, now_ms, command);
        if seq % every == 0 {
            let before = snapshots_written(journal);
            journal.snapshot_point(seq, engine).unwrap();
            wait_until("the snapshot on disk", || {
                snapshots_written(journal) > before
            });
            last_point = seq;
        }
    }
    journal.flush().unwrap();
    last_point
}

#[test]
fn a_restart_from_the_replicas_snapshot_reaches_the_state_of_a_run_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (market, commands) = commands(1_500);
    let total = commands.len() as u64;
    let mut engine = Engine::new(market.clone());
    let journal = Journal::open(journal_config(dir.path()), 1).unwrap();
    let snapshots = journal.snapshot_sender().unwrap();
    let mut journal = Replicated::start(journal, &engine, 0, snapshots, verifying()).unwrap();
    let last_point = run_on_disk(&mut journal, &mut engine, commands, 1_000);
    assert!(
        last_point >= 3_000 && last_point < total,
        "{last_point} of {total}"
    );
    let stats = journal.replica_stats_ref();
    assert_eq!(get(&stats.snapshots_engine_thread), 0);
    assert_eq!(get(&stats.hash_mismatches), 0);
    assert!(
        get(&journal.inner().stats().segments_removed) > 0,
        "covered segments go"
    );
    drop(journal);

    let recovered = recover(dir.path(), &market, RecoverOptions::default(), |_, _, _| {}).unwrap();
    assert_eq!(
        recovered.snapshot_seq,
        Some(last_point),
        "{:?}",
        recovered.notes
    );
    assert_eq!(recovered.records_replayed, total - last_point);
    assert_eq!(recovered.last_seq, total);
    assert_eq!(recovered.engine.state_hash(), engine.state_hash());
    recovered.engine.check_invariants();
}

#[test]
fn without_a_replica_the_engine_thread_serialises_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let (market, commands) = commands(700);
    let total = commands.len() as u64;
    let mut engine = Engine::new(market.clone());
    let journal = Journal::open(journal_config(dir.path()), 1).unwrap();
    let mut journal = Replicated::without_replica(journal);
    let last_point = run_on_disk(&mut journal, &mut engine, commands, 1_000);
    assert!(last_point >= 1_000);
    let stats = journal.replica_stats_ref();
    assert_eq!(get(&stats.snapshots_engine_thread), last_point / 1_000);
    assert_eq!(get(&stats.snapshots_replica), 0);
    drop(journal);
    let recovered = recover(dir.path(), &market, RecoverOptions::default(), |_, _, _| {}).unwrap();
    assert_eq!(recovered.snapshot_seq, Some(last_point));
    assert_eq!(recovered.last_seq, total);
    assert_eq!(recovered.engine.state_hash(), engine.state_hash());
}
