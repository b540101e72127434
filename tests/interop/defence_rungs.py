#!/usr/bin/env python3
"""One rung of the response ladder on a live paho-mqtt session, and its automatic release.

The hub must map every severity of `honey_topic` to the rung given with --rung and give that
rung a 2 s time box (see crates/moat/tests/defence.rs). Device `d1` touches a honey topic
from 127.0.0.2; the script checks that the rung acts on the live session (or the address)
and that it ends by itself, except for revoke_certificate, which is permanent.

Needs --moat BIN, --data-dir DIR, --rung RUNG and device d1.
"""

import json
import time

from identity import moat
from mqtt_interop import Failure, PahoClient, check, run, step

HONEY = "_moat/honey/valve"
ADDRESS = "127.0.0.2"
RELEASE_DEADLINE = 30.0


def alerts(args):
    out = moat(args, "alerts", "list", "--json")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait(what, predicate, deadline=RELEASE_DEADLINE):
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise Failure(f"{what}: not within {deadline}s")
        time.sleep(0.2)


def connect(args, expect_rc=0):
    c = PahoClient(args, device="d1")
    c.connect(bind_address=ADDRESS, expect_rc=expect_rc)
    return c


def can_connect(args):
    c = PahoClient(args, device="d1")
    try:
        _, rc, _ = c.connect(bind_address=ADDRESS, expect_rc=None)
    except Failure:
        c.stop()
        return False
    ok = rc.value == 0
    if ok:
        c.disconnect()
    else:
        c.stop()
    return ok


def trigger(args, client):
    rc = client.publish(HONEY, b"1", qos=1, expect_rc=None)
    check(rc == 0x87, f"the honey topic must be outside d1's policy (got {rc:#04x})")
    alert = wait("the honey_topic alert",
                 lambda: next((a for a in alerts(args) if a["detector"] == "honey_topic"), None))
    check(alert["response"] == args.rung, f"response {alert['response']!r}, expected {args.rung!r}")
    check(alert["address"] == ADDRESS, f"alert address {alert['address']!r}")
    return alert


def released(args, alert):
    return next(a for a in alerts(args) if a["id"] == alert["id"])["state"] == "released"


def main(args):
    rung = args.rung
    c = connect(args)
    c.subscribe("devices/d1/#", qos=1, expect=[1])
    c.publish("devices/d1/temp", b"20", qos=1)
    c.expect_message("devices/d1/temp")
    step(f"a honey-topic touch executes {rung}")
    alert = trigger(args, c)

    if rung == "throttle":
        # Throttled to the alert's reference rate x throttle_factor: 1 message a second.
        before = time.monotonic()
        for i in range(4):
            c.publish("devices/d1/temp", str(i).encode(), qos=1)
        took = time.monotonic() - before
        check(took >= 2.0, f"4 messages at 1/s took {took:.2f}s: not throttled")
        check(c.c.is_connected(), "a throttled device stays connected")
        c.collect(4)
        step("released by itself: full speed again")
        wait("automatic release", lambda: released(args, alert))
        before = time.monotonic()
        for i in range(10):
            c.publish("devices/d1/temp", str(i).encode(), qos=1)
        took = time.monotonic() - before
        # Still throttled at 1/s, 10 messages could not take less than 9 s.
        check(took < 9.0, f"10 messages after the release took {took:.2f}s: still throttled")
    elif rung == "read_only":
        rc = c.publish("devices/d1/temp", b"21", qos=1, expect_rc=None)
        check(rc == 0x87, f"a read-only device's publish got {rc:#04x}")
        check(c.c.is_connected(), "read-only keeps the session")
        step("released by itself: it may publish again")
        wait("automatic release", lambda: released(args, alert))
        c.publish("devices/d1/temp", b"22", qos=1)
    elif rung == "disconnect":
        c.expect_disconnected()
        c.stop()
        check(not can_connect(args), "a disconnected device must be refused until the release")
        step("released by itself: it may connect again")
        wait("automatic release", lambda: released(args, alert))
        wait("reconnection", lambda: can_connect(args), deadline=10)
    elif rung == "ban_address":
        # The address is banned: the shield refuses it before TLS, and the live session from
        # it is closed.
        c.expect_disconnected()
        c.stop()
        check(not can_connect(args), f"connections from {ADDRESS} must be refused while banned")
        bans = moat(args, "ban", "list", "--json")
        check(ADDRESS in bans, f"no ban of {ADDRESS}: {bans!r}")
        step("released by itself: the ban is lifted")
        wait("automatic release", lambda: released(args, alert))
        wait("reconnection", lambda: can_connect(args), deadline=10)
        check(ADDRESS not in moat(args, "ban", "list", "--json"), "the ban is still listed")
    elif rung == "revoke_certificate":
        c.expect_disconnected()
        c.stop()
        check(not can_connect(args), "a revoked device must be refused")
        step("its release does not un-revoke it")
        wait("automatic release", lambda: released(args, alert))
        check(not can_connect(args), "revocation is permanent")
        shown = moat(args, "device", "show", "d1", "--json")
        check("revoked" in shown, f"device d1 is not revoked: {shown}")
    else:
        raise Failure(f"unknown rung {rung!r}")


def extra_args(ap):
    ap.add_argument("--moat", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--rung", required=True)


if __name__ == "__main__":
    run(main, __doc__, extra_args)
