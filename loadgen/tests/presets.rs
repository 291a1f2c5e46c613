//! Each preset, briefly, against an embedded router: the run's own consistency
//! check passes and the JSON summary carries the contract fields.

use std::time::Duration;
use yellowstone_gateway::config::Backend;
use yellowstone_gateway::router::config::RouterConfig;
use yellowstone_gateway::router::{Router, StartOptions};
use yellowstone_loadgen::sim::{self, Scenario, SimConfig, Target};
use yellowstone_wire::SigningKey;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn run(scenario: Scenario, backend: Backend) -> yellowstone_loadgen::report::RunSummary {
    let operator = SigningKey::from_seed(format!("preset-operator-{scenario:?}").as_bytes());
    let mut config = RouterConfig::default();
    config.identity.operator = operator.address().to_string();
    config.network.listen = "127.0.0.1:0".parse().unwrap();
    config.network.backend = backend;
    config.metrics.enabled = false;
    let duration = Duration::from_secs(2);
    // A block boundary about 4 s from now: after the window and most of the drain.
    let genesis_ms = now_ms() + 4_000 - 12_000;
    config.market.genesis_ms = genesis_ms;
    config.market.user_sessions_open_max = sim::SIM_USER_SESSIONS_OPEN_MAX;
    let router = Router::start(StartOptions::ephemeral(config).unwrap()).unwrap();
    let mut sim_config = SimConfig {
        scenario,
        duration,
        rate_per_s: 300.0,
        users: 8,
        providers: 4,
        genesis_ms: Some(genesis_ms),
        progress: false,
        service_ms_per_token: 1,
        drain: Duration::from_secs(3),
        ..SimConfig::default()
    };
    if scenario == Scenario::Overload {
        sim_config.provider_capacity = 1;
        sim_config.service_ms_per_token = 10;
        sim_config.rfc_ttl_ms = 500;
    }
    let target = Target {
        addr: router.listen,
        endpoints: Vec::new(),
        operator,
        description: "test".into(),
        backend: format!("{backend:?}"),
    };
    let summary = sim::run(&target, &sim_config).unwrap();
    router.shutdown().unwrap();
    summary
}

fn check(summary: &yellowstone_loadgen::report::RunSummary) {
    assert!(
        summary.consistency.ok,
        "self-check failed: {}",
        summary.to_text()
    );
    assert!(summary.batches >= 1);
    let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
    for key in [
        "sessions_completed",
        "sessions_per_s",
        "rejected",
        "acknowledged_reports",
        "credited_sessions",
        "batches",
    ] {
        assert!(json.get(key).is_some(), "JSON lacks {key}");
    }
    for key in ["p50", "p99", "p999", "max"] {
        assert!(
            json["latency_us"]["rfc_to_ticket"][key].is_u64(),
            "JSON lacks latency_us.rfc_to_ticket.{key}"
        );
    }
}

#[test]
fn steady_preset_completes_and_credits_exactly_once() {
    let summary = run(Scenario::Steady, Backend::Uring);
    check(&summary);
    assert!(
        summary.sessions_completed as f64 >= 0.95 * summary.rfcs_sent as f64,
        "{}",
        summary.to_text()
    );
}

#[test]
fn burst_preset() {
    check(&run(Scenario::Burst, Backend::Mio));
}

#[test]
fn overload_preset_expires_what_supply_cannot_serve() {
    let summary = run(Scenario::Overload, Backend::Uring);
    check(&summary);
    assert!(
        summary.rfcs_failed.get("expired").copied().unwrap_or(0) > 0,
        "{}",
        summary.to_text()
    );
}

#[test]
fn churn_preset() {
    check(&run(Scenario::Churn, Backend::Uring));
}

#[test]
fn sybil_preset_refuses_zero_balance_floods() {
    let summary = run(Scenario::Sybil, Backend::Uring);
    check(&summary);
    assert!(
        summary.rejected.get("zero_balance").copied().unwrap_or(0) > 0,
        "{}",
        summary.to_text()
    );
}
