//! Issue 25 (R-HA-1, R-HA-2, R-HA-4): three members in one process over loopback TCP
//! with their files on disk: elect a leader, replicate journal groups of real engine
//! commands, shut the leader down, a new leader promotes with every committed record,
//! the state hash of every block is the same on every member, and a learner that
//! joins after the log was purged catches up by a whole snapshot.

mod replication_support;

use replication_support::{market, Stream};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use yellowstone_gateway::journal::Durability;
use yellowstone_gateway::replication::network::{admin_call, ClusterKey, KEY_FILE};
use yellowstone_gateway::replication::state_machine::ApplyObserver;
use yellowstone_gateway::replication::{
    AdminReply, AdminRequest, ClusterConfig, Member, MemberNode, ReplicationError, Role,
};
use yellowstone_router_core::{ReplyCache, ReplyCacheConfig, ReplyCacheImportError};

const KEY: [u8; 32] = [42; 32];

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn write_key(dir: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(KEY_FILE))
        .unwrap();
    file.write_all(&KEY).unwrap();
}

fn config(id: u64, raft: SocketAddr) -> ClusterConfig {
    ClusterConfig {
        enabled: true,
        member_id: id,
        raft_listen: raft.to_string(),
        client_endpoint: format!("127.0.0.1:{}", 9000 + id),
        heartbeat_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        rpc_timeout_ms: 100,
        snapshot_every_entries: 4,
        log_entries_kept: 2,
        ..ClusterConfig::default()
    }
}

fn node(config: &ClusterConfig) -> MemberNode {
    MemberNode {
        raft_addr: config.raft_listen.clone(),
        client_endpoint: config.client_endpoint.clone(),
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Group {
    dirs: Vec<tempfile::TempDir>,
    configs: Vec<ClusterConfig>,
    members: BTreeMap<u64, Member>,
    /// Each member's reply cache (R-HA-3).
    caches: BTreeMap<u64, Arc<ReplyCache>>,
}

/// A member's reply cache, fed by its state machine and carried in its snapshots,
/// as the router process keeps it (R-HA-3).
struct CacheObserver(Arc<ReplyCache>);

impl ApplyObserver for CacheObserver {
    fn applied(
        &self,
        _now_ms: u64,
        command: &yellowstone_engine::Command,
        effects: &[yellowstone_engine::Effect],
    ) {
        self.0.observe(command, effects);
    }

    fn snapshot_replies(&self) -> Vec<u8> {
        self.0.export()
    }

    fn snapshot_loaded(&self, replies: &[u8]) -> Result<(), ReplyCacheImportError> {
        self.0.import(replies)
    }
}

fn new_cache() -> Arc<ReplyCache> {
    Arc::new(ReplyCache::new(ReplyCacheConfig {
        per_address: 64,
        entries_max: 65_536,
    }))
}

fn start_member(config: &ClusterConfig, dir: &Path) -> Member {
    let observer = Arc::new(CacheObserver(new_cache()));
    Member::start(config.clone(), dir, market(), observer).unwrap()
}

/// Starts a new member on a free port; another port if that one was taken between
/// choosing and binding (other tests on this machine use loopback too).
fn start_new(mut config: ClusterConfig, dir: &Path) -> (Member, ClusterConfig, Arc<ReplyCache>) {
    for _ in 0..10 {
        config.raft_listen = free_addr().to_string();
        let cache = new_cache();
        let observer = Arc::new(CacheObserver(cache.clone()));
        match Member::start(config.clone(), dir, market(), observer) {
            Ok(member) => return (member, config, cache),
            Err(ReplicationError::Io { what, source }) => {
                eprintln!("{what}: {source}; another port");
            }
            Err(e) => panic!("member {}: {e}", config.member_id),
        }
    }
    panic!("no free port for member {}", config.member_id)
}

fn admin(addr: &str, request: AdminRequest) -> AdminReply {
    admin_call(
        addr.parse().unwrap(),
        &ClusterKey::from_bytes(KEY),
        request,
        Duration::from_secs(10),
        1 << 30,
    )
    .unwrap()
}

fn start_group(n: u64) -> Group {
    start_group_with(n, |id| config(id, free_addr()))
}

/// Starts members 1..=n with the configuration `config_of(id)` gives (on another
/// port if its own was taken meanwhile) and initialises the group through member 1.
fn start_group_with(n: u64, config_of: impl Fn(u64) -> ClusterConfig) -> Group {
    let mut group = Group {
        dirs: Vec::new(),
        configs: Vec::new(),
        members: BTreeMap::new(),
        caches: BTreeMap::new(),
    };
    for id in 1..=n {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path());
        let (member, config, cache) = start_new(config_of(id), dir.path());
        group.members.insert(id, member);
        group.caches.insert(id, cache);
        group.dirs.push(dir);
        group.configs.push(config);
    }
    let members = group
        .configs
        .iter()
        .map(|c| (c.member_id, node(c)))
        .collect();
    let reply = admin(
        &group.configs[0].raft_listen,
        AdminRequest::Init { members },
    );
    assert!(matches!(reply, AdminReply::Done), "init: {reply:?}");
    group
}

/// The leader of the newest term any member leads (a member restarted as the
/// leader of an old term shows `Leader` until it hears of the new one).
fn leader_of(group: &Group) -> Option<(u64, u64)> {
    group
        .members
        .iter()
        .filter_map(|(id, m)| match *m.role().borrow() {
            Role::Leader { term } => Some((*id, term)),
            _ => None,
        })
        .max_by_key(|(_, term)| *term)
}

/// Promotes the newest leader, retrying while leadership settles.
fn promote(group: &Group) -> (u64, yellowstone_gateway::replication::Promotion) {
    wait_for("a promotion", Duration::from_secs(10), || {
        let (id, _) = leader_of(group)?;
        group.members[&id].promote().ok().map(|p| (id, p))
    })
}

/// Appends `records` through the leader's durability and waits until all are
/// committed; returns the last sequence number.
fn propose_all(durability: &mut impl Durability, records: Vec<Vec<u8>>) -> u64 {
    let mut last = 0;
    for record in records {
        last = durability.append(&record).unwrap();
    }
    wait_for("commit", Duration::from_secs(20), || {
        (durability.durable_seq() >= last).then_some(())
    });
    assert_eq!(durability.synced_seq(), durability.durable_seq());
    last
}

fn wait_applied(group: &Group, next_seq: u64) {
    for (id, member) in &group.members {
        wait_for(
            &format!("member {id} applying to {next_seq}"),
            Duration::from_secs(20),
            || (member.core().machine().next_seq() >= next_seq).then_some(()),
        );
    }
}

fn assert_same_state(group: &Group, stream: &Stream) {
    let reference = stream.reference.state_hash();
    let mut hashes_by_member = Vec::new();
    for (id, member) in &group.members {
        assert_eq!(
            member.core().machine().state_hash(),
            reference,
            "member {id}'s state"
        );
        hashes_by_member.push((*id, member.core().machine().state_hashes()));
    }
    // Every block a pair of members both recorded hashes the same on both.
    let mut blocks = 0;
    for (a, ha) in &hashes_by_member {
        for (b, hb) in &hashes_by_member {
            for (block, hash) in ha {
                if let Some((_, other)) = hb.iter().find(|(bb, _)| bb == block) {
                    assert_eq!(hash, other, "members {a} and {b} at block {block}");
                    blocks += 1;
                }
            }
        }
    }
    assert!(blocks > 0, "no block boundary was compared");
}

#[test]
fn three_members_fail_over_with_every_committed_record() {
    let mut group = start_group(3);
    let (first, promotion) = promote(&group);
    let term = promotion.term;
    assert_eq!(promotion.next_seq, 1);
    let mut durability = group.members[&first].durability(&promotion);
    let mut stream = Stream::new();
    for _ in 0..3 {
        let mut records = stream.next(40);
        records.push(stream.block_jump());
        propose_all(&mut durability, records);
    }
    let last = propose_all(&mut durability, stream.next(25));
    assert_eq!(last, stream.made);
    // Group commit: what gathered while a proposal was in flight went as one entry.
    let (entries, records) = durability.proposer_stats();
    assert_eq!(records, last);
    assert!(entries < records, "{entries} entries for {records} records");
    wait_applied(&group, last + 1);
    assert_same_state(&group, &stream);
    // A follower refuses to promote-copy while another leads: its role says so.
    for (id, member) in &group.members {
        if *id != first {
            assert!(
                matches!(*member.role().borrow(), Role::Follower { leader: Some((l, _)), .. } if l == first)
            );
        }
    }

    // The leader goes away; its journal fails from then on.
    let old = group.members.remove(&first).unwrap();
    old.shutdown();
    let (second, promotion) = promote(&group);
    assert!(promotion.term > term && second != first);
    assert_eq!(
        promotion.next_seq,
        last + 1,
        "the new leader has every committed record"
    );
    assert_eq!(promotion.engine.state_hash(), stream.reference.state_hash());
    wait_for("the old journal to fail", Duration::from_secs(5), || {
        durability.append(b"late").err()
    });
    let mut durability = group.members[&second].durability(&promotion);
    let mut records = stream.next(30);
    records.push(stream.block_jump());
    let last = propose_all(&mut durability, records);
    wait_applied(&group, last + 1);
    assert_same_state(&group, &stream);
    let status = group.members[&second].status();
    assert_eq!(status.state, "leader");
    assert_eq!(status.members.len(), 3);
    drop(durability);
    for (_, member) in std::mem::take(&mut group.members) {
        member.shutdown();
    }
}

#[test]
fn a_learner_catches_up_by_snapshot_and_a_wrong_key_is_refused() {
    let mut group = start_group(3);
    let (leader, promotion) = promote(&group);
    let mut durability = group.members[&leader].durability(&promotion);
    let mut stream = Stream::new();
    for _ in 0..12 {
        let mut records = stream.next(20);
        records.push(stream.block_jump());
        propose_all(&mut durability, records);
    }
    let last = stream.made;
    wait_for(
        "a snapshot and a purge on the leader",
        Duration::from_secs(10),
        || {
            let status = group.members[&leader].status();
            status.snapshot_index.filter(|s| *s > 4).map(|_| ())
        },
    );

    // A member with another key is refused, counted, and learns nothing.
    let stranger = tempfile::tempdir().unwrap();
    let bad = ClusterKey::from_bytes([7; 32]);
    let err = admin_call(
        group.configs[0].raft_listen.parse().unwrap(),
        &bad,
        AdminRequest::Status,
        Duration::from_secs(2),
        1 << 30,
    );
    assert!(
        matches!(err, Err(ReplicationError::ClosedUnanswered { .. })),
        "{err:?}"
    );
    let refused: u64 = group.members.values().map(|m| m.status().bad_macs).sum();
    assert!(refused >= 1);
    drop(stranger);

    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path());
    let learner_config = ClusterConfig {
        learner: true,
        ..config(4, free_addr())
    };
    let (learner, learner_config, learner_cache) = start_new(learner_config, dir.path());
    let leader_addr = group.configs[(leader - 1) as usize].raft_listen.clone();
    let reply = admin(
        &leader_addr,
        AdminRequest::AddLearner {
            id: 4,
            node: node(&learner_config),
        },
    );
    assert!(matches!(reply, AdminReply::Done), "add learner: {reply:?}");
    wait_for("the learner to catch up", Duration::from_secs(20), || {
        (learner.core().machine().next_seq() > last).then_some(())
    });
    assert!(
        learner
            .core()
            .machine()
            .stats
            .snapshots_installed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the learner joined after the purge: it must have installed a snapshot"
    );
    assert!(matches!(*learner.role().borrow(), Role::Learner { .. }));
    // It follows from the snapshot on: the next blocks hash the same as the leader's.
    let mut records = stream.next(10);
    records.push(stream.block_jump());
    let last = propose_all(&mut durability, records);
    group.members.insert(4, learner);
    group.dirs.push(dir);
    wait_applied(&group, last + 1);
    assert_same_state(&group, &stream);
    // R-HA-3: the snapshot carried the leader's reply cache: the learner answers a
    // resend of a command the snapshot covers as the leader would.
    let leader_cache = &group.caches[&leader];
    assert!(
        !leader_cache.is_empty(),
        "the workload's commands were answered"
    );
    assert_eq!(
        learner_cache.export(),
        leader_cache.export(),
        "the learner's reply cache is the leader's"
    );
    let leader_hashes = group.members[&leader].core().machine().state_hashes();
    let learner_hashes = group.members[&4].core().machine().state_hashes();
    let (block, hash) = *learner_hashes.last().unwrap();
    assert!(leader_hashes.contains(&(block, hash)), "block {block}");
    match admin(
        &leader_addr,
        AdminRequest::StateHashes {
            from_block: block,
            max: 10,
        },
    ) {
        AdminReply::StateHashes(pairs) => assert_eq!(pairs.first(), Some(&(block, hash))),
        other => panic!("state hashes: {other:?}"),
    }
    drop(durability);
    for (_, member) in std::mem::take(&mut group.members) {
        member.shutdown();
    }
}

/// Failover time with the default timing keys (heartbeat 100 ms, election timeout
/// 600..1200 ms, RPC timeout 200 ms): from the leader's shutdown to the new leader's
/// promotion (its pipeline could send its first ticket then). Figures for the notes:
/// `cargo test -p yellowstone-gateway --test replication_members -- --ignored --nocapture`
/// (`FAILOVERS`, default 20).
#[test]
#[ignore]
fn failover_time_with_default_timing() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let rounds: usize = std::env::var("FAILOVERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut group = start_group_with(3, |id| {
        let mut config = ClusterConfig {
            enabled: true,
            member_id: id,
            raft_listen: free_addr().to_string(),
            client_endpoint: format!("127.0.0.1:{}", 9000 + id),
            ..ClusterConfig::default()
        };
        // FAILOVER_TIMING="heartbeat,election min,election max,rpc" (ms) to compare.
        if let Ok(timing) = std::env::var("FAILOVER_TIMING") {
            let t: Vec<u64> = timing.split(',').map(|v| v.parse().unwrap()).collect();
            config.heartbeat_ms = t[0];
            config.election_timeout_min_ms = t[1];
            config.election_timeout_max_ms = t[2];
            config.rpc_timeout_ms = t[3];
        }
        config.validate().unwrap();
        config
    });
    let mut stream = Stream::new();
    let mut times = Vec::new();
    for _ in 0..rounds {
        let (leader, promotion) = promote(&group);
        let mut durability = group.members[&leader].durability(&promotion);
        propose_all(&mut durability, stream.next(20));
        drop(durability);
        let old = group.members.remove(&leader).unwrap();
        let killed = Instant::now();
        old.shutdown();
        let shut = killed.elapsed();
        let (next, term) = wait_for("a new leader", Duration::from_secs(10), || {
            leader_of(&group)
        });
        let elected = killed.elapsed();
        let (_, promotion) = promote(&group);
        times.push(killed.elapsed());
        eprintln!(
            "round: shutdown {shut:?}, leader {next} term {term} after {elected:?}, promoted after {:?}",
            killed.elapsed()
        );
        assert_eq!(promotion.next_seq, stream.made + 1);
        let config = group.configs[(leader - 1) as usize].clone();
        let dir = group.dirs[(leader - 1) as usize].path().to_path_buf();
        group.members.insert(leader, start_member(&config, &dir));
        // The restarted member catches up before the next kill (else it cannot win
        // and its elections only delay the one that can: a different case).
        wait_for(
            "the restarted member to catch up",
            Duration::from_secs(10),
            || {
                let (current, _) = leader_of(&group)?;
                let target = group.members[&current].status().last_log_index;
                (group.members[&leader].status().last_log_index >= target).then_some(())
            },
        );
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    eprintln!(
        "failover (shutdown to promotion), {} rounds: min {:.0} ms, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        times.len(),
        ms(times[0]),
        ms(p(0.5)),
        ms(p(0.99)),
        ms(*times.last().unwrap())
    );
    for (_, member) in std::mem::take(&mut group.members) {
        member.shutdown();
    }
}

/// Append-to-committed latency of the leader's journal at a steady rate, with
/// `cluster.proposals_in_flight_max` 1 and 4 (figures for the notes; debug build):
/// `cargo test -p yellowstone-gateway --test replication_members commit_latency -- --ignored --nocapture`
/// (`COMMIT_RATE` records/s, default 2000; `COMMIT_RECORDS`, default 4000).
#[test]
#[ignore]
fn commit_latency_at_a_steady_rate() {
    let rate: u64 = std::env::var("COMMIT_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let count: usize = std::env::var("COMMIT_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    for in_flight in [1usize, 4] {
        let mut group = start_group_with(3, |id| ClusterConfig {
            enabled: true,
            member_id: id,
            raft_listen: free_addr().to_string(),
            client_endpoint: format!("127.0.0.1:{}", 9000 + id),
            proposals_in_flight_max: in_flight,
            ..ClusterConfig::default()
        });
        let (leader, promotion) = promote(&group);
        let mut durability = group.members[&leader].durability(&promotion);
        let mut stream = Stream::new();
        let records = stream.next(count);
        let updates = durability.durable_updates();
        let appended: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
        let watcher = {
            let appended = appended.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(count);
                while latencies.len() < count {
                    let Ok(seq) = updates.recv_timeout(Duration::from_secs(20)) else {
                        break;
                    };
                    let now = Instant::now();
                    let times = appended.lock().unwrap();
                    while latencies.len() < (seq as usize).min(times.len()) {
                        latencies.push(now - times[latencies.len()]);
                    }
                }
                latencies
            })
        };
        let started = Instant::now();
        for (i, record) in records.iter().enumerate() {
            let due = started + Duration::from_micros(i as u64 * 1_000_000 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            appended.lock().unwrap().push(Instant::now());
            durability.append(record).unwrap();
        }
        let mut latencies = watcher.join().unwrap();
        assert_eq!(latencies.len(), count, "every record committed");
        latencies.sort();
        let q =
            |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        let (entries, committed) = durability.proposer_stats();
        eprintln!(
            "proposals_in_flight_max {in_flight}: {count} records at {rate}/s in {entries} entries: \
             append->committed p50 {:?} p99 {:?} max {:?}",
            q(0.5),
            q(0.99),
            latencies.last().unwrap()
        );
        assert_eq!(committed, count as u64);
        drop(durability);
        for (_, member) in std::mem::take(&mut group.members) {
            member.shutdown();
        }
    }
}
