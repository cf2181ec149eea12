use std::collections::BTreeSet;

use serde_json::{json, Value};
use utoipa::openapi::HttpMethod;

use super::*;
use crate::http::{body, routes, ApiError};
use crate::jobs::{CallbackState, JobError, JobStatus, RawJson, StatusDoc, Timestamp};

fn served(client_keys: bool) -> Value {
    serde_json::from_slice(&document_json(client_keys)).unwrap()
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["components"]["schemas"][name]
}

fn names(values: &Value) -> BTreeSet<String> {
    match values {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(items) => items.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
        _ => BTreeSet::new(),
    }
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn every_gateway_route_is_described_and_nothing_else() {
    let doc = document(false);
    let registered: BTreeSet<(String, String)> =
        routes().into_iter().map(|(method, path)| (method.as_str().to_owned(), path.to_owned())).collect();
    let mut described = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        for (method, operation) in [
            (HttpMethod::Get, &item.get),
            (HttpMethod::Post, &item.post),
            (HttpMethod::Put, &item.put),
            (HttpMethod::Delete, &item.delete),
            (HttpMethod::Patch, &item.patch),
            (HttpMethod::Head, &item.head),
            (HttpMethod::Options, &item.options),
        ] {
            if operation.is_some() {
                let method = serde_json::to_value(method).unwrap().as_str().unwrap().to_ascii_uppercase();
                described.insert((method, path.clone()));
            }
        }
    }
    assert_eq!(registered, described);
    assert_eq!(registered.len(), 3, "{registered:?}");
}

/// The codes a route can answer, read from the served document.
fn documented_codes(doc: &Value) -> BTreeSet<(String, u16)> {
    let mut found = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let schema = &response["content"]["application/json"]["schema"];
                let Some(parts) = schema["allOf"].as_array() else { continue };
                assert_eq!(parts[0]["$ref"], "#/components/schemas/Error", "{status}");
                for code in parts[1]["properties"]["error"]["properties"]["code"]["enum"].as_array().unwrap() {
                    found.insert((code.as_str().unwrap().to_owned(), status.parse().unwrap()));
                }
            }
        }
    }
    found
}

#[test]
fn every_error_is_documented_with_its_status_and_headers() {
    let doc = served(true);
    let documented = documented_codes(&doc);
    for error in ApiError::every() {
        let code = error.code();
        // 405 answers the methods no operation has.
        if matches!(error, ApiError::MethodNotAllowed(_)) {
            continue;
        }
        assert!(documented.contains(&(code.to_owned(), error.status().as_u16())), "{code} is not documented");
    }
    // A code may come with more than one status (`upstream_rejected`: 400, or the upstream's
    // 413 passed on): each documented pair is one some error answers.
    let answered: Vec<ApiError> = ApiError::every()
        .into_iter()
        .chain(super::responses::process_errors())
        .chain(super::responses::status_errors())
        .collect();
    for (code, status) in &documented {
        let error = answered
            .iter()
            .find(|e| e.code() == code && e.status().as_u16() == *status)
            .unwrap_or_else(|| panic!("{code} is documented with {status}, which no error answers"));
        let response = &doc["paths"]["/api/external/process"]["post"]["responses"][status.to_string()];
        let response = if response.is_null() {
            &doc["paths"]["/api/external/status/{request_id}"]["get"]["responses"][status.to_string()]
        } else {
            response
        };
        let headers = names(&response["headers"]);
        assert!(headers.contains("X-Request-Id"), "{code}");
        if error.retry_after().is_some() {
            assert!(headers.contains("Retry-After"), "{code} is answered with Retry-After");
        }
    }
}

#[test]
fn the_error_schema_is_the_error_body() {
    let doc = served(false);
    let answer = ApiError::NotFound.response(&crate::request_id::RequestId::generate());
    let bytes = actix_web::body::MessageBody::try_into_bytes(answer.into_body()).expect("error bodies are bytes");
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let error = schema(&doc, "Error");
    assert_eq!(keys(&body), names(&error["properties"]));
    assert_eq!(keys(&body), names(&error["required"]));
    assert_eq!(keys(&body["error"]), names(&schema(&doc, "ErrorDetail")["required"]));
}

#[test]
fn the_success_schema_is_what_success_body_writes() {
    let doc = served(false);
    let result = schema(&doc, "ProcessResult");
    for upstream_id in [Some("up_1"), None] {
        let body: Value = serde_json::from_slice(&body::success_body(b"{\"a\":1}", "req_1", upstream_id)).unwrap();
        assert_eq!(keys(&body), names(&result["properties"]));
        assert_eq!(keys(&body), names(&result["required"]));
    }
}

#[test]
fn the_status_schema_is_the_status_document() {
    let doc = served(false);
    let status = schema(&doc, "StatusDoc");
    let mut full = StatusDoc {
        request_id: "req_1".into(),
        status: JobStatus::Completed,
        result: Some(RawJson("{}".into())),
        upstream_request_id: Some("up_1".into()),
        error: Some(JobError { code: "shutdown".into(), message: "stopping".into(), retryable: true }),
        created_at: Timestamp::now(),
        completed_at: Some(Timestamp::now()),
        attempts: 1,
        takeovers: 1,
        callback: Some(CallbackState::new()),
    };
    assert_eq!(keys(&serde_json::to_value(&full).unwrap()), names(&status["properties"]));
    (full.result, full.upstream_request_id, full.error, full.completed_at, full.takeovers, full.callback) =
        (None, None, None, None, 0, None);
    assert_eq!(keys(&serde_json::to_value(&full).unwrap()), names(&status["required"]));
    let callback = serde_json::to_value(CallbackState::new()).unwrap();
    assert_eq!(keys(&callback), names(&schema(&doc, "CallbackState")["required"]));
}

#[test]
fn a_job_error_code_is_one_the_document_lists() {
    let doc = served(false);
    let codes = names(&schema(&doc, "JobError")["properties"]["code"]["enum"]);
    // The runner's own codes, and the codes of error answers.
    for code in [&JobError::run_interrupted(2).code, "shutdown", "upstream_unavailable", "deadline_exceeded"] {
        assert!(codes.contains(code), "{code} missing from {codes:?}");
    }
    assert!(codes.contains("job_run_interrupted"), "{codes:?}");
}

#[test]
fn the_request_schema_is_what_the_validator_takes() {
    let doc = served(false);
    let request = schema(&doc, "ProcessRequest");
    let data = schema(&doc, "ProcessData");
    let options = schema(&doc, "ProcessOptions");
    assert_eq!(names(&request["required"]), ["data".to_owned()].into());
    assert_eq!(names(&data["required"]), ["input".to_owned()].into());
    assert_eq!(names(&options["properties"]), ["async".to_owned(), "callback_url".to_owned()].into());
    // What the schema requires is enough; each required field is needed.
    let minimal = json!({"data": {"input": "x"}});
    body::parse(minimal.to_string().as_bytes(), body::Rules::new(true)).unwrap();
    let full = json!({"data": {"input": [1], "format": "json", "more": 1},
        "options": {"async": true, "callback_url": "https://example.com/cb", "upstream_option": 2}, "extra": 3});
    body::parse(full.to_string().as_bytes(), body::Rules::new(true)).unwrap();
    body::parse(br#"{"data": {"input": 1}, "options": null}"#, body::Rules::new(true)).unwrap();
    for missing in [json!({}), json!({"data": {}}), json!({"data": {"input": null}})] {
        assert!(body::parse(missing.to_string().as_bytes(), body::Rules::new(true)).is_err(), "{missing}");
    }
    // What the schema forbids is refused.
    for wrong in [
        json!([]),
        json!({"data": "x"}),
        json!({"data": {"input": 1, "format": 1}}),
        json!({"data": {"input": 1}, "options": []}),
        json!({"data": {"input": 1}, "options": {"async": "yes"}}),
        json!({"data": {"input": 1}, "options": {"callback_url": 1}}),
    ] {
        assert!(body::parse(wrong.to_string().as_bytes(), body::Rules::new(true)).is_err(), "{wrong}");
    }
}

#[test]
fn the_input_is_one_typed_branch_per_json_type_but_null() {
    let doc = served(false);
    let input = &schema(&doc, "ProcessData")["properties"]["input"];
    let branches = input["anyOf"].as_array().expect("input is an anyOf");
    let types: Vec<&str> = branches.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["string", "number", "boolean", "array", "object"]);
    // Generators type an array by its items and an object by its members: both say "anything".
    assert_eq!(branches[3]["items"], json!({}));
    assert_eq!(branches[4]["additionalProperties"], true);
    // One value of each branch, and each example, is an input the validator takes.
    let mut values = vec![json!("x"), json!(-2.5), json!(false), json!([null, {"a": []}]), json!({"a": {"b": null}})];
    values.extend(input["examples"].as_array().unwrap().iter().cloned());
    for value in values {
        let request = json!({"data": {"input": value}});
        body::parse(request.to_string().as_bytes(), body::Rules::new(true)).unwrap();
    }
}

/// Generators cannot type an array whose items are not given (openapi-python-client drops the
/// operation), nor a list of types that includes one.
#[test]
fn every_array_schema_says_what_it_holds() {
    fn walk(value: &Value, at: &str, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                let array = match map.get("type") {
                    Some(Value::String(t)) => t == "array",
                    Some(Value::Array(list)) => list.len() > 1 && list.contains(&json!("array")),
                    _ => false,
                };
                if array && (!map.contains_key("items") || map["type"].is_array()) {
                    found.push(at.to_owned());
                }
                for (key, child) in map {
                    walk(child, &format!("{at}/{key}"), found);
                }
            }
            Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| walk(v, &format!("{at}/{i}"), found)),
            _ => {}
        }
    }
    for keys in [false, true] {
        let mut found = Vec::new();
        walk(&served(keys), "", &mut found);
        assert!(found.is_empty(), "arrays without items or in a list of types at {found:?}");
    }
}

#[test]
fn links_name_the_status_operation() {
    let text = String::from_utf8(document_json(false).to_vec()).unwrap();
    assert!(!text.contains("operation_id"));
    let doc = served(false);
    let link = &doc["paths"]["/api/external/process"]["post"]["responses"]["202"]["links"]["status"];
    assert_eq!(link["operationId"], "status");
    assert_eq!(doc["paths"]["/api/external/status/{request_id}"]["get"]["operationId"], "status");
}

#[test]
fn client_keys_are_required_only_when_configured() {
    let open = served(false);
    assert!(open.get("security").is_none());
    assert!(open["components"].get("securitySchemes").is_none());
    let keyed = served(true);
    assert_eq!(keyed["security"], json!([{"client_key": []}]));
    assert_eq!(keyed["components"]["securitySchemes"]["client_key"]["scheme"], "bearer");
    // The description itself needs no key.
    assert_eq!(keyed["paths"]["/openapi.json"]["get"]["security"], json!([{}]));
}

#[test]
fn request_id_patterns_follow_the_request_id_rules() {
    use crate::request_id::{RequestId, MAX_LEN};
    assert!(schemas::REQUEST_ID_PATTERN.contains(&format!("{{1,{MAX_LEN}}}")));
    let doc = served(false);
    let path = &doc["paths"]["/api/external/status/{request_id}"]["get"]["parameters"][0];
    assert_eq!(path["name"], "request_id");
    assert_eq!(path["schema"]["pattern"], schemas::REQUEST_ID_PATTERN);
    // Every character the pattern admits is one RequestId accepts, and no other.
    for byte in 0x21u8..0x7f {
        let text = (byte as char).to_string();
        let admitted = byte.is_ascii_alphanumeric() || b"._:/-".contains(&byte);
        assert_eq!(RequestId::parse(&text).is_some(), admitted, "{text:?}");
    }
}
