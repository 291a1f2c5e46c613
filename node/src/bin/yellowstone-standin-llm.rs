//! `yellowstone-standin-llm`: a TEST STAND-IN for a model server (see
//! `yellowstone_node::standin`): deterministic OpenAI-compatible answers, switches
//! for slow, failing and cut-off answers. It computes nothing. Once serving it
//! prints `READY listen=<ip:port>`.

use clap::Parser;
use yellowstone_node::standin::{router, Mode};

#[derive(Parser)]
#[command(
    version,
    about = "Test stand-in for an OpenAI-compatible model server (deterministic, not a model). POST /standin/mode changes the switches at run time."
)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    #[command(flatten)]
    mode: Mode,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&cli.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("yellowstone-standin-llm: listen {}: {error}", cli.listen);
                std::process::exit(1);
            }
        };
        let addr = listener.local_addr().expect("bound");
        println!("READY listen={addr}");
        if let Err(error) = axum::serve(yellowstone_node::nodelay(listener), router(cli.mode)).await
        {
            eprintln!("yellowstone-standin-llm: {error}");
            std::process::exit(1);
        }
    });
}
