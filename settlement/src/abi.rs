//! The few Solidity ABI shapes the settlement needs, by hand: 32-byte big-endian
//! words for unsigned integers (at most 128 bits here) and addresses, function
//! selectors, and a dynamic `bytes` tail. Checked against alloy's encoder in
//! `contract/tests/encoding.rs`.

use yellowstone_engine::settlement::keccak256;
use yellowstone_engine::Address;

/// Bytes in one ABI word.
pub const WORD: usize = 32;

/// `uint256` word of `value`: big-endian, left-padded with zeros.
pub fn uint(value: u128) -> [u8; WORD] {
    let mut word = [0u8; WORD];
    word[WORD - 16..].copy_from_slice(&value.to_be_bytes());
    word
}

/// `address` word: the 20 bytes right-aligned.
pub fn address(value: &Address) -> [u8; WORD] {
    let mut word = [0u8; WORD];
    word[WORD - 20..].copy_from_slice(&value.0);
    word
}

/// A function's selector: the first 4 bytes of keccak256 of its signature.
pub fn selector(signature: &str) -> [u8; 4] {
    let hash = keccak256(signature.as_bytes());
    [hash[0], hash[1], hash[2], hash[3]]
}

/// Appends a dynamic `bytes` value's tail: its length word, then the bytes padded
/// with zeros to a whole number of words.
pub fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&uint(bytes.len() as u128));
    out.extend_from_slice(bytes);
    let padding = (WORD - bytes.len() % WORD) % WORD;
    out.resize(out.len() + padding, 0);
    debug_assert_eq!((out.len() - start) % WORD, 0, "a tail is whole words");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_big_endian_and_right_aligned() {
        assert_eq!(uint(1)[31], 1);
        assert_eq!(uint(u128::MAX)[..16], [0u8; 16]);
        let word = address(&Address([0xAB; 20]));
        assert_eq!(word[..12], [0u8; 12]);
        assert_eq!(word[12..], [0xAB; 20]);
        let mut out = Vec::new();
        push_bytes(&mut out, &[7u8; 65]);
        assert_eq!(out.len(), 32 + 96);
        assert_eq!(out[31], 65);
        // transfer(address,uint256) is the best-known selector.
        assert_eq!(
            selector("transfer(address,uint256)"),
            [0xa9, 0x05, 0x9c, 0xbb]
        );
    }
}
