//! The session flow, both directions (R-MATCH-*, R-SESSION-1): a user's `Rfc` and
//! `RfcCancel`, a provider's `ProbeAnswer` and `SessionStart` become commands; the
//! engine's `RfcAccepted`, `Probe`, `SessionOpened` (the ticket, signed by the router,
//! R-MATCH-6), `RfcFailed`, `SessionExpired` and `SessionNotStarted` become frames.

use crate::connection::Outcome;
use crate::dispatch::{Delivery, Recipient};
use crate::{to_engine, to_wire};
use yellowstone_engine::{Command, Effect, RfcFailure};
use yellowstone_wire::messages::{self, Message};
use yellowstone_wire::Address;

/// The command a session message asks for (`None`: not a session message).
pub(crate) fn command_for(from: Address, message: &Message) -> Option<Outcome> {
    let origin = to_engine(from);
    let command = match message {
        // The zero-balance pre-check ran in `Admission::precheck`.
        Message::Rfc(m) => Command::SubmitRfc {
            user: origin,
            nonce: m.nonce,
            model: m.model_id,
            tokens_max: m.tokens_max,
            expires_at_ms: m.expires_at_ms,
        },
        Message::RfcCancel(m) => Command::CancelRfc {
            user: origin,
            nonce: m.nonce,
            rfc: m.rfc_id,
        },
        Message::ProbeAnswer(m) => Command::ProbeAnswer {
            provider: origin,
            nonce: m.nonce,
            probe: m.probe_id,
        },
        Message::SessionStart(m) => Command::StartSession {
            provider: origin,
            nonce: m.nonce,
            session: m.session_id,
        },
        _ => return None,
    };
    Some(Outcome::Command(command))
}

/// The frame a session effect sends (`None`: not a session effect).
pub(crate) fn delivery_of(effect: &Effect) -> Option<Delivery> {
    let delivery = match effect {
        Effect::RfcAccepted {
            user,
            nonce,
            rfc,
            tokens_left,
        } => Delivery::Reply(
            Recipient::User(to_wire(*user)),
            messages::RfcAccepted {
                nonce: *nonce,
                rfc_id: *rfc,
                tokens_left: *tokens_left,
            }
            .into(),
        ),
        Effect::Probe {
            provider,
            probe,
            model,
            tokens_max,
            deadline_ms,
        } => Delivery::Push(
            Recipient::Provider(to_wire(*provider)),
            messages::Probe {
                probe_id: *probe,
                model_id: *model,
                tokens_max: *tokens_max,
                deadline_ms: *deadline_ms,
            }
            .into(),
        ),
        Effect::SessionOpened { ticket } => Delivery::Ticket {
            provider: to_wire(ticket.provider),
            user: to_wire(ticket.user),
            message: Message::from(messages::SessionTicket {
                session_id: ticket.session,
                user: to_wire(ticket.user),
                provider: to_wire(ticket.provider),
                endpoint: String::from_utf8_lossy(&ticket.endpoint).into_owned(),
                model_id: ticket.model,
                tokens_max: ticket.tokens_max,
                price_wei_per_token: ticket.price_wei_per_token,
                expires_at_ms: ticket.expires_at_ms,
                rfc_nonce: ticket.rfc_nonce,
                signature: Default::default(),
            }),
        },
        Effect::RfcFailed {
            user,
            nonce,
            rfc,
            reason,
            refunded_tokens,
        } => Delivery::Push(
            Recipient::User(to_wire(*user)),
            messages::RfcFailed {
                nonce: *nonce,
                rfc_id: *rfc,
                reason: rfc_failure_code(*reason),
                refunded_tokens: *refunded_tokens,
            }
            .into(),
        ),
        // R-SESSION-1: as an expiry, nothing to send: the user's report would be
        // refused `session_not_started`.
        Effect::SessionExpired { .. } | Effect::SessionNotStarted { .. } => Delivery::Nothing,
        _ => return None,
    };
    Some(delivery)
}

/// `RfcFailed.reason` on the wire (docs/PROTOCOL.md).
fn rfc_failure_code(reason: RfcFailure) -> u8 {
    match reason {
        RfcFailure::Expired => 1,
        RfcFailure::NoProvider => 2,
        RfcFailure::Cancelled => 3,
    }
}
