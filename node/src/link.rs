//! The nodes' connection to the router: tokio TCP, the `wire` crate's frames,
//! messages and signatures (the same code as the blocking `wire::client`), login by
//! signed challenge, and router signatures checked on tickets and batches (R-ID-5).
//!
//! `Link::connect` returns the link (to send) and a receiver of what the router
//! sends; the receiver ends when the connection does. Reconnecting is the owner's
//! loop (`Backoff`); nonces live in `Nonces`, shared across reconnects, so a new
//! connection never replays an old nonce (R-ID-4).

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use yellowstone_wire::client::CLIENT_FRAME_BYTES_MAX;
use yellowstone_wire::frame::FrameDecoder;
use yellowstone_wire::{Address, LoginAnswer, Message, SigningKey};

/// Frames waiting to be written to the router, at most.
pub const OUTBOUND_FRAMES_MAX: usize = 4096;
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
}

/// Strictly increasing nonces for one address, across connections (R-ID-4): they
/// start from the clock in microseconds so a restarted node does not replay either.
#[derive(Debug)]
pub struct Nonces(AtomicU64);

impl Default for Nonces {
    fn default() -> Self {
        Nonces(AtomicU64::new(crate::unix_ms().saturating_mul(1000)))
    }
}

impl Nonces {
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub router_addr: String,
    pub network_id: u32,
    /// Pins the router's address; `None` trusts the one the router names at login.
    pub router_address: Option<Address>,
    pub login_timeout: Duration,
    /// A `Ping` goes to the router when the node has written nothing for this long,
    /// so an idle connection is not closed by the router's
    /// `network.conn_idle_timeout_ms` (300 s) and reconnected every few minutes
    /// (the nodes' `keepalive_ms`; keep it well below the router's timeout).
    pub keepalive: Duration,
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
}

impl Link {
    /// Connects, checks the network id and router address, logs in, and starts the
    /// reader and writer tasks.
    pub async fn connect(
        config: &LinkConfig,
        key: SigningKey,
    ) -> Result<(Link, mpsc::Receiver<Incoming>), LinkError> {
        let addr = config.router_addr.clone();
        let io = |source| LinkError::Io {
            addr: addr.clone(),
            source,
        };
        let stream = tokio::time::timeout(config.login_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| LinkError::Timeout {
                addr: addr.clone(),
                timeout_ms: config.login_timeout.as_millis() as u64,
            })?
            .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let (mut reader, mut writer) = stream.into_split();
        let mut decoder = FrameDecoder::new(CLIENT_FRAME_BYTES_MAX);
        let mut buffer = vec![0u8; 64 * 1024];
        let login = async {
            let challenge = match read_one(&mut reader, &mut decoder, &mut buffer, &addr).await? {
                Incoming {
                    message: Message::LoginChallenge(challenge),
                    ..
                } => challenge,
                other => {
                    return Err(LinkError::Login {
                        addr: addr.clone(),
                        reason: format!("expected a challenge, got {}", other.message.name()),
                    })
                }
            };
            if challenge.network_id != config.network_id {
                return Err(LinkError::NetworkId {
                    addr: addr.clone(),
                    router: challenge.network_id,
                    configured: config.network_id,
                });
            }
            if let Some(pinned) = config.router_address {
                if pinned != challenge.router {
                    return Err(LinkError::RouterAddress {
                        addr: addr.clone(),
                        router: challenge.router,
                        configured: pinned,
                    });
                }
            }
            let mut answer: Message = LoginAnswer {
                address: key.address(),
                challenge: challenge.challenge,
                ..LoginAnswer::default()
            }
            .into();
            let frame = answer.sign(&key, config.network_id);
            writer.write_all(&frame).await.map_err(io)?;
            match read_one(&mut reader, &mut decoder, &mut buffer, &addr).await? {
                Incoming {
                    message: Message::LoginOk(_),
                    ..
                } => Ok(challenge.router),
                Incoming {
                    message: Message::ErrorReply(e),
                    ..
                } => Err(LinkError::Login {
                    addr: addr.clone(),
                    reason: e.reason,
                }),
                other => Err(LinkError::Login {
                    addr: addr.clone(),
                    reason: format!("unexpected {}", other.message.name()),
                }),
            }
        };
        let router = tokio::time::timeout(config.login_timeout, login)
            .await
            .map_err(|_| LinkError::Timeout {
                addr: addr.clone(),
                timeout_ms: config.login_timeout.as_millis() as u64,
            })??;
        let (outbound, mut outbound_rx) = mpsc::channel::<Vec<u8>>(OUTBOUND_FRAMES_MAX);
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_MESSAGES_MAX);
        let keepalive = config.keepalive;
        tokio::spawn(async move {
            loop {
                let frame = match tokio::time::timeout(keepalive, outbound_rx.recv()).await {
                    Ok(Some(frame)) => frame,
                    // Every sender is gone: the link was dropped, close.
                    Ok(None) => break,
                    // Nothing written for `keepalive`: a Ping keeps the connection.
                    Err(_) => Message::from(yellowstone_wire::Ping { payload: 0 }).to_frame(),
                };
                if writer.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let network_id = config.network_id;
        tokio::spawn(async move {
            loop {
                let incoming = match read_one(&mut reader, &mut decoder, &mut buffer, &addr).await {
                    Ok(incoming) => incoming,
                    Err(error) => {
                        tracing::warn!(%error, "router connection ended");
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

    /// Signs `message` (if it is a signed type) and queues it for the router.
    pub async fn send(&self, mut message: Message) -> Result<(), LinkError> {
        let frame = if message.is_signed() {
            message.sign(&self.key, self.network_id)
        } else {
            message.to_frame()
        };
        self.outbound
            .send(frame)
            .await
            .map_err(|_| LinkError::Closed {
                addr: String::new(),
            })
    }

    /// Whether the writer is gone (the connection closed).
    pub fn is_closed(&self) -> bool {
        self.outbound.is_closed()
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

    #[test]
    fn r_id_4_nonces_strictly_increase() {
        let nonces = Nonces::default();
        let a = nonces.next();
        let b = nonces.next();
        assert!(b > a && a > 1_000_000_000_000_000);
    }
}
