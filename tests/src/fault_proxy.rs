//! A fault-injecting TCP proxy for the replication tests (issue 25, R-HA-1/R-HA-2):
//! it listens on loopback and forwards every connection to one target, and a test
//! switches what it does while members talk through it:
//!
//! - [`Mode::Pass`]: forward both ways;
//! - [`Mode::Refuse`]: close each new connection at once (a member that is down);
//! - [`Mode::Blackhole`]: accept and read, forward nothing, keep the sockets open (a
//!   partition: the peer sees no error, only silence, until its own timeouts fire);
//! - [`Mode::Delay`]: forward each chunk that long after it arrived (order kept);
//! - [`FaultProxy::cut`]: shut every open connection down now.
//!
//! Raft members dial each other at the addresses in the group's membership, the same
//! for every dialer, so one proxy stands in front of each member's raft port. To cut a
//! member off in both directions a test also needs to silence what that member sends
//! through the *other* proxies: [`FaultProxy::set_origin_mode`] applies a mode to the
//! connections a given process opened. The proxy learns a connection's process from
//! `/proc` (the socket's inode in `/proc/net/tcp`, then the process whose fd table
//! holds it), among the pids the test registered with [`FaultProxy::set_origins`].
//!
//! Bytes dropped by a blackhole leave a stream torn, so a connection that dropped any
//! is shut down when traffic flows again ([`Mode::Pass`] or [`Mode::Delay`] set after
//! a blackhole): the peers see a closed connection and dial again, as they would after
//! a real partition outlasting their timeouts.
//!
//! Threads only (no async runtime): an acceptor, and per connection one set-up
//! thread and one pump each way. Everything stops when the proxy drops.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a proxy does with a connection's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Close new connections at once (existing ones are left alone: [`FaultProxy::cut`]).
    Refuse,
    /// Accept, read and discard; forward nothing and never close (a partition).
    Blackhole,
    /// Forward each chunk this long after it was read (a slow link; order kept).
    Delay(Duration),
}

/// Errors starting a proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The loopback listener could not be opened.
    #[error("fault proxy: cannot listen on 127.0.0.1:0: {0}")]
    Listen(std::io::Error),
}

/// One open connection's sockets, so that `cut` can shut them down.
struct Conn {
    client: TcpStream,
    upstream: Option<TcpStream>,
    /// The process that opened it (among the registered origins), 0 while unknown;
    /// shared with the pumps, which read it per chunk.
    origin: Arc<AtomicU32>,
    /// Set once a blackhole discarded bytes of it: its stream is torn.
    torn: Arc<AtomicBool>,
}

impl Conn {
    fn shutdown(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(upstream) = &self.upstream {
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

struct Shared {
    /// The proxy's own address (the remote end of every accepted connection's
    /// socket in the dialer's /proc/net/tcp).
    listen: SocketAddr,
    mode: Mutex<Mode>,
    /// Modes that override `mode` for connections opened by a given pid.
    origin_modes: Mutex<HashMap<u32, Mode>>,
    /// The pids whose connections are told apart (see the module docs).
    origins: Mutex<Vec<u32>>,
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
    stop: AtomicBool,
    accepted: AtomicU64,
    refused: AtomicU64,
    forwarded_bytes: AtomicU64,
    discarded_bytes: AtomicU64,
}

impl Shared {
    /// The mode for a connection from `peer` whose origin is `origin` (0: not known
    /// yet). While some origin has a mode of its own, an unattributed connection is
    /// looked up in /proc here, at its next chunk: one accepted while a partition was
    /// being set up, or registered after the last [`FaultProxy::set_origin_mode`],
    /// must not slip through it.
    fn mode_for(&self, origin: &AtomicU32, peer: Option<SocketAddr>) -> Mode {
        let mut pid = origin.load(Ordering::Relaxed);
        if pid == 0 {
            if let Some(peer) = peer {
                if !self.origin_modes.lock().expect("proxy lock").is_empty() {
                    let origins = self.origins.lock().expect("proxy lock").clone();
                    if let Some(found) = owner_pid(peer, self.listen, &origins) {
                        origin.store(found, Ordering::Relaxed);
                        pid = found;
                    }
                }
            }
        }
        if pid != 0 {
            if let Some(mode) = self.origin_modes.lock().expect("proxy lock").get(&pid) {
                return *mode;
            }
        }
        *self.mode.lock().expect("proxy lock")
    }

    /// Shuts down the torn connections whose mode now forwards again.
    fn close_torn_if_flowing(&self) {
        let conns = self.conns.lock().expect("proxy lock");
        for conn in conns.values() {
            let peer = conn.client.peer_addr().ok();
            let flowing = !matches!(
                self.mode_for(&conn.origin, peer),
                Mode::Blackhole | Mode::Refuse
            );
            if flowing && conn.torn.load(Ordering::Relaxed) {
                conn.shutdown();
            }
        }
    }
}

/// A running proxy: `127.0.0.1:<port>` → `target`. Stops (and shuts every
/// connection down) when dropped.
pub struct FaultProxy {
    listen: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a fresh loopback port and forwards to `target`, in [`Mode::Pass`].
    /// The target need not be up yet: each connection dials it when accepted (and is
    /// closed when that fails, as the target itself would refuse).
    pub fn start(target: SocketAddr) -> Result<FaultProxy, ProxyError> {
        FaultProxy::start_on("127.0.0.1:0".parse().expect("literal"), target)
    }

    /// Like [`FaultProxy::start`], listening on `listen` (e.g. a port reserved earlier).
    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> Result<FaultProxy, ProxyError> {
        let listener = TcpListener::bind(listen).map_err(ProxyError::Listen)?;
        let listen = listener.local_addr().map_err(ProxyError::Listen)?;
        let shared = Arc::new(Shared {
            listen,
            mode: Mutex::new(Mode::Pass),
            origin_modes: Mutex::new(HashMap::new()),
            origins: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            forwarded_bytes: AtomicU64::new(0),
            discarded_bytes: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fault-proxy-{}", listen.port()))
                .spawn(move || accept_loop(listener, listen, target, shared))
                .map_err(ProxyError::Listen)?
        };
        Ok(FaultProxy {
            listen,
            target,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address to dial instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Where connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Sets the mode for every connection (new and open) without an origin override.
    /// Going from a blackhole back to forwarding shuts the torn connections down.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().expect("proxy lock") = mode;
        self.shared.close_torn_if_flowing();
    }

    /// The pids whose connections this proxy tells apart (the group's members).
    /// Open connections not yet attributed are looked up again among `pids` (a
    /// member may dial before the test learnt its pid).
    pub fn set_origins(&self, pids: &[u32]) {
        *self.shared.origins.lock().expect("proxy lock") = pids.to_vec();
        self.attribute_open();
    }

    /// Looks the open connections not yet attributed up among the registered pids.
    fn attribute_open(&self) {
        let pids = self.shared.origins.lock().expect("proxy lock").clone();
        if pids.is_empty() {
            return;
        }
        // Collect under the lock, walk /proc without it: a walk takes milliseconds
        // per connection, and new connections need the lock to register.
        let unattributed: Vec<(SocketAddr, Arc<AtomicU32>)> = self
            .shared
            .conns
            .lock()
            .expect("proxy lock")
            .values()
            .filter(|conn| conn.origin.load(Ordering::Relaxed) == 0)
            .filter_map(|conn| Some((conn.client.peer_addr().ok()?, conn.origin.clone())))
            .collect();
        for (peer, origin) in unattributed {
            if let Some(pid) = owner_pid(peer, self.listen, &pids) {
                origin.store(pid, Ordering::Relaxed);
            }
        }
    }

    /// Sets the mode for the connections process `pid` opened (it must be among
    /// [`FaultProxy::set_origins`]); `None` returns them to the proxy's mode.
    pub fn set_origin_mode(&self, pid: u32, mode: Option<Mode>) {
        // The mode first (from now on an unattributed connection is looked up at its
        // next chunk), then the walk of the open ones: nothing of `pid`'s passes
        // while the walk runs.
        {
            let mut modes = self.shared.origin_modes.lock().expect("proxy lock");
            match mode {
                Some(mode) => modes.insert(pid, mode),
                None => modes.remove(&pid),
            };
        }
        self.attribute_open();
        self.shared.close_torn_if_flowing();
    }

    /// Back to [`Mode::Pass`] for everyone (origin overrides cleared); torn
    /// connections are shut down.
    pub fn heal(&self) {
        self.shared.origin_modes.lock().expect("proxy lock").clear();
        self.set_mode(Mode::Pass);
    }

    /// Shuts every open connection down now (both sides see it closed).
    pub fn cut(&self) {
        let conns = self.shared.conns.lock().expect("proxy lock");
        for conn in conns.values() {
            conn.shutdown();
        }
    }

    /// Connections open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().expect("proxy lock").len()
    }

    /// Of the open connections, those opened by process `pid` (as far as `/proc` told).
    pub fn open_connections_from(&self, pid: u32) -> usize {
        self.shared
            .conns
            .lock()
            .expect("proxy lock")
            .values()
            .filter(|c| c.origin.load(Ordering::Relaxed) == pid)
            .count()
    }

    /// Counters: (accepted connections, refused connections, bytes forwarded, bytes
    /// discarded by a blackhole).
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        let s = &self.shared;
        (
            s.accepted.load(Ordering::Relaxed),
            s.refused.load(Ordering::Relaxed),
            s.forwarded_bytes.load(Ordering::Relaxed),
            s.discarded_bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.cut();
        // Wake the acceptor blocked in accept().
        let _ = TcpStream::connect_timeout(&self.listen, Duration::from_millis(200));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, listen: SocketAddr, target: SocketAddr, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(client) = stream else { continue };
        // Each connection is set up on a thread of its own: a slow dial or /proc
        // lookup never delays the next accept (members reconnect after every timed
        // out RPC, so accepts come in bursts).
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("fp-open".into())
            .spawn(move || open_connection(client, listen, target, shared));
    }
}

/// Sets one accepted connection up: its origin (looked up only while some origin
/// has a mode of its own: the /proc walk costs milliseconds), its mode, the dial to
/// the target, the registry entry and the pumps.
fn open_connection(client: TcpStream, listen: SocketAddr, target: SocketAddr, shared: Arc<Shared>) {
    let overrides = !shared.origin_modes.lock().expect("proxy lock").is_empty();
    let origin = if overrides {
        client.peer_addr().ok().and_then(|peer| {
            let origins = shared.origins.lock().expect("proxy lock").clone();
            owner_pid(peer, listen, &origins)
        })
    } else {
        None
    };
    let peer = client.peer_addr().ok();
    let origin = Arc::new(AtomicU32::new(origin.unwrap_or(0)));
    let mode = shared.mode_for(&origin, peer);
    if mode == Mode::Refuse {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    shared.accepted.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    // A blackholed connection does not reach the target at all (a partition
    // drops the handshake's data too); one that dials and fails is closed, as
    // the target would refuse.
    let upstream = if mode == Mode::Blackhole {
        None
    } else {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(upstream) => {
                let _ = upstream.set_nodelay(true);
                Some(upstream)
            }
            Err(_) => {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
        }
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let torn = Arc::new(AtomicBool::new(upstream.is_none()));
    // Handles: the registry's (for cut), and each pump's reader.
    let Ok(client_for_cut) = client.try_clone() else {
        return;
    };
    let Ok(client_read) = client.try_clone() else {
        return;
    };
    let (upstream_for_cut, upstream_read) = match &upstream {
        Some(u) => match (u.try_clone(), u.try_clone()) {
            (Ok(a), Ok(b)) => (Some(a), Some(b)),
            _ => return,
        },
        None => (None, None),
    };
    shared.conns.lock().expect("proxy lock").insert(
        id,
        Conn {
            client: client_for_cut,
            upstream: upstream_for_cut,
            origin: origin.clone(),
            torn: torn.clone(),
        },
    );
    let alive = Arc::new(AtomicU64::new(2));
    // client -> upstream
    spawn_pump(
        client_read,
        upstream,
        peer,
        origin.clone(),
        torn.clone(),
        shared.clone(),
        id,
        alive.clone(),
    );
    // upstream -> client (a blackholed connection has no upstream: nothing comes back)
    match upstream_read {
        Some(upstream_read) => spawn_pump(
            upstream_read,
            Some(client),
            peer,
            origin,
            torn,
            shared.clone(),
            id,
            alive,
        ),
        None => {
            alive.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One thread moving one direction of a connection: it decides per chunk, by the
/// mode at the time it was read, whether to forward it now, after a delay (sleeping
/// first: order is kept, and a delayed chunk also holds back the ones behind it), or
/// to discard it (a blackhole; the stream is torn from then on).
#[allow(clippy::too_many_arguments)]
fn spawn_pump(
    mut from: TcpStream,
    mut to: Option<TcpStream>,
    // The dialer's address (the client side of the connection), for origin look-ups.
    peer: Option<SocketAddr>,
    origin: Arc<AtomicU32>,
    torn: Arc<AtomicBool>,
    shared: Arc<Shared>,
    id: u64,
    alive: Arc<AtomicU64>,
) {
    std::thread::Builder::new()
        .name("fp-pump".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let delay = match shared.mode_for(&origin, peer) {
                    Mode::Blackhole => None,
                    Mode::Delay(d) => Some(d),
                    // Refuse concerns new connections; an open one keeps flowing.
                    Mode::Pass | Mode::Refuse => Some(Duration::ZERO),
                };
                // A torn stream forwards nothing more: its peer would misread it.
                match (delay, to.as_mut()) {
                    (Some(delay), Some(out)) if !torn.load(Ordering::Relaxed) => {
                        if !delay.is_zero() {
                            std::thread::sleep(delay);
                        }
                        if out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        shared
                            .forwarded_bytes
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    _ => {
                        torn.store(true, Ordering::Relaxed);
                        shared
                            .discarded_bytes
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            if let Some(out) = &to {
                let _ = out.shutdown(Shutdown::Write);
            }
            if alive.fetch_sub(1, Ordering::Relaxed) == 1 {
                if let Some(conn) = shared.conns.lock().expect("proxy lock").remove(&id) {
                    conn.shutdown();
                }
            }
        })
        .expect("spawn a proxy pump thread");
}

/// The process among `candidates` that owns the TCP socket whose local address is
/// `peer` and whose remote address is `proxy` (both loopback, IPv4), from
/// `/proc/net/tcp` and the candidates' fd tables. None when not found (the process
/// is not a candidate, already closed it, or /proc is unreadable).
pub fn owner_pid(peer: SocketAddr, proxy: SocketAddr, candidates: &[u32]) -> Option<u32> {
    let inode = socket_inode(peer, proxy)?;
    let wanted = format!("socket:[{inode}]");
    candidates.iter().copied().find(|pid| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == wanted.as_str())
        })
    })
}

/// `/proc/net/tcp` prints an IPv4 address as the 32-bit value in host byte order, in
/// hex, then `:` and the port in hex (e.g. 127.0.0.1:80 → `0100007F:0050` on
/// little-endian machines).
fn proc_net_addr(addr: SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let local = proc_net_addr(local)?;
    let remote = proc_net_addr(remote)?;
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        (fields.len() > 9 && fields[1] == local && fields[2] == remote)
            .then(|| fields[9].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server on loopback: writes back what it reads, per connection.
    fn echo_server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn dial(proxy: &FaultProxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        stream
    }

    /// Sends `bytes` and reads them back: Ok(echo) or the read error (a time-out is
    /// `WouldBlock`/`TimedOut`, a closed stream `UnexpectedEof`).
    fn round_trip(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(bytes)?;
        let mut back = vec![0u8; bytes.len()];
        stream.read_exact(&mut back)?;
        Ok(back)
    }

    fn timed_out(e: &std::io::Error) -> bool {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn pass_forwards_both_ways() {
        let (target, _) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        let mut stream = dial(&proxy);
        assert_eq!(round_trip(&mut stream, b"hello").unwrap(), b"hello");
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut writer = stream.try_clone().unwrap();
        let sent = big.clone();
        let sender = std::thread::spawn(move || writer.write_all(&sent).unwrap());
        let mut back = vec![0u8; big.len()];
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.read_exact(&mut back).unwrap();
        sender.join().unwrap();
        assert_eq!(back, big, "order and bytes kept");
        let (accepted, refused, _, discarded) = proxy.counters();
        assert_eq!((accepted, refused, discarded), (1, 0, 0));
        // The writer counts after its write, which may be just after our read.
        let both_ways = 2 * (big.len() as u64 + 5);
        wait_until("every byte is counted", || proxy.counters().2 >= both_ways);
    }

    #[test]
    fn refuse_closes_new_connections_only() {
        let (target, target_accepted) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        let mut open = dial(&proxy);
        assert_eq!(round_trip(&mut open, b"a").unwrap(), b"a");
        proxy.set_mode(Mode::Refuse);
        let mut refused = dial(&proxy);
        let error = round_trip(&mut refused, b"b").unwrap_err();
        assert!(!timed_out(&error), "closed, not silent: {error:?}");
        assert_eq!(
            round_trip(&mut open, b"c").unwrap(),
            b"c",
            "open connection unaffected"
        );
        assert_eq!(target_accepted.load(Ordering::Relaxed), 1);
        assert_eq!(proxy.counters().1, 1);
        proxy.set_mode(Mode::Pass);
        let mut again = dial(&proxy);
        assert_eq!(round_trip(&mut again, b"d").unwrap(), b"d");
    }

    #[test]
    fn blackhole_keeps_sockets_open_and_silent_then_heal_cuts_torn_streams() {
        let (target, target_accepted) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        let mut open = dial(&proxy);
        assert_eq!(round_trip(&mut open, b"x").unwrap(), b"x");
        proxy.set_mode(Mode::Blackhole);
        // Silence, not an error, on the open connection and on a new one.
        let error = round_trip(&mut open, b"lost").unwrap_err();
        assert!(timed_out(&error), "silent: {error:?}");
        let mut new = dial(&proxy);
        let error = round_trip(&mut new, b"lost too").unwrap_err();
        assert!(timed_out(&error), "silent: {error:?}");
        assert_eq!(
            target_accepted.load(Ordering::Relaxed),
            1,
            "a blackholed connection never reaches the target"
        );
        assert!(proxy.counters().3 >= 12, "bytes discarded are counted");
        assert_eq!(proxy.open_connections(), 2, "sockets stay open");
        // Healing closes both torn streams (their bytes were lost) ...
        proxy.heal();
        for stream in [&mut open, &mut new] {
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let mut buf = [0u8; 16];
            let n = stream.read(&mut buf).unwrap_or(0);
            assert_eq!(n, 0, "a torn stream is closed after the heal");
        }
        // ... and a fresh connection flows again.
        let mut fresh = dial(&proxy);
        assert_eq!(round_trip(&mut fresh, b"back").unwrap(), b"back");
    }

    #[test]
    fn delay_holds_each_chunk_back_and_keeps_order() {
        let (target, _) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        let mut stream = dial(&proxy);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let start = Instant::now();
        assert_eq!(round_trip(&mut stream, b"quick").unwrap(), b"quick");
        let undelayed = start.elapsed();
        proxy.set_mode(Mode::Delay(Duration::from_millis(150)));
        let start = Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").unwrap(), b"slow");
        let delayed = start.elapsed();
        // Delayed on the way there and back.
        assert!(
            delayed >= Duration::from_millis(300),
            "{delayed:?} (undelayed {undelayed:?})"
        );
        stream.write_all(b"1").unwrap();
        stream.write_all(b"2").unwrap();
        stream.write_all(b"3").unwrap();
        let mut back = [0u8; 3];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"123");
    }

    #[test]
    fn cut_closes_every_open_connection() {
        let (target, _) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        let mut a = dial(&proxy);
        let mut b = dial(&proxy);
        assert_eq!(round_trip(&mut a, b"a").unwrap(), b"a");
        assert_eq!(round_trip(&mut b, b"b").unwrap(), b"b");
        proxy.cut();
        for stream in [&mut a, &mut b] {
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let mut buf = [0u8; 4];
            assert_eq!(stream.read(&mut buf).unwrap_or(0), 0, "closed by the cut");
        }
        wait_until("the cut connections are forgotten", || {
            proxy.open_connections() == 0
        });
        let mut c = dial(&proxy);
        assert_eq!(
            round_trip(&mut c, b"c").unwrap(),
            b"c",
            "new connections still pass"
        );
    }

    #[test]
    fn a_target_that_is_down_closes_the_connection() {
        // Reserve a port, then free it: nothing listens there.
        let target = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = FaultProxy::start(target).unwrap();
        let mut stream = dial(&proxy);
        let error = round_trip(&mut stream, b"?").unwrap_err();
        assert!(!timed_out(&error), "closed, not silent: {error:?}");
    }

    #[test]
    fn origin_modes_apply_to_one_process_connections() {
        let (target, _) = echo_server();
        let proxy = FaultProxy::start(target).unwrap();
        let me = std::process::id();
        // The owner of a connection this process opened is this process.
        let unregistered = dial(&proxy);
        let local = unregistered.local_addr().unwrap();
        assert_eq!(owner_pid(local, proxy.addr(), &[me]), Some(me));
        assert_eq!(owner_pid(local, proxy.addr(), &[1]), None, "not pid 1's");
        assert_eq!(proxy.open_connections_from(me), 0, "no origins registered");
        // Registering looks the open connections up again; new ones are looked up
        // when accepted.
        proxy.set_origins(&[me]);
        assert_eq!(
            proxy.open_connections_from(me),
            1,
            "the open one attributed"
        );
        let mut mine = dial(&proxy);
        assert_eq!(round_trip(&mut mine, b"before").unwrap(), b"before");
        // This process's connections follow its own mode.
        proxy.set_origin_mode(me, Some(Mode::Blackhole));
        let mut silenced = dial(&proxy);
        let error = round_trip(&mut silenced, b"nothing").unwrap_err();
        assert!(timed_out(&error), "silent: {error:?}");
        assert_eq!(
            proxy.open_connections_from(me),
            3,
            "unregistered, mine and silenced"
        );
        assert_eq!(proxy.open_connections(), 3);
        // The override also silences the connection opened before it.
        let error = round_trip(&mut mine, b"nothing").unwrap_err();
        assert!(timed_out(&error), "silent: {error:?}");
        // Another origin's mode leaves this process alone.
        proxy.set_origin_mode(me, None);
        proxy.set_origin_mode(me + 1_000_000, Some(Mode::Blackhole));
        let mut other = dial(&proxy);
        assert_eq!(round_trip(&mut other, b"ok").unwrap(), b"ok");
    }

    #[test]
    fn proc_net_addresses_are_printed_as_the_kernel_does() {
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let expected = if cfg!(target_endian = "little") {
            "0100007F:0050"
        } else {
            "7F000001:0050"
        };
        assert_eq!(proc_net_addr(addr).as_deref(), Some(expected));
        assert_eq!(proc_net_addr("[::1]:80".parse().unwrap()), None);
    }
}
