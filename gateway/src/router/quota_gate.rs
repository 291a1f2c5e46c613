//! R-QUOTA-5, R-PROV-3 (issue 27, quota-flood): where the gateways' quota pre-check
//! keeps its table. The decisions (when an RFC is refused before its signature, how
//! the table follows the engine's effects) are router-core's (`quota.rs`:
//! `Admission::quota_precheck`, `follow_quota`); this is the store they run on:
//! concurrent maps read by every gateway thread and written by the effect sink on the
//! engine thread only, in command order, before each command's answers leave.

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use yellowstone_engine::{Command, Effect};
use yellowstone_router_core::{follow_quota, QuotaEntry, QuotaStore};
use yellowstone_wire::Address;

/// The per-sender quota table (router-core's `QuotaStore`, shared). At most one
/// entry per engine account (`market.accounts_max`); see router-core's `quota.rs`.
pub struct QuotaGate {
    entries: DashMap<Address, QuotaEntry>,
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
    /// An empty table for a market of `genesis_ms` whose engine is in day `day`.
    pub fn new(genesis_ms: u64, day: u64) -> QuotaGate {
        QuotaGate {
            entries: DashMap::new(),
            genesis_ms,
            day: AtomicU64::new(day),
        }
    }

    /// `market.genesis_ms`, Unix ms.
    pub fn genesis_ms(&self) -> u64 {
        self.genesis_ms
    }

    /// Entries held (one per sender refused for quota since the last reset).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sink side, one call per delivered command (in command order, before its
    /// answers are sent): router-core's `follow_quota` on this table.
    pub fn follow(&self, command: &Command, effects: &[Effect]) {
        let mut store = self;
        follow_quota(&mut store, command, effects);
    }
}

/// Reads from any gateway thread; writes from the engine thread only (the sink).
impl QuotaStore for &QuotaGate {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&self, sender: &Address) -> Option<QuotaEntry> {
        self.entries.get(sender).map(|entry| *entry)
    }

    fn day(&self) -> u64 {
        self.day.load(Ordering::Acquire)
    }

    fn set(&mut self, sender: Address, entry: QuotaEntry) {
        self.entries.insert(sender, entry);
    }

    fn remove(&mut self, sender: &Address) {
        self.entries.remove(sender);
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    fn set_day(&mut self, day: u64) {
        self.day.fetch_max(day, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yellowstone_engine::{MarketError, BLOCKS_PER_DAY};
    use yellowstone_router_core::quota_refusal;

    /// The shared table behaves as router-core's plain one: an entry set by a
    /// refusal refuses, a new day clears it (the rules themselves are router-core's
    /// `quota::tests`).
    #[test]
    fn r_quota_5_the_shared_table_follows_the_engine() {
        let gate = QuotaGate::new(1_000_000, 0);
        let sender = Address([1; 20]);
        let now_ms = 1_000_000 + 10_000;
        gate.follow(
            &Command::ProviderDisconnected {
                provider: yellowstone_engine::Address([2; 20]),
            },
            &[Effect::Rejected {
                to: yellowstone_engine::Address(sender.0),
                nonce: 1,
                error: MarketError::QuotaExceeded { tokens_left: 4 },
            }],
        );
        assert_eq!(gate.len(), 1);
        assert_eq!(
            quota_refusal(&&gate, gate.genesis_ms(), &sender, 5, now_ms),
            Err(MarketError::QuotaExceeded { tokens_left: 4 })
        );
        gate.follow(
            &Command::ProviderDisconnected {
                provider: yellowstone_engine::Address([2; 20]),
            },
            &[Effect::BatchSealed {
                batch: yellowstone_engine::CreditBatch {
                    block: BLOCKS_PER_DAY - 1,
                    ..Default::default()
                },
                applied: Default::default(),
            }],
        );
        assert!(gate.is_empty());
        assert_eq!((&gate).day(), 1);
    }
}
