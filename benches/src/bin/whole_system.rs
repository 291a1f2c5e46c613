//! `whole-system`: the whole-system benchmark (issue 7). Ratios measured side by side
//! in one run, so that they mean something on a shared, noisy 2-core machine:
//!
//! 1. `crypto_efficiency`: over loadgen runs at the maximum sustainable rate, the
//!    router's unavoidable signature CPU (sessions x the per-session signature cost
//!    timed on this machine in this run, plus the credit batches it signed) divided by
//!    the router process's CPU time (`wait4` resource usage of the child).
//! 2. `ping_vs_redis`: router Pings/s from the loadgen's ping mode over redis-benchmark
//!    PING against a redis-server, same connections and pipeline depth.
//! 3. `uring_vs_mio_sessions` / `uring_vs_mio_p99`: the same loadgen runs against
//!    the io_uring and the mio backend: sessions ticketed per second of window at an
//!    overload rate (2x the maximum: throughput), RFC-to-ticket p99 at the maximum.
//! 4. `latency_us`: RFC-to-ticket p50/p99/p99.9 at 50 % and 90 % of the maximum
//!    sustainable rate, durability `always` and `none`.
//! 5. `snapshots` (issue 18 item 2; `--snapshot-run` alone, a small variant in
//!    `--short`): a market with a large balance snapshot (1,000,000 funded accounts),
//!    at a fixed rate (1,000 RFC/s), with a snapshot every block against none,
//!    interleaved pairs: RFC-to-ticket p99.9 of each and their ratio, and the engine
//!    thread's longest pause at a snapshot point (from the router's metrics).
//!
//! Every router is a child process on loopback with a fresh data directory, stopped
//! by SIGTERM to its pid. See BENCHMARKS.md.
//!
//! Run: `cargo run --release -p yellowstone-benches --bin whole-system -- --out bench.json`
//! (a few minutes), or `--short` (seconds, the CI mode: no search, no thresholds).

use clap::Parser;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use yellowstone_benches::process::{
    genesis_with_boundary_in, now_ms, run_capture, tail, Owned, RouterChild, RouterSpec,
};
use yellowstone_benches::redis::{self, RedisBench, RedisServer};
use yellowstone_benches::signature_cost::{self, SignatureCosts};

const BLOCK_MS: u64 = 12_000;

#[derive(Parser, Debug)]
#[command(
    name = "whole-system",
    about = "Whole-system benchmark: crypto efficiency, ping vs Redis, io_uring vs mio, latency under load. Writes JSON to --out."
)]
struct Args {
    /// Where to write the JSON figures.
    #[arg(long, default_value = "whole-system.json")]
    out: PathBuf,
    /// CI mode: a few seconds per part, no rate search, no thresholds.
    #[arg(long)]
    short: bool,
    /// yellowstone-router binary (default: built with cargo in this workspace, with
    /// the profile this program was built with).
    #[arg(long)]
    router_bin: Option<PathBuf>,
    /// yellowstone-loadgen binary (default: built like the router).
    #[arg(long)]
    loadgen_bin: Option<PathBuf>,
    /// Seconds of each loadgen market run (default 5, short 1).
    #[arg(long)]
    duration: Option<u64>,
    /// Seconds of each ping run (default 3, short 1).
    #[arg(long)]
    ping_duration: Option<u64>,
    /// Ping rounds (router then Redis, each round; default 3, short 1).
    #[arg(long)]
    ping_rounds: Option<usize>,
    #[arg(long, default_value_t = 50)]
    ping_connections: usize,
    #[arg(long, default_value_t = 16)]
    ping_pipeline: usize,
    /// First rate of the search for the maximum sustainable rate, RFC/s (default
    /// 2000; short: the rate used as the "maximum", 200).
    #[arg(long)]
    start_rate: Option<f64>,
    /// Runs of the maximum-rate search (default 8, short 0: no search).
    #[arg(long)]
    search_steps: Option<usize>,
    /// io_uring/mio pairs, in ABBA order (default 2, short 1). Each backend run is
    /// one run at the maximum rate (p99) and one at --overload x that rate
    /// (throughput: sessions ticketed within the window per second).
    #[arg(long)]
    pairs: Option<usize>,
    /// Rate of the throughput runs, as a multiple of the maximum sustainable rate
    /// (default 2; short 0: no throughput runs, the maximum-rate runs stand in).
    #[arg(long)]
    overload: Option<f64>,
    #[arg(long, default_value_t = 32)]
    users: usize,
    #[arg(long, default_value_t = 16)]
    providers: usize,
    /// Do not install redis with apt-get when it is missing.
    #[arg(long)]
    no_install_redis: bool,
    /// Directory for the routers' data directories and logs (default: a temporary
    /// directory, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Only the snapshot part (5): a snapshot every block against none, with
    /// --snapshot-accounts funded accounts, at --snapshot-rate.
    #[arg(long)]
    snapshot_run: bool,
    /// Funded accounts of the snapshot part's balance snapshot file (default
    /// 1,000,000; short 10,000).
    #[arg(long)]
    snapshot_accounts: Option<u64>,
    /// RFC/s of the snapshot part (default 1,000; short 200).
    #[arg(long)]
    snapshot_rate: Option<f64>,
    /// Seconds of each snapshot-part run (default 40: three or four block
    /// boundaries, so snapshots, inside the window; short 2).
    #[arg(long)]
    snapshot_duration: Option<u64>,
    /// With/without pairs of the snapshot part, alternating order (default 3, short 1).
    #[arg(long)]
    snapshot_pairs: Option<usize>,
    /// Milliseconds between the router's READY and the loadgen's start in the
    /// snapshot part (default 10,000; short 0): the router has just journaled the
    /// large balance snapshot.
    #[arg(long)]
    snapshot_settle_ms: Option<u64>,
}

/// The effective plan of a run.
#[derive(Clone, Debug, Serialize)]
struct Plan {
    mode: &'static str,
    duration_s: u64,
    ping_duration_s: u64,
    ping_rounds: usize,
    ping_connections: usize,
    ping_pipeline: usize,
    start_rate: f64,
    search_steps: usize,
    pairs: usize,
    overload: f64,
    users: usize,
    providers: usize,
    signature_iterations: usize,
    signature_rounds: usize,
    snapshot_accounts: u64,
    snapshot_rate: f64,
    snapshot_duration_s: u64,
    snapshot_pairs: usize,
    snapshot_settle_ms: u64,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let short = args.short;
        Plan {
            mode: if short { "short" } else { "full" },
            duration_s: args.duration.unwrap_or(if short { 1 } else { 5 }).max(1),
            ping_duration_s: args
                .ping_duration
                .unwrap_or(if short { 1 } else { 3 })
                .max(1),
            ping_rounds: args.ping_rounds.unwrap_or(if short { 1 } else { 3 }).max(1),
            ping_connections: args.ping_connections.max(1),
            ping_pipeline: args.ping_pipeline.max(1),
            start_rate: args
                .start_rate
                .unwrap_or(if short { 200.0 } else { 2000.0 })
                .max(1.0),
            search_steps: args.search_steps.unwrap_or(if short { 0 } else { 8 }),
            pairs: args.pairs.unwrap_or(if short { 1 } else { 2 }).max(1),
            overload: args
                .overload
                .unwrap_or(if short { 0.0 } else { 2.0 })
                .max(0.0),
            users: args.users.max(1),
            providers: args.providers.max(1),
            signature_iterations: if short { 100 } else { 2_000 },
            signature_rounds: if short { 3 } else { 7 },
            snapshot_accounts: args.snapshot_accounts.unwrap_or(if short {
                10_000
            } else {
                1_000_000
            }),
            snapshot_rate: args
                .snapshot_rate
                .unwrap_or(if short { 200.0 } else { 1_000.0 })
                .max(1.0),
            snapshot_duration_s: args
                .snapshot_duration
                .unwrap_or(if short { 2 } else { 40 })
                .max(1),
            snapshot_pairs: args
                .snapshot_pairs
                .unwrap_or(if short { 1 } else { 3 })
                .max(1),
            snapshot_settle_ms: args
                .snapshot_settle_ms
                .unwrap_or(if short { 0 } else { 10_000 }),
        }
    }
}

/// Everything a market run produced.
#[derive(Clone, Debug, Default, Serialize)]
struct MarketRun {
    backend: String,
    durability: String,
    rate: f64,
    /// Seconds of the loadgen's window.
    duration_s: u64,
    /// Configuration added to the router's (the snapshot part's sections).
    extra_toml: String,
    /// The router's `yellowstone_snapshot_engine_pause_us_max` (routers with the
    /// snapshot replica; None for older ones).
    snapshot_engine_pause_us_max: Option<u64>,
    /// Snapshots written (`yellowstone_snapshots_total`).
    snapshots_written: Option<u64>,
    /// The loadgen starts this long after the router is ready (a router that has
    /// just loaded a large balance snapshot is still writing it to its journal).
    settle_ms: u64,
    error: Option<String>,
    rfcs_sent: u64,
    sessions_completed: u64,
    sessions_per_s: f64,
    /// Tickets received before the window closed, per second of window: under
    /// overload, the router's throughput.
    sessions_in_window_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    self_check_ok: bool,
    keeps_up: bool,
    /// Router CPU over its whole life (wait4 usage), seconds.
    router_cpu_s: f64,
    /// Router CPU while the loadgen ran (from /proc), seconds.
    router_cpu_loadgen_s: Option<f64>,
    loadgen_cpu_s: f64,
    loadgen_wall_s: f64,
    /// The block boundary was put this long after the router's start.
    boundary_ahead_ms: u64,
    /// Credit batches the router signed (sealed before the stop, +1 at the stop).
    batches_signed: u64,
    /// Client signatures the router verified (its verify-stage count).
    router_verifications: Option<u64>,
    /// The router's own count of signature operations and their mean thread CPU
    /// time measured in place (one in 16 timed), microseconds.
    in_situ: Option<InSituSignatures>,
    router_exit_ok: bool,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
struct InSituSignatures {
    verify_ops: u64,
    sign_ops: u64,
    verify_us: f64,
    sign_us: f64,
}

impl InSituSignatures {
    fn from_metrics(text: &str) -> Option<InSituSignatures> {
        let get =
            |name: &str, op: &str| RouterChild::metric(text, &format!("{name}{{op=\"{op}\"}}"));
        let mean_us = |op: &str| -> Option<f64> {
            let samples = get("yellowstone_signature_samples_total", op)?;
            let ns = get("yellowstone_signature_sampled_cpu_ns_total", op)?;
            (samples > 0.0).then(|| ns / samples / 1_000.0)
        };
        Some(InSituSignatures {
            verify_ops: get("yellowstone_signature_ops_total", "verify")? as u64,
            sign_ops: get("yellowstone_signature_ops_total", "sign")? as u64,
            verify_us: mean_us("verify")?,
            sign_us: mean_us("sign")?,
        })
    }

    /// Signature CPU of the run as measured in place, seconds.
    fn work_s(&self) -> f64 {
        (self.verify_ops as f64 * self.verify_us + self.sign_ops as f64 * self.sign_us) / 1e6
    }
}

/// The criteria of `yellowstone-loadgen --find-max`.
fn keeps_up(run: &MarketRun) -> bool {
    run.error.is_none()
        && run.self_check_ok
        && run.rfcs_sent > 0
        && run.sessions_completed as f64 >= 0.95 * run.rfcs_sent as f64
        && run.p99_us < 100_000
}

struct Bench {
    plan: Plan,
    router_bin: PathBuf,
    loadgen_bin: PathBuf,
    operator_key: String,
    operator_address: String,
    work: PathBuf,
    /// Slack between the expected last report and the block boundary, ms.
    margin_ms: std::cell::Cell<u64>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ sits in the workspace")
        .to_path_buf()
}

/// Builds the router and the loadgen with the profile this program was built with
/// (release when run with `cargo run --release`) and returns their paths.
fn build_binaries() -> Result<(PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .ok_or("executable has no directory")?
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root()).args([
        "build",
        "-q",
        "-p",
        "yellowstone-gateway",
        "--bin",
        "yellowstone-router",
        "-p",
        "yellowstone-loadgen",
        "--bin",
        "yellowstone-loadgen",
    ]);
    if release {
        command.arg("--release");
    }
    eprintln!(
        "whole-system: building yellowstone-router and yellowstone-loadgen ({})",
        if release { "release" } else { "debug" }
    );
    run_capture(&mut command, Duration::from_secs(1_800))?;
    let router = profile_dir.join("yellowstone-router");
    let loadgen = profile_dir.join("yellowstone-loadgen");
    for path in [&router, &loadgen] {
        if !path.is_file() {
            return Err(format!("{} missing after the build", path.display()));
        }
    }
    Ok((router, loadgen))
}

/// `yellowstone-router keygen`: the operator's key.
fn keygen(router_bin: &Path) -> Result<(String, String), String> {
    let text = run_capture(
        Command::new(router_bin).arg("keygen"),
        Duration::from_secs(30),
    )?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
            .ok_or_else(|| format!("keygen printed no {name}: {text}"))
    };
    Ok((field("secret_hex")?, field("address")?))
}

impl Bench {
    fn router(
        &self,
        backend: &str,
        durability: &str,
        genesis_ms: u64,
    ) -> Result<RouterChild, String> {
        self.router_with(backend, durability, genesis_ms, "")
    }

    fn router_with(
        &self,
        backend: &str,
        durability: &str,
        genesis_ms: u64,
        extra_toml: &str,
    ) -> Result<RouterChild, String> {
        RouterChild::start(
            &self.router_bin,
            &RouterSpec {
                backend: backend.into(),
                durability: durability.into(),
                operator: self.operator_address.clone(),
                genesis_ms,
                extra_toml: extra_toml.into(),
            },
            &self.work,
        )
    }

    /// One loadgen run (steady scenario) against a fresh router child.
    fn market_run(&self, backend: &str, durability: &str, rate: f64) -> MarketRun {
        self.market_run_with(backend, durability, rate, false)
    }

    /// One loadgen run; `overloaded`: a backlog is expected, so the loadgen drains
    /// for its whole 5 s after the window before it waits for the batch.
    fn market_run_with(
        &self,
        backend: &str,
        durability: &str,
        rate: f64,
        overloaded: bool,
    ) -> MarketRun {
        let rate = rate.round().max(1.0);
        let run = MarketRun {
            backend: backend.into(),
            durability: durability.into(),
            rate,
            duration_s: self.plan.duration_s,
            ..MarketRun::default()
        };
        self.finish_run(run, overloaded)
    }

    /// Runs `run` as planned in it and prints its line.
    fn finish_run(&self, mut run: MarketRun, overloaded: bool) -> MarketRun {
        let (backend, durability, rate) = (run.backend.clone(), run.durability.clone(), run.rate);
        if let Err(error) = self.market_run_into(&mut run, overloaded) {
            run.error = Some(error);
        }
        run.keeps_up = keeps_up(&run);
        // A run without backlog that still waited a block more: widen the margin.
        if !overloaded
            && run.keeps_up
            && run.loadgen_wall_s * 1_000.0 > (run.boundary_ahead_ms + 700 + 4_000) as f64
        {
            self.margin_ms.set(self.margin_ms.get() + 1_000);
        }
        eprintln!(
            "  {:<5} {:<6} {:>7.0}/s: sessions {:>7.0}/s p99 {:>7} us, router cpu {:>5.2} s -> {}{}",
            backend,
            durability,
            rate,
            run.sessions_per_s,
            run.p99_us,
            run.router_cpu_s,
            if run.keeps_up { "keeps up" } else { "falls behind" },
            run.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        run
    }

    fn market_run_into(&self, run: &mut MarketRun, overloaded: bool) -> Result<(), String> {
        let d_ms = run.duration_s * 1_000;
        // Set-up (logins, funding, registrations, the loadgen's start delay) ~1 s,
        // the window, the last reports (up to ~1.5 s of simulated service) and a
        // margin: the block boundary falls right after the last report, so the credit
        // batch the loadgen's self-check waits for is sealed without a whole block's
        // wait. A run that missed it (waited a block more) widens the margin.
        let drain_ms = if overloaded { 5_000 } else { 0 };
        let ahead_ms = run.settle_ms + 1_000 + d_ms + drain_ms + 1_600 + self.margin_ms.get();
        let genesis_ms = genesis_with_boundary_in(now_ms(), ahead_ms, BLOCK_MS);
        run.boundary_ahead_ms = ahead_ms;
        let router =
            self.router_with(&run.backend, &run.durability, genesis_ms, &run.extra_toml)?;
        std::thread::sleep(Duration::from_millis(run.settle_ms));
        let json_path = self
            .work
            .join(format!("loadgen-{}-{}.json", std::process::id(), now_ms()));
        let log_path = json_path.with_extension("log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.loadgen_bin);
        command
            .args(["--target", &router.ready.listen.to_string()])
            .args(["--operator-key", &self.operator_key])
            .args(["--genesis-ms", &genesis_ms.to_string()])
            .args(["--scenario", "steady"])
            .args(["--duration", &run.duration_s.to_string()])
            .args(["--rate", &format!("{}", run.rate)])
            .args(["--users", &self.plan.users.to_string()])
            .args(["--providers", &self.plan.providers.to_string()])
            .arg("--quiet")
            .args(["--json".as_ref(), json_path.as_os_str()])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let cpu_before = router.cpu_s();
        let loadgen = Owned::spawn(&mut command)?;
        // Set-up + window + drain (5 s) + the wait for the covering batch (<= 30 s).
        let loadgen_usage = loadgen.wait(
            Duration::from_secs(run.duration_s + 60),
            Duration::from_secs(2),
        );
        let cpu_after = router.cpu_s();
        let metrics = router.metrics_text().unwrap_or_default();
        run.in_situ = InSituSignatures::from_metrics(&metrics);
        run.snapshot_engine_pause_us_max =
            RouterChild::metric(&metrics, "yellowstone_snapshot_engine_pause_us_max")
                .map(|v| v as u64);
        run.snapshots_written =
            RouterChild::metric(&metrics, "yellowstone_snapshots_total").map(|v| v as u64);
        let (router_usage, router_log) = router.stop(Duration::from_secs(20));
        run.router_cpu_s = router_usage.cpu_s();
        run.router_exit_ok = router_usage.success;
        run.router_cpu_loadgen_s = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
        run.loadgen_cpu_s = loadgen_usage.cpu_s();
        run.loadgen_wall_s = loadgen_usage.wall_s;
        // The stop seals the current block: one more batch signed.
        run.batches_signed =
            RouterChild::metric(&metrics, "yellowstone_batches_total").map_or(0, |b| b as u64) + 1;
        run.router_verifications = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("yellowstone_stage_latency_seconds_count{stage=\"verify\"} ")
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64);
        let text = std::fs::read_to_string(&json_path);
        let _ = std::fs::remove_file(&json_path);
        let text = match text {
            Ok(text) => text,
            Err(_) => {
                let log = tail(&log_path, 10);
                let _ = std::fs::remove_file(&log_path);
                return Err(format!(
                    "loadgen wrote no summary (exit {:?}{}): {log} {router_log}",
                    loadgen_usage.code,
                    if loadgen_usage.killed { ", killed" } else { "" }
                ));
            }
        };
        let _ = std::fs::remove_file(&log_path);
        let summary: Value =
            serde_json::from_str(&text).map_err(|e| format!("loadgen JSON: {e}"))?;
        let u = |v: &Value| v.as_u64().unwrap_or(0);
        let latency = &summary["latency_us"]["rfc_to_ticket"];
        run.rfcs_sent = u(&summary["rfcs_sent"]);
        run.sessions_completed = u(&summary["sessions_completed"]);
        run.sessions_per_s = summary["sessions_per_s"].as_f64().unwrap_or(0.0);
        run.sessions_in_window_per_s = summary["sessions_in_window_per_s"]
            .as_f64()
            .ok_or("the loadgen summary has no sessions_in_window_per_s")?;
        run.p50_us = u(&latency["p50"]);
        run.p99_us = u(&latency["p99"]);
        run.p999_us = u(&latency["p999"]);
        run.max_us = u(&latency["max"]);
        run.self_check_ok = summary["consistency"]["ok"].as_bool().unwrap_or(false);
        if !router_usage.success {
            return Err(format!(
                "router did not stop cleanly (exit {:?}): {router_log}",
                router_usage.code
            ));
        }
        Ok(())
    }

    /// Pings against a fresh router child (loadgen ping mode).
    fn router_ping(&self) -> Result<Value, String> {
        let router = self.router("uring", "none", 0)?;
        let json_path = self.work.join(format!("ping-{}.json", now_ms()));
        let log_path = json_path.with_extension("log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.loadgen_bin);
        command
            .args(["--target", &router.ready.listen.to_string()])
            .args([
                "--ping-connections",
                &self.plan.ping_connections.to_string(),
            ])
            .args(["--ping-pipeline", &self.plan.ping_pipeline.to_string()])
            .args(["--duration", &self.plan.ping_duration_s.to_string()])
            .args(["--ping-warmup-ms", "300"])
            .args(["--json".as_ref(), json_path.as_os_str()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let usage = Owned::spawn(&mut command)?.wait(
            Duration::from_secs(self.plan.ping_duration_s + 30),
            Duration::from_secs(2),
        );
        let (router_usage, router_log) = router.stop(Duration::from_secs(20));
        let text = std::fs::read_to_string(&json_path);
        let _ = std::fs::remove_file(&json_path);
        let log = tail(&log_path, 10);
        let _ = std::fs::remove_file(&log_path);
        let text = text.map_err(|_| {
            format!(
                "loadgen ping wrote no summary (exit {:?}): {log} {router_log}",
                usage.code
            )
        })?;
        let mut summary: Value =
            serde_json::from_str(&text).map_err(|e| format!("ping JSON: {e}"))?;
        summary["router_cpu_s"] = json!(router_usage.cpu_s());
        summary["loadgen_cpu_s"] = json!(usage.cpu_s());
        Ok(summary)
    }
}

fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let values: Vec<f64> = values.into_iter().collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

fn round3(value: Option<f64>) -> Value {
    value.map_or(Value::Null, |v| json!((v * 1000.0).round() / 1000.0))
}

/// Part 2: router ping vs redis-benchmark PING, interleaved rounds.
fn ping_vs_redis(bench: &Bench, install: bool) -> (Option<f64>, Value) {
    let plan = &bench.plan;
    eprintln!(
        "ping vs redis: {} connections, pipeline {}, {} s, {} round(s)",
        plan.ping_connections, plan.ping_pipeline, plan.ping_duration_s, plan.ping_rounds
    );
    let tools = redis::locate_or_install(install);
    let mut routers: Vec<Value> = Vec::new();
    let mut rediss: Vec<RedisBench> = Vec::new();
    let mut ratios = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut requests = 100_000u64;
    for round in 0..plan.ping_rounds {
        let router = match bench.router_ping() {
            Ok(summary) => summary,
            Err(error) => {
                errors.push(format!("router ping: {error}"));
                continue;
            }
        };
        let router_pps = router["pings_per_s"].as_f64().unwrap_or(0.0);
        eprintln!(
            "  round {round}: router {:>10.0} pings/s p50 {} us p99 {} us",
            router_pps, router["latency_us"]["p50"], router["latency_us"]["p99"]
        );
        routers.push(router);
        let tools = match &tools {
            Ok(tools) => tools,
            Err(_) => continue,
        };
        let result = RedisServer::start(&tools.server).and_then(|server| {
            let timeout = Duration::from_secs(plan.ping_duration_s * 10 + 30);
            let result = (|| {
                if round == 0 {
                    // Calibrate the request count so that a run lasts about as long.
                    let probe = redis::benchmark(
                        tools,
                        server.port,
                        plan.ping_connections,
                        plan.ping_pipeline,
                        requests,
                        timeout,
                    )?;
                    requests =
                        ((probe.pings_per_s * plan.ping_duration_s as f64) as u64).max(requests);
                }
                redis::benchmark(
                    tools,
                    server.port,
                    plan.ping_connections,
                    plan.ping_pipeline,
                    requests,
                    timeout,
                )
            })();
            server.stop();
            result
        });
        match result {
            Ok(redis) => {
                eprintln!(
                    "  round {round}: redis  {:>10.0} pings/s p50 {:.0} us p99 {:.0} us",
                    redis.pings_per_s, redis.p50_us, redis.p99_us
                );
                if redis.pings_per_s > 0.0 {
                    ratios.push(router_pps / redis.pings_per_s);
                }
                rediss.push(redis);
            }
            Err(error) => errors.push(format!("redis: {error}")),
        }
    }
    let figure = median(ratios.clone());
    let redis_unavailable = tools.as_ref().err().cloned();
    if let Some(reason) = &redis_unavailable {
        eprintln!("  redis unavailable: {reason}");
    }
    let median_of = |values: Vec<f64>| round3(median(values));
    let detail = json!({
        "connections": plan.ping_connections,
        "pipeline": plan.ping_pipeline,
        "duration_s": plan.ping_duration_s,
        "ratio_per_round": ratios.iter().map(|r| round3(Some(*r))).collect::<Vec<_>>(),
        "router": {
            "pings_per_s": median_of(routers.iter().filter_map(|r| r["pings_per_s"].as_f64()).collect()),
            "p50_us": median_of(routers.iter().filter_map(|r| r["latency_us"]["p50"].as_f64()).collect()),
            "p99_us": median_of(routers.iter().filter_map(|r| r["latency_us"]["p99"].as_f64()).collect()),
            "p999_us": median_of(routers.iter().filter_map(|r| r["latency_us"]["p999"].as_f64()).collect()),
            "runs": routers,
        },
        "redis": if rediss.is_empty() { Value::Null } else { json!({
            "pings_per_s": median_of(rediss.iter().map(|r| r.pings_per_s).collect()),
            "p50_us": median_of(rediss.iter().map(|r| r.p50_us).collect()),
            "p99_us": median_of(rediss.iter().map(|r| r.p99_us).collect()),
            "runs": rediss,
        })},
        "redis_unavailable": redis_unavailable,
        "errors": errors,
    });
    (figure, detail)
}

/// Part 1 (search): the maximum sustainable rate, uring + durability always (the
/// router as shipped), doubling then bisecting like `yellowstone-loadgen --find-max`.
fn search_max_rate(bench: &Bench) -> (f64, bool, Vec<MarketRun>) {
    let plan = &bench.plan;
    let mut runs = Vec::new();
    if plan.search_steps == 0 {
        eprintln!(
            "maximum sustainable rate: not searched (short mode), using {:.0}/s",
            plan.start_rate
        );
        return (plan.start_rate, false, runs);
    }
    eprintln!(
        "maximum sustainable rate (uring, durability always), {} s per run:",
        plan.duration_s
    );
    let mut good = 0.0f64;
    let mut bad = f64::INFINITY;
    let mut rate = plan.start_rate;
    for _ in 0..plan.search_steps {
        let run = bench.market_run("uring", "always", rate);
        let ok = run.keeps_up;
        rate = run.rate;
        runs.push(run);
        if ok {
            good = rate;
            rate = if bad.is_finite() {
                (good + bad) / 2.0
            } else {
                rate * 2.0
            };
        } else {
            bad = rate;
            rate = (good + bad) / 2.0;
        }
        if bad.is_finite() && (bad - good) / bad < 0.1 {
            break;
        }
    }
    if good > 0.0 {
        (good, true, runs)
    } else {
        // Nothing kept up: the lowest rate tried stands in, flagged as not found.
        let lowest = runs.iter().map(|r| r.rate).fold(plan.start_rate, f64::min);
        (lowest, false, runs)
    }
}

/// Writes a balance snapshot file of `accounts` funded accounts (distinct,
/// deterministic addresses, 1 MOR each) and returns its path.
fn write_balance_snapshot(work: &Path, accounts: u64) -> Result<PathBuf, String> {
    use std::io::Write;
    let path = work.join(format!("balances-{accounts}.csv"));
    let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for n in 1..=accounts as u128 {
        // An odd multiplier keeps the addresses distinct and spread like hashes.
        let address = n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        writeln!(out, "0x{address:040x},1000000000000000000")
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.flush()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Part 5: a snapshot every block against none, same market (a large balance
/// snapshot), same rate, interleaved pairs in alternating order.
fn snapshot_part(bench: &Bench) -> Value {
    let plan = &bench.plan;
    eprintln!(
        "snapshots: {} funded accounts, {:.0} RFC/s, {} s runs, a snapshot every block vs none, {} pairs:",
        plan.snapshot_accounts, plan.snapshot_rate, plan.snapshot_duration_s, plan.snapshot_pairs
    );
    let balances = match write_balance_snapshot(&bench.work, plan.snapshot_accounts) {
        Ok(path) => path,
        Err(error) => return json!({ "error": error }),
    };
    let run = |every_blocks: u64| -> MarketRun {
        let extra_toml = format!(
            "[identity]\nbalance_snapshot = {:?}\n[journal]\nsnapshot_every_blocks = {every_blocks}\n",
            balances.display().to_string()
        );
        bench.finish_run(
            MarketRun {
                backend: "uring".into(),
                durability: "always".into(),
                rate: plan.snapshot_rate.round(),
                duration_s: plan.snapshot_duration_s,
                extra_toml,
                settle_ms: plan.snapshot_settle_ms,
                ..MarketRun::default()
            },
            false,
        )
    };
    let mut with = Vec::new();
    let mut without = Vec::new();
    for pair in 0..plan.snapshot_pairs {
        if pair % 2 == 0 {
            with.push(run(1));
            without.push(run(0));
        } else {
            without.push(run(0));
            with.push(run(1));
        }
    }
    let _ = std::fs::remove_file(&balances);
    let ok = |runs: &[MarketRun]| -> Vec<MarketRun> {
        runs.iter().filter(|r| r.error.is_none()).cloned().collect()
    };
    let (with_ok, without_ok) = (ok(&with), ok(&without));
    let p999_with = mean(with_ok.iter().map(|r| r.p999_us as f64));
    let p999_without = mean(without_ok.iter().map(|r| r.p999_us as f64));
    let p99_with = mean(with_ok.iter().map(|r| r.p99_us as f64));
    let p99_without = mean(without_ok.iter().map(|r| r.p99_us as f64));
    json!({
        "accounts": plan.snapshot_accounts,
        "rate": plan.snapshot_rate,
        "duration_s": plan.snapshot_duration_s,
        "pairs": plan.snapshot_pairs,
        "p999_with_us": p999_with,
        "p999_without_us": p999_without,
        "p999_ratio": round3(ratio(p999_with, p999_without)),
        "p99_with_us": p99_with,
        "p99_without_us": p99_without,
        "p99_ratio": round3(ratio(p99_with, p99_without)),
        "snapshots_written": with_ok.iter().map(|r| r.snapshots_written).sum::<Option<u64>>(),
        "engine_pause_us_max": with_ok.iter().filter_map(|r| r.snapshot_engine_pause_us_max).max(),
        "with": with,
        "without": without,
    })
}

fn latency_entry(run: &MarketRun) -> Value {
    json!({
        "rate": run.rate,
        "p50": run.p50_us,
        "p99": run.p99_us,
        "p999": run.p999_us,
        "max": run.max_us,
        "sessions_per_s": run.sessions_per_s,
        "keeps_up": run.keeps_up,
        "error": run.error,
    })
}

fn real_main(args: &Args) -> Result<Value, String> {
    let started = Instant::now();
    let plan = Plan::new(args);
    let (router_bin, loadgen_bin) = match (&args.router_bin, &args.loadgen_bin) {
        (Some(router), Some(loadgen)) => (router.clone(), loadgen.clone()),
        (router, loadgen) => {
            let (built_router, built_loadgen) = build_binaries()?;
            (
                router.clone().unwrap_or(built_router),
                loadgen.clone().unwrap_or(built_loadgen),
            )
        }
    };
    let temporary;
    let work = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            dir.clone()
        }
        None => {
            temporary = tempfile::Builder::new()
                .prefix("yellowstone-whole-system-")
                .tempdir()
                .map_err(|e| format!("work directory: {e}"))?;
            temporary.path().to_path_buf()
        }
    };
    let (operator_key, operator_address) = keygen(&router_bin)?;
    let bench = Bench {
        plan: plan.clone(),
        router_bin,
        loadgen_bin,
        operator_key,
        operator_address,
        work,
        margin_ms: std::cell::Cell::new(if plan.mode == "short" { 400 } else { 1_200 }),
    };
    eprintln!(
        "whole-system ({} mode): router {}, loadgen {}",
        plan.mode,
        bench.router_bin.display(),
        bench.loadgen_bin.display()
    );
    if args.snapshot_run {
        let snapshots = snapshot_part(&bench);
        return Ok(json!({
            "mode": "snapshot",
            "snapshots": snapshots,
            "plan": plan,
            "machine": machine(),
            "unix_time_s": now_ms() / 1000,
            "elapsed_s": started.elapsed().as_secs_f64(),
        }));
    }

    // 2. The network path against Redis.
    let (ping_ratio, ping_detail) = ping_vs_redis(&bench, !args.no_install_redis);

    // 1a. The maximum sustainable rate.
    let (max_rate, max_found, search) = search_max_rate(&bench);
    eprintln!("maximum sustainable rate: {max_rate:.0} RFC/s");

    // 1b. The signature cost per session on this machine, now.
    let costs: SignatureCosts = signature_cost::measure(
        plan.signature_iterations,
        plan.signature_rounds,
        plan.providers,
    );
    eprintln!(
        "signature CPU per session: {:.1} us (rfc {:.1} + probe answer {:.1} + report {:.1} verify, ticket sign {:.1}), batch sign {:.1} us",
        costs.per_session_us(),
        costs.rfc_verify_us,
        costs.probe_answer_verify_us,
        costs.report_verify_us,
        costs.ticket_sign_us,
        costs.batch_sign_us
    );

    // 3. io_uring vs mio, ABBA order: p99 at the maximum rate (those uring runs are
    // also the crypto-efficiency runs) and throughput at an overload rate.
    let overload_rate = if plan.overload > 0.0 {
        (max_rate * plan.overload).round()
    } else {
        max_rate
    };
    eprintln!(
        "io_uring vs mio (durability always): p99 at {max_rate:.0}/s, throughput at {overload_rate:.0}/s:"
    );
    let mut uring_runs = Vec::new();
    let mut mio_runs = Vec::new();
    let mut uring_overload = Vec::new();
    let mut mio_overload = Vec::new();
    for pair in 0..plan.pairs {
        let order = if pair % 2 == 0 {
            ["uring", "mio"]
        } else {
            ["mio", "uring"]
        };
        for backend in order {
            let at_max = bench.market_run(backend, "always", max_rate);
            let overloaded = if plan.overload > 0.0 {
                bench.market_run_with(backend, "always", overload_rate, true)
            } else {
                at_max.clone()
            };
            if backend == "uring" {
                uring_runs.push(at_max);
                uring_overload.push(overloaded);
            } else {
                mio_runs.push(at_max);
                mio_overload.push(overloaded);
            }
        }
    }
    let measured = |runs: &[MarketRun]| -> Vec<MarketRun> {
        runs.iter().filter(|r| r.error.is_none()).cloned().collect()
    };
    let (uring_ok, mio_ok) = (measured(&uring_runs), measured(&mio_runs));
    let uring_throughput = mean(
        measured(&uring_overload)
            .iter()
            .map(|r| r.sessions_in_window_per_s),
    );
    let mio_throughput = mean(
        measured(&mio_overload)
            .iter()
            .map(|r| r.sessions_in_window_per_s),
    );
    let sessions_ratio = ratio(uring_throughput, mio_throughput);
    let uring_p99 = mean(uring_ok.iter().map(|r| r.p99_us as f64));
    let mio_p99 = mean(mio_ok.iter().map(|r| r.p99_us as f64));
    let p99_ratio = ratio(uring_p99, mio_p99);
    let efficiency = |runs: &[MarketRun]| -> (Option<f64>, f64, f64, u64, u64) {
        let sessions: u64 = runs.iter().map(|r| r.sessions_completed).sum();
        let batches: u64 = runs.iter().map(|r| r.batches_signed).sum();
        let work = costs.work_s(sessions, batches);
        let cpu: f64 = runs.iter().map(|r| r.router_cpu_s).sum();
        (ratio(Some(work), Some(cpu)), work, cpu, sessions, batches)
    };
    let (crypto_efficiency, signature_work_s, router_cpu_s, sessions, batches) =
        efficiency(&uring_ok);
    let (mio_efficiency, ..) = efficiency(&mio_ok);
    // The same share with the signature cost the router measured in place (under
    // the run's load) instead of on an idle machine: the difference between the
    // two is signature work made slower by the load, not work besides signatures.
    let in_situ_runs: Vec<InSituSignatures> = uring_ok.iter().filter_map(|r| r.in_situ).collect();
    let in_situ_work: f64 = in_situ_runs.iter().map(|s| s.work_s()).sum();
    let in_situ_efficiency = (in_situ_runs.len() == uring_ok.len() && !uring_ok.is_empty())
        .then(|| in_situ_work / router_cpu_s);
    let in_situ_mean = |f: fn(&InSituSignatures) -> f64| mean(in_situ_runs.iter().map(f));
    let window_cpu: Option<f64> = uring_ok
        .iter()
        .map(|r| r.router_cpu_loadgen_s)
        .sum::<Option<f64>>();
    let efficiency_loadgen_window = ratio(Some(signature_work_s), window_cpu);

    // 4. Latency under load.
    eprintln!("latency at 50 % and 90 % of {max_rate:.0}/s:");
    let mut latency = serde_json::Map::new();
    let mut latency_runs = Vec::new();
    for durability in ["always", "none"] {
        let mut levels = serde_json::Map::new();
        for level in [50u32, 90] {
            let run = bench.market_run("uring", durability, max_rate * level as f64 / 100.0);
            levels.insert(format!("load_{level}"), latency_entry(&run));
            latency_runs.push(run);
        }
        latency.insert(durability.to_string(), Value::Object(levels));
    }

    // 5. Snapshots (the short variant; the full one is `--snapshot-run`).
    let snapshots = if plan.mode == "short" {
        snapshot_part(&bench)
    } else {
        Value::Null
    };
    let machine = machine();
    Ok(json!({
        "snapshots": snapshots,
        "mode": plan.mode,
        "crypto_efficiency": round3(crypto_efficiency),
        "ping_vs_redis": round3(ping_ratio),
        "uring_vs_mio_sessions": round3(sessions_ratio),
        "uring_vs_mio_p99": round3(p99_ratio),
        "latency_us": Value::Object(latency),
        "max_sustainable_rate": {
            "rfc_per_s": max_rate,
            "found": max_found,
            "backend": "uring",
            "durability": "always",
            "search": search,
        },
        "crypto": {
            "signature_cost_us": costs,
            "per_session_us": costs.per_session_us(),
            "sessions": sessions,
            "batches_signed": batches,
            "signature_work_s": signature_work_s,
            "router_cpu_s": router_cpu_s,
            "router_cpu_loadgen_window_s": window_cpu,
            "efficiency_loadgen_window": round3(efficiency_loadgen_window),
            "efficiency_mio": round3(mio_efficiency),
            "efficiency_in_situ": round3(in_situ_efficiency),
            "signature_work_in_situ_s": in_situ_work,
            "in_situ_verify_us": in_situ_mean(|s| s.verify_us),
            "in_situ_sign_us": in_situ_mean(|s| s.sign_us),
            "router_verifications": uring_ok.iter().map(|r| r.router_verifications).sum::<Option<u64>>(),
        },
        "ping": ping_detail,
        "backends": {
            "rate": max_rate,
            "overload_rate": overload_rate,
            "durability": "always",
            "uring_sessions_per_s": uring_throughput,
            "mio_sessions_per_s": mio_throughput,
            "uring_p99_us": uring_p99,
            "mio_p99_us": mio_p99,
            "uring": uring_runs,
            "mio": mio_runs,
            "uring_overload": uring_overload,
            "mio_overload": mio_overload,
        },
        "latency_runs": latency_runs,
        "plan": plan,
        "machine": machine,
        "unix_time_s": now_ms() / 1000,
        "elapsed_s": started.elapsed().as_secs_f64(),
    }))
}

fn machine() -> Value {
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu_model": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines()
            .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())),
    })
}

fn snapshot_table(s: &Value) -> String {
    format!(
        "  snapshots ({} accounts, {} RFC/s, {} s x {} pairs)\n    p99.9 with a snapshot every block {} us, without {} us: ratio {} (p99 {} / {} us: {}); engine pause max {} us, snapshots written {}\n",
        s["accounts"],
        fmt(&s["rate"], 0),
        s["duration_s"],
        s["pairs"],
        fmt(&s["p999_with_us"], 0),
        fmt(&s["p999_without_us"], 0),
        fmt(&s["p999_ratio"], 3),
        fmt(&s["p99_with_us"], 0),
        fmt(&s["p99_without_us"], 0),
        fmt(&s["p99_ratio"], 3),
        s["engine_pause_us_max"],
        s["snapshots_written"],
    )
}

fn fmt(value: &Value, digits: usize) -> String {
    match value.as_f64() {
        Some(v) => format!("{v:.digits$}"),
        None => "n/a".to_string(),
    }
}

/// The readable table.
fn table(r: &Value) -> String {
    let mut out = String::new();
    if r["mode"] == "snapshot" {
        out.push_str(&format!(
            "\nwhole-system benchmark (snapshot mode, {} CPUs, {:.0} s)\n",
            r["machine"]["cpus"],
            r["elapsed_s"].as_f64().unwrap_or(0.0)
        ));
        out.push_str(&snapshot_table(&r["snapshots"]));
        return out;
    }
    let m = &r["max_sustainable_rate"];
    let c = &r["crypto"];
    let p = &r["ping"];
    out.push_str(&format!(
        "\nwhole-system benchmark ({} mode, {} CPUs, {:.0} s)\n",
        r["mode"].as_str().unwrap_or("?"),
        r["machine"]["cpus"],
        r["elapsed_s"].as_f64().unwrap_or(0.0)
    ));
    out.push_str(&format!(
        "  max sustainable rate (uring, always)  {} RFC/s{}\n",
        fmt(&m["rfc_per_s"], 0),
        if m["found"].as_bool() == Some(true) {
            ""
        } else {
            " (not searched/found)"
        }
    ));
    out.push_str(&format!(
        "  crypto_efficiency                     {}   (signature work {} s / router CPU {} s; {} sessions x {} us + {} batches)\n",
        fmt(&r["crypto_efficiency"], 3),
        fmt(&c["signature_work_s"], 3),
        fmt(&c["router_cpu_s"], 3),
        c["sessions"],
        fmt(&c["per_session_us"], 1),
        c["batches_signed"],
    ));
    out.push_str(&format!(
        "    in place                            {}   (signature CPU the router measured under load {} s: verify {} us, sign {} us, against {} / {} us idle)\n",
        fmt(&c["efficiency_in_situ"], 3),
        fmt(&c["signature_work_in_situ_s"], 3),
        fmt(&c["in_situ_verify_us"], 1),
        fmt(&c["in_situ_sign_us"], 1),
        fmt(&c["signature_cost_us"]["rfc_verify_us"], 1),
        fmt(&c["signature_cost_us"]["ticket_sign_us"], 1),
    ));
    out.push_str(&format!(
        "  ping_vs_redis                         {}   (c={} P={}: router {} pings/s p50 {} us p99 {} us; redis {} pings/s p50 {} us p99 {} us)\n",
        fmt(&r["ping_vs_redis"], 3),
        p["connections"],
        p["pipeline"],
        fmt(&p["router"]["pings_per_s"], 0),
        fmt(&p["router"]["p50_us"], 0),
        fmt(&p["router"]["p99_us"], 0),
        fmt(&p["redis"]["pings_per_s"], 0),
        fmt(&p["redis"]["p50_us"], 0),
        fmt(&p["redis"]["p99_us"], 0),
    ));
    let b = &r["backends"];
    out.push_str(&format!(
        "  uring_vs_mio_sessions                 {}   (sessions/s within the window at {} RFC/s: uring {}, mio {})\n",
        fmt(&r["uring_vs_mio_sessions"], 3),
        fmt(&b["overload_rate"], 0),
        fmt(&b["uring_sessions_per_s"], 0),
        fmt(&b["mio_sessions_per_s"], 0),
    ));
    out.push_str(&format!(
        "  uring_vs_mio_p99                      {}   (RFC-to-ticket p99 at {} RFC/s: uring {} us, mio {} us)\n",
        fmt(&r["uring_vs_mio_p99"], 3),
        fmt(&b["rate"], 0),
        fmt(&b["uring_p99_us"], 0),
        fmt(&b["mio_p99_us"], 0),
    ));
    out.push_str("  latency_us RFC -> ticket         rate/s      p50      p99    p99.9\n");
    for durability in ["always", "none"] {
        for level in ["load_50", "load_90"] {
            let e = &r["latency_us"][durability][level];
            out.push_str(&format!(
                "    {:<6} {:<8}             {:>8} {:>8} {:>8} {:>8}{}\n",
                durability,
                level.replace("load_", "") + " %",
                fmt(&e["rate"], 0),
                e["p50"],
                e["p99"],
                e["p999"],
                if e["keeps_up"].as_bool() == Some(true) {
                    ""
                } else {
                    "  (fell behind)"
                }
            ));
        }
    }
    if r["snapshots"].is_object() {
        out.push_str(&snapshot_table(&r["snapshots"]));
    }
    out
}

fn main() {
    let args = Args::parse();
    match real_main(&args) {
        Ok(report) => {
            print!("{}", table(&report));
            let text = serde_json::to_string_pretty(&report).expect("plain JSON");
            if let Err(e) = std::fs::write(&args.out, text + "\n") {
                eprintln!("whole-system: {}: {e}", args.out.display());
                std::process::exit(2);
            }
            println!("  JSON: {}", args.out.display());
        }
        Err(error) => {
            eprintln!("whole-system: {error}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_follows_the_find_max_criteria() {
        let mut run = MarketRun {
            rfcs_sent: 100,
            sessions_completed: 96,
            p99_us: 5_000,
            self_check_ok: true,
            ..MarketRun::default()
        };
        assert!(keeps_up(&run));
        run.sessions_completed = 90;
        assert!(!keeps_up(&run));
        run.sessions_completed = 100;
        run.p99_us = 150_000;
        assert!(!keeps_up(&run));
        run.p99_us = 1;
        run.error = Some("x".into());
        assert!(!keeps_up(&run));
    }

    #[test]
    fn ratios_and_medians() {
        assert_eq!(ratio(Some(2.0), Some(4.0)), Some(0.5));
        assert_eq!(ratio(Some(2.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
        assert_eq!(mean([1.0, 3.0]), Some(2.0));
        assert_eq!(round3(Some(1.23456)), json!(1.235));
        assert_eq!(round3(None), Value::Null);
    }
}
