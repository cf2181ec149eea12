//! courier's HTTP surface: the gateway routes for internal services and the admin routes
//! for operators, on separate listeners.

pub mod admin;
pub mod body;
pub mod cached;
pub mod errors;
pub mod jobs;
pub mod limits;
pub mod observe;
pub mod process;
pub mod state;

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};

pub use errors::ApiError;
pub use state::{Caller, Shared, Worker};

use crate::metrics::Route;
use crate::request_id::RequestId;

/// Registers the gateway routes. The app must carry a `web::Data<Worker>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(process::PATH)
            .route(web::post().to(process::process))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource(jobs::STATUS_PATH)
            .route(web::get().to(jobs::status))
            .default_service(web::to(method_not_allowed)),
    )
    .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest, worker: web::Data<Worker>) -> HttpResponse {
    fallback(req, worker, ApiError::NotFound)
}

async fn method_not_allowed(req: HttpRequest, worker: web::Data<Worker>) -> HttpResponse {
    fallback(req, worker, ApiError::MethodNotAllowed)
}

fn fallback(req: HttpRequest, worker: web::Data<Worker>, error: ApiError) -> HttpResponse {
    let started = Instant::now();
    let request_id = RequestId::from_client(req.headers().get("x-request-id"));
    let error = worker.check_head(&req).err().unwrap_or(error);
    let response = error.response(&request_id);
    observe::inbound(
        &worker,
        observe::Inbound {
            route: Route::Other,
            endpoint: "unmatched",
            method: req.method(),
            status: response.status(),
            client: state::UNKNOWN_CALLER,
            request_id: &request_id,
            started,
            attempts: 0,
            error: Some(error.code()),
            cache: None,
        },
    );
    response
}
