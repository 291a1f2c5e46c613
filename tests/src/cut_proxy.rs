//! R-HA-3 test helpers: a loopback TCP proxy in front of a router that loses the
//! router's answer on its first connections (what a client sees when its router dies,
//! or a leader loses office, after taking a message and before answering it), and a
//! fake group member that greets every connection with `not_leader`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use yellowstone_wire::frame::FrameDecoder;
use yellowstone_wire::{not_leader_reply, Message};

/// A proxy to a router (see the module docs); its threads live as long as the test.
pub struct CutProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cuts: Arc<AtomicU32>,
}

impl CutProxy {
    /// Proxies connections on a fresh loopback port to `upstream`. The first
    /// `cut_connections` connections forward the router's first `pass_frames` frames
    /// (the login: challenge and `LoginOk` are 2), then are closed on both sides at the
    /// router's next frame, which is dropped; later connections are forwarded whole.
    pub fn start(upstream: SocketAddr, pass_frames: usize, cut_connections: u32) -> CutProxy {
        CutProxy::start_with(upstream, Cut::AfterFrames(pass_frames), cut_connections)
    }

    /// Like [`CutProxy::start`], cutting the first `cut_connections` connections at the
    /// router's first frame of type `msg_type` (dropped; everything before it passes).
    pub fn start_cutting_at(upstream: SocketAddr, msg_type: u16, cut_connections: u32) -> CutProxy {
        CutProxy::start_with(upstream, Cut::AtType(msg_type), cut_connections)
    }

    fn start_with(upstream: SocketAddr, rule: Cut, cut_connections: u32) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cuts = Arc::new(AtomicU32::new(0));
        let done = cuts.clone();
        std::thread::spawn(move || {
            let mut accepted = 0u32;
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(router) = TcpStream::connect(upstream) else {
                    continue;
                };
                accepted += 1;
                let cut = accepted <= cut_connections;
                pipe(client, router, cut.then_some(rule), done.clone());
            }
        });
        CutProxy { addr, cuts }
    }

    /// Connections cut so far (each lost one router frame).
    pub fn cuts(&self) -> u32 {
        self.cuts.load(Ordering::Acquire)
    }
}

/// Where a cut connection is cut.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// After this many router frames.
    AfterFrames(usize),
    /// At the router's first frame of this type.
    AtType(u16),
}

fn pipe(client: TcpStream, router: TcpStream, cut_after: Option<Cut>, cuts: Arc<AtomicU32>) {
    let (Ok(mut client_read), Ok(mut router_write)) = (client.try_clone(), router.try_clone())
    else {
        return;
    };
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match client_read.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if router_write.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = router_write.shutdown(Shutdown::Write);
    });
    let (mut router_read, mut client_write) = (router, client);
    std::thread::spawn(move || {
        let mut decoder = FrameDecoder::new(64 << 20);
        let mut buffer = [0u8; 16 * 1024];
        let mut forwarded = 0usize;
        loop {
            let n = match router_read.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Some(rule) = cut_after else {
                if client_write.write_all(&buffer[..n]).is_err() {
                    break;
                }
                continue;
            };
            decoder.extend(&buffer[..n]);
            while let Ok(Some(frame)) = decoder.next_frame() {
                let cut_here = match rule {
                    Cut::AfterFrames(pass) => forwarded == pass,
                    Cut::AtType(msg_type) => frame.header.msg_type == msg_type,
                };
                if cut_here {
                    cuts.fetch_add(1, Ordering::AcqRel);
                    let _ = client_write.shutdown(Shutdown::Both);
                    let _ = router_read.shutdown(Shutdown::Both);
                    return;
                }
                let mut bytes = frame.header.encode().to_vec();
                bytes.extend_from_slice(&frame.body);
                if client_write.write_all(&bytes).is_err() {
                    return;
                }
                forwarded += 1;
            }
        }
        let _ = client_write.shutdown(Shutdown::Write);
    });
}

/// A fake member of a router group on a fresh loopback port that answers every
/// connection with `not_leader` naming member `leader_id` at `leader` (None: no leader
/// known), then closes it, as a follower does (docs/PROTOCOL.md §3).
pub fn fake_follower(leader_id: u64, leader: Option<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the follower");
    let addr = listener.local_addr().expect("follower address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let reply = not_leader_reply(leader_id, leader, 50);
            let _ = stream.write_all(&Message::from(reply).to_frame());
        }
    });
    addr
}

/// A transparent loopback proxy to a router whose [`BlipProxy::blip`] closes every
/// connection open at that moment (both sides), as a leader's death or loss of office
/// does to its clients; new connections are proxied as before. With a single router
/// behind it, what the clients see is a failover to a leader that holds the same
/// committed journal (R-HA-3).
pub struct BlipProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    open: Arc<std::sync::Mutex<Vec<TcpStream>>>,
    blips: Arc<AtomicU32>,
}

impl BlipProxy {
    /// Proxies connections on a fresh loopback port to `upstream`.
    pub fn start(upstream: SocketAddr) -> BlipProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let open: Arc<std::sync::Mutex<Vec<TcpStream>>> = Arc::default();
        let registry = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(router) = TcpStream::connect(upstream) else {
                    continue;
                };
                if let (Ok(a), Ok(b), Ok(mut list)) =
                    (client.try_clone(), router.try_clone(), registry.lock())
                {
                    list.push(a);
                    list.push(b);
                }
                pipe(client, router, None, Arc::new(AtomicU32::new(0)));
            }
        });
        BlipProxy {
            addr,
            open,
            blips: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Closes every connection open now; returns how many client connections that was.
    pub fn blip(&self) -> usize {
        let streams: Vec<TcpStream> = match self.open.lock() {
            Ok(mut list) => list.drain(..).collect(),
            Err(_) => return 0,
        };
        for stream in &streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.blips.fetch_add(1, Ordering::AcqRel);
        streams.len() / 2
    }
}
