//! R-OPS-4, R-PROV-3 (issue 27 case 6): a refused command changes no state, so the
//! router journals nothing for it. Property: a live engine fed random streams that
//! mix accepted and refused commands (replayed and skipped nonces, unknown sessions,
//! RFCs and probes, zero balances, wrong senders, time passing so that timers fire),
//! journaling only what `apply_unless_refused` reports `Changed` (and a `Tick` first
//! whenever something is due, as the sequencer does), has after every step the state
//! hash of a second engine that replays that journal; and a refusal leaves the hash
//! exactly as it was (no nonce spent, no counter, no clock, no timer).

mod common;
use common::*;
use proptest::prelude::*;
use yellowstone_engine::*;

/// A report (the one place this file spells the command's fields).
fn report(user: Address, nonce: u64, session: SessionId, tokens: u64, pass: bool) -> Command {
    Command::Report {
        user,
        nonce,
        session,
        elapsed_ms: 1 + tokens % 3_000,
        tokens,
        ttft_ms: 0,
        prompt_tokens: tokens,
        outcome: if pass {
            ReportOutcome::Pass
        } else {
            ReportOutcome::Fail
        },
        report_digest: [2; 32],
    }
}

#[derive(Clone, Debug)]
struct Step {
    kind: u8,
    who: u8,
    /// Added to the sender's last used nonce minus 2: 0 and 1 replay, 2 and up are
    /// fresh (some skip ahead).
    nonce_delta: u8,
    value: u16,
    wait_ms: u32,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..10u8,
        0..4u8,
        0..5u8,
        any::<u16>(),
        prop_oneof![Just(0u32), 1..2_000u32, 10_000..40_000u32],
    )
        .prop_map(|(kind, who, nonce_delta, value, wait_ms)| Step {
            kind,
            who,
            nonce_delta,
            value,
            wait_ms,
        })
}

/// The live engine, its journal, and what the stream learnt (ids to refer to).
struct Live {
    engine: Engine,
    replica: Engine,
    journaled: usize,
    refused: usize,
    now: u64,
    nonces: std::collections::HashMap<Address, u64>,
    probes: Vec<(ProbeId, Address)>,
    sessions: Vec<(SessionId, Address)>,
    rfcs: Vec<(RfcId, Address)>,
}

impl Live {
    fn nonce(&mut self, who: Address, delta: u8) -> u64 {
        let last = self.nonces.get(&who).copied().unwrap_or(0);
        (last + u64::from(delta)).saturating_sub(2).max(1)
    }

    fn journal(&mut self, command: &Command, now: u64) {
        let mut effects = Vec::new();
        self.replica.apply(command, now, &mut effects);
        self.journaled += 1;
    }

    /// What the sequencer does with one command.
    fn submit(&mut self, command: Command) {
        let now = self.now.max(self.engine.now_ms());
        if command.origin().is_some() && self.engine.is_due(now) {
            let mut effects = Vec::new();
            let applied = self
                .engine
                .apply_unless_refused(&Command::Tick, now, &mut effects);
            assert_eq!(applied, Applied::Changed, "a tick is always journaled");
            self.journal(&Command::Tick, now);
            self.learn(&effects);
        }
        let before = self.engine.state_hash();
        let mut effects = Vec::new();
        let applied = self
            .engine
            .apply_unless_refused(&command, now, &mut effects);
        match applied {
            Applied::Changed => {
                self.journal(&command, now);
                if let Some((who, nonce)) = command.origin() {
                    let refused = effects.iter().any(
                        |e| matches!(e, Effect::Rejected { to, nonce: n, .. } if *to == who && *n == nonce),
                    );
                    if !refused {
                        self.nonces.insert(who, nonce);
                    }
                }
            }
            Applied::Refused => {
                self.refused += 1;
                assert_eq!(
                    self.engine.state_hash(),
                    before,
                    "a refused command changed the state: {command:?} -> {effects:?}"
                );
                assert_eq!(effects.len(), 1, "a refusal, alone: {effects:?}");
                assert!(matches!(effects[0], Effect::Rejected { .. }));
            }
        }
        self.learn(&effects);
        assert_eq!(
            self.engine.state_hash(),
            self.replica.state_hash(),
            "the journal's replay diverged after {command:?}"
        );
    }

    fn learn(&mut self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Probe {
                    provider, probe, ..
                } => self.probes.push((*probe, *provider)),
                Effect::SessionOpened { ticket } => {
                    self.sessions.push((ticket.session, ticket.user))
                }
                Effect::RfcAccepted { user, rfc, .. } => self.rfcs.push((*rfc, *user)),
                _ => {}
            }
        }
    }

    fn pick<T: Copy>(list: &[T], value: u16) -> Option<T> {
        (!list.is_empty()).then(|| list[value as usize % list.len()])
    }

    fn command(&mut self, s: &Step) -> Command {
        // Users 0..2 funded by the first steps below, user 3 never: its messages are
        // all refused (the unfunded sender of case 6).
        let (u, p) = (user(s.who as u32), provider(s.who as u32 % 3));
        match s.kind {
            0 => {
                let nonce = self.nonce(OPERATOR, s.nonce_delta);
                let entries = if s.who == 3 {
                    vec![(provider(s.value as u32 % 3), WEI_PER_MOR)]
                } else {
                    vec![(u, (1 + s.value as u128 % 50) * WEI_PER_MOR)]
                };
                Command::SetBalances {
                    operator: OPERATOR,
                    nonce,
                    entries,
                }
            }
            1 => Command::RegisterProvider {
                provider: p,
                nonce: self.nonce(p, s.nonce_delta),
                endpoint: vec![s.who],
                offers: vec![Market::offer(
                    if s.value.is_multiple_of(2) {
                        MODEL_A
                    } else {
                        MODEL_B
                    },
                    1 + s.value as u128 % 5,
                    1 + s.value as u32 % 3,
                )],
            },
            2 => Command::ProviderAnnounce {
                provider: p,
                nonce: self.nonce(p, s.nonce_delta),
            },
            3 | 4 => Command::SubmitRfc {
                user: u,
                nonce: self.nonce(u, s.nonce_delta),
                model: if s.value.is_multiple_of(7) {
                    999
                } else {
                    MODEL_A
                },
                tokens_max: 1 + s.value as u64 % 20_000,
                expires_at_ms: self.now + 1_000 + s.value as u64 * 10,
            },
            5 => {
                let (probe, owner) = Self::pick(&self.probes, s.value).unwrap_or((1, p));
                let who = if s.value.is_multiple_of(5) { p } else { owner };
                Command::ProbeAnswer {
                    provider: who,
                    nonce: self.nonce(who, s.nonce_delta),
                    probe,
                }
            }
            6 => {
                let (session, owner) = Self::pick(&self.sessions, s.value).unwrap_or((5, u));
                let who = if s.value.is_multiple_of(5) { u } else { owner };
                let nonce = self.nonce(who, s.nonce_delta);
                report(
                    who,
                    nonce,
                    session,
                    s.value as u64 % 30_000,
                    !s.value.is_multiple_of(4),
                )
            }
            7 => {
                let (rfc, owner) = Self::pick(&self.rfcs, s.value).unwrap_or((3, u));
                let who = if s.value.is_multiple_of(5) { u } else { owner };
                Command::CancelRfc {
                    user: who,
                    nonce: self.nonce(who, s.nonce_delta),
                    rfc,
                }
            }
            8 => Command::Claim {
                provider: p,
                nonce: self.nonce(p, s.nonce_delta),
                amount_wei: if s.value.is_multiple_of(3) {
                    0
                } else {
                    s.value as u128
                },
            },
            _ => Command::ProviderDisconnected { provider: p },
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn r_ops_4_refused_commands_change_no_state_and_replay_agrees(
        steps in prop::collection::vec(step(), 1..160)
    ) {
        let mut live = Live {
            engine: Engine::new(config()),
            replica: Engine::new(config()),
            journaled: 0,
            refused: 0,
            now: GENESIS_MS,
            nonces: Default::default(),
            probes: Vec::new(),
            sessions: Vec::new(),
            rfcs: Vec::new(),
        };
        for who in 0..3u32 {
            let nonce = live.nonce(OPERATOR, 3);
            live.submit(Command::SetBalances {
                operator: OPERATOR,
                nonce,
                entries: vec![(user(who), 20 * WEI_PER_MOR), (provider(who), WEI_PER_MOR)],
            });
        }
        for s in &steps {
            live.now += u64::from(s.wait_ms);
            let command = live.command(s);
            live.submit(command);
        }
        // A router restart (case 12) is journaled like any command.
        live.submit(Command::RouterStarted);
        prop_assert_eq!(live.engine.probes_open(), 0);
        prop_assert_eq!(live.engine.state_hash(), live.replica.state_hash());
        prop_assert!(live.journaled + live.refused >= steps.len());
    }
}

/// Case 6 exactly: signed Announce/Claim/Cancel/Report messages from an unfunded
/// key, and replays of one accepted message, leave the engine as it was.
#[test]
fn r_prov_3_an_unfunded_flood_and_replays_change_nothing() {
    let mut m = Market::new();
    let nobody = user(77);
    let funded = user(1);
    let nonce = m.nonce(OPERATOR);
    m.apply(Command::SetBalances {
        operator: OPERATOR,
        nonce,
        entries: vec![(funded, 10 * WEI_PER_MOR)],
    });
    let rfc = Command::SubmitRfc {
        user: funded,
        nonce: 5,
        model: MODEL_A,
        tokens_max: 10,
        expires_at_ms: m.now + 60_000,
    };
    m.apply(rfc.clone());
    let hash = m.engine.state_hash();
    for nonce in 1..=500u64 {
        let command = match nonce % 4 {
            0 => Command::ProviderAnnounce {
                provider: nobody,
                nonce,
            },
            1 => Command::Claim {
                provider: nobody,
                nonce,
                amount_wei: 0,
            },
            2 => Command::CancelRfc {
                user: nobody,
                nonce,
                rfc: 1,
            },
            _ => report(nobody, nonce, 1, 1, true),
        };
        let mut effects = Vec::new();
        let applied = m.engine.apply_unless_refused(&command, m.now, &mut effects);
        assert_eq!(applied, Applied::Refused, "{command:?}: {effects:?}");
        let mut effects = Vec::new();
        let applied = m.engine.apply_unless_refused(&rfc, m.now, &mut effects);
        assert_eq!(applied, Applied::Refused, "a replay: {effects:?}");
    }
    assert_eq!(m.engine.state_hash(), hash);
}
