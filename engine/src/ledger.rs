//! The Compute Contract ledger (R-CONTRACT-1..5): receives the compute share of the
//! emission each day, applies credit batches once and in order, tracks what each
//! provider is owed, pays claims, and never spends what it did not receive.
//!
//! Solvency (R-CONTRACT-2): `paid + owed <= emitted - burned` at every step, checked
//! by `check_solvency`. The daily spend cap is the day's compute emission plus
//! `pool_daily_spend_bps` of the pool unused at the day's start; a batch above what is
//! left is credited pro rata and the shortfall recorded.

use crate::command::{BatchApplied, CreditBatch};
use crate::error::MarketError;
use crate::money;
use crate::types::Address;
use bincode::{Decode, Encode};
use std::collections::{BTreeMap, BTreeSet};

/// Why a credit batch was not applied to the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerError {
    /// A batch skipped a block number (batches must come in order).
    OutOfOrder {
        /// The block the ledger expected next.
        expected: u64,
        /// The batch's block.
        got: u64,
    },
    /// R-MONEY-1: the batch's earned total does not fit u128 (never from the engine,
    /// which refuses such credits when they are reported).
    Overflow,
}

/// The Compute Contract's ledger as the engine keeps it (R-CONTRACT-1..4): every
/// amount in MOR wei, cumulative since genesis unless named per day or per batch.
/// `check_solvency` holds after every command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Ledger {
    /// Compute emission received by the contract.
    pub emitted_wei: u128,
    /// Paid to providers on claim.
    pub paid_wei: u128,
    /// Unused budget burned (R-CONTRACT-3).
    pub burned_wei: u128,
    /// Owed to providers, not yet claimed (the sum of `owed_wei`).
    pub owed_total_wei: u128,
    /// Credited by batches and the bootstrap bonus.
    pub credited_total_wei: u128,
    /// Earned but not credited under the daily cap (R-CONTRACT-2).
    pub shortfall_total_wei: u128,
    /// Bootstrap bonus credited (R-CONTRACT-4).
    pub bootstrap_total_wei: u128,
    /// What each provider is owed now.
    pub owed_wei: BTreeMap<Address, u128>,
    /// Cumulative MOR wei ever credited to each provider (batches and bootstrap bonus),
    /// never decreasing: what a settlement's Merkle root commits to (R-CHAIN-1).
    pub credited_wei: BTreeMap<Address, u128>,
    /// The last block whose batch was applied.
    pub last_block: Option<u64>,
    /// What that batch credited and what it fell short (R-CONTRACT-2), for the
    /// market figures (R-OPS-3).
    pub last_batch_credited_wei: u128,
    /// What that batch fell short under the cap.
    pub last_batch_shortfall_wei: u128,
    /// The day the per-day figures below are for.
    pub day: u64,
    /// Today's compute emission.
    pub day_emission_wei: u128,
    /// Today's spend cap (R-CONTRACT-2).
    pub day_cap_wei: u128,
    /// Credited today.
    pub day_spent_wei: u128,
    /// R-CONTRACT-4: the bootstrap slot holders (the first providers to earn a
    /// credited session, enrolled by the engine), and their credits today.
    pub bootstrap_providers: BTreeSet<Address>,
    /// Today's credits of each bootstrap slot holder (the bonus is shared by them).
    pub bootstrap_day_credits_wei: BTreeMap<Address, u128>,
}

/// An accounting step that cannot happen in a solvent ledger (owed or spent above
/// what was received) or a cumulative amount beyond u128 (prevented by the bounds
/// `MarketConfig::validate` puts on emission): stop rather than wrap.
fn checked(result: Result<u128, money::MoneyOverflow>, what: &str) -> u128 {
    match result {
        Ok(value) => value,
        Err(_) => panic!("ledger arithmetic out of range: {what}"),
    }
}

impl Ledger {
    /// MOR the contract holds: received and neither burned nor paid.
    pub fn contract_balance_wei(&self) -> u128 {
        let gone = checked(money::add(self.burned_wei, self.paid_wei), "burned + paid");
        checked(
            money::sub(self.emitted_wei, gone),
            "emitted - burned - paid",
        )
    }

    /// Received, and neither burned, paid nor owed.
    pub fn pool_wei(&self) -> u128 {
        checked(
            money::sub(self.contract_balance_wei(), self.owed_total_wei),
            "balance - owed",
        )
    }

    /// What `provider` is owed now, wei (0 when nothing).
    pub fn owed(&self, provider: &Address) -> u128 {
        self.owed_wei.get(provider).copied().unwrap_or(0)
    }

    /// R-CONTRACT-2 (`burned + paid + owed <= emitted`), with checked sums so that a
    /// wrapped total can never pass for solvency. Ok, or the first broken invariant.
    pub fn solvency(&self) -> Result<(), String> {
        let outgoing = money::sum([self.burned_wei, self.paid_wei, self.owed_total_wei])
            .map_err(|_| format!("burned + paid + owed overflows u128: {self:?}"))?;
        if outgoing > self.emitted_wei {
            return Err(format!("ledger insolvent: {self:?}"));
        }
        let owed_sum = money::sum(self.owed_wei.values().copied())
            .map_err(|_| "owed amounts overflow u128".to_string())?;
        if owed_sum != self.owed_total_wei {
            return Err(format!(
                "owed total drifted: {} recorded, {owed_sum} summed",
                self.owed_total_wei
            ));
        }
        if self.day_spent_wei > self.day_cap_wei {
            return Err(format!(
                "day spend {} above the cap {}",
                self.day_spent_wei, self.day_cap_wei
            ));
        }
        Ok(())
    }

    /// R-CONTRACT-2, asserted after every change and called by the tests.
    pub fn check_solvency(&self) {
        if let Err(reason) = self.solvency() {
            panic!("{reason}");
        }
        let credited_sum = money::sum(self.credited_wei.values().copied());
        let credited_expected = money::add(self.credited_total_wei, self.bootstrap_total_wei);
        assert!(
            credited_sum.is_ok() && credited_sum == credited_expected,
            "cumulative credits drifted: {credited_sum:?} summed, {credited_expected:?} expected"
        );
    }

    /// Starts day `day`: the compute emission arrives and today's spend cap is set.
    pub fn start_day(&mut self, day: u64, compute_emission_wei: u128, pool_daily_spend_bps: u32) {
        let pool_before = self.pool_wei();
        self.emitted_wei = checked(
            money::add(self.emitted_wei, compute_emission_wei),
            "cumulative emission",
        );
        self.day = day;
        self.day_emission_wei = compute_emission_wei;
        let pool_share = checked(
            money::mul_div(pool_before, pool_daily_spend_bps as u128, 10_000),
            "pool share",
        );
        self.day_cap_wei = checked(money::add(compute_emission_wei, pool_share), "day cap");
        self.day_spent_wei = 0;
        self.bootstrap_day_credits_wei.clear();
        self.check_solvency();
    }

    /// Ends the current day: burns the unspent emission if asked (R-CONTRACT-3) and
    /// shares the bootstrap bonus pro rata to the day's credits (R-CONTRACT-4).
    pub fn end_day(&mut self, burn_unused: bool, bootstrap_bonus_wei: u128) {
        if bootstrap_bonus_wei > 0 {
            self.distribute_bootstrap(bootstrap_bonus_wei);
        }
        if burn_unused {
            let unused = self
                .day_emission_wei
                .saturating_sub(self.day_spent_wei) // spent above emission: none unused
                .min(self.pool_wei());
            self.burned_wei = checked(money::add(self.burned_wei, unused), "burned");
        }
        self.check_solvency();
    }

    fn distribute_bootstrap(&mut self, bonus_wei: u128) {
        let day_total = checked(
            money::sum(self.bootstrap_day_credits_wei.values().copied()),
            "bootstrap day credits",
        );
        if day_total == 0 {
            return;
        }
        let mut distributed = 0u128;
        let shares: Vec<(Address, u128)> = self
            .bootstrap_day_credits_wei
            .iter()
            .map(|(provider, credits)| {
                let share = money::mul_div(bonus_wei, *credits, day_total)
                    .expect("a share of the bonus is at most the bonus");
                (*provider, share)
            })
            .collect();
        for (provider, share) in shares {
            let owed = self.owed_wei.entry(provider).or_insert(0);
            *owed = checked(money::add(*owed, share), "owed");
            distributed = checked(money::add(distributed, share), "bonus distributed");
            let credited = self.credited_wei.entry(provider).or_insert(0);
            *credited = checked(money::add(*credited, share), "credited");
        }
        debug_assert!(distributed <= bonus_wei);
        // The bonus is emission earmarked for bootstrap providers: it arrives and is
        // owed in the same step, so solvency is untouched.
        self.emitted_wei = checked(money::add(self.emitted_wei, distributed), "emission");
        self.owed_total_wei = checked(money::add(self.owed_total_wei, distributed), "owed");
        self.bootstrap_total_wei =
            checked(money::add(self.bootstrap_total_wei, distributed), "bonus");
    }

    /// R-CONTRACT-1: applies a batch once, in block order. A batch already applied is
    /// a no-op returning `None`. Each provider is credited its `earned_wei`, pro rata
    /// when the day's cap (or the pool) allows less than the batch earned; the
    /// result says what each was credited and the shortfall.
    pub fn apply_batch(
        &mut self,
        batch: &CreditBatch,
    ) -> Result<Option<BatchApplied>, LedgerError> {
        if let Some(last) = self.last_block {
            if batch.block <= last {
                return Ok(None);
            }
            if batch.block != last + 1 {
                return Err(LedgerError::OutOfOrder {
                    expected: last + 1,
                    got: batch.block,
                });
            }
        }
        let requested = batch
            .earned_total_wei()
            .map_err(|_| LedgerError::Overflow)?;
        let left_today = self.day_cap_wei.saturating_sub(self.day_spent_wei); // cap ≥ spent
        let allowed = left_today.min(self.pool_wei());
        let mut credited = 0u128;
        let mut provider_credited_wei = Vec::with_capacity(batch.totals.len());
        for totals in &batch.totals {
            let amount = if requested <= allowed {
                totals.earned_wei
            } else {
                money::mul_div(totals.earned_wei, allowed, requested)
                    .expect("a pro rata share is at most the amount")
            };
            debug_assert!(amount <= totals.earned_wei);
            provider_credited_wei.push(amount);
            if amount == 0 {
                continue;
            }
            let owed = self.owed_wei.entry(totals.provider).or_insert(0);
            *owed = checked(money::add(*owed, amount), "owed");
            let cumulative = self.credited_wei.entry(totals.provider).or_insert(0);
            *cumulative = checked(money::add(*cumulative, amount), "credited");
            if self.bootstrap_providers.contains(&totals.provider) {
                let day = self
                    .bootstrap_day_credits_wei
                    .entry(totals.provider)
                    .or_insert(0);
                *day = checked(money::add(*day, amount), "bootstrap day credits");
            }
            credited = checked(money::add(credited, amount), "credited");
        }
        assert!(credited <= allowed, "credited above what the day allows");
        assert!(credited <= requested);
        self.owed_total_wei = checked(money::add(self.owed_total_wei, credited), "owed");
        self.day_spent_wei = checked(money::add(self.day_spent_wei, credited), "spent");
        self.credited_total_wei =
            checked(money::add(self.credited_total_wei, credited), "credited");
        let shortfall = requested - credited; // asserted above
        self.shortfall_total_wei =
            checked(money::add(self.shortfall_total_wei, shortfall), "shortfall");
        self.last_block = Some(batch.block);
        self.last_batch_credited_wei = credited;
        self.last_batch_shortfall_wei = shortfall;
        self.check_solvency();
        Ok(Some(BatchApplied {
            credited_wei: credited,
            shortfall_wei: shortfall,
            provider_credited_wei,
        }))
    }

    /// R-CLAIM-1: pays `amount_wei` (0: everything owed) to `provider`.
    pub fn claim(
        &mut self,
        provider: Address,
        amount_wei: u128,
    ) -> Result<(u128, u128), MarketError> {
        let owed = self.owed(&provider);
        if owed == 0 {
            return Err(MarketError::NothingOwed);
        }
        let amount = if amount_wei == 0 { owed } else { amount_wei };
        if amount > owed {
            return Err(MarketError::ClaimExceedsOwed { owed_wei: owed });
        }
        let left = owed - amount; // amount <= owed, checked above
        if left == 0 {
            self.owed_wei.remove(&provider);
        } else {
            self.owed_wei.insert(provider, left);
        }
        self.owed_total_wei = checked(money::sub(self.owed_total_wei, amount), "owed");
        self.paid_wei = checked(money::add(self.paid_wei, amount), "paid");
        self.check_solvency();
        Ok((amount, left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::ProviderTotals;
    use crate::types::WEI_PER_MOR;

    fn batch(block: u64, entries: &[(u8, u128)]) -> CreditBatch {
        CreditBatch {
            block,
            totals: entries
                .iter()
                .map(|&(p, wei)| ProviderTotals {
                    provider: Address([p; 20]),
                    earned_wei: wei,
                    credited_wei: 0,
                    tokens: 1,
                    sessions: 1,
                })
                .collect(),
            merkle_root: [0; 32],
            receipts: entries.len() as u64,
        }
    }

    #[test]
    fn r_contract_1_batches_apply_once_and_in_order() {
        let mut ledger = Ledger::default();
        ledger.start_day(0, 3_456 * WEI_PER_MOR, 100);
        assert!(ledger.apply_batch(&batch(0, &[(1, 10)])).unwrap().is_some());
        assert_eq!(
            ledger.apply_batch(&batch(0, &[(1, 10)])).unwrap(),
            None,
            "second application is a no-op"
        );
        assert_eq!(ledger.owed(&Address([1; 20])), 10);
        assert_eq!(
            ledger.apply_batch(&batch(2, &[])),
            Err(LedgerError::OutOfOrder {
                expected: 1,
                got: 2
            })
        );
        assert!(ledger.apply_batch(&batch(1, &[])).unwrap().is_some());
    }

    #[test]
    fn r_contract_2_daily_cap_is_emission_plus_one_percent_of_pool_pro_rata() {
        let mut ledger = Ledger::default();
        ledger.start_day(0, 1_000, 100);
        assert_eq!(ledger.day_cap_wei, 1_000);
        ledger.end_day(false, 0);
        ledger.start_day(1, 1_000, 100); // pool before: 1,000 -> cap 1,000 + 10
        assert_eq!(ledger.day_cap_wei, 1_010);
        let applied = ledger
            .apply_batch(&batch(0, &[(1, 1_500), (2, 500)]))
            .unwrap()
            .unwrap();
        // 2,000 asked, 1,010 allowed: 1,500 * 1010 / 2000 = 757, 500 * 1010 / 2000 = 252.
        assert_eq!(applied.credited_wei, 757 + 252);
        assert_eq!(applied.shortfall_wei, 2_000 - 1_009);
        ledger.check_solvency();
        let applied = ledger.apply_batch(&batch(1, &[(1, 5)])).unwrap().unwrap();
        assert_eq!(applied.credited_wei, 1, "only 1 wei left of today's cap");
    }

    #[test]
    fn r_contract_3_burn_removes_the_unspent_day() {
        let mut ledger = Ledger::default();
        ledger.start_day(0, 1_000, 100);
        ledger.apply_batch(&batch(0, &[(1, 300)])).unwrap();
        ledger.end_day(true, 0);
        assert_eq!(ledger.burned_wei, 700);
        assert_eq!(ledger.pool_wei(), 0);
        let mut carry = Ledger::default();
        carry.start_day(0, 1_000, 100);
        carry.end_day(false, 0);
        assert_eq!(carry.pool_wei(), 1_000);
    }

    #[test]
    fn r_contract_4_bootstrap_bonus_pro_rata_to_day_credits() {
        let mut ledger = Ledger::default();
        ledger.bootstrap_providers.insert(Address([1; 20]));
        ledger.bootstrap_providers.insert(Address([2; 20]));
        ledger.start_day(0, 10_000, 100);
        ledger
            .apply_batch(&batch(0, &[(1, 300), (2, 100), (3, 600)]))
            .unwrap();
        ledger.end_day(false, 1_000);
        assert_eq!(ledger.owed(&Address([1; 20])), 300 + 750);
        assert_eq!(ledger.owed(&Address([2; 20])), 100 + 250);
        assert_eq!(
            ledger.owed(&Address([3; 20])),
            600,
            "not a bootstrap provider"
        );
        ledger.check_solvency();
    }

    #[test]
    fn r_claim_1_pays_what_is_owed() {
        let mut ledger = Ledger::default();
        ledger.start_day(0, 1_000, 100);
        ledger.apply_batch(&batch(0, &[(1, 300)])).unwrap();
        let provider = Address([1; 20]);
        assert_eq!(
            ledger.claim(provider, 400),
            Err(MarketError::ClaimExceedsOwed { owed_wei: 300 })
        );
        assert_eq!(ledger.claim(provider, 100), Ok((100, 200)));
        assert_eq!(ledger.claim(provider, 0), Ok((200, 0)));
        assert_eq!(ledger.claim(provider, 0), Err(MarketError::NothingOwed));
        assert_eq!(ledger.paid_wei, 300);
        ledger.check_solvency();
    }
}
