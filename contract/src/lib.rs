//! yellowstone-contract: the router's side of the Compute Contract on an EVM chain
//! (SPEC R-CHAIN-1, R-CONTRACT-1..4).
//!
//! - [`artifacts`]: the compiled `ComputeContract` and test `TestMOR` (ABI and bytecode
//!   committed in `contract/build/`, checked fresh by `tests/artifacts.rs`), and the
//!   deployment parameters taken from the router's market configuration.
//! - [`SignedSettlement`]: an epoch's settlement as the router signs it (EIP-712 typed
//!   data, v = 27/28) and its `settle` calldata.
//! - [`ClaimProof`]: a provider's Merkle proof against a settlement's root and its
//!   `claim` calldata.
//!
//! The Merkle rule lives in the pure engine (`yellowstone_engine::settlement`): leaf =
//! keccak256(keccak256(abi.encode(provider, cumulative))), sorted pairs, as
//! OpenZeppelin's `MerkleProof` verifies. This crate checks that rule against
//! alloy's ABI encoding in its tests. Amounts are MOR wei.

pub mod artifacts;

use alloy_primitives::{Address as EvmAddress, FixedBytes, B256, U256};
use alloy_sol_types::{eip712_domain, Eip712Domain, SolCall, SolStruct};
use serde_json::{json, Value};
use yellowstone_engine::settlement::{leaf_hash, leaves, merkle_proof, merkle_root};
use yellowstone_engine::settlement::{SettlementRecord, SettlementState};
use yellowstone_engine::Address;
use yellowstone_wire::SigningKey;

alloy_sol_types::sol! {
    /// What the router signs once per epoch (mirrors `ComputeContract.Settlement`).
    #[derive(Debug, PartialEq, Eq)]
    struct Settlement {
        uint64 networkId;
        uint64 epoch;
        uint256 credited;
        uint256 bootstrap;
        bytes32 root;
    }

    /// The Compute Contract's interface (checked against the compiled ABI in tests).
    #[derive(Debug, PartialEq, Eq)]
    interface IComputeContract {
        error WrongNetwork(uint64 expected, uint64 got);
        error BadSigner(address recovered);
        error AlreadySettled(uint64 epoch);
        error EpochOutOfOrder(uint64 expected, uint64 got);
        error OverDailyCap(uint256 allowed, uint256 credited);
        error BootstrapOverLimit(uint256 allowed, uint256 bootstrap);
        error Underfunded(uint256 balance, uint256 required);
        error InvalidProof(address provider, uint256 cumulative);
        error NothingToClaim(address provider, uint256 paid);
        error BadParameter(string name);

        event Settled(uint64 indexed epoch, uint64 indexed day, uint256 credited, uint256 bootstrap, bytes32 root);
        event Claimed(address indexed provider, uint256 amount, uint256 cumulative);

        function settle(Settlement s, bytes signature) external;
        function claim(address provider, uint256 cumulative, bytes32[] proof) external returns (uint256 amount);
        function settlementDigest(Settlement s) external view returns (bytes32);
        function domainSeparator() external view returns (bytes32);
        function nextEpoch() external view returns (uint64);
        function day() external view returns (uint64);
        function dayCap() external view returns (uint256);
        function daySpent() external view returns (uint256);
        function emitted() external view returns (uint256);
        function burned() external view returns (uint256);
        function credited() external view returns (uint256);
        function paid() external view returns (uint256);
        function root() external view returns (bytes32);
        function pool() external view returns (uint256);
        function owedTotal() external view returns (uint256);
        function paidTo(address provider) external view returns (uint256);
        function router() external view returns (address);
        function networkId() external view returns (uint64);
    }

    /// The test MOR token (an OpenZeppelin ERC-20 anyone may mint).
    #[derive(Debug, PartialEq, Eq)]
    interface ITestMOR {
        function mint(address to, uint256 amount) external;
        function transfer(address to, uint256 amount) external returns (bool);
        function balanceOf(address account) external view returns (uint256);
    }
}

/// The EIP-712 domain name and version the contract was deployed with.
pub const DOMAIN_NAME: &str = "Yellowstone Compute Contract";
pub const DOMAIN_VERSION: &str = "1";

/// An engine address as an EVM address.
pub fn evm_address(address: &Address) -> EvmAddress {
    EvmAddress::from(address.0)
}

/// An EVM address as an engine address.
pub fn engine_address(address: &EvmAddress) -> Address {
    Address(address.0 .0)
}

/// The EIP-712 domain of a deployed Compute Contract.
pub fn domain(chain_id: u64, contract: &Address) -> Eip712Domain {
    eip712_domain! {
        name: DOMAIN_NAME,
        version: DOMAIN_VERSION,
        chain_id: chain_id,
        verifying_contract: evm_address(contract),
    }
}

/// The typed data of `record` for the router of `network_id`.
pub fn settlement_data(record: &SettlementRecord, network_id: u32) -> Settlement {
    Settlement {
        networkId: u64::from(network_id),
        epoch: record.epoch,
        credited: U256::from(record.credited_wei),
        bootstrap: U256::from(record.bootstrap_wei),
        root: FixedBytes(record.merkle_root),
    }
}

/// The 32-byte digest the router signs (EIP-712 `hashTypedData`).
pub fn settlement_digest(
    record: &SettlementRecord,
    network_id: u32,
    chain_id: u64,
    contract: &Address,
) -> [u8; 32] {
    settlement_data(record, network_id)
        .eip712_signing_hash(&domain(chain_id, contract))
        .0
}

/// Signs an EIP-712 digest: r ‖ s ‖ v with v = 27 or 28 (what `ECDSA.recover`
/// takes; the wire's signatures carry the recovery id 0 or 1 instead). Low-s.
pub fn sign_eip712(key: &SigningKey, digest: &[u8; 32]) -> [u8; 65] {
    let mut signature = key.sign_digest(digest).0;
    debug_assert!(signature[64] <= 1);
    signature[64] += 27;
    signature
}

/// An epoch's settlement, signed by the router: what anyone relays to `settle`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedSettlement {
    pub record: SettlementRecord,
    pub network_id: u32,
    pub chain_id: u64,
    pub contract: Address,
    pub router: Address,
    pub digest: [u8; 32],
    /// r ‖ s ‖ v, v 27 or 28.
    pub signature: [u8; 65],
}

impl SignedSettlement {
    /// Signs `record` with the router's key for the given network and contract.
    pub fn sign(
        record: &SettlementRecord,
        key: &SigningKey,
        network_id: u32,
        chain_id: u64,
        contract: &Address,
    ) -> SignedSettlement {
        let digest = settlement_digest(record, network_id, chain_id, contract);
        SignedSettlement {
            record: record.clone(),
            network_id,
            chain_id,
            contract: *contract,
            router: Address(key.address().0),
            digest,
            signature: sign_eip712(key, &digest),
        }
    }

    /// The typed data.
    pub fn data(&self) -> Settlement {
        settlement_data(&self.record, self.network_id)
    }

    /// ABI calldata of `settle(Settlement, bytes)`.
    pub fn settle_calldata(&self) -> Vec<u8> {
        IComputeContract::settleCall {
            s: self.data(),
            signature: self.signature.to_vec().into(),
        }
        .abi_encode()
    }

    /// The settlement as JSON (wei amounts as decimal strings, bytes as 0x hex).
    pub fn to_json(&self) -> Value {
        let r = &self.record;
        json!({
            "epoch": r.epoch,
            "day": r.day,
            "first_block": r.first_block,
            "last_block": r.last_block,
            "network_id": self.network_id,
            "credited_wei": r.credited_wei.to_string(),
            "bootstrap_wei": r.bootstrap_wei.to_string(),
            "credited_cumulative_wei": r.credited_cumulative_wei.to_string(),
            "providers": r.providers,
            "merkle_root": hex0x(&r.merkle_root),
            "chain_id": self.chain_id,
            "contract": self.contract.to_string(),
            "router": self.router.to_string(),
            "eip712_digest": hex0x(&self.digest),
            "signature": hex0x(&self.signature),
            "calldata": hex0x(&self.settle_calldata()),
        })
    }
}

/// A provider's claim against a settlement's root (R-CLAIM-1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimProof {
    pub epoch: u64,
    pub provider: Address,
    pub cumulative_wei: u128,
    pub root: [u8; 32],
    pub proof: Vec<[u8; 32]>,
}

/// Why a provider has no proof.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("no epoch was settled yet")]
    NoSettlement,
    #[error("provider {0} was never credited up to the last settled epoch")]
    NotCredited(Address),
}

impl ClaimProof {
    /// The proof of `provider` in the last settled epoch of `state`.
    pub fn from_state(
        state: &SettlementState,
        provider: &Address,
    ) -> Result<ClaimProof, ProofError> {
        let last = state.last().ok_or(ProofError::NoSettlement)?;
        let proof = ClaimProof::from_cumulative(&state.cumulative, provider)
            .ok_or(ProofError::NotCredited(*provider))?;
        assert_eq!(
            proof.root, last.merkle_root,
            "cumulative list matches the record"
        );
        Ok(ClaimProof {
            epoch: last.epoch,
            ..proof
        })
    }

    /// The proof of `provider` in the tree of `cumulative` (epoch left 0).
    pub fn from_cumulative(
        cumulative: &[(Address, u128)],
        provider: &Address,
    ) -> Option<ClaimProof> {
        let (_, cumulative_wei) = cumulative.iter().find(|(p, _)| p == provider)?;
        let leaves = leaves(cumulative);
        let leaf = leaf_hash(provider, *cumulative_wei);
        let proof = merkle_proof(&leaves, &leaf)?;
        Some(ClaimProof {
            epoch: 0,
            provider: *provider,
            cumulative_wei: *cumulative_wei,
            root: merkle_root(&leaves),
            proof,
        })
    }

    /// ABI calldata of `claim(address, uint256, bytes32[])`.
    pub fn claim_calldata(&self) -> Vec<u8> {
        IComputeContract::claimCall {
            provider: evm_address(&self.provider),
            cumulative: U256::from(self.cumulative_wei),
            proof: self.proof.iter().map(|p| B256::from(*p)).collect(),
        }
        .abi_encode()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "epoch": self.epoch,
            "provider": self.provider.to_string(),
            "cumulative_wei": self.cumulative_wei.to_string(),
            "merkle_root": hex0x(&self.root),
            "proof": self.proof.iter().map(|p| hex0x(p)).collect::<Vec<_>>(),
            "calldata": hex0x(&self.claim_calldata()),
        })
    }
}

/// 0x-prefixed lower-case hex.
pub fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}
