//! The compiled contracts (committed in `contract/build/`, produced by
//! `npm run build` in `contract/` with the pinned solc-js) and the deployment of the
//! Compute Contract with the parameters of a router's market (R-CONTRACT-2..4).

use crate::evm_address;
use alloy_primitives::U256;
use alloy_sol_types::SolValue;
use serde_json::Value;
use yellowstone_engine::quota::mul_div;
use yellowstone_engine::{Address, MarketConfig, UnusedBudget, BLOCKS_PER_DAY};

/// `build/ComputeContract.json`: contractName, abi, bytecode, deployedBytecode.
pub const COMPUTE_CONTRACT_JSON: &str = include_str!("../build/ComputeContract.json");
/// `build/TestMOR.json`: the test ERC-20 MOR token.
pub const TEST_MOR_JSON: &str = include_str!("../build/TestMOR.json");

/// A compiled contract's ABI and creation bytecode.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub abi: Value,
    pub bytecode: Vec<u8>,
}

impl Artifact {
    /// Parses an artifact written by `scripts/compile.js`. Panics on a malformed
    /// artifact: they are committed files checked by the tests, not input.
    pub fn parse(json: &str) -> Artifact {
        let value: Value = serde_json::from_str(json).expect("artifact is JSON");
        let code = value["bytecode"].as_str().expect("artifact has bytecode");
        let bytecode = hex::decode(code.trim_start_matches("0x")).expect("bytecode is hex");
        assert!(!bytecode.is_empty(), "empty bytecode");
        Artifact {
            abi: value["abi"].clone(),
            bytecode,
        }
    }

    pub fn compute_contract() -> Artifact {
        Artifact::parse(COMPUTE_CONTRACT_JSON)
    }

    pub fn test_mor() -> Artifact {
        Artifact::parse(TEST_MOR_JSON)
    }
}

/// The Compute Contract's constructor arguments. Amounts in MOR wei.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployParams {
    pub token: Address,
    pub router: Address,
    pub network_id: u32,
    /// 7,200 / `settlement_epoch_blocks`.
    pub epochs_per_day: u64,
    pub compute_emission_wei_per_day: u128,
    pub bootstrap_bonus_wei_per_day: u128,
    pub bootstrap_days: u64,
    pub pool_spend_bps: u16,
    pub burn_unused: bool,
}

impl DeployParams {
    /// The parameters that make the contract keep the same day accounting as the
    /// router's ledger under `market` (R-CONTRACT-1: both agree to the wei).
    pub fn from_market(
        market: &MarketConfig,
        token: Address,
        router: Address,
        network_id: u32,
    ) -> DeployParams {
        assert!(market.validate().is_ok(), "a validated market");
        DeployParams {
            token,
            router,
            network_id,
            epochs_per_day: BLOCKS_PER_DAY / market.settlement_epoch_blocks,
            compute_emission_wei_per_day: market.compute_emission_wei_per_day(),
            bootstrap_bonus_wei_per_day: mul_div(
                market.emission_wei_per_day,
                u128::from(market.bootstrap_share_bps),
                10_000,
            )
            .unwrap_or(0),
            bootstrap_days: market.bootstrap_days,
            pool_spend_bps: u16::try_from(market.pool_daily_spend_bps).expect("validated <= 10000"),
            burn_unused: market.unused_budget == UnusedBudget::Burn,
        }
    }

    /// ABI encoding of the constructor's arguments.
    pub fn constructor_args(&self) -> Vec<u8> {
        (
            evm_address(&self.token),
            evm_address(&self.router),
            u64::from(self.network_id),
            self.epochs_per_day,
            U256::from(self.compute_emission_wei_per_day),
            U256::from(self.bootstrap_bonus_wei_per_day),
            self.bootstrap_days,
            self.pool_spend_bps,
            self.burn_unused,
        )
            .abi_encode_params()
    }

    /// Creation code: the bytecode followed by the constructor's arguments.
    pub fn deploy_code(&self) -> Vec<u8> {
        let mut code = Artifact::compute_contract().bytecode;
        code.extend_from_slice(&self.constructor_args());
        code
    }
}
