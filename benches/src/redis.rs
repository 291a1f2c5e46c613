//! Redis as the known-fast reference for the network path: `redis-server` (Debian's
//! package) started on a free loopback port and stopped by pid, and
//! `redis-benchmark -t ping` against it.

use crate::process::{free_port, run_capture, which, Owned};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisTools {
    pub server: PathBuf,
    pub benchmark: PathBuf,
}

fn locate() -> Option<RedisTools> {
    Some(RedisTools {
        server: which("redis-server")?,
        benchmark: which("redis-benchmark")?,
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Finds `redis-server` and `redis-benchmark`; when missing and `install` is set and
/// we are root, installs Debian's `redis-server` and `redis-tools` with apt-get.
pub fn locate_or_install(install: bool) -> Result<RedisTools, String> {
    if let Some(tools) = locate() {
        return Ok(tools);
    }
    if !install {
        return Err("redis-server/redis-benchmark not found on PATH (install the Debian packages redis-server and redis-tools)".into());
    }
    if !is_root() {
        return Err("redis-server/redis-benchmark not found on PATH and not root: run `apt-get install -y redis-server redis-tools` as root".into());
    }
    eprintln!("whole-system: installing redis-server and redis-tools with apt-get");
    let install = || {
        run_capture(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "redis-server", "redis-tools"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            Duration::from_secs(600),
        )
    };
    if install().is_err() {
        // A fresh machine may have no package lists yet.
        run_capture(
            Command::new("apt-get").args(["update", "-q"]),
            Duration::from_secs(600),
        )?;
        install()?;
    }
    locate().ok_or_else(|| {
        "apt-get installed redis but redis-server/redis-benchmark are still not on PATH".into()
    })
}

/// A `redis-server` on 127.0.0.1 without persistence; killed on drop.
pub struct RedisServer {
    process: Option<Owned>,
    pub port: u16,
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

impl RedisServer {
    pub fn start(server: &Path) -> Result<RedisServer, String> {
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut command = Command::new(server);
            command
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--protected-mode", "yes", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut process = Owned::spawn(&mut command)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if answers_ping(port) {
                    return Ok(RedisServer {
                        process: Some(process),
                        port,
                    });
                }
                if let Ok(Some(status)) = process.child_mut().try_wait() {
                    last_error = format!("redis-server exited: {status}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if last_error.is_empty() {
                last_error = "redis-server did not answer PING within 10 s".into();
            }
            drop(process);
        }
        Err(last_error)
    }

    /// SIGTERM by pid, reaped (SIGKILL after 5 s).
    pub fn stop(mut self) {
        if let Some(process) = self.process.take() {
            process.terminate(Duration::from_secs(5));
        }
    }
}

/// One `redis-benchmark` result line, latencies in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RedisBench {
    pub test: String,
    pub requests: u64,
    pub pings_per_s: f64,
    pub avg_us: f64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Parses `redis-benchmark --csv` output and returns the `test` line.
pub fn parse_csv(text: &str, test: &str) -> Option<RedisBench> {
    let header: Vec<String> = text
        .lines()
        .find(|l| l.starts_with("\"test\""))?
        .split(',')
        .map(|f| f.trim_matches('"').to_string())
        .collect();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("\"{test}\"")))?;
    let values: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
    let field = |name: &str| -> Option<f64> {
        let at = header.iter().position(|h| h == name)?;
        values.get(at)?.parse().ok()
    };
    Some(RedisBench {
        test: test.to_string(),
        requests: 0,
        pings_per_s: field("rps")?,
        avg_us: field("avg_latency_ms")? * 1e3,
        p50_us: field("p50_latency_ms")? * 1e3,
        p95_us: field("p95_latency_ms").unwrap_or(0.0) * 1e3,
        p99_us: field("p99_latency_ms")? * 1e3,
        max_us: field("max_latency_ms")? * 1e3,
    })
}

/// `redis-benchmark -t ping -c connections -P pipeline -n requests --csv`; the
/// PING_MBULK line (the command as clients send it).
pub fn benchmark(
    tools: &RedisTools,
    port: u16,
    connections: usize,
    pipeline: usize,
    requests: u64,
    timeout: Duration,
) -> Result<RedisBench, String> {
    let text = run_capture(
        Command::new(&tools.benchmark)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", "ping", "--csv"])
            .args(["-c", &connections.to_string()])
            .args(["-P", &pipeline.to_string()])
            .args(["-n", &requests.to_string()]),
        timeout,
    )?;
    let mut bench = parse_csv(&text, "PING_MBULK")
        .ok_or_else(|| format!("no PING_MBULK line in redis-benchmark output: {text}"))?;
    bench.requests = requests;
    Ok(bench)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"PING_INLINE\",\"1308900.50\",\"0.351\",\"0.104\",\"0.319\",\"0.695\",\"1.015\",\"3.111\"\n\"PING_MBULK\",\"1420454.50\",\"0.296\",\"0.096\",\"0.287\",\"0.351\",\"0.439\",\"1.663\"\n";
        let bench = parse_csv(text, "PING_MBULK").unwrap();
        assert_eq!(bench.pings_per_s, 1420454.5);
        assert!((bench.p50_us - 287.0).abs() < 1e-6);
        assert!((bench.p99_us - 439.0).abs() < 1e-6);
        assert!(parse_csv(text, "GET").is_none());
        assert!(parse_csv("garbage", "PING_MBULK").is_none());
    }
}
