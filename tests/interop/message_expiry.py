#!/usr/bin/env python3
"""Message expiry: queued and retained messages expire; the remaining lifetime is forwarded.

MQTT 5.0 3.3.2.3.3 Message Expiry Interval: MQTT-3.3.2-5 (an expired message is not delivered
to a subscriber that was offline), MQTT-3.3.2-6 (the forwarded interval is the received value
minus the time the message waited in the server); 4.1 / 3.3.1.3 (a retained message expires
too).

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py): passes.
"""

import time

from mqtt_interop import PacketTypes, PahoClient, check, props, run, step, unique


def expiry(seconds):
    return props(PacketTypes.PUBLISH, MessageExpiryInterval=seconds)


def main(args):
    dev = args.device_ids[0]
    base = f"devices/{dev}/{unique('exp')}"

    step("live delivery carries the Message Expiry Interval")
    # Acknowledged by hand: paho's own PUBACK, sent after the message callback, could leave
    # after the DISCONNECT below, and the hub would then rightly send the message again on
    # reconnect (MQTT-4.4.0-1). Acknowledging from this thread orders the PUBACK first.
    sub = PahoClient(args, device=dev, manual_ack=True)
    sub.connect(clean_start=True, session_expiry=300)
    sub.subscribe(f"{base}/q/#", qos=1)
    pub = PahoClient(args, transport="plain")
    pub.connect()
    pub.publish(f"{base}/q/live", b"live", qos=1, properties=expiry(60))
    m = sub.expect_message(f"{base}/q/live")
    e = getattr(m.properties, "MessageExpiryInterval", None)
    check(e is not None and 0 < e <= 60, f"live Message Expiry Interval {e}, expected 1..60")
    sub.ack(m)
    sub.disconnect()

    step("while the subscriber is offline: messages with expiry 1 s, 100 s and none; a retained one with 1 s")
    pub.publish(f"{base}/q/short", b"short", qos=1, properties=expiry(1))
    pub.publish(f"{base}/q/long", b"long", qos=1, properties=expiry(100))
    pub.publish(f"{base}/q/none", b"none", qos=1)
    pub.publish(f"{base}/retained", b"fleeting", qos=1, retain=True, properties=expiry(1))
    queued_at = time.monotonic()
    # Letting time pass is what is under test, not a synchronisation.
    time.sleep(2.5)

    step("reconnect: the expired message is gone, the others arrive with the remaining lifetime")
    sub = PahoClient(args, device=dev)
    sub.connect(clean_start=False, session_expiry=300)
    check(sub.session_present(), "session not present")
    got = {}
    for _ in range(2):
        m = sub.expect_message()
        got[m.topic.rsplit("/", 1)[1]] = m
    sub.expect_no_message(what="the 1 s message must have expired while queued (MQTT-3.3.2-5)")
    check(set(got) == {"long", "none"}, f"delivered {sorted(got)}, expected long and none (short expired)")
    waited = int(time.monotonic() - queued_at)
    e = getattr(got["long"].properties, "MessageExpiryInterval", None)
    check(e is not None and e <= 100 - 2,
          f"Message Expiry Interval {e} after waiting {waited}s; must be the received 100 minus the "
          f"time spent in the server (MQTT-3.3.2-6)")
    check(getattr(got["none"].properties, "MessageExpiryInterval", None) is None,
          "a message published without expiry got a Message Expiry Interval")

    step("the retained message with expiry 1 s is gone")
    late = PahoClient(args, transport="plain")
    late.connect()
    late.subscribe(f"{base}/retained", qos=1)
    late.expect_no_message(what="expired retained message delivered to a new subscriber")
    late.disconnect()
    sub.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    pub.disconnect()


if __name__ == "__main__":
    run(main, __doc__)
