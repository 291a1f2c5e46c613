//! The sans-IO connection: every decision about one client's byte streams.
//!
//! Both backends (io_uring and mio) only move bytes: received bytes go into
//! `on_bytes`, frames come out of `next_frame`, replies go into `queue_frame`, and the
//! bytes to write come out of `poll_transmit` (all queued frames coalesced into one
//! send) and are acknowledged by `on_sent` (short sends keep the rest). Time is passed
//! in (`now_ms`), never read.
//!
//! Guarantees (checked by `check_invariants`):
//! - at most `inflight_frames_max` frames are handed out and not yet answered; past it
//!   no frame is yielded and `wants_recv` is false, so the backend stops reading;
//! - queued-and-unsent bytes never exceed `send_bytes_max`: a client too slow to read
//!   its replies is closed with `CloseReason::SendBufferFull` rather than growing memory;
//! - the slice returned by `poll_transmit` is not moved or changed until `on_sent`
//!   acknowledges all of it (io_uring's kernel reads it in the meantime); new frames
//!   go to a second buffer;
//! - a header error queues the handler's error frame, then closes once it is flushed;
//! - half-close (R-ID-6): after the peer's FIN no more bytes are read, but every whole
//!   frame received before it is still handed out, and the connection closes only
//!   once each of them is answered and every queued byte is sent;
//! - once closed, nothing is yielded or transmitted.

use std::fmt;
use yellowstone_wire::frame::{Frame, FrameDecoder, FrameError};

/// Per-connection limits, from `[network]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    pub frame_bytes_max: usize,
    pub inflight_frames_max: u32,
    pub send_bytes_max: usize,
    pub idle_timeout_ms: u64,
    /// §9: a connection still `Standing::Unproven` this long after it opened is
    /// closed (`network.login_timeout_ms`).
    pub login_timeout_ms: u64,
}

/// §9: a connection that sent something is evicted for room only after this long
/// without traffic.
pub const EVICT_IDLE_MIN_MS: u64 = 1_000;
/// §9: a connection that never sent a byte is evicted for room once this old: long
/// enough for an honest client to answer its login challenge.
pub const EVICT_SILENT_MIN_MS: u64 = 250;

/// What a connection has shown of its sender (§9, R-PROV-3), set by the handler:
/// near `connections_max` the lowest standing goes first (then the longest idle),
/// and a staked connection is never evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Not logged in (anyone can open a TCP connection).
    Unproven,
    /// Logged in as an address that holds no MOR (keys are free).
    LoggedIn,
    /// Logged in as an address that holds MOR.
    Staked,
}

impl ConnLimits {
    pub fn from_config(network: &crate::config::NetworkConfig) -> ConnLimits {
        ConnLimits {
            frame_bytes_max: network.frame_bytes_max,
            inflight_frames_max: network.conn_inflight_frames_max,
            send_bytes_max: network.conn_send_bytes_max,
            idle_timeout_ms: network.conn_idle_timeout_ms,
            login_timeout_ms: network.login_timeout_ms,
        }
    }
}

/// What the handler is asked to build an error frame for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The stream's header was invalid (the connection closes after the error frame).
    Frame(FrameError),
    /// The process already holds `connections_max` connections.
    ConnectionsMax { connections_max: usize },
    /// Not logged in within `login_timeout_ms` (the connection closes after it).
    LoginTimeout { login_timeout_ms: u64 },
    /// Closed to make room: idle, of the lowest standing, near `connections_max` or
    /// past `connections_unproven_max` (the connection closes after it).
    Evicted { connections_open: usize },
}

/// Why a connection closed; logged and passed to `FrameHandler::on_close`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    PeerClosed,
    Frame(FrameError),
    SendBufferFull {
        queued_bytes: usize,
        send_bytes_max: usize,
    },
    IdleTimeout {
        idle_ms: u64,
    },
    LoginTimeout {
        login_timeout_ms: u64,
    },
    Evicted,
    ByHandler,
    ByOutbox,
    Io {
        errno: i32,
    },
    Shutdown,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => write!(f, "peer closed"),
            CloseReason::Frame(error) => write!(f, "bad frame: {error}"),
            CloseReason::SendBufferFull {
                queued_bytes,
                send_bytes_max,
            } => write!(
                f,
                "client too slow: {queued_bytes} bytes queued over conn_send_bytes_max {send_bytes_max}"
            ),
            CloseReason::IdleTimeout { idle_ms } => write!(f, "idle for {idle_ms} ms"),
            CloseReason::LoginTimeout { login_timeout_ms } => {
                write!(f, "no login within login_timeout_ms {login_timeout_ms}")
            }
            CloseReason::Evicted => write!(f, "evicted to make room (idle, no MOR)"),
            CloseReason::ByHandler => write!(f, "closed by the handler"),
            CloseReason::ByOutbox => write!(f, "closed through the outbox"),
            CloseReason::Io { errno } => {
                write!(f, "io error: {}", std::io::Error::from_raw_os_error(*errno))
            }
            CloseReason::Shutdown => write!(f, "router shutting down"),
        }
    }
}

impl CloseReason {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Frame(_) => "bad_frame",
            CloseReason::SendBufferFull { .. } => "send_buffer_full",
            CloseReason::IdleTimeout { .. } => "idle_timeout",
            CloseReason::LoginTimeout { .. } => "login_timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::ByHandler => "by_handler",
            CloseReason::ByOutbox => "by_outbox",
            CloseReason::Io { .. } => "io_error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// The peer shut its write side: hand out the frames already received, answer
    /// them, flush, then close (no more bytes are read).
    HalfClosed,
    /// Flush what is queued, then close (no more frames are read).
    Draining,
    Closed,
}

pub struct Connection {
    limits: ConnLimits,
    decoder: FrameDecoder,
    /// Frames queued since the last `poll_transmit` took a batch.
    pending: Vec<u8>,
    /// The batch being transmitted: `sending[sent..]` is still to be written.
    sending: Vec<u8>,
    sent: usize,
    inflight_frames: u32,
    state: State,
    close_reason: Option<CloseReason>,
    last_active_ms: u64,
    /// Half-closed and the decoder holds no whole frame any more (none can come).
    input_done: bool,
    opened_ms: u64,
    standing: Standing,
    /// Some bytes came from the peer (a connection that never sent any is the first
    /// to go when room is needed).
    received_any: bool,
}

impl Connection {
    pub fn new(limits: ConnLimits, now_ms: u64) -> Connection {
        assert!(limits.inflight_frames_max >= 1);
        assert!(limits.send_bytes_max >= 1);
        Connection {
            limits,
            decoder: FrameDecoder::new(limits.frame_bytes_max),
            pending: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            inflight_frames: 0,
            state: State::Open,
            close_reason: None,
            last_active_ms: now_ms,
            input_done: false,
            opened_ms: now_ms,
            standing: Standing::Unproven,
            received_any: false,
        }
    }

    /// What the sender has shown so far (§9).
    pub fn standing(&self) -> Standing {
        self.standing
    }

    /// Set by the handler (login, funding).
    pub fn set_standing(&mut self, standing: Standing) {
        self.standing = standing;
    }

    /// When the connection last sent or received, ms (the `now_ms` clock).
    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms
    }

    /// Still unproven `login_timeout_ms` after it opened (and not closing already).
    pub fn login_overdue(&self, now_ms: u64) -> bool {
        self.state == State::Open
            && self.standing == Standing::Unproven
            && now_ms.saturating_sub(self.opened_ms) >= self.limits.login_timeout_ms
    }

    /// A candidate for eviction at `now_ms`: open, not staked, nothing in flight or
    /// queued, and idle: silent for `EVICT_SILENT_MIN_MS` since it opened (it never
    /// sent a byte), or without traffic for `EVICT_IDLE_MIN_MS`.
    pub fn evictable(&self, now_ms: u64) -> bool {
        let idle_min_ms = if self.received_any {
            EVICT_IDLE_MIN_MS
        } else {
            EVICT_SILENT_MIN_MS
        };
        self.state == State::Open
            && self.standing < Standing::Staked
            && self.inflight_frames == 0
            && self.unsent_bytes() == 0
            && now_ms.saturating_sub(self.last_active_ms) >= idle_min_ms
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Bytes received from the socket.
    pub fn on_bytes(&mut self, bytes: &[u8], now_ms: u64) {
        if self.state != State::Open || bytes.is_empty() {
            return;
        }
        self.last_active_ms = now_ms;
        self.received_any = true;
        self.decoder.extend(bytes);
    }

    /// The peer closed its side (recv returned 0): the frames it sent before are still
    /// handed out and answered, then what is queued is sent, then the connection
    /// closes (R-ID-6).
    pub fn on_peer_closed(&mut self) {
        if self.state != State::Open {
            return;
        }
        self.state = State::HalfClosed;
        self.close_reason = Some(CloseReason::PeerClosed);
        self.input_done = self.decoder.buffered_len() == 0;
        self.settle();
    }

    /// The next whole frame, counted in flight until answered. On a header error the
    /// error frame built by `error_frame` is queued and the connection drains.
    pub fn next_frame(
        &mut self,
        error_frame: &mut dyn FnMut(&Refusal, &mut Vec<u8>),
    ) -> Option<Frame> {
        let reading = matches!(self.state, State::Open | State::HalfClosed);
        if !reading || self.inflight_frames >= self.limits.inflight_frames_max {
            return None;
        }
        match self.decoder.next_frame() {
            Ok(Some(frame)) => {
                debug_assert!(frame.header.frame_len() <= self.limits.frame_bytes_max);
                self.inflight_frames += 1;
                Some(frame)
            }
            Ok(None) => {
                if self.state == State::HalfClosed {
                    // No byte comes after the FIN: a partial frame never completes.
                    self.input_done = true;
                    self.settle();
                }
                None
            }
            Err(error) => {
                let refusal = Refusal::Frame(error);
                self.queue_with(|out| error_frame(&refusal, out));
                self.close_after_flush(CloseReason::Frame(error));
                None
            }
        }
    }

    /// Whether the backend should read more bytes now. False when closed, draining, or
    /// when the in-flight window is full and a whole frame is already buffered.
    pub fn wants_recv(&self) -> bool {
        self.state == State::Open
            && (self.inflight_frames < self.limits.inflight_frames_max
                || self.decoder.buffered_len() < self.limits.frame_bytes_max)
    }

    /// Marks `count` in-flight frames answered; returns false if more were answered
    /// than were in flight (a handler bug or a stale reply; the count stays at 0).
    pub fn on_answered(&mut self, count: u32) -> bool {
        let ok = count <= self.inflight_frames;
        self.inflight_frames = self.inflight_frames.saturating_sub(count);
        self.settle();
        ok
    }

    pub fn inflight_frames(&self) -> u32 {
        self.inflight_frames
    }

    /// Queues one encoded frame (or several). Returns false if the connection is
    /// closed or is closed now because the send buffer limit would be exceeded.
    pub fn queue_frame(&mut self, bytes: &[u8]) -> bool {
        self.queue_with(|out| out.extend_from_slice(bytes))
    }

    /// Queues the bytes `write` appends (encode straight into the send buffer).
    pub fn queue_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        if self.state == State::Closed {
            return false;
        }
        let before = self.pending.len();
        write(&mut self.pending);
        let queued_bytes = self.unsent_bytes();
        if queued_bytes > self.limits.send_bytes_max {
            self.pending.truncate(before);
            self.close_now(CloseReason::SendBufferFull {
                queued_bytes,
                send_bytes_max: self.limits.send_bytes_max,
            });
            return false;
        }
        true
    }

    /// Queued bytes not yet acknowledged by `on_sent`.
    pub fn unsent_bytes(&self) -> usize {
        debug_assert!(self.sent <= self.sending.len());
        self.sending.len() - self.sent + self.pending.len()
    }

    /// The bytes to write next: the rest of the batch in transmission, or every frame
    /// queued since, coalesced. None when nothing is queued or the connection closed.
    pub fn poll_transmit(&mut self) -> Option<&[u8]> {
        if self.state == State::Closed {
            return None;
        }
        if self.sent == self.sending.len() {
            self.sending.clear();
            self.sent = 0;
            std::mem::swap(&mut self.sending, &mut self.pending);
            // A burst can leave a large buffer behind: give it back when idle.
            let keep = 4 * self.limits.frame_bytes_max;
            if self.pending.capacity() > keep {
                self.pending.shrink_to(keep);
            }
        }
        if self.sending.is_empty() {
            return None;
        }
        Some(&self.sending[self.sent..])
    }

    /// `n` bytes of the slice from `poll_transmit` were written.
    pub fn on_sent(&mut self, n: usize, now_ms: u64) {
        assert!(
            self.sent + n <= self.sending.len(),
            "on_sent({n}) past the transmitted batch"
        );
        self.sent += n;
        if n > 0 {
            self.last_active_ms = now_ms;
        }
        self.settle();
    }

    /// Closes a connection quiet for `idle_timeout_ms`. Returns true if it closed now.
    pub fn on_tick(&mut self, now_ms: u64) -> bool {
        if self.state == State::Closed {
            return false;
        }
        let idle_ms = now_ms.saturating_sub(self.last_active_ms);
        if idle_ms >= self.limits.idle_timeout_ms {
            self.close_now(CloseReason::IdleTimeout { idle_ms });
            return true;
        }
        false
    }

    /// Stop reading; close once every queued byte is sent.
    pub fn close_after_flush(&mut self, reason: CloseReason) {
        if matches!(self.state, State::Open | State::HalfClosed) {
            self.state = State::Draining;
            self.close_reason = Some(reason);
        }
        self.settle();
    }

    /// Close at once, dropping whatever is queued.
    pub fn close_now(&mut self, reason: CloseReason) {
        if self.close_reason.is_none() {
            self.close_reason = Some(reason);
        }
        self.state = State::Closed;
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The peer shut its write side and replies to what it sent are still due.
    pub fn is_half_closed(&self) -> bool {
        self.state == State::HalfClosed
    }

    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    fn settle(&mut self) {
        let done = match self.state {
            State::Draining => self.unsent_bytes() == 0,
            State::HalfClosed => {
                self.input_done && self.inflight_frames == 0 && self.unsent_bytes() == 0
            }
            State::Open | State::Closed => false,
        };
        if done {
            self.state = State::Closed;
        }
    }

    /// The invariants above, for tests and debug builds.
    pub fn check_invariants(&self) {
        assert!(self.inflight_frames <= self.limits.inflight_frames_max);
        assert!(self.sent <= self.sending.len());
        assert!(self.unsent_bytes() <= self.limits.send_bytes_max);
        assert!(self.state == State::Open || self.close_reason.is_some());
        assert!(!self.input_done || self.state != State::Open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yellowstone_wire::frame::encode_frame;

    fn limits() -> ConnLimits {
        ConnLimits {
            frame_bytes_max: 64,
            inflight_frames_max: 2,
            send_bytes_max: 100,
            idle_timeout_ms: 1_000,
            login_timeout_ms: 1_000,
        }
    }

    fn frame(msg_type: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(msg_type, 0, body, &mut out);
        out
    }

    fn error_frame(refusal: &Refusal, out: &mut Vec<u8>) {
        let code = match refusal {
            Refusal::Frame(_) => b"bad".as_slice(),
            Refusal::ConnectionsMax { .. } => b"full".as_slice(),
            Refusal::LoginTimeout { .. } => b"login".as_slice(),
            Refusal::Evicted { .. } => b"evicted".as_slice(),
        };
        encode_frame(0xffff, 1, code, out);
    }

    #[test]
    fn section_9_login_timeout_and_eviction_spare_a_staked_connection() {
        let mut c = Connection::new(limits(), 0);
        assert!(!c.login_overdue(999));
        assert!(c.login_overdue(1_000), "unproven at login_timeout_ms");
        assert!(
            !c.evictable(EVICT_SILENT_MIN_MS - 1),
            "time to answer the challenge"
        );
        assert!(c.evictable(EVICT_SILENT_MIN_MS), "silent since it opened");
        c.on_bytes(b"x", 10);
        assert!(!c.evictable(10 + EVICT_IDLE_MIN_MS - 1), "recently active");
        assert!(c.evictable(10 + EVICT_IDLE_MIN_MS));
        c.set_standing(Standing::LoggedIn);
        assert!(!c.login_overdue(5_000), "logged in: no login timeout");
        assert!(
            c.evictable(10 + EVICT_IDLE_MIN_MS),
            "no MOR: still evictable"
        );
        c.set_standing(Standing::Staked);
        assert!(
            !c.evictable(u64::MAX),
            "a staked connection is never evicted"
        );
        assert!(Standing::Unproven < Standing::LoggedIn && Standing::LoggedIn < Standing::Staked);
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_count_in_flight() {
        let mut stream = frame(1, b"a");
        stream.extend(frame(2, b"bb"));
        stream.extend(frame(3, b"ccc"));
        let mut conn = Connection::new(limits(), 0);
        for piece in stream.chunks(5) {
            conn.on_bytes(piece, 1);
        }
        let first = conn.next_frame(&mut error_frame).expect("frame 1");
        let second = conn.next_frame(&mut error_frame).expect("frame 2");
        assert_eq!((first.header.msg_type, second.header.msg_type), (1, 2));
        // Window full: frame 3 waits, and no more reading while a frame is buffered.
        assert!(conn.next_frame(&mut error_frame).is_none());
        assert_eq!(conn.inflight_frames(), 2);
        assert!(conn.wants_recv());
        assert!(conn.on_answered(1));
        assert_eq!(
            conn.next_frame(&mut error_frame).unwrap().body.as_ref(),
            b"ccc"
        );
        assert!(!conn.on_answered(5));
        assert_eq!(conn.inflight_frames(), 0);
        conn.check_invariants();
    }

    #[test]
    fn sends_coalesce_and_short_sends_keep_the_rest() {
        let mut conn = Connection::new(limits(), 0);
        assert!(conn.queue_frame(b"hello "));
        assert!(conn.queue_frame(b"world"));
        assert_eq!(conn.poll_transmit(), Some(b"hello world".as_slice()));
        conn.on_sent(3, 1);
        // New frames do not touch the batch in flight.
        assert!(conn.queue_frame(b"!"));
        assert_eq!(conn.poll_transmit(), Some(b"lo world".as_slice()));
        conn.on_sent(8, 1);
        assert_eq!(conn.poll_transmit(), Some(b"!".as_slice()));
        conn.on_sent(1, 1);
        assert_eq!(conn.poll_transmit(), None);
        assert_eq!(conn.unsent_bytes(), 0);
        conn.check_invariants();
    }

    #[test]
    fn slow_reader_is_closed_at_the_send_limit() {
        let mut conn = Connection::new(limits(), 0);
        assert!(conn.queue_frame(&[0u8; 60]));
        let _ = conn.poll_transmit();
        conn.on_sent(10, 1);
        assert!(conn.queue_frame(&[0u8; 40]));
        assert!(!conn.queue_frame(&[0u8; 11]));
        assert!(conn.is_closed());
        assert!(matches!(
            conn.close_reason(),
            Some(CloseReason::SendBufferFull {
                queued_bytes: 101,
                send_bytes_max: 100
            })
        ));
        assert!(conn.poll_transmit().is_none());
        conn.check_invariants();
    }

    #[test]
    fn garbage_queues_an_error_frame_then_closes_after_flush() {
        let mut conn = Connection::new(limits(), 0);
        conn.on_bytes(b"GET / HTTP/1.1\r\n\r\n", 1);
        assert!(conn.next_frame(&mut error_frame).is_none());
        assert!(!conn.is_closed());
        assert!(!conn.wants_recv());
        let expected = frame_response_bad();
        assert_eq!(conn.poll_transmit(), Some(expected.as_slice()));
        conn.on_sent(expected.len(), 2);
        assert!(conn.is_closed());
        assert!(matches!(
            conn.close_reason(),
            Some(CloseReason::Frame(FrameError::BadMagic { .. }))
        ));
    }

    fn frame_response_bad() -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(0xffff, 1, b"bad", &mut out);
        out
    }

    #[test]
    fn oversized_length_is_refused() {
        let mut conn = Connection::new(limits(), 0);
        let mut big = frame(1, &[0u8; 10]);
        big[8..12].copy_from_slice(&1000u32.to_le_bytes());
        conn.on_bytes(&big[..12], 1);
        assert!(conn.next_frame(&mut error_frame).is_none());
        assert!(matches!(
            conn.close_reason(),
            Some(CloseReason::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn idle_timeout_and_peer_close() {
        let mut conn = Connection::new(limits(), 0);
        conn.on_bytes(b"YS", 500);
        assert!(!conn.on_tick(1_499));
        assert!(conn.on_tick(1_500));
        assert!(conn.is_closed());

        let mut conn = Connection::new(limits(), 0);
        assert!(conn.queue_frame(b"reply"));
        conn.on_peer_closed();
        assert!(!conn.is_closed(), "the reply is flushed first");
        let n = conn.poll_transmit().unwrap().len();
        conn.on_sent(n, 1);
        assert!(conn.is_closed());
        assert_eq!(conn.close_reason(), Some(&CloseReason::PeerClosed));
    }

    #[test]
    fn half_close_hands_out_received_frames_and_waits_for_their_answers() {
        let mut stream = frame(1, b"a");
        stream.extend(frame(2, b"b"));
        stream.extend(frame(3, b"c"));
        stream.extend(&frame(4, b"partial")[..5]);
        let mut conn = Connection::new(limits(), 0);
        conn.on_bytes(&stream, 1);
        conn.on_peer_closed();
        assert!(conn.is_half_closed());
        assert!(!conn.wants_recv(), "nothing is read after the FIN");
        let first = conn.next_frame(&mut error_frame).expect("frame 1");
        let second = conn.next_frame(&mut error_frame).expect("frame 2");
        assert_eq!((first.header.msg_type, second.header.msg_type), (1, 2));
        assert!(conn.next_frame(&mut error_frame).is_none(), "window full");
        // Answered later (by the engine through the outbox): frame 3 comes out.
        assert!(conn.queue_frame(b"r1"));
        assert!(conn.on_answered(1));
        assert!(!conn.is_closed());
        let third = conn.next_frame(&mut error_frame).expect("frame 3");
        assert_eq!(third.header.msg_type, 3);
        assert!(conn.next_frame(&mut error_frame).is_none(), "partial frame");
        assert!(conn.on_answered(1));
        assert!(!conn.is_closed(), "frame 3 is not answered yet");
        assert!(conn.queue_frame(b"r3"));
        assert!(conn.on_answered(1));
        // The backends hand out frames on every service: none is left.
        assert!(conn.next_frame(&mut error_frame).is_none());
        assert!(!conn.is_closed(), "replies are not sent yet");
        let n = conn.poll_transmit().expect("replies").len();
        assert_eq!(n, 4);
        conn.on_sent(n, 2);
        assert!(conn.is_closed());
        assert_eq!(conn.close_reason(), Some(&CloseReason::PeerClosed));
        conn.check_invariants();
    }
}
