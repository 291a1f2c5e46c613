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
    /// 0x01xx: the frame, body, signature or login ([`PROTOCOL_RANGE`]).
    Protocol,
    /// 0x02xx: the market's rules ([`MARKET_RANGE`]).
    Market,
    /// 0x03xx: the router's load and connection limits ([`ROUTER_RANGE`]).
    Router,
    /// Outside every range: a code from a newer router.
    Unknown,
}

/// The layer a code belongs to, by its range.
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

/// Declares every code once: its constant, its name, and its row in `ALL`.
macro_rules! codes {
    ($($(#[$doc:meta])* $konst:ident = $code:expr, $name:expr;)*) => {
        $($(#[$doc])* pub const $konst: u16 = $code;)*
        /// Every code of every layer with its one name (wire, metrics labels, docs):
        /// `docs/PROTOCOL.md`'s error table is checked against this.
        pub const ALL: &[(u16, &str)] = &[$(($code, $name)),*];
    };
}

codes! {
    /// The frame could not be parsed (unknown flags, reserved bits set).
    MALFORMED_FRAME = 0x0101, "malformed_frame";
    /// The frame does not start with `YS`; connection closed.
    BAD_MAGIC = 0x0102, "bad_magic";
    /// Header version is not 1; connection closed.
    UNSUPPORTED_VERSION = 0x0103, "unsupported_version";
    /// Frame above `frame_bytes_max`; connection closed.
    FRAME_TOO_LARGE = 0x0104, "frame_too_large";
    /// The body ended before a field (reason names it).
    TRUNCATED_BODY = 0x0105, "truncated_body";
    /// Bytes after the last field.
    TRAILING_BYTES = 0x0106, "trailing_bytes";
    /// A type not in section 5.
    UNKNOWN_MESSAGE_TYPE = 0x0107, "unknown_message_type";
    /// r or s out of range, no key recovers, or v not 0/1/27/28.
    BAD_SIGNATURE = 0x0108, "bad_signature";
    /// S above n/2.
    HIGH_S_SIGNATURE = 0x0109, "high_s_signature";
    /// The signature recovers to another address than `from` (or a weights proof not signed by the provider).
    SIGNER_MISMATCH = 0x010A, "signer_mismatch";
    /// A message other than the login answer before login completed.
    NOT_LOGGED_IN = 0x010B, "not_logged_in";
    /// A bad enum value, a string too long or not UTF-8, a list too long.
    BAD_FIELD = 0x010C, "bad_field";
    /// This message type may not be sent by a client (router-only messages).
    NOT_ALLOWED = 0x010D, "not_allowed";
    /// The signed originator is not the address this connection logged in as.
    WRONG_SENDER = 0x010E, "wrong_sender";

    // Market codes: the engine's `MarketError::code` and `MarketError::name` give
    // the same numbers and names (checked by a test in the workspace's tests).
    /// Nonce not above the last accepted one (detail: the last accepted nonce).
    REPLAY = 0x0201, "replay";
    /// An RFC from an address whose MOR balance is 0.
    ZERO_BALANCE = 0x0202, "zero_balance";
    /// TokenMax above the quota left today (detail: tokens left today).
    QUOTA_EXCEEDED = 0x0203, "quota_exceeded";
    /// A model id not in the catalog.
    UNKNOWN_MODEL = 0x0204, "unknown_model";
    /// The model's RFC queue is full (R-RFC-2); not the router's `OVERLOADED`.
    QUEUE_FULL = 0x0205, "queue_full";
    /// A report of another user's session.
    NOT_YOUR_SESSION = 0x0206, "not_your_session";
    /// A second report of a session.
    ALREADY_REPORTED = 0x0207, "already_reported";
    /// No such session.
    UNKNOWN_SESSION = 0x0208, "unknown_session";
    /// Report's tokens above the session's TokenMax (detail: the session's TokenMax).
    TOKENS_OVER_MAX = 0x0209, "tokens_over_max";
    /// A report after the session expired.
    SESSION_EXPIRED = 0x020A, "session_expired";
    /// `BalanceUpdate` or `SetParams` from another address than the operator.
    NOT_OPERATOR = 0x020B, "not_operator";
    /// A provider message from an address that never registered.
    UNKNOWN_PROVIDER = 0x020C, "unknown_provider";
    /// An offer's unit is not 0 (token).
    UNSUPPORTED_UNIT = 0x020D, "unsupported_unit";
    /// An offer's weights hash is not the catalog's.
    WEIGHTS_HASH_MISMATCH = 0x020E, "weights_hash_mismatch";
    /// `expires_at_ms` not after the router's now (reason says "in the past") or more than `rfc_ttl_max_ms` ahead (reason says "too far", with the limit) (detail: the bound broken, Unix ms: the router's now when in the past, the latest accepted expiry when too far).
    INVALID_EXPIRY = 0x020F, "invalid_expiry";
    /// TokenMax 0 or above `tokens_max_limit` (detail: `tokens_max_limit`).
    INVALID_TOKENS_MAX = 0x0210, "invalid_tokens_max";
    /// A probe answer for no open probe of this provider (also after its deadline).
    UNKNOWN_PROBE = 0x0211, "unknown_probe";
    /// A configured bound (accounts, providers, offers per provider, endpoint bytes, balance entries, open RFCs); reason names it (detail: the bound).
    LIMIT_REACHED = 0x0212, "limit_reached";
    /// Claim above what is owed (detail: owed, wei).
    CLAIM_EXCEEDS_OWED = 0x0213, "claim_exceeds_owed";
    /// Claim with nothing owed.
    NOTHING_OWED = 0x0214, "nothing_owed";
    /// Cancel of an RFC that is not a queued RFC of the sender's.
    UNKNOWN_RFC = 0x0215, "unknown_rfc";
    /// Unknown parameter id or invalid value.
    INVALID_PARAM = 0x0216, "invalid_param";
    /// An amount does not fit 128 bits.
    ARITHMETIC_OVERFLOW = 0x0217, "arithmetic_overflow";
    /// `UpdateBid`/`WithdrawBid` for a model the provider does not offer.
    NO_OFFER = 0x0218, "no_offer";
    /// Capacity 0, above `offer_capacity_max`, or below the sessions open.
    INVALID_CAPACITY = 0x0219, "invalid_capacity";
    /// A registration listing a model twice.
    DUPLICATE_MODEL = 0x021A, "duplicate_model";
    /// R-MONEY-1: a bid above `market.bid_wei_per_token_max` (detail: the bound).
    BID_ABOVE_MAX = 0x021B, "bid_above_max";
    /// R-MONEY-1: TokenMax × the bid bound does not fit u128 (detail: the largest
    /// TokenMax that does).
    CREDIT_UNREPRESENTABLE = 0x021C, "credit_unrepresentable";
    /// R-MONEY-1: the report's credit would overflow the block's totals; nothing
    /// changed, report again after `retry_after_ms` (the next block).
    CREDIT_OVERFLOW = 0x021D, "credit_overflow";
    /// R-CONTRACT-6: a parameter set that would stop the market (the reason says why).
    INVALID_PARAM_SET = 0x021E, "invalid_param_set";
    /// R-ID-8: a nonce more than 2^40 above max(the last accepted one, the router's
    /// time in µs); detail: the largest nonce accepted now (the reason names both).
    NONCE_GAP = 0x021F, "nonce_gap";
    /// R-SESSION-1: the user already holds `market.user_sessions_open_max` open
    /// sessions and unanswered RFCs (detail: the bound).
    USER_SESSIONS_FULL = 0x0222, "user_sessions_full";
    /// R-REPORT-3: a report's `ttft_ms` above its `elapsed_ms` (detail: elapsed_ms).
    TTFT_OVER_ELAPSED = 0x0223, "ttft_over_elapsed";
    /// R-REPORT-3: a report's `prompt_tokens` above `market.prompt_tokens_max`
    /// (detail: the bound).
    PROMPT_TOKENS_OVER_MAX = 0x0224, "prompt_tokens_over_max";
    /// R-SESSION-1: the session was closed because its provider did not sign its
    /// start within `market.ticket_start_timeout_ms`.
    SESSION_NOT_STARTED = 0x0225, "session_not_started";
    /// R-SESSION-1: a `SessionStart` for a session already started.
    SESSION_ALREADY_STARTED = 0x0226, "session_already_started";
    /// R-CHAIN-3: a `ChainPaid` figure above the provider's cumulative credit
    /// (detail: that credit, wei).
    PAID_ABOVE_CREDIT = 0x022C, "paid_above_credit";
    /// R-CHAIN-3: an in-router `Claim` while the market settles on a chain: claim
    /// there (`yellowstone-chain claim`).
    CLAIM_ON_CHAIN = 0x022D, "claim_on_chain";
    /// R-CHAIN-3: `ChainPaid` for another chain or contract than the market's
    /// (detail: the market's chain id).
    WRONG_CHAIN = 0x022E, "wrong_chain";
    /// R-CHAIN-3: `ChainPaid` entries not strictly ascending by provider.
    CHAIN_PAID_UNSORTED = 0x022F, "chain_paid_unsorted";

    /// The router's inbound queue is full: retry after `ErrorReply.retry_after_ms`.
    OVERLOADED = 0x0301, "overloaded";
    /// `connections_max` reached; connection closed.
    TOO_MANY_CONNECTIONS = 0x0302, "too_many_connections";
    /// Reserved: a client not reading its replies is disconnected without a frame.
    SLOW_CONSUMER = 0x0303, "slow_consumer";
    /// Reserved: an idle connection is closed without a frame.
    IDLE_TIMEOUT = 0x0304, "idle_timeout";
    /// The router is stopping and took no more commands.
    SHUTTING_DOWN = 0x0305, "shutting_down";
    /// R-PROV-3: the sender holds no MOR and the router has accepted nothing from
    /// it (no registration, RFC or session): only a `RegisterProvider` from it can
    /// be applied, so anything else is refused before the engine (and the journal).
    UNKNOWN_SENDER = 0x0306, "unknown_sender";
    /// §9: the connection did not log in within `network.login_timeout_ms`.
    LOGIN_TIMEOUT = 0x0307, "login_timeout";
    /// §9, R-PROV-3: near `network.connections_max`, or past
    /// `network.connections_unproven_max`, the oldest idle connection whose address
    /// holds no MOR and no route (or that never logged in) is closed for a new one.
    EVICTED = 0x0308, "evicted";
    /// R-PROV-3, R-QUOTA-5 (issue 27, quota-flood): the connection was refused more
    /// than `network.conn_refusals_per_s_max` messages within one second by the
    /// gateway (before the engine); this is the last frame, and the connection
    /// closes after it. Also past `network.addr_refusals_per_s_max` refusals of
    /// one address's connections, then also the answer to that address's logins
    /// until the second ends (issue 27, R-PROV-3). detail: the bound.
    TOO_MANY_REFUSALS = 0x0309, "too_many_refusals";
    /// R-HA-3 (issue 25): this member of a replicated router group does not lead. Sent
    /// instead of `LoginChallenge` to a new connection, or to each open connection of a
    /// leader that lost office; the connection closes after it. detail: the leader's
    /// member id (0 = none known); the reason names its endpoint
    /// ([`crate::leader::parse_not_leader`]); retry_after_ms: 0 with a leader named,
    /// else a suggested wait (the election timeout).
    NOT_LEADER = 0x030A, "not_leader";
}

/// The stable code of a frame error (0x0101..0x0104).
pub fn of_frame_error(error: &FrameError) -> u16 {
    match error {
        FrameError::BadMagic { .. } => BAD_MAGIC,
        FrameError::UnsupportedVersion { .. } => UNSUPPORTED_VERSION,
        FrameError::TooLarge { .. } => FRAME_TOO_LARGE,
        FrameError::UnknownFlags { .. } | FrameError::ReservedNotZero { .. } => MALFORMED_FRAME,
    }
}

/// The stable code of a body decoding error (0x0105..0x0107, else `bad_field`).
pub fn of_decode_error(error: &DecodeError) -> u16 {
    match error {
        DecodeError::Truncated { .. } => TRUNCATED_BODY,
        DecodeError::TrailingBytes { .. } => TRAILING_BYTES,
        DecodeError::UnknownMessageType { .. } => UNKNOWN_MESSAGE_TYPE,
        _ => BAD_FIELD,
    }
}

/// The stable code of a signature error (0x0108..0x010A).
pub fn of_sig_error(error: &SigError) -> u16 {
    match error {
        SigError::HighS => HIGH_S_SIGNATURE,
        SigError::SignerMismatch { .. } => SIGNER_MISMATCH,
        SigError::BadSignature | SigError::BadRecoveryId => BAD_SIGNATURE,
    }
}

/// Short snake_case name of a code of any layer, for reports and metrics labels
/// (`"unknown_code"` for a code not in `ALL`).
pub fn name(code: u16) -> &'static str {
    ALL.iter()
        .find(|(c, _)| *c == code)
        .map_or("unknown_code", |(_, name)| name)
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
            NOT_LEADER,
        ] {
            assert_eq!(layer(code), Layer::Router);
            assert_ne!(name(code), "unknown_code");
        }
        assert_eq!(layer(0x0203), Layer::Market);
        assert_eq!(layer(0x0400), Layer::Unknown);
        let mut codes: Vec<u16> = ALL.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len(), "codes are unique");
        let mut names: Vec<&str> = ALL.iter().map(|(_, n)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "names are unique");
        assert!(ALL.iter().all(|(c, _)| layer(*c) != Layer::Unknown));
        assert_eq!(name(QUEUE_FULL), "queue_full");
        assert_eq!(name(0x0400), "unknown_code");
    }
}
