//! The seam between the network layer and the router: `FrameHandler`, called by a
//! gateway thread for each connection event, and `Replies`, through which it answers.
//!
//! Guarantees: a handler instance lives on one gateway thread (it needs no locks for
//! its own state); `on_open` is called once before any frame of a connection and
//! `on_close` exactly once after its last frame, so a route table told of closes
//! (the router's, on the engine thread) never holds a closed id longer than the close
//! takes to reach it. A frame stays "in flight" (counted against
//! `conn_inflight_frames_max`) until it is answered: by `Replies::reply` /
//! `Replies::answer` during `on_frame`, or later by `Outbox::reply` / `Outbox::answer`
//! from another thread.

use crate::net::conn_id::ConnId;
use crate::net::connection::{CloseReason, Connection, Refusal};
use crate::net::outbox::Outbox;
use std::net::SocketAddr;
use std::time::Instant;
use yellowstone_wire::frame::Frame;

/// Given to the handler factory on each gateway thread.
#[derive(Clone)]
pub struct GatewayContext {
    pub thread_index: u8,
    pub gateway_threads: usize,
    /// Sends to any connection of any gateway thread (including this one).
    pub outbox: Outbox,
}

pub trait FrameHandler {
    /// A connection was accepted.
    fn on_open(&mut self, _conn: ConnId, _peer: Option<SocketAddr>) {}

    /// A whole frame arrived at `now` (the network loop's clock: the handler reads
    /// none). Answer it through `replies` now, or forward it (to the engine) and
    /// answer later through the `Outbox`.
    fn on_frame(&mut self, conn: ConnId, frame: Frame, now: Instant, replies: &mut Replies<'_>);

    /// The connection is gone; its id will never be used again.
    fn on_close(&mut self, _conn: ConnId, _reason: &CloseReason) {}

    /// The gateway thread finished a loop turn (every completion it had was handled,
    /// its sends started) and is about to wait: the moment to hand on what the turn
    /// collected in one go. Returns true when the handler kept work back for the next
    /// turn (a bounded share of deferred work is done per turn, so that a loaded
    /// gateway still turns often): the backend then polls without sleeping.
    fn end_of_turn(&mut self, _now: Instant) -> bool {
        false
    }

    /// Whether `end_of_turn` has deferred work to do: the backend starts the turn's
    /// sends before calling it, so that replies and pushes do not wait for it.
    fn has_deferred_work(&self) -> bool {
        false
    }

    /// Appends the error frame (the wire's `ErrorReply`) for `refusal` to `out`.
    fn error_frame(&mut self, refusal: &Refusal, out: &mut Vec<u8>);
}

/// How `on_frame` answers on the connection the frame came from.
pub struct Replies<'a> {
    conn: &'a mut Connection,
    answered: bool,
}

impl<'a> Replies<'a> {
    pub(crate) fn new(conn: &'a mut Connection) -> Replies<'a> {
        Replies {
            conn,
            answered: false,
        }
    }

    /// Queues a reply frame and marks the current frame answered (once). Returns false
    /// if the connection is closed (or just closed on its send limit).
    pub fn reply(&mut self, frame_bytes: &[u8]) -> bool {
        // Queued before the answer mark: a half-closed connection closes on its last
        // answer once nothing is queued, and this reply must be part of what is sent.
        let queued = self.conn.queue_frame(frame_bytes);
        self.answer();
        queued
    }

    /// Like `reply`, encoding straight into the send buffer.
    pub fn reply_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let queued = self.conn.queue_with(write);
        self.answer();
        queued
    }

    /// Queues a frame that does not answer the current frame (a push).
    pub fn push(&mut self, frame_bytes: &[u8]) -> bool {
        self.conn.queue_frame(frame_bytes)
    }

    /// Marks the current frame answered without sending anything.
    pub fn answer(&mut self) {
        if !self.answered {
            self.answered = true;
            let ok = self.conn.on_answered(1);
            debug_assert!(ok, "the current frame is in flight");
        }
    }

    /// Closes the connection once what is queued is sent.
    pub fn close(&mut self) {
        self.conn.close_after_flush(CloseReason::ByHandler);
    }

    pub fn is_open(&self) -> bool {
        self.conn.is_open()
    }

    /// Records what the sender has shown (§9): eviction and the login timeout
    /// spare connections of a higher standing.
    pub fn set_standing(&mut self, standing: crate::net::connection::Standing) {
        self.conn.set_standing(standing);
    }
}
