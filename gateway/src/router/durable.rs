//! Starting a router on a data directory: the router key and genesis are kept there,
//! so that a restart is the same market. (Journal recovery plugs in here.)

use super::config::RouterConfig;
use super::{Router, RouterHandle, StartOptions};
use std::path::Path;
use yellowstone_wire::SigningKey;

fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{value}\n"))
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(value)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn start_durable(config: RouterConfig, dir: &Path) -> Result<RouterHandle, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key_hex = if config.identity.router_key_hex.is_empty() {
        read_or_create(&dir.join("router.key"), || {
            hex::encode(SigningKey::random().secret_bytes())
        })?
    } else {
        config.identity.router_key_hex.clone()
    };
    let router_key = SigningKey::from_hex(&key_hex).map_err(|e| format!("router key: {e}"))?;
    let genesis_text = read_or_create(&dir.join("genesis_ms"), || {
        if config.market.genesis_ms == 0 {
            crate::sequencer::unix_ms()
        } else {
            config.market.genesis_ms
        }
        .to_string()
    })?;
    let genesis_ms: u64 = genesis_text
        .parse()
        .map_err(|e| format!("{}: {e}", dir.join("genesis_ms").display()))?;
    Router::start(StartOptions {
        config,
        router_key,
        genesis_ms,
    })
}
