//! The rest of issue 27, through the real binary:
//! - §9, R-PROV-3 (case 13): at `connections_max`, a new connection is admitted by
//!   closing the oldest idle connection that never logged in, so a funded client's
//!   first attempt gets in while idle unproven connections hold the room (io_uring
//!   and mio); a logged-in connection is never closed for it.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::{metrics_text, RouterProcess};
use yellowstone_wire::client::{presign_rfc, Client};
use yellowstone_wire::*;

/// A metric's value (the sum over its label sets matching `labels`), 0 if absent.
fn metric(addr: SocketAddr, name: &str, labels: &str) -> f64 {
    metrics_text(addr)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = key.split_once('{').unwrap_or((key, ""));
            (metric_name == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

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

/// Opens a raw connection and reads its greeting: Some(client) when greeted with a
/// challenge (held without answering: it never logs in), None when refused.
fn open_idle(addr: SocketAddr) -> Option<Client> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut client = Client::from_stream(stream, SigningKey::from_seed(b"idle"));
    match client.recv() {
        Ok(Message::LoginChallenge(_)) => Some(client),
        Ok(Message::ErrorReply(e)) if e.code == codes::TOO_MANY_CONNECTIONS => None,
        other => panic!("unexpected greeting: {other:?}"),
    }
}

const CONNECTIONS_MAX: usize = 48;

fn a_funded_first_attempt_gets_in_at_the_limit(backend: &str) {
    // One gateway thread (every connection on it) and no unproven share below the
    // limit, so only the limit itself decides; sweeps at most once a second.
    let (router, _dir) = start(
        backend,
        &format!(
            "[network]\nconnections_max = {CONNECTIONS_MAX}\n\
             connections_unproven_max = {CONNECTIONS_MAX}\n\
             [threads]\ngateway_threads = 1\n"
        ),
    );
    let ready = router.ready.clone();
    let user_key = SigningKey::from_seed(b"integrity-f-admit-user");
    let unfunded_key = SigningKey::from_seed(b"integrity-f-admit-unfunded");
    {
        let mut operator = connect(ready.listen, operator_key());
        fund(&mut operator, &[(user_key.address(), 100 * WEI_PER_MOR)]);
    }
    // A logged-in connection without MOR, idle throughout: never closed for room by
    // the admission (it proved a key).
    let mut logged_in = connect(ready.listen, unfunded_key);
    let mut idle: Vec<Client> = Vec::new();
    let mut tries = 0;
    let admitted_before = metric(
        ready.metrics,
        "yellowstone_connections_admitted_by_eviction_total",
        "",
    );
    loop {
        tries += 1;
        assert!(tries <= 20, "could not fill the router to its limit");
        // Fill to the limit with connections that never log in: the last is refused.
        while let Some(client) = open_idle(ready.listen) {
            idle.push(client);
            assert!(idle.len() <= 4 * CONNECTIONS_MAX, "never refused");
        }
        // They are idle long enough to be evicted now; the idle sweep (once a
        // second) may have made room meanwhile: then fill again.
        std::thread::sleep(Duration::from_millis(300));
        let open = metric(ready.metrics, "yellowstone_connections_open", "");
        if open as usize >= CONNECTIONS_MAX {
            break;
        }
    }
    // The funded client's first attempt (no retry) gets in and is served.
    let started = Instant::now();
    let mut user = Client::connect(ready.listen, user_key.clone())
        .expect("a funded client's first attempt at the limit is admitted");
    user.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let nonce = user.next_nonce();
    user.send_raw(&presign_rfc(
        &user_key,
        ready.network_id,
        nonce,
        1,
        100,
        now_ms() + 30_000,
    ))
    .unwrap();
    expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::RfcAccepted(a) if a.nonce == nonce => Some(()),
        Message::ErrorReply(e) if e.ref_nonce == nonce => panic!("RFC refused: {e:?}"),
        _ => None,
    });
    eprintln!(
        "{backend}: admitted at the limit in {:?} ({} idle held)",
        started.elapsed(),
        idle.len()
    );
    let admitted = metric(
        ready.metrics,
        "yellowstone_connections_admitted_by_eviction_total",
        "",
    );
    assert!(admitted > admitted_before, "counted: {admitted}");
    // The logged-in connection is still served.
    logged_in
        .send(&Message::from(messages::Ping { payload: 7 }))
        .unwrap();
    expect(&mut logged_in, Duration::from_secs(5), |m| match m {
        Message::Pong(p) if p.payload == 7 => Some(()),
        _ => None,
    });
}

#[test]
fn section_9_a_funded_first_attempt_gets_in_at_the_limit_over_io_uring() {
    a_funded_first_attempt_gets_in_at_the_limit("uring");
}

#[test]
fn section_9_a_funded_first_attempt_gets_in_at_the_limit_over_mio() {
    a_funded_first_attempt_gets_in_at_the_limit("mio");
}
