//! Serving a valid process request through the response cache: hit, coalesced miss,
//! stale-while-revalidate, stale-if-error, and the client's `Cache-Control`.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::{HeaderMap, CACHE_CONTROL};
use actix_web::web;
use bytes::Bytes;

use super::errors::ApiError;
use super::state::Worker;
use crate::actors::budget::Class;
use crate::actors::{Dispatch, DispatchError, Patience};
use crate::cache::{CacheStatus, Entry, Lookup};
use crate::key::Key;
use crate::request_id::RequestId;

/// What the client asked of the cache with `Cache-Control`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-cache`: do not answer from the cache; fetch and refresh the entry.
    pub no_cache: bool,
    /// `no-store`: do not store this answer.
    pub no_store: bool,
}

impl Directives {
    /// Reads `Cache-Control` (every occurrence, comma-separated, case-insensitive).
    pub fn from_headers(headers: &HeaderMap) -> Directives {
        let mut directives = Directives::default();
        for value in headers.get_all(CACHE_CONTROL).filter_map(|v| v.to_str().ok()) {
            for token in value.split(',').map(|t| t.trim()) {
                directives.no_cache |= token.eq_ignore_ascii_case("no-cache");
                directives.no_store |= token.eq_ignore_ascii_case("no-store");
            }
        }
        directives
    }
}

/// One request on its way upstream.
#[derive(Clone)]
pub struct Ask {
    /// Its id.
    pub request_id: RequestId,
    /// The upstream body.
    pub body: Bytes,
    /// When the client stops waiting.
    pub deadline: Instant,
    /// The client, for fair sharing.
    pub client: usize,
    /// Its cache key, when the cache is on.
    pub key: Option<Key>,
    /// Its cache directives.
    pub directives: Directives,
    /// Its budget class: sync requests are interactive, async jobs background.
    pub class: Class,
}

/// The answer for a request, with what the cache did and the upstream attempts it took.
pub struct Served {
    /// The answer, or the error.
    pub result: Result<Arc<Entry>, ApiError>,
    /// What the cache did.
    pub status: CacheStatus,
    /// Upstream attempts made by this request (0 for hits and coalesced waiters).
    pub attempts: u32,
}

/// Why a load failed (shared by every coalesced waiter).
struct LoadFailure {
    error: DispatchError,
}

/// Errors after which an expired entry may be served instead (stale-if-error): the upstream
/// is down or failing, not the request.
fn upstream_side(error: &DispatchError) -> bool {
    matches!(
        error,
        DispatchError::CircuitOpen(_)
            | DispatchError::Failed(_)
            | DispatchError::DeadlineExceeded
            | DispatchError::AuthUnavailable(_)
    )
}

/// Sends `ask` upstream through this worker's Dispatcher (in place, same thread). An answer
/// that may be `cached` gets its own copy of the bytes; one that is only passed on shares the
/// upstream's body.
async fn dispatch(
    worker: &Worker,
    ask: &Ask,
    patience: Patience,
    cached: bool,
) -> (Result<Arc<Entry>, DispatchError>, u32) {
    let message = Dispatch {
        request_id: ask.request_id.clone(),
        body: ask.body.clone(),
        deadline: ask.deadline,
        client: ask.client,
        class: ask.class,
        patience,
    };
    let dispatched = worker.dispatcher.dispatch(message).await;
    let entry = dispatched.result.map(|ok| {
        Arc::new(match cached {
            true => Entry::new(&ok.result, ok.upstream_request_id),
            false => Entry::passing(ok.result, ok.upstream_request_id),
        })
    });
    (entry, dispatched.attempts)
}

/// Serves `ask`, from the cache when it can.
pub async fn serve(worker: &web::Data<Worker>, ask: Ask) -> Served {
    let cache = &worker.shared.cache;
    let key = match ask.key {
        Some(key) if cache.enabled() && !(ask.directives.no_cache && ask.directives.no_store) => key,
        _ => return direct(worker, &ask, None, false).await,
    };
    let now = Instant::now();
    if ask.directives.no_cache {
        let served = direct(worker, &ask, None, !ask.directives.no_store).await;
        if let (Ok(entry), false) = (&served.result, ask.directives.no_store) {
            cache.insert(key, entry.clone()).await;
        }
        return served;
    }
    match cache.lookup(&key, now).await {
        Lookup::Fresh(entry) => Served { result: Ok(entry), status: CacheStatus::Hit, attempts: 0 },
        Lookup::Revalidate(entry) => {
            revalidate(worker, &ask, key);
            Served { result: Ok(entry), status: CacheStatus::Stale, attempts: 0 }
        }
        // Boxed: held inline, a miss's future (the coalesced load under a timeout) made every
        // request's future 2.8 KB larger, hits and pass-through alike.
        Lookup::Expired(stale) => Box::pin(fetch(worker, &ask, key, Some(stale))).await,
        Lookup::Miss => Box::pin(fetch(worker, &ask, key, None)).await,
    }
}

/// Fetches without the cache (off, `no-cache` or `no-store`; `cached` when the caller stores the
/// answer afterwards); an expired entry may still stand in
/// for an upstream failure.
async fn direct(worker: &Worker, ask: &Ask, stale: Option<Arc<Entry>>, cached: bool) -> Served {
    let (result, attempts) = dispatch(worker, ask, Patience::Queue, cached).await;
    match result {
        Ok(entry) => Served { result: Ok(entry), status: CacheStatus::Bypass, attempts },
        Err(error) => fall_back(worker, stale, error, attempts, CacheStatus::Bypass),
    }
}

/// A miss: one coalesced upstream call per key, stored on success.
async fn fetch(worker: &web::Data<Worker>, ask: &Ask, key: Key, stale: Option<Arc<Entry>>) -> Served {
    if ask.directives.no_store {
        return direct(worker, ask, stale, false).await;
    }
    let attempts = Rc::new(Cell::new(0));
    let load = {
        let (worker, ask, attempts) = (worker.clone(), ask.clone(), attempts.clone());
        async move {
            let (result, made) = dispatch(&worker, &ask, Patience::Queue, true).await;
            attempts.set(made);
            result.map_err(|error| LoadFailure { error })
        }
    };
    let waited = ask.deadline.saturating_duration_since(Instant::now());
    let loaded = actix_rt::time::timeout(waited, worker.shared.cache.load(key, stale.as_ref(), load)).await;
    match loaded {
        Ok(Ok((entry, true))) => Served { result: Ok(entry), status: CacheStatus::Miss, attempts: attempts.get() },
        Ok(Ok((entry, false))) => {
            Served { result: Ok(entry), status: CacheStatus::Coalesced, attempts: attempts.get() }
        }
        Ok(Err(failure)) => {
            fall_back(worker, stale, failure.error.clone(), attempts.get(), miss_or_coalesced(&attempts))
        }
        Err(_elapsed) => {
            fall_back(worker, stale, DispatchError::DeadlineExceeded, attempts.get(), miss_or_coalesced(&attempts))
        }
    }
}

/// A failed load was this request's own (it made attempts) or a coalesced one's.
fn miss_or_coalesced(attempts: &Cell<u32>) -> CacheStatus {
    if attempts.get() > 0 {
        CacheStatus::Miss
    } else {
        CacheStatus::Coalesced
    }
}

/// Stale-if-error: an expired entry young enough replaces an upstream-side failure; else the
/// error goes out, labelled `status`.
fn fall_back(
    worker: &Worker,
    stale: Option<Arc<Entry>>,
    error: DispatchError,
    attempts: u32,
    status: CacheStatus,
) -> Served {
    let now = Instant::now();
    match stale {
        Some(entry) if upstream_side(&error) && worker.shared.cache.usable_if_error(&entry, now) => {
            Served { result: Ok(entry), status: CacheStatus::Stale, attempts }
        }
        _ => Served { result: Err(error.into()), status, attempts },
    }
}

/// Stale-while-revalidate: one background refresh per key, and only with a permit that is free
/// right now, so it never takes budget from live requests.
fn revalidate(worker: &web::Data<Worker>, ask: &Ask, key: Key) {
    let cache = worker.shared.cache.clone();
    if !cache.begin_refresh(key) {
        return;
    }
    let worker = worker.clone();
    let mut ask = ask.clone();
    ask.request_id = RequestId::generate();
    ask.class = Class::Background;
    ask.deadline = Instant::now() + worker.shared.config.request_deadline;
    actix_rt::spawn(async move {
        let (result, _) = dispatch(&worker, &ask, Patience::NoWait, true).await;
        if let Ok(entry) = result {
            cache.insert(key, entry).await;
        }
        cache.end_refresh(&key);
    });
}
