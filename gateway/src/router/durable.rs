//! Starting a router on a data directory: the router key, genesis and market
//! parameters are kept there so that a restart is the same market; the engine is
//! recovered from the newest snapshot and the journal, which then continues.

use super::config::RouterConfig;
use super::{Router, RouterHandle, StartOptions};
use crate::config::Backend;
use crate::journal::{
    self, files, DurabilityMode, Journal, JournalConfig, JournalIo, RecoverOptions, ReplicaConfig,
    Replicated,
};
use std::path::Path;
use yellowstone_wire::SigningKey;

/// Writes `text` to `path` atomically (temporary file, fsync, rename), readable by
/// the owner only when `private` (R-OPS-2: key files are 0600).
fn write_new(path: &Path, text: &str, private: bool) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    if private {
        // The mode given at creation does not apply to a file left by a crash.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            write_new(path, &format!("{value}\n"), false)?;
            Ok(value)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// R-OPS-2: the one key-file check and reader of the workspace (a path that is not a
/// regular file, or that group or others may read, is refused naming the fix).
pub use yellowstone_wire::keyfile::{check_key_file_mode, read_key_file, KeyFileError};

/// The router key of a data directory (R-OPS-2): the one in `router.key` (created
/// 0600 on first start), or the configured one, which must then be the same: a
/// router never silently changes the address its batches are signed by.
pub(crate) fn router_key(config: &RouterConfig, dir: &Path) -> Result<SigningKey, String> {
    let path = dir.join(ROUTER_KEY_FILE);
    let exists = path
        .try_exists()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let configured = if config.identity.router_key_hex.is_empty() {
        None
    } else {
        Some(
            SigningKey::from_hex(&config.identity.router_key_hex).map_err(|e| {
                format!(
                    "identity.router_key_hex / --router-key-hex: {e} ({} characters given; \
                     the secret is not echoed)",
                    config.identity.router_key_hex.len()
                )
            })?,
        )
    };
    match (exists, configured) {
        (true, configured) => {
            let stored = read_key_file(&path).map_err(|e| e.to_string())?;
            match configured {
                Some(key) if key.address() != stored.address() => Err(format!(
                    "--router-key-hex (identity.router_key_hex) is the key of {}, but the data \
                     directory's {} is the key of {}: refusing to switch the router's address \
                     (its batches would be signed by another key); drop the option to use the \
                     directory's key, or start on a new data directory",
                    key.address(),
                    path.display(),
                    stored.address()
                )),
                _ => Ok(stored),
            }
        }
        (false, configured) => {
            let key = configured.unwrap_or_else(SigningKey::random);
            write_new(
                &path,
                &format!("{}\n", hex::encode(key.secret_bytes())),
                true,
            )?;
            tracing::info!(path = %path.display(), address = %key.address(), "router key written");
            Ok(key)
        }
    }
}

/// The router's key file in a data directory.
pub const ROUTER_KEY_FILE: &str = "router.key";

/// Creates the data directory readable by its owner only (0700); an existing one is
/// left as it is. A path that exists but is not a directory (a file, say) is
/// refused as such, naming the path, rather than with the bare "File exists" of
/// the creating call.
pub(crate) fn create_data_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt as _;
    if let Ok(metadata) = std::fs::metadata(dir) {
        if !metadata.is_dir() {
            return Err(format!(
                "data directory {}: exists and is not a directory; give --data-dir \
                 (journal.data_dir) a directory, or a path that does not exist yet",
                dir.display()
            ));
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("data directory {}: cannot create it: {e}", dir.display()))
}

/// The lock file of a data directory: held (flock, exclusive) by the router that
/// runs on it, and holding that router's pid.
pub const LOCK_FILE: &str = "router.lock";

/// A data directory's exclusive lock (R-OPS-1): held for the life of the router
/// that runs on it, released by the kernel when the process ends, however it ends
/// (a `kill -9` leaves no stale lock). Two routers on one directory would both
/// journal and acknowledge, and the directory would then refuse to start (its
/// segments interleave two sequences): the second is refused instead.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// The pid written in a data directory's lock file, if any (the router that holds
/// it, or the last one that did).
pub fn lock_holder(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join(LOCK_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Takes `dir`'s exclusive lock, or says which process holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, String> {
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own; the lock lives as long as `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::WouldBlock {
            let holder = lock_holder(dir).map_or("another process".to_string(), |pid| {
                format!("process {pid}")
            });
            return Err(format!(
                "data directory {}: another router is running on it ({holder} holds {}); \
                 two routers on one data directory would both journal and acknowledge, and \
                 the directory would then refuse to start: stop that router first, or give \
                 this one another --data-dir",
                dir.display(),
                path.display()
            ));
        }
        return Err(format!("{}: cannot lock it: {error}", path.display()));
    }
    file.set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(DataDirLock { _file: file })
}

/// The market parameters that differ between the data directory's (`stored`) and
/// the configuration's, each as `name: stored X, configured Y` (values cut at 120
/// characters), so a refused start names what to fix (a forgotten `--operator`, say).
/// What to do about the differences `market_differences` lists: only the run-time
/// parameters (`ParamId`, R-OPS-2) can be changed with `SetParams`; the others are
/// fixed when the data directory is created (an outside review: `accounts_max` was
/// told to be changed with SetParams, which cannot).
fn restart_hint(differences: &[String]) -> String {
    let named = |line: &String| line.split(':').next().unwrap_or("").to_string();
    let is_run_time = |name: &String| {
        yellowstone_engine::ParamId::ALL
            .iter()
            .any(|id| id.name() == name.as_str())
    };
    let (run_time, fixed): (Vec<String>, Vec<String>) =
        differences.iter().map(named).partition(is_run_time);
    let mut hint = String::from("put the stored values back in the configuration");
    if !run_time.is_empty() {
        hint.push_str(&format!(
            "; {} can be changed at run time with SetParams (yellowstone-ctl params set)",
            run_time.join(", ")
        ));
    }
    if !fixed.is_empty() {
        hint.push_str(&format!(
            "; {} cannot be changed with SetParams: fixed when the data directory was \
             created, a new value needs a new data directory",
            fixed.join(", ")
        ));
    }
    hint
}

pub fn market_differences(
    stored: &yellowstone_engine::config::MarketConfig,
    configured: &yellowstone_engine::config::MarketConfig,
) -> Vec<String> {
    // The pretty debug form lists one top-level field per `    name: value` line,
    // nested values (the model catalog) on further, deeper-indented lines.
    fn fields(text: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            let top = line.starts_with("    ") && !line.starts_with("     ");
            match (top, line.trim().split_once(": ")) {
                (true, Some((name, value))) => out.push((name.to_string(), value.to_string())),
                _ => {
                    if let Some(last) = out.last_mut() {
                        last.1.push(' ');
                        last.1.push_str(line.trim());
                    }
                }
            }
        }
        out
    }
    fn cut(value: &str) -> String {
        let value = value.trim_end_matches(',');
        match value.char_indices().nth(120) {
            Some((at, _)) => format!("{}…", &value[..at]),
            None => value.to_string(),
        }
    }
    let stored = fields(&format!("{stored:#?}"));
    let configured = fields(&format!("{configured:#?}"));
    let mut out: Vec<String> = stored
        .iter()
        .zip(&configured)
        .filter(|((_, a), (_, b))| a != b)
        .map(|((name, a), (_, b))| format!("{name}: stored {}, configured {}", cut(a), cut(b)))
        .collect();
    if out.is_empty() {
        out.push("(the difference is not in a named field)".into());
    }
    out
}

pub fn start_durable(config: RouterConfig, dir: &Path) -> Result<RouterHandle, String> {
    create_data_dir(dir)?;
    // Before anything reads or changes the directory: recovery cuts a torn tail,
    // which on a live router's journal is the record being written.
    let lock = lock_data_dir(dir)?;
    let router_key = router_key(&config, dir)?;
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
    // R-CHAIN-3 (issue 24 case 4): the network id is the data directory's, fixed at
    // creation like the settlement domain, so that no command signs a settlement
    // for another network.
    let network_text = read_or_create(&dir.join(files::NETWORK_ID_FILE), || {
        config.identity.network_id.to_string()
    })?;
    if network_text != config.identity.network_id.to_string() {
        return Err(format!(
            "{}: this data directory is of network {network_text}, identity.network_id is {}: \
             a data directory's network id is fixed at creation (R-CHAIN-3); start on a new \
             data directory for another network",
            dir.join(files::NETWORK_ID_FILE).display(),
            config.identity.network_id
        ));
    }
    let market = config.market_config(genesis_ms)?;
    // The market the journal was written under (the creation's, in market.bin):
    // recovery starts from it.
    let mut creation = market.clone();
    match files::read_market(dir)? {
        None => {
            if market.settlement_contract == yellowstone_engine::Address::default() {
                // Issue 24 case 2: said at creation, not discovered at the first relay.
                tracing::warn!(
                    chain_id = market.settlement_chain_id,
                    "no settlement contract configured (market.settlement_contract): this \
                     data directory's settlements are signed for contract 0x0, which no chain \
                     can verify; to settle on a chain, deploy first (yellowstone-chain deploy \
                     --dry-run prints the address) and create the data directory with \
                     market.settlement_chain_id and market.settlement_contract set"
                );
            }
            files::write_market(dir, &market)?
        }
        // Issue 24 case 2: created without a settlement contract (0x0: nothing it
        // signed could be verified by any contract), the domain may be set later,
        // once, explicitly (`--set-settlement-domain`, journaled as a command); a
        // domain set that way is the engine's, not market.bin's.
        Some(stored)
            if stored.settlement_contract == yellowstone_engine::Address::default()
                && yellowstone_engine::MarketConfig {
                    settlement_chain_id: market.settlement_chain_id,
                    settlement_contract: market.settlement_contract,
                    ..stored.clone()
                } == market =>
        {
            creation = stored;
        }
        Some(stored) if stored != market => {
            let differences = market_differences(&stored, &market);
            return Err(format!(
                "{}: the market parameters in the configuration differ from those this \
                 journal was written under (replaying it under others would reach another \
                 state): {}; {}",
                dir.join(files::MARKET_FILE).display(),
                differences.join("; "),
                restart_hint(&differences)
            ));
        }
        Some(_) => {}
    }
    let options = RecoverOptions {
        allow_corrupt_truncate: config.journal.allow_corrupt_truncate,
        read_only: false,
    };
    // R-HA-3: the answers of the records replayed (those after the newest snapshot)
    // go back into the reply cache, so a client whose connection died with the
    // previous process and sends the same message again gets its original answer.
    let reply_cache = std::sync::Arc::new(yellowstone_router_core::ReplyCache::new(
        config.network.reply_cache_config(),
    ));
    let recovered = journal::recover(dir, &creation, options, |_, record, effects| {
        reply_cache.observe(&record.command, effects)
    })?;
    let reply_cache = Some(reply_cache);
    let engine_domain = (
        recovered.engine.config().settlement_chain_id,
        recovered.engine.config().settlement_contract,
    );
    if engine_domain != (market.settlement_chain_id, market.settlement_contract) {
        if engine_domain.1 != yellowstone_engine::Address::default() {
            return Err(format!(
                "{}: this data directory's settlement domain was set to chain {} contract {}; \
                 the configuration says chain {} contract {}: a domain is fixed once set \
                 (R-CHAIN-3)",
                dir.display(),
                engine_domain.0,
                engine_domain.1,
                market.settlement_chain_id,
                market.settlement_contract
            ));
        }
        if !config.identity.settlement_domain_set {
            return Err(format!(
                "{}: this data directory was created without a settlement contract \
                 (market.settlement_contract 0x0: nothing it signed can be verified on a \
                 chain); to settle with chain {} contract {} from now on, start once with \
                 --set-settlement-domain (then the domain is fixed)",
                dir.display(),
                market.settlement_chain_id,
                market.settlement_contract
            ));
        }
    }
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
        io: match config.journal.io.parse()? {
            // The journal's ring is set up like the network's: not under mio.
            JournalIo::Uring if config.network.backend != Backend::Uring => JournalIo::Sync,
            io => io,
        },
        preallocate_bytes: config.journal.preallocate_bytes,
        snapshots_kept: config.journal.snapshots_kept as usize,
        group_commit_us: config.journal.group_commit_us,
        group_bytes_max: config.journal.group_bytes_max as usize,
        group_commit_adaptive_max_us: config.journal.group_commit_adaptive_max_us,
        snapshot_write_chunk_bytes: config.journal.snapshot_write_chunk_bytes as usize,
        core: crate::net::plan_cores(
            &config.threads,
            core_affinity::get_core_ids().map_or(1, |ids| ids.len()),
        )
        .journal,
        ..JournalConfig::new(dir.to_path_buf(), mode)
    };
    let journal = Journal::open(journal_config, recovered.last_seq + 1)?;
    let journal = if config.journal.snapshot_replica {
        let snapshots = journal
            .snapshot_sender()
            .ok_or("the journal's snapshot thread is not running")?;
        let replica = ReplicaConfig {
            queue_bytes_max: config.journal.snapshot_replica_queue_bytes_max,
            ..ReplicaConfig::default()
        };
        let engine = &recovered.engine;
        Replicated::start(journal, engine, recovered.last_seq, snapshots, replica)?
    } else {
        Replicated::without_replica(journal)
    };
    let mut handle = Router::start_with(
        StartOptions {
            config,
            router_key,
            genesis_ms,
            reply_cache,
        },
        recovered.engine,
        journal,
    )?;
    handle._data_dir_lock = Some(lock);
    Ok(handle)
}
