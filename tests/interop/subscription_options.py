#!/usr/bin/env python3
"""No Local, subscription identifiers and overlapping subscriptions.

MQTT 5.0: 3.8.3.1 No Local (MQTT-3.8.3-3), 3.8.2.1.2 Subscription Identifier, 3.3.4 (overlapping
subscriptions: one copy carrying every matching Subscription Identifier and the maximum QoS,
MQTT-3.3.4-2/-4, or one copy per subscription each with its own identifier, MQTT-3.3.4-5),
3.8.4 (a SUBSCRIBE for an existing filter replaces it, including its identifier, MQTT-3.8.4-3).

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py): every step passes
(Mosquitto sends one copy per matching subscription) except the last, replace_options:
Mosquitto keeps No Local=1 when the same filter is subscribed again with No Local=0, although
MQTT-3.8.4-3 says the new subscription replaces the old one. The step is right per the
standard and stays (skipped with --reference mosquitto); Moat must pass it.
"""

from mqtt_interop import (QUIET, PacketTypes, PahoClient, SubscribeOptions, check,
                          known_deviation, props, run, step, unique)


def sub_ids(msg):
    p = msg.properties
    return sorted(getattr(p, "SubscriptionIdentifier", []) or []) if p is not None else []


def drain(client, first_topic):
    """The first message on first_topic, then whatever else arrives within QUIET."""
    msgs = [client.expect_message(first_topic)]
    while True:
        try:
            msgs.append(client.messages.get(timeout=QUIET))
        except Exception:
            return msgs


def no_local(args):
    dev = args.device_ids[0]
    base = f"devices/{dev}/{unique('nl')}"
    step("No Local: own messages not delivered back on a No Local subscription")
    c = PahoClient(args, device=dev)
    c.connect()
    c.subscribe(f"{base}/#", qos=SubscribeOptions(qos=1, noLocal=True))
    other = PahoClient(args, transport="plain")
    other.connect()
    other.subscribe(f"{base}/#", qos=1)
    c.publish(f"{base}/a", b"mine", qos=1)
    other.expect_message(f"{base}/a", what="other subscribers still get it")
    c.expect_no_message(what="No Local subscription got the client's own message (MQTT-3.8.3-3)")
    other.publish(f"{base}/b", b"theirs", qos=1)
    c.expect_message(f"{base}/b", what="No Local does not filter other clients' messages")
    other.expect_message(f"{base}/b")

    step("No Local off: own messages delivered back")
    c.subscribe(f"{base}/+", qos=SubscribeOptions(qos=1, noLocal=False))
    c.publish(f"{base}/c", b"mine again", qos=1)
    c.expect_message(f"{base}/c", what="own message on a subscription with No Local 0")
    other.expect_message(f"{base}/c")
    c.expect_no_message(what="only the No Local 0 subscription delivers own messages")
    c.disconnect()
    other.disconnect()


def replace_options(args):
    dev = args.device_ids[0]
    base = f"devices/{dev}/{unique('nl')}"
    step("re-subscribing to the same filter replaces its options (No Local 1 -> 0)")
    if known_deviation(args, "Mosquitto 2.0.11 keeps No Local=1 after re-subscribing with No Local=0"):
        return
    c = PahoClient(args, device=dev)
    c.connect()
    c.subscribe(f"{base}/#", qos=SubscribeOptions(qos=1, noLocal=True))
    c.publish(f"{base}/a", b"mine", qos=1)
    c.expect_no_message(what="No Local subscription got the client's own message (MQTT-3.8.3-3)")
    c.subscribe(f"{base}/#", qos=SubscribeOptions(qos=1, noLocal=False))
    c.publish(f"{base}/b", b"mine again", qos=1)
    c.expect_message(f"{base}/b", what="own message after the subscription was replaced with "
                                        "No Local 0 (MQTT-3.8.4-3: the new subscription replaces the old)")
    c.disconnect()


def identifiers(args):
    base = f"sid/{unique()}"
    step("CONNACK: Subscription Identifier Available is absent or 1")
    c = PahoClient(args, transport="plain")
    c.connect()
    avail = getattr(c.connack_props(), "SubscriptionIdentifierAvailable", 1)
    check(avail == 1, "the server does not offer subscription identifiers")

    step("overlapping subscriptions with identifiers 1 and 2 and one without")
    c.subscribe(f"{base}/#", qos=0, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=1))
    c.subscribe(f"{base}/+/x", qos=2, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=2))
    c.subscribe(f"{base}/y/x", qos=1)
    pub = PahoClient(args, transport="plain")
    pub.connect()
    pub.publish(f"{base}/y/x", b"overlap", qos=2)
    msgs = drain(c, f"{base}/y/x")
    for m in msgs:
        check(m.topic == f"{base}/y/x" and m.payload == b"overlap", f"unexpected message {m.topic} {m.payload!r}")
    if len(msgs) == 1:
        check(sub_ids(msgs[0]) == [1, 2],
              f"single copy must carry identifiers 1 and 2, carries {sub_ids(msgs[0])} (MQTT-3.3.4-4)")
        check(msgs[0].qos == 2, f"single copy must have the maximum granted QoS 2, has {msgs[0].qos} (MQTT-3.3.4-2)")
    else:
        got = sorted((tuple(sub_ids(m)), m.qos) for m in msgs)
        check(got == [((), 1), ((1,), 0), ((2,), 2)],
              f"one copy per subscription must carry its own identifier and QoS; got "
              f"(identifiers, qos) = {got} (MQTT-3.3.4-5)")

    step("a message matching only one subscription carries only its identifier")
    pub.publish(f"{base}/z", b"one", qos=1)
    m = c.expect_message(f"{base}/z")
    check(sub_ids(m) == [1], f"identifiers {sub_ids(m)} on a message matching only subscription 1")
    c.expect_no_message()

    step("re-subscribing replaces the identifier; unsubscribe removes the subscription")
    c.subscribe(f"{base}/#", qos=0, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
    pub.publish(f"{base}/z", b"two", qos=1)
    m = c.expect_message(f"{base}/z")
    check(sub_ids(m) == [7], f"identifiers {sub_ids(m)} after replacing the subscription (MQTT-3.8.4-3)")
    c.unsubscribe(f"{base}/#")
    pub.publish(f"{base}/z", b"three", qos=1)
    c.expect_no_message(what="message after UNSUBSCRIBE")
    c.disconnect()
    pub.disconnect()


def main(args):
    no_local(args)
    identifiers(args)
    replace_options(args)


if __name__ == "__main__":
    run(main, __doc__)
