//! Adaptive group commit: when the journal writer should hold the next group.
//!
//! Natural group commit (write whatever gathered while the previous write was in
//! flight) gives the lowest latency, but once records arrive faster than one per
//! fsync the writer fsyncs back to back: fsyncs per second become 1 / (fsync time)
//! whatever the load, each costing an io_uring worker wake-up, a device flush and
//! the waiters' wake-ups, and groups stay small (1.3 records at 2,000 sessions/s on
//! the machine of BENCHMARKS.md). The pacer measures two things from the groups the
//! writer has written, the mean fsync time `D` and the mean time between records
//! `1/λ`, and holds a group only when the disk is saturated by natural commit,
//! `λ·D ≥ 1` (left again below `0.7`, so that it does not flap). The hold lasts `D`
//! (at most `journal.group_commit_adaptive_max_us`) after the previous group ended:
//! the cycle becomes about `2·D`, groups about twice as large, fsyncs per record
//! about half, for about `D/2` more latency per durable step at that load only.
//! Below saturation (half the maximum rate, say) nothing is held: every record goes
//! as soon as the previous fsync is done, as in natural group commit. A record that
//! finds the writer idle never waits (the load has just dropped or was never high).
//!
//! Sans-IO: times are passed in, so the rule is tested without a disk or a clock.

use std::time::{Duration, Instant};

/// EWMA weight of a new sample: 1/8, a few groups' memory.
const WEIGHT: f64 = 0.125;
/// `λ·D` at which holding starts: records arrive faster than one per fsync, so
/// natural commit fsyncs back to back with groups of 1-2 records (on the machine of
/// BENCHMARKS.md λ·D is about 0.65 at 1,000 sessions/s and 1.3 at 2,000).
const ENGAGE_AT: f64 = 1.0;
/// `λ·D` under which holding stops.
const RELEASE_BELOW: f64 = 0.7;

#[derive(Clone, Debug)]
pub struct GroupPacer {
    /// Longest hold; zero disables the pacer (pure natural group commit).
    max_hold: Duration,
    /// Mean duration of a group's write + fsync, ns (EWMA; 0 before the first).
    sync_ns: f64,
    /// Mean time between records, ns (EWMA; 0 before the first sample).
    interarrival_ns: f64,
    last_start: Option<Instant>,
    last_end: Option<Instant>,
    engaged: bool,
}

impl GroupPacer {
    /// `max_hold`: `journal.group_commit_adaptive_max_us`; zero turns holding off.
    pub fn new(max_hold: Duration) -> GroupPacer {
        GroupPacer {
            max_hold,
            sync_ns: 0.0,
            interarrival_ns: 0.0,
            last_start: None,
            last_end: None,
            engaged: false,
        }
    }

    /// Records a written group: `records` records, written (and fsynced) from
    /// `started` to `finished`.
    pub fn observe(&mut self, started: Instant, finished: Instant, records: u64) {
        debug_assert!(finished >= started);
        let sync_ns = finished.saturating_duration_since(started).as_nanos() as f64;
        self.sync_ns = ewma(self.sync_ns, sync_ns);
        if let Some(previous) = self.last_start {
            // The records of this group arrived, on average, over the time since
            // the previous group started.
            let cycle_ns = started.saturating_duration_since(previous).as_nanos() as f64;
            let sample = cycle_ns / records.max(1) as f64;
            self.interarrival_ns = ewma(self.interarrival_ns, sample);
        }
        self.last_start = Some(started);
        self.last_end = Some(finished);
        let load = self.load();
        if load >= ENGAGE_AT {
            self.engaged = true;
        } else if load < RELEASE_BELOW {
            self.engaged = false;
        }
    }

    /// `λ·D`: records arriving per fsync time (0 until both are measured).
    pub fn load(&self) -> f64 {
        if self.interarrival_ns <= 0.0 {
            return 0.0;
        }
        self.sync_ns / self.interarrival_ns
    }

    /// Whether groups are being held (the disk is saturated by natural commit).
    pub fn engaged(&self) -> bool {
        self.engaged
    }

    /// Until when the writer should hold the group now pending, or None to write
    /// it at once. `writer_was_idle`: the writer slept waiting for this group's
    /// first record (the load is not saturating the disk right now).
    pub fn hold_until(&self, writer_was_idle: bool) -> Option<Instant> {
        if !self.engaged || writer_was_idle || self.max_hold.is_zero() {
            return None;
        }
        let hold = Duration::from_nanos(self.sync_ns as u64).min(self.max_hold);
        Some(self.last_end? + hold)
    }
}

fn ewma(mean: f64, sample: f64) -> f64 {
    if mean <= 0.0 {
        sample
    } else {
        mean + WEIGHT * (sample - mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `groups` groups of `records` records every `cycle_us`, each taking
    /// `sync_us` to write; returns the pacer and the last group's end.
    fn run(
        pacer: &mut GroupPacer,
        start: Instant,
        groups: u32,
        records: u64,
        cycle_us: u64,
        sync_us: u64,
    ) -> Instant {
        let mut end = start;
        for n in 0..groups {
            let began = start + Duration::from_micros(cycle_us * u64::from(n));
            end = began + Duration::from_micros(sync_us);
            pacer.observe(began, end, records);
        }
        end
    }

    #[test]
    fn light_load_never_holds() {
        let mut pacer = GroupPacer::new(Duration::from_micros(500));
        // One record every 400 us, fsync 200 us: λ·D = 0.5.
        let end = run(&mut pacer, Instant::now(), 50, 1, 400, 200);
        assert!((pacer.load() - 0.5).abs() < 0.01, "{}", pacer.load());
        assert!(!pacer.engaged());
        assert_eq!(pacer.hold_until(false), None);
        let _ = end;
    }

    #[test]
    fn a_saturated_disk_holds_one_fsync_time_after_the_last_group() {
        let mut pacer = GroupPacer::new(Duration::from_micros(500));
        // Back-to-back fsyncs of 200 us, 2 records a group: λ·D = 2.
        let end = run(&mut pacer, Instant::now(), 50, 2, 200, 200);
        assert!(pacer.engaged());
        let until = pacer.hold_until(false).expect("held");
        let hold = until - end;
        assert!(
            hold >= Duration::from_micros(199) && hold <= Duration::from_micros(201),
            "{hold:?}"
        );
        // A record that found the writer asleep is never held.
        assert_eq!(pacer.hold_until(true), None);
    }

    #[test]
    fn the_hold_is_capped() {
        let mut pacer = GroupPacer::new(Duration::from_micros(300));
        // A slow disk: 5 ms fsyncs, 10 records a group.
        let end = run(&mut pacer, Instant::now(), 50, 10, 5_000, 5_000);
        assert_eq!(
            pacer.hold_until(false),
            Some(end + Duration::from_micros(300))
        );
    }

    #[test]
    fn zero_disables_holding() {
        let mut pacer = GroupPacer::new(Duration::ZERO);
        run(&mut pacer, Instant::now(), 50, 4, 200, 200);
        assert!(pacer.engaged());
        assert_eq!(pacer.hold_until(false), None);
    }

    #[test]
    fn holding_stops_when_the_load_falls_and_does_not_flap_in_between() {
        let mut pacer = GroupPacer::new(Duration::from_micros(500));
        let start = Instant::now();
        let end = run(&mut pacer, start, 50, 4, 400, 200); // λ·D = 2
        assert!(pacer.engaged());
        // λ·D = 0.8: between the thresholds, still holding.
        let end = run(&mut pacer, end, 50, 1, 250, 200);
        assert!(pacer.engaged(), "load {}", pacer.load());
        // λ·D = 0.2: released.
        run(&mut pacer, end, 50, 1, 1_000, 200);
        assert!(!pacer.engaged(), "load {}", pacer.load());
        assert_eq!(pacer.hold_until(false), None);
    }

    #[test]
    fn nothing_is_held_before_any_group_was_measured() {
        let pacer = GroupPacer::new(Duration::from_micros(500));
        assert_eq!(pacer.load(), 0.0);
        assert_eq!(pacer.hold_until(false), None);
    }
}
