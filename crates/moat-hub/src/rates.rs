//! Per-device message rates over the last hour, minute by minute: the device page's chart and
//! `GET /api/v1/devices/{id}/rates`, with the time the device was held back by a rate limit.
//!
//! Fed from the broker's per-connection traffic counts (`Broker::collect_traffic`), by the
//! defence task when detection runs and by [`collect`] otherwise: one collector at a time,
//! since collecting takes the counts. Memory is bounded: [`RATE_MINUTES`] buckets for at most
//! [`MAX_RATE_DEVICES`] devices (about 0.75 KiB each); when full, devices quiet for the longest
//! are forgotten first. The mutex is a leaf.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use moat_broker::{Broker, Principal};

/// Minutes of history per device.
pub const RATE_MINUTES: usize = 60;
/// Devices whose history is kept.
pub const MAX_RATE_DEVICES: usize = 20_000;
/// How often [`collect`] takes the broker's counts when detection is off.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(5);

const MINUTE_MS: u64 = 60_000;

#[derive(Debug)]
struct History {
    /// `(received, delivered, held_ms)` per minute; minute `m` lives at `m % RATE_MINUTES`.
    buckets: [(u32, u32, u32); RATE_MINUTES],
    /// The latest minute with a bucket in use.
    last_minute: u64,
}

impl History {
    fn new(minute: u64) -> Self {
        Self {
            buckets: [(0, 0, 0); RATE_MINUTES],
            last_minute: minute,
        }
    }

    /// Moves to `minute`, clearing the buckets of the minutes in between.
    fn advance(&mut self, minute: u64) {
        if minute <= self.last_minute {
            return;
        }
        let gap = (minute - self.last_minute).min(RATE_MINUTES as u64);
        for m in 0..gap {
            let slot = ((minute - m) % RATE_MINUTES as u64) as usize;
            self.buckets[slot] = (0, 0, 0);
        }
        self.last_minute = minute;
    }
}

/// One minute of a device's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MinuteRate {
    /// Start of the minute, Unix milliseconds.
    pub minute_start_ms: u64,
    /// PUBLISH packets received from the device in that minute.
    pub received: u32,
    /// PUBLISH packets delivered to the device in that minute.
    pub delivered: u32,
    /// Milliseconds the device was held unread by a rate quota or a detection throttle in
    /// that minute while packets it had sent were waiting (it offered more than allowed).
    pub held_ms: u32,
}

/// Message counts per device and minute (see the module header).
#[derive(Debug, Default)]
pub struct DeviceRates {
    devices: Mutex<HashMap<String, History>>,
}

impl DeviceRates {
    /// Adds counts taken at `now_ms`: `(device, received, delivered, held_ms)`.
    pub fn record<'a>(
        &self,
        now_ms: u64,
        counts: impl IntoIterator<Item = (&'a str, u32, u32, u32)>,
    ) {
        let minute = now_ms / MINUTE_MS;
        let mut map = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        for (device, received, delivered, held_ms) in counts {
            if received == 0 && delivered == 0 && held_ms == 0 {
                continue;
            }
            if !map.contains_key(device) && map.len() >= MAX_RATE_DEVICES {
                // Forget the device quiet for the longest (a scan, only when full).
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, h)| h.last_minute)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
            let h = map
                .entry(device.to_owned())
                .or_insert_with(|| History::new(minute));
            h.advance(minute);
            let slot = &mut h.buckets[(minute % RATE_MINUTES as u64) as usize];
            slot.0 = slot.0.saturating_add(received);
            slot.1 = slot.1.saturating_add(delivered);
            slot.2 = slot.2.saturating_add(held_ms);
        }
    }

    /// The last [`RATE_MINUTES`] minutes of `device` up to `now_ms`, oldest first (zeros
    /// where nothing was counted); empty when the hub has no counts of it.
    pub fn series(&self, device: &str, now_ms: u64) -> Vec<MinuteRate> {
        let minute = now_ms / MINUTE_MS;
        let map = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(h) = map.get(device) else {
            return Vec::new();
        };
        let first = minute.saturating_sub(RATE_MINUTES as u64 - 1);
        (first..=minute)
            .map(|m| {
                let kept = m <= h.last_minute && h.last_minute - m < RATE_MINUTES as u64;
                let (received, delivered, held_ms) = if kept {
                    h.buckets[(m % RATE_MINUTES as u64) as usize]
                } else {
                    (0, 0, 0)
                };
                MinuteRate {
                    minute_start_ms: m * MINUTE_MS,
                    received,
                    delivered,
                    held_ms,
                }
            })
            .collect()
    }

    /// Devices with a history.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Takes the broker's traffic counts every [`COLLECT_INTERVAL`] into `rates` until `stop`
/// turns true. Runs only when detection is off (the defence task collects otherwise).
pub(crate) async fn collect(
    broker: Broker,
    rates: std::sync::Arc<DeviceRates>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(COLLECT_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut counts = Vec::new();
        broker.collect_traffic(|_, _, principal, t| {
            if let Principal::Device(d) = principal {
                counts.push((d.as_str().to_owned(), t.msgs_in, t.msgs_out, t.held_ms));
            }
        });
        rates.record(
            crate::identity::now_ms(),
            counts.iter().map(|(d, i, o, h)| (d.as_str(), *i, *o, *h)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000 / MINUTE_MS * MINUTE_MS;

    #[test]
    fn counts_land_in_their_minute_and_old_minutes_roll_off() {
        let r = DeviceRates::default();
        r.record(T0, [("d1", 5, 1, 0)]);
        r.record(T0 + 30_000, [("d1", 5, 0, 250)]);
        r.record(T0 + 2 * MINUTE_MS, [("d1", 7, 2, 0)]);
        let s = r.series("d1", T0 + 2 * MINUTE_MS);
        assert_eq!(s.len(), RATE_MINUTES);
        let last = &s[RATE_MINUTES - 3..];
        assert_eq!(
            last.iter()
                .map(|m| (m.received, m.delivered, m.held_ms))
                .collect::<Vec<_>>(),
            vec![(10, 1, 250), (0, 0, 0), (7, 2, 0)]
        );
        assert_eq!(s[RATE_MINUTES - 1].minute_start_ms, T0 + 2 * MINUTE_MS);
        // An hour later the old minutes are gone, also when nothing new was counted.
        let later = r.series("d1", T0 + 2 * MINUTE_MS + 60 * MINUTE_MS);
        assert!(later.iter().all(|m| m.received == 0), "{later:?}");
        r.record(T0 + 100 * MINUTE_MS, [("d1", 1, 0, 0)]);
        let s = r.series("d1", T0 + 100 * MINUTE_MS);
        assert_eq!(s.iter().map(|m| m.received).sum::<u32>(), 1);
        assert!(r.series("unknown", T0).is_empty());
    }

    #[test]
    fn memory_is_bounded_and_the_quietest_device_goes_first() {
        let r = DeviceRates::default();
        r.record(T0, [("old", 1, 0, 0)]);
        let names: Vec<String> = (0..MAX_RATE_DEVICES).map(|i| format!("d{i}")).collect();
        r.record(T0 + MINUTE_MS, names.iter().map(|n| (n.as_str(), 1, 0, 0)));
        assert_eq!(r.len(), MAX_RATE_DEVICES);
        assert!(r.series("old", T0 + MINUTE_MS).is_empty(), "evicted first");
        assert!(!r.series("d0", T0 + MINUTE_MS).is_empty());
    }
}
