//! Watching for suspicious callers: the lockout of a source that keeps presenting wrong client
//! keys, and the baseline a client's upstream spending is compared with.

use std::time::Duration;

use super::reader::Reader;

/// When a source that keeps failing authentication is locked out (`COURIER_AUTH_LOCKOUT_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockoutConfig {
    /// Wrong keys from one source within `window` that lock it out; 0 turns lockouts off.
    pub threshold: u32,
    /// The window the wrong keys are counted in (from the first of them).
    pub window: Duration,
    /// The first lockout's length; each further lockout of the same source doubles it.
    pub base: Duration,
    /// The longest lockout; also how long a source that stays clean keeps its record of strikes.
    pub max: Duration,
    /// Sources each replica keeps in its own table at most (the oldest is forgotten first).
    pub max_sources: usize,
}

impl LockoutConfig {
    /// Whether lockouts are on.
    pub fn enabled(&self) -> bool {
        self.threshold > 0
    }
}

/// How a client's upstream spending is compared with its own recent past (`COURIER_SPEND_*`).
#[derive(Clone, Debug, PartialEq)]
pub struct SpendConfig {
    /// A client spending this many times its baseline is anomalous; 0 turns the check off.
    pub multiple: f64,
    /// Half-life of the baseline (an exponentially weighted moving average).
    pub half_life: Duration,
    /// How often the spending of the last interval is compared and folded into the baseline.
    pub interval: Duration,
    /// The least baseline a client is compared with, in attempts per minute, so that a client
    /// that was idle is not anomalous for its first few requests.
    pub min_per_minute: f64,
}

/// The security settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SecurityConfig {
    /// Lockouts of sources that keep failing authentication.
    pub lockout: LockoutConfig,
    /// Spending against the baseline.
    pub spend: SpendConfig,
}

impl SecurityConfig {
    /// Reads the `COURIER_AUTH_LOCKOUT_*` and `COURIER_SPEND_*` variables.
    pub(super) fn read(r: &mut Reader<'_>) -> SecurityConfig {
        let lockout = LockoutConfig {
            threshold: r.count("COURIER_AUTH_LOCKOUT_THRESHOLD", 10, 0..=1_000_000) as u32,
            window: Duration::from_secs(r.count("COURIER_AUTH_LOCKOUT_WINDOW", 60, 1..=86_400)),
            base: Duration::from_secs(r.count("COURIER_AUTH_LOCKOUT_BASE", 30, 1..=86_400)),
            max: Duration::from_secs(r.count("COURIER_AUTH_LOCKOUT_MAX", 3600, 1..=604_800)),
            max_sources: r.count("COURIER_AUTH_LOCKOUT_SOURCES", 10_000, 16..=10_000_000) as usize,
        };
        if lockout.max < lockout.base && !r.reported("COURIER_AUTH_LOCKOUT_MAX") {
            r.problem(
                "COURIER_AUTH_LOCKOUT_MAX",
                format!("{} is below COURIER_AUTH_LOCKOUT_BASE ({})", lockout.max.as_secs(), lockout.base.as_secs()),
                "whole seconds >= COURIER_AUTH_LOCKOUT_BASE",
            );
        }
        let spend = SpendConfig {
            multiple: r.parsed(
                "COURIER_SPEND_ANOMALY_MULTIPLE",
                10.0,
                "0 (off), or a multiple above 1, e.g. 10",
                |s| s.parse::<f64>().ok().filter(|v| *v == 0.0 || (v.is_finite() && *v > 1.0 && *v <= 1e6)),
            ),
            half_life: r.seconds("COURIER_SPEND_BASELINE_HALF_LIFE", 21600.0),
            interval: r.seconds("COURIER_SPEND_INTERVAL", 60.0),
            min_per_minute: r.parsed("COURIER_SPEND_MIN_PER_MINUTE", 10.0, "attempts per minute > 0, e.g. 10", |s| {
                s.parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0 && *v <= 1e9)
            }),
        };
        if spend.half_life < spend.interval && !r.reported("COURIER_SPEND_BASELINE_HALF_LIFE") {
            r.problem(
                "COURIER_SPEND_BASELINE_HALF_LIFE",
                "is shorter than COURIER_SPEND_INTERVAL",
                "seconds >= COURIER_SPEND_INTERVAL",
            );
        }
        SecurityConfig { lockout, spend }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{test_env, Config};

    fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
        match Config::from_sources(&test_env(pairs), None) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_defaults_are_safe_and_zero_turns_lockouts_off() {
        let config = Config::from_sources(&test_env(&[]), None).unwrap();
        let lockout = &config.security.lockout;
        assert!(lockout.enabled());
        assert_eq!(
            (lockout.threshold, lockout.window.as_secs(), lockout.base.as_secs(), lockout.max.as_secs()),
            (10, 60, 30, 3600)
        );
        assert_eq!(config.security.spend.multiple, 10.0);
        let off = Config::from_sources(&test_env(&[("COURIER_AUTH_LOCKOUT_THRESHOLD", "0")]), None).unwrap();
        assert!(!off.security.lockout.enabled());
    }

    #[test]
    fn bad_settings_are_one_line_each() {
        let found = problems(&[
            ("COURIER_AUTH_LOCKOUT_THRESHOLD", "ten"),
            ("COURIER_AUTH_LOCKOUT_BASE", "60"),
            ("COURIER_AUTH_LOCKOUT_MAX", "30"),
            ("COURIER_SPEND_ANOMALY_MULTIPLE", "0.5"),
            ("COURIER_SPEND_INTERVAL", "120"),
            ("COURIER_SPEND_BASELINE_HALF_LIFE", "60"),
        ]);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found.iter().all(|line| !line.contains('\n')), "{found:#?}");
        assert!(found[0].starts_with("COURIER_AUTH_LOCKOUT_THRESHOLD"), "{found:#?}");
        assert!(found
            .iter()
            .any(|l| l.starts_with("COURIER_AUTH_LOCKOUT_MAX: 30 is below COURIER_AUTH_LOCKOUT_BASE (60)")));
        assert!(found.iter().any(|l| l.starts_with("COURIER_SPEND_ANOMALY_MULTIPLE")));
        assert!(found.iter().any(|l| l.starts_with("COURIER_SPEND_BASELINE_HALF_LIFE: is shorter")));
    }
}
