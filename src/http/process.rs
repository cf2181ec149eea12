//! `POST /api/external/process`: authenticate, validate, dispatch upstream, answer.

use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderMap, HeaderName, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::body;
use super::errors::ApiError;
use super::observe::{self, Inbound};
use super::state::{Worker, UNKNOWN_CALLER};
use crate::actors::budget::Class;
use crate::actors::Dispatch;
use crate::metrics::Route;
use crate::request_id::RequestId;

/// The route's path.
pub const PATH: &str = "/api/external/process";
/// Longest deadline a client may ask for with `X-Request-Timeout`.
const MAX_CLIENT_DEADLINE: Duration = Duration::from_secs(3600);

/// The handler.
pub async fn process(req: HttpRequest, payload: web::Payload, worker: web::Data<Worker>) -> HttpResponse {
    let started = Instant::now();
    let request_id = RequestId::from_client(req.headers().get("x-request-id"));
    let caller = worker.identify(&req);
    let (result, attempts) = match &caller {
        Ok(caller) => answer(&req, payload, &worker, &request_id, caller.index(), started).await,
        Err(error) => (Err(error.clone()), 0),
    };
    let (mut response, error) = match result {
        Ok(response) => (response, None),
        Err(error) => (error.response(&request_id), Some(error.code())),
    };
    if let Ok(caller) = &caller {
        for (name, value) in worker.shared.budget.client_headers(caller.index(), Instant::now()) {
            response.headers_mut().insert(HeaderName::from_static(name), value);
        }
    }
    let client = caller.map_or(UNKNOWN_CALLER, |c| worker.caller_name(c));
    observe::inbound(
        &worker,
        Inbound {
            route: Route::Process,
            endpoint: PATH,
            method: req.method(),
            status: response.status(),
            client,
            request_id: &request_id,
            started,
            attempts,
            error,
        },
    );
    response
}

async fn answer(
    req: &HttpRequest,
    payload: web::Payload,
    worker: &Worker,
    request_id: &RequestId,
    client: usize,
    started: Instant,
) -> (Result<HttpResponse, ApiError>, u32) {
    let prepared = async {
        require_json(req.headers())?;
        let deadline = started + deadline_of(req.headers(), worker.shared.config.request_deadline)?;
        let bytes = read_body(payload, req.headers(), worker.shared.config.max_body_bytes).await?;
        let request = body::parse(&bytes)?;
        Ok::<_, ApiError>((request, deadline))
    };
    let (request, deadline) = match prepared.await {
        Ok(ready) => ready,
        Err(error) => return (Err(error), 0),
    };
    let dispatch = Dispatch {
        request_id: request_id.clone(),
        body: request.upstream_body,
        deadline,
        client,
        class: Class::Interactive,
    };
    let dispatched = match worker.dispatcher.send(dispatch).await {
        Ok(dispatched) => dispatched,
        Err(_) => return (Err(ApiError::Overloaded(Duration::from_secs(1))), 0),
    };
    let result = dispatched.result.map_err(ApiError::from).map(|success| {
        let body = body::success_body(&success.result, request_id.as_str(), success.upstream_request_id.as_deref());
        HttpResponse::Ok()
            .insert_header(("x-request-id", request_id.header().clone()))
            .content_type("application/json")
            .body(body)
    });
    (result, dispatched.attempts)
}

/// `application/json` or `application/<something>+json`, parameters ignored.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let essence = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .ok_or(ApiError::UnsupportedMediaType)?;
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// The client's `X-Request-Timeout` (seconds) or the configured default.
fn deadline_of(headers: &HeaderMap, default: Duration) -> Result<Duration, ApiError> {
    let Some(value) = headers.get("x-request-timeout") else {
        return Ok(default);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .map(|secs| Duration::from_secs_f64(secs).min(MAX_CLIENT_DEADLINE))
        .ok_or(ApiError::InvalidRequest("X-Request-Timeout must be a number of seconds > 0".into()))
}

/// Reads the body up to `limit` bytes; refuses at once when Content-Length says it is larger.
async fn read_body(mut payload: web::Payload, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::InvalidRequest("the body could not be read".into()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
