//! yellowstone-loadgen: simulated users and providers over the real protocol.
//!
//! - `rate`: the open-loop schedule (wrk2 style, coordinated-omission corrected).
//! - `latency`: HdrHistogram recorders and the percentile spectrum.
//! - `report`: the text report, the `--json` summary and the self-check verdict.
//! - `plot`: the `--plot` SVG of the latency spectrum.
//! - `ping`: the ping mode (`--ping-connections`), the router's network path alone.
//! - `frames`: every message the load generator signs, built in one place.
//! - `embedded`: the router started inside the process for a run.
//! - `attack`: the hostile scenarios (`--scenario attacks`, issue 27) and their report.

pub mod attack;
pub mod embedded;
pub mod frames;
pub mod latency;
pub mod ping;
pub mod plot;
pub mod rate;
pub mod report;
pub mod sim;
