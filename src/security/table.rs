//! The lockout's arithmetic and this replica's table of sources, plain and on a clock the
//! caller passes in (tests run it on made-up instants).
//!
//! A source is locked out when it presents `threshold` wrong keys within `window` (counted from
//! the first of them). The first lockout lasts `base`, each further one twice the last, up to
//! `max`. After a lockout ends the source is on probation: one more wrong key locks it out again,
//! for the next length, until it has stayed clean for `max` after its last lockout, when its
//! strikes are forgotten. So a guesser gets `threshold` tries, then one try per lockout, whose
//! length doubles to `max`: at the defaults (10 in 60 s, 30 s to 1 h) about 24 tries a day.
//!
//! The table holds at most `max_sources` sources; a new one beyond that pushes out the source
//! that entered the table first (whatever it did since), so memory stays bounded however many
//! addresses a guesser uses.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::Source;
use crate::config::LockoutConfig;

/// The lockout's lengths, checked: `base` is not zero and not above `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

/// The longest lockout is below its base, or the base is zero.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the lockout base must be above zero and at most the maximum")]
pub struct InvalidBackoff;

impl Backoff {
    /// Lockouts from `base`, doubling, to `max`.
    pub fn try_new(base: Duration, max: Duration) -> Result<Backoff, InvalidBackoff> {
        match !base.is_zero() && base <= max {
            true => Ok(Backoff { base, max }),
            false => Err(InvalidBackoff),
        }
    }

    /// The length of a source's `strike`-th lockout (the first is 1): `base · 2^(strike−1)`, at
    /// most `max`.
    pub fn length(self, strike: u32) -> Duration {
        let mut length = self.base;
        for _ in 1..strike {
            if length >= self.max {
                break;
            }
            length = length.saturating_mul(2);
        }
        length.min(self.max)
    }

    /// The longest lockout.
    pub fn max(self) -> Duration {
        self.max
    }
}

/// What a wrong key did to its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strike {
    /// Counted: this many wrong keys in the current window, below the threshold.
    Counted(u32),
    /// The source is now locked out until `until`; this is its `strike`-th lockout.
    Locked {
        /// When the lockout ends.
        until: Instant,
        /// Which lockout of the source this is (1 for the first).
        strike: u32,
    },
    /// It was locked out already (a request that passed the check just before the lockout).
    AlreadyLocked(Instant),
}

#[derive(Clone, Debug)]
struct Entry {
    /// Its place in the order of arrival (the oldest is pushed out first).
    seq: u64,
    failures: u32,
    window_end: Instant,
    strikes: u32,
    locked_until: Option<Instant>,
    /// Whether the lockout came from the shared table in Redis (it ends there too).
    shared: bool,
    /// When its strikes are forgotten.
    forget_at: Instant,
}

/// This replica's sources: wrong keys counted, lockouts, strikes.
pub struct Table {
    threshold: u32,
    window: Duration,
    backoff: Backoff,
    max_sources: usize,
    entries: HashMap<Source, Entry, foldhash::fast::RandomState>,
    order: VecDeque<(Source, u64)>,
    next_seq: u64,
}

/// A lockout as `/admin/state` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locked {
    /// The source.
    pub source: Source,
    /// When it ends.
    pub until: Instant,
    /// Which lockout of the source this is (0 when only the shared table knows it).
    pub strike: u32,
    /// Whether it is shared through Redis.
    pub shared: bool,
}

impl Table {
    /// An empty table for these settings (`None` when the lengths are invalid).
    pub fn new(config: &LockoutConfig) -> Result<Table, InvalidBackoff> {
        Ok(Table {
            threshold: config.threshold.max(1),
            window: config.window,
            backoff: Backoff::try_new(config.base, config.max)?,
            max_sources: config.max_sources.max(1),
            entries: HashMap::default(),
            order: VecDeque::new(),
            next_seq: 0,
        })
    }

    /// The lengths of lockouts.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// When the source's lockout ends, if it is locked out at `now`.
    pub fn locked_until(&self, source: Source, now: Instant) -> Option<Instant> {
        self.entries.get(&source)?.locked_until.filter(|until| *until > now)
    }

    /// Counts a wrong key from `source` at `now`.
    pub fn fail(&mut self, source: Source, now: Instant) -> Strike {
        let (threshold, window, backoff) = (self.threshold, self.window, self.backoff);
        let entry = self.entry(source, now);
        if let Some(until) = entry.locked_until.filter(|until| *until > now) {
            return Strike::AlreadyLocked(until);
        }
        if entry.strikes > 0 && now >= entry.forget_at {
            entry.strikes = 0;
        }
        if now >= entry.window_end {
            entry.failures = 0;
            entry.window_end = now + window;
        }
        entry.failures += 1;
        if entry.failures < threshold && entry.strikes == 0 {
            return Strike::Counted(entry.failures);
        }
        entry.strikes = entry.strikes.saturating_add(1);
        let until = now + backoff.length(entry.strikes);
        entry.failures = 0;
        entry.locked_until = Some(until);
        entry.shared = false;
        entry.forget_at = until + backoff.max();
        Strike::Locked { until, strike: entry.strikes }
    }

    /// Takes a lockout the shared table decided (on this or another replica): the later end and
    /// the higher strike count win.
    pub fn adopt(&mut self, source: Source, until: Instant, strike: u32, now: Instant) {
        let max = self.backoff.max();
        let entry = self.entry(source, now);
        if entry.locked_until.is_none_or(|mine| mine <= until) {
            entry.locked_until = Some(until);
            entry.shared = true;
        }
        entry.strikes = entry.strikes.max(strike);
        entry.failures = 0;
        entry.forget_at = entry.forget_at.max(until + max);
    }

    /// Ends the source's lockout and forgets its strikes; whether it was locked out.
    pub fn lift(&mut self, source: Source, now: Instant) -> bool {
        self.entries.remove(&source).is_some_and(|entry| entry.locked_until.is_some_and(|until| until > now))
    }

    /// Ends the shared lockouts that the shared table no longer holds (lifted through another
    /// replica). Lockouts this replica made on its own, while Redis was away, stay.
    pub fn keep_shared(&mut self, still: &[Source], now: Instant) {
        for (source, entry) in &mut self.entries {
            let active = entry.locked_until.is_some_and(|until| until > now);
            if active && entry.shared && !still.contains(source) {
                entry.locked_until = None;
            }
        }
    }

    /// The sources locked out at `now`, the soonest to end first.
    pub fn locked(&self, now: Instant) -> Vec<Locked> {
        let mut locked: Vec<Locked> = self
            .entries
            .iter()
            .filter_map(|(source, e)| {
                let until = e.locked_until.filter(|until| *until > now)?;
                Some(Locked { source: *source, until, strike: e.strikes, shared: e.shared })
            })
            .collect();
        locked.sort_by_key(|l| (l.until, l.source));
        locked
    }

    /// Wrong keys counted in each source's current window, the most first, at most `n`.
    pub fn failing(&self, now: Instant, n: usize) -> Vec<(Source, u32)> {
        let mut failing: Vec<(Source, u32)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.failures > 0 && e.window_end > now)
            .map(|(source, e)| (*source, e.failures))
            .collect();
        failing.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        failing.truncate(n);
        failing
    }

    /// Sources in the table.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets the sources with nothing left to remember: no count in a current window, no
    /// lockout, no strikes.
    pub fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, e| {
            e.window_end > now
                || e.locked_until.is_some_and(|until| until > now)
                || (e.strikes > 0 && e.forget_at > now)
        });
        let entries = &self.entries;
        self.order.retain(|(source, seq)| entries.get(source).is_some_and(|e| e.seq == *seq));
    }

    /// The source's entry, made (pushing out the oldest when full) if it has none.
    fn entry(&mut self, source: Source, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(&source) {
            while self.entries.len() >= self.max_sources {
                let Some((oldest, seq)) = self.order.pop_front() else { break };
                if self.entries.get(&oldest).is_some_and(|e| e.seq == seq) {
                    self.entries.remove(&oldest);
                }
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.order.push_back((source, seq));
            let fresh = Entry {
                seq,
                failures: 0,
                window_end: now,
                strikes: 0,
                locked_until: None,
                shared: false,
                forget_at: now,
            };
            self.entries.insert(source, fresh);
        }
        self.entries.get_mut(&source).expect("inserted above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn config(threshold: u32, max_sources: usize) -> LockoutConfig {
        LockoutConfig { threshold, window: 60 * SEC, base: 30 * SEC, max: 3600 * SEC, max_sources }
    }

    fn ip(last: u8) -> Source {
        Source::of(std::net::IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn lockouts_double_from_the_base_to_the_cap() {
        let backoff = Backoff::try_new(30 * SEC, 3600 * SEC).unwrap();
        let lengths: Vec<u64> = (1..=9).map(|strike| backoff.length(strike).as_secs()).collect();
        assert_eq!(lengths, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff.length(u32::MAX), 3600 * SEC, "no overflow");
        assert_eq!(Backoff::try_new(SEC, SEC).unwrap().length(5), SEC);
        assert_eq!(Backoff::try_new(2 * SEC, SEC), Err(InvalidBackoff));
        assert_eq!(Backoff::try_new(Duration::ZERO, SEC), Err(InvalidBackoff));
    }

    #[test]
    fn the_threshold_within_the_window_locks_out_and_probation_relocks_at_once() {
        let mut table = Table::new(&config(3, 100)).unwrap();
        let t0 = Instant::now();
        let a = ip(1);
        assert_eq!(table.fail(a, t0), Strike::Counted(1));
        assert_eq!(table.fail(a, t0 + 10 * SEC), Strike::Counted(2));
        assert_eq!(table.locked_until(a, t0 + 10 * SEC), None);
        let t = t0 + 20 * SEC;
        assert_eq!(table.fail(a, t), Strike::Locked { until: t + 30 * SEC, strike: 1 });
        assert_eq!(table.locked_until(a, t + 29 * SEC), Some(t + 30 * SEC));
        assert_eq!(table.fail(a, t + SEC), Strike::AlreadyLocked(t + 30 * SEC));
        assert_eq!(table.locked_until(ip(2), t), None, "another source is not affected");
        // Over: on probation, one wrong key locks it out again, for twice as long.
        let t = t + 30 * SEC;
        assert_eq!(table.locked_until(a, t), None);
        assert_eq!(table.fail(a, t), Strike::Locked { until: t + 60 * SEC, strike: 2 });
        let t = t + 60 * SEC;
        assert_eq!(table.fail(a, t), Strike::Locked { until: t + 120 * SEC, strike: 3 });
        // Clean for `max` after the last lockout: the strikes are forgotten.
        let t = t + 120 * SEC + 3600 * SEC;
        assert_eq!(table.fail(a, t), Strike::Counted(1));
    }

    #[test]
    fn wrong_keys_spread_wider_than_the_window_do_not_lock_out() {
        let mut table = Table::new(&config(3, 100)).unwrap();
        let t0 = Instant::now();
        for i in 0..10 {
            let strike = table.fail(ip(1), t0 + i * 40 * SEC);
            assert!(matches!(strike, Strike::Counted(1 | 2)), "{i}: {strike:?}");
        }
    }

    #[test]
    fn the_table_is_bounded_and_pushes_out_the_oldest_source() {
        let mut table = Table::new(&config(10, 16)).unwrap();
        let t0 = Instant::now();
        for last in 0..40u8 {
            table.fail(ip(last), t0);
            assert!(table.len() <= 16);
        }
        let kept: Vec<Source> = table.failing(t0, 100).into_iter().map(|(s, _)| s).collect();
        assert_eq!(kept.len(), 16);
        assert!(kept.contains(&ip(39)) && !kept.contains(&ip(23)) && kept.contains(&ip(24)), "{kept:?}");
        table.sweep(t0 + 61 * SEC);
        assert!(table.is_empty(), "nothing left to remember");
    }

    #[test]
    fn a_lift_ends_the_lockout_and_forgets_the_strikes() {
        let mut table = Table::new(&config(1, 100)).unwrap();
        let t0 = Instant::now();
        assert!(matches!(table.fail(ip(1), t0), Strike::Locked { strike: 1, .. }));
        assert!(table.lift(ip(1), t0 + SEC));
        assert!(!table.lift(ip(1), t0 + SEC), "nothing left to lift");
        assert_eq!(table.locked_until(ip(1), t0 + SEC), None);
        assert!(matches!(table.fail(ip(1), t0 + 2 * SEC), Strike::Locked { strike: 1, .. }), "strikes forgotten");
    }

    #[test]
    fn shared_lockouts_are_adopted_and_end_when_the_shared_table_drops_them() {
        let mut table = Table::new(&config(10, 100)).unwrap();
        let t0 = Instant::now();
        table.adopt(ip(1), t0 + 60 * SEC, 2, t0);
        assert_eq!(table.locked_until(ip(1), t0), Some(t0 + 60 * SEC));
        assert_eq!(table.locked(t0)[0], Locked { source: ip(1), until: t0 + 60 * SEC, strike: 2, shared: true });
        // A lockout this replica made alone (Redis away) is kept; the lifted shared one ends.
        table.fail(ip(2), t0);
        for _ in 0..9 {
            table.fail(ip(2), t0);
        }
        assert!(table.locked_until(ip(2), t0).is_some());
        table.keep_shared(&[], t0 + SEC);
        assert_eq!(table.locked_until(ip(1), t0 + SEC), None);
        assert!(table.locked_until(ip(2), t0 + SEC).is_some());
        // The strikes adopted stay: the next lockout is the third.
        let t = t0 + 2 * SEC;
        assert_eq!(table.fail(ip(1), t), Strike::Locked { until: t + 120 * SEC, strike: 3 });
    }
}
