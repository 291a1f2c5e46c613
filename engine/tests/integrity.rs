//! Issue 27, engine level: the market's own participants cannot game it. Self-match
//! prevention (R-MATCH-7), unfunded registrations kept apart and bounded (R-PROV-2),
//! bootstrap slots by first credited session (R-CONTRACT-4), suspension only by
//! several users (R-PERF-4), the ledger's running sums checked where a report enters
//! (R-OPS-4), and the nonce gap (R-ID-8). `Market::apply` checks every invariant
//! after each command.

mod common;
use common::*;
use yellowstone_engine::*;

fn rejected(effects: &[Effect]) -> MarketError {
    rejection_in(effects).unwrap_or_else(|| panic!("expected a refusal: {effects:?}"))
}

/// An address that is both a funded provider and a funded user.
fn dual(n: u32) -> Address {
    provider(100 + n)
}

#[test]
fn r_match_7_an_rfc_is_never_matched_with_its_own_offer() {
    let mut m = Market::new();
    m.fund(dual(1), 500);
    m.register(dual(1), vec![Market::offer(MODEL_A, 1, 4)]);
    // Only its own offer: the RFC waits, as with no provider.
    let effects = m.rfc(dual(1), MODEL_A, 10);
    assert!(probe_in(&effects).is_none(), "self-match: {effects:?}");
    assert_eq!(m.engine.queue_depth(MODEL_A), 1);
    // Someone else's RFC behind it is matched with that offer meanwhile.
    m.fund(user(1), 1);
    let t = m.open_session(user(1), MODEL_A, 10);
    assert_eq!((t.user, t.provider), (user(1), dual(1)));
    assert_eq!(m.engine.queue_depth(MODEL_A), 1, "its own RFC still waits");
    // A dearer provider arrives: the waiting RFC goes to it, not to its own cheaper one.
    m.fund(provider(1), 1);
    let effects = m.register(provider(1), vec![Market::offer(MODEL_A, 9, 4)]);
    let (probe, to) = probe_in(&effects).expect("the waiting RFC is matched");
    assert_eq!(to, provider(1));
    let effects = m.answer(provider(1), probe);
    let t = ticket_in(&effects).unwrap();
    assert_eq!(
        (t.user, t.provider, t.price_wei_per_token),
        (dual(1), provider(1), 9)
    );
    // The self offer kept its time priority: it is still first for others.
    let t = m.open_session(user(1), MODEL_A, 10);
    assert_eq!(t.provider, dual(1));
    // And the dual address's next RFC takes the second best at once.
    let effects = m.rfc(dual(1), MODEL_A, 10);
    assert_eq!(probe_in(&effects).map(|p| p.1), Some(provider(1)));
}

#[test]
fn r_match_7_waiting_self_rfcs_expire_and_are_refunded() {
    let mut m = Market::new();
    m.fund(dual(1), 500);
    m.register(dual(1), vec![Market::offer(MODEL_A, 1, 4)]);
    for _ in 0..3 {
        assert!(probe_in(&m.rfc(dual(1), MODEL_A, 10)).is_none());
    }
    let before = m.engine.tokens_left(&dual(1));
    let effects = m.advance(61_000);
    let refunded: u64 = effects
        .iter()
        .filter_map(|e| match e {
            Effect::RfcFailed {
                reason: RfcFailure::Expired,
                refunded_tokens,
                ..
            } => Some(*refunded_tokens),
            _ => None,
        })
        .sum();
    assert_eq!(refunded, 30);
    assert_eq!(m.engine.tokens_left(&dual(1)), before + 30);
}

fn small_limits() -> MarketConfig {
    MarketConfig {
        providers_max: 2,
        unfunded_registrations_max: 3,
        unfunded_registration_ttl_ms: 10_000,
        ..config()
    }
}

#[test]
fn r_prov_2_unfunded_registrations_never_lock_funded_providers_out() {
    let mut m = Market::with(small_limits());
    for n in 0..10 {
        let effects = m.register(user(n), vec![Market::offer(MODEL_A, 1, 1)]);
        assert!(
            effects.contains(&Effect::ProviderUnfunded { provider: user(n) }),
            "accepted with the notice: {effects:?}"
        );
        assert!(m.engine.unfunded_registrations_len() <= 3);
    }
    assert_eq!(m.engine.providers_len(), 0);
    assert_eq!(
        m.engine.accounts_len(),
        1,
        "no account per sybil (only the operator's)"
    );
    // Oldest evicted first.
    assert!(!m.engine.has_unfunded_registration(&user(6)));
    assert!((7..10).all(|n| m.engine.has_unfunded_registration(&user(n))));
    // A funded provider registers and is matched.
    m.fund(provider(1), 1);
    m.fund(user(99), 500);
    let effects = m.register(provider(1), vec![Market::offer(MODEL_A, 5, 1)]);
    assert!(rejection_in(&effects).is_none(), "{effects:?}");
    let t = m.open_session(user(99), MODEL_A, 10);
    assert_eq!(t.provider, provider(1));
    // Unfunded registrations expire.
    m.advance(10_000);
    assert_eq!(m.engine.unfunded_registrations_len(), 0);
}

#[test]
fn r_prov_2_funding_an_unfunded_registration_gives_it_a_place_if_there_is_room() {
    let mut m = Market::with(small_limits());
    m.fund(user(99), 500);
    m.register(user(1), vec![Market::offer(MODEL_A, 3, 1)]);
    m.register(user(2), vec![Market::offer(MODEL_A, 3, 1)]);
    m.register(user(3), vec![Market::offer(MODEL_A, 3, 1)]);
    // The registration's nonce is tracked without an account (R-ID-4).
    let e = m.apply(Command::ProviderAnnounce {
        provider: user(1),
        nonce: 1,
    });
    assert_eq!(rejected(&e), MarketError::Replay { nonce_last: 1 });
    m.fund(user(2), 1);
    assert_eq!(m.engine.providers_len(), 1, "promoted");
    assert_eq!(
        m.engine.nonce_last(&user(2)),
        Some(1),
        "its nonce carried over"
    );
    let t = m.open_session(user(99), MODEL_A, 10);
    assert_eq!(t.provider, user(2));
    m.fund(provider(1), 1);
    m.register(provider(1), vec![Market::offer(MODEL_A, 9, 1)]);
    assert_eq!(m.engine.providers_len(), 2);
    // No room left: funding drops the registration; it takes no place.
    m.fund(user(3), 1);
    assert_eq!(m.engine.providers_len(), 2);
    assert!(!m.engine.has_unfunded_registration(&user(3)));
    // A disconnected unfunded registration is dropped.
    m.apply(Command::ProviderDisconnected { provider: user(1) });
    assert!(!m.engine.has_unfunded_registration(&user(1)));
    // A provider whose balance falls to zero keeps its place, out of matching.
    m.fund_wei(user(2), 0);
    let effects = m.register(user(2), vec![Market::offer(MODEL_A, 1, 1)]);
    assert!(effects.contains(&Effect::ProviderUnfunded { provider: user(2) }));
    assert_eq!(m.engine.providers_len(), 2);
    assert!(!m.engine.has_unfunded_registration(&user(2)));
}

#[test]
fn r_contract_4_bootstrap_slots_go_by_first_credited_session() {
    let mut m = Market::with(MarketConfig {
        bootstrap_providers_max: 1,
        ..config()
    });
    m.fund(user(1), 500);
    // Registered first but never credited: an unfunded sybil, then an idle funded one.
    m.register(provider(1), vec![Market::offer(MODEL_A, 1, 1)]);
    m.fund(provider(2), 1);
    m.register(provider(2), vec![Market::offer(MODEL_B, 1, 1)]);
    m.fund(provider(3), 1);
    m.register(provider(3), vec![Market::offer(MODEL_A, 10, 1)]);
    assert!(!m.engine.is_bootstrap_provider(&provider(1)));
    assert!(!m.engine.is_bootstrap_provider(&provider(2)));
    let t = m.open_session(user(1), MODEL_A, 100);
    assert_eq!(t.provider, provider(3));
    m.report(user(1), t.session, 10, 100, true);
    assert!(m.engine.is_bootstrap_provider(&provider(3)));
    let t = m.open_session(user(1), MODEL_B, 100);
    m.report(user(1), t.session, 10, 100, true);
    assert!(
        !m.engine.is_bootstrap_provider(&provider(2)),
        "slots are full"
    );
    // The day ends: the whole bonus goes to the one slot holder, with its session.
    let day_ms = BLOCKS_PER_DAY * BLOCK_MS;
    m.advance(day_ms);
    let bonus = 14_400 * WEI_PER_MOR * 240 / 10_000;
    assert_eq!(m.engine.ledger().owed(&provider(3)), bonus + 1_000);
    assert_eq!(m.engine.ledger().owed(&provider(2)), 100);
}

fn suspension_market() -> Market {
    let mut m = Market::with(MarketConfig {
        penalty_points_suspend: 5,
        suspend_users_min: 3,
        ..config()
    });
    for n in 1..=3 {
        m.fund(user(n), 500);
    }
    m.fund(provider(1), 1);
    m.fund(provider(2), 1);
    m.register(provider(1), vec![Market::offer(MODEL_A, 1, 1)]);
    m.register(provider(2), vec![Market::offer(MODEL_A, 2, 1)]);
    m
}

fn fail_report(m: &mut Market, who: Address) -> Vec<Effect> {
    let t = m.open_session(who, MODEL_A, 10);
    assert_eq!(t.provider, provider(1), "still matched: not suspended");
    m.report(who, t.session, 10, 10, false)
}

fn suspended(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::ProviderSuspended { .. }))
}

#[test]
fn r_perf_4_one_user_cannot_suspend_a_provider() {
    let mut m = suspension_market();
    for _ in 0..10 {
        assert!(!suspended(&fail_report(&mut m, user(1))));
    }
    // Two users' points are still not enough.
    for _ in 0..5 {
        assert!(!suspended(&fail_report(&mut m, user(2))));
    }
}

#[test]
fn r_perf_4_points_from_suspend_users_min_users_suspend() {
    let mut m = suspension_market();
    for who in [1, 1, 2, 2] {
        assert!(!suspended(&fail_report(&mut m, user(who))));
    }
    assert!(
        suspended(&fail_report(&mut m, user(3))),
        "5 points, 3 users"
    );
    let t = m.open_session(user(1), MODEL_A, 10);
    assert_eq!(t.provider, provider(2), "the suspended provider is skipped");
}

/// Issue 27 (griefing over 10 s): one user's points count at most
/// ⌈penalty_points_suspend / suspend_users_min⌉ (here ⌈5/3⌉ = 2), so a griefer's
/// many fails plus one stray point from each of two others do not suspend.
#[test]
fn r_perf_4_one_users_points_count_at_most_its_share() {
    let mut m = suspension_market();
    for _ in 0..10 {
        assert!(!suspended(&fail_report(&mut m, user(1))));
    }
    assert!(!suspended(&fail_report(&mut m, user(2))));
    assert!(
        !suspended(&fail_report(&mut m, user(3))),
        "12 points from 3 users, but 10 of them one user's: 2 + 1 + 1 count"
    );
    assert!(
        suspended(&fail_report(&mut m, user(2))),
        "2 + 2 + 1 = 5 points count"
    );
}

#[test]
fn r_perf_4_suspend_users_min_is_validated() {
    for bad in [0, 21] {
        let config = MarketConfig {
            suspend_users_min: bad,
            ..config()
        };
        let reason = config.validate().unwrap_err();
        assert!(reason.contains("suspend_users_min"), "{reason}");
    }
    for (max, ttl) in [(0, 1), (1_000_001, 1), (1, 0), (1, 86_400_001)] {
        let config = MarketConfig {
            unfunded_registrations_max: max,
            unfunded_registration_ttl_ms: ttl,
            ..config()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .contains("unfunded_registration"));
    }
}

/// Issue 27 case 10: bids of u128::MAX allowed, one provider bidding it, 1-token
/// sessions reported pass in two successive blocks. The second block's shortfall
/// would overflow the ledger's cumulative shortfall at the seal (it used to panic
/// there, and in every replay): the report is refused where it enters.
#[test]
fn r_ops_4_a_credit_that_would_overflow_the_ledger_shortfall_is_refused() {
    let mut m = Market::with(MarketConfig {
        bid_wei_per_token_max: u128::MAX,
        ..config()
    });
    m.fund(user(1), 500);
    m.fund(provider(1), 1);
    m.register(provider(1), vec![Market::offer(MODEL_A, u128::MAX, 2)]);
    let first = m.open_session(user(1), MODEL_A, 1);
    let second = m.open_session(user(1), MODEL_A, 1);
    let effects = m.report(user(1), first.session, 10, 1, true);
    assert!(rejection_in(&effects).is_none(), "{effects:?}");
    m.advance(BLOCK_MS);
    let shortfall = m.engine.ledger().shortfall_total_wei;
    assert_eq!(shortfall, u128::MAX - 3_456 * WEI_PER_MOR);
    let effects = m.report(user(1), second.session, 10, 1, true);
    assert_eq!(
        rejected(&effects),
        MarketError::CreditOverflow {
            retry_after_ms: 0,
            sum: CreditSum::LedgerShortfall
        }
    );
    assert!(rejected(&effects)
        .to_string()
        .contains("cumulative shortfall"));
    let effects = m.advance(BLOCK_MS);
    assert_eq!(batches_in(&effects).len(), 1, "the block seals");
    // Replay from genesis and from a snapshot reach the same state.
    let restored = Engine::restore(&m.engine.snapshot()).unwrap();
    assert_eq!(restored.state_hash(), m.engine.state_hash());
}

#[test]
fn r_id_8_a_nonce_far_above_the_last_is_refused_and_the_address_goes_on() {
    let mut m = Market::new();
    m.fund(user(1), 500);
    m.rfc(user(1), MODEL_A, 10); // nonce 1
    let e = m.apply(Command::SubmitRfc {
        user: user(1),
        nonce: u64::MAX,
        model: MODEL_A,
        tokens_max: 10,
        expires_at_ms: m.now + 60_000,
    });
    let floor = m.now * 1_000;
    assert_eq!(
        rejected(&e),
        MarketError::NonceGap {
            nonce_last: Some(1),
            nonce_max: floor + NONCE_GAP_MAX
        }
    );
    assert!(rejected(&e).to_string().contains("(1)"), "{}", rejected(&e));
    assert_eq!(m.engine.nonce_last(&user(1)), Some(1), "not spent");
    // The largest allowed is accepted; the address can go on above it.
    let e = m.apply(Command::SubmitRfc {
        user: user(1),
        nonce: floor + NONCE_GAP_MAX,
        model: MODEL_A,
        tokens_max: 10,
        expires_at_ms: m.now + 60_000,
    });
    assert!(rejection_in(&e).is_none(), "{e:?}");
    // A fresh address may start at the clock in microseconds.
    let e = m.apply(Command::RegisterProvider {
        provider: provider(7),
        nonce: m.now * 1_000 + 5,
        endpoint: vec![],
        offers: vec![],
    });
    assert!(rejection_in(&e).is_none(), "{e:?}");
    // The replay refusal names the last accepted nonce.
    let e = m.apply(Command::ProviderAnnounce {
        provider: provider(7),
        nonce: 3,
    });
    assert_eq!(
        rejected(&e),
        MarketError::Replay {
            nonce_last: m.now * 1_000 + 5
        }
    );
    // The operator's commands follow the same rule.
    let e = m.apply(Command::SetParams {
        operator: OPERATOR,
        nonce: u64::MAX,
        params: vec![],
    });
    assert!(matches!(rejected(&e), MarketError::NonceGap { .. }));
}

#[test]
fn r_match_7_the_e2e_sequence() {
    let mut m = Market::new();
    m.fund(dual(1), 500);
    m.fund(provider(1), 1);
    m.fund(user(1), 500);
    m.register(dual(1), vec![Market::offer(MODEL_A, 1_000, 4)]);
    assert!(probe_in(&m.rfc(dual(1), MODEL_A, 10)).is_none());
    let effects = m.register(provider(1), vec![Market::offer(MODEL_A, 5_000, 4)]);
    let (probe, to) = probe_in(&effects).unwrap();
    assert_eq!(to, provider(1));
    let t = ticket_in(&m.answer(provider(1), probe)).unwrap();
    m.report(dual(1), t.session, 10, 10, true);
    let t = m.open_session(user(1), MODEL_A, 10);
    assert_eq!(t.provider, dual(1));
}

/// R-OPS-4 with the router's "refusals are not journaled" rule (R-PROV-3): every
/// timer that `advance` fires, silent ones included (an unfunded registration's
/// expiry moves no effect), makes the engine due, so that the router journals a
/// `Tick` before a refusal at that moment instead of letting it move state
/// unjournaled.
#[test]
fn r_ops_4_silent_timers_make_the_engine_due() {
    let mut m = Market::with(MarketConfig {
        unfunded_registration_ttl_ms: 1_000,
        ticket_start_timeout_ms: 1_000,
        ..small_limits()
    });
    m.register(user(1), vec![Market::offer(MODEL_A, 1, 1)]);
    assert!(m.engine.has_unfunded_registration(&user(1)));
    let registered = m.now;
    // Both deadlines below fall inside the open block: only they can make it due.
    assert!(registered + 2_000 < m.engine.block_end_ms());
    assert!(!m.engine.is_due(registered + 999));
    assert!(
        m.engine.is_due(registered + 1_000),
        "an unfunded registration's expiry is due"
    );
    m.engine
        .apply(&Command::Tick, registered + 1_000, &mut Vec::new());
    assert!(!m.engine.has_unfunded_registration(&user(1)));

    // An unstarted session's start deadline (R-SESSION-1) is due too.
    m.fund(user(2), 500);
    m.fund(provider(1), 1);
    m.now = registered + 1_000;
    m.register(provider(1), vec![Market::offer(MODEL_A, 10, 1)]);
    let _ticket = m.open_session_unstarted(user(2), MODEL_A, 10);
    let opened = m.now;
    assert!(opened + 1_000 < m.engine.block_end_ms());
    assert!(!m.engine.is_due(opened + 999));
    assert!(
        m.engine.is_due(opened + 1_000),
        "a session start deadline is due"
    );
}
