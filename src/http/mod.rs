//! courier's HTTP surface: the gateway routes for internal services and the admin routes
//! for operators, on separate listeners.

pub mod admin;
pub mod admin_lock;
mod admin_lockout;
mod admin_quota;
pub mod body;
pub mod connection;
pub mod errors;
pub mod inbound;
pub mod jobs;
pub mod limits;
pub mod observe;
pub mod openapi;
pub mod process;
pub mod ratelimit;
pub mod state;
pub mod tls;

use actix_web::http::header::HeaderValue;
use actix_web::http::Method;
use actix_web::{guard, web, HttpResponse, Route};

pub use errors::ApiError;
use inbound::{Done, Inbound};
pub use state::{Caller, Shared, Worker};

use crate::metrics::Route as RouteLabel;

/// Every route of the gateway listener: method, path pattern, handler. [`configure`] registers
/// exactly these, and the OpenAPI document (`GET /openapi.json`) must describe each one (tested).
fn gateway_routes() -> Vec<(Method, &'static str, Route)> {
    vec![
        (Method::POST, process::PATH, web::to(process::process)),
        (Method::GET, jobs::STATUS_PATH, web::to(jobs::status)),
        (Method::GET, openapi::PATH, web::to(openapi::serve)),
    ]
}

/// The gateway routes as (method, path pattern), for checking them against the API description.
pub fn routes() -> Vec<(Method, &'static str)> {
    gateway_routes().into_iter().map(|(method, path, _)| (method, path)).collect()
}

/// Registers the gateway routes. The app must carry a `web::Data<Worker>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut resources: Vec<(&'static str, Vec<(Method, Route)>)> = Vec::new();
    for (method, path, route) in gateway_routes() {
        match resources.iter_mut().find(|(p, _)| *p == path) {
            Some((_, routes)) => routes.push((method, route)),
            None => resources.push((path, vec![(method, route)])),
        }
    }
    for (path, routes) in resources {
        let allow = routes.iter().map(|(method, _)| method.as_str()).collect::<Vec<_>>().join(", ");
        let allow = HeaderValue::from_str(&allow).expect("method names are valid header text");
        let mut resource = web::resource(path);
        for (method, route) in routes {
            // A plain method comparison: actix's `Route::method` guard also records the allowed
            // methods in the request's data (a map and a list per request) for a 405 that
            // `refuse` below answers anyway.
            resource = resource.route(route.guard(guard::fn_guard(move |ctx| ctx.head().method == method)));
        }
        let refuse = move |inbound: Inbound| {
            let allow = allow.clone();
            async move { fallback(inbound, ApiError::MethodNotAllowed(allow)) }
        };
        cfg.service(resource.default_service(web::to(refuse)));
    }
    cfg.default_service(web::to(not_found));
}

async fn not_found(inbound: Inbound) -> HttpResponse {
    fallback(inbound, ApiError::NotFound)
}

/// Answers a request no route takes: 404, or 405 with `Allow` (unless its head is too large).
fn fallback(mut inbound: Inbound, error: ApiError) -> HttpResponse {
    let error = match &inbound.caller {
        Err(ApiError::HeadersTooLarge(limit)) => ApiError::HeadersTooLarge(*limit),
        _ => error,
    };
    // Not attributed to a client: a request no route takes is counted under `unknown`, so
    // clients' series hold only their routes' answers.
    inbound.caller = Err(error.clone());
    inbound.answer(RouteLabel::Other, "unmatched", Done::plain(Err(error)), |response, _| response)
}
