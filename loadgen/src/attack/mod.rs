//! The hostile scenarios of issue 27 (`--scenario attacks`): for each kind of attack
//! a participant can make on the market, runs of the honest simulation (`sim`) with
//! and without that attacker, interleaved, each against a fresh embedded router, and
//! a report of what the attack cost honest traffic and what the attacker took.
//!
//! Each scenario is one file: `self_dealing` (R-MATCH-7), `sybil_registrations`
//! (R-PROV-2, and R-CONTRACT-4 as `sybil-bootstrap`), `capacity_hoarder` (R-SESSION-1), `costly_frame` (R-PROV-3),
//! `refusal_flood` (R-PROV-3), `griefing` (R-PERF-4), `idle_connections` (R-PROV-3,
//! SPEC section 9) and `quota_flood` (R-QUOTA-5). Each is bounded in rate, count and
//! time (its window), and runs on one thread pinned to one core (`pin_to_core`), so
//! the attackers are given at most one core. Every run (baseline or attacked) also
//! has an honest `canary` provider that registers during the window and must be
//! accepted, matched and left unsuspended.

pub mod canary;
pub mod capacity_hoarder;
pub mod costly_frame;
pub mod griefing;
pub mod idle_connections;
pub mod quota_flood;
pub mod refusal_flood;
pub mod report;
pub mod self_dealing;
pub mod sybil_registrations;

use crate::embedded::{self, EmbeddedOptions};
use crate::rate::Schedule;
use crate::sim::{self, SideCredits, SideError, SideTraffic, SimConfig, Target};
use canary::{Canary, CanaryOutcome};
use report::{AttackReport, PairReport, RunFigures, RunResult, ScenarioReport};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use yellowstone_gateway::router::config::{demo_weights_hash, ModelEntry, RouterConfig};
use yellowstone_wire::client::{Client, ClientError};
use yellowstone_wire::{codes, Address, Message, SigningKey};

pub const WEI_PER_MOR: u128 = sim::WEI_PER_MOR;

/// The kinds of attack, in the order the report lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Control,
    SelfDealing,
    SybilRegistrations,
    SybilBootstrap,
    CapacityHoarder,
    CostlyFrame,
    RefusalFlood,
    GriefingUser,
    IdleConnections,
    QuotaFlood,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Control,
        Kind::SelfDealing,
        Kind::SybilRegistrations,
        Kind::SybilBootstrap,
        Kind::CapacityHoarder,
        Kind::CostlyFrame,
        Kind::RefusalFlood,
        Kind::GriefingUser,
        Kind::IdleConnections,
        Kind::QuotaFlood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Control => "control",
            Kind::SelfDealing => "self-dealing",
            Kind::SybilRegistrations => "sybil-registrations",
            Kind::SybilBootstrap => "sybil-bootstrap",
            Kind::CapacityHoarder => "capacity-hoarder",
            Kind::CostlyFrame => "costly-frame",
            Kind::RefusalFlood => "refusal-flood",
            Kind::GriefingUser => "griefing-user",
            Kind::IdleConnections => "idle-connections",
            Kind::QuotaFlood => "quota-flood",
        }
    }

    /// The requirement and the case of issue 27 the scenario reproduces.
    pub fn case(self) -> &'static str {
        match self {
            Kind::Control => "no attacker on either side: this invocation's noise",
            Kind::SelfDealing => "R-MATCH-7, case 1",
            Kind::SybilRegistrations => "R-PROV-2, case 2",
            Kind::SybilBootstrap => "R-CONTRACT-4, case 3",
            Kind::CapacityHoarder => "R-SESSION-1, case 4",
            Kind::CostlyFrame => "R-PROV-3, case 5",
            Kind::RefusalFlood => "R-PROV-3, case 6",
            Kind::GriefingUser => "R-PERF-4, case 7",
            Kind::IdleConnections => "R-PROV-3 and SPEC 9, case 13",
            Kind::QuotaFlood => "R-QUOTA-5",
        }
    }

    /// Errors: not one of the names above.
    pub fn parse(text: &str) -> Result<Kind, AttackError> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| AttackError::BadSetting {
                flag: "--attacks",
                reason: format!(
                    "unknown attack {text:?}: one of {}",
                    Kind::ALL.map(Kind::name).join(", ")
                ),
            })
    }
}

/// Why an attack run could not be made (not what the attack did: that is its `Take`).
#[derive(Debug)]
pub enum AttackError {
    /// An attacker or the canary could not connect or log in.
    Connect {
        who: &'static str,
        error: ClientError,
    },
    /// A read or write on an attacker's connection failed.
    Io {
        who: &'static str,
        error: std::io::Error,
    },
    /// A setup step the scenario needs was refused (e.g. its first registration).
    Refused {
        what: &'static str,
        code: &'static str,
        reason: String,
    },
    /// A setup step got no answer in time.
    Timeout { what: &'static str },
    /// The embedded router could not start or stop (its own message).
    Router(String),
    /// The honest simulation failed (its own message).
    Sim(String),
    /// An attacker or canary thread panicked.
    Panicked { who: &'static str },
    /// A flag or setting the attacks cannot honour.
    BadSetting { flag: &'static str, reason: String },
}

impl std::fmt::Display for AttackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttackError::Connect { who, error } => write!(f, "{who}: connect: {error}"),
            AttackError::Io { who, error } => write!(f, "{who}: {error}"),
            AttackError::Refused { what, code, reason } => {
                write!(f, "{what} refused: {code}: {reason}")
            }
            AttackError::Timeout { what } => write!(f, "{what}: no answer in time"),
            AttackError::Router(e) => write!(f, "embedded router: {e}"),
            AttackError::Sim(e) => write!(f, "honest simulation: {e}"),
            AttackError::Panicked { who } => write!(f, "{who} thread panicked"),
            AttackError::BadSetting { flag, reason } => write!(f, "{flag}: {reason}"),
        }
    }
}

impl std::error::Error for AttackError {}

/// The router limits the attack runs use (both baseline and attacked, so pairs
/// compare like with like), lowered from the defaults so that a flood bounded in
/// count reaches them within seconds: a scaled model of the 100,000 sybil
/// registrations and 20,000 idle connections.
pub const ATTACK_PROVIDERS_MAX: u32 = 500;
/// `network.connections_max` of the attack runs (also bounded by the descriptors the
/// process may open: the router and its clients share this process).
pub const ATTACK_CONNECTIONS_MAX: usize = 4_000;
/// Models of the attack runs' catalog (demo models 1..=64): a registration of
/// `OFFERS_MAX` offers (the costly frame) names only known models. Honest traffic
/// uses models 1..=4.
pub const ATTACK_CATALOG_MODELS: u32 = 64;

/// Everything the attack runs are made with.
#[derive(Clone, Debug)]
pub struct AttackSettings {
    /// Pairs (baseline, attacked) per scenario; the report takes medians over them.
    pub pairs: usize,
    /// Sending window of each run.
    pub window: Duration,
    /// Smaller floods (for the CI test); the same scenarios.
    pub short: bool,
    /// The honest simulation: RFC rate, users, providers, capacity per offer.
    pub honest_rate: f64,
    pub users: usize,
    pub providers: usize,
    pub provider_capacity: u32,
    /// The core every attacker thread is pinned to (None: the first core this
    /// process may run on).
    pub attacker_core: Option<usize>,
    pub kinds: Vec<Kind>,
    pub seed: u64,
    /// How the embedded routers are started (`run_ms` is set per run).
    pub embedded: EmbeddedOptions,
    /// Wait for each run's credit batch (the self-check's credit part); false in
    /// short runs.
    pub await_batches: bool,
    pub progress: bool,
    /// The routers' `network.conn_refusals_per_s_max` (None: the router's default).
    pub conn_refusals_per_s_max: Option<u32>,
    /// The routers' `network.addr_refusals_per_s_max` (None: the router's default).
    pub addr_refusals_per_s_max: Option<u32>,
}

/// What an attacker knows of the router it attacks.
#[derive(Clone, Debug)]
pub struct AttackContext {
    pub addr: SocketAddr,
    pub short: bool,
    pub seed: u64,
    pub providers_max: u32,
    pub connections_max: usize,
    /// The honest providers' bids are 80 %..120 % of this (wei per token).
    pub reference_price_wei: u128,
    pub tokens_max: u64,
    pub service_ms_per_token: u64,
    /// Honest users and providers (each one connection).
    pub honest_connections: usize,
    /// Set by the attack once its damage is in place (e.g. the sybils are
    /// registered); the canary registers only after it.
    pub primed: Arc<AtomicBool>,
    /// Set when the run stops the attacker early.
    pub stop: Arc<AtomicBool>,
}

/// The sending window of a run.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    /// Sleeps until the window opens (or the run stops).
    pub fn wait_start(&self, stop: &AtomicBool) {
        while Instant::now() < self.start && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(
                self.start
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(20)),
            );
        }
    }

    pub fn open(&self, stop: &AtomicBool) -> bool {
        Instant::now() < self.end && !stop.load(Ordering::Relaxed)
    }
}

/// What an attacker took or earned in one run.
#[derive(Clone, Debug, Default)]
pub struct Take {
    /// Wei acknowledged as earned on sessions whose user and provider were the
    /// attacker itself (`ReportAck.earned_wei`, summed): self-dealing's gain.
    pub earned_wei: u128,
    /// Addresses whose credit in the batches is the attacker's.
    pub addresses: Vec<Address>,
    /// What the credit batches credited those addresses (for any session, honest
    /// users' included); None when the run did not wait for its batches.
    pub credited_wei: Option<u128>,
    /// Counts by name ("sessions_held", "registrations_placed", ...).
    pub took: BTreeMap<String, u64>,
    /// The router's refusals of the attacker's messages, by error code name.
    pub refused: BTreeMap<String, u64>,
    /// Credit acknowledged for providers on the attacker's reports (for the
    /// simulation's self-check).
    pub credits: SideCredits,
}

impl Take {
    pub fn add(&mut self, what: &str, n: u64) {
        *self.took.entry(what.to_string()).or_default() += n;
    }

    pub fn refusal(&mut self, code: u16) {
        *self
            .refused
            .entry(codes::name(code).to_string())
            .or_default() += 1;
    }
}

/// One hostile scenario.
pub trait Attack: Send {
    /// Addresses to fund before the run, with their balance in wei.
    fn balances(&self) -> Vec<(Address, u128)> {
        Vec::new()
    }
    /// Before the honest users connect (e.g. open idle connections).
    ///
    /// Errors: the scenario could not be set up.
    fn prepare(&mut self, _ctx: &AttackContext) -> Result<(), AttackError> {
        Ok(())
    }
    /// The attack itself, from `window.start` until `window.end` (or `ctx.stop`).
    ///
    /// Errors: the scenario could not be carried out (not a refusal of the attack).
    fn run(&mut self, ctx: &AttackContext, window: Window) -> Result<Take, AttackError>;
}

/// The attack of `kind`, with its bounds for a full or `short` run.
pub fn make(kind: Kind, seed: u64, short: bool) -> Box<dyn Attack> {
    match kind {
        Kind::Control => Box::new(Control),
        Kind::SelfDealing => Box::new(self_dealing::SelfDealing::new(seed)),
        Kind::SybilRegistrations => Box::new(sybil_registrations::SybilRegistrations::new(
            seed,
            sybil_registrations::Goal::ProvidersMax,
        )),
        Kind::SybilBootstrap => Box::new(sybil_registrations::SybilRegistrations::new(
            seed,
            sybil_registrations::Goal::BootstrapSlots,
        )),
        Kind::CapacityHoarder => Box::new(capacity_hoarder::CapacityHoarder::new(seed)),
        Kind::CostlyFrame => Box::new(costly_frame::CostlyFrame::new(seed)),
        Kind::RefusalFlood => Box::new(refusal_flood::RefusalFlood::new(seed, short)),
        Kind::GriefingUser => Box::new(griefing::GriefingUser::new(seed)),
        Kind::IdleConnections => Box::new(idle_connections::IdleConnections::new()),
        Kind::QuotaFlood => Box::new(quota_flood::QuotaFlood::new(seed)),
    }
}

/// The control scenario: the "attacked" run has no attacker (its thread only waits
/// out the window), so its pair is baseline against baseline (A/A). Its ratios are
/// what this invocation's measurement gives when nothing differs: the noise that the
/// other scenarios' ratios must be read against.
struct Control;

impl Attack for Control {
    fn run(&mut self, ctx: &AttackContext, window: Window) -> Result<Take, AttackError> {
        ctx.primed.store(true, Ordering::Relaxed);
        window.wait_start(&ctx.stop);
        while window.open(&ctx.stop) {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Take::default())
    }
}

/// CPU time (user + system, ms) used so far by this process's threads that belong
/// to the embedded router: those it names `ys-*` (gateway, engine, journal, ...)
/// and the kernel's io_uring workers (`iou-wrk-*`); the simulation's and the
/// attackers' threads keep the process's name. None where /proc cannot be read.
/// 10-ms ticks: a run's few seconds of router work read to about 1 %.
pub fn router_cpu_ms() -> Option<f64> {
    // SAFETY: sysconf reads a constant of the system.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_s <= 0 {
        return None;
    }
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // "tid (comm) state ... utime stime ...": comm may hold spaces, so split at
        // the last ')'; utime and stime are fields 14 and 15 (11 and 12 after it).
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        if !(comm.starts_with("ys-") || comm.starts_with("iou-wrk")) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        ticks += field(11).unwrap_or(0) + field(12).unwrap_or(0);
    }
    Some(ticks as f64 * 1_000.0 / ticks_per_s as f64)
}

/// Pins the calling thread to `core` (sched_setaffinity).
///
/// Errors: the core does not exist or is not allowed to this process.
pub fn pin_to_core(core: usize) -> std::io::Result<()> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it (core is
    // checked against CPU_SETSIZE); pid 0 is the calling thread.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The cores this process may run on (sched_getaffinity; empty if unknown).
pub fn allowed_cores() -> Vec<usize> {
    // SAFETY: as in `pin_to_core`; sched_getaffinity fills the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&core| libc::CPU_ISSET(core, &set))
            .collect()
    }
}

/// The first core this process may run on (the attackers' default core).
pub fn first_allowed_core() -> usize {
    allowed_cores().first().copied().unwrap_or(0)
}

/// The soft limit on descriptors this process may open (RLIMIT_NOFILE).
pub fn descriptor_limit() -> u64 {
    // SAFETY: getrlimit fills the struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1_024;
        }
        limit.rlim_cur
    }
}

/// An attacker's connection: its own nonce counter (shared by the connections of
/// one address, R-ID-4), sends of pre-built frames, polls with a timeout.
///
/// When the router closes it `too_many_refusals` (issue 27: past
/// `network.conn_refusals_per_s_max` refusals a second, or its address past
/// `network.addr_refusals_per_s_max`), the next `send` logs in again on a new
/// connection, as a determined attacker would (trying again while the router refuses
/// the login, `logins_refused`), at most `RECONNECTS_MAX` times (then the send
/// fails); `reconnects` counts them.
pub struct Conn {
    pub client: Client,
    who: &'static str,
    addr: SocketAddr,
    key: SigningKey,
    /// The router said `too_many_refusals`: this connection is closing.
    closing: bool,
    /// New logins after such a close.
    pub reconnects: u64,
    /// Logins refused (or failed) while logging in again.
    pub logins_refused: u64,
}

/// How long an attacker's `Conn` keeps trying to log in again after a close: the
/// address budget's second, and as long again.
const LOGIN_AGAIN_WITHIN: Duration = Duration::from_secs(2);
/// Its pause between two such tries.
const LOGIN_AGAIN_PAUSE: Duration = Duration::from_millis(20);

/// New logins of one attacker connection after `too_many_refusals`, at most.
pub const RECONNECTS_MAX: u64 = 1_000;

impl Conn {
    /// Connects and logs in as `key` within `sim::CONNECT_TIMEOUT`.
    ///
    /// Errors: `AttackError::Connect`.
    pub fn open(addr: SocketAddr, key: SigningKey, who: &'static str) -> Result<Conn, AttackError> {
        let client = sim::connect_client(addr, key.clone(), sim::CONNECT_TIMEOUT)
            .map_err(|error| AttackError::Connect { who, error })?;
        Ok(Conn {
            client,
            who,
            addr,
            key,
            closing: false,
            reconnects: 0,
            logins_refused: 0,
        })
    }

    /// Logs in again after `too_many_refusals` (see the type's docs).
    ///
    /// Errors: `AttackError::Connect`, or `RECONNECTS_MAX` reached (`Io`).
    fn reopen(&mut self) -> Result<(), AttackError> {
        if self.reconnects >= RECONNECTS_MAX {
            return Err(AttackError::Io {
                who: self.who,
                error: std::io::Error::other(format!(
                    "closed too_many_refusals {RECONNECTS_MAX} times"
                )),
            });
        }
        // The router refuses the address's logins `too_many_refusals` until the
        // second of its refusal budget ends (`network.addr_refusals_per_s_max`): a
        // determined attacker tries again until then.
        let deadline = Instant::now() + LOGIN_AGAIN_WITHIN;
        self.client = loop {
            match sim::connect_client(self.addr, self.key.clone(), sim::CONNECT_TIMEOUT) {
                Ok(client) => break client,
                Err(error) if Instant::now() >= deadline => {
                    return Err(AttackError::Connect {
                        who: self.who,
                        error,
                    })
                }
                Err(_) => {
                    self.logins_refused += 1;
                    std::thread::sleep(LOGIN_AGAIN_PAUSE);
                }
            }
        };
        self.reconnects += 1;
        self.closing = false;
        Ok(())
    }

    pub fn network_id(&self) -> u32 {
        self.client.network_id()
    }

    /// Errors: the write failed (the router closed the connection, say).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), AttackError> {
        if self.closing {
            self.reopen()?;
        }
        match self.client.send_raw(frame) {
            Ok(()) => return Ok(()),
            // The router may have closed it too_many_refusals before that reply was
            // read: log in again once and resend (a router that is gone fails there).
            Err(ClientError::Io(_)) => self.reopen()?,
            Err(other) => {
                return Err(AttackError::Io {
                    who: self.who,
                    error: std::io::Error::other(other.to_string()),
                })
            }
        }
        self.client.send_raw(frame).map_err(|error| match error {
            ClientError::Io(error) => AttackError::Io {
                who: self.who,
                error,
            },
            other => AttackError::Io {
                who: self.who,
                error: std::io::Error::other(other.to_string()),
            },
        })
    }

    /// The next message, waiting at most `timeout`; None when none came.
    ///
    /// Errors: the connection failed or was closed.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<Message>, AttackError> {
        let timeout = timeout.max(Duration::from_micros(100));
        if let Err(error) = self.client.set_read_timeout(Some(timeout)) {
            return Err(AttackError::Io {
                who: self.who,
                error: std::io::Error::other(error.to_string()),
            });
        }
        match self.client.recv() {
            Ok(Message::ErrorReply(error)) if error.code == codes::TOO_MANY_REFUSALS => {
                self.closing = true;
                Ok(Some(Message::ErrorReply(error)))
            }
            Ok(message) => Ok(Some(message)),
            // Closed after too_many_refusals: nothing more comes; the next send logs
            // in again.
            Err(_) if self.closing => Ok(None),
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(ClientError::Io(error)) => Err(AttackError::Io {
                who: self.who,
                error,
            }),
            Err(other) => Err(AttackError::Io {
                who: self.who,
                error: std::io::Error::other(other.to_string()),
            }),
        }
    }

    /// Waits up to `timeout` for the answer to the message of `nonce`: Ok(()) on an
    /// `Ack`, the refusal's code name otherwise. Other messages are passed to `other`.
    ///
    /// Errors: the connection failed, or `AttackError::Timeout`.
    pub fn await_ack(
        &mut self,
        nonce: u64,
        timeout: Duration,
        what: &'static str,
        mut other: impl FnMut(&Message),
    ) -> Result<Result<(), (u16, String)>, AttackError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.poll(deadline.saturating_duration_since(Instant::now()))? {
                Some(Message::Ack(ack)) if ack.nonce == nonce => return Ok(Ok(())),
                Some(Message::ErrorReply(error)) if error.ref_nonce == nonce => {
                    return Ok(Err((error.code, error.reason)))
                }
                Some(message) => other(&message),
                None => {}
            }
        }
        Err(AttackError::Timeout { what })
    }
}

/// A nonce counter for one address (R-ID-4: strictly increasing), shared by the
/// connections of that address, and started where the shipped client starts its own
/// (`Client::next_nonce`), so that the attackers follow the client's nonce rules.
#[derive(Debug)]
pub struct Nonces(u64);

impl Nonces {
    /// Starts at `client`'s next nonce.
    pub fn after(client: &mut Client) -> Nonces {
        Nonces(client.next_nonce().saturating_sub(1))
    }

    /// The next nonce, above every one issued.
    pub fn fresh(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// A paced sender: how many messages are due now at `rate_per_s`, at most `limit`
/// in all (the `rate` module's open-loop schedule).
pub fn pacer(start: Instant, rate_per_s: f64, limit: u64) -> Schedule {
    Schedule::new(start, rate_per_s.max(0.001), limit)
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    embedded::now_ms()
}

/// The attacker's side of a run (and the canary, in every run): a `SideTraffic` for
/// the simulation.
struct AttackSide {
    attack: Option<Box<dyn Attack>>,
    canary_key: SigningKey,
    ctx: Option<AttackContext>,
    attacker_core: usize,
    attacker: Option<JoinHandle<Result<Take, AttackError>>>,
    begin_tx: Option<mpsc::Sender<Window>>,
    window: Option<Window>,
    canary: Option<JoinHandle<CanaryOutcome>>,
    take: Option<Take>,
    canary_outcome: Option<CanaryOutcome>,
    attack_error: Option<String>,
    honest_connections: usize,
    seed: u64,
    short: bool,
    limits: (u32, usize),
}

impl SideTraffic for AttackSide {
    fn balances(&self) -> Vec<(Address, u128)> {
        let mut balances = vec![(self.canary_key.address(), WEI_PER_MOR)];
        if let Some(attack) = &self.attack {
            balances.extend(attack.balances());
        }
        balances
    }

    fn prepare(&mut self, target: &Target, config: &SimConfig) -> Result<(), SideError> {
        let ctx = AttackContext {
            addr: target.addr,
            short: self.short,
            seed: self.seed,
            providers_max: self.limits.0,
            connections_max: self.limits.1,
            reference_price_wei: config.reference_price_wei,
            tokens_max: config.tokens_max,
            service_ms_per_token: config.service_ms_per_token,
            honest_connections: self.honest_connections,
            primed: Arc::new(AtomicBool::new(self.attack.is_none())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        if let Some(mut attack) = self.attack.take() {
            let (ready_tx, ready_rx) = mpsc::channel::<Result<(), AttackError>>();
            let (begin_tx, begin_rx) = mpsc::channel::<Window>();
            let thread_ctx = ctx.clone();
            let core = self.attacker_core;
            self.attacker = Some(std::thread::spawn(move || {
                // The attacker gets at most one core: every attacker thread is pinned.
                if let Err(error) = pin_to_core(core) {
                    let _ = ready_tx.send(Err(AttackError::BadSetting {
                        flag: "--attacker-core",
                        reason: format!("cannot pin the attacker to core {core}: {error}"),
                    }));
                    return Ok(Take::default());
                }
                let prepared = attack.prepare(&thread_ctx);
                let failed = prepared.is_err();
                let _ = ready_tx.send(prepared);
                if failed {
                    return Ok(Take::default());
                }
                match begin_rx.recv() {
                    Ok(window) => attack.run(&thread_ctx, window),
                    Err(_) => Ok(Take::default()),
                }
            }));
            self.begin_tx = Some(begin_tx);
            match ready_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(Ok(())) => {}
                // The scenario could not be set up (its registration refused, say):
                // the run goes on as honest traffic and the report says why.
                Ok(Err(error)) => self.attack_error = Some(error.to_string()),
                Err(_) => {
                    return Err(Box::new(AttackError::Timeout {
                        what: "attack setup",
                    }))
                }
            }
        }
        self.ctx = Some(ctx);
        Ok(())
    }

    fn begin(&mut self, window_start: Instant, window: Duration) {
        let window = Window {
            start: window_start,
            end: window_start + window,
        };
        self.window = Some(window);
        if let Some(begin) = self.begin_tx.take() {
            let _ = begin.send(window);
        }
        if let Some(ctx) = self.ctx.clone() {
            let canary = Canary::new(self.canary_key.clone());
            self.canary = Some(std::thread::spawn(move || canary.run(&ctx, window)));
        }
    }

    fn finish(&mut self) -> Result<SideCredits, SideError> {
        // The users may be done early (all locked out, say): the attacker and the
        // canary still get their whole window, then stop.
        if let Some(window) = self.window {
            let now = Instant::now();
            if window.end > now {
                std::thread::sleep(window.end - now);
            }
        }
        if let Some(ctx) = &self.ctx {
            ctx.stop.store(true, Ordering::Relaxed);
        }
        let mut credits = SideCredits::default();
        if let Some(thread) = self.attacker.take() {
            match thread.join() {
                Ok(Ok(take)) => {
                    merge_credits(&mut credits, &take.credits);
                    self.take = Some(take);
                }
                Ok(Err(error)) => {
                    self.attack_error = Some(error.to_string());
                    self.take = Some(Take::default());
                }
                Err(_) => return Err(Box::new(AttackError::Panicked { who: "attacker" })),
            }
        }
        if let Some(thread) = self.canary.take() {
            let outcome = thread
                .join()
                .map_err(|_| Box::new(AttackError::Panicked { who: "canary" }))?;
            merge_credits(&mut credits, &outcome.credits);
            self.canary_outcome = Some(outcome);
        }
        Ok(credits)
    }
}

fn merge_credits(into: &mut SideCredits, from: &SideCredits) {
    for (provider, wei) in &from.expected_wei {
        let entry = into.expected_wei.entry(*provider).or_default();
        *entry = entry.saturating_add(*wei);
    }
    into.expected_sessions += from.expected_sessions;
    for (provider, wei) in &from.in_doubt_wei {
        let entry = into.in_doubt_wei.entry(*provider).or_default();
        *entry = entry.saturating_add(*wei);
    }
    into.in_doubt_sessions += from.in_doubt_sessions;
}

/// Reads one counter or gauge from the router's `/metrics` page (the sum over its
/// label sets); None when the page or the metric cannot be read.
pub fn scrape_metric(addr: SocketAddr, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
        found = Some(found.unwrap_or(0.0) + value);
    }
    found
}

/// The honest simulation of an attack run.
fn honest_config(settings: &AttackSettings, genesis_ms: u64) -> SimConfig {
    SimConfig {
        duration: settings.window,
        rate_per_s: settings.honest_rate,
        users: settings.users,
        providers: settings.providers,
        provider_capacity: settings.provider_capacity,
        // Fail reports come only from the attackers, and honest times stay within
        // ±20 % of the mean (R-PERF-1 allows 50 % above it), so that a penalty point,
        // and a suspension, is the attackers' doing.
        fail_report_share: 0.0,
        service_jitter_percent: 20,
        seed: settings.seed,
        drain: Duration::from_secs(3),
        genesis_ms: Some(genesis_ms),
        progress: false,
        rfc_ttl_ms: 30_000,
        await_batches: settings.await_batches,
        ..SimConfig::default()
    }
}

/// The catalog of the attack runs: demo models 1..=`ATTACK_CATALOG_MODELS`.
fn attack_catalog() -> Vec<ModelEntry> {
    (1..=ATTACK_CATALOG_MODELS)
        .map(|id| ModelEntry {
            id,
            weights_hash: demo_weights_hash(id)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            name: String::new(),
        })
        .collect()
}

/// The connections the idle flood may hold in this process: the router's limit, and
/// half of what the descriptor limit leaves after a reserve for the honest clients,
/// the journal, snapshots and metrics (both ends of each connection live in this
/// process).
pub fn connections_bound(connections_max: usize, honest_connections: usize) -> usize {
    let reserve = 1_000 + 2 * honest_connections as u64;
    let by_descriptors = descriptor_limit().saturating_sub(reserve) / 2;
    connections_max.min(by_descriptors as usize)
}

/// One run: a fresh embedded router, the honest simulation, and beside it the
/// canary and (when `kind` is given) the attacker.
fn run_one(
    settings: &AttackSettings,
    kind: Option<Kind>,
    pair: usize,
) -> Result<RunResult, AttackError> {
    let operator =
        SigningKey::from_seed(format!("ys-attack-operator-{}", settings.seed).as_bytes());
    let mut options = settings.embedded.clone();
    options.run_ms = settings.window.as_millis() as u64 + 1_500;
    // With the batches awaited, day 0 ends right after the run: its bootstrap bonus
    // is shared out, and the canary's share can be read (R-CONTRACT-4).
    options.day_ends_after_run = settings.await_batches;
    let honest_connections = settings.users + settings.providers + 2;
    let connections_max = connections_bound(ATTACK_CONNECTIONS_MAX, honest_connections);
    let embedded = embedded::start(&options, &operator, |config: &mut RouterConfig| {
        config.market.providers_max = ATTACK_PROVIDERS_MAX;
        config.network.connections_max = connections_max;
        config.market.models = attack_catalog();
        config.metrics.enabled = true;
        if let Some(max) = settings.conn_refusals_per_s_max {
            config.network.conn_refusals_per_s_max = max;
        }
        if let Some(max) = settings.addr_refusals_per_s_max {
            config.network.addr_refusals_per_s_max = max;
        }
        // R-SESSION-1: the market's own bound per user, not the sim's gateway-sized
        // one, so that the capacity hoarder meets what a real router would set; the
        // honest users' share of the rate keeps them well under it.
        config.market.user_sessions_open_max =
            yellowstone_gateway::router::config::MarketSection::default().user_sessions_open_max;
    })
    .map_err(AttackError::Router)?;
    let config = honest_config(settings, embedded.genesis_ms);
    let seed = settings.seed ^ ((pair as u64) << 32);
    let mut side = AttackSide {
        attack: kind.map(|kind| make(kind, seed, settings.short)),
        canary_key: SigningKey::from_seed(format!("ys-attack-canary-{seed}").as_bytes()),
        ctx: None,
        attacker_core: settings.attacker_core.unwrap_or_else(first_allowed_core),
        attacker: None,
        begin_tx: None,
        window: None,
        canary: None,
        take: None,
        canary_outcome: None,
        attack_error: None,
        honest_connections,
        seed,
        short: settings.short,
        limits: (ATTACK_PROVIDERS_MAX, connections_max),
    };
    let cpu_before = router_cpu_ms();
    let summary = sim::run_with(&embedded.target, &config, Some(&mut side));
    let router_cpu_ms = router_cpu_ms()
        .zip(cpu_before)
        .map(|(after, before)| (after - before).max(0.0));
    if settings.await_batches {
        if let Some(canary) = side.canary_outcome.as_mut() {
            let credited = summary
                .as_ref()
                .ok()
                .and_then(|s| {
                    s.credited_by_provider
                        .get(&side.canary_key.address())
                        .copied()
                })
                .unwrap_or(0);
            canary.read_bonus(embedded.target.addr, &side.canary_key, credited);
        }
    }
    let journal_records = embedded
        .metrics_addr
        .and_then(|addr| scrape_metric(addr, "yellowstone_journal_records_total"));
    let connections_refused = embedded
        .metrics_addr
        .and_then(|addr| scrape_metric(addr, "yellowstone_connections_refused_total"));
    embedded.shutdown().map_err(AttackError::Router)?;
    let summary = summary.map_err(AttackError::Sim)?;
    let mut figures = RunFigures::from_summary(&summary, journal_records, connections_refused);
    figures.router_cpu_ms = router_cpu_ms;
    let mut take = side.take;
    if let Some(take) = take.as_mut().filter(|_| settings.await_batches) {
        take.credited_wei = Some(
            take.addresses
                .iter()
                .filter_map(|a| summary.credited_by_provider.get(a))
                .sum(),
        );
    }
    Ok((figures, take, side.canary_outcome, side.attack_error))
}

/// Runs every scenario of `settings.kinds`, `settings.pairs` times each, each
/// attacked run next to a baseline run (their order alternating between pairs, so
/// that a drift of the machine's load falls on both sides), and returns the report.
///
/// Errors: a run could not be made (router start, simulation, attacker setup).
pub fn run_attacks(
    settings: &AttackSettings,
    mut progress: impl FnMut(&str),
) -> Result<AttackReport, AttackError> {
    if settings.pairs == 0 || settings.kinds.is_empty() {
        return Err(AttackError::BadSetting {
            flag: "--pairs",
            reason: "at least one pair of at least one scenario".into(),
        });
    }
    let mut scenarios: BTreeMap<Kind, ScenarioReport> = BTreeMap::new();
    for pair in 0..settings.pairs {
        for &kind in &settings.kinds {
            let attacked_first = pair % 2 == 1;
            let mut baseline = None;
            let mut attacked = None;
            for attacked_run in [attacked_first, !attacked_first] {
                let started = Instant::now();
                let result = run_one(settings, attacked_run.then_some(kind), pair)?;
                if settings.progress {
                    progress(&format!(
                        "  pair {}/{} {:<20} {:<8} {:>7.0} sessions/s  p99 {:>8} us  ({:.1} s)",
                        pair + 1,
                        settings.pairs,
                        kind.name(),
                        if attacked_run { "attacked" } else { "baseline" },
                        result.0.sessions_per_s,
                        result.0.rfc_to_ticket_p99_us,
                        started.elapsed().as_secs_f64()
                    ));
                }
                if attacked_run {
                    attacked = Some(result);
                } else {
                    baseline = Some(result);
                }
            }
            let (Some(baseline), Some(attacked)) = (baseline, attacked) else {
                unreachable!("both runs of a pair are made");
            };
            scenarios
                .entry(kind)
                .or_insert_with(|| ScenarioReport::new(kind))
                .pairs
                .push(PairReport::new(baseline, attacked));
        }
    }
    let attacker_core = settings.attacker_core.unwrap_or_else(first_allowed_core);
    Ok(AttackReport::new(
        settings,
        attacker_core,
        scenarios.into_values().collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's CPU time, ms.
    fn thread_cpu_ms() -> f64 {
        // SAFETY: clock_gettime fills the timespec.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 * 1_000.0 + ts.tv_nsec as f64 / 1e6
    }

    /// Uses `ms` of CPU on this thread (not of wall time: the machine is shared).
    fn burn(ms: f64) {
        let until = thread_cpu_ms() + ms;
        let mut x = 0u64;
        while thread_cpu_ms() < until {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }

    /// Only threads named as the router's count (`ys-*`): the simulation's and the
    /// attackers' work is not the router's.
    #[test]
    fn router_cpu_counts_the_routers_threads_only() {
        let Some(before) = router_cpu_ms() else {
            return; // no /proc: nothing to measure (reported as "-")
        };
        std::thread::spawn(|| burn(300.0)).join().unwrap();
        let unnamed = router_cpu_ms().unwrap() - before;
        std::thread::Builder::new()
            .name("ys-test-burn".into())
            .spawn(|| {
                burn(300.0);
                // Read before the thread ends: an ended thread leaves /proc.
                router_cpu_ms().unwrap()
            })
            .unwrap()
            .join()
            .map(|after| {
                let named = after - before;
                assert!(named >= 250.0, "a named thread's 300 ms read {named} ms");
                assert!(
                    unnamed < 100.0,
                    "an unnamed thread's 300 ms read {unnamed} ms"
                );
            })
            .unwrap();
    }
}
