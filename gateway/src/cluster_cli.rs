//! `yellowstone-router cluster keygen|init|add|remove|status` (issue 25, SPEC §12,
//! docs/replication.md): operations on a replicated group through one member's
//! member RPC listener (`cluster.raft_listen`), every request MAC'd with the group's
//! cluster key. Exit codes: 0 done, 1 refused (a bad argument, the group said no),
//! 2 a member could not be reached (named, with the address tried).

use clap::Subcommand;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use yellowstone_gateway::replication::admin::{self, AdminRequest, AdminResponse};
use yellowstone_gateway::replication::{self, ClusterStatus, MemberNode, ReplicationError};

/// How long one admin request may take (a membership change waits for its commit).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Writes a new cluster key (32 random bytes, mode 0600) to --out. Copy it to
    /// every member's and learner's data directory as `cluster.key` before they start.
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
        /// The group's cluster key file.
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

/// `ID=RAFT_ADDR`.
fn parse_member(given: &str) -> Result<(u64, SocketAddr), ClusterCliError> {
    let bad = |reason: &str| ClusterCliError::BadMember {
        given: given.to_string(),
        reason: reason.to_string(),
    };
    let (id, addr) = given.split_once('=').ok_or_else(|| bad("no '='"))?;
    let id: u64 = id.trim().parse().map_err(|_| bad("ID is not a number"))?;
    if id == 0 {
        return Err(bad("ID must be at least 1"));
    }
    let addr = addr
        .trim()
        .parse()
        .map_err(|_| bad("RAFT_ADDR is not an IP host:port"))?;
    Ok((id, addr))
}

/// One admin request; a connection failure is `Unreachable` (exit 2).
fn call(
    addr: SocketAddr,
    key: &replication::ClusterKey,
    request: AdminRequest,
) -> Result<AdminResponse, ClusterCliError> {
    admin::call(addr, key, request, ADMIN_TIMEOUT).map_err(|error| match error {
        ReplicationError::Remote { what, .. } => ClusterCliError::Unreachable { addr, reason: what },
        other => ClusterCliError::Replication(other),
    })
}

fn status_of(
    addr: SocketAddr,
    key: &replication::ClusterKey,
) -> Result<ClusterStatus, ClusterCliError> {
    match call(addr, key, AdminRequest::Status)? {
        AdminResponse::Status(status) => Ok(*status),
        other => Err(ClusterCliError::Unexpected {
            addr,
            answer: format!("{other:?}"),
        }),
    }
}

/// The node record of the member at `addr`, checked to be member `id`.
fn node_of(
    id: u64,
    addr: SocketAddr,
    key: &replication::ClusterKey,
) -> Result<MemberNode, ClusterCliError> {
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

fn done(addr: SocketAddr, answer: AdminResponse) -> Result<(), ClusterCliError> {
    match answer {
        AdminResponse::Done => Ok(()),
        other => Err(ClusterCliError::Unexpected {
            addr,
            answer: format!("{other:?}"),
        }),
    }
}

/// The status as a person reads it.
fn status_text(status: &ClusterStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let leader = status
        .leader
        .map_or("none known".to_string(), |(id, addr)| format!("member {id} at {addr}"));
    let _ = writeln!(
        out,
        "member {} ({}), term {}, leader {leader}\ncommit index {}, applied {}, last log {}",
        status.member_id,
        status.role,
        status.term,
        status.commit_index,
        status.applied_index,
        status.last_log_index
    );
    let _ = writeln!(out, "{:>4}  {:<8}  {:<21}  {:<21}  {:>8}  {:>6}", "id", "role", "raft", "clients", "matched", "lag");
    for member in &status.members {
        let (matched, lag) = match member.matched_index {
            Some(matched) => (
                matched.to_string(),
                status.last_log_index.saturating_sub(matched).to_string(),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        let role = if status.leader.is_some_and(|(id, _)| id == member.id) {
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
    out
}

pub fn run(command: ClusterCmd) -> Result<(), ClusterCliError> {
    match command {
        ClusterCmd::Keygen { out } => {
            replication::write_cluster_key(&out)?;
            println!(
                "cluster key written to {}: copy it to every member's data directory as \
                 cluster.key (mode 0600)",
                out.display()
            );
            Ok(())
        }
        ClusterCmd::Init { raft, key, members } => {
            let key = replication::read_cluster_key(&key)?;
            let mut nodes = std::collections::BTreeMap::new();
            for given in &members {
                let (id, addr) = parse_member(given)?;
                nodes.insert(id, node_of(id, addr, &key)?);
            }
            done(raft, call(raft, &key, AdminRequest::Init { members: nodes })?)?;
            println!("group initialised with {} members", members.len());
            Ok(())
        }
        ClusterCmd::Add {
            raft,
            key,
            member,
            learner,
        } => {
            let key = replication::read_cluster_key(&key)?;
            let (id, addr) = parse_member(&member)?;
            let node = node_of(id, addr, &key)?;
            done(
                raft,
                call(raft, &key, AdminRequest::Add { id, node, learner })?,
            )?;
            println!(
                "member {id} added as a {}",
                if learner { "learner" } else { "voter" }
            );
            Ok(())
        }
        ClusterCmd::Remove { raft, key, id } => {
            let key = replication::read_cluster_key(&key)?;
            done(raft, call(raft, &key, AdminRequest::Remove { id })?)?;
            println!("member {id} removed");
            Ok(())
        }
        ClusterCmd::Status { raft, key, json } => {
            let key = replication::read_cluster_key(&key)?;
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
            ("0=127.0.0.1:7412", "at least 1"),
            ("2=localhost:7412", "RAFT_ADDR"),
        ] {
            let error = parse_member(given).unwrap_err().to_string();
            assert!(error.contains(reason), "{given}: {error}");
        }
    }
}
