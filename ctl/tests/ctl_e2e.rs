//! yellowstone-ctl end to end against the real `yellowstone-router` binary (R-OPS-3):
//! every subcommand, its output, and each refusal printed with a non-zero exit; after
//! a credited session, the scraped `/metrics` market figures equal `market show` and
//! the stopped router's `ledger --json`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use yellowstone_tests::market::*;
use yellowstone_tests::{router_binary, RouterProcess};
use yellowstone_wire::*;

fn key_file(dir: &Path, name: &str, key: &SigningKey) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(format!("{name}.key"));
    // The form `yellowstone-router keygen` prints.
    let text = format!(
        "secret_hex={}\naddress={}\n",
        hex::encode(key.secret_bytes()),
        key.address()
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn ctl_command(router: &str, key: Option<&Path>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_yellowstone-ctl"));
    command.args(["--router", router, "--timeout-ms", "10000"]);
    if let Some(key) = key {
        command.arg("--key-file").arg(key);
    }
    command.args(args).env_remove("YELLOWSTONE_KEY_FILE");
    command
}

fn ctl(router: &str, key: Option<&Path>, args: &[&str]) -> Output {
    ctl_command(router, key, args)
        .output()
        .expect("run yellowstone-ctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and requires success; returns stdout.
fn ok(router: &str, key: Option<&Path>, args: &[&str]) -> String {
    let out = ctl(router, key, args);
    assert!(
        out.status.success(),
        "yellowstone-ctl {args:?} failed ({:?}): {}",
        out.status.code(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs and requires exit status `code`; returns stderr.
fn fails(router: &str, key: Option<&Path>, args: &[&str], code: i32) -> String {
    let out = ctl(router, key, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "yellowstone-ctl {args:?}: stdout {} stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn rfc_tokens_left(user: &mut client::Client, tokens_max: u64) -> u64 {
    let nonce = send_rfc(user, tokens_max);
    expect(user, Duration::from_secs(10), |m| match m {
        Message::RfcAccepted(a) if a.nonce == nonce => Some(a.tokens_left),
        Message::ErrorReply(e) if e.ref_nonce == nonce => panic!("rfc refused: {e:?}"),
        _ => None,
    })
}

#[test]
fn r_ops_3_operator_sets_balances_and_params_by_name_and_reads_the_market() {
    let dir = tempfile::tempdir().unwrap();
    let operator = operator_key();
    let operator_file = key_file(dir.path(), "operator", &operator);
    let data = dir.path().join("data");
    let router = RouterProcess::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--operator",
        &operator.address().to_string(),
    ]);
    let addr = router.ready.listen.to_string();
    let op = Some(operator_file.as_path());
    let user_key = SigningKey::from_seed(b"ctl-user");
    let whale_key = SigningKey::from_seed(b"ctl-whale");

    // balance set, twice: the second run is not a replay (clock nonces).
    let user = user_key.address().to_string();
    for _ in 0..2 {
        let out = ok(&addr, op, &["balance", "set", &user, "5000000000000000000"]);
        assert!(out.contains("set to 5000000000000000000 wei"), "{out}");
    }
    let csv = dir.path().join("balances.csv");
    std::fs::write(
        &csv,
        format!(
            "# address,balance_wei\n{},500000000000000000000\n\n{user},5000000000000000000\n",
            whale_key.address()
        ),
    )
    .unwrap();
    let out = ok(
        &addr,
        op,
        &[
            "balance",
            "import",
            csv.to_str().unwrap(),
            "--entries-per-message",
            "1",
        ],
    );
    assert!(out.contains("2 balances set"), "{out}");
    // The balances are in force (R-QUOTA-3: 5 MOR -> 15,000 T, 500 MOR -> 1,500,000 T).
    let mut user_client = connect(router.ready.listen, user_key.clone());
    assert_eq!(rfc_tokens_left(&mut user_client, 100), 15_000 - 100);
    let mut whale = connect(router.ready.listen, whale_key);
    assert_eq!(rfc_tokens_left(&mut whale, 100), 1_500_000 - 100);

    // params by name, in one message, then visible in market show.
    let out = ok(
        &addr,
        op,
        &[
            "params",
            "set",
            "compute_budget_wei_per_day",
            "1500000000000000000000",
            "fail_policy=balance-weighted",
        ],
    );
    assert!(out.contains("fail_policy = balance-weighted"), "{out}");
    let market: Value =
        serde_json::from_str(&ok(&addr, op, &["market", "show", "--json"])).unwrap();
    assert_eq!(market["max_tokens_per_day"], "15000000000", "{market}");
    assert_eq!(market["access_rate_tokens_per_mor"], "1500");
    assert_eq!(market["budget_wei_today"], "1500000000000000000000");
    assert_eq!(market["params"]["fail_policy"], "balance-weighted");
    assert_eq!(
        market["params"]["compute_budget_wei_per_day"],
        "1500000000000000000000"
    );
    assert_eq!(market["emitted_wei"], "3456000000000000000000");
    assert_eq!(
        market["models"].as_array().unwrap().len(),
        4,
        "the demo catalog"
    );
    // Any key may read the market; the text form names the figures.
    let user_file = key_file(dir.path(), "user", &user_key);
    let shown = ok(&addr, Some(&user_file), &["market", "show"]);
    assert!(
        shown.contains("MaxT (tokens/day)") && shown.contains("15000000000"),
        "{shown}"
    );
    assert!(shown.contains("fail_policy") && shown.contains("balance-weighted"));

    // Refusals by the router: printed with the code's name, exit 1.
    let error = fails(
        &addr,
        op,
        &["params", "set", "token_price_wei_per_1000", "0"],
        1,
    );
    assert!(
        error.contains("invalid_param") && error.contains("token_price_wei_per_1000"),
        "{error}"
    );
    // (Another key than the user's: a refused message still spends its nonce.)
    let stranger = key_file(
        dir.path(),
        "stranger",
        &SigningKey::from_seed(b"ctl-stranger"),
    );
    let error = fails(&addr, Some(&stranger), &["balance", "set", &user, "1"], 1);
    assert!(error.contains("not_operator"), "{error}");
    let error = fails(
        &addr,
        Some(&stranger),
        &["params", "set", "suspension_ms", "5"],
        1,
    );
    assert!(error.contains("not_operator"), "{error}");
    // Nothing was changed by the refusals.
    let market: Value =
        serde_json::from_str(&ok(&addr, op, &["market", "show", "--json"])).unwrap();
    assert_eq!(
        market["params"]["token_price_wei_per_1000"],
        "100000000000000"
    );
    assert_eq!(market["params"]["suspension_ms"], "60000");

    // Local errors: nothing sent, exit 2.
    let bad_csv = dir.path().join("bad.csv");
    std::fs::write(&bad_csv, format!("{user},1\nnot-an-address,5\n")).unwrap();
    let error = fails(
        &addr,
        op,
        &["balance", "import", bad_csv.to_str().unwrap()],
        2,
    );
    assert!(error.contains("line 2"), "{error}");
    assert_eq!(
        rfc_tokens_left(&mut user_client, 100),
        7_500 - 200, // MaxT was halved above
        "balance unchanged"
    );
    let error = fails(&addr, op, &["params", "set", "fail_policy", "sometimes"], 2);
    assert!(error.contains("no-credit, balance-weighted"), "{error}");
    let error = fails(&addr, op, &["params", "set", "no_such_param", "1"], 2);
    assert!(error.contains("params list"), "{error}");
    let error = fails(&addr, op, &["balance", "set", "0x1234", "1"], 2);
    assert!(error.contains("ADDRESS"), "{error}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let open = key_file(dir.path(), "open", &operator);
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = fails(&addr, Some(&open), &["market", "show"], 2);
        assert!(error.contains("chmod 600"), "{error}");
    }
    let error = fails(&addr, None, &["market", "show"], 2);
    assert!(error.contains("--key-file"), "{error}");
    let list = ok(&addr, None, &["params", "list"]);
    assert_eq!(list.lines().count(), 1 + 13, "{list}");

    // The query needs a login, as every message but Ping does.
    let stream = std::net::TcpStream::connect(router.ready.listen).unwrap();
    let mut anonymous = client::Client::from_stream(stream, SigningKey::from_seed(b"anon"));
    anonymous
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    anonymous
        .send(&MarketStateQuery { query_id: 9 }.into())
        .unwrap();
    let code = expect(&mut anonymous, Duration::from_secs(10), |m| match m {
        Message::ErrorReply(e) => Some(e.code),
        Message::MarketState(_) => panic!("answered before login"),
        _ => None,
    });
    assert_eq!(code, codes::NOT_LOGGED_IN);

    assert!(router.terminate(Duration::from_secs(20)));
    // No router: exit 3.
    let error = fails(&addr, op, &["market", "show"], 3);
    assert!(error.contains("connection"), "{error}");
}

/// A sample's value as the router printed it (every digit of a wei amount), from
/// the shared scraper (`yellowstone_tests::metric_text_value`).
fn metric(metrics: &str, name: &str) -> String {
    yellowstone_tests::metric_text_value(metrics, name)
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .to_string()
}

#[test]
fn r_ops_3_provider_claims_batches_follow_and_metrics_match_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    router_binary(); // built before the clock below starts
                     // Block 0 ends about 6 s after start: the session below is credited in block 0
                     // or, on a slow machine, block 1; the follower prints both.
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        format!("[market]\ngenesis_ms = {}\n", now_ms() - 6_000),
    )
    .unwrap();
    let operator = operator_key();
    let provider_key = SigningKey::from_seed(b"ctl-provider");
    let user_key = SigningKey::from_seed(b"ctl-session-user");
    let operator_file = key_file(dir.path(), "operator", &operator);
    let provider_file = key_file(dir.path(), "provider", &provider_key);
    let watcher_file = key_file(
        dir.path(),
        "watcher",
        &SigningKey::from_seed(b"ctl-watcher"),
    );
    let data = dir.path().join("data");
    let router = RouterProcess::start(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--operator",
        &operator.address().to_string(),
    ]);
    let addr = router.ready.listen.to_string();
    let csv = dir.path().join("balances.csv");
    std::fs::write(
        &csv,
        format!(
            "{},5000000000000000000\n{},1000000000000000000\n",
            user_key.address(),
            provider_key.address()
        ),
    )
    .unwrap();
    ok(
        &addr,
        Some(&operator_file),
        &["balance", "import", csv.to_str().unwrap()],
    );

    // Followers: one pinned to the real router, one to another address (must fail).
    let spawn_follow = |router_address: &str, count: &str| {
        ctl_command(
            &addr,
            Some(&watcher_file),
            &[
                "batches",
                "follow",
                "--count",
                count,
                "--router-address",
                router_address,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let follower = spawn_follow(&router.ready.router_address, "2");
    let impostor = spawn_follow(
        &SigningKey::from_seed(b"not-the-router")
            .address()
            .to_string(),
        "1",
    );

    // One credited session: 300 tokens at 1,000,000 wei per token.
    let network_id = router.ready.network_id;
    let mut provider = connect(router.ready.listen, provider_key.clone());
    let mut user = connect(router.ready.listen, user_key);
    register(&mut provider, network_id, 1, 1_000_000, 4);
    rfc_tokens_left(&mut user, 500);
    answer_next_probe(&mut provider, Duration::from_secs(10));
    let ticket = expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::SessionTicket(t) => Some(t.clone()),
        _ => None,
    });
    let nonce = user.next_nonce();
    user.send_signed(
        Report {
            from: user.address(),
            nonce,
            session_id: ticket.session_id,
            elapsed_ms: 900,
            tokens: 300,
            ttft_ms: 0,
            prompt_tokens: 0,
            outcome: Outcome::Pass,
            signature: Signature::default(),
        }
        .into(),
    )
    .unwrap();
    let ack = expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::ReportAck(a) if a.nonce == nonce => Some(a.clone()),
        _ => None,
    });
    assert!(ack.earned);

    // batches follow: one verified JSON line, the session's block.
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success(), "follow: {}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "--count 2");
    assert_eq!(
        lines[1]["block"].as_u64(),
        lines[0]["block"].as_u64().map(|b| b + 1),
        "consecutive blocks"
    );
    let credited: Vec<&Value> = lines.iter().filter(|b| b["receipts"] != 0).collect();
    assert_eq!(credited.len(), 1, "one block holds the session: {lines:?}");
    let batch = credited[0];
    assert_eq!(batch["verified"], true);
    assert_eq!(batch["receipts"], 1);
    assert_eq!(
        batch["totals"][0]["provider"],
        provider_key.address().to_string()
    );
    assert_eq!(batch["totals"][0]["earned_wei"], "300000000");
    assert_eq!(batch["totals"][0]["credited_wei"], "300000000");
    assert_eq!(batch["credited_wei"], "300000000");
    let out = impostor.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("router signature"));

    // claim an amount, then the rest, then nothing is owed.
    let out = ok(
        &addr,
        Some(&provider_file),
        &["claim", "--amount", "100000000"],
    );
    assert!(
        out.contains("claimed 100000000 wei") && out.contains("owed left 200000000"),
        "{out}"
    );
    let claimed: Value =
        serde_json::from_str(&ok(&addr, Some(&provider_file), &["claim", "--json"])).unwrap();
    assert_eq!(claimed["amount_wei"], "200000000");
    assert_eq!(claimed["owed_left_wei"], "0");
    let error = fails(&addr, Some(&provider_file), &["claim"], 1);
    assert!(error.contains("nothing_owed"), "{error}");
    let error = fails(&addr, Some(&provider_file), &["claim", "--amount", "0"], 2);
    assert!(error.contains("--amount"), "{error}");

    // The market's figures: market show and /metrics agree.
    let market: Value = serde_json::from_str(&ok(
        &addr,
        Some(&watcher_file),
        &["market", "show", "--json"],
    ))
    .unwrap();
    assert_eq!(market["paid_wei"], "300000000", "{market}");
    assert_eq!(market["owed_wei"], "0");
    assert_eq!(market["credited_wei"], "300000000");
    assert!(
        market["last_batch_block"].as_u64().is_some(),
        "a batch was sealed"
    );
    let model = &market["models"][0];
    assert_eq!(model["model_id"], 1);
    assert_eq!(model["providers_live"], 1);
    assert_eq!(model["best_bid_wei_per_token"], "1000000");
    let metrics = yellowstone_tests::metrics_text(router.ready.metrics);
    for (name, key) in [
        ("yellowstone_market_emitted_wei_total", "emitted_wei"),
        ("yellowstone_market_paid_wei_total", "paid_wei"),
        ("yellowstone_market_credited_wei_total", "credited_wei"),
        ("yellowstone_market_shortfall_wei_total", "shortfall_wei"),
        ("yellowstone_market_burned_wei_total", "burned_wei"),
        ("yellowstone_market_owed_wei", "owed_wei"),
        ("yellowstone_market_pool_wei", "pool_wei"),
        (
            "yellowstone_market_max_tokens_per_day",
            "max_tokens_per_day",
        ),
        (
            "yellowstone_market_access_rate_tokens_per_mor",
            "access_rate_tokens_per_mor",
        ),
        ("yellowstone_market_budget_wei_today", "budget_wei_today"),
    ] {
        assert_eq!(
            metric(&metrics, name),
            market[key].as_str().unwrap(),
            "{name}"
        );
    }
    assert_eq!(
        metric(&metrics, "yellowstone_market_providers_live{model=\"1\"}"),
        "1"
    );
    assert_eq!(
        metric(
            &metrics,
            "yellowstone_market_best_bid_wei_per_token{model=\"1\"}"
        ),
        "1000000"
    );
    assert_eq!(
        metric(&metrics, "yellowstone_market_queue_depth{model=\"1\"}"),
        "0"
    );
    assert_eq!(
        metric(&metrics, "yellowstone_market_param{name=\"fail_policy\"}"),
        "0"
    );

    // After the run, the stopped router's ledger says the same.
    assert!(router.terminate(Duration::from_secs(20)));
    let out = Command::new(router_binary())
        .args(["ledger", "--json", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ledger: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, key) in [
        ("yellowstone_market_emitted_wei_total", "emitted_wei"),
        ("yellowstone_market_paid_wei_total", "paid_wei"),
        ("yellowstone_market_credited_wei_total", "credited_wei"),
        ("yellowstone_market_shortfall_wei_total", "shortfall_wei"),
        ("yellowstone_market_burned_wei_total", "burned_wei"),
        ("yellowstone_market_owed_wei", "owed_wei"),
    ] {
        assert_eq!(
            metric(&metrics, name),
            ledger[key].as_str().unwrap(),
            "{name} vs ledger"
        );
    }
}

/// Outsider check of issue 15 (R-OPS-3, R-QUOTA-6): extreme and malformed values get
/// a clear error and a non-zero exit, and change nothing.
#[test]
fn r_ops_3_hostile_values_are_refused_clearly_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let operator = operator_key();
    let operator_file = key_file(dir.path(), "operator", &operator);
    let router = RouterProcess::start(&["--operator", &operator.address().to_string()]);
    let addr = router.ready.listen.to_string();
    let op = Some(operator_file.as_path());
    let user_key = SigningKey::from_seed(b"ctl-hostile-user");
    let user = user_key.address().to_string();
    ok(&addr, op, &["balance", "set", &user, "5000000000000000000"]);

    // Wei above u128: said so (not "not a whole number"), for every wei argument.
    let above = "340282366920938463463374607431768211456";
    let error = fails(&addr, op, &["balance", "set", &user, above], 2);
    assert!(
        error.contains("above the maximum of 340282366920938463463374607431768211455"),
        "{error}"
    );
    let error = fails(&addr, op, &["claim", "--amount", above], 2);
    assert!(error.contains("above the maximum"), "{error}");
    let csv = dir.path().join("above.csv");
    std::fs::write(&csv, format!("{user},{above}\n")).unwrap();
    let error = fails(&addr, op, &["balance", "import", csv.to_str().unwrap()], 2);
    assert!(
        error.contains("line 1") && error.contains("above the maximum"),
        "{error}"
    );
    // u128::MAX itself is a balance.
    ok(
        &addr,
        op,
        &[
            "balance",
            "set",
            &user,
            "340282366920938463463374607431768211455",
        ],
    );
    ok(&addr, op, &["balance", "set", &user, "5000000000000000000"]);

    // A CSV naming an address twice is refused whole (last-wins would hide a typo).
    let twice = dir.path().join("twice.csv");
    std::fs::write(&twice, format!("{user},1\n# again\n{user},2\n")).unwrap();
    let error = fails(
        &addr,
        op,
        &["balance", "import", twice.to_str().unwrap()],
        2,
    );
    assert!(
        error.contains("line 3") && error.contains("line 1"),
        "{error}"
    );

    // More entries per message than fit a frame: refused before sending (the router
    // would close the connection), naming how many fit.
    let many = dir.path().join("many.csv");
    let lines: String = (0..500u32)
        .map(|i| format!("{},7\n", SigningKey::from_seed(&i.to_le_bytes()).address()))
        .collect();
    std::fs::write(&many, lines).unwrap();
    let error = fails(
        &addr,
        op,
        &[
            "balance",
            "import",
            many.to_str().unwrap(),
            "--entries-per-message",
            "500",
        ],
        2,
    );
    assert!(error.contains("at most 452 entries"), "{error}");
    let out = ok(
        &addr,
        op,
        &[
            "balance",
            "import",
            many.to_str().unwrap(),
            "--entries-per-message",
            "452",
        ],
    );
    assert!(out.contains("500 balances set"), "{out}");

    // Parameter values out of range: the refusal names the parameter and its rule.
    for (assignment, rule) in [
        ("token_price_wei_per_1000=0", "above 0"),
        ("mor_supply_wei=0", "above 0"),
        ("speed_window_reports=0", "above 0"),
        ("probe_timeout_ms=0", "above 0"),
        // Above the RFC lifetime a silent provider would hold an RFC past its expiry.
        ("probe_timeout_ms=300001", "rfc_ttl_max_ms"),
        ("probe_timeout_ms=18446744073709551615", "rfc_ttl_max_ms"),
        ("speed_tolerance_percent=4294967296", "at most 4294967295"),
        (
            "suspension_ms=18446744073709551616",
            "at most 18446744073709551615",
        ),
    ] {
        let error = fails(&addr, op, &["params", "set", assignment], 1);
        let name = assignment.split('=').next().unwrap();
        assert!(
            error.contains("invalid_param") && error.contains(name) && error.contains(rule),
            "{assignment}: {error}"
        );
    }
    // Not a number: refused locally with the rule.
    let error = fails(
        &addr,
        op,
        &["params", "set", "speed_tolerance_percent=1e3"],
        2,
    );
    assert!(error.contains("at most 4294967295"), "{error}");
    let error = fails(&addr, op, &["params", "set", "probe_timeout_ms="], 2);
    assert!(error.contains("probe_timeout_ms"), "{error}");
    // A bad-checksum EIP-55 address and a non-hex one.
    let error = fails(
        &addr,
        op,
        &[
            "balance",
            "set",
            "0x5aaeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "1",
        ],
        2,
    );
    assert!(error.contains("EIP-55"), "{error}");
    let error = fails(
        &addr,
        op,
        &[
            "balance",
            "set",
            "0xZZaeb6053f3e94c9b9a09f33669435e7ef1beaed",
            "1",
        ],
        2,
    );
    assert!(error.contains("hexadecimal"), "{error}");
    // Garbage and out-of-range key files.
    for (name, body) in [
        ("garbage", "garbage\n".to_string()),
        ("zero", format!("{}\n", "0".repeat(64))),
        ("order", format!("{}\n", "f".repeat(64))),
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.path().join(format!("{name}.key"));
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = fails(&addr, Some(&path), &["market", "show"], 2);
        assert!(error.contains("key file"), "{name}: {error}");
    }

    // Nothing changed: the parameters are the defaults and the user's quota is its
    // 5 MOR's (R-QUOTA-3: 15,000 T).
    let market: Value =
        serde_json::from_str(&ok(&addr, op, &["market", "show", "--json"])).unwrap();
    assert_eq!(
        market["params"]["token_price_wei_per_1000"],
        "100000000000000"
    );
    assert_eq!(market["params"]["probe_timeout_ms"], "2000");
    assert_eq!(market["params"]["suspension_ms"], "60000");
    let mut user_client = connect(router.ready.listen, user_key);
    assert_eq!(rfc_tokens_left(&mut user_client, 100), 15_000 - 100);
    assert!(router.terminate(Duration::from_secs(20)));
}
