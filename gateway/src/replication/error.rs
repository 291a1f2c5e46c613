//! The typed errors of replication (R-HA-1..4).

use crate::config::ConfigError;
use crate::journal::StorageError as FileError;
use std::path::PathBuf;

/// Why a member could not start, act or answer.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// A `[cluster]` key is out of bounds.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file of `<data_dir>/raft/` could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The Raft log on disk is damaged before its tail (not a torn write: a record
    /// that does not check out is followed by more data, or an entry is out of order).
    #[error("raft log {file}: {what}")]
    CorruptLog {
        /// The segment's name.
        file: String,
        /// What is wrong, naming the offset or index.
        what: String,
    },
    /// A stored snapshot or vote does not decode or check out.
    #[error("{file}: {what}")]
    BadFile {
        /// The file's name.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// `<data_dir>/cluster.key` is missing, unreadable, not 32 bytes, or readable by
    /// others.
    #[error("cluster key {}: {what}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A socket could not be bound or a thread or runtime not started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Openraft refused or failed a request (its message).
    #[error("raft {op}: {reason}")]
    Raft {
        /// The request: "initialize", "add learner", "change membership", ...
        op: &'static str,
        /// Openraft's error, as text.
        reason: String,
    },
    /// The request needs the leader and this member is not it.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's id and client endpoint, if known.
        leader: Option<(u64, String)>,
    },
    /// This member led in `term` and no longer does: its pipeline's promises must
    /// be dropped (REPL_DESIGN.md "Process roles").
    #[error("office lost: this member no longer leads term {term}")]
    OfficeLost {
        /// The term this member led.
        term: u64,
    },
    /// An admin request to another member failed (connect, timeout, bad answer).
    #[error("member at {addr}: {what}")]
    Remote {
        /// The member's RPC address.
        addr: String,
        /// What failed.
        what: String,
    },
    /// The member at `addr` accepted the connection, read our MAC'd request and
    /// closed without an answer: what a member does with a frame whose MAC fails,
    /// so its cluster.key most likely differs (a refusal, not unreachability).
    #[error(
        "member at {addr} closed the connection without answering our request: its \
         cluster.key likely differs from the one given (it counts the request in \
         yellowstone_cluster_bad_macs_total)"
    )]
    ClosedUnanswered {
        /// The member's RPC address.
        addr: String,
    },
    /// No connection to the member at `addr` (refused, or connect timed out).
    #[error("member at {addr} unreachable: {what}")]
    Unreachable {
        /// The member's RPC address.
        addr: String,
        /// Why.
        what: String,
    },
    /// The member is shut down.
    #[error("the member is shut down")]
    Stopped,
}
