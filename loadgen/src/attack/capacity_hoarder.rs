//! Capacity hoarder (issue 27 case 4, R-SESSION-1): a user holding 1 MOR sends RFCs
//! with TokenMax 1 for the honest traffic's models and never uses its tickets, so
//! each holds a provider slot until the session expires. What it took: the sessions
//! it holds at the window's end.
//!
//! Bounds: `RATE` RFCs a second, at most `COUNT_MAX` (1 MOR's daily quota is 3,000
//! tokens with the default parameters, so the router stops it near there anyway).

use super::{pacer, Attack, AttackContext, AttackError, Conn, Nonces, Take, Window, WEI_PER_MOR};
use crate::frames;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use yellowstone_wire::{msg_type, Address, Message, SigningKey};

const RATE: f64 = 1_000.0;
const COUNT_MAX: u64 = 4_000;
const MODELS: [u32; 4] = [1, 2, 3, 4];

pub struct CapacityHoarder {
    key: SigningKey,
}

impl CapacityHoarder {
    pub fn new(seed: u64) -> CapacityHoarder {
        CapacityHoarder {
            key: SigningKey::from_seed(format!("ys-attack-hoarder-{seed}").as_bytes()),
        }
    }
}

impl Attack for CapacityHoarder {
    fn balances(&self) -> Vec<(Address, u128)> {
        vec![(self.key.address(), WEI_PER_MOR)]
    }

    fn run(&mut self, ctx: &AttackContext, window: Window) -> Result<Take, AttackError> {
        let mut take = Take::default();
        let mut conn = Conn::open(ctx.addr, self.key.clone(), "hoarder")?;
        let network_id = conn.network_id();
        let mut nonces = Nonces::after(&mut conn.client);
        ctx.primed.store(true, Ordering::Relaxed);
        window.wait_start(&ctx.stop);
        let mut schedule = pacer(window.start, RATE, COUNT_MAX);
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
                    1,
                    super::now_ms() + 60_000,
                );
                conn.send(&frame)?;
                take.add("rfcs_sent", 1);
            }
            while let Some(message) = conn.poll(Duration::from_millis(2))? {
                match message {
                    // Tickets are kept and never used: each holds a slot.
                    Message::SessionTicket(_) => take.add("sessions_held", 1),
                    Message::RfcAccepted(_) => take.add("rfcs_admitted", 1),
                    Message::ErrorReply(error) if error.ref_msg_type == msg_type::RFC => {
                        take.refusal(error.code)
                    }
                    _ => {}
                }
            }
        }
        Ok(take)
    }
}
