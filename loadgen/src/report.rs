//! The run report: what an operator reads at the end of a run (text), what scripts
//! read (`--json`), and the self-check verdict that sets the exit status.

use crate::latency::{LatencyRecorder, LatencySummary};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latency spectra of the three measured paths.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    pub rfc_to_ticket: LatencyRecorder,
    pub probe_rtt: LatencyRecorder,
    pub report_to_ack: LatencyRecorder,
}

impl Latencies {
    pub fn merge(&mut self, other: &Latencies) {
        self.rfc_to_ticket.merge(&other.rfc_to_ticket);
        self.probe_rtt.merge(&other.probe_rtt);
        self.report_to_ack.merge(&other.report_to_ack);
    }
}

/// Whether every acknowledged, creditable report was credited exactly once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConsistencyCheck {
    /// Reports the router acknowledged as creditable (pass and fast enough).
    pub expected_credits: u64,
    /// Of those, credited exactly once in a received batch.
    pub credited_once: u64,
    /// Acknowledged creditable sessions never seen in a batch.
    pub missing: u64,
    /// Sessions credited more than once, or credited without a creditable ack.
    pub unexpected: u64,
    /// Reports whose acknowledgement had not arrived when the run stopped: their
    /// credit is allowed but not required.
    pub in_doubt: u64,
    /// Block numbers missing between the first and last batch received.
    pub batch_gaps: u64,
    pub ok: bool,
    /// Why the check failed beyond the credit figures (issue 27): RFCs sent and no
    /// session completed, or refusals a correct client never gets. Empty when none.
    pub failures: Vec<String>,
}

/// Refusals (wire code names) a correct client never gets: one in a run means the
/// loadgen signed or numbered wrongly (e.g. `replay` after a rerun reused nonces),
/// so the run measured refusals, not the market (issue 27).
pub const CLIENT_FAULT_CODES: [&str; 4] =
    ["replay", "signer_mismatch", "wrong_sender", "bad_field"];

impl RunSummary {
    /// Fails the self-check (`consistency.ok = false`, reasons in
    /// `consistency.failures`) when RFCs were sent and no session completed, or when
    /// any of [`CLIENT_FAULT_CODES`] was received: a run refused wholesale must not
    /// say OK and exit 0 (issue 27).
    ///
    /// `group`: the target is a replicated group (more than one endpoint). There a
    /// resend after a lost connection may meet `replay` without any client fault (its
    /// answer left the bounded reply cache, R-HA-3): counted in the report, judged by
    /// the credit check (missing/unexpected), not failed by its code.
    pub fn judge_refusals(&mut self, group: bool) {
        if self.rfcs_sent > 0 && self.sessions_completed == 0 {
            self.consistency.failures.push(format!(
                "{} RFCs sent and no session completed",
                self.rfcs_sent
            ));
        }
        for code in CLIENT_FAULT_CODES {
            if group && code == "replay" {
                continue;
            }
            if let Some(n) = self.rejected.get(code).filter(|n| **n > 0) {
                self.consistency.failures.push(format!(
                    "{n} refused `{code}`, which a correct client never gets"
                ));
            }
        }
        if !self.consistency.failures.is_empty() {
            self.consistency.ok = false;
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyJson {
    pub rfc_to_ticket: LatencySummary,
    pub probe_rtt: LatencySummary,
    pub report_to_ack: LatencySummary,
}

/// The `--json` summary; its field names are a contract with scripts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSummary {
    pub scenario: String,
    pub target: String,
    pub backend: String,
    pub duration_s: f64,
    pub rfc_rate_target_per_s: f64,
    pub rfcs_sent: u64,
    pub sessions_completed: u64,
    pub sessions_per_s: f64,
    /// Sessions whose ticket arrived before the sending window closed, and their
    /// rate over the window: under overload, the router's throughput (the sessions
    /// completed during the drain after the window are not counted).
    pub sessions_in_window: u64,
    pub sessions_in_window_per_s: f64,
    /// Rejections by wire error code name (e.g. "quota_exceeded").
    pub rejected: BTreeMap<String, u64>,
    pub rfcs_failed: BTreeMap<String, u64>,
    pub latency_us: LatencyJson,
    pub acknowledged_reports: u64,
    pub credited_sessions: u64,
    pub credited_wei: String,
    pub batches: u64,
    pub pings: u64,
    pub consistency: ConsistencyCheck,
    /// Wei the acknowledgements said were earned (`ReportAck.earned_wei`, summed):
    /// after a router crash, compare with `yellowstone-router ledger` (its
    /// `credited_wei` + `shortfall_wei` must be at least this once the router has
    /// restarted and sealed the block).
    pub acknowledged_creditable_wei: String,
    /// Set when a connection to the router failed mid-run (a crash, a kill): the
    /// figures are what the clients were told before it, and the self-check fails.
    pub router_lost: Option<String>,
    /// Simulated users that could not connect or log in at all (a router out of
    /// connections): their RFCs were never sent.
    pub users_unconnected: u64,
    /// Wei per provider in the credit batches received (`earned_wei` summed): what
    /// the attack report reads an attacker's credit from. Not in the JSON summary.
    #[serde(skip)]
    pub credited_by_provider: BTreeMap<yellowstone_wire::Address, u128>,
}

impl RunSummary {
    pub fn set_latencies(&mut self, latencies: &Latencies) {
        self.latency_us = LatencyJson {
            rfc_to_ticket: latencies.rfc_to_ticket.summary(),
            probe_rtt: latencies.probe_rtt.summary(),
            report_to_ack: latencies.report_to_ack.summary(),
        };
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("summary is plain data")
    }

    /// The human report printed at the end of a run.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "yellowstone-loadgen report");
        let _ = writeln!(out, "  scenario            {}", self.scenario);
        let _ = writeln!(
            out,
            "  target              {} ({})",
            self.target, self.backend
        );
        let _ = writeln!(out, "  duration            {:.1} s", self.duration_s);
        let _ = writeln!(
            out,
            "  rfc rate target     {:.0} /s",
            self.rfc_rate_target_per_s
        );
        let _ = writeln!(out, "  rfcs sent           {}", self.rfcs_sent);
        let _ = writeln!(
            out,
            "  sessions completed  {} ({:.0} /s; {} in the window, {:.0} /s)",
            self.sessions_completed,
            self.sessions_per_s,
            self.sessions_in_window,
            self.sessions_in_window_per_s
        );
        let _ = writeln!(out, "  reports acknowledged {}", self.acknowledged_reports);
        let _ = writeln!(
            out,
            "  sessions credited   {} ({} wei)",
            self.credited_sessions, self.credited_wei
        );
        let _ = writeln!(out, "  credit batches      {}", self.batches);
        write_counts(&mut out, "rejected", &self.rejected);
        write_counts(&mut out, "rfcs failed", &self.rfcs_failed);
        let _ = writeln!(
            out,
            "\n  latency (us)          p50      p90      p99    p99.9   p99.99      max    count"
        );
        for (name, s) in [
            ("rfc -> ticket", &self.latency_us.rfc_to_ticket),
            ("probe round trip", &self.latency_us.probe_rtt),
            ("report -> ack", &self.latency_us.report_to_ack),
        ] {
            let _ = writeln!(
                out,
                "  {:<18} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                name, s.p50, s.p90, s.p99, s.p999, s.p9999, s.max, s.count
            );
        }
        if let Some(lost) = &self.router_lost {
            let _ = writeln!(
                out,
                "\n  router lost: {lost}\n  the figures above are what the clients were told \
                 before it; {} creditable reports acknowledged ({} wei earned): after a \
                 restart, `yellowstone-router ledger` must show credited + shortfall of at least that",
                self.consistency.expected_credits, self.acknowledged_creditable_wei
            );
        }
        let c = &self.consistency;
        let _ = writeln!(
            out,
            "\n  self-check: {} (expected credits {}, credited once {}, missing {}, unexpected {}, in doubt {}, batch gaps {})",
            if c.ok { "OK" } else { "FAILED" },
            c.expected_credits,
            c.credited_once,
            c.missing,
            c.unexpected,
            c.in_doubt,
            c.batch_gaps
        );
        for failure in &c.failures {
            let _ = writeln!(out, "  self-check failed: {failure}");
        }
        out
    }
}

fn write_counts(out: &mut String, title: &str, counts: &BTreeMap<String, u64>) {
    if counts.is_empty() {
        let _ = writeln!(out, "  {title:<19} none");
        return;
    }
    let _ = writeln!(out, "  {title}:");
    for (code, count) in counts {
        let _ = writeln!(out, "    {code:<28} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 27: 1000 RFCs refused `replay`, no session, the credit figures empty:
    /// the self-check said OK. It now fails, saying why.
    #[test]
    fn a_run_refused_wholesale_fails_its_self_check() {
        let mut summary = RunSummary {
            rfcs_sent: 1000,
            consistency: ConsistencyCheck {
                ok: true,
                ..ConsistencyCheck::default()
            },
            ..RunSummary::default()
        };
        summary.rejected.insert("replay".into(), 1000);
        summary.judge_refusals(false);
        assert!(!summary.consistency.ok);
        let text = summary.to_text();
        assert!(text.contains("self-check: FAILED"), "{text}");
        assert!(
            text.contains("1000 RFCs sent and no session completed"),
            "{text}"
        );
        assert!(text.contains("1000 refused `replay`"), "{text}");

        let mut fine = RunSummary {
            rfcs_sent: 10,
            sessions_completed: 9,
            consistency: ConsistencyCheck {
                ok: true,
                ..ConsistencyCheck::default()
            },
            ..RunSummary::default()
        };
        fine.rejected.insert("quota_exceeded".into(), 1);
        fine.judge_refusals(false);
        assert!(fine.consistency.ok, "{}", fine.to_text());
    }

    #[test]
    fn json_has_the_contract_fields() {
        let mut summary = RunSummary {
            sessions_completed: 3,
            ..RunSummary::default()
        };
        summary.rejected.insert("quota_exceeded".into(), 2);
        let mut latencies = Latencies::default();
        latencies.rfc_to_ticket.record_us(150);
        summary.set_latencies(&latencies);
        let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
        for key in [
            "sessions_completed",
            "sessions_per_s",
            "sessions_in_window",
            "sessions_in_window_per_s",
            "rejected",
            "acknowledged_reports",
            "credited_sessions",
            "batches",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["rejected"]["quota_exceeded"], 2);
        for key in ["p50", "p99", "p999", "max"] {
            assert!(
                json["latency_us"]["rfc_to_ticket"][key].as_u64().is_some(),
                "missing {key}"
            );
        }
        assert!(summary.to_text().contains("self-check: FAILED"));
    }
}
