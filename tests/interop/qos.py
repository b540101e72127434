#!/usr/bin/env python3
"""QoS 0, 1 and 2 end to end, redelivery on reconnect, exactly once.

MQTT 5.0: 4.3 Quality of Service levels and protocol flows, 4.4 Message delivery retry
(MQTT-4.4.0-1: on reconnect with a session, resend unacknowledged PUBLISH with their original
packet ids and PUBREL), 3.3.1.1 DUP (MQTT-3.3.1-1), 3.8.4 granted QoS (message delivered at the
minimum of publish and subscription QoS), 4.6 message ordering. Same for MQTT 3.1.1 4.3/4.4.

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py): passes.
"""

import struct

from mqtt_interop import (PUBACK, PUBCOMP, PUBREC, PUBREL, PahoClient, RawClient, check, run,
                          step, unique)


def end_to_end(args, version):
    dev = args.device_ids[0]
    base = f"devices/{dev}/{unique('qos')}"
    step(f"v{version}: QoS 0/1/2 end to end, granted QoS is the minimum, order kept")
    sub = PahoClient(args, device=dev, protocol=version)
    sub.connect()
    sub.subscribe(f"{base}/two/#", qos=2)
    sub.subscribe(f"{base}/zero/#", qos=0)
    pub = PahoClient(args, transport="plain", protocol=version)
    pub.connect()
    for qos in (0, 1, 2):
        pub.publish(f"{base}/two/q{qos}", f"q{qos}".encode(), qos=qos)
        m = sub.expect_message(f"{base}/two/q{qos}")
        check(m.qos == qos, f"v{version}: QoS {qos} publish delivered at QoS {m.qos} on a QoS 2 subscription")
        check(m.payload == f"q{qos}".encode(), f"payload {m.payload!r}")
    pub.publish(f"{base}/zero/x", b"down", qos=2)
    m = sub.expect_message(f"{base}/zero/x")
    check(m.qos == 0, f"v{version}: QoS 2 publish on a QoS 0 subscription delivered at QoS {m.qos} (MQTT-3.8.4-8)")
    for i in range(20):
        pub.publish(f"{base}/two/order", str(i).encode(), qos=1)
    got = [int(sub.expect_message(f"{base}/two/order").payload) for _ in range(20)]
    check(got == list(range(20)), f"v{version}: QoS 1 messages on one topic out of order: {got} (MQTT 4.6)")
    # The device also publishes into its own namespace at every QoS.
    for qos in (1, 2):
        sub.publish(f"{base}/two/self{qos}", b"self", qos=qos)
        sub.expect_message(f"{base}/two/self{qos}")
    sub.expect_no_message(what="no duplicates")
    sub.disconnect()
    pub.disconnect()


def redelivery(args, version):
    dev = args.device_ids[1]
    topic = f"devices/{dev}/{unique('redeliver')}"
    step(f"v{version}: unacknowledged QoS 1 PUBLISH resent with DUP=1 and the same packet id")

    def reconnect(clean, expect_present=None):
        raw = RawClient(args, device=dev, version=version)
        props = [("SessionExpiryInterval", 300)] if version == 5 else []
        sp, _, _ = raw.connect(dev, clean_start=clean, properties=props)
        if expect_present is None:
            expect_present = not clean
        check(sp == expect_present, f"v{version}: Session Present={sp} with clean={clean}")
        return raw

    if version == 5:
        raw = reconnect(True)
    else:
        # 3.1.1: a clean session ends with its connection; start from none, then persist.
        reconnect(True).disconnect()
        raw = reconnect(False, expect_present=False)
    check(raw.subscribe([(topic, 2)]) == [2], f"v{version}: SUBACK for QoS 2")
    pub = PahoClient(args, transport="plain", protocol=version)
    pub.connect()

    pub.publish(topic, b"one", qos=1)
    first = raw.expect_publish()
    check(first.qos == 1 and not first.dup and first.payload == b"one", f"first delivery {first}")
    raw.close()  # no PUBACK, no DISCONNECT
    raw = reconnect(False)
    again = raw.expect_publish()
    check(again.payload == b"one" and again.qos == 1, f"v{version}: redelivered {again}")
    check(again.dup, f"v{version}: redelivered QoS 1 PUBLISH without DUP=1 (MQTT-3.3.1-1)")
    check(again.packet_id == first.packet_id,
          f"v{version}: redelivery used packet id {again.packet_id}, original {first.packet_id} (MQTT-4.4.0-1)")
    raw.ack(PUBACK, again.packet_id)
    raw.expect_nothing()
    raw.close()
    raw = reconnect(False)
    raw.expect_nothing()  # acknowledged: not sent a third time

    step(f"v{version}: QoS 2: unacknowledged PUBLISH resent, then PUBREL resent")
    pub.publish(topic, b"two", qos=2)
    first = raw.expect_publish()
    check(first.qos == 2 and not first.dup, f"first QoS 2 delivery {first}")
    raw.close()
    raw = reconnect(False)
    again = raw.expect_publish()
    check(again.dup and again.packet_id == first.packet_id and again.payload == b"two",
          f"v{version}: QoS 2 redelivery {again} (MQTT-3.3.1-1, MQTT-4.4.0-1)")
    raw.ack(PUBREC, again.packet_id)
    rel = raw.expect(PUBREL)
    check(rel.flags == 0x02, f"PUBREL fixed header flags {rel.flags:#x} (MQTT-3.6.1-1)")
    check(struct.unpack_from("!H", rel.body)[0] == first.packet_id, "PUBREL for another packet id")
    raw.close()  # no PUBCOMP
    raw = reconnect(False)
    rel = raw.expect(PUBREL)
    check(struct.unpack_from("!H", rel.body)[0] == first.packet_id,
          f"v{version}: PUBREL not resent with its packet id after reconnect (MQTT-4.4.0-1)")
    raw.ack(PUBCOMP, first.packet_id)
    raw.expect_nothing()  # the PUBLISH itself must not come again once PUBREC was sent
    raw.disconnect(reason=0x04 if version == 5 else 0)
    raw = reconnect(True)
    raw.disconnect()
    pub.disconnect()


def resend_order(args, version):
    dev = args.device_ids[2]
    topic = f"devices/{dev}/{unique('order')}"
    step(f"v{version}: several unacknowledged messages are resent in their original order (MQTT-4.6.0-1)")
    props = [("SessionExpiryInterval", 300)] if version == 5 else []
    raw = RawClient(args, device=dev, version=version)
    raw.connect(dev, clean_start=True, properties=props)
    if version == 4:
        raw.disconnect()
        raw = RawClient(args, device=dev, version=version)
        raw.connect(dev, clean_start=False)
    check(raw.subscribe([(topic, 1)]) == [1], "SUBACK")
    pub = PahoClient(args, transport="plain", protocol=version)
    pub.connect()
    for i in range(5):
        pub.publish(topic, f"o{i}".encode(), qos=1)
    first = [raw.expect_publish() for _ in range(5)]
    check([p.payload for p in first] == [f"o{i}".encode() for i in range(5)], f"first delivery {first}")
    raw.close()
    raw = RawClient(args, device=dev, version=version)
    raw.connect(dev, clean_start=False, properties=props)
    again = [raw.expect_publish() for _ in range(5)]
    check([p.payload for p in again] == [f"o{i}".encode() for i in range(5)],
          f"v{version}: resent out of order: {[p.payload for p in again]}")
    check([p.packet_id for p in again] == [p.packet_id for p in first], "resent with other packet ids")
    for p in again:
        raw.ack(PUBACK, p.packet_id)
    raw.disconnect()
    raw = RawClient(args, device=dev, version=version)
    raw.connect(dev, clean_start=True)
    raw.disconnect()
    pub.disconnect()


def exactly_once_inbound(args, version):
    topic = f"qos2/{unique('once')}"
    step(f"v{version}: publisher resends a QoS 2 PUBLISH before PUBREL -> delivered once")
    sub = PahoClient(args, transport="plain", protocol=version)
    sub.connect()
    sub.subscribe(topic, qos=2)
    raw = RawClient(args, transport="plain", version=version)
    cid = unique("pub")
    props = [("SessionExpiryInterval", 300)] if version == 5 else []
    raw.connect(cid, clean_start=False if version == 4 else True, properties=props)
    raw.publish(topic, b"once", qos=2, packet_id=7)
    rec = raw.expect(PUBREC)
    check(struct.unpack_from("!H", rec.body)[0] == 7, "PUBREC for another packet id")
    raw.publish(topic, b"once", qos=2, packet_id=7, dup=True)
    rec = raw.expect(PUBREC)
    check(struct.unpack_from("!H", rec.body)[0] == 7, "second PUBREC for another packet id")
    step(f"v{version}: publisher reconnects before sending PUBREL; PUBREL completes the flow")
    raw.close()
    raw = RawClient(args, transport="plain", version=version)
    sp, _, _ = raw.connect(cid, clean_start=False, properties=props)
    check(sp, f"v{version}: publisher's session not present after reconnect")
    raw.ack(PUBREL, 7)
    comp = raw.expect(PUBCOMP)
    check(struct.unpack_from("!H", comp.body)[0] == 7, "PUBCOMP for another packet id")
    if version == 5 and len(comp.body) > 2:
        check(comp.body[2] == 0, f"PUBCOMP reason {comp.body[2]:#x} for a known packet id")
    m = sub.expect_message(topic)
    check(m.payload == b"once" and m.qos == 2, f"delivered {m.payload!r} qos {m.qos}")
    sub.expect_no_message(what="a QoS 2 message must be delivered exactly once (MQTT-4.3.3)")
    raw.disconnect()
    sub.disconnect()


def main(args):
    for version in (5, 4):
        end_to_end(args, version)
        redelivery(args, version)
        resend_order(args, version)
        exactly_once_inbound(args, version)


if __name__ == "__main__":
    run(main, __doc__)
