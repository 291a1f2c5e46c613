//! yellowstone-ctl: the operator's and providers' tool for a running router
//! (R-OPS-3). It logs in with a key file, signs each command, waits for the answer to
//! that command's nonce and turns every router refusal into a clear message and a
//! non-zero exit status. The binary (`src/main.rs`) is the command line; this library
//! holds what the subcommands share, so that it is tested on its own.
//!
//! Exit statuses: 0 done; 1 refused by the router (the error code's name, its reason
//! and detail are printed); 2 a local error before anything was sent (usage, key
//! file, CSV); 3 connection failure or no answer in time; 4 a credit batch failed
//! verification (signature, Merkle root rule, totals, a gap on one connection); 5
//! `batches follow` printed its `--count` batches but blocks sealed while it was
//! reconnecting were not delivered (named on stderr as they happen, R-HA-2).

pub mod batch;
pub mod keyfile;
pub mod output;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use yellowstone_wire::client::{Client, ClientError};
use yellowstone_wire::messages::{ErrorReply, Message};
use yellowstone_wire::{codes, Address, SigningKey};

/// Why a command did not complete; each kind has its exit status.
#[derive(Debug)]
pub enum CtlError {
    /// Bad arguments, key file or input file: nothing was sent.
    Local(String),
    /// The router refused the command.
    Refused(ErrorReply),
    /// Could not connect, log in, or get an answer in time.
    Connection(String),
    /// A router-signed message did not verify.
    Verification(String),
    /// `batches follow` ended (its `--count` reached) but these blocks' batches were
    /// sealed while it was reconnecting and never delivered: inclusive ranges
    /// `(first, last)` of block numbers (R-HA-2: a subscription gets only the newest
    /// sealed batch; the protocol has no query for a past one).
    MissedBlocks(Vec<(u64, u64)>),
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Refused(_) => 1,
            CtlError::Local(_) => 2,
            CtlError::Connection(_) => 3,
            CtlError::Verification(_) => 4,
            CtlError::MissedBlocks(_) => 5,
        }
    }
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Local(reason) => write!(f, "{reason}"),
            CtlError::Refused(reply) => write!(f, "{}", refusal_text(reply)),
            CtlError::Connection(reason) => write!(f, "connection: {reason}"),
            CtlError::Verification(reason) => write!(f, "verification failed: {reason}"),
            CtlError::MissedBlocks(ranges) => write!(
                f,
                "missed blocks {}: sealed while reconnecting, their batches were not \
                 delivered (a subscription is sent only the newest sealed batch; the \
                 protocol has no query for a past one)",
                block_ranges(ranges)
            ),
        }
    }
}

impl From<ClientError> for CtlError {
    fn from(error: ClientError) -> Self {
        CtlError::Connection(error.to_string())
    }
}

/// `5..=6, 9` for the inclusive ranges `[(5, 6), (9, 9)]`.
pub fn block_ranges(ranges: &[(u64, u64)]) -> String {
    ranges
        .iter()
        .map(|&(first, last)| {
            if first == last {
                first.to_string()
            } else {
                format!("{first}..={last}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// "refused by the router: invalid_param (0x0216): <reason> [detail N]".
pub fn refusal_text(reply: &ErrorReply) -> String {
    let mut text = format!(
        "refused by the router: {} (0x{:04X}): {}",
        codes::name(reply.code),
        reply.code,
        reply.reason
    );
    if reply.detail != 0 {
        text.push_str(&format!(" [detail {}]", reply.detail));
    }
    if reply.retry_after_ms != 0 {
        text.push_str(&format!(" [retry after {} ms]", reply.retry_after_ms));
    }
    text
}

/// A nonce from the clock (Unix µs): above every earlier run's (R-ID-4), so a rerun
/// of the tool, or of a script calling it, is never refused as a replay.
pub fn clock_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

/// A logged-in connection that sends commands and waits for their answers.
///
/// R-HA-3: it knows every member of a replicated router group (`--router a,b,c`),
/// connects to the leader ([`yellowstone_wire::connect_retry::connect_following`]),
/// and when the connection is lost before a command's answer (a failover: the old
/// leader sends `not_leader` and closes) it connects again and resends the **same**
/// signed frame: the new leader answers it from its reply cache (the original answer,
/// no second effect) or, if it was never committed, evaluates it.
pub struct Session {
    client: Client,
    timeout: Duration,
    nonce: u64,
    endpoints: Vec<SocketAddr>,
}

/// Reconnections (and resends) one command may take before it fails: a failover is
/// one, a second failover during the first is two.
pub const RESENDS_MAX: u32 = 3;

/// `batches follow` (R-HA-3): a `Ping` after this much silence from a group's member
/// (batches come every 12 s, so silence alone proves nothing); the connection is dead
/// when nothing at all arrives within [`yellowstone_wire::connect_retry::GROUP_LIVENESS`]
/// of the Ping (a frozen leader keeps its TCP connection open and answers nothing).
pub const FOLLOW_PING_AFTER: Duration = Duration::from_millis(500);

/// `batches follow`: a new connection that has stayed up this long, with frames
/// arriving (Pongs, batches), ends its failover: the next loss starts a new count of
/// reconnections (`--reconnects-per-failover`).
pub const FOLLOW_HEALTHY_SPELL: Duration = Duration::from_secs(5);

/// The window of `--reconnects-per-hour`.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(3_600);

/// Bounds `batches follow`'s reconnections (R-HA-3): a long-running follower lives
/// through any number of failovers, each allowed `per_failover` reconnections in a
/// row (a second failover during the first needs two); the count restarts once a new
/// connection has been healthy for [`FOLLOW_HEALTHY_SPELL`]. Over its whole life at
/// most `per_window` reconnections fall in any [`RECONNECT_WINDOW`]: a group failing
/// over that often needs an operator, not a tool that reconnects forever.
#[derive(Debug)]
pub struct ReconnectBudget {
    per_failover: u32,
    per_window: u32,
    window: Duration,
    in_row: u32,
    recent: std::collections::VecDeque<Instant>,
}

impl ReconnectBudget {
    /// Errors: `CtlError::Local` when `per_failover` is 0 or above 100, or
    /// `per_window` is below `per_failover` or above 100,000 (naming value and bound).
    pub fn new(per_failover: u32, per_window: u32, window: Duration) -> Result<Self, CtlError> {
        if !(1..=100).contains(&per_failover) {
            return Err(CtlError::Local(format!(
                "--reconnects-per-failover {per_failover}: must be 1..=100"
            )));
        }
        if per_window < per_failover || per_window > 100_000 {
            return Err(CtlError::Local(format!(
                "--reconnects-per-hour {per_window}: must be at least \
                 --reconnects-per-failover ({per_failover}) and at most 100000"
            )));
        }
        Ok(ReconnectBudget {
            per_failover,
            per_window,
            window,
            in_row: 0,
            recent: std::collections::VecDeque::new(),
        })
    }

    /// Takes one reconnection at `now`; returns (its number in this failover, 1-based;
    /// reconnections in the window). Errors: `CtlError::Connection` naming the bound
    /// that was reached, with `why` (the last loss).
    pub fn take(&mut self, now: Instant, why: &str) -> Result<(u32, usize), CtlError> {
        while self
            .recent
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.in_row >= self.per_failover {
            return Err(CtlError::Connection(format!(
                "connection lost {} times in a row without a healthy spell of {} s \
                 (--reconnects-per-failover {}): {why}",
                self.in_row + 1,
                FOLLOW_HEALTHY_SPELL.as_secs(),
                self.per_failover
            )));
        }
        if self.recent.len() >= self.per_window as usize {
            return Err(CtlError::Connection(format!(
                "{} reconnections within {} s (--reconnects-per-hour {}): {why}",
                self.recent.len(),
                self.window.as_secs(),
                self.per_window
            )));
        }
        self.in_row += 1;
        self.recent.push_back(now);
        debug_assert!(self.recent.len() <= self.per_window as usize);
        Ok((self.in_row, self.recent.len()))
    }

    /// The connection made after the last reconnection has been healthy for
    /// [`FOLLOW_HEALTHY_SPELL`]: the failover is over.
    pub fn healthy(&mut self) {
        self.in_row = 0;
    }
}

/// How waiting for an answer ended without one.
enum Waited {
    /// The connection was lost (closed, reset, `not_leader`): reconnect and resend.
    Lost(String),
    /// No answer in time, or anything else.
    Failed(CtlError),
}

impl Session {
    /// Connects to `router` (one `host:port`, or a replicated group's members
    /// comma-separated, R-HA-3), logs in with `key`; answers are awaited up to `timeout`.
    pub fn connect(router: &str, key: SigningKey, timeout: Duration) -> Result<Session, CtlError> {
        let endpoints = yellowstone_wire::leader::parse_endpoints(router)
            .map_err(|e| CtlError::Local(format!("--router {router}: {e}")))?;
        let client = connect_client(&endpoints, key, timeout)
            .map_err(|e| CtlError::Connection(format!("{router}: {e}")))?;
        Ok(Session {
            client,
            timeout,
            nonce: clock_nonce(),
            endpoints,
        })
    }

    /// The members this session connects to, in the order given.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Connects again (to the group's leader) after a lost connection.
    ///
    /// Errors: `CtlError::Connection` when no member could be logged in to in time.
    pub fn reconnect(&mut self) -> Result<(), CtlError> {
        self.reconnect_avoiding(None)
    }

    /// Connects again, trying the member at `silent` last (a frozen leader accepts
    /// TCP connections and never greets: each attempt on it costs up to
    /// [`yellowstone_wire::connect_retry::MEMBER_ATTEMPT_MAX`]; R-HA-3, issue 25).
    ///
    /// Errors: `CtlError::Connection` when no member could be logged in to in time.
    pub fn reconnect_avoiding(&mut self, silent: Option<SocketAddr>) -> Result<(), CtlError> {
        let key = self.client.key().clone();
        let mut order = self.endpoints.clone();
        if let Some(silent) = silent {
            // Stable: the others keep the order given.
            order.sort_by_key(|endpoint| *endpoint == silent);
        }
        self.client = connect_client(&order, key, self.timeout)?;
        Ok(())
    }

    /// The member this session is connected to (None if the socket cannot say).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.client.peer()
    }

    pub fn address(&self) -> Address {
        self.client.address()
    }

    /// The router's address as it announced it at login.
    pub fn router(&self) -> Address {
        self.client.router()
    }

    pub fn network_id(&self) -> u32 {
        self.client.network_id()
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    fn next_nonce(&mut self) -> u64 {
        self.nonce = self.nonce.max(clock_nonce()) + 1;
        self.nonce
    }

    /// Signs `build(nonce)` with a fresh nonce, sends it and waits for `pick` to
    /// accept an answer to that nonce; an `ErrorReply` for it is `Refused`. A replay
    /// refusal (another tool used higher nonces) is retried once above the router's
    /// last nonce.
    pub fn request<T>(
        &mut self,
        build: impl Fn(u64) -> Message,
        mut pick: impl FnMut(u64, &Message) -> Option<T>,
    ) -> Result<T, CtlError> {
        let mut retried = false;
        loop {
            let nonce = self.next_nonce();
            let message = build(nonce);
            let msg_type = message.msg_type();
            // Signed once: a resend after a lost connection is these very bytes.
            let frame = yellowstone_wire::client::presign(
                self.client.key(),
                self.client.network_id(),
                message,
            );
            self.client.send_raw(&frame)?;
            let mut resends = 0u32;
            let answer = loop {
                // R-HA-3 (issue 25): in a group, an answer later than the liveness
                // bound means a frozen leader: reconnect and resend.
                let liveness = (self.endpoints.len() > 1)
                    .then_some(yellowstone_wire::connect_retry::GROUP_LIVENESS);
                let waited = self.wait(liveness, |m| match m {
                    Message::ErrorReply(e)
                        if e.ref_nonce == nonce
                            || (e.ref_nonce == 0 && e.ref_msg_type == msg_type) =>
                    {
                        Some(Err(e.clone()))
                    }
                    other => pick(nonce, other).map(Ok),
                });
                match waited {
                    Ok(answer) => break answer,
                    Err(Waited::Lost(why)) if resends < RESENDS_MAX => {
                        resends += 1;
                        eprintln!(
                            "connection lost before the answer ({why}); reconnecting and \
                             sending the same signed message again (R-HA-3)"
                        );
                        // The member that went silent or lost office is tried last.
                        let silent = self.peer();
                        self.reconnect_avoiding(silent)?;
                        self.client.send_raw(&frame)?;
                    }
                    Err(Waited::Lost(why)) => {
                        return Err(CtlError::Connection(format!(
                            "connection lost {resends} times before the answer: {why}"
                        )))
                    }
                    Err(Waited::Failed(error)) => return Err(error),
                }
            };
            match answer {
                Ok(value) => return Ok(value),
                Err(reply) if reply.code == REPLAY && !retried => {
                    retried = true;
                    self.nonce = u64::try_from(reply.detail).unwrap_or(u64::MAX - 1);
                }
                Err(reply) => return Err(CtlError::Refused(reply)),
            }
        }
    }

    /// Sends the unsigned query `message` (`MarketStateQuery`, `CatalogQuery`: no
    /// effect, so asking again is harmless) and waits for `pick` to accept its answer,
    /// within the session's timeout. R-HA-3: in a group, no answer within
    /// `GROUP_LIVENESS` (a frozen leader) or a lost connection makes it reconnect (the
    /// silent member last) and ask again, at most [`RESENDS_MAX`] times.
    ///
    /// Errors: `CtlError::Connection` when the connection is lost more often, no
    /// member serves within the timeout, or no answer comes in time.
    pub fn query<T>(
        &mut self,
        message: &Message,
        mut pick: impl FnMut(&Message) -> Option<T>,
    ) -> Result<T, CtlError> {
        self.client.send(message)?;
        let liveness =
            (self.endpoints.len() > 1).then_some(yellowstone_wire::connect_retry::GROUP_LIVENESS);
        let mut resends = 0u32;
        loop {
            match self.wait(liveness, &mut pick) {
                Ok(answer) => return Ok(answer),
                Err(Waited::Lost(why)) if resends < RESENDS_MAX => {
                    resends += 1;
                    eprintln!(
                        "connection lost before the answer ({why}); reconnecting and asking \
                         again (R-HA-3)"
                    );
                    let silent = self.peer();
                    self.reconnect_avoiding(silent)?;
                    self.client.send(message)?;
                }
                Err(Waited::Lost(why)) => {
                    return Err(CtlError::Connection(format!(
                        "connection lost {resends} times before the answer: {why}"
                    )))
                }
                Err(Waited::Failed(error)) => return Err(error),
            }
        }
    }

    /// Reads messages until `pick` accepts one, within the session's timeout.
    pub fn await_answer<T>(
        &mut self,
        pick: impl FnMut(&Message) -> Option<T>,
    ) -> Result<T, CtlError> {
        self.wait(None, pick).map_err(|waited| match waited {
            Waited::Lost(why) => CtlError::Connection(why),
            Waited::Failed(error) => error,
        })
    }

    /// Reads until `pick` accepts a message, within the session's timeout; with a
    /// `liveness` bound below it, silence that long is a lost connection (a frozen
    /// group member, R-HA-3).
    fn wait<T>(
        &mut self,
        liveness: Option<Duration>,
        mut pick: impl FnMut(&Message) -> Option<T>,
    ) -> Result<T, Waited> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        loop {
            if let Some(bound) = liveness.filter(|bound| *bound < self.timeout) {
                if started.elapsed() >= bound {
                    return Err(Waited::Lost(format!(
                        "no answer within {} ms (group liveness bound)",
                        bound.as_millis()
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(Waited::Failed(CtlError::Connection(format!(
                    "no answer from the router within {} ms",
                    self.timeout.as_millis()
                ))));
            }
            match self.client.recv() {
                // R-HA-3: the leader lost office; the connection closes after this.
                Ok(Message::ErrorReply(e)) if e.code == codes::NOT_LEADER => {
                    return Err(Waited::Lost(e.reason))
                }
                Ok(message) => {
                    if let Some(value) = pick(&message) {
                        return Ok(value);
                    }
                }
                Err(ClientError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e @ (ClientError::Closed | ClientError::Io(_))) => {
                    return Err(Waited::Lost(e.to_string()))
                }
                Err(e) => return Err(Waited::Failed(e.into())),
            }
        }
    }
}

/// Connects and logs in to the leader among `endpoints` (SPEC §9: a router near its
/// connection limit refuses or evicts for room; R-HA-3: a follower names the leader),
/// retrying with backoff until `timeout`; answers are then awaited `timeout` each.
fn connect_client(
    endpoints: &[SocketAddr],
    key: SigningKey,
    timeout: Duration,
) -> Result<Client, CtlError> {
    let policy = yellowstone_wire::connect_retry::ConnectRetry::within(timeout);
    let client = Client::connect_following(endpoints, key, &policy)
        .map_err(|e| CtlError::Connection(e.to_string()))?;
    // A group's session polls, so its liveness bound is checked while waiting.
    let poll = if endpoints.len() > 1 {
        timeout.min(Duration::from_millis(250))
    } else {
        timeout
    };
    client.set_read_timeout(Some(poll))?;
    Ok(client)
}

/// The market error code of a replay (R-ID-4); `detail` holds the last nonce.
pub const REPLAY: u16 = 0x0201;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_ha_3_reconnections_counted_per_failover_and_bounded_per_window() {
        let start = Instant::now();
        let window = Duration::from_secs(60);
        let mut budget = ReconnectBudget::new(3, 5, window).unwrap();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(budget.take(at(0), "x").unwrap(), (1, 1));
        assert_eq!(budget.take(at(1), "x").unwrap(), (2, 2));
        assert_eq!(budget.take(at(2), "x").unwrap(), (3, 3));
        let error = budget.take(at(3), "cut").unwrap_err().to_string();
        assert!(
            error.contains("4 times in a row") && error.contains("--reconnects-per-failover 3"),
            "{error}"
        );
        // A healthy spell ends the failover: the next loss starts a new count ...
        budget.healthy();
        assert_eq!(budget.take(at(10), "x").unwrap(), (1, 4));
        budget.healthy();
        assert_eq!(budget.take(at(20), "x").unwrap(), (1, 5));
        budget.healthy();
        // ... but no more than 5 fall in any 60 s.
        let error = budget.take(at(30), "cut").unwrap_err().to_string();
        assert!(
            error.contains("5 reconnections within 60 s") && error.contains("cut"),
            "{error}"
        );
        // Those of 0..2 s have left the window by 62 s.
        assert_eq!(budget.take(at(62), "x").unwrap(), (1, 3));
    }

    #[test]
    fn r_ha_3_reconnect_budget_bounds_are_validated() {
        for (per_failover, per_window, expected) in [
            (0, 60, "--reconnects-per-failover 0: must be 1..=100"),
            (101, 200, "--reconnects-per-failover 101"),
            (
                3,
                2,
                "--reconnects-per-hour 2: must be at least --reconnects-per-failover (3)",
            ),
            (3, 100_001, "at most 100000"),
        ] {
            let error =
                ReconnectBudget::new(per_failover, per_window, RECONNECT_WINDOW).unwrap_err();
            assert_eq!(error.exit_code(), 2);
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    #[test]
    fn missed_blocks_are_named_as_ranges_with_their_own_exit_status() {
        let error = CtlError::MissedBlocks(vec![(5, 6), (9, 9)]);
        assert_eq!(error.exit_code(), 5);
        assert!(
            error.to_string().starts_with("missed blocks 5..=6, 9:"),
            "{error}"
        );
    }
}
