//! Operator commands: balance snapshots and updates (R-QUOTA-6) and market
//! parameters. Only the configured operator address may send them; a command is
//! validated whole before any of it is applied.

use crate::command::{Effect, ParamId};
use crate::config::{BudgetPolicy, FailPolicy, UnusedBudget};
use crate::engine::Engine;
use crate::error::{Limit, MarketError};
use crate::types::Address;

impl Engine {
    fn check_operator(&self, origin: Address) -> Result<(), MarketError> {
        if origin != self.state.config.operator {
            return Err(MarketError::NotOperator);
        }
        Ok(())
    }

    pub(crate) fn set_balances(
        &mut self,
        operator: Address,
        nonce: u64,
        entries: &[(Address, u128)],
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        self.check_operator(operator)?;
        self.apply_balances(entries, effects)?;
        effects.push(Effect::Done {
            to: operator,
            nonce,
        });
        Ok(())
    }

    /// R-CHAIN-3: the chain's `paidTo` per provider, signed by the operator (see
    /// `Command::ChainPaid`). Validated whole, then applied: each provider's owed
    /// falls by what the chain paid beyond `credited - owed` (what the ledger counts
    /// as paid), so `ledger`, `MarketState` and the metrics show the chain's figures.
    pub(crate) fn chain_paid(
        &mut self,
        operator: Address,
        nonce: u64,
        chain_id: u64,
        contract: &Address,
        entries: &[(Address, u128)],
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        self.check_operator(operator)?;
        let config = &self.state.config;
        if config.settlement_contract == Address::default()
            || config.settlement_chain_id != chain_id
            || config.settlement_contract != *contract
        {
            return Err(MarketError::WrongChain {
                chain_id: config.settlement_chain_id,
            });
        }
        let max = config.balance_entries_max;
        if entries.len() > max as usize {
            return Err(MarketError::LimitReached {
                limit: Limit::BalanceEntries,
                max: max as u64,
            });
        }
        if entries.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return Err(MarketError::ChainPaidUnsorted);
        }
        let ledger = &self.state.ledger;
        let mut newly_paid: Vec<(Address, u128)> = Vec::new();
        for (provider, paid_to) in entries {
            let credited = ledger.credited_wei.get(provider).copied().unwrap_or(0);
            if *paid_to > credited {
                return Err(MarketError::PaidAboveCredit {
                    credited_wei: credited,
                });
            }
            // owed <= credited for every provider (what is owed was credited).
            let counted = credited
                .checked_sub(ledger.owed(provider))
                .ok_or(MarketError::ArithmeticOverflow)?;
            if *paid_to > counted {
                newly_paid.push((*provider, *paid_to - counted));
            }
        }
        for (provider, amount) in newly_paid {
            // amount <= owed: paid_to <= credited, so paid_to - (credited - owed) <= owed.
            let (paid, _) = self.state.ledger.claim(provider, amount)?;
            debug_assert_eq!(paid, amount);
        }
        effects.push(Effect::Done {
            to: operator,
            nonce,
        });
        Ok(())
    }

    /// R-CHAIN-3 (issue 24 case 2): sets the settlement domain of a market that has
    /// none (contract 0x0), once; see `Command::SetSettlementDomain`.
    pub(crate) fn set_settlement_domain(
        &mut self,
        chain_id: u64,
        contract: &Address,
    ) -> Result<(), MarketError> {
        let config = &mut self.state.config;
        if config.settlement_contract != Address::default() || *contract == Address::default() {
            return Err(MarketError::WrongChain {
                chain_id: config.settlement_chain_id,
            });
        }
        config.settlement_chain_id = chain_id;
        config.settlement_contract = *contract;
        Ok(())
    }

    /// R-QUOTA-6: the snapshot file, applied without an operator nonce.
    pub(crate) fn load_balance_snapshot(
        &mut self,
        file_blake3: [u8; 32],
        entries: &[(Address, u128)],
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        self.apply_balances(entries, effects)?;
        self.state.balance_snapshot_blake3 = Some(file_blake3);
        Ok(())
    }

    /// Validates the whole update, then applies it and reports what it applied.
    fn apply_balances(
        &mut self,
        entries: &[(Address, u128)],
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let max = self.state.config.balance_entries_max;
        if entries.len() > max as usize {
            return Err(MarketError::LimitReached {
                limit: Limit::BalanceEntries,
                max: max as u64,
            });
        }
        let new_accounts = entries
            .iter()
            .filter(|(address, _)| self.account_of(address).is_none())
            .count();
        let accounts_max = self.state.config.accounts_max as usize;
        if self.state.accounts.len() + new_accounts > accounts_max {
            return Err(MarketError::LimitReached {
                limit: Limit::Accounts,
                max: accounts_max as u64,
            });
        }
        for &(address, balance_wei) in entries {
            let idx = self.account_or_create(address).expect("room checked above");
            let account = &mut self.state.accounts[idx as usize];
            account.balance_wei = balance_wei;
            if let Some(provider) = account.provider {
                self.refresh_provider(provider);
            } else if let Some(registration) = self.state.unfunded.get(&address) {
                // R-ID-4: the account now tracks the address's nonces; it continues
                // from the unfunded registration's.
                let nonce_last = registration.nonce_last;
                let account = &mut self.state.accounts[idx as usize];
                account.nonce_last = Some(account.nonce_last.unwrap_or(0).max(nonce_last));
                if balance_wei > 0 {
                    self.promote_unfunded(idx); // R-PROV-2
                }
            }
        }
        effects.push(Effect::BalancesSet {
            entries: entries.to_vec(),
        });
        Ok(())
    }

    pub(crate) fn set_params(
        &mut self,
        operator: Address,
        nonce: u64,
        params: &[(u16, u128)],
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        self.check_operator(operator)?;
        let mut config = self.state.config.clone();
        for &(id, value) in params {
            let invalid = MarketError::InvalidParam { param: id };
            let param = ParamId::from_u16(id).ok_or(invalid.clone())?;
            let as_u32 = || u32::try_from(value).map_err(|_| invalid.clone());
            let as_u64 = || u64::try_from(value).map_err(|_| invalid.clone());
            match param {
                ParamId::ComputeBudgetWeiPerDay => config.compute_budget_wei_per_day = value,
                ParamId::TokenPriceWeiPer1000 if value > 0 => {
                    config.token_price_wei_per_1000 = value
                }
                ParamId::MorSupplyWei if value > 0 => config.mor_supply_wei = value,
                ParamId::SpeedTolerancePercent => config.speed_tolerance_percent = as_u32()?,
                ParamId::SpeedWindowReports if value > 0 => config.speed_window_reports = as_u32()?,
                ParamId::SpeedReportsMin => config.speed_reports_min = as_u32()?,
                ParamId::FailPolicy if value <= 1 => {
                    config.fail_policy = if value == 0 {
                        FailPolicy::NoCredit
                    } else {
                        FailPolicy::BalanceWeighted
                    }
                }
                ParamId::PenaltyPointsSuspend => config.penalty_points_suspend = as_u32()?,
                ParamId::SuspensionMs => config.suspension_ms = as_u64()?,
                // A probe longer than an RFC may live would hold the RFC past its
                // expiry (a provider that never answers holds it for that long).
                ParamId::ProbeTimeoutMs
                    if value > 0 && value <= u128::from(config.rfc_ttl_max_ms) =>
                {
                    config.probe_timeout_ms = as_u64()?
                }
                ParamId::UnusedBudget if value <= 1 => {
                    config.unused_budget = if value == 0 {
                        UnusedBudget::Carry
                    } else {
                        UnusedBudget::Burn
                    }
                }
                ParamId::BudgetPolicy if value <= 1 => {
                    config.budget_policy = if value == 0 {
                        BudgetPolicy::Fixed
                    } else {
                        BudgetPolicy::PoolPercent
                    }
                }
                ParamId::BidWeiPerTokenMax if value > 0 => config.bid_wei_per_token_max = value,
                _ => return Err(invalid),
            }
        }
        // R-CONTRACT-6: the whole set is refused, saying why.
        config
            .validate()
            .map_err(|reason| MarketError::InvalidParamSet { reason })?;
        // R-MONEY-1: RFCs are admitted against this bound, so no live offer may sit
        // above it (a session's credit must stay representable).
        let bid_max = config.bid_wei_per_token_max;
        let above = self
            .state
            .providers
            .iter()
            .flat_map(|p| p.offers.iter())
            .filter(|o| o.active)
            .map(|o| o.price_wei_per_token)
            .find(|&price| price > bid_max);
        if let Some(price) = above {
            return Err(MarketError::InvalidParamSet {
                reason: format!(
                    "an active offer bids {price} wei per token, above the new \
                     bid_wei_per_token_max of {bid_max}"
                ),
            });
        }
        self.state.config = config;
        if self.state.config.budget_policy == BudgetPolicy::Fixed {
            self.state.budget_wei_today = self.state.config.compute_budget_wei_per_day;
        }
        self.refresh_quota_rate();
        effects.push(Effect::Done {
            to: operator,
            nonce,
        });
        Ok(())
    }
}
