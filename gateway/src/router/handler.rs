//! The router's frame handler, one per gateway thread: login by signed challenge,
//! decode, signature recovery (R-ID-2/3), cheap pre-checks, and the hand-off of
//! authenticated commands to the engine thread. Every refusal is an `ErrorReply`
//! with a stable code; only a broken frame header costs the connection.

use super::shared::{to_engine, to_wire, RouterShared};
use super::signature_cpu::SignatureOp;
use crate::metrics::{Stage, StageRecorder};
use crate::net::{CloseReason, ConnId, FrameHandler, GatewayContext, Refusal, Replies, Standing};
use crate::sequencer::SequencerInput;
use crossbeam_channel::TrySendError;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use yellowstone_engine::{Command, MarketError, OfferSpec, ReportOutcome};
use yellowstone_wire::frame::Frame;
use yellowstone_wire::messages::{self, signed_digest, Message};
use yellowstone_wire::signature::{recover_signer, weights_proof_digest, SigError};
use yellowstone_wire::{codes, Address};

struct ConnState {
    challenge: [u8; 32],
    address: Option<Address>,
    /// A command of this connection went to the engine: its sender may be known to
    /// the engine before the gateways' caches say so (they follow what is durable),
    /// so the unknown-sender pre-check no longer applies to this connection.
    forwarded: bool,
}

/// R-PROV-3: weights proofs checked per second on this gateway thread, at most (a
/// token bucket refilled continuously, holding one second's worth). Past it a
/// registration is refused `overloaded` with a retry-after, before any proof is
/// recovered: what registrations cost the router's CPU is bounded whoever sends them.
struct ProofBudget {
    per_s: u64,
    /// Tokens in thousandths of a proof.
    milli: u64,
    refilled_at: Instant,
}

impl ProofBudget {
    fn new(per_s: u64) -> ProofBudget {
        ProofBudget {
            per_s,
            milli: per_s.saturating_mul(1_000),
            refilled_at: Instant::now(),
        }
    }

    /// Takes `proofs` tokens if there are that many; false (nothing taken) if not.
    fn take(&mut self, proofs: u64, now: Instant) -> bool {
        let elapsed_us = now.saturating_duration_since(self.refilled_at).as_micros() as u64;
        let capacity = self.per_s.saturating_mul(1_000);
        self.milli = self
            .milli
            .saturating_add(elapsed_us.saturating_mul(self.per_s) / 1_000)
            .min(capacity);
        self.refilled_at = now;
        let needed = proofs.saturating_mul(1_000);
        debug_assert!(self.milli <= capacity);
        if needed > self.milli {
            return false;
        }
        self.milli -= needed;
        true
    }
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

/// A logged-in client's signed message, decoded, before its signature is checked.
struct Admitted {
    conn: ConnId,
    /// The address the connection was logged in as when the frame arrived.
    address: Address,
    msg_type: u16,
    claimed: Address,
    nonce: u64,
    message: Message,
    body: bytes::Bytes,
}

/// What became of an admitted message that was not refused.
enum Outcome {
    /// Queued for the engine, which answers it later (through the outbox).
    Accepted,
    /// Needs no engine and no reply: answered with nothing.
    Answered,
    /// Needs no engine (SubscribeBatches): answered with an `Ack` of this nonce.
    Ack(u64),
}

pub struct RouterHandler {
    shared: Arc<RouterShared>,
    context: GatewayContext,
    conns: HashMap<ConnId, ConnState>,
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
    /// Weights proofs of funded senders' registrations (`network.weights_proofs_per_s`).
    proofs_funded: ProofBudget,
    /// Weights proofs of senders without MOR (`network.weights_proofs_unfunded_per_s`).
    proofs_unfunded: ProofBudget,
}

/// The route a command moves to its connection (R-ID-6).
enum RouteKind {
    Provider(Address),
    User(Address),
}

fn route_taken(command: &Command) -> Option<RouteKind> {
    match command {
        Command::RegisterProvider { provider, .. } | Command::ProviderAnnounce { provider, .. } => {
            Some(RouteKind::Provider(to_wire(*provider)))
        }
        Command::SubmitRfc { user, .. } => Some(RouteKind::User(to_wire(*user))),
        _ => None,
    }
}

/// A refusal before the engine: code, reason, and the `ErrorReply.detail` (0 but
/// for the engine's own refusals a pre-check repeats, e.g. a replay's last nonce).
struct Refused {
    code: u16,
    reason: String,
    detail: u128,
}

impl From<(u16, String)> for Refused {
    fn from((code, reason): (u16, String)) -> Refused {
        Refused {
            code,
            reason,
            detail: 0,
        }
    }
}

impl From<MarketError> for Refused {
    /// The refusal the engine itself would give: same code, reason and detail.
    fn from(error: MarketError) -> Refused {
        Refused {
            code: error.code(),
            reason: error.to_string(),
            detail: error.detail(),
        }
    }
}

/// The refusal of a signature, after `context`. R-ID-7: a signature that recovers
/// another address (or none) names the network id the router checks against, since
/// a message signed for another network id is the common cause.
fn sig_refusal(network_id: u32, error: &SigError, context: String) -> Refused {
    let mut reason = context;
    reason.push_str(&error.to_string());
    if matches!(
        error,
        SigError::SignerMismatch { .. } | SigError::BadSignature
    ) {
        reason.push_str(&format!(
            " (this router expects signatures for network id {network_id}; a message \
             signed for another network id recovers another address)"
        ));
    }
    (codes::of_sig_error(error), reason).into()
}

/// The quota gate's check of a logged-in client's RFC (`quota_gate`): only an RFC
/// signed as the login's address (any other is refused `wrong_sender` later).
fn quota_gate_door(
    shared: &RouterShared,
    address: Address,
    claimed: Address,
    message: &Message,
) -> Result<(), Refused> {
    match message {
        Message::Rfc(rfc) if claimed == address => shared
            .quota_gate
            .check(&address, rfc.tokens_max)
            .map_err(Refused::from),
        _ => Ok(()),
    }
}

impl RouterHandler {
    pub fn new(shared: Arc<RouterShared>, context: GatewayContext) -> RouterHandler {
        let stages = shared.registry.stage_recorder();
        let (proofs_funded, proofs_unfunded) = (
            ProofBudget::new(shared.weights_proofs_per_s),
            ProofBudget::new(shared.weights_proofs_unfunded_per_s),
        );
        RouterHandler {
            shared,
            context,
            conns: HashMap::new(),
            stages,
            accepted: Vec::with_capacity(HANDOFF_BATCH_MAX),
            deferred: VecDeque::new(),
            deferred_conns: HashMap::new(),
            costly: VecDeque::new(),
            costly_conns: HashMap::new(),
            proofs_funded,
            proofs_unfunded,
        }
    }

    /// Whether `address` holds MOR, as the engine last applied it (R-QUOTA-6).
    fn is_funded(&self, address: &Address) -> bool {
        self.shared.balances.get(address).is_some_and(|b| *b > 0)
    }

    /// R-PROV-3, R-ID-4: what is certain to be refused, refused before any
    /// signature is recovered and before the engine (so never journaled): a sender
    /// other than the login's, a nonce at or below the last one the engine accepted
    /// from this address (the cache follows what the engine applied, so it is never
    /// ahead of it), an operator command from another address, an RFC from an address
    /// without MOR, and anything but a registration from an address that holds no
    /// MOR and had nothing accepted (it has no registration, RFC or session).
    fn precheck(
        &self,
        conn: ConnId,
        address: Address,
        claimed: Address,
        nonce: u64,
        message: &Message,
    ) -> Result<(), Refused> {
        if claimed != address {
            return Err((
                codes::WRONG_SENDER,
                format!("signed by {claimed}, but this connection logged in as {address}"),
            )
                .into());
        }
        if matches!(message, Message::SubscribeBatches(_)) {
            return Ok(()); // needs no engine and changes nothing
        }
        if let Some(nonce_last) = self.shared.nonces.get(&address).map(|n| *n) {
            if nonce <= nonce_last {
                return Err(MarketError::Replay { nonce_last }.into());
            }
        }
        match message {
            Message::BalanceUpdate(_) | Message::SetParams(_) => {
                if self.shared.operator.is_some_and(|op| op != address) {
                    return Err(MarketError::NotOperator.into());
                }
            }
            Message::RegisterProvider(_) => {}
            // R-QUOTA-6: the engine would refuse it too; this spares the engine
            // thread a sybil flood.
            Message::Rfc(_) if !self.is_funded(&address) => {
                return Err(MarketError::ZeroBalance.into())
            }
            _ => {
                let known = self.is_funded(&address)
                    || self.shared.nonces.contains_key(&address)
                    || self.conns.get(&conn).is_some_and(|c| c.forwarded);
                if !known {
                    return Err((
                        codes::UNKNOWN_SENDER,
                        format!(
                            "{address} holds no MOR and nothing from it was accepted: only a \
                             RegisterProvider can be applied"
                        ),
                    )
                        .into());
                }
            }
        }
        Ok(())
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

    /// Checks a logged-in client's message (queue room first, then its signature
    /// R-ID-2, its sender, the pre-checks) and queues its command for the engine
    /// (handed off at the end of the turn, or at once when a batch is full), or
    /// says how to answer it now.
    fn admit(&mut self, admitted: Admitted) -> Result<Outcome, Refused> {
        let Admitted {
            conn,
            address,
            msg_type,
            claimed,
            nonce,
            message,
            body,
        } = admitted;
        if self.would_overflow(&message) {
            return Err((codes::OVERLOADED, OVERLOADED_REASON.to_string()).into());
        }
        // Cheap before costly (R-PROV-3): the sender and whether its message can be
        // applied at all are known before any signature is recovered.
        self.precheck(conn, address, claimed, nonce, &message)?;
        let verify_started = Instant::now();
        let verified = self.shared.signature_cpu.measure(SignatureOp::Verify, || {
            message.verify(self.shared.network_id, &body)
        });
        if let Err(error) = verified {
            return Err(sig_refusal(self.shared.network_id, &error, String::new()));
        }
        self.stages
            .record_ns(Stage::Verify, verify_started.elapsed().as_nanos() as u64);
        let is_subscribe = matches!(message, Message::SubscribeBatches(_));
        let Some(command) = self.command_for(conn, address, message, &body)? else {
            // Whatever needs no engine is answered now: nothing stays in flight.
            return Ok(if is_subscribe {
                Outcome::Ack(nonce)
            } else {
                Outcome::Answered
            });
        };
        if let Some(state) = self.conns.get_mut(&conn) {
            state.forwarded = true;
        }
        self.accepted.push(Accepted {
            conn,
            msg_type,
            nonce,
            command,
        });
        // Stays in flight until the engine's effects answer it through the outbox (or
        // it is refused there if the queue cannot take it at the end of the turn after
        // all): a connection half-closed meanwhile waits for that answer (R-ID-6).
        if self.accepted.len() >= HANDOFF_BATCH_MAX {
            self.hand_off();
        }
        Ok(Outcome::Accepted)
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
            let (conn, msg_type, nonce) = (admitted.conn, admitted.msg_type, admitted.nonce);
            match conns.get_mut(&conn) {
                Some(count) if *count > 1 => *count -= 1,
                _ => {
                    conns.remove(&conn);
                }
            }
            let sent = match self.admit(admitted) {
                Ok(Outcome::Accepted) => continue,
                Ok(Outcome::Answered) => self.context.outbox.answer(conn, 1),
                Ok(Outcome::Ack(nonce)) => {
                    let mut frame = Vec::new();
                    Message::from(messages::Ack { nonce })
                        .write_frame(yellowstone_wire::frame::FLAG_RESPONSE, &mut frame);
                    self.context.outbox.reply(conn, frame)
                }
                Err(refused) => {
                    let mut frame = Vec::new();
                    self.error_reply_with(refused, msg_type, nonce)
                        .write_frame(yellowstone_wire::frame::FLAG_RESPONSE, &mut frame);
                    self.context.outbox.reply(conn, frame)
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
            // R-ID-6: the route moves to the connection that registers, announces or
            // submits, before the engine can answer with something to route.
            let sent = match route_taken(&command) {
                Some(RouteKind::Provider(provider)) => {
                    self.shared
                        .routes
                        .move_provider_then(provider, conn, || send(command))
                }
                Some(RouteKind::User(user)) => {
                    self.shared.routes.user.insert(user, conn);
                    send(command)
                }
                None => send(command),
            };
            let (code, reason) = match sent {
                Ok(()) => {
                    self.shared.commands_total.inc();
                    continue;
                }
                Err(true) => (codes::OVERLOADED, OVERLOADED_REASON),
                Err(false) => (codes::SHUTTING_DOWN, "router shutting down"),
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

    fn refuse_with(
        &self,
        replies: &mut Replies<'_>,
        refused: Refused,
        ref_msg_type: u16,
        ref_nonce: u64,
    ) {
        let reply = self.error_reply_with(refused, ref_msg_type, ref_nonce);
        replies.reply_with(|out| reply.write_frame(yellowstone_wire::frame::FLAG_RESPONSE, out));
    }

    fn refuse(
        &self,
        replies: &mut Replies<'_>,
        code: u16,
        ref_msg_type: u16,
        ref_nonce: u64,
        reason: String,
    ) {
        let reply = self.error_reply(code, ref_msg_type, ref_nonce, reason);
        replies.reply_with(|out| reply.write_frame(yellowstone_wire::frame::FLAG_RESPONSE, out));
    }

    fn login(
        &mut self,
        conn: ConnId,
        answer: &messages::LoginAnswer,
        body: &[u8],
    ) -> Result<Address, Refused> {
        let state = self
            .conns
            .get_mut(&conn)
            .ok_or((codes::NOT_LOGGED_IN, "unknown connection".to_string()))?;
        if answer.challenge != state.challenge {
            return Err((
                codes::NOT_ALLOWED,
                "login answer does not carry this connection's challenge".to_string(),
            )
                .into());
        }
        let message = Message::LoginAnswer(answer.clone());
        let address = self
            .shared
            .signature_cpu
            .measure(SignatureOp::Verify, || {
                message.verify(self.shared.network_id, body)
            })
            .map_err(|e| sig_refusal(self.shared.network_id, &e, String::new()))?;
        // R-ID-6: a login takes no route; registering, announcing or submitting does.
        state.address = Some(address);
        Ok(address)
    }

    /// Maps a verified client message to the engine command it asks for.
    fn command_for(
        &mut self,
        conn: ConnId,
        from: Address,
        message: Message,
        body: &[u8],
    ) -> Result<Option<Command>, Refused> {
        let origin = to_engine(from);
        let network_id = self.shared.network_id;
        let command = match message {
            Message::RegisterProvider(m) => {
                if m.endpoint.len() > messages::ENDPOINT_BYTES_MAX {
                    return Err((codes::BAD_FIELD, "endpoint too long".to_string()).into());
                }
                // R-PROV-3: what the catalog alone refuses costs no proof check.
                for (i, offer) in m.offers.iter().enumerate() {
                    match self.shared.models.get(&offer.model_id) {
                        None => {
                            return Err(MarketError::UnknownModel {
                                model: offer.model_id,
                            }
                            .into())
                        }
                        Some(hash) if *hash != offer.weights_hash => {
                            return Err(MarketError::WeightsHashMismatch {
                                model: offer.model_id,
                            }
                            .into())
                        }
                        Some(_) => {}
                    }
                    if m.offers[..i].iter().any(|o| o.model_id == offer.model_id) {
                        return Err(MarketError::DuplicateModel {
                            model: offer.model_id,
                        }
                        .into());
                    }
                }
                // R-PROV-3: the proofs cost one signature recovery each; their
                // budget is taken before any is checked, from the unfunded one for
                // a sender without MOR (sybils compete only among themselves).
                let funded = self.is_funded(&from);
                let budget = if funded {
                    &mut self.proofs_funded
                } else {
                    &mut self.proofs_unfunded
                };
                if !budget.take(m.offers.len() as u64, Instant::now()) {
                    return Err((
                        codes::OVERLOADED,
                        format!(
                            "weights proofs: {} offers over this gateway's budget of {} \
                             proofs a second (network.weights_proofs{}_per_s); retry after \
                             the given delay",
                            m.offers.len(),
                            budget.per_s,
                            if funded { "" } else { "_unfunded" }
                        ),
                    )
                        .into());
                }
                let mut offers = Vec::with_capacity(m.offers.len());
                for offer in &m.offers {
                    // R-PROV-1: the weights hash must be signed by the provider itself.
                    let digest =
                        weights_proof_digest(network_id, offer.model_id, &offer.weights_hash);
                    let signer = self.shared.signature_cpu.measure(SignatureOp::Verify, || {
                        recover_signer(&digest, &offer.weights_proof)
                    });
                    match signer {
                        Ok(signer) if signer == from => {}
                        Ok(recovered) => {
                            return Err(sig_refusal(
                                network_id,
                                &SigError::SignerMismatch { recovered },
                                format!("weights proof of model {}: ", offer.model_id),
                            ))
                        }
                        Err(e) => {
                            return Err(sig_refusal(
                                network_id,
                                &e,
                                format!("weights proof of model {}: ", offer.model_id),
                            ))
                        }
                    }
                    offers.push(OfferSpec {
                        model: offer.model_id,
                        unit: offer.unit,
                        weights_hash: offer.weights_hash,
                        price_wei_per_token: offer.price_wei_per_token,
                        capacity: offer.capacity,
                    });
                }
                Command::RegisterProvider {
                    provider: origin,
                    nonce: m.nonce,
                    endpoint: m.endpoint.into_bytes(),
                    offers,
                }
            }
            Message::UpdateBid(m) => Command::UpdateBid {
                provider: origin,
                nonce: m.nonce,
                model: m.model_id,
                price_wei_per_token: m.price_wei_per_token,
                capacity: m.capacity,
            },
            Message::WithdrawBid(m) => Command::WithdrawBid {
                provider: origin,
                nonce: m.nonce,
                model: m.model_id,
            },
            Message::ProviderAnnounce(m) => Command::ProviderAnnounce {
                provider: origin,
                nonce: m.nonce,
            },
            Message::ProbeAnswer(m) => Command::ProbeAnswer {
                provider: origin,
                nonce: m.nonce,
                probe: m.probe_id,
            },
            Message::Rfc(m) => {
                // The zero-balance pre-check ran in `precheck`.
                Command::SubmitRfc {
                    user: origin,
                    nonce: m.nonce,
                    model: m.model_id,
                    tokens_max: m.tokens_max,
                    expires_at_ms: m.expires_at_ms,
                }
            }
            Message::RfcCancel(m) => Command::CancelRfc {
                user: origin,
                nonce: m.nonce,
                rfc: m.rfc_id,
            },
            Message::Report(m) => {
                let report_digest =
                    signed_digest(network_id, messages::msg_type::REPORT, body).unwrap_or_default();
                // R-REPORT-2: the outcome byte was checked by the decoder
                // (any other byte is `bad_field`).
                let outcome = match m.outcome {
                    messages::Outcome::Fail => ReportOutcome::Fail,
                    messages::Outcome::Pass => ReportOutcome::Pass,
                    messages::Outcome::Void => ReportOutcome::Void,
                };
                Command::Report {
                    user: origin,
                    nonce: m.nonce,
                    session: m.session_id,
                    elapsed_ms: m.elapsed_ms,
                    ttft_ms: m.ttft_ms,
                    tokens: m.tokens,
                    prompt_tokens: m.prompt_tokens,
                    outcome,
                    report_digest,
                }
            }
            Message::SessionStart(m) => Command::StartSession {
                provider: origin,
                nonce: m.nonce,
                session: m.session_id,
            },
            Message::SubscribeBatches(_) => {
                self.shared.subscribers.insert(conn, ());
                return Ok(None);
            }
            Message::Claim(m) => Command::Claim {
                provider: origin,
                nonce: m.nonce,
                amount_wei: m.amount_wei,
            },
            Message::BalanceUpdate(m) => {
                // R-QUOTA-6: the pre-check cache is written from the engine's
                // `BalancesSet` effect (sink.rs), never from the request: a refused
                // update (replayed nonce, not the operator, over a limit) changes
                // nothing.
                let entries = m
                    .entries
                    .iter()
                    .map(|e| (to_engine(e.address), e.balance_wei))
                    .collect();
                Command::SetBalances {
                    operator: origin,
                    nonce: m.nonce,
                    entries,
                }
            }
            Message::SetParams(m) => Command::SetParams {
                operator: origin,
                nonce: m.nonce,
                params: m.params.iter().map(|p| (p.param_id, p.value)).collect(),
            },
            // R-CHAIN-3: the engine checks the operator, the domain and the bounds.
            Message::ChainPaid(m) => Command::ChainPaid {
                operator: origin,
                nonce: m.nonce,
                chain_id: m.chain_id,
                contract: to_engine(m.contract),
                entries: m
                    .entries
                    .iter()
                    .map(|e| (to_engine(e.provider), e.paid_to_wei))
                    .collect(),
            },
            other => {
                return Err((
                    codes::NOT_ALLOWED,
                    format!("{} is not sent by clients", other.name()),
                )
                    .into())
            }
        };
        Ok(Some(command))
    }
}

impl FrameHandler for RouterHandler {
    fn on_open(&mut self, conn: ConnId, _peer: Option<SocketAddr>) {
        let challenge: [u8; 32] = rand::random();
        self.conns.insert(
            conn,
            ConnState {
                challenge,
                address: None,
                forwarded: false,
            },
        );
        let hello = messages::LoginChallenge {
            challenge,
            network_id: self.shared.network_id,
            router: self.shared.router_key.address(),
        };
        // Like every frame the router sends, flagged FLAG_RESPONSE.
        let mut frame = Vec::with_capacity(72);
        Message::from(hello).write_frame(yellowstone_wire::frame::FLAG_RESPONSE, &mut frame);
        let _ = self.context.outbox.send(conn, frame);
    }

    fn on_frame(&mut self, conn: ConnId, frame: Frame, replies: &mut Replies<'_>) {
        let started = Instant::now();
        let msg_type = frame.header.msg_type;
        let message = match Message::decode(msg_type, &frame.body) {
            Ok(message) => message,
            Err(error) => {
                // The nonce, when it can be read at its fixed offset, names the
                // message refused (every signed client message alike).
                let nonce = Message::nonce_at_fixed_offset(msg_type, &frame.body).unwrap_or(0);
                return self.refuse(
                    replies,
                    codes::of_decode_error(&error),
                    msg_type,
                    nonce,
                    error.to_string(),
                );
            }
        };
        self.stages
            .record_ns(Stage::Decode, started.elapsed().as_nanos() as u64);
        let logged_in = self.conns.get(&conn).and_then(|s| s.address);
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
                match self.login(conn, answer, &frame.body) {
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
                    Err(refused) => self.refuse_with(replies, refused, msg_type, 0),
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
                replies,
                codes::NOT_ALLOWED,
                msg_type,
                0,
                format!("{} is not sent by clients", message.name()),
            );
        };
        // R-QUOTA-5, R-PROV-3: an RFC past its sender's quota, refused at the door
        // as the engine would, before any signature work or a place in a lane.
        if let Err(refused) = quota_gate_door(&self.shared, address, claimed, &message) {
            return self.refuse_with(replies, refused, msg_type, nonce);
        }
        let admitted = Admitted {
            conn,
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
        match self.admit(admitted) {
            Ok(Outcome::Accepted) => {}
            Ok(Outcome::Answered) => replies.answer(),
            Ok(Outcome::Ack(nonce)) => {
                let ack = Message::from(messages::Ack { nonce });
                replies
                    .reply_with(|out| ack.write_frame(yellowstone_wire::frame::FLAG_RESPONSE, out));
            }
            Err(refused) => self.refuse_with(replies, refused, msg_type, nonce),
        }
    }

    fn end_of_turn(&mut self) -> bool {
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
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        self.shared.subscribers.remove(&conn);
        if let Some(address) = state.address {
            // R-ID-6: only the routes this connection holds go; only then is the
            // provider unreachable (a newer connection keeps it reachable).
            let inbound = &self.shared.inbound;
            self.shared.routes.release(&address, conn, || {
                let command = Command::ProviderDisconnected {
                    provider: to_engine(address),
                };
                let _ = inbound.try_send(SequencerInput::Command {
                    origin: crate::sequencer::ORIGIN_INTERNAL,
                    command,
                });
            });
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
