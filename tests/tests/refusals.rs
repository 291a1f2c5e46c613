//! Clear refusals (issue 15, item 6) through the real binary: an expiry says whether it
//! is in the past or too far, with the limit; TokenMax refusals give the limit; and one
//! name per error code across the wire, the engine, the metrics and the protocol doc.

use std::time::Duration;
use yellowstone_engine::{MarketError, ParamId};
use yellowstone_tests::market::*;
use yellowstone_tests::{metrics_text, RouterProcess};
use yellowstone_wire::client::Client;
use yellowstone_wire::*;

const PROTOCOL_DOC: &str = include_str!("../../docs/PROTOCOL.md");

fn start(dir: &std::path::Path) -> RouterProcess {
    let path = dir.join("router.toml");
    std::fs::write(
        &path,
        "[market]\nrfc_queue_depth_max = 1\ntokens_max_limit = 5000\nrfc_ttl_max_ms = 60000\n",
    )
    .unwrap();
    let operator = operator_key().address().to_string();
    RouterProcess::start(&[
        "--config",
        path.to_str().unwrap(),
        "--operator",
        &operator,
        "--backend",
        "mio",
    ])
}

fn send_rfc(user: &mut Client, tokens_max: u64, expires_at_ms: u64) -> u64 {
    let nonce = user.next_nonce();
    let rfc = Rfc {
        from: user.address(),
        nonce,
        model_id: 1,
        tokens_max,
        expires_at_ms,
        signature: Signature::default(),
    };
    user.send_signed(rfc.into()).unwrap();
    nonce
}

fn refusal(user: &mut Client, nonce: u64) -> ErrorReply {
    expect(user, Duration::from_secs(10), |m| match m {
        Message::ErrorReply(e) if e.ref_nonce == nonce => Some(e.clone()),
        Message::RfcAccepted(a) if a.nonce == nonce => panic!("accepted: {a:?}"),
        _ => None,
    })
}

#[test]
fn expiry_and_token_max_refusals_say_which_bound_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let router = start(dir.path());
    let addr = router.ready.listen;
    let mut operator = connect(addr, operator_key());
    let mut user = connect(addr, SigningKey::from_seed(b"refusals-user"));
    fund(&mut operator, &[(user.address(), 5 * WEI_PER_MOR)]);

    // In the past: the reason says so; detail is the router's time (the expiry must be
    // above it).
    let before = now_ms();
    let nonce = send_rfc(&mut user, 10, before - 1_000);
    let e = refusal(&mut user, nonce);
    assert_eq!(codes::name(e.code), "invalid_expiry");
    assert!(e.reason.contains("in the past"), "{}", e.reason);
    assert!(e.reason.contains("rfc_ttl_max_ms = 60000"), "{}", e.reason);
    let router_now = e.detail as u64;
    assert!(
        router_now >= before && router_now <= now_ms(),
        "detail is the router's now in Unix ms: {router_now}"
    );

    // Too far: the reason gives the limit; detail is the latest accepted expiry.
    let before = now_ms();
    let nonce = send_rfc(&mut user, 10, before + 600_000);
    let e = refusal(&mut user, nonce);
    assert_eq!(codes::name(e.code), "invalid_expiry");
    assert!(e.reason.contains("too far"), "{}", e.reason);
    assert!(e.reason.contains("rfc_ttl_max_ms = 60000"), "{}", e.reason);
    let latest = e.detail as u64;
    assert!(
        latest >= before + 60_000 && latest <= now_ms() + 60_000,
        "detail is now + rfc_ttl_max_ms: {latest}"
    );

    // TokenMax 0 and above the limit: the limit in the reason and in detail.
    for tokens_max in [0u64, 5_001] {
        let nonce = send_rfc(&mut user, tokens_max, now_ms() + 30_000);
        let e = refusal(&mut user, nonce);
        assert_eq!(codes::name(e.code), "invalid_tokens_max");
        assert_eq!(e.detail, 5_000, "detail is tokens_max_limit");
        assert!(e.reason.contains("5000"), "{}", e.reason);
        if tokens_max == 0 {
            assert!(e.reason.contains("above 0"), "{}", e.reason);
        } else {
            assert!(e.reason.contains("5001"), "{}", e.reason);
        }
    }
    assert!(router.terminate(Duration::from_secs(20)));
}

#[test]
fn a_full_model_queue_is_queue_full_on_the_wire_and_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let router = start(dir.path());
    let addr = router.ready.listen;
    let mut operator = connect(addr, operator_key());
    let mut user = connect(addr, SigningKey::from_seed(b"refusals-queue"));
    fund(&mut operator, &[(user.address(), 5 * WEI_PER_MOR)]);
    // No provider: the first RFC waits in the queue of depth 1, the second is refused.
    let first = send_rfc(&mut user, 10, now_ms() + 30_000);
    expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::RfcAccepted(a) if a.nonce == first => Some(()),
        Message::ErrorReply(e) => panic!("refused: {e:?}"),
        _ => None,
    });
    let second = send_rfc(&mut user, 10, now_ms() + 30_000);
    let e = refusal(&mut user, second);
    assert_eq!(e.code, codes::QUEUE_FULL);
    assert_eq!(codes::name(e.code), "queue_full");
    assert_eq!(e.retry_after_ms, 1_000);
    let metrics = metrics_text(router.ready.metrics);
    assert!(
        metrics.contains("yellowstone_rejections_total{code=\"queue_full\"} 1"),
        "the metric uses the wire's name: {metrics}"
    );
    assert!(!metrics.contains("code=\"overloaded\""), "{metrics}");
    assert!(router.terminate(Duration::from_secs(20)));
}

#[test]
fn every_market_error_has_one_name_in_engine_and_wire() {
    let errors = MarketError::one_of_each();
    for error in &errors {
        assert_eq!(
            codes::name(error.code()),
            error.name(),
            "code {:#06x}: the engine and the wire name it differently",
            error.code()
        );
        assert_eq!(codes::layer(error.code()), codes::Layer::Market);
    }
    let mut engine: Vec<u16> = errors.iter().map(MarketError::code).collect();
    engine.sort_unstable();
    let wire: Vec<u16> = codes::ALL
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| codes::layer(*c) == codes::Layer::Market)
        .collect();
    assert_eq!(engine, wire, "every market code is in both");
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    let mut previous_digit = false;
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_digit() && !previous_digit {
            out.push('_');
        }
        previous_digit = c.is_ascii_digit();
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn the_protocol_docs_param_ids_are_the_engines() {
    let lines: Vec<&str> = PROTOCOL_DOC.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("| param_id | name |"))
        .expect("docs/PROTOCOL.md has the SetParams id table");
    let doc: Vec<(u16, String)> = lines[start + 2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (cells[0].parse().unwrap(), cells[1].to_string())
        })
        .collect();
    let engine: Vec<(u16, String)> = (0..=u16::MAX)
        .filter_map(|id| ParamId::from_u16(id).map(|p| (id, snake_case(&format!("{p:?}")))))
        .collect();
    assert_eq!(doc, engine);
}
