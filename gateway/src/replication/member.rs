//! One member of a replicated router group (REPL_DESIGN.md "Member API"; SPEC §12,
//! R-HA-1..4): the Raft node (log store, state machine, member RPC) and what the
//! router process asks of it: its role, a promotion when it leads, the replicated
//! journal of its pipeline, its status, shutdown.
//!
//! [`MemberCore`] is the async core (used as is by the simulation, on its own
//! runtime); [`Member`] runs a core on a dedicated thread with a current-thread tokio
//! runtime, and offers the blocking API the router's threads call.

use super::config::ClusterConfig;
use super::durability::{Promotion, ReplicatedDurability};
use super::log_store::{LogStats, LogStore};
use super::network::{
    self, AdminHandler, AdminReply, AdminRequest, ClusterKey, NetLimits, NetStats, TcpNetwork,
};
use super::state_machine::{Machine, MachineConfig, MachineStore};
use super::types::{MemberId, MemberNode, Raft, TypeConfig};
use super::ReplicationError;
use crate::journal::{FileStorage, JournalIo};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{RaftNetworkFactory, ServerState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use yellowstone_engine::{Engine, MarketConfig};

pub use super::state_machine::ApplyObserver;

/// What this member is, as the router acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A voter that does not lead (also while a candidate): answers clients
    /// `not_leader` naming the leader if known.
    Follower {
        /// The current term.
        term: u64,
        /// The leader's id and client endpoint, if known.
        leader: Option<(MemberId, SocketAddr)>,
    },
    /// This member leads `term`: call [`Member::promote`], then run the pipeline.
    Leader {
        /// The term led.
        term: u64,
    },
    /// A learner (R-HA-4): applies and checks, never votes or leads.
    Learner {
        /// The leader's id and client endpoint, if known.
        leader: Option<(MemberId, SocketAddr)>,
    },
    /// Stopped (shutdown, or a fatal storage error).
    Stopped,
}

/// One member as [`ClusterStatus`] shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its id.
    pub id: MemberId,
    /// Its member RPC address.
    pub raft_addr: String,
    /// Its client endpoint.
    pub client_endpoint: String,
    /// A voter (false: a learner).
    pub voter: bool,
    /// The highest log index known replicated to it (leader only; None elsewhere or
    /// not yet known).
    pub matched_index: Option<u64>,
}

/// A member's view of its group (`cluster status`, metrics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This member's id.
    pub member_id: MemberId,
    /// This member's client endpoint (`cluster.client_endpoint`, filled by the router
    /// with its gateways' address): `cluster init|add` put it in the member's node.
    pub client_endpoint: String,
    /// "leader", "follower", "candidate", "learner" or "stopped".
    pub state: String,
    /// The current term.
    pub term: u64,
    /// The leader's id, if known.
    pub leader_id: Option<MemberId>,
    /// The leader's client endpoint, if known.
    pub leader_endpoint: Option<String>,
    /// The last log index on this member.
    pub last_log_index: Option<u64>,
    /// The highest log index this member knows committed.
    pub committed_index: Option<u64>,
    /// The last log index its state machine applied.
    pub applied_index: Option<u64>,
    /// The last index its latest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// The journal sequence number the next record gets.
    pub next_seq: u64,
    /// Every member of the group.
    pub members: Vec<MemberStatus>,
    /// Entries skipped as stale (a deposed leader's late proposals).
    pub stale_entries: u64,
    /// Member RPC frames refused for a bad MAC.
    pub bad_macs: u64,
}

/// The async core of a member; see the module comment.
pub struct MemberCore {
    id: MemberId,
    config: ClusterConfig,
    raft: Raft,
    machine: Arc<Machine>,
    log_stats: Arc<LogStats>,
    net_stats: Arc<NetStats>,
    role: watch::Receiver<Role>,
}

fn leader_of(
    metrics: &openraft::RaftMetrics<MemberId, MemberNode>,
) -> Option<(MemberId, SocketAddr)> {
    let leader = metrics.current_leader?;
    let node = metrics.membership_config.membership().get_node(&leader)?;
    let endpoint = node.client_endpoint.parse().ok()?;
    Some((leader, endpoint))
}

fn role_of(metrics: &openraft::RaftMetrics<MemberId, MemberNode>) -> Role {
    if metrics.running_state.is_err() {
        return Role::Stopped;
    }
    match metrics.state {
        ServerState::Leader => Role::Leader {
            term: metrics.current_term,
        },
        ServerState::Learner => Role::Learner {
            leader: leader_of(metrics),
        },
        ServerState::Shutdown => Role::Stopped,
        ServerState::Follower | ServerState::Candidate => Role::Follower {
            term: metrics.current_term,
            leader: leader_of(metrics),
        },
    }
}

fn raft_failed<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> ReplicationError {
    move |e| ReplicationError::Raft {
        op,
        reason: e.to_string(),
    }
}

impl MemberCore {
    /// Starts the Raft node over `log` and `machine`, reaching peers through
    /// `network`, on the current tokio runtime.
    /// Errors: openraft's configuration or start-up (storage) errors.
    pub async fn start<N: RaftNetworkFactory<TypeConfig>>(
        id: MemberId,
        config: &ClusterConfig,
        log: LogStore,
        machine: Arc<Machine>,
        network: N,
        net_stats: Arc<NetStats>,
    ) -> Result<MemberCore, ReplicationError> {
        let raft_config = Arc::new(config.raft_config()?);
        let log_stats = log.stats.clone();
        let raft = Raft::new(id, raft_config, network, log, MachineStore(machine.clone()))
            .await
            .map_err(raft_failed("start"))?;
        machine.set_raft(raft.clone());
        let mut metrics = raft.metrics();
        let (role_tx, role) = watch::channel(role_of(&metrics.borrow()));
        tokio::spawn(async move {
            loop {
                let role = role_of(&metrics.borrow_and_update());
                role_tx.send_if_modified(|old| {
                    let changed = *old != role;
                    *old = role.clone();
                    changed
                });
                if role == Role::Stopped || metrics.changed().await.is_err() {
                    role_tx.send_replace(Role::Stopped);
                    return;
                }
            }
        });
        Ok(MemberCore {
            id,
            config: config.clone(),
            raft,
            machine,
            log_stats,
            net_stats,
            role,
        })
    }

    /// The Raft handle (tests, the simulation).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The state machine (tests, checks).
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// This member's id.
    pub fn id(&self) -> MemberId {
        self.id
    }

    /// The role, as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// For a member that leads: confirms it with a quorum, waits until its state
    /// machine applied every entry of its log (so everything committed before, and
    /// the term's blank entry), then copies that engine.
    /// Errors: [`ReplicationError::Stopped`]; [`ReplicationError::OfficeLost`] when
    /// this member does not lead (term 0 for a learner), or the leadership it saw is
    /// not confirmed or moves before the copy (a member restarted as the leader of a
    /// term the others left behind does this): call again on the next `Role::Leader`.
    pub async fn promote(&self) -> Result<Promotion, ReplicationError> {
        let current = self.role.borrow().clone();
        match current {
            Role::Stopped => Err(ReplicationError::Stopped),
            Role::Leader { term } => match self.raft.ensure_linearizable().await {
                Ok(_) => match self.copy_when_caught_up(term).await? {
                    Some(promotion) => Ok(promotion),
                    None => Err(ReplicationError::OfficeLost { term }),
                },
                Err(RaftError::Fatal(_)) => Err(ReplicationError::Stopped),
                Err(RaftError::APIError(e)) => {
                    // E.g. a member restarted as the leader of an old term that a quorum
                    // has left behind (it steps down next), or one confirmation lost.
                    tracing::info!(term, error = %e, "promotion refused: leadership not confirmed");
                    Err(ReplicationError::OfficeLost { term })
                }
            },
            // Not waiting for a leadership that may never come: the process loop asks
            // again on its next `Role::Leader` (raft-b, SEAMS 06:15).
            Role::Follower { term, .. } => Err(ReplicationError::OfficeLost { term }),
            Role::Learner { .. } => Err(ReplicationError::OfficeLost { term: 0 }),
        }
    }

    /// Waits until the state machine applied every entry in this leader's log (its
    /// whole log, not only what it knows committed: a leader restarted within its
    /// term, which openraft allows without a new blank entry, may have lost its commit
    /// mark; every entry it holds is committed by it as it leads), then copies the
    /// engine. None: the term or leader changed meanwhile, or the log was not applied
    /// within two election timeouts (no quorum): the caller asks again.
    async fn copy_when_caught_up(&self, term: u64) -> Result<Option<Promotion>, ReplicationError> {
        let mut metrics = self.raft.metrics();
        let target = metrics.borrow().last_log_index;
        // A leader that cannot commit its own log (no quorum: openraft 0.9 has no
        // CheckQuorum) gives the promotion up after this; the caller asks again.
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(2 * self.config.election_timeout_max_ms);
        loop {
            let m = metrics.borrow_and_update().clone();
            if m.current_term != term || m.current_leader != Some(self.id) {
                return Ok(None);
            }
            if m.last_applied.map(|l| l.index) >= target {
                let copy = self.machine.copy_engine()?;
                debug_assert!(
                    copy.applied.map(|l| l.index) >= target,
                    "applied the leader's whole log"
                );
                let now = self.raft.metrics().borrow().clone();
                if now.current_term != term || now.current_leader != Some(self.id) {
                    return Ok(None);
                }
                tracing::info!(
                    term,
                    next_seq = copy.next_seq,
                    applied = ?copy.applied,
                    "promoted: this member leads"
                );
                return Ok(Some(Promotion {
                    engine: copy.engine,
                    next_seq: copy.next_seq,
                    term,
                }));
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ReplicationError::Stopped),
                Err(_) => {
                    tracing::warn!(
                        term,
                        applied = ?m.last_applied,
                        target = ?target,
                        "promotion given up: the leader's log was not applied in time"
                    );
                    return Ok(None);
                }
            }
        }
    }

    /// The replicated journal for `promotion`'s pipeline (spawns its proposer on the
    /// current tokio runtime).
    pub fn durability(&self, promotion: &Promotion) -> ReplicatedDurability {
        ReplicatedDurability::start(
            self.raft.clone(),
            self.id,
            promotion,
            self.config.entry_bytes_max as usize,
            self.config.proposals_in_flight_max,
            Duration::from_millis(self.config.election_timeout_max_ms * 2),
        )
    }

    /// The member's view of its group.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<MemberId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                raft_addr: node.raft_addr.clone(),
                client_endpoint: node.client_endpoint.clone(),
                voter: voters.contains(id),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map(|l| l.index),
            })
            .collect();
        let state = match role_of(&m) {
            Role::Stopped => "stopped",
            _ => match m.state {
                ServerState::Leader => "leader",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                _ => "follower",
            },
        };
        let committed = self.log_stats.committed_plus_one.load(Ordering::Relaxed);
        ClusterStatus {
            member_id: self.id,
            client_endpoint: self.config.client_endpoint.clone(),
            state: state.to_string(),
            term: m.current_term,
            leader_id: m.current_leader,
            leader_endpoint: m
                .current_leader
                .and_then(|l| membership.get_node(&l))
                .map(|n| n.client_endpoint.clone()),
            last_log_index: m.last_log_index,
            committed_index: committed.checked_sub(1),
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            next_seq: self.machine.next_seq(),
            members,
            stale_entries: self.machine.stats.stale_entries.load(Ordering::Relaxed),
            bad_macs: self.net_stats.bad_macs.load(Ordering::Relaxed),
        }
    }

    fn not_leader<E: std::fmt::Display>(
        &self,
        e: RaftError<MemberId, ClientWriteError<MemberId, MemberNode>>,
        _: E,
    ) -> AdminReply {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => AdminReply::NotLeader {
                leader: f.leader_id.zip(f.leader_node.map(|n| n.raft_addr)),
            },
            other => AdminReply::Failed {
                reason: other.to_string(),
            },
        }
    }

    /// The member's metrics once it knows a leader, or as they are after two
    /// election timeouts. Right after `cluster init` a member may not have elected
    /// itself yet, and its metrics then show no leader and no membership: a check of
    /// the members made on them would let a request through that the leader refuses.
    async fn metrics_with_a_leader(&self) -> openraft::RaftMetrics<MemberId, MemberNode> {
        let wait = Duration::from_millis(2 * self.config.election_timeout_max_ms);
        match self
            .raft
            .wait(Some(wait))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
        {
            Ok(m) => m,
            Err(_) => self.raft.metrics().borrow().clone(),
        }
    }

    /// Answers an operator's request.
    pub async fn admin(&self, request: AdminRequest) -> AdminReply {
        match request {
            AdminRequest::Status => AdminReply::Status(self.status()),
            AdminRequest::StateHashes { from_block, max } => AdminReply::StateHashes(
                self.machine
                    .state_hashes()
                    .into_iter()
                    .filter(|(block, _)| *block >= from_block)
                    .take(max.min(self.config.state_hashes_kept))
                    .collect(),
            ),
            AdminRequest::Init { members } => match self.raft.initialize(members).await {
                Ok(()) => AdminReply::Done,
                Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
                    let m = self.raft.metrics().borrow().clone();
                    AdminReply::Failed {
                        reason: format!(
                            "this member already belongs to a group (members: {}; term {}): \
                             `cluster init` starts a new group once; use `cluster add` to grow it",
                            member_list(&m),
                            m.current_term
                        ),
                    }
                }
                Err(e) => AdminReply::Failed {
                    reason: e.to_string(),
                },
            },
            AdminRequest::AddLearner { id, node } => {
                // Just after `cluster init` the leader may not be elected yet.
                let m = self.metrics_with_a_leader().await;
                if let Some(refusal) = refuse_addition(&m, id, &node, false) {
                    return refusal;
                }
                match self.raft.add_learner(id, node, true).await {
                    Ok(_) => AdminReply::Done,
                    Err(e) => self.not_leader(e, ""),
                }
            }
            AdminRequest::AddVoter { id, node } => {
                // Just after `cluster init` the leader may not be elected yet.
                let m = self.metrics_with_a_leader().await;
                if let Some(refusal) = refuse_addition(&m, id, &node, true) {
                    return refusal;
                }
                if let Err(e) = self.raft.add_learner(id, node, true).await {
                    return self.not_leader(e, "");
                }
                let change = openraft::ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                match self.raft.change_membership(change, false).await {
                    Ok(_) => AdminReply::Done,
                    Err(e) => self.not_leader(e, ""),
                }
            }
            AdminRequest::Remove { id } => {
                let m = self.metrics_with_a_leader().await;
                // Removing an id that is no member would be a no-op openraft accepts:
                // refuse it naming the members (the leader's view; a follower sends
                // the request on to the leader below).
                let members: Vec<u64> = m
                    .membership_config
                    .membership()
                    .nodes()
                    .map(|(member, _)| *member)
                    .collect();
                if m.current_leader == Some(m.id) && id == m.id {
                    // openraft 0.9 has no leadership transfer, and a leader removing itself
                    // in two steps (voter, then node) panics in openraft's core.
                    return AdminReply::Failed {
                        reason: format!(
                            "member {id} is the leader: stop its process (the others elect a \
                             leader within an election timeout), then remove it through another \
                             member"
                        ),
                    };
                }
                if m.current_leader == Some(m.id) && !members.contains(&id) {
                    let list: Vec<String> = members.iter().map(u64::to_string).collect();
                    return AdminReply::Failed {
                        reason: format!(
                            "member {id} is not in the group (members: {})",
                            list.join(", ")
                        ),
                    };
                }
                let is_voter = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id);
                let change = if is_voter {
                    openraft::ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                match self.raft.change_membership(change, false).await {
                    Ok(_) => {
                        if is_voter {
                            // Now a learner: remove the node too.
                            let change = openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]));
                            if let Err(e) = self.raft.change_membership(change, false).await {
                                return self.not_leader(e, "");
                            }
                        }
                        AdminReply::Done
                    }
                    Err(e) => self.not_leader(e, ""),
                }
            }
        }
    }
}

/// The members of `m`'s membership, "1, 2, 3".
fn member_list(m: &openraft::RaftMetrics<MemberId, MemberNode>) -> String {
    let ids: Vec<String> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| id.to_string())
        .collect();
    ids.join(", ")
}

/// An addition the leader (`m` its view) refuses rather than let openraft take it as a
/// no-op reported "added": `id` is already a member in that role, a voter asked to become
/// a learner, or the id named at another address. A follower's view is not checked (it
/// sends the request on to the leader).
fn refuse_addition(
    m: &openraft::RaftMetrics<MemberId, MemberNode>,
    id: MemberId,
    node: &MemberNode,
    as_voter: bool,
) -> Option<AdminReply> {
    if m.current_leader != Some(m.id) {
        return None;
    }
    let membership = m.membership_config.membership();
    let existing = membership.get_node(&id)?;
    let is_voter = membership.voter_ids().any(|v| v == id);
    let reason = if existing.raft_addr != node.raft_addr {
        format!(
            "member {id} is already in the group at {} (not {}): ids are never reused; \
             choose a new id",
            existing.raft_addr, node.raft_addr
        )
    } else if is_voter {
        if as_voter {
            format!(
                "member {id} is already a voter (members: {})",
                member_list(m)
            )
        } else {
            format!(
                "member {id} is a voter: a voter is not made a learner (remove it, then add \
                 it under a new id with --learner)"
            )
        }
    } else if as_voter {
        // A learner promoted to voter: openraft's change of membership does it.
        return None;
    } else {
        format!(
            "member {id} is already a learner (members: {})",
            member_list(m)
        )
    };
    Some(AdminReply::Failed { reason })
}

struct CoreAdmin(Arc<MemberCore>);

impl AdminHandler for CoreAdmin {
    fn admin(
        &self,
        request: AdminRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = AdminReply> + Send + '_>> {
        Box::pin(self.0.admin(request))
    }
}

/// A member running on its own thread; see the module comment.
pub struct Member {
    core: Arc<MemberCore>,
    handle: tokio::runtime::Handle,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    /// Starts a member: recovers its log (`<data_dir>/raft/`) and latest snapshot
    /// (else the market's genesis state, `genesis`), binds `cluster.raft_listen`,
    /// and joins its group (a new member waits for `cluster init` or `cluster add`).
    /// `genesis` must be the same engine on every member (the same market config and
    /// genesis time): the state hashes of every block are compared.
    /// Errors: a key out of bounds, the cluster key, storage recovery, the listener.
    pub fn start(
        config: ClusterConfig,
        data_dir: &Path,
        genesis: MarketConfig,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<Member, ReplicationError> {
        config.validate()?;
        let key = ClusterKey::load(data_dir)?;
        let raft_dir = data_dir.join("raft");
        std::fs::create_dir_all(&raft_dir).map_err(|source| ReplicationError::Io {
            what: format!("creating {}", raft_dir.display()),
            source,
        })?;
        // pwrite + fdatasync on the log writer thread, zero-filled room kept ahead of
        // the data (as the journal: an fdatasync then has no size to write).
        let storage = FileStorage::new(raft_dir, JournalIo::Sync, config.log_preallocate_bytes);
        let machine_storage = crate::journal::Storage::handle(&storage);
        let log = LogStore::open(Box::new(storage), config.log_segment_bytes, false)?;
        let machine = Machine::open(
            Box::new(machine_storage),
            Engine::new(genesis),
            MachineConfig {
                snapshot_every_entries: config.snapshot_every_entries,
                state_hashes_kept: config.state_hashes_kept,
            },
            observer,
        )?;
        let listener = std::net::TcpListener::bind(&config.raft_listen).map_err(|source| {
            ReplicationError::Io {
                what: format!("binding cluster.raft_listen {}", config.raft_listen),
                source,
            }
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ReplicationError::Io {
                what: "member RPC listener".into(),
                source,
            })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ReplicationError::Io {
                what: "starting the member's runtime".into(),
                source,
            })?;
        let handle = runtime.handle().clone();
        let (stop, mut stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(format!("ys-member-{}", config.member_id))
            .spawn(move || {
                runtime.block_on(async move {
                    let _ = stopped.changed().await;
                });
                // Dropping the runtime cancels every task left.
            })
            .map_err(|source| ReplicationError::Io {
                what: "starting the member thread".into(),
                source,
            })?;
        let limits = NetLimits {
            frame_bytes_max: config.rpc_frame_bytes_max,
            rpc_timeout: Duration::from_millis(config.rpc_timeout_ms),
            snapshot_timeout: Duration::from_millis(config.snapshot_timeout_ms),
        };
        let net_stats = Arc::new(NetStats::default());
        let network = TcpNetwork {
            id: config.member_id,
            key: key.clone(),
            limits: limits.clone(),
            stats: net_stats.clone(),
        };
        let id = config.member_id;
        let started = handle.block_on({
            let net_stats = net_stats.clone();
            let config = config.clone();
            async move { MemberCore::start(id, &config, log, machine, network, net_stats).await }
        });
        let core = match started {
            Ok(core) => Arc::new(core),
            Err(e) => {
                let _ = stop.send(true);
                let _ = thread.join();
                return Err(e);
            }
        };
        {
            let _guard = handle.enter();
            let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| {
                ReplicationError::Io {
                    what: "member RPC listener".into(),
                    source,
                }
            })?;
            let admin: Arc<dyn AdminHandler> = Arc::new(CoreAdmin(core.clone()));
            handle.spawn(network::serve(
                listener,
                core.raft.clone(),
                admin,
                key,
                limits,
                net_stats,
                stop.subscribe(),
            ));
        }
        tracing::info!(member = id, listen = %config.raft_listen, "cluster member started");
        Ok(Member {
            core,
            handle,
            stop,
            thread: Some(thread),
        })
    }

    /// The role, as it changes (a `tokio::sync::watch`; `borrow()` reads it from any
    /// thread, `changed()` awaits on any runtime).
    pub fn role(&self) -> watch::Receiver<Role> {
        self.core.role()
    }

    /// For a leader: blocks until its state machine caught up with its whole log (see
    /// [`MemberCore::promote`]); the engine the new leader's pipeline runs.
    /// Errors: [`ReplicationError::Stopped`], [`ReplicationError::OfficeLost`].
    /// Must not be called on a tokio runtime thread.
    pub fn promote(&self) -> Result<Promotion, ReplicationError> {
        self.handle.block_on(self.core.promote())
    }

    /// The `Durability` the leader's sequencer appends to (see
    /// [`ReplicatedDurability`]); fails every call once this member loses office.
    pub fn durability(&self, promotion: &Promotion) -> ReplicatedDurability {
        let _guard = self.handle.enter();
        self.core.durability(promotion)
    }

    /// Term, leader, commit and apply indexes, every member's matched index.
    pub fn status(&self) -> ClusterStatus {
        self.core.status()
    }

    /// The core (metrics, tests).
    pub fn core(&self) -> &Arc<MemberCore> {
        &self.core
    }

    /// Answers an operator's request on this member (the CLI's local path).
    /// Blocks: must not be called on a tokio runtime thread.
    pub fn admin(&self, request: AdminRequest) -> AdminReply {
        self.handle.block_on(self.core.admin(request))
    }

    /// Stops Raft (its log writer syncs and closes), the listener and the thread.
    /// Blocks: must not be called (nor the member dropped) on a tokio runtime thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(thread) = self.thread.take() {
            let raft = self.core.raft.clone();
            if let Err(e) = self.handle.block_on(async move { raft.shutdown().await }) {
                tracing::warn!(error = %e, "raft shutdown");
            }
            let _ = self.stop.send(true);
            let _ = thread.join();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Every member of an initial group, for `cluster init`: id → addresses.
pub type InitialMembers = BTreeMap<MemberId, MemberNode>;
