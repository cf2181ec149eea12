//! Traces of sync requests, exported over OTLP/HTTP to a real receiver on loopback that decodes
//! them with the official protobuf definitions (`support::otlp`): the span tree of a retried
//! request and the `traceparent` the upstream got for each attempt, new traces for requests
//! without or with a bad `traceparent`, a coalesced request's link to the load it waited on,
//! a token waiter's link to the refresh, sampling, and requests unaffected by a receiver that
//! is down or hangs.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use support::otlp::{children, in_trace, named, only, split_traceparent, Got, Mode, Otlp, CLIENT, ERROR, SERVER};
use support::{body, Pair, PairBuilder};

/// A trace id and parent span id a caller might send.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, flags: &str) -> String {
    format!("00-{trace}-{PARENT}-{flags}")
}

fn server_span<'a>(spans: &'a [Got], trace: &str) -> &'a Got {
    let servers: Vec<_> = in_trace(spans, trace).into_iter().filter(|s| s.kind == SERVER).collect();
    assert_eq!(servers.len(), 1, "one server span in trace {trace}: {spans:#?}");
    servers[0]
}

/// Sends `rounds` rounds of 10 concurrent requests, each with a 2 s deadline, and checks that
/// every one is answered 200.
async fn load(pair: &Pair, rounds: usize, tag: &str) {
    for round in 0..rounds {
        let answers = join_all(
            (0..10).map(|i| pair.process_with(body(&format!("{tag} {round} {i}")), &[("x-request-timeout", "2")])),
        )
        .await;
        assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    }
}

#[actix_rt::test]
async fn a_retried_request_is_one_tree_and_the_upstream_got_each_attempts_span() {
    let otlp = Otlp::start(Mode::Accept).await;
    let pair = PairBuilder::default().tracing(&otlp).env("EXTERNAL_API_CACHE_TTL", "60").start().await;
    pair.faults(json!({"error_count": 1, "error_status": 503})).await;
    let answer = pair.process_with(body("one retry"), &[("traceparent", &traceparent(TRACE, "01"))]).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    let spans = otlp.wait_for("the server span", |s| in_trace(s, TRACE).iter().any(|g| g.kind == SERVER)).await;
    let server = server_span(&spans, TRACE);
    assert_eq!(server.parent, PARENT, "the caller's span is the parent");
    assert_eq!(server.name, "POST /api/external/process");
    assert_eq!(server.attr_str("http.route"), Some("/api/external/process"));
    assert_eq!(server.attr_str("http.request.method"), Some("POST"));
    assert_eq!(server.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(server.attr_str("courier.route"), Some("process"));
    assert_eq!(server.attr_i64("courier.attempts"), Some(2));
    assert_eq!(server.resource.get("service.name").map(String::as_str), Some("courier"));

    let cache = only(children(&spans, server), "child of the server span");
    assert_eq!(cache.name, "courier.cache");
    assert_eq!(cache.attr_str("courier.cache.outcome"), Some("miss"));
    assert_eq!(cache.attr_str("courier.cache.key"), answer.header("x-cache-key"));
    let stages = children(&spans, cache);
    let names = |name: &str| stages.iter().filter(|s| s.name == name).count();
    assert_eq!((names("courier.breaker"), names("courier.budget")), (2, 2), "{stages:#?}");
    for breaker in stages.iter().filter(|s| s.name == "courier.breaker") {
        assert_eq!(breaker.attr_str("courier.breaker.decision"), Some("pass"));
    }
    for budget in stages.iter().filter(|s| s.name == "courier.budget") {
        assert!(budget.attr_f64("courier.budget.wait_seconds").is_some_and(|w| w >= 0.0), "{budget:?}");
    }
    let attempts: Vec<_> = stages.iter().filter(|s| s.kind == CLIENT).collect();
    assert_eq!(attempts.len(), 2, "two upstream attempts: {stages:#?}");
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(first.name, "POST");
    assert_eq!(first.attr_i64("http.response.status_code"), Some(503));
    assert_eq!(first.attr_str("error.type"), Some("503"));
    assert_eq!(first.status_code, ERROR);
    assert_eq!(first.attr_i64("http.request.resend_count"), None);
    assert_eq!(second.attr_i64("http.request.resend_count"), Some(1));
    assert_eq!(second.attr_i64("http.response.status_code"), Some(200));
    assert_ne!(second.status_code, ERROR);
    let url = second.attr_str("url.full").unwrap();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/v2/process"), "{url}");

    // The upstream got each attempt's own span id under the caller's trace id.
    let stats = pair.sim_stats().await;
    let got: Vec<_> =
        stats["traceparents"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    let parents: Vec<_> =
        got.iter().filter_map(|h| split_traceparent(h)).filter(|(t, _, _)| *t == TRACE).map(|(_, p, _)| p).collect();
    assert_eq!(parents, [first.span_id.as_str(), second.span_id.as_str()], "{got:?}");
    pair.stop().await;
}

#[actix_rt::test]
async fn without_or_with_a_malformed_traceparent_a_request_starts_its_own_trace() {
    let otlp = Otlp::start(Mode::Accept).await;
    let pair = PairBuilder::default().tracing(&otlp).start().await;
    let bad = [
        None,
        Some("00-zz".to_owned()),
        Some(format!("ff-{TRACE}-{PARENT}-01")),
        Some(format!("00-00000000000000000000000000000000-{PARENT}-01")),
    ];
    for (n, header) in bad.iter().enumerate() {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("traceparent", h.as_str())).collect();
        let answer = pair.process_with(body(&format!("own trace {n}")), &headers).await;
        assert_eq!(answer.status, 200, "a bad traceparent is ignored, never an error: {answer:?}");
    }
    let spans = otlp.wait_for("four server spans", |s| s.iter().filter(|g| g.kind == SERVER).count() == 4).await;
    let servers: Vec<_> = spans.iter().filter(|s| s.kind == SERVER).collect();
    for server in &servers {
        assert_eq!(server.parent, "", "a root span: {server:?}");
        assert_ne!(server.trace_id, TRACE);
    }
    let logs = pair.stop().await;
    // Logs and traces meet: each request's line carries its server span's ids.
    let lines: Vec<_> = logs.lines().into_iter().filter(|l| l["event"] == "gateway_request").collect();
    assert_eq!(lines.len(), 4);
    for line in &lines {
        let ids = (line["trace_id"].as_str().unwrap(), line["span_id"].as_str().unwrap());
        assert!(servers.iter().any(|s| (s.trace_id.as_str(), s.span_id.as_str()) == ids), "{line}");
    }
}

#[actix_rt::test]
async fn a_coalesced_request_links_to_the_load_it_waited_on() {
    let otlp = Otlp::start(Mode::Accept).await;
    let pair = PairBuilder::default().tracing(&otlp).env("EXTERNAL_API_CACHE_TTL", "60").start().await;
    pair.faults(json!({"latency_ms": 300.0})).await;
    let traces = ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2"];
    let headers: Vec<[(&str, String); 1]> = traces.iter().map(|t| [("traceparent", traceparent(t, "01"))]).collect();
    let headers: Vec<Vec<(&str, &str)>> = headers.iter().map(|[(n, v)]| vec![(*n, v.as_str())]).collect();
    let answers = join_all(headers.iter().map(|h| pair.process_with(body("same"), h))).await;
    let outcomes: Vec<_> = answers.iter().map(|a| a.header("x-cache").unwrap_or_default().to_owned()).collect();
    let miss = outcomes.iter().position(|o| o == "MISS").expect("one answer loaded");
    let waiter = outcomes.iter().position(|o| o == "COALESCED").expect("one answer waited");

    let spans = otlp.wait_for("both server spans", |s| s.iter().filter(|g| g.kind == SERVER).count() == 2).await;
    let loader = in_trace(&spans, traces[miss]).into_iter().find(|s| s.name == "courier.cache").cloned().unwrap();
    let waited = in_trace(&spans, traces[waiter]).into_iter().find(|s| s.name == "courier.cache").cloned().unwrap();
    assert_eq!(waited.attr_str("courier.cache.outcome"), Some("coalesced"));
    assert!(in_trace(&spans, traces[waiter]).iter().all(|s| s.kind != CLIENT), "the waiter made no attempt");
    assert_eq!(waited.links.len(), 1, "{waited:?}");
    let link = &waited.links[0];
    assert_eq!((link.trace_id.as_str(), link.span_id.as_str()), (loader.trace_id.as_str(), loader.span_id.as_str()));
    assert_eq!(link.attrs.get("courier.link"), Some(&json!("coalesced_onto")));
    pair.stop().await;
}

#[actix_rt::test]
async fn token_waiters_link_to_the_one_refresh() {
    let otlp = Otlp::start(Mode::Accept).await;
    let pair = PairBuilder::default().tracing(&otlp).start().await;
    assert_eq!(pair.process(body("warm up")).await.status, 200);
    pair.faults(json!({"revoke_tokens": true})).await;
    let answers = join_all((0..5).map(|i| pair.process(body(&format!("revoked {i}"))))).await;
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    pair.stop().await; // flushes every span

    let spans = otlp.spans();
    // The start-up fetch is a refresh of its own (a root); the revocation's is one more.
    let refreshes: Vec<_> =
        named(&spans, "courier.token.refresh").into_iter().filter(|s| !s.parent.is_empty()).collect();
    let refresh = only(refreshes, "refresh caused by a request");
    assert_eq!(refresh.attr_str("courier.token.result"), Some("fetched"));
    assert!(refresh.attr_i64("courier.token.waiters").is_some_and(|n| n >= 1), "{refresh:?}");
    let waiters = named(&spans, "courier.token");
    assert!(!waiters.is_empty());
    for waiter in waiters {
        assert_eq!(waiter.links.len(), 1, "{waiter:?}");
        assert_eq!(waiter.links[0].span_id, refresh.span_id, "{waiter:?}");
        assert_eq!(waiter.links[0].attrs.get("courier.link"), Some(&json!("token_from")));
    }
}

#[actix_rt::test]
async fn sampling_is_honoured() {
    // Ratio 0: nothing of a request without a parent is exported, and the upstream still gets
    // a traceparent (unsampled) to carry the trace on.
    let otlp = Otlp::start(Mode::Accept).await;
    let pair = PairBuilder::default()
        .tracing(&otlp)
        .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", "0")
        .start()
        .await;
    for i in 0..10 {
        assert_eq!(pair.process(body(&format!("unsampled {i}"))).await.status, 200);
    }
    let stats = pair.sim_stats().await;
    let sent = stats["traceparents"].as_array().unwrap().clone();
    assert_eq!(sent.len(), 10);
    assert!(sent.iter().all(|h| split_traceparent(h.as_str().unwrap()).is_some_and(|(_, _, f)| f == "00")), "{sent:?}");
    // A sampled parent is followed under the same sampler.
    let sampled = "cccccccccccccccccccccccccccccc03";
    let answer = pair.process_with(body("sampled parent"), &[("traceparent", &traceparent(sampled, "01"))]).await;
    assert_eq!(answer.status, 200);
    let exported = pair.metric("courier_trace_spans_total", &[("result", "exported")]).await;
    pair.stop().await; // flushes what is queued: what is absent now was never exported
    let spans = otlp.spans();
    assert!(!spans.is_empty());
    assert!(spans.iter().all(|s| s.trace_id == sampled || s.name == "courier.token.refresh"), "{spans:#?}");
    assert!(in_trace(&spans, sampled).iter().any(|s| s.kind == SERVER));
    assert!(exported <= spans.len() as f64);

    // Parent-based always-on: an unsampled parent is followed too; always_off exports nothing.
    for (sampler, flags) in [("parentbased_always_on", "00"), ("always_off", "01")] {
        let otlp = Otlp::start(Mode::Accept).await;
        let pair = PairBuilder::default().tracing(&otlp).env("OTEL_TRACES_SAMPLER", sampler).start().await;
        let answer = pair.process_with(body("not sampled"), &[("traceparent", &traceparent(TRACE, flags))]).await;
        assert_eq!(answer.status, 200);
        let stats = pair.sim_stats().await;
        let sent = stats["traceparents"][0].as_str().unwrap().to_owned();
        let (trace, parent, sampled) = split_traceparent(&sent).unwrap();
        assert_eq!((trace, sampled), (TRACE, "00"), "the caller's trace goes on, unsampled: {sent}");
        assert_ne!(parent, PARENT, "with a span id of courier's");
        pair.stop().await;
        assert!(in_trace(&otlp.spans(), TRACE).is_empty(), "{sampler} with flags {flags}: {:#?}", otlp.spans());
    }
}

#[actix_rt::test]
async fn requests_do_not_wait_for_a_receiver_that_is_down_then_spans_flow_when_it_is_back() {
    // Nothing listens on the endpoint: a port just freed.
    let gone = Otlp::start(Mode::Accept).await;
    let addr = gone.addr;
    gone.stop().await;
    let endpoint = format!("http://{addr}/v1/traces");
    let pair = PairBuilder::default()
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1000")
        .start()
        .await;
    load(&pair, 10, "down").await;
    let failed = wait_metric(&pair, "failed", |v| v > 0.0).await;
    assert!(failed > 0.0);
    // Back: the next batches arrive and the recovery is logged.
    let otlp = Otlp::start_on(addr, Mode::Accept).await;
    assert_eq!(pair.process(body("back")).await.status, 200);
    otlp.wait_for("spans after the receiver came back", |s| s.iter().any(|g| g.kind == SERVER)).await;
    let logs = pair.stop().await;
    let lines = logs.lines();
    let failures: Vec<_> = lines.iter().filter(|l| l["event"] == "trace_export_failed").collect();
    assert!(!failures.is_empty() && failures.len() <= 2, "failures logged at a bounded rate: {failures:#?}");
    assert_eq!(failures[0]["reason"], "connect");
    assert!(lines.iter().any(|l| l["event"] == "trace_export_recovered"), "{}", logs.text());
}

#[actix_rt::test]
async fn a_hanging_receiver_fills_the_queue_and_spans_are_dropped_not_waited_for() {
    let otlp = Otlp::start(Mode::Hang).await;
    let pair = PairBuilder::default()
        .tracing(&otlp)
        .env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "30000")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "64")
        .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16")
        .env("COURIER_SHUTDOWN_GRACE", "2")
        .start()
        .await;
    load(&pair, 30, "hang").await;
    let dropped = pair.metric("courier_trace_spans_total", &[("result", "dropped")]).await;
    assert!(dropped > 0.0, "300 requests' spans do not fit a queue of 64 behind a hanging export");
    // Stopping the receiver drops its hanging connections, so the stop is not held up.
    otlp.stop().await;
    let logs = pair.stop().await;
    assert!(logs.lines().iter().any(|l| l["event"] == "trace_spans_dropped"), "{}", logs.text());
}

#[actix_rt::test]
async fn the_exporter_sends_the_service_name_resource_and_headers_and_no_secret() {
    let otlp = Otlp::start(Mode::Accept).await;
    let pair = PairBuilder::default()
        .tracing(&otlp)
        .env("OTEL_SERVICE_NAME", "courier-test")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci,team=a%2Cb")
        .env("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-otlp-key=k1")
        .start()
        .await;
    let input = "secret-input-7d1e";
    assert_eq!(pair.process(body(input)).await.status, 200);
    pair.faults(json!({"revoke_tokens": true})).await;
    assert_eq!(pair.process(body("after revocation")).await.status, 200);
    let spans = otlp.wait_for("two server spans", |s| s.iter().filter(|g| g.kind == SERVER).count() == 2).await;
    let resource = &spans[0].resource;
    assert_eq!(resource.get("service.name").map(String::as_str), Some("courier-test"));
    assert_eq!(resource.get("deployment.environment").map(String::as_str), Some("ci"));
    assert_eq!(resource.get("team").map(String::as_str), Some("a,b"));
    let headers = otlp.headers_seen();
    assert!(headers.contains(&("x-otlp-key".into(), "k1".into())), "{headers:?}");
    assert!(headers.contains(&("content-type".into(), "application/x-protobuf".into())), "{headers:?}");
    pair.stop().await;

    let everything = format!("{:?}", otlp.spans());
    for secret in [input, support::API_KEY, support::CLIENT_SECRET, "Bearer"] {
        assert!(!everything.contains(secret), "{secret} in an exported span");
    }
}

/// Waits (bounded) until `courier_trace_spans_total{result}` satisfies `ok`; returns it.
async fn wait_metric(pair: &Pair, result: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = pair.metric("courier_trace_spans_total", &[("result", result)]).await;
        if ok(value) {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "courier_trace_spans_total{{result={result}}} stayed {value}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}
