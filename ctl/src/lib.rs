//! yellowstone-ctl: the operator's and providers' tool for a running router
//! (R-OPS-3). It logs in with a key file, signs each command, waits for the answer to
//! that command's nonce and turns every router refusal into a clear message and a
//! non-zero exit status. The binary (`src/main.rs`) is the command line; this library
//! holds what the subcommands share, so that it is tested on its own.
//!
//! Exit statuses: 0 done; 1 refused by the router (the error code's name, its reason
//! and detail are printed); 2 a local error before anything was sent (usage, key
//! file, CSV); 3 connection failure or no answer in time; 4 a credit batch failed
//! verification (signature, Merkle root rule, totals).

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
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Refused(_) => 1,
            CtlError::Local(_) => 2,
            CtlError::Connection(_) => 3,
            CtlError::Verification(_) => 4,
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
        }
    }
}

impl From<ClientError> for CtlError {
    fn from(error: ClientError) -> Self {
        CtlError::Connection(error.to_string())
    }
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
        let key = self.client.key().clone();
        self.client = connect_client(&self.endpoints, key, self.timeout)
            .map_err(|e| CtlError::Connection(e.to_string()))?;
        Ok(())
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
                        self.reconnect()?;
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
