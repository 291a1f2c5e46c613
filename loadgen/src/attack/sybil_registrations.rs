//! Unfunded sybil registrations (issue 27 cases 2 and 3, R-PROV-2, R-CONTRACT-4):
//! fresh keys without MOR each log in and register as a provider of model 1, as many
//! as the router's `providers_max`, then the canary (a funded honest provider)
//! registers and must still be accepted and matched.
//!
//! Bounds: `providers_max` registrations (the attack runs lower it to
//! `ATTACK_PROVIDERS_MAX`), at most `RATE` a second, each on its own connection
//! closed after the answer.

use super::{pacer, Attack, AttackContext, AttackError, Conn, Nonces, Take, Window};
use crate::frames::{self, OfferSpec};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use yellowstone_wire::{Message, SigningKey, NOTICE_UNFUNDED};

const RATE: f64 = 2_000.0;

pub struct SybilRegistrations {
    seed: u64,
}

impl SybilRegistrations {
    pub fn new(seed: u64) -> SybilRegistrations {
        SybilRegistrations { seed }
    }
}

impl Attack for SybilRegistrations {
    fn run(&mut self, ctx: &AttackContext, window: Window) -> Result<Take, AttackError> {
        let mut take = Take::default();
        window.wait_start(&ctx.stop);
        let count = u64::from(ctx.providers_max);
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
            let nonce = Nonces::default().fresh();
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
