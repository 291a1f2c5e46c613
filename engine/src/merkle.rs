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
//!
//! Speed (issue 18 item 5): the accumulator keeps up to [`LANES`] receipts unhashed and
//! hashes them together with BLAKE3's many-input SIMD kernel (16 lanes on AVX-512, 8 on
//! AVX2, 4 on SSE4.1): the first two blocks of every leaf at once, then each leaf's
//! last (8-byte) block on its own; when the 16 leaves form a perfect subtree, its 15
//! nodes level by level, several per call. The bytes hashed, the leaves, the nodes
//! and so the roots are exactly those of the rule above (tests compare them with
//! `blake3::keyed_hash`); a snapshot encodes the accumulator as if every pending leaf
//! had been pushed, so its bytes and the state hash are those of one-by-one hashing.

use crate::types::{Address, ModelId, SessionId};
use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};
// `blake3::platform` is the crate's own dispatch to its SIMD kernels (hidden from its
// docs, "for benchmarks"); engine/Cargo.toml pins blake3 exactly so that it cannot
// change under us, and the tests below check every path against `keyed_hash`.
use blake3::platform::{le_bytes_from_words_32, words_from_le_bytes_32, Platform};
use blake3::IncrementCounter;

/// BLAKE3 key of a receipt leaf's hash (R-BLOCK-2, `docs/PROTOCOL.md`, "Receipts
/// and the Merkle root").
pub const LEAF_KEY: [u8; 32] = *b"yellowstone/receipt-leaf/v1\0\0\0\0\0";
/// BLAKE3 key of an inner node's hash (the same section).
pub const NODE_KEY: [u8; 32] = *b"yellowstone/merkle-node/v1\0\0\0\0\0\0";

/// Receipts hashed together: the lanes of BLAKE3's widest (AVX-512) kernel.
pub const LANES: usize = 16;
/// A receipt leaf's input, bytes.
pub const RECEIPT_LEN: usize = 136;

// BLAKE3's domain flags (BLAKE3 specification, section 2.1; checked by the tests,
// which compare with `blake3::keyed_hash`).
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 2;
const ROOT: u8 = 8;
const KEYED_HASH: u8 = 16;

/// One credited session, as committed in the block's Merkle root.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Receipt {
    /// The session credited.
    pub session: SessionId,
    /// Its user.
    pub user: Address,
    /// Its provider.
    pub provider: Address,
    /// Its model.
    pub model: ModelId,
    /// Tokens credited for the session.
    pub tokens: u64,
    /// The session's price (the provider's bid when matched), wei per token.
    pub price_wei_per_token: u128,
    /// The report's elapsed time, ms.
    pub elapsed_ms: u64,
    /// The digest of the user's signed report.
    pub report_digest: [u8; 32],
}

impl Receipt {
    /// The leaf's input: the 136 bytes of the rule above.
    pub fn bytes(&self) -> [u8; RECEIPT_LEN] {
        let mut bytes = [0u8; RECEIPT_LEN];
        bytes[0..8].copy_from_slice(&self.session.to_le_bytes());
        bytes[8..28].copy_from_slice(&self.user.0);
        bytes[28..48].copy_from_slice(&self.provider.0);
        bytes[48..52].copy_from_slice(&self.model.to_le_bytes());
        bytes[52..60].copy_from_slice(&self.tokens.to_le_bytes());
        bytes[60..76].copy_from_slice(&self.price_wei_per_token.to_le_bytes());
        bytes[76..84].copy_from_slice(&self.elapsed_ms.to_le_bytes());
        bytes[84..116].copy_from_slice(&self.report_digest);
        // The last 20 bytes stay zero: 136 bytes keep the layout 8-aligned.
        bytes
    }

    /// The leaf, one receipt at a time (the reference for auditors and tests).
    pub fn leaf_hash(&self) -> [u8; 32] {
        *blake3::keyed_hash(&LEAF_KEY, &self.bytes()).as_bytes()
    }
}

/// `node = BLAKE3-keyed(NODE_KEY, left || right)`: one compression of one block.
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(left);
    block[32..].copy_from_slice(right);
    let mut cv = words_from_le_bytes_32(&NODE_KEY);
    Platform::detect().compress_in_place(
        &mut cv,
        &block,
        64,
        0,
        KEYED_HASH | CHUNK_START | CHUNK_END | ROOT,
    );
    le_bytes_from_words_32(&cv)
}

/// The leaves of `receipts` (at most [`LANES`]) into `out`, several at once.
fn leaf_hashes(platform: Platform, receipts: &[[u8; RECEIPT_LEN]], out: &mut [[u8; 32]]) {
    const NONE: [u8; 128] = [0; 128];
    let n = receipts.len();
    debug_assert!(n <= LANES && out.len() == n);
    let mut heads: [&[u8; 128]; LANES] = [&NONE; LANES];
    for (head, receipt) in heads.iter_mut().zip(receipts) {
        *head = receipt[..128].try_into().expect("a receipt has 136 bytes");
    }
    // Blocks 1 and 2 of every leaf (no chunk end: block 3 follows).
    platform.hash_many(
        &heads[..n],
        &words_from_le_bytes_32(&LEAF_KEY),
        0,
        IncrementCounter::No,
        KEYED_HASH,
        CHUNK_START,
        0,
        out.as_flattened_mut(),
    );
    // Block 3: the last 8 bytes, zero-padded, which ends the chunk and is the root.
    for (leaf, receipt) in out.iter_mut().zip(receipts) {
        let mut cv = words_from_le_bytes_32(leaf);
        let mut block = [0u8; 64];
        block[..8].copy_from_slice(&receipt[128..]);
        platform.compress_in_place(&mut cv, &block, 8, 0, KEYED_HASH | CHUNK_END | ROOT);
        *leaf = le_bytes_from_words_32(&cv);
    }
}

/// The nodes over adjacent pairs of `children` into `out` (half as many), several at once.
fn node_hashes(platform: Platform, children: &[[u8; 32]], out: &mut [[u8; 32]]) {
    const NONE: [u8; 64] = [0; 64];
    debug_assert!(children.len() == 2 * out.len() && out.len() <= LANES / 2);
    let mut pairs: [&[u8; 64]; LANES / 2] = [&NONE; LANES / 2];
    for (pair, bytes) in pairs
        .iter_mut()
        .zip(children.as_flattened().chunks_exact(64))
    {
        *pair = bytes.try_into().expect("chunks of 64");
    }
    platform.hash_many(
        &pairs[..out.len()],
        &words_from_le_bytes_32(&NODE_KEY),
        0,
        IncrementCounter::No,
        KEYED_HASH,
        CHUNK_START,
        CHUNK_END | ROOT,
        out.as_flattened_mut(),
    );
}

/// Peaks of perfect subtrees, tallest first; at most 64 for any count of leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
struct Peaks {
    peaks: Vec<(u8, [u8; 32])>,
    leaves: u64,
}

impl Peaks {
    /// Appends a perfect subtree of `2^height` leaves.
    fn push(&mut self, height: u8, hash: [u8; 32]) {
        debug_assert!(self.leaves.trailing_zeros() >= height as u32);
        let mut current = (height, hash);
        while let Some(&(peak_height, peak)) = self.peaks.last() {
            if peak_height != current.0 {
                break;
            }
            self.peaks.pop();
            current = (peak_height + 1, node_hash(&peak, &current.1));
        }
        self.peaks.push(current);
        self.leaves += 1 << height;
        debug_assert!(self.peaks.len() as u32 == self.leaves.count_ones());
    }
}

/// R-BLOCK-2's incremental root: the peaks of the leaves hashed so far and up to
/// [`LANES`] - 1 receipts not hashed yet, which follow them in order.
#[derive(Clone, Debug, Default)]
pub struct MerkleAccumulator {
    tree: Peaks,
    pending: Vec<[u8; RECEIPT_LEN]>,
}

impl MerkleAccumulator {
    /// Appends `receipt`'s leaf (hashed with the next ones, or when the root is read).
    pub fn push_receipt(&mut self, receipt: &Receipt) {
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(LANES);
        }
        self.pending.push(receipt.bytes());
        if self.pending.len() == LANES {
            self.flush();
        }
    }

    /// Appends a leaf already hashed (after any pending receipts, so order is kept).
    pub fn push(&mut self, leaf: [u8; 32]) {
        self.flush();
        self.tree.push(0, leaf);
    }

    /// Hashes the pending receipts into the peaks.
    fn flush(&mut self) {
        let n = self.pending.len();
        if n == 0 {
            return;
        }
        let platform = Platform::detect();
        let mut leaves = [[0u8; 32]; LANES];
        leaf_hashes(platform, &self.pending, &mut leaves[..n]);
        self.pending.clear();
        if n == LANES && self.tree.leaves.is_multiple_of(LANES as u64) {
            // The 16 leaves are one perfect subtree: its nodes level by level.
            let mut level = leaves;
            let mut width = LANES;
            while width > 1 {
                let mut up = [[0u8; 32]; LANES / 2];
                node_hashes(platform, &level[..width], &mut up[..width / 2]);
                width /= 2;
                level[..width].copy_from_slice(&up[..width]);
            }
            self.tree.push(LANES.trailing_zeros() as u8, level[0]);
        } else {
            for leaf in &leaves[..n] {
                self.tree.push(0, *leaf);
            }
        }
    }

    /// The accumulator with every pending receipt hashed in: what a snapshot holds.
    fn flushed(&self) -> std::borrow::Cow<'_, Peaks> {
        if self.pending.is_empty() {
            std::borrow::Cow::Borrowed(&self.tree)
        } else {
            let mut copy = self.clone();
            copy.flush();
            std::borrow::Cow::Owned(copy.tree)
        }
    }

    /// Receipts added so far, hashed or pending.
    pub fn leaves(&self) -> u64 {
        self.tree.leaves + self.pending.len() as u64
    }

    /// The Merkle root of every receipt added (32 zero bytes when there is none).
    pub fn root(&self) -> [u8; 32] {
        let tree = self.flushed();
        let mut peaks = tree.peaks.iter().rev();
        let Some(&(_, mut acc)) = peaks.next() else {
            return [0u8; 32];
        };
        for (_, peak) in peaks {
            acc = node_hash(peak, &acc);
        }
        acc
    }

    /// Returns the root and the count of leaves, and starts a new block.
    pub fn take_root(&mut self) -> ([u8; 32], u64) {
        self.flush();
        let out = (self.root(), self.tree.leaves);
        self.tree.peaks.clear();
        self.tree.leaves = 0;
        out
    }
}

/// Equal when they commit to the same leaves, hashed or pending.
impl PartialEq for MerkleAccumulator {
    fn eq(&self, other: &Self) -> bool {
        self.flushed() == other.flushed()
    }
}

impl Eq for MerkleAccumulator {}

/// Encoded as the peaks with every pending receipt hashed in: the bytes (and so the
/// state hash) of the accumulator that hashed each leaf as it came.
impl Encode for MerkleAccumulator {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.flushed().encode(encoder)
    }
}

impl<Context> Decode<Context> for MerkleAccumulator {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(MerkleAccumulator {
            tree: Peaks::decode(decoder)?,
            pending: Vec::new(),
        })
    }
}

bincode::impl_borrow_decode!(MerkleAccumulator);

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

    fn receipt(i: u64) -> Receipt {
        let h = *blake3::hash(&i.to_le_bytes()).as_bytes();
        Receipt {
            session: i,
            user: Address(h[..20].try_into().unwrap()),
            provider: Address(h[12..].try_into().unwrap()),
            model: i as u32 % 7,
            tokens: i * 31,
            price_wei_per_token: (i as u128) << 70 | 0x1234,
            elapsed_ms: i ^ 0xABCD,
            report_digest: *blake3::hash(&h).as_bytes(),
        }
    }

    /// The accumulator of before issue 18's batching: one leaf at a time.
    fn one_by_one(receipts: &[Receipt]) -> Peaks {
        let mut tree = Peaks::default();
        for r in receipts {
            tree.push(0, r.leaf_hash());
        }
        tree
    }

    #[test]
    fn r_block_2_simd_leaves_and_nodes_equal_keyed_hash() {
        let platform = Platform::detect();
        for n in 0..=LANES {
            let receipts: Vec<[u8; RECEIPT_LEN]> = (0..n as u64)
                .map(|i| receipt(i * 977 + n as u64).bytes())
                .collect();
            let mut out = vec![[0u8; 32]; n];
            leaf_hashes(platform, &receipts, &mut out);
            for (bytes, leaf) in receipts.iter().zip(&out) {
                assert_eq!(leaf, blake3::keyed_hash(&LEAF_KEY, bytes).as_bytes());
            }
            if n % 2 == 0 {
                let mut nodes = vec![[0u8; 32]; n / 2];
                node_hashes(platform, &out, &mut nodes);
                for (pair, node) in out.chunks_exact(2).zip(&nodes) {
                    let mut block = [0u8; 64];
                    block[..32].copy_from_slice(&pair[0]);
                    block[32..].copy_from_slice(&pair[1]);
                    assert_eq!(node, blake3::keyed_hash(&NODE_KEY, &block).as_bytes());
                    assert_eq!(*node, node_hash(&pair[0], &pair[1]));
                }
            }
        }
        // Every platform the machine has, not only the fastest.
        for platform in [
            Some(Platform::portable()),
            Platform::sse2(),
            Platform::sse41(),
            Platform::avx2(),
            Platform::avx512(),
        ]
        .into_iter()
        .flatten()
        {
            let receipts: Vec<[u8; RECEIPT_LEN]> =
                (0..LANES as u64).map(|i| receipt(i).bytes()).collect();
            let mut out = [[0u8; 32]; LANES];
            leaf_hashes(platform, &receipts, &mut out);
            for (bytes, leaf) in receipts.iter().zip(&out) {
                assert_eq!(leaf, blake3::keyed_hash(&LEAF_KEY, bytes).as_bytes());
            }
        }
    }

    #[test]
    fn r_block_2_incremental_root_equals_naive_root() {
        let mut acc = MerkleAccumulator::default();
        let mut leaves = Vec::new();
        let mut receipts = Vec::new();
        assert_eq!(acc.root(), [0u8; 32]);
        for i in 0..300u64 {
            let r = receipt(i);
            leaves.push(r.leaf_hash());
            // Leaves already hashed may come between receipts: order is kept.
            if i % 37 == 5 {
                acc.push(r.leaf_hash());
            } else {
                acc.push_receipt(&r);
            }
            receipts.push(r);
            assert_eq!(acc.leaves(), i + 1);
            assert_eq!(acc.root(), root_of(&leaves), "after {} leaves", i + 1);
            assert_eq!(*acc.flushed(), one_by_one(&receipts));
        }
        assert_eq!(leaves[0], root_of(&leaves[..1]));
        let (root, count) = acc.take_root();
        assert_eq!(count, 300);
        assert_eq!(root, root_of(&leaves));
        assert_eq!(acc.root(), [0u8; 32]);
        assert_eq!(acc.leaves(), 0);
    }

    /// A snapshot taken with receipts pending holds the bytes of one-by-one hashing,
    /// and the restored accumulator (nothing pending, leaves no longer a multiple of
    /// 16) goes on to the same roots.
    #[test]
    fn r_block_2_snapshot_with_pending_receipts_round_trips() {
        let config = bincode::config::standard();
        for cut in [0u64, 1, 15, 16, 17, 40] {
            let mut acc = MerkleAccumulator::default();
            let receipts: Vec<Receipt> = (0..100).map(receipt).collect();
            for r in &receipts[..cut as usize] {
                acc.push_receipt(r);
            }
            let bytes = bincode::encode_to_vec(&acc, config).unwrap();
            let reference =
                bincode::encode_to_vec(one_by_one(&receipts[..cut as usize]), config).unwrap();
            assert_eq!(bytes, reference, "cut {cut}");
            let (mut restored, _): (MerkleAccumulator, _) =
                bincode::decode_from_slice(&bytes, config).unwrap();
            assert_eq!(restored, acc);
            for r in &receipts[cut as usize..] {
                acc.push_receipt(r);
                restored.push_receipt(r);
                assert_eq!(restored.root(), acc.root());
            }
            assert_eq!(restored, acc);
            assert_eq!(restored.take_root(), acc.take_root());
        }
    }
}
