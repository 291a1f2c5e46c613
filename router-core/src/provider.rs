//! The provider flow, both directions (R-PROV-*): `RegisterProvider` (catalog checks,
//! then one weights proof per offer within the thread's proof budget), `UpdateBid`,
//! `WithdrawBid` and `ProviderAnnounce` in; the engine's notices
//! (`ProviderUnreachable`, `ProviderSuspended`, `ProviderUnfunded`) out.

use crate::connection::{Outcome, ProofBudget};
use crate::dispatch::{Delivery, Recipient};
use crate::{sig_refusal, to_engine, to_wire, MarketView, Refused, Verifier};
use yellowstone_engine::{Command, Effect, MarketError, OfferSpec};
use yellowstone_wire::messages::{self, Message};
use yellowstone_wire::signature::weights_proof_digest;
use yellowstone_wire::{codes, Address, SigError};

/// The command a provider message (other than a registration) asks for.
pub(crate) fn command_for(from: Address, message: &Message) -> Option<Outcome> {
    let provider = to_engine(from);
    let command = match message {
        Message::UpdateBid(m) => Command::UpdateBid {
            provider,
            nonce: m.nonce,
            model: m.model_id,
            price_wei_per_token: m.price_wei_per_token,
            capacity: m.capacity,
        },
        Message::WithdrawBid(m) => Command::WithdrawBid {
            provider,
            nonce: m.nonce,
            model: m.model_id,
        },
        Message::ProviderAnnounce(m) => Command::ProviderAnnounce {
            provider,
            nonce: m.nonce,
        },
        _ => return None,
    };
    Some(Outcome::Command(command))
}

/// R-PROV-1, R-PROV-3: a registration's command. Checked in cost order: the endpoint's
/// length, the catalog (unknown model, weights hash, duplicate offers) before any
/// proof; then the proofs' budget is taken for all offers at once (`overloaded`
/// naming the budget's key when short); then each offer's weights proof must recover
/// the sender.
pub(crate) fn register(
    network_id: u32,
    from: Address,
    m: &messages::RegisterProvider,
    now_us: u64,
    budget: &mut ProofBudget,
    view: &impl MarketView,
    verifier: &impl Verifier,
) -> Result<Command, Refused> {
    if m.endpoint.len() > messages::ENDPOINT_BYTES_MAX {
        return Err(Refused::new(codes::BAD_FIELD, "endpoint too long"));
    }
    for (i, offer) in m.offers.iter().enumerate() {
        match view.weights_hash(offer.model_id) {
            None => {
                return Err(MarketError::UnknownModel {
                    model: offer.model_id,
                }
                .into())
            }
            Some(hash) if hash != offer.weights_hash => {
                return Err(MarketError::WeightsHashMismatch {
                    model: offer.model_id,
                }
                .into())
            }
            Some(_) => {}
        }
        if m.offers[..i].iter().any(|o| o.model_id == offer.model_id) {
            return Err(MarketError::DuplicateModel {
                model: offer.model_id,
            }
            .into());
        }
    }
    // The proofs cost one signature recovery each; their budget is taken before any is
    // checked, from the unfunded one for a sender without MOR (sybils compete only
    // among themselves).
    let funded = view.is_funded(&from);
    if !budget.take(m.offers.len() as u64, now_us) {
        return Err(Refused::new(
            codes::OVERLOADED,
            format!(
                "weights proofs: {} offers over this gateway's budget of {} proofs a second \
                 (network.weights_proofs{}_per_s); retry after the given delay",
                m.offers.len(),
                budget.per_s(),
                if funded { "" } else { "_unfunded" }
            ),
        ));
    }
    for offer in &m.offers {
        // R-PROV-1: the weights hash must be signed by the provider itself.
        let digest = weights_proof_digest(network_id, offer.model_id, &offer.weights_hash);
        let context = || format!("weights proof of model {}: ", offer.model_id);
        match verifier.recover(&digest, &offer.weights_proof) {
            Ok(signer) if signer == from => {}
            Ok(recovered) => {
                return Err(sig_refusal(
                    network_id,
                    &SigError::SignerMismatch { recovered },
                    context(),
                ))
            }
            Err(e) => return Err(sig_refusal(network_id, &e, context())),
        }
    }
    Ok(register_command(from, m))
}

/// The command a registration asks for, without any check (its proofs verified by
/// [`register`]; the reply cache's digest input for a resend, `replies.rs`).
pub(crate) fn register_command(from: Address, m: &messages::RegisterProvider) -> Command {
    let offers: Vec<OfferSpec> = m
        .offers
        .iter()
        .map(|offer| OfferSpec {
            model: offer.model_id,
            unit: offer.unit,
            weights_hash: offer.weights_hash,
            price_wei_per_token: offer.price_wei_per_token,
            capacity: offer.capacity,
        })
        .collect();
    debug_assert_eq!(offers.len(), m.offers.len());
    Command::RegisterProvider {
        provider: to_engine(from),
        nonce: m.nonce,
        endpoint: m.endpoint.clone().into_bytes(),
        offers,
    }
}

/// The notice a provider effect sends (`None`: not a provider effect).
pub(crate) fn delivery_of(effect: &Effect) -> Option<Delivery> {
    let (provider, kind, until_ms) = match effect {
        Effect::ProviderUnreachable { provider } => (provider, messages::NOTICE_UNREACHABLE, 0),
        Effect::ProviderSuspended { provider, until_ms } => {
            (provider, messages::NOTICE_SUSPENDED, *until_ms)
        }
        Effect::ProviderUnfunded { provider } => (provider, messages::NOTICE_UNFUNDED, 0),
        _ => return None,
    };
    Some(Delivery::Push(
        Recipient::Provider(to_wire(*provider)),
        messages::Notice { kind, until_ms }.into(),
    ))
}
