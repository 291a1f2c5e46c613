//! Section 7: sealing blocks into credit batches (R-BLOCK-1/2) applied to the
//! ledger in the same step, and day rollovers: emission, bootstrap bonus, burn, and
//! the next day's budget and MaxT (R-CONTRACT-1..5, R-QUOTA-4).

use crate::command::{CreditBatch, Effect};
use crate::config::{BudgetPolicy, UnusedBudget};
use crate::engine::Engine;
use crate::quota::mul_div;

impl Engine {
    /// R-BLOCK-2: one batch per block, empty when nothing was credited.
    pub(crate) fn seal_block(&mut self, effects: &mut Vec<Effect>) {
        let mut totals = self.state.block_totals.take_values();
        let earned_total_wei = std::mem::take(&mut self.state.block_earned_wei);
        self.state.block_tokens = 0;
        totals.sort_unstable_by_key(|t| t.provider);
        let (merkle_root, receipts) = self.state.merkle.take_root();
        debug_assert_eq!(
            receipts,
            totals.iter().map(|t| t.sessions as u64).sum::<u64>()
        );
        let mut batch = CreditBatch {
            block: self.state.block,
            totals,
            merkle_root,
            receipts,
        };
        debug_assert_eq!(batch.earned_total_wei(), Ok(earned_total_wei));
        let applied = self
            .state
            .ledger
            .apply_batch(&batch)
            .expect("the engine seals blocks in order, each total checked as it grew")
            .expect("a block is sealed once");
        // R-BLOCK-2: each provider's total says what it earned and what was credited.
        debug_assert_eq!(applied.provider_credited_wei.len(), batch.totals.len());
        for (totals, &credited) in batch.totals.iter_mut().zip(&applied.provider_credited_wei) {
            debug_assert!(credited <= totals.earned_wei);
            totals.credited_wei = credited;
        }
        self.state.counters.batches += 1;
        effects.push(Effect::BatchSealed { batch, applied });
    }

    /// Called after the last block of a day was sealed and `block` moved to the
    /// first block of the next day.
    pub(crate) fn roll_day(&mut self) {
        let config = &self.state.config;
        let ending_day = self.state.day() - 1;
        let bonus = if ending_day < config.bootstrap_days {
            mul_div(
                config.emission_wei_per_day,
                config.bootstrap_share_bps as u128,
                10_000,
            )
            .unwrap_or(0)
        } else {
            0
        };
        let burn = config.unused_budget == UnusedBudget::Burn;
        self.state.ledger.end_day(burn, bonus);
        // R-CONTRACT-5: the budget for the new day.
        let budget = match self.state.config.budget_policy {
            BudgetPolicy::Fixed => self.state.config.compute_budget_wei_per_day,
            BudgetPolicy::PoolPercent => self.state.ledger.contract_balance_wei() / 100,
        };
        self.state.budget_wei_today = budget;
        let emission = self.state.config.compute_emission_wei_per_day();
        let day = self.state.day();
        self.state
            .ledger
            .start_day(day, emission, self.state.config.pool_daily_spend_bps);
        self.refresh_quota_rate();
    }
}
