//! `yellowstone-router cluster keygen|init|add|remove|status` (issue 25, SPEC §12,
//! docs/replication.md): operations on a replicated group through one member's
//! member RPC listener (`cluster.raft_listen`), every request MAC'd with the group's
//! cluster key. Exit codes: 0 done, 1 refused (a bad argument, the group said no),
//! 2 a member could not be reached (named, with the address tried).

use clap::Subcommand;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use yellowstone_gateway::replication::config::MEMBER_ID_MAX;
use yellowstone_gateway::replication::network::{
    admin_call, AdminReply, AdminRequest, ClusterKey, KEY_FILE,
};
use yellowstone_gateway::replication::{ClusterStatus, MemberNode, ReplicationError};

/// How long one admin request may take (adding a member waits until it caught up).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Leaders followed for one request at most (a change of leader while asking).
const LEADER_HOPS_MAX: usize = 3;

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Writes a new cluster key (32 random bytes, mode 0600) to --out (a file of
    /// any name, or a directory to write cluster.key in; never overwrites). Copy it
    /// to every member's and learner's data directory as cluster.key before they
    /// start.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Starts a new group of the given members (each `ID=RAFT_ADDR`, 1, 3 or 5 of
    /// them, all running), through the member at --raft. Each member is asked for its
    /// configured id (which must be ID) and client endpoint first.
    Init {
        /// A member's `cluster.raft_listen`.
        #[arg(long)]
        raft: SocketAddr,
        /// The group's key file (any name: a copy of cluster.key will do), or a
        /// data directory holding cluster.key.
        #[arg(long)]
        key: PathBuf,
        /// `ID=RAFT_ADDR`, once per member.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Adds a member (`ID=RAFT_ADDR`, running) as a voter, or as a learner with
    /// --learner; sent to the leader (found through --raft).
    Add {
        #[arg(long)]
        raft: SocketAddr,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        member: String,
        /// A non-voting learner (R-HA-4): replicates and checks, never leads.
        #[arg(long)]
        learner: bool,
    },
    /// Removes member --id from the group (its id is never reused).
    Remove {
        #[arg(long)]
        raft: SocketAddr,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        id: u64,
    },
    /// Prints the (block, state hash) pairs the member at --raft recorded when its
    /// state machine entered each block (R-HA-4), oldest first, one `BLOCK HASH` line
    /// each (or one JSON array of [block, "hex"]): equal on every member.
    Hashes {
        #[arg(long)]
        raft: SocketAddr,
        #[arg(long)]
        key: PathBuf,
        /// The first block wanted.
        #[arg(long, default_value_t = 0)]
        from_block: u64,
        /// At most this many pairs.
        #[arg(long, default_value_t = 64)]
        max: usize,
        #[arg(long)]
        json: bool,
    },
    /// Prints the group as the member at --raft sees it: term, leader, commit index,
    /// each member's role, matched index and lag.
    Status {
        #[arg(long)]
        raft: SocketAddr,
        #[arg(long)]
        key: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Why a `cluster` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterCliError {
    /// A `--member` argument that is not `ID=RAFT_ADDR`.
    #[error("--member {given:?}: {reason} (expected ID=RAFT_ADDR, e.g. 2=127.0.0.1:7412)")]
    BadMember { given: String, reason: String },
    /// A `--id` out of 1..=[`MEMBER_ID_MAX`].
    #[error("--id {id}: {reason}")]
    BadId { id: u64, reason: String },
    /// A member could not be reached (exit code 2).
    #[error(
        "member at {addr} unreachable: {reason} (is it running with cluster.raft_listen = \
         \"{addr}\" and the same cluster.key?)"
    )]
    Unreachable { addr: SocketAddr, reason: String },
    /// A member's configured id is not the one given.
    #[error("--member {id}={addr}: that member is configured as cluster.member_id = {actual}")]
    WrongId {
        id: u64,
        addr: SocketAddr,
        actual: u64,
    },
    /// The group refused, or a key or reply was bad.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The key file given by `flag` (`--key` or `--out`) could not be read or
    /// written (missing: "no such file"; wrong size or mode; already exists).
    #[error("{flag} {}: {what}", path.display())]
    KeyFile {
        flag: &'static str,
        path: PathBuf,
        what: String,
    },
    /// The group said no (openraft's reason, or no leader).
    #[error("member at {addr} refused: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    /// The answer was not the one asked for.
    #[error("member at {addr}: unexpected answer {answer}")]
    Unexpected { addr: SocketAddr, answer: String },
    #[error("printing the status: {0}")]
    Json(#[from] serde_json::Error),
}

impl ClusterCliError {
    /// 2 when a member could not be reached, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClusterCliError::Unreachable { .. } => 2,
            _ => 1,
        }
    }
}

/// A member id within 1..=[`MEMBER_ID_MAX`] (the bound `cluster.member_id` has), or
/// the reason naming the value and the bound.
fn check_id(id: u64) -> Result<(), String> {
    if (1..=MEMBER_ID_MAX).contains(&id) {
        Ok(())
    } else {
        Err(format!("ID {id} out of 1..={MEMBER_ID_MAX}"))
    }
}

/// `ID=RAFT_ADDR`.
fn parse_member(given: &str) -> Result<(u64, SocketAddr), ClusterCliError> {
    let bad = |reason: &str| ClusterCliError::BadMember {
        given: given.to_string(),
        reason: reason.to_string(),
    };
    let (id, addr) = given.split_once('=').ok_or_else(|| bad("no '='"))?;
    let id: u64 = id.trim().parse().map_err(|_| bad("ID is not a number"))?;
    check_id(id).map_err(|reason| bad(&reason))?;
    let addr = addr
        .trim()
        .parse()
        .map_err(|_| bad("RAFT_ADDR is not an IP host:port"))?;
    Ok((id, addr))
}

/// The key file a `--key`/`--out` path names: `path` itself, or the cluster.key
/// in it when it is a directory. Any file name is accepted (a copy of the group's
/// key need not be named cluster.key).
fn key_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(KEY_FILE)
    } else {
        path.to_path_buf()
    }
}

/// A key error reported under the flag the operator gave.
fn key_error(flag: &'static str, error: ReplicationError) -> ClusterCliError {
    match error {
        ReplicationError::Key { path, what } => ClusterCliError::KeyFile { flag, path, what },
        other => ClusterCliError::Replication(other),
    }
}

/// The group's key from `--key` (a file of any name, or a directory holding
/// cluster.key).
fn load_key(path: &Path) -> Result<ClusterKey, ClusterCliError> {
    ClusterKey::load_file(&key_file(path)).map_err(|e| key_error("--key", e))
}

/// One admin request; a member that cannot be reached or does not answer is
/// `Unreachable` (exit 2).
fn call(
    addr: SocketAddr,
    key: &ClusterKey,
    request: AdminRequest,
) -> Result<AdminReply, ClusterCliError> {
    let frame_bytes_max =
        yellowstone_gateway::replication::ClusterConfig::default().rpc_frame_bytes_max;
    admin_call(addr, key, request, ADMIN_TIMEOUT, frame_bytes_max).map_err(|error| match error {
        ReplicationError::Unreachable { what, .. } | ReplicationError::Remote { what, .. } => {
            ClusterCliError::Unreachable { addr, reason: what }
        }
        // ClosedUnanswered (most likely another key) stays a refusal: exit 1.
        other => ClusterCliError::Replication(other),
    })
}

/// A membership change, sent to the leader: a member that does not lead names it,
/// and the request follows (a few hops at most).
fn change(
    addr: SocketAddr,
    key: &ClusterKey,
    request: AdminRequest,
) -> Result<(), ClusterCliError> {
    let mut addr = addr;
    for _ in 0..LEADER_HOPS_MAX {
        match call(addr, key, request.clone())? {
            AdminReply::Done => return Ok(()),
            AdminReply::NotLeader {
                leader: Some((_, raft)),
            } => {
                addr = raft.parse().map_err(|_| ClusterCliError::Unexpected {
                    addr,
                    answer: format!("a leader at {raft:?}"),
                })?;
            }
            AdminReply::NotLeader { leader: None } => {
                return Err(ClusterCliError::Refused {
                    addr,
                    reason: "no leader known (election in progress, or the group is not \
                             initialised): try again"
                        .into(),
                })
            }
            AdminReply::Failed { reason } => return Err(ClusterCliError::Refused { addr, reason }),
            other => {
                return Err(ClusterCliError::Unexpected {
                    addr,
                    answer: format!("{other:?}"),
                })
            }
        }
    }
    Err(ClusterCliError::Refused {
        addr,
        reason: format!("the leader moved {LEADER_HOPS_MAX} times while asking: try again"),
    })
}

fn status_of(addr: SocketAddr, key: &ClusterKey) -> Result<ClusterStatus, ClusterCliError> {
    match call(addr, key, AdminRequest::Status)? {
        AdminReply::Status(status) => Ok(status),
        AdminReply::Failed { reason } => Err(ClusterCliError::Refused { addr, reason }),
        other => Err(ClusterCliError::Unexpected {
            addr,
            answer: format!("{other:?}"),
        }),
    }
}

/// The node record of the member at `addr`, checked to be member `id`.
fn node_of(id: u64, addr: SocketAddr, key: &ClusterKey) -> Result<MemberNode, ClusterCliError> {
    let status = status_of(addr, key)?;
    if status.member_id != id {
        return Err(ClusterCliError::WrongId {
            id,
            addr,
            actual: status.member_id,
        });
    }
    Ok(MemberNode {
        raft_addr: addr.to_string(),
        client_endpoint: status.client_endpoint,
    })
}

/// An index as printed (`-`: none yet).
fn index(value: Option<u64>) -> String {
    value.map_or("-".to_string(), |v| v.to_string())
}

/// The status as a person reads it.
fn status_text(status: &ClusterStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let leader = match (status.leader_id, &status.leader_endpoint) {
        (Some(id), Some(endpoint)) => format!("member {id} (clients: {endpoint})"),
        (Some(id), None) => format!("member {id}"),
        _ => "none known".to_string(),
    };
    let _ = writeln!(
        out,
        "member {} ({}), term {}, leader {leader}\ncommitted index {}, applied {}, last log {}, snapshot {}",
        status.member_id,
        status.state,
        status.term,
        index(status.committed_index),
        index(status.applied_index),
        index(status.last_log_index),
        index(status.snapshot_index),
    );
    let _ = writeln!(
        out,
        "{:>4}  {:<8}  {:<21}  {:<21}  {:>8}  {:>6}",
        "id", "role", "raft", "clients", "matched", "lag"
    );
    let last = status.last_log_index.unwrap_or(0);
    for member in &status.members {
        let (matched, lag) = match member.matched_index {
            Some(matched) => (
                matched.to_string(),
                last.saturating_sub(matched).to_string(),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        let role = if status.leader_id == Some(member.id) {
            "leader"
        } else if member.voter {
            "voter"
        } else {
            "learner"
        };
        let _ = writeln!(
            out,
            "{:>4}  {:<8}  {:<21}  {:<21}  {:>8}  {:>6}",
            member.id, role, member.raft_addr, member.client_endpoint, matched, lag
        );
    }
    if status.members.iter().all(|m| m.matched_index.is_none()) && status.state != "leader" {
        out.push_str("(matched indexes are the leader's knowledge: ask the leader)\n");
    }
    out
}

pub fn run(command: ClusterCmd) -> Result<(), ClusterCliError> {
    match command {
        ClusterCmd::Keygen { out } => {
            let path = key_file(&out);
            ClusterKey::create_file(&path).map_err(|e| key_error("--out", e))?;
            println!(
                "cluster key written to {}: copy it to every member's data directory as \
                 cluster.key (mode 0600)",
                path.display()
            );
            Ok(())
        }
        ClusterCmd::Init { raft, key, members } => {
            let key = load_key(&key)?;
            let mut nodes = std::collections::BTreeMap::new();
            for given in &members {
                let (id, addr) = parse_member(given)?;
                nodes.insert(id, node_of(id, addr, &key)?);
            }
            change(raft, &key, AdminRequest::Init { members: nodes })?;
            println!("group initialised with {} members", members.len());
            Ok(())
        }
        ClusterCmd::Add {
            raft,
            key,
            member,
            learner,
        } => {
            let key = load_key(&key)?;
            let (id, addr) = parse_member(&member)?;
            let node = node_of(id, addr, &key)?;
            let request = if learner {
                AdminRequest::AddLearner { id, node }
            } else {
                AdminRequest::AddVoter { id, node }
            };
            change(raft, &key, request)?;
            println!(
                "member {id} added as a {}",
                if learner { "learner" } else { "voter" }
            );
            Ok(())
        }
        ClusterCmd::Remove { raft, key, id } => {
            check_id(id).map_err(|reason| ClusterCliError::BadId { id, reason })?;
            let key = load_key(&key)?;
            change(raft, &key, AdminRequest::Remove { id })?;
            println!("member {id} removed");
            Ok(())
        }
        ClusterCmd::Hashes {
            raft,
            key,
            from_block,
            max,
            json,
        } => {
            let key = load_key(&key)?;
            let pairs = match call(raft, &key, AdminRequest::StateHashes { from_block, max })? {
                AdminReply::StateHashes(pairs) => pairs,
                other => {
                    return Err(ClusterCliError::Unexpected {
                        addr: raft,
                        answer: format!("{other:?}"),
                    })
                }
            };
            let pairs: Vec<(u64, String)> = pairs
                .into_iter()
                .map(|(block, hash)| (block, hex::encode(hash)))
                .collect();
            if json {
                println!("{}", serde_json::to_string(&pairs)?);
            } else {
                for (block, hash) in pairs {
                    println!("{block} {hash}");
                }
            }
            Ok(())
        }
        ClusterCmd::Status { raft, key, json } => {
            let key = load_key(&key)?;
            let status = status_of(raft, &key)?;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                print!("{}", status_text(&status));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_member("2=127.0.0.1:7412").unwrap(),
            (2, "127.0.0.1:7412".parse().unwrap())
        );
        for (given, reason) in [
            ("127.0.0.1:7412", "no '='"),
            ("x=127.0.0.1:7412", "ID is not a number"),
            ("0=127.0.0.1:7412", "out of 1..="),
            ("9223372036854775808=127.0.0.1:7412", "out of 1..="),
            ("2=localhost:7412", "RAFT_ADDR"),
        ] {
            let error = parse_member(given).unwrap_err().to_string();
            assert!(error.contains(reason), "{given}: {error}");
        }
    }
}
