//! Gas of the Compute Contract (R-CHAIN-1) in revm (Cancun rules), beside what one
//! chain transaction per session would cost for the same traffic.
//!
//! `cargo run --release -p yellowstone-contract --example gas`
//!
//! Figures are whole-transaction gas (21,000 intrinsic and calldata included), as a
//! relayer or provider pays it.

#[path = "../tests/common/mod.rs"]
mod common;

use alloy_primitives::U256;
use alloy_sol_types::SolCall;
use common::Deployment;
use yellowstone_contract::artifacts::DeployParams;
use yellowstone_contract::{evm_address, ClaimProof, ITestMOR, SignedSettlement};
use yellowstone_engine::settlement::{leaves, merkle_root, SettlementRecord};
use yellowstone_engine::{Address, WEI_PER_MOR};
use yellowstone_wire::SigningKey;

const CHAIN_ID: u64 = 1;
const NETWORK_ID: u32 = 1;
const RELAYER: Address = Address([0x5E; 20]);

fn provider(n: u32) -> Address {
    let mut bytes = [0x70; 20];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    Address(bytes)
}

struct Bench {
    d: Deployment,
    key: SigningKey,
    epoch: u64,
    cumulative: Vec<(Address, u128)>,
}

impl Bench {
    fn new(providers: u32, burn: bool) -> Bench {
        let key = SigningKey::from_seed(b"gas bench router");
        let params = DeployParams {
            token: Address::default(),
            router: Address(key.address().0),
            network_id: NETWORK_ID,
            epochs_per_day: 24,
            compute_emission_wei_per_day: 3_456 * WEI_PER_MOR,
            bootstrap_bonus_wei_per_day: 0,
            bootstrap_days: 0,
            pool_spend_bps: 100,
            burn_unused: burn,
        };
        let mut d = Deployment::new(CHAIN_ID, params);
        d.chain.open_account(&RELAYER);
        d.fund(1_000_000 * WEI_PER_MOR);
        Bench {
            d,
            key,
            epoch: 0,
            cumulative: (0..providers).map(|n| (provider(n), 0)).collect(),
        }
    }

    /// Credits `wei` to each of the first `credited` providers and settles; gas.
    fn settle(&mut self, credited: usize, wei: u128) -> u64 {
        for entry in self.cumulative.iter_mut().take(credited) {
            entry.1 += wei;
        }
        let in_tree: Vec<(Address, u128)> = self
            .cumulative
            .iter()
            .filter(|(_, c)| *c > 0)
            .copied()
            .collect();
        let record = SettlementRecord {
            epoch: self.epoch,
            day: self.epoch / 24,
            first_block: self.epoch * 300,
            last_block: self.epoch * 300 + 299,
            credited_wei: wei * credited as u128,
            bootstrap_wei: 0,
            credited_cumulative_wei: in_tree.iter().map(|(_, c)| c).sum(),
            providers: in_tree.len() as u32,
            merkle_root: merkle_root(&leaves(&in_tree)),
        };
        self.epoch += 1;
        let contract = self.d.contract;
        let signed = SignedSettlement::sign(&record, &self.key, NETWORK_ID, CHAIN_ID, &contract);
        self.d
            .settle(&RELAYER, &signed)
            .expect_ok("settle")
            .gas_used
    }

    fn claim(&mut self, n: u32) -> (u64, usize) {
        let in_tree: Vec<(Address, u128)> = self
            .cumulative
            .iter()
            .filter(|(_, c)| *c > 0)
            .copied()
            .collect();
        let proof = ClaimProof::from_cumulative(&in_tree, &provider(n)).expect("in tree");
        let gas = self.d.claim(&RELAYER, &proof).expect_ok("claim").gas_used;
        (gas, proof.proof.len())
    }
}

fn main() {
    println!("| what | gas |");
    println!("| --- | ---: |");
    // Settlement: independent of the number of providers (only the root goes on chain).
    let mut bench = Bench::new(1_000, false);
    let first = bench.settle(1_000, 1_000);
    let next = bench.settle(1_000, 1_000);
    for _ in 2..23 {
        bench.settle(1_000, 1_000);
    }
    let day_end_carry = bench.settle(1_000, 1_000);
    println!("| settle, first epoch (cold slots) | {first} |");
    println!("| settle, a later epoch of the day | {next} |");
    println!("| settle, last epoch of a day (day roll, carry) | {day_end_carry} |");
    let mut burn = Bench::new(10, true);
    for _ in 0..23 {
        burn.settle(10, 1_000);
    }
    let day_end_burn = burn.settle(10, 1_000);
    println!("| settle, last epoch of a day (day roll, burn transfer) | {day_end_burn} |");

    // Claims: the proof grows with log2(providers in the tree).
    for providers in [10u32, 1_000, 100_000] {
        let mut bench = Bench::new(providers, false);
        bench.settle(providers as usize, 1_000);
        let (first_claim, depth) = bench.claim(providers / 2);
        bench.settle(providers as usize, 1_000);
        let (again, _) = bench.claim(providers / 2);
        println!("| claim, first, {providers} providers in the tree (proof of {depth}) | {first_claim} |");
        println!("| claim, again after a new epoch, {providers} providers | {again} |");
    }

    // A provider with a long history: credited in every one of 2,400 epochs (100
    // days), claiming once at the end: the same gas as after one epoch (cumulative
    // amounts, so history never reaches the chain).
    let mut long = Bench::new(100, false);
    for _ in 0..2_400 {
        long.settle(100, 1_000);
    }
    let (long_claim, depth) = long.claim(7);
    println!("| claim after 2,400 epochs (100 days) of credits, 100 providers (proof of {depth}) | {long_claim} |");

    // The alternative: one chain transaction per session, at best an ERC-20 transfer
    // of the session's credit to its provider (warm balances, no other logic).
    let mut per_session = Bench::new(1, false);
    let payer = per_session.d.deployer;
    let token = per_session.d.token;
    let mint = ITestMOR::mintCall {
        to: evm_address(&payer),
        amount: U256::from(10u128.pow(30)),
    };
    per_session
        .d
        .chain
        .send(&payer, &token, mint.abi_encode())
        .expect_ok("mint");
    let to = provider(1);
    let transfer = ITestMOR::transferCall {
        to: evm_address(&to),
        amount: U256::from(1_000u64),
    };
    let cold = per_session
        .d
        .chain
        .send(&payer, &token, transfer.abi_encode())
        .expect_ok("transfer")
        .gas_used;
    let warm = per_session
        .d
        .chain
        .send(&payer, &token, transfer.abi_encode())
        .expect_ok("transfer")
        .gas_used;
    println!("| one ERC-20 transfer per session, first to a provider | {cold} |");
    println!("| one ERC-20 transfer per session, later | {warm} |");
    println!();
    // A day of traffic: 1,000 sessions a second (86.4 M a day), 1,000 providers that
    // each claim once a day, hourly epochs.
    let sessions_per_day: u64 = 86_400_000;
    let settled = 23 * next + day_end_carry;
    let claims = 1_000 * {
        let mut bench = Bench::new(1_000, false);
        bench.settle(1_000, 1_000);
        bench.claim(500);
        bench.settle(1_000, 1_000);
        bench.claim(500).0
    };
    println!("| a day at 1,000 sessions/s, 1,000 providers claiming daily | gas per day |");
    println!("| --- | ---: |");
    println!("| settlements (24 epochs) | {settled} |");
    println!("| claims (1,000) | {claims} |");
    println!("| total with settlements | {} |", settled + claims);
    println!(
        "| one transfer per session ({sessions_per_day} sessions) | {} |",
        sessions_per_day * warm
    );
    println!(
        "| ratio | {:.0}x |",
        (sessions_per_day * warm) as f64 / (settled + claims) as f64
    );
}
