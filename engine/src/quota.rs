//! Section 4: MaxT, AccessRate and UserMax in exact integer arithmetic (256-bit
//! intermediates, rounding down, no floats). No intermediate is capped: MaxT may
//! exceed u64 (it is below 2^138), and only the final per-user figure is capped at
//! u64::MAX where it enters a u64 field (R-QUOTA-1..3, SPEC.md section 3).

pub use ethnum::U256;

/// R-QUOTA-1: `MaxT = B × 1000 / P` tokens per day, with P in wei per 1,000 tokens,
/// rounding down. Exact: B < 2^128 and 1000 < 2^10, so MaxT < 2^138.
pub fn max_tokens_per_day(budget_wei: u128, price_wei_per_1000: u128) -> U256 {
    assert!(
        price_wei_per_1000 > 0,
        "price must be positive (validated in config)"
    );
    U256::from(budget_wei) * U256::from(1000u32) / U256::from(price_wei_per_1000)
}

/// MaxT for display only (metrics, operator tools): capped at u64::MAX. Quotas never
/// use this figure.
pub fn max_tokens_per_day_u64(budget_wei: u128, price_wei_per_1000: u128) -> u64 {
    u64::try_from(max_tokens_per_day(budget_wei, price_wei_per_1000)).unwrap_or(u64::MAX)
}

/// R-QUOTA-2: tokens per day per whole MOR held, for display (capped at u64::MAX;
/// quotas use `UserMaxRate`). Exact: MaxT × 10^18 < 2^198.
pub fn access_rate_tokens_per_mor(max_t: U256, supply_wei: u128) -> u64 {
    assert!(supply_wei > 0);
    let rate = max_t * U256::from(crate::types::WEI_PER_MOR) / U256::from(supply_wei);
    u64::try_from(rate).unwrap_or(u64::MAX)
}

/// R-QUOTA-3 for one day's MaxT and supply S, precomputed so that each RFC costs a
/// multiplication and one division: with `MaxT = q × S + r` (r < S),
/// `floor(MaxT × balance / S) = q × balance + floor(r × balance / S)`, and
/// `r × balance < 2^256` always fits, so the whole computation is exact without a
/// 512-bit product (MaxT × balance can reach 2^266).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserMaxRate {
    quotient: U256,
    remainder: u128,
    supply_wei: u128,
}

impl UserMaxRate {
    /// The rate for a day's MaxT (tokens) and supply S (wei); panics if S is 0
    /// (refused by `MarketConfig::validate`).
    pub fn new(max_t: U256, supply_wei: u128) -> UserMaxRate {
        assert!(
            supply_wei > 0,
            "supply must be positive (validated in config)"
        );
        let supply = U256::from(supply_wei);
        let remainder = u128::try_from(max_t % supply).expect("a remainder below S fits u128");
        UserMaxRate {
            quotient: max_t / supply,
            remainder,
            supply_wei,
        }
    }

    /// `UserMax = floor(MaxT × balance_wei / S_wei)`, capped at u64::MAX only here,
    /// where it enters a u64 field.
    #[inline]
    pub fn user_max_tokens(&self, balance_wei: u128) -> u64 {
        if self.quotient == U256::ZERO {
            // MaxT < S (every realistic market): UserMax = r × balance / S, in u128
            // when the product fits, else in 256 bits; exact either way.
            if let Some(product) = self.remainder.checked_mul(balance_wei) {
                return u64::try_from(product / self.supply_wei).unwrap_or(u64::MAX);
            }
        }
        let balance = U256::from(balance_wei);
        let Some(whole) = self.quotient.checked_mul(balance) else {
            return u64::MAX;
        };
        let part = U256::from(self.remainder) * balance / U256::from(self.supply_wei);
        debug_assert!(part < balance || balance == 0 || self.remainder == 0);
        whole
            .checked_add(part)
            .and_then(|total| u64::try_from(total).ok())
            .unwrap_or(u64::MAX)
    }
}

/// R-QUOTA-3 from the market's parameters: B (wei per day), P (wei per 1,000
/// tokens), S (wei) and the balance (wei).
pub fn user_max_tokens(
    budget_wei: u128,
    price_wei_per_1000: u128,
    balance_wei: u128,
    supply_wei: u128,
) -> u64 {
    UserMaxRate::new(
        max_tokens_per_day(budget_wei, price_wei_per_1000),
        supply_wei,
    )
    .user_max_tokens(balance_wei)
}

/// `a × b / c` rounding down, exact for any u128 inputs; `None` if c is 0 or the
/// result does not fit u128.
pub fn mul_div(a: u128, b: u128, c: u128) -> Option<u128> {
    crate::money::mul_div(a, b, c).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::WEI_PER_MOR;

    #[test]
    fn r_quota_1_2_3_seed_test_vector() {
        let supply = 10_000_000 * WEI_PER_MOR;
        let budget = 3_000 * WEI_PER_MOR;
        let price = WEI_PER_MOR / 10_000; // 0.0001 MOR per 1,000 T
        let max_t = max_tokens_per_day(budget, price);
        assert_eq!(max_t, U256::from(30_000_000_000u64));
        assert_eq!(access_rate_tokens_per_mor(max_t, supply), 3_000);
        assert_eq!(
            user_max_tokens(budget, price, 5 * WEI_PER_MOR, supply),
            15_000
        );
        assert_eq!(
            user_max_tokens(budget, price, 500 * WEI_PER_MOR, supply),
            1_500_000
        );
    }

    #[test]
    fn r_quota_3_max_t_above_u64_is_not_capped_before_user_max() {
        // Issue 13: B = 3,000 MOR, P = 1 wei per 1,000 T, S = 10^7 MOR: MaxT = 3 × 10^24
        // (above u64::MAX); a balance of 3,333,334 wei gives exactly 1,000,000 tokens.
        let (budget, supply) = (3_000 * WEI_PER_MOR, 10_000_000 * WEI_PER_MOR);
        assert_eq!(
            max_tokens_per_day(budget, 1),
            U256::from(3_000_000_000_000_000_000_000_000u128)
        );
        assert_eq!(user_max_tokens(budget, 1, 3_333_334, supply), 1_000_000);
    }

    #[test]
    fn r_quota_3_rounds_down_and_never_overflows() {
        assert_eq!(user_max_tokens(3, 1000, 1, 2), 1);
        assert_eq!(user_max_tokens(u128::MAX, 1, u128::MAX, 1), u64::MAX);
        assert_eq!(
            user_max_tokens(u128::MAX, 1, u128::MAX, u128::MAX),
            u64::MAX
        );
        assert_eq!(user_max_tokens(u128::MAX, 1, 0, 1), 0);
        assert_eq!(max_tokens_per_day_u64(u128::MAX, 1), u64::MAX);
        assert_eq!(mul_div(u128::MAX, u128::MAX, u128::MAX), Some(u128::MAX));
        assert_eq!(mul_div(1, 1, 0), None);
    }
}
