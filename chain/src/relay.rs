//! The relayer (R-CHAIN-2): follows the router's settlements in its data directory
//! and submits each, in order, as the contract's next epoch.
//!
//! Each round: read the contract (`nextEpoch`, balance, owed, today's cap), read the
//! router's sealed epochs, and if the contract is behind, take the record of exactly
//! `nextEpoch` (never a later one: it stops rather than skip), sign it with the
//! router's key as the router does (RFC 6979: the bytes the router published), check
//! it recovers to the contract's `router()` in the contract's domain and carries the
//! contract's network id (refused before sending otherwise), simulate it (a revert is
//! decoded: `Underfunded` raises the funding alarm and waits, `AlreadySettled` means
//! someone else relayed it, anything else stops), then send it and wait for its
//! confirmations (`chain::Node::send`: own nonce, fees, replacement, reorg check).
//! A reorg that removes a settle shows as `nextEpoch` going back: the next round
//! sends it again. The node being down is retried every poll.

use crate::bindings::{self, ComputeContract, ComputeContract::ComputeContractErrors};
use crate::chain::{CallFailure, Node, SendArgs, Sent};
use crate::error::{rpc, ChainError};
use crate::metrics::Shared;
use crate::router::RouterSide;
use alloy::primitives::{Address, Bytes};
use alloy::providers::DynProvider;
use std::time::Duration;
use yellowstone_contract::SignedSettlement;
use yellowstone_engine::BLOCK_MS;

/// The relayer's own settings.
pub struct RelayOptions {
    pub contract: Address,
    pub send: SendArgs,
    /// Stop after the contract has settled this epoch (tests, one-shot catch-up).
    pub until_epoch: Option<u64>,
    /// R-CHAIN-3: tells the router what the chain paid (None: not configured).
    pub reconciler: Option<crate::reconcile::Reconciler>,
}

/// What the router has sealed (read-only on its data directory).
struct RouterView {
    last_epoch: Option<u64>,
    first_kept: Option<u64>,
    record: Option<yellowstone_engine::settlement::SettlementRecord>,
    genesis_ms: u64,
    credited: crate::reconcile::Credited,
}

fn read_router(router: &RouterSide, epoch: u64) -> Result<RouterView, ChainError> {
    let recovered = yellowstone_gateway::journal::tools::recover_read_only(router.data_dir()?)
        .map_err(|e| ChainError::Router(e.to_string()))?;
    let state = recovered.engine.settlement();
    let ledger = recovered.engine.ledger();
    let credited = ledger
        .credited_wei
        .iter()
        .map(|(provider, credit)| (*provider, *credit, ledger.owed(provider)))
        .collect();
    Ok(RouterView {
        credited,
        last_epoch: state.last().map(|r| r.epoch),
        first_kept: state.history.front().map(|r| r.epoch),
        record: state.record(epoch).cloned(),
        genesis_ms: recovered.engine.config().genesis_ms,
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn read_funding(
    c: &ComputeContract::ComputeContractInstance<DynProvider>,
    provider: &DynProvider,
    metrics: &Shared,
) -> Result<(), ChainError> {
    let token = c.token().call().await.map_err(rpc)?;
    let balance = crate::bindings::TestMOR::new(token, provider.clone())
        .balanceOf(*c.address())
        .call()
        .await
        .map_err(rpc)?;
    let owed = c.owedTotal().call().await.map_err(rpc)?;
    let cap = c.dayCap().call().await.map_err(rpc)?;
    let spent = c.daySpent().call().await.map_err(rpc)?;
    let due = cap.saturating_sub(spent);
    let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
    m.contract_balance_wei = balance.saturating_to();
    m.owed_wei = owed.saturating_to();
    m.due_today_wei = due.saturating_to();
    // The alarm stays raised after an Underfunded refusal until a settle succeeds.
    if balance < owed.saturating_add(due) {
        m.funding_alarm = true;
    }
    Ok(())
}

/// Checks the contract is the one the router signs for, before anything is sent.
pub async fn preflight(
    router: &RouterSide,
    node: &Node,
    contract: Address,
) -> Result<(), ChainError> {
    crate::deploy::check_domain(router, node.chain_id, contract)?;
    let code = alloy::providers::Provider::get_code_at(&node.provider, contract)
        .await
        .map_err(rpc)?;
    if code.is_empty() {
        return Err(ChainError::NoCode(contract));
    }
    let c = ComputeContract::new(contract, node.provider.clone());
    let on_chain_router = c.router().call().await.map_err(rpc)?;
    let key = router.key()?;
    let signer = Address::from(key.address().0);
    if on_chain_router != signer {
        return Err(ChainError::Mismatch(format!(
            "router(): the contract takes settlements from {on_chain_router}, the data directory's key is {signer}"
        )));
    }
    let network = c.networkId().call().await.map_err(rpc)?;
    if network != u64::from(router.network_id) {
        return Err(ChainError::Mismatch(format!(
            "networkId(): the contract is for network {network}, the router's is {} (identity.network_id)",
            router.network_id
        )));
    }
    Ok(())
}

/// Runs until `options.until_epoch` is settled or an error it must not skip.
pub async fn run(
    router: &RouterSide,
    node: &Node,
    options: &RelayOptions,
    metrics: &Shared,
) -> Result<(), ChainError> {
    preflight(router, node, options.contract).await?;
    let key = router.key()?.clone();
    let c = ComputeContract::new(options.contract, node.provider.clone());
    let poll = Duration::from_millis(options.send.poll_ms);
    loop {
        match round(router, node, &key, &c, options, metrics).await {
            Ok(Round::Done) => return Ok(()),
            Ok(Round::Sent) => continue,
            Ok(Round::Wait) => {}
            Err(error) if error.is_transient() => {
                metrics
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .rpc_errors_total += 1;
                tracing::warn!(%error, "the node failed or refused (e.g. the relayer cannot pay gas); retrying");
            }
            Err(error) => {
                metrics.lock().unwrap_or_else(|p| p.into_inner()).stopped = true;
                return Err(error);
            }
        }
        tokio::time::sleep(poll).await;
    }
}

enum Round {
    /// Something was sent (or found done): look again at once.
    Sent,
    /// Nothing to do now.
    Wait,
    /// `until_epoch` reached.
    Done,
}

async fn round(
    router: &RouterSide,
    node: &Node,
    key: &yellowstone_wire::SigningKey,
    c: &ComputeContract::ComputeContractInstance<DynProvider>,
    options: &RelayOptions,
    metrics: &Shared,
) -> Result<Round, ChainError> {
    let next = c.nextEpoch().call().await.map_err(rpc)?;
    read_funding(c, &node.provider, metrics).await?;
    let view = read_router(router, next)?;
    {
        let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
        m.chain_last_epoch = next.checked_sub(1);
        m.router_last_epoch = view.last_epoch;
        m.lag_epochs = view
            .last_epoch
            .map_or(0, |last| (last + 1).saturating_sub(next));
        m.lag_seconds = match &view.record {
            Some(record) => {
                let ended = view
                    .genesis_ms
                    .saturating_add((record.last_block + 1).saturating_mul(BLOCK_MS));
                now_ms().saturating_sub(ended) as f64 / 1000.0
            }
            None => 0.0,
        };
    }
    if options.until_epoch.is_some_and(|until| next > until) {
        return Ok(Round::Done);
    }
    let Some(record) = view.record else {
        return match (view.first_kept, view.last_epoch) {
            // The contract is behind what the router still keeps: never skip.
            (Some(first), _) if next < first => Err(ChainError::EpochGone { epoch: next, first }),
            _ => {
                // Caught up: the router's ledger learns what the chain paid.
                if let Some(reconciler) = &options.reconciler {
                    reconciler
                        .run_once(c, node.chain_id, &view.credited, metrics)
                        .await?;
                }
                Ok(Round::Wait)
            }
        };
    };
    debug_assert_eq!(record.epoch, next);
    let signed = SignedSettlement::sign(
        &record,
        key,
        router.network_id,
        router.market.settlement_chain_id,
        &router.market.settlement_contract,
    );
    // The contract's own digest of these fields must be what the router signed:
    // a wrong chain, contract or network is refused here, before any gas is spent.
    let data = ComputeContract::Settlement {
        networkId: u64::from(router.network_id),
        epoch: record.epoch,
        credited: alloy::primitives::U256::from(record.credited_wei),
        bootstrap: alloy::primitives::U256::from(record.bootstrap_wei),
        root: alloy::primitives::B256::from(record.merkle_root),
    };
    let digest = c.settlementDigest(data).call().await.map_err(rpc)?;
    if digest.0 != signed.digest {
        return Err(ChainError::Mismatch(format!(
            "epoch {next}: the contract's EIP-712 digest {digest} is not the router's {}: another chain, contract or network",
            yellowstone_contract::hex0x(&signed.digest)
        )));
    }
    let calldata = Bytes::from(signed.settle_calldata());
    match node.simulate(options.contract, &calldata).await {
        Ok(_) => {}
        Err(CallFailure::Node(error)) => return Err(error),
        Err(CallFailure::Contract(error)) => return refused(next, &error, metrics),
        Err(CallFailure::OtherRevert(text)) => {
            return Err(ChainError::Reverted(format!("epoch {next}: {text}")))
        }
    }
    tracing::info!(epoch = next, credited_wei = %record.credited_wei, "settling");
    let metrics_for_replace = metrics.clone();
    let sent = node
        .send(
            Some(options.contract),
            calldata.clone(),
            &options.send,
            |_| {
                metrics_for_replace
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .resubmits_total += 1;
            },
        )
        .await;
    match sent {
        Ok(Sent::Confirmed(done)) => {
            let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
            m.settled_total += 1;
            m.funding_alarm = false;
            m.gas_used_total += done.receipt.gas_used;
            m.gas_spent_wei_total +=
                u128::from(done.receipt.gas_used) * done.receipt.effective_gas_price;
            // From the epoch's end (its last block's, by the market's clock) to
            // the settle's confirmation: the relayer's lag as an operator sees it.
            let ended = view
                .genesis_ms
                .saturating_add((record.last_block + 1).saturating_mul(BLOCK_MS));
            let lag_ms = now_ms().saturating_sub(ended);
            m.last_settle_lag_seconds = lag_ms as f64 / 1000.0;
            println!(
                "SETTLED epoch={next} tx={} block={} gas={} lag_ms={lag_ms}",
                done.hash,
                done.receipt.block_number.unwrap_or(0),
                done.receipt.gas_used
            );
            Ok(Round::Sent)
        }
        Ok(Sent::Failed {
            hash,
            gas_used,
            gas_price,
        }) => {
            {
                let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
                m.gas_used_total += gas_used;
                m.gas_spent_wei_total += u128::from(gas_used) * gas_price;
            }
            // Why: simulate again on the new state (e.g. another relayer's settle
            // was mined first: AlreadySettled, and the next round moves on).
            match node.simulate(options.contract, &calldata).await {
                Err(CallFailure::Contract(error)) => refused(next, &error, metrics),
                Err(CallFailure::Node(error)) => Err(error),
                _ => Err(ChainError::Failed {
                    hash: hash.to_string(),
                    reason: format!("epoch {next}'s settle reverted when mined and passes now"),
                }),
            }
        }
        Ok(Sent::Reorged { hash }) => {
            metrics
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reorgs_total += 1;
            tracing::warn!(epoch = next, %hash, "the settle left the chain (reorg): reading the contract again");
            Ok(Round::Sent)
        }
        Err(CallFailure::Node(error)) => Err(error),
        Err(CallFailure::Contract(error)) => refused(next, &error, metrics),
        Err(CallFailure::OtherRevert(text)) => {
            Err(ChainError::Reverted(format!("epoch {next}: {text}")))
        }
    }
}

/// A decoded refusal of `epoch`'s settle: wait (funding), move on (someone else
/// relayed it), or stop.
fn refused(
    epoch: u64,
    error: &ComputeContractErrors,
    metrics: &Shared,
) -> Result<Round, ChainError> {
    let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
    let count = m
        .reverts_total
        .entry(bindings::name(error).to_string())
        .or_insert(0);
    *count += 1;
    let count = *count;
    match error {
        ComputeContractErrors::Underfunded(_) => {
            m.funding_alarm = true;
            // Said at once, then every 100th poll (the alarm metric stays raised).
            if count % 100 == 1 {
                tracing::error!(epoch, error = %bindings::describe(error), "the contract is underfunded: fund it; waiting");
            }
            Ok(Round::Wait)
        }
        ComputeContractErrors::AlreadySettled(_) => Ok(Round::Sent),
        other => Err(ChainError::Reverted(format!(
            "epoch {epoch}: {}",
            bindings::describe(other)
        ))),
    }
}
