//! Schemas of the API description that are not derived on a type courier serialises: the process
//! request (validated by hand in `http::body`, without a DOM), the success answer (written as
//! bytes in `http::body::success_body`), the headers courier reads, and the leaf schemas the
//! derives refer to. Tests tie each one to the code that reads or writes it.

use std::borrow::Cow;

use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, Object, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{KnownFormat, RefOr, Schema};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::http::ApiError;
use crate::jobs::{RawJson, Timestamp};

/// Characters of an acceptable request id, as a regular expression.
pub(super) const REQUEST_ID_PATTERN: &str = "^[A-Za-z0-9._:/-]{1,128}$";

/// A process request. `data` goes to the upstream byte for byte; so do `options`, without
/// courier's own keys (`async`, `callback_url`). Other top-level fields are ignored.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ProcessRequest {
    data: ProcessData,
    /// Absent or `null` means no options.
    options: Option<ProcessOptions>,
}

/// What to process. Fields other than these are forwarded too.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ProcessData {
    /// The input: any JSON value but `null`.
    #[schema(schema_with = not_null)]
    input: (),
    /// The input's format. The upstream accepts `json` and `text` and refuses others
    /// (400 `upstream_rejected`).
    #[schema(required = false, examples("text", "json"))]
    format: String,
}

/// Options. `async` and `callback_url` are courier's; any others are the upstream's.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ProcessOptions {
    /// `true`: store the request as a job and answer 202 at once; look it up at `status_url`.
    #[schema(required = false)]
    r#async: bool,
    /// With `async`: where to POST the final status document, signed. An absolute http(s) URL
    /// to a public address (or one listed in `COURIER_CALLBACK_ALLOW`); needs
    /// `COURIER_CALLBACK_SECRET` (else 400 `callbacks_unavailable`). Ignored without `async`.
    #[schema(required = false)]
    callback_url: String,
}

/// The answer to a processed request.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ProcessResult {
    /// Always `true`.
    #[schema(schema_with = super::always_true)]
    success: bool,
    result: RawJson,
    /// The request's id, as in the `X-Request-Id` header; look it up at
    /// `/api/external/status/{request_id}`.
    request_id: String,
    /// The upstream's id for the request, `null` when it gave none.
    #[schema(required = true)]
    upstream_request_id: Option<String>,
}

/// Headers courier reads on `POST /api/external/process`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct ProcessHeaders {
    /// Your id for the request. Used when it is 1 to 128 characters of `A-Z a-z 0-9 - _ . : /`,
    /// else replaced by courier's own (`req_` and 16 hex digits). Sent upstream, logged, and
    /// returned in the body and the `X-Request-Id` header. Sending the same id again for an async
    /// request returns the same job.
    #[param(rename = "X-Request-Id", nullable = false)]
    x_request_id: Option<String>,
    /// The request's overall deadline in seconds, above 0 (capped at 3600). Default
    /// `COURIER_REQUEST_DEADLINE` (30).
    #[param(rename = "X-Request-Timeout", nullable = false, exclusive_minimum = 0)]
    x_request_timeout: Option<f64>,
    /// `no-cache`: do not answer from the cache (fetch, then refresh the entry); `no-store`: do
    /// not store the answer. Other directives are ignored.
    #[param(rename = "Cache-Control", nullable = false, example = "no-cache")]
    cache_control: Option<String>,
}

/// The path of `GET /api/external/status/{request_id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct StatusPath {
    /// A `request_id` courier returned (1 to 128 characters of `A-Z a-z 0-9 - _ . : /`, with `/`
    /// percent-encoded as `%2F`; other text is 400).
    #[param(pattern = "^[A-Za-z0-9._:/-]{1,128}$")]
    request_id: String,
}

/// The one header courier reads on routes without a body.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct RequestIdHeader {
    /// Your id for this request, as on the process route; returned in `X-Request-Id`.
    #[param(rename = "X-Request-Id", nullable = false)]
    x_request_id: Option<String>,
}

impl PartialSchema for RawJson {
    fn schema() -> RefOr<Schema> {
        any_value("The upstream's `result`, passed on byte for byte (any JSON value).").into()
    }
}

impl ToSchema for RawJson {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("UpstreamResult")
    }
}

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339, UTC, whole seconds."))
            .examples(["2026-11-24T10:30:00Z"])
            .into()
    }
}

impl ToSchema for Timestamp {}

/// Any JSON value, with a description.
fn any_value(description: &str) -> Object {
    ObjectBuilder::new().schema_type(SchemaType::AnyValue).description(Some(description)).build()
}

/// Any JSON value but `null`, spelled as one branch per type so client generators can type it:
/// a list of types (`"type": [...]`) gives them an array without `items` (openapi-python-client
/// then drops the whole operation) and an object without properties (openapi-typescript types it
/// `Record<string, never>`, so no object could be sent). Arrays hold anything (`items: {}`),
/// objects any members (`additionalProperties: true`). The titles name the generated types.
pub(super) fn not_null() -> Schema {
    let leaf = |t: Type| ObjectBuilder::new().schema_type(t).build();
    let anything = ObjectBuilder::new().schema_type(SchemaType::AnyValue).build();
    AnyOfBuilder::new()
        .item(leaf(Type::String))
        .item(leaf(Type::Number))
        .item(leaf(Type::Boolean))
        .item(ArrayBuilder::new().title(Some("InputArray")).items(anything).build())
        .item(
            ObjectBuilder::new()
                .title(Some("InputObject"))
                .schema_type(Type::Object)
                .additional_properties(Some(AdditionalProperties::FreeForm(true)))
                .build(),
        )
        .description(Some("The input: any JSON value but `null`."))
        .examples([serde_json::json!("data to process"), serde_json::json!({"a": 1}), serde_json::json!([1, 2])])
        .build()
        .into()
}

/// The `code` of an error answer: one of courier's codes.
pub fn error_code() -> Object {
    let codes = ApiError::every().iter().map(ApiError::code).collect::<Vec<_>>();
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("Machine-readable code, as in error answers (`upstream_unavailable`, `shutdown`, ...)."))
        .enum_values(Some(codes))
        .build()
}

/// The `code` of a failed job: an error answer's code, `shutdown` (the process stopped), or
/// `job_run_interrupted` (its runs kept ending with their process; not run again).
pub fn job_error_code() -> Object {
    let mut codes = ApiError::every().iter().map(ApiError::code).collect::<Vec<_>>();
    codes.push("shutdown");
    codes.push(crate::jobs::RUN_INTERRUPTED);
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(codes)).build()
}
