//! R-PROV-4: upstream health checks. Every `upstream_health_interval_ms` the node asks
//! each distinct model server `GET {upstream_base_url}/models`; after
//! `upstream_health_failures` failed checks in a row (no 2xx within
//! `upstream_health_timeout_ms`) the server is down and its models are withdrawn from
//! the market, by a re-registration that lists only the models whose server is up
//! (PROTOCOL.md: a re-registration replaces the offer list); the first check that
//! succeeds again offers them again the same way. Matching never sends users to a
//! model server that is down, so no user gets a 502 and no provider a penalty point
//! for it (issue 23 case 7).

use super::Provider;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The distinct upstream base URLs of the configured models.
pub fn upstreams(provider: &Provider) -> BTreeSet<String> {
    provider
        .models
        .values()
        .map(|m| m.offer.upstream_base_url.clone())
        .collect()
}

/// One check: true for a 2xx answer to `GET {base}/models` within the time-out.
pub async fn check(provider: &Provider, base: &str) -> bool {
    let url = format!("{}/models", base.trim_end_matches('/'));
    let timeout = Duration::from_millis(provider.config.upstream_health_timeout_ms);
    matches!(
        tokio::time::timeout(timeout, provider.upstream.get(&url).timeout(timeout).send()).await,
        Ok(Ok(response)) if response.status().is_success()
    )
}

/// Checks every upstream once and records the result (at start, before the first
/// registration, so that a server down at start is never offered).
pub async fn check_all_once(provider: &Provider) {
    for base in upstreams(provider) {
        let up = check(provider, &base).await;
        if !up {
            tracing::warn!(upstream = %base, "model server down at start: its models are not offered until it answers (R-PROV-4)");
        }
        provider.set_upstream_up(&base, up);
    }
}

/// The loop: checks, and re-registers when a server went down or came back.
pub async fn health_loop(provider: Arc<Provider>) {
    let bases = upstreams(&provider);
    let mut failures: BTreeMap<String, u32> = bases.iter().map(|b| (b.clone(), 0)).collect();
    let mut ticker = tokio::time::interval(Duration::from_millis(
        provider.config.upstream_health_interval_ms,
    ));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if provider.stopping.load(Ordering::Acquire) {
            return;
        }
        let mut changed = false;
        for base in &bases {
            let ok = check(&provider, base).await;
            let was_up = provider.upstream_up(base);
            let failed = failures.entry(base.clone()).or_insert(0);
            if ok {
                *failed = 0;
                if !was_up {
                    tracing::info!(upstream = %base, "model server back: offering its models again (R-PROV-4)");
                    provider.set_upstream_up(base, true);
                    changed = true;
                }
            } else {
                *failed = failed.saturating_add(1);
                if was_up && *failed >= provider.config.upstream_health_failures {
                    tracing::warn!(upstream = %base, failures = *failed, "model server down: withdrawing its models (R-PROV-4)");
                    provider.set_upstream_up(base, false);
                    changed = true;
                }
            }
        }
        if changed {
            provider.reoffer().await;
        }
    }
}
