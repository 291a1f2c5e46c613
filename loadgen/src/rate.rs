//! Open-loop rate control, wrk2 style.
//!
//! Requests are due on a fixed schedule (`start + i / rate`) whatever the router's
//! speed; a latency is measured from when the request was *due*, not when it was sent,
//! so a stalled router shows up in the histogram instead of hiding behind the senders
//! that waited for it (coordinated omission). `Schedule` is pure: it takes `now` and
//! says how many requests are due and when each was due.

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    interval_ns: u64,
    issued: u64,
    limit: u64,
}

impl Schedule {
    /// `rate_per_s` requests per second from `start`, `limit` requests at most.
    pub fn new(start: Instant, rate_per_s: f64, limit: u64) -> Schedule {
        assert!(
            rate_per_s > 0.0 && rate_per_s.is_finite(),
            "rate must be positive"
        );
        let interval_ns = ((1e9 / rate_per_s) as u64).max(1);
        Schedule {
            start,
            interval_ns,
            issued: 0,
            limit,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    pub fn issued(&self) -> u64 {
        self.issued
    }

    pub fn exhausted(&self) -> bool {
        self.issued >= self.limit
    }

    /// When request number `index` is due.
    pub fn due_at(&self, index: u64) -> Instant {
        self.start + Duration::from_nanos(index.saturating_mul(self.interval_ns))
    }

    /// Takes the next request if it is due at `now`, returning when it was due.
    pub fn take_due(&mut self, now: Instant) -> Option<Instant> {
        if self.exhausted() {
            return None;
        }
        let due = self.due_at(self.issued);
        if due > now {
            return None;
        }
        self.issued += 1;
        Some(due)
    }

    /// How long to wait from `now` until the next request is due (zero if late).
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        if self.exhausted() {
            return None;
        }
        Some(self.due_at(self.issued).saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_follow_the_rate_even_when_the_sender_is_late() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, 1000.0, 10);
        // The sender wakes up 5 ms late: five requests are due at once, each stamped
        // with its own due time, so their latency includes the 5 ms of lateness.
        let now = start + Duration::from_micros(4_500);
        let mut due = Vec::new();
        while let Some(at) = schedule.take_due(now) {
            due.push(at);
        }
        assert_eq!(due.len(), 5);
        assert_eq!(due[0], start);
        assert_eq!(due[4] - start, Duration::from_millis(4));
        assert_eq!(schedule.wait(now), Some(Duration::from_micros(500)));
    }

    #[test]
    fn stops_at_the_limit() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, 1e6, 3);
        let later = start + Duration::from_secs(1);
        assert_eq!(std::iter::from_fn(|| schedule.take_due(later)).count(), 3);
        assert!(schedule.exhausted());
        assert_eq!(schedule.wait(later), None);
    }
}
