//! Engine benchmark (issue 2): full session lifecycles (RFC, match, probe answer,
//! ticket, report, credit, with block seals as time passes) on one thread, with 100
//! models, 10,000 providers and 1,000,000 funded users. Also measures the memory
//! per user account and per open session with a counting allocator.
//!
//! Also the same lifecycles in bursts of 64 through `Engine::apply_batch` (issue 18).
//!
//! Run: `cargo bench -p yellowstone-benches --bench engine_lifecycle`

use criterion::{criterion_group, Criterion, Throughput};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use yellowstone_engine::workload::address;
use yellowstone_engine::*;

#[path = "../../engine/examples/common/engine_market.rs"]
mod engine_market;
use engine_market::{run_lifecycles, run_lifecycles_batched, Market, MODELS, PROVIDERS, USERS};

struct CountingAllocator;
static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED_BYTES.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn lifecycles(c: &mut Criterion) {
    let before = ALLOCATED_BYTES.load(Ordering::Relaxed);
    let setup_start = Instant::now();
    let mut market = Market::new();
    let after_providers = ALLOCATED_BYTES.load(Ordering::Relaxed);
    market.fund((0..USERS).map(|u| address(1, u)));
    let after_users = ALLOCATED_BYTES.load(Ordering::Relaxed);
    println!(
        "setup: {} models, {} providers, {} users in {:.2?}; memory: providers+book {:.1} MiB, {:.0} bytes per user account",
        MODELS,
        PROVIDERS,
        USERS,
        setup_start.elapsed(),
        (after_providers - before) as f64 / (1 << 20) as f64,
        (after_users - after_providers) as f64 / USERS as f64
    );

    // Memory per open session: open 200,000 sessions without reporting them.
    let open_before = ALLOCATED_BYTES.load(Ordering::Relaxed);
    let mut opened = 0u64;
    let mut sessions = Vec::new();
    for i in 0..200_000u32 {
        let u = i * 3 % USERS;
        let user = address(1, u);
        market.user_nonce[u as usize] += 1;
        market.apply(&Command::SubmitRfc {
            user,
            nonce: market.user_nonce[u as usize],
            model: u % MODELS,
            tokens_max: 100,
            expires_at_ms: market.now + 60_000,
        });
        if let Some((probe, provider)) = market.effects.iter().find_map(|e| match e {
            Effect::Probe {
                probe, provider, ..
            } => Some((*probe, *provider)),
            _ => None,
        }) {
            let p = u32::from_le_bytes([provider.0[1], provider.0[2], provider.0[3], provider.0[4]])
                as usize;
            market.provider_nonce[p] += 1;
            market.apply(&Command::ProbeAnswer {
                provider,
                nonce: market.provider_nonce[p],
                probe,
            });
            if let Some(Effect::SessionOpened { ticket }) = market.effects.last() {
                sessions.push((user, u, ticket.session));
                opened += 1;
            }
        }
    }
    let open_after = ALLOCATED_BYTES.load(Ordering::Relaxed);
    let vec_bytes = sessions.capacity() * std::mem::size_of::<(Address, u32, u64)>();
    println!(
        "memory: {:.0} bytes per open session ({} open; includes its slab slot, expiry index and amortised growth)",
        (open_after - open_before - vec_bytes) as f64 / opened as f64,
        opened
    );
    for (user, u, session) in sessions {
        market.user_nonce[u as usize] += 1;
        market.apply(&Command::Report {
            user,
            nonce: market.user_nonce[u as usize],
            session,
            elapsed_ms: 1_000,
            ttft_ms: 100,
            tokens: 100,
            prompt_tokens: 200,
            outcome: ReportOutcome::Pass,
            report_digest: [7; 32],
        });
    }

    // Plain timing first, so the figure is printed whatever criterion decides.
    // Wall time and this thread's on-CPU time (on a shared machine the wall time
    // also counts the time other processes ran).
    let count = 2_000_000u64;
    let (start, cpu_start) = (Instant::now(), cpu_ns());
    let ok = run_lifecycles(&mut market, count);
    let elapsed = start.elapsed();
    let cpu = cpu_ns().zip(cpu_start).map(|(b, a)| (b - a) as f64);
    assert_eq!(ok, count, "every lifecycle must complete and credit");
    println!(
        "lifecycles: {} in {:.2?} = {:.0} lifecycles/s on one thread ({:.0} ns each); on-CPU {}; blocks sealed so far {}",
        count,
        elapsed,
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / count as f64,
        cpu.map_or("unknown".to_string(), |ns| format!(
            "{:.0} lifecycles/s ({:.0} ns each)",
            count as f64 / (ns / 1e9),
            ns / count as f64
        )),
        market.engine.counters().batches
    );
    market.engine.check_invariants();

    // The same lifecycles in bursts of 64 through `Engine::apply_batch` (64 RFCs, their
    // answers, their reports), as the sequencer hands the engine bursts under load.
    let burst = 64;
    let (start, cpu_start) = (Instant::now(), cpu_ns());
    let ok = run_lifecycles_batched(&mut market, count, burst);
    let elapsed = start.elapsed();
    let cpu = cpu_ns().zip(cpu_start).map(|(b, a)| (b - a) as f64);
    assert_eq!(
        ok, count,
        "every batched lifecycle must complete and credit"
    );
    println!(
        "lifecycles in bursts of {burst} (apply_batch): {} in {:.2?} = {:.0} lifecycles/s on one thread ({:.0} ns each); on-CPU {}",
        count,
        elapsed,
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / count as f64,
        cpu.map_or("unknown".to_string(), |ns| format!(
            "{:.0} lifecycles/s ({:.0} ns each)",
            count as f64 / (ns / 1e9),
            ns / count as f64
        )),
    );
    market.engine.check_invariants();

    // What a snapshot costs at this size: the engine thread encodes it at a block
    // boundary (the journal's snapshot thread writes it), so this is a pause.
    let started = Instant::now();
    let snapshot = market.engine.snapshot();
    let encode = started.elapsed();
    let started = Instant::now();
    let restored = Engine::restore(&snapshot).expect("restores");
    let decode = started.elapsed();
    assert_eq!(restored.state_hash(), market.engine.state_hash());
    println!(
        "snapshot: {:.1} MiB, encoded in {encode:.2?} (engine-thread pause), restored in {decode:.2?}",
        snapshot.len() as f64 / (1 << 20) as f64
    );
    drop(restored);

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    group.bench_function("session_lifecycle", |b| {
        b.iter(|| assert!(market.lifecycle()))
    });
    group.throughput(Throughput::Elements(burst as u64));
    group.bench_function("session_lifecycles_burst_64", |b| {
        b.iter(|| assert_eq!(market.lifecycles_batched(burst), burst as u64))
    });
    group.finish();
}

criterion_group!(benches, lifecycles);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// This thread's time on a CPU so far, ns (Linux: /proc/thread-self/schedstat).
fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}
