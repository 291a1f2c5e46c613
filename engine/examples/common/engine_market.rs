//! The engine benchmark's market (issue 2, issue 18 item 5): 100 models, 10,000
//! providers (10 offers each, so 1,000 per model) and 1,000,000 funded users, driven
//! through whole session lifecycles (RFC, match, probe answer, ticket, report,
//! credit) with block seals as simulated time passes. Shared by the criterion bench
//! `engine_lifecycle` and the callgrind example `lifecycle_count` (engine/examples).

use yellowstone_engine::workload::address;
use yellowstone_engine::*;

pub const MODELS: u32 = 100;
pub const PROVIDERS: u32 = 10_000;
pub const USERS: u32 = 1_000_000;
const OPERATOR: Address = Address([0xEE; 20]);
const GENESIS_MS: u64 = 1_700_000_000_000;

fn weights(model: u32) -> [u8; 32] {
    *blake3::hash(&model.to_le_bytes()).as_bytes()
}

pub struct Market {
    pub engine: Engine,
    pub now: u64,
    pub user_nonce: Vec<u64>,
    pub provider_nonce: Vec<u64>,
    next_user: u32,
    pub effects: Vec<Effect>,
    operator_nonce: u64,
    /// Scratch of the batched lifecycles: commands, effect ends, users in flight.
    batch: Vec<(Command, u64)>,
    ends: Vec<usize>,
    in_flight: Vec<u32>,
}

impl Market {
    pub fn new() -> Market {
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
            batch: Vec::new(),
            ends: Vec::new(),
            in_flight: Vec::new(),
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

    pub fn fund(&mut self, addresses: impl Iterator<Item = Address>) {
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

    pub fn apply(&mut self, command: &Command) {
        self.effects.clear();
        self.engine.apply(command, self.now, &mut self.effects);
    }

    /// One whole lifecycle; returns false if any step did not go as expected.
    pub fn lifecycle(&mut self) -> bool {
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
            ttft_ms: 100,
            tokens: 100,
            prompt_tokens: 200,
            outcome: ReportOutcome::Pass,
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

impl Market {
    /// `n` whole lifecycles in three bursts through `Engine::apply_batch`, as the
    /// router's sequencer sees them under load: `n` RFCs, then their `n` probe
    /// answers, then their `n` reports (time moves 1 ms per 100 RFCs, as in
    /// `lifecycle`). Returns how many ended with a credit.
    #[allow(dead_code)] // used by the example, not by every includer
    pub fn lifecycles_batched(&mut self, n: usize) -> u64 {
        let (mut batch, mut ends, mut users) = (
            std::mem::take(&mut self.batch),
            std::mem::take(&mut self.ends),
            std::mem::take(&mut self.in_flight),
        );
        batch.clear();
        users.clear();
        for _ in 0..n {
            let u = self.next_user;
            self.next_user = (self.next_user + 1) % USERS;
            self.user_nonce[u as usize] += 1;
            let rfc = Command::SubmitRfc {
                user: address(1, u),
                nonce: self.user_nonce[u as usize],
                model: u % MODELS,
                tokens_max: 100,
                expires_at_ms: self.now + 60_000,
            };
            batch.push((rfc, self.now));
            users.push(u);
            if u.is_multiple_of(100) {
                self.now += 1;
            }
        }
        self.apply_burst(&batch, &mut ends);
        batch.clear();
        for i in 0..n {
            let probe = self.effects[ends[i]..ends[i + 1]]
                .iter()
                .find_map(|e| match e {
                    Effect::Probe {
                        probe, provider, ..
                    } => Some((*probe, *provider)),
                    _ => None,
                });
            let Some((probe, provider)) = probe else {
                continue;
            };
            let p = u32::from_le_bytes([provider.0[1], provider.0[2], provider.0[3], provider.0[4]])
                as usize;
            self.provider_nonce[p] += 1;
            let answer = Command::ProbeAnswer {
                provider,
                nonce: self.provider_nonce[p],
                probe,
            };
            batch.push((answer, self.now));
            // users[k] is now the user of answer k.
            users[batch.len() - 1] = users[i];
        }
        self.apply_burst(&batch, &mut ends);
        batch.clear();
        for i in 0..ends.len() - 1 {
            let session = self.effects[ends[i]..ends[i + 1]]
                .iter()
                .find_map(|e| match e {
                    Effect::SessionOpened { ticket } => Some(ticket.session),
                    _ => None,
                });
            let Some(session) = session else {
                continue;
            };
            let u = users[i];
            self.user_nonce[u as usize] += 1;
            let report = Command::Report {
                user: address(1, u),
                nonce: self.user_nonce[u as usize],
                session,
                elapsed_ms: 1_000,
                ttft_ms: 100,
                tokens: 100,
                prompt_tokens: 200,
                outcome: ReportOutcome::Pass,
                report_digest: [7; 32],
            };
            batch.push((report, self.now));
        }
        self.apply_burst(&batch, &mut ends);
        let credited = (0..ends.len() - 1)
            .filter(|&i| {
                matches!(
                    self.effects[ends[i]..ends[i + 1]].last(),
                    Some(Effect::ReportAccepted {
                        reason: CreditReason::Earned,
                        ..
                    })
                )
            })
            .count() as u64;
        (self.batch, self.ends, self.in_flight) = (batch, ends, users);
        credited
    }

    #[allow(dead_code)]
    fn apply_burst(&mut self, batch: &[(Command, u64)], ends: &mut Vec<usize>) {
        self.effects.clear();
        ends.clear();
        ends.push(0);
        self.engine.apply_batch(batch, &mut self.effects, ends);
    }
}

impl Market {
    /// The whole market: providers registered and every user funded.
    #[allow(dead_code)] // the criterion bench funds users itself, to measure their memory
    pub fn with_users() -> Market {
        let mut market = Market::new();
        market.fund((0..USERS).map(|u| address(1, u)));
        market
    }
}

/// Runs `count` lifecycles and returns how many completed with a credit. Not inlined,
/// so that `valgrind --tool=callgrind --toggle-collect='*run_lifecycles*'` counts the
/// instructions of exactly these lifecycles and nothing of the setup.
#[inline(never)]
pub fn run_lifecycles(market: &mut Market, count: u64) -> u64 {
    let mut ok = 0u64;
    for _ in 0..count {
        ok += market.lifecycle() as u64;
    }
    ok
}

/// Runs `count` lifecycles `burst` at a time (`Market::lifecycles_batched`) and
/// returns how many completed with a credit. Not inlined, for callgrind's toggle.
#[allow(dead_code)] // used by the example, not by every includer
#[inline(never)]
pub fn run_lifecycles_batched(market: &mut Market, count: u64, burst: usize) -> u64 {
    let mut ok = 0u64;
    let mut left = count;
    while left > 0 {
        let n = left.min(burst as u64);
        ok += market.lifecycles_batched(n as usize);
        left -= n;
    }
    ok
}
