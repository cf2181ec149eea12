//! Traces of async jobs: the job's spans and its callback's `traceparent` belong to the trace
//! of the request that submitted it, with the in-process store and through Redis (the
//! traceparent is kept with the job's record, so the replica that runs it continues the trace).

mod support;

use serde_json::{json, Value};
use support::otlp::{children, in_trace, named, only, split_traceparent, Mode, Otlp, CLIENT, CONSUMER, SERVER};
use support::receiver::Receiver;
use support::redis::RedisServer;
use support::PairBuilder;

const SECRET: &str = "whsec_trace_4c1e";
const TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
const PARENT: &str = "10f067aa0ba902b8";

fn async_body(input: &str, callback: &str) -> Value {
    json!({"data": {"input": input, "format": "text"}, "options": {"async": true, "callback_url": callback}})
}

/// Submits a job with a callback under trace [`TRACE`] and checks every span of it.
async fn a_job_continues_the_submitting_trace(builder: PairBuilder) {
    let otlp = Otlp::start(Mode::Accept).await;
    let receiver = Receiver::start(&[]).await;
    let pair = builder
        .tracing(&otlp)
        .env("COURIER_CALLBACK_SECRET", SECRET)
        .env("COURIER_CALLBACK_ALLOW", "127.0.0.1")
        .start()
        .await;
    let header = format!("00-{TRACE}-{PARENT}-01");
    let accepted =
        pair.process_with(async_body("traced job", &receiver.url("/hook")), &[("traceparent", &header)]).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let delivered = receiver.wait_for(1).await;
    let spans = otlp
        .wait_for("the job and its callback", |s| {
            named(s, "courier.job").len() == 1 && named(s, "courier.callback").len() == 1
        })
        .await;

    let server = only(in_trace(&spans, TRACE).into_iter().filter(|s| s.kind == SERVER).collect(), "server span");
    assert_eq!(server.attr_i64("http.response.status_code"), Some(202));
    let job = only(named(&spans, "courier.job"), "job span");
    assert_eq!((job.trace_id.as_str(), job.parent.as_str(), job.kind), (TRACE, server.span_id.as_str(), CONSUMER));
    assert_eq!(job.attr_str("courier.job.status"), Some("completed"));
    let under_job = children(&spans, job);
    let cache =
        only(under_job.iter().copied().filter(|s| s.name == "courier.cache").collect(), "cache span of the job");
    let upstream = only(children(&spans, cache).into_iter().filter(|s| s.kind == CLIENT).collect(), "upstream attempt");
    assert_eq!(upstream.attr_i64("http.response.status_code"), Some(200));
    let callback = only(under_job.iter().copied().filter(|s| s.name == "courier.callback").collect(), "callback span");
    assert_eq!(callback.attr_str("courier.callback.result"), Some("delivered"));
    let attempt = only(children(&spans, callback), "callback attempt");
    assert_eq!(attempt.kind, CLIENT);
    assert_eq!(attempt.attr_i64("http.response.status_code"), Some(200));
    let url = attempt.attr_str("url.full").unwrap();
    assert!(url.ends_with("/hook") && !url.contains('?'), "{url}");

    // The receiver got the attempt's span under the submitting trace.
    let got = delivered[0].traceparent.as_deref().expect("the callback carries a traceparent");
    let (trace, parent, flags) = split_traceparent(got).unwrap();
    assert_eq!((trace, parent, flags), (TRACE, attempt.span_id.as_str(), "01"));

    let logs = pair.stop().await;
    receiver.stop().await;
    let finished = logs.lines().into_iter().find(|l| l["event"] == "job_finished").expect("job_finished logged");
    assert_eq!(
        (finished["trace_id"].as_str(), finished["span_id"].as_str()),
        (Some(TRACE), Some(job.span_id.as_str()))
    );
}

#[actix_rt::test]
async fn an_async_jobs_spans_and_callback_are_in_the_submitting_trace() {
    a_job_continues_the_submitting_trace(PairBuilder::default()).await;
}

#[actix_rt::test]
async fn a_job_kept_in_redis_keeps_the_submitting_trace() {
    let redis = RedisServer::start();
    a_job_continues_the_submitting_trace(PairBuilder::default().env("REDIS_URL", redis.url())).await;
}

#[actix_rt::test]
async fn a_job_submitted_by_another_replica_runs_in_its_trace() {
    // Replica A accepts the job and stops before running it (its concurrency is spent on a
    // slow job first); replica B, sharing the Redis store, takes it over and continues A's trace.
    let redis = RedisServer::start();
    let otlp = Otlp::start(Mode::Accept).await;
    let a = PairBuilder::default()
        .tracing(&otlp)
        .env("REDIS_URL", redis.url())
        .env("COURIER_JOB_CONCURRENCY", "1")
        .env("COURIER_SHUTDOWN_GRACE", "0.2")
        .env("OTEL_SERVICE_NAME", "courier-a")
        .start()
        .await;
    a.faults(json!({"latency_ms": 2000.0})).await;
    let slow = a.process(json!({"data": {"input": "slow", "format": "text"}, "options": {"async": true}})).await;
    assert_eq!(slow.status, 202);
    let header = format!("00-{TRACE}-{PARENT}-01");
    let body = json!({"data": {"input": "handed over", "format": "text"}, "options": {"async": true}});
    let accepted = a.process_with(body, &[("traceparent", &header)]).await;
    assert_eq!(accepted.status, 202);
    let id = accepted.body["request_id"].as_str().unwrap().to_owned();
    let b = PairBuilder::default()
        .tracing(&otlp)
        .env("REDIS_URL", redis.url())
        .env("OTEL_SERVICE_NAME", "courier-b")
        .start_beside(&a)
        .await;
    a.stop().await;
    a_faults_off(&b).await;
    let spans = otlp
        .wait_for("the handed-over job's span", |s| {
            named(s, "courier.job").iter().any(|j| j.trace_id == TRACE && j.attr_str("courier.job.status").is_some())
        })
        .await;
    let server = only(in_trace(&spans, TRACE).into_iter().filter(|s| s.kind == SERVER).collect(), "A's server span");
    let job = named(&spans, "courier.job").into_iter().find(|j| j.trace_id == TRACE).unwrap();
    assert_eq!(server.resource.get("service.name").map(String::as_str), Some("courier-a"));
    assert_eq!(job.resource.get("service.name").map(String::as_str), Some("courier-b"), "B ran it");
    assert_eq!(job.parent, server.span_id, "B's job span is a child of A's server span");
    assert_eq!(job.attr_str("courier.job.status"), Some("completed"), "{job:?} ({id})");
    b.stop().await;
}

async fn a_faults_off(pair: &support::Pair) {
    pair.faults(json!({"latency_ms": 0.0})).await;
}
