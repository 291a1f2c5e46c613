//! R-HA-3 (issue 25): the load generator's clients follow the leader across a
//! failover and its self-check still passes. The "group" here is a follower that
//! names the leader and a proxy in front of a single embedded router; mid-run the
//! proxy closes every connection at once, as a leader's death does. Users, providers
//! and the batch subscriber reconnect (past the follower), resend their unanswered
//! signed frames byte-identical, and the router answers them from its reply cache:
//! every acknowledged report is credited exactly once, nothing counted twice.

use std::time::Duration;
use yellowstone_gateway::router::config::RouterConfig;
use yellowstone_gateway::router::{Router, StartOptions};
use yellowstone_loadgen::sim::{self, Scenario, SimConfig, Target};
use yellowstone_tests::cut_proxy::{fake_follower, BlipProxy};
use yellowstone_wire::SigningKey;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn r_ha_3_the_self_check_passes_across_a_failover() {
    let operator = SigningKey::from_seed(b"failover-operator");
    let mut config = RouterConfig::default();
    config.identity.operator = operator.address().to_string();
    config.network.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.enabled = false;
    // A block boundary about 6 s from now: after the window, the failover and most
    // of the drain.
    let genesis_ms = now_ms() + 6_000 - 12_000;
    config.market.genesis_ms = genesis_ms;
    config.market.user_sessions_open_max = sim::SIM_USER_SESSIONS_OPEN_MAX;
    let router = Router::start(StartOptions::ephemeral(config).unwrap()).unwrap();
    let leader = BlipProxy::start(router.listen);
    let follower = fake_follower(1, Some(leader.addr));
    let target = Target {
        addr: follower,
        endpoints: vec![follower, leader.addr],
        operator,
        description: "a follower and a leader (a proxy to one router)".into(),
        backend: "test".into(),
    };
    let sim_config = SimConfig {
        scenario: Scenario::Steady,
        duration: Duration::from_secs(3),
        rate_per_s: 200.0,
        users: 8,
        providers: 4,
        genesis_ms: Some(genesis_ms),
        progress: false,
        service_ms_per_token: 1,
        drain: Duration::from_secs(4),
        ..SimConfig::default()
    };
    let blipper = std::thread::spawn(move || {
        // Mid-window: RFCs, tickets and reports in flight.
        std::thread::sleep(Duration::from_millis(2_200));
        let cut = leader.blip();
        (leader, cut)
    });
    let summary = sim::run(&target, &sim_config).unwrap();
    let (_leader, cut) = blipper.join().unwrap();
    router.shutdown().unwrap();
    assert!(
        cut >= 13,
        "every client lost its connection once: {cut} cut"
    );
    assert!(
        summary.consistency.ok,
        "self-check failed across the failover: {}",
        summary.to_text()
    );
    assert!(summary.batches >= 1, "{}", summary.to_text());
    assert!(
        summary.sessions_completed as f64 >= 0.9 * summary.rfcs_sent as f64,
        "sessions lost in the failover: {}",
        summary.to_text()
    );
}
