//! The operator's and providers' view of the settlements with the on-chain Compute
//! Contract (R-CHAIN-1): `yellowstone-router settlement` exports an epoch's signed
//! settlement with its `settle` calldata, `yellowstone-router claim-proof` a
//! provider's Merkle proof with its `claim` calldata. Read-only on the data
//! directory: the engine is recovered as `verify` does, and the settlement is signed
//! again with the router's key (RFC 6979: the same bytes the router published).

use crate::journal::tools::recover_read_only;
use serde_json::Value;
use std::path::Path;
use yellowstone_engine::{Address, Effect};
use yellowstone_settlement::{ClaimProof, SignedSettlement};
use yellowstone_wire::SigningKey;

/// The router's identity the settlements were signed with.
pub struct Signer {
    pub key: SigningKey,
    pub network_id: u32,
}

impl Signer {
    /// `key_hex` if given, else `<dir>/router.key` (the router's own key file).
    pub fn from_data_dir(
        dir: &Path,
        key_hex: Option<&str>,
        network_id: u32,
    ) -> Result<Signer, String> {
        let text = match key_hex {
            Some(text) => text.to_string(),
            None => {
                let path = dir.join("router.key");
                std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "{}: {e} (give the router's key with identity.router_key_hex)",
                        path.display()
                    )
                })?
            }
        };
        let key = SigningKey::from_hex(text.trim()).map_err(|e| format!("router key: {e}"))?;
        Ok(Signer { key, network_id })
    }
}

/// The signed settlement of `epoch` (the last one when `None`) as JSON, with the
/// `settle(Settlement, bytes)` calldata.
pub fn export(dir: &Path, epoch: Option<u64>, signer: &Signer) -> Result<Value, String> {
    let recovered = recover_read_only(dir)?;
    let engine = &recovered.engine;
    let state = engine.settlement();
    let record = match epoch {
        None => state.last().ok_or("no epoch was settled yet")?,
        Some(epoch) => state.record(epoch).ok_or_else(|| match state.history.front() {
            Some(first) if epoch < first.epoch => format!(
                "epoch {epoch} is older than the settlements kept (from epoch {}; market.settlements_kept_max)",
                first.epoch
            ),
            _ => format!(
                "epoch {epoch} is not settled yet (next: epoch {}, at block {})",
                state.next_epoch,
                (state.next_epoch + 1) * engine.config().settlement_epoch_blocks
            ),
        })?,
    };
    let config = engine.config();
    let signed = SignedSettlement::sign(
        record,
        &signer.key,
        signer.network_id,
        config.settlement_chain_id,
        &config.settlement_contract,
    );
    Ok(signed.to_json())
}

/// `provider`'s proof against the root of `epoch` (the last settled epoch when
/// `None`), with the `claim(address, uint256, bytes32[])` calldata.
pub fn claim_proof(dir: &Path, provider: &str, epoch: Option<u64>) -> Result<Value, String> {
    let address: yellowstone_wire::Address = provider
        .parse()
        .map_err(|e| format!("--provider {provider:?}: {e}"))?;
    let proof = proof_at(dir, &Address(address.0), epoch).map_err(|e| e.to_string())?;
    Ok(proof.to_json())
}

/// Why no proof could be made for an epoch (issue 24 case 3).
#[derive(Debug, thiserror::Error)]
pub enum ProofAtError {
    #[error("{0}")]
    DataDir(String),
    #[error(transparent)]
    Proof(#[from] yellowstone_settlement::ProofError),
    #[error("epoch {epoch} is not settled yet (the router's last settled epoch: {last:?})")]
    NotSettled { epoch: u64, last: Option<u64> },
    #[error(
        "epoch {epoch} was sealed before the data directory's newest snapshot (replay \
         starts after it); its tree cannot be rebuilt here: relay the settlements up to \
         the router's last epoch ({last}) and claim against it"
    )]
    BeforeSnapshot { epoch: u64, last: u64 },
}

/// `provider`'s proof against the root of `epoch` (R-CHAIN-2: a provider claims
/// against the epoch the chain has settled, which may be older than the router's
/// newest). The tree of an older epoch is the ledger's (provider, cumulative) as the
/// replay passes that epoch's seal; read-only on `dir`.
pub fn proof_at(
    dir: &Path,
    provider: &Address,
    epoch: Option<u64>,
) -> Result<ClaimProof, ProofAtError> {
    let mut seen: Option<Vec<(Address, u128)>> = None;
    let recovered = match epoch {
        None => recover_read_only(dir),
        Some(wanted) => crate::journal::tools::recover_read_only_visiting(dir, |_, _, effects, engine| {
            let sealed = effects.iter().any(|effect| {
                matches!(effect, Effect::SettlementSealed { settlement, .. } if settlement.epoch == wanted)
            });
            if sealed {
                seen = Some(engine.settlement().cumulative.clone());
            }
        }),
    }
    .map_err(|e| ProofAtError::DataDir(e.into()))?;
    let state = recovered.engine.settlement();
    let last = state.last().map(|r| r.epoch);
    let Some(wanted) = epoch else {
        return Ok(ClaimProof::from_state(state, provider)?);
    };
    if last.is_none_or(|last| wanted > last) {
        return Err(ProofAtError::NotSettled {
            epoch: wanted,
            last,
        });
    }
    if last == Some(wanted) {
        return Ok(ClaimProof::from_state(state, provider)?);
    }
    let cumulative = seen.ok_or(ProofAtError::BeforeSnapshot {
        epoch: wanted,
        last: last.unwrap_or(0),
    })?;
    let record = state.record(wanted);
    let proof = ClaimProof::from_cumulative(&cumulative, provider)
        .ok_or(yellowstone_settlement::ProofError::NotCredited(*provider))?;
    if let Some(record) = record {
        // The replayed tree is the one the router signed for that epoch.
        debug_assert_eq!(record.merkle_root, proof.root);
    }
    Ok(ClaimProof {
        epoch: wanted,
        ..proof
    })
}

/// A JSON object as `key: value` lines (arrays one element a line).
pub fn text(value: &Value) -> String {
    let mut out = String::new();
    if let Some(map) = value.as_object() {
        for (key, value) in map {
            match value {
                Value::String(s) => out.push_str(&format!("{key}: {s}\n")),
                Value::Array(items) => {
                    out.push_str(&format!("{key}:\n"));
                    for item in items {
                        out.push_str(&format!(
                            "  {}\n",
                            item.as_str().map_or(item.to_string(), str::to_string)
                        ));
                    }
                }
                other => out.push_str(&format!("{key}: {other}\n")),
            }
        }
    }
    out
}
