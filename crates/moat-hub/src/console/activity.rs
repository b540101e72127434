//! What the console shows live: which devices are connected, their recent connection
//! events, and fleet-wide rates sampled from the broker's counters.
//!
//! Fed by `NetEvents` (moat-net reports every accepted CONNECT and every closed connection)
//! and by a sampler task. Everything is bounded: the online map by the live connections, the
//! event ring by [`RECENT_CONNECTION_EVENTS`], the samples by [`SAMPLES_KEPT`]. The mutex is a
//! leaf: nothing else is locked while it is held.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::identity::now_ms;

/// Connection events remembered, fleet-wide (the device page's timeline draws from them).
pub const RECENT_CONNECTION_EVENTS: usize = 8192;
/// How often the fleet counters are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: one hour at [`SAMPLE_INTERVAL`].
pub const SAMPLES_KEPT: usize = 360;
/// Device changes buffered for each live event stream before it skips ahead.
const FEED_CAPACITY: usize = 1024;

/// A device came online or went offline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeviceChange {
    pub device: String,
    pub online: bool,
    pub at_ms: u64,
}

/// Fleet counters at one instant (cumulative since start; rates are differences).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    pub at_ms: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    /// CONNECTs, publishes and subscriptions refused by policy.
    pub refused: u64,
    pub online: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Live connections per device.
    online: HashMap<String, u32>,
    recent: VecDeque<DeviceChange>,
    samples: VecDeque<Sample>,
}

/// Live fleet activity.
#[derive(Debug)]
pub(crate) struct Activity {
    state: Mutex<State>,
    feed: broadcast::Sender<DeviceChange>,
    /// Per-device message rates (the device page's chart).
    pub rates: std::sync::Arc<crate::rates::DeviceRates>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            feed: broadcast::channel(FEED_CAPACITY).0,
            rates: std::sync::Arc::default(),
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn change(&self, device: &str, online: bool) {
        let change = DeviceChange {
            device: device.to_owned(),
            online,
            at_ms: now_ms(),
        };
        {
            let mut st = self.lock();
            let was_online = st.online.contains_key(device);
            if online {
                *st.online.entry(device.to_owned()).or_default() += 1;
            } else if let Some(n) = st.online.get_mut(device) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.online.remove(device);
                }
            }
            // A takeover (second connection) or the close of a replaced one changes nothing.
            if was_online == st.online.contains_key(device) {
                return;
            }
            if st.recent.len() >= RECENT_CONNECTION_EVENTS {
                st.recent.pop_front();
            }
            st.recent.push_back(change.clone());
        }
        // No receiver (no console open) is the common case, not an error.
        let _ = self.feed.send(change);
    }

    /// A device's connection was accepted.
    pub(crate) fn connected(&self, device: &str) {
        self.change(device, true);
    }

    /// A device's connection closed.
    pub(crate) fn disconnected(&self, device: &str) {
        self.change(device, false);
    }

    /// How many devices have a live connection.
    pub(crate) fn online_count(&self) -> usize {
        self.lock().online.len()
    }

    /// Whether each of `devices` has a live connection.
    pub(crate) fn online_among<'a>(&self, devices: impl Iterator<Item = &'a str>) -> Vec<bool> {
        let st = self.lock();
        devices.map(|d| st.online.contains_key(d)).collect()
    }

    /// The remembered connection events of `device`, oldest first.
    pub(crate) fn events_of(&self, device: &str) -> Vec<DeviceChange> {
        self.lock()
            .recent
            .iter()
            .filter(|c| c.device == device)
            .cloned()
            .collect()
    }

    /// Device changes from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<DeviceChange> {
        self.feed.subscribe()
    }

    /// Keeps one sample (the oldest goes beyond [`SAMPLES_KEPT`]).
    pub(crate) fn record(&self, mut sample: Sample) {
        let mut st = self.lock();
        sample.online = st.online.len();
        if st.samples.len() >= SAMPLES_KEPT {
            st.samples.pop_front();
        }
        st.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.lock().samples.iter().copied().collect()
    }
}

/// Samples the broker's counters every [`SAMPLE_INTERVAL`] until the hub stops.
pub(crate) async fn sample(
    activity: std::sync::Arc<Activity>,
    broker: moat_broker::Broker,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let s = broker.stats();
        activity.record(Sample {
            at_ms: now_ms(),
            messages_in: s.messages_in.load(Relaxed),
            messages_out: s.messages_out.load(Relaxed),
            refused: s.connect_denied.load(Relaxed)
                + s.publish_denied.load(Relaxed)
                + s.subscribe_denied.load(Relaxed),
            online: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_follows_connections_and_takeovers() {
        let a = Activity::default();
        let mut feed = a.subscribe();
        a.connected("d1");
        a.connected("d1"); // takeover: a second connection before the first closes
        a.disconnected("d1");
        assert_eq!(a.online_count(), 1);
        a.disconnected("d1");
        assert_eq!(a.online_count(), 0);
        let events = a.events_of("d1");
        assert_eq!(
            events.iter().map(|e| e.online).collect::<Vec<_>>(),
            [true, false]
        );
        assert!(feed.try_recv().is_ok_and(|c| c.online));
        assert!(feed.try_recv().is_ok_and(|c| !c.online));
        assert!(feed.try_recv().is_err());
    }

    #[test]
    fn event_ring_is_bounded() {
        let a = Activity::default();
        for i in 0..RECENT_CONNECTION_EVENTS + 10 {
            a.connected(&format!("d{i}"));
        }
        assert_eq!(a.lock().recent.len(), RECENT_CONNECTION_EVENTS);
        assert!(a.events_of("d0").is_empty());
    }
}
