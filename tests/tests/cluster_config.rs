//! `[cluster]` through the real binary (issue 25, docs/configuration.md): print-config
//! prints every key; a value out of bounds, or a member that would disagree with its
//! group, is refused by print-config and `run` alike, naming the key and the bound;
//! a member without its group's key, without a data directory or without a router
//! key of the group's does not start.

use yellowstone_tests::{refused, router_binary};

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// `yellowstone-router VERB --config CONFIG` with `--data-dir DATA` (`None`:
/// `--in-memory`) on ephemeral ports, expected to be refused: (exit code, stderr).
fn start_refused(
    dir: &std::path::Path,
    verb: &str,
    config: &str,
    data: Option<&str>,
) -> (i32, String) {
    let mut args = vec![verb, "--config", config];
    match data {
        Some(data) => args.extend(["--data-dir", data]),
        None => args.push("--in-memory"),
    }
    args.extend(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
    refused(dir, &args)
}

#[test]
fn print_config_prints_the_cluster_keys() {
    let output = std::process::Command::new(router_binary())
        .arg("print-config")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let section = text
        .split("[cluster]")
        .nth(1)
        .unwrap_or_else(|| panic!("no [cluster] in print-config:\n{text}"));
    for key in [
        "enabled = false",
        "member_id = 1",
        "raft_listen = ",
        "client_endpoint = ",
        "heartbeat_ms = ",
        "election_timeout_min_ms = ",
        "election_timeout_max_ms = ",
        "rpc_timeout_ms = ",
        "learner = false",
    ] {
        assert!(
            section.contains(key),
            "print-config [cluster] lacks {key}:\n{section}"
        );
    }
}

#[test]
fn cluster_values_out_of_bounds_are_refused_naming_key_and_bound() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            "[cluster]\nrpc_timeout_ms = 400\n",
            "cluster.election_timeout_min_ms: must be at least 2 RPC timeouts (800 ms",
        ),
        (
            "[cluster]\nmember_id = 0\n",
            "cluster.member_id: must be 1..=9223372036854775807, not 0",
        ),
        (
            "[cluster]\nenabled = true\nraft_listen = \"127.0.0.1:7400\"\n[market]\ngenesis_ms = 1767225600000\n",
            "cluster.raft_listen must differ from network.listen (127.0.0.1:7400)",
        ),
        (
            "[cluster]\nenabled = true\nraft_listen = \"127.0.0.1:7410\"\n",
            "market.genesis_ms must be set (Unix ms) with cluster.enabled",
        ),
    ] {
        let config = write(dir.path(), "router.toml", text);
        for args in [
            vec!["print-config", "--config", config.as_str()],
            // No --listen: network.listen stays the configuration's.
            vec!["run", "--config", config.as_str()],
        ] {
            let (code, stderr) = refused(dir.path(), &args);
            assert_eq!(code, 1, "{args:?} with {text:?}: {stderr}");
            assert!(stderr.contains(expected), "{args:?} with {text:?}: {stderr}");
        }
    }
}

#[test]
fn a_member_without_what_its_group_shares_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let base = "[cluster]\nenabled = true\nraft_listen = \"127.0.0.1:0\"\n\
                [market]\ngenesis_ms = 1767225600000\n";
    // No router key of the group's: a random one would sign other batches (R-HA-2).
    let config = write(dir.path(), "member.toml", base);
    let (code, stderr) = start_refused(dir.path(), "run", &config, Some(data));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("same router key"), "{stderr}");
    // In memory: a member keeps its Raft log on disk.
    let (code, stderr) = start_refused(dir.path(), "run", &config, None);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--in-memory is refused"), "{stderr}");
    // With the router key but no cluster.key: named.
    let config = write(
        dir.path(),
        "member.toml",
        &format!(
            "{base}[identity]\nrouter_key_hex = \"4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318\"\n"
        ),
    );
    let (code, stderr) = start_refused(dir.path(), "learn", &config, Some(data));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cluster.key"), "{stderr}");
}

/// A member replays its Raft log from its configuration's genesis engine: a market
/// parameter changed after its creation is refused, naming it (it would diverge from
/// its group at the next block).
#[test]
fn a_member_refuses_market_parameters_other_than_its_creation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (code, out, err) = {
        let output = std::process::Command::new(router_binary())
            .args(["cluster", "keygen", "--out"])
            .arg(&data)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{out}{err}");
    let member = |sessions_open_max: u32| {
        write(
            dir.path(),
            "member.toml",
            &format!(
                "[cluster]\nenabled = true\nraft_listen = \"127.0.0.1:0\"\n\
                 [identity]\nrouter_key_hex = \"4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318\"\n\
                 [market]\ngenesis_ms = 1767225600000\nsessions_open_max = {sessions_open_max}\n"
            ),
        )
    };
    let config = member(1000);
    let data = data.to_str().unwrap();
    let first = yellowstone_tests::RouterProcess::start(&["--config", &config, "--data-dir", data]);
    assert!(
        first.terminate(std::time::Duration::from_secs(20)),
        "clean stop"
    );
    let config = member(999);
    let (code, stderr) = start_refused(dir.path(), "run", &config, Some(data));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("market.bin"), "{stderr}");
    assert!(stderr.contains("sessions_open_max"), "{stderr}");
}

/// Issue 25: `[cluster] enabled = true` alone was refused, the default raft_listen
/// being network.listen's 127.0.0.1:7400; the default is now 127.0.0.1:7410.
#[test]
fn cluster_enabled_alone_passes_with_the_default_raft_listen() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "router.toml",
        "[cluster]\nenabled = true\n[market]\ngenesis_ms = 1767225600000\n",
    );
    let output = std::process::Command::new(router_binary())
        .args(["print-config", "--config", config.as_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "refused: {stderr}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("raft_listen = \"127.0.0.1:7410\""),
        "print-config:\n{text}"
    );
}
