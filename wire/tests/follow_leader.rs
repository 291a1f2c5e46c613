//! R-HA-3 (issue 25): `connect_following` over a replicated router group's members,
//! against in-process fake members on loopback: a follower's `not_leader` greeting is
//! followed to the leader it names, a member naming no leader sends the client to the
//! next member, redirect loops are bounded, and giving up names every endpoint tried.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};
use yellowstone_wire::client::Client;
use yellowstone_wire::connect_retry::{ConnectError, ConnectRetry};
use yellowstone_wire::frame::FrameDecoder;
use yellowstone_wire::*;

/// A fake follower: greets each of `connections` connections with `not_leader` naming
/// `leader` (None: no leader known), then closes it.
fn follower(
    listener: TcpListener,
    leader: Option<(u64, SocketAddr)>,
    connections: usize,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let reply = not_leader_reply(
                leader.map_or(0, |(id, _)| id),
                leader.map(|(_, addr)| addr),
                20,
            );
            let _ = stream.write_all(&Message::from(reply).to_frame());
        }
    })
}

/// A fake leader: challenges one connection and accepts its answer.
fn leader(listener: TcpListener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let challenge = LoginChallenge {
            challenge: [9; 32],
            network_id: 1,
            router: Address([4; 20]),
        };
        stream
            .write_all(&Message::from(challenge).to_frame())
            .unwrap();
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut buffer = [0u8; 4096];
        let answer = loop {
            if let Some(frame) = decoder.next_frame().unwrap() {
                break Message::decode(frame.header.msg_type, &frame.body).unwrap();
            }
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0);
            decoder.extend(&buffer[..n]);
        };
        let Message::LoginAnswer(answer) = answer else {
            panic!("expected a login answer, got {answer:?}")
        };
        stream
            .write_all(
                &Message::from(LoginOk {
                    address: answer.address,
                })
                .to_frame(),
            )
            .unwrap();
        // Hold the connection until the client is done with it.
        let _ = stream.read(&mut buffer);
    })
}

fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn dead() -> SocketAddr {
    let (listener, addr) = bind();
    drop(listener);
    addr
}

#[test]
fn r_ha_3_a_follower_sends_the_client_to_the_leader() {
    let (follower_listener, follower_addr) = bind();
    let (leader_listener, leader_addr) = bind();
    let f = follower(follower_listener, Some((2, leader_addr)), 1);
    let l = leader(leader_listener);
    // The leader is not even in the client's list: the follower's word is enough.
    let client = Client::connect_following(
        &[follower_addr],
        SigningKey::from_seed(b"follow"),
        &ConnectRetry::within(Duration::from_secs(5)),
    )
    .expect("logged in at the leader");
    assert_eq!(client.peer(), Some(leader_addr));
    assert_eq!(client.network_id(), 1);
    drop(client);
    f.join().unwrap();
    l.join().unwrap();
}

#[test]
fn r_ha_3_no_leader_known_and_dead_members_lead_to_the_next_member() {
    let (electing_listener, electing_addr) = bind();
    let (leader_listener, leader_addr) = bind();
    let f = follower(electing_listener, None, 1);
    let l = leader(leader_listener);
    let started = Instant::now();
    let client = Client::connect_following(
        &[dead(), electing_addr, leader_addr],
        SigningKey::from_seed(b"next"),
        &ConnectRetry::within(Duration::from_secs(5)),
    )
    .expect("logged in at the third member");
    assert_eq!(client.peer(), Some(leader_addr));
    // Within one round: no backoff pause before the round is over.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(client);
    f.join().unwrap();
    l.join().unwrap();
}

#[test]
fn r_ha_3_members_naming_each_other_do_not_hold_the_client_and_the_error_names_every_endpoint() {
    let (a_listener, a) = bind();
    let (b_listener, b) = bind();
    // Each names the other as leader, for ever (a broken group).
    let fa = follower(a_listener, Some((2, b)), usize::MAX);
    let fb = follower(b_listener, Some((1, a)), usize::MAX);
    let c = dead();
    let policy = ConnectRetry {
        deadline: Duration::from_millis(600),
        ..ConnectRetry::default()
    };
    let started = Instant::now();
    let error = Client::connect_following(&[a, c], SigningKey::from_seed(b"loop"), &policy)
        .err()
        .expect("no member leads");
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    let ConnectError::GaveUp {
        attempts, tried, ..
    } = &error
    else {
        panic!("{error}")
    };
    assert!(*attempts > 3, "{error}");
    let endpoints: Vec<SocketAddr> = tried.iter().map(|(e, _)| *e).collect();
    assert!(
        endpoints.contains(&a) && endpoints.contains(&b) && endpoints.contains(&c),
        "{error}"
    );
    let text = error.to_string();
    for endpoint in [a, b, c] {
        assert!(text.contains(&endpoint.to_string()), "{text}");
    }
    assert!(text.contains("not_leader"), "{text}");
    drop((fa, fb)); // their threads block in accept; the process ends them
}

#[test]
fn an_empty_endpoint_list_is_an_error() {
    let error = Client::connect_following(
        &[],
        SigningKey::from_seed(b"none"),
        &ConnectRetry::default(),
    )
    .err()
    .expect("nothing to connect to");
    assert!(matches!(error, ConnectError::NoEndpoints));
}
