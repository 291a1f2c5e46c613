//! Amounts of MOR wei written as text: the one parser every Yellowstone tool uses
//! (the router's TOML and balance snapshots, `yellowstone-ctl`, the provider node's
//! prices, the chain relayer's flags), so that every tool accepts and refuses the
//! same spellings with the same reasons (R-MONEY-1: a wei amount is a `u128`).

/// The largest wei amount, `u128::MAX` (2^128 − 1), as the errors print it.
pub const WEI_MAX_TEXT: &str = "340282366920938463463374607431768211455";

/// Why a text is not a wei amount. Both variants carry the text as given (trimmed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WeiParseError {
    /// Not decimal digits (with optional `_` separators): empty, a sign, a fraction,
    /// an exponent (`5e18`), hex.
    #[error("{text:?} is not a whole number of wei")]
    NotANumber {
        /// The text refused, trimmed.
        text: String,
    },
    /// Digits, but above `u128::MAX` ([`WEI_MAX_TEXT`]).
    #[error("{text:?} is above the maximum of {WEI_MAX_TEXT} wei (2^128 - 1)")]
    AboveMax {
        /// The text refused, trimmed.
        text: String,
    },
}

/// Parses a whole number of wei: decimal digits, `_` separators allowed anywhere
/// between them, surrounding white space ignored. Returns the amount in wei;
/// refuses anything else with [`WeiParseError`] naming the text and, for a number
/// that is too large, the bound.
pub fn parse_wei(text: &str) -> Result<u128, WeiParseError> {
    let trimmed = text.trim();
    let digits: String = trimmed.chars().filter(|c| *c != '_').collect();
    // `u128::from_str` also takes a leading `+`: a wei amount is digits only.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WeiParseError::NotANumber {
            text: trimmed.to_string(),
        });
    }
    digits.parse::<u128>().map_err(|_| WeiParseError::AboveMax {
        text: trimmed.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_money_1_wei_text_is_digits_with_separators_up_to_u128_max() {
        assert_eq!(parse_wei(" 5_000_000 "), Ok(5_000_000));
        assert_eq!(parse_wei(WEI_MAX_TEXT), Ok(u128::MAX));
        assert_eq!(parse_wei("0"), Ok(0));
        for bad in ["", "_", "+5", "-5", "5e18", "1.5", "0x10", "5 5"] {
            assert!(
                matches!(parse_wei(bad), Err(WeiParseError::NotANumber { .. })),
                "{bad:?}"
            );
        }
        let error = parse_wei("340282366920938463463374607431768211456").unwrap_err();
        assert!(matches!(error, WeiParseError::AboveMax { .. }));
        assert!(error.to_string().contains("above the maximum"), "{error}");
        assert!(error.to_string().contains(WEI_MAX_TEXT), "{error}");
    }
}
