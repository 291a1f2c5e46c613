//! The errors of `yellowstone-chain`: each names the value at fault and what to do.

use alloy::primitives::Address;

/// Everything that stops a command. `Rpc` (the node unreachable or refusing a
/// request) is retried by the relayer; every other variant stops it (R-CHAIN-2: it
/// stops rather than skip or mis-send an epoch).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("{0}")]
    Router(String),
    #[error("key: {0}")]
    Key(String),
    #[error("--rpc {url:?}: {reason}")]
    RpcUrl { url: String, reason: String },
    #[error("JSON-RPC: {0}")]
    Rpc(String),
    #[error("the node is chain {node}, the router signs for chain {router} (market.settlement_chain_id): refusing to send")]
    WrongChain { node: u64, router: u64 },
    #[error("the router signs for contract {router} (market.settlement_contract), not {given}: refusing to send")]
    WrongContract { router: Address, given: Address },
    #[error("no contract code at {0}: deploy it first (yellowstone-chain deploy)")]
    NoCode(Address),
    #[error("the deployed contract differs from the router's configuration: {0}")]
    Mismatch(String),
    #[error("reverted: {0}")]
    Reverted(String),
    #[error("transaction {hash} failed on chain: {reason}")]
    Failed { hash: String, reason: String },
    #[error("epoch {epoch} is the contract's next but the router keeps settlements from epoch {first} only (market.settlements_kept_max): cannot skip an epoch, stopping")]
    EpochGone { epoch: u64, first: u64 },
    #[error("the deployment would land at {landing}, but the router signs for {configured} (market.settlement_contract): the deployer's nonce is {nonce}")]
    WrongAddress {
        landing: Address,
        configured: Address,
        nonce: u64,
    },
    #[error("{0}")]
    Usage(String),
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl ChainError {
    /// A node that failed or could not be reached: worth retrying.
    pub fn is_transient(&self) -> bool {
        matches!(self, ChainError::Rpc(_))
    }
}

/// A transport or node error as `ChainError::Rpc`.
pub fn rpc<E: std::fmt::Display>(error: E) -> ChainError {
    ChainError::Rpc(error.to_string())
}
