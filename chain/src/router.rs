//! The router's side of a deployment: its market parameters, network id, address and
//! (for the relayer and `claim`) its data directory, read from the same files the
//! router itself reads (R-CHAIN-2: the constructor's arguments come from the router's
//! configuration, never typed by hand).

use crate::error::ChainError;
use std::path::{Path, PathBuf};
use yellowstone_contract::artifacts::DeployParams;
use yellowstone_engine::MarketConfig;
use yellowstone_gateway::router::config::RouterConfig;
use yellowstone_gateway::settlement::Signer;
use yellowstone_wire::SigningKey;

/// Where the router's identity comes from (shared by every subcommand).
#[derive(clap::Args, Clone, Debug)]
pub struct RouterArgs {
    /// The router's TOML configuration (identity.network_id, identity.router_key_hex,
    /// [market]). Without it, the defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The router's data directory: its market as created (market.bin, which wins
    /// over --config's [market]) and its key (router.key).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The router's address, when neither a key in --config nor --data-dir gives it.
    #[arg(long)]
    pub router: Option<String>,
}

/// The router as the chain must know it.
pub struct RouterSide {
    pub market: MarketConfig,
    pub network_id: u32,
    pub address: yellowstone_engine::Address,
    /// The key, when the data directory or the config holds it (needed to export
    /// settlements from the data directory; `deploy` needs only the address).
    pub key: Option<SigningKey>,
    pub data_dir: Option<PathBuf>,
}

fn load_config(path: &Option<PathBuf>) -> Result<RouterConfig, ChainError> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ChainError::Router(format!("{}: {e}", path.display())))?;
            let config = RouterConfig::from_toml(&text)
                .map_err(|e| ChainError::Router(format!("{}: {e}", path.display())))?;
            config
                .validate()
                .map_err(|e| ChainError::Router(format!("{}: {e}", path.display())))?;
            Ok(config)
        }
        None => Ok(RouterConfig::default()),
    }
}

fn market_of_dir(dir: &Path) -> Result<MarketConfig, ChainError> {
    yellowstone_gateway::journal::files::read_market(dir)
        .map_err(|e| ChainError::Router(e.to_string()))?
        .ok_or_else(|| {
            ChainError::Router(format!(
                "{}: no market file here: not a router data directory",
                dir.display()
            ))
        })
}

impl RouterArgs {
    /// Reads the router's side. The data directory's market wins over the config's
    /// (it is what the router runs with: market parameters are fixed at creation).
    pub fn load(&self) -> Result<RouterSide, ChainError> {
        let config = load_config(&self.config)?;
        let market = match &self.data_dir {
            // The engine's configuration after replay: market.bin, plus a settlement
            // domain set later (`run --set-settlement-domain`, issue 24 case 2).
            Some(dir) => {
                market_of_dir(dir)?;
                yellowstone_gateway::journal::tools::recover_read_only(dir)
                    .map_err(|e| ChainError::Router(e.to_string()))?
                    .engine
                    .config()
                    .clone()
            }
            None => config
                .market_config(now_ms())
                .map_err(|e| ChainError::Router(e.to_string()))?,
        };
        let key_hex = Some(config.identity.router_key_hex.as_str()).filter(|k| !k.is_empty());
        let key = match (&self.data_dir, key_hex) {
            (Some(dir), _) => Some(
                Signer::from_data_dir(dir, key_hex, config.identity.network_id)
                    .map_err(|e| ChainError::Router(e.to_string()))?
                    .key,
            ),
            (None, Some(hex)) => Some(
                SigningKey::from_hex(hex.trim())
                    .map_err(|e| ChainError::Key(format!("identity.router_key_hex: {e}")))?,
            ),
            (None, None) => None,
        };
        let address = match (&self.router, &key) {
            (Some(text), _) => {
                let address: yellowstone_wire::Address = text
                    .parse()
                    .map_err(|e| ChainError::Usage(format!("--router {text:?}: {e}")))?;
                if let Some(key) = &key {
                    if key.address() != address {
                        return Err(ChainError::Usage(format!(
                            "--router {text} is not the address of the router's key ({})",
                            key.address()
                        )));
                    }
                }
                yellowstone_engine::Address(address.0)
            }
            (None, Some(key)) => yellowstone_engine::Address(key.address().0),
            (None, None) => {
                return Err(ChainError::Usage(
                    "the router's address: give --data-dir (router.key), identity.router_key_hex in --config, or --router".into(),
                ))
            }
        };
        // R-CHAIN-3: the data directory's network id wins; a config saying another
        // one is refused rather than silently signing for either.
        let network_id = match &self.data_dir {
            Some(dir) => match yellowstone_gateway::journal::files::read_network_id(dir)
                .map_err(|e| ChainError::Router(e.to_string()))?
            {
                Some(stored) if self.config.is_some() && stored != config.identity.network_id => {
                    return Err(ChainError::Mismatch(format!(
                        "identity.network_id is {}, the data directory is of network {stored}",
                        config.identity.network_id
                    )))
                }
                Some(stored) => stored,
                None => config.identity.network_id,
            },
            None => config.identity.network_id,
        };
        Ok(RouterSide {
            market,
            network_id,
            address,
            key,
            data_dir: self.data_dir.clone(),
        })
    }
}

impl RouterSide {
    /// The constructor's arguments for `token`.
    pub fn deploy_params(&self, token: yellowstone_engine::Address) -> DeployParams {
        DeployParams::from_market(&self.market, token, self.address, self.network_id)
    }

    pub fn data_dir(&self) -> Result<&Path, ChainError> {
        self.data_dir.as_deref().ok_or_else(|| {
            ChainError::Usage("--data-dir (the router's data directory) is needed here".into())
        })
    }

    pub fn key(&self) -> Result<&SigningKey, ChainError> {
        self.key.as_ref().ok_or_else(|| {
            ChainError::Usage(
                "the router's key: --data-dir with router.key, or identity.router_key_hex in --config".into(),
            )
        })
    }
}

/// Milliseconds since the Unix epoch (the market's genesis when read from a config
/// without a data directory; the deployment's parameters do not depend on it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
