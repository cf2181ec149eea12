//! The circuit (`policy::Core`) on failsafe's frozen clock: synchronous and deterministic.

use std::sync::Arc;
use std::time::Duration;

use failsafe::clock::{self, MockClock};
use slog::{o, Logger};

use super::policy::Core;
use super::*;
use crate::logging::{LogCapture, LogTarget, Logging};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn config() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 3,
        failure_rate: 0.5,
        window: SEC,
        min_requests: 1000,
        open: SEC,
        open_max: 4 * SEC,
        probes: 2,
        probe_interval: SEC,
    }
}

fn quiet() -> Logger {
    Logger::root(slog::Discard, o!())
}

struct Rig {
    core: Core,
    cell: Arc<BreakerCell>,
    metrics: Arc<Metrics>,
}

fn rig(config: &BreakerConfig, lease: Duration, log: Logger) -> Rig {
    let cell = Arc::new(BreakerCell::new());
    let metrics = Arc::new(Metrics::new());
    let core = Core::new(config, lease, cell.clone(), metrics.clone(), log).unwrap();
    Rig { core, cell, metrics }
}

impl Rig {
    /// The `courier_breaker_state` gauge that reads 1 (and checks the others read 0).
    fn state_gauge(&self) -> &'static str {
        let on: Vec<_> = State::ALL
            .into_iter()
            .filter(|s| self.metrics.breaker_state.with_label_values(&[s.as_str()]).get() == 1)
            .collect();
        assert_eq!(on.len(), 1, "exactly one state gauge is 1: {on:?}");
        on[0].as_str()
    }

    fn mode_gauge(&self) -> &'static str {
        let on: Vec<_> = Mode::ALL
            .into_iter()
            .filter(|m| self.metrics.breaker_mode.with_label_values(&[m.as_str()]).get() == 1)
            .collect();
        assert_eq!(on.len(), 1, "exactly one mode gauge is 1: {on:?}");
        on[0].as_str()
    }

    fn transitions(&self, to: State) -> u64 {
        self.metrics.breaker_transitions.with_label_values(&[to.as_str()]).get()
    }

    /// Opens the circuit with consecutive failures and checks it.
    fn trip(&mut self) {
        self.core.record(0, 3);
        assert_eq!(self.cell.state(), State::Open);
    }

    /// Lets the open period pass and takes the first probe.
    fn half_open(&mut self, time: &mut MockClock) -> u64 {
        let left = self.core.open_until().unwrap() - time.now();
        time.advance(left + MS);
        let ticket = self.core.permit().unwrap();
        assert_eq!(self.cell.state(), State::HalfOpen);
        ticket.probe.expect("a probe")
    }

    fn open_for(&self, time: &MockClock) -> Duration {
        self.core.open_until().unwrap() - time.now()
    }
}

#[test]
fn consecutive_failures_open_it() {
    clock::freeze(|_| {
        let mut r = rig(&config(), SEC, quiet());
        r.core.record(0, 2);
        r.core.record(1, 2); // the success came first: the run starts over
        assert_eq!(r.cell.state(), State::Closed);
        assert_eq!(r.core.snapshot().consecutive_failures, 2);
        assert_eq!(r.state_gauge(), "closed");
        r.core.record(0, 1);
        assert_eq!(r.cell.state(), State::Open);
        assert_eq!(r.state_gauge(), "open");
        assert_eq!(r.transitions(State::Open), 1);
        assert_eq!(r.transitions(State::Closed), 0, "construction is no transition");
    });
}

#[test]
fn a_failure_rate_over_the_window_opens_it_once_min_requests_are_seen() {
    clock::freeze(|time| {
        let config = BreakerConfig { min_requests: 9, ..config() };
        let mut r = rig(&config, SEC, quiet());
        time.advance(SEC); // the rate counts once a whole window has passed
                           // Two failures in three, never three failures in a row.
        for _ in 0..3 {
            for (s, f) in [(0, 1), (0, 1), (1, 0)] {
                time.advance(50 * MS);
                r.core.record(s, f);
            }
        }
        assert_eq!(r.cell.state(), State::Closed, "only 9 requests, 6 failed");
        time.advance(50 * MS);
        r.core.record(0, 1);
        assert_eq!(r.cell.state(), State::Open);
        assert_eq!(r.open_for(time), SEC);
    });
}

#[test]
fn open_rejects_with_the_time_left() {
    clock::freeze(|time| {
        let mut r = rig(&config(), SEC, quiet());
        r.trip();
        let gate = r.cell.gate(time.now());
        assert_eq!(gate, Gate::Reject { retry_after: SEC });
        time.advance(400 * MS);
        assert_eq!(r.cell.gate(time.now()), Gate::Reject { retry_after: 600 * MS });
        let rejected = r.core.permit().unwrap_err();
        assert_eq!(rejected.retry_after, 600 * MS);
        let snapshot = r.core.snapshot();
        assert_eq!((snapshot.state, snapshot.effective), ("open", "open"));
        assert_eq!(snapshot.open_for_seconds, Some(0.6));
        time.advance(600 * MS);
        assert_eq!(r.cell.gate(time.now()), Gate::AskActor);
    });
}

#[test]
fn half_open_grants_at_most_the_probe_cap() {
    clock::freeze(|time| {
        let mut r = rig(&config(), SEC, quiet());
        r.trip();
        time.advance(SEC + MS);
        r.core.tick(); // the open period's timer
        assert_eq!(r.cell.state(), State::HalfOpen);
        assert_eq!(r.state_gauge(), "half_open");
        assert_eq!(r.cell.gate(time.now()), Gate::AskActor);
        let first = r.core.permit().unwrap().probe.unwrap();
        let second = r.core.permit().unwrap().probe.unwrap();
        assert_ne!(first, second);
        assert_eq!(r.core.permit(), Err(Rejected { retry_after: SEC }));
        assert_eq!(r.core.snapshot().probes_in_flight, 2);
        // A probe that made no attempt frees its slot without a verdict.
        r.core.probe_done(first, None);
        assert_eq!(r.cell.state(), State::HalfOpen);
        assert!(r.core.permit().unwrap().probe.is_some());
    });
}

#[test]
fn a_probe_success_closes_it() {
    clock::freeze(|time| {
        let mut r = rig(&config(), SEC, quiet());
        r.trip();
        let probe = r.half_open(time);
        r.core.probe_done(probe, Some(true));
        assert_eq!(r.cell.state(), State::Closed);
        assert_eq!(r.cell.gate(time.now()), Gate::Pass);
        assert_eq!(r.core.snapshot().probes_in_flight, 0);
        assert_eq!(r.state_gauge(), "closed");
        assert_eq!(r.transitions(State::Closed), 1);
        // Closed again, the next trip starts from the first open period.
        r.trip();
        assert_eq!(r.open_for(time), SEC);
    });
}

#[test]
fn each_failed_probe_reopens_for_longer_up_to_open_max() {
    clock::freeze(|time| {
        let mut r = rig(&config(), SEC, quiet());
        r.trip();
        assert_eq!(r.open_for(time), SEC);
        for expected in [2 * SEC, 4 * SEC, 4 * SEC] {
            let probe = r.half_open(time);
            r.core.probe_done(probe, Some(false));
            assert_eq!(r.cell.state(), State::Open);
            assert_eq!(r.open_for(time), expected);
            assert_eq!(r.core.snapshot().probes_in_flight, 0, "reopening frees slots");
        }
        assert_eq!(r.transitions(State::Open), 4);
        assert_eq!(r.transitions(State::HalfOpen), 3);
    });
}

#[test]
fn a_lease_gives_a_lost_probe_slot_back() {
    clock::freeze(|time| {
        let config = BreakerConfig { probes: 1, ..config() };
        let mut r = rig(&config, 10 * SEC, quiet());
        r.trip();
        let lost = r.half_open(time);
        assert!(r.core.permit().is_err());
        time.advance(9 * SEC);
        assert!(r.core.expire_probes().is_empty());
        time.advance(SEC);
        assert_eq!(r.core.expire_probes(), vec![lost]);
        let next = r.core.permit().unwrap().probe.unwrap();
        assert_ne!(next, lost);
        assert_eq!(r.cell.state(), State::HalfOpen, "no verdict from a lost probe");
    });
}

#[test]
fn forced_modes_override_and_auto_starts_over() {
    clock::freeze(|time| {
        let mut r = rig(&config(), SEC, quiet());
        assert_eq!(r.mode_gauge(), "auto");

        r.core.force(Mode::ForcedOpen);
        assert_eq!(r.mode_gauge(), "forced_open");
        assert_eq!(r.cell.gate(time.now()), Gate::Reject { retry_after: SEC });
        assert_eq!(r.core.permit(), Err(Rejected { retry_after: SEC }));
        r.core.record(0, 3); // still recorded
        assert_eq!(r.cell.state(), State::Open);

        r.core.force(Mode::ForcedClosed);
        assert_eq!(r.mode_gauge(), "forced_closed");
        assert_eq!(r.cell.gate(time.now()), Gate::Pass);
        assert_eq!(r.core.permit(), Ok(Ticket { probe: None }));
        let snapshot = r.core.snapshot();
        assert_eq!((snapshot.state, snapshot.mode, snapshot.effective), ("open", "forced_closed", "closed"));

        r.core.force(Mode::Auto);
        assert_eq!(r.mode_gauge(), "auto");
        assert_eq!(r.cell.state(), State::Closed);
        assert_eq!(r.state_gauge(), "closed");
        assert_eq!(r.cell.gate(time.now()), Gate::Pass);
        let snapshot = r.core.snapshot();
        assert_eq!((snapshot.consecutive_failures, snapshot.open_for_seconds), (0, None));
        // Fresh counts: two failures do not reopen it.
        r.core.record(0, 2);
        assert_eq!(r.cell.state(), State::Closed);
    });
}

#[test]
fn transitions_and_mode_changes_are_one_json_line_each() {
    let capture = LogCapture::default();
    let dropped = prometheus::IntCounter::new("d", "d").unwrap();
    let logging = Logging::start(slog::Level::Info, LogTarget::Capture(capture.clone()), dropped);
    let log = logging.logger.new(o!("actor" => "breaker"));
    clock::freeze(|time| {
        let mut r = rig(&config(), SEC, log);
        r.trip();
        let probe = r.half_open(time);
        r.core.probe_done(probe, Some(true));
        r.core.force(Mode::ForcedOpen);
    });
    drop(logging);
    let lines = capture.lines();
    let events: Vec<_> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["breaker_transition", "breaker_transition", "breaker_transition", "breaker_mode_changed"]);
    let hops: Vec<_> = lines[..3].iter().map(|l| (l["from"].as_str().unwrap(), l["to"].as_str().unwrap())).collect();
    assert_eq!(hops, [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]);
    assert_eq!(lines[0]["open_for"], 1.0);
    assert_eq!(lines[0]["actor"], "breaker");
    assert!(lines[1]["open_for"].is_null());
    assert_eq!((lines[3]["from"].as_str(), lines[3]["to"].as_str()), (Some("auto"), Some("forced_open")));
}

impl Rig {
    fn probes(&self, kind: &str, result: &str) -> u64 {
        self.metrics.breaker_probes.with_label_values(&[kind, result]).get()
    }
}

#[test]
fn a_background_probe_success_closes_the_circuit_long_before_its_period_ends() {
    clock::freeze(|time| {
        let config = BreakerConfig { open: 10 * SEC, open_max: 60 * SEC, ..config() };
        let mut r = rig(&config, SEC, quiet());
        assert_eq!(r.core.next_background_probe(), None, "closed: no probes");
        r.trip();
        let opened = time.now();
        assert_eq!(r.core.next_background_probe(), Some(opened + SEC), "the first one an interval after opening");
        assert_eq!(r.core.start_background_probe(), None, "not due yet");
        // Client requests still fail fast while the probe is out.
        time.advance(SEC);
        let probe = r.core.start_background_probe().unwrap();
        assert_eq!(r.cell.gate(time.now()), Gate::Reject { retry_after: 9 * SEC });
        // Once someone sends the probes, Retry-After points at the next one, not the period's end.
        r.core.probes_in_background();
        assert_eq!(r.cell.gate(time.now()), Gate::Reject { retry_after: SEC });
        assert_eq!(r.core.permit(), Err(Rejected { retry_after: SEC }));
        r.core.background_probe_done(probe, Some(true));
        assert_eq!(r.cell.state(), State::Closed);
        assert_eq!(r.cell.gate(time.now()), Gate::Pass);
        assert_eq!(r.state_gauge(), "closed");
        assert_eq!((r.transitions(State::HalfOpen), r.transitions(State::Closed)), (0, 1));
        assert_eq!(r.core.next_background_probe(), None);
        assert_eq!(r.probes("background", "success"), 1);
        // Closed by a probe as by any success: the next trip starts from the first period.
        r.trip();
        assert_eq!(r.open_for(time), 10 * SEC);
    });
}

#[test]
fn failed_background_probes_keep_it_open_at_one_a_second_and_forced_modes_stop_them() {
    clock::freeze(|time| {
        let config = BreakerConfig { open: 60 * SEC, open_max: 60 * SEC, ..config() };
        let mut r = rig(&config, 5 * SEC, quiet());
        r.trip();
        let until = r.core.open_until();
        let (mut started, end) = (0, time.now() + 30 * SEC);
        // Asked every 100 ms for 30 s; each probe fails 200 ms after it started.
        while time.now() < end {
            time.advance(100 * MS);
            if let Some(id) = r.core.start_background_probe() {
                started += 1;
                time.advance(200 * MS);
                r.core.background_probe_done(id, Some(false));
            }
        }
        assert!((27..=30).contains(&started), "{started} probes in ~30 s");
        assert_eq!(r.probes("background", "failure"), started);
        assert_eq!(r.cell.state(), State::Open);
        assert_eq!(r.core.open_until(), until, "failed probes do not lengthen the open period");
        assert_eq!(r.transitions(State::Open), 1);
        // A probe without a verdict (no permit) only frees its place.
        time.advance(SEC);
        let id = r.core.start_background_probe().unwrap();
        r.core.background_probe_done(id, None);
        assert_eq!(r.probes("background", "no_verdict"), 1);
        // An operator's forced mode stops them; back in auto the circuit is fresh and closed.
        r.core.force(Mode::ForcedOpen);
        assert_eq!(r.core.next_background_probe(), None);
        r.core.force(Mode::Auto);
        assert_eq!(r.core.next_background_probe(), None);
    });
}

#[test]
fn a_lost_background_probe_is_given_up_after_its_lease_and_a_late_report_ignored() {
    clock::freeze(|time| {
        let mut r = rig(&config(), 3 * SEC, quiet());
        r.trip();
        time.advance(SEC);
        let lost = r.core.start_background_probe().unwrap();
        time.advance(2 * SEC);
        assert_eq!(r.core.start_background_probe(), None, "one out at a time");
        time.advance(SEC);
        // The open period (1 s, doubled by nothing) is over, but no request moved it on: open.
        let next = r.core.start_background_probe().expect("the lease ended");
        assert_ne!(next, lost);
        assert_eq!(r.probes("background", "no_verdict"), 1);
        r.core.background_probe_done(lost, Some(true));
        assert_eq!(r.cell.state(), State::Open, "a late report of a given-up probe is ignored");
    });
}

#[test]
fn invalid_settings_are_refused() {
    let metrics = Arc::new(Metrics::new());
    let make = |change: fn(&mut BreakerConfig), lease: Duration| {
        let mut config = config();
        change(&mut config);
        let cell = Arc::new(BreakerCell::new());
        Breaker::new(&config, lease, cell, metrics.clone(), &quiet())
    };
    assert!(make(|_| {}, SEC).is_ok());
    assert!(make(|_| {}, Duration::ZERO).is_err());
    assert!(make(|c| c.probes = 0, SEC).is_err());
    assert!(make(|c| c.consecutive_failures = 0, SEC).is_err());
    assert!(make(|c| c.failure_rate = 0.0, SEC).is_err());
    assert!(make(|c| c.failure_rate = 1.5, SEC).is_err());
    assert!(make(|c| c.open = 5 * SEC, SEC).is_err());
    assert!(make(|c| c.window = 500 * MS, SEC).is_err());
    assert!(make(|c| c.probe_interval = Duration::ZERO, SEC).is_err());
}
