//! The reply cache (SPEC §12, R-HA-3; issue 25): per address, the answers to its last
//! accepted signed messages, so that a client that lost its connection before the
//! answer (a failover, or a single router's dropped socket) can send the **same**
//! signed message again and get the **original** answer, never a second effect.
//!
//! - Keyed by (address, nonce) and a fingerprint of the command the message asks for,
//!   so only the same message gets the cached answer; a different message reusing the
//!   nonce is refused `replay` as before. The fingerprint is the command itself when it
//!   holds no heap data (RFCs, reports, probe answers, starts, bids, claims: compared
//!   exactly, and copied in a few nanoseconds on the engine thread), else a 16-byte
//!   BLAKE3 [`CommandDigest`] of its encoding (registrations, operator updates).
//! - Fed by [`ReplyCache::observe`] with what the engine applied (command, effects):
//!   on a leader by the gateway's sink when it delivers a command's answer (its record
//!   durable), on every replicated member from the committed journal
//!   (`ApplyObserver::applied`), so a new leader holds the same cache; a member's
//!   snapshots carry it ([`ReplyCache::export`], [`ReplyCache::import`]), so one that
//!   caught up by a snapshot holds it too. Pure: no clock, no IO; the same applied
//!   commands build the same cache.
//! - Stores the unsigned answers (`Message`s as router-core's `delivery_of` builds
//!   them), not signed frames: a session ticket is signed again on lookup, and RFC 6979
//!   makes that signature, hence the frame, byte-identical. A ticket (or `RfcFailed`)
//!   that a later command produces for an RFC is added to the RFC's entry, under the
//!   RFC's nonce.
//! - Refused messages are not cached: their nonce is not spent (R-ID-4, R-OPS-4), so
//!   a resend is simply evaluated again.
//! - Bounded: at most `per_address` entries per address (its most recent) and
//!   `entries_max` in all, the oldest evicted first (config keys
//!   `network.reply_cache_per_address`, `network.reply_cache_entries_max`).
//!
//! Thread safety: one writer (the engine thread, or a member's state machine) and
//! readers on the gateway threads, only for messages whose nonce is already spent
//! (rare): one mutex, held for a map update per command (tens of nanoseconds).

use crate::dispatch::{delivery_of, Delivery};
use crate::{report, to_wire};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use yellowstone_engine::settlement::SettlementRecord;
use yellowstone_engine::{Command, Effect};
use yellowstone_wire::messages::Message;
use yellowstone_wire::Address;

/// The first 16 bytes of BLAKE3 over the command's canonical (bincode) encoding: two
/// messages with the same nonce ask for the same thing iff their digests agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CommandDigest(pub [u8; 16]);

/// What identifies an accepted command in the cache (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fingerprint {
    /// A command without heap data, kept whole.
    Command(Command),
    /// The digest of one with heap data (a registration's offers, an operator's list).
    Digest(CommandDigest),
}

impl Fingerprint {
    fn of(command: &Command) -> Fingerprint {
        match command {
            Command::SetBalances { .. }
            | Command::SetParams { .. }
            | Command::RegisterProvider { .. }
            | Command::ChainPaid { .. }
            | Command::LoadBalanceSnapshot { .. } => {
                Fingerprint::Digest(CommandDigest::of(command))
            }
            _ => Fingerprint::Command(command.clone()),
        }
    }

    fn matches(&self, command: &Command) -> bool {
        match self {
            Fingerprint::Command(kept) => kept == command,
            Fingerprint::Digest(digest) => *digest == CommandDigest::of(command),
        }
    }
}

impl CommandDigest {
    /// The digest of `command`.
    pub fn of(command: &Command) -> CommandDigest {
        let mut hasher = blake3::Hasher::new();
        // Encoding a command into a hasher cannot fail (no size limit, infallible
        // writer); a failure would only make a resend miss the cache (then `replay`).
        let _ = bincode::encode_into_std_write(command, &mut hasher, bincode::config::standard());
        let mut out = [0u8; 16];
        out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        CommandDigest(out)
    }
}

/// The bounds of a [`ReplyCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyCacheConfig {
    /// Entries kept per address, its most recent (`network.reply_cache_per_address`).
    pub per_address: usize,
    /// Entries kept in all, the oldest evicted first
    /// (`network.reply_cache_entries_max`).
    pub entries_max: usize,
}

/// One cached answer.
#[derive(Clone, Debug)]
struct Entry {
    nonce: u64,
    fingerprint: Fingerprint,
    /// Insertion stamp: the global order of entries (eviction oldest first).
    stamp: u64,
    /// The unsigned answers, in the order first sent.
    replies: Vec<Message>,
}

#[derive(Debug, Default)]
struct Inner {
    by_address: HashMap<Address, VecDeque<Entry>>,
    /// (address, stamp) in insertion order; a record whose entry left by the
    /// per-address bound is stale and skipped (compacted when it doubles).
    order: VecDeque<(Address, u64)>,
    len: usize,
    next_stamp: u64,
}

/// The per-address reply cache (see the module docs). Share it as an `Arc`.
#[derive(Debug)]
pub struct ReplyCache {
    config: ReplyCacheConfig,
    /// R-HA-2: the newest sealed batch and settlement, fed by the same `observe`
    /// (every place that feeds the cache feeds it: a leader's sink, a member's state
    /// machine, a single router's replay at start).
    newest_sealed: crate::sealed::NewestSealed,
    inner: Mutex<Inner>,
    /// `inner.len` as of the last change, read without the lock (a metric per command).
    held: std::sync::atomic::AtomicUsize,
}

impl ReplyCache {
    /// An empty cache. A bound of 0 is taken as 1 (the config's validation refuses 0
    /// with the key's name; this only keeps a caller that skipped it from panicking).
    pub fn new(config: ReplyCacheConfig) -> ReplyCache {
        ReplyCache {
            config: ReplyCacheConfig {
                per_address: config.per_address.max(1),
                entries_max: config.entries_max.max(1),
            },
            inner: Mutex::new(Inner::default()),
            held: std::sync::atomic::AtomicUsize::new(0),
            newest_sealed: crate::sealed::NewestSealed::new(),
        }
    }

    /// The newest sealed credit batch and settlement (R-HA-2: sent to a subscriber
    /// at once, so that one sealed while it was away is no gap).
    pub fn newest_sealed(&self) -> crate::sealed::Sealed {
        self.newest_sealed.get()
    }

    /// Its bounds.
    pub fn config(&self) -> ReplyCacheConfig {
        self.config
    }

    /// Entries held now (at most `entries_max`).
    pub fn len(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every update is
        // complete before it is visible to the next lock): keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what the engine applied: `command`'s answers to its sender when the
    /// engine accepted it (no refusal of its own nonce), and any ticket or `RfcFailed`
    /// `effects` carry for an RFC cached earlier (under that RFC's nonce).
    pub fn observe(&self, command: &Command, effects: &[Effect]) {
        self.newest_sealed.observe(command, effects);
        let origin = command.origin().filter(|(address, nonce)| {
            !effects.iter().any(|effect| {
                matches!(effect, Effect::Rejected { to, nonce: n, .. } if to == address && n == nonce)
            })
        });
        let mut own = Vec::new();
        let mut later: Vec<(Address, u64, Message)> = Vec::new();
        let origin_wire = origin.map(|(address, nonce)| (to_wire(address), nonce));
        for effect in effects {
            // Only a sender's own answers, tickets and failures are kept: nothing else
            // is built (a block's batch, say, on the engine thread for nothing).
            let wanted = origin.is_some()
                || matches!(
                    effect,
                    Effect::SessionOpened { .. } | Effect::RfcFailed { .. }
                );
            if !wanted {
                continue;
            }
            match delivery_of(command, effect) {
                Delivery::Reply(_, message) if origin.is_some() => own.push(message),
                Delivery::Ticket {
                    provider,
                    user,
                    message,
                } => {
                    let rfc_nonce = match &message {
                        Message::SessionTicket(ticket) => ticket.rfc_nonce,
                        _ => continue,
                    };
                    // The sender's own answer when it is one of the ticket's sides.
                    if let Some((sender, _)) = origin_wire {
                        if sender == provider || sender == user {
                            own.push(message.clone());
                        }
                    }
                    if origin_wire != Some((user, rfc_nonce)) {
                        later.push((user, rfc_nonce, message));
                    }
                }
                Delivery::Push(_, message @ Message::RfcFailed(_)) => {
                    if let (Message::RfcFailed(failed), Some(user)) =
                        (&message, rfc_failed_user(effect))
                    {
                        if origin_wire != Some((user, failed.nonce)) {
                            later.push((user, failed.nonce, message));
                        }
                    }
                }
                _ => {}
            }
        }
        if origin.is_none() && later.is_empty() {
            return;
        }
        let fingerprint = origin.map(|_| Fingerprint::of(command));
        let mut inner = self.lock();
        if let (Some((address, nonce)), Some(fingerprint)) = (origin_wire, fingerprint) {
            inner.insert(self.config, address, nonce, fingerprint, own);
        }
        for (user, nonce, message) in later {
            if let Some(entry) = inner
                .by_address
                .get_mut(&user)
                .and_then(|entries| entries.iter_mut().rev().find(|e| e.nonce == nonce))
            {
                // Idempotent: a leader's cache is fed twice (its sink on delivery, its
                // state machine on commit, R-HA-3).
                if !entry.replies.contains(&message) {
                    entry.replies.push(message);
                }
            }
        }
        self.held
            .store(inner.len, std::sync::atomic::Ordering::Relaxed);
    }

    /// The answers first sent to `address`'s message `nonce` asking for `command`, if
    /// cached (a ticket among them unsigned: sign it with the router key). `None` when
    /// the entry is gone or another message used the nonce.
    pub fn lookup(&self, address: &Address, nonce: u64, command: &Command) -> Option<Vec<Message>> {
        let inner = self.lock();
        let entries = inner.by_address.get(address)?;
        entries
            .iter()
            .rev()
            .find(|e| e.nonce == nonce)
            .filter(|e| e.fingerprint.matches(command))
            .map(|e| e.replies.clone())
    }
}

/// Why a reply cache carried in a snapshot does not load (R-HA-3).
#[derive(Debug, thiserror::Error)]
pub enum ReplyCacheImportError {
    /// The bytes are no cache export.
    #[error("reply cache in the snapshot does not decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// A cached answer is no message of the protocol.
    #[error("reply cache in the snapshot holds an answer of type {msg_type:#06x} that does not decode: {source}")]
    Message {
        /// The answer's type code.
        msg_type: u16,
        /// Why its body does not decode.
        source: yellowstone_wire::DecodeError,
    },
}

/// A cached answer as exported: its type code and body.
type ExportedMessage = (u16, Vec<u8>);

/// One entry as exported (`Fingerprint` spelt out).
#[derive(bincode::Encode, bincode::Decode)]
struct ExportedEntry {
    address: [u8; 20],
    nonce: u64,
    command: Option<Command>,
    digest: Option<[u8; 16]>,
    replies: Vec<ExportedMessage>,
}

/// The whole cache as exported: entries oldest first, and the newest sealed batch
/// and settlement.
#[derive(bincode::Encode, bincode::Decode)]
struct Exported {
    entries: Vec<ExportedEntry>,
    sealed_batch: Option<ExportedMessage>,
    sealed_settlement: Option<(SettlementRecord, u64, yellowstone_engine::Address)>,
}

fn export_message(message: &Message) -> ExportedMessage {
    let mut body = Vec::new();
    message.encode(&mut body);
    (message.msg_type(), body)
}

fn import_message((msg_type, body): &ExportedMessage) -> Result<Message, ReplyCacheImportError> {
    Message::decode(*msg_type, body).map_err(|source| ReplyCacheImportError::Message {
        msg_type: *msg_type,
        source,
    })
}

impl ReplyCache {
    /// The cache's contents as bytes (R-HA-3): a replicated member puts them in each
    /// snapshot it builds, so that a member installing it (or restarting from it)
    /// answers a resend of a command the snapshot covers with the original answer
    /// rather than `replay`. The same applied commands give the same bytes.
    pub fn export(&self) -> Vec<u8> {
        let inner = self.lock();
        let mut entries: Vec<(u64, ExportedEntry)> = Vec::with_capacity(inner.len);
        for (address, held) in &inner.by_address {
            for entry in held {
                let (command, digest) = match &entry.fingerprint {
                    Fingerprint::Command(command) => (Some(command.clone()), None),
                    Fingerprint::Digest(digest) => (None, Some(digest.0)),
                };
                entries.push((
                    entry.stamp,
                    ExportedEntry {
                        address: address.0,
                        nonce: entry.nonce,
                        command,
                        digest,
                        replies: entry.replies.iter().map(export_message).collect(),
                    },
                ));
            }
        }
        drop(inner);
        // Insertion order: importing in it rebuilds the same eviction order.
        entries.sort_by_key(|(stamp, _)| *stamp);
        let sealed = self.newest_sealed.get();
        let exported = Exported {
            entries: entries.into_iter().map(|(_, entry)| entry).collect(),
            sealed_batch: sealed.batch.as_ref().map(export_message),
            sealed_settlement: sealed
                .settlement
                .map(|s| (s.settlement, s.chain_id, s.contract)),
        };
        // Encoding into a vector cannot fail (no size limit).
        bincode::encode_to_vec(&exported, bincode::config::standard()).unwrap_or_default()
    }

    /// Replaces the contents with an [`export`](Self::export) (a snapshot installed or
    /// opened, R-HA-3), within this cache's bounds (the oldest entries evicted first).
    /// Empty bytes (a snapshot built where no cache is kept) change nothing.
    /// Errors: the bytes, or an answer in them, do not decode; the cache is unchanged.
    pub fn import(&self, bytes: &[u8]) -> Result<(), ReplyCacheImportError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (exported, _): (Exported, usize) =
            bincode::decode_from_slice(bytes, bincode::config::standard())?;
        let mut fresh = Inner::default();
        for entry in exported.entries {
            let fingerprint = match (entry.command, entry.digest) {
                (Some(command), _) => Fingerprint::Command(command),
                (None, Some(digest)) => Fingerprint::Digest(CommandDigest(digest)),
                (None, None) => continue,
            };
            let replies = entry
                .replies
                .iter()
                .map(import_message)
                .collect::<Result<Vec<_>, _>>()?;
            fresh.insert(
                self.config,
                Address(entry.address),
                entry.nonce,
                fingerprint,
                replies,
            );
        }
        let sealed = crate::sealed::Sealed {
            batch: exported
                .sealed_batch
                .as_ref()
                .map(import_message)
                .transpose()?,
            settlement: exported
                .sealed_settlement
                .map(
                    |(settlement, chain_id, contract)| crate::sealed::SealedSettlement {
                        settlement,
                        chain_id,
                        contract,
                    },
                ),
        };
        let mut inner = self.lock();
        *inner = fresh;
        self.held
            .store(inner.len, std::sync::atomic::Ordering::Relaxed);
        drop(inner);
        self.newest_sealed.replace(sealed);
        Ok(())
    }
}

/// The user an `RfcFailed` effect goes to.
fn rfc_failed_user(effect: &Effect) -> Option<Address> {
    match effect {
        Effect::RfcFailed { user, .. } => Some(to_wire(*user)),
        _ => None,
    }
}

impl Inner {
    fn insert(
        &mut self,
        config: ReplyCacheConfig,
        address: Address,
        nonce: u64,
        fingerprint: Fingerprint,
        replies: Vec<Message>,
    ) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let entries = self.by_address.entry(address).or_default();
        // Observed again (a leader's sink and its state machine both feed the cache,
        // a replica replays its journal): the entry stays as it is, with whatever
        // later answers joined it. Another command under the nonce replaces it.
        // Nonces grow per address (R-ID-4): a nonce above the newest entry's is new,
        // without a scan.
        let fresh = entries.back().is_none_or(|e| e.nonce < nonce);
        if !fresh {
            if let Some(at) = entries.iter().rposition(|e| e.nonce == nonce) {
                if entries[at].fingerprint == fingerprint {
                    return;
                }
                entries.remove(at);
                self.len -= 1;
            }
        }
        entries.push_back(Entry {
            nonce,
            fingerprint,
            stamp,
            replies,
        });
        self.len += 1;
        if entries.len() > config.per_address {
            entries.pop_front();
            self.len -= 1;
        }
        self.order.push_back((address, stamp));
        while self.len > config.entries_max {
            let Some((oldest, stamp)) = self.order.pop_front() else {
                break;
            };
            let Some(entries) = self.by_address.get_mut(&oldest) else {
                continue;
            };
            // Stale when that entry already left by the per-address bound.
            if entries.front().is_some_and(|e| e.stamp == stamp) {
                entries.pop_front();
                self.len -= 1;
            }
            if entries.is_empty() {
                self.by_address.remove(&oldest);
            }
        }
        if self.order.len() > 2 * config.entries_max.max(self.len) + 64 {
            self.compact();
        }
        debug_assert!(self.len <= config.entries_max);
        debug_assert!(self
            .by_address
            .get(&address)
            .is_none_or(|e| e.len() <= config.per_address));
    }

    /// Drops the stale records of `order` (those whose entry is gone).
    fn compact(&mut self) {
        let by_address = &self.by_address;
        self.order.retain(|(address, stamp)| {
            by_address
                .get(address)
                .is_some_and(|entries| entries.iter().any(|e| e.stamp == *stamp))
        });
        debug_assert_eq!(self.order.len(), self.len);
    }
}

/// The command a client message asks for, as the gateway's admission would map it,
/// without any check (the message's signature, bounds and proofs are not verified
/// here): the input of [`CommandDigest::of`] for a resend, whose nonce is already
/// spent. `None` for a message that asks for no command (`SubscribeBatches`, login,
/// queries).
pub fn command_of(
    network_id: u32,
    from: Address,
    message: &Message,
    body: &[u8],
) -> Option<Command> {
    use crate::connection::Outcome;
    let outcome = crate::session::command_for(from, message)
        .or_else(|| report::command_for(network_id, from, message, body))
        .or_else(|| crate::operator::command_for(from, message))
        .or_else(|| crate::block::command_for(from, message))
        .or_else(|| crate::provider::command_for(from, message))
        .or_else(|| match message {
            Message::RegisterProvider(m) => {
                Some(Outcome::Command(crate::provider::register_command(from, m)))
            }
            _ => None,
        })?;
    match outcome {
        Outcome::Command(command) => Some(command),
        Outcome::Subscribe => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yellowstone_engine::{MarketError, Ticket};

    fn addr(b: u8) -> yellowstone_engine::Address {
        yellowstone_engine::Address([b; 20])
    }

    fn rfc(user: u8, nonce: u64, tokens_max: u64) -> Command {
        Command::SubmitRfc {
            user: addr(user),
            nonce,
            model: 1,
            tokens_max,
            expires_at_ms: 9_000,
        }
    }

    fn accepted(user: u8, nonce: u64, rfc: u64) -> Effect {
        Effect::RfcAccepted {
            user: addr(user),
            nonce,
            rfc,
            tokens_left: 50,
        }
    }

    fn cache(per_address: usize, entries_max: usize) -> ReplyCache {
        ReplyCache::new(ReplyCacheConfig {
            per_address,
            entries_max,
        })
    }

    fn wire(b: u8) -> Address {
        Address([b; 20])
    }

    #[test]
    fn r_ha_3_an_accepted_message_gets_its_answer_again_only_for_the_same_command() {
        let cache = cache(16, 1_000);
        cache.observe(&rfc(1, 10, 100), &[accepted(1, 10, 77)]);
        let same = rfc(1, 10, 100);
        let replies = cache.lookup(&wire(1), 10, &same).expect("cached");
        match replies.as_slice() {
            [Message::RfcAccepted(a)] => assert_eq!((a.nonce, a.rfc_id), (10, 77)),
            other => panic!("{other:?}"),
        }
        // Another message with the same nonce (another TokenMax): not the same answer.
        let other = rfc(1, 10, 101);
        assert_ne!(CommandDigest::of(&other), CommandDigest::of(&same));
        assert_eq!(cache.lookup(&wire(1), 10, &other), None);
        assert_eq!(cache.lookup(&wire(1), 11, &same), None);
        assert_eq!(cache.lookup(&wire(2), 10, &same), None);
    }

    #[test]
    fn r_ha_3_a_refused_message_is_not_cached() {
        let cache = cache(16, 1_000);
        let refused = Effect::Rejected {
            to: addr(1),
            nonce: 10,
            error: MarketError::ZeroBalance,
        };
        cache.observe(&rfc(1, 10, 100), &[refused]);
        assert!(cache.is_empty());
        assert_eq!(cache.lookup(&wire(1), 10, &rfc(1, 10, 100)), None);
    }

    #[test]
    fn r_ha_3_a_later_ticket_joins_its_rfcs_entry_and_the_probe_answer_gets_it_too() {
        let cache = cache(16, 1_000);
        cache.observe(&rfc(1, 10, 100), &[accepted(1, 10, 77)]);
        let answer = Command::ProbeAnswer {
            provider: addr(2),
            nonce: 5,
            probe: 3,
        };
        let ticket = Ticket {
            session: 4,
            user: addr(1),
            provider: addr(2),
            endpoint: std::sync::Arc::from(&b"http://p"[..]),
            model: 1,
            tokens_max: 100,
            price_wei_per_token: 7,
            expires_at_ms: 9_000,
            rfc_nonce: 10,
        };
        cache.observe(&answer, &[Effect::SessionOpened { ticket }]);
        let replies = cache
            .lookup(&wire(1), 10, &rfc(1, 10, 100))
            .expect("cached");
        match replies.as_slice() {
            [Message::RfcAccepted(_), Message::SessionTicket(t)] => {
                assert_eq!((t.session_id, t.rfc_nonce), (4, 10));
                assert_eq!(t.signature, Default::default(), "stored unsigned");
            }
            other => panic!("{other:?}"),
        }
        let provider = cache
            .lookup(&wire(2), 5, &answer)
            .expect("the probe answer's own answer");
        assert!(
            provider
                .iter()
                .any(|m| matches!(m, Message::SessionTicket(t) if t.session_id == 4)),
            "{provider:?}"
        );
        // A failure for the RFC's nonce joins it as well.
        cache.observe(&rfc(3, 20, 100), &[accepted(3, 20, 78)]);
        let failed = Effect::RfcFailed {
            user: addr(3),
            nonce: 20,
            rfc: 78,
            reason: yellowstone_engine::RfcFailure::Expired,
            refunded_tokens: 100,
        };
        cache.observe(&Command::Tick, &[failed]);
        let replies = cache
            .lookup(&wire(3), 20, &rfc(3, 20, 100))
            .expect("cached");
        assert!(matches!(
            replies.as_slice(),
            [Message::RfcAccepted(_), Message::RfcFailed(f)] if f.rfc_id == 78
        ));
    }

    #[test]
    fn r_ha_3_observing_twice_changes_nothing() {
        // A leader's sink and its state machine both observe every command.
        let cache = cache(16, 1_000);
        let ticket = Ticket {
            session: 4,
            user: addr(1),
            provider: addr(2),
            endpoint: std::sync::Arc::from(&b"http://p"[..]),
            model: 1,
            tokens_max: 100,
            price_wei_per_token: 7,
            expires_at_ms: 9_000,
            rfc_nonce: 10,
        };
        let answer = Command::ProbeAnswer {
            provider: addr(2),
            nonce: 5,
            probe: 3,
        };
        let opened = [Effect::SessionOpened { ticket }];
        cache.observe(&rfc(1, 10, 100), &[accepted(1, 10, 77)]);
        cache.observe(&answer, &opened);
        cache.observe(&rfc(1, 10, 100), &[accepted(1, 10, 77)]);
        cache.observe(&answer, &opened);
        assert_eq!(cache.len(), 2);
        let replies = cache.lookup(&wire(1), 10, &rfc(1, 10, 100)).unwrap();
        assert!(matches!(
            replies.as_slice(),
            [Message::RfcAccepted(_), Message::SessionTicket(_)]
        ));
    }

    #[test]
    fn r_ha_3_the_bounds_hold_under_a_flood_oldest_first() {
        let cache = cache(4, 100);
        // One address sending many: only its 4 most recent stay.
        for nonce in 1..=1_000u64 {
            cache.observe(&rfc(1, nonce, 100), &[accepted(1, nonce, nonce)]);
        }
        assert_eq!(cache.len(), 4);
        let digest = |n| rfc(1, n, 100);
        assert!(cache.lookup(&wire(1), 996, &digest(996)).is_none());
        assert!(cache.lookup(&wire(1), 997, &digest(997)).is_some());
        // Many addresses: at most 100 in all, the oldest gone first.
        for user in 2..=200u8 {
            cache.observe(&rfc(user, 1, 100), &[accepted(user, 1, 1)]);
            assert!(cache.len() <= 100);
        }
        assert_eq!(cache.len(), 100);
        let d = rfc(200, 1, 100);
        assert!(cache.lookup(&wire(200), 1, &d).is_some());
        let d = rfc(100, 1, 100);
        assert!(
            cache.lookup(&wire(100), 1, &d).is_none(),
            "older than the last 100"
        );
        let inner = cache.lock();
        assert!(
            inner.order.len() <= 2 * 100 + 64,
            "stale records are compacted"
        );
        assert_eq!(
            inner.by_address.values().map(VecDeque::len).sum::<usize>(),
            inner.len
        );
    }

    #[test]
    fn r_ha_3_an_export_imported_elsewhere_answers_alike_within_its_bounds() {
        let source = cache(4, 100);
        for user in 1..=30u8 {
            for nonce in 1..=6u64 {
                source.observe(&rfc(user, nonce, 100), &[accepted(user, nonce, nonce)]);
            }
        }
        assert_eq!(source.len(), 100);
        let bytes = source.export();
        let copy = cache(4, 100);
        copy.import(&bytes).expect("an export imports");
        assert_eq!(copy.len(), source.len());
        assert_eq!(copy.export(), bytes, "the same contents, the same order");
        for user in 1..=30u8 {
            for nonce in 1..=6u64 {
                let command = rfc(user, nonce, 100);
                assert_eq!(
                    copy.lookup(&wire(user), nonce, &command),
                    source.lookup(&wire(user), nonce, &command),
                    "user {user} nonce {nonce}"
                );
            }
        }
        // The same commands observed next evict the same entries in both.
        source.observe(&rfc(99, 1, 100), &[accepted(99, 1, 1)]);
        copy.observe(&rfc(99, 1, 100), &[accepted(99, 1, 1)]);
        assert_eq!(copy.export(), source.export());
        // A smaller cache keeps the newest of the export.
        let small = cache(2, 10);
        small.import(&bytes).unwrap();
        assert_eq!(small.len(), 10);
        assert!(small.lookup(&wire(30), 6, &rfc(30, 6, 100)).is_some());
        assert!(small.lookup(&wire(30), 4, &rfc(30, 4, 100)).is_none());
        // Bytes that are no export are refused and leave the cache as it was.
        let before = copy.export();
        assert!(copy.import(&bytes[..bytes.len() / 2]).is_err());
        assert!(copy.import(b"not an export").is_err());
        assert_eq!(copy.export(), before);
        copy.import(&[]).expect("nothing carried");
        assert_eq!(copy.export(), before, "nothing carried changes nothing");
    }

    #[test]
    fn r_ha_3_command_of_maps_a_message_as_admission_does() {
        let key = yellowstone_wire::SigningKey::from_seed(b"u");
        let message = Message::from(yellowstone_wire::messages::Rfc {
            from: key.address(),
            nonce: 10,
            model_id: 1,
            tokens_max: 100,
            expires_at_ms: 9_000,
            ..Default::default()
        });
        assert_eq!(
            command_of(7, key.address(), &message, &[]),
            Some(Command::SubmitRfc {
                user: crate::to_engine(key.address()),
                nonce: 10,
                model: 1,
                tokens_max: 100,
                expires_at_ms: 9_000,
            })
        );
        let subscribe = Message::from(yellowstone_wire::messages::SubscribeBatches {
            from: key.address(),
            nonce: 11,
            ..Default::default()
        });
        assert_eq!(command_of(7, key.address(), &subscribe, &[]), None);
    }
}

/// Figures for the notes (`cargo test --release -p yellowstone-router-core --lib
/// reply_cache_cost -- --ignored --nocapture`): the engine thread's cost of feeding
/// the cache per command (RFCs of 10,000 addresses, the default bounds, the cache
/// full), and a gateway's cost of a lookup.
#[cfg(test)]
#[test]
#[ignore = "a measurement, not a check"]
fn reply_cache_cost() {
    use std::hint::black_box;
    use yellowstone_engine::Address as EngineAddress;
    fn input(i: u64) -> (Command, [Effect; 1]) {
        let mut a = [0u8; 20];
        a[..8].copy_from_slice(&(i % 10_000).to_le_bytes());
        let user = EngineAddress(a);
        let command = Command::SubmitRfc {
            user,
            nonce: i,
            model: 1,
            tokens_max: 100,
            expires_at_ms: 9_000,
        };
        let effect = Effect::RfcAccepted {
            user,
            nonce: i,
            rfc: i,
            tokens_left: 50,
        };
        (command, [effect])
    }
    let cache = ReplyCache::new(ReplyCacheConfig {
        per_address: 64,
        entries_max: 65_536,
    });
    let n = 2_000_000u64;
    let started = std::time::Instant::now();
    for i in 0..n {
        black_box(input(black_box(i)));
    }
    let baseline = started.elapsed().as_nanos() as f64 / n as f64;
    let started = std::time::Instant::now();
    for i in 0..n {
        let (command, effects) = input(i);
        black_box(CommandDigest::of(&command));
        black_box(effects);
    }
    let per_digest = started.elapsed().as_nanos() as f64 / n as f64 - baseline;
    let started = std::time::Instant::now();
    for i in 0..n {
        let (command, effects) = input(i);
        cache.observe(&command, &effects);
    }
    let per_observe = started.elapsed().as_nanos() as f64 / n as f64 - baseline;
    let started = std::time::Instant::now();
    let mut hits = 0u64;
    for i in (n - 65_536)..n {
        let (command, _) = input(i);
        let (address, nonce) = command.origin().unwrap();
        if cache.lookup(&to_wire(address), nonce, &command).is_some() {
            hits += 1;
        }
    }
    let per_lookup = started.elapsed().as_nanos() as f64 / 65_536.0;
    eprintln!(
        "Entry {} B, Message {} B, Command {} B",
        std::mem::size_of::<Entry>(),
        std::mem::size_of::<Message>(),
        std::mem::size_of::<Command>()
    );
    eprintln!(
        "observe {per_observe:.0} ns/command (a digest alone: {per_digest:.0} ns), lookup \
         {per_lookup:.0} ns, hits {hits} of 65536, held {}",
        cache.len()
    );
}
