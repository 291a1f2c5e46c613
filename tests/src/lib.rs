//! Helpers for the end-to-end tests: building, starting and stopping the real
//! `yellowstone-router` binary on loopback.
//!
//! The router's start-up contract (relied on here and by operators' scripts): once it
//! serves, it prints one line to stdout
//! `READY listen=<ip:port> metrics=<ip:port> router=<0x address> network_id=<n>`.
//! Every process started here is killed (by its own pid) when its handle drops, so a
//! failing test never leaves a router behind.

pub mod cluster;
pub mod cut_proxy;
pub mod fault_proxy;
pub mod process;

pub use process::{
    forward_lines, metric_text_value, metric_value, metrics_text, ready_field, ready_fields,
    try_metrics_text, KillOnDrop,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

/// How long a router may take to print its READY line (recovery included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The profile directory the running test binary was built into (target/debug or
/// target/release), so the router is built with the same profile.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Builds `yellowstone-router` once per test process (a no-op when fresh) and
/// returns its path.
pub fn router_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile_dir = profile_dir();
            let release = profile_dir
                .file_name()
                .is_some_and(|name| name == "release");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
            let mut command = Command::new(cargo);
            command.current_dir(workspace_root()).args([
                "build",
                "-q",
                "-p",
                "yellowstone-gateway",
                "--bin",
                "yellowstone-router",
            ]);
            if release {
                command.arg("--release");
            }
            let status = command.status().expect("run cargo build for the router");
            assert!(status.success(), "building yellowstone-router failed");
            let path = profile_dir.join("yellowstone-router");
            assert!(path.exists(), "router binary missing at {}", path.display());
            path
        })
        .clone()
}

/// Where a started router listens and who it is.
#[derive(Clone, Debug)]
pub struct ReadyLine {
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub router_address: String,
    pub network_id: u32,
    /// The data directory in use, or None for an in-memory router (`data_dir=none`).
    pub data_dir: Option<PathBuf>,
}

impl ReadyLine {
    /// The router's READY line (see [`ready_fields`]); None for any other line or
    /// a field that does not parse.
    pub fn parse(line: &str) -> Option<ReadyLine> {
        let mut listen = None;
        let mut metrics = None;
        let mut router_address = None;
        let mut network_id = None;
        let mut data_dir = None;
        for (key, value) in ready_fields(line)? {
            match key {
                "listen" => listen = value.parse().ok(),
                "metrics" => metrics = value.parse().ok(),
                "router" => router_address = Some(value.to_string()),
                "network_id" => network_id = value.parse().ok(),
                "data_dir" if value != "none" => data_dir = Some(PathBuf::from(value)),
                _ => {}
            }
        }
        Some(ReadyLine {
            listen: listen?,
            metrics: metrics?,
            router_address: router_address?,
            network_id: network_id?,
            data_dir,
        })
    }
}

/// A router process; killed with SIGKILL on drop unless already waited for.
pub struct RouterProcess {
    child: KillOnDrop,
    pub ready: ReadyLine,
    stdout_lines: mpsc::Receiver<String>,
    /// The working directory made for a router started without `--data-dir` or
    /// `--in-memory`: its default data directory lands there (R-OPS-1), not in the
    /// test's own directory. Removed on drop.
    _workdir: Option<tempfile::TempDir>,
}

impl RouterProcess {
    /// Starts the router with `args` (e.g. `["--data-dir", dir, "--backend", "mio"]`;
    /// the listen and metrics ports default to 0 here) and waits for READY.
    ///
    /// Without `--data-dir` or `--in-memory` the router runs in a fresh temporary
    /// working directory, so it keeps its default data directory there.
    pub fn start(args: &[&str]) -> RouterProcess {
        if args.contains(&"--data-dir") || args.contains(&"--in-memory") {
            return RouterProcess::start_in(None, args);
        }
        let workdir = tempfile::tempdir().expect("temporary working directory");
        let mut process = RouterProcess::start_in(Some(workdir.path()), args);
        process._workdir = Some(workdir);
        process
    }

    /// Like `start`, in working directory `workdir` (the caller's own when None).
    pub fn start_in(workdir: Option<&Path>, args: &[&str]) -> RouterProcess {
        RouterProcess::start_command(workdir, "run", args)
    }

    /// Like `start` for another serving subcommand with `run`'s options and READY
    /// line (`learn`, issue 25), in the caller's working directory.
    pub fn start_subcommand(subcommand: &str, args: &[&str]) -> RouterProcess {
        RouterProcess::start_command(None, subcommand, args)
    }

    fn start_command(workdir: Option<&Path>, subcommand: &str, args: &[&str]) -> RouterProcess {
        let mut command = Command::new(router_binary());
        if let Some(dir) = workdir {
            command.current_dir(dir);
        }
        command.arg(subcommand);
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--metrics-listen") {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        // Tests read the router's refusals from the wire; its INFO lines only bury failures.
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        let mut child = KillOnDrop(command.spawn().expect("spawn yellowstone-router"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdout_lines = forward_lines(stdout);
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(ready) = ReadyLine::parse(&line) {
                        return RouterProcess {
                            child,
                            ready,
                            stdout_lines,
                            _workdir: None,
                        };
                    }
                }
                Err(_) => {
                    child.kill_and_reap();
                    let status = child.try_wait();
                    panic!(
                        "router did not print READY within {READY_TIMEOUT:?} (exit: {status:?})"
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines the router printed to stdout since READY, without waiting.
    pub fn drain_stdout(&self) -> Vec<String> {
        self.stdout_lines.try_iter().collect()
    }

    /// Sends SIGKILL: the crash tests' "power cut".
    pub fn kill_hard(mut self) {
        self.child.kill_and_reap();
    }

    /// Waits (bounded) until the process has exited, e.g. after a signal sent by
    /// someone else; returns whether it did. Its data directory's lock is free then.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns whether it exited 0.
    pub fn terminate(mut self, timeout: Duration) -> bool {
        // SAFETY: kill(2) on a pid we spawned and have not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill_and_reap();
        false
    }

    /// Resident memory of the process in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses_and_rejects_others() {
        let ready = ReadyLine::parse(
            "READY listen=127.0.0.1:7400 metrics=127.0.0.1:7401 router=0xAb network_id=7",
        )
        .unwrap();
        assert_eq!(ready.listen.port(), 7400);
        assert_eq!(ready.metrics.port(), 7401);
        assert_eq!(ready.network_id, 7);
        assert!(ReadyLine::parse("starting up").is_none());
        assert!(ReadyLine::parse(
            "READY listen=nonsense metrics=127.0.0.1:1 router=0x network_id=1"
        )
        .is_none());
    }
}

pub mod market {
    //! Clients for the end-to-end tests: an operator, users and providers speaking
    //! the real protocol through the wire client.

    use std::net::SocketAddr;
    use std::time::{Duration, Instant};
    use yellowstone_wire::client::{Client, ClientError};
    use yellowstone_wire::demo::demo_weights_hash;
    use yellowstone_wire::signature::weights_proof_digest;
    use yellowstone_wire::*;

    pub const WEI_PER_MOR: u128 = 1_000_000_000_000_000_000;

    pub fn operator_key() -> SigningKey {
        SigningKey::from_seed(b"yellowstone-test-operator")
    }

    pub fn connect(addr: SocketAddr, key: SigningKey) -> Client {
        let client = Client::connect(addr, key).expect("connect and log in");
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        client
    }

    /// Reads until `pick` accepts a message (others are skipped), within `timeout`.
    pub fn expect<T>(
        client: &mut Client,
        timeout: Duration,
        mut pick: impl FnMut(&Message) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(Instant::now() < deadline, "timed out waiting for a message");
            match client.recv() {
                Ok(message) => {
                    if let Some(value) = pick(&message) {
                        return value;
                    }
                }
                Err(ClientError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("connection failed while waiting: {e}"),
            }
        }
    }

    /// Waits up to `timeout` for the next probe on `provider`'s connection (other
    /// messages are skipped), answers it (R-MATCH-3: the provider is alive), and
    /// returns the probe.
    pub fn answer_next_probe(provider: &mut Client, timeout: Duration) -> Probe {
        let probe = expect(provider, timeout, |m| match m {
            Message::Probe(p) => Some(p.clone()),
            _ => None,
        });
        let nonce = provider.next_nonce();
        provider
            .send_signed(
                ProbeAnswer {
                    from: provider.address(),
                    nonce,
                    probe_id: probe.probe_id,
                    signature: Signature::default(),
                }
                .into(),
            )
            .expect("send the probe answer");
        probe
    }

    /// Sends a signed RFC from `user` for model 1 of `tokens_max` tokens, valid 30 s;
    /// returns its nonce (the answers name it).
    pub fn send_rfc(user: &mut Client, tokens_max: u64) -> u64 {
        let nonce = user.next_nonce();
        user.send_signed(
            Rfc {
                from: user.address(),
                nonce,
                model_id: 1,
                tokens_max,
                expires_at_ms: now_ms() + 30_000,
                signature: Signature::default(),
            }
            .into(),
        )
        .expect("send an RFC");
        nonce
    }

    pub fn fund(operator: &mut Client, entries: &[(Address, u128)]) {
        let nonce = operator.next_nonce();
        let entries = entries
            .iter()
            .map(|(address, balance_wei)| BalanceEntry {
                address: *address,
                balance_wei: *balance_wei,
            })
            .collect();
        operator
            .send_signed(
                BalanceUpdate {
                    from: operator.address(),
                    nonce,
                    entries,
                    signature: Signature::default(),
                }
                .into(),
            )
            .unwrap();
        expect(operator, Duration::from_secs(10), |m| match m {
            Message::Ack(ack) if ack.nonce == nonce => Some(()),
            Message::ErrorReply(e) => panic!("balance update refused: {e:?}"),
            _ => None,
        });
    }

    pub fn register(
        provider: &mut Client,
        network_id: u32,
        model_id: u32,
        price: u128,
        capacity: u32,
    ) {
        let weights_hash = demo_weights_hash(model_id);
        let weights_proof =
            provider
                .key()
                .sign_digest(&weights_proof_digest(network_id, model_id, &weights_hash));
        let offer = Offer {
            model_id,
            unit: 0,
            weights_hash,
            weights_proof,
            price_wei_per_token: price,
            capacity,
        };
        let nonce = provider.next_nonce();
        let message = RegisterProvider {
            from: provider.address(),
            nonce,
            endpoint: "127.0.0.1:9999".into(),
            offers: vec![offer],
            signature: Signature::default(),
        };
        provider.send_signed(message.into()).unwrap();
        expect(provider, Duration::from_secs(10), |m| match m {
            Message::Ack(ack) if ack.nonce == nonce => Some(()),
            Message::ErrorReply(e) => panic!("registration refused: {e:?}"),
            _ => None,
        });
    }

    pub fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }
}

/// Runs the router binary with `args` in `workdir` until it exits (killed after
/// 30 s, which fails the test): (exit code, stderr). A panic or an allocation abort
/// fails the test: a refusal must be a clean error.
pub fn refused(workdir: &Path, args: &[&str]) -> (i32, String) {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut child = Command::new(router_binary())
        .current_dir(workdir)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn yellowstone-router");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still running after 30 s: it should have been refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        !stderr.contains("memory allocation"),
        "{args:?} aborted: {stderr}"
    );
    (output.status.code().unwrap_or(-1), stderr)
}
