//! State the gateway threads and the engine thread share: the router's identity, the
//! balance and nonce pre-check caches (written by the engine thread only),
//! the batch subscribers, the inbound queue and the metrics. Read-mostly tables are
//! dashmaps; the market state itself stays on the engine thread.

use super::signature_cpu::SignatureCpu;
use crate::metrics::{Counter, Registry};
use crate::net::ConnId;
use crate::sequencer::SequencerInput;
use crossbeam_channel::Sender;
use dashmap::DashMap;
use std::sync::Arc;
use yellowstone_wire::{Address, SigningKey};

pub struct RouterShared {
    pub network_id: u32,
    pub router_key: SigningKey,
    pub operator: Option<Address>,
    /// Balances as the engine last applied them (its `BalancesSet` effects, and the
    /// recovered engine at start): lets gateways refuse zero-balance RFCs without a
    /// trip to the engine (the engine checks again). Never written from a request.
    pub balances: DashMap<Address, u128>,
    /// R-ID-4, R-PROV-3: the last nonce the engine accepted per address, as applied
    /// (accepted commands' deliveries, once durable, and the recovered engine at
    /// start): lets gateways refuse replays before any signature work and before the
    /// journal. Never ahead of the engine, never written from a request; one entry
    /// per engine account at most (`market.accounts_max`).
    pub nonces: DashMap<Address, u64>,
    /// R-QUOTA-5: senders refused for quota, refused again before any signature
    /// work while the engine would (written by the sink, in command order).
    pub quota_gate: super::quota_gate::QuotaGate,
    /// The market's models and their weights hashes (fixed for a data directory):
    /// a registration naming another model or hash is refused before its proofs
    /// are checked (R-PROV-3).
    pub models: std::collections::HashMap<u32, [u8; 32]>,
    /// `network.weights_proofs_per_s`, per gateway thread (R-PROV-3).
    pub weights_proofs_per_s: u64,
    /// `network.weights_proofs_unfunded_per_s`, per gateway thread (R-PROV-3).
    pub weights_proofs_unfunded_per_s: u64,
    /// `network.conn_refusals_per_s_max`: refusals per connection per second before
    /// it is closed `too_many_refusals` (R-PROV-3, issue 27). Set by the pipeline.
    pub conn_refusals_per_s_max: u32,
    /// `network.addr_refusals_per_s_max`: refusals of one address's connections per
    /// second on one gateway thread (R-PROV-3, issue 27). Set by the pipeline.
    pub addr_refusals_per_s_max: u32,
    pub subscribers: DashMap<ConnId, ()>,
    pub inbound: Sender<SequencerInput>,
    pub retry_after_ms: u32,
    pub registry: Registry,
    pub commands_total: Arc<Counter>,
    pub replies_dropped_total: Arc<Counter>,
    /// Where the signature work goes, measured in place.
    pub signature_cpu: SignatureCpu,
    /// The catalog the engine thread publishes and gateways answer queries from.
    pub catalog: super::catalog::CatalogBoard,
    /// The market's figures as the engine last published them (R-OPS-3).
    pub market: Arc<super::market::MarketBoard>,
    /// R-HA-3: the answers to each address's last accepted signed messages, written
    /// by the engine thread (the sink, on delivery) or a replicated member's state
    /// machine, read by the gateways for resent messages. Set by the pipeline (from
    /// `StartOptions::reply_cache`, so it can outlive one pipeline).
    pub reply_cache: Arc<yellowstone_router_core::ReplyCache>,
    /// R-HA-2: the newest sealed batch's and settlement's signed frames, signed once
    /// for every subscription that asks for them (`sink::newest_sealed_frames`).
    pub sealed_frames: std::sync::Mutex<crate::router::sink::SealedFrames>,
    /// `yellowstone_reply_cache_hits_total`: resent messages answered from the cache.
    pub reply_cache_hits_total: Arc<Counter>,
    /// `yellowstone_reply_cache_entries`: answers held (set by the sink).
    pub reply_cache_entries: Arc<crate::metrics::Gauge>,
    /// R-HA-3 (issue 25): a replicated member's office, set by the pipeline. A command
    /// the engine thread can no longer take while this is set and `stopping` is not
    /// was cut off by a loss of office: it is answered `not_leader` (resend it to the
    /// leader), not `shutting_down`.
    pub office: Option<Arc<super::office::Office>>,
    /// A real stop (SIGTERM, `RouterHandle::shutdown`) began: `shutting_down` is the
    /// answer to what the engine can no longer take.
    pub stopping: std::sync::atomic::AtomicBool,
}

/// What `RouterShared::new` needs beyond the registry (the rest starts empty).
pub struct SharedParts {
    pub network_id: u32,
    pub router_key: SigningKey,
    pub operator: Option<Address>,
    pub inbound: Sender<SequencerInput>,
    pub retry_after_ms: u32,
    pub catalog: super::catalog::CatalogBoard,
    pub market: Arc<super::market::MarketBoard>,
    /// `network.weights_proofs_per_s`.
    pub weights_proofs_per_s: u64,
    /// `network.weights_proofs_unfunded_per_s`.
    pub weights_proofs_unfunded_per_s: u64,
}

impl RouterShared {
    /// Empty routes, balances and subscribers; the counters registered in `registry`.
    pub fn new(parts: SharedParts, registry: &Registry) -> RouterShared {
        RouterShared {
            network_id: parts.network_id,
            router_key: parts.router_key,
            operator: parts.operator,
            balances: Default::default(),
            nonces: Default::default(),
            quota_gate: Default::default(),
            models: Default::default(),
            weights_proofs_per_s: parts.weights_proofs_per_s,
            weights_proofs_unfunded_per_s: parts.weights_proofs_unfunded_per_s,
            conn_refusals_per_s_max: crate::config::NetworkConfig::default()
                .conn_refusals_per_s_max,
            addr_refusals_per_s_max: crate::config::NetworkConfig::default()
                .addr_refusals_per_s_max,
            subscribers: Default::default(),
            inbound: parts.inbound,
            retry_after_ms: parts.retry_after_ms,
            commands_total: registry.counter(
                "yellowstone_commands_total",
                "Authenticated commands handed to the engine.",
                &[],
            ),
            replies_dropped_total: registry.counter(
                "yellowstone_replies_dropped_total",
                "Replies not delivered: recipient not connected or its outbound lane full.",
                &[],
            ),
            signature_cpu: SignatureCpu::new(registry),
            catalog: parts.catalog,
            registry: registry.clone(),
            market: parts.market,
            reply_cache: Arc::new(yellowstone_router_core::ReplyCache::new(
                crate::config::NetworkConfig::default().reply_cache_config(),
            )),
            sealed_frames: std::sync::Mutex::new(Default::default()),
            reply_cache_hits_total: registry.counter(
                "yellowstone_reply_cache_hits_total",
                "Resent signed messages (nonce already spent, same command) answered with \
                 their original answer from the reply cache (R-HA-3).",
                &[],
            ),
            reply_cache_entries: registry.gauge(
                "yellowstone_reply_cache_entries",
                "Answers held in the reply cache (network.reply_cache_entries_max at most).",
                &[],
            ),
            office: None,
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// R-ID-4: `nonce` of `address` was accepted by the engine (never lowers it).
    pub fn nonce_accepted(&self, address: Address, nonce: u64) {
        let mut entry = self.nonces.entry(address).or_insert(nonce);
        if *entry < nonce {
            *entry = nonce;
        }
    }

    /// Counts a refusal by its stable code name (`yellowstone_rejections_total`).
    pub fn count_rejection(&self, code: u16) {
        self.registry
            .counter(
                "yellowstone_rejections_total",
                "Refused messages by error code.",
                &[("code", yellowstone_wire::codes::name(code))],
            )
            .inc();
    }
}

pub fn to_engine(address: Address) -> yellowstone_engine::Address {
    yellowstone_engine::Address(address.0)
}

pub fn to_wire(address: yellowstone_engine::Address) -> Address {
    Address(address.0)
}
