//! Section 4: MaxT, AccessRate and UserMax in exact integer arithmetic (256-bit
//! intermediates, rounding down, no floats).

use ethnum::U256;

/// R-QUOTA-1: `MaxT = B / P × 1000` tokens per day, with P in wei per 1,000 tokens.
/// Saturates at u64::MAX (a market that large has no meaningful quota).
pub fn max_tokens_per_day(budget_wei: u128, price_wei_per_1000: u128) -> u64 {
    assert!(
        price_wei_per_1000 > 0,
        "price must be positive (validated in config)"
    );
    let max_t = U256::from(budget_wei) * U256::from(1000u32) / U256::from(price_wei_per_1000);
    u64::try_from(max_t).unwrap_or(u64::MAX)
}

/// R-QUOTA-2: tokens per day per whole MOR held (for display; quotas use `user_max`).
pub fn access_rate_tokens_per_mor(max_t: u64, supply_wei: u128) -> u64 {
    assert!(supply_wei > 0);
    let rate = U256::from(max_t) * U256::from(crate::types::WEI_PER_MOR) / U256::from(supply_wei);
    u64::try_from(rate).unwrap_or(u64::MAX)
}

/// R-QUOTA-3: `UserMax = MaxT × balance_wei / S_wei`, rounding down.
pub fn user_max_tokens(max_t: u64, balance_wei: u128, supply_wei: u128) -> u64 {
    assert!(supply_wei > 0);
    let user_max = U256::from(max_t) * U256::from(balance_wei) / U256::from(supply_wei);
    u64::try_from(user_max).unwrap_or(u64::MAX)
}

/// `a × b / c` rounding down, exact for any u128 inputs; `None` if c is 0 or the
/// result does not fit u128.
pub fn mul_div(a: u128, b: u128, c: u128) -> Option<u128> {
    if c == 0 {
        return None;
    }
    u128::try_from(U256::from(a) * U256::from(b) / U256::from(c)).ok()
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
        assert_eq!(max_t, 30_000_000_000);
        assert_eq!(access_rate_tokens_per_mor(max_t, supply), 3_000);
        assert_eq!(user_max_tokens(max_t, 5 * WEI_PER_MOR, supply), 15_000);
        assert_eq!(user_max_tokens(max_t, 500 * WEI_PER_MOR, supply), 1_500_000);
    }

    #[test]
    fn r_quota_3_rounds_down_and_never_overflows() {
        assert_eq!(user_max_tokens(3, 1, 2), 1);
        assert_eq!(user_max_tokens(u64::MAX, u128::MAX, 1), u64::MAX);
        assert_eq!(max_tokens_per_day(u128::MAX, 1), u64::MAX);
        assert_eq!(mul_div(u128::MAX, u128::MAX, u128::MAX), Some(u128::MAX));
        assert_eq!(mul_div(1, 1, 0), None);
    }
}
