//! The openraft type configuration of a replicated router group (REPL_DESIGN.md
//! "Entry payload"), and the byte encoding every replicated structure uses.
//!
//! - One Raft entry per journal group: [`GroupEntry`] holds `JournalRecord::encode()`
//!   payloads with sequence numbers `first_seq..first_seq + records.len()`, contiguous
//!   across entries. Blank and membership entries carry no records.
//! - A snapshot ([`MarketSnapshot`]) is sent whole (`generic-snapshot-data`): the
//!   engine's state after the entry named by its `SnapshotMeta::last_log_id`, and the
//!   next journal sequence number.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A member's id (`cluster.member_id`): ≥ 1, unique in the group, never reused.
pub type MemberId = u64;

/// What the group stores about a member: where its peers reach it and where clients
/// are sent when it leads (`not_leader`, R-HA-3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// The member RPC address (`cluster.raft_listen`), `host:port`.
    pub raft_addr: String,
    /// The client endpoint (`cluster.client_endpoint`), `host:port`.
    pub client_endpoint: String,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft {} clients {}",
            self.raft_addr, self.client_endpoint
        )
    }
}

/// One journal group as a Raft entry's payload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// The journal sequence number of `records[0]` (≥ 1).
    pub first_seq: u64,
    /// `JournalRecord::encode()` payloads, in sequence order; never empty.
    pub records: Vec<Vec<u8>>,
}

impl GroupEntry {
    /// The sequence number of the last record (`first_seq - 1` if empty).
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.records.len() as u64 - 1
    }

    /// Record bytes, without framing.
    pub fn bytes(&self) -> usize {
        self.records.iter().map(Vec::len).sum()
    }
}

impl fmt::Display for GroupEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group seq {}..={}", self.first_seq, self.last_seq())
    }
}

/// What applying one entry did, returned to the proposer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupApplied {
    /// A blank or membership entry: no records.
    #[default]
    NoRecords,
    /// Every record applied; the state machine's last sequence number is now this.
    Applied {
        /// The last record's sequence number.
        last_seq: u64,
    },
    /// Not applied on any member (deterministic: every member sees the same log): its
    /// first sequence number is not the next one. Only a deposed leader's late
    /// proposal does this; its `ReplicatedDurability` fails.
    Stale {
        /// The state machine's next sequence number.
        expected: u64,
        /// The entry's `first_seq`.
        got: u64,
    },
}

/// A snapshot's data, sent and stored whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketSnapshot {
    /// `Engine::snapshot()` after the snapshot's last log entry.
    pub engine: Vec<u8>,
    /// The journal sequence number the next record gets.
    pub next_seq: u64,
    /// The engine's block at the snapshot (a block boundary was crossed by the last
    /// entry; 0 only for a snapshot of the genesis state).
    pub block: u64,
    /// `Engine::state_hash()` of `engine`, checked when installed.
    pub state_hash: [u8; 32],
    /// The reply cache as of the snapshot (`ReplyCache::export`; empty where the
    /// member keeps none): a member that installs the snapshot answers a resend of a
    /// command it covers with the original answer, not `replay` (R-HA-3). Not part
    /// of the state hash: the engine alone is the market's state.
    pub replies: Vec<u8>,
}

openraft::declare_raft_types!(
    /// The type configuration of a replicated router group.
    pub TypeConfig:
        D = GroupEntry,
        R = GroupApplied,
        NodeId = MemberId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = MarketSnapshot,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log entry of this group.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (term, leader, index) of this group.
pub type LogId = openraft::LogId<MemberId>;
/// A vote of this group.
pub type Vote = openraft::Vote<MemberId>;
/// Openraft's storage error of this group.
pub type StorageError = openraft::StorageError<MemberId>;
/// Snapshot metadata of this group.
pub type SnapshotMeta = openraft::SnapshotMeta<MemberId, MemberNode>;
/// The membership as stored with an applied log id.
pub type StoredMembership = openraft::StoredMembership<MemberId, MemberNode>;
/// The Raft handle of this group.
pub type Raft = openraft::Raft<TypeConfig>;

/// Encodes a replicated structure (bincode over serde, standard configuration: the
/// same bytes on every member).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
}

/// Decodes what [`encode`] wrote; every byte must belong to the value.
/// Errors: [`DecodeError`] (not such a value, or trailing bytes).
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| DecodeError(e.to_string()))?;
    if read != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes after the value",
            bytes.len() - read
        )));
    }
    Ok(value)
}

/// Bytes that do not decode as the value expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("does not decode: {0}")]
pub struct DecodeError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_trailing_bytes_are_refused() {
        let entry = GroupEntry {
            first_seq: 7,
            records: vec![b"one".to_vec(), b"two".to_vec()],
        };
        assert_eq!(entry.last_seq(), 8);
        let mut bytes = encode(&entry).unwrap();
        assert_eq!(decode::<GroupEntry>(&bytes).unwrap(), entry);
        bytes.push(0);
        assert!(decode::<GroupEntry>(&bytes).is_err());
        assert!(decode::<GroupEntry>(&bytes[..3]).is_err());
    }
}
