#!/usr/bin/env python3
"""Policy quotas (issue 4, point 2) with paho-mqtt over mutual TLS: payload size and
subscription count refused with 0x97, messages per second throttled without losing a
message, connections per minute refused with CONNACK 0x9F (MQTT 5) or 3 (MQTT 3.1.1),
changes reaching the live session, and every hit on the audit trail.

Needs --moat BIN and --data-dir DIR (the hub's), and devices q1 and q2 of their own.
"""

import json
import time

from identity import audit_entries, moat, put_policy
from mqtt_interop import PahoClient, check, run, step

RATE = 20          # messages_per_second of the test policy
BURST = RATE       # the bucket holds one second's worth
FLOOD = 60         # messages published back to back


def namespace_with(quota):
    return f"""
version = 1
[[statement]]
id = "self"
effect = "allow"
actions = ["connect"]
topics = ["${{device.id}}"]
[[statement]]
id = "own"
effect = "allow"
actions = ["publish", "subscribe"]
topics = ["devices/${{device.id}}/#"]
[quota]
{quota}
"""


def sizes_counts_and_rates(args):
    dev = "q1"
    put_policy(args, "quota-q1", namespace_with(
        f"messages_per_second = {RATE}\nmax_payload_bytes = 100\nmax_subscriptions = 2"))
    moat(args, "device", "set", dev, "--policy", "quota-q1")

    step("`moat policy test` shows the quota that applies")
    verdict = moat(args, "policy", "test", dev, "publish", f"devices/{dev}/a")
    check(verdict.startswith("ALLOW"), f"policy test: {verdict!r}")
    for part in (f"messages_per_second={RATE}", "max_payload_bytes=100", "max_subscriptions=2"):
        check(part in verdict, f"policy test does not show {part}: {verdict!r}")

    c = PahoClient(args, device=dev)
    c.connect()

    step("max_subscriptions = 2: the third subscription gets SUBACK 0x97")
    c.subscribe(f"devices/{dev}/a", qos=1, expect=[1])
    c.subscribe(f"devices/{dev}/b", qos=1, expect=[1])
    c.subscribe(f"devices/{dev}/c", qos=1, expect=[0x97])
    # Re-subscribing to a filter it holds is not a new subscription.
    c.subscribe(f"devices/{dev}/a", qos=1, expect=[1])

    step("max_payload_bytes = 100: 100 bytes pass, 101 bytes get PUBACK 0x97 and are not delivered")
    c.publish(f"devices/{dev}/a", b"x" * 100, qos=1)
    msg = c.expect_message(f"devices/{dev}/a")
    check(len(msg.payload) == 100, f"delivered {len(msg.payload)} bytes")
    c.publish(f"devices/{dev}/a", b"y" * 101, qos=1, expect_rc=0x97)
    c.publish(f"devices/{dev}/a", b"z" * 101, qos=0)
    c.expect_no_message(what="a payload over the quota")

    step(f"messages_per_second = {RATE}: {FLOOD} QoS 1 messages back to back are throttled, none lost")
    # Whatever the earlier steps left in the bucket, it holds at most BURST tokens now.
    start = time.monotonic()
    for i in range(FLOOD):
        info = c.c.publish(f"devices/{dev}/a", str(i).encode(), qos=1)
        check(info.rc == 0, f"publish {i} not queued: {info.rc}")
    got = [int(m.payload) for m in c.collect(FLOOD)]
    elapsed = time.monotonic() - start
    check(got == list(range(FLOOD)), f"messages lost or reordered: {got}")
    # Throttling makes it impossible to go faster than the quota: at most BURST at once,
    # then RATE a second. (A lower bound only: a slow machine makes it longer, never shorter.
    # The hub's clock has millisecond steps, which may let a few percent more through.)
    floor = (FLOOD - BURST) / RATE
    check(elapsed >= floor * 0.9,
          f"{FLOOD} messages took {elapsed:.2f}s, faster than the quota allows ({floor:.2f}s)")
    check(c.c.is_connected(), "a throttled device must stay connected")
    print(f"    {FLOOD} messages in {elapsed:.2f}s (quota floor {floor:.2f}s)")

    step("a quota change reaches the live session")
    put_policy(args, "quota-q1", namespace_with("max_payload_bytes = 10"))
    c.publish(f"devices/{dev}/a", b"x" * 11, qos=1, expect_rc=0x97)
    c.publish(f"devices/{dev}/a", b"x" * 10, qos=1)
    c.disconnect()

    step("every kind of hit is on the audit trail, with the limit and its value")
    found = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(found) < 3:
        for entry in audit_entries(args, "quota.exceeded", f"device:{dev}"):
            text = json.dumps(entry)
            for limit in ("max_subscriptions", "max_payload_bytes", "messages_per_second"):
                if limit in text:
                    found.add(limit)
        if len(found) < 3:
            time.sleep(0.2)
    check(found == {"max_subscriptions", "max_payload_bytes", "messages_per_second"},
          f"quota.exceeded audit entries name only {sorted(found)}")


def connections_per_minute(args):
    dev = "q2"
    put_policy(args, "quota-q2", namespace_with("connections_per_minute = 3"))
    moat(args, "device", "set", dev, "--policy", "quota-q2")

    step("connections_per_minute = 3: three CONNECTs pass, the fourth gets CONNACK 0x9F")
    for i in range(3):
        c = PahoClient(args, device=dev)
        c.connect()
        c.disconnect()
    c = PahoClient(args, device=dev)
    c.connect(expect_rc=0x9F)
    c.stop()

    step("MQTT 3.1.1 gets return code 3 (server unavailable)")
    c = PahoClient(args, device=dev, protocol=311, clean_session=True)
    _, rc, _ = c.connect(expect_rc=None)
    c.stop()
    # paho reports the 3.1.1 return code 3 as its MQTT 5 equivalent, 0x88.
    check(rc.value in (3, 0x88), f"3.1.1 CONNACK {rc} ({rc.value:#04x}), expected 3")

    entries = audit_entries(args, "quota.exceeded", f"device:{dev}")
    check(any("connections_per_minute" in json.dumps(e) for e in entries),
          f"no quota.exceeded entry for connections_per_minute: {entries}")


def main(args):
    sizes_counts_and_rates(args)
    connections_per_minute(args)


def extra_args(ap):
    ap.add_argument("--moat", required=True)
    ap.add_argument("--data-dir", required=True)


if __name__ == "__main__":
    run(main, __doc__, extra_args)
