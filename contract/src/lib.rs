//! yellowstone-contract: the Compute Contract's Solidity side (SPEC R-CHAIN-1,
//! R-CONTRACT-1..4): its compiled artifacts, its ABI as alloy bindings, and its tests
//! in an in-process EVM (revm).
//!
//! - [`artifacts`]: the compiled `ComputeContract` and test `TestMOR` (ABI and bytecode
//!   committed in `contract/build/`, checked fresh by `tests/artifacts.rs`), and the
//!   creation code for the deployment parameters.
//! - The router's side (what it signs and the calldata anyone relays) is the crate
//!   `yellowstone-settlement`, encoded by hand so that the router links no EVM
//!   library; it is re-exported here, and `tests/encoding.rs` checks each of its
//!   encodings against alloy's.
//!
//! The Merkle rule lives in the pure engine (`yellowstone_engine::settlement`): leaf =
//! keccak256(keccak256(abi.encode(provider, cumulative))), sorted pairs, as
//! OpenZeppelin's `MerkleProof` verifies. Amounts are MOR wei.

pub mod artifacts;

use alloy_primitives::{Address as EvmAddress, FixedBytes, U256};
use alloy_sol_types::{eip712_domain, Eip712Domain};
use yellowstone_engine::settlement::SettlementRecord;
use yellowstone_engine::Address;
pub use yellowstone_settlement::{
    domain_separator, hex0x, settlement_digest, settlement_struct_hash, sign_eip712, ClaimProof,
    DeployParams, ProofError, SignedSettlement, CLAIM_SIGNATURE, DOMAIN_NAME, DOMAIN_VERSION,
    SETTLE_SIGNATURE,
};

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

/// The alloy typed data of a signed settlement, for calls such as the contract's
/// `settlementDigest(Settlement)` in tests and on a chain.
pub trait SettlementData {
    /// [`settlement_data`] of the record and network id.
    fn data(&self) -> Settlement;
}

impl SettlementData for SignedSettlement {
    fn data(&self) -> Settlement {
        settlement_data(&self.record, self.network_id)
    }
}
