//! Issue 25's seeded simulation (R-HA-1, R-HA-2): three members on a tokio
//! current-thread runtime with paused time, an in-memory network with seeded message
//! loss, delays and partitions, and crashes (a member is dropped and restarted from
//! its `FaultyStorage` as a power cut leaves it: synced bytes, then a random prefix
//! of the rest). The leader's pipeline is played by the test: it promotes, then
//! appends real engine commands (the engine's market workload, with block
//! boundaries) through `ReplicatedDurability`.
//!
//! Invariants, checked after every step:
//! - at most one leader per term (every member's view, every step);
//! - committed entries are never lost: every new leader's promotion starts after
//!   every record any `ReplicatedDurability` reported durable, and after the end
//!   (every member crashed at once and restarted) every member applies them all;
//! - everything reported durable is committed: a record reported durable and then
//!   lost would fail the previous check;
//! - every member applies a prefix of the one record sequence, and its state hash
//!   at every block equals the reference engine's at that block.
//!
//! Runs: `cargo test -p yellowstone-gateway --test replication_sim` (CI: `SIM_SEEDS`
//! seeds, default 8, about 5 s); one seed: `SIM_SEED=<seed>`. Openraft draws its
//! election timeouts from its own generator, so a seed fixes the faults and the
//! workload, not every interleaving: a failure prints its seed and the last events.

mod replication_support;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, ServerState, Snapshot};
use replication_support::{market, Stream};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use yellowstone_engine::Engine;
use yellowstone_gateway::journal::faulty::{Faults, FaultyStorage};
use yellowstone_gateway::journal::{Durability, JournalRecord};
use yellowstone_gateway::replication::log_store::LogStore;
use yellowstone_gateway::replication::network::NetStats;
use yellowstone_gateway::replication::state_machine::{Machine, MachineConfig, NoObserver};
use yellowstone_gateway::replication::types::{MemberNode, TypeConfig, Vote};
use yellowstone_gateway::replication::{ClusterConfig, MemberCore, MemberId, ReplicatedDurability};

type Raft = openraft::Raft<TypeConfig>;

/// splitmix64: the faults' generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// The in-memory network: who is up, who is cut off, how lossy and slow it is.
struct Net {
    rafts: BTreeMap<MemberId, Raft>,
    /// Members cut off from every other (a partition of one).
    isolated: BTreeSet<MemberId>,
    drop_per_mille: u64,
    delay_ms_max: u64,
    rng: Rng,
}

#[derive(Clone)]
struct SimNetwork {
    from: MemberId,
    net: Arc<Mutex<Net>>,
}

struct SimClient {
    from: MemberId,
    to: MemberId,
    net: Arc<Mutex<Net>>,
}

enum Link {
    Down,
    Lost,
    Up(Raft, Duration),
}

impl SimClient {
    fn link(&self) -> Link {
        let mut net = self.net.lock().unwrap();
        let raft = match net.rafts.get(&self.to) {
            Some(raft) if net.rafts.contains_key(&self.from) => raft.clone(),
            _ => return Link::Down,
        };
        if net.isolated.contains(&self.from) || net.isolated.contains(&self.to) {
            return Link::Down;
        }
        let drop = net.drop_per_mille;
        if net.rng.chance(drop) {
            return Link::Lost;
        }
        let max = net.delay_ms_max;
        let delay = Duration::from_millis(net.rng.below(max + 1));
        Link::Up(raft, delay)
    }

    /// The answer is lost too, sometimes (the request was served).
    /// The peer's Raft once the link's delay has passed, or the link's failure (a
    /// lost message costs the sender its RPC's time to live, as a real one would).
    async fn reach<E: std::error::Error>(
        &self,
        option: &RPCOption,
    ) -> Result<Raft, RPCError<MemberId, MemberNode, E>> {
        let (raft, delay) = match self.link() {
            Link::Down => return Err(unreachable()),
            Link::Lost => {
                tokio::time::sleep(option.hard_ttl()).await;
                return Err(lost());
            }
            Link::Up(raft, delay) => (raft, delay),
        };
        tokio::time::sleep(delay).await;
        Ok(raft)
    }

    /// The peer's answer, unless the link loses it on the way back.
    #[allow(clippy::result_large_err)] // openraft's RPCError, as its RaftNetwork returns it
    fn answer<T, E: std::error::Error>(
        &self,
        answer: Result<T, E>,
    ) -> Result<T, RPCError<MemberId, MemberNode, E>> {
        if self.answer_lost() {
            return Err(lost());
        }
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    fn answer_lost(&self) -> bool {
        let mut net = self.net.lock().unwrap();
        let drop = net.drop_per_mille;
        net.rng.chance(drop / 2)
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<MemberId, MemberNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other("link down")))
}

fn lost<E: std::error::Error>() -> RPCError<MemberId, MemberNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other("message lost")))
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimClient;

    async fn new_client(&mut self, target: MemberId, _node: &MemberNode) -> SimClient {
        SimClient {
            from: self.from,
            to: target,
            net: self.net.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for SimClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, RPCError<MemberId, MemberNode, RaftError<MemberId>>>
    {
        let raft = self.reach(&option).await?;
        let answer = raft.append_entries(rpc).await;
        self.answer(answer)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        option: RPCOption,
    ) -> Result<VoteResponse<MemberId>, RPCError<MemberId, MemberNode, RaftError<MemberId>>> {
        let raft = self.reach(&option).await?;
        let answer = raft.vote(rpc).await;
        self.answer(answer)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<MemberId>, StreamingError<TypeConfig, Fatal<MemberId>>> {
        let (raft, delay) = match self.link() {
            Link::Down => {
                return Err(StreamingError::Unreachable(Unreachable::new(
                    &std::io::Error::other("link down"),
                )))
            }
            Link::Lost => {
                return Err(StreamingError::Network(NetworkError::new(
                    &std::io::Error::other("message lost"),
                )))
            }
            Link::Up(raft, delay) => (raft, delay),
        };
        tokio::time::sleep(delay).await;
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::RemoteError(RemoteError::new(self.to, e)))
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(50)))
    }
}

fn config(id: MemberId) -> ClusterConfig {
    ClusterConfig {
        enabled: true,
        member_id: id,
        raft_listen: format!("127.0.0.1:{}", 7400 + id),
        client_endpoint: format!("127.0.0.1:{}", 9000 + id),
        heartbeat_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        rpc_timeout_ms: 100,
        snapshot_every_entries: 6,
        log_entries_kept: 3,
        // Pipelined proposals (the default is 1): several entries uncommitted at once
        // when a leader falls.
        proposals_in_flight_max: 3,
        ..ClusterConfig::default()
    }
}

struct Office {
    id: MemberId,
    term: u64,
    durability: ReplicatedDurability,
    /// The last sequence number appended through this office.
    appended: u64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    net: Arc<Mutex<Net>>,
    storages: BTreeMap<MemberId, FaultyStorage>,
    members: BTreeMap<MemberId, MemberCore>,
    /// Every record, by sequence number - 1: the one sequence every member applies a
    /// prefix of (a new leader re-proposes from its `next_seq`).
    records: Vec<Vec<u8>>,
    stream: Stream,
    office: Option<Office>,
    /// The highest sequence number reported durable.
    acknowledged: u64,
    leaders_by_term: BTreeMap<u64, MemberId>,
    events: Vec<String>,
    crashes: u32,
    promotions: u32,
    /// Snapshots installed from a leader (members that fell behind a purge).
    snapshots_installed: u64,
}

impl Sim {
    fn log(&mut self, event: String) {
        self.events.push(event);
        if self.events.len() > 40 {
            self.events.remove(0);
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "replication simulation seed {} failed: {what}\nlast events:\n{}\nreplay: SIM_SEED={} \
             cargo test -p yellowstone-gateway --test replication_sim",
            self.seed,
            self.events.join("\n"),
            self.seed
        );
    }

    async fn start_member(&mut self, id: MemberId, storage: FaultyStorage) {
        let config = config(id);
        let log = LogStore::open(Box::new(storage.clone()), 1 << 16, true)
            .unwrap_or_else(|e| self.fail(format!("member {id} log recovery: {e}")));
        let machine = Machine::open(
            Box::new(storage.clone()),
            Engine::new(market()),
            MachineConfig {
                snapshot_every_entries: config.snapshot_every_entries,
                state_hashes_kept: config.state_hashes_kept,
            },
            Arc::new(NoObserver),
        )
        .unwrap_or_else(|e| self.fail(format!("member {id} snapshot recovery: {e}")));
        let network = SimNetwork {
            from: id,
            net: self.net.clone(),
        };
        let core = MemberCore::start(
            id,
            &config,
            log,
            machine,
            network,
            Arc::new(NetStats::default()),
        )
        .await
        .unwrap_or_else(|e| self.fail(format!("member {id} start: {e}")));
        self.net
            .lock()
            .unwrap()
            .rafts
            .insert(id, core.raft().clone());
        self.storages.insert(id, storage);
        self.members.insert(id, core);
    }

    async fn crash(&mut self, id: MemberId) {
        let Some(core) = self.members.remove(&id) else {
            return;
        };
        // The disk as the power cut leaves it, taken first: whatever the dying
        // member still does goes to the old copy.
        let crashed = self.storages[&id].crash();
        self.storages.insert(id, crashed);
        self.net.lock().unwrap().rafts.remove(&id);
        if self.office.as_ref().is_some_and(|o| o.id == id) {
            self.office = None;
        }
        let _ = core.raft().shutdown().await;
        self.snapshots_installed += core
            .machine()
            .stats
            .snapshots_installed
            .load(std::sync::atomic::Ordering::Relaxed);
        self.crashes += 1;
        self.log(format!("crash {id}"));
    }

    async fn restart(&mut self, id: MemberId) {
        if self.members.contains_key(&id) {
            return;
        }
        let storage = self.storages[&id].clone();
        self.start_member(id, storage).await;
        self.log(format!("restart {id}"));
    }

    fn record(&mut self, seq: u64) -> Vec<u8> {
        while self.records.len() < seq as usize {
            let record = if self.rng.chance(120) {
                self.stream.block_jump()
            } else {
                self.stream.next(1).remove(0)
            };
            self.records.push(record);
        }
        self.records[seq as usize - 1].clone()
    }

    async fn take_office(&mut self) {
        if self.office.is_some() {
            return;
        }
        let leader = self.members.iter().find_map(|(id, m)| {
            let metrics = m.raft().metrics().borrow().clone();
            (metrics.state == ServerState::Leader).then_some(*id)
        });
        let Some(id) = leader else { return };
        let promoted =
            tokio::time::timeout(Duration::from_secs(2), self.members[&id].promote()).await;
        let Ok(Ok(promotion)) = promoted else {
            return;
        };
        if promotion.next_seq <= self.acknowledged {
            self.fail(format!(
                "member {id} promoted in term {} at seq {}: record {} was reported durable and is lost",
                promotion.term, promotion.next_seq, self.acknowledged
            ));
        }
        let expected = self.replay_hash(promotion.next_seq - 1);
        if promotion.engine.state_hash() != expected {
            self.fail(format!(
                "member {id} promoted with a state that is not the records up to {}",
                promotion.next_seq - 1
            ));
        }
        self.promotions += 1;
        self.log(format!(
            "promote {id} term {} next_seq {}",
            promotion.term, promotion.next_seq
        ));
        let durability = self.members[&id].durability(&promotion);
        self.office = Some(Office {
            id,
            term: promotion.term,
            durability,
            appended: promotion.next_seq - 1,
        });
    }

    /// The state hash after applying records 1..=upto to the genesis engine.
    fn replay_hash(&self, upto: u64) -> [u8; 32] {
        let mut engine = Engine::new(market());
        let mut effects = Vec::new();
        for bytes in &self.records[..upto as usize] {
            let record = JournalRecord::decode(bytes).expect("records decode");
            engine.apply(&record.command, record.now_ms, &mut effects);
            effects.clear();
        }
        engine.state_hash()
    }

    fn propose(&mut self, count: u64) {
        for _ in 0..count {
            let Some(seq) = self.office.as_ref().map(|o| o.appended + 1) else {
                return;
            };
            let record = self.record(seq);
            let Some(office) = self.office.as_mut() else {
                return;
            };
            match office.durability.append(&record) {
                Ok(got) if got == seq => office.appended = seq,
                Ok(got) => {
                    let what = format!("the journal numbered record {seq} as {got}");
                    self.fail(what);
                }
                Err(e) => {
                    let (id, term) = (office.id, office.term);
                    self.log(format!("office of {id} term {term} lost: {e}"));
                    self.office = None;
                    return;
                }
            }
        }
    }

    /// The invariants of the module comment.
    fn check(&mut self) {
        for (id, member) in &self.members {
            let metrics = member.raft().metrics().borrow().clone();
            if metrics.state == ServerState::Leader {
                let term = metrics.current_term;
                match self.leaders_by_term.get(&term) {
                    Some(other) if other != id => {
                        let what = format!("two leaders in term {term}: {other} and {id}");
                        self.fail(what);
                    }
                    _ => {
                        self.leaders_by_term.insert(term, *id);
                    }
                }
            }
        }
        if let Some(office) = &self.office {
            let durable = office.durability.durable_seq();
            if durable > self.acknowledged {
                self.acknowledged = durable;
            }
        }
        for (id, member) in &self.members {
            for (block, hash) in member.machine().state_hashes() {
                match self.stream.blocks.get(&block) {
                    Some(expected) if *expected == hash => {}
                    Some(_) => {
                        self.fail(format!("member {id} state hash at block {block} differs"))
                    }
                    None => self.fail(format!(
                        "member {id} entered block {block}, the records never did"
                    )),
                }
            }
        }
    }
}

impl Sim {
    async fn new(seed: u64) -> Sim {
        let net = Arc::new(Mutex::new(Net {
            rafts: BTreeMap::new(),
            isolated: BTreeSet::new(),
            drop_per_mille: 0,
            delay_ms_max: 5,
            rng: Rng(seed ^ 0x5EED),
        }));
        let mut sim = Sim {
            seed,
            rng: Rng(seed),
            net,
            storages: BTreeMap::new(),
            members: BTreeMap::new(),
            records: Vec::new(),
            stream: Stream::new(),
            office: None,
            acknowledged: 0,
            leaders_by_term: BTreeMap::new(),
            events: Vec::new(),
            crashes: 0,
            promotions: 0,
            snapshots_installed: 0,
        };
        for id in 1..=3 {
            let storage = FaultyStorage::new(Faults {
                seed: seed.wrapping_mul(31).wrapping_add(id),
                crash_zero_tail_bytes_max: 64,
                ..Faults::default()
            });
            sim.start_member(id, storage).await;
        }
        let members: BTreeMap<MemberId, MemberNode> = (1..=3)
            .map(|id| {
                let c = config(id);
                (
                    id,
                    MemberNode {
                        raft_addr: c.raft_listen,
                        client_endpoint: c.client_endpoint,
                    },
                )
            })
            .collect();
        sim.members[&1]
            .raft()
            .initialize(members)
            .await
            .unwrap_or_else(|e| panic!("initialize: {e}"));
        sim
    }

    async fn step(&mut self) {
        let roll = self.rng.below(1000);
        let down: Vec<MemberId> = (1..=3)
            .filter(|id| !self.members.contains_key(id))
            .collect();
        match roll {
            0..=549 => {
                self.take_office().await;
                let count = 1 + self.rng.below(8);
                self.propose(count);
            }
            550..=799 => {
                let ms = 1 + self.rng.below(150);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            800..=849 => {
                // Crash one member (a majority stays unless another is down).
                if down.is_empty() {
                    let id = if self.rng.chance(500) {
                        self.office.as_ref().map_or(1 + self.rng.below(3), |o| o.id)
                    } else {
                        1 + self.rng.below(3)
                    };
                    self.crash(id).await;
                }
            }
            850..=919 => {
                if let Some(&id) = down.first() {
                    self.restart(id).await;
                }
            }
            920..=959 => {
                let mut net = self.net.lock().unwrap();
                if net.isolated.is_empty() {
                    let id = 1 + self.rng.below(3);
                    net.isolated.insert(id);
                    drop(net);
                    self.log(format!("isolate {id}"));
                } else {
                    net.isolated.clear();
                    drop(net);
                    self.log("heal".to_string());
                }
            }
            960..=989 => {
                let per_mille = [0, 0, 20, 100, 300][self.rng.below(5) as usize];
                let delay = [1, 5, 30, 80][self.rng.below(4) as usize];
                let mut net = self.net.lock().unwrap();
                net.drop_per_mille = per_mille;
                net.delay_ms_max = delay;
                drop(net);
                self.log(format!(
                    "network: drop {per_mille}/1000, delay up to {delay} ms"
                ));
            }
            _ => {
                // Every member at once: only what was synced survives.
                for id in 1..=3 {
                    self.crash(id).await;
                }
                for id in 1..=3 {
                    self.restart(id).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.check();
    }

    /// Heals everything, crashes every member at once, restarts them, and waits
    /// until a leader has every acknowledged record and every member applied the
    /// same prefix.
    async fn finish(&mut self) {
        {
            let mut net = self.net.lock().unwrap();
            net.isolated.clear();
            net.drop_per_mille = 0;
            net.delay_ms_max = 5;
        }
        self.check();
        for id in 1..=3 {
            self.crash(id).await;
        }
        for id in 1..=3 {
            self.restart(id).await;
        }
        self.log("final: healed, crashed all, restarted all".to_string());
        let mut target = None;
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.take_office().await;
            if target.is_none() {
                if let Some(office) = &self.office {
                    target = Some(office.appended + 3);
                }
                self.propose(3);
            }
            self.check();
            let Some(target) = target else { continue };
            let applied: Vec<u64> = self
                .members
                .values()
                .map(|m| m.machine().next_seq() - 1)
                .collect();
            if applied.iter().all(|a| *a >= target) {
                if target < self.acknowledged {
                    self.fail(format!(
                        "final state at {target} below acknowledged {}",
                        self.acknowledged
                    ));
                }
                let expected = self.replay_hash(target);
                for (id, member) in &self.members {
                    if member.machine().next_seq() - 1 == target
                        && member.machine().state_hash() != expected
                    {
                        self.fail(format!(
                            "member {id} state differs from the records' replay"
                        ));
                    }
                }
                return;
            }
        }
        self.fail("no leader applied the final records within 30 s (virtual)".to_string());
    }
}

fn run_seed(seed: u64, steps: u32) -> (u32, u32, u64, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut sim = Sim::new(seed).await;
        for _ in 0..steps {
            sim.step().await;
        }
        sim.finish().await;
        for id in 1..=3 {
            sim.crash(id).await;
        }
        (
            sim.crashes,
            sim.promotions,
            sim.acknowledged,
            sim.snapshots_installed,
        )
    })
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8u64);
    (0..count).map(|i| 0xA11CE + i).collect()
}

#[cfg(not(feature = "plant-early-durable"))]
#[test]
fn three_members_keep_every_committed_record_under_faults() {
    let steps = std::env::var("SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut crashes = 0;
    let mut promotions = 0;
    let mut installs = 0;
    for seed in seeds() {
        let (c, p, acknowledged, snapshots) = run_seed(seed, steps);
        eprintln!(
            "seed {seed}: {c} crashes, {p} promotions, {acknowledged} records acknowledged, \
             {snapshots} snapshots installed"
        );
        assert!(acknowledged > 0, "seed {seed}: nothing was ever committed");
        crashes += c;
        promotions += p;
        installs += snapshots;
    }
    // The faults happened: a run without leader changes or snapshot catch-ups proves
    // little.
    assert!(
        crashes > 0 && promotions > 1,
        "crashes {crashes}, promotions {promotions}"
    );
    if seeds().len() >= 4 {
        assert!(installs > 0, "no member ever caught up by a snapshot");
    }
}

/// The plant (records reported durable as soon as appended, before a majority has
/// them: gateway feature `plant-early-durable`) is caught by the CI seeds.
#[cfg(feature = "plant-early-durable")]
#[test]
fn the_simulation_catches_records_reported_durable_before_commit() {
    let caught = seeds().into_iter().find_map(|seed| {
        let result = std::panic::catch_unwind(|| run_seed(seed, 400));
        let panic = result.err()?;
        let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        Some((seed, text))
    });
    let (seed, text) =
        caught.expect("the simulation misses records reported durable before commit");
    eprintln!("plant caught by seed {seed}: {text}");
    assert!(
        text.contains("reported durable and is lost") || text.contains("below acknowledged"),
        "{text}"
    );
}
