//! Market refusals: one enum, stable codes in 0x0200..0x02FF (SPEC.md section 9),
//! with the data a client needs to act (quota left, when to retry).

use crate::types::{ModelId, SessionId};
use bincode::{Decode, Encode};

/// Which bound was hit, for `MarketError::LimitReached`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Limit {
    /// `accounts_max`: accounts the engine holds.
    Accounts,
    /// `providers_max`: provider places.
    Providers,
    /// `offers_per_provider_max`: offers in one registration.
    OffersPerProvider,
    /// `offer_capacity_max`: sessions one offer may declare.
    OfferCapacity,
    /// `endpoint_bytes_max`: bytes of an endpoint.
    EndpointBytes,
    /// `balance_entries_max`: entries in one `BalanceUpdate`.
    BalanceEntries,
    /// `tokens_max_limit`: TokenMax of one RFC.
    TokensMax,
    /// `rfcs_open_max`: open RFCs in the market.
    RfcsOpen,
}

/// Which running sum a credit would overflow, for `MarketError::CreditOverflow`
/// (R-MONEY-1, R-OPS-4): every sum a report can push is checked before the report
/// is accepted, so that sealing the block and replaying the journal never overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum CreditSum {
    /// The block's batch total or the provider's block total, wei.
    BlockWei,
    /// The provider's block total of tokens (u64) or of sessions (u32).
    BlockCount,
    /// The ledger's cumulative shortfall (R-CONTRACT-2), wei: it only grows, so a
    /// credit refused for it can never be accepted later.
    LedgerShortfall,
}

impl CreditSum {
    /// The sum's name, as the refusal's reason gives it.
    pub fn name(self) -> &'static str {
        match self {
            CreditSum::BlockWei => "the block's wei totals",
            CreditSum::BlockCount => "the provider's block token or session count",
            CreditSum::LedgerShortfall => "the ledger's cumulative shortfall",
        }
    }
}

/// A market refusal (R-OPS-4: refused before anything is journaled); `code` gives
/// its stable code (0x02xx, `docs/PROTOCOL.md`, "Error codes") and `detail`/
/// `retry_after_ms` the data a client acts on.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum MarketError {
    /// R-ID-4: nonce not above the last accepted one.
    Replay {
        /// The last nonce accepted from the address.
        nonce_last: u64,
    },
    /// R-QUOTA-6: a zero balance cannot submit RFCs.
    ZeroBalance,
    /// R-QUOTA-5: TokenMax above what is left today.
    QuotaExceeded {
        /// Tokens left of the user's quota today.
        tokens_left: u64,
    },
    /// A model id not in the catalog.
    UnknownModel {
        /// The model id.
        model: ModelId,
    },
    /// R-RFC-2: the model's queue is full.
    Overloaded {
        /// When to send again, ms.
        retry_after_ms: u32,
    },
    /// A report of another user's session.
    NotYourSession {
        /// The session id.
        session: SessionId,
    },
    /// A second report of a session.
    AlreadyReported {
        /// The session id.
        session: SessionId,
    },
    /// No such session.
    UnknownSession {
        /// The session id.
        session: SessionId,
    },
    /// Report's tokens above the session's TokenMax.
    TokensOverMax {
        /// The TokenMax given.
        tokens_max: u64,
    },
    /// A report after the session expired.
    SessionExpired {
        /// The session id.
        session: SessionId,
    },
    /// `BalanceUpdate` or `SetParams` from another address than the operator.
    NotOperator,
    /// A provider message from an address that never registered.
    UnknownProvider,
    /// An offer's unit is not 0 (token).
    UnsupportedUnit {
        /// The unit byte given.
        unit: u8,
    },
    /// An offer's weights hash is not the catalog's.
    WeightsHashMismatch {
        /// The model id.
        model: ModelId,
    },
    /// R-RFC-1: `expires_at_ms` must lie in `(now_ms, now_ms + ttl_max_ms]` (Unix ms).
    InvalidExpiry {
        /// The RFC's expiry given, Unix ms.
        expires_at_ms: u64,
        /// The router's clock when it judged the RFC.
        now_ms: u64,
        /// `rfc_ttl_max_ms`.
        ttl_max_ms: u64,
    },
    /// R-RFC-1: TokenMax must be in `1..=limit` (`tokens_max_limit`).
    InvalidTokensMax {
        /// The TokenMax given.
        tokens_max: u64,
        /// The bound given (`tokens_max_limit`).
        limit: u64,
    },
    /// A probe answer for no open probe of this provider (also after its deadline).
    UnknownProbe {
        /// The probe id.
        probe: u64,
    },
    /// A configured bound (accounts, providers, offers per provider, endpoint bytes, balance entries, open RFCs); reason names it.
    LimitReached {
        /// Which bound was hit.
        limit: Limit,
        /// The bound, in the unit of what it counts.
        max: u64,
    },
    /// Claim above what is owed.
    ClaimExceedsOwed {
        /// What the provider is owed, wei.
        owed_wei: u128,
    },
    /// Claim with nothing owed.
    NothingOwed,
    /// Cancel of an RFC that is not a queued RFC of the sender's.
    UnknownRfc {
        /// The RFC id.
        rfc: u64,
    },
    /// Unknown parameter id or invalid value.
    InvalidParam {
        /// The parameter id.
        param: u16,
    },
    /// An amount does not fit 128 bits.
    ArithmeticOverflow,
    /// `UpdateBid`/`WithdrawBid` for a model the provider does not offer.
    NoOffer {
        /// The model id.
        model: ModelId,
    },
    /// Capacity 0, above `offer_capacity_max`, or below the sessions open.
    InvalidCapacity {
        /// The capacity given.
        capacity: u32,
    },
    /// A registration listing a model twice.
    DuplicateModel {
        /// The model id.
        model: ModelId,
    },
    /// R-MONEY-1: a bid above `bid_wei_per_token_max`.
    BidAboveMax {
        /// The bound, wei per token.
        bid_wei_per_token_max: u128,
    },
    /// R-MONEY-1: TokenMax × `bid_wei_per_token_max` (the session's worst-case credit)
    /// does not fit u128; `tokens_max_fit` is the largest TokenMax that would.
    CreditUnrepresentable {
        /// The largest TokenMax whose worst-case credit fits u128.
        tokens_max_fit: u64,
    },
    /// R-MONEY-1: the report's credit would overflow its provider's block total or
    /// the block's batch total; nothing changed (the session stays open), so the
    /// same report may be sent again once the block is sealed.
    CreditOverflow {
        /// 0 when the sum never shrinks (`CreditSum::LedgerShortfall`).
        retry_after_ms: u32,
        /// The running sum that would overflow.
        sum: CreditSum,
    },
    /// R-CONTRACT-6: a parameter set that would stop the market, with why.
    InvalidParamSet {
        /// Why the set would stop the market.
        reason: String,
    },
    /// R-ID-8: the nonce is more than 2^40 above the last accepted one (or above the
    /// router's time in microseconds, for an address with no nonce yet, or below it),
    /// so that no message can use up an address.
    NonceGap {
        /// The last nonce accepted from the address, if any.
        nonce_last: Option<u64>,
        /// The largest nonce accepted now: `max(nonce_last, now_ms × 1000) + 2^40`.
        nonce_max: u64,
    },
    /// R-SESSION-1: the user already holds `open` open sessions and unanswered
    /// RFCs, the most `user_sessions_open_max` (`max`) allows.
    UserSessionsFull {
        /// Open sessions plus unanswered RFCs the user holds.
        open: u32,
        /// The bound, in the unit of what it counts.
        max: u32,
    },
    /// R-REPORT-3: a report's time to the first token above its whole time.
    TtftOverElapsed {
        /// The report's time to the first token, ms.
        ttft_ms: u64,
        /// The report's whole time, ms.
        elapsed_ms: u64,
    },
    /// R-REPORT-3: a report's prompt tokens above `prompt_tokens_max`.
    PromptTokensOverMax {
        /// The report's prompt tokens.
        prompt_tokens: u64,
        /// The bound, in the unit of what it counts.
        max: u64,
    },
    /// R-SESSION-1: the session was closed because its provider did not sign its
    /// start within `ticket_start_timeout_ms` (no credit, no penalty).
    SessionNotStarted {
        /// The session id.
        session: SessionId,
    },
    /// R-SESSION-1: a second `SessionStart` for one session.
    SessionAlreadyStarted {
        /// The session id.
        session: SessionId,
    },
    /// R-CHAIN-3: a `ChainPaid` figure above the provider's cumulative credit.
    PaidAboveCredit {
        /// The provider's cumulative credit, wei.
        credited_wei: u128,
    },
    /// R-CHAIN-3: a chain is configured, so payment happens only on the chain
    /// (`yellowstone-chain claim`), not in the router.
    ClaimOnChain,
    /// R-CHAIN-3: `ChainPaid` for another chain or contract than the market's
    /// settlement domain (or none is configured); `chain_id` is the market's.
    WrongChain {
        /// The market's settlement chain id.
        chain_id: u64,
    },
    /// R-CHAIN-3: `ChainPaid` entries not strictly ascending by provider.
    ChainPaidUnsorted,
}

/// R-ID-8: how far above `max(last accepted nonce, router time in µs)` a nonce may be.
pub const NONCE_GAP_MAX: u64 = 1 << 40;

impl MarketError {
    /// Stable wire code; never renumber, only append.
    pub fn code(&self) -> u16 {
        match self {
            MarketError::Replay { .. } => 0x0201,
            MarketError::ZeroBalance => 0x0202,
            MarketError::QuotaExceeded { .. } => 0x0203,
            MarketError::UnknownModel { .. } => 0x0204,
            MarketError::Overloaded { .. } => 0x0205,
            MarketError::NotYourSession { .. } => 0x0206,
            MarketError::AlreadyReported { .. } => 0x0207,
            MarketError::UnknownSession { .. } => 0x0208,
            MarketError::TokensOverMax { .. } => 0x0209,
            MarketError::SessionExpired { .. } => 0x020A,
            MarketError::NotOperator => 0x020B,
            MarketError::UnknownProvider => 0x020C,
            MarketError::UnsupportedUnit { .. } => 0x020D,
            MarketError::WeightsHashMismatch { .. } => 0x020E,
            MarketError::InvalidExpiry { .. } => 0x020F,
            MarketError::InvalidTokensMax { .. } => 0x0210,
            MarketError::UnknownProbe { .. } => 0x0211,
            MarketError::LimitReached { .. } => 0x0212,
            MarketError::ClaimExceedsOwed { .. } => 0x0213,
            MarketError::NothingOwed => 0x0214,
            MarketError::UnknownRfc { .. } => 0x0215,
            MarketError::InvalidParam { .. } => 0x0216,
            MarketError::ArithmeticOverflow => 0x0217,
            MarketError::NoOffer { .. } => 0x0218,
            MarketError::InvalidCapacity { .. } => 0x0219,
            MarketError::DuplicateModel { .. } => 0x021A,
            MarketError::BidAboveMax { .. } => 0x021B,
            MarketError::CreditUnrepresentable { .. } => 0x021C,
            MarketError::CreditOverflow { .. } => 0x021D,
            MarketError::InvalidParamSet { .. } => 0x021E,
            MarketError::NonceGap { .. } => 0x021F,
            MarketError::UserSessionsFull { .. } => 0x0222,
            MarketError::TtftOverElapsed { .. } => 0x0223,
            MarketError::PromptTokensOverMax { .. } => 0x0224,
            MarketError::SessionNotStarted { .. } => 0x0225,
            MarketError::SessionAlreadyStarted { .. } => 0x0226,
            MarketError::PaidAboveCredit { .. } => 0x022C,
            MarketError::ClaimOnChain => 0x022D,
            MarketError::WrongChain { .. } => 0x022E,
            MarketError::ChainPaidUnsorted => 0x022F,
        }
    }

    /// Short snake_case name, used in metrics labels and reports.
    pub fn name(&self) -> &'static str {
        match self {
            MarketError::Replay { .. } => "replay",
            MarketError::ZeroBalance => "zero_balance",
            MarketError::QuotaExceeded { .. } => "quota_exceeded",
            MarketError::UnknownModel { .. } => "unknown_model",
            // One name per code across wire, metrics and engine (wire's codes::ALL).
            MarketError::Overloaded { .. } => "queue_full",
            MarketError::NotYourSession { .. } => "not_your_session",
            MarketError::AlreadyReported { .. } => "already_reported",
            MarketError::UnknownSession { .. } => "unknown_session",
            MarketError::TokensOverMax { .. } => "tokens_over_max",
            MarketError::SessionExpired { .. } => "session_expired",
            MarketError::NotOperator => "not_operator",
            MarketError::UnknownProvider => "unknown_provider",
            MarketError::UnsupportedUnit { .. } => "unsupported_unit",
            MarketError::WeightsHashMismatch { .. } => "weights_hash_mismatch",
            MarketError::InvalidExpiry { .. } => "invalid_expiry",
            MarketError::InvalidTokensMax { .. } => "invalid_tokens_max",
            MarketError::UnknownProbe { .. } => "unknown_probe",
            MarketError::LimitReached { .. } => "limit_reached",
            MarketError::ClaimExceedsOwed { .. } => "claim_exceeds_owed",
            MarketError::NothingOwed => "nothing_owed",
            MarketError::UnknownRfc { .. } => "unknown_rfc",
            MarketError::InvalidParam { .. } => "invalid_param",
            MarketError::ArithmeticOverflow => "arithmetic_overflow",
            MarketError::NoOffer { .. } => "no_offer",
            MarketError::InvalidCapacity { .. } => "invalid_capacity",
            MarketError::DuplicateModel { .. } => "duplicate_model",
            MarketError::BidAboveMax { .. } => "bid_above_max",
            MarketError::CreditUnrepresentable { .. } => "credit_unrepresentable",
            MarketError::CreditOverflow { .. } => "credit_overflow",
            MarketError::InvalidParamSet { .. } => "invalid_param_set",
            MarketError::NonceGap { .. } => "nonce_gap",
            MarketError::UserSessionsFull { .. } => "user_sessions_full",
            MarketError::TtftOverElapsed { .. } => "ttft_over_elapsed",
            MarketError::PromptTokensOverMax { .. } => "prompt_tokens_over_max",
            MarketError::SessionNotStarted { .. } => "session_not_started",
            MarketError::SessionAlreadyStarted { .. } => "session_already_started",
            MarketError::PaidAboveCredit { .. } => "paid_above_credit",
            MarketError::ClaimOnChain => "claim_on_chain",
            MarketError::WrongChain { .. } => "wrong_chain",
            MarketError::ChainPaidUnsorted => "chain_paid_unsorted",
        }
    }

    /// The number a client most needs (quota left, retry-after, owed), else 0.
    pub fn detail(&self) -> u128 {
        match self {
            MarketError::Replay { nonce_last } => *nonce_last as u128,
            MarketError::QuotaExceeded { tokens_left } => *tokens_left as u128,
            MarketError::Overloaded { retry_after_ms } => *retry_after_ms as u128,
            MarketError::TokensOverMax { tokens_max } => *tokens_max as u128,
            MarketError::LimitReached { max, .. } => *max as u128,
            MarketError::InvalidExpiry { .. } => self.expiry_bound_ms().map_or(0, u128::from),
            MarketError::InvalidTokensMax { limit, .. } => *limit as u128,
            MarketError::ClaimExceedsOwed { owed_wei } => *owed_wei,
            MarketError::BidAboveMax {
                bid_wei_per_token_max,
            } => *bid_wei_per_token_max,
            MarketError::CreditUnrepresentable { tokens_max_fit } => *tokens_max_fit as u128,
            MarketError::CreditOverflow { retry_after_ms, .. } => *retry_after_ms as u128,
            MarketError::NonceGap { nonce_max, .. } => *nonce_max as u128,
            MarketError::UserSessionsFull { max, .. } => *max as u128,
            MarketError::TtftOverElapsed { elapsed_ms, .. } => *elapsed_ms as u128,
            MarketError::PromptTokensOverMax { max, .. } => *max as u128,
            MarketError::PaidAboveCredit { credited_wei } => *credited_wei,
            MarketError::WrongChain { chain_id } => u128::from(*chain_id),
            _ => 0,
        }
    }

    /// For `InvalidExpiry`, the bound the expiry broke, in Unix ms: the router's
    /// time (an expiry must be above it) when in the past, else the latest accepted
    /// expiry (`now + rfc_ttl_max_ms`). What `ErrorReply.detail` carries.
    pub fn expiry_bound_ms(&self) -> Option<u64> {
        match self {
            MarketError::InvalidExpiry {
                expires_at_ms,
                now_ms,
                ttl_max_ms,
            } => Some(if expires_at_ms <= now_ms {
                *now_ms
            } else {
                now_ms.saturating_add(*ttl_max_ms)
            }),
            _ => None,
        }
    }

    /// One value of every variant (fields zero), for tests that check every code,
    /// name and message. A variant missing here fails to compile (the match below).
    pub fn one_of_each() -> Vec<MarketError> {
        let all = vec![
            MarketError::Replay { nonce_last: 0 },
            MarketError::ZeroBalance,
            MarketError::QuotaExceeded { tokens_left: 0 },
            MarketError::UnknownModel { model: 0 },
            MarketError::Overloaded { retry_after_ms: 0 },
            MarketError::NotYourSession { session: 0 },
            MarketError::AlreadyReported { session: 0 },
            MarketError::UnknownSession { session: 0 },
            MarketError::TokensOverMax { tokens_max: 0 },
            MarketError::SessionExpired { session: 0 },
            MarketError::NotOperator,
            MarketError::UnknownProvider,
            MarketError::UnsupportedUnit { unit: 0 },
            MarketError::WeightsHashMismatch { model: 0 },
            MarketError::InvalidExpiry {
                expires_at_ms: 0,
                now_ms: 0,
                ttl_max_ms: 0,
            },
            MarketError::InvalidTokensMax {
                tokens_max: 0,
                limit: 0,
            },
            MarketError::UnknownProbe { probe: 0 },
            MarketError::LimitReached {
                limit: Limit::Accounts,
                max: 0,
            },
            MarketError::ClaimExceedsOwed { owed_wei: 0 },
            MarketError::NothingOwed,
            MarketError::UnknownRfc { rfc: 0 },
            MarketError::InvalidParam { param: 0 },
            MarketError::ArithmeticOverflow,
            MarketError::NoOffer { model: 0 },
            MarketError::InvalidCapacity { capacity: 0 },
            MarketError::DuplicateModel { model: 0 },
            MarketError::BidAboveMax {
                bid_wei_per_token_max: 0,
            },
            MarketError::CreditUnrepresentable { tokens_max_fit: 0 },
            MarketError::CreditOverflow {
                retry_after_ms: 0,
                sum: CreditSum::BlockWei,
            },
            MarketError::InvalidParamSet {
                reason: String::new(),
            },
            MarketError::NonceGap {
                nonce_last: None,
                nonce_max: 0,
            },
            MarketError::UserSessionsFull { open: 0, max: 0 },
            MarketError::TtftOverElapsed {
                ttft_ms: 0,
                elapsed_ms: 0,
            },
            MarketError::PromptTokensOverMax {
                prompt_tokens: 0,
                max: 0,
            },
            MarketError::SessionNotStarted { session: 0 },
            MarketError::SessionAlreadyStarted { session: 0 },
            MarketError::PaidAboveCredit { credited_wei: 0 },
            MarketError::ClaimOnChain,
            MarketError::WrongChain { chain_id: 0 },
            MarketError::ChainPaidUnsorted,
        ];
        for error in &all {
            // Add a new variant to the list above, then here.
            match error {
                MarketError::Replay { .. }
                | MarketError::ZeroBalance
                | MarketError::QuotaExceeded { .. }
                | MarketError::UnknownModel { .. }
                | MarketError::Overloaded { .. }
                | MarketError::NotYourSession { .. }
                | MarketError::AlreadyReported { .. }
                | MarketError::UnknownSession { .. }
                | MarketError::TokensOverMax { .. }
                | MarketError::SessionExpired { .. }
                | MarketError::NotOperator
                | MarketError::UnknownProvider
                | MarketError::UnsupportedUnit { .. }
                | MarketError::WeightsHashMismatch { .. }
                | MarketError::InvalidExpiry { .. }
                | MarketError::InvalidTokensMax { .. }
                | MarketError::UnknownProbe { .. }
                | MarketError::LimitReached { .. }
                | MarketError::ClaimExceedsOwed { .. }
                | MarketError::NothingOwed
                | MarketError::UnknownRfc { .. }
                | MarketError::InvalidParam { .. }
                | MarketError::ArithmeticOverflow
                | MarketError::NoOffer { .. }
                | MarketError::InvalidCapacity { .. }
                | MarketError::DuplicateModel { .. }
                | MarketError::BidAboveMax { .. }
                | MarketError::CreditUnrepresentable { .. }
                | MarketError::CreditOverflow { .. }
                | MarketError::InvalidParamSet { .. }
                | MarketError::NonceGap { .. } => {}
                MarketError::UserSessionsFull { .. }
                | MarketError::TtftOverElapsed { .. }
                | MarketError::PromptTokensOverMax { .. }
                | MarketError::SessionNotStarted { .. }
                | MarketError::SessionAlreadyStarted { .. } => {}
                MarketError::PaidAboveCredit { .. }
                | MarketError::ClaimOnChain
                | MarketError::WrongChain { .. }
                | MarketError::ChainPaidUnsorted => {}
            }
        }
        all
    }

    /// When to send again, ms (0: not by waiting).
    pub fn retry_after_ms(&self) -> u32 {
        match self {
            MarketError::Overloaded { retry_after_ms }
            | MarketError::CreditOverflow { retry_after_ms, .. } => *retry_after_ms,
            _ => 0,
        }
    }
}

impl std::fmt::Display for MarketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MarketError::Replay { nonce_last } => {
                write!(f, "replay: nonce must be above {nonce_last}")
            }
            MarketError::ZeroBalance => write!(f, "zero MOR balance: cannot submit requests"),
            MarketError::QuotaExceeded { tokens_left } => {
                write!(f, "quota exceeded: {tokens_left} tokens left today")
            }
            MarketError::UnknownModel { model } => write!(f, "unknown model {model}"),
            MarketError::Overloaded { retry_after_ms } => {
                write!(f, "overloaded, retry after {retry_after_ms} ms")
            }
            MarketError::NotYourSession { session } => write!(f, "session {session} is not yours"),
            MarketError::AlreadyReported { session } => {
                write!(f, "session {session} was already reported")
            }
            MarketError::UnknownSession { session } => write!(f, "unknown session {session}"),
            MarketError::TokensOverMax { tokens_max } => {
                write!(f, "tokens above the session's TokenMax of {tokens_max}")
            }
            MarketError::SessionExpired { session } => write!(f, "session {session} expired"),
            MarketError::NotOperator => write!(f, "only the operator may send this"),
            MarketError::UnknownProvider => write!(f, "not a registered provider"),
            MarketError::UnsupportedUnit { unit } => {
                write!(f, "unit {unit} is not supported (only tokens)")
            }
            MarketError::WeightsHashMismatch { model } => {
                write!(f, "weights hash does not match model {model}")
            }
            MarketError::InvalidExpiry {
                expires_at_ms,
                now_ms,
                ttl_max_ms,
            } => {
                if expires_at_ms <= now_ms {
                    write!(
                        f,
                        "expiry {expires_at_ms} is in the past: it must be after the router's \
                         time {now_ms} (Unix ms), by at most rfc_ttl_max_ms = {ttl_max_ms}"
                    )
                } else {
                    write!(
                        f,
                        "expiry {expires_at_ms} is too far: {} ms ahead, the limit is \
                         rfc_ttl_max_ms = {ttl_max_ms} (at most {} Unix ms)",
                        expires_at_ms - now_ms,
                        now_ms.saturating_add(*ttl_max_ms)
                    )
                }
            }
            MarketError::InvalidTokensMax { tokens_max, limit } => {
                if *tokens_max == 0 {
                    write!(f, "TokenMax must be above 0 (and at most {limit})")
                } else {
                    write!(
                        f,
                        "TokenMax {tokens_max} is above the limit of {limit} (tokens_max_limit)"
                    )
                }
            }
            MarketError::UnknownProbe { probe } => write!(f, "unknown or expired probe {probe}"),
            MarketError::LimitReached { limit, max } => {
                write!(f, "limit {limit:?} reached ({max})")
            }
            MarketError::ClaimExceedsOwed { owed_wei } => {
                write!(f, "claim above the {owed_wei} wei owed")
            }
            MarketError::NothingOwed => write!(f, "nothing is owed"),
            MarketError::UnknownRfc { rfc } => write!(f, "no queued request {rfc} of yours"),
            MarketError::InvalidParam { param } => {
                match crate::command::ParamId::from_u16(*param) {
                    Some(id) => write!(
                        f,
                        "invalid market parameter {param} ({}): {}",
                        id.name(),
                        id.rule()
                    ),
                    None => write!(
                        f,
                        "unknown market parameter id {param} (ids are 1..={})",
                        crate::command::ParamId::ALL.len()
                    ),
                }
            }
            MarketError::ArithmeticOverflow => write!(f, "amount overflows"),
            MarketError::NoOffer { model } => write!(f, "no offer for model {model}"),
            MarketError::InvalidCapacity { capacity } => write!(f, "invalid capacity {capacity}"),
            MarketError::DuplicateModel { model } => write!(f, "model {model} listed twice"),
            MarketError::BidAboveMax {
                bid_wei_per_token_max,
            } => write!(
                f,
                "bid above the market's maximum of {bid_wei_per_token_max} wei per token"
            ),
            MarketError::CreditUnrepresentable { tokens_max_fit } => write!(
                f,
                "TokenMax times the highest allowed bid does not fit a u128 wei amount; \
                 at most {tokens_max_fit} tokens"
            ),
            MarketError::CreditOverflow {
                retry_after_ms,
                sum: CreditSum::LedgerShortfall,
            } => write!(
                f,
                "credit would overflow {} (u128 wei) in the worst case, where the day's cap \
                 credits none of it; nothing changed, and since that sum never shrinks the \
                 report cannot be accepted later (retry_after_ms {retry_after_ms})",
                CreditSum::LedgerShortfall.name()
            ),
            MarketError::CreditOverflow {
                retry_after_ms,
                sum,
            } => write!(
                f,
                "credit would overflow {}; nothing changed, report again in \
                 {retry_after_ms} ms (next block)",
                sum.name()
            ),
            MarketError::InvalidParamSet { reason } => {
                write!(f, "parameter set refused: {reason}")
            }
            MarketError::NonceGap {
                nonce_last,
                nonce_max,
            } => match nonce_last {
                Some(last) => write!(
                    f,
                    "nonce gap: a nonce may be at most 2^40 above the last accepted one \
                     ({last}) or the router's time in microseconds; the largest accepted \
                     now is {nonce_max}"
                ),
                None => write!(
                    f,
                    "nonce gap: no nonce accepted from this address yet; a nonce may be at \
                     most 2^40 above the router's time in microseconds, so the largest \
                     accepted now is {nonce_max}"
                ),
            },
            MarketError::UserSessionsFull { open, max } => write!(
                f,
                "{open} open sessions and unanswered requests: at most \
                 user_sessions_open_max = {max} per user; report or cancel one first"
            ),
            MarketError::TtftOverElapsed {
                ttft_ms,
                elapsed_ms,
            } => write!(
                f,
                "ttft_ms {ttft_ms} is above elapsed_ms {elapsed_ms}: the first token cannot \
                 come after the whole result"
            ),
            MarketError::PromptTokensOverMax { prompt_tokens, max } => write!(
                f,
                "prompt_tokens {prompt_tokens} is above the limit of {max} (prompt_tokens_max)"
            ),
            MarketError::SessionNotStarted { session } => write!(
                f,
                "session {session} was closed: its provider did not sign its start within \
                 ticket_start_timeout_ms (no credit, no penalty)"
            ),
            MarketError::SessionAlreadyStarted { session } => {
                write!(f, "session {session} was already started")
            }
            MarketError::PaidAboveCredit { credited_wei } => write!(
                f,
                "a paid figure is above the provider's cumulative credit of {credited_wei} wei"
            ),
            MarketError::ClaimOnChain => write!(
                f,
                "this market settles on a chain (market.settlement_contract): claim there \
                 with `yellowstone-chain claim`; the router's ledger learns what the chain paid"
            ),
            MarketError::WrongChain { chain_id } => write!(
                f,
                "not this market's settlement contract: the market settles on chain {chain_id} \
                 at market.settlement_contract (0x0: no chain configured)"
            ),
            MarketError::ChainPaidUnsorted => write!(
                f,
                "ChainPaid entries must be strictly ascending by provider address"
            ),
        }
    }
}

impl std::error::Error for MarketError {}
