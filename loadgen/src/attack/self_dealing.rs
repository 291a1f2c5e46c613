//! Self-dealing (issue 27 case 1, R-MATCH-7): one funded address logs in on two
//! connections, registers on one as the cheapest provider of model 1, sends RFCs for
//! model 1 on the other and reports every session pass with its whole TokenMax. What
//! it earned is the `ReportAck.earned_wei` of the sessions whose ticket names it as
//! both user and provider. Sessions matched with others are reported pass as an
//! honest user would (their credit is theirs, and expected by the self-check).
//!
//! Bounds: `RFC_RATE` RFCs a second for the window, `CAPACITY` sessions at once.

use super::{pacer, Attack, AttackContext, AttackError, Conn, Nonces, Take, Window, WEI_PER_MOR};
use crate::frames::{self, OfferSpec, Outcome, ReportFacts};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use yellowstone_wire::{codes, msg_type, Address, Message, SigningKey, NOTICE_UNREACHABLE};

const MODEL: u32 = 1;
const RFC_RATE: f64 = 20.0;
const CAPACITY: u32 = 4;
/// TokenMax of the self-dealer's RFCs; it reports every session with all of them.
pub const TOKENS_MAX: u64 = 100;

/// The self-dealer's bid, wei per token: half the reference price, below every
/// honest bid (80 %..120 % of it).
pub fn bid_wei_per_token(reference_price_wei: u128) -> u128 {
    reference_price_wei / 2
}

pub struct SelfDealing {
    key: SigningKey,
    provider: Option<Conn>,
    user: Option<Conn>,
    /// Both connections' (one address): set once the provider connection is open.
    nonces: Option<Nonces>,
}

impl SelfDealing {
    pub fn new(seed: u64) -> SelfDealing {
        SelfDealing {
            key: SigningKey::from_seed(format!("ys-attack-self-dealer-{seed}").as_bytes()),
            provider: None,
            user: None,
            nonces: None,
        }
    }
}

impl Attack for SelfDealing {
    fn balances(&self) -> Vec<(Address, u128)> {
        vec![(self.key.address(), 1_000 * WEI_PER_MOR)]
    }

    fn prepare(&mut self, ctx: &AttackContext) -> Result<(), AttackError> {
        let mut provider = Conn::open(ctx.addr, self.key.clone(), "self-dealer (provider)")?;
        let user = Conn::open(ctx.addr, self.key.clone(), "self-dealer (user)")?;
        let mut nonces = Nonces::after(&mut provider.client);
        let nonce = nonces.fresh();
        let offer = OfferSpec {
            model_id: MODEL,
            price_wei_per_token: bid_wei_per_token(ctx.reference_price_wei),
            capacity: CAPACITY,
        };
        let frame = frames::register_provider(
            &self.key,
            provider.network_id(),
            nonce,
            "127.0.0.1:9666",
            &[offer],
        );
        provider.send(&frame)?;
        match provider.await_ack(
            nonce,
            Duration::from_secs(5),
            "self-dealer registration",
            |_| {},
        )? {
            Ok(()) => {}
            Err((code, reason)) => {
                return Err(AttackError::Refused {
                    what: "self-dealer registration",
                    code: codes::name(code),
                    reason,
                })
            }
        }
        self.nonces = Some(nonces);
        self.provider = Some(provider);
        self.user = Some(user);
        ctx.primed.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn run(&mut self, ctx: &AttackContext, window: Window) -> Result<Take, AttackError> {
        let (Some(mut provider), Some(mut user), Some(mut nonces)) =
            (self.provider.take(), self.user.take(), self.nonces.take())
        else {
            return Ok(Take::default());
        };
        let me = self.key.address();
        let network_id = user.network_id();
        let mut take = Take {
            addresses: vec![me],
            ..Take::default()
        };
        // Report nonce -> (provider, most wei, self-dealt).
        let mut reports: HashMap<u64, (Address, u128, bool)> = HashMap::new();
        window.wait_start(&ctx.stop);
        let mut schedule = pacer(window.start, RFC_RATE, u64::MAX);
        let drain_until = window.end + Duration::from_secs(1);
        loop {
            let now = Instant::now();
            if now >= drain_until || (now >= window.end && reports.is_empty()) {
                break;
            }
            if window.open(&ctx.stop) {
                while schedule.take_due(now).is_some() {
                    let frame = frames::rfc(
                        &self.key,
                        network_id,
                        nonces.fresh(),
                        MODEL,
                        TOKENS_MAX,
                        super::now_ms() + 10_000,
                    );
                    user.send(&frame)?;
                    take.add("rfcs_sent", 1);
                }
            }
            while let Some(message) = provider.poll(Duration::from_millis(1))? {
                match message {
                    Message::Probe(probe) => {
                        let frame = frames::probe_answer(
                            &self.key,
                            network_id,
                            nonces.fresh(),
                            probe.probe_id,
                        );
                        provider.send(&frame)?;
                    }
                    Message::Notice(notice) if notice.kind == NOTICE_UNREACHABLE => {
                        provider.send(&frames::provider_announce(
                            &self.key,
                            network_id,
                            nonces.fresh(),
                        ))?;
                    }
                    Message::ErrorReply(error) => take.refusal(error.code),
                    _ => {}
                }
            }
            while let Some(message) = user.poll(Duration::from_millis(2))? {
                match message {
                    Message::SessionTicket(ticket) if ticket.user == me => {
                        let self_dealt = ticket.provider == me;
                        take.add(
                            if self_dealt {
                                "self_matched_sessions"
                            } else {
                                "sessions_with_others"
                            },
                            1,
                        );
                        let facts = ReportFacts {
                            session_id: ticket.session_id,
                            elapsed_ms: ticket.tokens_max * ctx.service_ms_per_token,
                            tokens: ticket.tokens_max,
                            ttft_ms: 1,
                            prompt_tokens: crate::sim::SIM_PROMPT_TOKENS,
                            outcome: Outcome::Pass,
                        };
                        let nonce = nonces.fresh();
                        user.send(&frames::report(&self.key, network_id, nonce, &facts))?;
                        let most = ticket.price_wei_per_token * ticket.tokens_max as u128;
                        reports.insert(nonce, (ticket.provider, most, self_dealt));
                    }
                    Message::ReportAck(ack) => {
                        if let Some((provider, _, self_dealt)) = reports.remove(&ack.nonce) {
                            if ack.earned {
                                take.credits.earned(provider, ack.earned_wei);
                                if self_dealt {
                                    take.earned_wei =
                                        take.earned_wei.saturating_add(ack.earned_wei);
                                    take.add("self_dealt_sessions_credited", 1);
                                }
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
        for (provider, most, _) in reports.into_values() {
            take.credits.in_doubt(provider, most);
        }
        Ok(take)
    }
}
