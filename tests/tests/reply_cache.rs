//! R-HA-3 (issue 25): the reply cache through the real router binary. A client whose
//! connection closed before (or after) the answer sends the **same** signed message
//! again on a new connection and gets the **original** answer, byte for byte (a ticket
//! re-signed: RFC 6979), never a second effect; a different message reusing the nonce
//! is still refused `replay`; the cache's bounds hold under a flood.

use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::{metric_value, metrics_text, RouterProcess};
use yellowstone_wire::client::{presign, Client, ClientError};
use yellowstone_wire::*;

const WAIT: Duration = Duration::from_secs(10);
const PRICE: u128 = 1_000_000;

/// A router with these `[network]` lines, genesis now.
fn start(network: &str) -> (tempfile::TempDir, RouterProcess) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.toml");
    std::fs::write(
        &path,
        format!(
            "[market]\ngenesis_ms = {}\n[network]\n{network}\n",
            now_ms() - 1_000
        ),
    )
    .unwrap();
    let operator = operator_key().address().to_string();
    let config = path.display().to_string();
    let router = RouterProcess::start(&["--config", &config, "--operator", &operator]);
    (dir, router)
}

/// The next whole frame: (type, body bytes).
fn next_frame(client: &mut Client) -> (u16, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "timed out waiting for a frame");
        match client.recv_frame() {
            Ok(frame) => return (frame.header.msg_type, frame.body.to_vec()),
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("connection failed while waiting: {e}"),
        }
    }
}

/// The next frame of type `msg_type` (others skipped), as bytes.
fn frame_of(client: &mut Client, msg_type: u16) -> Vec<u8> {
    loop {
        let (t, body) = next_frame(client);
        if t == msg_type {
            return body;
        }
        if t == msg_type::ERROR_REPLY {
            let reply = Message::decode(t, &body).unwrap();
            panic!("refused: {reply:?}");
        }
    }
}

fn decode(msg_type: u16, body: &[u8]) -> Message {
    Message::decode(msg_type, body).unwrap()
}

fn hits(router: &RouterProcess) -> f64 {
    metric_value(
        &metrics_text(router.ready.metrics),
        "yellowstone_reply_cache_hits_total",
    )
    .unwrap_or(0.0)
}

fn rfc_frame(user: &Client, nonce: u64, tokens_max: u64, expires_at_ms: u64) -> Vec<u8> {
    let rfc = Rfc {
        from: user.address(),
        nonce,
        model_id: 1,
        tokens_max,
        expires_at_ms,
        signature: Signature::default(),
    };
    presign(user.key(), user.network_id(), rfc.into())
}

fn market(router: &RouterProcess) -> (Client, SigningKey, Client) {
    let addr = router.ready.listen;
    let mut operator = connect(addr, operator_key());
    let user_key = SigningKey::from_seed(b"reply-cache-user");
    let mut provider = connect(addr, SigningKey::from_seed(b"reply-cache-provider"));
    fund(
        &mut operator,
        &[
            (user_key.address(), 100 * WEI_PER_MOR),
            (provider.address(), WEI_PER_MOR),
        ],
    );
    register(&mut provider, router.ready.network_id, 1, PRICE, 4);
    (operator, user_key, provider)
}

/// R-HA-3: an RFC sent on a connection that then closed, sent again byte-identical on
/// a new one: the same `RfcAccepted` bytes and the same ticket bytes (signed again),
/// one probe, one session; a different RFC under the spent nonce is refused `replay`.
#[test]
fn r_ha_3_an_rfc_resent_on_a_new_connection_gets_the_original_answer_and_ticket() {
    let (_dir, router) = start("");
    let addr = router.ready.listen;
    let (_operator, user_key, mut provider) = market(&router);
    let mut first = connect(addr, user_key.clone());
    let nonce = first.next_nonce();
    let frame = rfc_frame(&first, nonce, 100, now_ms() + 60_000);
    first.send_raw(&frame).unwrap();
    let accepted = frame_of(&mut first, msg_type::RFC_ACCEPTED);
    answer_next_probe(&mut provider, WAIT);
    let ticket = frame_of(&mut first, msg_type::SESSION_TICKET);
    drop(first);
    assert_eq!(hits(&router), 0.0);

    // The same bytes on a new connection: the original answers, byte for byte.
    let mut second = connect(addr, user_key.clone());
    second.send_raw(&frame).unwrap();
    assert_eq!(
        next_frame(&mut second),
        (msg_type::RFC_ACCEPTED, accepted.clone()),
        "the original RfcAccepted"
    );
    assert_eq!(
        next_frame(&mut second),
        (msg_type::SESSION_TICKET, ticket.clone()),
        "the original ticket, the same signature"
    );
    assert_eq!(hits(&router), 1.0);
    // Nothing else happened: no second probe for the provider.
    provider
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_millis(1_000);
    while Instant::now() < deadline {
        match provider.recv() {
            Ok(Message::Probe(p)) => panic!("a second effect: probe {p:?}"),
            Ok(_) | Err(ClientError::Io(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }

    // Another RFC under the spent nonce (another TokenMax): `replay`, as before.
    let other = rfc_frame(&second, nonce, 101, now_ms() + 60_000);
    second.send_raw(&other).unwrap();
    match decode(
        msg_type::ERROR_REPLY,
        &frame_of(&mut second, msg_type::ERROR_REPLY),
    ) {
        Message::ErrorReply(e) => {
            assert_eq!((e.code, e.ref_nonce), (codes::REPLAY, nonce), "{e:?}");
            assert_eq!(e.detail, u128::from(nonce), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(hits(&router), 1.0);
}

/// R-HA-3: an RFC whose connection closed before any answer was read, sent again: the
/// acceptance the router gave the first time (and the ticket once matched).
#[test]
fn r_ha_3_an_rfc_whose_connection_closed_before_the_reply_is_answered_once() {
    let (_dir, router) = start("");
    let addr = router.ready.listen;
    let (_operator, user_key, mut provider) = market(&router);
    let mut first = connect(addr, user_key.clone());
    let nonce = first.next_nonce();
    let frame = rfc_frame(&first, nonce, 100, now_ms() + 60_000);
    first.send_raw(&frame).unwrap();
    drop(first); // closed before the reply
                 // The provider's probe says the RFC was accepted; its answer makes the ticket.
    answer_next_probe(&mut provider, WAIT);
    let ticket = frame_of(&mut provider, msg_type::SESSION_TICKET);
    let mut second = connect(addr, user_key);
    second.send_raw(&frame).unwrap();
    let (t, body) = next_frame(&mut second);
    match decode(t, &body) {
        Message::RfcAccepted(a) => assert_eq!(a.nonce, nonce),
        other => panic!("expected the original RfcAccepted, got {other:?}"),
    }
    assert_eq!(
        next_frame(&mut second),
        (msg_type::SESSION_TICKET, ticket),
        "the ticket the provider holds, byte for byte"
    );
    assert_eq!(hits(&router), 1.0);
}

/// R-HA-3: a report resent on a new connection gets the same `ReportAck` bytes and the
/// session is credited once (the block's credit batch).
#[test]
fn r_ha_3_a_report_resent_is_acknowledged_again_and_credited_once() {
    let (_dir, router) = start("");
    let addr = router.ready.listen;
    let (mut operator, user_key, mut provider) = market(&router);
    let subscribe = SubscribeBatches {
        from: operator.address(),
        nonce: operator.next_nonce(),
        signature: Signature::default(),
    };
    operator.send_signed(subscribe.into()).unwrap();
    let mut user = connect(addr, user_key.clone());
    let rfc_nonce = user.next_nonce();
    user.send_raw(&rfc_frame(&user, rfc_nonce, 100, now_ms() + 60_000))
        .unwrap();
    frame_of(&mut user, msg_type::RFC_ACCEPTED);
    answer_next_probe(&mut provider, WAIT);
    let ticket = match decode(
        msg_type::SESSION_TICKET,
        &frame_of(&mut user, msg_type::SESSION_TICKET),
    ) {
        Message::SessionTicket(t) => t,
        other => panic!("{other:?}"),
    };
    let start_nonce = provider.next_nonce();
    provider
        .send_signed(
            SessionStart {
                from: provider.address(),
                nonce: start_nonce,
                session_id: ticket.session_id,
                signature: Signature::default(),
            }
            .into(),
        )
        .unwrap();
    frame_of(&mut provider, msg_type::ACK);
    let figures = ReportFigures {
        elapsed_ms: 2_000,
        ttft_ms: 200,
        tokens: 100,
        prompt_tokens: 10,
    };
    let report_nonce = user.next_nonce();
    let report = Report::new(
        user.address(),
        report_nonce,
        ticket.session_id,
        Outcome::Pass,
        figures,
    );
    let frame = presign(user.key(), user.network_id(), report.into());
    user.send_raw(&frame).unwrap();
    let ack = frame_of(&mut user, msg_type::REPORT_ACK);
    let earned = match decode(msg_type::REPORT_ACK, &ack) {
        Message::ReportAck(a) => {
            assert!(a.earned, "{a:?}");
            a.earned_wei
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(earned, 100 * PRICE);
    drop(user);
    let mut again = connect(addr, user_key);
    again.send_raw(&frame).unwrap();
    assert_eq!(
        next_frame(&mut again),
        (msg_type::REPORT_ACK, ack),
        "the original ReportAck"
    );
    assert_eq!(hits(&router), 1.0);
    // The block's batch credits the session once (blocks are 12 s).
    let batch = expect(&mut operator, Duration::from_secs(30), |m| match m {
        Message::CreditBatch(b) if b.totals.iter().any(|t| t.provider == provider.address()) => {
            Some(b.clone())
        }
        _ => None,
    });
    let totals = batch
        .totals
        .iter()
        .find(|t| t.provider == provider.address())
        .unwrap();
    assert_eq!(
        (totals.earned_wei, totals.sessions, totals.tokens),
        (earned, 1, 100),
        "credited once: {batch:?}"
    );
    assert_eq!(batch.receipts, 1, "one receipt: {batch:?}");
}

/// R-HA-3: under a flood of accepted messages from many addresses the cache holds at
/// most `network.reply_cache_entries_max` answers, `reply_cache_per_address` per
/// address, the oldest gone first (their resend is refused `replay`, as before).
#[test]
fn r_ha_3_the_reply_cache_bounds_hold_under_a_flood() {
    let (_dir, router) = start("reply_cache_per_address = 2\nreply_cache_entries_max = 40");
    let addr = router.ready.listen;
    let mut operator = connect(addr, operator_key());
    let users: Vec<SigningKey> = (0..60u32)
        .map(|i| SigningKey::from_seed(format!("reply-cache-flood-{i}").as_bytes()))
        .collect();
    let entries: Vec<(Address, u128)> = users
        .iter()
        .map(|k| (k.address(), 100 * WEI_PER_MOR))
        .collect();
    fund(&mut operator, &entries);
    // The operator's own updates: many, only its 2 most recent stay.
    for _ in 0..10 {
        fund(&mut operator, &entries[..1]);
    }
    let expiry = now_ms() + 60_000;
    let mut frames = Vec::new();
    for key in &users {
        let mut user = connect(addr, key.clone());
        let nonce = user.next_nonce();
        let frame = rfc_frame(&user, nonce, 10, expiry);
        user.send_raw(&frame).unwrap();
        frame_of(&mut user, msg_type::RFC_ACCEPTED);
        frames.push((key.clone(), nonce, frame));
    }
    let text = metrics_text(router.ready.metrics);
    let held = metric_value(&text, "yellowstone_reply_cache_entries").unwrap();
    assert_eq!(held, 40.0, "at most reply_cache_entries_max");
    // The newest user's RFC is answered from the cache; the oldest was evicted.
    let (key, nonce, frame) = frames.last().unwrap().clone();
    let mut user = connect(addr, key);
    user.send_raw(&frame).unwrap();
    match decode(
        msg_type::RFC_ACCEPTED,
        &frame_of(&mut user, msg_type::RFC_ACCEPTED),
    ) {
        Message::RfcAccepted(a) => assert_eq!(a.nonce, nonce),
        other => panic!("{other:?}"),
    }
    let (key, nonce, frame) = frames.first().unwrap().clone();
    let mut user = connect(addr, key);
    user.send_raw(&frame).unwrap();
    match decode(
        msg_type::ERROR_REPLY,
        &frame_of(&mut user, msg_type::ERROR_REPLY),
    ) {
        Message::ErrorReply(e) => assert_eq!((e.code, e.ref_nonce), (codes::REPLAY, nonce)),
        other => panic!("{other:?}"),
    }
    assert_eq!(hits(&router), 1.0);
    // A bound of 0 is refused at start, naming the key.
    let (code, stderr) = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[network]\nreply_cache_per_address = 0\n").unwrap();
        yellowstone_tests::refused(
            dir.path(),
            &["run", "--in-memory", "--config", path.to_str().unwrap()],
        )
    };
    assert_ne!(code, 0);
    assert!(
        stderr.contains("network.reply_cache_per_address"),
        "{stderr}"
    );
}

/// R-HA-3, R-ID-6: an RFC resent on a new connection while it is still being matched
/// takes the user's route there: the ticket made after the resend reaches the new
/// connection (the old one is gone), and the resend had no effect of its own.
#[test]
fn r_ha_3_a_resent_rfc_takes_the_route_so_its_later_ticket_arrives() {
    let (_dir, router) = start("");
    let addr = router.ready.listen;
    let (_operator, user_key, mut provider) = market(&router);
    let mut first = connect(addr, user_key.clone());
    let nonce = first.next_nonce();
    let frame = rfc_frame(&first, nonce, 100, now_ms() + 60_000);
    first.send_raw(&frame).unwrap();
    let accepted = frame_of(&mut first, msg_type::RFC_ACCEPTED);
    // The provider is probed; it has not answered when the user's connection dies.
    let probe = expect(&mut provider, WAIT, |m| match m {
        Message::Probe(p) => Some(p.clone()),
        _ => None,
    });
    drop(first);
    let mut second = connect(addr, user_key);
    second.send_raw(&frame).unwrap();
    assert_eq!(
        next_frame(&mut second),
        (msg_type::RFC_ACCEPTED, accepted),
        "the original RfcAccepted"
    );
    assert_eq!(hits(&router), 1.0);
    let answer_nonce = provider.next_nonce();
    provider
        .send_signed(
            ProbeAnswer {
                from: provider.address(),
                nonce: answer_nonce,
                probe_id: probe.probe_id,
                signature: Signature::default(),
            }
            .into(),
        )
        .unwrap();
    let provider_ticket = frame_of(&mut provider, msg_type::SESSION_TICKET);
    assert_eq!(
        next_frame(&mut second),
        (msg_type::SESSION_TICKET, provider_ticket),
        "the ticket reaches the connection the RFC was resent on"
    );
}

/// R-HA-3, R-PROV-3: resends answered from the cache count against the connection's
/// refusal budget (`network.conn_refusals_per_s_max`): replaying one's own accepted
/// message in a loop ends as a flood of refusals does, `too_many_refusals` and a close.
#[test]
fn r_ha_3_resends_count_against_the_refusal_budget() {
    let (_dir, router) = start("conn_refusals_per_s_max = 5");
    let addr = router.ready.listen;
    let mut operator = connect(addr, operator_key());
    let nonce = operator.next_nonce();
    let update = BalanceUpdate {
        from: operator.address(),
        nonce,
        entries: vec![BalanceEntry {
            address: Address([7; 20]),
            balance_wei: WEI_PER_MOR,
        }],
        signature: Signature::default(),
    };
    let frame = presign(operator.key(), operator.network_id(), update.into());
    operator.send_raw(&frame).unwrap();
    frame_of(&mut operator, msg_type::ACK);
    for _ in 0..20 {
        operator.send_raw(&frame).unwrap();
    }
    let mut acks = 0;
    let closing = loop {
        let (t, body) = next_frame(&mut operator);
        match decode(t, &body) {
            Message::Ack(a) => {
                assert_eq!(a.nonce, nonce);
                acks += 1;
            }
            Message::ErrorReply(e) => break e,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(acks, 5, "the budget's resends are answered");
    assert_eq!(closing.code, codes::TOO_MANY_REFUSALS, "{closing:?}");
    assert!(matches!(operator.recv(), Err(ClientError::Closed)));
    assert_eq!(hits(&router), 5.0);

    // A route-taking resend (an RFC, answered through the engine) is counted once too.
    let mut operator = connect(addr, operator_key());
    let user_key = SigningKey::from_seed(b"reply-cache-budget-user");
    fund(&mut operator, &[(user_key.address(), 100 * WEI_PER_MOR)]);
    let mut user = connect(addr, user_key.clone());
    let nonce = user.next_nonce();
    let frame = rfc_frame(&user, nonce, 10, now_ms() + 60_000);
    user.send_raw(&frame).unwrap();
    frame_of(&mut user, msg_type::RFC_ACCEPTED);
    std::thread::sleep(Duration::from_millis(200)); // the nonce cache follows durability
    let mut again = connect(addr, user_key);
    for _ in 0..20 {
        again.send_raw(&frame).unwrap();
    }
    let closing = frame_of(&mut again, msg_type::ERROR_REPLY);
    match decode(msg_type::ERROR_REPLY, &closing) {
        Message::ErrorReply(e) => assert_eq!(e.code, codes::TOO_MANY_REFUSALS, "{e:?}"),
        other => panic!("{other:?}"),
    }
    let deadline = Instant::now() + WAIT;
    while hits(&router) < 10.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(hits(&router), 10.0, "5 more: one count per resend");
}

/// R-HA-3 on a single router that crashed: a message accepted (and durable) before a
/// SIGKILL, sent again to the restarted router, gets its original answer: the cache is
/// rebuilt from the journal records replayed at start.
#[test]
fn r_ha_3_a_restarted_router_answers_a_resend_from_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        format!("[market]\ngenesis_ms = {}\n", now_ms() - 1_000),
    )
    .unwrap();
    let operator = operator_key().address().to_string();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--operator",
        &operator,
        "--durability",
        "always",
    ];
    let router = RouterProcess::start(&args);
    let mut operator_client = connect(router.ready.listen, operator_key());
    let user_key = SigningKey::from_seed(b"reply-cache-restart-user");
    fund(
        &mut operator_client,
        &[(user_key.address(), 100 * WEI_PER_MOR)],
    );
    let mut user = connect(router.ready.listen, user_key.clone());
    let nonce = user.next_nonce();
    let frame = rfc_frame(&user, nonce, 100, now_ms() + 60_000);
    user.send_raw(&frame).unwrap();
    let accepted = frame_of(&mut user, msg_type::RFC_ACCEPTED);
    router.kill_hard();
    let router = RouterProcess::start(&args);
    let mut again = connect(router.ready.listen, user_key);
    again.send_raw(&frame).unwrap();
    assert_eq!(
        next_frame(&mut again),
        (msg_type::RFC_ACCEPTED, accepted),
        "the original RfcAccepted, from the replayed journal"
    );
    assert_eq!(hits(&router), 1.0);
}

/// R-HA-2 (issue 25): a subscription is sent the newest sealed batch at once, after
/// its `Ack`, the same bytes the subscribers of that block got: a subscriber that lost
/// its connection (a failover, a restart) and subscribes again misses no block sealed
/// while it was away. The router's own restart counts too: the newest batch comes from
/// the replayed journal.
#[test]
fn r_ha_2_a_new_subscription_gets_the_newest_sealed_batch_after_its_ack() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.toml");
    // Genesis 11.5 s ago: block 0 seals within about half a second.
    std::fs::write(
        &path,
        format!("[market]\ngenesis_ms = {}\n", now_ms() - 11_500),
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    let operator_address = operator_key().address().to_string();
    let args = [
        "--config",
        path.to_str().unwrap(),
        "--operator",
        &operator_address,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    let router = RouterProcess::start(&args);
    let subscribe = |client: &mut Client| {
        let nonce = client.next_nonce();
        client
            .send_signed(
                SubscribeBatches {
                    from: client.address(),
                    nonce,
                    signature: Signature::default(),
                }
                .into(),
            )
            .unwrap();
        nonce
    };
    let mut first = connect(router.ready.listen, operator_key());
    let nonce = subscribe(&mut first);
    assert_eq!(
        decode(msg_type::ACK, &frame_of(&mut first, msg_type::ACK)),
        Message::from(messages::Ack { nonce })
    );
    let batch0 = frame_of(&mut first, msg_type::CREDIT_BATCH);
    match decode(msg_type::CREDIT_BATCH, &batch0) {
        Message::CreditBatch(b) => assert_eq!(b.block, 0),
        other => panic!("{other:?}"),
    }
    // A new subscription: the Ack, then block 0's batch at once (the next block is
    // ~12 s away: what arrives now is the newest sealed one), byte for byte.
    let mut second = connect(
        router.ready.listen,
        SigningKey::from_seed(b"late subscriber"),
    );
    let nonce = subscribe(&mut second);
    let (t, body) = next_frame(&mut second);
    assert_eq!(t, msg_type::ACK);
    assert_eq!(decode(t, &body), Message::from(messages::Ack { nonce }));
    assert_eq!(
        next_frame(&mut second),
        (msg_type::CREDIT_BATCH, batch0.clone()),
        "the newest sealed batch follows the Ack, the bytes block 0's subscribers got"
    );
    // Subscribing again on the same connection: the Ack only (no way to have a large
    // batch sent over and over); the next frame is that Ack, not the batch again.
    let nonce = subscribe(&mut second);
    let (t, body) = next_frame(&mut second);
    assert_eq!(
        (t, decode(t, &body)),
        (msg_type::ACK, Message::from(messages::Ack { nonce }))
    );
    second
        .send(&Message::from(messages::Ping { payload: 0x5052 }))
        .unwrap();
    let (t, _) = next_frame(&mut second);
    assert_eq!(
        t,
        msg_type::PONG,
        "no batch between the second Ack and the Pong"
    );
    // After a restart (SIGKILL: nothing but the journal survives) the same.
    router.kill_hard();
    let router = RouterProcess::start(&args);
    let mut third = connect(router.ready.listen, SigningKey::from_seed(b"after restart"));
    let nonce = subscribe(&mut third);
    let (t, body) = next_frame(&mut third);
    assert_eq!(decode(t, &body), Message::from(messages::Ack { nonce }));
    let (t, body) = next_frame(&mut third);
    assert_eq!(t, msg_type::CREDIT_BATCH);
    match decode(t, &body) {
        // Block 0's bytes again, or a later block if one sealed meanwhile.
        Message::CreditBatch(b) if b.block == 0 => assert_eq!(body, batch0),
        Message::CreditBatch(b) => assert!(b.block >= 1),
        other => panic!("{other:?}"),
    }
}
