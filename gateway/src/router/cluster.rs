//! A replicated router's process (SPEC §12, R-HA-1..4; issue 25; docs/replication.md):
//! `yellowstone-router run` with `cluster.enabled`, and `yellowstone-router learn`.
//!
//! For the whole process: the data directory's lock, the gateway threads (running
//! [`office::OfficeHandler`]), the metrics endpoint, the [`Member`] (openraft: log,
//! state machine, member RPC) and the cluster gauges. Only while this member leads:
//! the market pipeline (`pipeline::start_at` with `Door::Office`), started from
//! [`Member::promote`] (the state machine's engine, everything committed applied) and
//! appending to [`Member::durability`] (durable = committed on a majority, so every
//! promise waits for commit: the promise rule, R-HA-1). On a loss of office the
//! office closes (every connection answered `not_leader` and closed) and the pipeline
//! is abandoned: no pending promise leaves, the engine is thrown away.
//!
//! A learner (`learn`, `cluster.learner`) never leads: it applies the committed journal
//! and checks its state hash at every block against the leader's (R-HA-4).

use super::config::RouterConfig;
use super::market::MarketBoard;
use super::office::{LeaderHint, Office, OfficeHandler};
use super::StartOptions;
use crate::metrics::{Counter, Gauge, Registry};
use crate::metrics_http::MetricsServer;
use crate::net;
use crate::pipeline::{self, Door};
use crate::replication::network::{admin_call, AdminReply, AdminRequest, ClusterKey};
use crate::replication::{ApplyObserver, ClusterStatus, Member, ReplicationError, Role};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use yellowstone_engine::{Command, Effect, Engine};

/// Why a member process stopped or did not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterRunError {
    /// The configuration does not make a member (the key and why).
    #[error("{0}")]
    Config(String),
    /// The data directory (creation, lock, key, genesis).
    #[error("data directory {dir}: {reason}")]
    DataDir { dir: PathBuf, reason: String },
    /// The gateway threads could not listen.
    #[error("gateways on {listen} (network.listen, --listen): {source}")]
    Gateways {
        listen: SocketAddr,
        source: std::io::Error,
    },
    /// The metrics endpoint could not listen.
    #[error("metrics endpoint on {listen} (metrics.listen, --metrics-listen): {source}")]
    Metrics {
        listen: SocketAddr,
        source: std::io::Error,
    },
    /// Replication (openraft, its storage, network or state machine).
    #[error("replication: {0}")]
    Replication(#[from] ReplicationError),
    /// A term's pipeline could not start.
    #[error("market pipeline: {0}")]
    Pipeline(#[from] pipeline::PipelineError),
    /// Signal handlers.
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

/// What a started member prints on its READY line (the router's start-up contract,
/// plus `member=` and `raft=`).
#[derive(Clone, Debug)]
pub struct MemberReady {
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub router_address: yellowstone_wire::Address,
    pub network_id: u32,
    pub data_dir: PathBuf,
    pub member_id: u64,
    pub raft_listen: String,
    pub learner: bool,
}

impl MemberReady {
    /// `READY listen=.. metrics=.. router=.. network_id=.. data_dir=.. member=.. raft=.. role=member|learner`.
    pub fn line(&self) -> String {
        format!(
            "READY listen={} metrics={} router={} network_id={} data_dir={} member={} raft={} role={}",
            self.listen,
            self.metrics.map_or("none".to_string(), |m| m.to_string()),
            self.router_address,
            self.network_id,
            self.data_dir.display(),
            self.member_id,
            self.raft_listen,
            if self.learner { "learner" } else { "member" }
        )
    }
}

/// How often the role, the status gauges and the learner's checks are looked at.
const POLL: Duration = Duration::from_millis(20);
/// A promotion is awaited this long at most (then tried again).
const PROMOTE_WAIT: Duration = Duration::from_secs(1);
/// A failed promotion is tried again after this.
const PROMOTION_RETRY: Duration = Duration::from_millis(200);
/// Status gauges are refreshed this often (a status is a few locks in openraft).
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// Checks a member's configuration beyond `RouterConfig::validate` (which checked
/// the `[cluster]` keys' bounds): what would make members disagree.
fn check_member_config(config: &RouterConfig) -> Result<PathBuf, ClusterRunError> {
    if !config.cluster.enabled {
        return Err(ClusterRunError::Config(
            "cluster.enabled is false: this is a single router (use `run`)".into(),
        ));
    }
    let Some(dir) = config.journal.data_dir.clone() else {
        return Err(ClusterRunError::Config(
            "cluster.enabled: a member keeps its Raft log and snapshots in a data directory \
             (journal.data_dir / --data-dir; --in-memory is refused)"
                .into(),
        ));
    };
    if config.market.genesis_ms == 0 {
        return Err(ClusterRunError::Config(
            "cluster.enabled: market.genesis_ms must be set (Unix ms), the same on every \
             member: 0 means \"now\" and would start each member's market at another time"
                .into(),
        ));
    }
    Ok(dir)
}

/// The router key every member signs with (R-HA-2: a batch is byte-identical
/// whichever member publishes it): the data directory's `router.key` or
/// `identity.router_key_hex`, never a random one.
fn member_key(
    config: &RouterConfig,
    dir: &Path,
) -> Result<yellowstone_wire::SigningKey, ClusterRunError> {
    let path = dir.join(super::durable::ROUTER_KEY_FILE);
    let exists = path.try_exists().unwrap_or(false);
    if !exists && config.identity.router_key_hex.is_empty() {
        return Err(ClusterRunError::Config(format!(
            "cluster.enabled: every member signs tickets and batches with the same router \
             key (R-HA-2): give identity.router_key_hex (--router-key-hex), or copy the \
             group's router.key to {} (mode 0600)",
            path.display()
        )));
    }
    super::durable::router_key(config, dir).map_err(|reason| ClusterRunError::DataDir {
        dir: dir.to_path_buf(),
        reason,
    })
}

/// A member replays its Raft log from the genesis engine of its configuration: the
/// market parameters it was created with are kept in `market.bin` (as a single
/// router's), and a configuration that differs later is refused naming each
/// difference (replayed under other parameters, this member would reach another
/// state than its group: a state hash mismatch at the next block).
fn check_market_kept(
    dir: &Path,
    market: &yellowstone_engine::MarketConfig,
) -> Result<(), ClusterRunError> {
    use crate::journal::files;
    let data_dir = |reason: String| ClusterRunError::DataDir {
        dir: dir.to_path_buf(),
        reason,
    };
    match files::read_market(dir).map_err(|e| data_dir(e.to_string()))? {
        None => files::write_market(dir, market).map_err(|e| data_dir(e.to_string())),
        Some(stored) if stored == *market => Ok(()),
        Some(stored) => Err(data_dir(format!(
            "the market parameters in the configuration differ from those this member \
             was created with ({}): {}; every member of a group runs the same market, \
             fixed at its creation",
            files::MARKET_FILE,
            super::durable::market_differences(&stored, market).join("; ")
        ))),
    }
}

/// A leader's quorum, as its commit index shows it (R-HA-1, R-HA-3). openraft 0.9
/// has no CheckQuorum: a leader cut off from its majority stays leader of its term,
/// and its pipeline would take commands that never commit while its clients wait for
/// answers. So when its log is ahead of its commit index (the pipeline ticks every
/// 50 ms: a serving leader always proposes) and the commit index has not moved for
/// twice `cluster.election_timeout_max_ms` — by then the others have elected another —
/// the member gives up its pipeline (clients get `not_leader` and try the others).
/// Promotion needs a quorum's confirmation, so it serves again only once it has one.
#[derive(Default)]
struct QuorumWatch {
    /// The commit index last seen, and since when it has not moved while the log
    /// was ahead of it (None: not behind).
    stalled: Option<(u64, Instant)>,
}

impl QuorumWatch {
    fn observe(&mut self, status: &ClusterStatus) {
        let committed = status.committed_index.unwrap_or(0);
        let last = status.last_log_index.unwrap_or(0);
        self.stalled = match self.stalled {
            _ if committed >= last => None,
            Some((seen, since)) if seen == committed => Some((seen, since)),
            _ => Some((committed, Instant::now())),
        };
    }

    fn lost(&self, max_wait: Duration) -> bool {
        self.stalled
            .is_some_and(|(_, since)| since.elapsed() > max_wait)
    }
}

/// The cluster's figures on `/metrics` (docs/metrics.md "Replication").
struct ClusterGauges {
    registry: Registry,
    term: Arc<Gauge>,
    is_leader: Arc<Gauge>,
    leader_id: Arc<Gauge>,
    commit_index: Arc<Gauge>,
    applied_index: Arc<Gauge>,
    commit_lag: Arc<Gauge>,
    elections: Arc<Counter>,
    promotions: Arc<Counter>,
    step_downs: Arc<Counter>,
    snapshot_index: Arc<Gauge>,
    stale_entries: Arc<Counter>,
    bad_macs: Arc<Counter>,
    lag: BTreeMap<u64, Arc<Gauge>>,
}

impl ClusterGauges {
    fn new(registry: &Registry) -> ClusterGauges {
        ClusterGauges {
            registry: registry.clone(),
            term: registry.gauge(
                "yellowstone_cluster_term",
                "The Raft term this member is in.",
                &[],
            ),
            is_leader: registry.gauge(
                "yellowstone_cluster_is_leader",
                "1 while this member leads and its market pipeline serves clients, else 0.",
                &[],
            ),
            leader_id: registry.gauge(
                "yellowstone_cluster_leader_id",
                "The member id of the leader this member knows (0: none known).",
                &[],
            ),
            commit_index: registry.gauge(
                "yellowstone_cluster_commit_index",
                "The highest Raft log index known committed on a majority.",
                &[],
            ),
            applied_index: registry.gauge(
                "yellowstone_cluster_applied_index",
                "The highest Raft log index this member's state machine applied.",
                &[],
            ),
            commit_lag: registry.gauge(
                "yellowstone_cluster_commit_lag_entries",
                "Entries committed but not yet applied by this member's state machine.",
                &[],
            ),
            elections: registry.counter(
                "yellowstone_cluster_elections_total",
                "Terms this member saw begin (each new term is an election).",
                &[],
            ),
            promotions: registry.counter(
                "yellowstone_cluster_promotions_total",
                "Times this member became leader and started its market pipeline.",
                &[],
            ),
            step_downs: registry.counter(
                "yellowstone_cluster_step_downs_total",
                "Times this member lost office and abandoned its market pipeline.",
                &[],
            ),
            snapshot_index: registry.gauge(
                "yellowstone_cluster_snapshot_index",
                "The last Raft log index this member's latest snapshot covers (the log \
                 before it may be purged).",
                &[],
            ),
            stale_entries: registry.counter(
                "yellowstone_cluster_stale_entries_total",
                "Committed entries the state machine skipped as stale: a deposed leader's \
                 late proposals (skipped alike on every member).",
                &[],
            ),
            bad_macs: registry.counter(
                "yellowstone_cluster_bad_macs_total",
                "Member RPC frames refused for a bad MAC (another cluster.key, or tampering).",
                &[],
            ),
            lag: BTreeMap::new(),
        }
    }

    /// Publishes a status: the leader's view of every member's replication lag
    /// (its last log index minus the member's matched index, in entries).
    fn publish(&mut self, status: &ClusterStatus) {
        let committed = status.committed_index.unwrap_or(0);
        let applied = status.applied_index.unwrap_or(0);
        let last = status.last_log_index.unwrap_or(0);
        self.term.set(status.term as i64);
        self.leader_id.set(status.leader_id.unwrap_or(0) as i64);
        self.commit_index.set(committed as i64);
        self.applied_index.set(applied as i64);
        self.commit_lag
            .set(committed.saturating_sub(applied) as i64);
        self.snapshot_index
            .set(status.snapshot_index.unwrap_or(0) as i64);
        self.stale_entries.publish(status.stale_entries);
        self.bad_macs.publish(status.bad_macs);
        for member in &status.members {
            let Some(matched) = member.matched_index else {
                continue;
            };
            let gauge = self.lag.entry(member.id).or_insert_with(|| {
                self.registry.gauge(
                    "yellowstone_cluster_replication_lag_entries",
                    "On the leader: entries each member still lacks (last log index minus \
                     its matched index).",
                    &[("member", &member.id.to_string())],
                )
            });
            gauge.set(last.saturating_sub(matched) as i64);
        }
    }
}

/// The learner's check (R-HA-4): its state machine's (block, state hash) pairs,
/// compared with the leader's as they become available.
pub struct HashCheck {
    pending: Mutex<BTreeMap<u64, [u8; 32]>>,
    checked: Arc<Counter>,
    mismatches: Arc<Counter>,
    unchecked: Arc<Counter>,
}

/// Blocks a learner keeps waiting for the leader's hash, at most (the oldest go
/// unchecked, counted).
const PENDING_BLOCKS_MAX: usize = 65_536;

impl HashCheck {
    pub fn new(registry: &Registry) -> Arc<HashCheck> {
        Arc::new(HashCheck {
            pending: Mutex::new(BTreeMap::new()),
            checked: registry.counter(
                "yellowstone_learner_blocks_checked_total",
                "Blocks whose state hash this learner compared with the leader's (R-HA-4).",
                &[],
            ),
            mismatches: registry.counter(
                "yellowstone_learner_state_hash_mismatch_total",
                "Blocks whose state hash differed from the leader's: the replay does not \
                 reach the leader's state (R-HA-4; the log names the block).",
                &[],
            ),
            unchecked: registry.counter(
                "yellowstone_learner_blocks_unchecked_total",
                "Blocks this learner could not compare: the leader no longer kept their hash \
                 (cluster.state_hashes_kept) or too many waited.",
                &[],
            ),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, [u8; 32]>> {
        match self.pending.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The oldest block waiting for the leader's hash.
    fn oldest_pending(&self) -> Option<u64> {
        self.lock().keys().next().copied()
    }

    /// Compares the pending blocks with the leader's pairs (`leader`: its newest
    /// kept, ascending). Returns the mismatches found.
    pub fn compare(&self, leader: &[(u64, [u8; 32])]) -> Vec<u64> {
        let Some(&(leader_oldest, _)) = leader.first() else {
            return Vec::new();
        };
        let mut pending = self.lock();
        let mut mismatched = Vec::new();
        for &(block, leader_hash) in leader {
            let Some(own) = pending.remove(&block) else {
                continue;
            };
            self.checked.inc();
            if own != leader_hash {
                self.mismatches.inc();
                mismatched.push(block);
                tracing::error!(
                    block,
                    learner = %hex::encode(own),
                    leader = %hex::encode(leader_hash),
                    "STATE HASH MISMATCH at block {block}: this learner's replay of the \
                     committed journal does not reach the leader's state (R-HA-4)"
                );
            }
        }
        // Older than anything the leader still keeps: never comparable.
        let too_old: Vec<u64> = pending.range(..leader_oldest).map(|(b, _)| *b).collect();
        for block in too_old {
            pending.remove(&block);
            self.unchecked.inc();
        }
        mismatched
    }
}

impl ApplyObserver for HashCheck {
    fn applied(&self, _now_ms: u64, _command: &Command, _effects: &[Effect]) {}

    fn state_hash_at_block(&self, block: u64, hash: [u8; 32]) {
        let mut pending = self.lock();
        pending.insert(block, hash);
        while pending.len() > PENDING_BLOCKS_MAX {
            pending.pop_first();
            self.unchecked.inc();
        }
    }
}

/// What every member's state machine tells the process: each applied command (the
/// reply cache, R-HA-3) and each block's state hash (a learner's check, R-HA-4).
struct MemberObserver {
    reply_cache: Arc<yellowstone_router_core::ReplyCache>,
    check: Option<Arc<HashCheck>>,
}

impl ApplyObserver for MemberObserver {
    fn applied(&self, _now_ms: u64, command: &Command, effects: &[Effect]) {
        self.reply_cache.observe(command, effects);
    }

    fn snapshot_replies(&self) -> Vec<u8> {
        self.reply_cache.export()
    }

    fn snapshot_loaded(
        &self,
        replies: &[u8],
    ) -> Result<(), yellowstone_router_core::ReplyCacheImportError> {
        self.reply_cache.import(replies)
    }

    fn state_hash_at_block(&self, block: u64, hash: [u8; 32]) {
        if let Some(check) = &self.check {
            check.state_hash_at_block(block, hash);
        }
    }
}

/// How the learner asks the leader for its state hashes (R-HA-4): the group's key
/// and the member RPC bounds.
struct LeaderAsk {
    key: ClusterKey,
    timeout: Duration,
    frame_bytes_max: u64,
}

/// Pairs asked of the leader at once, at most.
const HASHES_PER_ASK: usize = 4096;

impl LeaderAsk {
    fn new(
        config: &crate::replication::ClusterConfig,
        dir: &Path,
    ) -> Result<LeaderAsk, ClusterRunError> {
        Ok(LeaderAsk {
            key: ClusterKey::load(dir)?,
            timeout: Duration::from_millis(config.rpc_timeout_ms.max(1_000)),
            frame_bytes_max: config.rpc_frame_bytes_max,
        })
    }

    /// The leader's (block, state hash) pairs from `from_block` on, asked of it over
    /// the member RPC (`own`: this learner's status, naming the leader and its address).
    fn leader_hashes(
        &self,
        own: &ClusterStatus,
        from_block: u64,
    ) -> Result<Vec<(u64, [u8; 32])>, ReplicationError> {
        let leader = own
            .leader_id
            .ok_or(ReplicationError::NotLeader { leader: None })?;
        let raft = own
            .members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.raft_addr.clone())
            .ok_or(ReplicationError::NotLeader { leader: None })?;
        let addr: SocketAddr = raft.parse().map_err(|_| ReplicationError::Remote {
            addr: raft.clone(),
            what: "not an IP host:port".into(),
        })?;
        let request = AdminRequest::StateHashes {
            from_block,
            max: HASHES_PER_ASK,
        };
        match admin_call(addr, &self.key, request, self.timeout, self.frame_bytes_max)? {
            AdminReply::StateHashes(pairs) => Ok(pairs),
            other => Err(ReplicationError::Remote {
                addr: raft,
                what: format!("answered {other:?} to a state hash request"),
            }),
        }
    }
}

/// Runs a member (or learner) until SIGINT/SIGTERM. `ready` is called once the
/// gateways, the metrics endpoint and the member are up (not once it leads).
pub fn run_member(
    mut config: RouterConfig,
    ready: impl FnOnce(&MemberReady),
) -> Result<(), ClusterRunError> {
    config.validate().map_err(ClusterRunError::Config)?;
    let dir = check_member_config(&config)?;
    super::durable::create_data_dir(&dir).map_err(|reason| ClusterRunError::DataDir {
        dir: dir.clone(),
        reason,
    })?;
    let _lock = super::durable::lock_data_dir(&dir).map_err(|reason| ClusterRunError::DataDir {
        dir: dir.clone(),
        reason,
    })?;
    let router_key = member_key(&config, &dir)?;
    let genesis_ms = config.market.genesis_ms;
    // The same genesis state on every member (its hash is compared at every block).
    let market = config
        .market_config(genesis_ms)
        .map_err(ClusterRunError::Config)?;
    check_market_kept(&dir, &market)?;

    // The process's registry and market board (a term's pipeline publishes into
    // them), then the gateways, which answer not_leader until a term opens.
    let registry = Registry::new();
    let board = Arc::new(MarketBoard::new(
        Engine::new(market.clone()).market_figures_core(),
    ));
    let office = Office::new(registry.clone(), board);
    let handler_office = office.clone();
    let gateways = net::start_gateways(
        &config.network,
        &config.threads,
        &registry,
        move |context| OfficeHandler::new(handler_office.clone(), context),
    )
    .map_err(|source| ClusterRunError::Gateways {
        listen: config.network.listen,
        source,
    })?;
    office.set_outbox(gateways.outbox());
    let listen = gateways.local_addr();
    let metrics = if config.metrics.enabled {
        Some(
            MetricsServer::start(&config.metrics, registry.clone()).map_err(|source| {
                ClusterRunError::Metrics {
                    listen: config.metrics.listen,
                    source,
                }
            })?,
        )
    } else {
        None
    };

    // The member: what `not_leader` names for this member is its client endpoint,
    // by default the address the gateways listen on.
    if config.cluster.client_endpoint.is_empty() {
        config.cluster.client_endpoint = listen.to_string();
    }
    let learner = config.cluster.learner;
    let check = learner.then(|| HashCheck::new(&registry));
    let ask = match learner {
        true => Some(LeaderAsk::new(&config.cluster, &dir)?),
        false => None,
    };
    // R-HA-3: the reply cache is fed by the state machine from the committed journal
    // (every member the same), so a new leader answers a resend with the original.
    let reply_cache = Arc::new(yellowstone_router_core::ReplyCache::new(
        config.network.reply_cache_config(),
    ));
    let observer: Arc<dyn ApplyObserver> = Arc::new(MemberObserver {
        reply_cache: reply_cache.clone(),
        check: check.clone(),
    });
    let member = Member::start(config.cluster.clone(), &dir, market, observer)?;
    let signals = net::install_signal_handlers(gateways.shutdown_trigger())
        .map_err(ClusterRunError::Signals)?;
    ready(&MemberReady {
        listen,
        metrics: metrics.as_ref().map(|m| m.local_addr()),
        router_address: router_key.address(),
        network_id: config.identity.network_id,
        data_dir: std::path::absolute(&dir).unwrap_or(dir.clone()),
        member_id: config.cluster.member_id,
        raft_listen: config.cluster.raft_listen.clone(),
        learner,
    });

    // Where a promotion is awaited, bounded (`start_term`).
    let waiter = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|source| ReplicationError::Io {
            what: "the promotion waiter's runtime".into(),
            source,
        })?;
    let mut gauges = ClusterGauges::new(&registry);
    let mut quorum = QuorumWatch::default();
    // By then the others have certainly elected another leader (openraft's lease,
    // election_timeout_max, plus the longest election timeout): a shorter stall, a
    // loaded machine's, costs no step-down.
    let max_wait = Duration::from_millis(2 * config.cluster.election_timeout_max_ms);
    let roles = member.role();
    let retry_after_ms = config.cluster.election_timeout_max_ms.min(u32::MAX as u64) as u32;
    let mut term_seen = 0;
    let mut pipeline: Option<(u64, super::RouterHandle)> = None;
    let mut status_at = Instant::now() - STATUS_EVERY;
    let mut retry_at = Instant::now();
    let result = loop {
        if signals.try_recv().is_ok() {
            break Ok(());
        }
        let role = roles.borrow().clone();
        let (term, leading) = match &role {
            Role::Leader { term } => (Some(*term), true),
            Role::Follower { term, .. } => (Some(*term), false),
            Role::Learner { .. } => (None, false),
            Role::Stopped => break Err(ClusterRunError::Replication(ReplicationError::Stopped)),
        };
        if let Some(term) = term.filter(|t| *t > term_seen) {
            term_seen = term;
            gauges.elections.inc();
        }
        // Who `not_leader` names while no term of ours is open.
        let (leader_id, endpoint) = match &role {
            // Named only once its pipeline serves: while promoting, or cut off from
            // its quorum, clients are better sent to try the other members.
            Role::Leader { .. } if pipeline.is_some() => (config.cluster.member_id, Some(listen)),
            Role::Leader { .. } => (0, None),
            Role::Follower { leader, .. } | Role::Learner { leader } => {
                leader.map_or((0, None), |(id, addr)| (id, Some(addr)))
            }
            Role::Stopped => (0, None),
        };
        office.set_leader(LeaderHint {
            leader_id,
            endpoint,
            retry_after_ms,
        });

        // Loss of office: the role moved on, or the pipeline's engine thread
        // stopped (its durability failed: a deposed leader's proposal).
        let lost = match (&pipeline, term) {
            (Some((held, handle)), now) => {
                // The engine thread drops its end when it stops.
                let stopped = matches!(
                    handle.engine_stopped().try_recv(),
                    Err(crossbeam_channel::TryRecvError::Disconnected)
                );
                !leading || now != Some(*held) || stopped || quorum.lost(max_wait)
            }
            (None, _) => false,
        };
        if lost {
            if let Some((held, handle)) = pipeline.take() {
                // Counted before anyone is told (a scrape after a client's not_leader
                // sees it), then the clients, then the engine thread.
                gauges.step_downs.inc();
                gauges.is_leader.set(0);
                if leading {
                    // Still leader for openraft (cut off from its quorum): it names
                    // no leader, so clients try the other members.
                    office.set_leader(LeaderHint {
                        leader_id: 0,
                        endpoint: None,
                        retry_after_ms,
                    });
                }
                office.close();
                handle.abandon();
                tracing::warn!(term = held, "lost office: market pipeline abandoned");
            }
        }
        if leading && pipeline.is_none() && !learner && retry_at <= Instant::now() {
            match start_term(
                &member,
                &waiter,
                &config,
                &router_key,
                &office,
                &reply_cache,
            ) {
                Ok((term, handle)) => {
                    quorum = QuorumWatch::default();
                    gauges.promotions.inc();
                    gauges.is_leader.set(1);
                    tracing::info!(term, "leading: market pipeline serving");
                    pipeline = Some((term, handle));
                }
                // Lost the election's fruit before the promotion completed, or the
                // pipeline refused to start: tried again while the role says leader,
                // after a pause (not a log line per poll).
                Err(error) => {
                    match &error {
                        // E.g. a restarted member that led comes up as the leader of
                        // its old term and hears of the new one a moment later.
                        ClusterRunError::Replication(ReplicationError::OfficeLost { .. }) => {
                            tracing::info!(%error, "not leading after all")
                        }
                        _ => tracing::warn!(%error, "promotion failed"),
                    }
                    retry_at = Instant::now() + PROMOTION_RETRY;
                }
            }
        }
        if status_at.elapsed() >= STATUS_EVERY {
            status_at = Instant::now();
            let status = member.status();
            gauges.publish(&status);
            quorum.observe(&status);
            if let (Some(check), Some(ask)) = (&check, &ask) {
                if let Some(from) = check.oldest_pending() {
                    match ask.leader_hashes(&status, from) {
                        Ok(pairs) => {
                            check.compare(&pairs);
                        }
                        Err(error) => tracing::debug!(%error, "leader's state hashes"),
                    }
                }
            }
        }
        std::thread::sleep(POLL);
    };
    // Graceful stop: a leader answers what is committed, then everything closes.
    let member_id = config.cluster.member_id;
    tracing::info!(
        member = member_id,
        leading = pipeline.is_some(),
        "member stopping"
    );
    if let Some((_, handle)) = pipeline.take() {
        office.close();
        if let Err(error) = handle.shutdown() {
            tracing::warn!(%error, "market pipeline stop");
        }
    }
    let _ = gateways.shutdown();
    tracing::info!(member = member_id, "gateways stopped; stopping raft");
    member.shutdown();
    if let Some(metrics) = metrics {
        metrics.stop();
    }
    tracing::info!(member = member_id, "member stopped");
    result
}

/// Promotion (R-HA-1): the state machine's engine (every entry of earlier terms
/// applied), the durability committing on a majority, the pipeline around both.
fn start_term(
    member: &Member,
    waiter: &tokio::runtime::Runtime,
    config: &RouterConfig,
    router_key: &yellowstone_wire::SigningKey,
    office: &Arc<Office>,
    reply_cache: &Arc<yellowstone_router_core::ReplyCache>,
) -> Result<(u64, super::RouterHandle), ClusterRunError> {
    // Bounded: the loop must keep answering signals (a leader cut off from its
    // quorum may wait for a confirmation that never comes); tried again later.
    let promotion = waiter
        .block_on(async { tokio::time::timeout(PROMOTE_WAIT, member.core().promote()).await })
        .map_err(|_| ReplicationError::Raft {
            op: "promote",
            reason: format!("leadership not confirmed by a quorum within {PROMOTE_WAIT:?}"),
        })??;
    let term = promotion.term;
    let durability = member.durability(&promotion);
    let genesis_ms = promotion.engine.config().genesis_ms;
    let handle = pipeline::start_at(
        StartOptions {
            config: config.clone(),
            router_key: router_key.clone(),
            genesis_ms,
            reply_cache: Some(reply_cache.clone()),
        },
        promotion.engine,
        durability,
        Door::Office(office.clone()),
    )?;
    Ok((term, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(committed: u64, last: u64) -> ClusterStatus {
        ClusterStatus {
            member_id: 1,
            client_endpoint: String::new(),
            state: "leader".into(),
            term: 1,
            leader_id: Some(1),
            leader_endpoint: None,
            last_log_index: Some(last),
            committed_index: Some(committed),
            applied_index: Some(committed),
            snapshot_index: None,
            next_seq: 1,
            members: Vec::new(),
            stale_entries: 0,
            bad_macs: 0,
        }
    }

    #[test]
    fn r_ha_1_quorum_is_lost_only_when_commit_stalls_behind_the_log() {
        let wait = Duration::from_millis(30);
        let mut quorum = QuorumWatch::default();
        // Caught up: never lost, however long.
        quorum.observe(&status(10, 10));
        std::thread::sleep(wait * 2);
        assert!(!quorum.lost(wait));
        // Behind, stalled past the wait, then moving: the stall restarts from the move
        // (sleeps only ever last longer than asked: no upper bound is relied on).
        quorum.observe(&status(10, 12));
        std::thread::sleep(wait * 2);
        assert!(quorum.lost(wait), "stalled behind the log");
        quorum.observe(&status(11, 13));
        assert!(!quorum.lost(wait), "the commit index moved");
        // Behind and stalled past the wait again: lost.
        std::thread::sleep(wait * 2);
        quorum.observe(&status(11, 14));
        assert!(quorum.lost(wait));
        // Caught up again: not lost.
        quorum.observe(&status(14, 14));
        assert!(!quorum.lost(wait));
    }

    #[test]
    fn r_ha_4_hash_check_counts_matches_mismatches_and_the_unverifiable() {
        let registry = Registry::new();
        let check = HashCheck::new(&registry);
        for block in 1..=5u64 {
            check.state_hash_at_block(block, [block as u8; 32]);
        }
        // The leader keeps blocks 2..=4; block 3 differs.
        let leader = vec![(2, [2; 32]), (3, [0xee; 32]), (4, [4; 32])];
        assert_eq!(check.compare(&leader), vec![3]);
        assert_eq!(check.checked.get(), 3);
        assert_eq!(check.mismatches.get(), 1);
        assert_eq!(
            check.unchecked.get(),
            1,
            "block 1: older than the leader keeps"
        );
        assert_eq!(
            check.oldest_pending(),
            Some(5),
            "waits for the leader's block 5"
        );
    }
}
