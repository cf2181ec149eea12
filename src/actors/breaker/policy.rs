//! The breaker's algorithm as a plain struct, [`Core`], which the actor only wraps.
//!
//! It holds failsafe's [`StateMachine`] with courier's policy (N consecutive failures, or a
//! failure rate over a time window), the [`Hook`] through which every transition becomes one
//! log line, one counted metric, gauges and the published cell, and what failsafe lacks: a cap
//! on concurrent half-open probes, leases that give a lost probe's slot back, forced modes, and
//! the schedule of background probes while open (see `probe.rs`), whose first success closes
//! the circuit through failsafe's `reset`.
//!
//! Time comes from failsafe's clock (the real clock outside tests), so tests freeze it with
//! `failsafe::clock::freeze` and advance it by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use failsafe::clock;
use failsafe::failure_policy::{
    consecutive_failures, success_rate_over_time_window, ConsecutiveFailures, OrElse, SuccessRateOverTimeWindow,
};
use failsafe::{FailurePolicy, Instrument, StateMachine};
use slog::{info, warn, Logger};

use super::cell::{BreakerCell, Mode, State};
use super::probe::{ProbeLog, ProbeSchedule, Probes};
use super::{BreakerSnapshot, InvalidBreaker, Rejected, Ticket};
use crate::config::BreakerConfig;
use crate::metrics::{Metrics, ProbeKind, ProbeResult};
use crate::upstream::Backoff;

/// The shortest `Retry-After` handed out, so a rejection never says "retry now".
const MIN_RETRY_AFTER: Duration = Duration::from_millis(1);
/// A background probe result repeating the last one logged is logged at most this often.
const PROBE_LOG_EVERY: Duration = Duration::from_secs(10);

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Open periods: `open`, doubling with each failed probe, capped at `open_max`.
///
/// failsafe never says how long it opened for, so every period handed to it is also
/// recorded (as a maximum) in `yielded`; the [`Hook`] takes it when the circuit opens. Both
/// policies may yield in the same failure, and failsafe then opens for the longer one.
#[derive(Clone, Debug)]
pub(super) struct OpenPeriods {
    backoff: Backoff,
    attempt: u32,
    yielded: Arc<AtomicU64>,
}

impl Iterator for OpenPeriods {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let period = self.backoff.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        self.yielded.fetch_max(nanos(period), Ordering::Relaxed);
        Some(period)
    }
}

/// failsafe's instrumentation: publishes each transition. Its methods run synchronously inside
/// the state machine calls, so after any call the cell shows the machine's state.
#[derive(Clone)]
pub(super) struct Hook {
    cell: Arc<BreakerCell>,
    metrics: Arc<Metrics>,
    log: Logger,
    yielded: Arc<AtomicU64>,
    /// The latest open period; failsafe reuses it when a probe fails and no policy yields.
    last_period: Arc<AtomicU64>,
}

impl Hook {
    fn enter(&self, to: State, open_until: Option<Instant>, open_for: Option<Duration>) {
        let from = self.cell.state();
        match open_until {
            Some(until) => self.cell.publish_open(until),
            None => self.cell.publish_state(to),
        }
        for state in State::ALL {
            let value = i64::from(state == to);
            self.metrics.breaker_state.with_label_values(&[state.as_str()]).set(value);
        }
        // The machine's constructor reports `closed` once: not a transition.
        if from != to {
            self.metrics.breaker_transitions.with_label_values(&[to.as_str()]).inc();
            info!(self.log, "breaker_transition";
                "from" => from.as_str(), "to" => to.as_str(),
                "open_for" => open_for.map(|d| d.as_secs_f64()));
        }
    }
}

impl Instrument for Hook {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        let taken = self.yielded.swap(0, Ordering::Relaxed);
        if taken > 0 {
            self.last_period.store(taken, Ordering::Relaxed);
        }
        let period = Duration::from_nanos(self.last_period.load(Ordering::Relaxed));
        // Read just after failsafe read it: our end is never before failsafe's.
        let until = clock::now() + period;
        self.enter(State::Open, Some(until), Some(period));
    }

    fn on_half_open(&self) {
        self.enter(State::HalfOpen, None, None);
    }

    fn on_closed(&self) {
        self.enter(State::Closed, None, None);
    }
}

type Policy = OrElse<ConsecutiveFailures<OpenPeriods>, SuccessRateOverTimeWindow<OpenPeriods>>;

/// A fresh (closed) state machine with courier's policy.
fn build_machine(config: &BreakerConfig, hook: &Hook) -> StateMachine<Policy, Hook> {
    let periods = OpenPeriods {
        backoff: Backoff::try_new(config.open, config.open_max, false).expect("validated"),
        attempt: 0,
        yielded: hook.yielded.clone(),
    };
    let rate =
        success_rate_over_time_window(1.0 - config.failure_rate, config.min_requests, config.window, periods.clone());
    let policy = consecutive_failures(config.consecutive_failures, periods).or_else(rate);
    StateMachine::new(policy, hook.clone())
}

fn validate(c: &BreakerConfig, lease: Duration) -> Result<(), InvalidBreaker> {
    let problem = if c.consecutive_failures == 0 {
        "consecutive_failures must be at least 1"
    } else if !(c.failure_rate > 0.0 && c.failure_rate <= 1.0) {
        "failure_rate must be in (0, 1]"
    } else if c.window < Duration::from_secs(1) {
        "window must be at least one second"
    } else if c.probes == 0 {
        "probes must be at least 1"
    } else if c.open.is_zero() {
        "open must be positive"
    } else if c.open > c.open_max {
        "open must not exceed open_max"
    } else if lease.is_zero() {
        "probe_lease must be positive"
    } else if c.probe_interval.is_zero() {
        "probe_interval must be positive"
    } else {
        return Ok(());
    };
    Err(InvalidBreaker { reason: problem })
}

/// The circuit: state machine, probe slots, mode.
pub(super) struct Core {
    config: BreakerConfig,
    lease: Duration,
    hook: Hook,
    machine: StateMachine<Policy, Hook>,
    mode: Mode,
    probes: Probes,
    background: ProbeSchedule,
    probe_log: ProbeLog,
    consecutive_failures: u32,
}

impl Core {
    /// A closed, automatic circuit publishing into `cell`.
    pub(super) fn new(
        config: &BreakerConfig,
        lease: Duration,
        cell: Arc<BreakerCell>,
        metrics: Arc<Metrics>,
        log: Logger,
    ) -> Result<Core, InvalidBreaker> {
        validate(config, lease)?;
        cell.set_forced_retry_after(config.open);
        let hook = Hook {
            cell,
            metrics,
            log,
            yielded: Arc::default(),
            last_period: Arc::new(AtomicU64::new(nanos(config.open))),
        };
        let core = Core {
            machine: build_machine(config, &hook),
            config: config.clone(),
            lease,
            hook,
            mode: Mode::Auto,
            probes: Probes::new(config.probes as usize),
            background: ProbeSchedule::new(config.probe_interval, lease),
            probe_log: ProbeLog::new(PROBE_LOG_EVERY),
            consecutive_failures: 0,
        };
        core.publish_mode();
        Ok(core)
    }

    /// The end of the open period, while the automatic circuit is open.
    pub(super) fn open_until(&self) -> Option<Instant> {
        (self.hook.cell.state() == State::Open).then(|| self.hook.cell.open_until())
    }

    /// Whether a request may call the upstream now, and as a probe or not.
    pub(super) fn permit(&mut self) -> Result<Ticket, Rejected> {
        let now = clock::now();
        match self.mode {
            Mode::ForcedClosed => return Ok(Ticket { probe: None }),
            Mode::ForcedOpen => return Err(self.rejected(self.config.open)),
            Mode::Auto => {}
        }
        // Moves an open circuit whose period is over to half-open.
        if !self.machine.is_call_permitted() {
            let left = self.hook.cell.open_until().saturating_duration_since(now);
            return Err(self.rejected(self.hook.cell.open_retry_after(left)));
        }
        if self.hook.cell.state() != State::HalfOpen {
            return Ok(Ticket { probe: None });
        }
        self.expire_probes();
        match self.probes.acquire(now, self.lease) {
            Some(id) => Ok(Ticket { probe: Some(id) }),
            None => Err(self.rejected(self.config.open)),
        }
    }

    fn rejected(&self, retry_after: Duration) -> Rejected {
        Rejected { retry_after: retry_after.max(MIN_RETRY_AFTER) }
    }

    /// Records a batch of outcomes: the successes happened before the failures.
    pub(super) fn record(&mut self, successes: u32, failures: u32) {
        for _ in 0..successes {
            self.machine.on_success();
        }
        if successes > 0 {
            self.consecutive_failures = 0;
        }
        for _ in 0..failures {
            self.machine.on_error();
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(failures);
        self.settle();
    }

    /// Frees a probe's slot and records its verdict, if it has one.
    pub(super) fn probe_done(&mut self, id: u64, success: Option<bool>) {
        self.probes.release(id);
        self.count_probe(ProbeKind::HalfOpen, ProbeResult::of(success));
        match success {
            Some(true) => self.record(1, 0),
            Some(false) => self.record(0, 1),
            None => {}
        }
    }

    /// Sets the mode; [`Mode::Auto`] starts over from a fresh, closed state machine.
    pub(super) fn force(&mut self, mode: Mode) {
        let from = self.mode;
        if mode == Mode::Auto {
            self.machine = build_machine(&self.config, &self.hook);
            self.consecutive_failures = 0;
        }
        self.mode = mode;
        self.publish_mode();
        self.settle();
        info!(self.hook.log, "breaker_mode_changed"; "from" => from.as_str(), "to" => mode.as_str());
    }

    /// Called when the open period should be over: moves the circuit to half-open.
    pub(super) fn tick(&mut self) {
        if self.open_until().is_some_and(|until| clock::now() >= until) {
            self.machine.is_call_permitted();
        }
    }

    /// Frees the slots of probes whose lease ended without a verdict; returns their ids.
    pub(super) fn expire_probes(&mut self) -> Vec<u64> {
        let expired = self.probes.expire(clock::now());
        for id in &expired {
            self.count_probe(ProbeKind::HalfOpen, ProbeResult::NoVerdict);
            warn!(self.hook.log, "breaker_probe_lease_expired"; "probe" => id);
        }
        expired
    }

    /// Background probes will be sent (someone registered to send them): an open circuit's
    /// `Retry-After` then says no more than their spacing.
    pub(super) fn probes_in_background(&self) {
        self.hook.cell.set_probe_every(self.config.probe_interval);
    }

    /// When the next background probe may start: `None` unless the circuit is open in
    /// automatic mode.
    pub(super) fn next_background_probe(&mut self) -> Option<Instant> {
        self.want_background_probes();
        self.background.next_start()
    }

    /// Probes are wanted from the moment the circuit is open in automatic mode.
    fn want_background_probes(&mut self) {
        let wanted = self.mode == Mode::Auto && self.hook.cell.state() == State::Open;
        self.background.want(wanted, clock::now());
    }

    /// Starts a background probe if one is due now: its id. Gives up a probe whose lease ended.
    pub(super) fn start_background_probe(&mut self) -> Option<u64> {
        let now = clock::now();
        if let Some(lost) = self.background.expire(now) {
            self.probe_finished(lost, ProbeResult::NoVerdict);
        }
        self.next_background_probe()?;
        self.background.start(now)
    }

    /// A background probe's verdict. A success closes the circuit at once, open or half-open
    /// (failsafe's `reset`: the next trip starts from the first open period again); a failure
    /// counts as one (it reopens a half-open circuit; an open one keeps its period). Reports of
    /// a probe that is no longer out are ignored.
    pub(super) fn background_probe_done(&mut self, id: u64, success: Option<bool>) {
        if !self.background.finish(id) {
            return;
        }
        match success {
            Some(true) => {
                if self.hook.cell.state() == State::Open {
                    self.machine.reset();
                }
                self.record(1, 0);
            }
            Some(false) => self.record(0, 1),
            None => {}
        }
        self.probe_finished(id, ProbeResult::of(success));
    }

    /// One background probe ended: the metric always, the log line (with the state it left the
    /// circuit in) at a bounded rate.
    fn probe_finished(&mut self, id: u64, result: ProbeResult) {
        self.count_probe(ProbeKind::Background, result);
        if let Some(left_out) = self.probe_log.admit(result, clock::now()) {
            info!(self.hook.log, "breaker_probe";
                "probe" => id, "result" => result.as_str(), "state" => self.hook.cell.state().as_str(),
                "left_out" => left_out);
        }
    }

    fn count_probe(&self, kind: ProbeKind, result: ProbeResult) {
        self.hook.metrics.breaker_probes.with_label_values(&[kind.as_str(), result.as_str()]).inc();
    }

    /// What the circuit looks like now.
    pub(super) fn snapshot(&self) -> BreakerSnapshot {
        let state = self.hook.cell.state();
        let effective = match self.mode {
            Mode::Auto => state,
            Mode::ForcedOpen => State::Open,
            Mode::ForcedClosed => State::Closed,
        };
        let now = clock::now();
        BreakerSnapshot {
            state: state.as_str(),
            mode: self.mode.as_str(),
            effective: effective.as_str(),
            open_for_seconds: self.open_until().map(|until| until.saturating_duration_since(now).as_secs_f64()),
            probes_in_flight: self.probes.held() as u32,
            consecutive_failures: self.consecutive_failures,
        }
    }

    /// Probe slots belong to one half-open period: leaving it frees them. Background probes are
    /// wanted from the moment the circuit opens.
    fn settle(&mut self) {
        if self.hook.cell.state() != State::HalfOpen {
            self.probes.clear();
        }
        self.want_background_probes();
    }

    fn publish_mode(&self) {
        self.hook.cell.publish_mode(self.mode);
        for mode in Mode::ALL {
            let value = i64::from(mode == self.mode);
            self.hook.metrics.breaker_mode.with_label_values(&[mode.as_str()]).set(value);
        }
    }
}
