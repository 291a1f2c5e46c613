//! The market's figures (R-OPS-3): MaxT, access rate, the day's budget, the Compute
//! Contract's pool, emitted, paid, owed, the last block's credit and shortfall, and per
//! model the queue depth, live and suspended providers and the best live bid.
//!
//! Computed from the engine's state alone (pure: no IO, no clock; `now` is the time of
//! the last command), so the router can publish them between bursts and answer the
//! market state query from them. Cost: O(models + providers × offers), which is why
//! the provider part (`provider_figures`) is split from the rest (`market_figures_core`,
//! O(models)) so that the router can run it at a bounded share of its time.

use crate::command::ParamId;
use crate::config::{BudgetPolicy, FailPolicy, MarketConfig, UnusedBudget};
use crate::engine::Engine;
use crate::types::{ModelId, WEI_PER_MOR};
use ethnum::U256;

/// One model's side of the market.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelFigures {
    /// The model's id.
    pub model: ModelId,
    /// RFCs queued (R-RFC-2).
    pub queue_depth: u64,
    /// Providers with an active offer for the model that can be matched now or once a
    /// session frees: reachable, not suspended, funded (R-MATCH-1, R-PROV-2).
    pub providers_live: u64,
    /// Providers with an active offer for the model, suspended now (R-PERF-4).
    pub providers_suspended: u64,
    /// The lowest price per token among the live providers' offers, wei; `None`
    /// when no provider is live.
    pub best_bid_wei_per_token: Option<u128>,
    /// Offers in the book now (live with a free session slot).
    pub offers_available: u64,
}

/// The whole market at one instant. Amounts in MOR wei, tokens as counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MarketFigures {
    /// Unix ms of the last command the engine applied.
    pub now_ms: u64,
    /// The open block (R-TIME-1) and its day.
    pub block: u64,
    /// The current day (7,200 blocks).
    pub day: u64,
    /// R-QUOTA-1: MaxT, tokens per day the day's budget buys.
    pub max_tokens_per_day: u128,
    /// R-QUOTA-2: tokens per day per whole MOR held (MaxT × 10^18 / S, rounded down).
    pub access_rate_tokens_per_mor: u128,
    /// The budget B in force today (R-CONTRACT-5).
    pub budget_wei_today: u128,
    /// The Compute Contract (R-CONTRACT-1/2): received, paid, owed, burned, credited
    /// and fallen short since genesis; the pool is received and neither paid, owed
    /// nor burned.
    pub emitted_wei: u128,
    /// Paid to providers on claim since genesis.
    pub paid_wei: u128,
    /// Owed to providers, not yet claimed.
    pub owed_wei: u128,
    /// Unused budget burned since genesis (R-CONTRACT-3).
    pub burned_wei: u128,
    /// Received and neither paid, owed nor burned.
    pub pool_wei: u128,
    /// Credited by the ledger since genesis.
    pub credited_wei: u128,
    /// Earned but not credited under the daily cap since genesis (R-CONTRACT-2).
    pub shortfall_wei: u128,
    /// Today's spend cap and what was spent of it.
    pub day_cap_wei: u128,
    /// Credited today.
    pub day_spent_wei: u128,
    /// The last sealed block's batch: its number, credited and shortfall.
    pub last_batch_block: Option<u64>,
    /// What the last sealed batch credited.
    pub last_batch_credited_wei: u128,
    /// The last sealed batch's shortfall under the cap.
    pub last_batch_shortfall_wei: u128,
    /// Sessions open now.
    pub sessions_open: u64,
    /// R-PROV-2: providers holding a place (counted by `providers_max`), and the
    /// unfunded registrations kept apart (at most `unfunded_registrations_max`).
    pub providers: u64,
    /// Unfunded registrations kept apart (R-PROV-2).
    pub unfunded_registrations: u64,
    /// Every run-time parameter (R-OPS-3) with its value in force, in id order.
    pub params: Vec<(ParamId, u128)>,
    /// One entry per catalog model, in catalog order.
    pub models: Vec<ModelFigures>,
}

/// The value in force of a run-time parameter (choices as their index).
pub fn param_value(config: &MarketConfig, param: ParamId) -> u128 {
    match param {
        ParamId::ComputeBudgetWeiPerDay => config.compute_budget_wei_per_day,
        ParamId::TokenPriceWeiPer1000 => config.token_price_wei_per_1000,
        ParamId::MorSupplyWei => config.mor_supply_wei,
        ParamId::SpeedTolerancePercent => config.speed_tolerance_percent.into(),
        ParamId::SpeedWindowReports => config.speed_window_reports.into(),
        ParamId::SpeedReportsMin => config.speed_reports_min.into(),
        ParamId::FailPolicy => match config.fail_policy {
            FailPolicy::NoCredit => 0,
            FailPolicy::BalanceWeighted => 1,
        },
        ParamId::PenaltyPointsSuspend => config.penalty_points_suspend.into(),
        ParamId::SuspensionMs => config.suspension_ms.into(),
        ParamId::ProbeTimeoutMs => config.probe_timeout_ms.into(),
        ParamId::UnusedBudget => match config.unused_budget {
            UnusedBudget::Carry => 0,
            UnusedBudget::Burn => 1,
        },
        ParamId::BudgetPolicy => match config.budget_policy {
            BudgetPolicy::Fixed => 0,
            BudgetPolicy::PoolPercent => 1,
        },
        ParamId::BidWeiPerTokenMax => config.bid_wei_per_token_max,
    }
}

/// One model's providers, from the pass over every provider's offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelProviders {
    /// Providers with an active offer, reachable, not suspended and funded.
    pub live: u64,
    /// Providers with an active offer, suspended now (R-PERF-4).
    pub suspended: u64,
    /// The lowest live bid, wei per token; None without a live provider.
    pub best_bid_wei_per_token: Option<u128>,
}

impl MarketFigures {
    /// Sets each model's provider figures from `providers` (catalog order, as
    /// `Engine::provider_figures` returns them).
    pub fn set_providers(&mut self, providers: &[ModelProviders]) {
        debug_assert!(providers.is_empty() || providers.len() == self.models.len());
        for (figures, counts) in self.models.iter_mut().zip(providers) {
            figures.providers_live = counts.live;
            figures.providers_suspended = counts.suspended;
            figures.best_bid_wei_per_token = counts.best_bid_wei_per_token;
        }
    }
}

impl Engine {
    /// The market's figures now (R-OPS-3): `market_figures_core` with
    /// `provider_figures` merged in. Pure; O(models + providers × offers).
    pub fn market_figures(&self) -> MarketFigures {
        let mut figures = self.market_figures_core();
        figures.set_providers(&self.provider_figures());
        for model in &figures.models {
            debug_assert!(model.offers_available <= model.providers_live);
        }
        figures
    }

    /// Everything but the per-model provider figures (left 0 / `None`): the ledger,
    /// MaxT, access rate, budget, parameters, queue depths and available offers.
    /// O(models): cheap enough to run after any burst.
    pub fn market_figures_core(&self) -> MarketFigures {
        let state = &self.state;
        let ledger = &state.ledger;
        // MaxT is exact (R-QUOTA-1, below 2^138); this display figure is capped at
        // u128::MAX, and the access rate is computed from the exact value.
        let max_t = self.max_tokens_per_day();
        let max_tokens_per_day = u128::try_from(max_t).unwrap_or(u128::MAX);
        let supply = state.config.mor_supply_wei;
        debug_assert!(supply > 0, "validated config");
        let access_rate = max_t * U256::from(WEI_PER_MOR) / U256::from(supply.max(1));
        let models = state
            .models
            .iter()
            .map(|m| ModelFigures {
                model: m.spec.id,
                queue_depth: m.queue.len() as u64,
                offers_available: m.book.len() as u64,
                ..ModelFigures::default()
            })
            .collect();
        MarketFigures {
            now_ms: state.now_ms,
            block: state.block,
            day: state.day(),
            max_tokens_per_day,
            access_rate_tokens_per_mor: u128::try_from(access_rate).unwrap_or(u128::MAX),
            budget_wei_today: state.budget_wei_today,
            emitted_wei: ledger.emitted_wei,
            paid_wei: ledger.paid_wei,
            owed_wei: ledger.owed_total_wei,
            burned_wei: ledger.burned_wei,
            pool_wei: ledger.pool_wei(),
            credited_wei: ledger.credited_total_wei,
            shortfall_wei: ledger.shortfall_total_wei,
            day_cap_wei: ledger.day_cap_wei,
            day_spent_wei: ledger.day_spent_wei,
            last_batch_block: ledger.last_block,
            last_batch_credited_wei: ledger.last_batch_credited_wei,
            last_batch_shortfall_wei: ledger.last_batch_shortfall_wei,
            sessions_open: u64::from(state.sessions.len()),
            providers: state.providers.len() as u64,
            unfunded_registrations: state.unfunded.len() as u64,
            params: ParamId::ALL
                .into_iter()
                .map(|p| (p, param_value(&state.config, p)))
                .collect(),
            models,
        }
    }

    /// Per model (catalog order): providers with an active offer that are live
    /// (reachable, not suspended, funded) or suspended, and the lowest live bid.
    /// One pass over every provider's offers: O(providers × offers), about 1.8 ms at
    /// 10,000 providers with 10 offers each (benches/benches/market_figures.rs), so
    /// the router runs it at a bounded share of the engine thread.
    pub fn provider_figures(&self) -> Vec<ModelProviders> {
        let state = &self.state;
        let mut models = vec![ModelProviders::default(); state.models.len()];
        let now = state.now_ms;
        for provider in &state.providers {
            let funded = state.accounts[provider.account as usize].balance_wei > 0;
            let suspended = provider.suspended_until_ms > now;
            let live = provider.reachable && !suspended && funded;
            for offer in provider.offers.iter().filter(|o| o.active) {
                let figures = &mut models[offer.model as usize];
                if suspended {
                    figures.suspended += 1;
                }
                if live {
                    figures.live += 1;
                    let price = offer.price_wei_per_token;
                    figures.best_bid_wei_per_token = Some(
                        figures
                            .best_bid_wei_per_token
                            .map_or(price, |best| best.min(price)),
                    );
                }
            }
        }
        models
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, OfferSpec};
    use crate::config::ModelSpec;
    use crate::types::{Address, Unit};

    const OPERATOR: Address = Address([9; 20]);

    fn engine() -> Engine {
        Engine::new(MarketConfig {
            genesis_ms: 1_000_000,
            operator: OPERATOR,
            models: vec![
                ModelSpec {
                    id: 1,
                    weights_hash: [1; 32],
                    unit: Unit::Token,
                },
                ModelSpec {
                    id: 2,
                    weights_hash: [2; 32],
                    unit: Unit::Token,
                },
            ],
            ..MarketConfig::default()
        })
    }

    fn register(engine: &mut Engine, who: u8, nonce: u64, price: u128, now: u64) {
        let mut effects = Vec::new();
        engine.apply(
            &Command::RegisterProvider {
                provider: Address([who; 20]),
                nonce,
                endpoint: b"h:1".to_vec(),
                offers: vec![OfferSpec {
                    model: 1,
                    unit: 0,
                    weights_hash: [1; 32],
                    price_wei_per_token: price,
                    capacity: 2,
                }],
            },
            now,
            &mut effects,
        );
    }

    #[test]
    fn r_ops_3_figures_follow_the_seed_vector_and_the_books() {
        let mut engine = engine();
        let figures = engine.market_figures();
        // Seed vector (section 4): MaxT 30e9, AccessRate 3,000 T per MOR.
        assert_eq!(figures.max_tokens_per_day, 30_000_000_000);
        assert_eq!(figures.access_rate_tokens_per_mor, 3_000);
        assert_eq!(figures.budget_wei_today, 3_000 * WEI_PER_MOR);
        assert_eq!(figures.emitted_wei, 3_456 * WEI_PER_MOR);
        assert_eq!(figures.pool_wei, 3_456 * WEI_PER_MOR);
        assert_eq!(figures.models.len(), 2);
        assert_eq!(figures.models[0].best_bid_wei_per_token, None);
        assert_eq!(figures.params.len(), ParamId::ALL.len());

        let mut effects = Vec::new();
        engine.apply(
            &Command::SetBalances {
                operator: OPERATOR,
                nonce: 1,
                entries: vec![(Address([1; 20]), WEI_PER_MOR), (Address([2; 20]), 1)],
            },
            1_000_001,
            &mut effects,
        );
        register(&mut engine, 1, 1, 7, 1_000_002);
        register(&mut engine, 2, 1, 5, 1_000_003);
        register(&mut engine, 3, 1, 1, 1_000_004); // unfunded: not live
        let figures = engine.market_figures();
        let model = &figures.models[0];
        assert_eq!(model.providers_live, 2);
        assert_eq!(model.best_bid_wei_per_token, Some(5));
        assert_eq!(model.offers_available, 2);
        assert_eq!(figures.models[1].providers_live, 0);

        // A parameter change shows at once, and MaxT follows it.
        engine.apply(
            &Command::SetParams {
                operator: OPERATOR,
                nonce: 2,
                params: vec![(ParamId::ComputeBudgetWeiPerDay as u16, 1_500 * WEI_PER_MOR)],
            },
            1_000_005,
            &mut effects,
        );
        let figures = engine.market_figures();
        assert_eq!(figures.max_tokens_per_day, 15_000_000_000);
        assert_eq!(
            figures.params[0],
            (ParamId::ComputeBudgetWeiPerDay, 1_500 * WEI_PER_MOR)
        );
        // Sealing a block records its batch.
        engine.apply(&Command::Tick, 1_012_000, &mut effects);
        let figures = engine.market_figures();
        assert_eq!(figures.last_batch_block, Some(0));
        assert_eq!(figures.block, 1);
    }

    #[test]
    fn r_ops_3_params_by_name_round_trip() {
        for param in ParamId::ALL {
            assert_eq!(ParamId::from_name(param.name()), Some(param));
            assert_eq!(ParamId::from_u16(param as u16), Some(param));
            let value = param_value(&MarketConfig::default(), param);
            assert_eq!(param.parse_value(&param.format_value(value)), Ok(value));
        }
        assert_eq!(ParamId::FailPolicy.parse_value("balance-weighted"), Ok(1));
        assert!(ParamId::FailPolicy.parse_value("sometimes").is_err());
        assert!(ParamId::FailPolicy.parse_value("2").is_err());
        assert!(ParamId::SuspensionMs.parse_value("-1").is_err());
        assert_eq!(ParamId::from_name("nonsense"), None);
    }
}
