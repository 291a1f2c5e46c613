//! A replicated router group on loopback for the process tests and the failover
//! figures (issue 25, SPEC §12 R-HA-1..4): 3 (or 5) `yellowstone-router run`
//! processes with `[cluster]` configs, a [`FaultProxy`] in front of each member's raft
//! port (the membership records the proxy's address, so every member dials its peers
//! through the proxies), `cluster init`, and the faults the issue names:
//!
//! - [`Cluster::kill`] (SIGKILL) and [`Cluster::restart`] on the same data directory;
//! - [`Cluster::pause`] (SIGSTOP, longer than the election timeout) and
//!   [`Cluster::resume`] (SIGCONT);
//! - [`Cluster::partition`] (the member's raft traffic blackholed both ways, its
//!   client port untouched) and [`Cluster::heal`].
//!
//! Which member leads is learnt the way a client learns it: the leader answers a new
//! connection with `LoginChallenge`, a follower with `ErrorReply not_leader`
//! (REPL_DESIGN.md "Process roles"). A [`TicketProbe`] (one user, one provider, both
//! following the leader over the members' client endpoints) times every ticket, so a
//! fault's failover time is the fault to the first ticket for an RFC sent after it.
//! After a run, [`Cluster::ledgers`] reads every member's ledger from its data
//! directory (`yellowstone-router ledger --json`) for comparison.
//!
//! Every process is a child of the test, killed by its own pid when its handle drops;
//! every wait is bounded.

use crate::fault_proxy::{FaultProxy, Mode};
use crate::market::{now_ms, operator_key, WEI_PER_MOR};
use crate::{router_binary, KillOnDrop, RouterProcess};
use serde_json::Value;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use yellowstone_wire::client::{Client, ClientError};
use yellowstone_wire::demo::demo_weights_hash;
use yellowstone_wire::signature::weights_proof_digest;
use yellowstone_wire::*;

// The group's timing in the tests is the `[cluster]` defaults (docs/configuration.md),
// so the figures measure what an operator gets; `ClusterSpec::cluster_keys` changes it.
/// How long the same member must lead in the same term before a fault is aimed at
/// it (longer than the largest election timeout, default 500 ms, and the old 1.2 s).
pub const STABLE_FOR: Duration = Duration::from_millis(1_500);
/// How long a SIGSTOP lasts: well past the election timeout (default at most
/// 500 ms), so the others elect.
pub const PAUSE: Duration = Duration::from_millis(2_500);
/// How long a partition lasts.
pub const PARTITION: Duration = Duration::from_millis(2_500);
/// The most a new leader may take to serve after a fault before the harness gives up
/// (the target is 1.5 s at p99; this bound only keeps a broken group from hanging).
pub const LEADER_WAIT: Duration = Duration::from_secs(20);
/// A connect and login attempt to one member, at most (a SIGSTOPped member accepts
/// in the kernel and never answers: this time-out is what moves on).
pub const LOGIN_TIMEOUT: Duration = Duration::from_millis(400);

/// Errors of the cluster harness, naming the member and what failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file of the test directory could not be written.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A port could not be reserved on loopback.
    #[error("reserving a loopback port: {0}")]
    Port(std::io::Error),
    /// A proxy could not start.
    #[error(transparent)]
    Proxy(#[from] crate::fault_proxy::ProxyError),
    /// `yellowstone-router cluster ...` failed.
    #[error("`yellowstone-router {args}` failed ({status}): {output}")]
    Cli {
        args: String,
        status: String,
        output: String,
    },
    /// No member served as leader in time.
    #[error("no leader among members {candidates:?} within {waited:?}")]
    NoLeader {
        candidates: Vec<u64>,
        waited: Duration,
    },
}

/// Reserves a free loopback port for a member's fixed address: a port below the
/// kernel's ephemeral range (which starts at 32768 by default), free when tried.
/// Ports from the ephemeral range would collide with the many short-lived outgoing
/// connections of a test (members redial after every timed-out RPC), which take
/// them before the member binds its reserved port. Another process could still take
/// the port before the member binds it; a member that cannot bind fails its start
/// loudly.
pub fn free_port() -> Result<SocketAddr, ClusterError> {
    use std::sync::atomic::AtomicU16;
    // Spread the processes of concurrent test binaries apart by pid.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1_000) as u16 * 12;
    let mut last_error = None;
    for _ in 0..2_000 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let port = 20_000 + (base - 20_000 + step) % 12_000;
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return listener.local_addr().map_err(ClusterError::Port),
            Err(e) => last_error = Some(e),
        }
    }
    Err(ClusterError::Port(last_error.unwrap_or_else(|| {
        std::io::Error::other("no free port in 20000..32000")
    })))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Builds `yellowstone-loadgen` once per test process (same profile as the router,
/// which [`router_binary`] builds first) and returns its path.
pub fn loadgen_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let router = router_binary();
            let profile_dir = router.parent().expect("target/<profile>").to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
            let mut command = Command::new(cargo);
            command.current_dir(workspace_root()).args([
                "build",
                "-q",
                "-p",
                "yellowstone-loadgen",
                "--bin",
                "yellowstone-loadgen",
            ]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                command.arg("--release");
            }
            let status = command.status().expect("run cargo build for the loadgen");
            assert!(status.success(), "building yellowstone-loadgen failed");
            let path = profile_dir.join("yellowstone-loadgen");
            assert!(
                path.exists(),
                "loadgen binary missing at {}",
                path.display()
            );
            path
        })
        .clone()
}

/// What state a member's process is in, as the harness left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Running,
    /// SIGKILLed, not restarted yet.
    Killed,
    /// SIGSTOPped.
    Paused,
    /// Its raft traffic is blackholed both ways.
    Partitioned,
}

/// One member: its fixed addresses (the same across restarts, as the clients'
/// and the membership's lists are), its proxy, its process.
pub struct Member {
    /// Raft member id, 1-based.
    pub id: u64,
    /// Client endpoint (`network.listen`): what clients and `not_leader` name.
    pub client: SocketAddr,
    /// Prometheus endpoint.
    pub metrics: SocketAddr,
    /// Where the member binds its raft RPC listener (`cluster.raft_listen`).
    pub raft_listen: SocketAddr,
    /// The proxy in front of `raft_listen`; its address is the member's raft address
    /// in the membership.
    pub proxy: FaultProxy,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    /// The group's key file the `cluster` commands sign with.
    pub key: PathBuf,
    pub state: MemberState,
    process: Option<RouterProcess>,
}

impl Member {
    /// The running (or paused) process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(RouterProcess::pid)
    }
}

/// The group's settings.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// 3 or 5.
    pub members: usize,
    /// Extra `[cluster]` keys, one `key = value` per line (e.g. faster timing:
    /// `heartbeat_ms = 50`); appended inside that section of every member's config.
    pub cluster_keys: String,
    /// Extra TOML appended to every member's config after the `[cluster]` section
    /// (other sections only, e.g. `[limits]`).
    pub extra_config: String,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            members: 3,
            cluster_keys: String::new(),
            extra_config: String::new(),
        }
    }
}

/// A running group; every process and proxy stops when it drops.
pub struct Cluster {
    pub members: Vec<Member>,
    /// The market's genesis (ms): block `b` seals at `genesis_ms + (b + 1) · 12 s`.
    pub genesis_ms: u64,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `spec.members` members, runs `cluster init` naming every member at its
    /// proxy's address, and waits (bounded) until one of them serves as leader.
    pub fn start(spec: &ClusterSpec) -> Result<Cluster, ClusterError> {
        let dir = tempfile::tempdir().map_err(ClusterError::Port)?;
        // Block 0 ends a few seconds in, so a run crosses block boundaries early.
        let genesis_ms = now_ms() - 9_000;
        // The group's MAC key (REPL_DESIGN.md "Network"): made once by
        // `cluster keygen`, copied into every member's data directory.
        let key = dir.path().join("cluster.key");
        run_cli(&[
            "cluster".into(),
            "keygen".into(),
            "--out".into(),
            key.display().to_string(),
        ])?;
        let mut members = Vec::new();
        for index in 0..spec.members {
            let id = index as u64 + 1;
            let raft_listen = free_port()?;
            let proxy = FaultProxy::start(raft_listen)?;
            let data_dir = dir.path().join(format!("member-{id}"));
            let config = dir.path().join(format!("member-{id}.toml"));
            let member = Member {
                id,
                key: key.clone(),
                client: free_port()?,
                metrics: free_port()?,
                raft_listen,
                proxy,
                data_dir,
                config,
                state: MemberState::Killed,
                process: None,
            };
            write_file(&member.config, member_config(&member, genesis_ms, spec))?;
            std::fs::create_dir_all(&member.data_dir).map_err(|source| ClusterError::Write {
                path: member.data_dir.clone(),
                source,
            })?;
            copy_cluster_key(&key, &member.data_dir)?;
            members.push(member);
        }
        let mut cluster = Cluster {
            members,
            genesis_ms,
            _dir: dir,
        };
        for index in 0..cluster.members.len() {
            cluster.launch(index);
        }
        cluster.register_origins();
        cluster.init()?;
        cluster.wait_for_leader(None, LEADER_WAIT)?;
        Ok(cluster)
    }

    /// The members' client endpoints, in member order.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// The endpoints as `a,b,c` (the clients' `--router` argument).
    pub fn router_arg(&self) -> String {
        self.endpoints()
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn launch(&mut self, index: usize) {
        let member = &mut self.members[index];
        let process = RouterProcess::start(&[
            "--config",
            member.config.to_str().expect("utf-8 path"),
            "--data-dir",
            member.data_dir.to_str().expect("utf-8 path"),
            "--listen",
            &member.client.to_string(),
            "--metrics-listen",
            &member.metrics.to_string(),
        ]);
        member.process = Some(process);
        member.state = MemberState::Running;
    }

    /// Tells every proxy the members' current pids, so a partition can silence what
    /// one member sends through the others' proxies.
    fn register_origins(&self) {
        let pids: Vec<u32> = self.members.iter().filter_map(Member::pid).collect();
        for member in &self.members {
            member.proxy.set_origins(&pids);
        }
    }

    /// `yellowstone-router cluster init`, sent to member 1's raft listener, naming
    /// every member as `id=<its proxy's address>` (the address the others dial; the
    /// client endpoint each member gives itself from `cluster.client_endpoint`).
    fn init(&self) -> Result<(), ClusterError> {
        let first = &self.members[0];
        let mut args: Vec<String> = vec![
            "cluster".into(),
            "init".into(),
            "--raft".into(),
            first.raft_listen.to_string(),
            "--key".into(),
            first.key.display().to_string(),
        ];
        for member in &self.members {
            args.push("--member".into());
            args.push(format!("{}={}", member.id, member.proxy.addr()));
        }
        run_cli(&args)
    }

    /// `yellowstone-router cluster status --json` asked of member `index` (straight
    /// to its raft listener, not through its proxy).
    pub fn status(&self, index: usize) -> Result<Value, ClusterError> {
        let member = &self.members[index];
        let args: Vec<String> = vec![
            "cluster".into(),
            "status".into(),
            "--raft".into(),
            member.raft_listen.to_string(),
            "--key".into(),
            member.key.display().to_string(),
            "--json".into(),
        ];
        let output = cli_output(&args)?;
        serde_json::from_str(&output).map_err(|e| ClusterError::Cli {
            args: args.join(" "),
            status: "0".into(),
            output: format!("not JSON ({e}): {output}"),
        })
    }

    /// The (block, state hash hex) pairs member `index` recorded when its state
    /// machine entered each block (`cluster hashes --json`, R-HA-4), oldest first,
    /// at most [`STATE_HASHES_MAX`].
    pub fn state_hashes(&self, index: usize) -> Result<Vec<(u64, String)>, ClusterError> {
        let member = &self.members[index];
        let args: Vec<String> = vec![
            "cluster".into(),
            "hashes".into(),
            "--raft".into(),
            member.raft_listen.to_string(),
            "--key".into(),
            member.key.display().to_string(),
            "--max".into(),
            STATE_HASHES_MAX.to_string(),
            "--json".into(),
        ];
        let output = cli_output(&args)?;
        serde_json::from_str(&output).map_err(|e| ClusterError::Cli {
            args: args.join(" "),
            status: "0".into(),
            output: format!("not a JSON array of [block, hash] ({e}): {output}"),
        })
    }

    /// The leader to fault: the member that serves logins and whose Raft says it
    /// leads in the highest term any running member's Raft reports, the same member in the
    /// same term over [`STABLE_FOR`] (longer than an election timeout: a group that
    /// is electing again shows it), and whose commit index moved on meanwhile (a
    /// majority answers it; the ticket probe's traffic never stops). Returns (index,
    /// term). A fault aimed at a member
    /// that has just lost office would measure the election that was already under
    /// way, not the fault.
    pub fn wait_for_stable_leader(&self, within: Duration) -> Result<(usize, u64), ClusterError> {
        let started = Instant::now();
        // (index, term, since, commit index then)
        let mut candidate: Option<(usize, u64, Instant, f64)> = None;
        while started.elapsed() < within {
            let now = self.leader_by_raft();
            match (candidate, now) {
                (Some((index, term, since, commit)), Some((i, t))) if (index, term) == (i, t) => {
                    // Healthy: it still commits (the probe's traffic never stops), so
                    // a majority answers it.
                    let committing = self
                        .raft_view(index)
                        .is_some_and(|view| view.2 as f64 > commit);
                    if since.elapsed() >= STABLE_FOR
                        && committing
                        && login(self.members[index].client, SigningKey::random()).is_ok()
                    {
                        return Ok((index, term));
                    }
                }
                (_, Some((i, t))) => {
                    let commit = self.raft_view(i).map_or(f64::MAX, |view| view.2 as f64);
                    candidate = Some((i, t, Instant::now(), commit));
                }
                (_, None) => candidate = None,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ClusterError::NoLeader {
            candidates: self.members.iter().map(|m| m.id).collect(),
            waited: started.elapsed(),
        })
    }

    /// (index, term) of the running member whose Raft says it leads, in the highest
    /// term any running member's Raft reports (`cluster status --json`, straight from
    /// each member's Raft, not its metrics, which are published about once a second
    /// and stop moving while the process loop waits on a promotion); None when none
    /// does, or two do.
    fn leader_by_raft(&self) -> Option<(usize, u64)> {
        let mut top_term = 0u64;
        let mut leaders = Vec::new();
        for (index, member) in self.members.iter().enumerate() {
            if member.state != MemberState::Running {
                continue;
            }
            let (state, term, _) = self.raft_view(index)?;
            top_term = top_term.max(term);
            if state == "leader" {
                leaders.push((index, term));
            }
        }
        match leaders.as_slice() {
            [(index, term)] if *term == top_term => Some((*index, *term)),
            _ => None,
        }
    }

    /// Member `index`'s Raft as its status says: (state, term, committed index).
    pub fn raft_view(&self, index: usize) -> Option<(String, u64, u64)> {
        let status = self.status(index).ok()?;
        Some((
            status["state"].as_str()?.to_string(),
            status["term"].as_u64()?,
            status["committed_index"].as_u64().unwrap_or(0),
        ))
    }

    /// Member `index`'s term by its Raft (None: no answer).
    pub fn term(&self, index: usize) -> Option<u64> {
        self.raft_view(index).map(|view| view.1)
    }

    /// The member that answers a new connection with `LoginChallenge` (the leader),
    /// among those not `excluding` and not paused or killed. Waits up to `within`;
    /// returns its index and how long it took.
    pub fn wait_for_leader(
        &self,
        excluding: Option<usize>,
        within: Duration,
    ) -> Result<(usize, Duration), ClusterError> {
        let started = Instant::now();
        let candidates: Vec<usize> = (0..self.members.len())
            .filter(|&i| Some(i) != excluding)
            .filter(|&i| {
                matches!(
                    self.members[i].state,
                    MemberState::Running | MemberState::Partitioned
                )
            })
            .collect();
        while started.elapsed() < within {
            for &index in &candidates {
                // A partitioned member may still think it leads, but cannot commit.
                if self.members[index].state == MemberState::Partitioned {
                    continue;
                }
                if let Ok(client) = login(self.members[index].client, SigningKey::random()) {
                    drop(client);
                    return Ok((index, started.elapsed()));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(ClusterError::NoLeader {
            candidates: candidates.iter().map(|&i| self.members[i].id).collect(),
            waited: started.elapsed(),
        })
    }

    /// SIGKILL member `index` (a power cut); its handle is reaped.
    pub fn kill(&mut self, index: usize) {
        let member = &mut self.members[index];
        if let Some(process) = member.process.take() {
            if member.state == MemberState::Paused {
                signal(process.pid(), libc::SIGCONT);
            }
            process.kill_hard();
        }
        member.state = MemberState::Killed;
    }

    /// Starts member `index` again on its data directory and addresses.
    pub fn restart(&mut self, index: usize) {
        assert_eq!(
            self.members[index].state,
            MemberState::Killed,
            "restart a killed member"
        );
        self.launch(index);
        self.register_origins();
    }

    /// SIGSTOP member `index`: it holds its sockets and answers nothing.
    pub fn pause(&mut self, index: usize) {
        let member = &mut self.members[index];
        let pid = member.pid().expect("a running member");
        signal(pid, libc::SIGSTOP);
        member.state = MemberState::Paused;
    }

    /// SIGCONT member `index`.
    pub fn resume(&mut self, index: usize) {
        let member = &mut self.members[index];
        let pid = member.pid().expect("a paused member");
        signal(pid, libc::SIGCONT);
        member.state = MemberState::Running;
    }

    /// Cuts member `index` off from the others: what reaches it through its proxy and
    /// what it sends through theirs is blackholed (sockets stay open). Its client port
    /// is untouched: clients still reach it, and it must not serve them as a leader
    /// that cannot commit (the promise rule).
    pub fn partition(&mut self, index: usize) {
        let pid = self.members[index].pid().expect("a running member");
        // Its own proxy first (one switch), then its connections through the others'
        // (a /proc walk each): the partition is complete when this returns.
        self.members[index].proxy.set_mode(Mode::Blackhole);
        for (other, member) in self.members.iter().enumerate() {
            if other != index {
                member.proxy.set_origin_mode(pid, Some(Mode::Blackhole));
            }
        }
        self.members[index].state = MemberState::Partitioned;
    }

    /// Ends every partition (torn connections are closed; members dial again).
    pub fn heal(&mut self) {
        for member in &mut self.members {
            member.proxy.heal();
            if member.state == MemberState::Partitioned {
                member.state = MemberState::Running;
            }
        }
    }

    /// A metric of member `index` (None when it does not answer within a second, or
    /// lacks the series).
    pub fn metric(&self, index: usize, series: &str) -> Option<f64> {
        let text = quick_metrics(self.members[index].metrics)?;
        crate::metric_value(&text, series)
    }

    /// Waits until every running member's state machine applied everything committed
    /// when the wait began (metrics [`COMMIT_INDEX`] and [`APPLIED_INDEX`]: the highest
    /// commit index any running member reports, then each member's applied index at or
    /// past it): the members caught up, while traffic may go on. Returns that index, or
    /// the last (member id, commit, applied) seen when time runs out.
    pub fn wait_converged(&self, within: Duration) -> Result<u64, Vec<IndexSample>> {
        let deadline = Instant::now() + within;
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].state == MemberState::Running)
            .collect();
        let mut target: Option<f64> = None;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            seen = running
                .iter()
                .map(|&i| {
                    (
                        self.members[i].id,
                        self.metric(i, COMMIT_INDEX),
                        self.metric(i, APPLIED_INDEX),
                    )
                })
                .collect();
            if target.is_none() {
                target = seen
                    .iter()
                    .filter_map(|s| s.1)
                    .fold(None, |top: Option<f64>, c| {
                        Some(top.map_or(c, |t| t.max(c)))
                    });
            }
            if let Some(goal) = target {
                if seen
                    .iter()
                    .all(|s| s.2.is_some_and(|applied| applied >= goal))
                {
                    return Ok(goal as u64);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(seen)
    }

    /// Stops every member that has a process with SIGTERM (a paused one is continued
    /// first; a killed one stays down) and returns whether each exited cleanly.
    pub fn terminate_all(&mut self) -> Vec<bool> {
        let mut clean = Vec::new();
        for member in &mut self.members {
            if member.state == MemberState::Paused {
                if let Some(pid) = member.pid() {
                    signal(pid, libc::SIGCONT);
                }
            }
            if let Some(process) = member.process.take() {
                clean.push(process.terminate(Duration::from_secs(20)));
            }
            member.state = MemberState::Killed;
        }
        clean
    }

    /// Every member's ledger (`yellowstone-router ledger --data-dir D --json`),
    /// read after [`Cluster::terminate_all`].
    pub fn ledgers(&self) -> Vec<Result<Value, ClusterError>> {
        self.members
            .iter()
            .map(|member| {
                let args = vec![
                    "ledger".to_string(),
                    "--data-dir".into(),
                    member.data_dir.display().to_string(),
                    "--json".into(),
                ];
                let output = cli_output(&args)?;
                serde_json::from_str(&output).map_err(|e| ClusterError::Cli {
                    args: args.join(" "),
                    status: "0".into(),
                    output: format!("not JSON ({e}): {output}"),
                })
            })
            .collect()
    }

    /// Funds `entries` through the leader (see [`fund_through_leader`]).
    pub fn fund(&self, entries: &[(Address, u128)]) {
        fund_through_leader(&self.endpoints(), entries);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Continue paused members so their SIGKILL (RouterProcess's drop) is reaped
        // at once.
        for member in &self.members {
            if member.state == MemberState::Paused {
                if let Some(pid) = member.pid() {
                    signal(pid, libc::SIGCONT);
                }
            }
        }
    }
}

/// Funds `entries`: one signed BalanceUpdate through whichever of `endpoints` leads,
/// acknowledged (tried again, with a new nonce, after a failover: a balance update sets
/// balances, so a second one that lands is harmless).
pub fn fund_through_leader(endpoints: &[SocketAddr], entries: &[(Address, u128)]) {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        assert!(Instant::now() < deadline, "could not fund through a leader");
        let Some(mut operator) = connect_leader(endpoints, operator_key()) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let nonce = operator.next_nonce();
        let update = BalanceUpdate {
            from: operator.address(),
            nonce,
            entries: entries
                .iter()
                .map(|(address, balance_wei)| BalanceEntry {
                    address: *address,
                    balance_wei: *balance_wei,
                })
                .collect(),
            signature: Signature::default(),
        };
        if operator.send_signed(update.into()).is_err() {
            continue;
        }
        let acked = wait_for(&mut operator, Duration::from_secs(5), |m| match m {
            Message::Ack(ack) if ack.nonce == nonce => Some(true),
            Message::ErrorReply(e) if e.ref_nonce == nonce => {
                panic!("balance update refused: {e:?}")
            }
            _ => None,
        });
        if acked == Some(true) {
            return;
        }
    }
}

/// The most (block, state hash) pairs read from one member (`cluster.state_hashes_kept`
/// defaults to 4096: a test run spans far fewer blocks).
pub const STATE_HASHES_MAX: usize = 4096;

/// One member's (id, commit index, applied index) as its metrics said (None: no
/// answer or no such series).
pub type IndexSample = (u64, Option<f64>, Option<f64>);

/// Metric names the harness reads (raft-b's metrics, docs/metrics.md).
pub const COMMIT_INDEX: &str = "yellowstone_cluster_commit_index";
/// The highest log index this member's state machine applied.
pub const APPLIED_INDEX: &str = "yellowstone_cluster_applied_index";
/// 1 on the member that leads, else 0.
pub const IS_LEADER: &str = "yellowstone_cluster_is_leader";
/// The member's current term.
pub const TERM: &str = "yellowstone_cluster_term";

/// The router key every member signs with: a group is one router to its clients
/// (tickets and batches verify against one address, R-HA-2).
pub const GROUP_ROUTER_KEY_HEX: &str =
    "8f2a55949038a9610f50fb23b5883af3b4ecb3c3bb792cbcefbd1542c692be63";

/// The catalog every router of these tests runs: the demo models 1-4 (the loadgen's
/// traffic) and [`PROBE_MODEL`] (the probe's alone, so the probe's provider never
/// serves, and is never credited for, the loadgen's RFCs: its self-check would
/// count such credit as unexpected).
pub fn catalog_toml() -> String {
    [1, 2, 3, 4, PROBE_MODEL]
        .iter()
        .map(|id| {
            let hash: String = demo_weights_hash(*id)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("[[market.models]]\nid = {id}\nweights_hash = \"{hash}\"\n")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn member_config(member: &Member, genesis_ms: u64, spec: &ClusterSpec) -> String {
    format!(
        "[network]\nbackend = \"mio\"\n\n\
         [identity]\nrouter_key_hex = \"{GROUP_ROUTER_KEY_HEX}\"\noperator = \"{operator}\"\n\n\
         [market]\ngenesis_ms = {genesis_ms}\n\n\
         [cluster]\nenabled = true\nmember_id = {id}\nraft_listen = \"{raft}\"\n\
         client_endpoint = \"{client}\"\n{cluster_keys}\n\n{catalog}\n{extra}\n",
        cluster_keys = spec.cluster_keys,
        catalog = catalog_toml(),
        operator = operator_key().address(),
        id = member.id,
        raft = member.raft_listen,
        client = member.client,
        extra = spec.extra_config,
    )
}

fn write_file(path: &Path, text: String) -> Result<(), ClusterError> {
    std::fs::write(path, text).map_err(|source| ClusterError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// `<data_dir>/cluster.key`: the group's key file, mode 0600.
fn copy_cluster_key(key: &Path, data_dir: &Path) -> Result<(), ClusterError> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = data_dir.join("cluster.key");
    std::fs::copy(key, &path)
        .and_then(|_| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)))
        .map_err(|source| ClusterError::Write { path, source })
}

fn cli_output(args: &[String]) -> Result<String, ClusterError> {
    let output = Command::new(router_binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .map_err(|source| ClusterError::Write {
            path: router_binary(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(ClusterError::Cli {
            args: args.join(" "),
            status: output.status.to_string(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
        })
    }
}

fn run_cli(args: &[String]) -> Result<(), ClusterError> {
    cli_output(args).map(|_| ())
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid this harness spawned and has not reaped (the
    // RouterProcess handle is alive while the member has a process).
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// `GET /metrics` with short time-outs (a paused member must not stall the poll).
fn quick_metrics(addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(700)))
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Connects to `addr` and logs in, every step bounded by [`LOGIN_TIMEOUT`]: Ok only
/// from a member that serves clients (the leader).
pub fn login(addr: SocketAddr, key: SigningKey) -> Result<Client, ClientError> {
    let stream = TcpStream::connect_timeout(&addr, LOGIN_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(LOGIN_TIMEOUT))?;
    stream.set_write_timeout(Some(LOGIN_TIMEOUT))?;
    let mut client = Client::from_stream(stream, key);
    client.login()?;
    client.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(client)
}

/// One pass over `endpoints`: the first member that lets `key` log in.
pub fn connect_leader(endpoints: &[SocketAddr], key: SigningKey) -> Option<Client> {
    connect_leader_from(endpoints, 0, key).map(|(client, _)| client)
}

/// One pass over `endpoints` starting at `start` (wrapping): the first member that
/// lets `key` log in, and its index. A client that lost its member starts after it,
/// as the shipped clients do ("next member"), so a member that accepts logins but
/// cannot commit (paused, partitioned) is not retried first.
pub fn connect_leader_from(
    endpoints: &[SocketAddr],
    start: usize,
    key: SigningKey,
) -> Option<(Client, usize)> {
    (0..endpoints.len())
        .map(|step| (start + step) % endpoints.len())
        .find_map(|index| {
            login(endpoints[index], key.clone())
                .ok()
                .map(|client| (client, index))
        })
}

fn timed_out(error: &ClientError) -> bool {
    matches!(error, ClientError::Io(e) if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ))
}

/// Waits for a message `pick` accepts; None when the connection dies or time runs out.
fn wait_for<T>(
    client: &mut Client,
    within: Duration,
    mut pick: impl FnMut(&Message) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match client.recv() {
            Ok(message) => {
                if let Some(value) = pick(&message) {
                    return Some(value);
                }
            }
            Err(error) if timed_out(&error) => {}
            Err(_) => return None,
        }
    }
    None
}

/// A ticket the probe received.
#[derive(Clone, Copy, Debug)]
pub struct TicketTimes {
    /// When the RFC was sent.
    pub rfc_sent: Instant,
    /// When its ticket arrived.
    pub ticket_at: Instant,
    /// The member (index) whose connection brought it.
    pub member: usize,
}

/// What the probe's reports were told, for the exactly-once check against the
/// ledgers: sessions acknowledged as credited, and sessions whose acknowledgement
/// never came (credited or not: the leader may have committed it before it died).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeCredits {
    pub acknowledged: u64,
    pub acknowledged_wei: u128,
    pub unanswered: u64,
    pub unanswered_wei_max: u128,
}

/// One user and one provider that follow the leader over the members' client
/// endpoints: the user sends an RFC every few ms, and reports each session (pass);
/// the provider answers probes and re-announces after each reconnect. Every ticket's
/// times are kept, for failover times (R-HA-2).
pub struct TicketProbe {
    stop: Arc<AtomicBool>,
    tickets: Arc<Mutex<Vec<TicketTimes>>>,
    credits: Arc<Mutex<ProbeCredits>>,
    reconnects: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// The probe's model id (the loadgen's traffic uses model 1..).
pub const PROBE_MODEL: u32 = 4_242;
/// Price of the probe provider's offer, wei per token.
pub const PROBE_PRICE: u128 = 1_000_000;
/// Tokens per probe session.
pub const PROBE_TOKENS: u64 = 50;
/// Pause between the probe's RFCs: the resolution of a measured failover time.
pub const PROBE_GAP: Duration = Duration::from_millis(10);
/// How often the probe's provider announces itself (its liveness check, see
/// `run_probe_provider`).
pub const PROVIDER_HEARTBEAT: Duration = Duration::from_millis(300);
/// An announcement unacknowledged this long: the provider's member is lost.
pub const PROVIDER_ACK_WAIT: Duration = Duration::from_millis(700);
/// How long the probe waits for a ticket before it takes its member for lost and
/// looks for the leader again (a paused member never closes the connection: this
/// time-out is the probe's, and every client's, only sign of it). A ticket takes
/// milliseconds; this bounds what a silent leader adds to a measured failover.
pub const PROBE_TICKET_WAIT: Duration = Duration::from_millis(500);

impl TicketProbe {
    /// Funds and registers the probe's user and provider through the group's
    /// leader, then starts their threads.
    pub fn start(cluster: &Cluster) -> TicketProbe {
        TicketProbe::start_on(cluster.endpoints(), Outcome::Pass)
    }

    /// Like [`TicketProbe::start`] over any list of client endpoints (one single
    /// router is a list of one), its reports saying `outcome`: `Outcome::Fail` earns
    /// nothing, so that no credit of the probe's shows in the batches beside a
    /// loadgen's (its self-check counts every credit in a batch it cannot match to
    /// one of its own acknowledgements as unexpected).
    pub fn start_on(endpoints: Vec<SocketAddr>, outcome: Outcome) -> TicketProbe {
        let user_key = SigningKey::from_seed(b"failover-probe-user");
        let provider_key = SigningKey::from_seed(b"failover-probe-provider");
        fund_through_leader(
            &endpoints,
            &[
                (user_key.address(), 1_000_000 * WEI_PER_MOR),
                (provider_key.address(), WEI_PER_MOR),
            ],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let tickets = Arc::new(Mutex::new(Vec::new()));
        let credits = Arc::new(Mutex::new(ProbeCredits::default()));
        let reconnects = Arc::new(AtomicU64::new(0));
        let registered = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (endpoints, stop, reconnects, registered) = (
                endpoints.clone(),
                stop.clone(),
                reconnects.clone(),
                registered.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("probe-provider".into())
                    .spawn(move || {
                        run_probe_provider(
                            &endpoints,
                            provider_key,
                            &stop,
                            &reconnects,
                            &registered,
                        )
                    })
                    .expect("spawn the probe provider"),
            );
        }
        let deadline = Instant::now() + LEADER_WAIT;
        while !registered.load(Ordering::Relaxed) {
            assert!(
                Instant::now() < deadline,
                "the probe provider could not register"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        {
            let (stop, tickets, credits, reconnects) = (
                stop.clone(),
                tickets.clone(),
                credits.clone(),
                reconnects.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("probe-user".into())
                    .spawn(move || {
                        run_probe_user(
                            &endpoints,
                            user_key,
                            outcome,
                            &stop,
                            &tickets,
                            &credits,
                            &reconnects,
                        )
                    })
                    .expect("spawn the probe user"),
            );
        }
        TicketProbe {
            stop,
            tickets,
            credits,
            reconnects,
            threads,
        }
    }

    /// The first ticket for an RFC sent after `fault`, waiting up to `within`:
    /// the time from `fault` to its arrival, and the member (index) that sent it.
    pub fn failover_time(&self, fault: Instant, within: Duration) -> Option<(Duration, usize)> {
        let deadline = Instant::now() + within;
        loop {
            let first = self
                .tickets
                .lock()
                .expect("probe lock")
                .iter()
                .find(|t| t.rfc_sent >= fault)
                .map(|t| (t.ticket_at.duration_since(fault), t.member));
            if first.is_some() || Instant::now() >= deadline {
                return first;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Tickets received so far.
    pub fn tickets(&self) -> usize {
        self.tickets.lock().expect("probe lock").len()
    }

    /// Times the user or provider had to find the leader again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Stops the threads and returns what the reports were told.
    pub fn stop(self) -> ProbeCredits {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("probe thread");
        }
        let credits = *self.credits.lock().expect("probe lock");
        credits
    }
}

fn run_probe_provider(
    endpoints: &[SocketAddr],
    key: SigningKey,
    stop: &AtomicBool,
    reconnects: &AtomicU64,
    registered: &AtomicBool,
) {
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some((mut provider, at)) = connect_leader_from(endpoints, next, key.clone()) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        // Should this connection die, start the next search past this member.
        next = at + 1;
        let nonce = provider.next_nonce();
        let first = !registered.load(Ordering::Relaxed);
        let message: Message = if first {
            let network_id = provider.network_id();
            let weights_hash = demo_weights_hash(PROBE_MODEL);
            let weights_proof = provider.key().sign_digest(&weights_proof_digest(
                network_id,
                PROBE_MODEL,
                &weights_hash,
            ));
            RegisterProvider {
                from: provider.address(),
                nonce,
                endpoint: "127.0.0.1:9999".into(),
                offers: vec![Offer {
                    model_id: PROBE_MODEL,
                    unit: 0,
                    weights_hash,
                    weights_proof,
                    price_wei_per_token: PROBE_PRICE,
                    capacity: 64,
                }],
                signature: Signature::default(),
            }
            .into()
        } else {
            reconnects.fetch_add(1, Ordering::Relaxed);
            ProviderAnnounce {
                from: provider.address(),
                nonce,
                signature: Signature::default(),
            }
            .into()
        };
        if provider.send_signed(message).is_err() {
            continue;
        }
        if first {
            let acked = wait_for(&mut provider, Duration::from_secs(5), |m| match m {
                Message::Ack(ack) if ack.nonce == nonce => Some(true),
                Message::ErrorReply(e) if e.ref_nonce == nonce => {
                    panic!("probe provider registration refused: {e:?}")
                }
                _ => None,
            });
            if acked != Some(true) {
                continue;
            }
            registered.store(true, Ordering::Relaxed);
        }
        // Liveness through commit: an announcement every PROVIDER_HEARTBEAT is
        // acknowledged only once the group committed it, so a member that is paused,
        // or leads without a majority (a partition), shows as an announcement
        // unacknowledged for PROVIDER_ACK_WAIT: then the provider looks for the leader
        // again, past this member, as a provider node would after its keepalive.
        let mut pending: Option<(u64, Instant)> = None;
        let mut announced_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Some((_, sent)) = pending {
                if sent.elapsed() > PROVIDER_ACK_WAIT {
                    break;
                }
            } else if announced_at.elapsed() >= PROVIDER_HEARTBEAT {
                let nonce = provider.next_nonce();
                let announce = ProviderAnnounce {
                    from: provider.address(),
                    nonce,
                    signature: Signature::default(),
                };
                if provider.send_signed(announce.into()).is_err() {
                    break;
                }
                pending = Some((nonce, Instant::now()));
                announced_at = Instant::now();
            }
            let message = match provider.recv() {
                Ok(message) => message,
                Err(error) if timed_out(&error) => continue,
                Err(_) => break,
            };
            if let Message::Ack(ack) = &message {
                if pending.is_some_and(|(nonce, _)| nonce == ack.nonce) {
                    pending = None;
                }
                continue;
            }
            let reply: Message = match message {
                Message::Probe(probe) => ProbeAnswer {
                    from: provider.address(),
                    nonce: provider.next_nonce(),
                    probe_id: probe.probe_id,
                    signature: Signature::default(),
                }
                .into(),
                // Marked unreachable (a probe lost in the failover): announce again.
                Message::Notice(notice) if notice.kind == 1 => ProviderAnnounce {
                    from: provider.address(),
                    nonce: provider.next_nonce(),
                    signature: Signature::default(),
                }
                .into(),
                _ => continue,
            };
            if provider.send_signed(reply).is_err() {
                break;
            }
        }
    }
}

fn run_probe_user(
    endpoints: &[SocketAddr],
    key: SigningKey,
    outcome: Outcome,
    stop: &AtomicBool,
    tickets: &Mutex<Vec<TicketTimes>>,
    credits: &Mutex<ProbeCredits>,
    reconnects: &AtomicU64,
) {
    let mut user: Option<Client> = None;
    let mut next = 0;
    let mut member = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(client) = user.as_mut() else {
            match connect_leader_from(endpoints, next, key.clone()) {
                Some((client, at)) => {
                    user = Some(client);
                    member = at;
                    next = at + 1;
                    reconnects.fetch_add(1, Ordering::Relaxed);
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
            continue;
        };
        let rfc_nonce = client.next_nonce();
        let rfc_sent = Instant::now();
        let rfc = Rfc {
            from: client.address(),
            nonce: rfc_nonce,
            model_id: PROBE_MODEL,
            tokens_max: PROBE_TOKENS,
            expires_at_ms: now_ms() + 3_000,
            signature: Signature::default(),
        };
        if client.send_signed(rfc.into()).is_err() {
            user = None;
            continue;
        }
        let answer = wait_for(client, PROBE_TICKET_WAIT, |m| match m {
            Message::SessionTicket(t) if t.rfc_nonce == rfc_nonce => Some(Some(t.clone())),
            Message::ErrorReply(e) if e.ref_nonce == rfc_nonce => Some(None),
            _ => None,
        });
        let ticket = match answer {
            // No answer: the connection died, or the leader lost office mid-way.
            None => {
                user = None;
                continue;
            }
            // Refused (e.g. the provider has not re-announced yet): try again.
            Some(None) => {
                std::thread::sleep(PROBE_GAP);
                continue;
            }
            Some(Some(ticket)) => ticket,
        };
        tickets.lock().expect("probe lock").push(TicketTimes {
            rfc_sent,
            ticket_at: Instant::now(),
            member,
        });
        let nonce = client.next_nonce();
        let report = Report {
            from: client.address(),
            nonce,
            session_id: ticket.session_id,
            elapsed_ms: 500,
            tokens: PROBE_TOKENS,
            ttft_ms: 0,
            prompt_tokens: 0,
            outcome,
            signature: Signature::default(),
        };
        let most = PROBE_TOKENS as u128 * PROBE_PRICE;
        let ack = if client.send_signed(report.into()).is_ok() {
            wait_for(client, Duration::from_secs(2), |m| match m {
                Message::ReportAck(a) if a.nonce == nonce => Some(Ok(a.clone())),
                Message::ErrorReply(e) if e.ref_nonce == nonce => Some(Err(e.clone())),
                _ => None,
            })
        } else {
            None
        };
        let mut credits = credits.lock().expect("probe lock");
        match ack {
            Some(Ok(ack)) if ack.earned => {
                credits.acknowledged += 1;
                credits.acknowledged_wei += ack.earned_wei;
            }
            // Acknowledged as not creditable, or refused: no credit owed.
            Some(_) => {}
            None => {
                credits.unanswered += 1;
                credits.unanswered_wei_max += most;
                user = None;
            }
        }
        drop(credits);
        std::thread::sleep(PROBE_GAP);
    }
}

/// A loadgen child (a bounded run; killed by pid if the test fails first), its stdout
/// and stderr written to `log` (a file, so a chatty run never blocks on a full pipe).
pub fn spawn_loadgen(args: &[String], log: &Path) -> KillOnDrop {
    let file =
        std::fs::File::create(log).unwrap_or_else(|e| panic!("loadgen log {}: {e}", log.display()));
    let err = file.try_clone().expect("clone the log file handle");
    KillOnDrop(
        Command::new(loadgen_binary())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(file)
            .stderr(err)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn yellowstone-loadgen"),
    )
}
