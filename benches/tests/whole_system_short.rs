//! CI guard for the whole-system benchmark (issue 7): runs `whole-system --short`
//! (seconds per part, no rate search, no thresholds) against the debug router and
//! loadgen, and checks that the JSON has every figure with a sane type, so the
//! script cannot rot. The figures themselves are not judged here: a debug build on
//! a busy CI machine measures nothing worth a threshold. See BENCHMARKS.md.

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;
use yellowstone_benches::process::{which, Owned};

fn number(report: &Value, path: &[&str]) -> f64 {
    let mut value = report;
    for key in path {
        value = &value[*key];
    }
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{} is not a number: {value}", path.join(".")))
}

#[test]
fn short_mode_writes_every_figure() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("bench.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_whole-system"));
    command
        .args(["--short", "--no-install-redis", "--out"])
        .arg(&out)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .stdin(Stdio::null());
    // Bounded: the run takes about 60 s; a hung child is killed by its pid.
    let usage = Owned::spawn(&mut command)
        .expect("spawn whole-system")
        .wait(Duration::from_secs(360), Duration::from_secs(10));
    assert!(usage.success, "whole-system --short failed: {usage:?}");
    let text = std::fs::read_to_string(&out).expect("the JSON was written");
    let report: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(report["mode"], "short");

    // 1. Crypto efficiency: signature work over router CPU, both measured.
    let efficiency = number(&report, &["crypto_efficiency"]);
    assert!(efficiency > 0.0 && efficiency < 10.0, "{efficiency}");
    for op in [
        "rfc_verify_us",
        "probe_answer_verify_us",
        "report_verify_us",
        "ticket_sign_us",
        "batch_sign_us",
    ] {
        assert!(
            number(&report, &["crypto", "signature_cost_us", op]) > 0.0,
            "{op}"
        );
    }
    assert!(number(&report, &["crypto", "sessions"]) > 0.0);
    assert!(number(&report, &["crypto", "router_cpu_s"]) > 0.0);
    // The same share with the cost the router measured in place.
    let in_situ = number(&report, &["crypto", "efficiency_in_situ"]);
    assert!(in_situ > 0.0 && in_situ < 10.0, "{in_situ}");
    for op in ["in_situ_verify_us", "in_situ_sign_us"] {
        assert!(number(&report, &["crypto", op]) > 0.0, "{op}");
    }

    // 2. Ping vs Redis: a ratio when redis is installed (.ci/run installs it),
    // otherwise null with the reason.
    let router_pings = number(&report, &["ping", "router", "pings_per_s"]);
    assert!(router_pings > 0.0);
    if which("redis-server").is_some() && which("redis-benchmark").is_some() {
        let ratio = number(&report, &["ping_vs_redis"]);
        assert!(ratio > 0.0, "{ratio}");
        assert!(number(&report, &["ping", "redis", "pings_per_s"]) > 0.0);
    } else {
        assert!(report["ping_vs_redis"].is_null());
        assert!(report["ping"]["redis_unavailable"].is_string());
    }

    // 3. io_uring vs mio.
    assert!(number(&report, &["uring_vs_mio_sessions"]) > 0.0);
    assert!(number(&report, &["uring_vs_mio_p99"]) > 0.0);

    // 4. Latency by durability and load level.
    for durability in ["always", "none"] {
        for level in ["load_50", "load_90"] {
            let at = |p: &str| number(&report, &["latency_us", durability, level, p]);
            let (p50, p99, p999) = (at("p50"), at("p99"), at("p999"));
            assert!(
                p50 > 0.0 && p50 <= p99 && p99 <= p999,
                "{durability} {level}: {p50} {p99} {p999}"
            );
            assert!(at("rate") > 0.0);
        }
    }
    assert!(number(&report, &["max_sustainable_rate", "rfc_per_s"]) > 0.0);

    // 5. Snapshots: p99.9 with a snapshot every block and without, and their ratio.
    for key in ["p999_with_us", "p999_without_us", "p999_ratio", "p99_ratio"] {
        assert!(
            number(&report, &["snapshots", key]) > 0.0,
            "snapshots.{key}"
        );
    }
    assert!(number(&report, &["snapshots", "accounts"]) > 0.0);
    // The router under test publishes its engine thread's pause at snapshot points.
    assert!(number(&report, &["snapshots", "engine_pause_us_max"]) >= 0.0);
}
