//! Quota windows as written (`COUNT/WINDOW`, the syntax of courier's `EXTERNAL_API_QUOTAS`) and
//! the instance of a window that holds a given instant.
//!
//! Fixed windows (`20s`, `15m`, `6h`, `2d`) are aligned to the Unix epoch, so every process that
//! counts one agrees on its boundaries without talking to the others. Calendar windows (`hour`,
//! `day`, `month`) are in UTC: the month needs the civil date, computed with the algorithms of
//! Howard Hinnant's "chrono-Compatible Low-Level Date Algorithms" (exact for any Gregorian date),
//! so the simulator needs no date crate.

/// Largest accepted count of one window.
const MAX_COUNT: u64 = 1_000_000_000_000;
/// Longest fixed window, in seconds (366 days).
const MAX_FIXED_SECS: u64 = 366 * 86_400;
/// Most windows at once.
const MAX_WINDOWS: usize = 8;

const EXPECTED: &str = "expected COUNT/WINDOW, WINDOW one of hour, day, month or a duration like 10s, 15m, 6h, 2d; \
                        e.g. 5/2s, 50000/day";

/// What a window's span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowKind {
    /// A calendar hour in UTC.
    Hour,
    /// A calendar day in UTC.
    Day,
    /// A calendar month in UTC.
    Month,
    /// A fixed number of seconds, aligned to the Unix epoch.
    Fixed(u64),
}

/// One `COUNT/WINDOW` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuotaSpec {
    /// The window as written (`hour`, `20s`): its name in the headers and documents.
    pub(crate) name: String,
    /// Its span.
    pub(crate) kind: WindowKind,
    /// Requests allowed per instance.
    pub(crate) limit: u64,
}

/// Parses a comma-separated list of `COUNT/WINDOW` (spaces ignored; a blank list is no windows).
pub(crate) fn parse_list(list: &str) -> Result<Vec<QuotaSpec>, String> {
    let list: String = list.chars().filter(|c| !c.is_whitespace()).collect();
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let specs = list
        .split(',')
        .enumerate()
        .map(|(i, entry)| {
            parse_one(entry).map_err(|why| format!("quota entry {} {entry:?}: {why} ({EXPECTED})", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if specs.len() > MAX_WINDOWS {
        return Err(format!("{} quota windows: at most {MAX_WINDOWS}", specs.len()));
    }
    for (i, a) in specs.iter().enumerate() {
        if let Some(b) = specs[..i].iter().find(|b| b.name == a.name || same_fixed_length(a, b)) {
            return Err(format!("quota windows {:?} and {:?} are the same window", b.name, a.name));
        }
    }
    Ok(specs)
}

fn same_fixed_length(a: &QuotaSpec, b: &QuotaSpec) -> bool {
    matches!((a.kind, b.kind), (WindowKind::Fixed(x), WindowKind::Fixed(y)) if x == y)
}

fn parse_one(entry: &str) -> Result<QuotaSpec, &'static str> {
    let (count, window) = entry.split_once('/').ok_or("no '/'")?;
    let limit: u64 = count.parse().map_err(|_| "the count is not a whole number")?;
    if !(1..=MAX_COUNT).contains(&limit) {
        return Err("the count must be 1..=10^12");
    }
    let kind = match window {
        "hour" => WindowKind::Hour,
        "day" => WindowKind::Day,
        "month" => WindowKind::Month,
        _ => {
            let split = window.len().saturating_sub(1);
            let unit = match window.get(split..) {
                Some("s") => 1,
                Some("m") => 60,
                Some("h") => 3600,
                Some("d") => 86_400,
                _ => return Err("unknown window"),
            };
            let n: u64 = window[..split].parse().map_err(|_| "unknown window")?;
            let secs = n.saturating_mul(unit);
            if !(1..=MAX_FIXED_SECS).contains(&secs) {
                return Err("a fixed window must be 1s..=366d");
            }
            WindowKind::Fixed(secs)
        }
    };
    Ok(QuotaSpec { name: window.to_owned(), kind, limit })
}

/// The instance of `kind` holding `now_ms` (Unix milliseconds): `(start_ms, end_ms)`, end excluded.
pub(crate) fn instance(kind: &WindowKind, now_ms: u64) -> (u64, u64) {
    let fixed = |len_ms: u64| {
        let start = now_ms - now_ms % len_ms;
        (start, start + len_ms)
    };
    match *kind {
        WindowKind::Fixed(secs) => fixed(secs * 1000),
        WindowKind::Hour => fixed(3_600_000),
        WindowKind::Day => fixed(86_400_000),
        WindowKind::Month => {
            let day = i64::try_from(now_ms / 86_400_000).unwrap_or(i64::MAX);
            let (y, m, _) = civil_from_days(day);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let ms = |days: i64| u64::try_from(days).unwrap_or(0) * 86_400_000;
            (ms(days_from_civil(y, m, 1)), ms(days_from_civil(ny, nm, 1)))
        }
    }
}

/// `(year, month 1..=12, day 1..=31)` of a count of days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix milliseconds of a UTC date and time.
    fn at(y: i64, m: i64, d: i64, hh: u64, mm: u64, ss: u64) -> u64 {
        u64::try_from(days_from_civil(y, m, d)).unwrap() * 86_400_000 + (hh * 3600 + mm * 60 + ss) * 1000
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for day in [0, 59, 60, 365, 11_016, 11_017, 20_000, 47_541, 47_542] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(days_from_civil(2028, 2, 29)), (2028, 2, 29));
    }

    #[test]
    fn lists_parse_and_bad_entries_are_named() {
        let specs = parse_list(" 5/2s, 50000/day ,2000000/month,10/15m,1/6h,7/2d,3/hour").unwrap();
        let kinds: Vec<_> = specs.iter().map(|s| (s.name.as_str(), s.kind, s.limit)).collect();
        assert_eq!(
            kinds,
            [
                ("2s", WindowKind::Fixed(2), 5),
                ("day", WindowKind::Day, 50_000),
                ("month", WindowKind::Month, 2_000_000),
                ("15m", WindowKind::Fixed(900), 10),
                ("6h", WindowKind::Fixed(21_600), 1),
                ("2d", WindowKind::Fixed(172_800), 7),
                ("hour", WindowKind::Hour, 3),
            ]
        );
        assert_eq!(parse_list("  ").unwrap(), []);
        for (bad, why) in [
            ("abc", "entry 1 \"abc\": no '/'"),
            ("5/2s,0/day", "entry 2 \"0/day\": the count must be"),
            ("x/day", "not a whole number"),
            ("10/fortnight", "unknown window"),
            ("10/s", "unknown window"),
            ("5/0s", "1s..=366d"),
            ("1/367d", "1s..=366d"),
            ("5/2s,", "entry 2 \"\""),
            ("1/day,2/day", "\"day\" and \"day\" are the same window"),
            ("10/60s,10/1m", "\"60s\" and \"1m\" are the same window"),
            ("1/1s,1/2s,1/3s,1/4s,1/5s,1/6s,1/7s,1/8s,1/9s", "9 quota windows"),
        ] {
            let err = parse_list(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn fixed_windows_align_to_the_epoch() {
        let now = 1_700_000_013_456;
        assert_eq!(instance(&WindowKind::Fixed(20), now), (1_700_000_000_000, 1_700_000_020_000));
        assert_eq!(instance(&WindowKind::Fixed(2), now), (1_700_000_012_000, 1_700_000_014_000));
        // The end is excluded: the boundary instant starts the next instance.
        assert_eq!(instance(&WindowKind::Fixed(20), 1_700_000_020_000).0, 1_700_000_020_000);
        assert_eq!(instance(&WindowKind::Fixed(900), now), (1_699_999_200_000, 1_700_000_100_000));
    }

    #[test]
    fn calendar_hours_and_days_in_utc() {
        let now = at(2027, 3, 28, 13, 45, 7) + 250;
        assert_eq!(instance(&WindowKind::Hour, now), (at(2027, 3, 28, 13, 0, 0), at(2027, 3, 28, 14, 0, 0)));
        assert_eq!(instance(&WindowKind::Day, now), (at(2027, 3, 28, 0, 0, 0), at(2027, 3, 29, 0, 0, 0)));
        let last = at(2027, 12, 31, 23, 59, 59);
        assert_eq!(instance(&WindowKind::Day, last).1, at(2028, 1, 1, 0, 0, 0));
    }

    #[test]
    fn month_lengths_and_leap_years() {
        let days = |y, m| {
            let (start, end) = instance(&WindowKind::Month, at(y, m, 10, 12, 0, 0));
            assert_eq!(start, at(y, m, 1, 0, 0, 0));
            (end - start) / 86_400_000
        };
        assert_eq!(days(2027, 1), 31);
        assert_eq!(days(2027, 2), 28);
        assert_eq!(days(2028, 2), 29);
        assert_eq!(days(2100, 2), 28);
        assert_eq!(days(2000, 2), 29);
        assert_eq!(days(2027, 4), 30);
        assert_eq!(days(2027, 12), 31);
        // The last millisecond of a month is in it; the next one starts the next month.
        let end = at(2028, 3, 1, 0, 0, 0);
        assert_eq!(instance(&WindowKind::Month, end - 1).1, end);
        assert_eq!(instance(&WindowKind::Month, end).0, end);
        assert_eq!(instance(&WindowKind::Month, at(2027, 12, 31, 23, 0, 0)).1, at(2028, 1, 1, 0, 0, 0));
    }
}
