//! `deploy`, `verify-deployment` and `claim` (R-CHAIN-2, R-CLAIM-1).

use crate::bindings::{ComputeContract, TestMOR};
use crate::chain::{evm, CallFailure, Node, NodeArgs, SendArgs, Sent};
use crate::error::{rpc, ChainError};
use crate::router::RouterSide;
use alloy::primitives::{Address, Bytes, U256};
use alloy::providers::{DynProvider, Provider};
use serde_json::{json, Value};
use yellowstone_contract::artifacts::{Artifact, DeployCode, DeployParams};

/// Every deployment parameter, as `deploy --dry-run` prints it (issue 24 case 5).
pub fn params_json(params: &DeployParams, router: &RouterSide) -> Value {
    json!({
        "token": params.token.to_string(),
        "router": params.router.to_string(),
        "network_id": params.network_id,
        "settlement_epoch_blocks": router.market.settlement_epoch_blocks,
        "epochs_per_day": params.epochs_per_day,
        "emission_wei_per_day": router.market.emission_wei_per_day.to_string(),
        "compute_emission_wei_per_day": params.compute_emission_wei_per_day.to_string(),
        "bootstrap_bonus_wei_per_day": params.bootstrap_bonus_wei_per_day.to_string(),
        "bootstrap_days": params.bootstrap_days,
        "pool_spend_bps": params.pool_spend_bps,
        "burn_unused": params.burn_unused,
        "settlement_chain_id": router.market.settlement_chain_id,
        "settlement_contract": router.market.settlement_contract.to_string(),
        "constructor_args": yellowstone_contract::hex0x(&params.constructor_args()),
    })
}

/// Refuses a node or contract other than the router's settlement domain.
pub fn check_domain(
    router: &RouterSide,
    chain_id: u64,
    contract: Address,
) -> Result<(), ChainError> {
    if router.market.settlement_chain_id != chain_id {
        return Err(ChainError::WrongChain {
            node: chain_id,
            router: router.market.settlement_chain_id,
        });
    }
    let configured = evm(&router.market.settlement_contract);
    if configured != contract {
        return Err(ChainError::WrongContract {
            router: configured,
            given: contract,
        });
    }
    Ok(())
}

async fn deploy_code(
    node: &Node,
    code: Vec<u8>,
    send: &SendArgs,
    what: &str,
) -> Result<(Address, u64), ChainError> {
    match node.send(None, Bytes::from(code), send, |_| {}).await {
        Ok(Sent::Confirmed(done)) => {
            let address = done
                .receipt
                .contract_address
                .ok_or_else(|| ChainError::Failed {
                    hash: done.hash.to_string(),
                    reason: format!("{what}: no contract address in the receipt"),
                })?;
            Ok((address, done.receipt.gas_used))
        }
        Ok(Sent::Failed { hash, .. }) => Err(ChainError::Failed {
            hash: hash.to_string(),
            reason: format!("{what}: the creation reverted"),
        }),
        Ok(Sent::Reorged { hash }) => Err(ChainError::Failed {
            hash: hash.to_string(),
            reason: format!(
                "{what}: removed by a reorg before its confirmations; run deploy again"
            ),
        }),
        Err(failure) => Err(failure.into_error()),
    }
}

pub struct DeployOptions {
    pub token: Option<Address>,
    pub test_token: bool,
    pub fund_wei: u128,
    pub dry_run: bool,
}

/// Deploys the Compute Contract (and the test token when asked) with the router's
/// parameters, checks it landed where the router signs for, verifies it.
pub async fn deploy(
    router: &RouterSide,
    node_args: &NodeArgs,
    send: &SendArgs,
    options: &DeployOptions,
) -> Result<Value, ChainError> {
    let planned_token = options.token.unwrap_or(Address::ZERO);
    let mut out =
        json!({ "parameters": params_json(&router.deploy_params(engine(planned_token)), router) });
    if options.dry_run && node_args.key_file.is_none() && node_args.key_hex.is_none() {
        return Ok(out);
    }
    let node = node_args.connect().await?;
    let nonce = node
        .provider
        .get_transaction_count(node.sender)
        .latest()
        .await
        .map_err(rpc)?;
    let contract_nonce = nonce + u64::from(options.test_token);
    let landing = node.sender.create(contract_nonce);
    out["chain_id"] = json!(node.chain_id);
    out["deployer"] = json!(node.sender.to_string());
    out["contract"] = json!(landing.to_string());
    if options.test_token {
        out["token"] = json!(node.sender.create(nonce).to_string());
    }
    let configured = evm(&router.market.settlement_contract);
    let domain_ok = router.market.settlement_chain_id == node.chain_id && configured == landing;
    if options.dry_run {
        out["matches_router_domain"] = json!(domain_ok);
        return Ok(out);
    }
    if router.market.settlement_chain_id != node.chain_id {
        return Err(ChainError::WrongChain {
            node: node.chain_id,
            router: router.market.settlement_chain_id,
        });
    }
    if configured != landing {
        return Err(ChainError::WrongAddress {
            landing,
            configured,
            nonce: contract_nonce,
        });
    }
    let token = match (options.token, options.test_token) {
        (Some(token), false) => token,
        (None, true) => {
            let (token, gas) =
                deploy_code(&node, Artifact::test_mor().bytecode, send, "TestMOR").await?;
            out["token_deploy_gas"] = json!(gas);
            token
        }
        _ => {
            return Err(ChainError::Usage(
                "give exactly one of --token ADDRESS and --test-token".into(),
            ))
        }
    };
    let params = router.deploy_params(engine(token));
    let (contract, gas) = deploy_code(&node, params.deploy_code(), send, "ComputeContract").await?;
    debug_assert_eq!(contract, landing);
    out["token"] = json!(token.to_string());
    out["contract"] = json!(contract.to_string());
    out["deploy_gas"] = json!(gas);
    out["parameters"] = params_json(&params, router);
    if options.fund_wei > 0 {
        if !options.test_token {
            return Err(ChainError::Usage(
                "--fund-wei mints the test token: only with --test-token".into(),
            ));
        }
        let call = TestMOR::mintCall {
            to: contract,
            amount: U256::from(options.fund_wei),
        };
        send_call(
            &node,
            token,
            alloy::sol_types::SolCall::abi_encode(&call),
            send,
        )
        .await?;
        out["funded_wei"] = json!(options.fund_wei.to_string());
    }
    verify(router, &node.provider, node.chain_id, contract, Some(token)).await?;
    out["verified"] = json!(true);
    Ok(out)
}

/// Sends a call and requires it confirmed and successful.
pub async fn send_call(
    node: &Node,
    to: Address,
    calldata: Vec<u8>,
    send: &SendArgs,
) -> Result<crate::chain::Confirmed, ChainError> {
    let calldata = Bytes::from(calldata);
    node.simulate(to, &calldata)
        .await
        .map_err(CallFailure::into_error)?;
    match node.send(Some(to), calldata, send, |_| {}).await {
        Ok(Sent::Confirmed(done)) => Ok(*done),
        Ok(Sent::Failed { hash, .. }) => Err(ChainError::Failed {
            hash: hash.to_string(),
            reason: "reverted when mined".into(),
        }),
        Ok(Sent::Reorged { hash }) => Err(ChainError::Failed {
            hash: hash.to_string(),
            reason: "removed by a reorg before its confirmations; run the command again".into(),
        }),
        Err(failure) => Err(failure.into_error()),
    }
}

/// An alloy address as the engine's.
fn engine(address: Address) -> yellowstone_engine::Address {
    yellowstone_engine::Address(address.0 .0)
}

/// Reads the deployed contract's parameters and compares each with the router's
/// (and `token` when given). Every mismatch is listed; any refuses.
pub async fn verify(
    router: &RouterSide,
    provider: &DynProvider,
    chain_id: u64,
    contract: Address,
    token: Option<Address>,
) -> Result<Value, ChainError> {
    check_domain(router, chain_id, contract)?;
    let code = provider.get_code_at(contract).await.map_err(rpc)?;
    if code.is_empty() {
        return Err(ChainError::NoCode(contract));
    }
    let c = ComputeContract::new(contract, provider.clone());
    let deployed_token = c.token().call().await.map_err(rpc)?;
    let params = router.deploy_params(engine(token.unwrap_or(deployed_token)));
    let mut read = json!({});
    let mut wrong: Vec<String> = Vec::new();
    macro_rules! check {
        ($name:literal, $got:expr, $want:expr) => {{
            let got = $got;
            let want = $want;
            read[$name] = json!(got.to_string());
            if got != want {
                wrong.push(format!("{}: deployed {}, router {}", $name, got, want));
            }
        }};
    }
    check!("token", deployed_token, evm(&params.token));
    check!(
        "router",
        c.router().call().await.map_err(rpc)?,
        evm(&params.router)
    );
    check!(
        "networkId",
        c.networkId().call().await.map_err(rpc)?,
        u64::from(params.network_id)
    );
    check!(
        "epochsPerDay",
        c.epochsPerDay().call().await.map_err(rpc)?,
        params.epochs_per_day
    );
    check!(
        "computeEmissionPerDay",
        c.computeEmissionPerDay().call().await.map_err(rpc)?,
        U256::from(params.compute_emission_wei_per_day)
    );
    check!(
        "bootstrapBonusPerDay",
        c.bootstrapBonusPerDay().call().await.map_err(rpc)?,
        U256::from(params.bootstrap_bonus_wei_per_day)
    );
    check!(
        "bootstrapDays",
        c.bootstrapDays().call().await.map_err(rpc)?,
        params.bootstrap_days
    );
    check!(
        "poolSpendBps",
        c.poolSpendBps().call().await.map_err(rpc)?,
        params.pool_spend_bps
    );
    check!(
        "burnUnused",
        c.burnUnused().call().await.map_err(rpc)?,
        params.burn_unused
    );
    if !wrong.is_empty() {
        return Err(ChainError::Mismatch(wrong.join("; ")));
    }
    Ok(
        json!({ "contract": contract.to_string(), "chain_id": chain_id, "deployed": read, "matches": true }),
    )
}

/// A provider's claim on the chain against the epoch the chain has settled.
pub async fn claim(
    router: &RouterSide,
    node: &Node,
    contract: Address,
    provider_address: Address,
    send: &SendArgs,
) -> Result<Value, ChainError> {
    check_domain(router, node.chain_id, contract)?;
    let c = ComputeContract::new(contract, node.provider.clone());
    let next = c.nextEpoch().call().await.map_err(rpc)?;
    let Some(settled) = next.checked_sub(1) else {
        return Err(ChainError::Usage(
            "the contract has settled no epoch yet: wait for the relayer".into(),
        ));
    };
    let engine_provider = yellowstone_engine::Address(provider_address.0 .0);
    let proof = yellowstone_gateway::settlement::proof_at(
        router.data_dir()?,
        &engine_provider,
        Some(settled),
    )
    .map_err(|e| ChainError::Router(e.to_string()))?;
    let root = c.root().call().await.map_err(rpc)?;
    if root.0 != proof.root {
        return Err(ChainError::Mismatch(format!(
            "the contract's root for epoch {settled} is {root}, the router's is {}: a settlement other than the router's?",
            yellowstone_contract::hex0x(&proof.root)
        )));
    }
    let before = c.paidTo(provider_address).call().await.map_err(rpc)?;
    let cumulative = U256::from(proof.cumulative_wei);
    let mut out = json!({
        "provider": provider_address.to_string(),
        "epoch": settled,
        "cumulative_wei": proof.cumulative_wei.to_string(),
        "paid_before_wei": before.to_string(),
    });
    if cumulative <= before {
        out["paid_wei"] = json!("0");
        out["note"] = json!(format!(
            "nothing to claim: epoch {settled}'s cumulative is already paid"
        ));
        return Ok(out);
    }
    let done = send_call(node, contract, proof.claim_calldata(), send).await?;
    let after = c.paidTo(provider_address).call().await.map_err(rpc)?;
    out["paid_wei"] = json!((after - before).to_string());
    out["paid_to_wei"] = json!(after.to_string());
    out["tx"] = json!(done.hash.to_string());
    out["gas_used"] = json!(done.receipt.gas_used);
    Ok(out)
}
