//! The front door of a replicated router (SPEC §12, R-HA-1, R-HA-3; issue 25): the
//! gateway threads and the metrics endpoint live for the whole process, the market
//! pipeline (sequencer, engine thread, admission) only while this member leads. The
//! pipeline of a term publishes itself here ([`Office::open`]); losing office closes
//! it ([`Office::close`]).
//!
//! Each gateway thread runs an [`OfficeHandler`]: while a term is open it hands every
//! event of the connections opened during that term to the term's
//! [`RouterHandler`]; a connection opened while no term is open (a follower, a
//! learner, a leader not yet promoted) gets `ErrorReply not_leader` naming the leader
//! it knows instead of a `LoginChallenge`, then is closed; when a term closes, every
//! connection of it gets the same and is closed (its routes, logins and in-flight
//! frames belonged to the engine that was thrown away).
//!
//! A single router never uses this module: its gateways run the `RouterHandler`
//! directly (no indirection on its hot path).

use super::handler::RouterHandler;
use super::market::MarketBoard;
use super::shared::RouterShared;
use crate::metrics::{Counter, Registry};
use crate::net::{CloseReason, ConnId, FrameHandler, GatewayContext, Outbox, Refusal, Replies};
use arc_swap::{ArcSwap, ArcSwapOption};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use yellowstone_wire::frame::FLAG_RESPONSE;
use yellowstone_wire::messages::Message;

/// The leader a `not_leader` reply names: its member id (0: none known) and client
/// endpoint, and the wait suggested when none is known (the election timeout, ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderHint {
    pub leader_id: u64,
    pub endpoint: Option<SocketAddr>,
    pub retry_after_ms: u32,
}

/// The pipeline of the term this member leads: its gateways' shared state.
struct Term {
    generation: u64,
    shared: Arc<RouterShared>,
}

/// What the process keeps across terms: the metrics registry, the market board the
/// metrics endpoint renders, the gateways' outbox, the term open now (if any) and the
/// leader to name while none is.
pub struct Office {
    pub(crate) registry: Registry,
    pub(crate) market: Arc<MarketBoard>,
    outbox: OnceLock<Outbox>,
    term: ArcSwapOption<Term>,
    /// Bumped at every open and close; a gateway thread compares it with the one it
    /// last saw (one atomic load per event) before looking at `term`.
    generation: AtomicU64,
    leader: ArcSwap<LeaderHint>,
    not_leader_total: Arc<Counter>,
}

/// A connection told `not_leader` already (its term closed, or it opened in none).
const TOLD: u64 = u64::MAX;

impl Office {
    /// `market` is the board the metrics endpoint renders (registered once here; a
    /// term's pipeline publishes its engine's figures into it).
    pub fn new(registry: Registry, market: Arc<MarketBoard>) -> Arc<Office> {
        market.register_metrics(&registry);
        let not_leader_total = registry.counter(
            "yellowstone_cluster_not_leader_total",
            "Connections answered not_leader (0x030A) and closed: opened while this member \
             did not lead, or open when it lost office (R-HA-3).",
            &[],
        );
        Arc::new(Office {
            registry,
            market,
            outbox: OnceLock::new(),
            term: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            leader: ArcSwap::from_pointee(LeaderHint {
                leader_id: 0,
                endpoint: None,
                retry_after_ms: 0,
            }),
            not_leader_total,
        })
    }

    /// Set once, after the gateway threads started (their factory holds the office).
    pub fn set_outbox(&self, outbox: Outbox) {
        let _ = self.outbox.set(outbox);
    }

    pub(crate) fn outbox(&self) -> Option<Outbox> {
        self.outbox.get().cloned()
    }

    /// The leader named to connections while no term is open here.
    pub fn set_leader(&self, hint: LeaderHint) {
        if **self.leader.load() != hint {
            self.leader.store(Arc::new(hint));
        }
    }

    /// A term's pipeline is ready: new connections get its `LoginChallenge`.
    pub(crate) fn open(&self, shared: Arc<RouterShared>) {
        let generation = self.generation.load(Ordering::Acquire) + 1;
        self.term.store(Some(Arc::new(Term { generation, shared })));
        self.generation.store(generation, Ordering::Release);
        self.wake_gateways();
    }

    /// The term ended (R-HA-1): every connection of it is answered `not_leader` and
    /// closed by its gateway thread, woken here.
    pub fn close(&self) {
        self.term.store(None);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.wake_gateways();
    }

    /// Whether a term is open (this member's pipeline serves clients).
    pub fn is_open(&self) -> bool {
        self.term.load().is_some()
    }

    /// An idle gateway thread waits for its sockets or its outbox: a no-op job makes
    /// it turn, and `end_of_turn` sees the new generation.
    fn wake_gateways(&self) {
        if let Some(outbox) = self.outbox.get() {
            for thread in 0..outbox.gateway_threads() {
                let _ = outbox.run_on(thread as u8, Box::new(|_| {}));
            }
        }
    }

    /// The `not_leader` reason naming the leader this member knows (R-HA-3): for a
    /// message in flight when the office closed (`wire::leader::not_leader_reason`).
    pub(crate) fn not_leader_reason(&self) -> String {
        let hint = **self.leader.load();
        yellowstone_wire::leader::not_leader_reason(hint.leader_id, hint.endpoint)
    }

    /// The `not_leader` frame (R-HA-3, docs/PROTOCOL.md): an answer to no message.
    fn not_leader_frame(&self) -> Vec<u8> {
        let hint = **self.leader.load();
        let reply = yellowstone_wire::leader::not_leader_reply(
            hint.leader_id,
            hint.endpoint,
            hint.retry_after_ms,
        );
        let mut frame = Vec::with_capacity(96);
        Message::from(reply).write_frame(FLAG_RESPONSE, &mut frame);
        frame
    }
}

/// One gateway thread's handler in a replicated router (see the module's text).
pub struct OfficeHandler {
    office: Arc<Office>,
    context: GatewayContext,
    /// The generation last seen.
    seen: u64,
    /// The open term's handler, with its generation.
    inner: Option<(u64, RouterHandler)>,
    /// Each open connection of this thread: the generation it opened in, or `TOLD`.
    conns: HashMap<ConnId, u64>,
}

impl OfficeHandler {
    pub fn new(office: Arc<Office>, context: GatewayContext) -> OfficeHandler {
        OfficeHandler {
            office,
            context,
            seen: 0,
            inner: None,
            conns: HashMap::new(),
        }
    }

    /// Follows the office: a new term gets a fresh `RouterHandler` (fresh logins and
    /// lanes: the connections it knew are gone with the old engine); connections of a
    /// closed term are answered `not_leader` and closed.
    fn follow(&mut self) {
        let generation = self.office.generation.load(Ordering::Acquire);
        if generation == self.seen {
            return;
        }
        self.seen = generation;
        let term = self.office.term.load_full();
        let current = term.as_ref().map(|t| t.generation);
        if self.inner.as_ref().map(|(g, _)| *g) != current {
            self.inner = term.map(|term| {
                (
                    term.generation,
                    RouterHandler::new(term.shared.clone(), self.context.clone()),
                )
            });
        }
        debug_assert_eq!(
            self.inner.as_ref().map(|(g, _)| *g),
            current,
            "the handler follows the open term"
        );
        debug_assert!(current != Some(TOLD), "generations never reach TOLD");
        let current = current.unwrap_or(TOLD);
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, g)| **g != current && **g != TOLD)
            .map(|(c, _)| *c)
            .collect();
        for conn in stale {
            self.conns.insert(conn, TOLD);
            self.tell_not_leader(conn);
        }
    }

    fn tell_not_leader(&self, conn: ConnId) {
        self.office.not_leader_total.inc();
        let _ = self
            .context
            .outbox
            .send(conn, self.office.not_leader_frame());
        let _ = self.context.outbox.close(conn);
    }

    /// The term's handler when `conn` belongs to it.
    fn handler_of(&mut self, conn: ConnId) -> Option<&mut RouterHandler> {
        let generation = *self.conns.get(&conn)?;
        match &mut self.inner {
            Some((g, handler)) if *g == generation => Some(handler),
            _ => None,
        }
    }
}

impl FrameHandler for OfficeHandler {
    fn on_open(&mut self, conn: ConnId, peer: Option<SocketAddr>) {
        self.follow();
        match &mut self.inner {
            Some((generation, handler)) => {
                self.conns.insert(conn, *generation);
                handler.on_open(conn, peer);
            }
            None => {
                self.conns.insert(conn, TOLD);
                self.tell_not_leader(conn);
            }
        }
    }

    fn on_frame(
        &mut self,
        conn: ConnId,
        frame: yellowstone_wire::frame::Frame,
        now: Instant,
        replies: &mut Replies<'_>,
    ) {
        self.follow();
        match self.handler_of(conn) {
            Some(handler) => handler.on_frame(conn, frame, now, replies),
            None => {
                // Sent before the not_leader reached it: answered the same way.
                let frame = self.office.not_leader_frame();
                replies.reply(&frame);
                replies.close();
            }
        }
    }

    fn on_close(&mut self, conn: ConnId, reason: &CloseReason) {
        if let Some(handler) = self.handler_of(conn) {
            handler.on_close(conn, reason);
        }
        self.conns.remove(&conn);
    }

    fn end_of_turn(&mut self, now: Instant) -> bool {
        self.follow();
        match &mut self.inner {
            Some((_, handler)) => handler.end_of_turn(now),
            None => false,
        }
    }

    fn has_deferred_work(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|(_, handler)| handler.has_deferred_work())
    }

    fn error_frame(&mut self, refusal: &Refusal, out: &mut Vec<u8>) {
        match &mut self.inner {
            Some((_, handler)) => handler.error_frame(refusal, out),
            // No term: whatever the refusal, this client's place is the leader.
            None => out.extend_from_slice(&self.office.not_leader_frame()),
        }
    }
}
