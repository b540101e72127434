#!/usr/bin/env python3
"""Topics starting with '$' are not matched by filters starting with a wildcard.

MQTT 5.0 4.7.2 (MQTT-4.7.2-1: a filter starting with '#' or '+' does not match a topic name
starting with '$'); a filter that starts with the same '$' level does match. MQTT 3.1.1 4.7.2
says the same. Uses the anonymous plaintext listener, which may publish to `$test/...`.

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py): passes.
"""

from mqtt_interop import PahoClient, check, run, step, unique


def scenario(args, version):
    u = unique()
    dollar = f"$test/{u}/x"
    step(f"v{version}: '#' and '+/...' do not match {dollar}; '$test/#' does")
    wild = PahoClient(args, transport="plain", protocol=version)
    wild.connect()
    wild.subscribe("#", qos=1)
    plus = PahoClient(args, transport="plain", protocol=version)
    plus.connect()
    plus.subscribe(f"+/{u}/x", qos=1)
    exact = PahoClient(args, transport="plain", protocol=version)
    exact.connect()
    exact.subscribe("$test/#", qos=1)
    pub = PahoClient(args, transport="plain", protocol=version)
    pub.connect()
    pub.publish(dollar, b"dollar", qos=1)
    m = exact.expect_message(dollar, what="'$test/#' matches a '$test' topic")
    check(m.payload == b"dollar", f"payload {m.payload!r}")
    # A normal message afterwards proves the wildcard subscribers are live, and since delivery on
    # one connection is in order, seeing it first means the '$' message was not delivered.
    normal = f"normal/{u}/x"
    pub.publish(normal, b"normal", qos=1)
    m = wild.expect_message()
    check(m.topic == normal, f"'#' delivered {m.topic!r} (MQTT-4.7.2-1)")
    m = plus.expect_message()
    check(m.topic == normal, f"'+/...' delivered {m.topic!r} (MQTT-4.7.2-1)")
    for c in (wild, plus):
        c.expect_no_message(what=f"a '$' topic matched by a wildcard-first filter (MQTT-4.7.2-1)")
    for c in (wild, plus, exact, pub):
        c.disconnect()


def main(args):
    scenario(args, 5)
    scenario(args, 4)


if __name__ == "__main__":
    run(main, __doc__)
