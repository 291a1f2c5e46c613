//! `yellowstone-consumer`: buys compute in the Yellowstone market for local
//! applications over the OpenAI API (R-NODE-2). Once serving it prints
//! `READY listen=<ip:port> metrics=<ip:port|none> address=<0x user address>`
//! (the command line: `yellowstone_node::cli`).

use yellowstone_node::consumer::{config::ConsumerConfig, Consumer};

fn main() {
    yellowstone_node::cli::main(
        "yellowstone-consumer",
        "Yellowstone consumer node: serves local applications with the OpenAI API; each completion is an RFC to the router, a direct call to the matched provider and a signed report",
        |config: ConsumerConfig, key| async move { Consumer::new(config, key)?.start().await },
    );
}
