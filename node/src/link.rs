//! The nodes' connection to the router: tokio TCP, the `wire` crate's frames,
//! messages and signatures (the same code as the blocking `wire::client`), login by
//! signed challenge, and router signatures checked on tickets and batches (R-ID-5).
//!
//! `Link::connect` returns the link (to send) and a receiver of what the router
//! sends; the receiver ends when the connection does. Reconnecting is the owner's
//! loop (`Backoff`); nonces live in `Nonces`, shared across reconnects, so a new
//! connection never replays an old nonce (R-ID-4).
//!
//! R-ID-8: another program may sign with the node's key (`yellowstone-ctl claim`). The
//! router then refuses the node's next message `replay`, naming the last nonce it
//! accepted; the link moves the shared `Nonces` above it, signs the refused message
//! again with a fresh nonce and resends it once, and hands the answer to the resent
//! message to the node under the nonce the node gave it, so the node never stalls
//! and never sees the refusal. The login handshake is `wire::login`'s, as in
//! `wire::client` (issue 26 item 4).
//!
//! R-HA-3 (issue 25): `LinkConfig::router_addrs` lists every member of a replicated
//! router group. A member that does not lead greets with `not_leader` naming the
//! leader: the link goes there (at most `LEADER_HOPS_MAX` redirects in a row), else
//! tries the next member; the owner's back-off loop runs between whole rounds. Each
//! link remembers its signed messages not yet answered (`Unanswered`); after a lost
//! connection the owner hands them to the new link (`resend_unanswered`), which sends
//! the very same frames first: the new leader answers each from its reply cache (the
//! original answer, no second effect) or, if it was never committed, evaluates it.
//!
//! R-HA-3 (issue 25), liveness: a frozen router (SIGSTOPped, or cut off by a partition
//! that drops packets without a reset) keeps the TCP connection open and answers
//! nothing, so a closed socket is not the only sign of a dead link. Every link's reader
//! sends a `Ping` after `LinkConfig::ping_after` without receiving anything, and takes
//! the connection for dead when nothing at all arrives within `LinkConfig::liveness`
//! of that Ping: it ends (the receiver ends, the writer stops, the socket closes), so
//! the owner's reconnect path runs as for a closed connection (resends byte-identical,
//! the provider registers again). A reconnect tries the lost member last, and with
//! more than one member one attempt waits at most `liveness` for the greeting (a frozen
//! member accepts in its kernel and never greets). On with one router too: a frozen
//! single router is as dead; the owner's back-off paces the attempts as for a closed one.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use yellowstone_wire::client::CLIENT_FRAME_BYTES_MAX;
use yellowstone_wire::frame::FrameDecoder;
use yellowstone_wire::login::{self, LoginExpect};
use yellowstone_wire::nonce::{self as wire_nonce, RESEND_WINDOW};
use yellowstone_wire::{Address, Message, SigningKey};

/// Frames waiting to be written to the router, at most.
pub const OUTBOUND_FRAMES_MAX: usize = 4096;
/// Queued frames are joined into one write up to about this many bytes (a frame is
/// never split; one larger frame is written alone).
const WRITE_BATCH_BYTES_MAX: usize = 64 * 1024;
/// Messages from the router waiting for the node, at most (a full queue slows the
/// reading of the socket, never drops).
pub const INBOUND_MESSAGES_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("router {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("router {addr}: login refused: {reason}")]
    Login { addr: String, reason: String },
    #[error("router {addr} runs network id {router}, this node is configured for {configured}")]
    NetworkId {
        addr: String,
        router: u32,
        configured: u32,
    },
    #[error("router {addr} signs as {router}, this node is configured for {configured}")]
    RouterAddress {
        addr: String,
        router: Address,
        configured: Address,
    },
    #[error("router {addr}: connection closed")]
    Closed { addr: String },
    #[error("router {addr}: no answer within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    /// R-HA-3: this member does not lead; `leader` is the one it names, if any.
    #[error("router {addr}: {reason}")]
    NotLeader {
        addr: String,
        leader: Option<std::net::SocketAddr>,
        reason: String,
        /// The member's suggested wait when it names no leader (the election timeout).
        retry_after_ms: u32,
    },
    /// R-HA-3: no member of the group could be logged in to; why each failed last.
    #[error("no router of {count} reachable: {tried}")]
    NoRouter { count: usize, tried: String },
}

/// Strictly increasing nonces for one address, across connections (R-ID-4): each is
/// `max(clock µs, last + 1)` (R-ID-8), so a restarted node does not replay either.
/// Clones share one counter (the node's and its link's, for resynchronisation).
#[derive(Clone, Debug)]
pub struct Nonces(Arc<AtomicU64>);

impl Default for Nonces {
    fn default() -> Self {
        Nonces(Arc::new(AtomicU64::new(wire_nonce::clock_micros())))
    }
}

impl Nonces {
    pub fn next(&self) -> u64 {
        let mut last = self.0.load(Ordering::Acquire);
        loop {
            let next = wire_nonce::next_after(last);
            debug_assert!(next > last || last == u64::MAX);
            match self
                .0
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// R-ID-8: the router accepted `last_accepted` from this address (another program
    /// signing with the same key): every later nonce is above it.
    pub fn resync(&self, last_accepted: u64) {
        self.0.fetch_max(last_accepted, Ordering::AcqRel);
    }
}

/// The link's memory for R-ID-8 resends: the last `RESEND_WINDOW` signed messages by
/// nonce, and which resent nonce stands for which original one.
#[derive(Default)]
struct Resends {
    sent: VecDeque<(u64, Message)>,
    /// (nonce of the resend, nonce the node gave the message).
    renumbered: VecDeque<(u64, u64)>,
}

impl Resends {
    fn remember(&mut self, nonce: u64, message: &Message) {
        if self.sent.len() == RESEND_WINDOW {
            self.sent.pop_front();
        }
        self.sent.push_back((nonce, message.clone()));
    }

    fn take(&mut self, nonce: u64) -> Option<Message> {
        let at = self.sent.iter().position(|(n, _)| *n == nonce)?;
        self.sent.remove(at).map(|(_, message)| message)
    }

    fn renumber(&mut self, resent: u64, original: u64) {
        if self.renumbered.len() == RESEND_WINDOW {
            self.renumbered.pop_front();
        }
        self.renumbered.push_back((resent, original));
    }

    fn original(&self, nonce: u64) -> Option<u64> {
        self.renumbered
            .iter()
            .find(|(resent, _)| *resent == nonce)
            .map(|(_, original)| *original)
    }
}

/// R-HA-3: the signed messages this link sent that await their final answer, as the
/// frames sent, in nonce order, at most `RESEND_WINDOW` (the oldest dropped first).
/// Not kept: registrations and announcements (a new connection registers afresh),
/// probe answers (a new leader probes again), subscriptions (not commands).
#[derive(Default)]
struct Unanswered {
    frames: VecDeque<(u64, Vec<u8>)>,
}

impl Unanswered {
    fn push(&mut self, nonce: u64, frame: Vec<u8>) {
        if self.frames.len() == RESEND_WINDOW {
            self.frames.pop_front();
        }
        self.frames.push_back((nonce, frame));
    }

    fn answered(&mut self, nonce: u64) {
        if let Some(at) = self.frames.iter().position(|(n, _)| *n == nonce) {
            self.frames.remove(at);
        }
    }
}

/// Whether a signed message is resent after a lost connection (see [`Unanswered`]).
fn resent_after_reconnect(message: &Message) -> bool {
    !matches!(
        message,
        Message::RegisterProvider(_)
            | Message::ProviderAnnounce(_)
            | Message::ProbeAnswer(_)
            | Message::SubscribeBatches(_)
    )
}

/// The nonce of `own`'s message that `message` answers for good: an `RfcAccepted`
/// is not final (its RFC waits for a ticket or a failure), a ticket is for the user
/// (by `rfc_nonce`), every other answer names its nonce.
fn final_answer_nonce(message: &Message, own: Address) -> Option<u64> {
    match message {
        Message::Ack(m) => Some(m.nonce),
        Message::RfcFailed(m) => Some(m.nonce),
        Message::ReportAck(m) => Some(m.nonce),
        Message::ClaimAck(m) => Some(m.nonce),
        Message::ErrorReply(m) if m.ref_nonce != 0 => Some(m.ref_nonce),
        Message::SessionTicket(t) if t.user == own => Some(t.rfc_nonce),
        _ => None,
    }
}

/// Signed messages made while the router link is down (reconnecting), kept to be sent
/// once it is back: messages whose loss costs someone money or a penalty (a consumer's
/// report: the provider's pay; a provider's `SessionStart`). Each keeps the nonce it
/// was numbered with when it was made, so the owner sends the queue on a new link
/// before anything numbered later (R-ID-4); once sent it is one of the link's
/// unanswered messages, resent byte-identical on later reconnects until answered
/// (R-HA-3). At most `max` (the node's config key `key`); one more is refused, an
/// older one is never dropped.
pub struct SendQueue {
    max: usize,
    key: &'static str,
    items: Mutex<VecDeque<(u64, Message)>>,
}

/// A message refused by a full [`SendQueue`].
#[derive(Debug, thiserror::Error)]
#[error("{queued} messages already wait for the router connection ({key} = {max}): not queued")]
pub struct QueueFull {
    pub queued: usize,
    pub max: usize,
    pub key: &'static str,
}

impl SendQueue {
    /// A queue of at most `max` messages; `key` names the config key setting `max`.
    pub fn new(max: usize, key: &'static str) -> SendQueue {
        debug_assert!(max > 0);
        SendQueue {
            max,
            key,
            items: Mutex::new(VecDeque::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Message)>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `message` (numbered `nonce`, not yet signed). The caller holds its
    /// send-order lock, so the queue stays in nonce order.
    pub fn push(&self, nonce: u64, message: Message) -> Result<(), QueueFull> {
        let mut items = self.lock();
        if items.len() >= self.max {
            return Err(QueueFull {
                queued: items.len(),
                max: self.max,
                key: self.key,
            });
        }
        debug_assert!(items.back().is_none_or(|(last, _)| *last < nonce));
        items.push_back((nonce, message));
        Ok(())
    }

    /// The nonces of the queued messages (their waiters keep waiting).
    pub fn nonces(&self) -> Vec<u64> {
        self.lock().iter().map(|(nonce, _)| *nonce).collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Sends the queue on `link`, oldest first (call it under the send-order lock,
    /// after `resend_unanswered` and before anything new). What `link` could not take
    /// (it closed meanwhile) stays queued for the next one. Returns how many were sent.
    pub async fn flush(&self, link: &Link) -> usize {
        let items: Vec<(u64, Message)> = self.lock().drain(..).collect();
        let mut sent = 0;
        let mut rest = items.into_iter();
        for (nonce, message) in rest.by_ref() {
            if link.send(message.clone()).await.is_err() {
                let mut items = self.lock();
                let mut back: VecDeque<(u64, Message)> = std::iter::once((nonce, message))
                    .chain(rest.by_ref())
                    .collect();
                back.append(&mut items);
                *items = back;
                break;
            }
            sent += 1;
        }
        if sent > 0 {
            tracing::info!(
                sent,
                key = self.key,
                "sent the messages made while the router connection was down"
            );
        }
        sent
    }
}

/// R-HA-3: the longest one group member's connect-and-login attempt may take,
/// whatever `liveness` is (the default `router_liveness_ms`, 2 s: a member that has
/// not greeted within it is frozen or dead, and the next one is tried).
pub const GROUP_ATTEMPT_MAX: Duration = Duration::from_millis(2_000);

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// The router's client endpoint, or every member's of a replicated group
    /// (R-HA-3), host:port each, tried in this order.
    pub router_addrs: Vec<String>,
    pub network_id: u32,
    /// Pins the router's address; `None` trusts the one the router names at login.
    pub router_address: Option<Address>,
    pub login_timeout: Duration,
    /// A `Ping` goes to the router when the node has written nothing for this long,
    /// so an idle connection is not closed by the router's
    /// `network.conn_idle_timeout_ms` (300 s) and reconnected every few minutes
    /// (the nodes' `keepalive_ms`; keep it well below the router's timeout).
    pub keepalive: Duration,
    /// R-HA-3: after this long without receiving anything the link sends a `Ping`
    /// (the nodes' `router_ping_ms`). Below `liveness`.
    pub ping_after: Duration,
    /// R-HA-3: once that `Ping` is sent, nothing at all received for this long makes
    /// the connection dead: the link closes it (the nodes' `router_liveness_ms`). With
    /// more than one member it also bounds one member's connect-and-login attempt.
    pub liveness: Duration,
}

impl LinkConfig {
    /// How long one member's attempt (TCP connect, greeting, login) may take: the
    /// login time-out, cut in a group to `liveness` and at most
    /// [`GROUP_ATTEMPT_MAX`] (a frozen or silent member is then left for the next as
    /// soon as a silent connection would be taken for dead, and a large `liveness`,
    /// chosen to tolerate a slow leader, does not let one dead member hold up the
    /// group's reconnect: outsider review 3, finding 8).
    pub fn attempt_timeout(&self) -> Duration {
        if self.router_addrs.len() > 1 {
            self.login_timeout.min(self.liveness).min(GROUP_ATTEMPT_MAX)
        } else {
            self.login_timeout
        }
    }

    /// The members in the order a reconnect tries them: the configured order, with
    /// `lost` (the member whose connection died) moved last, so a frozen leader is
    /// not the first tried again (R-HA-3).
    pub fn order_after(&self, lost: Option<&str>) -> Vec<String> {
        let mut order: Vec<String> = self
            .router_addrs
            .iter()
            .filter(|addr| Some(addr.as_str()) != lost)
            .cloned()
            .collect();
        if let Some(lost) = lost {
            order.push(lost.to_string());
        }
        order
    }
}

/// What the router sent: the message and the exact body it was decoded from.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub message: Message,
    pub body: Bytes,
}

/// A logged-in connection: sends signed messages; dropping it closes the socket.
#[derive(Clone)]
pub struct Link {
    key: SigningKey,
    network_id: u32,
    router: Address,
    outbound: mpsc::Sender<Vec<u8>>,
    resends: Arc<Mutex<Resends>>,
    unanswered: Arc<Mutex<Unanswered>>,
    /// The member this link is logged in to (host:port as dialled).
    addr: String,
    /// Set when the liveness watch ended the connection (a Ping unanswered).
    silent: Arc<std::sync::atomic::AtomicBool>,
}

/// Redirects by `not_leader` followed in a row before the link tries the members in
/// turn (as `wire::connect_retry::LEADER_HOPS_MAX`).
pub const LEADER_HOPS_MAX: u32 = yellowstone_wire::connect_retry::LEADER_HOPS_MAX;

impl Link {
    /// Connects, checks the network id and router address, logs in, and starts the
    /// reader and writer tasks, with nonces of its own: use `connect_with` to share
    /// the node's `Nonces` so that a replay refusal resynchronises them (R-ID-8).
    pub async fn connect(
        config: &LinkConfig,
        key: SigningKey,
    ) -> Result<(Link, mpsc::Receiver<Incoming>), LinkError> {
        Link::connect_with(config, key, Nonces::default()).await
    }

    /// `connect`, resynchronising `nonces` (the ones the node numbers its messages
    /// with) on a `replay` refusal and resending the refused message once (R-ID-8).
    ///
    /// R-HA-3: tries the group's members in order, following `not_leader` to the
    /// leader a member names. Errors: a member's own error when there is one member,
    /// else [`LinkError::NoRouter`] naming each member tried and why it failed.
    pub async fn connect_with(
        config: &LinkConfig,
        key: SigningKey,
        nonces: Nonces,
    ) -> Result<(Link, mpsc::Receiver<Incoming>), LinkError> {
        Link::connect_after(config, key, nonces, None).await
    }

    /// `connect_with`, trying `lost` (the member whose connection just died, e.g. a
    /// frozen leader) last (R-HA-3, issue 25). When another member answered that no
    /// leader is known (an election under way) before `lost`'s turn comes, the link
    /// waits that member's suggested time (at most `liveness`) and asks the others once
    /// more before spending an attempt on `lost`: a frozen leader's silence would
    /// cost the whole attempt bound while the election ends meanwhile. Same errors.
    pub async fn connect_after(
        config: &LinkConfig,
        key: SigningKey,
        nonces: Nonces,
        lost: Option<&str>,
    ) -> Result<(Link, mpsc::Receiver<Incoming>), LinkError> {
        let mut queue: VecDeque<String> = config.order_after(lost).into();
        let mut tried: Vec<(String, String)> = Vec::new();
        let mut hops = 0u32;
        let mut last = None;
        // The longest wait a member suggested while it knew no leader.
        let mut electing: Option<Duration> = None;
        let mut asked_again = false;
        while let Some(addr) = queue.pop_front() {
            if let (Some(wait), Some(lost)) = (electing, lost) {
                if addr == lost && !asked_again && queue.is_empty() {
                    asked_again = true;
                    let wait = wait.min(config.liveness);
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        "an election is under way: asking the other members again before the silent one"
                    );
                    tokio::time::sleep(wait).await;
                    queue = config.order_after(Some(lost)).into();
                    hops = 0;
                    continue;
                }
            }
            match Link::connect_one(config, &addr, key.clone(), nonces.clone()).await {
                Ok(link) => return Ok(link),
                Err(error) => {
                    let why = error.to_string();
                    match tried.iter_mut().find(|(a, _)| *a == addr) {
                        Some(row) => row.1 = why,
                        None => tried.push((addr.clone(), why)),
                    }
                    match &error {
                        LinkError::NotLeader {
                            leader: Some(leader),
                            ..
                        } if hops < LEADER_HOPS_MAX => {
                            hops += 1;
                            tracing::info!(from = %addr, leader = %leader, "not the leader: following");
                            queue.push_front(leader.to_string());
                        }
                        LinkError::NotLeader {
                            leader: None,
                            retry_after_ms,
                            ..
                        } => {
                            // At least a little: a member that suggests no wait still
                            // needs its election's round trips.
                            let wait = Duration::from_millis(u64::from(*retry_after_ms).max(50));
                            electing = Some(electing.map_or(wait, |w| w.max(wait)));
                        }
                        _ => {}
                    }
                    last = Some(error);
                }
            }
        }
        match last {
            Some(error) if tried.len() <= 1 => Err(error),
            _ => Err(LinkError::NoRouter {
                count: tried.len(),
                tried: tried
                    .iter()
                    .map(|(addr, why)| format!("{addr}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    /// One member: connect, log in, start the tasks.
    async fn connect_one(
        config: &LinkConfig,
        addr: &str,
        key: SigningKey,
        nonces: Nonces,
    ) -> Result<(Link, mpsc::Receiver<Incoming>), LinkError> {
        let addr = addr.to_string();
        let io = |source| LinkError::Io {
            addr: addr.clone(),
            source,
        };
        let attempt_timeout = config.attempt_timeout();
        let started = tokio::time::Instant::now();
        let stream = tokio::time::timeout(attempt_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| LinkError::Timeout {
                addr: addr.clone(),
                timeout_ms: attempt_timeout.as_millis() as u64,
            })?
            .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let (mut reader, mut writer) = stream.into_split();
        let mut decoder = FrameDecoder::new(CLIENT_FRAME_BYTES_MAX);
        let mut buffer = vec![0u8; 64 * 1024];
        let login = async {
            let first = read_one(&mut reader, &mut decoder, &mut buffer, &addr).await?;
            if let Message::ErrorReply(reply) = &first.message {
                if reply.code == yellowstone_wire::codes::NOT_LEADER {
                    return Err(LinkError::NotLeader {
                        addr: addr.clone(),
                        leader: yellowstone_wire::parse_not_leader(reply),
                        reason: reply.reason.clone(),
                        retry_after_ms: reply.retry_after_ms,
                    });
                }
            }
            let expect = LoginExpect {
                network_id: Some(config.network_id),
                router: config.router_address,
            };
            let (answer, named) =
                login::answer_challenge(&first.message, &key, expect).map_err(|e| match e {
                    login::LoginError::NetworkId { router, configured } => LinkError::NetworkId {
                        addr: addr.clone(),
                        router,
                        configured,
                    },
                    login::LoginError::RouterAddress { router, configured } => {
                        LinkError::RouterAddress {
                            addr: addr.clone(),
                            router,
                            configured,
                        }
                    }
                    other => LinkError::Login {
                        addr: addr.clone(),
                        reason: other.to_string(),
                    },
                })?;
            writer.write_all(&answer).await.map_err(io)?;
            let reply = read_one(&mut reader, &mut decoder, &mut buffer, &addr).await?;
            if let Message::ErrorReply(e) = &reply.message {
                if e.code == yellowstone_wire::codes::NOT_LEADER {
                    return Err(LinkError::NotLeader {
                        addr: addr.clone(),
                        leader: yellowstone_wire::parse_not_leader(e),
                        reason: e.reason.clone(),
                        retry_after_ms: e.retry_after_ms,
                    });
                }
            }
            login::check_reply(&reply.message, key.address()).map_err(|e| LinkError::Login {
                addr: addr.clone(),
                reason: match e {
                    login::LoginError::Refused { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?;
            Ok(named.router)
        };
        // One bound for the whole attempt: connect, greeting and login answer.
        let router = tokio::time::timeout_at(started + attempt_timeout, login)
            .await
            .map_err(|_| LinkError::Timeout {
                addr: addr.clone(),
                timeout_ms: attempt_timeout.as_millis() as u64,
            })??;
        let (outbound, mut outbound_rx) = mpsc::channel::<Vec<u8>>(OUTBOUND_FRAMES_MAX);
        let resends = Arc::new(Mutex::new(Resends::default()));
        let unanswered = Arc::new(Mutex::new(Unanswered::default()));
        let reader_unanswered = unanswered.clone();
        let own = key.address();
        let resender = Resender {
            key: key.clone(),
            network_id: config.network_id,
            nonces,
            resends: resends.clone(),
            outbound: outbound.clone(),
        };
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_MESSAGES_MAX);
        let keepalive = config.keepalive;
        // Dropped when the reader ends (closed, broken or silent connection): the
        // writer stops then, so the socket closes and `send` fails at once rather
        // than queueing for a router that will never read it (issue 25).
        let (reader_gone, mut reader_ended) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            // One keepalive timer for the connection, moved after each write (not a
            // timer armed and dropped per frame).
            let idle = tokio::time::sleep(keepalive);
            tokio::pin!(idle);
            loop {
                let mut batch = tokio::select! {
                    biased;
                    _ = &mut reader_ended => break,
                    frame = outbound_rx.recv() => match frame {
                        Some(frame) => frame,
                        // Every sender is gone: the link was dropped, close.
                        None => break,
                    },
                    // Nothing written for `keepalive`: a Ping keeps the connection.
                    () = &mut idle => Message::from(yellowstone_wire::Ping { payload: 0 }).to_frame(),
                };
                // Frames queued meanwhile leave in the same write: one syscall and
                // one wake-up of the router's reader for all of them, in order.
                while batch.len() < WRITE_BATCH_BYTES_MAX {
                    match outbound_rx.try_recv() {
                        Ok(frame) => batch.extend_from_slice(&frame),
                        Err(_) => break,
                    }
                }
                // A frozen router stops reading: the write may wait for ever.
                let written = tokio::select! {
                    biased;
                    _ = &mut reader_ended => break,
                    written = writer.write_all(&batch) => written,
                };
                if written.is_err() {
                    break;
                }
                idle.as_mut().reset(tokio::time::Instant::now() + keepalive);
            }
        });
        let network_id = config.network_id;
        let ping_after = config.ping_after;
        let liveness = config.liveness;
        debug_assert!(ping_after > Duration::ZERO && liveness > ping_after);
        let link_addr = addr.clone();
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader_silent = silent.clone();
        tokio::spawn(async move {
            let _reader_gone = reader_gone;
            let ping = Message::from(yellowstone_wire::Ping { payload: 0 }).to_frame();
            // When the liveness Ping went out, if one is unanswered.
            let mut pinged: Option<tokio::time::Instant> = None;
            loop {
                let wait = match pinged {
                    None => ping_after,
                    Some(at) => liveness.saturating_sub(at.elapsed()),
                };
                // `read_one` is cancel-safe: bytes are decoded only once a read returned.
                let read = tokio::time::timeout(
                    wait,
                    read_one(&mut reader, &mut decoder, &mut buffer, &addr),
                )
                .await;
                let incoming = match read {
                    Ok(Ok(incoming)) => {
                        pinged = None;
                        incoming
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "router connection ended");
                        break;
                    }
                    Err(_) if pinged.is_none() => {
                        // Quiet for `ping_after`: ask for a sign of life. A full
                        // queue (a router that does not read) still starts the clock.
                        let _ = resender.outbound.try_send(ping.clone());
                        pinged = Some(tokio::time::Instant::now());
                        continue;
                    }
                    Err(_) => {
                        reader_silent.store(true, Ordering::Release);
                        tracing::warn!(
                            router = %addr,
                            liveness_ms = liveness.as_millis() as u64,
                            "the router answered nothing, not even a Ping, within router_liveness_ms: connection taken for dead (a frozen or cut-off router), reconnecting (R-HA-3)"
                        );
                        break;
                    }
                };
                if matches!(
                    incoming.message,
                    Message::SessionTicket(_) | Message::CreditBatch(_)
                ) {
                    if let Err(error) =
                        incoming
                            .message
                            .verify_router(network_id, &incoming.body, &router)
                    {
                        // R-ID-5: never act on a ticket the router did not sign.
                        tracing::error!(%error, message = incoming.message.name(), "router signature does not verify: ignored");
                        continue;
                    }
                }
                let Some(incoming) = resender.handle(incoming).await else {
                    continue;
                };
                // R-HA-3: answered for good: no longer resent after a reconnect.
                if let Some(nonce) = final_answer_nonce(&incoming.message, own) {
                    reader_unanswered
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .answered(nonce);
                }
                if inbound_tx.send(incoming).await.is_err() {
                    break;
                }
            }
        });
        let link = Link {
            key,
            network_id,
            router,
            outbound,
            resends,
            unanswered,
            addr: link_addr,
            silent,
        };
        Ok((link, inbound))
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    pub fn router(&self) -> Address {
        self.router
    }

    pub fn network_id(&self) -> u32 {
        self.network_id
    }

    /// The member this link is logged in to, host:port as dialled (a reconnect after
    /// this link died tries it last: `Link::connect_after`).
    pub fn member(&self) -> &str {
        &self.addr
    }

    /// Whether the liveness watch ended this connection: a `Ping` went unanswered for
    /// `LinkConfig::liveness` (a frozen or cut-off router, R-HA-3).
    pub fn went_silent(&self) -> bool {
        self.silent.load(Ordering::Acquire)
    }

    /// Signs `message` (if it is a signed type) and queues it for the router; a signed
    /// message is kept (the last `RESEND_WINDOW`) to be resent after a replay refusal.
    pub async fn send(&self, mut message: Message) -> Result<(), LinkError> {
        // The nonce kept for a resend after a reconnect, if any.
        let mut kept = None;
        let frame = if message.is_signed() {
            let frame = message.sign(&self.key, self.network_id);
            if let Some((_, nonce)) = message.claimed_origin().filter(|(_, n)| *n != 0) {
                self.resends
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remember(nonce, &message);
                if resent_after_reconnect(&message) {
                    self.unanswered
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(nonce, frame.clone());
                    kept = Some(nonce);
                }
            }
            frame
        } else {
            message.to_frame()
        };
        if self.outbound.send(frame).await.is_err() {
            // Never written: the caller hears of the failure, so a reconnect must not
            // send it behind its back (a ticket nobody waits for).
            if let Some(nonce) = kept {
                self.unanswered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .answered(nonce);
            }
            return Err(LinkError::Closed {
                addr: self.addr.clone(),
            });
        }
        Ok(())
    }

    /// R-HA-3: sends, first and byte-identical, the signed messages `previous` (a lost
    /// link of the same key) sent without a final answer; they stay awaited here.
    /// Not kept for R-ID-8's resend with a fresh nonce: a `replay` refusal of one
    /// means it was applied (its answer no longer cached) and goes to the node.
    /// Returns how many were resent.
    pub async fn resend_unanswered(&self, previous: &Link) -> usize {
        let frames: Vec<(u64, Vec<u8>)> = previous
            .unanswered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .frames
            .drain(..)
            .collect();
        let count = frames.len();
        for (nonce, frame) in frames {
            self.unanswered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(nonce, frame.clone());
            if self.outbound.send(frame).await.is_err() {
                break;
            }
        }
        if count > 0 {
            tracing::info!(
                count,
                "resent the messages the lost connection had no answer to (R-HA-3)"
            );
        }
        count
    }

    /// R-HA-3: the nonces of the signed messages awaiting their final answer.
    pub fn unanswered_nonces(&self) -> Vec<u64> {
        self.unanswered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .frames
            .iter()
            .map(|(nonce, _)| *nonce)
            .collect()
    }

    /// Whether the writer is gone (the connection closed).
    pub fn is_closed(&self) -> bool {
        self.outbound.is_closed()
    }
}

/// The reader's side of R-ID-8: resends refused messages and renames answers.
struct Resender {
    key: SigningKey,
    network_id: u32,
    nonces: Nonces,
    resends: Arc<Mutex<Resends>>,
    outbound: mpsc::Sender<Vec<u8>>,
}

impl Resender {
    /// What the node should see of `incoming`: nothing for a replay refusal of a
    /// message this link resent (the resend answers instead); an answer to a resent
    /// message carries the nonce the node first gave that message.
    async fn handle(&self, mut incoming: Incoming) -> Option<Incoming> {
        if let Message::ErrorReply(reply) = &incoming.message {
            if let Some(last) = wire_nonce::replay_last_accepted(reply) {
                // Whatever was refused, later nonces must be above the router's.
                self.nonces.resync(last);
                let refused = reply.ref_nonce;
                let resend = {
                    let mut resends = self.resends.lock().unwrap_or_else(|e| e.into_inner());
                    // A resend is refused at most once more: that refusal goes to the
                    // node (under the original nonce, below).
                    match resends.original(refused) {
                        Some(_) => None,
                        None => resends.take(refused).map(|mut message| {
                            let nonce = self.nonces.next();
                            wire_nonce::set_nonce(&mut message, nonce);
                            resends.renumber(nonce, refused);
                            (nonce, message.sign(&self.key, self.network_id))
                        }),
                    }
                };
                if let Some((nonce, frame)) = resend {
                    tracing::warn!(
                        refused,
                        last_accepted = last,
                        resent_as = nonce,
                        "replay refusal: another program signs with this key; nonces resynchronised and the message resent (R-ID-8)"
                    );
                    // The writer is gone only when the connection is: the reader ends too.
                    let _ = self.outbound.send(frame).await;
                    return None;
                }
            }
        }
        let own = self.key.address();
        let message = &mut incoming.message;
        // A ticket's `rfc_nonce` is the user's: only a consumer's own RFCs are renamed.
        let renameable = !matches!(message, Message::SessionTicket(t) if t.user != own);
        if renameable {
            if let Some(nonce) = wire_nonce::answer_nonce_mut(message) {
                let resends = self.resends.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(original) = resends.original(*nonce) {
                    *nonce = original;
                }
            }
        }
        Some(incoming)
    }
}

async fn read_one(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    decoder: &mut FrameDecoder,
    buffer: &mut [u8],
    addr: &str,
) -> Result<Incoming, LinkError> {
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                let message = Message::decode(frame.header.msg_type, &frame.body).map_err(|e| {
                    LinkError::Login {
                        addr: addr.to_string(),
                        reason: format!("undecodable frame from the router: {e}"),
                    }
                })?;
                return Ok(Incoming {
                    message,
                    body: frame.body,
                });
            }
            Ok(None) => {}
            Err(e) => {
                return Err(LinkError::Login {
                    addr: addr.to_string(),
                    reason: format!("bad frame from the router: {e}"),
                })
            }
        }
        let n = reader.read(buffer).await.map_err(|source| LinkError::Io {
            addr: addr.to_string(),
            source,
        })?;
        if n == 0 {
            return Err(LinkError::Closed {
                addr: addr.to_string(),
            });
        }
        decoder.extend(&buffer[..n]);
    }
}

/// Exponential back-off between reconnects: `initial`, doubled up to `max`, reset
/// once a connection has stayed up.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        assert!(initial > Duration::ZERO && initial <= max);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next try (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Shared handle for tasks that need the current link (or none while reconnecting).
pub type CurrentLink = Arc<tokio::sync::RwLock<Option<Link>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_max_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u64> = (0..5)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    fn config(routers: &[&str]) -> LinkConfig {
        LinkConfig {
            router_addrs: routers.iter().map(|r| r.to_string()).collect(),
            network_id: 1,
            router_address: None,
            login_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
            ping_after: Duration::from_millis(500),
            liveness: Duration::from_millis(2_000),
        }
    }

    #[test]
    fn r_ha_3_a_reconnect_tries_the_lost_member_last() {
        let group = config(&["a:1", "b:2", "c:3"]);
        assert_eq!(group.order_after(None), ["a:1", "b:2", "c:3"]);
        assert_eq!(group.order_after(Some("a:1")), ["b:2", "c:3", "a:1"]);
        assert_eq!(group.order_after(Some("b:2")), ["a:1", "c:3", "b:2"]);
        // A leader reached by a redirect, not in the list: tried after the list.
        assert_eq!(group.order_after(Some("d:4")), ["a:1", "b:2", "c:3", "d:4"]);
    }

    #[test]
    fn r_ha_3_a_group_member_gets_the_liveness_bound_a_single_router_the_login_time_out() {
        assert_eq!(
            config(&["a:1", "b:2"]).attempt_timeout(),
            Duration::from_millis(2_000)
        );
        assert_eq!(config(&["a:1"]).attempt_timeout(), Duration::from_secs(10));
        // A large liveness bound does not let one silent member hold the reconnect.
        let mut patient = config(&["a:1", "b:2"]);
        patient.liveness = Duration::from_secs(600);
        assert_eq!(patient.attempt_timeout(), GROUP_ATTEMPT_MAX);
    }

    /// A member that knows no leader yet (an election under way), then the silent
    /// member the last connection died on: the link waits the suggested time and asks
    /// the electing member again before it spends an attempt on the silent one.
    #[tokio::test]
    async fn r_ha_3_an_election_under_way_is_waited_for_before_the_silent_member() {
        use std::io::Write as _;
        let electing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let electing_addr = electing.local_addr().unwrap().to_string();
        let asked = Arc::new(AtomicU64::new(0));
        let counted = asked.clone();
        std::thread::spawn(move || {
            for stream in electing.incoming() {
                let Ok(mut stream) = stream else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let reply = yellowstone_wire::leader::not_leader_reply(0, None, 80);
                let _ = stream.write_all(&Message::from(reply).to_frame());
            }
        });
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_addr = silent.local_addr().unwrap().to_string();
        let mut group = config(&[&silent_addr, &electing_addr]);
        group.liveness = Duration::from_millis(300);
        group.ping_after = Duration::from_millis(100);
        let error = Link::connect_after(
            &group,
            SigningKey::from_seed(b"electing"),
            Nonces::default(),
            Some(&silent_addr),
        )
        .await
        .err()
        .expect("nobody leads");
        assert_eq!(asked.load(Ordering::SeqCst), 2, "asked again: {error}");
        let text = error.to_string();
        assert!(
            text.contains("no leader known") && text.contains("within 300 ms"),
            "the silent member was still tried last: {text}"
        );
    }

    /// A router that accepts and never answers (a frozen one): the link takes it for
    /// dead within `ping_after + liveness`, after the login time-out the single
    /// router keeps.
    #[tokio::test]
    async fn r_ha_3_a_silent_member_is_left_within_the_liveness_bound() {
        let silent_a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = silent_a.local_addr().unwrap().to_string();
        let b = silent_b.local_addr().unwrap().to_string();
        let mut group = config(&[&a, &b]);
        group.liveness = Duration::from_millis(300);
        group.ping_after = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let error = Link::connect(&group, SigningKey::from_seed(b"silent"))
            .await
            .err()
            .expect("nobody greets");
        assert!(started.elapsed() < Duration::from_millis(1_500), "{error}");
        let text = error.to_string();
        assert!(
            text.contains(&a) && text.contains(&b) && text.contains("within 300 ms"),
            "{text}"
        );
    }

    #[test]
    fn r_id_4_nonces_strictly_increase() {
        let nonces = Nonces::default();
        let a = nonces.next();
        let b = nonces.next();
        assert!(b > a && a > 1_000_000_000_000_000);
    }
}
