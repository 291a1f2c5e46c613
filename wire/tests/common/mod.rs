//! Sample messages shared by the wire tests (the round-trip samples and the golden
//! vectors use the same market state, so their bytes agree).

use yellowstone_wire::*;

/// A market-state answer with every field set to a distinct, non-default value.
pub fn sample_market_state() -> MarketState {
    MarketState {
        query_id: 7,
        now_ms: 1_767_225_600_000,
        block: 10,
        day: 0,
        max_tokens_per_day: 30_000_000_000,
        access_rate_tokens_per_mor: 3_000,
        budget_wei_today: 3_000_000_000_000_000_000_000,
        emitted_wei: 3_456_000_000_000_000_000_000,
        paid_wei: 100,
        owed_wei: 200,
        burned_wei: 0,
        pool_wei: 3_455_999_999_999_999_999_700,
        credited_wei: 300,
        shortfall_wei: 1,
        day_cap_wei: 3_456_000_000_000_000_000_000,
        day_spent_wei: 300,
        batch_sealed: true,
        last_batch_block: 9,
        last_batch_credited_wei: 300,
        last_batch_shortfall_wei: 1,
        sessions_open: 2,
        params: vec![ParamEntry {
            param_id: 4,
            value: 50,
        }],
        models: vec![MarketModel {
            model_id: 1,
            queue_depth: 3,
            providers_live: 2,
            providers_suspended: 1,
            offers_available: 1,
            best_bid_wei_per_token: 1_000_000_000_000,
        }],
    }
}
