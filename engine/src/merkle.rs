//! R-BLOCK-2: the BLAKE3 Merkle root over a block's session receipts, computed
//! incrementally so that sealing a block with millions of receipts costs O(log n).
//!
//! Rule (so that anyone can recompute it):
//! - leaf  = BLAKE3("yellowstone/receipt/v1" || session_id u64 LE || user [20] ||
//!           provider [20] || model u32 LE || tokens u64 LE || price_wei_per_token
//!           u128 LE || elapsed_ms u64 LE || report_digest [32])
//! - node  = BLAKE3("yellowstone/node/v1" || left [32] || right [32])
//! - Leaves are appended in the order the reports were accepted. They form perfect
//!   subtrees ("peaks", as in a Merkle mountain range): each append merges equal-height
//!   peaks. The root bags the peaks from the right: with peaks p1 (tallest, oldest)
//!   .. pk, root = node(p1, node(p2, ... node(pk-1, pk))). One leaf: the leaf itself.
//!   No receipt: 32 zero bytes.

use crate::types::{Address, ModelId, SessionId};
use bincode::{Decode, Encode};

const LEAF_TAG: &[u8] = b"yellowstone/receipt/v1";
const NODE_TAG: &[u8] = b"yellowstone/node/v1";

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
        let mut hasher = blake3::Hasher::new();
        hasher.update(LEAF_TAG);
        hasher.update(&self.session.to_le_bytes());
        hasher.update(&self.user.0);
        hasher.update(&self.provider.0);
        hasher.update(&self.model.to_le_bytes());
        hasher.update(&self.tokens.to_le_bytes());
        hasher.update(&self.price_wei_per_token.to_le_bytes());
        hasher.update(&self.elapsed_ms.to_le_bytes());
        hasher.update(&self.report_digest);
        *hasher.finalize().as_bytes()
    }
}

pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(NODE_TAG);
    hasher.update(left);
    hasher.update(right);
    *hasher.finalize().as_bytes()
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
