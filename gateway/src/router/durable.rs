//! Starting a router on a data directory: the router key, genesis and market
//! parameters are kept there so that a restart is the same market; the engine is
//! recovered from the newest snapshot and the journal, which then continues.

use super::config::RouterConfig;
use super::{Router, RouterHandle, StartOptions};
use crate::config::Backend;
use crate::journal::{self, files, DurabilityMode, Journal, JournalConfig, RecoverOptions};
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
    let market = config.market_config(genesis_ms)?;
    match files::read_market(dir)? {
        None => files::write_market(dir, &market)?,
        Some(stored) if stored != market => {
            return Err(format!(
                "{}: the market parameters in the configuration differ from those this \
                 journal was written under (replaying it under others would reach another \
                 state); change them at run time with SetParams, or start on a new data \
                 directory",
                dir.join(files::MARKET_FILE).display()
            ))
        }
        Some(_) => {}
    }
    let options = RecoverOptions {
        allow_corrupt_truncate: config.journal.allow_corrupt_truncate,
        read_only: false,
    };
    let recovered = journal::recover(dir, &market, options, |_, _, _| {})?;
    for note in &recovered.notes {
        tracing::warn!("{note}");
    }
    tracing::info!(
        dir = %dir.display(),
        snapshot_seq = ?recovered.snapshot_seq,
        records_replayed = recovered.records_replayed,
        last_seq = recovered.last_seq,
        bytes_cut = recovered.bytes_cut,
        block = recovered.engine.block(),
        elapsed_ms = recovered.elapsed.as_millis() as u64,
        "recovered"
    );
    let mode: DurabilityMode = config.journal.durability.parse()?;
    let journal_config = JournalConfig {
        fsync_interval_ms: config.journal.fsync_interval_ms,
        segment_bytes_max: config.journal.segment_bytes_max,
        buffer_bytes_max: config.journal.buffer_bytes_max as usize,
        io_uring: config.journal.io == "uring" && config.network.backend == Backend::Uring,
        snapshots_kept: config.journal.snapshots_kept as usize,
        group_commit_us: config.journal.group_commit_us,
        group_bytes_max: config.journal.group_bytes_max as usize,
        core: crate::net::plan_cores(
            &config.threads,
            core_affinity::get_core_ids().map_or(1, |ids| ids.len()),
        )
        .journal,
        ..JournalConfig::new(dir.to_path_buf(), mode)
    };
    let journal = Journal::open(journal_config, recovered.last_seq + 1)?;
    Router::start_with(
        StartOptions {
            config,
            router_key,
            genesis_ms,
        },
        recovered.engine,
        journal,
    )
}
