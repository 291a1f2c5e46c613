//! The router's frame handler, one per gateway thread: login by signed challenge,
//! decode, signature recovery (R-ID-2/3), cheap pre-checks, and the hand-off of
//! authenticated commands to the engine thread. Every refusal is an `ErrorReply`
//! with a stable code; only a broken frame header costs the connection.

use super::shared::{to_engine, to_wire, RouterShared};
use super::signature_cpu::SignatureOp;
use crate::metrics::{Stage, StageRecorder};
use crate::net::{CloseReason, ConnId, FrameHandler, GatewayContext, Refusal, Replies};
use crate::sequencer::SequencerInput;
use crossbeam_channel::TrySendError;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use yellowstone_engine::{Command, OfferSpec};
use yellowstone_wire::frame::Frame;
use yellowstone_wire::messages::{self, signed_digest, Message};
use yellowstone_wire::signature::{recover_signer, weights_proof_digest, SigError};
use yellowstone_wire::{codes, Address};

struct ConnState {
    challenge: [u8; 32],
    address: Option<Address>,
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

/// A refusal before the engine: code, reason.
type Refused = (u16, String);

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
    (codes::of_sig_error(error), reason)
}

impl RouterHandler {
    pub fn new(shared: Arc<RouterShared>, context: GatewayContext) -> RouterHandler {
        let stages = shared.registry.stage_recorder();
        RouterHandler {
            shared,
            context,
            conns: HashMap::new(),
            stages,
            accepted: Vec::with_capacity(HANDOFF_BATCH_MAX),
            deferred: VecDeque::new(),
            deferred_conns: HashMap::new(),
        }
    }

    /// Whether the engine's queue is full counting what this turn holds back: the
    /// command would be refused OVERLOADED. Checked before the signature, so a
    /// message that will be refused costs no verification. SubscribeBatches needs
    /// no engine and is never refused for it.
    fn would_overflow(&self, message: &Message) -> bool {
        if matches!(message, Message::SubscribeBatches(_)) {
            return false;
        }
        let queued = self.shared.inbound.len() + self.accepted.len() + self.deferred.len();
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
            return Err((codes::OVERLOADED, OVERLOADED_REASON.into()));
        }
        let verify_started = Instant::now();
        let verified = self.shared.signature_cpu.measure(SignatureOp::Verify, || {
            message.verify(self.shared.network_id, &body)
        });
        if let Err(error) = verified {
            return Err(sig_refusal(self.shared.network_id, &error, String::new()));
        }
        self.stages
            .record_ns(Stage::Verify, verify_started.elapsed().as_nanos() as u64);
        if claimed != address {
            return Err((
                codes::WRONG_SENDER,
                format!("signed by {claimed}, but this connection logged in as {address}"),
            ));
        }
        let is_subscribe = matches!(message, Message::SubscribeBatches(_));
        let Some(command) = self.command_for(conn, address, message, &body)? else {
            // Whatever needs no engine is answered now: nothing stays in flight.
            return Ok(if is_subscribe {
                Outcome::Ack(nonce)
            } else {
                Outcome::Answered
            });
        };
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

    /// Admits up to `budget` deferred messages, oldest first, answering through
    /// the outbox (the frames are still in flight), then hands the commands off.
    fn admit_deferred(&mut self, budget: usize) {
        for _ in 0..budget {
            let Some(admitted) = self.deferred.pop_front() else {
                break;
            };
            let (conn, msg_type, nonce) = (admitted.conn, admitted.msg_type, admitted.nonce);
            match self.deferred_conns.get_mut(&conn) {
                Some(count) if *count > 1 => *count -= 1,
                _ => {
                    self.deferred_conns.remove(&conn);
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
                Err((code, reason)) => {
                    let mut frame = Vec::new();
                    self.error_reply(code, msg_type, nonce, reason)
                        .write_frame(yellowstone_wire::frame::FLAG_RESPONSE, &mut frame);
                    self.context.outbox.reply(conn, frame)
                }
            };
            // A full lane drops the bytes but never the answer mark.
            if sent.is_err() {
                self.shared.replies_dropped_total.inc();
            }
        }
        debug_assert_eq!(
            self.deferred_conns
                .values()
                .map(|&n| n as usize)
                .sum::<usize>(),
            self.deferred.len()
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
                "login answer does not carry this connection's challenge".into(),
            ));
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
                    return Err((codes::BAD_FIELD, "endpoint too long".into()));
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
                // Pre-check (R-QUOTA-6): the engine would refuse it too, but this
                // spares the journal and the engine thread a sybil flood.
                if self.shared.balances.get(&from).is_none_or(|b| *b == 0) {
                    return Err((0x0202, "zero MOR balance: cannot submit requests".into()));
                }
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
                Command::Report {
                    user: origin,
                    nonce: m.nonce,
                    session: m.session_id,
                    elapsed_ms: m.elapsed_ms,
                    tokens: m.tokens,
                    pass: m.pass,
                    report_digest,
                }
            }
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
                ))
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
                return self.refuse(
                    replies,
                    codes::of_decode_error(&error),
                    msg_type,
                    0,
                    error.to_string(),
                )
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
                        let ok = Message::from(messages::LoginOk { address });
                        replies.reply_with(|out| {
                            ok.write_frame(yellowstone_wire::frame::FLAG_RESPONSE, out)
                        });
                    }
                    Err((code, reason)) => self.refuse(replies, code, msg_type, 0, reason),
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
            (_, Some(address)) => address,
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
        // under way (probe answers, reports of other connections) goes first. A
        // connection's later commands wait behind its deferred RFC (R-ID-4: nonces
        // reach the engine in the order sent).
        if matches!(admitted.message, Message::Rfc(_)) || self.deferred_conns.contains_key(&conn) {
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
            *self.deferred_conns.entry(conn).or_default() += 1;
            self.deferred.push_back(admitted);
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
            Err((code, reason)) => self.refuse(replies, code, msg_type, nonce, reason),
        }
    }

    fn end_of_turn(&mut self) -> bool {
        if !self.accepted.is_empty() {
            self.hand_off();
        }
        if !self.deferred.is_empty() {
            self.admit_deferred(DEFERRED_ADMIT_PER_TURN_MAX);
        }
        !self.deferred.is_empty()
    }

    fn has_deferred_work(&self) -> bool {
        !self.deferred.is_empty()
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
