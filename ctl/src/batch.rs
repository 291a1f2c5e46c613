//! Checking a credit batch as a subscriber receives it (R-BLOCK-2, R-ID-5).
//!
//! A batch carries the Merkle root of its block's receipts but not the receipts, so a
//! subscriber cannot recompute the root; it checks everything the batch does carry:
//! - the router's signature over the exact body bytes (against the router address
//!   pinned with `--router-address`, or the one announced at login);
//! - the root rule (`engine::merkle`): 32 zero bytes exactly when there is no receipt;
//! - receipts = Σ sessions over the provider totals, totals strictly ordered by
//!   provider (so one row per provider), credited + shortfall = Σ earned_wei, each provider credited at most its earned and the parts summing to the credited;
//! - block numbers follow each other without a gap (`Follower`).
//!
//! Anyone holding the receipts (each user holds its own) recomputes the root with
//! `yellowstone_engine::merkle::root_of` over their leaves.

use serde_json::{json, Value};
use yellowstone_wire::messages::{CreditBatch, Message};
use yellowstone_wire::Address;

/// Checks the batch's content (everything but the signature); the reason on failure.
pub fn check_content(batch: &CreditBatch) -> Result<(), String> {
    let empty_root = batch.merkle_root == [0u8; 32];
    if empty_root != (batch.receipts == 0) {
        return Err(format!(
            "block {}: {} receipts but the root is {}",
            batch.block,
            batch.receipts,
            if empty_root { "empty" } else { "not empty" }
        ));
    }
    let sessions: u64 = batch.totals.iter().map(|t| u64::from(t.sessions)).sum();
    if sessions != batch.receipts {
        return Err(format!(
            "block {}: {} receipts but the totals count {sessions} sessions",
            batch.block, batch.receipts
        ));
    }
    if let Some(pair) = batch
        .totals
        .windows(2)
        .find(|pair| pair[0].provider >= pair[1].provider)
    {
        return Err(format!(
            "block {}: totals not strictly ordered by provider ({} then {})",
            batch.block, pair[0].provider, pair[1].provider
        ));
    }
    let earned = batch
        .totals
        .iter()
        .try_fold(0u128, |sum, t| sum.checked_add(t.earned_wei))
        .ok_or_else(|| format!("block {}: totals overflow u128", batch.block))?;
    if batch.credited_wei.checked_add(batch.shortfall_wei) != Some(earned) {
        return Err(format!(
            "block {}: credited {} + shortfall {} differ from the totals' {earned} wei",
            batch.block, batch.credited_wei, batch.shortfall_wei
        ));
    }
    // R-BLOCK-2: each provider's credited part is at most what it earned, and the
    // parts add up to what the batch says was credited.
    if let Some(t) = batch.totals.iter().find(|t| t.credited_wei > t.earned_wei) {
        return Err(format!(
            "block {}: provider {} credited {} above its earned {} wei",
            batch.block, t.provider, t.credited_wei, t.earned_wei
        ));
    }
    let credited = batch
        .totals
        .iter()
        .try_fold(0u128, |sum, t| sum.checked_add(t.credited_wei));
    if credited != Some(batch.credited_wei) {
        return Err(format!(
            "block {}: the providers' credited parts differ from the batch's credited {} wei",
            batch.block, batch.credited_wei
        ));
    }
    Ok(())
}

/// Verifies a received batch frame: its router signature, then its content.
pub fn verify(
    message: &Message,
    body: &[u8],
    network_id: u32,
    router: &Address,
) -> Result<(), String> {
    let Message::CreditBatch(batch) = message else {
        return Err(format!("{} is not a credit batch", message.name()));
    };
    message
        .verify_router(network_id, body, router)
        .map_err(|e| format!("block {}: router signature: {e}", batch.block))?;
    check_content(batch)
}

/// Tracks block numbers across batches: each must be the previous one plus one; one
/// at or below the last is a repeat (R-HA-2: sent again to a new subscription), skipped.
///
/// A gap on one connection is a verification failure (the router sends every sealed
/// block to a subscribed connection). After a reconnection ([`Follower::resubscribed`])
/// the first new batch may lie further on: a subscription is sent only the newest
/// sealed batch (R-HA-2, docs/PROTOCOL.md `SubscribeBatches`), and the protocol has no
/// query for a past block's batch, so the blocks sealed while the follower was away are
/// reported as [`Accepted::After`] (missed), not as a failure.
#[derive(Default)]
pub struct Follower {
    last_block: Option<u64>,
    /// A reconnection happened and no new batch has come since.
    resubscribed: bool,
}

/// What [`Follower::accept`] made of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// At or below the last block held: already printed, skip it.
    Repeat,
    /// The next block (or the first one seen): print it.
    Next,
    /// The first new block after a reconnection, past blocks `first..=last` that were
    /// sealed while the follower was disconnected and can no longer be fetched: print
    /// it and report the missed blocks.
    After {
        /// The first block missed.
        first: u64,
        /// The last block missed (`first <= last`).
        last: u64,
    },
}

impl Follower {
    /// The connection was replaced and the subscription sent again: the next new
    /// batch may follow a gap of blocks sealed meanwhile.
    pub fn resubscribed(&mut self) {
        self.resubscribed = true;
    }

    /// The last block accepted, if any.
    pub fn last_block(&self) -> Option<u64> {
        self.last_block
    }

    /// Classifies `batch` by its block number. Errors: a gap on one connection (no
    /// reconnection since the last batch), naming both blocks.
    pub fn accept(&mut self, batch: &CreditBatch) -> Result<Accepted, String> {
        let mut accepted = Accepted::Next;
        if let Some(last) = self.last_block {
            // R-HA-2: a subscription is sent the newest sealed batch at once, so after
            // a reconnect one already printed may come again: skipped, not a gap.
            if batch.block <= last {
                return Ok(Accepted::Repeat);
            }
            if batch.block != last + 1 {
                if !self.resubscribed {
                    return Err(format!(
                        "gap: block {} follows block {last} on the same connection (batches \
                         {}..{} missing or reordered)",
                        batch.block,
                        last + 1,
                        batch.block
                    ));
                }
                accepted = Accepted::After {
                    first: last + 1,
                    last: batch.block - 1,
                };
            }
        }
        debug_assert!(self.last_block.is_none_or(|last| batch.block > last));
        self.resubscribed = false;
        self.last_block = Some(batch.block);
        Ok(accepted)
    }
}

/// One JSON line per batch: amounts as decimal strings (u128 exceeds JSON numbers).
pub fn to_json(batch: &CreditBatch) -> Value {
    json!({
        "block": batch.block,
        "merkle_root": hex::encode(batch.merkle_root),
        "receipts": batch.receipts,
        "credited_wei": batch.credited_wei.to_string(),
        "shortfall_wei": batch.shortfall_wei.to_string(),
        "totals": batch.totals.iter().map(|t| json!({
            "provider": t.provider.to_string(),
            "earned_wei": t.earned_wei.to_string(),
            "credited_wei": t.credited_wei.to_string(),
            "tokens": t.tokens,
            "sessions": t.sessions,
        })).collect::<Vec<_>>(),
        "signature": hex::encode(batch.signature.0),
        "verified": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use yellowstone_wire::messages::BatchTotals;
    use yellowstone_wire::{Signature, SigningKey};

    fn batch() -> CreditBatch {
        CreditBatch {
            block: 4,
            merkle_root: [7; 32],
            receipts: 3,
            credited_wei: 249,
            shortfall_wei: 51,
            totals: vec![
                BatchTotals {
                    provider: Address([1; 20]),
                    earned_wei: 100,
                    credited_wei: 83,
                    tokens: 10,
                    sessions: 1,
                },
                BatchTotals {
                    provider: Address([2; 20]),
                    earned_wei: 200,
                    credited_wei: 166,
                    tokens: 20,
                    sessions: 2,
                },
            ],
            signature: Signature::default(),
        }
    }

    #[test]
    fn r_block_2_a_consistent_batch_passes_and_each_inconsistency_is_named() {
        assert_eq!(check_content(&batch()), Ok(()));
        type Spoil = fn(&mut CreditBatch);
        let cases: [(Spoil, &str); 7] = [
            (|b| b.merkle_root = [0; 32], "root is empty"),
            (|b| b.receipts = 4, "count 3 sessions"),
            (|b| b.totals.swap(0, 1), "strictly ordered"),
            (|b| b.shortfall_wei = 52, "differ from the totals"),
            (|b| b.totals[0].credited_wei = 101, "above its earned"),
            (
                |b| {
                    b.totals[0].credited_wei = 82;
                },
                "credited parts differ",
            ),
            (
                |b| {
                    b.totals.clear();
                    b.receipts = 0;
                },
                "root is not empty",
            ),
        ];
        for (spoil, expected) in cases {
            let mut spoilt = batch();
            spoil(&mut spoilt);
            let error = check_content(&spoilt).unwrap_err();
            assert!(error.contains(expected), "{error} / {expected}");
        }
    }

    #[test]
    fn r_id_5_signature_checked_against_the_router_and_gaps_found() {
        let router = SigningKey::from_seed(b"router");
        let mut message = Message::from(batch());
        let frame = message.sign(&router, 7);
        let body = &frame[yellowstone_wire::frame::HEADER_LEN..];
        assert_eq!(verify(&message, body, 7, &router.address()), Ok(()));
        let other = SigningKey::from_seed(b"other").address();
        assert!(verify(&message, body, 7, &other)
            .unwrap_err()
            .contains("router signature"));
        assert!(verify(&message, body, 8, &router.address()).is_err());
        let mut follower = Follower::default();
        let mut b = batch();
        assert_eq!(follower.accept(&b), Ok(Accepted::Next));
        assert_eq!(
            follower.accept(&b),
            Ok(Accepted::Repeat),
            "a repeat is skipped"
        );
        b.block = 6;
        assert!(follower.accept(&b).unwrap_err().contains("gap"));
    }

    #[test]
    fn r_ha_2_blocks_sealed_while_reconnecting_are_missed_not_a_gap() {
        let mut follower = Follower::default();
        let mut b = batch();
        assert_eq!(follower.accept(&b), Ok(Accepted::Next));
        follower.resubscribed();
        // The new leader first sends a batch already held, then the newest.
        assert_eq!(follower.accept(&b), Ok(Accepted::Repeat));
        b.block = 7;
        assert_eq!(
            follower.accept(&b),
            Ok(Accepted::After { first: 5, last: 6 })
        );
        // Only the first batch after a reconnection may jump.
        b.block = 9;
        assert!(follower.accept(&b).unwrap_err().contains("gap"));
        b.block = 8;
        assert_eq!(follower.accept(&b), Ok(Accepted::Next));
        follower.resubscribed();
        b.block = 9;
        assert_eq!(
            follower.accept(&b),
            Ok(Accepted::Next),
            "no gap, nothing missed"
        );
    }
}
