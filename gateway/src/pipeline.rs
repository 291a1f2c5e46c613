//! The router's threads, wired in one place, in order (issue 26 item 2; as
//! exchange-core wires its pipeline in one constructor). Every decision between them
//! is router-core's (`yellowstone-router-core`) or the engine's; this file only
//! creates queues and threads and connects them:
//!
//! ```text
//!  clients ─TCP─▶ [3] gateway threads: net loops + RouterHandler (router-core Admission)
//!                      │ inbound queue [1] (bounded: network.inbound_queue_depth)
//!                      ▼
//!                 [6] engine thread: Sequencer (engine.apply, journal append, release on
//!                      │             durability) + RouterSink (router-core delivery_of)
//!                      │ ◀── durable seq ── journal thread (inside the `Durability` given)
//!                      ▼
//!  clients ◀─TCP─ [4] outboxes (one lane per gateway thread): replies, pushes, signing jobs
//! ```
//!
//! Failures are typed ([`PipelineError`]): which step, and why.

use crate::metrics::Registry;
use crate::metrics_http::MetricsServer;
use crate::net;
use crate::router::config::RouterConfig;
use crate::router::shared::{self, to_engine, RouterShared};
use crate::router::{
    catalog, handler, journal_gauges, load_balance_snapshot, market, office, quota_gate,
    replica_gauges, set_settlement_domain, sink, EngineGauges, RouterHandle, StartOptions,
};
use crate::sequencer::{self, Sequencer, SequencerConfig, ORIGIN_INTERNAL};
use std::sync::Arc;
use yellowstone_engine::{Command, Engine};

/// Why the pipeline did not start: the step, and the cause.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration was refused (`RouterConfig::validate`, the market's).
    #[error("{0}")]
    Config(String),
    /// Step 3: the gateway threads could not listen.
    #[error("gateways on {listen} (network.listen, --listen): {source}")]
    Gateways {
        /// `network.listen`.
        listen: std::net::SocketAddr,
        /// The socket's error.
        source: std::io::Error,
    },
    /// Step 5: the engine could not take the start's commands (balance snapshot,
    /// settlement domain, `RouterStarted`).
    #[error("{0}")]
    Engine(String),
    /// Step 6: the engine thread could not be spawned.
    #[error("engine thread: {0}")]
    EngineThread(std::io::Error),
    /// Step 7: the metrics endpoint could not listen.
    #[error("metrics endpoint on {listen} (metrics.listen, --metrics-listen): {source}")]
    Metrics {
        /// `metrics.listen`.
        listen: std::net::SocketAddr,
        /// The socket's error.
        source: std::io::Error,
    },
}

/// How clients reach the pipeline: the gateway threads and metrics endpoint are its
/// own (a single router), or the process's (a replicated router's term, R-HA-1).
pub enum Door {
    /// Steps 3 and 7 start the gateway threads and the metrics endpoint; they stop
    /// with the pipeline.
    Own,
    /// A member's term (issue 25): the gateways (running `office::OfficeHandler`),
    /// the metrics registry and the market board outlive the pipeline; step 3
    /// publishes the pipeline to the office once it is ready, instead of listening.
    Office(Arc<office::Office>),
}

/// Starts the router around `engine` (fresh or recovered) and `journal`.
pub fn start<D: sequencer::Durability + 'static>(
    options: StartOptions,
    engine: Engine,
    journal: D,
) -> Result<RouterHandle, PipelineError> {
    start_at(options, engine, journal, Door::Own)
}

/// [`start`], reached through `door`.
pub fn start_at<D: sequencer::Durability + 'static>(
    options: StartOptions,
    engine: Engine,
    journal: D,
    door: Door,
) -> Result<RouterHandle, PipelineError> {
    let StartOptions {
        config,
        router_key,
        genesis_ms,
        reply_cache,
    } = options;
    config.validate().map_err(PipelineError::Config)?;
    let configured = config
        .market_config(genesis_ms)
        .map_err(PipelineError::Config)?;
    let market_domain = (
        configured.settlement_chain_id,
        configured.settlement_contract,
    );
    warn_if_genesis_ahead(genesis_ms);
    // R-ID-6 (issue 27 case 12): until the engine thread publishes, no provider is
    // live (this process holds no connection yet): the figures without the provider
    // pass say so.
    let (registry, market) = match &door {
        Door::Own => {
            let registry = Registry::new();
            let market = Arc::new(market::MarketBoard::new(engine.market_figures_core()));
            market.register_metrics(&registry);
            (registry, market)
        }
        Door::Office(office) => {
            office.market.publish(engine.market_figures_core());
            (office.registry.clone(), office.market.clone())
        }
    };

    // 1. The inbound queue: gateway threads -> engine thread, bounded.
    let (inbound_tx, inbound_rx) =
        crossbeam_channel::bounded(config.network.inbound_queue_depth.max(1));

    // 2. What the gateways read of the engine (pre-check caches, written by the
    //    engine thread only; seeded from the recovered engine).
    let mut shared = shared_state(
        &config,
        &router_key,
        inbound_tx,
        market.clone(),
        &engine,
        &registry,
    )?;
    // R-HA-3: answers to resent messages; a member's cache outlives its pipelines.
    shared.reply_cache = reply_cache.unwrap_or_else(|| {
        Arc::new(yellowstone_router_core::ReplyCache::new(
            config.network.reply_cache_config(),
        ))
    });
    shared
        .reply_cache_entries
        .set(i64::try_from(shared.reply_cache.len()).unwrap_or(i64::MAX));
    // R-HA-3 (issue 25): commands cut off by a loss of office are answered not_leader.
    if let Door::Office(office) = &door {
        shared.office = Some(office.clone());
    }
    let shared = Arc::new(shared);

    // 3. The gateway threads: network loops, each with its own RouterHandler (its own
    //    router-core Admission: login state, proof budgets). A member's term uses the
    //    process's (published to them at the end, once the engine thread runs).
    let gateways = match &door {
        Door::Own => {
            let handler_shared = shared.clone();
            let gateways = net::start_gateways(
                &config.network,
                &config.threads,
                &registry,
                move |context| handler::RouterHandler::new(handler_shared.clone(), context),
            )
            .map_err(|source| PipelineError::Gateways {
                listen: config.network.listen,
                source,
            })?;
            Some(gateways)
        }
        Door::Office(_) => None,
    };
    let outbox = match (&gateways, &door) {
        (Some(gateways), _) => gateways.outbox(),
        (None, Door::Office(office)) => office
            .outbox()
            .ok_or_else(|| PipelineError::Config("the office's gateways are not running".into()))?,
        (None, Door::Own) => unreachable!("started above"),
    };

    // 4. The sink: engine effects -> frames through the gateways' outboxes.
    let sink = sink::RouterSink::new(
        shared.clone(),
        outbox,
        config.threads.ticket_signing == "engine",
    );

    // 5. The sequencer around the engine and the journal (whose own thread reports
    //    durability), its gauges, and the start's commands.
    let mut sequencer = sequencer_with_observers(
        &config,
        &shared,
        market.clone(),
        engine,
        journal,
        sink,
        &registry,
    );
    load_balance_snapshot(&config, &shared, &mut sequencer).map_err(PipelineError::Engine)?;
    // R-ID-6, R-MATCH-2: the providers' connections died with the previous process
    // (this one holds none yet): journaled, so replay agrees, and applied before any
    // client command, so a provider that registers or announces on a connection of
    // this process is reachable again. Nothing to say to a market without providers.
    if sequencer.engine.providers_len() > 0 {
        sequencer
            .apply(ORIGIN_INTERNAL, Command::RouterStarted)
            .map_err(PipelineError::Engine)?;
    }
    // The first scrape and query see every provider unreachable (issue 27 case 12).
    market.publish(sequencer.engine.market_figures());
    set_settlement_domain(&config, market_domain, &mut sequencer).map_err(PipelineError::Engine)?;

    // 6. The engine thread, pinned: the only writer of market state.
    let cores = core_affinity::get_core_ids().map_or(1, |ids| ids.len());
    let engine_core = net::plan_cores(&config.threads, cores).engine;
    let (stopped_tx, engine_stopped) = crossbeam_channel::bounded::<()>(0);
    let sequencer_thread = std::thread::Builder::new()
        .name("ys-engine".into())
        .spawn(move || {
            net::pin_current_thread(engine_core);
            let result = sequencer.run(inbound_rx);
            if let Err(error) = &result {
                tracing::error!(%error, "engine thread stopped: the router shuts down");
            }
            drop(stopped_tx);
            result
        })
        .map_err(PipelineError::EngineThread)?;

    // 7. The metrics endpoint (its own small runtime; a member's is the process's).
    //    A term's clients are let in now.
    if let Door::Office(office) = &door {
        office.open(shared.clone());
    }
    let metrics = if config.metrics.enabled && matches!(door, Door::Own) {
        let server = MetricsServer::start(&config.metrics, registry.clone()).map_err(|source| {
            PipelineError::Metrics {
                listen: config.metrics.listen,
                source,
            }
        })?;
        Some(server)
    } else {
        None
    };
    Ok(RouterHandle {
        listen: gateways
            .as_ref()
            .map_or(config.network.listen, |g| g.local_addr()),
        metrics_addr: metrics.as_ref().map(|m| m.local_addr()),
        router_address: router_key.address(),
        network_id: config.identity.network_id,
        backends: gateways
            .as_ref()
            .map_or_else(Vec::new, |g| g.backends().to_vec()),
        gateways,
        engine_stopped,
        sequencer: Some(sequencer_thread),
        metrics,
        shared,
        _data_dir_lock: None,
    })
}

fn warn_if_genesis_ahead(genesis_ms: u64) {
    let ahead_ms = genesis_ms.saturating_sub(crate::sequencer::unix_ms());
    if ahead_ms > 0 {
        tracing::warn!(
            genesis_ms,
            ahead_s = ahead_ms / 1_000,
            "the market's genesis (market.genesis_ms) is ahead of the clock: until then an \
             RFC whose expiry is before genesis is refused (invalid_expiry), so every RFC \
             is while genesis is more than market.rfc_ttl_max_ms away"
        );
    }
}

/// Step 2: the state the gateway threads read, seeded from `engine`.
fn shared_state(
    config: &RouterConfig,
    router_key: &yellowstone_wire::SigningKey,
    inbound: crossbeam_channel::Sender<sequencer::SequencerInput>,
    market: Arc<market::MarketBoard>,
    engine: &Engine,
    registry: &Registry,
) -> Result<RouterShared, PipelineError> {
    let mut shared = RouterShared::new(
        shared::SharedParts {
            network_id: config.identity.network_id,
            router_key: router_key.clone(),
            operator: config.operator().map_err(PipelineError::Config)?,
            inbound,
            retry_after_ms: config.market.rfc_retry_after_ms,
            catalog: catalog::CatalogBoard::new(config.model_names()),
            market,
            weights_proofs_per_s: config.network.weights_proofs_per_s,
            weights_proofs_unfunded_per_s: config.network.weights_proofs_unfunded_per_s,
        },
        registry,
    );
    shared.conn_refusals_per_s_max = config.network.conn_refusals_per_s_max;
    shared.addr_refusals_per_s_max = config.network.addr_refusals_per_s_max;
    shared.models = engine
        .config()
        .models
        .iter()
        .map(|m| (m.id, m.weights_hash))
        .collect();
    // R-QUOTA-5: the pre-signature quota gate starts in the engine's day.
    shared.quota_gate = quota_gate::QuotaGate::new(
        engine.config().genesis_ms,
        engine.block() / yellowstone_engine::BLOCKS_PER_DAY,
    );
    // A recovered engine knows balances and nonces the gateways' pre-check caches do
    // not yet.
    for (address, balance) in engine.balances() {
        shared.balances.insert(shared::to_wire(address), balance);
    }
    for (address, nonce) in engine.nonces() {
        shared.nonce_accepted(shared::to_wire(address), nonce);
    }
    Ok(shared)
}

/// Step 5: the sequencer, observed by the engine gauges, the market figures, the
/// catalog and the journal's counters after each burst.
fn sequencer_with_observers<D: sequencer::Durability + 'static>(
    config: &RouterConfig,
    shared: &Arc<RouterShared>,
    market: Arc<market::MarketBoard>,
    engine: Engine,
    journal: D,
    sink: sink::RouterSink,
    registry: &Registry,
) -> Sequencer<D, sink::RouterSink> {
    let sequencer_config = SequencerConfig {
        snapshot_every_blocks: config.journal.snapshot_every_blocks,
        ..SequencerConfig::default()
    };
    let gauges = EngineGauges::new(registry);
    let journal_gauges = journal.stats().map(|stats| journal_gauges(registry, stats));
    let replica_gauges = journal
        .replica_stats()
        .map(|stats| replica_gauges(registry, stats));
    // Queries that arrive before the engine's first burst see the catalog too.
    shared.catalog.publish_if_due(&engine);
    let catalog_shared = shared.clone();
    // Made at the first burst, after `RouterStarted`: its provider pass must not be of
    // the recovered state, whose providers were reachable through the previous process
    // (R-ID-6, issue 27 case 12).
    let mut figures: Option<market::FiguresPublisher> = None;
    let figures_operator = shared.operator.map(to_engine);
    let stages = shared.registry.stage_recorder();
    Sequencer::new(engine, journal, sink, sequencer_config)
        .with_stages(stages)
        .with_observer(move |engine| {
            gauges.update(engine);
            match figures.as_mut() {
                Some(figures) => {
                    figures.observe(engine);
                }
                None => {
                    figures = Some(market::FiguresPublisher::new(
                        market.clone(),
                        engine,
                        figures_operator,
                    ))
                }
            }
            catalog_shared.catalog.publish_if_due(engine);
            if let Some(journal_gauges) = &journal_gauges {
                journal_gauges.update();
            }
            if let Some(replica_gauges) = &replica_gauges {
                replica_gauges.update();
            }
        })
}
