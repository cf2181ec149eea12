//! The admin listener: `/metrics` for Prometheus, `/healthz` (the process runs), `/readyz`
//! (a usable upstream token is held), open to scrapers and probes; and the `/admin/*` routes
//! (force the circuit, purge the cache, lift a lockout, see the state), locked by the admin token (see
//! [`super::admin_lock`]).

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::Method;
use actix_web::{web, HttpResponse, Route};
use serde::Deserialize;
use serde_json::json;

use super::state::Shared;
use crate::actors::{BreakerSnapshot, Force, GetSnapshot, Mode, TokenHealth};
use crate::key::Key;

/// Every route of the admin listener: method, path pattern, handler. Each is locked by the
/// admin token unless its path is in [`super::admin_lock::OPEN_PATHS`].
fn admin_routes() -> Vec<(Method, &'static str, Route)> {
    vec![
        (Method::GET, "/metrics", web::to(metrics)),
        (Method::GET, "/healthz", web::to(healthz)),
        (Method::GET, "/readyz", web::to(readyz)),
        (Method::GET, "/admin/state", web::to(state)),
        (Method::POST, "/admin/breaker", web::to(force_breaker)),
        (Method::GET, "/admin/breaker", web::to(breaker_state)),
        (Method::DELETE, "/admin/cache", web::to(purge_cache)),
        (Method::DELETE, "/admin/cache/{key}", web::to(purge_cache_entry)),
        (Method::PUT, "/admin/quota/{window}", web::to(super::admin_quota::set_used)),
        (Method::DELETE, "/admin/lockouts/{source}", web::to(super::admin_lockout::lift)),
    ]
}

/// The admin routes as (method, path pattern): the audit names a request by its pattern, and
/// tests check every locked one.
pub fn routes() -> Vec<(Method, &'static str)> {
    admin_routes().into_iter().map(|(method, path, _)| (method, path)).collect()
}

/// Registers the admin routes. The app must carry a `web::Data<Arc<Shared>>`, and be wrapped
/// in [`super::admin_lock::lock`].
pub fn configure(cfg: &mut web::ServiceConfig) {
    for (method, path, route) in admin_routes() {
        cfg.route(path, route.method(method));
    }
}

/// Brings the gauges that describe state (budget, cache, jobs, token) up to date.
async fn refresh(shared: &Shared) {
    let metrics = &shared.metrics;
    let now = Instant::now();
    shared.budget.export(metrics, now);
    if let Some(quota) = &shared.quota {
        quota.export();
    }
    shared.cache.export(metrics).await;
    if let Ok(backlog) = shared.jobs.store.backlog().await {
        let processing = metrics.jobs.with_label_values(&["processing"]).get();
        metrics.jobs.with_label_values(&["pending"]).set((backlog as i64 - processing).max(0));
    }
    let expires_in = shared.token_cell.load().map_or(0.0, |token| match token.expires_at.checked_duration_since(now) {
        Some(left) => left.as_secs_f64(),
        None => -now.duration_since(token.expires_at).as_secs_f64(),
    });
    metrics.token_expires_in.set(expires_in);
    metrics.ready.set(i64::from(shared.token_cell.health(now) == TokenHealth::Ok));
}

/// The token as `/admin/state` shows it: usable or not, and why not.
fn token_state(shared: &Shared, now: Instant) -> serde_json::Value {
    let cell = &shared.token_cell;
    let token = cell.load();
    let health = cell.health(now);
    let trouble = cell.trouble().filter(|_| health != TokenHealth::Ok);
    json!({
        "ready": health == TokenHealth::Ok,
        "state": health.as_str(),
        "generation": token.as_ref().map(|t| t.generation),
        "expires_in_seconds": token.as_ref().map(|_| shared.metrics.token_expires_in.get()),
        "error": trouble.as_ref().map(|t| t.reason.clone()),
        "retry_in_seconds": trouble.and_then(|t| t.retry_at).map(|at| at.saturating_duration_since(now).as_secs_f64()),
    })
}

async fn metrics(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    refresh(&shared).await;
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(shared.metrics.render())
}

/// `GET /admin/state`: one JSON snapshot of what the actors own.
async fn state(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    refresh(&shared).await;
    let m = &shared.metrics;
    HttpResponse::Ok().json(json!({
        "shared_state": shared.shared_mode(),
        "token": token_state(&shared, Instant::now()),
        "budget": {
            "limit_per_minute": shared.config.rate_limit_per_minute,
            "burst": shared.config.rate_burst,
            "permits_available": m.budget_available.get(),
            "queue_depth": m.budget_queue_depth.get(),
            "queue_max": shared.config.queue_max,
        },
        "fleet": shared.fleet.as_ref().map(|fleet| json!({
            "replicas": fleet.replicas(),
            "id": fleet.id(),
            "last_seen_seconds_ago": fleet.last_seen_ago().map(|ago| ago.as_secs_f64()),
        })),
        "breaker": snapshot(&shared).await,
        "quota": shared.quota.as_ref().map(|q| q.state_json()),
        "lockouts": shared.lockout.as_ref().map(|l| l.state_json()),
        "cache": {
            "enabled": shared.cache.enabled(),
            "entries": m.cache_entries.get(),
            "bytes": m.cache_bytes.get(),
            "max_bytes": shared.config.cache_max_bytes,
        },
        "jobs": {
            "store": if shared.jobs.store.durable() { "redis" } else { "memory" },
            "pending": m.jobs.with_label_values(&["pending"]).get(),
            "processing": m.jobs.with_label_values(&["processing"]).get(),
            "completed": m.jobs_finished.with_label_values(&["completed"]).get(),
            "failed": m.jobs_finished.with_label_values(&["failed"]).get(),
        },
    }))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn snapshot(shared: &Shared) -> Option<BreakerSnapshot> {
    shared.breaker.send(GetSnapshot).await.ok()
}

/// Ready while a usable token is held: not before the first one (`missing`), nor while the
/// last one is rejected or expired and no new one can be had (`unavailable`, with the reason),
/// since every request that needs the upstream then gets 503 `upstream_auth_unavailable`. An
/// open circuit is reported, not a reason to be unready: it is the upstream's state, the same
/// for every replica, and taking them all out of the load balancer would turn fast, clear 503s
/// into connection errors.
async fn readyz(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    let now = Instant::now();
    let health = shared.token_cell.health(now);
    let ready = health == TokenHealth::Ok;
    let breaker = snapshot(&shared).await;
    let mut body = json!({
        "ready": ready,
        "checks": {"upstream_token": health.as_str(), "shared_state": shared.shared_mode()},
        "breaker": breaker,
    });
    if let Some(trouble) = shared.token_cell.trouble().filter(|_| !ready) {
        body["upstream_token_error"] = json!(trouble.reason);
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceRequest {
    mode: String,
}

pub(super) fn error(status: actix_web::http::StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .json(json!({"success": false, "error": {"code": code, "message": message, "retryable": false}}))
}

/// `{"mode": "open" | "closed" | "auto"}`: force the circuit open or closed, or give it back
/// to the automatic policy. Answers the breaker's state.
async fn force_breaker(shared: web::Data<Arc<Shared>>, body: web::Bytes) -> HttpResponse {
    let mode = match serde_json::from_slice::<ForceRequest>(&body).map(|r| r.mode) {
        Ok(mode) if mode == "open" || mode == "forced_open" => Mode::ForcedOpen,
        Ok(mode) if mode == "closed" || mode == "forced_closed" => Mode::ForcedClosed,
        Ok(mode) if mode == "auto" => Mode::Auto,
        _ => {
            return error(
                actix_web::http::StatusCode::BAD_REQUEST,
                "invalid_request",
                "send {\"mode\": \"open\" | \"closed\" | \"auto\"}",
            )
        }
    };
    match shared.breaker.send(Force { mode }).await {
        Ok(snapshot) => HttpResponse::Ok().json(snapshot),
        Err(_) => error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, "overloaded", "the breaker is busy; retry"),
    }
}

async fn breaker_state(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    match snapshot(&shared).await {
        Some(snapshot) => HttpResponse::Ok().json(snapshot),
        None => error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, "overloaded", "the breaker is busy; retry"),
    }
}

/// `DELETE /admin/cache`: drops every cached answer.
async fn purge_cache(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    shared.cache.purge_all().await;
    slog::info!(shared.log, "cache_purged"; "scope" => "all");
    HttpResponse::Ok().json(json!({"purged": "all"}))
}

/// `DELETE /admin/cache/{key}`: drops one answer, named by its `X-Cache-Key`.
async fn purge_cache_entry(shared: web::Data<Arc<Shared>>, key: web::Path<String>) -> HttpResponse {
    let Some(key) = Key::from_hex(&key) else {
        return error(
            actix_web::http::StatusCode::BAD_REQUEST,
            "invalid_request",
            "the key is 64 hex digits (X-Cache-Key)",
        );
    };
    if shared.cache.purge(&key).await {
        slog::info!(shared.log, "cache_purged"; "scope" => "one");
        HttpResponse::Ok().json(json!({"purged": key.hex()}))
    } else {
        error(actix_web::http::StatusCode::NOT_FOUND, "not_found", "no cached answer has this key")
    }
}
