//! From engine effects to frames (on the engine thread). Session tickets and credit
//! batches (R-ID-5) are signed on a gateway thread, as jobs in its outbox lane: a
//! signature costs tens of microseconds, the engine's whole lifecycle about one, and
//! the gateway threads already wake for the sends the signature feeds.

use super::shared::{to_wire, RouterShared};
use super::signature_cpu::SignatureOp;
use crate::net::{ConnId, Outbox};
use crate::sequencer::{release_of, EffectSink, Origin, Release, ORIGIN_INTERNAL};
use std::sync::Arc;
use yellowstone_contract::SignedSettlement;
use yellowstone_engine::{
    BatchApplied, Command, CreditBatch, CreditReason, Effect, RfcFailure, Ticket,
};
use yellowstone_wire::frame::FLAG_RESPONSE;
use yellowstone_wire::messages::{self, msg_type, Message};
use yellowstone_wire::Address;

pub struct RouterSink {
    shared: Arc<RouterShared>,
    outbox: Outbox,
    /// `threads.ticket_signing = "engine"`: sign tickets here instead of in a
    /// gateway job.
    sign_on_engine: bool,
}

/// The wire type of the message a command came from, for `ErrorReply.ref_msg_type`.
fn wire_type_of(command: &Command) -> u16 {
    match command {
        Command::SetBalances { .. } => msg_type::BALANCE_UPDATE,
        Command::SetParams { .. } => msg_type::SET_PARAMS,
        Command::RegisterProvider { .. } => msg_type::REGISTER_PROVIDER,
        Command::UpdateBid { .. } => msg_type::UPDATE_BID,
        Command::WithdrawBid { .. } => msg_type::WITHDRAW_BID,
        Command::ProviderAnnounce { .. } => msg_type::PROVIDER_ANNOUNCE,
        Command::SubmitRfc { .. } => msg_type::RFC,
        Command::CancelRfc { .. } => msg_type::RFC_CANCEL,
        Command::ProbeAnswer { .. } => msg_type::PROBE_ANSWER,
        Command::Report { .. } => msg_type::REPORT,
        Command::StartSession { .. } => msg_type::SESSION_START,
        Command::Claim { .. } => msg_type::CLAIM,
        Command::ChainPaid { .. } => msg_type::CHAIN_PAID,
        Command::Tick
        | Command::ProviderDisconnected { .. }
        | Command::LoadBalanceSnapshot { .. }
        | Command::RouterStarted
        | Command::SetSettlementDomain { .. } => 0,
    }
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

/// Where a provider's pushed messages go (R-ID-6).
fn route_provider(shared: &RouterShared, address: Address) -> Option<ConnId> {
    shared.routes.provider(&address)
}

/// Where a user's pushed messages go (R-ID-6).
fn route_user(shared: &RouterShared, address: Address) -> Option<ConnId> {
    shared.routes.user(&address)
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
        }
    }
}

impl EffectSink for RouterSink {
    fn deliver(&mut self, origin: Origin, command: &Command, effects: &[Effect]) {
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
    /// Turns effects into frames through `out` (in effect order).
    fn send_effects(&self, out: &mut Delivery<'_>, command: &Command, effects: &[Effect]) {
        let shared = &*self.shared;
        for effect in effects {
            match effect {
                Effect::Rejected { to, nonce, error } => {
                    shared.count_rejection(error.code());
                    let reply = messages::ErrorReply {
                        code: error.code(),
                        ref_msg_type: wire_type_of(command),
                        ref_nonce: *nonce,
                        retry_after_ms: error.retry_after_ms(),
                        detail: error.detail(),
                        reason: error.to_string(),
                    };
                    out.reply(route_user(shared, to_wire(*to)), reply.into());
                }
                Effect::RfcAccepted {
                    user,
                    nonce,
                    rfc,
                    tokens_left,
                } => {
                    let reply = messages::RfcAccepted {
                        nonce: *nonce,
                        rfc_id: *rfc,
                        tokens_left: *tokens_left,
                    };
                    out.reply(route_user(shared, to_wire(*user)), reply.into());
                }
                Effect::Probe {
                    provider,
                    probe,
                    model,
                    tokens_max,
                    deadline_ms,
                } => {
                    let probe = messages::Probe {
                        probe_id: *probe,
                        model_id: *model,
                        tokens_max: *tokens_max,
                        deadline_ms: *deadline_ms,
                    };
                    out.push(route_provider(shared, to_wire(*provider)), probe.into());
                }
                Effect::SessionOpened { ticket } if self.sign_on_engine => {
                    out.flush();
                    sign_and_send_ticket(shared, &self.outbox, ticket);
                }
                Effect::SessionOpened { ticket } => {
                    out.flush();
                    // Signed on the thread of the provider that just answered the
                    // probe (else the user's): it is awake for that connection anyway.
                    let near = out
                        .origin
                        .or_else(|| route_provider(shared, to_wire(ticket.provider)))
                        .or_else(|| route_user(shared, to_wire(ticket.user)));
                    let (job_shared, ticket) = (self.shared.clone(), ticket.clone());
                    let queued = near.is_some_and(|conn| {
                        let job = Box::new(move |outbox: &Outbox| {
                            sign_and_send_ticket(&job_shared, outbox, &ticket)
                        });
                        self.outbox.run_near(conn, job).is_ok()
                    });
                    if !queued {
                        shared.replies_dropped_total.inc();
                    }
                }
                Effect::RfcFailed {
                    user,
                    nonce,
                    rfc,
                    reason,
                    refunded_tokens,
                } => {
                    let reason = match reason {
                        RfcFailure::Expired => 1,
                        RfcFailure::NoProvider => 2,
                        RfcFailure::Cancelled => 3,
                    };
                    let reply = messages::RfcFailed {
                        nonce: *nonce,
                        rfc_id: *rfc,
                        reason,
                        refunded_tokens: *refunded_tokens,
                    };
                    out.push(route_user(shared, to_wire(*user)), reply.into());
                }
                Effect::ReportAccepted {
                    user,
                    nonce,
                    session,
                    reason,
                    earned_wei,
                } => {
                    let earned = matches!(
                        reason,
                        CreditReason::Earned | CreditReason::EarnedDespiteFail
                    );
                    // R-BLOCK-2: earned, subject to the day's cap at the block's seal.
                    let reply = messages::ReportAck {
                        nonce: *nonce,
                        session_id: *session,
                        earned,
                        reason: *reason as u8,
                        earned_wei: *earned_wei,
                    };
                    out.reply(route_user(shared, to_wire(*user)), reply.into());
                }
                // R-SESSION-1: as an expiry, nothing to send: the user's report
                // would be refused `session_not_started`.
                Effect::SessionExpired { .. } | Effect::SessionNotStarted { .. } => {}
                Effect::ProviderUnreachable { provider } => {
                    let notice = messages::Notice {
                        kind: messages::NOTICE_UNREACHABLE,
                        until_ms: 0,
                    };
                    out.push(route_provider(shared, to_wire(*provider)), notice.into());
                }
                Effect::ProviderSuspended { provider, until_ms } => {
                    let notice = messages::Notice {
                        kind: messages::NOTICE_SUSPENDED,
                        until_ms: *until_ms,
                    };
                    out.push(route_provider(shared, to_wire(*provider)), notice.into());
                }
                Effect::ProviderUnfunded { provider } => {
                    let notice = messages::Notice {
                        kind: messages::NOTICE_UNFUNDED,
                        until_ms: 0,
                    };
                    out.push(route_provider(shared, to_wire(*provider)), notice.into());
                }
                Effect::BatchSealed { batch, applied } => {
                    out.flush();
                    let (job_shared, batch, applied) =
                        (self.shared.clone(), batch.clone(), applied.clone());
                    let job = Box::new(move |outbox: &Outbox| {
                        sign_and_send_batch(&job_shared, outbox, &batch, &applied)
                    });
                    // Once a block: the first gateway thread signs it.
                    if self.outbox.run_on(0, job).is_err() {
                        shared.replies_dropped_total.inc();
                    }
                }
                Effect::SettlementSealed {
                    settlement,
                    chain_id,
                    contract,
                } => {
                    let (job_shared, settlement, chain_id, contract) = (
                        self.shared.clone(),
                        settlement.clone(),
                        *chain_id,
                        *contract,
                    );
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
                Effect::ClaimPaid {
                    provider,
                    nonce,
                    amount_wei,
                    owed_left_wei,
                } => {
                    let reply = messages::ClaimAck {
                        nonce: *nonce,
                        amount_wei: *amount_wei,
                        owed_left_wei: *owed_left_wei,
                    };
                    out.reply(route_provider(shared, to_wire(*provider)), reply.into());
                }
                Effect::BalancesSet { entries } => {
                    // R-QUOTA-6: the pre-check cache follows what the engine applied.
                    for (address, balance_wei) in entries {
                        shared.balances.insert(to_wire(*address), *balance_wei);
                    }
                }
                Effect::Done { to, nonce } => {
                    let ack = messages::Ack { nonce: *nonce };
                    out.reply(
                        route_provider(shared, to_wire(*to))
                            .or_else(|| route_user(shared, to_wire(*to))),
                        ack.into(),
                    );
                }
            }
        }
    }
}

/// Builds the router-signed credit batch message (R-BLOCK-2).
pub fn batch_message(batch: &CreditBatch, applied: &BatchApplied) -> Message {
    Message::from(messages::CreditBatch {
        block: batch.block,
        merkle_root: batch.merkle_root,
        receipts: batch.receipts,
        credited_wei: applied.credited_wei,
        shortfall_wei: applied.shortfall_wei,
        totals: batch
            .totals
            .iter()
            .map(|t| messages::BatchTotals {
                provider: to_wire(t.provider),
                earned_wei: t.earned_wei,
                credited_wei: t.credited_wei,
                tokens: t.tokens,
                sessions: t.sessions,
            })
            .collect(),
        signature: Default::default(),
    })
}

/// Signs `message` with the router key (timed as signature work) into a frame
/// flagged as the router's.
fn signed_frame(shared: &RouterShared, message: &mut Message) -> Vec<u8> {
    let mut frame = shared.signature_cpu.measure(SignatureOp::Sign, || {
        message.sign(&shared.router_key, shared.network_id)
    });
    frame[3] |= FLAG_RESPONSE;
    frame
}

/// Signs a session ticket and sends it to both sides (R-MATCH-6); runs on a
/// gateway thread.
fn sign_and_send_ticket(shared: &RouterShared, outbox: &Outbox, ticket: &Ticket) {
    let mut message = Message::from(messages::SessionTicket {
        session_id: ticket.session,
        user: to_wire(ticket.user),
        provider: to_wire(ticket.provider),
        endpoint: String::from_utf8_lossy(&ticket.endpoint).into_owned(),
        model_id: ticket.model,
        tokens_max: ticket.tokens_max,
        price_wei_per_token: ticket.price_wei_per_token,
        expires_at_ms: ticket.expires_at_ms,
        rfc_nonce: ticket.rfc_nonce,
        signature: Default::default(),
    });
    let frame = signed_frame(shared, &mut message);
    let routes = [
        route_provider(shared, to_wire(ticket.provider)),
        route_user(shared, to_wire(ticket.user)),
    ];
    for route in routes {
        match route {
            Some(conn) if outbox.send(conn, frame.clone()).is_ok() => {}
            _ => shared.replies_dropped_total.inc(),
        }
    }
}

/// Signs a credit batch and sends it to every subscriber; runs on a gateway thread.
fn sign_and_send_batch(
    shared: &RouterShared,
    outbox: &Outbox,
    batch: &CreditBatch,
    applied: &BatchApplied,
) {
    let frame = signed_frame(shared, &mut batch_message(batch, applied));
    send_to_subscribers(shared, outbox, frame);
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
