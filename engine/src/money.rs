//! R-MONEY-1: every wei amount the market adds, subtracts or multiplies goes through
//! these checked operations. None of them wraps or saturates: an amount that does
//! not fit u128 is an `Err(MoneyOverflow)` that the caller turns into a typed
//! refusal where the amount enters (a bid, an RFC, a report), or, where nothing can
//! be refused (a daily emission under validated parameters), into a panic that
//! `MarketConfig::validate` makes unreachable. Plain `+`, `.sum()` and
//! `saturating_add` on wei are not used anywhere in the engine.

use ethnum::U256;

/// A wei sum or product that does not fit u128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoneyOverflow;

impl From<MoneyOverflow> for crate::error::MarketError {
    fn from(_: MoneyOverflow) -> Self {
        crate::error::MarketError::ArithmeticOverflow
    }
}

/// `a + b` in wei.
#[inline]
pub fn add(a: u128, b: u128) -> Result<u128, MoneyOverflow> {
    a.checked_add(b).ok_or(MoneyOverflow)
}

/// `a - b` in wei; `b > a` is an accounting error, reported as an overflow.
#[inline]
pub fn sub(a: u128, b: u128) -> Result<u128, MoneyOverflow> {
    a.checked_sub(b).ok_or(MoneyOverflow)
}

/// The credit of `tokens` at `price_wei_per_token`: `tokens × price`.
#[inline]
pub fn credit(tokens: u64, price_wei_per_token: u128) -> Result<u128, MoneyOverflow> {
    (tokens as u128)
        .checked_mul(price_wei_per_token)
        .ok_or(MoneyOverflow)
}

/// The sum of `amounts`, or `Err` if any partial sum overflows.
pub fn sum<I: IntoIterator<Item = u128>>(amounts: I) -> Result<u128, MoneyOverflow> {
    amounts.into_iter().try_fold(0u128, add)
}

/// `a × b / c` rounding down with a 256-bit intermediate; `Err` if `c` is 0 or the
/// quotient does not fit u128.
pub fn mul_div(a: u128, b: u128, c: u128) -> Result<u128, MoneyOverflow> {
    if c == 0 {
        return Err(MoneyOverflow);
    }
    u128::try_from(U256::from(a) * U256::from(b) / U256::from(c)).map_err(|_| MoneyOverflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_money_1_checked_operations_refuse_what_does_not_fit() {
        let half = 1u128 << 127;
        assert_eq!(add(half, half - 1), Ok(u128::MAX));
        assert_eq!(add(half, half), Err(MoneyOverflow));
        assert_eq!(sub(1, 2), Err(MoneyOverflow));
        assert_eq!(credit(2, u128::MAX), Err(MoneyOverflow));
        assert_eq!(credit(1, u128::MAX), Ok(u128::MAX));
        assert_eq!(credit(u64::MAX, 0), Ok(0));
        assert_eq!(sum([half, half]), Err(MoneyOverflow));
        assert_eq!(sum([half, half - 1, 0]), Ok(u128::MAX));
        assert_eq!(mul_div(u128::MAX, u128::MAX, u128::MAX), Ok(u128::MAX));
        assert_eq!(mul_div(u128::MAX, 2, 1), Err(MoneyOverflow));
        assert_eq!(mul_div(1, 1, 0), Err(MoneyOverflow));
    }
}
