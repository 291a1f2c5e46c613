//! The network layer over real loopback sockets, for both backends: pipelining and
//! split frames, hostile input, leaks, many idle connections, slow readers,
//! connections_max and Outbox delivery from another thread. Every test is bounded in
//! time (client timeouts, `wait_until`) and stops its gateway threads.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use yellowstone_gateway::config::{Backend, NetworkConfig, ThreadsConfig};
use yellowstone_gateway::metrics::Registry;
use yellowstone_gateway::net::{
    start_gateways, BackendInUse, ConnId, FrameHandler, GatewayHandle, OutboxError, Refusal,
    Replies,
};
use yellowstone_wire::frame::{encode_frame, Frame, FrameHeader, FLAG_RESPONSE, HEADER_LEN};

const PING: u16 = 1;
const DEFER: u16 = 2;
const FLOOD: u16 = 3;
const ERROR_BAD_FRAME: u16 = 0xffff;
const ERROR_FULL: u16 = 0xfffe;

/// Echoes PING, hands DEFER to the test thread, answers FLOOD with 4 pushes of 15 KB.
struct TestHandler {
    deferred: crossbeam_channel::Sender<(ConnId, Vec<u8>)>,
    opened: crossbeam_channel::Sender<ConnId>,
}

impl FrameHandler for TestHandler {
    fn on_open(&mut self, conn: ConnId, _peer: Option<std::net::SocketAddr>) {
        let _ = self.opened.send(conn);
    }

    fn on_frame(
        &mut self,
        conn: ConnId,
        frame: Frame,
        _now: std::time::Instant,
        replies: &mut Replies<'_>,
    ) {
        match frame.header.msg_type {
            PING => {
                replies.reply_with(|out| encode_frame(PING, FLAG_RESPONSE, &frame.body, out));
            }
            DEFER => {
                let _ = self.deferred.send((conn, frame.body.to_vec()));
            }
            FLOOD => {
                replies.answer();
                for _ in 0..4 {
                    let mut out = Vec::new();
                    encode_frame(FLOOD, FLAG_RESPONSE, &[7u8; 15_000], &mut out);
                    if !replies.push(&out) {
                        break;
                    }
                }
            }
            _ => replies.close(),
        }
    }

    fn error_frame(&mut self, refusal: &Refusal, out: &mut Vec<u8>) {
        match refusal {
            Refusal::Frame(_) => encode_frame(ERROR_BAD_FRAME, FLAG_RESPONSE, b"bad frame", out),
            Refusal::ConnectionsMax { .. } => encode_frame(ERROR_FULL, FLAG_RESPONSE, b"full", out),
            Refusal::LoginTimeout { .. } | Refusal::Evicted { .. } => {
                encode_frame(ERROR_FULL, FLAG_RESPONSE, b"closed for room", out)
            }
        }
    }
}

struct Harness {
    handle: Option<GatewayHandle>,
    registry: Registry,
    deferred: crossbeam_channel::Receiver<(ConnId, Vec<u8>)>,
    opened: crossbeam_channel::Receiver<ConnId>,
}

impl Harness {
    fn start(backend: Backend, tweak: impl FnOnce(&mut NetworkConfig)) -> Harness {
        let mut network = NetworkConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            backend,
            conn_idle_timeout_ms: 60_000,
            ..NetworkConfig::default()
        };
        tweak(&mut network);
        let threads = ThreadsConfig {
            gateway_threads: 2,
            pin: false,
            ..ThreadsConfig::default()
        };
        let registry = Registry::new();
        let (deferred_tx, deferred) = crossbeam_channel::unbounded();
        let (opened_tx, opened) = crossbeam_channel::unbounded();
        let handle = start_gateways(&network, &threads, &registry, move |_ctx| TestHandler {
            deferred: deferred_tx.clone(),
            opened: opened_tx.clone(),
        })
        .expect("gateways start");
        let expected = match backend {
            Backend::Uring => BackendInUse::Uring,
            Backend::Mio => BackendInUse::Mio,
        };
        assert!(
            handle.backends().iter().all(|b| *b == expected),
            "{:?}",
            handle.backends()
        );
        Harness {
            handle: Some(handle),
            registry,
            deferred,
            opened,
        }
    }

    fn handle(&self) -> &GatewayHandle {
        self.handle.as_ref().expect("running")
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.handle().local_addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    fn wait_connections(&self, expected: usize) {
        wait_until(
            || self.handle().connections_open() == expected,
            || {
                format!(
                    "connections_open {} != {expected}",
                    self.handle().connections_open()
                )
            },
        );
    }

    fn stop(mut self) {
        let handle = self.handle.take().expect("running");
        handle.shutdown().expect("clean shutdown");
    }
}

fn wait_until(mut done: impl FnMut() -> bool, describe: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {}", describe());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn frame(msg_type: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(msg_type, 0, body, &mut out);
    out
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<(FrameHeader, Vec<u8>)> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header)?;
    let header = FrameHeader::decode(&header, 1 << 20)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body)?;
    Ok((header, body))
}

/// The peer closed: EOF or a reset, before the timeout.
fn assert_closed_by_peer(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("unexpected bytes after the error frame"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected a close, got {e}"),
    }
}

fn ping_roundtrip(stream: &mut TcpStream, body: &[u8]) {
    stream.write_all(&frame(PING, body)).unwrap();
    let (header, reply) = read_frame(stream).expect("ping reply");
    assert_eq!(header.msg_type, PING);
    assert_eq!(header.flags, FLAG_RESPONSE);
    assert_eq!(reply, body);
}

fn pipelined_and_split(backend: Backend) {
    let harness = Harness::start(backend, |_| {});
    let mut stream = harness.connect();
    let mut bytes = Vec::new();
    for i in 0..2_000u32 {
        bytes.extend(frame(PING, &i.to_le_bytes().repeat((i % 50) as usize)));
    }
    let writer_stream = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut writer_stream = writer_stream;
        // Pieces of varying sizes, cutting frames anywhere.
        let mut offset = 0;
        let mut size = 1;
        while offset < bytes.len() {
            let end = (offset + size).min(bytes.len());
            writer_stream.write_all(&bytes[offset..end]).unwrap();
            offset = end;
            size = size * 7 % 4093 + 1;
        }
    });
    for i in 0..2_000u32 {
        let (header, body) = read_frame(&mut stream).expect("reply");
        assert_eq!(header.msg_type, PING);
        assert_eq!(body, i.to_le_bytes().repeat((i % 50) as usize), "reply {i}");
    }
    writer.join().unwrap();
    drop(stream);
    harness.wait_connections(0);
    harness.stop();
}

fn garbage_gets_error_then_close_while_other_served(backend: Backend) {
    let harness = Harness::start(backend, |_| {});
    let mut good = harness.connect();
    ping_roundtrip(&mut good, b"before");
    let mut bad = harness.connect();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (header, body) = read_frame(&mut bad).expect("error frame");
    assert_eq!(
        (header.msg_type, body.as_slice()),
        (ERROR_BAD_FRAME, b"bad frame".as_slice())
    );
    assert_closed_by_peer(&mut bad);
    ping_roundtrip(&mut good, b"after");
    harness.wait_connections(1);
    drop(good);
    harness.wait_connections(0);
    harness.stop();
}

fn oversized_length_gets_error_then_close(backend: Backend) {
    let harness = Harness::start(backend, |n| n.frame_bytes_max = 1024);
    let mut stream = harness.connect();
    let mut bytes = frame(PING, b"x");
    bytes[8..12].copy_from_slice(&2_000u32.to_le_bytes());
    stream.write_all(&bytes[..HEADER_LEN]).unwrap();
    let (header, _) = read_frame(&mut stream).expect("error frame");
    assert_eq!(header.msg_type, ERROR_BAD_FRAME);
    assert_closed_by_peer(&mut stream);
    harness.wait_connections(0);
    harness.stop();
}

fn truncated_frame_then_close_leaks_nothing(backend: Backend) {
    let harness = Harness::start(backend, |_| {});
    for _ in 0..20 {
        let mut stream = harness.connect();
        let bytes = frame(PING, &[1u8; 100]);
        stream.write_all(&bytes[..50]).unwrap();
    }
    // Connected is not yet accepted: wait for all 20, then for all to be released.
    wait_until(
        || {
            harness
                .registry
                .render()
                .contains("yellowstone_connections_accepted_total 20")
        },
        || "20 accepted".into(),
    );
    harness.wait_connections(0);
    harness.stop();
}

fn thousand_idle_connections(backend: Backend) {
    let harness = Harness::start(backend, |_| {});
    let streams: Vec<TcpStream> = (0..1_000).map(|_| harness.connect()).collect();
    harness.wait_connections(1_000);
    drop(streams);
    harness.wait_connections(0);
    harness.stop();
}

fn slow_reader_is_disconnected(backend: Backend) {
    let send_bytes_max = 256 * 1024;
    let harness = Harness::start(backend, |n| n.conn_send_bytes_max = send_bytes_max);
    let mut slow = harness.connect();
    let mut good = harness.connect();
    harness.wait_connections(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Ask for 60 KB a request and never read, until the router gives up on us.
    while harness.handle().connections_open() == 2 {
        assert!(Instant::now() < deadline, "slow reader never disconnected");
        if slow.write_all(&frame(FLOOD, b"")).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    harness.wait_connections(1);
    let metrics = harness.registry.render();
    assert!(
        metrics.contains("yellowstone_connections_closed_total{reason=\"send_buffer_full\"} 1"),
        "{metrics}"
    );
    ping_roundtrip(&mut good, b"still served");
    drop(slow);
    drop(good);
    harness.wait_connections(0);
    harness.stop();
}

fn connections_max_enforced(backend: Backend) {
    let harness = Harness::start(backend, |n| n.connections_max = 2);
    let mut first = harness.connect();
    let mut second = harness.connect();
    ping_roundtrip(&mut first, b"1");
    ping_roundtrip(&mut second, b"2");
    let mut third = harness.connect();
    let (header, body) = read_frame(&mut third).expect("refusal");
    assert_eq!(
        (header.msg_type, body.as_slice()),
        (ERROR_FULL, b"full".as_slice())
    );
    assert_closed_by_peer(&mut third);
    assert_eq!(harness.handle().connections_open(), 2);
    drop(first);
    harness.wait_connections(1);
    let mut fourth = harness.connect();
    ping_roundtrip(&mut fourth, b"4");
    drop((second, fourth));
    harness.wait_connections(0);
    harness.stop();
}

fn outbox_delivers_from_another_thread(backend: Backend) {
    let harness = Harness::start(backend, |n| n.conn_inflight_frames_max = 4);
    let outbox = harness.handle().outbox();
    let mut stream = harness.connect();
    let opened = harness.opened.recv_timeout(Duration::from_secs(5)).unwrap();
    // 8 deferred requests: only 4 reach the handler until answered (in-flight limit).
    for i in 0..8u8 {
        stream.write_all(&frame(DEFER, &[i])).unwrap();
    }
    let engine = {
        let deferred = harness.deferred.clone();
        let outbox = outbox.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..8 {
                let (conn, body) = deferred.recv_timeout(Duration::from_secs(5)).unwrap();
                assert_eq!(conn, opened);
                seen.push(body[0]);
                let mut reply = Vec::new();
                encode_frame(DEFER, FLAG_RESPONSE, &body, &mut reply);
                outbox.reply(conn, reply).unwrap();
            }
            seen
        })
    };
    for i in 0..8u8 {
        let (header, body) = read_frame(&mut stream).expect("deferred reply");
        assert_eq!((header.msg_type, body[0]), (DEFER, i));
    }
    assert_eq!(engine.join().unwrap(), (0..8).collect::<Vec<u8>>());
    outbox.close(opened).unwrap();
    assert_closed_by_peer(&mut stream);
    harness.wait_connections(0);
    // A stale id never reaches the connection that reuses its slot.
    let mut next = harness.connect();
    let _ = harness.opened.recv_timeout(Duration::from_secs(5)).unwrap();
    outbox.send(opened, frame(PING, b"stale")).unwrap();
    ping_roundtrip(&mut next, b"fresh");
    wait_until(
        || {
            harness
                .registry
                .render()
                .contains("yellowstone_outbox_stale_total 1")
        },
        || "stale message counted".into(),
    );
    drop(next);
    harness.wait_connections(0);
    harness.stop();
}

fn jobs_run_on_the_gateway_thread_and_send_from_there(backend: Backend) {
    let harness = Harness::start(backend, |_| {});
    let outbox = harness.handle().outbox();
    let mut stream = harness.connect();
    let opened = harness.opened.recv_timeout(Duration::from_secs(5)).unwrap();
    let (ran_tx, ran) = crossbeam_channel::unbounded::<String>();
    let job = {
        let ran_tx = ran_tx.clone();
        Box::new(move |outbox: &yellowstone_gateway::net::Outbox| {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            let _ = ran_tx.send(thread);
            // Work done here is sent from here, through the lanes as usual.
            outbox.send(opened, frame(PING, b"from a job")).unwrap();
        })
    };
    outbox.run_near(opened, job).unwrap();
    let thread = ran.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(thread.starts_with("ys-gateway-"), "ran on {thread:?}");
    let (header, body) = read_frame(&mut stream).expect("the job's frame");
    assert_eq!(
        (header.msg_type, body.as_slice()),
        (PING, &b"from a job"[..])
    );
    // The id only picks the thread: a job near a closed connection still runs.
    drop(stream);
    harness.wait_connections(0);
    let job = Box::new(move |_: &yellowstone_gateway::net::Outbox| {
        let _ = ran_tx.send("after close".into());
    });
    outbox.run_near(opened, job).unwrap();
    assert_eq!(
        ran.recv_timeout(Duration::from_secs(5)).unwrap(),
        "after close"
    );
    harness.stop();
}

/// Issue 14's leftover: a reply that finds its lane full loses its bytes (the
/// sender is told) but not its answer mark, so the connection's in-flight window
/// (`conn_inflight_frames_max`) is freed and its next frame is read.
fn a_full_lane_keeps_the_answer_mark(backend: Backend) {
    let harness = Harness::start(backend, |n| {
        n.conn_inflight_frames_max = 1;
        n.outbound_queue_depth = 1;
    });
    let outbox = harness.handle().outbox();
    let mut stream = harness.connect();
    let opened = harness.opened.recv_timeout(Duration::from_secs(5)).unwrap();
    stream.write_all(&frame(DEFER, &[1])).unwrap();
    stream.write_all(&frame(DEFER, &[2])).unwrap();
    let (conn, body) = harness
        .deferred
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert_eq!((conn, body.as_slice()), (opened, &[1u8][..]));
    assert!(
        harness
            .deferred
            .recv_timeout(Duration::from_millis(200))
            .is_err(),
        "the window of 1 holds the second frame back"
    );
    // Hold the connection's gateway thread in a job so that its lane (depth 1) fills.
    let (entered_tx, entered) = crossbeam_channel::bounded::<()>(1);
    let (release_tx, release) = crossbeam_channel::bounded::<()>(1);
    let job = Box::new(move |_: &yellowstone_gateway::net::Outbox| {
        let _ = entered_tx.send(());
        let _ = release.recv_timeout(Duration::from_secs(10));
    });
    outbox.run_near(conn, job).unwrap();
    entered.recv_timeout(Duration::from_secs(5)).unwrap();
    outbox.send(conn, frame(PING, b"fits")).unwrap();
    assert_eq!(
        outbox.reply(conn, frame(DEFER, &[1])),
        Err(OutboxError::Full)
    );
    release_tx.send(()).unwrap();
    let (header, body) = read_frame(&mut stream).expect("the frame that fitted");
    assert_eq!((header.msg_type, body.as_slice()), (PING, &b"fits"[..]));
    let (_, body) = harness
        .deferred
        .recv_timeout(Duration::from_secs(5))
        .expect("the kept mark freed the window: the second frame is read");
    assert_eq!(body, [2]);
    outbox.reply(conn, frame(DEFER, &[2])).unwrap();
    let (header, body) = read_frame(&mut stream).expect("second reply");
    assert_eq!((header.msg_type, body.as_slice()), (DEFER, &[2u8][..]));
    drop(stream);
    harness.wait_connections(0);
    harness.stop();
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod mio {
            $( #[test] fn $name() { super::$name(yellowstone_gateway::config::Backend::Mio) } )*
        }
        mod uring {
            $( #[test] fn $name() { super::$name(yellowstone_gateway::config::Backend::Uring) } )*
        }
    };
}

both_backends!(
    pipelined_and_split,
    garbage_gets_error_then_close_while_other_served,
    oversized_length_gets_error_then_close,
    truncated_frame_then_close_leaks_nothing,
    thousand_idle_connections,
    slow_reader_is_disconnected,
    connections_max_enforced,
    outbox_delivers_from_another_thread,
    jobs_run_on_the_gateway_thread_and_send_from_there,
    a_full_lane_keeps_the_answer_mark,
);
