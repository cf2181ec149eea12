//! Probes of the upstream's health: the half-open probe slots ([`Probes`]) and background
//! probes of an open circuit.
//!
//! **Why.** An open period that doubles after each failed half-open probe protects a dead
//! upstream, but it also decides how long clients wait once the upstream is back: after a long
//! outage the circuit could stay open for most of `COURIER_BREAKER_OPEN_MAX` after recovery.
//! So while the circuit is open (in automatic mode) the Breaker has one small request sent on
//! its own every `COURIER_BREAKER_PROBE_INTERVAL`: the first success closes the circuit, however
//! long the open period still had to run. Client requests keep failing fast meanwhile; only the
//! probe reaches the upstream.
//!
//! **Why it cannot hammer.** At most one background probe is out at a time, starts are at least
//! one interval apart (also across reopenings), the first comes one interval after opening,
//! and each needs a free permit of the rate budget (no permit: no probe). A probe whose report
//! never comes gives its place back after its lease (the attempt timeout plus a second).
//!
//! The Breaker owns the schedule ([`ProbeSchedule`], a plain struct tested on virtual time);
//! whoever can reach the upstream (the gateway's prober, on the main arbiter) registers with
//! [`UseProber`], runs each [`RunProbe`] and answers [`ProbeRan`]. Results are counted in
//! `courier_breaker_probes_total` and logged as `breaker_probe` lines at a bounded rate
//! ([`ProbeLog`]).

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{Breaker, TIMER_SLACK};
use crate::metrics::ProbeResult;

/// Registers who runs background probes. Without one, the circuit only probes with client
/// requests once half-open, as before.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UseProber(pub Recipient<RunProbe>);

/// Asks the prober to send one background probe now and to answer [`ProbeRan`] with `id`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct RunProbe {
    /// The probe's id, to name in [`ProbeRan`].
    pub id: u64,
}

/// The end of a background probe.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ProbeRan {
    /// The id from [`RunProbe`].
    pub id: u64,
    /// `Some(true)`: the upstream answered; `Some(false)`: it failed (5xx, timeout, connection
    /// error); `None`: no attempt was made (no budget permit, no token) or it said nothing about
    /// the upstream's health (429, TLS).
    pub success: Option<bool>,
}

/// Half-open probe slots: at most `cap` held at once, each until its verdict or its lease end.
#[derive(Debug)]
pub(super) struct Probes {
    cap: usize,
    next_id: u64,
    held: Vec<(u64, Instant)>,
}

impl Probes {
    /// No slot held; at most `cap` at once.
    pub(super) fn new(cap: usize) -> Probes {
        Probes { cap, next_id: 0, held: Vec::new() }
    }

    /// Takes a slot until `now + lease`, if one is free: its id.
    pub(super) fn acquire(&mut self, now: Instant, lease: Duration) -> Option<u64> {
        if self.held.len() >= self.cap {
            return None;
        }
        self.next_id += 1;
        self.held.push((self.next_id, now + lease));
        Some(self.next_id)
    }

    /// Gives slot `id` back.
    pub(super) fn release(&mut self, id: u64) {
        self.held.retain(|&(held, _)| held != id);
    }

    /// Frees the slots whose lease ended at or before `now`: their ids.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<u64> {
        let expired = self.held.iter().filter(|&&(_, end)| end <= now);
        let ids = expired.map(|&(id, _)| id).collect();
        self.held.retain(|&(_, end)| end > now);
        ids
    }

    /// Slots held now.
    pub(super) fn held(&self) -> usize {
        self.held.len()
    }

    /// Frees every slot (the half-open period is over).
    pub(super) fn clear(&mut self) {
        self.held.clear();
    }
}

/// When background probes start: at most one out at a time, starts at least `interval` apart,
/// the first one `interval` after the circuit opened.
#[derive(Debug)]
pub(super) struct ProbeSchedule {
    interval: Duration,
    lease: Duration,
    /// Since when probes are wanted (the circuit is open in automatic mode).
    wanted_since: Option<Instant>,
    last_start: Option<Instant>,
    /// The probe out now, and when its lease ends.
    in_flight: Option<(u64, Instant)>,
    next_id: u64,
}

impl ProbeSchedule {
    /// A schedule probing every `interval`; a probe not reported within `lease` is given up.
    pub(super) fn new(interval: Duration, lease: Duration) -> ProbeSchedule {
        ProbeSchedule { interval, lease, wanted_since: None, last_start: None, in_flight: None, next_id: 0 }
    }

    /// Whether probes are wanted from `now` on (the circuit is open, automatic mode).
    pub(super) fn want(&mut self, wanted: bool, now: Instant) {
        match (wanted, self.wanted_since) {
            (true, None) => self.wanted_since = Some(now),
            (false, Some(_)) => self.wanted_since = None,
            _ => {}
        }
    }

    /// When the next probe may start; `None` while none is wanted.
    pub(super) fn next_start(&self) -> Option<Instant> {
        let mut at = self.wanted_since? + self.interval;
        if let Some(last) = self.last_start {
            at = at.max(last + self.interval);
        }
        if let Some((_, lease_end)) = self.in_flight {
            at = at.max(lease_end);
        }
        Some(at)
    }

    /// Starts a probe at `now` if one is due: its id.
    pub(super) fn start(&mut self, now: Instant) -> Option<u64> {
        if self.in_flight.is_some() || self.next_start().is_none_or(|at| at > now) {
            return None;
        }
        self.next_id += 1;
        self.last_start = Some(now);
        self.in_flight = Some((self.next_id, now + self.lease));
        Some(self.next_id)
    }

    /// Frees the place of a probe whose lease ended at or before `now`: its id.
    pub(super) fn expire(&mut self, now: Instant) -> Option<u64> {
        let (id, end) = self.in_flight?;
        (end <= now).then(|| {
            self.in_flight = None;
            id
        })
    }

    /// The probe `id` reported: true when it is the one out (a late or unknown report is ignored).
    pub(super) fn finish(&mut self, id: u64) -> bool {
        let current = self.in_flight.is_some_and(|(out, _)| out == id);
        if current {
            self.in_flight = None;
        }
        current
    }
}

/// Which probe results become a log line: a result unlike the last one logged at once, the same
/// result again at most once per `every`, with the count of those left out meanwhile.
#[derive(Debug)]
pub(super) struct ProbeLog {
    every: Duration,
    last: Option<(Instant, ProbeResult)>,
    left_out: u64,
}

impl ProbeLog {
    /// A gate letting a repeated result through once per `every`.
    pub(super) fn new(every: Duration) -> ProbeLog {
        ProbeLog { every, last: None, left_out: 0 }
    }

    /// Whether to log `result` at `now`; `Some(n)`: log it, saying `n` lines were left out since
    /// the last one.
    pub(super) fn admit(&mut self, result: ProbeResult, now: Instant) -> Option<u64> {
        let admit = match self.last {
            None => true,
            Some((at, last)) => last != result || now >= at + self.every,
        };
        if !admit {
            self.left_out += 1;
            return None;
        }
        self.last = Some((now, result));
        Some(std::mem::take(&mut self.left_out))
    }
}

impl Breaker {
    /// Keeps one timer armed for the next background probe, while one is wanted.
    pub(super) fn arm_probe(&mut self, ctx: &mut Context<Self>) {
        let next = if self.prober.is_some() { self.core.next_background_probe() } else { None };
        if self.probe_timer.map(|(armed, _)| armed) == next {
            return;
        }
        if let Some((_, handle)) = self.probe_timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let wait = at.saturating_duration_since(Instant::now()) + TIMER_SLACK;
            let handle = ctx.run_later(wait, |act, ctx| {
                act.probe_timer = None;
                act.launch_probe();
                act.arm(ctx);
            });
            self.probe_timer = Some((at, handle));
        }
    }

    fn launch_probe(&mut self) {
        let Some(prober) = &self.prober else { return };
        if let Some(id) = self.core.start_background_probe() {
            if prober.try_send(RunProbe { id }).is_err() {
                self.core.background_probe_done(id, None);
            }
        }
    }
}

impl Handler<UseProber> for Breaker {
    type Result = ();

    fn handle(&mut self, msg: UseProber, ctx: &mut Context<Self>) {
        self.prober = Some(msg.0);
        self.core.probes_in_background();
        self.arm(ctx);
    }
}

impl Handler<ProbeRan> for Breaker {
    type Result = ();

    fn handle(&mut self, msg: ProbeRan, ctx: &mut Context<Self>) {
        self.core.background_probe_done(msg.id, msg.success);
        self.arm(ctx);
    }
}

#[cfg(test)]
mod tests {
    //! The schedule and the log gate on virtual time: plain instants advanced by hand.

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn nothing_is_probed_until_wanted_and_the_first_probe_waits_one_interval() {
        let t0 = Instant::now();
        let mut s = ProbeSchedule::new(SEC, 5 * SEC);
        assert_eq!(s.next_start(), None);
        assert_eq!(s.start(t0 + 10 * SEC), None, "not wanted");
        s.want(true, t0);
        assert_eq!(s.next_start(), Some(t0 + SEC));
        assert_eq!(s.start(t0 + 999 * MS), None);
        assert_eq!(s.start(t0 + SEC), Some(1));
        s.want(true, t0 + 2 * SEC);
        assert_eq!(s.next_start(), Some(t0 + 6 * SEC), "one out: the next waits for its report or lease");
    }

    #[test]
    fn probes_start_at_most_once_per_interval_one_at_a_time() {
        let t0 = Instant::now();
        let mut s = ProbeSchedule::new(SEC, 5 * SEC);
        s.want(true, t0);
        let mut starts = Vec::new();
        let mut now = t0;
        // Reports come back 100 ms after each start; the timer is asked every 10 ms for 10 s.
        while now < t0 + 10 * SEC {
            if let Some(id) = s.start(now) {
                starts.push((id, now));
            }
            if let Some(&(id, at)) = starts.last() {
                if now >= at + 100 * MS {
                    s.finish(id);
                }
            }
            now += 10 * MS;
        }
        let times: Vec<_> = starts.iter().map(|&(_, at)| at - t0).collect();
        assert_eq!(times, (1..10).map(|n| n * SEC).collect::<Vec<_>>());
        assert!(!s.finish(starts[0].0), "a late report of an older probe is ignored");
    }

    #[test]
    fn a_slow_probe_holds_the_next_one_back_and_a_lost_one_is_given_up() {
        let t0 = Instant::now();
        let mut s = ProbeSchedule::new(SEC, 3 * SEC);
        s.want(true, t0);
        let slow = s.start(t0 + SEC).unwrap();
        assert_eq!(s.start(t0 + 2500 * MS), None, "still out");
        assert!(s.finish(slow));
        assert_eq!(s.start(t0 + 2500 * MS), Some(slow + 1), "due since t0 + 2 s");
        // This one never reports: its lease ends 3 s after its start.
        assert_eq!(s.next_start(), Some(t0 + 5500 * MS));
        assert_eq!(s.expire(t0 + 5 * SEC), None);
        assert_eq!(s.expire(t0 + 5500 * MS), Some(slow + 1));
        assert_eq!(s.start(t0 + 5500 * MS), Some(slow + 2));
    }

    #[test]
    fn closing_stops_probes_and_reopening_keeps_the_spacing() {
        let t0 = Instant::now();
        let mut s = ProbeSchedule::new(SEC, 5 * SEC);
        s.want(true, t0);
        let id = s.start(t0 + SEC).unwrap();
        assert!(s.finish(id));
        s.want(false, t0 + 1100 * MS);
        assert_eq!(s.next_start(), None);
        assert_eq!(s.start(t0 + 3 * SEC), None);
        // Reopened 200 ms after the last start: the next start is a full interval after opening.
        s.want(true, t0 + 1200 * MS);
        assert_eq!(s.next_start(), Some(t0 + 2200 * MS));
    }

    #[test]
    fn repeated_results_are_logged_once_per_period_with_a_count_of_the_rest() {
        let t0 = Instant::now();
        let mut log = ProbeLog::new(10 * SEC);
        assert_eq!(log.admit(ProbeResult::Failure, t0), Some(0));
        for n in 1..10 {
            assert_eq!(log.admit(ProbeResult::Failure, t0 + n * SEC), None);
        }
        assert_eq!(log.admit(ProbeResult::Failure, t0 + 10 * SEC), Some(9));
        assert_eq!(log.admit(ProbeResult::Failure, t0 + 11 * SEC), None);
        assert_eq!(log.admit(ProbeResult::Success, t0 + 12 * SEC), Some(1), "a change is logged at once");
    }
}
