//! The market state: every field the engine owns, laid out for the hot path
//! (accounts, providers, RFCs and sessions in Vecs/slabs addressed by small ids) and
//! encodable as a whole with bincode for snapshots and the state hash.

use crate::config::{MarketConfig, ModelSpec};
use crate::ledger::Ledger;
use crate::merkle::MerkleAccumulator;
use crate::slab::Slab;
use crate::speed::ModelSpeed;
use crate::timer::TimerWheel;
use crate::types::{Address, ProbeId, RfcId, SessionId};
use bincode::{Decode, Encode};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// An account's index in `State::accounts`.
pub type AccountIdx = u32;
/// A provider's index in `State::providers`.
pub type ProviderIdx = u32;
/// A model's index in `State::models` (catalog order).
pub type ModelIdx = u16;

/// One address the market knows: its balance, nonce, quota and provider place.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Account {
    /// The address.
    pub address: Address,
    /// Its MOR balance, wei (set by the operator or the balance snapshot).
    pub balance_wei: u128,
    /// R-ID-4: the last nonce accepted from this address.
    pub nonce_last: Option<u64>,
    /// The day `quota_used_tokens` counts for (R-QUOTA-4).
    pub quota_day: u64,
    /// TokenMax charged today (R-QUOTA-4).
    pub quota_used_tokens: u64,
    /// Its provider place, if it registered as one.
    pub provider: Option<ProviderIdx>,
    /// R-SESSION-1: this user's open sessions plus RFCs not yet answered (queued or
    /// probing); at most `user_sessions_open_max`.
    pub sessions_open: u32,
}

/// One model a provider offers: its bid, capacity and place in the book.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Offer {
    /// The model offered.
    pub model: ModelIdx,
    /// The bid, wei per token (at most `bid_wei_per_token_max`).
    pub price_wei_per_token: u128,
    /// Concurrent sessions the provider declared.
    pub capacity: u32,
    /// Open sessions plus probes in flight: never above `capacity`.
    pub busy: u32,
    /// Time priority: the sequence number of the bid's last price change.
    pub bid_seq: u64,
    /// Offered (not withdrawn).
    pub active: bool,
    /// In its model's book now (`ModelState::book`: active and matchable).
    pub in_book: bool,
}

impl Offer {
    /// Its key in the book: (price, bid time).
    pub fn book_key(&self) -> (u128, u64) {
        (self.price_wei_per_token, self.bid_seq)
    }
}

/// A provider place (R-PROV-1).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Provider {
    /// Its account.
    pub account: AccountIdx,
    /// Its address.
    pub address: Address,
    /// Shared with every ticket of this provider (no copy per session); encoded
    /// as the bytes (the same encoding as a `Vec<u8>`).
    pub endpoint: Arc<[u8]>,
    /// Reachable through a connection of the running router (R-ID-6, R-MATCH-2).
    pub reachable: bool,
    /// Suspended until this Unix ms (R-PERF-4; 0: not suspended).
    pub suspended_until_ms: u64,
    /// Its offers, at most `offers_per_provider_max`.
    pub offers: Vec<Offer>,
    /// The most recent reports (R-PERF-4), newest last: the account of the user
    /// whose report earned a penalty point, `None` for a report without one.
    pub recent_penalties: VecDeque<Option<AccountIdx>>,
    /// R-CONTRACT-4: holds a bootstrap slot (mirrors `Ledger::bootstrap_providers`,
    /// so that a credit tells it without searching the set).
    pub bootstrap_slot: bool,
}

/// One catalog model: its queue of RFCs, its book of offers and its speed means.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ModelState {
    /// The catalog entry.
    pub spec: ModelSpec,
    /// R-RFC-2: (u128::MAX - balance at admission, arrival seq) -> RFC slot: highest
    /// balance first, then earliest.
    pub queue: BTreeMap<(u128, u64), u32>,
    /// R-MATCH-1: available offers by (price, bid time) -> (provider, offer index).
    /// An offer that is full, suspended or unreachable leaves this map but keeps its
    /// key in `Offer`, so it comes back with its time priority.
    pub book: BTreeMap<(u128, u64), (ProviderIdx, u16)>,
    /// The speed gate's window of passing reports (R-PERF-1).
    pub speed: ModelSpeed,
}

/// An RFC's probe in flight (R-MATCH-2).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Probing {
    /// The probe id.
    pub probe: ProbeId,
    /// The provider probed.
    pub provider: ProviderIdx,
    /// Its offer's index.
    pub offer: u16,
    /// When the probe times out, Unix ms.
    pub deadline_ms: u64,
}

/// An RFC admitted and not yet answered (R-RFC-1).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Rfc {
    /// Its id.
    pub id: RfcId,
    /// The user's account.
    pub user: AccountIdx,
    /// The user's nonce on it.
    pub nonce: u64,
    /// The model asked for.
    pub model: ModelIdx,
    /// TokenMax, tokens.
    pub tokens_max: u64,
    /// When it fails if unanswered, Unix ms.
    pub expires_at_ms: u64,
    /// The quota day it was charged to: a refund after the day turned is moot.
    pub charged_day: u64,
    /// Its key in the model's queue.
    pub queue_key: (u128, u64),
    /// The probe in flight, if any.
    pub probing: Option<Probing>,
    /// Providers probed so far (at most `probe_tries_max`).
    pub tries: u8,
}

/// An open session (R-MATCH-6).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The user's account.
    pub user: AccountIdx,
    /// The provider.
    pub provider: ProviderIdx,
    /// The provider's offer index.
    pub offer: u16,
    /// The model.
    pub model: ModelIdx,
    /// TokenMax, tokens.
    pub tokens_max: u64,
    /// The bid when matched, wei per token.
    pub price_wei_per_token: u128,
    /// When it expires, Unix ms (`session_ttl_ms` after the match).
    pub expires_at_ms: u64,
    /// The nonce of the RFC it came from.
    pub rfc_nonce: u64,
    /// R-SESSION-1: when the session closes unless its provider signs its start
    /// (`session_starts` holds it until then).
    pub start_deadline_ms: u64,
    /// R-SESSION-1: the provider signed that the inference began.
    pub started: bool,
}

/// How the last session held in a slot ended, so a late report gets the right error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Closed {
    /// Its report was accepted.
    Reported,
    /// It expired without a report.
    Expired,
    /// R-SESSION-1: its provider did not sign its start in time.
    NotStarted,
}

/// Counts since genesis.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Counters {
    /// RFCs admitted.
    pub rfcs_accepted: u64,
    /// RFCs that failed after admission.
    pub rfcs_failed: u64,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions expired without a report.
    pub sessions_expired: u64,
    /// R-SESSION-1: sessions closed because their start was not signed in time.
    pub sessions_not_started: u64,
    /// Reports accepted.
    pub reports: u64,
    /// Sessions credited.
    pub sessions_credited: u64,
    /// Credit batches sealed.
    pub batches: u64,
}

/// Everything the engine owns; encoded whole for snapshots and the state hash.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct State {
    /// The market's parameters in force.
    pub config: MarketConfig,
    /// Unix ms of the last command applied.
    pub now_ms: u64,
    /// The open block (R-TIME-1).
    pub block: u64,
    /// B for the current day (R-CONTRACT-5); MaxT is derived from it exactly.
    pub budget_wei_today: u128,
    /// Monotonic sequence for ids, bid times and arrival order.
    pub seq: u64,
    /// Accounts by `AccountIdx`.
    pub accounts: Vec<Account>,
    /// Provider places by `ProviderIdx`.
    pub providers: Vec<Provider>,
    /// Models by `ModelIdx`.
    pub models: Vec<ModelState>,
    /// Model id → `ModelIdx`.
    pub model_index: BTreeMap<u32, ModelIdx>,
    /// Open RFCs by slot.
    pub rfcs: Slab<Rfc>,
    /// Open sessions by slot.
    pub sessions: Slab<Session>,
    /// How the last session of each slot ended (for late reports).
    pub closed_sessions: Vec<Option<(SessionId, Closed)>>,
    /// Probes in flight.
    pub probes_open: u32,
    /// (deadline ms, RFC id) of RFCs being probed (R-MATCH-2).
    pub probe_deadlines: TimerWheel,
    /// (expiry ms, RFC id) of open RFCs.
    pub rfc_expiries: TimerWheel,
    /// (expiry ms, session id) of open sessions.
    pub session_expiries: TimerWheel,
    /// R-SESSION-1: (start deadline ms, session id) of sessions not started yet.
    pub session_starts: TimerWheel,
    /// (until ms, provider) of suspended providers (R-PERF-4).
    pub suspensions: BTreeSet<(u64, ProviderIdx)>,
    /// The open block's totals per provider (R-BLOCK-2).
    pub block_totals: crate::totals::BlockTotals,
    /// Σ earned_wei over `block_totals` (R-MONEY-1: the batch total, kept checked).
    pub block_earned_wei: u128,
    /// Σ tokens over `block_totals` (a bound for the credit check's fast path).
    pub block_tokens: u128,
    /// The open block's receipts' Merkle accumulator (R-BLOCK-2).
    pub merkle: MerkleAccumulator,
    /// The Compute Contract ledger.
    pub ledger: Ledger,
    /// R-CHAIN-1: the epochs settled so far.
    pub settlement: crate::settlement::SettlementState,
    /// Counts since genesis.
    pub counters: Counters,
    /// R-QUOTA-6: BLAKE3 of the last balance snapshot file applied, if any.
    pub balance_snapshot_blake3: Option<[u8; 32]>,
    /// R-PROV-2: registrations from addresses without MOR, bounded, kept apart.
    pub unfunded: crate::unfunded::UnfundedRegistrations,
}

impl State {
    /// The current day (7,200 blocks).
    pub fn day(&self) -> u64 {
        self.block / crate::types::BLOCKS_PER_DAY
    }

    /// The next sequence number (ids, bid times, arrival order).
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}
