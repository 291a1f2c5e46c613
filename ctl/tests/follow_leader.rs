//! R-HA-3 (issue 25): `yellowstone-ctl --router a,b,c` against the real router binary.
//! A dead member and a follower (greeting `not_leader` naming the leader) stand before
//! the leader; the leader's first connection loses the command's answer (as when a
//! leader dies after taking it): the tool reconnects, resends the same signed message
//! and gets the original answer from the router's reply cache.

use std::process::Command;
use yellowstone_tests::cut_proxy::{fake_follower, CutProxy};
use yellowstone_tests::market::*;
use yellowstone_tests::{metric_value, metrics_text, RouterProcess};
use yellowstone_wire::*;

fn key_file(dir: &std::path::Path, key: &SigningKey) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("operator.key");
    std::fs::write(&path, hex::encode(key.secret_bytes()) + "\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn r_ha_3_ctl_follows_the_leader_and_resends_the_same_message_after_a_lost_answer() {
    let dir = tempfile::tempdir().unwrap();
    let operator = operator_key();
    let router = RouterProcess::start(&["--operator", &operator.address().to_string()]);
    let leader = CutProxy::start(router.ready.listen, 2, 1);
    let follower = fake_follower(2, Some(leader.addr));
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let user = SigningKey::from_seed(b"ctl-follow-user")
        .address()
        .to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_yellowstone-ctl"))
        .args([
            "--router",
            &format!("{dead},{follower}"),
            "--timeout-ms",
            "10000",
        ])
        .arg("--key-file")
        .arg(key_file(dir.path(), &operator))
        .args(["balance", "set", &user, "7000000000000000000"])
        .env_remove("YELLOWSTONE_KEY_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ctl failed ({:?}): {stderr}",
        out.status.code()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("set to 7000000000000000000 wei"),
        "{out:?}"
    );
    assert!(
        stderr.contains("sending the same signed message again"),
        "{stderr}"
    );
    assert_eq!(leader.cuts(), 1, "the first answer was lost");
    let text = metrics_text(router.ready.metrics);
    assert_eq!(
        metric_value(&text, "yellowstone_reply_cache_hits_total"),
        Some(1.0),
        "the resend was answered from the cache, not applied again"
    );
}
