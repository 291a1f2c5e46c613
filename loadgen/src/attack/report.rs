//! The attack report: per scenario, the honest traffic's throughput and RFC->ticket
//! p99 as ratios to the paired baseline (medians over the pairs), what the attacker
//! earned or took, whether a funded honest provider was refused a slot or its
//! matching, and a verdict against issue 27's targets. Text for people, `--json` for
//! scripts (field names are a contract).

use super::canary::{CanaryOutcome, Registration};
use super::{AttackSettings, Kind, Take};
use crate::report::RunSummary;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Issue 27's targets: honest throughput at least this share of the baseline's.
pub const THROUGHPUT_RATIO_MIN: f64 = 0.95;
/// Honest RFC->ticket p99 at most this multiple of the baseline's.
pub const P99_RATIO_MAX: f64 = 1.5;

/// Refusal flood (R-PROV-3): journal records added beyond the baseline, as a share
/// of the refused messages sent, above which refusals are taken to be journaled (the
/// honest traffic's own records differ by a few between two runs).
pub const REFUSAL_JOURNAL_SHARE_MAX: f64 = 0.05;

/// The honest traffic's figures of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunFigures {
    /// Honest sessions whose ticket came within the sending window, per second.
    pub sessions_per_s: f64,
    /// Honest RFC->ticket p99, microseconds (0: no session).
    pub rfc_to_ticket_p99_us: u64,
    pub rfcs_sent: u64,
    pub sessions: u64,
    /// Honest users that could not connect at all.
    pub users_unconnected: u64,
    /// Refusals of the honest users' messages, by code name.
    pub rejected: BTreeMap<String, u64>,
    /// The simulation's own self-check (credits exactly once; the attackers'
    /// acknowledged credit included).
    pub self_check_ok: bool,
    /// `yellowstone_journal_records_total` at the end of the run.
    pub journal_records: Option<u64>,
    /// `yellowstone_connections_refused_total` at the end of the run.
    pub connections_refused: Option<u64>,
    /// CPU time (ms) of the embedded router's threads during the run
    /// (`router_cpu_ms`): what the run cost the router, which other processes'
    /// load on the machine does not add to (unlike the p99).
    pub router_cpu_ms: Option<f64>,
}

impl RunFigures {
    pub fn from_summary(
        summary: &RunSummary,
        journal_records: Option<f64>,
        connections_refused: Option<f64>,
    ) -> RunFigures {
        RunFigures {
            sessions_per_s: summary.sessions_in_window_per_s,
            rfc_to_ticket_p99_us: summary.latency_us.rfc_to_ticket.p99,
            rfcs_sent: summary.rfcs_sent,
            sessions: summary.sessions_completed,
            users_unconnected: summary.users_unconnected,
            rejected: summary.rejected.clone(),
            self_check_ok: summary.consistency.ok,
            journal_records: journal_records.map(|v| v as u64),
            connections_refused: connections_refused.map(|v| v as u64),
            router_cpu_ms: None,
        }
    }
}

/// The result of one run as `run_one` returns it: figures, the attacker's take, the
/// canary's outcome, the attacker's own failure.
pub type RunResult = (
    RunFigures,
    Option<Take>,
    Option<CanaryOutcome>,
    Option<String>,
);

/// One pair: a baseline run and an attacked run, next to each other.
#[derive(Clone, Debug, Serialize)]
pub struct PairReport {
    pub baseline: RunFigures,
    pub attacked: RunFigures,
    /// attacked sessions/s ÷ baseline sessions/s.
    pub throughput_ratio: f64,
    /// attacked p99 ÷ baseline p99; None when the attacked run had no session.
    pub p99_ratio: Option<f64>,
    /// attacked router CPU ÷ baseline router CPU (None: not measured).
    pub cpu_ratio: Option<f64>,
    /// Wei the attacker was acknowledged as earning on sessions with itself
    /// (decimal string: u128).
    pub earned_wei: String,
    /// What the credit batches credited the attacker's addresses, for any session
    /// (decimal wei); None when the run did not wait for its batches.
    pub attacker_credited_wei: Option<String>,
    /// What the attacker took, by name (and the journal records and refused
    /// connections beyond the baseline's).
    pub took: BTreeMap<String, u64>,
    /// The router's refusals of the attacker's messages, by code name.
    pub attacker_refused: BTreeMap<String, u64>,
    /// Ways a funded honest provider (the canary, the simulated providers) was
    /// refused a slot or its matching in the attacked run; empty: none.
    pub honest_refused: Vec<String>,
    /// The same for the baseline run (not empty: the measurement is suspect).
    pub baseline_honest_refused: Vec<String>,
    /// The canary provider in the baseline and the attacked run.
    pub baseline_canary: CanaryFigures,
    pub attacked_canary: CanaryFigures,
    /// The attacker could not carry out its scenario (its error).
    pub attack_error: Option<String>,
    #[serde(skip)]
    earned: u128,
}

/// What became of the canary provider in one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CanaryFigures {
    /// "accepted", "refused: <code>", "connect failed" or "not attempted".
    pub registration: String,
    pub matched_sessions: u64,
    pub suspended: bool,
    /// Offers suspended in the market at the window's end.
    pub offers_suspended: Option<u64>,
    /// Credited on day 0, and its bootstrap bonus (decimal wei; None: not read).
    pub credited_wei: Option<String>,
    pub bonus_wei: Option<String>,
}

impl CanaryFigures {
    fn of(canary: &Option<CanaryOutcome>) -> CanaryFigures {
        let Some(c) = canary else {
            return CanaryFigures::default();
        };
        CanaryFigures {
            registration: match &c.registration {
                Registration::Accepted => "accepted".into(),
                Registration::Refused { code, .. } => format!("refused: {code}"),
                Registration::ConnectFailed(_) => "connect failed".into(),
                Registration::NotAttempted => "not attempted".into(),
            },
            matched_sessions: c.matched_sessions,
            suspended: c.suspended_notice,
            offers_suspended: c.providers_suspended,
            credited_wei: c.credited_wei.map(|w| w.to_string()),
            bonus_wei: c.bonus_wei.map(|w| w.to_string()),
        }
    }
}

fn honest_refusals(canary: &Option<CanaryOutcome>) -> Vec<String> {
    let Some(canary) = canary else {
        return vec!["canary provider did not run".into()];
    };
    let mut out = Vec::new();
    match &canary.registration {
        Registration::Accepted => {
            if canary.matched_sessions == 0 {
                out.push("canary provider registered but never matched".into());
            }
        }
        Registration::Refused { code, reason } => {
            out.push(format!("canary provider refused a slot: {code} ({reason})"))
        }
        Registration::ConnectFailed(error) => {
            out.push(format!("canary provider could not connect: {error}"))
        }
        Registration::NotAttempted => out.push("canary provider never registered".into()),
    }
    if let (Some(credited), Some(0)) = (canary.credited_wei, canary.bonus_wei) {
        if credited > 0 {
            out.push(format!(
                "canary provider refused a bootstrap bonus (credited {credited} wei on day 0, \
                 no bonus)"
            ));
        }
    }
    if canary.suspended_notice {
        out.push("canary provider suspended".into());
    }
    if let Some(n) = canary.providers_suspended.filter(|&n| n > 0) {
        out.push(format!(
            "{n} provider offer(s) suspended at the window's end"
        ));
    }
    out
}

/// A run's router CPU for the text report.
fn cpu_text(ms: Option<f64>) -> String {
    ms.map_or("-".to_string(), |ms| format!("{ms:.0} ms"))
}

fn delta(attacked: Option<u64>, baseline: Option<u64>) -> Option<u64> {
    Some(attacked?.saturating_sub(baseline?))
}

impl PairReport {
    pub fn new(baseline: RunResult, attacked: RunResult) -> PairReport {
        let (base, _, base_canary, _) = baseline;
        let (figures, take, canary, attack_error) = attacked;
        let take = take.unwrap_or_default();
        let throughput_ratio = if base.sessions_per_s > 0.0 {
            figures.sessions_per_s / base.sessions_per_s
        } else {
            0.0
        };
        let p99_ratio = (figures.sessions > 0)
            .then(|| figures.rfc_to_ticket_p99_us as f64 / base.rfc_to_ticket_p99_us.max(1) as f64);
        let cpu_ratio = figures
            .router_cpu_ms
            .zip(base.router_cpu_ms)
            .filter(|&(_, base)| base > 0.0)
            .map(|(attacked, base)| attacked / base);
        let mut took = take.took.clone();
        if let Some(added) = delta(figures.journal_records, base.journal_records) {
            took.insert("journal_records_added".into(), added);
        }
        if let Some(added) = delta(figures.connections_refused, base.connections_refused) {
            took.insert("connections_refused_added".into(), added);
        }
        if figures.users_unconnected > 0 {
            took.insert("honest_users_locked_out".into(), figures.users_unconnected);
        }
        PairReport {
            throughput_ratio,
            p99_ratio,
            cpu_ratio,
            earned_wei: take.earned_wei.to_string(),
            attacker_credited_wei: take.credited_wei.map(|wei| wei.to_string()),
            earned: take.earned_wei,
            took,
            attacker_refused: take.refused.clone(),
            honest_refused: honest_refusals(&canary),
            baseline_honest_refused: honest_refusals(&base_canary),
            baseline_canary: CanaryFigures::of(&base_canary),
            attacked_canary: CanaryFigures::of(&canary),
            attack_error,
            baseline: base,
            attacked: figures,
        }
    }
}

/// Whether a scenario meets issue 27's targets, and why not.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verdict {
    pub pass: bool,
    pub failures: Vec<String>,
    /// Why this scenario is left out of the overall verdict (issue 27:
    /// sybil-bootstrap under --short, whose runs end before the bonus can be read);
    /// None: judged.
    pub not_judged: Option<String>,
}

/// Why sybil-bootstrap is not judged under --short.
pub const SHORT_NOT_JUDGED: &str = "--short reads no bonus";

/// One scenario over its pairs.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub scenario: &'static str,
    /// The requirement and issue case it reproduces.
    pub case: &'static str,
    pub pairs: Vec<PairReport>,
    /// Medians over the pairs.
    pub throughput_ratio: f64,
    /// None: the median attacked run had no honest session.
    pub p99_ratio: Option<f64>,
    /// Median over the pairs of the router CPU ratio (None: not measured). Read
    /// beside the p99: an attack that costs the router work shows here whatever the
    /// machine's other load does to the tail latency.
    pub cpu_ratio: Option<f64>,
    /// The most any pair's attacker earned from self-dealing (decimal wei).
    pub earned_wei: String,
    /// Each `took` entry's median over the pairs.
    pub took: BTreeMap<String, u64>,
    /// Some pair refused a funded honest provider a slot or its matching.
    pub honest_refused: bool,
    pub verdict: Verdict,
    #[serde(skip)]
    kind: Kind,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

impl ScenarioReport {
    pub fn new(kind: Kind) -> ScenarioReport {
        ScenarioReport {
            scenario: kind.name(),
            case: kind.case(),
            pairs: Vec::new(),
            throughput_ratio: 0.0,
            p99_ratio: None,
            cpu_ratio: None,
            earned_wei: "0".into(),
            took: BTreeMap::new(),
            honest_refused: false,
            verdict: Verdict::default(),
            kind,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Computes the medians and the verdict from the pairs.
    pub fn conclude(&mut self) {
        self.throughput_ratio = median(self.pairs.iter().map(|p| p.throughput_ratio).collect());
        // A run without honest sessions counts as an unbounded p99.
        let p99 = median(
            self.pairs
                .iter()
                .map(|p| p.p99_ratio.unwrap_or(f64::INFINITY))
                .collect(),
        );
        self.p99_ratio = p99.is_finite().then_some(p99);
        let cpu: Vec<f64> = self.pairs.iter().filter_map(|p| p.cpu_ratio).collect();
        self.cpu_ratio = (!cpu.is_empty()).then(|| median(cpu));
        let earned = self.pairs.iter().map(|p| p.earned).max().unwrap_or(0);
        self.earned_wei = earned.to_string();
        let names: std::collections::BTreeSet<&String> =
            self.pairs.iter().flat_map(|p| p.took.keys()).collect();
        self.took = names
            .into_iter()
            .map(|name| {
                let values = self
                    .pairs
                    .iter()
                    .map(|p| p.took.get(name).copied().unwrap_or(0) as f64)
                    .collect();
                (name.clone(), median(values) as u64)
            })
            .collect();
        self.honest_refused = self.pairs.iter().any(|p| !p.honest_refused.is_empty());
        let mut failures = Vec::new();
        if self.kind == Kind::Control {
            // No attacker: its ratios are the noise other rows are read against, not
            // a verdict on the router.
            if let Some(error) = self.pairs.iter().find_map(|p| p.attack_error.as_ref()) {
                failures.push(format!("the control run could not be made: {error}"));
            }
            self.verdict = Verdict {
                pass: failures.is_empty(),
                failures,
                not_judged: None,
            };
            return;
        }
        if self.throughput_ratio < THROUGHPUT_RATIO_MIN {
            failures.push(format!(
                "honest throughput {:.2} of the baseline (target >= {THROUGHPUT_RATIO_MIN})",
                self.throughput_ratio
            ));
        }
        match self.p99_ratio {
            Some(ratio) if ratio <= P99_RATIO_MAX => {}
            Some(ratio) => failures.push(format!(
                "honest RFC->ticket p99 {ratio:.2}x the baseline (target <= {P99_RATIO_MAX}x)"
            )),
            None => failures.push("no honest session in the attacked runs".into()),
        }
        if earned > 0 {
            failures.push(format!(
                "the attacker earned {earned} wei dealing with itself"
            ));
        }
        if self.honest_refused {
            let reasons: std::collections::BTreeSet<&String> =
                self.pairs.iter().flat_map(|p| &p.honest_refused).collect();
            failures.push(format!(
                "a funded honest provider was refused: {}",
                reasons.into_iter().cloned().collect::<Vec<_>>().join("; ")
            ));
        }
        if self.kind == Kind::RefusalFlood {
            // R-PROV-3: a message that changes no state writes nothing to the journal.
            let refused = self.took.get("signed_refusals_sent").copied().unwrap_or(0)
                + self.took.get("replays_sent").copied().unwrap_or(0);
            let added = self.took.get("journal_records_added").copied().unwrap_or(0);
            if added as f64 > REFUSAL_JOURNAL_SHARE_MAX * refused as f64 {
                failures.push(format!(
                    "{refused} refused messages added {added} journal records (target: at most \
                     {:.0} % of them, the baseline's noise)",
                    REFUSAL_JOURNAL_SHARE_MAX * 100.0
                ));
            }
        }
        if self.kind == Kind::SybilBootstrap
            && self
                .pairs
                .iter()
                .all(|p| p.attacked_canary.bonus_wei.is_none())
        {
            failures.push(
                "the canary's bootstrap bonus was not read (the runs did not wait for day 0 \
                 to end: --short)"
                    .into(),
            );
        }
        if let Some(error) = self.pairs.iter().find_map(|p| p.attack_error.as_ref()) {
            failures.push(format!("the attack could not be carried out: {error}"));
        }
        self.verdict = Verdict {
            pass: failures.is_empty(),
            failures,
            not_judged: None,
        };
    }
}

/// How the runs were made.
#[derive(Clone, Debug, Serialize)]
pub struct AttackSetup {
    pub pairs: usize,
    pub window_s: f64,
    pub short: bool,
    pub honest_rate_per_s: f64,
    pub users: usize,
    pub providers: usize,
    pub provider_capacity: u32,
    /// Every attacker thread is pinned (sched_setaffinity) to this one core.
    pub attacker_core: usize,
    pub providers_max: u32,
    pub connections_max: usize,
    pub backend: String,
}

/// The whole report (`--json` writes it).
#[derive(Clone, Debug, Serialize)]
pub struct AttackReport {
    pub setup: AttackSetup,
    pub scenarios: Vec<ScenarioReport>,
    /// Every scenario's verdict passed.
    pub pass: bool,
}

impl AttackReport {
    pub fn new(
        settings: &AttackSettings,
        attacker_core: usize,
        mut scenarios: Vec<ScenarioReport>,
    ) -> AttackReport {
        for scenario in &mut scenarios {
            scenario.conclude();
            // The bootstrap bonus is read once day 0 has ended, which a --short run
            // never waits for: the scenario cannot pass there, so it is no verdict.
            if settings.short && scenario.kind == Kind::SybilBootstrap {
                scenario.verdict.not_judged = Some(SHORT_NOT_JUDGED.to_string());
            }
        }
        let pass = scenarios
            .iter()
            .all(|s| s.verdict.pass || s.verdict.not_judged.is_some());
        AttackReport {
            setup: AttackSetup {
                pairs: settings.pairs,
                window_s: settings.window.as_secs_f64(),
                short: settings.short,
                honest_rate_per_s: settings.honest_rate,
                users: settings.users,
                providers: settings.providers,
                provider_capacity: settings.provider_capacity,
                attacker_core,
                providers_max: super::ATTACK_PROVIDERS_MAX,
                connections_max: super::connections_bound(
                    super::ATTACK_CONNECTIONS_MAX,
                    settings.users + settings.providers + 2,
                ),
                backend: settings.embedded.backend.clone(),
            },
            scenarios,
            pass,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report is plain data")
    }

    pub fn to_text(&self) -> String {
        let s = &self.setup;
        let mut out = String::new();
        let _ = writeln!(out, "yellowstone-loadgen attack report");
        let _ = writeln!(
            out,
            "  {} pair(s) of {:.1} s runs per scenario, honest {:.0} RFC/s from {} users to {} providers \
             (capacity {}), {} backend; attackers pinned to core {}; providers_max {}, \
             connections_max {}",
            s.pairs,
            s.window_s,
            s.honest_rate_per_s,
            s.users,
            s.providers,
            s.provider_capacity,
            s.backend,
            s.attacker_core,
            s.providers_max,
            s.connections_max
        );
        let _ = writeln!(
            out,
            "\n  {:<20} {:>7} {:>7} {:>7} {:>12}  {:<8} attackers took",
            "scenario", "thru", "p99", "cpu", "earned wei", "verdict"
        );
        for scenario in &self.scenarios {
            let took = scenario
                .took
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "  {:<20} {:>7.2} {:>7} {:>7} {:>12}  {:<8} {}",
                scenario.scenario,
                scenario.throughput_ratio,
                scenario
                    .p99_ratio
                    .map_or("none".to_string(), |r| format!("{r:.2}")),
                scenario
                    .cpu_ratio
                    .map_or("-".to_string(), |r| format!("{r:.2}")),
                scenario.earned_wei,
                match (scenario.kind, scenario.verdict.pass) {
                    _ if scenario.verdict.not_judged.is_some() => "not judged",
                    (Kind::Control, true) => "noise",
                    (_, true) => "pass",
                    (_, false) => "FAIL",
                },
                if took.is_empty() { "-".into() } else { took }
            );
        }
        let _ = writeln!(
            out,
            "\n  thru: honest sessions/s, p99: honest RFC->ticket p99, each attacked ÷ baseline, \
             median over pairs; targets thru >= {THROUGHPUT_RATIO_MIN}, p99 <= {P99_RATIO_MAX}, \
             0 wei earned by self-dealing, no funded honest provider refused; cpu: the embedded \
             router's CPU time, attacked ÷ baseline, median over pairs (not a target: what the \
             attack cost the router, which the machine's other load does not change)"
        );
        if let Some(control) = self.scenarios.iter().find(|s| s.kind == Kind::Control) {
            let _ = writeln!(
                out,
                "  control: the same honest traffic on both sides of each pair; its ratios \
                 (p99 {}, cpu {}) are this invocation's noise: a p99 ratio near it says \
                 nothing about the attack (see docs/loadgen.md, \"Reading the ratios\")",
                control
                    .p99_ratio
                    .map_or("none".to_string(), |r| format!("{r:.2}")),
                control
                    .cpu_ratio
                    .map_or("-".to_string(), |r| format!("{r:.2}")),
            );
        }
        for scenario in &self.scenarios {
            let _ = writeln!(out, "\n  {} ({}):", scenario.scenario, scenario.case);
            for (i, pair) in scenario.pairs.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "    pair {}: baseline {:.0}/s p99 {} us cpu {}; attacked {:.0}/s p99 {} us \
                     cpu {}; refused to the attacker: {}",
                    i + 1,
                    pair.baseline.sessions_per_s,
                    pair.baseline.rfc_to_ticket_p99_us,
                    cpu_text(pair.baseline.router_cpu_ms),
                    pair.attacked.sessions_per_s,
                    pair.attacked.rfc_to_ticket_p99_us,
                    cpu_text(pair.attacked.router_cpu_ms),
                    if pair.attacker_refused.is_empty() {
                        "nothing".to_string()
                    } else {
                        pair.attacker_refused
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
                let canary = &pair.attacked_canary;
                let not_read = if self.setup.short {
                    "not read (--short)"
                } else {
                    "not read"
                };
                let wei = |value: Option<&str>| {
                    value.map_or(not_read.to_string(), |v| format!("{v} wei"))
                };
                let _ = writeln!(
                    out,
                    "    pair {}: canary {} (baseline {}), matched {} time(s), bootstrap bonus {} \
                     (baseline {}); attacker credited in the batches: {}",
                    i + 1,
                    canary.registration,
                    pair.baseline_canary.registration,
                    canary.matched_sessions,
                    wei(canary.bonus_wei.as_deref()),
                    wei(pair.baseline_canary.bonus_wei.as_deref()),
                    wei(pair.attacker_credited_wei.as_deref()),
                );
                if !pair.baseline_honest_refused.is_empty() {
                    let _ = writeln!(
                        out,
                        "    pair {}: the BASELINE refused an honest provider too: {}",
                        i + 1,
                        pair.baseline_honest_refused.join("; ")
                    );
                }
            }
            if let Some(why) = &scenario.verdict.not_judged {
                let _ = writeln!(out, "    not judged ({why}): left out of the verdict");
            } else {
                for failure in &scenario.verdict.failures {
                    let _ = writeln!(out, "    FAIL: {failure}");
                }
            }
        }
        let _ = writeln!(
            out,
            "\n  verdict: {}",
            if self.pass {
                "every scenario meets the targets"
            } else {
                "FAILED (see above)"
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_verdict() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let figures = |rate: f64, p99: u64| RunFigures {
            sessions_per_s: rate,
            rfc_to_ticket_p99_us: p99,
            sessions: rate as u64,
            ..RunFigures::default()
        };
        let canary = || {
            Some(CanaryOutcome {
                registration: Registration::Accepted,
                matched_sessions: 3,
                ..CanaryOutcome::default()
            })
        };
        let mut scenario = ScenarioReport::new(Kind::SelfDealing);
        for (rate, earned) in [(100.0, 0u128), (90.0, 5), (99.0, 0)] {
            let take = Take {
                earned_wei: earned,
                ..Take::default()
            };
            scenario.pairs.push(PairReport::new(
                (figures(100.0, 1_000), None, canary(), None),
                (figures(rate, 1_200), Some(take), canary(), None),
            ));
        }
        scenario.conclude();
        assert_eq!(scenario.throughput_ratio, 0.99);
        assert_eq!(scenario.p99_ratio, Some(1.2));
        assert_eq!(scenario.earned_wei, "5");
        assert!(!scenario.verdict.pass);
        assert_eq!(scenario.verdict.failures.len(), 1, "{:?}", scenario.verdict);
    }

    /// The control's p99 and CPU ratios are reported but are no verdict (they are
    /// the noise); a scenario's CPU ratio is the median of its pairs'.
    #[test]
    fn the_control_reports_its_noise_and_cpu_ratios_are_medians() {
        let figures = |p99: u64, cpu: f64| RunFigures {
            sessions_per_s: 100.0,
            rfc_to_ticket_p99_us: p99,
            sessions: 100,
            router_cpu_ms: Some(cpu),
            ..RunFigures::default()
        };
        let mut control = ScenarioReport::new(Kind::Control);
        let mut costly = ScenarioReport::new(Kind::CostlyFrame);
        for (base_cpu, cpu) in [(1_000.0, 1_100.0), (1_000.0, 900.0), (500.0, 1_000.0)] {
            for scenario in [&mut control, &mut costly] {
                scenario.pairs.push(PairReport::new(
                    (figures(1_000, base_cpu), None, None, None),
                    (figures(3_000, cpu), None, None, None),
                ));
            }
        }
        control.conclude();
        costly.conclude();
        assert_eq!(control.p99_ratio, Some(3.0));
        assert_eq!(control.cpu_ratio, Some(1.1));
        assert!(control.verdict.pass, "{:?}", control.verdict);
        assert_eq!(costly.cpu_ratio, Some(1.1));
        assert!(
            !costly.verdict.pass,
            "the p99 target still applies to attacks"
        );
        let text = AttackReport {
            setup: AttackSetup {
                pairs: 3,
                window_s: 3.0,
                short: false,
                honest_rate_per_s: 100.0,
                users: 1,
                providers: 1,
                provider_capacity: 1,
                attacker_core: 0,
                providers_max: 1,
                connections_max: 1,
                backend: "uring".into(),
            },
            scenarios: vec![control, costly],
            pass: false,
        }
        .to_text();
        assert!(text.contains("its ratios (p99 3.00, cpu 1.10)"), "{text}");
    }
}
