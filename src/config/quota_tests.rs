//! The quota variables: windows, zone, pacing and the state directory, every bad value one line.

use super::*;

use super::test_env as with;

/// A fresh, empty directory of this test process.
fn state_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("courier-quota-config-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn quota(pairs: &[(&str, &str)]) -> QuotaConfig {
    Config::from_sources(&with(pairs), None).expect("valid configuration").quota
}

fn lines(pairs: &[(&str, &str)]) -> Vec<String> {
    let errors = Config::from_sources(&with(pairs), None).expect_err("bad settings");
    errors.0.iter().map(ToString::to_string).collect()
}

fn spec(name: &str, kind: WindowKind, limit: u64) -> QuotaSpec {
    QuotaSpec { name: name.into(), kind, limit }
}

#[test]
fn no_quotas_by_default() {
    let off = quota(&[]);
    assert!(!off.enabled());
    assert_eq!((off.zone_name.as_str(), off.pacing, off.state_dir), ("UTC", Pacing::Off, None));
    // Zone and pacing alone are accepted and unused; so is a state directory with Redis.
    let unused = quota(&[("EXTERNAL_API_QUOTA_TZ", "Europe/Berlin"), ("COURIER_QUOTA_PACING", "even")]);
    assert!(!unused.enabled());
    assert_eq!(format!("{:?}", QuotaConfig::off()), format!("{:?}", quota(&[])));
}

#[test]
fn quotas_parse_and_every_bad_entry_is_one_line() {
    let dir = state_dir("parse");
    let dir_text = dir.to_str().unwrap();
    let parsed = |quotas: &str| quota(&[("EXTERNAL_API_QUOTAS", quotas), ("COURIER_STATE_DIR", dir_text)]);
    let calendar = parsed(" 50000/day, 2000000/month ,10/hour");
    assert!(calendar.enabled());
    assert_eq!(
        calendar.windows,
        [
            spec("day", WindowKind::Day, 50_000),
            spec("month", WindowKind::Month, 2_000_000),
            spec("hour", WindowKind::Hour, 10)
        ]
    );
    assert_eq!(parsed("30/20s").windows, [spec("20s", WindowKind::Fixed(Duration::from_secs(20)), 30)]);
    assert_eq!(
        parsed("5/15m,10/6h, 7/ 02d").windows,
        [
            spec("15m", WindowKind::Fixed(Duration::from_secs(900)), 5),
            spec("6h", WindowKind::Fixed(Duration::from_secs(6 * 3600)), 10),
            spec("2d", WindowKind::Fixed(Duration::from_secs(2 * 86_400)), 7),
        ],
        "names are normalised"
    );
    assert_eq!(parsed("1000000000000/366d").windows[0].limit, 1_000_000_000_000);

    let bad = "abc, 0/day, 10/fortnight, 5/0s, 1/400d, 2/day, 10/60s, 10/1m, x/hour";
    let expected = " (expected: COUNT/WINDOW, WINDOW one of hour, day, month or a duration like 10s, 15m, 6h, 2d; \
                    e.g. 50000/day, 2000000/month)";
    let problems = [
        r#"entry 1 "abc" is not COUNT/WINDOW"#,
        r#"entry 2 "0/day" has count 0 (1..=1000000000000)"#,
        r#"entry 3 "10/fortnight" has an unknown window"#,
        r#"entry 4 "5/0s" has a window of 0s, outside 1s..=366d"#,
        r#"entry 5 "1/400d" has a window of 400d, outside 1s..=366d"#,
        r#"entry 8 "10/1m" has the same length as the window 60s"#,
        r#"entry 9 "x/hour" has count "x", not a whole number"#,
        "lists 9 windows (at most 8)",
    ];
    let got = lines(&[("EXTERNAL_API_QUOTAS", bad), ("COURIER_STATE_DIR", dir_text)]);
    let want: Vec<String> = problems.iter().map(|p| format!("EXTERNAL_API_QUOTAS: {p}{expected}")).collect();
    // Entry 6 "2/day" is good: the "day" of entry 2 was refused, so it is the first day.
    assert_eq!(got, want);
    let twice = lines(&[("EXTERNAL_API_QUOTAS", "1/day,2/DAY"), ("COURIER_STATE_DIR", dir_text)]);
    assert_eq!(twice, [format!(r#"EXTERNAL_API_QUOTAS: entry 2 "2/DAY" names the window day twice{expected}"#)]);
    let empty = lines(&[("EXTERNAL_API_QUOTAS", "1/day,,"), ("COURIER_STATE_DIR", dir_text)]);
    assert_eq!(empty.len(), 2, "{empty:?}");
    assert!(empty[0].starts_with(r#"EXTERNAL_API_QUOTAS: entry 2 "" is empty"#), "{empty:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_zone_and_pacing_are_checked() {
    let berlin = quota(&[("EXTERNAL_API_QUOTA_TZ", "Europe/Berlin"), ("COURIER_QUOTA_PACING", "Even")]);
    assert_eq!((berlin.zone_name.as_str(), berlin.pacing), ("Europe/Berlin", Pacing::Even));
    assert_eq!(berlin.zone.iana_name(), Some("Europe/Berlin"));
    assert_eq!(quota(&[("COURIER_QUOTA_PACING", "off")]).pacing, Pacing::Off);
    let got = lines(&[("EXTERNAL_API_QUOTA_TZ", "Mars/Olympus"), ("COURIER_QUOTA_PACING", "smooth")]);
    assert_eq!(
        got,
        [
            r#"EXTERNAL_API_QUOTA_TZ: "Mars/Olympus" is not a time zone courier knows (expected: an IANA name like Europe/Berlin or UTC)"#,
            r#"COURIER_QUOTA_PACING: "smooth" is not valid (expected: off or even)"#,
        ]
    );
}

#[test]
fn quotas_need_a_writable_state_dir_or_redis() {
    let needed = lines(&[("EXTERNAL_API_QUOTAS", "30/20s")]);
    assert_eq!(
        needed,
        ["COURIER_STATE_DIR: is required with EXTERNAL_API_QUOTAS and no REDIS_URL (expected: a writable \
          directory where quota counts survive restarts, e.g. /var/lib/courier)"]
    );
    let shared = quota(&[("EXTERNAL_API_QUOTAS", "30/20s"), ("REDIS_URL", "redis://127.0.0.1:1/")]);
    assert_eq!((shared.enabled(), shared.state_dir), (true, None), "Redis keeps the counts");

    let dir = state_dir("writable");
    let embedded = quota(&[("EXTERNAL_API_QUOTAS", "30/20s"), ("COURIER_STATE_DIR", dir.to_str().unwrap())]);
    assert_eq!(embedded.state_dir.as_deref(), Some(dir.as_path()));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the write check leaves nothing behind");

    let missing = dir.join("missing");
    let got = lines(&[("EXTERNAL_API_QUOTAS", "30/20s"), ("COURIER_STATE_DIR", missing.to_str().unwrap())]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with(&format!("COURIER_STATE_DIR: {} cannot be read: ", missing.display())), "{got:?}");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let got = lines(&[("COURIER_STATE_DIR", file.to_str().unwrap())]);
    assert_eq!(got.len(), 1, "checked even without quotas: {got:?}");
    assert!(got[0].starts_with(&format!("COURIER_STATE_DIR: {} is not a directory", file.display())), "{got:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn debug_shows_the_quota_settings() {
    let dir = state_dir("debug");
    let env = [("EXTERNAL_API_QUOTAS", "30/20s"), ("COURIER_STATE_DIR", dir.to_str().unwrap())];
    let shown = format!("{:?}", Config::from_sources(&with(&env), None).unwrap());
    assert!(shown.contains(r#"quota: QuotaConfig { windows: [QuotaSpec { name: "20s""#), "{shown}");
    std::fs::remove_dir_all(&dir).unwrap();
}
