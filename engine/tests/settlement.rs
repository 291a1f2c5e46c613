//! R-CHAIN-1 in the engine: one settlement record per epoch, after the epoch's last
//! block (and after the day rolled, so that the bootstrap bonus is in), with the
//! keccak Merkle root over every provider's cumulative credit.

mod common;

use common::*;
use yellowstone_engine::settlement::{leaves, merkle_root, SettlementRecord};
use yellowstone_engine::*;

fn settlements_in(effects: &[Effect]) -> Vec<SettlementRecord> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SettlementSealed { settlement, .. } => Some(settlement.clone()),
            _ => None,
        })
        .collect()
}

fn market() -> Market {
    let mut m = Market::with(MarketConfig {
        settlement_epoch_blocks: 3_600,
        settlements_kept_max: 3,
        bootstrap_providers_max: 1,
        ..config()
    });
    m.fund(user(1), 500);
    m.fund(provider(1), 1);
    m.fund(provider(2), 1);
    m.register(provider(1), vec![Market::offer(MODEL_A, 10, 1)]);
    m.register(provider(2), vec![Market::offer(MODEL_A, 20, 1)]);
    m
}

#[test]
fn r_chain_1_an_epoch_settles_what_it_credited_with_the_cumulative_root() {
    let mut m = market();
    let t1 = m.open_session(user(1), MODEL_A, 100);
    let t2 = m.open_session(user(1), MODEL_A, 100);
    m.report(user(1), t1.session, 10, 100, true);
    m.report(user(1), t2.session, 10, 100, true);
    // Nothing before the epoch's last block is sealed.
    assert!(settlements_in(&m.advance(3_599 * BLOCK_MS - (m.now - GENESIS_MS))).is_empty());
    let sealed = settlements_in(&m.advance(BLOCK_MS));
    assert_eq!(sealed.len(), 1);
    let s0 = &sealed[0];
    let cumulative = vec![(provider(1), 1_000), (provider(2), 2_000)];
    assert_eq!(
        (s0.epoch, s0.day, s0.first_block, s0.last_block),
        (0, 0, 0, 3_599)
    );
    assert_eq!((s0.credited_wei, s0.bootstrap_wei), (3_000, 0));
    assert_eq!(s0.credited_cumulative_wei, 3_000);
    assert_eq!(s0.merkle_root, merkle_root(&leaves(&cumulative)));
    assert_eq!(m.engine.settlement().cumulative, cumulative);

    // A router-side claim pays, but the cumulative credit does not go down.
    let nonce = m.nonce(provider(1));
    m.apply(Command::Claim {
        provider: provider(1),
        nonce,
        amount_wei: 0,
    });
    // The day's last epoch carries the bootstrap bonus of the first provider.
    let sealed = settlements_in(&m.advance(3_600 * BLOCK_MS));
    assert_eq!(sealed.len(), 1);
    let s1 = &sealed[0];
    let bonus = 14_400 * WEI_PER_MOR * 240 / 10_000;
    assert_eq!((s1.epoch, s1.day), (1, 0));
    assert_eq!((s1.credited_wei, s1.bootstrap_wei), (0, bonus));
    let cumulative = vec![(provider(1), 1_000 + bonus), (provider(2), 2_000)];
    assert_eq!(s1.merkle_root, merkle_root(&leaves(&cumulative)));
    assert_eq!(m.engine.ledger().owed(&provider(1)), bonus, "1,000 claimed");
    // Empty epochs still settle (gaps are detectable); the history is bounded.
    let sealed = settlements_in(&m.advance(2 * 3_600 * BLOCK_MS));
    assert_eq!(
        sealed.iter().map(|s| s.epoch).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(sealed[1].merkle_root, s1.merkle_root);
    let state = m.engine.settlement();
    assert_eq!(state.history.len(), 3);
    assert_eq!(state.record(0), None, "older than the history kept");
    assert_eq!(state.record(1), Some(s1));
    assert_eq!(state.record(4), None, "not sealed yet");
    m.engine.check_invariants();
    // Snapshots carry the settlement state.
    let restored = Engine::restore(&m.engine.snapshot()).expect("restore");
    assert_eq!(restored.settlement(), m.engine.settlement());
    assert_eq!(restored.state_hash(), m.engine.state_hash());
}

#[test]
fn r_chain_1_epochs_must_divide_a_day() {
    for (blocks, ok) in [
        (0, false),
        (7, false),
        (1, true),
        (300, true),
        (7_200, true),
        (14_400, false),
    ] {
        let config = MarketConfig {
            settlement_epoch_blocks: blocks,
            ..config()
        };
        assert_eq!(config.validate().is_ok(), ok, "{blocks}");
        if !ok {
            assert!(config
                .validate()
                .unwrap_err()
                .contains("settlement_epoch_blocks"));
        }
    }
}
