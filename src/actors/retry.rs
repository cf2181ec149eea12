//! The attempt loop of one request: token, attempt, classify, then retry, refresh or answer.
//!
//! Retries follow the classification of [`Attempt`]: connection errors, timeouts,
//! 500/502/503/504 and 429 are retried after exponential backoff with full jitter, never
//! sooner than the upstream's `Retry-After`, at most `max_retries` times, and never when the
//! wait would run past the request's deadline. A 401 is not a retry: it withdraws the token
//! generation that got it and repeats the request once with a fresh token.

use std::rc::Rc;
use std::time::{Duration, Instant};

use slog::info;

use super::dispatcher::{Dispatch, Patience, Upstream};
use crate::upstream::{send_attempt, Attempt, AttemptRequest, Backoff, Outcome, RateSignal, SuccessBody};

/// How attempts are bounded and spaced.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Spacing of retries.
    pub backoff: Backoff,
    /// Bound of one attempt, head and body.
    pub attempt_timeout: Duration,
    /// Largest accepted upstream success body.
    pub max_body: usize,
    /// Deepest nesting accepted in an upstream answer.
    pub max_depth: usize,
}

/// Why a dispatched request got no upstream result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchError {
    /// The upstream refused the request's content (400/413/422): its status and message.
    Rejected {
        /// The upstream's status.
        status: u16,
        /// The upstream's message, sanitised.
        message: String,
    },
    /// No valid upstream token can be had now; ask again after this long.
    AuthUnavailable(Duration),
    /// The upstream's rate limit holds; ask again after this long.
    RateLimited(Duration),
    /// The upstream failed; the last attempt's outcome.
    Failed(Outcome),
    /// The request's deadline passed.
    DeadlineExceeded,
    /// The circuit is open; ask again after this long.
    CircuitOpen(Duration),
}

/// The answer to a [`Dispatch`]: the result and how many attempts it took.
#[derive(Debug)]
pub struct Dispatched {
    /// Upstream attempts made (0 when none could be made).
    pub attempts: u32,
    /// The upstream's result, or why there is none.
    pub result: Result<SuccessBody, DispatchError>,
}

/// What to do after an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Answer the client with this attempt.
    Answer,
    /// Withdraw the rejected token and repeat at once.
    RefreshToken,
    /// Retry after this long.
    RetryAfter(Duration),
}

/// How far a request has come: retries made, and whether its token was already renewed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Retries made so far.
    pub retries: u32,
    /// Whether a 401 already renewed the token once.
    pub token_refreshed: bool,
}

/// The time a decision is made in: now, the deadline, and how long an attempt usually takes.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// When the decision is made.
    pub now: Instant,
    /// When the client stops waiting.
    pub deadline: Instant,
    /// The usual duration of an answered attempt.
    pub expected_attempt: Duration,
}

/// Decides what follows `attempt`, given the progress so far and the time left: no retry is
/// made that could not finish before the deadline.
pub fn decide(
    attempt: &Attempt,
    signal: &RateSignal,
    policy: &RetryPolicy,
    progress: Progress,
    timing: Timing,
    jitter_unit: f64,
) -> Next {
    if matches!(attempt, Attempt::Unauthorized) {
        return if progress.token_refreshed { Next::Answer } else { Next::RefreshToken };
    }
    if !attempt.retryable() || progress.retries >= policy.max_retries {
        return Next::Answer;
    }
    let mut wait = policy.backoff.delay(progress.retries, jitter_unit);
    // A 429 is not retried before the upstream's reset.
    let reset = if matches!(attempt, Attempt::RateLimited) { signal.reset } else { None };
    if let Some(retry_after) = signal.retry_after.or(reset) {
        wait = wait.max(retry_after);
    }
    if timing.now + wait + timing.expected_attempt >= timing.deadline {
        return Next::Answer;
    }
    Next::RetryAfter(wait)
}

/// The final answer for an attempt that is not retried.
fn conclude(attempt: Attempt, signal: &RateSignal) -> Result<SuccessBody, DispatchError> {
    match attempt {
        Attempt::Success(body) => SuccessBody::parse(&body).ok_or(DispatchError::Failed(Outcome::InvalidResponse)),
        Attempt::Rejected { status, message } => Err(DispatchError::Rejected { status, message }),
        Attempt::Unauthorized => Err(DispatchError::AuthUnavailable(Duration::from_secs(1))),
        Attempt::RateLimited => {
            let wait = signal.retry_after.or(signal.reset).unwrap_or(Duration::from_secs(1));
            Err(DispatchError::RateLimited(wait))
        }
        other => Err(DispatchError::Failed(other.outcome())),
    }
}

/// Runs the attempt loop of one request.
pub async fn run(up: Rc<Upstream>, msg: Dispatch) -> Dispatched {
    let Dispatch { request_id, body, deadline, client, class, patience } = msg;
    let mut attempts = 0u32;
    let mut progress = Progress::default();
    let mut rejected = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Dispatched { attempts, result: Err(DispatchError::DeadlineExceeded) };
        }
        let probe = match up.breaker_gate().await {
            Ok(probe) => probe,
            Err(retry_after) => return Dispatched { attempts, result: Err(DispatchError::CircuitOpen(retry_after)) },
        };
        let permit = match patience {
            Patience::Queue => up.budget.acquire(client, class, deadline, up.attempt_reserve()).await,
            Patience::NoWait => up.budget.try_now(),
        };
        if let Err(refusal) = permit {
            up.report(None, probe);
            return Dispatched { attempts, result: Err(DispatchError::RateLimited(refusal.retry_after)) };
        }
        let (authorization, generation) = match up.token(rejected.take()).await {
            Ok(found) => found,
            Err(unavailable) => {
                up.report(None, probe);
                // The token endpoint's certificate refused: as final as the API's would be.
                let error = if unavailable.tls {
                    DispatchError::Failed(Outcome::TlsError)
                } else {
                    DispatchError::AuthUnavailable(unavailable.retry_after)
                };
                return Dispatched { attempts, result: Err(error) };
            }
        };
        let started = Instant::now();
        let Some(time_left) = deadline.checked_duration_since(started).filter(|d| !d.is_zero()) else {
            up.report(None, probe);
            return Dispatched { attempts, result: Err(DispatchError::DeadlineExceeded) };
        };
        attempts += 1;
        if attempts == 1 {
            up.record_first_attempt(started);
        }
        let api_key = up.api_key();
        let request = AttemptRequest {
            uri: &up.process_uri,
            authorization: &authorization,
            api_key: &api_key,
            request_id: request_id.header(),
            body: body.clone(),
            timeout: up.policy.attempt_timeout.min(time_left),
            max_body: up.policy.max_body,
            max_depth: up.policy.max_depth,
        };
        let (attempt, signal) = send_attempt(&up.client, request).await;
        let finished = Instant::now();
        let elapsed = finished.duration_since(started);
        let outcome = attempt.outcome();
        up.count_attempt(outcome);
        up.budget.learn(&signal, outcome == Outcome::RateLimited);
        up.report(Some(&attempt), probe);
        if attempt.status().is_some() {
            up.observe_latency(elapsed);
        }
        up.metrics.upstream_duration.observe(elapsed.as_secs_f64());
        info!(up.log, "external_api_request";
            "request_id" => request_id.as_str(),
            "endpoint" => "/process",
            "method" => "POST",
            "status_code" => attempt.status(),
            "response_time" => elapsed.as_secs_f64(),
            "retry_count" => progress.retries,
            "attempt" => attempts,
            "outcome" => outcome.as_str(),
            "error" => attempt.error());
        let jitter = rand::random::<f64>();
        let timing = Timing { now: finished, deadline, expected_attempt: up.expected_attempt() };
        let next = match decide(&attempt, &signal, &up.policy, progress, timing, jitter) {
            Next::RetryAfter(_) if !up.try_retry(finished) => Next::Answer,
            next => next,
        };
        match next {
            Next::Answer => {
                let result = match (conclude(attempt, &signal), outcome) {
                    // A timeout cut short by the deadline is the deadline's doing.
                    (Err(DispatchError::Failed(Outcome::Timeout)), _) if Instant::now() >= deadline => {
                        Err(DispatchError::DeadlineExceeded)
                    }
                    (result, _) => result,
                };
                return Dispatched { attempts, result };
            }
            Next::RefreshToken => {
                progress.token_refreshed = true;
                rejected = Some(generation);
            }
            Next::RetryAfter(wait) => {
                up.count_retry(outcome);
                progress.retries += 1;
                actix_rt::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            backoff: Backoff::try_new(100 * MS, 1000 * MS, true).unwrap(),
            attempt_timeout: Duration::from_secs(1),
            max_body: 1024,
            max_depth: 64,
        }
    }

    fn next(attempt: Attempt, signal: RateSignal, retries: u32, refreshed: bool, time_left: Duration) -> Next {
        let now = Instant::now();
        let progress = Progress { retries, token_refreshed: refreshed };
        let timing = Timing { now, deadline: now + time_left, expected_attempt: Duration::ZERO };
        decide(&attempt, &signal, &policy(3), progress, timing, 0.5)
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn retryable_failures_back_off_until_retries_run_out() {
        let none = RateSignal::default();
        assert_eq!(next(Attempt::ServerError(500), none, 0, false, LONG), Next::RetryAfter(50 * MS));
        assert_eq!(next(Attempt::Timeout, none, 2, false, LONG), Next::RetryAfter(200 * MS));
        assert_eq!(next(Attempt::Connect("x"), none, 3, false, LONG), Next::Answer);
        assert_eq!(next(Attempt::ServerError(501), none, 0, false, LONG), Next::Answer);
        assert_eq!(next(Attempt::OtherStatus(404), none, 0, false, LONG), Next::Answer);
        let rejected = Attempt::Rejected { status: 400, message: "no".into() };
        assert_eq!(next(rejected, none, 0, false, LONG), Next::Answer);
    }

    #[test]
    fn retry_after_is_honoured_and_the_deadline_is_kept() {
        let signal = RateSignal { retry_after: Some(Duration::from_secs(2)), ..RateSignal::default() };
        assert_eq!(next(Attempt::RateLimited, signal, 0, false, LONG), Next::RetryAfter(Duration::from_secs(2)));
        assert_eq!(next(Attempt::RateLimited, signal, 0, false, Duration::from_secs(1)), Next::Answer);
        assert_eq!(next(Attempt::ServerError(503), RateSignal::default(), 0, false, 10 * MS), Next::Answer);
    }

    #[test]
    fn no_retry_that_cannot_finish_in_time_and_none_before_a_429_reset() {
        let now = Instant::now();
        let progress = Progress::default();
        let slow = Timing { now, deadline: now + 500 * MS, expected_attempt: 460 * MS };
        assert_eq!(decide(&Attempt::Timeout, &RateSignal::default(), &policy(3), progress, slow, 0.5), Next::Answer);
        let fast = Timing { expected_attempt: 10 * MS, ..slow };
        assert_eq!(
            decide(&Attempt::Timeout, &RateSignal::default(), &policy(3), progress, fast, 0.5),
            Next::RetryAfter(50 * MS)
        );
        let reset = RateSignal { reset: Some(Duration::from_secs(3)), ..RateSignal::default() };
        let roomy = Timing { deadline: now + LONG, ..fast };
        assert_eq!(
            decide(&Attempt::RateLimited, &reset, &policy(3), progress, roomy, 0.5),
            Next::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(
            decide(&Attempt::ServerError(500), &reset, &policy(3), progress, roomy, 0.5),
            Next::RetryAfter(50 * MS)
        );
    }

    #[test]
    fn a_401_refreshes_once() {
        let none = RateSignal::default();
        assert_eq!(next(Attempt::Unauthorized, none, 0, false, LONG), Next::RefreshToken);
        assert_eq!(next(Attempt::Unauthorized, none, 0, true, LONG), Next::Answer);
    }

    #[test]
    fn final_answers_map_to_dispatch_errors() {
        let none = RateSignal::default();
        assert_eq!(conclude(Attempt::Timeout, &none).unwrap_err(), DispatchError::Failed(Outcome::Timeout));
        assert_eq!(
            conclude(Attempt::Unauthorized, &none).unwrap_err(),
            DispatchError::AuthUnavailable(Duration::from_secs(1))
        );
        let limited = RateSignal { reset: Some(Duration::from_secs(7)), ..RateSignal::default() };
        assert_eq!(
            conclude(Attempt::RateLimited, &limited).unwrap_err(),
            DispatchError::RateLimited(Duration::from_secs(7))
        );
        let garbage = Attempt::Success(bytes::Bytes::from_static(b"{}"));
        assert_eq!(conclude(garbage, &none).unwrap_err(), DispatchError::Failed(Outcome::InvalidResponse));
    }
}
