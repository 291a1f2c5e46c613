//! The router's decisions, without IO (issue 26 item 1): what the gateway threads and
//! the engine thread decide, as code a test calls without a socket, a thread or a
//! clock (STYLE.md §1, in the manner of quinn-proto). Time comes in as an argument
//! (`now_us`, microseconds of a monotonic clock the driver owns); randomness (login
//! challenges) too.
//!
//! # The cut
//!
//! The gateway verifies signatures on N threads in parallel (ARCHITECTURE.md: a verify
//! costs ~30 µs, the engine's whole lifecycle ~1 µs), and one engine thread owns the
//! market. The core is cut the same way, so that no table is written from two sides:
//!
//! ```text
//!  gateway thread i (N of them)                      engine thread (1)
//!  ┌──────────────────────────────┐                  ┌───────────────────────────────┐
//!  │ Admission (connection.rs)    │   Handoff        │ engine.apply(command, now)    │
//!  │  login, decode, pre-checks,  │ ─(conn, command)▶│   │ effects                   │
//!  │  signature, frame -> command │                  │   ▼                           │
//!  │  (session/provider/report/   │                  │ Dispatch (dispatch.rs)        │
//!  │   block/operator.rs)         │                  │  routes (routes.rs: the only  │
//!  │  reads a MarketView (nonces, │ ◀──CacheUpdate── │  writer), effect -> frame,    │
//!  │  balances the engine applied)│                  │  promises held until durable  │
//!  └──────────────────────────────┘                  └───────────────────────────────┘
//!        │ Output::{Send, Answer, Close}                   │ Output::{Send, Sign, ...}
//!        ▼                                                 ▼
//!  the connection (net/ in the gateway, an in-memory pipe in the simulation)
//! ```
//!
//! - [`Admission`] holds per-connection login state and the weights-proof budgets: it is
//!   per gateway thread, state no other thread sees. Its quota pre-check
//!   ([`Admission::quota_precheck`], `quota.rs`) reads a [`QuotaStore`] the engine's
//!   side writes with [`follow_quota`] (R-QUOTA-5).
//! - [`Dispatch`] holds the routes (address -> connection, R-ID-6), the batch
//!   subscribers and the promises waiting for the journal (`on_applied`, then
//!   `on_durable`): it is the engine thread's, the single writer of routes.
//! - What gateways read of the engine (last nonces, balances) is a [`MarketView`] the
//!   driver keeps from [`CacheUpdate`]s that `Dispatch` emits only for durable commands
//!   (never ahead of what a crash keeps).
//! - [`RouterCore`] puts one of each together for a single-threaded driver (the
//!   simulation in `tests/simulation.rs`, a future replica): `on_frame`,
//!   `poll_command`, `on_applied`, `on_durable`, `on_closed`, `poll_output`.
//!
//! How the gateway uses it today: each gateway thread's `RouterHandler` owns an
//! [`Admission`] (and keeps the scheduling of a loop turn: lanes, queue room); the
//! engine thread's `Sequencer` keeps its own queue of promises waiting for the journal
//! (it is also the journal's client) and its `RouterSink` owns the [`Routes`] (moved by
//! `EffectSink::on_command`, released by `SequencerInput::Closed`) and sends what
//! [`delivery_of`] says, classified by [`release_of`]. [`Dispatch`] is those same
//! pieces with the promise queue, for drivers without a `Sequencer`.
//!
//! Each message's both directions live in one file, by flow: `session.rs` (RFC,
//! cancel, probe answer, session start <-> accepted, probe, ticket, failed),
//! `provider.rs` (register, bid, announce <-> notices), `report.rs` (report <-> ack),
//! `block.rs` (subscribe, claim <-> batches, settlements, claim ack), `operator.rs`
//! (balances, params, chain paid <-> done, balances set).

#![warn(missing_docs, unreachable_pub)]

mod block;
mod connection;
mod core;
mod dispatch;
mod operator;
mod provider;
mod quota;
mod refusals;
mod replies;
mod report;
mod routes;
mod sealed;
mod session;

pub use crate::core::{error_reply, CacheView, RouterCore};
pub use block::batch_message;
pub use connection::{Admission, AdmissionConfig, Admitted, Outcome, ProofBudget};
pub use dispatch::{delivery_of, release_of, wire_type_of, Delivery, Dispatch, Recipient, Release};
pub use quota::{follow_quota, quota_refusal, QuotaEntry, QuotaMap, QuotaStore, DAY_EDGE_MS};
pub use refusals::{RefusalBudget, RefusalVerdict, REFUSAL_WINDOW_US};
pub use replies::{command_of, CommandDigest, ReplyCache, ReplyCacheConfig, ReplyCacheImportError};
pub use routes::{RouteKind, Routes, RoutesReleased};
pub use sealed::{NewestSealed, Sealed, SealedSettlement};

use yellowstone_engine::{Command, MarketError};
use yellowstone_wire::{codes, Address, SigError};

/// A connection, as the driver numbers it (the gateway's `ConnId::as_u64`). Never
/// reused while the driver runs (R-ID-6: a route names one connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conn(pub u64);

/// What a refused message gets: an `ErrorReply` with a stable `code`
/// (wire/src/codes.rs), a `reason` naming the value and the bound, and `detail` (0
/// but for the engine's own refusals a pre-check repeats, e.g. a replay's last nonce).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (code {code:#06x})")]
pub struct Refused {
    /// The stable error code (`codes::*`).
    pub code: u16,
    /// Why, in words naming the value and the bound.
    pub reason: String,
    /// `ErrorReply.detail`.
    pub detail: u128,
}

impl Refused {
    /// A refusal with `code` and `reason`, detail 0.
    pub fn new(code: u16, reason: impl Into<String>) -> Refused {
        Refused {
            code,
            reason: reason.into(),
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
/// another address (or none) names the network id the router checks against, since a
/// message signed for another network id is the common cause.
pub fn sig_refusal(network_id: u32, error: &SigError, context: String) -> Refused {
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
    Refused::new(codes::of_sig_error(error), reason)
}

/// What the gateways read of the engine's applied state for their pre-checks
/// (R-ID-4, R-QUOTA-6, R-PROV-3). Implemented by the gateway over its caches and by
/// the simulation over plain maps; written only from [`CacheUpdate`]s.
pub trait MarketView {
    /// The balance the engine last applied for `address`, wei (`None`: never set).
    fn balance_wei(&self, address: &Address) -> Option<u128>;
    /// The last nonce the engine accepted from `address`, once durable.
    fn nonce_last(&self, address: &Address) -> Option<u64>;
    /// The weights hash of `model` in the market's catalog (`None`: no such model).
    fn weights_hash(&self, model: u32) -> Option<[u8; 32]>;
    /// Whether `address` holds MOR (R-QUOTA-6).
    fn is_funded(&self, address: &Address) -> bool {
        self.balance_wei(address).is_some_and(|b| b > 0)
    }
}

/// Signature recovery, as the driver measures it (the gateway times it as signature
/// CPU; the simulation recovers directly).
pub trait Verifier {
    /// The address that signed `digest` with `signature` (R-PROV-1: weights proofs).
    fn recover(
        &self,
        digest: &[u8; 32],
        signature: &yellowstone_wire::Signature,
    ) -> Result<Address, SigError>;
    /// `message.verify(network_id, body)`: the signer of a client message (R-ID-2).
    fn verify(
        &self,
        message: &yellowstone_wire::Message,
        network_id: u32,
        body: &[u8],
    ) -> Result<Address, SigError>;
}

/// Recovers in place, unmeasured.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainVerifier;

impl Verifier for PlainVerifier {
    fn recover(
        &self,
        digest: &[u8; 32],
        signature: &yellowstone_wire::Signature,
    ) -> Result<Address, SigError> {
        yellowstone_wire::signature::recover_signer(digest, signature)
    }

    fn verify(
        &self,
        message: &yellowstone_wire::Message,
        network_id: u32,
        body: &[u8],
    ) -> Result<Address, SigError> {
        message.verify(network_id, body)
    }
}

/// A change to the gateways' pre-check caches, emitted by [`Dispatch`] when a
/// command's record is durable (never ahead of what a crash keeps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheUpdate {
    /// R-ID-4: the engine accepted `nonce` from `address` (never lowers the cache).
    NonceAccepted {
        /// The sender.
        address: Address,
        /// Its accepted nonce.
        nonce: u64,
    },
    /// R-QUOTA-6: the engine applied this balance, wei.
    Balance {
        /// The account.
        address: Address,
        /// Its balance, wei.
        balance_wei: u128,
    },
}

/// A command ready for the engine: from connection `conn`, answering its frame of
/// type `msg_type` with nonce `nonce`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// The connection it came from.
    pub conn: Conn,
    /// The wire type of its frame (for `ErrorReply.ref_msg_type`).
    pub msg_type: u16,
    /// The frame's nonce.
    pub nonce: u64,
    /// The command.
    pub command: Command,
}

/// What the driver must do: send, sign then send, answer, close, update caches.
/// Every frame a client sent in flight is answered by exactly one output carrying
/// `answers: true` or an [`Output::Answer`] (R-ID-6, half-close).
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `message` (flagged FLAG_RESPONSE) on `conn`; `answers`: it answers the
    /// connection's oldest frame in flight.
    Send {
        /// Where.
        conn: Conn,
        /// What.
        message: yellowstone_wire::Message,
        /// Whether it answers a frame in flight.
        answers: bool,
    },
    /// The connection's oldest frame in flight is answered with nothing.
    Answer {
        /// Where.
        conn: Conn,
    },
    /// Sign `message` with the router key (R-ID-5) and send it to each of `to` (a
    /// ticket: both sides; a batch: every subscriber). `None` entries are recipients
    /// without a route (counted as dropped replies).
    Sign {
        /// The unsigned message.
        message: yellowstone_wire::Message,
        /// The recipients.
        to: Vec<Option<Conn>>,
    },
    /// R-CHAIN-1: sign the settlement (EIP-712, then wire) and send it to `to`.
    SignSettlement {
        /// The epoch's record.
        settlement: yellowstone_engine::settlement::SettlementRecord,
        /// EIP-712 domain: chain.
        chain_id: u64,
        /// EIP-712 domain: contract.
        contract: yellowstone_engine::Address,
        /// The subscribers.
        to: Vec<Conn>,
    },
    /// Close the connection once what is queued for it is sent.
    Close {
        /// Which.
        conn: Conn,
    },
    /// A message for an address without a route: dropped (counted).
    Dropped,
    /// Apply to the gateways' pre-check caches.
    Cache(CacheUpdate),
}

/// The engine's address of a wire address (the same 20 bytes).
pub fn to_engine(address: Address) -> yellowstone_engine::Address {
    yellowstone_engine::Address(address.0)
}

/// The wire's address of an engine address (the same 20 bytes).
pub fn to_wire(address: yellowstone_engine::Address) -> Address {
    Address(address.0)
}
