//! Routing, the OAuth token endpoint and the `/_sim` control plane.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::credentials::CredentialsPatch;
use super::faults::FaultsPatch;
use super::process::process;
use super::quota::QuotasPatch;
use super::reply::{api_error, json_response, raw_json};
use super::state::Shared;
use super::stats::TokenOutcome;
use super::tokens::{constant_time_eq, unix_ms};

/// Largest accepted request body (bigger ones get 413).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Registers every route on an `App`.
pub(crate) fn configure(sim: web::Data<Shared>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(sim)
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .service(
                web::scope("/v2")
                    .service(endpoint("/oauth/token", web::post().to(token)))
                    .service(endpoint("/process", web::post().to(process))),
            )
            .service(
                web::scope("/_sim")
                    .service(
                        web::resource("/faults")
                            .route(web::get().to(get_faults))
                            .route(web::post().to(post_faults))
                            .default_service(web::to(method_not_allowed)),
                    )
                    .service(
                        web::resource("/credentials")
                            .route(web::get().to(get_credentials))
                            .route(web::post().to(post_credentials))
                            .default_service(web::to(method_not_allowed)),
                    )
                    .service(
                        web::resource("/callbacks")
                            .route(web::get().to(get_callbacks))
                            .route(web::post().to(post_callback))
                            .default_service(web::to(method_not_allowed)),
                    )
                    .service(
                        web::resource("/quotas")
                            .route(web::get().to(get_quotas))
                            .route(web::post().to(post_quotas))
                            .default_service(web::to(method_not_allowed)),
                    )
                    .service(endpoint("/stats", web::get().to(get_stats)))
                    .service(endpoint("/stats/reset", web::post().to(reset_stats))),
            )
            .default_service(web::to(not_found));
    }
}

/// A resource with one route that answers 405 JSON to other methods.
fn endpoint(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path).route(route).default_service(web::to(method_not_allowed))
}

async fn not_found() -> HttpResponse {
    api_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> HttpResponse {
    api_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
}

/// The client-credentials form of RFC 6749 section 4.4.
#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

async fn token(body: Result<web::Bytes, actix_web::Error>, sim: web::Data<Shared>) -> HttpResponse {
    let (outcome, mut resp) = issue_token(body, &sim);
    sim.stats.record_token(outcome);
    resp.headers_mut().insert(header::CACHE_CONTROL, NO_STORE);
    resp
}

fn issue_token(body: Result<web::Bytes, actix_web::Error>, sim: &Shared) -> (TokenOutcome, HttpResponse) {
    let oauth_error = |status: StatusCode, error: &'static str| {
        let body = format!(r#"{{"error":"{error}"}}"#);
        (TokenOutcome::Rejected, raw_json(status, body))
    };
    let Some(form) = body.ok().and_then(|b| serde_urlencoded::from_bytes::<TokenForm>(&b).ok()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    if form.grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let matches = |given: Option<&str>, expected: &str| {
        given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()))
    };
    let id_ok = matches(form.client_id.as_deref(), &sim.client_id);
    let secret_ok = id_ok && form.client_secret.is_some_and(|given| sim.credentials.client_secret(given.as_bytes()));
    if !secret_ok {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if sim.faults.token_failure() {
        let (_, resp) = oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");
        return (TokenOutcome::Failed, resp);
    }
    let token = sim.tokens.issue(unix_ms());
    let body = format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{}}}"#, sim.headers.expires_in);
    (TokenOutcome::Ok, raw_json(StatusCode::OK, body))
}

async fn get_faults(sim: web::Data<Shared>) -> HttpResponse {
    json_response(StatusCode::OK, &sim.faults_snapshot())
}

async fn post_faults(body: web::Bytes, sim: web::Data<Shared>) -> HttpResponse {
    let patch: FaultsPatch = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(err) => {
            let message = format!("invalid faults patch: {err}");
            return api_error(StatusCode::BAD_REQUEST, "invalid_request", &message);
        }
    };
    if let Err(message) = patch.validate() {
        return api_error(StatusCode::BAD_REQUEST, "invalid_request", &message);
    }
    json_response(StatusCode::OK, &sim.apply_patch(&patch))
}

async fn get_credentials(sim: web::Data<Shared>) -> HttpResponse {
    json_response(StatusCode::OK, &sim.credentials.uses())
}

/// Replaces the accepted client secrets and/or API keys; answers with the uses (all zero for
/// a replaced list), never the values.
async fn post_credentials(body: web::Bytes, sim: web::Data<Shared>) -> HttpResponse {
    let patch: CredentialsPatch = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(err) => {
            let message = format!("invalid credentials patch: {err}");
            return api_error(StatusCode::BAD_REQUEST, "invalid_request", &message);
        }
    };
    if let Err(message) = patch.validate() {
        return api_error(StatusCode::BAD_REQUEST, "invalid_request", &message);
    }
    sim.credentials.apply(&patch);
    json_response(StatusCode::OK, &sim.credentials.uses())
}

async fn get_callbacks(sim: web::Data<Shared>) -> HttpResponse {
    json_response(StatusCode::OK, &sim.callbacks.report())
}

/// Records a callback and answers 200 with what was recorded (whether it verified or not: the
/// sink is there to show what arrived).
async fn post_callback(req: HttpRequest, body: web::Bytes, sim: web::Data<Shared>) -> HttpResponse {
    let signature = req.headers().get("x-courier-signature").and_then(|v| v.to_str().ok());
    json_response(StatusCode::OK, &sim.callbacks.receive(signature, &body))
}

async fn get_quotas(sim: web::Data<Shared>) -> HttpResponse {
    json_response(StatusCode::OK, &sim.quotas.report(unix_ms()))
}

/// Replaces the windows, sets used counts, resets or switches the header style; a bad patch is
/// refused whole with 400.
async fn post_quotas(body: web::Bytes, sim: web::Data<Shared>) -> HttpResponse {
    let result = serde_json::from_slice::<QuotasPatch>(&body)
        .map_err(|err| format!("invalid quotas patch: {err}"))
        .and_then(|patch| sim.apply_quotas(&patch));
    match result {
        Ok(report) => json_response(StatusCode::OK, &report),
        Err(message) => api_error(StatusCode::BAD_REQUEST, "invalid_request", &message),
    }
}

async fn get_stats(sim: web::Data<Shared>) -> HttpResponse {
    json_response(StatusCode::OK, &sim.stats_snapshot())
}

async fn reset_stats(sim: web::Data<Shared>) -> HttpResponse {
    sim.reset_stats();
    json_response(StatusCode::OK, &sim.stats_snapshot())
}
