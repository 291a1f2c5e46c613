//! Connecting with retries (SPEC §9, R-PROV-3; issue 27 case 13): a router near its
//! connection limit refuses a new connection (`too_many_connections`), closes an idle
//! one to make room (`evicted`), or is briefly out of descriptors (its accept backs
//! off, so the TCP handshake or the greeting is late). A client that gives up at the
//! first refusal is locked out by whoever holds the connections at that instant; one
//! that tries again a little later gets in as soon as the router has made room. So
//! every client the project ships connects through [`connect_retrying`]: bounded
//! exponential backoff with jitter (so refused clients do not return in lock-step)
//! and a total deadline, after which the error names the attempts, the time spent
//! and the last failure.
//!
//! What is retried: I/O errors (refused, reset, timed out), a connection closed
//! before the login finished, and a router's refusal of the connection itself
//! (`too_many_connections`, `evicted`, `login_timeout`, `overloaded`). What is not:
//! a refused login (a wrong key or network id does not improve with time).
//!
//! Replicated routers (SPEC §12, R-HA-3): [`connect_following`] takes every member's
//! endpoint. A member that does not lead greets with `not_leader` naming the leader:
//! the client goes there at once (at most [`LEADER_HOPS_MAX`] redirects in a row, so two
//! members naming each other cannot hold it); with no leader named, a refused or closed
//! connection, it tries the next member, pausing (backoff with jitter) only after a
//! whole round of members failed, and a `not_leader`'s `retry_after_ms` (the election
//! timeout) at least then. At the deadline the error names every endpoint tried and
//! why each failed last.

use crate::client::{Client, ClientError};
use crate::codes;
use crate::messages::Message;
use crate::signature::SigningKey;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How [`connect_retrying`] retries. Every duration is wall time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRetry {
    /// One attempt (TCP connect, greeting, login) may take this long at most.
    pub attempt_timeout: Duration,
    /// The pause after the first failed attempt; it doubles after each failure.
    pub backoff_first: Duration,
    /// The pause never exceeds this (before jitter).
    pub backoff_max: Duration,
    /// No attempt starts later than this after the first one; the last attempt is
    /// cut to end by it.
    pub deadline: Duration,
}

impl Default for ConnectRetry {
    /// 50 ms doubling to 2 s, attempts of at most 2 s, 10 s in all.
    fn default() -> ConnectRetry {
        ConnectRetry {
            attempt_timeout: Duration::from_secs(2),
            backoff_first: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
        }
    }
}

impl ConnectRetry {
    /// The default policy with its total deadline (and each attempt) cut to `deadline`.
    pub fn within(deadline: Duration) -> ConnectRetry {
        let default = ConnectRetry::default();
        ConnectRetry {
            attempt_timeout: default.attempt_timeout.min(deadline),
            deadline,
            ..default
        }
    }

    /// The pause after failed attempt number `attempt` (1-based) before jitter:
    /// `backoff_first * 2^(attempt-1)`, at most `backoff_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.backoff_first
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

/// With more than one member configured, one attempt (TCP connect, greeting, login)
/// waits at most this long (and at most its share of the deadline, `deadline / members`,
/// but not under [`ATTEMPT_SHARE_MIN`]): a frozen member (SIGSTOPped: its kernel
/// accepts the TCP connection, nobody sends the greeting) is then treated like a
/// refused one and the next member is tried (R-HA-3, issue 25). Above any loopback or
/// LAN greeting delay of a live router; one endpoint keeps `attempt_timeout`.
pub const MEMBER_ATTEMPT_MAX: Duration = Duration::from_secs(1);

/// R-HA-3 (issue 25): a client of a group (more than one endpoint) treats a connection
/// whose oldest unanswered signed message has waited this long as dead (a frozen
/// leader keeps its TCP connections open and answers nothing): it reconnects through
/// [`connect_following`] and resends byte-identical. Above the election timeout's
/// maximum (1 s by default, docs/replication.md) plus a margin; with one endpoint a
/// client never does this (the router is the only one).
pub const GROUP_LIVENESS: Duration = Duration::from_secs(2);

/// The least a member's attempt is given when the deadline is shared among members.
pub const ATTEMPT_SHARE_MIN: Duration = Duration::from_millis(100);

/// Redirects by `not_leader` followed in a row before the client falls back to trying
/// the members in turn (a group of 5 needs at most one when its members agree).
pub const LEADER_HOPS_MAX: u32 = 4;

/// Why [`connect_retrying`] or [`connect_following`] gave up.
#[derive(Debug)]
pub enum ConnectError {
    /// Every attempt failed for a reason worth retrying, until the deadline.
    GaveUp {
        /// The endpoint of the last attempt.
        addr: SocketAddr,
        /// Attempts made (over every endpoint).
        attempts: u32,
        /// Time from the first attempt to giving up.
        elapsed: Duration,
        /// Why the last attempt failed.
        last: ClientError,
        /// Every endpoint tried (configured or named by a `not_leader`), in the order
        /// first tried, with why its last attempt failed.
        tried: Vec<(SocketAddr, String)>,
    },
    /// An attempt failed for a reason that retrying does not cure (a refused login).
    Refused {
        /// The router's address.
        addr: SocketAddr,
        /// The refusal.
        error: ClientError,
    },
    /// No endpoint was given.
    NoEndpoints,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::GaveUp {
                addr,
                attempts,
                elapsed,
                last,
                tried,
            } => {
                if tried.len() <= 1 {
                    write!(
                        f,
                        "could not connect to {addr}: {attempts} attempts in {} ms, the last \
                         failed with: {last}",
                        elapsed.as_millis()
                    )
                } else {
                    write!(
                        f,
                        "could not connect to any of {} routers: {attempts} attempts in {} ms;",
                        tried.len(),
                        elapsed.as_millis()
                    )?;
                    for (endpoint, why) in tried {
                        write!(f, " {endpoint}: {why};")?;
                    }
                    Ok(())
                }
            }
            ConnectError::Refused { addr, error } => write!(f, "{addr} refused the login: {error}"),
            ConnectError::NoEndpoints => write!(f, "no router endpoint given"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl ConnectError {
    /// The last attempt's error (None when no endpoint was given).
    pub fn last(&self) -> Option<&ClientError> {
        match self {
            ConnectError::GaveUp { last, .. } => Some(last),
            ConnectError::Refused { error, .. } => Some(error),
            ConnectError::NoEndpoints => None,
        }
    }
}

/// The router's refusal codes of a connection (not of a login): worth a retry.
const RETRYABLE_CODES: [u16; 4] = [
    codes::TOO_MANY_CONNECTIONS,
    codes::EVICTED,
    codes::LOGIN_TIMEOUT,
    codes::OVERLOADED,
];

/// One attempt's failure.
enum AttemptError {
    Retry(ClientError),
    /// `not_leader` (R-HA-3): the leader's endpoint if named, the suggested wait.
    NotLeader {
        leader: Option<SocketAddr>,
        retry_after: Duration,
        error: ClientError,
    },
    Final(ClientError),
}

/// Connects to `addr` and logs in as `key`, retrying per `policy` (see the module
/// docs for what is retried). On success the connection has no read or write time-out
/// set (the caller sets its own). A router that answers `not_leader` is followed to
/// the leader it names (as [`connect_following`] with one endpoint).
///
/// Errors: [`ConnectError::Refused`] at once for a refused login,
/// [`ConnectError::GaveUp`] when the deadline passed.
pub fn connect_retrying(
    addr: SocketAddr,
    key: SigningKey,
    policy: &ConnectRetry,
) -> Result<Client, ConnectError> {
    connect_following(&[addr], key, policy)
}

/// Connects to the leader of the router group whose members' client endpoints are
/// `endpoints` (one endpoint: a single router) and logs in as `key` (R-HA-3; the
/// module docs give the order of attempts). On success the connection has no read or
/// write time-out set.
///
/// Errors: [`ConnectError::NoEndpoints`] for an empty list, [`ConnectError::Refused`]
/// at once for a refused login, [`ConnectError::GaveUp`] at `policy.deadline`, naming
/// every endpoint tried.
pub fn connect_following(
    endpoints: &[SocketAddr],
    key: SigningKey,
    policy: &ConnectRetry,
) -> Result<Client, ConnectError> {
    if endpoints.is_empty() {
        return Err(ConnectError::NoEndpoints);
    }
    let started = Instant::now();
    let deadline = started + policy.deadline;
    let mut jitter = Jitter::new(&key, started);
    let mut attempts = 0u32;
    let mut rounds = 0u32;
    let mut next_member = 0usize;
    let mut redirect: Option<SocketAddr> = None;
    let mut hops = 0u32;
    let mut tried: Vec<(SocketAddr, String)> = Vec::new();
    loop {
        let target = match redirect.take() {
            Some(leader) => leader,
            None => {
                let member = endpoints[next_member % endpoints.len()];
                next_member += 1;
                member
            }
        };
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        // A zero time-out is refused by the socket calls: the last attempt gets 1 ms.
        let per_attempt = if endpoints.len() > 1 {
            let share = policy.deadline / endpoints.len() as u32;
            policy
                .attempt_timeout
                .min(MEMBER_ATTEMPT_MAX)
                .min(share.max(ATTEMPT_SHARE_MIN))
        } else {
            policy.attempt_timeout
        };
        let timeout = per_attempt.min(left).max(Duration::from_millis(1));
        let (last, wait_at_least) = match attempt(target, key.clone(), timeout) {
            Ok(client) => return Ok(client),
            Err(AttemptError::Final(error)) => {
                return Err(ConnectError::Refused {
                    addr: target,
                    error,
                })
            }
            Err(AttemptError::NotLeader {
                leader: Some(leader),
                error,
                ..
            }) if hops < LEADER_HOPS_MAX && leader != target => {
                // Go to the named leader at once: no pause, the member knows better.
                hops += 1;
                note(&mut tried, target, &error);
                redirect = Some(leader);
                if Instant::now() >= deadline {
                    return Err(gave_up(target, attempts, started, error, tried));
                }
                continue;
            }
            Err(AttemptError::NotLeader {
                retry_after, error, ..
            }) => (error, retry_after),
            Err(AttemptError::Retry(error)) => (error, Duration::ZERO),
        };
        hops = 0;
        note(&mut tried, target, &last);
        // Pause only once every member failed in this round: during a failover the
        // next member may already lead.
        let round_over = next_member.is_multiple_of(endpoints.len());
        let now = Instant::now();
        if now >= deadline {
            return Err(gave_up(target, attempts, started, last, tried));
        }
        if !round_over {
            continue;
        }
        rounds += 1;
        // Full jitter on the upper half: between half and all of the backoff.
        let backoff = policy.backoff(rounds);
        let pause = (backoff / 2 + jitter.below(backoff / 2)).max(wait_at_least);
        if now + pause >= deadline {
            return Err(gave_up(target, attempts, started, last, tried));
        }
        std::thread::sleep(pause);
    }
}

/// Records why `endpoint`'s latest attempt failed (one row per endpoint, first-tried order).
fn note(tried: &mut Vec<(SocketAddr, String)>, endpoint: SocketAddr, error: &ClientError) {
    let why = error.to_string();
    match tried.iter_mut().find(|(e, _)| *e == endpoint) {
        Some(row) => row.1 = why,
        None => tried.push((endpoint, why)),
    }
}

fn gave_up(
    addr: SocketAddr,
    attempts: u32,
    started: Instant,
    last: ClientError,
    tried: Vec<(SocketAddr, String)>,
) -> ConnectError {
    ConnectError::GaveUp {
        addr,
        attempts,
        elapsed: started.elapsed(),
        last,
        tried,
    }
}

fn refusal(reply: &crate::ErrorReply) -> ClientError {
    ClientError::Login(format!(
        "{} ({:#06x}): {}",
        codes::name(reply.code),
        reply.code,
        reply.reason
    ))
}

fn not_leader(reply: &crate::ErrorReply) -> AttemptError {
    AttemptError::NotLeader {
        leader: crate::leader::parse_not_leader(reply),
        retry_after: Duration::from_millis(u64::from(reply.retry_after_ms)),
        error: refusal(reply),
    }
}

fn attempt(addr: SocketAddr, key: SigningKey, timeout: Duration) -> Result<Client, AttemptError> {
    let retry = |e: std::io::Error| AttemptError::Retry(ClientError::Io(e));
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(retry)?;
    stream.set_nodelay(true).map_err(retry)?;
    stream.set_read_timeout(Some(timeout)).map_err(retry)?;
    stream.set_write_timeout(Some(timeout)).map_err(retry)?;
    let mut client = Client::from_stream(stream, key);
    // A silent member (frozen, or its accept backlog unserved) is a failed attempt
    // like a refused one, said plainly rather than as `os error 11`.
    let greeting = client
        .recv()
        .map_err(|e| AttemptError::Retry(silent(e, "no greeting", timeout)))?;
    match &greeting {
        Message::LoginChallenge(_) => {}
        Message::ErrorReply(reply) if reply.code == codes::NOT_LEADER => {
            return Err(not_leader(reply))
        }
        Message::ErrorReply(reply) if RETRYABLE_CODES.contains(&reply.code) => {
            return Err(AttemptError::Retry(refusal(reply)))
        }
        other => {
            return Err(AttemptError::Final(ClientError::Login(format!(
                "expected a challenge, got {other:?}"
            ))))
        }
    }
    let reply = match client.answer_and_read_reply(&greeting) {
        Ok(reply) => reply,
        // Evicted or cut between the greeting and the answer: the router was short of
        // room (or lost office), not unwilling.
        Err(error @ (ClientError::Io(_) | ClientError::Closed | ClientError::Frame(_))) => {
            return Err(AttemptError::Retry(silent(
                error,
                "no login answer",
                timeout,
            )))
        }
        Err(error) => return Err(AttemptError::Final(error)),
    };
    match &reply {
        // A leader that lost office between the greeting and the answer.
        Message::ErrorReply(reply) if reply.code == codes::NOT_LEADER => {
            return Err(not_leader(reply))
        }
        Message::ErrorReply(reply) if RETRYABLE_CODES.contains(&reply.code) => {
            return Err(AttemptError::Retry(refusal(reply)))
        }
        _ => {}
    }
    crate::login::check_reply(&reply, client.address())
        .map_err(|e| AttemptError::Final(ClientError::Login(e.to_string())))?;
    let clear = |client: &Client| -> Result<(), ClientError> {
        client.set_read_timeout(None)?;
        client.stream().set_write_timeout(None)?;
        Ok(())
    };
    clear(&client).map_err(AttemptError::Retry)?;
    Ok(client)
}

/// A read time-out (`WouldBlock`/`TimedOut`) as "`what` within N ms"; other errors as they are.
fn silent(error: ClientError, what: &str, timeout: Duration) -> ClientError {
    match error {
        ClientError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{what} within {} ms", timeout.as_millis()),
            ))
        }
        other => other,
    }
}

/// A small deterministic-per-client generator for the backoff's jitter (splitmix64
/// seeded by the key's address and the start time): clients refused together spread
/// out, without a random-number crate in the wire crate.
struct Jitter(u64);

impl Jitter {
    fn new(key: &SigningKey, started: Instant) -> Jitter {
        let address = key.address();
        let mut seed = u64::from_le_bytes(address.0[..8].try_into().unwrap_or([0; 8]));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        seed ^= nanos ^ (started.elapsed().as_nanos() as u64);
        Jitter(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration in `[0, bound)` (zero for a zero bound).
    fn below(&mut self, bound: Duration) -> Duration {
        let micros = bound.as_micros() as u64;
        if micros == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.next() % micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = ConnectRetry::default();
        assert_eq!(policy.backoff(1), Duration::from_millis(50));
        assert_eq!(policy.backoff(2), Duration::from_millis(100));
        assert_eq!(policy.backoff(6), Duration::from_millis(1_600));
        assert_eq!(policy.backoff(7), Duration::from_secs(2));
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        let key = SigningKey::from_seed(b"jitter");
        let mut jitter = Jitter::new(&key, Instant::now());
        for _ in 0..1_000 {
            assert!(jitter.below(Duration::from_millis(25)) < Duration::from_millis(25));
        }
        assert_eq!(jitter.below(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_silent_member_is_left_for_the_next_within_its_share() {
        // Two members whose kernels accept (listen backlog) but never greet: a frozen
        // leader (issue 25). Before the fix the first took the whole deadline.
        let silent_a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoints = [
            silent_a.local_addr().unwrap(),
            silent_b.local_addr().unwrap(),
        ];
        let policy = ConnectRetry::within(Duration::from_millis(1_000));
        let started = Instant::now();
        let error = connect_following(&endpoints, SigningKey::from_seed(b"x"), &policy)
            .err()
            .expect("nobody greets");
        assert!(started.elapsed() < Duration::from_millis(1_500), "{error}");
        match &error {
            ConnectError::GaveUp { tried, .. } => {
                assert_eq!(tried.len(), 2, "both members tried: {error}");
                assert!(
                    tried
                        .iter()
                        .all(|(_, why)| why.contains("no greeting within")),
                    "{error}"
                );
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_dead_address_gives_up_by_the_deadline_naming_the_attempts() {
        // A port nobody listens on: connection refused at once, every attempt.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let policy = ConnectRetry {
            deadline: Duration::from_millis(300),
            ..ConnectRetry::default()
        };
        let started = Instant::now();
        let error = connect_retrying(addr, SigningKey::from_seed(b"x"), &policy)
            .err()
            .expect("nothing listens");
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_millis(600), "{elapsed:?}");
        match &error {
            ConnectError::GaveUp { attempts, .. } => assert!(*attempts >= 2, "{error}"),
            other => panic!("{other}"),
        }
        assert!(error.to_string().contains("attempts in"), "{error}");
    }
}
