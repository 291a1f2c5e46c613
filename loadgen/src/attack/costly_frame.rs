//! Costly-frame replay (issue 27 case 5, R-PROV-3): an unfunded key sends one
//! `RegisterProvider` of the most offers a frame may hold (`OFFERS_MAX`, each with its
//! weights proof, and the longest endpoint), then replays those same bytes. Each
//! copy costs the router a signature recovery per offer before it learns the sender
//! holds nothing and the nonce is spent.
//!
//! Bounds: `RATE` frames a second for the window (the 100/s).

use super::{pacer, Attack, AttackContext, AttackError, Conn, Take, Window, ATTACK_CATALOG_MODELS};
use crate::frames::{self, OfferSpec};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use yellowstone_wire::{Message, SigningKey, ENDPOINT_BYTES_MAX, OFFERS_MAX};

const RATE: f64 = 100.0;

pub struct CostlyFrame {
    key: SigningKey,
}

impl CostlyFrame {
    pub fn new(seed: u64) -> CostlyFrame {
        CostlyFrame {
            key: SigningKey::from_seed(format!("ys-attack-costly-{seed}").as_bytes()),
        }
    }
}

impl Attack for CostlyFrame {
    fn run(&mut self, ctx: &AttackContext, window: Window) -> Result<Take, AttackError> {
        let mut take = Take::default();
        let mut conn = Conn::open(ctx.addr, self.key.clone(), "costly frame")?;
        let offers: Vec<OfferSpec> = (1..=(OFFERS_MAX as u32).min(ATTACK_CATALOG_MODELS))
            .map(|model_id| OfferSpec {
                model_id,
                price_wei_per_token: ctx.reference_price_wei,
                capacity: 1,
            })
            .collect();
        let endpoint = "e".repeat(ENDPOINT_BYTES_MAX);
        let frame = frames::register_provider(
            &self.key,
            conn.network_id(),
            conn.client.next_nonce(),
            &endpoint,
            &offers,
        );
        take.add("frame_bytes", frame.len() as u64);
        ctx.primed.store(true, Ordering::Relaxed);
        window.wait_start(&ctx.stop);
        let mut schedule = pacer(window.start, RATE, u64::MAX);
        while window.open(&ctx.stop) {
            let now = Instant::now();
            while schedule.take_due(now).is_some() {
                conn.send(&frame)?;
                take.add("frames_sent", 1);
            }
            // Read the answers, so the router never stops reading for want of a reader.
            while let Some(message) = conn.poll(Duration::from_millis(2))? {
                match message {
                    Message::Ack(_) => take.add("registrations_placed", 1),
                    Message::ErrorReply(error) => take.refusal(error.code),
                    _ => {}
                }
            }
        }
        // Issue 27: new logins after the router closed it `too_many_refusals`.
        take.add("reconnects", conn.reconnects);
        take.add("logins_refused", conn.logins_refused);
        Ok(take)
    }
}
