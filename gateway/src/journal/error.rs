//! The journal's errors, typed (issue 26 item 4): what failed, on which file, and
//! why. The texts are the ones operators and tests already read (a path, an offset,
//! "refusing to start", the option that overrides it); callers that still speak
//! `String` (the router's start-up) convert with `From`.

use super::classify::Damage;
use std::path::PathBuf;
use std::sync::Arc;

/// A storage operation that failed (`storage::Storage`).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {op}: {source}", path = .path.display())]
pub struct StorageError {
    /// What was attempted ("read", "append", "fdatasync", ...).
    pub op: &'static str,
    /// The file (for in-memory storage, its name).
    pub path: PathBuf,
    /// The operating system's (or the fault injector's) error.
    #[source]
    pub source: std::io::Error,
}

impl StorageError {
    /// `source` while doing `op` on `path`.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError {
            op,
            path: path.into(),
            source,
        }
    }

    /// The file was not there (a listing raced a removal, or a test's storage lost it).
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::NotFound
    }
}

/// Everything the journal, its files and its recovery can fail with.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An append larger than `record::RECORD_PAYLOAD_MAX`: refused before it is
    /// written (R-OPS-4: nothing unreplayable is journaled).
    #[error("journal record of {bytes} bytes is over the {max}-byte limit")]
    RecordTooLarge {
        /// The payload's size, bytes.
        bytes: usize,
        /// `record::RECORD_PAYLOAD_MAX`.
        max: usize,
    },
    /// A payload that passes its checksum but is not a `JournalRecord`.
    #[error("journal record does not decode: {reason}")]
    Decode {
        /// bincode's account of it, or the count of trailing bytes.
        reason: String,
    },
    /// A record passes its checksum but does not decode: written by other code, or
    /// corrupted before it was checksummed. Nothing after it can be replayed.
    #[error(
        "journal {path} at offset {offset}: record {seq} passes its checksum but does not \
         decode ({reason}); refusing to start",
        path = .path.display()
    )]
    Undecodable {
        /// The segment.
        path: PathBuf,
        /// Where the record starts, bytes from the start of the segment.
        offset: usize,
        /// The record's sequence number.
        seq: u64,
        /// What the decoder said.
        reason: String,
    },
    /// Damage before the journal's tail (`classify::Verdict::Refuse`).
    #[error(
        "journal corrupt before its tail: {path} at offset {offset}: {damage}; refusing to \
         start (journal.allow_corrupt_truncate, or --allow-corrupt-truncate, cuts the journal \
         there and loses every record after it)",
        path = .path.display()
    )]
    CorruptBeforeTail {
        /// The damaged segment.
        path: PathBuf,
        /// Where the damage starts, bytes from the start of the segment.
        offset: usize,
        /// What is wrong there.
        damage: Damage,
    },
    /// Segments exist, none starts at 1, and no snapshot covers what they skip.
    #[error(
        "{dir}: the journal starts after seq 1 and no valid snapshot covers it",
        dir = .dir.display()
    )]
    NoStart {
        /// The data directory.
        dir: PathBuf,
    },
    /// A segment file that does not begin with a segment header.
    #[error("{path}: {fault}", path = .path.display())]
    SegmentHeader {
        /// The segment.
        path: PathBuf,
        /// What is wrong with its header.
        fault: super::classify::HeaderFault,
    },
    /// A snapshot, market or network-id file that does not verify.
    #[error("{path}: {what}", path = .path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (bad magic, checksum mismatch, a length, ...).
        what: String,
    },
    /// The journal's writer failed earlier; no command can become durable any more
    /// (fail-stop: the first failure, shared by everyone who asks afterwards).
    #[error(transparent)]
    Stopped(Arc<JournalError>),
    /// A journal thread could not be started.
    #[error("{thread} thread: {source}")]
    Thread {
        /// Which thread.
        thread: &'static str,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot replica failure (`replica`).
    #[error("snapshot replica: {what}")]
    Replica {
        /// What went wrong.
        what: String,
    },
    /// Issue 25 (R-HA-2): the replicated journal of a leader that lost office (or
    /// whose proposals failed): every later call fails the same way, and the
    /// pipeline must drop its unreleased promises.
    #[error("replicated journal: office of term {term} lost: {reason}")]
    OfficeLost {
        /// The term this member led.
        term: u64,
        /// What showed it (a new leader, a refused proposal, shutdown).
        reason: String,
    },
}

/// A configuration word that is not one of the allowed ones
/// (`journal.durability`, `journal.io`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} must be {allowed}, not {}", crate::config::echo(.value))]
pub struct ChoiceError {
    /// The setting.
    pub key: &'static str,
    /// The allowed words, as a sentence.
    pub allowed: &'static str,
    /// What was given.
    pub value: String,
}

impl From<ChoiceError> for String {
    fn from(error: ChoiceError) -> String {
        error.to_string()
    }
}

impl From<JournalError> for String {
    /// For the callers that still report errors as text (the router's start-up,
    /// the sequencer's run loop): the same text as `Display`.
    fn from(error: JournalError) -> String {
        error.to_string()
    }
}

impl From<StorageError> for String {
    fn from(error: StorageError) -> String {
        error.to_string()
    }
}
