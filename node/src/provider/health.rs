//! R-PROV-4: upstream health checks. Every `upstream_health_interval_ms` the node asks
//! each distinct model server `GET {upstream_base_url}/models`; after
//! `upstream_health_failures` failed checks in a row the server is down and its models
//! are withdrawn from the market, by a re-registration that lists only the models
//! whose server is up (PROTOCOL.md: a re-registration replaces the offer list); the
//! first check that succeeds again offers them again the same way. Matching never
//! sends users to a model server that is down, so no user gets a 502 and no provider
//! a penalty point for it (issue 23 case 7).
//!
//! A busy server is not a dead one: a single-threaded server (llama-cpp-python)
//! working on one long prompt answers nothing else until it is done, so its health
//! check times out. A check that *times out* while the node has a request in flight
//! to that server, or got response bytes from it within the last
//! `upstream_health_interval_ms`, is therefore not counted (neither a failure nor a
//! success). A refused or reset connection, or any non-2xx answer (5xx included),
//! still counts: a server that answers that is not busy with our work. A server that
//! hangs with a request in flight is still withdrawn once that request gives up
//! (`upstream_timeout_ms`).

use super::Provider;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The distinct upstream base URLs of the configured models.
pub fn upstreams(provider: &Provider) -> BTreeSet<String> {
    provider
        .models
        .values()
        .map(|m| m.offer.upstream_base_url.clone())
        .collect()
}

/// R-PROV-4: what the node sees of one model server's work for it, so that a health
/// check timing out while the server is busy with the node's own requests is not
/// taken for a dead server. Shared by the HTTP handlers (writers) and the health
/// loop (reader); atomics only, no lock on the serving path.
#[derive(Debug)]
pub struct UpstreamActivity {
    /// The node's clock origin for `last_bytes_ms` (monotonic).
    epoch: Instant,
    /// Requests from this node to the server not yet wholly answered.
    in_flight: AtomicUsize,
    /// When response bytes last came from the server: ms since `epoch`, plus 1 (0:
    /// never), so that bytes in the first millisecond are not taken for "never".
    last_bytes_ms: AtomicU64,
}

impl UpstreamActivity {
    pub fn new(epoch: Instant) -> UpstreamActivity {
        UpstreamActivity {
            epoch,
            in_flight: AtomicUsize::new(0),
            last_bytes_ms: AtomicU64::new(0),
        }
    }

    /// Marks one request to the server in flight until the returned guard drops
    /// (move it into a streamed body so that it lives until the stream ends).
    pub fn call(self: &Arc<UpstreamActivity>) -> UpstreamCall {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        UpstreamCall(self.clone())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Requests in flight to the server now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether the server is visibly working for this node: a request in flight
    /// now, or response bytes within `window` of now.
    pub fn busy(&self, window: Duration) -> bool {
        if self.in_flight() > 0 {
            return true;
        }
        let last = self.last_bytes_ms.load(Ordering::Acquire);
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        last != 0 && self.now_ms().saturating_sub(last) <= window_ms
    }
}

/// One request from this node to a model server, in flight while it lives.
#[derive(Debug)]
pub struct UpstreamCall(Arc<UpstreamActivity>);

impl UpstreamCall {
    /// Records that response bytes (headers or body) came from the server now.
    pub fn bytes(&self) {
        let now = self.0.now_ms();
        self.0.last_bytes_ms.fetch_max(now, Ordering::AcqRel);
    }
}

impl Drop for UpstreamCall {
    fn drop(&mut self) {
        let before = self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "upstream in-flight count underflow");
    }
}

/// The outcome of one health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A 2xx answer within the time-out.
    Up,
    /// No answer within `upstream_health_timeout_ms`: dead or merely busy.
    TimedOut,
    /// Connection refused or reset, or a non-2xx answer (what, for the log).
    Failed(String),
}

/// One check: `GET {base}/models` with `upstream_health_timeout_ms`.
pub async fn check(provider: &Provider, base: &str) -> Check {
    let url = format!("{}/models", base.trim_end_matches('/'));
    let timeout = Duration::from_millis(provider.config.upstream_health_timeout_ms);
    match tokio::time::timeout(timeout, provider.upstream.get(&url).timeout(timeout).send()).await {
        Ok(Ok(response)) if response.status().is_success() => Check::Up,
        Ok(Ok(response)) => Check::Failed(format!("HTTP {}", response.status())),
        Ok(Err(error)) if error.is_timeout() => Check::TimedOut,
        Ok(Err(error)) => Check::Failed(error.to_string()),
        Err(_) => Check::TimedOut,
    }
}

/// Checks every upstream once and records the result (at start, before the first
/// registration, so that a server down at start is never offered; nothing is in
/// flight yet, so a time-out counts).
pub async fn check_all_once(provider: &Provider) {
    for base in upstreams(provider) {
        let outcome = check(provider, &base).await;
        let up = outcome == Check::Up;
        if !up {
            tracing::warn!(upstream = %base, ?outcome, "model server down at start: its models are not offered until it answers (R-PROV-4)");
        }
        provider.set_upstream_up(&base, up);
    }
}

/// The loop: checks, and re-registers when a server went down or came back.
pub async fn health_loop(provider: Arc<Provider>) {
    let bases = upstreams(&provider);
    let mut failures: BTreeMap<String, u32> = bases.iter().map(|b| (b.clone(), 0)).collect();
    let interval = Duration::from_millis(provider.config.upstream_health_interval_ms);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if provider.stopping.load(Ordering::Acquire) {
            return;
        }
        let mut changed = false;
        for base in &bases {
            let activity = provider.upstream_activity(base);
            // Busy before the check, or during it (bytes within the last interval
            // plus the time the check took).
            let busy_before = activity.as_ref().is_some_and(|a| a.busy(interval));
            let started = Instant::now();
            let outcome = check(&provider, base).await;
            let busy = busy_before
                || activity
                    .as_ref()
                    .is_some_and(|a| a.busy(interval + started.elapsed()));
            let was_up = provider.upstream_up(base);
            let failed = failures.entry(base.clone()).or_insert(0);
            match outcome {
                Check::Up => {
                    *failed = 0;
                    if !was_up {
                        tracing::info!(upstream = %base, "model server back: offering its models again (R-PROV-4)");
                        provider.set_upstream_up(base, true);
                        changed = true;
                    }
                }
                Check::TimedOut if busy => {
                    // A busy server is not a dead one: not counted either way.
                    tracing::debug!(upstream = %base, in_flight = activity.as_ref().map_or(0, |a| a.in_flight()), "health check timed out while the model server works for this node: not counted (R-PROV-4)");
                }
                Check::TimedOut | Check::Failed(_) => {
                    *failed = failed.saturating_add(1);
                    if was_up && *failed >= provider.config.upstream_health_failures {
                        tracing::warn!(upstream = %base, failures = *failed, ?outcome, "model server down: withdrawing its models (R-PROV-4)");
                        provider.set_upstream_up(base, false);
                        changed = true;
                    }
                }
            }
        }
        if changed {
            provider.reoffer().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_prov_4_busy_while_a_call_is_in_flight_and_for_a_window_after_its_last_bytes() {
        let activity = Arc::new(UpstreamActivity::new(Instant::now()));
        assert!(!activity.busy(Duration::from_secs(3600)), "never used");
        let call = activity.call();
        assert_eq!(activity.in_flight(), 1);
        assert!(activity.busy(Duration::ZERO), "in flight, no bytes yet");
        call.bytes();
        drop(call);
        assert_eq!(activity.in_flight(), 0);
        assert!(activity.busy(Duration::from_secs(3600)), "bytes just now");
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !activity.busy(Duration::from_millis(10)),
            "last bytes older than the window, nothing in flight"
        );
    }
}
