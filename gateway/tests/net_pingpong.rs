//! A quick ping-pong throughput figure per backend (not a benchmark suite; ignored by
//! default). Run:
//! `cargo test --release -p yellowstone-gateway --test net_pingpong -- --ignored --nocapture`
//! Each client connection keeps `WINDOW` 32-byte pings in flight for `DURATION`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use yellowstone_gateway::config::{Backend, NetworkConfig, ThreadsConfig};
use yellowstone_gateway::metrics::Registry;
use yellowstone_gateway::net::{start_gateways, ConnId, FrameHandler, Refusal, Replies};
use yellowstone_wire::frame::{encode_frame, Frame, FLAG_RESPONSE, HEADER_LEN};

const CONNECTIONS: usize = 4;
const WINDOW: usize = 32;
const BODY_BYTES: usize = 32;
const DURATION: Duration = Duration::from_secs(3);

struct Echo;

impl FrameHandler for Echo {
    fn on_frame(
        &mut self,
        _conn: ConnId,
        frame: Frame,
        _now: std::time::Instant,
        replies: &mut Replies<'_>,
    ) {
        replies
            .reply_with(|out| encode_frame(frame.header.msg_type, FLAG_RESPONSE, &frame.body, out));
    }

    fn error_frame(&mut self, _refusal: &Refusal, out: &mut Vec<u8>) {
        encode_frame(0xffff, FLAG_RESPONSE, b"error", out);
    }
}

fn client(addr: std::net::SocketAddr, deadline: Instant) -> u64 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut ping = Vec::new();
    encode_frame(1, 0, &[0u8; BODY_BYTES], &mut ping);
    let frame_len = HEADER_LEN + BODY_BYTES;
    stream.write_all(&ping.repeat(WINDOW)).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut leftover = 0usize;
    let mut done = 0u64;
    while Instant::now() < deadline {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0);
        leftover += n;
        let frames = leftover / frame_len;
        leftover %= frame_len;
        done += frames as u64;
        if frames > 0 {
            stream.write_all(&ping.repeat(frames)).unwrap();
        }
    }
    done
}

fn measure(backend: Backend) {
    let network = NetworkConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        backend,
        ..NetworkConfig::default()
    };
    let threads = ThreadsConfig {
        gateway_threads: 1,
        pin: false,
        ..ThreadsConfig::default()
    };
    let handle = start_gateways(&network, &threads, &Registry::new(), |_| Echo).unwrap();
    let addr = handle.local_addr();
    let deadline = Instant::now() + DURATION;
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| std::thread::spawn(move || client(addr, deadline)))
        .collect();
    let total: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    println!(
        "{backend:?} ({:?}): {} ping-pongs in {:?} = {:.0}/s ({CONNECTIONS} connections x {WINDOW} in flight, {BODY_BYTES} B bodies, 1 gateway thread)",
        handle.backends(),
        total,
        DURATION,
        total as f64 / DURATION.as_secs_f64()
    );
    handle.shutdown().unwrap();
}

#[test]
#[ignore]
fn pingpong_throughput_both_backends() {
    measure(Backend::Uring);
    measure(Backend::Mio);
}
