//! An outsider's bad inputs to the operator commands, through the real binary: each
//! one refused with a non-zero exit and an error naming what is wrong (never a
//! panic), and nothing created or changed on disk (R-OPS-2, R-CHAIN-1, R-CLAIM-1).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use yellowstone_tests::{refused, router_binary};

#[test]
fn a_directory_given_as_key_file_is_named_a_directory() {
    let workdir = tempfile::tempdir().unwrap();
    let key_dir = workdir.path().join("keys");
    std::fs::create_dir(&key_dir).unwrap();
    let key_dir = key_dir.to_str().unwrap();
    let (code, stderr) = refused(workdir.path(), &["address", "--key-file", key_dir]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(key_dir) && stderr.contains("is a directory"),
        "names the path and says it is a directory: {stderr}"
    );
    assert!(
        !stderr.contains("chmod"),
        "no misleading chmod advice: {stderr}"
    );

    // The same kind at start: a data directory whose router.key is a directory.
    let data_dir = workdir.path().join("data");
    std::fs::create_dir_all(data_dir.join("router.key")).unwrap();
    let data_dir = data_dir.to_str().unwrap();
    let (code, stderr) = refused(
        workdir.path(),
        &[
            "run",
            "--data-dir",
            data_dir,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("router.key") && stderr.contains("is a directory"),
        "names router.key and says it is a directory: {stderr}"
    );
}

#[test]
fn settlement_and_claim_proof_on_a_missing_data_dir_name_the_directory() {
    let workdir = tempfile::tempdir().unwrap();
    let missing = workdir.path().join("no-such-dir");
    let missing_str = missing.to_str().unwrap();
    let (code, stderr) = refused(
        workdir.path(),
        &[
            "settlement",
            "--data-dir",
            missing_str,
            "--epoch",
            "1",
            "--json",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains(missing_str) && stderr.contains("not a router data directory"),
        "says the directory is not a data directory (not that a key is missing): {stderr}"
    );
    let provider = "0x1111111111111111111111111111111111111111";
    let (code, stderr) = refused(
        workdir.path(),
        &[
            "claim-proof",
            "--data-dir",
            missing_str,
            "--provider",
            provider,
        ],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains(missing_str) && stderr.contains("not a router data directory"),
        "{stderr}"
    );
    // An empty directory is not a data directory either, and stays empty.
    let empty = workdir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, stderr) = refused(
        workdir.path(),
        &[
            "settlement",
            "--data-dir",
            empty.to_str().unwrap(),
            "--epoch",
            "5",
        ],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("not a router data directory"), "{stderr}");
    assert!(!missing.exists(), "a refused command creates nothing");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn a_balance_snapshot_listing_an_address_twice_or_a_balance_above_u128_is_refused() {
    let workdir = tempfile::tempdir().unwrap();
    let address = "0x1111111111111111111111111111111111111111";
    let run = |snapshot: &str| {
        let path = workdir.path().join("snapshot.csv");
        std::fs::write(&path, snapshot).unwrap();
        refused(
            workdir.path(),
            &[
                "run",
                "--in-memory",
                "--balance-snapshot",
                path.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
        )
    };
    // Which of two balances was meant is ambiguous: refused, naming both lines.
    let (code, stderr) = run(&format!(
        "{address},340282366920938463463374607431768211455\n# note\n{address},5\n"
    ));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("line 3") && stderr.contains("line 1") && stderr.contains("already"),
        "names both lines: {stderr}"
    );
    // One wei above u128::MAX: refused, naming the line and the range.
    let (code, stderr) = run(&format!(
        "{address},340282366920938463463374607431768211456\n"
    ));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("line 1") && stderr.contains("340282366920938463463374607431768211455"),
        "names the line and the largest balance: {stderr}"
    );
}

#[test]
fn print_config_refuses_what_run_refuses() {
    let workdir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[market]\nbid_wei_per_token_max = 0\n",
            "bid_wei_per_token_max",
        ),
        (
            "[market]\nunused_budget = \"burn\"\nbudget_policy = \"pool-percent\"\n",
            "pool-percent",
        ),
        (
            "[market]\nbid_wei_per_token_max = -1\n",
            "bid_wei_per_token_max",
        ),
        (
            "[market]\nbid_wei_per_token_max = \"abc\"\n",
            "bid_wei_per_token_max",
        ),
        // The [metrics] and [threads] checks were never run for the router: an
        // outsider's metrics.request_timeout_ms = 0 started a router whose every
        // scrape was closed at once.
        (
            "[metrics]\nrequest_timeout_ms = 0\n",
            "metrics.request_timeout_ms",
        ),
        (
            "[metrics]\nconnections_max = 0\n",
            "metrics.connections_max",
        ),
        (
            "[metrics]\nrequest_bytes_max = 10\n",
            "metrics.request_bytes_max",
        ),
        (
            "[threads]\ngateway_threads = 300\n",
            "threads.gateway_threads",
        ),
    ];
    for (toml, named) in cases {
        let path = workdir.path().join("router.toml");
        std::fs::write(&path, toml).unwrap();
        let path = path.to_str().unwrap();
        for command in ["print-config", "run"] {
            let mut args = vec![command, "--config", path];
            if command == "run" {
                args.extend(["--in-memory", "--listen", "127.0.0.1:0"]);
                args.extend(["--metrics-listen", "127.0.0.1:0"]);
            }
            let (code, stderr) = refused(workdir.path(), &args);
            assert_ne!(code, 0, "{command} with {toml:?}");
            assert!(
                stderr.contains(path) || command == "run",
                "{command} names the file: {stderr}"
            );
            assert!(stderr.contains(named), "{command} names {named}: {stderr}");
        }
    }
    // A good file still prints, and what it prints is accepted back.
    let path = workdir.path().join("good.toml");
    std::fs::write(&path, "[market]\nbid_wei_per_token_max = 1\n").unwrap();
    let output = Command::new(router_binary())
        .args(["print-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = workdir.path().join("printed.toml");
    std::fs::write(&printed, &output.stdout).unwrap();
    let again = Command::new(router_binary())
        .args(["print-config", "--config", printed.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(output.stdout, again.stdout);
}

/// An outsider saved `yellowstone-router keygen` to a file, as the README shows for
/// `yellowstone-ctl`, and asked `yellowstone-router address --key-file` for its
/// address: it was refused ("must be 64 hex digits"). Every tool now reads the same
/// key-file format; a file whose address line contradicts its secret is refused.
#[test]
fn address_reads_the_key_file_keygen_prints() {
    use std::os::unix::fs::PermissionsExt as _;
    let workdir = tempfile::tempdir().unwrap();
    let keygen = Command::new(router_binary())
        .arg("keygen")
        .output()
        .expect("run keygen");
    assert!(keygen.status.success());
    let printed = String::from_utf8(keygen.stdout).unwrap();
    let address = printed
        .lines()
        .find_map(|l| l.strip_prefix("address="))
        .expect("keygen prints address=")
        .to_string();
    let path = workdir.path().join("operator.key");
    std::fs::write(&path, &printed).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = Command::new(router_binary())
        .args(["address", "--key-file", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "keygen output refused: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("address={address}")
    );

    // An address line that is not the secret's: refused, naming both.
    let other = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
    let secret_line = printed.lines().next().unwrap();
    std::fs::write(&path, format!("{secret_line}\naddress={other}\n")).unwrap();
    let (code, stderr) = refused(
        workdir.path(),
        &["address", "--key-file", path.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains(other) && stderr.contains(&address),
        "names both addresses: {stderr}"
    );
}

/// An outsider compared `yellowstone-router journal --json` before and after a
/// kill -9 and could not find an address in it: every address was printed as 20
/// decimal bytes (`Address([90, 174, …])`). Addresses now read as `0x` hex there
/// (and in every debug form of a command), as the ledger tool prints them.
#[test]
fn journal_json_names_addresses_in_hex() {
    use yellowstone_tests::RouterProcess;
    let workdir = tempfile::tempdir().unwrap();
    let address = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
    let snapshot = workdir.path().join("balances.csv");
    std::fs::write(&snapshot, format!("{address},5000000000000000000\n")).unwrap();
    let data = workdir.path().join("data");
    let router = RouterProcess::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--operator",
        "0x40335BEB3862247714bfF8eB64aE8F8e95cbD534",
        "--balance-snapshot",
        snapshot.to_str().unwrap(),
    ]);
    assert!(router.terminate(Duration::from_secs(30)));
    let output = Command::new(router_binary())
        .args(["journal", "--data-dir", data.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains(&address.to_lowercase()),
        "the snapshot's address in the journal: {text}"
    );
    assert!(!text.contains("Address(["), "addresses as bytes: {text}");
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("each line is JSON");
    }
}

/// An outsider restarted a router without the `--operator` it first ran with and was
/// told only that "the market parameters differ". The refusal now names each
/// parameter that differs with both values.
#[test]
fn a_changed_market_parameter_is_named_at_start() {
    use yellowstone_tests::RouterProcess;
    let workdir = tempfile::tempdir().unwrap();
    let data = workdir.path().join("data");
    let data = data.to_str().unwrap();
    let first = "0x40335BEB3862247714bfF8eB64aE8F8e95cbD534";
    let router = RouterProcess::start(&["--data-dir", data, "--operator", first]);
    assert!(router.terminate(Duration::from_secs(30)));
    let other = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
    let (code, stderr) = refused(
        workdir.path(),
        &[
            "run",
            "--data-dir",
            data,
            "--operator",
            other,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("operator: stored")
            && stderr.contains(&first.to_lowercase())
            && stderr.contains(&other.to_lowercase()),
        "names the operator and both values: {stderr}"
    );
}

/// An outsider ran `yellowstone-router run` without `--operator` and got a durable
/// market nobody can operate, silently. It still starts (tests and demos do this),
/// but with a warning naming the option.
#[test]
fn a_router_without_operator_warns() {
    use std::io::{BufRead, BufReader};
    let workdir = tempfile::tempdir().unwrap();
    let mut child = Command::new(router_binary())
        .current_dir(workdir.path())
        .args(["run", "--in-memory", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn yellowstone-router");
    let stderr = child.stderr.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let warned = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("no operator") && line.contains("--operator") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning about the missing operator: {seen:?}");
}
