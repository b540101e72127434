#!/usr/bin/env python3
"""Session takeover: a second connection with the same client id replaces the first.

MQTT 5.0 3.1.4 (MQTT-3.1.4-3: the existing connection gets DISCONNECT 0x8E Session taken over
and is closed), 4.13; the session continues on the new connection when it does not ask for a
clean start; the old connection's will is published on takeover unless delayed (3.1.3.2.2).
MQTT 3.1.1 3.1.4 (MQTT-3.1.4-2: the existing connection is closed).

Both connections are the same device over mutual TLS (client id = device id).

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py): passes, except that
Mosquitto closes the old connection without sending DISCONNECT 0x8E (skipped there as a known
deviation; Moat must send it).
"""

from mqtt_interop import PahoClient, RawClient, check, known_deviation, run, step, unique


def v5(args):
    dev = args.device_ids[0]
    base = f"devices/{dev}/{unique('takeover')}"
    step("v5: second connection with the same client id: the first gets DISCONNECT 0x8E")
    a = RawClient(args, device=dev, label="first")
    a.connect(dev, clean_start=True, properties=[("SessionExpiryInterval", 300)])
    check(a.subscribe([(f"{base}/#", 1)]) == [1], "SUBACK")
    b = PahoClient(args, device=dev)
    b.connect(clean_start=False, session_expiry=300)
    reason = a.expect_closed()
    if reason is None and known_deviation(args, "Mosquitto 2.0.11 closes the old connection without DISCONNECT 0x8E"):
        pass
    else:
        check(reason == 0x8E, f"old connection ended with DISCONNECT reason {reason!r}, expected 0x8E "
                              f"Session taken over (MQTT-3.1.4-3)")
    check(b.session_present(), "the session did not continue on the new connection")
    step("v5: the subscription made on the first connection delivers on the second")
    b.publish(f"{base}/x", b"after takeover", qos=1)
    m = b.expect_message(f"{base}/x")
    check(m.payload == b"after takeover", f"payload {m.payload!r}")

    step("v5: takeover publishes the old connection's will (no will delay)")
    obs = PahoClient(args, transport="plain")
    obs.connect()
    obs.subscribe(f"{base}/will", qos=1)
    b.disconnect()
    c = RawClient(args, device=dev, label="with-will")
    c.connect(dev, will=(f"{base}/will", b"taken over", 1, False, []))
    d = PahoClient(args, device=dev)
    d.connect()
    reason = c.expect_closed()
    if not (reason is None and known_deviation(args, "no DISCONNECT 0x8E from Mosquitto 2.0.11")):
        check(reason == 0x8E, f"old connection ended with DISCONNECT reason {reason!r}, expected 0x8E")
    m = obs.expect_message(f"{base}/will", what="will of the taken-over connection")
    check(m.payload == b"taken over", f"will payload {m.payload!r}")
    d.disconnect()
    obs.disconnect()


def v311(args):
    dev = args.device_ids[1]
    step("3.1.1: second connection with the same client id closes the first (MQTT-3.1.4-2)")
    a = RawClient(args, device=dev, version=4, label="first311")
    a.connect(dev)
    b = PahoClient(args, device=dev, protocol=4)
    b.connect()
    reason = a.expect_closed()
    check(reason is None, "a 3.1.1 server sent a DISCONNECT packet (3.1.1 has none from the server)")
    b.publish(f"devices/{dev}/x", b"still works", qos=1)
    b.disconnect()


def main(args):
    v5(args)
    v311(args)


if __name__ == "__main__":
    run(main, __doc__)
