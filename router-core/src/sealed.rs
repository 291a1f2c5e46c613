//! The newest sealed credit batch and settlement (R-BLOCK-2, R-CHAIN-1, R-HA-2; issue
//! 25): a subscriber that lost its connection (a failover, a router restart) and
//! subscribes again is sent the newest of each at once, after the `Ack`, so that a
//! batch sealed while it was away (or by a leader that died before sending it) is not
//! a gap. Subscribers tell a repeat by its block (its epoch): a batch at or below the
//! last one they hold is the same bytes again (RFC 6979), to be skipped.
//!
//! Fed like the reply cache, from what the engine applied (command, effects) once its
//! record is durable (a leader's sink) or committed (every replicated member's state
//! machine, the replay at a single router's start): what it holds was promised
//! already, and every member holds the same. Kept unsigned (signed on the way out,
//! byte-identical). Pure: no clock, no IO; one entry each, so nothing to bound.

use crate::dispatch::{delivery_of, Delivery};
use std::sync::Mutex;
use yellowstone_engine::settlement::SettlementRecord;
use yellowstone_engine::{Command, Effect};
use yellowstone_wire::messages::Message;

/// A sealed settlement as the sink signs it (EIP-712 domain included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedSettlement {
    /// The epoch's record.
    pub settlement: SettlementRecord,
    /// EIP-712 domain: chain id.
    pub chain_id: u64,
    /// EIP-712 domain: the contract.
    pub contract: yellowstone_engine::Address,
}

/// What [`NewestSealed::get`] returns: the newest batch (an unsigned `CreditBatch`
/// message) and the newest settlement, each if any was sealed since this process
/// started following the market (its start's replay included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sealed {
    /// The newest block's `CreditBatch`, unsigned.
    pub batch: Option<Message>,
    /// The newest epoch's settlement.
    pub settlement: Option<SealedSettlement>,
}

/// The newest sealed batch and settlement (see the module docs). One writer (the
/// engine thread or a member's state machine), readers on the gateway threads at each
/// `SubscribeBatches` (rare): one mutex.
#[derive(Debug, Default)]
pub struct NewestSealed {
    inner: Mutex<Sealed>,
}

impl NewestSealed {
    /// Nothing sealed yet.
    pub fn new() -> NewestSealed {
        NewestSealed::default()
    }

    /// Follows one applied command: keeps its batch or settlement when it seals one.
    /// Blocks and epochs only go forward: an older one (a replay fed twice) changes
    /// nothing.
    pub fn observe(&self, command: &Command, effects: &[Effect]) {
        for effect in effects {
            if !matches!(
                effect,
                Effect::BatchSealed { .. } | Effect::SettlementSealed { .. }
            ) {
                continue;
            }
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match delivery_of(command, effect) {
                Delivery::Batch(message) => {
                    let newer = match (&inner.batch, &message) {
                        (Some(Message::CreditBatch(held)), Message::CreditBatch(new)) => {
                            new.block > held.block
                        }
                        _ => true,
                    };
                    if newer {
                        inner.batch = Some(message);
                    }
                }
                Delivery::Settlement {
                    settlement,
                    chain_id,
                    contract,
                } => {
                    let newer = inner
                        .settlement
                        .as_ref()
                        .is_none_or(|held| settlement.epoch > held.settlement.epoch);
                    if newer {
                        inner.settlement = Some(SealedSettlement {
                            settlement,
                            chain_id,
                            contract,
                        });
                    }
                }
                _ => {}
            }
        }
    }

    /// The newest of each (clones: a few hundred bytes, once per subscription).
    pub fn get(&self) -> Sealed {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces what is held (a replicated member installing a snapshot, R-HA-2: the
    /// batch sealed by the snapshot's last entry is not applied again there).
    pub fn replace(&self, sealed: Sealed) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = sealed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick_effects(engine: &mut yellowstone_engine::Engine, now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        engine.apply(&Command::Tick, now_ms, &mut effects);
        effects
    }

    fn block_of(sealed: &Sealed) -> Option<u64> {
        match &sealed.batch {
            Some(Message::CreditBatch(batch)) => Some(batch.block),
            _ => None,
        }
    }

    #[test]
    fn the_newest_batch_is_kept_and_an_older_one_changes_nothing() {
        let config = yellowstone_engine::MarketConfig::default();
        let genesis = config.genesis_ms;
        let mut engine = yellowstone_engine::Engine::new(config);
        let newest = NewestSealed::new();
        assert_eq!(newest.get(), Sealed::default());
        let first = tick_effects(&mut engine, genesis + yellowstone_engine::BLOCK_MS);
        newest.observe(&Command::Tick, &first);
        assert_eq!(block_of(&newest.get()), Some(0));
        let second = tick_effects(&mut engine, genesis + 2 * yellowstone_engine::BLOCK_MS);
        newest.observe(&Command::Tick, &second);
        assert_eq!(block_of(&newest.get()), Some(1));
        // The same effects again (a leader's sink and its state machine both feed it).
        newest.observe(&Command::Tick, &first);
        assert_eq!(block_of(&newest.get()), Some(1), "blocks only go forward");
        // Effects that seal nothing change nothing.
        newest.observe(&Command::Tick, &[]);
        assert_eq!(block_of(&newest.get()), Some(1));
    }
}
