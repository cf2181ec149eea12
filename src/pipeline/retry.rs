//! Stage 6 of the pipeline: after an attempt is classified, retry, refresh the token, or
//! answer; a pure function of the attempt, the request's progress and its time.
//!
//! Retries follow the classification of [`Attempt`]: connection errors, timeouts,
//! 500/502/503/504 and 429 are retried after exponential backoff with full jitter, never
//! sooner than the upstream's `Retry-After`, at most `max_retries` times, and never when the
//! wait would run past the request's deadline. A 401 is not a retry: it withdraws the token
//! generation that got it and repeats the request once with a fresh token. (The retry budget,
//! [`super::retry_budget`], may still refuse a retry this allows.)

use std::time::{Duration, Instant};

use super::Error;
use crate::upstream::{Attempt, Backoff, Outcome, RateSignal, SuccessBody};

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
pub fn conclude(attempt: Attempt, signal: &RateSignal) -> Result<SuccessBody, Error> {
    match attempt {
        Attempt::Success(body) => SuccessBody::parse(&body).ok_or(Error::Failed(Outcome::InvalidResponse)),
        Attempt::Rejected { status, message } => Err(Error::Rejected { status, message }),
        Attempt::Unauthorized => Err(Error::AuthUnavailable(Duration::from_secs(1))),
        Attempt::RateLimited => {
            let wait = signal.retry_after.or(signal.reset).unwrap_or(Duration::from_secs(1));
            Err(Error::RateLimited(wait))
        }
        other => Err(Error::Failed(other.outcome())),
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
    fn final_answers_map_to_pipeline_errors() {
        let none = RateSignal::default();
        assert_eq!(conclude(Attempt::Timeout, &none).unwrap_err(), Error::Failed(Outcome::Timeout));
        assert_eq!(conclude(Attempt::Unauthorized, &none).unwrap_err(), Error::AuthUnavailable(Duration::from_secs(1)));
        let limited = RateSignal { reset: Some(Duration::from_secs(7)), ..RateSignal::default() };
        assert_eq!(conclude(Attempt::RateLimited, &limited).unwrap_err(), Error::RateLimited(Duration::from_secs(7)));
        let garbage = Attempt::Success(bytes::Bytes::from_static(b"{}"));
        assert_eq!(conclude(garbage, &none).unwrap_err(), Error::Failed(Outcome::InvalidResponse));
    }
}
