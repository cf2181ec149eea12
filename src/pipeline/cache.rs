//! Stage 1 of the pipeline: the response cache. A fresh answer is served; a miss is loaded
//! once per key while identical requests wait on that load; stale-while-revalidate and
//! stale-if-error; the caller's cache directives.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::attempts::{self, Call, Patience};
use super::{Error, Pipeline, Request, Served};
use crate::actors::budget::Class;
use crate::cache::{CacheStatus, Entry, Lookup};
use crate::key::Key;
use crate::request_id::RequestId;
use crate::trace::{attrs, Span};
use opentelemetry::trace::SpanKind;

/// Why a load failed (shared by every coalesced waiter).
struct LoadFailure {
    error: Error,
}

/// Serves `request`, from the cache when it can, under a `courier.cache` span when traced.
pub async fn serve(pipeline: &Pipeline, request: Request) -> Served {
    if !request.trace.is_some() {
        return lookup(pipeline, request).await;
    }
    // Boxed, and the span made only here: held inline (or alive across the untraced path's
    // await), it would make every request's future larger, traced or not.
    let span = pipeline.lane.tracing.child(&request.trace, "courier.cache", SpanKind::Internal);
    Box::pin(traced(pipeline, request, span)).await
}

/// The cache stage under its span: the outcome, and a coalesced request's link to the load it
/// waited on.
async fn traced(pipeline: &Pipeline, mut request: Request, span: Option<Span>) -> Served {
    let Some(mut span) = span else {
        return lookup(pipeline, request).await;
    };
    if let (Some(key), true) = (&request.key, span.recording()) {
        span.set(attrs::CACHE_KEY, key.hex());
    }
    request.trace = span.parent();
    let key = request.key;
    let served = lookup(pipeline, request).await;
    span.set(attrs::CACHE_OUTCOME, served.status.label());
    if served.status == CacheStatus::Coalesced {
        let loaded = key.and_then(|key| pipeline.lane.tracing.loads()?.of(key.as_bytes()));
        if let Some(load) = loaded {
            span.link(load, "coalesced_onto");
        }
    }
    if let Err(error) = &served.result {
        span.fail(error.code());
    }
    span.end();
    served
}

/// The cache stage proper.
async fn lookup(pipeline: &Pipeline, request: Request) -> Served {
    let cache = &pipeline.cache;
    let directives = request.directives;
    let key = match request.key {
        Some(key) if cache.enabled() && !(directives.no_cache && directives.no_store) => key,
        _ => return direct(pipeline, &request, None, false).await,
    };
    if directives.no_cache {
        let served = direct(pipeline, &request, None, !directives.no_store).await;
        if let (Ok(entry), false) = (&served.result, directives.no_store) {
            cache.insert(key, entry.clone()).await;
        }
        return served;
    }
    match cache.lookup(&key, Instant::now()).await {
        Lookup::Fresh(entry) => Served { result: Ok(entry), status: CacheStatus::Hit, attempts: 0 },
        Lookup::Revalidate(entry) => {
            revalidate(pipeline, &request, key);
            Served { result: Ok(entry), status: CacheStatus::Stale, attempts: 0 }
        }
        // Boxed: held inline, a miss's future (the coalesced load under a timeout) would make
        // every request's future larger, hits and pass-through alike.
        Lookup::Expired(stale) => Box::pin(fetch(pipeline, &request, key, Some(stale))).await,
        Lookup::Miss => Box::pin(fetch(pipeline, &request, key, None)).await,
    }
}

/// Sends `request` upstream on this thread's lane. An answer that may be `cached` gets its own
/// copy of the bytes; one that is only passed on shares the upstream's body.
async fn call(
    pipeline: &Pipeline,
    request: &Request,
    patience: Patience,
    cached: bool,
) -> (Result<Arc<Entry>, Error>, u32) {
    let call = Call {
        request_id: request.request_id.clone(),
        body: request.body.clone(),
        deadline: request.deadline,
        client: request.client,
        class: request.class,
        patience,
        trace: request.trace.clone(),
    };
    // Boxed: the attempt loop's state (awc's send future included) is large, and inline it
    // would make every caller's future that large, copied whole when actix boxes it.
    let called = Box::pin(attempts::run(&pipeline.lane, call)).await;
    let entry = called.result.map(|ok| {
        Arc::new(match cached {
            true => Entry::new(&ok.result, ok.upstream_request_id),
            false => Entry::passing(ok.result, ok.upstream_request_id),
        })
    });
    (entry, called.attempts)
}

/// Fetches without the cache (off, `no-cache` or `no-store`; `cached` when the caller stores
/// the answer afterwards); an expired entry may still stand in for an upstream failure.
async fn direct(pipeline: &Pipeline, request: &Request, stale: Option<Arc<Entry>>, cached: bool) -> Served {
    let (result, attempts) = call(pipeline, request, Patience::Queue, cached).await;
    match result {
        Ok(entry) => Served { result: Ok(entry), status: CacheStatus::Bypass, attempts },
        Err(error) => fall_back(pipeline, stale, error, attempts, CacheStatus::Bypass),
    }
}

/// A miss: one coalesced upstream call per key, stored on success.
async fn fetch(pipeline: &Pipeline, request: &Request, key: Key, stale: Option<Arc<Entry>>) -> Served {
    if request.directives.no_store {
        return direct(pipeline, request, stale, false).await;
    }
    // Set by the load when this request runs it (with the attempts it made); a request that
    // waited on another's load made none, and is `coalesced` whatever the load came to.
    let ran = Rc::new(Cell::new(None::<u32>));
    let load = {
        let (pipeline, request, ran) = (pipeline.clone(), request.clone(), ran.clone());
        async move {
            ran.set(Some(0));
            // Coalesced waiters link to this load's span (a waiter reads it after the load ends).
            if let (Some(loads), Some(span)) = (pipeline.lane.tracing.loads(), request.trace.span_context()) {
                loads.started(key.as_bytes(), span);
            }
            let (result, made) = call(&pipeline, &request, Patience::Queue, true).await;
            ran.set(Some(made));
            result.map_err(|error| LoadFailure { error })
        }
    };
    let waited = request.deadline.saturating_duration_since(Instant::now());
    let loaded = actix_rt::time::timeout(waited, pipeline.cache.load(key, stale.as_ref(), load)).await;
    let status = if ran.get().is_some() { CacheStatus::Miss } else { CacheStatus::Coalesced };
    let attempts = ran.get().unwrap_or(0);
    match loaded {
        Ok(Ok((entry, _))) => Served { result: Ok(entry), status, attempts },
        Ok(Err(failure)) => fall_back(pipeline, stale, failure.error.clone(), attempts, status),
        Err(_elapsed) => fall_back(pipeline, stale, Error::DeadlineExceeded, attempts, status),
    }
}

/// Stale-if-error: an expired entry young enough replaces an upstream-side failure; else the
/// error goes out, labelled `status`.
fn fall_back(
    pipeline: &Pipeline,
    stale: Option<Arc<Entry>>,
    error: Error,
    attempts: u32,
    status: CacheStatus,
) -> Served {
    match stale {
        Some(entry) if error.upstream_side() && pipeline.cache.usable_if_error(&entry, Instant::now()) => {
            Served { result: Ok(entry), status: CacheStatus::Stale, attempts }
        }
        _ => Served { result: Err(error), status, attempts },
    }
}

/// Stale-while-revalidate: one background refresh per key, and only with a permit that is free
/// right now, so it never takes budget from live requests.
fn revalidate(pipeline: &Pipeline, request: &Request, key: Key) {
    let cache = pipeline.cache.clone();
    if !cache.begin_refresh(key) {
        return;
    }
    let pipeline = pipeline.clone();
    let mut request = request.clone();
    request.request_id = RequestId::generate();
    request.class = Class::Background;
    request.deadline = Instant::now() + pipeline.refresh_deadline;
    // The request that asked has its answer already: the refresh is not part of its trace.
    request.trace = crate::trace::Parent::NONE;
    actix_rt::spawn(async move {
        let (result, _) = call(&pipeline, &request, Patience::NoWait, true).await;
        if let Ok(entry) = result {
            cache.insert(key, entry).await;
        }
        cache.end_refresh(&key);
    });
}
