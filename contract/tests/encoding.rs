//! yellowstone-settlement encodes the settlement by hand (so that the router links
//! no EVM library): every encoding it makes must equal alloy's, byte for byte, over
//! random records, proofs and deployment parameters (R-CHAIN-1, R-CLAIM-1). The
//! deployed contract's own checks of the same bytes are in `contract.rs`.

use alloy_primitives::{B256, U256};
use alloy_sol_types::{SolCall, SolStruct, SolValue};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use yellowstone_contract::{
    domain, evm_address, settlement_data, settlement_digest, ClaimProof, DeployParams,
    IComputeContract, SignedSettlement,
};
use yellowstone_engine::settlement::SettlementRecord;
use yellowstone_engine::Address;
use yellowstone_wire::SigningKey;

fn address(rng: &mut ChaCha8Rng) -> Address {
    Address(rng.gen())
}

/// Amounts across the whole u128 range, small and large, as the ledger makes them.
fn amount(rng: &mut ChaCha8Rng) -> u128 {
    match rng.gen_range(0..3) {
        0 => 0,
        1 => rng.gen_range(0..1_000_000_000_000_000_000_000u128),
        _ => rng.gen(),
    }
}

fn record(rng: &mut ChaCha8Rng) -> SettlementRecord {
    SettlementRecord {
        epoch: rng.gen(),
        day: rng.gen(),
        first_block: rng.gen(),
        last_block: rng.gen(),
        credited_wei: amount(rng),
        bootstrap_wei: amount(rng),
        credited_cumulative_wei: amount(rng),
        providers: rng.gen(),
        merkle_root: rng.gen(),
    }
}

#[test]
fn r_chain_1_hand_encoded_digest_and_settle_calldata_equal_alloys() {
    let mut rng = ChaCha8Rng::seed_from_u64(26);
    let key = SigningKey::from_seed(b"encoding");
    for _ in 0..200 {
        let record = record(&mut rng);
        let network_id: u32 = rng.gen();
        let chain_id: u64 = rng.gen();
        let contract = address(&mut rng);
        let expected = settlement_data(&record, network_id)
            .eip712_signing_hash(&domain(chain_id, &contract))
            .0;
        assert_eq!(
            settlement_digest(&record, network_id, chain_id, &contract),
            expected
        );
        let signed = SignedSettlement::sign(&record, &key, network_id, chain_id, &contract);
        let calldata = IComputeContract::settleCall {
            s: settlement_data(&record, network_id),
            signature: signed.signature.to_vec().into(),
        }
        .abi_encode();
        assert_eq!(signed.settle_calldata(), calldata);
    }
}

#[test]
fn r_claim_1_hand_encoded_claim_calldata_equals_alloys() {
    let mut rng = ChaCha8Rng::seed_from_u64(27);
    for length in 0..20 {
        let proof = ClaimProof {
            epoch: rng.gen(),
            provider: address(&mut rng),
            cumulative_wei: amount(&mut rng),
            root: rng.gen(),
            proof: (0..length).map(|_| rng.gen()).collect(),
        };
        let calldata = IComputeContract::claimCall {
            provider: evm_address(&proof.provider),
            cumulative: U256::from(proof.cumulative_wei),
            proof: proof.proof.iter().map(|p| B256::from(*p)).collect(),
        }
        .abi_encode();
        assert_eq!(proof.claim_calldata(), calldata, "proof of {length}");
    }
}

#[test]
fn r_chain_2_hand_encoded_constructor_args_equal_alloys() {
    let mut rng = ChaCha8Rng::seed_from_u64(28);
    for _ in 0..200 {
        let params = DeployParams {
            token: address(&mut rng),
            router: address(&mut rng),
            network_id: rng.gen(),
            epochs_per_day: rng.gen(),
            compute_emission_wei_per_day: amount(&mut rng),
            bootstrap_bonus_wei_per_day: amount(&mut rng),
            bootstrap_days: rng.gen(),
            pool_spend_bps: rng.gen(),
            burn_unused: rng.gen(),
        };
        let expected = (
            evm_address(&params.token),
            evm_address(&params.router),
            u64::from(params.network_id),
            params.epochs_per_day,
            U256::from(params.compute_emission_wei_per_day),
            U256::from(params.bootstrap_bonus_wei_per_day),
            params.bootstrap_days,
            params.pool_spend_bps,
            params.burn_unused,
        )
            .abi_encode_params();
        assert_eq!(params.constructor_args(), expected);
    }
}
