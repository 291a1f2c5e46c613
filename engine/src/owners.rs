//! R-MATCH-7 (self-match prevention): who owns each queued RFC of a model, so that
//! matching finds, in O(log n), the first RFC in queue order that is *not* from a
//! given address.
//!
//! An RFC is never matched with a provider of its own address. A model's book holds
//! at most one offer per provider, so when the book's best offer is the head RFC's
//! own, its second best (if any) is someone else's. Only when the book holds the
//! user's own offer alone must matching look past that user's RFCs in the queue;
//! scanning for them would cost O(queue) per match (a user ahead of everyone with
//! many RFCs, and its own offer the only one, would make each honest RFC pay for the
//! scan). `QueueOwners` keeps, per user, its queued keys in order and each user's
//! first key in a set ordered like the queue: the first RFC not from `user` is the
//! first or second entry of that set.
//!
//! Derived from the queues and the RFCs (never encoded): rebuilt on restore.

use crate::state::AccountIdx;
use std::collections::BTreeSet;

/// A queue key: `(u128::MAX - balance at admission, arrival seq)` (R-RFC-2).
pub(crate) type QueueKey = (u128, u64);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct QueueOwners {
    /// (user, key) for every queued RFC of the model.
    by_user: BTreeSet<(AccountIdx, QueueKey)>,
    /// (key, user) of each user's first queued RFC: ordered like the queue.
    heads: BTreeSet<(QueueKey, AccountIdx)>,
}

impl QueueOwners {
    pub(crate) fn len(&self) -> usize {
        self.by_user.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    fn head_of(&self, user: AccountIdx) -> Option<QueueKey> {
        self.by_user
            .range((user, (0, 0))..=(user, (u128::MAX, u64::MAX)))
            .next()
            .map(|&(_, key)| key)
    }

    /// Records that `user`'s RFC is queued at `key`.
    pub(crate) fn insert(&mut self, user: AccountIdx, key: QueueKey) {
        let head = self.head_of(user);
        let inserted = self.by_user.insert((user, key));
        debug_assert!(inserted, "queue keys are unique");
        match head {
            Some(head) if head < key => {}
            Some(head) => {
                self.heads.remove(&(head, user));
                self.heads.insert((key, user));
            }
            None => {
                self.heads.insert((key, user));
            }
        }
        debug_assert_eq!(self.head_of(user), self.first_key_of(user));
    }

    /// Records that `user`'s RFC at `key` left the queue (no-op if it was not there).
    pub(crate) fn remove(&mut self, user: AccountIdx, key: QueueKey) {
        if !self.by_user.remove(&(user, key)) {
            return;
        }
        if self.heads.remove(&(key, user)) {
            if let Some(next) = self.head_of(user) {
                self.heads.insert((next, user));
            }
        }
        debug_assert_eq!(self.head_of(user), self.first_key_of(user));
    }

    /// The key of the first queued RFC (in queue order) whose user is not `user`.
    pub(crate) fn first_not_of(&self, user: AccountIdx) -> Option<QueueKey> {
        // `user` has at most one head: the answer is the first or second entry.
        self.heads
            .iter()
            .take(2)
            .find(|&&(_, owner)| owner != user)
            .map(|&(key, _)| key)
    }

    /// `user`'s head as the heads set records it (for the pairing assertions).
    fn first_key_of(&self, user: AccountIdx) -> Option<QueueKey> {
        self.heads
            .iter()
            .find(|&&(_, owner)| owner == user)
            .map(|&(key, _)| key)
    }

    /// Every (user, key) recorded, in user order (for the invariant check).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (AccountIdx, QueueKey)> + '_ {
        self.by_user.iter().copied()
    }

    /// One head per user with RFCs queued, and it is that user's first key.
    pub(crate) fn check(&self) {
        let mut users = 0;
        let mut last_user = None;
        for &(user, key) in &self.by_user {
            if last_user != Some(user) {
                users += 1;
                last_user = Some(user);
                assert!(
                    self.heads.contains(&(key, user)),
                    "user {user}'s head missing"
                );
            }
        }
        assert_eq!(
            users,
            self.heads.len(),
            "a head for a user with nothing queued"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_match_7_first_rfc_not_of_a_user_follows_the_queue() {
        let mut owners = QueueOwners::default();
        owners.insert(1, (0, 1));
        owners.insert(1, (0, 2));
        owners.insert(2, (5, 3));
        owners.insert(3, (1, 4));
        owners.check();
        assert_eq!(owners.first_not_of(1), Some((1, 4)));
        assert_eq!(owners.first_not_of(3), Some((0, 1)));
        owners.remove(3, (1, 4));
        assert_eq!(owners.first_not_of(1), Some((5, 3)));
        owners.remove(2, (5, 3));
        assert_eq!(owners.first_not_of(1), None);
        owners.remove(1, (0, 1));
        owners.check();
        assert_eq!(owners.first_not_of(2), Some((0, 2)));
        owners.remove(1, (0, 2));
        owners.remove(1, (0, 2)); // not there: a no-op
        assert!(owners.is_empty());
        owners.check();
    }
}
