//! The engine thread's half of the core: the routes (their only writer, R-ID-6), the
//! batch subscribers, the effect -> frame mapping (dispatched to each flow's file) and
//! the release of promises once their journal record is durable (ARCHITECTURE.md,
//! "Latency: what waits for the disk"). Guarantees: an effect that promises something
//! ([`Release::Durable`], [`Release::Synced`]) leaves only after `on_durable` says its
//! record is durable (synced); every command from a connection is answered exactly
//! once, in command order, even when no effect addresses its sender.

use crate::routes::{RouteKind, Routes};
use crate::{block, operator, provider, report, session, to_wire, CacheUpdate, Conn, Output};
use std::collections::{BTreeSet, VecDeque};
use yellowstone_engine::{Command, Effect};
use yellowstone_wire::messages::{self, msg_type, Message};
use yellowstone_wire::Address;

/// Who an effect's frame goes to, resolved through the routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// The user route of the address.
    User(Address),
    /// The provider route of the address.
    Provider(Address),
    /// The provider route, else the user route (an `Ack` of `Done`).
    ProviderElseUser(Address),
}

/// What one effect sends or changes, before routing.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// Answers the command's sender (joined to its answer); for an internal command,
    /// sent to the recipient.
    Reply(Recipient, Message),
    /// A push to the recipient (joined to the answer when it is the sender's).
    Push(Recipient, Message),
    /// R-MATCH-6: a ticket, signed by the router, to both sides.
    Ticket {
        /// The provider.
        provider: Address,
        /// The user.
        user: Address,
        /// The unsigned `SessionTicket`.
        message: Message,
    },
    /// R-BLOCK-2: a credit batch, signed by the router, to every subscriber.
    Batch(Message),
    /// R-CHAIN-1: a settlement to sign (EIP-712, then wire) for every subscriber.
    Settlement {
        /// The epoch's record.
        settlement: yellowstone_engine::settlement::SettlementRecord,
        /// EIP-712 domain: chain.
        chain_id: u64,
        /// EIP-712 domain: contract.
        contract: yellowstone_engine::Address,
    },
    /// The gateways' pre-check caches change.
    Cache(Vec<CacheUpdate>),
    /// Nothing to send.
    Nothing,
}

/// The wire type of the message a command came from, for `ErrorReply.ref_msg_type`
/// (0 for the router's own commands).
pub fn wire_type_of(command: &Command) -> u16 {
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

/// What `effect` (of `command`) sends or changes: the flows' mappings in one place,
/// exhaustive (a new effect must be given a flow).
pub fn delivery_of(command: &Command, effect: &Effect) -> Delivery {
    if let Effect::Rejected { to, nonce, error } = effect {
        // SPEC.md §9: a refusal, to its originator.
        return Delivery::Reply(
            Recipient::User(to_wire(*to)),
            messages::ErrorReply {
                code: error.code(),
                ref_msg_type: wire_type_of(command),
                ref_nonce: *nonce,
                retry_after_ms: error.retry_after_ms(),
                detail: error.detail(),
                reason: error.to_string(),
            }
            .into(),
        );
    }
    let delivery = session::delivery_of(effect)
        .or_else(|| report::delivery_of(effect))
        .or_else(|| provider::delivery_of(effect))
        .or_else(|| block::delivery_of(effect))
        .or_else(|| operator::delivery_of(effect));
    debug_assert!(delivery.is_some(), "every effect has a flow: {effect:?}");
    delivery.unwrap_or(Delivery::Nothing)
}

/// When an effect may leave (ARCHITECTURE.md, "Latency: what waits for the disk").
/// Only a promise waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Promises nothing to anyone: sent as soon as the engine has applied the command.
    Now,
    /// A promise: leaves once the command's record is durable.
    Durable,
    /// A promise published to everyone (a credit batch, a settlement): leaves once the
    /// command's record is durable and on stable storage (R-BLOCK-*).
    Synced,
}

/// Classifies one effect (R-MATCH-2, R-MATCH-6, R-BLOCK-*; exhaustive so that a new
/// effect must be classified here):
/// - `Probe`: `Now`. It reserves nothing a client could rely on: a probe whose RFC's
///   record a crash loses is answered against a recovered engine that has no such
///   probe (UNKNOWN_PROBE, nothing charged). This lets the RFC's fsync overlap the
///   probe's round trip.
/// - `RfcAccepted`, `SessionOpened` (the ticket), `ReportAccepted`, `ClaimPaid`,
///   `Done`, `RfcFailed` (a refund): promises a client acts on: `Durable`.
/// - `Rejected`: `Durable`: computed against state that may include records not yet
///   durable; a client acts on it, so a crash must not undo what it was based on.
/// - Provider notices: statements a provider acts on: `Durable`. `SessionExpired`,
///   `SessionNotStarted` send nothing; kept in order: `Durable`.
/// - `BalancesSet`: feeds the pre-check caches, never ahead of a crash: `Durable`.
/// - `BatchSealed`, `SettlementSealed`: published and applied by the ledger: `Synced`.
#[cfg_attr(feature = "plant-early-ticket", allow(unreachable_patterns))]
pub fn release_of(effect: &Effect) -> Release {
    match effect {
        Effect::Probe { .. } => Release::Now,
        // Test only (the simulation shows it catches this): a ticket released before
        // its record is durable.
        #[cfg(feature = "plant-early-ticket")]
        Effect::SessionOpened { .. } => Release::Now,
        Effect::Rejected { .. }
        | Effect::RfcAccepted { .. }
        | Effect::SessionOpened { .. }
        | Effect::RfcFailed { .. }
        | Effect::ReportAccepted { .. }
        | Effect::SessionExpired { .. }
        | Effect::SessionNotStarted { .. }
        | Effect::ProviderUnreachable { .. }
        | Effect::ProviderSuspended { .. }
        | Effect::ProviderUnfunded { .. }
        | Effect::ClaimPaid { .. }
        | Effect::Done { .. }
        | Effect::BalancesSet { .. } => Release::Durable,
        Effect::BatchSealed { .. } | Effect::SettlementSealed { .. } => Release::Synced,
    }
}

/// A command applied, waiting for its record to be durable.
#[derive(Debug)]
struct Pending {
    seq: u64,
    synced: bool,
    origin: Option<Conn>,
    command: Command,
    effects: Vec<Effect>,
}

/// The engine thread's half of the core (see the crate's doc for the cut).
#[derive(Debug, Default)]
pub struct Dispatch {
    routes: Routes,
    subscribers: BTreeSet<Conn>,
    pending: VecDeque<Pending>,
    outputs: VecDeque<Output>,
    /// The highest sequence number applied so far.
    seq_last: u64,
}

impl Dispatch {
    /// No routes, no subscribers, nothing pending.
    pub fn new() -> Dispatch {
        Dispatch::default()
    }

    /// The routes (read-only: this type is their only writer).
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Commands applied whose promises still wait for the journal.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// R-ID-6: a command from `conn` is about to be applied: the route it is for moves
    /// to `conn` first, so that whatever the engine answers finds it.
    pub fn on_command(&mut self, conn: Conn, command: &Command) {
        if let Some(kind) = RouteKind::of(command) {
            self.routes.take(kind, conn);
        }
    }

    /// `conn` subscribed to credit batches and settlements (R-BLOCK-2).
    pub fn subscribe(&mut self, conn: Conn) {
        self.subscribers.insert(conn);
    }

    /// `conn`, logged in as `address` (if it was), closed: its routes and subscription
    /// go. Returns the command telling the engine its provider is unreachable when the
    /// provider's route was this connection's (a newer connection keeps it reachable).
    pub fn on_closed(&mut self, conn: Conn, address: Option<Address>) -> Option<Command> {
        self.subscribers.remove(&conn);
        let address = address?;
        let released = self.routes.release(&address, conn);
        released.provider.then(|| Command::ProviderDisconnected {
            provider: crate::to_engine(address),
        })
    }

    /// The engine applied `command` (from `origin`, `None` for the router's own) as
    /// record `seq` (the last record's `seq` again when it was refused and journaled
    /// nothing). Effects that promise nothing leave now; the others wait for
    /// `on_durable`, in order.
    pub fn on_applied(
        &mut self,
        seq: u64,
        origin: Option<Conn>,
        command: Command,
        mut effects: Vec<Effect>,
    ) {
        assert!(seq >= self.seq_last, "records are applied in order");
        self.seq_last = seq;
        if effects.iter().any(|e| release_of(e) == Release::Now) {
            let now: Vec<Effect> = effects
                .iter()
                .filter(|e| release_of(e) == Release::Now)
                .cloned()
                .collect();
            effects.retain(|e| release_of(e) != Release::Now);
            // Pushes only: never joined to the answer of the command's frame (that
            // waits for durability), even when the provider is the command's sender.
            self.deliver(None, &command, &now);
        }
        let synced = effects.iter().any(|e| release_of(e) == Release::Synced);
        self.pending.push_back(Pending {
            seq,
            synced,
            origin,
            command,
            effects,
        });
    }

    /// Records up to `durable_seq` are durable, up to `synced_seq` on stable storage:
    /// every pending command they cover is delivered, in order.
    pub fn on_durable(&mut self, durable_seq: u64, synced_seq: u64) {
        while self
            .pending
            .front()
            .is_some_and(|p| p.seq <= durable_seq && (!p.synced || p.seq <= synced_seq))
        {
            let Some(pending) = self.pending.pop_front() else {
                break;
            };
            // A command from a connection is delivered even without effects: its
            // frame is answered (R-ID-6, half-close).
            if let Some((address, nonce)) = pending.command.origin() {
                // R-ID-4: the replay pre-check follows what the engine accepted, once
                // durable: an originated command without a refusal of its own nonce
                // spent that nonce.
                let refused = pending.effects.iter().any(|effect| {
                    matches!(effect, Effect::Rejected { to, nonce: n, .. } if *to == address && *n == nonce)
                });
                if !refused {
                    self.outputs
                        .push_back(Output::Cache(CacheUpdate::NonceAccepted {
                            address: to_wire(address),
                            nonce,
                        }));
                }
            }
            self.deliver(pending.origin, &pending.command, &pending.effects);
        }
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn route(&self, recipient: Recipient) -> Option<Conn> {
        self.routes.of(recipient)
    }

    fn send(&mut self, conn: Option<Conn>, message: Message) {
        self.outputs.push_back(match conn {
            Some(conn) => Output::Send {
                conn,
                message,
                answers: false,
            },
            None => Output::Dropped,
        });
    }

    /// The outputs of one command's effects, in effect order; the sender's frame is
    /// answered by the last frame sent to it, or by an `Answer` after them.
    fn deliver(&mut self, origin: Option<Conn>, command: &Command, effects: &[Effect]) {
        let first = self.outputs.len();
        for effect in effects {
            match delivery_of(command, effect) {
                // A reply goes to the sender; an internal command's to its recipient.
                Delivery::Reply(recipient, message) => {
                    let conn = origin.or_else(|| self.route(recipient));
                    self.send(conn, message);
                }
                Delivery::Push(recipient, message) => {
                    let conn = self.route(recipient);
                    self.send(conn, message);
                }
                Delivery::Ticket {
                    provider,
                    user,
                    message,
                } => {
                    let to = vec![self.routes.provider(&provider), self.routes.user(&user)];
                    self.outputs.push_back(Output::Sign { message, to });
                }
                Delivery::Batch(message) => {
                    let to = self.subscribers.iter().copied().map(Some).collect();
                    self.outputs.push_back(Output::Sign { message, to });
                }
                Delivery::Settlement {
                    settlement,
                    chain_id,
                    contract,
                } => {
                    let to = self.subscribers.iter().copied().collect();
                    self.outputs.push_back(Output::SignSettlement {
                        settlement,
                        chain_id,
                        contract,
                        to,
                    });
                }
                Delivery::Cache(updates) => {
                    self.outputs.extend(updates.into_iter().map(Output::Cache));
                }
                Delivery::Nothing => {}
            }
        }
        let Some(origin) = origin else {
            return;
        };
        // Exactly one answer for the sender's frame: the last frame to it, if it is
        // the last thing this command sends, else a bare answer after everything.
        let sent_any = self.outputs.len() > first;
        match self.outputs.back_mut() {
            Some(Output::Send { conn, answers, .. }) if sent_any && *conn == origin => {
                debug_assert!(!*answers);
                *answers = true;
            }
            _ => self.outputs.push_back(Output::Answer { conn: origin }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yellowstone_engine::MarketError;

    fn user() -> yellowstone_engine::Address {
        yellowstone_engine::Address([5; 20])
    }

    fn rfc(nonce: u64) -> Command {
        Command::SubmitRfc {
            user: user(),
            nonce,
            model: 1,
            tokens_max: 10,
            expires_at_ms: 0,
        }
    }

    fn drain(dispatch: &mut Dispatch) -> Vec<Output> {
        std::iter::from_fn(|| dispatch.poll_output()).collect()
    }

    #[test]
    fn a_promise_leaves_only_once_its_record_is_durable_and_answers_its_frame_once() {
        let mut dispatch = Dispatch::new();
        let conn = Conn(1);
        dispatch.on_command(conn, &rfc(1));
        let accepted = Effect::RfcAccepted {
            user: user(),
            nonce: 1,
            rfc: 9,
            tokens_left: 1,
        };
        let probe = Effect::Probe {
            provider: yellowstone_engine::Address([6; 20]),
            probe: 3,
            model: 1,
            tokens_max: 10,
            deadline_ms: 0,
        };
        dispatch.on_applied(1, Some(conn), rfc(1), vec![accepted, probe]);
        // The probe (no route to its provider: dropped) leaves at once; nothing answers
        // the RFC's frame yet.
        assert_eq!(drain(&mut dispatch), vec![Output::Dropped]);
        dispatch.on_durable(0, 0);
        assert!(drain(&mut dispatch).is_empty(), "record 1 is not durable");
        dispatch.on_durable(1, 1);
        let outputs = drain(&mut dispatch);
        let answers = outputs
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Output::Send { answers: true, .. } | Output::Answer { .. }
                )
            })
            .count();
        assert_eq!(answers, 1, "{outputs:?}");
        assert!(matches!(
            outputs.last(),
            Some(Output::Send { conn: c, message: Message::RfcAccepted(_), answers: true }) if *c == conn
        ));
        assert_eq!(dispatch.pending_len(), 0);
    }

    #[test]
    fn a_refusal_names_the_message_type_and_spends_no_nonce() {
        let mut dispatch = Dispatch::new();
        let refused = Effect::Rejected {
            to: user(),
            nonce: 2,
            error: MarketError::ZeroBalance,
        };
        dispatch.on_applied(0, Some(Conn(4)), rfc(2), vec![refused]);
        dispatch.on_durable(0, 0);
        let outputs = drain(&mut dispatch);
        assert!(
            !outputs.iter().any(|o| matches!(o, Output::Cache(_))),
            "a refused nonce is not accepted: {outputs:?}"
        );
        match outputs.as_slice() {
            [Output::Send {
                message: Message::ErrorReply(e),
                answers: true,
                ..
            }] => {
                assert_eq!(e.ref_msg_type, msg_type::RFC);
                assert_eq!(e.ref_nonce, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn r_id_6_a_closed_providers_route_goes_and_the_engine_is_told() {
        let mut dispatch = Dispatch::new();
        let provider = yellowstone_engine::Address([6; 20]);
        let announce = Command::ProviderAnnounce { provider, nonce: 1 };
        dispatch.on_command(Conn(1), &announce);
        dispatch.on_command(Conn(2), &announce);
        assert_eq!(dispatch.on_closed(Conn(1), Some(to_wire(provider))), None);
        assert_eq!(
            dispatch.on_closed(Conn(2), Some(to_wire(provider))),
            Some(Command::ProviderDisconnected { provider })
        );
        assert!(dispatch.routes().is_empty());
    }
}
