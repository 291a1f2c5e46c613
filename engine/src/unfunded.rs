//! R-PROV-2: registrations from providers without a MOR balance, kept apart from the
//! providers. A registration from an address that holds no MOR (and is not a
//! provider yet) is accepted with a notice and kept here: at most
//! `unfunded_registrations_max` of them (the oldest is evicted to make room), each
//! for at most `unfunded_registration_ttl_ms`. They take no provider place (so they
//! never count toward `providers_max`), no account (so they never count toward
//! `accounts_max`) and no bootstrap slot (R-CONTRACT-4), and are never matched.
//!
//! When the operator funds such an address, its registration takes a real place at
//! once if `providers_max` has room (its offers' bid times are those of that moment),
//! as if the provider had registered then; otherwise it is dropped. A registration
//! whose connection closes (`ProviderDisconnected`) is dropped too: a provider is
//! reachable only through a connection, and it registers again when it reconnects.

use crate::command::OfferSpec;
use crate::types::Address;
use bincode::{Decode, Encode};
use std::collections::BTreeMap;

/// One unfunded registration: what a promotion needs, and the address's last nonce
/// (R-ID-4: the address holds no account that could track it).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct UnfundedRegistration {
    /// The last nonce accepted from the address (R-ID-4, R-ID-8).
    pub nonce_last: u64,
    /// The endpoint users would reach it at (bytes, at most `endpoint_bytes_max`).
    pub endpoint: Vec<u8>,
    /// Validated against the catalog and the bid and capacity bounds.
    pub offers: Vec<OfferSpec>,
    /// Arrival order (the engine's sequence), for eviction oldest first.
    pub seq: u64,
    /// Unix ms after which it is dropped (`unfunded_registration_ttl_ms` after arrival).
    pub expires_at_ms: u64,
}

/// The bounded set. Since the TTL is fixed for the life of a market, arrival order is
/// also expiry order: one ordered index serves eviction and expiry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct UnfundedRegistrations {
    by_address: BTreeMap<Address, UnfundedRegistration>,
    /// seq -> address, oldest first.
    by_age: BTreeMap<u64, Address>,
}

impl UnfundedRegistrations {
    /// Registrations kept (at most `unfunded_registrations_max`).
    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }

    /// The registration of `address`, if one is kept.
    pub fn get(&self, address: &Address) -> Option<&UnfundedRegistration> {
        self.by_address.get(address)
    }

    /// Keeps `registration` for `address` (replacing its previous one, which it
    /// makes newest), evicting the oldest while more than `max` are kept. Returns
    /// how many were evicted.
    pub fn keep(&mut self, address: Address, registration: UnfundedRegistration, max: u32) -> u32 {
        debug_assert!(max > 0);
        self.remove(&address);
        self.by_age.insert(registration.seq, address);
        self.by_address.insert(address, registration);
        let mut evicted = 0;
        while self.by_address.len() > max as usize {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.by_address.remove(&oldest);
            evicted += 1;
        }
        debug_assert!(self.by_address.len() <= max as usize);
        debug_assert_eq!(self.by_address.len(), self.by_age.len());
        evicted
    }

    /// Drops the registration of `address` (promoted, or replaced), returning it.
    pub fn remove(&mut self, address: &Address) -> Option<UnfundedRegistration> {
        let registration = self.by_address.remove(address)?;
        let removed = self.by_age.remove(&registration.seq);
        debug_assert_eq!(removed, Some(*address));
        Some(registration)
    }

    /// Whether [`UnfundedRegistrations::expire`] would drop anything at `now_ms`: the
    /// oldest registration expires first (expiry follows arrival, see `check`).
    pub fn has_due(&self, now_ms: u64) -> bool {
        self.by_age
            .first_key_value()
            .and_then(|(_, address)| self.by_address.get(address))
            .is_some_and(|oldest| oldest.expires_at_ms <= now_ms)
    }

    /// Drops the registrations expired at `now_ms`; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut dropped = 0;
        while let Some((_, address)) = self.by_age.first_key_value() {
            let address = *address;
            let expired = self
                .by_address
                .get(&address)
                .is_none_or(|r| r.expires_at_ms <= now_ms);
            if !expired {
                break;
            }
            self.by_age.pop_first();
            self.by_address.remove(&address);
            dropped += 1;
        }
        dropped
    }

    /// R-ID-4: records an accepted nonce of an address with a registration here.
    pub fn spend_nonce(&mut self, address: &Address, nonce: u64) {
        if let Some(registration) = self.by_address.get_mut(address) {
            debug_assert!(registration.nonce_last <= nonce);
            registration.nonce_last = nonce;
        }
    }

    /// At most `max` kept, the two indexes agree, and expiry follows arrival.
    pub fn check(&self, max: u32) {
        assert!(
            self.by_address.len() <= max as usize,
            "unfunded registrations above their bound: {} > {max}",
            self.by_address.len()
        );
        assert_eq!(self.by_address.len(), self.by_age.len());
        let mut last_expiry = 0;
        for (seq, address) in &self.by_age {
            let registration = &self.by_address[address];
            assert_eq!(registration.seq, *seq, "age index drifted for {address}");
            assert!(
                registration.expires_at_ms >= last_expiry,
                "expiry out of age order"
            );
            last_expiry = registration.expires_at_ms;
        }
    }

    /// The addresses holding a registration, in address order.
    pub fn addresses(&self) -> impl Iterator<Item = &Address> + '_ {
        self.by_address.keys()
    }
}
