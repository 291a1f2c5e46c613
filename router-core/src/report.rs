//! The report flow, both directions (R-REPORT-*): a user's `Report` becomes a command
//! carrying the report's signed digest; the engine's `ReportAccepted` becomes the
//! `ReportAck` (R-BLOCK-2: earned, credited subject to the day's cap at the seal).

use crate::connection::Outcome;
use crate::dispatch::{Delivery, Recipient};
use crate::{to_engine, to_wire};
use yellowstone_engine::{Command, CreditReason, Effect, ReportOutcome};
use yellowstone_wire::messages::{self, signed_digest, Message};
use yellowstone_wire::Address;

/// The command a report asks for (`None`: not a report).
pub(crate) fn command_for(
    network_id: u32,
    from: Address,
    message: &Message,
    body: &[u8],
) -> Option<Outcome> {
    let Message::Report(m) = message else {
        return None;
    };
    let report_digest =
        signed_digest(network_id, messages::msg_type::REPORT, body).unwrap_or_default();
    // R-REPORT-2: the outcome byte was checked by the decoder (any other byte is
    // `bad_field`).
    let outcome = match m.outcome {
        messages::Outcome::Fail => ReportOutcome::Fail,
        messages::Outcome::Pass => ReportOutcome::Pass,
        messages::Outcome::Void => ReportOutcome::Void,
    };
    Some(Outcome::Command(Command::Report {
        user: to_engine(from),
        nonce: m.nonce,
        session: m.session_id,
        elapsed_ms: m.elapsed_ms,
        ttft_ms: m.ttft_ms,
        tokens: m.tokens,
        prompt_tokens: m.prompt_tokens,
        outcome,
        report_digest,
    }))
}

/// The frame a report effect sends (`None`: not a report effect).
pub(crate) fn delivery_of(effect: &Effect) -> Option<Delivery> {
    let Effect::ReportAccepted {
        user,
        nonce,
        session,
        reason,
        earned_wei,
    } = effect
    else {
        return None;
    };
    let earned = matches!(
        reason,
        CreditReason::Earned | CreditReason::EarnedDespiteFail
    );
    Some(Delivery::Reply(
        Recipient::User(to_wire(*user)),
        messages::ReportAck {
            nonce: *nonce,
            session_id: *session,
            earned,
            reason: *reason as u8,
            earned_wei: *earned_wei,
        }
        .into(),
    ))
}
