//! R-ID-6 through the real binary, on both network backends: an address may hold
//! several connections; a provider's traffic goes where it last registered or
//! announced; a login takes no route; a close removes only that connection's routes;
//! replies to commands sent before a half-close are delivered. Also R-PROV-2's notice
//! to a provider registering without a balance.

use std::net::Shutdown;
use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::RouterProcess;
use yellowstone_wire::client::{Client, ClientError};
use yellowstone_wire::*;

fn start(backend: &str, extra_toml: &str) -> (RouterProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(&config, extra_toml).unwrap();
    let operator = operator_key().address().to_string();
    let router = RouterProcess::start(&[
        "--config",
        config.to_str().unwrap(),
        "--backend",
        backend,
        "--operator",
        &operator,
    ]);
    (router, dir)
}

fn announce(provider: &mut Client) {
    let nonce = provider.next_nonce();
    provider
        .send_signed(
            ProviderAnnounce {
                from: provider.address(),
                nonce,
                signature: Signature::default(),
            }
            .into(),
        )
        .unwrap();
    expect(provider, Duration::from_secs(10), |m| match m {
        Message::Ack(ack) if ack.nonce == nonce => Some(()),
        Message::ErrorReply(e) => panic!("announce refused: {e:?}"),
        _ => None,
    });
}

fn send_rfc(user: &mut Client) -> u64 {
    let nonce = user.next_nonce();
    user.send_signed(
        Rfc {
            from: user.address(),
            nonce,
            model_id: 1,
            tokens_max: 100,
            expires_at_ms: now_ms() + 30_000,
            signature: Signature::default(),
        }
        .into(),
    )
    .unwrap();
    nonce
}

fn answer_probe(provider: &mut Client) {
    answer_next_probe(provider, Duration::from_secs(10));
}

/// The user's RFC is matched: the probe reaches `provider`, which answers, and the
/// user gets its ticket.
fn rfc_is_matched_through(user: &mut Client, provider: &mut Client) {
    let nonce = send_rfc(user);
    answer_probe(provider);
    let ticket = expect(user, Duration::from_secs(10), |m| match m {
        Message::SessionTicket(t) => Some(t.clone()),
        Message::RfcFailed(f) => panic!("RFC failed instead of a ticket: {f:?}"),
        Message::ErrorReply(e) => panic!("RFC refused: {e:?}"),
        _ => None,
    });
    assert_eq!(ticket.rfc_nonce, nonce);
    assert_eq!(ticket.provider, provider.address());
    expect(provider, Duration::from_secs(10), |m| match m {
        Message::SessionTicket(t) if t.session_id == ticket.session_id => Some(()),
        _ => None,
    });
}

/// Nothing arrives on `client` within `wait` (the read times out).
fn stays_silent(client: &mut Client, wait: Duration) {
    client.set_read_timeout(Some(wait)).unwrap();
    match client.recv() {
        Err(ClientError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
}

struct Market {
    router: RouterProcess,
    _dir: tempfile::TempDir,
    user: Client,
    provider_key: SigningKey,
}

fn market(backend: &str, extra_toml: &str, seed: &[u8]) -> Market {
    let (router, dir) = start(backend, extra_toml);
    let addr = router.ready.listen;
    let mut operator = connect(addr, operator_key());
    let user = connect(addr, SigningKey::from_seed(&[seed, b"-user"].concat()));
    let provider_key = SigningKey::from_seed(&[seed, b"-provider"].concat());
    fund(
        &mut operator,
        &[
            (user.address(), 5 * WEI_PER_MOR),
            (provider_key.address(), WEI_PER_MOR),
        ],
    );
    Market {
        router,
        _dir: dir,
        user,
        provider_key,
    }
}

/// A provider registers on A, reconnects on B (A still open) and announces there,
/// then A closes: it stays reachable, and probes go to B.
fn reconnect_before_the_old_socket_is_gone(backend: &str) {
    let mut m = market(backend, "", b"conn-reconnect");
    let addr = m.router.ready.listen;
    let network_id = m.router.ready.network_id;
    let mut a = connect(addr, m.provider_key.clone());
    register(&mut a, network_id, 1, 1_000, 4);
    let mut b = connect(addr, m.provider_key.clone());
    announce(&mut b);
    drop(a);
    // Let the router see A's close before the RFC.
    std::thread::sleep(Duration::from_millis(300));
    rfc_is_matched_through(&mut m.user, &mut b);
    stays_silent(&mut b, Duration::from_millis(300));
}

#[test]
fn r_id_6_reconnect_before_the_old_socket_is_gone_over_io_uring() {
    reconnect_before_the_old_socket_is_gone("uring");
}

#[test]
fn r_id_6_reconnect_before_the_old_socket_is_gone_over_mio() {
    reconnect_before_the_old_socket_is_gone("mio");
}

/// A provider serving on A opens an idle second connection B with the same key: the
/// login takes no route, probes stay on A, and B's close changes nothing.
fn an_idle_second_connection_takes_no_route(backend: &str) {
    let mut m = market(backend, "", b"conn-idle-second");
    let addr = m.router.ready.listen;
    let network_id = m.router.ready.network_id;
    let mut a = connect(addr, m.provider_key.clone());
    register(&mut a, network_id, 1, 1_000, 4);
    let mut b = connect(addr, m.provider_key.clone());
    rfc_is_matched_through(&mut m.user, &mut a);
    stays_silent(&mut b, Duration::from_millis(200));
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    rfc_is_matched_through(&mut m.user, &mut a);
}

#[test]
fn r_id_6_an_idle_second_connection_takes_no_route_over_io_uring() {
    an_idle_second_connection_takes_no_route("uring");
}

#[test]
fn r_id_6_an_idle_second_connection_takes_no_route_over_mio() {
    an_idle_second_connection_takes_no_route("mio");
}

/// A provider whose connection timed out (idle) reconnects and announces: it is
/// matched again on the new connection.
fn reconnect_after_the_old_connection_timed_out(backend: &str) {
    let mut m = market(
        backend,
        "[network]\nconn_idle_timeout_ms = 1000\n",
        b"conn-timed-out",
    );
    let addr = m.router.ready.listen;
    let network_id = m.router.ready.network_id;
    let mut a = connect(addr, m.provider_key.clone());
    register(&mut a, network_id, 1, 1_000, 4);
    // A stays quiet until the router closes it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "idle connection not closed");
        match a.recv() {
            Err(ClientError::Closed) => break,
            Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            _ => {}
        }
    }
    let mut b = connect(addr, m.provider_key.clone());
    announce(&mut b);
    // The user's connection may have timed out meanwhile too.
    m.user = connect(addr, m.user.key().clone());
    rfc_is_matched_through(&mut m.user, &mut b);
}

#[test]
fn r_id_6_reconnect_after_the_old_connection_timed_out_over_io_uring() {
    reconnect_after_the_old_connection_timed_out("uring");
}

#[test]
fn r_id_6_reconnect_after_the_old_connection_timed_out_over_mio() {
    reconnect_after_the_old_connection_timed_out("mio");
}

/// Reads every message until the router closes the connection.
fn read_until_eof(client: &mut Client) -> Vec<Message> {
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no EOF after the half-close");
        match client.recv() {
            Ok(message) => messages.push(message),
            Err(ClientError::Closed) => return messages,
            Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return messages
            }
            Err(e) => panic!("reading after the half-close: {e}"),
        }
    }
}

/// A funded user sends RFCs (and a cancel the engine refuses, and a ping), shuts
/// down its write side and reads until EOF: every command gets its answer.
fn half_close_delivers_the_replies(backend: &str) {
    let mut m = market(backend, "", b"conn-half-close");
    let mut nonces = Vec::new();
    for _ in 0..10 {
        nonces.push(send_rfc(&mut m.user));
    }
    let cancel_nonce = m.user.next_nonce();
    m.user
        .send_signed(
            RfcCancel {
                from: m.user.address(),
                nonce: cancel_nonce,
                rfc_id: u64::MAX,
                signature: Signature::default(),
            }
            .into(),
        )
        .unwrap();
    m.user.send(&Ping { payload: 77 }.into()).unwrap();
    m.user.stream().shutdown(Shutdown::Write).unwrap();
    let messages = read_until_eof(&mut m.user);
    let accepted: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            Message::RfcAccepted(a) => Some(a.nonce),
            _ => None,
        })
        .collect();
    assert_eq!(
        accepted, nonces,
        "every RFC answered, in order: {messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| matches!(m, Message::ErrorReply(e) if e.ref_nonce == cancel_nonce)),
        "the engine's refusal of the cancel is delivered: {messages:?}"
    );
    assert!(messages
        .iter()
        .any(|m| matches!(m, Message::Pong(p) if p.payload == 77)));
}

#[test]
fn r_id_6_half_close_delivers_the_replies_over_io_uring() {
    half_close_delivers_the_replies("uring");
}

#[test]
fn r_id_6_half_close_delivers_the_replies_over_mio() {
    half_close_delivers_the_replies("mio");
}

/// R-PROV-2: a registration without a balance is accepted and answered with a
/// notice saying it will not be matched until funded; a funded one gets none.
fn unfunded_registration_gets_a_notice(backend: &str) {
    let m = market(backend, "", b"conn-unfunded");
    let addr = m.router.ready.listen;
    let network_id = m.router.ready.network_id;
    let mut unfunded = connect(addr, SigningKey::from_seed(b"conn-unfunded-nobody"));
    register(&mut unfunded, network_id, 1, 1_000, 4);
    let notice = expect(&mut unfunded, Duration::from_secs(10), |m| match m {
        Message::Notice(n) => Some(n.clone()),
        _ => None,
    });
    assert_eq!(notice.kind, messages::NOTICE_UNFUNDED);
    let mut funded = connect(addr, m.provider_key.clone());
    register(&mut funded, network_id, 1, 1_000, 4);
    stays_silent(&mut funded, Duration::from_millis(300));
}

#[test]
fn r_prov_2_unfunded_registration_gets_a_notice_over_io_uring() {
    unfunded_registration_gets_a_notice("uring");
}

#[test]
fn r_prov_2_unfunded_registration_gets_a_notice_over_mio() {
    unfunded_registration_gets_a_notice("mio");
}
