//! The operator flow, both directions (R-QUOTA-6, R-OPS-*, R-CHAIN-3):
//! `BalanceUpdate`, `SetParams` and `ChainPaid` in; the engine's `Done` (an `Ack`) and
//! `BalancesSet` (the gateways' pre-check cache, never written from a request) out.

use crate::connection::Outcome;
use crate::dispatch::{Delivery, Recipient};
use crate::{to_engine, to_wire, CacheUpdate};
use yellowstone_engine::{Command, Effect};
use yellowstone_wire::messages::{self, Message};
use yellowstone_wire::Address;

/// The command an operator message asks for (`None`: not an operator message).
pub(crate) fn command_for(from: Address, message: &Message) -> Option<Outcome> {
    let origin = to_engine(from);
    let command = match message {
        // R-QUOTA-6: the pre-check cache is written from the engine's `BalancesSet`
        // effect, never from the request: a refused update changes nothing.
        Message::BalanceUpdate(m) => Command::SetBalances {
            operator: origin,
            nonce: m.nonce,
            entries: m
                .entries
                .iter()
                .map(|e| (to_engine(e.address), e.balance_wei))
                .collect(),
        },
        Message::SetParams(m) => Command::SetParams {
            operator: origin,
            nonce: m.nonce,
            params: m.params.iter().map(|p| (p.param_id, p.value)).collect(),
        },
        // R-CHAIN-3: the engine checks the operator, the domain and the bounds.
        Message::ChainPaid(m) => Command::ChainPaid {
            operator: origin,
            nonce: m.nonce,
            chain_id: m.chain_id,
            contract: to_engine(m.contract),
            entries: m
                .entries
                .iter()
                .map(|e| (to_engine(e.provider), e.paid_to_wei))
                .collect(),
        },
        _ => return None,
    };
    Some(Outcome::Command(command))
}

/// What an operator effect sends or changes (`None`: not an operator effect).
pub(crate) fn delivery_of(effect: &Effect) -> Option<Delivery> {
    let delivery = match effect {
        // Providers and the operator are acknowledged on their provider route first
        // (a provider's bid update), else their user route.
        Effect::Done { to, nonce } => Delivery::Reply(
            Recipient::ProviderElseUser(to_wire(*to)),
            messages::Ack { nonce: *nonce }.into(),
        ),
        Effect::BalancesSet { entries } => Delivery::Cache(
            entries
                .iter()
                .map(|(address, balance_wei)| CacheUpdate::Balance {
                    address: to_wire(*address),
                    balance_wei: *balance_wei,
                })
                .collect(),
        ),
        _ => return None,
    };
    Some(delivery)
}
