//! Replicated routers (issue 25; SPEC §12, R-HA-1..4; REPL_DESIGN.md): a group of 3
//! or 5 members on openraft 0.9 (storage-v2, whole snapshots), one Raft entry per
//! journal group.
//!
//! - `config`: the `[cluster]` section's struct and its validation.
//! - `types`: the openraft type configuration, [`GroupEntry`], snapshots, encoding.
//! - `log_store`: the Raft log over the journal's framing and `Storage`.
//! - `state_machine`: the engine applying committed records; snapshots at block
//!   boundaries; state hashes per block; the `ApplyObserver` hook.
//! - `network`: member RPC over TCP (MAC'd frames) and the admin requests.
//! - `durability`: the leader's `Durability` (`ReplicatedDurability`).
//! - `member`: the `Member` API the router process uses.
//! - `error`: [`ReplicationError`].

// openraft's `StorageError` (over 200 bytes) is the error its storage traits
// require; the log store's and state machine's helpers return it as is.
#![allow(clippy::result_large_err)]
#![warn(missing_docs)]

pub mod config;
pub mod durability;
pub mod error;
pub mod log_store;
pub mod member;
pub mod network;
pub mod state_machine;
pub mod types;

pub use config::ClusterConfig;
pub use durability::{Promotion, ReplicatedDurability};
pub use error::ReplicationError;
pub use member::{ApplyObserver, ClusterStatus, Member, MemberCore, MemberStatus, Role};
pub use network::{AdminReply, AdminRequest, ClusterKey};
pub use types::{GroupEntry, MemberId, MemberNode};
