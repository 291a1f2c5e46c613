//! Issue 27 (R-OPS-4): a journaled command never makes replay fail. Random journals
//! of commands whose values are drawn from the extremes (u128::MAX prices and
//! balances, u64::MAX tokens, nonces and expiries, u32::MAX capacities, the bounds
//! themselves) under a market whose operator allowed the widest bounds
//! (`bid_wei_per_token_max` = u128::MAX, any TokenMax): applying them never panics,
//! every invariant holds after every command (no session with user = provider,
//! unfunded registrations within their bound, solvency, capacity, book, ...), and
//! replaying the journal from genesis, or from a snapshot taken at a random point plus
//! the journal's suffix, reaches the same state hash.

mod common;
use common::*;
use proptest::prelude::*;
use yellowstone_engine::*;

fn wide_config() -> MarketConfig {
    MarketConfig {
        bid_wei_per_token_max: u128::MAX,
        tokens_max_limit: u64::MAX,
        offer_capacity_max: u32::MAX,
        // S = 1 wei: any balance's UserMax is capped at u64::MAX tokens.
        mor_supply_wei: 1,
        token_price_wei_per_1000: 1,
        unfunded_registrations_max: 2,
        unfunded_registration_ttl_ms: 30_000,
        providers_max: 3,
        penalty_points_suspend: 2,
        suspend_users_min: 2,
        suspension_ms: 5_000,
        speed_reports_min: 3,
        ..config()
    }
}

fn wei() -> impl Strategy<Value = u128> {
    prop_oneof![
        3 => Just(u128::MAX),
        1 => Just(0u128),
        1 => Just(1u128),
        1 => Just(u128::MAX - 1),
        1 => Just(1u128 << 127),
        1 => Just(u64::MAX as u128),
        1 => any::<u128>(),
    ]
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(2u64),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(u32::MAX as u64),
        any::<u64>(),
    ]
}

/// 1 or 2 mostly (TokenMax 1 is the largest that fits at a bid of u128::MAX; an
/// expiry of 0..=2 means "valid"), else an extreme.
fn often_small() -> impl Strategy<Value = u64> {
    prop_oneof![6 => Just(1u64), 1 => Just(0u64), 1 => Just(2u64), 1 => count()]
}

/// Who sends: users 0..3, providers 0..3 (four addresses, some acting as both).
fn party() -> impl Strategy<Value = Address> {
    prop_oneof![(0..3u32).prop_map(user), (0..3u32).prop_map(provider)]
}

#[derive(Clone, Debug)]
enum Nonce {
    /// The next of the sender's own sequence.
    Next,
    /// A fixed value: 0, 1, u64::MAX, the gap's edge...
    Raw(u64),
    /// The router's clock in microseconds plus this (a fresh client's choice).
    ClockPlus(u64),
}

fn nonce() -> impl Strategy<Value = Nonce> {
    prop_oneof![
        20 => Just(Nonce::Next),
        1 => count().prop_map(Nonce::Raw),
        1 => prop_oneof![Just(0u64), Just(NONCE_GAP_MAX), Just(NONCE_GAP_MAX + 1)]
            .prop_map(Nonce::ClockPlus),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    Fund(Address, u128),
    Register(Address, Nonce, bool, u128, u32),
    UpdateBid(Address, Nonce, u128, u32),
    Withdraw(Address, Nonce),
    Announce(Address, Nonce),
    Disconnect(Address),
    Rfc(Address, Nonce, bool, u64, u64),
    Cancel(Address, Nonce, u8),
    Answer(u8, Nonce),
    Report(u8, Nonce, u64, u64, bool),
    Claim(Address, Nonce, u128),
    SetBidMax(u128),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    let capacity =
        prop_oneof![4 => Just(2u32), 2 => Just(1u32), 1 => Just(u32::MAX), 1 => Just(0u32)];
    // Mostly the funded providers, sometimes anyone (unfunded, or a user: self-dealing).
    let registrant = prop_oneof![4 => (0..2u32).prop_map(provider), 1 => party()];
    prop_oneof![
        3 => (party(), wei()).prop_map(|(a, w)| Step::Fund(a, w)),
        3 => (registrant, nonce(), prop::bool::weighted(0.2), wei(), capacity.clone())
            .prop_map(|(a, n, b, p, c)| Step::Register(a, n, b, p, c)),
        1 => (party(), nonce(), wei(), capacity).prop_map(|(a, n, p, c)| Step::UpdateBid(a, n, p, c)),
        1 => (party(), nonce()).prop_map(|(a, n)| Step::Withdraw(a, n)),
        1 => (party(), nonce()).prop_map(|(a, n)| Step::Announce(a, n)),
        1 => party().prop_map(Step::Disconnect),
        6 => (party(), nonce(), prop::bool::weighted(0.2), often_small(), often_small())
            .prop_map(|(a, n, b, t, e)| Step::Rfc(a, n, b, t, e)),
        1 => (party(), nonce(), any::<u8>()).prop_map(|(a, n, k)| Step::Cancel(a, n, k)),
        5 => (any::<u8>(), nonce()).prop_map(|(k, n)| Step::Answer(k, n)),
        5 => (any::<u8>(), nonce(), often_small(), often_small(), prop::bool::weighted(0.7))
            .prop_map(|(k, n, t, ms, pass)| Step::Report(k, n, t, ms, pass)),
        1 => (party(), nonce(), wei()).prop_map(|(a, n, w)| Step::Claim(a, n, w)),
        1 => wei().prop_map(Step::SetBidMax),
        3 => prop_oneof![
            Just(1u64),
            Just(BLOCK_MS),
            Just(BLOCK_MS * 3),
            Just(30_000),
            Just(BLOCKS_PER_DAY * BLOCK_MS),
        ]
        .prop_map(Step::Wait),
    ]
}

/// What the journal needs: the sender's own nonce sequence and what was seen.
#[derive(Default)]
struct Driver {
    probes: Vec<(ProbeId, Address)>,
    tickets: Vec<Ticket>,
    rfcs: Vec<(Address, RfcId)>,
}

fn nonce_of(m: &mut Market, who: Address, nonce: &Nonce) -> u64 {
    match nonce {
        Nonce::Next => {
            // Above whatever was accepted last (a Raw or clock nonce may have moved it).
            let mine = m.nonce(who);
            m.engine
                .nonce_last(&who)
                .map_or(mine, |last| last.saturating_add(1).max(mine))
        }
        Nonce::Raw(value) => *value,
        Nonce::ClockPlus(delta) => (m.now * 1_000).saturating_add(*delta),
    }
}

fn offer(model_b: bool, price: u128, capacity: u32) -> OfferSpec {
    Market::offer(if model_b { MODEL_B } else { MODEL_A }, price, capacity)
}

fn to_command(m: &mut Market, seen: &Driver, step: &Step) -> Command {
    let model = |b: bool| if b { MODEL_B } else { MODEL_A };
    match step {
        Step::Fund(who, wei) => {
            let nonce = nonce_of(m, OPERATOR, &Nonce::Next);
            // Balances only rise, so that "used <= UserMax" stays an invariant.
            let balance = m.engine.balance_wei(who).max(*wei);
            Command::SetBalances {
                operator: OPERATOR,
                nonce,
                entries: vec![(*who, balance)],
            }
        }
        Step::Register(who, n, b, price, capacity) => Command::RegisterProvider {
            provider: *who,
            nonce: nonce_of(m, *who, n),
            endpoint: vec![7; 255],
            offers: vec![offer(*b, *price, *capacity)],
        },
        Step::UpdateBid(who, n, price, capacity) => Command::UpdateBid {
            provider: *who,
            nonce: nonce_of(m, *who, n),
            model: MODEL_A,
            price_wei_per_token: *price,
            capacity: *capacity,
        },
        Step::Withdraw(who, n) => Command::WithdrawBid {
            provider: *who,
            nonce: nonce_of(m, *who, n),
            model: MODEL_A,
        },
        Step::Announce(who, n) => Command::ProviderAnnounce {
            provider: *who,
            nonce: nonce_of(m, *who, n),
        },
        Step::Disconnect(who) => Command::ProviderDisconnected { provider: *who },
        Step::Rfc(who, n, b, tokens, expiry) => Command::SubmitRfc {
            user: *who,
            nonce: nonce_of(m, *who, n),
            model: model(*b),
            tokens_max: *tokens,
            // Mostly valid expiries, sometimes the extreme itself.
            expires_at_ms: if *expiry > 2 {
                *expiry
            } else {
                m.now + 60_000 * (*expiry + 1)
            },
        },
        Step::Cancel(who, n, k) => {
            let rfc = seen
                .rfcs
                .get(*k as usize % seen.rfcs.len().max(1))
                .map_or(u64::MAX, |r| r.1);
            Command::CancelRfc {
                user: *who,
                nonce: nonce_of(m, *who, n),
                rfc,
            }
        }
        Step::Answer(k, n) => {
            // Mostly one of the latest probes (older ones have ended).
            let (probe, who) = seen
                .probes
                .iter()
                .rev()
                .nth(*k as usize % 3)
                .copied()
                .unwrap_or((u64::MAX, provider(0)));
            Command::ProbeAnswer {
                provider: who,
                nonce: nonce_of(m, who, n),
                probe,
            }
        }
        Step::Report(k, n, tokens, ms, pass) => {
            let (session, who, tokens_max) = seen
                .tickets
                .iter()
                .rev()
                .nth(*k as usize % 3)
                .map_or((u64::MAX, user(0), 0), |t| {
                    (t.session, t.user, t.tokens_max)
                });
            // Often exactly TokenMax (the largest credit), sometimes the raw extreme.
            let tokens = if *tokens <= 2 { tokens_max } else { *tokens };
            Command::Report {
                user: who,
                nonce: nonce_of(m, who, n),
                session,
                elapsed_ms: *ms,
                tokens,
                // R-REPORT-2/3: every outcome, and timing fields at their edges (the
                // first token at the whole time, prompt tokens as extreme as tokens).
                ttft_ms: if *pass { *ms / 2 } else { *ms },
                prompt_tokens: tokens,
                outcome: match (*pass, *ms % 2) {
                    (true, _) => ReportOutcome::Pass,
                    (false, 0) => ReportOutcome::Fail,
                    (false, _) => ReportOutcome::Void,
                },
                report_digest: [9; 32],
            }
        }
        Step::Claim(who, n, amount) => Command::Claim {
            provider: *who,
            nonce: nonce_of(m, *who, n),
            amount_wei: *amount,
        },
        Step::SetBidMax(value) => Command::SetParams {
            operator: OPERATOR,
            nonce: nonce_of(m, OPERATOR, &Nonce::Next),
            params: vec![(ParamId::BidWeiPerTokenMax as u16, *value)],
        },
        Step::Wait(_) => Command::Tick,
    }
}

fn observe(seen: &mut Driver, effects: &[Effect]) {
    for effect in effects {
        match effect {
            Effect::Probe {
                probe, provider, ..
            } => seen.probes.push((*probe, *provider)),
            Effect::SessionOpened { ticket } => {
                assert_ne!(ticket.user, ticket.provider, "R-MATCH-7: a self-match");
                seen.tickets.push(ticket.clone());
            }
            Effect::RfcAccepted { user, rfc, .. } => seen.rfcs.push((*user, *rfc)),
            _ => {}
        }
    }
}

/// What a run leaves: the journal (command, time), and after each command the state
/// hash and the snapshot.
type Run = (Vec<(Command, u64)>, Vec<[u8; 32]>, Vec<Vec<u8>>);

/// Runs the steps after a funded preamble.
fn run(steps: &[Step]) -> Run {
    let mut m = Market::with(wide_config());
    let mut seen = Driver::default();
    let mut journal = Vec::new();
    let mut hashes = Vec::new();
    let mut snapshots = Vec::new();
    // A funded market to start from, so that sessions (and their credits) are common.
    let preamble = [
        Step::Fund(user(0), u128::MAX),
        Step::Fund(user(1), 1),
        Step::Fund(provider(0), 1),
        Step::Fund(provider(1), u128::MAX),
    ];
    for step in preamble.iter().chain(steps) {
        if let Step::Wait(ms) = step {
            m.now += ms;
        }
        let command = to_command(&mut m, &seen, step);
        // `Market::apply` checks every invariant after the command.
        let effects = m.apply(command.clone());
        observe(&mut seen, &effects);
        assert!(
            m.engine.unfunded_registrations_len() <= 2,
            "unfunded registrations above their bound"
        );
        journal.push((command, m.now));
        hashes.push(m.engine.state_hash());
        snapshots.push(m.engine.snapshot());
    }
    (journal, hashes, snapshots)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, max_shrink_iters: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn r_ops_4_extreme_journals_replay_without_panic_to_the_same_state(
        steps in prop::collection::vec(step(), 1..150),
        cut in any::<prop::sample::Index>(),
    ) {
        let (journal, hashes, snapshots) = run(&steps);
        // From genesis.
        let mut replay = Engine::new(wide_config());
        let mut effects = Vec::new();
        for (command, now) in &journal {
            replay.apply(command, *now, &mut effects);
        }
        replay.check_invariants();
        prop_assert_eq!(replay.state_hash(), *hashes.last().unwrap());
        // From a snapshot taken after command `at`, plus the journal's suffix.
        let at = cut.index(journal.len());
        let mut restored = Engine::restore(&snapshots[at]).expect("snapshot restores");
        prop_assert_eq!(restored.state_hash(), hashes[at]);
        for (i, (command, now)) in journal.iter().enumerate().skip(at + 1) {
            restored.apply(command, *now, &mut effects);
            restored.check_invariants();
            prop_assert_eq!(restored.state_hash(), hashes[i]);
        }
    }
}

/// Issue 27 case 10 as a journal: the exact sequence that used to panic at the
/// block's end replays from genesis and from every snapshot.
#[test]
fn r_ops_4_the_case_10_journal_replays() {
    let steps = vec![
        Step::Fund(user(0), u128::MAX),
        Step::Fund(provider(0), 1),
        Step::Register(provider(0), Nonce::Next, false, u128::MAX, 2),
        Step::Rfc(user(0), Nonce::Next, false, 1, 0),
        Step::Answer(0, Nonce::Next),
        Step::Rfc(user(0), Nonce::Next, false, 1, 0),
        Step::Answer(0, Nonce::Next),              // the latest probe
        Step::Report(1, Nonce::Next, 1, 10, true), // the first ticket
        Step::Wait(BLOCK_MS),
        Step::Report(0, Nonce::Next, 1, 10, true), // the second
        Step::Wait(BLOCK_MS),
        Step::Wait(BLOCK_MS),
    ];
    let (journal, hashes, snapshots) = run(&steps);
    for at in 0..journal.len() {
        let mut restored = Engine::restore(&snapshots[at]).unwrap();
        let mut effects = Vec::new();
        for (command, now) in &journal[at + 1..] {
            restored.apply(command, *now, &mut effects);
        }
        assert_eq!(restored.state_hash(), *hashes.last().unwrap());
    }
}
