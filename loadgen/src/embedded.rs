//! The embedded router: started inside the load generator's process on loopback
//! (a temporary data directory unless one is given), with a block boundary placed
//! shortly after the run so that its credits are sealed soon.

use crate::sim::Target;
use std::net::SocketAddr;
use std::path::PathBuf;
use yellowstone_gateway::config::Backend;
use yellowstone_gateway::router::config::RouterConfig;
use yellowstone_gateway::router::{start_from_config, RouterHandle};
use yellowstone_wire::SigningKey;

/// How to start the embedded router (the `--backend`, `--gateway-threads`,
/// `--durability` and `--data-dir` flags).
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// "uring" or "mio".
    pub backend: String,
    /// 0: automatic.
    pub gateway_threads: usize,
    /// "always", "interval" or "none".
    pub durability: String,
    /// None: a temporary directory, removed when the router stops.
    pub data_dir: Option<PathBuf>,
    /// Length of the run, ms: the first block boundary is about 2 s after it.
    pub run_ms: u64,
    /// Make that boundary also the end of day 0 (genesis a day before it), so that
    /// the day's bootstrap bonus (R-CONTRACT-4) is shared out right after the run.
    /// The router then seals the day's earlier blocks, empty, as it starts.
    pub day_ends_after_run: bool,
}

/// A running embedded router.
pub struct Embedded {
    router: Option<RouterHandle>,
    /// Kept alive for the run; dropped (removed) after the router stops.
    _data_dir: Option<tempfile::TempDir>,
    pub target: Target,
    /// Unix ms of block 0.
    pub genesis_ms: u64,
    pub metrics_addr: Option<SocketAddr>,
    /// The configuration it runs with (its limits, for the attack scenarios).
    pub config: RouterConfig,
}

/// A day of blocks (7,200 of 12 s), ms.
pub const DAY_MS: u64 = 86_400_000;

/// Unix ms now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts a router with `operator` as its operator; `adjust` may change the
/// configuration (limits) before it is validated.
///
/// Errors: a bad option, the temporary directory, or the router's own start error.
pub fn start(
    options: &EmbeddedOptions,
    operator: &SigningKey,
    adjust: impl FnOnce(&mut RouterConfig),
) -> Result<Embedded, String> {
    let mut config = RouterConfig::default();
    config.identity.operator = operator.address().to_string();
    config.network.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.metrics.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.threads.gateway_threads = options.gateway_threads;
    config.network.backend = match options.backend.as_str() {
        "uring" => Backend::Uring,
        "mio" => Backend::Mio,
        other => return Err(format!("--backend must be uring or mio, not {other:?}")),
    };
    // Put a block boundary shortly after the run, so its credits are sealed soon.
    let now = now_ms();
    let first_boundary = now + options.run_ms + 2_000;
    let genesis_ms = if options.day_ends_after_run {
        first_boundary - DAY_MS
    } else {
        first_boundary - 12_000 * first_boundary.saturating_sub(now).div_ceil(12_000)
    };
    config.market.genesis_ms = genesis_ms;
    // R-SESSION-1: simulated users are application gateways (see the constant).
    config.market.user_sessions_open_max = crate::sim::SIM_USER_SESSIONS_OPEN_MAX;
    config.journal.durability = options.durability.clone();
    let temporary = match &options.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("yellowstone-loadgen-")
                .tempdir()
                .map_err(|e| format!("temporary data directory: {e}"))?,
        ),
    };
    config.journal.data_dir = Some(match (&options.data_dir, &temporary) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => dir.path().to_path_buf(),
        (None, None) => unreachable!("a temporary directory is made when none is given"),
    });
    adjust(&mut config);
    config.validate()?;
    let router = start_from_config(config.clone())?;
    let target = Target {
        addr: router.listen,
        endpoints: vec![router.listen],
        operator: operator.clone(),
        description: format!(
            "embedded router {} (metrics {})",
            router.listen,
            router.metrics_addr.map_or("off".into(), |a| a.to_string())
        ),
        backend: format!("{:?}", router.backends),
    };
    Ok(Embedded {
        metrics_addr: router.metrics_addr,
        router: Some(router),
        _data_dir: temporary,
        target,
        genesis_ms,
        config,
    })
}

impl Embedded {
    /// Stops the router (and removes a temporary data directory).
    ///
    /// Errors: the router's own shutdown error.
    pub fn shutdown(mut self) -> Result<(), String> {
        match self.router.take() {
            Some(router) => router.shutdown().map(drop),
            None => Ok(()),
        }
    }
}
