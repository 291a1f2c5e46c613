//! Nonce numbering and resynchronisation shared by every client the project ships
//! (R-ID-4, R-ID-8; docs/PROTOCOL.md "Nonces").
//!
//! Several programs may sign with one key (a node and `yellowstone-ctl`, say): each
//! numbers its messages from the clock in microseconds, and when the router refuses one
//! with `replay` (code 0x0201), whose `detail` is the last nonce it accepted from the
//! address, the program moves its counter above that nonce and sends the refused
//! message once more with a fresh nonce. A refused message spends nothing (R-OPS-4), so
//! the resend is safe.

use crate::codes;
use crate::{ErrorReply, Message};

/// The Unix time in microseconds (0 if the clock is before 1970): the floor of every
/// fresh nonce, so that a restarted program never reuses one (R-ID-4).
pub fn clock_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The nonce after `last`: `max(clock µs, last + 1)` (R-ID-8). Saturates at
/// `u64::MAX`, which the router refuses (`nonce_gap`) long before a counter gets there.
pub fn next_after(last: u64) -> u64 {
    clock_micros().max(last.saturating_add(1))
}

/// The last nonce the router accepted from the sender, if `reply` is a `replay`
/// refusal (its `detail`, R-ID-8); `None` for every other refusal. A `detail` above
/// `u64::MAX` cannot be a nonce and is read as `u64::MAX`.
pub fn replay_last_accepted(reply: &ErrorReply) -> Option<u64> {
    (reply.code == codes::REPLAY).then(|| u64::try_from(reply.detail).unwrap_or(u64::MAX))
}

/// Replaces the nonce of a signed client message (the one `claimed_origin` reads) so
/// it can be signed again and resent; false for a message without a nonce
/// (`LoginAnswer`, the unsigned ones), which is left as it was.
pub fn set_nonce(message: &mut Message, nonce: u64) -> bool {
    let slot = match message {
        Message::RegisterProvider(m) => &mut m.nonce,
        Message::UpdateBid(m) => &mut m.nonce,
        Message::WithdrawBid(m) => &mut m.nonce,
        Message::ProviderAnnounce(m) => &mut m.nonce,
        Message::Rfc(m) => &mut m.nonce,
        Message::RfcCancel(m) => &mut m.nonce,
        Message::ProbeAnswer(m) => &mut m.nonce,
        Message::Report(m) => &mut m.nonce,
        Message::SessionStart(m) => &mut m.nonce,
        Message::SubscribeBatches(m) => &mut m.nonce,
        Message::Claim(m) => &mut m.nonce,
        Message::BalanceUpdate(m) => &mut m.nonce,
        Message::SetParams(m) => &mut m.nonce,
        Message::ChainPaid(m) => &mut m.nonce,
        _ => return false,
    };
    *slot = nonce;
    true
}

/// The nonce of the client message that `answer` (a router message) refers to: an
/// `Ack`, `RfcAccepted`, `RfcFailed`, `ReportAck`, `ClaimAck` carries it as `nonce`,
/// an `ErrorReply` as `ref_nonce`, a `SessionTicket` as `rfc_nonce`. Used to map the
/// answer to a resent message back to the nonce its sender first gave it.
pub fn answer_nonce_mut(answer: &mut Message) -> Option<&mut u64> {
    Some(match answer {
        Message::Ack(m) => &mut m.nonce,
        Message::RfcAccepted(m) => &mut m.nonce,
        Message::RfcFailed(m) => &mut m.nonce,
        Message::ReportAck(m) => &mut m.nonce,
        Message::ClaimAck(m) => &mut m.nonce,
        Message::ErrorReply(m) => &mut m.ref_nonce,
        Message::SessionTicket(m) => &mut m.rfc_nonce,
        _ => return None,
    })
}

/// How many of its most recent signed messages a client keeps to resend after a
/// replay refusal (the refusal names the message by its nonce). Older ones are only
/// reported refused.
pub const RESEND_WINDOW: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_id_8_next_after_is_above_the_last_and_the_clock() {
        let now = clock_micros();
        assert!(next_after(5) >= now);
        let far = now + 1_000_000_000;
        assert_eq!(next_after(far), far + 1);
        assert_eq!(next_after(u64::MAX), u64::MAX);
    }

    #[test]
    fn set_nonce_changes_what_claimed_origin_reads() {
        let mut message: Message = crate::SessionStart {
            nonce: 3,
            ..crate::SessionStart::default()
        }
        .into();
        assert!(set_nonce(&mut message, 9));
        assert_eq!(message.claimed_origin().map(|(_, n)| n), Some(9));
        let mut ping: Message = crate::Ping { payload: 1 }.into();
        assert!(!set_nonce(&mut ping, 9));
    }

    #[test]
    fn r_id_8_only_a_replay_refusal_resynchronises() {
        let replay = ErrorReply {
            code: codes::REPLAY,
            detail: 77,
            ..ErrorReply::default()
        };
        assert_eq!(replay_last_accepted(&replay), Some(77));
        let other = ErrorReply {
            code: codes::REPLAY + 1,
            detail: 77,
            ..ErrorReply::default()
        };
        assert_eq!(replay_last_accepted(&other), None);
        let huge = ErrorReply {
            code: codes::REPLAY,
            detail: u128::MAX,
            ..ErrorReply::default()
        };
        assert_eq!(replay_last_accepted(&huge), Some(u64::MAX));
    }
}
