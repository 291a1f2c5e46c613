//! Issue 27 cases 4, 8 and 9 through the real router binary: R-SESSION-1 (a user
//! holds at most `user_sessions_open_max` sessions and RFCs; a session whose
//! provider does not sign its start within `ticket_start_timeout_ms` closes and
//! frees its capacity), R-REPORT-2 (a void report earns nothing and no penalty
//! point) and R-REPORT-3 / R-PERF-1 (a long prompt's slow first token is not
//! slowness; a slow generation is).

use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::{metrics_text, RouterProcess};
use yellowstone_wire::client::Client;
use yellowstone_wire::*;

const WAIT: Duration = Duration::from_secs(10);
const PRICE: u128 = 1_000_000;

/// Starts a router with these `[market]` lines (genesis now).
fn start(market: &str) -> (tempfile::TempDir, RouterProcess) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.toml");
    std::fs::write(
        &path,
        format!("[market]\ngenesis_ms = {}\n{market}\n", now_ms() - 1_000),
    )
    .unwrap();
    let operator = operator_key().address().to_string();
    let config = path.display().to_string();
    let router = RouterProcess::start(&["--config", &config, "--operator", &operator]);
    (dir, router)
}

fn rfc(user: &mut Client, tokens_max: u64) -> u64 {
    let nonce = user.next_nonce();
    let rfc = Rfc {
        from: user.address(),
        nonce,
        model_id: 1,
        tokens_max,
        expires_at_ms: now_ms() + 60_000,
        signature: Signature::default(),
    };
    user.send_signed(rfc.into()).unwrap();
    nonce
}

/// The RFC's acceptance or refusal.
fn rfc_answer(user: &mut Client, nonce: u64) -> Result<(), ErrorReply> {
    expect(user, WAIT, |m| match m {
        Message::RfcAccepted(a) if a.nonce == nonce => Some(Ok(())),
        Message::ErrorReply(e) if e.ref_nonce == nonce => Some(Err(e.clone())),
        _ => None,
    })
}

fn ticket_of(client: &mut Client, rfc_nonce: u64) -> SessionTicket {
    expect(client, WAIT, |m| match m {
        Message::SessionTicket(t) if t.rfc_nonce == rfc_nonce => Some(t.clone()),
        Message::ErrorReply(e) => panic!("refused: {e:?}"),
        _ => None,
    })
}

/// R-SESSION-1: the provider signs the start, as the provider node does.
fn start_session(provider: &mut Client, session_id: u64) {
    let nonce = provider.next_nonce();
    let start = SessionStart {
        from: provider.address(),
        nonce,
        session_id,
        signature: Signature::default(),
    };
    provider.send_signed(start.into()).unwrap();
    expect(provider, WAIT, |m| match m {
        Message::Ack(a) if a.nonce == nonce => Some(()),
        Message::ErrorReply(e) if e.ref_nonce == nonce => panic!("start refused: {e:?}"),
        _ => None,
    });
}

/// RFC, probe answered, ticket on both sides, start signed: the ticket.
fn session(user: &mut Client, provider: &mut Client, tokens_max: u64) -> SessionTicket {
    let nonce = rfc(user, tokens_max);
    rfc_answer(user, nonce).expect("RFC accepted");
    answer_next_probe(provider, WAIT);
    let ticket = ticket_of(user, nonce);
    start_session(provider, ticket.session_id);
    ticket
}

fn report(
    user: &mut Client,
    session_id: u64,
    outcome: Outcome,
    figures: ReportFigures,
) -> Result<ReportAck, ErrorReply> {
    let nonce = user.next_nonce();
    let report = Report::new(user.address(), nonce, session_id, outcome, figures);
    user.send_signed(report.into()).unwrap();
    expect(user, WAIT, |m| match m {
        Message::ReportAck(a) if a.nonce == nonce => Some(Ok(a.clone())),
        Message::ErrorReply(e) if e.ref_nonce == nonce => Some(Err(e.clone())),
        _ => None,
    })
}

fn figures(elapsed_ms: u64, ttft_ms: u64, tokens: u64, prompt_tokens: u64) -> ReportFigures {
    ReportFigures {
        elapsed_ms,
        ttft_ms,
        tokens,
        prompt_tokens,
    }
}

/// Funded user and provider (capacity `capacity` for model 1) on a fresh router.
fn market(router: &RouterProcess, user_mor: u128, capacity: u32) -> (Client, Client, Client) {
    let addr = router.ready.listen;
    let mut operator = connect(addr, operator_key());
    let user = connect(addr, SigningKey::from_seed(b"reports-user"));
    let mut provider = connect(addr, SigningKey::from_seed(b"reports-provider"));
    fund(
        &mut operator,
        &[
            (user.address(), user_mor * WEI_PER_MOR),
            (provider.address(), WEI_PER_MOR),
        ],
    );
    register(&mut provider, router.ready.network_id, 1, PRICE, capacity);
    (operator, user, provider)
}

#[test]
fn case_4_a_hoarder_holds_at_most_user_sessions_open_max_and_unstarted_sessions_close() {
    let (_dir, router) = start("ticket_start_timeout_ms = 1500\nuser_sessions_open_max = 4");
    // The hoarder has 1 MOR (3,000 tokens a day: room for 3,000 TokenMax-1 RFCs);
    // the provider's 4 slots are all it could take.
    let (mut operator, mut hoarder, mut provider) = market(&router, 1, 4);
    let mut honest = connect(router.ready.listen, SigningKey::from_seed(b"honest-user"));
    fund(&mut operator, &[(honest.address(), 500 * WEI_PER_MOR)]);
    let mut tickets = Vec::new();
    for _ in 0..4 {
        let nonce = rfc(&mut hoarder, 1);
        rfc_answer(&mut hoarder, nonce).expect("within the bound");
        answer_next_probe(&mut provider, WAIT);
        tickets.push(ticket_of(&mut hoarder, nonce));
    }
    // The fifth RFC is refused with the bound, whatever its quota left.
    for _ in 0..3 {
        let nonce = rfc(&mut hoarder, 1);
        let refusal = rfc_answer(&mut hoarder, nonce).expect_err("past the bound");
        assert_eq!(
            refusal.code,
            codes::USER_SESSIONS_FULL,
            "{}",
            refusal.reason
        );
        assert_eq!(refusal.detail, 4, "detail: the bound");
        assert!(
            refusal.reason.contains("user_sessions_open_max = 4"),
            "{}",
            refusal.reason
        );
    }
    // The provider is full: an honest RFC waits, until the hoarder's sessions,
    // never started, close after ticket_start_timeout_ms (not session_ttl_ms).
    let asked = Instant::now();
    let nonce = rfc(&mut honest, 100);
    rfc_answer(&mut honest, nonce).expect("honest RFC accepted");
    answer_next_probe(&mut provider, WAIT);
    let ticket = ticket_of(&mut honest, nonce);
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(1_000) && waited < Duration::from_secs(8),
        "the slot came free at the start timeout, after {waited:?}"
    );
    start_session(&mut provider, ticket.session_id);
    // The hoarder's sessions are closed: a report says so, and its places are back.
    let refusal = report(
        &mut hoarder,
        tickets[0].session_id,
        Outcome::Pass,
        figures(10, 5, 1, 10),
    )
    .expect_err("closed for want of a start");
    assert_eq!(
        refusal.code,
        codes::SESSION_NOT_STARTED,
        "{}",
        refusal.reason
    );
    let nonce = rfc(&mut hoarder, 1);
    rfc_answer(&mut hoarder, nonce).expect("places freed with the sessions");
    // The operator sees them (the metrics follow the engine within its ticks).
    let metric = "yellowstone_sessions_not_started_total 4";
    let deadline = Instant::now() + WAIT;
    while !metrics_text(router.ready.metrics).contains(metric) {
        assert!(Instant::now() < deadline, "{metric} never shown");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The honest session, started, outlives the start timeout and is credited.
    std::thread::sleep(Duration::from_millis(2_000));
    let ack = report(
        &mut honest,
        ticket.session_id,
        Outcome::Pass,
        figures(900, 100, 90, 50),
    )
    .expect("the started session is still open");
    assert!(ack.earned);
}

#[test]
fn case_8_a_void_report_earns_nothing_and_no_penalty_point() {
    // One penalty point suspends: were void a penalty, the provider would be out.
    let (_dir, router) = start("penalty_points_suspend = 1\nsuspend_users_min = 1");
    let (_operator, mut user, mut provider) = market(&router, 500, 1);
    for _ in 0..3 {
        let ticket = session(&mut user, &mut provider, 100);
        // The model refused the prompt as over its context: the user's own fault.
        let ack = report(
            &mut user,
            ticket.session_id,
            Outcome::Void,
            figures(35, 35, 0, 200_000),
        )
        .expect("void accepted");
        assert!(!ack.earned);
        assert_eq!((ack.reason, ack.earned_wei), (5, 0), "reason 5: void");
    }
    // Still matched (capacity 1: each void freed the slot); a fail suspends.
    let ticket = session(&mut user, &mut provider, 100);
    let ack = report(
        &mut user,
        ticket.session_id,
        Outcome::Fail,
        figures(35, 35, 0, 20),
    )
    .unwrap();
    assert_eq!(ack.reason, 1);
    let notice = expect(&mut provider, WAIT, |m| match m {
        Message::Notice(n) => Some(n.clone()),
        _ => None,
    });
    assert_eq!(notice.kind, NOTICE_SUSPENDED, "the threshold is live");
    // An outcome byte that is none of the three is a malformed field.
    let nonce = user.next_nonce();
    let mut frame = Message::from(Report::new(
        user.address(),
        nonce,
        ticket.session_id,
        Outcome::Void,
        figures(1, 1, 0, 0),
    ))
    .sign(user.key(), router.ready.network_id);
    let outcome_at = frame.len() - 65 - 1;
    frame[outcome_at] = 7;
    user.send_raw(&frame).unwrap();
    let refusal = expect(&mut user, WAIT, |m| match m {
        Message::ErrorReply(e) => Some(e.clone()),
        _ => None,
    });
    assert_eq!(refusal.code, codes::BAD_FIELD, "{}", refusal.reason);
    assert!(refusal.reason.contains("outcome"), "{}", refusal.reason);
    // Issue 27: the nonce is read at its fixed offset, so the refusal names the report.
    assert_eq!(
        refusal.ref_nonce, nonce,
        "the refused report's nonce is echoed"
    );
    assert_eq!(refusal.ref_msg_type, messages::msg_type::REPORT);
}

#[test]
fn case_9_a_long_prompts_slow_first_token_is_credited_a_slow_generation_is_not() {
    let (_dir, router) = start("speed_reports_min = 3");
    let (_operator, mut user, mut provider) = market(&router, 500, 1);
    // History: short prompts answer their first token in 100 ms, long ones
    // (1,024..2,047 tokens) in 1,600 ms; both generate at 10 ms per token.
    for _ in 0..3 {
        for f in [figures(500, 100, 41, 20), figures(1_630, 1_600, 4, 1_400)] {
            let ticket = session(&mut user, &mut provider, 100);
            let ack = report(&mut user, ticket.session_id, Outcome::Pass, f).unwrap();
            assert!(ack.earned, "history is credited: {ack:?}");
        }
    }
    // The report: a 1,523-token prompt, 4 tokens, 1,685 ms in all.
    let ticket = session(&mut user, &mut provider, 100);
    let ack = report(
        &mut user,
        ticket.session_id,
        Outcome::Pass,
        figures(1_685, 1_655, 4, 1_523),
    )
    .unwrap();
    assert!(ack.earned, "a long prompt is not slowness: {ack:?}");
    assert_eq!(ack.earned_wei, 4 * PRICE);
    // The same prompt generating at 40 ms per token is too slow.
    let ticket = session(&mut user, &mut provider, 100);
    let ack = report(
        &mut user,
        ticket.session_id,
        Outcome::Pass,
        figures(1_775, 1_655, 4, 1_523),
    )
    .unwrap();
    assert_eq!((ack.earned, ack.reason), (false, 2), "too slow: {ack:?}");
    // A short prompt waiting as long for its first token is slow to start.
    let ticket = session(&mut user, &mut provider, 100);
    let ack = report(
        &mut user,
        ticket.session_id,
        Outcome::Pass,
        figures(1_685, 1_655, 4, 20),
    )
    .unwrap();
    assert_eq!(
        (ack.earned, ack.reason),
        (false, 6),
        "slow first token: {ack:?}"
    );
    // Incoherent figures are refused with the values and bounds.
    let ticket = session(&mut user, &mut provider, 100);
    let refusal = report(
        &mut user,
        ticket.session_id,
        Outcome::Pass,
        figures(100, 101, 4, 20),
    )
    .unwrap_err();
    assert_eq!(refusal.code, codes::TTFT_OVER_ELAPSED, "{}", refusal.reason);
    assert_eq!(refusal.detail, 100);
    let refusal = report(
        &mut user,
        ticket.session_id,
        Outcome::Pass,
        figures(100, 10, 4, (1 << 24) + 1),
    )
    .unwrap_err();
    assert_eq!(
        refusal.code,
        codes::PROMPT_TOKENS_OVER_MAX,
        "{}",
        refusal.reason
    );
    assert_eq!(refusal.detail, 1 << 24);
}

/// Outsider finding (issue 27, R-PERF-1, R-PERF-4): one 1-MOR user sending many pass
/// reports of absurd speed (1 ms for 20 tokens, first token at 0 ms) no longer drags
/// the model's speed reference down: such reports join no window (faster than
/// `market.tokens_per_s_max`), and a user holds at most
/// `market.speed_window_user_reports_max` of a window. Honest users reporting their
/// usual speed are still credited and the provider is not suspended.
#[test]
fn r_perf_1_one_users_absurd_reports_do_not_poison_the_speed_reference() {
    let (_dir, router) = start("speed_reports_min = 3");
    let (mut operator, first, mut provider) = market(&router, 500, 4);
    let addr = router.ready.listen;
    let mut honest = vec![first];
    for i in 2..=3 {
        let user = connect(
            addr,
            SigningKey::from_seed(format!("speed-honest-{i}").as_bytes()),
        );
        fund(&mut operator, &[(user.address(), 500 * WEI_PER_MOR)]);
        honest.push(user);
    }
    let mut poisoner = connect(addr, SigningKey::from_seed(b"speed-poisoner"));
    fund(&mut operator, &[(poisoner.address(), WEI_PER_MOR)]);
    // Honest history: 20 ms per token after a 100-ms first token (21 tokens).
    let usual = figures(500, 100, 21, 20);
    for _ in 0..2 {
        for user in honest.iter_mut() {
            let ticket = session(user, &mut provider, 100);
            let ack = report(user, ticket.session_id, Outcome::Pass, usual).unwrap();
            assert_eq!(ack.reason, 0, "earned");
        }
    }
    // The poisoning: 30 sessions reported pass in 1 ms, first token at 0 ms.
    for _ in 0..30 {
        let ticket = session(&mut poisoner, &mut provider, 20);
        report(
            &mut poisoner,
            ticket.session_id,
            Outcome::Pass,
            figures(1, 0, 20, 20),
        )
        .expect("accepted: the user may report what it likes");
    }
    // Honest reports at the usual speed: credited, no penalty point, no suspension.
    for _ in 0..2 {
        for user in honest.iter_mut() {
            let ticket = session(user, &mut provider, 100);
            let ack = report(user, ticket.session_id, Outcome::Pass, usual).unwrap();
            assert_eq!(
                ack.reason, 0,
                "an honest report at the usual speed judged too slow after one user's \
                 absurd reports (reason {})",
                ack.reason
            );
        }
    }
    let text = metrics_text(router.ready.metrics);
    let suspended: f64 = text
        .lines()
        .filter(|l| l.starts_with("yellowstone_market_providers_suspended"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(suspended, 0.0, "the provider was suspended");
}
