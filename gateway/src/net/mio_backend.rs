//! The mio (epoll) backend: the fallback network loop, driving the same `Connection`.
//!
//! Guarantees: the loop blocks in `poll` when idle (a timeout of the idle sweep tick;
//! zero in spin mode); sockets are edge-triggered, so every read runs to EWOULDBLOCK
//! unless the connection's in-flight window is full, and such a connection is read
//! again as soon as an answer frees the window; every closed connection is
//! deregistered, removed and released exactly once.

use crate::net::conn_id::{ConnId, ConnSlab};
use crate::net::connection::{CloseReason, Connection};
use crate::net::driver::{self, Shared, ThreadSettings};
use crate::net::handler::FrameHandler;
use crate::net::outbox::{Lane, Outbox};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);
const FIRST_CONN: usize = 2;
const READ_CHUNK_BYTES: usize = 64 * 1024;
const EVENTS_MAX: usize = 1024;

struct MioConn {
    conn: Connection,
    stream: TcpStream,
    /// Stopped reading before EWOULDBLOCK (window full): read again when it frees.
    read_paused: bool,
}

pub(crate) struct MioLoop<'a, H: FrameHandler> {
    settings: ThreadSettings,
    shared: &'a Shared,
    lane: &'a Lane,
    outbox: &'a Outbox,
    handler: H,
    poll: Poll,
    listener: TcpListener,
    slab: ConnSlab<MioConn>,
    scratch: Vec<u8>,
    touched: Vec<ConnId>,
    kept_answers: Vec<(ConnId, u32)>,
    /// §9: the pause after a failed accept, and its rate-limited log.
    accept_backoff: driver::AcceptBackoff,
}

impl<'a, H: FrameHandler> MioLoop<'a, H> {
    pub(crate) fn new(
        settings: ThreadSettings,
        shared: &'a Shared,
        outbox: &'a Outbox,
        handler: H,
        listener: std::net::TcpListener,
    ) -> io::Result<Self> {
        let lane = outbox.lane(settings.thread_index);
        listener.set_nonblocking(true)?;
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceFd(&lane.wake.raw_fd()), WAKE, Interest::READABLE)?;
        Ok(MioLoop {
            slab: ConnSlab::with_capacity(
                settings.thread_index,
                driver::slab_capacity(shared.connections_max),
            ),
            shared,
            lane,
            outbox,
            handler,
            poll,
            listener,
            scratch: vec![0u8; READ_CHUNK_BYTES],
            touched: Vec::new(),
            kept_answers: Vec::new(),
            accept_backoff: driver::AcceptBackoff::new(
                settings.accept_backoff_ms,
                settings.accept_error_log_interval_ms,
            ),
            settings,
        })
    }

    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_MAX);
        let mut next_tick_ms = self.shared.now_ms() + self.settings.tick_ms;
        let mut kept_work = false;
        while !self.shared.is_shutdown() {
            let now_ms = self.shared.now_ms();
            // Sleep only with nothing to drain and no work kept back by the handler;
            // a sender then wakes the poll.
            let timeout = if self.settings.spin || kept_work || !self.lane.prepare_sleep() {
                Duration::ZERO
            } else {
                let tick_wait_ms = next_tick_ms.saturating_sub(now_ms).max(1);
                let accept_wait_ms = self.accept_backoff.wait_ms(now_ms).unwrap_or(u64::MAX);
                Duration::from_millis(tick_wait_ms.min(accept_wait_ms))
            };
            let polled = self.poll.poll(&mut events, Some(timeout));
            self.lane.awake();
            match polled {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKE => self.lane.wake.drain(),
                    Token(token) => {
                        let slot = (token - FIRST_CONN) as u32;
                        if let Some(id) = self.slab.id_at(slot) {
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                self.read(id);
                            }
                            self.touched.push(id);
                        }
                    }
                }
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
            if self.accept_backoff.retry_due(now_ms) {
                // Edge-triggered: the backlog left after the failed accept raises no
                // new event, so it is read again once the pause is over.
                self.accept_all();
            }
            if now_ms >= next_tick_ms {
                next_tick_ms = now_ms + self.settings.tick_ms;
                for id in self.slab.ids() {
                    if let Some(entry) = self.slab.get_mut(id) {
                        if entry.conn.on_tick(now_ms)
                            || driver::login_timeout(&mut self.handler, &mut entry.conn, now_ms)
                        {
                            self.touched.push(id);
                        }
                    }
                }
                // §9: room kept once a flood stops, not only at its next accept.
                driver::make_room(
                    &mut self.handler,
                    self.shared,
                    &mut self.slab,
                    |entry: &mut MioConn| &mut entry.conn,
                    usize::MAX,
                    &mut self.touched,
                );
            }
            let mut touched = std::mem::take(&mut self.touched);
            for id in touched.drain(..) {
                self.service(id);
            }
            self.touched = touched;
            // The turn's writes are done (in `service`): deferred work comes after.
            kept_work = self.handler.end_of_turn(Instant::now());
        }
        while self.handler.end_of_turn(Instant::now()) {}
        self.close_all();
        Ok(())
    }

    fn accept_all(&mut self) {
        if self.accept_backoff.paused(self.shared.now_ms()) {
            return; // read again by the loop once the pause is over
        }
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // EMFILE and friends (§9): leave the rest in the backlog, pause,
                    // and make room among the connections of the lowest standing.
                    self.accept_backoff
                        .on_error(&error, self.shared.now_ms(), self.shared);
                    driver::make_room(
                        &mut self.handler,
                        self.shared,
                        &mut self.slab,
                        |entry: &mut MioConn| &mut entry.conn,
                        1,
                        &mut self.touched,
                    );
                    return;
                }
            };
            // §9: at the limit, an idle unproven connection makes room.
            if !self.shared.try_reserve_connection()
                && !driver::admit_by_eviction(
                    &mut self.handler,
                    self.shared,
                    &mut self.slab,
                    |entry: &mut MioConn| &mut entry.conn,
                    &mut self.touched,
                )
            {
                self.shared.metrics.connections_refused.inc();
                let refusal = driver::refusal_bytes(&mut self.handler, self.shared);
                // A fresh socket's send buffer is empty: one non-blocking write fits.
                let _ = stream.write(&refusal);
                let _ = stream.shutdown(std::net::Shutdown::Write);
                tracing::debug!(%peer, "refused: connections_max reached");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let now_ms = self.shared.now_ms();
            let limits = self.settings.limits;
            let inserted = self.slab.insert_with(|_| MioConn {
                conn: Connection::new(limits, now_ms),
                stream,
                read_paused: false,
            });
            let Some(id) = inserted else {
                // Cannot happen: the slab holds connections_max and we reserved one.
                self.shared.release_connection();
                debug_assert!(false, "slab full below connections_max");
                continue;
            };
            let token = Token(id.slot() as usize + FIRST_CONN);
            let entry = self.slab.get_mut(id).expect("just inserted");
            if let Err(error) = self.poll.registry().register(
                &mut entry.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(%error, "register failed");
                entry.conn.close_now(CloseReason::Io {
                    errno: error.raw_os_error().unwrap_or(0),
                });
            }
            self.handler.on_open(id, Some(peer));
            self.touched.push(id);
            // §9: near the limit, the oldest idle connection without MOR goes.
            driver::make_room(
                &mut self.handler,
                self.shared,
                &mut self.slab,
                |entry: &mut MioConn| &mut entry.conn,
                1,
                &mut self.touched,
            );
        }
    }

    /// Reads until EWOULDBLOCK, the peer's EOF, or a full in-flight window.
    fn read(&mut self, id: ConnId) {
        let Some(entry) = self.slab.get_mut(id) else {
            return;
        };
        loop {
            if !entry.conn.wants_recv() {
                entry.read_paused = entry.conn.is_open();
                return;
            }
            match entry.stream.read(&mut self.scratch) {
                Ok(0) => {
                    entry.conn.on_peer_closed();
                    entry.read_paused = false;
                    return;
                }
                Ok(n) => {
                    self.shared.metrics.bytes_received.add(n as u64);
                    entry
                        .conn
                        .on_bytes(&self.scratch[..n], self.shared.now_ms());
                    driver::dispatch_frames(&mut self.handler, self.shared, id, &mut entry.conn);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    entry.read_paused = false;
                    return;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    entry.conn.close_now(CloseReason::Io {
                        errno: error.raw_os_error().unwrap_or(0),
                    });
                    return;
                }
            }
        }
    }

    /// After events or outbox messages: resume paused reads, hand out buffered
    /// frames, write what is queued, and remove the connection if it closed.
    fn service(&mut self, id: ConnId) {
        let Some(entry) = self.slab.get_mut(id) else {
            return;
        };
        driver::dispatch_frames(&mut self.handler, self.shared, id, &mut entry.conn);
        if entry.read_paused && entry.conn.wants_recv() {
            self.read(id);
        }
        let Some(entry) = self.slab.get_mut(id) else {
            return;
        };
        let now_ms = self.shared.now_ms();
        while let Some(bytes) = entry.conn.poll_transmit() {
            match entry.stream.write(bytes) {
                Ok(n) => {
                    self.shared.metrics.bytes_sent.add(n as u64);
                    entry.conn.on_sent(n, now_ms);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    entry.conn.close_now(CloseReason::Io {
                        errno: error.raw_os_error().unwrap_or(0),
                    });
                }
            }
        }
        debug_assert!({
            entry.conn.check_invariants();
            true
        });
        if entry.conn.is_closed() {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: ConnId) {
        let Some(mut entry) = self.slab.remove(id) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut entry.stream);
        let reason = entry
            .conn
            .close_reason()
            .cloned()
            .unwrap_or(CloseReason::Shutdown);
        drop(entry);
        driver::on_removed(&mut self.handler, self.shared, id, &reason);
    }

    fn close_all(&mut self) {
        for id in self.slab.ids() {
            if let Some(entry) = self.slab.get_mut(id) {
                entry.conn.close_now(CloseReason::Shutdown);
            }
            self.remove(id);
        }
        assert!(self.slab.is_empty());
    }
}
