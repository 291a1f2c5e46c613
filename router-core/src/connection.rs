//! The gateway thread's half of the core: per-connection login state (R-ID-3), the
//! cheap pre-checks run before any signature (R-ID-4, R-QUOTA-6, R-PROV-3), the
//! signature check (R-ID-2) and the frame -> command mapping, dispatched to the file
//! of each message's flow. Guarantees: a message leaves [`Admission::admit`] either as
//! a command whose signer is the connection's login, or as a typed [`Refused`]; what
//! is certain to be refused costs no signature recovery.

use crate::{
    block, operator, provider, report, session, sig_refusal, Conn, MarketView, Refused, Verifier,
};
use std::collections::HashMap;
use yellowstone_engine::{Command, MarketError};
use yellowstone_wire::messages::{self, Message};
use yellowstone_wire::{codes, Address};

/// What an [`Admission`] is configured with (fixed for the router's life).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// The network id signatures are checked against (R-ID-7).
    pub network_id: u32,
    /// The operator: the only sender of balance and parameter updates.
    pub operator: Option<Address>,
    /// `network.weights_proofs_per_s`, per gateway thread (R-PROV-3).
    pub weights_proofs_per_s: u64,
    /// `network.weights_proofs_unfunded_per_s`, per gateway thread (R-PROV-3).
    pub weights_proofs_unfunded_per_s: u64,
}

/// One connection's login state.
#[derive(Clone, Debug)]
struct ConnState {
    challenge: [u8; 32],
    address: Option<Address>,
    /// A command of this connection went to the engine: its sender may be known to the
    /// engine before the gateways' caches say so (they follow what is durable), so the
    /// unknown-sender pre-check no longer applies to this connection.
    forwarded: bool,
}

/// R-PROV-3: weights proofs checked per second on one gateway thread, at most (a token
/// bucket refilled continuously, holding one second's worth). Past it a registration
/// is refused `overloaded` before any proof is recovered: what registrations cost the
/// router's CPU is bounded whoever sends them.
#[derive(Clone, Debug)]
pub struct ProofBudget {
    per_s: u64,
    /// Tokens in thousandths of a proof.
    milli: u64,
    /// When it was last refilled, µs of the driver's monotonic clock.
    refilled_at_us: u64,
}

impl ProofBudget {
    /// A full budget of `per_s` proofs a second, as of `now_us`.
    pub fn new(per_s: u64, now_us: u64) -> ProofBudget {
        ProofBudget {
            per_s,
            milli: per_s.saturating_mul(1_000),
            refilled_at_us: now_us,
        }
    }

    /// The configured rate, proofs a second.
    pub fn per_s(&self) -> u64 {
        self.per_s
    }

    /// Takes `proofs` tokens at `now_us` if there are that many; false (nothing taken)
    /// if not. A clock that goes back refills nothing.
    pub fn take(&mut self, proofs: u64, now_us: u64) -> bool {
        let elapsed_us = now_us.saturating_sub(self.refilled_at_us);
        let capacity = self.per_s.saturating_mul(1_000);
        self.milli = self
            .milli
            .saturating_add(elapsed_us.saturating_mul(self.per_s) / 1_000)
            .min(capacity);
        self.refilled_at_us = self.refilled_at_us.max(now_us);
        let needed = proofs.saturating_mul(1_000);
        debug_assert!(self.milli <= capacity);
        if needed > self.milli {
            return false;
        }
        self.milli -= needed;
        debug_assert!(self.milli <= capacity);
        true
    }
}

/// A logged-in client's signed message, decoded, before its signature is checked.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// The connection it came on.
    pub conn: Conn,
    /// The address the connection was logged in as when the frame arrived.
    pub address: Address,
    /// Its wire type.
    pub msg_type: u16,
    /// The sender it claims (`from`).
    pub claimed: Address,
    /// Its nonce.
    pub nonce: u64,
    /// The message.
    pub message: Message,
    /// The frame's body, as signed.
    pub body: bytes::Bytes,
}

/// What an admitted message asks for, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A command for the engine.
    Command(Command),
    /// SubscribeBatches: needs no engine; the driver subscribes the connection and
    /// answers with an `Ack` of the nonce.
    Subscribe,
}

/// The gateway thread's half of the core: one per gateway thread, state no other
/// thread sees (see the crate's doc for the cut).
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    conns: HashMap<Conn, ConnState>,
    /// Weights proofs of funded senders' registrations.
    proofs_funded: ProofBudget,
    /// Weights proofs of senders without MOR.
    proofs_unfunded: ProofBudget,
}

impl Admission {
    /// No connections; full proof budgets as of `now_us`.
    pub fn new(config: AdmissionConfig, now_us: u64) -> Admission {
        let proofs_funded = ProofBudget::new(config.weights_proofs_per_s, now_us);
        let proofs_unfunded = ProofBudget::new(config.weights_proofs_unfunded_per_s, now_us);
        Admission {
            config,
            conns: HashMap::new(),
            proofs_funded,
            proofs_unfunded,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// A connection opened: returns the `LoginChallenge` to send it (R-ID-3). The
    /// driver draws `challenge` (32 random bytes).
    pub fn open(&mut self, conn: Conn, challenge: [u8; 32], router: Address) -> Message {
        let fresh = self
            .conns
            .insert(
                conn,
                ConnState {
                    challenge,
                    address: None,
                    forwarded: false,
                },
            )
            .is_none();
        assert!(fresh, "a connection id is never reused");
        Message::from(messages::LoginChallenge {
            challenge,
            network_id: self.config.network_id,
            router,
        })
    }

    /// The address `conn` logged in as.
    pub fn address(&self, conn: Conn) -> Option<Address> {
        self.conns.get(&conn).and_then(|c| c.address)
    }

    /// Whether `conn` is open here.
    pub fn is_open(&self, conn: Conn) -> bool {
        self.conns.contains_key(&conn)
    }

    /// The connection closed: forgets it; returns the address it had logged in as.
    pub fn closed(&mut self, conn: Conn) -> Option<Option<Address>> {
        self.conns.remove(&conn).map(|c| c.address)
    }

    /// R-ID-3: checks a login answer (this connection's challenge, then the
    /// signature); the connection is logged in as the signer. A login takes no route
    /// (R-ID-6). Errors: `not_logged_in` (unknown connection), `not_allowed` (another
    /// challenge), signature codes.
    pub fn login(
        &mut self,
        conn: Conn,
        answer: &messages::LoginAnswer,
        body: &[u8],
        verifier: &impl Verifier,
    ) -> Result<Address, Refused> {
        let network_id = self.config.network_id;
        let state = self
            .conns
            .get_mut(&conn)
            .ok_or_else(|| Refused::new(codes::NOT_LOGGED_IN, "unknown connection"))?;
        if answer.challenge != state.challenge {
            return Err(Refused::new(
                codes::NOT_ALLOWED,
                "login answer does not carry this connection's challenge",
            ));
        }
        let message = Message::LoginAnswer(answer.clone());
        let address = verifier
            .verify(&message, network_id, body)
            .map_err(|e| sig_refusal(network_id, &e, String::new()))?;
        state.address = Some(address);
        debug_assert_eq!(self.address(conn), Some(address));
        Ok(address)
    }

    /// R-PROV-3, R-ID-4: what is certain to be refused, refused before any signature
    /// is recovered and before the engine (so never journaled): a sender other than
    /// the login's, a nonce at or below the last one the engine accepted from this
    /// address (the view follows what the engine applied, never ahead of it), an
    /// operator command from another address, an RFC from an address without MOR,
    /// and anything but a registration from an address that holds no MOR and had
    /// nothing accepted.
    pub fn precheck(
        &self,
        conn: Conn,
        address: Address,
        claimed: Address,
        nonce: u64,
        message: &Message,
        view: &impl MarketView,
    ) -> Result<(), Refused> {
        if claimed != address {
            return Err(Refused::new(
                codes::WRONG_SENDER,
                format!("signed by {claimed}, but this connection logged in as {address}"),
            ));
        }
        if matches!(message, Message::SubscribeBatches(_)) {
            return Ok(()); // needs no engine and changes nothing
        }
        let nonce_last = view.nonce_last(&address);
        if let Some(nonce_last) = nonce_last {
            if nonce <= nonce_last {
                return Err(MarketError::Replay { nonce_last }.into());
            }
        }
        match message {
            Message::BalanceUpdate(_) | Message::SetParams(_) => {
                if self.config.operator.is_some_and(|op| op != address) {
                    return Err(MarketError::NotOperator.into());
                }
            }
            Message::RegisterProvider(_) => {}
            // R-QUOTA-6: the engine would refuse it too; this spares the engine thread
            // a sybil flood.
            Message::Rfc(_) if !view.is_funded(&address) => {
                return Err(MarketError::ZeroBalance.into())
            }
            _ => {
                let known = view.is_funded(&address)
                    || nonce_last.is_some()
                    || self.conns.get(&conn).is_some_and(|c| c.forwarded);
                if !known {
                    return Err(Refused::new(
                        codes::UNKNOWN_SENDER,
                        format!(
                            "{address} holds no MOR and nothing from it was accepted: only a \
                             RegisterProvider can be applied"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks a logged-in client's message (pre-checks, then its signature R-ID-2)
    /// and maps it to what it asks for. A command marks the connection as having
    /// forwarded one (the unknown-sender pre-check no longer applies to it).
    pub fn admit(
        &mut self,
        admitted: &Admitted,
        now_us: u64,
        view: &impl MarketView,
        verifier: &impl Verifier,
    ) -> Result<Outcome, Refused> {
        // Cheap before costly (R-PROV-3).
        self.precheck(
            admitted.conn,
            admitted.address,
            admitted.claimed,
            admitted.nonce,
            &admitted.message,
            view,
        )?;
        let network_id = self.config.network_id;
        verifier
            .verify(&admitted.message, network_id, &admitted.body)
            .map_err(|error| sig_refusal(network_id, &error, String::new()))?;
        self.command_for(admitted, now_us, view, verifier)
    }

    /// Maps a verified client message to what it asks for, by flow. Every message a
    /// client may send is handled by exactly one flow file; anything else is refused
    /// `not_allowed`.
    pub fn command_for(
        &mut self,
        admitted: &Admitted,
        now_us: u64,
        view: &impl MarketView,
        verifier: &impl Verifier,
    ) -> Result<Outcome, Refused> {
        let (from, message, body) = (admitted.address, &admitted.message, &admitted.body);
        let network_id = self.config.network_id;
        let command = if let Some(command) = session::command_for(from, message) {
            command
        } else if let Some(command) = report::command_for(network_id, from, message, body) {
            command
        } else if let Some(command) = operator::command_for(from, message) {
            command
        } else if let Some(outcome) = block::command_for(from, message) {
            outcome
        } else if let Message::RegisterProvider(m) = message {
            let budget = if view.is_funded(&from) {
                &mut self.proofs_funded
            } else {
                &mut self.proofs_unfunded
            };
            let command = provider::register(network_id, from, m, now_us, budget, view, verifier)?;
            Outcome::Command(command)
        } else if let Some(command) = provider::command_for(from, message) {
            command
        } else {
            return Err(Refused::new(
                codes::NOT_ALLOWED,
                format!("{} is not sent by clients", message.name()),
            ));
        };
        if let (Outcome::Command(_), Some(state)) = (&command, self.conns.get_mut(&admitted.conn)) {
            state.forwarded = true;
        }
        Ok(command)
    }
}
