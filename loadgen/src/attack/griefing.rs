//! Griefing user (issue 27 case 7, R-PERF-4): a funded user sends RFCs and reports
//! every session it gets as a fail, at once, so that the cheapest providers collect
//! penalty points from it alone and are suspended one after the other. What it took:
//! the distinct providers it failed, and (read by the canary at the window's end)
//! the offers suspended.
//!
//! Bounds: `RATE` RFCs a second for the window.

use super::{pacer, Attack, AttackContext, AttackError, Conn, Nonces, Take, Window, WEI_PER_MOR};
use crate::frames::{self, Outcome, ReportFacts};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use yellowstone_wire::{msg_type, Address, Message, SigningKey};

const RATE: f64 = 50.0;
const MODELS: [u32; 4] = [1, 2, 3, 4];
const TOKENS_MAX: u64 = 10;

pub struct GriefingUser {
    key: SigningKey,
}

impl GriefingUser {
    pub fn new(seed: u64) -> GriefingUser {
        GriefingUser {
            key: SigningKey::from_seed(format!("ys-attack-griefer-{seed}").as_bytes()),
        }
    }
}

impl Attack for GriefingUser {
    fn balances(&self) -> Vec<(Address, u128)> {
        vec![(self.key.address(), 1_000 * WEI_PER_MOR)]
    }

    fn run(&mut self, ctx: &AttackContext, window: Window) -> Result<Take, AttackError> {
        let mut take = Take::default();
        let mut conn = Conn::open(ctx.addr, self.key.clone(), "griefer")?;
        let network_id = conn.network_id();
        let mut nonces = Nonces::after(&mut conn.client);
        let mut failed: BTreeMap<Address, u64> = BTreeMap::new();
        ctx.primed.store(true, Ordering::Relaxed);
        window.wait_start(&ctx.stop);
        let mut schedule = pacer(window.start, RATE, u64::MAX);
        let mut i = 0usize;
        while window.open(&ctx.stop) {
            let now = Instant::now();
            while schedule.take_due(now).is_some() {
                let model = MODELS[i % MODELS.len()];
                i += 1;
                let frame = frames::rfc(
                    &self.key,
                    network_id,
                    nonces.fresh(),
                    model,
                    TOKENS_MAX,
                    super::now_ms() + 10_000,
                );
                conn.send(&frame)?;
                take.add("rfcs_sent", 1);
            }
            while let Some(message) = conn.poll(Duration::from_millis(2))? {
                match message {
                    Message::SessionTicket(ticket) => {
                        *failed.entry(ticket.provider).or_default() += 1;
                        let facts = ReportFacts {
                            session_id: ticket.session_id,
                            elapsed_ms: 100,
                            tokens: 1,
                            ttft_ms: 1,
                            prompt_tokens: crate::sim::SIM_PROMPT_TOKENS,
                            outcome: Outcome::Fail,
                        };
                        conn.send(&frames::report(
                            &self.key,
                            network_id,
                            nonces.fresh(),
                            &facts,
                        ))?;
                        take.add("fail_reports_sent", 1);
                    }
                    Message::ReportAck(_) => take.add("fail_reports_acknowledged", 1),
                    Message::ErrorReply(error) => {
                        take.refusal(error.code);
                        if error.ref_msg_type == msg_type::REPORT {
                            take.add("fail_reports_refused", 1);
                        }
                    }
                    _ => {}
                }
            }
        }
        take.add("providers_failed", failed.len() as u64);
        Ok(take)
    }
}
