//! `yellowstone-consumer`: buys compute in the Yellowstone market for local
//! applications over the OpenAI API (R-NODE-2). Once serving it prints
//! `READY listen=<ip:port> metrics=<ip:port|none> address=<0x user address>`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use yellowstone_node::consumer::config::ConsumerConfig;
use yellowstone_node::consumer::Consumer;

#[derive(Parser)]
#[command(
    version,
    about = "Yellowstone consumer node: serves local applications with the OpenAI API; each completion is an RFC to the router, a direct call to the matched provider and a signed report"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the node until SIGINT/SIGTERM.
    Run {
        /// TOML configuration (see print-config).
        #[arg(long)]
        config: PathBuf,
        /// Overrides `listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Overrides `metrics_listen` ("" for none).
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Overrides `router_addr`.
        #[arg(long)]
        router: Option<String>,
    },
    /// Prints the configuration with every key and its default.
    PrintConfig,
    /// Creates a key file (mode 0600; never overwrites) and prints its address.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
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
    if let Err(error) = run(Cli::parse()) {
        eprintln!("yellowstone-consumer: {error}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::PrintConfig => {
            let text =
                toml::to_string_pretty(&ConsumerConfig::default()).map_err(|e| e.to_string())?;
            print!("{text}");
            Ok(())
        }
        Command::Keygen { out } => {
            let key = yellowstone_node::keyfile::create(&out).map_err(|e| e.to_string())?;
            println!("{}", key.address());
            Ok(())
        }
        Command::Run {
            config,
            listen,
            metrics_listen,
            router,
        } => {
            let text = std::fs::read_to_string(&config)
                .map_err(|e| format!("config {}: {e}", config.display()))?;
            let mut config = ConsumerConfig::from_toml(&text)
                .map_err(|e| format!("config {}: {e}", config.display()))?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(metrics_listen) = metrics_listen {
                config.metrics_listen = metrics_listen;
            }
            if let Some(router) = router {
                config.router_addr = router;
            }
            config.validate()?;
            let key =
                yellowstone_node::keyfile::load(&config.key_file).map_err(|e| e.to_string())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("runtime: {e}"))?;
            runtime.block_on(async move {
                let consumer = Consumer::new(config, key)?;
                let started = consumer.start().await?;
                println!(
                    "READY listen={} metrics={} address={}",
                    started.listen,
                    started
                        .metrics
                        .map_or_else(|| "none".to_string(), |a| a.to_string()),
                    started.address
                );
                shutdown_signal().await;
                Ok::<(), String>(())
            })
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
