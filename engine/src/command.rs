//! The engine's inputs (`Command`) and outputs (`Effect`).
//!
//! Commands arrive already authenticated: the router verified the signature and put
//! the signer's address in the command. Everything the engine decides depends only on
//! the commands and the `now_ms` given with each, so a journal of both replays exactly.

use crate::error::MarketError;
use crate::types::{Address, ModelId, ProbeId, RfcId, SessionId};
use bincode::{Decode, Encode};

/// One model a provider offers (R-PROV-1).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct OfferSpec {
    /// The model id.
    pub model: ModelId,
    /// SPEC.md section 8 unit code; only 0 (token) is accepted.
    pub unit: u8,
    /// Must equal the catalog's hash; the router checked the provider's signature on it.
    pub weights_hash: [u8; 32],
    /// The bid, wei per token (R-MONEY-1: at most `bid_wei_per_token_max`).
    pub price_wei_per_token: u128,
    /// Concurrent sessions offered.
    pub capacity: u32,
}

/// Operator-settable market parameters, by stable id (`Command::SetParams`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ParamId {
    /// 1: B, wei a day (fixed policy).
    ComputeBudgetWeiPerDay = 1,
    /// 2: P, wei per 1,000 tokens.
    TokenPriceWeiPer1000 = 2,
    /// 3: S, wei.
    MorSupplyWei = 3,
    /// 4: X, percent (R-PERF-1).
    SpeedTolerancePercent = 4,
    /// 5: Z, reports (R-PERF-1).
    SpeedWindowReports = 5,
    /// 6: reports before the speed test applies.
    SpeedReportsMin = 6,
    /// 7: 0 no-credit, 1 balance-weighted (R-PERF-3).
    FailPolicy = 7,
    /// 8: points that suspend (R-PERF-4).
    PenaltyPointsSuspend = 8,
    /// 9: suspension length, ms.
    SuspensionMs = 9,
    /// 10: probe timeout, ms (R-MATCH-2).
    ProbeTimeoutMs = 10,
    /// 11: 0 carry, 1 burn (R-CONTRACT-3).
    UnusedBudget = 11,
    /// 12: 0 fixed, 1 pool-percent (R-CONTRACT-5).
    BudgetPolicy = 12,
    /// R-MONEY-1: `bid_wei_per_token_max` (> 0, not below any current offer's price).
    BidWeiPerTokenMax = 13,
}

/// How a parameter's value is written by name: a plain integer, or one of a few
/// labels carried on the wire as their index (0, 1, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// An integer in the unit the name ends with (`_wei`, `_ms`, `_percent`, ...).
    Integer,
    /// One of these labels; the wire value is the label's index.
    Choice(&'static [&'static str]),
}

impl ParamId {
    /// Every run-time parameter, in id order (R-OPS-3).
    pub const ALL: [ParamId; 13] = [
        ParamId::ComputeBudgetWeiPerDay,
        ParamId::TokenPriceWeiPer1000,
        ParamId::MorSupplyWei,
        ParamId::SpeedTolerancePercent,
        ParamId::SpeedWindowReports,
        ParamId::SpeedReportsMin,
        ParamId::FailPolicy,
        ParamId::PenaltyPointsSuspend,
        ParamId::SuspensionMs,
        ParamId::ProbeTimeoutMs,
        ParamId::UnusedBudget,
        ParamId::BudgetPolicy,
        ParamId::BidWeiPerTokenMax,
    ];

    /// The parameter's name: the `[market]` configuration key it overrides.
    pub fn name(self) -> &'static str {
        match self {
            ParamId::ComputeBudgetWeiPerDay => "compute_budget_wei_per_day",
            ParamId::TokenPriceWeiPer1000 => "token_price_wei_per_1000",
            ParamId::MorSupplyWei => "mor_supply_wei",
            ParamId::SpeedTolerancePercent => "speed_tolerance_percent",
            ParamId::SpeedWindowReports => "speed_window_reports",
            ParamId::SpeedReportsMin => "speed_reports_min",
            ParamId::FailPolicy => "fail_policy",
            ParamId::PenaltyPointsSuspend => "penalty_points_suspend",
            ParamId::SuspensionMs => "suspension_ms",
            ParamId::ProbeTimeoutMs => "probe_timeout_ms",
            ParamId::UnusedBudget => "unused_budget",
            ParamId::BudgetPolicy => "budget_policy",
            ParamId::BidWeiPerTokenMax => "bid_wei_per_token_max",
        }
    }

    /// What the parameter means, for `--help`-style listings.
    pub fn help(self) -> &'static str {
        match self {
            ParamId::ComputeBudgetWeiPerDay => {
                "B: compute budget, MOR wei per day (R-QUOTA-1; budget_policy fixed)"
            }
            ParamId::TokenPriceWeiPer1000 => {
                "P: reference price, MOR wei per 1,000 tokens (R-QUOTA-1; > 0)"
            }
            ParamId::MorSupplyWei => "S: total MOR supply in wei (R-QUOTA-2; > 0)",
            ParamId::SpeedTolerancePercent => {
                "X: a report may be this many percent slower than the model's mean (R-PERF-1)"
            }
            ParamId::SpeedWindowReports => {
                "Z: passing reports the model's mean covers (R-PERF-1; > 0)"
            }
            ParamId::SpeedReportsMin => {
                "below this many passing reports the speed test passes (R-PERF-1)"
            }
            ParamId::FailPolicy => "what a fail report does to the credit (R-PERF-3)",
            ParamId::PenaltyPointsSuspend => {
                "penalty points within the window that suspend a provider (R-PERF-4)"
            }
            ParamId::SuspensionMs => "how long a suspension lasts, ms (R-PERF-4)",
            ParamId::ProbeTimeoutMs => "liveness probe timeout, ms (R-MATCH-2; > 0)",
            ParamId::UnusedBudget => "the unspent part of a day's emission (R-CONTRACT-3)",
            ParamId::BudgetPolicy => "where the day's budget B comes from (R-CONTRACT-5)",
            ParamId::BidWeiPerTokenMax => {
                "the highest bid, MOR wei per token (R-MONEY-1; > 0, not below a live offer)"
            }
        }
    }

    /// Whether the parameter is an integer or a choice among labels.
    pub fn kind(self) -> ParamKind {
        match self {
            ParamId::FailPolicy => ParamKind::Choice(&["no-credit", "balance-weighted"]),
            ParamId::UnusedBudget => ParamKind::Choice(&["carry", "burn"]),
            ParamId::BudgetPolicy => ParamKind::Choice(&["fixed", "pool-percent"]),
            _ => ParamKind::Integer,
        }
    }

    /// The parameter of a name (`yellowstone-ctl params`), None for an unknown one.
    pub fn from_name(name: &str) -> Option<ParamId> {
        ParamId::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The wire value of `text`: an integer, or for a choice its label (or index).
    pub fn parse_value(self, text: &str) -> Result<u128, String> {
        let text = text.trim();
        match self.kind() {
            ParamKind::Integer => text.replace('_', "").parse::<u128>().map_err(|_| {
                format!(
                    "{}: {text:?} is not valid; expected {}",
                    self.name(),
                    self.rule()
                )
            }),
            ParamKind::Choice(labels) => labels
                .iter()
                .position(|l| *l == text)
                .map(|i| i as u128)
                .or_else(|| {
                    text.parse::<u128>()
                        .ok()
                        .filter(|i| *i < labels.len() as u128)
                })
                .ok_or_else(|| {
                    format!(
                        "{}: {text:?} is not one of {}",
                        self.name(),
                        labels.join(", ")
                    )
                }),
        }
    }

    /// The value as an operator writes it (a label for choices).
    pub fn format_value(self, value: u128) -> String {
        match self.kind() {
            ParamKind::Choice(labels) => usize::try_from(value)
                .ok()
                .and_then(|i| labels.get(i))
                .map_or_else(|| value.to_string(), |l| l.to_string()),
            ParamKind::Integer => value.to_string(),
        }
    }

    /// The values a run-time parameter accepts (what `SetParams` checks, R-OPS-3), for the
    /// refusal's reason: an `invalid_param` names the parameter and its rule.
    pub fn rule(self) -> &'static str {
        use ParamId::*;
        match self {
            ComputeBudgetWeiPerDay => "a whole number of wei, at most 2^128 - 1",
            TokenPriceWeiPer1000 | MorSupplyWei => {
                "a whole number of wei, above 0 and at most 2^128 - 1"
            }
            SpeedTolerancePercent | SpeedReportsMin | PenaltyPointsSuspend => {
                "a whole number, at most 4294967295 (u32)"
            }
            SpeedWindowReports => "a whole number, above 0 and at most 4294967295 (u32)",
            SuspensionMs => "a whole number of ms, at most 18446744073709551615 (u64)",
            ProbeTimeoutMs => {
                "a whole number of ms, above 0 and at most market.rfc_ttl_max_ms (300000 by default)"
            }
            FailPolicy => "0 (no-credit) or 1 (balance-weighted)",
            UnusedBudget => "0 (carry) or 1 (burn)",
            BudgetPolicy => "0 (fixed) or 1 (pool-percent)",
            BidWeiPerTokenMax => {
                "a whole number of wei per token, above 0, at most 2^128 - 1 and not below \
                 any live offer's price (R-MONEY-1)"
            }
        }
    }

    /// The parameter of a wire id, None for an unknown one.
    pub fn from_u16(id: u16) -> Option<ParamId> {
        use ParamId::*;
        Some(match id {
            1 => ComputeBudgetWeiPerDay,
            2 => TokenPriceWeiPer1000,
            3 => MorSupplyWei,
            4 => SpeedTolerancePercent,
            5 => SpeedWindowReports,
            6 => SpeedReportsMin,
            7 => FailPolicy,
            8 => PenaltyPointsSuspend,
            9 => SuspensionMs,
            10 => ProbeTimeoutMs,
            11 => UnusedBudget,
            12 => BudgetPolicy,
            13 => BidWeiPerTokenMax,
            _ => return None,
        })
    }
}

/// An input of the engine (`Engine::apply`): a signed message the router
/// authenticated, or a router-originated event; journaled before it is applied.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Command {
    /// Fires everything due at `now`: probe timeouts, expiries, block seals, days.
    Tick,
    /// R-QUOTA-6: operator balance snapshot or update.
    SetBalances {
        /// The operator's address (`identity.operator`).
        operator: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// (address, amount in wei) pairs.
        entries: Vec<(Address, u128)>,
    },
    /// R-OPS-3: run-time parameters by id (`ParamId`), from the operator.
    SetParams {
        /// The operator's address (`identity.operator`).
        operator: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// (parameter id, value) pairs, applied together or not at all.
        params: Vec<(u16, u128)>,
    },
    /// R-PROV-1: (re-)registration; also marks the provider reachable.
    RegisterProvider {
        /// The provider's address.
        provider: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// Where users reach the provider (bytes, at most `endpoint_bytes_max`).
        endpoint: Vec<u8>,
        /// The models offered.
        offers: Vec<OfferSpec>,
    },
    /// Changing the price gives the bid a new time (R-MATCH-1).
    UpdateBid {
        /// The provider's address.
        provider: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The model id.
        model: ModelId,
        /// The bid, wei per token (R-MONEY-1: at most `bid_wei_per_token_max`).
        price_wei_per_token: u128,
        /// Concurrent sessions offered.
        capacity: u32,
    },
    /// R-PROV-4: a provider withdraws its offer of a model.
    WithdrawBid {
        /// The provider's address.
        provider: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The model id.
        model: ModelId,
    },
    /// Back in matching after being marked unreachable (R-MATCH-2).
    ProviderAnnounce {
        /// The provider's address.
        provider: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
    },
    /// Router-originated: the provider's connection closed.
    ProviderDisconnected {
        /// The provider's address.
        provider: Address,
    },
    /// R-RFC-1.
    SubmitRfc {
        /// The user's address.
        user: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The model id.
        model: ModelId,
        /// TokenMax, tokens.
        tokens_max: u64,
        /// Expiry, Unix ms.
        expires_at_ms: u64,
    },
    /// Cancels a queued RFC by the id `RfcAccepted` gave (refunded).
    CancelRfc {
        /// The user's address.
        user: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The RFC id.
        rfc: RfcId,
    },
    /// R-MATCH-2.
    ProbeAnswer {
        /// The provider's address.
        provider: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The probe id.
        probe: ProbeId,
    },
    /// R-REPORT-1..3. `report_digest` is the signed report's digest, kept in the
    /// receipt. `ttft_ms` (to the first token) must not exceed `elapsed_ms`, and
    /// `prompt_tokens` not `prompt_tokens_max`.
    Report {
        /// The user's address.
        user: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The session id.
        session: SessionId,
        /// Milliseconds from the query to the whole answer (R-PERF-1).
        elapsed_ms: u64,
        /// Milliseconds to the first token (R-REPORT-3).
        ttft_ms: u64,
        /// Completion tokens the user reports (at most the session's TokenMax).
        tokens: u64,
        /// Prompt tokens (R-REPORT-3).
        prompt_tokens: u64,
        /// Pass, fail or void (R-REPORT-2).
        outcome: ReportOutcome,
        /// The digest of the user's signed report (kept in the receipt).
        report_digest: [u8; 32],
    },
    /// R-SESSION-1: the session's provider signed that its inference began; until
    /// then the session closes `ticket_start_timeout_ms` after its ticket.
    StartSession {
        /// The provider's address.
        provider: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The session id.
        session: SessionId,
    },
    /// R-CLAIM-1: `amount_wei` 0 claims everything owed.
    Claim {
        /// The provider's address.
        provider: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The amount, wei.
        amount_wei: u128,
    },
    /// R-QUOTA-6: router-originated, the operator's balance snapshot file applied
    /// when the data directory is created (or when the operator explicitly asks to
    /// apply a different one). It carries no operator nonce, so it never spends
    /// one; `file_blake3` identifies the file so that later starts can tell whether
    /// they were given the same one. At most `balance_entries_max` entries a command.
    LoadBalanceSnapshot {
        /// BLAKE3 of the snapshot file (R-QUOTA-6: applied once per file).
        file_blake3: [u8; 32],
        /// (address, amount in wei) pairs.
        entries: Vec<(Address, u128)>,
    },
    /// R-ID-6, R-MATCH-2: router-originated, journaled once at every start (after
    /// recovery, before any client command). A provider is reachable only through a
    /// connection of this process, and a new process holds none: every provider
    /// becomes unreachable until it registers or announces again, and every probe in
    /// flight (sent on a connection that died with the old process) ends at once as
    /// a timeout would, so no RFC waits out a probe to a dead provider.
    RouterStarted,
    /// R-CHAIN-3: what the Compute Contract at (`chain_id`, `contract`) has paid each
    /// provider since genesis (its `paidTo`, MOR wei), read from the chain and signed
    /// by the operator (`yellowstone-chain relay --operator-key-file`). The ledger
    /// counts as paid whatever the chain paid beyond what it already counted (owed
    /// falls by that much); a lower figure (an older read) changes nothing; a figure
    /// above the provider's cumulative credit refuses the whole command. Entries
    /// strictly ascending by provider, at most `balance_entries_max`.
    ChainPaid {
        /// The operator's address (`identity.operator`).
        operator: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The chain id of the settlement domain.
        chain_id: u64,
        /// The Compute Contract's address in that domain.
        contract: Address,
        /// (address, amount in wei) pairs.
        entries: Vec<(Address, u128)>,
    },
    /// R-CHAIN-3 (issue 24 case 2): router-originated, once, at an explicit start
    /// (`run --set-settlement-domain`): the settlement domain of a market created
    /// without a contract (0x0: nothing it signed could be verified by any contract).
    /// Refused (`wrong_chain`) once a contract is set, or for contract 0x0.
    SetSettlementDomain {
        /// The chain id of the settlement domain.
        chain_id: u64,
        /// The Compute Contract's address in that domain.
        contract: Address,
    },
}

impl Command {
    /// The authenticated originator and its nonce, for commands a party signed.
    pub fn origin(&self) -> Option<(Address, u64)> {
        match self {
            Command::Tick
            | Command::ProviderDisconnected { .. }
            | Command::LoadBalanceSnapshot { .. }
            | Command::RouterStarted
            | Command::SetSettlementDomain { .. } => None,
            Command::SetBalances {
                operator, nonce, ..
            }
            | Command::SetParams {
                operator, nonce, ..
            }
            | Command::ChainPaid {
                operator, nonce, ..
            } => Some((*operator, *nonce)),
            Command::RegisterProvider {
                provider, nonce, ..
            }
            | Command::UpdateBid {
                provider, nonce, ..
            }
            | Command::WithdrawBid {
                provider, nonce, ..
            }
            | Command::ProviderAnnounce { provider, nonce }
            | Command::ProbeAnswer {
                provider, nonce, ..
            }
            | Command::StartSession {
                provider, nonce, ..
            }
            | Command::Claim {
                provider, nonce, ..
            } => Some((*provider, *nonce)),
            Command::SubmitRfc { user, nonce, .. }
            | Command::CancelRfc { user, nonce, .. }
            | Command::Report { user, nonce, .. } => Some((*user, *nonce)),
        }
    }
}

/// R-MATCH-6: what the router signs and sends to both sides.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Ticket {
    /// The session id.
    pub session: SessionId,
    /// The user's address.
    pub user: Address,
    /// The provider's address.
    pub provider: Address,
    /// The provider's registered endpoint, shared with the engine's copy: a ticket
    /// costs no allocation (issue 18). Encoded as its bytes, like a `Vec<u8>`.
    pub endpoint: std::sync::Arc<[u8]>,
    /// The model id.
    pub model: ModelId,
    /// TokenMax, tokens.
    pub tokens_max: u64,
    /// The bid, wei per token (R-MONEY-1: at most `bid_wei_per_token_max`).
    pub price_wei_per_token: u128,
    /// Expiry, Unix ms.
    pub expires_at_ms: u64,
    /// The nonce of the RFC this session serves, so the user can correlate.
    pub rfc_nonce: u64,
}

/// R-REPORT-2: what the user reports of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ReportOutcome {
    /// The provider failed: no credit and a penalty point (R-PERF-2, R-PERF-3).
    Fail = 0,
    /// A complete answer: credited if fast enough (R-PERF-1).
    Pass = 1,
    /// Failed for the user's own reason: no credit and no penalty point.
    Void = 2,
}

/// Why an admitted RFC failed (`Effect::RfcFailed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum RfcFailure {
    /// It expired unanswered.
    Expired = 1,
    /// No live provider answered (probes exhausted or none offered).
    NoProvider = 2,
    /// The user cancelled it.
    Cancelled = 3,
}

/// Why a report did or did not earn a credit. What it earned is credited subject to
/// the day's cap when its block is sealed (R-BLOCK-2), so the names say "earned".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum CreditReason {
    /// Earned tokens × price.
    Earned = 0,
    /// The user reported fail: no credit and a penalty point (R-PERF-2).
    ReportedFail = 1,
    /// R-PERF-1: the generation was too slow: no credit and a penalty point.
    TooSlow = 2,
    /// Fail under `balance-weighted` where the user's balance did not exceed the
    /// provider's: earned, with a penalty point.
    EarnedDespiteFail = 3,
    /// No tokens reported: nothing earned.
    ZeroTokens = 4,
    /// R-REPORT-2: the user reported void: no credit, no penalty point.
    Void = 5,
    /// R-PERF-1: the time to the first token was too slow for the prompt's size
    /// class (`TooSlow` is the generation): no credit and a penalty point.
    TooSlowFirstToken = 6,
}

/// Per-provider totals of one block (R-BLOCK-2, R-CONTRACT-2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct ProviderTotals {
    /// The provider's address.
    pub provider: Address,
    /// What the provider's sessions earned in the block: Σ tokens × price.
    pub earned_wei: u128,
    /// What the ledger credited of it after the day's cap (pro rata when the cap
    /// cuts the block): `credited_wei <= earned_wei`. Filled in when the block is
    /// sealed; a ledger applying a batch ignores it.
    pub credited_wei: u128,
    /// Tokens credited in the block.
    pub tokens: u64,
    /// Sessions credited.
    pub sessions: u32,
}

/// R-BLOCK-2: a block's credit batch, before the router's signature.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct CreditBatch {
    /// The block number.
    pub block: u64,
    /// Sorted by provider address.
    pub totals: Vec<ProviderTotals>,
    /// The block's receipts' Merkle root (32 zero bytes without receipts).
    pub merkle_root: [u8; 32],
    /// Receipts under the root (= Σ sessions).
    pub receipts: u64,
}

impl CreditBatch {
    /// Σ earned_wei (R-MONEY-1: checked; a batch the engine seals always fits).
    pub fn earned_total_wei(&self) -> Result<u128, crate::money::MoneyOverflow> {
        crate::money::sum(self.totals.iter().map(|t| t.earned_wei))
    }
}

/// What the ledger did with a batch (R-CONTRACT-2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct BatchApplied {
    /// Credited after the day's cap, wei.
    pub credited_wei: u128,
    /// Earned but not credited under the cap, wei.
    pub shortfall_wei: u128,
    /// What each entry of `CreditBatch::totals` was credited, in the same order.
    pub provider_credited_wei: Vec<u128>,
}

/// An output of the engine: what the router must send, sign or publish.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Effect {
    /// A refused command, to its originator (SPEC.md section 9).
    Rejected {
        /// The recipient: the command's originator.
        to: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// Why it was refused.
        error: MarketError,
    },
    /// R-RFC-1: the RFC was admitted (quota charged).
    RfcAccepted {
        /// The user's address.
        user: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The RFC id.
        rfc: RfcId,
        /// Tokens left of the user's quota today.
        tokens_left: u64,
    },
    /// R-MATCH-2: send a liveness probe to `provider`.
    Probe {
        /// The provider's address.
        provider: Address,
        /// The probe id.
        probe: ProbeId,
        /// The model id.
        model: ModelId,
        /// TokenMax, tokens.
        tokens_max: u64,
        /// When the probe times out, Unix ms.
        deadline_ms: u64,
    },
    /// R-MATCH-6: sign and send to both sides.
    SessionOpened {
        /// The ticket to sign and send to both sides.
        ticket: Ticket,
    },
    /// The RFC failed after admission; its quota is refunded.
    RfcFailed {
        /// The user's address.
        user: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The RFC id.
        rfc: RfcId,
        /// Why.
        reason: RfcFailure,
        /// TokenMax given back to the quota (0 when the day turned).
        refunded_tokens: u64,
    },
    /// R-REPORT-1: a report accepted, with what it earned and why.
    ReportAccepted {
        /// The user's address.
        user: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The session id.
        session: SessionId,
        /// Why.
        reason: CreditReason,
        /// What the session earned (tokens × price when credited, else 0), to be
        /// credited subject to the day's cap when its block is sealed (R-BLOCK-2).
        earned_wei: u128,
    },
    /// A session closed without a report before its expiry (no credit).
    SessionExpired {
        /// The session id.
        session: SessionId,
        /// The user's address.
        user: Address,
        /// The provider's address.
        provider: Address,
    },
    /// R-SESSION-1: a session whose provider did not sign its start within
    /// `ticket_start_timeout_ms` closed (no credit, no penalty, capacity freed).
    SessionNotStarted {
        /// The session id.
        session: SessionId,
        /// The user's address.
        user: Address,
        /// The provider's address.
        provider: Address,
    },
    /// R-MATCH-2: a provider missed a probe: not matched until it announces.
    ProviderUnreachable {
        /// The provider's address.
        provider: Address,
    },
    /// R-PERF-4: a provider suspended by penalty points.
    ProviderSuspended {
        /// The provider's address.
        provider: Address,
        /// Suspended until, Unix ms.
        until_ms: u64,
    },
    /// R-PROV-2: a registration from a provider with no MOR balance was accepted,
    /// but the provider will not be matched until it is funded.
    ProviderUnfunded {
        /// The provider's address.
        provider: Address,
    },
    /// R-BLOCK-2: a block sealed: its credit batch and what the ledger did with it.
    BatchSealed {
        /// The batch to sign and publish.
        batch: CreditBatch,
        /// What the ledger credited of it.
        applied: BatchApplied,
    },
    /// R-CLAIM-1: a claim paid in the router (no chain configured).
    ClaimPaid {
        /// The provider's address.
        provider: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
        /// The amount, wei.
        amount_wei: u128,
        /// What is still owed after the payment, wei.
        owed_left_wei: u128,
    },
    /// R-CHAIN-1: an epoch ended; the router signs and publishes its settlement for
    /// the Compute Contract at `contract` on chain `chain_id` (the EIP-712 domain).
    SettlementSealed {
        /// The epoch's settlement record.
        settlement: crate::settlement::SettlementRecord,
        /// The chain id of the settlement domain.
        chain_id: u64,
        /// The Compute Contract's address in that domain.
        contract: Address,
    },
    /// Acknowledges operator and provider commands that have no other answer.
    Done {
        /// The recipient: the command's originator.
        to: Address,
        /// The signer's nonce on it (R-ID-4).
        nonce: u64,
    },
    /// R-QUOTA-6: balances the engine applied (an operator update or the snapshot),
    /// for the gateways' pre-check cache, which follows only this effect.
    BalancesSet {
        /// (address, amount in wei) pairs.
        entries: Vec<(Address, u128)>,
    },
}

impl Effect {
    /// The address the effect is for (batches go to subscribers: `None`).
    pub fn recipient(&self) -> Option<Address> {
        match self {
            Effect::Rejected { to, .. } | Effect::Done { to, .. } => Some(*to),
            Effect::RfcAccepted { user, .. }
            | Effect::RfcFailed { user, .. }
            | Effect::ReportAccepted { user, .. } => Some(*user),
            Effect::Probe { provider, .. }
            | Effect::ProviderUnreachable { provider }
            | Effect::ProviderSuspended { provider, .. }
            | Effect::ProviderUnfunded { provider }
            | Effect::ClaimPaid { provider, .. } => Some(*provider),
            Effect::SessionOpened { ticket } => Some(ticket.user),
            Effect::SessionExpired { user, .. } | Effect::SessionNotStarted { user, .. } => {
                Some(*user)
            }
            Effect::BatchSealed { .. }
            | Effect::SettlementSealed { .. }
            | Effect::BalancesSet { .. } => None,
        }
    }
}
