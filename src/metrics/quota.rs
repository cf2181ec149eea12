//! The series of the upstream quota windows (`EXTERNAL_API_QUOTAS`): one per window, and one per
//! window and client. The windows come from the configuration and the clients from the clients
//! file, so both are bounded; their series are created at 0 as soon as both are known, like the
//! request series of [`Metrics::add_clients`], so the quota panels and alerts have data from
//! start-up and `increase()` sees a client's first count.

use super::Metrics;

/// Whether `name` is a window's label value: `hour`, `day`, `month` (calendar windows), or a
/// fixed length as written in the configuration (`20s`, `15m`, `6h`, `2d`).
fn is_window_label(name: &str) -> bool {
    if matches!(name, "hour" | "day" | "month") {
        return true;
    }
    let Some(digits) = name.strip_suffix(['s', 'm', 'h', 'd']) else { return false };
    !digits.is_empty() && !digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit())
}

impl Metrics {
    /// Creates, at 0, the series of every quota window (limit, used, reset, length, pace) and
    /// of every window and client (used). Called when the quotas are set up at start and at
    /// each reload of the clients file; a series that exists keeps its value. Without quotas
    /// `windows` is empty and nothing is created.
    pub fn add_quota(&self, windows: &[&str], clients: &[&str]) {
        for window in windows {
            debug_assert!(is_window_label(window), "{window:?} is not a quota window's label value");
            self.quota_limit.with_label_values(&[window]);
            self.quota_used.with_label_values(&[window]);
            self.quota_reset.with_label_values(&[window]);
            self.quota_window.with_label_values(&[window]);
            self.quota_pace.with_label_values(&[window]);
            for client in clients {
                self.quota_client_used.with_label_values(&[window, client]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_labels_are_the_calendar_names_or_a_fixed_length_as_written() {
        for good in ["hour", "day", "month", "20s", "15m", "6h", "2d", "366d", "10s"] {
            assert!(is_window_label(good), "{good}");
        }
        for bad in ["", "s", "0s", "020s", "20", "1w", "Day", "20S", "fixed_20s", "1.5h", "-5m", "week"] {
            assert!(!is_window_label(bad), "{bad}");
        }
    }
}
