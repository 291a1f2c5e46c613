//! R-CHAIN-1: the settlement of each epoch with the Compute Contract on a chain.
//!
//! An epoch is `settlement_epoch_blocks` blocks (a divisor of a day, so that an epoch
//! never straddles two days). When its last block is sealed (and, at a day's end,
//! after the day rolled so that the bootstrap bonus is in), the engine records a
//! [`SettlementRecord`]: the epoch's credited MOR wei, the bootstrap bonus it carries,
//! and a keccak-256 Merkle root over (provider, cumulative credited) for every
//! provider ever credited. The router signs it as EIP-712 typed data (crate
//! `yellowstone-contract`); here it is pure data, so replay reproduces it exactly.
//!
//! Merkle rule (OpenZeppelin `MerkleProof` / `StandardMerkleTree` compatible):
//! leaf = keccak256(keccak256(abi.encode(address provider, uint256 cumulative))),
//! leaves sorted ascending, each level pairs neighbours with the sorted-pair hash
//! keccak256(min(a, b) ‖ max(a, b)), an odd last node moves up unchanged; the root of
//! no leaf is 32 zero bytes (nothing can be claimed against it).

use crate::command::Effect;
use crate::engine::Engine;
use crate::money;
use crate::types::Address;
use bincode::{Decode, Encode};
use std::collections::VecDeque;
use tiny_keccak::{Hasher, Keccak};

/// What the router settles for one epoch (R-CHAIN-1). Amounts in MOR wei.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SettlementRecord {
    /// The epoch's number (R-CHAIN-1), from 0 at genesis.
    pub epoch: u64,
    /// The day the epoch belongs to (R-TIME-1).
    pub day: u64,
    /// The epoch's first block.
    pub first_block: u64,
    /// The epoch's last block (inclusive).
    pub last_block: u64,
    /// What the epoch's credit batches credited (after the day's cap).
    pub credited_wei: u128,
    /// Bootstrap bonus shared at the end of the day this epoch closes (else 0).
    pub bootstrap_wei: u128,
    /// Everything credited since genesis (batches and bonus): the sum of the leaves.
    pub credited_cumulative_wei: u128,
    /// Providers in the Merkle tree (ever credited).
    pub providers: u32,
    /// keccak Merkle root over every provider's cumulative credit (the module docs).
    pub merkle_root: [u8; 32],
}

/// The settlement bookkeeping kept in the engine's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct SettlementState {
    /// The next epoch to seal.
    pub next_epoch: u64,
    /// Ledger totals at the end of the last sealed epoch, to take the next one's part.
    pub credited_total_at_last_wei: u128,
    /// The ledger's bootstrap bonus total at the end of the last sealed epoch, wei.
    pub bootstrap_total_at_last_wei: u128,
    /// The most recent records, oldest first, at most `settlements_kept_max`.
    pub history: VecDeque<SettlementRecord>,
    /// (provider, cumulative credited) as of the last sealed epoch, by address: what
    /// a provider proves against that epoch's root.
    pub cumulative: Vec<(Address, u128)>,
}

impl SettlementState {
    /// The record of `epoch`, if it was sealed and is still kept.
    pub fn record(&self, epoch: u64) -> Option<&SettlementRecord> {
        let first = self.history.front()?.epoch;
        let record = self.history.get(epoch.checked_sub(first)? as usize)?;
        debug_assert_eq!(record.epoch, epoch);
        Some(record)
    }

    /// The last sealed record.
    pub fn last(&self) -> Option<&SettlementRecord> {
        self.history.back()
    }

    /// R-CHAIN-1 invariants, checked with the engine's: every epoch that ended is
    /// sealed and none that did not; the history is consecutive and ends with the
    /// last sealed epoch; the cumulative list is sorted, positive, sums to the last
    /// record's total and never exceeds what the ledger credited since.
    pub fn check(&self, block: u64, epoch_blocks: u64, ledger: &crate::ledger::Ledger) {
        assert_eq!(
            self.next_epoch,
            block / epoch_blocks,
            "an ended epoch is unsealed"
        );
        assert!(self
            .history
            .iter()
            .zip(self.history.iter().skip(1))
            .all(|(a, b)| b.epoch == a.epoch + 1
                && b.credited_cumulative_wei >= a.credited_cumulative_wei));
        match self.last() {
            Some(last) => {
                assert_eq!(last.epoch + 1, self.next_epoch);
                assert_eq!(
                    money::sum(self.cumulative.iter().map(|(_, wei)| *wei)),
                    Ok(last.credited_cumulative_wei)
                );
            }
            None => assert!(self.cumulative.is_empty() && self.next_epoch == 0),
        }
        assert!(self.cumulative.windows(2).all(|w| w[0].0 < w[1].0));
        for (provider, wei) in &self.cumulative {
            assert!(
                *wei > 0
                    && ledger
                        .credited_wei
                        .get(provider)
                        .is_some_and(|now| now >= wei)
            );
        }
    }
}

impl Engine {
    /// Seals the epoch that ended with the block just sealed, if one did.
    pub(crate) fn seal_epoch_if_due(&mut self, effects: &mut Vec<Effect>) {
        let epoch_blocks = self.state.config.settlement_epoch_blocks;
        debug_assert!(epoch_blocks > 0, "validated at start");
        if !self.state.block.is_multiple_of(epoch_blocks) {
            return;
        }
        let epoch = self.state.settlement.next_epoch;
        let last_block = self.state.block - 1;
        debug_assert_eq!((epoch + 1) * epoch_blocks, self.state.block);
        let ledger = &self.state.ledger;
        let settlement = &self.state.settlement;
        let cumulative: Vec<(Address, u128)> = ledger
            .credited_wei
            .iter()
            .filter(|(_, wei)| **wei > 0)
            .map(|(provider, wei)| (*provider, *wei))
            .collect();
        let record = SettlementRecord {
            epoch,
            day: last_block / crate::types::BLOCKS_PER_DAY,
            first_block: epoch * epoch_blocks,
            last_block,
            // R-MONEY-1: checked; the ledger's totals only grow, and their sum is
            // bounded by what was emitted (solvency), so a failure is a broken invariant.
            credited_wei: money::sub(
                ledger.credited_total_wei,
                settlement.credited_total_at_last_wei,
            )
            .expect("the ledger's credited total only grows"),
            bootstrap_wei: money::sub(
                ledger.bootstrap_total_wei,
                settlement.bootstrap_total_at_last_wei,
            )
            .expect("the ledger's bootstrap total only grows"),
            credited_cumulative_wei: money::add(
                ledger.credited_total_wei,
                ledger.bootstrap_total_wei,
            )
            .expect("credited + bootstrap is bounded by the emission (solvency)"),
            providers: cumulative.len() as u32,
            merkle_root: merkle_root(&leaves(&cumulative)),
        };
        debug_assert_eq!(
            money::sum(cumulative.iter().map(|(_, wei)| *wei)),
            Ok(record.credited_cumulative_wei)
        );
        let settlement = &mut self.state.settlement;
        settlement.credited_total_at_last_wei = ledger.credited_total_wei;
        settlement.bootstrap_total_at_last_wei = ledger.bootstrap_total_wei;
        settlement.next_epoch = epoch + 1;
        settlement.cumulative = cumulative;
        settlement.history.push_back(record.clone());
        while settlement.history.len() > self.state.config.settlements_kept_max as usize {
            settlement.history.pop_front();
        }
        effects.push(Effect::SettlementSealed {
            settlement: record,
            chain_id: self.state.config.settlement_chain_id,
            contract: self.state.config.settlement_contract,
        });
    }
}

/// keccak-256 of `bytes`.
pub fn keccak256(bytes: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak::v256();
    hasher.update(bytes);
    let mut out = [0u8; 32];
    hasher.finalize(&mut out);
    out
}

/// The leaf of (provider, cumulative): keccak256(keccak256(abi.encode(provider,
/// cumulative))), the 64-byte ABI encoding being the address left-padded to 32 bytes
/// and the amount as a big-endian uint256.
pub fn leaf_hash(provider: &Address, cumulative_wei: u128) -> [u8; 32] {
    let mut encoded = [0u8; 64];
    encoded[12..32].copy_from_slice(&provider.0);
    encoded[48..64].copy_from_slice(&cumulative_wei.to_be_bytes());
    keccak256(&keccak256(&encoded))
}

/// OpenZeppelin's commutative pair hash: keccak256 of the smaller then the larger.
pub fn hash_pair(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut buf = [0u8; 64];
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    buf[..32].copy_from_slice(low);
    buf[32..].copy_from_slice(high);
    keccak256(&buf)
}

/// The sorted leaves of a (provider, cumulative) list.
pub fn leaves(cumulative: &[(Address, u128)]) -> Vec<[u8; 32]> {
    let mut leaves: Vec<[u8; 32]> = cumulative
        .iter()
        .map(|(provider, wei)| leaf_hash(provider, *wei))
        .collect();
    leaves.sort_unstable();
    leaves
}

fn next_level(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [a, b] => hash_pair(a, b),
            [a] => *a,
            _ => unreachable!("chunks of two"),
        })
        .collect()
}

/// The root over sorted `leaves` (32 zero bytes for none).
pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    debug_assert!(leaves.is_sorted());
    if leaves.is_empty() {
        return [0; 32];
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

/// The proof (sibling hashes, leaf to root) of `leaf` among sorted `leaves`, or None
/// if it is not one of them.
pub fn merkle_proof(leaves: &[[u8; 32]], leaf: &[u8; 32]) -> Option<Vec<[u8; 32]>> {
    let mut index = leaves.binary_search(leaf).ok()?;
    let mut level = leaves.to_vec();
    let mut proof = Vec::new();
    while level.len() > 1 {
        let sibling = index ^ 1;
        if sibling < level.len() {
            proof.push(level[sibling]);
        }
        level = next_level(&level);
        index /= 2;
    }
    Some(proof)
}

/// What `MerkleProof.verify` computes: folds `proof` into `leaf` and compares.
pub fn verify_proof(proof: &[[u8; 32]], root: &[u8; 32], leaf: &[u8; 32]) -> bool {
    proof
        .iter()
        .fold(*leaf, |computed, sibling| hash_pair(&computed, sibling))
        == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: u8) -> Vec<(Address, u128)> {
        (1..=n)
            .map(|i| (Address([i; 20]), i as u128 * 1_000))
            .collect()
    }

    #[test]
    fn r_chain_1_every_leaf_proves_against_the_root_for_every_tree_size() {
        for n in 0..=17 {
            let cumulative = list(n);
            let leaves = leaves(&cumulative);
            let root = merkle_root(&leaves);
            for (provider, wei) in &cumulative {
                let leaf = leaf_hash(provider, *wei);
                let proof = merkle_proof(&leaves, &leaf).expect("a leaf of the tree");
                assert!(verify_proof(&proof, &root, &leaf), "n={n}");
                assert!(proof.len() <= 5);
                // Another amount or another provider does not prove.
                assert!(!verify_proof(&proof, &root, &leaf_hash(provider, wei + 1)));
                assert!(!verify_proof(
                    &proof,
                    &root,
                    &leaf_hash(&Address([0xAB; 20]), *wei)
                ));
            }
        }
        assert_eq!(merkle_root(&[]), [0; 32]);
        assert_eq!(merkle_proof(&[], &[1; 32]), None);
    }

    #[test]
    fn r_chain_1_leaf_is_the_double_keccak_of_the_abi_encoding() {
        // keccak256("") is the well-known c5d246...a470: the hasher is keccak, not SHA-3.
        assert_eq!(
            hex(&keccak256(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
        let provider = Address([0x11; 20]);
        let mut encoded = vec![0u8; 12];
        encoded.extend_from_slice(&provider.0);
        encoded.extend_from_slice(&[0u8; 16]);
        encoded.extend_from_slice(&7u128.to_be_bytes());
        assert_eq!(leaf_hash(&provider, 7), keccak256(&keccak256(&encoded)));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
