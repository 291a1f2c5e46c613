//! Balance snapshots (R-QUOTA-6): the text format of a market's opening balances,
//! read by the router (`identity.balance_snapshot`) and by `yellowstone-ctl balance
//! import` alike. One `address,balance_wei` per line; blank lines and `#` comments
//! are skipped; each address at most once (last-wins would hide a typo).

use crate::address::{Address, AddressParseError};
use crate::amount::{parse_wei, WeiParseError};

/// Why a balance snapshot was refused; every variant names its 1-based line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BalanceSnapshotError {
    /// A line without the comma between address and balance.
    #[error("line {line}: expected address,balance_wei")]
    NoComma {
        /// 1-based line number.
        line: usize,
    },
    /// The address is not an address (length, hex, EIP-55 checksum).
    #[error("line {line}: {source}")]
    Address {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        source: AddressParseError,
    },
    /// The balance is not a wei amount.
    #[error("line {line}: balance_wei: {source}")]
    Balance {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        source: WeiParseError,
    },
    /// The address was already given a balance on an earlier line.
    #[error("line {line}: {address} already set on line {first_line}")]
    Duplicate {
        /// 1-based line number of the second mention.
        line: usize,
        /// The address named twice.
        address: Address,
        /// 1-based line number of the first mention.
        first_line: usize,
    },
}

/// Parses a balance snapshot's text into `(address, balance in wei)` pairs, in file
/// order. Refuses the whole file at its first bad line.
pub fn parse_balance_snapshot(text: &str) -> Result<Vec<(Address, u128)>, BalanceSnapshotError> {
    let mut out = Vec::new();
    let mut line_of = std::collections::HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let (address, balance) = content
            .split_once(',')
            .ok_or(BalanceSnapshotError::NoComma { line })?;
        let address: Address = address
            .trim()
            .parse()
            .map_err(|source| BalanceSnapshotError::Address { line, source })?;
        let balance =
            parse_wei(balance).map_err(|source| BalanceSnapshotError::Balance { line, source })?;
        if let Some(first_line) = line_of.insert(address, line) {
            return Err(BalanceSnapshotError::Duplicate {
                line,
                address,
                first_line,
            });
        }
        out.push((address, balance));
    }
    debug_assert_eq!(out.len(), line_of.len(), "one entry per distinct address");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_quota_6_snapshot_lines_comments_duplicates_and_bounds() {
        let a = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
        let text = format!("# address,balance_wei\n\n{a},5_000\n");
        let parsed = parse_balance_snapshot(&text).unwrap();
        assert_eq!(parsed, vec![(a.parse().unwrap(), 5_000)]);
        let twice = format!("{a},1\n{a},2\n");
        assert_eq!(
            parse_balance_snapshot(&twice).unwrap_err().to_string(),
            format!("line 2: {a} already set on line 1")
        );
        let error =
            parse_balance_snapshot(&format!("{a},{}0\n", crate::amount::WEI_MAX_TEXT)).unwrap_err();
        assert!(
            error.to_string().starts_with("line 1: balance_wei: "),
            "{error}"
        );
        assert!(error.to_string().contains("above the maximum"), "{error}");
        assert!(matches!(
            parse_balance_snapshot("nonsense\n"),
            Err(BalanceSnapshotError::NoComma { line: 1 })
        ));
        assert!(matches!(
            parse_balance_snapshot("0x12,5\n"),
            Err(BalanceSnapshotError::Address { line: 1, .. })
        ));
    }
}
