//! Member RPC over TCP (REPL_DESIGN.md "Network"): openraft's vote, append and
//! whole-snapshot requests between members, and the operator's admin requests
//! (`cluster init|add|remove|status`), on one listener (`cluster.raft_listen`).
//!
//! Frame (both directions, one request then its answer, in turn, per connection):
//! ```text
//! offset 0   u32 LE   payload length (≤ cluster.rpc_frame_bytes_max)
//! offset 4   [u8;32]  keyed BLAKE3 of (direction byte, payload), key = cluster.key
//! offset 36  payload  bincode (serde) Request / Response
//! ```
//! A frame over the bound, with a MAC that does not check out, or that does not
//! decode is refused: counted ([`NetStats`]), logged, and the connection closed;
//! nothing panics on input. A request's answer is MAC'd with another direction byte,
//! so an answer cannot be replayed as a request.
//!
//! The client side ([`MemberClient`]) keeps one connection per peer and reconnects
//! on the next request after any failure; every request times out
//! (`cluster.rpc_timeout_ms`, snapshots `cluster.snapshot_timeout_ms`).

use super::types::{
    decode, encode, MarketSnapshot, MemberId, MemberNode, Raft, SnapshotMeta, TypeConfig, Vote,
};
use super::ReplicationError;
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RPCTypes, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The cluster secret's file in the data directory.
pub const KEY_FILE: &str = "cluster.key";
/// Bytes before a frame's payload.
pub const FRAME_HEADER_BYTES: usize = 36;
const REQUEST: u8 = 1;
const ANSWER: u8 = 2;

/// The cluster secret: 32 bytes, the same on every member and learner.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// An IO error as a key file's reason: the common cases in plain words.
fn io_what(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::AlreadyExists => "already exists (never overwritten)".to_string(),
        _ => error.to_string(),
    }
}

impl ClusterKey {
    /// A key from its bytes (tests, the simulation).
    pub fn from_bytes(bytes: [u8; 32]) -> ClusterKey {
        ClusterKey(bytes)
    }

    /// Reads `<data_dir>/cluster.key`.
    /// Errors: [`ReplicationError::Key`]: missing, unreadable, not 32 bytes, or
    /// readable by group or others (it must be 0600).
    pub fn load(data_dir: &Path) -> Result<ClusterKey, ReplicationError> {
        ClusterKey::load_file(&data_dir.join(KEY_FILE))
    }

    /// Reads a key file of any name (the `cluster` commands' `--key`: a copy of
    /// the group's cluster.key need not be named so).
    /// Errors: [`ReplicationError::Key`] as [`ClusterKey::load`]; a missing file
    /// says "no such file".
    pub fn load_file(path: &Path) -> Result<ClusterKey, ReplicationError> {
        let path = path.to_path_buf();
        let key_error = |what: String| ReplicationError::Key {
            path: path.clone(),
            what,
        };
        let meta = std::fs::metadata(&path).map_err(|e| key_error(io_what(&e)))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(key_error(format!(
                    "mode {mode:o} lets others read it; it must be 600 (chmod 600)"
                )));
            }
        }
        let bytes = std::fs::read(&path).map_err(|e| key_error(e.to_string()))?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| key_error(format!("{} bytes, must be exactly 32", bytes.len())))?;
        Ok(ClusterKey(key))
    }

    /// Writes a new random key to `<data_dir>/cluster.key`, mode 0600 (`cluster
    /// init`); refuses to overwrite one.
    /// Errors: [`ReplicationError::Key`] (exists, or cannot be written).
    pub fn create(data_dir: &Path) -> Result<(ClusterKey, PathBuf), ReplicationError> {
        let path = data_dir.join(KEY_FILE);
        let key = ClusterKey::create_file(&path)?;
        Ok((key, path))
    }

    /// Writes a new random key to `path` (any name: `cluster keygen --out`), mode
    /// 0600; refuses to overwrite.
    /// Errors: [`ReplicationError::Key`] (exists, or cannot be written).
    pub fn create_file(path: &Path) -> Result<ClusterKey, ReplicationError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.to_path_buf();
        let key: [u8; 32] = rand::random();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| ReplicationError::Key {
                path: path.clone(),
                what: io_what(&e),
            })?;
        file.write_all(&key)
            .and_then(|_| file.sync_all())
            .map_err(|e| ReplicationError::Key {
                path: path.clone(),
                what: e.to_string(),
            })?;
        Ok(ClusterKey(key))
    }

    fn mac(&self, direction: u8, payload: &[u8]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(&[direction]);
        hasher.update(payload);
        *hasher.finalize().as_bytes()
    }
}

/// Refusals and traffic of the member RPC listener and clients.
#[derive(Default, Debug)]
pub struct NetStats {
    /// Frames whose MAC did not check out (wrong key, or tampering).
    pub bad_macs: AtomicU64,
    /// Frames announcing more than `cluster.rpc_frame_bytes_max`.
    pub oversized: AtomicU64,
    /// Frames that did not decode.
    pub undecodable: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Client-side failures (connect, timeout, IO).
    pub client_failures: AtomicU64,
}

/// Bounds of the member RPC.
#[derive(Clone, Debug)]
pub struct NetLimits {
    /// `cluster.rpc_frame_bytes_max`.
    pub frame_bytes_max: u64,
    /// `cluster.rpc_timeout_ms`.
    pub rpc_timeout: Duration,
    /// `cluster.snapshot_timeout_ms`.
    pub snapshot_timeout: Duration,
}

/// An operator's request (`yellowstone-router cluster ...`), answered by any member
/// (changes only by the leader).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Makes the first group: these members as voters (`cluster init`).
    Init {
        /// Every voter.
        members: BTreeMap<MemberId, MemberNode>,
    },
    /// Adds a learner, waiting until it caught up (`cluster add --learner`).
    AddLearner {
        /// Its id.
        id: MemberId,
        /// Its addresses.
        node: MemberNode,
    },
    /// Adds a voter: as a learner first, then promoted (`cluster add`).
    AddVoter {
        /// Its id.
        id: MemberId,
        /// Its addresses.
        node: MemberNode,
    },
    /// Removes a member, voter or learner (`cluster remove`).
    Remove {
        /// Its id.
        id: MemberId,
    },
    /// The member's view of the group (`cluster status`).
    Status,
    /// The (block, state hash) pairs this member's state machine recorded, blocks ≥
    /// `from_block`, oldest first, at most `max` (a learner compares them, R-HA-4).
    StateHashes {
        /// The first block wanted.
        from_block: u64,
        /// At most this many pairs (capped at `cluster.state_hashes_kept`).
        max: usize,
    },
}

/// The answer to an [`AdminRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminReply {
    /// Done.
    Done,
    /// The member's status.
    Status(super::member::ClusterStatus),
    /// (block, state hash) pairs, oldest first.
    StateHashes(Vec<(u64, [u8; 32])>),
    /// Refused: this member does not lead; ask the leader named, if any.
    NotLeader {
        /// The leader's id and member RPC address.
        leader: Option<(MemberId, String)>,
    },
    /// Refused or failed (openraft's reason).
    Failed {
        /// Why.
        reason: String,
    },
}

/// Requests between members and from operators.
#[derive(Serialize, Deserialize)]
pub enum Request {
    /// Openraft AppendEntries.
    Append(AppendEntriesRequest<TypeConfig>),
    /// Openraft RequestVote.
    Vote(VoteRequest<MemberId>),
    /// A whole snapshot.
    Snapshot {
        /// The sender's vote.
        vote: Vote,
        /// The snapshot's metadata.
        meta: SnapshotMeta,
        /// Its data.
        data: MarketSnapshot,
    },
    /// An operator's request.
    Admin(AdminRequest),
}

/// Answers to [`Request`]s, by kind.
#[derive(Serialize, Deserialize)]
pub enum Response {
    /// To `Append`.
    Append(Result<AppendEntriesResponse<MemberId>, RaftError<MemberId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<MemberId>, RaftError<MemberId>>),
    /// To `Snapshot`.
    Snapshot(Result<SnapshotResponse<MemberId>, Fatal<MemberId>>),
    /// To `Admin`.
    Admin(AdminReply),
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed or closed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The length announced is over the bound.
    #[error("frame of {bytes} bytes over cluster.rpc_frame_bytes_max = {max}")]
    Oversized {
        /// Announced length.
        bytes: u64,
        /// The bound.
        max: u64,
    },
    /// The MAC does not check out.
    #[error("bad frame MAC (wrong cluster.key, or tampering)")]
    BadMac,
    /// The payload does not decode.
    #[error("frame {0}")]
    Undecodable(#[from] super::types::DecodeError),
    /// Timed out.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Writes one frame of `payload`.
pub async fn write_frame(
    stream: &mut TcpStream,
    key: &ClusterKey,
    direction: u8,
    payload: &[u8],
    max: u64,
) -> Result<(), FrameError> {
    if payload.len() as u64 > max || payload.len() > u32::MAX as usize {
        return Err(FrameError::Oversized {
            bytes: payload.len() as u64,
            max,
        });
    }
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&key.mac(direction, payload));
    stream.write_all(&header).await?;
    stream.write_all(payload).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one frame; checks its bound and MAC before returning the payload.
pub async fn read_frame(
    stream: &mut TcpStream,
    key: &ClusterKey,
    direction: u8,
    max: u64,
    stats: &NetStats,
) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header).await?;
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&header[..4]);
    let len = u32::from_le_bytes(len_bytes) as u64;
    if len > max {
        stats.oversized.fetch_add(1, Ordering::Relaxed);
        return Err(FrameError::Oversized { bytes: len, max });
    }
    // Grown as bytes arrive, not allocated from the (unauthenticated) length: a
    // peer without the key cannot make a member allocate the bound by announcing it.
    let mut payload = Vec::with_capacity((len as usize).min(1 << 20));
    (&mut *stream).take(len).read_to_end(&mut payload).await?;
    if payload.len() as u64 != len {
        return Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame of {len} bytes cut at {}", payload.len()),
        )));
    }
    let expected = key.mac(direction, &payload);
    // Constant time: the comparison does not tell an attacker how much matched.
    if !constant_time_eq(&expected, &header[4..]) {
        stats.bad_macs.fetch_add(1, Ordering::Relaxed);
        return Err(FrameError::BadMac);
    }
    Ok(payload)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8]) -> bool {
    if b.len() != 32 {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

/// What answers admin requests on a member (implemented by the member).
pub trait AdminHandler: Send + Sync + 'static {
    /// Answers `request`.
    fn admin(
        &self,
        request: AdminRequest,
    ) -> std::pin::Pin<Box<dyn Future<Output = AdminReply> + Send + '_>>;
}

/// Serves member RPC on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    raft: Raft,
    admin: Arc<dyn AdminHandler>,
    key: ClusterKey,
    limits: NetLimits,
    stats: Arc<NetStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "member RPC accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (raft, admin, key, limits, stats) = (
            raft.clone(),
            admin.clone(),
            key.clone(),
            limits.clone(),
            stats.clone(),
        );
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = serve_connection(stream, raft, admin, key, limits, stats.clone()) => {
                    if let Err(e) = result {
                        match e {
                            FrameError::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {}
                            _ => tracing::warn!(%peer, error = %e, "member RPC connection closed"),
                        }
                    }
                }
                _ = stop.changed() => {}
            }
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    raft: Raft,
    admin: Arc<dyn AdminHandler>,
    key: ClusterKey,
    limits: NetLimits,
    stats: Arc<NetStats>,
) -> Result<(), FrameError> {
    loop {
        let payload =
            read_frame(&mut stream, &key, REQUEST, limits.frame_bytes_max, &stats).await?;
        let request: Request = decode(&payload).inspect_err(|_| {
            stats.undecodable.fetch_add(1, Ordering::Relaxed);
        })?;
        drop(payload);
        let response = match request {
            Request::Append(rpc) => Response::Append(raft.append_entries(rpc).await),
            Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
            Request::Snapshot { vote, meta, data } => Response::Snapshot(
                raft.install_full_snapshot(
                    vote,
                    Snapshot {
                        meta,
                        snapshot: Box::new(data),
                    },
                )
                .await,
            ),
            Request::Admin(request) => Response::Admin(admin.admin(request).await),
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let bytes = encode(&response).map_err(|e| std::io::Error::other(e.to_string()))?;
        write_frame(&mut stream, &key, ANSWER, &bytes, limits.frame_bytes_max).await?;
    }
}

/// One request/answer exchange over `stream`, within `timeout`.
async fn exchange(
    stream: &mut TcpStream,
    key: &ClusterKey,
    request: &[u8],
    max: u64,
    timeout: Duration,
    stats: &NetStats,
) -> Result<Response, FrameError> {
    let work = async {
        write_frame(stream, key, REQUEST, request, max).await?;
        let payload = read_frame(stream, key, ANSWER, max, stats).await?;
        let response: Response = decode(&payload).inspect_err(|_| {
            stats.undecodable.fetch_add(1, Ordering::Relaxed);
        })?;
        Ok(response)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FrameError::Timeout(timeout))?
}

/// Connects to `addr` within `timeout`.
async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, FrameError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| FrameError::Timeout(timeout))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Sends one admin request to the member at `addr` (the CLI).
/// Errors: [`ReplicationError::Unreachable`] (no connection),
/// [`ReplicationError::ClosedUnanswered`] (accepted, then closed without an answer:
/// most likely another cluster key), [`ReplicationError::Remote`] (timed out, or a
/// bad answer), each naming the address.
pub async fn admin_request(
    addr: &str,
    key: &ClusterKey,
    request: AdminRequest,
    limits: &NetLimits,
) -> Result<AdminReply, ReplicationError> {
    let remote = |what: String| ReplicationError::Remote {
        addr: addr.to_string(),
        what,
    };
    let stats = NetStats::default();
    let mut stream =
        connect(addr, limits.rpc_timeout)
            .await
            .map_err(|e| ReplicationError::Unreachable {
                addr: addr.to_string(),
                what: e.to_string(),
            })?;
    let bytes = encode(&Request::Admin(request)).map_err(|e| remote(e.to_string()))?;
    // Membership changes wait for a learner to catch up: the snapshot bound.
    match exchange(
        &mut stream,
        key,
        &bytes,
        limits.frame_bytes_max,
        limits.snapshot_timeout,
        &stats,
    )
    .await
    {
        Ok(Response::Admin(reply)) => Ok(reply),
        Ok(_) => Err(remote("answered another kind of request".into())),
        // Accepted, then closed with no answer: a member drops a connection whose
        // frame fails its MAC check without a word (an answer would need the key).
        Err(FrameError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            Err(ReplicationError::ClosedUnanswered {
                addr: addr.to_string(),
            })
        }
        Err(e) => Err(remote(e.to_string())),
    }
}

/// [`admin_request`] from a plain thread (the CLI): its own small runtime, every
/// step bounded by `timeout` (connect, and the whole exchange).
/// Errors: as [`admin_request`], and [`ReplicationError::Io`] (no runtime).
pub fn admin_call(
    addr: std::net::SocketAddr,
    key: &ClusterKey,
    request: AdminRequest,
    timeout: Duration,
    frame_bytes_max: u64,
) -> Result<AdminReply, ReplicationError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ReplicationError::Io {
            what: "starting a runtime for an admin request".into(),
            source,
        })?;
    let limits = NetLimits {
        frame_bytes_max,
        rpc_timeout: timeout,
        snapshot_timeout: timeout,
    };
    runtime.block_on(admin_request(&addr.to_string(), key, request, &limits))
}

/// Makes [`MemberClient`]s (openraft's `RaftNetworkFactory`).
#[derive(Clone)]
pub struct TcpNetwork {
    /// This member's id (for timeouts' reports).
    pub id: MemberId,
    /// The cluster key.
    pub key: ClusterKey,
    /// Bounds.
    pub limits: NetLimits,
    /// Counters.
    pub stats: Arc<NetStats>,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = MemberClient;

    async fn new_client(&mut self, target: MemberId, node: &MemberNode) -> MemberClient {
        MemberClient {
            id: self.id,
            target,
            addr: node.raft_addr.clone(),
            key: self.key.clone(),
            limits: self.limits.clone(),
            stats: self.stats.clone(),
            stream: None,
        }
    }
}

/// A connection to one peer; see the module comment.
pub struct MemberClient {
    id: MemberId,
    target: MemberId,
    addr: String,
    key: ClusterKey,
    limits: NetLimits,
    stats: Arc<NetStats>,
    stream: Option<TcpStream>,
}

enum CallError {
    Connect(FrameError),
    Timeout(Duration),
    Other(FrameError),
}

impl MemberClient {
    async fn call(&mut self, request: &[u8], timeout: Duration) -> Result<Response, CallError> {
        // The connection is taken out for the exchange and put back only after a whole
        // answer: if openraft drops this future mid-exchange (its own timeout), the
        // half-used socket is dropped with it, and no later request can read an earlier
        // request's answer as its own.
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => connect(&self.addr, timeout.min(self.limits.rpc_timeout))
                .await
                .map_err(|e| {
                    self.stats.client_failures.fetch_add(1, Ordering::Relaxed);
                    CallError::Connect(e)
                })?,
        };
        match exchange(
            &mut stream,
            &self.key,
            request,
            self.limits.frame_bytes_max,
            timeout,
            &self.stats,
        )
        .await
        {
            Ok(response) => {
                self.stream = Some(stream);
                Ok(response)
            }
            Err(e) => {
                // Whatever the socket holds now is out of step: dropped, start over.
                drop(stream);
                self.stats.client_failures.fetch_add(1, Ordering::Relaxed);
                Err(match e {
                    FrameError::Timeout(t) => CallError::Timeout(t),
                    other => CallError::Other(other),
                })
            }
        }
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        e: CallError,
        action: RPCTypes,
    ) -> RPCError<MemberId, MemberNode, E> {
        match e {
            CallError::Connect(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout,
            }),
            CallError::Other(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn timeout(&self, option: &RPCOption) -> Duration {
        self.limits
            .rpc_timeout
            .min(option.hard_ttl().max(Duration::from_millis(1)))
    }
}

impl RaftNetwork<TypeConfig> for MemberClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, RPCError<MemberId, MemberNode, RaftError<MemberId>>>
    {
        let entries = rpc.entries.len() as u64;
        let request = Request::Append(rpc);
        let bytes = encode(&request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if bytes.len() as u64 > self.limits.frame_bytes_max && entries > 1 {
            // Openraft retries with fewer entries.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            ));
        }
        match self.call(&bytes, self.timeout(&option)).await {
            Ok(Response::Append(Ok(answer))) => Ok(answer),
            Ok(Response::Append(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other("answer of another kind"),
            ))),
            Err(e) => Err(self.rpc_error(e, RPCTypes::AppendEntries)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        option: RPCOption,
    ) -> Result<VoteResponse<MemberId>, RPCError<MemberId, MemberNode, RaftError<MemberId>>> {
        let bytes =
            encode(&Request::Vote(rpc)).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        match self.call(&bytes, self.timeout(&option)).await {
            Ok(Response::Vote(Ok(answer))) => Ok(answer),
            Ok(Response::Vote(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other("answer of another kind"),
            ))),
            Err(e) => Err(self.rpc_error(e, RPCTypes::Vote)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<MemberId>, StreamingError<TypeConfig, Fatal<MemberId>>> {
        let request = Request::Snapshot {
            vote,
            meta: snapshot.meta,
            data: *snapshot.snapshot,
        };
        let bytes = encode(&request).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let timeout = self.limits.snapshot_timeout;
        let result = tokio::select! {
            result = self.call(&bytes, timeout) => result,
            closed = cancel => {
                self.stream = None;
                return Err(StreamingError::Closed(closed));
            }
        };
        match result {
            Ok(Response::Snapshot(Ok(answer))) => Ok(answer),
            Ok(Response::Snapshot(Err(e))) => Err(StreamingError::RemoteError(RemoteError::new(
                self.target,
                e,
            ))),
            Ok(_) => Err(StreamingError::Network(NetworkError::new(
                &std::io::Error::other("answer of another kind"),
            ))),
            Err(CallError::Connect(e)) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
            Err(CallError::Timeout(timeout)) => Err(StreamingError::Timeout(Timeout {
                action: RPCTypes::InstallSnapshot,
                id: self.id,
                target: self.target,
                timeout,
            })),
            Err(CallError::Other(e)) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A peer that is down is retried every heartbeat-ish, not every 500 ms: a
        // restarted member rejoins quickly.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1 << 16;

    /// A connected pair on loopback: (client side, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[test]
    fn bad_frames_are_refused_counted_and_never_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let key = ClusterKey::from_bytes([1; 32]);
            let stats = NetStats::default();

            // A good frame reads back.
            let (mut client, mut server) = pair().await;
            write_frame(&mut client, &key, REQUEST, b"hello", MAX)
                .await
                .unwrap();
            let got = read_frame(&mut server, &key, REQUEST, MAX, &stats)
                .await
                .unwrap();
            assert_eq!(got, b"hello");

            // The same frame as an answer (another direction byte) is refused.
            write_frame(&mut client, &key, ANSWER, b"hello", MAX)
                .await
                .unwrap();
            let err = read_frame(&mut server, &key, REQUEST, MAX, &stats).await;
            assert!(matches!(err, Err(FrameError::BadMac)), "{err:?}");

            // Another key.
            let (mut client, mut server) = pair().await;
            let other = ClusterKey::from_bytes([2; 32]);
            write_frame(&mut client, &other, REQUEST, b"hello", MAX)
                .await
                .unwrap();
            let err = read_frame(&mut server, &key, REQUEST, MAX, &stats).await;
            assert!(matches!(err, Err(FrameError::BadMac)), "{err:?}");
            assert_eq!(stats.bad_macs.load(Ordering::Relaxed), 2);

            // A length over the bound: refused before reading (or allocating) it.
            let (mut client, mut server) = pair().await;
            let mut header = [0u8; FRAME_HEADER_BYTES];
            header[..4].copy_from_slice(&(MAX as u32 + 1).to_le_bytes());
            client.write_all(&header).await.unwrap();
            let err = read_frame(&mut server, &key, REQUEST, MAX, &stats).await;
            assert!(
                matches!(err, Err(FrameError::Oversized { bytes, max: MAX }) if bytes == MAX + 1),
                "{err:?}"
            );
            assert_eq!(stats.oversized.load(Ordering::Relaxed), 1);
            // Writing one is refused too.
            let big = vec![0u8; MAX as usize + 1];
            assert!(matches!(
                write_frame(&mut client, &key, REQUEST, &big, MAX).await,
                Err(FrameError::Oversized { .. })
            ));

            // A MAC'd payload that is not a request: a typed decode error.
            let (mut client, mut server) = pair().await;
            write_frame(&mut client, &key, REQUEST, &[0xFF; 40], MAX)
                .await
                .unwrap();
            let payload = read_frame(&mut server, &key, REQUEST, MAX, &stats)
                .await
                .unwrap();
            assert!(decode::<Request>(&payload).is_err());

            // A length within the bound, then a few bytes and the peer goes away.
            let (mut client, mut server) = pair().await;
            let mut header = [0u8; FRAME_HEADER_BYTES];
            header[..4].copy_from_slice(&(MAX as u32).to_le_bytes());
            client.write_all(&header).await.unwrap();
            client.write_all(&[9; 10]).await.unwrap();
            drop(client);
            let err = read_frame(&mut server, &key, REQUEST, MAX, &stats).await;
            assert!(
                matches!(&err, Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                "{err:?}"
            );

            // Half a header, then the peer goes away: an IO error.
            let (mut client, mut server) = pair().await;
            client.write_all(&[1, 2, 3]).await.unwrap();
            drop(client);
            let err = read_frame(&mut server, &key, REQUEST, MAX, &stats).await;
            assert!(matches!(err, Err(FrameError::Io(_))), "{err:?}");
        });
    }

    /// A request abandoned mid-exchange (openraft drops the future at its own
    /// timeout) must not leave its answer for the next request to read.
    #[test]
    fn an_abandoned_request_never_answers_the_next_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let key = ClusterKey::from_bytes([3; 32]);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server_key = key.clone();
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let key = server_key.clone();
                    tokio::spawn(async move {
                        let stats = NetStats::default();
                        while let Ok(payload) =
                            read_frame(&mut stream, &key, REQUEST, MAX, &stats).await
                        {
                            let Ok(Request::Admin(AdminRequest::StateHashes {
                                from_block, ..
                            })) = decode::<Request>(&payload)
                            else {
                                return;
                            };
                            if from_block == 1 {
                                tokio::time::sleep(Duration::from_millis(150)).await;
                            }
                            let answer = Response::Admin(AdminReply::Failed {
                                reason: format!("answer to {from_block}"),
                            });
                            let bytes = encode(&answer).unwrap();
                            if write_frame(&mut stream, &key, ANSWER, &bytes, MAX)
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                }
            });
            let mut client = MemberClient {
                id: 1,
                target: 2,
                addr: addr.to_string(),
                key,
                limits: NetLimits {
                    frame_bytes_max: MAX,
                    rpc_timeout: Duration::from_secs(5),
                    snapshot_timeout: Duration::from_secs(5),
                },
                stats: Arc::new(NetStats::default()),
                stream: None,
            };
            let request = |n: u64| {
                encode(&Request::Admin(AdminRequest::StateHashes {
                    from_block: n,
                    max: 1,
                }))
                .unwrap()
            };
            let first = request(1);
            let abandoned = tokio::time::timeout(
                Duration::from_millis(30),
                client.call(&first, Duration::from_secs(5)),
            )
            .await;
            assert!(abandoned.is_err(), "the first request is abandoned");
            let second = request(2);
            match client.call(&second, Duration::from_secs(5)).await {
                Ok(Response::Admin(AdminReply::Failed { reason })) => {
                    assert_eq!(reason, "answer to 2")
                }
                _ => panic!("no answer to the second request"),
            }
        });
    }

    #[test]
    fn the_key_file_must_be_32_bytes_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            ClusterKey::load(dir.path()),
            Err(ReplicationError::Key { .. })
        ));
        let (key, path) = ClusterKey::create(dir.path()).unwrap();
        assert_eq!(ClusterKey::load(dir.path()).unwrap().0, key.0);
        assert!(ClusterKey::create(dir.path()).is_err(), "never overwritten");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ClusterKey::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("644"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [0u8; 31]).unwrap();
        let err = ClusterKey::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("31 bytes"), "{err}");
    }
}
