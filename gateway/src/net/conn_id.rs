//! Connection ids and the generational slab that hands them out.
//!
//! A `ConnId` is a u64: gateway thread index (8 bits) | slot generation (24 bits) |
//! slab slot (32 bits). Guarantees: an id names exactly one connection for its whole
//! life; once that connection is removed its slot's generation moves on, so a stale id
//! (held by the engine or the route table) never reaches the connection that reuses the
//! slot; it is simply not found.

use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

const SLOT_BITS: u32 = 32;
const GENERATION_BITS: u32 = 24;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

impl ConnId {
    pub fn new(thread_index: u8, generation: u32, slot: u32) -> ConnId {
        debug_assert!(generation <= GENERATION_MASK);
        ConnId(
            (u64::from(thread_index) << (SLOT_BITS + GENERATION_BITS))
                | (u64::from(generation & GENERATION_MASK) << SLOT_BITS)
                | u64::from(slot),
        )
    }

    pub fn from_u64(raw: u64) -> ConnId {
        ConnId(raw)
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    pub fn thread_index(self) -> u8 {
        (self.0 >> (SLOT_BITS + GENERATION_BITS)) as u8
    }

    pub fn generation(self) -> u32 {
        ((self.0 >> SLOT_BITS) as u32) & GENERATION_MASK
    }

    pub fn slot(self) -> u32 {
        self.0 as u32
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conn{}:{}/{}",
            self.thread_index(),
            self.slot(),
            self.generation()
        )
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

struct SlotEntry<T> {
    generation: u32,
    value: Option<T>,
}

/// A slab of at most `capacity` values addressed by `ConnId`, allocated up front.
pub struct ConnSlab<T> {
    thread_index: u8,
    entries: Vec<SlotEntry<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> ConnSlab<T> {
    pub fn with_capacity(thread_index: u8, capacity: usize) -> ConnSlab<T> {
        assert!(capacity >= 1 && capacity <= u32::MAX as usize);
        let mut entries = Vec::with_capacity(capacity);
        for _ in 0..capacity {
            entries.push(SlotEntry {
                generation: 0,
                value: None,
            });
        }
        // Pop from the end: slot 0 first.
        let free = (0..capacity as u32).rev().collect();
        ConnSlab {
            thread_index,
            entries,
            free,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts a value built from its id; None when the slab is full.
    pub fn insert_with(&mut self, make: impl FnOnce(ConnId) -> T) -> Option<ConnId> {
        let slot = self.free.pop()?;
        let entry = &mut self.entries[slot as usize];
        assert!(entry.value.is_none(), "free slot {slot} is occupied");
        let id = ConnId::new(self.thread_index, entry.generation, slot);
        entry.value = Some(make(id));
        self.len += 1;
        Some(id)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        if id.thread_index() != self.thread_index {
            return None;
        }
        let entry = self.entries.get_mut(id.slot() as usize)?;
        if entry.generation != id.generation() {
            return None;
        }
        entry.value.as_mut()
    }

    pub fn contains(&self, id: ConnId) -> bool {
        id.thread_index() == self.thread_index
            && self
                .entries
                .get(id.slot() as usize)
                .is_some_and(|entry| entry.generation == id.generation() && entry.value.is_some())
    }

    /// The id of the value in `slot`, if any (backends that key by slot use it).
    pub fn id_at(&self, slot: u32) -> Option<ConnId> {
        let entry = self.entries.get(slot as usize)?;
        entry.value.as_ref()?;
        Some(ConnId::new(self.thread_index, entry.generation, slot))
    }

    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        if !self.contains(id) {
            return None;
        }
        let entry = &mut self.entries[id.slot() as usize];
        let value = entry.value.take();
        debug_assert!(value.is_some());
        entry.generation = (entry.generation + 1) & GENERATION_MASK;
        self.free.push(id.slot());
        self.len -= 1;
        assert!(self.free.len() + self.len == self.entries.len());
        value
    }

    /// Ids of every value, for sweeps (idle timeouts, shutdown).
    pub fn ids(&self) -> Vec<ConnId> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.value.is_some())
            .map(|(slot, entry)| ConnId::new(self.thread_index, entry.generation, slot as u32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_its_fields() {
        let id = ConnId::new(7, 0x00ab_cdef, 0xdead_beef);
        assert_eq!(id.thread_index(), 7);
        assert_eq!(id.generation(), 0x00ab_cdef);
        assert_eq!(id.slot(), 0xdead_beef);
        assert_eq!(ConnId::from_u64(id.as_u64()), id);
    }

    #[test]
    fn stale_id_never_reaches_the_slot_reuser() {
        let mut slab = ConnSlab::with_capacity(3, 1);
        let first = slab.insert_with(|_| "first").unwrap();
        assert!(slab.insert_with(|_| "full").is_none());
        assert_eq!(slab.remove(first), Some("first"));
        let second = slab.insert_with(|_| "second").unwrap();
        assert_eq!(first.slot(), second.slot());
        assert_ne!(first, second);
        assert!(slab.get_mut(first).is_none());
        assert!(slab.remove(first).is_none());
        assert_eq!(slab.get_mut(second), Some(&mut "second"));
        assert!(slab
            .get_mut(ConnId::new(4, second.generation(), second.slot()))
            .is_none());
    }
}
