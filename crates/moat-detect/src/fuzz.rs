//! Entry points for the cargo-fuzz target in `/fuzz` (feature `fuzzing`), kept in the crate so
//! that the target is a shim and the property tests run the same code in every test run.
//!
//! * [`config`]: operator text (the `[detect]` table) through TOML, validation and
//!   `Engine::new`.
//! * [`events`]: an arbitrary stream of events — peers choose addresses, identities, client
//!   ids, topics, sizes, reasons and timing — with ticks in between, through one engine with
//!   small tables so that eviction runs. Checks that the tables stay within their limits
//!   and that every alert explains itself.

use std::net::IpAddr;

use moat_types::{ClientId, DeviceId, TopicFilter, TopicName};

use crate::{
    Action, DetectConfig, DisconnectCause, Engine, Event, EventKind, GroupName, Output,
    ProtocolFault, RefusedReason, Side, Source, TlsFailure, TrafficSummary,
};

/// Parses `data` as a `[detect]` table; if it parses and validates, an engine must start.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = toml::from_str::<DetectConfig>(text) else {
        return;
    };
    if cfg.validate().is_ok() {
        assert!(
            Engine::new(cfg).is_ok(),
            "a valid configuration must start an engine"
        );
    }
}

/// Bytes to draw from, never panicking when they run out.
struct Draw<'a>(&'a [u8]);

impl Draw<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.byte()?,
            self.byte()?,
            self.byte()?,
            self.byte()?,
        ]))
    }
}

const TOPICS: &[&str] = &[
    "devices/d0/telemetry",
    "devices/d1/cmd/open",
    "devices/d2/state",
    "_moat/honey/keys",
    "plant/a/b/c/d/e",
    "$SYS/x",
];

const FILTERS: &[&str] = &[
    "#",
    "devices/+/cmd/#",
    "devices/d1/#",
    "_moat/#",
    "+/+/+",
    "a",
];

/// Feeds the engine the event stream `data` describes.
pub fn events(data: &[u8]) {
    let mut cfg = DetectConfig::default();
    // Small tables, so that the stream churns them.
    cfg.limits.max_devices = 16;
    cfg.limits.max_addresses = 16;
    cfg.limits.max_groups = 4;
    cfg.limits.max_incidents = 32;
    cfg.limits.max_held = 8;
    let Ok(mut engine) = Engine::new(cfg) else {
        panic!("the fuzz configuration is valid");
    };
    let devices: Vec<DeviceId> = (0..24)
        .filter_map(|i| DeviceId::parse(&format!("d{i}")).ok())
        .collect();
    let clients: Vec<ClientId> = (0..8)
        .filter_map(|i| ClientId::parse(&format!("c{i}")).ok())
        .collect();
    let groups: Vec<GroupName> = (0..6)
        .filter_map(|i| GroupName::parse(&format!("g{i}")).ok())
        .collect();
    let topics: Vec<TopicName> = TOPICS
        .iter()
        .filter_map(|t| TopicName::parse(t).ok())
        .collect();
    let filters: Vec<TopicFilter> = FILTERS
        .iter()
        .filter_map(|f| TopicFilter::parse(f).ok())
        .collect();
    let mut d = Draw(data);
    let mut now: u64 = 1_700_000_000_000;
    let mut out = Vec::new();
    // Bounded work per input.
    for _ in 0..4096 {
        let Some(op) = d.byte() else { break };
        let Some(who) = d.byte() else { break };
        // Time moves forward mostly a little, sometimes a lot, sometimes not at all.
        now += match op >> 6 {
            0 => 0,
            1 => u64::from(who % 16),
            2 => 1_000,
            _ => u64::from(who) * 10_000,
        };
        let pick = |n: usize| usize::from(who) % n.max(1);
        let device = (who & 0x80 == 0).then(|| &devices[pick(devices.len())]);
        let source = Source {
            connection: u64::from(who % 32),
            address: IpAddr::from([10, 0, who % 20, 1]),
            device,
            client: (who & 0x40 == 0).then(|| &clients[pick(clients.len())]),
            group: (who & 0x20 == 0).then(|| &groups[pick(groups.len())]),
        };
        let topic = &topics[pick(topics.len())];
        let filter = &filters[pick(filters.len())];
        let kind = match op % 16 {
            0 => EventKind::ConnectAttempt,
            1 => EventKind::TlsHandshakeFailed {
                reason: [
                    TlsFailure::NoCertificate,
                    TlsFailure::UnknownIssuer,
                    TlsFailure::BadCertificate,
                    TlsFailure::Expired,
                    TlsFailure::Revoked,
                    TlsFailure::Negotiation,
                ][pick(6)],
            },
            2 => EventKind::HandshakeTimeout,
            3 => EventKind::ConnectTimeout,
            4 => EventKind::ConnectRefused {
                reason: [
                    RefusedReason::BadCredentials,
                    RefusedReason::NotAuthorized,
                    RefusedReason::UnknownIdentity,
                    RefusedReason::ClientIdRejected,
                    RefusedReason::ServerUnavailable,
                ][pick(5)],
            },
            5 => EventKind::ConnectAccepted,
            6 => EventKind::Disconnected {
                cause: [
                    DisconnectCause::Client,
                    DisconnectCause::KeepAliveTimeout,
                    DisconnectCause::ConnectionLost,
                    DisconnectCause::TakenOver,
                    DisconnectCause::Server,
                    DisconnectCause::Shutdown,
                ][pick(6)],
                connected_ms: u64::from(d.u32().unwrap_or(0)),
            },
            7 => EventKind::ProtocolError {
                fault: [
                    ProtocolFault::MalformedPacket,
                    ProtocolFault::ProtocolViolation,
                    ProtocolFault::PacketTooLarge,
                    ProtocolFault::FlowControl,
                    ProtocolFault::BadFirstPacket,
                    ProtocolFault::Other,
                ][pick(6)],
            },
            8 => EventKind::AuthorizationDenied {
                action: [Action::Publish, Action::Subscribe, Action::Receive][pick(3)],
                topic: topic.as_str(),
            },
            9 => EventKind::Subscribed { filter },
            10 => EventKind::FirstTopic {
                topic,
                side: if who & 1 == 0 {
                    Side::Publish
                } else {
                    Side::Receive
                },
            },
            11 => EventKind::HoneyTouch {
                topic: topic.as_str(),
            },
            12 | 13 => {
                let msgs = d.u32().unwrap_or(0) % 1_000_000;
                let bytes = u64::from(d.u32().unwrap_or(0));
                EventKind::Traffic(TrafficSummary {
                    interval_ms: u32::from(who) * 8,
                    msgs_published: msgs,
                    bytes_published: bytes,
                    msgs_delivered: msgs / 2,
                    bytes_delivered: bytes / 2,
                    held_ms: msgs / 4,
                    size_histogram: [msgs / 8; crate::SIZE_BUCKETS],
                    max_payload: d.u32().unwrap_or(0),
                })
            }
            _ => {
                engine.tick(now, &mut out);
                check(&out);
                out.clear();
                continue;
            }
        };
        engine.observe(
            &Event {
                time_ms: now,
                source,
                kind,
            },
            &mut out,
        );
        check(&out);
        out.clear();
    }
    engine.tick(now + 3_600_000, &mut out);
    check(&out);
    assert!(
        engine.device_count() <= 16,
        "devices {}",
        engine.device_count()
    );
    assert!(
        engine.address_count() <= 16,
        "addresses {}",
        engine.address_count()
    );
    assert!(engine.group_count() <= 4, "groups {}", engine.group_count());
}

fn check(out: &[Output]) {
    for o in out {
        if let Output::Alert(a) = o {
            assert!(!a.explanation.feature.is_empty(), "{a:?}");
            assert!(a.explanation.observed.is_finite(), "{a:?}");
            assert!(a.explanation.threshold.is_finite(), "{a:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn arbitrary_event_streams_keep_the_engine_within_its_limits(
            data in proptest::collection::vec(any::<u8>(), 0..4096)
        ) {
            super::events(&data);
        }

        #[test]
        fn arbitrary_configuration_text_never_panics(text in "\\PC{0,200}") {
            super::config(text.as_bytes());
        }
    }

    #[test]
    fn a_valid_configuration_starts() {
        super::config(b"mode = \"dry_run\"\n[thresholds]\nflood_ratio = 5.0\n");
    }
}
