//! A seeded random command stream with everything the timers and the fast paths
//! touch (probe time-outs, late answers, RFC and session expiries, cancels, queues
//! that fill and drain, time jumps of more than a timing-wheel turn, penalties and
//! suspensions), printing a BLAKE3 over the bincode of every effect and the final
//! state hash. Built from two commits, equal output means equal behaviour on this
//! stream (issue 18 item 5: the engine's rework is checked against main this way).
//!
//! `cargo run --release -p yellowstone-engine --example differential -- SEED STEPS`

use yellowstone_engine::workload::address;
use yellowstone_engine::*;

const OPERATOR: Address = Address([0xEE; 20]);
const GENESIS_MS: u64 = 1_700_000_000_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seed: u64 = args.next().map_or(1, |a| a.parse().expect("SEED"));
    let steps: u64 = args.next().map_or(200_000, |a| a.parse().expect("STEPS"));
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let (models, providers, users) = (3u32, 12u32, 300u32);
    let config = MarketConfig {
        genesis_ms: GENESIS_MS,
        operator: OPERATOR,
        models: (0..models)
            .map(|id| ModelSpec {
                id,
                weights_hash: [id as u8; 32],
                unit: Unit::Token,
            })
            .collect(),
        session_ttl_ms: 40_000,
        rfc_queue_depth_max: 50,
        sessions_open_max: 60,
        penalty_points_suspend: 4,
        penalty_window_reports: 10,
        suspension_ms: 5_000,
        speed_reports_min: 5,
        speed_window_reports: 20,
        ..MarketConfig::default()
    };
    let mut engine = Engine::new(config);
    let mut now = GENESIS_MS;
    let mut effects = Vec::new();
    let mut digest = blake3::Hasher::new();
    let mut nonces = std::collections::HashMap::<Address, u64>::new();
    let mut next_nonce = |a: Address| {
        let n = nonces.entry(a).or_insert(0);
        *n += 1;
        *n
    };
    let mut probes: Vec<(Address, u64)> = Vec::new();
    let mut sessions: Vec<(Address, u64, u64)> = Vec::new();
    let mut rfcs: Vec<(Address, u64)> = Vec::new();
    let mut commands: Vec<Command> = vec![Command::SetBalances {
        operator: OPERATOR,
        nonce: next_nonce(OPERATOR),
        entries: (0..users)
            .map(|u| (address(1, u), (1 + u as u128 % 7) * WEI_PER_MOR))
            .chain((0..providers).map(|p| (address(2, p), (1 + p as u128) * WEI_PER_MOR)))
            .collect(),
    }];
    for p in 0..providers {
        let provider = address(2, p);
        commands.push(Command::RegisterProvider {
            provider,
            nonce: next_nonce(provider),
            endpoint: format!("10.0.0.{p}:9000").into_bytes(),
            offers: (0..2)
                .map(|k| {
                    let model = (p + k) % models;
                    OfferSpec {
                        model,
                        unit: 0,
                        weights_hash: [model as u8; 32],
                        price_wei_per_token: 1_000 + (p as u128 * 37) % 200,
                        capacity: 1 + p % 3,
                    }
                })
                .collect(),
        });
    }
    for step in 0..steps {
        if step > 0 || commands.is_empty() {
            now += match rng.below(1_000) {
                0 => 70_000 + rng.below(200_000), // beyond a wheel turn
                1..=20 => 1_000 + rng.below(10_000),
                21..=400 => 0,
                _ => rng.below(60),
            };
            let u = rng.below(users as u64) as u32;
            let user = address(1, u);
            let command = match rng.below(100) {
                0..=39 => Command::SubmitRfc {
                    user,
                    nonce: next_nonce(user),
                    model: rng.below(models as u64 + 1) as u32, // sometimes unknown
                    tokens_max: 1 + rng.below(200),
                    expires_at_ms: now + 1 + rng.below(30_000),
                },
                40..=59 if !probes.is_empty() => {
                    let at = rng.below(probes.len() as u64) as usize;
                    let (provider, probe) = probes.swap_remove(at);
                    Command::ProbeAnswer {
                        provider,
                        nonce: next_nonce(provider),
                        probe,
                    }
                }
                60..=79 if !sessions.is_empty() => {
                    let at = rng.below(sessions.len() as u64) as usize;
                    let (user, session, tokens_max) = sessions.swap_remove(at);
                    Command::Report {
                        user,
                        nonce: next_nonce(user),
                        session,
                        elapsed_ms: 1 + rng.below(3_000),
                        tokens: rng.below(tokens_max + 1),
                        ttft_ms: 0,
                        prompt_tokens: rng.below(4_096),
                        outcome: [
                            ReportOutcome::Fail,
                            ReportOutcome::Void,
                            ReportOutcome::Pass,
                            ReportOutcome::Pass,
                            ReportOutcome::Pass,
                        ][rng.below(5) as usize],
                        report_digest: [rng.below(256) as u8; 32],
                    }
                }
                80..=84 if !rfcs.is_empty() => {
                    let at = rng.below(rfcs.len() as u64) as usize;
                    let (user, rfc) = rfcs.swap_remove(at);
                    Command::CancelRfc {
                        user,
                        nonce: next_nonce(user),
                        rfc,
                    }
                }
                85..=89 => {
                    let provider = address(2, rng.below(providers as u64) as u32);
                    Command::ProviderAnnounce {
                        provider,
                        nonce: next_nonce(provider),
                    }
                }
                90 => Command::ProviderDisconnected {
                    provider: address(2, rng.below(providers as u64) as u32),
                },
                _ => Command::Tick,
            };
            commands.push(command);
        }
        for command in commands.drain(..) {
            effects.clear();
            engine.apply(&command, now, &mut effects);
            for effect in &effects {
                digest
                    .update(&bincode::encode_to_vec(effect, bincode::config::standard()).unwrap());
                match effect {
                    Effect::Probe {
                        provider, probe, ..
                    } => probes.push((*provider, *probe)),
                    Effect::SessionOpened { ticket } => {
                        sessions.push((ticket.user, ticket.session, ticket.tokens_max))
                    }
                    Effect::RfcAccepted { user, rfc, .. } => rfcs.push((*user, *rfc)),
                    _ => {}
                }
            }
        }
        if step % 50_000 == 0 {
            engine.check_invariants();
        }
    }
    engine.check_invariants();
    let counters = engine.counters().clone();
    println!(
        "seed {seed}, {steps} steps: effects {}, state {}; {counters:?}",
        &digest.finalize().to_hex()[..16],
        &blake3::hash(&engine.snapshot()).to_hex()[..16]
    );
}
