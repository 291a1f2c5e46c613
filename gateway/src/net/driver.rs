//! What both backends do the same way around the sans-IO `Connection`: handing
//! frames to the handler, applying outbox messages, counting connections against
//! `connections_max`, and the shutdown flag.
//!
//! Guarantees: the process never holds more than `connections_max` connections (a
//! shared atomic reserved before a connection is admitted and released exactly once
//! when it is removed); an outbox message for a stale id is dropped and counted.

use crate::metrics::NetMetrics;
use crate::net::conn_id::{ConnId, ConnSlab};
use crate::net::connection::{CloseReason, ConnLimits, Connection, Refusal};
use crate::net::handler::{FrameHandler, Replies};
use crate::net::outbox::{Lane, OutKind, Outbox};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// Outbox messages applied per loop iteration, so one loop turn stays short.
pub(crate) const OUTBOX_BATCH_MAX: usize = 4096;

/// State shared by every gateway thread of the process.
pub struct Shared {
    pub(crate) shutdown: AtomicBool,
    pub(crate) connections_open: AtomicUsize,
    pub(crate) connections_max: usize,
    pub(crate) metrics: NetMetrics,
    pub(crate) started: Instant,
}

impl Shared {
    pub(crate) fn new(connections_max: usize, metrics: NetMetrics) -> Shared {
        assert!(connections_max >= 1);
        Shared {
            shutdown: AtomicBool::new(false),
            connections_open: AtomicUsize::new(0),
            connections_max,
            metrics,
            started: Instant::now(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Reserves room for one connection; false at `connections_max`.
    pub(crate) fn try_reserve_connection(&self) -> bool {
        let before = self.connections_open.fetch_add(1, Ordering::AcqRel);
        if before >= self.connections_max {
            self.connections_open.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.metrics.connections_open.add(1);
        self.metrics.connections_accepted.inc();
        true
    }

    pub(crate) fn release_connection(&self) {
        let before = self.connections_open.fetch_sub(1, Ordering::AcqRel);
        assert!(before >= 1, "connection released twice");
        self.metrics.connections_open.add(-1);
    }
}

/// Per-thread settings the backends share.
#[derive(Clone)]
pub(crate) struct ThreadSettings {
    pub(crate) thread_index: u8,
    pub(crate) limits: ConnLimits,
    pub(crate) spin: bool,
    pub(crate) tick_ms: u64,
}

impl ThreadSettings {
    pub(crate) fn new(thread_index: u8, limits: ConnLimits, spin: bool) -> ThreadSettings {
        // Idle connections are swept at a quarter of the timeout, at most once a second.
        let tick_ms = (limits.idle_timeout_ms / 4).clamp(1, 1_000);
        ThreadSettings {
            thread_index,
            limits,
            spin,
            tick_ms,
        }
    }
}

/// Hands every whole frame the connection will yield to the handler.
pub(crate) fn dispatch_frames<H: FrameHandler>(
    handler: &mut H,
    shared: &Shared,
    id: ConnId,
    conn: &mut Connection,
) {
    loop {
        let next = conn.next_frame(&mut |refusal, out| handler.error_frame(refusal, out));
        let Some(frame) = next else { break };
        shared.metrics.frames_received.inc();
        let mut replies = Replies::new(conn);
        handler.on_frame(id, frame, &mut replies);
    }
    if let Some(CloseReason::Frame(error)) = conn.close_reason() {
        tracing::debug!(%id, %error, "bad frame: error frame queued, closing");
    }
}

/// The error frame refusing a connection at `connections_max`.
pub(crate) fn refusal_bytes<H: FrameHandler>(handler: &mut H, shared: &Shared) -> Vec<u8> {
    let mut out = Vec::new();
    handler.error_frame(
        &Refusal::ConnectionsMax {
            connections_max: shared.connections_max,
        },
        &mut out,
    );
    out
}

/// Applies up to `OUTBOX_BATCH_MAX` messages from `lane`; pushes the ids touched.
/// Re-wakes the lane if messages remain, so the next wait returns at once.
pub(crate) fn drain_outbox<T>(
    lane: &Lane,
    outbox: &Outbox,
    slab: &mut ConnSlab<T>,
    conn_of: impl Fn(&mut T) -> &mut Connection,
    shared: &Shared,
    touched: &mut Vec<ConnId>,
) {
    lane.begin_drain();
    for _ in 0..OUTBOX_BATCH_MAX {
        let Some(msg) = lane.queue.pop() else { return };
        if let OutKind::Run(job) = msg.kind {
            lane.pushing_to_self();
            job(outbox);
            lane.begin_drain();
            continue;
        }
        let Some(entry) = slab.get_mut(msg.conn) else {
            shared.metrics.outbox_stale.inc();
            continue;
        };
        let conn = conn_of(entry);
        match msg.kind {
            OutKind::Send { bytes, answers } => {
                // Bytes first: a half-closed connection closes on its last answer
                // once nothing is queued (R-ID-6).
                if !bytes.is_empty() {
                    conn.queue_frame(&bytes);
                }
                if answers > 0 && !conn.on_answered(answers) {
                    tracing::debug!(id = %msg.conn, answers, "more answers than frames in flight");
                }
            }
            OutKind::Close => conn.close_after_flush(CloseReason::ByOutbox),
            OutKind::Run(_) => unreachable!("jobs run above"),
        }
        touched.push(msg.conn);
    }
    if !lane.queue.is_empty() {
        lane.force_wake();
    }
}

/// Logs and counts a closed connection and tells the handler; the caller removes it.
pub(crate) fn on_removed<H: FrameHandler>(
    handler: &mut H,
    shared: &Shared,
    id: ConnId,
    reason: &CloseReason,
) {
    match reason {
        CloseReason::SendBufferFull { .. } | CloseReason::IdleTimeout { .. } => {
            tracing::info!(%id, %reason, "connection closed")
        }
        _ => tracing::debug!(%id, %reason, "connection closed"),
    }
    shared.metrics.closed(reason.label());
    handler.on_close(id, reason);
    shared.release_connection();
}
