//! `yellowstone-standin-llm`: a TEST STAND-IN for a model server, not a model. It
//! speaks the OpenAI chat completions API (`POST /v1/chat/completions`, streamed
//! token by token with server-sent events or not, and `GET /v1/models`) and answers
//! deterministically: the completion's words depend only on the prompt, one word
//! per token, and `usage` is exact (`prompt_tokens`: words of the messages'
//! contents; `completion_tokens`: words sent). With
//! `stream_options.include_usage` a stream ends with a usage chunk, as OpenAI's does.
//!
//! Switches (flags at start, or `POST /standin/mode` with some of the same JSON fields
//! at run time, for tests: the switches the body names change, the others stay as they
//! are; `POST /standin/reset` puts every switch back to its start value): `delay_ms_per_token` (slow), `fail` (HTTP 500 for every
//! completion), `cut_after_tokens` (a stream stops after that many tokens without
//! its end; a plain answer is cut mid-body), `tokens` (completion length when
//! `max_tokens` allows), `context_tokens_max` (a prompt of more words is refused with
//! HTTP 400 `context_length_exceeded`, as a real server refuses a prompt over its
//! context; 0: no limit). For the consumer's counting (R-NODE-4): `usage_claim`
//! (the usage states that many completion tokens, whatever was sent; 0: exact),
//! `omit_usage` (no usage at all, as some servers), `utf8_split` (every word is
//! `ü`, sent as two token chunks: an empty one, as llama.cpp's servers send a token
//! that ends inside a character, then `ü`). For the provider's health checks
//! (R-PROV-4): `single_threaded` (one request at a time, `GET /v1/models` included,
//! as llama-cpp-python serves: a long completion blocks the health endpoint until it
//! is done). `POST /v1/completions` answers the same
//! way with `text` choices; `GET /standin/last_request` returns the last request
//! body (what reached the model server).

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the stand-in behaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Mode {
    /// Milliseconds before each token.
    #[arg(long, default_value_t = 0)]
    pub delay_ms_per_token: u64,
    /// Answer every completion with HTTP 500.
    #[arg(long)]
    pub fail: bool,
    /// Stop a stream after this many tokens without finishing it (0: never).
    #[arg(long, default_value_t = 0)]
    pub cut_after_tokens: u64,
    /// Completion length in tokens when max_tokens allows.
    #[arg(long, default_value_t = 16)]
    pub tokens: u64,
    /// Refuse a prompt of more words with HTTP 400 `context_length_exceeded`
    /// (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub context_tokens_max: u64,
    /// The usage claims this many completion tokens (0: the tokens sent).
    #[arg(long, default_value_t = 0)]
    pub usage_claim: u64,
    /// Send no usage, even when asked.
    #[arg(long)]
    pub omit_usage: bool,
    /// Each word is `ü`, streamed as two token chunks (`""` then `ü`).
    #[arg(long)]
    pub utf8_split: bool,
    /// Serve one request at a time (completions and `GET /v1/models`), as a
    /// single-threaded server does: a request waits until the one before is done.
    #[arg(long)]
    pub single_threaded: bool,
}

impl Default for Mode {
    fn default() -> Self {
        Mode {
            delay_ms_per_token: 0,
            fail: false,
            cut_after_tokens: 0,
            tokens: 16,
            context_tokens_max: 0,
            usage_claim: 0,
            omit_usage: false,
            utf8_split: false,
            single_threaded: false,
        }
    }
}

/// Words a completion is made of.
const WORDS: [&str; 16] = [
    "amber", "basalt", "cedar", "delta", "ember", "fjord", "geyser", "harbor", "iris", "juniper",
    "kestrel", "lagoon", "meadow", "nimbus", "obsidian", "prairie",
];

/// Upper bound of a completion, whatever is asked.
pub const TOKENS_MAX: u64 = 100_000;

/// The deterministic completion of `prompt`, `tokens` words, each followed by a space.
pub fn completion_words(prompt: &str, tokens: u64) -> Vec<String> {
    let seed = blake3::hash(prompt.as_bytes());
    let mut reader = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
    (0..tokens)
        .map(|_| {
            let mut byte = [0u8; 1];
            reader.fill(&mut byte);
            format!("{} ", WORDS[byte[0] as usize % WORDS.len()])
        })
        .collect()
}

fn prompt_of(request: &Value) -> String {
    if let Some(prompt) = request.get("prompt").and_then(Value::as_str) {
        return prompt.to_string();
    }
    request
        .get("messages")
        .and_then(Value::as_array)
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The mode, the requests served, and the last request body; and the one worker of
/// `single_threaded` (held while a request is served).
#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<(Mode, u64, Value)>>,
    worker: Arc<tokio::sync::Mutex<()>>,
    /// The switches as started (the command line), for `POST /standin/reset`.
    start: Arc<Mode>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Mode, u64, Value)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// With `single_threaded`, waits for the worker and holds it while the guard
    /// lives; else nothing.
    async fn worker(&self, mode: &Mode) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        if mode.single_threaded {
            Some(self.worker.clone().lock_owned().await)
        } else {
            None
        }
    }
}

pub fn router(mode: Mode) -> Router {
    let shared = Shared {
        start: Arc::new(mode.clone()),
        state: Arc::new(Mutex::new((mode, 0, Value::Null))),
        worker: Arc::new(tokio::sync::Mutex::new(())),
    };
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(text_completions))
        .route("/v1/models", get(models))
        .route("/standin/mode", post(set_mode))
        .route("/standin/reset", post(reset_mode))
        .route("/standin/last_request", get(last_request))
        .with_state(shared)
}

async fn last_request(State(shared): State<Shared>) -> Json<Value> {
    Json(shared.lock().2.clone())
}

async fn chat_completions(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    completions(shared, body, false).await
}

async fn text_completions(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    completions(shared, body, true).await
}

/// Outsider review 3 finding 15: changes the switches the body names and keeps the
/// others as they are (the command line's values, or an earlier call's). A body that
/// is not an object of known switches with values of their type: 400 naming it.
async fn set_mode(
    State(shared): State<Shared>,
    Json(changes): Json<serde_json::Map<String, Value>>,
) -> Result<Json<Mode>, (StatusCode, String)> {
    let mut state = shared.lock();
    let mut merged = match serde_json::to_value(&state.0) {
        Ok(Value::Object(current)) => current,
        _ => serde_json::Map::new(),
    };
    merged.extend(changes);
    let mode: Mode = serde_json::from_value(Value::Object(merged))
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("standin mode: {e}")))?;
    state.0 = mode.clone();
    Ok(Json(mode))
}

/// Puts every switch back to its start value (the command line's).
async fn reset_mode(State(shared): State<Shared>) -> Json<Mode> {
    let start = (*shared.start).clone();
    shared.lock().0 = start.clone();
    Json(start)
}

async fn models(State(shared): State<Shared>) -> Json<Value> {
    let mode = shared.lock().0.clone();
    let _worker = shared.worker(&mode).await;
    Json(
        json!({"object": "list", "data": [{"id": "standin", "object": "model", "created": 0, "owned_by": "yellowstone-standin"}]}),
    )
}

/// A streamed chunk: a chat `delta`, or for text completions its `content` as
/// `text`.
fn chunk(id: &str, model: &str, delta: Value, finish: Option<&str>, text: bool) -> String {
    let body = if text {
        let piece = delta.get("content").cloned().unwrap_or(Value::from(""));
        json!({"id": id, "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": piece, "finish_reason": finish}]})
    } else {
        json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    format!("data: {body}\n\n")
}

async fn completions(shared: Shared, body: axum::body::Bytes, text: bool) -> Response {
    let (mode, serial) = {
        let mut guard = shared.lock();
        guard.1 += 1;
        guard.2 = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (guard.0.clone(), guard.1)
    };
    // Held until the answer is wholly sent (a stream's task takes it along).
    let worker = shared.worker(&mode).await;
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": format!("bad JSON: {e}"), "type": "invalid_request_error", "code": null, "param": null}})),
            )
                .into_response()
        }
    };
    if mode.fail {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "stand-in told to fail", "type": "server_error", "code": "standin_fail", "param": null}})),
        )
            .into_response();
    }
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("standin")
        .to_string();
    let max_tokens = request
        .get("max_tokens")
        .or_else(|| request.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX);
    let tokens = mode.tokens.min(max_tokens).min(TOKENS_MAX);
    let finish = if tokens < mode.tokens {
        "length"
    } else {
        "stop"
    };
    let prompt = prompt_of(&request);
    let prompt_tokens = prompt.split_whitespace().count() as u64;
    if mode.context_tokens_max > 0 && prompt_tokens > mode.context_tokens_max {
        // The request's own fault (R-NODE-5): what OpenAI-compatible servers answer.
        let message = format!(
            "This model's maximum context length is {} tokens; your messages have {prompt_tokens}",
            mode.context_tokens_max
        );
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": message, "type": "invalid_request_error", "code": "context_length_exceeded", "param": "messages"}})),
        )
            .into_response();
    }
    let words = if mode.utf8_split {
        // Two tokens per `ü`: the first ends inside the character.
        (0..tokens)
            .map(|i| {
                if i % 2 == 0 {
                    String::new()
                } else {
                    "ü".to_string()
                }
            })
            .collect()
    } else {
        completion_words(&prompt, tokens)
    };
    let id = format!("chatcmpl-standin-{serial}");
    let claimed = if mode.usage_claim > 0 {
        mode.usage_claim
    } else {
        tokens
    };
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": claimed, "total_tokens": prompt_tokens + claimed});
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let delay = Duration::from_millis(mode.delay_ms_per_token);
    if !stream {
        if !delay.is_zero() {
            tokio::time::sleep(delay * tokens as u32).await;
        }
        let mut answer = if text {
            json!({"id": id, "object": "text_completion", "created": 0, "model": model,
                "choices": [{"index": 0, "text": words.concat(), "finish_reason": finish}],
                "usage": usage})
        } else {
            json!({"id": id, "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()}, "finish_reason": finish}],
                "usage": usage})
        };
        if mode.omit_usage {
            answer.as_object_mut().map(|a| a.remove("usage"));
        }
        let bytes = serde_json::to_vec(&answer).expect("JSON");
        if mode.cut_after_tokens > 0 {
            // Promise the whole body, send half: the client sees a cut answer.
            let half = bytes[..bytes.len() / 2].to_vec();
            let stream = futures_util::stream::iter([
                Ok::<_, std::io::Error>(half),
                Err(std::io::Error::other("stand-in cut the answer")),
            ]);
            return Response::builder()
                .header("content-type", "application/json")
                .header("content-length", bytes.len())
                .body(Body::from_stream(stream))
                .expect("response");
        }
        return (StatusCode::OK, Json(answer)).into_response();
    }
    let include_usage = !mode.omit_usage
        && request
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        let _worker = worker;
        let send = |text: String| sender.send(Ok(text));
        if !text
            && send(chunk(
                &id,
                &model,
                json!({"role": "assistant", "content": ""}),
                None,
                false,
            ))
            .await
            .is_err()
        {
            return;
        }
        for (i, word) in words.iter().enumerate() {
            if mode.cut_after_tokens > 0 && i as u64 >= mode.cut_after_tokens {
                // Let what was sent leave before the connection is torn down.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = sender
                    .send(Err(std::io::Error::other("stand-in cut the stream")))
                    .await;
                return;
            }
            if !delay.is_zero() {
                // (A zero sleep still waits for the timer's next millisecond tick.)
                tokio::time::sleep(delay).await;
            }
            if send(chunk(&id, &model, json!({"content": word}), None, text))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = send(chunk(&id, &model, json!({}), Some(finish), text)).await;
        if include_usage {
            let object = if text {
                "text_completion"
            } else {
                "chat.completion.chunk"
            };
            let body = json!({"id": id, "object": object, "created": 0, "model": model, "choices": [], "usage": usage});
            let _ = send(format!("data: {body}\n\n")).await;
        }
        let _ = send("data: [DONE]\n\n".to_string()).await;
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .expect("response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_are_deterministic_per_prompt() {
        assert_eq!(completion_words("hi", 5), completion_words("hi", 5));
        assert_ne!(completion_words("hi", 8), completion_words("ho", 8));
        assert_eq!(completion_words("hi", 3).len(), 3);
        assert_eq!(
            completion_words("hi", 3)[..],
            completion_words("hi", 5)[..3]
        );
    }
}
