//! The market's figures on the gateway side (R-OPS-3): the engine computes them
//! (`Engine::market_figures`, pure) on the engine thread between bursts and publishes
//! them here; gateway threads read them without a lock (`arc_swap`) to answer
//! `MarketStateQuery`, and the metrics exposition renders them as Prometheus series.
//!
//! Freshness: a new snapshot is published when the block, the operator's last nonce
//! (every balance or parameter update, accepted or refused), the ledger's paid or
//! credited totals changed, or `FIGURES_INTERVAL_MS` of engine time passed (queue
//! depths). Publishing costs O(models); the per-model provider figures (live,
//! suspended, best bid) come from a pass over every offer, rerun when
//! `FIGURES_INTERVAL_MS` passed and at most at `1/PROVIDER_PASS_SHARE_INVERSE` of the
//! engine thread's time (measured), so a huge market sees them a little later rather
//! than the engine thread slowing down. The sequencer publishes before it releases the burst's
//! replies, so an operator's `Ack` or a provider's `ClaimAck` never arrives before
//! the figures that reflect it. Figures may include commands whose journal records are
//! not yet durable (as the other engine gauges do).

use crate::metrics::Registry;
use arc_swap::ArcSwap;
use std::fmt::Write as _;
use std::sync::Arc;
use yellowstone_engine::{
    Address as EngineAddress, Engine, MarketFigures, ModelProviders, ParamId,
};
use yellowstone_wire::messages::{MarketModel, MarketState, ParamEntry};

/// Republish at least this often (engine time, ms) while nothing the operator or
/// the ledger did forces it sooner. Bounds the engine thread's cost of figures to
/// one O(models + providers × offers) pass per interval.
pub const FIGURES_INTERVAL_MS: u64 = 100;

/// The latest published figures; cheap to read from any thread.
pub struct MarketBoard {
    figures: ArcSwap<MarketFigures>,
}

impl MarketBoard {
    pub fn new(figures: MarketFigures) -> MarketBoard {
        MarketBoard {
            figures: ArcSwap::from_pointee(figures),
        }
    }

    pub fn load(&self) -> Arc<MarketFigures> {
        self.figures.load_full()
    }

    pub fn publish(&self, figures: MarketFigures) {
        self.figures.store(Arc::new(figures));
    }

    /// Registers the figures' Prometheus series with `registry` (rendered at scrape).
    pub fn register_metrics(self: &Arc<Self>, registry: &Registry) {
        let board = self.clone();
        registry.add_exposition(Arc::new(move |out: &mut String| {
            render_prometheus(&board.load(), out)
        }));
    }
}

/// Decides, after each engine burst, whether to publish new figures.
pub struct FiguresPublisher {
    board: Arc<MarketBoard>,
    operator: Option<EngineAddress>,
    published_ms: u64,
    published_key: PublishKey,
    /// The last pass over the providers, reused until it is due again.
    providers: Vec<ModelProviders>,
    providers_ms: u64,
    providers_interval_ms: u64,
}

/// The provider pass may take at most 1/this of the engine thread's time: its
/// interval is at least this many times what the last pass took.
pub const PROVIDER_PASS_SHARE_INVERSE: u64 = 50;

/// What forces a publication at once when it changes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct PublishKey {
    block: u64,
    operator_nonce: Option<u64>,
    paid_wei: u128,
    credited_wei: u128,
}

impl PublishKey {
    fn of(engine: &Engine, operator: Option<EngineAddress>) -> PublishKey {
        PublishKey {
            block: engine.block(),
            operator_nonce: operator.and_then(|o| engine.nonce_last(&o)),
            paid_wei: engine.ledger().paid_wei,
            credited_wei: engine.ledger().credited_total_wei,
        }
    }
}

impl FiguresPublisher {
    /// Starts from `engine` (published at once).
    pub fn new(
        board: Arc<MarketBoard>,
        engine: &Engine,
        operator: Option<EngineAddress>,
    ) -> FiguresPublisher {
        let mut publisher = FiguresPublisher {
            board,
            operator,
            published_ms: 0,
            published_key: PublishKey::of(engine, operator),
            providers: Vec::new(),
            providers_ms: 0,
            providers_interval_ms: FIGURES_INTERVAL_MS,
        };
        publisher.refresh_providers(engine);
        publisher.publish(engine);
        publisher
    }

    /// Publishes if something forcing changed or the interval passed. Returns
    /// whether it published.
    pub fn observe(&mut self, engine: &Engine) -> bool {
        let key = PublishKey::of(engine, self.operator);
        let now = engine.now_ms();
        let due = now >= self.published_ms.saturating_add(FIGURES_INTERVAL_MS);
        if key == self.published_key && !due {
            return false;
        }
        if now >= self.providers_ms.saturating_add(self.providers_interval_ms) {
            self.refresh_providers(engine);
        }
        self.published_key = key;
        self.publish(engine);
        true
    }

    /// The O(providers × offers) pass, timed: its next run waits at least
    /// `PROVIDER_PASS_SHARE_INVERSE` times as long as it took (at 100,000 providers
    /// with 10 offers each, ~34 ms: every ~1.7 s instead of every 100 ms).
    fn refresh_providers(&mut self, engine: &Engine) {
        let started = std::time::Instant::now();
        self.providers = engine.provider_figures();
        let cost_ms = started.elapsed().as_millis() as u64;
        self.providers_ms = engine.now_ms();
        self.providers_interval_ms =
            FIGURES_INTERVAL_MS.max(cost_ms.saturating_mul(PROVIDER_PASS_SHARE_INVERSE));
    }

    fn publish(&mut self, engine: &Engine) {
        let mut figures = engine.market_figures_core();
        figures.set_providers(&self.providers);
        self.board.publish(figures);
        self.published_ms = engine.now_ms();
    }
}

/// The wire answer to a `MarketStateQuery`.
pub fn market_state(figures: &MarketFigures, query_id: u64) -> MarketState {
    MarketState {
        query_id,
        now_ms: figures.now_ms,
        block: figures.block,
        day: figures.day,
        max_tokens_per_day: figures.max_tokens_per_day,
        access_rate_tokens_per_mor: figures.access_rate_tokens_per_mor,
        budget_wei_today: figures.budget_wei_today,
        emitted_wei: figures.emitted_wei,
        paid_wei: figures.paid_wei,
        owed_wei: figures.owed_wei,
        burned_wei: figures.burned_wei,
        pool_wei: figures.pool_wei,
        credited_wei: figures.credited_wei,
        shortfall_wei: figures.shortfall_wei,
        day_cap_wei: figures.day_cap_wei,
        day_spent_wei: figures.day_spent_wei,
        batch_sealed: figures.last_batch_block.is_some(),
        last_batch_block: figures.last_batch_block.unwrap_or(0),
        last_batch_credited_wei: figures.last_batch_credited_wei,
        last_batch_shortfall_wei: figures.last_batch_shortfall_wei,
        sessions_open: figures.sessions_open,
        params: figures
            .params
            .iter()
            .map(|(param, value)| ParamEntry {
                param_id: *param as u16,
                value: *value,
            })
            .collect(),
        models: figures
            .models
            .iter()
            .map(|m| MarketModel {
                model_id: m.model,
                queue_depth: m.queue_depth,
                providers_live: m.providers_live,
                providers_suspended: m.providers_suspended,
                offers_available: m.offers_available,
                best_bid_wei_per_token: m.best_bid_wei_per_token.unwrap_or(0),
            })
            .collect(),
    }
}

/// Writes one family: HELP, TYPE and its series. Values are exact decimal integers
/// (wei amounts exceed 2^53; the text keeps every digit, a scraper parses floats).
fn family(out: &mut String, name: &str, kind: &str, help: &str, series: &[(String, u128)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in series {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The figures as Prometheus text (format 0.0.4), every name `yellowstone_market_*`.
pub fn render_prometheus(figures: &MarketFigures, out: &mut String) {
    let one = |value: u128| vec![(String::new(), value)];
    let scalars: [(&str, &str, &str, u128); 16] = [
        (
            "yellowstone_market_block",
            "gauge",
            "The open block (R-TIME-1).",
            figures.block.into(),
        ),
        (
            "yellowstone_market_day",
            "gauge",
            "The current day (7,200 blocks).",
            figures.day.into(),
        ),
        (
            "yellowstone_market_max_tokens_per_day",
            "gauge",
            "MaxT: tokens per day the day's budget buys (R-QUOTA-1).",
            figures.max_tokens_per_day,
        ),
        (
            "yellowstone_market_access_rate_tokens_per_mor",
            "gauge",
            "Tokens per day per whole MOR held (R-QUOTA-2).",
            figures.access_rate_tokens_per_mor,
        ),
        (
            "yellowstone_market_budget_wei_today",
            "gauge",
            "The compute budget B in force today, MOR wei (R-CONTRACT-5).",
            figures.budget_wei_today,
        ),
        (
            "yellowstone_market_pool_wei",
            "gauge",
            "Compute Contract pool: received, neither paid, owed nor burned, MOR wei.",
            figures.pool_wei,
        ),
        (
            "yellowstone_market_owed_wei",
            "gauge",
            "Owed to providers, not yet claimed, MOR wei.",
            figures.owed_wei,
        ),
        (
            "yellowstone_market_emitted_wei_total",
            "counter",
            "Compute emission received by the contract since genesis, MOR wei.",
            figures.emitted_wei,
        ),
        (
            "yellowstone_market_paid_wei_total",
            "counter",
            "Paid to providers on claim since genesis, MOR wei.",
            figures.paid_wei,
        ),
        (
            "yellowstone_market_burned_wei_total",
            "counter",
            "Unused budget burned since genesis, MOR wei (R-CONTRACT-3).",
            figures.burned_wei,
        ),
        (
            "yellowstone_market_credited_wei_total",
            "counter",
            "Credited by the ledger since genesis, MOR wei.",
            figures.credited_wei,
        ),
        (
            "yellowstone_market_shortfall_wei_total",
            "counter",
            "Earned but not credited under the daily cap since genesis, MOR wei (R-CONTRACT-2).",
            figures.shortfall_wei,
        ),
        (
            "yellowstone_market_day_cap_wei",
            "gauge",
            "Today's spend cap, MOR wei (R-CONTRACT-2).",
            figures.day_cap_wei,
        ),
        (
            "yellowstone_market_day_spent_wei",
            "gauge",
            "Credited today, MOR wei.",
            figures.day_spent_wei,
        ),
        (
            "yellowstone_market_block_credited_wei",
            "gauge",
            "Credited by the last sealed block's batch, MOR wei.",
            figures.last_batch_credited_wei,
        ),
        (
            "yellowstone_market_block_shortfall_wei",
            "gauge",
            "Shortfall of the last sealed block's batch, MOR wei.",
            figures.last_batch_shortfall_wei,
        ),
    ];
    for (name, kind, help, value) in scalars {
        family(out, name, kind, help, &one(value));
    }
    if let Some(block) = figures.last_batch_block {
        family(
            out,
            "yellowstone_market_last_batch_block",
            "gauge",
            "The last sealed block (its batch is the block_* figures).",
            &one(block.into()),
        );
    }
    family(
        out,
        "yellowstone_market_sessions_open",
        "gauge",
        "Sessions open now.",
        &one(figures.sessions_open.into()),
    );
    family(
        out,
        "yellowstone_market_providers",
        "gauge",
        "Providers holding a place (market.providers_max bounds them, R-PROV-2).",
        &one(figures.providers.into()),
    );
    family(
        out,
        "yellowstone_market_unfunded_registrations",
        "gauge",
        "Registrations from addresses without MOR kept apart \
         (market.unfunded_registrations_max bounds them, R-PROV-2).",
        &one(figures.unfunded_registrations.into()),
    );
    let per_model = |value: &dyn Fn(&yellowstone_engine::ModelFigures) -> Option<u128>| {
        figures
            .models
            .iter()
            .filter_map(|m| value(m).map(|v| (format!("{{model=\"{}\"}}", m.model), v)))
            .collect::<Vec<_>>()
    };
    family(
        out,
        "yellowstone_market_queue_depth",
        "gauge",
        "RFCs queued, per model (R-RFC-2).",
        &per_model(&|m| Some(m.queue_depth.into())),
    );
    family(
        out,
        "yellowstone_market_providers_live",
        "gauge",
        "Providers with an active offer, reachable, not suspended and funded, per model.",
        &per_model(&|m| Some(m.providers_live.into())),
    );
    family(
        out,
        "yellowstone_market_providers_suspended",
        "gauge",
        "Providers with an active offer, suspended now, per model (R-PERF-4).",
        &per_model(&|m| Some(m.providers_suspended.into())),
    );
    family(
        out,
        "yellowstone_market_offers_available",
        "gauge",
        "Offers with a free session slot now, per model.",
        &per_model(&|m| Some(m.offers_available.into())),
    );
    family(
        out,
        "yellowstone_market_best_bid_wei_per_token",
        "gauge",
        "Lowest live bid per model, MOR wei per token (absent: no live provider).",
        &per_model(&|m| m.best_bid_wei_per_token),
    );
    let params: Vec<(String, u128)> = figures
        .params
        .iter()
        .map(|(param, value)| (format!("{{name=\"{}\"}}", param.name()), *value))
        .collect();
    family(out, "yellowstone_market_param", "gauge", "Run-time parameters in force, by name (choices as their index; see yellowstone-ctl params list).", &params);
    debug_assert!(figures.params.len() == ParamId::ALL.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use yellowstone_engine::{MarketConfig, ModelSpec, Unit};

    fn engine() -> Engine {
        Engine::new(MarketConfig {
            genesis_ms: 1_000,
            operator: EngineAddress([9; 20]),
            models: vec![ModelSpec {
                id: 3,
                weights_hash: [3; 32],
                unit: Unit::Token,
            }],
            ..MarketConfig::default()
        })
    }

    #[test]
    fn r_ops_3_exposition_has_every_figure_with_exact_values() {
        let engine = engine();
        let mut out = String::new();
        render_prometheus(&engine.market_figures(), &mut out);
        assert!(
            out.contains("yellowstone_market_max_tokens_per_day 30000000000\n"),
            "{out}"
        );
        assert!(out.contains("yellowstone_market_access_rate_tokens_per_mor 3000\n"));
        assert!(out.contains("yellowstone_market_emitted_wei_total 3456000000000000000000\n"));
        assert!(out.contains("yellowstone_market_queue_depth{model=\"3\"} 0\n"));
        assert!(out.contains("yellowstone_market_param{name=\"fail_policy\"} 0\n"));
        assert!(
            !out.contains("best_bid_wei_per_token{"),
            "no live provider, no bid"
        );
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<u128>().is_ok(), "{line}");
        }
    }

    #[test]
    fn r_ops_3_publisher_publishes_on_operator_change_or_interval_only() {
        let mut engine = engine();
        let board = Arc::new(MarketBoard::new(MarketFigures::default()));
        let operator = EngineAddress([9; 20]);
        let mut publisher = FiguresPublisher::new(board.clone(), &engine, Some(operator));
        assert_eq!(board.load().max_tokens_per_day, 30_000_000_000);
        let mut effects = Vec::new();
        engine.apply(&yellowstone_engine::Command::Tick, 1_010, &mut effects);
        assert!(
            !publisher.observe(&engine),
            "nothing forcing, interval not passed"
        );
        let budget = ParamId::ComputeBudgetWeiPerDay as u16;
        engine.apply(
            &yellowstone_engine::Command::SetParams {
                operator,
                nonce: 1,
                params: vec![(budget, 1_500 * yellowstone_engine::WEI_PER_MOR)],
            },
            1_020,
            &mut effects,
        );
        assert!(
            publisher.observe(&engine),
            "an operator command publishes at once"
        );
        assert_eq!(board.load().max_tokens_per_day, 15_000_000_000);
        engine.apply(
            &yellowstone_engine::Command::Tick,
            1_020 + FIGURES_INTERVAL_MS,
            &mut effects,
        );
        assert!(publisher.observe(&engine), "the interval passed");
        let state = market_state(&board.load(), 5);
        assert_eq!(state.query_id, 5);
        assert_eq!(state.models[0].model_id, 3);
        assert!(!state.batch_sealed);

        // A funded provider registers: the ledger-side figures follow every forced
        // publication, its provider figures once the provider pass is due again.
        let provider = EngineAddress([1; 20]);
        engine.apply(
            &yellowstone_engine::Command::SetBalances {
                operator,
                nonce: 2,
                entries: vec![(provider, 1)],
            },
            1_130,
            &mut effects,
        );
        engine.apply(
            &yellowstone_engine::Command::RegisterProvider {
                provider,
                nonce: 1,
                endpoint: b"h:1".to_vec(),
                offers: vec![yellowstone_engine::OfferSpec {
                    model: 3,
                    unit: 0,
                    weights_hash: [3; 32],
                    price_wei_per_token: 9,
                    capacity: 1,
                }],
            },
            1_130,
            &mut effects,
        );
        assert!(publisher.observe(&engine), "an operator command");
        let figures = board.load();
        assert_eq!(figures.models[0].offers_available, 1, "core: at once");
        assert_eq!(figures.models[0].providers_live, 0, "provider pass not due");
        engine.apply(
            &yellowstone_engine::Command::Tick,
            1_120 + 2 * FIGURES_INTERVAL_MS,
            &mut effects,
        );
        assert!(publisher.observe(&engine));
        let figures = board.load();
        assert_eq!(figures.models[0].providers_live, 1);
        assert_eq!(figures.models[0].best_bid_wei_per_token, Some(9));
        assert_eq!(*figures, engine.market_figures(), "all figures fresh");
    }
}
