//! A deterministic market workload: the command stream of a funded market running
//! whole session lifecycles (RFC, probe answer, session start, report), with ticks as time passes.
//! Journal tests and the replay benchmark use it to produce realistic inputs; it
//! drives a shadow engine to learn the ids (probes, sessions) the next commands
//! need, so the stream is valid and its final state hash is known.

use crate::{
    Address, Command, Effect, Engine, MarketConfig, ModelSpec, OfferSpec, ReportOutcome, Unit,
    WEI_PER_MOR,
};

/// How large the simulated market is.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadSizes {
    /// Models in the catalog.
    pub models: u32,
    /// Funded providers, each offering every model.
    pub providers: u32,
    /// Funded users, used round robin.
    pub users: u32,
    /// Simulated time advances 1 ms per this many lifecycles (100: a 100k/s market).
    pub lifecycles_per_ms: u32,
}

impl Default for WorkloadSizes {
    fn default() -> Self {
        WorkloadSizes {
            models: 4,
            providers: 40,
            users: 1_000,
            lifecycles_per_ms: 100,
        }
    }
}

/// The simulated market's genesis, Unix ms.
pub const WORKLOAD_GENESIS_MS: u64 = 1_700_000_000_000;
const OPERATOR: Address = Address([0xEE; 20]);

/// The `n`th simulated address of a kind (1: users, 2: providers): the kind and `n`
/// in the first bytes (so a provider's index can be read back), the rest spread like
/// a hash would be, so the address index sees realistic keys.
pub fn address(kind: u8, n: u32) -> Address {
    let mut bytes = [0u8; 20];
    bytes[0] = kind;
    bytes[1..5].copy_from_slice(&n.to_le_bytes());
    bytes[5..13].copy_from_slice(&(n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    Address(bytes)
}

fn weights(model: u32) -> [u8; 32] {
    let mut hash = [0u8; 32];
    hash[..4].copy_from_slice(&model.to_le_bytes());
    hash[4] = 0x5A;
    hash
}

/// The command stream generator (the module docs).
pub struct Workload {
    sizes: WorkloadSizes,
    shadow: Engine,
    now_ms: u64,
    last_tick_ms: u64,
    user_nonce: Vec<u64>,
    provider_nonce: Vec<u64>,
    next_user: u32,
    lifecycles: u64,
    effects: Vec<Effect>,
}

impl Workload {
    /// The market configuration every consumer of the stream must start from.
    pub fn market_config(sizes: &WorkloadSizes) -> MarketConfig {
        MarketConfig {
            genesis_ms: WORKLOAD_GENESIS_MS,
            operator: OPERATOR,
            models: (0..sizes.models)
                .map(|id| ModelSpec {
                    id,
                    weights_hash: weights(id),
                    unit: Unit::Token,
                })
                .collect(),
            ..MarketConfig::default()
        }
    }

    /// Starts the market; `out` receives the setup commands (funding, registrations).
    pub fn new(sizes: WorkloadSizes, out: &mut Vec<(u64, Command)>) -> Workload {
        let sizes = WorkloadSizes {
            models: sizes.models.max(1),
            providers: sizes.providers.max(1),
            users: sizes.users.max(1),
            lifecycles_per_ms: sizes.lifecycles_per_ms.max(1),
        };
        let mut workload = Workload {
            sizes,
            shadow: Engine::new(Workload::market_config(&sizes)),
            now_ms: WORKLOAD_GENESIS_MS,
            last_tick_ms: WORKLOAD_GENESIS_MS,
            user_nonce: vec![0; sizes.users as usize],
            provider_nonce: vec![0; sizes.providers as usize],
            next_user: 0,
            lifecycles: 0,
            effects: Vec::new(),
        };
        let chunk = workload.shadow.config().balance_entries_max.max(1) as usize;
        let funded: Vec<Address> = (0..sizes.users)
            .map(|u| address(1, u))
            .chain((0..sizes.providers).map(|p| address(2, p)))
            .collect();
        for (n, addresses) in funded.chunks(chunk).enumerate() {
            workload.emit(
                out,
                Command::SetBalances {
                    operator: OPERATOR,
                    nonce: n as u64 + 1,
                    entries: addresses.iter().map(|a| (*a, 500 * WEI_PER_MOR)).collect(),
                },
            );
        }
        for p in 0..sizes.providers {
            let offers = (0..sizes.models.min(10))
                .map(|k| {
                    let model = (p + k) % sizes.models;
                    OfferSpec {
                        model,
                        unit: 0,
                        weights_hash: weights(model),
                        price_wei_per_token: 1_000 + (p as u128 * 7_919) % 500,
                        capacity: 64,
                    }
                })
                .collect();
            workload.provider_nonce[p as usize] += 1;
            workload.emit(
                out,
                Command::RegisterProvider {
                    provider: address(2, p),
                    nonce: workload.provider_nonce[p as usize],
                    endpoint: b"10.0.0.1:9000".to_vec(),
                    offers,
                },
            );
        }
        workload
    }

    /// The engine that has applied everything emitted so far.
    pub fn shadow(&self) -> &Engine {
        &self.shadow
    }

    /// Whole session lifecycles generated so far.
    pub fn lifecycles(&self) -> u64 {
        self.lifecycles
    }

    fn emit(&mut self, out: &mut Vec<(u64, Command)>, command: Command) {
        self.effects.clear();
        self.shadow.apply(&command, self.now_ms, &mut self.effects);
        out.push((self.now_ms, command));
    }

    /// Emits one lifecycle (four commands: RFC, probe answer, session start, report; plus a tick every 50 simulated ms).
    pub fn lifecycle(&mut self, out: &mut Vec<(u64, Command)>) {
        let u = self.next_user;
        self.next_user = (u + 1) % self.sizes.users;
        let user = address(1, u);
        self.user_nonce[u as usize] += 1;
        let rfc = Command::SubmitRfc {
            user,
            nonce: self.user_nonce[u as usize],
            model: u % self.sizes.models,
            tokens_max: 100,
            expires_at_ms: self.now_ms + 60_000,
        };
        self.emit(out, rfc);
        let probe = self.effects.iter().find_map(|e| match e {
            Effect::Probe {
                probe, provider, ..
            } => Some((*probe, *provider)),
            _ => None,
        });
        if let Some((probe, provider)) = probe {
            let p = u32::from_le_bytes(provider.0[1..5].try_into().expect("4 bytes")) as usize;
            self.provider_nonce[p] += 1;
            let answer = Command::ProbeAnswer {
                provider,
                nonce: self.provider_nonce[p],
                probe,
            };
            self.emit(out, answer);
            let session = self.effects.iter().find_map(|e| match e {
                Effect::SessionOpened { ticket } => Some(ticket.session),
                _ => None,
            });
            if let Some(session) = session {
                // R-SESSION-1: the provider signs the start as it serves.
                self.provider_nonce[p] += 1;
                let start = Command::StartSession {
                    provider,
                    nonce: self.provider_nonce[p],
                    session,
                };
                self.emit(out, start);
                self.user_nonce[u as usize] += 1;
                let outcome = if u.is_multiple_of(50) {
                    ReportOutcome::Fail
                } else {
                    ReportOutcome::Pass
                };
                let report = Command::Report {
                    user,
                    nonce: self.user_nonce[u as usize],
                    session,
                    elapsed_ms: 1_000,
                    ttft_ms: 100,
                    tokens: 100,
                    prompt_tokens: 200,
                    outcome,
                    report_digest: [7; 32],
                };
                self.emit(out, report);
            }
        }
        self.lifecycles += 1;
        if self
            .lifecycles
            .is_multiple_of(self.sizes.lifecycles_per_ms as u64)
        {
            self.now_ms += 1;
        }
        if self.now_ms >= self.last_tick_ms + 50 {
            self.last_tick_ms = self.now_ms;
            self.emit(out, Command::Tick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_replays_to_the_shadow_state_and_credits_sessions() {
        let sizes = WorkloadSizes {
            lifecycles_per_ms: 1,
            ..WorkloadSizes::default()
        };
        let mut commands = Vec::new();
        let mut workload = Workload::new(sizes, &mut commands);
        for _ in 0..20_000 {
            workload.lifecycle(&mut commands);
        }
        let mut engine = Engine::new(Workload::market_config(&sizes));
        let mut effects = Vec::new();
        for (now, command) in &commands {
            engine.apply(command, *now, &mut effects);
        }
        assert_eq!(engine.state_hash(), workload.shadow().state_hash());
        assert!(engine.counters().sessions_opened >= 19_000);
        assert!(engine.block() >= 1, "time passed a block boundary");
        engine.check_invariants();
    }
}
