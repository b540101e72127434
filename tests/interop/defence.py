#!/usr/bin/env python3
"""Detection and the response ladder (issue 4, points 4 to 6) with paho-mqtt devices and the
`moat` CLI as the operator: a honey-topic touch raises an alert that explains itself, is
listed by `moat alerts list --json`, reaches a permitted subscriber of `$moat/alerts/...`
(and no one else), quarantines the live session at once, and is released by an operator;
a second one is released by itself when its time box ends.

Needs --moat BIN and --data-dir DIR (the hub's, configured with short quarantine time
boxes: see crates/moat/tests/defence.rs), and devices watcher, nosy, h1, h2.
"""

import json
import time

from identity import moat, put_policy
from mqtt_interop import Failure, PahoClient, check, run, step

HONEY = "_moat/honey/door-codes"
RELEASE_DEADLINE = 30.0  # seconds: time box + quiet period + a few ticks, with margin


def alerts(args, *extra):
    out = moat(args, "alerts", "list", "--json", *extra)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for_alert(args, device, detector, deadline=20.0):
    end = time.monotonic() + deadline
    while True:
        found = [a for a in alerts(args) if a.get("device") == device and a["detector"] == detector]
        if found:
            return found[0]
        if time.monotonic() > end:
            raise Failure(f"no {detector} alert for {device} within {deadline}s: {alerts(args)}")
        time.sleep(0.2)


def publish_code(client, topic):
    """The reason code of a QoS 1 publish, whatever it is."""
    return client.publish(topic, b"1", qos=1, expect_rc=None)


def wait_until_allowed(client, topic, deadline):
    end = time.monotonic() + deadline
    while True:
        rc = publish_code(client, topic)
        if rc < 0x80:
            return
        if time.monotonic() > end:
            raise Failure(f"{topic} still refused (reason {rc:#04x}) after {deadline}s")
        time.sleep(0.25)


def sinks_and_quarantine(args):
    step("an identity granted $moat/alerts/# receives alerts; `#` alone does not reach them")
    put_policy(args, "alert-reader", """
version = 1
[[statement]]
id = "self"
effect = "allow"
actions = ["connect"]
topics = ["${device.id}"]
[[statement]]
id = "alerts"
effect = "allow"
actions = ["subscribe", "receive"]
topics = ["$moat/alerts/#"]
""")
    moat(args, "device", "set", "watcher", "--policy", "alert-reader")
    watcher = PahoClient(args, device="watcher")
    watcher.connect()
    watcher.subscribe("$moat/alerts/#", qos=0, expect=[0])
    nosy = PahoClient(args, device="nosy")
    nosy.connect()
    nosy.subscribe("$moat/alerts/#", qos=0, expect=[0x87])

    step("a device touching a honey topic is alerted on and quarantined at once")
    h1 = PahoClient(args, device="h1")
    h1.connect()
    h1.publish("devices/h1/temp", b"21", qos=1)
    rc = publish_code(h1, HONEY)
    check(rc == 0x87, f"the honey topic is outside h1's policy: expected 0x87, got {rc:#04x}")
    msg = watcher.expect_message(what="the alert on $moat/alerts/...")
    check(msg.topic == "$moat/alerts/honey_topic", f"alert on {msg.topic!r}")
    sunk = json.loads(msg.payload)
    check(sunk["alert"]["device"] == "h1", f"MQTT alert names {sunk['alert'].get('device')!r}")
    nosy.expect_no_message(what="nosy has no right to alerts")

    alert = wait_for_alert(args, "h1", "honey_topic")
    for field in ("time", "detector", "severity", "device", "address", "explanation", "response"):
        check(field in alert, f"`moat alerts list --json` lacks {field!r}: {alert}")
    check(alert["id"] == sunk["id"], f"the MQTT alert's id {sunk['id']} is not the listed {alert['id']}")
    check(alert["address"] in ("127.0.0.1", "::1"), f"alert address {alert['address']!r}")
    explanation = alert["explanation"]
    check(explanation.get("feature") and explanation.get("evidence"),
          f"the alert does not explain itself: {explanation}")
    check(any(HONEY in e for e in explanation["evidence"]),
          f"the evidence does not name the honey topic: {explanation['evidence']}")
    check(alert["response"] == "quarantine", f"response {alert['response']!r}, expected quarantine")
    check(alert["state"] == "open", f"state {alert['state']!r}")

    # The live session was re-bound: only the quarantine topic is left.
    rc = publish_code(h1, "devices/h1/temp")
    check(rc == 0x87, f"a quarantined device's telemetry got {rc:#04x}, expected 0x87")
    h1.publish("devices/h1/quarantine/status", b"ok", qos=1)
    check(h1.c.is_connected(), "quarantine must keep the session")

    step("the operator releases it: the device's own policy applies again")
    moat(args, "alerts", "release", str(alert["id"]))
    h1.publish("devices/h1/temp", b"22", qos=1)
    released = [a for a in alerts(args) if a["id"] == alert["id"]][0]
    check(released["state"] == "released", f"state after release {released['state']!r}")
    check(alerts(args, "--since", "1h"), "--since 1h lists nothing")
    h1.disconnect()
    watcher.disconnect()
    nosy.disconnect()


def automatic_release(args):
    step("a second quarantine ends by itself when its time box is over and the device is quiet")
    h2 = PahoClient(args, device="h2")
    h2.connect()
    publish_code(h2, HONEY)
    alert = wait_for_alert(args, "h2", "honey_topic")
    check(alert["response"] == "quarantine", f"response {alert['response']!r}")
    check(publish_code(h2, "devices/h2/temp") == 0x87, "h2 should be quarantined")
    wait_until_allowed(h2, "devices/h2/temp", RELEASE_DEADLINE)
    end = time.monotonic() + 10
    while True:
        state = [a for a in alerts(args) if a["id"] == alert["id"]][0]["state"]
        if state == "released" or time.monotonic() > end:
            break
        time.sleep(0.2)
    check(state == "released", f"the alert's state after the automatic release is {state!r}")
    h2.disconnect()


def main(args):
    sinks_and_quarantine(args)
    automatic_release(args)


def extra_args(ap):
    ap.add_argument("--moat", required=True)
    ap.add_argument("--data-dir", required=True)


if __name__ == "__main__":
    run(main, __doc__, extra_args)
