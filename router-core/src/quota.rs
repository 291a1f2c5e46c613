//! R-QUOTA-5, R-PROV-3 (issue 27, quota-flood): the pre-signature check of a sender's
//! daily quota, and how its table follows the engine. A funded user flooding RFCs
//! past its quota made each one cost a signature recovery on a gateway thread before
//! the engine refused it `quota_exceeded`; this check refuses them before the
//! signature, with the engine's own code, reason and detail
//! (`MarketError::QuotaExceeded { tokens_left }`).
//!
//! Sans-IO: the table lives wherever the driver keeps it (a [`QuotaStore`]: the
//! gateway's concurrent maps written by the engine thread only, or a plain
//! [`QuotaMap`]), the clock comes in as an argument (`now_ms`, Unix milliseconds:
//! the engine's day turns on that clock, R-TIME-1), and the decisions are the two
//! functions here: [`quota_refusal`] (gateway side) and [`follow_quota`] (engine
//! side, once per delivered command).
//!
//! What the table holds: per sender, the tokens the engine last said were left today
//! and the engine day that figure belongs to. It is written only from the engine's
//! own answers, in command order (like the nonce and balance caches, never from a
//! request):
//! - a `quota_exceeded` refusal of the sender's RFC creates or sets the entry;
//! - an accepted RFC of a sender with an entry sets it (`RfcAccepted.tokens_left`);
//! - a refund (`RfcFailed.refunded_tokens`) adds to it (an entry of a past day goes);
//! - a balance update of the sender removes it (UserMax follows the balance);
//! - an accepted `SetParams` clears every entry (B, P or S may have changed), and so
//!   does a new day (`BatchSealed` of a day's last block: usage resets, B changes).
//!
//! Only senders the engine refused for quota get an entry, so the table holds at
//! most one entry per engine account (`market.accounts_max`) and an honest user's
//! RFCs never look past one emptiness test. Per sender: one sender's entry refuses
//! only that sender's RFCs (the connection's login proves the address, and an RFC
//! claiming another sender is refused `wrong_sender`).
//!
//! Never refuses what the engine would accept: an RFC is refused only when its
//! TokenMax is above the entry's tokens left, the entry is of the day the table last
//! saw the engine in, and `now_ms` is at least [`DAY_EDGE_MS`] before that day's end
//! (the engine may turn the day as soon as its clock passes the end, and the table
//! hears of it after the block's batch is durable, so it stops trusting a day's
//! entries a little earlier). Every change that can raise a sender's tokens left (a
//! refund, a balance, parameters, a new day) reaches the entry or removes it before
//! any later command's answer is delivered.

use std::collections::HashMap;
use yellowstone_engine::{Command, Effect, MarketError, BLOCKS_PER_DAY, BLOCK_MS};
use yellowstone_wire::Address;

/// The check stops refusing for a day this long before the day ends by the
/// router's clock (ms); see the module docs.
pub const DAY_EDGE_MS: u64 = 1_000;

/// Milliseconds in an engine day (R-TIME-1).
const DAY_MS: u64 = BLOCKS_PER_DAY * BLOCK_MS;

/// One sender's entry: what the engine last said it had left, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaEntry {
    /// Tokens left today, as the engine last said (R-QUOTA-5).
    pub tokens_left: u64,
    /// The engine day (since `market.genesis_ms`) the figure belongs to.
    pub day: u64,
}

/// Where the quota entries live (see the module docs). Written only by
/// [`follow_quota`], on the engine's side; read by [`quota_refusal`].
pub trait QuotaStore {
    /// No sender has an entry (the check's fast path).
    fn is_empty(&self) -> bool;
    /// `sender`'s entry.
    fn entry(&self, sender: &Address) -> Option<QuotaEntry>;
    /// The engine's day as of the last command followed.
    fn day(&self) -> u64;
    /// Sets `sender`'s entry.
    fn set(&mut self, sender: Address, entry: QuotaEntry);
    /// Removes `sender`'s entry.
    fn remove(&mut self, sender: &Address);
    /// Removes every entry.
    fn clear(&mut self);
    /// The engine is in `day` from now on (never lower than before).
    fn set_day(&mut self, day: u64);
}

/// The end of engine day `day` by the router's clock (Unix ms, saturating), for a
/// market whose day 0 starts at `genesis_ms`.
fn day_end_ms(genesis_ms: u64, day: u64) -> u64 {
    genesis_ms.saturating_add(day.saturating_add(1).saturating_mul(DAY_MS))
}

/// Gateway side: the engine's own refusal of an RFC of `tokens_max` tokens from
/// `sender` at `now_ms` (Unix ms), if certain from `store`; Ok otherwise. Costs one
/// emptiness test while no sender is over its quota, one lookup otherwise.
///
/// Errors: `MarketError::QuotaExceeded { tokens_left }`, as the engine gives it.
pub fn quota_refusal(
    store: &impl QuotaStore,
    genesis_ms: u64,
    sender: &Address,
    tokens_max: u64,
    now_ms: u64,
) -> Result<(), MarketError> {
    if store.is_empty() {
        return Ok(());
    }
    let Some(entry) = store.entry(sender) else {
        return Ok(());
    };
    let day = store.day();
    let trusted = entry.day == day
        && now_ms.saturating_add(DAY_EDGE_MS) < day_end_ms(genesis_ms, day)
        && tokens_max > entry.tokens_left;
    if trusted {
        return Err(MarketError::QuotaExceeded {
            tokens_left: entry.tokens_left,
        });
    }
    Ok(())
}

/// Engine side, once per delivered command (in command order, before its answers
/// are sent): makes `store` follow what the engine said (see the module docs).
pub fn follow_quota(store: &mut impl QuotaStore, command: &Command, effects: &[Effect]) {
    for effect in effects {
        match effect {
            Effect::Rejected {
                to,
                error: MarketError::QuotaExceeded { tokens_left },
                ..
            } => {
                let day = store.day();
                store.set(
                    crate::to_wire(*to),
                    QuotaEntry {
                        tokens_left: *tokens_left,
                        day,
                    },
                );
            }
            Effect::RfcAccepted {
                user, tokens_left, ..
            } => {
                let user = crate::to_wire(*user);
                if !store.is_empty() && store.entry(&user).is_some() {
                    let day = store.day();
                    store.set(
                        user,
                        QuotaEntry {
                            tokens_left: *tokens_left,
                            day,
                        },
                    );
                }
            }
            Effect::RfcFailed {
                user,
                refunded_tokens,
                ..
            } if *refunded_tokens > 0 && !store.is_empty() => {
                let user = crate::to_wire(*user);
                if let Some(entry) = store.entry(&user) {
                    if entry.day == store.day() {
                        store.set(
                            user,
                            QuotaEntry {
                                tokens_left: entry.tokens_left.saturating_add(*refunded_tokens),
                                day: entry.day,
                            },
                        );
                    } else {
                        store.remove(&user);
                    }
                }
            }
            Effect::BalancesSet { entries } if !store.is_empty() => {
                for (address, _) in entries {
                    store.remove(&crate::to_wire(*address));
                }
            }
            Effect::BatchSealed { batch, .. } => {
                // The open block is the next one: a new day clears every entry.
                let day = batch.block.saturating_add(1) / BLOCKS_PER_DAY;
                let before = store.day();
                debug_assert!(day >= before, "the engine's day never goes back");
                if day > before {
                    store.set_day(day);
                    store.clear();
                }
            }
            _ => {}
        }
    }
    if let Command::SetParams {
        operator, nonce, ..
    } = command
    {
        let refused = effects.iter().any(
            |e| matches!(e, Effect::Rejected { to, nonce: n, .. } if to == operator && n == nonce),
        );
        if !refused {
            store.clear();
        }
    }
}

/// A [`QuotaStore`] in plain maps, for a single-threaded driver and tests.
#[derive(Clone, Debug, Default)]
pub struct QuotaMap {
    entries: HashMap<Address, QuotaEntry>,
    day: u64,
}

impl QuotaMap {
    /// An empty table whose engine is in `day`.
    pub fn new(day: u64) -> QuotaMap {
        QuotaMap {
            entries: HashMap::new(),
            day,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entry held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl QuotaStore for QuotaMap {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&self, sender: &Address) -> Option<QuotaEntry> {
        self.entries.get(sender).copied()
    }

    fn day(&self) -> u64 {
        self.day
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
        self.day = self.day.max(day);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yellowstone_engine::Address as EngineAddress;

    fn addr(byte: u8) -> Address {
        Address([byte; 20])
    }

    fn engine(byte: u8) -> EngineAddress {
        EngineAddress([byte; 20])
    }

    const GENESIS: u64 = 1_000_000;

    fn refused_for_quota(sender: u8, tokens_left: u64) -> Effect {
        Effect::Rejected {
            to: engine(sender),
            nonce: 1,
            error: MarketError::QuotaExceeded { tokens_left },
        }
    }

    fn failed(user: u8, refunded_tokens: u64) -> Effect {
        Effect::RfcFailed {
            user: engine(user),
            nonce: 1,
            rfc: 1,
            reason: yellowstone_engine::RfcFailure::Expired,
            refunded_tokens,
        }
    }

    /// A command that is none of those the table looks at.
    fn other_command() -> Command {
        Command::ProviderDisconnected {
            provider: engine(0),
        }
    }

    #[test]
    fn r_quota_5_refuses_only_above_what_is_left_and_only_that_sender() {
        let mut map = QuotaMap::new(0);
        let now = GENESIS + 10_000;
        let check = |map: &QuotaMap, sender: u8, tokens_max: u64| {
            quota_refusal(map, GENESIS, &addr(sender), tokens_max, now)
        };
        assert!(check(&map, 1, u64::MAX).is_ok(), "no entry");
        follow_quota(&mut map, &other_command(), &[refused_for_quota(1, 5)]);
        assert_eq!(
            check(&map, 1, 6),
            Err(MarketError::QuotaExceeded { tokens_left: 5 })
        );
        assert!(check(&map, 1, 5).is_ok(), "the engine accepts 5");
        assert!(check(&map, 2, 6).is_ok(), "another sender");
        let accepted = |user: u8, tokens_left: u64| Effect::RfcAccepted {
            user: engine(user),
            nonce: 2,
            rfc: 2,
            tokens_left,
        };
        follow_quota(
            &mut map,
            &other_command(),
            &[accepted(1, 0), accepted(2, 0)],
        );
        assert!(check(&map, 1, 1).is_err(), "the accepted RFC's tokens left");
        follow_quota(&mut map, &other_command(), &[failed(1, 3)]);
        assert!(check(&map, 1, 3).is_ok(), "refund counted");
        assert!(check(&map, 1, 4).is_err());
        assert_eq!(
            map.len(),
            1,
            "an accepted RFC of a sender without entry adds none"
        );
    }

    #[test]
    fn r_quota_5_a_balance_or_params_change_removes_the_entry() {
        let mut map = QuotaMap::new(0);
        let now = GENESIS + 10_000;
        follow_quota(
            &mut map,
            &other_command(),
            &[refused_for_quota(1, 0), refused_for_quota(2, 0)],
        );
        follow_quota(
            &mut map,
            &other_command(),
            &[Effect::BalancesSet {
                entries: vec![(engine(1), 5)],
            }],
        );
        assert!(quota_refusal(&map, GENESIS, &addr(1), 1, now).is_ok());
        assert!(quota_refusal(&map, GENESIS, &addr(2), 1, now).is_err());
        let set_params = Command::SetParams {
            operator: engine(9),
            nonce: 4,
            params: Vec::new(),
        };
        // A refused SetParams changes nothing.
        follow_quota(
            &mut map,
            &set_params,
            &[Effect::Rejected {
                to: engine(9),
                nonce: 4,
                error: MarketError::NotOperator,
            }],
        );
        assert!(quota_refusal(&map, GENESIS, &addr(2), 1, now).is_err());
        follow_quota(&mut map, &set_params, &[]);
        assert!(quota_refusal(&map, GENESIS, &addr(2), 1, now).is_ok());
        assert!(map.is_empty());
    }

    #[test]
    fn r_quota_5_the_day_boundary_never_refuses_what_the_new_day_accepts() {
        let mut map = QuotaMap::new(0);
        map.set(
            addr(1),
            QuotaEntry {
                tokens_left: 0,
                day: 0,
            },
        );
        let day_end = GENESIS + DAY_MS;
        let check = |map: &QuotaMap, now: u64| quota_refusal(map, GENESIS, &addr(1), 1, now);
        assert!(check(&map, day_end - DAY_EDGE_MS - 1).is_err());
        // Near the end of the day by the clock, before the table saw the new day.
        assert!(check(&map, day_end - DAY_EDGE_MS).is_ok());
        assert!(check(&map, day_end + 5).is_ok());
        // An entry of another day than the table's is not trusted.
        let mut stale = map.clone();
        stale.set_day(1);
        assert!(check(&stale, day_end + 10).is_ok());
        // A refund after the day turned (an entry of a past day) removes it.
        follow_quota(&mut stale, &other_command(), &[failed(1, 1)]);
        assert!(stale.is_empty());
        // The day's last block sealed: entries cleared, day 1; a block within the
        // day keeps them.
        let sealed = |block: u64| Effect::BatchSealed {
            batch: yellowstone_engine::CreditBatch {
                block,
                ..Default::default()
            },
            applied: Default::default(),
        };
        follow_quota(&mut map, &other_command(), &[sealed(BLOCKS_PER_DAY - 1)]);
        assert!(map.is_empty());
        assert_eq!(map.day(), 1);
        follow_quota(&mut map, &other_command(), &[refused_for_quota(1, 0)]);
        assert!(check(&map, day_end + 5).is_err(), "day 1's entry");
        follow_quota(&mut map, &other_command(), &[sealed(BLOCKS_PER_DAY)]);
        assert_eq!(map.len(), 1);
    }
}
