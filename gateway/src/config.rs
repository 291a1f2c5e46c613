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
    /// Open connections in the whole process; more are refused with an error frame. 10_000.
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
    /// Depth of the bounded queue from the gateways to the engine, in commands. 65_536.
    /// (Read by the router when it builds that queue.)
    pub inbound_queue_depth: usize,
    /// Depth of each gateway's bounded outbox (engine -> gateway), in messages. 65_536.
    pub outbound_queue_depth: usize,
    /// Submission queue entries of each gateway's io_uring. 1024.
    pub uring_entries: u32,
    /// Provided buffers in each gateway's buffer ring (a power of two). 512.
    pub uring_buffers: u16,
    /// Size of each provided receive buffer, in bytes. 16 KiB.
    pub uring_buffer_bytes: u32,
    /// Opt-in: ask for IORING_SETUP_SQPOLL (burns a core). false.
    pub uring_sqpoll: bool,
    /// Ask for IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN (completions are run only
    /// when the gateway waits); false: COOP_TASKRUN | TASKRUN_FLAG. true.
    pub uring_defer_taskrun: bool,
}

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
        }
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

impl NetworkConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        use yellowstone_wire::frame::HEADER_LEN;
        check(
            self.connections_max >= 1,
            "network.connections_max",
            "must be >= 1",
        )?;
        check(
            self.connections_max < (1 << 31),
            "network.connections_max",
            "must be < 2^31",
        )?;
        check(
            self.frame_bytes_max >= HEADER_LEN && self.frame_bytes_max <= 64 * 1024 * 1024,
            "network.frame_bytes_max",
            "must be between 12 (a header) and 64 MiB",
        )?;
        check(
            self.conn_inflight_frames_max >= 1,
            "network.conn_inflight_frames_max",
            "must be >= 1",
        )?;
        check(
            self.conn_send_bytes_max >= self.frame_bytes_max,
            "network.conn_send_bytes_max",
            "must hold at least one frame of frame_bytes_max",
        )?;
        check(
            self.conn_idle_timeout_ms >= 1,
            "network.conn_idle_timeout_ms",
            "must be >= 1",
        )?;
        check(
            self.inbound_queue_depth >= 1,
            "network.inbound_queue_depth",
            "must be >= 1",
        )?;
        check(
            self.outbound_queue_depth >= 1,
            "network.outbound_queue_depth",
            "must be >= 1",
        )?;
        check(
            self.uring_entries.is_power_of_two() && (8..=32_768).contains(&self.uring_entries),
            "network.uring_entries",
            "must be a power of two between 8 and 32768",
        )?;
        check(
            self.uring_buffers.is_power_of_two() && self.uring_buffers <= 32_768,
            "network.uring_buffers",
            "must be a power of two <= 32768",
        )?;
        check(
            (512..=1024 * 1024).contains(&self.uring_buffer_bytes),
            "network.uring_buffer_bytes",
            "must be between 512 B and 1 MiB",
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
        check(
            self.request_bytes_max >= 8 * 1024,
            "metrics.request_bytes_max",
            "must be >= 8192 (the HTTP server's smallest buffer)",
        )?;
        check(
            self.request_timeout_ms >= 1,
            "metrics.request_timeout_ms",
            "must be >= 1",
        )?;
        check(
            (1..=65_536).contains(&self.connections_max),
            "metrics.connections_max",
            "must be between 1 and 65536",
        )
    }
}

impl ThreadsConfig {
    /// The `[threads]` checks, for the router's configuration as for this layer's.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            self.gateway_threads <= 255,
            "threads.gateway_threads",
            "must be <= 255 (connection ids hold 8 bits of thread index)",
        )?;
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
