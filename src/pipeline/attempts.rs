//! Stages 2 to 7 of the pipeline, in the order they run for each attempt: the breaker's gate,
//! a budget permit, a token, the attempt itself, its classification and the decision to retry,
//! and the reports to the Breaker and the Budget.

use std::time::{Duration, Instant};

use opentelemetry::trace::SpanKind;
use slog::info;

use super::lane::Lane;
use super::retry::{conclude, decide, Next, Progress, Timing};
use super::Error;
use crate::actors::budget::Class;
use crate::actors::quota::{QuotaReason, TakeError};
use crate::request_id::RequestId;
use crate::trace::{attrs, LogIds, Parent, Span};
use crate::upstream::{send_attempt, AttemptRequest, Outcome, SuccessBody};

/// How a call takes its budget permits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// Wait in the budget's queue until the deadline.
    Queue,
    /// Only a permit that is free right now (background refreshes).
    NoWait,
}

/// One call to send upstream, with retries, before `deadline`.
pub struct Call {
    /// The request's id, sent upstream as `X-Request-Id`.
    pub request_id: RequestId,
    /// The upstream JSON body (`{"data": .., "options": ..}`).
    pub body: bytes::Bytes,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// The client (index in the clients file; 0 in open mode), for fair sharing.
    pub client: usize,
    /// Sync requests go before async jobs when the budget is short.
    pub class: Class,
    /// Whether to wait for a budget permit, or go only if one is free now.
    pub patience: Patience,
    /// The span the attempts' spans go under.
    pub trace: Parent,
}

/// What a call came to: the upstream's answer or why there is none, and the attempts made.
#[derive(Debug)]
pub struct Called {
    /// Upstream attempts made (0 when none could be made).
    pub attempts: u32,
    /// The upstream's answer, or why there is none.
    pub result: Result<SuccessBody, Error>,
}

/// Runs the attempts of one call.
pub async fn run(lane: &Lane, call: Call) -> Called {
    let Call { request_id, body, deadline, client, class, patience, trace } = call;
    let tracing = &lane.tracing;
    let mut attempts = 0u32;
    let mut progress = Progress::default();
    let mut rejected = None;
    let done = |attempts, result| Called { attempts, result };
    loop {
        if Instant::now() >= deadline {
            return done(attempts, Err(Error::DeadlineExceeded));
        }
        // 2. The breaker: may this attempt go?
        let breaker_span = tracing.child(&trace, "courier.breaker", SpanKind::Internal);
        let gate = lane.circuit.gate().await;
        if let Some(mut span) = breaker_span {
            span.set(attrs::BREAKER_DECISION, breaker_decision(&gate));
            if gate.is_err() {
                span.fail("circuit_open");
            }
            span.end();
        }
        let probe = match gate {
            Ok(probe) => probe,
            Err(retry_after) => return done(attempts, Err(Error::CircuitOpen(retry_after))),
        };
        // 3. The quota (a spent window is refused here, never queued), then the budget: a permit.
        if let Some(refusal) = lane.quota.as_ref().and_then(|q| q.check(Some(client)).err()) {
            lane.circuit.report(None, probe);
            return done(attempts, Err(refusal.into()));
        }
        let budget_span = tracing.child(&trace, "courier.budget", SpanKind::Internal);
        let asked = budget_span.as_ref().map(|_| Instant::now());
        let permit = match patience {
            Patience::Queue => lane.budget.acquire(client, class, deadline, lane.latency.reserve()).await,
            Patience::NoWait => lane.budget.try_now(),
        };
        if let (Some(mut span), Some(asked)) = (budget_span, asked) {
            span.set(attrs::BUDGET_WAIT, asked.elapsed().as_secs_f64());
            if permit.is_err() {
                span.fail("rate_limited");
            }
            span.end();
        }
        if let Err(refusal) = permit {
            lane.circuit.report(None, probe);
            return done(attempts, Err(Error::RateLimited(refusal.retry_after)));
        }
        // 4. A token.
        let (authorization, generation) = match lane.credentials.token(rejected.take(), tracing, &trace).await {
            Ok(found) => found,
            Err(unavailable) => {
                lane.circuit.report(None, probe);
                // The token endpoint's certificate refused: as final as the API's would be.
                let error = match unavailable.tls {
                    true => Error::Failed(Outcome::TlsError),
                    false => Error::AuthUnavailable(unavailable.retry_after),
                };
                return done(attempts, Err(error));
            }
        };
        let started = Instant::now();
        let Some(time_left) = deadline.checked_duration_since(started).filter(|d| !d.is_zero()) else {
            lane.circuit.report(None, probe);
            return done(attempts, Err(Error::DeadlineExceeded));
        };
        // The attempt's quota count, taken last so that only an attempt that is sent counts.
        if let Some(quota) = &lane.quota {
            if let Err(refused) = Box::pin(quota.take(Some(client), deadline)).await {
                lane.circuit.report(None, probe);
                let error = match refused {
                    TakeError::Refused(refusal) => refusal.into(),
                    TakeError::Deadline => Error::DeadlineExceeded,
                };
                return done(attempts, Err(error));
            }
        }
        attempts += 1;
        if attempts == 1 {
            lane.record_first_attempt(started);
        }
        // 5. The attempt, classified as it is read.
        let mut span = tracing.child(&trace, "POST", SpanKind::Client);
        if let Some(span) = span.as_mut().filter(|s| s.recording()) {
            client_span_start(span, lane, attempts);
        }
        let trace_headers = tracing.headers(span.as_ref());
        let api_key = lane.credentials.api_key();
        let request = AttemptRequest {
            uri: &lane.process_uri,
            authorization: &authorization,
            api_key: &api_key,
            request_id: request_id.header(),
            body: body.clone(),
            timeout: lane.policy.attempt_timeout.min(time_left),
            max_body: lane.policy.max_body,
            max_depth: lane.policy.max_depth,
            trace: &trace_headers,
        };
        let (attempt, signal) = send_attempt(&lane.client, request).await;
        let finished = Instant::now();
        let elapsed = finished.duration_since(started);
        let outcome = attempt.outcome();
        // 7. Reports: the rate headers to the Budget, the verdict to the Breaker.
        lane.counters.attempt(outcome);
        let rate_limited = outcome == Outcome::RateLimited;
        let quota_spent = lane.quota.as_ref().is_some_and(|q| q.learn(&signal, rate_limited));
        lane.budget.learn(&signal, rate_limited && !quota_spent);
        lane.circuit.report(attempt.breaker_verdict(), probe);
        if attempt.status().is_some() {
            lane.latency.observe(elapsed);
        }
        let ids = LogIds::of(span.as_ref());
        if let Some(span) = span {
            client_span_end(span, attempt.status(), outcome);
        }
        lane.metrics.upstream_duration.observe(elapsed.as_secs_f64());
        info!(lane.log, "external_api_request";
            "request_id" => request_id.as_str(),
            "endpoint" => "/process",
            "method" => "POST",
            "status_code" => attempt.status(),
            "response_time" => elapsed.as_secs_f64(),
            "retry_count" => progress.retries,
            "attempt" => attempts,
            "outcome" => outcome.as_str(),
            "error" => attempt.error(),
            ids);
        if quota_spent {
            // The upstream refused for a quota window courier knows: no retry before its reset.
            let retry_after =
                signal.retry_after.or(signal.quota.and_then(|q| q.reset)).unwrap_or(Duration::from_secs(1));
            return done(attempts, Err(Error::QuotaExhausted { retry_after, reason: QuotaReason::WindowSpent }));
        }
        // 6. Retry, refresh the token, or answer.
        let timing = Timing { now: finished, deadline, expected_attempt: lane.latency.expected() };
        let next = match decide(&attempt, &signal, &lane.policy, progress, timing, rand::random::<f64>()) {
            Next::RetryAfter(_) if !lane.try_retry(finished) => Next::Answer,
            next => next,
        };
        match next {
            Next::Answer => {
                let result = match conclude(attempt, &signal) {
                    // A timeout cut short by the deadline is the deadline's doing.
                    Err(Error::Failed(Outcome::Timeout)) if Instant::now() >= deadline => Err(Error::DeadlineExceeded),
                    result => result,
                };
                return done(attempts, result);
            }
            Next::RefreshToken => {
                progress.token_refreshed = true;
                rejected = Some(generation);
            }
            Next::RetryAfter(wait) => {
                lane.counters.retry(outcome);
                progress.retries += 1;
                actix_rt::time::sleep(wait).await;
            }
        }
    }
}

/// The breaker's decision as a span shows it.
fn breaker_decision<P, E>(gate: &Result<Option<P>, E>) -> &'static str {
    match gate {
        Ok(None) => "pass",
        Ok(Some(_)) => "probe",
        Err(_) => "reject",
    }
}

/// The client span of an attempt, by the HTTP client conventions.
fn client_span_start(span: &mut Span, lane: &Lane, attempt: u32) {
    span.set(attrs::HTTP_REQUEST_METHOD, "POST");
    if let Some(url) = &lane.url_full {
        span.set(attrs::URL_FULL, url.clone());
    }
    if let Some(host) = lane.process_uri.host() {
        span.set(attrs::SERVER_ADDRESS, host.to_owned());
    }
    let port = lane.process_uri.port_u16().unwrap_or(match lane.process_uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    span.set(attrs::SERVER_PORT, i64::from(port));
    span.set(attrs::ATTEMPT, i64::from(attempt));
    if attempt > 1 {
        span.set(attrs::HTTP_REQUEST_RESEND_COUNT, i64::from(attempt - 1));
    }
}

/// Ends an attempt's client span: its status, and why it failed (a status of 400 or more, or
/// no answer, is an error of a client span).
fn client_span_end(mut span: Span, status: Option<u16>, outcome: Outcome) {
    if let Some(status) = status {
        span.set(attrs::HTTP_RESPONSE_STATUS_CODE, i64::from(status));
    }
    span.set(attrs::OUTCOME, outcome.as_str());
    let error = match status {
        Some(status) if status >= 400 => Some(std::borrow::Cow::Owned(status.to_string())),
        Some(_) => None,
        None => Some(std::borrow::Cow::Borrowed(outcome.as_str())),
    };
    if let Some(error) = error {
        span.set(attrs::ERROR_TYPE, error.clone());
        span.fail(error);
    }
    span.end();
}
