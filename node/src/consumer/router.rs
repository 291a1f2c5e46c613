//! The consumer's side of the router (R-NODE-2): one logged-in connection, kept up
//! with back-off, over which requests are matched to their answers by nonce (RFC ->
//! accepted / ticket / failed / refused; report -> acknowledgement; catalog query
//! -> catalog). Only RFCs (model, TokenMax), reports and catalog queries go to the
//! router: never a prompt or a completion (R-NODE-3).

use crate::link::{Backoff, Incoming, Link, LinkConfig, Nonces, SendQueue};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, RwLock};
use yellowstone_wire::{
    Catalog, CatalogQuery, ErrorReply, Message, Outcome, Report, ReportAck, ReportFigures, Rfc,
    SessionTicket, SigningKey,
};

/// Messages kept for one waiter (an RFC gets at most accepted + ticket/failure).
const WAITER_MESSAGES_MAX: usize = 4;

/// Why an RFC did not give a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RfcOutcome {
    /// The router refused it (SPEC section 9).
    Refused(ErrorReply),
    /// Queued, then failed: 1 expired, 2 no provider available, 3 cancelled.
    Failed { reason: u8 },
    /// No connection to the router, or it dropped.
    RouterDown(String),
    /// No answer at all (not even the router's own expiry) within `waited_ms`: the
    /// RFC's time to live plus 2 s.
    TimedOut { waited_ms: u64 },
}

pub struct RouterClient {
    key: SigningKey,
    config: LinkConfig,
    nonces: Nonces,
    link: RwLock<Option<Link>>,
    waiters: Mutex<HashMap<u64, mpsc::Sender<Incoming>>>,
    /// Held from taking a nonce to queueing its signed message: the router refuses
    /// a nonce not above the sender's last (`replay`), so concurrent requests must
    /// reach the connection in nonce order.
    send_order: tokio::sync::Mutex<()>,
    /// Counts the connections the liveness watch ended (R-HA-3).
    silent: prometheus_client::metrics::counter::Counter,
    /// Reports made while the connection was down (R-REPORT-1, R-HA-3): sent first on
    /// the next one (`report_queue_max` at most), their waiters waiting meanwhile.
    reports_queued: SendQueue,
}

/// Removes a waiter when its request ends, however it ends.
struct Waiter<'a> {
    client: &'a RouterClient,
    key: u64,
    receiver: mpsc::Receiver<Incoming>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.client.lock_waiters().remove(&self.key);
    }
}

/// How often an RFC that found no router connection looks for the next one.
const RECONNECT_POLL: Duration = Duration::from_millis(50);
/// Beyond the liveness bound, how long an RFC waits for a replaced connection (an
/// election and a reconnect; docs/replication.md).
const RECONNECT_MARGIN: Duration = Duration::from_secs(2);

impl RouterClient {
    /// `silent` counts the connections the liveness watch ends (a metric's counter);
    /// `report_queue_max`: reports kept while the connection is down, at most.
    pub fn new(
        key: SigningKey,
        config: LinkConfig,
        silent: prometheus_client::metrics::counter::Counter,
        report_queue_max: usize,
    ) -> Arc<RouterClient> {
        Arc::new(RouterClient {
            key,
            config,
            nonces: Nonces::default(),
            link: RwLock::new(None),
            waiters: Mutex::new(HashMap::new()),
            send_order: tokio::sync::Mutex::new(()),
            silent,
            reports_queued: SendQueue::new(report_queue_max, "report_queue_max"),
        })
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Incoming>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the connection up: connects, dispatches, reconnects with back-off.
    ///
    /// R-HA-3: after a lost connection the signed messages it had no final answer to
    /// (RFCs without their ticket, reports without their acknowledgement) are sent
    /// again, byte-identical, on the new one before anything new, and their waiters
    /// keep waiting (until their own time-out); the other waiters learn of the loss
    /// at once.
    pub async fn run(self: Arc<RouterClient>, mut backoff: Backoff) {
        let mut previous: Option<Link> = None;
        loop {
            // R-HA-3: the member whose connection died (a frozen leader, say) is tried last.
            let lost = previous.as_ref().map(|link| link.member().to_string());
            let connected = Link::connect_after(
                &self.config,
                self.key.clone(),
                self.nonces.clone(),
                lost.as_deref(),
            )
            .await;
            // Whether this round's connection was ended by the liveness watch.
            let mut went_silent = false;
            match connected {
                Ok((link, inbound)) => {
                    tracing::info!(router = %link.router(), "connected to the router");
                    {
                        // In nonce order before any new request (R-ID-4).
                        let _order = self.send_order.lock().await;
                        if let Some(previous) = previous.take() {
                            link.resend_unanswered(&previous).await;
                        }
                        // Then the reports made while no connection was up: their
                        // nonces are below any request still to come.
                        self.reports_queued.flush(&link).await;
                        *self.link.write().await = Some(link.clone());
                    }
                    backoff.reset();
                    self.dispatch(inbound).await;
                    *self.link.write().await = None;
                    went_silent = link.went_silent();
                    if went_silent {
                        self.silent.inc();
                    }
                    // Waiters of the lost connection learn it now, not at their
                    // time-out, unless their message is resent on the next one.
                    let mut resent = link.unanswered_nonces();
                    // (A report queued meanwhile is sent on the next one too.)
                    resent.extend(self.reports_queued.nonces());
                    self.lock_waiters().retain(|key, _| resent.contains(key));
                    previous = Some(link);
                }
                Err(error) => tracing::warn!(%error, "router connection failed"),
            }
            // R-HA-3: a group's member that went silent is left at once (the others
            // first; a connection that went silent lived at least the liveness bound:
            // no tight loop; a failed connect still backs off).
            let group = self.config.router_addrs.len() > 1;
            if group && went_silent {
                continue;
            }
            let delay = backoff.next_delay();
            tokio::time::sleep(delay).await;
        }
    }

    async fn dispatch(&self, mut inbound: mpsc::Receiver<Incoming>) {
        while let Some(incoming) = inbound.recv().await {
            let message = &incoming.message;
            let key = match message {
                Message::RfcAccepted(m) => m.nonce,
                Message::RfcFailed(m) => m.nonce,
                Message::SessionTicket(m) => m.rfc_nonce,
                Message::ReportAck(m) => m.nonce,
                Message::ErrorReply(m) => m.ref_nonce,
                Message::Catalog(m) => m.query_id,
                _ => continue,
            };
            let waiter = self.lock_waiters().get(&key).cloned();
            match waiter {
                Some(sender) => {
                    let _ = sender.try_send(incoming);
                }
                None => {
                    tracing::debug!(
                        key,
                        name = incoming.message.name(),
                        "router message for no waiter"
                    )
                }
            }
        }
    }

    fn waiter(&self, key: u64) -> Waiter<'_> {
        let (sender, receiver) = mpsc::channel(WAITER_MESSAGES_MAX);
        self.lock_waiters().insert(key, sender);
        Waiter {
            client: self,
            key,
            receiver,
        }
    }

    /// Takes the next nonce, registers its waiter and queues `build(nonce)`, in
    /// nonce order whatever other requests do at the same time.
    ///
    /// `queue`: a message whose loss costs money (a report) is queued when there is
    /// no connection (or it just dropped) and sent first on the next one
    /// ([`SendQueue`]); its waiter keeps waiting. Errors: no connection (and not
    /// queued, or the queue is full).
    async fn send_in_order(
        &self,
        build: impl FnOnce(u64) -> Message,
        queue: Option<&SendQueue>,
    ) -> Result<Waiter<'_>, String> {
        let _order = self.send_order.lock().await;
        let nonce = self.nonces.next();
        let waiter = self.waiter(nonce);
        let message = build(nonce);
        let Some(queue) = queue else {
            self.send(message).await?;
            return Ok(waiter);
        };
        match self.send(message.clone()).await {
            Ok(()) => Ok(waiter),
            // Still under the send-order lock: the run loop flushes the queue on the
            // next connection before any later nonce is sent.
            Err(down) => match queue.push(nonce, message) {
                Ok(()) => {
                    tracing::warn!(
                        nonce,
                        name = "Report",
                        queued = queue.len(),
                        reason = %down,
                        "router connection down: queued until it is back (R-HA-3)"
                    );
                    Ok(waiter)
                }
                Err(full) => Err(format!("{down}; {full}")),
            },
        }
    }

    async fn send(&self, message: Message) -> Result<(), String> {
        let link = self.link.read().await.clone();
        match link {
            Some(link) => link
                .send(message)
                .await
                .map_err(|_| "the router connection dropped".to_string()),
            None => Err(format!(
                "not connected to the router at {} (reconnecting)",
                self.config.router_addrs.join(",")
            )),
        }
    }

    pub fn network_id(&self) -> u32 {
        self.config.network_id
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// R-RFC-1: asks for a session; waits for the ticket until the RFC's expiry.
    /// Returns the ticket and its body exactly as the router signed it (what the
    /// provider checks in `X-Yellowstone-Ticket`: the ticket itself may carry a
    /// renamed `rfc_nonce` after an R-ID-8 resend).
    pub async fn request_session(
        &self,
        model_id: u32,
        tokens_max: u64,
        ttl: Duration,
    ) -> Result<(SessionTicket, Bytes), RfcOutcome> {
        // R-HA-3: an RFC that finds no connection (the link is being replaced after a
        // frozen or dead leader) waits for the next one, at most the liveness bound
        // and 2 s more (time for the group to elect and for the link to reconnect),
        // and never past the RFC's own life. It was never written, so sending it (under
        // a new nonce) on the next connection cannot make a second session.
        let patience = (self.config.liveness + RECONNECT_MARGIN).min(ttl);
        let given_up_at = tokio::time::Instant::now() + patience;
        let mut waiter = loop {
            let sent = self
                .send_in_order(
                    |nonce| {
                        Rfc {
                            from: self.key.address(),
                            nonce,
                            model_id,
                            tokens_max,
                            expires_at_ms: crate::unix_ms() + ttl.as_millis() as u64,
                            ..Rfc::default()
                        }
                        .into()
                    },
                    None,
                )
                .await;
            match sent {
                Ok(waiter) => break waiter,
                Err(down) if tokio::time::Instant::now() + RECONNECT_POLL < given_up_at => {
                    tracing::debug!(reason = %down, "RFC waits for the router connection");
                    tokio::time::sleep(RECONNECT_POLL).await;
                }
                Err(down) => return Err(RfcOutcome::RouterDown(down)),
            }
        };
        // A little past the expiry: the router answers "expired" itself then.
        let waited = ttl + Duration::from_secs(2);
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            let message = tokio::time::timeout_at(deadline, waiter.receiver.recv())
                .await
                .map_err(|_| RfcOutcome::TimedOut {
                    waited_ms: waited.as_millis() as u64,
                })?
                .ok_or_else(|| RfcOutcome::RouterDown("the router connection dropped".into()))?;
            match message.message {
                Message::RfcAccepted(_) => continue,
                Message::SessionTicket(ticket) => return Ok((ticket, message.body)),
                Message::RfcFailed(failed) => {
                    return Err(RfcOutcome::Failed {
                        reason: failed.reason,
                    })
                }
                Message::ErrorReply(error) => return Err(RfcOutcome::Refused(error)),
                _ => continue,
            }
        }
    }

    /// R-REPORT-1: the signed report; returns the router's acknowledgement. Made while
    /// the connection is down, it is queued (`report_queue_max`) and sent first on the
    /// next connection, then resent byte-identical after later losses until answered
    /// (R-HA-3): the provider is paid for a session that ends during a reconnect.
    pub async fn report(
        &self,
        session_id: u64,
        outcome: Outcome,
        figures: ReportFigures,
        timeout: Duration,
    ) -> Result<ReportAck, String> {
        let from = self.key.address();
        let mut waiter = self
            .send_in_order(
                |nonce| Report::new(from, nonce, session_id, outcome, figures).into(),
                Some(&self.reports_queued),
            )
            .await?;
        let answer = tokio::time::timeout(timeout, waiter.receiver.recv()).await;
        match answer.map(|incoming| incoming.map(|i| i.message)) {
            Ok(Some(Message::ReportAck(ack))) => Ok(ack),
            Ok(Some(Message::ErrorReply(error))) => Err(format!(
                "report refused ({}): {}",
                yellowstone_wire::codes::name(error.code),
                error.reason
            )),
            Ok(Some(other)) => Err(format!("unexpected answer {}", other.name())),
            Ok(None) => Err("the router connection dropped".into()),
            Err(_) => Err("no acknowledgement in time".into()),
        }
    }

    /// R-NODE-2: the router's catalog.
    pub async fn catalog(&self, timeout: Duration) -> Result<Catalog, String> {
        let query_id = self.nonces.next();
        let mut waiter = self.waiter(query_id);
        self.send(CatalogQuery { query_id }.into()).await?;
        let answer = tokio::time::timeout(timeout, waiter.receiver.recv()).await;
        match answer.map(|incoming| incoming.map(|i| i.message)) {
            Ok(Some(Message::Catalog(catalog))) => Ok(catalog),
            Ok(Some(Message::ErrorReply(error))) => Err(error.reason),
            Ok(Some(other)) => Err(format!("unexpected answer {}", other.name())),
            Ok(None) => Err("the router connection dropped".into()),
            Err(_) => Err("no catalog in time".into()),
        }
    }
}
