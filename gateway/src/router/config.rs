//! The router's whole configuration: one TOML file whose sections are the network
//! layer's (`[network]`, `[threads]`, `[metrics]`), `[identity]`, `[market]` and
//! `[journal]`. Every key has a sane default, so `yellowstone-router run` starts with
//! no file at all on loopback; unknown keys are errors naming the key.

use crate::config::{clip_lines, echo, MetricsConfig, NetworkConfig, ThreadsConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use yellowstone_engine::{
    BudgetPolicy, FailPolicy, MarketConfig, ModelSpec, Unit, UnusedBudget, WEI_PER_MOR,
};
use yellowstone_wire::Address;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    pub network: NetworkConfig,
    pub threads: ThreadsConfig,
    pub metrics: MetricsConfig,
    pub identity: IdentityConfig,
    pub market: MarketSection,
    pub journal: JournalSection,
    /// Replication (issue 25, SPEC §12): off by default; docs/configuration.md
    /// `[cluster]`, docs/replication.md.
    pub cluster: crate::replication::ClusterConfig,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Bound into every signature (R-ID-2).
    pub network_id: u32,
    /// The router's secret key, 64 hex digits. Empty: read `<data_dir>/router.key`,
    /// creating it on first start (or a fresh key per run without a data dir).
    pub router_key_hex: String,
    /// The operator's address (EIP-55 or lower case); empty: no operator, so no
    /// balance or parameter updates are accepted.
    pub operator: String,
    /// Balance snapshot: one `address,balance_wei` per line, `#` comments allowed
    /// (docs/configuration.md). R-QUOTA-6: applied once, when the market is created (a new data
    /// directory); later starts with the same file skip it, and a different file is
    /// refused unless `balance_snapshot_reapply`.
    pub balance_snapshot: Option<PathBuf>,
    /// Apply `balance_snapshot` on this start even though the market already exists
    /// (it sets every balance it lists; no operator nonce is spent). Meant for one
    /// start: the CLI flag `--reapply-balance-snapshot`.
    pub balance_snapshot_reapply: bool,
    /// Issue 24 case 2: set market.settlement_chain_id / settlement_contract on a data
    /// directory created without a contract (0x0), once (journaled). Meant for one
    /// start: the CLI flag `--set-settlement-domain`.
    pub settlement_domain_set: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            network_id: 1,
            router_key_hex: String::new(),
            operator: String::new(),
            balance_snapshot: None,
            balance_snapshot_reapply: false,
            settlement_domain_set: false,
        }
    }
}

/// One model of the catalog: providers must present this weights hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub id: u32,
    /// 64 hex digits (BLAKE3 of the weights).
    pub weights_hash: String,
    /// The name the catalog query lists (R-NODE-2), e.g. "llama-3.1-8b-instruct";
    /// at most 128 bytes. Empty: `model-<id>`. Names are presentation only: they are
    /// not part of the engine's market parameters, so renaming needs no new data dir.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// The demo catalog used when none is configured (models 1..=4, weights hash
/// BLAKE3("yellowstone-demo-model-<id>")): defined in `yellowstone_wire::demo`, which
/// the load generator and the tests use without linking the router.
pub use yellowstone_wire::demo::{demo_model_name, demo_weights_hash, DEMO_MODELS};

/// Issue 23 case 9: `print-config`'s comment on `[[market.models]]` (docs/models.md),
/// the market's catalog: one table per model, `id` (u32, the wire's model id),
/// `weights_hash` (64 hex digits, BLAKE3 of the weights file providers register,
/// R-PROV-1) and `name` (what `GET /v1/models` lists, at most 128 bytes; empty:
/// `model-<id>`). With `models` empty (`models = []`) the router serves the demo
/// catalog, written out here as the tables it stands for. Comments only: the output
/// still reads back as the same configuration.
pub fn models_help(models: &[ModelEntry]) -> String {
    let mut text = String::from(
        "\n# [[market.models]]: the catalog, one table per model (docs/models.md):\n\
         #   id = N                 u32, the model id RFCs and offers name\n\
         #   weights_hash = \"HEX\"   64 hex digits: BLAKE3 of the weights file providers register\n\
         #   name = \"NAME\"          what GET /v1/models lists (<= 128 bytes; default model-<id>)\n",
    );
    if models.is_empty() {
        text.push_str("# models = [] above: the demo catalog, as if configured so:\n");
        for id in DEMO_MODELS {
            text.push_str(&format!(
                "# [[market.models]]\n# id = {id}\n# weights_hash = \"{}\"\n# name = \"{}\"\n",
                hex::encode(demo_weights_hash(id)),
                demo_model_name(id)
            ));
        }
    }
    text
}

/// TOML integers are i64: wei amounts are written as integers when they fit and as
/// strings of digits when they do not, and read from either.
mod wei_in_toml {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(*value) {
            Ok(small) => serializer.serialize_i64(small),
            Err(_) => serializer.serialize_str(&value.to_string()),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Amount {
        Integer(i64),
        Digits(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
        match Amount::deserialize(deserializer)? {
            Amount::Integer(value) => u128::try_from(value)
                .map_err(|_| serde::de::Error::custom("a wei amount cannot be negative")),
            Amount::Digits(text) => yellowstone_wire::amount::parse_wei(&text)
                .map_err(|e| serde::de::Error::custom(format!("not a wei amount: {e}"))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketSection {
    /// Unix ms of block 0; 0: the first start's time (kept in the data directory).
    /// At most `GENESIS_AHEAD_MS_MAX` (a year) ahead of the clock; a genesis ahead of
    /// the clock is logged at start (RFCs expiring before it are refused).
    pub genesis_ms: u64,
    pub models: Vec<ModelEntry>,
    pub mor_supply_mor: u64,
    pub compute_budget_mor_per_day: u64,
    /// Wei; a TOML integer, or a string of digits above 2^63 - 1 (TOML's limit).
    #[serde(with = "wei_in_toml")]
    pub token_price_wei_per_1000: u128,
    /// "fixed" or "pool-percent".
    pub budget_policy: String,
    pub rfc_queue_depth_max: u32,
    pub rfc_ttl_max_ms: u64,
    pub rfc_retry_after_ms: u32,
    pub tokens_max_limit: u64,
    pub probe_timeout_ms: u64,
    pub probe_tries_max: u8,
    pub session_ttl_ms: u64,
    pub sessions_open_max: u32,
    pub rfcs_open_max: u32,
    pub accounts_max: u32,
    pub providers_max: u32,
    pub speed_tolerance_percent: u32,
    pub speed_window_reports: u32,
    pub speed_reports_min: u32,
    /// "no-credit" or "balance-weighted".
    pub fail_policy: String,
    pub penalty_window_reports: u32,
    pub penalty_points_suspend: u32,
    pub suspension_ms: u64,
    /// "carry" or "burn".
    pub unused_budget: String,
    /// R-CHAIN-1: blocks per settlement with the on-chain Compute Contract; must
    /// divide a day (7,200 blocks). 300: one hour.
    pub settlement_epoch_blocks: u64,
    /// Settlements kept for export (`yellowstone-router settlement`).
    pub settlements_kept_max: u32,
    /// The chain id and Compute Contract address the settlements are signed for
    /// (their EIP-712 domain); empty address: not deployed yet (the zero address).
    pub settlement_chain_id: u64,
    pub settlement_contract: String,
    /// R-MONEY-1: the highest bid, wei per token (default 10^24, written as digits
    /// since it is above TOML's 2^63 - 1). An RFC is admitted only if TokenMax times
    /// this fits a u128 wei amount.
    #[serde(with = "wei_in_toml")]
    pub bid_wei_per_token_max: u128,
    /// Offers in one registration, at most the wire's 64. 64.
    pub offers_per_provider_max: u32,
    /// Concurrent sessions one offer may declare (`capacity`). 100,000.
    pub offer_capacity_max: u32,
    /// A provider's endpoint, bytes, at most the wire's 255. 255.
    pub endpoint_bytes_max: u32,
    /// Entries in one BalanceUpdate, at most the wire's 100,000. 100,000.
    pub balance_entries_max: u32,
    /// R-PERF-4: distinct users whose penalty points (within the penalty window) a
    /// suspension needs, 1..=penalty_window_reports. 3.
    pub suspend_users_min: u32,
    /// R-PERF-1: reports of one user in a model's speed window, at most (its newest
    /// replaces its oldest): no user moves the speed reference by more than its share.
    /// At least 1. 10.
    pub speed_window_user_reports_max: u32,
    /// R-PERF-1: a passing report claiming a generation faster than this many
    /// completion tokens per second joins no speed window. At least 1. 10,000.
    pub tokens_per_s_max: u64,
    /// R-PROV-2: registrations from addresses without MOR kept apart from the
    /// providers (never counted in `providers_max`), oldest evicted first,
    /// 1..=1,000,000. 10,000.
    pub unfunded_registrations_max: u32,
    /// R-PROV-2: how long an unfunded registration is kept, ms, 1..=86,400,000 (a
    /// day). 600,000.
    pub unfunded_registration_ttl_ms: u64,
    /// R-SESSION-1: a session whose provider has not signed its start within this
    /// many ms of its ticket is closed (no credit, no penalty). 30,000; above 0.
    pub ticket_start_timeout_ms: u64,
    /// R-SESSION-1: open sessions plus unanswered RFCs one user may hold; an RFC
    /// past it is refused `user_sessions_full`. 16; above 0.
    pub user_sessions_open_max: u32,
    /// R-REPORT-3: the most prompt tokens a report may carry. 16,777,216; above 0.
    pub prompt_tokens_max: u64,
}

impl Default for MarketSection {
    fn default() -> Self {
        let d = MarketConfig::default();
        MarketSection {
            genesis_ms: 0,
            models: Vec::new(),
            mor_supply_mor: (d.mor_supply_wei / WEI_PER_MOR) as u64,
            compute_budget_mor_per_day: (d.compute_budget_wei_per_day / WEI_PER_MOR) as u64,
            token_price_wei_per_1000: d.token_price_wei_per_1000,
            budget_policy: "fixed".into(),
            rfc_queue_depth_max: d.rfc_queue_depth_max,
            rfc_ttl_max_ms: d.rfc_ttl_max_ms,
            rfc_retry_after_ms: d.rfc_retry_after_ms,
            tokens_max_limit: d.tokens_max_limit,
            probe_timeout_ms: d.probe_timeout_ms,
            probe_tries_max: d.probe_tries_max,
            session_ttl_ms: d.session_ttl_ms,
            sessions_open_max: d.sessions_open_max,
            rfcs_open_max: d.rfcs_open_max,
            accounts_max: d.accounts_max,
            providers_max: d.providers_max,
            speed_tolerance_percent: d.speed_tolerance_percent,
            speed_window_reports: d.speed_window_reports,
            speed_reports_min: d.speed_reports_min,
            fail_policy: "no-credit".into(),
            penalty_window_reports: d.penalty_window_reports,
            penalty_points_suspend: d.penalty_points_suspend,
            suspension_ms: d.suspension_ms,
            unused_budget: "carry".into(),
            settlement_epoch_blocks: d.settlement_epoch_blocks,
            settlements_kept_max: d.settlements_kept_max,
            settlement_chain_id: d.settlement_chain_id,
            settlement_contract: String::new(),
            bid_wei_per_token_max: d.bid_wei_per_token_max,
            offers_per_provider_max: d.offers_per_provider_max,
            offer_capacity_max: d.offer_capacity_max,
            endpoint_bytes_max: d.endpoint_bytes_max,
            balance_entries_max: d.balance_entries_max,
            suspend_users_min: d.suspend_users_min,
            speed_window_user_reports_max: d.speed_window_user_reports_max,
            tokens_per_s_max: d.tokens_per_s_max,
            unfunded_registrations_max: d.unfunded_registrations_max,
            unfunded_registration_ttl_ms: d.unfunded_registration_ttl_ms,
            ticket_start_timeout_ms: d.ticket_start_timeout_ms,
            user_sessions_open_max: d.user_sessions_open_max,
            prompt_tokens_max: d.prompt_tokens_max,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalSection {
    /// Where the journal, snapshots, router key and genesis live; none: in memory
    /// only (nothing survives a restart).
    pub data_dir: Option<PathBuf>,
    /// "always" (default: replies leave after fsync), "interval" or "none".
    pub durability: String,
    /// With durability `interval`: fsync at least this often, ms (default 10; 1 to
    /// `FSYNC_INTERVAL_MS_MAX`, a minute).
    pub fsync_interval_ms: u64,
    pub segment_bytes_max: u64,
    /// Snapshot every this many blocks (0: never).
    pub snapshot_every_blocks: u64,
    /// Start even if the journal is corrupt before its tail, cutting it there.
    pub allow_corrupt_truncate: bool,
    /// Appended bytes the journal thread may lag behind before the engine waits.
    pub buffer_bytes_max: u64,
    /// Snapshots kept on disk; segments go once the oldest kept one covers them.
    pub snapshots_kept: u32,
    /// Journal writes: "uring" (default: write + linked fdatasync in one io_uring
    /// submission, the fsync on a kernel io-wq worker; "sync" under
    /// network.backend = "mio"), "dsync" (one pwritev2(RWF_DSYNC) per group from the
    /// journal thread: less CPU per session, more latency on the machine measured,
    /// BENCHMARKS.md "Journal CPU") or "sync" (pwrite + fdatasync from the journal
    /// thread).
    pub io: String,
    /// Zero-filled room kept ahead of the open segment's data, bytes (default
    /// 4 MiB; 0: none): appends overwrite blocks the file already has, so their
    /// fdatasync commits no size change. At most segment_bytes_max and
    /// `PREALLOCATE_BYTES_LIMIT` (1 GiB).
    pub preallocate_bytes: u64,
    /// Group commit window, microseconds (opt-in; default 0). 0: natural group
    /// commit, the writer writes (and in `always` fsyncs) whatever gathered while its
    /// previous write was in flight, so a group grows with the load and a lone
    /// record never waits for a timer. Above 0 a group is written no sooner than this
    /// after the previous one started: fewer, larger writes under steady load, for up
    /// to this much latency per durable step; after a quiet spell the first record
    /// goes at once. At most 100000.
    pub group_commit_us: u64,
    /// A group this large is written at once, window or not.
    pub group_bytes_max: u64,
    /// Adaptive group commit, microseconds (default 500; 0: off, pure natural group
    /// commit). With `group_commit_us = 0` and durability `always`, the journal
    /// measures its fsync time D and the record arrival rate λ; once λ·D ≥ 1 (fsyncs
    /// run back to back, so their number no longer falls with the load) it holds each
    /// group D after the previous one ended, at most this long, and stops below
    /// λ·D = 0.7. Under that load it halves fsyncs per record for about D/2 more
    /// latency; at lighter load nothing waits. At most 100000.
    pub group_commit_adaptive_max_us: u64,
    /// Snapshots are written back this many bytes at a time, each chunk pushed to
    /// the device before the next (default 1 MiB; 0: the whole file, then one
    /// fsync). A 1,000,000-account snapshot is ~48 MB: written at once, the
    /// journal's fdatasyncs meanwhile wait behind it at the device. At most 1 GiB.
    pub snapshot_write_chunk_bytes: u64,
    /// Serialise snapshots from a replica engine on its own thread, fed the same
    /// journal records (default true): the engine thread does not stop for a
    /// snapshot, and market state takes twice the memory. false: the engine thread
    /// serialises itself at each snapshot point (120-140 ms at 1,000,000 accounts).
    pub snapshot_replica: bool,
    /// Record bytes the replica may lag behind; past it the replica drops its state
    /// and the next snapshot point serialises on the engine thread to reseed it.
    pub snapshot_replica_queue_bytes_max: u64,
}

/// How far ahead of the clock `market.genesis_ms` may be: a year (a figure in
/// microseconds, say, is refused rather than starting a market that refuses every
/// RFC until then).
pub const GENESIS_AHEAD_MS_MAX: u64 = 366 * 24 * 3_600_000;

/// The largest `journal.segment_bytes_max`: 1 TiB.
pub const JOURNAL_SEGMENT_BYTES_LIMIT: u64 = 1 << 40;

/// The largest `journal.buffer_bytes_max` and `snapshot_replica_queue_bytes_max`
/// (memory the journal and the replica may hold): 64 GiB.
pub const JOURNAL_MEMORY_BYTES_LIMIT: u64 = 1 << 36;

/// The longest `journal.fsync_interval_ms` (durability `interval`): a minute.
pub const FSYNC_INTERVAL_MS_MAX: u64 = 60_000;

/// The largest `journal.preallocate_bytes`: the journal writes that many zero bytes
/// ahead of each segment's data, so a huge figure fills the disk (1 GiB).
pub const PREALLOCATE_BYTES_LIMIT: u64 = 1 << 30;

/// The smallest `journal.snapshot_replica_queue_bytes_max`: two of the largest
/// journal records.
pub const SNAPSHOT_REPLICA_QUEUE_BYTES_MIN: u64 =
    2 * crate::journal::record::RECORD_PAYLOAD_MAX as u64;

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            data_dir: None,
            durability: "always".into(),
            fsync_interval_ms: 10,
            segment_bytes_max: 256 * 1024 * 1024,
            snapshot_every_blocks: 25,
            allow_corrupt_truncate: false,
            buffer_bytes_max: 64 * 1024 * 1024,
            snapshots_kept: 2,
            io: "uring".into(),
            preallocate_bytes: 4 * 1024 * 1024,
            group_commit_us: 0,
            group_bytes_max: 1024 * 1024,
            group_commit_adaptive_max_us: 500,
            snapshot_write_chunk_bytes: 1024 * 1024,
            snapshot_replica: true,
            snapshot_replica_queue_bytes_max: 64 * 1024 * 1024,
        }
    }
}

impl RouterConfig {
    pub fn from_toml(text: &str) -> Result<RouterConfig, String> {
        // The parse error quotes the offending line: clipped, so that a megabyte
        // value is not echoed whole.
        toml::from_str(text).map_err(|e| clip_lines(&e.to_string()))
    }

    pub fn operator(&self) -> Result<Option<Address>, String> {
        if self.identity.operator.is_empty() {
            return Ok(None);
        }
        self.identity
            .operator
            .parse()
            .map(Some)
            .map_err(|e| format!("identity.operator {}: {e}", echo(&self.identity.operator)))
    }

    /// The engine's configuration; `genesis_ms` is resolved by the caller.
    pub fn market_config(&self, genesis_ms: u64) -> Result<MarketConfig, String> {
        let m = &self.market;
        let operator = self
            .operator()?
            .map(|a| yellowstone_engine::Address(a.0))
            .unwrap_or_default();
        let models = if m.models.is_empty() {
            DEMO_MODELS
                .iter()
                .map(|&id| ModelSpec {
                    id,
                    weights_hash: demo_weights_hash(id),
                    unit: Unit::Token,
                })
                .collect()
        } else {
            m.models
                .iter()
                .map(|entry| {
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(entry.weights_hash.trim_start_matches("0x"), &mut hash)
                        .map_err(|e| {
                            format!(
                                "market.models id {}: weights_hash must be 64 hex digits: {e}",
                                entry.id
                            )
                        })?;
                    Ok(ModelSpec {
                        id: entry.id,
                        weights_hash: hash,
                        unit: Unit::Token,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?
        };
        let pick = |key: &str, value: &str, options: &[&str]| -> Result<usize, String> {
            options.iter().position(|o| *o == value).ok_or_else(|| {
                format!(
                    "market.{key} must be one of {options:?}, not {}",
                    echo(value)
                )
            })
        };
        let config = MarketConfig {
            genesis_ms,
            operator,
            models,
            mor_supply_wei: m.mor_supply_mor as u128 * WEI_PER_MOR,
            compute_budget_wei_per_day: m.compute_budget_mor_per_day as u128 * WEI_PER_MOR,
            token_price_wei_per_1000: m.token_price_wei_per_1000,
            budget_policy: [BudgetPolicy::Fixed, BudgetPolicy::PoolPercent][pick(
                "budget_policy",
                &m.budget_policy,
                &["fixed", "pool-percent"],
            )?],
            rfc_queue_depth_max: m.rfc_queue_depth_max,
            rfc_ttl_max_ms: m.rfc_ttl_max_ms,
            rfc_retry_after_ms: m.rfc_retry_after_ms,
            tokens_max_limit: m.tokens_max_limit,
            probe_timeout_ms: m.probe_timeout_ms,
            probe_tries_max: m.probe_tries_max,
            session_ttl_ms: m.session_ttl_ms,
            sessions_open_max: m.sessions_open_max,
            rfcs_open_max: m.rfcs_open_max,
            accounts_max: m.accounts_max,
            providers_max: m.providers_max,
            speed_tolerance_percent: m.speed_tolerance_percent,
            speed_window_reports: m.speed_window_reports,
            speed_reports_min: m.speed_reports_min,
            fail_policy: [FailPolicy::NoCredit, FailPolicy::BalanceWeighted][pick(
                "fail_policy",
                &m.fail_policy,
                &["no-credit", "balance-weighted"],
            )?],
            penalty_window_reports: m.penalty_window_reports,
            penalty_points_suspend: m.penalty_points_suspend,
            suspension_ms: m.suspension_ms,
            unused_budget: [UnusedBudget::Carry, UnusedBudget::Burn]
                [pick("unused_budget", &m.unused_budget, &["carry", "burn"])?],
            settlement_epoch_blocks: m.settlement_epoch_blocks,
            settlements_kept_max: m.settlements_kept_max,
            settlement_chain_id: m.settlement_chain_id,
            settlement_contract: if m.settlement_contract.is_empty() {
                yellowstone_engine::Address::default()
            } else {
                m.settlement_contract
                    .parse::<Address>()
                    .map(|a| yellowstone_engine::Address(a.0))
                    .map_err(|e| {
                        format!(
                            "market.settlement_contract {}: {e}",
                            echo(&m.settlement_contract)
                        )
                    })?
            },
            bid_wei_per_token_max: m.bid_wei_per_token_max,
            offers_per_provider_max: m.offers_per_provider_max,
            offer_capacity_max: m.offer_capacity_max,
            endpoint_bytes_max: m.endpoint_bytes_max,
            balance_entries_max: m.balance_entries_max,
            suspend_users_min: m.suspend_users_min,
            speed_window_user_reports_max: m.speed_window_user_reports_max,
            tokens_per_s_max: m.tokens_per_s_max,
            unfunded_registrations_max: m.unfunded_registrations_max,
            unfunded_registration_ttl_ms: m.unfunded_registration_ttl_ms,
            ticket_start_timeout_ms: m.ticket_start_timeout_ms,
            user_sessions_open_max: m.user_sessions_open_max,
            prompt_tokens_max: m.prompt_tokens_max,
            ..MarketConfig::default()
        };
        use yellowstone_wire::messages::{BALANCE_ENTRIES_MAX, ENDPOINT_BYTES_MAX, OFFERS_MAX};
        for (key, value, wire_max) in [
            (
                "offers_per_provider_max",
                m.offers_per_provider_max,
                OFFERS_MAX,
            ),
            (
                "offer_capacity_max",
                m.offer_capacity_max,
                u32::MAX as usize,
            ),
            (
                "endpoint_bytes_max",
                m.endpoint_bytes_max,
                ENDPOINT_BYTES_MAX,
            ),
            (
                "balance_entries_max",
                m.balance_entries_max,
                BALANCE_ENTRIES_MAX,
            ),
        ] {
            if value == 0 || value as usize > wire_max {
                return Err(format!(
                    "market.{key} must be between 1 and {wire_max} (the wire's limit), not {value}"
                ));
            }
        }
        config
            .validate()
            .map_err(|reason| market_refusal(m, &reason))?;
        // R-CONTRACT-5: a market created with a fixed budget of nothing credits no
        // session (an outside review). Checked for the file only: the engine keeps
        // accepting 0 by SetParams, the operator's way to pause crediting.
        if config.budget_policy == BudgetPolicy::Fixed && m.compute_budget_mor_per_day == 0 {
            return Err(
                "market.compute_budget_mor_per_day = 0: must be at least 1 with \
                 budget_policy fixed (R-CONTRACT-5: a day's budget of nothing credits no \
                 session)"
                    .to_string(),
            );
        }
        Ok(config)
    }

    /// Model id -> catalog name (R-NODE-2): the demo names without a configured
    /// catalog, else each entry's `name` (`model-<id>` when empty).
    pub fn model_names(&self) -> std::collections::HashMap<u32, String> {
        if self.market.models.is_empty() {
            return DEMO_MODELS
                .iter()
                .map(|&id| (id, demo_model_name(id)))
                .collect();
        }
        self.market
            .models
            .iter()
            .map(|entry| {
                let name = if entry.name.is_empty() {
                    format!("model-{}", entry.id)
                } else {
                    entry.name.clone()
                };
                (entry.id, name)
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), String> {
        self.network.validate().map_err(|e| e.to_string())?;
        self.metrics.validate().map_err(|e| e.to_string())?;
        self.threads.validate().map_err(|e| e.to_string())?;
        self.validate_cluster()?;
        for entry in &self.market.models {
            if entry.name.len() > yellowstone_wire::messages::MODEL_NAME_BYTES_MAX {
                return Err(format!(
                    "market.models id {}: name is {} bytes, at most {} allowed",
                    entry.id,
                    entry.name.len(),
                    yellowstone_wire::messages::MODEL_NAME_BYTES_MAX
                ));
            }
        }
        let names = self.model_names();
        let mut distinct: Vec<&String> = names.values().collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != names.len() {
            return Err("market.models: model names must be unique".into());
        }
        self.market_config(1)?;
        let year_ahead_ms = crate::sequencer::unix_ms().saturating_add(GENESIS_AHEAD_MS_MAX);
        if self.market.genesis_ms > year_ahead_ms {
            return Err(format!(
                "market.genesis_ms is Unix time in milliseconds, at most a year ahead of the \
                 clock ({year_ahead_ms}), not {} (microseconds?)",
                self.market.genesis_ms
            ));
        }
        if self.journal.fsync_interval_ms > FSYNC_INTERVAL_MS_MAX {
            return Err(format!(
                "journal.fsync_interval_ms must be at most {FSYNC_INTERVAL_MS_MAX} (a minute; \
                 longer is durability none under another name), not {}",
                self.journal.fsync_interval_ms
            ));
        }
        if !["always", "interval", "none"].contains(&self.journal.durability.as_str()) {
            return Err(format!(
                "journal.durability must be always, interval or none, not {}",
                echo(&self.journal.durability)
            ));
        }
        let journal = &self.journal;
        for (key, value) in [
            ("journal.segment_bytes_max", journal.segment_bytes_max),
            ("journal.buffer_bytes_max", journal.buffer_bytes_max),
        ] {
            if value < 4096 {
                return Err(format!("{key} must be at least 4096, not {value}"));
            }
        }
        if journal.snapshot_replica_queue_bytes_max < SNAPSHOT_REPLICA_QUEUE_BYTES_MIN {
            return Err(format!(
                "journal.snapshot_replica_queue_bytes_max must be at least \
                 {SNAPSHOT_REPLICA_QUEUE_BYTES_MIN} (two of the largest journal records), not {}",
                journal.snapshot_replica_queue_bytes_max
            ));
        }
        journal.io.parse::<crate::journal::JournalIo>()?;
        if journal.preallocate_bytes > PREALLOCATE_BYTES_LIMIT {
            return Err(format!(
                "journal.preallocate_bytes must be at most {PREALLOCATE_BYTES_LIMIT} (1 GiB: \
                 the room is written with zeros ahead of each segment's data, on disk), not {}",
                journal.preallocate_bytes
            ));
        }
        if journal.preallocate_bytes > journal.segment_bytes_max {
            return Err(format!(
                "journal.preallocate_bytes must be at most journal.segment_bytes_max ({}), not {}",
                journal.segment_bytes_max, journal.preallocate_bytes
            ));
        }
        if !["gateway", "engine"].contains(&self.threads.ticket_signing.as_str()) {
            return Err(format!(
                "threads.ticket_signing must be gateway or engine, not {}",
                echo(&self.threads.ticket_signing)
            ));
        }
        if journal.group_commit_us > 100_000 {
            return Err(format!(
                "journal.group_commit_us must be at most 100000 (100 ms), not {}",
                journal.group_commit_us
            ));
        }
        if journal.snapshot_write_chunk_bytes > 1 << 30 {
            return Err(format!(
                "journal.snapshot_write_chunk_bytes must be at most 1073741824 (1 GiB), not {}",
                journal.snapshot_write_chunk_bytes
            ));
        }
        if journal.group_commit_adaptive_max_us > 100_000 {
            return Err(format!(
                "journal.group_commit_adaptive_max_us must be at most 100000 (100 ms), not {}",
                journal.group_commit_adaptive_max_us
            ));
        }
        if journal.group_bytes_max < 4096 || journal.group_bytes_max > journal.buffer_bytes_max {
            return Err(format!(
                "journal.group_bytes_max must be between 4096 and journal.buffer_bytes_max ({}), not {}",
                journal.buffer_bytes_max, journal.group_bytes_max
            ));
        }
        if journal.snapshots_kept == 0 {
            return Err("journal.snapshots_kept must be at least 1".into());
        }
        if journal.durability == "interval" && journal.fsync_interval_ms == 0 {
            return Err(
                "journal.fsync_interval_ms must be at least 1 with durability interval".into(),
            );
        }
        self.validate_bounds_outside_review()
    }

    /// `[cluster]` (R-HA-1): its keys' bounds (always, so print-config refuses what a
    /// member would), and, when enabled, what would make this member disagree with
    /// its group or with itself.
    fn validate_cluster(&self) -> Result<(), String> {
        let cluster = &self.cluster;
        cluster.validate().map_err(|e| e.to_string())?;
        if !cluster.enabled {
            return Ok(());
        }
        let raft: std::net::SocketAddr = cluster.raft_listen.parse().map_err(|_| {
            format!(
                "cluster.raft_listen must be host:port, not {}",
                echo(&cluster.raft_listen)
            )
        })?;
        for (key, addr) in [
            ("network.listen", self.network.listen),
            ("metrics.listen", self.metrics.listen),
        ] {
            if raft == addr && addr.port() != 0 {
                return Err(format!(
                    "cluster.raft_listen must differ from {key} ({addr}): the member RPC \
                     listener needs its own port, not {raft}"
                ));
            }
        }
        if self.market.genesis_ms == 0 {
            return Err(
                "market.genesis_ms must be set (Unix ms) with cluster.enabled, the same on \
                 every member: 0 means \"now\", each member's own, not 0"
                    .into(),
            );
        }
        Ok(())
    }

    /// What `run` refused only once it was starting (after creating the data
    /// directory, or never: print-config accepted them), checked here so that
    /// print-config and `run` refuse the same values before anything is touched:
    /// a malformed `identity.router_key_hex`, and byte counts past any machine.
    fn validate_bounds_outside_review(&self) -> Result<(), String> {
        let key_hex = &self.identity.router_key_hex;
        if !key_hex.is_empty() {
            yellowstone_wire::SigningKey::from_hex(key_hex).map_err(|e| {
                format!(
                    "identity.router_key_hex: {e} ({} characters given; the secret is not \
                     echoed)",
                    key_hex.len()
                )
            })?;
        }
        let journal = &self.journal;
        for (key, value, limit, what) in [
            (
                "journal.segment_bytes_max",
                journal.segment_bytes_max,
                JOURNAL_SEGMENT_BYTES_LIMIT,
                "1 TiB",
            ),
            (
                "journal.buffer_bytes_max",
                journal.buffer_bytes_max,
                JOURNAL_MEMORY_BYTES_LIMIT,
                "64 GiB of memory",
            ),
            (
                "journal.snapshot_replica_queue_bytes_max",
                journal.snapshot_replica_queue_bytes_max,
                JOURNAL_MEMORY_BYTES_LIMIT,
                "64 GiB of memory",
            ),
        ] {
            if value > limit {
                return Err(format!(
                    "{key} must be at most {limit} ({what}), not {value}"
                ));
            }
        }
        Ok(())
    }
}

/// The engine's refusal of a `[market]` value (`MarketConfig::validate`, whose
/// reasons start with the engine's field name), with the router's key and the value
/// given: "market.sessions_open_max = 4294967295: sessions_open_max must fit the slot
/// bits (at most 16777215)" rather than the reason alone.
fn market_refusal(market: &MarketSection, reason: &str) -> String {
    let field = reason.split_whitespace().next().unwrap_or("");
    // The router's keys in MOR for the engine's fields in wei.
    let key = match field {
        "mor_supply_wei" => "mor_supply_mor",
        "compute_budget_wei_per_day" => "compute_budget_mor_per_day",
        other => other,
    };
    let bound = match key {
        // The engine's slot-bits reason names no number (its other bounds do).
        "sessions_open_max" | "rfcs_open_max" if reason.ends_with("slot bits") => {
            format!(" (at most {})", yellowstone_engine::types::SLOT_MASK)
        }
        _ => String::new(),
    };
    let value = serde_json::to_value(market)
        .ok()
        .and_then(|section| section.get(key).cloned())
        .filter(|value| !value.is_array() && !value.is_object());
    match value {
        Some(value) => format!("market.{key} = {value}: {reason}{bound}"),
        None => format!("market: {reason}{bound}"),
    }
}

/// The wei and balance-snapshot parsers every tool shares (issue 26 item 4): defined
/// in `yellowstone_wire` (`amount`, `balances`), so that `yellowstone-ctl` need not
/// link the router.
pub use yellowstone_wire::amount::parse_wei;
pub use yellowstone_wire::balances::{parse_balance_snapshot, BalanceSnapshotError};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_chain_1_settlement_keys_reach_the_market_and_bad_ones_are_named() {
        let config = RouterConfig::from_toml(
            "[market]\nsettlement_epoch_blocks = 1\nsettlement_chain_id = 31337\n\
             settlement_contract = \"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\"\n",
        )
        .unwrap();
        let market = config.market_config(5).unwrap();
        assert_eq!(market.settlement_epoch_blocks, 1);
        assert_eq!(market.settlement_chain_id, 31_337);
        assert_eq!(market.settlement_contract.0[0], 0x5a);
        assert_eq!(
            RouterConfig::default()
                .market_config(5)
                .unwrap()
                .settlement_epoch_blocks,
            300
        );
        for (toml, key) in [
            (
                "[market]\nsettlement_epoch_blocks = 7\n",
                "settlement_epoch_blocks",
            ),
            (
                "[market]\nsettlement_contract = \"0x12\"\n",
                "market.settlement_contract",
            ),
            (
                "[market]\nsettlements_kept_max = 0\n",
                "settlements_kept_max",
            ),
        ] {
            let error = RouterConfig::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(error.contains(key), "{toml}: {error}");
        }
    }

    #[test]
    fn empty_toml_gives_defaults_that_validate() {
        let config = RouterConfig::from_toml("").unwrap();
        assert_eq!(config, RouterConfig::default());
        config.validate().unwrap();
        let market = config.market_config(5).unwrap();
        assert_eq!(market.models.len(), DEMO_MODELS.len());
        assert_eq!(market.mor_supply_wei, 10_000_000 * WEI_PER_MOR);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let error = RouterConfig::from_toml("[market]\nrfc_queue_depth = 3\n").unwrap_err();
        assert!(error.contains("rfc_queue_depth"), "{error}");
        let config = RouterConfig::from_toml("[market]\nfail_policy = \"sometimes\"\n").unwrap();
        assert!(config.validate().unwrap_err().contains("fail_policy"));
        let config = RouterConfig::from_toml("[journal]\ndurability = \"maybe\"\n").unwrap();
        assert!(config.validate().unwrap_err().contains("durability"));
        for (toml, key) in [
            ("[threads]\nticket_signing = \"signer\"\n", "ticket_signing"),
            ("[journal]\ngroup_commit_us = 1000000\n", "group_commit_us"),
            ("[journal]\nio = \"async\"\n", "journal.io"),
            (
                "[journal]\npreallocate_bytes = 300000000\n",
                "preallocate_bytes",
            ),
            ("[journal]\ngroup_bytes_max = 100\n", "group_bytes_max"),
            (
                "[journal]\ngroup_commit_adaptive_max_us = 100001\n",
                "group_commit_adaptive_max_us",
            ),
            (
                "[journal]\nsnapshot_write_chunk_bytes = 1073741825\n",
                "snapshot_write_chunk_bytes",
            ),
        ] {
            let config = RouterConfig::from_toml(toml).unwrap();
            assert!(config.validate().unwrap_err().contains(key), "{toml}");
        }
    }

    #[test]
    fn models_help_names_every_key_and_the_demo_catalog() {
        let help = models_help(&[]);
        for needle in [
            "[[market.models]]",
            "weights_hash",
            "name",
            "id = 4",
            "demo-model-1",
        ] {
            assert!(help.contains(needle), "{needle}: {help}");
        }
        assert!(help.lines().all(|l| l.is_empty() || l.starts_with('#')));
        let configured = models_help(&[ModelEntry {
            id: 9,
            weights_hash: "00".repeat(32),
            name: "m".into(),
        }]);
        assert!(!configured.contains("demo-model-1"), "{configured}");
    }

    #[test]
    fn print_config_output_reads_back_as_the_same_config() {
        let mut config = RouterConfig::default();
        let text = toml::to_string_pretty(&config).expect("every key serializes");
        assert_eq!(RouterConfig::from_toml(&text).unwrap(), config);
        // Wei amounts above TOML's i64 go as strings and come back whole.
        config.market.token_price_wei_per_1000 = u128::from(u64::MAX) * 3;
        let text = toml::to_string_pretty(&config).unwrap();
        assert_eq!(RouterConfig::from_toml(&text).unwrap(), config);
        let error =
            RouterConfig::from_toml("[market]\ntoken_price_wei_per_1000 = -5\n").unwrap_err();
        assert!(error.contains("negative"), "{error}");
        let error =
            RouterConfig::from_toml("[market]\ntoken_price_wei_per_1000 = \"12x\"\n").unwrap_err();
        assert!(error.contains("wei amount"), "{error}");
    }

    #[test]
    fn r_node_2_model_names_default_and_are_checked() {
        let config = RouterConfig::default();
        assert_eq!(config.model_names()[&3], "demo-model-3");
        let hash = "00".repeat(32);
        let text = format!(
            "[[market.models]]\nid = 5\nweights_hash = \"{hash}\"\nname = \"llama\"\n\
             [[market.models]]\nid = 6\nweights_hash = \"{hash}\"\n"
        );
        let config = RouterConfig::from_toml(&text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.model_names()[&5], "llama");
        assert_eq!(config.model_names()[&6], "model-6");
        let text = toml::to_string_pretty(&config).unwrap();
        assert_eq!(RouterConfig::from_toml(&text).unwrap(), config);
        let duplicate = format!(
            "[[market.models]]\nid = 5\nweights_hash = \"{hash}\"\nname = \"m\"\n\
             [[market.models]]\nid = 6\nweights_hash = \"{hash}\"\nname = \"m\"\n"
        );
        let error = RouterConfig::from_toml(&duplicate)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(error.contains("unique"), "{error}");
        let long = format!(
            "[[market.models]]\nid = 5\nweights_hash = \"{hash}\"\nname = \"{}\"\n",
            "n".repeat(129)
        );
        let error = RouterConfig::from_toml(&long)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(error.contains("at most 128"), "{error}");
    }

    #[test]
    fn balance_snapshot_format() {
        let text = "# address,balance_wei\n0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed, 5000000000000000000\n\n";
        let entries = parse_balance_snapshot(text).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].1, 5 * WEI_PER_MOR);
        assert!(parse_balance_snapshot("0x12,5")
            .unwrap_err()
            .to_string()
            .starts_with("line 1"));
    }

    #[test]
    fn balance_snapshot_refuses_duplicates_and_names_the_u128_bound() {
        let a = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
        let error = parse_balance_snapshot(&format!("{a},1\n# c\n{}, 2\n", a.to_lowercase()))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("line 3") && error.contains("line 1"),
            "{error}"
        );
        let error =
            parse_balance_snapshot(&format!("{a},340282366920938463463374607431768211456\n"))
                .unwrap_err()
                .to_string();
        assert!(error.contains("above the maximum"), "{error}");
        assert_eq!(
            parse_balance_snapshot(&format!("{a},340282366920938463463374607431768211455\n"))
                .unwrap()[0]
                .1,
            u128::MAX
        );
        assert!(parse_wei("5e18")
            .unwrap_err()
            .to_string()
            .contains("not a whole number"));
    }
}
