//! An in-process EVM (revm, Cancun rules) with the compiled Compute Contract and test
//! MOR token: deploys, sends transactions and reads views, reporting gas and reverts.
//! Shared by the contract's tests and its gas benchmark.
#![allow(dead_code)]

use alloy_primitives::{Address as EvmAddress, Bytes, U256};
use alloy_sol_types::{SolCall, SolInterface};
use revm::db::{CacheDB, EmptyDB};
use revm::primitives::{AccountInfo, ExecutionResult, Output, SpecId, TxKind};
use revm::Evm;
use yellowstone_contract::artifacts::{Artifact, DeployCode, DeployParams};
use yellowstone_contract::{
    engine_address, evm_address, ClaimProof, IComputeContract, ITestMOR, SignedSettlement,
};
use yellowstone_engine::Address;

pub type ContractError = IComputeContract::IComputeContractErrors;

/// What one transaction did.
#[derive(Debug)]
pub struct Outcome {
    pub success: bool,
    pub output: Bytes,
    /// Gas of the whole transaction (intrinsic 21,000 and calldata included).
    pub gas_used: u64,
}

impl Outcome {
    /// The contract's custom error of a revert (panics when it is not one).
    pub fn error(&self) -> ContractError {
        assert!(!self.success, "expected a revert, got success");
        ContractError::abi_decode(&self.output, true)
            .unwrap_or_else(|e| panic!("revert is not a custom error ({e}): {:?}", self.output))
    }

    pub fn expect_ok(self, what: &str) -> Outcome {
        if !self.success {
            let reason = ContractError::abi_decode(&self.output, true)
                .map(|e| format!("{e:?}"))
                .unwrap_or_else(|_| format!("{:?}", self.output));
            panic!("{what} reverted: {reason}");
        }
        self
    }
}

pub struct Chain {
    evm: Evm<'static, (), CacheDB<EmptyDB>>,
    pub chain_id: u64,
}

pub const GAS_LIMIT: u64 = 30_000_000;

impl Chain {
    pub fn new(chain_id: u64) -> Chain {
        let evm = Evm::builder()
            .with_db(CacheDB::new(EmptyDB::default()))
            .with_spec_id(SpecId::CANCUN)
            .modify_cfg_env(|cfg| cfg.chain_id = chain_id)
            .build();
        Chain { evm, chain_id }
    }

    /// Gives `address` an account (gas is free here: base fee and gas price are 0).
    pub fn open_account(&mut self, address: &Address) {
        self.evm.db_mut().insert_account_info(
            evm_address(address),
            AccountInfo {
                balance: U256::from(10u128.pow(24)),
                ..AccountInfo::default()
            },
        );
    }

    fn run(
        &mut self,
        from: &Address,
        to: TxKind,
        data: Vec<u8>,
        commit: bool,
    ) -> (Outcome, Option<EvmAddress>) {
        let tx = self.evm.tx_mut();
        tx.caller = evm_address(from);
        tx.transact_to = to;
        tx.data = data.into();
        tx.value = U256::ZERO;
        tx.gas_limit = GAS_LIMIT;
        tx.gas_price = U256::ZERO;
        tx.nonce = None;
        tx.chain_id = Some(self.chain_id);
        let result = if commit {
            self.evm
                .transact_commit()
                .expect("the EVM runs the transaction")
        } else {
            self.evm.transact().expect("the EVM runs the call").result
        };
        match result {
            ExecutionResult::Success {
                gas_used, output, ..
            } => {
                let created = match &output {
                    Output::Create(_, address) => *address,
                    Output::Call(_) => None,
                };
                (
                    Outcome {
                        success: true,
                        output: output.into_data(),
                        gas_used,
                    },
                    created,
                )
            }
            ExecutionResult::Revert { gas_used, output } => (
                Outcome {
                    success: false,
                    output,
                    gas_used,
                },
                None,
            ),
            ExecutionResult::Halt { reason, gas_used } => {
                panic!("transaction halted ({reason:?}) after {gas_used} gas")
            }
        }
    }

    /// Deploys `code` from `from`; returns the new contract's address.
    pub fn deploy(&mut self, from: &Address, code: Vec<u8>) -> Address {
        let (outcome, created) = self.run(from, TxKind::Create, code, true);
        let outcome = outcome.expect_ok("deployment");
        assert!(outcome.gas_used > 0);
        engine_address(&created.expect("a creation returns its address"))
    }

    /// Sends a transaction and commits it.
    pub fn send(&mut self, from: &Address, to: &Address, data: Vec<u8>) -> Outcome {
        self.run(from, TxKind::Call(evm_address(to)), data, true).0
    }

    /// Calls a view without committing.
    pub fn view<C: SolCall>(&mut self, to: &Address, call: C) -> C::Return {
        let outcome = self
            .run(
                &Address([0xCA; 20]),
                TxKind::Call(evm_address(to)),
                call.abi_encode(),
                false,
            )
            .0
            .expect_ok("view");
        C::abi_decode_returns(&outcome.output, true).expect("view returns its type")
    }
}

/// A Compute Contract and its token on a chain.
pub struct Deployment {
    pub chain: Chain,
    pub token: Address,
    pub contract: Address,
    pub deployer: Address,
    pub params: DeployParams,
}

/// What the contract holds, to prove that a refused transaction changed nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub next_epoch: u64,
    pub day: u64,
    pub day_cap: U256,
    pub day_spent: U256,
    pub emitted: U256,
    pub burned: U256,
    pub credited: U256,
    pub paid: U256,
    pub root: alloy_primitives::B256,
    pub balance: U256,
}

impl Deployment {
    /// Deploys the test MOR token and a Compute Contract with `params` (its `token`
    /// field is replaced by the deployed token's address).
    pub fn new(chain_id: u64, mut params: DeployParams) -> Deployment {
        let mut chain = Chain::new(chain_id);
        let deployer = Address([0xD0; 20]);
        chain.open_account(&deployer);
        let token = chain.deploy(&deployer, Artifact::test_mor().bytecode);
        params.token = token;
        let contract = chain.deploy(&deployer, params.deploy_code());
        Deployment {
            chain,
            token,
            contract,
            deployer,
            params,
        }
    }

    /// Mints `amount` MOR wei to the contract (an emission arriving).
    pub fn fund(&mut self, amount: u128) {
        let call = ITestMOR::mintCall {
            to: evm_address(&self.contract),
            amount: U256::from(amount),
        };
        let (deployer, token) = (self.deployer, self.token);
        self.chain
            .send(&deployer, &token, call.abi_encode())
            .expect_ok("mint");
    }

    pub fn balance_of(&mut self, who: &Address) -> u128 {
        let token = self.token;
        let balance = self
            .chain
            .view(
                &token,
                ITestMOR::balanceOfCall {
                    account: evm_address(who),
                },
            )
            ._0;
        balance.try_into().expect("fits u128")
    }

    /// Relays a settlement from `relayer` (anyone).
    pub fn settle(&mut self, relayer: &Address, settlement: &SignedSettlement) -> Outcome {
        let contract = self.contract;
        self.chain
            .send(relayer, &contract, settlement.settle_calldata())
    }

    /// Claims for a provider from `caller` (anyone).
    pub fn claim(&mut self, caller: &Address, proof: &ClaimProof) -> Outcome {
        let contract = self.contract;
        self.chain.send(caller, &contract, proof.claim_calldata())
    }

    pub fn fingerprint(&mut self) -> Fingerprint {
        let c = self.contract;
        let contract = self.contract;
        Fingerprint {
            next_epoch: self.chain.view(&c, IComputeContract::nextEpochCall {})._0,
            day: self.chain.view(&c, IComputeContract::dayCall {})._0,
            day_cap: self.chain.view(&c, IComputeContract::dayCapCall {})._0,
            day_spent: self.chain.view(&c, IComputeContract::daySpentCall {})._0,
            emitted: self.chain.view(&c, IComputeContract::emittedCall {})._0,
            burned: self.chain.view(&c, IComputeContract::burnedCall {})._0,
            credited: self.chain.view(&c, IComputeContract::creditedCall {})._0,
            paid: self.chain.view(&c, IComputeContract::paidCall {})._0,
            root: self.chain.view(&c, IComputeContract::rootCall {})._0,
            balance: U256::from(self.balance_of(&contract)),
        }
    }

    pub fn paid_to(&mut self, provider: &Address) -> u128 {
        let c = self.contract;
        self.chain
            .view(
                &c,
                IComputeContract::paidToCall {
                    provider: evm_address(provider),
                },
            )
            ._0
            .try_into()
            .expect("fits u128")
    }

    /// R-CONTRACT-2 on the chain: the token balance covers what is owed.
    pub fn check_solvent(&mut self) {
        let fp = self.fingerprint();
        assert!(fp.paid <= fp.credited);
        assert!(
            fp.balance >= fp.credited - fp.paid,
            "contract holds less than it owes: {fp:?}"
        );
        assert!(fp.credited + fp.burned <= fp.emitted, "{fp:?}");
    }
}
