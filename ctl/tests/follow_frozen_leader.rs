//! R-HA-3, R-HA-2 (outsider review 3, finding 4): `yellowstone-ctl batches follow`
//! against a real 3-member router group whose leader is SIGSTOPped twice, each time
//! for longer than a block (12 s) and across a block boundary. A frozen leader keeps
//! the TCP connection open and says nothing: the follower must notice by itself
//! (a Ping unanswered for 2 s), follow the new leader, and print the block the new
//! leader seals while the old one is still frozen; it must neither exit nor report a
//! gap. Before the fix it printed nothing until the leader was continued (and, with a
//! freeze spanning two boundaries, exited 4 "gap").
//!
//! Runs a group: in the `replicated-groups` serial test group (.config/nextest.toml).

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use yellowstone_tests::cluster::{Cluster, ClusterSpec};
use yellowstone_tests::market::now_ms;
use yellowstone_wire::*;

/// Lines of one output stream with the instant each was read.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

fn collect(stream: impl std::io::Read + Send + 'static) -> Lines {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push((Instant::now(), line));
        }
    });
    lines
}

fn text(lines: &Lines) -> String {
    lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, line)| line.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Block numbers printed on stdout, in order, with when each was read.
fn blocks(stdout: &Lines) -> Vec<(Instant, u64)> {
    stdout
        .lock()
        .unwrap()
        .iter()
        .map(|(at, line)| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            (at.to_owned(), value["block"].as_u64().expect("block"))
        })
        .collect()
}

/// Instant at which block `block` seals (by the wall clock, `genesis_ms`).
fn seal_instant(genesis_ms: u64, block: u64) -> Instant {
    let at_ms = genesis_ms + (block + 1) * 12_000;
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms()))
}

#[test]
fn r_ha_3_batches_follow_lives_through_two_frozen_leaders_without_a_false_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(&ClusterSpec::default()).expect("start the group");
    let key = dir.path().join("follower.key");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let secret = SigningKey::from_seed(b"ctl-follow-frozen").secret_bytes();
        std::fs::write(&key, hex::encode(secret) + "\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_yellowstone-ctl"))
        .args(["--router", &cluster.router_arg(), "--timeout-ms", "10000"])
        .arg("--key-file")
        .arg(&key)
        .args(["batches", "follow"])
        .env_remove("YELLOWSTONE_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let report = |stdout: &Lines, stderr: &Lines| {
        format!("stdout:\n{}\nstderr:\n{}", text(stdout), text(stderr))
    };
    // The subscription's first batch (the newest sealed, block 0 about 3 s in).
    let waited = Instant::now();
    while blocks(&stdout).is_empty() {
        assert!(
            waited.elapsed() < Duration::from_secs(8),
            "no first batch; {}",
            report(&stdout, &stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut excluding = None;
    for freeze in 1..=2 {
        let (leader, _) = cluster
            .wait_for_leader(excluding, Duration::from_secs(10))
            .expect("a leader");
        // The next boundary at least 3 s away (2.5 s to notice the silence, the
        // election meanwhile): the new leader seals it while the old one is frozen.
        // Closer than that: let it pass (and its batch arrive) first.
        let choosing = Instant::now();
        let block = loop {
            assert!(
                choosing.elapsed() < Duration::from_secs(20),
                "batches stopped; {}",
                report(&stdout, &stderr)
            );
            let next = blocks(&stdout).last().unwrap().1 + 1;
            let seal = seal_instant(cluster.genesis_ms, next);
            if seal >= Instant::now() + Duration::from_secs(3) {
                break next;
            }
            std::thread::sleep(
                seal.saturating_duration_since(Instant::now()) + Duration::from_secs(1),
            );
        };
        let seal = seal_instant(cluster.genesis_ms, block);
        let frozen_at = Instant::now();
        cluster.pause(leader);
        // Longer than a block, and past the seal with room for its batch to arrive.
        let resume_at =
            (frozen_at + Duration::from_millis(12_500)).max(seal + Duration::from_secs(2));
        std::thread::sleep(resume_at.saturating_duration_since(Instant::now()));
        let printed = blocks(&stdout);
        let exited = child.try_wait().unwrap();
        cluster.resume(leader);
        assert!(
            exited.is_none(),
            "ctl exited {exited:?}; {}",
            report(&stdout, &stderr)
        );
        let err = text(&stderr);
        assert_eq!(
            err.matches("no answer to a Ping within 2000 ms").count(),
            freeze,
            "freeze {freeze}: the silence was noticed while the leader was frozen; {}",
            report(&stdout, &stderr)
        );
        assert!(
            printed.iter().any(|&(_, b)| b == block),
            "freeze {freeze}: block {block}, sealed by the new leader while the old one \
             was frozen, was printed before the old one was continued; {}",
            report(&stdout, &stderr)
        );
        excluding = Some(leader);
    }
    // Both freezes over: still following, blocks in sequence, no gap, nothing missed.
    std::thread::sleep(Duration::from_millis(500));
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        exited.is_none(),
        "ctl exited {exited:?}; {}",
        report(&stdout, &stderr)
    );
    let printed: Vec<u64> = blocks(&stdout).iter().map(|&(_, b)| b).collect();
    assert!(printed.len() >= 3, "{}", report(&stdout, &stderr));
    assert!(
        printed.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{printed:?}"
    );
    let err = text(&stderr);
    for word in ["gap", "missed", "verification"] {
        assert!(!err.contains(word), "{word}: {}", report(&stdout, &stderr));
    }
    assert_eq!(
        err.matches("subscribed again").count(),
        2,
        "{}",
        report(&stdout, &stderr)
    );
}
