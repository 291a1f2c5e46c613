//! The block flow, both directions (R-BLOCK-*, R-CHAIN-1): `SubscribeBatches` (no
//! engine) and a provider's `Claim` in; the engine's `BatchSealed` (a credit batch
//! signed by the router for every subscriber), `SettlementSealed` (EIP-712 and wire
//! signatures, for every subscriber) and `ClaimPaid` out.

use crate::connection::Outcome;
use crate::dispatch::{Delivery, Recipient};
use crate::{to_engine, to_wire};
use yellowstone_engine::{BatchApplied, Command, CreditBatch, Effect};
use yellowstone_wire::messages::{self, Message};
use yellowstone_wire::Address;

/// What a block message asks for (`None`: not a block message).
pub(crate) fn command_for(from: Address, message: &Message) -> Option<Outcome> {
    match message {
        Message::SubscribeBatches(_) => Some(Outcome::Subscribe),
        Message::Claim(m) => Some(Outcome::Command(Command::Claim {
            provider: to_engine(from),
            nonce: m.nonce,
            amount_wei: m.amount_wei,
        })),
        _ => None,
    }
}

/// The frames a block effect sends (`None`: not a block effect).
pub(crate) fn delivery_of(effect: &Effect) -> Option<Delivery> {
    let delivery = match effect {
        Effect::BatchSealed { batch, applied } => Delivery::Batch(batch_message(batch, applied)),
        Effect::SettlementSealed {
            settlement,
            chain_id,
            contract,
        } => Delivery::Settlement {
            settlement: settlement.clone(),
            chain_id: *chain_id,
            contract: *contract,
        },
        Effect::ClaimPaid {
            provider,
            nonce,
            amount_wei,
            owed_left_wei,
        } => Delivery::Reply(
            Recipient::Provider(to_wire(*provider)),
            messages::ClaimAck {
                nonce: *nonce,
                amount_wei: *amount_wei,
                owed_left_wei: *owed_left_wei,
            }
            .into(),
        ),
        _ => return None,
    };
    Some(delivery)
}

/// The router-signed credit batch message (R-BLOCK-2), unsigned.
pub fn batch_message(batch: &CreditBatch, applied: &BatchApplied) -> Message {
    Message::from(messages::CreditBatch {
        block: batch.block,
        merkle_root: batch.merkle_root,
        receipts: batch.receipts,
        credited_wei: applied.credited_wei,
        shortfall_wei: applied.shortfall_wei,
        totals: batch
            .totals
            .iter()
            .map(|t| messages::BatchTotals {
                provider: to_wire(t.provider),
                earned_wei: t.earned_wei,
                credited_wei: t.credited_wei,
                tokens: t.tokens,
                sessions: t.sessions,
            })
            .collect(),
        signature: Default::default(),
    })
}
