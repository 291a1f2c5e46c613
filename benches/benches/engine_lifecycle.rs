//! Engine benchmark (issue 2): full session lifecycles (RFC, match, probe answer,
//! ticket, report, credit, with block seals as time passes) on one thread, with 100
//! models, 10,000 providers and 1,000,000 funded users. Also measures the memory
//! per user account and per open session with a counting allocator.
//!
//! Run: `cargo bench -p yellowstone-benches --bench engine_lifecycle`

use criterion::{criterion_group, Criterion, Throughput};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use yellowstone_engine::workload::address;
use yellowstone_engine::*;

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

const MODELS: u32 = 100;
const PROVIDERS: u32 = 10_000;
const USERS: u32 = 1_000_000;
const OPERATOR: Address = Address([0xEE; 20]);
const GENESIS_MS: u64 = 1_700_000_000_000;

fn weights(model: u32) -> [u8; 32] {
    *blake3::hash(&model.to_le_bytes()).as_bytes()
}

struct Market {
    engine: Engine,
    now: u64,
    user_nonce: Vec<u64>,
    provider_nonce: Vec<u64>,
    next_user: u32,
    effects: Vec<Effect>,
    operator_nonce: u64,
}

impl Market {
    fn new() -> Market {
        let config = MarketConfig {
            genesis_ms: GENESIS_MS,
            operator: OPERATOR,
            models: (0..MODELS)
                .map(|id| ModelSpec {
                    id,
                    weights_hash: weights(id),
                    unit: Unit::Token,
                })
                .collect(),
            ..MarketConfig::default()
        };
        let mut market = Market {
            engine: Engine::new(config),
            now: GENESIS_MS,
            user_nonce: vec![0; USERS as usize],
            provider_nonce: vec![0; PROVIDERS as usize],
            next_user: 0,
            effects: Vec::with_capacity(64),
            operator_nonce: 0,
        };
        market.fund((0..PROVIDERS).map(|p| address(2, p)));
        for p in 0..PROVIDERS {
            // Each provider offers 10 models, so each model has 1,000 providers.
            let offers = (0..10)
                .map(|k| {
                    let model = (p + k * 10) % MODELS;
                    let price = 1_000 + ((p as u128 * 7919) % 500);
                    OfferSpec {
                        model,
                        unit: 0,
                        weights_hash: weights(model),
                        price_wei_per_token: price,
                        capacity: 64,
                    }
                })
                .collect();
            market.provider_nonce[p as usize] += 1;
            let command = Command::RegisterProvider {
                provider: address(2, p),
                nonce: market.provider_nonce[p as usize],
                endpoint: b"10.0.0.1:9000".to_vec(),
                offers,
            };
            market.apply(&command);
        }
        market
    }

    fn fund(&mut self, addresses: impl Iterator<Item = Address>) {
        let all: Vec<Address> = addresses.collect();
        for chunk in all.chunks(100_000) {
            self.operator_nonce += 1;
            let entries = chunk.iter().map(|a| (*a, 500 * WEI_PER_MOR)).collect();
            self.apply(&Command::SetBalances {
                operator: OPERATOR,
                nonce: self.operator_nonce,
                entries,
            });
        }
    }

    fn apply(&mut self, command: &Command) {
        self.effects.clear();
        self.engine.apply(command, self.now, &mut self.effects);
    }

    /// One whole lifecycle; returns false if any step did not go as expected.
    fn lifecycle(&mut self) -> bool {
        let u = self.next_user;
        self.next_user = (self.next_user + 1) % USERS;
        let user = address(1, u);
        self.user_nonce[u as usize] += 1;
        let rfc = Command::SubmitRfc {
            user,
            nonce: self.user_nonce[u as usize],
            model: u % MODELS,
            tokens_max: 100,
            expires_at_ms: self.now + 60_000,
        };
        self.apply(&rfc);
        let Some((probe, provider)) = self.effects.iter().find_map(|e| match e {
            Effect::Probe {
                probe, provider, ..
            } => Some((*probe, *provider)),
            _ => None,
        }) else {
            return false;
        };
        let p = u32::from_le_bytes([provider.0[1], provider.0[2], provider.0[3], provider.0[4]])
            as usize;
        self.provider_nonce[p] += 1;
        self.apply(&Command::ProbeAnswer {
            provider,
            nonce: self.provider_nonce[p],
            probe,
        });
        let Some(session) = self.effects.iter().find_map(|e| match e {
            Effect::SessionOpened { ticket } => Some(ticket.session),
            _ => None,
        }) else {
            return false;
        };
        self.user_nonce[u as usize] += 1;
        let report = Command::Report {
            user,
            nonce: self.user_nonce[u as usize],
            session,
            elapsed_ms: 1_000,
            tokens: 100,
            pass: true,
            report_digest: [7; 32],
        };
        self.apply(&report);
        // Time moves 1 ms per 100 lifecycles, so blocks seal as they would at 100k/s.
        if u.is_multiple_of(100) {
            self.now += 1;
        }
        matches!(
            self.effects.last(),
            Some(Effect::ReportAccepted {
                reason: CreditReason::Earned,
                ..
            })
        )
    }
}

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
            tokens: 100,
            pass: true,
            report_digest: [7; 32],
        });
    }

    // Plain timing first, so the figure is printed whatever criterion decides.
    let count = 2_000_000u64;
    let start = Instant::now();
    let mut ok = 0u64;
    for _ in 0..count {
        ok += market.lifecycle() as u64;
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, count, "every lifecycle must complete and credit");
    println!(
        "lifecycles: {} in {:.2?} = {:.0} lifecycles/s on one thread ({:.0} ns each); blocks sealed so far {}",
        count,
        elapsed,
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / count as f64,
        market.engine.counters().batches
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
    group.finish();
}

criterion_group!(benches, lifecycles);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
