//! Snapshots without stopping the engine (issue 18 item 2), through the real binary:
//! with a snapshot every block, the router keeps answering while its replica engine
//! writes the snapshot; the snapshot on disk plus the journal after it give the same
//! state hash as a replay of the whole journal from genesis; and the router restarts
//! from it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::{metrics_text, router_binary, RouterProcess};
use yellowstone_wire::*;

const BLOCK_MS: u64 = 12_000;

fn metric(text: &str, name: &str) -> u64 {
    yellowstone_tests::metric_text_value(text, name)
        .unwrap_or_else(|| panic!("no metric {name}"))
        .parse()
        .unwrap()
}

fn snapshot_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snapshot-") && n.ends_with(".snap"))
        })
        .collect()
}

/// `yellowstone-router verify --json`: the recovered state's report.
fn verify(dir: &Path) -> serde_json::Value {
    let output = Command::new(router_binary())
        .args(["verify", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn snapshot_every_block_is_written_by_the_replica_while_the_engine_answers() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let config = work.path().join("router.toml");
    // The first block boundary comes ~2.5 s after the start.
    let genesis_ms = now_ms() + 2_500 - BLOCK_MS;
    std::fs::write(
        &config,
        format!("[market]\ngenesis_ms = {genesis_ms}\n[journal]\nsnapshot_every_blocks = 1\n"),
    )
    .unwrap();
    let operator = operator_key().address().to_string();
    let args = [
        "--operator",
        operator.as_str(),
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let router = RouterProcess::start(&args);
    let mut client = connect(router.ready.listen, operator_key());
    let users: Vec<Address> = (0..50u32)
        .map(|n| SigningKey::from_seed(&n.to_le_bytes()).address())
        .collect();
    // Balance updates keep coming (each one answered) until a snapshot is on disk,
    // and a few more after it.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut answered = 0u128;
    let mut after_snapshot = 0;
    while after_snapshot < 20 {
        assert!(Instant::now() < deadline, "no snapshot within 40 s");
        answered += 1;
        let entries: Vec<_> = users.iter().map(|a| (*a, answered * WEI_PER_MOR)).collect();
        fund(&mut client, &entries);
        if !snapshot_files(&data).is_empty() {
            after_snapshot += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = metrics_text(router.ready.metrics);
    assert!(metric(&metrics, "yellowstone_snapshots_replica_total") >= 1);
    assert_eq!(
        metric(&metrics, "yellowstone_snapshots_engine_thread_total"),
        0
    );
    assert_eq!(
        metric(
            &metrics,
            "yellowstone_snapshot_replica_hash_mismatches_total"
        ),
        0
    );
    assert!(metric(&metrics, "yellowstone_snapshot_points_total") >= 1);
    // Every stage exported is recorded (one command in 16 for the engine's two).
    for stage in ["decode", "verify", "apply", "durable_wait"] {
        let count = metric(
            &metrics,
            &format!("yellowstone_stage_latency_seconds_count{{stage=\"{stage}\"}}"),
        );
        assert!(count >= 1, "stage {stage} never recorded");
    }
    router.kill_hard();

    // Snapshot + the journal after it == the whole journal replayed from genesis.
    let from_snapshot = verify(&data);
    assert!(
        from_snapshot["snapshot_seq"].as_u64().is_some(),
        "{from_snapshot}"
    );
    assert!(from_snapshot["last_seq"].as_u64() > from_snapshot["snapshot_seq"].as_u64());
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.starts_with("snapshot-") {
            std::fs::copy(&path, copy.path().join(&name)).unwrap();
        }
    }
    let from_genesis = verify(copy.path());
    assert!(from_genesis["snapshot_seq"].is_null(), "{from_genesis}");
    assert_eq!(from_genesis["last_seq"], from_snapshot["last_seq"]);
    assert_eq!(from_genesis["state_hash"], from_snapshot["state_hash"]);

    // The router restarts from it and keeps going.
    let router = RouterProcess::start(&args);
    let mut client = connect(router.ready.listen, operator_key());
    fund(&mut client, &[(users[0], 7)]);
    assert!(router.terminate(Duration::from_secs(20)), "clean stop");
    let after = verify(&data);
    assert!(after["last_seq"].as_u64() > from_snapshot["last_seq"].as_u64());
}
