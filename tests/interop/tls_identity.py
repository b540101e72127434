#!/usr/bin/env python3
"""Mutual TLS 1.2 and 1.3, and the identity rule, seen from paho-mqtt.

Moat issue 2, points 4 and 7: TLS 1.3 and 1.2; the client certificate is required and verified;
the MQTT client id must equal the device id (else CONNACK 0x87 Not authorized, MQTT 5.0
3.2.2.2); a device publishes and subscribes only under devices/{id}/# (SUBACK 0x87, PUBACK 0x87
for a denied QoS 1 publish, MQTT 5.0 3.9.3 / 3.4.2.1; a denied QoS 0 publish is dropped).
(No client certificate and a certificate from another CA are tested with mosquitto_pub in
crates/moat/tests/interop_mosquitto.rs.)

Moat-only (skipped with --reference mosquitto): client id must equal the device id (Mosquitto
has no such rule); SUBACK 0x87/0x80 for a foreign filter (Mosquitto grants every subscription
and applies its ACL to each message instead, which the script checks in both cases).

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py) set up with
use_identity_as_username and `pattern readwrite devices/%u/#`: passes with the Moat-only step
skipped.
"""

import ssl

from mqtt_interop import PahoClient, check, known_deviation, run, step, unique


def main(args):
    dev, other = args.device_ids[0], args.device_ids[1]
    for version, name in ((ssl.TLSVersion.TLSv1_3, "1.3"), (ssl.TLSVersion.TLSv1_2, "1.2")):
        step(f"TLS {name} with a client certificate")
        c = PahoClient(args, device=dev, tls_version=version)
        c.connect()
        negotiated = c.c.socket().version()
        check(negotiated == f"TLSv{name}", f"negotiated {negotiated}, expected TLSv{name}")
        t = f"devices/{dev}/{unique('tls')}"
        c.subscribe(t, qos=1)
        c.publish(t, b"hello", qos=1)
        c.expect_message(t)
        c.disconnect()

    step("own namespace allowed, foreign namespace denied (v5 reason codes)")
    c = PahoClient(args, device=dev)
    c.connect()
    mine = f"devices/{dev}/{unique('id')}"
    theirs = f"devices/{other}/{unique('id')}"
    check(c.subscribe(mine, qos=1) == [1], "subscription in the device's own namespace refused")
    if not known_deviation(args, "Mosquitto grants any subscription and applies the ACL per message"):
        check(c.subscribe(theirs, qos=1) == [0x87], f"subscription to {theirs} not refused with 0x87")
        check(c.subscribe("devices/#", qos=1) == [0x87], "subscription to devices/# not refused with 0x87")
        check(c.subscribe("#", qos=1) == [0x87], "subscription to # not refused with 0x87")
        c4 = PahoClient(args, device=other, protocol=4)
        c4.connect()
        check(c4.subscribe(f"devices/{dev}/#", qos=1) == [0x80], "3.1.1: foreign subscription not refused with 0x80")
        c4.disconnect()
    else:
        c.subscribe(theirs, qos=1)
    step("messages published in another device's namespace never reach this device")
    intruder = PahoClient(args, transport="plain")
    intruder.connect()
    intruder.publish(theirs, b"not for dev", qos=1)
    intruder.publish(mine, b"for dev", qos=1)
    m = c.expect_message(mine, what="message in the device's own namespace")
    c.expect_no_message(what="message from a foreign namespace delivered to the device")
    intruder.disconnect()
    c.publish(theirs, b"nope", qos=1, expect_rc=0x87)
    c.publish(theirs, b"nope", qos=0)
    obs = PahoClient(args, transport="plain")
    obs.connect()
    obs.subscribe(f"devices/{other}/#", qos=1)
    c.publish(theirs, b"nope0", qos=0)
    c.publish(theirs, b"nope1", qos=1, expect_rc=0x87)
    c.publish(mine, b"mine", qos=1)
    c.expect_message(mine, what="own message still delivered after denials")
    obs.expect_no_message(what="a denied publish reached a subscriber of the foreign namespace")
    c.disconnect()
    obs.disconnect()

    step("client id different from the device id -> CONNACK 0x87 (Moat-only)")
    if not known_deviation(args, "Mosquitto does not tie the client id to the certificate"):
        for client_id in (other, f"{dev}-x"):
            c = PahoClient(args, device=dev, client_id=client_id)
            _, rc, _ = c.connect(expect_rc=None)
            check(rc.value == 0x87, f"client id {client_id!r} with {dev}'s certificate: CONNACK {rc.value:#04x}, "
                                    f"expected 0x87 Not authorized")
            c.stop()
        c = PahoClient(args, device=dev, client_id=other, protocol=4)
        _, rc, _ = c.connect(expect_rc=None)
        check(rc.is_failure, f"3.1.1: client id {other!r} with {dev}'s certificate accepted")
        c.stop()

    step("empty client id with a device certificate -> the hub assigns the device id (Moat-only)")
    if not known_deviation(args, "Mosquitto assigns a random client id"):
        # MQTT-3.1.3-6 lets the server choose the identifier; for a device the only
        # identifier the identity rule accepts is its device id, so that is the one assigned.
        c = PahoClient(args, device=dev, client_id="")
        _, rc, props = c.connect(expect_rc=None)
        check(rc.value == 0x00, f"empty client id with {dev}'s certificate: CONNACK {rc.value:#04x}")
        assigned = getattr(props, "AssignedClientIdentifier", None)
        check(assigned == dev, f"assigned client identifier {assigned!r}, expected {dev!r}")
        c.disconnect()


if __name__ == "__main__":
    run(main, __doc__)
