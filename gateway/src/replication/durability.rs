//! [`ReplicatedDurability`]: the `Durability` a leader's sequencer appends to (R-HA-2,
//! the promise rule; REPL_DESIGN.md "Member API").
//!
//! - `append` numbers the record (`Promotion::next_seq` on) and queues it; it never
//!   waits.
//! - A proposer task turns what gathered while the previous proposals were in flight
//!   into one Raft entry ([`GroupEntry`], at most `cluster.entry_bytes_max` record
//!   bytes, a larger record alone) and submits it (`client_write_ff`), keeping at
//!   most `cluster.proposals_in_flight_max` uncommitted; a confirming task takes the
//!   answers in submission order (each arrives once the entry is committed on a
//!   majority and applied by this leader's state machine).
//! - `durable_seq` = `synced_seq` = the highest sequence number whose entry is
//!   committed; each advance is sent on `durable_updates`. Nothing is reported
//!   durable that is not committed.
//! - Snapshot points are the state machine's business: `snapshot` and
//!   `snapshot_point` do nothing here.
//! - Once office is lost (another leader or term, a proposal refused or stale,
//!   shutdown) every call fails with [`JournalError::OfficeLost`], and so does every
//!   call after it.

use super::types::{GroupApplied, GroupEntry, MemberId, Raft};
use crate::journal::record::RECORD_PAYLOAD_MAX;
use crate::journal::{Durability, JournalError};
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use yellowstone_engine::Engine;

/// What a new leader's pipeline starts from ([`super::Member::promote`]).
pub struct Promotion {
    /// A copy of the state machine's engine after every entry committed before this
    /// term (the term's blank entry applied).
    pub engine: Engine,
    /// The journal sequence number of the next record.
    pub next_seq: u64,
    /// The term this member leads.
    pub term: u64,
}

/// Counters of the proposer (metrics).
#[derive(Default, Debug)]
pub struct ProposerStats {
    /// Entries proposed.
    pub entries: AtomicU64,
    /// Records proposed.
    pub records: AtomicU64,
    /// Sum of commit latencies (proposal to commit), microseconds.
    pub commit_us_total: AtomicU64,
    /// The largest commit latency, microseconds.
    pub commit_us_max: AtomicU64,
}

struct Queue {
    /// The sequence number of `records[0]`.
    first_seq: u64,
    records: Vec<Vec<u8>>,
}

struct Shared {
    term: u64,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    committed: AtomicU64,
    failed: AtomicBool,
    reason: Mutex<String>,
    durable_tx: Sender<u64>,
    entry_bytes_max: usize,
    stats: ProposerStats,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, reason: String) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::warn!(term = self.term, %reason, "replicated journal: office lost");
            *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        }
        self.wake.notify_one();
    }

    fn error(&self) -> JournalError {
        JournalError::OfficeLost {
            term: self.term,
            reason: self
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn check(&self) -> Result<(), JournalError> {
        if self.failed.load(Ordering::Acquire) {
            Err(self.error())
        } else {
            Ok(())
        }
    }

    /// Takes the next entry's records: at least one, at most `entry_bytes_max` bytes.
    fn take(&self) -> Option<GroupEntry> {
        let mut queue = self.queue();
        if queue.records.is_empty() {
            return None;
        }
        let mut bytes = 0usize;
        let mut count = 0usize;
        for record in &queue.records {
            if count > 0 && bytes + record.len() > self.entry_bytes_max {
                break;
            }
            bytes += record.len();
            count += 1;
        }
        let rest = queue.records.split_off(count);
        let records = std::mem::replace(&mut queue.records, rest);
        let first_seq = queue.first_seq;
        queue.first_seq += count as u64;
        Some(GroupEntry { first_seq, records })
    }
}

/// The leader's replicated journal; see the module comment.
pub struct ReplicatedDurability {
    shared: Arc<Shared>,
    durable_rx: Receiver<u64>,
    next_seq: u64,
    /// How long `flush` waits for the last proposals at most.
    flush_wait: Duration,
}

impl ReplicatedDurability {
    /// Starts the proposer for `promotion` on the current tokio runtime.
    pub(crate) fn start(
        raft: Raft,
        id: MemberId,
        promotion: &Promotion,
        entry_bytes_max: usize,
        in_flight_max: usize,
        flush_wait: Duration,
    ) -> ReplicatedDurability {
        let (durable_tx, durable_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            term: promotion.term,
            queue: Mutex::new(Queue {
                first_seq: promotion.next_seq,
                records: Vec::new(),
            }),
            wake: tokio::sync::Notify::new(),
            committed: AtomicU64::new(promotion.next_seq - 1),
            failed: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
            durable_tx,
            entry_bytes_max,
            stats: ProposerStats::default(),
        });
        tokio::spawn(propose(raft, id, shared.clone(), in_flight_max));
        ReplicatedDurability {
            shared,
            durable_rx,
            next_seq: promotion.next_seq,
            flush_wait,
        }
    }

    /// The term this journal's leader was promoted in.
    pub fn term(&self) -> u64 {
        self.shared.term
    }

    /// Whether office was lost (every call now fails).
    pub fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Proposer counters.
    pub fn proposer_stats(&self) -> (u64, u64) {
        (
            self.shared.stats.entries.load(Ordering::Relaxed),
            self.shared.stats.records.load(Ordering::Relaxed),
        )
    }

    /// Marks office lost (the member saw another leader); idempotent.
    pub fn depose(&self, reason: &str) {
        self.shared.fail(reason.to_string());
    }
}

impl Drop for ReplicatedDurability {
    fn drop(&mut self) {
        // Stops the proposer; whatever is queued is never proposed.
        self.shared
            .fail("the pipeline dropped its journal".to_string());
    }
}

/// One proposal submitted and not yet confirmed.
struct InFlight {
    last_seq: u64,
    records: u64,
    started: Instant,
    answer:
        tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<super::types::TypeConfig>>,
    /// Returned to the proposer when the answer is in.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

async fn propose(raft: Raft, id: MemberId, shared: Arc<Shared>, in_flight_max: usize) {
    let mut metrics = raft.metrics();
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight_max.max(1)));
    let (submitted, to_confirm) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(confirm(to_confirm, shared.clone()));
    loop {
        if shared.failed.load(Ordering::Acquire) {
            return;
        }
        // At most `in_flight_max` proposals wait for their commit; what arrives
        // meanwhile gathers into the next entry (group commit).
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = shared.wake.notified() => continue,
        };
        let Some(entry) = shared.take() else {
            drop(permit);
            tokio::select! {
                _ = shared.wake.notified() => {}
                changed = metrics.changed() => {
                    if changed.is_err() {
                        shared.fail("raft stopped".to_string());
                    }
                }
            }
            let m = metrics.borrow().clone();
            if m.current_leader != Some(id) || m.current_term != shared.term {
                shared.fail(format!(
                    "term {} leader {:?}",
                    m.current_term, m.current_leader
                ));
            }
            continue;
        };
        {
            // A leader of another term must not propose this term's records.
            let m = metrics.borrow();
            if m.current_leader != Some(id) || m.current_term != shared.term {
                let reason = format!("term {} leader {:?}", m.current_term, m.current_leader);
                drop(m);
                shared.fail(reason);
                return;
            }
        }
        let proposal = InFlight {
            last_seq: entry.last_seq(),
            records: entry.records.len() as u64,
            started: Instant::now(),
            answer: match raft.client_write_ff(entry).await {
                Ok(answer) => answer,
                Err(e) => {
                    shared.fail(format!("proposal refused: {e}"));
                    return;
                }
            },
            _permit: permit,
        };
        if submitted.send(proposal).is_err() {
            return;
        }
    }
}

/// Confirms proposals in the order they were submitted (openraft commits them in
/// that order) and publishes each committed sequence number.
async fn confirm(
    mut submitted: tokio::sync::mpsc::UnboundedReceiver<InFlight>,
    shared: Arc<Shared>,
) {
    while let Some(proposal) = submitted.recv().await {
        let last_seq = proposal.last_seq;
        let answer = match proposal.answer.await {
            Ok(Ok(response)) => response.data,
            Ok(Err(e)) => {
                shared.fail(format!("proposal ending at seq {last_seq} refused: {e}"));
                return;
            }
            Err(_) => {
                shared.fail(format!(
                    "proposal ending at seq {last_seq} dropped (raft stopped)"
                ));
                return;
            }
        };
        match answer {
            GroupApplied::Applied { last_seq: applied } if applied == last_seq => {
                let us = proposal.started.elapsed().as_micros() as u64;
                shared.stats.entries.fetch_add(1, Ordering::Relaxed);
                shared
                    .stats
                    .records
                    .fetch_add(proposal.records, Ordering::Relaxed);
                shared
                    .stats
                    .commit_us_total
                    .fetch_add(us, Ordering::Relaxed);
                shared.stats.commit_us_max.fetch_max(us, Ordering::Relaxed);
                #[cfg(not(feature = "plant-early-durable"))]
                debug_assert!(shared.committed.load(Ordering::Acquire) < last_seq);
                shared.committed.fetch_max(last_seq, Ordering::AcqRel);
                let _ = shared.durable_tx.send(last_seq);
            }
            other => {
                shared.fail(format!(
                    "entry ending at seq {last_seq} applied as {other:?}"
                ));
                return;
            }
        }
        if shared.failed.load(Ordering::Acquire) {
            return;
        }
    }
}

impl Durability for ReplicatedDurability {
    fn append(&mut self, record: &[u8]) -> Result<u64, JournalError> {
        self.shared.check()?;
        if record.len() > RECORD_PAYLOAD_MAX {
            return Err(JournalError::RecordTooLarge {
                bytes: record.len(),
                max: RECORD_PAYLOAD_MAX,
            });
        }
        let seq = self.next_seq;
        {
            let mut queue = self.shared.queue();
            debug_assert_eq!(queue.first_seq + queue.records.len() as u64, seq);
            queue.records.push(record.to_vec());
        }
        self.next_seq += 1;
        self.shared.wake.notify_one();
        #[cfg(feature = "plant-early-durable")]
        {
            // The planted bug (tests only): durable before any commit.
            self.shared.committed.fetch_max(seq, Ordering::AcqRel);
            let _ = self.shared.durable_tx.send(seq);
        }
        Ok(seq)
    }

    fn durable_updates(&self) -> Receiver<u64> {
        self.durable_rx.clone()
    }

    fn durable_seq(&self) -> u64 {
        self.shared.committed.load(Ordering::Acquire)
    }

    fn snapshot(&mut self, _seq: u64, _state: Vec<u8>) -> Result<(), JournalError> {
        self.shared.check()
    }

    fn snapshot_point(&mut self, _seq: u64, _engine: &Engine) -> Result<(), JournalError> {
        // The state machine snapshots itself at block boundaries.
        self.shared.check()
    }

    fn flush(&mut self) -> Result<(), JournalError> {
        let deadline = Instant::now() + self.flush_wait;
        while self.durable_seq() + 1 < self.next_seq {
            self.shared.check()?;
            if Instant::now() >= deadline {
                return Err(JournalError::OfficeLost {
                    term: self.shared.term,
                    reason: format!(
                        "flush: records {}..{} not committed within {:?}",
                        self.durable_seq() + 1,
                        self.next_seq,
                        self.flush_wait
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn synced_seq(&self) -> u64 {
        self.durable_seq()
    }

    fn request_sync(&mut self, _seq: u64) -> Result<(), JournalError> {
        // Committed is synced on a majority: nothing more to ask for.
        self.shared.check()
    }
}
