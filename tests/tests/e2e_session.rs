//! A full session over the real binary, on both network backends and with tickets
//! signed on either thread: register, RFC, probe, ticket (router-signed, to both
//! sides), report, credit batch (router-signed).

use std::time::Duration;
use yellowstone_tests::market::*;
use yellowstone_tests::RouterProcess;
use yellowstone_wire::*;

/// A config whose block 0 ends about a second after start, so a batch comes soon.
fn config_file(dir: &std::path::Path, ticket_signing: &str) -> String {
    let path = dir.join("router.toml");
    let genesis_ms = now_ms() - 10_500;
    std::fs::write(
        &path,
        format!("[market]\ngenesis_ms = {genesis_ms}\n[threads]\nticket_signing = \"{ticket_signing}\"\n"),
    )
    .unwrap();
    path.display().to_string()
}

fn full_session(backend: &str, ticket_signing: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), ticket_signing);
    let operator = operator_key();
    let operator_address = operator.address().to_string();
    let router = RouterProcess::start(&[
        "--config",
        &config,
        "--backend",
        backend,
        "--operator",
        &operator_address,
    ]);
    let addr = router.ready.listen;
    let network_id = router.ready.network_id;
    let router_address: Address = router.ready.router_address.parse().unwrap();

    let mut operator = connect(addr, operator);
    let mut user = connect(addr, SigningKey::from_seed(b"e2e-user"));
    let mut provider = connect(addr, SigningKey::from_seed(b"e2e-provider"));
    fund(
        &mut operator,
        &[
            (user.address(), 5 * WEI_PER_MOR),
            (provider.address(), WEI_PER_MOR),
        ],
    );
    let nonce = operator.next_nonce();
    operator
        .send_signed(
            SubscribeBatches {
                from: operator.address(),
                nonce,
                signature: Signature::default(),
            }
            .into(),
        )
        .unwrap();
    register(&mut provider, network_id, 1, 1_000_000, 4);

    let rfc_nonce = user.next_nonce();
    let rfc = Rfc {
        from: user.address(),
        nonce: rfc_nonce,
        model_id: 1,
        tokens_max: 500,
        expires_at_ms: now_ms() + 30_000,
        signature: Signature::default(),
    };
    user.send_signed(rfc.into()).unwrap();
    let tokens_left = expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::RfcAccepted(a) if a.nonce == rfc_nonce => Some(a.tokens_left),
        Message::ErrorReply(e) => panic!("rfc refused: {e:?}"),
        _ => None,
    });
    assert_eq!(
        tokens_left,
        15_000 - 500,
        "R-QUOTA-3: 5 MOR give 15,000 tokens a day"
    );

    let probe = answer_next_probe(&mut provider, Duration::from_secs(10));
    assert_eq!((probe.model_id, probe.tokens_max), (1, 500));

    let check_ticket = |m: &Message| match m {
        Message::SessionTicket(t) => {
            let body = {
                let mut b = Vec::new();
                m.encode(&mut b);
                b
            };
            m.verify_router(network_id, &body, &router_address)
                .expect("ticket signed by the router");
            Some(t.clone())
        }
        _ => None,
    };
    let provider_ticket = expect(&mut provider, Duration::from_secs(10), check_ticket);
    let ticket = expect(&mut user, Duration::from_secs(10), check_ticket);
    assert_eq!(
        ticket, provider_ticket,
        "R-MATCH-6: both sides get the same ticket"
    );
    assert_eq!(
        (ticket.user, ticket.provider, ticket.rfc_nonce),
        (user.address(), provider.address(), rfc_nonce)
    );

    let nonce = user.next_nonce();
    let report = Report {
        from: user.address(),
        nonce,
        session_id: ticket.session_id,
        elapsed_ms: 900,
        tokens: 300,
        ttft_ms: 0,
        prompt_tokens: 0,
        outcome: Outcome::Pass,
        signature: Signature::default(),
    };
    user.send_signed(report.clone().into()).unwrap();
    let ack = expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::ReportAck(a) if a.nonce == nonce => Some(a.clone()),
        Message::ErrorReply(e) => panic!("report refused: {e:?}"),
        _ => None,
    });
    assert!(ack.earned);
    assert_eq!(ack.earned_wei, 300 * 1_000_000);
    // A second report of the same session: refused with its own code.
    let nonce = user.next_nonce();
    user.send_signed(Report { nonce, ..report }.into()).unwrap();
    let code = expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::ErrorReply(e) if e.ref_nonce == nonce => Some(e.code),
        _ => None,
    });
    assert_eq!(codes::name(code), "already_reported");

    let batch = expect(&mut operator, Duration::from_secs(20), |m| match m {
        Message::CreditBatch(b) if !b.totals.is_empty() => {
            let body = {
                let mut v = Vec::new();
                m.encode(&mut v);
                v
            };
            m.verify_router(network_id, &body, &router_address)
                .expect("batch signed by the router");
            Some(b.clone())
        }
        _ => None,
    });
    assert_eq!(batch.receipts, 1);
    assert_eq!(batch.totals[0].provider, provider.address());
    assert_eq!(batch.totals[0].earned_wei, 300 * 1_000_000);
    assert_eq!(batch.totals[0].credited_wei, 300 * 1_000_000);
    assert!(
        router.terminate(Duration::from_secs(20)),
        "clean exit on SIGTERM"
    );
}

#[test]
fn full_session_over_io_uring() {
    full_session("uring", "gateway");
}

#[test]
fn full_session_over_mio() {
    full_session("mio", "gateway");
}

#[test]
fn full_session_with_tickets_signed_on_the_engine_thread() {
    full_session("uring", "engine");
}
