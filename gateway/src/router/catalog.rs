//! R-NODE-2: the catalog query. The engine thread publishes the market's catalog
//! (every model, its name from `[market.models]`, and its best live bid, from
//! `Engine::catalog`) after its bursts, at most once per `CATALOG_REFRESH_MS` of
//! engine time and at least once per engine tick; gateway threads answer
//! `CatalogQuery` from the last publication without a trip to the engine, so queries
//! never load the single writer nor enter the journal (they change nothing). An
//! answer lags the engine by at most one tick plus the refresh period.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use yellowstone_engine::Engine;
use yellowstone_wire::messages::{Catalog, CatalogModel, MODEL_NAME_BYTES_MAX};
use yellowstone_wire::Message;

/// Engine milliseconds between two publications under steady load.
pub const CATALOG_REFRESH_MS: u64 = 20;

#[derive(Default)]
struct Published {
    as_of_ms: u64,
    models: Vec<CatalogModel>,
}

pub struct CatalogBoard {
    /// Model id -> name, from the configuration (bounded by `MODEL_NAME_BYTES_MAX`).
    names: HashMap<u32, String>,
    published: RwLock<Arc<Published>>,
}

impl CatalogBoard {
    /// `names`: the configured name of each model; a model without one is listed
    /// under `model-<id>`.
    pub fn new(names: HashMap<u32, String>) -> CatalogBoard {
        assert!(
            names.values().all(|n| n.len() <= MODEL_NAME_BYTES_MAX),
            "model names are validated with the configuration"
        );
        CatalogBoard {
            names,
            published: RwLock::new(Arc::default()),
        }
    }

    /// Called on the engine thread after a burst: publishes the catalog if the last
    /// publication is older than `CATALOG_REFRESH_MS` of engine time (or never was).
    pub fn publish_if_due(&self, engine: &Engine) {
        let now_ms = engine.now_ms();
        let last = self.read().as_of_ms;
        if last != 0 && now_ms < last.saturating_add(CATALOG_REFRESH_MS) {
            return;
        }
        let models = engine
            .catalog()
            .into_iter()
            .map(|entry| CatalogModel {
                model_id: entry.model,
                unit: entry.unit as u8,
                weights_hash: entry.weights_hash,
                best_price_wei_per_token: entry.best_price_wei_per_token.unwrap_or(0),
                offers_live: entry.offers_live,
                name: self
                    .names
                    .get(&entry.model)
                    .cloned()
                    .unwrap_or_else(|| format!("model-{}", entry.model)),
            })
            .collect();
        let published = Arc::new(Published {
            as_of_ms: now_ms.max(1),
            models,
        });
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = published;
    }

    fn read(&self) -> Arc<Published> {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The answer to a `CatalogQuery`.
    pub fn answer(&self, query_id: u64) -> Message {
        let published = self.read();
        Catalog {
            query_id,
            as_of_ms: published.as_of_ms,
            models: published.models.clone(),
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yellowstone_engine::{MarketConfig, ModelSpec, Unit};

    #[test]
    fn r_node_2_names_come_from_the_config_and_prices_from_the_engine() {
        let config = MarketConfig {
            models: vec![
                ModelSpec {
                    id: 7,
                    weights_hash: [7; 32],
                    unit: Unit::Token,
                },
                ModelSpec {
                    id: 8,
                    weights_hash: [8; 32],
                    unit: Unit::Token,
                },
            ],
            ..MarketConfig::default()
        };
        let mut engine = Engine::new(config);
        engine.apply(&yellowstone_engine::Command::Tick, 5_000, &mut Vec::new());
        let board = CatalogBoard::new(HashMap::from([(7, "llama".to_string())]));
        board.publish_if_due(&engine);
        let Message::Catalog(catalog) = board.answer(42) else {
            panic!("a catalog answers a catalog query")
        };
        assert_eq!(catalog.query_id, 42);
        assert_eq!(catalog.as_of_ms, 5_000);
        assert_eq!(catalog.models.len(), 2);
        assert_eq!(catalog.models[0].name, "llama");
        assert_eq!(catalog.models[1].name, "model-8");
        assert_eq!(catalog.models[1].weights_hash, [8; 32]);
        assert_eq!(catalog.models[0].best_price_wei_per_token, 0);
    }
}
