//! R-NODE-2: the market's catalog as the engine sees it, for the router's catalog
//! query: every model with its best live bid. Read-only; it never changes state.

use crate::engine::Engine;
use crate::types::{ModelId, Unit};

/// One model of the catalog and the offers that could take a session now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The model's id.
    pub model: ModelId,
    /// What its output is counted in (SPEC section 8: tokens).
    pub unit: Unit,
    /// BLAKE3 of the weights every provider of the model must present (R-PROV-1).
    pub weights_hash: [u8; 32],
    /// The lowest price per token (MOR wei) among live offers, `None` when no offer
    /// could take a session now (R-MATCH-1: full, suspended, unreachable and
    /// unfunded offers are out of the book).
    pub best_price_wei_per_token: Option<u128>,
    /// How many offers could take a session now.
    pub offers_live: u32,
}

impl Engine {
    /// The catalog in the configuration's model order, with the best live bid per
    /// model (the head of its book). Costs one step per model.
    pub fn catalog(&self) -> Vec<CatalogEntry> {
        self.state
            .models
            .iter()
            .map(|model| {
                let best = model.book.first_key_value().map(|((price, _), _)| *price);
                debug_assert!(
                    best.is_some() != model.book.is_empty(),
                    "a book has a head exactly when it holds an offer"
                );
                CatalogEntry {
                    model: model.spec.id,
                    unit: model.spec.unit,
                    weights_hash: model.spec.weights_hash,
                    best_price_wei_per_token: best,
                    offers_live: u32::try_from(model.book.len()).unwrap_or(u32::MAX),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::command::{Command, OfferSpec};
    use crate::config::{MarketConfig, ModelSpec};
    use crate::types::{Address, Unit, WEI_PER_MOR};
    use crate::Engine;

    fn spec(id: u32) -> ModelSpec {
        ModelSpec {
            id,
            weights_hash: [id as u8; 32],
            unit: Unit::Token,
        }
    }

    fn offer(model: u32, price: u128) -> OfferSpec {
        OfferSpec {
            model,
            unit: 0,
            weights_hash: [model as u8; 32],
            price_wei_per_token: price,
            capacity: 1,
        }
    }

    #[test]
    fn r_node_2_catalog_lists_every_model_with_its_best_live_bid() {
        let operator = Address([0xEE; 20]);
        let mut engine = Engine::new(MarketConfig {
            operator,
            models: vec![spec(1), spec(2)],
            ..MarketConfig::default()
        });
        let mut effects = Vec::new();
        let catalog = engine.catalog();
        assert_eq!(catalog.len(), 2);
        assert!(catalog
            .iter()
            .all(|e| e.best_price_wei_per_token.is_none() && e.offers_live == 0));
        let (cheap, dear, unfunded) = (Address([1; 20]), Address([2; 20]), Address([3; 20]));
        engine.apply(
            &Command::SetBalances {
                operator,
                nonce: 1,
                entries: vec![(cheap, WEI_PER_MOR), (dear, WEI_PER_MOR)],
            },
            1,
            &mut effects,
        );
        for (nonce, (provider, price)) in [(cheap, 5), (dear, 9), (unfunded, 1)]
            .into_iter()
            .enumerate()
        {
            engine.apply(
                &Command::RegisterProvider {
                    provider,
                    nonce: nonce as u64 + 1,
                    endpoint: b"127.0.0.1:1".to_vec(),
                    offers: vec![offer(1, price)],
                },
                2,
                &mut effects,
            );
        }
        let catalog = engine.catalog();
        assert_eq!(catalog[0].model, 1);
        // The unfunded provider's lower bid is not live (R-PROV-2).
        assert_eq!(catalog[0].best_price_wei_per_token, Some(5));
        assert_eq!(catalog[0].offers_live, 2);
        assert_eq!(catalog[0].weights_hash, [1; 32]);
        assert_eq!(catalog[1].best_price_wei_per_token, None);
        engine.apply(
            &Command::ProviderDisconnected { provider: cheap },
            3,
            &mut effects,
        );
        assert_eq!(engine.catalog()[0].best_price_wei_per_token, Some(9));
        assert_eq!(engine.catalog()[0].offers_live, 1);
    }
}
