//! R-PERF-1: the per-model speed gate. A report passes when its milliseconds per
//! token are no worse than X % above the mean of the model's last Z passing reports.
//! Speeds are kept as microseconds-per-token... in fixed point (ms × 10^6 / tokens),
//! and the comparison is exact integer arithmetic on the window's sum.

use bincode::{Decode, Encode};
use std::collections::VecDeque;

/// Fixed-point scale of a speed value: ms per token × SPEED_SCALE.
pub const SPEED_SCALE: u128 = 1_000_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct SpeedWindow {
    values: VecDeque<u128>,
    sum: u128,
}

pub fn speed_of(elapsed_ms: u64, tokens: u64) -> u128 {
    debug_assert!(tokens > 0);
    elapsed_ms as u128 * SPEED_SCALE / tokens.max(1) as u128
}

impl SpeedWindow {
    /// Whether `speed` passes with tolerance `percent`, given at least `reports_min`
    /// reports in the window (fewer: it passes).
    pub fn passes(&self, speed: u128, percent: u32, reports_min: u32) -> bool {
        let count = self.values.len() as u128;
        if count == 0 || count < reports_min as u128 {
            return true;
        }
        // speed <= mean × (100 + X) / 100  <=>  speed × 100 × count <= sum × (100 + X)
        let left = speed.saturating_mul(100).saturating_mul(count);
        let right = self.sum.saturating_mul(100 + percent as u128);
        left <= right
    }

    pub fn record(&mut self, speed: u128, window: u32) {
        self.values.push_back(speed);
        self.sum = self.sum.saturating_add(speed);
        while self.values.len() > window.max(1) as usize {
            if let Some(old) = self.values.pop_front() {
                self.sum -= old;
            }
        }
        debug_assert_eq!(self.sum, self.values.iter().sum::<u128>());
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_perf_1_gate_passes_until_min_then_compares_to_mean() {
        let mut window = SpeedWindow::default();
        assert!(window.passes(speed_of(1_000_000, 1), 50, 3));
        for _ in 0..3 {
            window.record(speed_of(100, 10), 5); // 10 ms per token
        }
        assert!(window.passes(speed_of(150, 10), 50, 3)); // exactly 50 % slower
        assert!(!window.passes(speed_of(151, 10), 50, 3));
        for _ in 0..10 {
            window.record(speed_of(200, 10), 5);
        }
        assert_eq!(window.len(), 5);
        assert!(window.passes(speed_of(300, 10), 50, 3)); // the mean moved to 20 ms
    }
}
