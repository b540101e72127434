//! Prometheus text exposition of the hub's counters. The catalogue is fixed; labels are
//! bounded enums (no per-device or per-topic labels).

use moat_broker::Broker;
use moat_net::{HandshakeFailure, NetStats};
use std::fmt::Write;
use std::sync::atomic::Ordering;

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Renders every metric in the Prometheus text format (version 0.0.4).
pub fn render(
    broker: &Broker,
    net: &NetStats,
    audit_dropped: u64,
    audit_suppressed: u64,
) -> String {
    let s = broker.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::with_capacity(4096);
    metric(
        &mut out,
        "moat_connections_accepted_total",
        "counter",
        "TCP connections accepted.",
        load(&net.accepted),
    );
    metric(
        &mut out,
        "moat_connections_open",
        "gauge",
        "Connections currently open.",
        load(&net.open),
    );
    metric(
        &mut out,
        "moat_sessions",
        "gauge",
        "Sessions held, connected or not.",
        broker.session_count() as u64,
    );
    metric(
        &mut out,
        "moat_subscriptions",
        "gauge",
        "Subscriptions held.",
        broker.subscription_count() as u64,
    );
    metric(
        &mut out,
        "moat_retained_messages",
        "gauge",
        "Retained messages held.",
        broker.retained_count() as u64,
    );
    metric(
        &mut out,
        "moat_mqtt_connects_total",
        "counter",
        "CONNECTs accepted.",
        load(&s.connects),
    );
    metric(
        &mut out,
        "moat_mqtt_connects_denied_total",
        "counter",
        "CONNECTs refused as not authorized.",
        load(&s.connect_denied),
    );
    metric(
        &mut out,
        "moat_mqtt_takeovers_total",
        "counter",
        "Session takeovers.",
        load(&s.takeovers),
    );
    metric(
        &mut out,
        "moat_messages_in_total",
        "counter",
        "Messages accepted for routing.",
        load(&s.messages_in),
    );
    metric(
        &mut out,
        "moat_messages_out_total",
        "counter",
        "PUBLISH packets sent to clients.",
        load(&s.messages_out),
    );
    metric(
        &mut out,
        "moat_bytes_in_total",
        "counter",
        "Bytes read from clients.",
        load(&net.bytes_in),
    );
    metric(
        &mut out,
        "moat_bytes_out_total",
        "counter",
        "Bytes written to clients.",
        load(&net.bytes_out),
    );
    metric(
        &mut out,
        "moat_publish_denied_total",
        "counter",
        "Publishes refused by policy.",
        load(&s.publish_denied),
    );
    metric(
        &mut out,
        "moat_subscribe_denied_total",
        "counter",
        "Subscriptions refused by policy.",
        load(&s.subscribe_denied),
    );
    metric(
        &mut out,
        "moat_receive_denied_total",
        "counter",
        "Deliveries withheld because the subscriber's policy does not allow receiving the topic.",
        load(&s.receive_denied),
    );
    metric(
        &mut out,
        "moat_subscriptions_revoked_total",
        "counter",
        "Live subscriptions removed because a policy change no longer allows them.",
        load(&s.subscriptions_revoked),
    );
    metric(
        &mut out,
        "moat_audit_dropped_total",
        "counter",
        "Security events not written to the audit trail because its queue was full.",
        audit_dropped,
    );
    metric(
        &mut out,
        "moat_audit_suppressed_total",
        "counter",
        "Security events beyond their source's per-minute audit allowance (unauthenticated addresses, devices, operators): counted, not written.",
        audit_suppressed,
    );
    metric(
        &mut out,
        "moat_wills_published_total",
        "counter",
        "Will messages published.",
        load(&s.wills),
    );
    metric(
        &mut out,
        "moat_sessions_expired_total",
        "counter",
        "Sessions removed at expiry.",
        load(&s.sessions_expired),
    );
    metric(
        &mut out,
        "moat_protocol_errors_total",
        "counter",
        "Connections closed for a protocol violation.",
        load(&net.protocol_errors),
    );
    metric(
        &mut out,
        "moat_keep_alive_timeouts_total",
        "counter",
        "Connections closed by keep alive.",
        load(&net.keep_alive_timeouts),
    );
    let _ = writeln!(
        out,
        "# HELP moat_messages_dropped_total Messages dropped, by reason.\n# TYPE moat_messages_dropped_total counter"
    );
    for (reason, c) in [
        ("queue_full", &s.dropped_queue_full),
        ("expired", &s.dropped_expired),
        ("too_large", &s.dropped_too_large),
        ("retained_full", &s.retained_dropped),
    ] {
        let _ = writeln!(
            out,
            "moat_messages_dropped_total{{reason=\"{reason}\"}} {}",
            load(c)
        );
    }
    let _ = writeln!(
        out,
        "# HELP moat_quota_exceeded_total Times a device hit a policy quota, by limit: throttling episodes for the rates, refusals for the others.\n# TYPE moat_quota_exceeded_total counter"
    );
    for limit in moat_types::QuotaLimit::ALL {
        let _ = writeln!(
            out,
            "moat_quota_exceeded_total{{limit=\"{limit}\"}} {}",
            load(&s.quota_exceeded[limit.index()])
        );
    }
    let _ = writeln!(
        out,
        "# HELP moat_quota_held_seconds_total Time connections were held unread by a rate quota or a detection throttle with packets waiting (their clients offered more than allowed).\n# TYPE moat_quota_held_seconds_total counter\nmoat_quota_held_seconds_total {}",
        load(&s.quota_held_ms) as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "# HELP moat_handshake_failures_total Connections that failed before MQTT began, by reason.\n# TYPE moat_handshake_failures_total counter"
    );
    for why in HandshakeFailure::ALL {
        let _ = writeln!(
            out,
            "moat_handshake_failures_total{{reason=\"{}\"}} {}",
            why.label(),
            net.failures(why)
        );
    }
    let _ = writeln!(
        out,
        "# HELP moat_shield_refused_total Connections closed at accept by the pre-authentication shield, before TLS, by reason.\n# TYPE moat_shield_refused_total counter"
    );
    for why in moat_net::Refusal::ALL {
        let _ = writeln!(
            out,
            "moat_shield_refused_total{{reason=\"{}\"}} {}",
            why.label(),
            net.refusals(why)
        );
    }
    metric(
        &mut out,
        "moat_auto_bans_total",
        "counter",
        "Automatic bans issued after repeated authentication failures (by address or by device).",
        load(&net.auto_bans),
    );
    out
}
