//! The OpenAI API as both nodes speak it: error bodies
//! (`{"error": {"message", "type", "code", "param"}}`) with the right HTTP status,
//! and the few request fields the nodes read or rewrite (`model`, `stream`,
//! `max_tokens` / `max_completion_tokens`, `stream_options.include_usage`); every
//! other field passes through untouched.

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
        response
    }
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

/// Both nodes' answer to a path they do not serve: 404 `unknown_url`, OpenAI-style.
pub async fn unknown_url(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        format!(
            "unknown url {}: this node serves POST /v1/chat/completions and GET /v1/models",
            uri.path()
        ),
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
            "{method} is not served at {}: this node serves POST /v1/chat/completions and \
             GET /v1/models",
            uri.path()
        ),
    )
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
