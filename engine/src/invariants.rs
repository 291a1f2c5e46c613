//! Invariant checks, one named function each, called by the tests after every step
//! (STYLE.md section 2). They are O(state): never call them on the hot path.

use crate::engine::Engine;
use crate::quota;

impl Engine {
    /// Checks every invariant of the market's state (ledger solvency, capacity,
    /// quotas, books, matching, self-matching, unfunded registrations, user
    /// sessions, settlements); panics naming the first that fails. O(state).
    pub fn check_invariants(&self) {
        self.state.ledger.check_solvency();
        self.check_capacity();
        self.check_quota();
        self.check_book();
        self.check_matching();
        self.check_no_self_match();
        self.check_unfunded();
        self.check_user_sessions();
        // R-PERF-1 (issue 27): no user above its share of a speed window.
        for model in &self.state.models {
            model
                .speed
                .check(self.state.config.speed_window_user_reports_max);
        }
        self.state.settlement.check(
            self.state.block,
            self.state.config.settlement_epoch_blocks,
            &self.state.ledger,
        );
    }

    /// Open sessions + probes of each offer equal its `busy`, never above capacity.
    pub fn check_capacity(&self) {
        let mut busy = vec![Vec::new(); self.state.providers.len()];
        for (p, provider) in self.state.providers.iter().enumerate() {
            busy[p] = vec![0u32; provider.offers.len()];
            for offer in &provider.offers {
                assert!(
                    offer.busy <= offer.capacity,
                    "offer over capacity: {offer:?}"
                );
            }
        }
        for (_, session) in self.state.sessions.iter() {
            busy[session.provider as usize][session.offer as usize] += 1;
        }
        let mut probes = 0;
        for (_, rfc) in self.state.rfcs.iter() {
            if let Some(probing) = &rfc.probing {
                busy[probing.provider as usize][probing.offer as usize] += 1;
                probes += 1;
            }
        }
        assert_eq!(probes, self.state.probes_open, "probe count drifted");
        for (p, provider) in self.state.providers.iter().enumerate() {
            for (o, offer) in provider.offers.iter().enumerate() {
                assert_eq!(
                    offer.busy, busy[p][o],
                    "busy drifted for provider {p} offer {o}"
                );
            }
        }
    }

    /// R-SESSION-1: each user's count of open sessions and unanswered RFCs is the
    /// naive count and never above `user_sessions_open_max`; an unstarted session
    /// has its start deadline in the timer, a started one none, and the timer holds
    /// nothing else.
    pub fn check_user_sessions(&self) {
        let mut open = vec![0u32; self.state.accounts.len()];
        for (_, rfc) in self.state.rfcs.iter() {
            open[rfc.user as usize] += 1;
        }
        let mut unstarted = 0usize;
        for (_, session) in self.state.sessions.iter() {
            open[session.user as usize] += 1;
            let timed = self
                .state
                .session_starts
                .contains(session.start_deadline_ms, session.id);
            assert_eq!(timed, !session.started, "start timer wrong: {session:?}");
            unstarted += usize::from(!session.started);
        }
        assert_eq!(
            self.state.session_starts.len(),
            unstarted,
            "start timer holds closed sessions"
        );
        let max = self.state.config.user_sessions_open_max;
        for (account, &naive) in self.state.accounts.iter().zip(&open) {
            assert_eq!(
                account.sessions_open, naive,
                "sessions_open drifted: {account:?}"
            );
            assert!(
                naive <= max,
                "user over user_sessions_open_max: {account:?}"
            );
        }
    }

    /// Today's usage never above UserMax (balances only fall by operator update; the
    /// tests that check this raise balances only), and tokens left never negative.
    pub fn check_quota(&self) {
        let day = self.state.day();
        for account in &self.state.accounts {
            if account.quota_day != day {
                continue;
            }
            // The independent path: from B, P and S, not the cached rate.
            let user_max = quota::user_max_tokens(
                self.state.budget_wei_today,
                self.state.config.token_price_wei_per_1000,
                account.balance_wei,
                self.state.config.mor_supply_wei,
            );
            assert_eq!(
                user_max,
                self.user_max_rate.user_max_tokens(account.balance_wei),
                "cached UserMax rate drifted"
            );
            assert!(
                account.quota_used_tokens <= user_max,
                "quota used above UserMax: {account:?}"
            );
        }
    }

    /// Reference check of the book: an offer is in its model's book exactly when a
    /// naive scan says it can take a session; and matching is exhaustive (no model
    /// has both a queued RFC and an available offer while session room is left).
    pub fn check_matching(&self) {
        let now = self.state.now_ms;
        for (p, provider) in self.state.providers.iter().enumerate() {
            let balance = self.state.accounts[provider.account as usize].balance_wei;
            for (o, offer) in provider.offers.iter().enumerate() {
                let naive = offer.active
                    && provider.reachable
                    && provider.suspended_until_ms <= now
                    && balance > 0
                    && offer.busy < offer.capacity;
                assert_eq!(
                    offer.in_book, naive,
                    "book membership wrong for provider {p} offer {o}"
                );
                let listed = self.state.models[offer.model as usize]
                    .book
                    .get(&offer.book_key())
                    == Some(&(p as u32, o as u16));
                assert_eq!(listed, naive, "book entry wrong for provider {p} offer {o}");
            }
        }
        let room = (self.state.sessions.len() as u64 + self.state.probes_open as u64)
            < self.state.config.sessions_open_max as u64;
        for model in &self.state.models {
            if !room || model.book.is_empty() {
                continue;
            }
            // R-MATCH-7: a queued RFC may wait only for want of someone else's offer.
            for &slot in model.queue.values() {
                let user = self.state.rfcs.get(slot as usize).expect("queued RFC").user;
                let other = model
                    .book
                    .values()
                    .any(|&(p, _)| self.state.providers[p as usize].account != user);
                assert!(!other, "a possible match was left undone");
            }
        }
    }

    /// R-MATCH-7: no session, and no probe, pairs an address with itself; the queue
    /// owners index matches the queues.
    pub fn check_no_self_match(&self) {
        for (_, session) in self.state.sessions.iter() {
            let provider = &self.state.providers[session.provider as usize];
            assert_ne!(
                provider.account, session.user,
                "session with user = provider"
            );
        }
        for (_, rfc) in self.state.rfcs.iter() {
            if let Some(probing) = &rfc.probing {
                let provider = &self.state.providers[probing.provider as usize];
                assert_ne!(provider.account, rfc.user, "probe for the user's own offer");
            }
        }
        for (model, owners) in self.state.models.iter().zip(&self.queue_owners) {
            owners.check();
            let mut queued: Vec<_> = model
                .queue
                .iter()
                .map(|(&key, &slot)| {
                    (
                        self.state.rfcs.get(slot as usize).expect("queued").user,
                        key,
                    )
                })
                .collect();
            queued.sort_unstable();
            assert!(owners.entries().eq(queued), "queue owners drifted");
        }
    }

    /// R-PROV-2: unfunded registrations within their bound, none for an address that
    /// is a provider or holds MOR; R-CONTRACT-4: bootstrap slots within theirs.
    pub fn check_unfunded(&self) {
        let config = &self.state.config;
        self.state.unfunded.check(config.unfunded_registrations_max);
        for address in self.state.unfunded.addresses() {
            if let Some(idx) = self.account_of(address) {
                let account = &self.state.accounts[idx as usize];
                assert!(
                    account.provider.is_none(),
                    "unfunded registration of a provider"
                );
                assert_eq!(
                    account.balance_wei, 0,
                    "unfunded registration of a funded address"
                );
            }
        }
        assert!(
            self.state.providers.len() <= config.providers_max as usize,
            "providers above providers_max"
        );
        assert!(
            self.state.ledger.bootstrap_providers.len() <= config.bootstrap_providers_max as usize,
            "bootstrap slots above bootstrap_providers_max"
        );
        for provider in &self.state.providers {
            assert_eq!(
                provider.bootstrap_slot,
                self.state
                    .ledger
                    .bootstrap_providers
                    .contains(&provider.address),
                "bootstrap flag drifted for {}",
                provider.address
            );
        }
    }

    /// Every offer in a book is available, and every queued RFC is not probing.
    pub fn check_book(&self) {
        for model in &self.state.models {
            for &(provider, offer) in model.book.values() {
                let offer = &self.state.providers[provider as usize].offers[offer as usize];
                assert!(offer.in_book && offer.active && offer.busy < offer.capacity);
            }
            for &slot in model.queue.values() {
                let rfc = self
                    .state
                    .rfcs
                    .get(slot as usize)
                    .expect("queued RFC exists");
                assert!(rfc.probing.is_none());
            }
        }
    }
}
