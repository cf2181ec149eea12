//! The Breaker actor owns the circuit state in front of the upstream: the failsafe state
//! machine (closed / open / half-open, its failure counts and its growing open periods), the
//! half-open probe slots and the operator's forced mode.
//!
//! It is an actor because that state must change in one place: outcomes from every worker,
//! probe verdicts, timers and operator commands all mutate the same circuit, and the probe cap
//! only holds if one owner counts the slots. The algorithm itself is a plain struct in
//! `policy.rs`; this shell feeds it messages and runs its timers.
//!
//! **Why the hot path reads a cell.** Asking the actor "may I call?" on every request would
//! cost a cross-thread round trip per request. Instead the actor publishes its state in a
//! [`BreakerCell`] (atomics only) and workers call [`BreakerCell::gate`]: closed passes, open
//! rejects with a `Retry-After`, both without a message. Only while half-open (or just after
//! an open period ended) does a worker send [`Permit`], which is exactly when the probe cap
//! matters and traffic is low. When the open period ends the actor moves to half-open by
//! itself, so the cell, the gauges and `/admin/state` show it without traffic.
//!
//! **Why it probes by itself.** While open, the actor has a background probe sent every
//! `COURIER_BREAKER_PROBE_INTERVAL` (one at a time, each with a budget permit; see `probe.rs`),
//! and the first success closes the circuit: recovery is noticed within about an interval of
//! the upstream's, not at the end of an open period that doubled during a long outage.
//!
//! **What counts.** The caller classifies: 5xx, timeouts and connection errors are failures;
//! 4xx answers are successes of the upstream (the upstream worked; the request was bad); 429
//! is not reported at all, because rate limiting is the budget's business, not the circuit's.
//! Workers report in [`Outcomes`] batches with `try_send` and count
//! `courier_breaker_reports_dropped_total` when the mailbox (4096) is full; probes report
//! alone in [`ProbeDone`]. Callers also count `courier_breaker_rejections_total` for every
//! [`Gate::Reject`] and [`Rejected`] they turn into a 503, since most never reach the actor.
//!
//! Every transition is one `breaker_transition` JSON line and one
//! `courier_breaker_transitions_total` increment, both from failsafe's `Instrument` hook.

mod cell;
mod policy;
mod probe;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use slog::{o, Logger};

pub use cell::{BreakerCell, Gate, Mode, State};
use policy::Core;
pub use probe::{ProbeRan, RunProbe, UseProber};

use crate::config::BreakerConfig;
use crate::metrics::Metrics;

/// Mailbox capacity: outcome reports beyond it are dropped (and counted) by their senders.
const MAILBOX: usize = 4096;

/// Slack added to timers so they fire after, never at, the instant they wait for.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Permission to call the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// `Some(id)` for a half-open probe: report it with [`ProbeDone`], not in a batch.
    /// `None` when the circuit let the call through as a normal one (closed by then).
    pub probe: Option<u64>,
}

/// The circuit refuses the call: fail fast with a 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit open: retry after {retry_after:?}")]
pub struct Rejected {
    /// How long until asking again makes sense.
    pub retry_after: Duration,
}

/// Why breaker settings were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid breaker settings: {reason}")]
pub struct InvalidBreaker {
    reason: &'static str,
}

/// The circuit as `/readyz` and `/admin/state` show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BreakerSnapshot {
    /// The automatic circuit's state (`closed`, `open`, `half_open`), as in `courier_breaker_state`.
    pub state: &'static str,
    /// The mode (`auto`, `forced_open`, `forced_closed`), as in `courier_breaker_mode`.
    pub mode: &'static str,
    /// What requests meet: `state` in auto mode, else what the mode forces.
    pub effective: &'static str,
    /// Time left in the automatic circuit's open period, while it is open.
    pub open_for_seconds: Option<f64>,
    /// Half-open probes holding a slot.
    pub probes_in_flight: u32,
    /// Failures reported in a row since the last success.
    pub consecutive_failures: u32,
}

/// Asks to call the upstream when [`BreakerCell::gate`] said [`Gate::AskActor`]. While
/// half-open, at most `probes` calls hold a probe ticket at once; an open circuit whose period
/// is over becomes half-open here and grants the first probe.
#[derive(Message, Debug)]
#[rtype(result = "Result<Ticket, Rejected>")]
pub struct Permit;

/// Fire-and-forget batch of outcomes of non-probe calls; the successes happened before the
/// failures. Send with `try_send`; count `breaker_reports_dropped` when it fails.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Outcomes {
    /// Calls the upstream answered (2xx–4xx except 429).
    pub successes: u32,
    /// Calls that failed (5xx, timeout, connection error).
    pub failures: u32,
}

/// The end of a probe. A probe that never reports gives its slot back when its lease ends.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ProbeDone {
    /// The ticket's probe id.
    pub id: u64,
    /// The verdict; `None` when no attempt was made (e.g. the budget refused it): the slot is
    /// freed without a verdict.
    pub success: Option<bool>,
}

/// Sets the operator's mode and answers the resulting snapshot. Forced modes override the
/// automatic circuit, which keeps recording outcomes meanwhile; going back to [`Mode::Auto`]
/// resets it to a fresh closed state (counts, failure rate and open period start over).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "BreakerSnapshot")]
pub struct Force {
    /// The new mode.
    pub mode: Mode,
}

/// Asks for the current [`BreakerSnapshot`].
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "BreakerSnapshot")]
pub struct GetSnapshot;

/// The actor.
pub struct Breaker {
    core: Core,
    lease: Duration,
    /// The timer that moves an open circuit to half-open, and the end it waits for.
    open_timer: Option<(Instant, SpawnHandle)>,
    /// Who sends background probes, once registered with [`UseProber`].
    prober: Option<Recipient<RunProbe>>,
    /// The timer of the next background probe, and the instant it waits for.
    probe_timer: Option<(Instant, SpawnHandle)>,
}

impl Breaker {
    /// A closed, automatic breaker publishing into `cell`. A probe that has not reported
    /// after `probe_lease` loses its slot.
    pub fn new(
        config: &BreakerConfig,
        probe_lease: Duration,
        cell: Arc<BreakerCell>,
        metrics: Arc<Metrics>,
        log: &Logger,
    ) -> Result<Breaker, InvalidBreaker> {
        let log = log.new(o!("actor" => "breaker"));
        let core = Core::new(config, probe_lease, cell, metrics, log)?;
        Ok(Breaker { core, lease: probe_lease, open_timer: None, prober: None, probe_timer: None })
    }

    /// Keeps the timers armed: one for the end of the current open period, one for the next
    /// background probe.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        self.arm_probe(ctx);
        let until = self.core.open_until();
        if self.open_timer.map(|(armed, _)| armed) == until {
            return;
        }
        if let Some((_, handle)) = self.open_timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(until) = until {
            let wait = until.saturating_duration_since(Instant::now()) + TIMER_SLACK;
            let handle = ctx.run_later(wait, |act, ctx| {
                act.open_timer = None;
                act.core.tick();
                act.arm(ctx);
            });
            self.open_timer = Some((until, handle));
        }
    }
}

impl Actor for Breaker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        self.arm(ctx);
    }
}

impl Handler<Permit> for Breaker {
    type Result = Result<Ticket, Rejected>;

    fn handle(&mut self, _: Permit, ctx: &mut Context<Self>) -> Self::Result {
        let result = self.core.permit();
        if let Ok(Ticket { probe: Some(_) }) = result {
            ctx.run_later(self.lease + TIMER_SLACK, |act, _| {
                act.core.expire_probes();
            });
        }
        self.arm(ctx);
        result
    }
}

impl Handler<Outcomes> for Breaker {
    type Result = ();

    fn handle(&mut self, msg: Outcomes, ctx: &mut Context<Self>) {
        self.core.record(msg.successes, msg.failures);
        self.arm(ctx);
    }
}

impl Handler<ProbeDone> for Breaker {
    type Result = ();

    fn handle(&mut self, msg: ProbeDone, ctx: &mut Context<Self>) {
        self.core.probe_done(msg.id, msg.success);
        self.arm(ctx);
    }
}

impl Handler<Force> for Breaker {
    type Result = MessageResult<Force>;

    fn handle(&mut self, msg: Force, ctx: &mut Context<Self>) -> Self::Result {
        self.core.force(msg.mode);
        self.arm(ctx);
        MessageResult(self.core.snapshot())
    }
}

impl Handler<GetSnapshot> for Breaker {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.snapshot())
    }
}

#[cfg(test)]
mod core_tests;

#[cfg(test)]
mod tests {
    //! The actor on real time, with short open periods and bounded polling.

    use super::*;
    use slog::Discard;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn fast_config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: SEC,
            min_requests: 1000,
            open: 50 * MS,
            open_max: 200 * MS,
            probes: 1,
            probe_interval: SEC,
        }
    }

    fn quiet() -> Logger {
        Logger::root(Discard, o!())
    }

    /// Polls `done` every 5 ms until it holds, failing after `bound`.
    async fn eventually(bound: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < bound, "timed out waiting for {what}");
            actix_rt::time::sleep(5 * MS).await;
        }
    }

    #[actix_rt::test]
    async fn the_actor_opens_probes_and_closes_through_the_cell() {
        let cell = Arc::new(BreakerCell::new());
        let metrics = Arc::new(Metrics::new());
        let breaker = Breaker::new(&fast_config(), SEC, cell.clone(), metrics.clone(), &quiet()).unwrap();
        let addr = breaker.start();
        assert_eq!(cell.gate(Instant::now()), Gate::Pass);
        let opened = || metrics.breaker_transitions.with_label_values(&["open"]).get();

        addr.try_send(Outcomes { successes: 0, failures: 3 }).unwrap();
        let bound = 2 * SEC;
        eventually(bound, "open", || cell.state() != State::Closed).await;
        assert_ne!(cell.gate(Instant::now()), Gate::Pass);
        assert_eq!(opened(), 1);

        // No traffic: the actor's own timer moves it to half-open.
        eventually(bound, "half-open", || cell.state() == State::HalfOpen).await;
        assert_eq!(cell.gate(Instant::now()), Gate::AskActor);
        let probe = addr.send(Permit).await.unwrap().unwrap().probe.unwrap();
        assert!(addr.send(Permit).await.unwrap().is_err(), "one probe at a time");

        // The probe fails: open again, for twice as long.
        let before = Instant::now();
        addr.send(ProbeDone { id: probe, success: Some(false) }).await.unwrap();
        let after = Instant::now();
        assert_eq!(opened(), 2);
        let until = cell.open_until();
        assert!(until >= before + 100 * MS && until <= after + 100 * MS);

        // The next probe succeeds: closed.
        eventually(bound, "half-open again", || cell.state() == State::HalfOpen).await;
        let probe = addr.send(Permit).await.unwrap().unwrap().probe.unwrap();
        addr.send(ProbeDone { id: probe, success: Some(true) }).await.unwrap();
        assert_eq!(cell.gate(Instant::now()), Gate::Pass);
    }

    #[actix_rt::test]
    async fn the_actor_releases_a_lost_probe_and_obeys_force() {
        let cell = Arc::new(BreakerCell::new());
        let metrics = Arc::new(Metrics::new());
        let breaker = Breaker::new(&fast_config(), 200 * MS, cell.clone(), metrics, &quiet()).unwrap();
        let addr = breaker.start();
        addr.send(Outcomes { successes: 0, failures: 3 }).await.unwrap();
        eventually(2 * SEC, "half-open", || cell.state() == State::HalfOpen).await;
        let lost = addr.send(Permit).await.unwrap().unwrap().probe.unwrap();
        assert!(addr.send(Permit).await.unwrap().is_err());
        // Without a report and without traffic, the lease timer frees the slot.
        let start = Instant::now();
        while addr.send(GetSnapshot).await.unwrap().probes_in_flight > 0 {
            assert!(start.elapsed() < 2 * SEC, "the lease never freed the slot");
            actix_rt::time::sleep(5 * MS).await;
        }
        let next = addr.send(Permit).await.unwrap().unwrap().probe;
        assert_ne!(next, Some(lost));

        let snapshot = addr.send(Force { mode: Mode::ForcedOpen }).await.unwrap();
        assert_eq!((snapshot.mode, snapshot.effective), ("forced_open", "open"));
        assert!(matches!(cell.gate(Instant::now()), Gate::Reject { .. }));
        let snapshot = addr.send(Force { mode: Mode::Auto }).await.unwrap();
        assert_eq!((snapshot.state, snapshot.mode), ("closed", "auto"));
        assert_eq!(cell.gate(Instant::now()), Gate::Pass);
    }
}
