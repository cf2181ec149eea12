//! The answers of each gateway route: bodies, headers, and every error the route can give,
//! grouped by status from [`ApiError`] so that status, `code` and `Retry-After` come from the
//! one place that sets them (`http::errors`).

use std::collections::BTreeMap;

use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Schema};
use utoipa::{IntoResponses, ToSchema};

use super::schemas::{ProcessResult, REQUEST_ID_PATTERN};
use crate::cache::CacheStatus;
use crate::http::errors::ErrorBody;
use crate::http::jobs::Accepted;
use crate::http::ApiError;
use crate::jobs::StatusDoc;
use crate::pipeline;

/// The errors `POST /api/external/process` answers.
pub fn process_errors() -> Vec<ApiError> {
    let wait = std::time::Duration::from_secs(1);
    let mut errors = vec![
        ApiError::InvalidJson(String::new()),
        ApiError::InvalidRequest("".into()),
        ApiError::Pipeline(pipeline::Error::Rejected { status: 413, message: String::new() }),
        ApiError::InvalidCallbackUrl(String::new()),
        ApiError::CallbacksUnavailable,
        ApiError::Unauthorized,
        ApiError::AuthLockedOut(wait),
        ApiError::RequestIdInUse,
        ApiError::PayloadTooLarge(0),
        ApiError::UnsupportedMediaType,
        ApiError::JobStoreUnavailable,
        ApiError::HeadersTooLarge(0),
        ApiError::ClientConcurrencyExceeded(0),
        ApiError::RequestBodyTimeout(wait),
        ApiError::RequestHeadTimeout(wait),
    ];
    errors.extend(pipeline::Error::every().into_iter().map(ApiError::Pipeline));
    errors
}

/// The errors `GET /api/external/status/{request_id}` answers.
pub fn status_errors() -> Vec<ApiError> {
    vec![
        ApiError::InvalidRequest("".into()),
        ApiError::Unauthorized,
        ApiError::AuthLockedOut(std::time::Duration::from_secs(1)),
        ApiError::NotFound,
        ApiError::JobStoreUnreadable,
        ApiError::HeadersTooLarge(0),
        ApiError::RequestHeadTimeout(std::time::Duration::from_secs(1)),
    ]
}

fn string_header(description: &str) -> Header {
    HeaderBuilder::new().schema(ObjectBuilder::new().schema_type(Type::String)).description(Some(description)).build()
}

fn integer_header(minimum: u32, description: &str) -> Header {
    let schema = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(minimum));
    HeaderBuilder::new().schema(schema).description(Some(description)).build()
}

fn pattern_header(pattern: &str, description: &str) -> Header {
    let schema = ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern));
    HeaderBuilder::new().schema(schema).description(Some(description)).build()
}

fn request_id_header() -> Header {
    pattern_header(REQUEST_ID_PATTERN, "The request's id: yours when acceptable, else courier's own.")
}

/// `RateLimit-Policy` and `RateLimit`: the caller's share of the upstream budget.
fn with_rate_headers(response: ResponseBuilder) -> ResponseBuilder {
    response
        .header("RateLimit-Policy", string_header("`<limit>;w=60`: your share of the upstream budget per minute."))
        .header("RateLimit", string_header("`limit=<n>, remaining=<n>, reset=<seconds>`: your share now."))
}

/// `X-Cache` and `X-Cache-Key`: what the response cache did.
fn with_cache_headers(response: ResponseBuilder) -> ResponseBuilder {
    let statuses = CacheStatus::ALL.map(CacheStatus::header);
    let x_cache = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(statuses));
    let x_cache = HeaderBuilder::new()
        .schema(x_cache)
        .description(Some("What the response cache did (sync requests that reached it)."))
        .build();
    let key = pattern_header("^[0-9a-f]{64}$", "The cache key of the request (purge it on the admin listener).");
    response.header("X-Cache", x_cache).header("X-Cache-Key", key)
}

/// A link from an answer carrying `request_id` to the status lookup.
fn with_status_link(response: ResponseBuilder) -> ResponseBuilder {
    let link = LinkBuilder::new()
        .operation_id("status")
        .parameter("request_id", "$response.body#/request_id")
        .description("Look the request up.")
        .build();
    response.link("status", link)
}

fn json_body(schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

/// The error answers of a route, one per status; each lists its codes and restricts
/// `error.code` to them.
fn error_responses(
    errors: &[ApiError],
    decorate: impl Fn(&ApiError, ResponseBuilder) -> ResponseBuilder,
) -> BTreeMap<String, RefOr<Response>> {
    let mut by_status: BTreeMap<u16, Vec<&ApiError>> = BTreeMap::new();
    for error in errors {
        let group = by_status.entry(error.status().as_u16()).or_default();
        if !group.iter().any(|e| e.code() == error.code()) {
            group.push(error);
        }
    }
    by_status
        .into_iter()
        .map(|(status, group)| {
            let codes = group.iter().map(|e| e.code()).collect::<Vec<_>>();
            let description = codes.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
            let code = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(codes));
            let error = ObjectBuilder::new().property("code", code);
            let narrowed = ObjectBuilder::new().property("error", error);
            let schema = AllOfBuilder::new().item(Ref::from_schema_name(ErrorBody::name())).item(narrowed);
            let mut response = ResponseBuilder::new()
                .description(description)
                .content("application/json", json_body(schema))
                .header("X-Request-Id", request_id_header());
            if group.iter().any(|e| e.retry_after().is_some()) {
                response = response.header("Retry-After", integer_header(1, "Seconds to wait before retrying."));
            }
            if group.iter().any(|e| matches!(e, ApiError::Unauthorized)) {
                response = response.header("WWW-Authenticate", string_header("`Bearer`."));
            }
            for error in &group {
                response = decorate(error, response);
            }
            (status.to_string(), response.into())
        })
        .collect()
}

/// The answers of `POST /api/external/process`.
pub struct ProcessResponses;

impl IntoResponses for ProcessResponses {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let age = integer_header(0, "Seconds since the answer was fetched (cache hits and stale answers).");
        let ok = ResponseBuilder::new()
            .description("Processed: the upstream's result.")
            .content("application/json", json_body(Ref::from_schema_name(ProcessResult::name())))
            .header("X-Request-Id", request_id_header())
            .header("Age", age);
        let ok = with_status_link(with_cache_headers(with_rate_headers(ok)));
        let accepted = ResponseBuilder::new()
            .description("Accepted as a job (`options.async`): stored, to run in the background.")
            .content("application/json", json_body(Ref::from_schema_name(Accepted::name())))
            .header("X-Request-Id", request_id_header())
            .header("Location", string_header("The job's `status_url`."));
        let accepted = with_status_link(with_rate_headers(accepted));
        let mut responses = error_responses(&process_errors(), |error, response| match error {
            // The caller is not known: there is no share to report.
            ApiError::Unauthorized | ApiError::AuthLockedOut(_) => response,
            _ => with_cache_headers(with_rate_headers(response)),
        });
        responses.insert("200".into(), ok.into());
        responses.insert("202".into(), accepted.into());
        responses
    }
}

/// The answers of `GET /api/external/status/{request_id}`.
pub struct StatusResponses;

impl IntoResponses for StatusResponses {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let ok = ResponseBuilder::new()
            .description("The request's status document.")
            .content("application/json", json_body(Ref::from_schema_name(StatusDoc::name())))
            .header("X-Request-Id", request_id_header());
        let mut responses = error_responses(&status_errors(), |_, response| response);
        responses.insert("200".into(), ok.into());
        responses
    }
}

/// The answers of `GET /openapi.json`.
pub struct OpenApiResponses;

impl IntoResponses for OpenApiResponses {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let document = ObjectBuilder::new().schema_type(Type::Object).description(Some("An OpenAPI 3.1 document."));
        let ok = ResponseBuilder::new()
            .description("This document.")
            .content("application/json", json_body(document))
            .header("X-Request-Id", request_id_header());
        let mut responses = error_responses(&[ApiError::HeadersTooLarge(0)], |_, response| response);
        responses.insert("200".into(), ok.into());
        responses
    }
}
