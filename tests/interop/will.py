#!/usr/bin/env python3
"""Will messages: sent on abnormal close, will delay, will properties, retained wills.

MQTT 5.0: 3.1.2.5 Will Flag (MQTT-3.1.2-8: published when the network connection closes
without DISCONNECT 0x00; MQTT-3.1.2-10: removed on DISCONNECT 0x00), 3.14.2.1 (0x04
Disconnect with Will Message), 3.1.3.2 Will Properties (Will Delay Interval, Payload Format
Indicator, Message Expiry Interval, Content Type, Response Topic, Correlation Data, User
Property all forwarded), MQTT-3.1.3-9 (no will if the session is resumed within the delay),
3.1.3.2.2 (the will is sent when the delay passes or the session ends, whichever is first).
MQTT 3.1.1: 3.1.2.5 (will on abnormal close only).

The will owner is a device over mutual TLS (will topic in its own namespace); the observer is
an anonymous client on the plaintext listener. Closing "abnormally" = dropping TCP without
DISCONNECT (RawClient.close()).

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py): passes.
"""

import time

from mqtt_interop import PahoClient, RawClient, check, run, step, unique


def observer(args, filt, version=5):
    o = PahoClient(args, transport="plain", protocol=version)
    o.connect()
    o.subscribe(filt, qos=1)
    return o


def v5(args):
    dev = args.device_ids[0]
    base = f"devices/{dev}/{unique('will')}"
    obs = observer(args, f"{base}/#")

    step("v5: will with properties published when the connection drops")
    wprops = [("PayloadFormatIndicator", 1), ("MessageExpiryInterval", 120),
              ("ContentType", "text/plain"), ("ResponseTopic", f"{base}/reply"),
              ("CorrelationData", b"\x01\x02corr"), ("UserProperty", ("k", "v")),
              ("UserProperty", ("k", "v2"))]
    raw = RawClient(args, device=dev)
    raw.connect(dev, will=(f"{base}/lwt", b"gone", 1, False, wprops))
    raw.close()
    m = obs.expect_message(f"{base}/lwt", what="will after abnormal close (MQTT-3.1.2-8)")
    check(m.payload == b"gone" and m.qos == 1, f"will payload {m.payload!r} qos {m.qos}")
    p = m.properties
    check(getattr(p, "ContentType", None) == "text/plain", f"will Content Type lost: {p}")
    check(getattr(p, "PayloadFormatIndicator", None) == 1, f"will Payload Format Indicator lost: {p}")
    check(getattr(p, "ResponseTopic", None) == f"{base}/reply", f"will Response Topic lost: {p}")
    check(getattr(p, "CorrelationData", None) == b"\x01\x02corr", f"will Correlation Data lost: {p}")
    check(getattr(p, "UserProperty", None) == [("k", "v"), ("k", "v2")],
          f"will User Properties lost or reordered (MQTT-3.3.2-18): {getattr(p, 'UserProperty', None)}")
    expiry = getattr(p, "MessageExpiryInterval", None)
    check(expiry is not None and 0 < expiry <= 120, f"will Message Expiry Interval {expiry}, expected 1..120")

    step("v5: DISCONNECT 0x00 discards the will")
    raw = RawClient(args, device=dev)
    raw.connect(dev, will=(f"{base}/lwt", b"should-not", 1, False, []))
    raw.disconnect(reason=0x00)
    obs.expect_no_message(what="will after a normal DISCONNECT (MQTT-3.1.2-10)")

    step("v5: DISCONNECT 0x04 publishes the will")
    raw = RawClient(args, device=dev)
    raw.connect(dev, will=(f"{base}/lwt", b"asked", 0, False, []))
    raw.disconnect(reason=0x04)
    m = obs.expect_message(f"{base}/lwt", what="will after DISCONNECT 0x04 (MQTT 5.0 3.14.2.1)")
    check(m.payload == b"asked", f"will payload {m.payload!r}")

    step("v5: will delay 2 s: not sent at once, sent after the delay")
    raw = RawClient(args, device=dev)
    raw.connect(dev, properties=[("SessionExpiryInterval", 300)],
                will=(f"{base}/lwt", b"delayed", 1, False, [("WillDelayInterval", 2)]))
    dropped = time.monotonic()
    raw.close()
    obs.expect_no_message(within=1.0, what="will before its 2 s Will Delay Interval passed")
    m = obs.expect_message(f"{base}/lwt", what="delayed will")
    check(m.payload == b"delayed", f"delayed will payload {m.payload!r}")
    check(time.monotonic() - dropped >= 1.5, "delayed will arrived well before its delay")

    step("v5: will delay 3 s, session resumed within it: will not sent (MQTT-3.1.3-9)")
    raw = RawClient(args, device=dev)
    raw.connect(dev, clean_start=True, properties=[("SessionExpiryInterval", 300)],
                will=(f"{base}/lwt", b"must-not", 1, False, [("WillDelayInterval", 3)]))
    raw.close()
    raw = RawClient(args, device=dev)
    sp, _, _ = raw.connect(dev, clean_start=False, properties=[("SessionExpiryInterval", 300)])
    check(sp, "session not present on reconnect within the will delay")
    obs.expect_no_message(within=4.5, what="will although the session was resumed within the Will Delay Interval")
    raw.disconnect(reason=0x00, properties=[("SessionExpiryInterval", 0)])

    step("v5: will delay longer than the session: sent when the session ends (after 1 s)")
    raw = RawClient(args, device=dev)
    raw.connect(dev, clean_start=True, properties=[("SessionExpiryInterval", 1)],
                will=(f"{base}/lwt", b"session-ended", 1, False, [("WillDelayInterval", 600)]))
    raw.close()
    m = obs.expect_message(f"{base}/lwt", what="will when the session expires before the will delay")
    check(m.payload == b"session-ended", f"payload {m.payload!r}")

    step("v5: retained will is stored as a retained message")
    raw = RawClient(args, device=dev)
    raw.connect(dev, will=(f"{base}/retained-lwt", b"last words", 1, True, []))
    raw.close()
    obs.expect_message(f"{base}/retained-lwt")
    late = PahoClient(args, transport="plain")
    late.connect()
    late.subscribe(f"{base}/retained-lwt", qos=1)
    m = late.expect_message(f"{base}/retained-lwt", what="retained will for a later subscriber")
    check(m.retain and m.payload == b"last words", f"retained will {m.payload!r} retain={m.retain}")
    # Clean up the retained message.
    owner = PahoClient(args, device=dev)
    owner.connect()
    owner.publish(f"{base}/retained-lwt", b"", qos=1, retain=True)
    owner.disconnect()
    late.disconnect()
    obs.disconnect()


def v311(args):
    dev = args.device_ids[1]
    base = f"devices/{dev}/{unique('will')}"
    obs = observer(args, f"{base}/#", version=4)
    step("3.1.1: will on abnormal close, none after DISCONNECT")
    raw = RawClient(args, device=dev, version=4)
    raw.connect(dev, will=(f"{base}/lwt", b"gone311", 1, False, []))
    raw.close()
    m = obs.expect_message(f"{base}/lwt", what="3.1.1 will after abnormal close")
    check(m.payload == b"gone311", f"payload {m.payload!r}")
    raw = RawClient(args, device=dev, version=4)
    raw.connect(dev, will=(f"{base}/lwt", b"no", 1, False, []))
    raw.disconnect()
    obs.expect_no_message(what="3.1.1 will after DISCONNECT (MQTT-3.1.2-10)")
    obs.disconnect()


def main(args):
    v5(args)
    v311(args)


if __name__ == "__main__":
    run(main, __doc__)
