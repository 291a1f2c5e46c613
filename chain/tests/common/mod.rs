//! Helpers for the on-chain tests: a real anvil (Foundry's local Ethereum node, from
//! the npm registry, pinned in chain/package.json) on loopback, `cast` to read and
//! poke the chain, and the `yellowstone-chain`, router and loadgen binaries.
//!
//! A missing anvil or cast fails the test with how to install them: nothing is
//! skipped silently.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// anvil's first three default accounts (mnemonic "test test ... junk"): the
/// deployer, the relayer, a spare funder.
pub const DEPLOYER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
pub const RELAYER_KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
pub const SPARE_KEY: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
pub const CHAIN_ID: u64 = 31_337;

fn chain_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn foundry_tool(name: &str) -> PathBuf {
    let env = format!("YELLOWSTONE_{}", name.to_uppercase());
    if let Ok(path) = std::env::var(&env) {
        return PathBuf::from(path);
    }
    let path = chain_dir().join(format!(
        "node_modules/@foundry-rs/{name}-linux-amd64/bin/{name}"
    ));
    assert!(
        path.exists(),
        "{name} not found at {}: install it with `cd chain && npm ci` (pinned \
         @foundry-rs/{name}-linux-amd64 1.7.1 from the npm registry; .ci/run does it), \
         or point {env} at a {name} binary",
        path.display()
    );
    path
}

pub fn anvil_binary() -> PathBuf {
    foundry_tool("anvil")
}

pub fn cast_binary() -> PathBuf {
    foundry_tool("cast")
}

pub fn chain_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_yellowstone-chain"))
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An anvil process on 127.0.0.1; killed on drop.
pub struct Anvil {
    child: Option<Child>,
    pub port: u16,
    pub state: Option<PathBuf>,
}

impl Anvil {
    /// Starts anvil on a free port (automine: a block per transaction).
    pub fn start() -> Anvil {
        Anvil::start_on(free_port(), None)
    }

    /// Starts anvil on `port`; with `state`, it loads that file if it exists and
    /// writes the chain to it when it exits (a restart keeps the chain).
    pub fn start_on(port: u16, state: Option<&Path>) -> Anvil {
        let mut command = Command::new(anvil_binary());
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--chain-id", &CHAIN_ID.to_string(), "--silent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(state) = state {
            if state.exists() {
                command.arg("--load-state").arg(state);
            }
            command.arg("--dump-state").arg(state);
        }
        let child = command.spawn().expect("start anvil");
        let anvil = Anvil {
            child: Some(child),
            port,
            state: state.map(Path::to_path_buf),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(cast_binary())
                .args(["chain-id", "--rpc-url", &anvil.url()])
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "anvil did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        anvil
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops anvil with SIGTERM (it writes --dump-state) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "anvil did not stop");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `cast ARGS --rpc-url <anvil>`: stdout trimmed; panics naming the failure.
    pub fn cast(&self, args: &[&str]) -> String {
        let out = Command::new(cast_binary())
            .args(args)
            .args(["--rpc-url", &self.url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cast {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A uint view call's value (cast prints `123 [1.23e2]` for big numbers).
    pub fn call_u128(&self, to: &str, signature: &str, args: &[&str]) -> u128 {
        let mut all = vec!["call", to, signature];
        all.extend_from_slice(args);
        let text = self.cast(&all);
        text.split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("{signature}: {text:?}: {e}"))
    }

    pub fn block_number(&self) -> u64 {
        self.cast(&["block-number"]).parse().unwrap()
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `yellowstone-chain ARGS` to its end: (success, stdout, stderr).
pub fn chain(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(chain_binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run yellowstone-chain");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `yellowstone-chain ARGS` that must succeed and print JSON.
pub fn chain_json(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = chain(args);
    assert!(ok, "yellowstone-chain {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON from {args:?}: {e}: {stdout}"))
}

/// A running relayer; killed (SIGKILL) on drop.
pub struct Relayer {
    child: Child,
    pub metrics: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Relayer {
    pub fn start(args: &[&str]) -> Relayer {
        let mut child = Command::new(chain_binary())
            .arg("relay")
            .args(args)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the relayer");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the relayer's RELAYING line");
        let metrics = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("metrics="))
            .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
            .parse()
            .unwrap();
        Relayer {
            child,
            metrics,
            lines,
        }
    }

    /// A metric's value (first sample named exactly `name`, labels included).
    pub fn metric(&self, name: &str) -> f64 {
        let text = yellowstone_tests::metrics_text(self.metrics);
        yellowstone_tests::metric_value(&text, name)
            .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
    }

    /// Every SETTLED line printed so far: (epoch, gas used, lag ms) of each
    /// settlement this relayer got confirmed (gas from its receipt; lag from the
    /// epoch's end to the confirmation).
    pub fn settled(&self) -> Vec<(u64, u64, u64)> {
        self.lines
            .try_iter()
            .filter_map(|line| {
                let rest = line.strip_prefix("SETTLED epoch=")?;
                let epoch = rest.split_whitespace().next()?.parse().ok()?;
                let field = |name: &str| -> Option<u64> {
                    rest.split_whitespace()
                        .find_map(|f| f.strip_prefix(name))?
                        .parse()
                        .ok()
                };
                Some((epoch, field("gas=")?, field("lag_ms=")?))
            })
            .collect()
    }

    /// Waits until `done` holds for the metrics, or panics after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Relayer) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "relayer: timed out waiting for {what}:\n{}",
                yellowstone_tests::metrics_text(self.metrics)
            );
            assert!(
                self.child_alive(),
                "the relayer exited while waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn child_alive(&self) -> bool {
        // try_wait needs &mut; /proc is enough on Linux.
        Path::new(&format!("/proc/{}", self.child.id())).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .is_ok_and(|s| s.contains(") Z "))
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Relayer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn address_of(key_hex: &str) -> alloy::primitives::Address {
    key_hex
        .parse::<alloy::signers::local::PrivateKeySigner>()
        .unwrap()
        .address()
}

/// Builds `yellowstone-loadgen` beside the router binary and returns its path.
pub fn loadgen_binary() -> PathBuf {
    let router = yellowstone_tests::router_binary();
    let profile_dir = router.parent().unwrap().to_path_buf();
    let workspace = chain_dir().parent().unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command.current_dir(workspace).args([
        "build",
        "-q",
        "-p",
        "yellowstone-loadgen",
        "--bin",
        "yellowstone-loadgen",
    ]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        command.arg("--release");
    }
    assert!(command.status().unwrap().success(), "building the loadgen");
    profile_dir.join("yellowstone-loadgen")
}

/// `yellowstone-router ARGS --json` (read-only tools) as JSON.
pub fn router_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(yellowstone_tests::router_binary())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "yellowstone-router {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
