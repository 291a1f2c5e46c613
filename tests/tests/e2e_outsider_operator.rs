//! An operator's outsider check, through the real binary (R-OPS-1): what an operator
//! who runs one router, gives it extreme values, points two at one data directory or
//! scrapes its metrics saw, each now refused with an error naming the value, or
//! exported as a Prometheus user reads it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::{metrics_text, refused, router_binary, RouterProcess};
use yellowstone_wire::SigningKey;

/// An outsider started a second router on a data directory a first one was running
/// on (another port): both served, both journaled and acknowledged reports, each in
/// its own segment from sequence 1, and the directory then refused to start
/// ("sequence break"), so --allow-corrupt-truncate was the only way back and it
/// drops acknowledged records. The second start is now refused, naming the
/// directory and the first router's pid; a router killed with SIGKILL leaves no
/// stale lock.
#[test]
fn a_second_router_on_a_live_data_directory_is_refused() {
    let workdir = tempfile::tempdir().unwrap();
    let data = workdir.path().join("data");
    let data_str = data.to_str().unwrap();
    let operator = operator_key().address().to_string();
    let args = ["--data-dir", data_str, "--operator", operator.as_str()];
    let first = RouterProcess::start(&args);

    let (code, stderr) = refused(
        workdir.path(),
        &[
            "run",
            "--data-dir",
            data_str,
            "--operator",
            &operator,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains(data_str)
            && stderr.contains("another router is running")
            && stderr.contains(&first.pid().to_string()),
        "names the directory and the running router's pid: {stderr}"
    );
    let segments = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("journal-"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(segments(&data).len(), 1, "the refused start wrote nothing");

    // The first router still serves, and what it acknowledges is durable.
    let mut client = connect(first.ready.listen, operator_key());
    let user = SigningKey::from_seed(b"outsider-4-user").address();
    fund(&mut client, &[(user, 5 * WEI_PER_MOR)]);
    drop(client);
    first.kill_hard();

    // No stale lock after a SIGKILL: the same directory starts and verifies.
    let again = RouterProcess::start(&args);
    again.kill_hard();
    let verify = Command::new(router_binary())
        .args(["verify", "--data-dir", data_str])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// An outsider gave --data-dir a regular file: the refusal said only "File exists
/// (os error 17)". It now says the path is not a directory; the file is untouched.
#[test]
fn a_data_directory_that_is_a_file_is_named_so() {
    let workdir = tempfile::tempdir().unwrap();
    let file = workdir.path().join("data");
    std::fs::write(&file, b"not a directory").unwrap();
    let file_str = file.to_str().unwrap();
    let (code, stderr) = refused(
        workdir.path(),
        &[
            "run",
            "--data-dir",
            file_str,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains(file_str) && stderr.contains("not a directory"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
    // Below a file: the creating call's error, with the data directory named.
    let below = file.join("sub");
    let below_str = below.to_str().unwrap();
    let (code, stderr) = refused(
        workdir.path(),
        &[
            "run",
            "--data-dir",
            below_str,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("data directory") && stderr.contains(below_str),
        "{stderr}"
    );
}

/// Values that size what the router allocates or writes at start. An outsider's
/// huge `inbound_queue_depth` panicked ("bounded channel capacity is too large"),
/// huge `outbound_queue_depth`, `connections_max` or io_uring buffers aborted the
/// process ("memory allocation of 446676598576 bytes failed"), and a huge
/// `journal.preallocate_bytes` wrote zeros until the disk filled (5 GB in 6 s)
/// before READY. Each is now refused by `run` and `print-config`, naming the key
/// and the value, before the data directory is created.
#[test]
fn values_that_size_allocations_are_refused_naming_the_value() {
    let workdir = tempfile::tempdir().unwrap();
    let mut cases = vec![
        (
            "[network]\ninbound_queue_depth = 1073741824\n",
            "network.inbound_queue_depth",
            "1073741824",
        ),
        (
            "[network]\noutbound_queue_depth = 9223372036854775807\n",
            "network.outbound_queue_depth",
            "9223372036854775807",
        ),
        (
            "[network]\nconnections_max = 2147483647\n",
            "network.connections_max",
            "2147483647",
        ),
        (
            "[network]\nuring_buffers = 32768\nuring_buffer_bytes = 1048576\n",
            "network.uring_buffers",
            "34359738368",
        ),
        (
            "[journal]\nsegment_bytes_max = 9223372036854775807\n\
             preallocate_bytes = 9223372036854775807\n",
            "journal.preallocate_bytes",
            "9223372036854775807",
        ),
        (
            "[journal]\nbuffer_bytes_max = 5\n",
            "journal.buffer_bytes_max",
            "5",
        ),
        (
            // R-SESSION-1: a start deadline past the session's expiry never fires.
            "[market]\nticket_start_timeout_ms = 9223372036854775807\n",
            "market.ticket_start_timeout_ms",
            "9223372036854775807",
        ),
        (
            "[network]\nconn_send_bytes_max = 5\n",
            "network.conn_send_bytes_max",
            "5",
        ),
        (
            // Issue 27: a refusal budget of 0 would close every connection at its
            // first refusal.
            "[network]\nconn_refusals_per_s_max = 0\n",
            "network.conn_refusals_per_s_max",
            "0",
        ),
        (
            "[network]\naddr_refusals_per_s_max = 0\n",
            "network.addr_refusals_per_s_max",
            "0",
        ),
        // The engine's refusals of [market] values named neither the router's key
        // nor the value ("market: mor_supply_wei must be > 0" for mor_supply_mor,
        // "sessions_open_max must fit the slot bits" without the bound).
        (
            "[market]\nsessions_open_max = 4294967295\n",
            "market.sessions_open_max = 4294967295",
            "16777215",
        ),
        (
            "[market]\nmor_supply_mor = 0\n",
            "market.mor_supply_mor",
            "0",
        ),
        (
            "[market]\npenalty_window_reports = 5000\n",
            "market.penalty_window_reports",
            "5000",
        ),
        // R-PERF-1 (issue 27): the speed windows' per-user share and speed bound.
        (
            "[market]\nspeed_window_user_reports_max = 0\n",
            "speed_window_user_reports_max",
            "not 0",
        ),
        (
            "[market]\ntokens_per_s_max = 0\n",
            "tokens_per_s_max",
            "not 0",
        ),
    ];
    // A core the process cannot run on was a warning at run time ("could not pin
    // thread to core"); with one core nothing is pinned, so only check with two.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        cases.push((
            "[threads]\ngateway_cores = [0, 100000]\n",
            "threads.gateway_cores",
            "100000",
        ));
        cases.push((
            "[threads]\nengine_core = 100000\n",
            "threads.engine_core",
            "100000",
        ));
    }
    let data = workdir.path().join("data");
    let data_str = data.to_str().unwrap();
    for (toml, key, value) in cases {
        let path = workdir.path().join("router.toml");
        std::fs::write(&path, toml).unwrap();
        let path = path.to_str().unwrap();
        for command in ["print-config", "run"] {
            let mut args = vec![command, "--config", path];
            if command == "run" {
                args.extend(["--data-dir", data_str, "--listen", "127.0.0.1:0"]);
                args.extend(["--metrics-listen", "127.0.0.1:0"]);
            }
            let (code, stderr) = refused(workdir.path(), &args);
            assert_ne!(code, 0, "{command} with {toml:?}");
            assert!(
                stderr.contains(key) && stderr.contains(value),
                "{command} with {toml:?} names {key} and {value}: {stderr}"
            );
            assert!(!data.exists(), "{command} with {toml:?} created {data_str}");
        }
    }
    // The same cores with pinning off are not checked: nothing is pinned.
    let path = workdir.path().join("unpinned.toml");
    std::fs::write(&path, "[threads]\npin = false\nengine_core = 100000\n").unwrap();
    let output = Command::new(router_binary())
        .args(["print-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The metrics as a Prometheus user reads them. An outsider found counts that only
/// grow (journal records, fsyncs, snapshots, batches) exported as gauges without
/// `_total`, so `rate()` misreads a restart, and four of the six stage summaries
/// (queue_wait, match, probe_rtt, send) that nothing ever recorded: NaN forever,
/// read as "never happens". Every counter is now TYPE counter named `_total`, every
/// `_total` is a counter, and every stage summary exported is fed.
#[test]
fn metrics_counters_are_counters_and_every_summary_is_fed() {
    let operator = operator_key().address().to_string();
    let router = RouterProcess::start(&["--operator", &operator]);
    let mut client = connect(router.ready.listen, operator_key());
    let user = SigningKey::from_seed(b"outsider-4-user").address();
    // The engine's stages time one command in 16: enough commands for each.
    for i in 0..48u128 {
        fund(&mut client, &[(user, (i + 1) * WEI_PER_MOR)]);
    }
    let text = metrics_text(router.ready.metrics);
    let body = &text[text.find("\r\n\r\n").expect("an HTTP response") + 4..];
    let mut families = 0;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        families += 1;
        let (name, kind) = rest.split_once(' ').unwrap();
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}: a counter must end in _total and only a counter may"
        );
    }
    assert!(families > 40, "{body}");
    for name in [
        "yellowstone_journal_records_total",
        "yellowstone_journal_fsyncs_total",
        "yellowstone_batches_total",
        "yellowstone_sessions_credited_total",
        "yellowstone_snapshots_total",
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} counter\n")),
            "{name}: {body}"
        );
    }
    // Signed BalanceUpdates were decoded, verified, applied and made durable: every
    // exported stage has samples, so none is an always-empty summary.
    let mut stages = 0;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("yellowstone_stage_latency_seconds_count{stage=\"") {
            stages += 1;
            let (stage, count) = rest.split_once("\"} ").unwrap();
            let count: u64 = count.trim().parse().unwrap();
            assert!(count > 0, "stage {stage} is exported but never recorded");
        }
    }
    assert_eq!(stages, 4, "{body}");
    assert!(!body.contains(" NaN\n"), "{body}");
}

/// An outsider's addresses and keys that the router cannot use: the refusals said
/// "metrics endpoint: Address already in use (os error 98)", "gateways: Cannot
/// assign requested address" or "identity.operator: an address is 0x followed by
/// 40 hex digits" without the value given. Each now names the key (and flag) and
/// the value; a secret key is never echoed, only its length.
#[test]
fn addresses_and_keys_that_cannot_be_used_are_named() {
    let workdir = tempfile::tempdir().unwrap();
    let first = RouterProcess::start(&["--in-memory"]);
    let busy_metrics = first.ready.metrics.to_string();
    let busy_listen = first.ready.listen.to_string();
    let secret = "ab".repeat(31);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--listen", "127.0.0.1:0", "--metrics-listen", &busy_metrics],
            vec!["metrics.listen", &busy_metrics, "already in use"],
        ),
        (
            vec!["--listen", &busy_listen, "--metrics-listen", "127.0.0.1:0"],
            vec!["network.listen", &busy_listen, "already in use"],
        ),
        (
            vec!["--operator", "0x1234", "--listen", "127.0.0.1:0"],
            vec!["identity.operator", "0x1234"],
        ),
        (
            vec!["--router-key-hex", &secret, "--listen", "127.0.0.1:0"],
            vec!["identity.router_key_hex", "62 characters given"],
        ),
    ];
    for (extra, named) in cases {
        let mut args = vec!["run", "--in-memory"];
        args.extend(&extra);
        if !extra.contains(&"--metrics-listen") {
            args.extend(["--metrics-listen", "127.0.0.1:0"]);
        }
        let (code, stderr) = refused(workdir.path(), &args);
        assert_ne!(code, 0, "{extra:?}");
        for text in named {
            assert!(stderr.contains(text), "{extra:?} names {text:?}: {stderr}");
        }
        assert!(!stderr.contains(&secret), "the secret is echoed: {stderr}");
    }
    // claim-proof's --provider said what an address is, not what it was given.
    let (code, stderr) = refused(
        workdir.path(),
        &[
            "claim-proof",
            "--data-dir",
            "/nonexistent",
            "--provider",
            "0x12",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--provider") && stderr.contains("0x12"),
        "{stderr}"
    );
    // A flag that cannot apply: --allow-corrupt-truncate with no journal started an
    // in-memory router as if it meant something.
    let (code, stderr) = refused(
        workdir.path(),
        &["run", "--in-memory", "--allow-corrupt-truncate"],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--allow-corrupt-truncate") && stderr.contains("--in-memory"),
        "{stderr}"
    );
    assert!(first.terminate(Duration::from_secs(20)));
}

/// docs/configuration.md says `print-config` prints every key with its default; an outsider
/// looked there for the data directory's key and found none: keys without a
/// default value (journal.data_dir, identity.balance_snapshot, threads.engine_core,
/// threads.journal_core) were left out. They are now listed in a closing comment
/// with what unset means, and the output still reads back as the same
/// configuration.
#[test]
fn print_config_names_the_keys_without_a_default() {
    let workdir = tempfile::tempdir().unwrap();
    let print = |config: Option<&Path>| -> String {
        let mut command = Command::new(router_binary());
        command.arg("print-config");
        if let Some(path) = config {
            command.arg("--config").arg(path);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let defaults = print(None);
    for key in [
        "# [journal] data_dir = ",
        "yellowstone-data",
        "# [identity] balance_snapshot = ",
        "# [threads] engine_core = ",
        "# [threads] journal_core = ",
    ] {
        assert!(defaults.contains(key), "{key}: {defaults}");
    }
    let path = workdir.path().join("set.toml");
    std::fs::write(
        &path,
        "[journal]\ndata_dir = \"/srv/ys\"\n[threads]\npin = false\nengine_core = 1\n",
    )
    .unwrap();
    let set = print(Some(&path));
    assert!(set.contains("data_dir = \"/srv/ys\""), "{set}");
    assert!(!set.contains("# [journal] data_dir"), "{set}");
    assert!(!set.contains("# [threads] engine_core"), "{set}");
    assert!(set.contains("# [threads] journal_core = "), "{set}");
    let printed = workdir.path().join("printed.toml");
    std::fs::write(&printed, &set).unwrap();
    assert_eq!(print(Some(&printed)), set);
}

/// Builds `yellowstone-loadgen` with the test's profile (a no-op when fresh) and
/// returns its path, beside the router binary.
fn loadgen_binary() -> std::path::PathBuf {
    let router = router_binary();
    let profile_dir = router.parent().unwrap().to_path_buf();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "-q", "-p", "yellowstone-loadgen", "--bin"])
        .arg("yellowstone-loadgen");
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        command.arg("--release");
    }
    assert!(command.status().unwrap().success(), "building the loadgen");
    profile_dir.join("yellowstone-loadgen")
}

/// An operator load-tested a router with the bundled generator and killed the
/// router (`kill -9`) mid-run to check its restart: the loadgen printed only
/// "yellowstone-loadgen: user connection: connection closed by the router" and
/// exited 2, with no report, so nothing told what the clients had been
/// acknowledged. It now reports the run up to the loss ("router lost", the
/// acknowledged creditable reports and their wei, also in --json), fails its
/// self-check (exit 1), and after the restart the ledger credits at least what was
/// acknowledged.
#[test]
fn the_loadgen_reports_what_it_was_told_when_the_router_dies() {
    let workdir = tempfile::tempdir().unwrap();
    let data = workdir.path().join("data");
    let data_str = data.to_str().unwrap();
    let operator = operator_key().address().to_string();
    let secret = hex::encode(operator_key().secret_bytes());
    let router = RouterProcess::start(&["--data-dir", data_str, "--operator", &operator]);
    let json = workdir.path().join("run.json");
    let mut loadgen = Command::new(loadgen_binary())
        .args(["--target", &router.ready.listen.to_string()])
        .args([
            "--operator-key",
            &secret,
            "--duration",
            "8",
            "--rate",
            "100",
        ])
        .args(["--users", "4", "--providers", "4", "--quiet", "--json"])
        .arg(&json)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the router once some reports have been acknowledged (the run's window is
    // 8 s; funding and registration take about a second).
    std::thread::sleep(Duration::from_secs(4));
    router.kill_hard();
    let deadline = Instant::now() + Duration::from_secs(60);
    while loadgen.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = loadgen.kill();
            let _ = loadgen.wait();
            panic!("the loadgen did not end after the router died");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = loadgen.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("router lost") && stdout.contains("self-check: FAILED"),
        "{stdout}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(summary["router_lost"].is_string(), "{summary:#}");
    let acknowledged: u128 = summary["acknowledged_creditable_wei"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        summary["consistency"]["expected_credits"].as_u64().unwrap() > 0 && acknowledged > 0,
        "the run acknowledged creditable reports before the kill: {summary:#}"
    );

    // Restart on the same directory and let it seal the block that was open.
    let again = RouterProcess::start(&["--data-dir", data_str, "--operator", &operator]);
    let genesis: u64 = std::fs::read_to_string(data.join("genesis_ms"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let now = now_ms();
    let next_boundary = genesis + (now - genesis).div_ceil(12_000) * 12_000;
    std::thread::sleep(Duration::from_millis(next_boundary - now + 1_500));
    assert!(again.terminate(Duration::from_secs(20)));
    let ledger = Command::new(router_binary())
        .args(["ledger", "--json", "--data-dir", data_str])
        .output()
        .unwrap();
    assert!(ledger.status.success());
    let ledger: serde_json::Value = serde_json::from_slice(&ledger.stdout).unwrap();
    let wei = |key: &str| -> u128 { ledger[key].as_str().unwrap().parse().unwrap() };
    assert!(
        wei("credited_wei") + wei("shortfall_wei") >= acknowledged,
        "acknowledged {acknowledged} wei, ledger {ledger:#}"
    );
}

/// Time values an outsider can get wrong by a unit. `market.genesis_ms` given in
/// microseconds started a router that refused every RFC as invalid_expiry (its
/// market opens in 50,000 years); it is now refused, naming the value, and a
/// genesis merely ahead of the clock is logged at start. A huge
/// `journal.fsync_interval_ms` made durability `interval` never fsync; it is now
/// bounded (a minute).
#[test]
fn time_values_off_by_a_unit_are_refused_or_logged() {
    let workdir = tempfile::tempdir().unwrap();
    let micros = now_ms() * 1_000;
    for (toml, key, value) in [
        (
            format!("[market]\ngenesis_ms = {micros}\n"),
            "market.genesis_ms",
            micros.to_string(),
        ),
        (
            "[journal]\ndurability = \"interval\"\nfsync_interval_ms = 9223372036854775807\n"
                .to_string(),
            "journal.fsync_interval_ms",
            "9223372036854775807".to_string(),
        ),
    ] {
        let path = workdir.path().join("router.toml");
        std::fs::write(&path, &toml).unwrap();
        let (code, stderr) = refused(
            workdir.path(),
            &[
                "run",
                "--config",
                path.to_str().unwrap(),
                "--in-memory",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
        );
        assert_ne!(code, 0, "{toml}");
        assert!(
            stderr.contains(key) && stderr.contains(&value),
            "{toml}: {stderr}"
        );
    }

    // Ten minutes ahead: it starts, and says why RFCs are refused until then.
    let path = workdir.path().join("ahead.toml");
    std::fs::write(
        &path,
        format!("[market]\ngenesis_ms = {}\n", now_ms() + 600_000),
    )
    .unwrap();
    let mut child = Command::new(router_binary())
        .args(["run", "--in-memory", "--config", path.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while !seen.contains("genesis") && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&line);
            seen.push('\n');
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains("market.genesis_ms") && seen.contains("invalid_expiry"),
        "{seen}"
    );
}

/// `verify --json` on a damaged journal printed nothing on stdout (the error went
/// to stderr only), so a script reading its JSON got an empty line. stdout is now
/// one JSON object either way: `"ok": true` with the report, or `"ok": false` with
/// the error naming the segment and offset; the exit status is 1 then.
#[test]
fn verify_json_gives_a_verdict_on_a_damaged_journal() {
    let workdir = tempfile::tempdir().unwrap();
    let data = workdir.path().join("data");
    let data_str = data.to_str().unwrap();
    let operator = operator_key().address().to_string();
    let router = RouterProcess::start(&["--data-dir", data_str, "--operator", &operator]);
    let mut client = connect(router.ready.listen, operator_key());
    for i in 0..40u128 {
        let user = SigningKey::from_seed(format!("outsider-4-user-{i}").as_bytes()).address();
        fund(&mut client, &[(user, (i + 1) * WEI_PER_MOR)]);
    }
    drop(client);
    router.kill_hard();
    let verify = || {
        let output = Command::new(router_binary())
            .args(["verify", "--json", "--data-dir", data_str])
            .output()
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("stdout is JSON ({e}): {output:?}"));
        (output.status.code(), value)
    };
    let (code, value) = verify();
    assert_eq!((code, &value["ok"]), (Some(0), &serde_json::json!(true)));

    let segment = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("journal-"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // The records end where the zero-filled preallocated room begins.
    let end = bytes.iter().rposition(|b| *b != 0).unwrap();
    bytes[end / 2] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    let (code, value) = verify();
    assert_eq!(code, Some(1), "{value}");
    assert_eq!(value["ok"], false, "{value}");
    let error = value["error"].as_str().unwrap();
    assert!(
        error.contains(&segment.display().to_string()) && error.contains("offset"),
        "{error}"
    );
}

/// The bundled generator with values it cannot honour: `--rate 1e12` planned a
/// trillion RFCs in memory (killed after filling it), `--rate 0`, `--users 0` or
/// `--duration 0` ran something else than asked (nothing, or a silent 1) and said
/// OK, shares above 1 were taken as given, and a bad `--operator-key` did not name
/// the flag. Each is now refused at once (exit 2), naming the flag and the value,
/// before any router or connection is started.
#[test]
fn loadgen_arguments_it_cannot_honour_are_refused() {
    let loadgen = loadgen_binary();
    let cases: [(&[&str], &[&str]); 10] = [
        (&["--rate", "1e12"], &["--rate", "1000000000000"]),
        (&["--rate", "0"], &["--rate", "not 0"]),
        (&["--rate", "inf"], &["--rate", "inf"]),
        (&["--duration", "0"], &["--duration", "not 0"]),
        (&["--users", "0"], &["--users", "not 0"]),
        (&["--providers", "20000"], &["--providers", "20000"]),
        (&["--fail-reports", "2.5"], &["--fail-reports", "2.5"]),
        (
            &["--slow-providers", "0.6", "--dead-providers", "0.6"],
            &["--slow-providers", "--dead-providers", "0.6 + 0.6"],
        ),
        (
            &["--target", "127.0.0.1:9", "--operator-key", "zz"],
            &["--operator-key"],
        ),
        (
            &["--ping-connections", "5", "--ping-pipeline", "0"],
            &["--ping-pipeline", "0"],
        ),
    ];
    for (args, named) in cases {
        let started = Instant::now();
        let output = Command::new(&loadgen)
            .args(args)
            .arg("--quiet")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        for text in named {
            assert!(stderr.contains(text), "{args:?} names {text:?}: {stderr}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} was refused only after {:?}",
            started.elapsed()
        );
        assert!(output.stdout.is_empty(), "{args:?} ran: {output:?}");
    }
}

/// docs/PROTOCOL.md's limits table says the offer capacity, offers per
/// registration, endpoint length and balance entries per update are "configured by"
/// `market.offer_capacity_max` and the like, but the router refused those keys
/// ("unknown field"). They are now `[market]` keys (print-config lists them), bounded
/// by the wire's limits, and the engine applies them.
#[test]
fn the_market_limits_the_protocol_names_are_keys() {
    use yellowstone_wire::*;
    let workdir = tempfile::tempdir().unwrap();
    let printed = Command::new(router_binary())
        .arg("print-config")
        .output()
        .unwrap();
    let printed = String::from_utf8(printed.stdout).unwrap();
    for key in [
        "offers_per_provider_max = 64",
        "offer_capacity_max = 100000",
        "endpoint_bytes_max = 255",
        "balance_entries_max = 100000",
    ] {
        assert!(printed.contains(key), "{key}: {printed}");
    }
    let path = workdir.path().join("router.toml");
    std::fs::write(&path, "[market]\nendpoint_bytes_max = 256\n").unwrap();
    let (code, stderr) = refused(
        workdir.path(),
        &["print-config", "--config", path.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("market.endpoint_bytes_max") && stderr.contains("256"),
        "{stderr}"
    );

    std::fs::write(&path, "[market]\noffer_capacity_max = 2\n").unwrap();
    let operator = operator_key().address().to_string();
    let router = RouterProcess::start(&[
        "--in-memory",
        "--operator",
        &operator,
        "--config",
        path.to_str().unwrap(),
    ]);
    let mut operator_client = connect(router.ready.listen, operator_key());
    let provider_key = SigningKey::from_seed(b"outsider-4-provider");
    fund(
        &mut operator_client,
        &[(provider_key.address(), WEI_PER_MOR)],
    );
    let mut provider = connect(router.ready.listen, provider_key.clone());
    let network_id = router.ready.network_id;
    let register = |provider: &mut yellowstone_wire::client::Client, capacity: u32| {
        let weights_hash = yellowstone_wire::demo::demo_weights_hash(1);
        let weights_proof = provider_key.sign_digest(
            &yellowstone_wire::signature::weights_proof_digest(network_id, 1, &weights_hash),
        );
        let nonce = provider.next_nonce();
        provider
            .send_signed(
                RegisterProvider {
                    from: provider.address(),
                    nonce,
                    endpoint: "127.0.0.1:9999".into(),
                    offers: vec![Offer {
                        model_id: 1,
                        unit: 0,
                        weights_hash,
                        weights_proof,
                        price_wei_per_token: 1_000,
                        capacity,
                    }],
                    signature: Signature::default(),
                }
                .into(),
            )
            .unwrap();
        expect(provider, Duration::from_secs(10), |m| match m {
            Message::Ack(ack) if ack.nonce == nonce => Some(None),
            Message::ErrorReply(e) if e.ref_nonce == nonce => Some(Some(e.code)),
            _ => None,
        })
    };
    assert_eq!(
        register(&mut provider, 3).map(codes::name),
        Some("invalid_capacity"),
        "a capacity above market.offer_capacity_max = 2"
    );
    assert_eq!(register(&mut provider, 2), None, "at the bound");
    drop(provider);
    drop(operator_client);
    assert!(router.terminate(Duration::from_secs(20)));
}

/// An outside review: values accepted by `print-config` that broke the router.
/// `market.accounts_max = 0` passed print-config, then `run` panicked creating the
/// engine ("the first account always fits") after writing the data directory, which
/// could never start again; `sessions_open_max = 0` hung every request 30 s, and the
/// other zeros left a market that refuses or never credits anything;
/// `identity.router_key_hex = "00"` and a huge `network.fds_reserved` passed
/// print-config and were refused by `run` only. Each is now refused by both, from the
/// same validation, naming the key and the bound, before the data directory is
/// created.
#[test]
fn values_that_leave_the_market_unusable_are_refused_naming_the_bound() {
    let workdir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[market]\naccounts_max = 0\n",
            "market.accounts_max = 0",
            "at least 2",
        ),
        (
            "[market]\naccounts_max = 1\n",
            "market.accounts_max = 1",
            "at least 2",
        ),
        (
            "[market]\nsessions_open_max = 0\n",
            "market.sessions_open_max = 0",
            "at least 1",
        ),
        (
            "[market]\nrfcs_open_max = 0\n",
            "market.rfcs_open_max = 0",
            "at least 1",
        ),
        (
            "[market]\nrfc_ttl_max_ms = 0\n",
            "market.rfc_ttl_max_ms = 0",
            "at least 1",
        ),
        (
            "[market]\nrfc_ttl_max_ms = 9223372036854775807\n",
            "market.rfc_ttl_max_ms = 9223372036854775807",
            "at most 86400000",
        ),
        (
            "[market]\nsession_ttl_ms = 9223372036854775807\n",
            "market.session_ttl_ms = 9223372036854775807",
            "at most 86400000",
        ),
        (
            "[market]\nprobe_timeout_ms = 9223372036854775807\n",
            "market.probe_timeout_ms = 9223372036854775807",
            "at most 86400000",
        ),
        (
            "[market]\nsuspension_ms = 9223372036854775807\n",
            "market.suspension_ms = 9223372036854775807",
            "at most 2592000000",
        ),
        (
            "[market]\ntokens_max_limit = 0\n",
            "market.tokens_max_limit = 0",
            "at least 1",
        ),
        (
            "[market]\nproviders_max = 0\n",
            "market.providers_max = 0",
            "at least 1",
        ),
        (
            "[market]\ncompute_budget_mor_per_day = 0\n",
            "market.compute_budget_mor_per_day = 0",
            "at least 1",
        ),
        (
            "[market]\npenalty_points_suspend = 0\n",
            "market.penalty_points_suspend = 0",
            "at least 1",
        ),
        (
            "[identity]\nrouter_key_hex = \"00\"\n",
            "identity.router_key_hex",
            "64 hex digits",
        ),
        (
            "[network]\nfds_reserved = 9223372036854775807\n",
            "network.fds_reserved",
            "1048576",
        ),
        (
            "[network]\nconn_idle_timeout_ms = 9223372036854775807\n",
            "network.conn_idle_timeout_ms",
            "at most 86400000",
        ),
        (
            "[metrics]\nrequest_timeout_ms = 9223372036854775807\n",
            "metrics.request_timeout_ms",
            "86400000",
        ),
        (
            "[journal]\nbuffer_bytes_max = 9223372036854775807\n\
             snapshot_replica_queue_bytes_max = 9223372036854775807\n",
            "journal.buffer_bytes_max",
            "at most 68719476736",
        ),
    ];
    let data = workdir.path().join("data");
    let data_str = data.to_str().unwrap();
    for (toml, key, bound) in cases {
        let path = workdir.path().join("router.toml");
        std::fs::write(&path, toml).unwrap();
        let path = path.to_str().unwrap();
        for command in ["print-config", "run"] {
            let mut args = vec![command, "--config", path];
            if command == "run" {
                args.extend(["--data-dir", data_str, "--listen", "127.0.0.1:0"]);
                args.extend(["--metrics-listen", "127.0.0.1:0"]);
            }
            let (code, stderr) = refused(workdir.path(), &args);
            assert_ne!(code, 0, "{command} with {toml:?}");
            assert!(
                stderr.contains(key) && stderr.contains(bound),
                "{command} with {toml:?} names {key} and {bound}: {stderr}"
            );
            assert!(
                !stderr.contains("panicked"),
                "{command} with {toml:?}: {stderr}"
            );
            assert!(!data.exists(), "{command} with {toml:?} created {data_str}");
        }
    }
}

/// An outside review: a 1 MB `identity.operator` or `network.listen` was repeated
/// whole in the error. Echoed values are now cut to their first 64 characters and
/// their length, by print-config and by `run`.
#[test]
fn huge_values_are_echoed_clipped() {
    let workdir = tempfile::tempdir().unwrap();
    let big = "1".repeat(1 << 20);
    let data = workdir.path().join("data");
    let data_str = data.to_str().unwrap();
    for (toml, key) in [
        (
            format!("[identity]\noperator = \"{big}\"\n"),
            "identity.operator",
        ),
        (format!("[network]\nlisten = \"{big}\"\n"), "listen"),
        (
            format!("[journal]\ndurability = \"{big}\"\n"),
            "journal.durability",
        ),
        (
            format!("[market]\nfail_policy = \"{big}\"\n"),
            "fail_policy",
        ),
    ] {
        let path = workdir.path().join("router.toml");
        std::fs::write(&path, &toml).unwrap();
        let path = path.to_str().unwrap();
        for command in ["print-config", "run"] {
            let mut args = vec![command, "--config", path];
            if command == "run" {
                args.extend(["--data-dir", data_str, "--listen", "127.0.0.1:0"]);
                args.extend(["--metrics-listen", "127.0.0.1:0"]);
            }
            let (code, stderr) = refused(workdir.path(), &args);
            assert_ne!(code, 0, "{command} with {key}");
            assert!(
                stderr.contains(key) && stderr.contains("bytes)") && stderr.len() < 4096,
                "{command} with {key}: {} bytes of error: {}",
                stderr.len(),
                &stderr[..stderr.len().min(600)]
            );
            assert!(!data.exists(), "{command} with {key} created {data_str}");
        }
    }
}

/// An outside review: a restart with a changed `accounts_max` was told to "change
/// them at run time with SetParams", which cannot change it. The hint now names
/// which differing keys SetParams can change and which need a new data directory.
#[test]
fn the_restart_hint_names_what_set_params_cannot_change() {
    let workdir = tempfile::tempdir().unwrap();
    let data = workdir.path().join("data");
    let data_str = data.to_str().unwrap();
    let config = workdir.path().join("router.toml");
    std::fs::write(&config, "[market]\naccounts_max = 1000\n").unwrap();
    let config_str = config.to_str().unwrap();
    let router = RouterProcess::start(&["--data-dir", data_str, "--config", config_str]);
    assert!(router.terminate(Duration::from_secs(20)), "graceful stop");

    std::fs::write(
        &config,
        "[market]\naccounts_max = 2000\npenalty_points_suspend = 7\n",
    )
    .unwrap();
    let (code, stderr) = refused(
        workdir.path(),
        &[
            "run",
            "--data-dir",
            data_str,
            "--config",
            config_str,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("accounts_max cannot be changed with SetParams")
            && stderr.contains("new data directory")
            && stderr.contains("penalty_points_suspend can be changed at run time with SetParams")
            && !stderr.contains("accounts_max, ")
            && !stderr.contains(", accounts_max"),
        "{stderr}"
    );
}

/// Issue 27 case 6: the loadgen run twice against one router with the same flags
/// saw every RFC of the second run refused `replay` (its nonces ran a second per RFC
/// ahead of the clock, from the same seeded keys), completed no session, and still
/// printed "self-check: OK" and exited 0. Its nonces now stay near the clock, so the
/// rerun completes sessions; and a run refused wholesale fails its self-check.
#[test]
fn the_loadgen_run_twice_with_the_same_flags_is_never_refused_replay() {
    let workdir = tempfile::tempdir().unwrap();
    let data = workdir.path().join("data");
    let operator = operator_key().address().to_string();
    let secret = hex::encode(operator_key().secret_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // A block boundary 5 s from now, then every 12 s: each run's batch comes soon.
    let genesis = (now + 5_000 - 12_000).to_string();
    let config = workdir.path().join("router.toml");
    std::fs::write(&config, format!("[market]\ngenesis_ms = {genesis}\n")).unwrap();
    let router = RouterProcess::start(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--operator",
        &operator,
    ]);
    let listen = router.ready.listen.to_string();
    for run in 1..=2 {
        let output = Command::new(loadgen_binary())
            .args(["--target", &listen, "--operator-key", &secret])
            .args(["--genesis-ms", &genesis, "--duration", "2", "--rate", "40"])
            .args(["--users", "2", "--providers", "2", "--seed", "7"])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stdout.contains("replay"),
            "run {run} was refused replay: {stdout}{stderr}"
        );
        assert!(
            stdout.contains("self-check: OK"),
            "run {run}: {stdout}{stderr}"
        );
        assert_eq!(output.status.code(), Some(0), "run {run}: {stdout}{stderr}");
    }
}
