//! `yellowstone-consumer` (R-NODE-2): buys compute in the market for local
//! applications, over the OpenAI API. Each completion: an RFC (TokenMax from the
//! request's max tokens), the router-signed ticket, a direct signed call to the
//! ticket's provider, the answer streamed through, then a signed report (ms from
//! sending the query to the whole result and to the first token, completion and
//! prompt tokens from the provider's usage, pass on a complete answer, fail on an
//! error, a time-out or a cut stream, void on the request's own 400/413/422, which
//! the application receives as it is: R-REPORT-2/3, R-NODE-5).

pub mod config;
mod http;
pub mod router;

use crate::cli::{NodeConfig, Started};
use crate::link::{Backoff, LinkConfig};
use crate::metrics::{Labels, Metrics};
use config::ConsumerConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use router::RouterClient;
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
                "Completion tokens received (the provider's usage).",
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
    catalog: tokio::sync::Mutex<Option<(tokio::time::Instant, Catalog)>>,
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
        let router = RouterClient::new(
            key,
            LinkConfig {
                router_addr: config.router_addr.clone(),
                network_id: config.network_id,
                router_address,
                login_timeout: Duration::from_secs(10),
                keepalive: Duration::from_millis(config.keepalive_ms),
            },
        );
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(config.first_byte_timeout_ms))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let metrics = Metrics::new();
        let stats = ConsumerMetrics::new(&metrics);
        Ok(Arc::new(Consumer {
            in_flight: tokio::sync::Semaphore::new(config.requests_in_flight_max as usize),
            config,
            router,
            http,
            metrics,
            stats,
            catalog: tokio::sync::Mutex::new(None),
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
        Ok(Started {
            listen,
            metrics,
            address: self.router.key().address(),
        })
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
