//! `POST /api/external/process`: authenticate, validate, dispatch upstream, answer.

use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{web, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::body;
use super::errors::ApiError;
use super::inbound::{Done, Inbound};
use super::jobs::{self, NewJob};
use super::limits;
use super::ratelimit;
use super::state::Caller;
use crate::actors::budget::Class;
use crate::cache::CacheStatus;
use crate::key::Key;
use crate::metrics::Route;
use crate::pipeline::{Directives, Request};

/// The route's path.
pub const PATH: &str = "/api/external/process";
/// Longest deadline a client may ask for with `X-Request-Timeout`.
const MAX_CLIENT_DEADLINE: Duration = Duration::from_secs(3600);
/// Header names built at compile time (`from_static` at run time checks every byte again).
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const X_CACHE_KEY: HeaderName = HeaderName::from_static("x-cache-key");
const X_REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout");

/// What answering a request came to, before the common headers are added.
struct Outcome {
    result: Result<HttpResponse, ApiError>,
    attempts: u32,
    cache: Option<(CacheStatus, Option<Key>)>,
    /// When the pipeline answered (a sync request that reached it): the clock reading its
    /// rate headers and log line use too.
    answered: Option<Instant>,
}

impl Outcome {
    fn early(error: ApiError) -> Outcome {
        Outcome { result: Err(error), attempts: 0, cache: None, answered: None }
    }
}

/// Processes a request through the upstream: answered at once, or accepted as a job (202) with
/// `"options": {"async": true}`.
#[utoipa::path(post, path = PATH, operation_id = "process", tag = "process", params(super::openapi::ProcessHeaders),
    request_body = super::openapi::ProcessRequest, responses(super::openapi::ProcessResponses))]
pub async fn process(inbound: Inbound, mut payload: web::Payload) -> HttpResponse {
    let worker = &inbound.worker;
    let outcome = match &inbound.caller {
        // Counted in flight from here until the answer is built, sync or async alike.
        Ok(caller) => match worker.admit(*caller) {
            Ok(_in_flight) => answer(&inbound, &mut payload, *caller).await,
            Err(error) => Outcome::early(error),
        },
        Err(error) => Outcome::early(error.clone()),
    };
    let cache = outcome.cache;
    let now = outcome.answered.unwrap_or_else(Instant::now);
    let done = Done {
        result: outcome.result,
        attempts: outcome.attempts,
        cache: cache.map(|(status, _)| status.label()),
        at: Some(now),
    };
    inbound.answer(Route::Process, PATH, done, |response, failed| {
        let mut response = match failed {
            true => limits::closing_unread(response, payload),
            false => response,
        };
        let headers = response.headers_mut();
        if let Ok(caller) = &inbound.caller {
            let quota = worker.shared.quota.as_ref().map(|q| q.client_quota(caller.index()));
            for (name, value) in ratelimit::headers(&worker.shared.budget, quota.as_ref(), caller.index(), now) {
                headers.insert(name, value);
            }
        }
        if let Some((status, key)) = cache {
            worker.shared.cache.count(status);
            headers.insert(X_CACHE, HeaderValue::from_static(status.header()));
            if let Some(key) = key {
                headers.insert(X_CACHE_KEY, key.header());
            }
        }
        response
    })
}

async fn answer(inbound: &Inbound, payload: &mut web::Payload, caller: Caller) -> Outcome {
    let (req, worker, request_id, started) = (inbound.request(), &inbound.worker, &inbound.request_id, inbound.started);
    let owner = worker.owner_name(caller);
    let config = &worker.shared.config;
    let prepared = async {
        require_json(req.headers())?;
        let deadline = started + deadline_of(req.headers(), config.request_deadline)?;
        let body_timeout = config.limits.client_body_timeout;
        let bytes = limits::before(started + body_timeout, read_body(payload, req.headers(), config.max_body_bytes))
            .await
            .ok_or_else(|| worker.refused(ApiError::RequestBodyTimeout(body_timeout)))??;
        let rules = body::Rules { want_key: worker.shared.cache.enabled(), max_depth: config.limits.max_json_depth };
        let request = body::parse(&bytes, rules)?;
        Ok::<_, ApiError>((request, deadline))
    };
    let (request, deadline) = match prepared.await {
        Ok(ready) => ready,
        Err(error) => {
            jobs::record_refused(worker, request_id, owner, started, &error);
            return Outcome::early(error);
        }
    };
    if request.is_async {
        let new = NewJob {
            request_id: request_id.clone(),
            owner: owner.map(str::to_owned),
            client: caller.index(),
            body: request.upstream_body,
            key: request.cache_key,
            callback_url: request.callback_url,
            trace: inbound.stored_trace(),
        };
        let result = jobs::accept(worker, new).await;
        match &result {
            // The store could not take the job: it keeps no trace of it either, so the id stays
            // free for the client's retry (a failed entry would make that retry a 409).
            Err(ApiError::JobStoreUnavailable) => {}
            Err(error) => jobs::record_refused(worker, request_id, owner, started, error),
            Ok(_) => {}
        }
        return Outcome { result, attempts: 0, cache: None, answered: None };
    }
    let ask = Request {
        request_id: request_id.clone(),
        body: request.upstream_body,
        deadline,
        client: caller.index(),
        key: request.cache_key,
        directives: directives(req.headers()),
        class: Class::Interactive,
        trace: inbound.trace(),
    };
    let served = worker.pipeline.serve(ask).await;
    let answered = Instant::now();
    jobs::record_sync(worker, request_id, owner, jobs::Timing { started, answered }, &served);
    let result = served.result.map_err(ApiError::from).map(|entry| {
        let body = body::success_body(&entry.result, request_id.as_str(), entry.upstream_request_id.as_deref());
        // `X-Request-Id` is added by `Inbound::answer`, as to every answer.
        let mut response = HttpResponse::Ok();
        response.insert_header((CONTENT_TYPE, body::JSON));
        if matches!(served.status, CacheStatus::Hit | CacheStatus::Stale) {
            response.insert_header((AGE, entry.age(answered)));
        }
        response.body(body)
    });
    Outcome {
        result,
        attempts: served.attempts,
        cache: Some((served.status, request.cache_key)),
        answered: Some(answered),
    }
}

/// What the client asked of the cache with `Cache-Control` (every occurrence, comma-separated,
/// case-insensitive).
fn directives(headers: &HeaderMap) -> Directives {
    let mut directives = Directives::default();
    for value in headers.get_all(CACHE_CONTROL).filter_map(|v| v.to_str().ok()) {
        for token in value.split(',').map(|t| t.trim()) {
            directives.no_cache |= token.eq_ignore_ascii_case("no-cache");
            directives.no_store |= token.eq_ignore_ascii_case("no-store");
        }
    }
    directives
}

/// `application/json` or `application/<something>+json`, parameters ignored, in any case
/// (compared in place: this runs on every request).
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes).ok_or(ApiError::UnsupportedMediaType)?;
    let essence = value.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
    let starts = |prefix: &[u8]| essence.get(..prefix.len()).is_some_and(|s| s.eq_ignore_ascii_case(prefix));
    let ends = |suffix: &[u8]| {
        essence.len().checked_sub(suffix.len()).is_some_and(|at| essence[at..].eq_ignore_ascii_case(suffix))
    };
    let json = essence.eq_ignore_ascii_case(b"application/json") || (starts(b"application/") && ends(b"+json"));
    if json && essence.is_ascii() {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// The client's `X-Request-Timeout` (seconds) or the configured default (public for the fuzz
/// target).
pub fn deadline_of(headers: &HeaderMap, default: Duration) -> Result<Duration, ApiError> {
    let Some(value) = headers.get(X_REQUEST_TIMEOUT) else {
        return Ok(default);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        // Capped before converting: `from_secs_f64` panics on values beyond `Duration::MAX`.
        .map(|secs| Duration::from_secs_f64(secs.min(MAX_CLIENT_DEADLINE.as_secs_f64())))
        .ok_or(ApiError::InvalidRequest("X-Request-Timeout must be a number of seconds > 0".into()))
}

/// Reads the body up to `limit` bytes; refuses at once when Content-Length says it is larger.
async fn read_body(payload: &mut web::Payload, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    // A body that comes in one chunk (the usual case) is taken as it is, without a copy; only
    // a second chunk starts a buffer.
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::InvalidRequest("the body could not be read".into()))?;
        let so_far = joined.as_ref().map_or(first.len(), BytesMut::len);
        if so_far + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        match &mut joined {
            Some(body) => body.extend_from_slice(&chunk),
            None if first.is_empty() => first = chunk,
            None => {
                let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).max(so_far + chunk.len()));
                body.extend_from_slice(&first);
                body.extend_from_slice(&chunk);
                joined = Some(body);
            }
        }
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};

    use super::{process, require_json};

    /// The size of the future an async handler returns, without calling it.
    fn future_size<A, B, F>(_handler: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_request_in_flight_holds_a_small_future() {
        // actix allocates the handler's future for every request until it is answered: what
        // only a cache miss needs (the coalesced load under its timeout, the attempt loop) is
        // boxed where a miss takes it, so hits and pass-through do not carry it. A hit's own
        // lookup (moka's) stays inline: boxing it would cost every hit an allocation.
        let size = future_size(process);
        assert!(size <= 3072, "the process handler's future is {size} bytes");
    }

    fn accepts(content_type: Option<&[u8]>) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(value) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_bytes(value).unwrap());
        }
        require_json(&headers).is_ok()
    }

    #[test]
    fn json_media_types_are_accepted_in_any_case_with_parameters() {
        for ok in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b" application/json ;q=1",
            b"application/vnd.api+json",
            b"APPLICATION/PROBLEM+JSON",
        ] {
            assert!(accepts(Some(ok)), "{}", String::from_utf8_lossy(ok));
        }
        for refused in [
            &b"text/plain"[..],
            b"application/jsonx",
            b"text/json",
            b"application/json+xml",
            b"+json",
            b"",
            b"application/\xff+json",
        ] {
            assert!(!accepts(Some(refused)), "{}", String::from_utf8_lossy(refused));
        }
        assert!(!accepts(None));
    }
}
