//! Issue 23, the consumer node's cases, through the real binaries (router, provider
//! node, consumer node, and the stand-in model server for the faults a real server
//! cannot be made to commit): token counts the consumer can verify (cases 2, 4,
//! R-NODE-4), the request-field allowlist (case 3), honest refusals with retry hints
//! (cases 5, 8, R-NODE-5), the graceful stop (case 6) and the endpoints (case 9,
//! R-NODE-6).

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const TOKENS: &str = "yellowstone_consumer_tokens_total";

fn chat(prompt: &str, max_tokens: u64, stream: bool) -> serde_json::Value {
    json!({"model": "demo-model-1", "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "stream": stream})
}

/// Every `data:` JSON event of an SSE body (not `[DONE]`).
fn sse_events(body: &str) -> Vec<serde_json::Value> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

/// Issue 23 case 2: a model server that sends one word and claims a million
/// completion tokens: the consumer reports what the text it received can hold
/// (its UTF-8 bytes, no tokenizer named), never the claim, and tells the
/// application that figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_4_a_usage_claim_beyond_the_text_received_is_cut_down() {
    let stack = Stack::start(Tuning::default()).await;
    stack
        .standin_mode(json!({"tokens": 1, "usage_claim": 1_000_000}))
        .await;
    let url = stack.consumer_url("/v1/chat/completions");
    let answer: serde_json::Value = stack
        .http
        .post(&url)
        .json(&chat("hello", 100, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    let bytes = text.len() as u64;
    assert!((2..=10).contains(&bytes), "one word: {text:?}");
    assert_eq!(answer["usage"]["completion_tokens"], bytes, "{answer}");
    stack.wait_metric(TOKENS, bytes as f64).await;
    // Streamed, with the usage the application asked for.
    let mut body = chat("hello", 100, true);
    body["stream_options"] = json!({"include_usage": true});
    let text = stack
        .http
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    let usage = events
        .iter()
        .find(|e| e["usage"].is_object())
        .unwrap_or_else(|| panic!("no usage chunk: {text}"));
    assert_eq!(usage["usage"]["completion_tokens"], bytes, "{text}");
    stack.wait_metric(TOKENS, 2.0 * bytes as f64).await;
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"earned\"}",
            2.0,
        )
        .await;
}

/// Issue 23 case 4: tokens that end inside a UTF-8 character come as chunks with
/// empty content (llama.cpp's servers): with no usage upstream, every token chunk
/// is counted (24, not the 12 chunks with text), and an application that asked for
/// `include_usage` gets a usage chunk the upstream never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_4_tokens_split_inside_characters_are_counted_and_usage_is_given() {
    let stack = Stack::start(Tuning::default()).await;
    stack
        .standin_mode(json!({"tokens": 24, "utf8_split": true, "omit_usage": true}))
        .await;
    let mut body = chat("hello", 100, true);
    body["stream_options"] = json!({"include_usage": true});
    let text = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (content, done) = sse_content(&text);
    assert!(done, "{text}");
    assert_eq!(content, "ü".repeat(12));
    let events = sse_events(&text);
    let usage: Vec<_> = events.iter().filter(|e| e["usage"].is_object()).collect();
    assert_eq!(usage.len(), 1, "one usage chunk: {text}");
    assert_eq!(usage[0]["usage"]["completion_tokens"], 24, "{text}");
    assert_eq!(usage[0]["choices"], json!([]), "{text}");
    // Issue 23 case 8: every chunk carries the catalog's name, not the upstream's.
    for event in &events {
        assert_eq!(event["model"], "demo-model-1", "{event}");
    }
    stack.wait_metric(TOKENS, 24.0).await;
}

/// Issue 23 case 3: fields that would pass the ticket's TokenMax by (`n_predict`,
/// `n: 64`, `min_tokens`, `ignore_eos`) or that no OpenAI API documents are
/// refused with a 400 naming the field, before any session is spent, by the
/// consumer and by the provider; what reaches the model server is only documented
/// fields, `max_tokens` within the ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_4_fields_outside_the_allowlist_are_refused_naming_them() {
    let stack = Stack::start(Tuning::default()).await;
    let url = stack.consumer_url("/v1/chat/completions");
    for (field, value) in [
        ("n_predict", json!(100_000)),
        ("n", json!(64)),
        ("min_tokens", json!(100_000)),
        ("ignore_eos", json!(true)),
        ("cache_prompt", json!(true)),
    ] {
        let mut body = chat("hello", 5, false);
        body[field] = value;
        let response = stack.http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.headers()["x-should-retry"], "false", "{field}");
        let error = openai_error(response, 400).await;
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{field}`")), "{field}: {error}");
    }
    assert_eq!(
        stack.standin_last_request().await,
        serde_json::Value::Null,
        "no refused request reached the model server"
    );
    let mut body = chat("hello", 5, false);
    body["temperature"] = json!(0.5);
    let response = stack.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let forwarded = stack.standin_last_request().await;
    let mut keys: Vec<&str> = forwarded
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["max_tokens", "messages", "model", "stream", "temperature"]
    );
    assert_eq!(forwarded["max_tokens"], 5);
    // The provider enforces the same allowlist for any ticket holder.
    let network_id = 1;
    let user = yellowstone_wire::SigningKey::from_seed(b"allowlist-user");
    let router = stack.router.ready.listen;
    let ticket =
        tokio::task::spawn_blocking(move || fund_and_request_ticket(router, &user, &[], 5))
            .await
            .unwrap();
    let user = yellowstone_wire::SigningKey::from_seed(b"allowlist-user");
    let mut body = chat("hello", 5, false);
    body["n_predict"] = json!(100_000);
    let body = serde_json::to_vec(&body).unwrap();
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
    let error = openai_error(response, 400).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("n_predict"),
        "{error}"
    );
}

/// Issue 23 cases 5 and 8: refusals say what is wrong and whether a retry can help.
/// `max_tokens` above the quota left names both figures with `x-should-retry:
/// false`; a request without max_tokens whose default reservation exceeds what is
/// left is served for what is left; the model server's own 400 (a prompt over the
/// context) reaches the application with `x-should-retry: false` and is reported
/// void.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_5_refusals_are_honest_and_say_when_not_to_retry() {
    let stack = Stack::start(Tuning {
        consumer: "tokens_max_limit = 5000000\ntokens_max_default = 5000000".into(),
        market: "tokens_max_limit = 5000000\npenalty_points_suspend = 1".into(),
        ..Tuning::default()
    })
    .await;
    let url = stack.consumer_url("/v1/chat/completions");
    // 500 MOR give 1,500,000 tokens a day (R-QUOTA-3).
    let response = stack
        .http
        .post(&url)
        .json(&chat("big", 1_600_000, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-should-retry"], "false");
    assert!(!response.headers().contains_key("retry-after"));
    let error = openai_error(response, 429).await;
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("max_tokens 1600000 exceeds the 1500000 tokens left today"),
        "{error}"
    );
    assert!(!message.contains("quota exceeded"), "{error}");
    // The model server refuses a prompt over its context: 400, not to be retried,
    // void (one penalty point would suspend this provider).
    stack.standin_mode(json!({"context_tokens_max": 4})).await;
    let response = stack
        .http
        .post(&url)
        .json(&chat("one two three four five six", 8, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-should-retry"], "false");
    openai_error(response, 400).await;
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"void\",ack=\"void\"}",
            1.0,
        )
        .await;
    stack.standin_mode(json!({})).await;
    // No max_tokens: the default (5,000,000 here) is more than is left today
    // (about 1,500,000): served for what is left.
    let body = json!({"model": "demo-model-1", "messages": [{"role": "user", "content": "hi"}]});
    let response = stack.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 16, "{answer}");
}

/// R-NODE-5, issue 23 Performance: the consumer's `answer_timeout_ms` bounds a
/// streamed answer as a whole, however steadily its chunks come (the deadline is
/// armed once per answer, not per chunk): the application's stream ends with an
/// error event naming the time-out, the session is reported fail and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_5_answer_timeout_bounds_a_steady_stream() {
    let stack = Stack::start(Tuning {
        consumer: "answer_timeout_ms = 1500".into(),
        ..Tuning::default()
    })
    .await;
    // 100 tokens, one every 100 ms: chunks keep coming for 10 s.
    stack
        .standin_mode(json!({"tokens": 100, "delay_ms_per_token": 100}))
        .await;
    let started = std::time::Instant::now();
    let response = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&chat("a long answer", 100, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let elapsed = started.elapsed();
    // Chunks arrived before the deadline, and the stream stopped at it.
    assert!(body.matches("\"content\"").count() >= 5, "{body}");
    assert!(!body.contains("[DONE]"), "{body}");
    assert!(body.contains("provider_stream_failed"), "{body}");
    assert!(body.contains("timed out"), "{body}");
    assert!(
        elapsed >= Duration::from_millis(1_400) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    stack
        .wait_metric(
            "yellowstone_consumer_requests_total{outcome=\"timeout\"}",
            1.0,
        )
        .await;
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"fail\",ack=\"reported_fail\"}",
            1.0,
        )
        .await;
    assert_eq!(stack.router_metric("yellowstone_sessions_open").await, 0.0);
}

/// Issue 23 case 6: SIGTERM to the consumer mid-stream: it stops within its
/// bound (`stop_grace_ms` + `report_timeout_ms`), and the session is reported (the
/// router's open sessions drop to 0 at once, not at the session's TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_5_sigterm_mid_stream_reports_what_was_received() {
    let mut stack = Stack::start(Tuning {
        consumer: "stop_grace_ms = 300".into(),
        ..Tuning::default()
    })
    .await;
    stack
        .standin_mode(json!({"tokens": 200, "delay_ms_per_token": 100}))
        .await;
    let mut response = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&chat("a long answer", 200, true))
        .send()
        .await
        .unwrap();
    // Some tokens arrive.
    let mut received = String::new();
    while received.matches("\"content\"").count() < 4 {
        let chunk = response.chunk().await.unwrap().expect("stream open");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(stack.router_metric("yellowstone_sessions_open").await, 1.0);
    let consumer = &mut stack.consumer;
    let exited = tokio::task::block_in_place(|| consumer.terminate(Duration::from_secs(15)));
    assert!(exited, "the consumer did not exit within its bound");
    // The application's stream ended with an error event, not silently.
    let rest = response.text().await.unwrap_or_default();
    assert!(rest.contains("stopping"), "{rest}");
    // Reported before the exit: the session is closed now.
    assert_eq!(stack.router_metric("yellowstone_sessions_open").await, 0.0);
}

/// Issue 23 case 9, R-NODE-6: `/v1/completions` (plain and streamed) and
/// `GET /v1/models/{id}` in OpenAI's shapes, through the market.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_6_completions_and_model_retrieve_are_served() {
    let stack = Stack::start(Tuning::default()).await;
    let url = stack.consumer_url("/v1/completions");
    let body = json!({"model": "demo-model-1", "prompt": "once upon", "max_tokens": 5});
    let answer: serde_json::Value = stack
        .http
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["object"], "text_completion", "{answer}");
    assert_eq!(answer["model"], "demo-model-1", "{answer}");
    let text = answer["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 5, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 5, "{answer}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let sse = stack
        .http
        .post(&url)
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(sse.ends_with("data: [DONE]\n\n"), "{sse}");
    let pieces: String = sse_events(&sse)
        .iter()
        .map(|e| {
            assert_eq!(e["model"], "demo-model-1", "{e}");
            e["choices"][0]["text"].as_str().unwrap_or("").to_string()
        })
        .collect();
    assert_eq!(pieces, text, "the same prompt, the same words");
    stack
        .wait_metric(
            "yellowstone_consumer_reports_total{outcome=\"pass\",ack=\"earned\"}",
            2.0,
        )
        .await;
    // A chat body on /v1/completions names what is missing.
    let response = stack
        .http
        .post(&url)
        .json(&chat("x", 5, false))
        .send()
        .await
        .unwrap();
    let error = openai_error(response, 400).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages"),
        "{error}"
    );
    // client.models.retrieve
    let model: serde_json::Value = stack
        .http
        .get(stack.consumer_url("/v1/models/demo-model-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(model["id"], "demo-model-1");
    assert_eq!(model["object"], "model");
    assert!(model["offers_live"].as_u64().unwrap() > 0, "{model}");
    let response = stack
        .http
        .get(stack.consumer_url("/v1/models/no-such/model"))
        .send()
        .await
        .unwrap();
    let error = openai_error(response, 404).await;
    assert_eq!(error["error"]["code"], "model_not_found", "{error}");
    // The provider node serves the same endpoint for its own models.
    let provider = |path: &str| format!("http://{}{path}", stack.provider.field("listen"));
    let model: serde_json::Value = stack
        .http
        .get(provider("/v1/models/standin"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(model["id"], "standin", "{model}");
    let response = stack
        .http
        .get(provider("/v1/models/other"))
        .send()
        .await
        .unwrap();
    openai_error(response, 404).await;
}

/// Issue 23 case 9: `yellowstone-router print-config` documents `[[market.models]]`
/// (every key) and, with `models = []`, the demo catalog it serves.
#[test]
fn the_router_print_config_documents_the_models_table() {
    let output = std::process::Command::new(yellowstone_tests::router_binary())
        .arg("print-config")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "# [[market.models]]",
        "weights_hash = \"HEX\"",
        "# name = \"demo-model-1\"",
        "# id = 4",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
}

/// A word-level `tokenizer.json` over the stand-in's 16 words (whitespace split).
fn word_tokenizer() -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), json!(0));
    for (i, word) in [
        "amber", "basalt", "cedar", "delta", "ember", "fjord", "geyser", "harbor", "iris",
        "juniper", "kestrel", "lagoon", "meadow", "nimbus", "obsidian", "prairie",
    ]
    .iter()
    .enumerate()
    {
        vocab.insert((*word).into(), json!(i + 1));
    }
    json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}})
    .to_string()
}

/// R-NODE-4 with the operator's tokenizer: the count is the tokenizer's (one per
/// word here), pinned by the file's BLAKE3 and listed in `GET /v1/models`; a file
/// that is not the pinned one stops the node at start, naming both hashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_node_4_the_named_tokenizer_counts_and_is_pinned_by_its_hash() {
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("tokenizer.json");
    let json = word_tokenizer();
    std::fs::write(&path, &json).unwrap();
    let hash = blake3::hash(json.as_bytes()).to_hex().to_string();
    let stack = Stack::start(Tuning {
        consumer: format!(
            "[[tokenizers]]\nmodel = \"demo-model-1\"\nfile = \"{}\"\nblake3 = \"{hash}\"\n",
            path.display()
        ),
        ..Tuning::default()
    })
    .await;
    stack
        .standin_mode(json!({"tokens": 5, "usage_claim": 1_000_000}))
        .await;
    let answer: serde_json::Value = stack
        .http
        .post(stack.consumer_url("/v1/chat/completions"))
        .json(&chat("hello", 100, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Five words (about 30 bytes): the tokenizer says 5, the byte bound ~30.
    assert_eq!(answer["usage"]["completion_tokens"], 5, "{answer}");
    stack.wait_metric(TOKENS, 5.0).await;
    let model: serde_json::Value = stack
        .http
        .get(stack.consumer_url("/v1/models/demo-model-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(model["tokenizer_blake3"], hash.as_str());
    // Another file under the same pin: refused at start.
    std::fs::write(&path, json.replace("amber", "umber")).unwrap();
    let config = files.path().join("consumer.toml");
    std::fs::write(
        &config,
        format!(
            "key_file = \"{}\"\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"\"\n\
             [[tokenizers]]\nmodel = \"demo-model-1\"\nfile = \"{}\"\nblake3 = \"{hash}\"\n",
            stack.dir.path().join("consumer.key").display(),
            path.display()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(CONSUMER)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&hash) && stderr.contains("BLAKE3"),
        "{stderr}"
    );
}
