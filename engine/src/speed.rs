//! R-PERF-1: the per-model speed gate. A window (`SpeedWindow`) keeps the last Z
//! (ms, tokens) pairs of reports the user marked pass and their exact sums; a figure
//! passes when it is no worse than X % above the window's token-weighted mean
//! Σms / Σtokens: the exact integer comparison
//! `ms × Σtokens × 100 ≤ tokens × Σms × (100 + X)` in 256-bit arithmetic. Nothing is
//! rounded: the window keeps each report's figures as reported.
//!
//! `ModelSpeed` judges the two parts of a report's time separately (R-REPORT-3), so
//! that prompt length is never taken for slowness:
//! - generation: `elapsed_ms - ttft_ms` for the `tokens - 1` completion tokens after
//!   the first, against the model's generation window (no tokens after the first:
//!   nothing to judge, the part passes);
//! - time to the first token: `ttft_ms` (one unit per report, so its mean is the
//!   plain mean of the window's ttfts) against the window of the report's prompt
//!   size class, `prompt_class(prompt_tokens)` (powers of two of prompt tokens).
//!
//! Each part passes while its window holds fewer than `reports_min` reports.
//!
//! A report whose time is not split, `ttft_ms == elapsed_ms` with more than one
//! token (a whole, non-streamed answer: the user saw every token at once), is judged
//! as a whole against the sum of the two means, the class's mean time to the first
//! token plus `tokens - 1` times the generation mean:
//! `elapsed × 100 × n_c × Σtok_g ≤ (Σttft_c × Σtok_g + (tokens - 1) × Σms_g × n_c) × (100 + X)`
//! (passing while either window is below its minimum), and joins neither window,
//! since its parts are unknown.

use crate::state::AccountIdx;
use bincode::{Decode, Encode};
use ethnum::U256;
use std::collections::{BTreeMap, VecDeque};

/// How reports join a speed window (R-PERF-1): the window's length Z, the reports
/// of one user it holds at most, and the generation speed past which a report is
/// not believed (`MarketConfig::speed_window_reports`,
/// `speed_window_user_reports_max`, `tokens_per_s_max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowLimits {
    /// Z: passing reports the window holds (`speed_window_reports`).
    pub window: u32,
    /// Reports of one user the window holds at most (`speed_window_user_reports_max`).
    pub user_max: u32,
    /// Completion tokens per second past which a report joins no window
    /// (`tokens_per_s_max`).
    pub tokens_per_s_max: u64,
}

/// The last Z passing reports of one model, each with the user who sent it, and
/// their exact sums. R-PERF-1 (issue 27, speed-window poisoning): a user holds at
/// most `user_max` of them (its newest replaces its oldest), so that one user
/// sending many absurd reports moves the reference by its share of the window only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct SpeedWindow {
    /// (user, elapsed ms, tokens) per report, oldest first; tokens > 0.
    reports: VecDeque<(AccountIdx, u64, u64)>,
    /// Σms and Σtokens over `reports`: below Z × 2^64 ≤ 2^96, so u128 never overflows.
    ms_sum: u128,
    tokens_sum: u128,
    /// Reports per user in `reports` (no zero counts).
    per_user: BTreeMap<AccountIdx, u32>,
}

impl SpeedWindow {
    /// Whether a report of `tokens` (> 0) in `elapsed_ms` passes with tolerance
    /// `percent`, given at least `reports_min` reports in the window (fewer: it passes).
    pub fn passes(&self, elapsed_ms: u64, tokens: u64, percent: u32, reports_min: u32) -> bool {
        debug_assert!(tokens > 0);
        let count = self.reports.len() as u64;
        if count == 0 || count < reports_min as u64 {
            return true;
        }
        debug_assert!(self.tokens_sum > 0);
        // ms / tokens ≤ (Σms / Σtokens) × (100 + X) / 100, multiplied out: < 2^200.
        let tolerance = 100 + percent as u128;
        let left = (elapsed_ms as u128)
            .checked_mul(self.tokens_sum)
            .and_then(|v| v.checked_mul(100));
        let right = (tokens as u128)
            .checked_mul(self.ms_sum)
            .and_then(|v| v.checked_mul(tolerance));
        if let (Some(left), Some(right)) = (left, right) {
            return left <= right; // the common case fits u128: the same exact test
        }
        let left = U256::from(elapsed_ms) * U256::from(self.tokens_sum) * U256::from(100u32);
        let right = U256::from(tokens) * U256::from(self.ms_sum) * U256::from(tolerance);
        left <= right
    }

    /// Adds a passing report (tokens > 0) of `user`: first the user's oldest reports
    /// go while it holds `user_max` (so it holds at most that many after), then the
    /// window's oldest beyond `window`.
    pub fn record(&mut self, user: AccountIdx, elapsed_ms: u64, tokens: u64, limits: WindowLimits) {
        debug_assert!(tokens > 0);
        let user_max = limits.user_max.max(1);
        while self.per_user.get(&user).is_some_and(|&n| n >= user_max) {
            // O(Z) at most, only for a user at its share: the window is small.
            let Some(at) = self.reports.iter().position(|r| r.0 == user) else {
                debug_assert!(false, "per_user counts a report that is not there");
                break;
            };
            self.remove_at(at);
        }
        self.reports.push_back((user, elapsed_ms, tokens));
        self.ms_sum += elapsed_ms as u128;
        self.tokens_sum += tokens as u128;
        *self.per_user.entry(user).or_default() += 1;
        while self.reports.len() > limits.window.max(1) as usize {
            self.remove_at(0);
        }
        debug_assert!(self.reports.len() <= limits.window.max(1) as usize);
        debug_assert!(self.per_user.get(&user).is_some_and(|&n| n <= user_max));
        debug_assert_eq!(
            self.per_user.values().map(|&n| n as usize).sum::<usize>(),
            self.reports.len()
        );
        debug_assert_eq!(
            self.ms_sum,
            self.reports.iter().map(|r| r.1 as u128).sum::<u128>()
        );
    }

    /// Removes the report at `at` (an index into `reports`), keeping the sums and
    /// the per-user counts.
    fn remove_at(&mut self, at: usize) {
        let Some((user, ms, tokens)) = self.reports.remove(at) else {
            return;
        };
        self.ms_sum -= ms as u128;
        self.tokens_sum -= tokens as u128;
        if let Some(n) = self.per_user.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&user);
            }
        }
    }

    /// Invariants (tests only; O(Z)): the sums and per-user counts match the
    /// reports, no user above `user_max`, every report with tokens.
    pub fn check(&self, user_max: u32) {
        let (mut ms, mut tokens) = (0u128, 0u128);
        let mut counts: BTreeMap<AccountIdx, u32> = BTreeMap::new();
        for &(user, r_ms, r_tokens) in &self.reports {
            assert!(r_tokens > 0, "a speed report without tokens");
            ms += r_ms as u128;
            tokens += r_tokens as u128;
            *counts.entry(user).or_default() += 1;
        }
        assert_eq!(
            (ms, tokens),
            (self.ms_sum, self.tokens_sum),
            "speed sums drifted"
        );
        assert_eq!(counts, self.per_user, "speed per-user counts drifted");
        assert!(
            counts.values().all(|&n| n <= user_max.max(1)),
            "a user above speed_window_user_reports_max ({user_max}) in a speed window"
        );
    }

    /// Reports of `user` in the window.
    pub fn reports_of(&self, user: AccountIdx) -> u32 {
        self.per_user.get(&user).copied().unwrap_or(0)
    }

    /// Reports in the window (at most `speed_window_reports`).
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// (Σms, Σtokens) over the window.
    pub fn sums(&self) -> (u128, u128) {
        (self.ms_sum, self.tokens_sum)
    }

    /// Whether the window holds no report.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }
}

/// R-PERF-1: the prompt size class of a report: the bit length of `prompt_tokens`
/// (0 for 0 tokens, 1 for 1, 2 for 2..=3, 3 for 4..=7, ..., 64 for 2^63 and above),
/// so that reports in one class have prompts within a factor of two.
pub fn prompt_class(prompt_tokens: u64) -> u8 {
    let class = (u64::BITS - prompt_tokens.leading_zeros()) as u8;
    debug_assert!(class <= 64);
    debug_assert!(prompt_tokens == 0 || prompt_tokens >> (class - 1) == 1);
    class
}

/// What a passing report measured, as the engine judges it (R-REPORT-3). The
/// caller has checked `ttft_ms <= elapsed_ms` and `tokens > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// From the query to the whole answer, ms.
    pub elapsed_ms: u64,
    /// To the first token, ms.
    pub ttft_ms: u64,
    /// Completion tokens.
    pub tokens: u64,
    /// Prompt tokens (its size class picks the first-token window).
    pub prompt_tokens: u64,
}

impl Timing {
    /// Whether the report's time is split in its two parts: false for a whole
    /// answer (`ttft_ms == elapsed_ms` with more than one token).
    pub fn is_split(&self) -> bool {
        self.tokens <= 1 || self.ttft_ms < self.elapsed_ms
    }

    /// The generation part: (ms after the first token, tokens after the first), or
    /// `None` when there is no token after the first (nothing to judge).
    pub fn generation(&self) -> Option<(u64, u64)> {
        debug_assert!(self.ttft_ms <= self.elapsed_ms);
        let tokens = self.tokens.checked_sub(1).filter(|&t| t > 0)?;
        Some((self.elapsed_ms - self.ttft_ms, tokens))
    }
}

/// R-PERF-1: the verdict on a passing report's speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the tolerance on both parts (or too few reports to judge).
    Fast,
    /// The generation (ms per token after the first) was too slow.
    SlowGeneration,
    /// The time to the first token was too slow for the prompt's size class.
    SlowFirstToken,
}

/// One model's speed windows: generation, and time to the first token per prompt
/// size class (classes appear with their first report; at most 65).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct ModelSpeed {
    /// The generation window: (ms, tokens) after the first token.
    pub generation: SpeedWindow,
    /// The first-token windows by prompt size class (`prompt_class`).
    pub first_token: std::collections::BTreeMap<u8, SpeedWindow>,
}

impl ModelSpeed {
    /// Invariants of both windows (tests only), see `SpeedWindow::check`.
    pub fn check(&self, user_max: u32) {
        self.generation.check(user_max);
        for window in self.first_token.values() {
            window.check(user_max);
        }
    }

    /// Judges a passing report: the generation first, then the first token.
    pub fn judge(&self, timing: &Timing, percent: u32, reports_min: u32) -> Verdict {
        debug_assert!(timing.tokens > 0 && timing.ttft_ms <= timing.elapsed_ms);
        if !timing.is_split() {
            return self.judge_whole(timing, percent, reports_min);
        }
        if let Some((ms, tokens)) = timing.generation() {
            if !self.generation.passes(ms, tokens, percent, reports_min) {
                return Verdict::SlowGeneration;
            }
        }
        let class = prompt_class(timing.prompt_tokens);
        let first_token_passes = self
            .first_token
            .get(&class)
            .is_none_or(|window| window.passes(timing.ttft_ms, 1, percent, reports_min));
        if first_token_passes {
            Verdict::Fast
        } else {
            Verdict::SlowFirstToken
        }
    }

    /// A whole answer against the class's first-token mean plus the generation
    /// mean for its other tokens (module doc), in 256-bit arithmetic: at most
    /// 2^64 · 2^7 · 2^32 · 2^96 on the left, below 2^227 on the right.
    fn judge_whole(&self, timing: &Timing, percent: u32, reports_min: u32) -> Verdict {
        debug_assert!(timing.tokens > 1 && timing.ttft_ms == timing.elapsed_ms);
        let first_token = self.first_token.get(&prompt_class(timing.prompt_tokens));
        let Some(first_token) = first_token else {
            return Verdict::Fast;
        };
        let min = reports_min as usize;
        if first_token.is_empty()
            || first_token.len() < min
            || self.generation.is_empty()
            || self.generation.len() < min
        {
            return Verdict::Fast;
        }
        let (ttft_sum, count) = first_token.sums();
        let (gen_ms_sum, gen_tokens_sum) = self.generation.sums();
        debug_assert!(count > 0 && gen_tokens_sum > 0);
        let left = U256::from(timing.elapsed_ms)
            * U256::from(100u32)
            * U256::from(count)
            * U256::from(gen_tokens_sum);
        let expected = U256::from(ttft_sum) * U256::from(gen_tokens_sum)
            + U256::from(timing.tokens - 1) * U256::from(gen_ms_sum) * U256::from(count);
        let right = expected * U256::from(100 + percent as u128);
        if left <= right {
            Verdict::Fast
        } else {
            Verdict::SlowGeneration
        }
    }

    /// Adds a report `user` marked pass (tokens > 0) to both windows; a whole
    /// answer (not split) joins neither, nor does a report whose generation claims
    /// more than `limits.tokens_per_s_max` tokens a second (R-PERF-1: not believed;
    /// its first token is not believed either). Returns whether it joined.
    pub fn record(&mut self, user: AccountIdx, timing: &Timing, limits: WindowLimits) -> bool {
        debug_assert!(timing.tokens > 0);
        if !timing.is_split() {
            return false;
        }
        let generation = timing.generation();
        if let Some((ms, tokens)) = generation {
            if !believable(ms, tokens, limits.tokens_per_s_max) {
                return false;
            }
        }
        if let Some((ms, tokens)) = generation {
            self.generation.record(user, ms, tokens, limits);
        }
        self.first_token
            .entry(prompt_class(timing.prompt_tokens))
            .or_default()
            .record(user, timing.ttft_ms, 1, limits);
        debug_assert!(self.first_token.len() <= 65);
        true
    }
}

/// R-PERF-1: whether `tokens` generated in `ms` is at most `tokens_per_s_max` tokens a
/// second: `tokens × 1000 ≤ ms × tokens_per_s_max`, exact (both sides below 2^128).
pub fn believable(ms: u64, tokens: u64, tokens_per_s_max: u64) -> bool {
    (tokens as u128) * 1_000 <= (ms as u128) * (tokens_per_s_max as u128)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window of `window` reports, with no per-user share and no speed bound
    /// (the judging tests' setting: one user, any figures).
    fn lim(window: u32) -> WindowLimits {
        WindowLimits {
            window,
            user_max: u32::MAX,
            tokens_per_s_max: u64::MAX,
        }
    }

    fn timing(elapsed_ms: u64, ttft_ms: u64, tokens: u64, prompt_tokens: u64) -> Timing {
        Timing {
            elapsed_ms,
            ttft_ms,
            tokens,
            prompt_tokens,
        }
    }

    #[test]
    fn r_perf_1_prompt_classes_are_powers_of_two() {
        assert_eq!(prompt_class(0), 0);
        assert_eq!(prompt_class(1), 1);
        assert_eq!(prompt_class(2), 2);
        assert_eq!(prompt_class(3), 2);
        assert_eq!(prompt_class(4), 3);
        assert_eq!(prompt_class(1_023), 10);
        assert_eq!(prompt_class(1_024), 11);
        assert_eq!(prompt_class(1_523), 11);
        assert_eq!(prompt_class(u64::MAX), 64);
    }

    #[test]
    fn r_perf_1_generation_part_excludes_the_first_token() {
        assert_eq!(timing(100, 40, 7, 0).generation(), Some((60, 6)));
        assert_eq!(timing(100, 100, 7, 0).generation(), Some((0, 6)));
        assert_eq!(timing(100, 40, 1, 0).generation(), None);
        assert_eq!(timing(100, 40, 0, 0).generation(), None);
        assert_eq!(
            timing(u64::MAX, 0, u64::MAX, 0).generation(),
            Some((u64::MAX, u64::MAX - 1))
        );
    }

    #[test]
    fn r_perf_1_slow_first_token_of_a_long_prompt_is_not_slowness() {
        // Issue 27 case 9: short prompts answer their first token in 100 ms and
        // generate 10 ms per token. A 1,523-token prompt takes 1,600 ms to its first
        // token and generates at the same rate: judged against its own class, fast.
        let mut speed = ModelSpeed::default();
        for _ in 0..10 {
            speed.record(0, &timing(100 + 10 * 40, 100, 41, 20), lim(100));
            speed.record(0, &timing(1_500 + 10 * 3, 1_500, 4, 1_400), lim(100));
        }
        let long = timing(1_600 + 10 * 3, 1_600, 4, 1_523);
        assert_eq!(speed.judge(&long, 50, 10), Verdict::Fast);
        // The same first token for a short prompt is slow.
        let short = timing(1_600 + 10 * 3, 1_600, 4, 20);
        assert_eq!(speed.judge(&short, 50, 10), Verdict::SlowFirstToken);
        // A slow generation is slow whatever the prompt.
        let slow = timing(1_600 + 30 * 3, 1_600, 4, 1_523);
        assert_eq!(speed.judge(&slow, 50, 10), Verdict::SlowGeneration);
        // Exactly X = 50 % above the generation mean (10 ms per token) passes.
        let edge = timing(1_600 + 15 * 3, 1_600, 4, 1_523);
        assert_eq!(speed.judge(&edge, 50, 10), Verdict::Fast);
        let over = timing(1_600 + 15 * 3 + 1, 1_600, 4, 1_523);
        assert_eq!(speed.judge(&over, 50, 10), Verdict::SlowGeneration);
    }

    #[test]
    fn r_perf_1_each_part_passes_below_the_minimum_of_its_class() {
        let mut speed = ModelSpeed::default();
        for _ in 0..3 {
            speed.record(0, &timing(110, 100, 2, 8), lim(100));
        }
        // Another class has no reports: its first-token test passes.
        assert_eq!(
            speed.judge(&timing(10_010, 10_000, 2, 9_000), 0, 3),
            Verdict::Fast
        );
        assert_eq!(
            speed.judge(&timing(10_010, 10_000, 2, 8), 0, 3),
            Verdict::SlowFirstToken
        );
        assert_eq!(
            speed.judge(&timing(10_010, 10_000, 2, 8), 0, 4),
            Verdict::Fast
        );
        // One token: no generation part; ttft = elapsed: a zero generation time.
        assert_eq!(speed.judge(&timing(100, 100, 1, 8), 0, 3), Verdict::Fast);
        assert_eq!(speed.judge(&timing(100, 100, 5, 8), 0, 3), Verdict::Fast);
    }

    #[test]
    fn r_perf_1_a_whole_answer_is_judged_against_both_means_and_joins_neither() {
        let mut speed = ModelSpeed::default();
        for _ in 0..3 {
            // Class 11 (1,024..=2,047 prompt tokens): first token in 1,000 ms, then
            // 10 ms per token.
            speed.record(0, &timing(1_100, 1_000, 11, 1_500), lim(100));
        }
        let before = speed.clone();
        // 1,000 + 10 × 10 = 1,100 ms expected for 11 tokens; X = 50 %: 1,650 passes.
        assert_eq!(
            speed.judge(&timing(1_650, 1_650, 11, 1_523), 50, 3),
            Verdict::Fast
        );
        assert_eq!(
            speed.judge(&timing(1_651, 1_651, 11, 1_523), 50, 3),
            Verdict::SlowGeneration
        );
        speed.record(0, &timing(1_650, 1_650, 11, 1_523), lim(100));
        assert_eq!(speed, before, "a whole answer joins no window");
        // Without reports in its class, it passes.
        assert_eq!(
            speed.judge(&timing(99_999, 99_999, 11, 20), 50, 3),
            Verdict::Fast
        );
        let extreme = timing(u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        speed.record(
            0,
            &timing(u64::MAX, u64::MAX - 1, u64::MAX, u64::MAX),
            lim(3),
        );
        let _ = speed.judge(&extreme, u32::MAX, 1);
    }

    #[test]
    fn r_perf_1_extreme_figures_never_overflow() {
        let mut speed = ModelSpeed::default();
        for _ in 0..4 {
            speed.record(0, &timing(u64::MAX, u64::MAX, u64::MAX, u64::MAX), lim(3));
            speed.record(0, &timing(u64::MAX, 0, u64::MAX, u64::MAX), lim(3));
            speed.record(0, &timing(u64::MAX, 1, 2, 0), lim(3));
        }
        assert_eq!(speed.generation.len(), 3);
        for t in [
            timing(u64::MAX, u64::MAX, u64::MAX, u64::MAX),
            timing(u64::MAX, 0, 2, u64::MAX),
            timing(u64::MAX, u64::MAX, 1, 0),
            timing(0, 0, 1, 0),
        ] {
            for percent in [0, 50, u32::MAX] {
                let _ = speed.judge(&t, percent, 1);
            }
        }
        // The generation window is (0, 2^64 - 2), (2^64 - 1, 2^64 - 2), (2^64 - 2, 1):
        // about 1 ms per token, so 2^64 - 1 ms for one token is slow, and a token in
        // 1 ms is not.
        assert_eq!(
            speed.judge(&timing(u64::MAX, 0, 2, 5), 0, 1),
            Verdict::SlowGeneration
        );
        assert_eq!(speed.judge(&timing(1, 0, 2, 5), 0, 1), Verdict::Fast);
    }

    #[test]
    fn r_perf_1_gate_passes_until_min_then_compares_to_mean() {
        let mut window = SpeedWindow::default();
        assert!(window.passes(1_000_000, 1, 50, 3));
        for _ in 0..3 {
            window.record(0, 100, 10, lim(5)); // 10 ms per token
        }
        assert!(window.passes(150, 10, 50, 3)); // exactly 50 % slower
        assert!(!window.passes(151, 10, 50, 3));
        for _ in 0..10 {
            window.record(0, 200, 10, lim(5));
        }
        assert_eq!(window.len(), 5);
        assert!(window.passes(300, 10, 50, 3)); // the mean moved to 20 ms
    }

    #[test]
    fn r_perf_1_exact_at_the_threshold_without_rounding() {
        // Issue 13: 3 reports of 1 ms for 3 tokens (1/3 ms per token), X = 50 %:
        // 3 ms for 6 tokens is exactly 1.5 × the mean and passes; 1 ms more fails.
        let mut window = SpeedWindow::default();
        for _ in 0..3 {
            window.record(0, 1, 3, lim(3));
        }
        assert!(window.passes(3, 6, 50, 3));
        assert!(!window.passes(4, 6, 50, 3));
    }

    #[test]
    fn r_perf_1_mean_is_token_weighted() {
        // 1 ms for 1 token and 99 ms for 99 tokens: Σms / Σtokens = 1 ms per token
        // (an unweighted mean of speeds would also say 1; make them differ).
        let mut window = SpeedWindow::default();
        window.record(0, 10, 1, lim(10)); // 10 ms per token, 1 token
        window.record(0, 90, 90, lim(10)); // 1 ms per token, 90 tokens
                                           // Token-weighted mean: 100 / 91 ms per token; with X = 0, 100 ms for 91 passes
                                           // and 101 ms fails, while the unweighted mean (5.5 ms) would pass both.
        assert!(window.passes(100, 91, 0, 2));
        assert!(!window.passes(101, 91, 0, 2));
        // Extremes never overflow.
        window.record(0, u64::MAX, u64::MAX, lim(10));
        // Extremes never overflow: the mean is now just above 1 ms per token.
        assert!(window.passes(u64::MAX, u64::MAX, 0, 1));
        assert!(!window.passes(u64::MAX, 1, 0, 1));
        assert!(!window.passes(u64::MAX, 1, u32::MAX, 1));
    }

    /// Issue 27 (outsider finding, R-PERF-1): one user's many absurd reports hold at
    /// most `user_max` places in the window; its newest replace its oldest, and the
    /// others' reports stay.
    #[test]
    fn r_perf_1_one_user_holds_at_most_its_share_of_the_window() {
        let limits = WindowLimits {
            window: 100,
            user_max: 10,
            tokens_per_s_max: u64::MAX,
        };
        let mut window = SpeedWindow::default();
        // 3 honest users, 30 reports each at 20 ms per token (each keeps 10).
        for round in 0..30 {
            for user in 1..=3 {
                window.record(user, 400 + round % 2, 20, limits);
            }
        }
        assert_eq!(window.len(), 30);
        assert!(window.passes(20 * 20, 20, 0, 10));
        // The poisoner: 1,000 reports of 1 ms for 20 tokens.
        for _ in 0..1_000 {
            window.record(9, 1, 20, limits);
        }
        assert_eq!(window.reports_of(9), 10);
        assert_eq!(window.len(), 40);
        for user in 1..=3 {
            assert_eq!(window.reports_of(user), 10);
        }
        // The mean fell by the poisoner's share only (a quarter here: 15.0 ms per
        // token instead of 20): honest reports at the old mean still pass at X = 50 %.
        assert!(window.passes(20 * 20, 20, 50, 10));
        // Without the share (one window of 100), the same flood took every place.
        let mut unbounded = SpeedWindow::default();
        let open = WindowLimits {
            user_max: u32::MAX,
            ..limits
        };
        for round in 0..30 {
            for user in 1..=3 {
                unbounded.record(user, 400 + round % 2, 20, open);
            }
        }
        for _ in 0..1_000 {
            unbounded.record(9, 1, 20, open);
        }
        assert_eq!(unbounded.reports_of(9), 100);
        assert!(!unbounded.passes(20 * 20, 20, 50, 10), "poisoned");
        // A share above the window is the window.
        let mut small = SpeedWindow::default();
        for _ in 0..10 {
            small.record(
                1,
                10,
                1,
                WindowLimits {
                    window: 3,
                    ..limits
                },
            );
        }
        assert_eq!(small.len(), 3);
    }

    #[test]
    fn r_perf_1_a_report_faster_than_tokens_per_s_max_joins_no_window() {
        let limits = WindowLimits {
            window: 100,
            user_max: 100,
            tokens_per_s_max: 1_000,
        };
        assert!(believable(1, 1, 1_000), "1,000 tokens a second exactly");
        assert!(!believable(1, 2, 1_000));
        assert!(!believable(0, 1, u64::MAX), "no time at all");
        assert!(believable(u64::MAX, u64::MAX, u64::MAX));
        let mut speed = ModelSpeed::default();
        // Elapsed 1 ms, ttft 0, 20 tokens: 19 tokens in 1 ms.
        assert!(!speed.record(7, &timing(1, 0, 20, 10), limits));
        assert_eq!(speed, ModelSpeed::default(), "joins neither window");
        assert!(speed.record(7, &timing(400, 20, 20, 10), limits));
        assert_eq!(speed.generation.len(), 1);
        assert_eq!(
            speed
                .first_token
                .get(&prompt_class(10))
                .map(SpeedWindow::len),
            Some(1)
        );
        // One token: no generation part to believe or not; the first token joins.
        assert!(speed.record(7, &timing(0, 0, 1, 10), limits));
        assert_eq!(speed.generation.len(), 1);
    }
}
