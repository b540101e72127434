//! The `connections_per_minute` quota: accepted CONNECTs per identity over a sliding
//! minute, for identities whose policies set it. The other quota fields are enforced per
//! connection by the broker (`moat_types::Quota`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Most identities whose recent CONNECTs are remembered. When the table is full, entries
/// older than two minutes are forgotten; if it is still full, the oldest eighth is dropped
/// (those identities start counting again). 65,536 entries of about 100 bytes: 6.5 MB at most.
pub const MAX_TRACKED_IDENTITIES: usize = 65_536;

const MINUTE_MS: u64 = 60_000;

/// Two fixed one-minute windows per identity, weighted into a sliding minute (the
/// estimate never undercounts the true sliding count by more than the previous window's
/// share that has aged out).
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Start of the current minute, in ms.
    start: u64,
    current: u32,
    previous: u32,
}

impl Window {
    fn roll(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.start);
        if elapsed >= 2 * MINUTE_MS {
            *self = Window {
                start: now,
                current: 0,
                previous: 0,
            };
        } else if elapsed >= MINUTE_MS {
            self.previous = self.current;
            self.current = 0;
            self.start += MINUTE_MS;
        }
    }

    /// CONNECTs in the minute before `now` (weighted).
    fn count(&self, now: u64) -> f64 {
        let into = now.saturating_sub(self.start).min(MINUTE_MS) as f64 / MINUTE_MS as f64;
        f64::from(self.previous) * (1.0 - into) + f64::from(self.current)
    }
}

/// Counts CONNECTs per identity.
#[derive(Debug, Default)]
pub(crate) struct ConnectRates {
    windows: Mutex<HashMap<String, Window>>,
}

impl ConnectRates {
    /// Records a CONNECT of `identity` at `now_ms` if fewer than `per_minute` were accepted
    /// in the minute before; returns whether it may connect.
    pub(crate) fn admit(&self, identity: &str, per_minute: u32, now_ms: u64) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if !windows.contains_key(identity) && windows.len() >= MAX_TRACKED_IDENTITIES {
            windows.retain(|_, w| now_ms.saturating_sub(w.start) < 2 * MINUTE_MS);
            if windows.len() >= MAX_TRACKED_IDENTITIES {
                // Still full of live windows: drop the oldest eighth at once, so that churn
                // costs one sort per many CONNECTs rather than a scan per CONNECT.
                let mut starts: Vec<u64> = windows.values().map(|w| w.start).collect();
                let cut = starts.len() / 8;
                let (_, threshold, _) = starts.select_nth_unstable(cut);
                let threshold = *threshold;
                windows.retain(|_, w| w.start > threshold);
            }
        }
        let window = windows.entry(identity.to_owned()).or_insert(Window {
            start: now_ms,
            current: 0,
            previous: 0,
        });
        window.roll(now_ms);
        if window.count(now_ms) + 1.0 > f64::from(per_minute) {
            return false;
        }
        window.current = window.current.saturating_add(1);
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_quota_then_recovers_as_the_minute_slides() {
        let rates = ConnectRates::default();
        for i in 0..5 {
            assert!(rates.admit("d1", 5, 1_000 + i), "connect {i}");
        }
        assert!(!rates.admit("d1", 5, 2_000));
        // Another identity is counted on its own.
        assert!(rates.admit("d2", 5, 2_000));
        // Refused attempts do not count: half a minute into the next window half of the
        // previous one has aged out.
        assert!(!rates.admit("d1", 5, 60_500));
        assert!(rates.admit("d1", 5, 31_000 + MINUTE_MS));
        // After two quiet minutes everything is forgotten.
        for i in 0..5 {
            assert!(rates.admit("d1", 5, 10 * MINUTE_MS + i));
        }
    }

    #[test]
    fn the_table_stays_bounded_under_identity_churn() {
        let rates = ConnectRates::default();
        for i in 0..(MAX_TRACKED_IDENTITIES + 1000) {
            assert!(rates.admit(&format!("id-{i}"), 1, 1_000));
        }
        assert!(rates.len() <= MAX_TRACKED_IDENTITIES);
    }
}
