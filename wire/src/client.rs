//! A small blocking client: connect, answer the login challenge, send signed
//! messages, read frames. Used by the load generator, the tests and third parties.
//!
//! ```no_run
//! use yellowstone_wire::{client::Client, SigningKey, Rfc, Message};
//! let key = SigningKey::from_seed(b"alice");
//! let mut client = Client::connect("127.0.0.1:7400", key).unwrap();
//! // expires_at_ms is Unix time in ms, after the router's clock and at most
//! // market.rfc_ttl_max_ms (default 300,000) ahead of it: here 30 s from now.
//! let now_ms = std::time::SystemTime::now()
//!     .duration_since(std::time::UNIX_EPOCH)
//!     .unwrap()
//!     .as_millis() as u64;
//! let rfc = Rfc {
//!     from: client.address(),
//!     nonce: client.next_nonce(),
//!     model_id: 1,
//!     tokens_max: 100,
//!     expires_at_ms: now_ms + 30_000,
//!     ..Rfc::default()
//! };
//! client.send_signed(rfc.into()).unwrap();
//! // RfcAccepted (then a SessionTicket), or an ErrorReply with ref_nonce = the RFC's nonce.
//! let reply = client.recv_verified().unwrap();
//! ```
//!
//! The protocol itself is specified in `docs/PROTOCOL.md`.

use crate::address::Address;
use crate::frame::{Frame, FrameDecoder, FrameError};
use crate::messages::{ErrorReply, Message, Report, Rfc};
use crate::signature::{SigError, SigningKey};
use crate::DecodeError;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Clients accept large router frames (credit batches list every provider).
pub const CLIENT_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Why a client call failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket failed (a read time-out is `WouldBlock` or `TimedOut` here).
    Io(std::io::Error),
    /// The router sent a header this client cannot frame.
    Frame(FrameError),
    /// The router sent a body this client cannot decode.
    Decode(DecodeError),
    /// The router answered the login with something else.
    Login(String),
    /// A ticket or batch not signed by the router this client logged in to.
    RouterSignature(SigError),
    /// The router closed the connection.
    Closed,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "io: {e}"),
            ClientError::Frame(e) => write!(f, "frame: {e}"),
            ClientError::Decode(e) => write!(f, "decode: {e}"),
            ClientError::Login(e) => write!(f, "login refused: {e}"),
            ClientError::RouterSignature(e) => write!(f, "router signature: {e}"),
            ClientError::Closed => write!(f, "connection closed by the router"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// A blocking, logged-in connection to a router: signs with its key, numbers its
/// messages with clock-based nonces (R-ID-4) and checks the router's signatures on
/// what it receives (`recv_verified`).
pub struct Client {
    stream: TcpStream,
    decoder: FrameDecoder,
    key: SigningKey,
    network_id: u32,
    router: Address,
    nonce: u64,
    read_buffer: Vec<u8>,
}

impl Client {
    /// Connects and logs in with `key` (answers the router's signed challenge).
    pub fn connect(addr: impl ToSocketAddrs, key: SigningKey) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut client = Client::from_stream(stream, key);
        client.login()?;
        Ok(client)
    }

    /// Wraps a connected stream without logging in (for hostile-input tests).
    pub fn from_stream(stream: TcpStream, key: SigningKey) -> Client {
        // Nonces start from the clock so a restarted client never replays.
        let nonce = crate::nonce::clock_micros();
        Client {
            stream,
            decoder: FrameDecoder::new(CLIENT_FRAME_BYTES_MAX),
            key,
            network_id: 0,
            router: Address::default(),
            nonce,
            read_buffer: vec![0u8; 64 * 1024],
        }
    }

    /// Connects and logs in, retrying a refused or failed connection with bounded
    /// exponential backoff and jitter until `policy.deadline` (SPEC §9; see
    /// [`crate::connect_retry`]). Every client the project ships connects this way.
    ///
    /// Errors: `ConnectError::Refused` for a refused login, `ConnectError::GaveUp`
    /// (naming the attempts and the last failure) at the deadline.
    pub fn connect_retrying(
        addr: std::net::SocketAddr,
        key: SigningKey,
        policy: &crate::connect_retry::ConnectRetry,
    ) -> Result<Client, crate::connect_retry::ConnectError> {
        crate::connect_retry::connect_retrying(addr, key, policy)
    }

    /// Connects to whichever of `endpoints` (the members of a replicated router group,
    /// R-HA-3) leads, following `not_leader` replies, with the same retries as
    /// [`Client::connect_retrying`]; see [`crate::connect_retry::connect_following`].
    pub fn connect_following(
        endpoints: &[std::net::SocketAddr],
        key: SigningKey,
        policy: &crate::connect_retry::ConnectRetry,
    ) -> Result<Client, crate::connect_retry::ConnectError> {
        crate::connect_retry::connect_following(endpoints, key, policy)
    }

    /// The endpoint this client is connected to (None once the socket failed).
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// The login handshake (`crate::login`, shared with the nodes' async link): reads
    /// the router's challenge, answers it and waits for `LoginOk`; learns the network
    /// id and router address the challenge names (R-ID-4).
    pub fn login(&mut self) -> Result<(), ClientError> {
        let greeting = self.recv()?;
        self.answer_greeting(&greeting)
    }

    /// The second half of [`Client::login`]: answers a received challenge and waits
    /// for `LoginOk`.
    pub fn answer_challenge(
        &mut self,
        challenge: &crate::messages::LoginChallenge,
    ) -> Result<(), ClientError> {
        self.answer_greeting(&Message::LoginChallenge(challenge.clone()))
    }

    fn answer_greeting(&mut self, greeting: &Message) -> Result<(), ClientError> {
        let reply = self.answer_and_read_reply(greeting)?;
        crate::login::check_reply(&reply, self.key.address())
            .map_err(|e| ClientError::Login(e.to_string()))
    }

    /// Answers the challenge `greeting` and returns the router's reply unchecked (so
    /// `connect_retry` can tell a `not_leader` from a refused login, R-HA-3).
    pub(crate) fn answer_and_read_reply(
        &mut self,
        greeting: &Message,
    ) -> Result<Message, ClientError> {
        let (answer, router) =
            crate::login::answer_challenge(greeting, &self.key, Default::default())
                .map_err(|e| ClientError::Login(e.to_string()))?;
        self.network_id = router.network_id;
        self.router = router.router;
        self.send_raw(&answer)?;
        self.recv()
    }

    /// The address this client signs as.
    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// The key this client signs with.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The network id the router announced at login (0 before).
    pub fn network_id(&self) -> u32 {
        self.network_id
    }

    /// The router's address announced at login (zero before).
    pub fn router(&self) -> Address {
        self.router
    }

    /// The underlying socket (for time-outs and shutdowns).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// A fresh nonce, strictly above every one this client issued and at least the
    /// clock in µs (R-ID-4, R-ID-8: `max(clock µs, last + 1)`).
    pub fn next_nonce(&mut self) -> u64 {
        self.nonce = crate::nonce::next_after(self.nonce);
        self.nonce
    }

    /// R-ID-8: if `reply` is a `replay` refusal (another program signed with this key),
    /// moves the counter above the nonce the router last accepted and returns true:
    /// the refused message may be sent again with `next_nonce()`; false otherwise.
    pub fn resync_nonce(&mut self, reply: &ErrorReply) -> bool {
        match crate::nonce::replay_last_accepted(reply) {
            Some(last) => {
                self.nonce = self.nonce.max(last);
                true
            }
            None => false,
        }
    }

    /// Sends `build(nonce)` signed with a fresh nonce and reads until `pick` accepts
    /// an answer to that nonce; an `ErrorReply` for it is returned as `Err(reply)`
    /// inside `Ok`, except a `replay` refusal, after which the counter is
    /// resynchronised and the message is sent once more with a new nonce (R-ID-8).
    /// Messages that are neither are passed to `other` (tickets, batches, probes).
    pub fn request<T>(
        &mut self,
        build: impl Fn(u64) -> Message,
        mut pick: impl FnMut(u64, &Message) -> Option<T>,
        mut other: impl FnMut(Message),
    ) -> Result<Result<T, ErrorReply>, ClientError> {
        let mut resent = false;
        loop {
            let nonce = self.next_nonce();
            self.send_signed(build(nonce))?;
            let refusal = loop {
                let message = self.recv_verified()?;
                if let Message::ErrorReply(reply) = &message {
                    if reply.ref_nonce == nonce {
                        break reply.clone();
                    }
                }
                match pick(nonce, &message) {
                    Some(value) => return Ok(Ok(value)),
                    None => other(message),
                }
            };
            if resent || !self.resync_nonce(&refusal) {
                return Ok(Err(refusal));
            }
            resent = true;
        }
    }

    /// Bounds each blocking read; None waits for ever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream.set_read_timeout(timeout)?;
        Ok(())
    }

    /// Signs with this client's key and sends.
    pub fn send_signed(&mut self, mut message: Message) -> Result<(), ClientError> {
        let frame = message.sign(&self.key, self.network_id);
        self.send_raw(&frame)
    }

    /// Sends a message as it is (its signature, if any, already set).
    pub fn send(&mut self, message: &Message) -> Result<(), ClientError> {
        self.send_raw(&message.to_frame())
    }

    /// Sends bytes as they are (whole frames, or anything a hostile-input test needs).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads the next whole frame and decodes it.
    pub fn recv(&mut self) -> Result<Message, ClientError> {
        let frame = self.recv_frame()?;
        Message::decode(frame.header.msg_type, &frame.body).map_err(ClientError::Decode)
    }

    /// Reads the next whole frame without decoding its body (to verify router
    /// signatures over the exact bytes, or to measure without decoding).
    pub fn recv_frame(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(frame) = self.decoder.next_frame().map_err(ClientError::Frame)? {
                return Ok(frame);
            }
            // A signal delivered to this thread interrupts a read with a time-out
            // (SO_RCVTIMEO) even under SA_RESTART: nothing was read, read again.
            let n = match self.stream.read(&mut self.read_buffer) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.decoder.extend(&self.read_buffer[..n]);
        }
    }

    /// Reads the next frame and decodes it; a router-signed message (session
    /// ticket, credit batch) is checked against the router address learnt at login
    /// (R-ID-5) before it is returned.
    pub fn recv_verified(&mut self) -> Result<Message, ClientError> {
        let frame = self.recv_frame()?;
        let message =
            Message::decode(frame.header.msg_type, &frame.body).map_err(ClientError::Decode)?;
        if matches!(
            message,
            Message::SessionTicket(_) | Message::CreditBatch(_) | Message::Settlement(_)
        ) {
            message
                .verify_router(self.network_id, &frame.body, &self.router)
                .map_err(ClientError::RouterSignature)?;
        }
        Ok(message)
    }
}

/// Signs `message` with `key` for `network_id` and appends its frame to `out`: a pure
/// function, so a load generator can pre-sign its RFCs and reports into one buffer
/// before its measured window and then only write bytes.
pub fn presign_into(key: &SigningKey, network_id: u32, mut message: Message, out: &mut Vec<u8>) {
    message.sign_frame_into(key, network_id, 0, out);
}

/// One signed frame in its own buffer.
pub fn presign(key: &SigningKey, network_id: u32, message: Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    presign_into(key, network_id, message, &mut out);
    out
}

/// A signed RFC frame (R-RFC-1) from `key`'s address.
pub fn presign_rfc(
    key: &SigningKey,
    network_id: u32,
    nonce: u64,
    model_id: u32,
    tokens_max: u64,
    expires_at_ms: u64,
) -> Vec<u8> {
    let rfc = Rfc {
        from: key.address(),
        nonce,
        model_id,
        tokens_max,
        expires_at_ms,
        signature: Default::default(),
    };
    presign(key, network_id, rfc.into())
}

/// A signed report frame (R-REPORT-1..3) from `key`'s address: `report`'s `from`
/// and `signature` are overwritten. Build the report with [`Report::new`].
pub fn presign_report(key: &SigningKey, network_id: u32, report: Report) -> Vec<u8> {
    let report = Report {
        from: key.address(),
        ..report
    };
    presign(key, network_id, report.into())
}
