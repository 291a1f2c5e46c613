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

use std::net::ToSocketAddrs;
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
pub struct Session {
    client: Client,
    timeout: Duration,
    nonce: u64,
}

impl Session {
    /// Connects to `router`, logs in with `key`; answers are awaited up to `timeout`.
    pub fn connect(router: &str, key: SigningKey, timeout: Duration) -> Result<Session, CtlError> {
        let addr = router
            .to_socket_addrs()
            .map_err(|e| CtlError::Local(format!("--router {router}: {e}")))?
            .next()
            .ok_or_else(|| CtlError::Local(format!("--router {router}: no address")))?;
        // SPEC §9: a router near its connection limit refuses or evicts for room;
        // tried again with backoff until `timeout`.
        let policy = yellowstone_wire::connect_retry::ConnectRetry::within(timeout);
        let client = Client::connect_retrying(addr, key, &policy)
            .map_err(|e| CtlError::Connection(format!("{router}: {e}")))?;
        client.set_read_timeout(Some(timeout))?;
        Ok(Session {
            client,
            timeout,
            nonce: clock_nonce(),
        })
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
            self.client.send_signed(message)?;
            let answer = self.await_answer(|m| match m {
                Message::ErrorReply(e)
                    if e.ref_nonce == nonce || (e.ref_nonce == 0 && e.ref_msg_type == msg_type) =>
                {
                    Some(Err(e.clone()))
                }
                other => pick(nonce, other).map(Ok),
            })?;
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
        mut pick: impl FnMut(&Message) -> Option<T>,
    ) -> Result<T, CtlError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(CtlError::Connection(format!(
                    "no answer from the router within {} ms",
                    self.timeout.as_millis()
                )));
            }
            match self.client.recv() {
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
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The market error code of a replay (R-ID-4); `detail` holds the last nonce.
pub const REPLAY: u16 = 0x0201;
