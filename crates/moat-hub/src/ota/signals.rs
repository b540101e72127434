//! Security signals per device for the campaigns' security-regression gate: authorization
//! failures and topics a device publishes to for the first time (from the security facts the
//! defence task already receives), and alerts (from the registry's `alerts` table).
//!
//! The defence task calls [`SignalTracker::observe`] for each fact it takes off its queue,
//! off the packet path; the tracker only keeps what the gate needs, bounded:
//! [`MAX_TRACKED_DEVICES`] devices, [`TOPICS_PER_DEVICE`] topic hashes and
//! [`EVENTS_PER_DEVICE`] timestamped events each (the oldest forgotten first).
//!
//! "New topic" means new for the device since the hub started tracking it: the broker's own
//! memory of topics is per connection, and an updated device reconnects after its reboot, so
//! the tracker keeps its own per-device memory. A new topic counts for a period only when the
//! device was tracked before the period began (after a hub restart, every topic is "new"
//! until learned, which would otherwise look like a regression). Without detection
//! (`[detect] mode = "off"`) there are no facts: the gate then sees alerts only (none either).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use moat_ota::campaign::Signals;
use moat_store::registry::AlertRecord;
use moat_types::DeviceId;

use crate::defence::{Fact, FactKind};

/// Most devices tracked; devices seen after that are not tracked (their signals read as
/// none) until the hub restarts.
pub const MAX_TRACKED_DEVICES: usize = 100_000;
/// Topics remembered per device (hashes); beyond it, further topics are not counted as new.
pub const TOPICS_PER_DEVICE: usize = 64;
/// Signal events remembered per device (the newest kept).
pub const EVENTS_PER_DEVICE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    AuthorizationFailure,
    NewTopic,
}

#[derive(Debug, Default)]
struct Track {
    first_seen_ms: u64,
    topics: Vec<u64>,
    events: VecDeque<(u64, Kind)>,
}

/// Per-device signal memory (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct SignalTracker {
    devices: Mutex<HashMap<DeviceId, Track>>,
}

fn topic_hash(topic: &[u8]) -> u64 {
    topic.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl SignalTracker {
    /// Takes note of one fact.
    pub(crate) fn observe(&self, fact: &Fact) {
        let Some(device) = &fact.device else { return };
        let (kind, topic) = match &fact.kind {
            FactKind::Denied { .. } => (Kind::AuthorizationFailure, None),
            FactKind::FirstTopic(t) => (Kind::NewTopic, Some(topic_hash(t.as_bytes()))),
            FactKind::Accepted => (Kind::NewTopic, None),
            _ => return,
        };
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if !devices.contains_key(device) && devices.len() >= MAX_TRACKED_DEVICES {
            return;
        }
        let track = devices.entry(device.clone()).or_insert_with(|| Track {
            first_seen_ms: fact.at_ms,
            ..Track::default()
        });
        let event = match (kind, topic) {
            (Kind::AuthorizationFailure, _) => Some(Kind::AuthorizationFailure),
            (Kind::NewTopic, Some(hash)) => {
                if track.topics.contains(&hash) || track.topics.len() >= TOPICS_PER_DEVICE {
                    None
                } else {
                    track.topics.push(hash);
                    Some(Kind::NewTopic)
                }
            }
            // A connection only starts the tracking.
            (Kind::NewTopic, None) => None,
        };
        if let Some(k) = event {
            if track.events.len() >= EVENTS_PER_DEVICE {
                track.events.pop_front();
            }
            track.events.push_back((fact.at_ms, k));
        }
    }

    /// Signals of each requested device since its time (ms), with the alerts in `alerts`
    /// (any order) counted for their device.
    pub(crate) fn signals(
        &self,
        requests: &[(DeviceId, u64)],
        alerts: &[AlertRecord],
    ) -> BTreeMap<DeviceId, Signals> {
        let mut alerts_by_device: HashMap<&str, Vec<u64>> = HashMap::new();
        for a in alerts {
            if let Some(d) = &a.device {
                alerts_by_device.entry(d).or_default().push(a.time_ms);
            }
        }
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = BTreeMap::new();
        for (device, since) in requests {
            let mut s = Signals {
                alerts: alerts_by_device
                    .get(device.as_str())
                    .map_or(0, |v| v.iter().filter(|t| **t >= *since).count() as u32),
                ..Signals::default()
            };
            if let Some(track) = devices.get(device) {
                for (at, kind) in &track.events {
                    // Strictly after: the report that marks a device installed is itself a
                    // publish, whose facts carry the same or an earlier time.
                    if *at <= *since {
                        continue;
                    }
                    match kind {
                        Kind::AuthorizationFailure => s.authorization_failures += 1,
                        Kind::NewTopic if track.first_seen_ms < *since => s.new_topics += 1,
                        Kind::NewTopic => {}
                    }
                }
            }
            if s.any() {
                out.insert(device.clone(), s);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_types::TopicName;

    fn fact(device: &str, at_ms: u64, kind: FactKind) -> Fact {
        Fact {
            at_ms,
            peer: crate::defence::UNKNOWN_PEER,
            connection: 0,
            device: Some(DeviceId::parse(device).expect("id")),
            client: None,
            kind,
        }
    }

    #[test]
    fn new_topics_count_only_after_learning_and_reconnects_do_not_relearn() {
        let t = SignalTracker::default();
        let topic = |s: &str| FactKind::FirstTopic(TopicName::parse(s).expect("topic"));
        t.observe(&fact("d1", 100, topic("devices/d1/temp")));
        // The same topic again (a reconnect after the update's reboot): not new.
        t.observe(&fact("d1", 500, topic("devices/d1/temp")));
        t.observe(&fact("d1", 600, topic("devices/d1/debug")));
        t.observe(&fact(
            "d1",
            700,
            FactKind::Denied {
                action: moat_detect::Action::Publish,
                topic: "devices/d2/x".into(),
            },
        ));
        let d1 = DeviceId::parse("d1").expect("id");
        let s = t.signals(&[(d1.clone(), 400)], &[]);
        assert_eq!(
            s.get(&d1),
            Some(&Signals {
                alerts: 0,
                authorization_failures: 1,
                new_topics: 1
            })
        );
        // A period that began before the device was first seen: its topics are not "new".
        let s = t.signals(&[(d1.clone(), 50)], &[]);
        assert_eq!(s.get(&d1).map(|s| s.new_topics), Some(0));
        let alert = AlertRecord {
            id: 1,
            time_ms: 800,
            detector: "x".into(),
            severity: "high".into(),
            device: Some("d1".into()),
            address: None,
            response: "alert".into(),
            state: moat_store::registry::AlertState::Open,
            state_at_ms: 800,
            state_by: "detect".into(),
            body: "{}".into(),
        };
        let s = t.signals(&[(d1.clone(), 750)], &[alert]);
        assert_eq!(
            s.get(&d1),
            Some(&Signals {
                alerts: 1,
                authorization_failures: 0,
                new_topics: 0
            })
        );
        assert!(
            t.signals(&[(DeviceId::parse("d9").expect("id"), 0)], &[])
                .is_empty()
        );
    }
}
