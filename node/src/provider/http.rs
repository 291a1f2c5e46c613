//! The provider's OpenAI API for ticket holders (R-NODE-1): the request's signature
//! and ticket are checked, `max_tokens` clamped to the ticket's TokenMax, the model
//! name replaced by the upstream's, usage asked for in streams; the answer is
//! relayed as it comes. Refusals are OpenAI-style errors: 401 bad signature, 403 not
//! your ticket, 409 ticket used, 410 expired, 502 upstream unreachable.

use super::tickets::ClaimError;
use super::Provider;
use crate::inference::{
    check_presented_ticket, recover_requester, PresentedTicketError, SESSION_HEADER,
    SIGNATURE_HEADER, TICKET_HEADER,
};
use crate::openai::{
    body_or_error, method_not_allowed, unknown_url, ApiError, ChatRequest, ChunkSummary, Endpoint,
    SseSplitter, Usage,
};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{StreamExt, TryFutureExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use yellowstone_wire::SessionTicket;

/// An SSE event from upstream larger than this is refused (bounded parsing).
const SSE_EVENT_BYTES_MAX: usize = 1024 * 1024;

pub fn router(provider: Arc<Provider>) -> Router {
    let body_max = provider.config.request_bytes_max as usize;
    Router::new()
        .route("/v1/chat/completions", post(completions))
        // R-NODE-6 (issue 23 case 9): legacy text completions, same checks.
        .route("/v1/completions", post(text_completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .fallback(unknown_url)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_max))
        // Every error carries `x-should-retry` (outsider review 3 finding 13).
        .layer(axum::middleware::from_fn(crate::openai::retry_hints))
        .with_state(provider)
}

async fn models(State(provider): State<Arc<Provider>>) -> Json<Value> {
    let mut data: Vec<Value> = provider
        .models
        .values()
        .map(|m| {
            json!({"id": m.offer.upstream_model, "object": "model", "created": 0,
                "owned_by": provider.key.address().to_string(), "yellowstone_model_id": m.offer.model_id,
                "price_wei_per_token": m.price_wei_per_token.to_string()})
        })
        .collect();
    data.sort_by_key(|m| m["yellowstone_model_id"].as_u64());
    Json(json!({"object": "list", "data": data}))
}

/// R-NODE-6: `GET /v1/models/{id}`, one entry of `GET /v1/models`, or 404
/// `model_not_found`.
async fn model(
    state: State<Arc<Provider>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Json(list) = models(state).await;
    list["data"]
        .as_array()
        .and_then(|data| data.iter().find(|m| m["id"] == id.as_str()))
        .map(|m| Json(m.clone()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!(
                    "The model `{}` is not served here (GET /v1/models lists them)",
                    crate::openai::truncate(&id, 256)
                ),
            )
        })
}

fn count(provider: &Provider, status: StatusCode) {
    provider
        .stats
        .requests
        .get_or_create(&vec![("status", status.as_u16().to_string())])
        .inc();
}

async fn completions(
    state: State<Arc<Provider>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    serve_endpoint(state, headers, body, Endpoint::Chat).await
}

async fn text_completions(
    state: State<Arc<Provider>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    serve_endpoint(state, headers, body, Endpoint::Completions).await
}

async fn serve_endpoint(
    State(provider): State<Arc<Provider>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    let body = body_or_error(body, provider.config.request_bytes_max);
    match std::future::ready(body)
        .and_then(|body| serve(&provider, &headers, body, endpoint))
        .await
    {
        Ok(response) => {
            count(&provider, response.status());
            response
        }
        Err(error) => {
            count(&provider, error.status);
            tracing::info!(status = error.status.as_u16(), code = error.code, message = %error.message, "request refused");
            error.into_response()
        }
    }
}

fn claim_error(error: ClaimError) -> ApiError {
    let message = error.to_string();
    match error {
        ClaimError::Unknown(_) | ClaimError::NotYourTicket { .. } => ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "not_your_ticket",
            message,
        ),
        ClaimError::Expired { .. } => ApiError::new(
            StatusCode::GONE,
            "invalid_request_error",
            "ticket_expired",
            message,
        ),
        ClaimError::Used(_) => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "ticket_used",
            message,
        ),
    }
}

/// Claims the session's ticket, waiting up to `ticket_wait_ms` for one that has not
/// arrived yet (the router sends it to both sides at once; the user may be faster).
async fn claim(
    provider: &Provider,
    session: u64,
    signer: yellowstone_wire::Address,
) -> Result<SessionTicket, ApiError> {
    let deadline = Instant::now() + Duration::from_millis(provider.config.ticket_wait_ms);
    loop {
        let arrived = provider.ticket_arrived.notified();
        let result = provider
            .tickets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .claim(session, signer, crate::unix_ms());
        match result {
            Err(ClaimError::Unknown(_)) if Instant::now() < deadline => {
                let _ = tokio::time::timeout_at(deadline.into(), arrived).await;
            }
            other => return other.map_err(claim_error),
        }
    }
}

async fn serve(
    provider: &Arc<Provider>,
    headers: &HeaderMap,
    body: Bytes,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let unauthorized = |message: String| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "bad_signature",
            format!("{message} (see docs/PROTOCOL.md, \"Direct user-provider HTTP\")"),
        )
    };
    // A header that is there but not visible ASCII is malformed, not missing.
    for name in [SESSION_HEADER, SIGNATURE_HEADER] {
        if headers.get(name).is_some_and(|v| v.to_str().is_err()) {
            return Err(unauthorized(format!(
                "header {name} is malformed: not visible ASCII"
            )));
        }
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (session, signer) = recover_requester(
        provider.config.network_id,
        header(SESSION_HEADER),
        header(SIGNATURE_HEADER),
        &body,
    )
    .map_err(|e| unauthorized(e.to_string()))?;
    let mut request = ChatRequest::parse(&body)?;
    // Every check of the request itself comes before the claim: a request refused
    // for its own content (400) leaves the ticket unused, to be sent again corrected.
    request.max_tokens()?;
    // R-NODE-4: only OpenAI's documented fields reach the model server, each
    // bounded (`n_predict`, `n: 64`, `ignore_eos`… would pass TokenMax by).
    request.check_fields(endpoint)?;
    // Outsider review 3 finding 2 (R-HA-3): the user's copy of the router-signed
    // ticket, checked whenever it is presented (a forged or altered one is refused
    // even when this provider holds the session's ticket), kept when this provider
    // has none (its copy was lost with a failed-over leader).
    if let Some(value) = headers.get(TICKET_HEADER) {
        let refused = |error: PresentedTicketError| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "ticket_invalid",
                error.to_string(),
            )
        };
        let value = value
            .to_str()
            .map_err(|_| refused(PresentedTicketError::Malformed("not visible ASCII".into())))?;
        let router = provider
            .router_address()
            .ok_or_else(|| refused(PresentedTicketError::RouterUnknown))?;
        let presented = check_presented_ticket(
            value,
            provider.config.network_id,
            router,
            provider.key.address(),
            session,
        )
        .map_err(refused)?;
        let mut tickets = provider.tickets.lock().unwrap_or_else(|e| e.into_inner());
        if !tickets.contains(session) {
            tracing::info!(session, "no ticket from the router for this session: the one the user presented verifies as the router's, kept (R-HA-3)");
            tickets.insert(presented, crate::unix_ms());
            provider.stats.tickets_held.set(tickets.len() as i64);
            provider.stats.tickets_presented.inc();
        }
    }
    let ticket = claim(provider, session, signer).await?;
    let model = provider.models.get(&ticket.model_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "not_your_ticket",
            format!("this provider does not serve model {}", ticket.model_id),
        )
    })?;
    // Counted in flight from the claim until the answer is sent (R-NODE-5: a graceful
    // stop waits for it).
    let in_flight = provider.in_flight();
    // R-SESSION-1: the inference begins: sign it to the router (queued, not
    // awaited), or the router closes the session after ticket_start_timeout_ms.
    provider.start_session(ticket.session_id).await;
    request.set_model(&model.offer.upstream_model);
    request.clamp_max_tokens(ticket.tokens_max)?;
    request.ask_usage_in_stream();
    let url = format!(
        "{}{}",
        model.offer.upstream_base_url.trim_end_matches('/'),
        endpoint.path()
    );
    let started = Instant::now();
    // R-PROV-4: the model server works for us until the answer is read: a health
    // check timing out meanwhile is not counted (a busy server is not a dead one).
    let upstream_call = provider
        .upstream_activity(&model.offer.upstream_base_url)
        .map(|activity| activity.call());
    debug_assert!(upstream_call.is_some(), "every model's upstream is tracked");
    let upstream = provider
        .upstream
        .post(&url)
        .header("content-type", "application/json")
        .body(request.to_bytes())
        .send()
        .await
        .map_err(|e| upstream_error(&url, e))?;
    if let Some(call) = &upstream_call {
        call.bytes();
    }
    let status = upstream.status();
    let content_type = upstream
        .headers()
        .get("content-type")
        .cloned()
        .unwrap_or_else(|| "application/json".parse().expect("header"));
    if !request.stream() || !status.is_success() {
        let bytes = read_bounded(
            &url,
            upstream,
            provider.config.response_bytes_max as usize,
            upstream_call.as_ref(),
        )
        .await?;
        provider
            .stats
            .upstream_seconds
            .observe(started.elapsed().as_secs_f64());
        if status.is_success() {
            if let Some(usage) = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .as_ref()
                .and_then(Usage::from_value)
            {
                provider.stats.tokens.inc_by(usage.completion_tokens);
            }
        }
        let mut response = (status, bytes).into_response();
        response.headers_mut().insert("content-type", content_type);
        return Ok(response);
    }
    // Streamed: relay every chunk as it comes, counting usage on the way.
    let tokens = provider.stats.tokens.clone();
    let latency = provider.stats.upstream_seconds.clone();
    let mut splitter = SseSplitter::new(SSE_EVENT_BYTES_MAX);
    let stream = upstream.bytes_stream().map(move |chunk| {
        // The stream owns the in-flight mark: it ends when the body is sent or dropped.
        let _in_flight = &in_flight;
        let chunk = chunk.map_err(std::io::Error::other)?;
        // So does the upstream call's mark (R-PROV-4), refreshed by every chunk.
        if let Some(call) = &upstream_call {
            call.bytes();
        }
        match splitter.push(&chunk) {
            Ok(events) => {
                for event in events {
                    if let Some(usage) = event.data.as_deref().and_then(ChunkSummary::usage_of) {
                        tokens.inc_by(usage.completion_tokens);
                        latency.observe(started.elapsed().as_secs_f64());
                    }
                }
            }
            Err(error) => return Err(std::io::Error::other(error)),
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", content_type);
    response
        .headers_mut()
        .insert("cache-control", "no-cache".parse().expect("header"));
    Ok(response)
}

/// Reads a whole answer of at most `max` bytes, marking each chunk's arrival on
/// `call` (R-PROV-4: the server is alive while it sends).
async fn read_bounded(
    url: &str,
    response: reqwest::Response,
    max: usize,
    call: Option<&super::health::UpstreamCall>,
) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| upstream_error(url, e))?;
        if let Some(call) = call {
            call.bytes();
        }
        if out.len() + chunk.len() > max {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "upstream_answer_too_large",
                format!("the model server's answer exceeds response_bytes_max ({max} bytes)"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

fn upstream_error(url: &str, error: reqwest::Error) -> ApiError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "unreachable"
    } else {
        "failed"
    };
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "server_error",
        "upstream_unavailable",
        format!("the provider's model server ({url}) {what}: {error}"),
    )
}
