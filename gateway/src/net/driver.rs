//! What both backends do the same way around the sans-IO `Connection`: handing
//! frames to the handler, applying outbox messages, counting connections against
//! `connections_max`, and the shutdown flag.
//!
//! Guarantees: the process never holds more than `connections_max` connections (a
//! shared atomic reserved before a connection is admitted and released exactly once
//! when it is removed); an outbox message for a stale id is dropped and counted.

use crate::metrics::NetMetrics;
use crate::net::conn_id::{ConnId, ConnSlab};
use crate::net::connection::{CloseReason, ConnLimits, Connection, Refusal, EVICT_SILENT_MIN_MS};
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
    /// §9: connections below `Standing::Staked` per gateway thread, at most
    /// (`network.connections_unproven_max` shared out among the threads).
    pub(crate) unproven_per_thread_max: usize,
    pub(crate) metrics: NetMetrics,
    pub(crate) started: Instant,
}

impl Shared {
    #[cfg(test)]
    pub(crate) fn new(connections_max: usize, metrics: NetMetrics) -> Shared {
        Shared::with_unproven(connections_max, connections_max, metrics)
    }

    pub(crate) fn with_unproven(
        connections_max: usize,
        unproven_per_thread_max: usize,
        metrics: NetMetrics,
    ) -> Shared {
        assert!(connections_max >= 1);
        assert!((1..=connections_max).contains(&unproven_per_thread_max));
        Shared {
            shutdown: AtomicBool::new(false),
            connections_open: AtomicUsize::new(0),
            connections_max,
            unproven_per_thread_max,
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

    /// §9: reserves room past `connections_max`, at most `ADMIT_BY_EVICTION_OVER_MAX`
    /// over, for a connection admitted in exchange for an idle unproven one being
    /// closed (`admit_by_eviction`); false when that many are over already. The
    /// overshoot lasts until the evicted connections have flushed their error frame
    /// and are removed, and fits in `network.fds_reserved` (validated at least 64).
    pub(crate) fn try_reserve_over(&self) -> bool {
        let before = self.connections_open.fetch_add(1, Ordering::AcqRel);
        if before >= self.connections_max + ADMIT_BY_EVICTION_OVER_MAX {
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

    /// How many idle connections of the lowest standing this thread should close to
    /// keep room (§9): enough to bring the process below a sixteenth short of
    /// `connections_max`, or this thread back to its share of unproven connections
    /// (`unproven`, counted by the caller only when the cheap test says it matters).
    pub(crate) fn evictions_needed(&self, unproven: impl FnOnce() -> usize) -> usize {
        let open = self.connections_open.load(Ordering::Acquire);
        let high_water = self.connections_max - self.connections_max / 16;
        let over_high_water = (open + 1).saturating_sub(high_water.max(1));
        let over_share = if open > self.unproven_per_thread_max {
            unproven().saturating_sub(self.unproven_per_thread_max)
        } else {
            0
        };
        over_high_water.max(over_share)
    }
}

/// §9: what a gateway thread does after an accept fails for want of descriptors or
/// memory: it stops accepting for `network.accept_backoff_ms` (instead of retrying
/// in a tight loop) and logs at most one line per `accept_error_log_interval_ms`,
/// with the count since the last one.
pub(crate) struct AcceptBackoff {
    backoff_ms: u64,
    log_interval_ms: u64,
    paused_until_ms: u64,
    /// An accept failed and has not been tried again since.
    retry_pending: bool,
    unlogged: u64,
    last_log_ms: Option<u64>,
}

impl AcceptBackoff {
    pub(crate) fn new(backoff_ms: u64, log_interval_ms: u64) -> AcceptBackoff {
        assert!(backoff_ms >= 1 && log_interval_ms >= 1);
        AcceptBackoff {
            backoff_ms,
            log_interval_ms,
            paused_until_ms: 0,
            retry_pending: false,
            unlogged: 0,
            last_log_ms: None,
        }
    }

    /// Counts an accept error at `now_ms` and pauses accepting; logs if due.
    pub(crate) fn on_error(&mut self, error: &std::io::Error, now_ms: u64, shared: &Shared) {
        shared.metrics.accept_errors.inc();
        self.paused_until_ms = now_ms + self.backoff_ms;
        self.retry_pending = true;
        self.unlogged += 1;
        let due = self
            .last_log_ms
            .is_none_or(|last| now_ms.saturating_sub(last) >= self.log_interval_ms);
        if due {
            tracing::warn!(
                %error,
                errors = self.unlogged,
                connections_open = shared.connections_open.load(Ordering::Relaxed),
                connections_max = shared.connections_max,
                pause_ms = self.backoff_ms,
                "accept failed (count since the last such line); accepting pauses after each"
            );
            self.unlogged = 0;
            self.last_log_ms = Some(now_ms);
        }
        debug_assert!(self.paused(now_ms));
    }

    pub(crate) fn paused(&self, now_ms: u64) -> bool {
        now_ms < self.paused_until_ms
    }

    /// How long a wait may last before accepting must be tried again: None when no
    /// failed accept waits for a retry.
    pub(crate) fn wait_ms(&self, now_ms: u64) -> Option<u64> {
        self.retry_pending
            .then(|| self.paused_until_ms.saturating_sub(now_ms).max(1))
    }

    /// True once when the pause after a failed accept is over: try again now.
    pub(crate) fn retry_due(&mut self, now_ms: u64) -> bool {
        if self.retry_pending && !self.paused(now_ms) {
            self.retry_pending = false;
            return true;
        }
        false
    }
}

/// §9: the `count` connections of this thread to close first for room: open, not
/// staked, idle (`Connection::evictable`), lowest standing first, then longest idle.
pub(crate) fn eviction_candidates<T>(
    slab: &mut ConnSlab<T>,
    conn: impl Fn(&mut T) -> &mut Connection,
    now_ms: u64,
    count: usize,
) -> Vec<ConnId> {
    let mut candidates: Vec<((crate::net::Standing, u64), ConnId)> = Vec::new();
    for id in slab.ids() {
        let Some(entry) = slab.get_mut(id) else {
            continue;
        };
        let c = conn(entry);
        if c.evictable(now_ms) {
            candidates.push(((c.standing(), c.last_active_ms()), id));
        }
    }
    if candidates.len() > count {
        candidates.select_nth_unstable(count);
        candidates.truncate(count);
    }
    debug_assert!(candidates.len() <= count);
    candidates.into_iter().map(|(_, id)| id).collect()
}

thread_local! {
    /// This gateway thread's last fruitless `admit_by_eviction` scan found no
    /// connection that could be evicted before this time (`Shared::now_ms`).
    static NO_EVICTABLE_BEFORE_MS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// §9: connections admitted past `connections_max` while the idle connections they
/// replace are being closed, at most (half of `network.fds_reserved`'s minimum, 64).
pub(crate) const ADMIT_BY_EVICTION_OVER_MAX: usize = 32;

/// Slab capacity per gateway thread: every connection of the process may be on one
/// thread, plus those admitted by eviction.
pub(crate) fn slab_capacity(connections_max: usize) -> usize {
    connections_max + ADMIT_BY_EVICTION_OVER_MAX
}

/// §9, issue 27 case 13: a new connection at `connections_max` is admitted when this
/// thread holds an idle unproven connection (never logged in, silent past
/// `EVICT_SILENT_MIN_MS` or idle past `EVICT_IDLE_MIN_MS`): the oldest idle one is
/// closed with `evicted` and the new one takes its place, so an honest client's first
/// attempt gets in (and, once logged in with MOR, is staked and never evicted) while
/// anyone's idle connections are there to evict. A logged-in connection is never
/// evicted this way. Returns whether room was reserved (then the caller admits).
pub(crate) fn admit_by_eviction<H: FrameHandler, T>(
    handler: &mut H,
    shared: &Shared,
    slab: &mut ConnSlab<T>,
    conn: impl Fn(&mut T) -> &mut Connection,
    touched: &mut Vec<ConnId>,
) -> bool {
    let now_ms = shared.now_ms();
    // A storm of connections at the limit with nothing to evict must not cost a scan
    // of every connection per refused accept: after a fruitless scan, none until the
    // first unproven connection can have become idle enough (at most
    // `EVICT_SILENT_MIN_MS` later: younger ones become evictable no sooner).
    if NO_EVICTABLE_BEFORE_MS.with(|t| now_ms < t.get()) {
        return false;
    }
    let mut oldest: Option<(u64, ConnId)> = None;
    let mut unproven_since: Option<u64> = None;
    for id in slab.ids() {
        let Some(entry) = slab.get_mut(id) else {
            continue;
        };
        let c = conn(entry);
        if c.standing() != crate::net::Standing::Unproven || !c.is_open() {
            continue;
        }
        unproven_since =
            Some(unproven_since.map_or(c.last_active_ms(), |at| at.min(c.last_active_ms())));
        if c.evictable(now_ms) && oldest.is_none_or(|(at, _)| c.last_active_ms() < at) {
            oldest = Some((c.last_active_ms(), id));
        }
    }
    let Some((_, id)) = oldest else {
        // The oldest unproven connection is evictable at the earliest
        // EVICT_SILENT_MIN_MS after its last activity; later ones later still.
        let retry_at = unproven_since.map_or(now_ms + EVICT_SILENT_MIN_MS, |at| {
            (at + EVICT_SILENT_MIN_MS).clamp(now_ms + 1, now_ms + EVICT_SILENT_MIN_MS)
        });
        NO_EVICTABLE_BEFORE_MS.with(|t| t.set(retry_at));
        return false;
    };
    if !shared.try_reserve_over() {
        return false;
    }
    let connections_open = shared.connections_open.load(Ordering::Relaxed);
    let entry = slab
        .get_mut(id)
        .expect("the candidate was just found in the slab");
    let c = conn(entry);
    debug_assert!(c.standing() == crate::net::Standing::Unproven);
    close_with(
        handler,
        c,
        Refusal::Evicted { connections_open },
        CloseReason::Evicted,
    );
    shared.metrics.connections_admitted_by_eviction.inc();
    touched.push(id);
    true
}

/// Counts this thread's connections below `Standing::Staked`.
pub(crate) fn unproven_count<T>(
    slab: &mut ConnSlab<T>,
    conn: impl Fn(&mut T) -> &mut Connection,
) -> usize {
    let mut count = 0;
    for id in slab.ids() {
        if let Some(entry) = slab.get_mut(id) {
            let c = conn(entry);
            count += (c.is_open() && c.standing() < crate::net::Standing::Staked) as usize;
        }
    }
    count
}

/// Closes `id` with the handler's error frame for `refusal` sent first.
pub(crate) fn close_with<H: FrameHandler>(
    handler: &mut H,
    conn: &mut Connection,
    refusal: Refusal,
    reason: CloseReason,
) {
    let mut out = Vec::new();
    handler.error_frame(&refusal, &mut out);
    conn.queue_frame(&out);
    conn.close_after_flush(reason);
}

/// Closes up to `at_most` idle connections of the lowest standing on this thread
/// when room is needed (§9): one after each accept, as many as needed on the idle
/// sweep. The ids closed go to `touched` (to be serviced: flushed, then removed).
pub(crate) fn make_room<H: FrameHandler, T>(
    handler: &mut H,
    shared: &Shared,
    slab: &mut ConnSlab<T>,
    conn: impl Fn(&mut T) -> &mut Connection + Copy,
    at_most: usize,
    touched: &mut Vec<ConnId>,
) {
    let needed = shared
        .evictions_needed(|| unproven_count(slab, conn))
        .min(at_most);
    if needed == 0 {
        return;
    }
    let connections_open = shared.connections_open.load(Ordering::Relaxed);
    for id in eviction_candidates(slab, conn, shared.now_ms(), needed) {
        let entry = slab.get_mut(id).expect("a candidate is in the slab");
        close_with(
            handler,
            conn(entry),
            Refusal::Evicted { connections_open },
            CloseReason::Evicted,
        );
        touched.push(id);
    }
}

/// The login timeout (§9), checked on the idle sweep: closes `c` with a frame if due.
pub(crate) fn login_timeout<H: FrameHandler>(
    handler: &mut H,
    c: &mut Connection,
    now_ms: u64,
) -> bool {
    if !c.login_overdue(now_ms) {
        return false;
    }
    let login_timeout_ms = c.limits().login_timeout_ms;
    close_with(
        handler,
        c,
        Refusal::LoginTimeout { login_timeout_ms },
        CloseReason::LoginTimeout { login_timeout_ms },
    );
    true
}

/// Per-thread settings the backends share.
#[derive(Clone)]
pub(crate) struct ThreadSettings {
    pub(crate) thread_index: u8,
    pub(crate) limits: ConnLimits,
    pub(crate) spin: bool,
    pub(crate) tick_ms: u64,
    /// `network.accept_backoff_ms`.
    pub(crate) accept_backoff_ms: u64,
    /// `network.accept_error_log_interval_ms`.
    pub(crate) accept_error_log_interval_ms: u64,
}

impl ThreadSettings {
    /// The accept pause and its log interval (§9).
    pub(crate) fn with_accept_backoff(mut self, backoff_ms: u64, log_interval_ms: u64) -> Self {
        self.accept_backoff_ms = backoff_ms.max(1);
        self.accept_error_log_interval_ms = log_interval_ms.max(1);
        self
    }

    pub(crate) fn new(thread_index: u8, limits: ConnLimits, spin: bool) -> ThreadSettings {
        // Idle connections are swept at a quarter of the timeout (idle or login), at
        // most once a second.
        let tick_ms = (limits.idle_timeout_ms.min(limits.login_timeout_ms) / 4).clamp(1, 1_000);
        ThreadSettings {
            thread_index,
            limits,
            spin,
            tick_ms,
            accept_backoff_ms: 100,
            accept_error_log_interval_ms: 10_000,
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
    // One clock read for the frames of one receive: the handler decides with it.
    let now = Instant::now();
    loop {
        let next = conn.next_frame(&mut |refusal, out| handler.error_frame(refusal, out));
        let Some(frame) = next else { break };
        shared.metrics.frames_received.inc();
        let mut replies = Replies::new(conn);
        handler.on_frame(id, frame, now, &mut replies);
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
/// Answer marks kept aside on a full lane (`Outbox::reply`) are applied once the
/// queue has been seen empty after taking them, i.e. after every message pushed
/// before them (bytes first: a half-closed connection closes on its last answer
/// once nothing is queued, R-ID-6). Messages left over stay for the next turn: the
/// backend does not sleep while the lane holds any (`Lane::prepare_sleep`).
pub(crate) fn drain_outbox<T>(
    lane: &Lane,
    outbox: &Outbox,
    slab: &mut ConnSlab<T>,
    conn_of: impl Fn(&mut T) -> &mut Connection,
    shared: &Shared,
    touched: &mut Vec<ConnId>,
    kept: &mut Vec<(ConnId, u32)>,
) {
    debug_assert!(kept.is_empty());
    lane.take_answers(kept);
    let mut drained = false;
    for _ in 0..OUTBOX_BATCH_MAX {
        let Some(msg) = lane.queue.pop() else {
            drained = true;
            break;
        };
        if let OutKind::Run(job) = msg.kind {
            job(outbox);
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
    if !drained {
        lane.restore_answers(kept);
        return;
    }
    for (id, answers) in kept.drain(..) {
        let Some(entry) = slab.get_mut(id) else {
            shared.metrics.outbox_stale.inc();
            continue;
        };
        if !conn_of(entry).on_answered(answers) {
            tracing::debug!(%id, answers, "more answers than frames in flight");
        }
        touched.push(id);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_9_accept_errors_pause_and_log_once_per_interval() {
        let shared = Shared::new(8, NetMetrics::new(&Registry::new()));
        let mut backoff = AcceptBackoff::new(100, 10_000);
        assert_eq!(backoff.wait_ms(0), None, "nothing to retry");
        let error = std::io::Error::from_raw_os_error(libc::EMFILE);
        for now in 0..1_000u64 {
            backoff.on_error(&error, now, &shared);
        }
        assert_eq!(
            backoff.unlogged, 999,
            "one line for the first, the rest counted"
        );
        assert!(backoff.paused(1_050) && !backoff.retry_due(1_050));
        assert_eq!(backoff.wait_ms(1_050), Some(49));
        assert!(backoff.retry_due(1_099), "the pause is over");
        assert!(!backoff.retry_due(1_100), "once");
        backoff.on_error(&error, 10_000, &shared);
        assert_eq!(backoff.unlogged, 0, "logged again after the interval");
    }

    #[test]
    fn section_9_evictions_keep_a_sixteenth_free_and_the_unproven_share() {
        let shared = Shared::with_unproven(32, 10, NetMetrics::new(&Registry::new()));
        for _ in 0..29 {
            assert!(shared.try_reserve_connection());
        }
        // High water 30: one more, and one must go.
        assert_eq!(shared.evictions_needed(|| 0), 0);
        assert!(shared.try_reserve_connection());
        assert_eq!(shared.evictions_needed(|| 0), 1);
        // Past the unproven share, the excess goes.
        assert_eq!(shared.evictions_needed(|| 15), 5);
    }
    use crate::metrics::Registry;
    use crate::net::outbox::{Lane, OutboxError};
    use yellowstone_wire::frame::encode_frame;

    fn limits() -> ConnLimits {
        ConnLimits {
            frame_bytes_max: 1024,
            inflight_frames_max: 2,
            send_bytes_max: 64 * 1024,
            idle_timeout_ms: 60_000,
            login_timeout_ms: 60_000,
        }
    }

    fn frame(msg_type: u16) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(msg_type, 0, b"x", &mut out);
        out
    }

    /// A connection on thread 0 with `frames` frames handed out (in flight).
    fn with_inflight(slab: &mut ConnSlab<Connection>, frames: u16) -> ConnId {
        let id = slab
            .insert_with(|_| Connection::new(limits(), 0))
            .expect("room");
        let conn = slab.get_mut(id).expect("inserted");
        for t in 0..frames {
            conn.on_bytes(&frame(t + 1), 0);
            assert!(conn.next_frame(&mut |_, _| {}).is_some());
        }
        assert_eq!(conn.inflight_frames(), u32::from(frames));
        id
    }

    fn drain(outbox: &Outbox, slab: &mut ConnSlab<Connection>, shared: &Shared) -> Vec<ConnId> {
        let (mut touched, mut kept) = (Vec::new(), Vec::new());
        drain_outbox(
            outbox.lane(0),
            outbox,
            slab,
            |c| c,
            shared,
            &mut touched,
            &mut kept,
        );
        assert!(kept.is_empty(), "kept marks are applied or put back");
        touched
    }

    #[test]
    fn a_full_lane_drops_the_bytes_but_never_the_answer_mark() {
        let shared = Shared::new(8, NetMetrics::new(&Registry::new()));
        let outbox = Outbox::new(vec![Lane::new(1).unwrap()]);
        let mut slab = ConnSlab::with_capacity(0, 8);
        let id = with_inflight(&mut slab, 2);
        outbox.send(id, frame(100)).unwrap();
        // The lane (depth 1) is full: both answers find no room.
        assert_eq!(outbox.reply(id, frame(101)), Err(OutboxError::Full));
        assert_eq!(outbox.answer(id, 1), Ok(()), "a bare mark is never refused");
        assert_eq!(outbox.send(id, frame(102)), Err(OutboxError::Full));
        let touched = drain(&outbox, &mut slab, &shared);
        assert!(touched.contains(&id));
        let conn = slab.get_mut(id).unwrap();
        assert_eq!(conn.inflight_frames(), 0, "both in-flight frames answered");
        // Only the message that fitted was queued.
        let sent = conn.poll_transmit().expect("the pushed frame").to_vec();
        assert_eq!(sent, frame(100));
    }

    #[test]
    fn kept_marks_follow_the_messages_pushed_before_them() {
        let shared = Shared::new(8, NetMetrics::new(&Registry::new()));
        let outbox = Outbox::new(vec![Lane::new(1).unwrap()]);
        let mut slab = ConnSlab::with_capacity(0, 8);
        let id = with_inflight(&mut slab, 1);
        // The client shut its write side: the connection closes on its last answer
        // once nothing is queued (R-ID-6), so the earlier push must go out first.
        let conn = slab.get_mut(id).unwrap();
        conn.on_peer_closed();
        assert!(conn.next_frame(&mut |_, _| {}).is_none());
        assert!(conn.is_half_closed());
        outbox.send(id, frame(100)).unwrap();
        assert_eq!(outbox.reply(id, frame(101)), Err(OutboxError::Full));
        drain(&outbox, &mut slab, &shared);
        let conn = slab.get_mut(id).unwrap();
        assert_eq!(conn.inflight_frames(), 0);
        assert_eq!(conn.poll_transmit().map(<[u8]>::to_vec), Some(frame(100)));
        let n = frame(100).len();
        conn.on_sent(n, 1);
        assert!(conn.is_closed(), "closes once the earlier push is sent");
    }

    #[test]
    fn kept_marks_wait_while_older_messages_remain_in_the_lane() {
        let shared = Shared::new(8, NetMetrics::new(&Registry::new()));
        let depth = OUTBOX_BATCH_MAX + 1;
        let outbox = Outbox::new(vec![Lane::new(depth).unwrap()]);
        let mut slab = ConnSlab::with_capacity(0, 8);
        let id = with_inflight(&mut slab, 1);
        for _ in 0..depth {
            outbox.send(id, Vec::new()).unwrap();
        }
        assert_eq!(outbox.answer(id, 1), Ok(()));
        // The first turn stops at the batch limit with one older message left:
        // the mark waits, and the lane does not let the thread sleep.
        drain(&outbox, &mut slab, &shared);
        assert_eq!(slab.get_mut(id).unwrap().inflight_frames(), 1);
        assert!(!outbox.lane(0).prepare_sleep());
        drain(&outbox, &mut slab, &shared);
        assert_eq!(slab.get_mut(id).unwrap().inflight_frames(), 0);
        assert!(outbox.lane(0).prepare_sleep(), "nothing left: may sleep");
        outbox.lane(0).awake();
    }

    #[test]
    fn a_kept_mark_for_a_closed_connection_is_counted_stale() {
        let registry = Registry::new();
        let shared = Shared::new(8, NetMetrics::new(&registry));
        let outbox = Outbox::new(vec![Lane::new(1).unwrap()]);
        let mut slab = ConnSlab::with_capacity(0, 8);
        let id = with_inflight(&mut slab, 1);
        outbox.send(id, frame(1)).unwrap();
        assert_eq!(outbox.answer(id, 1), Ok(()));
        slab.remove(id);
        let reuser = with_inflight(&mut slab, 1);
        drain(&outbox, &mut slab, &shared);
        assert_eq!(slab.get_mut(reuser).unwrap().inflight_frames(), 1);
        assert!(registry
            .render()
            .contains("yellowstone_outbox_stale_total 2"));
    }
}
