//! From engine effects to frames (on the engine thread). Session tickets and credit
//! batches (R-ID-5) are signed on a gateway thread, as jobs in its outbox lane: a
//! signature costs tens of microseconds, the engine's whole lifecycle about one, and
//! the gateway threads already wake for the sends the signature feeds.

use super::shared::{to_wire, RouterShared};
use super::signature_cpu::SignatureOp;
use crate::net::{ConnId, Outbox};
use crate::sequencer::{release_of, EffectSink, Origin, Release, ORIGIN_INTERNAL};
use std::sync::Arc;
use yellowstone_engine::{Command, Effect};
use yellowstone_router_core::{
    delivery_of, CacheUpdate, Conn, Delivery as CoreDelivery, Recipient, RouteKind, Routes,
};
use yellowstone_settlement::SignedSettlement;
use yellowstone_wire::frame::FLAG_RESPONSE;
use yellowstone_wire::messages::{self, Message};
use yellowstone_wire::Address;

pub struct RouterSink {
    shared: Arc<RouterShared>,
    outbox: Outbox,
    /// `threads.ticket_signing = "engine"`: sign tickets here instead of in a
    /// gateway job.
    sign_on_engine: bool,
    /// Where each address's pushed messages go (R-ID-6): written here only, on the
    /// engine thread, in command order (router-core's `Routes`); the gateway threads
    /// never read it (a signing job is given its recipients).
    routes: Routes,
}

fn send(shared: &RouterShared, outbox: &Outbox, conn: Option<ConnId>, message: Message) {
    let Some(conn) = conn else {
        shared.replies_dropped_total.inc();
        return;
    };
    let mut frame = Vec::with_capacity(96);
    message.write_frame(FLAG_RESPONSE, &mut frame);
    if outbox.send(conn, frame).is_err() {
        // The connection's lane is full or gone: the client is not reading.
        shared.replies_dropped_total.inc();
    }
}

/// The frames one command sends, in effect order. Those for the connection the
/// command came from are coalesced and go last with the mark that answers the
/// command's frame (R-ID-6: a half-closed connection stays until every command it
/// sent is answered), so every command from a connection is answered exactly once,
/// even when no effect addresses its sender.
struct Delivery<'a> {
    shared: &'a RouterShared,
    outbox: &'a Outbox,
    origin: Option<ConnId>,
    to_origin: Vec<u8>,
}

impl<'a> Delivery<'a> {
    fn new(shared: &'a RouterShared, outbox: &'a Outbox, origin: Origin) -> Delivery<'a> {
        Delivery {
            shared,
            outbox,
            origin: (origin != ORIGIN_INTERNAL).then(|| ConnId::from_u64(origin)),
            to_origin: Vec::new(),
        }
    }

    /// A reply to the command's sender (else, for an internal command, to `fallback`).
    fn reply(&mut self, fallback: Option<ConnId>, message: Message) {
        match self.origin {
            Some(_) => message.write_frame(FLAG_RESPONSE, &mut self.to_origin),
            None => send(self.shared, self.outbox, fallback, message),
        }
    }

    /// A push to `conn`; on the sender's connection it joins the reply.
    fn push(&mut self, conn: Option<ConnId>, message: Message) {
        if conn.is_some() && conn == self.origin {
            message.write_frame(FLAG_RESPONSE, &mut self.to_origin);
        } else {
            send(self.shared, self.outbox, conn, message);
        }
    }

    /// Sends what is gathered for the sender so far (before a job whose frames must
    /// follow it), without answering the command yet.
    fn flush(&mut self) {
        if let (Some(conn), false) = (self.origin, self.to_origin.is_empty()) {
            let bytes = std::mem::take(&mut self.to_origin);
            if self.outbox.send(conn, bytes).is_err() {
                self.shared.replies_dropped_total.inc();
            }
        }
    }

    /// Sends the rest to the sender with the answer mark.
    fn finish(self) {
        let Some(conn) = self.origin else {
            debug_assert!(self.to_origin.is_empty());
            return;
        };
        if self.outbox.reply(conn, self.to_origin).is_err() {
            self.shared.replies_dropped_total.inc();
        }
    }
}

impl RouterSink {
    pub fn new(shared: Arc<RouterShared>, outbox: Outbox, sign_on_engine: bool) -> RouterSink {
        RouterSink {
            shared,
            outbox,
            sign_on_engine,
            routes: Routes::default(),
        }
    }
}

impl EffectSink for RouterSink {
    /// R-ID-6: the route moves to the connection that registers, announces or
    /// submits, before the engine can answer with something to route.
    fn on_command(&mut self, origin: Origin, command: &Command) {
        if let Some(kind) = RouteKind::of(command) {
            self.routes.take(kind, Conn(origin));
        }
    }

    /// R-ID-6: only the routes this connection holds go; only then is the provider
    /// unreachable (a newer connection keeps it reachable).
    fn on_closed(&mut self, conn: Origin, address: yellowstone_engine::Address) -> Option<Command> {
        let released = self.routes.release(&to_wire(address), Conn(conn));
        released
            .provider
            .then_some(Command::ProviderDisconnected { provider: address })
    }

    fn deliver(&mut self, origin: Origin, command: &Command, effects: &[Effect]) {
        // R-HA-3: the answers go into the reply cache before the nonce below is seen
        // spent by the gateways, so a resend is never refused `replay` for want of them.
        self.shared.reply_cache.observe(command, effects);
        self.shared
            .reply_cache_entries
            .set(i64::try_from(self.shared.reply_cache.len()).unwrap_or(i64::MAX));
        // R-ID-4: the gateways' replay pre-check follows what the engine accepted,
        // once durable (a crash cannot undo it): an originated command without a
        // refusal of its own nonce spent that nonce.
        if let Some((address, nonce)) = command.origin() {
            let refused = effects.iter().any(|effect| {
                matches!(effect, Effect::Rejected { to, nonce: n, .. } if *to == address && *n == nonce)
            });
            if !refused {
                self.shared.nonce_accepted(to_wire(address), nonce);
            }
        }
        // R-QUOTA-5: the quota gate follows the engine before this answer leaves.
        self.shared.quota_gate.follow(command, effects);
        let mut out = Delivery::new(&self.shared, &self.outbox, origin);
        // R-HA-3: a resend that passed the gateways while its original was still on
        // its way to the journal, refused `replay` by the engine: the original answer.
        if let Some(frames) = cached_answer_to_engine_replay(&self.shared, origin, command, effects)
        {
            out.to_origin.extend_from_slice(&frames);
            out.finish();
            return;
        }
        self.send_effects(&mut out, command, effects);
        out.finish();
    }

    /// Probes (`Release::Now`) go to their provider at once, as pushes: never joined
    /// to the reply that answers the command's frame (that is `deliver`'s, once the
    /// command is durable), even when the provider is the command's sender.
    fn deliver_now(&mut self, _origin: Origin, command: &Command, effects: &[Effect]) {
        debug_assert!(effects.iter().all(|e| release_of(e) == Release::Now));
        let mut out = Delivery::new(&self.shared, &self.outbox, ORIGIN_INTERNAL);
        self.send_effects(&mut out, command, effects);
        out.finish();
    }
}

impl RouterSink {
    /// Where a recipient's frames go (R-ID-6).
    fn route(&self, recipient: Recipient) -> Option<ConnId> {
        self.routes
            .of(recipient)
            .map(|conn| ConnId::from_u64(conn.0))
    }

    /// A ticket's recipients, resolved here (the job that signs it runs elsewhere).
    fn ticket_recipients(&self, provider: Address, user: Address) -> [Option<ConnId>; 2] {
        [
            self.route(Recipient::Provider(provider)),
            self.route(Recipient::User(user)),
        ]
    }

    /// Turns effects into frames through `out` (in effect order): what each effect
    /// sends is router-core's (`delivery_of`, by flow); where it goes, and which
    /// thread signs it, is decided here.
    fn send_effects(&self, out: &mut Delivery<'_>, command: &Command, effects: &[Effect]) {
        let shared = &*self.shared;
        let route = |recipient| self.route(recipient);
        for effect in effects {
            if let Effect::Rejected { error, .. } = effect {
                shared.count_rejection(error.code());
            }
            match delivery_of(command, effect) {
                CoreDelivery::Reply(recipient, message) => out.reply(route(recipient), message),
                CoreDelivery::Push(recipient, message) => out.push(route(recipient), message),
                CoreDelivery::Ticket {
                    provider,
                    user,
                    message,
                } if self.sign_on_engine => {
                    out.flush();
                    let to = self.ticket_recipients(provider, user);
                    sign_and_send_ticket(shared, &self.outbox, message, to);
                }
                CoreDelivery::Ticket {
                    provider,
                    user,
                    message,
                } => {
                    out.flush();
                    // Signed on the thread of the provider that just answered the
                    // probe (else the user's): it is awake for that connection anyway.
                    let to = self.ticket_recipients(provider, user);
                    let near = out.origin.or(to[0]).or(to[1]);
                    let job_shared = self.shared.clone();
                    let queued = near.is_some_and(|conn| {
                        let job = Box::new(move |outbox: &Outbox| {
                            sign_and_send_ticket(&job_shared, outbox, message, to)
                        });
                        self.outbox.run_near(conn, job).is_ok()
                    });
                    if !queued {
                        shared.replies_dropped_total.inc();
                    }
                }
                CoreDelivery::Batch(mut message) => {
                    out.flush();
                    let job_shared = self.shared.clone();
                    let job = Box::new(move |outbox: &Outbox| {
                        let frame = signed_frame(&job_shared, &mut message);
                        send_to_subscribers(&job_shared, outbox, frame)
                    });
                    // Once a block: the first gateway thread signs it.
                    if self.outbox.run_on(0, job).is_err() {
                        shared.replies_dropped_total.inc();
                    }
                }
                CoreDelivery::Settlement {
                    settlement,
                    chain_id,
                    contract,
                } => {
                    let job_shared = self.shared.clone();
                    let job = Box::new(move |outbox: &Outbox| {
                        let signed = SignedSettlement::sign(
                            &settlement,
                            &job_shared.router_key,
                            job_shared.network_id,
                            chain_id,
                            &contract,
                        );
                        send_to_subscribers(
                            &job_shared,
                            outbox,
                            signed_frame(&job_shared, &mut settlement_message(&signed)),
                        );
                    });
                    // Once an epoch: the first gateway thread signs it (EIP-712 and wire).
                    if self.outbox.run_on(0, job).is_err() {
                        shared.replies_dropped_total.inc();
                    }
                }
                CoreDelivery::Cache(updates) => {
                    // R-QUOTA-6: the pre-check cache follows what the engine applied.
                    for update in updates {
                        if let CacheUpdate::Balance {
                            address,
                            balance_wei,
                        } = update
                        {
                            shared.balances.insert(address, balance_wei);
                        }
                    }
                }
                CoreDelivery::Nothing => {}
            }
        }
    }
}

pub use yellowstone_router_core::batch_message;

/// R-HA-3: the cached answer's frames (a ticket among them signed again: RFC 6979
/// gives the same bytes) when `command`, from a client connection, was refused
/// `replay` by the engine and its (address, nonce, command digest) is cached.
fn cached_answer_to_engine_replay(
    shared: &RouterShared,
    origin: Origin,
    command: &Command,
    effects: &[Effect],
) -> Option<Vec<u8>> {
    if origin == ORIGIN_INTERNAL {
        return None;
    }
    let (address, nonce) = command.origin()?;
    let replayed = effects.iter().any(|effect| {
        matches!(effect, Effect::Rejected { to, nonce: n, error: yellowstone_engine::MarketError::Replay { .. } } if *to == address && *n == nonce)
    });
    if !replayed {
        return None;
    }
    let replies = shared
        .reply_cache
        .lookup(&to_wire(address), nonce, command)?;
    shared.reply_cache_hits_total.inc();
    Some(cached_frames(shared, replies))
}

/// The frames of cached answers, in order; a session ticket is signed with the router
/// key (deterministic signatures: the bytes first sent).
pub(super) fn cached_frames(shared: &RouterShared, replies: Vec<Message>) -> Vec<u8> {
    let mut frames = Vec::with_capacity(96 * replies.len());
    for mut message in replies {
        if matches!(message, Message::SessionTicket(_)) {
            frames.extend_from_slice(&signed_frame(shared, &mut message));
        } else {
            message.write_frame(FLAG_RESPONSE, &mut frames);
        }
    }
    frames
}

/// Signs `message` with the router key (timed as signature work) into a frame
/// flagged as the router's.
pub(super) fn signed_frame(shared: &RouterShared, message: &mut Message) -> Vec<u8> {
    let mut frame = shared.signature_cpu.measure(SignatureOp::Sign, || {
        message.sign(&shared.router_key, shared.network_id)
    });
    frame[3] |= FLAG_RESPONSE;
    frame
}

/// Signs a session ticket (built by router-core) and sends it to both sides
/// (R-MATCH-6); runs on a gateway thread.
fn sign_and_send_ticket(
    shared: &RouterShared,
    outbox: &Outbox,
    mut message: Message,
    routes: [Option<ConnId>; 2],
) {
    debug_assert!(matches!(message, Message::SessionTicket(_)));
    let frame = signed_frame(shared, &mut message);
    for route in routes {
        match route {
            Some(conn) if outbox.send(conn, frame.clone()).is_ok() => {}
            _ => shared.replies_dropped_total.inc(),
        }
    }
}

/// Builds the SETTLEMENT message (R-CHAIN-1) of a signed settlement; the wire
/// signature is added by `signed_frame`.
pub fn settlement_message(signed: &SignedSettlement) -> Message {
    let r = &signed.record;
    Message::from(messages::Settlement {
        epoch: r.epoch,
        day: r.day,
        first_block: r.first_block,
        last_block: r.last_block,
        credited_wei: r.credited_wei,
        bootstrap_wei: r.bootstrap_wei,
        credited_cumulative_wei: r.credited_cumulative_wei,
        providers: r.providers,
        merkle_root: r.merkle_root,
        chain_id: signed.chain_id,
        contract: to_wire(signed.contract),
        eip712_signature: yellowstone_wire::Signature(signed.signature),
        signature: Default::default(),
    })
}

/// Sends one router-signed frame to every batch subscriber.
fn send_to_subscribers(shared: &RouterShared, outbox: &Outbox, frame: Vec<u8>) {
    let subscribers: Vec<ConnId> = shared
        .subscribers
        .iter()
        .map(|entry| *entry.key())
        .collect();
    for conn in subscribers {
        if outbox.send(conn, frame.clone()).is_err() {
            shared.replies_dropped_total.inc();
        }
    }
}
