//! yellowstone-settlement: the router's side of the Compute Contract on an EVM chain
//! (SPEC R-CHAIN-1, R-CLAIM-1, R-CONTRACT-1..4), without an EVM library.
//!
//! - [`SignedSettlement`]: an epoch's settlement as the router signs it (EIP-712 typed
//!   data, v = 27/28) and its `settle` calldata.
//! - [`ClaimProof`]: a provider's Merkle proof against a settlement's root and its
//!   `claim` calldata.
//! - [`DeployParams`]: the contract's constructor arguments derived from the market.
//!
//! Everything here is a fixed layout of 32-byte ABI words and keccak-256, written
//! out by hand (the [`abi`] module) so that the router links neither alloy nor revm.
//! `yellowstone-contract` (the Solidity artifacts and their tests in revm) checks
//! every encoding here against alloy's and against the deployed contract itself
//! (`contract/tests/encoding.rs`, `contract/tests/contract.rs`). The Merkle rule lives
//! in the pure engine (`yellowstone_engine::settlement`). Amounts are MOR wei.

pub mod abi;

use serde_json::{json, Value};
use yellowstone_engine::quota::mul_div;
use yellowstone_engine::settlement::{keccak256, leaf_hash, leaves, merkle_proof, merkle_root};
use yellowstone_engine::settlement::{SettlementRecord, SettlementState};
use yellowstone_engine::{Address, MarketConfig, UnusedBudget, BLOCKS_PER_DAY};
use yellowstone_wire::SigningKey;

/// The EIP-712 domain name the contract was deployed with.
pub const DOMAIN_NAME: &str = "Yellowstone Compute Contract";
/// The EIP-712 domain version the contract was deployed with.
pub const DOMAIN_VERSION: &str = "1";

/// EIP-712 type of the domain (name, version, chainId, verifyingContract).
const DOMAIN_TYPE: &str =
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)";
/// EIP-712 type of what the router signs (mirrors `ComputeContract.Settlement`).
const SETTLEMENT_TYPE: &str =
    "Settlement(uint64 networkId,uint64 epoch,uint256 credited,uint256 bootstrap,bytes32 root)";
/// The ABI signature of `settle`, whose selector starts its calldata.
pub const SETTLE_SIGNATURE: &str = "settle((uint64,uint64,uint256,uint256,bytes32),bytes)";
/// The ABI signature of `claim`, whose selector starts its calldata.
pub const CLAIM_SIGNATURE: &str = "claim(address,uint256,bytes32[])";

/// The EIP-712 domain separator of a Compute Contract at `contract` on `chain_id`:
/// keccak256(typeHash ‖ keccak(name) ‖ keccak(version) ‖ chainId ‖ contract).
pub fn domain_separator(chain_id: u64, contract: &Address) -> [u8; 32] {
    let mut words = Vec::with_capacity(5 * abi::WORD);
    words.extend_from_slice(&keccak256(DOMAIN_TYPE.as_bytes()));
    words.extend_from_slice(&keccak256(DOMAIN_NAME.as_bytes()));
    words.extend_from_slice(&keccak256(DOMAIN_VERSION.as_bytes()));
    words.extend_from_slice(&abi::uint(u128::from(chain_id)));
    words.extend_from_slice(&abi::address(contract));
    debug_assert_eq!(words.len(), 5 * abi::WORD);
    keccak256(&words)
}

/// The EIP-712 struct hash of `record`'s settlement for the router of `network_id`:
/// keccak256(typeHash ‖ networkId ‖ epoch ‖ credited ‖ bootstrap ‖ root).
pub fn settlement_struct_hash(record: &SettlementRecord, network_id: u32) -> [u8; 32] {
    let mut words = Vec::with_capacity(6 * abi::WORD);
    words.extend_from_slice(&keccak256(SETTLEMENT_TYPE.as_bytes()));
    words.extend_from_slice(&settlement_words(record, network_id));
    debug_assert_eq!(words.len(), 6 * abi::WORD);
    keccak256(&words)
}

/// The settlement tuple's five ABI words (networkId, epoch, credited, bootstrap,
/// root), the same in the struct hash and in `settle`'s calldata.
fn settlement_words(record: &SettlementRecord, network_id: u32) -> [u8; 5 * abi::WORD] {
    let mut out = [0u8; 5 * abi::WORD];
    let fields = [
        abi::uint(u128::from(network_id)),
        abi::uint(u128::from(record.epoch)),
        abi::uint(record.credited_wei),
        abi::uint(record.bootstrap_wei),
        record.merkle_root,
    ];
    for (slot, field) in out.chunks_exact_mut(abi::WORD).zip(fields) {
        slot.copy_from_slice(&field);
    }
    out
}

/// The 32-byte digest the router signs (EIP-712 `hashTypedData`):
/// keccak256(0x19 0x01 ‖ domainSeparator ‖ structHash).
pub fn settlement_digest(
    record: &SettlementRecord,
    network_id: u32,
    chain_id: u64,
    contract: &Address,
) -> [u8; 32] {
    let mut bytes = Vec::with_capacity(2 + 2 * abi::WORD);
    bytes.extend_from_slice(&[0x19, 0x01]);
    bytes.extend_from_slice(&domain_separator(chain_id, contract));
    bytes.extend_from_slice(&settlement_struct_hash(record, network_id));
    keccak256(&bytes)
}

/// Signs an EIP-712 digest: r ‖ s ‖ v with v = 27 or 28 (what `ECDSA.recover`
/// takes; the wire's signatures carry the recovery id 0 or 1 instead). Low-s.
pub fn sign_eip712(key: &SigningKey, digest: &[u8; 32]) -> [u8; 65] {
    let mut signature = key.sign_digest(digest).0;
    debug_assert!(signature[64] <= 1, "a recovery id is 0 or 1");
    signature[64] += 27;
    signature
}

/// An epoch's settlement, signed by the router: what anyone relays to `settle`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedSettlement {
    /// The engine's record of the epoch (amounts in wei, the Merkle root).
    pub record: SettlementRecord,
    /// The router's network id (R-ID-2), bound into the typed data.
    pub network_id: u32,
    /// The chain of the EIP-712 domain.
    pub chain_id: u64,
    /// The Compute Contract of the EIP-712 domain.
    pub contract: Address,
    /// The signer: the router's address.
    pub router: Address,
    /// [`settlement_digest`] of the above.
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

    /// ABI calldata of `settle(Settlement, bytes)`: the selector, the tuple's five
    /// words inline (a static tuple), the offset of the signature (6 words), its
    /// length (65) and its bytes padded to 96.
    pub fn settle_calldata(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 10 * abi::WORD);
        out.extend_from_slice(&abi::selector(SETTLE_SIGNATURE));
        out.extend_from_slice(&settlement_words(&self.record, self.network_id));
        out.extend_from_slice(&abi::uint(6 * abi::WORD as u128));
        abi::push_bytes(&mut out, &self.signature);
        debug_assert_eq!(out.len(), 4 + 10 * abi::WORD);
        out
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
    /// The settled epoch the proof is against (0 from [`ClaimProof::from_cumulative`]).
    pub epoch: u64,
    /// The provider paid.
    pub provider: Address,
    /// Everything ever credited to the provider up to that epoch, wei.
    pub cumulative_wei: u128,
    /// The settlement's Merkle root.
    pub root: [u8; 32],
    /// Sibling hashes from the provider's leaf to the root.
    pub proof: Vec<[u8; 32]>,
}

/// Why a provider has no proof.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The market has not settled an epoch yet.
    #[error("no epoch was settled yet")]
    NoSettlement,
    /// The provider holds no credit in the last settled epoch's tree.
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

    /// The proof of `provider` in the tree of `cumulative` (epoch left 0); none if
    /// the provider is not in it.
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

    /// ABI calldata of `claim(address, uint256, bytes32[])`: the selector, the
    /// address and amount words, the array's offset (3 words), its length and its
    /// hashes.
    pub fn claim_calldata(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + (4 + self.proof.len()) * abi::WORD);
        out.extend_from_slice(&abi::selector(CLAIM_SIGNATURE));
        out.extend_from_slice(&abi::address(&self.provider));
        out.extend_from_slice(&abi::uint(self.cumulative_wei));
        out.extend_from_slice(&abi::uint(3 * abi::WORD as u128));
        out.extend_from_slice(&abi::uint(self.proof.len() as u128));
        for hash in &self.proof {
            out.extend_from_slice(hash);
        }
        debug_assert_eq!(out.len(), 4 + (4 + self.proof.len()) * abi::WORD);
        out
    }

    /// The proof as JSON (wei as a decimal string, hashes as 0x hex, the calldata).
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

/// The Compute Contract's constructor arguments. Amounts in MOR wei.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployParams {
    /// The MOR token the contract pays in.
    pub token: Address,
    /// The router whose EIP-712 signatures `settle` accepts.
    pub router: Address,
    /// The router's network id (R-ID-2).
    pub network_id: u32,
    /// 7,200 / `settlement_epoch_blocks`.
    pub epochs_per_day: u64,
    /// The compute share of the daily emission, wei a day.
    pub compute_emission_wei_per_day: u128,
    /// The bootstrap providers' bonus, wei a day (R-CONTRACT-4).
    pub bootstrap_bonus_wei_per_day: u128,
    /// Days the bootstrap bonus is paid.
    pub bootstrap_days: u64,
    /// Share of the unused pool a day may spend beyond its emission, basis points.
    pub pool_spend_bps: u16,
    /// Burn the unspent budget at a day's end (R-CONTRACT-3) instead of carrying it.
    pub burn_unused: bool,
}

impl DeployParams {
    /// The parameters that make the contract keep the same day accounting as the
    /// router's ledger under `market` (R-CONTRACT-1: both agree to the wei).
    /// `market` must be valid (`MarketConfig::validate`); panics otherwise.
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

    /// ABI encoding of the constructor's arguments (nine static words: token,
    /// router, networkId, epochsPerDay, emission, bonus, bootstrapDays, poolSpendBps,
    /// burnUnused).
    pub fn constructor_args(&self) -> Vec<u8> {
        let words = [
            abi::address(&self.token),
            abi::address(&self.router),
            abi::uint(u128::from(self.network_id)),
            abi::uint(u128::from(self.epochs_per_day)),
            abi::uint(self.compute_emission_wei_per_day),
            abi::uint(self.bootstrap_bonus_wei_per_day),
            abi::uint(u128::from(self.bootstrap_days)),
            abi::uint(u128::from(self.pool_spend_bps)),
            abi::uint(u128::from(self.burn_unused)),
        ];
        words.concat()
    }
}

/// 0x-prefixed lower-case hex.
pub fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}
