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
    /// `market.genesis_ms`: Unix ms at which engine day 0 starts (R-TIME-1), for the
    /// quota pre-check's day edge (R-QUOTA-5).
    pub genesis_ms: u64,
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

    /// R-QUOTA-5, R-PROV-3 (issue 27, quota-flood): an RFC signed as the login's
    /// `address` (any other is refused `wrong_sender` by [`Admission::precheck`])
    /// whose TokenMax is above what the engine last said its sender had left today,
    /// refused before any signature and before any lane, with the engine's own code,
    /// reason and detail. `now_ms` is the router's clock, Unix ms (the engine's days
    /// turn on it); `quotas` is the table the engine's side keeps with
    /// [`crate::follow_quota`]. Costs one emptiness test while nobody is over quota.
    ///
    /// Errors: `quota_exceeded` (`MarketError::QuotaExceeded { tokens_left }`).
    pub fn quota_precheck(
        &self,
        address: Address,
        claimed: Address,
        message: &Message,
        now_ms: u64,
        quotas: &impl crate::QuotaStore,
    ) -> Result<(), Refused> {
        match message {
            Message::Rfc(rfc) if claimed == address => crate::quota_refusal(
                quotas,
                self.config.genesis_ms,
                &address,
                rfc.tokens_max,
                now_ms,
            )
            .map_err(Refused::from),
            _ => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheUpdate, CacheView, PlainVerifier};
    use yellowstone_wire::SigningKey;

    fn admission() -> Admission {
        Admission::new(
            AdmissionConfig {
                network_id: 7,
                operator: Some(Address([9; 20])),
                weights_proofs_per_s: 2,
                weights_proofs_unfunded_per_s: 1,
                genesis_ms: GENESIS_MS,
            },
            0,
        )
    }

    const GENESIS_MS: u64 = 1_000_000;

    #[test]
    fn r_quota_5_an_rfc_over_what_the_engine_said_is_left_is_refused_before_any_signature() {
        let admission = admission();
        let (key, other) = (SigningKey::from_seed(b"user"), SigningKey::from_seed(b"x"));
        let rfc = |from: Address, tokens_max: u64| {
            Message::from(messages::Rfc {
                from,
                nonce: 3,
                tokens_max,
                ..Default::default()
            })
        };
        let now_ms = GENESIS_MS + 60_000;
        let mut quotas = crate::QuotaMap::new(0);
        let (me, them) = (key.address(), other.address());
        assert!(admission
            .quota_precheck(me, me, &rfc(me, 100), now_ms, &quotas)
            .is_ok());
        crate::QuotaStore::set(
            &mut quotas,
            me,
            crate::QuotaEntry {
                tokens_left: 10,
                day: 0,
            },
        );
        let refused = admission
            .quota_precheck(me, me, &rfc(me, 11), now_ms, &quotas)
            .unwrap_err();
        let engine = Refused::from(MarketError::QuotaExceeded { tokens_left: 10 });
        assert_eq!(refused, engine, "the engine's code, reason and detail");
        assert!(admission
            .quota_precheck(me, me, &rfc(me, 10), now_ms, &quotas)
            .is_ok());
        // Claiming another sender is left to the wrong_sender pre-check; another
        // login has no entry; a message other than an RFC is not looked at.
        assert!(admission
            .quota_precheck(me, them, &rfc(them, 11), now_ms, &quotas)
            .is_ok());
        assert!(admission
            .quota_precheck(them, them, &rfc(them, 11), now_ms, &quotas)
            .is_ok());
        let cancel = Message::from(messages::RfcCancel {
            from: me,
            nonce: 4,
            ..Default::default()
        });
        assert!(admission
            .quota_precheck(me, me, &cancel, now_ms, &quotas)
            .is_ok());
    }

    #[test]
    fn r_prov_3_the_proof_budget_refills_with_the_time_it_is_given() {
        let mut budget = ProofBudget::new(2, 1_000_000);
        assert!(budget.take(2, 1_000_000));
        assert!(!budget.take(1, 1_000_000), "empty until time passes");
        assert!(!budget.take(1, 1_400_000), "0.8 of a proof after 400 ms");
        assert!(
            budget.take(1, 1_500_000),
            "one proof after 500 ms at 2 a second"
        );
        // A clock that goes back refills nothing and is not an error.
        assert!(!budget.take(1, 0));
    }

    #[test]
    fn r_id_4_a_replayed_nonce_is_refused_before_any_signature() {
        let admission = admission();
        let key = SigningKey::from_seed(b"user");
        let mut view = CacheView::default();
        view.apply(&CacheUpdate::NonceAccepted {
            address: key.address(),
            nonce: 5,
        });
        let rfc = Message::from(messages::Rfc {
            from: key.address(),
            nonce: 5,
            ..Default::default()
        });
        let refused = admission
            .precheck(Conn(1), key.address(), key.address(), 5, &rfc, &view)
            .unwrap_err();
        assert_eq!(refused.code, codes::REPLAY);
        assert_eq!(
            refused.detail, 5,
            "the last nonce, for the client to resync"
        );
    }

    #[test]
    fn r_quota_6_an_rfc_without_mor_is_refused_and_another_sender_is_wrong_sender() {
        let admission = admission();
        let (key, other) = (SigningKey::from_seed(b"user"), SigningKey::from_seed(b"x"));
        let rfc = Message::from(messages::Rfc {
            from: key.address(),
            nonce: 1,
            ..Default::default()
        });
        let view = CacheView::default();
        let refused = admission
            .precheck(Conn(1), key.address(), key.address(), 1, &rfc, &view)
            .unwrap_err();
        assert_eq!(refused.code, codes::ZERO_BALANCE);
        let refused = admission
            .precheck(Conn(1), key.address(), other.address(), 1, &rfc, &view)
            .unwrap_err();
        assert_eq!(refused.code, codes::WRONG_SENDER);
    }

    #[test]
    fn r_id_3_a_login_must_carry_this_connections_challenge_and_its_signers_key() {
        let mut admission = admission();
        let key = SigningKey::from_seed(b"user");
        admission.open(Conn(1), [1; 32], Address([2; 20]));
        let mut wrong = Message::from(messages::LoginAnswer {
            address: key.address(),
            challenge: [3; 32],
            ..Default::default()
        });
        let frame = wrong.sign(&key, 7);
        let Message::LoginAnswer(answer) = &wrong else {
            unreachable!()
        };
        let refused = admission
            .login(
                Conn(1),
                answer,
                &frame[yellowstone_wire::frame::HEADER_LEN..],
                &PlainVerifier,
            )
            .unwrap_err();
        assert_eq!(refused.code, codes::NOT_ALLOWED);
        assert_eq!(admission.address(Conn(1)), None);
        let mut right = Message::from(messages::LoginAnswer {
            address: key.address(),
            challenge: [1; 32],
            ..Default::default()
        });
        let frame = right.sign(&key, 7);
        let Message::LoginAnswer(answer) = &right else {
            unreachable!()
        };
        let address = admission
            .login(
                Conn(1),
                answer,
                &frame[yellowstone_wire::frame::HEADER_LEN..],
                &PlainVerifier,
            )
            .unwrap();
        assert_eq!(address, key.address());
        assert_eq!(admission.closed(Conn(1)), Some(Some(key.address())));
    }
}
