//! A funded user flooding its own quota (R-QUOTA-4, R-QUOTA-5): a user with 10 MOR
//! (30,000 tokens a day with the default parameters, 150 RFCs of TokenMax 200) sends
//! RFCs far beyond that; the router must refuse the excess cheaply. Its admitted
//! sessions are reported pass as an honest user would (their credit is the
//! providers', expected by the self-check). What it took: the RFCs admitted.
//!
//! Bounds: `RATE` RFCs a second for the window.

use super::{pacer, Attack, AttackContext, AttackError, Conn, Nonces, Take, Window, WEI_PER_MOR};
use crate::frames::{self, Outcome, ReportFacts};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use yellowstone_wire::{msg_type, Address, Message, SigningKey};

const RATE: f64 = 1_000.0;
const MODELS: [u32; 4] = [1, 2, 3, 4];

pub struct QuotaFlood {
    key: SigningKey,
}

impl QuotaFlood {
    pub fn new(seed: u64) -> QuotaFlood {
        QuotaFlood {
            key: SigningKey::from_seed(format!("ys-attack-quota-{seed}").as_bytes()),
        }
    }
}

impl Attack for QuotaFlood {
    fn balances(&self) -> Vec<(Address, u128)> {
        vec![(self.key.address(), 10 * WEI_PER_MOR)]
    }

    fn run(&mut self, ctx: &AttackContext, window: Window) -> Result<Take, AttackError> {
        let mut take = Take::default();
        let mut conn = Conn::open(ctx.addr, self.key.clone(), "quota flooder")?;
        let network_id = conn.network_id();
        let mut nonces = Nonces::after(&mut conn.client);
        let mut reports: HashMap<u64, (Address, u128)> = HashMap::new();
        ctx.primed.store(true, Ordering::Relaxed);
        window.wait_start(&ctx.stop);
        let mut schedule = pacer(window.start, RATE, u64::MAX);
        let mut i = 0usize;
        let drain_until = window.end + Duration::from_secs(1);
        loop {
            let now = Instant::now();
            if now >= drain_until || (now >= window.end && reports.is_empty()) {
                break;
            }
            if window.open(&ctx.stop) {
                while schedule.take_due(now).is_some() {
                    let model = MODELS[i % MODELS.len()];
                    i += 1;
                    let frame = frames::rfc(
                        &self.key,
                        network_id,
                        nonces.fresh(),
                        model,
                        ctx.tokens_max,
                        super::now_ms() + 10_000,
                    );
                    conn.send(&frame)?;
                    take.add("rfcs_sent", 1);
                }
            }
            while let Some(message) = conn.poll(Duration::from_millis(2))? {
                match message {
                    Message::RfcAccepted(_) => take.add("rfcs_admitted", 1),
                    Message::SessionTicket(ticket) => {
                        take.add("sessions", 1);
                        let tokens = ticket.tokens_max / 2 + 1;
                        let facts = ReportFacts {
                            session_id: ticket.session_id,
                            elapsed_ms: tokens * ctx.service_ms_per_token,
                            tokens,
                            ttft_ms: 1,
                            prompt_tokens: crate::sim::SIM_PROMPT_TOKENS,
                            outcome: Outcome::Pass,
                        };
                        let nonce = nonces.fresh();
                        conn.send(&frames::report(&self.key, network_id, nonce, &facts))?;
                        reports.insert(
                            nonce,
                            (ticket.provider, ticket.price_wei_per_token * tokens as u128),
                        );
                    }
                    Message::ReportAck(ack) => {
                        if let Some((provider, _)) = reports.remove(&ack.nonce) {
                            if ack.earned {
                                take.credits.earned(provider, ack.earned_wei);
                            }
                        }
                    }
                    Message::ErrorReply(error) => {
                        take.refusal(error.code);
                        if error.ref_msg_type == msg_type::REPORT {
                            reports.remove(&error.ref_nonce);
                        }
                    }
                    _ => {}
                }
            }
        }
        // Issue 27: new logins after the router closed it `too_many_refusals`.
        take.add("reconnects", conn.reconnects);
        take.add("logins_refused", conn.logins_refused);
        for (provider, most) in reports.into_values() {
            take.credits.in_doubt(provider, most);
        }
        Ok(take)
    }
}
