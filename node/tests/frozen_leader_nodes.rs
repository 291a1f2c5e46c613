//! Issue 25 (R-HA-3) through the real processes: a group of three `yellowstone-router`
//! members, the stand-in model server, a provider node and a consumer node, both
//! configured with the three members (`router_endpoints`). One completion works; then
//! the leader is SIGSTOPped: its kernel keeps the nodes' TCP connections open and
//! nothing answers on them. Within `RECOVERY` of the freeze the provider has
//! registered again with the new leader (its second `REGISTERED` line), a completion
//! an application asked for at the freeze has succeeded through the consumer, and the
//! new leader credits both completions, each once, in the batches it seals.
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
use std::time::{Duration, Instant};
use yellowstone_tests::cluster::{Cluster, ClusterSpec, LEADER_WAIT};
use yellowstone_tests::market::now_ms;
use yellowstone_wire::{Address, MarketStateQuery, Message, SigningKey};

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

/// A node's metric `series` at its metrics address (0 when absent).
async fn node_metric(http: &reqwest::Client, metrics: &str, series: &str) -> f64 {
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

    // An application asks at the moment of the freeze, once, without retrying (the
    // outsider's `openai` app with retries off): the consumer resends its RFC on the
    // next connection, or holds one made while it reconnects, and the completion
    // succeeds within the bound. A second asks during the reconnection itself.
    let started_ms = now_ms();
    let once = |label: &'static str, after: Duration| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let answer = match http
                .post(&url)
                .json(&chat(label))
                .timeout(RECOVERY)
                .send()
                .await
            {
                Ok(response) if response.status() == 200 => {
                    let text = response.text().await.unwrap_or_default();
                    serde_json::from_str::<serde_json::Value>(&text)
                        .map_err(|e| format!("{e}: {text}"))
                }
                Ok(response) => Err(format!(
                    "{}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                )),
                Err(error) => Err(error.to_string()),
            };
            (answer, frozen_at.elapsed())
        })
    };
    let completion = once("at the freeze", Duration::ZERO);
    // Past the liveness watch (500 ms + 2 s): the link is being replaced.
    let during_reconnect = once("while reconnecting", Duration::from_millis(2_550));

    // The provider leaves the frozen leader and registers with the new one.
    let registered = tokio::task::block_in_place(|| {
        provider_node.wait_line("REGISTERED", RECOVERY);
        frozen_at.elapsed()
    });
    eprintln!("provider registered again {registered:?} after the freeze");
    let (answer, recovered) = completion.await.expect("the completion task");
    let answer = answer.unwrap_or_else(|last| {
        panic!(
            "no completion through the consumer within {RECOVERY:?} of the freeze \
             (leader member {} frozen); last answer: {last}",
            leader + 1
        )
    });
    eprintln!("first completion {recovered:?} after the freeze");
    let (second, second_at) = during_reconnect.await.expect("the second completion task");
    let second = second.unwrap_or_else(|last| {
        panic!("a completion asked while the consumer reconnected was refused: {last}")
    });
    assert_eq!(second["object"], "chat.completion", "{second}");
    eprintln!("completion asked while reconnecting answered {second_at:?} after the freeze");
    // Each node left the frozen leader by its liveness watch, once.
    let provider_metrics = provider_node.field("metrics");
    for (metrics, series) in [
        (
            &provider_metrics,
            "yellowstone_provider_router_silent_total",
        ),
        (
            &consumer_metrics,
            "yellowstone_consumer_router_silent_total",
        ),
    ] {
        assert_eq!(node_metric(&http, metrics, series).await, 1.0, "{series}");
    }
    let tokens = answer["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    assert!(tokens > 0, "{answer}");

    // The three completions are reported and acknowledged as earned.
    let earned = "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"earned\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_metric(&http, &consumer_metrics, earned).await < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the completion after the freeze was not acknowledged as earned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The new leader credits both completions, each once, in the batches it seals
    // (the market's figures: this provider is the only one credited here).
    let (new_leader, _) = cluster
        .wait_for_leader(Some(leader), LEADER_WAIT)
        .expect("the new leader");
    assert_ne!(new_leader, leader);
    let first_tokens = first["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    let second_tokens = second["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    let expected = u128::from(first_tokens + tokens + second_tokens) * PRICE_WEI_PER_TOKEN;
    let post_block = started_ms.saturating_sub(cluster.genesis_ms) / BLOCK_MS;
    let new_leader_client = cluster.members[new_leader].client;
    let state = tokio::task::block_in_place(|| {
        let mut client = yellowstone_tests::market::connect(
            new_leader_client,
            SigningKey::from_seed(b"frozen-state-reader"),
        );
        let deadline = Instant::now() + Duration::from_millis(BLOCK_MS + 6_000);
        loop {
            let query_id = client.next_nonce();
            client
                .send(&MarketStateQuery { query_id }.into())
                .expect("send MarketStateQuery");
            let state = yellowstone_tests::market::expect(
                &mut client,
                Duration::from_secs(5),
                |m| match m {
                    Message::MarketState(s) if s.query_id == query_id => Some(s.clone()),
                    _ => None,
                },
            );
            if state.credited_wei >= expected || Instant::now() >= deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert_eq!(
        state.credited_wei, expected,
        "credited {} wei, expected {expected} ({first_tokens} + {tokens} + {second_tokens} \
         tokens at {PRICE_WEI_PER_TOKEN}): each completion credited once, the ones after \
         the freeze included",
        state.credited_wei
    );
    assert!(
        state.batch_sealed && state.last_batch_block >= post_block,
        "credited in a batch sealed for block {post_block} or later: {state:?}"
    );
    cluster.resume(leader);
    drop(cluster);
}
