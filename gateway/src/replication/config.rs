//! `[cluster]`: one member of a replicated router group (SPEC §12, R-HA-1..4;
//! REPL_DESIGN.md "Config"). Off by default: a single router is unchanged.
//!
//! Timing rule (validated): `rpc_timeout_ms` < `heartbeat_ms`·k is not required, but
//! an RPC must time out well inside an election timeout, and heartbeats must arrive
//! several times per election timeout, or a slow member looks dead and elections
//! churn. Openraft 0.9 also bounds every AppendEntries (a follower answers after its
//! fsync) by the heartbeat period, so `heartbeat_ms` must stay above a follower's
//! fsync plus a round trip under load. Defaults (heartbeat 100 ms, election timeout
//! 300..500 ms, RPC timeout 100 ms) aim at a failover p99 ≤ 1.5 s: openraft 0.9 keeps a leader lease of
//! `election_timeout_max` on every follower (it refuses votes that long after the
//! last heartbeat), so the first candidate is usually refused and a leader is elected
//! in the second round, about two election timeouts after the leader died; the
//! promotion then needs one quorum round trip. Measured figures: notes/raft-a.md.

use crate::config::{echo, ConfigError};
use serde::{Deserialize, Serialize};

/// Heartbeats sent per smallest election timeout, at least (validated).
pub const HEARTBEATS_PER_ELECTION_MIN: u64 = 3;
/// The smallest election timeout is at least this many RPC timeouts (validated).
pub const RPC_TIMEOUTS_PER_ELECTION_MIN: u64 = 2;

/// The `[cluster]` section. Membership itself (ids, addresses, endpoints) lives in
/// Raft and is changed by `yellowstone-router cluster add|remove`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Run as a member of a replicated group (false: a single router).
    pub enabled: bool,
    /// This member's id in the group, ≥ 1, unique, never reused.
    pub member_id: u64,
    /// Address of the member RPC listener (votes, log replication, snapshots, admin
    /// requests), `host:port`.
    pub raft_listen: String,
    /// What `not_leader` names for clients when this member leads, `host:port`;
    /// empty: `network.listen` (filled in by the router).
    pub client_endpoint: String,
    /// Leader heartbeat period, milliseconds; openraft also times out each
    /// AppendEntries after it.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in
    /// [`election_timeout_min_ms`, `election_timeout_max_ms`] starts an election, ms.
    pub election_timeout_min_ms: u64,
    /// Upper end of the election timeout, milliseconds.
    pub election_timeout_max_ms: u64,
    /// One member RPC and one connect attempt time out after this, ms (openraft bounds
    /// appends by `heartbeat_ms` and votes by `election_timeout_min_ms` too).
    pub rpc_timeout_ms: u64,
    /// Sending a whole snapshot to a lagging member times out after this, ms.
    pub snapshot_timeout_ms: u64,
    /// A snapshot is taken at the first block boundary after this many Raft entries
    /// were applied since the last one; the log before it is then purged.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot (a member this close behind catches
    /// up from the log instead of a whole snapshot).
    pub log_entries_kept: u64,
    /// Largest member RPC frame, bytes (requests and answers; a bigger one is refused
    /// and the connection closed). Must hold a whole snapshot and one entry.
    pub rpc_frame_bytes_max: u64,
    /// Record bytes one Raft entry gathers at most (a single larger record goes alone).
    pub entry_bytes_max: u64,
    /// Entries the leader's journal keeps proposed and not yet committed at most;
    /// records arriving meanwhile gather into the next entry.
    pub proposals_in_flight_max: usize,
    /// (block, state hash) pairs remembered by the state machine, newest kept.
    pub state_hashes_kept: usize,
    /// Join as a learner: replicate and check, never vote or lead (R-HA-4).
    pub learner: bool,
    /// A Raft log segment is closed and a new one started past this size, bytes.
    pub log_segment_bytes: u64,
    /// Zero-filled room kept ahead of the open segment's data, bytes (an fdatasync
    /// then has no file size to write; 0: none).
    pub log_preallocate_bytes: u64,
}

/// The largest member id (`cluster.member_id`, and the `cluster` commands' `ID`s):
/// i64::MAX, the largest integer a TOML file can hold, so an id the CLI accepts can
/// always be configured (SPEC §12, docs/replication.md). Ids start at 1.
pub const MEMBER_ID_MAX: u64 = i64::MAX as u64;

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            member_id: 1,
            // network.listen takes 7400 and metrics 7401 by default; 7410 lets a bare
            // `[cluster] enabled = true` start (issue 25).
            raft_listen: "127.0.0.1:7410".to_string(),
            client_endpoint: String::new(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 500,
            rpc_timeout_ms: 100,
            snapshot_timeout_ms: 30_000,
            snapshot_every_entries: 20_000,
            log_entries_kept: 2_000,
            rpc_frame_bytes_max: 1 << 30,
            entry_bytes_max: 1 << 20,
            proposals_in_flight_max: 1,
            state_hashes_kept: 4096,
            learner: false,
            log_segment_bytes: 64 << 20,
            log_preallocate_bytes: 4 << 20,
        }
    }
}

fn rule(
    ok: bool,
    key: &'static str,
    rule: &str,
    value: impl std::fmt::Display,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            key,
            reason: format!("{rule}, not {value}"),
        })
    }
}

impl ClusterConfig {
    /// Checks every key and the timing rule of the module comment.
    /// Errors: the first key out of its bounds, naming the value and the bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        rule(
            (1..=MEMBER_ID_MAX).contains(&self.member_id),
            "cluster.member_id",
            &format!("must be 1..={MEMBER_ID_MAX}"),
            self.member_id,
        )?;
        if self.raft_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError {
                key: "cluster.raft_listen",
                reason: format!(
                    "must be host:port (an IP address), not {}",
                    echo(&self.raft_listen)
                ),
            });
        }
        if !self.client_endpoint.is_empty()
            && self
                .client_endpoint
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(ConfigError {
                key: "cluster.client_endpoint",
                reason: format!(
                    "must be empty or host:port (an IP address), not {}",
                    echo(&self.client_endpoint)
                ),
            });
        }
        rule(
            (10..=10_000).contains(&self.heartbeat_ms),
            "cluster.heartbeat_ms",
            "must be 10..=10000",
            self.heartbeat_ms,
        )?;
        rule(
            (10..=60_000).contains(&self.rpc_timeout_ms),
            "cluster.rpc_timeout_ms",
            "must be 10..=60000",
            self.rpc_timeout_ms,
        )?;
        let min = self.election_timeout_min_ms;
        rule(
            min >= self.heartbeat_ms * HEARTBEATS_PER_ELECTION_MIN,
            "cluster.election_timeout_min_ms",
            &format!(
                "must be at least {HEARTBEATS_PER_ELECTION_MIN} heartbeats ({} ms)",
                self.heartbeat_ms * HEARTBEATS_PER_ELECTION_MIN
            ),
            min,
        )?;
        rule(
            min >= self.rpc_timeout_ms * RPC_TIMEOUTS_PER_ELECTION_MIN,
            "cluster.election_timeout_min_ms",
            &format!(
                "must be at least {RPC_TIMEOUTS_PER_ELECTION_MIN} RPC timeouts ({} ms, \
                 cluster.rpc_timeout_ms = {})",
                self.rpc_timeout_ms * RPC_TIMEOUTS_PER_ELECTION_MIN,
                self.rpc_timeout_ms
            ),
            min,
        )?;
        rule(
            self.election_timeout_max_ms > min && self.election_timeout_max_ms <= 600_000,
            "cluster.election_timeout_max_ms",
            &format!("must be above cluster.election_timeout_min_ms ({min}) and at most 600000"),
            self.election_timeout_max_ms,
        )?;
        rule(
            self.snapshot_timeout_ms >= self.rpc_timeout_ms,
            "cluster.snapshot_timeout_ms",
            &format!(
                "must be at least cluster.rpc_timeout_ms ({})",
                self.rpc_timeout_ms
            ),
            self.snapshot_timeout_ms,
        )?;
        rule(
            self.snapshot_every_entries >= 1,
            "cluster.snapshot_every_entries",
            "must be at least 1",
            self.snapshot_every_entries,
        )?;
        rule(
            (1 << 16..=u32::MAX as u64).contains(&self.rpc_frame_bytes_max),
            "cluster.rpc_frame_bytes_max",
            "must be 65536..=4294967295",
            self.rpc_frame_bytes_max,
        )?;
        // An entry of one largest record must fit in a frame with room for the rest
        // of an AppendEntries request.
        let record_max = crate::journal::record::RECORD_PAYLOAD_MAX as u64;
        rule(
            self.rpc_frame_bytes_max >= 2 * (record_max.max(self.entry_bytes_max)),
            "cluster.rpc_frame_bytes_max",
            &format!(
                "must be at least twice the largest entry ({} bytes: a journal record or \
                 cluster.entry_bytes_max)",
                record_max.max(self.entry_bytes_max)
            ),
            self.rpc_frame_bytes_max,
        )?;
        rule(
            (1024..=record_max).contains(&self.entry_bytes_max),
            "cluster.entry_bytes_max",
            &format!("must be 1024..={record_max}"),
            self.entry_bytes_max,
        )?;
        rule(
            (1..=64).contains(&self.proposals_in_flight_max),
            "cluster.proposals_in_flight_max",
            "must be 1..=64",
            self.proposals_in_flight_max,
        )?;
        rule(
            (1..=1 << 20).contains(&self.state_hashes_kept),
            "cluster.state_hashes_kept",
            "must be 1..=1048576",
            self.state_hashes_kept,
        )?;
        rule(
            (1 << 16..=1 << 34).contains(&self.log_segment_bytes),
            "cluster.log_segment_bytes",
            "must be 65536..=17179869184",
            self.log_segment_bytes,
        )?;
        rule(
            self.log_preallocate_bytes <= self.log_segment_bytes,
            "cluster.log_preallocate_bytes",
            &format!(
                "must be at most cluster.log_segment_bytes ({})",
                self.log_segment_bytes
            ),
            self.log_preallocate_bytes,
        )?;
        Ok(())
    }

    /// The openraft configuration these keys make.
    /// Errors: openraft's own validation (names the field).
    pub fn raft_config(&self) -> Result<openraft::Config, ConfigError> {
        let config = openraft::Config {
            cluster_name: "yellowstone".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.snapshot_timeout_ms,
            // The state machine decides when (a block boundary), then triggers one.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.log_entries_kept,
            // Purge as soon as a snapshot allows: entries are whole journal groups.
            purge_batch_size: 1,
            // Entries per AppendEntries; the network answers PayloadTooLarge when a
            // frame would pass `rpc_frame_bytes_max`, and openraft sends fewer.
            max_payload_entries: 256,
            enable_tick: true,
            enable_heartbeat: true,
            enable_elect: true,
            ..openraft::Config::default()
        };
        config.validate().map_err(|e| ConfigError {
            key: "cluster",
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_make_an_openraft_config() {
        let config = ClusterConfig::default();
        config.validate().unwrap();
        let raft = config.raft_config().unwrap();
        assert_eq!(raft.heartbeat_interval, 100);
    }

    #[test]
    fn an_election_timeout_near_the_rpc_timeout_is_refused() {
        let config = ClusterConfig {
            rpc_timeout_ms: 200,
            ..ClusterConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.key, "cluster.election_timeout_min_ms");
        assert!(err.reason.contains("400 ms"), "{}", err.reason);
        let config = ClusterConfig {
            heartbeat_ms: 150,
            ..ClusterConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().key,
            "cluster.election_timeout_min_ms"
        );
        let config = ClusterConfig {
            election_timeout_max_ms: 200,
            ..ClusterConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().key,
            "cluster.election_timeout_max_ms"
        );
    }

    #[test]
    fn addresses_and_sizes_are_checked() {
        for (config, key) in [
            (
                ClusterConfig {
                    raft_listen: "nowhere".into(),
                    ..ClusterConfig::default()
                },
                "cluster.raft_listen",
            ),
            (
                ClusterConfig {
                    member_id: 0,
                    ..ClusterConfig::default()
                },
                "cluster.member_id",
            ),
            (
                ClusterConfig {
                    rpc_frame_bytes_max: 1 << 20,
                    ..ClusterConfig::default()
                },
                "cluster.rpc_frame_bytes_max",
            ),
        ] {
            assert_eq!(config.validate().unwrap_err().key, key);
        }
    }
}
