//! Unfunded sybil registrations: fresh keys without MOR each log in and register as
//! a provider of model 1, then the canary (a funded honest provider) registers. As
//! `sybil-registrations` (issue 27 case 2, R-PROV-2) they are as many as the
//! router's `providers_max`, and the canary must still be accepted and matched; as
//! `sybil-bootstrap` (case 3, R-CONTRACT-4) they are as many as the bootstrap slots
//! (`bootstrap_providers_max`, 100), and the canary, which serves sessions on day 0,
//! must still get a share of the day's bootstrap bonus.
//!
//! Bounds: that many registrations (the attack runs lower `providers_max` to
//! `ATTACK_PROVIDERS_MAX`), at most `RATE` a second, each on its own connection
//! closed after the answer.

use super::{pacer, Attack, AttackContext, AttackError, Conn, Take, Window};
use crate::frames::{self, OfferSpec};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use yellowstone_engine::MarketConfig;
use yellowstone_wire::{Message, SigningKey, NOTICE_UNFUNDED};

const RATE: f64 = 2_000.0;

/// How many sybils register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// The router's `providers_max`.
    ProvidersMax,
    /// The engine's `bootstrap_providers_max` (R-CONTRACT-4).
    BootstrapSlots,
}

pub struct SybilRegistrations {
    seed: u64,
    goal: Goal,
}

impl SybilRegistrations {
    pub fn new(seed: u64, goal: Goal) -> SybilRegistrations {
        SybilRegistrations { seed, goal }
    }
}

impl Attack for SybilRegistrations {
    fn run(&mut self, ctx: &AttackContext, window: Window) -> Result<Take, AttackError> {
        let mut take = Take::default();
        window.wait_start(&ctx.stop);
        let count = u64::from(match self.goal {
            Goal::ProvidersMax => ctx.providers_max,
            Goal::BootstrapSlots => MarketConfig::default().bootstrap_providers_max,
        });
        let mut schedule = pacer(window.start, RATE, count);
        let mut index = 0u64;
        while window.open(&ctx.stop) && !schedule.exhausted() {
            let now = Instant::now();
            if schedule.take_due(now).is_none() {
                std::thread::sleep(
                    schedule
                        .wait(now)
                        .unwrap_or_default()
                        .min(Duration::from_millis(5)),
                );
                continue;
            }
            let key =
                SigningKey::from_seed(format!("ys-attack-sybil-{}-{index}", self.seed).as_bytes());
            index += 1;
            let mut conn = match Conn::open(ctx.addr, key.clone(), "sybil") {
                Ok(conn) => conn,
                Err(_) => {
                    take.add("logins_failed", 1);
                    continue;
                }
            };
            let nonce = conn.client.next_nonce();
            let offer = OfferSpec {
                model_id: 1,
                price_wei_per_token: ctx.reference_price_wei / 10,
                capacity: 1,
            };
            let frame =
                frames::register_provider(&key, conn.network_id(), nonce, "127.0.0.1:9", &[offer]);
            conn.send(&frame)?;
            let mut unfunded_notice = false;
            match conn.await_ack(nonce, Duration::from_secs(2), "sybil registration", |m| {
                if matches!(m, Message::Notice(n) if n.kind == NOTICE_UNFUNDED) {
                    unfunded_notice = true;
                }
            }) {
                Ok(Ok(())) => take.add("registrations_placed", 1),
                Ok(Err((code, _))) => take.refusal(code),
                Err(_) => take.add("registrations_unanswered", 1),
            }
            if unfunded_notice {
                take.add("unfunded_notices", 1);
            }
        }
        take.add("sybil_keys_used", index);
        // The damage is in place: the canary registers now.
        ctx.primed.store(true, Ordering::Relaxed);
        Ok(take)
    }
}
