//! What the market adds to an inference: time to first token (TTFT) and total time
//! of a streamed completion through consumer node -> provider node -> stand-in model
//! server, against the same completion asked of the stand-in directly, at a few
//! open-loop request rates; p50 and p99 of each, and of the market's own matching
//! time (the consumer's `x-yellowstone-ticket-us`: application request to ticket,
//! i.e. catalog lookup + RFC -> probe -> ticket at the router).
//!
//! The stand-in generates at a model's pace (`--delay-ms-per-token`, default 10 ms:
//! 100 tokens a second), for both paths, so that the reports' milliseconds mean
//! something: the router runs with its default speed gate (R-PERF-1), and the
//! reports' outcomes (earned, too slow…) are printed per rate. With
//! `--delay-ms-per-token 0` completions take under a millisecond or two and the
//! gate compares scheduling jitter (see README, "speed gate and sub-millisecond
//! answers"). `--rounds N` alternates direct and market runs N times per rate (2
//! shared cores: compare interleaved runs only).
//!
//! It starts the real processes (release binaries from `--bin-dir`) on loopback and
//! is bounded in time (`--seconds` per rate, path and round). Build first:
//!
//!     cargo build --release -p yellowstone-gateway -p yellowstone-node --bins --examples
//!     ./target/release/examples/market_overhead --rates 10,50,100 --seconds 6
//!
//! Figures and method: BENCHMARKS.md, "Nodes: what the market adds to an inference".
//!
//! Issue 23's cost per request: the `cpu ms/req` column is the CPU time (user +
//! system, from /proc/PID/stat) the router, the provider node and the consumer node
//! used together during the market runs of a rate, divided by the market requests
//! sent. `--upstream URL --upstream-model NAME` puts a real OpenAI-compatible model
//! server (e.g. `python -m llama_cpp.server` on node/tests/python/tiny_gguf.py's
//! model) behind the provider instead of the stand-in, for both paths; the router's
//! catalog then needs the served file's hash: `--weights-file FILE`.
//!
//! Judging the 1 ms target: `--floor` adds a path through two bare relay hops (this
//! program as a minimal axum + reqwest pass-through, the nodes' HTTP stack, chained
//! as consumer -> provider are) and reports their CPU per request; the direct path
//! reports the stand-in's own; the run prints the µs of one signature and of one
//! recovery under the run's load. `--bin-dir-b DIR` runs a second market from other
//! binaries (e.g. an older commit's) interleaved with the first, for before/after
//! ratios from one run.

use hdrhistogram::Histogram;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Proc(Child, Vec<String>);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a process and reads stdout until each of `wait_for` prefixes was seen.
fn start(bin: &Path, args: &[&str], cwd: &Path, wait_for: &[&str]) -> Proc {
    let mut child = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut seen = Vec::new();
    for prefix in wait_for {
        loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "{} exited",
                bin.display()
            );
            if line.starts_with(prefix) {
                seen.push(line.trim().to_string());
                break;
            }
        }
    }
    std::thread::spawn(move || for _ in reader.lines() {});
    Proc(child, seen)
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .unwrap()
        .to_string()
}

struct Sample {
    ttft_us: u64,
    total_us: u64,
    ticket_us: Option<u64>,
}

/// One streamed completion; times from sending to the first content chunk and to
/// the end of the stream.
async fn one(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<Sample, String> {
    use futures_util::StreamExt;
    let started = Instant::now();
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let ticket_us = response
        .headers()
        .get("x-yellowstone-ticket-us")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut stream = response.bytes_stream();
    let mut ttft_us = None;
    let mut seen = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        seen.extend_from_slice(&chunk);
        if ttft_us.is_none() && seen.windows(11).any(|w| w == b"\"content\":\"") {
            // The role chunk carries an empty content; the first word is the token.
            let text = String::from_utf8_lossy(&seen);
            if text.matches("\"content\":\"").count() > text.matches("\"content\":\"\"").count() {
                ttft_us = Some(started.elapsed().as_micros() as u64);
            }
        }
    }
    let total_us = started.elapsed().as_micros() as u64;
    if !String::from_utf8_lossy(&seen).contains("[DONE]") {
        return Err("stream without [DONE]".into());
    }
    Ok(Sample {
        ttft_us: ttft_us.unwrap_or(total_us),
        total_us,
        ticket_us,
    })
}

struct Run {
    ttft: Histogram<u64>,
    total: Histogram<u64>,
    ticket: Histogram<u64>,
    errors: u64,
    sent: u64,
}

/// Open loop: requests leave on schedule whatever the answers do (no coordinated
/// omission); each is measured from its scheduled time's actual send.
async fn run_rate(url: String, rate: u64, seconds: u64, body: serde_json::Value) -> Run {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let url = Arc::new(url);
    let body = Arc::new(body);
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = tokio::time::Instant::now();
    let count = rate * seconds;
    for i in 0..count {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let (client, url, body, sender) =
            (client.clone(), url.clone(), body.clone(), sender.clone());
        tokio::spawn(async move {
            let _ = sender.send(one(&client, &url, &body).await);
        });
    }
    drop(sender);
    let mut run = Run::new();
    run.sent = count;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(result)) = tokio::time::timeout_at(deadline, receiver.recv()).await {
        match result {
            Ok(sample) => {
                run.ttft.record(sample.ttft_us).unwrap();
                run.total.record(sample.total_us).unwrap();
                if let Some(ticket) = sample.ticket_us {
                    run.ticket.record(ticket).unwrap();
                }
            }
            Err(_) => run.errors += 1,
        }
    }
    run
}

impl Run {
    fn new() -> Run {
        Run {
            ttft: Histogram::new(3).unwrap(),
            total: Histogram::new(3).unwrap(),
            ticket: Histogram::new(3).unwrap(),
            errors: 0,
            sent: 0,
        }
    }

    fn add(&mut self, other: Run) {
        self.ttft.add(&other.ttft).unwrap();
        self.total.add(&other.total).unwrap();
        self.ticket.add(&other.ticket).unwrap();
        self.errors += other.errors;
        self.sent += other.sent;
    }
}

/// The consumer's `yellowstone_consumer_reports_total{outcome, ack}` series.
async fn reports(client: &reqwest::Client, url: &str) -> Vec<(String, f64)> {
    let Ok(response) = client.get(url).send().await else {
        return Vec::new();
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("yellowstone_consumer_reports_total{"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let series = series.trim_start_matches("yellowstone_consumer_reports_total");
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// CPU time (user + system) of process `pid` in ms, from /proc/PID/stat (fields 14
/// and 15, in clock ticks of 10 ms on Linux: `getconf CLK_TCK` is 100).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After ')' the state is field 3: utime (14) and stime (15) are at 11 and 12.
    (ticks(11) + ticks(12)) * 10.0
}

/// The floor (`--floor`): a bare streaming relay hop doing no market work, on the
/// nodes' own HTTP stack (`yellowstone_node::serve_bounded`: hyper http1 + axum,
/// TCP_NODELAY; a reqwest client with TCP_NODELAY as the nodes' upstream calls). Run
/// as `market_overhead --proxy-upstream URL` (this program re-executes itself): it
/// prints `READY listen=ADDR` and relays `POST /v1/chat/completions` to `URL`, the
/// answer streamed back chunk by chunk as it comes.
fn proxy_main(upstream: String) {
    use axum::body::{Body, Bytes};
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::Response;
    use futures_util::StreamExt;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .unwrap();
        let state = Arc::new((client, upstream));
        async fn relay(
            State(state): State<Arc<(reqwest::Client, String)>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            let (client, url) = &*state;
            let mut request = client.post(url).body(body);
            if let Some(content_type) = headers.get("content-type") {
                request = request.header("content-type", content_type.clone());
            }
            match request.send().await {
                Ok(upstream) => {
                    let status = upstream.status();
                    let content_type = upstream.headers().get("content-type").cloned();
                    let stream = upstream
                        .bytes_stream()
                        .map(|c| c.map_err(std::io::Error::other));
                    let mut response = Response::new(Body::from_stream(stream));
                    *response.status_mut() = status;
                    if let Some(content_type) = content_type {
                        response.headers_mut().insert("content-type", content_type);
                    }
                    response
                }
                Err(error) => {
                    let mut response = Response::new(Body::from(error.to_string()));
                    *response.status_mut() = StatusCode::BAD_GATEWAY;
                    response
                }
            }
        }
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(relay))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("READY listen={}", listener.local_addr().unwrap());
        yellowstone_node::serve_bounded(listener, app, Duration::from_secs(30), 4096).await;
    });
}

/// One market: router, provider node and consumer node started from the binaries
/// in `bin_dir`, in front of the stand-in at `standin_listen`.
struct Market {
    _procs: Vec<Proc>,
    pids: [u32; 3],
    url: String,
    metrics_url: String,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--proxy-upstream") {
        return proxy_main(args.get(i + 1).cloned().expect("--proxy-upstream URL"));
    }
    let arg = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let bin_dir = PathBuf::from(arg("--bin-dir", "target/release"))
        .canonicalize()
        .expect("--bin-dir: the directory of the release binaries");
    // `--bin-dir-b DIR`: a second market from other binaries (e.g. an older commit's),
    // measured interleaved with the first in the same run (path `market-b`), both in
    // front of the same stand-in; the order of the two alternates round by round.
    let bin_dir_b = arg("--bin-dir-b", "");
    let bin_dir_b = (!bin_dir_b.is_empty()).then(|| {
        PathBuf::from(bin_dir_b)
            .canonicalize()
            .expect("--bin-dir-b: a directory of release binaries")
    });
    // `--floor`: two bare relay hops (this program as `--proxy-upstream`, see
    // `proxy_main`) chained in front of the stand-in, as consumer -> provider are:
    // the CPU per request of relaying the same stream with no market work.
    let floor = args.iter().any(|a| a == "--floor");
    let rates: Vec<u64> = arg("--rates", "10,50,100")
        .split(',')
        .map(|r| r.parse().expect("rates: integers"))
        .collect();
    let seconds: u64 = arg("--seconds", "10").parse().unwrap();
    let tokens: u64 = arg("--tokens", "16").parse().unwrap();
    let delay_ms_per_token: u64 = arg("--delay-ms-per-token", "10").parse().unwrap();
    let rounds: u64 = arg("--rounds", "1").parse().unwrap();
    let upstream = arg("--upstream", "");
    let upstream_model = arg("--upstream-model", "standin");
    let weights_file = arg("--weights-file", "");
    // `--idle-seconds N`: first measure the CPU of the three processes over N s of no
    // request (0: skip).
    let idle_seconds: u64 = arg("--idle-seconds", "0").parse().unwrap();
    // Issue 23's reference row: `--reference-url URL --reference-model NAME
    // --reference-pid PID` runs a third path per rate (e.g. LiteLLM's proxy in front
    // of the stand-in, which `--standin-listen ADDR` puts on a known port) and
    // reports PID's CPU per request.
    let standin_listen_arg = arg("--standin-listen", "127.0.0.1:0");
    let reference_url = arg("--reference-url", "");
    let reference_model = arg("--reference-model", "standin");
    let reference_pid: u32 = arg("--reference-pid", "0").parse().unwrap();
    assert!(
        seconds * rounds <= 120
            && idle_seconds <= 120
            && rounds > 0
            && delay_ms_per_token <= 1_000
            && rates.iter().all(|&r| r > 0 && r <= 2_000),
        "bounded runs only"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let standin = start(
        &bin_dir.join("yellowstone-standin-llm"),
        &[
            "--listen",
            &standin_listen_arg,
            "--tokens",
            &tokens.to_string(),
            "--delay-ms-per-token",
            &delay_ms_per_token.to_string(),
        ],
        d,
        &["READY"],
    );
    let standin_pid = upstream.is_empty().then(|| standin.0.id());
    let standin_listen = if upstream.is_empty() {
        field(&standin.1[0], "listen")
    } else {
        upstream
            .trim_start_matches("http://")
            .trim_end_matches("/v1")
            .to_string()
    };
    let setup = MarketSetup {
        standin_listen: standin_listen.clone(),
        upstream_model: upstream_model.clone(),
        weights_file: weights_file.clone(),
    };
    let market_a = start_market(&bin_dir, &d.join("a"), &setup);
    let market_b = bin_dir_b
        .as_ref()
        .map(|bin_dir| start_market(bin_dir, &d.join("b"), &setup));
    let direct_url = format!("http://{standin_listen}/v1/chat/completions");
    // Two hops: client -> hop 1 -> hop 2 -> stand-in.
    let (floor_procs, floor_url) = if floor {
        let me = std::env::current_exe().unwrap();
        let hop2 = start(&me, &["--proxy-upstream", &direct_url], d, &["READY"]);
        let hop2_url = format!("http://{}/v1/chat/completions", field(&hop2.1[0], "listen"));
        let hop1 = start(&me, &["--proxy-upstream", &hop2_url], d, &["READY"]);
        let hop1_url = format!("http://{}/v1/chat/completions", field(&hop1.1[0], "listen"));
        (vec![hop1, hop2], hop1_url)
    } else {
        (Vec::new(), String::new())
    };
    let floor_pids: Vec<u32> = floor_procs.iter().map(|p| p.0.id()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let body = |model: &str| serde_json::json!({"model": model, "messages": [{"role": "user", "content": "benchmark prompt"}], "max_tokens": tokens, "stream": true});
        let client = reqwest::Client::new();
        let mut markets = vec![("market", &market_a)];
        if let Some(market_b) = &market_b {
            markets.push(("market-b", market_b));
        }
        // Warm up (and wait for the consumers' router connections).
        for (_, market) in &markets {
            for _ in 0..200 {
                if one(&client, &market.url, &body("demo-model-1")).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if floor {
            for _ in 0..20 {
                if one(&client, &floor_url, &body(&upstream_model)).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The fixed cost: CPU per second of the three processes with no request
        // (keepalives, health checks, timers), apart from the cost per request.
        if idle_seconds > 0 {
            for (name, market) in &markets {
                let before = market.pids.map(cpu_ms);
                tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
                let after = market.pids.map(cpu_ms);
                let per = [0, 1, 2].map(|i| (after[i] - before[i]) / idle_seconds as f64);
                println!(
                    "{name} idle ({idle_seconds} s, 0 req/s): cpu ms/s router + provider + consumer = {:.1} + {:.1} + {:.1} = {:.1}",
                    per[0],
                    per[1],
                    per[2],
                    per.iter().sum::<f64>()
                );
            }
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("load average at start: {}", load.trim());
        let (sign_us, recover_us) = signature_us();
        println!("signature operations here, now: sign {sign_us:.1} µs, recover {recover_us:.1} µs (thread CPU time, median of 5 x 200)");
        println!("streamed completions of {tokens} tokens, stand-in at {delay_ms_per_token} ms per token, {seconds} s x {rounds} round(s) per rate and path (interleaved), open loop; times in ms");
        println!("| rate/s | path | ok | errors | TTFT p50 | TTFT p99 | total p50 | total p99 | ticket p50 | ticket p99 | path - direct - ticket, p50 | cpu ms/req |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut outcomes = Vec::new();
        let mut summary = Vec::new();
        for &rate in &rates {
            let mut before = Vec::new();
            for (_, market) in &markets {
                before.push(reports(&client, &market.metrics_url).await);
            }
            let (mut direct, mut floor_run, mut reference) = (Run::new(), Run::new(), Run::new());
            let mut market_runs: Vec<Run> = markets.iter().map(|_| Run::new()).collect();
            let mut market_cpu = vec![[0.0f64; 3]; markets.len()];
            let (mut reference_cpu, mut standin_cpu, mut floor_cpu) = (0.0f64, 0.0f64, [0.0f64; 2]);
            for round in 0..rounds {
                let standin_before = standin_pid.map_or(0.0, cpu_ms);
                direct.add(run_rate(direct_url.clone(), rate, seconds, body(&upstream_model)).await);
                tokio::time::sleep(Duration::from_millis(300)).await;
                standin_cpu += standin_pid.map_or(0.0, cpu_ms) - standin_before;
                if floor {
                    let cpu_before: Vec<f64> = floor_pids.iter().map(|&p| cpu_ms(p)).collect();
                    floor_run.add(run_rate(floor_url.clone(), rate, seconds, body(&upstream_model)).await);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    for (i, &pid) in floor_pids.iter().enumerate() {
                        floor_cpu[i] += cpu_ms(pid) - cpu_before[i];
                    }
                }
                if !reference_url.is_empty() {
                    let cpu_before = cpu_ms(reference_pid);
                    reference.add(run_rate(reference_url.clone(), rate, seconds, body(&reference_model)).await);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    reference_cpu += cpu_ms(reference_pid) - cpu_before;
                }
                // The two markets alternate which goes first.
                let mut order: Vec<usize> = (0..markets.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                for m in order {
                    let market = markets[m].1;
                    let cpu_before = market.pids.map(cpu_ms);
                    market_runs[m].add(run_rate(market.url.clone(), rate, seconds, body("demo-model-1")).await);
                    // The reports of the last answers are part of their cost.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let cpu_after = market.pids.map(cpu_ms);
                    for (i, total) in market_cpu[m].iter_mut().enumerate() {
                        *total += cpu_after[i] - cpu_before[i];
                    }
                }
            }
            let per_request = |cpu: f64, run: &Run| if run.sent > 0 { cpu / run.sent as f64 } else { 0.0 };
            let mut paths: Vec<(String, &Run, String)> = Vec::new();
            let standin_note = if standin_pid.is_some() {
                format!("{:.2} (the stand-in itself)", per_request(standin_cpu, &direct))
            } else {
                "-".to_string()
            };
            paths.push(("direct".into(), &direct, standin_note));
            if floor {
                let per = floor_cpu.map(|c| per_request(c, &floor_run));
                paths.push((
                    "floor".into(),
                    &floor_run,
                    format!("hop1 + hop2 = {:.2} + {:.2} = {:.2}", per[0], per[1], per[0] + per[1]),
                ));
            }
            if !reference_url.is_empty() {
                let cpu = format!("{:.2} (reference process)", per_request(reference_cpu, &reference));
                paths.push(("reference".into(), &reference, cpu));
            }
            let mut sums = Vec::new();
            for (m, (name, _)) in markets.iter().enumerate() {
                let per = market_cpu[m].map(|c| per_request(c, &market_runs[m]));
                let sum = per.iter().sum::<f64>();
                sums.push(sum);
                paths.push((
                    name.to_string(),
                    &market_runs[m],
                    format!("router + provider + consumer = {:.2} + {:.2} + {:.2} = {sum:.2}", per[0], per[1], per[2]),
                ));
            }
            let floor_sum = floor.then(|| floor_cpu.iter().sum::<f64>() / floor_run.sent.max(1) as f64);
            summary.push((rate, sums, floor_sum));
            let q = |h: &Histogram<u64>, q: f64| if h.is_empty() { "-".to_string() } else { format!("{:.2}", ms(h.value_at_quantile(q))) };
            for (name, run, cpu) in paths {
                let (t50, t99) = (q(&run.ticket, 0.5), q(&run.ticket, 0.99));
                let added = if name == "direct" || run.total.is_empty() || direct.total.is_empty() {
                    "-".to_string()
                } else {
                    let ticket = if run.ticket.is_empty() { 0.0 } else { ms(run.ticket.value_at_quantile(0.5)) };
                    format!("{:.2}", ms(run.total.value_at_quantile(0.5)) - ms(direct.total.value_at_quantile(0.5)) - ticket)
                };
                println!(
                    "| {rate} | {name} | {} | {} | {} | {} | {} | {} | {t50} | {t99} | {added} | {cpu} |",
                    run.sent - run.errors, run.errors,
                    q(&run.ttft, 0.5), q(&run.ttft, 0.99),
                    q(&run.total, 0.5), q(&run.total, 0.99),
                );
            }
            // Reports are sent after each answer: let the last ones be acknowledged.
            tokio::time::sleep(Duration::from_millis(500)).await;
            for (m, (name, market)) in markets.iter().enumerate() {
                let after = reports(&client, &market.metrics_url).await;
                let delta: Vec<String> = after
                    .iter()
                    .filter_map(|(series, n)| {
                        let n = n - before[m].iter().find(|(s, _)| s == series).map_or(0.0, |b| b.1);
                        (n > 0.0).then(|| format!("{series} {n}"))
                    })
                    .collect();
                outcomes.push(format!("{rate}/s {name}: {}", delta.join(", ")));
            }
        }
        println!("reports by outcome and the router's answer (consumer metrics):");
        for line in outcomes {
            println!("  {line}");
        }
        if markets.len() > 1 || floor {
            println!("cpu ms/req (sum of the three) by rate: market, market-b, market / market-b; floor (two bare hops)");
            for (rate, sums, floor_sum) in summary {
                let ratio = match sums.as_slice() {
                    [a, b] if *b > 0.0 => format!("{:.2}", a / b),
                    _ => "-".to_string(),
                };
                let b = sums.get(1).map_or("-".to_string(), |b| format!("{b:.2}"));
                let f = floor_sum.map_or("-".to_string(), |f| format!("{f:.2}"));
                println!("  {rate}/s: {:.2}, {b}, {ratio}; floor {f}", sums[0]);
            }
        }
    });
    drop(floor_procs);
    drop(market_b);
    drop(market_a);
}

/// This thread's CPU time in ns (`/proc/thread-self/schedstat`, first field): time
/// on a CPU only, so a shared machine's load does not inflate it as it does wall time.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The CPU cost of the market's two signature operations on this machine: (sign,
/// recover) in µs of thread CPU time, each the median of 5 batches of 200
/// (secp256k1 through `yellowstone_wire`, as the nodes and the router use it).
fn signature_us() -> (f64, f64) {
    use yellowstone_wire::signature::{inference_request_digest, recover_signer};
    let key = yellowstone_wire::SigningKey::from_seed(b"bench-signature");
    let digest = inference_request_digest(1, 7, b"{\"model\":\"m\"}");
    let signature = key.sign_digest(&digest);
    let median = |f: &dyn Fn()| {
        let mut batches: Vec<f64> = (0..5)
            .map(|_| {
                let started = thread_cpu_ns();
                for _ in 0..200 {
                    f();
                }
                (thread_cpu_ns() - started) as f64 / 1e3 / 200.0
            })
            .collect();
        batches.sort_by(f64::total_cmp);
        batches[2]
    };
    let sign = median(&|| {
        std::hint::black_box(key.sign_digest(std::hint::black_box(&digest)));
    });
    let recover = median(&|| {
        let signer = recover_signer(std::hint::black_box(&digest), &signature);
        assert_eq!(signer, Ok(key.address()));
    });
    (sign, recover)
}

/// What every market of a run shares.
struct MarketSetup {
    standin_listen: String,
    upstream_model: String,
    weights_file: String,
}

/// Starts a router, a provider node and a consumer node from `bin_dir`'s binaries,
/// their files in `d` (created), funded and logged in; returns once the provider has
/// registered and the consumer listens.
fn start_market(bin_dir: &Path, d: &Path, setup: &MarketSetup) -> Market {
    std::fs::create_dir_all(d).unwrap();
    let keygen = |bin: &str, out: &str| {
        let output = Command::new(bin_dir.join(bin))
            .args(["keygen", "--out", out])
            .current_dir(d)
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let provider_address = keygen("yellowstone-provider", "provider.key");
    let consumer_address = keygen("yellowstone-consumer", "consumer.key");
    let operator = yellowstone_wire::SigningKey::from_seed(b"bench-operator")
        .address()
        .to_string();
    std::fs::write(
        d.join("balances.csv"),
        format!(
            "{provider_address},1000000000000000000\n{consumer_address},100000000000000000000000\n"
        ),
    )
    .unwrap();
    let data = d.join("data").display().to_string();
    // R-SESSION-1: one consumer carries the whole open-loop rate, far more than the
    // default 16 open sessions of one user.
    let catalog = if setup.weights_file.is_empty() {
        String::new()
    } else {
        let hash = blake3::hash(&std::fs::read(&setup.weights_file).expect("--weights-file"));
        format!(
            "[[market.models]]\nid = 1\nweights_hash = \"{}\"\nname = \"demo-model-1\"\n",
            hash.to_hex()
        )
    };
    std::fs::write(
        d.join("router.toml"),
        format!("[market]\nuser_sessions_open_max = 4096\n{catalog}"),
    )
    .unwrap();
    let router = start(
        &bin_dir.join("yellowstone-router"),
        &[
            "run",
            "--config",
            "router.toml",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--operator",
            &operator,
            "--balance-snapshot",
            "balances.csv",
        ],
        d,
        &["READY"],
    );
    let router_listen = field(&router.1[0], "listen");
    if setup.weights_file.is_empty() {
        std::fs::write(d.join("model-1.weights"), b"yellowstone-demo-model-1").unwrap();
    } else {
        std::fs::copy(&setup.weights_file, d.join("model-1.weights")).expect("--weights-file");
    }
    std::fs::write(
        d.join("provider.toml"),
        format!("router_addr = \"{router_listen}\"\nkey_file = \"provider.key\"\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"\"\n\
                 [[models]]\nmodel_id = 1\nweights_file = \"model-1.weights\"\nupstream_base_url = \"http://{}/v1\"\n\
                 upstream_model = \"{}\"\nprice_wei_per_token = \"1000000000\"\ncapacity = 10000\n",
                 setup.standin_listen, setup.upstream_model),
    )
    .unwrap();
    let provider = start(
        &bin_dir.join("yellowstone-provider"),
        &["run", "--config", "provider.toml"],
        d,
        &["READY", "REGISTERED"],
    );
    std::fs::write(
        d.join("consumer.toml"),
        format!("router_addr = \"{router_listen}\"\nkey_file = \"consumer.key\"\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let consumer = start(
        &bin_dir.join("yellowstone-consumer"),
        &["run", "--config", "consumer.toml"],
        d,
        &["READY"],
    );
    let url = format!(
        "http://{}/v1/chat/completions",
        field(&consumer.1[0], "listen")
    );
    let metrics_url = format!("http://{}/metrics", field(&consumer.1[0], "metrics"));
    let pids = [router.0.id(), provider.0.id(), consumer.0.id()];
    Market {
        // Dropped in order: the consumer first, the router last.
        _procs: vec![consumer, provider, router],
        pids,
        url,
        metrics_url,
    }
}
