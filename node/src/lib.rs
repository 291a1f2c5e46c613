//! yellowstone-node: the participants' nodes of the Yellowstone market (SPEC.md
//! section 10, R-NODE-1..3).
//!
//! - `provider`: `yellowstone-provider` logs in to the router, registers its models
//!   (BLAKE3 of each weights file, R-PROV-1), answers probes, keeps the session
//!   tickets the router sends, and serves ticket holders directly with the OpenAI API,
//!   forwarding to any OpenAI-compatible model server (R-NODE-1).
//! - `consumer`: `yellowstone-consumer` serves local applications with the OpenAI
//!   API; each completion becomes an RFC, a direct call to the ticket's provider and
//!   a signed report (R-NODE-2).
//! - `standin`: `yellowstone-standin-llm`, a deterministic OpenAI-compatible model
//!   server for tests and benchmarks only (it computes nothing).
//! - `link`: the nodes' asynchronous router connection over the `wire` crate.
//! - `inference`: the direct user -> provider request headers and their signature.
//!
//! Neither node sends a prompt or a completion to the router (R-NODE-3): the router
//! sees only RFCs (model, TokenMax), reports (ms, tokens, pass) and registrations.

pub mod cli;
pub mod consumer;
pub mod inference;
pub mod keyfile;
pub mod link;
pub mod metrics;
pub mod openai;
pub mod provider;
pub mod standin;
pub mod weights;

/// Work a node does when asked to stop (SIGTERM, SIGINT) before its process exits:
/// finishing what is in flight, withdrawing offers (issue 23 case 6, R-NODE-5).
pub type StopHook =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

static STOP_HOOKS: std::sync::Mutex<Vec<StopHook>> = std::sync::Mutex::new(Vec::new());

/// Registers `hook` to run (in registration order) when the node is told to stop;
/// each hook bounds its own time (e.g. the provider's `stop_drain_ms`).
pub fn on_stop(hook: StopHook) {
    STOP_HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(hook);
}

/// Runs the registered stop hooks (called by `cli` after the stop signal).
pub async fn run_stop_hooks() {
    let hooks = std::mem::take(&mut *STOP_HOOKS.lock().unwrap_or_else(|e| e.into_inner()));
    for hook in hooks {
        hook().await;
    }
}

/// Unix time in milliseconds (the nodes' only clock for expiries).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A listener whose accepted sockets send at once (TCP_NODELAY): a streamed answer
/// is many small writes, which Nagle's algorithm would hold back for the peer's
/// delayed ACK (about 40 ms each).
pub fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|socket| {
        if let Err(error) = socket.set_nodelay(true) {
            tracing::warn!(%error, "TCP_NODELAY not set");
        }
    })
}

/// Binds a node's OpenAI API listener (`listen`) and, unless `metrics_listen` is
/// empty, its Prometheus listener, and serves both in the background. Returns the
/// addresses actually bound (port 0 picks one). Errors name the setting.
pub async fn serve_http(
    config: &impl cli::NodeConfig,
    app: axum::Router,
    metrics: metrics::Metrics,
) -> Result<(std::net::SocketAddr, Option<std::net::SocketAddr>), String> {
    let (listen, metrics_listen) = config.listeners();
    let header_read_timeout = std::time::Duration::from_millis(config.header_read_timeout_ms());
    let connections_max = usize::try_from(config.connections_max()).unwrap_or(usize::MAX);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let metrics_bound = if metrics_listen.is_empty() {
        None
    } else {
        let metrics_listener = tokio::net::TcpListener::bind(metrics_listen)
            .await
            .map_err(|e| format!("metrics_listen {metrics_listen}: {e}"))?;
        let addr = metrics_listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(serve_bounded(
            metrics_listener,
            metrics::router(metrics),
            header_read_timeout,
            connections_max,
        ));
        Some(addr)
    };
    tokio::spawn(serve_bounded(
        listener,
        app,
        header_read_timeout,
        connections_max,
    ));
    Ok((bound, metrics_bound))
}

/// Serves `app` on `listener` (TCP_NODELAY on every socket, HTTP/1.1): a connection
/// whose request head has not fully arrived `header_read_timeout` after the server
/// began waiting for it is closed, so a client that trickles or never finishes its
/// headers holds no socket for ever (`axum::serve` has no such bound). Bodies and
/// answers are not cut: a long streamed answer runs as long as it needs. At most
/// `connections_max` connections are served at once; one more is answered `503`
/// with `Retry-After: 1` and an OpenAI error body (`code: too_many_connections`) and
/// closed, so no client can take every descriptor.
pub async fn serve_bounded(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_read_timeout: std::time::Duration,
    connections_max: usize,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(
        connections_max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
    ));
    use hyper_util::service::TowerToHyperService;
    /// After a failed accept (out of descriptors, say), before the next.
    const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _peer)) => socket,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        if let Err(error) = socket.set_nodelay(true) {
            tracing::warn!(%error, "TCP_NODELAY not set");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse_connection(socket));
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(socket), service)
                .with_upgrades();
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended");
            }
        });
    }
}

/// Answers a connection over `connections_max` with a 503 and closes it, without
/// reading its request (bounded: a client that does not read gets dropped after a
/// second).
async fn refuse_connection(mut socket: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = "{\"error\":{\"message\":\"too many connections: try again shortly\",\"type\":\"server_error\",\"param\":null,\"code\":\"too_many_connections\"}}";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nx-should-retry: true\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        socket.write_all(answer.as_bytes()).await?;
        socket.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}
