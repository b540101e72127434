#!/usr/bin/env python3
"""Flow control and negotiated limits: Receive Maximum, Maximum Packet Size, Server Keep Alive.

MQTT 5.0: 3.2.2.3.3 Receive Maximum in CONNACK; MQTT-3.3.4-9 (the server sends no more
unacknowledged QoS 1/2 PUBLISHes than the client's Receive Maximum); 3.1.2.11.4 / MQTT-3.1.2-25
(the server never sends a packet larger than the client's Maximum Packet Size, and discards such
a message for that client, MQTT-3.1.2-24/-26 wording); 3.2.2.3.14 Server Keep Alive
(MQTT-3.2.2-21: the client must use it) with Moat's --max-keepalive.
(The client exceeding the server's Receive Maximum, DISCONNECT 0x93, is in
crates/moat/tests/wire.rs.)

Moat-only (skipped with --reference mosquitto): CONNACK announces Receive Maximum and Maximum
Packet Size (Moat enforces both; Mosquitto 2.0 by default has no packet size limit).

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py): passes with the
Moat-only checks skipped and one deviation of Mosquitto skipped: with a client Receive Maximum
of 2 it honours the first window, but after two PUBACKs it sends three more messages at once.
"""

from mqtt_interop import (PUBACK, PUBCOMP, PUBREC, PUBREL, PahoClient, RawClient, check,
                          known_deviation, run, step, unique)


def connack_values(args):
    step("CONNACK announces Receive Maximum and Maximum Packet Size")
    raw = RawClient(args, device=args.device_ids[0])
    _, _, cprops = raw.connect(args.device_ids[0])
    step(f"CONNACK properties: {cprops}")
    rm = cprops.get("ReceiveMaximum")
    mps = cprops.get("MaximumPacketSize")
    if rm is not None:
        check(rm >= 1, f"Receive Maximum {rm} (0 is a Protocol Error, 3.2.2.3.3)")
    if mps is not None:
        check(mps >= 1, f"Maximum Packet Size {mps} (0 is a Protocol Error, 3.2.2.3.6)")
    if not known_deviation(args, "Mosquitto does not announce limits it does not enforce"):
        check(rm is not None, "CONNACK has no Receive Maximum; Moat enforces one and must announce it")
        check(mps is not None, "CONNACK has no Maximum Packet Size; Moat enforces one and must announce it")
    raw.disconnect()


def receive_maximum(args):
    topic = f"rm/{unique()}"
    step("client Receive Maximum 2: at most 2 unacknowledged QoS 1 messages in flight (MQTT-3.3.4-9)")
    raw = RawClient(args, transport="plain")
    raw.connect(unique("rm"), properties=[("ReceiveMaximum", 2)])
    check(raw.subscribe([(topic, 1)]) == [1], "SUBACK")
    pub = PahoClient(args, transport="plain")
    pub.connect()
    for i in range(5):
        pub.publish(topic, str(i).encode(), qos=1)
    first = [raw.expect_publish(), raw.expect_publish()]
    raw.expect_nothing()
    got = [p.payload for p in first]
    for p in first:
        raw.ack(PUBACK, p.packet_id)
    step("after PUBACKs the window refills, still at most 2 in flight")
    strict = not known_deviation(
        args, "Mosquitto 2.0.11 sends messages 3, 4 and 5 at once after two PUBACKs (3 in flight)")
    pending = []
    while len(got) < 5:
        p = raw.expect_publish()
        got.append(p.payload)
        pending.append(p)
        if len(pending) == 2 and strict:
            raw.expect_nothing(within=0.5)
            for q in pending:
                raw.ack(PUBACK, q.packet_id)
            pending = []
    for q in pending:
        raw.ack(PUBACK, q.packet_id)
    check(got == [str(i).encode() for i in range(5)], f"messages {got}")
    raw.disconnect()
    pub.disconnect()


def receive_maximum_qos2(args):
    topic = f"rm2/{unique()}"
    step("client Receive Maximum 1 with QoS 2: the next PUBLISH waits for PUBCOMP, not PUBREC (4.9)")
    raw = RawClient(args, transport="plain")
    raw.connect(unique("rm2"), properties=[("ReceiveMaximum", 1)])
    check(raw.subscribe([(topic, 2)]) == [2], "SUBACK")
    pub = PahoClient(args, transport="plain")
    pub.connect()
    pub.publish(topic, b"a", qos=2)
    pub.publish(topic, b"b", qos=2)
    p = raw.expect_publish()
    check(p.payload == b"a", f"first {p}")
    raw.expect_nothing()
    raw.ack(PUBREC, p.packet_id)
    raw.expect(PUBREL)
    # The QoS 2 exchange is still open until PUBCOMP: the quota is not yet returned.
    raw.expect_nothing()
    raw.ack(PUBCOMP, p.packet_id)
    q = raw.expect_publish()
    check(q.payload == b"b", f"second {q}")
    raw.ack(PUBREC, q.packet_id)
    raw.expect(PUBREL)
    raw.ack(PUBCOMP, q.packet_id)
    raw.disconnect()
    pub.disconnect()


def maximum_packet_size(args):
    topic = f"mps/{unique()}"
    step("client Maximum Packet Size 256: a larger message is not sent to it, later ones are")
    raw = RawClient(args, transport="plain")
    raw.connect(unique("mps"), properties=[("MaximumPacketSize", 256)])
    check(raw.subscribe([(topic, 1)]) == [1], "SUBACK")
    pub = PahoClient(args, transport="plain")
    pub.connect()
    pub.publish(topic, b"x" * 1000, qos=1)
    pub.publish(topic, b"small", qos=1)
    p = raw.expect_publish()
    check(p.payload == b"small", f"the client received a {len(p.payload)}-byte payload above its Maximum "
                                 f"Packet Size (MQTT-3.1.2-25)")
    raw.ack(PUBACK, p.packet_id)
    raw.expect_nothing()
    raw.disconnect()
    pub.disconnect()


def server_keep_alive(args):
    if args.max_keepalive is None:
        step("no --max-keepalive given: Server Keep Alive not checked")
        return
    step(f"keep alive 3600 with a server maximum of {args.max_keepalive} -> Server Keep Alive")
    c = PahoClient(args, device=args.device_ids[0])
    c.connect(keepalive=3600)
    ska = getattr(c.connack_props(), "ServerKeepAlive", None)
    check(ska is not None and 0 < ska <= args.max_keepalive,
          f"Server Keep Alive {ska}, expected 1..{args.max_keepalive} (3.2.2.3.14)")
    c.disconnect()


def main(args):
    connack_values(args)
    receive_maximum(args)
    receive_maximum_qos2(args)
    maximum_packet_size(args)
    server_keep_alive(args)


if __name__ == "__main__":
    run(main, __doc__)
