//! Section 6, provider side: registration with the model-hash proof (R-PROV-1), bids
//! and capacity, reachability (R-MATCH-2), and keeping each offer's presence in its
//! model's book in step with whether it can take a session (R-MATCH-1, R-PROV-2).

use crate::command::{Effect, OfferSpec};
use crate::engine::Engine;
use crate::error::{Limit, MarketError};
use crate::state::{AccountIdx, Offer, Provider, ProviderIdx};
use crate::types::{Address, ModelId, Unit};
use crate::unfunded::UnfundedRegistration;
use std::collections::VecDeque;
use std::sync::Arc;

impl Engine {
    fn validate_offer(&self, spec: &OfferSpec) -> Result<u16, MarketError> {
        let model = self.model_of(spec.model)?;
        if Unit::from_u8(spec.unit) != Some(Unit::Token) {
            return Err(MarketError::UnsupportedUnit { unit: spec.unit });
        }
        if self.state.models[model as usize].spec.weights_hash != spec.weights_hash {
            return Err(MarketError::WeightsHashMismatch { model: spec.model });
        }
        self.validate_capacity(spec.capacity)?;
        self.validate_bid(spec.price_wei_per_token)?;
        Ok(model)
    }

    /// R-MONEY-1: a bid is at most `bid_wei_per_token_max`.
    fn validate_bid(&self, price_wei_per_token: u128) -> Result<(), MarketError> {
        let max = self.state.config.bid_wei_per_token_max;
        if price_wei_per_token > max {
            return Err(MarketError::BidAboveMax {
                bid_wei_per_token_max: max,
            });
        }
        Ok(())
    }

    fn validate_capacity(&self, capacity: u32) -> Result<(), MarketError> {
        if capacity == 0 || capacity > self.state.config.offer_capacity_max {
            return Err(MarketError::InvalidCapacity { capacity });
        }
        Ok(())
    }

    pub(crate) fn register_provider(
        &mut self,
        address: Address,
        nonce: u64,
        endpoint: &[u8],
        offers: &[OfferSpec],
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let config = &self.state.config;
        if endpoint.len() > config.endpoint_bytes_max as usize {
            return Err(MarketError::LimitReached {
                limit: Limit::EndpointBytes,
                max: config.endpoint_bytes_max as u64,
            });
        }
        if offers.len() > config.offers_per_provider_max as usize {
            return Err(MarketError::LimitReached {
                limit: Limit::OffersPerProvider,
                max: config.offers_per_provider_max as u64,
            });
        }
        let mut models = Vec::with_capacity(offers.len());
        for spec in offers {
            let model = self.validate_offer(spec)?;
            if models.contains(&model) {
                return Err(MarketError::DuplicateModel { model: spec.model });
            }
            models.push(model);
        }
        let account = self.account_of(&address);
        let existing = account.and_then(|a| self.state.accounts[a as usize].provider);
        if let Some(p) = existing {
            // Capacity may not drop below what is in use (open sessions + probes).
            for (spec, &model) in offers.iter().zip(&models) {
                if let Some(offer) = self.state.providers[p as usize]
                    .offers
                    .iter()
                    .find(|o| o.model == model)
                {
                    if spec.capacity < offer.busy {
                        return Err(MarketError::InvalidCapacity {
                            capacity: spec.capacity,
                        });
                    }
                }
            }
        } else if account.is_none_or(|a| self.state.accounts[a as usize].balance_wei == 0) {
            // R-PROV-2: no MOR, no place: kept apart, bounded, and told so.
            self.keep_unfunded(address, nonce, endpoint, offers);
            effects.push(Effect::Done { to: address, nonce });
            effects.push(Effect::ProviderUnfunded { provider: address });
            return Ok(());
        } else if self.state.providers.len() >= self.state.config.providers_max as usize {
            return Err(MarketError::LimitReached {
                limit: Limit::Providers,
                max: self.state.config.providers_max as u64,
            });
        }
        let account = self.account_or_create(address)?;
        let provider_idx = match existing {
            Some(p) => p,
            None => self.new_provider(account, address),
        };
        // A funded address holds no unfunded registration (promoted when funded).
        debug_assert!(self.state.unfunded.get(&address).is_none());
        self.set_registration(provider_idx, endpoint, offers, &models);
        effects.push(Effect::Done { to: address, nonce });
        if self.state.accounts[account as usize].balance_wei == 0 {
            // R-PROV-2: a provider whose balance fell to zero keeps its place (it had
            // MOR when it took it) but waits for matches that never come until funded.
            effects.push(Effect::ProviderUnfunded { provider: address });
        }
        Ok(())
    }

    /// Applies a registration to a provider: endpoint, reachable, offers (those not
    /// listed again are withdrawn), and book membership.
    fn set_registration(
        &mut self,
        provider_idx: ProviderIdx,
        endpoint: &[u8],
        offers: &[OfferSpec],
        models: &[u16],
    ) {
        debug_assert_eq!(offers.len(), models.len());
        self.state.providers[provider_idx as usize].endpoint = endpoint.into();
        self.state.providers[provider_idx as usize].reachable = true;
        for offer in &mut self.state.providers[provider_idx as usize].offers {
            if !models.contains(&offer.model) {
                offer.active = false; // offers not listed again are withdrawn
            }
        }
        for (spec, &model) in offers.iter().zip(models) {
            self.upsert_offer(provider_idx, model, spec.price_wei_per_token, spec.capacity);
        }
        self.refresh_provider(provider_idx);
    }

    /// R-PROV-2: keeps a validated registration from an address without MOR in the
    /// bounded set of its own (the oldest evicted first).
    fn keep_unfunded(
        &mut self,
        address: Address,
        nonce: u64,
        endpoint: &[u8],
        offers: &[OfferSpec],
    ) {
        let seq = self.state.next_seq();
        let config = &self.state.config;
        let registration = UnfundedRegistration {
            nonce_last: nonce,
            endpoint: endpoint.to_vec(),
            offers: offers.to_vec(),
            seq,
            expires_at_ms: self
                .state
                .now_ms
                .saturating_add(config.unfunded_registration_ttl_ms),
        };
        let max = config.unfunded_registrations_max;
        self.state.unfunded.keep(address, registration, max);
        debug_assert!(self.state.unfunded.len() <= max as usize);
    }

    /// R-PROV-2: the operator funded `account`: an unfunded registration of its
    /// address takes a real place now, if `providers_max` has room (its offers get
    /// the bid times of this moment); else it is dropped, and the provider's next
    /// registration is refused `limit_reached` as any other would be. The account's
    /// nonce continues from the registration's (R-ID-4).
    pub(crate) fn promote_unfunded(&mut self, account: AccountIdx) {
        let address = self.state.accounts[account as usize].address;
        debug_assert!(self.state.accounts[account as usize].balance_wei > 0);
        let Some(registration) = self.state.unfunded.remove(&address) else {
            return;
        };
        let nonce_last = &mut self.state.accounts[account as usize].nonce_last;
        *nonce_last = Some(nonce_last.unwrap_or(0).max(registration.nonce_last));
        if self.state.accounts[account as usize].provider.is_some()
            || self.state.providers.len() >= self.state.config.providers_max as usize
        {
            return;
        }
        // Validated when kept; the catalog and the bounds cannot have changed since
        // except `bid_wei_per_token_max`, which SetParams keeps above live offers
        // only: check the offers again rather than admit one above the bound.
        let mut models = Vec::with_capacity(registration.offers.len());
        for spec in &registration.offers {
            match self.validate_offer(spec) {
                Ok(model) => models.push(model),
                Err(_) => return,
            }
        }
        let provider_idx = self.new_provider(account, address);
        self.set_registration(
            provider_idx,
            &registration.endpoint,
            &registration.offers,
            &models,
        );
    }

    fn new_provider(&mut self, account: u32, address: Address) -> ProviderIdx {
        let idx = self.state.providers.len() as ProviderIdx;
        self.state.providers.push(Provider {
            account,
            address,
            endpoint: Arc::from(&[][..]),
            reachable: true,
            suspended_until_ms: 0,
            offers: Vec::new(),
            recent_penalties: VecDeque::new(),
            bootstrap_slot: false,
        });
        self.state.accounts[account as usize].provider = Some(idx);
        // R-CONTRACT-4: bootstrap slots go by first credited session (flow.rs), not
        // by registration, so that idle registrations take none.
        idx
    }

    /// Sets an offer's price and capacity (R-MATCH-1): a new price takes a new time,
    /// and so does bidding again after a withdrawal (a cancel and a new order); an
    /// active offer bid again at its price keeps its time.
    fn upsert_offer(&mut self, provider: ProviderIdx, model: u16, price: u128, capacity: u32) {
        let position = self.state.providers[provider as usize]
            .offers
            .iter()
            .position(|o| o.model == model);
        let offer_idx = match position {
            Some(i) => i as u16,
            None => {
                let seq = self.state.next_seq();
                let offers = &mut self.state.providers[provider as usize].offers;
                offers.push(Offer {
                    model,
                    price_wei_per_token: price,
                    capacity,
                    busy: 0,
                    bid_seq: seq,
                    active: true,
                    in_book: false,
                });
                (offers.len() - 1) as u16
            }
        };
        let current = &self.state.providers[provider as usize].offers[offer_idx as usize];
        let new_time = current.price_wei_per_token != price || !current.active;
        if position.is_some() && new_time {
            self.take_out_of_book(provider, offer_idx);
            let seq = self.state.next_seq();
            let offer = &mut self.state.providers[provider as usize].offers[offer_idx as usize];
            offer.price_wei_per_token = price;
            offer.bid_seq = seq;
        }
        let offer = &mut self.state.providers[provider as usize].offers[offer_idx as usize];
        debug_assert!(capacity >= offer.busy);
        offer.capacity = capacity;
        offer.active = true;
    }

    fn provider_of(&self, address: &Address) -> Result<ProviderIdx, MarketError> {
        self.account_of(address)
            .and_then(|a| self.state.accounts[a as usize].provider)
            .ok_or(MarketError::UnknownProvider)
    }

    fn offer_of(&self, provider: ProviderIdx, model: ModelId) -> Result<u16, MarketError> {
        let model_idx = self.model_of(model)?;
        let offers = &self.state.providers[provider as usize].offers;
        offers
            .iter()
            .position(|o| o.model == model_idx)
            .map(|i| i as u16)
            .ok_or(MarketError::NoOffer { model })
    }

    pub(crate) fn update_bid(
        &mut self,
        address: Address,
        nonce: u64,
        model: ModelId,
        price: u128,
        capacity: u32,
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let provider = self.provider_of(&address)?;
        let offer = self.offer_of(provider, model)?;
        self.validate_capacity(capacity)?;
        self.validate_bid(price)?;
        if capacity < self.state.providers[provider as usize].offers[offer as usize].busy {
            return Err(MarketError::InvalidCapacity { capacity });
        }
        let model_idx = self.state.providers[provider as usize].offers[offer as usize].model;
        self.upsert_offer(provider, model_idx, price, capacity);
        self.refresh_offer(provider, offer);
        effects.push(Effect::Done { to: address, nonce });
        Ok(())
    }

    pub(crate) fn withdraw_bid(
        &mut self,
        address: Address,
        nonce: u64,
        model: ModelId,
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let provider = self.provider_of(&address)?;
        let offer = self.offer_of(provider, model)?;
        self.state.providers[provider as usize].offers[offer as usize].active = false;
        self.refresh_offer(provider, offer);
        effects.push(Effect::Done { to: address, nonce });
        Ok(())
    }

    pub(crate) fn announce(
        &mut self,
        address: Address,
        nonce: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<(), MarketError> {
        let provider = self.provider_of(&address)?;
        self.state.providers[provider as usize].reachable = true;
        self.refresh_provider(provider);
        effects.push(Effect::Done { to: address, nonce });
        Ok(())
    }

    pub(crate) fn disconnected(&mut self, address: Address) {
        if let Ok(provider) = self.provider_of(&address) {
            self.state.providers[provider as usize].reachable = false;
            self.refresh_provider(provider);
        } else {
            // R-PROV-2: a provider is reachable only through a connection; it
            // registers again when it reconnects.
            self.state.unfunded.remove(&address);
        }
    }

    /// `Command::RouterStarted` (R-ID-6, R-MATCH-2): no provider holds a connection
    /// to a process that just started, so none is reachable; probes in flight went to
    /// connections of the old process and end now, as timeouts (their RFCs go back to
    /// their queue, keeping their place, or fail when out of tries or expired).
    pub(crate) fn router_started(&mut self, now: u64, effects: &mut Vec<Effect>) {
        for provider in 0..self.state.providers.len() {
            self.state.providers[provider].reachable = false;
            self.refresh_provider(provider as ProviderIdx);
        }
        for (deadline_ms, rfc) in self.state.probe_deadlines.sorted() {
            let removed = self.state.probe_deadlines.remove(deadline_ms, rfc);
            debug_assert!(removed);
            self.probe_timeout(rfc, now, effects);
        }
        debug_assert_eq!(self.state.probes_open, 0, "every probe ended");
        debug_assert!(self.state.models.iter().all(|m| m.book.is_empty()));
    }

    pub(crate) fn refresh_provider(&mut self, provider: ProviderIdx) {
        for offer in 0..self.state.providers[provider as usize].offers.len() {
            self.refresh_offer(provider, offer as u16);
        }
    }

    /// Puts the offer in its model's book exactly when it can take a session now.
    pub(crate) fn refresh_offer(&mut self, provider_idx: ProviderIdx, offer_idx: u16) {
        let now = self.state.now_ms;
        let provider = &self.state.providers[provider_idx as usize];
        let balance = self.state.accounts[provider.account as usize].balance_wei;
        let offer = &provider.offers[offer_idx as usize];
        let available = offer.active
            && provider.reachable
            && provider.suspended_until_ms <= now
            && balance > 0 // R-PROV-2
            && offer.busy < offer.capacity;
        if available == offer.in_book {
            return;
        }
        let (model, key) = (offer.model, offer.book_key());
        let book = &mut self.state.models[model as usize].book;
        if available {
            let previous = book.insert(key, (provider_idx, offer_idx));
            debug_assert!(previous.is_none(), "book keys are unique");
            self.pending_match.push(model);
        } else {
            book.remove(&key);
        }
        self.state.providers[provider_idx as usize].offers[offer_idx as usize].in_book = available;
    }

    fn take_out_of_book(&mut self, provider_idx: ProviderIdx, offer_idx: u16) {
        let offer = &mut self.state.providers[provider_idx as usize].offers[offer_idx as usize];
        if offer.in_book {
            offer.in_book = false;
            let (model, key) = (offer.model, offer.book_key());
            self.state.models[model as usize].book.remove(&key);
        }
    }
}
