//! R-QUOTA-5, R-PROV-3 (issue 27, quota-flood): the gateways' pre-signature check
//! of a sender's daily quota. A funded user flooding RFCs past its quota made each
//! one cost a signature recovery on a gateway thread before the engine refused it
//! `quota_exceeded`; this gate refuses them before the signature, with the engine's
//! own code, reason and detail (`MarketError::QuotaExceeded { tokens_left }`).
//!
//! What it holds: per sender, the tokens the engine last said were left today and
//! the engine day that figure belongs to. It is written only by the effect sink on
//! the engine thread, in command order, from the engine's own answers (like the
//! nonce and balance caches, never from a request):
//! - a `quota_exceeded` refusal of the sender's RFC creates or sets the entry;
//! - an accepted RFC of a sender with an entry sets it (`RfcAccepted.tokens_left`);
//! - a refund (`RfcFailed.refunded_tokens`) adds to it;
//! - a balance update of the sender removes it (UserMax follows the balance);
//! - an accepted `SetParams` clears every entry (B, P or S may have changed), and so
//!   does a new day (`BatchSealed` of a day's last block: usage resets, B changes).
//!
//! Only senders the engine refused for quota get an entry, so the table holds at
//! most one entry per engine account (`market.accounts_max`) and an honest user's
//! RFCs never look past one failed lookup. Per sender: one sender's entry refuses
//! only that sender's RFCs (the connection's login proves the address, and an RFC
//! claiming another sender is refused `wrong_sender` first).
//!
//! Never refuses what the engine would accept: the gate refuses an RFC only when
//! its TokenMax is above the entry's tokens left, the entry is of the day the sink
//! last saw the engine in, and the router's clock is at least `DAY_EDGE_MS` before
//! that day's end (the engine's day turns on its clock, which is this process's
//! clock; the sink learns of the turn a little later, so the gate stops trusting a
//! day's entries a little earlier). Every change that can raise a sender's tokens
//! left (a refund, a balance, parameters, a new day) reaches the entry or removes
//! it before any later command's answer is delivered.

use super::shared::to_wire;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use yellowstone_engine::{Command, Effect, MarketError, BLOCKS_PER_DAY, BLOCK_MS};
use yellowstone_wire::Address;

/// The gate stops refusing for a day this long before the day ends by the router's
/// clock (ms): the engine may turn the day as soon as its clock passes the end, and
/// the sink hears of it after the block's batch is synced.
pub const DAY_EDGE_MS: u64 = 1_000;

/// Milliseconds in an engine day (R-TIME-1).
const DAY_MS: u64 = BLOCKS_PER_DAY * BLOCK_MS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// Tokens left today, as the engine last said (R-QUOTA-5).
    tokens_left: u64,
    /// The engine day the figure belongs to.
    day: u64,
}

/// The per-sender quota cache (see the module docs).
pub struct QuotaGate {
    entries: DashMap<Address, Entry>,
    /// `market.genesis_ms` (day 0 starts there).
    genesis_ms: u64,
    /// The engine's day as of the last command the sink delivered.
    day: AtomicU64,
}

impl Default for QuotaGate {
    fn default() -> QuotaGate {
        QuotaGate::new(0, 0)
    }
}

impl QuotaGate {
    /// An empty gate for a market of `genesis_ms` whose engine is in day `day`.
    pub fn new(genesis_ms: u64, day: u64) -> QuotaGate {
        QuotaGate {
            entries: DashMap::new(),
            genesis_ms,
            day: AtomicU64::new(day),
        }
    }

    /// Entries held (one per sender refused for quota since the last reset).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The end of engine day `day` by the router's clock (Unix ms, saturating).
    fn day_end_ms(&self, day: u64) -> u64 {
        self.genesis_ms
            .saturating_add(day.saturating_add(1).saturating_mul(DAY_MS))
    }

    /// Gateway side: the engine's own refusal of an RFC of `tokens_max` tokens from
    /// `sender` now (the router's clock), if certain; Ok otherwise. Costs one
    /// emptiness test while no sender is over its quota, one lookup otherwise.
    ///
    /// Errors: `MarketError::QuotaExceeded { tokens_left }`, as the engine gives it.
    pub fn check(&self, sender: &Address, tokens_max: u64) -> Result<(), MarketError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        self.check_at(sender, tokens_max, crate::sequencer::unix_ms())
    }

    /// `check` at the router's clock `now_ms` (Unix ms).
    pub fn check_at(
        &self,
        sender: &Address,
        tokens_max: u64,
        now_ms: u64,
    ) -> Result<(), MarketError> {
        let Some(entry) = self.entries.get(sender).map(|e| *e) else {
            return Ok(());
        };
        let day = self.day.load(Ordering::Acquire);
        let trusted = entry.day == day
            && now_ms.saturating_add(DAY_EDGE_MS) < self.day_end_ms(day)
            && tokens_max > entry.tokens_left;
        if trusted {
            return Err(MarketError::QuotaExceeded {
                tokens_left: entry.tokens_left,
            });
        }
        Ok(())
    }

    /// Sink side: the engine refused `sender`'s RFC `quota_exceeded` with
    /// `tokens_left` left today.
    pub fn refused(&self, sender: Address, tokens_left: u64) {
        let day = self.day.load(Ordering::Acquire);
        self.entries.insert(sender, Entry { tokens_left, day });
    }

    /// Sink side: the engine accepted an RFC of `sender`, leaving `tokens_left`.
    pub fn accepted(&self, sender: &Address, tokens_left: u64) {
        if self.entries.is_empty() {
            return;
        }
        let day = self.day.load(Ordering::Acquire);
        if let Some(mut entry) = self.entries.get_mut(sender) {
            *entry = Entry { tokens_left, day };
        }
    }

    /// Sink side: `refunded_tokens` went back to `sender`'s quota (R-QUOTA-4).
    pub fn refunded(&self, sender: &Address, refunded_tokens: u64) {
        if refunded_tokens == 0 || self.entries.is_empty() {
            return;
        }
        let day = self.day.load(Ordering::Acquire);
        let mut stale = false;
        if let Some(mut entry) = self.entries.get_mut(sender) {
            if entry.day == day {
                entry.tokens_left = entry.tokens_left.saturating_add(refunded_tokens);
            } else {
                stale = true;
            }
        }
        if stale {
            self.entries.remove(sender);
        }
    }

    /// Sink side: `sender`'s balance was set (UserMax changes with it).
    pub fn balance_set(&self, sender: &Address) {
        if !self.entries.is_empty() {
            self.entries.remove(sender);
        }
    }

    /// Sink side: the market's parameters changed (B, P or S): every entry goes.
    pub fn params_changed(&self) {
        self.entries.clear();
    }

    /// Sink side: the engine sealed `block`; the open block is the next one. A new
    /// day clears every entry (usage resets, the budget changes).
    pub fn block_sealed(&self, block: u64) {
        let day = block.saturating_add(1) / BLOCKS_PER_DAY;
        let before = self.day.swap(day, Ordering::AcqRel);
        debug_assert!(day >= before, "the engine's day never goes back");
        if day != before {
            self.entries.clear();
        }
    }
}

impl QuotaGate {
    /// Sink side, one call per delivered command (in command order, before its
    /// answers are sent): follows the engine's effects (see the module docs).
    pub fn follow(&self, command: &Command, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Rejected {
                    to,
                    error: MarketError::QuotaExceeded { tokens_left },
                    ..
                } => self.refused(to_wire(*to), *tokens_left),
                Effect::RfcAccepted {
                    user, tokens_left, ..
                } => self.accepted(&to_wire(*user), *tokens_left),
                Effect::RfcFailed {
                    user,
                    refunded_tokens,
                    ..
                } => self.refunded(&to_wire(*user), *refunded_tokens),
                Effect::BalancesSet { entries } => {
                    for (address, _) in entries {
                        self.balance_set(&to_wire(*address));
                    }
                }
                Effect::BatchSealed { batch, .. } => self.block_sealed(batch.block),
                _ => {}
            }
        }
        if let Command::SetParams {
            operator, nonce, ..
        } = command
        {
            let refused = effects.iter().any(|e| {
                matches!(e, Effect::Rejected { to, nonce: n, .. } if to == operator && n == nonce)
            });
            if !refused {
                self.params_changed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(byte: u8) -> Address {
        Address([byte; 20])
    }

    const GENESIS: u64 = 1_000_000;

    #[test]
    fn r_quota_5_refuses_only_above_what_is_left_and_only_that_sender() {
        let gate = QuotaGate::new(GENESIS, 0);
        let now = GENESIS + 10_000;
        assert!(gate.check_at(&addr(1), u64::MAX, now).is_ok(), "no entry");
        gate.refused(addr(1), 5);
        assert_eq!(
            gate.check_at(&addr(1), 6, now),
            Err(MarketError::QuotaExceeded { tokens_left: 5 })
        );
        assert!(
            gate.check_at(&addr(1), 5, now).is_ok(),
            "the engine accepts 5"
        );
        assert!(gate.check_at(&addr(2), 6, now).is_ok(), "another sender");
        gate.accepted(&addr(1), 0);
        assert!(gate.check_at(&addr(1), 1, now).is_err());
        gate.refunded(&addr(1), 3);
        assert!(gate.check_at(&addr(1), 3, now).is_ok(), "refund counted");
        assert!(gate.check_at(&addr(1), 4, now).is_err());
        gate.accepted(&addr(2), 0);
        assert!(gate.check_at(&addr(2), 6, now).is_ok(), "no entry created");
    }

    #[test]
    fn r_quota_5_a_balance_or_params_change_removes_the_entry() {
        let gate = QuotaGate::new(GENESIS, 0);
        let now = GENESIS + 10_000;
        gate.refused(addr(1), 0);
        gate.refused(addr(2), 0);
        gate.balance_set(&addr(1));
        assert!(gate.check_at(&addr(1), 1, now).is_ok());
        assert!(gate.check_at(&addr(2), 1, now).is_err());
        gate.params_changed();
        assert!(gate.check_at(&addr(2), 1, now).is_ok());
        assert!(gate.is_empty());
    }

    #[test]
    fn r_quota_5_the_day_boundary_never_refuses_what_the_new_day_accepts() {
        let gate = QuotaGate::new(GENESIS, 0);
        gate.refused(addr(1), 0);
        let day_end = GENESIS + DAY_MS;
        assert!(gate
            .check_at(&addr(1), 1, day_end - DAY_EDGE_MS - 1)
            .is_err());
        // Near the end of the day by the clock, before the sink saw the new day.
        assert!(gate.check_at(&addr(1), 1, day_end - DAY_EDGE_MS).is_ok());
        assert!(gate.check_at(&addr(1), 1, day_end + 5).is_ok());
        // The day's last block sealed: entries cleared, day 1.
        gate.block_sealed(BLOCKS_PER_DAY - 1);
        assert!(gate.is_empty());
        assert!(gate.check_at(&addr(1), 1, day_end + 5).is_ok());
        gate.refused(addr(1), 0);
        assert!(
            gate.check_at(&addr(1), 1, day_end + 5).is_err(),
            "day 1's entry"
        );
        // A block within the day keeps the entries.
        gate.block_sealed(BLOCKS_PER_DAY);
        assert_eq!(gate.len(), 1);
        // A refund after the day turned (an entry of a past day) removes it.
        let stale = QuotaGate::new(GENESIS, 0);
        stale.refused(addr(3), 0);
        stale.day.store(1, Ordering::Release);
        stale.refunded(&addr(3), 1);
        assert!(stale.is_empty());
    }

    #[test]
    fn r_quota_5_an_entry_of_another_day_is_not_trusted() {
        let gate = QuotaGate::new(GENESIS, 0);
        gate.refused(addr(1), 0);
        gate.day.store(1, Ordering::Release);
        assert!(gate.check_at(&addr(1), 1, GENESIS + DAY_MS + 10).is_ok());
    }
}
