//! `yellowstone-chain`: the Compute Contract on a real EVM chain (SPEC R-CHAIN-2,
//! R-CHAIN-3, R-CLAIM-1). The router never sends a transaction; this tool does, with
//! its own key and gas: `deploy` and `verify-deployment` (parameters from the
//! router's configuration or data directory), `relay` (the router's settlements, in
//! order, to the contract), `claim` (a provider's payment against the epoch the chain
//! has settled). See docs/chain.md.

mod bindings;
mod chain;
mod deploy;
mod error;
mod metrics;
mod reconcile;
mod relay;
mod router;

use alloy::primitives::Address;
use chain::{NodeArgs, SendArgs};
use clap::{Parser, Subcommand};
use error::ChainError;
use router::RouterArgs;
use serde_json::Value;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(
    name = "yellowstone-chain",
    version,
    about = "Deploys, relays to and claims from the Yellowstone Compute Contract on an EVM chain (the router itself never sends a transaction)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Deploys the Compute Contract with the router's parameters (and the test MOR
    /// token with --test-token), refuses unless it lands at the router's
    /// market.settlement_contract on chain market.settlement_chain_id, then verifies
    /// it. Prints the addresses as JSON. --dry-run prints every parameter and, with
    /// a key, where the contract would land; it sends nothing.
    Deploy {
        #[command(flatten)]
        router: RouterArgs,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        send: SendArgs,
        /// The MOR token's address.
        #[arg(long)]
        token: Option<Address>,
        /// Deploy the test MOR token first (anyone may mint it: local chains only).
        #[arg(long, conflicts_with = "token")]
        test_token: bool,
        /// With --test-token: mint this many MOR wei to the contract.
        #[arg(long, default_value_t = 0, value_parser = yellowstone_wire::amount::parse_wei)]
        fund_wei: u128,
        #[arg(long)]
        dry_run: bool,
    },
    /// Reads the deployed contract's parameters (token, router, networkId,
    /// epochsPerDay, emission, bonus, bootstrap days, pool spend, burn) and exits 1
    /// naming every one that differs from the router's.
    VerifyDeployment {
        #[command(flatten)]
        router: RouterArgs,
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        contract: Address,
        /// The expected MOR token (default: not compared).
        #[arg(long)]
        token: Option<Address>,
    },
    /// Relays the router's settlements from its data directory to the contract, in
    /// order, until stopped (SIGINT/SIGTERM) or --until-epoch. Prints
    /// `RELAYING metrics=<addr> relayer=<0x> contract=<0x>` once serving metrics.
    Relay {
        #[command(flatten)]
        router: RouterArgs,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        send: SendArgs,
        #[arg(long)]
        contract: Address,
        /// Prometheus metrics (GET /metrics); port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_listen: SocketAddr,
        /// Exit 0 once the contract has settled this epoch.
        #[arg(long)]
        until_epoch: Option<u64>,
        #[command(flatten)]
        reconcile: reconcile::ReconcileArgs,
    },
    /// Claims a provider's MOR on the chain with its proof for the epoch the chain
    /// has settled (read from the router's data directory), and prints what was paid.
    Claim {
        #[command(flatten)]
        router: RouterArgs,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        send: SendArgs,
        #[arg(long)]
        contract: Address,
        /// The provider (default: the sender's address). MOR goes only to it.
        #[arg(long)]
        provider: Option<Address>,
    },
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

async fn execute(command: Cmd) -> Result<(), ChainError> {
    match command {
        Cmd::Deploy {
            router,
            node,
            send,
            token,
            test_token,
            fund_wei,
            dry_run,
        } => {
            let side = router.load()?;
            let options = deploy::DeployOptions {
                token,
                test_token,
                fund_wei,
                dry_run,
            };
            if !dry_run && token.is_none() && !test_token {
                return Err(ChainError::Usage(
                    "give --token ADDRESS (the MOR token) or --test-token".into(),
                ));
            }
            print(&deploy::deploy(&side, &node, &send, &options).await?);
        }
        Cmd::VerifyDeployment {
            router,
            node,
            contract,
            token,
        } => {
            let side = router.load()?;
            let (provider, chain_id) = node.connect_read_only().await?;
            print(&deploy::verify(&side, &provider, chain_id, contract, token).await?);
        }
        Cmd::Relay {
            router,
            node,
            send,
            contract,
            metrics_listen,
            until_epoch,
            reconcile,
        } => {
            let side = router.load()?;
            let reconciler = reconcile.load()?;
            side.data_dir()?;
            let node = node.connect().await?;
            let shared = metrics::Shared::default();
            let bound = metrics::serve(metrics_listen, shared.clone())
                .await
                .map_err(|source| ChainError::Metrics {
                    addr: metrics_listen,
                    source,
                })?;
            println!(
                "RELAYING metrics={bound} relayer={} contract={contract}",
                node.sender
            );
            let options = relay::RelayOptions {
                contract,
                send,
                until_epoch,
                reconciler,
            };
            tokio::select! {
                result = relay::run(&side, &node, &options, &shared) => result?,
                _ = shutdown() => tracing::info!("stopping on a signal"),
            }
        }
        Cmd::Claim {
            router,
            node,
            send,
            contract,
            provider,
        } => {
            let side = router.load()?;
            let node = node.connect().await?;
            let provider = provider.unwrap_or(node.sender);
            print(&deploy::claim(&side, &node, contract, provider, &send).await?);
        }
    }
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("yellowstone-chain: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(execute(cli.command)) {
        eprintln!("yellowstone-chain: {error}");
        std::process::exit(1);
    }
}
