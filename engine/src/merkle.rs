//! R-BLOCK-2: the BLAKE3 Merkle root over a block's session receipts, computed
//! incrementally so that sealing a block with millions of receipts costs O(log n).
//!
//! Rule (so that anyone can recompute it):
//! - leaf  = BLAKE3-keyed(LEAF_KEY, session_id u64 LE || user [20] || provider [20] ||
//!   model u32 LE || tokens u64 LE || price_wei_per_token u128 LE || elapsed_ms u64 LE
//!   || report_digest [32] || 20 zero bytes), 136 bytes
//! - node  = BLAKE3-keyed(NODE_KEY, left [32] || right [32])   (64 bytes: one compression)
//! - LEAF_KEY and NODE_KEY are the ASCII strings below, zero-padded to 32 bytes; the
//!   two keys separate leaves from nodes, so no leaf can pose as a node.
//! - Leaves are appended in the order the reports were accepted. They form perfect
//!   subtrees ("peaks", as in a Merkle mountain range): each append merges equal-height
//!   peaks. The root bags the peaks from the right: with peaks p1 (tallest, oldest)
//!   .. pk, root = node(p1, node(p2, ... node(pk-1, pk))). One leaf: the leaf itself.
//!   No receipt: 32 zero bytes.

use crate::types::{Address, ModelId, SessionId};
use bincode::{Decode, Encode};

pub const LEAF_KEY: [u8; 32] = *b"yellowstone/receipt-leaf/v1\0\0\0\0\0";
pub const NODE_KEY: [u8; 32] = *b"yellowstone/merkle-node/v1\0\0\0\0\0\0";

/// One credited session, as committed in the block's Merkle root.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Receipt {
    pub session: SessionId,
    pub user: Address,
    pub provider: Address,
    pub model: ModelId,
    pub tokens: u64,
    pub price_wei_per_token: u128,
    pub elapsed_ms: u64,
    pub report_digest: [u8; 32],
}

impl Receipt {
    pub fn leaf_hash(&self) -> [u8; 32] {
        let mut bytes = [0u8; 136];
        bytes[0..8].copy_from_slice(&self.session.to_le_bytes());
        bytes[8..28].copy_from_slice(&self.user.0);
        bytes[28..48].copy_from_slice(&self.provider.0);
        bytes[48..52].copy_from_slice(&self.model.to_le_bytes());
        bytes[52..60].copy_from_slice(&self.tokens.to_le_bytes());
        bytes[60..76].copy_from_slice(&self.price_wei_per_token.to_le_bytes());
        bytes[76..84].copy_from_slice(&self.elapsed_ms.to_le_bytes());
        bytes[84..116].copy_from_slice(&self.report_digest);
        // The last 20 bytes stay zero: 136 bytes keep the layout 8-aligned.
        *blake3::keyed_hash(&LEAF_KEY, &bytes).as_bytes()
    }
}

pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(left);
    bytes[32..].copy_from_slice(right);
    *blake3::keyed_hash(&NODE_KEY, &bytes).as_bytes()
}

/// Peaks of perfect subtrees, tallest first; at most 64 for any count of leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct MerkleAccumulator {
    peaks: Vec<(u8, [u8; 32])>,
    leaves: u64,
}

impl MerkleAccumulator {
    pub fn push(&mut self, leaf: [u8; 32]) {
        let mut current = (0u8, leaf);
        while let Some(&(height, hash)) = self.peaks.last() {
            if height != current.0 {
                break;
            }
            self.peaks.pop();
            current = (height + 1, node_hash(&hash, &current.1));
        }
        self.peaks.push(current);
        self.leaves += 1;
        debug_assert!(self.peaks.len() as u32 == self.leaves.count_ones());
    }

    pub fn leaves(&self) -> u64 {
        self.leaves
    }

    pub fn root(&self) -> [u8; 32] {
        let mut peaks = self.peaks.iter().rev();
        let Some(&(_, mut acc)) = peaks.next() else {
            return [0u8; 32];
        };
        for (_, peak) in peaks {
            acc = node_hash(peak, &acc);
        }
        acc
    }

    /// Returns the root and starts a new block.
    pub fn take_root(&mut self) -> ([u8; 32], u64) {
        let out = (self.root(), self.leaves);
        self.peaks.clear();
        self.leaves = 0;
        out
    }
}

/// The same root computed naively from all leaves, for tests and for auditors.
pub fn root_of(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return [0u8; 32];
    }
    // Split into perfect subtrees by the binary decomposition of the count.
    let mut peaks = Vec::new();
    let mut start = 0usize;
    for bit in (0..usize::BITS).rev() {
        let size = 1usize << bit;
        if leaves.len() & size != 0 {
            peaks.push(perfect_root(&leaves[start..start + size]));
            start += size;
        }
    }
    let mut acc = *peaks.last().expect("non-empty");
    for peak in peaks.iter().rev().skip(1) {
        acc = node_hash(peak, &acc);
    }
    acc
}

fn perfect_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let half = leaves.len() / 2;
    node_hash(
        &perfect_root(&leaves[..half]),
        &perfect_root(&leaves[half..]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_block_2_incremental_root_equals_naive_root() {
        let mut acc = MerkleAccumulator::default();
        let mut leaves = Vec::new();
        assert_eq!(acc.root(), [0u8; 32]);
        for i in 0..100u64 {
            let leaf = *blake3::hash(&i.to_le_bytes()).as_bytes();
            leaves.push(leaf);
            acc.push(leaf);
            assert_eq!(acc.root(), root_of(&leaves), "after {} leaves", i + 1);
        }
        assert_eq!(leaves[0], root_of(&leaves[..1]));
        let (root, count) = acc.take_root();
        assert_eq!(count, 100);
        assert_eq!(root, root_of(&leaves));
        assert_eq!(acc.root(), [0u8; 32]);
    }
}
