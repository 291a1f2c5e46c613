//! From engine effects to frames (on the engine thread), and the signer threads that
//! sign tickets and credit batches (R-ID-5) off the engine thread: a signature costs
//! tens of microseconds, the engine's whole lifecycle about one.

use super::shared::{to_wire, RouterShared};
use crate::net::{ConnId, Outbox};
use crate::sequencer::{EffectSink, Origin, ORIGIN_INTERNAL};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use yellowstone_engine::{
    BatchApplied, Command, CreditBatch, CreditReason, Effect, RfcFailure, Ticket,
};
use yellowstone_wire::frame::FLAG_RESPONSE;
use yellowstone_wire::messages::{self, msg_type, Message};
use yellowstone_wire::Address;

pub enum SignJob {
    Ticket(Ticket),
    Batch(CreditBatch, BatchApplied),
}

pub struct RouterSink {
    shared: Arc<RouterShared>,
    outbox: Outbox,
    signer: Sender<SignJob>,
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
        Command::Claim { .. } => msg_type::CLAIM,
        Command::Tick | Command::ProviderDisconnected { .. } => 0,
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

fn route(shared: &RouterShared, address: Address) -> Option<ConnId> {
    shared.routes.get(&address).map(|c| *c)
}

impl RouterSink {
    pub fn new(shared: Arc<RouterShared>, outbox: Outbox, signer: Sender<SignJob>) -> RouterSink {
        RouterSink {
            shared,
            outbox,
            signer,
        }
    }

    fn origin_or_route(&self, origin: Origin, address: Address) -> Option<ConnId> {
        if origin != ORIGIN_INTERNAL {
            return Some(ConnId::from_u64(origin));
        }
        route(&self.shared, address)
    }
}

impl EffectSink for RouterSink {
    fn deliver(&mut self, origin: Origin, command: &Command, effects: &[Effect]) {
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
                    send(
                        shared,
                        &self.outbox,
                        self.origin_or_route(origin, to_wire(*to)),
                        reply.into(),
                    );
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
                    send(
                        shared,
                        &self.outbox,
                        self.origin_or_route(origin, to_wire(*user)),
                        reply.into(),
                    );
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
                    send(
                        shared,
                        &self.outbox,
                        route(shared, to_wire(*provider)),
                        probe.into(),
                    );
                }
                Effect::SessionOpened { ticket } => {
                    if self.signer.send(SignJob::Ticket(ticket.clone())).is_err() {
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
                    send(
                        shared,
                        &self.outbox,
                        route(shared, to_wire(*user)),
                        reply.into(),
                    );
                }
                Effect::ReportAccepted {
                    user,
                    nonce,
                    session,
                    reason,
                    amount_wei,
                } => {
                    let credited = matches!(
                        reason,
                        CreditReason::Credited | CreditReason::CreditedDespiteFail
                    );
                    let reply = messages::ReportAck {
                        nonce: *nonce,
                        session_id: *session,
                        credited,
                        reason: *reason as u8,
                        amount_wei: *amount_wei,
                    };
                    send(
                        shared,
                        &self.outbox,
                        self.origin_or_route(origin, to_wire(*user)),
                        reply.into(),
                    );
                }
                Effect::SessionExpired { .. } => {}
                Effect::ProviderUnreachable { provider } => {
                    send(
                        shared,
                        &self.outbox,
                        route(shared, to_wire(*provider)),
                        messages::Notice {
                            kind: 1,
                            until_ms: 0,
                        }
                        .into(),
                    );
                }
                Effect::ProviderSuspended { provider, until_ms } => {
                    send(
                        shared,
                        &self.outbox,
                        route(shared, to_wire(*provider)),
                        messages::Notice {
                            kind: 2,
                            until_ms: *until_ms,
                        }
                        .into(),
                    );
                }
                Effect::BatchSealed { batch, applied } => {
                    if self
                        .signer
                        .send(SignJob::Batch(batch.clone(), applied.clone()))
                        .is_err()
                    {
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
                    send(
                        shared,
                        &self.outbox,
                        self.origin_or_route(origin, to_wire(*provider)),
                        reply.into(),
                    );
                }
                Effect::Done { to, nonce } => {
                    send(
                        shared,
                        &self.outbox,
                        self.origin_or_route(origin, to_wire(*to)),
                        messages::Ack { nonce: *nonce }.into(),
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
                wei: t.wei,
                tokens: t.tokens,
                sessions: t.sessions,
            })
            .collect(),
        signature: Default::default(),
    })
}

/// One signer thread: signs tickets (sent to both sides, R-MATCH-6) and batches
/// (sent to every subscriber) until the job channel closes.
pub fn run_signer(shared: Arc<RouterShared>, outbox: Outbox, jobs: Receiver<SignJob>) {
    for job in jobs {
        match job {
            SignJob::Ticket(ticket) => {
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
                let mut frame = message.sign(&shared.router_key, shared.network_id);
                frame[3] |= FLAG_RESPONSE;
                for address in [to_wire(ticket.provider), to_wire(ticket.user)] {
                    match route(&shared, address) {
                        Some(conn) if outbox.send(conn, frame.clone()).is_ok() => {}
                        _ => shared.replies_dropped_total.inc(),
                    }
                }
            }
            SignJob::Batch(batch, applied) => {
                let mut message = batch_message(&batch, &applied);
                let mut frame = message.sign(&shared.router_key, shared.network_id);
                frame[3] |= FLAG_RESPONSE;
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
        }
    }
}
