//! The gateway's hand-off to the engine: commands accepted during a loop turn reach
//! the inbound queue in order at the end of the turn; when the queue is full the
//! sender gets OVERLOADED (with its nonce and a retry delay), and once the engine is
//! gone SHUTTING_DOWN: nothing is dropped without an answer.

mod common;
use std::sync::Arc;
use std::time::Duration;
use yellowstone_gateway::config::{NetworkConfig, ThreadsConfig};
use yellowstone_gateway::metrics::Registry;
use yellowstone_gateway::net::start_gateways;
use yellowstone_gateway::router::handler::RouterHandler;
use yellowstone_gateway::router::shared::RouterShared;
use yellowstone_gateway::sequencer::SequencerInput;
use yellowstone_wire::client::Client;
use yellowstone_wire::codes;
use yellowstone_wire::messages::{self, Message};
use yellowstone_wire::SigningKey;

fn shared(
    registry: &Registry,
    inbound: crossbeam_channel::Sender<SequencerInput>,
) -> Arc<RouterShared> {
    common::shared(registry, inbound, b"handoff-router")
}

fn cancel(client: &mut Client, rfc_id: u64) -> u64 {
    let nonce = client.next_nonce();
    client
        .send_signed(Message::from(messages::RfcCancel {
            from: client.address(),
            nonce,
            rfc_id,
            signature: Default::default(),
        }))
        .unwrap();
    nonce
}

fn refusal(client: &mut Client) -> messages::ErrorReply {
    match client.recv().unwrap() {
        Message::ErrorReply(reply) => reply,
        other => panic!("expected an ErrorReply, got {other:?}"),
    }
}

#[test]
fn a_full_queue_refuses_with_overloaded_and_a_stopped_engine_with_shutting_down() {
    let registry = Registry::new();
    let (inbound, engine) = crossbeam_channel::bounded(3);
    let shared = shared(&registry, inbound);
    let network = NetworkConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..NetworkConfig::default()
    };
    // A funded user: the gateway's pre-checks (R-PROV-3) let its commands through to
    // the engine's queue.
    shared
        .balances
        .insert(SigningKey::from_seed(b"user").address(), 1);
    let handler_shared = shared.clone();
    let gateways = start_gateways(&network, &ThreadsConfig::default(), &registry, move |c| {
        RouterHandler::new(handler_shared.clone(), c)
    })
    .unwrap();
    drop(shared);
    let mut client =
        Client::connect(gateways.local_addr(), SigningKey::from_seed(b"user")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Three fit (in order); the rest are refused, each with its own nonce.
    let nonces: Vec<u64> = (0..6).map(|i| cancel(&mut client, i)).collect();
    for expected in &nonces[3..] {
        let reply = refusal(&mut client);
        assert_eq!(reply.code, codes::OVERLOADED);
        assert_eq!(reply.ref_nonce, *expected);
        assert_eq!(reply.retry_after_ms, 250);
    }
    let queued: Vec<u64> = (0..3)
        .map(
            |_| match engine.recv_timeout(Duration::from_secs(10)).unwrap() {
                SequencerInput::Command {
                    command: yellowstone_engine::Command::CancelRfc { rfc, .. },
                    ..
                } => rfc,
                other => panic!("unexpected {other:?}"),
            },
        )
        .collect();
    assert_eq!(queued, vec![0, 1, 2], "handed over in order");
    // The engine is gone: refused as shutting down, not silently dropped.
    drop(engine);
    let nonce = cancel(&mut client, 9);
    let reply = refusal(&mut client);
    assert_eq!((reply.code, reply.ref_nonce), (codes::SHUTTING_DOWN, nonce));
    // Only what reached the engine's queue counts as a command.
    assert!(
        registry.render().contains("yellowstone_commands_total 3"),
        "{}",
        registry.render()
    );
    gateways.shutdown().unwrap();
}

/// Issue 25 (R-HA-3): a replicated member whose pipeline was abandoned for loss of
/// office (its engine gone, no stop under way) answers a command in flight
/// `not_leader` with that command's nonce, so the client resends it to the leader;
/// before, `shutting_down` (the client counted it refused). A real stop still answers
/// `shutting_down`.
#[test]
fn a_deposed_members_command_in_flight_is_answered_not_leader_and_a_stop_shutting_down() {
    let registry = Registry::new();
    let (inbound, engine) = crossbeam_channel::bounded(3);
    let mut member = Arc::try_unwrap(shared(&registry, inbound))
        .ok()
        .expect("the only reference");
    member.office = Some(yellowstone_gateway::router::office::Office::new(
        Registry::new(),
        Arc::new(yellowstone_gateway::router::market::MarketBoard::new(
            Default::default(),
        )),
    ));
    member
        .balances
        .insert(SigningKey::from_seed(b"user").address(), 1);
    let shared = Arc::new(member);
    let network = NetworkConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..NetworkConfig::default()
    };
    let handler_shared = shared.clone();
    let gateways = start_gateways(&network, &ThreadsConfig::default(), &registry, move |c| {
        RouterHandler::new(handler_shared.clone(), c)
    })
    .unwrap();
    let mut client =
        Client::connect(gateways.local_addr(), SigningKey::from_seed(b"user")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Loss of office: the engine thread is gone, no stop began.
    drop(engine);
    let nonce = cancel(&mut client, 1);
    let reply = refusal(&mut client);
    assert_eq!(
        (reply.code, reply.ref_nonce),
        (codes::NOT_LEADER, nonce),
        "{reply:?}"
    );
    // No leader known to this member yet: the client tries the others.
    assert_eq!(reply.reason, yellowstone_wire::leader::NO_LEADER_REASON);
    // A real stop: shutting_down.
    shared
        .stopping
        .store(true, std::sync::atomic::Ordering::Release);
    let nonce = cancel(&mut client, 2);
    let reply = refusal(&mut client);
    assert_eq!((reply.code, reply.ref_nonce), (codes::SHUTTING_DOWN, nonce));
    drop(client);
    gateways.shutdown().unwrap();
}
