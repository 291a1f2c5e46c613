//! The metrics endpoint: a tiny HTTP/1.1 server on its own thread serving
//! `GET /metrics` (Prometheus text) and 404 for anything else.
//!
//! Guarantees: one request at a time, each bounded by `request_bytes_max` and by read
//! and write timeouts, answered with `Connection: close`; listens where configured
//! (127.0.0.1 by default); `stop` wakes the blocked accept and joins the thread.

use crate::config::MetricsConfig;
use crate::metrics::Registry;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn start(config: &MetricsConfig, registry: Registry) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let timeout = Duration::from_millis(config.request_timeout_ms.max(1));
        let bytes_max = config.request_bytes_max;
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ys-metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if thread_stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Err(error) = serve_one(stream, &registry, timeout, bytes_max) {
                        tracing::debug!(%error, "metrics request failed");
                    }
                }
            })?;
        tracing::info!(%local_addr, "metrics listening");
        Ok(MetricsServer {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // Wake the blocked accept.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        let _ = thread.join();
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn serve_one(
    mut stream: TcpStream,
    registry: &Registry,
    timeout: Duration,
    bytes_max: usize,
) -> io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= bytes_max {
            return respond(&mut stream, "431 Request Header Fields Too Large", "");
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n.min(bytes_max - head.len())]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    if method == b"GET" && (path == b"/metrics" || path.starts_with(b"/metrics?")) {
        respond(&mut stream, "200 OK", &registry.render())
    } else {
        respond(&mut stream, "404 Not Found", "not found\n")
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn serves_metrics_over_real_tcp_and_404_otherwise() {
        let registry = Registry::new();
        registry
            .counter("yellowstone_test_total", "Test.", &[])
            .add(42);
        let config = MetricsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..MetricsConfig::default()
        };
        let server = MetricsServer::start(&config, registry).unwrap();
        let response = get(server.local_addr(), "/metrics");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("\r\n\r\n# HELP yellowstone_test_total Test."));
        assert!(response.contains("yellowstone_test_total 42"));
        assert!(response.contains("yellowstone_stage_latency_seconds_count{stage=\"send\"} 0"));
        assert!(get(server.local_addr(), "/").starts_with("HTTP/1.1 404"));
        server.stop();
    }
}
