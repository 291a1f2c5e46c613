//! yellowstone-engine: the Yellowstone market as a pure, deterministic state machine
//! (SPEC.md sections 4 to 7). No IO, no threads, no clock, no randomness: time and
//! balances are inputs, so the same commands give the same effects and state hash.
//!
//! ```
//! use yellowstone_engine::{Command, Engine, MarketConfig};
//! let mut engine = Engine::new(MarketConfig::default());
//! let mut effects = Vec::new();
//! engine.apply(&Command::Tick, 12_000, &mut effects); // seals block 0
//! assert_eq!(engine.block(), 1);
//! ```
//!
//! - `Engine::apply(&Command, now_ms, &mut Vec<Effect>)`: the only way state changes.
//! - `Engine::apply_batch(&[(Command, now_ms)], ..)`: the same for a burst, one by one,
//!   with the originators' accounts brought into the cache ahead (`Engine::warm`).
//! - `Engine::snapshot` / `Engine::restore` / `Engine::state_hash`: bincode state.
//! - `Engine::check_invariants`: solvency, capacity, quota, book consistency, no
//!   self-match (R-MATCH-7), unfunded registrations and bootstrap slots within their
//!   bounds (R-PROV-2, R-CONTRACT-4).
//! - `ledger::Ledger`: the Compute Contract, usable on its own.
//! - `merkle`: the receipt leaf and tree rules of the credit batch's root.
//! - `index`: the address -> account index (insert-only; a slot can be read ahead).
//! - `settlement`: the per-epoch settlement with the on-chain Compute Contract and its
//!   keccak Merkle tree over (provider, cumulative credited) (R-CHAIN-1).
#![warn(missing_docs, unreachable_pub)]

mod blocks;
pub mod catalog;
pub mod command;
pub mod config;
mod engine;
pub mod error;
pub mod figures;
mod flow;
pub mod index;
mod invariants;
pub mod ledger;
pub mod merkle;
pub mod money;
mod operator;
mod owners;
mod provider;
pub mod quota;
pub mod settlement;
mod slab;
pub mod speed;
pub mod state;
pub mod timer;
pub mod totals;
pub mod types;
pub mod unfunded;
pub mod workload;

pub use catalog::CatalogEntry;
pub use command::{
    BatchApplied, Command, CreditBatch, CreditReason, Effect, OfferSpec, ParamId, ParamKind,
    ProviderTotals, ReportOutcome, RfcFailure, Ticket,
};
pub use config::{BudgetPolicy, FailPolicy, MarketConfig, ModelSpec, UnusedBudget};
pub use engine::{Applied, Engine, RestoreError, APPLY_BATCH_GROUP};
pub use error::{CreditSum, Limit, MarketError, NONCE_GAP_MAX};
pub use figures::{MarketFigures, ModelFigures, ModelProviders};
pub use types::{
    Address, ModelId, ProbeId, RfcId, SessionId, Unit, BLOCKS_PER_DAY, BLOCK_MS, WEI_PER_MOR,
};
