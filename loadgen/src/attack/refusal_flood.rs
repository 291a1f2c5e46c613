//! Refusal flood (issue 27 case 6, R-PROV-3, R-OPS-4): an unfunded key sends signed
//! `ProviderAnnounce`, `Claim`, `RfcCancel` and `Report` messages, each refused (it
//! is no provider, is owed nothing, has no RFC nor session), then replays one frame
//! again and again. A refusal changes no state, so it should write nothing to the
//! journal: what the attack took is the journal records beyond the baseline's (the
//! runner reads `yellowstone_journal_records_total`).
//!
//! Bounds: `SIGNED` (short: `SIGNED_SHORT`) fresh messages then as many replays, at
//! `RATE` a second, within the window.

use super::{pacer, Attack, AttackContext, AttackError, Conn, Nonces, Take, Window};
use crate::frames::{self, Outcome, ReportFacts};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use yellowstone_wire::{Message, SigningKey};

const SIGNED: u64 = 2_000;
const SIGNED_SHORT: u64 = 500;
const RATE: f64 = 1_000.0;

pub struct RefusalFlood {
    key: SigningKey,
    signed: u64,
}

impl RefusalFlood {
    pub fn new(seed: u64, short: bool) -> RefusalFlood {
        RefusalFlood {
            key: SigningKey::from_seed(format!("ys-attack-refusals-{seed}").as_bytes()),
            signed: if short { SIGNED_SHORT } else { SIGNED },
        }
    }
}

impl Attack for RefusalFlood {
    fn run(&mut self, ctx: &AttackContext, window: Window) -> Result<Take, AttackError> {
        let mut take = Take::default();
        let mut conn = Conn::open(ctx.addr, self.key.clone(), "refusal flood")?;
        let network_id = conn.network_id();
        let mut nonces = Nonces::after(&mut conn.client);
        ctx.primed.store(true, Ordering::Relaxed);
        window.wait_start(&ctx.stop);
        let mut schedule = pacer(window.start, RATE, 2 * self.signed);
        let mut last = Vec::new();
        let mut sent = 0u64;
        while window.open(&ctx.stop) && !schedule.exhausted() {
            let now = Instant::now();
            while schedule.take_due(now).is_some() {
                if sent < self.signed {
                    let nonce = nonces.fresh();
                    last = match sent % 4 {
                        0 => frames::provider_announce(&self.key, network_id, nonce),
                        1 => frames::claim(&self.key, network_id, nonce, 0),
                        2 => frames::rfc_cancel(&self.key, network_id, nonce, sent + 1),
                        _ => frames::report(
                            &self.key,
                            network_id,
                            nonce,
                            &ReportFacts {
                                session_id: sent + 1,
                                elapsed_ms: 100,
                                tokens: 10,
                                ttft_ms: 1,
                                prompt_tokens: crate::sim::SIM_PROMPT_TOKENS,
                                outcome: Outcome::Pass,
                            },
                        ),
                    };
                    take.add("signed_refusals_sent", 1);
                } else {
                    take.add("replays_sent", 1);
                }
                conn.send(&last)?;
                sent += 1;
            }
            while let Some(message) = conn.poll(Duration::from_millis(2))? {
                match message {
                    Message::ErrorReply(error) => take.refusal(error.code),
                    Message::Ack(_) | Message::ClaimAck(_) | Message::ReportAck(_) => {
                        take.add("accepted", 1)
                    }
                    _ => {}
                }
            }
        }
        // Let the last answers land before the run counts the journal.
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            if let Some(Message::ErrorReply(error)) = conn.poll(Duration::from_millis(20))? {
                take.refusal(error.code);
            }
        }
        Ok(take)
    }
}
