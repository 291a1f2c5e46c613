//! Replicated routers (SPEC §12, R-HA-3; docs/PROTOCOL.md section 3, "Replicated
//! routers"): a member that does not lead answers a new connection with an
//! `ErrorReply` coded `not_leader` (0x030A) instead of a `LoginChallenge`, naming the
//! leader it knows; a leader that loses office sends the same to each open connection
//! and closes it. These helpers build and read that reply, so the routers and every
//! client agree on one text.
//!
//! The reason is exactly `not the leader: leader is member <id> at <host:port>` when a
//! leader is known (`detail` = its member id, `retry_after_ms` = 0), else
//! `not the leader: no leader known (election in progress)` (`detail` = 0,
//! `retry_after_ms` = a suggested wait, the election timeout).

use crate::codes;
use crate::ErrorReply;
use std::net::SocketAddr;

/// Between the member id and the endpoint in the known-leader form.
const AT: &str = " at ";
/// The known-leader form's start.
const KNOWN: &str = "not the leader: leader is member ";
/// The whole unknown-leader form.
pub const NO_LEADER_REASON: &str = "not the leader: no leader known (election in progress)";

/// The `not_leader` reason text: `leader_id` is the leader's member id (0 = unknown)
/// and `leader` its client endpoint; either unknown gives [`NO_LEADER_REASON`].
pub fn not_leader_reason(leader_id: u64, leader: Option<SocketAddr>) -> String {
    match leader {
        Some(addr) if leader_id != 0 => format!("{KNOWN}{leader_id}{AT}{addr}"),
        _ => NO_LEADER_REASON.to_string(),
    }
}

/// The whole `not_leader` reply (an answer to no message: `ref_msg_type` and
/// `ref_nonce` 0). `retry_after_ms` is used only when no leader is known (then it is
/// the wait a client should take before trying the members again, e.g. the election
/// timeout); with a known leader it is 0: go there at once.
pub fn not_leader_reply(
    leader_id: u64,
    leader: Option<SocketAddr>,
    retry_after_ms: u32,
) -> ErrorReply {
    let known = leader.is_some() && leader_id != 0;
    ErrorReply {
        code: codes::NOT_LEADER,
        ref_msg_type: 0,
        ref_nonce: 0,
        retry_after_ms: if known { 0 } else { retry_after_ms },
        detail: if known { u128::from(leader_id) } else { 0 },
        reason: not_leader_reason(leader_id, leader),
    }
}

/// The leader's client endpoint named by a `not_leader` reply, or `None`: another
/// code, no leader known, or a reason that does not parse (a client then tries the
/// next member it knows). Never panics on what a router sent.
pub fn parse_not_leader(reply: &ErrorReply) -> Option<SocketAddr> {
    if reply.code != codes::NOT_LEADER {
        return None;
    }
    let rest = reply.reason.strip_prefix(KNOWN)?;
    let (id, addr) = rest.split_once(AT)?;
    id.parse::<u64>().ok().filter(|id| *id != 0)?;
    addr.trim().parse().ok()
}

/// Whether `reply` is a `not_leader` refusal (known leader or not).
pub fn is_not_leader(reply: &ErrorReply) -> bool {
    reply.code == codes::NOT_LEADER
}

/// Why a list of router endpoints could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// The list names no endpoint.
    #[error("no router endpoint given (expected host:port[,host:port...])")]
    Empty,
    /// An entry does not resolve.
    #[error("router endpoint {endpoint:?}: {source}")]
    Resolve {
        /// The entry as given.
        endpoint: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// An entry resolves to no address.
    #[error("router endpoint {endpoint:?} resolves to no address")]
    NoAddress {
        /// The entry as given.
        endpoint: String,
    },
}

/// The members of a router group as a client is told them (R-HA-3): `host:port`
/// entries separated by commas (spaces around them ignored), each resolved to its
/// first address, duplicates dropped, order kept (the first is tried first). One entry
/// is a single router.
///
/// Errors: [`EndpointsError`] naming the entry that does not resolve, or `Empty`.
pub fn parse_endpoints(list: &str) -> Result<Vec<SocketAddr>, EndpointsError> {
    use std::net::ToSocketAddrs;
    let mut out: Vec<SocketAddr> = Vec::new();
    for endpoint in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let addr = endpoint
            .to_socket_addrs()
            .map_err(|source| EndpointsError::Resolve {
                endpoint: endpoint.to_string(),
                source,
            })?
            .next()
            .ok_or_else(|| EndpointsError::NoAddress {
                endpoint: endpoint.to_string(),
            })?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    if out.is_empty() {
        return Err(EndpointsError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_ha_3_endpoint_lists_parse_in_order_without_duplicates() {
        let list = parse_endpoints(" 127.0.0.1:7400, 127.0.0.1:7401,127.0.0.1:7400 ").unwrap();
        assert_eq!(
            list,
            vec![
                "127.0.0.1:7400".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:7401".parse().unwrap()
            ]
        );
        assert!(matches!(parse_endpoints(" , "), Err(EndpointsError::Empty)));
        let error = parse_endpoints("127.0.0.1:7400,nonsense").unwrap_err();
        assert!(error.to_string().contains("\"nonsense\""), "{error}");
    }

    #[test]
    fn r_ha_3_golden_reasons() {
        let addr: SocketAddr = "127.0.0.1:7401".parse().unwrap();
        assert_eq!(
            not_leader_reason(2, Some(addr)),
            "not the leader: leader is member 2 at 127.0.0.1:7401"
        );
        assert_eq!(
            not_leader_reason(0, Some(addr)),
            "not the leader: no leader known (election in progress)"
        );
        assert_eq!(not_leader_reason(3, None), NO_LEADER_REASON);
        let v6: SocketAddr = "[::1]:7400".parse().unwrap();
        assert_eq!(
            not_leader_reason(5, Some(v6)),
            "not the leader: leader is member 5 at [::1]:7400"
        );
    }

    #[test]
    fn r_ha_3_the_reply_round_trips() {
        let addr: SocketAddr = "10.0.0.3:7400".parse().unwrap();
        let reply = not_leader_reply(3, Some(addr), 600);
        assert_eq!(reply.code, 0x030A);
        assert_eq!(reply.detail, 3);
        assert_eq!(reply.retry_after_ms, 0);
        assert_eq!(parse_not_leader(&reply), Some(addr));
        assert!(is_not_leader(&reply));
        let unknown = not_leader_reply(0, None, 600);
        assert_eq!(unknown.detail, 0);
        assert_eq!(unknown.retry_after_ms, 600);
        assert_eq!(parse_not_leader(&unknown), None);
        assert!(is_not_leader(&unknown));
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(
            parse_not_leader(&not_leader_reply(7, Some(v6), 0)),
            Some(v6)
        );
    }

    #[test]
    fn r_ha_3_other_codes_and_garbled_reasons_name_no_leader() {
        let mut reply = not_leader_reply(3, Some("10.0.0.3:7400".parse().unwrap()), 0);
        reply.code = codes::OVERLOADED;
        assert_eq!(parse_not_leader(&reply), None);
        assert!(!is_not_leader(&reply));
        for reason in [
            "not the leader: leader is member x at 10.0.0.3:7400",
            "not the leader: leader is member 0 at 10.0.0.3:7400",
            "not the leader: leader is member 3 at nowhere",
            "not the leader: leader is member 3",
            "",
        ] {
            let reply = ErrorReply {
                code: codes::NOT_LEADER,
                reason: reason.into(),
                ..ErrorReply::default()
            };
            assert_eq!(parse_not_leader(&reply), None, "{reason}");
        }
    }
}
