//! The OpenAI API as both nodes speak it: error bodies
//! (`{"error": {"message", "type", "code", "param"}}`) with the right HTTP status,
//! the two text endpoints ([`Endpoint`]: chat completions and completions), and the
//! request fields the nodes read or rewrite (`model`, `stream`, `max_tokens` /
//! `max_completion_tokens`, `stream_options.include_usage`). R-NODE-4: only OpenAI's
//! documented fields pass ([`ChatRequest::check_fields`]), each bounded; any other
//! field (`n_predict`, `min_tokens`, `ignore_eos`…: a server-specific knob that could
//! set an output length past the ticket's TokenMax) is a 400 naming it.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// An OpenAI-style error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI `type`: invalid_request_error, authentication_error, permission_error,
    /// rate_limit_error, server_error…
    pub kind: &'static str,
    /// Stable machine-readable code, e.g. `ticket_used`.
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After`.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code, "param": null}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert("retry-after", value);
            }
        }
        if let Some(retry) = should_retry(self.status, self.retry_after_s.is_some()) {
            response
                .headers_mut()
                .insert(SHOULD_RETRY_HEADER, HeaderValue::from_static(retry));
        }
        response
    }
}

/// The retry hint OpenAI's own clients obey (the `openai` packages retry 408, 409,
/// 429 and 5xx unless it says `false`).
pub const SHOULD_RETRY_HEADER: &str = "x-should-retry";

/// Issue 23 case 8, outsider review 3 finding 13: the `x-should-retry` value for an
/// error of `status`, on every error the nodes send: `"true"` when it carries a
/// `Retry-After` (waiting can help: no provider now, overloaded, too many open
/// sessions) and for every 5xx (a server-side fault: another try gets another
/// ticket, maybe another provider), `"false"` for any other 4xx (the same request
/// cannot succeed: a bad field, no quota left today, max_tokens above what is
/// left). None for a success (not an error).
pub fn should_retry(status: StatusCode, retry_after: bool) -> Option<&'static str> {
    if retry_after || status.is_server_error() {
        Some("true")
    } else if status.is_client_error() {
        Some("false")
    } else {
        None
    }
}

/// Outsider review 3 finding 13: the layer both nodes' HTTP routers run every answer
/// through, so that every error response carries `x-should-retry` by
/// [`should_retry`]'s rule whichever path made it (an `ApiError`, a model server's
/// refusal relayed as it is, a fallback): a response that already has the header
/// keeps it.
pub async fn retry_hints(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    if !response.headers().contains_key(SHOULD_RETRY_HEADER) {
        let has_retry_after = response.headers().contains_key("retry-after");
        if let Some(retry) = should_retry(response.status(), has_retry_after) {
            response
                .headers_mut()
                .insert(SHOULD_RETRY_HEADER, HeaderValue::from_static(retry));
        }
    }
    response
}

/// The request body as both nodes read it: a body over `request_bytes_max` (or one
/// that cannot be read) is an OpenAI-style error, 413 `request_too_large`, never a
/// plain-text answer an OpenAI client cannot parse.
pub fn body_or_error(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    request_bytes_max: u64,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "invalid_request_error",
                "request_too_large",
                format!("the request body exceeds request_bytes_max ({request_bytes_max} bytes)"),
            )
        } else {
            ApiError::new(
                status,
                "invalid_request_error",
                "invalid_body",
                format!(
                    "the request body could not be read: {}",
                    rejection.body_text()
                ),
            )
        }
    })
}

/// What the nodes serve (R-NODE-6), for the 404 and 405 messages.
const SERVED: &str = "POST /v1/chat/completions, POST /v1/completions, GET /v1/models \
                      and GET /v1/models/{id}";

/// Both nodes' answer to a path they do not serve: 404 `unknown_url`, OpenAI-style.
pub async fn unknown_url(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        format!("unknown url {}: this node serves {SERVED}", uri.path()),
    )
}

/// Both nodes' answer to a served path with the wrong method: 405
/// `method_not_allowed`, OpenAI-style.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!(
            "{method} is not served at {}: this node serves {SERVED}",
            uri.path()
        ),
    )
}

/// The two OpenAI text endpoints the nodes serve (R-NODE-6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`: `messages` in, `choices[].message.content` /
    /// `choices[].delta.content` out.
    Chat,
    /// `POST /v1/completions` (legacy text completions): `prompt` in,
    /// `choices[].text` out, streamed or not.
    Completions,
}

impl Endpoint {
    /// The path below an OpenAI base URL (`…/v1`), e.g. `/chat/completions`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
        }
    }

    /// The `object` of a whole answer (`chat.completion`, `text_completion`).
    pub fn object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions => "text_completion",
        }
    }
}

/// Largest `stop` entry, `user` string and `suffix` (bytes); most `stop` entries;
/// most `logit_bias` entries: OpenAI's own documented limits (4 stops, 300 biases),
/// the string bounds ours (R-NODE-4: every field bounded).
pub const STOP_ENTRIES_MAX: usize = 4;
pub const STRING_FIELD_BYTES_MAX: usize = 1024;
pub const LOGIT_BIAS_ENTRIES_MAX: usize = 300;

/// How one allowed field is checked.
#[derive(Clone, Copy)]
enum FieldRule {
    /// Any JSON of that field's documented shape; its size is bounded by the
    /// request's byte limit (`messages`, `tools`, `response_format`…).
    Sized,
    /// A model name (string, bounded).
    Text,
    Bool,
    /// `false` only: `echo: true` would return the prompt as completion text (paid
    /// for as output).
    FalseOnly,
    /// A number in [min, max].
    Number(f64, f64),
    /// An integer in [min, max].
    Integer(i64, i64),
    /// Absent, null or 1: one output per ticket (`n`, `best_of`).
    One,
    /// A positive integer (`max_tokens`, `max_completion_tokens`): the TokenMax
    /// bound is applied by the caller, which knows it.
    Tokens,
    Stop,
    LogitBias,
    StreamOptions,
    /// A completion's `prompt`: a string, or an array of exactly one string.
    Prompt,
}

/// R-NODE-4: OpenAI's documented request fields for text, per endpoint, and their
/// bounds. Nothing else is forwarded.
const CHAT_FIELDS: &[(&str, FieldRule)] = &[
    ("model", FieldRule::Text),
    ("messages", FieldRule::Sized),
    ("max_tokens", FieldRule::Tokens),
    ("max_completion_tokens", FieldRule::Tokens),
    ("n", FieldRule::One),
    ("stream", FieldRule::Bool),
    ("stream_options", FieldRule::StreamOptions),
    ("temperature", FieldRule::Number(0.0, 2.0)),
    ("top_p", FieldRule::Number(0.0, 1.0)),
    ("frequency_penalty", FieldRule::Number(-2.0, 2.0)),
    ("presence_penalty", FieldRule::Number(-2.0, 2.0)),
    ("stop", FieldRule::Stop),
    ("seed", FieldRule::Integer(i64::MIN, i64::MAX)),
    ("logit_bias", FieldRule::LogitBias),
    ("logprobs", FieldRule::Bool),
    ("top_logprobs", FieldRule::Integer(0, 20)),
    ("user", FieldRule::Text),
    ("response_format", FieldRule::Sized),
    ("tools", FieldRule::Sized),
    ("tool_choice", FieldRule::Sized),
    ("parallel_tool_calls", FieldRule::Bool),
];

const COMPLETION_FIELDS: &[(&str, FieldRule)] = &[
    ("model", FieldRule::Text),
    ("prompt", FieldRule::Prompt),
    ("max_tokens", FieldRule::Tokens),
    ("n", FieldRule::One),
    ("best_of", FieldRule::One),
    ("echo", FieldRule::FalseOnly),
    ("stream", FieldRule::Bool),
    ("stream_options", FieldRule::StreamOptions),
    ("temperature", FieldRule::Number(0.0, 2.0)),
    ("top_p", FieldRule::Number(0.0, 1.0)),
    ("frequency_penalty", FieldRule::Number(-2.0, 2.0)),
    ("presence_penalty", FieldRule::Number(-2.0, 2.0)),
    ("stop", FieldRule::Stop),
    ("seed", FieldRule::Integer(i64::MIN, i64::MAX)),
    ("logit_bias", FieldRule::LogitBias),
    ("logprobs", FieldRule::Integer(0, 5)),
    ("suffix", FieldRule::Text),
    ("user", FieldRule::Text),
];

/// Fields model servers read that set an output length or count outside
/// `max_tokens` (llama.cpp, vLLM, TGI, Ollama): named apart in the refusal.
const OUTPUT_LENGTH_FIELDS: &[&str] = &[
    "n_predict",
    "min_tokens",
    "ignore_eos",
    "max_new_tokens",
    "num_predict",
    "min_new_tokens",
    "n_probs",
];

fn field_error(field: &str, message: String) -> ApiError {
    ApiError::bad_request("invalid_field", format!("`{field}`: {message}"))
}

fn check_string(field: &str, value: &Value) -> Result<(), ApiError> {
    match value.as_str() {
        Some(s) if s.len() <= STRING_FIELD_BYTES_MAX => Ok(()),
        Some(s) => Err(field_error(
            field,
            format!(
                "{} bytes, at most {STRING_FIELD_BYTES_MAX} allowed",
                s.len()
            ),
        )),
        None => Err(field_error(field, "must be a string".into())),
    }
}

fn check_field(field: &str, rule: FieldRule, value: &Value) -> Result<(), ApiError> {
    if value.is_null() && !matches!(rule, FieldRule::Sized) {
        // JSON null is "not given" in OpenAI's API (the openai package omits
        // unset fields, others send null).
        return Ok(());
    }
    match rule {
        FieldRule::Sized => Ok(()),
        FieldRule::Text => check_string(field, value),
        FieldRule::Bool => value
            .as_bool()
            .map(drop)
            .ok_or_else(|| field_error(field, "must be true or false".into())),
        FieldRule::FalseOnly => match value.as_bool() {
            Some(false) => Ok(()),
            _ => Err(field_error(
                field,
                format!("{value} is not served: only false (the prompt is not returned as output)"),
            )),
        },
        FieldRule::Number(min, max) => match value.as_f64() {
            Some(v) if (min..=max).contains(&v) => Ok(()),
            _ => Err(field_error(
                field,
                format!("{value} is not a number in [{min}, {max}]"),
            )),
        },
        FieldRule::Integer(min, max) => match value.as_i64() {
            Some(v) if (min..=max).contains(&v) => Ok(()),
            _ => Err(field_error(
                field,
                format!("{value} is not an integer in [{min}, {max}]"),
            )),
        },
        FieldRule::One => match value.as_u64() {
            Some(1) => Ok(()),
            _ => Err(field_error(
                field,
                format!("{value} is not served: one output per request (1), as a ticket's TokenMax covers one"),
            )),
        },
        FieldRule::Tokens => match value.as_u64() {
            Some(v) if v > 0 => Ok(()),
            _ => Err(ApiError::bad_request(
                "invalid_max_tokens",
                format!("`{field}` must be a positive integer, not {value}"),
            )),
        },
        FieldRule::Stop => match value {
            Value::String(_) => check_string(field, value),
            Value::Array(stops) if stops.len() <= STOP_ENTRIES_MAX => {
                stops.iter().try_for_each(|s| check_string(field, s))
            }
            Value::Array(stops) => Err(field_error(
                field,
                format!("{} entries, at most {STOP_ENTRIES_MAX}", stops.len()),
            )),
            _ => Err(field_error(field, "must be a string or an array of strings".into())),
        },
        FieldRule::LogitBias => match value {
            Value::Object(biases) if biases.len() <= LOGIT_BIAS_ENTRIES_MAX => {
                for (token, bias) in biases {
                    if token.parse::<u32>().is_err()
                        || !bias.as_f64().is_some_and(|b| (-100.0..=100.0).contains(&b))
                    {
                        return Err(field_error(
                            field,
                            format!("{token:?}: {bias}: a token id with a bias in [-100, 100]"),
                        ));
                    }
                }
                Ok(())
            }
            Value::Object(biases) => Err(field_error(
                field,
                format!("{} entries, at most {LOGIT_BIAS_ENTRIES_MAX}", biases.len()),
            )),
            _ => Err(field_error(field, "must be an object".into())),
        },
        FieldRule::StreamOptions => match value {
            Value::Object(options) => {
                for (key, option) in options {
                    if key != "include_usage" {
                        return Err(field_error(
                            field,
                            format!("option `{key}` is not served (only include_usage)"),
                        ));
                    }
                    check_field("stream_options.include_usage", FieldRule::Bool, option)?;
                }
                Ok(())
            }
            _ => Err(field_error(field, "must be an object".into())),
        },
        FieldRule::Prompt => match value {
            Value::String(_) => Ok(()),
            Value::Array(prompts) if prompts.len() == 1 && prompts[0].is_string() => Ok(()),
            _ => Err(field_error(
                field,
                "must be a string (or an array of one string): one completion per request".into(),
            )),
        },
    }
}

/// A chat completion request, parsed only as far as the nodes need.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub fields: Map<String, Value>,
}

impl ChatRequest {
    /// Parses a JSON object body (400 for anything else).
    pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("body is not JSON: {e}")))?;
        match value {
            Value::Object(fields) => Ok(ChatRequest { fields }),
            _ => Err(ApiError::bad_request(
                "invalid_json",
                "body must be a JSON object",
            )),
        }
    }

    /// R-NODE-4: refuses any field `endpoint` does not document, and any value
    /// out of its bound (`n` other than 1, `echo: true`, more than 4 `stop`s…),
    /// with a 400 `invalid_field` naming the field and the bound; requires
    /// `messages` (chat) or `prompt` (completions). `max_tokens` against TokenMax
    /// is the caller's ([`ChatRequest::clamp_max_tokens`]).
    pub fn check_fields(&self, endpoint: Endpoint) -> Result<(), ApiError> {
        let (allowed, required) = match endpoint {
            Endpoint::Chat => (CHAT_FIELDS, "messages"),
            Endpoint::Completions => (COMPLETION_FIELDS, "prompt"),
        };
        for (field, value) in &self.fields {
            let Some((_, rule)) = allowed.iter().find(|(name, _)| name == field) else {
                let why = if OUTPUT_LENGTH_FIELDS.contains(&field.as_str()) {
                    "it sets an output length outside max_tokens, which the ticket's \
                     TokenMax bounds"
                } else {
                    "only OpenAI's documented fields are forwarded"
                };
                return Err(ApiError::bad_request(
                    "unsupported_field",
                    format!(
                        "field `{}` is not accepted on {}: {why}",
                        truncate(field, 64),
                        endpoint.path()
                    ),
                ));
            };
            check_field(field, *rule, value)?;
        }
        if self.fields.get(required).is_none_or(Value::is_null) {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("`{required}` is required on {}", endpoint.path()),
            ));
        }
        Ok(())
    }

    pub fn model(&self) -> Result<&str, ApiError> {
        self.fields
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("missing_model", "`model` (a string) is required"))
    }

    pub fn set_model(&mut self, model: &str) {
        self.fields.insert("model".into(), Value::from(model));
    }

    pub fn stream(&self) -> bool {
        self.fields
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.fields
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Streams carry usage in their last chunk only when asked.
    pub fn ask_usage_in_stream(&mut self) {
        if self.stream() {
            let options = self
                .fields
                .entry("stream_options")
                .or_insert_with(|| json!({}));
            if let Value::Object(options) = options {
                options.insert("include_usage".into(), Value::Bool(true));
            }
        }
    }

    /// The completion tokens asked for: `max_completion_tokens`, else `max_tokens`.
    pub fn max_tokens(&self) -> Result<Option<u64>, ApiError> {
        for key in ["max_completion_tokens", "max_tokens"] {
            match self.fields.get(key) {
                None | Some(Value::Null) => continue,
                Some(value) => {
                    return value.as_u64().filter(|&v| v > 0).map(Some).ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_max_tokens",
                            format!("`{key}` must be a positive integer"),
                        )
                    })
                }
            }
        }
        Ok(None)
    }

    /// R-NODE-1: clamps the completion tokens to `tokens_max` (sets it when absent),
    /// in both field spellings so any server honours it. Returns the value sent.
    pub fn clamp_max_tokens(&mut self, tokens_max: u64) -> Result<u64, ApiError> {
        let tokens = self.max_tokens()?.unwrap_or(tokens_max).min(tokens_max);
        self.fields.remove("max_completion_tokens");
        self.fields.insert("max_tokens".into(), Value::from(tokens));
        Ok(tokens)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.fields).expect("a JSON map serializes")
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), for messages that
/// quote a client's input.
pub fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Usage as OpenAI reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn from_value(value: &Value) -> Option<Usage> {
        let usage = value.get("usage")?;
        Some(Usage {
            prompt_tokens: usage.get("prompt_tokens")?.as_u64()?,
            completion_tokens: usage.get("completion_tokens")?.as_u64()?,
        })
    }
}

/// What the nodes read of one streamed chunk (`chat.completion.chunk`): whether it
/// carries content, whether it is the usage-only chunk (`choices: []`), and its
/// usage. Parsed into borrowed views, without building a JSON tree of the chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkSummary {
    /// A choice's `delta.content` is a non-empty string.
    pub has_content: bool,
    /// `choices` is present and empty (OpenAI's final usage chunk).
    pub usage_only: bool,
    pub usage: Option<Usage>,
}

#[derive(serde::Deserialize)]
struct ChunkView<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceView<'a>>>,
    #[serde(default)]
    usage: Option<UsageView>,
}

#[derive(serde::Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow, default)]
    delta: Option<DeltaView<'a>>,
}

#[derive(serde::Deserialize)]
struct DeltaView<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
}

/// `usage` as it may come: fields absent or null (then it is no usage).
#[derive(serde::Deserialize)]
struct UsageView {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl ChunkSummary {
    /// Reads an event's `data`; `None` if it is not a JSON object of that shape.
    pub fn parse(data: &str) -> Option<ChunkSummary> {
        let view: ChunkView = serde_json::from_str(data).ok()?;
        let usage = view.usage.and_then(|u| {
            Some(Usage {
                prompt_tokens: u.prompt_tokens?,
                completion_tokens: u.completion_tokens?,
            })
        });
        let choices = view.choices.as_deref();
        Some(ChunkSummary {
            has_content: choices.is_some_and(|c| {
                c.iter().any(|c| {
                    c.delta
                        .as_ref()
                        .and_then(|d| d.content.as_ref())
                        .is_some_and(|s| !s.is_empty())
                })
            }),
            usage_only: choices.is_some_and(<[_]>::is_empty),
            usage,
        })
    }

    /// The usage of an event's `data`, reading only events that mention it (the
    /// provider's per-event work is one substring search for the others).
    pub fn usage_of(data: &str) -> Option<Usage> {
        if !data.contains("\"usage\"") {
            return None;
        }
        ChunkSummary::parse(data)?.usage
    }
}

/// What a streamed chunk or a whole answer (`value`, either endpoint) delivered as
/// text: appends to `text` every choice's `delta.content` / `message.content` /
/// `text` and its tool calls' function names and arguments (output too, R-NODE-4),
/// and returns whether the chunk stands for a generated token: it carries a content
/// or text string, even an empty one (llama.cpp's servers send a token that ends
/// inside a UTF-8 character as an empty chunk), other than an empty opening (`role`)
/// or closing (`finish_reason`) one.
pub fn delivered_text(value: &Value, text: &mut String) -> bool {
    let Some(choices) = value.get("choices").and_then(Value::as_array) else {
        return false;
    };
    let mut token = false;
    for choice in choices {
        let part = choice.get("delta").or_else(|| choice.get("message"));
        let content = part
            .and_then(|p| p.get("content"))
            .or_else(|| choice.get("text"))
            .and_then(Value::as_str);
        // Neither the opening chunk (`role`) nor a closing one (`finish_reason`)
        // with empty text stands for a token.
        let opening = part.is_some_and(|p| p.get("role").is_some());
        let closing = choice.get("finish_reason").is_some_and(|f| !f.is_null());
        if let Some(content) = content {
            text.push_str(content);
            token |= !content.is_empty() || !(opening || closing);
        }
        let calls = part
            .and_then(|p| p.get("tool_calls"))
            .and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            for key in ["name", "arguments"] {
                if let Some(s) = call
                    .get("function")
                    .and_then(|f| f.get(key))
                    .and_then(Value::as_str)
                {
                    token |= !s.is_empty();
                    text.push_str(s);
                }
            }
        }
    }
    token
}

/// Splits a server-sent-events byte stream into events (`data:` payloads), across
/// arbitrary chunk boundaries. Bounded: an event longer than `event_bytes_max` is an
/// error rather than unbounded growth. Each byte is searched once, and an event's
/// raw bytes are handed out without copying.
#[derive(Debug)]
pub struct SseSplitter {
    buffer: bytes::BytesMut,
    /// Bytes of `buffer` already searched for an event's end (minus the separator's
    /// length, so a separator cut across pushes is still found).
    searched: usize,
    event_bytes_max: usize,
}

/// One server-sent event as raw bytes (including its trailing blank line).
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub raw: bytes::Bytes,
    /// The concatenated `data:` lines, if any.
    pub data: Option<String>,
}

impl SseSplitter {
    pub fn new(event_bytes_max: usize) -> SseSplitter {
        SseSplitter {
            buffer: bytes::BytesMut::new(),
            searched: 0,
            event_bytes_max,
        }
    }

    /// Feeds bytes; returns the whole events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((at, separator)) = find_event_end(&self.buffer, self.searched) {
            let raw = self.buffer.split_to(at + separator).freeze();
            self.searched = 0;
            let mut data: Option<String> = None;
            for line in String::from_utf8_lossy(&raw[..at]).lines() {
                if let Some(payload) = line.strip_prefix("data:") {
                    let payload = payload.strip_prefix(' ').unwrap_or(payload);
                    match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(payload)
                        }
                        None => data = Some(payload.to_string()),
                    }
                }
            }
            events.push(SseEvent { raw, data });
        }
        // The longest separator is 4 bytes: its first 3 may already be here.
        self.searched = self.buffer.len().saturating_sub(3);
        if self.buffer.len() > self.event_bytes_max {
            return Err(format!(
                "a server-sent event exceeds {} bytes",
                self.event_bytes_max
            ));
        }
        Ok(events)
    }

    /// Bytes of an unfinished event (a stream that ends here was cut).
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len()
    }
}

/// The first event end at or after `from`: (offset of the blank line, its length).
fn find_event_end(buffer: &[u8], from: usize) -> Option<(usize, usize)> {
    let tail = &buffer[from.min(buffer.len())..];
    let at = tail.iter().enumerate().find_map(|(i, &byte)| {
        if byte != b'\n' && byte != b'\r' {
            return None;
        }
        let rest = &tail[i..];
        if rest.starts_with(b"\n\n") {
            Some((i, 2))
        } else if rest.starts_with(b"\r\n\r\n") {
            Some((i, 4))
        } else {
            None
        }
    })?;
    Some((from + at.0, at.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_node_1_max_tokens_is_clamped_to_the_ticket() {
        let mut request =
            ChatRequest::parse(br#"{"model":"m","max_completion_tokens":900}"#).unwrap();
        assert_eq!(request.clamp_max_tokens(100).unwrap(), 100);
        assert_eq!(request.fields["max_tokens"], 100);
        assert!(!request.fields.contains_key("max_completion_tokens"));
        let mut request = ChatRequest::parse(br#"{"model":"m","max_tokens":7}"#).unwrap();
        assert_eq!(request.clamp_max_tokens(100).unwrap(), 7);
        let mut request = ChatRequest::parse(br#"{"model":"m"}"#).unwrap();
        assert_eq!(request.clamp_max_tokens(64).unwrap(), 64);
        let mut request = ChatRequest::parse(br#"{"model":"m","max_tokens":-3}"#).unwrap();
        assert_eq!(
            request.clamp_max_tokens(64).unwrap_err().code,
            "invalid_max_tokens"
        );
        assert_eq!(
            ChatRequest::parse(b"[1]").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn r_node_4_only_documented_fields_pass_each_bounded() {
        let check = |body: &str, endpoint| {
            ChatRequest::parse(body.as_bytes())
                .unwrap()
                .check_fields(endpoint)
        };
        let ok = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,
            "n":1,"temperature":0.5,"stop":["a","b"],"stream":true,
            "stream_options":{"include_usage":true},"user":null,"seed":3}"#;
        check(ok, Endpoint::Chat).unwrap();
        // Issue 23 case 3: each refused naming the field.
        for (body, field) in [
            (
                r#"{"model":"m","messages":[],"n_predict":100000}"#,
                "n_predict",
            ),
            (
                r#"{"model":"m","messages":[],"min_tokens":100000}"#,
                "min_tokens",
            ),
            (
                r#"{"model":"m","messages":[],"ignore_eos":true}"#,
                "ignore_eos",
            ),
            (r#"{"model":"m","messages":[],"n":64}"#, "`n`"),
            (
                r#"{"model":"m","messages":[],"temperature":9}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[],"stop":["a","b","c","d","e"]}"#,
                "stop",
            ),
            (
                r#"{"model":"m","messages":[],"stream_options":{"x":1}}"#,
                "stream_options",
            ),
            (
                r#"{"model":"m","messages":[],"logit_bias":{"x":1}}"#,
                "logit_bias",
            ),
            (
                r#"{"model":"m","messages":[],"max_tokens":0}"#,
                "max_tokens",
            ),
            (r#"{"model":"m"}"#, "messages"),
        ] {
            let error = check(body, Endpoint::Chat).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(error.message.contains(field), "{body}: {}", error.message);
        }
        let error = check(
            r#"{"model":"m","messages":[],"n_predict":1}"#,
            Endpoint::Chat,
        )
        .unwrap_err();
        assert!(error.message.contains("TokenMax"), "{}", error.message);
        // Completions: prompt, not messages; one prompt; no echo.
        check(
            r#"{"model":"m","prompt":"hi","max_tokens":3,"logprobs":2}"#,
            Endpoint::Completions,
        )
        .unwrap();
        check(r#"{"model":"m","prompt":["hi"]}"#, Endpoint::Completions).unwrap();
        for body in [
            r#"{"model":"m","prompt":["a","b"]}"#,
            r#"{"model":"m","prompt":"a","echo":true}"#,
            r#"{"model":"m","prompt":"a","best_of":3}"#,
            r#"{"model":"m","messages":[]}"#,
        ] {
            assert!(check(body, Endpoint::Completions).is_err(), "{body}");
        }
    }

    #[test]
    fn issue_23_case_8_retry_hints() {
        assert_eq!(should_retry(StatusCode::BAD_REQUEST, false), Some("false"));
        assert_eq!(
            should_retry(StatusCode::TOO_MANY_REQUESTS, false),
            Some("false")
        );
        assert_eq!(
            should_retry(StatusCode::TOO_MANY_REQUESTS, true),
            Some("true")
        );
        assert_eq!(
            should_retry(StatusCode::SERVICE_UNAVAILABLE, true),
            Some("true")
        );
        assert_eq!(should_retry(StatusCode::BAD_GATEWAY, false), Some("true"));
        assert_eq!(should_retry(StatusCode::OK, false), None);
        let response = ApiError::bad_request("x", "y").into_response();
        assert_eq!(response.headers()[SHOULD_RETRY_HEADER], "false");
    }

    #[test]
    fn r_node_4_delivered_text_counts_empty_token_chunks() {
        let mut text = String::new();
        let chunk = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        // The opening chunk is no token; an empty content chunk is one (a token
        // ending inside a character); the closing chunk is none.
        assert!(!delivered_text(
            &chunk(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            &mut text
        ));
        assert!(delivered_text(
            &chunk(r#"{"choices":[{"delta":{"content":""}}]}"#),
            &mut text
        ));
        assert!(delivered_text(
            &chunk(r#"{"choices":[{"delta":{"content":"ü"}}]}"#),
            &mut text
        ));
        assert!(!delivered_text(
            &chunk(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#),
            &mut text
        ));
        assert!(!delivered_text(
            &chunk(r#"{"choices":[{"text":"","finish_reason":"length"}]}"#),
            &mut text
        ));
        assert!(delivered_text(
            &chunk(r#"{"choices":[{"text":"ab","finish_reason":null}]}"#),
            &mut text
        ));
        assert!(delivered_text(
            &chunk(
                r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}}]}"#
            ),
            &mut text
        ));
        assert!(delivered_text(
            &chunk(r#"{"choices":[{"message":{"role":"assistant","content":"whole"}}]}"#),
            &mut text
        ));
        assert_eq!(text, "üabf{}whole");
        assert!(!delivered_text(
            &chunk(r#"{"choices":[],"usage":{}}"#),
            &mut text
        ));
    }

    #[test]
    fn streams_ask_for_usage() {
        let mut request =
            ChatRequest::parse(br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#).unwrap();
        assert!(!request.include_usage());
        request.ask_usage_in_stream();
        assert!(request.include_usage());
        assert_eq!(request.fields["stream_options"]["x"], 1);
        let mut plain = ChatRequest::parse(br#"{"model":"m"}"#).unwrap();
        plain.ask_usage_in_stream();
        assert!(!plain.fields.contains_key("stream_options"));
    }

    #[test]
    fn sse_events_split_across_any_chunking() {
        let stream = b"data: {\"a\":1}\n\ndata: [DONE]\r\n\r\n";
        for cut in 0..stream.len() {
            let mut splitter = SseSplitter::new(1024);
            let mut events = splitter.push(&stream[..cut]).unwrap();
            events.extend(splitter.push(&stream[cut..]).unwrap());
            let data: Vec<_> = events.iter().map(|e| e.data.clone().unwrap()).collect();
            assert_eq!(data, ["{\"a\":1}", "[DONE]"], "cut at {cut}");
            assert_eq!(splitter.pending_bytes(), 0);
        }
        let mut splitter = SseSplitter::new(8);
        assert!(splitter.push(b"data: 0123456789").is_err());
        // Byte by byte, with both separators and a multi-line event.
        let stream = b"data: a\r\ndata: b\r\n\r\n: comment\n\ndata: c\n\n";
        let mut splitter = SseSplitter::new(1024);
        let mut events = Vec::new();
        for byte in stream {
            events.extend(splitter.push(&[*byte]).unwrap());
        }
        let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
        assert_eq!(raw, stream, "raw events are the stream, byte for byte");
        let data: Vec<_> = events.iter().map(|e| e.data.clone()).collect();
        assert_eq!(data, [Some("a\nb".into()), None, Some("c".into())]);
    }

    #[test]
    fn chunk_summary_reads_content_usage_and_the_usage_only_chunk() {
        let content = r#"{"id":"x","choices":[{"index":0,"delta":{"content":"he\"y"},"finish_reason":null}]}"#;
        let summary = ChunkSummary::parse(content).unwrap();
        assert!(summary.has_content && !summary.usage_only && summary.usage.is_none());
        let role = r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#;
        assert!(!ChunkSummary::parse(role).unwrap().has_content);
        let usage =
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}"#;
        let summary = ChunkSummary::parse(usage).unwrap();
        assert!(summary.usage_only && !summary.has_content);
        let expected = Usage {
            prompt_tokens: 3,
            completion_tokens: 9,
        };
        assert_eq!(summary.usage, Some(expected));
        assert_eq!(ChunkSummary::usage_of(usage), Some(expected));
        assert_eq!(ChunkSummary::usage_of(content), None);
        // vLLM sends "usage": null on every chunk unless asked.
        let null = r#"{"choices":[{"delta":{"content":"a"}}],"usage":null}"#;
        assert_eq!(ChunkSummary::usage_of(null), None);
        assert!(ChunkSummary::parse(null).unwrap().has_content);
        assert_eq!(ChunkSummary::parse("[DONE]"), None);
        assert_eq!(ChunkSummary::parse("not json"), None);
    }
}
