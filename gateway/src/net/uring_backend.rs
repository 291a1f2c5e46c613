//! The io_uring backend: one ring per gateway thread driving the same `Connection`.
//!
//! Multishot accept; multishot receive into a provided buffer ring (re-armed when a
//! completion lacks IORING_CQE_F_MORE; ENOBUFS is "ring empty": buffers are returned
//! and the receive re-armed); one coalesced send per connection at a time; the
//! outbox eventfd read by the ring; every loop turn fills the submission queue and
//! makes one `submit_with_args` (wait for 1 completion or the idle-sweep tick).
//!
//! Guarantees: the kernel owns a buffer while its operation is in flight: a provided
//! buffer is returned to the ring only after its completion has been copied into the
//! connection's decoder; a send's bytes (`Connection::poll_transmit`) are not touched
//! until its completion; a connection (and its socket and buffers) is removed from
//! the slab only when neither a receive nor a send of it is in flight, so a
//! completion's `user_data` (kind | generation | slot) always finds its connection.

use crate::config::NetworkConfig;
use crate::net::conn_id::{ConnId, ConnSlab};
use crate::net::connection::{CloseReason, Connection};
use crate::net::driver::{self, Shared, ThreadSettings};
use crate::net::handler::FrameHandler;
use crate::net::outbox::{Lane, Outbox};
use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

const KIND_SHIFT: u32 = 56;
const ID_MASK: u64 = (1 << KIND_SHIFT) - 1;
const KIND_ACCEPT: u64 = 1;
const KIND_WAKE: u64 = 2;
const KIND_RECV: u64 = 3;
const KIND_SEND: u64 = 4;
const KIND_CANCEL: u64 = 5;
const BUFFER_GROUP: u16 = 0;
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

fn user_data(kind: u64, id: ConnId) -> u64 {
    (kind << KIND_SHIFT) | (id.as_u64() & ID_MASK)
}

/// The provided buffer ring: `entries` buffers of `buffer_bytes`, shared with the kernel.
struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    buffers: Vec<u8>,
    buffer_bytes: usize,
    entries: u16,
    tail: u16,
}

impl BufRing {
    fn new(entries: u16, buffer_bytes: u32) -> io::Result<BufRing> {
        assert!(entries.is_power_of_two());
        let ring_layout =
            Layout::from_size_align(entries as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(io::Error::other)?;
        // SAFETY: non-zero size; checked for null below; freed in Drop with the same layout.
        let ring = unsafe { alloc_zeroed(ring_layout) }.cast::<BufRingEntry>();
        if ring.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut bufs = BufRing {
            ring,
            ring_layout,
            buffers: vec![0u8; entries as usize * buffer_bytes as usize],
            buffer_bytes: buffer_bytes as usize,
            entries,
            tail: 0,
        };
        for bid in 0..entries {
            bufs.give_back(bid);
        }
        bufs.publish();
        Ok(bufs)
    }

    /// Puts buffer `bid` back in the ring (visible to the kernel after `publish`).
    fn give_back(&mut self, bid: u16) {
        assert!(bid < self.entries);
        let index = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: index < entries, inside the allocation; the kernel reads entries only
        // up to the published tail, and this one is past it.
        let entry = unsafe { &mut *self.ring.add(index) };
        let offset = bid as usize * self.buffer_bytes;
        entry.set_addr(self.buffers[offset..].as_ptr() as u64);
        entry.set_len(self.buffer_bytes as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field of the first entry, as the kernel ABI defines it.
        let tail = unsafe { &*(BufRingEntry::tail(self.ring).cast::<AtomicU16>()) };
        tail.store(self.tail, Ordering::Release);
    }

    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buffer_bytes);
        let offset = bid as usize * self.buffer_bytes;
        &self.buffers[offset..offset + len]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it is gone
        // (`UringLoop` declares `ring` before `bufs`, so it is dropped first).
        unsafe { dealloc(self.ring.cast(), self.ring_layout) };
    }
}

struct UringConn {
    conn: Connection,
    stream: TcpStream,
    recv_armed: bool,
    recv_cancelling: bool,
    send_in_flight: bool,
    shut_down: bool,
}

pub(crate) struct UringLoop<'a> {
    // Field order matters: the ring is dropped (and its operations cancelled) before
    // the buffers it may reference.
    ring: IoUring,
    bufs: BufRing,
    wake_buf: Box<u64>,
    settings: ThreadSettings,
    shared: &'a Shared,
    lane: &'a Lane,
    outbox: &'a Outbox,
    slab: ConnSlab<UringConn>,
    cqes: Vec<(u64, i32, u32)>,
    touched: Vec<ConnId>,
    kept_answers: Vec<(ConnId, u32)>,
    listener_fd: RawFd,
    /// The multishot accept is in the kernel (it ends on an error).
    accept_armed: bool,
    /// §9: the pause after a failed accept, and its rate-limited log.
    accept_backoff: driver::AcceptBackoff,
}

fn build_ring(network: &NetworkConfig, spin: bool, thread: u8) -> io::Result<IoUring> {
    let entries = network.uring_entries;
    if network.uring_sqpoll {
        match IoUring::builder().setup_sqpoll(1_000).build(entries) {
            Ok(ring) => {
                tracing::info!(thread, "io_uring: SQPOLL granted");
                return Ok(ring);
            }
            Err(error) => tracing::warn!(thread, %error, "io_uring: SQPOLL refused"),
        }
    }
    // DEFER_TASKRUN runs completions only when we wait: not for spin mode.
    if !spin && network.uring_defer_taskrun {
        if let Ok(ring) = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
        {
            tracing::debug!(thread, "io_uring: SINGLE_ISSUER | DEFER_TASKRUN granted");
            return Ok(ring);
        }
    }
    if let Ok(ring) = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries)
    {
        tracing::info!(thread, "io_uring: COOP_TASKRUN granted");
        return Ok(ring);
    }
    let ring = IoUring::builder().build(entries)?;
    tracing::info!(thread, "io_uring: no setup flags granted");
    Ok(ring)
}

impl<'a> UringLoop<'a> {
    pub(crate) fn setup(
        network: &NetworkConfig,
        settings: ThreadSettings,
        shared: &'a Shared,
        outbox: &'a Outbox,
        listener: &std::net::TcpListener,
    ) -> io::Result<UringLoop<'a>> {
        let ring = build_ring(network, settings.spin, settings.thread_index)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::other("io_uring lacks EXT_ARG (kernel < 5.11)"));
        }
        let bufs = BufRing::new(network.uring_buffers, network.uring_buffer_bytes)?;
        // SAFETY: the ring memory lives in `bufs`, dropped after `ring`.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring as u64,
                bufs.entries,
                BUFFER_GROUP,
                0,
            )?;
        }
        let lane = outbox.lane(settings.thread_index);
        let mut this = UringLoop {
            ring,
            bufs,
            wake_buf: Box::new(0),
            slab: ConnSlab::with_capacity(
                settings.thread_index,
                driver::slab_capacity(shared.connections_max),
            ),
            settings: settings.clone(),
            shared,
            lane,
            outbox,
            cqes: Vec::with_capacity(1024),
            touched: Vec::new(),
            kept_answers: Vec::new(),
            listener_fd: listener.as_raw_fd(),
            accept_armed: false,
            accept_backoff: driver::AcceptBackoff::new(
                settings.accept_backoff_ms,
                settings.accept_error_log_interval_ms,
            ),
        };
        this.arm_accept()?;
        this.arm_wake()?;
        Ok(this)
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry's buffers outlive its operation (see the module doc).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let entry = opcode::AcceptMulti::new(Fd(self.listener_fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(KIND_ACCEPT << KIND_SHIFT);
        self.push(entry)?;
        self.accept_armed = true;
        Ok(())
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(Fd(self.lane.wake.raw_fd()), buf.cast(), 8)
            .build()
            .user_data(KIND_WAKE << KIND_SHIFT);
        self.push(entry)
    }

    /// Runs until shutdown; `listener` stays open as long as the accept is armed.
    pub(crate) fn run<H: FrameHandler>(
        mut self,
        mut handler: H,
        listener: std::net::TcpListener,
    ) -> io::Result<()> {
        let mut next_tick_ms = self.shared.now_ms() + self.settings.tick_ms;
        let mut kept_work = false;
        while !self.shared.is_shutdown() {
            // Sleep only with nothing to drain and no work kept back by the handler;
            // a sender then wakes the wait.
            let wait_ms = if self.settings.spin || kept_work || !self.lane.prepare_sleep() {
                0
            } else {
                let now_ms = self.shared.now_ms();
                let accept_wait_ms = self.accept_backoff.wait_ms(now_ms).unwrap_or(u64::MAX);
                next_tick_ms
                    .saturating_sub(now_ms)
                    .max(1)
                    .min(accept_wait_ms)
            };
            self.submit_and_wait(wait_ms)?;
            self.lane.awake();
            self.complete(&mut handler)?;
            // §9: an accept that failed is armed again only after its pause, never in
            // a loop (each failure would complete at once and spin a core).
            if self.accept_backoff.retry_due(self.shared.now_ms())
                && !self.accept_armed
                && !self.shared.is_shutdown()
            {
                self.arm_accept()?;
            }
            driver::drain_outbox(
                self.lane,
                self.outbox,
                &mut self.slab,
                |entry| &mut entry.conn,
                self.shared,
                &mut self.touched,
                &mut self.kept_answers,
            );
            let now_ms = self.shared.now_ms();
            if now_ms >= next_tick_ms {
                next_tick_ms = now_ms + self.settings.tick_ms;
                for id in self.slab.ids() {
                    if let Some(entry) = self.slab.get_mut(id) {
                        if entry.conn.on_tick(now_ms)
                            || driver::login_timeout(&mut handler, &mut entry.conn, now_ms)
                        {
                            self.touched.push(id);
                        }
                    }
                }
                // §9: room kept once a flood stops, not only at its next accept.
                driver::make_room(
                    &mut handler,
                    self.shared,
                    &mut self.slab,
                    |e| &mut e.conn,
                    usize::MAX,
                    &mut self.touched,
                );
            }
            self.service_touched(&mut handler)?;
            if handler.has_deferred_work() && !self.ring.submission().is_empty() {
                // Replies and pushes (probes, tickets) leave before the deferred work.
                self.submit_only()?;
            }
            kept_work = handler.end_of_turn(Instant::now());
        }
        while handler.end_of_turn(Instant::now()) {}
        self.close_all(&mut handler)?;
        drop(self);
        drop(listener);
        Ok(())
    }

    /// Submits what the turn queued and waits up to `wait_ms` for a completion (0:
    /// only collects what is ready; with DEFER_TASKRUN that still needs GETEVENTS).
    fn submit_and_wait(&mut self, wait_ms: u64) -> io::Result<()> {
        let result = if self.settings.spin {
            self.ring.submitter().submit()
        } else {
            let ts = Timespec::from(Duration::from_millis(wait_ms));
            let args = SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        match result {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Submits what the turn queued without waiting for or collecting anything.
    fn submit_only(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn complete<H: FrameHandler>(&mut self, handler: &mut H) -> io::Result<()> {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
        for &(data, result, flags) in &cqes {
            let kind = data >> KIND_SHIFT;
            let id = ConnId::from_u64(
                (data & ID_MASK) | (u64::from(self.settings.thread_index) << KIND_SHIFT),
            );
            match kind {
                KIND_ACCEPT => self.on_accept(handler, result, flags)?,
                KIND_WAKE => self.arm_wake()?,
                KIND_RECV => self.on_recv(handler, id, result, flags),
                KIND_SEND => self.on_send(id, result),
                KIND_CANCEL => {}
                _ => unreachable!("user_data kind {kind}"),
            }
        }
        self.bufs.publish();
        self.cqes = cqes;
        Ok(())
    }

    fn on_accept<H: FrameHandler>(
        &mut self,
        handler: &mut H,
        result: i32,
        flags: u32,
    ) -> io::Result<()> {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if result < 0 {
            // EMFILE and friends (§9): the multishot accept ended; it is armed again
            // after a pause (in `run`), and room is made among the connections of
            // the lowest standing meanwhile.
            let error = io::Error::from_raw_os_error(-result);
            self.accept_backoff
                .on_error(&error, self.shared.now_ms(), self.shared);
            driver::make_room(
                handler,
                self.shared,
                &mut self.slab,
                |e| &mut e.conn,
                1,
                &mut self.touched,
            );
            return Ok(());
        }
        if !self.accept_armed && !self.shared.is_shutdown() {
            self.arm_accept()?;
        }
        // SAFETY: a successful accept returns a new descriptor that we now own.
        let stream = unsafe { TcpStream::from_raw_fd(result) };
        if self.shared.is_shutdown() {
            return Ok(());
        }
        // §9: at the limit, an idle unproven connection makes room.
        if !self.shared.try_reserve_connection()
            && !driver::admit_by_eviction(
                handler,
                self.shared,
                &mut self.slab,
                |e: &mut UringConn| &mut e.conn,
                &mut self.touched,
            )
        {
            self.shared.metrics.connections_refused.inc();
            let refusal = driver::refusal_bytes(handler, self.shared);
            // A fresh socket's send buffer is empty: one non-blocking send fits.
            // SAFETY: sends from a valid slice on a descriptor we own.
            let _ = unsafe {
                libc::send(
                    stream.as_raw_fd(),
                    refusal.as_ptr().cast(),
                    refusal.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        let (limits, now_ms) = (self.settings.limits, self.shared.now_ms());
        let inserted = self.slab.insert_with(|_| UringConn {
            conn: Connection::new(limits, now_ms),
            stream,
            recv_armed: false,
            recv_cancelling: false,
            send_in_flight: false,
            shut_down: false,
        });
        let Some(id) = inserted else {
            self.shared.release_connection();
            debug_assert!(false, "slab full below connections_max");
            return Ok(());
        };
        handler.on_open(id, peer);
        self.touched.push(id);
        // §9: near the limit, the oldest idle connection without MOR goes.
        driver::make_room(
            handler,
            self.shared,
            &mut self.slab,
            |e| &mut e.conn,
            1,
            &mut self.touched,
        );
        Ok(())
    }

    fn on_recv<H: FrameHandler>(&mut self, handler: &mut H, id: ConnId, result: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let entry = self
            .slab
            .get_mut(id)
            .expect("a connection is not removed while its receive is in flight");
        if !cqueue::more(flags) {
            entry.recv_armed = false;
            entry.recv_cancelling = false;
        }
        if result > 0 {
            let len = result as usize;
            let bid = bid.expect("a receive with data names its provided buffer");
            self.shared.metrics.bytes_received.add(len as u64);
            entry
                .conn
                .on_bytes(self.bufs.buffer(bid, len), self.shared.now_ms());
            driver::dispatch_frames(handler, self.shared, id, &mut entry.conn);
        } else if result == 0 {
            entry.conn.on_peer_closed();
        } else if result != -libc::ENOBUFS && result != -libc::ECANCELED {
            entry.conn.close_now(CloseReason::Io { errno: -result });
        }
        // The bytes are copied: only now may the kernel reuse the buffer.
        if let Some(bid) = bid {
            self.bufs.give_back(bid);
        }
        self.touched.push(id);
    }

    fn on_send(&mut self, id: ConnId, result: i32) {
        let entry = self
            .slab
            .get_mut(id)
            .expect("a connection is not removed while its send is in flight");
        assert!(entry.send_in_flight);
        entry.send_in_flight = false;
        if result >= 0 {
            self.shared.metrics.bytes_sent.add(result as u64);
            entry.conn.on_sent(result as usize, self.shared.now_ms());
        } else {
            entry.conn.close_now(CloseReason::Io { errno: -result });
        }
        self.touched.push(id);
    }

    fn service_touched<H: FrameHandler>(&mut self, handler: &mut H) -> io::Result<()> {
        let mut touched = std::mem::take(&mut self.touched);
        for id in touched.drain(..) {
            self.service(handler, id)?;
        }
        self.touched = touched;
        Ok(())
    }

    /// Hands out buffered frames, (re-)arms or cancels the receive, starts a send,
    /// and removes a closed connection once nothing of it is in flight.
    fn service<H: FrameHandler>(&mut self, handler: &mut H, id: ConnId) -> io::Result<()> {
        let Some(entry) = self.slab.get_mut(id) else {
            return Ok(());
        };
        driver::dispatch_frames(handler, self.shared, id, &mut entry.conn);
        let fd = Fd(entry.stream.as_raw_fd());
        if entry.conn.is_closed() {
            if !entry.shut_down {
                // Completes an armed receive (with 0) and any pending send.
                entry.shut_down = true;
                let _ = entry.stream.shutdown(std::net::Shutdown::Both);
            }
            if !entry.recv_armed && !entry.send_in_flight {
                self.remove(handler, id);
            }
            return Ok(());
        }
        let wants_recv = entry.conn.wants_recv();
        let mut entries: [Option<squeue::Entry>; 2] = [None, None];
        if wants_recv && !entry.recv_armed {
            entry.recv_armed = true;
            entries[0] = Some(
                opcode::RecvMulti::new(fd, BUFFER_GROUP)
                    .build()
                    .user_data(user_data(KIND_RECV, id)),
            );
        } else if !wants_recv && entry.recv_armed && !entry.recv_cancelling {
            entry.recv_cancelling = true;
            entries[0] = Some(
                opcode::AsyncCancel::new(user_data(KIND_RECV, id))
                    .build()
                    .user_data(user_data(KIND_CANCEL, id)),
            );
        }
        if !entry.send_in_flight {
            if let Some(bytes) = entry.conn.poll_transmit() {
                entry.send_in_flight = true;
                let len = bytes.len().min(u32::MAX as usize) as u32;
                entries[1] = Some(
                    opcode::Send::new(fd, bytes.as_ptr(), len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(user_data(KIND_SEND, id)),
                );
            }
        }
        for entry in entries.into_iter().flatten() {
            self.push(entry)?;
        }
        Ok(())
    }

    fn remove<H: FrameHandler>(&mut self, handler: &mut H, id: ConnId) {
        let Some(entry) = self.slab.remove(id) else {
            return;
        };
        assert!(!entry.recv_armed && !entry.send_in_flight);
        let reason = entry
            .conn
            .close_reason()
            .cloned()
            .unwrap_or(CloseReason::Shutdown);
        drop(entry);
        driver::on_removed(handler, self.shared, id, &reason);
    }

    /// Closes every connection and waits (bounded) for their operations to finish.
    fn close_all<H: FrameHandler>(&mut self, handler: &mut H) -> io::Result<()> {
        for id in self.slab.ids() {
            if let Some(entry) = self.slab.get_mut(id) {
                entry.conn.close_now(CloseReason::Shutdown);
            }
            self.service(handler, id)?;
        }
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while !self.slab.is_empty() && Instant::now() < deadline {
            self.submit_and_wait(10)?;
            self.complete(handler)?;
            self.service_touched(handler)?;
        }
        // Operations still in flight after the deadline: leak their connections'
        // buffers rather than free memory the kernel may still use.
        for id in self.slab.ids() {
            if let Some(entry) = self.slab.get_mut(id) {
                entry.recv_armed = false;
                entry.send_in_flight = false;
                let sending =
                    std::mem::replace(&mut entry.conn, Connection::new(self.settings.limits, 0));
                std::mem::forget(sending);
                entry.conn.close_now(CloseReason::Shutdown);
            }
            tracing::warn!(%id, "operations still in flight at shutdown: buffers leaked");
            self.remove(handler, id);
        }
        Ok(())
    }
}
