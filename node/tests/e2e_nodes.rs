//! End-to-end through the real processes: router, stand-in model server, provider
//! node, consumer node (R-NODE-1..3). The application side here is plain HTTP; the
//! official `openai` Python package drives the same stack in
//! node/tests/python/test_openai_client.py.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

fn chat(prompt: &str, max_tokens: u64, stream: bool) -> serde_json::Value {
    json!({"model": "demo-model-1", "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "stream": stream})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_2_streamed_completion_arrives_whole_and_is_credited_and_never_reaches_the_router() {
    let stack = Stack::start(Tuning::default()).await;
    let watcher = BatchWatcher::start(stack.router.ready.listen);
    let prompt = "PROMPT-MARKER-7f3a9c the quick brown fox";

    // The models come from the router's catalog with the live price.
    let models: serde_json::Value = stack
        .http
        .get(stack.consumer_url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let model = &models["data"][0];
    assert_eq!(model["id"], "demo-model-1");
    assert_eq!(
        model["best_price_wei_per_token"],
        PRICE_WEI_PER_TOKEN.to_string()
    );

    let response = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&chat(prompt, 12, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.unwrap();
    let (text, done) = sse_content(&body);
    assert!(done, "the stream ends with [DONE]: {body}");
    // Whole: exactly what the model server gives for this prompt.
    let direct: serde_json::Value = stack
        .http
        .post(stack.standin_url("/v1/chat/completions"))
        .json(&chat(prompt, 12, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected = direct["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text, expected);
    assert_eq!(text.split_whitespace().count(), 12);
    // The application did not ask for usage: the usage chunk is not relayed.
    assert!(!body.contains("\"usage\""), "{body}");

    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"earned\"}",
            1.0,
        )
        .await;
    assert_eq!(
        stack
            .consumer_metric("yellowstone_consumer_tokens_total")
            .await,
        12.0
    );

    // Credited in the next batch: 12 tokens at the bid.
    let seen = watcher.seen();
    let batch = watcher.next_after(seen).await;
    let credited = watcher.credited_wei(&stack.provider_address);
    assert_eq!(credited, 12 * PRICE_WEI_PER_TOKEN, "batch {batch:?}");

    // A non-streamed completion too, with the app's model name in the answer.
    let answer: serde_json::Value = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&chat(prompt, 5, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["model"], "demo-model-1");
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    assert!(expected.starts_with(answer["choices"][0]["message"]["content"].as_str().unwrap()));

    // R-NODE-3: neither the journal nor the router's traffic holds the prompt or
    // the completion.
    let journal = stack.journal_bytes();
    assert!(!journal.is_empty());
    let traffic = stack.proxy.recorded.lock().unwrap().clone();
    assert!(traffic.len() > 1_000, "the proxy saw the nodes' traffic");
    for bytes in [&journal, &traffic] {
        assert!(!contains(bytes, b"PROMPT-MARKER-7f3a9c"));
        assert!(!contains(bytes, b"quick brown fox"));
        assert!(!contains(bytes, expected.trim().as_bytes()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_2_upstream_errors_cut_streams_and_dead_upstreams_are_reported_fail_without_credit()
{
    let mut stack = Stack::start(Tuning::default()).await;
    let watcher = BatchWatcher::start(stack.router.ready.listen);
    let http = stack.http.clone();
    let url = stack.consumer_url("/v1/chat/completions");
    let post = |body: serde_json::Value| http.post(&url).json(&body).send();

    // The model server fails: a clear error to the app, a fail report.
    stack.standin_mode(json!({"fail": true})).await;
    let response = post(chat("hello", 8, false)).await.unwrap();
    let error = openai_error(response, 502).await;
    assert_eq!(error["error"]["code"], "provider_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stand-in told to fail"),
        "{error}"
    );
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"fail\",ack=\"reported_fail\"}",
            1.0,
        )
        .await;

    // A stream cut mid-way: the app gets an error event, the provider a fail.
    stack.standin_mode(json!({"cut_after_tokens": 3})).await;
    let body = post(chat("hello", 8, true))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (text, done) = sse_content_lenient(&body);
    assert!(!done);
    // At most the 3 tokens sent before the cut (a torn connection may lose some).
    assert!(text.split_whitespace().count() <= 3, "{body}");
    assert!(body.contains("provider_stream_failed"), "{body}");
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"fail\",ack=\"reported_fail\"}",
            2.0,
        )
        .await;
    assert_eq!(
        stack
            .consumer_metric("yellowstone_consumer_requests_total{outcome=\"cut\"}")
            .await,
        1.0
    );

    // A plain answer cut mid-body.
    let response = post(chat("hello", 8, false)).await.unwrap();
    assert_eq!(response.status(), 502);
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"fail\",ack=\"reported_fail\"}",
            3.0,
        )
        .await;

    // The model server is down.
    stack.standin.kill();
    let response = post(chat("hello", 8, true)).await.unwrap();
    let error = openai_error(response, 502).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model server"),
        "{error}"
    );
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"fail\",ack=\"reported_fail\"}",
            4.0,
        )
        .await;

    // No credit for any of it: a batch sealed after the reports holds none.
    let seen = watcher.seen();
    watcher.next_after(seen).await;
    assert_eq!(watcher.credited_wei(&stack.provider_address), 0);
}

/// R-NODE-5, R-REPORT-2 (issue 27 case 8): a prompt over the model's context is the
/// request's own fault: the model server's 400 reaches the application as a 400, the
/// session is reported void, and the provider gets no penalty point (one would
/// suspend it here, and the next request would find no provider).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_5_a_prompt_over_the_context_is_a_400_for_the_app_and_a_void_report() {
    let stack = Stack::start(Tuning {
        market: "penalty_points_suspend = 1".into(),
        ..Tuning::default()
    })
    .await;
    stack.standin_mode(json!({"context_tokens_max": 4})).await;
    let url = stack.consumer_url("/v1/chat/completions");
    for stream in [false, true] {
        let long = chat("one two three four five six seven eight", 8, stream);
        let response = stack.http.post(&url).json(&long).send().await.unwrap();
        let error = openai_error(response, 400).await;
        assert_eq!(error["error"]["code"], "context_length_exceeded", "{error}");
    }
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"void\",ack=\"void\"}",
            2.0,
        )
        .await;
    // Not suspended: a prompt that fits is served and credited.
    let body = stack
        .http
        .post(&url)
        .json(&chat("short prompt", 8, true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(sse_content(&body).1, "{body}");
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"earned\"}",
            1.0,
        )
        .await;
}

/// Like `sse_content`, skipping events that are not chunks (an error event).
fn sse_content_lenient(body: &str) -> (String, bool) {
    let kept: Vec<&str> = body
        .split("\n\n")
        .filter(|event| !event.contains("\"error\""))
        .collect();
    sse_content(&kept.join("\n\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_perf_1_a_slow_upstream_is_caught_by_the_speed_gate() {
    let stack = Stack::start(Tuning {
        market: "speed_reports_min = 3\nspeed_window_reports = 10\nspeed_tolerance_percent = 50"
            .into(),
        ..Tuning::default()
    })
    .await;
    stack.standin_mode(json!({"delay_ms_per_token": 5})).await;
    for i in 0..3 {
        let body = stack
            .http
            .post(stack.consumer_url("/v1/chat/completions"))
            .json(&chat(&format!("fast {i}"), 16, true))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(sse_content(&body).1);
    }
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"earned\"}",
            3.0,
        )
        .await;
    // Ten times slower per token: a pass report, but too slow for credit.
    stack.standin_mode(json!({"delay_ms_per_token": 60})).await;
    let body = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&chat("slow", 16, true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(sse_content(&body).1, "the answer itself is whole");
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"too_slow\"}",
            1.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_1_tickets_are_checked_signature_owner_use_and_session() {
    use yellowstone_node::inference::{SESSION_HEADER, SIGNATURE_HEADER};
    use yellowstone_wire::*;
    let stack = Stack::start(Tuning {
        provider: "ticket_wait_ms = 200".into(),
        ..Tuning::default()
    })
    .await;
    // A user of its own (the test), funded through the operator, asks for a ticket.
    let addr = stack.router.ready.listen;
    let network_id = stack.router.ready.network_id;
    let user = SigningKey::from_seed(b"ticket-user");
    let mallory = SigningKey::from_seed(b"ticket-mallory");
    let ticket = {
        let (user, mallory) = (user.clone(), mallory.address());
        tokio::task::spawn_blocking(move || fund_and_request_ticket(addr, &user, &[mallory], 6))
            .await
            .unwrap()
    };
    let url = format!("http://{}/v1/chat/completions", ticket.endpoint);
    let body = serde_json::to_vec(&chat("hi", 100, false)).unwrap();
    let call = |key: &SigningKey, session: u64, body: Vec<u8>, signed_body: Option<Vec<u8>>| {
        provider_call(
            &stack.http,
            &ticket,
            network_id,
            key,
            session,
            body,
            signed_body.as_deref(),
        )
        .send()
    };
    let code = |value: serde_json::Value| value["error"]["code"].as_str().unwrap().to_string();

    // Missing headers: 401.
    let response = stack
        .http
        .post(&url)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Another user with a valid signature of their own: 403, the ticket stays usable.
    let response = call(&mallory, ticket.session_id, body.clone(), None)
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(code(response.json().await.unwrap()), "not_your_ticket");
    // A body altered after signing recovers someone else: 403 as well.
    let response = call(&user, ticket.session_id, body.clone(), Some(b"{}".to_vec()))
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // A session this provider never got a ticket for: 403.
    let response = call(&user, ticket.session_id + 1_000, body.clone(), None)
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // A bad max_tokens from the ticket's user: 400, and the ticket is not used up
    // (an outsider's typo used to burn the ticket before the 400).
    for bad in [
        serde_json::json!(-1),
        serde_json::json!("5"),
        serde_json::json!(0),
        serde_json::json!(1e30),
    ] {
        let mut request = chat("hi", 100, false);
        request["max_tokens"] = bad.clone();
        let response = call(
            &user,
            ticket.session_id,
            serde_json::to_vec(&request).unwrap(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 400, "max_tokens {bad}");
        assert_eq!(code(response.json().await.unwrap()), "invalid_max_tokens");
    }
    // Malformed JSON, signed by the ticket's user: 400, the ticket still unused.
    let response = call(&user, ticket.session_id, b"{\"model\": ".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(code(response.json().await.unwrap()), "invalid_json");
    // A body over request_bytes_max, a path or a method the node does not serve:
    // OpenAI-style JSON errors (they were plain text or empty).
    let huge = vec![b'a'; 4 * 1024 * 1024 + 1];
    let response = call(&user, ticket.session_id, huge, None).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(code(response.json().await.unwrap()), "request_too_large");
    let base = format!("http://{}", ticket.endpoint);
    let response = stack
        .http
        .get(format!("{base}/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(code(response.json().await.unwrap()), "method_not_allowed");
    let response = stack
        .http
        .get(format!("{base}/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(code(response.json().await.unwrap()), "unknown_url");
    // The ticket's user: served, max_tokens clamped to the ticket's TokenMax (6).
    let response = call(&user, ticket.session_id, body.clone(), None)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 6);
    // Replayed: 409.
    let response = call(&user, ticket.session_id, body.clone(), None)
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(code(response.json().await.unwrap()), "ticket_used");
    // A session header that is there but not ASCII: 401 naming it malformed, not
    // "missing" (what an outsider was told).
    let response = stack
        .http
        .post(&url)
        .header(
            SESSION_HEADER,
            reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        )
        .header(SIGNATURE_HEADER, "0x00")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let error = openai_error(response, 401).await;
    let message = error["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("malformed") && !message.contains("missing"),
        "{message}"
    );
    // A malformed signature header: 401.
    let response = stack
        .http
        .post(&url)
        .header(SESSION_HEADER, ticket.session_id.to_string())
        .header(SIGNATURE_HEADER, "0xzz")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(code(response.json().await.unwrap()), "bad_signature");
}

/// Concurrent completions: every RFC and report reaches the router in nonce order
/// (the router refuses a nonce not above the sender's last as a replay; the
/// consumer once signed them concurrently and lost reports at 50 requests/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_2_concurrent_completions_are_all_matched_and_reported() {
    const REQUESTS: usize = 48;
    let stack = Stack::start(Tuning {
        // The stand-in answers in about a millisecond: keep the speed gate's
        // minimum out of reach (docs/nodes.md, "The speed gate and sub-millisecond answers").
        // One consumer with 48 requests at once: above the default 16 open sessions
        // of one user (R-SESSION-1).
        market: "speed_reports_min = 1000\nuser_sessions_open_max = 64".into(),
        ..Tuning::default()
    })
    .await;
    let calls = (0..REQUESTS).map(|i| {
        let request = stack
            .http
            .post(stack.consumer_url("/v1/chat/completions"))
            .json(&chat(&format!("concurrent {i}"), 4, i % 2 == 0));
        async move { request.send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"earned\"}",
            REQUESTS as f64,
        )
        .await;
    assert_eq!(
        stack
            .consumer_metric("yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"error\"}")
            .await,
        0.0
    );
}

/// Issue 16: 410 for an expired ticket, through the real router (short
/// `session_ttl_ms`) and provider node; a user that waits past the ticket's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_1_an_expired_ticket_is_refused_with_410_and_an_openai_error() {
    use yellowstone_wire::*;
    const SESSION_TTL_MS: u64 = 1_500;
    let stack = Stack::start(Tuning {
        market: format!("session_ttl_ms = {SESSION_TTL_MS}"),
        ..Tuning::default()
    })
    .await;
    let addr = stack.router.ready.listen;
    let network_id = stack.router.ready.network_id;
    let user = SigningKey::from_seed(b"expiry-user");
    let ticket = {
        let user = user.clone();
        tokio::task::spawn_blocking(move || fund_and_request_ticket(addr, &user, &[], 6))
            .await
            .unwrap()
    };
    let now = yellowstone_tests::market::now_ms();
    assert!(
        ticket.expires_at_ms <= now + SESSION_TTL_MS,
        "the ticket lives session_ttl_ms: {ticket:?}"
    );
    // Past the expiry on the provider's clock (the same machine's), with a margin.
    tokio::time::sleep(Duration::from_millis(
        ticket.expires_at_ms.saturating_sub(now) + 200,
    ))
    .await;
    for stream in [false, true] {
        let body = serde_json::to_vec(&chat("too late", 6, stream)).unwrap();
        let response = provider_call(
            &stack.http,
            &ticket,
            network_id,
            &user,
            ticket.session_id,
            body,
            None,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 410, "stream {stream}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "ticket_expired", "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert!(error["error"]["param"].is_null(), "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&ticket.session_id.to_string())
                && message.contains(&ticket.expires_at_ms.to_string()),
            "the message names the session and its expiry: {message}"
        );
    }
    // Refused before the model server was asked: the stand-in served nothing.
    let provider_metrics = stack.metrics_text(&stack.provider).await;
    assert!(
        provider_metrics.contains("yellowstone_provider_requests_total{status=\"410\"} 2"),
        "{provider_metrics}"
    );
    assert!(
        !provider_metrics.contains("status=\"200\""),
        "{provider_metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_1_provider_and_consumer_reconnect_after_a_router_restart() {
    let mut stack = Stack::start(Tuning::default()).await;
    let request = chat("before", 4, false);
    let status = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    // Restart the router on the same port and data directory.
    let listen = stack.router.ready.listen.to_string();
    let args_dir = stack.dir.path().to_path_buf();
    // SIGKILL by its pid: a crash, not a clean stop.
    let killed = std::process::Command::new("kill")
        .args(["-9", &stack.router.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // `kill` returns once the signal is sent; the data directory stays locked
    // (router.lock) until the process is gone, so a restart must wait for that.
    assert!(stack.router.wait_for_exit(Duration::from_secs(30)));
    let restarted = yellowstone_tests::RouterProcess::start(&[
        "--listen",
        &listen,
        "--config",
        &args_dir.join("router.toml").display().to_string(),
        "--data-dir",
        &args_dir.join("data").display().to_string(),
        "--operator",
        &yellowstone_tests::market::operator_key()
            .address()
            .to_string(),
    ]);
    stack.router = restarted;
    // The provider registers again by itself.
    stack
        .provider
        .wait_line("REGISTERED", Duration::from_secs(30));
    // The consumer reconnects too; the first tries may find it reconnecting.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = stack
            .http
            .post(stack.consumer_url("/v1/chat/completions"))
            .json(&chat("after", 4, false))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break;
        }
        assert_eq!(
            response.status(),
            503,
            "reconnecting is a 503 with Retry-After"
        );
        assert!(response.headers().contains_key("retry-after"));
        assert!(
            std::time::Instant::now() < deadline,
            "no completion after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_2_router_refusals_map_to_openai_statuses() {
    let stack = Stack::start(Tuning {
        consumer: "tokens_max_limit = 5000000".into(),
        market: "tokens_max_limit = 5000000".into(),
        ..Tuning::default()
    })
    .await;
    let post = |body: serde_json::Value| {
        stack
            .http
            .post(stack.consumer_url("/v1/chat/completions"))
            .json(&body)
            .send()
    };
    // 500 MOR give 1,500,000 tokens a day (R-QUOTA-3): more is a 429 saying what is left.
    let response = post(chat("big", 1_600_000, false)).await.unwrap();
    let error = openai_error(response, 429).await;
    assert_eq!(error["error"]["code"], "insufficient_quota");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1500000 tokens left"),
        "{error}"
    );
    assert_eq!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .matches("tokens left")
            .count(),
        1,
        "the sentence is said once: {error}"
    );
    // A model of the catalog nobody offers: 503 with Retry-After.
    let response =
        post(json!({"model": "demo-model-2", "messages": [{"role": "user", "content": "x"}]}))
            .await
            .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "no_provider", "{error}");
    // Not in the catalog: 404. Not JSON: 400.
    let response = post(json!({"model": "gpt-17", "messages": []}))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Over request_bytes_max, an unknown path, a wrong method: OpenAI-style JSON
    // errors (an outsider saw plain text "Failed to buffer the request body" and
    // empty 404/405 answers an OpenAI client cannot parse).
    let response = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .body(vec![b' '; 4 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    let error = openai_error(response, 413).await;
    assert_eq!(error["error"]["code"], "request_too_large", "{error}");
    let response = stack
        .http
        .get(stack.consumer_url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    let error = openai_error(response, 405).await;
    assert_eq!(error["error"]["code"], "method_not_allowed", "{error}");
    let response = stack
        .http
        .get(stack.consumer_url("/v1/embeddings"))
        .send()
        .await
        .unwrap();
    let error = openai_error(response, 404).await;
    assert_eq!(error["error"]["code"], "unknown_url", "{error}");
    // Refused requests were never sessions: nothing was reported.
    assert_eq!(
        stack
            .consumer_metric(
                "yellowstone_consumer_reports_total{outcome=\"fail\",ack=\"reported_fail\"}"
            )
            .await,
        0.0
    );
}

/// An outsider gave a node the key file `yellowstone-router keygen` prints
/// (`secret_hex=…`, `address=…`), which yellowstone-ctl reads: the node refused it
/// ("must be 64 hex digits"). Every tool now reads the same format.
#[test]
fn r_ops_2_nodes_read_the_key_file_keygen_prints() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = yellowstone_wire::SigningKey::from_seed(b"outsider-node-key");
    let path = dir.path().join("node.key");
    std::fs::write(
        &path,
        format!(
            "secret_hex={}\naddress={}\n",
            hex::encode(key.secret_bytes()),
            key.address()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // No router needs to answer: the node prints READY with its address first.
    std::fs::write(
        dir.path().join("consumer.toml"),
        "key_file = \"node.key\"\nrouter_addr = \"127.0.0.1:9\"\n\
         listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let consumer = NodeProcess::start(CONSUMER, &["run", "--config", "consumer.toml"], dir.path());
    assert_eq!(consumer.field("address"), key.address().to_string());
}

/// An outsider left the quick start idle: every 5 minutes the consumer logged
/// "router connection ended" and reconnected, the router counting an idle close
/// (`network.conn_idle_timeout_ms`), since the nodes never sent anything on a quiet
/// connection. Both nodes now Ping after `keepalive_ms` without writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_1_idle_nodes_keep_their_router_connections() {
    let stack = Stack::start(Tuning {
        router: "[network]\nconn_idle_timeout_ms = 1500".into(),
        provider: "keepalive_ms = 300".into(),
        consumer: "keepalive_ms = 300".into(),
        ..Tuning::default()
    })
    .await;
    let idle = "yellowstone_connections_closed_total{reason=\"idle_timeout\"}";
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    assert_eq!(
        stack.router_metric(idle).await,
        0.0,
        "an idle node was closed"
    );
    // Still served on the same connections.
    let response = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&chat("still there", 4, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(stack.router_metric(idle).await, 0.0);
}

/// An outsider's application gave up on a slow non-streamed completion (a client
/// time-out): the consumer dropped the call half-way, sent no report, and the
/// session stayed open at the router. A stream the application leaves was already
/// read to its end and reported; now a non-streamed call is too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_2_an_application_that_leaves_still_gets_its_session_reported() {
    let stack = Stack::start(Tuning::default()).await;
    stack.standin_mode(json!({"delay_ms_per_token": 100})).await;
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    for stream in [false, true] {
        let result = quick
            .post(stack.consumer_url("/v1/chat/completions"))
            .json(&chat("leaving early", 8, stream))
            .send()
            .await;
        // Non-streamed: the time-out hits before the answer. Streamed: the headers
        // come first; the body is dropped unread.
        drop(result);
    }
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"earned\"}",
            2.0,
        )
        .await;
    let open = "yellowstone_market_sessions_open";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack.router_metric(open).await != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a session stayed open at the router"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An outsider opened connections to a node and sent half a request head: they
/// stayed open for ever (70 s and counting), on the provider's public listener too,
/// so a trickling client could hold every socket. Both listeners of both nodes now
/// close a connection whose head has not arrived within `header_read_timeout_ms`.
#[test]
fn r_node_1_a_trickling_client_is_closed_at_the_header_deadline() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    keygen(CONSUMER, &dir.path().join("consumer.key"));
    std::fs::write(
        dir.path().join("consumer.toml"),
        "key_file = \"consumer.key\"\nrouter_addr = \"127.0.0.1:9\"\n\
         listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         header_read_timeout_ms = 400\n",
    )
    .unwrap();
    let consumer = NodeProcess::start(CONSUMER, &["run", "--config", "consumer.toml"], dir.path());
    for listener in ["listen", "metrics"] {
        let mut socket = std::net::TcpStream::connect(consumer.addr(listener)).unwrap();
        socket
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let started = std::time::Instant::now();
        let mut buffer = [0u8; 256];
        // Closed (EOF or reset), not left waiting until the read time-out.
        match socket.read(&mut buffer) {
            Ok(_) => {}
            Err(error) => assert!(
                !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{listener}: still open after {:?}",
                started.elapsed()
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{listener}: closed only after {:?}",
            started.elapsed()
        );
    }
    // A whole request is still served (the router is unreachable here: a JSON 503).
    let mut socket = std::net::TcpStream::connect(consumer.addr("metrics")).unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Reads one whole answer from a fresh connection sending `request` to `addr`.
fn answer_to(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The refusal may come before the request is read: a write error is fine.
    let _ = socket.write_all(request);
    let mut answer = String::new();
    let _ = socket.read_to_string(&mut answer);
    answer
}

/// Nodes had no bound on open connections: a client could open sockets until the
/// node ran out of descriptors. Each listener now serves at most `connections_max`
/// at once; one more gets a 503 with `Retry-After` and an OpenAI error body, and a
/// freed slot serves again. The API and the metrics listener are bounded apart.
#[test]
fn r_node_1_connections_over_the_limit_are_answered_503_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    keygen(CONSUMER, &dir.path().join("consumer.key"));
    std::fs::write(
        dir.path().join("consumer.toml"),
        "key_file = \"consumer.key\"\nrouter_addr = \"127.0.0.1:9\"\n\
         listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         connections_max = 2\n",
    )
    .unwrap();
    let consumer = NodeProcess::start(CONSUMER, &["run", "--config", "consumer.toml"], dir.path());
    let api = consumer.addr("listen");
    let request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Two idle connections take both slots of the API listener.
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(api).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let refused = answer_to(api, request);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    let body = refused.split("\r\n\r\n").nth(1).unwrap_or_default();
    let error: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(error["error"]["code"], "too_many_connections", "{refused}");
    // The metrics listener has slots of its own.
    let metrics = answer_to(
        consumer.addr("metrics"),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    // A freed slot serves again (the router is unreachable here: not our refusal).
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = answer_to(api, request);
        if !answer.contains("too_many_connections") {
            assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slots never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `connections_max = 0` is refused at start, naming the key.
#[test]
fn r_node_1_connections_max_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    keygen(CONSUMER, &dir.path().join("consumer.key"));
    std::fs::write(
        dir.path().join("consumer.toml"),
        "key_file = \"consumer.key\"\nrouter_addr = \"127.0.0.1:9\"\nconnections_max = 0\n",
    )
    .unwrap();
    let output = std::process::Command::new(CONSUMER)
        .args(["run", "--config", "consumer.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connections_max"), "{stderr}");
}
