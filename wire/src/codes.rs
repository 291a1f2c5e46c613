//! Stable error codes carried by `ErrorReply.code` (SPEC.md section 9). Ranges:
//! 0x0100..0x01FF protocol (this crate), 0x0200..0x02FF market (the engine's
//! `MarketError::code`), 0x0300..0x03FF router (load, limits). Never renumber.

use crate::codec::DecodeError;
use crate::frame::FrameError;
use crate::signature::SigError;

/// Protocol errors (frames, bodies, signatures, login): this crate.
pub const PROTOCOL_RANGE: std::ops::RangeInclusive<u16> = 0x0100..=0x01FF;
/// Market errors (replay, quota, sessions, claims): the engine's `MarketError::code`.
pub const MARKET_RANGE: std::ops::RangeInclusive<u16> = 0x0200..=0x02FF;
/// Router errors (load shedding, connection limits): the gateway.
pub const ROUTER_RANGE: std::ops::RangeInclusive<u16> = 0x0300..=0x03FF;

/// Which layer a code belongs to, for logs and clients deciding whether to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Protocol,
    Market,
    Router,
    Unknown,
}

pub fn layer(code: u16) -> Layer {
    if PROTOCOL_RANGE.contains(&code) {
        Layer::Protocol
    } else if MARKET_RANGE.contains(&code) {
        Layer::Market
    } else if ROUTER_RANGE.contains(&code) {
        Layer::Router
    } else {
        Layer::Unknown
    }
}

/// The frame could not be parsed (unknown flags, reserved bits set).
pub const MALFORMED_FRAME: u16 = 0x0101;
pub const BAD_MAGIC: u16 = 0x0102;
pub const UNSUPPORTED_VERSION: u16 = 0x0103;
pub const FRAME_TOO_LARGE: u16 = 0x0104;
pub const TRUNCATED_BODY: u16 = 0x0105;
pub const TRAILING_BYTES: u16 = 0x0106;
pub const UNKNOWN_MESSAGE_TYPE: u16 = 0x0107;
pub const BAD_SIGNATURE: u16 = 0x0108;
pub const HIGH_S_SIGNATURE: u16 = 0x0109;
pub const SIGNER_MISMATCH: u16 = 0x010A;
/// A message other than the login answer before login completed.
pub const NOT_LOGGED_IN: u16 = 0x010B;
/// A bad enum value, a string too long or not UTF-8, a list too long.
pub const BAD_FIELD: u16 = 0x010C;
/// This message type may not be sent by a client (router-only messages).
pub const NOT_ALLOWED: u16 = 0x010D;
/// The signed originator is not the address this connection logged in as.
pub const WRONG_SENDER: u16 = 0x010E;

/// Queue full: retry after `ErrorReply.retry_after_ms` (R-RFC-2).
pub const OVERLOADED: u16 = 0x0301;
pub const TOO_MANY_CONNECTIONS: u16 = 0x0302;
pub const SLOW_CONSUMER: u16 = 0x0303;
pub const IDLE_TIMEOUT: u16 = 0x0304;
pub const SHUTTING_DOWN: u16 = 0x0305;

pub fn of_frame_error(error: &FrameError) -> u16 {
    match error {
        FrameError::BadMagic { .. } => BAD_MAGIC,
        FrameError::UnsupportedVersion { .. } => UNSUPPORTED_VERSION,
        FrameError::TooLarge { .. } => FRAME_TOO_LARGE,
        FrameError::UnknownFlags { .. } | FrameError::ReservedNotZero { .. } => MALFORMED_FRAME,
    }
}

pub fn of_decode_error(error: &DecodeError) -> u16 {
    match error {
        DecodeError::Truncated { .. } => TRUNCATED_BODY,
        DecodeError::TrailingBytes { .. } => TRAILING_BYTES,
        DecodeError::UnknownMessageType { .. } => UNKNOWN_MESSAGE_TYPE,
        _ => BAD_FIELD,
    }
}

pub fn of_sig_error(error: &SigError) -> u16 {
    match error {
        SigError::HighS => HIGH_S_SIGNATURE,
        SigError::SignerMismatch { .. } => SIGNER_MISMATCH,
        SigError::BadSignature | SigError::BadRecoveryId => BAD_SIGNATURE,
    }
}

/// Short snake_case name of a code of any layer, for reports and metrics labels.
pub fn name(code: u16) -> &'static str {
    match code {
        MALFORMED_FRAME => "malformed_frame",
        BAD_MAGIC => "bad_magic",
        UNSUPPORTED_VERSION => "unsupported_version",
        FRAME_TOO_LARGE => "frame_too_large",
        TRUNCATED_BODY => "truncated_body",
        TRAILING_BYTES => "trailing_bytes",
        UNKNOWN_MESSAGE_TYPE => "unknown_message_type",
        BAD_SIGNATURE => "bad_signature",
        HIGH_S_SIGNATURE => "high_s_signature",
        SIGNER_MISMATCH => "signer_mismatch",
        NOT_LOGGED_IN => "not_logged_in",
        BAD_FIELD => "bad_field",
        NOT_ALLOWED => "not_allowed",
        WRONG_SENDER => "wrong_sender",
        OVERLOADED => "overloaded",
        TOO_MANY_CONNECTIONS => "too_many_connections",
        SLOW_CONSUMER => "slow_consumer",
        IDLE_TIMEOUT => "idle_timeout",
        SHUTTING_DOWN => "shutting_down",
        0x0201 => "replay",
        0x0202 => "zero_balance",
        0x0203 => "quota_exceeded",
        0x0204 => "unknown_model",
        0x0205 => "queue_full",
        0x0206 => "not_your_session",
        0x0207 => "already_reported",
        0x0208 => "unknown_session",
        0x0209 => "tokens_over_max",
        0x020A => "session_expired",
        0x020B => "not_operator",
        0x020C => "unknown_provider",
        0x020D => "unsupported_unit",
        0x020E => "weights_hash_mismatch",
        0x020F => "invalid_expiry",
        0x0210 => "invalid_tokens_max",
        0x0211 => "unknown_probe",
        0x0212 => "limit_reached",
        0x0213 => "claim_exceeds_owed",
        0x0214 => "nothing_owed",
        0x0215 => "unknown_rfc",
        0x0216 => "invalid_param",
        0x0217 => "arithmetic_overflow",
        0x0218 => "no_offer",
        0x0219 => "invalid_capacity",
        0x021A => "duplicate_model",
        0x021B => "bid_above_max",
        0x021C => "credit_unrepresentable",
        0x021D => "credit_overflow",
        0x021E => "invalid_param_set",
        _ => "unknown_code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_codes_stay_in_their_range_and_have_names() {
        let protocol = [
            MALFORMED_FRAME,
            BAD_MAGIC,
            UNSUPPORTED_VERSION,
            FRAME_TOO_LARGE,
            TRUNCATED_BODY,
            TRAILING_BYTES,
            UNKNOWN_MESSAGE_TYPE,
            BAD_SIGNATURE,
            HIGH_S_SIGNATURE,
            SIGNER_MISMATCH,
            NOT_LOGGED_IN,
            BAD_FIELD,
            NOT_ALLOWED,
            WRONG_SENDER,
        ];
        for code in protocol {
            assert_eq!(layer(code), Layer::Protocol);
            assert_ne!(name(code), "unknown_code");
        }
        for code in [
            OVERLOADED,
            TOO_MANY_CONNECTIONS,
            SLOW_CONSUMER,
            IDLE_TIMEOUT,
            SHUTTING_DOWN,
        ] {
            assert_eq!(layer(code), Layer::Router);
            assert_ne!(name(code), "unknown_code");
        }
        assert_eq!(layer(0x0203), Layer::Market);
        assert_eq!(layer(0x0400), Layer::Unknown);
        let mut sorted = protocol.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), protocol.len(), "codes are unique");
    }
}
