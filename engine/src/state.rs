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

pub type AccountIdx = u32;
pub type ProviderIdx = u32;
pub type ModelIdx = u16;

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Account {
    pub address: Address,
    pub balance_wei: u128,
    /// R-ID-4: the last nonce accepted from this address.
    pub nonce_last: Option<u64>,
    pub quota_day: u64,
    pub quota_used_tokens: u64,
    pub provider: Option<ProviderIdx>,
    /// R-SESSION-1: this user's open sessions plus RFCs not yet answered (queued or
    /// probing); at most `user_sessions_open_max`.
    pub sessions_open: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Offer {
    pub model: ModelIdx,
    pub price_wei_per_token: u128,
    pub capacity: u32,
    /// Open sessions plus probes in flight: never above `capacity`.
    pub busy: u32,
    /// Time priority: the sequence number of the bid's last price change.
    pub bid_seq: u64,
    pub active: bool,
    pub in_book: bool,
}

impl Offer {
    pub fn book_key(&self) -> (u128, u64) {
        (self.price_wei_per_token, self.bid_seq)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Provider {
    pub account: AccountIdx,
    pub address: Address,
    /// Shared with every ticket of this provider (no copy per session); encoded
    /// as the bytes (the same encoding as a `Vec<u8>`).
    pub endpoint: Arc<[u8]>,
    pub reachable: bool,
    pub suspended_until_ms: u64,
    pub offers: Vec<Offer>,
    /// The most recent reports (R-PERF-4), newest last: the account of the user
    /// whose report earned a penalty point, `None` for a report without one.
    pub recent_penalties: VecDeque<Option<AccountIdx>>,
    /// R-CONTRACT-4: holds a bootstrap slot (mirrors `Ledger::bootstrap_providers`,
    /// so that a credit tells it without searching the set).
    pub bootstrap_slot: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ModelState {
    pub spec: ModelSpec,
    /// R-RFC-2: (u128::MAX - balance at admission, arrival seq) -> RFC slot: highest
    /// balance first, then earliest.
    pub queue: BTreeMap<(u128, u64), u32>,
    /// R-MATCH-1: available offers by (price, bid time) -> (provider, offer index).
    /// An offer that is full, suspended or unreachable leaves this map but keeps its
    /// key in `Offer`, so it comes back with its time priority.
    pub book: BTreeMap<(u128, u64), (ProviderIdx, u16)>,
    pub speed: ModelSpeed,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Probing {
    pub probe: ProbeId,
    pub provider: ProviderIdx,
    pub offer: u16,
    pub deadline_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Rfc {
    pub id: RfcId,
    pub user: AccountIdx,
    pub nonce: u64,
    pub model: ModelIdx,
    pub tokens_max: u64,
    pub expires_at_ms: u64,
    /// The quota day it was charged to: a refund after the day turned is moot.
    pub charged_day: u64,
    pub queue_key: (u128, u64),
    pub probing: Option<Probing>,
    pub tries: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Session {
    pub id: SessionId,
    pub user: AccountIdx,
    pub provider: ProviderIdx,
    pub offer: u16,
    pub model: ModelIdx,
    pub tokens_max: u64,
    pub price_wei_per_token: u128,
    pub expires_at_ms: u64,
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
    Reported,
    Expired,
    /// R-SESSION-1: its provider did not sign its start in time.
    NotStarted,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Counters {
    pub rfcs_accepted: u64,
    pub rfcs_failed: u64,
    pub sessions_opened: u64,
    pub sessions_expired: u64,
    /// R-SESSION-1: sessions closed because their start was not signed in time.
    pub sessions_not_started: u64,
    pub reports: u64,
    pub sessions_credited: u64,
    pub batches: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct State {
    pub config: MarketConfig,
    pub now_ms: u64,
    /// The open block (R-TIME-1).
    pub block: u64,
    /// B for the current day (R-CONTRACT-5); MaxT is derived from it exactly.
    pub budget_wei_today: u128,
    /// Monotonic sequence for ids, bid times and arrival order.
    pub seq: u64,
    pub accounts: Vec<Account>,
    pub providers: Vec<Provider>,
    pub models: Vec<ModelState>,
    pub model_index: BTreeMap<u32, ModelIdx>,
    pub rfcs: Slab<Rfc>,
    pub sessions: Slab<Session>,
    pub closed_sessions: Vec<Option<(SessionId, Closed)>>,
    pub probes_open: u32,
    /// (deadline ms, RFC id) of RFCs being probed (R-MATCH-2).
    pub probe_deadlines: TimerWheel,
    /// (expiry ms, RFC id) of open RFCs.
    pub rfc_expiries: TimerWheel,
    /// (expiry ms, session id) of open sessions.
    pub session_expiries: TimerWheel,
    /// R-SESSION-1: (start deadline ms, session id) of sessions not started yet.
    pub session_starts: TimerWheel,
    pub suspensions: BTreeSet<(u64, ProviderIdx)>,
    pub block_totals: crate::totals::BlockTotals,
    /// Σ earned_wei over `block_totals` (R-MONEY-1: the batch total, kept checked).
    pub block_earned_wei: u128,
    /// Σ tokens over `block_totals` (a bound for the credit check's fast path).
    pub block_tokens: u128,
    pub merkle: MerkleAccumulator,
    pub ledger: Ledger,
    /// R-CHAIN-1: the epochs settled so far.
    pub settlement: crate::settlement::SettlementState,
    pub counters: Counters,
    /// R-QUOTA-6: BLAKE3 of the last balance snapshot file applied, if any.
    pub balance_snapshot_blake3: Option<[u8; 32]>,
    /// R-PROV-2: registrations from addresses without MOR, bounded, kept apart.
    pub unfunded: crate::unfunded::UnfundedRegistrations,
}

impl State {
    pub fn day(&self) -> u64 {
        self.block / crate::types::BLOCKS_PER_DAY
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}
