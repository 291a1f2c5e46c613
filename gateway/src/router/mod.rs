//! The router assembled: engine thread (sequencer), gateway threads with the
//! router's frame handler (they also sign tickets and batches), and the metrics
//! endpoint. `Router::start` is what
//! the `yellowstone-router` binary, the load generator's embedded mode and the tests
//! all run.

pub mod catalog;
pub mod cluster;
pub mod config;
pub mod handler;
pub mod market;
pub mod office;
pub mod quota_gate;
pub mod shared;
pub mod signature_cpu;
pub mod sink;

use crate::metrics::Registry;
use crate::metrics_http::MetricsServer;
use crate::net::{self, GatewayHandle};
use crate::sequencer::{self, NoJournal, Sequencer, SequencerInput, ORIGIN_INTERNAL};
use config::RouterConfig;
use shared::{to_engine, RouterShared};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use yellowstone_engine::{Command, Engine};
use yellowstone_wire::{Address, SigningKey};

pub struct RouterHandle {
    pub(crate) gateways: Option<GatewayHandle>,
    /// Fires if the engine thread stops on its own (a journal failure): the
    /// process must not keep accepting what it can no longer make durable.
    pub(crate) engine_stopped: crossbeam_channel::Receiver<()>,
    pub(crate) sequencer: Option<JoinHandle<Result<Engine, String>>>,
    pub(crate) metrics: Option<MetricsServer>,
    pub(crate) shared: Arc<RouterShared>,
    pub listen: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub router_address: Address,
    pub network_id: u32,
    pub backends: Vec<net::BackendInUse>,
    /// The data directory's lock (none in memory); the last field, so it is
    /// released only after everything above has stopped.
    pub(crate) _data_dir_lock: Option<durable::DataDirLock>,
}

/// Everything needed to start, resolved from the config.
pub struct StartOptions {
    pub config: RouterConfig,
    pub router_key: SigningKey,
    pub genesis_ms: u64,
    /// R-HA-3: the reply cache the pipeline answers resent messages from; `None`
    /// makes a new one with the config's bounds (`network.reply_cache_*`). A
    /// replicated member passes the one its state machine feeds, so the cache
    /// outlives a pipeline (a new leader answers with the original answers).
    pub reply_cache: Option<std::sync::Arc<yellowstone_router_core::ReplyCache>>,
}

impl StartOptions {
    /// Resolves the router key and genesis without a data directory.
    pub fn ephemeral(config: RouterConfig) -> Result<StartOptions, String> {
        let router_key = if config.identity.router_key_hex.is_empty() {
            SigningKey::random()
        } else {
            SigningKey::from_hex(&config.identity.router_key_hex).map_err(|e| {
                format!(
                    "identity.router_key_hex: {e} ({} characters given; the secret is not echoed)",
                    config.identity.router_key_hex.len()
                )
            })?
        };
        let genesis_ms = if config.market.genesis_ms == 0 {
            sequencer::unix_ms()
        } else {
            config.market.genesis_ms
        };
        Ok(StartOptions {
            config,
            router_key,
            genesis_ms,
            reply_cache: None,
        })
    }
}

impl RouterHandle {
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Graceful stop: the engine seals what is due and answers everything durable,
    /// then the gateways close. Returns the final engine.
    pub fn shutdown(mut self) -> Result<Engine, String> {
        self.stop()
    }

    fn stop(&mut self) -> Result<Engine, String> {
        // Before the engine thread can stop: what it no longer takes is answered
        // shutting_down, not not_leader (R-HA-3).
        self.shared
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self.shared.inbound.send(SequencerInput::Shutdown);
        let engine = match self.sequencer.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| "engine thread panicked".to_string())?,
            None => Err("already stopped".to_string()),
        };
        if let Some(gateways) = self.gateways.take() {
            gateways.shutdown().map_err(|e| format!("gateways: {e}"))?;
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.stop();
        }
        engine
    }

    /// R-HA-1 (issue 25): this member lost office: the engine thread stops at once,
    /// releasing no promise still pending (`SequencerInput::Abandon`); the engine is
    /// thrown away (the next term starts from the state machine's).
    pub fn abandon(mut self) {
        let _ = self.shared.inbound.send(SequencerInput::Abandon);
        if let Some(thread) = self.sequencer.take() {
            if let Err(error) = thread
                .join()
                .unwrap_or(Err("engine thread panicked".into()))
            {
                tracing::warn!(%error, "engine thread of the abandoned term");
            }
        }
        if let Some(gateways) = self.gateways.take() {
            let _ = gateways.shutdown();
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.stop();
        }
    }

    /// Fires if the engine thread stopped on its own (e.g. its journal failed).
    pub fn engine_stopped(&self) -> &crossbeam_channel::Receiver<()> {
        &self.engine_stopped
    }

    /// Blocks until SIGINT/SIGTERM, then stops gracefully.
    pub fn run_until_signal(self) -> Result<Engine, String> {
        self.run_until_signal_after(|| {})
    }

    /// Installs the signal handlers, calls `ready` (e.g. to announce READY: a
    /// SIGTERM sent right after it must already mean a graceful stop), then blocks
    /// until SIGINT/SIGTERM and stops gracefully.
    pub fn run_until_signal_after(mut self, ready: impl FnOnce()) -> Result<Engine, String> {
        let Some(trigger) = self.gateways.as_ref().map(|g| g.shutdown_trigger()) else {
            ready();
            return self.stop();
        };
        let signals = net::install_signal_handlers(trigger).map_err(|e| format!("signals: {e}"))?;
        ready();
        crossbeam_channel::select! {
            recv(signals) -> _ => {}
            recv(self.engine_stopped) -> _ => {}
        }
        self.stop()
    }
}

impl Drop for RouterHandle {
    fn drop(&mut self) {
        if self.sequencer.is_some() {
            let _ = self.stop();
        }
    }
}

pub struct Router;

impl Router {
    /// Starts a router with a fresh in-memory engine (no data directory).
    pub fn start(options: StartOptions) -> Result<RouterHandle, String> {
        let market = options.config.market_config(options.genesis_ms)?;
        Router::start_with(options, Engine::new(market), NoJournal::default())
    }

    /// Starts around a given (possibly recovered) engine and journal: the threads
    /// are wired in `crate::pipeline`, in numbered steps.
    pub fn start_with<D: sequencer::Durability + 'static>(
        options: StartOptions,
        engine: Engine,
        journal: D,
    ) -> Result<RouterHandle, String> {
        crate::pipeline::start(options, engine, journal).map_err(|e| e.to_string())
    }
}

/// R-QUOTA-6: the balance snapshot file is applied once, when the market is new (a
/// fresh data directory, or an in-memory router), through the journal as
/// router-originated `LoadBalanceSnapshot` commands that spend no operator nonce.
/// A later start given the same file (same BLAKE3) skips it; a different file, or
/// one given to a market that has run without it, is refused unless the operator
/// asks for it with `identity.balance_snapshot_reapply` (`--reapply-balance-snapshot`).
pub(crate) fn load_balance_snapshot<D: sequencer::Durability, S: sequencer::EffectSink>(
    config: &RouterConfig,
    shared: &RouterShared,
    sequencer: &mut Sequencer<D, S>,
) -> Result<(), String> {
    let Some(path) = &config.identity.balance_snapshot else {
        return Ok(());
    };
    let bytes =
        std::fs::read(path).map_err(|e| format!("balance snapshot {}: {e}", path.display()))?;
    let file_blake3 = *blake3::hash(&bytes).as_bytes();
    let text = String::from_utf8(bytes)
        .map_err(|e| format!("balance snapshot {}: not UTF-8: {e}", path.display()))?;
    let entries = config::parse_balance_snapshot(&text)
        .map_err(|e| format!("balance snapshot {}: {e}", path.display()))?;
    let engine = &sequencer.engine;
    let applied = engine.balance_snapshot_blake3();
    let reapply = config.identity.balance_snapshot_reapply;
    // A market that never ran holds only the operator's account.
    let new_market = applied.is_none() && engine.accounts_len() <= 1;
    if applied == Some(file_blake3) && !reapply {
        tracing::info!(
            path = %path.display(),
            "balance snapshot already applied when this market was created: not applied again"
        );
        return Ok(());
    }
    if !new_market && !reapply {
        let what = match applied {
            Some(hash) => format!("a different file (BLAKE3 {})", hex::encode(hash)),
            None => "none".to_string(),
        };
        return Err(format!(
            "balance snapshot {} (BLAKE3 {}) is not the one this market was created with \
             ({what}): a snapshot is applied once, when the data directory is created, so \
             that restarts never revert run-time balance updates; to apply this one now \
             (it sets every balance it lists), start once with --reapply-balance-snapshot",
            path.display(),
            hex::encode(file_blake3)
        ));
    }
    let distinct: std::collections::BTreeSet<_> = entries.iter().map(|(a, _)| *a).collect();
    let new_accounts = distinct
        .iter()
        .filter(|a| !engine.has_account(&to_engine(**a)))
        .count();
    let accounts_max = engine.config().accounts_max as usize;
    if engine.accounts_len() + new_accounts > accounts_max {
        return Err(format!(
            "balance snapshot {}: {} addresses would exceed market.accounts_max = {accounts_max}",
            path.display(),
            distinct.len()
        ));
    }
    let chunk_max = engine.config().balance_entries_max.max(1) as usize;
    for chunk in entries.chunks(chunk_max) {
        let command = Command::LoadBalanceSnapshot {
            file_blake3,
            entries: chunk.iter().map(|(a, b)| (to_engine(*a), *b)).collect(),
        };
        sequencer.apply(ORIGIN_INTERNAL, command)?;
    }
    if sequencer.engine.balance_snapshot_blake3() != Some(file_blake3) && !entries.is_empty() {
        return Err(format!(
            "balance snapshot {}: refused by the engine (limits)",
            path.display()
        ));
    }
    // The pre-check cache follows what the engine holds now (its BalancesSet
    // effects will say the same once delivered).
    for address in distinct {
        let balance = sequencer.engine.balance_wei(&to_engine(address));
        shared.balances.insert(address, balance);
    }
    tracing::info!(path = %path.display(), entries = entries.len(), "balance snapshot applied");
    Ok(())
}

/// Issue 24 case 2: `run --set-settlement-domain` on a data directory created
/// without a contract journals the configured domain (the engine refuses it once a
/// contract is set; `start_durable` refused every other case before recovery).
pub(crate) fn set_settlement_domain<D: sequencer::Durability, S: sequencer::EffectSink>(
    config: &RouterConfig,
    (chain_id, contract): (u64, yellowstone_engine::Address),
    sequencer: &mut Sequencer<D, S>,
) -> Result<(), String> {
    let engine = sequencer.engine.config();
    if (engine.settlement_chain_id, engine.settlement_contract) == (chain_id, contract)
        || !config.identity.settlement_domain_set
    {
        return Ok(());
    }
    sequencer.apply(
        ORIGIN_INTERNAL,
        Command::SetSettlementDomain { chain_id, contract },
    )?;
    let engine = sequencer.engine.config();
    if (engine.settlement_chain_id, engine.settlement_contract) != (chain_id, contract) {
        return Err(format!(
            "--set-settlement-domain: refused: the market already settles on chain {} at {}",
            engine.settlement_chain_id, engine.settlement_contract
        ));
    }
    tracing::warn!(chain_id, %contract, "settlement domain set (fixed from now on)");
    Ok(())
}

/// How to read one figure from `S`.
type ReadStat<S> = fn(&S) -> u64;
/// One published figure: metric name, help text, and how to read it from `S`. A
/// name ending in `_total` is a count that only grows while the process runs
/// (Prometheus type counter, so `rate()` and `increase()` see a restart as a
/// reset); any other name is a gauge.
type StatSpec<S> = (&'static str, &'static str, ReadStat<S>);

enum Published {
    Counter(Arc<crate::metrics::Counter>),
    Gauge(Arc<crate::metrics::Gauge>),
}

/// Figures kept by another thread (`S`: the journal's, the snapshot replica's),
/// published from the engine thread between bursts.
pub(crate) struct StatGauges<S> {
    stats: Arc<S>,
    published: Vec<(Published, ReadStat<S>)>,
}

impl<S> StatGauges<S> {
    fn new<const N: usize>(
        registry: &Registry,
        stats: Arc<S>,
        specs: [StatSpec<S>; N],
    ) -> StatGauges<S> {
        StatGauges {
            stats,
            published: specs
                .into_iter()
                .map(|(name, help, read)| {
                    let published = if name.ends_with("_total") {
                        Published::Counter(registry.counter(name, help, &[]))
                    } else {
                        Published::Gauge(registry.gauge(name, help, &[]))
                    };
                    (published, read)
                })
                .collect(),
        }
    }

    pub(crate) fn update(&self) {
        for (published, read) in &self.published {
            let value = read(&self.stats);
            match published {
                Published::Counter(counter) => counter.publish(value),
                Published::Gauge(gauge) => gauge.set(value as i64),
            }
        }
    }
}

/// The journal's counters.
pub(crate) fn journal_gauges(
    registry: &Registry,
    stats: Arc<crate::journal::JournalStats>,
) -> StatGauges<crate::journal::JournalStats> {
    use std::sync::atomic::Ordering::Relaxed;
    let specs: [StatSpec<crate::journal::JournalStats>; 7] = [
        (
            "yellowstone_journal_records_total",
            "Journal records written.",
            |s| s.records.load(Relaxed),
        ),
        (
            "yellowstone_journal_bytes_total",
            "Journal bytes written.",
            |s| s.bytes.load(Relaxed),
        ),
        (
            "yellowstone_journal_writes_total",
            "Journal group writes (one per group commit).",
            |s| s.writes.load(Relaxed),
        ),
        ("yellowstone_journal_fsyncs_total", "Journal fsyncs.", |s| {
            s.fsyncs.load(Relaxed)
        }),
        (
            "yellowstone_journal_held_groups_total",
            "Groups held by adaptive group commit to gather more records.",
            |s| s.held_groups.load(Relaxed),
        ),
        ("yellowstone_snapshots_total", "Snapshots written.", |s| {
            s.snapshots.load(Relaxed)
        }),
        (
            "yellowstone_journal_segments_removed_total",
            "Segments removed once covered by a snapshot.",
            |s| s.segments_removed.load(Relaxed),
        ),
    ];
    StatGauges::new(registry, stats, specs)
}

/// The snapshot replica's counters (`journal::replica`).
pub(crate) fn replica_gauges(
    registry: &Registry,
    stats: Arc<crate::journal::ReplicaStats>,
) -> StatGauges<crate::journal::ReplicaStats> {
    use std::sync::atomic::Ordering::Relaxed;
    let specs: [StatSpec<crate::journal::ReplicaStats>; 9] = [
        (
            "yellowstone_snapshot_points_total",
            "Snapshot points (block boundaries every journal.snapshot_every_blocks) reached.",
            |s| s.snapshot_points.load(Relaxed),
        ),
        (
            "yellowstone_snapshots_replica_total",
            "Snapshots serialised by the replica engine, off the engine thread.",
            |s| s.snapshots_replica.load(Relaxed),
        ),
        (
            "yellowstone_snapshots_engine_thread_total",
            "Snapshots serialised on the engine thread (replica reseeds, or no replica).",
            |s| s.snapshots_engine_thread.load(Relaxed),
        ),
        (
            "yellowstone_snapshots_skipped_total",
            "Snapshot points without a snapshot (replica out of sync, writer busy).",
            |s| s.snapshots_skipped.load(Relaxed),
        ),
        (
            "yellowstone_snapshot_replica_out_of_sync_total",
            "Times the replica dropped its state (queue full, gap, hash mismatch).",
            |s| s.out_of_sync.load(Relaxed),
        ),
        (
            "yellowstone_snapshot_replica_queue_bytes",
            "Record bytes queued for the replica, not yet applied.",
            |s| s.queue_bytes.load(Relaxed),
        ),
        (
            "yellowstone_snapshot_replica_hash_mismatches_total",
            "Snapshot points where the replica's state hash differed from the engine's.",
            |s| s.hash_mismatches.load(Relaxed),
        ),
        (
            "yellowstone_snapshot_engine_pause_us_last",
            "The engine thread's time at the last snapshot point, microseconds.",
            |s| s.engine_pause_us_last.load(Relaxed),
        ),
        (
            "yellowstone_snapshot_engine_pause_us_max",
            "The engine thread's longest snapshot point, microseconds.",
            |s| s.engine_pause_us_max.load(Relaxed),
        ),
    ];
    StatGauges::new(registry, stats, specs)
}

pub(crate) struct EngineGauges {
    sessions_open: Arc<crate::metrics::Gauge>,
    probes_open: Arc<crate::metrics::Gauge>,
    queue_depth: Arc<crate::metrics::Gauge>,
    block: Arc<crate::metrics::Gauge>,
    sessions_credited: Arc<crate::metrics::Counter>,
    batches: Arc<crate::metrics::Counter>,
    /// R-SESSION-1: sessions closed because their start was not signed in time.
    sessions_not_started: Arc<crate::metrics::Counter>,
}

impl EngineGauges {
    pub(crate) fn new(registry: &Registry) -> EngineGauges {
        EngineGauges {
            sessions_open: registry.gauge("yellowstone_sessions_open", "Open sessions.", &[]),
            probes_open: registry.gauge(
                "yellowstone_probes_open",
                "Probes awaiting an answer.",
                &[],
            ),
            queue_depth: registry.gauge(
                "yellowstone_rfc_queue_depth",
                "Queued RFCs, all models.",
                &[],
            ),
            block: registry.gauge("yellowstone_block", "The open block number.", &[]),
            sessions_credited: registry.counter(
                "yellowstone_sessions_credited_total",
                "Sessions credited since genesis.",
                &[],
            ),
            batches: registry.counter(
                "yellowstone_batches_total",
                "Credit batches sealed since genesis.",
                &[],
            ),
            sessions_not_started: registry.counter(
                "yellowstone_sessions_not_started_total",
                "Sessions closed since genesis because their provider did not sign their \
                 start within market.ticket_start_timeout_ms (R-SESSION-1).",
                &[],
            ),
        }
    }

    pub(crate) fn update(&self, engine: &Engine) {
        self.sessions_open.set(engine.sessions_open() as i64);
        self.probes_open.set(engine.probes_open() as i64);
        self.queue_depth.set(engine.queue_depth_total() as i64);
        self.block.set(engine.block() as i64);
        self.sessions_credited
            .publish(engine.counters().sessions_credited);
        self.batches.publish(engine.counters().batches);
        self.sessions_not_started
            .publish(engine.counters().sessions_not_started);
    }
}

/// Starts from a validated config: with a data directory, recovers from it (the
/// durability layer); without, starts fresh in memory.
pub fn start_from_config(config: RouterConfig) -> Result<RouterHandle, String> {
    match config.journal.data_dir.clone() {
        None => Router::start(StartOptions::ephemeral(config)?),
        Some(dir) => durable::start_durable(config, &dir),
    }
}

pub mod durable;
