//! Operator configuration for the network layer, the threads and the metrics endpoint.
//!
//! Guarantees: every limit has a documented, sane default (an empty TOML file is a
//! working configuration); every key is named with its unit last; an unknown key is
//! an error naming the key (`deny_unknown_fields`); `validate` rejects values that
//! would break an invariant of the network layer before any thread starts.
//!
//! The sections here (`[network]`, `[threads]`, `[metrics]`) are meant to be embedded
//! by the router's top-level configuration, next to the `[market]` and `[journal]`
//! sections that others own.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Which network backend the gateway threads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// io_uring (default); falls back to mio with a log line when setup fails.
    Uring,
    /// mio (epoll).
    Mio,
}

/// `[network]`: sockets, per-connection limits, queues and io_uring sizes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Address the gateway threads listen on (each with SO_REUSEPORT). 127.0.0.1:7400.
    pub listen: SocketAddr,
    /// `uring` (default) or `mio`.
    pub backend: Backend,
    /// Open connections in the whole process; more are refused with an error frame.
    /// 10_000; at most `CONNECTIONS_MAX_LIMIT` (1,048,576).
    pub connections_max: usize,
    /// Largest frame (header + body) accepted, in bytes. 16 KiB (the wire default).
    pub frame_bytes_max: usize,
    /// Frames of one connection handed to the handler and not yet answered (a command
    /// handed to the engine counts until the engine's reply is queued); past it the
    /// connection is not read (TCP back-pressure). 64.
    pub conn_inflight_frames_max: u32,
    /// Bytes queued for one connection and not yet sent; past it the client, too slow
    /// to read its replies, is disconnected. 1 MiB.
    pub conn_send_bytes_max: usize,
    /// A connection that neither sends nor receives for this long is closed. 300_000 ms.
    pub conn_idle_timeout_ms: u64,
    /// Depth of the bounded queue from the gateways to the engine, in commands. 65_536;
    /// at most `QUEUE_DEPTH_LIMIT` (4,194,304: the queue is allocated whole).
    /// (Read by the router when it builds that queue.)
    pub inbound_queue_depth: usize,
    /// Depth of each gateway's bounded outbox (engine -> gateway), in messages. 65_536;
    /// at most `QUEUE_DEPTH_LIMIT`.
    pub outbound_queue_depth: usize,
    /// Submission queue entries of each gateway's io_uring. 1024.
    pub uring_entries: u32,
    /// Provided buffers in each gateway's buffer ring (a power of two). 512. Times
    /// `uring_buffer_bytes` at most `URING_BUFFER_MEMORY_LIMIT` (1 GiB).
    pub uring_buffers: u16,
    /// Size of each provided receive buffer, in bytes. 16 KiB.
    pub uring_buffer_bytes: u32,
    /// Opt-in: ask for IORING_SETUP_SQPOLL (burns a core). false.
    pub uring_sqpoll: bool,
    /// Ask for IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN (completions are run only
    /// when the gateway waits); false: COOP_TASKRUN | TASKRUN_FLAG. true.
    pub uring_defer_taskrun: bool,
    /// §9: descriptors kept out of `connections_max`'s reach for the journal,
    /// snapshots, the metrics endpoint, rings and listeners. At start the process's
    /// RLIMIT_NOFILE (its soft limit raised to the hard one) minus this bounds the
    /// connections: a larger `connections_max` is lowered to it with a log line naming
    /// both numbers. 256; at least 64.
    pub fds_reserved: usize,
    /// §9, R-PROV-3: a connection that has not logged in this long after it opened is
    /// closed (`login_timeout`). 10_000 ms.
    pub login_timeout_ms: u64,
    /// §9, R-PROV-3: connections whose address holds no MOR and no route (or that
    /// never logged in), at most; past it, and whenever `connections_max` is
    /// reached, the oldest idle one is closed (`evicted`) for the new connection, so
    /// that funded clients always get in. 0: three quarters of `connections_max`.
    /// At most `connections_max`.
    pub connections_unproven_max: usize,
    /// §9: after an accept error (EMFILE, ENFILE, ENOMEM, ENOBUFS), accepting pauses
    /// this long instead of retrying at once. 100 ms; 1..=10_000.
    pub accept_backoff_ms: u64,
    /// §9: accept errors are logged at most once per this interval, with their count.
    /// 10_000 ms; at least 100.
    pub accept_error_log_interval_ms: u64,
    /// R-PROV-3: weights proofs (one signature recovery each) checked per second per
    /// gateway thread for senders holding MOR; past it a registration is refused
    /// `overloaded` with a retry-after. 2_000 (about 6 % of a core); at least 64
    /// (one registration of `offers_per_provider_max` offers must fit).
    pub weights_proofs_per_s: u64,
    /// R-PROV-3: the same for senders without MOR (R-PROV-2 registrations), a budget
    /// of their own so that sybils compete only with one another. 256; at least 64.
    pub weights_proofs_unfunded_per_s: u64,
    /// R-PROV-3, R-QUOTA-5 (issue 27, quota-flood): refusals one connection may be
    /// given by its gateway (before the engine: quota gate, wrong sender, replayed
    /// nonce, not logged in, undecodable frame, ...) within one second; the next one
    /// is answered `too_many_refusals` and the connection is closed, so a client
    /// flooding frames that are all refused stops costing a decode and a reply per
    /// frame. `overloaded` (the router's state, not the client's fault) and the
    /// engine's refusals are not counted. 100 (an honest client is refused a few
    /// times at most); at least 1.
    pub conn_refusals_per_s_max: u32,
    /// R-HA-3 (issue 25): answers kept per address in the reply cache (its most
    /// recent accepted signed messages), so a client that lost its connection before
    /// an answer and sends the same message again gets the original answer instead
    /// of `replay`. 64 (= `conn_inflight_frames_max`'s default: every message one
    /// connection can have unanswered); 1 to `REPLY_CACHE_PER_ADDRESS_LIMIT` (65,536).
    pub reply_cache_per_address: usize,
    /// R-HA-3: answers kept in the reply cache in all, the oldest evicted first.
    /// 65,536: an entry holds its answers unsigned (160 bytes of entry, 336 per
    /// `Message` answer, the eviction order: about 0.6 KiB, 1 KiB with a ticket,
    /// measured by router-core's `reply_cache_cost`), so at most ~64 MiB, and at
    /// 20,000 commands a second it holds the last ~3 s, longer than a failover and a
    /// client's resend. 1 to `REPLY_CACHE_ENTRIES_LIMIT` (16,777,216).
    pub reply_cache_entries_max: usize,
}

/// The largest `network.reply_cache_per_address`.
pub const REPLY_CACHE_PER_ADDRESS_LIMIT: usize = 65_536;
/// The largest `network.reply_cache_entries_max` (~16 GiB of answers at most).
pub const REPLY_CACHE_ENTRIES_LIMIT: usize = 1 << 24;

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            backend: Backend::Uring,
            connections_max: 10_000,
            frame_bytes_max: yellowstone_wire::frame::FRAME_BYTES_MAX_DEFAULT,
            conn_inflight_frames_max: 64,
            conn_send_bytes_max: 1024 * 1024,
            conn_idle_timeout_ms: 300_000,
            inbound_queue_depth: 65_536,
            outbound_queue_depth: 65_536,
            uring_entries: 1024,
            uring_buffers: 512,
            uring_buffer_bytes: 16 * 1024,
            uring_sqpoll: false,
            uring_defer_taskrun: true,
            fds_reserved: 256,
            login_timeout_ms: 10_000,
            connections_unproven_max: 0,
            accept_backoff_ms: 100,
            accept_error_log_interval_ms: 10_000,
            weights_proofs_per_s: 2_000,
            weights_proofs_unfunded_per_s: 256,
            conn_refusals_per_s_max: 100,
            reply_cache_per_address: 64,
            reply_cache_entries_max: 65_536,
        }
    }
}

impl NetworkConfig {
    /// The reply cache's bounds (R-HA-3).
    pub fn reply_cache_config(&self) -> yellowstone_router_core::ReplyCacheConfig {
        yellowstone_router_core::ReplyCacheConfig {
            per_address: self.reply_cache_per_address,
            entries_max: self.reply_cache_entries_max,
        }
    }

    /// `connections_unproven_max` resolved (0: three quarters of `connections_max`),
    /// never above `connections_max`.
    pub fn connections_unproven_max_resolved(&self, connections_max: usize) -> usize {
        let max = if self.connections_unproven_max == 0 {
            connections_max - connections_max / 4
        } else {
            self.connections_unproven_max
        };
        max.clamp(1, connections_max.max(1))
    }
}

/// `[threads]`: how many gateway threads, where they run, and whether they spin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThreadsConfig {
    /// Gateway (network) threads; 0 = automatic (one per core but the engine's, at
    /// least one). 0.
    pub gateway_threads: usize,
    /// Cores to pin the gateway threads to, round robin; empty = automatic. [].
    pub gateway_cores: Vec<usize>,
    /// Core to pin the engine thread to; None = automatic (the last core). None.
    pub engine_core: Option<usize>,
    /// Core to pin the journal and snapshot threads to; None = automatic (the
    /// engine's core: the engine waits on the journal, they rarely run together).
    /// None.
    pub journal_core: Option<usize>,
    /// Where session tickets are signed: "gateway" (default: on the gateway thread
    /// of the provider's connection, in parallel with the other gateways; the least
    /// CPU per session) or "engine" (on the engine thread as it releases the ticket:
    /// for a machine with a single gateway thread that saturates near the maximum
    /// rate, it moves that work to the engine's core for a lower tail latency there,
    /// at about 10 % more router CPU per session, and caps the engine at about 30,000
    /// tickets a second).
    pub ticket_signing: String,
    /// Pin threads at all. true (automatic pinning leaves threads unpinned when the
    /// machine has fewer cores than threads).
    pub pin: bool,
    /// Opt-in busy polling for dedicated cores: loops never block. false.
    pub spin: bool,
}

impl Default for ThreadsConfig {
    fn default() -> Self {
        ThreadsConfig {
            gateway_threads: 0,
            gateway_cores: Vec::new(),
            engine_core: None,
            journal_core: None,
            ticket_signing: "gateway".into(),
            pin: true,
            spin: false,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve metrics at all. true.
    pub enabled: bool,
    /// Address of the `GET /metrics` endpoint. 127.0.0.1:7401.
    pub listen: SocketAddr,
    /// Whole-request deadline of one metrics connection, from its accept (request
    /// head and response), in ms: a client that trickles is closed then. 2_000.
    pub request_timeout_ms: u64,
    /// Largest request head read, in bytes (at least 8 KiB, the HTTP server's floor).
    /// 8 KiB.
    pub request_bytes_max: usize,
    /// Metrics connections served at once. 64. More are answered 503 with
    /// `Retry-After` (as many again at once, each within `request_timeout_ms`); past
    /// that they are closed at once without an answer.
    pub connections_max: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            request_timeout_ms: 2_000,
            request_bytes_max: 8 * 1024,
            connections_max: 64,
        }
    }
}

/// The sections this layer owns, as they appear at the top of the router's TOML.
/// The router's `RouterConfig` may embed these three fields directly instead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySections {
    pub network: NetworkConfig,
    pub threads: ThreadsConfig,
    pub metrics: MetricsConfig,
}

/// A configuration value that would break an invariant, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn check(ok: bool, key: &'static str, reason: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            key,
            reason: reason.to_string(),
        })
    }
}

/// `check`, naming the value given: "must be ..., not VALUE".
fn check_value(
    ok: bool,
    key: &'static str,
    rule: &str,
    value: impl std::fmt::Display,
) -> Result<(), ConfigError> {
    check(ok, key, &format!("{rule}, not {value}"))
}

/// The most of a configured value an error message repeats, in characters (an
/// outsider's 1 MB `identity.operator` / `network.listen` was echoed whole).
pub const ECHO_CHARS_MAX: usize = 64;

/// `value` as an error message quotes it: whole (Debug-quoted) when at most
/// `ECHO_CHARS_MAX` characters, else its first `ECHO_CHARS_MAX` characters quoted,
/// then "... (N bytes)" with its whole length.
pub fn echo(value: &str) -> String {
    match value.char_indices().nth(ECHO_CHARS_MAX) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

/// `text` (an error message quoting its input, e.g. a TOML parse error's source
/// line and its caret line) with every line longer than twice `ECHO_CHARS_MAX`
/// characters cut to its first `ECHO_CHARS_MAX` and "... (N bytes)": the key at a
/// line's start stays, a megabyte value does not.
pub fn clip_lines(text: &str) -> String {
    text.split('\n')
        .map(|line| match line.char_indices().nth(2 * ECHO_CHARS_MAX) {
            None => line.to_string(),
            Some(_) => {
                let cut = line
                    .char_indices()
                    .nth(ECHO_CHARS_MAX)
                    .map_or(line.len(), |(cut, _)| cut);
                format!("{}... ({} bytes)", &line[..cut], line.len())
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The most of the day-scale timeouts (`network.conn_idle_timeout_ms`,
/// `login_timeout_ms`, `accept_error_log_interval_ms`, `metrics.request_timeout_ms`)
/// in ms: a day. Longer is a figure in the wrong unit (and 2^63 overflowed a
/// deadline).
pub const TIMEOUT_MS_LIMIT: u64 = 86_400_000;

/// The largest `network.fds_reserved`: Linux's default `fs.nr_open`, the most
/// descriptors a process can ever have (`run` also needs RLIMIT_NOFILE above it).
pub const FDS_RESERVED_LIMIT: usize = 1 << 20;

/// The largest `network.conn_send_bytes_max`: 1 GiB queued for one connection.
pub const CONN_SEND_BYTES_LIMIT: usize = 1 << 30;

/// The most connections a process may hold: Linux's default `fs.nr_open`, the
/// ceiling of its descriptors. Each gateway thread allocates a slot per connection
/// at start (about 200 bytes each), so a larger figure only fails later, or aborts.
pub const CONNECTIONS_MAX_LIMIT: usize = 1 << 20;

/// The deepest `network.inbound_queue_depth` / `outbound_queue_depth`: the queues
/// are bounded arrays allocated whole at start (up to 128 bytes a slot), so 4 Mi
/// slots is already 512 MiB; a depth that cannot be allocated aborts the process.
pub const QUEUE_DEPTH_LIMIT: usize = 1 << 22;

/// The most memory one gateway thread's io_uring receive buffers may take
/// (`uring_buffers` × `uring_buffer_bytes`, allocated at start): 1 GiB.
pub const URING_BUFFER_MEMORY_LIMIT: u64 = 1 << 30;

impl NetworkConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        use yellowstone_wire::frame::HEADER_LEN;
        check_value(
            (1..=CONNECTIONS_MAX_LIMIT).contains(&self.connections_max),
            "network.connections_max",
            &format!(
                "must be between 1 and {CONNECTIONS_MAX_LIMIT} (the kernel's default \
                 descriptor ceiling; a slot per connection is allocated at start)"
            ),
            self.connections_max,
        )?;
        check_value(
            self.frame_bytes_max >= HEADER_LEN && self.frame_bytes_max <= 64 * 1024 * 1024,
            "network.frame_bytes_max",
            "must be between 12 (a header) and 64 MiB",
            self.frame_bytes_max,
        )?;
        check_value(
            self.conn_inflight_frames_max >= 1,
            "network.conn_inflight_frames_max",
            "must be >= 1",
            self.conn_inflight_frames_max,
        )?;
        check_value(
            self.conn_send_bytes_max >= self.frame_bytes_max,
            "network.conn_send_bytes_max",
            &format!(
                "must hold at least one frame of frame_bytes_max ({})",
                self.frame_bytes_max
            ),
            self.conn_send_bytes_max,
        )?;
        check_value(
            self.conn_idle_timeout_ms >= 1,
            "network.conn_idle_timeout_ms",
            "must be >= 1",
            self.conn_idle_timeout_ms,
        )?;
        check_value(
            (64..=FDS_RESERVED_LIMIT).contains(&self.fds_reserved),
            "network.fds_reserved",
            &format!(
                "must be between 64 (journal, snapshots, metrics, rings, listeners) and \
                 {FDS_RESERVED_LIMIT} (the kernel's default descriptor ceiling)"
            ),
            self.fds_reserved,
        )?;
        check_value(
            (1..=REPLY_CACHE_PER_ADDRESS_LIMIT).contains(&self.reply_cache_per_address),
            "network.reply_cache_per_address",
            &format!("must be between 1 and {REPLY_CACHE_PER_ADDRESS_LIMIT}"),
            self.reply_cache_per_address,
        )?;
        check_value(
            (1..=REPLY_CACHE_ENTRIES_LIMIT).contains(&self.reply_cache_entries_max),
            "network.reply_cache_entries_max",
            &format!("must be between 1 and {REPLY_CACHE_ENTRIES_LIMIT}"),
            self.reply_cache_entries_max,
        )?;
        check_value(
            self.conn_refusals_per_s_max >= 1,
            "network.conn_refusals_per_s_max",
            "must be >= 1",
            self.conn_refusals_per_s_max,
        )?;
        check_value(
            self.conn_send_bytes_max <= CONN_SEND_BYTES_LIMIT,
            "network.conn_send_bytes_max",
            &format!("must be at most {CONN_SEND_BYTES_LIMIT} (1 GiB)"),
            self.conn_send_bytes_max,
        )?;
        for (key, ms) in [
            ("network.conn_idle_timeout_ms", self.conn_idle_timeout_ms),
            ("network.login_timeout_ms", self.login_timeout_ms),
            (
                "network.accept_error_log_interval_ms",
                self.accept_error_log_interval_ms,
            ),
        ] {
            check_value(
                ms <= TIMEOUT_MS_LIMIT,
                key,
                &format!("must be at most {TIMEOUT_MS_LIMIT} (a day)"),
                ms,
            )?;
        }
        check_value(
            self.login_timeout_ms >= 1,
            "network.login_timeout_ms",
            "must be >= 1",
            self.login_timeout_ms,
        )?;
        check_value(
            self.connections_unproven_max <= self.connections_max,
            "network.connections_unproven_max",
            &format!(
                "must be at most network.connections_max ({}); 0 means three quarters of it",
                self.connections_max
            ),
            self.connections_unproven_max,
        )?;
        check_value(
            (1..=10_000).contains(&self.accept_backoff_ms),
            "network.accept_backoff_ms",
            "must be between 1 and 10000",
            self.accept_backoff_ms,
        )?;
        check_value(
            self.accept_error_log_interval_ms >= 100,
            "network.accept_error_log_interval_ms",
            "must be >= 100",
            self.accept_error_log_interval_ms,
        )?;
        for (key, per_s) in [
            ("network.weights_proofs_per_s", self.weights_proofs_per_s),
            (
                "network.weights_proofs_unfunded_per_s",
                self.weights_proofs_unfunded_per_s,
            ),
        ] {
            check_value(
                per_s >= 64,
                key,
                "must be >= 64 (a registration of 64 offers must fit)",
                per_s,
            )?;
        }
        for (key, depth) in [
            ("network.inbound_queue_depth", self.inbound_queue_depth),
            ("network.outbound_queue_depth", self.outbound_queue_depth),
        ] {
            check_value(
                (1..=QUEUE_DEPTH_LIMIT).contains(&depth),
                key,
                &format!(
                    "must be between 1 and {QUEUE_DEPTH_LIMIT} (the queue is allocated whole \
                     at start)"
                ),
                depth,
            )?;
        }
        check_value(
            self.uring_entries.is_power_of_two() && (8..=32_768).contains(&self.uring_entries),
            "network.uring_entries",
            "must be a power of two between 8 and 32768",
            self.uring_entries,
        )?;
        check_value(
            self.uring_buffers.is_power_of_two() && self.uring_buffers <= 32_768,
            "network.uring_buffers",
            "must be a power of two <= 32768",
            self.uring_buffers,
        )?;
        check_value(
            (512..=1024 * 1024).contains(&self.uring_buffer_bytes),
            "network.uring_buffer_bytes",
            "must be between 512 B and 1 MiB",
            self.uring_buffer_bytes,
        )?;
        let buffer_memory = u64::from(self.uring_buffers) * u64::from(self.uring_buffer_bytes);
        check(
            buffer_memory <= URING_BUFFER_MEMORY_LIMIT,
            "network.uring_buffers",
            &format!(
                "{} buffers × network.uring_buffer_bytes {} = {buffer_memory} bytes, allocated \
                 by each gateway thread at start: more than the {URING_BUFFER_MEMORY_LIMIT} \
                 (1 GiB) allowed",
                self.uring_buffers, self.uring_buffer_bytes
            ),
        )?;
        Ok(())
    }
}

impl GatewaySections {
    /// Parses the sections from TOML text; unknown keys are errors naming the key.
    pub fn from_toml(text: &str) -> Result<GatewaySections, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.network.validate()?;
        self.metrics.validate()?;
        self.threads.validate()
    }
}

impl MetricsConfig {
    /// The `[metrics]` checks, for the router's configuration as for this layer's.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_value(
            self.request_bytes_max >= 8 * 1024,
            "metrics.request_bytes_max",
            "must be >= 8192 (the HTTP server's smallest buffer)",
            self.request_bytes_max,
        )?;
        check_value(
            (1..=TIMEOUT_MS_LIMIT).contains(&self.request_timeout_ms),
            "metrics.request_timeout_ms",
            &format!("must be between 1 and {TIMEOUT_MS_LIMIT} (a day)"),
            self.request_timeout_ms,
        )?;
        check_value(
            (1..=65_536).contains(&self.connections_max),
            "metrics.connections_max",
            "must be between 1 and 65536",
            self.connections_max,
        )
    }
}

impl ThreadsConfig {
    /// The `[threads]` checks, for the router's configuration as for this layer's.
    /// A core named in `gateway_cores`, `engine_core` or `journal_core` must be one
    /// this process may run on (when `pin` is on and there are two or more: with one
    /// core nothing is pinned).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_value(
            self.gateway_threads <= 255,
            "threads.gateway_threads",
            "must be <= 255 (connection ids hold 8 bits of thread index)",
            self.gateway_threads,
        )?;
        let cores: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .iter()
            .map(|core| core.id)
            .collect();
        self.check_cores(&cores)
    }

    /// The core checks of `validate` against the cores `available` to the process.
    pub fn check_cores(&self, available: &[usize]) -> Result<(), ConfigError> {
        if !self.pin || available.len() < 2 {
            return Ok(());
        }
        let rule = format!(
            "must name a core this process may run on ({available:?}; or set threads.pin = \
             false)"
        );
        for &core in &self.gateway_cores {
            check_value(
                available.contains(&core),
                "threads.gateway_cores",
                &rule,
                core,
            )?;
        }
        for (key, core) in [
            ("threads.engine_core", self.engine_core),
            ("threads.journal_core", self.journal_core),
        ] {
            if let Some(core) = core {
                check_value(available.contains(&core), key, &rule, core)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_gives_the_defaults() {
        let parsed = GatewaySections::from_toml("").expect("empty TOML parses");
        assert_eq!(parsed, GatewaySections::default());
        assert_eq!(parsed.network.listen.to_string(), "127.0.0.1:7400");
        assert_eq!(parsed.metrics.listen.to_string(), "127.0.0.1:7401");
        assert_eq!(parsed.network.backend, Backend::Uring);
        parsed.validate().expect("defaults are valid");
    }

    #[test]
    fn sections_parse_and_unknown_keys_name_the_key() {
        let parsed = GatewaySections::from_toml(
            "[network]\nbackend = \"mio\"\nconnections_max = 5\n[threads]\nspin = true\n",
        )
        .expect("parses");
        assert_eq!(parsed.network.backend, Backend::Mio);
        assert_eq!(parsed.network.connections_max, 5);
        assert!(parsed.threads.spin);
        assert_eq!(
            parsed.network.frame_bytes_max,
            NetworkConfig::default().frame_bytes_max
        );

        let error = GatewaySections::from_toml("[network]\nconections_max = 5\n")
            .expect_err("typo is an error");
        assert!(error.to_string().contains("conections_max"), "{error}");
        let error = GatewaySections::from_toml("[networkk]\n").expect_err("unknown section");
        assert!(error.to_string().contains("networkk"), "{error}");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let mut sections = GatewaySections::default();
        sections.network.conn_send_bytes_max = 10;
        let error = sections.validate().expect_err("too small");
        assert_eq!(error.key, "network.conn_send_bytes_max");
    }
}
