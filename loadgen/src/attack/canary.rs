//! The canary: a funded honest provider that registers during every run (baseline
//! and attacked), once the attack's damage is in place, bidding below the simulated
//! providers, and answers its probes. It must be accepted (a slot, R-PROV-2), matched
//! (R-MATCH-1) and not suspended (R-PERF-4); at the window's end it asks the market
//! how many offers are suspended (R-OPS-3).

use super::{AttackContext, AttackError, Conn, Nonces, Window};
use crate::frames::{self, OfferSpec};
use crate::sim::SideCredits;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use yellowstone_wire::{
    codes, MarketStateQuery, Message, SigningKey, NOTICE_SUSPENDED, NOTICE_UNREACHABLE,
};

/// The models the canary offers (the honest traffic's).
const CANARY_MODELS: [u32; 4] = [1, 2, 3, 4];
/// Sessions per model the canary takes at once.
const CANARY_CAPACITY: u32 = 2;

/// What became of the canary's registration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Registration {
    Accepted,
    /// Refused with this error code name and reason.
    Refused {
        code: String,
        reason: String,
    },
    /// It could not connect or log in.
    ConnectFailed(String),
    /// The window closed before it could register.
    #[default]
    NotAttempted,
}

#[derive(Clone, Debug, Default)]
pub struct CanaryOutcome {
    pub registration: Registration,
    /// Session tickets it received as provider.
    pub matched_sessions: u64,
    /// The router told it it was suspended.
    pub suspended_notice: bool,
    /// Offers suspended in the market at the window's end (Σ over models of
    /// `MarketModel.providers_suspended`); None when it could not ask.
    pub providers_suspended: Option<u64>,
    /// The canary reports nothing itself.
    pub credits: SideCredits,
    /// What the credit batches credited it (earned), and what it was owed beyond
    /// that once day 0 ended: its bootstrap bonus (R-CONTRACT-4). None: not read
    /// (the run did not wait for its batches, or the claim failed: `bonus_error`).
    pub credited_wei: Option<u128>,
    pub bonus_wei: Option<u128>,
    pub bonus_error: Option<String>,
}

impl CanaryOutcome {
    /// Claims everything the canary is owed (`Claim` of 0, R-CLAIM-1) after the day
    /// ended: the bonus is what it is owed beyond `credited_wei`.
    pub fn read_bonus(&mut self, addr: std::net::SocketAddr, key: &SigningKey, credited_wei: u128) {
        if self.registration != Registration::Accepted {
            return;
        }
        self.credited_wei = Some(credited_wei);
        match claim_owed(addr, key) {
            Ok(owed) => self.bonus_wei = Some(owed.saturating_sub(credited_wei)),
            Err(error) => self.bonus_error = Some(error.to_string()),
        }
    }
}

/// Everything `key` is owed, claimed whole (0 when nothing is owed).
///
/// Errors: the connection failed, the claim was refused otherwise, or no answer.
fn claim_owed(addr: std::net::SocketAddr, key: &SigningKey) -> Result<u128, AttackError> {
    let mut conn = Conn::open(addr, key.clone(), "canary claim")?;
    let nonce = conn.client.next_nonce();
    conn.send(&frames::claim(key, conn.network_id(), nonce, 0))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match conn.poll(Duration::from_millis(50))? {
            Some(Message::ClaimAck(ack)) if ack.nonce == nonce => return Ok(ack.amount_wei),
            Some(Message::ErrorReply(error)) if error.ref_nonce == nonce => {
                if error.code == codes::NOTHING_OWED {
                    return Ok(0);
                }
                return Err(AttackError::Refused {
                    what: "canary claim",
                    code: codes::name(error.code),
                    reason: error.reason,
                });
            }
            _ => {}
        }
    }
    Err(AttackError::Timeout {
        what: "canary claim",
    })
}

pub struct Canary {
    key: SigningKey,
}

impl Canary {
    pub fn new(key: SigningKey) -> Canary {
        Canary { key }
    }

    pub fn run(self, ctx: &AttackContext, window: Window) -> CanaryOutcome {
        let mut outcome = CanaryOutcome::default();
        // Register once the attack is in place, a third into the window at the
        // earliest, two thirds in at the latest.
        let window_len = window.end.saturating_duration_since(window.start);
        let earliest = window.start + window_len / 3;
        let latest = window.start + window_len * 2 / 3;
        while Instant::now() < latest
            && (Instant::now() < earliest || !ctx.primed.load(Ordering::Relaxed))
            && !ctx.stop.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !window.open(&ctx.stop) {
            return outcome;
        }
        let mut conn = match Conn::open(ctx.addr, self.key.clone(), "canary") {
            Ok(conn) => conn,
            Err(error) => {
                outcome.registration = Registration::ConnectFailed(error.to_string());
                return outcome;
            }
        };
        let network_id = conn.network_id();
        let mut nonces = Nonces::after(&mut conn.client);
        // Below every simulated provider (their bids are 80 %..120 % of the reference).
        let offers: Vec<OfferSpec> = CANARY_MODELS
            .iter()
            .map(|&model_id| OfferSpec {
                model_id,
                price_wei_per_token: ctx.reference_price_wei * 70 / 100,
                capacity: CANARY_CAPACITY,
            })
            .collect();
        let nonce = nonces.fresh();
        let frame =
            frames::register_provider(&self.key, network_id, nonce, "127.0.0.1:9001", &offers);
        if let Err(error) = conn.send(&frame) {
            outcome.registration = Registration::ConnectFailed(error.to_string());
            return outcome;
        }
        let mut probes = Vec::new();
        let answer = conn.await_ack(nonce, Duration::from_secs(5), "canary registration", |m| {
            if let Message::Probe(probe) = m {
                probes.push(probe.probe_id);
            }
        });
        outcome.registration = match answer {
            Ok(Ok(())) => Registration::Accepted,
            Ok(Err((code, reason))) => Registration::Refused {
                code: codes::name(code).to_string(),
                reason,
            },
            Err(error) => Registration::ConnectFailed(error.to_string()),
        };
        if outcome.registration != Registration::Accepted {
            return outcome;
        }
        for probe_id in probes {
            let _ = conn.send(&frames::probe_answer(
                &self.key,
                network_id,
                nonces.fresh(),
                probe_id,
            ));
        }
        let query_at = window
            .end
            .checked_sub(Duration::from_millis(150))
            .unwrap_or(window.end);
        let mut queried = false;
        let deadline = window.end + Duration::from_secs(1);
        while Instant::now() < deadline && !(queried && outcome.providers_suspended.is_some()) {
            if !queried && Instant::now() >= query_at {
                queried = true;
                let query: Message = MarketStateQuery { query_id: 27 }.into();
                if conn.client.send(&query).is_err() {
                    break;
                }
            }
            let message = match conn.poll(Duration::from_millis(20)) {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                Err(_) => break,
            };
            match message {
                Message::Probe(probe) => {
                    let frame =
                        frames::probe_answer(&self.key, network_id, nonces.fresh(), probe.probe_id);
                    if conn.send(&frame).is_err() {
                        break;
                    }
                }
                Message::SessionTicket(ticket) if ticket.provider == self.key.address() => {
                    outcome.matched_sessions += 1;
                }
                Message::Notice(notice) if notice.kind == NOTICE_SUSPENDED => {
                    outcome.suspended_notice = true;
                }
                Message::Notice(notice) if notice.kind == NOTICE_UNREACHABLE => {
                    let frame = frames::provider_announce(&self.key, network_id, nonces.fresh());
                    if conn.send(&frame).is_err() {
                        break;
                    }
                }
                Message::MarketState(state) if state.query_id == 27 => {
                    outcome.providers_suspended =
                        Some(state.models.iter().map(|m| m.providers_suspended).sum());
                }
                _ => {}
            }
        }
        outcome
    }
}
