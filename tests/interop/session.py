#!/usr/bin/env python3
"""Sessions: clean start, session expiry, session present, assigned client identifiers.

MQTT 5.0: 3.1.2.4 Clean Start, 3.1.2.11.2 Session Expiry Interval, 3.2.2.1.1 Session Present,
3.14.2.2.2 Session Expiry Interval on DISCONNECT, 3.2.2.3.7 Assigned Client Identifier,
4.1 Session State. MQTT 3.1.1: 3.1.2.4 Clean Session, 3.1.3.1 (empty client id), 3.2.2.2.

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py): passes.
"""

import time

from mqtt_interop import (Failure, PahoClient, PacketTypes, RawClient, check, props, run,
                          step, unique)


def v5(args):
    dev = args.device_ids[0]
    base = f"devices/{dev}/{unique('sess')}"

    step("v5: clean start with expiry 300 -> no session present")
    c = PahoClient(args, device=dev)
    c.connect(clean_start=True, session_expiry=300)
    check(not c.session_present(), "Session Present=1 after Clean Start=1 (MQTT-3.2.2-2)")
    c.subscribe(f"{base}/#", qos=1)
    c.disconnect()

    step("v5: resume -> session present, subscription kept, message queued while offline delivered")
    anon = PahoClient(args, transport="plain")
    anon.connect()
    anon.publish(f"{base}/offline", b"queued", qos=1)
    c = PahoClient(args, device=dev)
    c.connect(clean_start=False, session_expiry=300)
    check(c.session_present(), "Session Present=0 when resuming a session with expiry 300 (MQTT-3.2.2-3)")
    m = c.expect_message(f"{base}/offline", what="QoS 1 message queued while offline")
    check(m.payload == b"queued", f"queued payload {m.payload!r}")
    c.publish(f"{base}/live", b"live", qos=1)
    c.expect_message(f"{base}/live", what="subscription kept across reconnect")
    c.disconnect()

    step("v5: clean start discards the session")
    c = PahoClient(args, device=dev)
    c.connect(clean_start=True, session_expiry=300)
    check(not c.session_present(), "Session Present=1 after Clean Start=1 (MQTT-3.2.2-2)")
    c.publish(f"{base}/after-clean", b"x", qos=1)
    c.expect_no_message(what="old subscription must be gone after Clean Start=1 (MQTT-3.1.2-4)")

    step("v5: DISCONNECT with Session Expiry Interval 0 ends the session")
    c.subscribe(f"{base}/#", qos=1)
    c.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    c = PahoClient(args, device=dev)
    c.connect(clean_start=False, session_expiry=300)
    check(not c.session_present(),
          "Session Present=1 although the last DISCONNECT set Session Expiry Interval 0 (MQTT 5.0 3.14.2.2.2)")
    c.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))

    step("v5: no Session Expiry Interval (0) -> session ends with the connection")
    c = PahoClient(args, device=dev)
    c.connect(clean_start=False)
    c.subscribe(f"{base}/#", qos=1)
    c.disconnect()
    c = PahoClient(args, device=dev)
    c.connect(clean_start=False, session_expiry=300)
    check(not c.session_present(), "session with expiry 0 survived the disconnect (MQTT-3.1.2-23 inverse)")
    c.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))

    step("v5: session expires after its interval (2 s)")
    c = PahoClient(args, device=dev)
    c.connect(clean_start=True, session_expiry=2)
    c.subscribe(f"{base}/#", qos=1)
    c.disconnect()
    # The passage of time is what is under test here, not a synchronisation.
    time.sleep(3.5)
    c = PahoClient(args, device=dev)
    c.connect(clean_start=False, session_expiry=300)
    check(not c.session_present(), "session still present 3.5 s after a 2 s Session Expiry Interval")
    c.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    anon.disconnect()

    step("v5: empty client id -> Assigned Client Identifier (anonymous plaintext listener)")
    raw = RawClient(args, transport="plain", version=5)
    sp, _, cprops = raw.connect("", clean_start=True)
    assigned = cprops.get("AssignedClientIdentifier")
    check(bool(assigned), f"CONNACK has no Assigned Client Identifier for an empty client id "
                          f"(MQTT-3.2.2-16); properties {cprops}")
    raw.disconnect()


def v311(args):
    dev = args.device_ids[1]
    base = f"devices/{dev}/{unique('sess')}"

    step("3.1.1: clean session 1 then 0 -> session present 0")
    c = PahoClient(args, device=dev, protocol=4, clean_session=True)
    c.connect()
    c.disconnect()
    c = PahoClient(args, device=dev, protocol=4, clean_session=False)
    c.connect()
    check(not c.session_present(), "3.1.1: Session Present=1 although the last session was clean")
    c.subscribe(f"{base}/#", qos=1)
    c.disconnect()

    step("3.1.1: QoS 1 message queued while offline; resume -> session present 1")
    anon = PahoClient(args, transport="plain", protocol=4)
    anon.connect()
    anon.publish(f"{base}/offline", b"queued311", qos=1)
    anon.disconnect()
    c = PahoClient(args, device=dev, protocol=4, clean_session=False)
    c.connect()
    check(c.session_present(), "3.1.1: Session Present=0 when resuming a persistent session (MQTT-3.2.2-2)")
    m = c.expect_message(f"{base}/offline", what="3.1.1 queued message")
    check(m.payload == b"queued311", f"payload {m.payload!r}")
    c.disconnect()

    step("3.1.1: clean session 1 discards it")
    c = PahoClient(args, device=dev, protocol=4, clean_session=True)
    c.connect()
    check(not c.session_present(), "3.1.1: Session Present=1 with Clean Session=1 (MQTT-3.2.2-1)")
    c.publish(f"{base}/x", b"x", qos=1)
    c.expect_no_message(what="3.1.1 subscription must be gone after Clean Session=1")
    c.disconnect()

    step("3.1.1: empty client id: accepted with clean session 1, return code 2 with clean session 0")
    raw = RawClient(args, transport="plain", version=4)
    raw.connect("", clean_start=True)
    raw.disconnect()
    raw = RawClient(args, transport="plain", version=4)
    raw.connect("", clean_start=False, expect_reason=0x02)  # MQTT-3.1.3-8
    reason = raw.expect_closed()
    check(reason is None, "3.1.1 has no DISCONNECT from the server")


def main(args):
    v5(args)
    v311(args)


if __name__ == "__main__":
    run(main, __doc__)
