//! `GET /openapi.json`: the OpenAPI 3.1 description of the gateway API, generated from the code.
//!
//! Paths come from the handlers' `#[utoipa::path]` attributes; bodies from `ToSchema` derives on
//! the types courier serialises (the status document, the 202 answer, the error body); error
//! answers from [`ApiError`](super::ApiError), which sets their status, `code` and
//! `Retry-After`. What courier reads or writes without a type (the process request, validated
//! by hand; the success answer, written as bytes) is described in [`schemas`] and tied to that
//! code by tests. Tests also check that every route the gateway registers is described, and a
//! contract fuzzer (schemathesis, in `scripts/test-all`) checks that the answers of a running
//! courier conform.
//!
//! The document is built once per process and kept as bytes. It depends on one setting: with
//! client identities (`COURIER_CLIENTS_FILE`) the API requires `Authorization: Bearer <key>`.

mod responses;
mod schemas;

use std::sync::OnceLock;

use actix_web::HttpResponse;
use bytes::Bytes;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::OpenApi;

pub use responses::{process_errors, status_errors, OpenApiResponses, ProcessResponses, StatusResponses};
pub use schemas::{
    error_code, job_error_code, ProcessHeaders, ProcessRequest, ProcessResult, RequestIdHeader, StatusPath,
};

use super::inbound::{Done, Inbound};
use super::ApiError;
use crate::metrics::Route;

/// The route's path.
pub const PATH: &str = "/openapi.json";

/// The security scheme's name.
const CLIENT_KEY: &str = "client_key";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "courier",
        description = "A resilient gateway in front of one rate-limited upstream API. Every error answer has \
            the `Error` shape; its `code` says what happened and `retryable` whether to try again (after \
            `Retry-After` when given). Unknown paths answer 404 `not_found`; other methods on a known path \
            answer 405 `method_not_allowed` with `Allow`."
    ),
    paths(super::process::process, super::jobs::status, serve),
    components(schemas(crate::http::errors::ErrorBody, ProcessResult, super::jobs::Accepted, crate::jobs::StatusDoc)),
    tags(
        (name = "process", description = "Send a request to the upstream, at once or as a job."),
        (name = "status", description = "Look up any request by its id."),
        (name = "meta", description = "This description.")
    )
)]
struct ApiDoc;

/// The API description; with `client_keys`, every operation but this one requires a client key.
pub fn document(client_keys: bool) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // A failed job's `code` is one of the API's error codes or a job's own: the job types
    // (below the HTTP layer) cannot name the HTTP layer's codes, so they are listed here.
    if let Some(RefOr::T(Schema::Object(job_error))) =
        doc.components.as_mut().and_then(|components| components.schemas.get_mut("JobError"))
    {
        job_error.properties.insert("code".into(), RefOr::T(Schema::Object(job_error_code())));
    }
    if client_keys {
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("A client key of COURIER_CLIENTS_FILE."))
            .build();
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(CLIENT_KEY, SecurityScheme::Http(bearer));
        doc.security = Some(vec![SecurityRequirement::new(CLIENT_KEY, Vec::<String>::new())]);
    }
    doc
}

/// The document as JSON, built once per setting.
pub fn document_json(client_keys: bool) -> Bytes {
    static DOCUMENTS: [OnceLock<Bytes>; 2] = [OnceLock::new(), OnceLock::new()];
    DOCUMENTS[usize::from(client_keys)]
        .get_or_init(|| {
            let mut value = serde_json::to_value(document(client_keys)).expect("the API description serialises");
            camel_case_links(&mut value);
            Bytes::from(serde_json::to_vec(&value).expect("JSON values serialise"))
        })
        .clone()
}

/// utoipa 5 writes a Link's `operationId` as `operation_id` (fixed in utoipa 6, which needs a
/// newer Rust than courier's minimum); this renames it wherever a `links` map appears.
fn camel_case_links(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(links)) = map.get_mut("links") {
                for link in links.values_mut().filter_map(Value::as_object_mut) {
                    if let Some(id) = link.remove("operation_id") {
                        link.insert("operationId".into(), id);
                    }
                }
            }
            map.values_mut().for_each(camel_case_links);
        }
        Value::Array(items) => items.iter_mut().for_each(camel_case_links),
        _ => {}
    }
}

/// This document, the OpenAPI description of the gateway API. It needs no client key.
#[utoipa::path(get, path = PATH, operation_id = "openapi", tag = "meta", params(RequestIdHeader),
    responses(OpenApiResponses), security(()))]
pub async fn serve(inbound: Inbound) -> HttpResponse {
    // No client key is needed: only an oversized head is refused.
    let result = match &inbound.caller {
        Err(ApiError::HeadersTooLarge(limit)) => Err(ApiError::HeadersTooLarge(*limit)),
        _ => Ok(crate::http::body::json_head(actix_web::http::StatusCode::OK, &inbound.request_id)
            .body(document_json(inbound.worker.shared.config.clients.is_some()))),
    };
    inbound.answer(Route::OpenApi, PATH, Done::plain(result), |response, _| response)
}

/// `{"const": true}`-like: a boolean that is always `true`.
pub fn always_true() -> utoipa::openapi::Object {
    ObjectBuilder::new().schema_type(Type::Boolean).enum_values(Some([true])).build()
}

/// A boolean that is always `false`.
pub fn always_false() -> utoipa::openapi::Object {
    ObjectBuilder::new().schema_type(Type::Boolean).enum_values(Some([false])).build()
}

#[cfg(test)]
mod tests;
