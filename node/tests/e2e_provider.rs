//! Issue 23, the provider side, through the real processes (router, stand-in model
//! server, provider node, consumer node): R-ID-8 (another program signing with the
//! provider's key), R-NODE-5 (tickets survive a restart; SIGTERM finishes the stream
//! in flight), R-PROV-4 (a model server down is withdrawn, and offered again).

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use yellowstone_wire::{Message, Signature, SigningKey, UpdateBid};

fn chat(prompt: &str, max_tokens: u64, stream: bool) -> serde_json::Value {
    json!({"model": "demo-model-1", "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "stream": stream})
}

async fn complete(stack: &Stack, prompt: &str) -> serde_json::Value {
    let response = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&chat(prompt, 5, false))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    response.json().await.unwrap()
}

fn provider_key(stack: &Stack) -> SigningKey {
    yellowstone_node::keyfile::load(&stack.dir.path().join("provider.key")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_id_8_a_program_signing_ahead_with_the_providers_key_does_not_stall_the_provider() {
    let stack = Stack::start(Tuning::default()).await;
    assert_eq!(
        complete(&stack, "before").await["usage"]["completion_tokens"],
        5
    );
    // Another program (its clock 1000 s ahead) signs with the provider's key: the
    // router accepts its nonce, so the node's next nonces are replays.
    let router = stack.router.ready.listen;
    let key = provider_key(&stack);
    tokio::task::spawn_blocking(move || {
        use yellowstone_tests::market::*;
        let mut client = connect(router, key.clone());
        let nonce = yellowstone_wire::nonce::clock_micros() + 1_000_000_000;
        client
            .send_signed(
                UpdateBid {
                    from: key.address(),
                    nonce,
                    model_id: 1,
                    price_wei_per_token: PRICE_WEI_PER_TOKEN,
                    capacity: 8,
                    signature: Signature::default(),
                }
                .into(),
            )
            .unwrap();
        expect(&mut client, Duration::from_secs(10), |m| match m {
            Message::Ack(a) if a.nonce == nonce => Some(()),
            Message::ErrorReply(e) => panic!("refused: {e:?}"),
            _ => None,
        });
        // wire::client's own resync: a fresh client numbers from the clock, below that
        // nonce; `request` is refused `replay`, moves above it, and resends once.
        let mut fresh = connect(router, key.clone());
        let from = key.address();
        let acked = fresh
            .request(
                |nonce| {
                    UpdateBid {
                        from,
                        nonce,
                        model_id: 1,
                        price_wei_per_token: PRICE_WEI_PER_TOKEN,
                        capacity: 8,
                        signature: Signature::default(),
                    }
                    .into()
                },
                |nonce, m| matches!(m, Message::Ack(a) if a.nonce == nonce).then_some(nonce),
                |_| {},
            )
            .unwrap()
            .unwrap_or_else(|e| panic!("refused after the resync: {e:?}"));
        assert!(acked > nonce, "resent above the other program's nonce");
    })
    .await
    .unwrap();
    // The node resynchronises from the replay refusals and goes on (on the old code
    // every message of the node was refused from here on: no completion).
    for prompt in ["after one", "after two", "after three"] {
        assert_eq!(
            complete(&stack, prompt).await["usage"]["completion_tokens"],
            5
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_5_a_ticket_issued_before_a_provider_restart_is_served_after_it() {
    let mut stack = Stack::start(Tuning::default()).await;
    let router = stack.router.ready.listen;
    let user = SigningKey::from_seed(b"r-node-5-restart-user");
    let ticket = {
        let user = user.clone();
        tokio::task::spawn_blocking(move || fund_and_request_ticket(router, &user, &[], 40))
            .await
            .unwrap()
    };
    // The provider holds it (received before the restart).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack
        .metrics_text(&stack.provider)
        .await
        .contains("yellowstone_provider_tickets_received_total 0")
    {
        assert!(std::time::Instant::now() < deadline, "ticket never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Killed outright (no graceful stop), started again on the same address.
    let listen = stack.provider.field("listen");
    stack.provider.kill();
    stack.provider = NodeProcess::start(
        PROVIDER,
        &["run", "--config", "provider.toml", "--listen", &listen],
        stack.dir.path(),
    );
    stack
        .provider
        .wait_line("REGISTERED", Duration::from_secs(30));
    let body = serde_json::to_vec(&chat("restarted", 4, false)).unwrap();
    let answer = provider_call(
        &stack.http,
        &ticket,
        1,
        &user,
        ticket.session_id,
        body.clone(),
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    // Still one inference per ticket.
    let again = provider_call(
        &stack.http,
        &ticket,
        1,
        &user,
        ticket.session_id,
        body,
        None,
    )
    .send()
    .await
    .unwrap();
    openai_error(again, 409).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_5_sigterm_finishes_the_stream_in_flight_then_the_provider_exits() {
    let mut stack = Stack::start(Tuning::default()).await;
    stack
        .standin_mode(json!({"delay_ms_per_token": 100, "tokens": 16}))
        .await;
    let mut response = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&chat("slow and steady", 12, true))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = String::new();
    let mut terminated = false;
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
        if !terminated && body.contains("\"content\"") {
            stack.provider.send_term();
            terminated = true;
        }
    }
    assert!(terminated);
    let (text, done) = sse_content(&body);
    assert!(done, "the stream was finished, not cut: {body}");
    assert_eq!(text.split_whitespace().count(), 12, "{text}");
    let stopped = stack.provider.wait_line("STOPPED", Duration::from_secs(30));
    assert_eq!(stopped, "STOPPED in_flight=0");
    assert!(stack.provider.wait_exit(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_prov_4_a_dead_model_server_is_withdrawn_and_offered_again() {
    let mut stack = Stack::start(Tuning {
        provider: "upstream_health_interval_ms = 200\nupstream_health_timeout_ms = 200\n".into(),
        ..Tuning::default()
    })
    .await;
    let standin = stack.standin.field("listen");
    stack.standin.kill();
    let offers = |stack: &Stack| {
        let url = stack.consumer_url("/v1/models");
        let http = stack.http.clone();
        async move {
            let models: serde_json::Value =
                http.get(url).send().await.unwrap().json().await.unwrap();
            models["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["id"] == "demo-model-1")
                .and_then(|m| m["offers_live"].as_u64())
                .unwrap()
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while offers(&stack).await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "offer never withdrawn"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back on the same address: offered again, and served.
    stack.standin = NodeProcess::start(STANDIN, &["--listen", &standin], stack.dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while offers(&stack).await != 1 {
        assert!(std::time::Instant::now() < deadline, "offer never restored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        complete(&stack, "back").await["usage"]["completion_tokens"],
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_id_8_a_program_signing_ahead_with_the_consumers_key_does_not_stall_the_consumer() {
    let stack = Stack::start(Tuning::default()).await;
    assert_eq!(
        complete(&stack, "before").await["usage"]["completion_tokens"],
        5
    );
    // Another program with the consumer's key and a clock 1000 s ahead asks for a
    // session itself: the router accepts that nonce.
    let router = stack.router.ready.listen;
    let key = yellowstone_node::keyfile::load(&stack.dir.path().join("consumer.key")).unwrap();
    tokio::task::spawn_blocking(move || {
        use yellowstone_tests::market::*;
        let mut client = connect(router, key.clone());
        let nonce = yellowstone_wire::nonce::clock_micros() + 1_000_000_000;
        client
            .send_signed(
                yellowstone_wire::Rfc {
                    from: key.address(),
                    nonce,
                    model_id: 1,
                    tokens_max: 1,
                    expires_at_ms: now_ms() + 30_000,
                    signature: Signature::default(),
                }
                .into(),
            )
            .unwrap();
        expect(&mut client, Duration::from_secs(10), |m| match m {
            Message::SessionTicket(t) if t.rfc_nonce == nonce => Some(()),
            Message::ErrorReply(e) => panic!("refused: {e:?}"),
            _ => None,
        });
    })
    .await
    .unwrap();
    // The consumer node's RFCs and reports are refused `replay`, resynchronised and
    // resent: the application sees nothing of it.
    for prompt in ["after one", "after two"] {
        assert_eq!(
            complete(&stack, prompt).await["usage"]["completion_tokens"],
            5
        );
    }
}

/// How many live offers the market lists for model 1 (through the consumer node).
async fn offers_live(stack: &Stack) -> u64 {
    let models: serde_json::Value = stack
        .http
        .get(stack.consumer_url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "demo-model-1")
        .and_then(|m| m["offers_live"].as_u64())
        .unwrap()
}

/// Sends a plain completion in the background (its status and body when it ends).
fn spawn_completion(
    stack: &Stack,
    prompt: &str,
) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    let request = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&chat(prompt, 5, false))
        .timeout(Duration::from_secs(60));
    tokio::spawn(async move {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    })
}

/// Waits until the stand-in received the request whose prompt is `prompt`.
async fn wait_standin_got(stack: &Stack, prompt: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while stack.standin_last_request().await["messages"][0]["content"] != prompt {
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in never got {prompt:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_prov_4_a_busy_model_server_stays_offered_and_a_killed_one_is_withdrawn() {
    // Health checks every 200 ms, 200 ms time-out, withdrawn after 2 failures; the
    // consumer's catalog refreshed every 100 ms so that a withdrawal shows at once.
    let mut stack = Stack::start(Tuning {
        provider: "upstream_health_interval_ms = 200\nupstream_health_timeout_ms = 200\n".into(),
        consumer: "catalog_refresh_ms = 100\n".into(),
        ..Tuning::default()
    })
    .await;
    // Single-threaded, as llama-cpp-python: a 4 s completion blocks `GET /v1/models`
    // (the health check) for 4 s, about 20 checks timing out.
    stack
        .standin_mode(json!({"single_threaded": true, "delay_ms_per_token": 800, "tokens": 16}))
        .await;
    let started = std::time::Instant::now();
    let busy = spawn_completion(&stack, "one long prompt");
    wait_standin_got(&stack, "one long prompt").await;
    while !busy.is_finished() {
        // A busy server is not a dead one: the offer stays live throughout (on the
        // old code it was withdrawn after two timed-out checks, ~0.5 s in).
        assert_eq!(
            offers_live(&stack).await,
            1,
            "offer withdrawn while the model server was busy, {:?} in",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = busy.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    assert!(
        started.elapsed() >= Duration::from_millis(3_500),
        "the server was busy for the whole completion: {:?}",
        started.elapsed()
    );
    assert_eq!(offers_live(&stack).await, 1);
    // Killed with a request in flight: the request ends (connection reset), the
    // checks are refused, and they count: withdrawn.
    let in_flight = spawn_completion(&stack, "cut short");
    wait_standin_got(&stack, "cut short").await;
    stack.standin.kill();
    let (status, _) = in_flight.await.unwrap();
    assert_ne!(status, 200, "the model server was killed mid-answer");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while offers_live(&stack).await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "killed model server never withdrawn"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
