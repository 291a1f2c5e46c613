//! `yellowstone-ctl`: operate a running Yellowstone router. See `--help` and the
//! library docs (`yellowstone_ctl`) for the exit statuses.

use clap::{Args, Parser, Subcommand};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use yellowstone_ctl::{batch, keyfile, output, CtlError, Session};
use yellowstone_engine::ParamId;
use yellowstone_wire::frame::{FRAME_BYTES_MAX_DEFAULT, HEADER_LEN};
use yellowstone_wire::messages::{
    BalanceEntry, BalanceUpdate, Claim, Message, ParamEntry, Ping, SetParams, SubscribeBatches,
};
use yellowstone_wire::{Address, Signature};

#[derive(Parser)]
#[command(
    name = "yellowstone-ctl",
    version,
    about = "Operate a running Yellowstone router: balances and parameters (operator), the market's state, credit batches, claims (provider).",
    long_about = "Operate a running Yellowstone router. Every command logs in with the key in --key-file and signs as that key: balance and params commands need the operator's key (the router's identity.operator), claim a provider's key; market show and batches follow work with any key.\n\nNonces come from the clock (Unix microseconds), so reruns are never replays.\n\nExit status: 0 done; 1 refused by the router (the error code's name, reason and detail are printed on stderr); 2 local error, nothing sent (arguments, key file, CSV); 3 connection failed or no answer in time; 4 a credit batch failed verification; 5 batches follow printed its --count batches, but blocks sealed while it reconnected were not delivered (named on stderr)."
)]
struct Cli {
    /// The router's client address (network.listen); for a replicated router group,
    /// every member's, comma-separated (host:port,host:port,...): the tool connects to
    /// the leader and, if the connection is lost before an answer, resends the same
    /// signed message to the new leader (R-HA-3).
    #[arg(
        long,
        env = "YELLOWSTONE_ROUTER",
        default_value = "127.0.0.1:7400",
        global = true
    )]
    router: String,
    /// Key file to sign with: the output of `yellowstone-router keygen`
    /// (secret_hex=…, address=…) or one line of 64 hex digits; mode 600.
    #[arg(long, env = "YELLOWSTONE_KEY_FILE", global = true)]
    key_file: Option<PathBuf>,
    /// How long to wait to connect and for each answer, in ms.
    #[arg(long, default_value_t = 10_000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Set MOR balances (operator; R-QUOTA-6): signed BalanceUpdate messages.
    #[command(subcommand)]
    Balance(BalanceCmd),
    /// List or set the market's run-time parameters by name (operator; R-OPS-3).
    #[command(subcommand)]
    Params(ParamsCmd),
    /// The market's state (any key; R-OPS-3).
    #[command(subcommand)]
    Market(MarketCmd),
    /// Credit batches (any key; R-BLOCK-2).
    #[command(subcommand)]
    Batches(BatchesCmd),
    /// Claim what the Compute Contract owes this key's provider (R-CLAIM-1).
    Claim {
        /// Wei to claim; all that is owed when absent.
        #[arg(long)]
        amount: Option<String>,
        /// Print the answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BalanceCmd {
    /// Set one address's balance, in wei (replaces it; 1 MOR = 10^18 wei).
    Set { address: String, wei: String },
    /// Set the balances of a CSV file: one `address,balance_wei` per line, `#`
    /// comments and blank lines allowed (the router's balance snapshot format). The
    /// whole file is checked before anything is sent; it goes in messages of
    /// --entries-per-message, each applied whole or refused whole. Setting is
    /// idempotent: rerun the file after a refusal.
    Import {
        file: PathBuf,
        /// Entries per BalanceUpdate; at most 452 fit the default 16 KiB frame.
        #[arg(long, default_value_t = 400)]
        entries_per_message: usize,
        /// The router's `network.frame_bytes_max`: a message must fit one frame (a
        /// larger one makes the router close the connection), checked before sending.
        #[arg(long, default_value_t = FRAME_BYTES_MAX_DEFAULT)]
        frame_bytes_max: usize,
    },
}

#[derive(Subcommand)]
enum ParamsCmd {
    /// Every run-time parameter: name, wire id, values, meaning (no router needed).
    List,
    /// Set parameters in one signed SetParams, applied together or not at all:
    /// `NAME VALUE [NAME VALUE ...]` or `NAME=VALUE ...`. Choices by label
    /// (fail_policy balance-weighted).
    Set {
        #[arg(required = true, num_args = 1..)]
        assignments: Vec<String>,
    },
}

#[derive(Subcommand)]
enum MarketCmd {
    /// MaxT, access rate, budget, pool, emitted, paid, owed, the last block's credit,
    /// per model queue depth, live and suspended providers and best bid, parameters.
    Show(ShowArgs),
}

#[derive(Args)]
struct ShowArgs {
    /// One JSON object (wei amounts as decimal strings).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BatchesCmd {
    /// Subscribe and print each credit batch as a JSON line, after checking its
    /// router signature, its Merkle root rule, its totals and that no block is
    /// skipped on a connection. Stops after --count batches (otherwise runs until
    /// interrupted). In a group it pings a member silent for 0.5 s and takes one that
    /// answers nothing for 2 s as lost; after a failover it follows the new leader and
    /// subscribes again. Blocks sealed while it was reconnecting cannot be fetched (a
    /// subscription gets only the newest batch): they are named on stderr
    /// ("missed blocks"), following goes on, and exit status 5 says so at --count.
    Follow(FollowArgs),
}

#[derive(Args)]
struct FollowArgs {
    #[arg(long)]
    count: Option<u64>,
    /// The router address batches must be signed by (default: the one the
    /// router announces at login).
    #[arg(long)]
    router_address: Option<String>,
    /// Reconnections one failover may take (1..=100): the count restarts once a new
    /// connection has been healthy for 5 s (R-HA-3).
    #[arg(long, default_value_t = yellowstone_ctl::RESENDS_MAX)]
    reconnects_per_failover: u32,
    /// Reconnections allowed in any hour, over all failovers (at least
    /// --reconnects-per-failover, at most 100000); beyond it follow ends (exit 3).
    #[arg(long, default_value_t = 60)]
    reconnects_per_hour: u32,
}

fn parse_wei(what: &str, text: &str) -> Result<u128, CtlError> {
    yellowstone_wire::amount::parse_wei(text).map_err(|e| CtlError::Local(format!("{what}: {e}")))
}

fn parse_address(what: &str, text: &str) -> Result<Address, CtlError> {
    text.trim()
        .parse()
        .map_err(|e| CtlError::Local(format!("{what}: {text:?}: {e}")))
}

fn session(cli: &Cli) -> Result<Session, CtlError> {
    let path = cli.key_file.as_ref().ok_or_else(|| {
        CtlError::Local("--key-file (or YELLOWSTONE_KEY_FILE) is required".into())
    })?;
    let key = keyfile::load(path)?;
    Session::connect(
        &cli.router,
        key,
        Duration::from_millis(cli.timeout_ms.max(1)),
    )
}

fn acked(nonce: u64, message: &Message) -> Option<()> {
    matches!(message, Message::Ack(ack) if ack.nonce == nonce).then_some(())
}

fn set_balances(session: &mut Session, entries: &[(Address, u128)]) -> Result<(), CtlError> {
    let from = session.address();
    let entries: Vec<BalanceEntry> = entries
        .iter()
        .map(|&(address, balance_wei)| BalanceEntry {
            address,
            balance_wei,
        })
        .collect();
    session.request(
        |nonce| {
            BalanceUpdate {
                from,
                nonce,
                entries: entries.clone(),
                signature: Signature::default(),
            }
            .into()
        },
        acked,
    )
}

/// A `BalanceUpdate` of `entries` entries must fit one frame of the router
/// (`network.frame_bytes_max`, 16 KiB by default; a larger frame closes the
/// connection): checked before anything is sent, naming the most entries that fit.
fn check_balance_frame(entries: usize, frame_bytes_max: usize) -> Result<(), CtlError> {
    let frame_bytes = |n: usize| {
        let mut body = Vec::new();
        Message::from(BalanceUpdate {
            from: Address::default(),
            nonce: 0,
            entries: vec![BalanceEntry::default(); n],
            signature: Signature::default(),
        })
        .encode(&mut body);
        HEADER_LEN + body.len()
    };
    let bytes = frame_bytes(entries);
    if bytes <= frame_bytes_max {
        return Ok(());
    }
    let per_entry = frame_bytes(1) - frame_bytes(0);
    let fit = frame_bytes_max.saturating_sub(frame_bytes(0)) / per_entry;
    Err(CtlError::Local(format!(
        "--entries-per-message {entries}: a BalanceUpdate of {entries} entries is a frame of \
         {bytes} bytes, above the router's limit of {frame_bytes_max} (--frame-bytes-max); at most \
         {fit} entries fit one message"
    )))
}

fn balance(cli: &Cli, command: &BalanceCmd) -> Result<(), CtlError> {
    match command {
        BalanceCmd::Set { address, wei } => {
            let entry = (parse_address("ADDRESS", address)?, parse_wei("WEI", wei)?);
            let mut session = session(cli)?;
            set_balances(&mut session, &[entry])?;
            println!("balance of {} set to {} wei", entry.0, entry.1);
            Ok(())
        }
        BalanceCmd::Import {
            file,
            entries_per_message,
            frame_bytes_max,
        } => {
            if *entries_per_message == 0 {
                return Err(CtlError::Local("--entries-per-message must be > 0".into()));
            }
            let text = std::fs::read_to_string(file)
                .map_err(|e| CtlError::Local(format!("{}: {e}", file.display())))?;
            let entries = yellowstone_wire::balances::parse_balance_snapshot(&text)
                .map_err(|e| CtlError::Local(format!("{}: {e}", file.display())))?;
            if entries.is_empty() {
                return Err(CtlError::Local(format!(
                    "{}: no address,balance_wei line",
                    file.display()
                )));
            }
            check_balance_frame(entries.len().min(*entries_per_message), *frame_bytes_max)?;
            let mut session = session(cli)?;
            let chunks = entries.chunks(*entries_per_message);
            let messages = chunks.len();
            for (index, chunk) in chunks.enumerate() {
                set_balances(&mut session, chunk).inspect_err(|_| {
                    eprintln!(
                        "yellowstone-ctl: message {} of {messages} (entries {}..{}) not applied; \
                         the {} entries before it were. Setting is idempotent: rerun the file.",
                        index + 1,
                        index * entries_per_message + 1,
                        index * entries_per_message + chunk.len(),
                        index * entries_per_message
                    );
                })?;
            }
            println!(
                "{} balances set from {} in {messages} messages",
                entries.len(),
                file.display()
            );
            Ok(())
        }
    }
}

/// `NAME VALUE ...` or `NAME=VALUE ...` into wire entries, checked by name.
fn parse_assignments(words: &[String]) -> Result<Vec<(ParamId, u128)>, CtlError> {
    let mut pairs = Vec::new();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let (name, value) = match word.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => {
                let value = words.next().ok_or_else(|| {
                    CtlError::Local(format!("{word}: missing its value (NAME VALUE)"))
                })?;
                (word.clone(), value.clone())
            }
        };
        let param = ParamId::from_name(&name).ok_or_else(|| {
            CtlError::Local(format!(
                "unknown parameter {name:?}; `yellowstone-ctl params list` shows them"
            ))
        })?;
        if pairs.iter().any(|(p, _)| *p == param) {
            return Err(CtlError::Local(format!("{name} given twice")));
        }
        let value = param.parse_value(&value).map_err(CtlError::Local)?;
        pairs.push((param, value));
    }
    Ok(pairs)
}

fn params(cli: &Cli, command: &ParamsCmd) -> Result<(), CtlError> {
    match command {
        ParamsCmd::List => {
            print!("{}", output::params_list());
            Ok(())
        }
        ParamsCmd::Set { assignments } => {
            let pairs = parse_assignments(assignments)?;
            let mut session = session(cli)?;
            let from = session.address();
            let params: Vec<ParamEntry> = pairs
                .iter()
                .map(|&(param, value)| ParamEntry {
                    param_id: param as u16,
                    value,
                })
                .collect();
            session
                .request(
                    |nonce| {
                        SetParams {
                            from,
                            nonce,
                            params: params.clone(),
                            signature: Signature::default(),
                        }
                        .into()
                    },
                    acked,
                )
                .map_err(|error| name_refused_param(error, &pairs))?;
            for (param, value) in pairs {
                println!("{} = {}", param.name(), param.format_value(value));
            }
            Ok(())
        }
    }
}

/// An `invalid_param` refusal names the parameter by its id in `detail` or reason:
/// add its name.
fn name_refused_param(error: CtlError, pairs: &[(ParamId, u128)]) -> CtlError {
    match error {
        CtlError::Refused(mut reply)
            if yellowstone_wire::codes::name(reply.code) == "invalid_param" =>
        {
            let names: Vec<String> = pairs
                .iter()
                .map(|(p, v)| format!("{} ({}) = {}", p.name(), *p as u16, p.format_value(*v)))
                .collect();
            reply.reason = format!("{} [sent: {}]", reply.reason, names.join(", "));
            CtlError::Refused(reply)
        }
        other => other,
    }
}

fn market(cli: &Cli, args: &ShowArgs) -> Result<(), CtlError> {
    let mut session = session(cli)?;
    let query_id = yellowstone_ctl::clock_nonce();
    let query = Message::from(yellowstone_wire::messages::MarketStateQuery { query_id });
    let state = session.query(&query, |m| match m {
        Message::MarketState(state) if state.query_id == query_id => Some(Ok(state.clone())),
        Message::ErrorReply(e)
            if e.ref_msg_type == yellowstone_wire::msg_type::MARKET_STATE_QUERY =>
        {
            Some(Err(e.clone()))
        }
        _ => None,
    })?;
    let state = state.map_err(CtlError::Refused)?;
    if args.json {
        println!("{}", output::market_json(&state));
    } else {
        print!("{}", output::market_text(&state));
    }
    Ok(())
}

/// How a followed connection was found lost, for the stderr line and the next member
/// order.
struct Lost {
    why: String,
    /// The member that fell silent (tried last when reconnecting).
    silent: Option<std::net::SocketAddr>,
}

fn follow(cli: &Cli, args: &FollowArgs) -> Result<(), CtlError> {
    let pinned = args
        .router_address
        .as_deref()
        .map(|a| parse_address("--router-address", a))
        .transpose()?;
    let mut budget = yellowstone_ctl::ReconnectBudget::new(
        args.reconnects_per_failover,
        args.reconnects_per_hour,
        yellowstone_ctl::RECONNECT_WINDOW,
    )?;
    let mut session = session(cli)?;
    let router = pinned.unwrap_or(session.router());
    let from = session.address();
    let subscribe = |session: &mut Session| {
        session.request(
            |nonce| {
                SubscribeBatches {
                    from,
                    nonce,
                    signature: Signature::default(),
                }
                .into()
            },
            acked,
        )
    };
    subscribe(&mut session)?;
    let network_id = session.network_id();
    // R-HA-3: in a group a frozen leader keeps the connection open and says nothing;
    // batches come every 12 s, so silence is probed with a Ping (as the nodes do).
    let group = session.endpoints().len() > 1;
    let mut connected_at = Instant::now();
    let mut last_heard = connected_at;
    let mut ping_sent: Option<Instant> = None;
    let mut ping_payload = 0u64;
    let mut follower = batch::Follower::default();
    let mut missed: Vec<(u64, u64)> = Vec::new();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    while args.count.is_none_or(|count| printed < count) {
        let lost = match session.client().recv_frame() {
            Ok(frame) => {
                last_heard = Instant::now();
                ping_sent = None;
                if connected_at.elapsed() >= yellowstone_ctl::FOLLOW_HEALTHY_SPELL {
                    budget.healthy();
                }
                let message = Message::decode(frame.header.msg_type, &frame.body).map_err(|e| {
                    CtlError::Connection(format!("undecodable frame from the router: {e}"))
                })?;
                match &message {
                    // R-HA-3: the leader lost office; the close that follows is
                    // handled below (reading on would only wait for it).
                    Message::ErrorReply(reply)
                        if reply.code == yellowstone_wire::codes::NOT_LEADER =>
                    {
                        Some(Lost {
                            why: format!("not_leader: {}", reply.reason),
                            silent: None,
                        })
                    }
                    Message::CreditBatch(credit_batch) => {
                        batch::verify(&message, &frame.body, network_id, &router)
                            .map_err(CtlError::Verification)?;
                        match follower
                            .accept(credit_batch)
                            .map_err(CtlError::Verification)?
                        {
                            batch::Accepted::Repeat => continue,
                            batch::Accepted::Next => {}
                            batch::Accepted::After { first, last } => {
                                // Not a verification failure: the batches exist, this
                                // follower was away when they were sent (R-HA-2).
                                eprintln!(
                                    "yellowstone-ctl: missed blocks {}: sealed while \
                                     reconnecting, their batches were not delivered (a \
                                     subscription is sent only the newest sealed batch); \
                                     following on from block {}",
                                    yellowstone_ctl::block_ranges(&[(first, last)]),
                                    credit_batch.block
                                );
                                missed.push((first, last));
                            }
                        }
                        let mut out = stdout.lock();
                        writeln!(out, "{}", batch::to_json(credit_batch))
                            .and_then(|()| out.flush())
                            .map_err(|e| CtlError::Local(format!("stdout: {e}")))?;
                        printed += 1;
                        None
                    }
                    _ => None, // Pong, Settlement, Notice
                }
            }
            Err(yellowstone_wire::client::ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                silence(
                    &mut session,
                    group,
                    last_heard,
                    &mut ping_sent,
                    &mut ping_payload,
                )
            }
            // R-HA-3: a failover closed the connection.
            Err(
                e @ (yellowstone_wire::client::ClientError::Closed
                | yellowstone_wire::client::ClientError::Io(_)),
            ) => Some(Lost {
                why: e.to_string(),
                silent: None,
            }),
            Err(e) => return Err(e.into()),
        };
        let Some(lost) = lost else { continue };
        // Follow the group's (new) leader and subscribe again; blocks sealed
        // meanwhile are named when the first new batch comes. A reconnection that
        // fails (no member served within --timeout-ms) takes another from the
        // failover's budget: a follower outlives a group unreachable for a while.
        let (mut why, mut silent) = (lost.why, lost.silent);
        loop {
            let (in_row, in_window) = budget.take(Instant::now(), &why)?;
            eprintln!(
                "yellowstone-ctl: connection lost ({why}); following the router group's \
                 leader (reconnection {in_row} of this failover, {in_window} in the last hour)"
            );
            match session
                .reconnect_avoiding(silent)
                .and_then(|()| subscribe(&mut session))
            {
                Ok(()) => break,
                Err(CtlError::Connection(reason)) => {
                    why = reason;
                    silent = None;
                }
                Err(error) => return Err(error),
            }
        }
        follower.resubscribed();
        eprintln!(
            "yellowstone-ctl: subscribed again at {} after block {}",
            session
                .peer()
                .map_or_else(|| "the leader".to_string(), |peer| peer.to_string()),
            follower
                .last_block()
                .map_or_else(|| "none".to_string(), |block| block.to_string())
        );
        connected_at = Instant::now();
        last_heard = connected_at;
        ping_sent = None;
    }
    if missed.is_empty() {
        Ok(())
    } else {
        Err(CtlError::MissedBlocks(missed))
    }
}

/// Nothing arrived within the read poll. In a group: a `Ping` after
/// [`yellowstone_ctl::FOLLOW_PING_AFTER`] of silence, and the connection is lost when
/// nothing answers it within `GROUP_LIVENESS` (R-HA-3; a single router is the only
/// one, so it is waited for).
fn silence(
    session: &mut Session,
    group: bool,
    last_heard: Instant,
    ping_sent: &mut Option<Instant>,
    ping_payload: &mut u64,
) -> Option<Lost> {
    if !group {
        return None;
    }
    let liveness = yellowstone_wire::connect_retry::GROUP_LIVENESS;
    let silent = session.peer();
    match *ping_sent {
        Some(at) if at.elapsed() >= liveness => Some(Lost {
            why: format!(
                "no answer to a Ping within {} ms (group liveness bound)",
                liveness.as_millis()
            ),
            silent,
        }),
        Some(_) => None,
        None if last_heard.elapsed() >= yellowstone_ctl::FOLLOW_PING_AFTER => {
            *ping_payload += 1;
            let ping = Message::from(Ping {
                payload: *ping_payload,
            });
            match session.client().send(&ping) {
                Ok(()) => {
                    *ping_sent = Some(Instant::now());
                    None
                }
                Err(e) => Some(Lost {
                    why: e.to_string(),
                    silent: None,
                }),
            }
        }
        None => None,
    }
}

fn claim(cli: &Cli, amount: &Option<String>, json: bool) -> Result<(), CtlError> {
    let amount_wei = match amount {
        Some(text) => {
            let wei = parse_wei("--amount", text)?;
            if wei == 0 {
                return Err(CtlError::Local(
                    "--amount must be > 0 (leave it out to claim all that is owed)".into(),
                ));
            }
            wei
        }
        None => 0,
    };
    let mut session = session(cli)?;
    let from = session.address();
    let (paid, left) = session.request(
        |nonce| {
            Claim {
                from,
                nonce,
                amount_wei,
                signature: Signature::default(),
            }
            .into()
        },
        |nonce, m| match m {
            Message::ClaimAck(ack) if ack.nonce == nonce => {
                Some((ack.amount_wei, ack.owed_left_wei))
            }
            _ => None,
        },
    )?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "provider": from.to_string(),
                "amount_wei": paid.to_string(),
                "owed_left_wei": left.to_string(),
            })
        );
    } else {
        println!("claimed {paid} wei for {from}; owed left {left} wei");
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Balance(command) => balance(&cli, command),
        Cmd::Params(command) => params(&cli, command),
        Cmd::Market(MarketCmd::Show(args)) => market(&cli, args),
        Cmd::Batches(BatchesCmd::Follow(args)) => follow(&cli, args),
        Cmd::Claim { amount, json } => claim(&cli, amount, *json),
    };
    if let Err(error) = result {
        eprintln!("yellowstone-ctl: {error}");
        std::process::exit(error.exit_code());
    }
}
