//! State the gateway threads and the engine thread share: the
//! router's identity, the address -> connection routes, the balance pre-check cache,
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
    /// Latest logged-in connection of each address.
    pub routes: DashMap<Address, ConnId>,
    /// Balances as last set by the operator: lets gateways refuse zero-balance RFCs
    /// without a trip to the engine (the engine checks again).
    pub balances: DashMap<Address, u128>,
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
}

impl RouterShared {
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
