//! What the market's figures cost the engine thread (R-OPS-3): the core figures
//! (`Engine::market_figures_core`, O(models)) are computed every 100 ms of engine time
//! and at a new block, an operator command or a claim; the provider pass
//! (`Engine::provider_figures`, one pass over every provider's offers) at most at 1/50
//! of the engine thread's time (`router::market::FiguresPublisher`). Measured at 100 models and 10,000 providers
//! offering 10 models each (the engine_lifecycle market), and at 100,000 providers.
//!
//! Run: `cargo bench -p yellowstone-benches --bench market_figures`

use criterion::{criterion_group, Criterion};
use std::time::Duration;
use yellowstone_engine::workload::address;
use yellowstone_engine::*;

const MODELS: u32 = 100;
const OPERATOR: Address = Address([0xEE; 20]);
const GENESIS_MS: u64 = 1_700_000_000_000;

fn weights(model: u32) -> [u8; 32] {
    *blake3::hash(&model.to_le_bytes()).as_bytes()
}

fn market(providers: u32) -> Engine {
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
    let mut engine = Engine::new(config);
    let mut effects = Vec::new();
    let entries = (0..providers)
        .map(|p| (address(2, p), WEI_PER_MOR))
        .collect::<Vec<_>>();
    for (nonce, chunk) in entries.chunks(100_000).enumerate() {
        engine.apply(
            &Command::SetBalances {
                operator: OPERATOR,
                nonce: nonce as u64 + 1,
                entries: chunk.to_vec(),
            },
            GENESIS_MS,
            &mut effects,
        );
    }
    for p in 0..providers {
        let offers = (0..10)
            .map(|k| {
                let model = (p + k * 10) % MODELS;
                OfferSpec {
                    model,
                    unit: 0,
                    weights_hash: weights(model),
                    price_wei_per_token: 1_000 + (p as u128 * 7919) % 500,
                    capacity: 64,
                }
            })
            .collect();
        effects.clear();
        engine.apply(
            &Command::RegisterProvider {
                provider: address(2, p),
                nonce: 1,
                endpoint: b"10.0.0.1:9000".to_vec(),
                offers,
            },
            GENESIS_MS,
            &mut effects,
        );
    }
    let figures = engine.market_figures();
    assert!(figures
        .models
        .iter()
        .all(|m| m.providers_live == providers as u64 / 10));
    engine
}

fn figures(c: &mut Criterion) {
    let mut group = c.benchmark_group("market_figures");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for providers in [10_000u32, 100_000] {
        let engine = market(providers);
        group.bench_function(format!("core_providers_{providers}_models_100"), |b| {
            b.iter(|| engine.market_figures_core())
        });
        group.bench_function(
            format!("provider_pass_providers_{providers}_offers_10"),
            |b| b.iter(|| engine.provider_figures()),
        );
    }
    group.finish();
}

criterion_group!(benches, figures);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
