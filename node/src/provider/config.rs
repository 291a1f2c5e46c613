//! The provider node's configuration (TOML; `print-config` shows every key). Every
//! limit has a default and its unit last.

pub use crate::cli::NodeConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// The router, host:port (or a replicated group's members, comma-separated).
    pub router_addr: String,
    /// R-HA-3: every member of a replicated router group, host:port each, tried in
    /// order (a follower names the leader); empty: `router_addr`.
    pub router_endpoints: Vec<String>,
    /// Bound into every signature (R-ID-2); must be the router's.
    pub network_id: u32,
    /// Pins the router's address (EIP-55); empty: trust the router named at login.
    pub router_address: String,
    /// The provider's key file (64 hex digits, mode 0600; `keygen` makes one).
    pub key_file: PathBuf,
    /// Where ticket holders connect (the OpenAI API), e.g. 0.0.0.0:8400.
    pub listen: String,
    /// The endpoint registered with the router and given to users in tickets
    /// (host:port, or a base URL such as https://gpu1.example.com); empty: `listen`.
    pub public_endpoint: String,
    /// Prometheus metrics (GET /metrics); empty: none.
    pub metrics_listen: String,
    /// Tickets kept at most (R-MATCH-6).
    pub tickets_max: u32,
    /// R-NODE-5: where the node keeps the tickets it holds (`tickets.log`, mode 0600,
    /// at most about 2 × `tickets_max` lines), so that a restart does not refuse users
    /// holding tickets issued before it. Relative to the working directory; empty:
    /// tickets are kept in memory only (a restart loses them).
    pub data_dir: PathBuf,
    /// How long a request whose ticket has not arrived yet waits for it.
    pub ticket_wait_ms: u64,
    /// R-HA-3: `SessionStart`s signed while the router connection is down
    /// (reconnecting) are kept, at most this many, and sent first once it is back;
    /// one more is dropped with a warning. Messages, 1 ..= 1024 (the link resends at
    /// most 1024 unanswered messages).
    pub session_start_queue_max: u64,
    /// Largest request body accepted.
    pub request_bytes_max: u64,
    /// Largest non-streamed upstream answer relayed.
    pub response_bytes_max: u64,
    /// The whole upstream call, first byte to last.
    pub upstream_timeout_ms: u64,
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
    /// unanswered messages, registering again). With several endpoints it also bounds one endpoint's
    /// connect-and-login attempt. ms, above `router_ping_ms`, at most 600000.
    pub router_liveness_ms: u64,
    /// Reconnect back-off: first delay, doubled up to the max.
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    /// R-PROV-4: every this many ms the node asks each model server (`GET
    /// {upstream_base_url}/models`) whether it is up. 100..=600,000.
    pub upstream_health_interval_ms: u64,
    /// A health check without a 2xx answer within this is a failed one, except while
    /// the node has a request in flight to that server or got bytes from it within
    /// the last interval: then the time-out is not counted (busy, not dead; see
    /// `health`). At least 1, at most `upstream_health_interval_ms`.
    pub upstream_health_timeout_ms: u64,
    /// After this many failed checks in a row the server's models are withdrawn from
    /// the market (`WithdrawBid`); the first check that succeeds again offers them
    /// again (a re-registration). 1..=100.
    pub upstream_health_failures: u32,
    /// R-NODE-5 graceful stop: on SIGTERM/SIGINT the node withdraws its offers at once
    /// and waits at most this long for the answers in flight to finish (streams
    /// included) before it exits. At most 3,600,000 (an hour); 0: exit at once.
    pub stop_drain_ms: u64,
    pub models: Vec<ModelOffer>,
}

/// One model this provider sells (R-PROV-1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOffer {
    /// The market's model id (the router's catalog).
    pub model_id: u32,
    /// The weights file, hashed with BLAKE3 at start.
    #[serde(default)]
    pub weights_file: Option<PathBuf>,
    /// Instead of `weights_file`: the hash itself (64 hex digits), when it was
    /// computed elsewhere.
    #[serde(default)]
    pub weights_hash: Option<String>,
    /// The model server's OpenAI base URL, e.g. http://127.0.0.1:8080/v1.
    pub upstream_base_url: String,
    /// The model name the upstream server knows it by.
    pub upstream_model: String,
    /// Bid, MOR wei per token (a string of digits, or an integer).
    pub price_wei_per_token: String,
    /// Concurrent sessions.
    pub capacity: u32,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            router_addr: "127.0.0.1:7400".into(),
            router_endpoints: Vec::new(),
            network_id: 1,
            router_address: String::new(),
            key_file: PathBuf::from("provider.key"),
            listen: "127.0.0.1:8400".into(),
            public_endpoint: String::new(),
            metrics_listen: "127.0.0.1:8401".into(),
            tickets_max: 100_000,
            data_dir: PathBuf::from("provider-data"),
            ticket_wait_ms: 2_000,
            session_start_queue_max: 1_024,
            request_bytes_max: 4 * 1024 * 1024,
            response_bytes_max: 16 * 1024 * 1024,
            upstream_timeout_ms: 600_000,
            keepalive_ms: 60_000,
            router_ping_ms: crate::cli::ROUTER_PING_MS_DEFAULT,
            router_liveness_ms: crate::cli::ROUTER_LIVENESS_MS_DEFAULT,
            header_read_timeout_ms: 30_000,
            connections_max: 1024,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 10_000,
            upstream_health_interval_ms: 2_000,
            upstream_health_timeout_ms: 2_000,
            upstream_health_failures: 2,
            stop_drain_ms: 30_000,
            models: Vec::new(),
        }
    }
}

impl NodeConfig for ProviderConfig {
    fn example() -> ProviderConfig {
        ProviderConfig {
            models: vec![ModelOffer {
                model_id: 1,
                weights_file: Some(PathBuf::from("model-1.gguf")),
                weights_hash: None,
                upstream_base_url: "http://127.0.0.1:8080/v1".into(),
                upstream_model: "llama-3.1-8b-instruct".into(),
                price_wei_per_token: "1000000000".into(),
                capacity: 4,
            }],
            ..ProviderConfig::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        crate::cli::validate_routers(&self.router_addr, &self.router_endpoints)?;
        crate::cli::validate_liveness(self.router_ping_ms, self.router_liveness_ms)?;
        if self.models.is_empty() {
            return Err("models: at least one [[models]] entry is needed".into());
        }
        if self.models.len() > yellowstone_wire::OFFERS_MAX {
            return Err(format!(
                "models: at most {} models",
                yellowstone_wire::OFFERS_MAX
            ));
        }
        for (name, value) in [
            ("tickets_max", self.tickets_max as u64),
            ("request_bytes_max", self.request_bytes_max),
            ("response_bytes_max", self.response_bytes_max),
            ("upstream_timeout_ms", self.upstream_timeout_ms),
            ("reconnect_initial_ms", self.reconnect_initial_ms),
            ("keepalive_ms", self.keepalive_ms),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("connections_max", self.connections_max),
        ] {
            if value == 0 {
                return Err(format!("{name} must be above 0"));
            }
        }
        let window = yellowstone_wire::nonce::RESEND_WINDOW as u64;
        if !(1..=window).contains(&self.session_start_queue_max) {
            return Err(format!(
                "session_start_queue_max is {}, must be 1 ..= {window} (the unanswered messages a link resends)",
                self.session_start_queue_max
            ));
        }
        if !(100..=600_000).contains(&self.upstream_health_interval_ms) {
            return Err(format!(
                "upstream_health_interval_ms is {}, allowed 100..=600000",
                self.upstream_health_interval_ms
            ));
        }
        if self.upstream_health_timeout_ms == 0
            || self.upstream_health_timeout_ms > self.upstream_health_interval_ms
        {
            return Err(format!(
                "upstream_health_timeout_ms is {}, allowed 1..=upstream_health_interval_ms ({})",
                self.upstream_health_timeout_ms, self.upstream_health_interval_ms
            ));
        }
        if self.stop_drain_ms > 3_600_000 {
            return Err(format!(
                "stop_drain_ms is {}, at most 3600000 (an hour)",
                self.stop_drain_ms
            ));
        }
        if !(1..=100).contains(&self.upstream_health_failures) {
            return Err(format!(
                "upstream_health_failures is {}, allowed 1..=100",
                self.upstream_health_failures
            ));
        }
        if self.reconnect_max_ms < self.reconnect_initial_ms {
            return Err("reconnect_max_ms must be at least reconnect_initial_ms".into());
        }
        if self.endpoint().len() > yellowstone_wire::ENDPOINT_BYTES_MAX {
            return Err(format!(
                "public_endpoint: at most {} bytes",
                yellowstone_wire::ENDPOINT_BYTES_MAX
            ));
        }
        let mut ids: Vec<u32> = self.models.iter().map(|m| m.model_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.models.len() {
            return Err("models: each model_id once".into());
        }
        for model in &self.models {
            let at = format!("models (model_id {})", model.model_id);
            if model.weights_file.is_some() == model.weights_hash.is_some() {
                return Err(format!(
                    "{at}: give exactly one of weights_file and weights_hash"
                ));
            }
            if let Some(hash) = &model.weights_hash {
                parse_hash(hash).map_err(|e| format!("{at}: weights_hash: {e}"))?;
            }
            model.price().map_err(|e| format!("{at}: {e}"))?;
            if model.capacity == 0 {
                return Err(format!("{at}: capacity must be above 0"));
            }
            if !model.upstream_base_url.starts_with("http://") {
                return Err(format!(
                    "{at}: upstream_base_url must be an http:// URL (the model server is local to the provider)"
                ));
            }
        }
        Ok(())
    }

    crate::common_settings!();
}

impl ProviderConfig {
    /// The endpoint registered with the router.
    pub fn endpoint(&self) -> &str {
        if self.public_endpoint.is_empty() {
            &self.listen
        } else {
            &self.public_endpoint
        }
    }
}

impl ModelOffer {
    pub fn price(&self) -> Result<u128, String> {
        // The workspace's one wei parser (issue 26 item 4): `_` separators, the bound named.
        yellowstone_wire::amount::parse_wei(&self.price_wei_per_token)
            .map_err(|e| format!("price_wei_per_token: {e}"))
    }
}

pub fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text.trim().trim_start_matches("0x"), &mut hash)
        .map_err(|e| format!("64 hex digits: {e}"))?;
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_round_trips_and_bad_values_are_named() {
        let example = ProviderConfig::example();
        example.validate().unwrap();
        let text = toml::to_string_pretty(&example).unwrap();
        assert_eq!(ProviderConfig::from_toml(&text).unwrap(), example);
        assert!(ProviderConfig::from_toml("nonsense = 1")
            .unwrap_err()
            .contains("nonsense"));
        let mut bad = example.clone();
        bad.models[0].weights_hash = Some("00".repeat(32));
        assert!(bad.validate().unwrap_err().contains("exactly one"));
        let mut bad = example.clone();
        bad.models[0].price_wei_per_token = "1e9".into();
        assert!(bad.validate().unwrap_err().contains("price_wei_per_token"));
        let mut bad = example;
        bad.models.clear();
        assert!(bad.validate().unwrap_err().contains("at least one"));
    }
}
