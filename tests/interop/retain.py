#!/usr/bin/env python3
"""Retained messages: retain handling 0/1/2, retain as published, deletion, QoS of retained.

MQTT 5.0: 3.3.1.3 RETAIN (MQTT-3.3.1-5..13), 3.8.3.1 Subscription Options (Retain Handling,
Retain As Published). MQTT 3.1.1: 3.3.1.3 (RETAIN=1 only for messages sent because of a new
subscription, MQTT-3.3.1-9 in 3.1.1).

The device publishes retained messages into its own namespace over mutual TLS; subscribers
are the device itself and anonymous clients on the plaintext listener.

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py): passes.
"""

from mqtt_interop import PahoClient, SubscribeOptions, check, run, step, unique


def opts(qos=1, rh=0, rap=False):
    return SubscribeOptions(qos=qos, retainHandling=rh, retainAsPublished=rap)


def v5(args):
    dev = args.device_ids[0]
    base = f"devices/{dev}/{unique('ret')}"
    topic = f"{base}/state"
    owner = PahoClient(args, device=dev)
    owner.connect()
    step("v5: retained message stored; retain handling 0 sends it at every subscribe")
    owner.publish(topic, b"r1", qos=1, retain=True)
    s = PahoClient(args, transport="plain")
    s.connect()
    s.subscribe(topic, qos=opts(rh=0))
    m = s.expect_message(topic, what="retained message on subscribe")
    check(m.retain, "retained message sent because of a new subscription has RETAIN=0 (MQTT-3.3.1-9)")
    check(m.payload == b"r1", f"retained payload {m.payload!r}")
    s.subscribe(topic, qos=opts(rh=0))
    m = s.expect_message(topic, what="retain handling 0: retained message again on re-subscribe (MQTT-3.3.1-9)")
    check(m.retain and m.payload == b"r1", f"re-subscribe delivery {m.payload!r} retain={m.retain}")

    step("v5: retain handling 1 sends it only if the subscription did not exist")
    f1 = f"{base}/+"
    s.subscribe(f1, qos=opts(rh=1))
    m = s.expect_message(topic, what="retain handling 1, new subscription")
    check(m.retain, "RETAIN=0 on a retained message for a new subscription")
    s.subscribe(f1, qos=opts(rh=1))
    s.expect_no_message(what="retain handling 1 on an existing subscription (MQTT-3.3.1-10)")
    s.unsubscribe(f1)
    s.unsubscribe(topic)

    step("v5: retain handling 2 never sends retained messages")
    s.subscribe(f"{base}/#", qos=opts(rh=2))
    s.expect_no_message(what="retain handling 2 (MQTT-3.3.1-11)")
    s.disconnect()

    step("v5: retain as published 0 clears RETAIN on live delivery, 1 keeps it")
    plain = PahoClient(args, transport="plain")
    plain.connect()
    plain.subscribe(topic, qos=opts(rh=2, rap=False))
    rap = PahoClient(args, transport="plain")
    rap.connect()
    rap.subscribe(topic, qos=opts(rh=2, rap=True))
    owner.publish(topic, b"r2", qos=1, retain=True)
    m = plain.expect_message(topic)
    check(not m.retain, "live delivery with Retain As Published 0 has RETAIN=1 (MQTT-3.3.1-12)")
    m = rap.expect_message(topic)
    check(m.retain, "live delivery with Retain As Published 1 has RETAIN=0 (MQTT-3.3.1-13)")
    owner.publish(topic, b"live", qos=1, retain=False)
    m = rap.expect_message(topic)
    check(not m.retain, "non-retained publish delivered with RETAIN=1")
    plain.expect_message(topic)

    step("v5: the newest retained message replaces the old one; QoS is min(retained, subscription)")
    late = PahoClient(args, transport="plain")
    late.connect()
    late.subscribe(topic, qos=opts(qos=0))
    m = late.expect_message(topic)
    check(m.payload == b"r2", f"retained message not replaced: got {m.payload!r} (MQTT-3.3.1-5)")
    check(m.qos == 0, f"retained QoS 1 message on a QoS 0 subscription delivered at QoS {m.qos}")
    late.disconnect()

    step("v5: empty retained payload deletes the retained message")
    owner.publish(topic, b"", qos=1, retain=True)
    plain.expect_message(topic, what="the deleting publish itself is forwarded")
    gone = PahoClient(args, transport="plain")
    gone.connect()
    gone.subscribe(f"{base}/#", qos=1)
    gone.expect_no_message(what="retained message still there after an empty retained publish (MQTT-3.3.1-6/7)")
    for c in (gone, plain, rap, owner):
        c.disconnect()


def v311(args):
    dev = args.device_ids[1]
    topic = f"devices/{dev}/{unique('ret')}/state"
    step("3.1.1: retained message delivered with RETAIN=1 on subscribe, RETAIN=0 live")
    owner = PahoClient(args, device=dev, protocol=4)
    owner.connect()
    owner.publish(topic, b"old", qos=1, retain=True)
    s = PahoClient(args, transport="plain", protocol=4)
    s.connect()
    s.subscribe(topic, qos=1)
    m = s.expect_message(topic)
    check(m.retain and m.payload == b"old", f"3.1.1 retained delivery {m.payload!r} retain={m.retain}")
    owner.publish(topic, b"new", qos=1, retain=True)
    m = s.expect_message(topic)
    check(not m.retain, "3.1.1: live delivery to an established subscription has RETAIN=1 (MQTT-3.3.1-9)")
    owner.publish(topic, b"", qos=1, retain=True)
    s.expect_message(topic)
    s.disconnect()
    owner.disconnect()


def main(args):
    v5(args)
    v311(args)


if __name__ == "__main__":
    run(main, __doc__)
