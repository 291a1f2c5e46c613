//! Issue 27 through the real `yellowstone-router` binary: the market's own
//! participants cannot game it. Each test failed on the code before the fix:
//! case 1, self-dealing credited (R-MATCH-7); case 2, unfunded sybil registrations
//! locking funded providers out (R-PROV-2); case 3, sybils taking the bootstrap bonus
//! (R-CONTRACT-4); case 7, one user suspending a provider (R-PERF-4); case 10, a
//! journaled report that panicked the engine at the block's end and made the data
//! directory unstartable (R-OPS-4); case 11, a nonce that used up an address (R-ID-8).

use std::path::Path;
use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::{router_binary, RouterProcess};
use yellowstone_wire::client::{Client, ClientError};
use yellowstone_wire::*;

const WAIT: Duration = Duration::from_secs(10);

/// Writes a config with `[market]` lines and a genesis `genesis_ms` and returns its path.
fn config_at(dir: &Path, genesis_ms: u64, market_lines: &str) -> String {
    let path = dir.join("router.toml");
    std::fs::write(
        &path,
        format!("[market]\ngenesis_ms = {genesis_ms}\n{market_lines}\n"),
    )
    .unwrap();
    path.display().to_string()
}

/// A config whose block 0 ends `block_left_ms` from now.
fn config(dir: &Path, market_lines: &str, block_left_ms: u64) -> String {
    config_at(dir, now_ms() + block_left_ms - 12_000, market_lines)
}

fn start(config: &str, extra: &[&str]) -> RouterProcess {
    let operator = operator_key().address().to_string();
    let mut args = vec!["--config", config, "--operator", &operator];
    args.extend_from_slice(extra);
    RouterProcess::start(&args)
}

fn rfc_with_nonce(
    user: &mut Client,
    nonce: u64,
    tokens_max: u64,
) -> Result<RfcAccepted, ErrorReply> {
    let message = Rfc {
        from: user.address(),
        nonce,
        model_id: 1,
        tokens_max,
        expires_at_ms: now_ms() + 250_000,
        signature: Signature::default(),
    };
    user.send_signed(message.into()).unwrap();
    expect(user, WAIT, |m| match m {
        Message::RfcAccepted(a) if a.nonce == nonce => Some(Ok(a.clone())),
        Message::ErrorReply(e) if e.ref_nonce == nonce => Some(Err(e.clone())),
        _ => None,
    })
}

fn rfc(user: &mut Client, tokens_max: u64) -> Result<RfcAccepted, ErrorReply> {
    let nonce = user.next_nonce();
    rfc_with_nonce(user, nonce, tokens_max)
}

fn ticket(user: &mut Client) -> SessionTicket {
    expect(user, WAIT, |m| match m {
        Message::SessionTicket(t) => Some(t.clone()),
        _ => None,
    })
}

/// RFC -> probe answered by `provider` -> the user's ticket.
fn session(user: &mut Client, provider: &mut Client, tokens_max: u64) -> SessionTicket {
    rfc(user, tokens_max).expect("rfc accepted");
    answer_next_probe(provider, WAIT);
    let ticket = ticket(user);
    assert_eq!(ticket.provider, provider.address());
    ticket
}

/// The user's report (R-REPORT-1): pass or fail.
fn report(
    user: &mut Client,
    session_id: u64,
    tokens: u64,
    pass: bool,
) -> Result<ReportAck, ErrorReply> {
    let nonce = user.next_nonce();
    let message = Report {
        from: user.address(),
        nonce,
        session_id,
        elapsed_ms: 100,
        tokens,
        ttft_ms: 0,
        prompt_tokens: 0,
        outcome: if pass { Outcome::Pass } else { Outcome::Fail },
        signature: Signature::default(),
    };
    user.send_signed(message.into()).unwrap();
    expect(user, WAIT, |m| match m {
        Message::ReportAck(a) if a.nonce == nonce => Some(Ok(a.clone())),
        Message::ErrorReply(e) if e.ref_nonce == nonce => Some(Err(e.clone())),
        _ => None,
    })
}

/// Registers one offer of model 1. A probe may reach the provider before the
/// registration's `Ack` (a probe leaves at once, an `Ack` once durable): it is
/// returned, to be answered.
fn try_register(
    provider: &mut Client,
    network_id: u32,
    price: u128,
    capacity: u32,
) -> Result<Option<Probe>, ErrorReply> {
    use yellowstone_wire::demo::demo_weights_hash;
    let weights_hash = demo_weights_hash(1);
    let weights_proof = provider.key().sign_digest(&signature::weights_proof_digest(
        network_id,
        1,
        &weights_hash,
    ));
    let nonce = provider.next_nonce();
    let message = RegisterProvider {
        from: provider.address(),
        nonce,
        endpoint: "127.0.0.1:9999".into(),
        offers: vec![Offer {
            model_id: 1,
            unit: 0,
            weights_hash,
            weights_proof,
            price_wei_per_token: price,
            capacity,
        }],
        signature: Signature::default(),
    };
    provider.send_signed(message.into()).unwrap();
    let mut probe = None;
    expect(provider, WAIT, |m| match m {
        Message::Ack(a) if a.nonce == nonce => Some(Ok(())),
        Message::ErrorReply(e) if e.ref_nonce == nonce => Some(Err(e.clone())),
        Message::Probe(p) => {
            probe = Some(p.clone());
            None
        }
        _ => None,
    })?;
    Ok(probe)
}

fn answer(provider: &mut Client, probe: &Probe) {
    let nonce = provider.next_nonce();
    let message = ProbeAnswer {
        from: provider.address(),
        nonce,
        probe_id: probe.probe_id,
        signature: Signature::default(),
    };
    provider.send_signed(message.into()).unwrap();
}

/// The probe that reaches `provider` within `wait`, if any (other messages are
/// skipped).
fn probed_within(provider: &mut Client, wait: Duration) -> Option<Probe> {
    provider
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + wait;
    let mut probed = None;
    while Instant::now() < deadline {
        match provider.recv() {
            Ok(Message::Probe(probe)) => {
                probed = Some(probe);
                break;
            }
            Ok(_) => {}
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("connection failed while waiting: {e}"),
        }
    }
    provider.set_read_timeout(Some(WAIT * 2)).unwrap();
    probed
}

fn subscribe(client: &mut Client) {
    let nonce = client.next_nonce();
    let message = SubscribeBatches {
        from: client.address(),
        nonce,
        signature: Signature::default(),
    };
    client.send_signed(message.into()).unwrap();
}

fn next_batch(client: &mut Client, block: u64, timeout: Duration) -> CreditBatch {
    expect(client, timeout, |m| match m {
        Message::CreditBatch(b) if b.block >= block => Some(b.clone()),
        _ => None,
    })
}

fn tool(args: &[&str], data_dir: &Path) -> std::process::Output {
    std::process::Command::new(router_binary())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn ledger_json(data_dir: &Path) -> serde_json::Value {
    let output = tool(&["ledger", "--json"], data_dir);
    assert!(output.status.success(), "ledger: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn owed_wei(ledger: &serde_json::Value, provider: Address) -> u128 {
    let wanted = provider.to_string().to_lowercase();
    ledger["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"].as_str().unwrap().to_lowercase() == wanted)
        .map_or(0, |p| p["owed_wei"].as_str().unwrap().parse().unwrap())
}

/// Issue 27 case 1 (R-MATCH-7): one funded address on two connections, the cheapest
/// provider of model 1 on one and a user on the other. Its RFC is never matched with
/// its own offer: alone, it waits; with another funded provider present it goes to
/// that one (the self-dealer earns nothing), and its own offer stays first for
/// everyone else.
#[test]
fn r_match_7_an_address_is_never_matched_with_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = config(dir.path(), "", 9_000);
    let router = start(&config, &["--data-dir", data_dir.to_str().unwrap()]);
    let (addr, network_id) = (router.ready.listen, router.ready.network_id);
    let mut operator = connect(addr, operator_key());
    let dealer_key = SigningKey::from_seed(b"integrity-self-dealer");
    let mut dealer_provider = connect(addr, dealer_key.clone());
    let mut dealer_user = connect(addr, dealer_key);
    // Both connections share one nonce sequence: keep the user's above the provider's.
    for _ in 0..1_000 {
        dealer_user.next_nonce();
    }
    let mut honest = connect(addr, SigningKey::from_seed(b"integrity-honest-provider"));
    let mut other_user = connect(addr, SigningKey::from_seed(b"integrity-other-user"));
    fund(
        &mut operator,
        &[
            (dealer_user.address(), 500 * WEI_PER_MOR),
            (honest.address(), WEI_PER_MOR),
            (other_user.address(), 500 * WEI_PER_MOR),
        ],
    );
    register(&mut dealer_provider, network_id, 1, 1_000, 4);
    rfc(&mut dealer_user, 10).expect("the dealer's RFC is admitted");
    assert!(
        probed_within(&mut dealer_provider, Duration::from_millis(1_500)).is_none(),
        "an RFC was matched with its own address's offer"
    );
    // Another funded provider, dearer: the waiting RFC goes to it.
    let probe = try_register(&mut honest, network_id, 5_000, 4).unwrap();
    match probe {
        Some(probe) => answer(&mut honest, &probe),
        None => {
            answer_next_probe(&mut honest, WAIT);
        }
    }
    let t = ticket(&mut dealer_user);
    assert_eq!(
        (t.user, t.provider, t.price_wei_per_token),
        (dealer_user.address(), honest.address(), 5_000)
    );
    let ack = report(&mut dealer_user, t.session_id, 10, true).expect("report");
    assert_eq!(ack.earned_wei, 50_000, "earned by the other provider");
    // The dealer's offer kept its time priority: first for someone else's RFC. (The
    // provider connection's nonces continue above the user connection's: one address.)
    let above = dealer_user.next_nonce();
    while dealer_provider.next_nonce() < above {}
    let t = session(&mut other_user, &mut dealer_provider, 10);
    assert_eq!(t.user, other_user.address());
    // And the dealer's next RFC is matched with the other provider at once.
    let above = dealer_provider.next_nonce();
    while dealer_user.next_nonce() < above {}
    rfc(&mut dealer_user, 10).unwrap();
    answer_next_probe(&mut honest, WAIT);
    assert_eq!(ticket(&mut dealer_user).provider, honest.address());
    assert!(router.terminate(Duration::from_secs(20)));
    let ledger = ledger_json(&data_dir);
    assert_eq!(
        owed_wei(&ledger, dealer_user.address()),
        0,
        "the self-dealer earned nothing from its own RFCs: {ledger}"
    );
}

/// Issue 27 case 2 (R-PROV-2): unfunded keys register in numbers above
/// `providers_max` (scaled down so that it runs in seconds: providers_max 5, 40
/// sybils); each is accepted with the unfunded notice, and then a funded provider
/// registers (it used to be refused `limit_reached`) and is matched. (Eviction from
/// the bounded set: `engine/tests/integrity.rs`.)
#[test]
fn r_prov_2_unfunded_sybils_do_not_lock_a_funded_provider_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "providers_max = 5", 9_000);
    let router = start(&config, &[]);
    let (addr, network_id) = (router.ready.listen, router.ready.network_id);
    // The sybils stay connected (a registration goes with its connection).
    let mut sybils = Vec::new();
    for n in 0..40u32 {
        let mut sybil = connect(
            addr,
            SigningKey::from_seed(format!("integrity-sybil-{n}").as_bytes()),
        );
        try_register(&mut sybil, network_id, 1, 1_000).expect("accepted with a notice");
        let notice = expect(&mut sybil, WAIT, |m| match m {
            Message::Notice(n) => Some(n.clone()),
            _ => None,
        });
        assert_eq!(notice.kind, messages::NOTICE_UNFUNDED);
        sybils.push(sybil);
    }
    // Kept apart: no provider place taken (metrics are published every 100 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = yellowstone_tests::metrics_text(router.ready.metrics);
        if metrics.contains("\nyellowstone_market_unfunded_registrations 40")
            && metrics.contains("\nyellowstone_market_providers 0")
        {
            break;
        }
        assert!(Instant::now() < deadline, "figures: {metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut operator = connect(addr, operator_key());
    let mut honest = connect(addr, SigningKey::from_seed(b"integrity-funded-provider"));
    let mut user = connect(addr, SigningKey::from_seed(b"integrity-user-2"));
    fund(
        &mut operator,
        &[
            (honest.address(), WEI_PER_MOR),
            (user.address(), 500 * WEI_PER_MOR),
        ],
    );
    let probe =
        try_register(&mut honest, network_id, 10, 4).expect("a funded provider finds a place");
    assert!(probe.is_none(), "nothing queued yet");
    session(&mut user, &mut honest, 10);
    // A sybil's registration goes when its connection closes.
    drop(sybils);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !yellowstone_tests::metrics_text(router.ready.metrics)
        .contains("\nyellowstone_market_unfunded_registrations 0")
    {
        assert!(
            Instant::now() < deadline,
            "unfunded registrations not dropped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 27 case 3 (R-CONTRACT-4): with genesis set so that day 0 ends shortly, 100
/// unfunded registrations made before an honest provider took all 100 bootstrap slots;
/// the honest provider, which served the day's only session, was owed its session
/// alone (100,000,000,000 wei). Now it is owed the day's 2.4 % bonus too.
#[test]
fn r_contract_4_sybils_do_not_take_the_bootstrap_bonus() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let day_ms = 7_200 * 12_000;
    let day_left_ms = 30_000;
    let config = config_at(dir.path(), now_ms() + day_left_ms - day_ms, "");
    let started = Instant::now();
    let router = start(&config, &["--data-dir", data_dir.to_str().unwrap()]);
    let (addr, network_id) = (router.ready.listen, router.ready.network_id);
    for n in 0..100u32 {
        let mut sybil = connect(
            addr,
            SigningKey::from_seed(format!("integrity-bonus-sybil-{n}").as_bytes()),
        );
        try_register(&mut sybil, network_id, 1, 1_000).expect("accepted");
    }
    let mut operator = connect(addr, operator_key());
    let mut honest = connect(addr, SigningKey::from_seed(b"integrity-bonus-honest"));
    let mut user = connect(addr, SigningKey::from_seed(b"integrity-bonus-user"));
    fund(
        &mut operator,
        &[
            (honest.address(), WEI_PER_MOR),
            (user.address(), 500 * WEI_PER_MOR),
        ],
    );
    subscribe(&mut operator);
    try_register(&mut honest, network_id, 1_000_000_000, 4).unwrap();
    let t = session(&mut user, &mut honest, 100);
    let ack = report(&mut user, t.session_id, 100, true).unwrap();
    assert_eq!(ack.earned_wei, 100_000_000_000);
    assert!(
        started.elapsed() < Duration::from_millis(day_left_ms - 3_000),
        "the session must fall in day 0: the test machine is too slow"
    );
    // The last block of day 0 is 7,199; the day rolls in the same step as its seal.
    next_batch(&mut operator, 7_200, Duration::from_secs(60));
    assert!(router.terminate(Duration::from_secs(20)));
    let ledger = ledger_json(&data_dir);
    assert_eq!(
        owed_wei(&ledger, honest.address()),
        345_600_000_100_000_000_000,
        "the day's bonus (2.4 % of 14,400 MOR) plus its session: {ledger}"
    );
}

/// `fails` sessions with `provider` reported fail by `user`; then whether the next
/// RFC skips `provider` (suspended) for `backup`. That session is reported pass.
fn suspended_after_fails(
    user: &mut Client,
    provider: &mut Client,
    fails: usize,
    backup: &mut Client,
) -> bool {
    for _ in 0..fails {
        let t = session(user, provider, 10);
        report(user, t.session_id, 0, false).expect("fail report accepted");
    }
    // The next RFC goes to the cheaper provider unless it was suspended.
    rfc(user, 10).unwrap();
    let suspended = match probed_within(provider, Duration::from_millis(1_500)) {
        Some(probe) => {
            answer(provider, &probe);
            false
        }
        None => {
            answer_next_probe(backup, WAIT);
            true
        }
    };
    let t = ticket(user);
    report(user, t.session_id, 10, true).expect("pass report");
    suspended
}

/// Issue 27 case 7 (R-PERF-4): five fail reports from one user suspended an honest
/// provider for 60 s. Now suspension needs penalty points from `suspend_users_min`
/// (default 3) distinct users.
#[test]
fn r_perf_4_one_user_cannot_suspend_a_provider() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "", 9_000);
    let router = start(&config, &[]);
    let (addr, network_id) = (router.ready.listen, router.ready.network_id);
    let mut operator = connect(addr, operator_key());
    let mut cheap = connect(addr, SigningKey::from_seed(b"integrity-cheap"));
    let mut dear = connect(addr, SigningKey::from_seed(b"integrity-dear"));
    let mut users: Vec<Client> = (0..3u32)
        .map(|n| {
            connect(
                addr,
                SigningKey::from_seed(format!("integrity-griefer-{n}").as_bytes()),
            )
        })
        .collect();
    let mut entries = vec![
        (cheap.address(), WEI_PER_MOR),
        (dear.address(), WEI_PER_MOR),
    ];
    entries.extend(users.iter().map(|u| (u.address(), 500 * WEI_PER_MOR)));
    fund(&mut operator, &entries);
    register(&mut cheap, network_id, 1, 1_000, 4);
    register(&mut dear, network_id, 1, 9_000, 4);
    let (first, rest) = users.split_first_mut().unwrap();
    // Five fails (the default penalty_points_suspend) from one user: not suspended.
    assert!(
        !suspended_after_fails(first, &mut cheap, 5, &mut dear),
        "one user suspended the provider"
    );
    // Points from a second user: two users, still not suspended.
    let (second, third) = rest.split_at_mut(1);
    assert!(!suspended_after_fails(
        &mut second[0],
        &mut cheap,
        2,
        &mut dear
    ));
    // A third user's fail: suspend_users_min distinct users: suspended.
    assert!(
        suspended_after_fails(&mut third[0], &mut cheap, 1, &mut dear),
        "points from three users suspend"
    );
}

/// Issue 27 (griefing over 10 s, R-PERF-4): one user's points count at most
/// ⌈penalty_points_suspend / suspend_users_min⌉ (defaults: ⌈5/3⌉ = 2). A griefer's
/// five fails and one fail from each of two other users suspended the provider (7
/// points from 3 users); now 2 + 1 + 1 count, and it takes a real share from a
/// second user (2 + 2 + 1) to suspend.
#[test]
fn r_perf_4_a_griefer_cannot_supply_all_but_two_of_a_suspensions_points() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "", 9_000);
    let router = start(&config, &[]);
    let (addr, network_id) = (router.ready.listen, router.ready.network_id);
    let mut operator = connect(addr, operator_key());
    let mut cheap = connect(addr, SigningKey::from_seed(b"integrity-q-cheap"));
    let mut dear = connect(addr, SigningKey::from_seed(b"integrity-q-dear"));
    let mut users: Vec<Client> = (0..3u32)
        .map(|n| {
            connect(
                addr,
                SigningKey::from_seed(format!("integrity-q-griefer-{n}").as_bytes()),
            )
        })
        .collect();
    let mut entries = vec![
        (cheap.address(), WEI_PER_MOR),
        (dear.address(), WEI_PER_MOR),
    ];
    entries.extend(users.iter().map(|u| (u.address(), 500 * WEI_PER_MOR)));
    fund(&mut operator, &entries);
    register(&mut cheap, network_id, 1, 1_000, 4);
    register(&mut dear, network_id, 1, 9_000, 4);
    let (griefer, rest) = users.split_first_mut().unwrap();
    let (second, third) = rest.split_at_mut(1);
    assert!(!suspended_after_fails(griefer, &mut cheap, 5, &mut dear));
    assert!(!suspended_after_fails(
        &mut second[0],
        &mut cheap,
        1,
        &mut dear
    ));
    assert!(
        !suspended_after_fails(&mut third[0], &mut cheap, 1, &mut dear),
        "7 points from 3 users, 5 of them the griefer's, suspended the provider"
    );
    assert!(
        suspended_after_fails(&mut second[0], &mut cheap, 1, &mut dear),
        "2 + 2 + 1 points from three users suspend"
    );
}

const BID_MAX_ANY: &str = "bid_wei_per_token_max = \"340282366920938463463374607431768211455\"";

/// Issue 27 case 10 (R-OPS-4), the exact reproduction: bids up to u128::MAX allowed,
/// a provider bidding u128::MAX, two 1-token sessions reported pass in two successive
/// blocks. The engine panicked at the second block's end ("ledger arithmetic out of
/// range: shortfall") and `run`, `verify` and `ledger` on the data directory panicked
/// from then on. Now the second report is refused `credit_overflow` where it enters,
/// the router keeps running, and the data directory starts and verifies.
#[test]
fn r_ops_4_a_report_that_would_overflow_the_ledger_never_reaches_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = config(dir.path(), BID_MAX_ANY, 9_000);
    let args = ["--data-dir", data_dir.to_str().unwrap()];
    let router = start(&config, &args);
    let (addr, network_id) = (router.ready.listen, router.ready.network_id);
    let mut operator = connect(addr, operator_key());
    let mut user = connect(addr, SigningKey::from_seed(b"integrity-max-user"));
    let mut provider = connect(addr, SigningKey::from_seed(b"integrity-max-provider"));
    fund(
        &mut operator,
        &[
            (user.address(), 500 * WEI_PER_MOR),
            (provider.address(), WEI_PER_MOR),
        ],
    );
    subscribe(&mut operator);
    register(&mut provider, network_id, 1, u128::MAX, 2);
    let first = session(&mut user, &mut provider, 1);
    let second = session(&mut user, &mut provider, 1);
    let ack = report(&mut user, first.session_id, 1, true).expect("first report");
    assert_eq!(ack.earned_wei, u128::MAX);
    let batch = next_batch(&mut operator, 0, Duration::from_secs(30));
    assert_eq!(batch.shortfall_wei, u128::MAX - 3_456 * WEI_PER_MOR);
    // The next block: the ledger's cumulative shortfall cannot take another u128::MAX.
    let refused = report(&mut user, second.session_id, 1, true).unwrap_err();
    assert_eq!(codes::name(refused.code), "credit_overflow", "{refused:?}");
    assert_eq!(refused.retry_after_ms, 0, "that sum never shrinks");
    assert!(refused.reason.contains("shortfall"), "{}", refused.reason);
    // The router keeps running: the block seals and a new RFC is served.
    next_batch(&mut operator, batch.block + 1, Duration::from_secs(30));
    rfc(&mut user, 1).expect("still serving");
    assert!(router.terminate(Duration::from_secs(20)));

    let verify = tool(&["verify"], &data_dir);
    assert!(verify.status.success(), "verify: {verify:?}");
    let ledger = ledger_json(&data_dir);
    assert_eq!(ledger["solvent"], true, "{ledger}");
    let router = start(&config, &args);
    let mut user = connect(
        router.ready.listen,
        SigningKey::from_seed(b"integrity-max-user"),
    );
    rfc(&mut user, 1).expect("the data directory starts and serves");
}

/// Issue 27 case 11 (R-ID-8): a message with nonce 2^64 - 1 after a small one used up
/// the address. Now it is refused `nonce_gap` (naming the last accepted nonce and the
/// largest allowed) and the address goes on; a fresh address's first nonce, the
/// clock in microseconds, is accepted.
#[test]
fn r_id_8_a_nonce_cannot_use_up_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "", 9_000);
    let router = start(&config, &[]);
    let addr = router.ready.listen;
    let mut operator = connect(addr, operator_key());
    let mut user = connect(addr, SigningKey::from_seed(b"integrity-nonce-user"));
    fund(&mut operator, &[(user.address(), 500 * WEI_PER_MOR)]);
    let accepted_nonce = user.next_nonce(); // the clock in µs: a fresh address's first
    rfc_with_nonce(&mut user, accepted_nonce, 10).expect("a clock-µs first nonce");
    let refused = rfc_with_nonce(&mut user, u64::MAX, 10).unwrap_err();
    assert_eq!(codes::name(refused.code), "nonce_gap", "{refused:?}");
    assert!(
        refused.reason.contains(&accepted_nonce.to_string()),
        "names the last accepted nonce: {}",
        refused.reason
    );
    assert!(refused.detail >= accepted_nonce as u128 + (1 << 40));
    assert!(refused.detail < u64::MAX as u128);
    assert!(refused.reason.contains(&refused.detail.to_string()));
    rfc(&mut user, 10).expect("the address can still send");
    // The operator's commands are held to the same rule.
    let message = BalanceUpdate {
        from: operator.address(),
        nonce: u64::MAX,
        entries: vec![],
        signature: Signature::default(),
    };
    operator.send_signed(message.into()).unwrap();
    let refused = expect(&mut operator, WAIT, |m| match m {
        Message::ErrorReply(e) if e.ref_nonce == u64::MAX => Some(e.clone()),
        Message::Ack(a) if a.nonce == u64::MAX => panic!("nonce 2^64 - 1 accepted"),
        _ => None,
    });
    assert_eq!(codes::name(refused.code), "nonce_gap");
    fund(&mut operator, &[(user.address(), 600 * WEI_PER_MOR)]);
}
