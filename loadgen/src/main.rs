//! `yellowstone-loadgen`: with no arguments, starts an embedded router on loopback,
//! simulates a market for a short while, and prints the report. See `--help`.

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use yellowstone_loadgen::attack::{allowed_cores, run_attacks, AttackSettings, Kind};
use yellowstone_loadgen::embedded::{self, EmbeddedOptions};
use yellowstone_loadgen::ping::PingConfig;
use yellowstone_loadgen::plot::write_spectrum_svg;
use yellowstone_loadgen::sim::{self, Scenario, SimConfig, Target};
use yellowstone_wire::SigningKey;

#[derive(Parser)]
#[command(
    name = "yellowstone-loadgen",
    version,
    about = "Load generator for the Yellowstone router: simulated users and providers over the real protocol, with real signatures."
)]
struct Args {
    /// Length of the sending window, in seconds (default 10; attacks: 3 per run,
    /// --short 1).
    #[arg(long)]
    duration: Option<u64>,
    /// Target RFC rate per second (open loop, coordinated-omission corrected; default
    /// 2000; attacks: the honest traffic's, 400, --short 200).
    #[arg(long)]
    rate: Option<f64>,
    /// steady, burst, overload, churn or sybil; or attacks: every hostile scenario of
    /// issue 27 beside honest traffic, each paired with baseline runs (see docs/loadgen.md).
    #[arg(long, default_value = "steady")]
    scenario: String,
    /// Simulated users (default 32; attacks: 64, so that each holds few sessions at
    /// once; --short 32).
    #[arg(long)]
    users: Option<usize>,
    /// Simulated providers (default 16; attacks: 8).
    #[arg(long)]
    providers: Option<usize>,
    /// Attacks: pairs of runs (baseline, attacked) per scenario; the report takes
    /// medians over them (default 3; --short 1).
    #[arg(long)]
    pairs: Option<usize>,
    /// Attacks: a quick version for CI (1 pair of 1 s runs, smaller floods, no wait
    /// for credit batches): under a minute.
    #[arg(long)]
    short: bool,
    /// Attacks: only these scenarios, comma-separated (default: all): control (no
    /// attacker: the noise floor), self-dealing,
    /// sybil-registrations, capacity-hoarder, costly-frame, refusal-flood,
    /// griefing-user, idle-connections, quota-flood.
    #[arg(long)]
    attacks: Option<String>,
    /// Attacks: the embedded routers' `network.conn_refusals_per_s_max` (default:
    /// the router's, 100); 4294967295 never closes a connection for its refusals
    /// (the behaviour before issue 27's refusal budget, for a before/after pair).
    #[arg(long)]
    conn_refusals_per_s_max: Option<u32>,
    /// Attacks: the embedded routers' `network.addr_refusals_per_s_max` (default:
    /// the router's, 200); 4294967295 never closes a connection for its address's
    /// refusals nor refuses its logins (the behaviour before the address budget).
    #[arg(long)]
    addr_refusals_per_s_max: Option<u32>,
    /// Attacks: the one core every attacker thread is pinned to (default: the first
    /// core this process may use).
    #[arg(long)]
    attacker_core: Option<usize>,
    /// Drive an external router at HOST:PORT instead of an embedded one.
    #[arg(long)]
    target: Option<std::net::SocketAddr>,
    /// R-HA-3: drive an external router, or a replicated router group whose members'
    /// client endpoints are listed comma-separated (host:port,host:port,...): the
    /// simulated clients connect to the leader and follow it across failovers
    /// (reconnect, resend their unanswered signed frames, register again); the
    /// self-check counts each resent message's original answer once. Instead of
    /// --target (needs --operator-key likewise).
    #[arg(long, conflicts_with = "target")]
    router: Option<String>,
    /// The members `--router` lists, resolved (filled in by `main`).
    #[arg(skip)]
    endpoints: Vec<std::net::SocketAddr>,
    /// Operator secret key (hex) for balance updates; required with --target.
    #[arg(long)]
    operator_key: Option<String>,
    /// Backend of the embedded router: uring or mio.
    #[arg(long, default_value = "uring")]
    backend: String,
    /// Gateway threads of the embedded router (0: automatic).
    #[arg(long, default_value_t = 0)]
    gateway_threads: usize,
    /// Share of providers that answer probes too late, and that never answer.
    #[arg(long, default_value_t = 0.0)]
    slow_providers: f64,
    #[arg(long, default_value_t = 0.0)]
    dead_providers: f64,
    /// Share of reports that say fail.
    #[arg(long, default_value_t = 0.02)]
    fail_reports: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the summary as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write HdrHistogram percentile files (.hgrm) into this directory.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Draw the latency spectrum as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Closed loop: step the rate up until the router cannot keep up, report the
    /// maximum sustainable rate (each step lasts --duration seconds).
    #[arg(long)]
    find_max: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Durability of the embedded router's journal: always (replies after fsync),
    /// interval or none.
    #[arg(long, default_value = "always")]
    durability: String,
    /// Data directory of the embedded router (default: a temporary one, removed at
    /// the end of the run).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// With --target: the external router's genesis (its market.genesis_ms, Unix
    /// ms), so that the run waits only for the block covering its last report
    /// instead of a whole block period.
    #[arg(long)]
    genesis_ms: Option<u64>,
    /// Ping mode: drive this many connections with Ping frames from one event-loop
    /// thread (like redis-benchmark -c) for --duration seconds, instead of the
    /// market simulation. Reports pings per second and Ping-to-Pong latency.
    #[arg(long, default_value_t = 0)]
    ping_connections: usize,
    /// Ping mode: Pings written per batch on each connection (like redis-benchmark -P).
    #[arg(long, default_value_t = 1)]
    ping_pipeline: usize,
    /// Ping mode: warm-up before the measured window, in milliseconds.
    #[arg(long, default_value_t = 500)]
    ping_warmup_ms: u64,
}

impl Args {
    fn attacks(&self) -> bool {
        self.scenario == "attacks"
    }

    fn duration(&self) -> u64 {
        self.duration.unwrap_or(match (self.attacks(), self.short) {
            (false, _) => 10,
            (true, false) => 3,
            (true, true) => 1,
        })
    }

    fn rate(&self) -> f64 {
        self.rate.unwrap_or(match (self.attacks(), self.short) {
            (false, _) => 2_000.0,
            (true, false) => 400.0,
            (true, true) => 200.0,
        })
    }

    fn users(&self) -> usize {
        self.users.unwrap_or(match (self.attacks(), self.short) {
            (true, false) => 64,
            _ => 32,
        })
    }

    fn providers(&self) -> usize {
        self.providers
            .unwrap_or(if self.attacks() { 8 } else { 16 })
    }
}

fn scenario_config(args: &Args, scenario: Scenario) -> SimConfig {
    let mut config = SimConfig {
        scenario,
        duration: Duration::from_secs(args.duration().max(1)),
        rate_per_s: args.rate(),
        users: args.users().max(1),
        providers: args.providers().max(1),
        slow_provider_share: args.slow_providers,
        dead_provider_share: args.dead_providers,
        fail_report_share: args.fail_reports,
        seed: args.seed,
        progress: !args.quiet,
        ..SimConfig::default()
    };
    if scenario == Scenario::Overload {
        // Demand above supply: few slots, short-lived RFCs, so priority shows.
        config.provider_capacity = 1;
        config.providers = config.providers.min(4);
        config.service_ms_per_token = 20;
        config.rfc_ttl_ms = 2_000;
    }
    config
}

fn embedded_options(args: &Args, run_ms: u64) -> EmbeddedOptions {
    EmbeddedOptions {
        backend: args.backend.clone(),
        gateway_threads: args.gateway_threads,
        durability: args.durability.clone(),
        data_dir: args.data_dir.clone(),
        run_ms,
        day_ends_after_run: false,
    }
}

fn run_once(
    args: &Args,
    scenario: Scenario,
    rate: f64,
) -> Result<yellowstone_loadgen::report::RunSummary, String> {
    let mut config = scenario_config(args, scenario);
    config.rate_per_s = rate;
    let (embedded, target) = match args.target {
        Some(addr) => {
            let key = args
                .operator_key
                .as_deref()
                .ok_or("--target needs --operator-key")?;
            let operator =
                SigningKey::from_hex(key.trim()).map_err(|e| format!("--operator-key: {e}"))?;
            let target = Target {
                addr,
                endpoints: if args.endpoints.is_empty() {
                    vec![addr]
                } else {
                    args.endpoints.clone()
                },
                operator,
                // Every endpoint given (--router a,b,c), not only the first.
                description: if args.endpoints.len() > 1 {
                    let all: Vec<String> = args.endpoints.iter().map(|e| e.to_string()).collect();
                    format!("external router group {}", all.join(", "))
                } else {
                    format!("external router {addr}")
                },
                backend: "external".into(),
            };
            config.genesis_ms = args.genesis_ms;
            (None, target)
        }
        None => {
            let operator =
                SigningKey::from_seed(format!("ys-loadgen-operator-{}", args.seed).as_bytes());
            let run_ms = config.duration.as_millis() as u64 + 1_500;
            let embedded = embedded::start(&embedded_options(args, run_ms), &operator, |_| {})?;
            config.genesis_ms = Some(embedded.genesis_ms);
            let target = embedded.target.clone();
            (Some(embedded), target)
        }
    };
    let summary = sim::run(&target, &config);
    if let Some(embedded) = embedded {
        embedded.shutdown()?;
    }
    summary
}

/// `--router a,b,c`: the members resolved, the first as the target (R-HA-3).
fn resolve_router(args: &mut Args) -> Result<(), String> {
    if let Some(list) = &args.router {
        let endpoints = yellowstone_wire::leader::parse_endpoints(list)
            .map_err(|e| format!("--router {list}: {e}"))?;
        args.target = endpoints.first().copied();
        args.endpoints = endpoints;
    }
    Ok(())
}

fn main() {
    tracing_subscriber_init();
    let mut args = Args::parse();
    let code = match resolve_router(&mut args).and_then(|()| real_main(&args)) {
        Ok(ok) => {
            if ok {
                0
            } else {
                1
            }
        }
        Err(error) => {
            eprintln!("yellowstone-loadgen: {error}");
            2
        }
    };
    std::process::exit(code);
}

fn tracing_subscriber_init() {
    // The router logs through tracing; keep it quiet unless asked (RUST_LOG).
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = std::panic::catch_unwind(|| ());
    }
}

/// Returns whether the self-check passed.
/// The most RFCs one run may plan (`--rate` × `--duration`): each is signed ahead
/// of the run and its due time kept, so a rate typed with a few zeros too many
/// (1e12/s) would exhaust memory instead of being refused.
const RFCS_PLANNED_MAX: f64 = 10_000_000.0;
/// The most simulated users, and providers: each is a thread (a user two) and a
/// connection of its own.
const PARTICIPANTS_MAX: usize = 10_000;
/// The longest run, seconds (a day).
const DURATION_S_MAX: u64 = 86_400;

/// Refuses arguments the run cannot honour, naming the flag and the value, before
/// anything starts (no router, no connection, nothing allocated for the plan).
fn check_args(args: &Args) -> Result<(), String> {
    if !(1..=DURATION_S_MAX).contains(&args.duration()) {
        return Err(format!(
            "--duration must be between 1 and {DURATION_S_MAX} seconds, not {}",
            args.duration()
        ));
    }
    if args.ping_connections > 0 {
        if args.ping_connections > PARTICIPANTS_MAX || args.ping_pipeline == 0 {
            return Err(format!(
                "--ping-connections must be at most {PARTICIPANTS_MAX} and --ping-pipeline at \
                 least 1, not {} and {}",
                args.ping_connections, args.ping_pipeline
            ));
        }
        return Ok(());
    }
    let planned = args.rate() * args.duration() as f64;
    if !(args.rate().is_finite() && args.rate() > 0.0 && planned <= RFCS_PLANNED_MAX) {
        return Err(format!(
            "--rate must be a number of RFCs per second above 0, and --rate × --duration at \
             most {RFCS_PLANNED_MAX} RFCs (each is signed ahead), not {} for {} s",
            args.rate(),
            args.duration()
        ));
    }
    for (flag, count) in [("--users", args.users()), ("--providers", args.providers())] {
        if !(1..=PARTICIPANTS_MAX).contains(&count) {
            return Err(format!(
                "{flag} must be between 1 and {PARTICIPANTS_MAX} (a thread and a connection \
                 each), not {count}"
            ));
        }
    }
    for (flag, share) in [
        ("--slow-providers", args.slow_providers),
        ("--dead-providers", args.dead_providers),
        ("--fail-reports", args.fail_reports),
    ] {
        if !(0.0..=1.0).contains(&share) {
            return Err(format!("{flag} is a share between 0 and 1, not {share}"));
        }
    }
    if args.slow_providers + args.dead_providers > 1.0 {
        return Err(format!(
            "--slow-providers + --dead-providers must be at most 1 (a share of the \
             providers), not {} + {}",
            args.slow_providers, args.dead_providers
        ));
    }
    Ok(())
}

fn real_main(args: &Args) -> Result<bool, String> {
    check_args(args)?;
    if args.ping_connections > 0 {
        return ping(args);
    }
    if args.attacks() {
        return attacks(args);
    }
    let scenario = Scenario::parse(&args.scenario)?;
    if args.find_max {
        return find_max(args, scenario);
    }
    let summary = run_once(args, scenario, args.rate())?;
    println!("{}", summary.to_text());
    write_outputs(args, &summary)?;
    Ok(summary.consistency.ok)
}

/// The attack scenarios (issue 27): returns whether every verdict passed.
fn attacks(args: &Args) -> Result<bool, String> {
    if args.target.is_some() || args.data_dir.is_some() || args.find_max {
        return Err(
            "--scenario attacks runs against fresh embedded routers (it sets their limits \
             and reads their metrics): --target, --data-dir and --find-max do not apply"
                .into(),
        );
    }
    let kinds = match &args.attacks {
        None => Kind::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|name| Kind::parse(name.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?,
    };
    if let Some(core) = args.attacker_core {
        let allowed = allowed_cores();
        if !allowed.contains(&core) {
            return Err(format!(
                "--attacker-core must be a core this process may run on ({allowed:?}), not {core}"
            ));
        }
    }
    let pairs = args.pairs.unwrap_or(if args.short { 1 } else { 3 });
    if !(1..=PAIRS_MAX).contains(&pairs) {
        return Err(format!(
            "--pairs must be between 1 and {PAIRS_MAX}, not {pairs}"
        ));
    }
    let settings = AttackSettings {
        pairs,
        window: Duration::from_secs(args.duration().max(1)),
        short: args.short,
        honest_rate: args.rate(),
        users: args.users().max(1),
        providers: args.providers().max(1),
        provider_capacity: 32,
        attacker_core: args.attacker_core,
        kinds,
        seed: args.seed,
        embedded: embedded_options(args, 0),
        await_batches: !args.short,
        progress: !args.quiet,
        conn_refusals_per_s_max: args.conn_refusals_per_s_max,
        addr_refusals_per_s_max: args.addr_refusals_per_s_max,
    };
    let report = run_attacks(&settings, |line| eprintln!("{line}")).map_err(|e| e.to_string())?;
    println!("{}", report.to_text());
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(report.pass)
}

/// The most pairs per scenario (each pair is two runs of --duration seconds and a
/// few more: 100 pairs of 8 scenarios is already hours).
const PAIRS_MAX: usize = 100;

/// Ping mode: against --target, or an embedded router started for it.
fn ping(args: &Args) -> Result<bool, String> {
    let config = PingConfig {
        connections: args.ping_connections,
        pipeline: args.ping_pipeline.max(1),
        duration: Duration::from_secs(args.duration().max(1)),
        warmup: Duration::from_millis(args.ping_warmup_ms),
    };
    let (embedded, addr) = match args.target {
        Some(addr) => (None, addr),
        None => {
            let operator =
                SigningKey::from_seed(format!("ys-loadgen-operator-{}", args.seed).as_bytes());
            let run_ms = config.duration.as_millis() as u64 + config.warmup.as_millis() as u64;
            let embedded = embedded::start(&embedded_options(args, run_ms), &operator, |_| {})?;
            let addr = embedded.target.addr;
            (Some(embedded), addr)
        }
    };
    let summary = yellowstone_loadgen::ping::run(addr, &config);
    if let Some(embedded) = embedded {
        embedded.shutdown()?;
    }
    let summary = summary?;
    println!("{}", summary.to_text());
    if let Some(path) = &args.json {
        std::fs::write(path, summary.to_json()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(summary.pings > 0 && summary.connection_errors == 0)
}

fn write_outputs(
    args: &Args,
    summary: &yellowstone_loadgen::report::RunSummary,
) -> Result<(), String> {
    if let Some(path) = &args.json {
        std::fs::write(path, summary.to_json()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if args.hgrm.is_some() || args.plot.is_some() {
        // Histograms are summarised in the summary; the spectra need the recorders,
        // which `sim::run` keeps: re-derive from the summary is not possible, so the
        // run exposes them through `sim::last_latencies`.
        let latencies = sim::last_latencies();
        if let Some(dir) = &args.hgrm {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for (name, recorder) in [
                ("rfc_to_ticket", &latencies.rfc_to_ticket),
                ("probe_rtt", &latencies.probe_rtt),
                ("report_to_ack", &latencies.report_to_ack),
            ] {
                let path = dir.join(format!("{name}.hgrm"));
                std::fs::write(&path, recorder.hgrm_text())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        if let Some(path) = &args.plot {
            write_spectrum_svg(
                path,
                &[
                    ("rfc -> ticket", &latencies.rfc_to_ticket),
                    ("probe round trip", &latencies.probe_rtt),
                    ("report -> ack", &latencies.report_to_ack),
                ],
            )?;
        }
    }
    Ok(())
}

/// Closed loop: doubles the rate while the run keeps up (sessions >= 95 % of sent
/// RFCs, p99 RFC-to-ticket under 100 ms, self-check ok), then bisects once.
fn find_max(args: &Args, scenario: Scenario) -> Result<bool, String> {
    let keeps_up = |s: &yellowstone_loadgen::report::RunSummary| {
        s.consistency.ok
            && s.rfcs_sent > 0
            && s.sessions_completed as f64 >= 0.95 * s.rfcs_sent as f64
            && s.latency_us.rfc_to_ticket.p99 < 100_000
    };
    let mut good = 0.0f64;
    let mut bad = f64::INFINITY;
    let mut rate = args.rate();
    for _ in 0..8 {
        let summary = run_once(args, scenario, rate)?;
        let ok = keeps_up(&summary);
        println!(
            "rate {:>8.0}/s: sessions {:>8.0}/s p99 {:>7} us -> {}",
            rate,
            summary.sessions_per_s,
            summary.latency_us.rfc_to_ticket.p99,
            if ok { "keeps up" } else { "falls behind" }
        );
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
    println!("maximum sustainable rate: {good:.0} RFC/s");
    Ok(good > 0.0)
}
