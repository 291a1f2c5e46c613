//! `yellowstone-consumer` (R-NODE-2): buys compute in the market for local
//! applications, over the OpenAI API. Each completion: an RFC (TokenMax from the
//! request's max tokens), the router-signed ticket, a direct signed call to the
//! ticket's provider, the answer streamed through, then a signed report (ms from
//! sending the query to the whole result and to the first token, the completion
//! tokens counted in the text received (`tokens`, R-NODE-4) and the prompt tokens,
//! pass on a complete answer, fail on an error, a time-out or a cut stream, void on
//! the request's own 400/413/422, which the application receives as it is:
//! R-REPORT-2/3, R-NODE-5). On SIGTERM/SIGINT ([`Consumer::stop`]) it takes no new
//! request, lets those in flight run `stop_grace_ms`, cuts the rest, and waits for
//! every report's acknowledgement (at most `report_timeout_ms` more) before exiting.

pub mod config;
mod http;
pub mod router;
pub mod tokens;

use crate::cli::{NodeConfig, Started};
use crate::link::{Backoff, LinkConfig};
use crate::metrics::{Labels, Metrics};
use config::ConsumerConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use router::RouterClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use yellowstone_wire::{Catalog, SigningKey};

pub struct ConsumerMetrics {
    pub requests: Family<Labels, Counter>,
    pub tokens: Counter,
    pub in_flight: Gauge,
    pub ticket_seconds: Histogram,
    pub first_token_seconds: Histogram,
    pub end_to_end_seconds: Histogram,
    pub reports: Family<Labels, Counter>,
    /// R-HA-3: router connections the liveness watch ended (`router_liveness_ms`).
    pub router_silent: Counter,
}

impl ConsumerMetrics {
    fn new(metrics: &Metrics) -> ConsumerMetrics {
        ConsumerMetrics {
            requests: metrics.counter_family(
                "consumer_requests",
                "Completion requests from applications, by outcome.",
            ),
            tokens: metrics.counter(
                "consumer_tokens",
                "Completion tokens received and paid for: the provider's usage, never above what the received text holds (R-NODE-4).",
            ),
            in_flight: metrics.gauge("consumer_requests_in_flight", "Requests being served."),
            ticket_seconds: metrics.seconds(
                "consumer_ticket_seconds",
                "From sending the RFC to holding the ticket.",
            ),
            first_token_seconds: metrics.seconds(
                "consumer_first_token_seconds",
                "From the application's request to the first content token.",
            ),
            end_to_end_seconds: metrics.seconds(
                "consumer_end_to_end_seconds",
                "From the application's request to the whole answer.",
            ),
            reports: metrics.counter_family(
                "consumer_reports",
                "Reports sent, by outcome (pass, fail, void) and the router's answer (earned, reported_fail, too_slow, earned_despite_fail, zero_tokens, void, too_slow_first_token, error).",
            ),
            router_silent: metrics.counter(
                "consumer_router_silent",
                "Router connections closed by the liveness watch: a Ping unanswered for router_liveness_ms (a frozen or cut-off router; the node reconnects and resends, R-HA-3).",
            ),
        }
    }
}

pub struct Consumer {
    pub config: ConsumerConfig,
    pub router: Arc<RouterClient>,
    pub http: reqwest::Client,
    pub metrics: Metrics,
    pub stats: ConsumerMetrics,
    pub in_flight: tokio::sync::Semaphore,
    /// R-NODE-4: the tokenizers the operator named, by model name.
    pub tokens: tokens::TokenCounter,
    catalog: tokio::sync::Mutex<Option<(tokio::time::Instant, Catalog)>>,
    /// Calls holding a ticket plus reports not yet acknowledged (R-NODE-5).
    pending: Arc<AtomicU64>,
    /// Set once a stop begins: new requests are refused 503 `stopping`.
    stopping: AtomicBool,
    /// Set when the stop's grace is over: calls still running are cut and report.
    cut: tokio::sync::watch::Sender<bool>,
}

/// Counts one call or report as pending while it lives (see [`Consumer::stop`]).
pub(crate) struct PendingGuard(Arc<AtomicU64>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "pending count underflow");
    }
}

impl Consumer {
    pub fn new(config: ConsumerConfig, key: SigningKey) -> Result<Arc<Consumer>, String> {
        config.validate()?;
        let router_address = if config.router_address.is_empty() {
            None
        } else {
            Some(
                config
                    .router_address
                    .parse()
                    .map_err(|e| format!("router_address: {e}"))?,
            )
        };
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(config.first_byte_timeout_ms))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let metrics = Metrics::new();
        let stats = ConsumerMetrics::new(&metrics);
        let router = RouterClient::new(
            key,
            LinkConfig {
                router_addrs: crate::cli::routers_of(&config.router_addr, &config.router_endpoints),
                network_id: config.network_id,
                router_address,
                login_timeout: Duration::from_secs(10),
                keepalive: Duration::from_millis(config.keepalive_ms),
                ping_after: Duration::from_millis(config.router_ping_ms),
                liveness: Duration::from_millis(config.router_liveness_ms),
            },
            stats.router_silent.clone(),
            config.report_queue_max as usize,
        );
        // Relative files are read from the working directory, as key_file is.
        let tokens = tokens::TokenCounter::load(&config.tokenizers, std::path::Path::new(""))
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(Consumer {
            in_flight: tokio::sync::Semaphore::new(config.requests_in_flight_max as usize),
            config,
            router,
            http,
            metrics,
            stats,
            tokens,
            catalog: tokio::sync::Mutex::new(None),
            pending: Arc::new(AtomicU64::new(0)),
            stopping: AtomicBool::new(false),
            cut: tokio::sync::watch::Sender::new(false),
        }))
    }

    pub async fn start(self: &Arc<Consumer>) -> Result<Started, String> {
        let app = http::router(self.clone());
        let (listen, metrics) = crate::serve_http(&self.config, app, self.metrics.clone()).await?;
        let backoff = Backoff::new(
            Duration::from_millis(self.config.reconnect_initial_ms),
            Duration::from_millis(self.config.reconnect_max_ms),
        );
        tokio::spawn(self.router.clone().run(backoff));
        let consumer = self.clone();
        crate::on_stop(Box::new(move || {
            Box::pin(async move { consumer.stop().await })
        }));
        Ok(Started {
            listen,
            metrics,
            address: self.router.key().address(),
        })
    }

    pub(crate) fn pending_guard(&self) -> PendingGuard {
        self.pending.fetch_add(1, Ordering::AcqRel);
        PendingGuard(self.pending.clone())
    }

    /// A call holding a ticket: pending until dropped.
    pub(crate) fn open_call(&self) -> PendingGuard {
        self.pending_guard()
    }

    /// Becomes true when a stop's grace is over (calls still running end now).
    pub(crate) fn cut_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.cut.subscribe()
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Waits until no call or report is pending, or `timeout`; true if none is.
    async fn settled(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.pending.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// R-NODE-5 (issue 23 case 6): the graceful stop. New requests get 503
    /// `stopping`; calls in flight run up to `stop_grace_ms`, then are cut and
    /// report what was received (a stream with output: pass with its tokens;
    /// nothing received: void, the user's own cancellation, R-REPORT-2); every
    /// report is then given up to `report_timeout_ms` to be acknowledged. Bounded:
    /// at most `stop_grace_ms + report_timeout_ms` (+ 1 s) in all.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let pending = self.pending.load(Ordering::Acquire);
        tracing::info!(pending, "stopping: finishing the calls in flight");
        if !self
            .settled(Duration::from_millis(self.config.stop_grace_ms))
            .await
        {
            tracing::warn!(
                pending = self.pending.load(Ordering::Acquire),
                "stop_grace_ms over: cutting the calls in flight and reporting them"
            );
            self.cut.send_replace(true);
        }
        let reports = Duration::from_millis(self.config.report_timeout_ms) + Duration::from_secs(1);
        if !self.settled(reports).await {
            tracing::warn!(
                pending = self.pending.load(Ordering::Acquire),
                "stopping with reports unacknowledged"
            );
        }
    }

    /// The router's catalog, reused for `catalog_refresh_ms` unless `fresh`.
    pub async fn catalog(&self, fresh: bool) -> Result<Catalog, String> {
        let mut cached = self.catalog.lock().await;
        let refresh = Duration::from_millis(self.config.catalog_refresh_ms);
        if let Some((at, catalog)) = cached.as_ref() {
            if !fresh && at.elapsed() < refresh {
                return Ok(catalog.clone());
            }
        }
        let catalog = self.router.catalog(Duration::from_secs(10)).await?;
        *cached = Some((tokio::time::Instant::now(), catalog.clone()));
        Ok(catalog)
    }
}
