//! What the router hand-off tests share: the router's shared state, built as the
//! router builds it, with an empty market.

use std::sync::Arc;
use yellowstone_gateway::metrics::Registry;
use yellowstone_gateway::router::shared::{RouterShared, SharedParts};
use yellowstone_gateway::sequencer::SequencerInput;
use yellowstone_wire::SigningKey;

/// Network id of the hand-off tests.
pub const NETWORK_ID: u32 = 7;

/// Shared state for a router keyed by `seed`, its commands going to `inbound`.
pub fn shared(
    registry: &Registry,
    inbound: crossbeam_channel::Sender<SequencerInput>,
    seed: &[u8],
) -> Arc<RouterShared> {
    Arc::new(RouterShared::new(
        SharedParts {
            network_id: NETWORK_ID,
            router_key: SigningKey::from_seed(seed),
            operator: None,
            inbound,
            retry_after_ms: 250,
            catalog: yellowstone_gateway::router::catalog::CatalogBoard::new(Default::default()),
            market: Arc::new(yellowstone_gateway::router::market::MarketBoard::new(
                Default::default(),
            )),
            weights_proofs_per_s: 2_000,
            weights_proofs_unfunded_per_s: 256,
        },
        registry,
    ))
}
