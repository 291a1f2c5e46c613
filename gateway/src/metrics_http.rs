//! The metrics endpoint: `GET /metrics` (Prometheus text) and 404 for anything else,
//! served by hyper (HTTP/1.1) on a single-threaded tokio runtime of its own thread,
//! away from the gateway and engine threads.
//!
//! Guarantees: connections are served concurrently (a slow or stalled client holds
//! only its own task, never a scrape); each connection has a whole-request deadline
//! of `metrics.request_timeout_ms` from its accept (request head, response and all),
//! after which it is closed whatever it sent; at most `metrics.connections_max`
//! connections served at once; past it a connection is answered
//! `503 Service Unavailable` with `Retry-After` (whole seconds of
//! `metrics.request_timeout_ms`, the longest a served connection holds its place)
//! and closed, by at most `metrics.connections_max` more tasks at once, each held to
//! the same deadline; past both limits a connection is closed at once without an
//! answer (both kinds counted, so the number of tasks stays bounded whatever the
//! load); a request head is bounded by `metrics.request_bytes_max`; one request per
//! connection (no keep-alive); listens where configured (127.0.0.1 by default);
//! `stop` ends the runtime and joins the thread.

use crate::config::MetricsConfig;
use crate::metrics::{Counter, Registry};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// hyper's smallest read buffer; `request_bytes_max` below it is raised to it.
const HYPER_BUF_BYTES_MIN: usize = 8 * 1024;
/// Pause after a failed accept (EMFILE and friends) so the loop does not spin.
/// §9: the metrics endpoint logs failed accepts at most this often.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);
const ACCEPT_RETRY_MS: u64 = 50;
/// Read size while draining a refused client's request before the close.
const DRAIN_CHUNK_BYTES: usize = 1024;

pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What each connection is held to, from `[metrics]`.
#[derive(Clone, Copy)]
struct Limits {
    request_timeout: Duration,
    request_bytes_max: usize,
    connections_max: usize,
}

/// Counts a connection open until dropped (also when its task is cancelled).
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before >= 1, "metrics connection released twice");
    }
}

impl MetricsServer {
    pub fn start(config: &MetricsConfig, registry: Registry) -> io::Result<MetricsServer> {
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let limits = Limits {
            request_timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
            request_bytes_max: config.request_bytes_max.max(HYPER_BUF_BYTES_MIN),
            connections_max: config.connections_max.max(1),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ys-metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "metrics endpoint: listener");
                            return;
                        }
                    };
                    tokio::spawn(accept_loop(listener, registry, limits));
                    // Until `stop` (or the handle is dropped).
                    let _ = stop_rx.await;
                });
                // Dropping the runtime cancels every connection task.
            })?;
        tracing::info!(%local_addr, "metrics listening");
        Ok(MetricsServer {
            local_addr,
            stop: Some(stop_tx),
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, registry: Registry, limits: Limits) {
    let open = Arc::new(AtomicUsize::new(0));
    let refused = registry.counter(
        "yellowstone_metrics_connections_refused_total",
        "Metrics connections closed at once without an answer: metrics.connections_max were being served and as many answered 503.",
        &[],
    );
    let expired = registry.counter(
        "yellowstone_metrics_requests_expired_total",
        "Metrics connections closed at their whole-request deadline (metrics.request_timeout_ms).",
        &[],
    );
    let answered_busy = registry.counter(
        "yellowstone_metrics_connections_busy_total",
        "Metrics connections answered 503 Service Unavailable (with Retry-After): metrics.connections_max were being served.",
        &[],
    );
    let accept_errors = registry.counter(
        "yellowstone_metrics_accept_errors_total",
        "Metrics endpoint accepts that failed (descriptors or memory exhausted).",
        &[],
    );
    // §9: one warning per ACCEPT_ERROR_LOG_INTERVAL with the count since the last,
    // never one per failed accept (each retried after ACCEPT_RETRY_MS).
    let mut unlogged_errors = 0u64;
    let mut logged_at: Option<std::time::Instant> = None;
    let refusing = Arc::new(AtomicUsize::new(0));
    let busy_response = Bytes::from(busy_response(limits.request_timeout));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                accept_errors.inc();
                unlogged_errors += 1;
                if logged_at.is_none_or(|at| at.elapsed() >= ACCEPT_ERROR_LOG_INTERVAL) {
                    tracing::warn!(
                        %error,
                        errors = unlogged_errors,
                        "metrics endpoint: accept failed (count since the last such line)"
                    );
                    unlogged_errors = 0;
                    logged_at = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= limits.connections_max {
            open.fetch_sub(1, Ordering::AcqRel);
            if refusing.fetch_add(1, Ordering::AcqRel) >= limits.connections_max {
                refusing.fetch_sub(1, Ordering::AcqRel);
                refused.inc();
                drop(stream);
                continue;
            }
            answered_busy.inc();
            tokio::spawn(answer_busy(
                stream,
                busy_response.clone(),
                limits,
                OpenGuard(refusing.clone()),
            ));
            continue;
        }
        let guard = OpenGuard(open.clone());
        tokio::spawn(serve_connection(
            stream,
            registry.clone(),
            limits,
            expired.clone(),
            guard,
        ));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    registry: Registry,
    limits: Limits,
    expired: Arc<Counter>,
    _open: OpenGuard,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = respond(&registry, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(limits.request_bytes_max)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.request_timeout, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "metrics request failed"),
        Err(_) => {
            expired.inc();
            tracing::debug!("metrics request closed at its deadline");
        }
    }
}

/// The whole answer to a connection over `metrics.connections_max`: 503, and when to
/// retry (a served connection holds its place at most `request_timeout`).
fn busy_response(request_timeout: Duration) -> String {
    let retry_after_s = request_timeout.as_millis().div_ceil(1_000).max(1);
    let body = "metrics endpoint busy: metrics.connections_max connections are being served; retry later\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         Retry-After: {retry_after_s}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Writes `response` whatever the client sent, ends the write side, then reads and
/// discards what the client sends (at most `request_bytes_max`) until it closes, so
/// that the close is not a reset that could destroy the answer before the client
/// reads it. Held to `request_timeout` like a served connection.
async fn answer_busy(
    mut stream: tokio::net::TcpStream,
    response: Bytes,
    limits: Limits,
    _refusing: OpenGuard,
) {
    let exchange = async {
        let mut written = 0;
        while written < response.len() {
            stream.writable().await?;
            match stream.try_write(&response[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // shutdown(SHUT_WR): the answer is followed by a FIN.
        std::future::poll_fn(|cx| {
            tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut stream), cx)
        })
        .await?;
        let mut chunk = [0u8; DRAIN_CHUNK_BYTES];
        let mut drained = 0;
        while drained < limits.request_bytes_max {
            stream.readable().await?;
            match stream.try_read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => drained += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok::<(), io::Error>(())
    };
    match tokio::time::timeout(limits.request_timeout, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "metrics busy answer failed"),
        Err(_) => tracing::debug!("metrics busy answer closed at its deadline"),
    }
}

fn respond(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = if request.method() == Method::GET && request.uri().path() == "/metrics" {
        (StatusCode::OK, registry.render())
    } else {
        (StatusCode::NOT_FOUND, "not found\n".to_string())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(timeout))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    fn server(request_timeout_ms: u64) -> MetricsServer {
        server_with(MetricsConfig {
            request_timeout_ms,
            ..MetricsConfig::default()
        })
        .0
    }

    fn server_with(config: MetricsConfig) -> (MetricsServer, Registry) {
        let registry = Registry::new();
        registry
            .counter("yellowstone_test_total", "Test.", &[])
            .add(42);
        let config = MetricsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        };
        let server = MetricsServer::start(&config, registry.clone()).unwrap();
        (server, registry)
    }

    /// A client that sends part of a request head and keeps its connection open.
    fn trickler(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /met").unwrap();
        stream
    }

    #[test]
    fn serves_metrics_over_real_tcp_and_404_otherwise() {
        let server = server(2_000);
        let timeout = Duration::from_secs(5);
        let response = get(server.local_addr(), "/metrics", timeout).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("text/plain; version=0.0.4"), "{response}");
        assert!(response.contains("\r\n\r\n# HELP yellowstone_test_total Test."));
        assert!(response.contains("yellowstone_test_total 42"));
        assert!(
            response.contains("yellowstone_stage_latency_seconds_count{stage=\"durable_wait\"} 0")
        );
        let response = get(server.local_addr(), "/", timeout).unwrap();
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        server.stop();
    }

    #[test]
    fn tricklers_neither_block_scrapes_nor_outlive_the_deadline() {
        let server = server(1_000);
        let addr = server.local_addr();
        let mut tricklers: Vec<TcpStream> = (0..4)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /met").unwrap();
                s
            })
            .collect();
        for _ in 0..3 {
            let started = Instant::now();
            let response = get(addr, "/metrics", Duration::from_millis(900)).unwrap();
            assert!(response.contains("yellowstone_test_total 42"), "{response}");
            assert!(started.elapsed() < Duration::from_millis(900));
            for s in &mut tricklers {
                let _ = s.write_all(b"r");
            }
        }
        // Each trickler is closed at its whole-request deadline (1 s), not kept.
        for mut s in tricklers {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let started = Instant::now();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            assert!(started.elapsed() < Duration::from_secs(4));
        }
        server.stop();
    }

    #[test]
    fn over_the_connection_limit_answers_503_with_retry_after_and_stays_bounded() {
        let (server, registry) = server_with(MetricsConfig {
            request_timeout_ms: 2_000,
            connections_max: 2,
            ..MetricsConfig::default()
        });
        let addr = server.local_addr();
        // Both served places held by clients that never finish their request.
        let tricklers = [trickler(addr), trickler(addr)];
        // A scraper past the limit is told to come back, at once, not dropped.
        let started = Instant::now();
        let response = get(addr, "/metrics", Duration::from_millis(1_500)).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{response}"
        );
        assert!(response.contains("\r\nRetry-After: 2\r\n"), "{response}");
        assert!(response.contains("metrics.connections_max"), "{response}");
        assert!(started.elapsed() < Duration::from_millis(1_500));
        // The 503 answers are bounded too: two more clients that never close hold
        // the two answering places (each still gets its 503 and the server's FIN) ...
        let mut holders: Vec<TcpStream> = (0..2).map(|_| trickler(addr)).collect();
        for holder in &mut holders {
            holder
                .set_read_timeout(Some(Duration::from_millis(1_500)))
                .unwrap();
            let mut answer = String::new();
            holder.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        }
        // ... so the next one is closed without an answer and no task is spawned.
        let mut dropped = TcpStream::connect(addr).unwrap();
        dropped
            .set_read_timeout(Some(Duration::from_millis(1_500)))
            .unwrap();
        let mut rest = Vec::new();
        let closed = dropped.read_to_end(&mut rest);
        let reset = |e: &io::Error| e.kind() == io::ErrorKind::ConnectionReset;
        assert!(
            rest.is_empty() && closed.as_ref().map_or_else(reset, |_| true),
            "{closed:?} {rest:?}"
        );
        let text = registry.render();
        assert!(
            text.contains("yellowstone_metrics_connections_busy_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("yellowstone_metrics_connections_refused_total 1\n"),
            "{text}"
        );
        // Once the held places expire at their deadline, scrapes are served again.
        std::thread::sleep(Duration::from_millis(2_300));
        let response = get(addr, "/metrics", Duration::from_millis(1_500)).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        drop((tricklers, holders));
        server.stop();
    }
}
