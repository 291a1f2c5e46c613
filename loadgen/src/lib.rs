//! yellowstone-loadgen: simulated users and providers over the real protocol.
//!
//! - `rate`: the open-loop schedule (wrk2 style, coordinated-omission corrected).
//! - `latency`: HdrHistogram recorders and the percentile spectrum.
//! - `report`: the text report, the `--json` summary and the self-check verdict.
//! - `plot`: the `--plot` SVG of the latency spectrum.
//! - `ping`: the ping mode (`--ping-connections`), the router's network path alone.

pub mod latency;
pub mod ping;
pub mod plot;
pub mod rate;
pub mod report;
pub mod sim;
