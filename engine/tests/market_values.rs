//! Issue 13 at engine level, case by case: priority after a withdrawal (R-MATCH-1),
//! parameter sets that stop the market (R-CONTRACT-6), the bid bound in SetParams
//! (R-MONEY-1), the balance snapshot command (R-QUOTA-6) and the pre-check effect.

mod common;
use common::*;
use yellowstone_engine::*;

fn withdraw(m: &mut Market, who: Address) -> Vec<Effect> {
    let nonce = m.nonce(who);
    m.apply(Command::WithdrawBid {
        provider: who,
        nonce,
        model: MODEL_A,
    })
}

fn bid(m: &mut Market, who: Address, price: u128) -> Vec<Effect> {
    let nonce = m.nonce(who);
    m.apply(Command::UpdateBid {
        provider: who,
        nonce,
        model: MODEL_A,
        price_wei_per_token: price,
        capacity: 1,
    })
}

#[test]
fn r_match_1_withdrawal_then_new_bid_is_a_new_order() {
    let mut m = Market::new();
    m.fund(user(1), 500);
    m.fund(provider(1), 1);
    m.fund(provider(2), 1);
    m.register(provider(1), vec![Market::offer(MODEL_A, 10, 1)]);
    withdraw(&mut m, provider(1));
    m.register(provider(2), vec![Market::offer(MODEL_A, 10, 1)]);
    bid(&mut m, provider(1), 10); // same price, after a withdrawal: a new time
    let t = m.open_session(user(1), MODEL_A, 10);
    assert_eq!(t.provider, provider(2), "bid while provider 1 was away");

    // Bidding again through a registration after a withdrawal: a new time too.
    let mut m = Market::new();
    m.fund(user(1), 500);
    m.fund(provider(1), 1);
    m.fund(provider(2), 1);
    m.register(provider(1), vec![Market::offer(MODEL_A, 10, 1)]);
    withdraw(&mut m, provider(1));
    m.register(provider(2), vec![Market::offer(MODEL_A, 10, 1)]);
    m.register(provider(1), vec![Market::offer(MODEL_A, 10, 1)]);
    let t = m.open_session(user(1), MODEL_A, 10);
    assert_eq!(t.provider, provider(2));
}

#[test]
fn r_match_1_what_is_not_a_withdrawal_keeps_the_time() {
    let mut m = Market::new();
    m.fund(user(1), 500);
    m.fund(provider(1), 1);
    m.fund(provider(2), 1);
    m.register(provider(1), vec![Market::offer(MODEL_A, 10, 1)]);
    m.register(provider(2), vec![Market::offer(MODEL_A, 10, 1)]);
    // Re-registering the same offer (a reconnect), an unchanged bid, and being
    // unreachable then announcing again: none of these is a new order.
    m.register(provider(1), vec![Market::offer(MODEL_A, 10, 1)]);
    bid(&mut m, provider(1), 10);
    m.apply(Command::ProviderDisconnected {
        provider: provider(1),
    });
    let nonce = m.nonce(provider(1));
    m.apply(Command::ProviderAnnounce {
        provider: provider(1),
        nonce,
    });
    let t = m.open_session(user(1), MODEL_A, 10);
    assert_eq!(t.provider, provider(1), "provider 1 kept its time");
}

#[test]
fn r_contract_6_burn_with_pool_percent_is_refused_with_the_reason() {
    let burn_pool = MarketConfig {
        unused_budget: UnusedBudget::Burn,
        budget_policy: BudgetPolicy::PoolPercent,
        ..config()
    };
    let reason = burn_pool.validate().unwrap_err();
    assert!(
        reason.contains("burn") && reason.contains("pool-percent"),
        "{reason}"
    );

    let mut m = Market::with(MarketConfig {
        budget_policy: BudgetPolicy::PoolPercent,
        ..config()
    });
    let nonce = m.nonce(OPERATOR);
    let effects = m.apply(Command::SetParams {
        operator: OPERATOR,
        nonce,
        params: vec![(ParamId::UnusedBudget as u16, 1)],
    });
    match rejection_in(&effects) {
        Some(error @ MarketError::InvalidParamSet { .. }) => {
            assert_eq!(error.code(), 0x021E);
            assert!(error.to_string().contains("pool-percent"));
        }
        other => panic!("expected invalid_param_set, got {other:?}"),
    }
    assert_eq!(
        m.engine.config().unused_budget,
        UnusedBudget::Carry,
        "unchanged"
    );
}

#[test]
fn r_money_1_bid_bound_in_set_params_never_strands_a_live_offer() {
    let mut m = Market::new();
    m.fund(provider(1), 1);
    m.register(provider(1), vec![Market::offer(MODEL_A, 1_000, 1)]);
    let nonce = m.nonce(OPERATOR);
    let effects = m.apply(Command::SetParams {
        operator: OPERATOR,
        nonce,
        params: vec![(ParamId::BidWeiPerTokenMax as u16, 999)],
    });
    assert!(matches!(
        rejection_in(&effects),
        Some(MarketError::InvalidParamSet { .. })
    ));
    let nonce = m.nonce(OPERATOR);
    let effects = m.apply(Command::SetParams {
        operator: OPERATOR,
        nonce,
        params: vec![(ParamId::BidWeiPerTokenMax as u16, 1_000)],
    });
    assert_eq!(rejection_in(&effects), None);
    assert_eq!(m.engine.config().bid_wei_per_token_max, 1_000);
    assert_eq!(
        rejection_in(&bid(&mut m, provider(1), 1_001)),
        Some(MarketError::BidAboveMax {
            bid_wei_per_token_max: 1_000
        })
    );
    let nonce = m.nonce(OPERATOR);
    let effects = m.apply(Command::SetParams {
        operator: OPERATOR,
        nonce,
        params: vec![(ParamId::BidWeiPerTokenMax as u16, 0)],
    });
    assert_eq!(
        rejection_in(&effects),
        Some(MarketError::InvalidParam {
            param: ParamId::BidWeiPerTokenMax as u16
        })
    );
}

#[test]
fn r_quota_6_snapshot_command_spends_no_operator_nonce_and_is_recorded() {
    let mut m = Market::new();
    let effects = m.apply(Command::LoadBalanceSnapshot {
        file_blake3: [9; 32],
        entries: vec![(user(1), 5 * WEI_PER_MOR)],
    });
    assert_eq!(
        effects,
        vec![Effect::BalancesSet {
            entries: vec![(user(1), 5 * WEI_PER_MOR)]
        }]
    );
    assert_eq!(m.engine.balance_snapshot_blake3(), Some([9; 32]));
    assert_eq!(
        m.engine.nonce_last(&OPERATOR),
        None,
        "no operator nonce spent"
    );
    m.fund(user(1), 0); // the operator's own nonce 1 is still free
    assert_eq!(m.engine.balance_wei(&user(1)), 0);
    // The hash survives a snapshot and restore (it is market state).
    let restored = Engine::restore(&m.engine.snapshot()).unwrap();
    assert_eq!(restored.balance_snapshot_blake3(), Some([9; 32]));
}

#[test]
fn r_quota_6_a_refused_balance_update_reports_nothing_applied() {
    let mut m = Market::new();
    m.fund(user(1), 500);
    let effects = m.apply(Command::SetBalances {
        operator: OPERATOR,
        nonce: 1, // replayed
        entries: vec![(user(1), 0)],
    });
    assert_eq!(
        effects,
        vec![Effect::Rejected {
            to: OPERATOR,
            nonce: 1,
            error: MarketError::Replay { nonce_last: 1 }
        }]
    );
    let effects = m.apply(Command::SetBalances {
        operator: user(2),
        nonce: 1,
        entries: vec![(user(1), 0)],
    });
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::BalancesSet { .. })));
    assert_eq!(m.engine.balance_wei(&user(1)), 500 * WEI_PER_MOR);
}
