//! MQTT 3.1.1 and 5.0 features exercised by paho-mqtt 2.x (Python) against the real hub:
//! one test per script in `tests/interop/` (each script names the spec sections it checks).
//! Every test starts its own hub with mutual TLS, WSS and the anonymous plaintext listener,
//! issues dev1..dev3 and runs the script; a failure shows the script's output and the hub's log.
//!
//! Needs python3 with paho-mqtt 2.x (`.ci/run` installs it).

mod support;

use support::run_interop_script;

#[test]
fn session_clean_start_expiry_and_present() {
    run_interop_script("session.py");
}

#[test]
fn qos_0_1_2_end_to_end_redelivery_and_exactly_once() {
    run_interop_script("qos.py");
}

#[test]
fn retained_messages_and_retain_handling() {
    run_interop_script("retain.py");
}

#[test]
fn no_local_subscription_identifiers_and_overlaps() {
    run_interop_script("subscription_options.py");
}

#[test]
fn shared_subscriptions_spread_across_members() {
    run_interop_script("shared_subscriptions.py");
}

#[test]
fn will_messages_and_will_delay() {
    run_interop_script("will.py");
}

#[test]
fn message_expiry_of_queued_and_retained_messages() {
    run_interop_script("message_expiry.py");
}

#[test]
fn topic_aliases_both_directions() {
    run_interop_script("topic_alias.py");
}

#[test]
fn request_response_and_user_properties_pass_through() {
    run_interop_script("request_response.py");
}

#[test]
fn receive_maximum_packet_size_and_server_keep_alive() {
    run_interop_script("flow_control.py");
}

#[test]
fn session_takeover_disconnects_the_old_connection() {
    run_interop_script("session_takeover.py");
}

#[test]
fn dollar_topics_not_matched_by_leading_wildcards() {
    run_interop_script("dollar_topics.py");
}

#[test]
fn tls_versions_and_identity_rule() {
    run_interop_script("tls_identity.py");
}

#[test]
fn mqtt_over_secure_websocket() {
    run_interop_script("websocket.py");
}

#[test]
fn namespace_rule_cannot_be_sidestepped() {
    run_interop_script("authorization_bypass.py");
}
