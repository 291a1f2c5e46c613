//! Issue 13, engine level: money and quotas under hostile values.
//!
//! - UserMax (R-QUOTA-1..3) against an independent big-integer model
//!   (`floor(floor(B × 1000 / P) × balance / S)`, capped at u64::MAX only at the
//!   end), on random parameters drawn from the whole range, extremes included.
//! - Random market sequences whose prices, tokens, balances and bounds are drawn
//!   from 0, 1, u64::MAX, u128::MAX, 2^127 and the like (R-MONEY-1): the engine's
//!   invariants after every step (`Market::apply` calls `check_invariants`), every
//!   credit exactly tokens × price, every refused credit one whose block sum truly
//!   overflows, every batch's earned = credited + shortfall with each provider's
//!   credited at most its earned, and the ledger's solvency recomputed in big
//!   integers.

mod common;
use common::*;
use num_bigint::BigUint;
use proptest::prelude::*;
use std::collections::BTreeMap;
use yellowstone_engine::quota::{self, U256};
use yellowstone_engine::*;

fn big(value: u128) -> BigUint {
    BigUint::from(value)
}

/// The model: a straightforward big-integer computation of R-QUOTA-1..3.
fn user_max_model(budget: u128, price: u128, balance: u128, supply: u128) -> u64 {
    let max_t = big(budget) * BigUint::from(1000u32) / big(price);
    let user_max = max_t * big(balance) / big(supply);
    u64::try_from(user_max).unwrap_or(u64::MAX)
}

fn wei_extreme() -> impl Strategy<Value = u128> {
    prop_oneof![
        Just(0u128),
        Just(1u128),
        Just(u64::MAX as u128),
        Just(u128::MAX),
        Just(1u128 << 127),
        Just(WEI_PER_MOR),
        (0u32..39).prop_map(|k| 10u128.pow(k)),
        any::<u128>(),
        any::<u64>().prop_map(|v| v as u128),
    ]
}

fn positive_wei() -> impl Strategy<Value = u128> {
    wei_extreme().prop_map(|v| v.max(1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn r_quota_3_user_max_equals_the_big_integer_model(
        budget in wei_extreme(),
        price in positive_wei(),
        balance in wei_extreme(),
        supply in positive_wei(),
    ) {
        let model = user_max_model(budget, price, balance, supply);
        prop_assert_eq!(quota::user_max_tokens(budget, price, balance, supply), model);
        let max_t = big(budget) * BigUint::from(1000u32) / big(price);
        let engine_max_t = quota::max_tokens_per_day(budget, price);
        prop_assert_eq!(
            BigUint::from_bytes_le(&engine_max_t.to_le_bytes()),
            max_t,
            "MaxT is exact, never capped"
        );
    }
}

#[test]
fn r_quota_3_model_agrees_on_the_corners() {
    let corners = [0, 1, u64::MAX as u128, 1u128 << 127, u128::MAX, WEI_PER_MOR];
    for &budget in &corners {
        for &price in corners.iter().filter(|&&p| p > 0) {
            for &balance in &corners {
                for &supply in corners.iter().filter(|&&s| s > 0) {
                    assert_eq!(
                        quota::user_max_tokens(budget, price, balance, supply),
                        user_max_model(budget, price, balance, supply),
                        "B={budget} P={price} balance={balance} S={supply}"
                    );
                }
            }
        }
    }
    // The engine uses the same figures: MaxT above u64 is not capped first.
    let mut m = Market::with(MarketConfig {
        token_price_wei_per_1000: 1,
        tokens_max_limit: u64::MAX,
        ..config()
    });
    m.fund_wei(user(1), 3_333_334);
    assert_eq!(m.engine.user_max_tokens(&user(1)), 1_000_000);
    assert_eq!(
        m.engine.max_tokens_per_day(),
        U256::from(3_000_000_000_000_000_000_000_000u128)
    );
}

#[derive(Clone, Debug)]
enum Step {
    Fund {
        user: u8,
        balance: u128,
    },
    Register {
        provider: u8,
        price: u128,
        capacity: u8,
    },
    Rfc {
        user: u8,
        tokens_max: u64,
    },
    Answer {
        pick: u8,
    },
    Report {
        pick: u8,
        tokens: u64,
        elapsed_ms: u64,
        pass: bool,
    },
    Claim {
        provider: u8,
    },
    Wait {
        ms: u32,
    },
}

fn tokens_extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(2u64),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        1..1_000u64,
        any::<u64>(),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3u8, wei_extreme()).prop_map(|(user, balance)| Step::Fund { user, balance }),
        (0..3u8, wei_extreme(), 1..3u8).prop_map(|(provider, price, capacity)| Step::Register {
            provider,
            price,
            capacity
        }),
        (0..3u8, tokens_extreme()).prop_map(|(user, tokens_max)| Step::Rfc { user, tokens_max }),
        any::<u8>().prop_map(|pick| Step::Answer { pick }),
        (
            any::<u8>(),
            tokens_extreme(),
            tokens_extreme(),
            prop::bool::weighted(0.8)
        )
            .prop_map(|(pick, tokens, elapsed_ms, pass)| Step::Report {
                pick,
                tokens,
                elapsed_ms,
                pass
            }),
        (0..3u8).prop_map(|provider| Step::Claim { provider }),
        prop_oneof![1..2_000u32, 12_000..30_000u32].prop_map(|ms| Step::Wait { ms }),
    ]
}

fn market_config() -> impl Strategy<Value = MarketConfig> {
    (
        positive_wei(),
        wei_extreme(),
        positive_wei(),
        positive_wei(),
        prop_oneof![Just(u64::MAX), 1..1_000_000u64],
    )
        .prop_map(
            |(bid_max, budget, price, supply, tokens_max_limit)| MarketConfig {
                bid_wei_per_token_max: bid_max,
                compute_budget_wei_per_day: budget,
                token_price_wei_per_1000: price,
                mor_supply_wei: supply,
                tokens_max_limit,
                speed_reports_min: 2,
                ..config()
            },
        )
}

#[derive(Default)]
struct Seen {
    probes: Vec<(ProbeId, Address)>,
    tickets: Vec<Ticket>,
    /// Sessions reported, to know a report's session and its price.
    earned_this_block: BTreeMap<Address, BigUint>,
    earned_total_this_block: BigUint,
    tokens_this_block: BTreeMap<Address, u128>,
}

fn run_market(config: MarketConfig, steps: &[Step]) {
    let bid_max = config.bid_wei_per_token_max;
    let mut m = Market::with(config);
    for p in 0..3 {
        m.fund_wei(provider(p), WEI_PER_MOR);
    }
    let mut seen = Seen::default();
    for step in steps {
        let command = match *step {
            Step::Fund { user: u, balance } => {
                // Balances only rise, so that "used <= UserMax" stays an invariant.
                let balance = balance.max(m.engine.balance_wei(&user(u as u32)));
                let nonce = m.nonce(OPERATOR);
                Command::SetBalances {
                    operator: OPERATOR,
                    nonce,
                    entries: vec![(user(u as u32), balance)],
                }
            }
            Step::Register {
                provider: p,
                price,
                capacity,
            } => {
                let nonce = m.nonce(provider(p as u32));
                Command::RegisterProvider {
                    provider: provider(p as u32),
                    nonce,
                    endpoint: vec![p],
                    offers: vec![Market::offer(MODEL_A, price, capacity as u32)],
                }
            }
            Step::Rfc {
                user: u,
                tokens_max,
            } => {
                let nonce = m.nonce(user(u as u32));
                Command::SubmitRfc {
                    user: user(u as u32),
                    nonce,
                    model: MODEL_A,
                    tokens_max,
                    expires_at_ms: m.now + 60_000,
                }
            }
            Step::Answer { pick } => {
                let Some(&(probe, who)) = seen.probes.get(pick as usize % seen.probes.len().max(1))
                else {
                    continue;
                };
                let nonce = m.nonce(who);
                Command::ProbeAnswer {
                    provider: who,
                    nonce,
                    probe,
                }
            }
            Step::Report {
                pick,
                tokens,
                elapsed_ms,
                pass,
            } => {
                let Some(ticket) = seen.tickets.get(pick as usize % seen.tickets.len().max(1))
                else {
                    continue;
                };
                let tokens = tokens.min(ticket.tokens_max);
                let nonce = m.nonce(ticket.user);
                let outcome = if pass {
                    ReportOutcome::Pass
                } else {
                    ReportOutcome::Fail
                };
                Command::Report {
                    user: ticket.user,
                    nonce,
                    session: ticket.session,
                    elapsed_ms,
                    // R-REPORT-3 extremes: half the time to the first token, the
                    // prompt as large as the tokens (up to the bound).
                    ttft_ms: elapsed_ms / 2,
                    tokens,
                    prompt_tokens: tokens.min(1 << 24),
                    outcome,
                    report_digest: [7; 32],
                }
            }
            Step::Claim { provider: p } => {
                let nonce = m.nonce(provider(p as u32));
                Command::Claim {
                    provider: provider(p as u32),
                    nonce,
                    amount_wei: 0,
                }
            }
            Step::Wait { ms } => {
                m.now += ms as u64;
                Command::Tick
            }
        };
        let effects = m.apply(command.clone()); // checks every invariant
        check_step(&m, &mut seen, bid_max, &command, &effects);
    }
}

fn check_step(m: &Market, seen: &mut Seen, bid_max: u128, command: &Command, effects: &[Effect]) {
    for effect in effects {
        match effect {
            Effect::Probe {
                probe, provider, ..
            } => seen.probes.push((*probe, *provider)),
            Effect::SessionOpened { ticket } => {
                // R-MONEY-1: admitted only if TokenMax × the bid bound fits.
                assert!(big(ticket.tokens_max as u128) * big(bid_max) <= big(u128::MAX));
                assert!(ticket.price_wei_per_token <= bid_max);
                seen.tickets.push(ticket.clone())
            }
            Effect::ReportAccepted {
                session,
                reason,
                earned_wei,
                ..
            } => {
                let ticket = seen.tickets.iter().find(|t| t.session == *session).unwrap();
                let Command::Report { tokens, .. } = command else {
                    panic!("a report effect from another command")
                };
                let credited = matches!(
                    reason,
                    CreditReason::Earned | CreditReason::EarnedDespiteFail
                );
                let exact = big(*tokens as u128) * big(ticket.price_wei_per_token);
                if credited {
                    assert_eq!(big(*earned_wei), exact, "earned is exactly tokens × price");
                    *seen.earned_this_block.entry(ticket.provider).or_default() += exact.clone();
                    seen.earned_total_this_block += exact;
                    *seen.tokens_this_block.entry(ticket.provider).or_default() += *tokens as u128;
                } else {
                    assert_eq!(*earned_wei, 0);
                }
            }
            Effect::Rejected { error, .. } => match (error, command) {
                (
                    MarketError::CreditOverflow {
                        retry_after_ms,
                        sum,
                    },
                    Command::Report {
                        session, tokens, ..
                    },
                ) => {
                    // Refused only when a block sum truly overflows.
                    let ticket = seen.tickets.iter().find(|t| t.session == *session).unwrap();
                    let amount = big(*tokens as u128) * big(ticket.price_wei_per_token);
                    let provider_sum = seen
                        .earned_this_block
                        .get(&ticket.provider)
                        .cloned()
                        .unwrap_or_default()
                        + amount.clone();
                    let total = seen.earned_total_this_block.clone() + amount;
                    // R-OPS-4: the block's shortfall is at most its total.
                    let shortfall_worst =
                        big(m.engine.ledger().shortfall_total_wei) + total.clone();
                    let provider_tokens = seen
                        .tokens_this_block
                        .get(&ticket.provider)
                        .copied()
                        .unwrap_or(0)
                        + *tokens as u128;
                    assert!(
                        provider_sum > big(u128::MAX)
                            || total > big(u128::MAX)
                            || provider_tokens > u64::MAX as u128
                            || shortfall_worst > big(u128::MAX),
                        "credit_overflow for a credit that fits"
                    );
                    assert_eq!(
                        *sum == CreditSum::LedgerShortfall,
                        provider_sum <= big(u128::MAX)
                            && total <= big(u128::MAX)
                            && shortfall_worst > big(u128::MAX),
                        "the refusal names the sum that overflows: {sum:?}"
                    );
                    assert!(*retry_after_ms as u64 <= BLOCK_MS);
                }
                (MarketError::ArithmeticOverflow, _) => {
                    panic!("a credit overflowed past the admission check: {command:?}")
                }
                (
                    MarketError::BidAboveMax {
                        bid_wei_per_token_max,
                    },
                    _,
                ) => {
                    assert_eq!(*bid_wei_per_token_max, bid_max)
                }
                (
                    MarketError::CreditUnrepresentable { tokens_max_fit },
                    Command::SubmitRfc { tokens_max, .. },
                ) => {
                    assert!(big(*tokens_max as u128) * big(bid_max) > big(u128::MAX));
                    assert!(big(*tokens_max_fit as u128) * big(bid_max) <= big(u128::MAX));
                }
                _ => {}
            },
            Effect::BatchSealed { batch, applied } => {
                let earned: BigUint = batch.totals.iter().map(|t| big(t.earned_wei)).sum();
                assert_eq!(
                    earned, seen.earned_total_this_block,
                    "batch = the block's credits"
                );
                assert_eq!(
                    earned,
                    big(applied.credited_wei) + big(applied.shortfall_wei)
                );
                let credited: BigUint = batch.totals.iter().map(|t| big(t.credited_wei)).sum();
                assert_eq!(credited, big(applied.credited_wei));
                for totals in &batch.totals {
                    assert!(totals.credited_wei <= totals.earned_wei);
                    assert_eq!(
                        big(totals.earned_wei),
                        seen.earned_this_block
                            .remove(&totals.provider)
                            .unwrap_or_default()
                    );
                    assert_eq!(
                        Some(totals.tokens as u128),
                        seen.tokens_this_block.remove(&totals.provider)
                    );
                }
                assert!(seen.earned_this_block.is_empty() && seen.tokens_this_block.is_empty());
                seen.earned_total_this_block = BigUint::default();
            }
            _ => {}
        }
    }
    // R-CONTRACT-2 recomputed in big integers: a wrap cannot hide here.
    let ledger = m.engine.ledger();
    let outgoing = big(ledger.burned_wei) + big(ledger.paid_wei) + big(ledger.owed_total_wei);
    assert!(outgoing <= big(ledger.emitted_wei), "insolvent: {ledger:?}");
    let owed: BigUint = ledger.owed_wei.values().map(|&v| big(v)).sum();
    assert_eq!(owed, big(ledger.owed_total_wei));
    assert!(ledger.solvency().is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn r_money_1_extreme_values_keep_every_invariant(
        config in market_config(),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        run_market(config, &steps);
    }
}

/// The issue's cases, deterministic: two 2^127 credits in one block, one provider
/// with two, and a u128::MAX bid with TokenMax 2.
#[test]
fn r_money_1_issue_cases_at_engine_level() {
    let market = MarketConfig {
        bid_wei_per_token_max: u128::MAX,
        ..config()
    };
    let steps = [
        Step::Fund {
            user: 0,
            balance: 500 * WEI_PER_MOR,
        },
        Step::Fund {
            user: 1,
            balance: 500 * WEI_PER_MOR,
        },
        Step::Register {
            provider: 0,
            price: 1 << 127,
            capacity: 2,
        },
        Step::Register {
            provider: 1,
            price: 1 << 127,
            capacity: 1,
        },
        Step::Rfc {
            user: 0,
            tokens_max: 1,
        },
        Step::Answer { pick: 0 },
        Step::Rfc {
            user: 1,
            tokens_max: 1,
        },
        Step::Answer { pick: 1 },
        Step::Rfc {
            user: 1,
            tokens_max: 1,
        },
        Step::Answer { pick: 2 },
        Step::Report {
            pick: 0,
            tokens: 1,
            elapsed_ms: 1,
            pass: true,
        },
        Step::Report {
            pick: 1,
            tokens: 1,
            elapsed_ms: 1,
            pass: true,
        },
        Step::Report {
            pick: 2,
            tokens: 1,
            elapsed_ms: 1,
            pass: true,
        },
        Step::Wait { ms: 12_000 },
        Step::Report {
            pick: 1,
            tokens: 1,
            elapsed_ms: 1,
            pass: true,
        },
        Step::Wait { ms: 12_000 },
        Step::Register {
            provider: 2,
            price: u128::MAX,
            capacity: 1,
        },
        Step::Rfc {
            user: 0,
            tokens_max: 2,
        },
        Step::Wait { ms: 12_000 },
    ];
    run_market(market, &steps);
    let mut m = Market::with(MarketConfig {
        bid_wei_per_token_max: u128::MAX,
        ..config()
    });
    m.fund(user(1), 500);
    m.fund(provider(1), 1);
    m.register(provider(1), vec![Market::offer(MODEL_A, u128::MAX, 1)]);
    assert_eq!(
        rejection_in(&m.rfc(user(1), MODEL_A, 2)),
        Some(MarketError::CreditUnrepresentable { tokens_max_fit: 1 })
    );
    let t = m.open_session(user(1), MODEL_A, 1);
    let effects = m.report(user(1), t.session, 1, 1, true);
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::ReportAccepted { earned_wei, .. } if *earned_wei == u128::MAX
    )));
}
