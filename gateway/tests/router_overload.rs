//! The gateway under overload (issue 18 item 4), on both network backends:
//! - an RFC the engine's queue cannot take is refused OVERLOADED with its nonce at
//!   the door, before its signature is checked (it costs no verification, so a bad
//!   signature is not even looked at);
//! - RFCs are checked at the end of the gateway's loop turn, a bounded share per
//!   turn, and a connection's later commands wait behind them: every command
//!   reaches the engine's queue once, in the order its connection sent it (R-ID-4),
//!   however many turns the backlog takes.

mod common;
use std::sync::Arc;
use std::time::Duration;
use yellowstone_engine::Command;
use yellowstone_gateway::config::{Backend, NetworkConfig, ThreadsConfig};
use yellowstone_gateway::metrics::Registry;
use yellowstone_gateway::net::start_gateways;
use yellowstone_gateway::router::handler::RouterHandler;
use yellowstone_gateway::router::shared::{to_engine, RouterShared};
use yellowstone_gateway::sequencer::SequencerInput;
use yellowstone_wire::client::{presign, presign_rfc, Client};
use yellowstone_wire::codes;
use yellowstone_wire::messages::{self, Message};
use yellowstone_wire::SigningKey;

use common::NETWORK_ID;

fn shared(
    registry: &Registry,
    inbound: crossbeam_channel::Sender<SequencerInput>,
) -> Arc<RouterShared> {
    common::shared(registry, inbound, b"overload-router")
}

struct Router {
    registry: Registry,
    gateways: yellowstone_gateway::net::GatewayHandle,
    engine: crossbeam_channel::Receiver<SequencerInput>,
}

/// A gateway with the router's handler and no engine: the test reads the queue.
fn router(backend: Backend, queue: usize, inflight: u32, funded: &[&SigningKey]) -> Router {
    let registry = Registry::new();
    let (inbound, engine) = crossbeam_channel::bounded(queue);
    let shared = shared(&registry, inbound);
    for key in funded {
        shared.balances.insert(key.address(), 1_000_000);
    }
    let network = NetworkConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        backend,
        conn_inflight_frames_max: inflight,
        ..NetworkConfig::default()
    };
    let gateways = start_gateways(&network, &ThreadsConfig::default(), &registry, move |c| {
        RouterHandler::new(shared.clone(), c)
    })
    .unwrap();
    Router {
        registry,
        gateways,
        engine,
    }
}

fn connect(router: &Router, key: &SigningKey) -> Client {
    let client = Client::connect(router.gateways.local_addr(), key.clone()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
}

fn verifications(registry: &Registry) -> u64 {
    let text = registry.render();
    text.lines()
        .find_map(|l| l.strip_prefix("yellowstone_signature_ops_total{op=\"verify\"} "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn rfc(client: &Client, nonce: u64) -> Vec<u8> {
    presign_rfc(client.key(), NETWORK_ID, nonce, 1, 100, u64::MAX / 2)
}

fn queued(engine: &crossbeam_channel::Receiver<SequencerInput>) -> Command {
    match engine.recv_timeout(Duration::from_secs(10)).unwrap() {
        SequencerInput::Command { command, .. } => command,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_rfc_the_queue_cannot_take_is_refused_overloaded_before_its_signature_is_checked() {
    for backend in [Backend::Uring, Backend::Mio] {
        let user = SigningKey::from_seed(b"overload-user");
        let router = router(backend, 1, 64, &[&user]);
        let mut client = connect(&router, &user);
        let after_login = verifications(&router.registry);
        assert_eq!(after_login, 1, "{backend:?}: the login answer");
        // The first RFC fills the queue (nobody reads it).
        let first = client.next_nonce();
        client.send_raw(&rfc(&client, first)).unwrap();
        wait_queued(&router.engine, 1);
        // Four more, the last with a broken signature: each refused with its nonce.
        let mut nonces = Vec::new();
        for i in 0..4 {
            let nonce = client.next_nonce();
            let mut frame = rfc(&client, nonce);
            if i == 3 {
                let last = frame.len() - 2;
                frame[last] ^= 0xff;
            }
            client.send_raw(&frame).unwrap();
            nonces.push(nonce);
        }
        for nonce in nonces {
            match client.recv().unwrap() {
                Message::ErrorReply(reply) => {
                    assert_eq!(reply.code, codes::OVERLOADED, "{backend:?}");
                    assert_eq!(reply.ref_nonce, nonce, "{backend:?}");
                    assert_eq!(reply.ref_msg_type, messages::msg_type::RFC);
                    assert_eq!(reply.retry_after_ms, 250);
                }
                other => panic!("{backend:?}: expected OVERLOADED, got {other:?}"),
            }
        }
        assert_eq!(
            verifications(&router.registry),
            after_login + 1,
            "{backend:?}: only the RFC the queue took was verified"
        );
        assert!(
            matches!(queued(&router.engine), Command::SubmitRfc { nonce, .. } if nonce == first),
            "{backend:?}"
        );
        assert!(router.engine.is_empty(), "{backend:?}");
        router.gateways.shutdown().unwrap();
    }
}

/// Waits until the queue holds `n` commands (nobody takes them).
fn wait_queued(engine: &crossbeam_channel::Receiver<SequencerInput>, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.len() < n {
        assert!(std::time::Instant::now() < deadline, "not queued");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_backlog_of_rfcs_reaches_the_engine_in_order_with_the_commands_sent_after_them() {
    for backend in [Backend::Uring, Backend::Mio] {
        let user = SigningKey::from_seed(b"backlog-user");
        let other = SigningKey::from_seed(b"backlog-other");
        // Room for everything in flight at once: more than a turn's share of RFCs.
        let router = router(backend, 4096, 1024, &[&user, &other]);
        let mut client = connect(&router, &user);
        let mut second = connect(&router, &other);
        // 300 RFCs, then a cancel (not an RFC: it waits behind them), in one write.
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..300 {
            let nonce = client.next_nonce();
            bytes.extend(rfc(&client, nonce));
            expected.push(nonce);
        }
        let cancel_nonce = client.next_nonce();
        let cancel = messages::RfcCancel {
            from: user.address(),
            nonce: cancel_nonce,
            rfc_id: 9,
            signature: Default::default(),
        };
        bytes.extend(presign(&user, NETWORK_ID, cancel.into()));
        expected.push(cancel_nonce);
        client.send_raw(&bytes).unwrap();
        // Another connection's command sent meantime reaches the queue too.
        let other_nonce = second.next_nonce();
        let other_cancel = messages::RfcCancel {
            from: other.address(),
            nonce: other_nonce,
            rfc_id: 1,
            signature: Default::default(),
        };
        second.send_signed(other_cancel.into()).unwrap();
        let mut from_user = Vec::new();
        let mut from_other = Vec::new();
        while from_user.len() < expected.len() || from_other.is_empty() {
            match queued(&router.engine) {
                Command::SubmitRfc { user: u, nonce, .. } if u == to_engine(user.address()) => {
                    from_user.push(nonce)
                }
                Command::CancelRfc { user: u, nonce, .. } if u == to_engine(user.address()) => {
                    from_user.push(nonce)
                }
                Command::CancelRfc { nonce, .. } => from_other.push(nonce),
                other => panic!("{backend:?}: unexpected {other:?}"),
            }
        }
        assert_eq!(from_user, expected, "{backend:?}: in the order sent");
        assert_eq!(from_other, vec![other_nonce], "{backend:?}");
        assert!(router.engine.is_empty(), "{backend:?}: each once");
        assert_eq!(verifications(&router.registry), 2 + 301 + 1, "{backend:?}");
        router.gateways.shutdown().unwrap();
    }
}
