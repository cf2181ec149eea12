//! The published circuit state: written only by the Breaker actor, read lock-free by every
//! worker on every request.
//!
//! Three atomics and a fixed time base, nothing else: a worker's [`BreakerCell::gate`] costs
//! two or three atomic loads and never waits for the actor.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The state of the automatic (failsafe) circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls fail fast until the open period ends.
    Open,
    /// A few probes test whether the upstream is back.
    HalfOpen,
}

impl State {
    /// Every state, in label order.
    pub const ALL: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

    /// The label value (`closed`, `open`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }
}

/// Who decides: the automatic circuit, or an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The failsafe state machine decides.
    Auto,
    /// Every request fails fast, whatever the upstream does.
    ForcedOpen,
    /// Every request goes through, whatever the upstream does.
    ForcedClosed,
}

impl Mode {
    /// Every mode, in label order.
    pub const ALL: [Mode; 3] = [Mode::Auto, Mode::ForcedOpen, Mode::ForcedClosed];

    /// The label value (`auto`, `forced_open`, `forced_closed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::ForcedOpen => "forced_open",
            Mode::ForcedClosed => "forced_closed",
        }
    }

    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::ForcedOpen,
            2 => Mode::ForcedClosed,
            _ => Mode::Auto,
        }
    }
}

/// What a worker may do with a request, decided from the cell alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Call the upstream, then report the outcome in an `Outcomes` batch.
    Pass,
    /// Fail fast (503) with this `Retry-After`.
    Reject {
        /// How long until asking again makes sense.
        retry_after: Duration,
    },
    /// The circuit is half-open (or its open period just ended): send `Permit` to the actor.
    AskActor,
}

/// The circuit state as published by the Breaker actor.
#[derive(Debug)]
pub struct BreakerCell {
    /// Fixed origin of `open_until`, so an instant fits in one `AtomicU64`.
    base: Instant,
    state: AtomicU8,
    mode: AtomicU8,
    /// End of the current open period, in nanoseconds after `base`.
    open_until: AtomicU64,
    /// `Retry-After` given while forced open, in nanoseconds.
    forced_retry_after: AtomicU64,
    /// Spacing of background probes while open, in nanoseconds (0: none are sent). An open
    /// circuit may close at the next probe, so `Retry-After` says no more than this.
    probe_every: AtomicU64,
}

impl Default for BreakerCell {
    fn default() -> Self {
        BreakerCell::new()
    }
}

impl BreakerCell {
    /// A cell showing a closed circuit in automatic mode.
    pub fn new() -> BreakerCell {
        BreakerCell {
            base: Instant::now(),
            state: AtomicU8::new(State::Closed as u8),
            mode: AtomicU8::new(Mode::Auto as u8),
            open_until: AtomicU64::new(0),
            forced_retry_after: AtomicU64::new(0),
            probe_every: AtomicU64::new(0),
        }
    }

    /// What a request arriving at `now` may do.
    ///
    /// Closed or forced closed: [`Gate::Pass`]. Open before its end, or forced open:
    /// [`Gate::Reject`]. Open past its end, or half-open: [`Gate::AskActor`].
    #[inline]
    pub fn gate(&self, now: Instant) -> Gate {
        match self.mode() {
            Mode::ForcedClosed => Gate::Pass,
            Mode::ForcedOpen => {
                Gate::Reject { retry_after: Duration::from_nanos(self.forced_retry_after.load(Ordering::Relaxed)) }
            }
            Mode::Auto => match self.state() {
                State::Closed => Gate::Pass,
                State::HalfOpen => Gate::AskActor,
                State::Open => match self.open_until().checked_duration_since(now) {
                    Some(left) if !left.is_zero() => Gate::Reject { retry_after: self.open_retry_after(left) },
                    _ => Gate::AskActor,
                },
            },
        }
    }

    /// The automatic circuit's state.
    #[inline]
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The operator's mode.
    #[inline]
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// End of the latest open period (meaningful while the state is open).
    pub fn open_until(&self) -> Instant {
        self.base + Duration::from_nanos(self.open_until.load(Ordering::Acquire))
    }

    /// Publishes an open period ending at `until`, then the open state.
    pub(super) fn publish_open(&self, until: Instant) {
        let nanos = until.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.open_until.store(nanos, Ordering::Release);
        self.publish_state(State::Open);
    }

    /// Publishes a new state.
    pub(super) fn publish_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Publishes a new mode.
    pub(super) fn publish_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Release);
    }

    /// The `Retry-After` of an open circuit with `left` of its period to run: no more than the
    /// spacing of background probes, when they are sent, since the next one may close it.
    pub fn open_retry_after(&self, left: Duration) -> Duration {
        match self.probe_every.load(Ordering::Relaxed) {
            0 => left,
            every => left.min(Duration::from_nanos(every)),
        }
    }

    /// Background probes are sent every `every` while open (see [`BreakerCell::open_retry_after`]).
    pub(super) fn set_probe_every(&self, every: Duration) {
        let nanos = u64::try_from(every.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.probe_every.store(nanos, Ordering::Relaxed);
    }

    /// Sets the `Retry-After` of a forced open circuit.
    pub(super) fn set_forced_retry_after(&self, retry_after: Duration) {
        let nanos = u64::try_from(retry_after.as_nanos()).unwrap_or(u64::MAX);
        self.forced_retry_after.store(nanos, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn closed_passes_and_half_open_asks() {
        let cell = BreakerCell::new();
        let now = Instant::now();
        assert_eq!(cell.gate(now), Gate::Pass);
        cell.publish_state(State::HalfOpen);
        assert_eq!(cell.gate(now), Gate::AskActor);
    }

    #[test]
    fn open_rejects_until_its_end_then_asks() {
        let cell = BreakerCell::new();
        let now = Instant::now();
        cell.publish_open(now + 100 * MS);
        assert_eq!(cell.state(), State::Open);
        assert_eq!(cell.gate(now + 30 * MS), Gate::Reject { retry_after: 70 * MS });
        assert_eq!(cell.gate(now + 100 * MS), Gate::AskActor);
        assert_eq!(cell.gate(now + 200 * MS), Gate::AskActor);
    }

    #[test]
    fn with_background_probes_an_open_circuit_says_retry_at_the_next_probe() {
        let cell = BreakerCell::new();
        let now = Instant::now();
        cell.publish_open(now + 30_000 * MS);
        cell.set_probe_every(1000 * MS);
        assert_eq!(cell.gate(now), Gate::Reject { retry_after: 1000 * MS });
        assert_eq!(cell.gate(now + 29_500 * MS), Gate::Reject { retry_after: 500 * MS });
    }

    #[test]
    fn forced_modes_override_the_state() {
        let cell = BreakerCell::new();
        let now = Instant::now();
        cell.set_forced_retry_after(5 * MS);
        cell.publish_mode(Mode::ForcedOpen);
        assert_eq!(cell.gate(now), Gate::Reject { retry_after: 5 * MS });
        cell.publish_open(now + 100 * MS);
        cell.publish_mode(Mode::ForcedClosed);
        assert_eq!(cell.gate(now), Gate::Pass);
        cell.publish_mode(Mode::Auto);
        assert!(matches!(cell.gate(now), Gate::Reject { .. }));
    }

    #[test]
    fn modes_read_from_and_write_to_snake_case() {
        let mode: Mode = serde_json::from_str("\"forced_open\"").unwrap();
        assert_eq!(mode, Mode::ForcedOpen);
        for mode in Mode::ALL {
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{}\"", mode.as_str()));
        }
    }
}
