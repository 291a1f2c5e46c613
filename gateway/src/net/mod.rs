//! Network layer: sans-IO connections driven by the io_uring and mio backends.
//!
//! Start N gateway threads with `start_gateways(network, threads, registry, |ctx| handler)`;
//! the returned `GatewayHandle` gives the `Outbox` (for the engine thread), the bound
//! address, the connection count and the shutdown.

pub mod conn_id;
pub mod connection;
mod driver;
pub mod handler;
mod mio_backend;
pub mod outbox;
pub mod server;
pub mod socket;
mod uring_backend;

pub use conn_id::ConnId;
pub use connection::{CloseReason, ConnLimits, Connection, Refusal, Standing};
pub use handler::{FrameHandler, GatewayContext, Replies};
pub use outbox::{GatewayJob, Outbox, OutboxError};
pub use server::{
    install_signal_handlers, pin_current_thread, plan_cores, start_gateways, BackendInUse,
    CorePlan, GatewayHandle, ShutdownTrigger,
};
