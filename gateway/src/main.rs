//! `yellowstone-router`: the process an operator runs. See `--help`.

mod cluster_cli;

use clap::{Parser, Subcommand};
use cluster_cli::ClusterCmd;
use std::path::PathBuf;
use yellowstone_gateway::config::Backend;
use yellowstone_gateway::journal::tools;
use yellowstone_gateway::router::config::RouterConfig;
use yellowstone_gateway::settlement;
use yellowstone_wire::SigningKey;

#[derive(Parser)]
#[command(
    name = "yellowstone-router",
    version,
    about = "Yellowstone compute-market router: matches signed requests for compute with the cheapest live provider, every 12-second block emits a signed credit batch."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the router until SIGINT/SIGTERM.
    ///
    /// On a stop it answers everything already made durable and exits; a block still in progress is not sealed early, and
    /// nothing is lost: the next start seals it at its boundary (its batch then
    /// follows). Keeps its state in a data directory (`yellowstone-data` in the
    /// working directory unless --data-dir; --in-memory keeps none).
    Run(Box<RunArgs>),
    /// Runs a learner (R-HA-4, docs/replication.md): a non-voting member of a
    /// replicated group that applies the committed journal and checks its state hash
    /// at every block against the leader's (`yellowstone_learner_*` on /metrics; a
    /// mismatch is logged as an error naming the block). Takes `run`'s options;
    /// `[cluster]` of --config names it (`cluster.learner` is implied). Add it to the
    /// group with `cluster add --learner`.
    Learn(Box<RunArgs>),
    /// Operates a replicated group (SPEC §12, docs/replication.md) through a member's
    /// `cluster.raft_listen` (member RPC, MAC'd with the group's cluster.key).
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Prints a new secret key (hex) and its address, for the router or an operator.
    Keygen,
    /// Prints the address of an existing key: a key file (e.g. a data directory's
    /// router.key; refused if group or others may read it) or a hex secret.
    #[command(group(clap::ArgGroup::new("key").required(true).args(["key_file", "key_hex"])))]
    Address {
        /// A file holding the hex secret key.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The hex secret key itself (64 hex digits).
        #[arg(long)]
        key_hex: Option<String>,
    },
    /// Prints the configuration in force (defaults merged with --config) as TOML,
    /// after the same checks as `run` (exits 1 naming the first bad value).
    PrintConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Prints the journal's records (read-only): sequence, time, engine command.
    Journal {
        #[arg(long)]
        data_dir: PathBuf,
        /// First sequence number to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most records to print.
        #[arg(long, default_value_t = u64::MAX)]
        limit: u64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Verifies a data directory (read-only): snapshot, every record's checksum and
    /// sequence, replay, invariants. Exits 1 if the router would refuse to start.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Exports an epoch's settlement for the on-chain Compute Contract (read-only,
    /// R-CHAIN-1): the record, the router's EIP-712 signature and the `settle`
    /// calldata anyone may relay.
    Settlement {
        #[arg(long)]
        data_dir: PathBuf,
        /// The epoch (default: the last settled).
        #[arg(long)]
        epoch: Option<u64>,
        /// The router's configuration file (identity.network_id, router_key_hex).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Must be the data directory's network id when given (a settlement is
        /// signed only for it, R-CHAIN-3); default: the data directory's.
        #[arg(long)]
        network_id: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Prints a provider's Merkle proof against an epoch's root (the last settled
    /// by default) and the `claim` calldata for the Compute Contract (read-only,
    /// R-CLAIM-1).
    ClaimProof {
        #[arg(long)]
        data_dir: PathBuf,
        /// The provider's address (0x…).
        #[arg(long)]
        provider: String,
        /// The epoch whose root the proof is for: the one the chain has settled
        /// (`nextEpoch() - 1` on the contract), which may be older than the router's
        /// last. Default: the router's last settled epoch.
        #[arg(long)]
        epoch: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Shows the Compute Contract ledger (read-only): owed per provider, credited,
    /// paid, last block.
    Ledger {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration file; every key has a default (see print-config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides network.listen (e.g. 127.0.0.1:7400; port 0 picks a free port).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Overrides metrics.listen (Prometheus text at GET /metrics).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Overrides network.backend: uring or mio.
    #[arg(long)]
    backend: Option<String>,
    /// Overrides journal.data_dir. Default: `yellowstone-data` in the working
    /// directory (R-OPS-1: durable by default), named in the READY line.
    #[arg(long, conflicts_with = "in_memory")]
    data_dir: Option<PathBuf>,
    /// Keep no data directory: every credit, balance and batch is lost at the stop
    /// (tests and demos only; logs a warning).
    #[arg(long)]
    in_memory: bool,
    /// Overrides journal.durability: always, interval or none.
    #[arg(long)]
    durability: Option<String>,
    /// Overrides identity.operator (address).
    #[arg(long)]
    operator: Option<String>,
    /// Overrides identity.router_key_hex.
    #[arg(long)]
    router_key_hex: Option<String>,
    /// Overrides identity.balance_snapshot (address,balance_wei per line).
    #[arg(long)]
    balance_snapshot: Option<PathBuf>,
    /// Apply --balance-snapshot even though the data directory's market already
    /// exists (identity.balance_snapshot_reapply): without it, a snapshot is applied
    /// only when the data directory is created, and a different file is refused.
    #[arg(long)]
    reapply_balance_snapshot: bool,
    /// Set the settlement domain ([market] settlement_chain_id, settlement_contract of
    /// --config) on a data directory created without a contract (0x0: nothing it
    /// signed could be used on a chain). Once: the domain is then fixed (R-CHAIN-3).
    #[arg(long)]
    set_settlement_domain: bool,
    /// Overrides identity.network_id.
    #[arg(long)]
    network_id: Option<u32>,
    /// Start even if the journal is corrupt before its tail: cut it at the damage,
    /// losing every record after it (journal.allow_corrupt_truncate). Not with
    /// --in-memory, which has no journal.
    #[arg(long, conflicts_with = "in_memory")]
    allow_corrupt_truncate: bool,
}

/// `address`: the address of a key file or a hex secret.
fn key_address(key_file: Option<PathBuf>, key_hex: Option<String>) -> Result<(), String> {
    let key = match (key_file, key_hex) {
        (Some(path), None) => {
            yellowstone_gateway::router::durable::read_key_file(&path).map_err(|e| e.to_string())?
        }
        (None, Some(hex)) => {
            SigningKey::from_hex(hex.trim()).map_err(|e| format!("--key-hex: {e}"))?
        }
        _ => return Err("give one of --key-file FILE or --key-hex HEX".into()),
    };
    println!("address={}", key.address());
    Ok(())
}

fn load_config(path: &Option<PathBuf>) -> Result<RouterConfig, String> {
    match path {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            RouterConfig::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => Ok(RouterConfig::default()),
    }
}

fn run(args: RunArgs, learn: bool) -> Result<(), String> {
    let mut config = load_config(&args.config)?;
    if learn {
        // R-HA-4: a learner is a member that never votes or leads.
        config.cluster.enabled = true;
        config.cluster.learner = true;
    }
    if let Some(listen) = args.listen {
        config.network.listen = listen;
    }
    if let Some(listen) = args.metrics_listen {
        config.metrics.listen = listen;
    }
    if let Some(backend) = args.backend {
        config.network.backend = match backend.as_str() {
            "uring" => Backend::Uring,
            "mio" => Backend::Mio,
            other => return Err(format!("--backend must be uring or mio, not {other:?}")),
        };
    }
    if let Some(dir) = args.data_dir {
        config.journal.data_dir = Some(dir);
    }
    if args.in_memory {
        tracing::warn!(
            "--in-memory: no data directory; every credit, balance and batch is lost when \
             the router stops"
        );
        config.journal.data_dir = None;
    } else if config.journal.data_dir.is_none() {
        // R-OPS-1: durable by default, in the working directory.
        let cwd = std::env::current_dir().map_err(|e| format!("working directory: {e}"))?;
        config.journal.data_dir = Some(cwd.join(DATA_DIR_DEFAULT));
    }
    let data_dir = config
        .journal
        .data_dir
        .as_ref()
        .map_or("none".to_string(), |d| {
            std::path::absolute(d)
                .unwrap_or_else(|_| d.clone())
                .display()
                .to_string()
        });
    if let Some(mode) = args.durability {
        config.journal.durability = mode;
    }
    if let Some(operator) = args.operator {
        config.identity.operator = operator;
    }
    if let Some(key) = args.router_key_hex {
        config.identity.router_key_hex = key;
    }
    if let Some(path) = args.balance_snapshot {
        config.identity.balance_snapshot = Some(path);
    }
    if args.reapply_balance_snapshot {
        config.identity.balance_snapshot_reapply = true;
    }
    if args.set_settlement_domain {
        config.identity.settlement_domain_set = true;
    }
    if let Some(network_id) = args.network_id {
        config.identity.network_id = network_id;
    }
    if args.allow_corrupt_truncate {
        config.journal.allow_corrupt_truncate = true;
    }
    config.validate()?;
    if config.identity.operator.is_empty() {
        tracing::warn!(
            "no operator (--operator / identity.operator): this market accepts no \
             BalanceUpdate or SetParams, and a data directory keeps that (the operator is \
             one of its market parameters: another one later is refused)"
        );
    }
    if config.cluster.enabled {
        // R-HA-1 (issue 25): a member of a replicated group; the market pipeline runs
        // only while it leads (docs/replication.md).
        return yellowstone_gateway::router::cluster::run_member(config, |ready| {
            println!("{}", ready.line());
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            tracing::info!(member = ready.member_id, raft = %ready.raft_listen, "member serving");
        })
        .map_err(|e| e.to_string());
    }
    let router = yellowstone_gateway::router::start_from_config(config)?;
    let metrics = router
        .metrics_addr
        .map_or("none".to_string(), |a| a.to_string());
    let backends = router.backends.clone();
    let listen = router.listen;
    let ready_line = format!(
        "READY listen={} metrics={} router={} network_id={} data_dir={}",
        router.listen, metrics, router.router_address, router.network_id, data_dir
    );
    let engine = router.run_until_signal_after(move || {
        // The start-up contract scripts and tests rely on: one line, then serve.
        println!("{ready_line}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        tracing::info!(%listen, ?backends, "router serving");
    })?;
    tracing::info!(block = engine.block(), "router stopped");
    Ok(())
}

/// `print-config`'s closing comment: the keys that have no value to print (TOML has
/// no "none"), each with what leaving it unset means, so the listing names every
/// key. Comments only: the output still reads back as the same configuration.
fn unset_keys(config: &RouterConfig) -> String {
    let mut lines = Vec::new();
    if config.journal.data_dir.is_none() {
        lines.push(format!(
            "# [journal] data_dir = \"DIR\": unset, `run` keeps its state in \
             ./{DATA_DIR_DEFAULT} (--data-dir DIR; --in-memory keeps none)"
        ));
    }
    if config.identity.balance_snapshot.is_none() {
        lines.push(
            "# [identity] balance_snapshot = \"FILE\": unset, no balances at start \
             (--balance-snapshot FILE)"
                .to_string(),
        );
    }
    if config.threads.engine_core.is_none() {
        lines.push("# [threads] engine_core = N: unset, the last core".to_string());
    }
    if config.threads.journal_core.is_none() {
        lines.push("# [threads] journal_core = N: unset, the engine's core".to_string());
    }
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\n# Keys without a default value, unset here:\n{}\n",
        lines.join("\n")
    )
}

/// Issue 24 case 5: every parameter the Compute Contract is deployed with (its
/// constructor's arguments, derived from the market as `yellowstone-chain deploy`
/// derives them), as comments: a wrong value shows here, not later as
/// `OverDailyCap` or a silent divergence. Token and router are the deployment's.
fn deployment_parameters(config: &RouterConfig) -> Result<String, String> {
    let market = config.market_config(config.market.genesis_ms.max(1))?;
    let params = yellowstone_settlement::DeployParams::from_market(
        &market,
        yellowstone_engine::Address::default(),
        yellowstone_engine::Address::default(),
        config.identity.network_id,
    );
    Ok(format!(
        "\n# Compute Contract deployment parameters (R-CHAIN-2; derived, read-only; \
         `yellowstone-chain deploy --dry-run` prints them with the router's address):\n\
         # network_id = {}\n# epochs_per_day = {} (7,200 / settlement_epoch_blocks)\n\
         # emission_wei_per_day = {}\n# compute_emission_wei_per_day = {}\n\
         # bootstrap_bonus_wei_per_day = {}\n# bootstrap_days = {}\n\
         # pool_spend_bps = {}\n# burn_unused = {}\n\
         # settlement_chain_id = {}\n# settlement_contract = {}\n",
        params.network_id,
        params.epochs_per_day,
        market.emission_wei_per_day,
        params.compute_emission_wei_per_day,
        params.bootstrap_bonus_wei_per_day,
        params.bootstrap_days,
        params.pool_spend_bps,
        params.burn_unused,
        market.settlement_chain_id,
        market.settlement_contract,
    ))
}

/// The data directory used when none is given, in the working directory (R-OPS-1).
const DATA_DIR_DEFAULT: &str = "yellowstone-data";

fn print_value(value: &serde_json::Value, json: bool) {
    if json {
        println!("{value}");
    } else {
        print!("{}", settlement::text(value));
    }
}

fn main() {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run(*args, false),
        Cmd::Learn(args) => run(*args, true),
        // Exit 2 when a member could not be reached, 1 when refused.
        Cmd::Cluster { command } => {
            if let Err(error) = cluster_cli::run(command) {
                eprintln!("yellowstone-router cluster: {error}");
                std::process::exit(error.exit_code());
            }
            Ok(())
        }
        Cmd::Keygen => {
            let key = SigningKey::random();
            println!(
                "secret_hex={}\naddress={}",
                hex::encode(key.secret_bytes()),
                key.address()
            );
            Ok(())
        }
        Cmd::Address { key_file, key_hex } => key_address(key_file, key_hex),
        Cmd::Journal {
            data_dir,
            from,
            limit,
            json,
        } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            tools::dump(&data_dir, from, limit, json, &mut out)
                .map(|_| ())
                .map_err(String::from)
        }
        // With --json, stdout is one JSON object either way (`"ok": true` with the
        // report, or `"ok": false` with the error, which also goes to stderr), so a
        // script reads a verdict rather than an empty line.
        Cmd::Verify { data_dir, json } => match tools::verify(&data_dir) {
            Ok(mut report) => {
                if json {
                    report["ok"] = serde_json::Value::Bool(true);
                    println!("{report}");
                } else {
                    println!("{report:#}");
                    println!("verify: OK");
                }
                Ok(())
            }
            Err(error) => {
                let error = error.to_string();
                if json {
                    println!("{}", serde_json::json!({ "ok": false, "error": error }));
                }
                Err(error)
            }
        },
        Cmd::Ledger { data_dir, json } => tools::ledger(&data_dir)
            .map(|ledger| {
                if json {
                    println!("{ledger}");
                } else {
                    print!("{}", tools::ledger_text(&ledger));
                }
            })
            .map_err(String::from),
        Cmd::Settlement {
            data_dir,
            epoch,
            config,
            network_id,
            json,
        } => load_config(&config)
            .and_then(|config| {
                let key_hex =
                    Some(config.identity.router_key_hex.as_str()).filter(|k| !k.is_empty());
                tools::check_data_dir(&data_dir)?;
                // R-CHAIN-3 (issue 24 case 4): signed only for the data directory's
                // network; a directory from before the network_id file takes the config's.
                let stored = yellowstone_gateway::journal::files::read_network_id(&data_dir)?;
                let network_id = match (stored, network_id) {
                    (Some(stored), Some(asked)) if stored != asked => {
                        return Err(format!(
                            "--network-id {asked}: this data directory is of network {stored}; \
                             a settlement is signed only for its own network (R-CHAIN-3)"
                        ))
                    }
                    (Some(stored), _) => stored,
                    (None, asked) => asked.unwrap_or(config.identity.network_id),
                };
                let signer = settlement::Signer::from_data_dir(&data_dir, key_hex, network_id)?;
                settlement::export(&data_dir, epoch, &signer)
            })
            .map(|value| print_value(&value, json)),
        Cmd::ClaimProof {
            data_dir,
            provider,
            epoch,
            json,
        } => settlement::claim_proof(&data_dir, &provider, epoch)
            .map(|value| print_value(&value, json)),
        // Validated as `run` validates it: what print-config shows is a configuration
        // the router would start with, or the error that `run` would give.
        Cmd::PrintConfig { config: path } => load_config(&path)
            .and_then(|c| {
                c.validate().map_err(|e| match &path {
                    Some(path) => format!("{}: {e}", path.display()),
                    None => e,
                })?;
                let text = toml::to_string_pretty(&c).map_err(|e| e.to_string())?;
                let models = yellowstone_gateway::router::config::models_help(&c.market.models);
                Ok(text + &models + &unset_keys(&c) + &deployment_parameters(&c)?)
            })
            .map(|text| print!("{text}")),
    };
    if let Err(error) = result {
        eprintln!("yellowstone-router: {error}");
        std::process::exit(1);
    }
}
