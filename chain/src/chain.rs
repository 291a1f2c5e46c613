//! Talking to the node: the connection, the relayer's or provider's key, revert
//! decoding, and sending one transaction to its confirmations with the sender's own
//! nonce, estimated EIP-1559 fees, replacement of a dropped or underpriced
//! transaction, and detection of a reorg that removed it (R-CHAIN-2).

use crate::bindings::{self, ComputeContract::ComputeContractErrors};
use crate::error::{rpc, ChainError};
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, Bytes, B256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolInterface;
use alloy::transports::{RpcError, TransportErrorKind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The node and the key that pays for transactions.
#[derive(clap::Args, Clone, Debug)]
pub struct NodeArgs {
    /// The node's JSON-RPC URL (http:// or https://).
    #[arg(
        long,
        env = "YELLOWSTONE_CHAIN_RPC",
        default_value = "http://127.0.0.1:8545"
    )]
    pub rpc: String,
    /// A file holding the sender's secret key (64 hex digits, or what
    /// `yellowstone-router keygen` prints): the relayer's, the provider's or the
    /// deployer's, readable by its owner only (R-OPS-2). Preferred over --key-hex
    /// (not in `ps`).
    #[arg(long, conflicts_with = "key_hex")]
    pub key_file: Option<PathBuf>,
    /// The sender's secret key in hex (tests and local nodes only).
    #[arg(long, env = "YELLOWSTONE_CHAIN_KEY")]
    pub key_hex: Option<String>,
}

/// Sending parameters (each a flag of the commands that send).
#[derive(clap::Args, Clone, Debug)]
pub struct SendArgs {
    /// Blocks on top of a transaction's block before it counts (1: mined).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub confirmations: u64,
    /// How often to poll the node, in milliseconds.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_ms: u64,
    /// A transaction not mined after this many milliseconds is sent again with the
    /// same nonce and fees raised by --fee-bump-percent (dropped or underpriced).
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub resubmit_ms: u64,
    /// Fee increase of a replacement, percent (nodes require at least 10).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(10..=1_000))]
    pub fee_bump_percent: u64,
    /// Most fee per gas the sender pays, in wei (a replacement never goes above).
    #[arg(long, default_value_t = 1_000_000_000_000, value_parser = yellowstone_wire::amount::parse_wei)]
    pub max_fee_per_gas_wei: u128,
}

/// A connected node with the sender's wallet.
#[derive(Clone)]
pub struct Node {
    pub provider: DynProvider,
    pub sender: Address,
    pub chain_id: u64,
}

impl NodeArgs {
    /// The sender's key: `--key-file` through the workspace's one key-file reader
    /// (R-OPS-2: refused if group or others may read it; `keygen` output or 64 hex
    /// digits), or `--key-hex`.
    fn signer(&self) -> Result<PrivateKeySigner, ChainError> {
        let key = match (&self.key_file, &self.key_hex) {
            (Some(path), _) => yellowstone_wire::keyfile::read_key_file(path)
                .map_err(|e| ChainError::Key(e.to_string()))?,
            (None, Some(hex)) => yellowstone_wire::SigningKey::from_hex(hex)
                .map_err(|e| ChainError::Key(format!("--key-hex: {e}")))?,
            (None, None) => {
                return Err(ChainError::Usage(
                    "the sender's key: --key-file or --key-hex".into(),
                ))
            }
        };
        PrivateKeySigner::from_bytes(&B256::from(key.secret_bytes()))
            .map_err(|e| ChainError::Key(format!("not a secp256k1 secret key: {e}")))
    }

    /// Connects with the sender's key; reads the chain id once.
    pub async fn connect(&self) -> Result<Node, ChainError> {
        let signer = self.signer()?;
        let sender = signer.address();
        let url = self.rpc.parse().map_err(|e| ChainError::RpcUrl {
            url: self.rpc.clone(),
            reason: format!("{e}"),
        })?;
        // No recommended fillers: nonce, fees and gas are this crate's (R-CHAIN-2);
        // the wallet only signs.
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .wallet(EthereumWallet::from(signer))
            .connect_http(url)
            .erased();
        let chain_id = provider.get_chain_id().await.map_err(rpc)?;
        Ok(Node {
            provider,
            sender,
            chain_id,
        })
    }

    /// Connects without a key (read-only commands).
    pub async fn connect_read_only(&self) -> Result<(DynProvider, u64), ChainError> {
        let url = self.rpc.parse().map_err(|e| ChainError::RpcUrl {
            url: self.rpc.clone(),
            reason: format!("{e}"),
        })?;
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_http(url)
            .erased();
        let chain_id = provider.get_chain_id().await.map_err(rpc)?;
        Ok((provider, chain_id))
    }
}

/// What a failed call or estimate says: a decoded Compute Contract error, another
/// revert, or the node failing.
#[derive(Debug)]
pub enum CallFailure {
    Contract(ComputeContractErrors),
    OtherRevert(String),
    Node(ChainError),
}

impl CallFailure {
    pub fn from_rpc(error: RpcError<TransportErrorKind>) -> CallFailure {
        if let Some(payload) = error.as_error_resp() {
            if let Some(data) = payload.as_revert_data() {
                return match ComputeContractErrors::abi_decode(&data) {
                    Ok(decoded) => CallFailure::Contract(decoded),
                    Err(_) => {
                        CallFailure::OtherRevert(format!("{} (data {data})", payload.message))
                    }
                };
            }
            if payload.message.contains("revert") {
                return CallFailure::OtherRevert(payload.message.to_string());
            }
        }
        CallFailure::Node(rpc(error))
    }

    pub fn describe(&self) -> String {
        match self {
            CallFailure::Contract(e) => bindings::describe(e),
            CallFailure::OtherRevert(text) => text.clone(),
            CallFailure::Node(e) => e.to_string(),
        }
    }

    pub fn into_error(self) -> ChainError {
        match self {
            CallFailure::Node(e) => e,
            other => ChainError::Reverted(other.describe()),
        }
    }
}

/// A transaction that reached its confirmations.
#[derive(Debug)]
pub struct Confirmed {
    pub receipt: TransactionReceipt,
    pub hash: B256,
}

/// How a send ended.
#[derive(Debug)]
pub enum Sent {
    /// Boxed: a receipt is large, the other outcomes small.
    Confirmed(Box<Confirmed>),
    /// Mined but reverted (e.g. another relayer settled the epoch first): the caller
    /// reads the contract again.
    Failed {
        hash: B256,
        gas_used: u64,
        gas_price: u128,
    },
    /// Mined, then removed by a reorg before its confirmations; nothing to resend
    /// here: the caller reads the contract again and sends what is missing.
    Reorged { hash: B256 },
}

impl Node {
    /// eth_call of `calldata` to `to` from the sender at the latest block.
    pub async fn simulate(&self, to: Address, calldata: &Bytes) -> Result<Bytes, CallFailure> {
        let tx = TransactionRequest::default()
            .with_from(self.sender)
            .with_to(to)
            .with_input(calldata.clone());
        self.provider.call(tx).await.map_err(CallFailure::from_rpc)
    }

    /// Sends `calldata` to `to` (or creates a contract when `to` is None) and waits
    /// for `args.confirmations`. The nonce is the sender's count of mined
    /// transactions (the relayer has at most one transaction in flight, so a nonce
    /// freed by a reorg or a drop is reused, never skipped); fees are the node's
    /// EIP-1559 estimate, raised by `fee_bump_percent` for each replacement.
    pub async fn send(
        &self,
        to: Option<Address>,
        calldata: Bytes,
        args: &SendArgs,
        mut on_replace: impl FnMut(u32),
    ) -> Result<Sent, CallFailure> {
        let nonce = self
            .provider
            .get_transaction_count(self.sender)
            .latest()
            .await
            .map_err(|e| CallFailure::Node(rpc(e)))?;
        let mut request = TransactionRequest::default()
            .with_from(self.sender)
            .with_input(calldata)
            .with_nonce(nonce)
            .with_chain_id(self.chain_id);
        request = match to {
            Some(to) => request.with_to(to),
            None => request.into_create(),
        };
        let gas = self
            .provider
            .estimate_gas(request.clone())
            .await
            .map_err(CallFailure::from_rpc)?;
        // 20 % head room: the estimate is for the latest block's state.
        request = request.with_gas_limit(gas.saturating_mul(6) / 5);
        let fees = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(|e| CallFailure::Node(rpc(e)))?;
        let mut max_fee = fees.max_fee_per_gas.min(args.max_fee_per_gas_wei);
        let mut priority = fees.max_priority_fee_per_gas.min(max_fee);
        let mut hashes: Vec<B256> = Vec::new();
        let mut sends: u32 = 0;
        'send: loop {
            let tx = request
                .clone()
                .with_max_fee_per_gas(max_fee)
                .with_max_priority_fee_per_gas(priority);
            match self.provider.send_transaction(tx).await {
                Ok(pending) => {
                    hashes.push(*pending.tx_hash());
                    sends += 1;
                    if sends > 1 {
                        on_replace(sends);
                    }
                }
                Err(error) => {
                    let text = error.to_string();
                    // Our nonce was used meanwhile (an earlier send of ours was
                    // mined): look for its receipt below.
                    if !(text.contains("nonce too low") || text.contains("already known"))
                        || hashes.is_empty()
                    {
                        return Err(CallFailure::from_rpc(error));
                    }
                }
            }
            let sent_at = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
                for hash in hashes.iter().rev() {
                    let receipt = self
                        .provider
                        .get_transaction_receipt(*hash)
                        .await
                        .map_err(|e| CallFailure::Node(rpc(e)))?;
                    if let Some(receipt) = receipt {
                        return self.confirm(receipt, *hash, args).await;
                    }
                }
                if sent_at.elapsed() >= Duration::from_millis(args.resubmit_ms) {
                    let mined = self
                        .provider
                        .get_transaction_count(self.sender)
                        .latest()
                        .await
                        .map_err(|e| CallFailure::Node(rpc(e)))?;
                    if mined > nonce {
                        // Another transaction took the nonce (not one of ours, or
                        // its receipt is not visible yet): let the caller re-read.
                        if let Some(&hash) = hashes.last() {
                            return Ok(Sent::Reorged { hash });
                        }
                    }
                    let bump = |fee: u128| {
                        fee.saturating_mul(100 + u128::from(args.fee_bump_percent)) / 100 + 1
                    };
                    max_fee = bump(max_fee).min(args.max_fee_per_gas_wei);
                    priority = bump(priority).min(max_fee);
                    tracing::warn!(
                        nonce,
                        sends,
                        max_fee,
                        "not mined in time: sending again with higher fees"
                    );
                    continue 'send;
                }
            }
        }
    }

    /// Waits until `receipt`'s block has `confirmations` blocks (itself included),
    /// then checks the transaction is still in the chain at the same block.
    async fn confirm(
        &self,
        receipt: TransactionReceipt,
        hash: B256,
        args: &SendArgs,
    ) -> Result<Sent, CallFailure> {
        let mined_in = receipt.block_number.unwrap_or(0);
        let block_hash = receipt.block_hash;
        loop {
            let head = self
                .provider
                .get_block_number()
                .await
                .map_err(|e| CallFailure::Node(rpc(e)))?;
            let again = self
                .provider
                .get_transaction_receipt(hash)
                .await
                .map_err(|e| CallFailure::Node(rpc(e)))?;
            match again {
                Some(again) if again.block_hash == block_hash => {}
                // Gone, or now in another block: a reorg. Re-read the contract.
                _ => return Ok(Sent::Reorged { hash }),
            }
            if head + 1 >= mined_in + args.confirmations {
                break;
            }
            tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
        }
        if !receipt.status() {
            return Ok(Sent::Failed {
                hash,
                gas_used: receipt.gas_used,
                gas_price: receipt.effective_gas_price,
            });
        }
        Ok(Sent::Confirmed(Box::new(Confirmed { receipt, hash })))
    }
}

/// Converts an engine address.
pub fn evm(address: &yellowstone_engine::Address) -> Address {
    Address::from(address.0)
}

#[cfg(test)]
mod key_file_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn args(path: &std::path::Path) -> NodeArgs {
        NodeArgs {
            rpc: "http://127.0.0.1:8545".into(),
            key_file: Some(path.to_path_buf()),
            key_hex: None,
        }
    }

    /// R-OPS-2 (issue 26: one key-file check): the relayer's key file was read
    /// whatever its mode, and only as bare hex.
    #[test]
    fn r_ops_2_a_sender_key_file_open_to_others_is_refused_and_keygen_output_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relayer.key");
        let key = yellowstone_wire::SigningKey::from_seed(b"relayer");
        let secret = hex::encode(key.secret_bytes());
        std::fs::write(
            &path,
            format!("secret_hex={secret}\naddress={}\n", key.address()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = args(&path).signer().unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let signer = args(&path).signer().unwrap();
        assert_eq!(signer.address().0 .0, key.address().0);
    }
}
