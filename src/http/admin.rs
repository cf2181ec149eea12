//! The admin listener: `/metrics` for Prometheus, `/healthz` (the process runs) and
//! `/readyz` (an upstream token has been obtained).

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::state::Shared;

/// Registers the admin routes. The app must carry a `web::Data<Arc<Shared>>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn metrics(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    shared.budget.export(&shared.metrics, std::time::Instant::now());
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(shared.metrics.render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    let token = shared.token_cell.is_ready();
    let body = json!({"ready": token, "checks": {"upstream_token": if token { "ok" } else { "missing" }}});
    if token {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
