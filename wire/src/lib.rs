//! yellowstone-wire: the binary protocol spoken to the router (SPEC.md section 2).
//! The normative description for clients in any language is `docs/PROTOCOL.md`
//! (checked against `messages::CATALOG` and `codes::ALL` by `tests/protocol_doc.rs`).
//!
//! - `frame`: the 12-byte header and the stream decoder.
//! - `messages`: the catalog, fixed little-endian layouts, `Message`.
//! - `address`, `signature`: MOR addresses (EIP-55) and recoverable low-s ECDSA.
//! - `codes`: stable error codes of every layer.
//! - `client`: a blocking client for tools, tests, the load generator and third parties.
//! - `amount`, `balances`, `keyfile`: the text formats every tool reads (wei amounts,
//!   balance snapshots, key files), one parser each for the workspace.
//! - `demo`: the demo model catalog a router uses when none is configured.
#![warn(missing_docs, unreachable_pub)]
pub mod address;
pub mod amount;
pub mod balances;
pub mod client;
pub mod codec;
pub mod codes;
pub mod connect_retry;
pub mod demo;
pub mod frame;
pub mod keyfile;
/// Replicated routers: the `not_leader` reply, built and read (R-HA-3).
pub mod leader;
/// The login handshake without IO, shared by `client` and the nodes (issue 26 item 4).
pub mod login;
pub mod messages;
/// Nonce numbering and replay resynchronisation for every client (R-ID-4, R-ID-8).
pub mod nonce;
pub mod signature;

pub use address::Address;
pub use codec::DecodeError;
pub use leader::{not_leader_reason, not_leader_reply, parse_not_leader};
pub use messages::*;
/// The secp256k1 crate this one signs with, for callers that need raw keys.
pub use secp256k1;
pub use signature::{SigError, Signature, SigningKey};
