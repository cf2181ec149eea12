//! Which instance of a quota window holds a moment: plain calendar and fixed-length math.
//!
//! Fixed windows (`20s`, `6h`) align to the Unix epoch, so every replica and every restart
//! agrees on them without talking. Calendar windows follow the configured zone: a day runs from
//! one start of day to the next (23 or 25 hours on a DST change; a skipped midnight starts the day
//! at the first instant that exists), a month from the first's start of day to the next first's,
//! and an hour is the zone's whole hour, so the hour repeated when clocks fall back is two
//! instances, each a full hour of real time. Everything is in Unix milliseconds and `now` is
//! passed in, so the tests run on any date without waiting for it.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};

use crate::config::WindowKind;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// The nominal month of the fallback below.
const MONTH_MS: i64 = 30 * DAY_MS;

/// How close to an instance's end an attempt also counts in the next instance: it may reach
/// the upstream after the boundary (transit, clock skew), where the upstream counts it in its
/// next window, so courier counts it in both rather than overrun that one.
pub const EDGE_MS: i64 = 1000;

/// One instance of a window: [start_ms, end_ms) in Unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The first millisecond in the instance.
    pub start_ms: i64,
    /// The first millisecond after it (the next instance's start).
    pub end_ms: i64,
}

impl Instance {
    /// Its length in milliseconds.
    pub fn len_ms(&self) -> i64 {
        self.end_ms.saturating_sub(self.start_ms)
    }

    /// Whether an attempt counted at `now_ms` falls within [`EDGE_MS`] of the end, and so counts
    /// in the next instance too.
    pub fn in_edge(&self, now_ms: i64) -> bool {
        now_ms >= self.end_ms.saturating_sub(EDGE_MS)
    }
}

/// The instance of `kind` that contains `now_ms`, in `zone` for calendar windows (fixed windows
/// align to the Unix epoch).
pub fn instance(kind: &WindowKind, zone: &TimeZone, now_ms: i64) -> Instance {
    let calendar = match kind {
        WindowKind::Fixed(length) => {
            let len = i64::try_from(length.as_millis()).unwrap_or(i64::MAX).max(1);
            return aligned(now_ms, len);
        }
        WindowKind::Hour => hour(zone, now_ms),
        WindowKind::Day => day(zone, now_ms),
        WindowKind::Month => month(zone, now_ms),
    };
    // jiff refuses only moments outside the years -9999..=9999 (and their days or months that
    // would end past them). No clock courier runs on reads such a time, but a bad clock or a
    // corrupt count must not stop the gateway: such a moment gets a window of the nominal
    // length aligned to the epoch, which contains it, instead of a panic.
    calendar.unwrap_or_else(|| {
        let nominal = match kind {
            WindowKind::Hour => HOUR_MS,
            WindowKind::Day => DAY_MS,
            _ => MONTH_MS,
        };
        aligned(now_ms, nominal)
    })
}

/// The instance right after `current` (i.e. `instance(kind, zone, current.end_ms)`).
pub fn next(kind: &WindowKind, zone: &TimeZone, current: Instance) -> Instance {
    instance(kind, zone, current.end_ms)
}

/// The instance of length `len_ms` aligned to the epoch that contains `now_ms` (saturating at
/// the ends of `i64`, where it may be shorter).
fn aligned(now_ms: i64, len_ms: i64) -> Instance {
    let start_ms = now_ms.saturating_sub(now_ms.rem_euclid(len_ms));
    Instance { start_ms, end_ms: start_ms.saturating_add(len_ms) }
}

fn zoned(zone: &TimeZone, now_ms: i64) -> Option<ZonedDateTime> {
    Some(Timestamp::from_millisecond(now_ms).ok()?.to_zoned_datetime(zone.clone()))
}

fn millis(z: &ZonedDateTime) -> i64 {
    z.timestamp().as_millisecond()
}

/// The zone's whole hour: aligned to the zone's offset at `now_ms` (so `:30` past the UTC hour
/// in a zone such as Asia/Kolkata), and cut at an offset change inside it, so that the hours
/// before and after a change still follow each other without a gap or an overlap (where a change
/// is a whole hour at a whole hour, as in most zones, nothing is cut).
fn hour(zone: &TimeZone, now_ms: i64) -> Option<Instance> {
    let now = Timestamp::from_millisecond(now_ms).ok()?;
    let offset_ms = i64::from(zone.to_offset(now).seconds()) * 1000;
    let whole = aligned(now_ms.checked_add(offset_ms)?, HOUR_MS);
    let mut start_ms = whole.start_ms.checked_sub(offset_ms)?;
    let mut end_ms = whole.end_ms.checked_sub(offset_ms)?;
    // Transitions are whole seconds: one strictly before `now + 1 ms` is at or before `now`.
    let after_now = Timestamp::from_millisecond(now_ms.checked_add(1)?).ok()?;
    if let Some(change) = zone.preceding(after_now).next() {
        start_ms = start_ms.max(change.timestamp().as_millisecond());
    }
    if let Some(change) = zone.following(now).next() {
        end_ms = end_ms.min(change.timestamp().as_millisecond());
    }
    Some(Instance { start_ms, end_ms })
}

fn day(zone: &TimeZone, now_ms: i64) -> Option<Instance> {
    let start = zoned(zone, now_ms)?.start_of_day().ok()?;
    let end = start.tomorrow().ok()?.start_of_day().ok()?;
    Some(Instance { start_ms: millis(&start), end_ms: millis(&end) })
}

fn month(zone: &TimeZone, now_ms: i64) -> Option<Instance> {
    let start = zoned(zone, now_ms)?.first_of_month().ok()?.start_of_day().ok()?;
    let end = start.last_of_month().ok()?.tomorrow().ok()?.start_of_day().ok()?;
    Some(Instance { start_ms: millis(&start), end_ms: millis(&end) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn fixed(secs: u64) -> WindowKind {
        WindowKind::Fixed(Duration::from_secs(secs))
    }

    /// The instance as RFC 3339 UTC times, for readable assertions.
    fn shown(i: Instance) -> (String, String) {
        let at = |t: i64| Timestamp::from_millisecond(t).unwrap().to_string();
        (at(i.start_ms), at(i.end_ms))
    }

    #[test]
    fn fixed_windows_align_to_the_epoch() {
        let w = instance(&fixed(20), &TimeZone::UTC, 1_700_000_019_999);
        assert_eq!(w, Instance { start_ms: 1_700_000_000_000, end_ms: 1_700_000_020_000 });
        assert_eq!(instance(&fixed(20), &TimeZone::UTC, 1_700_000_020_000).start_ms, 1_700_000_020_000);
        assert_eq!(
            next(&fixed(20), &TimeZone::UTC, w),
            Instance { start_ms: 1_700_000_020_000, end_ms: 1_700_000_040_000 }
        );
        // The zone does not move a fixed window, and 2d windows start on even days since 1970.
        let berlin = zone("Europe/Berlin");
        assert_eq!(instance(&fixed(900), &berlin, ms("2027-03-28T01:20:00Z")).start_ms, ms("2027-03-28T01:15:00Z"));
        let two_days = instance(&fixed(2 * 86_400), &berlin, ms("2027-01-02T12:00:00Z"));
        assert_eq!(shown(two_days), ("2027-01-02T00:00:00Z".into(), "2027-01-04T00:00:00Z".into()));
        // Before 1970 too.
        assert_eq!(instance(&fixed(20), &TimeZone::UTC, -1), Instance { start_ms: -20_000, end_ms: 0 });
    }

    #[test]
    fn calendar_hours_days_and_months() {
        let now = ms("2027-05-10T13:45:12.345Z");
        let utc = TimeZone::UTC;
        assert_eq!(
            shown(instance(&WindowKind::Hour, &utc, now)),
            ("2027-05-10T13:00:00Z".into(), "2027-05-10T14:00:00Z".into())
        );
        assert_eq!(
            shown(instance(&WindowKind::Day, &utc, now)),
            ("2027-05-10T00:00:00Z".into(), "2027-05-11T00:00:00Z".into())
        );
        assert_eq!(
            shown(instance(&WindowKind::Month, &utc, now)),
            ("2027-05-01T00:00:00Z".into(), "2027-06-01T00:00:00Z".into())
        );
        let berlin = zone("Europe/Berlin");
        assert_eq!(
            shown(instance(&WindowKind::Day, &berlin, now)),
            ("2027-05-09T22:00:00Z".into(), "2027-05-10T22:00:00Z".into())
        );
        assert_eq!(
            shown(instance(&WindowKind::Month, &berlin, now)),
            ("2027-04-30T22:00:00Z".into(), "2027-05-31T22:00:00Z".into())
        );
        // A zone half an hour off UTC has its hours at half past.
        let kolkata = zone("Asia/Kolkata");
        assert_eq!(
            shown(instance(&WindowKind::Hour, &kolkata, now)),
            ("2027-05-10T13:30:00Z".into(), "2027-05-10T14:30:00Z".into())
        );
        // The year turns.
        let december = instance(&WindowKind::Month, &utc, ms("2027-12-31T23:59:59.999Z"));
        assert_eq!(
            shown(next(&WindowKind::Month, &utc, december)),
            ("2028-01-01T00:00:00Z".into(), "2028-02-01T00:00:00Z".into())
        );
    }

    #[test]
    fn month_lengths_and_leap_years() {
        let days = |at: &str| instance(&WindowKind::Month, &TimeZone::UTC, ms(at)).len_ms() / DAY_MS;
        assert_eq!(days("2027-01-15T00:00:00Z"), 31);
        assert_eq!(days("2027-02-15T00:00:00Z"), 28);
        assert_eq!(days("2028-02-29T23:59:59Z"), 29, "2028 is a leap year");
        assert_eq!(days("2100-02-01T00:00:00Z"), 28, "2100 is not (divisible by 100)");
        assert_eq!(days("2000-02-10T00:00:00Z"), 29, "2000 is (divisible by 400)");
        assert_eq!(days("2027-04-30T12:00:00Z"), 30);
    }

    #[test]
    fn berlin_dst_days_are_23_and_25_hours() {
        let berlin = zone("Europe/Berlin");
        let spring = instance(&WindowKind::Day, &berlin, ms("2027-03-28T12:00:00Z"));
        assert_eq!(shown(spring), ("2027-03-27T23:00:00Z".into(), "2027-03-28T22:00:00Z".into()));
        assert_eq!(spring.len_ms(), 82_800_000);
        let autumn = instance(&WindowKind::Day, &berlin, ms("2027-10-31T12:00:00Z"));
        assert_eq!(shown(autumn), ("2027-10-30T22:00:00Z".into(), "2027-10-31T23:00:00Z".into()));
        assert_eq!(autumn.len_ms(), 90_000_000);
    }

    #[test]
    fn the_repeated_hour_is_two_windows() {
        // 02:30 local happens twice on 2027-10-31 in Berlin: 00:30Z (CEST) and 01:30Z (CET).
        let berlin = zone("Europe/Berlin");
        let first = instance(&WindowKind::Hour, &berlin, ms("2027-10-31T00:30:00Z"));
        let second = instance(&WindowKind::Hour, &berlin, ms("2027-10-31T01:30:00Z"));
        assert_eq!(shown(first), ("2027-10-31T00:00:00Z".into(), "2027-10-31T01:00:00Z".into()));
        assert_eq!(shown(second), ("2027-10-31T01:00:00Z".into(), "2027-10-31T02:00:00Z".into()));
        assert_eq!(next(&WindowKind::Hour, &berlin, first), second);
    }

    #[test]
    fn a_skipped_midnight_starts_the_day_at_one() {
        // Sao Paulo moved its clocks from 00:00 to 01:00 on 2018-11-04: the day begins at 01:00.
        let sao_paulo = zone("America/Sao_Paulo");
        let day = instance(&WindowKind::Day, &sao_paulo, ms("2018-11-04T15:00:00Z"));
        assert_eq!(shown(day), ("2018-11-04T03:00:00Z".into(), "2018-11-05T02:00:00Z".into()));
        assert_eq!(day.len_ms(), 82_800_000);
        let before = instance(&WindowKind::Day, &sao_paulo, ms("2018-11-04T02:59:59.999Z"));
        assert_eq!(before.end_ms, day.start_ms, "the day before ends where this one starts");
    }

    #[test]
    fn new_york_march_is_743_hours() {
        let new_york = zone("America/New_York");
        let march = instance(&WindowKind::Month, &new_york, ms("2027-03-20T12:00:00Z"));
        assert_eq!(march.len_ms(), 743 * HOUR_MS);
        assert_eq!(shown(march).0, "2027-03-01T05:00:00Z");
    }

    #[test]
    fn instances_tile_the_year_without_gaps_or_overlaps() {
        // Every zone's hours, days and months through 2027 follow each other exactly, including
        // a zone whose DST change is half an hour (Australia/Lord_Howe).
        for name in ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"] {
            let tz = zone(name);
            for (kind, count) in [(WindowKind::Hour, 8760), (WindowKind::Day, 365), (WindowKind::Month, 12)] {
                let mut current = instance(&kind, &tz, ms("2027-01-01T12:00:00Z"));
                let mut seen = 0;
                let stop = ms("2028-01-01T12:00:00Z");
                while current.end_ms <= stop {
                    let following = next(&kind, &tz, current);
                    assert_eq!(following.start_ms, current.end_ms, "{name} {kind:?} after {current:?}");
                    assert!(following.len_ms() > 0);
                    current = following;
                    seen += 1;
                }
                // Each of Lord Howe's two half-hour changes leaves a half-hour instance after it:
                // 8759 whole hours and two halves.
                let count = if name == "Australia/Lord_Howe" && kind == WindowKind::Hour { count + 1 } else { count };
                assert_eq!(seen, count, "{name} {kind:?}");
            }
        }
    }

    #[test]
    fn the_edge_counts_in_both_windows() {
        let w = instance(&fixed(20), &TimeZone::UTC, 1_700_000_005_000);
        assert!(w.in_edge(w.end_ms - 500), "0.5 s before the end: this window and the next");
        assert!(!w.in_edge(w.end_ms - 1500), "1.5 s before the end: this window only");
    }

    #[test]
    fn no_input_panics() {
        let berlin = zone("Europe/Berlin");
        let kinds = [
            WindowKind::Hour,
            WindowKind::Day,
            WindowKind::Month,
            fixed(20),
            WindowKind::Fixed(Duration::ZERO),
            WindowKind::Fixed(Duration::MAX),
        ];
        for kind in &kinds {
            for now in [i64::MIN, i64::MIN + 1, -1, 0, 253_402_300_799_999, i64::MAX - 1, i64::MAX] {
                let w = instance(kind, &berlin, now);
                assert!(w.start_ms <= now && now <= w.end_ms, "{kind:?} at {now}: {w:?}");
                let _ = next(kind, &berlin, w);
            }
        }
    }
}
