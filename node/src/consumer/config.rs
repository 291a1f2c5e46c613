//! The consumer node's configuration (TOML; `print-config` shows every key). Every
//! limit has a default and its unit last.

pub use crate::cli::NodeConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The router, host:port (or a replicated group's members, comma-separated).
    pub router_addr: String,
    /// R-HA-3: every member of a replicated router group, host:port each, tried in
    /// order (a follower names the leader); empty: `router_addr`.
    pub router_endpoints: Vec<String>,
    /// Bound into every signature (R-ID-2); must be the router's.
    pub network_id: u32,
    /// Pins the router's address (EIP-55); empty: trust the router named at login.
    pub router_address: String,
    /// The user's key file (64 hex digits, mode 0600; `keygen` makes one).
    pub key_file: PathBuf,
    /// Where local applications connect (the OpenAI API). Loopback by default:
    /// whoever reaches it spends the user's quota.
    pub listen: String,
    /// Prometheus metrics (GET /metrics); empty: none.
    pub metrics_listen: String,
    /// TokenMax of an RFC whose request gives no max_tokens (tokens). When less
    /// than this is left of the user's quota today, the RFC asks for what is left
    /// instead (never refused for the default alone): R-NODE-5, issue 23 case 8.
    pub tokens_max_default: u64,
    /// Largest TokenMax this node asks for (a larger max_tokens is a 400).
    pub tokens_max_limit: u64,
    /// An RFC expires this long after it is sent (R-RFC-1).
    pub rfc_ttl_ms: u64,
    /// The provider's first byte must come within this (else: fail, time-out).
    pub first_byte_timeout_ms: u64,
    /// The whole answer must come within this (else: fail, time-out).
    pub answer_timeout_ms: u64,
    /// The router must acknowledge a report within this.
    pub report_timeout_ms: u64,
    /// R-HA-3: reports made while the router connection is down (reconnecting) are
    /// kept, at most this many, and sent first once it is back (a session that ends
    /// during a reconnect is still paid); one more is dropped with an error. Reports,
    /// 1 ..= 1024 (the link resends at most 1024 unanswered messages).
    pub report_queue_max: u64,
    /// How long the model list from the router's catalog is reused.
    pub catalog_refresh_ms: u64,
    /// Largest request body accepted from applications.
    pub request_bytes_max: u64,
    /// Largest non-streamed answer accepted from a provider.
    pub response_bytes_max: u64,
    /// Requests in flight at most; more get 503 with Retry-After.
    pub requests_in_flight_max: u32,
    /// A connection whose request head has not fully arrived within this is closed
    /// (both the API and the metrics listener): no trickling client holds a socket.
    pub header_read_timeout_ms: u64,
    /// Open HTTP connections per listener (the API and the metrics listener each);
    /// one more is answered 503 with `Retry-After: 1` and closed, so no client can
    /// take every descriptor.
    pub connections_max: u64,
    /// A `Ping` goes to the router after this long without writing, so the router
    /// (`network.conn_idle_timeout_ms`, 300 s) does not close an idle connection.
    pub keepalive_ms: u64,
    /// R-HA-3 (issue 25): after this long without receiving anything from the router
    /// the node sends it a `Ping` (ms, above 0, below `router_liveness_ms`).
    pub router_ping_ms: u64,
    /// R-HA-3 (issue 25): a `Ping` unanswered this long (nothing at all received)
    /// makes the router connection dead: a frozen leader (SIGSTOP, a partition that
    /// drops packets) keeps it open and answers nothing. The node closes it and
    /// reconnects over every router endpoint, the lost one last (resending its
    /// unanswered messages). With several endpoints it also bounds one endpoint's
    /// connect-and-login attempt. ms, above `router_ping_ms`, at most 600000.
    pub router_liveness_ms: u64,
    /// Reconnect back-off: first delay, doubled up to the max.
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    /// On SIGTERM/SIGINT, how long requests in flight may still run before they are
    /// cut and reported with what was received (R-NODE-5); then up to
    /// `report_timeout_ms` more for the router's acknowledgements.
    pub stop_grace_ms: u64,
    /// R-NODE-4: the tokenizer of each model the operator names (`[[tokenizers]]`:
    /// `model` (catalog name), `file` (tokenizer.json), `blake3` (64 hex digits,
    /// optional pin)). A model without one is counted with the byte bound.
    pub tokenizers: Vec<super::tokens::TokenizerEntry>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            router_addr: "127.0.0.1:7400".into(),
            router_endpoints: Vec::new(),
            network_id: 1,
            router_address: String::new(),
            key_file: PathBuf::from("consumer.key"),
            listen: "127.0.0.1:8500".into(),
            metrics_listen: "127.0.0.1:8501".into(),
            tokens_max_default: 512,
            tokens_max_limit: 32_768,
            rfc_ttl_ms: 30_000,
            first_byte_timeout_ms: 60_000,
            answer_timeout_ms: 600_000,
            report_timeout_ms: 10_000,
            report_queue_max: 1_024,
            catalog_refresh_ms: 2_000,
            request_bytes_max: 4 * 1024 * 1024,
            response_bytes_max: 16 * 1024 * 1024,
            requests_in_flight_max: 1_024,
            keepalive_ms: 60_000,
            router_ping_ms: crate::cli::ROUTER_PING_MS_DEFAULT,
            router_liveness_ms: crate::cli::ROUTER_LIVENESS_MS_DEFAULT,
            header_read_timeout_ms: 30_000,
            connections_max: 1024,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 10_000,
            stop_grace_ms: 10_000,
            tokenizers: Vec::new(),
        }
    }
}

impl NodeConfig for ConsumerConfig {
    fn example() -> ConsumerConfig {
        ConsumerConfig {
            tokenizers: vec![super::tokens::TokenizerEntry {
                model: "llama-3.2-1b".into(),
                file: "tokenizer.json".into(),
                blake3: String::new(),
            }],
            ..ConsumerConfig::default()
        }
    }

    crate::common_settings!();

    fn validate(&self) -> Result<(), String> {
        crate::cli::validate_routers(&self.router_addr, &self.router_endpoints)?;
        crate::cli::validate_liveness(self.router_ping_ms, self.router_liveness_ms)?;
        for (name, value) in [
            ("tokens_max_default", self.tokens_max_default),
            ("tokens_max_limit", self.tokens_max_limit),
            ("rfc_ttl_ms", self.rfc_ttl_ms),
            ("first_byte_timeout_ms", self.first_byte_timeout_ms),
            ("answer_timeout_ms", self.answer_timeout_ms),
            ("report_timeout_ms", self.report_timeout_ms),
            ("request_bytes_max", self.request_bytes_max),
            ("response_bytes_max", self.response_bytes_max),
            ("requests_in_flight_max", self.requests_in_flight_max as u64),
            ("reconnect_initial_ms", self.reconnect_initial_ms),
            ("keepalive_ms", self.keepalive_ms),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("connections_max", self.connections_max),
            ("stop_grace_ms", self.stop_grace_ms),
        ] {
            if value == 0 {
                return Err(format!("{name} must be above 0"));
            }
        }
        let window = yellowstone_wire::nonce::RESEND_WINDOW as u64;
        if !(1..=window).contains(&self.report_queue_max) {
            return Err(format!(
                "report_queue_max is {}, must be 1 ..= {window} (the unanswered messages a link resends)",
                self.report_queue_max
            ));
        }
        if self.tokens_max_default > self.tokens_max_limit {
            return Err("tokens_max_default must be at most tokens_max_limit".into());
        }
        // A stop that waits for ever is no stop: an hour at most.
        const STOP_GRACE_MS_MAX: u64 = 3_600_000;
        if self.stop_grace_ms > STOP_GRACE_MS_MAX {
            return Err(format!(
                "stop_grace_ms {} is above {STOP_GRACE_MS_MAX} (an hour)",
                self.stop_grace_ms
            ));
        }
        if self.reconnect_max_ms < self.reconnect_initial_ms {
            return Err("reconnect_max_ms must be at least reconnect_initial_ms".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_bad_values_are_named() {
        let config = ConsumerConfig::default();
        config.validate().unwrap();
        let text = toml::to_string_pretty(&config).unwrap();
        assert_eq!(ConsumerConfig::from_toml(&text).unwrap(), config);
        assert!(ConsumerConfig::from_toml("listn = \"x\"")
            .unwrap_err()
            .contains("listn"));
        let bad = ConsumerConfig {
            tokens_max_default: 10,
            tokens_max_limit: 5,
            ..ConsumerConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("tokens_max_default"));
    }

    #[test]
    fn r_ha_3_the_liveness_bound_must_exceed_the_ping_interval() {
        let config = ConsumerConfig::default();
        assert_eq!(
            (config.router_ping_ms, config.router_liveness_ms),
            (500, 2_000)
        );
        let equal = ConsumerConfig {
            router_ping_ms: 2_000,
            ..ConsumerConfig::default()
        };
        let error = equal.validate().unwrap_err();
        assert!(
            error.contains("router_liveness_ms is 2000") && error.contains("router_ping_ms (2000)"),
            "{error}"
        );
        let zero = ConsumerConfig {
            router_ping_ms: 0,
            ..ConsumerConfig::default()
        };
        assert!(zero.validate().unwrap_err().contains("router_ping_ms"));
        let huge = ConsumerConfig {
            router_liveness_ms: 600_001,
            ..ConsumerConfig::default()
        };
        assert!(huge.validate().unwrap_err().contains("at most 600000"));
    }
}
