//! Issue 25 (R-HA-3) through the real processes: a group of three `yellowstone-router`
//! members, the stand-in model server, a provider node and a consumer node, both
//! configured with the three members (`router_endpoints`). One completion works; then
//! the leader is SIGSTOPped: its kernel keeps the nodes' TCP connections open and
//! nothing answers on them. Within `RECOVERY` of the freeze the provider has
//! registered again with the new leader (its second `REGISTERED` line) and a new
//! completion through the consumer succeeds, and it is credited in a batch the new
//! leader seals.
//!
//! Before the fix the nodes only sent keepalive Pings and waited on their readers for
//! ever: the consumer's RFCs went to the frozen leader and waited out their time to
//! live (30 s), and the provider never registered with the new leader (every match
//! there failed its probe). Now each link pings after `router_ping_ms` of silence and
//! takes a Ping unanswered for `router_liveness_ms` (2 s) as a dead connection: the
//! node reconnects over the members, the lost one last, resends, and the provider
//! registers again.

mod common;

use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use yellowstone_tests::cluster::{Cluster, ClusterSpec, LEADER_WAIT};
use yellowstone_tests::market::now_ms;
use yellowstone_wire::{Address, Message, Signature, SigningKey, SubscribeBatches};

/// Freeze to the first successful completion through the consumer, at most: the
/// liveness bound (0.5 s quiet + 2 s unanswered Ping), the election (about 1 s, at the
/// same time), the reconnect and the provider's registration at the new leader, with
/// margin for debug builds of five processes on two shared cores.
const RECOVERY: Duration = Duration::from_secs(8);

/// A market block (the router's default `market.block_ms`).
const BLOCK_MS: u64 = 12_000;

fn chat(prompt: &str) -> serde_json::Value {
    // The group's catalog names its models `model-<id>` (yellowstone_tests::cluster).
    json!({"model": "model-1", "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8, "stream": false})
}

/// Posts `body` to the consumer until it answers 200 or `within` passes (a 503 with
/// `Retry-After`, such as `router_unavailable` while the node reconnects, is what an
/// application retries); the answer, or the last status and body.
async fn complete_within(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    within: Duration,
) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match http.post(url).json(body).timeout(left).send().await {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                if status == 200 {
                    return serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"));
                }
                last = format!("{status}: {text}");
            }
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// The consumer's metric `series` (0 when absent).
async fn consumer_metric(http: &reqwest::Client, metrics: &str, series: &str) -> f64 {
    let text = http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    yellowstone_tests::metric_value(&text, series).unwrap_or(0.0)
}

/// Credit batches from `router` (a blocking subscriber on its own thread).
fn watch_batches(router: SocketAddr) -> std::sync::mpsc::Receiver<yellowstone_wire::CreditBatch> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut client =
        yellowstone_tests::market::connect(router, SigningKey::from_seed(b"frozen-batch-watcher"));
    client.set_read_timeout(None).unwrap();
    let nonce = client.next_nonce();
    client
        .send_signed(
            SubscribeBatches {
                from: client.address(),
                nonce,
                signature: Signature::default(),
            }
            .into(),
        )
        .unwrap();
    std::thread::spawn(move || {
        while let Ok(message) = client.recv_verified() {
            if let Message::CreditBatch(batch) = message {
                if tx.send(batch).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_25_nodes_leave_a_frozen_leader_the_provider_registers_again_and_a_completion_succeeds(
) {
    let mut cluster = Cluster::start(&ClusterSpec::default()).expect("start the group");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let provider_address = keygen(PROVIDER, &path("provider.key"));
    let consumer_address = keygen(CONSUMER, &path("consumer.key"));
    let provider: Address = provider_address.parse().unwrap();
    let consumer: Address = consumer_address.parse().unwrap();
    cluster.fund(&[(provider, WEI_PER_MOR), (consumer, 500 * WEI_PER_MOR)]);
    let endpoints = format!(
        "router_endpoints = [{}]",
        cluster
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let standin = NodeProcess::start(STANDIN, &["--listen", "127.0.0.1:0"], dir.path());
    std::fs::write(path("model-1.weights"), b"yellowstone-demo-model-1").unwrap();
    std::fs::write(
        path("provider.toml"),
        format!(
            "{endpoints}\nkey_file = \"provider.key\"\nlisten = \"127.0.0.1:0\"\n\
             metrics_listen = \"127.0.0.1:0\"\n\n[[models]]\nmodel_id = 1\n\
             weights_file = \"model-1.weights\"\nupstream_base_url = \"http://{}/v1\"\n\
             upstream_model = \"standin\"\nprice_wei_per_token = \"{PRICE_WEI_PER_TOKEN}\"\ncapacity = 8\n",
            standin.field("listen"),
        ),
    )
    .unwrap();
    let mut provider_node =
        NodeProcess::start(PROVIDER, &["run", "--config", "provider.toml"], dir.path());
    provider_node.wait_line("REGISTERED", Duration::from_secs(30));
    std::fs::write(
        path("consumer.toml"),
        format!(
            "{endpoints}\nkey_file = \"consumer.key\"\nlisten = \"127.0.0.1:0\"\n\
             metrics_listen = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let consumer_node =
        NodeProcess::start(CONSUMER, &["run", "--config", "consumer.toml"], dir.path());
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/v1/chat/completions",
        consumer_node.field("listen")
    );
    let consumer_metrics = consumer_node.field("metrics");

    // One inference works through the group's leader.
    let first = complete_within(
        &http,
        &url,
        &chat("before the freeze"),
        Duration::from_secs(20),
    )
    .await
    .expect("a completion before the freeze");
    assert_eq!(first["object"], "chat.completion", "{first}");

    let (leader, _) = cluster
        .wait_for_stable_leader(LEADER_WAIT)
        .expect("a stable leader to freeze");
    let frozen_at = Instant::now();
    cluster.pause(leader);

    // The provider leaves the frozen leader and registers with the new one.
    let registered = tokio::task::block_in_place(|| {
        provider_node.wait_line("REGISTERED", RECOVERY);
        frozen_at.elapsed()
    });
    eprintln!("provider registered again {registered:?} after the freeze");

    // A new completion through the consumer succeeds within the bound.
    let started_ms = now_ms();
    let answer = complete_within(
        &http,
        &url,
        &chat("after the freeze"),
        RECOVERY.saturating_sub(frozen_at.elapsed()),
    )
    .await
    .unwrap_or_else(|last| {
        panic!(
            "no completion through the consumer within {RECOVERY:?} of the freeze \
             (leader member {} frozen); last answer: {last}",
            leader + 1
        )
    });
    let recovered = frozen_at.elapsed();
    eprintln!("first completion {recovered:?} after the freeze");
    let tokens = answer["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    assert!(tokens > 0, "{answer}");

    // Both completions are reported and acknowledged as earned.
    let earned = "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"earned\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while consumer_metric(&http, &consumer_metrics, earned).await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the completion after the freeze was not acknowledged as earned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The new leader credits it in a batch it seals: the block the completion began
    // in, or a later one (a completion's credit is in the block its report lands in).
    let (new_leader, _) = cluster
        .wait_for_leader(Some(leader), LEADER_WAIT)
        .expect("the new leader");
    assert_ne!(new_leader, leader);
    let first_block = started_ms.saturating_sub(cluster.genesis_ms) / BLOCK_MS;
    let batches = watch_batches(cluster.members[new_leader].client);
    let deadline = Instant::now() + Duration::from_millis(BLOCK_MS + 6_000);
    let mut credited = 0u128;
    while credited < u128::from(tokens) * PRICE_WEI_PER_TOKEN {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch =
            tokio::task::block_in_place(|| batches.recv_timeout(left)).unwrap_or_else(|_| {
                panic!(
                    "no batch from block {first_block} on credited the provider \
                     {} wei for the {tokens} tokens after the freeze (credited {credited})",
                    u128::from(tokens) * PRICE_WEI_PER_TOKEN
                )
            });
        if batch.block >= first_block {
            credited += batch
                .totals
                .iter()
                .filter(|t| t.provider == provider)
                .map(|t| t.credited_wei)
                .sum::<u128>();
        }
    }
    cluster.resume(leader);
    drop(cluster);
}
