//! Hostile input against the real binary (SPEC section 9): each gets its own clear
//! error, and other clients keep being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::RouterProcess;
use yellowstone_wire::client::Client;
use yellowstone_wire::frame::{encode_frame, FrameDecoder};
use yellowstone_wire::*;

fn start() -> RouterProcess {
    let operator = operator_key().address().to_string();
    RouterProcess::start(&["--operator", &operator, "--backend", "uring"])
}

/// Reads frames from a raw stream until one decodes as an ErrorReply (or EOF).
fn read_error(stream: &mut TcpStream) -> Option<ErrorReply> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut buffer = [0u8; 4096];
    loop {
        while let Ok(Some(frame)) = decoder.next_frame() {
            if let Ok(Message::ErrorReply(e)) = Message::decode(frame.header.msg_type, &frame.body)
            {
                return Some(e);
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return None,
            Ok(n) => decoder.extend(&buffer[..n]),
        }
    }
}

fn closed_soon(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

fn ping(client: &mut Client) {
    client.send(&Ping { payload: 7 }.into()).unwrap();
    expect(client, Duration::from_secs(10), |m| {
        matches!(m, Message::Pong(p) if p.payload == 7).then_some(())
    });
}

fn error_for(client: &mut Client, nonce: u64) -> ErrorReply {
    expect(client, Duration::from_secs(10), |m| match m {
        Message::ErrorReply(e) if e.ref_nonce == nonce => Some(e.clone()),
        _ => None,
    })
}

#[test]
fn broken_streams_cost_only_their_own_connection() {
    let router = start();
    let addr = router.ready.listen;
    let mut bystander = connect(addr, SigningKey::from_seed(b"bystander"));

    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_error(&mut garbage).map(|e| codes::name(e.code)),
        Some("bad_magic")
    );
    assert!(closed_soon(&mut garbage));
    ping(&mut bystander);

    let mut oversized = TcpStream::connect(addr).unwrap();
    let mut header = Ping { payload: 1 }.into_frame_header_only();
    header[8..12].copy_from_slice(&(64 * 1024 * 1024u32).to_le_bytes());
    oversized.write_all(&header).unwrap();
    assert_eq!(
        read_error(&mut oversized).map(|e| codes::name(e.code)),
        Some("frame_too_large")
    );
    assert!(closed_soon(&mut oversized));
    ping(&mut bystander);

    let mut truncated = TcpStream::connect(addr).unwrap();
    let frame = Message::from(Ping { payload: 1 }).to_frame();
    truncated.write_all(&frame[..frame.len() - 3]).unwrap();
    drop(truncated);
    ping(&mut bystander);

    // Unknown message types and bodies that do not decode keep the connection open.
    let mut raw = Vec::new();
    encode_frame(0x7777, 0, b"future", &mut raw);
    bystander.send_raw(&raw).unwrap();
    let error = expect(&mut bystander, Duration::from_secs(10), |m| match m {
        Message::ErrorReply(e) => Some(e.clone()),
        _ => None,
    });
    assert_eq!(codes::name(error.code), "unknown_message_type");
    raw.clear();
    encode_frame(msg_type::RFC, 0, &[1, 2, 3], &mut raw);
    bystander.send_raw(&raw).unwrap();
    let error = expect(&mut bystander, Duration::from_secs(10), |m| match m {
        Message::ErrorReply(e) => Some(e.clone()),
        _ => None,
    });
    assert_eq!(codes::name(error.code), "truncated_body");
    ping(&mut bystander);
}

trait HeaderOnly {
    fn into_frame_header_only(self) -> Vec<u8>;
}

impl HeaderOnly for Ping {
    fn into_frame_header_only(self) -> Vec<u8> {
        Message::from(self).to_frame()[..yellowstone_wire::frame::HEADER_LEN].to_vec()
    }
}

#[test]
fn signatures_replays_quota_and_balance_are_refused_with_their_codes() {
    let router = start();
    let addr = router.ready.listen;
    let mut operator = connect(addr, operator_key());
    let mut user = connect(addr, SigningKey::from_seed(b"hostile-user"));
    let mut pauper = connect(addr, SigningKey::from_seed(b"hostile-pauper"));
    fund(&mut operator, &[(user.address(), 5 * WEI_PER_MOR)]);

    // Not logged in.
    let mut anonymous = Client::from_stream(
        TcpStream::connect(addr).unwrap(),
        SigningKey::from_seed(b"anon"),
    );
    let nonce = anonymous.next_nonce();
    anonymous
        .send_signed(
            Rfc {
                from: anonymous.address(),
                nonce,
                model_id: 1,
                tokens_max: 1,
                expires_at_ms: now_ms() + 10_000,
                ..Rfc::default()
            }
            .into(),
        )
        .unwrap();
    assert_eq!(
        codes::name(error_for(&mut anonymous, nonce).code),
        "not_logged_in"
    );

    // Bad signature: a valid frame with one signed byte flipped.
    let nonce = user.next_nonce();
    let mut message: Message = Rfc {
        from: user.address(),
        nonce,
        model_id: 1,
        tokens_max: 10,
        expires_at_ms: now_ms() + 10_000,
        ..Rfc::default()
    }
    .into();
    let mut frame = message.sign(user.key(), user.network_id());
    frame[12 + 30] ^= 0x01; // inside model_id
    user.send_raw(&frame).unwrap();
    let code = codes::name(error_for(&mut user, nonce).code);
    assert!(
        code == "signer_mismatch" || code == "bad_signature",
        "{code}"
    );

    // Signed by someone else than the logged-in address.
    let nonce = user.next_nonce();
    let mut message: Message = Rfc {
        from: pauper.address(),
        nonce,
        model_id: 1,
        tokens_max: 10,
        expires_at_ms: now_ms() + 10_000,
        ..Rfc::default()
    }
    .into();
    let frame = message.sign(pauper.key(), user.network_id());
    user.send_raw(&frame).unwrap();
    assert_eq!(
        codes::name(error_for(&mut user, nonce).code),
        "wrong_sender"
    );

    // A replayed nonce: another message under it is refused (R-ID-4). (The very same
    // frame sent again is answered with its original answer, R-HA-3: the reply
    // cache's tests in reply_cache.rs.)
    let nonce = user.next_nonce();
    let expires_at_ms = now_ms() + 10_000;
    let rfc = |tokens_max| -> Message {
        Rfc {
            from: user.address(),
            nonce,
            model_id: 1,
            tokens_max,
            expires_at_ms,
            ..Rfc::default()
        }
        .into()
    };
    let frame = rfc(10).sign(user.key(), user.network_id());
    let other = rfc(11).sign(user.key(), user.network_id());
    user.send_raw(&frame).unwrap();
    user.send_raw(&other).unwrap();
    assert_eq!(codes::name(error_for(&mut user, nonce).code), "replay");

    // Over quota: 5 MOR give 15,000 tokens; 10 are queued; the error says what is left.
    let nonce = user.next_nonce();
    user.send_signed(
        Rfc {
            from: user.address(),
            nonce,
            model_id: 1,
            tokens_max: 15_000,
            expires_at_ms: now_ms() + 10_000,
            ..Rfc::default()
        }
        .into(),
    )
    .unwrap();
    let error = error_for(&mut user, nonce);
    assert_eq!(codes::name(error.code), "quota_exceeded");
    assert_eq!(error.detail, 15_000 - 10);

    // Zero balance.
    let nonce = pauper.next_nonce();
    pauper
        .send_signed(
            Rfc {
                from: pauper.address(),
                nonce,
                model_id: 1,
                tokens_max: 1,
                expires_at_ms: now_ms() + 10_000,
                ..Rfc::default()
            }
            .into(),
        )
        .unwrap();
    assert_eq!(
        codes::name(error_for(&mut pauper, nonce).code),
        "zero_balance"
    );

    // A report from an address without MOR that never had anything accepted: it
    // cannot hold a session, so the gateway refuses it before the engine (R-PROV-3).
    let report = |from: Address, nonce: u64| -> Message {
        Report {
            from,
            nonce,
            session_id: 99,
            elapsed_ms: 1,
            tokens: 1,
            ttft_ms: 0,
            prompt_tokens: 0,
            outcome: Outcome::Pass,
            ..Report::default()
        }
        .into()
    };
    let nonce = pauper.next_nonce();
    pauper.send_signed(report(pauper.address(), nonce)).unwrap();
    assert_eq!(
        codes::name(error_for(&mut pauper, nonce).code),
        "unknown_sender"
    );
    // A report for a session that is not yours (nor anyone's), from a funded user.
    let nonce = user.next_nonce();
    user.send_signed(report(user.address(), nonce)).unwrap();
    assert_eq!(
        codes::name(error_for(&mut user, nonce).code),
        "unknown_session"
    );
    ping(&mut user);
}

#[test]
fn a_report_for_someone_elses_session_is_refused() {
    let router = start();
    let addr = router.ready.listen;
    let network_id = router.ready.network_id;
    let mut operator = connect(addr, operator_key());
    let mut user = connect(addr, SigningKey::from_seed(b"owner"));
    let mut thief = connect(addr, SigningKey::from_seed(b"thief"));
    let mut provider = connect(addr, SigningKey::from_seed(b"hostile-provider"));
    fund(
        &mut operator,
        &[
            (user.address(), 5 * WEI_PER_MOR),
            (thief.address(), 5 * WEI_PER_MOR),
            (provider.address(), WEI_PER_MOR),
        ],
    );
    register(&mut provider, network_id, 2, 1_000, 1);
    let nonce = user.next_nonce();
    user.send_signed(
        Rfc {
            from: user.address(),
            nonce,
            model_id: 2,
            tokens_max: 10,
            expires_at_ms: now_ms() + 10_000,
            ..Rfc::default()
        }
        .into(),
    )
    .unwrap();
    answer_next_probe(&mut provider, Duration::from_secs(10));
    let session = expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::SessionTicket(t) => Some(t.session_id),
        _ => None,
    });
    let nonce = thief.next_nonce();
    thief
        .send_signed(
            Report {
                from: thief.address(),
                nonce,
                session_id: session,
                elapsed_ms: 1,
                tokens: 1,
                ttft_ms: 0,
                prompt_tokens: 0,
                outcome: Outcome::Fail,
                ..Report::default()
            }
            .into(),
        )
        .unwrap();
    assert_eq!(
        codes::name(error_for(&mut thief, nonce).code),
        "not_your_session"
    );
}

#[test]
fn a_thousand_idle_connections_and_a_client_that_never_reads() {
    let router = start();
    let addr = router.ready.listen;
    let idle: Vec<TcpStream> = (0..1_000)
        .map(|_| TcpStream::connect(addr).expect("idle connection accepted"))
        .collect();
    let mut bystander = connect(addr, SigningKey::from_seed(b"bystander-2"));
    ping(&mut bystander);
    drop(idle);

    // A client that floods pings and never reads its pongs: the router must cut it
    // off (send buffer limit) instead of growing, and keep serving others.
    let rss_before = router.rss_kib().unwrap_or(0);
    let mut flooder = TcpStream::connect(addr).unwrap();
    flooder
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let ping_frame = Message::from(Ping { payload: 1 }).to_frame();
    let burst: Vec<u8> = ping_frame
        .iter()
        .copied()
        .cycle()
        .take(ping_frame.len() * 4096)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut cut_off = false;
    while Instant::now() < deadline {
        if flooder.write_all(&burst).is_err() {
            cut_off = true;
            break;
        }
    }
    // Either the write failed (reset) or the router stopped reading and closed us.
    let mut buffer = vec![0u8; 1 << 20];
    flooder
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut drained = 0usize;
    loop {
        match flooder.read(&mut buffer) {
            Ok(0) => {
                cut_off = true;
                break;
            }
            Ok(n) => drained += n,
            Err(_) => break,
        }
        if drained > 512 * 1024 * 1024 {
            break;
        }
    }
    assert!(cut_off, "a client that never reads must be disconnected");
    ping(&mut bystander);
    let rss_after = router.rss_kib().unwrap_or(0);
    assert!(
        rss_after < rss_before + 256 * 1024,
        "router memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// A second router started on a port a running router listens on must refuse to
/// start (SO_REUSEPORT would otherwise let it join the port and silently take a share
/// of the first router's connections), and the first keeps serving.
#[test]
fn a_second_router_on_a_busy_port_refuses_to_start() {
    let first = start();
    let operator = operator_key().address().to_string();
    let listen = first.ready.listen.to_string();
    let scratch = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(yellowstone_tests::router_binary())
        .args([
            "run",
            "--listen",
            &listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--operator",
            &operator,
        ])
        .env("RUST_LOG", "warn")
        // Its default data directory goes into a temporary directory.
        .current_dir(scratch.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the second router");
    // Bounded: a router that did start is stopped (by its pid) and the test fails.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the second router started on a busy port");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "stdout {stdout} stderr {stderr}");
    assert!(!stdout.contains("READY"), "{stdout}");
    assert!(stderr.contains("already in use"), "{stderr}");
    let mut client = connect(first.ready.listen, SigningKey::from_seed(b"busy-port"));
    ping(&mut client);
    assert!(first.terminate(Duration::from_secs(20)));
}
