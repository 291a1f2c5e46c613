//! Crash test (durability issue): the real router binary under load from simulated
//! users and providers, SIGKILLed at random moments, restarted on the same data
//! directory, round after round. After each kill the data directory verifies
//! (checksums, sequence, replay, invariants); at the end, with the last block
//! sealed, every report the clients saw acknowledged is credited exactly once,
//! batches have no gap, and the ledger is solvent.

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::{router_binary, RouterProcess};
use yellowstone_wire::client::{Client, ClientError};
use yellowstone_wire::*;

const PRICE_WEI_PER_TOKEN: u128 = 1_000_000;
const TOKENS: u64 = 100;
const USERS: usize = 4;
const PROVIDERS: usize = 2;
const ROUNDS_MAX: usize = 12;
const ROUNDS_TIME: Duration = Duration::from_secs(30);

/// What the clients saw, per provider.
#[derive(Default, Debug)]
struct Seen {
    /// Reports acknowledged as credited: (count, wei).
    acknowledged: BTreeMap<Address, (u64, u128)>,
    /// Reports sent whose acknowledgement never came (the router died): they may
    /// or may not have become durable.
    unknown: BTreeMap<Address, (u64, u128)>,
}

fn timed_out(error: &ClientError) -> bool {
    matches!(error, ClientError::Io(e) if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ))
}

fn connect_quietly(addr: SocketAddr, key: SigningKey) -> Option<Client> {
    let client = Client::connect(addr, key).ok()?;
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .ok()?;
    Some(client)
}

/// Waits for a message `pick` accepts; None if the connection dies or time runs out.
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

fn run_user(addr: SocketAddr, key: SigningKey, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let Some(mut user) = connect_quietly(addr, key) else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let rfc_nonce = user.next_nonce();
        let rfc = Rfc {
            from: user.address(),
            nonce: rfc_nonce,
            model_id: 1,
            tokens_max: TOKENS,
            expires_at_ms: now_ms() + 5_000,
            signature: Signature::default(),
        };
        if user.send_signed(rfc.into()).is_err() {
            return;
        }
        let ticket = wait_for(&mut user, Duration::from_secs(3), |m| match m {
            Message::SessionTicket(t) if t.rfc_nonce == rfc_nonce => Some(Some(t.clone())),
            Message::ErrorReply(e) if e.ref_nonce == rfc_nonce => Some(None),
            _ => None,
        });
        let Some(ticket) = ticket.flatten() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let nonce = user.next_nonce();
        let report = Report {
            from: user.address(),
            nonce,
            session_id: ticket.session_id,
            elapsed_ms: 500,
            tokens: TOKENS,
            ttft_ms: 0,
            prompt_tokens: 0,
            outcome: Outcome::Pass,
            signature: Signature::default(),
        };
        let most = TOKENS as u128 * PRICE_WEI_PER_TOKEN;
        {
            let mut seen = seen.lock().unwrap();
            let unknown = seen.unknown.entry(ticket.provider).or_default();
            unknown.0 += 1;
            unknown.1 += most;
        }
        if user.send_signed(report.into()).is_err() {
            return;
        }
        let ack = wait_for(&mut user, Duration::from_secs(3), |m| match m {
            Message::ReportAck(a) if a.nonce == nonce => Some(a.clone()),
            Message::ErrorReply(e) if e.ref_nonce == nonce => {
                panic!("report refused: {}", codes::name(e.code))
            }
            _ => None,
        });
        let Some(ack) = ack else { return };
        assert!(ack.earned, "a passing report at a steady speed is credited");
        let mut seen = seen.lock().unwrap();
        let unknown = seen
            .unknown
            .get_mut(&ticket.provider)
            .expect("counted above");
        unknown.0 -= 1;
        unknown.1 -= most;
        let acknowledged = seen.acknowledged.entry(ticket.provider).or_default();
        acknowledged.0 += 1;
        acknowledged.1 += ack.earned_wei;
    }
}

fn run_provider(mut provider: Client, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let message = match provider.recv() {
            Ok(message) => message,
            Err(error) if timed_out(&error) => continue,
            Err(_) => return,
        };
        let reply: Message = match message {
            Message::Probe(probe) => ProbeAnswer {
                from: provider.address(),
                nonce: provider.next_nonce(),
                probe_id: probe.probe_id,
                signature: Signature::default(),
            }
            .into(),
            // Marked unreachable (a probe of the previous life timed out): back.
            Message::Notice(notice) if notice.kind == 1 => ProviderAnnounce {
                from: provider.address(),
                nonce: provider.next_nonce(),
                signature: Signature::default(),
            }
            .into(),
            _ => continue,
        };
        if provider.send_signed(reply).is_err() {
            return;
        }
    }
}

fn start_router(dir: &Path, config: &str) -> RouterProcess {
    let operator = operator_key().address().to_string();
    let data_dir = dir.join("data");
    RouterProcess::start(&[
        "--config",
        config,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--operator",
        &operator,
        "--durability",
        "always",
    ])
}

/// Runs `yellowstone-router run` expecting it to refuse to start; returns stderr.
fn refused_start(args: &[&str]) -> String {
    let output = std::process::Command::new(router_binary())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the router");
    assert!(!output.status.success(), "the router refused to start");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn tool(dir: &Path, subcommand: &str) -> Value {
    let output = std::process::Command::new(router_binary())
        .args([subcommand, "--data-dir"])
        .arg(dir.join("data"))
        .arg("--json")
        .output()
        .expect("run the router's tool");
    assert!(
        output.status.success(),
        "{subcommand} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("tool prints JSON")
}

/// A small deterministic generator for kill moments (seed printed for replays).
fn next_random(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_report() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    // Block 0 ends 2 s after start: rounds cross block boundaries.
    let genesis_ms = now_ms() - 10_000;
    std::fs::write(&config, format!("[market]\ngenesis_ms = {genesis_ms}\n")).unwrap();
    let config = config.display().to_string();
    let mut seed = now_ms();
    eprintln!("crash test seed {seed}");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let user_keys: Vec<SigningKey> = (0..USERS)
        .map(|u| SigningKey::from_seed(format!("crash-user-{u}").as_bytes()))
        .collect();
    let provider_keys: Vec<SigningKey> = (0..PROVIDERS)
        .map(|p| SigningKey::from_seed(format!("crash-provider-{p}").as_bytes()))
        .collect();

    let started = Instant::now();
    let mut rounds = 0;
    while rounds < ROUNDS_MAX && started.elapsed() < ROUNDS_TIME {
        let router = start_router(dir.path(), &config);
        let addr = router.ready.listen;
        let network_id = router.ready.network_id;
        let mut providers = Vec::new();
        for key in &provider_keys {
            let mut provider = connect(addr, key.clone());
            if rounds == 0 {
                register(&mut provider, network_id, 1, PRICE_WEI_PER_TOKEN, 8);
            } else {
                let nonce = provider.next_nonce();
                let announce = ProviderAnnounce {
                    from: provider.address(),
                    nonce,
                    signature: Signature::default(),
                };
                provider.send_signed(announce.into()).unwrap();
            }
            provider
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            providers.push(provider);
        }
        if rounds == 0 {
            let mut operator = connect(addr, operator_key());
            let mut entries: Vec<(Address, u128)> = user_keys
                .iter()
                .map(|k| (k.address(), 1_000 * WEI_PER_MOR))
                .collect();
            entries.extend(provider_keys.iter().map(|k| (k.address(), WEI_PER_MOR)));
            fund(&mut operator, &entries);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for provider in providers {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || run_provider(provider, stop)));
        }
        for key in &user_keys {
            let (key, stop, seen) = (key.clone(), stop.clone(), seen.clone());
            threads.push(std::thread::spawn(move || run_user(addr, key, stop, seen)));
        }
        std::thread::sleep(Duration::from_millis(300 + next_random(&mut seed) % 1_200));
        router.kill_hard();
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().expect("client thread");
        }
        // The directory a SIGKILL left verifies: checksums, sequence, replay,
        // invariants (read-only; a torn tail is reported, not an error).
        let report = tool(dir.path(), "verify");
        assert_eq!(report["invariants"], "ok", "{report:#}");
        rounds += 1;
    }
    let acknowledged_total: u64 = seen
        .lock()
        .unwrap()
        .acknowledged
        .values()
        .map(|(count, _)| count)
        .sum();
    eprintln!("{rounds} rounds, {acknowledged_total} reports acknowledged");
    assert!(rounds >= 5, "enough crash rounds ran ({rounds})");
    assert!(acknowledged_total > 20, "the load did real work");

    // A last life, long enough for the open block to seal, then a clean stop.
    let router = start_router(dir.path(), &config);
    let genesis: u64 = std::fs::read_to_string(dir.path().join("data/genesis_ms"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let now = now_ms();
    let boundary = genesis + (now - genesis).div_ceil(12_000) * 12_000;
    std::thread::sleep(Duration::from_millis(boundary - now + 800));
    assert!(router.terminate(Duration::from_secs(20)), "clean stop");

    let ledger = tool(dir.path(), "ledger");
    let block = ledger["block"].as_u64().unwrap();
    assert_eq!(ledger["solvent"], true, "{ledger:#}");
    assert_eq!(
        ledger["batches"].as_u64().unwrap(),
        block,
        "one batch per sealed block: {ledger:#}"
    );
    assert_eq!(
        ledger["last_batch_block"].as_u64(),
        Some(block - 1),
        "no gap"
    );
    let owed: BTreeMap<String, u128> = ledger["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["provider"].as_str().unwrap().to_string(),
                p["owed_wei"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let seen = seen.lock().unwrap();
    let credited = ledger["sessions_credited"].as_u64().unwrap();
    let unknown_total: u64 = seen.unknown.values().map(|(count, _)| count).sum();
    assert!(
        acknowledged_total <= credited && credited <= acknowledged_total + unknown_total,
        "acknowledged {acknowledged_total} <= credited {credited} <= acknowledged + \
         unanswered {unknown_total}"
    );
    for (provider, (_, wei)) in &seen.acknowledged {
        let (_, unknown_wei) = seen.unknown.get(provider).copied().unwrap_or_default();
        let owed = owed.get(&provider.to_string()).copied().unwrap_or(0);
        assert!(
            *wei <= owed && owed <= wei + unknown_wei,
            "provider {provider}: acknowledged {wei} <= owed {owed} <= acknowledged + unanswered {unknown_wei}"
        );
    }
}

#[test]
fn a_journal_corrupt_before_its_tail_refuses_to_start_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(&config, "").unwrap();
    let config = config.display().to_string();
    let router = start_router(dir.path(), &config);
    let mut operator = connect(router.ready.listen, operator_key());
    for n in 0..20u8 {
        fund(&mut operator, &[(Address([n; 20]), WEI_PER_MOR)]);
    }
    drop(operator);
    assert!(router.terminate(Duration::from_secs(20)));

    let data = dir.path().join("data");
    let operator_address = operator_key().address().to_string();
    let segment = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("a journal segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    assert!(
        bytes.len() > 600,
        "records were journaled ({} bytes)",
        bytes.len()
    );
    bytes[100] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();

    let stderr = refused_start(&[
        "--config",
        &config,
        "--operator",
        &operator_address,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(stderr.contains("corrupt before its tail"), "{stderr}");
    assert!(
        stderr.contains(&segment.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(stderr.contains("offset"), "{stderr}");
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "a refusal changes nothing"
    );

    let router = RouterProcess::start(&[
        "--config",
        &config,
        "--operator",
        &operator_address,
        "--data-dir",
        data.to_str().unwrap(),
        "--allow-corrupt-truncate",
    ]);
    assert!(router.terminate(Duration::from_secs(20)));
    assert_eq!(tool(dir.path(), "verify")["invariants"], "ok");

    // Other market parameters (here: no operator) are refused, naming the file.
    let stderr = refused_start(&["--config", &config, "--data-dir", data.to_str().unwrap()]);
    assert!(
        stderr.contains("market.bin") && stderr.contains("differ"),
        "{stderr}"
    );
}

/// Issue 26 item 2: `dump` decides damage as recovery does (`journal::classify`).
/// A journal whose records pass their checksums but skip a sequence number (a
/// record removed from the middle) is refused by the router; `dump` used to print
/// every record and exit 0 on it, so the operator's tool and the router disagreed.
/// Now `journal` (the dump) prints the records up to the break, names it, and exits
/// 1, as verify does.
#[test]
fn dump_refuses_a_sequence_break_the_router_refuses() {
    use yellowstone_gateway::journal::{files, record};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(&config, "").unwrap();
    let config = config.display().to_string();
    let router = start_router(dir.path(), &config);
    let mut operator = connect(router.ready.listen, operator_key());
    for n in 0..6u8 {
        fund(&mut operator, &[(Address([n + 1; 20]), WEI_PER_MOR)]);
    }
    drop(operator);
    assert!(router.terminate(Duration::from_secs(20)));

    let data = dir.path().join("data");
    let segment = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("a journal segment");
    let bytes = std::fs::read(&segment).unwrap();
    // Re-frame every record but the third: each passes its checksum, record 4
    // follows record 2.
    let mut rewritten = bytes[..files::SEGMENT_HEADER_BYTES].to_vec();
    let mut at = files::SEGMENT_HEADER_BYTES;
    let mut kept = 0;
    while let Ok(rec) = record::parse(&bytes[at..]) {
        if rec.seq != 3 {
            record::encode_into(&mut rewritten, rec.seq, rec.payload).unwrap();
            kept += 1;
        }
        at += rec.framed_len;
    }
    assert!(kept >= 5, "records were journaled ({kept})");
    std::fs::write(&segment, &rewritten).unwrap();

    let output = std::process::Command::new(router_binary())
        .args(["journal", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run dump");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "dump exits 1: {stdout}{stderr}");
    assert!(
        stdout.contains("damage:") && stdout.contains("sequence break: record 4 follows record 2"),
        "{stdout}"
    );
    assert!(stderr.contains("corrupt before its tail"), "{stderr}");
    assert_eq!(
        stdout.lines().count(),
        3,
        "records 1 and 2, then the damage: {stdout}"
    );
    // The router refuses the same journal, naming the same break.
    let stderr = refused_start(&[
        "--config",
        &config,
        "--operator",
        &operator_key().address().to_string(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        stderr.contains("sequence break: record 4 follows record 2"),
        "{stderr}"
    );
}
