//! The address index: address -> account number (issue 18 item 5).
//!
//! Accounts are never removed, so the index only grows: open addressing with linear
//! probing over one array of `u64` slots, each holding an account number (low 32 bits)
//! and the high 32 bits of its address's hash (a tag), at most 3/4 full. A lookup
//! reads one slot (one cache line in the common case) and the account only when the
//! tag matches, so almost never an account that is not the one sought. The slot of an
//! address depends on its hash alone, so [`AddressIndex::touch`] can read it ahead of
//! time: `Engine::apply_batch` touches the slots of a group of commands together, then
//! their accounts, so that the cache misses overlap (hashbrown, used before, offers
//! no way to reach a key's slot without probing it).
//!
//! The hash is `types::address_hash`, a fixed mix: addresses are keccak outputs and
//! accounts are created only by the operator or by bounded provider registration, so
//! no client can choose colliding keys (see BENCHMARKS.md, issue 18).

use crate::state::AccountIdx;

/// A slot no account uses: its account number is `u32::MAX`, which no account has
/// (`accounts_max` is a `u32` and numbers are below it).
const EMPTY: u64 = u64::MAX;
const SLOTS_MIN: usize = 16;

/// Address → account number, an open-addressing table of `u64` slots holding only
/// account numbers (the key is the account's own address).
#[derive(Clone, Debug, Default)]
pub struct AddressIndex {
    /// A power of two long (or empty); `tag << 32 | account`.
    slots: Vec<u64>,
    len: usize,
}

impl AddressIndex {
    /// An index sized for `accounts` accounts without growing.
    pub fn with_capacity(accounts: usize) -> AddressIndex {
        let mut index = AddressIndex::default();
        if accounts > 0 {
            index.slots = vec![EMPTY; slots_for(accounts)];
        }
        index
    }

    /// Accounts indexed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no account is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The account whose hash is `hash` and for which `is_it(account)` holds.
    #[inline]
    pub fn find(&self, hash: u64, is_it: impl Fn(AccountIdx) -> bool) -> Option<AccountIdx> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let tag = (hash >> 32) as u32;
        let mut i = hash as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == EMPTY {
                return None;
            }
            if (slot >> 32) as u32 == tag && is_it(slot as AccountIdx) {
                return Some(slot as AccountIdx);
            }
            i = (i + 1) & mask;
        }
    }

    /// Reads the first slot `hash` probes, so that a `find` soon after finds it in
    /// the cache. Changes nothing; returns the slot so that the read is kept.
    #[inline]
    pub fn touch(&self, hash: u64) -> u64 {
        match self.slots.len() {
            0 => EMPTY,
            n => self.slots[hash as usize & (n - 1)],
        }
    }

    /// Adds `account` under `hash`; the caller knows that no account with the same
    /// address is in the index. `hash_of(a)` gives account `a`'s hash, to move the
    /// slots when the index grows.
    pub fn insert_unique(
        &mut self,
        hash: u64,
        account: AccountIdx,
        hash_of: impl Fn(AccountIdx) -> u64,
    ) {
        debug_assert!(account != u32::MAX, "u32::MAX marks an empty slot");
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow(hash_of);
        }
        place(&mut self.slots, hash, account);
        self.len += 1;
    }

    fn grow(&mut self, hash_of: impl Fn(AccountIdx) -> u64) {
        let mut slots = vec![EMPTY; slots_for(self.len + 1).max(self.slots.len() * 2)];
        for &slot in self.slots.iter().filter(|&&s| s != EMPTY) {
            place(&mut slots, hash_of(slot as AccountIdx), slot as AccountIdx);
        }
        self.slots = slots;
    }
}

/// Slots for `accounts` accounts at most 3/4 full: a power of two.
fn slots_for(accounts: usize) -> usize {
    (accounts.saturating_mul(4) / 3 + 1)
        .next_power_of_two()
        .max(SLOTS_MIN)
}

fn place(slots: &mut [u64], hash: u64, account: AccountIdx) {
    let mask = slots.len() - 1;
    let mut i = hash as usize & mask;
    while slots[i] != EMPTY {
        i = (i + 1) & mask;
    }
    slots[i] = (hash >> 32) << 32 | account as u64;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{address_hash, Address};
    use std::collections::HashMap;

    fn address(n: u32) -> Address {
        let h = blake3::hash(&n.to_le_bytes());
        Address(h.as_bytes()[..20].try_into().unwrap())
    }

    /// Against a std HashMap: every inserted address found with its number through
    /// every growth, absent ones not found, including under forced hash collisions.
    #[test]
    fn finds_what_was_inserted_and_nothing_else() {
        for collide in [false, true] {
            // With `collide`, hashes keep 8 bits of position (low 8 bits zero) and
            // 3 bits of tag: long probe runs and tags that match the wrong account.
            let hash = |a: &Address| {
                let h = address_hash(a);
                if collide {
                    h & 0x0000_0007_0000_FF00
                } else {
                    h
                }
            };
            let count = if collide { 1_000 } else { 3_000 };
            let mut addresses: Vec<Address> = Vec::new();
            let mut reference = HashMap::new();
            let mut index = AddressIndex::default();
            assert_eq!(index.find(hash(&address(0)), |_| true), None);
            for n in 0..count {
                let a = address(n);
                let idx = addresses.len() as AccountIdx;
                addresses.push(a);
                index.insert_unique(hash(&a), idx, |i| hash(&addresses[i as usize]));
                reference.insert(a, idx);
                assert_eq!(index.len(), reference.len());
                assert!(index.len() * 4 <= index.slots.len() * 3);
                if n % 97 == 0 || n < 40 {
                    for (a, &i) in &reference {
                        let found = index.find(hash(a), |j| addresses[j as usize] == *a);
                        assert_eq!(found, Some(i));
                    }
                    for m in 10_000..10_050 {
                        let absent = address(m);
                        let found = index.find(hash(&absent), |j| addresses[j as usize] == absent);
                        assert_eq!(found, None);
                    }
                }
            }
            let sized = {
                let mut sized = AddressIndex::with_capacity(addresses.len());
                let before = sized.slots.len();
                for (i, a) in addresses.iter().enumerate() {
                    sized.insert_unique(hash(a), i as AccountIdx, |j| hash(&addresses[j as usize]));
                }
                assert_eq!(sized.slots.len(), before, "with_capacity does not grow");
                sized
            };
            for (a, &i) in &reference {
                assert_eq!(
                    sized.find(hash(a), |j| addresses[j as usize] == *a),
                    Some(i)
                );
                let _ = sized.touch(hash(a));
            }
        }
    }
}
