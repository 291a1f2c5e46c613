//! The router's signature work per session, timed on this machine.
//!
//! Per completed session the router (gateway/src/router/handler.rs and sink.rs)
//! verifies three client signatures with `Message::verify` (digest of the received
//! body + secp256k1 public-key recovery + address derivation + comparison): the
//! user's RFC, the provider's probe answer and the user's report. It signs one
//! session ticket (`Message::sign` with the router key, on a gateway thread) that is
//! sent to both sides, and once per 12-second block one credit batch. Acks, probes,
//! RFC acceptances and report acknowledgements are not signed.
//!
//! Each operation is timed here by calling those same functions on frames built the
//! way the load generator builds them, in CPU time of the measuring thread (so a
//! preemption on a shared machine does not count), as the median over rounds.

use serde::Serialize;
use std::hint::black_box;
use yellowstone_wire::client::{presign, presign_report, presign_rfc};
use yellowstone_wire::messages::{self, BatchTotals, Message, Outcome, Report, ReportFigures};
use yellowstone_wire::{Signature, SigningKey};

/// Microseconds of CPU per operation.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SignatureCosts {
    pub rfc_verify_us: f64,
    pub probe_answer_verify_us: f64,
    pub report_verify_us: f64,
    pub ticket_sign_us: f64,
    /// One credit batch listing `batch_providers` providers.
    pub batch_sign_us: f64,
    pub batch_providers: usize,
    pub iterations: usize,
    pub rounds: usize,
}

impl SignatureCosts {
    /// Signature CPU per session without the batch: 3 recoveries + 1 signing.
    pub fn per_session_us(&self) -> f64 {
        self.rfc_verify_us
            + self.probe_answer_verify_us
            + self.report_verify_us
            + self.ticket_sign_us
    }

    /// Signature CPU of a run, in seconds: `sessions` sessions and `batches` batches.
    pub fn work_s(&self, sessions: u64, batches: u64) -> f64 {
        (sessions as f64 * self.per_session_us() + batches as f64 * self.batch_sign_us) / 1e6
    }
}

/// CPU time of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A received client frame, split as the router sees it: decoded message and body.
struct Received {
    message: Message,
    body: Vec<u8>,
}

fn received(frame: Vec<u8>) -> Received {
    let header = yellowstone_wire::frame::FrameHeader::decode(
        frame[..yellowstone_wire::frame::HEADER_LEN]
            .try_into()
            .expect("a frame has a header"),
        usize::MAX,
    )
    .expect("a frame we signed has a valid header");
    let body = frame[yellowstone_wire::frame::HEADER_LEN..].to_vec();
    let message = Message::decode(header.msg_type, &body).expect("a frame we signed decodes");
    Received { message, body }
}

fn cpu_us_per_op(iterations: usize, mut op: impl FnMut(usize)) -> f64 {
    let started = thread_cpu_ns();
    for i in 0..iterations {
        op(i);
    }
    (thread_cpu_ns() - started) as f64 / 1e3 / iterations.max(1) as f64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Times each operation `iterations` times per round, over `rounds` interleaved
/// rounds; a batch lists `batch_providers` providers.
pub fn measure(iterations: usize, rounds: usize, batch_providers: usize) -> SignatureCosts {
    let network_id = 1;
    let user = SigningKey::from_seed(b"ys-bench-user");
    let provider = SigningKey::from_seed(b"ys-bench-provider");
    let router = SigningKey::from_seed(b"ys-bench-router");
    // Distinct messages so no cache of any kind can help: a few per kind.
    const VARIANTS: usize = 16;
    let rfcs: Vec<Received> = (0..VARIANTS)
        .map(|i| {
            received(presign_rfc(
                &user,
                network_id,
                1_000 + i as u64,
                1,
                200,
                1_900_000_000_000,
            ))
        })
        .collect();
    let answers: Vec<Received> = (0..VARIANTS)
        .map(|i| {
            received(presign(
                &provider,
                network_id,
                messages::ProbeAnswer {
                    from: provider.address(),
                    nonce: 5_000 + i as u64,
                    probe_id: 77 + i as u64,
                    signature: Signature::default(),
                }
                .into(),
            ))
        })
        .collect();
    let reports: Vec<Received> = (0..VARIANTS)
        .map(|i| {
            let figures = ReportFigures {
                elapsed_ms: 350,
                ttft_ms: 40,
                tokens: 120,
                prompt_tokens: 256,
            };
            let report = Report::new(
                user.address(),
                9_000 + i as u64,
                42 + i as u64,
                Outcome::Pass,
                figures,
            );
            received(presign_report(&user, network_id, report))
        })
        .collect();
    let tickets: Vec<Message> = (0..VARIANTS)
        .map(|i| {
            messages::SessionTicket {
                session_id: 1 + i as u64,
                user: user.address(),
                provider: provider.address(),
                endpoint: "127.0.0.1:9000".into(),
                model_id: 1,
                tokens_max: 200,
                price_wei_per_token: 1_000_000_000,
                expires_at_ms: 1_900_000_000_000,
                rfc_nonce: 1_000 + i as u64,
                signature: Signature::default(),
            }
            .into()
        })
        .collect();
    let batch: Message = messages::CreditBatch {
        block: 12,
        merkle_root: [7u8; 32],
        receipts: 10_000,
        credited_wei: 1_000_000_000_000,
        shortfall_wei: 0,
        totals: (0..batch_providers)
            .map(|i| BatchTotals {
                provider: SigningKey::from_seed(format!("p{i}").as_bytes()).address(),
                earned_wei: 1_000_000_000 * i as u128,
                credited_wei: 1_000_000_000 * i as u128,
                tokens: 1_000,
                sessions: 10,
            })
            .collect(),
        signature: Signature::default(),
    }
    .into();
    fn verify(set: &[Received], network_id: u32) -> impl Fn(usize) + '_ {
        move |i: usize| {
            let r = &set[i % set.len()];
            black_box(
                r.message
                    .verify(network_id, black_box(&r.body))
                    .expect("valid signature"),
            );
        }
    }
    let mut rfc = Vec::new();
    let mut answer = Vec::new();
    let mut report = Vec::new();
    let mut ticket = Vec::new();
    let mut batch_sign = Vec::new();
    let batch_iterations = (iterations / 4).max(1);
    for _ in 0..rounds.max(1) {
        rfc.push(cpu_us_per_op(iterations, verify(&rfcs, network_id)));
        answer.push(cpu_us_per_op(iterations, verify(&answers, network_id)));
        report.push(cpu_us_per_op(iterations, verify(&reports, network_id)));
        ticket.push(cpu_us_per_op(iterations, |i| {
            let mut message = tickets[i % VARIANTS].clone();
            black_box(message.sign(&router, network_id));
        }));
        batch_sign.push(cpu_us_per_op(batch_iterations, |_| {
            let mut message = batch.clone();
            black_box(message.sign(&router, network_id));
        }));
    }
    SignatureCosts {
        rfc_verify_us: median(&mut rfc),
        probe_answer_verify_us: median(&mut answer),
        report_verify_us: median(&mut report),
        ticket_sign_us: median(&mut ticket),
        batch_sign_us: median(&mut batch_sign),
        batch_providers,
        iterations,
        rounds: rounds.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_positive_and_add_up() {
        let costs = measure(20, 3, 4);
        for value in [
            costs.rfc_verify_us,
            costs.probe_answer_verify_us,
            costs.report_verify_us,
            costs.ticket_sign_us,
            costs.batch_sign_us,
        ] {
            assert!(value > 0.0 && value < 100_000.0, "{costs:?}");
        }
        let per_session = costs.per_session_us();
        assert!((costs.work_s(1_000_000, 0) - per_session).abs() < 1e-9);
        assert!(costs.work_s(10, 2) > costs.work_s(10, 0));
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
