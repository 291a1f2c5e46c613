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
    /// `cluster init` of members 1..=`voters` through member 1 (asserts exit 0).
    fn init(&self, voters: usize) {
        let mut args = vec![
            "cluster".to_string(),
            "init".into(),
            "--raft".into(),
            self.raft[0].to_string(),
            "--key".into(),
            self.key.to_str().unwrap().into(),
        ];
        for id in 1..=voters {
            args.push("--member".into());
            args.push(format!("{id}={}", self.raft[id - 1]));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "cluster init: {out}{err}");
    }

    /// Starts members 1..=3 with a settlement epoch per block (every sealed block is a
    /// settlement the relayer would send); returns their config files and processes.
    fn start_epoch_per_block(&self) -> (Vec<PathBuf>, Vec<RouterProcess>) {
        let configs: Vec<PathBuf> = (1..=3)
            .map(|id| {
                let path = self.config(id, false);
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(
                    &path,
                    text.replace("[market]\n", "[market]\nsettlement_epoch_blocks = 1\n"),
                )
                .unwrap();
                path
            })
            .collect();
        let members = (1..=3u64)
            .map(|id| {
                RouterProcess::start(&[
                    "--config",
                    configs[id as usize - 1].to_str().unwrap(),
                    "--data-dir",
                    self.data_dir(id).to_str().unwrap(),
                ])
            })
            .collect();
        (configs, members)
    }

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
                 [cluster]\nenabled = true\nmember_id = {id}\nraft_listen = \"{}\"\nlearner = {learner}\n{}",
                operator_key().address(),
                self.genesis_ms,
                self.raft[id as usize - 1],
                cluster_extra()
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

/// Extra `[cluster]` lines for every member, from `YS_CLUSTER_EXTRA` (`\n` for a
/// newline): to measure failover under other timings (docs/replication.md), e.g.
/// `YS_CLUSTER_EXTRA='heartbeat_ms = 50\nelection_timeout_min_ms = 250\n...'`. Unset:
/// the defaults.
fn cluster_extra() -> String {
    std::env::var("YS_CLUSTER_EXTRA")
        .unwrap_or_default()
        .replace("\\n", "\n")
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

/// `yellowstone-router cluster VERB --raft RAFT --key <the group's key> EXTRA...`.
fn cluster_cli(group: &Group, verb: &str, raft: &str, extra: &[&str]) -> (i32, String, String) {
    let key = group.key.to_str().expect("a UTF-8 key path");
    let mut args = vec!["cluster", verb, "--raft", raft, "--key", key];
    args.extend_from_slice(extra);
    cli(&args)
}

/// `cluster add --learner` of member `learner_id` (its Raft address `group.raft[3]`)
/// through member `via`; exit 0 expected.
fn add_learner(group: &Group, via: usize, learner_id: u64) {
    let member = format!("{learner_id}={}", group.raft[3]);
    let raft = group.raft[via].to_string();
    let (code, out, err) = cluster_cli(group, "add", &raft, &["--member", &member, "--learner"]);
    assert_eq!(code, 0, "cluster add --learner: {out}{err}");
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
    session_of(addr, network_id, router, round).0
}

/// [`session`], also returning the user's connection (to report on the session).
fn session_of(
    addr: SocketAddr,
    network_id: u32,
    router: &Address,
    round: u8,
) -> (SessionTicket, yellowstone_wire::client::Client) {
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
    let rfc_nonce = send_rfc(&mut user, 500);
    answer_next_probe(&mut provider, Duration::from_secs(10));
    let ticket = expect(&mut user, Duration::from_secs(10), |m| match m {
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
    });
    (ticket, user)
}

/// `cluster status --json` of the member at `raft`.
fn status(group: &Group, raft: SocketAddr) -> serde_json::Value {
    let (code, out, err) = cluster_cli(group, "status", &raft.to_string(), &["--json"]);
    assert_eq!(code, 0, "cluster status: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON {e}: {out}"))
}

/// The (block, state hash) pairs of the member at `raft` (`cluster hashes --json`).
fn hashes(group: &Group, raft: SocketAddr) -> Vec<(u64, String)> {
    let (code, out, err) = cluster_cli(
        group,
        "hashes",
        &raft.to_string(),
        &["--max", "4096", "--json"],
    );
    assert_eq!(code, 0, "cluster hashes: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("hashes JSON {e}: {out}"))
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
    println!("new leader after {:?}", killed_at.elapsed());
    assert_ne!(second, first);
    let new_leader = members[second].as_ref().unwrap();
    session(new_leader.ready.listen, network_id, &router, 2);
    let failover = killed_at.elapsed();
    println!("failover (SIGKILL to a ticket from the new leader): {failover:?}");
    assert!(
        failover < Duration::from_secs(8),
        "failover took {failover:?}"
    );

    // The killed member restarts and catches up: the same state hash at the same
    // block as the leader's.
    members[first] = Some(group.start(first as u64 + 1));
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let ours = hashes(&group, group.raft[first]);
        let theirs = hashes(&group, group.raft[second]);
        let common: Vec<_> = ours.iter().filter(|pair| theirs.contains(pair)).collect();
        let disagree = ours
            .iter()
            .find(|(block, hash)| theirs.iter().any(|(b, h)| b == block && h != hash));
        assert!(disagree.is_none(), "state hash differs at {disagree:?}");
        // Caught up: its newest block is the leader's, with the same hash.
        if !common.is_empty() && ours.last() == theirs.last() {
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
    add_learner(&group, second, learner_id);
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
    // The leader's text status: every member with its matched index and lag.
    let (code, text, err) = cluster_cli(&group, "status", &group.raft[second].to_string(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("(leader)"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("127.0.0.1:")).count(),
        4 + 1,
        "{text}"
    );
    // Removing the learner (through a follower: the request follows the leader).
    let (code, out, err) = cluster_cli(
        &group,
        "remove",
        &group.raft[first].to_string(),
        &["--id", &learner_id.to_string()],
    );
    assert_eq!(code, 0, "cluster remove: {out}{err}");
    let after = self::status(&group, group.raft[second]);
    assert_eq!(
        after["members"].as_array().map(Vec::len),
        Some(3),
        "{after}"
    );

    // An unreachable member: a clear error and exit code 2.
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (code, _, err) = cluster_cli(&group, "status", &nobody.to_string(), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&nobody.to_string()), "{err}");

    // SIGTERM: the learner, the followers and the leader stop cleanly (exit 0).
    assert!(learner.terminate(Duration::from_secs(20)), "learner stop");
    let leader = members[second].take().unwrap();
    for member in members.into_iter().flatten() {
        assert!(member.terminate(Duration::from_secs(20)), "follower stop");
    }
    assert!(leader.terminate(Duration::from_secs(20)), "leader stop");
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

/// Every series a member exports is named in docs/metrics.md (as docs_current.rs
/// checks a single router's).
fn assert_series_documented(metrics: SocketAddr) {
    const METRICS: &str = include_str!("../../docs/metrics.md");
    let body = yellowstone_tests::metrics_text(metrics);
    let missing: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !METRICS.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "series a member exports that docs/metrics.md does not name: {missing:?}"
    );
}

/// R-HA-1: a leader cut off (SIGSTOP longer than the election timeout) loses office;
/// when it runs again, an RFC its client sent meanwhile is never acknowledged (its
/// record was never committed): the client gets `not_leader` naming the new leader,
/// and the connection closes. The deposed member counts the step-down.
#[test]
fn r_ha_1_a_deposed_leader_acknowledges_nothing_and_sends_its_clients_on() {
    let group = Group::new(3);
    // An epoch per block: every sealed block is a settlement the relayer would send.
    let (_configs, members) = group.start_epoch_per_block();
    let network_id = members[0].ready.network_id;
    group.init(3);
    let all: Vec<(usize, &RouterProcess)> = members.iter().enumerate().collect();
    let old = leader_of(&all, Duration::from_secs(10));
    let leader = &members[old];
    for member in &members {
        assert_series_documented(member.ready.metrics);
    }

    let mut operator = connect(leader.ready.listen, operator_key());
    let mut user = connect(leader.ready.listen, SigningKey::from_seed(b"deposed-user"));
    fund(&mut operator, &[(user.address(), 5 * WEI_PER_MOR)]);

    // Cut the leader off until another member leads.
    // SAFETY: kill(2) on a pid this test spawned.
    unsafe { libc::kill(leader.pid() as libc::pid_t, libc::SIGSTOP) };
    let others: Vec<(usize, &RouterProcess)> =
        all.iter().copied().filter(|(i, _)| *i != old).collect();
    let new = leader_of(&others, Duration::from_secs(5));
    let rfc_nonce = send_rfc(&mut user, 500);
    // SAFETY: as above.
    unsafe { libc::kill(leader.pid() as libc::pid_t, libc::SIGCONT) };

    let deadline = Instant::now() + Duration::from_secs(10);
    let told = loop {
        assert!(Instant::now() < deadline, "no not_leader within 10 s");
        match user.recv() {
            Ok(Message::ErrorReply(e)) if e.code == codes::NOT_LEADER => break e,
            Ok(Message::RfcAccepted(a)) => {
                panic!("R-HA-1: a deposed leader acknowledged an uncommitted RFC: {a:?}")
            }
            Ok(Message::ErrorReply(e)) if e.ref_nonce == rfc_nonce => {
                panic!("the RFC was answered by the deposed leader: {e:?}")
            }
            Ok(_) => {}
            Err(yellowstone_wire::client::ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("closed without not_leader: {e}"),
        }
    };
    // The new leader, or none yet if the deposed member has not heard from it (a
    // client then tries the next member).
    let named = format!(
        "not the leader: leader is member {} at {}",
        new + 1,
        members[new].ready.listen
    );
    assert!(
        told.reason == named || told.reason == yellowstone_wire::leader::NO_LEADER_REASON,
        "{}",
        told.reason
    );
    // Then the connection closes.
    let closed = loop {
        match user.recv() {
            Ok(Message::RfcAccepted(a)) => panic!("acknowledged after not_leader: {a:?}"),
            Ok(_) => {}
            Err(yellowstone_wire::client::ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(_) => break true,
        }
    };
    assert!(closed, "the deposed leader kept the connection open");
    let metrics = yellowstone_tests::metrics_text(leader.ready.metrics);
    let value = |name: &str| -> i64 {
        metric_text_value(&metrics, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(value("yellowstone_cluster_is_leader"), 0);
    assert!(value("yellowstone_cluster_step_downs_total") >= 1);
    assert!(value("yellowstone_cluster_not_leader_total") >= 1);
    // The new leader serves the same user (its funds were committed).
    let router: Address = members[new].ready.router_address.parse().unwrap();
    session(members[new].ready.listen, network_id, &router, 7);
}

/// The next whole frame of `client` other than pushes it does not care about:
/// (type, body bytes).
fn next_frame_of(client: &mut yellowstone_wire::client::Client, wanted: &[u16]) -> (u16, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {wanted:?}"
        );
        match client.recv_frame() {
            Ok(frame) if wanted.contains(&frame.header.msg_type) => {
                return (frame.header.msg_type, frame.body.to_vec())
            }
            Ok(frame) if frame.header.msg_type == msg_type::ERROR_REPLY => {
                panic!(
                    "refused: {:?}",
                    Message::decode(msg_type::ERROR_REPLY, &frame.body)
                )
            }
            Ok(_) => {}
            Err(yellowstone_wire::client::ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

/// R-HA-3 across a failover: an RFC answered by the old leader, sent again (the same
/// signed bytes) to the new leader after a SIGKILL, gets the original `RfcAccepted`
/// and the original ticket, byte for byte — from the reply cache the new leader's
/// state machine built from the committed journal — and no second probe.
#[test]
fn r_ha_3_a_resend_after_failover_gets_the_original_answer_from_the_new_leader() {
    let group = Group::new(3);
    let mut members: Vec<Option<RouterProcess>> = (1..=3).map(|id| Some(group.start(id))).collect();
    group.init(3);
    let all: Vec<(usize, &RouterProcess)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (i, m.as_ref().unwrap()))
        .collect();
    let old = leader_of(&all, Duration::from_secs(10));
    let leader = members[old].as_ref().unwrap();
    let network_id = leader.ready.network_id;
    let addr = leader.ready.listen;

    let mut operator = connect(addr, operator_key());
    let user_key = SigningKey::from_seed(b"failover-resend-user");
    let mut provider = connect(addr, SigningKey::from_seed(b"failover-resend-provider"));
    fund(
        &mut operator,
        &[
            (user_key.address(), 50 * WEI_PER_MOR),
            (provider.address(), WEI_PER_MOR),
        ],
    );
    register(&mut provider, network_id, 1, 1_000_000, 4);
    let mut user = connect(addr, user_key.clone());
    let nonce = user.next_nonce();
    let frame = yellowstone_wire::client::presign(
        user.key(),
        network_id,
        Rfc {
            from: user.address(),
            nonce,
            model_id: 1,
            tokens_max: 100,
            expires_at_ms: now_ms() + 60_000,
            signature: Signature::default(),
        }
        .into(),
    );
    user.send_raw(&frame).unwrap();
    let accepted = next_frame_of(&mut user, &[msg_type::RFC_ACCEPTED]);
    answer_next_probe(&mut provider, Duration::from_secs(10));
    let ticket = next_frame_of(&mut user, &[msg_type::SESSION_TICKET]);
    drop(user);

    members[old].take().unwrap().kill_hard();
    let alive: Vec<(usize, &RouterProcess)> = members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.as_ref().map(|m| (i, m)))
        .collect();
    let new = leader_of(&alive, Duration::from_secs(5));
    let new_leader = members[new].as_ref().unwrap();
    // The provider follows the leader and announces itself again.
    let mut provider = connect(
        new_leader.ready.listen,
        SigningKey::from_seed(b"failover-resend-provider"),
    );
    let mut again = connect(new_leader.ready.listen, user_key);
    again.send_raw(&frame).unwrap();
    assert_eq!(
        next_frame_of(
            &mut again,
            &[msg_type::RFC_ACCEPTED, msg_type::SESSION_TICKET]
        ),
        accepted,
        "the original RfcAccepted from the new leader"
    );
    assert_eq!(
        next_frame_of(
            &mut again,
            &[msg_type::RFC_ACCEPTED, msg_type::SESSION_TICKET]
        ),
        ticket,
        "the original ticket, byte for byte (RFC 6979, the group's router key)"
    );
    // No second effect: the provider gets no probe for it.
    provider
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_millis(1_000);
    while Instant::now() < deadline {
        match provider.recv() {
            Ok(Message::Probe(p)) => panic!("a second effect: probe {p:?}"),
            Ok(_) | Err(yellowstone_wire::client::ClientError::Io(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let hits = gauge(
        new_leader.ready.metrics,
        "yellowstone_reply_cache_hits_total",
    );
    assert_eq!(hits, Some(1), "answered from the cache");
}

/// R-HA-4: a learner whose replay does not reach the leader's state (here: its market
/// starts a second later, so every block's state differs) raises the alarm: its
/// mismatch counter moves (and an ERROR line names each block, `STATE HASH MISMATCH
/// at block N`); the blocks compared count as checked, matching or not.
#[test]
fn r_ha_4_a_learner_whose_replay_differs_raises_the_alarm() {
    let group = Group::new(3);
    let members: Vec<RouterProcess> = (1..=3).map(|id| group.start(id)).collect();
    group.init(3);
    let all: Vec<(usize, &RouterProcess)> = members.iter().enumerate().collect();
    let leader = leader_of(&all, Duration::from_secs(10));

    // The learner's configuration names another genesis: the same journal replayed
    // from another genesis state.
    let learner_id = 4u64;
    let config = group.config(learner_id, true);
    let text = std::fs::read_to_string(&config).unwrap();
    let shifted = text.replace(
        &format!("genesis_ms = {}", group.genesis_ms),
        &format!("genesis_ms = {}", group.genesis_ms + 1_000),
    );
    assert_ne!(text, shifted);
    std::fs::write(&config, shifted).unwrap();
    let learner = start_learner(&config, &group.data_dir(learner_id));
    add_learner(&group, leader, learner_id);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mismatched = gauge(
            learner.ready.metrics,
            "yellowstone_learner_state_hash_mismatch_total",
        );
        if mismatched >= Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the learner raised no alarm (mismatches {mismatched:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let checked = gauge(
        learner.ready.metrics,
        "yellowstone_learner_blocks_checked_total",
    );
    assert!(checked >= Some(1), "compared blocks are counted checked");
}

/// R-HA-1, R-HA-3: a leader cut off from its quorum (both followers stopped) stops
/// serving within about `election_timeout_max_ms` (openraft 0.9 would keep it leader):
/// its client's RFC is never acknowledged, the client gets `not_leader` and is closed,
/// the step-down is counted; once the followers run again, the group serves.
#[test]
fn r_ha_1_a_leader_without_its_quorum_stops_serving() {
    let group = Group::new(3);
    let members: Vec<RouterProcess> = (1..=3).map(|id| group.start(id)).collect();
    group.init(3);
    let all: Vec<(usize, &RouterProcess)> = members.iter().enumerate().collect();
    let leader_index = leader_of(&all, Duration::from_secs(10));
    let leader = &members[leader_index];
    let mut operator = connect(leader.ready.listen, operator_key());
    let mut user = connect(
        leader.ready.listen,
        SigningKey::from_seed(b"no-quorum-user"),
    );
    fund(&mut operator, &[(user.address(), 5 * WEI_PER_MOR)]);

    let followers: Vec<u32> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader_index)
        .map(|(_, m)| m.pid())
        .collect();
    for pid in &followers {
        // SAFETY: kill(2) on pids this test spawned.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGSTOP) };
    }
    let stopped_at = Instant::now();
    send_rfc(&mut user, 500);
    let told = loop {
        assert!(
            stopped_at.elapsed() < Duration::from_secs(10),
            "the cut-off leader kept its client waiting"
        );
        match user.recv() {
            Ok(Message::ErrorReply(e)) if e.code == codes::NOT_LEADER => break e,
            Ok(Message::RfcAccepted(a)) => {
                panic!("R-HA-1: acknowledged without a quorum: {a:?}")
            }
            Ok(_) => {}
            Err(yellowstone_wire::client::ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("closed without not_leader: {e}"),
        }
    };
    let waited = stopped_at.elapsed();
    println!("a leader without quorum stopped serving after {waited:?}");
    assert_eq!(
        told.reason,
        yellowstone_wire::leader::NO_LEADER_REASON,
        "{told:?}"
    );
    assert!(told.retry_after_ms > 0, "{told:?}");
    let step_downs = gauge(leader.ready.metrics, "yellowstone_cluster_step_downs_total");
    assert!(step_downs >= Some(1), "{step_downs:?}");
    assert_eq!(
        gauge(leader.ready.metrics, "yellowstone_cluster_is_leader"),
        Some(0)
    );
    // A new connection meanwhile: told at once, no challenge.
    match first_frame(leader.ready.listen) {
        Message::ErrorReply(e) => assert_eq!(e.code, codes::NOT_LEADER),
        other => panic!("expected not_leader, got {other:?}"),
    }

    for pid in &followers {
        // SAFETY: as above.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGCONT) };
    }
    let now_leader = leader_of(&all, Duration::from_secs(15));
    let router: Address = members[now_leader].ready.router_address.parse().unwrap();
    session(
        members[now_leader].ready.listen,
        members[now_leader].ready.network_id,
        &router,
        9,
    );
}

/// docs/replication.md "Adding and removing a member": a fourth member started and
/// added as a voter (`cluster add` without --learner) catches up and votes; a follower
/// removed (`cluster remove`) leaves the membership.
#[test]
fn a_voter_is_added_and_a_member_removed() {
    let group = Group::new(3);
    let members: Vec<RouterProcess> = (1..=3).map(|id| group.start(id)).collect();
    group.init(3);
    let all: Vec<(usize, &RouterProcess)> = members.iter().enumerate().collect();
    let leader = leader_of(&all, Duration::from_secs(10));
    let fourth = group.start(4);
    let (code, out, err) = cluster_cli(
        &group,
        "add",
        &group.raft[leader].to_string(),
        &["--member", &format!("4={}", group.raft[3])],
    );
    assert_eq!(code, 0, "cluster add: {out}{err}");
    assert!(out.contains("member 4 added as a voter"), "{out}");
    let status = status(&group, group.raft[leader]);
    let voters = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 4, "{status}");
    // The new member follows the leader and applies what the group committed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let theirs = hashes(&group, group.raft[leader]);
        let ours = hashes(&group, group.raft[3]);
        if !ours.is_empty() && ours.last() == theirs.last() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member 4 never caught up: {ours:?} vs {theirs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A new connection to it is sent to the leader.
    match first_frame(fourth.ready.listen) {
        Message::ErrorReply(e) => {
            assert_eq!(e.code, codes::NOT_LEADER);
            assert_eq!(e.detail, leader as u128 + 1, "{}", e.reason);
        }
        other => panic!("expected not_leader, got {other:?}"),
    }
    // Remove a follower.
    let gone = (leader + 1) % 3;
    let (code, out, err) = cluster_cli(
        &group,
        "remove",
        &group.raft[leader].to_string(),
        &["--id", &(gone + 1).to_string()],
    );
    assert_eq!(code, 0, "cluster remove: {out}{err}");
    let status = self::status(&group, group.raft[leader]);
    let ids: Vec<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{status}");
    assert!(!ids.contains(&(gone as u64 + 1)), "{status}");
    assert!(ids.contains(&4), "{status}");
}

/// `yellowstone-router ledger --json --data-dir DIR` (issue 25: on a member's data
/// directory), without the per-directory `last_seq` (commit marks of members differ
/// by the records of a heartbeat or two: ticks that change no ledger field).
fn member_ledger(dir: &Path) -> serde_json::Value {
    let (code, out, err) = cli(&["ledger", "--json", "--data-dir", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "ledger on {}: {out}{err}", dir.display());
    let mut ledger: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ledger JSON {e}: {out}"));
    ledger.as_object_mut().unwrap().remove("last_seq");
    ledger
}

/// Waits until now is at least 1.5 s past a block boundary and 8 s before the next:
/// the ledger then changes only through commands (none are sent), so every member's
/// committed state, a heartbeat apart, shows the same ledger.
fn wait_mid_block(genesis_ms: u64) {
    loop {
        let into = (now_ms() - genesis_ms) % BLOCK_MS;
        if (1_500..4_000).contains(&into) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 25 (R-HA-1, R-CHAIN-1): the operator's read-only tools, which the relayer and
/// reconciler share (`tools::recover_read_only`), read any member's data directory
/// (`raft/`, no journal), while it runs and once it stopped, and every member shows the
/// same ledger: the funds, the ticket's session, the sealed batches.
#[test]
fn r_ha_1_the_ledger_reads_alike_on_every_members_data_directory() {
    let group = Group::new(3);
    // An epoch per block: every sealed block is a settlement the relayer would send.
    let (configs, members) = group.start_epoch_per_block();
    let network_id = members[0].ready.network_id;
    let router: Address = members[0].ready.router_address.parse().unwrap();
    group.init(3);
    let alive: Vec<(usize, &RouterProcess)> = members.iter().enumerate().collect();
    let leader = leader_of(&alive, Duration::from_secs(10));
    let (ticket, mut user) = session_of(members[leader].ready.listen, network_id, &router, 1);
    let nonce = user.next_nonce();
    user.send_signed(
        Report {
            from: user.address(),
            nonce,
            session_id: ticket.session_id,
            elapsed_ms: 500,
            tokens: 100,
            ttft_ms: 0,
            prompt_tokens: 0,
            outcome: Outcome::Pass,
            signature: Signature::default(),
        }
        .into(),
    )
    .unwrap();
    expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::ReportAck(a) if a.nonce == nonce => {
            assert!(a.earned, "a passing report is credited");
            Some(())
        }
        Message::ErrorReply(e) => panic!("report refused: {e:?}"),
        _ => None,
    });
    // A block sealed after the session: a batch in every ledger.
    let session_done = now_ms();
    loop {
        wait_mid_block(group.genesis_ms);
        let now = now_ms();
        if now - (now - group.genesis_ms) % BLOCK_MS > session_done {
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }

    // While the members run (the tools take no lock, write nothing).
    let running: Vec<serde_json::Value> = (1..=3)
        .map(|id| member_ledger(&group.data_dir(id)))
        .collect();
    let first = &running[0];
    assert!(first["batches"].as_u64().unwrap() >= 1, "{first}");
    assert_eq!(first["sessions_credited"].as_u64(), Some(1), "{first}");
    assert_eq!(
        first["providers"].as_array().map(Vec::len),
        Some(1),
        "{first}"
    );
    assert_ne!(first["owed_wei"], "0", "the provider's credit: {first}");
    assert_ne!(first["contract_balance_wei"], "0", "the funds: {first}");
    assert_eq!(first["solvent"], true, "{first}");
    for (id, ledger) in running.iter().enumerate() {
        assert_eq!(ledger, first, "member {} differs from member 1", id + 1);
    }

    // Stopped: the same, on every member, and the same as while running.
    // The leader first: nothing commits after it (a new leader would need an
    // election, and its first block boundary is over 8 s away).
    let mut members: Vec<Option<RouterProcess>> = members.into_iter().map(Some).collect();
    let order = [leader, (leader + 1) % 3, (leader + 2) % 3];
    for index in order {
        let member = members[index].take().unwrap();
        assert!(member.terminate(Duration::from_secs(10)), "member stops");
    }
    let mut settlements = Vec::new();
    for id in 1..=3u64 {
        let dir = group.data_dir(id);
        let stopped = member_ledger(&dir);
        assert_eq!(&stopped, first, "member {id} stopped");
        let (code, out, err) = cli(&["verify", "--data-dir", dir.to_str().unwrap()]);
        assert_eq!(code, 0, "verify member {id}: {out}{err}");
        // The relayer's input (R-CHAIN-1): the last sealed epoch, signed with the
        // group's key, byte-identical whichever member's directory it is read from.
        let (code, out, err) = cli(&[
            "settlement",
            "--data-dir",
            dir.to_str().unwrap(),
            "--config",
            configs[id as usize - 1].to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 0, "settlement of member {id}: {out}{err}");
        settlements.push(out);
    }
    let last: serde_json::Value = serde_json::from_str(&settlements[0]).unwrap();
    println!("ledger {first}\nsettlement {last}");
    assert!(
        settlements.iter().all(|s| *s == settlements[0]),
        "{settlements:?}"
    );
}

/// A one-member group started and initialised (the `cluster` commands' tests).
fn one_member_group() -> (Group, RouterProcess) {
    let group = Group::new(1);
    let member = group.start(1);
    let raft = group.raft[0].to_string();
    let (code, out, err) = cluster_cli(&group, "init", &raft, &["--member", &format!("1={raft}")]);
    assert_eq!(code, 0, "cluster init: {out}{err}");
    (group, member)
}

/// Issue 25 case 1: `keygen --out` and `--key` take a key file of any name (a
/// directory: its cluster.key); a missing file says "no such file", and every
/// message names the flag given.
#[test]
fn cluster_key_files_of_any_name_are_accepted_and_errors_name_the_flag() {
    let (group, _member) = one_member_group();
    let raft = group.raft[0].to_string();
    let copy = group.work.path().join("copy.key");
    std::fs::copy(&group.key, &copy).unwrap();
    let (code, out, err) = cli(&[
        "cluster",
        "status",
        "--raft",
        &raft,
        "--key",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "status --key copy.key: {out}{err}");
    assert!(out.contains("member 1"), "{out}");
    // A directory: its cluster.key.
    let (code, out, err) = cli(&[
        "cluster",
        "status",
        "--raft",
        &raft,
        "--key",
        group.work.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "status --key DIR: {out}{err}");

    let other = group.work.path().join("other.key");
    let other = other.to_str().unwrap();
    let (code, out, err) = cli(&["cluster", "keygen", "--out", other]);
    assert_eq!(code, 0, "keygen --out other.key: {out}{err}");
    assert_eq!(std::fs::read(other).unwrap().len(), 32);
    let (code, _, err) = cli(&["cluster", "keygen", "--out", other]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("--out {other}: already exists")),
        "{err}"
    );

    let missing = group.work.path().join("missing.key");
    let missing = missing.to_str().unwrap();
    let (code, _, err) = cli(&["cluster", "status", "--raft", &raft, "--key", missing]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("--key {missing}: no such file")),
        "{err}"
    );
}

/// Issue 25 case 2: a wrong cluster key is a refusal (exit 1) saying the key
/// likely differs, not "unreachable" (exit 2, kept for a member not listening).
#[test]
fn a_wrong_cluster_key_is_refused_with_exit_1_naming_the_key() {
    let (group, member) = one_member_group();
    let raft = group.raft[0].to_string();
    let wrong = group.work.path().join("wrong.key");
    let wrong = wrong.to_str().unwrap();
    let (code, out, err) = cli(&["cluster", "keygen", "--out", wrong]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(&["cluster", "status", "--raft", &raft, "--key", wrong]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cluster.key likely differs"), "{err}");
    assert!(!err.contains("unreachable"), "{err}");
    // Nobody listening: still unreachable, exit 2.
    let nobody = format!("127.0.0.1:{}", free_port());
    let key = group.key.to_str().unwrap();
    let (code, _, err) = cli(&["cluster", "status", "--raft", &nobody, "--key", key]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unreachable"), "{err}");
    drop(member);
}

/// Outsider review 3: what openraft would take as a no-op, or panic on, is refused
/// naming why, and the member keeps serving: adding a member that is already one (as a
/// voter again, or as a learner), removing the leader itself, a second
/// `cluster init`.
#[test]
fn cluster_changes_that_would_do_nothing_or_remove_the_leader_are_refused() {
    let (group, member) = one_member_group();
    let raft = group.raft[0].to_string();
    let (code, out, err) = cluster_cli(&group, "add", &raft, &["--member", &format!("1={raft}")]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("member 1 is already a voter"), "{err}");
    let (code, _, err) = cluster_cli(
        &group,
        "add",
        &raft,
        &["--member", &format!("1={raft}"), "--learner"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("member 1 is a voter: a voter is not made a learner"),
        "{err}"
    );
    let (code, out, err) = cluster_cli(&group, "remove", &raft, &["--id", "1"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("member 1 is the leader: stop its process"),
        "{err}"
    );
    let (code, out, err) = cluster_cli(&group, "init", &raft, &["--member", &format!("1={raft}")]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("already belongs to a group (members: 1"),
        "{err}"
    );
    // Still the group's leader, serving.
    let status = status(&group, group.raft[0]);
    assert_eq!(status["state"], "leader", "{status}");
    drop(member);
}

/// Issue 25 case 3: removing an id that is no member is refused naming the
/// members; an id out of 1..=i64::MAX (what `cluster.member_id` can hold) is
/// refused by `add` and `remove` as by the configuration.
#[test]
fn cluster_remove_of_a_stranger_and_ids_out_of_bounds_are_refused() {
    let (group, _member) = one_member_group();
    let raft = group.raft[0].to_string();
    let (code, out, err) = cluster_cli(&group, "remove", &raft, &["--id", "77"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("removed"), "{out}");
    assert!(
        err.contains("member 77 is not in the group (members: 1)"),
        "{err}"
    );
    let max = u64::MAX.to_string();
    let (code, _, err) = cluster_cli(
        &group,
        "add",
        &raft,
        &["--member", &format!("{max}={raft}")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("ID {max} out of 1..=9223372036854775807")),
        "{err}"
    );
    let (code, _, err) = cluster_cli(&group, "remove", &raft, &["--id", &max]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("out of 1..=9223372036854775807"), "{err}");
}
