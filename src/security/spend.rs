//! Each client's upstream spending against its own recent past.
//!
//! Every `COURIER_SPEND_INTERVAL` the attempts each client made in the interval (read from
//! `courier_client_upstream_attempts_total`, so nothing more is counted on the request path)
//! are turned into a rate per minute and compared with the client's baseline: an exponentially
//! weighted moving average of its earlier intervals, with a half-life of
//! `COURIER_SPEND_BASELINE_HALF_LIFE`, and never below `COURIER_SPEND_MIN_PER_MINUTE` (a client
//! that was idle is not anomalous for its first few requests). A rate above
//! `COURIER_SPEND_ANOMALY_MULTIPLE` times the baseline is anomalous: the gauge
//! `courier_client_spend_anomalous{client}` is 1, and a `client_spend_anomalous` line is logged
//! when it begins (`client_spend_normal` when it ends). The interval is then folded into the
//! baseline, so a lasting change of habit becomes the new normal within a few half-lives.
//!
//! A client's first interval after start only sets its baseline: a restart must not make every
//! busy client anomalous. Each replica judges the attempts it made itself; behind a load
//! balancer that spreads clients evenly, each sees the same multiple.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use slog::{info, o, warn, Logger};

use crate::config::SpendConfig;
use crate::metrics::Metrics;

/// How an interval compared with the baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Judged {
    /// Attempts per minute in the interval.
    pub per_minute: f64,
    /// The baseline it was compared with (per minute, before this interval was folded in).
    pub baseline: f64,
    /// `per_minute` over the baseline, floored at the minimum.
    pub ratio: f64,
    /// Whether the ratio is above the multiple.
    pub anomalous: bool,
}

/// The rules of the comparison, checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rules {
    multiple: f64,
    /// Weight of a new interval in the average: `1 − 2^(−interval / half-life)`.
    alpha: f64,
    interval: Duration,
    min_per_minute: f64,
}

impl Rules {
    /// The rules of `config`; `None` when the check is off (multiple 0).
    pub fn of(config: &SpendConfig) -> Option<Rules> {
        if config.multiple == 0.0 || config.interval.is_zero() || config.half_life.is_zero() {
            return None;
        }
        let alpha = 1.0 - (-(config.interval.as_secs_f64() / config.half_life.as_secs_f64())).exp2();
        Some(Rules {
            multiple: config.multiple,
            alpha,
            interval: config.interval,
            min_per_minute: config.min_per_minute,
        })
    }

    /// The interval between comparisons.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// One client's baseline.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Baseline {
    /// Attempts per minute, once the first interval set it.
    per_minute: Option<f64>,
}

impl Baseline {
    /// Judges an interval of `attempts`, then folds it into the baseline. The first interval
    /// only sets the baseline (judged normal, ratio 1).
    pub fn observe(&mut self, attempts: u64, rules: &Rules) -> Judged {
        let per_minute = attempts as f64 * 60.0 / rules.interval.as_secs_f64();
        let Some(before) = self.per_minute else {
            self.per_minute = Some(per_minute);
            return Judged { per_minute, baseline: per_minute, ratio: 1.0, anomalous: false };
        };
        let ratio = per_minute / before.max(rules.min_per_minute);
        self.per_minute = Some(before + rules.alpha * (per_minute - before));
        Judged { per_minute, baseline: before, ratio, anomalous: ratio > rules.multiple }
    }
}

/// The comparison for every client, run by [`start`].
pub struct Spend {
    rules: Rules,
    /// Per client: the attempts counted at the last look, its baseline, and whether it was
    /// anomalous.
    clients: HashMap<String, (u64, Baseline, bool)>,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl Spend {
    /// The comparison of `rules`.
    pub fn new(rules: Rules, metrics: Arc<Metrics>, log: &Logger) -> Spend {
        Spend { rules, clients: HashMap::new(), metrics, log: log.new(o!("component" => "spend")) }
    }

    /// Looks at every client's attempts since the last look.
    pub fn tick(&mut self) {
        let security = &self.metrics.security;
        let family = prometheus::core::Collector::collect(&security.client_attempts);
        for metric in family.iter().flat_map(|f| f.get_metric()) {
            let Some(client) = metric.get_label().iter().find(|l| l.name() == "client").map(|l| l.value()) else {
                continue;
            };
            let total = metric.get_counter().get_value() as u64;
            let entry = self.clients.entry(client.to_owned()).or_insert((total, Baseline::default(), false));
            let attempts = total.saturating_sub(entry.0);
            entry.0 = total;
            let judged = entry.1.observe(attempts, &self.rules);
            security.spend_baseline.with_label_values(&[client]).set(entry.1.per_minute.unwrap_or(0.0));
            security.spend_ratio.with_label_values(&[client]).set(judged.ratio);
            security.spend_anomalous.with_label_values(&[client]).set(f64::from(u8::from(judged.anomalous)));
            match (entry.2, judged.anomalous) {
                (false, true) => {
                    security.spend_anomalies.inc();
                    warn!(self.log, "client_spend_anomalous"; "client" => client,
                        "attempts_per_minute" => judged.per_minute, "baseline_per_minute" => judged.baseline,
                        "ratio" => judged.ratio, "multiple" => self.rules.multiple);
                }
                (true, false) => {
                    info!(self.log, "client_spend_normal"; "client" => client,
                        "attempts_per_minute" => judged.per_minute, "baseline_per_minute" => judged.baseline);
                }
                _ => {}
            }
            entry.2 = judged.anomalous;
        }
    }
}

/// Runs the comparison every interval on the current arbiter (nothing when it is off).
pub fn start(config: &SpendConfig, metrics: Arc<Metrics>, log: &Logger) {
    let Some(rules) = Rules::of(config) else { return };
    let mut spend = Spend::new(rules, metrics, log);
    actix_rt::spawn(async move {
        let mut ticks = actix_rt::time::interval(rules.interval());
        // The first tick is at once: it notes the counts at start.
        loop {
            ticks.tick().await;
            spend.tick();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(multiple: f64, interval_secs: u64, half_life_secs: u64) -> Rules {
        Rules::of(&SpendConfig {
            multiple,
            half_life: Duration::from_secs(half_life_secs),
            interval: Duration::from_secs(interval_secs),
            min_per_minute: 10.0,
        })
        .unwrap()
    }

    #[test]
    fn off_at_multiple_zero() {
        let config = SpendConfig {
            multiple: 0.0,
            half_life: Duration::from_secs(60),
            interval: Duration::from_secs(60),
            min_per_minute: 1.0,
        };
        assert_eq!(Rules::of(&config), None);
    }

    #[test]
    fn a_burst_far_above_the_baseline_is_anomalous_and_becomes_normal_in_time() {
        let rules = rules(10.0, 60, 600);
        let mut baseline = Baseline::default();
        let first = baseline.observe(100, &rules);
        assert_eq!((first.ratio, first.anomalous), (1.0, false), "the first interval sets the baseline");
        for _ in 0..20 {
            assert!(!baseline.observe(100, &rules).anomalous, "steady spending");
        }
        let burst = baseline.observe(1500, &rules);
        assert!(burst.anomalous && (burst.ratio - 15.0).abs() < 1e-9, "{burst:?}");
        assert!(!baseline.observe(900, &rules).anomalous, "9x the old baseline (raised a little by the burst)");
        // Kept up, the new level becomes the baseline: within a few half-lives it is normal.
        let mut last = baseline.observe(1500, &rules);
        for _ in 0..30 {
            last = baseline.observe(1500, &rules);
        }
        assert!(!last.anomalous && last.baseline > 1000.0, "{last:?}");
    }

    #[test]
    fn the_half_life_halves_the_weight_of_the_past() {
        let rules = rules(10.0, 60, 60);
        let mut baseline = Baseline::default();
        baseline.observe(100, &rules);
        let after = baseline.observe(0, &rules);
        assert_eq!(after.baseline, 100.0);
        assert!((baseline.per_minute.unwrap() - 50.0).abs() < 1e-9, "{baseline:?}");
    }

    #[test]
    fn an_idle_client_is_compared_with_the_minimum() {
        let rules = rules(10.0, 60, 3600);
        let mut baseline = Baseline::default();
        baseline.observe(0, &rules);
        assert!(!baseline.observe(50, &rules).anomalous, "5x the minimum of 10 per minute");
        let mut idle = Baseline::default();
        idle.observe(0, &rules);
        let burst = idle.observe(150, &rules);
        assert!(burst.anomalous && (burst.ratio - 15.0).abs() < 1e-9, "{burst:?}");
    }

    #[test]
    fn rates_are_per_minute_whatever_the_interval() {
        let rules = rules(10.0, 1, 60);
        let mut baseline = Baseline::default();
        assert_eq!(baseline.observe(2, &rules).per_minute, 120.0);
    }
}
