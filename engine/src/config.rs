//! Market parameters and limits (MarketConfig). Every limit carries its unit last
//! and has a sane default; `validate` refuses a configuration that cannot work.

use crate::types::{Address, ModelId, Unit, WEI_PER_MOR};
use bincode::{Decode, Encode};

/// R-PERF-3: what a fail report does to the provider's credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum FailPolicy {
    /// Any fail means no credit (default).
    NoCredit,
    /// A fail withholds credit only if the user's balance exceeds the provider's.
    BalanceWeighted,
}

/// R-CONTRACT-3: what happens to the part of a day's compute emission not spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum UnusedBudget {
    /// Kept in the contract's pool for later days (default).
    Carry,
    /// Burned at the day's end.
    Burn,
}

/// R-CONTRACT-5: where the day's compute budget B comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum BudgetPolicy {
    /// B = `compute_budget_wei_per_day`.
    Fixed,
    /// B = 1 % of the contract's MOR balance at the end of the prior day.
    PoolPercent,
}

/// One model of the operator's catalog.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ModelSpec {
    /// The model's id (`[[market.models]] id`).
    pub id: ModelId,
    /// BLAKE3 of the model's weights; providers must present the same hash.
    pub weights_hash: [u8; 32],
    /// What its output is counted in (SPEC section 8: tokens).
    pub unit: Unit,
}

/// R-SESSION-1: the largest `ticket_start_timeout_ms`, a day in ms.
pub const TICKET_START_TIMEOUT_MS_LIMIT: u64 = 86_400_000;

/// The market's parameters (R-QUOTA, R-RFC, R-MATCH, R-PERF, R-CONTRACT, R-CHAIN,
/// R-SESSION): fixed in a data directory at creation, the run-time ones changed by
/// the operator's `SetParams`. `docs/configuration.md` gives every key's default,
/// unit, bound and SPEC id; `validate` refuses what the engine cannot run.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct MarketConfig {
    /// Unix ms of block 0's start (R-TIME-1).
    pub genesis_ms: u64,
    /// The only address allowed to send balance and parameter updates.
    pub operator: Address,
    /// The catalog (ids unique, at most 65,535).
    pub models: Vec<ModelSpec>,

    // Section 4: access rate.
    /// S: the MOR supply, wei (R-QUOTA-1); above 0.
    pub mor_supply_wei: u128,
    /// B under the fixed policy: the day's compute budget, wei (R-QUOTA-1, R-CONTRACT-5).
    pub compute_budget_wei_per_day: u128,
    /// P: MOR wei per 1,000 tokens.
    pub token_price_wei_per_1000: u128,
    /// Where B comes from (R-CONTRACT-5).
    pub budget_policy: BudgetPolicy,

    // Section 5: flow and limits.
    /// RFCs queued per model; one more is refused `overloaded` (R-RFC-2).
    pub rfc_queue_depth_max: u32,
    /// The longest RFC expiry accepted, ms after now (R-RFC-1).
    pub rfc_ttl_max_ms: u64,
    /// The retry-after given with an `overloaded` RFC, ms.
    pub rfc_retry_after_ms: u32,
    /// The largest TokenMax an RFC may ask, tokens (R-RFC-1).
    pub tokens_max_limit: u64,
    /// A probe unanswered this long counts as a dead provider, ms (R-MATCH-2).
    pub probe_timeout_ms: u64,
    /// Providers probed for one RFC before it fails (R-MATCH-2).
    pub probe_tries_max: u8,
    /// How long an open session lives, ms (R-MATCH-6).
    pub session_ttl_ms: u64,
    /// Open sessions in the market, at most 2^24 − 1 (slot bits).
    pub sessions_open_max: u32,
    /// Open RFCs in the market, at most 2^24 − 1 (slot bits).
    pub rfcs_open_max: u32,
    /// Accounts the engine holds.
    pub accounts_max: u32,
    /// Provider places (unfunded registrations are not counted, R-PROV-2).
    pub providers_max: u32,
    /// Offers in one registration, 1 to the wire's 64 (R-PROV-1).
    pub offers_per_provider_max: u32,
    /// Concurrent sessions one offer may declare (R-PROV-1).
    pub offer_capacity_max: u32,
    /// A provider's endpoint, bytes, 1 to the wire's 255 (R-PROV-1).
    pub endpoint_bytes_max: u32,
    /// Entries in one `BalanceUpdate`, 1 to the wire's 100,000.
    pub balance_entries_max: u32,

    // Section 6: quality.
    /// X: a report may be at most this many percent slower than the model's mean.
    pub speed_tolerance_percent: u32,
    /// Z: how many passing reports the model's mean covers.
    pub speed_window_reports: u32,
    /// Below this many passing reports the speed test passes.
    pub speed_reports_min: u32,
    /// R-PERF-1: reports of one user in a speed window, at most (its newest
    /// replaces its oldest), so that no user moves a model's speed reference by more
    /// than its share of the window (1..=speed_window_reports is meaningful; larger
    /// is the window itself).
    pub speed_window_user_reports_max: u32,
    /// R-PERF-1: a passing report whose generation claims more completion tokens per
    /// second than this joins no speed window (it is still judged and credited as
    /// the window says): an absurd report cannot drag the reference down.
    pub tokens_per_s_max: u64,
    /// What a fail report does to the credit (R-PERF-3).
    pub fail_policy: FailPolicy,
    /// How many of a provider's most recent reports its penalty count covers.
    pub penalty_window_reports: u32,
    /// Penalty points within the window that suspend a provider.
    pub penalty_points_suspend: u32,
    /// How long a suspension lasts, ms (R-PERF-4).
    pub suspension_ms: u64,
    /// R-PERF-4: distinct users whose penalty points, within the window, a
    /// suspension needs (so that no single user can suspend a provider). 3.
    pub suspend_users_min: u32,
    /// R-PROV-2: unfunded registrations kept, at most (oldest evicted first); they
    /// never count toward `providers_max`. 10,000.
    pub unfunded_registrations_max: u32,
    /// R-PROV-2: how long an unfunded registration is kept, ms. 600,000.
    pub unfunded_registration_ttl_ms: u64,

    // Section 7: the Compute Contract.
    /// The daily MOR emission, wei (at most 10^12 MOR a day).
    pub emission_wei_per_day: u128,
    /// Share of the daily emission that goes to the Compute Contract, in basis points.
    pub compute_share_bps: u32,
    /// What happens to the unspent part of a day's budget (R-CONTRACT-3).
    pub unused_budget: UnusedBudget,
    /// Days from genesis the bootstrap bonus is paid (R-CONTRACT-4).
    pub bootstrap_days: u64,
    /// Bootstrap slots: the first providers to earn a credited session (R-CONTRACT-4).
    pub bootstrap_providers_max: u32,
    /// Extra share of the day's total emission for bootstrap providers, in bps.
    pub bootstrap_share_bps: u32,
    /// Daily spend may exceed the day's emission by this share of the unused pool, bps.
    pub pool_daily_spend_bps: u32,

    // R-CHAIN-1: settlement with the Compute Contract on a chain.
    /// Blocks per settlement epoch; must divide a day (7,200 blocks). 300: one hour.
    pub settlement_epoch_blocks: u64,
    /// Settlement records the engine keeps (older epochs can no longer be exported).
    pub settlements_kept_max: u32,
    /// EIP-712 domain of the settlements: the chain's id and the contract's address.
    pub settlement_chain_id: u64,
    /// The Compute Contract's address in that domain (zero: not deployed yet).
    pub settlement_contract: Address,
    // Section 3: money.
    /// R-MONEY-1: the highest bid a provider may make, wei per token (default 10^24,
    /// a million MOR per token: a price no real market reaches, yet far from overflow).
    /// An RFC is admitted only if TokenMax × this bound fits u128, so that no
    /// session's credit can overflow whatever provider it is matched with.
    pub bid_wei_per_token_max: u128,

    // R-SESSION-1 / R-REPORT-3 (issue 27 cases 4, 9).
    /// A session whose provider has not signed its start (`SessionStart`) within this
    /// many ms of its ticket is closed without credit and without penalty, and its
    /// capacity freed. 30,000.
    pub ticket_start_timeout_ms: u64,
    /// Open sessions plus RFCs not yet answered (queued or being probed) one user
    /// may hold; an RFC past it is refused (`user_sessions_full`). 16.
    pub user_sessions_open_max: u32,
    /// The most prompt tokens a report may carry (`prompt_tokens_over_max`
    /// beyond). 2^24 = 16,777,216, above any model's context today.
    pub prompt_tokens_max: u64,
}

/// The longest of the market's request-scale times (`rfc_ttl_max_ms`,
/// `probe_timeout_ms`, `session_ttl_ms`, `rfc_retry_after_ms`): a day in ms. Longer
/// is a figure in the wrong unit, not a market that works.
pub const MARKET_TIME_MS_LIMIT: u64 = 86_400_000;
/// The longest `suspension_ms`: 30 days in ms.
pub const SUSPENSION_MS_LIMIT: u64 = 30 * 86_400_000;
/// The fewest `accounts_max`: the operator's account (created at genesis, R-ID-4)
/// and one user's; below it no request can ever be served and the engine cannot
/// even be created.
pub const ACCOUNTS_MAX_MIN: u32 = 2;

/// R-MONEY-1: the default `bid_wei_per_token_max`, 10^24 wei (a million MOR) per token.
pub const BID_WEI_PER_TOKEN_MAX_DEFAULT: u128 = 1_000_000_000_000_000_000_000_000;

/// R-MONEY-1: bound on `emission_wei_per_day` (10^12 MOR a day, far above any real
/// emission) so that the ledger's cumulative emission fits u128 for 10^8 days.
pub const EMISSION_WEI_PER_DAY_LIMIT: u128 = 1_000_000_000_000_000_000_000_000_000_000;

/// R-PERF-1: the default `speed_window_user_reports_max` (a tenth of the default
/// window of 100, and the default `speed_reports_min`, so that a market of one user
/// still judges speed).
pub const SPEED_WINDOW_USER_REPORTS_MAX_DEFAULT: u32 = 10;
/// R-PERF-1: the default `tokens_per_s_max` (several times the fastest public
/// inference services' generation speed).
pub const TOKENS_PER_S_MAX_DEFAULT: u64 = 10_000;

/// R-PERF-4: the default `suspend_users_min`.
pub const SUSPEND_USERS_MIN_DEFAULT: u32 = 3;
/// R-PROV-2: the default `unfunded_registrations_max`.
pub const UNFUNDED_REGISTRATIONS_MAX_DEFAULT: u32 = 10_000;
/// R-PROV-2: the largest `unfunded_registrations_max` (a registration holds up to
/// 64 offers and a 255-byte endpoint, about 5 KB: a million is 5 GB).
pub const UNFUNDED_REGISTRATIONS_MAX_LIMIT: u32 = 1_000_000;
/// R-PROV-2: the default `unfunded_registration_ttl_ms` (10 minutes).
pub const UNFUNDED_REGISTRATION_TTL_MS_DEFAULT: u64 = 600_000;
/// R-PROV-2: the longest `unfunded_registration_ttl_ms` (a day).
pub const UNFUNDED_REGISTRATION_TTL_MS_LIMIT: u64 = 86_400_000;

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            genesis_ms: 0,
            operator: Address::default(),
            models: Vec::new(),
            mor_supply_wei: 10_000_000 * WEI_PER_MOR,
            compute_budget_wei_per_day: 3_000 * WEI_PER_MOR,
            token_price_wei_per_1000: WEI_PER_MOR / 10_000,
            budget_policy: BudgetPolicy::Fixed,
            rfc_queue_depth_max: 100_000,
            rfc_ttl_max_ms: 300_000,
            rfc_retry_after_ms: 1_000,
            tokens_max_limit: 1_000_000,
            probe_timeout_ms: 2_000,
            probe_tries_max: 3,
            session_ttl_ms: 600_000,
            sessions_open_max: 4_000_000,
            rfcs_open_max: 4_000_000,
            accounts_max: 10_000_000,
            providers_max: 100_000,
            offers_per_provider_max: 64,
            offer_capacity_max: 100_000,
            endpoint_bytes_max: 255,
            balance_entries_max: 100_000,
            speed_tolerance_percent: 50,
            speed_window_reports: 100,
            speed_reports_min: 10,
            speed_window_user_reports_max: SPEED_WINDOW_USER_REPORTS_MAX_DEFAULT,
            tokens_per_s_max: TOKENS_PER_S_MAX_DEFAULT,
            fail_policy: FailPolicy::NoCredit,
            penalty_window_reports: 20,
            penalty_points_suspend: 5,
            suspension_ms: 60_000,
            suspend_users_min: SUSPEND_USERS_MIN_DEFAULT,
            unfunded_registrations_max: UNFUNDED_REGISTRATIONS_MAX_DEFAULT,
            unfunded_registration_ttl_ms: UNFUNDED_REGISTRATION_TTL_MS_DEFAULT,
            emission_wei_per_day: 14_400 * WEI_PER_MOR,
            compute_share_bps: 2_400,
            unused_budget: UnusedBudget::Carry,
            bootstrap_days: 365,
            bootstrap_providers_max: 100,
            bootstrap_share_bps: 240,
            pool_daily_spend_bps: 100,
            settlement_epoch_blocks: 300,
            settlements_kept_max: 8_760,
            settlement_chain_id: 1,
            settlement_contract: Address::default(),
            bid_wei_per_token_max: BID_WEI_PER_TOKEN_MAX_DEFAULT,
            ticket_start_timeout_ms: 30_000,
            user_sessions_open_max: 16,
            prompt_tokens_max: 1 << 24,
        }
    }
}

impl MarketConfig {
    /// Refuses configurations the engine cannot run, with the reason.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 12] = [
            (self.mor_supply_wei > 0, "mor_supply_wei must be > 0"),
            (
                self.token_price_wei_per_1000 > 0,
                "token_price_wei_per_1000 must be > 0",
            ),
            (
                self.rfc_queue_depth_max > 0,
                "rfc_queue_depth_max must be > 0",
            ),
            (self.probe_tries_max > 0, "probe_tries_max must be > 0"),
            (self.probe_timeout_ms > 0, "probe_timeout_ms must be > 0"),
            (self.session_ttl_ms > 0, "session_ttl_ms must be > 0"),
            (
                self.sessions_open_max as u64 <= crate::types::SLOT_MASK,
                "sessions_open_max must fit the slot bits",
            ),
            (
                self.rfcs_open_max as u64 <= crate::types::SLOT_MASK,
                "rfcs_open_max must fit the slot bits",
            ),
            (
                self.speed_window_reports > 0,
                "speed_window_reports must be > 0",
            ),
            (
                self.penalty_window_reports > 0 && self.penalty_window_reports <= 1024,
                "penalty_window_reports must be 1..=1024",
            ),
            (
                self.compute_share_bps <= 10_000,
                "compute_share_bps must be <= 10000",
            ),
            (
                self.pool_daily_spend_bps <= 10_000,
                "pool_daily_spend_bps must be <= 10000",
            ),
        ];
        for (ok, reason) in checks {
            if !ok {
                return Err(reason.to_string());
            }
        }
        if self.settlement_epoch_blocks == 0
            || !crate::types::BLOCKS_PER_DAY.is_multiple_of(self.settlement_epoch_blocks)
        {
            return Err(format!(
                "settlement_epoch_blocks must divide a day of {} blocks, not {}",
                crate::types::BLOCKS_PER_DAY,
                self.settlement_epoch_blocks
            ));
        }
        if self.settlements_kept_max == 0 {
            return Err("settlements_kept_max must be > 0".to_string());
        }
        self.validate_integrity()?;
        self.validate_usable()?;
        if self.bid_wei_per_token_max == 0 {
            return Err("bid_wei_per_token_max must be > 0".to_string());
        }
        // R-SESSION-1: a zero timeout would close every session at its ticket, and
        // a zero bound would refuse every RFC.
        if self.ticket_start_timeout_ms == 0 {
            return Err("ticket_start_timeout_ms must be > 0".to_string());
        }
        // Bounded like the other times (an outsider set 2^63 - 1). A deadline past
        // session_ttl_ms is allowed: the session's own expiry then comes first.
        if self.ticket_start_timeout_ms > TICKET_START_TIMEOUT_MS_LIMIT {
            return Err(format!(
                "ticket_start_timeout_ms = {} must be <= {TICKET_START_TIMEOUT_MS_LIMIT} (a day)",
                self.ticket_start_timeout_ms
            ));
        }
        if self.user_sessions_open_max == 0 {
            return Err("user_sessions_open_max must be > 0".to_string());
        }
        if self.prompt_tokens_max == 0 {
            return Err("prompt_tokens_max must be > 0".to_string());
        }
        if self.emission_wei_per_day > EMISSION_WEI_PER_DAY_LIMIT {
            return Err(format!(
                "emission_wei_per_day must be <= {EMISSION_WEI_PER_DAY_LIMIT} (10^12 MOR)"
            ));
        }
        // R-CONTRACT-6: parameter sets that would stop the market.
        if self.unused_budget == UnusedBudget::Burn
            && self.budget_policy == BudgetPolicy::PoolPercent
        {
            return Err(
                "unused_budget = burn with budget_policy = pool-percent leaves no \
                 compute budget from the second day: pool-percent takes 1 % of the \
                 contract's balance, and burn empties that balance of everything unspent \
                 each day; use carry, or a fixed budget"
                    .to_string(),
            );
        }
        let mut ids: Vec<ModelId> = self.models.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err("model ids must be unique".to_string());
        }
        if self.models.len() > u16::MAX as usize {
            return Err("too many models".to_string());
        }
        Ok(())
    }

    /// Issue 27's bounds: R-PERF-4 `suspend_users_min`, R-PROV-2 the unfunded
    /// registrations' set, R-CONTRACT-4 `bootstrap_share_bps` (the bonus is emission
    /// the ledger adds up, so it must stay within the emission's bound).
    fn validate_integrity(&self) -> Result<(), String> {
        if self.suspend_users_min == 0 || self.suspend_users_min > self.penalty_window_reports {
            return Err(format!(
                "suspend_users_min must be 1..=penalty_window_reports ({}), not {} \
                 (R-PERF-4: distinct users whose penalty points a suspension needs)",
                self.penalty_window_reports, self.suspend_users_min
            ));
        }
        if self.unfunded_registrations_max == 0
            || self.unfunded_registrations_max > UNFUNDED_REGISTRATIONS_MAX_LIMIT
        {
            return Err(format!(
                "unfunded_registrations_max must be 1..={UNFUNDED_REGISTRATIONS_MAX_LIMIT}, \
                 not {} (R-PROV-2)",
                self.unfunded_registrations_max
            ));
        }
        if self.unfunded_registration_ttl_ms == 0
            || self.unfunded_registration_ttl_ms > UNFUNDED_REGISTRATION_TTL_MS_LIMIT
        {
            return Err(format!(
                "unfunded_registration_ttl_ms must be 1..={UNFUNDED_REGISTRATION_TTL_MS_LIMIT} \
                 (a day), not {} (R-PROV-2)",
                self.unfunded_registration_ttl_ms
            ));
        }
        if self.speed_window_user_reports_max == 0 {
            return Err(format!(
                "speed_window_user_reports_max must be at least 1, not {} (R-PERF-1: \
                 reports of one user in a speed window)",
                self.speed_window_user_reports_max
            ));
        }
        if self.tokens_per_s_max == 0 {
            return Err(format!(
                "tokens_per_s_max must be at least 1, not {} (R-PERF-1: faster reports \
                 join no speed window)",
                self.tokens_per_s_max
            ));
        }
        if self.bootstrap_share_bps > 10_000 {
            return Err(format!(
                "bootstrap_share_bps must be <= 10000, not {} (R-CONTRACT-4)",
                self.bootstrap_share_bps
            ));
        }
        Ok(())
    }

    /// The bounds that keep the market usable (an outside review: each of these at 0
    /// was accepted and left a market that hung every request or could not even be
    /// created): counts and times at least 1, times at most a day (suspensions 30
    /// days). Every reason starts with the field's name and names the bound and the
    /// value, so the router can name its key. Also checked on `SetParams`
    /// (R-OPS-4: a set that would stop the market is refused before it is journaled).
    fn validate_usable(&self) -> Result<(), String> {
        let ranges: [(&str, u64, u64, u64, &str); 11] = [
            (
                "rfc_ttl_max_ms",
                self.rfc_ttl_max_ms,
                1,
                MARKET_TIME_MS_LIMIT,
                "R-RFC-1, a day at most: 0 expires every RFC at once",
            ),
            (
                "probe_timeout_ms",
                self.probe_timeout_ms,
                1,
                MARKET_TIME_MS_LIMIT,
                "R-MATCH-2, a day at most",
            ),
            (
                "session_ttl_ms",
                self.session_ttl_ms,
                1,
                MARKET_TIME_MS_LIMIT,
                "R-MATCH-6, a day at most",
            ),
            (
                "rfc_retry_after_ms",
                self.rfc_retry_after_ms as u64,
                0,
                MARKET_TIME_MS_LIMIT,
                "R-RFC-2, a day at most",
            ),
            (
                "suspension_ms",
                self.suspension_ms,
                0,
                SUSPENSION_MS_LIMIT,
                "R-PERF-4, 30 days at most",
            ),
            (
                "tokens_max_limit",
                self.tokens_max_limit,
                1,
                u64::MAX,
                "R-RFC-1: 0 refuses every RFC",
            ),
            (
                "sessions_open_max",
                self.sessions_open_max as u64,
                1,
                crate::types::SLOT_MASK,
                "0 leaves every request waiting for a session",
            ),
            (
                "rfcs_open_max",
                self.rfcs_open_max as u64,
                1,
                crate::types::SLOT_MASK,
                "0 refuses every RFC",
            ),
            (
                "accounts_max",
                self.accounts_max as u64,
                ACCOUNTS_MAX_MIN as u64,
                u32::MAX as u64,
                "the operator's account and one user's: fewer cannot even create the market",
            ),
            (
                "providers_max",
                self.providers_max as u64,
                1,
                u32::MAX as u64,
                "R-PROV-2: 0 admits no provider",
            ),
            (
                "penalty_points_suspend",
                self.penalty_points_suspend as u64,
                1,
                u32::MAX as u64,
                "R-PERF-4: 0 suspends every provider",
            ),
        ];
        for (field, value, min, max, why) in ranges {
            if value < min {
                return Err(format!(
                    "{field} must be at least {min} ({why}), not {value}"
                ));
            }
            if value > max {
                return Err(format!(
                    "{field} must be at most {max} ({why}), not {value}"
                ));
            }
        }
        Ok(())
    }

    /// The compute share of the daily emission (3,456 MOR with the defaults).
    pub fn compute_emission_wei_per_day(&self) -> u128 {
        debug_assert!(self.compute_share_bps <= 10_000);
        crate::money::mul_div(
            self.emission_wei_per_day,
            self.compute_share_bps as u128,
            10_000,
        )
        .expect("a share of at most 100 % of a u128 fits")
    }
}
