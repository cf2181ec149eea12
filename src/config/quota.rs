//! Quota windows (`EXTERNAL_API_QUOTAS`), their time zone, pacing, and where counts are kept.
//!
//! A plan sold as "1000/minute and 2,000,000/month" has limits on longer windows than the
//! per-minute rate: each `COUNT/WINDOW` here is one of them. Calendar windows (`hour`, `day`,
//! `month`) follow the zone of `EXTERNAL_API_QUOTA_TZ`, looked up in the zone database built into
//! courier (not the host's, so the same binary gives the same windows everywhere); fixed ones
//! (`20s`, `15m`, `6h`, `2d`) align to the Unix epoch. Counts must survive a restart, so without
//! Redis (which then holds them) quotas need `COURIER_STATE_DIR`, and that directory is checked
//! for writing now rather than at the first count.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::tz::TimeZone;

use super::reader::Reader;

const QUOTAS: &str = "COUNT/WINDOW, WINDOW one of hour, day, month or a duration like 10s, 15m, 6h, 2d; \
                      e.g. 50000/day, 2000000/month";
const ZONE: &str = "an IANA name like Europe/Berlin or UTC";
const STATE_DIR: &str = "a writable directory where quota counts survive restarts, e.g. /var/lib/courier";
/// Most windows: each costs a count per attempt and a header item per answer.
const MAX_WINDOWS: usize = 8;
const MAX_COUNT: u64 = 1_000_000_000_000;
const MAX_FIXED_SECS: u64 = 366 * 86_400;
/// The file made and removed in `COURIER_STATE_DIR` to learn that courier may write there.
const WRITE_CHECK: &str = ".courier-write-check";

/// One quota window as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// The zone's calendar hour.
    Hour,
    /// The zone's calendar day (23 or 25 hours on a DST change).
    Day,
    /// The zone's calendar month.
    Month,
    /// A fixed length, aligned to the Unix epoch.
    Fixed(Duration),
}

/// `COUNT/WINDOW` of `EXTERNAL_API_QUOTAS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaSpec {
    /// The window's name as a metric label and in headers: "hour", "day", "month", or the
    /// fixed length as written, normalised ("20s", "15m").
    pub name: String,
    /// Which window.
    pub kind: WindowKind,
    /// Most upstream attempts in one instance of the window.
    pub limit: u64,
}

/// Pacing of the quota windows (`COURIER_QUOTA_PACING`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// The quota is spent as demand comes.
    Off,
    /// Each window's remaining quota is spread over its remaining time.
    Even,
}

/// The quota settings; `windows` empty = no quotas (everything else unused).
#[derive(Clone, Debug)]
pub struct QuotaConfig {
    /// The windows, in the order configured.
    pub windows: Vec<QuotaSpec>,
    /// The zone of the calendar windows (UTC by default).
    pub zone: TimeZone,
    /// The zone's name as configured, for `/admin/state` and logs.
    pub zone_name: String,
    /// Whether the remaining quota is spread over the remaining time.
    pub pacing: Pacing,
    /// Where the embedded store keeps its counts (`COURIER_STATE_DIR`).
    pub state_dir: Option<PathBuf>,
}

impl QuotaConfig {
    /// No quotas, every other setting at its default: for code that builds settings by hand.
    pub fn off() -> QuotaConfig {
        QuotaConfig {
            windows: Vec::new(),
            zone: TimeZone::UTC,
            zone_name: "UTC".into(),
            pacing: Pacing::Off,
            state_dir: None,
        }
    }

    /// Whether any quota window is configured.
    pub fn enabled(&self) -> bool {
        !self.windows.is_empty()
    }

    /// Reads the quota variables, recording each bad one; `redis`: whether `REDIS_URL` is set
    /// (then Redis keeps the counts and no state directory is needed).
    pub(super) fn read(r: &mut Reader<'_>, redis: bool) -> QuotaConfig {
        let raw = r.optional("EXTERNAL_API_QUOTAS");
        let windows = raw.as_deref().map(|raw| windows(r, raw)).unwrap_or_default();
        let zone_name = r.optional("EXTERNAL_API_QUOTA_TZ").unwrap_or_else(|| "UTC".into());
        let zone = TimeZone::get(&zone_name).unwrap_or_else(|_| {
            r.problem("EXTERNAL_API_QUOTA_TZ", format!("{zone_name:?} is not a time zone courier knows"), ZONE);
            TimeZone::UTC
        });
        let pacing =
            r.parsed("COURIER_QUOTA_PACING", Pacing::Off, "off or even", |s| match s.to_ascii_lowercase().as_str() {
                "off" => Some(Pacing::Off),
                "even" => Some(Pacing::Even),
                _ => None,
            });
        let state_dir = r.optional("COURIER_STATE_DIR").map(PathBuf::from);
        match &state_dir {
            Some(dir) => {
                if let Err(problem) = writable(dir) {
                    r.problem("COURIER_STATE_DIR", problem, STATE_DIR);
                }
            }
            None if raw.is_some() && !redis && !r.reported("COURIER_STATE_DIR") => {
                r.problem("COURIER_STATE_DIR", "is required with EXTERNAL_API_QUOTAS and no REDIS_URL", STATE_DIR);
            }
            None => {}
        }
        QuotaConfig { windows, zone, zone_name, pacing, state_dir }
    }
}

/// The windows of `EXTERNAL_API_QUOTAS`; each bad entry is one problem line.
fn windows(r: &mut Reader<'_>, raw: &str) -> Vec<QuotaSpec> {
    const VAR: &str = "EXTERNAL_API_QUOTAS";
    let entries: Vec<String> = raw.split(',').map(|e| e.chars().filter(|c| !c.is_whitespace()).collect()).collect();
    let mut windows: Vec<QuotaSpec> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let spec = match spec(entry) {
            Ok(spec) => spec,
            Err(problem) => {
                r.problem(VAR, format!("entry {} {entry:?} {problem}", i + 1), QUOTAS);
                continue;
            }
        };
        let clash = windows.iter().find(|w| w.name == spec.name || same_fixed_length(&w.kind, &spec.kind));
        if let Some(earlier) = clash {
            let problem = if earlier.name == spec.name {
                format!("entry {} {entry:?} names the window {} twice", i + 1, spec.name)
            } else {
                format!("entry {} {entry:?} has the same length as the window {}", i + 1, earlier.name)
            };
            r.problem(VAR, problem, QUOTAS);
            continue;
        }
        windows.push(spec);
    }
    if entries.len() > MAX_WINDOWS {
        r.problem(VAR, format!("lists {} windows (at most {MAX_WINDOWS})", entries.len()), QUOTAS);
    }
    windows
}

fn same_fixed_length(a: &WindowKind, b: &WindowKind) -> bool {
    matches!((a, b), (WindowKind::Fixed(x), WindowKind::Fixed(y)) if x == y)
}

/// One `COUNT/WINDOW` without spaces, or what is wrong with it (completing "entry N "x" ...").
fn spec(entry: &str) -> Result<QuotaSpec, String> {
    if entry.is_empty() {
        return Err("is empty".into());
    }
    let Some((count, window)) = entry.split_once('/') else { return Err("is not COUNT/WINDOW".into()) };
    let limit = match count.parse::<u64>() {
        Ok(n) if (1..=MAX_COUNT).contains(&n) => n,
        Ok(n) => return Err(format!("has count {n} (1..={MAX_COUNT})")),
        Err(_) => return Err(format!("has count {count:?}, not a whole number")),
    };
    let window = window.to_ascii_lowercase();
    let kind = match window.as_str() {
        "hour" => WindowKind::Hour,
        "day" => WindowKind::Day,
        "month" => WindowKind::Month,
        _ => return fixed(&window).map(|(name, kind)| QuotaSpec { name, kind, limit }),
    };
    Ok(QuotaSpec { name: window, kind, limit })
}

/// A fixed window `<n><s|m|h|d>`: its normalised name and length.
fn fixed(window: &str) -> Result<(String, WindowKind), String> {
    let (digits, unit) = window.split_at(window.char_indices().last().map_or(0, |(i, _)| i));
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err("has an unknown window".into()),
    };
    let n = match digits.parse::<u64>() {
        Ok(n) if !digits.starts_with('+') => n,
        _ => return Err("has an unknown window".into()),
    };
    match n.checked_mul(unit_secs) {
        Some(secs) if (1..=MAX_FIXED_SECS).contains(&secs) => {
            Ok((format!("{n}{unit}"), WindowKind::Fixed(Duration::from_secs(secs))))
        }
        _ => Err(format!("has a window of {n}{unit}, outside 1s..=366d")),
    }
}

/// Whether courier can write in `dir`, learnt by making and removing a file there (permissions
/// alone do not tell: a read-only mount, an ACL, or another user's directory as root).
fn writable(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) => return Err(format!("{} cannot be read: {e}", dir.display())),
    }
    let check = dir.join(WRITE_CHECK);
    std::fs::write(&check, b"courier\n").map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
    std::fs::remove_file(&check).map_err(|e| format!("{} cannot be removed: {e}", check.display()))
}
