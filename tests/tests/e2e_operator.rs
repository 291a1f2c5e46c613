//! What an operator meets first, through the real binary: durable by default
//! (R-OPS-1), key files readable by their owner only and a command-line key that
//! differs from the data directory's refused (R-OPS-2), the address of an existing
//! key, a signer mismatch that names the expected network id (R-ID-7), logs without
//! colour codes when stderr is not a terminal, and an honest `run --help`.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use yellowstone_tests::market::*;
use yellowstone_tests::{router_binary, RouterProcess};
use yellowstone_wire::client::presign;
use yellowstone_wire::*;

/// Runs the router binary with `args` in `workdir` until it exits (killed after
/// `timeout`): (exited on its own with success, stdout, stderr).
fn run_to_exit(workdir: &Path, args: &[&str], timeout: Duration) -> (Option<bool>, String, String) {
    let mut child = Command::new(router_binary())
        .current_dir(workdir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn yellowstone-router");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.success());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stdout, stderr)
}

fn hex_of(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn rfc(user: &mut yellowstone_wire::client::Client) -> Message {
    let nonce = user.next_nonce();
    user.send_signed(
        Rfc {
            from: user.address(),
            nonce,
            model_id: 1,
            tokens_max: 100,
            expires_at_ms: now_ms() + 30_000,
            signature: Signature::default(),
        }
        .into(),
    )
    .unwrap();
    expect(user, Duration::from_secs(10), |m| match m {
        Message::RfcAccepted(a) if a.nonce == nonce => Some(m.clone()),
        Message::ErrorReply(e) if e.ref_nonce == nonce => Some(m.clone()),
        _ => None,
    })
}

#[test]
fn r_ops_1_durable_by_default_in_the_working_directory() {
    let workdir = tempfile::tempdir().unwrap();
    let operator = operator_key().address().to_string();
    let args = ["--operator", operator.as_str(), "--backend", "mio"];
    let router = RouterProcess::start_in(Some(workdir.path()), &args);
    let data_dir = workdir.path().join("yellowstone-data");
    assert_eq!(
        router.ready.data_dir.as_deref(),
        Some(data_dir.as_path()),
        "the READY line names the data directory"
    );
    assert_eq!(mode_of(&data_dir), 0o700, "R-OPS-2: data directory 0700");
    assert_eq!(
        mode_of(&data_dir.join("router.key")),
        0o600,
        "R-OPS-2: key file 0600"
    );
    let router_address = router.ready.router_address.clone();
    let mut operator_client = connect(router.ready.listen, operator_key());
    let mut user = connect(
        router.ready.listen,
        SigningKey::from_seed(b"ops-durable-user"),
    );
    fund(&mut operator_client, &[(user.address(), 5 * WEI_PER_MOR)]);
    assert!(matches!(rfc(&mut user), Message::RfcAccepted(_)));
    drop((operator_client, user));
    assert!(router.terminate(Duration::from_secs(20)), "clean stop");

    // The same working directory again: same router, the balance is still there.
    let router = RouterProcess::start_in(Some(workdir.path()), &args);
    assert_eq!(router.ready.router_address, router_address);
    let mut user = connect(
        router.ready.listen,
        SigningKey::from_seed(b"ops-durable-user"),
    );
    let answer = rfc(&mut user);
    assert!(
        matches!(answer, Message::RfcAccepted(_)),
        "the balance survived the restart: {answer:?}"
    );
}

#[test]
fn r_ops_1_in_memory_is_explicit_and_warned_about_without_colour_codes() {
    let workdir = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run_to_exit(
        workdir.path(),
        &[
            "run",
            "--in-memory",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(3),
    );
    assert_eq!(status, None, "it serves until stopped: {stderr}");
    assert!(stdout.contains("data_dir=none"), "{stdout}");
    assert!(stderr.contains("--in-memory"), "a warning: {stderr}");
    assert!(stderr.contains("lost"), "saying what it costs: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI codes when stderr is not a terminal: {stderr:?}"
    );
    assert!(
        std::fs::read_dir(workdir.path()).unwrap().next().is_none(),
        "nothing written to the working directory"
    );
}

#[test]
fn r_ops_2_a_key_file_readable_by_others_is_refused_with_the_chmod() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let key_path = data_dir.join("router.key");
    std::fs::write(
        &key_path,
        hex_of(SigningKey::from_seed(b"ops-key").secret_bytes()),
    )
    .unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (status, _, stderr) = run_to_exit(
        workdir.path(),
        &[
            "run",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(status, Some(false), "refused: {stderr}");
    let chmod = format!("chmod 600 {}", key_path.display());
    assert!(
        stderr.contains(&chmod),
        "names the file and the fix: {stderr}"
    );

    // The address command refuses it too, and reads it once fixed.
    let key_file = key_path.to_str().unwrap();
    let (status, _, stderr) = run_to_exit(
        workdir.path(),
        &["address", "--key-file", key_file],
        Duration::from_secs(20),
    );
    assert_eq!(status, Some(false));
    assert!(stderr.contains(&chmod), "{stderr}");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let expected = format!("address={}", SigningKey::from_seed(b"ops-key").address());
    let (status, stdout, _) = run_to_exit(
        workdir.path(),
        &["address", "--key-file", key_file],
        Duration::from_secs(20),
    );
    assert_eq!((status, stdout.trim()), (Some(true), expected.as_str()));
    let key_hex = hex_of(SigningKey::from_seed(b"ops-key").secret_bytes());
    let (status, stdout, _) = run_to_exit(
        workdir.path(),
        &["address", "--key-hex", &key_hex],
        Duration::from_secs(20),
    );
    assert_eq!((status, stdout.trim()), (Some(true), expected.as_str()));

    // With no key, the usage names both ways to give one; both at once is refused.
    let (status, _, stderr) = run_to_exit(workdir.path(), &["address"], Duration::from_secs(20));
    assert_eq!(status, Some(false));
    assert!(
        stderr.contains("--key-file") && stderr.contains("--key-hex"),
        "{stderr}"
    );
    let (status, _, stderr) = run_to_exit(
        workdir.path(),
        &["address", "--key-file", key_file, "--key-hex", &key_hex],
        Duration::from_secs(20),
    );
    assert_eq!(status, Some(false));
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn r_ops_2_a_router_key_differing_from_the_data_directory_is_refused() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    let data = data_dir.to_str().unwrap();
    let router = RouterProcess::start(&["--data-dir", data, "--backend", "mio"]);
    let address = router.ready.router_address.clone();
    assert!(router.terminate(Duration::from_secs(20)));

    let other = hex_of(SigningKey::from_seed(b"ops-other-router").secret_bytes());
    let (status, _, stderr) = run_to_exit(
        workdir.path(),
        &[
            "run",
            "--data-dir",
            data,
            "--router-key-hex",
            &other,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(status, Some(false), "refused: {stderr}");
    assert!(stderr.contains("refusing to switch"), "{stderr}");
    assert!(
        stderr.contains(&address),
        "names the directory's address: {stderr}"
    );

    // The directory's own key, given explicitly, is fine.
    let key_file = data_dir.join("router.key");
    let own = std::fs::read_to_string(&key_file).unwrap();
    let router = RouterProcess::start(&["--data-dir", data, "--router-key-hex", own.trim()]);
    assert_eq!(router.ready.router_address, address);
}

/// R-ID-7: a message signed for another network id is refused with a reason that
/// names the network id the router expects.
fn signer_mismatch_names_the_network_id(backend: &str) {
    let operator = operator_key().address().to_string();
    let router =
        RouterProcess::start(&["--backend", backend, "--in-memory", "--operator", &operator]);
    let mut user = connect(
        router.ready.listen,
        SigningKey::from_seed(b"ops-network-id"),
    );
    // Funded: an RFC from an address without MOR is refused `zero_balance` before its
    // signature is checked (R-PROV-3: cheap checks first).
    let mut operator = connect(router.ready.listen, operator_key());
    fund(&mut operator, &[(user.address(), WEI_PER_MOR)]);
    let nonce = user.next_nonce();
    let frame = presign(
        user.key(),
        router.ready.network_id + 998,
        Rfc {
            from: user.address(),
            nonce,
            model_id: 1,
            tokens_max: 100,
            expires_at_ms: now_ms() + 30_000,
            signature: Signature::default(),
        }
        .into(),
    );
    user.send_raw(&frame).unwrap();
    let error = expect(&mut user, Duration::from_secs(10), |m| match m {
        Message::ErrorReply(e) => Some(e.clone()),
        _ => None,
    });
    assert_eq!(codes::name(error.code), "signer_mismatch", "{error:?}");
    let expected = format!("network id {}", router.ready.network_id);
    assert!(error.reason.contains(&expected), "{}", error.reason);
}

#[test]
fn r_id_7_signer_mismatch_names_the_network_id_over_io_uring() {
    signer_mismatch_names_the_network_id("uring");
}

#[test]
fn r_id_7_signer_mismatch_names_the_network_id_over_mio() {
    signer_mismatch_names_the_network_id("mio");
}

#[test]
fn run_help_says_what_a_stop_seals() {
    let workdir = tempfile::tempdir().unwrap();
    let (status, stdout, _) =
        run_to_exit(workdir.path(), &["run", "--help"], Duration::from_secs(20));
    assert_eq!(status, Some(true));
    assert!(!stdout.contains("seals the current block"), "{stdout}");
    assert!(stdout.contains("not sealed early"), "{stdout}");
    assert!(stdout.contains("--in-memory"), "{stdout}");
}

/// The metrics endpoint with a client trickling a request one byte every 1.5 s
/// beside it: every scrape is answered within its timeout, and the trickler is
/// closed at the whole-request deadline (2 s by default) instead of held.
#[test]
fn metrics_scrapes_are_answered_beside_a_trickling_client() {
    use std::io::Write as _;
    use std::net::TcpStream;
    let router = RouterProcess::start(&["--in-memory"]);
    let metrics = router.ready.metrics;
    let trickler = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(metrics).unwrap();
        let started = Instant::now();
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" {
            if stream.write_all(&[*byte]).is_err() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(1_500));
        }
        None
    });
    let scrape_timeout = Duration::from_secs(2);
    for scrape in 0..6 {
        let started = Instant::now();
        let mut stream = TcpStream::connect(metrics).unwrap();
        stream.set_read_timeout(Some(scrape_timeout)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        let read = stream.read_to_string(&mut response);
        assert!(
            read.is_ok() && response.starts_with("HTTP/1.1 200 OK"),
            "scrape {scrape} not answered within {scrape_timeout:?}: {read:?} {response:?}"
        );
        assert!(
            response.contains("yellowstone_connections_open"),
            "{response}"
        );
        assert!(started.elapsed() < scrape_timeout);
        std::thread::sleep(Duration::from_millis(1_000));
    }
    let closed_after = trickler.join().unwrap();
    assert!(
        closed_after.is_some_and(|t| t < Duration::from_secs(8)),
        "the trickler is closed near its deadline: {closed_after:?}"
    );
}
