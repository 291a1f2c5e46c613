//! Timers of the hot path (probe deadlines, RFC expiries, session expiries) in a
//! hashed timing wheel of 1 ms ticks instead of B-trees (issue 18 item 5).
//!
//! - Each timer is `(deadline_ms, id)`, with `id` a slab id (`types::compose_id`): a
//!   slab slot holds at most one live timer of a wheel, so a timer's node is found
//!   by `slot_of(id)`, and insert and remove are O(1) with no allocation once the
//!   node array has grown to the slab's high-water mark.
//! - Nodes are kept in doubly-linked lists, one per wheel slot (`deadline mod
//!   WHEEL_SLOTS`). `pop_due(now)` walks the ticks from the cursor to `now` and fires,
//!   per tick, the due timers in `(deadline, id)` order: exactly the order of a
//!   `BTreeSet<(u64, u64)>`'s `pop_first`, so outputs are unchanged.
//! - A time jump of a whole turn or more scans the nodes once instead of the ticks.
//! - Encoding (snapshots, the state hash) is the sorted list of `(deadline, id)`:
//!   byte for byte what the `BTreeSet` it replaces encoded. The lists, the cursor and
//!   the due buffer are derived and rebuilt on decode.

use crate::types::slot_of;
use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

/// Slots of the wheel: 2^16 ticks of 1 ms (65.5 s a turn). A timer further ahead
/// waits in its slot's list and is passed over (one comparison) once per turn.
pub const WHEEL_SLOTS: usize = 1 << 16;
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    deadline_ms: u64,
    id: u64,
    prev: u32,
    next: u32,
    live: bool,
}

const EMPTY: Node = Node {
    deadline_ms: 0,
    id: 0,
    prev: NIL,
    next: NIL,
    live: false,
};

/// Deadlines (ms) of probes, RFCs and sessions by id, in a hashed wheel: O(1)
/// insert and remove, popped in `(deadline, id)` order (the module docs).
#[derive(Clone)]
pub struct TimerWheel {
    /// By slab slot (`slot_of(id)`).
    nodes: Vec<Node>,
    /// Head node of each wheel slot's list, `NIL` when empty.
    heads: Vec<u32>,
    /// No live timer has a deadline below the cursor (`u64::MAX` when empty).
    cursor_ms: u64,
    len: usize,
    /// Timers of the tick being fired, latest last-popped first (sorted descending).
    due: Vec<(u64, u64)>,
}

impl Default for TimerWheel {
    fn default() -> Self {
        TimerWheel::new()
    }
}

impl TimerWheel {
    /// An empty wheel.
    pub fn new() -> TimerWheel {
        TimerWheel {
            nodes: Vec::new(),
            heads: vec![NIL; WHEEL_SLOTS],
            cursor_ms: u64::MAX,
            len: 0,
            due: Vec::new(),
        }
    }

    /// Live timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn wheel_slot(deadline_ms: u64) -> usize {
        (deadline_ms as usize) & (WHEEL_SLOTS - 1)
    }

    /// Adds the timer `(deadline_ms, id)`. Panics (a logic error) if the id's slot
    /// already holds a live timer in this wheel.
    pub fn insert(&mut self, deadline_ms: u64, id: u64) {
        let slot = slot_of(id);
        if slot >= self.nodes.len() {
            self.nodes.resize(slot + 1, EMPTY);
        }
        assert!(
            !self.nodes[slot].live,
            "one live timer per slab slot and wheel"
        );
        let head = &mut self.heads[Self::wheel_slot(deadline_ms)];
        let next = *head;
        *head = slot as u32;
        if next != NIL {
            self.nodes[next as usize].prev = slot as u32;
        }
        self.nodes[slot] = Node {
            deadline_ms,
            id,
            prev: NIL,
            next,
            live: true,
        };
        self.cursor_ms = self.cursor_ms.min(deadline_ms);
        self.len += 1;
    }

    fn is_live(&self, deadline_ms: u64, id: u64) -> bool {
        self.nodes
            .get(slot_of(id))
            .is_some_and(|n| n.live && n.id == id && n.deadline_ms == deadline_ms)
    }

    /// Removes the timer `(deadline_ms, id)`; false if there is none.
    pub fn remove(&mut self, deadline_ms: u64, id: u64) -> bool {
        if !self.is_live(deadline_ms, id) {
            return false;
        }
        let slot = slot_of(id);
        let Node { prev, next, .. } = self.nodes[slot];
        if prev == NIL {
            self.heads[Self::wheel_slot(deadline_ms)] = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        self.nodes[slot] = EMPTY;
        self.len -= 1;
        true
    }

    /// Removes and returns the earliest timer due at `now_ms` (deadline ≤ now), by
    /// `(deadline, id)`, or `None`. Timers removed while a tick is being fired are
    /// skipped.
    #[inline]
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, u64)> {
        if self.due.is_empty() && self.cursor_ms > now_ms {
            return None; // the common case: nothing due since the last call
        }
        self.pop_due_slow(now_ms)
    }

    fn pop_due_slow(&mut self, now_ms: u64) -> Option<(u64, u64)> {
        loop {
            while let Some((deadline_ms, id)) = self.due.pop() {
                if self.remove(deadline_ms, id) {
                    return Some((deadline_ms, id));
                }
            }
            if self.len == 0 {
                self.cursor_ms = u64::MAX;
                return None;
            }
            if self.cursor_ms > now_ms {
                return None;
            }
            self.gather_due(now_ms);
            if self.due.is_empty() {
                return None;
            }
        }
    }

    /// Fills `due` with the timers of the first tick in `cursor..=now` that has any
    /// (or, after a jump of a whole turn, with every timer due), sorted descending.
    fn gather_due(&mut self, now_ms: u64) {
        debug_assert!(self.due.is_empty() && self.cursor_ms <= now_ms);
        if now_ms - self.cursor_ms >= WHEEL_SLOTS as u64 - 1 {
            self.due.extend(
                self.nodes
                    .iter()
                    .filter(|n| n.live && n.deadline_ms <= now_ms)
                    .map(|n| (n.deadline_ms, n.id)),
            );
            self.cursor_ms = now_ms.saturating_add(1);
        } else {
            let mut next_cursor = now_ms.saturating_add(1);
            for tick in self.cursor_ms..=now_ms {
                let mut node = self.heads[Self::wheel_slot(tick)];
                while node != NIL {
                    let n = &self.nodes[node as usize];
                    debug_assert!(n.live && n.deadline_ms >= tick, "a timer was missed");
                    if n.deadline_ms <= tick {
                        self.due.push((n.deadline_ms, n.id));
                    }
                    node = n.next;
                }
                if !self.due.is_empty() {
                    next_cursor = tick.saturating_add(1);
                    break;
                }
            }
            self.cursor_ms = next_cursor;
        }
        self.due.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// Whether `pop_due(now_ms)` would return a timer, without changing anything:
    /// walks the ticks from the cursor to `now_ms` as `pop_due` would (or the nodes
    /// after a jump of a whole turn), so it costs what the next `pop_due` saves.
    pub fn has_due(&self, now_ms: u64) -> bool {
        if !self.due.is_empty() {
            return true; // a tick being fired (never between commands)
        }
        if self.len == 0 || self.cursor_ms > now_ms {
            return false;
        }
        if now_ms - self.cursor_ms >= WHEEL_SLOTS as u64 - 1 {
            return self.nodes.iter().any(|n| n.live && n.deadline_ms <= now_ms);
        }
        (self.cursor_ms..=now_ms).any(|tick| {
            let mut node = self.heads[Self::wheel_slot(tick)];
            while node != NIL {
                let n = &self.nodes[node as usize];
                if n.deadline_ms <= tick {
                    return true;
                }
                node = n.next;
            }
            false
        })
    }

    /// Every live timer, sorted by `(deadline, id)`.
    pub fn sorted(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter(|n| n.live)
            .map(|n| (n.deadline_ms, n.id))
            .collect();
        all.sort_unstable();
        all
    }

    /// The earliest live timer (O(timers): for tests and invariants).
    pub fn first(&self) -> Option<(u64, u64)> {
        self.nodes
            .iter()
            .filter(|n| n.live)
            .map(|n| (n.deadline_ms, n.id))
            .min()
    }

    /// Whether the timer `(deadline_ms, id)` is live.
    pub fn contains(&self, deadline_ms: u64, id: u64) -> bool {
        self.is_live(deadline_ms, id)
    }

    fn from_sorted(entries: Vec<(u64, u64)>) -> Result<TimerWheel, DecodeError> {
        let mut wheel = TimerWheel::new();
        for (deadline_ms, id) in entries {
            if wheel.nodes.get(slot_of(id)).is_some_and(|node| node.live) {
                return Err(DecodeError::OtherString(format!(
                    "two timers for slab slot {} (id {id})",
                    slot_of(id)
                )));
            }
            wheel.insert(deadline_ms, id);
        }
        Ok(wheel)
    }
}

impl PartialEq for TimerWheel {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.sorted() == other.sorted()
    }
}

impl Eq for TimerWheel {}

impl std::fmt::Debug for TimerWheel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.sorted()).finish()
    }
}

impl Encode for TimerWheel {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        // The same bytes as the `BTreeSet<(u64, u64)>` this replaces: a length and
        // the entries in order.
        self.sorted().encode(encoder)
    }
}

impl<Context> Decode<Context> for TimerWheel {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let entries: Vec<(u64, u64)> = Vec::decode(decoder)?;
        TimerWheel::from_sorted(entries)
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for TimerWheel {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        let entries: Vec<(u64, u64)> = Vec::borrow_decode(decoder)?;
        TimerWheel::from_sorted(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::compose_id;
    use std::collections::BTreeSet;

    /// The wheel against the `BTreeSet` it replaces: inserts, removes, time jumps
    /// (within a turn and beyond), same-tick ties and far-future deadlines.
    #[test]
    fn wheel_pops_in_btreeset_order() {
        let mut wheel = TimerWheel::new();
        let mut reference: BTreeSet<(u64, u64)> = BTreeSet::new();
        let mut live_slots: Vec<Option<u64>> = vec![None; 512];
        let mut now = 1_000u64;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rand = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..40_000u64 {
            let r = rand();
            match r % 8 {
                0..=3 => {
                    let slot = (rand() % 512) as u32;
                    if live_slots[slot as usize].is_none() {
                        let ahead = match rand() % 4 {
                            0 => 1 + rand() % 3,
                            1 => 1 + rand() % 2_000,
                            2 => 1 + rand() % 200_000,
                            _ => 1 + rand() % 5,
                        };
                        let id = compose_id(step + 1, slot);
                        wheel.insert(now + ahead, id);
                        reference.insert((now + ahead, id));
                        live_slots[slot as usize] = Some(now + ahead);
                    }
                }
                4 => {
                    let slot = (rand() % 512) as usize;
                    if let Some(deadline) = live_slots[slot] {
                        let id = *reference
                            .iter()
                            .find(|(d, i)| *d == deadline && slot_of(*i) == slot)
                            .map(|(_, i)| i)
                            .unwrap();
                        assert!(wheel.remove(deadline, id));
                        assert!(!wheel.remove(deadline, id));
                        reference.remove(&(deadline, id));
                        live_slots[slot] = None;
                    }
                }
                _ => {
                    now += match rand() % 50 {
                        0 => 70_000 + rand() % 100_000, // more than a turn
                        1..=10 => 0,
                        _ => rand() % 40,
                    };
                    loop {
                        let expected = reference.first().copied().filter(|&(d, _)| d <= now);
                        let got = wheel.pop_due(now);
                        assert_eq!(got, expected, "at {now}");
                        let Some(entry) = got else { break };
                        reference.pop_first();
                        live_slots[slot_of(entry.1)] = None;
                    }
                }
            }
            assert_eq!(wheel.len(), reference.len());
        }
        assert_eq!(
            wheel.sorted(),
            reference.iter().copied().collect::<Vec<_>>()
        );
    }

    #[test]
    fn wheel_encodes_as_the_btreeset_it_replaces() {
        let mut wheel = TimerWheel::new();
        let mut set = BTreeSet::new();
        for (i, deadline) in [5u64, 70_000, 3, 3, 1 << 40].into_iter().enumerate() {
            let id = compose_id(10 - i as u64, i as u32);
            wheel.insert(deadline, id);
            set.insert((deadline, id));
        }
        let config = bincode::config::standard();
        let bytes = bincode::encode_to_vec(&wheel, config).unwrap();
        assert_eq!(bytes, bincode::encode_to_vec(&set, config).unwrap());
        let (decoded, _): (TimerWheel, usize) = bincode::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(decoded, wheel);
        let mut decoded = decoded;
        assert_eq!(decoded.pop_due(4), Some((3, compose_id(7, 3))));
        assert_eq!(decoded.pop_due(4), Some((3, compose_id(8, 2))));
        assert_eq!(decoded.pop_due(4), None);
        // Two timers for one slab slot do not decode.
        let twice = vec![(1u64, compose_id(1, 0)), (2u64, compose_id(2, 0))];
        let bytes = bincode::encode_to_vec(&twice, config).unwrap();
        assert!(bincode::decode_from_slice::<TimerWheel, _>(&bytes, config).is_err());
    }
}
