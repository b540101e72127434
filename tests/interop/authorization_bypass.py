#!/usr/bin/env python3
"""The namespace rule cannot be sidestepped through other MQTT features.

Moat issue 2, point 4: a device publishes and subscribes only under devices/{id}/#. Every other
way of getting a message into a topic or out of one must obey the same rule: will messages
(MQTT 5.0 3.1.2.5; a will is a publish made on the device's behalf), retained wills, topic
aliases (3.3.2.3.4; an alias is just another spelling of a topic), shared subscriptions
(4.8.2; $share/{group}/{filter} subscribes to {filter}), '$' topics, and look-alike ids (dev1
must not reach dev10's namespace). An observer on the anonymous plaintext listener watches the
victim's namespace; at the end a legitimate marker message proves the observer was live.

What the hub answers (CONNACK 0x87, DISCONNECT, SUBACK 0x87, or silently dropping the will) is
left open where the standard allows several; the message must never arrive.

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py) with the ACL
`pattern readwrite devices/%u/#`: passes (Mosquitto grants the subscriptions and filters each
message, which the script also accepts).
"""

from mqtt_interop import (PahoClient, RawClient, SubscribeOptions, check, run, step, unique)


def main(args):
    dev, victim = args.device_ids[0], args.device_ids[1]
    tag = unique("byp")
    victim_ns = f"devices/{victim}/{tag}"
    obs = PahoClient(args, transport="plain")
    obs.connect()
    obs.subscribe(f"devices/{victim}/#", qos=1)
    obs.subscribe(f"$test/{tag}/#", qos=1)

    step("will message aimed at another device's namespace")
    raw = RawClient(args, device=dev)
    sp, reason, _ = raw.connect(dev, will=(f"{victim_ns}/will", b"forged will", 1, True, []),
                                expect_reason=None)
    if reason == 0:
        raw.close()  # abnormal close: the will would fire now
    else:
        check(reason == 0x87, f"CONNACK {reason:#04x} for a foreign will topic (0x87 expected if refused)")

    step("topic alias mapped by a denied publish, then used alone")
    raw = RawClient(args, device=dev)
    raw.connect(dev)
    raw.publish(f"{victim_ns}/alias", b"via alias setup", qos=0, properties=[("TopicAlias", 1)])
    try:
        raw.publish("", b"via alias only", qos=0, properties=[("TopicAlias", 1)])
        raw.publish(f"devices/{dev}/own", b"own", qos=1, packet_id=5)
        raw.expect(4, skip=(3,))  # PUBACK (or the hub disconnected us: also fine)
    except Exception:
        pass
    raw.close()

    step("shared subscription on another device's namespace")
    d = PahoClient(args, device=dev)
    d.connect()
    codes = d.subscribe([(f"$share/g/devices/{victim}/#", SubscribeOptions(qos=1)),
                         (f"$share/g/#", SubscribeOptions(qos=1)),
                         (f"devices/{victim}0/#", SubscribeOptions(qos=1))])
    step(f"SUBACK {[hex(c) for c in codes]}")
    feeder = PahoClient(args, transport="plain")
    feeder.connect()
    feeder.publish(f"{victim_ns}/secret", b"secret", qos=1)
    feeder.publish(f"devices/{victim}0/secret", b"secret10", qos=1)
    step("'$' topic and look-alike namespace publishes from the device")
    d.publish(f"$test/{tag}/x", b"dollar from device", qos=1, expect_rc=None)
    d.publish(f"devices/{victim}0/x", b"look-alike", qos=1, expect_rc=None)
    d.publish(f"Devices/{victim}/{tag}", b"case", qos=1, expect_rc=None)

    step("the device got nothing from the victim's namespace")
    d.expect_no_message(what="a foreign message reached the device through a shared subscription")

    step("the observer of the victim's namespace sees only the legitimate marker")
    owner = PahoClient(args, device=victim)
    owner.connect()
    owner.publish(f"{victim_ns}/marker", b"marker", qos=1)
    seen = []
    while True:
        m = obs.expect_message(what="the legitimate marker message")
        seen.append((m.topic, m.payload))
        if m.payload == b"marker":
            break
    forged = [s for s in seen if s[1] != b"secret"]
    check(forged == [(f"{victim_ns}/marker", b"marker")],
          f"messages forged into {victim}'s namespace or '$test': {forged}")
    obs.expect_no_message(what="forged message after the marker")

    step("no retained message was planted by the forged will")
    late = PahoClient(args, transport="plain")
    late.connect()
    late.subscribe(f"{victim_ns}/#", qos=1)
    late.expect_no_message(what="retained forged will")
    for c in (late, owner, d, feeder, obs):
        c.disconnect()


if __name__ == "__main__":
    run(main, __doc__)
