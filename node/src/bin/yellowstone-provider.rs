//! `yellowstone-provider`: sells a model server's compute in the Yellowstone market
//! (R-NODE-1). Once serving it prints
//! `READY listen=<ip:port> metrics=<ip:port|none> address=<0x provider address>`
//! (the command line: `yellowstone_node::cli`).

use yellowstone_node::provider::{config::ProviderConfig, Provider};

fn main() {
    yellowstone_node::cli::main(
        "yellowstone-provider",
        "Yellowstone provider node: registers models with the router, answers probes, and serves ticket holders with the OpenAI API, forwarding to an OpenAI-compatible model server (llama.cpp server, vLLM, Ollama…)",
        |config: ProviderConfig, key| async move { Provider::new(config, key)?.start().await },
    );
}
