//! What the router's signature work costs where it runs: the thread CPU time of one
//! verification or signing in `SAMPLE_EVERY`, under the real load (cache, the other
//! core busy), beside the count of every operation. Sampling keeps the two clock
//! reads per sample (a syscall each) off most operations.
//!
//! Metrics: `yellowstone_signature_ops_total{op}`, `yellowstone_signature_samples_total{op}`
//! and `yellowstone_signature_sampled_cpu_ns_total{op}`; mean CPU per operation =
//! sampled_cpu_ns / samples, signature CPU of the process ≈ ops × that mean.

use crate::metrics::{Counter, Registry};
use std::cell::Cell;
use std::sync::Arc;

/// One operation in this many is timed.
pub const SAMPLE_EVERY: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureOp {
    /// Recovering a client's signer (R-ID-2/3), logins included.
    Verify,
    /// Signing a ticket or a credit batch (R-ID-5).
    Sign,
}

struct OpCounters {
    ops: Arc<Counter>,
    samples: Arc<Counter>,
    sampled_ns: Arc<Counter>,
}

impl OpCounters {
    fn new(registry: &Registry, op: &str) -> OpCounters {
        OpCounters {
            ops: registry.counter(
                "yellowstone_signature_ops_total",
                "Signature operations (verify: client signatures recovered; sign: tickets and batches).",
                &[("op", op)],
            ),
            samples: registry.counter(
                "yellowstone_signature_samples_total",
                "Signature operations whose thread CPU time was measured (one in 16).",
                &[("op", op)],
            ),
            sampled_ns: registry.counter(
                "yellowstone_signature_sampled_cpu_ns_total",
                "Thread CPU nanoseconds of the measured signature operations.",
                &[("op", op)],
            ),
        }
    }
}

pub struct SignatureCpu {
    verify: OpCounters,
    sign: OpCounters,
}

thread_local! {
    static OPS_ON_THIS_THREAD: Cell<u32> = const { Cell::new(0) };
}

/// CPU time of the calling thread, in nanoseconds (0 if the clock is unavailable).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl SignatureCpu {
    pub fn new(registry: &Registry) -> SignatureCpu {
        SignatureCpu {
            verify: OpCounters::new(registry, "verify"),
            sign: OpCounters::new(registry, "sign"),
        }
    }

    /// Runs `work` (one signature operation), timing it if its turn has come.
    pub fn measure<T>(&self, op: SignatureOp, work: impl FnOnce() -> T) -> T {
        let counters = match op {
            SignatureOp::Verify => &self.verify,
            SignatureOp::Sign => &self.sign,
        };
        counters.ops.inc();
        let sampled = OPS_ON_THIS_THREAD.with(|ops| {
            let n = ops.get().wrapping_add(1);
            ops.set(n);
            n % SAMPLE_EVERY == 0
        });
        if !sampled {
            return work();
        }
        let started = thread_cpu_ns();
        let result = work();
        let spent = thread_cpu_ns().saturating_sub(started);
        counters.samples.inc();
        counters.sampled_ns.add(spent);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_operation_and_times_one_in_sample_every() {
        let registry = Registry::new();
        let cpu = SignatureCpu::new(&registry);
        let key = yellowstone_wire::SigningKey::from_seed(b"sampling");
        for _ in 0..SAMPLE_EVERY * 4 {
            cpu.measure(SignatureOp::Sign, || key.sign_digest(&[7u8; 32]));
        }
        assert_eq!(cpu.sign.ops.get(), u64::from(SAMPLE_EVERY * 4));
        assert_eq!(cpu.sign.samples.get(), 4);
        assert_eq!(cpu.verify.ops.get(), 0);
        // A secp256k1 signature takes microseconds of CPU, never zero.
        assert!(cpu.sign.sampled_ns.get() / 4 > 1_000);
        let text = registry.render();
        assert!(text.contains("yellowstone_signature_ops_total{op=\"sign\"} 64"));
    }
}
