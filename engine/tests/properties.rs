//! Property tests over random command sequences (STYLE.md section 6): no panic,
//! invariants after every step (solvency, capacity, quota, book = naive scan,
//! exhaustive matching, open sessions and RFCs per user within
//! `user_sessions_open_max` with their start timers, R-SESSION-1), quota accounting equal to a reference tally of effects,
//! every credited session had exactly one passing report, batches contiguous and
//! equal to the credits, replay and snapshot/restore give the same state hash.

mod common;
use common::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use yellowstone_engine::*;

#[derive(Clone, Debug)]
enum Step {
    Fund {
        user: u8,
        mor: u8,
    },
    FundProvider {
        provider: u8,
        mor: u8,
    },
    Register {
        provider: u8,
        model_b: bool,
        price: u8,
        capacity: u8,
    },
    UpdateBid {
        provider: u8,
        model_b: bool,
        price: u8,
        capacity: u8,
    },
    Withdraw {
        provider: u8,
        model_b: bool,
    },
    Announce {
        provider: u8,
    },
    Disconnect {
        provider: u8,
    },
    Rfc {
        user: u8,
        model_b: bool,
        tokens: u16,
        ttl_s: u8,
    },
    Cancel {
        user: u8,
        back: u8,
    },
    Answer {
        pick: u8,
        wrong_provider: bool,
    },
    Report {
        pick: u8,
        tokens: u16,
        elapsed: u16,
        /// 0 fail, 1 pass, 2 void.
        outcome: u8,
        /// Per mille of `elapsed` to the first token; above 1000: past it (refused).
        ttft_permille: u16,
        /// 0..=4: 0, 1, 1,523, 2^24 (the bound), u64::MAX (refused).
        prompt: u8,
        wrong_user: bool,
    },
    /// R-SESSION-1: a provider signs a ticket's start.
    Start {
        pick: u8,
        wrong_provider: bool,
    },
    Claim {
        provider: u8,
    },
    Wait {
        ms: u32,
    },
    Replay,
    /// R-MATCH-7: provider 2 also buys (its balance only rises, see FundProvider).
    SelfRfc {
        model_b: bool,
        tokens: u16,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..4u8, 1..50u8).prop_map(|(user, mor)| Step::Fund { user, mor }),
        (0..3u8, 0..3u8).prop_map(|(provider, mor)| Step::FundProvider { provider, mor }),
        (0..3u8, any::<bool>(), 1..5u8, 1..4u8).prop_map(|(provider, model_b, price, capacity)| {
            Step::Register {
                provider,
                model_b,
                price,
                capacity,
            }
        }),
        (0..3u8, any::<bool>(), 1..5u8, 1..4u8).prop_map(|(provider, model_b, price, capacity)| {
            Step::UpdateBid {
                provider,
                model_b,
                price,
                capacity,
            }
        }),
        (0..3u8, any::<bool>())
            .prop_map(|(provider, model_b)| Step::Withdraw { provider, model_b }),
        (0..3u8).prop_map(|provider| Step::Announce { provider }),
        (0..3u8).prop_map(|provider| Step::Disconnect { provider }),
        (0..4u8, any::<bool>(), 1..20_000u16, 1..120u8).prop_map(
            |(user, model_b, tokens, ttl_s)| Step::Rfc {
                user,
                model_b,
                tokens,
                ttl_s
            }
        ),
        (0..4u8, 0..4u8).prop_map(|(user, back)| Step::Cancel { user, back }),
        (any::<u8>(), prop::bool::weighted(0.1)).prop_map(|(pick, wrong_provider)| Step::Answer {
            pick,
            wrong_provider
        }),
        (
            any::<u8>(),
            0..20_000u16,
            0..5_000u16,
            prop_oneof![8 => Just(1u8), 1 => Just(0u8), 1 => Just(2u8)],
            prop_oneof![9 => 0..=1000u16, 1 => 1001..1100u16],
            0..5u8,
            prop::bool::weighted(0.1)
        )
            .prop_map(
                |(pick, tokens, elapsed, outcome, ttft_permille, prompt, wrong_user)| {
                    Step::Report {
                        pick,
                        tokens,
                        elapsed,
                        outcome,
                        ttft_permille,
                        prompt,
                        wrong_user,
                    }
                }
            ),
        (any::<u8>(), prop::bool::weighted(0.1)).prop_map(|(pick, wrong_provider)| Step::Start {
            pick,
            wrong_provider
        }),
        (0..3u8).prop_map(|provider| Step::Claim { provider }),
        prop_oneof![1..3_000u32, 10_000..40_000u32].prop_map(|ms| Step::Wait { ms }),
        Just(Step::Replay),
        (any::<bool>(), 1..2_000u16)
            .prop_map(|(model_b, tokens)| Step::SelfRfc { model_b, tokens }),
    ]
}

#[derive(Default)]
struct Observed {
    probes: Vec<(ProbeId, Address)>,
    tickets: Vec<Ticket>,
    rfc_ids: BTreeMap<Address, Vec<RfcId>>,
    /// Reference quota tally: charged at acceptance, refunded by RfcFailed.
    quota_used: BTreeMap<Address, u64>,
    passing_reports: BTreeMap<SessionId, u32>,
    credited: BTreeMap<SessionId, u128>,
    credited_wei: u128,
    batched_wei_requested: u128,
    batch_blocks: Vec<u64>,
    last_day: u64,
    last_command: Option<Command>,
}

fn model(b: bool) -> ModelId {
    if b {
        MODEL_B
    } else {
        MODEL_A
    }
}

fn to_command(m: &mut Market, seen: &Observed, step: &Step) -> Command {
    match *step {
        Step::Fund { user: u, mor } => {
            // Balances only rise here, so that "used <= UserMax" is an invariant.
            let balance = (m.engine.balance_wei(&user(u as u32)) / WEI_PER_MOR).max(mor as u128)
                * WEI_PER_MOR;
            let nonce = m.nonce(OPERATOR);
            Command::SetBalances {
                operator: OPERATOR,
                nonce,
                entries: vec![(user(u as u32), balance)],
            }
        }
        Step::FundProvider { provider: p, mor } => {
            let nonce = m.nonce(OPERATOR);
            let mut balance = mor as u128 * WEI_PER_MOR;
            if p == 2 {
                // Provider 2 also buys (SelfRfc): "used <= UserMax" needs its balance
                // never to fall.
                balance = balance.max(m.engine.balance_wei(&provider(2)));
            }
            Command::SetBalances {
                operator: OPERATOR,
                nonce,
                entries: vec![(provider(p as u32), balance)],
            }
        }
        Step::Register {
            provider: p,
            model_b,
            price,
            capacity,
        } => {
            let nonce = m.nonce(provider(p as u32));
            let offers = vec![Market::offer(
                model(model_b),
                price as u128,
                capacity as u32,
            )];
            Command::RegisterProvider {
                provider: provider(p as u32),
                nonce,
                endpoint: vec![p],
                offers,
            }
        }
        Step::UpdateBid {
            provider: p,
            model_b,
            price,
            capacity,
        } => {
            let nonce = m.nonce(provider(p as u32));
            Command::UpdateBid {
                provider: provider(p as u32),
                nonce,
                model: model(model_b),
                price_wei_per_token: price as u128,
                capacity: capacity as u32,
            }
        }
        Step::Withdraw {
            provider: p,
            model_b,
        } => {
            let nonce = m.nonce(provider(p as u32));
            Command::WithdrawBid {
                provider: provider(p as u32),
                nonce,
                model: model(model_b),
            }
        }
        Step::Announce { provider: p } => {
            let nonce = m.nonce(provider(p as u32));
            Command::ProviderAnnounce {
                provider: provider(p as u32),
                nonce,
            }
        }
        Step::Disconnect { provider: p } => Command::ProviderDisconnected {
            provider: provider(p as u32),
        },
        Step::Rfc {
            user: u,
            model_b,
            tokens,
            ttl_s,
        } => {
            let nonce = m.nonce(user(u as u32));
            Command::SubmitRfc {
                user: user(u as u32),
                nonce,
                model: model(model_b),
                tokens_max: tokens as u64,
                expires_at_ms: m.now + ttl_s as u64 * 1000,
            }
        }
        Step::Cancel { user: u, back } => {
            let ids = seen
                .rfc_ids
                .get(&user(u as u32))
                .cloned()
                .unwrap_or_default();
            let rfc = ids.iter().rev().nth(back as usize).copied().unwrap_or(0);
            let nonce = m.nonce(user(u as u32));
            Command::CancelRfc {
                user: user(u as u32),
                nonce,
                rfc,
            }
        }
        Step::Answer {
            pick,
            wrong_provider,
        } => {
            let (probe, mut who) = seen
                .probes
                .get(pick as usize % seen.probes.len().max(1))
                .copied()
                .unwrap_or((1, provider(0)));
            if wrong_provider {
                who = provider(9);
            }
            let nonce = m.nonce(who);
            Command::ProbeAnswer {
                provider: who,
                nonce,
                probe,
            }
        }
        Step::Report {
            pick,
            tokens,
            elapsed,
            outcome,
            ttft_permille,
            prompt,
            wrong_user,
        } => {
            let ticket = seen
                .tickets
                .get(pick as usize % seen.tickets.len().max(1))
                .cloned();
            let (session, mut who) = ticket.map(|t| (t.session, t.user)).unwrap_or((5, user(0)));
            if wrong_user {
                who = user(3);
            }
            let nonce = m.nonce(who);
            let outcome = [
                ReportOutcome::Fail,
                ReportOutcome::Pass,
                ReportOutcome::Void,
            ][outcome as usize % 3];
            let elapsed_ms = elapsed as u64;
            let prompt_tokens = [0, 1, 1_523, 1 << 24, u64::MAX][prompt as usize % 5];
            Command::Report {
                user: who,
                nonce,
                session,
                elapsed_ms,
                ttft_ms: elapsed_ms * ttft_permille as u64 / 1000 + u64::from(ttft_permille > 1000),
                tokens: tokens as u64,
                prompt_tokens,
                outcome,
                report_digest: [1; 32],
            }
        }
        Step::Start {
            pick,
            wrong_provider,
        } => {
            let ticket = seen
                .tickets
                .get(pick as usize % seen.tickets.len().max(1))
                .cloned();
            let (session, mut who) = ticket
                .map(|t| (t.session, t.provider))
                .unwrap_or((5, provider(0)));
            if wrong_provider {
                who = provider(9);
            }
            let nonce = m.nonce(who);
            Command::StartSession {
                provider: who,
                nonce,
                session,
            }
        }
        Step::Claim { provider: p } => {
            let nonce = m.nonce(provider(p as u32));
            Command::Claim {
                provider: provider(p as u32),
                nonce,
                amount_wei: 0,
            }
        }
        Step::Wait { .. } => Command::Tick,
        Step::SelfRfc { model_b, tokens } => {
            let nonce = m.nonce(provider(2));
            Command::SubmitRfc {
                user: provider(2),
                nonce,
                model: model(model_b),
                tokens_max: tokens as u64,
                expires_at_ms: m.now + 60_000,
            }
        }
        Step::Replay => seen.last_command.clone().unwrap_or(Command::Tick),
    }
}

fn observe(m: &Market, seen: &mut Observed, command: &Command, effects: &[Effect]) {
    if m.engine.day() != seen.last_day {
        seen.quota_used.clear(); // R-QUOTA-4: usage resets each day
        seen.last_day = m.engine.day();
    }
    let mut tokens_of = BTreeMap::new();
    if let Command::SubmitRfc {
        user,
        nonce,
        tokens_max,
        ..
    } = command
    {
        tokens_of.insert((*user, *nonce), *tokens_max);
    }
    for effect in effects {
        match effect {
            Effect::RfcAccepted {
                user, nonce, rfc, ..
            } => {
                *seen.quota_used.entry(*user).or_default() += tokens_of[&(*user, *nonce)];
                seen.rfc_ids.entry(*user).or_default().push(*rfc);
            }
            Effect::RfcFailed {
                user,
                refunded_tokens,
                ..
            } => {
                let used = seen.quota_used.entry(*user).or_default();
                *used = used.saturating_sub(*refunded_tokens);
            }
            Effect::Probe {
                probe, provider, ..
            } => seen.probes.push((*probe, *provider)),
            Effect::SessionOpened { ticket } => {
                assert_ne!(ticket.user, ticket.provider, "R-MATCH-7: a self-match");
                seen.tickets.push(ticket.clone())
            }
            Effect::ReportAccepted {
                session,
                reason,
                earned_wei,
                ..
            } => {
                if let Command::Report {
                    outcome: ReportOutcome::Pass,
                    ..
                } = command
                {
                    *seen.passing_reports.entry(*session).or_default() += 1;
                }
                if matches!(
                    reason,
                    CreditReason::Earned | CreditReason::EarnedDespiteFail
                ) {
                    assert!(
                        seen.credited.insert(*session, *earned_wei).is_none(),
                        "session credited twice"
                    );
                    seen.credited_wei += earned_wei;
                }
            }
            Effect::BatchSealed { batch, applied } => {
                if let Some(&last) = seen.batch_blocks.last() {
                    assert_eq!(batch.block, last + 1, "batch gap");
                }
                seen.batch_blocks.push(batch.block);
                let earned = batch.earned_total_wei().expect("batch total fits");
                seen.batched_wei_requested += earned;
                assert_eq!(applied.credited_wei + applied.shortfall_wei, earned);
                // R-BLOCK-2: each provider's credited part, and their sum.
                let credited: u128 = batch.totals.iter().map(|t| t.credited_wei).sum();
                assert_eq!(credited, applied.credited_wei);
                assert!(batch.totals.iter().all(|t| t.credited_wei <= t.earned_wei));
            }
            _ => {}
        }
    }
    for (user, used) in &seen.quota_used {
        let user_max = m.engine.user_max_tokens(user);
        assert_eq!(
            m.engine.tokens_left(user),
            user_max.saturating_sub(*used),
            "quota differs from the reference tally for {user}"
        );
    }
}

/// The tests' market with small R-SESSION-1 bounds, so that random sequences reach
/// them: 3 open sessions and RFCs per user, starts due within 5 s of the ticket.
fn prop_config() -> MarketConfig {
    MarketConfig {
        user_sessions_open_max: 3,
        ticket_start_timeout_ms: 5_000,
        // R-PERF-1 (issue 27): a small share, so that random reports reach it and
        // the invariants check it after every step.
        speed_window_user_reports_max: 2,
        ..config()
    }
}

fn run(steps: &[Step], snapshot_at: Option<usize>) -> (Vec<Command>, Vec<u64>, [u8; 32]) {
    let mut m = Market::with(prop_config());
    let mut seen = Observed::default();
    let mut commands = Vec::new();
    let mut times = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if let Step::Wait { ms } = step {
            m.now += *ms as u64;
        }
        let command = to_command(&mut m, &seen, step);
        let effects = m.apply(command.clone());
        observe(&m, &mut seen, &command, &effects);
        commands.push(command.clone());
        times.push(m.now);
        seen.last_command = Some(command);
        if snapshot_at == Some(i) {
            let restored = Engine::restore(&m.engine.snapshot()).expect("snapshot restores");
            assert_eq!(restored.state_hash(), m.engine.state_hash());
            m.engine = restored;
        }
    }
    // Seal the open block, then check credits against batches.
    m.now += BLOCK_MS;
    let effects = m.apply(Command::Tick);
    observe(&m, &mut seen, &Command::Tick, &effects);
    commands.push(Command::Tick);
    times.push(m.now);
    for session in seen.credited.keys() {
        // Every credited session had exactly one passing report (or a fail credited
        // under balance-weighted, which this config does not use).
        assert_eq!(
            seen.passing_reports.get(session),
            Some(&1),
            "credited session {session} without exactly one pass"
        );
    }
    assert_eq!(
        seen.batched_wei_requested, seen.credited_wei,
        "batches carry exactly the credits"
    );
    let ledger = m.engine.ledger();
    assert!(ledger.paid_wei + ledger.owed_total_wei <= ledger.emitted_wei);
    (commands, times, m.engine.state_hash())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_every_invariant_and_replay_exactly(
        steps in prop::collection::vec(step(), 1..120),
        snapshot_pick in any::<prop::sample::Index>(),
    ) {
        let (commands, times, hash) = run(&steps, None);
        // Replaying the recorded commands at the recorded times gives the same hash.
        let mut replay = Engine::new(prop_config());
        let mut effects = Vec::new();
        for (command, now) in commands.iter().zip(&times) {
            replay.apply(command, *now, &mut effects);
        }
        prop_assert_eq!(replay.state_hash(), hash);
        // Snapshot + restore mid-run changes nothing.
        let (_, _, hash_with_restore) = run(&steps, Some(snapshot_pick.index(steps.len())));
        prop_assert_eq!(hash_with_restore, hash);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 2_000, ..ProptestConfig::default() })]

    /// Issue 18 item 5: `apply_batch` is `apply` once per command, whatever the cuts:
    /// the same effects for every command, in order, and the same snapshot bytes.
    #[test]
    fn apply_batch_equals_apply_one_by_one(
        steps in prop::collection::vec(step(), 1..120),
        cuts in prop::collection::vec(1usize..40, 1..20),
    ) {
        let (commands, times, hash) = run(&steps, None);
        let mut single = Engine::new(prop_config());
        let mut expected = Vec::new();
        for (command, now) in commands.iter().zip(&times) {
            let mut effects = Vec::new();
            single.apply(command, *now, &mut effects);
            expected.push(effects);
        }
        prop_assert_eq!(single.state_hash(), hash);

        let batch: Vec<(Command, u64)> = commands.iter().cloned().zip(times.iter().copied()).collect();
        let mut batched = Engine::new(prop_config());
        // Effects accumulate across batches: `ends` counts from the length on entry.
        let mut effects = Vec::new();
        let mut ends = Vec::new();
        let mut got = Vec::new();
        let mut start = 0;
        let mut cut = cuts.iter().cycle();
        while start < batch.len() {
            let end = (start + cut.next().expect("cycle")).min(batch.len());
            let mut from = effects.len();
            ends.clear();
            batched.apply_batch(&batch[start..end], &mut effects, &mut ends);
            prop_assert_eq!(ends.len(), end - start);
            for &to in &ends {
                got.push(effects[from..to].to_vec());
                from = to;
            }
            prop_assert_eq!(from, effects.len());
            batched.check_invariants();
            start = end;
        }
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(batched.snapshot(), single.snapshot());
        prop_assert_eq!(batched.state_hash(), hash);
    }
}
