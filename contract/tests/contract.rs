//! The Compute Contract in an in-process EVM (R-CHAIN-1, R-CONTRACT-2..4, R-CLAIM-1):
//! deployment, emissions over several days, settlements, claims with proofs, and
//! every hostile input refused with its custom error and no change of state.

mod common;

use alloy_primitives::U256;
use common::{ContractError, Deployment};
use yellowstone_contract::artifacts::DeployParams;
use yellowstone_contract::{
    evm_address, settlement_digest, ClaimProof, IComputeContract, SettlementData, SignedSettlement,
};
use yellowstone_engine::settlement::{leaves, merkle_root, SettlementRecord};
use yellowstone_engine::Address;
use yellowstone_wire::SigningKey;

const CHAIN_ID: u64 = 31_337;
const NETWORK_ID: u32 = 7;
const EMISSION: u128 = 1_000_000;
const BONUS: u128 = 24_000;

fn router_key() -> SigningKey {
    SigningKey::from_seed(b"yellowstone contract tests router")
}

fn provider(n: u8) -> Address {
    Address([n; 20])
}

fn params(burn: bool) -> DeployParams {
    DeployParams {
        token: Address::default(),
        router: Address(router_key().address().0),
        network_id: NETWORK_ID,
        epochs_per_day: 2,
        compute_emission_wei_per_day: EMISSION,
        bootstrap_bonus_wei_per_day: BONUS,
        bootstrap_days: 2,
        pool_spend_bps: 100,
        burn_unused: burn,
    }
}

/// A router's view of the settlements: cumulative credits and the next epoch.
struct Router {
    key: SigningKey,
    cumulative: Vec<(Address, u128)>,
    epoch: u64,
}

impl Router {
    fn new() -> Router {
        Router {
            key: router_key(),
            cumulative: Vec::new(),
            epoch: 0,
        }
    }

    /// Credits `credits` (and `bonus` shares) in the next epoch and signs it.
    fn next(
        &mut self,
        d: &Deployment,
        credits: &[(u8, u128)],
        bonus: &[(u8, u128)],
    ) -> SignedSettlement {
        let mut credited = 0;
        let mut bootstrap = 0;
        for (list, total) in [(credits, &mut credited), (bonus, &mut bootstrap)] {
            for &(p, wei) in list {
                *total += wei;
                match self.cumulative.iter_mut().find(|(a, _)| *a == provider(p)) {
                    Some((_, c)) => *c += wei,
                    None => self.cumulative.push((provider(p), wei)),
                }
            }
        }
        self.cumulative.sort();
        let record = SettlementRecord {
            epoch: self.epoch,
            day: self.epoch / 2,
            first_block: self.epoch * 3_600,
            last_block: self.epoch * 3_600 + 3_599,
            credited_wei: credited,
            bootstrap_wei: bootstrap,
            credited_cumulative_wei: self.cumulative.iter().map(|(_, c)| c).sum(),
            providers: self.cumulative.len() as u32,
            merkle_root: merkle_root(&leaves(&self.cumulative)),
        };
        self.epoch += 1;
        SignedSettlement::sign(&record, &self.key, NETWORK_ID, CHAIN_ID, &d.contract)
    }

    fn proof(&self, p: u8) -> ClaimProof {
        ClaimProof::from_cumulative(&self.cumulative, &provider(p)).expect("credited provider")
    }
}

const RELAYER: Address = Address([0x5E; 20]);

fn deploy(burn: bool) -> Deployment {
    let mut d = Deployment::new(CHAIN_ID, params(burn));
    d.chain.open_account(&RELAYER);
    d
}

#[test]
fn r_chain_1_deploys_with_the_routers_parameters_and_the_same_digest() {
    let mut d = deploy(false);
    let c = d.contract;
    assert_eq!(
        d.chain.view(&c, IComputeContract::routerCall {})._0,
        evm_address(&Address(router_key().address().0))
    );
    assert_eq!(d.chain.view(&c, IComputeContract::networkIdCall {})._0, 7);
    let fp = d.fingerprint();
    assert_eq!((fp.next_epoch, fp.day), (0, 0));
    assert_eq!(
        fp.day_cap,
        U256::from(EMISSION),
        "day 0: the emission, no pool yet"
    );
    assert_eq!(fp.emitted, U256::from(EMISSION));
    let mut router = Router::new();
    let signed = router.next(&d, &[(1, 5)], &[]);
    let on_chain = d
        .chain
        .view(
            &c,
            IComputeContract::settlementDigestCall { s: signed.data() },
        )
        ._0;
    assert_eq!(
        on_chain.0, signed.digest,
        "EIP-712 digest agrees with the contract's"
    );
    assert_eq!(
        signed.digest,
        settlement_digest(&signed.record, NETWORK_ID, CHAIN_ID, &d.contract)
    );
}

#[test]
fn r_chain_1_settlements_over_days_and_claims_pay_cumulative_minus_paid() {
    let mut d = deploy(false);
    let mut router = Router::new();
    d.fund(EMISSION + BONUS);
    // Epoch 0 (day 0).
    let s0 = router.next(&d, &[(1, 300_000), (2, 100_000)], &[]);
    let gas = d.settle(&RELAYER, &s0).expect_ok("epoch 0").gas_used;
    assert!(gas < 150_000, "a settlement costs {gas} gas");
    d.check_solvent();
    let p1 = router.proof(1);
    d.claim(&RELAYER, &p1).expect_ok("claim of provider 1");
    assert_eq!(
        d.balance_of(&provider(1)),
        300_000,
        "anyone may claim; MOR goes to the provider"
    );
    assert_eq!(
        d.claim(&RELAYER, &p1).error(),
        ContractError::NothingToClaim(IComputeContract::NothingToClaim {
            provider: evm_address(&provider(1)),
            paid: U256::from(300_000),
        }),
        "claiming twice pays nothing more"
    );
    // Epoch 1 closes day 0 with a bootstrap bonus; day 1 starts with 1 % of the pool.
    let s1 = router.next(&d, &[(1, 200_000)], &[(1, 18_000), (2, 6_000)]);
    d.settle(&RELAYER, &s1).expect_ok("epoch 1");
    let fp = d.fingerprint();
    assert_eq!(fp.day, 1);
    let pool_before = EMISSION + BONUS - (600_000 + 24_000);
    assert_eq!(fp.day_cap, U256::from(EMISSION + pool_before / 100));
    assert_eq!(fp.emitted, U256::from(2 * EMISSION + BONUS));
    d.fund(EMISSION + BONUS);
    for p in [1, 2] {
        let proof = router.proof(p);
        d.claim(&RELAYER, &proof).expect_ok("claim after day 0");
    }
    assert_eq!(d.balance_of(&provider(1)), 518_000);
    assert_eq!(d.balance_of(&provider(2)), 106_000);
    // Day 1 and 2: a provider that claims only at the end is paid everything.
    for credits in [[(3, 1_000)], [(3, 2_000)], [(3, 3_000)]] {
        let s = router.next(&d, &credits, &[]);
        d.settle(&RELAYER, &s).expect_ok("later epoch");
        d.check_solvent();
    }
    let proof = router.proof(3);
    d.claim(&RELAYER, &proof).expect_ok("claim of provider 3");
    assert_eq!(d.balance_of(&provider(3)), 6_000);
    d.check_solvent();
}

#[test]
fn r_contract_3_burn_sends_the_unspent_emission_away_at_the_days_end() {
    let mut d = deploy(true);
    let mut router = Router::new();
    d.fund(EMISSION);
    let s0 = router.next(&d, &[(1, 300_000)], &[]);
    d.settle(&RELAYER, &s0).expect_ok("epoch 0");
    let s1 = router.next(&d, &[], &[]);
    d.settle(&RELAYER, &s1).expect_ok("epoch 1 ends day 0");
    let dead = Address(hex_address("000000000000000000000000000000000000dEaD"));
    assert_eq!(d.balance_of(&dead), 700_000);
    let fp = d.fingerprint();
    assert_eq!(fp.burned, U256::from(700_000));
    assert_eq!(
        fp.day_cap,
        U256::from(EMISSION),
        "nothing left in the pool to add"
    );
    d.check_solvent();
}

fn hex_address(text: &str) -> [u8; 20] {
    hex::decode(text)
        .expect("hex")
        .try_into()
        .expect("20 bytes")
}

/// Runs a refused transaction and checks its error and that nothing changed.
fn refused(d: &mut Deployment, what: &str, data: Vec<u8>, expected: ContractError) {
    let before = d.fingerprint();
    let contract = d.contract;
    let outcome = d.chain.send(&RELAYER, &contract, data);
    assert_eq!(outcome.error(), expected, "{what}");
    assert_eq!(
        d.fingerprint(),
        before,
        "{what} changed the contract's state"
    );
}

#[test]
fn r_chain_1_hostile_settlements_are_refused_without_change() {
    let mut d = deploy(false);
    let mut router = Router::new();
    d.fund(EMISSION + BONUS);
    let s0 = router.next(&d, &[(1, 300_000)], &[]);
    let record = s0.record.clone();
    let other_key = SigningKey::from_seed(b"not the router");
    let forged = SignedSettlement::sign(&record, &other_key, NETWORK_ID, CHAIN_ID, &d.contract);
    let recovered = evm_address(&Address(other_key.address().0));
    refused(
        &mut d,
        "signed by another key",
        forged.settle_calldata(),
        ContractError::BadSigner(IComputeContract::BadSigner { recovered }),
    );
    let other_network =
        SignedSettlement::sign(&record, &router.key, NETWORK_ID + 1, CHAIN_ID, &d.contract);
    refused(
        &mut d,
        "another network id",
        other_network.settle_calldata(),
        ContractError::WrongNetwork(IComputeContract::WrongNetwork {
            expected: 7,
            got: 8,
        }),
    );
    for (what, chain_id, contract) in [
        ("another chain", CHAIN_ID + 1, d.contract),
        ("another contract", CHAIN_ID, Address([0x99; 20])),
    ] {
        let signed = SignedSettlement::sign(&record, &router.key, NETWORK_ID, chain_id, &contract);
        let outcome = {
            let before = d.fingerprint();
            let c = d.contract;
            let outcome = d.chain.send(&RELAYER, &c, signed.settle_calldata());
            assert_eq!(d.fingerprint(), before, "{what} changed state");
            outcome
        };
        assert!(
            matches!(outcome.error(), ContractError::BadSigner(_)),
            "{what}"
        );
    }
    // Altered after signing: the credited amount.
    let mut altered = s0.clone();
    altered.record.credited_wei += 1;
    refused(
        &mut d,
        "altered amount",
        altered.settle_calldata(),
        ContractError::BadSigner(IComputeContract::BadSigner {
            recovered: recover_of(&altered),
        }),
    );
    // Out of order: epoch 1 before epoch 0.
    let s1 = router.next(&d, &[(1, 1)], &[]);
    refused(
        &mut d,
        "epoch out of order",
        s1.settle_calldata(),
        ContractError::EpochOutOfOrder(IComputeContract::EpochOutOfOrder {
            expected: 0,
            got: 1,
        }),
    );
    d.settle(&RELAYER, &s0).expect_ok("epoch 0");
    refused(
        &mut d,
        "replay",
        s0.settle_calldata(),
        ContractError::AlreadySettled(IComputeContract::AlreadySettled { epoch: 0 }),
    );
    // Over the day's cap: 700,000 is left of day 0's 1,000,000.
    let mut over = Router::new();
    over.next(&d, &[(1, 300_000)], &[]);
    let s1_over = over.next(&d, &[(2, 700_001)], &[]);
    refused(
        &mut d,
        "over the day's cap",
        s1_over.settle_calldata(),
        ContractError::OverDailyCap(IComputeContract::OverDailyCap {
            allowed: U256::from(700_000),
            credited: U256::from(700_001),
        }),
    );
    // A bonus above the day's: 24,000 allowed at the day's end.
    let mut greedy = Router::new();
    greedy.next(&d, &[(1, 300_000)], &[]);
    let s1_greedy = greedy.next(&d, &[], &[(1, BONUS + 1)]);
    refused(
        &mut d,
        "bootstrap over the day's bonus",
        s1_greedy.settle_calldata(),
        ContractError::BootstrapOverLimit(IComputeContract::BootstrapOverLimit {
            allowed: U256::from(BONUS),
            bootstrap: U256::from(BONUS + 1),
        }),
    );
    // The last epoch of day 0 is fine; a bonus in the middle of day 1 is not.
    d.settle(&RELAYER, &s1).expect_ok("epoch 1");
    let s2_bonus = router.next(&d, &[], &[(1, 1)]);
    refused(
        &mut d,
        "bootstrap outside a day's last epoch",
        s2_bonus.settle_calldata(),
        ContractError::BootstrapOverLimit(IComputeContract::BootstrapOverLimit {
            allowed: U256::ZERO,
            bootstrap: U256::from(1),
        }),
    );
}

fn recover_of(signed: &SignedSettlement) -> alloy_primitives::Address {
    let digest = settlement_digest(
        &signed.record,
        signed.network_id,
        signed.chain_id,
        &signed.contract,
    );
    let mut sig = signed.signature;
    sig[64] -= 27;
    let address =
        yellowstone_wire::signature::recover_signer(&digest, &yellowstone_wire::Signature(sig))
            .expect("recoverable");
    evm_address(&Address(address.0))
}

#[test]
fn r_contract_2_an_unfunded_contract_refuses_to_owe_what_it_does_not_hold() {
    let mut d = deploy(false);
    let mut router = Router::new();
    d.fund(100_000);
    let s0 = router.next(&d, &[(1, 100_001)], &[]);
    refused(
        &mut d,
        "credits above the token balance",
        s0.settle_calldata(),
        ContractError::Underfunded(IComputeContract::Underfunded {
            balance: U256::from(100_000),
            required: U256::from(100_001),
        }),
    );
    d.fund(1);
    d.settle(&RELAYER, &s0).expect_ok("funded now");
    d.check_solvent();
}

#[test]
fn r_claim_1_hostile_claims_are_refused_without_change() {
    let mut d = deploy(false);
    let mut router = Router::new();
    d.fund(EMISSION + BONUS);
    let s0 = router.next(&d, &[(1, 300_000), (2, 100_000), (3, 50_000)], &[]);
    d.settle(&RELAYER, &s0).expect_ok("epoch 0");
    let stale = router.proof(1);
    // Another provider presenting provider 1's proof.
    let mut other_provider = stale.clone();
    other_provider.provider = provider(2);
    other_provider.cumulative_wei = 300_000;
    refused(
        &mut d,
        "proof for another provider",
        other_provider.claim_calldata(),
        ContractError::InvalidProof(IComputeContract::InvalidProof {
            provider: evm_address(&provider(2)),
            cumulative: U256::from(300_000),
        }),
    );
    let mut more = stale.clone();
    more.cumulative_wei += 1;
    refused(
        &mut d,
        "proof for another amount",
        more.claim_calldata(),
        ContractError::InvalidProof(IComputeContract::InvalidProof {
            provider: evm_address(&provider(1)),
            cumulative: U256::from(300_001),
        }),
    );
    let s1 = router.next(&d, &[(1, 5_000)], &[]);
    d.settle(&RELAYER, &s1).expect_ok("epoch 1");
    refused(
        &mut d,
        "proof against a stale root",
        stale.claim_calldata(),
        ContractError::InvalidProof(IComputeContract::InvalidProof {
            provider: evm_address(&provider(1)),
            cumulative: U256::from(300_000),
        }),
    );
    let fresh = router.proof(1);
    d.claim(&RELAYER, &fresh).expect_ok("fresh proof");
    assert_eq!(d.balance_of(&provider(1)), 305_000);
    assert_eq!(d.paid_to(&provider(1)), 305_000);
}
