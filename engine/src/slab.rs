//! A slab with a FIFO free list: O(1) insert, lookup and removal by slot, and the
//! longest possible time before a freed slot is reused (so that an id recently
//! closed can still be told apart from one never issued).

use bincode::{Decode, Encode};
use std::collections::VecDeque;

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Slab<T> {
    entries: Vec<Option<T>>,
    free: VecDeque<u32>,
    len: u32,
    capacity_max: u32,
}

impl<T> Slab<T> {
    pub fn new(capacity_max: u32) -> Slab<T> {
        Slab {
            entries: Vec::new(),
            free: VecDeque::new(),
            len: 0,
            capacity_max,
        }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len >= self.capacity_max
    }

    /// The slot the next `insert` will use, or `None` when full.
    pub fn next_slot(&self) -> Option<u32> {
        if self.is_full() {
            return None;
        }
        Some(
            self.free
                .front()
                .copied()
                .unwrap_or(self.entries.len() as u32),
        )
    }

    pub fn insert(&mut self, value: T) -> Option<u32> {
        let slot = self.next_slot()?;
        if let Some(front) = self.free.pop_front() {
            debug_assert!(self.entries[front as usize].is_none());
            self.entries[front as usize] = Some(value);
        } else {
            self.entries.push(Some(value));
        }
        self.len += 1;
        Some(slot)
    }

    pub fn get(&self, slot: usize) -> Option<&T> {
        self.entries.get(slot).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.entries.get_mut(slot).and_then(Option::as_mut)
    }

    pub fn remove(&mut self, slot: usize) -> Option<T> {
        let value = self.entries.get_mut(slot)?.take()?;
        self.free.push_back(slot as u32);
        self.len -= 1;
        Some(value)
    }

    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(slot, entry)| entry.as_ref().map(|value| (slot, value)))
    }
}
