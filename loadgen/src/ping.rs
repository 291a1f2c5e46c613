//! Ping mode: the router's network path alone, measured the way `redis-benchmark`
//! measures Redis, so that the two can be compared side by side.
//!
//! `connections` connections are driven by ONE thread through an event loop (as
//! `redis-benchmark` does with its default single thread). Each connection writes
//! `pipeline` Ping frames in one write, waits for all their Pongs, then writes the
//! next batch; every Pong's latency is the time from its batch's write to its
//! arrival (so with a pipeline, as in `redis-benchmark -P`, a request's latency
//! includes the requests queued ahead of it). The router answers a Ping before login,
//! so no connection logs in: the login challenge the router sends on open is read and
//! ignored. After a warm-up, Pongs received during `duration` are counted.

use crate::latency::{LatencyRecorder, LatencySummary};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use yellowstone_wire::frame::HEADER_LEN;
use yellowstone_wire::messages::{msg_type, Message, Ping};

#[derive(Clone, Debug)]
pub struct PingConfig {
    pub connections: usize,
    pub pipeline: usize,
    /// Measured window.
    pub duration: Duration,
    /// Run before the window, not counted (connections warm, caches hot).
    pub warmup: Duration,
}

/// The `--json` summary of a ping run; field names are a contract with scripts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PingSummary {
    pub mode: String,
    pub target: String,
    pub connections: usize,
    pub pipeline: usize,
    pub duration_s: f64,
    /// Pongs received in the window.
    pub pings: u64,
    pub pings_per_s: f64,
    /// Ping-to-Pong latency, microseconds.
    pub latency_us: LatencySummary,
    /// Connections the router closed or that failed during the run.
    pub connection_errors: u64,
}

impl PingSummary {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("summary is plain data")
    }

    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
        format!(
            "yellowstone-loadgen ping report\n  target              {}\n  connections         {}\n  pipeline            {}\n  duration            {:.1} s\n  pings               {} ({:.0} /s)\n  connection errors   {}\n\n  latency (us)          p50      p90      p99    p99.9      max    count\n  ping -> pong       {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            self.target,
            self.connections,
            self.pipeline,
            self.duration_s,
            self.pings,
            self.pings_per_s,
            self.connection_errors,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.count
        )
    }
}

struct Conn {
    stream: TcpStream,
    /// Bytes received and not yet parsed into whole frames.
    pending: Vec<u8>,
    /// Pings of the current batch not yet answered.
    in_flight: usize,
    batch_sent: Instant,
    /// The unwritten rest of the current batch (a short write).
    unwritten: usize,
    alive: bool,
}

/// Counts whole Pong frames at the start of `pending`, drops every whole frame
/// (the login challenge included) and keeps a partial one. Returns the Pongs.
fn take_pongs(pending: &mut Vec<u8>) -> Result<usize, String> {
    let mut at = 0;
    let mut pongs = 0;
    while pending.len() - at >= HEADER_LEN {
        let header = &pending[at..at + HEADER_LEN];
        if header[..2] != *b"YS" {
            return Err("bad frame magic from the router".into());
        }
        let kind = u16::from_le_bytes([header[4], header[5]]);
        let body_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        if pending.len() - at < HEADER_LEN + body_len {
            break;
        }
        if kind == msg_type::PONG {
            pongs += 1;
        }
        at += HEADER_LEN + body_len;
    }
    pending.drain(..at);
    Ok(pongs)
}

/// Writes (the rest of) a batch; returns false on a closed or failed connection.
fn write_batch(conn: &mut Conn, batch: &[u8]) -> bool {
    while conn.unwritten > 0 {
        let from = batch.len() - conn.unwritten;
        match conn.stream.write(&batch[from..]) {
            Ok(0) => return false,
            Ok(n) => conn.unwritten -= n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Runs the ping load against `addr` and returns its summary.
pub fn run(addr: SocketAddr, config: &PingConfig) -> Result<PingSummary, String> {
    let connections = config.connections.max(1);
    let pipeline = config.pipeline.max(1);
    let mut batch = Vec::with_capacity(pipeline * 24);
    for i in 0..pipeline {
        Message::from(Ping { payload: i as u64 }).write_frame(0, &mut batch);
    }
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut conns = Vec::with_capacity(connections);
    for i in 0..connections {
        let stream =
            std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut stream = TcpStream::from_std(stream);
        poll.registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        conns.push(Conn {
            stream,
            pending: Vec::with_capacity(64 * 1024),
            in_flight: 0,
            batch_sent: Instant::now(),
            unwritten: 0,
            alive: true,
        });
    }
    let started = Instant::now();
    let window_start = started + config.warmup;
    let window_end = window_start + config.duration;
    let mut latencies = LatencyRecorder::new();
    let mut counted = 0u64;
    let mut errors = 0u64;
    // Start every connection's first batch.
    for conn in &mut conns {
        conn.in_flight = pipeline;
        conn.unwritten = batch.len();
        conn.batch_sent = Instant::now();
        if !write_batch(conn, &batch) {
            conn.alive = false;
            errors += 1;
        }
    }
    let mut events = Events::with_capacity(connections.max(16));
    let mut read_buffer = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        let live = conns.iter().filter(|c| c.alive).count();
        if live == 0 {
            break;
        }
        // After the window: stop once every batch in flight is answered, or soon.
        if now >= window_end
            && (conns.iter().all(|c| !c.alive || c.in_flight == 0)
                || now >= window_end + Duration::from_secs(2))
        {
            break;
        }
        let timeout = if now < window_end {
            (window_end - now).min(Duration::from_millis(100))
        } else {
            Duration::from_millis(20)
        };
        poll.poll(&mut events, Some(timeout))
            .map_err(|e| format!("poll: {e}"))?;
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            if !conn.alive {
                continue;
            }
            if event.is_writable() && conn.unwritten > 0 && !write_batch(conn, &batch) {
                conn.alive = false;
                errors += 1;
                continue;
            }
            if !(event.is_readable() || event.is_read_closed() || event.is_error()) {
                continue;
            }
            // Edge-triggered: read until the socket is empty.
            loop {
                match conn.stream.read(&mut read_buffer) {
                    Ok(0) => {
                        conn.alive = false;
                        errors += 1;
                        break;
                    }
                    Ok(n) => conn.pending.extend_from_slice(&read_buffer[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        conn.alive = false;
                        errors += 1;
                        break;
                    }
                }
            }
            let pongs = take_pongs(&mut conn.pending)?;
            if pongs == 0 {
                continue;
            }
            let received = Instant::now();
            if received >= window_start && received < window_end {
                let latency_us = received.duration_since(conn.batch_sent).as_micros() as u64;
                for _ in 0..pongs {
                    latencies.record_us(latency_us);
                }
                counted += pongs as u64;
            }
            conn.in_flight = conn.in_flight.saturating_sub(pongs);
            if conn.in_flight == 0 && conn.alive && received < window_end {
                conn.in_flight = pipeline;
                conn.unwritten = batch.len();
                conn.batch_sent = Instant::now();
                if !write_batch(conn, &batch) {
                    conn.alive = false;
                    errors += 1;
                }
            }
        }
    }
    let window = config.duration.as_secs_f64().max(1e-9);
    Ok(PingSummary {
        mode: "ping".into(),
        target: addr.to_string(),
        connections,
        pipeline,
        duration_s: config.duration.as_secs_f64(),
        pings: counted,
        pings_per_s: counted as f64 / window,
        latency_us: latencies.summary(),
        connection_errors: errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pongs_are_counted_and_other_frames_skipped() {
        let mut bytes = Vec::new();
        Message::from(yellowstone_wire::messages::LoginChallenge::default())
            .write_frame(1, &mut bytes);
        for i in 0..3 {
            Message::from(yellowstone_wire::messages::Pong { payload: i })
                .write_frame(1, &mut bytes);
        }
        let cut = bytes.len() - 5;
        let mut pending = bytes[..cut].to_vec();
        assert_eq!(take_pongs(&mut pending).unwrap(), 2);
        assert_eq!(pending.len(), HEADER_LEN + 8 - 5);
        pending.extend_from_slice(&bytes[cut..]);
        assert_eq!(take_pongs(&mut pending).unwrap(), 1);
        assert!(pending.is_empty());
        let mut garbage = b"XXXXXXXXXXXXXXXX".to_vec();
        assert!(take_pongs(&mut garbage).is_err());
    }

    #[test]
    fn pings_an_echo_server() {
        // A stand-in router: answers every 20-byte Ping with a Pong.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut handles = Vec::new();
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().unwrap();
                handles.push(std::thread::spawn(move || {
                    let mut buffer = [0u8; 4096];
                    let mut pending = Vec::new();
                    loop {
                        let n = match stream.read(&mut buffer) {
                            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buffer[..n]);
                        let whole = pending.len() / 20 * 20;
                        let mut out = Vec::new();
                        for _ in 0..whole / 20 {
                            Message::from(yellowstone_wire::messages::Pong { payload: 0 })
                                .write_frame(1, &mut out);
                        }
                        pending.drain(..whole);
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                }));
            }
            for handle in handles {
                let _ = handle.join();
            }
        });
        let summary = run(
            addr,
            &PingConfig {
                connections: 2,
                pipeline: 4,
                duration: Duration::from_millis(300),
                warmup: Duration::from_millis(50),
            },
        )
        .unwrap();
        assert!(summary.pings > 0, "{summary:?}");
        assert_eq!(summary.latency_us.count, summary.pings);
        assert_eq!(summary.connection_errors, 0);
        drop(summary);
        let _ = server.join();
    }
}
