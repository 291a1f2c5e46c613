//! A replicated router group through the real binary (issue 25, SPEC §12 R-HA-1..4,
//! docs/replication.md): three members on loopback, `cluster init`, a session (RFC →
//! ticket) through the leader, `not_leader` from a follower naming the leader, SIGKILL
//! of the leader and another member leading and serving a ticket within a few seconds,
//! the killed member restarting and catching up (the same state hash at the same
//! block), a learner whose check passes, and `cluster status`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::{metric_text_value, router_binary, try_metrics_text, RouterProcess};
use yellowstone_wire::messages::Message;
use yellowstone_wire::*;

const BLOCK_MS: u64 = 12_000;
/// The router key every member signs with (R-HA-2).
const ROUTER_KEY_HEX: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";

/// A port free on loopback now (the member binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Group {
    work: tempfile::TempDir,
    genesis_ms: u64,
    raft: Vec<SocketAddr>,
    key: PathBuf,
}

impl Group {
    fn new(members: usize) -> Group {
        let work = tempfile::tempdir().unwrap();
        // The first block boundary ~3 s after the start, then every 12 s.
        let genesis_ms = now_ms() + 3_000 - BLOCK_MS;
        let raft = (0..members + 1)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let key = work.path().join("cluster.key");
        let (code, out, err) = cli(&["cluster", "keygen", "--out", key.to_str().unwrap()]);
        assert_eq!(code, 0, "cluster keygen: {out}{err}");
        Group {
            work,
            genesis_ms,
            raft,
            key,
        }
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.work.path().join(format!("member-{id}"))
    }

    /// Writes member `id`'s config (and its data directory with the group's key).
    fn config(&self, id: u64, learner: bool) -> PathBuf {
        let dir = self.data_dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("cluster.key");
        if !key.exists() {
            std::fs::copy(&self.key, &key).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let path = self.work.path().join(format!("member-{id}.toml"));
        std::fs::write(
            &path,
            format!(
                "[network]\nbackend = \"mio\"\n\
                 [identity]\nrouter_key_hex = \"{ROUTER_KEY_HEX}\"\noperator = \"{}\"\n\
                 [market]\ngenesis_ms = {}\n\
                 [cluster]\nenabled = true\nmember_id = {id}\nraft_listen = \"{}\"\nlearner = {learner}\n",
                operator_key().address(),
                self.genesis_ms,
                self.raft[id as usize - 1]
            ),
        )
        .unwrap();
        path
    }

    fn start(&self, id: u64) -> RouterProcess {
        let config = self.config(id, false);
        let dir = self.data_dir(id);
        RouterProcess::start(&[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
        ])
    }
}

/// Runs the router binary's CLI: (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(router_binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run yellowstone-router");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn gauge(metrics: SocketAddr, name: &str) -> Option<i64> {
    let text = try_metrics_text(metrics).ok()?;
    metric_text_value(&text, name)?.parse().ok()
}

/// Waits until one of `members` (index, process) leads; returns its index.
fn leader_of(members: &[(usize, &RouterProcess)], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        for (index, member) in members {
            if gauge(member.ready.metrics, "yellowstone_cluster_is_leader") == Some(1) {
                return *index;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first frame a new connection gets (a LoginChallenge from the leader, an
/// ErrorReply not_leader from any other member).
fn first_frame(addr: SocketAddr) -> Message {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut decoder = yellowstone_wire::frame::FrameDecoder::new(1 << 20);
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.next_frame().expect("a well-formed frame") {
            return Message::decode(frame.header.msg_type, &frame.body).expect("decodes");
        }
        use std::io::Read as _;
        let n = stream.read(&mut buffer).expect("read the first frame");
        assert!(n > 0, "closed before its first frame");
        decoder.extend(&buffer[..n]);
    }
}

/// Funds, registers a provider and runs an RFC to its ticket through `addr`;
/// returns the ticket.
fn session(addr: SocketAddr, network_id: u32, router: &Address, round: u8) -> SessionTicket {
    let mut operator = connect(addr, operator_key());
    let user_key = SigningKey::from_seed(&[b'u', round]);
    let provider_key = SigningKey::from_seed(&[b'p', round]);
    let mut user = connect(addr, user_key);
    let mut provider = connect(addr, provider_key);
    fund(
        &mut operator,
        &[
            (user.address(), 5 * WEI_PER_MOR),
            (provider.address(), WEI_PER_MOR),
        ],
    );
    register(&mut provider, network_id, 1, 1_000_000, 4);
    let rfc_nonce = user.next_nonce();
    user.send_signed(
        Rfc {
            from: user.address(),
            nonce: rfc_nonce,
            model_id: 1,
            tokens_max: 500,
            expires_at_ms: now_ms() + 30_000,
            signature: Signature::default(),
        }
        .into(),
    )
    .unwrap();
    answer_next_probe(&mut provider, Duration::from_secs(10));
    expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::SessionTicket(t) => {
            let mut body = Vec::new();
            m.encode(&mut body);
            m.verify_router(network_id, &body, router)
                .expect("ticket signed by the group's router key");
            assert_eq!(t.rfc_nonce, rfc_nonce);
            Some(t.clone())
        }
        Message::ErrorReply(e) => panic!("refused: {e:?}"),
        _ => None,
    })
}

/// `cluster status --json` of the member at `raft`.
fn status(group: &Group, raft: SocketAddr) -> serde_json::Value {
    let (code, out, err) = cli(&[
        "cluster",
        "status",
        "--raft",
        &raft.to_string(),
        "--key",
        group.key.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "cluster status: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON {e}: {out}"))
}

/// The (block, state hash) pairs a member's status lists.
fn hashes(status: &serde_json::Value) -> Vec<(u64, String)> {
    status["state_hashes"]
        .as_array()
        .unwrap_or_else(|| panic!("no state_hashes in {status}"))
        .iter()
        .map(|pair| {
            (
                pair[0].as_u64().unwrap(),
                pair[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn r_ha_three_members_fail_over_and_a_learner_checks() {
    let group = Group::new(3);
    let mut members: Vec<Option<RouterProcess>> = (1..=3).map(|id| Some(group.start(id))).collect();
    let network_id = members[0].as_ref().unwrap().ready.network_id;
    let router: Address = members[0]
        .as_ref()
        .unwrap()
        .ready
        .router_address
        .parse()
        .unwrap();

    // Before init nobody leads: a new connection is told so.
    match first_frame(members[0].as_ref().unwrap().ready.listen) {
        Message::ErrorReply(e) => {
            assert_eq!(e.code, codes::NOT_LEADER);
            assert_eq!(
                e.reason,
                "not the leader: no leader known (election in progress)"
            );
        }
        other => panic!("expected not_leader, got {other:?}"),
    }

    // init: the three members, through member 1's RPC listener.
    let member_args: Vec<String> = (1..=3)
        .map(|id| format!("{id}={}", group.raft[id - 1]))
        .collect();
    let mut args = vec![
        "cluster".to_string(),
        "init".into(),
        "--raft".into(),
        group.raft[0].to_string(),
        "--key".into(),
        group.key.to_str().unwrap().into(),
    ];
    for member in &member_args {
        args.push("--member".into());
        args.push(member.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = cli(&args);
    assert_eq!(code, 0, "cluster init: {out}{err}");

    let alive: Vec<(usize, &RouterProcess)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (i, m.as_ref().unwrap()))
        .collect();
    let first = leader_of(&alive, Duration::from_secs(10));
    let leader = members[first].as_ref().unwrap();
    session(leader.ready.listen, network_id, &router, 1);

    // A follower names the leader (R-HA-3).
    let follower = (first + 1) % 3;
    match first_frame(members[follower].as_ref().unwrap().ready.listen) {
        Message::ErrorReply(e) => {
            assert_eq!(e.code, codes::NOT_LEADER);
            assert_eq!(e.detail, first as u128 + 1, "{}", e.reason);
            assert_eq!(
                e.reason,
                format!(
                    "not the leader: leader is member {} at {}",
                    first + 1,
                    leader.ready.listen
                )
            );
        }
        other => panic!("expected not_leader, got {other:?}"),
    }

    // SIGKILL the leader: another member leads within a few seconds and serves.
    let killed_at = Instant::now();
    members[first].take().unwrap().kill_hard();
    let alive: Vec<(usize, &RouterProcess)> = members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.as_ref().map(|m| (i, m)))
        .collect();
    let second = leader_of(&alive, Duration::from_secs(5));
    assert_ne!(second, first);
    let new_leader = members[second].as_ref().unwrap();
    session(new_leader.ready.listen, network_id, &router, 2);
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(8),
        "failover took {failover:?}"
    );

    // The killed member restarts and catches up: the same state hash at the same
    // block as the leader's.
    members[first] = Some(group.start(first as u64 + 1));
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let ours = hashes(&status(&group, group.raft[first]));
        let theirs = hashes(&status(&group, group.raft[second]));
        let common: Vec<_> = ours.iter().filter(|pair| theirs.contains(pair)).collect();
        let disagree = ours
            .iter()
            .find(|(block, hash)| theirs.iter().any(|(b, h)| b == block && h != hash));
        assert!(disagree.is_none(), "state hash differs at {disagree:?}");
        if ours.iter().map(|p| p.0).max() >= Some(1) && !common.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted member never caught up: {ours:?} vs {theirs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A learner joins, applies the committed journal and checks every block.
    let learner_id = 4u64;
    let config = group.config(learner_id, true);
    let dir = group.data_dir(learner_id);
    let learner = start_learner(&config, &dir);
    let (code, out, err) = cli(&[
        "cluster",
        "add",
        "--raft",
        &group.raft[second].to_string(),
        "--key",
        group.key.to_str().unwrap(),
        "--member",
        &format!("{learner_id}={}", group.raft[3]),
        "--learner",
    ]);
    assert_eq!(code, 0, "cluster add --learner: {out}{err}");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let checked = gauge(
            learner.ready.metrics,
            "yellowstone_learner_blocks_checked_total",
        );
        let mismatched = gauge(
            learner.ready.metrics,
            "yellowstone_learner_state_hash_mismatch_total",
        );
        assert_eq!(
            mismatched,
            Some(0),
            "the learner found a state hash mismatch"
        );
        if checked >= Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the learner checked no block");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Status from any member names the leader and the four members.
    let status = status(&group, group.raft[first]);
    assert_eq!(
        status["leader_id"].as_u64(),
        Some(second as u64 + 1),
        "{status}"
    );
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );

    // An unreachable member: a clear error and exit code 2.
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (code, _, err) = cli(&[
        "cluster",
        "status",
        "--raft",
        &nobody.to_string(),
        "--key",
        group.key.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&nobody.to_string()), "{err}");
}

fn start_learner(config: &Path, dir: &Path) -> RouterProcess {
    RouterProcess::start_subcommand(
        "learn",
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
        ],
    )
}
