//! Reconciliation (R-CHAIN-3): the router's ledger learns what the chain paid. The
//! relayer reads `paidTo` for every provider the router ever credited, and where the
//! chain paid more than the ledger counts as paid (cumulative credit − owed), sends
//! the router an operator-signed `ChainPaid` (wire 0x0072) with those figures; the
//! engine applies it deterministically and never above a provider's cumulative credit.

use crate::bindings::ComputeContract;
use crate::error::{rpc, ChainError};
use crate::metrics::Shared;
use alloy::primitives::Address;
use alloy::providers::DynProvider;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use yellowstone_wire::client::{Client, ClientError};
use yellowstone_wire::{ChainPaid, Message, PaidEntry, Signature, SigningKey};

/// Where the router listens and the operator's key (both or neither).
#[derive(clap::Args, Clone, Debug)]
pub struct ReconcileArgs {
    /// The router's client address (its READY line's listen=): the relayer sends it
    /// `ChainPaid` with what the chain paid. Needs the operator's key.
    #[arg(long, requires = "operator_key_file")]
    pub router_listen: Option<SocketAddr>,
    /// A file holding the operator's secret key (hex), to sign `ChainPaid`.
    #[arg(long, requires = "router_listen")]
    pub operator_key_file: Option<PathBuf>,
}

/// A provider the router credited: (address, cumulative credit, owed), MOR wei.
pub type Credited = Vec<(yellowstone_engine::Address, u128, u128)>;

pub struct Reconciler {
    router: SocketAddr,
    key: SigningKey,
}

impl ReconcileArgs {
    pub fn load(&self) -> Result<Option<Reconciler>, ChainError> {
        let (Some(router), Some(path)) = (self.router_listen, &self.operator_key_file) else {
            return Ok(None);
        };
        // R-OPS-2: the workspace's one key-file reader (permissions, both formats).
        let key = yellowstone_wire::keyfile::read_key_file(path)
            .map_err(|e| ChainError::Key(format!("--operator-key-file {e}")))?;
        Ok(Some(Reconciler { router, key }))
    }
}

/// Why the router did not take a `ChainPaid`.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("router {0}: {1}")]
    Client(SocketAddr, ClientError),
    /// SPEC §9: every attempt to connect failed until the deadline (or the login was
    /// refused).
    #[error("{0}")]
    Connect(yellowstone_wire::connect_retry::ConnectError),
    #[error("router refused ChainPaid: {0} (code 0x{1:04X})")]
    Refused(String, u16),
    #[error("router {0}: no answer to ChainPaid within 10 s")]
    Timeout(SocketAddr),
}

impl Reconciler {
    /// Reads the chain's `paidTo` for every credited provider and sends what the
    /// ledger has not counted yet. Returns the wei newly reported.
    pub async fn run_once(
        &self,
        c: &ComputeContract::ComputeContractInstance<DynProvider>,
        chain_id: u64,
        credited: &Credited,
        metrics: &Shared,
    ) -> Result<u128, ChainError> {
        let mut entries = Vec::new();
        let mut newly = 0u128;
        for (provider, credit, owed) in credited {
            let paid = c
                .paidTo(Address::from(provider.0))
                .call()
                .await
                .map_err(rpc)?;
            let paid: u128 = paid.saturating_to();
            let counted = credit.saturating_sub(*owed);
            if paid > counted {
                newly = newly.saturating_add(paid - counted);
                entries.push(PaidEntry {
                    provider: yellowstone_wire::Address(provider.0),
                    paid_to_wei: paid,
                });
            }
        }
        if entries.is_empty() {
            return Ok(0);
        }
        // The ledger's providers are a BTreeMap: already ascending by address.
        debug_assert!(entries
            .windows(2)
            .all(|w| w[0].provider.0 < w[1].provider.0));
        let router = self.router;
        let key = self.key.clone();
        let contract = *c.address();
        let sent =
            tokio::task::spawn_blocking(move || send(router, key, chain_id, contract, entries))
                .await
                .map_err(|e| ChainError::Router(format!("ChainPaid task: {e}")))?;
        match sent {
            Ok(()) => {
                let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
                m.reconciled_wei_total = m.reconciled_wei_total.saturating_add(newly);
                m.chain_paid_sent_total += 1;
                tracing::info!(newly_paid_wei = %newly, "the router's ledger took what the chain paid");
                Ok(newly)
            }
            // The router being down or busy is retried next round, like the node.
            Err(
                error @ (SendError::Client(..) | SendError::Connect(_) | SendError::Timeout(_)),
            ) => Err(ChainError::Rpc(error.to_string())),
            Err(error) => Err(ChainError::Router(error.to_string())),
        }
    }
}

fn send(
    router: SocketAddr,
    key: SigningKey,
    chain_id: u64,
    contract: Address,
    entries: Vec<PaidEntry>,
) -> Result<(), SendError> {
    // SPEC §9: a router near its connection limit refuses or evicts for room: tried
    // again with backoff (the default policy: 10 s in all).
    let policy = yellowstone_wire::connect_retry::ConnectRetry::default();
    let mut client = Client::connect_retrying(router, key, &policy).map_err(SendError::Connect)?;
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| SendError::Client(router, e))?;
    let nonce = client.next_nonce();
    let from = client.address();
    client
        .send_signed(
            ChainPaid {
                from,
                nonce,
                chain_id,
                contract: yellowstone_wire::Address(contract.0 .0),
                entries,
                signature: Signature::default(),
            }
            .into(),
        )
        .map_err(|e| SendError::Client(router, e))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match client.recv() {
            Ok(Message::Ack(ack)) if ack.nonce == nonce => return Ok(()),
            Ok(Message::ErrorReply(e)) if e.ref_nonce == nonce => {
                return Err(SendError::Refused(e.reason, e.code))
            }
            Ok(_) => {}
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(SendError::Client(router, e)),
        }
    }
    Err(SendError::Timeout(router))
}
