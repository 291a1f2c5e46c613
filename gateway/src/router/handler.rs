//! The router's frame handler, one per gateway thread: the IO side of
//! `router_core::Admission` (login by signed challenge, decode, pre-checks, signature
//! recovery R-ID-2/3, frame -> command, all decided in router-core), the scheduling of
//! a turn's frames (lanes) and the hand-off of authenticated commands to the engine
//! thread. Every refusal is an `ErrorReply` with a stable code; only a broken frame
//! header costs the connection. Time comes in from the network loop (`now`).

use super::shared::RouterShared;
use super::signature_cpu::{SignatureCpu, SignatureOp};
use crate::metrics::{Stage, StageRecorder};
use crate::net::{CloseReason, ConnId, FrameHandler, GatewayContext, Refusal, Replies, Standing};
use crate::sequencer::SequencerInput;
use crossbeam_channel::TrySendError;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use yellowstone_engine::Command;
use yellowstone_router_core::{
    Admission, AdmissionConfig, Admitted, Conn, MarketView, Outcome as CoreOutcome, RefusalBudget,
    RefusalVerdict, Refused, Verifier,
};
use yellowstone_wire::frame::Frame;
use yellowstone_wire::messages::{self, Message};
use yellowstone_wire::{codes, Address, SigError, Signature};

/// The gateways' pre-check caches as the core reads them (written by the engine
/// thread only, from durable effects).
struct SharedView<'a>(&'a RouterShared);

impl MarketView for SharedView<'_> {
    fn balance_wei(&self, address: &Address) -> Option<u128> {
        self.0.balances.get(address).map(|b| *b)
    }

    fn nonce_last(&self, address: &Address) -> Option<u64> {
        self.0.nonces.get(address).map(|n| *n)
    }

    fn weights_hash(&self, model: u32) -> Option<[u8; 32]> {
        self.0.models.get(&model).copied()
    }
}

/// Signature recovery timed as the gateway's signature CPU.
struct MeasuredVerifier<'a>(&'a SignatureCpu);

impl Verifier for MeasuredVerifier<'_> {
    fn recover(&self, digest: &[u8; 32], signature: &Signature) -> Result<Address, SigError> {
        self.0.measure(SignatureOp::Verify, || {
            yellowstone_wire::signature::recover_signer(digest, signature)
        })
    }

    fn verify(&self, message: &Message, network_id: u32, body: &[u8]) -> Result<Address, SigError> {
        self.0
            .measure(SignatureOp::Verify, || message.verify(network_id, body))
    }
}

fn conn_of(id: ConnId) -> Conn {
    Conn(id.as_u64())
}

fn id_of(conn: Conn) -> ConnId {
    ConnId::from_u64(conn.0)
}

/// An authenticated command waiting for the end of the gateway's loop turn.
struct Accepted {
    conn: ConnId,
    msg_type: u16,
    nonce: u64,
    command: Command,
}

/// Commands handed to the engine at once, at most: a long turn does not hold the
/// first ones back for long.
const HANDOFF_BATCH_MAX: usize = 64;

/// Deferred messages admitted (signature checked) per loop turn, at most: a loaded
/// gateway still turns every few milliseconds, so probe answers and reports are read
/// and replies sent while new RFCs wait their turn (in the in-flight windows, then
/// in the sockets: TCP pushes back on the senders).
const DEFERRED_ADMIT_PER_TURN_MAX: usize = 64;

/// Costly frames admitted per loop turn when no RFC waits (one a turn otherwise).
const COSTLY_ADMIT_PER_TURN_MAX: usize = 4;

/// The queues of frames admitted at the end of a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// RFCs: after the turn's probe answers and reports.
    Deferred,
    /// Registrations (R-PROV-3): after the RFCs.
    Costly,
}

const OVERLOADED_REASON: &str = "overloaded, retry after the given delay";

/// R-HA-3: how a resent message found in the reply cache is answered.
enum Resend {
    /// Now, with these frames (its original answer).
    Answer(Vec<u8>),
    /// Through the engine (it takes a route), which refuses it `replay` and whose
    /// sink answers with the original frames.
    ViaEngine(Command),
}

/// What became of an admitted message that was not refused.
enum Outcome {
    /// Queued for the engine, which answers it later (through the outbox).
    Accepted,
    /// Frames ready to send, no engine needed: a resend's original answer (R-HA-3),
    /// or a subscription's `Ack` and the newest sealed batch and settlement (R-HA-2).
    Cached(Vec<u8>),
}

pub struct RouterHandler {
    shared: Arc<RouterShared>,
    context: GatewayContext,
    /// Login state, pre-checks and frame -> command (router-core).
    admission: Admission,
    /// The network loop's clock at this handler's first event: `now` becomes the
    /// core's microseconds since it.
    epoch: Option<Instant>,
    /// The last `now` seen, as the core's microseconds (a close or a deferred lane
    /// is decided at the time of the turn that saw it).
    now_us_last: u64,
    stages: StageRecorder,
    /// Commands accepted this loop turn, handed to the engine together at its end:
    /// the engine wakes once per turn instead of once per command.
    accepted: Vec<Accepted>,
    /// RFCs (and whatever their connection sent after them) received this turn,
    /// verified at its end, after the rest: under overload the gateway's CPU goes
    /// first to the messages that complete sessions already under way (probe
    /// answers, whose probe times out), not to new ones. Bounded by the connections'
    /// in-flight windows (every entry is a frame in flight).
    deferred: VecDeque<Admitted>,
    /// The connections with entries in `deferred`, and how many.
    deferred_conns: HashMap<ConnId, u32>,
    /// R-PROV-3: costly frames (registrations, one signature recovery per offer),
    /// and whatever their connection sent after them: admitted after the deferred
    /// RFCs, one a turn while RFCs wait, so that they never delay RFCs and probe
    /// answers of others. Bounded like `deferred` by the in-flight windows.
    costly: VecDeque<Admitted>,
    costly_conns: HashMap<ConnId, u32>,
    /// R-PROV-3 (issue 27, quota-flood): refusals per connection and per address per
    /// second (`network.conn_refusals_per_s_max`, `network.addr_refusals_per_s_max`);
    /// past either the connection is closed, past the address's its logins are
    /// refused before the signature until the second ends.
    refusals: RefusalBudget,
}

impl RouterHandler {
    pub fn new(shared: Arc<RouterShared>, context: GatewayContext) -> RouterHandler {
        let stages = shared.registry.stage_recorder();
        let admission = Admission::new(
            AdmissionConfig {
                network_id: shared.network_id,
                operator: shared.operator,
                weights_proofs_per_s: shared.weights_proofs_per_s,
                weights_proofs_unfunded_per_s: shared.weights_proofs_unfunded_per_s,
                genesis_ms: shared.quota_gate.genesis_ms(),
            },
            0,
        );
        let refusals = RefusalBudget::new(
            shared.conn_refusals_per_s_max,
            shared.addr_refusals_per_s_max,
        );
        RouterHandler {
            shared,
            context,
            admission,
            epoch: None,
            now_us_last: 0,
            stages,
            accepted: Vec::with_capacity(HANDOFF_BATCH_MAX),
            deferred: VecDeque::new(),
            deferred_conns: HashMap::new(),
            costly: VecDeque::new(),
            costly_conns: HashMap::new(),
            refusals,
        }
    }

    /// `now` as the core's microseconds (since this handler's first event).
    fn now_us(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        let now_us = now.saturating_duration_since(epoch).as_micros() as u64;
        self.now_us_last = self.now_us_last.max(now_us);
        self.now_us_last
    }

    /// Whether `address` holds MOR, as the engine last applied it (R-QUOTA-6).
    fn is_funded(&self, address: &Address) -> bool {
        SharedView(&self.shared).is_funded(address)
    }

    /// Whether the engine's queue is full counting what this turn holds back: the
    /// command would be refused OVERLOADED. Checked before the signature, so a
    /// message that will be refused costs no verification. SubscribeBatches needs
    /// no engine and is never refused for it.
    fn would_overflow(&self, message: &Message) -> bool {
        if matches!(message, Message::SubscribeBatches(_)) {
            return false;
        }
        let queued = self.shared.inbound.len()
            + self.accepted.len()
            + self.deferred.len()
            + self.costly.len();
        self.shared
            .inbound
            .capacity()
            .is_some_and(|capacity| queued >= capacity)
    }

    /// Checks a logged-in client's message (queue room first, then the core's
    /// pre-checks, its signature R-ID-2 and its mapping to a command) and queues its
    /// command for the engine (handed off at the end of the turn, or at once when a
    /// batch is full), or says how to answer it now.
    fn admit(&mut self, admitted: Admitted, now_us: u64) -> Result<Outcome, Refused> {
        if self.would_overflow(&admitted.message) {
            return Err(Refused::new(codes::OVERLOADED, OVERLOADED_REASON));
        }
        // Cheap before costly (R-PROV-3): the sender and whether its message can be
        // applied at all are known before any signature is recovered.
        let view = SharedView(&self.shared);
        if let Err(refused) = self.admission.precheck(
            admitted.conn,
            admitted.address,
            admitted.claimed,
            admitted.nonce,
            &admitted.message,
            &view,
        ) {
            // R-HA-3: a nonce already spent by this very message: its first answer.
            // Past the connection's refusal budget: refused (and closed) as before.
            if refused.code != codes::REPLAY
                || self
                    .refusals
                    .spent(admitted.conn, Some(admitted.address), now_us)
            {
                return Err(refused);
            }
            let resend = self.cached_answer(
                admitted.address,
                admitted.nonce,
                &admitted.message,
                &admitted.body,
            );
            if resend.is_some() {
                // A resend counts against the refusal budget like a refusal (R-PROV-3).
                let verdict = self.refusals.refused(
                    admitted.conn,
                    Some(admitted.address),
                    codes::REPLAY,
                    now_us,
                );
                debug_assert_eq!(verdict, RefusalVerdict::Answer, "checked by spent()");
            }
            return match resend {
                Some(Resend::Answer(frames)) => {
                    self.shared.reply_cache_hits_total.inc();
                    Ok(Outcome::Cached(frames))
                }
                // No signature recovery (R-PROV-3, issue 27 case 5: replaying a costly
                // frame must stay cheap): the connection's login proved the key, and
                // the digest says the command is the one already accepted; the engine
                // refuses it `replay` without any effect.
                Some(Resend::ViaEngine(command)) => {
                    self.push_accepted(&admitted, command);
                    Ok(Outcome::Accepted)
                }
                None => Err(refused),
            };
        }
        self.verify(&admitted)?;
        let view = SharedView(&self.shared);
        let verifier = MeasuredVerifier(&self.shared.signature_cpu);
        let command = match self
            .admission
            .command_for(&admitted, now_us, &view, &verifier)?
        {
            CoreOutcome::Command(command) => command,
            // Whatever needs no engine is answered now: nothing stays in flight.
            CoreOutcome::Subscribe => {
                // Subscribed first: a batch sealed from now on is broadcast to it; the
                // newest already sealed follows the Ack (R-HA-2: none missed across a
                // reconnect; a repeat is skipped by its block). Once per connection: a
                // connection subscribing again gets only its Ack, so resubscribing is no
                // way to have a large batch sent over and over.
                let first = self
                    .shared
                    .subscribers
                    .insert(id_of(admitted.conn), ())
                    .is_none();
                let mut frames = Vec::new();
                Message::from(messages::Ack {
                    nonce: admitted.nonce,
                })
                .write_frame(yellowstone_wire::frame::FLAG_RESPONSE, &mut frames);
                if first {
                    frames.extend_from_slice(&super::sink::newest_sealed_frames(&self.shared));
                }
                return Ok(Outcome::Cached(frames));
            }
        };
        self.push_accepted(&admitted, command);
        Ok(Outcome::Accepted)
    }

    /// R-ID-2: the message's signature recovers its sender (timed as signature work).
    fn verify(&self, admitted: &Admitted) -> Result<(), Refused> {
        let network_id = self.shared.network_id;
        let verifier = MeasuredVerifier(&self.shared.signature_cpu);
        self.stages
            .time(Stage::Verify, || {
                verifier.verify(&admitted.message, network_id, &admitted.body)
            })
            .map(|_signer| ())
            .map_err(|error| {
                yellowstone_router_core::sig_refusal(network_id, &error, String::new())
            })
    }

    /// Queues `command` for the engine (handed off at the end of the turn, or now when
    /// a batch is full).
    fn push_accepted(&mut self, admitted: &Admitted, command: Command) {
        self.accepted.push(Accepted {
            conn: id_of(admitted.conn),
            msg_type: admitted.msg_type,
            nonce: admitted.nonce,
            command,
        });
        // Stays in flight until the engine's effects answer it through the outbox (or
        // it is refused there if the queue cannot take it at the end of the turn after
        // all): a connection half-closed meanwhile waits for that answer (R-ID-6).
        if self.accepted.len() >= HANDOFF_BATCH_MAX {
            self.hand_off();
        }
    }

    /// R-HA-3: what to do with `address`'s message `nonce` (already spent) if this
    /// very message (same command digest) was accepted and its answer is still
    /// cached: answer it now with the original frames (counted in
    /// `yellowstone_reply_cache_hits_total`), or, for a message that takes a route
    /// (an RFC, a registration, an announcement: R-ID-6), send its command to the
    /// engine, which moves the route to this connection, refuses the command `replay`
    /// without any effect or journal record (R-OPS-4), and the sink answers with the
    /// cached frames instead (and counts the hit): pushes that follow (a ticket for
    /// this RFC, a probe) then find the new connection. `None`: not cached.
    ///
    /// Called after the sender check only: the answer goes to a connection logged in
    /// as `address` (its login proved the key) and the command digest is the one
    /// accepted, so neither path recovers a signature: a replayed costly frame costs
    /// a digest, and counts against the refusal budget.
    fn cached_answer(
        &self,
        address: Address,
        nonce: u64,
        message: &Message,
        body: &[u8],
    ) -> Option<Resend> {
        let command =
            yellowstone_router_core::command_of(self.shared.network_id, address, message, body)?;
        let replies = self.shared.reply_cache.lookup(&address, nonce, &command)?;
        if yellowstone_router_core::RouteKind::of(&command).is_some() {
            return Some(Resend::ViaEngine(command));
        }
        Some(Resend::Answer(super::sink::cached_frames(
            &self.shared,
            replies,
        )))
    }

    /// A lane's queue and its per-connection counts.
    fn lane(&mut self, lane: Lane) -> (&mut VecDeque<Admitted>, &mut HashMap<ConnId, u32>) {
        match lane {
            Lane::Deferred => (&mut self.deferred, &mut self.deferred_conns),
            Lane::Costly => (&mut self.costly, &mut self.costly_conns),
        }
    }

    /// Admits up to `budget` deferred messages, oldest first, answering through
    /// the outbox (the frames are still in flight), then hands the commands off.
    fn admit_deferred(&mut self, budget: usize) {
        self.admit_lane(Lane::Deferred, budget)
    }

    /// `admit_deferred` for either lane.
    fn admit_lane(&mut self, lane: Lane, budget: usize) {
        for _ in 0..budget {
            let (queue, conns) = self.lane(lane);
            let Some(admitted) = queue.pop_front() else {
                break;
            };
            let (admitted_conn, admitted_address) = (admitted.conn, admitted.address);
            let (conn, msg_type, nonce) = (id_of(admitted.conn), admitted.msg_type, admitted.nonce);
            match conns.get_mut(&conn) {
                Some(count) if *count > 1 => *count -= 1,
                _ => {
                    conns.remove(&conn);
                }
            }
            let now_us = self.now_us_last;
            let sent = match self.admit(admitted, now_us) {
                Ok(Outcome::Accepted) => continue,
                Ok(Outcome::Cached(frames)) => self.context.outbox.reply(conn, frames),
                Err(refused) => {
                    // The same refusal budget as the door's (R-PROV-3).
                    let (refused, close) = match self.refusals.refused(
                        admitted_conn,
                        Some(admitted_address),
                        refused.code,
                        now_us,
                    ) {
                        RefusalVerdict::Answer => (refused, false),
                        RefusalVerdict::Close(last) => (last, true),
                        RefusalVerdict::Drop => {
                            self.shared.count_rejection(refused.code);
                            // The answer mark still goes: the frame was in flight.
                            let _ = self.context.outbox.answer(conn, 1);
                            continue;
                        }
                    };
                    let mut frame = Vec::new();
                    self.error_reply_with(refused, msg_type, nonce)
                        .write_frame(yellowstone_wire::frame::FLAG_RESPONSE, &mut frame);
                    let sent = self.context.outbox.reply(conn, frame);
                    if close {
                        let _ = self.context.outbox.close(conn);
                    }
                    sent
                }
            };
            // A full lane drops the bytes but never the answer mark.
            if sent.is_err() {
                self.shared.replies_dropped_total.inc();
            }
        }
        let (queue, conns) = self.lane(lane);
        debug_assert_eq!(
            conns.values().map(|&n| n as usize).sum::<usize>(),
            queue.len()
        );
        if !self.accepted.is_empty() {
            self.hand_off();
        }
    }

    /// Hands the accepted commands to the engine, in order. One the queue cannot
    /// take after all (it filled since the frame was checked, or the router is
    /// stopping) is refused to its sender through the outbox.
    fn hand_off(&mut self) {
        let mut accepted = std::mem::take(&mut self.accepted);
        for Accepted {
            conn,
            msg_type,
            nonce,
            command,
        } in accepted.drain(..)
        {
            let origin = conn.as_u64();
            // Only whether the queue was full or gone: the command itself is dropped.
            let send = |command: Command| {
                self.shared
                    .inbound
                    .try_send(SequencerInput::Command { origin, command })
                    .map_err(|error| matches!(error, TrySendError::Full(_)))
            };
            // R-ID-6: the engine thread moves the route (its one writer) when it
            // applies the command, before it can answer with something to route.
            let sent = send(command);
            let (code, reason) = match sent {
                Ok(()) => {
                    self.shared.commands_total.inc();
                    continue;
                }
                Err(true) => (codes::OVERLOADED, OVERLOADED_REASON.into()),
                // R-HA-3 (issue 25): a member whose pipeline was abandoned for loss
                // of office says so, naming the leader if known: the client resends
                // there. Only a real stop answers shutting_down.
                Err(false) => match self.deposed_reason() {
                    Some(reason) => (codes::NOT_LEADER, std::borrow::Cow::Owned(reason)),
                    None => (codes::SHUTTING_DOWN, "router shutting down".into()),
                },
            };
            let mut frame = Vec::new();
            self.error_reply(code, msg_type, nonce, reason.into())
                .write_frame(yellowstone_wire::frame::FLAG_RESPONSE, &mut frame);
            // Answers the frame, still in flight (R-ID-6, half-close).
            if self.context.outbox.reply(conn, frame).is_err() {
                self.shared.replies_dropped_total.inc();
            }
        }
        self.accepted = accepted;
    }

    /// The `not_leader` reason when this pipeline's engine is gone for a loss of
    /// office (a replicated member not stopping), else `None` (a real stop).
    fn deposed_reason(&self) -> Option<String> {
        let office = self.shared.office.as_ref()?;
        if self
            .shared
            .stopping
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return None;
        }
        Some(office.not_leader_reason())
    }

    /// The `ErrorReply` refusing a message (counted by its code).
    fn error_reply(&self, code: u16, ref_msg_type: u16, ref_nonce: u64, reason: String) -> Message {
        self.shared.count_rejection(code);
        let retry_after_ms = if code == codes::OVERLOADED {
            self.shared.retry_after_ms
        } else {
            0
        };
        Message::from(messages::ErrorReply {
            code,
            ref_msg_type,
            ref_nonce,
            retry_after_ms,
            detail: 0,
            reason,
        })
    }

    /// The `ErrorReply` for a refusal before the engine (counted by its code).
    fn error_reply_with(&self, refused: Refused, ref_msg_type: u16, ref_nonce: u64) -> Message {
        let mut reply = self.error_reply(refused.code, ref_msg_type, ref_nonce, refused.reason);
        if let Message::ErrorReply(error) = &mut reply {
            error.detail = refused.detail;
        }
        reply
    }

    /// Sends `refused` as this frame's answer, within the connection's refusal
    /// budget (`network.conn_refusals_per_s_max`): past it, `too_many_refusals` and
    /// a close instead, then nothing (R-PROV-3, issue 27 quota-flood).
    fn refuse_with(
        &mut self,
        conn: ConnId,
        replies: &mut Replies<'_>,
        refused: Refused,
        ref_msg_type: u16,
        ref_nonce: u64,
    ) {
        let address = self.admission.address(conn_of(conn));
        let (refused, close) =
            match self
                .refusals
                .refused(conn_of(conn), address, refused.code, self.now_us_last)
            {
                RefusalVerdict::Answer => (refused, false),
                RefusalVerdict::Close(last) => (last, true),
                RefusalVerdict::Drop => {
                    // Counted, unanswered: the frame leaves the in-flight window.
                    self.shared.count_rejection(refused.code);
                    replies.answer();
                    return;
                }
            };
        let reply = self.error_reply_with(refused, ref_msg_type, ref_nonce);
        replies.reply_with(|out| reply.write_frame(yellowstone_wire::frame::FLAG_RESPONSE, out));
        if close {
            // After the reply is queued: it is the connection's last frame.
            replies.close();
        }
    }

    fn refuse(
        &mut self,
        conn: ConnId,
        replies: &mut Replies<'_>,
        code: u16,
        ref_msg_type: u16,
        ref_nonce: u64,
        reason: String,
    ) {
        self.refuse_with(
            conn,
            replies,
            Refused::new(code, reason),
            ref_msg_type,
            ref_nonce,
        );
    }

    fn login(
        &mut self,
        conn: ConnId,
        answer: &messages::LoginAnswer,
        body: &[u8],
    ) -> Result<Address, Refused> {
        let verifier = MeasuredVerifier(&self.shared.signature_cpu);
        // R-ID-6: a login takes no route; registering, announcing or submitting does.
        self.admission.login(conn_of(conn), answer, body, &verifier)
    }
}

impl FrameHandler for RouterHandler {
    fn on_open(&mut self, conn: ConnId, _peer: Option<SocketAddr>) {
        let challenge: [u8; 32] = rand::random();
        let hello = self
            .admission
            .open(conn_of(conn), challenge, self.shared.router_key.address());
        // Like every frame the router sends, flagged FLAG_RESPONSE.
        let mut frame = Vec::with_capacity(72);
        hello.write_frame(yellowstone_wire::frame::FLAG_RESPONSE, &mut frame);
        let _ = self.context.outbox.send(conn, frame);
    }

    fn on_frame(&mut self, conn: ConnId, frame: Frame, now: Instant, replies: &mut Replies<'_>) {
        let now_us = self.now_us(now);
        let msg_type = frame.header.msg_type;
        let decoded = self
            .stages
            .time(Stage::Decode, || Message::decode(msg_type, &frame.body));
        let message = match decoded {
            Ok(message) => message,
            Err(error) => {
                // The nonce, when it can be read at its fixed offset, names the
                // message refused (every signed client message alike).
                let nonce = Message::nonce_at_fixed_offset(msg_type, &frame.body).unwrap_or(0);
                return self.refuse(
                    conn,
                    replies,
                    codes::of_decode_error(&error),
                    msg_type,
                    nonce,
                    error.to_string(),
                );
            }
        };
        let logged_in = self.admission.address(conn_of(conn));
        let address = match (&message, logged_in) {
            (Message::Ping(ping), _) => {
                let pong = Message::from(messages::Pong {
                    payload: ping.payload,
                });
                replies.reply_with(|out| {
                    pong.write_frame(yellowstone_wire::frame::FLAG_RESPONSE, out)
                });
                return;
            }
            (Message::LoginAnswer(answer), _) => {
                // R-PROV-3: an address past its refusal budget is refused before the
                // login's signature is recovered (the refusal counts only for this
                // connection: the address is not proven).
                let login = self
                    .refusals
                    .login(&answer.address, now_us)
                    .and_then(|()| self.login(conn, answer, &frame.body));
                match login {
                    Ok(address) => {
                        // §9: a funded login (or the operator's) is never evicted
                        // for room.
                        let staked =
                            self.is_funded(&address) || self.shared.operator == Some(address);
                        replies.set_standing(if staked {
                            Standing::Staked
                        } else {
                            Standing::LoggedIn
                        });
                        let ok = Message::from(messages::LoginOk { address });
                        replies.reply_with(|out| {
                            ok.write_frame(yellowstone_wire::frame::FLAG_RESPONSE, out)
                        });
                    }
                    Err(refused) => self.refuse_with(conn, replies, refused, msg_type, 0),
                }
                return;
            }
            (Message::CatalogQuery(query), Some(_)) => {
                // R-NODE-2: answered from the engine's last publication.
                let catalog = self.shared.catalog.answer(query.query_id);
                replies.reply_with(|out| {
                    catalog.write_frame(yellowstone_wire::frame::FLAG_RESPONSE, out)
                });
                return;
            }
            (_, None) => {
                // Echo the nonce so a client that sent before logging in can tell which
                // of its messages was turned away.
                let nonce = message.claimed_origin().map_or(0, |(_, nonce)| nonce);
                return self.refuse(
                    conn,
                    replies,
                    codes::NOT_LOGGED_IN,
                    msg_type,
                    nonce,
                    "log in first: answer the challenge".into(),
                );
            }
            (_, Some(address)) => {
                // Funded since the login (a balance update): staked from now on.
                if self.is_funded(&address) {
                    replies.set_standing(Standing::Staked);
                }
                address
            }
        };
        if let Message::MarketStateQuery(query) = &message {
            // R-OPS-3: public figures, answered here from the engine's last
            // publication; the engine thread is not involved.
            let state = Message::from(super::market::market_state(
                &self.shared.market.load(),
                query.query_id,
            ));
            replies
                .reply_with(|out| state.write_frame(yellowstone_wire::frame::FLAG_RESPONSE, out));
            return;
        }
        let Some((claimed, nonce)) = message.claimed_origin() else {
            return self.refuse(
                conn,
                replies,
                codes::NOT_ALLOWED,
                msg_type,
                0,
                format!("{} is not sent by clients", message.name()),
            );
        };
        // R-HA-3: a resend of a message whose nonce is spent (its answer was lost with
        // a connection or a failed leader) gets the original answer, before the quota
        // gate (the original may have used the last of the quota). Not when frames of
        // this connection wait in a lane: answered there, in order.
        let mut resend = false;
        if claimed == address
            && !self.deferred_conns.contains_key(&conn)
            && !self.costly_conns.contains_key(&conn)
            && !self.refusals.spent(conn_of(conn), Some(address), now_us)
            && SharedView(&self.shared)
                .nonce_last(&address)
                .is_some_and(|last| nonce <= last)
        {
            match self.cached_answer(address, nonce, &message, &frame.body) {
                Some(Resend::Answer(frames)) => {
                    // A resend counts against the refusal budget like a refusal
                    // (R-PROV-3).
                    let verdict =
                        self.refusals
                            .refused(conn_of(conn), Some(address), codes::REPLAY, now_us);
                    debug_assert_eq!(verdict, RefusalVerdict::Answer, "checked by spent()");
                    self.shared.reply_cache_hits_total.inc();
                    replies.reply_with(|out| out.extend_from_slice(&frames));
                    return;
                }
                // Admitted below, where it is counted against the budget and handed
                // to the engine; the sink answers it.
                Some(Resend::ViaEngine(_)) => resend = true,
                None => {}
            }
        }
        // R-QUOTA-5, R-PROV-3: an RFC past its sender's quota, refused at the door
        // as the engine would, before any signature work or a place in a lane (not
        // a resend answered from the cache: its quota was taken the first time).
        // Router-core decides (`Admission::quota_precheck`); the table is the sink's.
        if !resend {
            let quota = self.admission.quota_precheck(
                address,
                claimed,
                &message,
                crate::sequencer::unix_ms(),
                &&self.shared.quota_gate,
            );
            if let Err(refused) = quota {
                return self.refuse_with(conn, replies, refused, msg_type, nonce);
            }
        }
        let admitted = Admitted {
            conn: conn_of(conn),
            address,
            msg_type,
            claimed,
            nonce,
            message,
            body: frame.body,
        };
        // New work waits for the end of the turn; what completes sessions already
        // under way (probe answers, reports of other connections) goes first, costly
        // frames (registrations) last. A connection's later commands wait behind its
        // queued frame, in the same lane (R-ID-4: nonces reach the engine in the
        // order sent).
        let lane = if self.costly_conns.contains_key(&conn) {
            Some(Lane::Costly)
        } else if self.deferred_conns.contains_key(&conn) {
            Some(Lane::Deferred)
        } else if matches!(admitted.message, Message::RegisterProvider(_)) {
            Some(Lane::Costly)
        } else if matches!(admitted.message, Message::Rfc(_)) {
            Some(Lane::Deferred)
        } else {
            None
        };
        if let Some(lane) = lane {
            if self.would_overflow(&admitted.message) {
                // Shed at the door: an RFC the queue cannot take costs no signature.
                return self.refuse(
                    conn,
                    replies,
                    codes::OVERLOADED,
                    msg_type,
                    nonce,
                    OVERLOADED_REASON.into(),
                );
            }
            let (queue, conns) = self.lane(lane);
            *conns.entry(conn).or_default() += 1;
            queue.push_back(admitted);
            return;
        }
        match self.admit(admitted, now_us) {
            Ok(Outcome::Accepted) => {}
            Ok(Outcome::Cached(frames)) => {
                replies.reply_with(|out| out.extend_from_slice(&frames));
            }
            Err(refused) => self.refuse_with(conn, replies, refused, msg_type, nonce),
        }
    }

    fn end_of_turn(&mut self, now: Instant) -> bool {
        self.now_us(now);
        if !self.accepted.is_empty() {
            self.hand_off();
        }
        if !self.deferred.is_empty() {
            self.admit_deferred(DEFERRED_ADMIT_PER_TURN_MAX);
        }
        if !self.costly.is_empty() {
            // R-PROV-3: after the RFCs; while RFCs wait, one costly frame a turn (so
            // registrations are never starved, and delay a turn by one at most).
            let budget = if self.deferred.is_empty() {
                COSTLY_ADMIT_PER_TURN_MAX
            } else {
                1
            };
            self.admit_lane(Lane::Costly, budget);
        }
        !self.deferred.is_empty() || !self.costly.is_empty()
    }

    fn has_deferred_work(&self) -> bool {
        !self.deferred.is_empty() || !self.costly.is_empty()
    }

    fn on_close(&mut self, conn: ConnId, reason: &CloseReason) {
        // What the connection sent before it closed goes first (all of it: its
        // routes are released below, after its commands took them).
        if !self.accepted.is_empty() {
            self.hand_off();
        }
        if self.deferred_conns.contains_key(&conn) {
            self.admit_deferred(self.deferred.len());
        }
        if self.costly_conns.contains_key(&conn) {
            self.admit_lane(Lane::Costly, self.costly.len());
        }
        self.refusals.closed(conn_of(conn));
        let Some(address) = self.admission.closed(conn_of(conn)) else {
            return;
        };
        self.shared.subscribers.remove(&conn);
        if let Some(address) = address {
            // R-ID-6: the engine thread (the routes' one writer) releases the routes
            // this connection holds, in order with the commands it sent before.
            let closed = SequencerInput::Closed {
                conn: conn.as_u64(),
                address: yellowstone_router_core::to_engine(address),
            };
            let _ = self.shared.inbound.try_send(closed);
        }
        tracing::debug!(conn = conn.as_u64(), %reason, "connection closed");
    }

    fn error_frame(&mut self, refusal: &Refusal, out: &mut Vec<u8>) {
        let (code, reason) = match refusal {
            Refusal::Frame(error) => (codes::of_frame_error(error), error.to_string()),
            Refusal::ConnectionsMax { connections_max } => (
                codes::TOO_MANY_CONNECTIONS,
                format!("the router holds its maximum of {connections_max} connections"),
            ),
            Refusal::LoginTimeout { login_timeout_ms } => (
                codes::LOGIN_TIMEOUT,
                format!("no login within network.login_timeout_ms = {login_timeout_ms} ms"),
            ),
            Refusal::Evicted { connections_open } => (
                codes::EVICTED,
                format!(
                    "closed to make room: {connections_open} connections open, near the \
                     router's limit, and this one was idle without a funded login"
                ),
            ),
        };
        self.shared.count_rejection(code);
        let reply = messages::ErrorReply {
            code,
            ref_msg_type: 0,
            ref_nonce: 0,
            retry_after_ms: 0,
            detail: 0,
            reason,
        };
        Message::from(reply).write_frame(yellowstone_wire::frame::FLAG_RESPONSE, out);
    }
}
