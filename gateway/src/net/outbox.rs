//! Cross-thread delivery to connections: `Outbox`, one bounded lock-free queue per
//! gateway thread plus an eventfd that wakes that thread (io_uring reads the eventfd;
//! mio polls it).
//!
//! Guarantees: a message for connection `c` goes to the lane of `c`'s gateway thread
//! and is applied there in the order it was sent from one sender thread; a full lane
//! is an error returned to the sender (never growth) — except for answer marks: a
//! `reply` or `answer` that finds the lane full loses its bytes (the error tells the
//! sender) but never its mark, which is kept aside and applied after every message
//! pushed before it, so a connection's in-flight count
//! (`network.conn_inflight_frames_max`) is never left stuck; a message for a closed
//! (stale) id is dropped and counted, never applied to the connection reusing its
//! slot; a sender writes the eventfd only when the gateway thread is about to sleep
//! (`Lane::prepare_sleep`) and then at most once until it wakes: a busy gateway,
//! which drains its lane every loop turn anyway, is never woken.

use crate::net::conn_id::ConnId;
use crossbeam::queue::ArrayQueue;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A non-blocking eventfd used as a wake-up.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. EAGAIN (counter saturated) still
        // leaves the fd readable, which is all a wake-up needs.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter (mio backend; io_uring reads it with an SQE).
    pub fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Work a gateway thread runs for another thread when it drains its lane, e.g.
/// signing a session ticket: signatures then run in parallel on the gateway threads,
/// next to the sends they feed, with no thread of their own to wake. It gets the
/// outbox to send what it produced (to this thread's connections or others').
pub type GatewayJob = Box<dyn FnOnce(&Outbox) + Send>;

/// What the outbox asks a gateway thread to do to a connection.
pub enum OutKind {
    /// Queue `bytes` (one or more encoded frames); mark `answers` in-flight frames answered.
    Send { bytes: Vec<u8>, answers: u32 },
    /// Close once what is queued is sent.
    Close,
    /// Run a job on the thread (the id only picks the thread).
    Run(GatewayJob),
}

impl std::fmt::Debug for OutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutKind::Send { bytes, answers } => f
                .debug_struct("Send")
                .field("bytes", &bytes.len())
                .field("answers", answers)
                .finish(),
            OutKind::Close => write!(f, "Close"),
            OutKind::Run(_) => write!(f, "Run"),
        }
    }
}

#[derive(Debug)]
pub struct OutMsg {
    pub conn: ConnId,
    pub kind: OutKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxError {
    /// The gateway thread's lane is full (`outbound_queue_depth`): the caller decides
    /// (retry, drop, or close the connection later).
    Full,
    /// The id names a gateway thread that does not exist.
    NoSuchThread,
}

impl std::fmt::Display for OutboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboxError::Full => write!(f, "gateway outbox full"),
            OutboxError::NoSuchThread => write!(f, "no such gateway thread"),
        }
    }
}

impl std::error::Error for OutboxError {}

/// One gateway thread's inbox.
pub(crate) struct Lane {
    pub(crate) queue: ArrayQueue<OutMsg>,
    pub(crate) wake: EventFd,
    /// The gateway thread is in (or about to enter) its blocking wait: the next
    /// sender writes the eventfd (and clears the flag, so only one does).
    sleeping: AtomicBool,
    /// Answer marks whose message found the queue full, in the order they came.
    /// Bounded by the frames in flight on this thread's connections (each mark
    /// answers one of them): at most `connections_max × conn_inflight_frames_max`.
    answers_kept: Mutex<Vec<(ConnId, u32)>>,
    /// `answers_kept` is not empty (checked without the lock every drain).
    answers_pending: AtomicBool,
}

impl Lane {
    pub(crate) fn new(depth: usize) -> io::Result<Lane> {
        assert!(depth >= 1);
        Ok(Lane {
            queue: ArrayQueue::new(depth),
            wake: EventFd::new()?,
            sleeping: AtomicBool::new(false),
            answers_kept: Mutex::new(Vec::new()),
            answers_pending: AtomicBool::new(false),
        })
    }

    /// Called by the gateway thread right before its blocking wait. Returns false
    /// (and stays awake) if there is something to drain already; otherwise every
    /// later push wakes it. Pairs with `notify`: each side writes its flag, fences,
    /// then reads the other's, so a push is either seen here or wakes the wait.
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.queue.is_empty() || self.answers_pending.load(Ordering::SeqCst) {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Called by the gateway thread when its wait returned.
    pub(crate) fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.wake.wake();
        }
    }

    /// Wakes the thread unconditionally (shutdown).
    pub(crate) fn force_wake(&self) {
        self.wake.wake();
    }

    /// Keeps the answer mark of a message the full queue refused.
    fn keep_answers(&self, conn: ConnId, answers: u32) {
        let mut kept = self
            .answers_kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.push((conn, answers));
        self.answers_pending.store(true, Ordering::SeqCst);
    }

    /// Takes the kept answer marks (empty without taking the lock when there are none).
    pub(crate) fn take_answers(&self, into: &mut Vec<(ConnId, u32)>) {
        if !self.answers_pending.load(Ordering::SeqCst) {
            return;
        }
        let mut kept = self
            .answers_kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.answers_pending.store(false, Ordering::SeqCst);
        into.append(&mut kept);
    }

    /// Puts back marks taken by `take_answers` but not applied yet (ahead of newer ones).
    pub(crate) fn restore_answers(&self, taken: &mut Vec<(ConnId, u32)>) {
        if taken.is_empty() {
            return;
        }
        let mut kept = self
            .answers_kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        taken.append(&mut kept);
        std::mem::swap(&mut *kept, taken);
        self.answers_pending.store(true, Ordering::SeqCst);
    }
}

/// Cloneable handle to every gateway thread's lane.
#[derive(Clone)]
pub struct Outbox {
    lanes: Arc<[Lane]>,
}

impl Outbox {
    pub(crate) fn new(lanes: Vec<Lane>) -> Outbox {
        assert!(!lanes.is_empty() && lanes.len() <= 256);
        Outbox {
            lanes: lanes.into(),
        }
    }

    pub(crate) fn lane(&self, thread_index: u8) -> &Lane {
        &self.lanes[thread_index as usize]
    }

    pub(crate) fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    fn push(&self, msg: OutMsg) -> Result<(), OutboxError> {
        let lane = self
            .lanes
            .get(msg.conn.thread_index() as usize)
            .ok_or(OutboxError::NoSuchThread)?;
        let pushed = lane.queue.push(msg);
        let result = match pushed {
            Ok(()) => Ok(()),
            Err(OutMsg {
                conn,
                kind: OutKind::Send { bytes, answers },
            }) if answers > 0 => {
                // The bytes are lost (the caller is told), the mark is not.
                lane.keep_answers(conn, answers);
                if bytes.is_empty() {
                    Ok(())
                } else {
                    Err(OutboxError::Full)
                }
            }
            Err(_) => Err(OutboxError::Full),
        };
        lane.notify();
        result
    }

    /// Sends frames that do not answer a request (pushes).
    pub fn send(&self, conn: ConnId, frame_bytes: Vec<u8>) -> Result<(), OutboxError> {
        self.push(OutMsg {
            conn,
            kind: OutKind::Send {
                bytes: frame_bytes,
                answers: 0,
            },
        })
    }

    /// Sends the answer to one in-flight frame of `conn`. `Err(Full)`: the lane was
    /// full and the bytes are dropped, but the frame is still marked answered (its
    /// in-flight slot is freed after the messages queued before it).
    pub fn reply(&self, conn: ConnId, frame_bytes: Vec<u8>) -> Result<(), OutboxError> {
        self.push(OutMsg {
            conn,
            kind: OutKind::Send {
                bytes: frame_bytes,
                answers: 1,
            },
        })
    }

    /// Marks `count` in-flight frames of `conn` answered without sending anything.
    /// Never `Full`: on a full lane the mark is kept aside and applied in order.
    pub fn answer(&self, conn: ConnId, count: u32) -> Result<(), OutboxError> {
        self.push(OutMsg {
            conn,
            kind: OutKind::Send {
                bytes: Vec::new(),
                answers: count,
            },
        })
    }

    /// Runs `job` on the gateway thread that owns `conn` (open or not).
    pub fn run_near(&self, conn: ConnId, job: GatewayJob) -> Result<(), OutboxError> {
        self.push(OutMsg {
            conn,
            kind: OutKind::Run(job),
        })
    }

    /// Runs `job` on gateway thread `thread_index`.
    pub fn run_on(&self, thread_index: u8, job: GatewayJob) -> Result<(), OutboxError> {
        self.run_near(ConnId::new(thread_index, 0, 0), job)
    }

    /// Closes `conn` once what is queued for it is sent.
    pub fn close(&self, conn: ConnId) -> Result<(), OutboxError> {
        self.push(OutMsg {
            conn,
            kind: OutKind::Close,
        })
    }

    pub fn gateway_threads(&self) -> usize {
        self.lanes.len()
    }
}
