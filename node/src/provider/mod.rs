//! `yellowstone-provider` (R-NODE-1): sells a model server's compute in the market.
//!
//! - Router side (`router_loop`): logs in, registers every model with the BLAKE3 hash
//!   of its weights signed with the provider's key, its bid and capacity (R-PROV-1);
//!   answers probes (R-MATCH-2); keeps the router-signed tickets (R-MATCH-6); on a
//!   dropped connection or a router restart reconnects with back-off and registers
//!   again, and announces itself when told it was marked unreachable.
//! - User side (`http`): `POST /v1/chat/completions` and `GET /v1/models` for ticket
//!   holders, forwarded to the model server behind the node; as it begins serving a
//!   ticket it signs `SessionStart` to the router (R-SESSION-1), through the same
//!   ordered sender as the router loop's messages.

pub mod config;
pub mod health;
mod http;
pub mod tickets;

use crate::cli::{NodeConfig, Started};
use crate::link::{Backoff, Link, LinkConfig, Nonces, SendQueue};
use crate::metrics::{Labels, Metrics};
use config::{parse_hash, ModelOffer, ProviderConfig};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tickets::Tickets;
use tokio::sync::Notify;
use yellowstone_wire::signature::weights_proof_digest;
use yellowstone_wire::{
    Message, Offer, ProbeAnswer, ProviderAnnounce, RegisterProvider, SessionStart, SigningKey,
};

/// A model as served: its offer, resolved hash and upstream.
#[derive(Clone, Debug)]
pub struct ServedModel {
    pub offer: ModelOffer,
    pub weights_hash: [u8; 32],
    pub price_wei_per_token: u128,
}

pub struct ProviderMetrics {
    pub requests: Family<Labels, Counter>,
    pub tokens: Counter,
    pub tickets_held: Gauge,
    pub tickets_received: Counter,
    /// R-HA-3: tickets kept from a user's `X-Yellowstone-Ticket` (the router's copy
    /// had not arrived: lost with a failed-over leader, or still on its way).
    pub tickets_presented: Counter,
    pub probes_answered: Counter,
    pub router_connects: Family<Labels, Counter>,
    /// R-HA-3: router connections the liveness watch ended (`router_liveness_ms`).
    pub router_silent: Counter,
    pub upstream_seconds: Histogram,
    /// R-PROV-4: models offered to the market now (those whose model server is up).
    pub models_offered: Gauge,
}

impl ProviderMetrics {
    fn new(metrics: &Metrics) -> ProviderMetrics {
        ProviderMetrics {
            requests: metrics.counter_family(
                "provider_requests",
                "Completion requests from ticket holders, by HTTP status.",
            ),
            tokens: metrics.counter(
                "provider_tokens",
                "Completion tokens served (the upstream's usage).",
            ),
            tickets_held: metrics.gauge("provider_tickets_held", "Session tickets kept."),
            tickets_received: metrics.counter(
                "provider_tickets_received",
                "Router-signed session tickets received.",
            ),
            tickets_presented: metrics.counter(
                "provider_tickets_presented",
                "Router-signed session tickets kept from a user's X-Yellowstone-Ticket header (the router's copy had not arrived: lost with a failed-over leader, or still on its way; R-HA-3).",
            ),
            probes_answered: metrics.counter("provider_probes_answered", "Probes answered."),
            router_connects: metrics.counter_family(
                "provider_router_connects",
                "Connections to the router, by outcome (ok, failed, refused).",
            ),
            router_silent: metrics.counter(
                "provider_router_silent",
                "Router connections closed by the liveness watch: a Ping unanswered for router_liveness_ms (a frozen or cut-off router; the node reconnects, R-HA-3).",
            ),
            upstream_seconds: metrics.seconds(
                "provider_upstream_seconds",
                "Upstream call, request to last byte.",
            ),
            models_offered: metrics.gauge(
                "provider_models_offered",
                "Models offered to the market now: those whose model server passes its health check (R-PROV-4).",
            ),
        }
    }
}

pub struct Provider {
    pub config: ProviderConfig,
    pub key: SigningKey,
    pub models: HashMap<u32, ServedModel>,
    pub tickets: Mutex<Tickets>,
    pub ticket_arrived: Notify,
    pub upstream: reqwest::Client,
    pub metrics: Metrics,
    pub stats: ProviderMetrics,
    pub nonces: Nonces,
    /// The logged-in router connection, if any. Held while a nonce is drawn and its
    /// message queued, so that messages from the router loop and from the HTTP
    /// handlers (`SessionStart`) reach the router in nonce order (R-ID-4).
    pub link: tokio::sync::Mutex<Option<Link>>,
    /// R-HA-3: `SessionStart`s signed while no connection was up, sent first on the
    /// next one (`session_start_queue_max` at most).
    session_starts_queued: SendQueue,
    /// R-ID-5: the router's address as the last connection logged in to it (a
    /// group's members share one key), to check a ticket a user presents.
    router_seen: Mutex<Option<yellowstone_wire::Address>>,
    /// R-PROV-4: whether each model server (by `upstream_base_url`) is up; a server
    /// not checked yet counts as up.
    upstream_health: Mutex<BTreeMap<String, bool>>,
    /// R-PROV-4: the node's requests to each model server (by `upstream_base_url`),
    /// so that a health check timing out while the server works for the node is not
    /// counted. Fixed at start: one entry per configured upstream.
    upstream_activity: BTreeMap<String, Arc<health::UpstreamActivity>>,
    /// The endpoint registered (set once the HTTP listener is bound).
    endpoint: OnceLock<String>,
    /// Set by a graceful stop: the offers are withdrawn, the answers in flight finish.
    pub stopping: AtomicBool,
    /// Answers in flight (a ticket claimed, the answer not yet wholly sent).
    in_flight: std::sync::atomic::AtomicUsize,
    in_flight_done: Notify,
}

/// Counts one answer in flight while it lives (moved into a streamed body, it lives
/// until the stream is sent or dropped).
pub struct InFlight(Arc<Provider>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.in_flight_done.notify_waiters();
        }
    }
}

impl Provider {
    /// Resolves the weights hashes (hashing the files) and builds the node.
    pub fn new(config: ProviderConfig, key: SigningKey) -> Result<Arc<Provider>, String> {
        config.validate()?;
        let mut models = HashMap::new();
        for offer in &config.models {
            let weights_hash = match (&offer.weights_file, &offer.weights_hash) {
                (Some(file), _) => crate::weights::hash_file_logged(file)
                    .map_err(|e| format!("weights_file {}: {e}", file.display()))?,
                (None, Some(hash)) => parse_hash(hash)?,
                (None, None) => unreachable!("validated"),
            };
            let price_wei_per_token = offer.price()?;
            models.insert(
                offer.model_id,
                ServedModel {
                    offer: offer.clone(),
                    weights_hash,
                    price_wei_per_token,
                },
            );
        }
        let upstream = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.upstream_timeout_ms))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let metrics = Metrics::new();
        let stats = ProviderMetrics::new(&metrics);
        let epoch = std::time::Instant::now();
        let upstream_activity = models
            .values()
            .map(|m| {
                (
                    m.offer.upstream_base_url.clone(),
                    Arc::new(health::UpstreamActivity::new(epoch)),
                )
            })
            .collect();
        let tickets = if config.data_dir.as_os_str().is_empty() {
            tracing::warn!("data_dir is empty: tickets are kept in memory only, a restart refuses their holders");
            Tickets::new(config.tickets_max as usize)
        } else {
            Tickets::open(
                config.tickets_max as usize,
                &config.data_dir,
                crate::unix_ms(),
            )
            .map_err(|e| e.to_string())?
        };
        stats.tickets_held.set(tickets.len() as i64);
        let session_starts_queued = SendQueue::new(
            config.session_start_queue_max as usize,
            "session_start_queue_max",
        );
        Ok(Arc::new(Provider {
            tickets: Mutex::new(tickets),
            config,
            key,
            models,
            ticket_arrived: Notify::new(),
            upstream,
            metrics,
            stats,
            nonces: Nonces::default(),
            link: tokio::sync::Mutex::new(None),
            session_starts_queued,
            router_seen: Mutex::new(None),
            upstream_health: Mutex::new(BTreeMap::new()),
            upstream_activity,
            endpoint: OnceLock::new(),
            stopping: AtomicBool::new(false),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            in_flight_done: Notify::new(),
        }))
    }

    /// Signs and queues a message built with the next nonce on the current router
    /// connection, in nonce order; false when not connected or the link closed.
    pub async fn send_signed(&self, build: impl FnOnce(u64) -> Message) -> bool {
        let link = self.link.lock().await;
        let Some(link) = link.as_ref() else {
            return false;
        };
        link.send(build(self.nonces.next())).await.is_ok()
    }

    /// R-SESSION-1: signs to the router that the session's inference began (its
    /// answer, an `Ack` or a refusal, is only logged by the router loop). Made while
    /// the connection is down, it is queued (`session_start_queue_max`) and sent first
    /// on the next connection, then resent after later losses until answered (R-HA-3).
    pub async fn start_session(&self, session_id: u64) {
        let from = self.key.address();
        let link = self.link.lock().await;
        let nonce = self.nonces.next();
        let message: Message = SessionStart {
            from,
            nonce,
            session_id,
            ..SessionStart::default()
        }
        .into();
        if let Some(link) = link.as_ref() {
            if link.send(message.clone()).await.is_ok() {
                return;
            }
        }
        // Still under the link lock: the router loop sends the queue on the next
        // connection before its registration (a later nonce).
        match self.session_starts_queued.push(nonce, message) {
            Ok(()) => tracing::warn!(
                session = session_id,
                "router connection down: session start queued until it is back (R-HA-3)"
            ),
            Err(full) => tracing::warn!(
                session = session_id,
                %full,
                "router connection down: session start not sent"
            ),
        }
    }

    /// Binds the HTTP listeners and starts serving and the router loop.
    pub async fn start(self: &Arc<Provider>) -> Result<Started, String> {
        let app = http::router(self.clone());
        let (listen, metrics) = crate::serve_http(&self.config, app, self.metrics.clone()).await?;
        // With port 0 the registered endpoint is the port actually bound.
        let endpoint = if self.config.public_endpoint.is_empty() {
            listen.to_string()
        } else {
            self.config.public_endpoint.clone()
        };
        let _ = self.endpoint.set(endpoint.clone());
        // R-PROV-4: a model server down at start is not offered in the first
        // registration; the loop then follows it.
        health::check_all_once(self).await;
        tokio::spawn(health::health_loop(self.clone()));
        tokio::spawn(router_loop(self.clone(), endpoint));
        let stopping = self.clone();
        crate::on_stop(Box::new(move || {
            Box::pin(async move { stopping.graceful_stop().await })
        }));
        Ok(Started {
            listen,
            metrics,
            address: self.key.address(),
        })
    }

    fn link_config(&self) -> Result<LinkConfig, String> {
        let router_address = if self.config.router_address.is_empty() {
            None
        } else {
            Some(
                self.config
                    .router_address
                    .parse()
                    .map_err(|e| format!("router_address: {e}"))?,
            )
        };
        Ok(LinkConfig {
            router_addrs: crate::cli::routers_of(
                &self.config.router_addr,
                &self.config.router_endpoints,
            ),
            network_id: self.config.network_id,
            router_address,
            login_timeout: Duration::from_secs(10),
            keepalive: Duration::from_millis(self.config.keepalive_ms),
            ping_after: Duration::from_millis(self.config.router_ping_ms),
            liveness: Duration::from_millis(self.config.router_liveness_ms),
        })
    }

    /// R-ID-5: the router's address: `router_address` if configured, else the one
    /// the last connection logged in to; None before any connection.
    pub fn router_address(&self) -> Option<yellowstone_wire::Address> {
        let seen = *self.router_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.or_else(|| self.config.router_address.parse().ok())
    }

    /// Marks an answer in flight until the guard drops (graceful stop waits for it).
    pub fn in_flight(self: &Arc<Provider>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// R-NODE-5 graceful stop: withdraws every offer (a registration with none, so
    /// no new match comes), then waits until the answers in flight are sent, at most
    /// `stop_drain_ms`. Tickets already held may still be served meanwhile.
    pub async fn graceful_stop(self: &Arc<Provider>) {
        self.stopping.store(true, Ordering::Release);
        self.reoffer().await;
        let bound = Duration::from_millis(self.config.stop_drain_ms);
        let drained = tokio::time::timeout(bound, async {
            loop {
                let done = self.in_flight_done.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        })
        .await;
        let left = self.in_flight.load(Ordering::Acquire);
        match drained {
            Ok(()) => tracing::info!("stopped: offers withdrawn, nothing in flight"),
            Err(_) => tracing::warn!(
                in_flight = left,
                stop_drain_ms = self.config.stop_drain_ms,
                "stopped with answers still in flight after stop_drain_ms"
            ),
        }
        println!("STOPPED in_flight={left}");
    }

    /// Whether the model server at `base` passed its last health check (R-PROV-4).
    pub fn upstream_up(&self, base: &str) -> bool {
        let health = self
            .upstream_health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        health.get(base).copied().unwrap_or(true)
    }

    /// R-PROV-4: the activity record of the model server at `base` (None for a URL
    /// that no configured model uses).
    pub fn upstream_activity(&self, base: &str) -> Option<Arc<health::UpstreamActivity>> {
        self.upstream_activity.get(base).cloned()
    }

    pub fn set_upstream_up(&self, base: &str, up: bool) {
        let mut health = self
            .upstream_health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        health.insert(base.to_string(), up);
    }

    /// R-PROV-4: re-registers with the models whose server is up (a re-registration
    /// replaces the offer list, withdrawing the others). Without a router connection
    /// nothing is sent: the next connection registers the same list.
    pub async fn reoffer(&self) {
        let Some(endpoint) = self.endpoint.get() else {
            return;
        };
        if !self
            .send_signed(|nonce| self.registration(endpoint, nonce))
            .await
        {
            tracing::info!(
                "not connected to the router: the offers change at the next registration"
            );
        }
    }

    /// `RegisterProvider` with the offers of the models whose server is up.
    fn registration(&self, endpoint: &str, nonce: u64) -> Message {
        let mut offers: Vec<Offer> = self
            .models
            .values()
            .filter(|model| {
                !self.stopping.load(Ordering::Acquire)
                    && self.upstream_up(&model.offer.upstream_base_url)
            })
            .map(|model| Offer {
                model_id: model.offer.model_id,
                unit: 0,
                weights_hash: model.weights_hash,
                weights_proof: self.key.sign_digest(&weights_proof_digest(
                    self.config.network_id,
                    model.offer.model_id,
                    &model.weights_hash,
                )),
                price_wei_per_token: model.price_wei_per_token,
                capacity: model.offer.capacity,
            })
            .collect();
        offers.sort_by_key(|o| o.model_id);
        self.stats.models_offered.set(offers.len() as i64);
        RegisterProvider {
            from: self.key.address(),
            nonce,
            endpoint: endpoint.to_string(),
            offers,
            ..RegisterProvider::default()
        }
        .into()
    }
}

/// Connects, registers and serves the router's messages; reconnects with back-off.
async fn router_loop(provider: Arc<Provider>, endpoint: String) {
    let link_config = match provider.link_config() {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "router link configuration");
            return;
        }
    };
    let mut backoff = Backoff::new(
        Duration::from_millis(provider.config.reconnect_initial_ms),
        Duration::from_millis(provider.config.reconnect_max_ms),
    );
    // R-HA-3: the lost link, whose unanswered signed messages the next one resends.
    let mut previous: Option<Link> = None;
    let group = link_config.router_addrs.len() > 1;
    loop {
        // Whether this round's connection was ended by the liveness watch.
        let mut went_silent = false;
        // R-HA-3: the member whose connection died (a frozen leader, say) is tried last.
        let lost = previous.as_ref().map(|link| link.member().to_string());
        match Link::connect_after(
            &link_config,
            provider.key.clone(),
            provider.nonces.clone(),
            lost.as_deref(),
        )
        .await
        {
            Ok((link, inbound)) => {
                provider
                    .stats
                    .router_connects
                    .get_or_create(&vec![("outcome", "ok".into())])
                    .inc();
                // First, before the new registration (a higher nonce): a message the
                // lost router never committed is still above the last accepted nonce.
                if let Some(previous) = previous.take() {
                    link.resend_unanswered(&previous).await;
                }
                let served = serve_router(&provider, &link, inbound, &endpoint).await;
                went_silent = link.went_silent();
                if went_silent {
                    provider.stats.router_silent.inc();
                }
                if served {
                    backoff.reset();
                }
                previous = Some(link);
            }
            Err(error) => {
                provider
                    .stats
                    .router_connects
                    .get_or_create(&vec![("outcome", "failed".into())])
                    .inc();
                tracing::warn!(%error, "router connection failed");
            }
        }
        // R-HA-3: a group's member that went silent is left at once: the others are
        // tried first; a connection that went silent lived at least the liveness bound
        // (no tight loop), and a failed connect still backs off.
        if group && went_silent {
            tracing::info!("reconnecting to the router group at once (the silent member last)");
            continue;
        }
        let delay = backoff.next_delay();
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "reconnecting to the router"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Registers and handles what the router sends until the connection ends. Returns
/// whether the registration was accepted (the connection was useful).
async fn serve_router(
    provider: &Arc<Provider>,
    link: &Link,
    mut inbound: tokio::sync::mpsc::Receiver<crate::link::Incoming>,
    endpoint: &str,
) -> bool {
    // Under the link lock, in nonce order: the session starts signed while no
    // connection was up, then the registration (R-ID-4).
    let mut current = provider.link.lock().await;
    *provider
        .router_seen
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(link.router());
    provider.session_starts_queued.flush(link).await;
    let registration = provider.registration(endpoint, provider.nonces.next());
    let register_nonce = registration.claimed_origin().map_or(0, |(_, n)| n);
    if link.send(registration).await.is_err() {
        return false;
    }
    *current = Some(link.clone());
    drop(current);
    let registered = serve_link(provider, link, &mut inbound, endpoint, register_nonce).await;
    *provider.link.lock().await = None;
    registered
}

async fn serve_link(
    provider: &Arc<Provider>,
    link: &Link,
    inbound: &mut tokio::sync::mpsc::Receiver<crate::link::Incoming>,
    endpoint: &str,
    register_nonce: u64,
) -> bool {
    let mut registered = false;
    while let Some(incoming) = inbound.recv().await {
        match incoming.message {
            Message::Ack(ack) if ack.nonce == register_nonce => {
                registered = true;
                tracing::info!(router = %link.router(), endpoint, "registered with the router");
                println!("REGISTERED router={} endpoint={endpoint}", link.router());
            }
            Message::ErrorReply(error) if error.ref_nonce == register_nonce => {
                provider
                    .stats
                    .router_connects
                    .get_or_create(&vec![("outcome", "refused".into())])
                    .inc();
                tracing::error!(code = error.code, reason = %error.reason, "registration refused");
                return false;
            }
            Message::Probe(probe) => {
                let from = provider.key.address();
                let sent = provider
                    .send_signed(|nonce| {
                        ProbeAnswer {
                            from,
                            nonce,
                            probe_id: probe.probe_id,
                            ..ProbeAnswer::default()
                        }
                        .into()
                    })
                    .await;
                if !sent {
                    break;
                }
                provider.stats.probes_answered.inc();
            }
            Message::SessionTicket(ticket) => {
                // The link checked the router's signature (R-ID-5).
                if ticket.provider != provider.key.address() {
                    tracing::warn!(
                        session = ticket.session_id,
                        "ticket for another provider ignored"
                    );
                    continue;
                }
                let mut tickets = provider.tickets.lock().unwrap_or_else(|e| e.into_inner());
                tickets.insert(ticket, crate::unix_ms());
                provider.stats.tickets_held.set(tickets.len() as i64);
                drop(tickets);
                provider.stats.tickets_received.inc();
                provider.ticket_arrived.notify_waiters();
            }
            Message::Notice(notice) if notice.kind == 1 => {
                // Marked unreachable (a probe went unanswered): back in matching.
                tracing::warn!("the router marked this provider unreachable: announcing");
                let from = provider.key.address();
                let sent = provider
                    .send_signed(|nonce| {
                        ProviderAnnounce {
                            from,
                            nonce,
                            ..ProviderAnnounce::default()
                        }
                        .into()
                    })
                    .await;
                if !sent {
                    break;
                }
            }
            Message::Notice(notice) => {
                tracing::warn!(
                    kind = notice.kind,
                    until_ms = notice.until_ms,
                    "router notice"
                );
            }
            Message::ErrorReply(error) => {
                tracing::warn!(code = error.code, reason = %error.reason, "router refused a message");
            }
            _ => {}
        }
    }
    registered
}
