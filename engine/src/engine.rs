//! The Engine: `apply(command, now) -> effects`, the only way market state changes.
//! It checks the nonce (R-ID-4), fires what is due at `now`, dispatches the command
//! and runs matching for the models the command touched. Pure: no IO, no clock.

use crate::command::{Command, Effect};
use crate::config::MarketConfig;
use crate::error::MarketError;
use crate::index::AddressIndex;
use crate::ledger::Ledger;
use crate::merkle::MerkleAccumulator;
use crate::owners::QueueOwners;
use crate::quota;
use crate::slab::Slab;
use crate::speed::ModelSpeed;
use crate::state::{Account, AccountIdx, Counters, ModelIdx, ModelState, State};
use crate::timer::TimerWheel;
use crate::types::{address_hash, Address, ModelId, BLOCKS_PER_DAY, BLOCK_MS};
use std::collections::{BTreeMap, BTreeSet};

/// Commands whose originators' accounts [`Engine::apply_batch`] looks up together
/// before applying them: enough independent misses in flight to fill the CPU's miss
/// buffers, few enough that the lines are still cached when the commands run.
pub const APPLY_BATCH_GROUP: usize = 16;

/// What [`Engine::apply_unless_refused`] did with a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The state may have changed: the command must be journaled.
    Changed,
    /// Refused (its only effect is the `Rejected` one) and the state is exactly as
    /// before: nothing to journal (R-OPS-4, R-PROV-3).
    Refused,
}

/// The market's deterministic state machine (STYLE.md §1): `apply(command, now)`
/// returns effects; no IO, clock or threads; the same commands give the same state
/// hash.
pub struct Engine {
    pub(crate) state: State,
    /// Address -> account: derived from `state.accounts`, rebuilt on restore. Slots
    /// hold the account number only; the address compared is the account's.
    pub(crate) account_index: AddressIndex,
    /// Models whose book or queue changed during this command: matched at its end.
    pub(crate) pending_match: Vec<ModelIdx>,
    /// R-QUOTA-3 for today's B, P and S: derived from the state, rebuilt whenever
    /// one of them changes and on restore.
    pub(crate) user_max_rate: quota::UserMaxRate,
    /// The originator of the command being applied and its account, if it has one:
    /// set by `apply` for its duration so that the account is looked up once.
    pub(crate) origin_account: Option<(Address, AccountIdx)>,
    /// R-MATCH-7: per model, who owns each queued RFC (derived from the queues,
    /// rebuilt on restore).
    pub(crate) queue_owners: Vec<QueueOwners>,
}

/// Why a snapshot could not be restored.
#[derive(Debug)]
pub enum RestoreError {
    /// The bytes are not an encoded state (the decoder's reason).
    Decode(String),
    /// Bytes left after the state (how many).
    TrailingBytes(usize),
    /// The state's market configuration does not validate (the reason).
    InvalidConfig(String),
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::Decode(reason) => write!(f, "snapshot does not decode: {reason}"),
            RestoreError::TrailingBytes(n) => write!(f, "snapshot has {n} trailing bytes"),
            RestoreError::InvalidConfig(reason) => write!(f, "snapshot config invalid: {reason}"),
        }
    }
}

impl std::error::Error for RestoreError {}

impl Engine {
    /// Panics on an invalid configuration: call `MarketConfig::validate` first to
    /// report it to the operator.
    pub fn new(config: MarketConfig) -> Engine {
        if let Err(reason) = config.validate() {
            panic!("invalid market config: {reason}");
        }
        let models = config
            .models
            .iter()
            .map(|spec| ModelState {
                spec: spec.clone(),
                queue: BTreeMap::new(),
                book: BTreeMap::new(),
                speed: ModelSpeed::default(),
            })
            .collect();
        let model_index = config
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id, i as ModelIdx))
            .collect();
        let mut state = State {
            now_ms: config.genesis_ms,
            block: 0,
            budget_wei_today: 0,
            seq: 0,
            accounts: Vec::new(),
            providers: Vec::new(),
            models,
            model_index,
            rfcs: Slab::new(config.rfcs_open_max),
            sessions: Slab::new(config.sessions_open_max),
            closed_sessions: Vec::new(),
            probes_open: 0,
            probe_deadlines: TimerWheel::new(),
            rfc_expiries: TimerWheel::new(),
            session_expiries: TimerWheel::new(),
            session_starts: TimerWheel::new(),
            suspensions: BTreeSet::new(),
            block_totals: Default::default(),
            block_earned_wei: 0,
            block_tokens: 0,
            merkle: MerkleAccumulator::default(),
            ledger: Ledger::default(),
            settlement: Default::default(),
            counters: Counters::default(),
            balance_snapshot_blake3: None,
            unfunded: Default::default(),
            config,
        };
        state.budget_wei_today = state.config.compute_budget_wei_per_day;
        let emission = state.config.compute_emission_wei_per_day();
        state
            .ledger
            .start_day(0, emission, state.config.pool_daily_spend_bps);
        let operator = state.config.operator;
        let user_max_rate = Engine::quota_rate_of(&state);
        let queue_owners = vec![QueueOwners::default(); state.models.len()];
        let mut engine = Engine {
            state,
            account_index: AddressIndex::default(),
            pending_match: Vec::new(),
            user_max_rate,
            origin_account: None,
            queue_owners,
        };
        // The operator holds an account from genesis, so that its nonces are tracked
        // (R-ID-4) before it ever receives a balance.
        engine
            .account_or_create(operator)
            .expect("the first account always fits");
        engine
    }

    /// Applies one command at `now_ms`, appending what the router must do to `effects`.
    pub fn apply(&mut self, command: &Command, now_ms: u64, effects: &mut Vec<Effect>) {
        self.apply_reporting(command, now_ms, effects);
    }

    /// Whether anything is due at `now_ms`: a timer (probe deadline, RFC or session
    /// expiry, suspension end) or the open block's end. When nothing is, applying a
    /// command at `now_ms` changes nothing but what the command itself does (and the
    /// clock). Pure; costs what the next `apply` would spend finding due timers.
    /// Every timer `advance` fires must be checked here (R-OPS-4: a refusal is left
    /// out of the journal only when nothing else happened at its time).
    pub fn is_due(&self, now_ms: u64) -> bool {
        let now = now_ms.max(self.state.now_ms);
        now >= self.block_end_ms()
            || self.state.probe_deadlines.has_due(now)
            || self.state.rfc_expiries.has_due(now)
            || self.state.session_expiries.has_due(now)
            // Every timer `advance` fires belongs here, effect or not: a refusal
            // applied while one is due would otherwise move state unjournaled.
            || self.state.session_starts.has_due(now)
            || self.state.unfunded.has_due(now)
            || self
                .state
                .suspensions
                .first()
                .is_some_and(|&(until, _)| until <= now)
    }

    /// R-OPS-4, R-PROV-3: applies a command like [`Engine::apply`], but a refused one
    /// (a replayed nonce or any typed refusal) leaves the state exactly as it was,
    /// clock included: the caller then journals nothing for it, and a replay of the
    /// journal reaches the same state hash. Only when nothing is due at `now_ms`
    /// ([`Engine::is_due`]; the router journals a `Tick` first when something is):
    /// otherwise the command is applied as `apply` would and reported `Changed`.
    /// Commands without an originator (ticks, router-originated) are always `Changed`.
    pub fn apply_unless_refused(
        &mut self,
        command: &Command,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> Applied {
        if command.origin().is_none() || self.is_due(now_ms) {
            self.apply_reporting(command, now_ms, effects);
            return Applied::Changed;
        }
        let now_before = self.state.now_ms;
        let effects_before = effects.len();
        let applied = self.apply_reporting(command, now_ms, effects);
        // A refusal alone, or the command is journaled: anything else (a timer
        // `is_due` missed) changed the state.
        let alone = effects.len() == effects_before + 1;
        debug_assert!(
            applied == Applied::Changed || alone,
            "is_due missed a timer"
        );
        if applied == Applied::Refused && !alone {
            return Applied::Changed;
        }
        if applied == Applied::Refused {
            // Nothing was due, the handler refused before changing anything: the
            // clock is the only field the command moved.
            debug_assert!(matches!(effects.last(), Some(Effect::Rejected { .. })));
            self.state.now_ms = now_before;
        }
        applied
    }

    /// `apply`, saying whether the command was refused. A refused command spends no
    /// nonce (R-ID-4 counts accepted messages): a refusal changes no state.
    fn apply_reporting(
        &mut self,
        command: &Command,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> Applied {
        // Time never goes back: a late timestamp is taken as the last one seen.
        let now = now_ms.max(self.state.now_ms);
        self.state.now_ms = now;
        self.advance(now, effects);
        let origin = command.origin();
        if let Some((address, nonce)) = origin {
            // One index lookup per command: the originator's account is remembered
            // for the handlers' own lookups (accounts are never removed or moved).
            let idx = self.account_lookup(&address);
            self.origin_account = idx.map(|idx| (address, idx));
            let last = match idx {
                Some(idx) => self.state.accounts[idx as usize].nonce_last,
                // R-PROV-2: an unfunded registration's address holds no account.
                None => self.state.unfunded.get(&address).map(|r| r.nonce_last),
            };
            if let Err(error) = nonce_admissible(last, nonce, now) {
                self.origin_account = None;
                effects.push(Effect::Rejected {
                    to: address,
                    nonce,
                    error,
                });
                return Applied::Refused;
            }
        }
        let result = self.dispatch(command, now, effects);
        let mut applied = Applied::Changed;
        if let Some((address, nonce)) = origin {
            match result {
                // R-ID-4: the nonce of an accepted message is spent. A refused one
                // spends nothing (it is not journaled, R-OPS-4): the same signed
                // message may be sent again once it can be accepted.
                Ok(()) => {
                    if let Some(idx) = self.account_of(&address) {
                        let account = &mut self.state.accounts[idx as usize];
                        debug_assert!(account.nonce_last.is_none_or(|last| last < nonce));
                        account.nonce_last = Some(nonce);
                    } else {
                        // R-PROV-2: an unfunded registration's address holds no account.
                        self.state.unfunded.spend_nonce(&address, nonce);
                    }
                }
                Err(error) => {
                    debug_assert!(self.pending_match.is_empty(), "a refusal matches nothing");
                    effects.push(Effect::Rejected {
                        to: address,
                        nonce,
                        error,
                    });
                    applied = Applied::Refused;
                }
            }
        }
        self.origin_account = None;
        self.run_pending_matches(now, effects);
        applied
    }

    /// Applies `batch` in order, each command at its own `now_ms`, exactly as calling
    /// [`Engine::apply`] once per command would: the same effects in the same order, the
    /// same state. After command `i`, `ends` gets `effects.len()`, so command `i`'s
    /// effects are `effects[ends[i - 1]..ends[i]]` (from the length `effects` had on
    /// entry for the first). Faster for bursts (issue 18 item 5): before each group of
    /// [`APPLY_BATCH_GROUP`] commands it reads the index slots of all their
    /// originators, then their accounts: reads that do not depend on one another, so
    /// the CPU overlaps their cache misses instead of taking them one command at a
    /// time. Those reads change nothing; an account that an earlier command of the
    /// group creates is simply found later by `apply`.
    pub fn apply_batch(
        &mut self,
        batch: &[(Command, u64)],
        effects: &mut Vec<Effect>,
        ends: &mut Vec<usize>,
    ) {
        for group in batch.chunks(APPLY_BATCH_GROUP) {
            self.warm(group.iter().map(|(command, _)| command));
            for (command, now_ms) in group {
                self.apply(command, *now_ms, effects);
                ends.push(effects.len());
            }
        }
    }

    /// Reads the index slots of the first [`APPLY_BATCH_GROUP`] `commands`'
    /// originators, then their accounts, so that they are in the cache when those
    /// commands are applied soon after (reads that do not depend on one another, so
    /// the CPU overlaps their misses). Changes nothing and returns nothing: a hint for
    /// a caller that applies a burst one command at a time (the router's sequencer);
    /// [`Engine::apply_batch`] does it by itself.
    pub fn warm<'c>(&self, commands: impl IntoIterator<Item = &'c Command>) {
        let mut origins = [None; APPLY_BATCH_GROUP];
        let mut slots = 0u64;
        for (origin, command) in origins.iter_mut().zip(commands) {
            if let Some((address, _)) = command.origin() {
                let hash = address_hash(&address);
                slots ^= self.account_index.touch(hash);
                *origin = Some((address, hash));
            }
        }
        std::hint::black_box(slots);
        for &(address, hash) in origins.iter().flatten() {
            let accounts = &self.state.accounts;
            let found = self
                .account_index
                .find(hash, |idx| accounts[idx as usize].address == address);
            if let Some(idx) = found {
                let account = &accounts[idx as usize];
                std::hint::black_box((account.nonce_last, account.balance_wei));
            }
        }
    }

    fn dispatch(
        &mut self,
        command: &Command,
        now: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        match command {
            Command::Tick => Ok(()),
            Command::SetBalances {
                operator,
                nonce,
                entries,
            } => self.set_balances(*operator, *nonce, entries, effects),
            Command::SetParams {
                operator,
                nonce,
                params,
            } => self.set_params(*operator, *nonce, params, effects),
            Command::RegisterProvider {
                provider,
                nonce,
                endpoint,
                offers,
            } => self.register_provider(*provider, *nonce, endpoint, offers, effects),
            Command::UpdateBid {
                provider,
                nonce,
                model,
                price_wei_per_token,
                capacity,
            } => self.update_bid(
                *provider,
                *nonce,
                *model,
                *price_wei_per_token,
                *capacity,
                effects,
            ),
            Command::WithdrawBid {
                provider,
                nonce,
                model,
            } => self.withdraw_bid(*provider, *nonce, *model, effects),
            Command::ProviderAnnounce { provider, nonce } => {
                self.announce(*provider, *nonce, effects)
            }
            Command::ProviderDisconnected { provider } => {
                self.disconnected(*provider);
                Ok(())
            }
            Command::SubmitRfc {
                user,
                nonce,
                model,
                tokens_max,
                expires_at_ms,
            } => self.submit_rfc(
                *user,
                *nonce,
                *model,
                *tokens_max,
                *expires_at_ms,
                now,
                effects,
            ),
            Command::CancelRfc { user, rfc, .. } => self.cancel_rfc(*user, *rfc, effects),
            Command::ProbeAnswer {
                provider, probe, ..
            } => self.probe_answer(*provider, *probe, now, effects),
            Command::Report {
                user,
                nonce,
                session,
                elapsed_ms,
                ttft_ms,
                tokens,
                prompt_tokens,
                outcome,
                report_digest,
            } => {
                let figures = crate::flow::ReportFigures {
                    elapsed_ms: *elapsed_ms,
                    ttft_ms: *ttft_ms,
                    tokens: *tokens,
                    prompt_tokens: *prompt_tokens,
                };
                let report = (*session, figures, *outcome);
                self.report(*user, *nonce, report, report_digest, now, effects)
            }
            Command::StartSession {
                provider,
                nonce,
                session,
            } => self.start_session(*provider, *nonce, *session, effects),
            Command::LoadBalanceSnapshot {
                file_blake3,
                entries,
            } => self.load_balance_snapshot(*file_blake3, entries, effects),
            Command::RouterStarted => {
                self.router_started(now, effects);
                Ok(())
            }
            Command::ChainPaid {
                operator,
                nonce,
                chain_id,
                contract,
                entries,
            } => self.chain_paid(*operator, *nonce, *chain_id, contract, entries, effects),
            Command::SetSettlementDomain { chain_id, contract } => {
                self.set_settlement_domain(*chain_id, contract)
            }
            Command::Claim {
                provider,
                nonce,
                amount_wei,
            } => {
                // R-CHAIN-3: with a chain, payment happens only there.
                if self.state.config.settlement_contract != Address::default() {
                    return Err(MarketError::ClaimOnChain);
                }
                let (amount, left) = self.state.ledger.claim(*provider, *amount_wei)?;
                effects.push(Effect::ClaimPaid {
                    provider: *provider,
                    nonce: *nonce,
                    amount_wei: amount,
                    owed_left_wei: left,
                });
                Ok(())
            }
        }
    }

    /// Fires every timer due at `now`, then seals every block that ended.
    fn advance(&mut self, now: u64, effects: &mut Vec<Effect>) {
        // Each wheel pops in (deadline, id) order, as the B-trees they replace did.
        while let Some((_, rfc)) = self.state.probe_deadlines.pop_due(now) {
            self.probe_timeout(rfc, now, effects);
        }
        while let Some((_, rfc)) = self.state.rfc_expiries.pop_due(now) {
            self.rfc_expired(rfc, effects);
        }
        while let Some((_, session)) = self.state.session_expiries.pop_due(now) {
            self.session_expired(session, effects);
        }
        while let Some((_, session)) = self.state.session_starts.pop_due(now) {
            self.session_start_timeout(session, effects);
        }
        while let Some(&(until, provider)) = self.state.suspensions.first() {
            if until > now {
                break;
            }
            self.state.suspensions.pop_first();
            self.refresh_provider(provider);
        }
        // R-PROV-2: unfunded registrations are kept for a bounded time.
        if !self.state.unfunded.is_empty() {
            self.state.unfunded.expire(now);
        }
        let genesis = self.state.config.genesis_ms;
        while now >= genesis.saturating_add((self.state.block + 1).saturating_mul(BLOCK_MS)) {
            self.seal_block(effects);
            self.state.block += 1;
            if self.state.block.is_multiple_of(BLOCKS_PER_DAY) {
                self.roll_day();
            }
            self.seal_epoch_if_due(effects);
        }
        self.run_pending_matches(now, effects);
    }

    /// UserMax's rate for the state's B, P and S (R-QUOTA-1..3).
    fn quota_rate_of(state: &State) -> quota::UserMaxRate {
        quota::UserMaxRate::new(
            quota::max_tokens_per_day(
                state.budget_wei_today,
                state.config.token_price_wei_per_1000,
            ),
            state.config.mor_supply_wei,
        )
    }

    /// Rebuilds the derived UserMax rate after B, P or S changed.
    pub(crate) fn refresh_quota_rate(&mut self) {
        self.user_max_rate = Engine::quota_rate_of(&self.state);
    }

    pub(crate) fn account_of(&self, address: &Address) -> Option<AccountIdx> {
        if let Some((origin, idx)) = self.origin_account {
            if origin == *address {
                debug_assert_eq!(self.account_lookup(address), Some(idx));
                return Some(idx);
            }
        }
        self.account_lookup(address)
    }

    fn account_lookup(&self, address: &Address) -> Option<AccountIdx> {
        let accounts = &self.state.accounts;
        self.account_index.find(address_hash(address), |idx| {
            accounts[idx as usize].address == *address
        })
    }

    /// Returns the account for `address`, creating it within `accounts_max`.
    pub(crate) fn account_or_create(
        &mut self,
        address: Address,
    ) -> Result<AccountIdx, MarketError> {
        if let Some(idx) = self.account_of(&address) {
            return Ok(idx);
        }
        let max = self.state.config.accounts_max;
        if self.state.accounts.len() as u64 >= max as u64 {
            return Err(MarketError::LimitReached {
                limit: crate::error::Limit::Accounts,
                max: max as u64,
            });
        }
        let idx = self.state.accounts.len() as AccountIdx;
        let day = self.state.day();
        self.state.accounts.push(Account {
            address,
            balance_wei: 0,
            nonce_last: None,
            quota_day: day,
            quota_used_tokens: 0,
            provider: None,
            sessions_open: 0,
        });
        let accounts = &self.state.accounts;
        self.account_index
            .insert_unique(address_hash(&address), idx, |i| {
                address_hash(&accounts[i as usize].address)
            });
        Ok(idx)
    }

    pub(crate) fn model_of(&self, model: ModelId) -> Result<ModelIdx, MarketError> {
        self.state
            .model_index
            .get(&model)
            .copied()
            .ok_or(MarketError::UnknownModel { model })
    }

    // ---- queries -------------------------------------------------------------

    /// The market's configuration in force (run-time parameters included).
    pub fn config(&self) -> &MarketConfig {
        &self.state.config
    }

    /// Unix ms of the last command applied.
    pub fn now_ms(&self) -> u64 {
        self.state.now_ms
    }

    /// The open block (R-TIME-1).
    pub fn block(&self) -> u64 {
        self.state.block
    }

    /// The current day (7,200 blocks).
    pub fn day(&self) -> u64 {
        self.state.day()
    }

    /// Unix ms at which the open block ends (when the router should next tick).
    pub fn block_end_ms(&self) -> u64 {
        self.state
            .config
            .genesis_ms
            .saturating_add((self.state.block + 1).saturating_mul(BLOCK_MS))
    }

    /// R-CHAIN-1: the settled epochs and the cumulative credits of the last one.
    pub fn settlement(&self) -> &crate::settlement::SettlementState {
        &self.state.settlement
    }

    /// The Compute Contract ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.state.ledger
    }

    /// Counts since genesis (RFCs accepted and failed, sessions opened, expired,
    /// not started and credited, reports, ...).
    pub fn counters(&self) -> &crate::state::Counters {
        &self.state.counters
    }

    /// MaxT for the current day, exact (R-QUOTA-1; may exceed u64).
    pub fn max_tokens_per_day(&self) -> quota::U256 {
        quota::max_tokens_per_day(
            self.state.budget_wei_today,
            self.state.config.token_price_wei_per_1000,
        )
    }

    /// The compute budget B in force today, wei (R-CONTRACT-5).
    pub fn budget_wei_today(&self) -> u128 {
        self.state.budget_wei_today
    }

    /// The MOR balance of `address`, wei (0 without an account).
    pub fn balance_wei(&self, address: &Address) -> u128 {
        self.account_of(address)
            .map_or(0, |idx| self.state.accounts[idx as usize].balance_wei)
    }

    /// Whether `address` holds an account (funded, a provider, or the operator).
    pub fn has_account(&self, address: &Address) -> bool {
        self.account_of(address).is_some()
    }

    /// R-ID-4: the last nonce accepted from `address` (an account's, or an unfunded
    /// registration's for an address that holds no account, R-PROV-2).
    pub fn nonce_last(&self, address: &Address) -> Option<u64> {
        match self.account_of(address) {
            Some(idx) => self.state.accounts[idx as usize].nonce_last,
            None => self.state.unfunded.get(address).map(|r| r.nonce_last),
        }
    }

    /// R-PROV-2: unfunded registrations kept (at most `unfunded_registrations_max`).
    pub fn unfunded_registrations_len(&self) -> usize {
        self.state.unfunded.len()
    }

    /// R-PROV-2: whether `address` has an unfunded registration kept.
    pub fn has_unfunded_registration(&self, address: &Address) -> bool {
        self.state.unfunded.get(address).is_some()
    }

    /// R-CONTRACT-4: whether `address` holds one of the bootstrap slots.
    pub fn is_bootstrap_provider(&self, address: &Address) -> bool {
        self.state.ledger.bootstrap_providers.contains(address)
    }

    /// UserMax (R-QUOTA-3) of `address` for the current day.
    pub fn user_max_tokens(&self, address: &Address) -> u64 {
        self.user_max_rate
            .user_max_tokens(self.balance_wei(address))
    }

    /// What is left of today's UserMax (never negative).
    pub fn tokens_left(&self, address: &Address) -> u64 {
        self.account_of(address)
            .map_or(0, |idx| self.tokens_left_of(idx))
    }

    pub(crate) fn tokens_left_of(&self, idx: AccountIdx) -> u64 {
        let account = &self.state.accounts[idx as usize];
        let user_max = self.user_max_rate.user_max_tokens(account.balance_wei);
        let used = if account.quota_day == self.state.day() {
            account.quota_used_tokens
        } else {
            0
        };
        user_max.saturating_sub(used)
    }

    /// The endpoint a provider registered, if `address` is one.
    pub fn provider_endpoint(&self, address: &Address) -> Option<&[u8]> {
        let idx = self.account_of(address)?;
        let provider = self.state.accounts[idx as usize].provider?;
        Some(self.state.providers[provider as usize].endpoint.as_ref())
    }

    /// RFCs queued for `model` (0 for an unknown model).
    pub fn queue_depth(&self, model: ModelId) -> usize {
        self.model_of(model)
            .map_or(0, |m| self.state.models[m as usize].queue.len())
    }

    /// RFCs queued, all models.
    pub fn queue_depth_total(&self) -> usize {
        self.state.models.iter().map(|m| m.queue.len()).sum()
    }

    /// Sessions open now.
    pub fn sessions_open(&self) -> u32 {
        self.state.sessions.len()
    }

    /// Probes awaiting an answer.
    pub fn probes_open(&self) -> u32 {
        self.state.probes_open
    }

    /// Every account holding MOR, with its balance (e.g. to warm a gateway's
    /// pre-check cache after recovery).
    pub fn balances(&self) -> impl Iterator<Item = (Address, u128)> + '_ {
        self.state
            .accounts
            .iter()
            .filter(|a| a.balance_wei > 0)
            .map(|a| (a.address, a.balance_wei))
    }

    /// Every account's last accepted nonce (R-ID-4), e.g. to warm a gateway's
    /// replay pre-check cache after recovery.
    pub fn nonces(&self) -> impl Iterator<Item = (Address, u64)> + '_ {
        self.state
            .accounts
            .iter()
            .filter_map(|a| a.nonce_last.map(|nonce| (a.address, nonce)))
    }

    /// BLAKE3 of the last balance snapshot file applied (R-QUOTA-6), if any.
    pub fn balance_snapshot_blake3(&self) -> Option<[u8; 32]> {
        self.state.balance_snapshot_blake3
    }

    /// Accounts held.
    pub fn accounts_len(&self) -> usize {
        self.state.accounts.len()
    }

    /// Provider places taken.
    pub fn providers_len(&self) -> usize {
        self.state.providers.len()
    }

    // ---- snapshots and hashes ------------------------------------------------

    /// The whole state, bincode-encoded (canonical: no hash-map iteration order).
    pub fn snapshot(&self) -> Vec<u8> {
        bincode::encode_to_vec(&self.state, bincode::config::standard()).expect("state encodes")
    }

    /// An engine from a snapshot's bytes (`snapshot`), its derived indexes rebuilt.
    pub fn restore(bytes: &[u8]) -> Result<Engine, RestoreError> {
        let (state, read): (State, usize) =
            bincode::decode_from_slice(bytes, bincode::config::standard())
                .map_err(|e| RestoreError::Decode(e.to_string()))?;
        if read != bytes.len() {
            return Err(RestoreError::TrailingBytes(bytes.len() - read));
        }
        state
            .config
            .validate()
            .map_err(RestoreError::InvalidConfig)?;
        let mut account_index = AddressIndex::with_capacity(state.accounts.len());
        for (i, account) in state.accounts.iter().enumerate() {
            let accounts = &state.accounts;
            account_index.insert_unique(address_hash(&account.address), i as AccountIdx, |j| {
                address_hash(&accounts[j as usize].address)
            });
        }
        let user_max_rate = Engine::quota_rate_of(&state);
        let mut queue_owners = vec![QueueOwners::default(); state.models.len()];
        for (owners, model) in queue_owners.iter_mut().zip(&state.models) {
            for (&key, &slot) in &model.queue {
                let rfc = state.rfcs.get(slot as usize).ok_or_else(|| {
                    RestoreError::Decode(format!("queued RFC slot {slot} is empty"))
                })?;
                owners.insert(rfc.user, key);
            }
        }
        Ok(Engine {
            state,
            account_index,
            pending_match: Vec::new(),
            user_max_rate,
            origin_account: None,
            queue_owners,
        })
    }

    /// BLAKE3 of the canonical encoding: equal for equal states.
    pub fn state_hash(&self) -> [u8; 32] {
        *blake3::hash(&self.snapshot()).as_bytes()
    }
}

/// R-ID-4 and R-ID-8: whether `nonce` may be accepted from an address whose last
/// accepted nonce is `last`, at router time `now_ms`. Refused as a replay when not
/// above `last`; refused as `nonce_gap` when above `max(last, now_ms × 1000) + 2^40`.
/// The floor at the router's time in microseconds lets a fresh address (or one whose
/// clients number their messages by the clock in microseconds, as every client the
/// project ships does) start anywhere up to the clock plus 2^40 µs (12.7 days), while
/// no message can take an address near 2^64 - 1 and so use it up: each accepted
/// nonce is at most 2^40 above the previous one or the clock. Pure: the same journal
/// replays to the same decisions.
pub(crate) fn nonce_admissible(
    last: Option<u64>,
    nonce: u64,
    now_ms: u64,
) -> Result<(), MarketError> {
    if let Some(nonce_last) = last.filter(|&last| nonce <= last) {
        return Err(MarketError::Replay { nonce_last });
    }
    let floor = last.unwrap_or(0).max(now_ms.saturating_mul(1_000));
    let nonce_max = floor.saturating_add(crate::error::NONCE_GAP_MAX);
    if nonce > nonce_max {
        return Err(MarketError::NonceGap {
            nonce_last: last,
            nonce_max,
        });
    }
    debug_assert!(last.is_none_or(|last| last < nonce) && nonce <= nonce_max);
    Ok(())
}
