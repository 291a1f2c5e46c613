//! Section 5: RFC admission and queueing (R-RFC-1/2, R-QUOTA-4/5/6), matching with
//! price-time priority (R-MATCH-1), probes and re-matching (R-MATCH-2), sessions and
//! tickets (R-MATCH-6), session starts and the per-user session bound
//! (R-SESSION-1), and reports with their outcomes, the speed gate and fail policies
//! (R-REPORT-1..3, R-PERF-1..4).

use crate::command::{CreditReason, Effect, ReportOutcome, RfcFailure, Ticket};
use crate::config::FailPolicy;
use crate::engine::Engine;
use crate::error::{CreditSum, Limit, MarketError};
use crate::merkle::Receipt;
use crate::money;
use crate::speed::{Timing, Verdict, WindowLimits};
use crate::state::{AccountIdx, Closed, ModelIdx, Probing, Rfc, Session};
use crate::types::{compose_id, slot_of, Address, ModelId, ProbeId, RfcId, SessionId};

/// What a report measured (R-REPORT-1, R-REPORT-3): ms from sending the query to
/// the whole result and to the first token, completion and prompt tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReportFigures {
    pub elapsed_ms: u64,
    pub ttft_ms: u64,
    pub tokens: u64,
    pub prompt_tokens: u64,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit_rfc(
        &mut self,
        user: Address,
        nonce: u64,
        model: ModelId,
        tokens_max: u64,
        expires_at_ms: u64,
        now: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let model_idx = self.model_of(model)?;
        let config = &self.state.config;
        if tokens_max == 0 || tokens_max > config.tokens_max_limit {
            return Err(MarketError::InvalidTokensMax {
                tokens_max,
                limit: config.tokens_max_limit,
            });
        }
        // R-MONEY-1: whichever provider it is matched with, the session's credit
        // (tokens ≤ TokenMax, price ≤ bid_wei_per_token_max) must be representable.
        if money::credit(tokens_max, config.bid_wei_per_token_max).is_err() {
            let fit = u128::MAX / config.bid_wei_per_token_max;
            return Err(MarketError::CreditUnrepresentable {
                tokens_max_fit: u64::try_from(fit).unwrap_or(u64::MAX),
            });
        }
        if expires_at_ms <= now || expires_at_ms > now.saturating_add(config.rfc_ttl_max_ms) {
            return Err(MarketError::InvalidExpiry {
                expires_at_ms,
                now_ms: now,
                ttl_max_ms: config.rfc_ttl_max_ms,
            });
        }
        let retry_after_ms = config.rfc_retry_after_ms;
        let queue_full = self.state.models[model_idx as usize].queue.len()
            >= config.rfc_queue_depth_max as usize;
        let user_idx = self.account_of(&user).ok_or(MarketError::ZeroBalance)?;
        let balance = self.state.accounts[user_idx as usize].balance_wei;
        if balance == 0 {
            return Err(MarketError::ZeroBalance);
        }
        // R-SESSION-1: sessions and unanswered RFCs together, so that a user cannot
        // queue past the bound and then be matched past it.
        let (open, open_max) = (
            self.state.accounts[user_idx as usize].sessions_open,
            self.state.config.user_sessions_open_max,
        );
        if open >= open_max {
            return Err(MarketError::UserSessionsFull {
                open,
                max: open_max,
            });
        }
        let tokens_left = self.tokens_left_of(user_idx);
        if tokens_max > tokens_left {
            return Err(MarketError::QuotaExceeded { tokens_left });
        }
        if queue_full {
            return Err(MarketError::Overloaded { retry_after_ms });
        }
        let Some(slot) = self.state.rfcs.next_slot() else {
            return Err(MarketError::LimitReached {
                limit: Limit::RfcsOpen,
                max: self.state.config.rfcs_open_max as u64,
            });
        };
        // R-QUOTA-4: charged at admission.
        let day = self.state.day();
        let account = &mut self.state.accounts[user_idx as usize];
        if account.quota_day != day {
            account.quota_day = day;
            account.quota_used_tokens = 0;
        }
        account.quota_used_tokens += tokens_max;
        account.sessions_open += 1;
        debug_assert!(account.sessions_open <= open_max);
        let seq = self.state.next_seq();
        let id = compose_id(seq, slot);
        // R-RFC-2: priority is the user's balance at admission (a later balance update
        // does not reorder queued RFCs), then arrival. `balance <= u128::MAX`, so the
        // subtraction cannot underflow.
        let queue_key = (u128::MAX - balance, seq);
        let rfc = Rfc {
            id,
            user: user_idx,
            nonce,
            model: model_idx,
            tokens_max,
            expires_at_ms,
            charged_day: day,
            queue_key,
            probing: None,
            tries: 0,
        };
        let inserted = self.state.rfcs.insert(rfc);
        debug_assert_eq!(inserted, Some(slot));
        self.state.rfc_expiries.insert(expires_at_ms, id);
        self.state.counters.rfcs_accepted += 1;
        effects.push(Effect::RfcAccepted {
            user,
            nonce,
            rfc: id,
            tokens_left: tokens_left - tokens_max,
        });
        // R-MATCH-1 fast path: with nobody queued ahead and an offer available, this
        // RFC is the queue's head and would be matched with the book's best offer by
        // `run_pending_matches` at the end of this command (nothing in between emits
        // effects or draws sequence numbers): match it now and skip the queue.
        let model_state = &self.state.models[model_idx as usize];
        let room = (self.state.sessions.len() as u64 + self.state.probes_open as u64)
            < self.state.config.sessions_open_max as u64;
        let best = match (room, model_state.queue.is_empty()) {
            (true, true) => self.best_offer_for(model_idx, user_idx),
            _ => None,
        };
        if let Some((provider, offer)) = best {
            debug_assert!(self.pending_match.is_empty());
            self.start_probe(slot as usize, provider, offer, now, effects);
        } else {
            self.enqueue(model_idx, queue_key, slot, user_idx);
            self.pending_match.push(model_idx);
        }
        Ok(())
    }

    /// R-MATCH-1 and R-MATCH-7: the best available offer of `model` whose provider
    /// is not `user` (price, then bid time). A provider offers a model once, so the
    /// book's best offer, if it is the user's own, is followed by someone else's:
    /// at most two entries are looked at, and the skipped offer keeps its place.
    fn best_offer_for(&self, model: ModelIdx, user: AccountIdx) -> Option<(u32, u16)> {
        let found = self.state.models[model as usize]
            .book
            .values()
            .take(2)
            .find(|&&(provider, _)| self.state.providers[provider as usize].account != user)
            .copied();
        debug_assert!(found.is_none_or(|(p, _)| self.state.providers[p as usize].account != user));
        found
    }

    /// Queues an RFC at `key` (R-RFC-2) and records its owner (R-MATCH-7).
    fn enqueue(&mut self, model: ModelIdx, key: (u128, u64), slot: u32, user: AccountIdx) {
        let previous = self.state.models[model as usize].queue.insert(key, slot);
        debug_assert!(previous.is_none(), "queue keys are unique");
        self.queue_owners[model as usize].insert(user, key);
    }

    /// Takes an RFC out of its model's queue (no-op if it was not queued).
    fn dequeue(&mut self, model: ModelIdx, key: (u128, u64), user: AccountIdx) {
        if self.state.models[model as usize]
            .queue
            .remove(&key)
            .is_some()
        {
            self.queue_owners[model as usize].remove(user, key);
        }
        debug_assert_eq!(
            self.state.models[model as usize].queue.len(),
            self.queue_owners[model as usize].len()
        );
    }

    pub(crate) fn cancel_rfc(
        &mut self,
        user: Address,
        rfc_id: RfcId,
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let slot = slot_of(rfc_id);
        let owner = self.account_of(&user);
        // Only a queued RFC of the caller's: one being probed resolves by itself.
        let queued = self.state.rfcs.get(slot).is_some_and(|rfc| {
            rfc.id == rfc_id && Some(rfc.user) == owner && rfc.probing.is_none()
        });
        if !queued {
            return Err(MarketError::UnknownRfc { rfc: rfc_id });
        }
        self.fail_rfc(slot, RfcFailure::Cancelled, effects);
        Ok(())
    }

    pub(crate) fn run_pending_matches(&mut self, now: u64, effects: &mut Vec<Effect>) {
        while let Some(model) = self.pending_match.pop() {
            self.try_match(model, now, effects);
        }
    }

    /// R-MATCH-1: pairs the queue's head with the best available offer while both
    /// exist and the session limit allows. R-MATCH-7: never with its own address's
    /// offer: the head takes the best offer not its own; when the book holds only
    /// the head's user's offer, that offer goes to the first queued RFC of someone
    /// else, and the user's RFCs wait (in place) for another provider or expiry.
    fn try_match(&mut self, model: ModelIdx, now: u64, effects: &mut Vec<Effect>) {
        loop {
            let busy = self.state.sessions.len() as u64 + self.state.probes_open as u64;
            if busy >= self.state.config.sessions_open_max as u64 {
                return;
            }
            let model_state = &self.state.models[model as usize];
            let (Some((&head_key, &head_slot)), Some(&(best, best_offer))) = (
                model_state.queue.first_key_value(),
                model_state.book.values().next(),
            ) else {
                return;
            };
            let head_user = self.rfc_user(head_slot);
            let (key, slot, user, provider, offer) = match self.best_offer_for(model, head_user) {
                Some((provider, offer)) => (head_key, head_slot, head_user, provider, offer),
                None => {
                    // The book holds only the head user's own offer.
                    let owner = self.state.providers[best as usize].account;
                    debug_assert_eq!(owner, head_user);
                    let Some(key) = self.queue_owners[model as usize].first_not_of(owner) else {
                        return;
                    };
                    let slot = self.state.models[model as usize].queue[&key];
                    (key, slot, self.rfc_user(slot), best, best_offer)
                }
            };
            debug_assert_ne!(self.state.providers[provider as usize].account, user);
            self.dequeue(model, key, user);
            self.start_probe(slot as usize, provider, offer, now, effects);
        }
    }

    fn rfc_user(&self, slot: u32) -> AccountIdx {
        self.state
            .rfcs
            .get(slot as usize)
            .expect("queued RFC exists")
            .user
    }

    fn start_probe(
        &mut self,
        rfc_slot: usize,
        provider: u32,
        offer: u16,
        now: u64,
        effects: &mut Vec<Effect>,
    ) {
        let deadline_ms = now.saturating_add(self.state.config.probe_timeout_ms);
        let seq = self.state.next_seq();
        let probe = compose_id(seq, rfc_slot as u32);
        let offer_state = &mut self.state.providers[provider as usize].offers[offer as usize];
        offer_state.busy += 1;
        assert!(
            offer_state.busy <= offer_state.capacity,
            "matched a full offer"
        );
        let rfc = self
            .state
            .rfcs
            .get_mut(rfc_slot)
            .expect("queued RFC exists");
        debug_assert!(rfc.probing.is_none());
        rfc.probing = Some(Probing {
            probe,
            provider,
            offer,
            deadline_ms,
        });
        rfc.tries += 1;
        let (rfc_id, model, tokens_max) = (rfc.id, rfc.model, rfc.tokens_max);
        self.state.probe_deadlines.insert(deadline_ms, rfc_id);
        self.state.probes_open += 1;
        self.refresh_offer(provider, offer);
        let provider_address = self.state.providers[provider as usize].address;
        let model_id = self.state.models[model as usize].spec.id;
        effects.push(Effect::Probe {
            provider: provider_address,
            probe,
            model: model_id,
            tokens_max,
            deadline_ms,
        });
    }

    /// Ends an RFC's probe, freeing the reserved capacity; returns the RFC's slot.
    fn end_probe(&mut self, rfc_slot: usize) -> Option<Probing> {
        let rfc = self.state.rfcs.get_mut(rfc_slot)?;
        let probing = rfc.probing.take()?;
        let rfc_id = rfc.id;
        self.state
            .probe_deadlines
            .remove(probing.deadline_ms, rfc_id);
        self.state.probes_open -= 1;
        Some(probing)
    }

    pub(crate) fn probe_answer(
        &mut self,
        provider: Address,
        probe: ProbeId,
        now: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let rfc_slot = slot_of(probe);
        let provider_idx = self
            .account_of(&provider)
            .and_then(|a| self.state.accounts[a as usize].provider);
        let valid = match (self.state.rfcs.get(rfc_slot), provider_idx) {
            (Some(rfc), Some(p)) => rfc
                .probing
                .as_ref()
                .is_some_and(|probing| probing.probe == probe && probing.provider == p),
            _ => false,
        };
        if !valid {
            return Err(MarketError::UnknownProbe { probe });
        }
        let probing = self.end_probe(rfc_slot).expect("validated above");
        let rfc = self.state.rfcs.get(rfc_slot).expect("validated above");
        if now >= rfc.expires_at_ms {
            self.release_capacity(probing.provider, probing.offer);
            self.fail_rfc(rfc_slot, RfcFailure::Expired, effects);
            return Ok(());
        }
        self.open_session(rfc_slot, probing, now, effects);
        Ok(())
    }

    fn open_session(
        &mut self,
        rfc_slot: usize,
        probing: Probing,
        now: u64,
        effects: &mut Vec<Effect>,
    ) {
        let rfc = self.state.rfcs.remove(rfc_slot).expect("probed RFC exists");
        self.state.rfc_expiries.remove(rfc.expires_at_ms, rfc.id);
        let expires_at_ms = now.saturating_add(self.state.config.session_ttl_ms);
        let start_deadline_ms = now.saturating_add(self.state.config.ticket_start_timeout_ms);
        let slot = self
            .state
            .sessions
            .next_slot()
            .expect("session slots are reserved by the match limit");
        let seq = self.state.next_seq();
        let id = compose_id(seq, slot);
        let provider = &self.state.providers[probing.provider as usize];
        let price = provider.offers[probing.offer as usize].price_wei_per_token;
        let ticket = Ticket {
            session: id,
            user: self.state.accounts[rfc.user as usize].address,
            provider: provider.address,
            endpoint: provider.endpoint.clone(),
            model: self.state.models[rfc.model as usize].spec.id,
            tokens_max: rfc.tokens_max,
            price_wei_per_token: price,
            expires_at_ms,
            rfc_nonce: rfc.nonce,
        };
        // R-MATCH-7: matching never pairs an RFC with its own address's offer.
        debug_assert_ne!(rfc.user, provider.account, "self-match");
        let session = Session {
            id,
            user: rfc.user,
            provider: probing.provider,
            offer: probing.offer,
            model: rfc.model,
            tokens_max: rfc.tokens_max,
            price_wei_per_token: price,
            expires_at_ms,
            rfc_nonce: rfc.nonce,
            start_deadline_ms,
            started: false,
        };
        self.state.sessions.insert(session);
        self.state.session_expiries.insert(expires_at_ms, id);
        self.state.session_starts.insert(start_deadline_ms, id);
        self.state.counters.sessions_opened += 1;
        effects.push(Effect::SessionOpened { ticket });
    }

    /// R-MATCH-2: no answer in time: the provider is unreachable until it announces
    /// itself again, and the RFC tries the next provider (bounded).
    pub(crate) fn probe_timeout(&mut self, rfc_id: RfcId, now: u64, effects: &mut Vec<Effect>) {
        let slot = slot_of(rfc_id);
        if self.state.rfcs.get(slot).is_none_or(|rfc| rfc.id != rfc_id) {
            return;
        }
        // The deadline was already popped from the index by `advance`.
        let rfc = self.state.rfcs.get_mut(slot).expect("checked above");
        let Some(probing) = rfc.probing.take() else {
            return;
        };
        self.state.probes_open -= 1;
        self.release_capacity(probing.provider, probing.offer);
        let provider = &mut self.state.providers[probing.provider as usize];
        if provider.reachable {
            provider.reachable = false;
            effects.push(Effect::ProviderUnreachable {
                provider: provider.address,
            });
            self.refresh_provider(probing.provider);
        }
        let rfc = self.state.rfcs.get(slot).expect("checked above");
        if now >= rfc.expires_at_ms {
            self.fail_rfc(slot, RfcFailure::Expired, effects);
        } else if rfc.tries >= self.state.config.probe_tries_max {
            self.fail_rfc(slot, RfcFailure::NoProvider, effects);
        } else {
            // Back at its original place in the queue: it keeps its priority.
            let (key, model, user) = (rfc.queue_key, rfc.model, rfc.user);
            self.enqueue(model, key, slot as u32, user);
            self.pending_match.push(model);
        }
    }

    pub(crate) fn rfc_expired(&mut self, rfc_id: RfcId, effects: &mut Vec<Effect>) {
        let slot = slot_of(rfc_id);
        match self.state.rfcs.get(slot) {
            // A probing RFC resolves when its probe ends; its expiry is checked then.
            Some(rfc) if rfc.id == rfc_id && rfc.probing.is_none() => {
                self.fail_rfc(slot, RfcFailure::Expired, effects)
            }
            _ => {}
        }
    }

    /// Closes an unmatched RFC with a full refund (R-QUOTA-4).
    pub(crate) fn fail_rfc(&mut self, slot: usize, reason: RfcFailure, effects: &mut Vec<Effect>) {
        let Some(rfc) = self.state.rfcs.remove(slot) else {
            return;
        };
        debug_assert!(rfc.probing.is_none(), "end the probe before failing");
        self.dequeue(rfc.model, rfc.queue_key, rfc.user);
        self.state.rfc_expiries.remove(rfc.expires_at_ms, rfc.id);
        let day = self.state.day();
        let account = &mut self.state.accounts[rfc.user as usize];
        debug_assert!(account.sessions_open > 0, "an open RFC counts");
        account.sessions_open -= 1;
        let refunded_tokens = if rfc.charged_day == day && account.quota_day == day {
            debug_assert!(account.quota_used_tokens >= rfc.tokens_max);
            account.quota_used_tokens -= rfc.tokens_max;
            rfc.tokens_max
        } else {
            0 // the day turned: usage was reset already
        };
        self.state.counters.rfcs_failed += 1;
        effects.push(Effect::RfcFailed {
            user: account.address,
            nonce: rfc.nonce,
            rfc: rfc.id,
            reason,
            refunded_tokens,
        });
    }

    pub(crate) fn session_expired(&mut self, session_id: SessionId, effects: &mut Vec<Effect>) {
        let slot = slot_of(session_id);
        if self
            .state
            .sessions
            .get(slot)
            .is_none_or(|s| s.id != session_id)
        {
            return;
        }
        let session = self.close_session(slot, Closed::Expired);
        self.state.counters.sessions_expired += 1;
        let user = self.state.accounts[session.user as usize].address;
        let provider = self.state.providers[session.provider as usize].address;
        effects.push(Effect::SessionExpired {
            session: session_id,
            user,
            provider,
        });
    }

    /// R-SESSION-1: a session whose start was not signed in time closes without
    /// credit and without penalty; its capacity is freed. The user's quota is not
    /// refunded: the RFC was matched (R-QUOTA-4 refunds only unmatched RFCs), and
    /// a refund would let a hoarder hold slots again and again at no cost.
    pub(crate) fn session_start_timeout(
        &mut self,
        session_id: SessionId,
        effects: &mut Vec<Effect>,
    ) {
        let slot = slot_of(session_id);
        let due = self
            .state
            .sessions
            .get(slot)
            .is_some_and(|s| s.id == session_id && !s.started);
        if !due {
            return; // started, reported or expired: its deadline left with it
        }
        let session = self.close_session(slot, Closed::NotStarted);
        self.state.counters.sessions_not_started += 1;
        let user = self.state.accounts[session.user as usize].address;
        let provider = self.state.providers[session.provider as usize].address;
        effects.push(Effect::SessionNotStarted {
            session: session_id,
            user,
            provider,
        });
        self.pending_match.push(session.model);
    }

    /// R-SESSION-1: the session's provider signs that the inference began.
    pub(crate) fn start_session(
        &mut self,
        provider: Address,
        nonce: u64,
        session_id: SessionId,
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let slot = slot_of(session_id);
        let Some(session) = self.state.sessions.get(slot).filter(|s| s.id == session_id) else {
            return Err(self.closed_session_error(slot, session_id));
        };
        if self.state.providers[session.provider as usize].address != provider {
            return Err(MarketError::NotYourSession {
                session: session_id,
            });
        }
        if session.started {
            return Err(MarketError::SessionAlreadyStarted {
                session: session_id,
            });
        }
        let deadline_ms = session.start_deadline_ms;
        let removed = self.state.session_starts.remove(deadline_ms, session_id);
        debug_assert!(removed, "an unstarted session has its start deadline");
        if let Some(session) = self.state.sessions.get_mut(slot) {
            session.started = true;
        }
        effects.push(Effect::Done {
            to: provider,
            nonce,
        });
        Ok(())
    }

    /// Why a session id names no open session: how the slot's last session ended.
    fn closed_session_error(&self, slot: usize, session: SessionId) -> MarketError {
        match self.state.closed_sessions.get(slot).copied().flatten() {
            Some((id, Closed::Reported)) if id == session => {
                MarketError::AlreadyReported { session }
            }
            Some((id, Closed::Expired)) if id == session => MarketError::SessionExpired { session },
            Some((id, Closed::NotStarted)) if id == session => {
                MarketError::SessionNotStarted { session }
            }
            _ => MarketError::UnknownSession { session },
        }
    }

    fn close_session(&mut self, slot: usize, how: Closed) -> Session {
        let session = self.state.sessions.remove(slot).expect("open session");
        self.state
            .session_expiries
            .remove(session.expires_at_ms, session.id);
        if !session.started {
            self.state
                .session_starts
                .remove(session.start_deadline_ms, session.id);
        }
        let account = &mut self.state.accounts[session.user as usize];
        debug_assert!(account.sessions_open > 0, "an open session counts");
        account.sessions_open -= 1;
        if self.state.closed_sessions.len() <= slot {
            self.state.closed_sessions.resize(slot + 1, None);
        }
        self.state.closed_sessions[slot] = Some((session.id, how));
        self.release_capacity(session.provider, session.offer);
        session
    }

    fn release_capacity(&mut self, provider: u32, offer: u16) {
        // Just below the global session limit again: every model may match now, not
        // only the one whose capacity was freed.
        let busy = self.state.sessions.len() as u64 + self.state.probes_open as u64;
        if busy + 1 == self.state.config.sessions_open_max as u64 {
            self.pending_match
                .extend(0..self.state.models.len() as ModelIdx);
        }
        let offer_state = &mut self.state.providers[provider as usize].offers[offer as usize];
        assert!(offer_state.busy > 0, "capacity released twice");
        offer_state.busy -= 1;
        self.refresh_offer(provider, offer);
    }

    /// R-REPORT-1..3 and R-PERF-1..4: `report` is (session, figures, outcome).
    pub(crate) fn report(
        &mut self,
        user: Address,
        nonce: u64,
        (session_id, figures, outcome): (SessionId, ReportFigures, ReportOutcome),
        report_digest: &[u8; 32],
        now: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let ReportFigures {
            elapsed_ms,
            ttft_ms,
            tokens,
            prompt_tokens,
        } = figures;
        let slot = slot_of(session_id);
        let Some(session) = self.state.sessions.get(slot).filter(|s| s.id == session_id) else {
            return Err(self.closed_session_error(slot, session_id));
        };
        if self.state.accounts[session.user as usize].address != user {
            return Err(MarketError::NotYourSession {
                session: session_id,
            });
        }
        if tokens > session.tokens_max {
            return Err(MarketError::TokensOverMax {
                tokens_max: session.tokens_max,
            });
        }
        // R-REPORT-3: the figures must be coherent whatever the outcome, so that
        // every accepted report could have joined the speed windows.
        if ttft_ms > elapsed_ms {
            return Err(MarketError::TtftOverElapsed {
                ttft_ms,
                elapsed_ms,
            });
        }
        let prompt_tokens_max = self.state.config.prompt_tokens_max;
        if prompt_tokens > prompt_tokens_max {
            return Err(MarketError::PromptTokensOverMax {
                prompt_tokens,
                max: prompt_tokens_max,
            });
        }
        debug_assert!(
            now < session.expires_at_ms,
            "expired sessions close in advance()"
        );
        let amount_wei = money::credit(tokens, session.price_wei_per_token)?;
        let timing = Timing {
            elapsed_ms,
            ttft_ms,
            tokens,
            prompt_tokens,
        };
        let reason = self.judge_report(session, &timing, outcome);
        let credited = matches!(
            reason,
            CreditReason::Earned | CreditReason::EarnedDespiteFail
        );
        if credited {
            self.check_credit_fits(session.provider, amount_wei, tokens, now)?;
        }
        let session = self.close_session(slot, Closed::Reported);
        self.state.counters.reports += 1;
        if outcome == ReportOutcome::Pass && tokens > 0 {
            // R-PERF-1: a report the user marked pass joins the windows, within the
            // user's share of them and if believable (issue 27, speed-window
            // poisoning).
            let config = &self.state.config;
            let limits = WindowLimits {
                window: config.speed_window_reports,
                user_max: config.speed_window_user_reports_max,
                tokens_per_s_max: config.tokens_per_s_max,
            };
            self.state.models[session.model as usize]
                .speed
                .record(session.user, &timing, limits);
        }
        if credited {
            self.credit(&session, elapsed_ms, tokens, amount_wei, report_digest);
        }
        // R-REPORT-2: a void report says nothing about the provider: it neither adds
        // a penalty point nor dilutes the provider's recent ones.
        if reason != CreditReason::Void {
            let penalty = matches!(
                reason,
                CreditReason::ReportedFail
                    | CreditReason::TooSlow
                    | CreditReason::TooSlowFirstToken
                    | CreditReason::EarnedDespiteFail
            );
            // R-PERF-4: the point is the user's, so that suspension can count users.
            let penalty_from = penalty.then_some(session.user);
            self.record_outcome(session.provider, penalty_from, now, effects);
        }
        // R-BLOCK-2: what the session earned; the ledger credits it subject to the
        // day's cap when the block is sealed.
        let earned_wei = if credited { amount_wei } else { 0 };
        debug_assert!(reason != CreditReason::Void || earned_wei == 0);
        effects.push(Effect::ReportAccepted {
            user,
            nonce,
            session: session_id,
            reason,
            earned_wei,
        });
        self.pending_match.push(session.model);
        Ok(())
    }

    /// R-MONEY-1, R-OPS-4: refuses (changing nothing) a credit that would overflow a
    /// running sum the report pushes: its provider's block totals (wei, tokens,
    /// sessions), the block's batch total, or the ledger's cumulative shortfall when
    /// the block is sealed. The shortfall of a block is at most what the block
    /// earned, so `shortfall_total + block earned` bounds it whatever the day's cap
    /// credits; every other ledger sum is bounded by the emission (solvency), which
    /// `MarketConfig::validate` bounds. So sealing the block (and replaying the
    /// journal) can never overflow.
    fn check_credit_fits(
        &self,
        provider: u32,
        amount_wei: u128,
        tokens: u64,
        now: u64,
    ) -> Result<(), MarketError> {
        let retry_after_ms = self.block_end_ms().saturating_sub(now).min(u32::MAX as u64) as u32;
        let refuse = |sum: CreditSum| {
            let retry_after_ms = match sum {
                CreditSum::LedgerShortfall => 0, // never shrinks: retrying cannot help
                _ => retry_after_ms,
            };
            Err(MarketError::CreditOverflow {
                retry_after_ms,
                sum,
            })
        };
        let Ok(block_wei) = money::add(self.state.block_earned_wei, amount_wei) else {
            return refuse(CreditSum::BlockWei);
        };
        if money::add(self.state.ledger.shortfall_total_wei, block_wei).is_err() {
            return refuse(CreditSum::LedgerShortfall);
        }
        // A provider's totals are parts of the block's: when the block's sums fit, so
        // do the provider's, and the lookup is skipped (the hot path).
        let receipts = self.state.merkle.leaves();
        if self.state.block_tokens + (tokens as u128) <= u64::MAX as u128
            && receipts < u32::MAX as u64
        {
            return Ok(());
        }
        let (provider_wei, provider_tokens, provider_sessions) = self
            .state
            .block_totals
            .get(provider)
            .map_or((0, 0, 0), |t| (t.earned_wei, t.tokens, t.sessions));
        if money::add(provider_wei, amount_wei).is_err() {
            return refuse(CreditSum::BlockWei);
        }
        if provider_tokens.checked_add(tokens).is_none() || provider_sessions == u32::MAX {
            return refuse(CreditSum::BlockCount);
        }
        Ok(())
    }

    /// R-PERF-1..3, R-REPORT-2: what the report earns (pure: the speed windows are
    /// updated by the caller once the report is accepted).
    fn judge_report(
        &self,
        session: &Session,
        timing: &Timing,
        outcome: ReportOutcome,
    ) -> CreditReason {
        let config = &self.state.config;
        match outcome {
            ReportOutcome::Void => return CreditReason::Void,
            ReportOutcome::Fail => {
                return match config.fail_policy {
                    FailPolicy::NoCredit => CreditReason::ReportedFail,
                    FailPolicy::BalanceWeighted => {
                        let user_balance = self.state.accounts[session.user as usize].balance_wei;
                        let provider_account =
                            self.state.providers[session.provider as usize].account;
                        let provider_balance =
                            self.state.accounts[provider_account as usize].balance_wei;
                        if user_balance > provider_balance || timing.tokens == 0 {
                            CreditReason::ReportedFail
                        } else {
                            CreditReason::EarnedDespiteFail
                        }
                    }
                };
            }
            ReportOutcome::Pass => {}
        }
        if timing.tokens == 0 {
            return CreditReason::ZeroTokens;
        }
        let model = &self.state.models[session.model as usize];
        match model.speed.judge(
            timing,
            config.speed_tolerance_percent,
            config.speed_reports_min,
        ) {
            Verdict::Fast => CreditReason::Earned,
            Verdict::SlowGeneration => CreditReason::TooSlow,
            Verdict::SlowFirstToken => CreditReason::TooSlowFirstToken,
        }
    }

    fn credit(
        &mut self,
        session: &Session,
        elapsed_ms: u64,
        tokens: u64,
        amount_wei: u128,
        report_digest: &[u8; 32],
    ) {
        let provider = &self.state.providers[session.provider as usize];
        let receipt = Receipt {
            session: session.id,
            user: self.state.accounts[session.user as usize].address,
            provider: provider.address,
            model: self.state.models[session.model as usize].spec.id,
            tokens,
            price_wei_per_token: session.price_wei_per_token,
            elapsed_ms,
            report_digest: *report_digest,
        };
        self.state.merkle.push_receipt(&receipt);
        let totals = self.state.block_totals.entry(session.provider);
        totals.provider = provider.address;
        // Checked by `check_credit_fits` before anything changed.
        totals.earned_wei = money::add(totals.earned_wei, amount_wei)
            .expect("provider block total checked before the report was accepted");
        self.state.block_earned_wei = money::add(self.state.block_earned_wei, amount_wei)
            .expect("block total checked before the report was accepted");
        // A bound for the fast path of `check_credit_fits` only: saturating merely
        // sends later reports of the block to the exact per-provider check.
        self.state.block_tokens = self.state.block_tokens.saturating_add(tokens as u128);
        totals.tokens = totals
            .tokens
            .checked_add(tokens)
            .expect("provider token total checked before the report was accepted");
        totals.sessions = totals
            .sessions
            .checked_add(1)
            .expect("provider session count checked before the report was accepted");
        self.state.counters.sessions_credited += 1;
        if amount_wei > 0 && !self.state.providers[session.provider as usize].bootstrap_slot {
            self.enroll_bootstrap(session.provider);
        }
    }

    /// R-CONTRACT-4: the first `bootstrap_providers_max` providers to earn a credited
    /// session (in the order of those sessions' reports) hold the bootstrap slots
    /// for the whole bootstrap period. Only a funded provider is ever matched
    /// (R-PROV-2), so neither unfunded nor idle registrations take a slot.
    fn enroll_bootstrap(&mut self, provider_idx: u32) {
        let config = &self.state.config;
        let ledger = &mut self.state.ledger;
        if self.state.block / crate::types::BLOCKS_PER_DAY >= config.bootstrap_days
            || ledger.bootstrap_providers.len() >= config.bootstrap_providers_max as usize
        {
            return;
        }
        let provider = &mut self.state.providers[provider_idx as usize];
        let inserted = ledger.bootstrap_providers.insert(provider.address);
        debug_assert!(inserted, "enrolled once");
        provider.bootstrap_slot = true;
        debug_assert!(ledger.bootstrap_providers.len() <= config.bootstrap_providers_max as usize);
    }

    /// R-PERF-4: too many penalty points among the recent reports suspend, when
    /// they come from at least `suspend_users_min` distinct users (so that no single
    /// user, nor a few, can suspend a provider). One user's points count at most
    /// ⌈`penalty_points_suspend` / `suspend_users_min`⌉ towards the threshold (issue
    /// 27, griefing over 10 s: otherwise one user may supply all points but
    /// `suspend_users_min - 1`, and two stray points of others complete its
    /// suspension). `penalty_from` is the user whose report earned a penalty point,
    /// `None` for a report without one.
    fn record_outcome(
        &mut self,
        provider_idx: u32,
        penalty_from: Option<AccountIdx>,
        now: u64,
        effects: &mut Vec<Effect>,
    ) {
        let (window, threshold, users_min, suspension_ms) = (
            self.state.config.penalty_window_reports,
            self.state.config.penalty_points_suspend,
            self.state.config.suspend_users_min,
            self.state.config.suspension_ms,
        );
        let provider = &mut self.state.providers[provider_idx as usize];
        provider.recent_penalties.push_back(penalty_from);
        while provider.recent_penalties.len() > window as usize {
            provider.recent_penalties.pop_front();
        }
        debug_assert!(provider.recent_penalties.len() <= window as usize);
        // The points are counted only when this report adds one: only then can
        // they reach the threshold. The window is at most 1,024 reports.
        if penalty_from.is_none() || threshold == 0 {
            return;
        }
        let mut users: Vec<AccountIdx> = provider
            .recent_penalties
            .iter()
            .flatten()
            .copied()
            .collect();
        if (users.len() as u32) < threshold {
            return;
        }
        users.sort_unstable();
        // Points per distinct user, each capped at its share of the threshold.
        let share_max = threshold.div_ceil(users_min.max(1));
        let (mut distinct, mut points) = (0u32, 0u32);
        for run in users.chunk_by(|a, b| a == b) {
            distinct += 1;
            points += (run.len() as u32).min(share_max);
        }
        debug_assert!(points <= users.len() as u32 && distinct <= points);
        if distinct < users_min || points < threshold {
            return;
        }
        provider.recent_penalties.clear();
        let until_ms = now.saturating_add(suspension_ms);
        provider.suspended_until_ms = until_ms;
        effects.push(Effect::ProviderSuspended {
            provider: provider.address,
            until_ms,
        });
        self.state.suspensions.insert((until_ms, provider_idx));
        self.refresh_provider(provider_idx);
    }
}
