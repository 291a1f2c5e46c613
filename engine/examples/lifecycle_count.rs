//! Issue 18 item 5: runs N engine session lifecycles on the benchmark market (100
//! models, 10,000 providers, 1,000,000 users) so that their instructions can be
//! counted with callgrind, which is repeatable on a noisy machine:
//!
//! ```text
//! cargo build --release -p yellowstone-engine --example lifecycle_count
//! valgrind --tool=callgrind --toggle-collect='*run_lifecycles*' \
//!     --callgrind-out-file=/tmp/cg.out target/release/examples/lifecycle_count 200000 100000
//! ```
//!
//! Arguments: `WARMUP COUNT [BURST]` (lifecycles run before the counted ones, then the
//! counted ones; both go through `run_lifecycles`, so run two COUNTs and divide the
//! difference of Ir by the difference of COUNT). Without BURST (or with 1) each command
//! goes through `Engine::apply` on its own; with BURST > 1 the lifecycles run BURST at
//! a time through `Engine::apply_batch` (BURST RFCs, then their answers, then their
//! reports: `run_lifecycles_batched`, which `--toggle-collect='*run_lifecycles*'` also
//! matches). Without valgrind it also prints the wall time and the on-CPU time.

#[path = "common/engine_market.rs"]
mod engine_market;

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let warmup: u64 = args.next().map_or(200_000, |a| a.parse().expect("WARMUP"));
    let count: u64 = args.next().map_or(1_000_000, |a| a.parse().expect("COUNT"));
    let burst: usize = args.next().map_or(1, |a| a.parse().expect("BURST"));
    assert!(burst >= 1, "BURST must be at least 1");
    let run = |market: &mut engine_market::Market, n: u64| {
        if burst == 1 {
            engine_market::run_lifecycles(market, n)
        } else {
            engine_market::run_lifecycles_batched(market, n, burst)
        }
    };
    let started = Instant::now();
    let mut market = engine_market::Market::with_users();
    let setup = started.elapsed();
    let warm = run(&mut market, warmup);
    assert_eq!(
        warm, warmup,
        "every warm-up lifecycle must complete and credit"
    );
    let (started, cpu_started) = (Instant::now(), cpu_ns());
    let ok = run(&mut market, count);
    let (elapsed, cpu) = (
        started.elapsed(),
        cpu_ns().zip(cpu_started).map(|(b, a)| b - a),
    );
    assert_eq!(ok, count, "every lifecycle must complete and credit");
    market.engine.check_invariants();
    let cpu_figure = cpu.map_or("on-CPU time unknown".to_string(), |ns| {
        format!(
            "on-CPU {:.2}s = {:.0} lifecycles/s ({:.0} ns each)",
            ns as f64 / 1e9,
            count as f64 / (ns as f64 / 1e9),
            ns as f64 / count.max(1) as f64
        )
    });
    println!(
        "setup {setup:.2?}; burst {burst}; {count} lifecycles: wall {elapsed:.2?} = {:.0} lifecycles/s ({:.0} ns each); {cpu_figure}; state hash {}",
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / count.max(1) as f64,
        market
            .engine
            .state_hash()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
}

/// This thread's time on a CPU so far, ns (Linux: /proc/thread-self/schedstat), so
/// that a figure taken on a busy machine does not count the time others ran.
fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}
