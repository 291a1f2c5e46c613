//! The market stack for the nodes' end-to-end tests: the real router binary, the
//! stand-in model server, a provider node and a consumer node, each a real process
//! on loopback (killed by pid when dropped), keys and configs in a temporary dir.
//! The nodes reach the router through a recording TCP proxy, so a test can check
//! every byte the router received or sent (R-NODE-3).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use yellowstone_tests::{forward_lines, metric_value, ready_field, KillOnDrop, RouterProcess};

pub const WEI_PER_MOR: u128 = 1_000_000_000_000_000_000;
pub const PRICE_WEI_PER_TOKEN: u128 = 1_000_000_000;

/// A node process; SIGKILLed on drop (`yellowstone_tests::KillOnDrop`).
pub struct NodeProcess {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    pub ready: String,
}

impl NodeProcess {
    pub fn start(binary: &str, args: &[&str], dir: &Path) -> NodeProcess {
        let mut child = KillOnDrop(
            Command::new(binary)
                .args(args)
                .current_dir(dir)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {binary}: {e}")),
        );
        let stdout = child.stdout.take().expect("piped");
        let lines = forward_lines(stdout);
        let mut process = NodeProcess {
            child,
            lines,
            ready: String::new(),
        };
        process.ready = process.wait_line("READY", Duration::from_secs(60));
        process
    }

    /// Waits for a stdout line starting with `prefix`.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!("no {prefix} line within {timeout:?}"),
            }
        }
    }

    /// A field of its READY line (`yellowstone_tests::ready_field`).
    pub fn field(&self, key: &str) -> String {
        ready_field(&self.ready, key)
            .unwrap_or_else(|| panic!("{key} in {}", self.ready))
            .to_string()
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        self.field(key).parse().expect("socket address")
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `timeout` for the exit;
    /// returns whether it exited by itself (issue 23 case 6).
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGTERM (a graceful stop) without waiting.
    pub fn send_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `timeout`; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        self.child.kill_and_reap();
    }
}

/// A TCP proxy that forwards to `target` and keeps every byte both ways.
pub struct RecordingProxy {
    pub addr: SocketAddr,
    pub recorded: Arc<Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    pub fn start(target: SocketAddr) -> RecordingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let record = recorded.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let record = record.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buffer = [0u8; 16 * 1024];
                        loop {
                            match from.read(&mut buffer) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    record.lock().unwrap().extend_from_slice(&buffer[..n]);
                                    if to.write_all(&buffer[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        RecordingProxy { addr, recorded }
    }
}

pub fn keygen(binary: &str, out: &Path) -> String {
    let output = Command::new(binary)
        .args(["keygen", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(output.status.success(), "keygen: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub router: RouterProcess,
    pub proxy: RecordingProxy,
    pub standin: NodeProcess,
    pub provider: NodeProcess,
    pub consumer: NodeProcess,
    pub provider_address: String,
    pub consumer_address: String,
    pub http: reqwest::Client,
}

pub const PROVIDER: &str = env!("CARGO_BIN_EXE_yellowstone-provider");
pub const CONSUMER: &str = env!("CARGO_BIN_EXE_yellowstone-consumer");
pub const STANDIN: &str = env!("CARGO_BIN_EXE_yellowstone-standin-llm");

/// Extra TOML for the router (`router`: whole sections before `[market]`, e.g.
/// `[network]`), its `[market]` section, the provider's and the consumer's.
#[derive(Default)]
pub struct Tuning {
    pub router: String,
    pub market: String,
    pub provider: String,
    pub consumer: String,
    /// R-HA-3: the consumer's router lines, given the address it would use (the
    /// recording proxy's); None: `router_addr` = that address.
    pub consumer_routers: Option<Box<dyn FnOnce(SocketAddr) -> String>>,
    /// The provider's router address, given the one it would use (the recording
    /// proxy's); None: that address.
    pub provider_router: Option<Box<dyn FnOnce(SocketAddr) -> SocketAddr>>,
}

impl Stack {
    /// Starts everything and waits until the consumer lists model 1 with a live bid.
    pub async fn start(tuning: Tuning) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let provider_address = keygen(PROVIDER, &path("provider.key"));
        let consumer_address = keygen(CONSUMER, &path("consumer.key"));
        let operator = yellowstone_tests::market::operator_key()
            .address()
            .to_string();
        std::fs::write(
            path("balances.csv"),
            format!(
                "{provider_address},{WEI_PER_MOR}\n{consumer_address},{}\n",
                500 * WEI_PER_MOR
            ),
        )
        .unwrap();
        std::fs::write(
            path("router.toml"),
            format!("{}\n[market]\n{}\n", tuning.router, tuning.market),
        )
        .unwrap();
        let data = path("data").display().to_string();
        let router = RouterProcess::start(&[
            "--config",
            &path("router.toml").display().to_string(),
            "--data-dir",
            &data,
            "--operator",
            &operator,
            "--balance-snapshot",
            &path("balances.csv").display().to_string(),
        ]);
        let proxy = RecordingProxy::start(router.ready.listen);
        let standin = NodeProcess::start(STANDIN, &["--listen", "127.0.0.1:0"], dir.path());
        let provider_router = match tuning.provider_router {
            Some(route) => route(proxy.addr),
            None => proxy.addr,
        };
        // The demo catalog's model 1: its weights are this string (yellowstone_wire::demo).
        std::fs::write(path("model-1.weights"), b"yellowstone-demo-model-1").unwrap();
        std::fs::write(
            path("provider.toml"),
            format!(
                "router_addr = \"{}\"\nkey_file = \"provider.key\"\nlisten = \"127.0.0.1:0\"\n\
                 metrics_listen = \"127.0.0.1:0\"\n{}\n[[models]]\nmodel_id = 1\n\
                 weights_file = \"model-1.weights\"\nupstream_base_url = \"http://{}/v1\"\n\
                 upstream_model = \"standin\"\nprice_wei_per_token = \"{PRICE_WEI_PER_TOKEN}\"\ncapacity = 8\n",
                provider_router,
                tuning.provider,
                standin.field("listen"),
            ),
        )
        .unwrap();
        let mut provider =
            NodeProcess::start(PROVIDER, &["run", "--config", "provider.toml"], dir.path());
        provider.wait_line("REGISTERED", Duration::from_secs(30));
        let consumer_routers = match tuning.consumer_routers {
            Some(routers) => routers(proxy.addr),
            None => format!("router_addr = \"{}\"", proxy.addr),
        };
        std::fs::write(
            path("consumer.toml"),
            format!(
                "{consumer_routers}\nkey_file = \"consumer.key\"\nlisten = \"127.0.0.1:0\"\n\
                 metrics_listen = \"127.0.0.1:0\"\n{}\n",
                tuning.consumer
            ),
        )
        .unwrap();
        let consumer =
            NodeProcess::start(CONSUMER, &["run", "--config", "consumer.toml"], dir.path());
        let stack = Stack {
            dir,
            router,
            proxy,
            standin,
            provider,
            consumer,
            provider_address,
            consumer_address,
            http: reqwest::Client::new(),
        };
        stack.wait_market().await;
        stack
    }

    /// Waits until the consumer is connected and the provider's bid is live.
    pub async fn wait_market(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = self.http.get(self.consumer_url("/v1/models")).send().await {
                if let Ok(models) = response.json::<serde_json::Value>().await {
                    if models["data"][0]["offers_live"].as_u64().unwrap_or(0) > 0 {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the market never showed model 1 live"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn consumer_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.consumer.field("listen"))
    }

    pub fn standin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.standin.field("listen"))
    }

    /// Sets the stand-in's switches named in `mode`, the others back to their start
    /// values (`POST /standin/reset`, then `POST /standin/mode`).
    pub async fn standin_mode(&self, mode: serde_json::Value) {
        let reset = self
            .http
            .post(self.standin_url("/standin/reset"))
            .send()
            .await
            .unwrap();
        assert!(reset.status().is_success());
        let response = self
            .http
            .post(self.standin_url("/standin/mode"))
            .json(&mode)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    /// The last request body the stand-in received (null: none yet).
    pub async fn standin_last_request(&self) -> serde_json::Value {
        self.http
            .get(self.standin_url("/standin/last_request"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A node's Prometheus text (`node`: the consumer or the provider).
    pub async fn metrics_text(&self, node: &NodeProcess) -> String {
        self.text_at(&node.field("metrics")).await
    }

    /// The router's metric `series` (0 when absent).
    pub async fn router_metric(&self, series: &str) -> f64 {
        let text = self.text_at(&self.router.ready.metrics.to_string()).await;
        metric_value(&text, series).unwrap_or(0.0)
    }

    async fn text_at(&self, addr: &str) -> String {
        self.http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The consumer's metric `name{labels}` value, 0 when absent.
    pub async fn consumer_metric(&self, series: &str) -> f64 {
        let text = self.metrics_text(&self.consumer).await;
        metric_value(&text, series).unwrap_or(0.0)
    }

    /// Waits until the consumer's metric reaches `value` (reports are sent in the
    /// background after the answer).
    pub async fn wait_metric(&self, series: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = self.consumer_metric(series).await;
            if now >= value {
                assert_eq!(now, value, "{series}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {now}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every byte in the router's data directory.
    pub fn journal_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.path().join("data")).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            if path.is_file() {
                out.extend(std::fs::read(&path).unwrap());
            }
        }
        out
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Concatenates the content deltas of an SSE body; returns (text, saw [DONE]).
pub fn sse_content(body: &str) -> (String, bool) {
    let mut text = String::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        if let Some(choices) = value["choices"].as_array() {
            for choice in choices {
                if let Some(content) = choice["delta"]["content"].as_str() {
                    text.push_str(content);
                }
            }
        }
    }
    (text, done)
}

/// Credit batches as the router publishes them (a subscribed wire client).
pub struct BatchWatcher {
    pub batches: Arc<Mutex<Vec<yellowstone_wire::CreditBatch>>>,
}

impl BatchWatcher {
    pub fn start(router: SocketAddr) -> BatchWatcher {
        use yellowstone_wire::*;
        let batches = Arc::new(Mutex::new(Vec::new()));
        let keep = batches.clone();
        let mut client =
            yellowstone_tests::market::connect(router, SigningKey::from_seed(b"batch-watcher"));
        client.set_read_timeout(None).unwrap();
        let nonce = client.next_nonce();
        client
            .send_signed(
                SubscribeBatches {
                    from: client.address(),
                    nonce,
                    signature: Signature::default(),
                }
                .into(),
            )
            .unwrap();
        std::thread::spawn(move || {
            while let Ok(message) = client.recv_verified() {
                if let Message::CreditBatch(batch) = message {
                    keep.lock().unwrap().push(batch);
                }
            }
        });
        BatchWatcher { batches }
    }

    /// Waits for the first batch sealed after `count` batches were seen.
    pub async fn next_after(&self, count: usize) -> yellowstone_wire::CreditBatch {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(batch) = self.batches.lock().unwrap().get(count) {
                return batch.clone();
            }
            assert!(Instant::now() < deadline, "no credit batch within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn seen(&self) -> usize {
        self.batches.lock().unwrap().len()
    }

    /// Wei credited to `provider` over every batch seen.
    pub fn credited_wei(&self, provider: &str) -> u128 {
        let provider: yellowstone_wire::Address = provider.parse().unwrap();
        self.batches
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.totals.iter())
            .filter(|t| t.provider == provider)
            .map(|t| t.credited_wei)
            .sum()
    }
}

/// Funds `users` (5 MOR each) through the operator, then has `user` ask the router
/// for a session of model 1 with TokenMax `tokens_max`, as a user of its own (not
/// through the consumer node). Blocking: call from `spawn_blocking`.
pub fn fund_and_request_ticket(
    router: SocketAddr,
    user: &yellowstone_wire::SigningKey,
    also_fund: &[yellowstone_wire::Address],
    tokens_max: u64,
) -> yellowstone_wire::SessionTicket {
    use yellowstone_tests::market::*;
    use yellowstone_wire::*;
    let mut operator = connect(router, operator_key());
    let mut funded = vec![(user.address(), 5 * WEI_PER_MOR)];
    funded.extend(also_fund.iter().map(|a| (*a, 5 * WEI_PER_MOR)));
    fund(&mut operator, &funded);
    let mut client = connect(router, user.clone());
    send_rfc(&mut client, tokens_max);
    expect(&mut client, Duration::from_secs(10), |m| match m {
        Message::SessionTicket(t) => Some(t.clone()),
        Message::ErrorReply(e) => panic!("rfc refused: {e:?}"),
        _ => None,
    })
}

/// A direct request to the ticket's provider, signed by `key` over `signed_body`
/// (the body itself unless given).
pub fn provider_call(
    http: &reqwest::Client,
    ticket: &yellowstone_wire::SessionTicket,
    network_id: u32,
    key: &yellowstone_wire::SigningKey,
    session: u64,
    body: Vec<u8>,
    signed_body: Option<&[u8]>,
) -> reqwest::RequestBuilder {
    use yellowstone_node::inference::{sign_request, SESSION_HEADER, SIGNATURE_HEADER};
    let signature = sign_request(key, network_id, session, signed_body.unwrap_or(&body));
    http.post(format!("http://{}/v1/chat/completions", ticket.endpoint))
        .header(SESSION_HEADER, session.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(body)
}

/// Checks a refusal the OpenAI way (R-NODE-1/2): `status`, a JSON body with an `error`
/// object; returns the whole body.
pub async fn openai_error(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status(), status);
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    assert!(body["error"].is_object(), "no error object: {body}");
    body
}

/// A TCP proxy that can be cut: `cut()` closes every connection through it and
/// closes each new one at once until `restore()` (what a node sees while its router
/// is down or being failed over). Clones share one proxy; `start` sets the target.
#[derive(Clone)]
pub struct SwitchProxy {
    pub addr: SocketAddr,
    listener: Arc<Mutex<Option<std::net::TcpListener>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    live: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl SwitchProxy {
    /// Binds a loopback port (forwarding starts with `start`).
    pub fn bind() -> SwitchProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        SwitchProxy {
            addr: listener.local_addr().unwrap(),
            listener: Arc::new(Mutex::new(Some(listener))),
            down: Arc::default(),
            live: Arc::default(),
        }
    }

    /// Forwards every connection to `target` (while not cut).
    pub fn start(&self, target: SocketAddr) {
        let listener = self.listener.lock().unwrap().take().expect("started once");
        let (down, live) = (self.down.clone(), self.live.clone());
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if down.load(Ordering::Acquire) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                live.lock().unwrap().push(client.try_clone().unwrap());
                live.lock().unwrap().push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
    }

    /// Closes every connection and refuses new ones (accepted, closed at once).
    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::Release);
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::Release);
    }
}
