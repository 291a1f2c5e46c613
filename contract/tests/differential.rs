//! Differential test (R-CONTRACT-1, R-CHAIN-1): random market runs of the real engine
//! (sessions credited over several days, tight caps with pro-rata credit, carry or
//! burn, bootstrap providers and bonus, epochs of several lengths) produce
//! settlements; relayed to the contract in the EVM, with claims at random moments and
//! finally for every provider, the contract pays exactly what the engine's ledger
//! credited, to the wei, keeps the same day accounting (emitted, burned, cap, spent)
//! at every epoch, and its token balance never falls below what it still owes.

mod common;

use alloy_primitives::U256;
use common::{ContractError, Deployment};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use yellowstone_contract::artifacts::DeployParams;
use yellowstone_contract::{ClaimProof, SignedSettlement};
use yellowstone_engine::settlement::SettlementRecord;
use yellowstone_engine::{
    Address, Command, Effect, Engine, MarketConfig, ModelSpec, OfferSpec, ReportOutcome, Unit,
    UnusedBudget, BLOCK_MS, WEI_PER_MOR,
};
use yellowstone_wire::SigningKey;

const CHAIN_ID: u64 = 8_453;
const NETWORK_ID: u32 = 3;
const OPERATOR: Address = Address([0xEE; 20]);
const WEIGHTS: [u8; 32] = [0x42; 32];

/// One sealed epoch and the ledger as the engine held it right then.
struct Sealed {
    record: SettlementRecord,
    cumulative: Vec<(Address, u128)>,
    emitted_wei: u128,
    burned_wei: u128,
    day_cap_wei: u128,
    day_spent_wei: u128,
}

struct Market {
    engine: Engine,
    rng: ChaCha8Rng,
    now_ms: u64,
    nonces: BTreeMap<Address, u64>,
    users: Vec<Address>,
    providers: Vec<Address>,
    sealed: Vec<Sealed>,
    effects: Vec<Effect>,
}

impl Market {
    fn new(seed: u64) -> Market {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let epoch_blocks = [600, 1_200, 2_400, 3_600, 7_200][rng.gen_range(0..5)];
        let config = MarketConfig {
            operator: OPERATOR,
            models: vec![ModelSpec {
                id: 0,
                weights_hash: WEIGHTS,
                unit: Unit::Token,
            }],
            // From a cap that binds most days to one that never does.
            emission_wei_per_day: [
                10u128.pow(14),
                10u128.pow(15),
                10u128.pow(16),
                10u128.pow(18),
            ][rng.gen_range(0..4)],
            unused_budget: if rng.gen_bool(0.5) {
                UnusedBudget::Burn
            } else {
                UnusedBudget::Carry
            },
            bootstrap_days: rng.gen_range(0..4),
            bootstrap_providers_max: rng.gen_range(0..5),
            pool_daily_spend_bps: rng.gen_range(0..=500),
            settlement_epoch_blocks: epoch_blocks,
            settlement_chain_id: CHAIN_ID,
            ..MarketConfig::default()
        };
        config.validate().expect("valid market");
        let users = (0..20)
            .map(|n| {
                Address([
                    0x10, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
                ])
            })
            .collect();
        let providers = (0..rng.gen_range(1..8))
            .map(|n| {
                Address([
                    0x20, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
                ])
            })
            .collect();
        let mut market = Market {
            engine: Engine::new(config),
            rng,
            now_ms: 0,
            nonces: BTreeMap::new(),
            users,
            providers,
            sealed: Vec::new(),
            effects: Vec::new(),
        };
        let entries: Vec<(Address, u128)> = market
            .users
            .iter()
            .chain(market.providers.iter())
            .map(|a| (*a, 1_000 * WEI_PER_MOR))
            .collect();
        let nonce = market.nonce(OPERATOR);
        market.apply(Command::SetBalances {
            operator: OPERATOR,
            nonce,
            entries,
        });
        for p in market.providers.clone() {
            let nonce = market.nonce(p);
            let price = market.rng.gen_range(10u128.pow(9)..10u128.pow(12));
            market.apply(Command::RegisterProvider {
                provider: p,
                nonce,
                endpoint: b"127.0.0.1:9000".to_vec(),
                offers: vec![OfferSpec {
                    model: 0,
                    unit: 0,
                    weights_hash: WEIGHTS,
                    price_wei_per_token: price,
                    capacity: 2,
                }],
            });
            assert!(
                matches!(market.effects.last(), Some(Effect::Done { .. })),
                "registered: {:?}",
                market.effects
            );
        }
        market
    }

    fn nonce(&mut self, address: Address) -> u64 {
        let nonce = self.nonces.entry(address).or_insert(0);
        *nonce += 1;
        *nonce
    }

    /// Applies at the current time, recording every sealed epoch with the ledger.
    fn apply(&mut self, command: Command) {
        self.effects.clear();
        self.engine.apply(&command, self.now_ms, &mut self.effects);
        let sealed: Vec<SettlementRecord> = self
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::SettlementSealed { settlement, .. } => Some(settlement.clone()),
                _ => None,
            })
            .collect();
        assert!(sealed.len() <= 1, "time advances one epoch at a time here");
        for record in sealed {
            let ledger = self.engine.ledger();
            assert_eq!(self.engine.settlement().last(), Some(&record));
            self.sealed.push(Sealed {
                cumulative: self.engine.settlement().cumulative.clone(),
                emitted_wei: ledger.emitted_wei,
                burned_wei: ledger.burned_wei,
                day_cap_wei: ledger.day_cap_wei,
                day_spent_wei: ledger.day_spent_wei,
                record,
            });
        }
        self.engine.check_invariants();
    }

    /// Moves time to `target_ms`, ticking at every epoch boundary on the way.
    fn advance_to(&mut self, target_ms: u64) {
        let epoch_ms = self.engine.config().settlement_epoch_blocks * BLOCK_MS;
        loop {
            let next_boundary = (self.engine.settlement().next_epoch + 1) * epoch_ms;
            if next_boundary > target_ms {
                break;
            }
            self.now_ms = next_boundary;
            self.apply(Command::Tick);
        }
        self.now_ms = target_ms;
        self.apply(Command::Tick);
    }

    /// Opens one session: RFC, probe answer; the report comes later (`report_all`),
    /// so that concurrent sessions fill the cheapest providers' capacity and spread
    /// the credits over several providers.
    fn open_session(&mut self, open: &mut Vec<(Address, u64, u64)>) {
        let user = self.users[self.rng.gen_range(0..self.users.len())];
        let tokens_max = self.rng.gen_range(1..=1_000u64);
        let nonce = self.nonce(user);
        self.apply(Command::SubmitRfc {
            user,
            nonce,
            model: 0,
            tokens_max,
            expires_at_ms: self.now_ms + 60_000,
        });
        let Some((probe, provider)) = self.effects.iter().find_map(|e| match e {
            Effect::Probe {
                probe, provider, ..
            } => Some((*probe, *provider)),
            _ => None,
        }) else {
            return;
        };
        let nonce = self.nonce(provider);
        self.apply(Command::ProbeAnswer {
            provider,
            nonce,
            probe,
        });
        if let Some(session) = self.effects.iter().find_map(|e| match e {
            Effect::SessionOpened { ticket } => Some(ticket.session),
            _ => None,
        }) {
            open.push((user, session, tokens_max));
        }
    }

    /// Reports every open session, in random order (pass most of the time).
    fn report_all(&mut self, open: &mut Vec<(Address, u64, u64)>) {
        while !open.is_empty() {
            let (user, session, tokens_max) = open.swap_remove(self.rng.gen_range(0..open.len()));
            self.report(user, session, tokens_max);
        }
    }

    fn report(&mut self, user: Address, session: u64, tokens_max: u64) {
        let tokens = self.rng.gen_range(1..=tokens_max);
        let pass = self.rng.gen_bool(0.9);
        let nonce = self.nonce(user);
        self.apply(Command::Report {
            user,
            nonce,
            session,
            elapsed_ms: tokens * 10,
            ttft_ms: 10,
            tokens,
            prompt_tokens: 100,
            outcome: if pass {
                ReportOutcome::Pass
            } else {
                ReportOutcome::Fail
            },
            report_digest: [9; 32],
        });
    }

    /// Runs `days` days of random traffic.
    fn run(&mut self, days: u64) {
        let end_ms = days * 7_200 * BLOCK_MS;
        while self.now_ms < end_ms {
            let mut open = Vec::new();
            for _ in 0..self.rng.gen_range(0..12) {
                self.open_session(&mut open);
            }
            self.report_all(&mut open);
            let step = self.rng.gen_range(1..3 * 3_600_000);
            self.advance_to((self.now_ms + step).min(end_ms));
        }
    }
}

fn run_seed(seed: u64) -> Coverage {
    let mut market = Market::new(seed);
    let days = market.rng.clone().gen_range(2..5);
    market.run(days);
    let config = market.engine.config().clone();
    let key = SigningKey::from_seed(b"differential router");
    let router = Address(key.address().0);
    let params = DeployParams::from_market(&config, Address::default(), router, NETWORK_ID);
    let mut d = Deployment::new(CHAIN_ID, params.clone());
    let relayer = Address([0x5E; 20]);
    d.chain.open_account(&relayer);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC1A1);
    let mut paid: BTreeMap<Address, u128> = BTreeMap::new();
    let mut funded_day = None;
    let epochs_per_day = params.epochs_per_day;
    assert!(!market.sealed.is_empty(), "seed {seed}: no epoch sealed");
    for sealed in &market.sealed {
        let r = &sealed.record;
        // The emission of a day arrives before its first settlement.
        if funded_day != Some(r.day) {
            let bonus = if r.day < params.bootstrap_days {
                params.bootstrap_bonus_wei_per_day
            } else {
                0
            };
            d.fund(params.compute_emission_wei_per_day + bonus);
            funded_day = Some(r.day);
        }
        let signed = SignedSettlement::sign(r, &key, NETWORK_ID, CHAIN_ID, &d.contract);
        d.settle(&relayer, &signed)
            .expect_ok(&format!("seed {seed} epoch {}", r.epoch));
        let fp = d.fingerprint();
        let ctx = format!("seed {seed} epoch {} (of {epochs_per_day}/day)", r.epoch);
        assert_eq!(fp.emitted, U256::from(sealed.emitted_wei), "{ctx}: emitted");
        assert_eq!(fp.burned, U256::from(sealed.burned_wei), "{ctx}: burned");
        assert_eq!(fp.day_cap, U256::from(sealed.day_cap_wei), "{ctx}: day cap");
        assert_eq!(
            fp.day_spent,
            U256::from(sealed.day_spent_wei),
            "{ctx}: day spent"
        );
        assert_eq!(
            fp.credited,
            U256::from(r.credited_cumulative_wei),
            "{ctx}: credited"
        );
        d.check_solvent();
        // Some providers claim now, against this epoch's root.
        for (provider, cumulative) in &sealed.cumulative {
            if !rng.gen_bool(0.3) {
                continue;
            }
            let proof = ClaimProof::from_cumulative(&sealed.cumulative, provider).expect("in tree");
            let already = paid.get(provider).copied().unwrap_or(0);
            let outcome = d.claim(&relayer, &proof);
            if *cumulative > already {
                outcome.expect_ok(&ctx);
                paid.insert(*provider, *cumulative);
            } else {
                assert!(
                    matches!(outcome.error(), ContractError::NothingToClaim(_)),
                    "{ctx}"
                );
            }
            d.check_solvent();
        }
    }
    // Everyone claims at the end: each is paid exactly what the ledger credited.
    let last = market.sealed.last().expect("one epoch");
    let ledger = market.engine.ledger();
    for (provider, cumulative) in &last.cumulative {
        let proof = ClaimProof::from_cumulative(&last.cumulative, provider).expect("in tree");
        if *cumulative > paid.get(provider).copied().unwrap_or(0) {
            d.claim(&relayer, &proof).expect_ok("final claim");
        }
        d.check_solvent();
    }
    let credited_at_last: u128 = last.cumulative.iter().map(|(_, c)| c).sum();
    eprintln!("seed {seed}: {} epochs, {} providers credited, {} sessions, credited {credited_at_last}, shortfall {}, burned {}, bootstrap {}", market.sealed.len(), last.cumulative.len(), market.engine.counters().sessions_opened, ledger.shortfall_total_wei, ledger.burned_wei, ledger.bootstrap_total_wei);
    let mut total_paid = 0;
    for provider in &market.providers {
        let expected = last
            .cumulative
            .iter()
            .find(|(p, _)| p == provider)
            .map_or(0, |(_, c)| *c);
        let balance = d.balance_of(provider);
        assert_eq!(
            balance, expected,
            "seed {seed}: provider {provider} paid to the wei"
        );
        assert_eq!(d.paid_to(provider), expected);
        total_paid += balance;
    }
    assert_eq!(total_paid, credited_at_last);
    // The engine's ledger agrees: the run ended on an epoch boundary, so everything it
    // credited was settled and is now paid (no router-side claims in this run).
    assert_eq!(ledger.credited_wei.values().sum::<u128>(), credited_at_last);
    assert_eq!(ledger.paid_wei, 0);
    for (provider, cumulative) in &last.cumulative {
        assert_eq!(
            ledger.owed(provider),
            *cumulative,
            "seed {seed}: ledger owes {provider}"
        );
    }
    Coverage {
        shortfall: ledger.shortfall_total_wei > 0,
        burned: ledger.burned_wei > 0,
        bootstrap: ledger.bootstrap_total_wei > 0,
        carried: config.unused_budget == UnusedBudget::Carry && ledger.pool_wei() > 0,
    }
}

#[derive(Debug, Default)]
struct Coverage {
    shortfall: bool,
    burned: bool,
    bootstrap: bool,
    carried: bool,
}

#[test]
fn r_contract_1_contract_pays_what_the_engine_ledger_credits_to_the_wei() {
    let mut seen = Coverage::default();
    for seed in 1..=10 {
        let run = run_seed(seed);
        seen.shortfall |= run.shortfall;
        seen.burned |= run.burned;
        seen.bootstrap |= run.bootstrap;
        seen.carried |= run.carried;
    }
    assert!(
        seen.shortfall && seen.burned && seen.bootstrap && seen.carried,
        "the seeds exercise pro-rata caps, burn, carry and the bootstrap bonus: {seen:?}"
    );
}
