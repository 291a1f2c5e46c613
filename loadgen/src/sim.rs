//! The simulated market: an operator, users and providers, each a real client of
//! the router speaking the wire protocol with real signatures. Users send RFCs on an
//! open-loop schedule (pre-signed before the measured window), providers answer probes
//! (a share slowly or never), users report (a share fail), the operator collects the
//! credit batches, and the run checks that every acknowledged creditable report was
//! credited exactly once.

use crate::frames;
use crate::latency::LatencyRecorder;
use crate::report::{ConsistencyCheck, Latencies, RunSummary};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use yellowstone_wire::client::{Client, ClientError};
use yellowstone_wire::*;

pub const WEI_PER_MOR: u128 = 1_000_000_000_000_000_000;

/// R-SESSION-1: the `market.user_sessions_open_max` the loadgen gives its embedded
/// router. Each simulated user stands for an application gateway carrying
/// `rate / users` RFCs a second (62 a second with the defaults), so it holds far
/// more than the default 16 sessions and queued RFCs at once. An external router
/// (`--target`) needs at least the sim's per-user concurrency too, or its RFCs are
/// refused `user_sessions_full`.
pub const SIM_USER_SESSIONS_OPEN_MAX: u32 = 4_096;

/// R-REPORT-3: the prompt tokens the simulated users report (one size class).
pub const SIM_PROMPT_TOKENS: u64 = 256;

/// R-REPORT-3: the simulated time to the first token, ms (at most the whole time).
pub const SIM_FIRST_TOKEN_MS: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Constant rate, enough supply.
    Steady,
    /// One second at 3x the rate in every three.
    Burst,
    /// Demand above supply: queues fill, priority by balance shows.
    Overload,
    /// Providers drop their connection and come back during the run.
    Churn,
    /// Many zero- and low-balance addresses flood RFCs alongside real users.
    Sybil,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, String> {
        Ok(match text {
            "steady" => Scenario::Steady,
            "burst" => Scenario::Burst,
            "overload" => Scenario::Overload,
            "churn" => Scenario::Churn,
            "sybil" => Scenario::Sybil,
            other => {
                return Err(format!(
                    "unknown scenario {other:?}: steady, burst, overload, churn or sybil"
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Burst => "burst",
            Scenario::Overload => "overload",
            Scenario::Churn => "churn",
            Scenario::Sybil => "sybil",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub scenario: Scenario,
    pub duration: Duration,
    pub rate_per_s: f64,
    pub users: usize,
    pub providers: usize,
    pub models: Vec<u32>,
    pub tokens_max: u64,
    /// Per-user balance drawn uniformly from this range, in whole MOR.
    pub balance_mor: (u64, u64),
    pub provider_capacity: u32,
    pub reference_price_wei: u128,
    /// Share of providers that answer probes too late / never.
    pub slow_provider_share: f64,
    pub dead_provider_share: f64,
    pub fail_report_share: f64,
    /// Mean service time per token the users report, in ms.
    pub service_ms_per_token: u64,
    /// Each reported time is 100 - this to 100 + this (excluded) percent of the mean
    /// (uniform; at most 99).
    pub service_jitter_percent: u64,
    pub seed: u64,
    /// How long after the sending window replies may still arrive.
    pub drain: Duration,
    /// If known (embedded router): to wait for exactly the right batch.
    pub genesis_ms: Option<u64>,
    pub progress: bool,
    /// Each RFC expires this long after it is due.
    pub rfc_ttl_ms: u64,
    /// Wait for the credit batch covering the last report and check the credits
    /// (true); false ends the run once the users are done, without the batch part of
    /// the self-check (quick runs that measure only throughput and latency).
    pub await_batches: bool,
}

/// Progress ticks (500 ms each) per line when stderr is not a terminal: 5 s.
const PROGRESS_LINE_EVERY_TICKS: u64 = 10;

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            scenario: Scenario::Steady,
            duration: Duration::from_secs(10),
            rate_per_s: 2_000.0,
            users: 32,
            providers: 16,
            models: vec![1, 2, 3, 4],
            tokens_max: 200,
            balance_mor: (100, 10_000),
            provider_capacity: 256,
            reference_price_wei: 1_000_000_000,
            slow_provider_share: 0.0,
            dead_provider_share: 0.0,
            fail_report_share: 0.02,
            service_ms_per_token: 5,
            service_jitter_percent: 50,
            seed: 1,
            drain: Duration::from_secs(5),
            genesis_ms: None,
            progress: true,
            rfc_ttl_ms: 60_000,
            await_batches: true,
        }
    }
}

/// Where to run and with which operator key.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// R-HA-3: every member of a replicated router group (`--router a,b,c`), `addr`
    /// first; one entry (or none: `addr` alone) for a single router. With more than one, the simulated
    /// clients follow the leader across failovers: they reconnect, resend their
    /// unanswered signed frames byte-identical (answered from the reply cache, never
    /// counted twice), providers register again and the subscriber subscribes again.
    pub endpoints: Vec<SocketAddr>,
    pub operator: SigningKey,
    pub description: String,
    pub backend: String,
}

/// Credit that traffic beside the simulated users (`SideTraffic`) was told it earned
/// for providers: the run's self-check expects it in the credit batches as it expects
/// the users' own (R-BLOCK-2), so that a run with attackers is still checked whole.
#[derive(Clone, Debug, Default)]
pub struct SideCredits {
    /// Wei per provider from `ReportAck.earned_wei` of acknowledged creditable reports.
    pub expected_wei: BTreeMap<Address, u128>,
    pub expected_sessions: u64,
    /// Reports sent whose acknowledgement did not arrive: the most wei each may earn.
    pub in_doubt_wei: BTreeMap<Address, u128>,
    pub in_doubt_sessions: u64,
}

impl SideCredits {
    /// Records an acknowledged report that earned `earned_wei` for `provider`.
    pub fn earned(&mut self, provider: Address, earned_wei: u128) {
        let entry = self.expected_wei.entry(provider).or_default();
        *entry = entry.saturating_add(earned_wei);
        self.expected_sessions += 1;
    }

    /// Records a report whose acknowledgement never came (at most `wei_max`).
    pub fn in_doubt(&mut self, provider: Address, wei_max: u128) {
        let entry = self.in_doubt_wei.entry(provider).or_default();
        *entry = entry.saturating_add(wei_max);
        self.in_doubt_sessions += 1;
    }
}

/// An error of traffic run beside the simulation.
pub type SideError = Box<dyn std::error::Error + Send + Sync>;

/// Traffic run beside the simulated market in the same run (the attack scenarios and
/// their honest canary): `balances` are funded with the simulation's own; `prepare`
/// runs once the simulated providers are registered and before the users connect;
/// `begin` when the sending window's start is known; `finish` after the users are
/// done, and before the run waits for the credit batches.
pub trait SideTraffic {
    /// Addresses the operator funds before the run, with their balance in wei.
    fn balances(&self) -> Vec<(Address, u128)>;
    /// Errors: the side traffic could not be set up; the run stops.
    fn prepare(&mut self, target: &Target, config: &SimConfig) -> Result<(), SideError>;
    fn begin(&mut self, window_start: Instant, window: Duration);
    /// Stops the side traffic and returns the credit it was told of.
    ///
    /// Errors: a side thread failed or panicked; the run stops.
    fn finish(&mut self) -> Result<SideCredits, SideError>;
}

#[derive(Default)]
struct Counters {
    rfcs_sent: AtomicU64,
    tickets: AtomicU64,
    acks: AtomicU64,
}

/// What each user thread learned; merged at the end.
#[derive(Default)]
struct UserOutcome {
    latencies: Latencies,
    rejected: BTreeMap<String, u64>,
    failed: BTreeMap<String, u64>,
    sessions: u64,
    /// Tickets received before the sending window closed.
    sessions_in_window: u64,
    acknowledged_reports: u64,
    /// Expected credit per provider from creditable acks.
    expected_wei: BTreeMap<Address, u128>,
    expected_sessions: u64,
    last_ack: Option<Instant>,
    outstanding: usize,
    /// Reports sent whose acknowledgement had not arrived when the user stopped
    /// reading: the router may have credited them (the ack was on its way), so the
    /// self-check neither expects nor forbids their credit (most wei each may earn).
    in_doubt_wei: BTreeMap<Address, u128>,
    in_doubt_sessions: u64,
    /// The connection to the router failed mid-run (a router crash, say): what the
    /// user was told until then is kept, and the run reports it.
    connection_lost: Option<String>,
    /// The user could not connect or log in at all.
    connect_failed: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_timeout(error: &ClientError) -> bool {
    matches!(error, ClientError::Io(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

/// How long a connection attempt, and its login, may take: a router out of
/// descriptors (or flooded with idle connections) may accept and never greet, and a
/// client must then fail instead of waiting forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects and logs in within `timeout` (TCP connect, then the challenge and its
/// answer), retrying a refused or failed attempt with bounded exponential backoff and
/// jitter until `timeout` (SPEC §9: a router near its connection limit makes room by
/// evicting idle connections, so a simulated user that tries again gets in, as a real
/// client would), leaving a 100 ms read timeout on the connection.
///
/// Errors: the login was refused, or no attempt succeeded within `timeout` (the error
/// names the attempts and the last failure).
pub fn connect_client(
    addr: SocketAddr,
    key: SigningKey,
    timeout: Duration,
) -> Result<Client, ClientError> {
    let policy = yellowstone_wire::connect_retry::ConnectRetry::within(timeout);
    let client = Client::connect_retrying(addr, key, &policy)
        .map_err(|error| ClientError::Io(std::io::Error::other(error.to_string())))?;
    client.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(client)
}

/// R-HA-3 (issue 25): the group's endpoints with the member behind `dead` (the peer of
/// a connection found dead: frozen, deposed) moved last, the next member first, so a
/// reconnect does not spend its first attempt on it. Unchanged when `dead` is not
/// one of them (or unknown).
fn others_first(endpoints: &[SocketAddr], dead: Option<SocketAddr>) -> Vec<SocketAddr> {
    match dead.and_then(|dead| endpoints.iter().position(|e| *e == dead)) {
        Some(index) => endpoints[index + 1..]
            .iter()
            .chain(&endpoints[..=index])
            .copied()
            .collect(),
        None => endpoints.to_vec(),
    }
}

fn connect(endpoints: &[SocketAddr], key: SigningKey) -> Result<Client, String> {
    connect_client_following(endpoints, key, CONNECT_TIMEOUT).map_err(|e| {
        let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        format!("connect {}: {e}", list.join(","))
    })
}

/// [`connect_client`] to the leader of the router group whose members are
/// `endpoints` (R-HA-3: `not_leader` followed; one endpoint: a single router).
///
/// Errors: the login was refused, or no member could be logged in to within
/// `timeout` (the error names every endpoint tried).
pub fn connect_client_following(
    endpoints: &[SocketAddr],
    key: SigningKey,
    timeout: Duration,
) -> Result<Client, ClientError> {
    let policy = yellowstone_wire::connect_retry::ConnectRetry::within(timeout);
    let client = Client::connect_following(endpoints, key, &policy)
        .map_err(|error| ClientError::Io(std::io::Error::other(error.to_string())))?;
    client.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(client)
}

/// R-HA-3: set-ups (connect, then resend / register / subscribe) tried in a row by one
/// reconnection: a leader that loses office while a client sets its new connection up
/// closes it (elections can follow each other on a loaded host); that is followed
/// again, not taken as the group lost.
const SETUP_ATTEMPTS_MAX: u32 = 5;

/// Connects to the group's leader ([`connect`]) and sets the connection up with
/// `setup`, again from the connection when the set-up fails (the member lost office
/// meanwhile), at most [`SETUP_ATTEMPTS_MAX`] times.
/// Errors: the connection failed, or the last set-up's error.
fn connect_and_set_up(
    endpoints: &[SocketAddr],
    key: &SigningKey,
    mut setup: impl FnMut(&mut Client) -> Result<(), String>,
) -> Result<Client, String> {
    let mut last = String::new();
    for _ in 0..SETUP_ATTEMPTS_MAX {
        let mut client = connect(endpoints, key.clone())?;
        match setup(&mut client) {
            Ok(()) => return Ok(client),
            Err(error) => last = error,
        }
    }
    Err(format!(
        "set-up failed {SETUP_ATTEMPTS_MAX} times in a row, last: {last}"
    ))
}

/// Reconnections one simulated client makes in a run at most (R-HA-3: each failover
/// of a group costs one; a failover in 100 leader kills costs 100).
const RECONNECTS_MAX: u32 = 1_000;

/// R-HA-3 (issue 25): the liveness bound of a group's connection (see the wire docs).
use yellowstone_wire::connect_retry::GROUP_LIVENESS;

/// In a group, `not_leader` on an open connection as the error of a dead one (the
/// caller reconnects and resends, R-HA-3); otherwise `received` as it is.
fn as_dead_if_not_leader(
    received: Result<Message, ClientError>,
    group: bool,
) -> Result<Message, ClientError> {
    match received {
        Ok(message) if group && is_not_leader(&message) => Err(ClientError::Io(
            std::io::Error::new(std::io::ErrorKind::NotConnected, format!("{message:?}")),
        )),
        other => other,
    }
}

/// R-HA-3 (issue 25): a listening client's liveness in a group (a provider, a batch
/// subscriber: they may hear nothing for a long time from a healthy leader). After
/// `GROUP_LIVENESS / 8` (250 ms) of silence it sends a Ping; a Ping unanswered (nothing heard
/// at all) for `GROUP_LIVENESS` makes the connection dead (the caller reconnects).
/// Off (plain `recv`) with one router.
struct PingLiveness {
    group: bool,
    last_heard: Instant,
    ping_sent: Option<Instant>,
}

impl PingLiveness {
    fn new(group: bool) -> PingLiveness {
        PingLiveness {
            group,
            last_heard: Instant::now(),
            ping_sent: None,
        }
    }

    /// `client.recv()` (with `not_leader` as a dead connection in a group), or the
    /// liveness bound's error.
    fn recv(&mut self, client: &mut Client) -> Result<Message, ClientError> {
        if !self.group {
            return client.recv();
        }
        // Pinged early (a Pong costs the router little), judged at the full bound.
        if self.ping_sent.is_none() && self.last_heard.elapsed() >= GROUP_LIVENESS / 8 {
            let _ = client.send(&Message::from(yellowstone_wire::messages::Ping {
                payload: 0,
            }));
            self.ping_sent = Some(Instant::now());
        }
        let received = match self.ping_sent {
            Some(at) if at.elapsed() >= GROUP_LIVENESS => {
                Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!(
                        "no answer to a Ping within {} ms (liveness bound)",
                        GROUP_LIVENESS.as_millis()
                    ),
                )))
            }
            _ => as_dead_if_not_leader(client.recv(), true),
        };
        // Anything heard (or a connection about to be replaced) restarts the clock.
        if !matches!(&received, Err(e) if is_timeout(e)) {
            self.last_heard = Instant::now();
            self.ping_sent = None;
        }
        received
    }
}

/// The unanswered frames, by nonce: when each was last written, and its bytes.
type Unanswered = BTreeMap<u64, (Instant, Vec<u8>)>;

/// How long the oldest unanswered frame has waited (zero when none).
fn oldest_waiting(unanswered: &Mutex<Unanswered>) -> Duration {
    unanswered
        .lock()
        .ok()
        .and_then(|map| map.values().map(|(at, _)| *at).min())
        .map_or(Duration::ZERO, |at| at.elapsed())
}

/// A message that tells a group's client to go elsewhere (R-HA-3): `not_leader` on
/// an open connection, whether it answers a message of ours or none. Its messages are
/// resent to the leader, never counted as refused.
fn is_not_leader(message: &Message) -> bool {
    matches!(message, Message::ErrorReply(e) if e.code == yellowstone_wire::codes::NOT_LEADER)
}

/// The nonce of the user's own message that `message` answers for good (an
/// `RfcAccepted` is not final: its RFC waits for a ticket or a failure).
fn final_answer_nonce(message: &Message, own: Address) -> Option<u64> {
    match message {
        Message::SessionTicket(t) if t.user == own => Some(t.rfc_nonce),
        Message::RfcFailed(m) => Some(m.nonce),
        Message::ReportAck(m) => Some(m.nonce),
        Message::ErrorReply(m) if m.ref_nonce != 0 && !is_not_leader(message) => Some(m.ref_nonce),
        _ => None,
    }
}

fn wait_for<T>(
    client: &mut Client,
    timeout: Duration,
    mut pick: impl FnMut(&Message) -> Option<Result<T, String>>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match client.recv() {
            Ok(message) => {
                if let Some(result) = pick(&message) {
                    return result;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("timed out waiting for the router".into())
}

/// Funds addresses through operator balance updates (chunked to fit frames).
fn fund(operator: &mut Client, entries: &[(Address, u128)]) -> Result<(), String> {
    for chunk in entries.chunks(400) {
        let nonce = operator.next_nonce();
        let entries = chunk
            .iter()
            .map(|(address, balance_wei)| BalanceEntry {
                address: *address,
                balance_wei: *balance_wei,
            })
            .collect();
        operator
            .send_signed(
                BalanceUpdate {
                    from: operator.address(),
                    nonce,
                    entries,
                    signature: Signature::default(),
                }
                .into(),
            )
            .map_err(|e| e.to_string())?;
        wait_for(operator, Duration::from_secs(10), |m| match m {
            Message::Ack(a) if a.nonce == nonce => Some(Ok(())),
            Message::ErrorReply(e) if e.ref_nonce == nonce => {
                Some(Err(format!("balance update refused: {}", e.reason)))
            }
            _ => None,
        })?;
    }
    Ok(())
}

fn register(
    provider: &mut Client,
    models: &[u32],
    price: u128,
    capacity: u32,
) -> Result<(), String> {
    let offers: Vec<frames::OfferSpec> = models
        .iter()
        .map(|&model_id| frames::OfferSpec {
            model_id,
            price_wei_per_token: price,
            capacity,
        })
        .collect();
    let nonce = provider.next_nonce();
    let frame = frames::register_provider(
        provider.key(),
        provider.network_id(),
        nonce,
        "127.0.0.1:9000",
        &offers,
    );
    provider.send_raw(&frame).map_err(|e| e.to_string())?;
    wait_for(provider, Duration::from_secs(10), |m| match m {
        Message::Ack(a) if a.nonce == nonce => Some(Ok(())),
        Message::ErrorReply(e) if e.ref_nonce == nonce => {
            Some(Err(format!("registration refused: {}", e.reason)))
        }
        _ => None,
    })
}

/// The nonce of pre-signed RFC `index`, due `offset` after the window opens, after
/// RFC `index - 1`'s `previous` (R-ID-4, issue 27): the clock at signing plus the
/// offset in µs, so nonces stay near the clock (a stride of a second per RFC ran them
/// minutes ahead, and a rerun within those minutes saw every RFC refused `replay`),
/// but at least `index + 1` above the previous one: reports sent between two RFCs take
/// the nonces in between (under the same write lock), and at most `index` of them can
/// be due then (one per earlier RFC), so nonces arrive strictly increasing.
fn rfc_nonce(first_nonce: u64, index: usize, offset: Duration, previous: Option<u64>) -> u64 {
    let offset_us = u64::try_from(offset.as_micros()).unwrap_or(u64::MAX);
    let by_clock = first_nonce.saturating_add(offset_us);
    match previous {
        Some(previous) => by_clock.max(previous.saturating_add(index as u64 + 1)),
        None => by_clock,
    }
}

/// Pre-signed RFC frames with the instant each is due (open loop).
fn presign_rfcs(
    key: &SigningKey,
    network_id: u32,
    first_nonce: u64,
    due: &[Duration],
    config: &SimConfig,
    rng: &mut ChaCha8Rng,
) -> Vec<(u64, Vec<u8>)> {
    // Signed before the window opens (up to a few seconds before `start`).
    let base_ms = now_ms() + 5_000;
    let mut previous = None;
    due.iter()
        .enumerate()
        .map(|(i, offset)| {
            let expires_at_ms = base_ms + offset.as_millis() as u64 + config.rfc_ttl_ms;
            let nonce = rfc_nonce(first_nonce, i, *offset, previous);
            debug_assert!(previous.is_none_or(|p| nonce > p + i as u64));
            previous = Some(nonce);
            let model_id = config.models[rng.gen_range(0..config.models.len())];
            let frame = frames::rfc(
                key,
                network_id,
                nonce,
                model_id,
                config.tokens_max,
                expires_at_ms,
            );
            (nonce, frame)
        })
        .collect()
}

/// Due offsets of one user's RFCs for the scenario's rate shape.
fn schedule(config: &SimConfig, share: f64, phase: f64) -> Vec<Duration> {
    let rate = config.rate_per_s * share;
    let mut out = Vec::new();
    if rate <= 0.0 {
        return out;
    }
    let end = config.duration.as_secs_f64();
    let mut t = phase / rate;
    while t < end {
        out.push(Duration::from_secs_f64(t));
        let multiplier = match config.scenario {
            Scenario::Burst if (t % 3.0) < 1.0 => 3.0,
            Scenario::Burst => 0.5,
            _ => 1.0,
        };
        t += 1.0 / (rate * multiplier);
    }
    out
}

struct UserPlan {
    key: SigningKey,
    due: Vec<Duration>,
    sybil: bool,
}

fn run_user(
    endpoints: Vec<SocketAddr>,
    plan: UserPlan,
    config: SimConfig,
    start: Instant,
    counters: Arc<Counters>,
    stop_reading: Arc<AtomicBool>,
) -> Result<UserOutcome, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(
        config.seed ^ u64::from_le_bytes(plan.key.address().0[..8].try_into().unwrap_or([0; 8])),
    );
    let group = endpoints.len() > 1;
    let mut client = match connect(&endpoints, plan.key.clone()) {
        Ok(client) => client,
        Err(error) => {
            // Refused or never greeted (a router out of connections): this user sends
            // nothing, and the run says so instead of stopping.
            return Ok(UserOutcome {
                connection_lost: Some(format!("user connection: {error}")),
                connect_failed: true,
                outstanding: plan.due.len(),
                ..UserOutcome::default()
            });
        }
    };
    let network_id = client.network_id();
    let first_nonce = client.next_nonce();
    let frames = presign_rfcs(
        &plan.key,
        network_id,
        first_nonce,
        &plan.due,
        &config,
        &mut rng,
    );
    let due_of: Arc<Mutex<HashMap<u64, Instant>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(frames.len())));
    let writer_stream = client.stream().try_clone().map_err(|e| e.to_string())?;
    // (stream, last nonce written): RFCs and reports share it.
    let writer = Arc::new(Mutex::new((writer_stream, first_nonce.saturating_sub(1))));
    // R-HA-3 (a group only): frames written without a final answer, by nonce, resent
    // byte-identical after a reconnect. Written under the writer's lock, before the
    // write, so a reconnect (which resends under the same lock) never misses one.
    let unanswered: Arc<Mutex<Unanswered>> = Arc::default();
    // The sender: writes each pre-signed RFC when it is due.
    let sender = {
        let (writer, due_of, counters, due, unanswered) = (
            writer.clone(),
            due_of.clone(),
            counters.clone(),
            plan.due.clone(),
            unanswered.clone(),
        );
        std::thread::spawn(move || {
            for ((nonce, frame), offset) in frames.into_iter().zip(due) {
                let due_at = start + offset;
                let now = Instant::now();
                if due_at > now {
                    std::thread::sleep(due_at - now);
                }
                if let Ok(mut map) = due_of.lock() {
                    map.insert(nonce, due_at);
                }
                let Ok(mut guard) = writer.lock() else { return };
                debug_assert!(nonce > guard.1);
                if group {
                    if let Ok(mut unanswered) = unanswered.lock() {
                        unanswered.insert(nonce, (Instant::now(), frame.clone()));
                    }
                }
                // In a group a failed write waits for the reconnect's resend.
                if guard.0.write_all(&frame).is_err() && !group {
                    return;
                }
                guard.1 = nonce;
                counters.rfcs_sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut outcome = UserOutcome::default();
    let mut reports_sent: HashMap<u64, (Instant, Address, u128)> = HashMap::new();
    let mut resolved = 0usize;
    let total = plan.due.len();
    let mut pending_reports: Vec<(Instant, u64, Address, u64, u128, u64, bool)> = Vec::new();
    let mut reconnects = 0u32;
    let mut rfcs_resolved: std::collections::HashSet<u64> = Default::default();
    client
        .set_read_timeout(Some(Duration::from_millis(5)))
        .map_err(|e| e.to_string())?;
    'reading: loop {
        let now = Instant::now();
        let mut index = 0;
        while index < pending_reports.len() {
            if pending_reports[index].0 > now {
                index += 1;
                continue;
            }
            let (_, session_id, provider, tokens, price, elapsed_ms, pass) =
                pending_reports.swap_remove(index);
            let Ok(mut guard) = writer.lock() else {
                return Err("writer lock poisoned".into());
            };
            let nonce = guard.1 + 1;
            // R-REPORT-3: a fixed prompt, whose first token takes a fixed time (at
            // most the whole): honest reports' first tokens are alike, and the jitter
            // is the generation's, as before the split.
            let facts = frames::ReportFacts {
                session_id,
                elapsed_ms,
                ttft_ms: elapsed_ms.min(SIM_FIRST_TOKEN_MS),
                tokens,
                prompt_tokens: SIM_PROMPT_TOKENS,
                outcome: if pass {
                    frames::Outcome::Pass
                } else {
                    frames::Outcome::Fail
                },
            };
            let frame = frames::report(&plan.key, network_id, nonce, &facts);
            reports_sent.insert(nonce, (Instant::now(), provider, tokens as u128 * price));
            if group {
                if let Ok(mut unanswered) = unanswered.lock() {
                    unanswered.insert(nonce, (Instant::now(), frame.clone()));
                }
            }
            if let Err(e) = guard.0.write_all(&frame) {
                if !group {
                    outcome.connection_lost = Some(format!("user connection: send report: {e}"));
                    break 'reading;
                }
            }
            guard.1 = nonce;
        }
        let sending_done = sender.is_finished();
        if sending_done
            && resolved >= total
            && reports_sent.is_empty()
            && pending_reports.is_empty()
        {
            break;
        }
        if stop_reading.load(Ordering::Relaxed) {
            break;
        }
        // R-HA-3 (issue 25): a stalled connection (frozen leader) or a not_leader on
        // it is dead for a group's client, like a closed one.
        let waited = oldest_waiting(&unanswered);
        let received = if group && waited > GROUP_LIVENESS {
            Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!(
                    "no answer within {} ms (liveness bound {} ms)",
                    waited.as_millis(),
                    GROUP_LIVENESS.as_millis()
                ),
            )))
        } else {
            match client.recv() {
                Ok(message) if group && is_not_leader(&message) => Err(ClientError::Io(
                    std::io::Error::new(std::io::ErrorKind::NotConnected, format!("{message:?}")),
                )),
                other => other,
            }
        };
        let message = match received {
            Ok(message) => message,
            Err(e) if is_timeout(&e) => continue,
            Err(e) if group && reconnects < RECONNECTS_MAX => {
                // R-HA-3: the leader died or lost office: follow the new one and resend.
                reconnects += 1;
                let order = others_first(&endpoints, client.stream().peer_addr().ok());
                match reconnect_user(&order, &plan.key, &writer, &unanswered) {
                    Ok(new) => {
                        client = new;
                        continue;
                    }
                    Err(error) => {
                        outcome.connection_lost =
                            Some(format!("user connection: {e}; reconnect: {error}"));
                        break;
                    }
                }
            }
            Err(e) => {
                outcome.connection_lost = Some(format!("user connection: {e}"));
                break;
            }
        };
        let received = Instant::now();
        if group {
            if let Some(nonce) = final_answer_nonce(&message, plan.key.address()) {
                if let Ok(mut unanswered) = unanswered.lock() {
                    unanswered.remove(&nonce);
                }
            }
        }
        // A final answer counts once: after a failover the original answer may come
        // both on the old connection and as the resend's (R-HA-3).
        let rfc_final = match &message {
            Message::SessionTicket(t) => Some(t.rfc_nonce),
            Message::RfcFailed(f) => Some(f.nonce),
            Message::ErrorReply(e) if e.ref_msg_type == msg_type::RFC => Some(e.ref_nonce),
            _ => None,
        };
        if let Some(nonce) = rfc_final {
            if !rfcs_resolved.insert(nonce) {
                continue;
            }
        }
        match message {
            Message::RfcAccepted(_) => {}
            Message::SessionTicket(ticket) => {
                resolved += 1;
                outcome.sessions += 1;
                if received < start + config.duration {
                    outcome.sessions_in_window += 1;
                }
                counters.tickets.fetch_add(1, Ordering::Relaxed);
                if let Some(due) = due_of
                    .lock()
                    .ok()
                    .and_then(|mut m| m.remove(&ticket.rfc_nonce))
                {
                    outcome
                        .latencies
                        .rfc_to_ticket
                        .record_us(received.duration_since(due).as_micros() as u64);
                }
                let tokens = rng.gen_range(1..=ticket.tokens_max);
                let spread = config.service_jitter_percent.min(99);
                let jitter = rng.gen_range(100 - spread..100 + spread);
                let elapsed_ms = tokens * config.service_ms_per_token * jitter / 100;
                let pass = rng.gen::<f64>() >= config.fail_report_share;
                // The user holds the session while the provider computes, then reports.
                let due = received + Duration::from_millis(elapsed_ms);
                pending_reports.push((
                    due,
                    ticket.session_id,
                    ticket.provider,
                    tokens,
                    ticket.price_wei_per_token,
                    elapsed_ms,
                    pass,
                ));
            }
            Message::ReportAck(ack) => {
                if let Some((sent, provider, _)) = reports_sent.remove(&ack.nonce) {
                    outcome
                        .latencies
                        .report_to_ack
                        .record_us(received.duration_since(sent).as_micros() as u64);
                    outcome.acknowledged_reports += 1;
                    counters.acks.fetch_add(1, Ordering::Relaxed);
                    outcome.last_ack = Some(received);
                    if ack.earned {
                        *outcome.expected_wei.entry(provider).or_default() += ack.earned_wei;
                        outcome.expected_sessions += 1;
                    }
                }
            }
            Message::RfcFailed(failed) => {
                resolved += 1;
                let reason = match failed.reason {
                    1 => "expired",
                    2 => "no_provider",
                    3 => "cancelled",
                    _ => "other",
                };
                *outcome.failed.entry(reason.to_string()).or_default() += 1;
            }
            Message::ErrorReply(error) => {
                *outcome
                    .rejected
                    .entry(codes::name(error.code).to_string())
                    .or_default() += 1;
                if error.ref_msg_type == msg_type::RFC {
                    resolved += 1;
                } else if error.ref_msg_type == msg_type::REPORT {
                    reports_sent.remove(&error.ref_nonce);
                }
            }
            _ => {}
        }
    }
    let _ = sender.join();
    for (_, provider, wei_max) in reports_sent.values() {
        let doubt = outcome.in_doubt_wei.entry(*provider).or_default();
        *doubt = doubt.saturating_add(*wei_max);
        outcome.in_doubt_sessions += 1;
    }
    outcome.outstanding =
        total.saturating_sub(resolved) + reports_sent.len() + pending_reports.len();
    let _ = plan.sybil;
    Ok(outcome)
}

/// R-HA-3: connects to the group's leader again and, under the writer's lock (so no
/// new frame goes between), points the writer at the new connection and resends every
/// unanswered frame in nonce order, byte-identical.
fn reconnect_user(
    endpoints: &[SocketAddr],
    key: &SigningKey,
    writer: &Mutex<(TcpStream, u64)>,
    unanswered: &Mutex<Unanswered>,
) -> Result<Client, String> {
    connect_and_set_up(endpoints, key, |client| {
        client
            .set_read_timeout(Some(Duration::from_millis(5)))
            .map_err(|e| e.to_string())?;
        let stream = client.stream().try_clone().map_err(|e| e.to_string())?;
        let mut guard = writer
            .lock()
            .map_err(|_| "writer lock poisoned".to_string())?;
        guard.0 = stream;
        // Resent now: each frame's wait (the liveness bound's clock) starts again.
        let frames: Vec<Vec<u8>> = unanswered
            .lock()
            .map_err(|_| "unanswered lock poisoned".to_string())?
            .values_mut()
            .map(|(at, frame)| {
                *at = Instant::now();
                frame.clone()
            })
            .collect();
        for frame in &frames {
            guard.0.write_all(frame).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Good,
    Slow,
    Dead,
}

#[derive(Default)]
struct ProviderOutcome {
    probe_rtt: LatencyRecorder,
    probes: u64,
    /// The connection to the router failed mid-run.
    connection_lost: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn run_provider(
    endpoints: Vec<SocketAddr>,
    key: SigningKey,
    config: SimConfig,
    behaviour: Behaviour,
    price: u128,
    stop: Arc<AtomicBool>,
    churn: bool,
    simulated_users: Arc<std::collections::HashSet<Address>>,
) -> Result<ProviderOutcome, String> {
    let mut outcome = ProviderOutcome::default();
    let group = endpoints.len() > 1;
    let mut reconnects = 0u32;
    // R-HA-3 (a group only): session starts sent without their Ack, resent after a
    // reconnect.
    let mut starts_unanswered: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut client = connect(&endpoints, key.clone())?;
    register(&mut client, &config.models, price, config.provider_capacity)?;
    let network_id = client.network_id();
    let mut answered: std::collections::VecDeque<Instant> = Default::default();
    let mut late: Vec<(Instant, u64)> = Vec::new();
    let mut reconnect_at = Instant::now() + Duration::from_millis(1_500 + (price % 1_000) as u64);
    // R-HA-3 (issue 25): a provider mostly listens: in a group it pings to tell a
    // frozen leader from a quiet one.
    let mut liveness = PingLiveness::new(group);
    while !stop.load(Ordering::Relaxed) {
        if churn && Instant::now() >= reconnect_at {
            // Churn: drop the connection (the router marks us unreachable), come back.
            drop(client);
            std::thread::sleep(Duration::from_millis(300));
            client = connect(&endpoints, key.clone())?;
            let nonce = client.next_nonce();
            client
                .send_raw(&frames::provider_announce(&key, network_id, nonce))
                .map_err(|e| e.to_string())?;
            answered.clear();
            reconnect_at = Instant::now() + Duration::from_secs(3);
        }
        let now = Instant::now();
        for (_, probe_id) in late.iter().filter(|(due, _)| *due <= now) {
            let nonce = client.next_nonce();
            let _ = client.send_raw(&frames::probe_answer(&key, network_id, nonce, *probe_id));
        }
        late.retain(|(due, _)| *due > now);
        let received = liveness.recv(&mut client);
        let message = match received {
            Ok(message) => message,
            Err(e) if is_timeout(&e) => continue,
            Err(e) if group && reconnects < RECONNECTS_MAX => {
                // R-HA-3: register with the new leader (its probes in flight are
                // re-armed there; the old answers' tickets come as the new leader's).
                reconnects += 1;
                // The unanswered session starts first, byte-identical (their nonces are
                // below the new registration's), then the registration.
                let order = others_first(&endpoints, client.stream().peer_addr().ok());
                let again = connect_and_set_up(&order, &key, |c| {
                    for frame in starts_unanswered.values() {
                        c.send_raw(frame).map_err(|e| e.to_string())?;
                    }
                    register(c, &config.models, price, config.provider_capacity)
                });
                match again {
                    Ok(new) => {
                        client = new;
                        answered.clear();
                        continue;
                    }
                    Err(error) => {
                        outcome.connection_lost =
                            Some(format!("provider connection: {e}; reconnect: {error}"));
                        break;
                    }
                }
            }
            Err(e) => {
                outcome.connection_lost = Some(format!("provider connection: {e}"));
                break;
            }
        };
        match message {
            Message::Probe(probe) => {
                outcome.probes += 1;
                match behaviour {
                    Behaviour::Good => {
                        let nonce = client.next_nonce();
                        let frame = frames::probe_answer(&key, network_id, nonce, probe.probe_id);
                        answered.push_back(Instant::now());
                        // In a group a failed send is the lost connection the next read
                        // reports and the reconnect handles (the probe is re-armed).
                        if let Err(e) = client.send_raw(&frame) {
                            if !group {
                                outcome.connection_lost =
                                    Some(format!("provider connection: send probe answer: {e}"));
                                break;
                            }
                        }
                    }
                    Behaviour::Slow => late.push((
                        Instant::now() + Duration::from_millis(2_500),
                        probe.probe_id,
                    )),
                    Behaviour::Dead => {}
                }
            }
            Message::SessionTicket(ticket) if !simulated_users.contains(&ticket.user) => {
                // R-SESSION-1: a ticket of someone else (an attacker of `--scenario
                // attacks`) whose holder never sends its request: a provider node signs
                // no start for it, and neither does this one.
                if let Some(sent) = answered.pop_front() {
                    outcome
                        .probe_rtt
                        .record_us(sent.elapsed().as_micros() as u64);
                }
            }
            Message::SessionTicket(ticket) => {
                // R-SESSION-1: the simulated users send their request at once, so the
                // simulated inference begins as the ticket arrives, as the provider
                // node signs it when it serves the request.
                let nonce = client.next_nonce();
                let start: Message = SessionStart {
                    from: key.address(),
                    nonce,
                    session_id: ticket.session_id,
                    signature: Signature::default(),
                }
                .into();
                let frame = yellowstone_wire::client::presign(&key, network_id, start);
                if group {
                    starts_unanswered.insert(nonce, frame.clone());
                }
                if let Err(e) = client.send_raw(&frame) {
                    if !group {
                        outcome.connection_lost =
                            Some(format!("provider connection: send session start: {e}"));
                        break;
                    }
                }
                if let Some(sent) = answered.pop_front() {
                    outcome
                        .probe_rtt
                        .record_us(sent.elapsed().as_micros() as u64);
                }
            }
            Message::Notice(notice) if notice.kind == 1 => {
                // Marked unreachable: announce ourselves again.
                let nonce = client.next_nonce();
                let _ = client.send_raw(&frames::provider_announce(&key, network_id, nonce));
            }
            Message::ErrorReply(error) if error.ref_msg_type == msg_type::PROBE_ANSWER => {
                answered.pop_front();
            }
            Message::Ack(ack) => {
                starts_unanswered.remove(&ack.nonce);
            }
            Message::ErrorReply(error) => {
                starts_unanswered.remove(&error.ref_nonce);
            }
            _ => {}
        }
    }
    Ok(outcome)
}

struct BatchLog {
    blocks: Vec<u64>,
    credited_wei: BTreeMap<Address, u128>,
    receipts: u64,
    received_at: Vec<Instant>,
    total_wei: u128,
    /// The connection to the router failed mid-run.
    connection_lost: Option<String>,
}

fn subscribe(operator: &mut Client) -> Result<(), String> {
    let nonce = operator.next_nonce();
    operator
        .send_signed(
            SubscribeBatches {
                from: operator.address(),
                nonce,
                signature: Signature::default(),
            }
            .into(),
        )
        .map_err(|e| e.to_string())
}

/// The market's open block now (`MarketStateQuery`), read before subscribing: a batch
/// below it was sealed before this run began.
fn open_block(operator: &mut Client) -> Result<u64, String> {
    const QUERY_ID: u64 = 0x5953_4c47; // "YSLG"
    operator
        .send(&Message::from(
            yellowstone_wire::messages::MarketStateQuery { query_id: QUERY_ID },
        ))
        .map_err(|e| format!("market state query: {e}"))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while Instant::now() < deadline {
        match operator.recv() {
            Ok(Message::MarketState(state)) if state.query_id == QUERY_ID => return Ok(state.block),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(format!("market state query: {e}")),
        }
    }
    Err("market state query: no answer in time".into())
}

fn run_operator_subscriber(
    mut operator: Client,
    endpoints: Vec<SocketAddr>,
    router: Address,
    stop: Arc<AtomicBool>,
) -> Result<BatchLog, String> {
    // R-HA-2: a subscription is sent the newest sealed batch at once; one sealed
    // before this run (another run's credits, on a router this run shares) is not
    // this run's to count.
    let first_block = open_block(&mut operator)?;
    subscribe(&mut operator)?;
    let group = endpoints.len() > 1;
    let mut reconnects = 0u32;
    let network_id = operator.network_id();
    let mut log = BatchLog {
        blocks: Vec::new(),
        credited_wei: BTreeMap::new(),
        receipts: 0,
        received_at: Vec::new(),
        total_wei: 0,
        connection_lost: None,
    };
    // R-HA-3 (issue 25): batches come 12 s apart: pings tell a frozen leader.
    let mut liveness = PingLiveness::new(group);
    while !stop.load(Ordering::Relaxed) {
        let message = match liveness.recv(&mut operator) {
            Ok(message) => message,
            Err(e) if is_timeout(&e) => continue,
            Err(e) if group && reconnects < RECONNECTS_MAX => {
                // R-HA-3: subscribe with the new leader, which sends the newest sealed
                // batch at once (R-HA-2): one sealed while this was away is no gap.
                reconnects += 1;
                let key = operator.key().clone();
                let order = others_first(&endpoints, operator.stream().peer_addr().ok());
                match connect_and_set_up(&order, &key, subscribe) {
                    Ok(new) => {
                        operator = new;
                        continue;
                    }
                    Err(error) => {
                        log.connection_lost =
                            Some(format!("operator connection: {e}; reconnect: {error}"));
                        break;
                    }
                }
            }
            Err(e) => {
                log.connection_lost = Some(format!("operator connection: {e}"));
                break;
            }
        };
        if let Message::CreditBatch(batch) = &message {
            // R-HA-2: a subscription is sent the newest sealed batch at once; after a
            // reconnect it may be one this log holds already (the same bytes).
            if batch.block < first_block
                || log.blocks.last().is_some_and(|last| batch.block <= *last)
            {
                continue;
            }
            let mut body = Vec::new();
            message.encode(&mut body);
            message
                .verify_router(network_id, &body, &router)
                .map_err(|e| format!("batch {} has a bad router signature: {e}", batch.block))?;
            log.blocks.push(batch.block);
            log.receipts += batch.receipts;
            log.received_at.push(Instant::now());
            for totals in &batch.totals {
                *log.credited_wei.entry(totals.provider).or_default() += totals.earned_wei;
                log.total_wei += totals.earned_wei;
            }
        }
    }
    Ok(log)
}

static LAST_LATENCIES: Mutex<Option<Latencies>> = Mutex::new(None);

/// The latency recorders of the last run (for `.hgrm` files and plots).
pub fn last_latencies() -> Latencies {
    LAST_LATENCIES
        .lock()
        .ok()
        .and_then(|l| l.clone())
        .unwrap_or_default()
}

/// Runs the simulation against `target` and returns the summary.
pub fn run(target: &Target, config: &SimConfig) -> Result<RunSummary, String> {
    run_with(target, config, None)
}

/// Runs the simulation with `side` traffic beside it (see `SideTraffic`).
pub fn run_with(
    target: &Target,
    config: &SimConfig,
    mut side: Option<&mut dyn SideTraffic>,
) -> Result<RunSummary, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let endpoints = if target.endpoints.is_empty() {
        vec![target.addr]
    } else {
        target.endpoints.clone()
    };
    let mut operator = connect(&endpoints, target.operator.clone())?;
    let router = operator.router();
    // Keys: users, sybils and providers, deterministic from the seed.
    let user_keys: Vec<SigningKey> = (0..config.users)
        .map(|i| SigningKey::from_seed(format!("ys-user-{}-{i}", config.seed).as_bytes()))
        .collect();
    let sybil_count = if config.scenario == Scenario::Sybil {
        config.users
    } else {
        0
    };
    let sybil_keys: Vec<SigningKey> = (0..sybil_count)
        .map(|i| SigningKey::from_seed(format!("ys-sybil-{}-{i}", config.seed).as_bytes()))
        .collect();
    let provider_keys: Vec<SigningKey> = (0..config.providers)
        .map(|i| SigningKey::from_seed(format!("ys-provider-{}-{i}", config.seed).as_bytes()))
        .collect();
    let mut balances: Vec<(Address, u128)> = user_keys
        .iter()
        .map(|k| {
            (
                k.address(),
                rng.gen_range(config.balance_mor.0..=config.balance_mor.1) as u128 * WEI_PER_MOR,
            )
        })
        .collect();
    // Sybils: half hold nothing, half a dust balance.
    balances.extend(
        sybil_keys
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, k)| (k.address(), WEI_PER_MOR / 1_000)),
    );
    balances.extend(provider_keys.iter().map(|k| (k.address(), WEI_PER_MOR)));
    if let Some(side) = side.as_deref() {
        balances.extend(side.balances());
    }
    fund(&mut operator, &balances)?;

    // The users whose tickets the simulated providers serve (and sign started).
    let simulated_users: Arc<std::collections::HashSet<Address>> = Arc::new(
        user_keys
            .iter()
            .chain(&sybil_keys)
            .map(|k| k.address())
            .collect(),
    );
    let stop_providers = Arc::new(AtomicBool::new(false));
    let slow = (config.providers as f64 * config.slow_provider_share).round() as usize;
    let dead = (config.providers as f64 * config.dead_provider_share).round() as usize;
    let mut provider_threads = Vec::new();
    for (i, key) in provider_keys.into_iter().enumerate() {
        let behaviour = if i < dead {
            Behaviour::Dead
        } else if i < dead + slow {
            Behaviour::Slow
        } else {
            Behaviour::Good
        };
        // Bids spread +-20 % around the reference price.
        let price = config.reference_price_wei * rng.gen_range(80..=120) / 100;
        let churn = config.scenario == Scenario::Churn && i % 2 == 0;
        let (endpoints, config, stop) = (endpoints.clone(), config.clone(), stop_providers.clone());
        let simulated_users = simulated_users.clone();
        provider_threads.push(std::thread::spawn(move || {
            run_provider(
                endpoints,
                key,
                config,
                behaviour,
                price,
                stop,
                churn,
                simulated_users,
            )
        }));
    }
    std::thread::sleep(Duration::from_millis(300)); // registrations land first
    if let Some(side) = side.as_deref_mut() {
        if let Err(error) = side.prepare(target, config) {
            stop_providers.store(true, Ordering::Relaxed);
            for thread in provider_threads {
                let _ = thread.join();
            }
            return Err(format!("side traffic: {error}"));
        }
    }

    let stop_batches = Arc::new(AtomicBool::new(false));
    let subscriber = {
        let stop = stop_batches.clone();
        let endpoints = endpoints.clone();
        std::thread::spawn(move || run_operator_subscriber(operator, endpoints, router, stop))
    };

    // Signing ahead happens inside each user thread before `start`.
    let counters = Arc::new(Counters::default());
    let stop_users = Arc::new(AtomicBool::new(false));
    let start =
        Instant::now() + Duration::from_millis(500 + 30 * (config.users + sybil_count) as u64 / 8);
    let all_users = config.users + sybil_count;
    if let Some(side) = side.as_deref_mut() {
        side.begin(start, config.duration);
    }
    let mut user_threads = Vec::new();
    for (i, key) in user_keys.into_iter().chain(sybil_keys).enumerate() {
        let sybil = i >= config.users;
        let share = if config.scenario == Scenario::Sybil {
            0.5
        } else {
            1.0
        } / config.users.max(1) as f64;
        let due = schedule(config, share, (i as f64) / all_users as f64);
        let plan = UserPlan { key, due, sybil };
        let (endpoints, config, counters, stop) = (
            endpoints.clone(),
            config.clone(),
            counters.clone(),
            stop_users.clone(),
        );
        user_threads.push(std::thread::spawn(move || {
            run_user(endpoints, plan, config, start, counters, stop)
        }));
    }
    // Progress while it runs: one line rewritten in place at a terminal; into a file
    // or a pipe, one whole line per update every few seconds (no pile of \r).
    use std::io::IsTerminal as _;
    let in_place = std::io::stderr().is_terminal();
    let ticks_per_line = if in_place {
        1
    } else {
        PROGRESS_LINE_EVERY_TICKS
    };
    let window_end = start + config.duration;
    let mut tick = 0u64;
    while Instant::now() < window_end + config.drain {
        std::thread::sleep(Duration::from_millis(500));
        tick += 1;
        if config.progress && tick.is_multiple_of(ticks_per_line) {
            let elapsed = Instant::now()
                .saturating_duration_since(start)
                .as_secs_f64();
            let line = format!(
                "  {:>5.1}s  rfcs {:>8}  sessions {:>8}  acks {:>8}",
                elapsed,
                counters.rfcs_sent.load(Ordering::Relaxed),
                counters.tickets.load(Ordering::Relaxed),
                counters.acks.load(Ordering::Relaxed)
            );
            if in_place {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
        if user_threads.iter().all(|t| t.is_finished()) {
            break;
        }
    }
    if config.progress && in_place {
        eprintln!();
    }
    stop_users.store(true, Ordering::Relaxed);
    let mut outcome = UserOutcome::default();
    let mut users_unconnected = 0u64;
    for thread in user_threads {
        let user = thread
            .join()
            .map_err(|_| "user thread panicked".to_string())??;
        outcome.latencies.merge(&user.latencies);
        for (code, n) in user.rejected {
            *outcome.rejected.entry(code).or_default() += n;
        }
        for (reason, n) in user.failed {
            *outcome.failed.entry(reason).or_default() += n;
        }
        outcome.sessions += user.sessions;
        outcome.sessions_in_window += user.sessions_in_window;
        outcome.acknowledged_reports += user.acknowledged_reports;
        outcome.expected_sessions += user.expected_sessions;
        for (provider, wei) in user.expected_wei {
            *outcome.expected_wei.entry(provider).or_default() += wei;
        }
        for (provider, wei) in user.in_doubt_wei {
            let doubt = outcome.in_doubt_wei.entry(provider).or_default();
            *doubt = doubt.saturating_add(wei);
        }
        outcome.in_doubt_sessions += user.in_doubt_sessions;
        outcome.last_ack = outcome.last_ack.max(user.last_ack);
        outcome.outstanding += user.outstanding;
        if outcome.connection_lost.is_none() {
            outcome.connection_lost = user.connection_lost;
        }
        users_unconnected += u64::from(user.connect_failed);
    }
    // The side traffic stops; what it was told it earned is expected like the users'.
    if let Some(side) = side {
        let credits = side
            .finish()
            .map_err(|error| format!("side traffic: {error}"))?;
        for (provider, wei) in credits.expected_wei {
            *outcome.expected_wei.entry(provider).or_default() += wei;
        }
        outcome.expected_sessions += credits.expected_sessions;
        for (provider, wei) in credits.in_doubt_wei {
            let doubt = outcome.in_doubt_wei.entry(provider).or_default();
            *doubt = doubt.saturating_add(wei);
        }
        outcome.in_doubt_sessions += credits.in_doubt_sessions;
    }
    let sent_window = Instant::now()
        .saturating_duration_since(start)
        .min(config.duration + config.drain)
        .as_secs_f64()
        .max(0.001);

    // Wait for the batch that covers the last acknowledged report.
    let last_ack_ms = now_ms();
    let wait_until = Instant::now() + Duration::from_secs(30);
    let covering_block = config
        .genesis_ms
        .map(|g| last_ack_ms.saturating_sub(g) / 12_000);
    let started_wait = Instant::now();
    loop {
        if !config.await_batches {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if subscriber.is_finished() || Instant::now() >= wait_until {
            break;
        }
        // Peek through the subscriber's progress: finish once enough time has passed
        // for the covering block to be sealed (embedded) or 13 s (external).
        let needed = match (covering_block, config.genesis_ms) {
            (Some(block), Some(genesis)) => Duration::from_millis(
                (genesis + (block + 1) * 12_000 + 700).saturating_sub(last_ack_ms),
            ),
            _ => Duration::from_secs(13),
        };
        if started_wait.elapsed() >= needed {
            break;
        }
    }
    stop_batches.store(true, Ordering::Relaxed);
    stop_providers.store(true, Ordering::Relaxed);
    let batches = subscriber
        .join()
        .map_err(|_| "subscriber panicked".to_string())??;
    let mut connection_lost = outcome.connection_lost.take().or(batches.connection_lost);
    let mut probe_rtt = LatencyRecorder::new();
    for thread in provider_threads {
        let provider = thread
            .join()
            .map_err(|_| "provider thread panicked".to_string())??;
        probe_rtt.merge(&provider.probe_rtt);
        connection_lost = connection_lost.or(provider.connection_lost);
    }
    outcome.latencies.probe_rtt = probe_rtt;

    // The self-check: every creditable ack credited exactly once, no batch gap. A
    // report whose ack had not arrived when the run stopped is in doubt: its credit
    // is allowed (up to its most wei) but not required.
    let mut missing = 0u64;
    let mut unexpected = 0u64;
    for (provider, wei) in &outcome.expected_wei {
        let got = batches.credited_wei.get(provider).copied().unwrap_or(0);
        let doubt = outcome.in_doubt_wei.get(provider).copied().unwrap_or(0);
        if got < *wei {
            missing += 1;
        } else if got > wei.saturating_add(doubt) {
            unexpected += 1;
        }
    }
    unexpected += batches
        .credited_wei
        .iter()
        .filter(|(p, got)| {
            !outcome.expected_wei.contains_key(*p)
                && **got > outcome.in_doubt_wei.get(*p).copied().unwrap_or(0)
        })
        .count() as u64;
    let gaps = batches
        .blocks
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0] + 1))
        .sum::<u64>();
    let receipts_max = outcome.expected_sessions + outcome.in_doubt_sessions;
    let receipts_match =
        batches.receipts >= outcome.expected_sessions && batches.receipts <= receipts_max;
    let consistency = ConsistencyCheck {
        expected_credits: outcome.expected_sessions,
        credited_once: if receipts_match && missing == 0 && unexpected == 0 {
            outcome.expected_sessions
        } else {
            batches.receipts.min(outcome.expected_sessions)
        },
        missing: missing + outcome.expected_sessions.saturating_sub(batches.receipts),
        unexpected: unexpected + batches.receipts.saturating_sub(receipts_max),
        in_doubt: outcome.in_doubt_sessions,
        batch_gaps: gaps,
        failures: Vec::new(),
        ok: connection_lost.is_none()
            && receipts_match
            && missing == 0
            && unexpected == 0
            && gaps == 0
            && (!batches.blocks.is_empty() || !config.await_batches),
    };
    let mut summary = RunSummary {
        scenario: config.scenario.name().to_string(),
        target: target.description.clone(),
        backend: target.backend.clone(),
        duration_s: sent_window,
        rfc_rate_target_per_s: config.rate_per_s,
        rfcs_sent: counters.rfcs_sent.load(Ordering::Relaxed),
        sessions_completed: outcome.sessions,
        sessions_per_s: outcome.sessions as f64 / config.duration.as_secs_f64().max(0.001),
        sessions_in_window: outcome.sessions_in_window,
        sessions_in_window_per_s: outcome.sessions_in_window as f64
            / config.duration.as_secs_f64().max(0.001),
        rejected: outcome.rejected,
        rfcs_failed: outcome.failed,
        acknowledged_reports: outcome.acknowledged_reports,
        credited_sessions: batches.receipts,
        credited_wei: batches.total_wei.to_string(),
        batches: batches.blocks.len() as u64,
        pings: 0,
        consistency,
        acknowledged_creditable_wei: outcome.expected_wei.values().sum::<u128>().to_string(),
        router_lost: connection_lost,
        users_unconnected,
        credited_by_provider: batches.credited_wei.clone(),
        ..RunSummary::default()
    };
    summary.set_latencies(&outcome.latencies);
    summary.judge_refusals(target.endpoints.len() > 1);
    if let Ok(mut last) = LAST_LATENCIES.lock() {
        *last = Some(outcome.latencies.clone());
    }
    if outcome.outstanding > 0 {
        tracing::warn!(
            outstanding = outcome.outstanding,
            "requests without an answer at the end of the drain"
        );
    }
    let _ = TcpStream::connect_timeout(&target.addr, Duration::from_millis(1));
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use yellowstone_gateway::router::config::RouterConfig;
    use yellowstone_gateway::router::{Router, StartOptions};
    use yellowstone_tests::cut_proxy::CutProxy;
    use yellowstone_wire::messages::msg_type;

    /// Sends a Ping and waits (at most 2 s) for its Pong.
    fn ping(client: &mut Client) -> Result<(), String> {
        client
            .send_raw(&Message::from(yellowstone_wire::Ping { payload: 7 }).to_frame())
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match client.recv() {
                Ok(Message::Pong(_)) => return Ok(()),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("no Pong within 2 s".into())
    }

    /// R-HA-3 (the 100-failover run): a connection closed while the client sets it up
    /// (a leader losing office right after the login) is followed again, not taken as
    /// the group lost; a set-up that always fails is reported with its last error.
    #[test]
    fn r_ha_3_a_set_up_cut_by_a_lost_office_is_tried_again() {
        let mut config = RouterConfig::default();
        config.network.listen = "127.0.0.1:0".parse().unwrap();
        config.metrics.enabled = false;
        let router = Router::start(StartOptions::ephemeral(config).unwrap()).unwrap();
        // The first two connections are cut at the router's Pong: after the login.
        let proxy = CutProxy::start_cutting_at(router.listen, msg_type::PONG, 2);
        let key = SigningKey::from_seed(b"set-up-cut");
        let mut setups = 0;
        let client = connect_and_set_up(&[proxy.addr], &key, |c| {
            setups += 1;
            ping(c)
        });
        assert!(client.is_ok(), "{:?}", client.err());
        assert_eq!(setups, 3, "two cut set-ups, then one that passed");
        assert_eq!(proxy.cuts(), 2);

        let error = connect_and_set_up(&[router.listen], &key, |_| Err("refused".into()))
            .err()
            .expect("a set-up that always fails");
        assert!(
            error.contains("5 times") && error.ends_with("refused"),
            "{error}"
        );
        router.shutdown().unwrap();
    }
}
