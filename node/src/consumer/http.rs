//! The consumer's OpenAI API for local applications (R-NODE-2, R-NODE-6):
//! `GET /v1/models` and `GET /v1/models/{id}` from the router's catalog with the best
//! live price, `POST /v1/chat/completions` and `POST /v1/completions` streamed or
//! not, through the market. Router refusals become statuses OpenAI clients
//! understand: 429 when the quota left today is short (naming what is left, with
//! `x-should-retry: false`), no provider and overloaded 503 with Retry-After, unknown
//! model 404. Only OpenAI's documented request fields pass (R-NODE-4); the tokens
//! reported are those counted in the text received (`tokens`, R-NODE-4).

use super::router::RfcOutcome;
use super::Consumer;
use crate::inference::{sign_request, SESSION_HEADER, SIGNATURE_HEADER};
use crate::openai::{
    body_or_error, delivered_text, method_not_allowed, should_retry, unknown_url, ApiError,
    ChatRequest, Endpoint, SseSplitter, Usage, SHOULD_RETRY_HEADER,
};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use yellowstone_wire::{codes, Outcome, ReportFigures, SessionTicket};

const SSE_EVENT_BYTES_MAX: usize = 1024 * 1024;
/// Chunks buffered between the provider and a slow application.
const RELAY_CHUNKS_MAX: usize = 64;

pub fn router(consumer: Arc<Consumer>) -> Router {
    let body_max = consumer.config.request_bytes_max as usize;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(text_completions))
        .route("/v1/models", get(models))
        // `{*id}`: catalog names may hold a `/` (`org/model`).
        .route("/v1/models/{*id}", get(model))
        .fallback(unknown_url)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_max))
        // Every error carries `x-should-retry` (outsider review 3 finding 13).
        .layer(axum::middleware::from_fn(crate::openai::retry_hints))
        .with_state(consumer)
}

fn router_unavailable(reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "router_unavailable",
        format!("the market's router is not reachable: {reason}"),
    )
    .retry_after(1)
}

/// One catalog model as OpenAI's model object (`id`, `object: "model"`, `created`,
/// `owned_by`) plus the market's figures and the tokenizer this node counts with.
fn model_object(consumer: &Consumer, m: &yellowstone_wire::CatalogModel) -> Value {
    let price = (m.offers_live > 0).then(|| m.best_price_wei_per_token.to_string());
    json!({"id": m.name, "object": "model", "created": 0, "owned_by": "yellowstone-market",
        "yellowstone_model_id": m.model_id, "best_price_wei_per_token": price,
        "offers_live": m.offers_live, "weights_hash": hex::encode(m.weights_hash),
        "tokenizer_blake3": consumer.tokens.blake3(&m.name)})
}

async fn models(State(consumer): State<Arc<Consumer>>) -> Result<Json<Value>, ApiError> {
    let catalog = consumer.catalog(false).await.map_err(router_unavailable)?;
    let data: Vec<Value> = catalog
        .models
        .iter()
        .map(|m| model_object(&consumer, m))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// R-NODE-6: `GET /v1/models/{id}` (`client.models.retrieve`): the model object, or
/// 404 `model_not_found` as OpenAI answers.
async fn model(
    State(consumer): State<Arc<Consumer>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = consumer.catalog(false).await.map_err(router_unavailable)?;
    catalog
        .models
        .iter()
        .find(|m| m.name == id)
        .map(|m| Json(model_object(&consumer, m)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!(
                    "The model `{}` does not exist in the market's catalog (GET /v1/models lists it)",
                    crate::openai::truncate(&id, 256)
                ),
            )
        })
}

/// The catalog id of the model named `name`. A model no live offer serves is a 503
/// at once (the cached catalog is refreshed first), rather than an RFC that would
/// wait in the queue until it expires.
async fn resolve_model(consumer: &Consumer, name: &str) -> Result<u32, ApiError> {
    let mut known = false;
    for fresh in [false, true] {
        let catalog = consumer.catalog(fresh).await.map_err(router_unavailable)?;
        if let Some(model) = catalog.models.iter().find(|m| m.name == name) {
            known = true;
            if model.offers_live > 0 {
                return Ok(model.model_id);
            }
        }
    }
    if known {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "no_provider",
            format!("no provider offers {name:?} now"),
        )
        .retry_after(1));
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "model_not_found",
        format!("model {name:?} is not in the market's catalog (GET /v1/models lists it)"),
    ))
}

/// Issue 23 case 8: the 429's honest wording: what the request asked (`asked`: its
/// max_tokens, `None`: the default reservation) against the `tokens_left` today.
/// Retrying the same request cannot help (`x-should-retry: false`, no Retry-After).
pub fn quota_message(tokens_left: u128, asked: Option<u64>, reserved: u64) -> String {
    match asked {
        _ if tokens_left == 0 => {
            "no tokens are left of this user's quota today: the quota renews with the \
             market's next day"
                .to_string()
        }
        Some(asked) => format!(
            "max_tokens {asked} exceeds the {tokens_left} tokens left today: ask for at most \
             {tokens_left}"
        ),
        None => format!(
            "this node reserves {reserved} tokens for a request without max_tokens; \
             {tokens_left} are left today: set max_tokens to at most {tokens_left}"
        ),
    }
}

/// R-NODE-2: router refusals as OpenAI clients understand them (`asked`: the
/// request's max_tokens, `reserved`: the TokenMax the RFC asked for).
fn rfc_error(outcome: RfcOutcome, asked: Option<u64>, reserved: u64) -> ApiError {
    match outcome {
        RfcOutcome::Refused(error) => {
            let name = codes::name(error.code);
            let reason = error.reason.clone();
            match name {
                "quota_exceeded" => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "insufficient_quota",
                    quota_message(error.detail, asked, reserved),
                ),
                "zero_balance" => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "permission_error",
                    "zero_balance",
                    format!("this user holds no MOR: {reason}"),
                ),
                "unknown_model" => ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "model_not_found",
                    reason,
                ),
                "no_offer" => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "no_provider",
                    format!("no provider offers this model now: {reason}"),
                )
                .retry_after(1),
                // R-SESSION-1: this user's open sessions and RFCs are at the
                // router's bound: a rate limit the application can wait out.
                "user_sessions_full" => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "too_many_open_sessions",
                    format!("too many requests in flight for this user: {reason}"),
                )
                .retry_after(1),
                "invalid_tokens_max" | "tokens_over_max" | "limit_reached" => {
                    ApiError::bad_request("invalid_max_tokens", reason)
                }
                _ if error.code == codes::OVERLOADED || name == "queue_full" => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "overloaded",
                    format!("the market is overloaded, retry later: {reason}"),
                )
                .retry_after((error.retry_after_ms as u64).div_ceil(1000)),
                _ => ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    "router_refused",
                    format!("the router refused the request ({name}): {reason}"),
                ),
            }
        }
        RfcOutcome::Failed { reason } => {
            let why = match reason {
                1 => "no provider took the request before it expired",
                2 => "no provider available for this model",
                _ => "the request was cancelled",
            };
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "no_provider",
                why,
            )
            .retry_after(1)
        }
        RfcOutcome::RouterDown(reason) => router_unavailable(reason),
        // The router answered nothing (not even the expiry it sends itself): it is
        // unreachable or changing leader (R-HA-3); a retry may well succeed.
        RfcOutcome::TimedOut { waited_ms } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "no_ticket",
            format!(
                "the market's router answered nothing within {waited_ms} ms (rfc_ttl_ms + 2 s); retry"
            ),
        )
        .retry_after(1),
    }
}

fn count(consumer: &Consumer, outcome: &str) {
    consumer
        .stats
        .requests
        .get_or_create(&vec![("outcome", outcome.to_string())])
        .inc();
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight<'a>(&'a Consumer);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.stats.in_flight.dec();
    }
}

async fn chat_completions(
    State(consumer): State<Arc<Consumer>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    completions(consumer, Endpoint::Chat, body).await
}

async fn text_completions(
    State(consumer): State<Arc<Consumer>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    completions(consumer, Endpoint::Completions, body).await
}

async fn completions(
    consumer: Arc<Consumer>,
    endpoint: Endpoint,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body_or_error(body, consumer.config.request_bytes_max) {
        Ok(body) => body,
        Err(error) => {
            count(&consumer, "bad_request");
            return error.into_response();
        }
    };
    // In a task of its own: an application that goes away (a closed socket, a
    // client time-out) does not cancel the call half-way. The session's answer is
    // still read to its end and reported, as for a stream the application leaves;
    // dropped here, the session would stay open at the router with no report.
    let task = tokio::spawn(serve_completion(consumer, endpoint, body));
    task.await.unwrap_or_else(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            format!("the completion task ended abnormally: {error}"),
        )
        .into_response()
    })
}

async fn serve_completion(consumer: Arc<Consumer>, endpoint: Endpoint, body: Bytes) -> Response {
    if consumer.stopping() {
        // R-NODE-5: a stopping node takes no new session it could not finish.
        count(&consumer, "busy");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "stopping",
            "this consumer node is stopping",
        )
        .retry_after(1)
        .into_response();
    }
    let Ok(permit) = consumer.in_flight.try_acquire() else {
        count(&consumer, "busy");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "busy",
            format!(
                "requests_in_flight_max ({}) reached",
                consumer.config.requests_in_flight_max
            ),
        )
        .retry_after(1)
        .into_response();
    };
    consumer.stats.in_flight.inc();
    let _in_flight = InFlight(&consumer);
    let result = complete(&consumer, endpoint, body).await;
    drop(permit);
    match result {
        Ok(response) => response,
        Err((outcome, error)) => {
            count(&consumer, outcome);
            tracing::info!(status = error.status.as_u16(), code = error.code, message = %error.message, "completion refused");
            error.into_response()
        }
    }
}

type Failure = (&'static str, ApiError);

/// The RFC for `tokens_max`; R-NODE-5 (issue 23 case 8): a request without
/// max_tokens (`asked` None) whose default reservation is more than the quota left
/// today asks again for what is left, so the default never refuses a request the
/// quota could serve.
async fn session_for(
    consumer: &Consumer,
    model_id: u32,
    asked: Option<u64>,
    tokens_max: u64,
) -> Result<(SessionTicket, Bytes), ApiError> {
    let ttl = Duration::from_millis(consumer.config.rfc_ttl_ms);
    match consumer
        .router
        .request_session(model_id, tokens_max, ttl)
        .await
    {
        Ok(ticket) => Ok(ticket),
        Err(RfcOutcome::Refused(error))
            if asked.is_none()
                && codes::name(error.code) == "quota_exceeded"
                && error.detail > 0
                && error.detail < u128::from(tokens_max) =>
        {
            let left = error.detail as u64; // < tokens_max: fits
            tracing::info!(
                reserved = tokens_max,
                left,
                "default reservation above the quota left: asking for what is left"
            );
            consumer
                .router
                .request_session(model_id, left, ttl)
                .await
                .map_err(|outcome| rfc_error(outcome, asked, left))
        }
        Err(outcome) => Err(rfc_error(outcome, asked, tokens_max)),
    }
}

async fn complete(
    consumer: &Arc<Consumer>,
    endpoint: Endpoint,
    body: Bytes,
) -> Result<Response, Failure> {
    let started = Instant::now();
    let bad = |e| ("bad_request", e);
    let mut request = ChatRequest::parse(&body).map_err(bad)?;
    // R-NODE-4: only documented fields, each bounded, before anything is spent.
    request.check_fields(endpoint).map_err(bad)?;
    let name = request.model().map_err(bad)?.to_string();
    let asked = request.max_tokens().map_err(bad)?;
    let limit = consumer.config.tokens_max_limit;
    if let Some(asked) = asked.filter(|&asked| asked > limit) {
        return Err(bad(ApiError::bad_request(
            "invalid_max_tokens",
            format!("max_tokens {asked} is above this node's tokens_max_limit ({limit})"),
        )));
    }
    let model_id = resolve_model(consumer, &name)
        .await
        .map_err(|e| ("refused", e))?;
    let app_wants_usage = request.include_usage();
    let (ticket, ticket_body) = session_for(
        consumer,
        model_id,
        asked,
        asked.unwrap_or(consumer.config.tokens_max_default),
    )
    .await
    .map_err(|e| ("refused", e))?;
    // The ticket's TokenMax may be below the default (the quota left): the request
    // says what the ticket covers.
    request.clamp_max_tokens(ticket.tokens_max).map_err(bad)?;
    request.ask_usage_in_stream();
    let ticket_us = started.elapsed().as_micros() as u64;
    consumer
        .stats
        .ticket_seconds
        .observe(started.elapsed().as_secs_f64());
    let session_id = ticket.session_id;
    let body = request.to_bytes();
    let call = Call {
        consumer: consumer.clone(),
        _open: consumer.open_call(),
        ticket,
        ticket_body,
        model_name: name,
        started,
        query_started: Instant::now(),
        prompt_tokens_bound: body.len() as u64,
    };
    let signature = sign_request(
        consumer.router.key(),
        consumer.router.network_id(),
        call.ticket.session_id,
        &body,
    );
    let url = provider_url(&call.ticket.endpoint, endpoint);
    let first_byte = Duration::from_millis(consumer.config.first_byte_timeout_ms);
    let sent = consumer
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header(SESSION_HEADER, call.ticket.session_id.to_string())
        .header(SIGNATURE_HEADER, signature)
        // Outsider review 3 finding 2 (R-HA-3): the router-signed ticket, for a
        // provider whose own copy was lost with a failed-over leader.
        .header(
            crate::inference::TICKET_HEADER,
            hex::encode(&call.ticket_body),
        )
        .body(body)
        .send();
    let mut cut = consumer.cut_signal();
    let response = tokio::select! {
        sent = tokio::time::timeout(first_byte, sent) => sent,
        _ = cut.wait_for(|cut| *cut) => {
            // R-NODE-5: stopped before any output: the node's own cancellation.
            call.report(Outcome::Void, 0, None, None);
            return Err(("stopped", ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "stopping",
                "this consumer node stopped before the provider answered",
            ).retry_after(1)));
        }
    };
    let response = match response {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            return Err(call.fail(
                "provider_error",
                StatusCode::BAD_GATEWAY,
                "provider_unreachable",
                format!("the provider at {url} could not be reached: {error}"),
            ))
        }
        Err(_) => {
            return Err(call.fail(
                "timeout",
                StatusCode::GATEWAY_TIMEOUT,
                "provider_timeout",
                format!("the provider at {url} did not answer within {first_byte:?}"),
            ))
        }
    };
    let status = response.status();
    if is_request_fault(status) {
        // R-NODE-5, R-REPORT-2: the model server (or the provider node, before
        // serving) refused the request itself: the application gets that 4xx, and
        // the provider is not blamed.
        let text = read_bounded(response, 64 * 1024).await.unwrap_or_default();
        return Ok(call.void(status, text));
    }
    if !status.is_success() {
        let text = read_bounded(response, 64 * 1024).await.unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned());
        return Err(call.fail(
            "provider_error",
            StatusCode::BAD_GATEWAY,
            "provider_error",
            format!("the provider answered {status}: {message}"),
        ));
    }
    let mut response = if request.stream() {
        call.relay_stream(response, app_wants_usage, endpoint)
    } else {
        call.whole_answer(response).await?
    };
    // For applications and benchmarks: the session, and what the market's matching
    // took (application request to ticket).
    let headers = response.headers_mut();
    headers.insert(SESSION_HEADER, session_id.into());
    headers.insert(TICKET_US_HEADER, ticket_us.into());
    Ok(response)
}

/// R-NODE-5: a provider's answer that is the request's own fault, reported void
/// (R-REPORT-2) and passed to the application as it is: 400 (invalid request, such
/// as a prompt over the model's context), 413 (request too large) and 422
/// (unprocessable). Every other 4xx (401, 403, 404, 409, 410, 429: a ticket, an
/// upstream or a rate-limit problem) and every 5xx is the provider's: fail.
pub fn is_request_fault(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 422)
}

/// R-REPORT-3: the prompt tokens a report carries: the provider's `usage` figure,
/// bounded by the bytes of the request body sent (a token is at least one byte), or
/// that bound when the answer carries no usage; never above the router's default
/// `market.prompt_tokens_max` (2^24).
pub fn report_prompt_tokens(usage: Option<u64>, body_bytes: u64) -> u64 {
    usage
        .map_or(body_bytes, |tokens| tokens.min(body_bytes))
        .min(PROMPT_TOKENS_REPORT_MAX)
}

/// The router's default `market.prompt_tokens_max`.
pub const PROMPT_TOKENS_REPORT_MAX: u64 = 1 << 24;

/// Response header: microseconds from the application's request to the ticket.
pub const TICKET_US_HEADER: &str = "x-yellowstone-ticket-us";

/// The URL of `api` at the ticket's endpoint, a base URL (`host:port` means plain
/// HTTP).
fn provider_url(endpoint: &str, api: Endpoint) -> String {
    let base = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.trim_end_matches('/').to_string()
    } else {
        format!("http://{endpoint}")
    };
    format!("{base}/v1{}", api.path())
}

async fn read_bounded(response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("the answer was cut: {e}"))?;
        if out.len() + chunk.len() > max {
            return Err(format!("the answer exceeds {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// R-REPORT-1: a report's `elapsed_ms` for a query that took `elapsed`: whole
/// milliseconds rounded up, so that a completion never reports 0 ms. The router's
/// speed gate (R-PERF-1) compares `ms / tokens` with the model's mean `Σms / Σtokens`
/// exactly; truncated sub-millisecond answers would report 0 ms, pull the mean to
/// (nearly) zero and make every later report of 1 ms or more "too slow" (no credit,
/// a penalty point, and after `penalty_points_suspend` of them a suspension).
pub fn report_elapsed_ms(elapsed: Duration) -> u64 {
    let ms = elapsed.as_nanos().div_ceil(1_000_000).max(1);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// A whole (non-streamed) answer's body: one frame of exact length, then the
/// session's pass report, sent when the server is done with the body.
struct ReportAfterBody {
    bytes: Option<Bytes>,
    /// The call and the figures to report.
    report: Option<(Call, ReportFigures)>,
}

impl http_body::Body for ReportAfterBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.bytes.take().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}

impl Drop for ReportAfterBody {
    fn drop(&mut self) {
        if let Some((call, figures)) = self.report.take() {
            call.report_figures(Outcome::Pass, figures);
        }
    }
}

/// One call to a provider under a ticket, from the query to the report.
struct Call {
    consumer: Arc<Consumer>,
    /// Counts this call as open until it is dropped (after its report is sent):
    /// a stopping node waits for it (R-NODE-5).
    _open: super::PendingGuard,
    ticket: SessionTicket,
    /// The ticket's body as the router signed it (`X-Yellowstone-Ticket`).
    ticket_body: Bytes,
    model_name: String,
    /// The application's request arrived.
    started: Instant,
    /// The query left for the provider (R-REPORT-1 measures from here).
    query_started: Instant,
    /// The request body's bytes: a bound on its prompt tokens (R-REPORT-3).
    prompt_tokens_bound: u64,
}

impl Call {
    /// Reports fail and returns the error for the application.
    fn fail(
        &self,
        outcome: &'static str,
        status: StatusCode,
        code: &'static str,
        message: String,
    ) -> Failure {
        tracing::warn!(session = self.ticket.session_id, code, %message, "completion failed: reporting fail");
        self.report(Outcome::Fail, 0, None, None);
        (
            outcome,
            ApiError::new(status, "server_error", code, message),
        )
    }

    /// R-REPORT-2, R-NODE-5: the provider refused the request for the request's own
    /// reason: report void, and answer the application with that status and body.
    fn void(&self, status: StatusCode, body: Vec<u8>) -> Response {
        tracing::info!(session = self.ticket.session_id, %status, "request refused as invalid: reporting void");
        self.report(Outcome::Void, 0, None, None);
        count(&self.consumer, "request_refused");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert("content-type", "application/json".parse().expect("header"));
        // The same request would be refused again (issue 23 case 5: the openai
        // package must not spend another ticket on it).
        if let Some(retry) = should_retry(status, false) {
            headers.insert(SHOULD_RETRY_HEADER, retry.parse().expect("header"));
        }
        response
    }

    /// The figures of a report made now: `ttft_ms` the first token's time if it was
    /// seen apart (else the whole time: a whole answer), `usage_prompt` the answer's
    /// `usage.prompt_tokens` if any (R-REPORT-3).
    fn figures_now(
        &self,
        tokens: u64,
        ttft_ms: Option<u64>,
        usage_prompt: Option<u64>,
    ) -> ReportFigures {
        let elapsed_ms = report_elapsed_ms(self.query_started.elapsed());
        ReportFigures {
            elapsed_ms,
            ttft_ms: ttft_ms.unwrap_or(elapsed_ms).min(elapsed_ms),
            tokens,
            prompt_tokens: report_prompt_tokens(usage_prompt, self.prompt_tokens_bound),
        }
    }

    /// R-REPORT-1..3: the signed report, in the background (the application does
    /// not wait for the router's acknowledgement).
    fn report(
        &self,
        outcome: Outcome,
        tokens: u64,
        ttft_ms: Option<u64>,
        usage_prompt: Option<u64>,
    ) {
        self.report_figures(outcome, self.figures_now(tokens, ttft_ms, usage_prompt));
    }

    fn report_figures(&self, outcome: Outcome, figures: ReportFigures) {
        let figures = ReportFigures {
            tokens: figures.tokens.min(self.ticket.tokens_max),
            ..figures
        };
        let (elapsed_ms, tokens) = (figures.elapsed_ms, figures.tokens);
        let consumer = self.consumer.clone();
        let session = self.ticket.session_id;
        // A stopping node waits for this report's acknowledgement (R-NODE-5).
        let pending = consumer.pending_guard();
        if outcome == Outcome::Pass {
            consumer.stats.tokens.inc_by(tokens);
            consumer
                .stats
                .end_to_end_seconds
                .observe(self.started.elapsed().as_secs_f64());
        }
        // (Called from a body's drop too: outside a runtime, at shutdown, nothing
        // can be sent any more.)
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(session, "shutting down: report not sent");
            return;
        };
        runtime.spawn(async move {
            let timeout = Duration::from_millis(consumer.config.report_timeout_ms);
            let ack = consumer
                .router
                .report(session, outcome, figures, timeout)
                .await;
            let answer = match &ack {
                Ok(ack) => match ack.reason {
                    0 => "earned",
                    1 => "reported_fail",
                    2 => "too_slow",
                    3 => "earned_despite_fail",
                    4 => "zero_tokens",
                    5 => "void",
                    6 => "too_slow_first_token",
                    _ => "other",
                },
                Err(error) => {
                    tracing::warn!(session, %error, "report not acknowledged");
                    "error"
                }
            };
            let ttft_ms = figures.ttft_ms;
            let outcome = outcome.name();
            tracing::info!(session, elapsed_ms, ttft_ms, tokens, outcome, answer, "reported");
            consumer
                .stats
                .reports
                .get_or_create(&vec![
                    ("outcome", outcome.to_string()),
                    ("ack", answer.to_string()),
                ])
                .inc();
            drop(pending);
        });
    }

    /// R-NODE-4: the completion tokens of what was received: `text` counted with
    /// the model's tokenizer (else its bytes), the provider's `usage` and the
    /// stream's `token_chunks` never believed beyond that.
    fn verified_tokens(&self, text: &str, usage: Option<Usage>, token_chunks: Option<u64>) -> u64 {
        let bound = self.consumer.tokens.bound(&self.model_name, text);
        let tokens = super::tokens::verified_tokens(
            usage.map(|u| u.completion_tokens),
            token_chunks,
            bound,
            self.ticket.tokens_max,
        );
        if let Some(claimed) = usage.map(|u| u.completion_tokens).filter(|&c| c > tokens) {
            tracing::warn!(
                session = self.ticket.session_id,
                claimed,
                counted = tokens,
                "the provider's usage claims more tokens than were received: reporting what was received"
            );
        }
        debug_assert!(tokens <= bound && tokens <= self.ticket.tokens_max);
        tokens
    }

    /// The `usage` object the application sees: the verified completion tokens.
    fn usage_value(&self, prompt: u64, completion: u64) -> Value {
        json!({"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion)})
    }

    async fn whole_answer(self, response: reqwest::Response) -> Result<Response, Failure> {
        let answer_timeout = Duration::from_millis(self.consumer.config.answer_timeout_ms);
        let max = self.consumer.config.response_bytes_max as usize;
        let mut cut = self.consumer.cut_signal();
        let read = tokio::time::timeout(answer_timeout, read_bounded(response, max));
        let read = tokio::select! {
            read = read => read,
            _ = cut.wait_for(|cut| *cut) => {
                // R-NODE-5: this node stops; nothing of the answer was received.
                self.report(Outcome::Void, 0, None, None);
                return Err(("stopped", ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "stopping",
                    "this consumer node stopped before the answer arrived",
                ).retry_after(1)));
            }
        };
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(reason)) => {
                return Err(self.fail(
                    "cut",
                    StatusCode::BAD_GATEWAY,
                    "provider_answer_cut",
                    format!("the provider's answer is incomplete: {reason}"),
                ))
            }
            Err(_) => {
                return Err(self.fail(
                    "timeout",
                    StatusCode::GATEWAY_TIMEOUT,
                    "provider_timeout",
                    format!("the provider's answer took over {answer_timeout:?}"),
                ))
            }
        };
        let parsed = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(|v| v.get("choices").is_some_and(Value::is_array));
        let Some(mut answer) = parsed else {
            return Err(self.fail(
                "provider_error",
                StatusCode::BAD_GATEWAY,
                "provider_bad_answer",
                "the provider's answer is not a completion (no choices)".into(),
            ));
        };
        let usage = Usage::from_value(&answer);
        let mut text = String::new();
        delivered_text(&answer, &mut text);
        let tokens = self.verified_tokens(&text, usage, None);
        // A whole answer: its first token was not seen apart (ttft = elapsed).
        let figures = self.figures_now(tokens, None, usage.map(|u| u.prompt_tokens));
        self.consumer
            .stats
            .first_token_seconds
            .observe(self.started.elapsed().as_secs_f64());
        answer["model"] = Value::from(self.model_name.clone());
        answer["usage"] = self.usage_value(figures.prompt_tokens, tokens);
        count(&self.consumer, "ok");
        let body = serde_json::to_vec(&answer).map_err(|e| {
            self.fail(
                "provider_error",
                StatusCode::BAD_GATEWAY,
                "provider_bad_answer",
                format!("the provider's answer could not be re-encoded: {e}"),
            )
        })?;
        // The report leaves once the application's answer is written (or the
        // application left), off the response path; its ms are the query's.
        let body = ReportAfterBody {
            bytes: Some(Bytes::from(body)),
            report: Some((self, figures)),
        };
        let mut response = Response::new(Body::new(body));
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().expect("header"));
        Ok(response)
    }

    /// Relays the provider's events to the application as they come, each chunk
    /// under the catalog's model name (issue 23 case 8); reports when the stream
    /// ends: pass only if it ended with `[DONE]`. R-NODE-4: the tokens reported are
    /// counted in the text received. When the application asked
    /// `stream_options.include_usage`, it gets one usage chunk before `[DONE]` with
    /// those tokens, whether or not the provider sent one (R-NODE-6).
    fn relay_stream(
        self,
        response: reqwest::Response,
        app_wants_usage: bool,
        endpoint: Endpoint,
    ) -> Response {
        let (sender, receiver) =
            tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(RELAY_CHUNKS_MAX);
        let relay = async move {
            let deadline = tokio::time::Instant::from_std(self.query_started)
                + Duration::from_millis(self.consumer.config.answer_timeout_ms);
            let mut splitter = SseSplitter::new(SSE_EVENT_BYTES_MAX);
            let mut stream = response.bytes_stream();
            let (mut done, mut usage, mut token_chunks) = (false, None::<Usage>, 0u64);
            let mut text = String::new();
            let mut first_token_ms = None::<u64>;
            let mut app_open = true;
            let (mut id, mut created) = (Value::Null, Value::from(0));
            let mut cut = self.consumer.cut_signal();
            // Armed once for the whole answer, not once per chunk (issue 23,
            // Performance: a timer registered and dropped for each of ~20 chunks).
            let answer_deadline = tokio::time::sleep_until(deadline);
            tokio::pin!(answer_deadline);
            // Resolves when this node stops (or its stop signal is gone).
            let stopped = async move {
                let _ = cut.wait_for(|cut| *cut).await;
            };
            tokio::pin!(stopped);
            let error: Option<(&'static str, String)> = loop {
                // `biased`: a stop is seen first; a chunk that is there wins over the
                // deadline, as `timeout_at(deadline, stream.next())` did.
                let next = tokio::select! {
                    biased;
                    _ = &mut stopped => {
                        break Some(("stopped", "this consumer node stopped mid-stream".into()))
                    }
                    next = stream.next() => Ok(next),
                    _ = &mut answer_deadline => Err(()),
                };
                let chunk = match next {
                    Err(()) => break Some(("timeout", "the provider's answer timed out".into())),
                    Ok(None) if done => break None,
                    Ok(None) => {
                        break Some(("cut", "the provider's stream ended before its end".into()))
                    }
                    Ok(Some(Err(error))) => {
                        break Some(("cut", format!("the provider's stream was cut: {error}")))
                    }
                    Ok(Some(Ok(chunk))) => chunk,
                };
                let events = match splitter.push(&chunk) {
                    Ok(events) => events,
                    Err(error) => break Some(("provider_error", error)),
                };
                let mut stream_error = None;
                for event in events {
                    let mut raw = event.raw;
                    match event.data.as_deref() {
                        Some("[DONE]") => {
                            done = true;
                            if app_wants_usage && app_open {
                                // The verified usage, in OpenAI's shape: last
                                // chunk before [DONE], `choices: []`.
                                let tokens = self.verified_tokens(&text, usage, Some(token_chunks));
                                let prompt = report_prompt_tokens(
                                    usage.map(|u| u.prompt_tokens),
                                    self.prompt_tokens_bound,
                                );
                                let object = match endpoint {
                                    Endpoint::Chat => "chat.completion.chunk",
                                    Endpoint::Completions => "text_completion",
                                };
                                let chunk = json!({"id": id, "object": object, "created": created,
                                    "model": self.model_name, "choices": [],
                                    "usage": self.usage_value(prompt, tokens)});
                                let event = Bytes::from(format!("data: {chunk}\n\n"));
                                if sender.send(Ok(event)).await.is_err() {
                                    app_open = false;
                                }
                            }
                        }
                        Some(data) => {
                            if let Ok(mut value) = serde_json::from_str::<Value>(data) {
                                if let Some(u) = Usage::from_value(&value) {
                                    usage = Some(u);
                                }
                                let before = text.len();
                                if delivered_text(&value, &mut text) {
                                    token_chunks += 1;
                                }
                                // The text is kept to be counted: bounded as a
                                // whole answer is, or a provider could stream
                                // without end into this node's memory.
                                if text.len() > self.consumer.config.response_bytes_max as usize {
                                    stream_error = Some((
                                        "provider_error",
                                        format!(
                                            "the provider's stream exceeds response_bytes_max ({} bytes)",
                                            self.consumer.config.response_bytes_max
                                        ),
                                    ));
                                    break;
                                }
                                if text.len() > before && first_token_ms.is_none() {
                                    // R-REPORT-3: the time to the first token.
                                    first_token_ms =
                                        Some(report_elapsed_ms(self.query_started.elapsed()));
                                    self.consumer
                                        .stats
                                        .first_token_seconds
                                        .observe(self.started.elapsed().as_secs_f64());
                                }
                                let usage_only = value
                                    .get("choices")
                                    .and_then(Value::as_array)
                                    .is_some_and(Vec::is_empty);
                                if usage_only {
                                    // The node's own usage chunk replaces it.
                                    continue;
                                }
                                if let Some(object) = value.as_object_mut() {
                                    if id.is_null() {
                                        id = object.get("id").cloned().unwrap_or(Value::Null);
                                        created = object.get("created").cloned().unwrap_or(created);
                                    }
                                    object.insert(
                                        "model".into(),
                                        Value::from(self.model_name.clone()),
                                    );
                                    // Usage is the node's to tell, once, verified.
                                    object.remove("usage");
                                }
                                // Straight into one buffer of about the event's size
                                // (`format!` of a `Value` goes through fmt's adapter
                                // and grows a String piece by piece).
                                let mut out =
                                    Vec::with_capacity(data.len() + self.model_name.len() + 16);
                                out.extend_from_slice(b"data: ");
                                if let Err(error) = serde_json::to_writer(&mut out, &value) {
                                    stream_error = Some((
                                        "provider_error",
                                        format!(
                                            "a provider's chunk could not be re-encoded: {error}"
                                        ),
                                    ));
                                    break;
                                }
                                out.extend_from_slice(b"\n\n");
                                raw = Bytes::from(out);
                            }
                        }
                        None => {}
                    }
                    if app_open && sender.send(Ok(raw)).await.is_err() {
                        app_open = false; // the application left; the report still tells the truth
                    }
                }
                if stream_error.is_some() {
                    break stream_error;
                }
            };
            let tokens = self.verified_tokens(&text, usage, Some(token_chunks));
            let outcome = match error {
                None => "ok",
                Some((outcome, message)) => {
                    tracing::warn!(session = self.ticket.session_id, %message, "stream failed");
                    if app_open {
                        // OpenAI clients raise an APIError on an error event.
                        let code = if outcome == "stopped" {
                            "stopping"
                        } else {
                            "provider_stream_failed"
                        };
                        let event = json!({"error": {"message": message, "type": "server_error", "code": code, "param": null}});
                        let _ = sender
                            .send(Ok(Bytes::from(format!("data: {event}\n\n"))))
                            .await;
                    }
                    outcome
                }
            };
            // The application's stream ends here; the report (a signature and a
            // round trip to the router) comes after it, off the response path.
            drop(sender);
            let verdict = match outcome {
                "ok" => Outcome::Pass,
                // R-NODE-5, R-REPORT-2: this node's own stop is not the provider's
                // fault: what was received is paid (pass), nothing received is void.
                "stopped" if tokens > 0 => Outcome::Pass,
                "stopped" => Outcome::Void,
                _ => Outcome::Fail,
            };
            let prompt = usage.map(|u| u.prompt_tokens);
            self.report(verdict, tokens, first_token_ms, prompt);
            count(&self.consumer, outcome);
        };
        let stream = RelayBody {
            relay: Some(Box::pin(relay)),
            receiver,
        };
        let mut response = Response::new(Body::from_stream(stream));
        let headers = response.headers_mut();
        headers.insert("content-type", "text/event-stream".parse().expect("header"));
        headers.insert("cache-control", "no-cache".parse().expect("header"));
        response
    }
}

/// A streamed answer's body: the relay (`Call::relay_stream`'s future, which reads
/// the provider's stream, rewrites each chunk into `receiver`'s channel and reports
/// at the end) is driven by the application's HTTP connection as it polls the body,
/// rather than on a task of its own: one task wake-up and one cross-task hand-off
/// less per chunk (issue 23, Performance). If the body is dropped before the relay
/// ends (the application left, or its connection broke), the relay goes on on a task
/// of its own: it reads the provider's answer to its end and reports it (R-NODE-2),
/// its sends to the application failing from then on.
struct RelayBody {
    /// `None` once the relay has ended.
    relay: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    receiver: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl futures_util::Stream for RelayBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        // The relay first: it fills the channel (and, at its end, closes it by
        // dropping the sender); both register this body's waker.
        if let Some(relay) = this.relay.as_mut() {
            if relay.as_mut().poll(cx).is_ready() {
                this.relay = None;
            }
        }
        let polled = this.receiver.poll_recv(cx);
        debug_assert!(
            !matches!(polled, std::task::Poll::Ready(None)) || this.relay.is_none(),
            "the channel closes only when the relay has ended"
        );
        polled
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        let Some(relay) = self.relay.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(relay);
            }
            // Outside a runtime (the process is ending) nothing can be sent any more.
            Err(_) => tracing::warn!("shutting down: a stream's relay ended early, not reported"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_report_1_elapsed_ms_rounds_up_and_is_never_zero() {
        assert_eq!(report_elapsed_ms(Duration::ZERO), 1);
        assert_eq!(report_elapsed_ms(Duration::from_micros(1)), 1);
        assert_eq!(report_elapsed_ms(Duration::from_micros(999)), 1);
        assert_eq!(report_elapsed_ms(Duration::from_millis(1)), 1);
        assert_eq!(report_elapsed_ms(Duration::from_micros(1_001)), 2);
        assert_eq!(report_elapsed_ms(Duration::from_millis(250)), 250);
        assert_eq!(report_elapsed_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn r_node_5_only_the_requests_own_4xx_is_void() {
        for code in [400, 413, 422] {
            assert!(
                is_request_fault(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        // The ticket's, the provider's or its upstream's problems are fails.
        for code in [401, 403, 404, 409, 410, 429, 500, 502, 503] {
            assert!(
                !is_request_fault(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    #[test]
    fn r_report_3_prompt_tokens_are_bounded_by_the_bytes_sent() {
        assert_eq!(report_prompt_tokens(Some(40), 1_000), 40);
        // A provider claiming more prompt tokens than bytes were sent is cut down.
        assert_eq!(report_prompt_tokens(Some(5_000), 1_000), 1_000);
        assert_eq!(report_prompt_tokens(None, 1_000), 1_000);
        assert_eq!(report_prompt_tokens(Some(u64::MAX), u64::MAX), 1 << 24);
    }
}
