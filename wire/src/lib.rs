//! yellowstone-wire: the binary protocol spoken to the router (SPEC.md section 2).
//! The normative description for clients in any language is `docs/PROTOCOL.md`
//! (checked against `messages::CATALOG` and `codes::ALL` by `tests/protocol_doc.rs`).
//!
//! - `frame`: the 12-byte header and the stream decoder.
//! - `messages`: the catalog, fixed little-endian layouts, `Message`.
//! - `address`, `signature`: MOR addresses (EIP-55) and recoverable low-s ECDSA.
//! - `codes`: stable error codes of every layer.
//! - `client`: a blocking client for tools, tests, the load generator and third parties.

pub mod address;
pub mod client;
pub mod codec;
pub mod codes;
pub mod connect_retry;
pub mod frame;
pub mod messages;
pub mod signature;

pub use address::Address;
pub use codec::DecodeError;
pub use messages::*;
/// The secp256k1 crate this one signs with, for callers that need raw keys.
pub use secp256k1;
pub use signature::{SigError, Signature, SigningKey};
